#!/usr/bin/env python3
"""A TCP relay in front of a proxy: latency without netem, and a record of what clients wrote.

    delay_relay.py LISTEN_PORT UPSTREAM_PORT [--delay-ms N] [--log FILE] [--host H]

Listens on H:LISTEN_PORT (default 127.0.0.1) and relays each connection to H:UPSTREAM_PORT.
Every chunk read in either direction is delivered N ms after it was read (order kept, chunks
never merged or split by the relay), so a request/answer exchange through the relay costs 2N ms
more: the bench's "proxy 20 ms away" with N = 10 (docs/benchmarks.md). This kernel has no netem.

--log FILE: one JSON line per chunk the client wrote, for the first 4 chunks of each
connection: {"conn": n, "seq": i, "hex": "...", "answered": bool} where "answered" says whether
the upstream had already sent anything back when the chunk arrived. A pipelined SOCKS5 client
writes greeting, credentials and request as chunk 0 with answered false; a stepwise one writes
the greeting alone and the request after an answer. Prints "listening" once ready.
"""
import argparse
import collections
import json
import socket
import sys
import threading
import time


class Pipe:
    """One direction: a reader that timestamps chunks and a writer that sends each when due."""

    def __init__(self, src, dst, delay, on_chunk=None):
        self.src, self.dst, self.delay, self.on_chunk = src, dst, delay, on_chunk
        self.queue = collections.deque()
        self.cv = threading.Condition()
        self.eof = False

    def start(self):
        threading.Thread(target=self.read, daemon=True).start()
        threading.Thread(target=self.write, daemon=True).start()

    def read(self):
        while True:
            try:
                data = self.src.recv(65536)
            except OSError:
                data = b""
            if data and self.on_chunk:
                self.on_chunk(data)
            with self.cv:
                if data:
                    self.queue.append((time.monotonic() + self.delay, data))
                else:
                    self.eof = True
                self.cv.notify()
            if not data:
                return

    def write(self):
        while True:
            with self.cv:
                while not self.queue and not self.eof:
                    self.cv.wait()
                if not self.queue:
                    break
                due, data = self.queue.popleft()
            wait = due - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            try:
                self.dst.sendall(data)
            except OSError:
                break
        try:
            self.dst.shutdown(socket.SHUT_WR)
        except OSError:
            pass


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("listen_port", type=int)
    ap.add_argument("upstream_port", type=int)
    ap.add_argument("--delay-ms", type=float, default=0.0)
    ap.add_argument("--log")
    ap.add_argument("--host", default="127.0.0.1")
    args = ap.parse_args()
    delay = args.delay_ms / 1000.0
    log = open(args.log, "a", buffering=1) if args.log else None
    log_lock = threading.Lock()

    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind((args.host, args.listen_port))
    srv.listen(512)
    print("listening", flush=True)
    n = 0
    while True:
        client, _ = srv.accept()
        n += 1
        try:
            up = socket.create_connection((args.host, args.upstream_port))
        except OSError:
            client.close()
            continue
        for s in (client, up):
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        state = {"answered": False, "seq": 0}

        def from_client(data, conn=n, state=state):
            if log and state["seq"] < 4:
                with log_lock:
                    log.write(json.dumps({"conn": conn, "seq": state["seq"], "hex": data.hex(),
                                          "answered": state["answered"]}) + "\n")
            state["seq"] += 1

        def from_upstream(data, state=state):
            state["answered"] = True

        Pipe(client, up, delay, from_client).start()
        Pipe(up, client, delay, from_upstream).start()


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        sys.exit(0)
