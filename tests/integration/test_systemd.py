"""systemd integration without a running systemd: the sd_notify protocol
read from a real unix datagram socket named by NOTIFY_SOCKET (READY=1 once
every worker is up, WATCHDOG=1 only while every worker makes progress,
MAINPID handed over by a binary upgrade, STOPPING=1), journal priorities on
standard error when JOURNAL_STREAM names it, and the unit file: ExecStart
with $SENTE_OPTS, Type=notify, WatchdogSec, EnvironmentFile, and an offline
`systemd-analyze security` exposure of at most 2.0 (when the tool exists)."""
import os
import re
import shutil
import signal
import socket
import subprocess
import time

import pytest

from conftest import BIN, SLOW, pid_alive, wait_for

ROOT = os.path.join(os.path.dirname(__file__), "..", "..")


class Notify:
    def __init__(self, path):
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(path)
        self.msgs = []

    def read(self, timeout):
        """Messages arriving within timeout seconds."""
        got, deadline = [], time.time() + timeout
        while True:
            left = deadline - time.time()
            if left <= 0:
                return got
            self.sock.settimeout(left)
            try:
                m = self.sock.recv(4096).decode()
            except socket.timeout:
                return got
            got.append(m)
            self.msgs.append(m)

    def wait(self, pred, timeout, what):
        deadline = time.time() + timeout * SLOW
        while time.time() < deadline:
            for m in self.read(0.2):
                if pred(m):
                    return m
        raise AssertionError(f"no notification {what}; got {self.msgs[-10:]}")


def test_notify_ready_watchdog_stall_and_stop(server_factory, tmp_path):
    n = Notify(str(tmp_path / "notify.sock"))
    # Checks and pings every 2 s (half of WATCHDOG_USEC); an idle worker ends
    # a loop turn at least every second, so each check sees progress.
    srv = server_factory(env={"NOTIFY_SOCKET": n.path, "WATCHDOG_USEC": "4000000"})
    ready = n.wait(lambda m: "READY=1" in m, 10, "READY=1")
    assert f"MAINPID={srv.pid}" in ready
    # Every worker was up when READY=1 was sent.
    assert all(w["alive"] for w in srv.stats()["workers"])
    n.wait(lambda m: m.startswith("WATCHDOG=1"), 5, "WATCHDOG=1")
    # A stopped worker makes no progress: the pings stop.
    victim = srv.worker_pids()[1]
    os.kill(victim, signal.SIGSTOP)
    try:
        n.wait(lambda m: "makes no progress" in m, 15, "the stall STATUS")
        quiet = n.read(5.0 * SLOW)
        assert not any(m.startswith("WATCHDOG=1") for m in quiet), quiet
    finally:
        os.kill(victim, signal.SIGCONT)
    n.wait(lambda m: m.startswith("WATCHDOG=1"), 15, "WATCHDOG=1 again")
    srv.stop()
    n.wait(lambda m: "STOPPING=1" in m, 5, "STOPPING=1")


def test_no_watchdog_for_another_pid(server_factory, tmp_path):
    """WATCHDOG_PID names someone else: READY=1 but no pings."""
    n = Notify(str(tmp_path / "notify.sock"))
    server_factory(env={"NOTIFY_SOCKET": n.path, "WATCHDOG_USEC": "400000",
                        "WATCHDOG_PID": "1"})
    n.wait(lambda m: "READY=1" in m, 10, "READY=1")
    assert not any(m.startswith("WATCHDOG=1") for m in n.read(1.5))


def test_upgrade_hands_mainpid_over(tmp_path):
    n = Notify(str(tmp_path / "notify.sock"))
    pidf = tmp_path / "pid"
    from conftest import free_port
    port = free_port()
    env = dict(os.environ, NOTIFY_SOCKET=n.path, WATCHDOG_USEC="2000000")
    proc = subprocess.Popen([BIN, "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
                             "--pid-file", str(pidf), "--log-file", str(tmp_path / "log")],
                            env=env, stderr=subprocess.DEVNULL)
    new = 0
    try:
        n.wait(lambda m: f"READY=1\nMAINPID={proc.pid}" in m, 10, "first READY")
        os.kill(proc.pid, signal.SIGUSR2)
        assert proc.wait(timeout=30 * SLOW) == 0
        new = int(pidf.read_text())
        assert new != proc.pid
        # The new master says READY with its own pid; the old one handed over.
        seen = "\n".join(n.msgs + n.read(1.0))
        assert f"READY=1\nMAINPID={new}" in seen and f"MAINPID={new}" in seen
        # The new master feeds the watchdog (WATCHDOG_PID was set for it).
        n.wait(lambda m: m.startswith("WATCHDOG=1"), 5, "the new master's WATCHDOG=1")
    finally:
        if proc.poll() is None:
            proc.kill()
        if new and pid_alive(new):
            os.kill(new, signal.SIGTERM)
            wait_for(lambda: not pid_alive(new), timeout=15, what="new master gone")


def test_journal_priorities_on_stderr(tmp_path):
    """JOURNAL_STREAM = dev:ino of our standard error: lines carry <N>."""
    from conftest import free_port
    port = free_port()
    errpath = tmp_path / "stderr"
    with open(errpath, "wb") as err:
        st = os.fstat(err.fileno())
        env = dict(os.environ, JOURNAL_STREAM=f"{st.st_dev}:{st.st_ino}")
        proc = subprocess.Popen([BIN, "--host", "127.0.0.1", "--port", str(port), "--workers",
                                 "1"], stderr=err, env=env)
        try:
            wait_for(lambda: "server-started" in errpath.read_text(), what="server-started")
        finally:
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=20) == 0
    lines = [ln for ln in errpath.read_text().splitlines() if "[sente-lite.server/" in ln]
    assert lines and all(re.match(r"<[3467]>", ln) for ln in lines), lines[:3]
    assert any(ln.startswith("<6>") and "server-started" in ln for ln in lines)
    # Without JOURNAL_STREAM (or with another stream's), no prefixes.
    with open(tmp_path / "stderr2", "wb") as err:
        env = dict(os.environ, JOURNAL_STREAM="1:1")
        proc = subprocess.Popen([BIN, "--host", "127.0.0.1", "--port", str(port), "--workers",
                                 "1"], stderr=err, env=env)
        wait_for(lambda: "server-started" in (tmp_path / "stderr2").read_text(), what="started")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
    assert not (tmp_path / "stderr2").read_text().startswith("<")


def unit_text():
    return open(os.path.join(ROOT, "scripts", "sente-lite.service")).read()


def test_unit_file():
    unit = unit_text()
    for line in ["Type=notify", "WatchdogSec=", "EnvironmentFile=-/etc/default/sente-lite",
                 "ExecStart=/usr/local/bin/sente-lite $SENTE_OPTS", "NotifyAccess=all",
                 "ExecReload=/bin/kill -HUP $MAINPID", "LimitNOFILE=", "DynamicUser=yes"]:
        assert line in unit, line
    # No listening address hard-coded: the config file, environment or
    # SENTE_OPTS decide (and the socket unit, when enabled).
    assert "--port" not in unit and "--host" not in unit
    sock = open(os.path.join(ROOT, "scripts", "sente-lite.socket")).read()
    assert "ListenStream=" in sock
    default = open(os.path.join(ROOT, "scripts", "sente-lite.default")).read()
    assert 'SENTE_OPTS=""' in default


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze here")
def test_unit_hardening_exposure(tmp_path):
    unit = tmp_path / "sente-lite.service"
    unit.write_text(unit_text().replace("/usr/local/bin/sente-lite", BIN))
    r = subprocess.run(["systemd-analyze", "security", "--offline=true", str(unit)],
                       capture_output=True, text=True, timeout=60)
    m = re.search(r"Overall exposure level for sente-lite.service: ([0-9.]+)", r.stdout + r.stderr)
    assert m, r.stdout[-2000:] + r.stderr[-2000:]
    assert float(m.group(1)) <= 2.0, r.stdout[-3000:]
    # And the unit itself parses.
    v = subprocess.run(["systemd-analyze", "verify", "--man=no", str(unit)],
                       capture_output=True, text=True, timeout=60)
    assert "Unknown key" not in v.stderr and "Invalid" not in v.stderr, v.stderr
