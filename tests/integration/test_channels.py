"""Channels across workers (PROTOCOL section 3: subscribe, unsubscribe,
publish, channel-message, list-channels, get-subscriptions; section 4).
Every test places publishers and subscribers on chosen workers, checked
through the welcome's "worker" field, never left to luck."""
import asyncio
import json
import os
import signal

import pytest
import websockets

from conftest import SLOW, wait_for


def run(coro, timeout=60):
    return asyncio.run(asyncio.wait_for(coro, timeout * SLOW))


class Client:
    def __init__(self, ws, welcome):
        self.ws = ws
        self.id = welcome["conn-id"]
        self.worker = welcome["worker"]
        self.pending = []  # channel-messages that arrived while awaiting a reply

    async def send(self, **msg):
        await self.ws.send(json.dumps(msg))

    async def reply(self, type_):
        """The next message of this type, keeping channel-messages aside."""
        while True:
            m = json.loads(await self.ws.recv())
            if m["type"] == type_:
                return m
            if m["type"] == "channel-message":
                self.pending.append(m)
            else:
                raise AssertionError(f"unexpected {m}")

    async def request(self, type_, reply_type, **fields):
        await self.send(type=type_, **fields)
        return await self.reply(reply_type)

    async def subscribe(self, channel, **kw):
        return await self.request("subscribe", "subscription-result", **{"channel-id": channel}, **kw)

    async def publish(self, channel, data, **kw):
        return await self.request("publish", "publish-result", **{"channel-id": channel},
                                  data=data, **kw)

    async def message(self):
        if self.pending:
            return self.pending.pop(0)
        while True:
            m = json.loads(await self.ws.recv())
            if m["type"] == "channel-message":
                return m

    async def close(self):
        await self.ws.close()


async def connect(url):
    ws = await websockets.connect(url, max_size=None)
    return Client(ws, json.loads(await ws.recv()))


async def on_workers(url, wanted):
    """Open connections until we hold one on each worker in `wanted` (a
    list, repeats allowed); extra connections are closed."""
    got, spare = [], []
    need = list(wanted)
    for _ in range(len(wanted) * 6):
        if not need:
            break
        c = await connect(url)
        if c.worker in need:
            need.remove(c.worker)
            got.append(c)
        else:
            spare.append(c)
    for c in spare:
        await c.close()
    assert not need, "could not place connections on the wanted workers"
    return sorted(got, key=lambda c: wanted.index(c.worker))


def test_pubsub_across_workers(server):
    async def go():
        sub, pub = await on_workers(server.url, [0, 1])
        r = await sub.subscribe("room")
        assert r["success"] and r["subscriber-count"] == 1
        assert r["retained-messages"] == [] and len(r["epoch"]) >= 8
        res = await pub.publish("room", {"text": "hello", "n": [1, 2]})
        assert res["success"] and res["seq"] == 1 and res["delivered-to"] == 1
        assert res["message-id"].startswith("msg-")
        m = await sub.message()
        assert m == {"type": "channel-message", "channel-id": "room",
                     "message-id": res["message-id"], "seq": 1,
                     "data": {"text": "hello", "n": [1, 2]}, "sender-conn-id": pub.id,
                     "published-at": m["published-at"]}
        for c in (sub, pub):
            await c.close()
    run(go())
    st = server.stats()
    assert st["workers"][1]["published"] == 1
    assert st["workers"][0]["delivered"] == 1


def test_exclude_sender_and_publisher_subscribed(server):
    async def go():
        a, b = await on_workers(server.url, [0, 1])
        await a.subscribe("x")
        await b.subscribe("x")
        r = await a.publish("x", 1, **{"exclude-sender": True})
        assert r["delivered-to"] == 1
        assert (await b.message())["data"] == 1
        r = await a.publish("x", 2)
        assert r["delivered-to"] == 2
        assert (await a.message())["data"] == 2  # not 1: excluded earlier
        assert (await b.message())["data"] == 2
        for c in (a, b):
            await c.close()
    run(go())


def test_unsubscribe_and_listings(server):
    async def go():
        a, b = await on_workers(server.url, [0, 1])
        await a.subscribe("one")
        await a.subscribe("two")
        await a.subscribe("two")  # idempotent
        r = await a.request("get-subscriptions", "subscription-list")
        assert sorted(r["subscriptions"]) == ["one", "two"]
        r = await b.request("list-channels", "channel-list")
        assert set(r["channels"]) == {"one", "two"}
        two = r["channels"]["two"]
        assert two["subscriber-count"] == 1 and two["message-count"] == 0
        assert two["config"]["max-subscribers"] == 1000
        assert two["config"]["message-retention"] == 0
        assert two["config"]["rpc-timeout-ms"] == 30000
        r = await a.request("unsubscribe", "unsubscription-result", **{"channel-id": "one"})
        assert r == {"type": "unsubscription-result", "channel-id": "one", "success": True}
        r = await a.request("unsubscribe", "unsubscription-result", **{"channel-id": "one"})
        assert r["success"] is False and r["reason"] == "not-subscribed"
        assert (await b.publish("one", "gone"))["delivered-to"] == 0
        r = await a.request("get-subscriptions", "subscription-list")
        assert r["subscriptions"] == ["two"]
        for c in (a, b):
            await c.close()
    run(go())
    status, doc = server.get_json("/channels")
    assert status == 200 and set(doc["channels"]) == {"one", "two"}
    wait_for(lambda: server.stats()["channel-stats"]["total-subscriptions"] == 0,
             what="subscriptions gone after close")


def test_subscription_list_inline_then_grown(server):
    """A connection's first subscription is held without an array, the
    second moves it into one (3, then doubled): every step keeps the list,
    deliveries and unsubscribes right - back down to one and up again."""
    async def go():
        a, b = await on_workers(server.url, [0, 1])
        names = [f"grow-{k}" for k in range(8)]
        await a.subscribe(names[0])
        r = await a.request("get-subscriptions", "subscription-list")
        assert r["subscriptions"] == [names[0]]
        for n in names[1:]:
            await a.subscribe(n)
        r = await a.request("get-subscriptions", "subscription-list")
        assert sorted(r["subscriptions"]) == sorted(names)
        for k, n in enumerate(names):
            assert (await b.publish(n, k))["delivered-to"] == 1
            m = await a.message()
            assert m["channel-id"] == n and m["data"] == k
        for n in names[1:]:
            r = await a.request("unsubscribe", "unsubscription-result", **{"channel-id": n})
            assert r["success"] is True
        r = await a.request("get-subscriptions", "subscription-list")
        assert r["subscriptions"] == [names[0]]
        assert (await b.publish(names[0], "x"))["delivered-to"] == 1
        assert (await a.message())["data"] == "x"
        await a.subscribe(names[5])
        r = await a.request("get-subscriptions", "subscription-list")
        assert sorted(r["subscriptions"]) == [names[0], names[5]]
        for c in (a, b):
            await c.close()
    run(go())
    wait_for(lambda: server.stats()["channel-stats"]["total-subscriptions"] == 0,
             what="subscriptions gone after close")


def test_fanout_trace(server_factory, tmp_path):
    """SENTE_FANOUT_TRACE (a benchmark's measuring aid, off by default):
    each worker writes, per message, when the publish frame was read and
    accepted and when the other worker was woken (the publisher's worker),
    and when each worker was woken, queued the message on its subscribers
    and made the turn's last writev - times that follow one another."""
    prefix = str(tmp_path / "trace")
    srv = server_factory(env={"SENTE_FANOUT_TRACE": prefix})

    async def go():
        a, pub, c = await on_workers(srv.url, [0, 0, 1])
        for x in (a, c):
            assert (await x.subscribe("traced"))["success"]
        for k in range(3):
            assert (await pub.publish("traced", k))["delivered-to"] == 2
            for x in (a, c):
                assert (await x.message())["data"] == k
        for x in (a, pub, c):
            await x.close()
    run(go())

    def lines(w, kind):
        try:
            with open(f"{prefix}.{w}") as f:
                rows = [l.split() for l in f.read().splitlines()]
        except FileNotFoundError:
            return {}
        return {int(r[1][4:]): {k: int(v) for k, v in (x.split("=") for x in r[2:])}
                for r in rows if r[0] == kind}

    wait_for(lambda: len(lines(0, "del")) == 3 and len(lines(1, "del")) == 3,
             what="every message traced on both workers")
    pubs, d0, d1 = lines(0, "pub"), lines(0, "del"), lines(1, "del")
    assert sorted(pubs) == [1, 2, 3] and lines(1, "pub") == {}
    for seq, p in pubs.items():
        assert 0 < p["arrival"] <= p["accepted"] <= p["wake"], p
        for d in (d0[seq], d1[seq]):
            assert d["n"] == 1 and d["published"] == p["accepted"], d
            assert d["published"] <= d["drain"] <= d["queued"] <= d["done"], d
            assert 0 <= d["cpu"] <= d["done"] - d["drain"] + 2, d  # on a CPU at most all along
        assert d0[seq]["woken"] == 0  # the publisher's own worker drains without a wake-up
        # Worker 1 is woken (or finds the message at the end of a turn it
        # has anyway, before the wake-up reaches it: then woken is older).
        assert d1[seq]["woken"] <= d1[seq]["queued"], (p, d1[seq])
    # Worker 1 has nothing else to do between the messages: at least one of
    # them reached it through the wake-up, stamped (review rl19 L1).
    assert any(d1[seq]["woken"] > 0 for seq in pubs), d1


def test_fanout_trace_only_to_a_regular_file(server_factory, tmp_path):
    """The trace opens only a regular file: a FIFO (which would block the
    worker's loop) and a symlink (planted in a shared directory) are
    refused with a line on stderr, and the worker serves on; a write
    failure stops the trace once (review rl19 L4)."""
    prefix = str(tmp_path / "trace")
    os.mkfifo(prefix + ".0")
    target = tmp_path / "elsewhere"
    target.write_text("keep\n")
    os.symlink(target, prefix + ".1")
    srv = server_factory(env={"SENTE_FANOUT_TRACE": prefix})

    async def go():
        a, pub, c = await on_workers(srv.url, [0, 0, 1])
        for x in (a, c):
            assert (await x.subscribe("traced"))["success"]
        assert (await pub.publish("traced", 1))["delivered-to"] == 2
        for x in (a, c):
            assert (await x.message())["data"] == 1
        for x in (a, pub, c):
            await x.close()
    run(go())
    assert target.read_text() == "keep\n"
    err = wait_for(lambda: srv.stderr().count("SENTE_FANOUT_TRACE: cannot open") >= 2 and srv.stderr(),
                   what="both refusals on stderr")
    assert "worker 0" in err and "worker 1" in err, err


def test_failure_reasons(server_factory):
    srv = server_factory("--no-auto-create", "--channel", "small:max-subscribers=1",
                         "--max-subscriptions-per-connection", "2", "--channel", "a",
                         "--channel", "b", "--channel", "c")

    async def go():
        x, y = await on_workers(srv.url, [0, 1])
        r = await x.subscribe("missing")
        assert r["success"] is False and r["reason"] == "channel-not-found"
        for bad in ("", "a" * 129, "tab\there", "nul\u0000", "del\u007f", "c1\u0085"):
            r = await x.subscribe(bad)
            assert r["reason"] == "invalid-channel-id", bad
        assert (await x.subscribe("a" * 128))["reason"] == "channel-not-found"  # valid id
        assert (await x.subscribe("small"))["success"]
        r = await y.subscribe("small")
        assert r["success"] is False and r["reason"] == "max-subscribers-reached"
        assert (await x.subscribe("a"))["success"]
        r = await x.subscribe("b")
        assert r["success"] is False and r["reason"] == "too-many-subscriptions"
        assert (await x.subscribe("a"))["success"]  # idempotent even at the limit
        r = await y.publish("missing", 1)
        assert r["success"] is False and r["reason"] == "channel-not-found"
        for msg, field in ((dict(type="subscribe"), "channel-id"),
                           (dict(type="subscribe", **{"channel-id": 5}), "channel-id"),
                           (dict(type="publish", **{"channel-id": "a"}), "data"),
                           (dict(type="publish", **{"channel-id": "a", "exclude-sender": 1},
                                 data=1), "exclude-sender"),
                           (dict(type="subscribe", **{"channel-id": "a", "since-seq": -1}),
                            "since-seq"),
                           (dict(type="unsubscribe"), "channel-id")):
            await y.ws.send(json.dumps(msg))
            e = json.loads(await y.ws.recv())
            assert e["type"] == "error" and e["reason"] == "invalid-message", msg
            assert field in e["message"]
        for c in (x, y):
            await c.close()
    run(go())


def test_env_defaults(server_factory):
    srv = server_factory(env={"AUTO_CREATE_CHANNELS": "false", "MAX_SUBSCRIBERS": "7",
                              "MESSAGE_RETENTION": "3"}, workers=1)
    cfg = srv.stats()["server-config"]
    assert cfg["auto-create"] is False
    assert cfg["max-subscribers"] == 7
    assert cfg["message-retention"] == 3


def test_ordering_concurrent_publishers(server):
    """4 publishers on different workers publish 2,000 messages each, as fast
    as they can; 20 subscribers spread over both workers all see the same
    seq 1..8000, each exactly once, and each publisher's messages in the
    order it sent them."""
    N, PUBS, SUBS = 2000, 4, 20

    async def go():
        subs = await on_workers(server.url, [0, 1] * (SUBS // 2))
        for s in subs:
            assert (await s.subscribe("order"))["success"]
        pubs = await on_workers(server.url, [0, 1] * (PUBS // 2))

        async def publish_all(p, k):
            for i in range(N):
                await p.send(type="publish", data={"p": k, "i": i}, **{"channel-id": "order"})
            results = [await p.reply("publish-result") for _ in range(N)]
            assert all(r["success"] for r in results)
            return [r["seq"] for r in results]

        async def receive_all(s):
            return [await s.message() for _ in range(N * PUBS)]

        got = await asyncio.gather(*(receive_all(s) for s in subs),
                                   *(publish_all(p, k) for k, p in enumerate(pubs)))
        received, seqs = got[:SUBS], got[SUBS:]
        # The publishers' seqs partition 1..8000, each publisher's increasing.
        allseq = sorted(x for s in seqs for x in s)
        assert allseq == list(range(1, N * PUBS + 1))
        for s in seqs:
            assert s == sorted(s)
        reference = [m["seq"] for m in received[0]]
        assert reference == list(range(1, N * PUBS + 1))
        for msgs in received:
            assert [m["seq"] for m in msgs] == reference
            for k in range(PUBS):
                mine = [m["data"]["i"] for m in msgs if m["data"]["p"] == k]
                assert mine == list(range(N))
        for c in subs + pubs:
            await c.close()
    run(go(), timeout=120)
    st = server.stats()
    assert st["published"] == 8000
    assert st["delivered"] == 8000 * 20
    assert st["overloaded"] == 0


def test_retention_and_recovery(server_factory):
    srv = server_factory("--channel", "hist:message-retention=5")

    async def go():
        pub, sub = await on_workers(srv.url, [0, 1])
        for i in range(1, 4):
            await pub.publish("hist", i)
        r = await sub.subscribe("hist")
        assert [m["data"] for m in r["retained-messages"]] == [1, 2, 3]
        assert [m["seq"] for m in r["retained-messages"]] == [1, 2, 3]
        assert "recovered" not in r
        epoch = r["epoch"]
        # Retained messages are exactly the delivered ones.
        live = await pub.publish("hist", 4)
        delivered = await sub.message()
        r = await sub.subscribe("hist")
        assert r["retained-messages"][-1] == delivered
        assert delivered["seq"] == live["seq"] == 4
        # A client that saw up to seq 2 recovers 3 and 4.
        r = await sub.subscribe("hist", **{"since-seq": 2, "epoch": epoch})
        assert r["recovered"] is True
        assert [m["seq"] for m in r["retained-messages"]] == [3, 4]
        r = await sub.subscribe("hist", **{"since-seq": 4, "epoch": epoch})
        assert r["recovered"] is True and r["retained-messages"] == []
        # Wrong epoch: not recovered, everything retained is returned.
        r = await sub.subscribe("hist", **{"since-seq": 2, "epoch": "other"})
        assert r["recovered"] is False
        assert [m["seq"] for m in r["retained-messages"]] == [1, 2, 3, 4]
        # A gap no longer retained: only 5 are kept, so since-seq 1 misses 2.
        for i in range(5, 11):
            await pub.publish("hist", i)
        for _ in range(6):
            await sub.message()
        r = await sub.subscribe("hist", **{"since-seq": 1, "epoch": epoch})
        assert r["recovered"] is False
        assert [m["seq"] for m in r["retained-messages"]] == [6, 7, 8, 9, 10]
        r = await sub.subscribe("hist", **{"since-seq": 5, "epoch": epoch})
        assert r["recovered"] is True
        assert [m["seq"] for m in r["retained-messages"]] == [6, 7, 8, 9, 10]
        for c in (pub, sub):
            await c.close()
    run(go())
    ch = srv.stats()["channel-stats"]["channels"]["hist"]
    assert ch["retention-count"] == 5 and ch["message-count"] == 10


def test_direct_replies_carry_any_id_and_data(server_factory):
    """welcome, subscription-result (with retained messages), publish-result,
    unsubscription-result and pong are formatted without jansson (src/jw.c):
    what they carry comes back exactly, escapes included."""
    srv = server_factory("--channel", "q\"\\/é😀:message-retention=3")
    odd = 'q"\\/é😀'   # quote, backslash, slash, 2- and 4-byte UTF-8
    data = {"s": "line\nbreak \"quoted\" \\ \u0001 é 😀", "n": [1.5, -2, None, True]}

    async def go():
        pub, sub = await on_workers(srv.url, [0, 1])
        r = await pub.publish(odd, data)
        assert r["success"] and r["channel-id"] == odd and r["seq"] == 1
        assert r["message-id"].startswith("msg-") and r["delivered-to"] == 0
        r = await sub.subscribe(odd)
        assert r["channel-id"] == odd and r["success"] is True
        assert r["subscriber-count"] == 1 and isinstance(r["epoch"], str)
        assert [m["data"] for m in r["retained-messages"]] == [data]
        assert r["retained-messages"][0]["channel-id"] == odd
        r2 = await sub.subscribe(odd, **{"since-seq": 0, "epoch": r["epoch"]})
        assert r2["recovered"] is True and r2["retained-messages"] == r["retained-messages"]
        lst = await sub.request("get-subscriptions", "subscription-list")
        assert lst["subscriptions"] == [odd]
        for ts, want in ((1.5, 1.5), (-7, -7), (2**53, 2**53), (None, None)):
            r = await sub.request("ping", "pong", timestamp=ts)
            assert r["original-timestamp"] == want
        r = await sub.request("unsubscribe", "unsubscription-result", **{"channel-id": odd})
        assert r == {"type": "unsubscription-result", "channel-id": odd, "success": True}
        for c in (pub, sub):
            await c.close()
    run(go())


def test_disconnect_leaves_no_trace(server):
    async def go():
        pub, s0, s1 = await on_workers(server.url, [0, 0, 1])
        for s in (s0, s1):
            await s.subscribe("t")
        await s1.close()
        await asyncio.get_running_loop().run_in_executor(None, lambda: wait_for(
            lambda: server.stats()["channel-stats"]["channels"]["t"]["subscriber-count"] == 1,
            what="subscriber removed"))
        assert (await pub.publish("t", 1))["delivered-to"] == 1
        assert (await s0.message())["data"] == 1
        for c in (pub, s0):
            await c.close()
    run(go())
    wait_for(lambda: server.stats()["channel-stats"]["total-subscriptions"] == 0,
             what="no subscription left")


def test_worker_killed_mid_stream(server):
    async def go():
        pub, keep, lost = await on_workers(server.url, [0, 0, 1])
        for s in (keep, lost):
            await s.subscribe("live")
        victim = server.stats()["workers"][1]["pid"]
        seqs = []
        for i in range(400):
            if i == 200:
                os.kill(victim, signal.SIGKILL)
            r = await pub.publish("live", i)
            assert r["success"]
            seqs.append(r["seq"])
        got = [(await keep.message())["seq"] for _ in range(400)]
        assert got == seqs == list(range(1, 401))
        await asyncio.get_running_loop().run_in_executor(None, lambda: wait_for(
            lambda: server.stats()["channel-stats"]["channels"]["live"]["subscriber-count"] == 1,
            what="the dead worker's subscriber cleaned out"))
        assert (await pub.publish("live", "after"))["delivered-to"] == 1
        for c in (pub, keep):
            await c.close()
    run(go())
    wait_for(server.healthy, what="worker replaced")


def test_overload_is_reported_and_counts_add_up(server):
    """A publisher outpacing a stalled worker gets "overloaded" replies; every
    publish is either delivered or reported."""
    async def go():
        pub, sub = await on_workers(server.url, [0, 1])
        await sub.subscribe("flood")
        stalled = server.stats()["workers"][1]["pid"]
        os.kill(stalled, signal.SIGSTOP)
        try:
            total = 9000
            for i in range(total):
                await pub.send(type="publish", data=i, **{"channel-id": "flood"})
            results = [await pub.reply("publish-result") for _ in range(total)]
        finally:
            os.kill(stalled, signal.SIGCONT)
        ok = [r for r in results if r["success"]]
        failed = [r for r in results if not r["success"]]
        assert failed and all(r["reason"] == "overloaded" for r in failed)
        assert len(ok) + len(failed) == total
        # Seqs of the accepted ones have no gaps: refused publishes take none.
        assert [r["seq"] for r in ok] == list(range(1, len(ok) + 1))
        got = [(await sub.message())["data"] for _ in range(len(ok))]
        assert len(got) == len(ok)
        assert got == sorted(got)
        for c in (pub, sub):
            await c.close()
        return len(ok), len(failed)
    delivered, failed = run(go(), timeout=90)
    st = server.stats()
    assert st["overloaded"] == failed
    assert st["published"] == delivered
    assert st["delivered"] == delivered
