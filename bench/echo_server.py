#!/usr/bin/env python3
"""A loopback TCP echo server for the benchmarks: echo_server.py PORT"""
import asyncio
import sys


async def handle(r, w):
    try:
        while data := await r.read(65536):
            w.write(data)
            await w.drain()
    finally:
        w.close()


async def main():
    srv = await asyncio.start_server(handle, "127.0.0.1", int(sys.argv[1]))
    print("ready", flush=True)
    await srv.serve_forever()

asyncio.run(main())
