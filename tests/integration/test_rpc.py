"""RPC between clients across workers (PROTOCOL section 3, RPC): requester
and responder always on different workers, checked via the welcome."""
import asyncio
import json
import statistics
import time

import pytest
import websockets

from conftest import SLOW, wait_for
from test_channels import connect, on_workers, run


async def serve(client, channel, handler):
    """Answer every rpc-request on `channel` with handler(data) -> (data, error)."""
    await client.subscribe(channel)

    async def loop():
        while True:
            m = json.loads(await client.ws.recv())
            if m["type"] == "rpc-request":
                data, err = handler(m)
                await client.send(type="rpc-response", data=data, error=err,
                                  **{"request-id": m["request-id"]})
            elif m["type"] == "rpc-response-result":
                client.pending.append(m)
    return asyncio.get_running_loop().create_task(loop())


def pending(server):
    return server.stats()["channel-stats"]["pending-rpc-requests"]


def test_round_trip_and_error(server):
    async def go():
        req, svc = await on_workers(server.url, [0, 1])
        task = await serve(svc, "api", lambda m: ({"echo": m["data"], "from": m["sender-conn-id"]},
                                                  m["data"].get("fail", False)))
        r = await req.request("rpc-request", "rpc-request-result",
                              **{"channel-id": "api", "data": {"q": 1}, "timeout-ms": 5000})
        assert r["delivery"] == {"success": True, "delivered-to": 1, "subscribers": [svc.id]}
        rid = r["request-id"]
        assert rid.startswith("req-")
        resp = await req.reply("rpc-response")
        assert resp == {"type": "rpc-response", "request-id": rid,
                        "data": {"echo": {"q": 1}, "from": req.id}, "error": False,
                        "responder-conn-id": svc.id}
        r = await req.request("rpc-request", "rpc-request-result",
                              **{"channel-id": "api", "data": {"fail": True}})
        resp = await req.reply("rpc-response")
        assert resp["error"] is True and resp["request-id"] == r["request-id"]
        task.cancel()
        for c in (req, svc):
            await c.close()
    run(go())
    wait_for(lambda: pending(server) == 0, what="nothing pending")


def test_request_shape_seen_by_responder(server):
    async def go():
        req, svc = await on_workers(server.url, [1, 0])
        await svc.subscribe("shape")
        r = await req.request("rpc-request", "rpc-request-result",
                              **{"channel-id": "shape", "data": {"a": 1}, "timeout-ms": 700})
        m = json.loads(await svc.ws.recv())
        assert m["type"] == "rpc-request"
        assert m["request-id"] == r["request-id"] and m["channel-id"] == "shape"
        assert m["data"] == {"a": 1} and m["sender-conn-id"] == req.id
        assert m["timeout-ms"] == 700 and isinstance(m["created-at"], int)
        await svc.send(type="rpc-response", data="ok", **{"request-id": m["request-id"]})
        res = await svc.reply("rpc-response-result")
        assert res == {"type": "rpc-response-result", "request-id": m["request-id"],
                       "success": True}
        assert (await req.reply("rpc-response"))["data"] == "ok"
        for c in (req, svc):
            await c.close()
    run(go())


def test_no_subscribers_and_missing_channel(server):
    async def go():
        req, other = await on_workers(server.url, [0, 1])
        await req.subscribe("lonely")  # the requester alone does not count
        r = await req.request("rpc-request", "rpc-request-result",
                              **{"channel-id": "lonely", "data": {}})
        assert r["delivery"]["success"] is False
        assert r["delivery"]["reason"] == "no-subscribers"
        r = await req.request("rpc-request", "rpc-request-result",
                              **{"channel-id": "nowhere", "data": {}})
        assert r["delivery"]["reason"] == "channel-not-found"
        for c in (req, other):
            await c.close()
    run(go())
    assert pending(server) == 0
    assert server.stats()["channel-stats"]["total-channels"] == 1  # RPC never creates


def test_first_response_wins(server):
    """Two responders on different workers race; exactly one wins, every
    time, and the requester gets exactly one response."""
    ROUNDS = 200

    async def go():
        req, r0, r1 = await on_workers(server.url, [0, 0, 1])
        for r in (r0, r1):
            await r.subscribe("race")
        winners = []
        for i in range(ROUNDS):
            res = await req.request("rpc-request", "rpc-request-result",
                                    **{"channel-id": "race", "data": {"i": i}})
            assert res["delivery"]["delivered-to"] == 2
            rid = res["request-id"]
            for r in (r0, r1):
                m = json.loads(await r.ws.recv())
                assert m["type"] == "rpc-request" and m["request-id"] == rid
            # Both answer at once.
            await asyncio.gather(*(r.send(type="rpc-response", data=r.id, **{"request-id": rid})
                                   for r in (r0, r1)))
            results = [await r.reply("rpc-response-result") for r in (r0, r1)]
            ok = [x["success"] for x in results]
            assert sorted(ok) == [False, True], results
            loser = results[ok.index(False)]
            assert loser["reason"] == "request-not-found"
            resp = await req.reply("rpc-response")
            assert resp["request-id"] == rid
            winners.append(resp["responder-conn-id"])
            assert resp["data"] == resp["responder-conn-id"]
            assert (r0, r1)[ok.index(True)].id == resp["responder-conn-id"]
        # No second response ever arrives.
        await req.send(type="ping", timestamp=1)
        assert (await req.reply("pong"))["original-timestamp"] == 1
        for c in (req, r0, r1):
            await c.close()
        return winners
    winners = run(go(), timeout=120)
    assert len(winners) == ROUNDS


@pytest.mark.alone  # a bound on time (conftest.py: run by itself)
def test_timeout_once_and_late_response_refused(server):
    async def go():
        req, svc = await on_workers(server.url, [0, 1])
        await svc.subscribe("slow")
        t0 = time.time()
        r = await req.request("rpc-request", "rpc-request-result",
                              **{"channel-id": "slow", "data": {}, "timeout-ms": 300})
        rid = r["request-id"]
        m = json.loads(await svc.ws.recv())
        assert m["request-id"] == rid
        e = await req.reply("error")
        waited = time.time() - t0
        assert e["reason"] == "rpc-timeout" and e["request-id"] == rid
        assert e["message"] and isinstance(e["timestamp"], int)
        assert 0.25 <= waited < 0.3 + 0.5 * SLOW
        await svc.send(type="rpc-response", data=1, **{"request-id": rid})
        late = await svc.reply("rpc-response-result")
        assert late["success"] is False and late["reason"] == "request-not-found"
        # Delivered once: nothing else comes.
        await req.send(type="ping", timestamp=2)
        assert (await req.reply("pong"))["original-timestamp"] == 2
        for c in (req, svc):
            await c.close()
    run(go())
    assert pending(server) == 0
    assert sum(w["rpc-expired"] for w in server.stats()["workers"]) == 1


def test_default_timeout_from_channel(server_factory):
    srv = server_factory("--channel", "svc:rpc-timeout-ms=250")

    async def go():
        req, svc = await on_workers(srv.url, [0, 1])
        await svc.subscribe("svc")
        r = await req.request("rpc-request", "rpc-request-result",
                              **{"channel-id": "svc", "data": {}})
        m = json.loads(await svc.ws.recv())
        assert m["timeout-ms"] == 250
        e = await req.reply("error")
        assert e["reason"] == "rpc-timeout" and e["request-id"] == r["request-id"]
        for c in (req, svc):
            await c.close()
    run(go())


def test_requester_disconnect_drops_requests(server):
    async def go():
        req, svc = await on_workers(server.url, [0, 1])
        await svc.subscribe("gone")
        ids = []
        for _ in range(5):
            r = await req.request("rpc-request", "rpc-request-result",
                                  **{"channel-id": "gone", "data": {}, "timeout-ms": 60000})
            ids.append(r["request-id"])
        assert pending(server) == 5
        await req.close()
        await asyncio.get_running_loop().run_in_executor(
            None, lambda: wait_for(lambda: pending(server) == 0, what="requests dropped"))
        got = [json.loads(await svc.ws.recv())["request-id"] for _ in ids]
        assert got == ids  # it had received them all
        for rid in ids:
            await svc.send(type="rpc-response", data=1, **{"request-id": rid})
            res = await svc.reply("rpc-response-result")
            assert res["success"] is False and res["reason"] == "request-not-found"
        await svc.close()
    run(go())


def test_responder_disconnect_then_timeout(server):
    async def go():
        req, svc = await on_workers(server.url, [0, 1])
        await svc.subscribe("flaky")
        r = await req.request("rpc-request", "rpc-request-result",
                              **{"channel-id": "flaky", "data": {}, "timeout-ms": 400})
        await svc.close()
        e = await req.reply("error")
        assert e["reason"] == "rpc-timeout" and e["request-id"] == r["request-id"]
        await req.close()
    run(go())


def test_thousand_concurrent_requests(server):
    """10 requesters send 100 requests each without waiting; one responder
    per worker answers; every response matches its request."""
    async def go():
        svcs = await on_workers(server.url, [0, 1])
        for s in svcs:
            await serve(s, "bulk", lambda m: ({"n": m["data"]["n"], "rid": m["request-id"]}, False))
        reqs = await on_workers(server.url, [0, 1] * 5)

        async def requester(k, c):
            for i in range(100):
                await c.send(type="rpc-request", data={"n": k * 1000 + i},
                             **{"channel-id": "bulk", "timeout-ms": 20000})
            sent, answers = {}, {}
            while len(sent) < 100 or len(answers) < 100:
                m = json.loads(await c.ws.recv())
                if m["type"] == "rpc-request-result":
                    assert m["delivery"]["success"], m
                    assert m["delivery"]["delivered-to"] == 2
                    sent[m["request-id"]] = True
                elif m["type"] == "rpc-response":
                    answers[m["request-id"]] = m["data"]
                else:
                    raise AssertionError(m)
            assert set(sent) == set(answers)
            for rid, data in answers.items():
                assert data["rid"] == rid
            assert sorted(d["n"] for d in answers.values()) == [k * 1000 + i for i in range(100)]

        await asyncio.gather(*(requester(k, c) for k, c in enumerate(reqs)))
        for c in reqs + svcs:
            await c.close()
    run(go(), timeout=120)
    wait_for(lambda: pending(server) == 0, what="all settled")


def test_bad_inputs(server):
    async def go():
        c = await connect(server.url)
        for msg, field in ((dict(type="rpc-response", data=1), "request-id"),
                           (dict(type="rpc-response", **{"request-id": 5}, data=1), "request-id"),
                           (dict(type="rpc-response", **{"request-id": "req-1-1"}), "data"),
                           (dict(type="rpc-request", **{"channel-id": "x"}, data=[1]), "data"),
                           (dict(type="rpc-request", **{"channel-id": "x"}, data="s"), "data"),
                           (dict(type="rpc-request", data={}), "channel-id"),
                           (dict(type="rpc-request", **{"channel-id": "x", "timeout-ms": 0},
                                 data={}), "timeout-ms")):
            await c.ws.send(json.dumps(msg))
            e = json.loads(await c.ws.recv())
            assert e["type"] == "error" and e["reason"] == "invalid-message", msg
            assert field in e["message"]
        await c.send(type="rpc-response", data=1, **{"request-id": "req-0-0"})
        r = await c.reply("rpc-response-result")
        assert r["success"] is False and r["reason"] == "request-not-found"
        await c.close()
    run(go())


def test_health_counts_pending(server):
    async def go():
        req, svc = await on_workers(server.url, [0, 1])
        await svc.subscribe("p")
        await req.request("rpc-request", "rpc-request-result",
                          **{"channel-id": "p", "data": {}, "timeout-ms": 60000})
        status, h = server.get_json("/health")
        assert status == 200
        assert h["system-health"]["pending-rpc-requests"] == 1
        assert h["system-health"]["old-rpc-requests"] == 0
        for c in (req, svc):
            await c.close()
    run(go())


def test_latency_figures(server):
    """Not a pass/fail on time: prints round-trip and timeout lateness for
    the notes (run with -s to see them)."""
    async def go():
        req, svc = await on_workers(server.url, [0, 1])
        task = await serve(svc, "lat", lambda m: (1, False))
        rtts = []
        for _ in range(200):
            t0 = time.perf_counter()
            await req.request("rpc-request", "rpc-request-result",
                              **{"channel-id": "lat", "data": {}})
            await req.reply("rpc-response")
            rtts.append((time.perf_counter() - t0) * 1000)
        task.cancel()
        await svc.close()
        svc2 = await on_workers(server.url, [1])
        await svc2[0].subscribe("late")
        lateness = []
        for _ in range(20):
            r = await req.request("rpc-request", "rpc-request-result",
                                  **{"channel-id": "late", "data": {}, "timeout-ms": 100})
            e = await req.reply("error")
            created = int(r["request-id"].split("-")[1])
            lateness.append(e["timestamp"] - (created + 100))
        for c in (req, svc2[0]):
            await c.close()
        return rtts, lateness
    rtts, late = run(go())
    rtts.sort()
    print(f"\nrpc round trip (python client, 2 workers): p50 {statistics.median(rtts):.2f} ms, "
          f"p99 {rtts[int(len(rtts) * 0.99) - 1]:.2f} ms; timeout lateness: "
          f"p50 {statistics.median(late)} ms, max {max(late)} ms")
    assert max(late) >= 0
