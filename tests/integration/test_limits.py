"""Limits and refusals: origins, max connections, heartbeat, timeouts, slow
consumers, and the raw echo endpoint."""
import asyncio
import json
import socket
import time

import pytest
import websockets

from conftest import SLOW, wait_for
from wsraw import OP_BINARY, OP_CLOSE, OP_PING, OP_TEXT, RawWS, frame, http_request, status_of


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 30))


def test_allowed_origin(server_factory):
    srv = server_factory("--allowed-origin", "http://good.test", "--allowed-origin",
                         "http://also.test")
    bad = RawWS(srv.port, headers={"Origin": "http://evil.test"})
    assert bad.status == 403
    bad.close()
    for origin in ("http://good.test", "http://also.test", None):
        ws = RawWS(srv.port, headers={"Origin": origin} if origin else {})
        assert ws.status == 101
        assert json.loads(ws.read_data())["type"] == "welcome"
        ws.close()
    assert srv.stats()["errors"]["origin-refused"] == 1


def test_max_connections_across_workers(server_factory):
    srv = server_factory("--max-connections", "3")
    conns = [RawWS(srv.port) for _ in range(3)]
    assert all(c.status == 101 for c in conns)
    placed = {json.loads(c.read_data())["worker"] for c in conns}
    assert placed == {0, 1}  # the limit is global, not per worker
    refused = RawWS(srv.port)
    assert refused.status == 503
    refused.close()
    conns[0].close()

    def admitted():
        ws = RawWS(srv.port)
        if ws.status == 101:
            return ws
        ws.close()
        return None
    ws = wait_for(admitted, what="a slot after a close")
    ws.close()
    for c in conns[1:]:
        c.close()
    assert srv.stats()["errors"]["max-connections"] >= 1


def test_heartbeat_pings_and_closes_silent_peer(server_factory):
    srv = server_factory("--heartbeat-interval-ms", "300")
    ws = RawWS(srv.port, timeout=10)
    ws.read_data()  # welcome
    start = time.time()
    ops = []
    while True:
        _, op, payload = ws.read_frame()
        ops.append(op)
        if op == OP_CLOSE:
            break
    elapsed = time.time() - start
    assert OP_PING in ops
    assert int.from_bytes(payload[:2], "big") == 1001
    assert 0.4 < elapsed < 3 * SLOW
    ws.close()
    assert srv.stats()["errors"]["heartbeat-timeout"] == 1


def test_heartbeat_keeps_answering_client(server_factory):
    srv = server_factory("--heartbeat-interval-ms", "200")

    async def go():
        ws = await websockets.connect(srv.url)  # answers pings by itself
        await ws.recv()
        await asyncio.sleep(1.5)
        await ws.send(json.dumps({"type": "ping", "timestamp": 3}))
        assert json.loads(await ws.recv())["type"] == "pong"
        await ws.close()
    run(go())


def test_handshake_timeout_408(server_factory):
    srv = server_factory("--message-timeout-ms", "500")
    s = socket.create_connection(("127.0.0.1", srv.port), timeout=10)
    s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n")
    t0 = time.time()
    data = b""
    while True:
        chunk = s.recv(4096)
        if not chunk:
            break
        data += chunk
    assert data.startswith(b"HTTP/1.1 408 ")
    assert 0.4 < time.time() - t0 < 3 * SLOW
    s.close()


def test_message_timeout_1008(server_factory):
    srv = server_factory("--message-timeout-ms", "500")
    ws = RawWS(srv.port, timeout=10)
    ws.read_data()
    ws.send(frame(OP_TEXT, '{"type":', fin=False))
    code, _ = ws.read_until_close()
    assert code == 1008
    ws.close()
    assert srv.stats()["errors"]["message-timeout"] == 1


def test_slow_consumer_disconnected(server_factory):
    """A subscriber that does not read what others publish is closed 1008
    (its own replies only back-pressure it: test_hostile.py)."""
    srv = server_factory("--max-outbound-bytes", "65536", workers=1)
    other = RawWS(srv.port)
    other.read_data()
    slow = RawWS(srv.port, rcvbuf=4096, timeout=10)
    slow.read_data()
    slow.send(frame(OP_TEXT, json.dumps({"type": "subscribe", "channel-id": "news"})))
    assert json.loads(slow.read_data())["success"] is True
    big = frame(OP_TEXT, json.dumps({"type": "publish", "channel-id": "news",
                                     "data": "y" * 50000}))
    for _ in range(400):
        other.send(big)
        json.loads(other.read_data())
        if srv.stats()["slow-consumer-disconnects"]:
            break
    wait_for(lambda: srv.stats()["slow-consumer-disconnects"] >= 1, what="slow consumer")
    # The well-behaved client on the same worker is unaffected.
    other.send(frame(OP_TEXT, json.dumps({"type": "ping", "timestamp": 5})))
    assert json.loads(other.read_data())["original-timestamp"] == 5
    slow.close()
    other.close()
    # The logger writes the event a moment after /stats counts it.
    wait_for(lambda: any("slow-consumer-disconnected" in line for line in srv.log_lines()),
             what="the slow-consumer-disconnected event in the log")


def test_echo_endpoint(server_factory):
    srv = server_factory("--echo")
    ws = RawWS(srv.port, path="/echo")
    assert ws.status == 101
    ws.send(frame(OP_TEXT, "hello \u2603"))
    _, op, payload = ws.read_frame()
    assert (op, payload) == (OP_TEXT, "hello \u2603".encode())
    blob = bytes(range(256)) * 300
    ws.send(frame(OP_BINARY, blob))
    _, op, payload = ws.read_frame()
    assert (op, payload) == (OP_BINARY, blob)
    ws.close()
    # Echo connections are not protocol connections.
    assert sum(w["connections"] for w in srv.stats()["workers"]) == 0


def test_echo_off_by_default(server):
    resp = http_request(server.port, b"GET /echo HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
                        b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                        b"Sec-WebSocket-Version: 13\r\n\r\n")
    assert status_of(resp) == 404
