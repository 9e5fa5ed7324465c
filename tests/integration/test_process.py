"""The process model: master, workers, logger, flags, signals, respawn."""
import asyncio
import json
import os
import signal
import socket
import subprocess
import time

import pytest
import websockets

from conftest import BIN, SLOW, children_of, free_port, pid_alive, title_of, wait_for
from wsraw import OP_CLOSE, OP_TEXT, RawWS, close_frame, frame, read_response


def test_process_titles(server):
    assert title_of(server.pid) == "sente-lite: master"
    kids = children_of(server.pid)
    titles = sorted(title_of(p) for p in kids)
    assert titles == ["sente-lite: logger", "sente-lite: worker 0", "sente-lite: worker 1"]


def test_pid_file(server_factory, tmp_path):
    path = tmp_path / "sl.pid"
    srv = server_factory("--pid-file", str(path))
    assert int(path.read_text()) == srv.pid
    assert srv.stop() == 0
    assert not path.exists()


def test_version_and_help():
    out = subprocess.run([BIN, "--version"], capture_output=True, text=True, timeout=10)
    assert out.returncode == 0 and out.stdout.strip() == "sente-lite 0.1.0"
    out = subprocess.run([BIN, "--help"], capture_output=True, text=True, timeout=10)
    assert out.returncode == 0
    for flag in ("--port", "--workers", "--max-connections", "--heartbeat-interval-ms",
                 "--log-format", "--allowed-origin", "--shm-size", "PORT", "APP_NAME"):
        assert flag in out.stdout


@pytest.mark.parametrize("args,named", [
    (["--port", "0"], "--port"),
    (["--port", "abc"], "--port"),
    (["--workers", "0"], "--workers"),
    (["--log-level", "loud"], "--log-level"),
    (["--log-format", "xml"], "--log-format"),
    (["--max-message-size", "lots"], "--max-message-size"),
    (["--unknown-flag"], "--unknown-flag"),
])
def test_bad_flags_exit_2(args, named):
    out = subprocess.run([BIN] + args, capture_output=True, text=True, timeout=10)
    assert out.returncode == 2
    assert named in out.stderr


def test_bad_env_exit_2():
    env = dict(os.environ, PORT="abc")
    out = subprocess.run([BIN], capture_output=True, text=True, timeout=10, env=env)
    assert out.returncode == 2
    assert "PORT" in out.stderr


def test_flag_beats_env(server_factory):
    srv = server_factory(env={"PORT": "1", "APP_NAME": "fromenv"})
    assert srv.stats()["server-config"]["port"] == srv.port
    assert srv.stats()["server-config"]["app-name"] == "fromenv"


def test_port_in_use_exit_1(server):
    out = subprocess.run([BIN, "--host", "127.0.0.1", "--port", str(server.port)],
                         capture_output=True, text=True, timeout=10)
    assert out.returncode == 1
    assert "cannot listen" in out.stderr


def test_worker_killed_is_replaced_others_keep_serving(server):
    async def go():
        clients = []
        for _ in range(4):
            ws = await websockets.connect(server.url)
            clients.append((ws, json.loads(await ws.recv())["worker"]))
        victim = server.stats()["workers"][0]["pid"]
        os.kill(victim, signal.SIGKILL)
        # Clients on worker 1 keep working while worker 0 is gone.
        for ws, w in clients:
            if w == 1:
                await ws.send(json.dumps({"type": "ping", "timestamp": 1}))
                assert json.loads(await ws.recv())["type"] == "pong"
        # Clients on worker 0 lost their connection.
        for ws, w in clients:
            if w == 0:
                with pytest.raises(websockets.ConnectionClosed):
                    await asyncio.wait_for(ws.recv(), 5 * SLOW)

        def replaced():
            w0 = server.stats()["workers"][0]
            return w0["pid"] not in (0, victim) and w0["restarts"] == 1
        await asyncio.get_running_loop().run_in_executor(None, lambda: wait_for(replaced))
        await asyncio.get_running_loop().run_in_executor(None, lambda: wait_for(server.healthy))
        assert not pid_alive(victim)
        # New connections work, and land on the fresh worker too.
        fresh = [await websockets.connect(server.url) for _ in range(2)]
        placed = [json.loads(await ws.recv())["worker"] for ws in fresh]
        assert 0 in placed
        for ws in fresh + [c for c, w in clients if w == 1]:
            await ws.close()
    asyncio.run(asyncio.wait_for(go(), 60))
    assert any("worker-exited" in l and "signal 9" in l for l in server.log_lines())


def test_sockets_queued_for_a_dead_worker_are_not_lost(server_factory):
    """Sockets handed to a worker that dies before taking them are taken
    back by the master and served by the replacement (one worker: they wait
    parked until it is up), instead of being reset."""
    server = server_factory(workers=1)
    victim = server.worker_pids()[0]
    os.kill(victim, signal.SIGSTOP)   # it takes nothing from its queue now
    socks = []
    for _ in range(5):
        s = socket.create_connection(("127.0.0.1", server.port), timeout=10 * SLOW)
        s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        socks.append(s)
    time.sleep(0.2)                   # all five accepted and queued
    os.kill(victim, signal.SIGKILL)
    for s in socks:
        data = read_response(s)
        s.close()
        assert data.startswith(b"HTTP/1.1 200"), data[:80]
    assert any("rescued-sockets\":5" in l or "rescued-sockets=5" in l
               for l in server.log_lines()), server.log_lines()[-5:]


def test_graceful_shutdown_sends_1001(server_factory):
    srv = server_factory()
    clients = [RawWS(srv.port) for _ in range(4)]
    for c in clients:
        c.read_data()
    pids = [srv.pid] + children_of(srv.pid)
    assert len(pids) == 4
    srv.proc.send_signal(signal.SIGTERM)
    for c in clients:
        code, _ = c.read_until_close()
        assert code == 1001
        c.send(close_frame(1001))
        c.wait_eof()
        c.close()
    assert srv.proc.wait(timeout=10 * SLOW) == 0
    srv.stopped = True
    srv.err.close()
    for p in pids:
        assert not pid_alive(p), f"process {p} survived"
    lines = srv.log_lines()
    assert any("server-stopping" in l for l in lines)
    assert any("server-stopped" in l for l in lines)


def test_shutdown_bounded_with_unresponsive_client(server_factory):
    srv = server_factory()
    ws = RawWS(srv.port)
    ws.read_data()
    t0 = time.time()
    srv.proc.send_signal(signal.SIGTERM)
    # The client never answers the close frame; the server still exits.
    assert srv.proc.wait(timeout=15 * SLOW) == 0
    assert time.time() - t0 < 10 * SLOW
    srv.stopped = True
    srv.err.close()
    ws.close()


def test_sigint_stops_too(server_factory):
    srv = server_factory()
    srv.proc.send_signal(signal.SIGINT)
    assert srv.proc.wait(timeout=10 * SLOW) == 0
    srv.stopped = True
    srv.err.close()


def test_health_and_stats_match_reality(server):
    async def go():
        clients = []
        for _ in range(5):
            ws = await websockets.connect(server.url)
            await ws.recv()
            clients.append(ws)
        for i, ws in enumerate(clients):
            for k in range(i + 1):
                await ws.send(json.dumps({"type": "ping", "timestamp": k}))
                await ws.recv()
        st = server.stats()
        assert st["active-connections"] == 5
        assert sum(w["connections"] for w in st["workers"]) == 5
        assert st["total-messages"] == 15
        assert sum(w["messages-in"] for w in st["workers"]) == 15
        # welcome + one reply per message
        assert sum(w["messages-out"] for w in st["workers"]) == 20
        status, health = server.get_json("/health")
        assert status == 200 and health["connections"] == 5
        for ws in clients:
            await ws.close()
    asyncio.run(asyncio.wait_for(go(), 30))
    wait_for(lambda: server.stats()["active-connections"] == 0, what="connections to drop")


def read_to_eof(s):
    data = b""
    while True:
        chunk = s.recv(4096)
        if not chunk:
            return data
        data += chunk


def test_request_under_way_at_stop_is_answered_connection_close(server_factory):
    """A draining worker answers a request it was reading, and says the
    connection ends there (a client must not reuse it)."""
    srv = server_factory(workers=1)
    s = socket.create_connection(("127.0.0.1", srv.port), timeout=10)
    s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n")
    time.sleep(0.3)
    srv.proc.send_signal(signal.SIGTERM)
    time.sleep(0.5)
    s.sendall(b"\r\n")
    resp = read_to_eof(s)
    s.close()
    head = resp.split(b"\r\n\r\n", 1)[0].lower()
    assert head.startswith(b"http/1.1 200") and b"connection: close" in head, resp[:300]
    assert srv.proc.wait(timeout=20) == 0
    srv.stopped = True


@pytest.mark.alone  # a bound on time (conftest.py: run by itself)
def test_preconnect_is_closed_at_once_at_stop(server_factory):
    """A connection open for a while with nothing sent (a browser's
    preconnect) does not hold the stop up to the drain deadline (3 s)."""
    srv = server_factory(workers=1)
    s = socket.create_connection(("127.0.0.1", srv.port), timeout=10)
    time.sleep(1.5)
    t0 = time.time()
    srv.proc.send_signal(signal.SIGTERM)
    assert s.recv(100) == b""
    assert time.time() - t0 < 2.5
    s.close()
    assert srv.proc.wait(timeout=20) == 0
    srv.stopped = True


def test_worker_told_to_stop_gets_no_new_connections(server_factory):
    """SIGTERM to one worker only: while it drains, the master hands it
    nothing new (it would otherwise prefer it as its load falls), so new
    clients land on the other worker and keep their connection."""
    srv = server_factory(workers=2)
    victim = srv.worker_pids()[1]
    held = []  # requests under way on both workers keep the victim draining
    for _ in range(6):
        h = socket.create_connection(("127.0.0.1", srv.port), timeout=10)
        h.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n")
        held.append(h)
    wait_for(lambda: all(w["http-connections"] >= 3 for w in srv.stats()["workers"]),
             what="requests under way on both workers")
    os.kill(victim, signal.SIGTERM)
    time.sleep(0.2)
    clients = []
    try:
        for _ in range(8):
            ws = RawWS(srv.port, timeout=5)
            assert json.loads(ws.read_data())["type"] == "welcome"
            clients.append(ws)
        for ws in clients:
            ws.sock.settimeout(0.5)
            try:
                got = ws.read_frame()
                raise AssertionError(f"a new client got {got!r} (a 1001 from the draining worker)")
            except socket.timeout:
                pass
        stats = srv.stats()["workers"]
        assert stats[0]["connections"] == 8, stats
    finally:
        for c in clients:
            c.close()
        for h in held:
            h.close()
    wait_for(lambda: srv.worker_pids()[1] not in (0, victim), what="worker 1 replaced")
