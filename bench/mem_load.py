#!/usr/bin/env python3
"""Opens N live sessions on a via broker, as N `via run` processes would: N connections to the
broker's socket, each with HELLO and OPEN_SESSION (common/wire.h, docs/protocol.md). Prints
"sessions=N" once they are all open, then keeps them until stdin reaches end-of-file.

    bench/mem_load.py SOCKET NETWORK N
"""
import socket
import struct
import sys

MAGIC = 0x31414956
HELLO, OPEN_SESSION, REPLY = 1, 5, 0x8000
TAG_NETWORK, TAG_ERRNO, TAG_MESSAGE, TAG_SESSION, TAG_VERSION = 1, 7, 8, 2, 12


def message(mtype, mid, fields):
    body = b"".join(struct.pack("<HH", tag, len(v)) + v for tag, v in fields)
    return struct.pack("<IHHII", MAGIC, mtype, 0, mid, len(body)) + body


def fields_of(data):
    magic, mtype, _, mid, length = struct.unpack_from("<IHHII", data)
    if magic != MAGIC or length != len(data) - 16:
        raise SystemExit("mem_load: malformed reply from the broker")
    out, off = {}, 16
    while off < len(data):
        tag, n = struct.unpack_from("<HH", data, off)
        out.setdefault(tag, data[off + 4:off + 4 + n])
        off += 4 + n
    return mtype, out


def exchange(sock, mtype, mid, fields):
    sock.send(message(mtype, mid, fields))
    rtype, f = fields_of(sock.recv(65536))
    err = struct.unpack("<I", f.get(TAG_ERRNO, b"\0\0\0\0"))[0]
    if rtype != mtype | REPLY or err != 0:
        raise SystemExit(f"mem_load: request {mtype} failed: errno {err} "
                         f"{f.get(TAG_MESSAGE, b'').decode(errors='replace')}")
    return f


def main():
    if len(sys.argv) != 4:
        raise SystemExit(__doc__)
    path, network, n = sys.argv[1], sys.argv[2].encode(), int(sys.argv[3])
    socks = []
    for i in range(n):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        s.connect(path)
        exchange(s, HELLO, 1, [(TAG_VERSION, struct.pack("<H", 1)), (TAG_NETWORK, network)])
        f = exchange(s, OPEN_SESSION, 2, [(TAG_NETWORK, network)])
        if TAG_SESSION not in f:
            raise SystemExit("mem_load: OPEN_SESSION reply without a session token")
        socks.append(s)
    print(f"sessions={n}", flush=True)
    sys.stdin.read()


if __name__ == "__main__":
    main()
