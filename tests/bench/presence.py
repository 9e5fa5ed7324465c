#!/usr/bin/python3
"""make bench-presence: figures for issue 15 (not a test).

1. Presence latency: the real binary with two workers and one channel with
   1,000, then 10,000 subscribers (spread over both workers by the master);
   a subscriber asks `presence` (one page: at most 1,000 connections) and
   `presence-stats` (walks every subscriber to count users) repeatedly.
   Latency is request sent -> whole reply frame received (not parsed), p50
   and p99 over --calls calls; "all pages" follows next-cursor through the
   whole list (JSON parsed, to find the cursor).
2. Join storm vs the same fan-out as publications: 1,000 connections are
   opened, then each sends `subscribe` to a channel with join-leave, at
   once: join k goes to the k-1 subscribers already there, 499,500
   deliveries.  Against it: 1,000 subscribers of a channel without
   join-leave and 500 publishes sent at once (500,000 deliveries).  Time
   to quiesce is from the first request sent until the server's
   `delivered` count has reached the expected total and the clients (one
   thread draining every socket with epoll, bytes only) have received
   nothing more for 100 ms; delivered/s = deliveries / that time.  Also
   shown: what was refused or closed (overloaded, 1013 missed-disconnects,
   presence-resync notices, slow consumers): nothing, with the default bounds.

Each figure is the median of --runs runs (default 3), each on a fresh
server; the machine is shared, so the spread is printed too."""
import argparse
import base64
import json
import os
import selectors
import socket
import statistics
import struct
import subprocess
import sys
import time
import urllib.request

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..",
                                "scripts", "bench"))
from benchlib import free_port  # noqa: E402  (scripts/bench/benchlib.py)

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")


def frame(obj):
    p = json.dumps(obj, separators=(",", ":")).encode()
    n = len(p)
    if n < 126:
        head = bytes([0x81, 0x80 | n])
    elif n < 65536:
        head = bytes([0x81, 0x80 | 126]) + struct.pack(">H", n)
    else:
        head = bytes([0x81, 0x80 | 127]) + struct.pack(">Q", n)
    return head + b"\0\0\0\0" + p


class Conn:
    """A blocking WebSocket client that reads whole frames (no parsing)."""

    def __init__(self, port):
        self.s = socket.create_connection(("127.0.0.1", port), timeout=30)
        key = base64.b64encode(os.urandom(16)).decode()
        self.s.sendall((f"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: "
                        f"Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13"
                        f"\r\n\r\n").encode())
        buf = b""
        while b"\r\n\r\n" not in buf:
            buf += self.s.recv(4096)
        self.buf = buf.split(b"\r\n\r\n", 1)[1]
        self.welcome = json.loads(self.read())

    def _need(self, n):
        while len(self.buf) < n:
            chunk = self.s.recv(1 << 18)
            if not chunk:
                raise EOFError
            self.buf += chunk

    def read(self):
        while True:
            self._need(2)
            op, n, p = self.buf[0] & 0x0F, self.buf[1] & 0x7F, 2
            if n == 126:
                self._need(4)
                n, p = struct.unpack(">H", self.buf[2:4])[0], 4
            elif n == 127:
                self._need(10)
                n, p = struct.unpack(">Q", self.buf[2:10])[0], 10
            self._need(p + n)
            payload, self.buf = self.buf[p:p + n], self.buf[p + n:]
            if op == 1:
                return payload

    def send(self, obj):
        self.s.sendall(frame(obj))

    def ask(self, obj):
        self.send(obj)
        return json.loads(self.read())


class Server:
    def __init__(self, binary, args):
        self.port = free_port()
        self.proc = subprocess.Popen(
            [binary, "--host", "127.0.0.1", "--port", str(self.port), "--workers", "2",
             "--log-level", "warn"] + args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 10
        while time.time() < deadline:
            try:
                if self.stats():
                    return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("server did not start")

    def stats(self):
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/stats", timeout=10) as r:
            return json.loads(r.read())

    def stop(self):
        self.proc.terminate()
        self.proc.wait(timeout=20)


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(len(xs) * p))]


def subscribers(port, n, channel):
    conns = [Conn(port) for _ in range(n)]
    for c in conns:
        c.send({"type": "subscribe", "channel-id": channel})
    for c in conns:
        r = json.loads(c.read())
        assert r["success"], r
    return conns


# ---------------------------------------------------------------- presence

def presence_run(binary, n, calls):
    srv = Server(binary, ["--max-connections", str(n + 100), "--max-subscribers", str(n + 100)])
    try:
        conns = subscribers(srv.port, n, "big")
        asker = conns[-1]
        page, stats_lat, nbytes = [], [], 0
        for _ in range(calls):
            t0 = time.perf_counter()
            asker.send({"type": "presence", "channel-id": "big"})
            reply = asker.read()
            page.append(time.perf_counter() - t0)
            nbytes = len(reply)
        for _ in range(calls):
            t0 = time.perf_counter()
            asker.send({"type": "presence-stats", "channel-id": "big"})
            reply = asker.read()
            stats_lat.append(time.perf_counter() - t0)
        st = json.loads(reply)
        assert st["num-clients"] == n, st
        full, pages = [], 0
        for _ in range(max(3, calls // 10)):
            t0, cursor, seen, pages = time.perf_counter(), None, 0, 0
            while True:
                msg = {"type": "presence", "channel-id": "big"}
                if cursor is not None:
                    msg["cursor"] = cursor
                r = asker.ask(msg)
                seen += len(r["clients"])
                pages += 1
                cursor = r["next-cursor"]
                if cursor is None:
                    break
            full.append(time.perf_counter() - t0)
            assert seen == n, (seen, n)
        for c in conns:
            c.s.close()
        return {"page_p50": pct(page, .5), "page_p99": pct(page, .99), "page_bytes": nbytes,
                "stats_p50": pct(stats_lat, .5), "stats_p99": pct(stats_lat, .99),
                "all_pages": statistics.median(full), "pages": pages}
    finally:
        srv.stop()


# ------------------------------------------------------------------ storms

def drain_until_quiet(srv, conns, t0, target, base_delivered):
    """Read every socket (bytes only) until the server has delivered
    `target` more and nothing arrived for 100 ms; returns (seconds,
    delivered, bytes)."""
    sel = selectors.DefaultSelector()
    for c in conns:
        c.s.setblocking(False)
        sel.register(c.s, selectors.EVENT_READ)
    got, last_rx, delivered, next_poll = 0, time.perf_counter(), 0, 0.0
    while True:
        for key, _ in sel.select(0.005):
            try:
                data = key.fileobj.recv(1 << 18)
            except BlockingIOError:
                continue
            if data:
                got += len(data)
                last_rx = time.perf_counter()
        now = time.perf_counter()
        if now >= next_poll:
            delivered = sum(w["delivered"] for w in srv.stats()["workers"]) - base_delivered
            next_poll = now + 0.02
        if delivered >= target and now - last_rx > 0.1:
            sel.close()
            return last_rx - t0, delivered, got
        if now - t0 > 120:
            raise RuntimeError(f"not quiet after 120 s: {delivered} of {target} delivered")


def refusals(srv):
    s = srv.stats()
    return {"overloaded": s["overloaded"],
            "missed-disconnects": sum(w["missed-disconnects"] for w in s["workers"]),
            "presence-resyncs": sum(w["presence-resyncs"] for w in s["workers"]),
            "slow-consumers": s["slow-consumer-disconnects"]}


def join_storm(binary, n):
    srv = Server(binary, ["--max-subscribers", str(n + 100), "--channel", "storm:join-leave=true"])
    try:
        conns = [Conn(srv.port) for _ in range(n)]
        base = sum(w["delivered"] for w in srv.stats()["workers"])
        t0 = time.perf_counter()
        for c in conns:
            c.send({"type": "subscribe", "channel-id": "storm"})
        secs, delivered, got = drain_until_quiet(srv, conns, t0, n * (n - 1) // 2, base)
        r = refusals(srv)
        for c in conns:
            c.s.close()
        return {"secs": secs, "delivered": delivered, "bytes": got, **r}
    finally:
        srv.stop()


def publish_storm(binary, n, msgs):
    srv = Server(binary, ["--max-subscribers", str(n + 100), "--channel", "fan"])
    try:
        conns = subscribers(srv.port, n, "fan")
        pub = Conn(srv.port)
        base = sum(w["delivered"] for w in srv.stats()["workers"])
        t0 = time.perf_counter()
        data = b"".join(frame({"type": "publish", "channel-id": "fan",
                               "data": {"n": i, "pad": "x" * 40}}) for i in range(msgs))
        pub.s.sendall(data)
        secs, delivered, got = drain_until_quiet(srv, conns + [pub], t0, n * msgs, base)
        r = refusals(srv)
        for c in conns + [pub]:
            c.s.close()
        return {"secs": secs, "delivered": delivered, "bytes": got, **r}
    finally:
        srv.stop()


def med(runs, key):
    xs = [r[key] for r in runs]
    return statistics.median(xs), min(xs), max(xs)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--bin", default=os.path.join(ROOT, "build", "sente-lite"))
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--calls", type=int, default=50)
    ap.add_argument("--sizes", default="1000,10000")
    ap.add_argument("--storm", type=int, default=1000)
    a = ap.parse_args()
    print(f"presence ({a.runs} runs, median [min..max]; shared 2-core machine: expect noise)")
    for n in map(int, a.sizes.split(",")):
        runs = [presence_run(a.bin, n, a.calls) for _ in range(a.runs)]
        ms = lambda k: "%.2f ms [%.2f..%.2f]" % tuple(1000 * x for x in med(runs, k))  # noqa
        print(f"  {n:>6} subscribers: one page ({runs[0]['page_bytes']} bytes) p50 "
              f"{ms('page_p50')}, p99 {ms('page_p99')}; presence-stats p50 {ms('stats_p50')}, "
              f"p99 {ms('stats_p99')}; all {runs[0]['pages']} pages {ms('all_pages')}")
        sys.stdout.flush()
    n = a.storm
    print(f"storms: {n} subscribers ({a.runs} runs, median [min..max])")
    for name, fn in (("join storm (join-leave)", lambda: join_storm(a.bin, n)),
                     (f"publish {n // 2} messages", lambda: publish_storm(a.bin, n, n // 2))):
        runs = [fn() for _ in range(a.runs)]
        secs = med(runs, "secs")
        rate = sorted(r["delivered"] / r["secs"] for r in runs)
        print(f"  {name}: {runs[0]['delivered']} deliveries, quiet after "
              f"{secs[0]:.2f} s [{secs[1]:.2f}..{secs[2]:.2f}], {rate[len(rate) // 2]:,.0f} "
              f"delivered/s [{rate[0]:,.0f}..{rate[-1]:,.0f}]; refused or closed: "
              f"{ {k: max(r[k] for r in runs) for k in ('overloaded', 'missed-disconnects', 'presence-resyncs', 'slow-consumers')} }")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
