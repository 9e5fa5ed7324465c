#!/usr/bin/python3
"""make bench-hostile: what 200 hostile connections cost a well-behaved client.

Starts the real server (build/sente-lite, 2 workers, --echo) on a free
loopback port, then alternates, --reps times, two phases of --seconds each
in the same run:

  alone   sente-bench echo (10 connections on /echo, one round trip in
          flight each): round trips/s and p99
  beside  the same while --hostile connections (200) misbehave: each slot
          runs one kind in a loop - connect, misbehave, get refused or
          closed, reconnect - until the phase ends

and prints per phase and the medians, with the ratios (throughput beside /
alone, p99 beside / alone), the server's errors by reason and the largest
worker RSS growth seen.  Figures, not a test: the machine is shared.

The hostile side is tests/bench/hostile_gen.c (one epoll loop in C, what
make bench-hostile uses) or, without --generator, this script's own Python
slots (200 threads: on 2 cores their own CPU and wake-ups compete with the
server and the benchmark, so run them with --generator-nice 19).

The hostile kinds (20 slots each): slowloris (an HTTP head a byte at a
time), oversize frame length, unmasked frame, reserved opcode and RSV bits,
invalid UTF-8, a 100 MB message trickled in 64 KiB fragments, 10,000
one-byte fragments, a ping flood without reading, a connection flood
(connect and close), and pipelined HTTP requests without reading.
"""
import argparse
import base64
import json
import os
import random
import socket
import statistics
import struct
import subprocess
import sys
import threading
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "tests", "integration"))
from wsraw import frame  # noqa: E402  (the raw RFC 6455 frame builder of the tests)
from benchlib import free_port  # noqa: E402  (scripts/bench/benchlib.py)


def upgrade_req(port, path):
    key = base64.b64encode(os.urandom(16)).decode()
    return (f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            f"Sec-WebSocket-Version: 13\r\n\r\n").encode()


class Slot(threading.Thread):
    """One hostile connection slot: runs its kind until stop is set."""

    def __init__(self, kind, port, stop):
        super().__init__(daemon=True)
        self.kind, self.port, self.stop = kind, port, stop
        self.rounds = 0

    def connect(self, path=None):
        s = socket.create_connection(("127.0.0.1", self.port), timeout=2)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        if path:
            s.sendall(upgrade_req(self.port, path))
            buf = b""
            while b"\r\n\r\n" not in buf:
                c = s.recv(4096)
                if not c:
                    raise OSError("closed in handshake")
                buf += c
        return s

    def wait_closed(self, s, seconds):
        s.settimeout(0.2)
        end = time.time() + seconds
        while time.time() < end and not self.stop.is_set():
            try:
                if not s.recv(65536):
                    return
            except socket.timeout:
                continue
            except OSError:
                return

    def trickle(self, s, data, seconds_per_chunk, chunk):
        for i in range(0, len(data), chunk):
            if self.stop.is_set():
                return
            s.sendall(data[i:i + chunk])
            time.sleep(seconds_per_chunk)

    def once(self):
        k = self.kind
        if k == "slowloris":
            s = self.connect()
            self.trickle(s, SLOW_HEAD, 0.2, 1)
        elif k == "oversize":
            s = self.connect("/")
            s.sendall(F_OVERSIZE)
        elif k == "unmasked":
            s = self.connect("/")
            s.sendall(F_UNMASKED)
        elif k == "reserved":
            s = self.connect("/echo")
            s.sendall(random.choice(F_RESERVED))
        elif k == "bad-utf8":
            s = self.connect("/")
            s.sendall(F_BAD_UTF8)
        elif k == "huge-fragments":
            s = self.connect("/echo")
            s.sendall(F_HUGE_FIRST)
            for _ in range(1600):  # 100 MB if nobody stopped it
                if self.stop.is_set():
                    break
                s.sendall(F_HUGE_NEXT)
                time.sleep(0.05)
        elif k == "tiny-fragments":
            s = self.connect("/echo")
            s.sendall(F_TINY)
            self.wait_closed(s, 0.5)
            s.close()
            return
        elif k == "ping-flood":
            s = self.connect("/echo")
            s.settimeout(2)
            end = time.time() + 3
            while time.time() < end and not self.stop.is_set():
                s.sendall(F_PINGS)  # 6,400 pings/s, never reading
                time.sleep(0.01)
        elif k == "conn-flood":
            for _ in range(5):  # 10 connections/s per slot
                if self.stop.is_set():
                    break
                c = socket.create_connection(("127.0.0.1", self.port), timeout=2)
                c.close()
                time.sleep(0.1)
            return
        elif k == "pipelined":
            s = self.connect()
            s.settimeout(2)
            end = time.time() + 3
            while time.time() < end and not self.stop.is_set():
                s.sendall(PIPELINED)
        self.wait_closed(s, 6)
        s.close()

    def run(self):
        # A slot starts a new round at most every ROUND_S seconds: 200 slots
        # make at most 400 hostile connections per second, so what is
        # measured is the server's cost per hostile connection, not how
        # fast this Python process can reconnect.
        while not self.stop.is_set():
            t0 = time.time()
            try:
                self.once()
            except OSError:
                pass
            self.rounds += 1
            left = ROUND_S - (time.time() - t0)
            if left > 0:
                self.stop.wait(left)


ROUND_S = 0.5

# Frames are built once: masking in Python costs far more than anything the
# server does with them, and would measure this script instead.
CHUNK = b"a" * 65536
F_HUGE_FIRST = frame(2, CHUNK, fin=False)
F_HUGE_NEXT = frame(0, CHUNK, fin=False)
F_TINY = b"".join(frame(2 if i == 0 else 0, b"x", fin=(i == 9999)) for i in range(10000))
F_PINGS = frame(9, b"p" * 125) * 64
F_OVERSIZE = bytes([0x81, 0xFF]) + struct.pack(">Q", 1 << 40) + b"mask"
F_UNMASKED = frame(1, b"hello", mask=False)
F_RESERVED = [frame(3, b"x"), frame(11, b"x"), frame(1, b"x", rsv=0x40)]
F_BAD_UTF8 = frame(1, b"ok \xc3\x28")
PIPELINED = b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n" * 200
SLOW_HEAD = b"GET / HTTP/1.1\r\nHost: x\r\n" + b"X-a: b\r\n" * 100

KINDS = ["slowloris", "oversize", "unmasked", "reserved", "bad-utf8", "huge-fragments",
         "tiny-fragments", "ping-flood", "conn-flood", "pipelined"]


def get_json(port, path):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
        return json.load(r)


def rss(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def proc_cpu(pid):
    f = open(f"/proc/{pid}/stat").read().split(") ")[1].split()
    return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")


def echo_run(bench, port, seconds, conns):
    out = subprocess.run([bench, "echo", "--port", str(port), "--connections", str(conns),
                          "--duration", str(seconds), "--drain", "1", "--json-only"],
                         capture_output=True, text=True, timeout=seconds + 60)
    doc = json.loads(out.stdout.strip().splitlines()[-1])
    return doc["round-trips-per-s"], doc["latency-p99-us"]


def generate(port, hostile, seconds):
    """The hostile side alone (a process of its own, see --generator-nice)."""
    stop = threading.Event()
    slots = [Slot(KINDS[i % len(KINDS)], port, stop) for i in range(hostile)]
    for s in slots:
        s.start()
    time.sleep(seconds)
    stop.set()
    for s in slots:
        s.join(timeout=10)
    cpu = os.times()
    print(json.dumps({"rounds": sum(s.rounds for s in slots),
                      "cpu-s": round(cpu.user + cpu.system, 2)}), flush=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--generate", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--generator", default=None,
                    help="the C generator (tests/bench/hostile_gen.c, built by make "
                         "bench-hostile); default: the Python slots of this script")
    ap.add_argument("--generator-nice", type=int, default=0,
                    help="niceness of the hostile generator process: its own Python CPU "
                         "is not the server's cost (0: compete as equals)")
    ap.add_argument("--bin", default=os.path.join(ROOT, "build", "sente-lite"))
    ap.add_argument("--bench", default=os.path.join(ROOT, "build", "sente-bench"))
    ap.add_argument("--seconds", type=int, default=8)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--hostile", type=int, default=200)
    ap.add_argument("--connections", type=int, default=10)
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    if a.generate:
        return generate(a.port, a.hostile, a.seconds)

    port = free_port()
    srv = subprocess.Popen([a.bin, "--host", "127.0.0.1", "--port", str(port), "--workers", "2",
                            "--echo", "--log-level", "error"],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(100):
            try:
                if get_json(port, "/health")["status"] == "healthy":
                    break
            except OSError:
                time.sleep(0.1)
        workers = [w["pid"] for w in get_json(port, "/stats")["workers"]]
        base_rss = {p: rss(p) for p in workers}
        max_growth = 0
        alone, beside, gen_stats = [], [], []
        cpu0 = {p: proc_cpu(p) for p in workers}
        for rep in range(a.reps):
            alone.append(echo_run(a.bench, port, a.seconds, a.connections))
            if a.generator:
                gen_cmd = [a.generator, str(port), str(a.hostile), str(a.seconds + 2)]
            else:
                gen_cmd = [sys.executable, os.path.abspath(__file__), "--generate", "--port",
                           str(port), "--hostile", str(a.hostile), "--seconds",
                           str(a.seconds + 2)]
            gen = subprocess.Popen(["nice", "-n", str(a.generator_nice)] + gen_cmd,
                                   stdout=subprocess.PIPE, text=True)
            time.sleep(1.0)  # let every kind get going
            sampler_stop = threading.Event()

            def sample():
                nonlocal max_growth
                while not sampler_stop.is_set():
                    for p in workers:
                        max_growth = max(max_growth, rss(p) - base_rss[p])
                    time.sleep(0.2)
            t = threading.Thread(target=sample, daemon=True)
            t.start()
            beside.append(echo_run(a.bench, port, a.seconds, a.connections))
            sampler_stop.set()
            gen_out = gen.communicate(timeout=60)[0].strip().splitlines()
            gen_stats.append(json.loads(gen_out[-1]) if gen_out else {})
            time.sleep(2)  # closings and lingers settle
            print(f"rep {rep + 1}: alone {alone[-1][0]:.0f} rt/s p99 {alone[-1][1]} us; "
                  f"beside {beside[-1][0]:.0f} rt/s p99 {beside[-1][1]} us", flush=True)
        st = get_json(port, "/stats")
        server_cpu = sum(proc_cpu(p) - cpu0[p] for p in workers)
        med = lambda xs, i: statistics.median(x[i] for x in xs)
        res = {
            "alone-rt-per-s": med(alone, 0), "alone-p99-us": med(alone, 1),
            "beside-rt-per-s": med(beside, 0), "beside-p99-us": med(beside, 1),
            "hostile-connections": a.hostile, "seconds": a.seconds, "reps": a.reps,
            "max-worker-rss-growth-bytes": max_growth,
            "errors": {k: v for k, v in st["errors"].items() if v},
            "backpressure-pauses": st.get("backpressure-pauses"),
            "slow-consumer-disconnects": st["slow-consumer-disconnects"],
            "runs": {"alone": alone, "beside": beside},
            "generator": gen_stats, "generator-nice": a.generator_nice,
            "generator-program": a.generator or "python",
            "workers-cpu-s-whole-run": round(server_cpu, 2),
        }
        res["throughput-ratio"] = res["beside-rt-per-s"] / res["alone-rt-per-s"]
        res["p99-ratio"] = res["beside-p99-us"] / max(1, res["alone-p99-us"])
        print(f"medians of {a.reps}: alone {res['alone-rt-per-s']:.0f} rt/s, p99 "
              f"{res['alone-p99-us']} us; beside {a.hostile} hostile: "
              f"{res['beside-rt-per-s']:.0f} rt/s, p99 {res['beside-p99-us']} us")
        print(f"throughput ratio {res['throughput-ratio']:.3f} (goal >= 0.9), p99 ratio "
              f"{res['p99-ratio']:.2f} (goal <= 2), worker RSS growth max "
              f"{max_growth / 1048576:.1f} MiB")
        print("errors by reason: " + json.dumps(res["errors"]))
        print("hostile generator %s (nice %d): %s" % (a.generator or "python", a.generator_nice,
                                                    json.dumps(gen_stats)))
        if a.out:
            with open(a.out, "w") as f:
                json.dump(res, f, indent=1)
    finally:
        srv.terminate()
        try:
            srv.wait(timeout=15)
        except subprocess.TimeoutExpired:
            srv.kill()


if __name__ == "__main__":
    sys.exit(main())
