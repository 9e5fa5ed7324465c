#!/usr/bin/python3
"""The cluster benchmarks behind `make bench-cluster` (and part of `make
bench`): sente-lite nodes joined through Redis (--redis) against nchan with
its Redis storage (nchan_redis_pass) on the same redis-server, same worker
counts, everything on loopback.

  xnode-fanout-1k       publisher on node A, 1,000 subscribers spread over
                        nodes A and B, flat out: delivered/s, latency, loss
  xnode-fanout-1k-20/s  the same at 20 messages/s
  publish-rtt           publish -> publish-result round trip on one node,
                        with --redis and without (p50/p99)
  redis-load            4 publishers flat out through one node with
                        --redis: publishes/s and the Redis process's CPU per
                        publish (what one Redis carries, docs/scaling.md)
  single-fanout-1k      one node without --redis, this build and (with
                        --previous BIN) the previous build, alternating:
                        the single-node path must be unchanged

Each server is started fresh for every run (and Redis with it), the
servers alternate within each repetition, the table shows medians.
Figures, not a test.

    scripts/bench/cluster.py [--quick] [--reps N] [--duration S] [--only a,b]
                             [--previous BIN] [--out FILE]
"""
import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from benchlib import free_port  # noqa: E402  (scripts/bench/benchlib.py)

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
SL = os.path.join(ROOT, "build", "sente-lite")
SB = os.path.join(ROOT, "build", "sente-bench")
HERE = os.path.join(ROOT, "scripts", "bench")
WORKERS = 2
SUB_FRAME = '{"type":"subscribe","channel-id":"bench"}'
PUB_FRAME = '{"type":"publish","channel-id":"bench","data":"%s"}'
RTT_FRAME = '{"type":"publish","channel-id":"bench","data":{"n":1}}'
SOURCES = ",".join(f"127.0.0.{i}" for i in range(2, 10))


def log(*a):
    print(*a, file=sys.stderr, flush=True)


def wait_http(port, path="/health", timeout=15):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            s = socket.create_connection(("127.0.0.1", port), timeout=1)
            s.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
            if s.recv(64).startswith(b"HTTP/1.1 200"):
                s.close()
                return
            s.close()
        except OSError:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"port {port} did not come up")


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def tree_cpu_seconds(root):
    """CPU seconds used so far by `root` and its children (the master and
    its workers, logger, broker)."""
    pids = [root]
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    if int(f.read().rsplit(")", 1)[1].split()[1]) == root:
                        pids.append(int(d))
            except (OSError, ValueError, IndexError):
                pass
    total = 0.0
    for p in pids:
        try:
            total += cpu_seconds(p)
        except OSError:
            pass
    return total


class Redis:
    def start(self, rundir):
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen(
            ["/usr/bin/redis-server", "--port", str(self.port), "--bind", "127.0.0.1",
             "--save", "", "--appendonly", "no", "--dir", rundir, "--logfile",
             os.path.join(rundir, "redis.log")], stdout=subprocess.DEVNULL)
        deadline = time.time() + 10
        while time.time() < deadline:
            out = subprocess.run(["redis-cli", "-p", str(self.port), "PING"],
                                 capture_output=True, text=True).stdout
            if out.strip() == "PONG":
                return
            time.sleep(0.05)
        raise RuntimeError("redis-server did not start")

    def stop(self):
        self.proc.terminate()
        self.proc.wait(timeout=10)


class SlNode:
    def __init__(self, binary=SL, redis=None, extra=()):
        self.binary, self.redis, self.extra = binary, redis, list(extra)

    def start(self, rundir):
        self.port = free_port()
        args = [self.binary, "--host", "127.0.0.1", "--port", str(self.port), "--workers",
                str(WORKERS), "--max-connections", "60000", "--max-subscribers", "60000",
                "--log-level", "warn", "--log-file", os.path.join(rundir, f"sl-{self.port}.log")]
        if self.redis:
            args += ["--redis", self.redis.url]
        self.proc = subprocess.Popen(args + self.extra, stdout=subprocess.DEVNULL,
                                     stderr=open(os.path.join(rundir, f"sl-{self.port}.err"), "w"))
        wait_http(self.port)

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


class NchanNode:
    def __init__(self, redis):
        self.redis = redis

    def start(self, rundir):
        self.port = free_port()
        self.rundir = os.path.join(rundir, f"nchan-{self.port}")
        env = dict(os.environ, NCHAN_REDIS_URL=self.redis.url)
        subprocess.run([os.path.join(HERE, "nchan.sh"), "start", str(self.port), str(WORKERS),
                        self.rundir], check=True, env=env, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL)

    def stop(self):
        subprocess.run([os.path.join(HERE, "nchan.sh"), "stop", self.rundir],
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


class Setup:
    """A server under test: Redis (when any) and its nodes, started fresh."""

    def __init__(self, name, kind, nodes=2, binary=SL, extra=()):
        self.name, self.kind, self.n, self.binary, self.extra = name, kind, nodes, binary, extra

    def start(self, rundir):
        self.redis = None
        if self.kind in ("sl-redis", "nchan-redis"):
            self.redis = Redis()
            self.redis.start(rundir)
        if self.kind == "nchan-redis":
            self.nodes = [NchanNode(self.redis) for _ in range(self.n)]
        else:
            self.nodes = [SlNode(self.binary, self.redis if self.kind == "sl-redis" else None,
                                 self.extra) for _ in range(self.n)]
        for n in self.nodes:
            n.start(rundir)
        time.sleep(0.3)

    def stop(self):
        for n in self.nodes:
            try:
                n.stop()
            except Exception as e:
                log(f"stopping a node of {self.name}: {e}")
        if self.redis:
            self.redis.stop()

    def fanout_args(self):
        if self.kind == "nchan-redis":
            return ["--sub-path", "/sub/bench", "--pub-path", "/pub/bench", "--sub-frame", "",
                    "--sub-ack", "", "--pub-frame", "%s"]
        return ["--path", "/", "--sub-frame", SUB_FRAME, "--sub-ack", "subscription-result",
                "--pub-frame", PUB_FRAME, "--wait-welcome"]


def run_bench(args, timeout):
    out = subprocess.run(["nice", "-n", "10", SB] + args + ["--json-only"], capture_output=True,
                         text=True, timeout=timeout)
    lines = [l for l in out.stdout.splitlines() if l.startswith("{")]
    if not lines:
        raise RuntimeError(f"sente-bench gave no result: {out.stderr[-400:]}")
    return json.loads(lines[-1])


def m_xfanout(st, subs, duration, rate=0):
    ports = ",".join(str(n.port) for n in st.nodes)
    args = ["fanout", "--host", "127.0.0.1", "--port", str(st.nodes[0].port), "--pub-port",
            str(st.nodes[0].port), "--sub-ports", ports, "--source-addrs", SOURCES,
            "--subscribers", str(subs), "--publishers", "1", "--payload-size", "100",
            "--duration", str(duration), "--drain", "12", "--pub-ack", ""] + st.fanout_args()
    if rate:
        args += ["--rate", str(rate)]
    return run_bench(args, duration + 120)


def m_rtt(st, duration):
    """publish -> publish-result round trips on one connection (the channel
    exists: --channel bench).  The frame has no %s, so any reply completes a
    round trip; the publisher is not subscribed, so the reply is the
    publish-result."""
    return run_bench(["echo", "--host", "127.0.0.1", "--port", str(st.nodes[0].port), "--path",
                      "/", "--echo-frame", RTT_FRAME, "--connections", "1", "--wait-welcome",
                      "--duration", str(duration)], duration + 60)


def m_redis_load(st, duration):
    pid = st.redis.proc.pid
    c0, t0 = cpu_seconds(pid), time.time()
    r = run_bench(["fanout", "--host", "127.0.0.1", "--port", str(st.nodes[0].port),
                   "--source-addrs", SOURCES, "--subscribers", "2", "--publishers", "4",
                   "--inflight", "64", "--payload-size", "100", "--duration", str(duration),
                   "--drain", "5", "--pub-ack", "publish-result"] + st.fanout_args(),
                  duration + 60)
    c1, t1 = cpu_seconds(pid), time.time()
    pubs = r.get("acknowledged") or r.get("published") or 0
    r["redis-cpu-s"] = c1 - c0
    r["redis-cpu-us-per-publish"] = (c1 - c0) * 1e6 / max(1, pubs)
    r["redis-cpu-share"] = (c1 - c0) / max(1e-9, t1 - t0)
    return r


def fig(name, r):
    if r is None:
        return {}
    if name == "single-fanout-1k":
        return {"delivered/s": r.get("delivered-per-s"),
                "per server cpu-s": r.get("delivered-per-cpu-s"),
                "p50 ms": (r.get("latency-p50-us") or 0) / 1000,
                "p99 ms": (r.get("latency-p99-us") or 0) / 1000, "lost": r.get("lost")}
    if "fanout" in name:
        return {"delivered/s": r.get("delivered-per-s"),
                "p50 ms": (r.get("latency-p50-us") or 0) / 1000,
                "p99 ms": (r.get("latency-p99-us") or 0) / 1000, "lost": r.get("lost")}
    if name == "publish-rtt":
        return {"round trips/s": r.get("round-trips-per-s"),
                "p50 ms": (r.get("latency-p50-us") or 0) / 1000,
                "p99 ms": (r.get("latency-p99-us") or 0) / 1000}
    if name == "redis-load":
        return {"publishes/s": r.get("send-per-s") or r.get("published-per-s"),
                "redis us/pub": r.get("redis-cpu-us-per-publish"),
                "redis cpu": r.get("redis-cpu-share")}
    return {}


def fmt(v):
    if v is None:
        return "-"
    if isinstance(v, float) and v < 100:
        return f"{v:.2f}"
    return f"{v:,.0f}"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--reps", type=int, default=None)
    ap.add_argument("--previous", default=None, help="the previous build's sente-lite")
    ap.add_argument("--only", default=None, help="scenarios, comma-separated")
    ap.add_argument("--duration", type=float, default=None, help="seconds per run")
    ap.add_argument("--out", default=os.path.join(ROOT, "build", "bench", "cluster.json"))
    a = ap.parse_args()
    reps = a.reps or (1 if a.quick else 3)
    dur = a.duration or (2 if a.quick else 4)
    cl = Setup("sente-lite", "sl-redis")
    nc = Setup("nchan", "nchan-redis")
    one = Setup("sente-lite", "sl", nodes=1, extra=["--channel", "bench"])
    one_r = Setup("sente-lite+redis", "sl-redis", nodes=1, extra=["--channel", "bench"])
    scen = [
        ("xnode-fanout-1k", [cl, nc], lambda s: m_xfanout(s, 1000, dur)),
        ("xnode-fanout-1k-20/s", [cl, nc], lambda s: m_xfanout(s, 1000, dur, rate=20)),
        ("publish-rtt", [one, one_r], lambda s: m_rtt(s, dur)),
        ("redis-load", [Setup("sente-lite+redis", "sl-redis", nodes=1)],
         lambda s: m_redis_load(s, dur)),
    ]
    singles = [Setup("this build", "sl", nodes=1)]
    if a.previous:
        singles.append(Setup("previous build", "sl", nodes=1, binary=a.previous))
    def single(s):
        # Also the server's CPU seconds over the run: on a shared machine
        # the deliveries per CPU second of the server compare two builds
        # better than deliveries per second, which follow how much of the
        # CPU the neighbours left.
        cpu0 = tree_cpu_seconds(s.nodes[0].proc.pid)
        r = run_bench(["fanout", "--host", "127.0.0.1", "--port", str(s.nodes[0].port),
                       "--source-addrs", SOURCES, "--subscribers", "1000", "--publishers", "1",
                       "--payload-size", "100", "--duration", str(dur), "--drain", "12",
                       "--pub-ack", ""] + s.fanout_args(), dur + 120)
        cpu = tree_cpu_seconds(s.nodes[0].proc.pid) - cpu0
        if r is not None and cpu > 0 and r.get("delivered"):
            r["delivered-per-cpu-s"] = r["delivered"] / cpu
        return r
    scen.append(("single-fanout-1k", singles, single))
    if a.only:
        scen = [x for x in scen if x[0] in a.only.split(",")]
    results = {}
    started = time.time()
    for rep in range(reps):
        for name, setups, fn in scen:
            order = setups[rep % len(setups):] + setups[:rep % len(setups)]
            for st in order:
                rundir = tempfile.mkdtemp(prefix="bench-cluster-")
                time.sleep(1.0)
                try:
                    st.start(rundir)
                    r = fn(st)
                except Exception as e:
                    log(f"{name} on {st.name}: {e}")
                    r = None
                finally:
                    try:
                        st.stop()
                    except Exception as e:
                        log(f"stopping {st.name}: {e}")
                results.setdefault(name, {}).setdefault(st.name, []).append(r)
                log(f"[{time.time() - started:5.0f}s] rep {rep + 1} {name:22} {st.name:16} " +
                    " ".join(f"{k}={fmt(v)}" for k, v in fig(name, r).items()))
    print(f"{'scenario':22} {'figure':14} {'server':18} {'median':>12}   runs")
    print("-" * 80)
    for name, per in results.items():
        for srv, runs in per.items():
            keys = []
            for r in runs:
                for k in fig(name, r):
                    if k not in keys:
                        keys.append(k)
            for k in keys:
                vals = [fig(name, r).get(k) for r in runs]
                nums = [v for v in vals if isinstance(v, (int, float))]
                med = statistics.median(nums) if nums else None
                print(f"{name:22} {k:14} {srv:18} {fmt(med):>12}   " +
                      " ".join(fmt(v) for v in vals))
    os.makedirs(os.path.dirname(a.out), exist_ok=True)
    with open(a.out, "w") as f:
        json.dump({"date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "command": " ".join(sys.argv),
                   "repetitions": reps, "workers": WORKERS, "runs": results}, f, indent=1)
    print(f"\nresults: {a.out} ({time.time() - started:.0f} s)")


if __name__ == "__main__":
    main()
