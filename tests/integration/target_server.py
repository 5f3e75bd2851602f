#!/usr/bin/env python3
"""A recording HTTP target for via's integration tests (loopback only).

usage: target_server.py PORT RECORD_FILE [DOCROOT] [--tls CERT KEY] [--bind ADDR] [--only-files]

Serves files from DOCROOT (for git's dumb HTTP protocol) and answers every other GET with a
small JSON body {"ip": "<peer address>"} (the IP-echo server of `via probe`). Each request is
appended to RECORD_FILE as one JSON line: {"peer": ..., "host": <Host header>, "path": ...}, so
a test can assert what the far side saw. With --only-files, a path that is not a file of DOCROOT
gets 404 (a package repository: apt must see which optional files are missing).
"""
import http.server
import json
import os
import ssl
import sys
import threading

args = sys.argv[1:]
tls = None
bind = "127.0.0.1"
only_files = "--only-files" in args
if only_files:
    args.remove("--only-files")
if "--tls" in args:
    i = args.index("--tls")
    tls = (args[i + 1], args[i + 2])
    del args[i:i + 3]
if "--bind" in args:
    i = args.index("--bind")
    bind = args[i + 1]
    del args[i:i + 2]
port, record = int(args[0]), args[1]
docroot = args[2] if len(args) > 2 else None
lock = threading.Lock()


class Handler(http.server.SimpleHTTPRequestHandler):
    def __init__(self, *a, **kw):
        super().__init__(*a, directory=docroot or os.getcwd(), **kw)

    def log_message(self, *a):
        pass

    def record(self):
        with lock, open(record, "a") as f:
            f.write(json.dumps({"peer": self.client_address[0],
                                "host": self.headers.get("Host", ""),
                                "path": self.path}) + "\n")

    def do_GET(self):
        self.record()
        if docroot and os.path.exists(os.path.join(docroot, self.path.lstrip("/").split("?")[0])):
            return super().do_GET()
        if only_files:
            return self.send_error(404)
        body = json.dumps({"ip": self.client_address[0]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class Server(http.server.ThreadingHTTPServer):
    daemon_threads = True


if ":" in bind:  # an IPv6 address
    import socket
    Server.address_family = socket.AF_INET6
srv = Server((bind, port), Handler)
if tls:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(*tls)
    srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
print("ready", flush=True)
srv.serve_forever()
