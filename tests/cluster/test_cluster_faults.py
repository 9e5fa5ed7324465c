"""The review of issue 17 (r17-findings.md), one test per finding that can
be reproduced end to end against the real binary and a real Redis: each
fails on the code the review read (the scenario is the reviewer's
experiment, cut down)."""
import asyncio
import os
import random
import signal
import time

import websockets

from conftest import SLOW, Server, needs_own_redis, wait_for
from test_cluster import TOKEN, Client, api, broker_pid, collect, run


def numsub(redis, channel):
    """How many pub/sub connections (nodes) follow a channel in Redis."""
    out = redis.cli("PUBSUB", "NUMSUB", f"sl:{{{channel}}}:m").split()
    return int(out[-1])


async def publish(client, channel, data):
    await client.send(type="publish", **{"channel-id": channel}, data=data)
    r = await client.of_type("publish-result")
    assert r["success"], r
    return r


async def quiet(client, channel, seconds=1.0):
    """The channel-messages of `channel` that arrive within `seconds`."""
    got = [m for m in client.inbox if m.get("type") == "channel-message"
           and m.get("channel-id") == channel]
    end = time.time() + seconds * SLOW
    while time.time() < end:
        try:
            m = json_loads(await asyncio.wait_for(client.ws.recv(), end - time.time()))
        except asyncio.TimeoutError:
            break
        if m.get("type") == "channel-message" and m.get("channel-id") == channel:
            got.append(m)
    return got


def json_loads(s):
    import json
    return json.loads(s)


async def closed_with(client, timeout=20):
    """Wait for the server to close the connection; its close code."""
    try:
        while True:
            await asyncio.wait_for(client.ws.recv(), timeout * SLOW)
    except websockets.ConnectionClosed as e:
        return e.rcvd.code if e.rcvd else None


# Finding 1 (high): a stale local ring taken for a recovery.
def test_stale_ring_is_not_a_recovery(cluster, redis):
    needs_own_redis()
    a, b = cluster(2, "--message-retention", "10")

    async def go():
        x = await Client.open(a)
        epoch = (await x.subscribe("st"))["epoch"]
        pub = await Client.open(b)
        for i in range(1, 6):
            await publish(pub, "st", i)
        await collect(x, "st", 5)
        await x.close()
        # A stops following the channel; B publishes on.
        wait_for(lambda: numsub(redis, "st") == 0, timeout=10, what="A unsubscribed")
        for i in range(6, 56):
            await publish(pub, "st", i)
        y = await Client.open(a)
        r = await y.subscribe("st", **{"since-seq": 3, "epoch": epoch})
        assert r["success"]
        seqs = [m["seq"] for m in r["retained-messages"]]
        # 6..45 are gone from the history: not recovered, and what is
        # retained comes (no 4, 5 from the stale ring in front of it).
        assert r["recovered"] is False, seqs
        assert seqs == list(range(46, 56)), seqs
        # Live messages go on after it, once each.
        await publish(pub, "st", 56)
        assert [m["seq"] for m in await collect(y, "st", 1)] == [56]
    run(go())


# Finding 2 (high): duplicates and reordering after a broker restart.
def test_broker_restart_delivers_nothing_twice(cluster, redis):
    needs_own_redis()
    a, b = cluster(2, "--message-retention", "100")

    async def go():
        x = await Client.open(b)
        await x.subscribe("dup")
        pub = await Client.open(a)
        for i in range(1, 6):
            await publish(pub, "dup", i)
        await collect(x, "dup", 5)
        await x.close()
        wait_for(lambda: numsub(redis, "dup") == 0, timeout=10, what="B unsubscribed")
        for i in range(6, 9):
            await publish(pub, "dup", i)
        # Y's subscription-result carries 1..8 from Redis: B's own position
        # (5, from before) is behind it.
        y = await Client.open(b)
        r = await y.subscribe("dup")
        assert [m["seq"] for m in r["retained-messages"]] == list(range(1, 9))
        # (The review's code dropped repeats only for 2 s after a
        # subscription-result: a restart after that showed them.)
        await asyncio.sleep(2.5)
        old = broker_pid(b)
        os.kill(old, signal.SIGKILL)
        wait_for(lambda: broker_pid(b) not in (0, old) and b.healthy(), timeout=20,
                 what="a new broker on B")
        wait_for(lambda: numsub(redis, "dup") == 1, timeout=10, what="B following again")
        for i in range(9, 11):
            await publish(pub, "dup", i)
        got = await collect(y, "dup", 2)
        rest = await quiet(y, "dup", 1.0)
        assert [m["seq"] for m in got + rest] == [9, 10]
    run(go())


# Finding 3 (high): Redis back from an older snapshot keeps the epoch.
def test_redis_restored_from_older_snapshot_resets(cluster, redis):
    needs_own_redis()
    a, b = cluster(2, "--message-retention", "20")

    async def go():
        x = await Client.open(a)
        epoch = (await x.subscribe("snap"))["epoch"]
        pub = await Client.open(b)
        for i in range(1, 6):
            await publish(pub, "snap", "a")
        assert redis.cli("SAVE") == "OK"
        for i in range(6, 11):
            await publish(pub, "snap", "b")
        await collect(x, "snap", 10)
        redis.kill()
        redis.start()  # loads the snapshot taken at seq 5
        assert redis.cli("HGET", "sl:{snap}:c", "seq") == "5"
        # Seqs 6..10 are lost, and would be numbered again: X is told.
        assert await closed_with(x, 30) == 1012
        wait_for(a.healthy, timeout=20, what="A reconnected")
        wait_for(b.healthy, timeout=20, what="B reconnected")
        y = await Client.open(a)
        r = await y.subscribe("snap", **{"since-seq": 10, "epoch": epoch})
        assert r["success"] and r["recovered"] is False and r["epoch"] != epoch
        # The first node to reach the restarted Redis renews every epoch.
        assert sum(n.stats()["cluster"]["redis"][0]["epoch-renewals"] for n in (a, b)) == 1

        async def publish_ok():
            for _ in range(100):
                await pub.send(type="publish", **{"channel-id": "snap"}, data="new")
                r = await pub.of_type("publish-result")
                if r["success"]:
                    return r
                await asyncio.sleep(0.1)
            raise AssertionError("publishing never resumed")
        r = await publish_ok()
        m = (await collect(y, "snap", 1))[0]
        assert m["data"] == "new" and m["seq"] == r["seq"]
    run(go())


# Finding 5 (high): refused subscribes leave nothing behind.
def test_refused_subscribes_leave_no_local_channels(cluster, redis):
    needs_own_redis()
    (a,) = cluster(1, "--no-auto-create")

    async def go():
        c = await Client.open(a)
        before = a.get_json("/health")[1]["channels"]
        n = 300
        for i in range(n):
            await c.send(type="subscribe", **{"channel-id": f"rnd-{random.random()}"})
        reasons = {}
        for _ in range(n):
            r = await c.of_type("subscription-result")
            reasons[r.get("reason")] = reasons.get(r.get("reason"), 0) + 1
        assert reasons == {"channel-not-found": n}, reasons
        assert a.get_json("/health")[1]["channels"] == before
        assert int(redis.cli("SCARD", "sl:channels") or 0) == 0
    run(go())


# Finding 5 (high), with auto-create: a channel made by a subscribe that
# nobody uses any more expires in Redis (after --channel-linger-ms).
def test_auto_created_channel_lingers_then_goes(cluster, redis):
    needs_own_redis()
    (a,) = cluster(1, "--channel-linger-ms", "1000")

    async def go():
        c = await Client.open(a)
        assert (await c.subscribe("brief"))["success"]
        assert redis.cli("EXISTS", "sl:{brief}:c") == "1"
        await c.close()
        wait_for(lambda: redis.cli("EXISTS", "sl:{brief}:c") == "0", timeout=15,
                 what="the unused channel expiring in Redis")
    run(go())


# Finding 6 (high): "last == 0" taken for "position unknown".
def test_first_message_during_a_stall_is_caught_up(cluster, redis):
    needs_own_redis()
    (a,) = cluster(1, "--message-retention", "10", "--redis-timeout-ms", "500")

    async def go():
        x = await Client.open(a)
        r = await x.subscribe("z0")
        assert r["success"] and r["retained-messages"] == []
        pub = await Client.open(a)
        os.kill(redis.proc.pid, signal.SIGSTOP)
        try:
            await pub.send(type="publish", **{"channel-id": "z0"}, data="once")
            r = await pub.of_type("publish-result", timeout=10)
            # Sent, then the link was found dead: it may have run.
            # (broker-timeout: finding 7, tested in test_cluster.py.)
            assert r["success"] is False, r
            await asyncio.sleep(1.0 * SLOW)
        finally:
            os.kill(redis.proc.pid, signal.SIGCONT)
        wait_for(a.healthy, timeout=20, what="A reconnected")

        async def publish_ok():
            for _ in range(100):
                await pub.send(type="publish", **{"channel-id": "z0"}, data="after")
                r = await pub.of_type("publish-result")
                if r["success"]:
                    return r
                await asyncio.sleep(0.1)
            raise AssertionError("publishing never resumed")
        r = await publish_ok()
        assert r["seq"] == 2  # Redis ran "once" after SIGCONT
        got = await collect(x, "z0", 2)
        assert [(m["seq"], m["data"]) for m in got] == [(1, "once"), (2, "after")]
    run(go())


# Finding 9 (medium): a delete missed by a node is not undone by it.
def test_delete_missed_by_a_node_stays_deleted(cluster, redis):
    needs_own_redis()
    a, b = cluster(2, "--no-auto-create", "--admin-token", TOKEN)

    async def go():
        status, _ = api(a, "POST", "/api/channels/gone", {"message-retention": 5})
        assert status == 201
        x = await Client.open(a)
        assert (await x.subscribe("gone"))["success"]
        old = broker_pid(a)
        os.kill(old, signal.SIGSTOP)  # A hears nothing from now on
        try:
            status, doc = api(b, "DELETE", "/api/channels/gone")
            assert status == 200 and doc["deleted"] is True
        finally:
            os.kill(old, signal.SIGKILL)
        wait_for(lambda: broker_pid(a) not in (0, old) and a.healthy(), timeout=20,
                 what="a new broker on A")
        m = await x.of_type("channel-deleted", timeout=15)
        assert m["channel-id"] == "gone"
        await asyncio.sleep(1.5 * SLOW)  # a catch-up would have run by now
        assert redis.cli("EXISTS", "sl:{gone}:c") == "0"
        y = await Client.open(b)
        r = await y.subscribe("gone")
        assert r["success"] is False and r["reason"] == "channel-not-found"
        assert a.stats()["cluster"]["broker"]["deleted-channels"] >= 1
    run(go())


# Finding 11 (medium): one stopped worker costs only its own clients.
def test_stopped_worker_does_not_refuse_the_nodes_publishes(cluster):
    a, b = cluster(2, "--worker-stall-ms", "1000", "--worker-stall-kill-ms", "60000")

    async def on_worker(node, w):
        for _ in range(40):
            c = await Client.open(node)
            if c.welcome["worker"] == w:
                return c
            await c.close()
        raise AssertionError(f"no connection on worker {w}")

    async def go():
        slow = await on_worker(a, 0)
        assert (await slow.subscribe("busy"))["success"]
        calm = await on_worker(a, 1)
        assert (await calm.subscribe("calm"))["success"]
        victim = a.stats()["workers"][0]["pid"]
        os.kill(victim, signal.SIGSTOP)
        try:
            pub = await Client.open(b)
            n = 10000
            for i in range(n):
                await pub.send(type="publish", **{"channel-id": "busy"}, data=i)
            for _ in range(n):
                await pub.of_type("publish-result", timeout=30)
            # A client of A's healthy worker publishes on another channel.
            for i in range(5):
                await calm.send(type="publish", **{"channel-id": "calm"}, data=i)
                r = await calm.of_type("publish-result")
                assert r["success"], r
            st = a.stats()["cluster"]["broker"]
            assert st["backlog"] <= 10000
        finally:
            os.kill(victim, signal.SIGCONT)
    run(go())


# Finding 7 (medium), the admin API: an outcome unknown is not an
# internal error (it was a 500 "internal-error" after the merge).
def test_admin_call_to_a_stopped_broker_is_a_timeout(cluster):
    (a,) = cluster(1, "--redis-timeout-ms", "500", "--admin-token", TOKEN,
                   "--worker-stall-ms", "1000", "--worker-stall-kill-ms", "30000")
    status, _ = api(a, "POST", "/api/channels/adm", {"message-retention": 2})
    assert status == 201
    pid = broker_pid(a)
    os.kill(pid, signal.SIGSTOP)
    try:
        status, doc = api(a, "POST", "/api/channels/adm/publish", {"data": 1})
        assert status == 504 and doc["error"] == "broker-timeout", (status, doc)
        text = a.request("GET", "/metrics")[1].decode()
        for name in ("broker_timeouts_total 1", "broker_stall_kills_total 0",
                     'redis_epoch_renewals_total{redis="0"} 0'):
            assert "sente_lite_" + name in text, name
    finally:
        os.kill(pid, signal.SIGCONT)


# Issue 14 on cluster paths: the same permission decision for a publish,
# a subscribe and an rpc-response whose request came from another node.
def test_permissions_apply_across_nodes(cluster):
    a, b = cluster(2, "--namespace", "ro:publish=none", "--namespace", "priv:subscribe=none")

    async def go():
        c = await Client.open(a)
        assert (await c.subscribe("ro:feed"))["success"]
        await c.send(type="publish", **{"channel-id": "ro:feed"}, data=1)
        r = await c.of_type("publish-result")
        assert r["success"] is False and r["reason"] == "permission-denied", r
        r = await c.subscribe("priv:x")
        assert r["success"] is False and r["reason"] == "permission-denied", r
        svc = await Client.open(b)
        assert (await svc.subscribe("room"))["success"]
        # A non-subscriber on svc's worker (one that saw the request; a
        # worker that never saw it answers request-not-found: it cannot
        # tell the channel, and has no subscriber of it either).
        spare = []
        for _ in range(40):
            outsider = await Client.open(b)
            if outsider.welcome["worker"] == svc.welcome["worker"]:
                break
            spare.append(outsider)  # kept open: the next lands elsewhere
        else:
            raise AssertionError("no connection on svc's worker")
        caller = await Client.open(a)
        await caller.send(type="rpc-request", **{"channel-id": "room"}, data={"q": 1})
        rid = (await caller.of_type("rpc-request-result"))["request-id"]
        assert (await svc.of_type("rpc-request"))["request-id"] == rid
        await outsider.send(type="rpc-response", **{"request-id": rid}, data={"by": "x"})
        r = await outsider.of_type("rpc-response-result")
        assert r["success"] is False and r["reason"] == "permission-denied", r
        await svc.send(type="rpc-response", **{"request-id": rid}, data={"by": "svc"})
        assert (await svc.of_type("rpc-response-result"))["success"]
        assert (await caller.of_type("rpc-response"))["data"] == {"by": "svc"}
        assert a.stats()["errors"]["permission-denied"] == 2
        assert b.stats()["errors"]["permission-denied"] == 1
    run(go())


# Finding 27 (low): one --node-id on two running nodes is detected (and a
# broker's own restart is not taken for one).
def test_node_id_used_twice_is_detected(tmp_path, cluster, redis):
    needs_own_redis()
    (a,) = cluster(1, "--node-id", "twin")
    old = broker_pid(a)
    os.kill(old, signal.SIGKILL)
    wait_for(lambda: broker_pid(a) not in (0, old) and a.healthy(), timeout=20,
             what="a new broker")
    for _ in range(3):  # three heartbeats of the new broker: no conflict
        time.sleep(1.0)
        assert a.stats()["cluster"]["broker"]["node-id-conflict"] is False
    assert not [x for x in a.log_lines() if "another running process" in x]
    # A second node with the same id (not waited for: it may never be
    # healthy, which is the point).
    d = tmp_path / "twin2"
    d.mkdir()
    b = Server(d, ["--redis", redis.url, "--redis-prefix", "sl", "--node-id", "twin"], None, 1)
    try:
        wait_for(lambda: a.stats()["cluster"]["broker"]["node-id-conflict"], timeout=15,
                 what="the conflict seen by the first node")
        status, doc = a.get_json("/health")
        assert status == 503 and "node-id" in doc.get("reason", ""), doc
    finally:
        b.stop()


# Finding 16 (low): message-ids are not reused by a respawned worker.
def test_message_ids_unique_across_worker_respawn(cluster):
    (a,) = cluster(1, workers=1)

    async def go():
        c = await Client.open(a)
        assert (await c.subscribe("ids"))["success"]
        r1 = await publish(c, "ids", 1)
        victim = a.stats()["workers"][0]["pid"]
        os.kill(victim, signal.SIGKILL)
        wait_for(lambda: a.stats()["workers"][0]["pid"] not in (0, victim) and a.healthy(),
                 timeout=20, what="the worker respawned")
        c2 = await Client.open(a)
        assert (await c2.subscribe("ids"))["success"]
        r2 = await publish(c2, "ids", 2)
        assert r1["message-id"] != r2["message-id"], (r1, r2)
    run(go())


# Finding 20 (low): a failed re-subscribe keeps the working subscription.
def test_failed_resubscribe_keeps_the_subscription(cluster, redis):
    needs_own_redis()
    (a,) = cluster(1, "--redis-timeout-ms", "500")

    async def go():
        c = await Client.open(a)
        assert (await c.subscribe("keep"))["success"]
        os.kill(redis.proc.pid, signal.SIGSTOP)
        try:
            r = await c.subscribe("keep")
            assert r["success"] is False, r
        finally:
            os.kill(redis.proc.pid, signal.SIGCONT)
        wait_for(a.healthy, timeout=20, what="A reconnected")
        pub = await Client.open(a)

        async def publish_ok():
            for _ in range(100):
                await pub.send(type="publish", **{"channel-id": "keep"}, data="still")
                r = await pub.of_type("publish-result")
                if r["success"]:
                    return r
                await asyncio.sleep(0.1)
            raise AssertionError("publishing never resumed")
        r = await publish_ok()
        assert r["delivered-to"] == 1
        m = [x for x in await collect(c, "keep", 1)][0]
        assert m["data"] == "still"
    run(go())


# Finding 24 (low): a publisher subscribed to its channel gets its
# publish-result before its own message, as on one node.
def test_publish_result_before_own_message(cluster):
    (a,) = cluster(1)

    async def go():
        c = await Client.open(a)
        assert (await c.subscribe("self"))["success"]
        for i in range(20):
            await c.send(type="publish", **{"channel-id": "self"}, data=i)
        order = []
        while len(order) < 40:
            m = json_loads(await asyncio.wait_for(c.ws.recv(), 10 * SLOW))
            if m["type"] in ("publish-result", "channel-message"):
                order.append((m["type"], m["seq"] if m["type"] == "channel-message"
                              else m.get("seq")))
        for i in range(20):
            res = order.index(("publish-result", i + 1))
            msg = order.index(("channel-message", i + 1))
            assert res < msg, order
    run(go())


# Finding 15 (medium): a history too big for one answer is cut (newest
# first) and reported recovered:false, never left unanswered.
def test_history_too_big_for_one_answer_is_cut(cluster):
    a, b = cluster(2, "--message-retention", "100")

    async def go():
        pub = await Client.open(a)
        s = await Client.open(a)
        epoch = (await s.subscribe("big"))["epoch"]
        await s.close()  # (not reading 6 MB: it would be a slow consumer)
        blob = "x" * 100_000
        for i in range(60):  # 6 MB of history
            await publish(pub, "big", {"i": i, "b": blob})
        late = await Client.open(b)
        r = await late.subscribe("big", **{"since-seq": 0, "epoch": epoch})
        assert r["success"] and r["recovered"] is False
        seqs = [m["seq"] for m in r["retained-messages"]]
        assert seqs and seqs[-1] == 60 and seqs == list(range(seqs[0], 61))
        # The bound on one reply (half of the default 4 MiB
        # --max-outbound-bytes, as for a local channel): 2 MiB of 100 KB.
        assert 15 <= len(seqs) <= 21, len(seqs)
    run(go())


# Issue 14's review (r14, finding 7) on cluster paths: the public /stats,
# /channels and /metrics read the cluster snapshot, and name no user there
# either; the admin token's bearer sees them.
def test_cluster_listings_hide_user_channels_from_the_public(tmp_path, cluster):
    import sys
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "integration"))
    from authkit import Keys, ask, recv, upgrade
    keys = Keys(str(tmp_path))
    a, b = cluster(2, *keys.flags("secret"), "--allow-anonymous", "--admin-token", TOKEN)
    alice, _, _ = upgrade(a.port, keys.token(sub="alice@example.com"))
    for ch in ("notifications#alice@example.com", "news"):
        assert ask(alice, type="subscribe", **{"channel-id": ch})["success"]
        assert ask(alice, type="publish", **{"channel-id": ch, "data": 1})["success"]
        recv(alice)
    auth = {"Authorization": "Bearer " + TOKEN}

    def get(path, headers=None):
        st, body, _ = b.request("GET", path, headers=headers)
        assert st == 200
        return body.decode()
    wait_for(lambda: "notifications#alice@example.com" in
             json_loads(get("/channels", auth))["channels"], timeout=15,
             what="both channels in B's snapshot")
    for path in ("/stats", "/channels", "/metrics"):
        text = get(path)
        assert "alice" not in text, (path, text[:300])
    assert "news" in json_loads(get("/channels"))["channels"]
    st = json_loads(get("/stats"))["channel-stats"]
    assert list(st["channels"]) == ["news"] and st["channels-omitted"] == 1
    assert 'channel="notifications#alice@example.com"' in get("/metrics", auth)
    alice.close()


# rm17 H1 (high): with the default retention 0, a catch-up that finds no
# history reset the channel and dropped what arrived meanwhile (seqs after
# the reset point): the next live message was a gap, another catch-up,
# another reset - subscribers closed again and again while publishing went on.
def test_gap_without_history_resets_once_under_steady_publishing(cluster, redis):
    needs_own_redis()
    a, b = cluster(2, "--admin-token", TOKEN)  # default --message-retention 0

    async def go():
        stop = asyncio.Event()
        # A channel with a big history: joins on A with since-seq 0 make
        # big answers on A's Redis link (the broker reads them over many
        # turns), so a catch-up's answer behind them comes after live
        # messages published later - which are held meanwhile.
        status, _ = api(a, "POST", "/api/channels/big", {"message-retention": 40})
        assert status == 201
        big = await Client.open(b)
        for i in range(40):
            await big.send(type="publish", **{"channel-id": "big"}, data="x" * 30000)
        for i in range(40):
            assert (await big.of_type("publish-result"))["success"]

        async def joins():
            while not stop.is_set():
                j = await Client.open(a)
                await j.subscribe("big", **{"since-seq": 0})
                await j.close()

        async def flood(node):
            # Flat out, 20 publishes in flight, until told.
            pub = await Client.open(node)
            while not stop.is_set():
                for i in range(20):
                    await pub.send(type="publish", **{"channel-id": "h1"}, data=i)
                for _ in range(20):
                    await pub.of_type("publish-result", timeout=20)
                pub.inbox.clear()

        x = await Client.open(a)
        assert (await x.subscribe("h1"))["success"]
        tasks = [asyncio.create_task(flood(n)) for n in (b, a)]
        tasks += [asyncio.create_task(joins()) for _ in range(4)]
        try:
            await collect(x, "h1", 50)
            # The gap: seqs that never reach A (nor any node), and no
            # history to fetch them from - A resets its subscribers once.
            resets = a.stats()["cluster"]["broker"]["reset-channels"]
            await asyncio.to_thread(redis.cli, "HINCRBY", "sl:{h1}:c", "seq", "5")
            closes, runs = 0, []
            sub, seqs = x, []
            end = time.time() + 4 * SLOW
            while time.time() < end:
                try:
                    m = json_loads(await asyncio.wait_for(sub.ws.recv(), end - time.time()))
                except asyncio.TimeoutError:
                    break
                except websockets.ConnectionClosed as e:
                    assert e.rcvd and e.rcvd.code == 1012, e
                    closes += 1
                    runs.append(seqs)
                    sub, seqs = await Client.open(a), []
                    assert (await sub.subscribe("h1"))["success"]
                    continue
                if m.get("type") == "channel-message" and m.get("channel-id") == "h1":
                    seqs.append(m["seq"])
            runs.append(seqs)
        finally:
            stop.set()
            for t in tasks:
                await t
        # One reset for the one gap (the review's code made one per catch-up
        # round trip: 2 to 5 here), then every message of the stream, in order.
        resets = a.stats()["cluster"]["broker"]["reset-channels"] - resets
        assert resets == 1 and closes == 1, (resets, closes, [(r[:1], len(r)) for r in runs])
        assert len(runs[-1]) > 50, runs[-1][:10]
        assert all(q == p + 1 for p, q in zip(runs[-1], runs[-1][1:])), runs[-1]
    run(go())


# rm17 M1 (medium): a catch-up fetched everything after the node's position
# in one answer, admin info the whole history: Redis built it in one output
# buffer and the broker held it at once.  Now pages (256 messages, 1 MiB),
# catch-ups per link capped, admin info the newest 4 MiB.  Redis here kills
# a connection whose output buffer passes 8 MB: the review's code lost its
# link on every try (the catch-up never came, admin info failed).
def test_catch_up_and_info_come_in_bounded_answers(cluster, redis):
    needs_own_redis()
    # (A stopped broker's pub/sub connection is dropped past 1 MB: the gap.)
    redis.cli("CONFIG", "SET", "client-output-buffer-limit", "normal 8mb 8mb 0 pubsub 1mb 1mb 0")
    # (A subscriber reading 10 MB at once is not what this is about.)
    a, b = cluster(2, "--message-retention", "2000", "--admin-token", TOKEN,
                   "--max-outbound-bytes", "64M")
    big = "x" * 10000

    async def go():
        x = await Client.open(a)
        assert (await x.subscribe("pg"))["success"]
        pub = await Client.open(b)
        await publish(pub, "pg", "first")
        await collect(x, "pg", 1)
        # 15 MB published while A's broker is stopped: Redis drops its
        # pub/sub connection (after 1 MB), so A catches up over 10 MB once
        # it runs again.
        stopped = broker_pid(a)
        os.kill(stopped, signal.SIGSTOP)
        try:
            for n in range(75):
                for i in range(20):
                    await pub.send(type="publish", **{"channel-id": "pg"}, data=big)
                for i in range(20):
                    assert (await pub.of_type("publish-result"))["success"]
        finally:
            os.kill(stopped, signal.SIGCONT)
        got = await collect(x, "pg", 1500, timeout=60)
        st = a.stats()["cluster"]
        assert st["redis"][0]["reconnects"] >= 1  # the gap was a lost connection
        assert st["broker"]["recovered"] >= 900, st["broker"]  # caught up
        assert [m["seq"] for m in got] == list(range(2, 1502))
        link = a.stats()["cluster"]["redis"][0]
        assert link["catchups-in-flight"] == 0 and link["catchups-waiting"] == 0, link
        status, doc = api(a, "GET", "/api/channels/pg")
        assert status == 200, doc
        seqs = [m["seq"] for m in doc["retained-messages"]]
        # The newest that fit in 4 MiB, in order.
        assert 300 < len(seqs) < 420 and seqs == list(range(1502 - len(seqs), 1502)), seqs[:3]
    run(go())


# rm17 M2 (medium): after a Redis restart, the first connect gave every
# channel a new epoch in one script run (SMEMBERS of all channels): Redis
# blocked for all of them at once.  Now slices of about 1000 per call, the
# renewal under way recorded in Redis (P:renew) and the run id only when
# it is done.
def test_epoch_renewal_after_a_redis_restart_comes_in_slices(cluster, redis):
    needs_own_redis()
    n = 3000
    redis.cli("EVAL", "for i = 1, tonumber(ARGV[1]) do "
              "redis.call('HSET', 'sl:{m2c' .. i .. '}:c', 'epoch', 'old', 'seq', 5, 'max', 1000) "
              "redis.call('SADD', 'sl:channels', 'm2c' .. i) end "
              "redis.call('SET', 'sl:runid', 'a-redis-before-this-one')", "0", str(n))
    redis.cli("CONFIG", "SET", "slowlog-log-slower-than", "0")
    redis.cli("CONFIG", "SET", "slowlog-max-len", "100000")
    redis.cli("SLOWLOG", "RESET")
    (a,) = cluster(1)
    wait_for(a.healthy, timeout=20, what="node up")
    log = redis.cli("SLOWLOG", "GET", "100000")
    calls = log.count("sl:renew")  # the script's key: one per run
    assert calls >= 3, f"the renewal took {calls} script runs"
    run_id = [l.split(":", 1)[1] for l in redis.cli("INFO", "server").splitlines()
              if l.startswith("run_id:")][0].strip()
    assert redis.cli("GET", "sl:runid") == run_id
    assert redis.cli("EXISTS", "sl:renew") == "0"
    old = redis.cli("EVAL", "local k = 0 for i = 1, tonumber(ARGV[1]) do "
                    "if redis.call('HGET', 'sl:{m2c' .. i .. '}:c', 'epoch') == 'old' then "
                    "k = k + 1 end end return k", "0", str(n))
    assert old == "0", f"{old} channels kept their epoch"


# rm17 L1 (low): a pub/sub message whose epoch is too long (not made by our
# scripts) was dropped without a word - and every later one with it.  Now a
# gap: the catch-up gives the channel a proper epoch, subscribers are told.
def test_malformed_epoch_is_a_gap_not_a_silence(cluster, redis):
    needs_own_redis()
    a, b = cluster(2, "--message-retention", "10")

    async def go():
        x = await Client.open(a)
        assert (await x.subscribe("l1"))["success"]
        pub = await Client.open(b)
        await publish(pub, "l1", 1)
        await collect(x, "l1", 1)
        redis.cli("HSET", "sl:{l1}:c", "epoch", "e" * 30)
        await publish(pub, "l1", 2)
        assert await closed_with(x) == 1012
        y = await Client.open(a)
        assert (await y.subscribe("l1"))["success"]
        r = await publish(pub, "l1", 3)
        got = await collect(y, "l1", 1)
        assert [m["data"] for m in got] == [3], got
        assert r["seq"] == got[0]["seq"]
        assert len(redis.cli("HGET", "sl:{l1}:c", "epoch")) <= 15
    run(go())


# The broker is watched by main's stall rule (report-m17, "still open"):
# waiting for a channel lock that a stopped worker holds, it is "blocked"
# by that worker - not stalled, not killed - and the worker alone is
# killed, which hands the lock over.  (Judged on its own progress, the
# broker was stalled and killed along with the worker.)
def test_broker_blocked_by_a_stopped_worker_is_not_killed(cluster):
    from conftest import CRASH_BIN
    (b,) = cluster(1)
    (a,) = cluster(1, "--worker-stall-ms", "1000", "--worker-stall-kill-ms", "4000",
                   binary=CRASH_BIN, env={"SL_CRASH_ARM": "1:chan.sub.intent:1:stop"})
    broker = broker_pid(a)
    victim = a.stats()["workers"][1]["pid"]

    def stopped(pid):
        try:
            with open(f"/proc/{pid}/stat") as f:
                return f.read().split(") ", 1)[1][0] == "T"
        except FileNotFoundError:
            return False

    def stats():
        try:
            return a.stats()
        except OSError:
            return None  # landed on the stopped worker before it was bypassed

    async def on_worker(node, w):
        for _ in range(40):
            c = await Client.open(node)
            if c.welcome["worker"] == w:
                return c
            await c.close()
        raise AssertionError(f"no connection on worker {w}")

    async def go():
        sub = await on_worker(a, 0)
        assert (await sub.subscribe("hot"))["success"]
        other = await on_worker(a, 1)
        await other.send(type="subscribe", **{"channel-id": "hot"})  # stops holding hot's lock
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, lambda: wait_for(
            lambda: stopped(victim), timeout=10, what="worker 1 stopped in its subscribe"))
        pub = await Client.open(b)
        await pub.send(type="publish", **{"channel-id": "hot"}, data="from-b")
        assert (await pub.of_type("publish-result"))["success"]
        seen = []

        def watch():
            deadline = time.monotonic() + 30 * SLOW
            while time.monotonic() < deadline:
                st = stats()
                if st is None:
                    continue
                br = st["cluster"]["broker"]
                seen.append((br["blocked-by"], br["stalled"], br["pid"]))
                if st["workers"][1]["pid"] not in (victim, 0, None):
                    return
                time.sleep(0.2)
        await loop.run_in_executor(None, watch)
        m = await sub.next(lambda x: x.get("type") == "channel-message", timeout=20)
        return m, seen

    m, seen = run(go())
    assert m["data"] == "from-b"
    assert any(by == 1 for by, _, _ in seen), seen
    assert all(not stalled and pid == broker for _, stalled, pid in seen), seen
    st = a.stats()
    br = st["cluster"]["broker"]
    assert br["pid"] == broker and br["stalls"] == 0 and br["stall-kills"] == 0, br
    assert br["blocked-by"] is None
    assert st["workers"][1]["stall-kills"] == 1
