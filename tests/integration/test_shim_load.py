"""What loading libvia.so costs a process that opens no socket (docs/benchmarks.md, figure 1).

The loader's own cost of a preload library is the floor; the shim must add nothing to it beyond
copying a few environment variables: no static constructors (a C++ object with member
initializers at namespace scope gets one, and it touches every page of the object in every
process), and no system calls from its constructor.
"""
import collections
import os
import re
import subprocess

import harness


class ShimLoad(harness.ViaCase):
    def test_no_static_constructors(self):
        out = subprocess.run(["nm", "-C", harness.SHIM], capture_output=True, text=True)
        self.assertOk(out)
        ctors = re.findall(r"_GLOBAL__sub_I_\S+", out.stdout)
        self.assertEqual(ctors, [], "dynamic initializers run in every process")

    def test_loading_costs_no_more_system_calls_than_an_empty_library(self):
        # strace of /bin/true (under an overlay's environment) preloading libvia.so, and
        # preloading an empty library built here with the compiler's defaults: the loader's
        # work for any preload library is the floor, and the shim adds nothing to it (no
        # futex from pthread_once, no I/O, no extra mapping).
        for tool in ("strace", "cc"):
            if subprocess.run(["sh", "-c", f"command -v {tool}"],
                              capture_output=True).returncode:
                self.skipTest(f"{tool} is not installed")
        src, empty = os.path.join(self.dir, "empty.c"), os.path.join(self.dir, "empty.so")
        with open(src, "w") as f:
            f.write("int via_test_empty;\n")
        self.assertOk(subprocess.run(["cc", "-O2", "-shared", "-fPIC", "-o", empty, src],
                                     capture_output=True, text=True))

        def calls(preload):
            env = dict(self.env, VIA_NETWORK="app:tor", LD_PRELOAD=preload)
            proc = subprocess.run(["strace", "-f", "-qq", "/bin/true"], env=env,
                                  capture_output=True, text=True)
            self.assertOk(proc)
            return collections.Counter(re.sub(r"\(.*", "", l) for l in proc.stderr.splitlines()
                                       if "(" in l)

        baseline, shim = calls(empty), calls(harness.SHIM)
        self.assertEqual(shim - baseline, collections.Counter(),
                         f"libvia.so: {sorted(shim.items())}\nempty: {sorted(baseline.items())}")

if __name__ == "__main__":
    harness.main()
