"""Fixtures that start the real sente-lite binary on a free loopback port
and stop it at the end of each test (SIGTERM, then a bounded wait)."""
import http.client
import json
import os
import re
import signal
import socket
import subprocess
import time

import pytest

BIN = os.environ.get("SENTE_LITE_BIN") or os.path.join(
    os.path.dirname(__file__), "..", "..", "build", "sente-lite")
# Sanitizer builds are slower: scale waits.
SLOW = 3.0 if "asan" in BIN else 1.0
# The same build with crash, stop and fault points compiled in (make builds
# it next to BIN): SL_CRASH_ARM=<worker>:<point>:<nth>:<exit|stop|stops|fail>.
CRASH_BIN = BIN + "-crash"


# pytest-xdist (make check-integration runs these tests in two processes):
# each worker takes only its own share of the kernel's free ports, so two
# workers never hand the same port to two servers.  Linux gives bind(0) odd
# ports, so the share is by port / 2.
_WORKER = os.environ.get("PYTEST_XDIST_WORKER", "gw0")
_WORKER_INDEX = int(_WORKER[2:]) if _WORKER[2:].isdigit() else 0
_WORKERS = max(1, int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")))


def free_port():
    """A loopback port free now (bind to 0, close).  Someone else (another
    program, a client's connect) may still take it before the server binds
    it: Server retries its start on new ports when it finds it taken."""
    for _ in range(1000):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        s.close()
        if (port >> 1) % _WORKERS == _WORKER_INDEX:
            return port
    raise AssertionError("no free port of this worker's share")


def wait_for(pred, timeout=5.0, interval=0.02, what="condition"):
    deadline = time.time() + timeout * SLOW
    while time.time() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(interval)
    raise AssertionError("timed out waiting for " + what)


def pid_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is not alive.
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1][0] != "Z"
    except FileNotFoundError:
        return False


def children_of(pid):
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True,
                         text=True).stdout
    return [int(x) for x in out.split()]


def title_of(pid):
    return subprocess.run(["ps", "-o", "args=", "-p", str(pid)], capture_output=True,
                          text=True).stdout.strip()


class PortTaken(Exception):
    """The server could not bind a port free_port() had found free."""


class Server:
    def __init__(self, tmp_path, args, env, workers, ops=False, binary=None):
        self.tmp_path, self.args, self.env, self.binary = tmp_path, list(args), env, binary
        self.ops = ops
        self.log = str(tmp_path / "sente.log")
        self.errlog = str(tmp_path / "stderr.log")
        self.workers = workers
        self.starts = 0
        self._start()

    def _start(self):
        """Start the binary on ports chosen now (free_port: the listener's,
        and the ops listener's with ops=True)."""
        self.starts += 1
        self.port = free_port()
        args = list(self.args)
        if self.ops:  # operator endpoints on a listener of their own
            args += ["--ops-listen", f"127.0.0.1:{free_port()}"]
        # HTTP requests go where /health, /stats ... are served.
        self.ops_port = int(args[args.index("--ops-listen") + 1].rsplit(":", 1)[1]) \
            if "--ops-listen" in args else None
        self.http_port = self.ops_port or self.port
        cmd = [self.binary or BIN, "--host", "127.0.0.1", "--port", str(self.port), "--workers",
               str(self.workers), "--log-file", self.log] + args
        full_env = dict(os.environ)
        full_env.update(self.env or {})
        self.err = open(self.errlog, "wb")
        self.proc = subprocess.Popen(cmd, stdout=self.err, stderr=self.err, env=full_env)
        self.pid = self.proc.pid
        self.url = f"ws://127.0.0.1:{self.port}/"
        self.stopped = False

    def request(self, method, path, body=None, headers=None, port=None):
        c = http.client.HTTPConnection("127.0.0.1", port or self.http_port, timeout=5 * SLOW)
        try:
            c.request(method, path, body=body, headers=headers or {})
            r = c.getresponse()
            return r.status, r.read(), r
        finally:
            c.close()

    def get_json(self, path):
        status, body, _ = self.request("GET", path)
        return status, json.loads(body)

    def stats(self):
        return self.get_json("/stats")[1]

    def healthy(self):
        try:
            status, doc = self.get_json("/health")
            return status == 200 and doc["status"] == "healthy"
        except (OSError, http.client.HTTPException, ValueError):
            return False

    def wait_ready(self):
        def ready():
            if self.proc.poll() is not None:
                err = self.stderr()
                # Only the ports chosen here can be chosen again: a port a
                # test passed itself (in args) is its own business.
                taken = re.search(r"cannot listen on 127\.0\.0\.1:(\d+) .*Address already in use", err)
                own = (self.port, self.ops_port if self.ops else self.port)
                if taken and int(taken.group(1)) in own and self.starts < 5:
                    raise PortTaken(err.strip())
                raise AssertionError("server exited early: " + err)
            return self.healthy()
        while True:
            try:
                wait_for(ready, timeout=10, what="server ready")
                return
            except PortTaken as e:
                print(f"port taken before the server bound it, starting again: {e}")
                self.err.close()
                self._start()

    def worker_pids(self):
        return [w["pid"] for w in self.stats()["workers"]]

    def stderr(self):
        with open(self.errlog, "rb") as f:
            return f.read().decode(errors="replace")

    def log_lines(self):
        """The log's complete lines: one the logger is still writing (no
        newline yet) is left for the next look (a test polling for a JSON
        event read half a line once under load)."""
        try:
            with open(self.log) as f:
                text = f.read()
        except FileNotFoundError:
            return []
        return text[:text.rfind("\n") + 1].splitlines()

    def stop(self, timeout=10.0):
        """SIGTERM and wait; returns the exit status.  Fails loudly when the
        server needs SIGKILL."""
        if self.stopped:
            return self.proc.returncode
        self.stopped = True
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            rc = self.proc.wait(timeout=timeout * SLOW)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError("server did not stop on SIGTERM")
        finally:
            self.err.close()
        return rc


@pytest.fixture
def server_factory(tmp_path, request):
    servers = []

    def make(*args, env=None, workers=2, wait=True, ops=False, binary=None):
        s = Server(tmp_path, args, env, workers, ops, binary)
        servers.append(s)
        if wait:
            s.wait_ready()
        return s

    yield make
    failed = request.node.rep_call.failed if hasattr(request.node, "rep_call") else False
    for s in servers:
        if not s.stopped:
            rc = s.stop()
            if failed or rc != 0:
                print("server stderr:\n" + s.stderr())
            assert rc == 0, f"server exited with {rc}: {s.stderr()}"


@pytest.fixture
def server(server_factory):
    return server_factory()


def pytest_configure(config):
    # make check-integration / check-cluster run the tests in two
    # pytest-xdist processes ("-m 'not alone'"), then the ones marked alone
    # by themselves ("-m alone"): tests that hold a bound on time under
    # their own load, where a second test beside them would be noise.
    config.addinivalue_line("markers", "alone: run by itself, after the parallel run")


@pytest.hookimpl(tryfirst=True, hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    setattr(item, "rep_" + rep.when, rep)


def new_master_of(pid):
    """The new master a SIGUSR2 started: the child of `pid` titled master."""
    def find():
        for c in children_of(pid):
            if "master" in title_of(c):
                return c
        return 0
    return wait_for(find, timeout=10, what="the new master")


def build_shim(tmp_path, name, source):
    """Compile an LD_PRELOAD shim (C source) into tmp_path; returns its
    path.  Shims stand in for faults a test cannot cause otherwise (a slow
    start, a process the kernel cannot kill)."""
    src = tmp_path / (name + ".c")
    src.write_text(source)
    so = tmp_path / (name + ".so")
    subprocess.run(["cc", "-shared", "-fPIC", "-o", str(so), str(src), "-ldl"], check=True)
    return str(so)


def shim_env(so, **extra):
    """The environment that preloads shim `so` (also into an ASan build,
    which otherwise insists on coming first)."""
    env = dict(os.environ)
    env["LD_PRELOAD"] = so
    env["ASAN_OPTIONS"] = (env.get("ASAN_OPTIONS", "") + ":verify_asan_link_order=0").lstrip(":")
    env.update(extra)
    return env


# A new master (started by SIGUSR2: SENTE_UPGRADE_FD set when it is loaded)
# whose workers take SL_TEST_SLOW_NEW_MASTER_S seconds to come up (they
# sleep before creating their signalfd); the old master is not affected.
SLOW_NEW_MASTER = r"""
#define _GNU_SOURCE
#include <dlfcn.h>
#include <signal.h>
#include <stdlib.h>
#include <unistd.h>
static int slow;
__attribute__((constructor)) static void init(void)
{
    const char *s = getenv("SL_TEST_SLOW_NEW_MASTER_S");
    slow = getenv("SENTE_UPGRADE_FD") && s ? atoi(s) : 0;
}
int signalfd(int fd, const sigset_t *mask, int flags)
{
    static int (*real)(int, const sigset_t *, int);
    if (real == 0)
        real = (int (*)(int, const sigset_t *, int))dlsym(RTLD_NEXT, "signalfd");
    if (slow)
        sleep((unsigned)slow);
    return real(fd, mask, flags);
}
"""
