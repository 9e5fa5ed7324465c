#!/usr/bin/python3
"""The comparison run behind `make bench` and `make bench-quick`.

Starts each server fresh for every measurement - sente-lite, nchan (nginx)
and a Node.js `ws` server speaking our protocol - on a free loopback port,
drives it with build/sente-bench, and alternates the servers within each
repetition so that drifting machine load hits all of them alike.  Prints a
table of medians with ratios (ours / peer) and writes every raw result as
JSON.  In the fan-out scenarios two reference servers follow the three real
ones: build/bench/ceiling (tests/bench/ceiling.c) with one write per message
per subscriber (ceiling-raw) and with one write per subscriber per loop turn
(ceiling-batched), to show where this machine's limit is.  Access control
is measured on sente-lite alone (no peer has the same feature): handshakes/s
with an HS256 and an ES256 token against none, and flat-out fan-out with a
namespace whose publish needs a token against the same without; a closing
table gives those ratios.  TLS and compression (issue 16; leave them out
with --no-tls): sente-lite and nchan, each serving wss:// with the same
throw-away certificate and the same worker count - wss handshakes/s with an
ECDSA P-256 and an RSA-2048 certificate, full and resumed (sente-bench's
connect mode: TLS + upgrade), openssl s_time's bare TLS handshakes/s
(scripts/bench/tls_handshakes.sh), fan-out over wss at 1,000 subscribers
flat out and at 20 msg/s, idle PSS per wss connection; and on sente-lite
alone the fan-out of a 2 KiB JSON document to 1,000 subscribers with
permessage-deflate against without (bytes on the wire and the workers' CPU
per delivery from /stats and /proc).  A closing table sets those against
the issue's goals.  Figures, not a test: nothing here passes or fails on a number.

    scripts/bench/bench.py [--quick] [--reps N] [--out FILE] [--only a,b] [--no-tls]
"""
import argparse
import json
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import re
import tempfile
import time
import urllib.request
from benchlib import free_port  # noqa: E402  (scripts/bench/benchlib.py)

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
SL = os.path.join(ROOT, "build", "sente-lite")
SB = os.path.join(ROOT, "build", "sente-bench")
CEILING = os.path.join(ROOT, "build", "bench", "ceiling")
HERE = os.path.join(ROOT, "scripts", "bench")
WORKERS = 2
SUB_FRAME = '{"type":"subscribe","channel-id":"bench"}'
PUB_FRAME = '{"type":"publish","channel-id":"bench","data":"%s"}'
PING_FRAME = '{"type":"ping","timestamp":1}'  # any reply completes a round trip
SOURCES = ",".join(f"127.0.0.{i}" for i in range(2, 10))


def log(*a):
    print(*a, file=sys.stderr, flush=True)


def rss_of(pids):
    """Sum of resident set sizes (bytes) of these processes."""
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1]) * 1024
        except FileNotFoundError:
            pass
    return total


def pss_of(pids):
    """Sum of proportional set sizes (bytes) of these processes: a page
    shared by k of them counts 1/k in each, so shared memory (the registry,
    libraries, pages still shared after fork) is counted once in the sum."""
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/smaps_rollup") as f:
                for line in f:
                    if line.startswith("Pss:"):
                        total += int(line.split()[1]) * 1024
                        break
        except (FileNotFoundError, PermissionError):
            pass
    return total


def cpu_of(pids, split=False):
    """CPU seconds (utime + stime, /proc/PID/stat) summed over these
    processes: the server's own work, whatever else ran on the machine
    (split: user and system apart)."""
    user = system = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            user += int(fields[11])
            system += int(fields[12])
        except (FileNotFoundError, ProcessLookupError, IndexError):
            pass
    tck = os.sysconf("SC_CLK_TCK")
    return (user / tck, system / tck) if split else (user + system) / tck


def read_trace(prefix, workers):
    """sente-lite's fan-out trace (SENTE_FANOUT_TRACE, src/pubsub.c): per
    message, from the read that brought the publish frame to each worker's
    last writev of it.  None when the server wrote none (a build without it)."""
    pubs, dels = {}, {}
    for w in range(workers):
        try:
            with open(f"{prefix}.{w}") as f:
                rows = [l.split() for l in f.read().splitlines()]
        except FileNotFoundError:
            continue
        for r in rows:
            if len(r) < 3 or r[0] not in ("pub", "del"):
                continue
            kv = {k: int(v) for k, v in (x.split("=", 1) for x in r[1:])}
            if r[0] == "pub":
                pubs[kv["seq"]] = kv
            else:
                dels.setdefault(kv["seq"], {})[w] = kv
    msgs = []
    for seq, p in sorted(pubs.items()):
        d = dels.get(seq, {})
        if len(d) < workers:
            continue  # not every worker wrote it (a worker without subscribers)
        woken = [x["woken"] - p["wake"] for x in d.values() if x["woken"] and p["wake"]]
        msgs.append({
            "seq": seq,
            "accept-us": p["accepted"] - p["arrival"],
            "last-write-us": max(x["done"] for x in d.values()) - p["arrival"],
            "per-worker": {w: {"queued-us": x["queued"] - p["arrival"],
                               "done-us": x["done"] - p["arrival"], "n": x["n"],
                               # the drain-to-last-writev turn: its wall time and
                               # the worker's CPU time in it (the rest: waiting
                               # for a CPU)
                               "turn-us": x["done"] - x["drain"], "cpu-us": x.get("cpu")}
                           for w, x in d.items()},
            "wake-to-woken-us": max(woken) if woken else None,
        })
    if not msgs:
        return None
    last = sorted(m["last-write-us"] for m in msgs)
    woken = [m["wake-to-woken-us"] for m in msgs if m["wake-to-woken-us"] is not None]
    turns = [x for m in msgs for x in m["per-worker"].values() if x["cpu-us"] is not None]
    cpu = {}
    if turns:
        cpu = {"turn-p50-us": statistics.median(x["turn-us"] for x in turns),
               "turn-cpu-p50-us": statistics.median(x["cpu-us"] for x in turns),
               "cpu-share-p50": statistics.median(x["cpu-us"] / max(1, x["turn-us"])
                                                  for x in turns),
               "cpu-us-per-write-p50": statistics.median(x["cpu-us"] / max(1, x["n"])
                                                         for x in turns)}
    return {**cpu, "messages": len(msgs), "last-write-p50-us": statistics.median(last),
            "last-write-max-us": last[-1],
            "wake-to-woken-p50-us": statistics.median(woken) if woken else None,
            "wake-to-woken-max-us": max(woken) if woken else None,
            "per-message": msgs}


def children(pid):
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True,
                         text=True).stdout
    return [int(x) for x in out.split()]


# ------------------------------------------------------------------ servers

class SenteLite:
    name = "sente-lite"

    def __init__(self, workers=WORKERS, binary=SL, name=None):
        self.workers = workers
        self.binary = binary
        if name:
            self.name = name
        self.extra = []      # flags of the scenario (access control)
        self.header = None   # an upgrade header for every connection
        self.channel = "bench"
        self.tls = None      # (cert, key): also serve wss:// on self.tls_port
        self.trace = False   # write the fan-out trace (SENTE_FANOUT_TRACE)
        self.trace_prefix = None

    def start(self, rundir):
        self.port = free_port()
        tls = []
        if self.tls:
            self.tls_port = free_port()
            tls = ["--tls-port", str(self.tls_port), "--tls-cert", self.tls[0], "--tls-key",
                   self.tls[1]]
        env = dict(os.environ)
        self.trace_prefix = os.path.join(rundir, "trace") if self.trace else None
        if self.trace_prefix:
            env["SENTE_FANOUT_TRACE"] = self.trace_prefix
        self.proc = subprocess.Popen(
            [self.binary, "--host", "127.0.0.1", "--port", str(self.port), "--workers",
             str(self.workers), "--max-connections", "60000", "--max-subscribers", "60000",
             "--log-level", "warn", "--log-file", os.path.join(rundir, "sente-lite.log")]
            + tls + self.extra,
            stdout=subprocess.DEVNULL, stderr=open(os.path.join(rundir, "sente-lite.err"), "w"),
            env=env)
        wait_http(self.port)

    def pids(self):
        return [self.proc.pid] + children(self.proc.pid)

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def auth_args(self):
        return ["--header", self.header] if getattr(self, "header", None) else []

    def fanout_args(self):
        ch = getattr(self, "channel", "bench")
        return ["--path", "/", "--sub-frame", SUB_FRAME.replace("bench", ch), "--sub-ack",
                "subscription-result", "--pub-frame", PUB_FRAME.replace("bench", ch),
                "--wait-welcome"] + self.auth_args()

    def echo_args(self):
        return ["--path", "/", "--echo-frame", PING_FRAME]

    def connect_args(self):
        return ["--path", "/", "--wait-welcome"] + self.auth_args()

    def subscribe_args(self):
        """connect mode, a subscription per connection: ready on its
        subscription-result."""
        ch = getattr(self, "channel", "bench")
        return ["--sub-frame", SUB_FRAME.replace("bench", ch), "--sub-ack", "subscription-result"]


class Script:
    """A peer started by one of the scripts in scripts/bench/."""

    def __init__(self, name, script, with_workers):
        self.name = name
        self.script = os.path.join(HERE, script)
        self.with_workers = with_workers
        self.workers = WORKERS
        self.tls = None

    def start(self, rundir):
        self.port = free_port()
        self.rundir = rundir
        args = [self.script, "start", str(self.port)]
        if self.with_workers:
            args.append(str(self.workers))
        env = dict(os.environ)
        if self.tls:  # nchan.sh: a TLS listener beside the plain one
            self.tls_port = free_port()
            env.update(NCHAN_TLS_PORT=str(self.tls_port), NCHAN_TLS_CERT=self.tls[0],
                       NCHAN_TLS_KEY=self.tls[1])
        subprocess.run(args + [rundir], check=True, stdout=subprocess.DEVNULL, env=env)

    def pids(self):
        out = subprocess.run([self.script, "pids", self.rundir], capture_output=True,
                             text=True).stdout
        return [int(x) for x in out.split()]

    def stop(self):
        subprocess.run([self.script, "stop", self.rundir], stdout=subprocess.DEVNULL)


class Nchan(Script):
    def __init__(self):
        super().__init__("nchan", "nchan.sh", True)

    def fanout_args(self):
        return ["--sub-path", "/sub/bench", "--pub-path", "/pub/bench", "--sub-frame", "",
                "--sub-ack", "", "--pub-frame", "%s"]

    def echo_args(self):
        return None  # nchan has no request/reply of its own

    def connect_args(self):
        return ["--path", "/sub/bench"]

    def subscribe_args(self):
        return []  # a connection to /sub/bench is the subscription (no reply of its own)


class WsNode(Script):
    def __init__(self):
        super().__init__("node-ws", "ws.sh", False)
        self.workers = 1

    def auth_args(self):
        return SenteLite.auth_args(self)

    def fanout_args(self):
        return SenteLite.fanout_args(self)

    def echo_args(self):
        return SenteLite.echo_args(self)

    def connect_args(self):
        return SenteLite.connect_args(self)

    def subscribe_args(self):
        return SenteLite.subscribe_args(self)


class Ceiling:
    """tests/bench/ceiling.c: measuring sticks, not peers.  raw / batched:
    bare fan-out, in the flat-out fan-out scenarios only.  handshake /
    handoff: the least work per connection of our protocol's shape (101,
    welcome, one reply to the subscribe) in 2 worker processes that accept
    themselves, or behind one more process that accepts and hands the
    sockets over as our master does - in the connect scenarios only."""

    def __init__(self, mode):
        self.name = f"ceiling-{mode}"
        self.mode = mode

    def takes_part(self, scenario):
        if self.mode in ("raw", "batched"):
            return scenario.startswith("fanout") and "/s" not in scenario
        return scenario.startswith("connect")

    def start(self, rundir):
        self.port = free_port()
        self.proc = subprocess.Popen(
            [CEILING, "--host", "127.0.0.1", "--port", str(self.port), "--mode", self.mode,
             "--workers", str(WORKERS)],
            stdout=subprocess.DEVNULL, stderr=open(os.path.join(rundir, "ceiling.err"), "w"))
        wait_http(self.port)

    def pids(self):
        return [self.proc.pid] + children(self.proc.pid)

    def stop(self):
        SenteLite.stop(self)

    def fanout_args(self):
        return ["--sub-path", "/sub", "--pub-path", "/pub", "--sub-frame", "", "--sub-ack", "",
                "--pub-frame", "%s"]

    def echo_args(self):
        return None  # fan-out only

    def connect_args(self):
        if self.mode in ("handshake", "handoff"):
            return ["--path", "/", "--wait-welcome"]
        return ["--path", "/sub"]

    def subscribe_args(self):
        return SenteLite.subscribe_args(self)


def wait_http(port, timeout=10):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            s = socket.create_connection(("127.0.0.1", port), timeout=1)
            s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            if s.recv(64).startswith(b"HTTP/1.1 200"):
                s.close()
                return
            s.close()
        except OSError:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"server on port {port} did not come up")


# ------------------------------------------------------------ measurements

def run_bench(args, timeout):
    """Run sente-bench; its last stdout line is the JSON result."""
    out = subprocess.run([SB] + args + ["--json-only"], capture_output=True, text=True,
                         timeout=timeout)
    lines = [l for l in out.stdout.splitlines() if l.startswith("{")]
    if not lines:
        raise RuntimeError(f"sente-bench {' '.join(args[:1])} gave no result: "
                           f"{out.stderr[-500:]}")
    return json.loads(lines[-1])


def common(srv):
    if getattr(srv, "tls", None):
        return ["--host", "127.0.0.1", "--port", str(srv.tls_port), "--tls", "--source-addrs",
                SOURCES]
    return ["--host", "127.0.0.1", "--port", str(srv.port), "--source-addrs", SOURCES]


def m_fanout(srv, subs, duration, rate=0, drain=12):
    # The drain lets a slow server deliver what it accepted before the end
    # (up to --inflight messages x subscribers); the generator stops waiting
    # as soon as everything expected has arrived, so it costs only the slow.
    args = ["fanout"] + common(srv) + srv.fanout_args() + [
        "--subscribers", str(subs), "--publishers", "1", "--payload-size", "100",
        "--duration", str(duration), "--drain", str(drain), "--pub-ack", ""]
    if rate:
        args += ["--rate", str(rate)]
    r = run_bench(args, timeout=duration + 120)
    if getattr(srv, "trace_prefix", None):
        time.sleep(0.2)  # the last turn's lines
        r["server-trace"] = read_trace(srv.trace_prefix, srv.workers)
    return r


def m_echo(srv, conns, duration):
    extra = srv.echo_args()
    if extra is None:
        return None
    # The server's CPU per round trip (utime + stime of all its processes
    # over the run): on a shared machine the rate also measures the
    # generator, this measures the server alone.
    pids = srv.pids()
    c0 = cpu_of(pids)
    r = run_bench(["echo"] + common(srv) + extra +
                  ["--connections", str(conns), "--duration", str(duration)],
                  timeout=duration + 60)
    rts = r.get("round-trips") or 0
    if rts:
        r["server-cpu-us-per-rt"] = (cpu_of(pids) - c0) * 1e6 / rts
    return r


def m_connect(srv, n, subscribe=False, resume=False):
    """Handshakes/s, and the server's CPU per connection: utime + stime of
    all its processes from just before the generator starts until its
    connections are closed (closing is part of every server's bill).
    --tls-resume: the first handshake alone, every later one offers its
    session (ticket); "tls-resumed" in the result says how many resumed."""
    sub = srv.subscribe_args() if subscribe else []
    pids = srv.pids()
    u0, s0 = cpu_of(pids, split=True)
    r = run_bench(["connect"] + common(srv) + srv.connect_args() + sub +
                  ["--connections", str(n)] + (["--tls-resume"] if resume else []),
                  timeout=180)
    time.sleep(0.5)  # the closes the generator's exit caused
    u1, s1 = cpu_of(pids, split=True)
    used = (u1 - u0) + (s1 - s0)
    r["server-cpu-s"] = used
    r["server-cpu-user-s"], r["server-cpu-sys-s"] = u1 - u0, s1 - s0
    r["server-cpu-us-per-conn"] = used * 1e6 / max(1, r.get("connected") or n)
    return r


def m_memory(srv, n, procs, subscribe=False):
    """(RSS with n idle connections - RSS after a warm-up) / n, and the same
    for PSS (summed over all the server's processes)."""
    sub = srv.subscribe_args() if subscribe else []
    # Warm-up: a few connections opened and closed, so one-time costs
    # (library pages touched on the first handshake, allocator arenas) are
    # in the baseline and not charged to connections.
    run_bench(["connect"] + common(srv) + srv.connect_args() + sub + ["--connections", "20"],
              timeout=60)
    time.sleep(1.0)
    base, pbase = rss_of(srv.pids()), pss_of(srv.pids())
    p = subprocess.Popen([SB, "connect"] + common(srv) + srv.connect_args() + sub +
                         ["--connections", str(n), "--hold-until-signal", "--processes",
                          str(procs), "--json-only"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    held = False
    deadline = time.time() + 180
    while time.time() < deadline:
        line = p.stderr.readline()
        if not line:
            break
        if "holding" in line:
            held = True
            break
    if not held:
        p.kill()
        p.wait()
        return None
    time.sleep(2.0)  # let timers trim idle buffers
    full, pfull = rss_of(srv.pids()), pss_of(srv.pids())
    p.send_signal(signal.SIGTERM)
    out, _ = p.communicate(timeout=120)
    res = json.loads([l for l in out.splitlines() if l.startswith("{")][-1])
    opened = res.get("connected", res.get("connections", n))
    return {"connections": opened, "rss-base": base, "rss-full": full,
            "bytes-per-conn": (full - base) / max(1, opened), "pss-base": pbase,
            "pss-full": pfull, "pss-per-conn": (pfull - pbase) / max(1, opened), "bench": res}


# --------------------------------------------------------- TLS, compression

class TlsKit:
    """Throw-away self-signed certificates (CN and SAN localhost) for the wss
    rows, one ECDSA P-256 and one RSA-2048; both servers get the same."""

    def __init__(self):
        self.dir = tempfile.mkdtemp(prefix="bench-tls-")
        for kind, newkey in (("ec", ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"]),
                             ("rsa", ["-newkey", "rsa:2048"])):
            crt, key = os.path.join(self.dir, f"{kind}.crt"), os.path.join(self.dir, f"{kind}.key")
            subprocess.run(["openssl", "req", "-x509", *newkey, "-nodes", "-keyout", key, "-out",
                            crt, "-days", "2", "-subj", "/CN=localhost", "-addext",
                            "subjectAltName=DNS:localhost"], check=True, capture_output=True)
            setattr(self, kind, (crt, key))


# A compressible JSON document of about 2 KiB (an order with 12 lines, the
# kind of payload a dashboard or a shop pushes), the timed marker in "id".
def json_doc_frame():
    items = ",".join(
        '{"sku":"SKU-%05d","name":"stainless steel widget, size %d","qty":%d,'
        '"price":%d.%02d,"currency":"EUR","warehouse":"eu-central-1","tags":["hardware",'
        '"in-stock"]}' % (10000 + i * 37, i % 5, 1 + i % 4, 10 + i * 3, i * 7 % 100)
        for i in range(12))
    doc = ('{"id":"%s","customer":{"name":"Example Customer","tier":"gold","country":"DE"},'
           '"status":"confirmed","items":[' + items + '],"note":"deliver to the back entrance"}')
    return '{"type":"publish","channel-id":"bench","data":' + doc + '}'


def m_json_fanout(srv, subs, duration, deflate):
    """Fan-out of the 2 KiB JSON document (sente-lite only): the bench result
    plus, from /stats and /proc, the bytes written and the workers' CPU per
    delivery."""
    def stats():
        with urllib.request.urlopen(f"http://127.0.0.1:{srv.port}/stats", timeout=10) as f:
            return json.load(f)
    workers = children(srv.proc.pid)
    b0, c0 = stats().get("bytes-out", 0), cpu_of(workers)
    args = ["fanout"] + common(srv) + srv.fanout_args() + [
        "--pub-frame", json_doc_frame(), "--subscribers", str(subs), "--publishers", "1",
        "--payload-size", "34", "--duration", str(duration), "--drain", "12", "--pub-ack", ""]
    if deflate:
        args.append("--deflate")
    r = run_bench(args, timeout=duration + 120)
    b1, c1 = stats().get("bytes-out", 0), cpu_of(workers)
    d = max(1, r.get("delivered") or 0)
    r["wire-bytes-per-delivery"] = (b1 - b0) / d
    r["worker-cpu-us-per-delivery"] = (c1 - c0) * 1e6 / d
    return r


def s_time_rows(reps):
    """openssl s_time against both servers (tls_handshakes.sh: its own
    alternating rounds and medians) as table rows."""
    out = subprocess.run([os.path.join(HERE, "tls_handshakes.sh"), SL, "3", str(reps)],
                         capture_output=True, text=True, timeout=900)
    rows = []
    for line in out.stdout.splitlines():
        m = re.match(r"(\w+)\s+(new|reuse)\s+sente-lite\s+(\d+)/s\s+nchan\s+(\d+)/s", line)
        if m:
            kind, mode = m.group(1), "full" if m.group(2) == "new" else "resumed"
            rows.append((f"s_time-{kind}-{mode}", "handshakes/s",
                         {"sente-lite": float(m.group(3)), "nchan": float(m.group(4))}))
    if not rows:
        log(f"tls_handshakes.sh gave no figures: {out.stderr[-500:]}")
    return rows, out.stdout


# ----------------------------------------------------------- access control

class AuthKit:
    """Keys (openssl) and tokens (PyJWT) for the access-control scenarios."""

    def __init__(self):
        import jwt  # python3-jwt (scripts/deps.sh --bench)
        self.dir = tempfile.mkdtemp(prefix="bench-keys-")
        self.secret = os.path.join(self.dir, "secret")
        with open(self.secret, "w") as f:
            f.write(os.urandom(32).hex())
        key, self.pub = os.path.join(self.dir, "ec.key"), os.path.join(self.dir, "ec.pub")
        subprocess.run(["openssl", "genpkey", "-algorithm", "EC", "-pkeyopt",
                        "ec_paramgen_curve:P-256", "-out", key], check=True, capture_output=True)
        subprocess.run(["openssl", "pkey", "-in", key, "-pubout", "-out", self.pub], check=True,
                       capture_output=True)
        claims = {"sub": "bench", "exp": int(time.time()) + 86400, "publish": ["bench:*"]}
        with open(self.secret) as f:
            self.hs256 = jwt.encode(claims, f.read(), algorithm="HS256")
        with open(key) as f:
            self.es256 = jwt.encode(claims, f.read(), algorithm="ES256")
        self.flags = ["--jwt-secret-file", self.secret, "--jwt-public-key-file", self.pub]


def access(kit, token=None, namespace=False):
    """Scenario options: server flags, upgrade header, channel."""
    extra = list(kit.flags) if kit else []
    if namespace:
        extra += ["--namespace", "bench:publish=token"]
    return {"only": "sente-lite", "extra": extra,
            "header": f"Authorization: Bearer {token}" if token else None,
            "channel": "bench:room" if namespace else "bench"}


# --------------------------------------------------------------------- main

def tls_scenarios(quick, tk):
    """Issue 16's rows: sente-lite and nchan over wss with the same
    certificate, and sente-lite's compression (options["servers"]: the
    servers it runs on; options["tls"]: the certificate)."""
    both = ["sente-lite", "nchan"]
    n, d = (1000, 2) if quick else (2000, 4)
    rows = []
    for kind in ("ec", "rsa"):
        pair = getattr(tk, kind)
        rows += [(f"wss-connect-{kind}", lambda s: m_connect(s, n),
                  {"servers": both, "tls": pair}),
                 (f"wss-connect-{kind}-resumed", lambda s: m_connect(s, n, resume=True),
                  {"servers": both, "tls": pair})]
    rows += [
        ("wss-fanout-1k", lambda s: m_fanout(s, 1000, d), {"servers": both, "tls": tk.ec}),
        ("wss-fanout-1k-20/s", lambda s: m_fanout(s, 1000, d, rate=20),
         {"servers": both, "tls": tk.ec}),
        ("wss-idle-2k", lambda s: m_memory(s, 2000, 1), {"servers": both, "tls": tk.ec}),
        ("json2k-fanout-1k-plain", lambda s: m_json_fanout(s, 1000, d, False),
         {"only": "sente-lite"}),
        ("json2k-fanout-1k-deflate", lambda s: m_json_fanout(s, 1000, d, True),
         {"only": "sente-lite"}),
    ]
    return rows


def scenarios(quick, kit=None):
    """(name, measurement, options); options with "only" run on that server
    alone, started with options["extra"] flags and the given header."""
    acc = []
    if kit:
        n = 2000 if quick else 10000
        d = 2 if quick else 4
        acc = [
            (f"connect-{n // 1000}k-none", lambda s: m_connect(s, n), access(None)),
            (f"connect-{n // 1000}k-hs256", lambda s: m_connect(s, n), access(kit, kit.hs256)),
            (f"connect-{n // 1000}k-es256", lambda s: m_connect(s, n), access(kit, kit.es256)),
            ("fanout-1k-plain", lambda s: m_fanout(s, 1000, d), access(None)),
            ("fanout-1k-perm", lambda s: m_fanout(s, 1000, d),
             access(kit, kit.hs256, namespace=True)),
        ]
    if quick:
        return [
            ("fanout-1k", lambda s: m_fanout(s, 1000, 2), {}),
            ("fanout-1k-20/s", lambda s: m_fanout(s, 1000, 2, rate=20), {}),
            ("echo-100", lambda s: m_echo(s, 100, 2), {}),
            ("connect-2k", lambda s: m_connect(s, 2000), {}),
            ("connect-sub-2k", lambda s: m_connect(s, 2000, subscribe=True), {}),
            ("idle-5k", lambda s: m_memory(s, 5000, 1), {}),
            ("idle-sub-5k", lambda s: m_memory(s, 5000, 1, subscribe=True), {}),
            ("fanout-1k-2/s", lambda s: m_fanout(s, 1000, 2, rate=2), {}),
        ] + acc
    return [
        ("fanout-1k", lambda s: m_fanout(s, 1000, 4), {}),
        ("fanout-10k", lambda s: m_fanout(s, 10000, 4), {}),
        ("fanout-1k-20/s", lambda s: m_fanout(s, 1000, 4, rate=20), {}),
        ("fanout-10k-20/s", lambda s: m_fanout(s, 10000, 4, rate=20), {}),
        ("fanout-10k-2/s", lambda s: m_fanout(s, 10000, 8, rate=2), {}),
        ("echo-100", lambda s: m_echo(s, 100, 4), {}),
        ("connect-10k", lambda s: m_connect(s, 10000), {}),
        ("connect-sub-5k", lambda s: m_connect(s, 5000, subscribe=True), {}),
        ("connect-sub-18k", lambda s: m_connect(s, 18000, subscribe=True), {}),
        ("idle-10k", lambda s: m_memory(s, 10000, 1), {}),
        ("idle-sub-18k", lambda s: m_memory(s, 18000, 2, subscribe=True), {}),
    ] + acc


def figure(name, r):
    """The figures of one result that go into the table."""
    if r is None:
        return {}
    if name.startswith("json2k"):
        return {"delivered/s": r.get("delivered-per-s"), "p99 ms": ms(r.get("latency-p99-us")),
                "lost": r.get("lost"), "wire bytes/msg": r.get("wire-bytes-per-delivery"),
                "worker cpu us/msg": r.get("worker-cpu-us-per-delivery"), "bench cpu s": cpu(r)}
    if name.startswith("wss-idle"):
        return {"pss bytes/conn": r["pss-per-conn"], "bytes/conn": r["bytes-per-conn"]}
    if name.startswith("wss-connect"):
        return {"handshakes/s": r.get("handshakes-per-s"),
                "resumed %": 100.0 * (r.get("tls-resumed") or 0) / max(1, r.get("connected") or 0),
                "failed": (r.get("connect-errors") or 0) + (r.get("handshake-errors") or 0)}
    if name.startswith("wss-fanout"):
        name = name[4:]
    if name.startswith("fanout"):
        f = {"delivered/s": r.get("delivered-per-s"), "p50 ms": ms(r.get("latency-p50-us")),
             "p99 ms": ms(r.get("latency-p99-us")), "lost": r.get("lost"),
             "bench cpu s": cpu(r)}
        t = r.get("server-trace")
        if t:
            # Inside the server: publish frame read -> the last writev of
            # the message on any worker (median and worst over messages).
            f["srv last p50 ms"] = ms(t["last-write-p50-us"])
            f["srv last max ms"] = ms(t["last-write-max-us"])
            if t.get("cpu-share-p50") is not None:
                # Of a worker's fan-out turn, the share it ran on a CPU,
                # and its CPU time per subscriber written.
                f["srv on-cpu share"] = t["cpu-share-p50"]
                f["srv cpu us/write"] = t["cpu-us-per-write-p50"]
        return f
    if name.startswith("echo"):
        return {"round trips/s": r.get("round-trips-per-s"),
                "p99 ms": ms(r.get("latency-p99-us")), "bench cpu s": cpu(r),
                "srv cpu us/rt": r.get("server-cpu-us-per-rt")}
    if name.startswith("connect"):
        return {"handshakes/s": r.get("handshakes-per-s"),
                "failed": (r.get("connect-errors") or 0) + (r.get("handshake-errors") or 0) +
                (r.get("subscribe-errors") or 0),
                "bench cpu s": cpu(r), "srv cpu us/conn": r.get("server-cpu-us-per-conn"),
                "srv sys share": (r["server-cpu-sys-s"] / r["server-cpu-s"]
                                  if r.get("server-cpu-s") else None)}
    if name.startswith("idle"):
        return {"bytes/conn": r["bytes-per-conn"], "pss/conn": r.get("pss-per-conn")}
    return {}


def ms(us):
    return None if us is None else us / 1000.0


def cpu(r):
    u, s = r.get("cpu-user-s"), r.get("cpu-sys-s")
    return None if u is None or s is None else u + s


def median(vals):
    vals = [v for v in vals if isinstance(v, (int, float))]
    return statistics.median(vals) if vals else None


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
    ap.add_argument("--out", default=os.path.join(ROOT, "build", "bench", "results.json"))
    ap.add_argument("--only", default="sente-lite,nchan,node-ws,ceiling-raw,ceiling-batched,"
                    "ceiling-handshake,ceiling-handoff")
    ap.add_argument("--big", type=int, default=0,
                    help="also hold this many idle connections (e.g. 50000) with 4 workers")
    ap.add_argument("--scenarios", default=None,
                    help="comma-separated scenario names to run (default: all)")
    ap.add_argument("--base-bin", default=None,
                    help="also run this sente-lite binary (an earlier build) as sente-lite-base: "
                         "an A/B in the same run")
    ap.add_argument("--no-access", action="store_true",
                    help="leave out the access-control scenarios")
    ap.add_argument("--no-tls", action="store_true",
                    help="leave out the TLS and compression scenarios (issue 16)")
    a = ap.parse_args()
    reps = a.reps or (1 if a.quick else 3)
    want = a.only.split(",")
    servers = [s for s in (SenteLite(), Nchan(), WsNode(), Ceiling("raw"), Ceiling("batched"),
                           Ceiling("handshake"), Ceiling("handoff"))
               if s.name in want]
    if a.base_bin:
        servers.insert(1, SenteLite(binary=os.path.abspath(a.base_bin), name="sente-lite-base"))
    started = time.time()
    results = {}
    kit = None if a.no_access else AuthKit()
    plan = scenarios(a.quick, kit)
    if not a.no_tls:
        plan += tls_scenarios(a.quick, TlsKit())
    if a.scenarios:
        plan = [p for p in plan if p[0] in a.scenarios.split(",")]
    for rep in range(reps):
        # Alternating, and the order rotates with each repetition, so no
        # server always runs right after the heaviest run of the previous
        # scenario (its sockets still closing in the kernel).
        order = servers[rep % len(servers):] + servers[:rep % len(servers)]
        for name, fn, opts in plan:
            for srv in order:
                # Ceilings only where they mean something.
                if hasattr(srv, "takes_part") and not srv.takes_part(name):
                    continue
                if opts.get("only") and srv.name != opts["only"]:
                    continue
                if opts.get("servers") and srv.name not in opts["servers"]:
                    continue
                srv.tls = opts.get("tls")
                srv.extra = opts.get("extra", [])
                srv.header = opts.get("header")
                srv.channel = opts.get("channel", "bench")
                srv.trace = "/s" in name  # light load: the fan-out trace (sente-lite)
                rundir = tempfile.mkdtemp(prefix=f"bench-{srv.name}-")
                time.sleep(1.0)  # let the previous run's sockets settle
                try:
                    srv.start(rundir)
                    r = fn(srv)
                except Exception as e:  # a failed run is a missing figure, reported
                    log(f"{name} on {srv.name}: {e}")
                    r = None
                finally:
                    try:
                        srv.stop()
                    except Exception as e:
                        log(f"stopping {srv.name}: {e}")
                results.setdefault(name, {}).setdefault(srv.name, []).append(r)
                log(f"[{time.time() - started:5.0f}s] rep {rep + 1} {name:16} {srv.name:10} "
                    + " ".join(f"{k}={fmt(v)}" for k, v in figure(name, r).items()))
    if a.big:
        for srv in (SenteLite(workers=4), Nchan()):
            if srv.name not in want:
                continue
            srv.workers = 4
            rundir = tempfile.mkdtemp(prefix=f"bench-{srv.name}-")
            try:
                srv.start(rundir)
                r = m_memory(srv, a.big, 4)
            except Exception as e:
                log(f"idle-{a.big} on {srv.name}: {e}")
                r = None
            finally:
                srv.stop()
            results.setdefault(f"idle-{a.big // 1000}k", {}).setdefault(srv.name, []).append(r)
            log(f"idle-{a.big} {srv.name}: " +
                " ".join(f"{k}={fmt(v)}" for k, v in figure("idle", r).items()))

    # openssl s_time (its own rounds, alternating the two servers).
    s_rows, s_out = [], ""
    wanted = not a.scenarios or any(x.startswith("s_time") for x in a.scenarios.split(","))
    if not a.no_tls and wanted and "nchan" in want:
        try:
            s_rows, s_out = s_time_rows(reps)
        except Exception as e:
            log(f"tls_handshakes.sh: {e}")
        log(s_out.rstrip())

    # Table of medians, with ratios against sente-lite.
    rows = []
    for name, per in results.items():
        keys = []
        for runs in per.values():
            for r in runs:
                for k in figure(name, r):
                    if k not in keys:
                        keys.append(k)
        for k in keys:
            med = {s: median([figure(name, r).get(k) for r in runs]) for s, runs in per.items()}
            rows.append((name, k, med))
    rows += s_rows
    names = [s.name for s in servers]
    width = {n: max(12, len(n)) for n in names}  # ceiling-batched is longer than 12
    head = f"{'scenario':16} {'figure':14} " + " ".join(f"{n:>{width[n]}}" for n in names) + \
        " " + " ".join(f"{'ours/' + n:>{max(14, len(n) + 5)}}" for n in names[1:])
    print(head)
    print("-" * len(head))
    for name, k, med in rows:
        ours = med.get("sente-lite")
        ratios = []
        for n in names[1:]:
            v, w = med.get(n), max(14, len(n) + 5)
            ratios.append(f"{ours / v:{w}.2f}" if ours and v else f"{'-':>{w}}")
        print(f"{name:16} {k:14} " + " ".join(f"{fmt(med.get(n)):>{width[n]}}" for n in names) +
              " " + " ".join(ratios))
    access_summary(rows)
    goals = tls_summary(rows)
    doc = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "machine": {"cpus": os.cpu_count(), "kernel": platform.release(),
                    "model": cpu_model()},
        "command": " ".join(sys.argv), "repetitions": reps, "quick": a.quick,
        "workers": WORKERS, "seconds": round(time.time() - started, 1),
        "medians": [{"scenario": n, "figure": k, "values": v} for n, k, v in rows],
        "issue16": goals, "s_time": s_out,
        "runs": results,
    }
    os.makedirs(os.path.dirname(a.out), exist_ok=True)
    with open(a.out, "w") as f:
        json.dump(doc, f, indent=1)
    print(f"\nresults: {a.out} ({doc['seconds']} s)")


def access_summary(rows):
    """Access control on sente-lite: the figure with it over the figure
    without, each a median of the same run's repetitions."""
    def med(suffix, fig):
        for n, k, m in rows:
            if n.endswith(suffix) and k == fig:
                return m.get("sente-lite")
        return None
    pairs = [("HS256 token / no token", "-hs256", "-none", "handshakes/s", 0.90),
             ("ES256 token / no token", "-es256", "-none", "handshakes/s", None),
             ("publish=token namespace / none", "fanout-1k-perm", "fanout-1k-plain",
              "delivered/s", 0.95)]
    lines = []
    for label, a, b, fig, goal in pairs:
        x, y = med(a, fig), med(b, fig)
        if x and y:
            lines.append(f"{label:34} {fig:14} {fmt(x):>12} {fmt(y):>12} {x / y:8.3f}" +
                         (f"   (goal >= {goal})" if goal else ""))
    if lines:
        print(f"\naccess control (sente-lite)        {'figure':14} {'with':>12} {'without':>12}"
              f" {'ratio':>8}")
        print("\n".join(lines))


def tls_summary(rows):
    """Issue 16's goals beside the figures (medians of this run): a list of
    {goal, ours, other, ratio, target}, printed and kept in results.json
    (report.py renders it)."""
    def med(scn, fig, srv="sente-lite"):
        for n, k, m in rows:
            if n == scn and k == fig:
                return m.get(srv)
        return None
    out = []

    def add(label, x, y, r, target):
        out.append({"goal": label, "ours": x, "other": y, "ratio": r, "target": target})

    def vs_nchan(label, scn, fig, target, invert=False):
        x, y = med(scn, fig), med(scn, fig, "nchan")
        if x and y:
            add(label, x, y, y / x if invert else x / y, target)
    for kind in ("ec", "rsa"):
        for mode, suffix in (("full", ""), ("resumed", "-resumed")):
            vs_nchan(f"wss handshakes/s, {kind}, {mode} (vs nchan)",
                     f"wss-connect-{kind}{suffix}", "handshakes/s", ">= 1")
            vs_nchan(f"s_time handshakes/s, {kind}, {mode} (vs nchan)", f"s_time-{kind}-{mode}",
                     "handshakes/s", ">= 1")
    vs_nchan("wss fan-out 1k flat out, delivered/s (vs nchan)", "wss-fanout-1k", "delivered/s",
             ">= 3")
    vs_nchan("wss fan-out 1k at 20/s, p99 ms (nchan / ours)", "wss-fanout-1k-20/s", "p99 ms",
             ">= 1", invert=True)
    pss = med("wss-idle-2k", "pss bytes/conn")
    if pss is not None:
        add("idle PSS per wss connection, bytes (nchan beside)", pss,
            med("wss-idle-2k", "pss bytes/conn", "nchan"), None, "<= 4096")
    x, y = med("json2k-fanout-1k-deflate", "delivered/s"), med("json2k-fanout-1k-plain",
                                                                "delivered/s")
    if x and y:
        add("2 KiB JSON fan-out 1k, delivered/s (deflate / plain)", x, y, x / y, ">= 0.8")
    for fig in ("wire bytes/msg", "worker cpu us/msg"):
        x, y = med("json2k-fanout-1k-deflate", fig), med("json2k-fanout-1k-plain", fig)
        if x and y:
            add(f"2 KiB JSON fan-out 1k, {fig} (deflate / plain)", x, y, x / y, "reported")
    if out:
        print(f"\n{'issue 16 (TLS, compression)':58} {'ours':>12} {'other':>12} {'ratio':>8}")
        for g in out:
            r = "" if g["ratio"] is None else f"{g['ratio']:.2f}"
            print(f"{g['goal']:58} {fmt(g['ours']):>12} {fmt(g['other']):>12} {r:>8}"
                  f"   (goal {g['target']})")
    return out


def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


if __name__ == "__main__":
    main()
