#!/usr/bin/python3
"""Idle memory per connection (issue 16): PSS of every sente-lite process
(master, workers, logger: /proc/PID/smaps_rollup) before and after N idle
WebSocket connections, for plain ws://, wss:// (ECDSA P-256, a throw-away
certificate) and ws:// with permessage-deflate negotiated.  Figures, not a
test: the machine is shared, so each variant runs `--runs` times and the
median is printed.

    scripts/bench/conn_mem.py BIN [--conns 1000] [--runs 3]
"""
import argparse
import asyncio
import os
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

import websockets
from benchlib import free_port  # noqa: E402  (scripts/bench/benchlib.py)


def pss_kib(root):
    pids = [root] + [int(p) for p in subprocess.run(
        ["pgrep", "-P", str(root)], capture_output=True, text=True).stdout.split()]
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/smaps_rollup") as f:
                for line in f:
                    if line.startswith("Pss:"):
                        total += int(line.split()[1])
        except FileNotFoundError:
            pass
    return total


async def open_many(url, n, ctx, compression):
    conns = []
    for i in range(n):
        ws = await websockets.connect(url, ssl=ctx, compression=compression,
                                      max_queue=1, ping_interval=None)
        await ws.recv()  # the welcome: the connection is fully open
        conns.append(ws)
    return conns


def run(binary, kind, n, certdir):
    port, tport = free_port(), free_port()
    args = [binary, "--host", "127.0.0.1", "--port", str(port), "--workers", "2",
            "--max-connections", str(n + 100), "--max-http-connections", str(n + 100),
            "--log-level", "warn", "--heartbeat-interval-ms", "600000"]
    ctx = None
    url = f"ws://127.0.0.1:{port}/"
    if kind == "wss":
        args += ["--tls-port", str(tport), "--tls-cert", f"{certdir}/cert.pem",
                 "--tls-key", f"{certdir}/key.pem"]
        ctx = ssl.create_default_context(cafile=f"{certdir}/cert.pem")
        url = f"wss://localhost:{tport}/"
    p = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(100):
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1)
                break
            except OSError:
                time.sleep(0.1)
        time.sleep(0.5)
        before = pss_kib(p.pid)
        loop = asyncio.new_event_loop()
        conns = loop.run_until_complete(
            open_many(url, n, ctx, "deflate" if kind == "ws+deflate" else None))
        time.sleep(2.0)  # idle: heartbeats off, buffers released
        after = pss_kib(p.pid)
        for c in conns:
            loop.run_until_complete(c.close())
        loop.close()
        return (after - before) * 1024 / n
    finally:
        p.terminate()
        p.wait()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("binary")
    ap.add_argument("--conns", type=int, default=1000)
    ap.add_argument("--runs", type=int, default=3)
    a = ap.parse_args()
    import resource
    resource.setrlimit(resource.RLIMIT_NOFILE, (8192, 8192))
    with tempfile.TemporaryDirectory() as d:
        subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                        "ec_paramgen_curve:P-256", "-nodes", "-keyout", f"{d}/key.pem", "-out",
                        f"{d}/cert.pem", "-days", "2", "-subj", "/CN=localhost", "-addext",
                        "subjectAltName=DNS:localhost"], check=True, capture_output=True)
        results = {k: [] for k in ("ws", "wss", "ws+deflate")}
        for _ in range(a.runs):  # alternating
            for k in results:
                results[k].append(run(a.binary, k, a.conns, d))
        for k, v in results.items():
            print(f"{k:11s} idle PSS per connection: median {statistics.median(v):7.0f} bytes "
                  f"(runs: {', '.join('%.0f' % x for x in v)}; {a.conns} connections, "
                  f"all server processes)")


if __name__ == "__main__":
    main()
