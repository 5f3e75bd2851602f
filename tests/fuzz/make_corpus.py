#!/usr/bin/env python3
"""Writes the seed corpora of the fuzz targets (docs/fuzzing.md) into tests/fuzz/<target>_corpus/.

Seeds are small, valid or nearly valid inputs: the fuzzer mutates them. Run from anywhere:
    python3 tests/fuzz/make_corpus.py
It (re)writes the seeds it knows by name and leaves other files (regression inputs of findings,
the SAM corpus) alone. The config seeds come from the repository's configs (tests/unit/testdata,
tests/integration/data) and the YAML examples in docs/configuration.md.
"""
import os
import re
import struct
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))


def write(corpus, name, data):
    d = os.path.join(HERE, corpus + "_corpus")
    os.makedirs(d, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


# ---- SOCKS5: 5 set-up bytes (flags, split seed, name/user/pass lengths), then proxy bytes -----
def socks5():
    ok_v4 = b"\x05\x00\x00\x01\x0a\x00\x00\x01\x1f\x90"
    ok_v6 = b"\x05\x00\x00\x04" + bytes(range(16)) + b"\x1f\x90"
    ok_dom = b"\x05\x00\x00\x03\x0bexample.com\x00\x50"
    seeds = {
        "noauth_v4": (0x00, 1, 11, 0, 0, b"\x05\x00" + ok_v4),
        "noauth_v6_reply": (0x00, 2, 11, 0, 0, b"\x05\x00" + ok_v6),
        "noauth_domain_reply": (0x00, 3, 11, 0, 0, b"\x05\x00" + ok_dom),
        "ipv4_target": (0x02, 4, 0, 0, 0, b"\x05\x00" + ok_v4),
        "ipv6_target": (0x04, 5, 0, 0, 0, b"\x05\x00" + ok_v6),
        "mapped_target": (0x06, 6, 0, 0, 0, b"\x05\x00" + ok_v4),
        "auth_ok": (0x01, 7, 11, 4, 8, b"\x05\x02\x01\x00" + ok_v4),
        "auth_max": (0x01, 8, 255, 255, 255, b"\x05\x02\x01\x00" + ok_dom),
        "auth_proxy_picks_none": (0x01, 9, 11, 4, 8, b"\x05\x00" + ok_v4),
        "auth_rejected": (0x01, 10, 11, 4, 8, b"\x05\x02\x01\x01"),
        "no_acceptable": (0x00, 11, 11, 0, 0, b"\x05\xff"),
        "wrong_method": (0x00, 12, 11, 0, 0, b"\x05\x02"),
        "not_socks5": (0x00, 13, 11, 0, 0, b"HTTP/1.1 400 Bad Request\r\n\r\n"),
        "refused": (0x00, 14, 11, 0, 0, b"\x05\x00\x05\x05\x00\x01\x00\x00\x00\x00\x00\x00"),
        "tor_onion_error": (0x00, 15, 11, 0, 0, b"\x05\x00\x05\xf6\x00\x01\x00\x00\x00\x00\x00\x00"),
        "bad_atyp": (0x00, 16, 11, 0, 0, b"\x05\x00\x05\x00\x00\x07\x00\x00\x00\x00\x00\x00"),
        "empty_domain": (0x00, 17, 11, 0, 0, b"\x05\x00\x05\x00\x00\x03\x00\x00\x50"),
        "reserved_set": (0x00, 18, 11, 0, 0, b"\x05\x00\x05\x00\x01\x01\x00\x00\x00\x00\x00\x00"),
        "trailing_data": (0x40, 19, 11, 0, 0, b"\x05\x00" + ok_v4 + b"HTTP/1.1 200 OK\r\n"),
        "resolve": (0x08, 20, 11, 0, 0, b"\x05\x00" + ok_v4),
        "resolve_ptr": (0x12, 21, 0, 0, 0, b"\x05\x00" + ok_dom),
        "invalid_request": (0x20, 22, 11, 0, 0, b"\x05\x00" + ok_v4),
        "short": (0x00, 23, 11, 0, 0, b"\x05\x00\x05\x00\x00\x04\x01\x02"),
        "max_domain_reply": (0x00, 24, 11, 0, 0,
                             b"\x05\x00\x05\x00\x00\x03\xff" + b"d" * 255 + b"\x00\x50"),
    }
    for name, (flags, seed, nl, ul, pl, body) in seeds.items():
        write("socks5", name, bytes([flags, seed, nl, ul, pl]) + body)


# ---- broker requests: wire messages (common/wire.h, docs/protocol.md) ------------------------
MAGIC = 0x31414956


def msg(mtype, fields, msg_id=1, body_len=None, magic=MAGIC):
    body = b"".join(struct.pack("<HH", t, len(v)) + v for t, v in fields)
    n = len(body) if body_len is None else body_len
    return struct.pack("<IHHII", magic, mtype, 0, msg_id, n) + body


def u8(v):
    return struct.pack("<B", v)


def u16(v):
    return struct.pack("<H", v)


def u32(v):
    return struct.pack("<I", v)


def addr4(a, port):
    return bytes([4, 0]) + struct.pack(">H", port) + bytes(a)


def addr6(a, port):
    return bytes([6, 0]) + struct.pack(">H", port) + bytes(a)


FAKE4 = [198, 18, 0, 1]
FAKE6 = [0xFD, 0x76, 0x69, 0x61, 0xFF, 0] + [0] * 9 + [1]
MAPPED = [0] * 10 + [0xFF, 0xFF] + FAKE4


def dns_query(name, qtype=1, qid=0x1234, flags=0x0100, edns=False):
    q = b"".join(bytes([len(label)]) + label.encode() for label in name.split(".") if label)
    q += b"\x00" + struct.pack(">HH", qtype, 1)
    ar = 1 if edns else 0
    head = struct.pack(">HHHHHH", qid, flags, 1, 0, 0, ar)
    opt = b"\x00" + struct.pack(">HHIH", 41, 1232, 0, 0) if edns else b""
    return head + q + opt


def broker_request():
    seeds = {
        "hello": msg(1, [(12, u16(1)), (1, b"app:tor"), (2, b"00ff" * 8), (9, u32(0)),
                         (10, u32(1234))]),
        "hello_control": msg(1, [(12, u16(1)), (9, u32(1 << 21))]),
        "hello_bad_version": msg(1, [(12, u16(2))]),
        "connect_addr4": msg(2, [(3, addr4([93, 184, 216, 34], 443))]),
        "connect_fake4": msg(2, [(3, addr4(FAKE4, 80))]),
        "connect_fake6": msg(2, [(3, addr6(FAKE6, 80))]),
        "connect_mapped": msg(2, [(3, addr6(MAPPED, 80))]),
        "connect_name": msg(2, [(4, b"example.com"), (5, u16(80))]),
        "connect_name_noport": msg(2, [(4, b"Example.COM.")]),
        "resolve": msg(3, [(4, b"example.com"), (6, u8(0))]),
        "resolve_v6": msg(3, [(4, b"xn--bcher-kva.example"), (6, u8(6))]),
        "resolve_onion": msg(3, [(4, b"duckduckgogg42xjoc72x3sjasowoarfbgcmvfimaftt6twagswzczad.onion"),
                                 (6, u8(4))]),
        "resolve_long": msg(3, [(4, b"a" * 63 + b"." + b"b" * 63 + b"." + b"c" * 63 + b"." + b"d" * 61)]),
        "reverse_fake": msg(4, [(3, addr4(FAKE4, 0))]),
        "reverse_loopback6": msg(4, [(3, addr6([0] * 15 + [1], 0))]),
        "open_session": msg(5, [(0x40, b"/usr/bin/curl"), (0x41, b"curl"), (0x41, b"-s"),
                                (0x41, b"http://example.com/"), (1, b"app:tor"),
                                (9, u32(1 << 20))]),
        "status": msg(6, []),
        "shutdown": msg(7, []),
        "report_ok": msg(8, [(4, b"example.com"), (5, u16(443)), (7, u32(0))]),
        "report_count": msg(8, [(0x65, u32(17))]),
        "report_fail": msg(8, [(3, addr4(FAKE4, 80)), (7, u32(111)),
                               (8, b"SOCKS5 proxy replied 0x05 (connection refused)")]),
        "dns_query_a": msg(0x10, [(0x10, dns_query("example.com"))]),
        "dns_query_aaaa_edns": msg(0x10, [(0x10, dns_query("example.com", 28, edns=True))]),
        "dns_query_ptr": msg(0x10, [(0x10, dns_query("1.0.18.198.in-addr.arpa", 12))]),
        "dns_socket": msg(0x11, [(3, addr4([127, 0, 0, 1], 5353))]),
        "session_child": msg(0x40, [(2, b"00ff" * 8), (10, u32(4242))]),
        "reload": msg(0x41, []),
        "session_detach": msg(0x42, [(2, b"00ff" * 8), (10, u32(4242)), (10, u32(4243))]),
        "listen": msg(0x20, [(3, addr4([0, 0, 0, 0], 8080)), (0x22, u32(128))]),
        "unknown_type": msg(0x7777, [(0x7777, b"x")]),
        "bad_magic": msg(1, [], magic=0x31414957),
        "length_mismatch": msg(1, [(12, u16(1))], body_len=9),
        "truncated_field": msg(1, [(12, u16(1))])[:-1],
        "short_header": b"VIA1\x01\x00",
    }
    for name, data in seeds.items():
        write("broker_request", name, data)


# ---- raw DNS queries (RFC 1035) --------------------------------------------------------------
def dns():
    nibbles = "fd766961ff0000000000000000000001"
    ip6arpa = ".".join(reversed(nibbles)) + ".ip6.arpa"
    seeds = {
        "a": dns_query("example.com"),
        "aaaa": dns_query("example.com", 28),
        "a_edns": dns_query("example.com", 1, edns=True),
        "ptr4_fake": dns_query("1.0.18.198.in-addr.arpa", 12),
        "ptr4_other": dns_query("1.1.1.1.in-addr.arpa", 12),
        "ptr6_fake": dns_query(ip6arpa, 12),
        "mx": dns_query("example.com", 15),
        "localhost": dns_query("foo.localhost", 1),
        "onion": dns_query("duckduckgogg42xjoc72x3sjasowoarfbgcmvfimaftt6twagswzczad.onion", 28),
        "root": dns_query("", 1),
        "uppercase": dns_query("ExAmPlE.CoM", 1),
        "escaped": dns_query("ex\\ample.com", 1),
        "class_ch": dns_query("version.bind", 16)[:-2] + struct.pack(">H", 3),
        "response": dns_query("example.com", flags=0x8180),
        "notify_opcode": dns_query("example.com", flags=0x2000),
        "two_questions": dns_query("example.com")[:4] + b"\x00\x02" + dns_query("example.com")[6:],
        "compression": dns_query("example.com")[:12] + b"\xc0\x0c\x00\x01\x00\x01",
        "trailing": dns_query("example.com") + b"\x00",
        "label_63": dns_query("a" * 63 + ".com"),
        "name_255": dns_query(".".join(["b" * 63] * 3 + ["c" * 61])),
        "header_only": struct.pack(">HHHHHH", 7, 0x100, 0, 0, 0, 0),
        "short": b"\x12\x34\x01",
    }
    for name, data in seeds.items():
        write("dns_query", name, data)


# ---- SAM: replies that carry destinations (the other SAM seeds are hand-written) -------------
def sam():
    import base64
    keys = bytes((i * 37 + 11) % 256 for i in range(384))
    dest = keys + b"\x05\x00\x04\x00\x07\x00\x00"  # key certificate: Ed25519, ElGamal
    priv = dest + bytes(256) + bytes(range(32))

    def b64(b):
        return base64.b64encode(b, altchars=b"-~").decode()

    hello = "HELLO REPLY RESULT=OK VERSION=3.1\n"
    write("sam", "session_status_dest",
          hello + "SESSION STATUS RESULT=OK DESTINATION=" + b64(priv) + "\n")
    write("sam", "peer_line", b64(dest) + " FROM_PORT=0 TO_PORT=0\n")
    write("sam", "naming_reply_ok", "NAMING REPLY RESULT=OK NAME=x.i2p VALUE=" + b64(dest) + "\n")
    write("sam", "stream_status_ok", hello + "STREAM STATUS RESULT=OK\n")
    # Around the 8192-byte line limit (kMaxLine): one byte under it, and past it.
    write("sam", "line_8191", "STREAM STATUS RESULT=OK MESSAGE=" + "m" * (8191 - 32) + "\n")
    write("sam", "line_too_long", hello + "STREAM STATUS RESULT=OK MESSAGE=" + "m" * 8300 + "\n")


# ---- configs ---------------------------------------------------------------------------------
def config():
    n = 0
    for base in ("tests/unit/testdata/config", "tests/integration/data"):
        for dirpath, _, files in sorted(os.walk(os.path.join(ROOT, base))):
            for f in sorted(files):
                if not f.endswith(".yaml"):
                    continue
                rel = os.path.relpath(os.path.join(dirpath, f), ROOT)
                with open(os.path.join(ROOT, rel), "rb") as fh:
                    write("config", re.sub(r"[^A-Za-z0-9._-]", "_", rel), fh.read())
                n += 1
    # The indented YAML examples of docs/configuration.md.
    with open(os.path.join(ROOT, "docs/configuration.md")) as fh:
        lines = fh.read().split("\n")
    block, blocks = [], []
    for line in lines + [""]:
        if line.startswith("    ") or (block and line == ""):
            block.append(line[4:])
        elif block:
            blocks.append("\n".join(block).strip("\n") + "\n")
            block = []
    k = 0
    for b in blocks:
        if ":" not in b or not re.search(r"^(version|namespace|entries|network_service|- name)",
                                         b, re.M):
            continue
        if "entries:" not in b and "network_service:" not in b:
            b = 'version: "1.0"\nnamespace: app\nentries:\n' + "".join(
                "  " + x + "\n" for x in b.rstrip("\n").split("\n"))
        k += 1
        write("config", "docs_configuration_%02d.yaml" % k, b)
    return n + k


if __name__ == "__main__":
    socks5()
    broker_request()
    dns()
    sam()
    print("config seeds:", config(), file=sys.stderr)
