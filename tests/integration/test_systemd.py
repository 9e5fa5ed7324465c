"""systemd integration without a running systemd: the sd_notify protocol
read from a real unix datagram socket named by NOTIFY_SOCKET (READY=1 once
every worker is up, WATCHDOG=1 from the master's loop while every stalled
worker is bypassed and killed within its bound, a stalled worker replaced,
MAINPID handed over by a binary upgrade, STOPPING=1), journal priorities on
standard error when JOURNAL_STREAM names it, and the unit file: ExecStart
with $SENTE_OPTS, Type=notify, WatchdogSec, EnvironmentFile, and an offline
`systemd-analyze security` exposure of at most 2.0 (when the tool exists)."""
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import threading
import time

import pytest

from conftest import (BIN, SLOW, SLOW_NEW_MASTER, build_shim, free_port, new_master_of, pid_alive,
                      shim_env, wait_for)

ROOT = os.path.join(os.path.dirname(__file__), "..", "..")


class Notify:
    """The systemd side of NOTIFY_SOCKET.  A thread receives every datagram
    as it arrives and stamps it with its arrival time (so the gaps between
    pings are the server's, not the test's) and its sender's pid (the
    kernel's credentials, SO_PASSCRED, as systemd reads them); read() hands
    them out.  pause() stops receiving, so systemd's queue fills up."""

    def __init__(self, path):
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        self.sock.bind(path)
        self.sock.settimeout(0.1)
        self.msgs = []     # handed out by read()
        self.stamped = []  # (arrival time, message, sender pid), every one received
        self.cond = threading.Condition()
        self.running = threading.Event()
        self.running.set()
        threading.Thread(target=self._recv, daemon=True).start()

    def _recv(self):
        creds = struct.calcsize("3i")
        while True:
            self.running.wait()
            try:
                data, anc, _, _ = self.sock.recvmsg(4096, socket.CMSG_SPACE(creds))
            except socket.timeout:
                continue
            except OSError:
                return
            pid = 0
            for level, kind, value in anc:
                if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
                    pid = struct.unpack("3i", value[:creds])[0]
            with self.cond:
                self.stamped.append((time.time(), data.decode(), pid))
                self.cond.notify_all()

    def pause(self):
        self.running.clear()
        time.sleep(0.2)  # a recvmsg under way ends (its timeout)

    def resume(self):
        self.running.set()

    def main_only(self, first_main):
        """As systemd with NotifyAccess=main: every message must come from
        the main pid, which MAINPID= moves.  Returns the final main pid."""
        main = first_main
        for _, m, pid in self.stamped:
            assert pid == main, f"{m!r} from {pid}, not from the main process {main}"
            for line in m.split("\n"):
                if line.startswith("MAINPID="):
                    main = int(line[8:])
        return main

    def read(self, timeout):
        """Messages not handed out yet, waiting up to timeout seconds."""
        deadline = time.time() + timeout
        with self.cond:
            while True:
                left = deadline - time.time()
                if left <= 0:
                    got = [m for _, m, _ in self.stamped[len(self.msgs):]]
                    self.msgs.extend(got)
                    return got
                self.cond.wait(left)

    def wait(self, pred, timeout, what):
        deadline = time.time() + timeout * SLOW
        while time.time() < deadline:
            for m in self.read(0.2):
                if pred(m):
                    return m
        raise AssertionError(f"no notification {what}; got {self.msgs[-10:]}")


def feeds(n, t0, t1):
    """Receive times of WATCHDOG=1 between t0 and t1 (Notify keeps them)."""
    return [t for t, m, _ in n.stamped if m.startswith("WATCHDOG=1") and t0 <= t <= t1]


def test_notify_ready_and_stalled_worker_replaced_with_watchdog_fed(server_factory, tmp_path):
    """One stopped worker costs only its own clients: the stall detector
    bypasses it, kills it at --worker-stall-kill-ms and a replacement
    starts, while the master keeps feeding systemd's watchdog - even though
    the kill bound (4 s) is longer than WatchdogSec (3 s)."""
    n = Notify(str(tmp_path / "notify.sock"))
    w_us = 3000000
    srv = server_factory("--worker-stall-ms", "1000", "--worker-stall-kill-ms", "4000",
                         env={"NOTIFY_SOCKET": n.path, "WATCHDOG_USEC": str(w_us)})
    ready = n.wait(lambda m: "READY=1" in m, 10, "READY=1")
    assert f"MAINPID={srv.pid}" in ready
    # Every worker was up when READY=1 was sent.
    assert all(w["alive"] for w in srv.stats()["workers"])
    n.wait(lambda m: m.startswith("WATCHDOG=1"), 5, "WATCHDOG=1")
    victim = srv.worker_pids()[1]
    t0 = time.time()
    os.kill(victim, signal.SIGSTOP)
    try:
        n.wait(lambda m: "STATUS=worker 1 stalled" in m, 10, "the stall STATUS")
        wait_for(lambda: srv.worker_pids()[1] not in (0, victim) and srv.healthy(), timeout=20,
                 what="worker 1 killed and replaced")
    finally:
        if pid_alive(victim):
            os.kill(victim, signal.SIGKILL)
    n.wait(lambda m: m == f"STATUS=serving with {srv.workers} workers", 10,
           "STATUS back to serving")
    t1 = time.time()
    w = srv.stats()["workers"][1]
    assert w["stall-kills"] == 1 and w["stalls"] == 1 and not w["stalled"], w
    # Fed all along, the gaps well inside WatchdogSec.
    times = feeds(n, t0 - w_us / 1e6, t1)
    gaps = [b - a for a, b in zip(times, times[1:])]
    assert len(times) >= 3 and max(gaps) < w_us / 1e6, (times, gaps)
    assert t1 - t0 > w_us / 1e6  # the stall outlasted WatchdogSec
    srv.stop()
    n.wait(lambda m: "STOPPING=1" in m, 5, "STOPPING=1")


def test_stuck_master_starves_the_watchdog(server_factory, tmp_path):
    """The pings come from the master's own loop: stopped, it sends none."""
    n = Notify(str(tmp_path / "notify.sock"))
    srv = server_factory(env={"NOTIFY_SOCKET": n.path, "WATCHDOG_USEC": "1000000"})
    n.wait(lambda m: m.startswith("WATCHDOG=1"), 10, "WATCHDOG=1")
    os.kill(srv.pid, signal.SIGSTOP)
    try:
        n.read(0.3)  # one sent just before the stop may still be on its way
        quiet = n.read(3.0)
        assert not any(m.startswith("WATCHDOG=1") for m in quiet), quiet
    finally:
        os.kill(srv.pid, signal.SIGCONT)
    n.wait(lambda m: m.startswith("WATCHDOG=1"), 5, "WATCHDOG=1 again")


UNKILLABLE = r"""
#define _GNU_SOURCE
#include <dlfcn.h>
#include <signal.h>
#include <sys/types.h>
/* A worker the kernel cannot kill (uninterruptible sleep): the master's
 * SIGKILL has no effect. */
int kill(pid_t pid, int sig)
{
    static int (*real)(pid_t, int);
    if (real == 0)
        real = (int (*)(pid_t, int))dlsym(RTLD_NEXT, "kill");
    if (sig == SIGKILL)
        return 0;
    return real(pid, sig);
}
"""


@pytest.mark.skipif(shutil.which("cc") is None, reason="no C compiler for the shim")
def test_unkillable_stalled_worker_starves_the_watchdog(server_factory, tmp_path):
    """A stalled worker that is still there --worker-stall-kill-ms after its
    SIGKILL cannot be cleared by the master: the watchdog is no longer fed,
    so systemd restarts the service.  Once it is gone, feeding resumes."""
    so = build_shim(tmp_path, "unkillable", UNKILLABLE)
    n = Notify(str(tmp_path / "notify.sock"))
    env = shim_env(so, NOTIFY_SOCKET=n.path, WATCHDOG_USEC="2000000")
    srv = server_factory("--worker-stall-ms", "500", "--worker-stall-kill-ms", "1500", env=env)
    n.wait(lambda m: m.startswith("WATCHDOG=1"), 10, "WATCHDOG=1")
    victim = srv.worker_pids()[1]
    os.kill(victim, signal.SIGSTOP)
    try:
        n.wait(lambda m: "killed, being replaced" in m, 10, "the kill STATUS")
        n.wait(lambda m: "could not be killed" in m, 10, "the starving STATUS")
        n.read(0.3)
        quiet = n.read(3.0)  # longer than WatchdogSec
        assert not any(m.startswith("WATCHDOG=1") for m in quiet), quiet
        assert any("could not be killed" in ln for ln in srv.log_lines())
    finally:
        os.kill(victim, signal.SIGKILL)  # what systemd's restart would do
    n.wait(lambda m: m.startswith("WATCHDOG=1"), 10, "WATCHDOG=1 once it is gone")
    wait_for(lambda: srv.worker_pids()[1] not in (0, victim), what="worker 1 replaced")


def test_idle_workers_never_stall_whatever_watchdogsec(server_factory, tmp_path):
    """A WatchdogSec shorter than the workers' tick changes nothing: stalls
    are judged by time without progress against --worker-stall-ms, which
    idle workers' ticks always beat."""
    n = Notify(str(tmp_path / "notify.sock"))
    srv = server_factory("--worker-stall-ms", "1000",
                         env={"NOTIFY_SOCKET": n.path, "WATCHDOG_USEC": "200000"})
    n.wait(lambda m: "READY=1" in m, 10, "READY=1")
    got = n.read(3.0)
    assert sum(m.startswith("WATCHDOG=1") for m in got) >= 5, got
    assert not any("stalled" in m for m in n.msgs), n.msgs
    assert all(w["stalls"] == 0 for w in srv.stats()["workers"])


def test_no_watchdog_for_another_pid(server_factory, tmp_path):
    """WATCHDOG_PID names someone else: READY=1 but no pings."""
    n = Notify(str(tmp_path / "notify.sock"))
    server_factory(env={"NOTIFY_SOCKET": n.path, "WATCHDOG_USEC": "400000",
                        "WATCHDOG_PID": "1"})
    n.wait(lambda m: "READY=1" in m, 10, "READY=1")
    assert not any(m.startswith("WATCHDOG=1") for m in n.read(1.5))


def test_upgrade_hands_mainpid_over(tmp_path):
    """Every notification comes from the main process as systemd tracks it
    (NotifyAccess=main): the old master says MAINPID=<new> and nothing more
    (no STATUS, no WATCHDOG=1 while it drains); the new master says
    READY=1 only after that, then feeds the watchdog."""
    n = Notify(str(tmp_path / "notify.sock"))
    pidf = tmp_path / "pid"
    port = free_port()
    env = dict(os.environ, NOTIFY_SOCKET=n.path, WATCHDOG_USEC="400000")
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
        n.wait(lambda m: f"READY=1\nMAINPID={new}" in m, 10, "the new master's READY")
        n.wait(lambda m: m.startswith("WATCHDOG=1"), 5, "the new master's WATCHDOG=1")
        n.read(1.0)
        assert n.main_only(proc.pid) == new
        order = [m for _, m, _ in n.stamped]
        assert order.index(f"MAINPID={new}") < next(
            i for i, m in enumerate(order) if m.startswith(f"READY=1\nMAINPID={new}"))
        handed = order.index(f"MAINPID={new}")
        assert all(pid != proc.pid for _, _, pid in n.stamped[handed + 1:])
    finally:
        if proc.poll() is None:
            proc.kill()
        if new and pid_alive(new):
            os.kill(new, signal.SIGTERM)
            wait_for(lambda: not pid_alive(new), timeout=15, what="new master gone")


def test_failed_upgrade_never_speaks_for_the_service(tmp_path):
    """A new master that is stopped before it was handed over (its workers
    were slow; the old master gave up) says nothing to systemd - no READY=1,
    no STOPPING=1 (which would make systemd stop the healthy service) - and
    the old master keeps feeding the watchdog, with its pid file."""
    so = build_shim(tmp_path, "slow", SLOW_NEW_MASTER)
    n = Notify(str(tmp_path / "notify.sock"))
    pidf = tmp_path / "pid"
    port = free_port()
    env = shim_env(so, NOTIFY_SOCKET=n.path, WATCHDOG_USEC="1000000",
                   SL_TEST_SLOW_NEW_MASTER_S="30")
    proc = subprocess.Popen([BIN, "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
                             "--pid-file", str(pidf), "--log-file", str(tmp_path / "log")],
                            env=env, stderr=subprocess.DEVNULL)
    try:
        n.wait(lambda m: "READY=1" in m, 10, "READY=1")
        os.kill(proc.pid, signal.SIGUSR2)
        new = new_master_of(proc.pid)
        time.sleep(0.5)
        os.kill(new, signal.SIGTERM)  # as the old master's timeout would
        wait_for(lambda: "server-upgrade-failed" in (tmp_path / "log").read_text(),
                 timeout=10, what="the upgrade to fail")
        wait_for(lambda: not pid_alive(new), timeout=10, what="the new master gone")
        n.wait(lambda m: m.startswith("WATCHDOG=1"), 5, "the old master's WATCHDOG=1")
        assert not [m for _, m, pid in n.stamped if pid == new], n.stamped
        assert n.main_only(proc.pid) == proc.pid
        assert int(pidf.read_text()) == proc.pid and proc.poll() is None
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=20)


def test_one_shot_notifications_wait_for_room(server_factory, tmp_path):
    """systemd's queue is full (it is not reading): STOPPING=1 is not lost,
    the master sends it once there is room again."""
    n = Notify(str(tmp_path / "notify.sock"))
    srv = server_factory(env={"NOTIFY_SOCKET": n.path, "WATCHDOG_USEC": "40000"})
    n.wait(lambda m: m.startswith("WATCHDOG=1"), 10, "WATCHDOG=1")
    n.pause()
    time.sleep(1.0)  # 50 pings a second: the queue (net.unix.max_dgram_qlen) is full
    srv.proc.send_signal(signal.SIGTERM)
    time.sleep(0.4)
    n.resume()
    n.wait(lambda m: m == "STOPPING=1", 5, "STOPPING=1")
    assert srv.proc.wait(timeout=20) == 0
    srv.stopped = True


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



def test_master_messages_carry_priorities_on_the_journal(tmp_path):
    """The processes' own lines on standard error (not telemetry) carry a
    priority too: an error is <3>, a warning <4>."""
    errpath = tmp_path / "stderr"
    with open(errpath, "wb") as err:
        st = os.fstat(err.fileno())
        env = dict(os.environ, JOURNAL_STREAM=f"{st.st_dev}:{st.st_ino}")
        r = subprocess.run([BIN, "--port", str(free_port()), "--workers", "1", "--pid-file",
                            str(tmp_path / "no" / "such" / "pid")], stderr=err, env=env,
                           timeout=20)
    assert r.returncode == 1
    lines = errpath.read_text().splitlines()
    assert any(ln.startswith("<3>sente-lite: cannot write --pid-file") for ln in lines), lines
    junk = tmp_path / "junk"
    junk.write_text("x")
    lsock = socket.socket()
    lsock.bind(("127.0.0.1", 0))
    lsock.listen(8)
    errpath2 = tmp_path / "stderr2"
    with open(errpath2, "wb") as err:
        st = os.fstat(err.fileno())
        env = dict(os.environ, JOURNAL_STREAM=f"{st.st_dev}:{st.st_ino}")
        script = (f'exec 3<&{lsock.fileno()}; exec {lsock.fileno()}<&-; exec 4<"{junk}"; '
                  'LISTEN_PID=$$ LISTEN_FDS=2 exec "$0" "$@"')
        proc = subprocess.Popen(["/bin/bash", "-c", script, BIN, "--port", "1", "--workers", "1"],
                                pass_fds=(lsock.fileno(),), stderr=err, env=env)
        try:
            wait_for(lambda: "server-started" in errpath2.read_text(), what="server-started")
        finally:
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=20) == 0
            lsock.close()
    assert "<4>sente-lite: inherited descriptor 4 is not a listening socket" in \
        errpath2.read_text()


def unit_text():
    return open(os.path.join(ROOT, "scripts", "sente-lite.service")).read()


def test_unit_file():
    unit = unit_text()
    for line in ["Type=notify", "WatchdogSec=", "EnvironmentFile=-/etc/default/sente-lite",
                 "ExecStart=/usr/local/bin/sente-lite $SENTE_OPTS", "NotifyAccess=main",
                 "ExecReload=/bin/kill -HUP $MAINPID", "LimitNOFILE=", "DynamicUser=yes"]:
        assert line in unit, line
    # No listening address hard-coded: the config file, environment or
    # SENTE_OPTS decide (and the socket unit, when enabled).
    assert "--port" not in unit and "--host" not in unit
    sock = open(os.path.join(ROOT, "scripts", "sente-lite.socket")).read()
    assert "ListenStream=" in sock
    assert "NoDelay=yes" in sock  # inherited even by connections queued before start
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
