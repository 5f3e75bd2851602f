#!/usr/bin/env python3
"""Writes via's manual pages at build time from what already documents via, so that nothing is
written twice: via(1) from the CLI's own help (`via --help`, `via CMD --help`) plus the
"Environment" section of docs/architecture.md, and via.yaml(5) from docs/configuration.md.

Python's standard library only (no pandoc: it would add a large package to every CI run for
the small Markdown subset docs/ uses: headings, paragraphs, indented code, lists, pipe tables,
`code`, **bold**, *emphasis*, [links](...)). Tables become tagged paragraphs (.TP), not tbl(1)
tables, so that a page renders without warnings at any width.

    md2man.py via1 VIA_BINARY ARCHITECTURE_MD INSTALL_MD OUT
    md2man.py via-yaml5 CONFIGURATION_MD OUT
"""
import datetime
import os
import re
import subprocess
import sys

# Typographic characters docs/ uses, as groff escapes (a page then renders in any locale).
GLYPHS = {"\u2014": r"\(em", "\u2013": r"\(en", "\u2192": r"\(->", "\u2190": r"\(<-",
          "\u00b5": r"\(mc", "\u2265": r"\(>=", "\u2264": r"\(<=", "\u00d7": r"\(mu",
          "\u2026": "...", "\u2019": r"\(aq", "\u2018": r"\(aq", "\u201c": r"\(lq",
          "\u201d": r"\(rq", "\u00a0": r"\ ", "\u2248": r"\(~~", "\u2260": r"\(!=",
          "\u00b1": r"\(+-", "\u2022": r"\(bu"}


def escape(text):
    """Plain text as roff text: backslashes, dashes (as \\- so that options copy and paste
    correctly) and characters groff would otherwise warn about."""
    text = text.replace("\\", r"\e").replace("-", r"\-")
    out = []
    for ch in text:
        if ch in GLYPHS:
            out.append(GLYPHS[ch])
        elif ord(ch) > 126:
            out.append(r"\[u%04X]" % ord(ch))
        else:
            out.append(ch)
    return "".join(out)


def inline(text):
    """Markdown inline markup to roff fonts: `code` and **bold** bold, *emphasis* italic,
    [text](url) as its text."""
    text = re.sub(r"\[([^\]]+)\]\([^)]+\)", r"\1", text)
    parts = re.split(r"(`[^`]+`)", text)
    out = []
    for p in parts:
        if len(p) > 1 and p.startswith("`") and p.endswith("`"):
            out.append(r"\fB" + escape(p[1:-1]) + r"\fR")
            continue
        p = escape(p)
        p = re.sub(r"\*\*([^*]+)\*\*", r"\\fB\1\\fR", p)
        p = re.sub(r"(?<![\w*])\*([^*\s][^*]*)\*(?![\w*])", r"\\fI\1\\fR", p)
        out.append(p)
    return "".join(out)


def line_safe(s):
    """A line of roff text must not start with a control character ('.' or "'")."""
    return r"\&" + s if s[:1] in (".", "'") else s


def verbatim(lines):
    out = [".RS 4", ".nf"]
    out += [line_safe(escape(l)) for l in lines]
    out += [".fi", ".RE"]
    return out


def split_row(line):
    cells = line.strip().strip("|").split("|")
    return [c.strip() for c in cells]


def markdown(text, skip_title=True):
    """The roff of a Markdown document (from its first `## ` heading on when skip_title: the
    `# ` title and its lead paragraph go to NAME/DESCRIPTION by the caller)."""
    lines = text.splitlines()
    out = []
    i = 0
    para = []

    def flush():
        if para:
            out.append(".PP")
            out.append(line_safe(inline(" ".join(l.strip() for l in para))))
            para.clear()

    while i < len(lines):
        line = lines[i]
        if line.startswith("#"):
            flush()
            level = len(line) - len(line.lstrip("#"))
            title = line[level:].strip()
            if level == 1:
                if not skip_title:
                    out += [".SH", line_safe(inline(title).upper())]
            elif level == 2:
                out += [".SH " + '"' + inline(title).upper().replace('"', "") + '"']
            else:
                out += [".SS " + '"' + inline(title).replace('"', "") + '"']
            i += 1
        elif line.strip() == "":
            flush()
            i += 1
        elif line.startswith("    ") and not para:
            block = []
            while i < len(lines) and (lines[i].startswith("    ") or lines[i].strip() == ""):
                block.append(lines[i][4:])
                i += 1
            while block and block[-1].strip() == "":
                block.pop()
            # .sp, not .PP: a block inside a list item keeps the item's indentation.
            if out and not out[-1].startswith(".S"):
                out.append(".sp")
            out += verbatim(block)
        elif line.startswith("|"):
            flush()
            rows = []
            while i < len(lines) and lines[i].startswith("|"):
                rows.append(split_row(lines[i]))
                i += 1
            header, body = rows[0], [r for r in rows[1:] if not all(re.fullmatch(r":?-+:?", c)
                                                                    for c in r)]
            for r in body:
                out += [".TP", line_safe(inline(r[0]))]
                middle = [f"{header[k]}: {r[k]}" for k in range(1, len(r) - 1)
                          if k < len(header)]
                if middle:
                    out.append(line_safe(inline("; ".join(middle))))
                    out.append(".br")
                if len(r) > 1:
                    out.append(line_safe(inline(r[-1])))
        elif re.match(r"(- |\d+\. )", line):
            flush()
            m = re.match(r"(- |\d+\. )", line)
            marker = m.group(1).strip()
            item = [line[len(m.group(1)):]]
            i += 1
            while i < len(lines) and lines[i].startswith("  ") and lines[i].strip() != "" \
                    and not re.match(r"\s*(- |\d+\. )", lines[i]):
                item.append(lines[i].strip())
                i += 1
            bullet = r"\(bu" if marker == "-" else marker
            out += [".IP " + bullet + " 4", line_safe(inline(" ".join(item)))]
        else:
            para.append(line)
            i += 1
    flush()
    return out


def section(text, title):
    """The `## title` section of a Markdown document (up to the next `## `), as Markdown."""
    m = re.search(r"^## " + re.escape(title) + r".*?$(.*?)(?=^## |\Z)", text, re.M | re.S)
    return m.group(1) if m else ""


def header(name, sec, description):
    date = datetime.datetime.fromtimestamp(int(os.environ.get("SOURCE_DATE_EPOCH", "0")) or
                                           datetime.datetime.now().timestamp(),
                                           datetime.timezone.utc).strftime("%Y-%m-%d")
    version = os.environ.get("VIA_VERSION", "")
    return [r'.\" Generated by packaging/man/md2man.py; edit its sources, not this file.',
            f'.TH {escape(name.upper())} {sec} {date} "via {version}" "via manual"',
            # Left-aligned: long identifiers would otherwise stretch the spaces of a line.
            ".ad l",
            ".SH NAME", f"{escape(name)} \\- {escape(description)}"]


def help_text(via, *args):
    return subprocess.run([via, *args], capture_output=True, text=True, check=True,
                          env=dict(os.environ, LD_PRELOAD="")).stdout


def help_to_roff(text):
    """A `via CMD --help` text as roff: Usage lines verbatim, "Options:" as tagged paragraphs,
    other indented blocks verbatim, the rest as paragraphs."""
    out = []
    blocks = re.split(r"\n\s*\n", text.strip("\n"))
    for block in blocks:
        lines = block.split("\n")
        first = lines[0]
        if first.startswith("Usage:"):
            out += [".PP"] + verbatim(lines)
        elif first.endswith(":") and not first.startswith(" ") and len(lines) > 1:
            out += [".PP", r"\fB" + escape(first) + r"\fR"]
            rest = lines[1:]
            if first == "Options:":
                entry = None
                for l in rest:
                    indent = len(l) - len(l.lstrip())
                    if l.lstrip().startswith("-") and indent <= 6:
                        m = re.match(r"\s*(\S.*?)(?:\s{2,}(.*))?$", l)
                        entry = [m.group(1), [m.group(2) or ""]]
                        out.append(".TP")
                        out.append(line_safe(r"\fB" + escape(entry[0]) + r"\fR"))
                        out.append(line_safe(escape(entry[1][0])))
                    elif entry is not None:
                        out.append(line_safe(escape(l.strip())))
            else:
                out += verbatim([l[2:] if l.startswith("  ") else l for l in rest])
        elif all(l.startswith("  ") for l in lines):
            out += verbatim([l[2:] for l in lines])
        else:
            out += [".PP", line_safe(inline(" ".join(l.strip() for l in lines)))]
    return out


def via1(via, architecture_md, install_md, out_path):
    main = help_text(via, "--help")
    commands = re.findall(r"^  (\w+)\s{2,}(.*)$", main.split("Commands:", 1)[1].split(
        "\n\n", 1)[0], re.M)
    out = header("via", 1, "route a program's network traffic through an overlay network")
    out += [".SH SYNOPSIS", r"\fBvia\fR \fICOMMAND\fR [\fIOPTIONS\fR]", ".SH DESCRIPTION",
            line_safe(escape(main.split("\n", 1)[0].split(" - ", 1)[1].capitalize() + ".") +
                      " Its commands:")]
    for name, summary in commands:
        out += [".TP", r"\fB" + escape(name) + r"\fR", line_safe(escape(summary))]
    # The rest of the main help (options, where the configuration is looked up, examples).
    out += [".SH OPTIONS"]
    out += help_to_roff(main.split("Commands:", 1)[1].split("\n\n", 1)[1])
    out += [".SH COMMANDS"]
    for name, summary in commands:
        out += [f".SS \"via {escape(name)}\"", line_safe(escape(summary[0].upper() +
                                                              summary[1:] + "."))]
        if name == "help":
            continue
        out += help_to_roff(help_text(via, name, "--help"))
    with open(architecture_md) as f:
        env = section(f.read(), "Environment")
    out += [".SH ENVIRONMENT"] + markdown(env)[0:]
    with open(install_md) as f:
        install = f.read()
    out += [".SH \"THE LOGIN SESSION\""]
    out += [l.replace(".SH", ".SS", 1) if l.startswith(".SH") else l
            for l in markdown(install.split("\n## ", 1)[1] if "\n## " in install else "",
                              skip_title=True)]
    out += [".SH \"SEE ALSO\"", r"\fBvia.yaml\fR(5); /usr/share/doc/via/"]
    write(out_path, out)


def via_yaml5(configuration_md, out_path):
    with open(configuration_md) as f:
        text = f.read()
    out = header("via.yaml", 5, "configuration of via (the Wippy registry format)")
    out += [".SH DESCRIPTION"]
    # The title's lead paragraphs, then every section.
    lead = text.split("\n## ", 1)[0].split("\n", 1)[1]
    out += markdown(lead)
    out += markdown("## " + text.split("\n## ", 1)[1])
    out += [".SH \"SEE ALSO\"", r"\fBvia\fR(1); /usr/share/doc/via/"]
    write(out_path, out)


def write(path, lines):
    # Headings from a `## ` that had a manual ".SS" conversion may leave empty .PP runs; drop
    # a .PP that is directly followed by a heading or another .PP (groff would warn).
    clean = []
    for l in lines:
        if clean and clean[-1] == ".PP" and (l.startswith(".S") or l in (".PP", ".TP", ".IP")):
            clean.pop()
        clean.append(l)
    with open(path, "w") as f:
        f.write("\n".join(clean) + "\n")


if __name__ == "__main__":
    if len(sys.argv) == 6 and sys.argv[1] == "via1":
        via1(*sys.argv[2:])
    elif len(sys.argv) == 4 and sys.argv[1] == "via-yaml5":
        via_yaml5(*sys.argv[2:])
    else:
        sys.exit(__doc__)
