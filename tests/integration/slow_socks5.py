#!/usr/bin/env python3
"""A small SOCKS5 proxy (RFC 1928, method 0x00, CONNECT) that takes its time or misbehaves.

    slow_socks5.py PORT LOG [--delay-ms N] [--mode ok|refuse|close|hang] [--bind-out ADDR]

Listens on 127.0.0.1:PORT. For each CONNECT it appends one line to LOG: "connect HOST:PORT"
(HOST as the client sent it: a name or an address), and once the client's connection ends,
"closed HOST:PORT after N bytes" (what the client sent after the request). Then, by --mode:
ok: waits --delay-ms, connects to the target from --bind-out (127.0.0.2 by default, so the target
tells proxied requests by their peer address), answers success and relays; refuse: waits, then
answers reply code 5 (connection refused) and closes; close: closes without answering; hang:
never answers. Prints "listening" once ready.
"""
import argparse
import asyncio
import socket
import struct
import sys


async def pump(reader, writer, counter=None):
    try:
        while True:
            data = await reader.read(65536)
            if not data:
                break
            if counter is not None:
                counter[0] += len(data)
            writer.write(data)
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        try:
            writer.close()
        except OSError:
            pass


def log(args, line):
    with open(args.log, "a") as f:
        f.write(line + "\n")


async def handle(args, reader, writer):
    target = "?"
    after = [0]
    try:
        head = await reader.readexactly(2)
        await reader.readexactly(head[1])
        writer.write(b"\x05\x00")
        await writer.drain()
        ver, cmd, _, atyp = await reader.readexactly(4)
        if atyp == 1:
            host = socket.inet_ntop(socket.AF_INET, await reader.readexactly(4))
        elif atyp == 4:
            host = socket.inet_ntop(socket.AF_INET6, await reader.readexactly(16))
        else:
            host = (await reader.readexactly((await reader.readexactly(1))[0])).decode()
        port = struct.unpack(">H", await reader.readexactly(2))[0]
        target = f"{host}:{port}"
        log(args, f"connect {target}")
        if args.mode == "close":
            return
        if args.mode == "hang":
            while await reader.read(65536):
                after[0] += 1
            return
        await asyncio.sleep(args.delay_ms / 1000)
        if args.mode == "refuse":
            writer.write(b"\x05\x05\x00\x01\x00\x00\x00\x00\x00\x00")
            await writer.drain()
            return
        up_r, up_w = await asyncio.open_connection(host, port, local_addr=(args.bind_out, 0))
        writer.write(b"\x05\x00\x00\x01\x7f\x00\x00\x02\x00\x00")
        await writer.drain()
        await asyncio.gather(pump(reader, up_w, after), pump(up_r, writer))
    except (asyncio.IncompleteReadError, ConnectionError, OSError):
        pass
    finally:
        if target != "?":
            log(args, f"closed {target} after {after[0]} bytes")
        try:
            writer.close()
        except OSError:
            pass


async def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("port", type=int)
    ap.add_argument("log")
    ap.add_argument("--delay-ms", type=int, default=0)
    ap.add_argument("--mode", default="ok", choices=["ok", "refuse", "close", "hang"])
    ap.add_argument("--bind-out", default="127.0.0.2")
    args = ap.parse_args()
    open(args.log, "a").close()
    server = await asyncio.start_server(lambda r, w: handle(args, r, w), "127.0.0.1", args.port,
                                        backlog=256)
    print("listening", flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        sys.exit(0)
