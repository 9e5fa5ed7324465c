#!/usr/bin/python3
"""Server CPU per connection or per delivery, two sente-lite builds
alternating: an A/B that holds up on a shared, noisy machine, where
handshakes/s and deliveries/s measure mostly how much CPU the server got.

For each run the server (2 workers) is started fresh; the CPU time of its
processes (utime + stime of master and workers, /proc/PID/stat) is read
before and after build/sente-bench drives it, and divided by the
connections opened (connect: each subscribing and waiting for its
subscription-result) or by the deliveries (fanout: flat out for 4 s).  The
order of the two builds alternates from one repetition to the next.
Figures, not a test.

    scripts/bench/cpu-ab.py --base-bin OLD/build/sente-lite [--mode connect|fanout]
                            [--n 5000] [--reps 6]

(--n: connections for connect, subscribers for fanout.)
"""
import argparse
import json
import os
import socket
import statistics
import subprocess
import time
from benchlib import free_port  # noqa: E402  (scripts/bench/benchlib.py)

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
SB = os.path.join(ROOT, "build", "sente-bench")
SOURCES = ",".join(f"127.0.0.{i}" for i in range(2, 10))
SUB = '{"type":"subscribe","channel-id":"bench"}'


def cpu_s(pids):
    t = 0
    for p in pids:
        try:
            with open(f"/proc/{p}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            t += int(fields[11]) + int(fields[12])
        except FileNotFoundError:
            pass
    return t / os.sysconf("SC_CLK_TCK")


def children(pid):
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True,
                         text=True).stdout
    return [int(x) for x in out.split()]


def one(binary, mode, n):
    port = free_port()
    srv = subprocess.Popen(
        [binary, "--host", "127.0.0.1", "--port", str(port), "--workers", "2", "--log-level",
         "warn", "--log-file", "/dev/null", "--max-connections", "60000",
         "--max-subscribers", "60000"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(200):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.05)
        time.sleep(0.5)
        pids = [srv.pid] + children(srv.pid)
        before = cpu_s(pids)
        common = ["--host", "127.0.0.1", "--port", str(port), "--path", "/", "--wait-welcome",
                  "--source-addrs", SOURCES, "--json-only"]
        if mode == "connect":
            args = ["connect"] + common + ["--connections", str(n), "--sub-frame", SUB,
                                           "--sub-ack", "subscription-result"]
        else:
            args = ["fanout"] + common + ["--subscribers", str(n), "--publishers", "1",
                                          "--payload-size", "100", "--duration", "4",
                                          "--drain", "12", "--pub-ack", ""]
        out = subprocess.run([SB] + args, capture_output=True, text=True, timeout=300).stdout
        r = json.loads([l for l in out.splitlines() if l.startswith("{")][-1])
        used = cpu_s(pids) - before
    finally:
        srv.terminate()
        srv.wait()
    if mode == "connect":
        return r["handshakes-per-s"], used / max(1, r["connected"]) * 1e6
    return r["delivered-per-s"], used / max(1, r["delivered"]) * 1e9


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--base-bin", required=True)
    ap.add_argument("--bin", default=os.path.join(ROOT, "build", "sente-lite"))
    ap.add_argument("--mode", choices=("connect", "fanout"), default="connect")
    ap.add_argument("--n", type=int, default=None)
    ap.add_argument("--reps", type=int, default=6)
    a = ap.parse_args()
    n = a.n or (5000 if a.mode == "connect" else 1000)
    unit = "us/connection" if a.mode == "connect" else "ns/delivery"
    rate = "handshakes/s" if a.mode == "connect" else "delivered/s"
    builds = {"this": os.path.abspath(a.bin), "base": os.path.abspath(a.base_bin)}
    res = {k: [] for k in builds}
    for rep in range(a.reps):
        order = list(builds) if rep % 2 == 0 else list(builds)[::-1]
        for k in order:
            time.sleep(1.0)
            res[k].append(one(builds[k], a.mode, n))
            print(f"rep {rep + 1} {k:4} {rate} {res[k][-1][0]:,.0f}  "
                  f"server cpu {res[k][-1][1]:,.1f} {unit}", flush=True)
    for k in builds:
        print(f"{k:4} median {rate} {statistics.median(x[0] for x in res[k]):,.0f}  "
              f"median server cpu {statistics.median(x[1] for x in res[k]):,.1f} {unit}")


if __name__ == "__main__":
    main()
