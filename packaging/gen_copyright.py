#!/usr/bin/env python3
"""Writes the package's debian/copyright-style file (share/doc/via/copyright): the notices of
packaging/copyright.in (via itself, libgcc in libvia.so), then, when via-tsnet was built, the
Go standard library and every Go module the binary bundles, read from the binary itself
(`go version -m`) with the licence files of each module from the module cache, so that the
list follows go.mod without being written by hand.

    gen_copyright.py COPYRIGHT_IN OUT [GO VIA_TSNET]
"""
import os
import subprocess
import sys

LICENSE_NAMES = ("LICENSE", "LICENSE.md", "LICENSE.txt", "LICENCE", "COPYING", "LICENSE-MIT",
                 "LICENSE-APACHE", "NOTICE", "PATENTS")


def escape_module(path):
    """The module cache spells capital letters as '!' + lower case."""
    return "".join("!" + c.lower() if c.isupper() else c for c in path)


def licence_files(directory):
    if not os.path.isdir(directory):
        return []
    return sorted(os.path.join(directory, n) for n in os.listdir(directory)
                  if n.upper() in {x.upper() for x in LICENSE_NAMES})


def as_field_text(text):
    """Text as the continuation lines of a deb822 field: each line indented by one space,
    empty lines as ' .'."""
    return "\n".join(" " + l if l.strip() else " ." for l in text.rstrip().splitlines())


def go_section(go, binary):
    env = dict(os.environ, GOTOOLCHAIN="local", LD_PRELOAD="")
    info = subprocess.run([go, "version", "-m", binary], capture_output=True, text=True,
                          check=True, env=env).stdout
    goroot = subprocess.run([go, "env", "GOROOT"], capture_output=True, text=True, check=True,
                            env=env).stdout.strip()
    modcache = subprocess.run([go, "env", "GOMODCACHE"], capture_output=True, text=True,
                              check=True, env=env).stdout.strip()
    toolchain = info.splitlines()[0].split(":", 1)[1].strip()
    modules = []
    for line in info.splitlines():
        f = line.split()
        if len(f) >= 3 and f[0] == "dep":
            modules.append((f[1], f[2]))
        elif len(f) >= 3 and f[0] == "=>" and modules:  # a replace directive
            modules[-1] = (f[1], f[2])
    out = []
    # One License paragraph per distinct licence text, named after the first module using it.
    texts = {}
    def add(name, files):
        body = "\n\n".join(open(p, errors="replace").read().strip() for p in files)
        if not body:
            return None
        if body not in texts:
            texts[body] = f"bundled-{len(texts) + 1}"
        return texts[body]
    bundled = [f"the Go standard library and runtime ({toolchain}): "
               f"{add('go', licence_files(goroot))}"]
    missing = []
    for path, version in modules:
        d = os.path.join(modcache, escape_module(path) + "@" + version)
        lic = add(path, licence_files(d))
        if lic is None:
            missing.append(f"{path}@{version}")
        bundled.append(f"{path} {version}: {lic}")
    if missing:
        raise SystemExit("gen_copyright.py: no licence file in the module cache for: " +
                         ", ".join(missing))
    # One paragraph for the binary: its licence is every bundled licence together; the
    # comment says which module carries which text.
    out.append("Files: usr/lib/via/via-tsnet\nComment: the Tailscale helper, a Go program; it "
               "bundles, with their licences:\n" + as_field_text("\n".join(bundled)) +
               "\nCopyright: The Go Authors; the authors of each module listed above\n"
               "License: " + " and ".join(sorted(set(texts.values()),
                                                 key=lambda n: int(n.split("-")[1]))))
    for body, name in texts.items():
        out.append(f"License: {name}\n{as_field_text(body)}")
    return out


def main():
    if len(sys.argv) not in (3, 5):
        sys.exit(__doc__)
    with open(sys.argv[1]) as f:
        paragraphs = [f.read().strip()]
    if len(sys.argv) == 5 and os.path.exists(sys.argv[4]):
        paragraphs += go_section(sys.argv[3], sys.argv[4])
    with open(sys.argv[2], "w") as f:
        f.write("\n\n".join(paragraphs) + "\n")


if __name__ == "__main__":
    main()
