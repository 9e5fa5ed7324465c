"""Zero-downtime restarts against the real binary: the binary upgrade
(SIGUSR2: the master executes the binary again on the same listening socket;
once the new master's workers are up the old one stops accepting and drains)
and socket activation (LISTEN_FDS / LISTEN_PID, as systemd passes a .socket
unit's listener).

During the upgrade a connector keeps opening WebSocket connections in a
loop: none may be refused or reset, each must get its 101 and welcome.
Every client connected before the upgrade is closed with 1001 and can
reconnect at once (to the new master)."""
import json
import os
import signal
import socket
import struct
import subprocess
import threading
import time

from conftest import BIN, SLOW, free_port, pid_alive, wait_for
from wsraw import OP_CLOSE, OP_TEXT, RawWS, close_frame, http_request, status_of


def read_pid(path):
    try:
        with open(path) as f:
            return int(f.read().strip() or 0)
    except (FileNotFoundError, ValueError):
        return 0


def healthy(port):
    try:
        return status_of(http_request(port, b"GET /health HTTP/1.1\r\nHost: x\r\n"
                                            b"Connection: close\r\n\r\n", timeout=2)) == 200
    except OSError:
        return False


def open_client(port):
    """A WebSocket connection with its welcome read; raises on any failure."""
    ws = RawWS(port, timeout=5 * SLOW)
    if ws.status != 101:
        raise AssertionError(f"upgrade answered {ws.status}: {ws.head!r}")
    welcome = json.loads(ws.read_data())
    assert welcome["type"] == "welcome", welcome
    return ws, welcome


class Connector(threading.Thread):
    """Opens a connection, reads the welcome, closes it cleanly - in a loop,
    bounded in count and time.  Records every failure."""

    def __init__(self, port, seconds):
        super().__init__(daemon=True)
        self.port, self.deadline = port, time.time() + seconds
        self.ok, self.going_away, self.failures = 0, 0, []
        self.stop = threading.Event()

    def run(self):
        for _ in range(20000):
            if self.stop.is_set() or time.time() > self.deadline:
                return
            try:
                ws, _ = open_client(self.port)
            except EOFError as e:
                # Upgraded, then told to go elsewhere before the welcome was
                # read: only a 1001 close is acceptable.
                if "\\x03\\xe9" in str(e):
                    self.going_away += 1
                    continue
                self.failures.append(repr(e))
                continue
            except (OSError, AssertionError) as e:
                self.failures.append(repr(e))
                continue
            try:
                ws.send(close_frame(1000))
                _, op, payload = ws.read_frame()
                if op == OP_CLOSE and payload[:2] == struct.pack(">H", 1001):
                    self.going_away += 1
                self.ok += 1
            except (OSError, EOFError) as e:
                self.failures.append("after welcome: " + repr(e))
            finally:
                ws.close()


def start(tmp_path, *extra, env=None, pass_fds=()):
    port = free_port()
    pidf = str(tmp_path / "master.pid")
    err = open(tmp_path / "stderr.log", "ab")
    cmd = [BIN, "--host", "127.0.0.1", "--port", str(port), "--workers", "2", "--pid-file",
           pidf, "--log-file", str(tmp_path / "sente.log")] + list(extra)
    proc = subprocess.Popen(cmd, stdout=err, stderr=err, env=env or dict(os.environ),
                            pass_fds=pass_fds)
    return proc, port, pidf


def stop_pid(pid):
    if pid and pid_alive(pid):
        os.kill(pid, signal.SIGTERM)
        wait_for(lambda: not pid_alive(pid), timeout=15, what=f"pid {pid} to stop")


def test_binary_upgrade_without_refusals(tmp_path):
    proc, port, pidf = start(tmp_path)
    new_pid = 0
    try:
        wait_for(lambda: healthy(port), timeout=10, what="server up")
        old_pid = proc.pid
        assert read_pid(pidf) == old_pid
        clients = [open_client(port) for _ in range(6)]
        conn = Connector(port, seconds=30 * SLOW)
        conn.start()
        time.sleep(0.5)
        os.kill(old_pid, signal.SIGUSR2)
        # The old master exits by itself once it has drained its workers.
        assert proc.wait(timeout=30 * SLOW) == 0
        new_pid = read_pid(pidf)
        assert new_pid and new_pid != old_pid and pid_alive(new_pid)
        time.sleep(0.5)  # a few more connections to the new master alone
        conn.stop.set()
        conn.join(timeout=30 * SLOW)
        assert not conn.failures, conn.failures[:5]
        assert conn.ok > 5, conn.ok
        # Everyone connected before: closed with 1001, and back at once.
        for ws, welcome in clients:
            code, _ = ws.read_until_close()
            assert code == 1001, code
            ws.close()
            ws2, w2 = open_client(port)
            assert w2["conn-id"] != welcome["conn-id"]
            ws2.send(RawWSText('{"type":"ping","timestamp":1}'))
            assert json.loads(ws2.read_data())["type"] == "pong"
            ws2.close()
        with open(tmp_path / "sente.log") as f:
            log = f.read()
        assert "server-upgrading" in log and '"signal":"upgrade"' in log
        # The new master is a full server: it upgrades again.
        os.kill(new_pid, signal.SIGUSR2)
        wait_for(lambda: read_pid(pidf) not in (0, new_pid), timeout=20, what="second upgrade")
        wait_for(lambda: not pid_alive(new_pid), timeout=20, what="second old master gone")
        new_pid = read_pid(pidf)
        assert healthy(port)
    finally:
        if proc.poll() is None:
            proc.kill()
        stop_pid(new_pid or read_pid(pidf))


def RawWSText(s):
    from wsraw import frame
    return frame(OP_TEXT, s)


def test_failed_upgrade_keeps_the_old_master(tmp_path):
    """The new master re-reads its configuration; when the file has become
    invalid it exits (status 2) before it is ready, and the old master,
    told so by the closed pipe, goes on serving as before."""
    conf = tmp_path / "sente.conf"
    conf.write_text("message-retention = 2\n")
    proc, port, pidf = start(tmp_path, "--config", str(conf))
    try:
        wait_for(lambda: healthy(port), timeout=10, what="server up")
        ws, _ = open_client(port)
        conf.write_text("message-retention = lots\n")
        os.kill(proc.pid, signal.SIGUSR2)
        wait_for(lambda: "server-upgrade-failed" in open(tmp_path / "sente.log").read(),
                 timeout=10, what="the upgrade to fail")
        assert proc.poll() is None and read_pid(pidf) == proc.pid
        assert healthy(port)
        ws.send(RawWSText('{"type":"ping"}'))
        assert json.loads(ws.read_data())["type"] == "pong"
        ws.close()
        # Fixed, the next SIGUSR2 goes through.
        conf.write_text("message-retention = 3\n")
        os.kill(proc.pid, signal.SIGUSR2)
        assert proc.wait(timeout=30 * SLOW) == 0
        assert read_pid(pidf) != proc.pid and healthy(port)
    finally:
        new = read_pid(pidf)
        if new and new != proc.pid:
            stop_pid(new)
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=20)


def activated(tmp_path, fd):
    """Start the server with the socket at fd as systemd would pass it:
    descriptor 3, LISTEN_FDS=1, LISTEN_PID = the server's own pid (a shell
    sets it to its pid, which exec keeps)."""
    script = f'exec 3<&{fd}; exec {fd}<&-; LISTEN_PID=$$ LISTEN_FDS=1 exec "$0" "$@"'
    return subprocess.Popen(
        ["/bin/bash", "-c", script, BIN, "--host", "127.0.0.1", "--port", "1", "--workers", "1",
         "--log-file", str(tmp_path / "sente.log")], pass_fds=(fd,),
        stderr=open(tmp_path / "stderr.log", "ab"))


def test_socket_activation(tmp_path):
    """The server accepts on the inherited socket instead of binding (--port
    1 could not be bound), and a stop leaves the socket listening: a
    connection made while no server runs waits and is answered by the next."""
    lsock = socket.socket()
    lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    lsock.bind(("127.0.0.1", 0))
    lsock.listen(128)
    port = lsock.getsockname()[1]
    fd = lsock.fileno()
    proc = activated(tmp_path, fd)
    try:
        wait_for(lambda: healthy(port), timeout=10, what="activated server up")
        ws, _ = open_client(port)
        ws.close()
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20 * SLOW) == 0
    waiting = socket.create_connection(("127.0.0.1", port), timeout=5)
    waiting.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    proc = activated(tmp_path, fd)
    try:
        waiting.settimeout(10 * SLOW)
        data = waiting.recv(4096)
        assert data.startswith(b"HTTP/1.1 200"), data
        waiting.close()
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20 * SLOW) == 0
    lsock.close()
    with open(tmp_path / "sente.log") as f:
        assert '"inherited":true' in f.read()
