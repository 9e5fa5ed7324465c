"""Fixtures for the cluster tests: a real redis-server (Debian's) on a free
loopback port in a temporary directory, without persistence, and sente-lite
nodes joined through it (--redis), each started and stopped by the test.

SENTE_TEST_REDIS_URL=redis://host:port runs the tests against an external
Redis instead: every test then uses its own --redis-prefix, and the tests
that stop, kill or restart Redis are skipped."""
import os
import signal
import subprocess
import sys
import time
import uuid

import pytest

import importlib.util  # noqa: E402

# The integration suite's helpers (Server, free_port, wait_for), loaded
# under another name: both files are called conftest.py.
_spec = importlib.util.spec_from_file_location(
    "sl_integration_helpers",
    os.path.join(os.path.dirname(__file__), "..", "integration", "conftest.py"))
_h = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_h)
BIN, CRASH_BIN, SLOW, Server, free_port, pid_alive, wait_for = (
    _h.BIN, _h.CRASH_BIN, _h.SLOW, _h.Server, _h.free_port, _h.pid_alive, _h.wait_for)
sys.modules.setdefault("sl_integration_helpers", _h)

REDIS_SERVER = "/usr/bin/redis-server"
EXTERNAL = os.environ.get("SENTE_TEST_REDIS_URL")


class Redis:
    """One redis-server process; restartable on the same port."""

    def __init__(self, tmp_path, name="redis"):
        self.dir = tmp_path / name
        self.dir.mkdir(exist_ok=True)
        self.proc = None
        for attempt in range(5):
            # free_port's port may be taken before redis-server binds it
            # (it exits then): start again on another.
            self.port = free_port()
            self.url = f"redis://127.0.0.1:{self.port}"
            if self.start(first=attempt < 4):
                break

    def start(self, first=False):
        self.proc = subprocess.Popen(
            [REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(self.dir), "--daemonize", "no",
             "--logfile", str(self.dir / "redis.log"), "--protected-mode", "yes"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

        def up():
            if first and self.proc.poll() is not None:
                return "exited"
            return self.ping()
        return wait_for(up, timeout=10, what="redis-server up") is True

    def cli(self, *args):
        return subprocess.run(["redis-cli", "-p", str(self.port), *args], capture_output=True,
                              text=True, timeout=10).stdout.strip()

    def ping(self):
        try:
            return self.cli("PING") == "PONG"
        except subprocess.TimeoutExpired:
            return False

    def kill(self):
        self.proc.kill()
        self.proc.wait()

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture
def redis(tmp_path):
    if EXTERNAL:
        yield None
        return
    r = Redis(tmp_path)
    yield r
    r.stop()


def needs_own_redis():
    if EXTERNAL:
        pytest.skip("stops or restarts Redis: not against SENTE_TEST_REDIS_URL")


@pytest.fixture
def cluster(tmp_path, redis, request):
    """make(n=3, workers=2, *args) -> [Server]: n nodes on one Redis
    (binary: another build, e.g. CRASH_BIN with its stop points)."""
    nodes = []
    prefix = "t" + uuid.uuid4().hex[:10] if EXTERNAL else "sl"
    url = EXTERNAL or redis.url

    def make(n=3, *args, workers=2, urls=None, env=None, binary=None):
        made = []
        for i in range(n):
            d = tmp_path / f"node{len(nodes)}"
            d.mkdir(exist_ok=True)
            redis_args = []
            for u in (urls or [url]):
                redis_args += ["--redis", u]
            # A generous Redis timeout: a loaded test machine must not make
            # a link look dead (tests of slowness pass a short one).
            s = Server(d, list(redis_args) + ["--redis-prefix", prefix, "--redis-timeout-ms",
                                              "3000"] + list(args), env, workers,
                       binary=binary)
            nodes.append(s)
            made.append(s)
        for s in made:
            s.wait_ready()
        return made

    yield make
    failed = request.node.rep_call.failed if hasattr(request.node, "rep_call") else False
    for s in nodes:
        if not s.stopped:
            if s.proc.poll() is not None:
                s.stopped = True
                continue
            rc = s.stop()
            if failed or rc != 0:
                print("node stderr:\n" + s.stderr())
            assert rc == 0, f"node exited with {rc}: {s.stderr()}"


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
