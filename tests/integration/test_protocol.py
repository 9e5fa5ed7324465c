"""The JSON protocol (PROTOCOL sections 2-3) through an independent client
library (python3-websockets)."""
import asyncio
import json
import re
import time

import websockets


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 30))


async def open_client(url):
    ws = await websockets.connect(url)
    welcome = json.loads(await ws.recv())
    return ws, welcome


def test_welcome(server):
    async def go():
        before = int(time.time() * 1000)
        ws, w = await open_client(server.url)
        assert w["type"] == "welcome"
        assert re.fullmatch(r"conn-\d{13}-\d+", w["conn-id"])
        assert abs(w["server-time"] - before) < 5000
        assert w["worker"] in (0, 1)
        await ws.close()
    run(go())


def test_conn_ids_unique_across_workers(server):
    async def go():
        clients = [await open_client(server.url) for _ in range(10)]
        ids = [w["conn-id"] for _, w in clients]
        assert len(set(ids)) == 10
        assert {w["worker"] for _, w in clients} == {0, 1}
        for ws, _ in clients:
            await ws.close()
    run(go())


def test_ping_pong(server):
    async def go():
        ws, _ = await open_client(server.url)
        await ws.send(json.dumps({"type": "ping", "timestamp": 1234}))
        r = json.loads(await ws.recv())
        assert r["type"] == "pong"
        assert r["original-timestamp"] == 1234
        assert abs(r["timestamp"] - time.time() * 1000) < 5000
        await ws.send(json.dumps({"type": "ping"}))
        r = json.loads(await ws.recv())
        assert r["type"] == "pong" and r["original-timestamp"] is None
        await ws.close()
    run(go())


def test_unknown_type_is_echoed(server):
    async def go():
        ws, w = await open_client(server.url)
        msg = {"type": "hello", "data": {"n": [1, 2.5, "x", None, True]}, "u": "h\u00e9\u2603"}
        await ws.send(json.dumps(msg))
        r = json.loads(await ws.recv())
        assert r["type"] == "echo"
        assert r["original"] == msg
        assert r["conn-id"] == w["conn-id"]
        assert isinstance(r["timestamp"], int)
        await ws.close()
    run(go())


def test_bad_input_gets_errors_and_connection_stays(server):
    async def go():
        ws, _ = await open_client(server.url)
        cases = [
            ("not json", "invalid-json"),
            ("{\"type\": ", "invalid-json"),
            ("[1,2]", "invalid-message"),
            ("42", "invalid-message"),
            (json.dumps({"no": "type"}), "invalid-message"),
            (json.dumps({"type": 7}), "invalid-message"),
            (json.dumps({"type": "ping", "timestamp": "soon"}), "invalid-message"),
        ]
        for raw, reason in cases:
            await ws.send(raw)
            r = json.loads(await ws.recv())
            assert r["type"] == "error", raw
            assert r["reason"] == reason, raw
            assert r["message"]
            assert isinstance(r["timestamp"], int)
        await ws.send(json.dumps({"type": "ping", "timestamp": 1}))
        assert json.loads(await ws.recv())["type"] == "pong"
        await ws.close()
    run(go())
    errors = server.stats()["errors"]
    assert errors["invalid-json"] == 2
    assert errors["invalid-message"] == 5


def test_timestamp_field_named_in_error(server):
    async def go():
        ws, _ = await open_client(server.url)
        await ws.send(json.dumps({"type": "ping", "timestamp": {}}))
        r = json.loads(await ws.recv())
        assert "timestamp" in r["message"]
        await ws.close()
    run(go())


def test_replies_in_request_order(server):
    async def go():
        ws, _ = await open_client(server.url)
        for i in range(200):
            await ws.send(json.dumps({"type": "ping", "timestamp": i}))
        got = [json.loads(await ws.recv())["original-timestamp"] for _ in range(200)]
        assert got == list(range(200))
        await ws.close()
    run(go())


def test_least_loaded_placement(server):
    async def go():
        clients = [await open_client(server.url) for _ in range(4)]
        workers = sorted(w["worker"] for _, w in clients)
        assert workers == [0, 0, 1, 1]
        st = server.stats()
        assert [w["connections"] for w in st["workers"]] == [2, 2]
        for ws, _ in clients:
            await ws.close()
    run(go())


def test_large_message_roundtrip(server):
    async def go():
        ws, _ = await open_client(server.url)
        payload = "x" * 300000
        await ws.send(json.dumps({"type": "big", "p": payload}))
        r = json.loads(await ws.recv())
        assert r["original"]["p"] == payload
        await ws.close()
    run(go())
