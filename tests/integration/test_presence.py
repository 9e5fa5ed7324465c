"""Presence, presence-stats, join / leave and history (issue 15) against the
real binary with two workers: users from tokens and anonymous connections;
join / leave ordered with the messages identically on both workers; a
SIGKILLed worker's connections leaving; history pages both ways, since-seq
outside the ring, the epoch, and the retention TTL giving shared memory
back; the permissions of every new message type; a full inbox refusing a
join and turning a leave into a 1013.  Subscribers and askers sit on
different workers wherever it matters."""
import json
import os
import signal
import socket
import threading
import time

import pytest

from authkit import ask, keys, recv, send, upgrade  # noqa: F401
from conftest import CRASH_BIN, SLOW, wait_for
from test_permissions import on_worker


def reply(ws, want, **msg):
    """Send msg; the next message of type `want` (pushed ones skipped)."""
    send(ws, **msg)
    while True:
        m = recv(ws)
        if m["type"] == want:
            return m


def sub(ws, ch):
    r = reply(ws, "subscription-result", type="subscribe", **{"channel-id": ch})
    assert r["success"], r
    return r


def events(ws, until, timeout=10.0):
    """Frames until one satisfies `until`; returns them all (it included)."""
    ws.sock.settimeout(timeout * SLOW)
    out = []
    while True:
        m = recv(ws)
        out.append(m)
        if until(m):
            return out


def quiet(ws, seconds=0.5):
    """Nothing more arrives for a while (returns what did, if anything)."""
    ws.sock.settimeout(seconds)
    got = []
    try:
        while True:
            got.append(recv(ws))
    except (socket.timeout, TimeoutError):
        return got
    finally:
        ws.sock.settimeout(5 * SLOW)


def presence_all(ws, ch, limit=None):
    """Every page of presence, merged; and how many pages it took."""
    clients, cursor, pages = {}, None, 0
    while True:
        msg = {"type": "presence", "channel-id": ch}
        if cursor is not None:
            msg["cursor"] = cursor
        if limit:
            msg["limit"] = limit
        r = ask(ws, **msg)
        assert r["type"] == "presence-result" and r["success"], r
        pages += 1
        for k in r["clients"]:
            assert k not in clients, f"{k} listed twice"
        clients.update(r["clients"])
        cursor = r["next-cursor"]
        if cursor is None:
            return clients, pages


def metric(srv, line_start, headers=None):
    _, body, _ = srv.request("GET", "/metrics", headers=headers)
    for ln in body.decode().splitlines():
        if ln.startswith(line_start):
            return float(ln.rsplit(" ", 1)[1])
    return None


def conn_id(ws):
    """This connection's conn-id (an unknown type is echoed with it)."""
    return ask(ws, type="who-am-i")["conn-id"]


def test_presence_and_stats_across_workers(server_factory, keys):
    srv = server_factory(*keys.flags("secret"), "--allow-anonymous", "--admin-token", "t0k",
                         workers=2)
    op = {"Authorization": "Bearer t0k"}
    people = [("alice", 0, {"name": "Alice"}), ("alice", 1, {"name": "A2"}),
              ("bob", 1, {"name": "Bob", "tags": [1, 2]}), (None, 0, None), (None, 1, None)]
    conns, want = [], {}
    for user, worker, info in people:
        tok = keys.token(sub=user, info=info) if user else None
        ws = on_worker(srv, worker, tok)
        conns.append(ws)
        want[conn_id(ws)] = {"user": user, "info": info}
        sub(ws, "room")
    # Asked on worker 0 and on worker 1: the same answer, every worker's.
    for ws in (conns[0], conns[1]):
        clients, _ = presence_all(ws, "room")
        assert clients == want
    st = ask(conns[3], type="presence-stats", **{"channel-id": "room"})
    assert st == {"type": "presence-stats-result", "channel-id": "room", "success": True,
                  "num-clients": 5, "num-users": 2}
    # Pages of two: every connection once, three pages.
    clients, pages = presence_all(conns[4], "room", limit=2)
    assert clients == want and pages == 3
    # /stats and /metrics count presence per channel (users: for operators).
    _, body, _ = srv.request("GET", "/stats", headers=op)
    room = json.loads(body)["channel-stats"]["channels"]["room"]
    assert room["num-clients"] == 5 and room["num-users"] == 2
    assert metric(srv, 'sente_lite_channel_presence_clients{channel="room"}', op) == 5
    assert metric(srv, 'sente_lite_channel_presence_users{channel="room"}', op) == 2
    # For anyone else nobody walks the lists (review r15 M3): the
    # connections are counted, the users are not.
    room = srv.stats()["channel-stats"]["channels"]["room"]
    assert room["num-clients"] == 5 and room["num-users"] is None
    assert metric(srv, 'sente_lite_channel_presence_users{channel="room"}') is None
    # One leaves, one goes away: presence follows.
    ids = list(want)
    assert ask(conns[2], type="unsubscribe", **{"channel-id": "room"})["success"]
    conns[3].close()
    left = set(ids) - {ids[2], ids[3]}
    wait_for(lambda: set(presence_all(conns[0], "room")[0]) == left,
             what="presence without the two")
    st = ask(conns[0], type="presence-stats", **{"channel-id": "room"})
    assert (st["num-clients"], st["num-users"]) == (3, 1)
    for ws in conns:
        ws.close()


def kind(m):
    """What a watcher saw: ("m", seq), ("join"|"leave", conn-id), or None."""
    if m["type"] == "channel-message":
        return ("m", m["seq"])
    if m["type"] in ("join", "leave"):
        return (m["type"], m["info"]["conn-id"])
    return None


# Failed once beside another test in the -n 2 ASan run at load 7-8 (suite5).
@pytest.mark.alone
def test_join_leave_ordered_with_messages_on_both_workers(server_factory):
    srv = server_factory("--join-leave", workers=2)
    w0, w1 = on_worker(srv, 0), on_worker(srv, 1)
    sub(w0, "room")
    sub(w1, "room")
    first = recv(w0)  # w1's join
    assert first["type"] == "join"
    pub = on_worker(srv, 0)
    stop = threading.Event()

    def publish():
        n = 0
        while not stop.is_set():
            n += 1
            r = ask(pub, type="publish", **{"channel-id": "room", "data": {"n": n}})
            assert r["success"], r
            time.sleep(0.002)

    t = threading.Thread(target=publish)
    t.start()
    churn = []
    try:
        for i in range(24):
            ws, status, welcome = upgrade(srv.port)
            assert status == 101
            sub(ws, "room")
            churn.append((ws, welcome["conn-id"]))
            if i % 3 == 0:  # leave by unsubscribing
                ws2, _ = churn.pop(0)
                assert reply(ws2, "unsubscription-result", type="unsubscribe",
                             **{"channel-id": "room"})["success"]
                ws2.close()
            elif i % 3 == 1:  # leave by going away
                churn.pop(0)[0].close()
            time.sleep(0.01)
        for ws, _ in churn:
            ws.close()
        # A close here is a bare TCP close: the server learns of it when its
        # worker reads the EOF, which under load (ASan, a busy machine) can
        # come after the "end" publish below, whose leave would then follow
        # "end" (the same on both workers: nothing broken, but missed by the
        # count; issue 15, "3 extra entries" = three joins without their
        # leave). The protocol (4.10) hands a leave out before the member is
        # taken off the channel: once the channel counts only w0 and w1,
        # every leave is in both inboxes, ahead of the next message. Wait
        # for that, then nothing is left to race "end".
        wait_for(lambda: srv.stats()["channel-stats"]["channels"]["room"]["subscriber-count"]
                 == 2, what="every churned connection gone from the channel")
    finally:
        stop.set()
        t.join()
    r = ask(pub, type="publish", **{"channel-id": "room", "data": "end"})
    end = r["seq"]
    seen = []
    for w in (w0, w1):
        got = events(w, lambda m: m.get("seq") == end)
        seen.append([k for k in map(kind, got) if k])
    assert seen[0] == seen[1], "the two workers' subscribers saw different orders"
    ev = seen[0]
    assert [s for k, s in ev if k == "m"] == list(range(1, end + 1))
    joins = [c for k, c in ev if k == "join"]
    leaves = [c for k, c in ev if k == "leave"]
    assert len(joins) == 24 and sorted(joins) == sorted(leaves), (joins, leaves)
    for c in joins:
        assert ev.index(("join", c)) < ev.index(("leave", c))
    # One join and one leave per connection: nothing more after "end".
    for w in (w0, w1):
        assert [k for k in map(kind, quiet(w)) if k] == []
    w0.close()
    w1.close()
    pub.close()


def test_a_burst_of_joins_each_told_once_per_pair(server_factory):
    """Connections on both workers subscribing at once: each hears of those
    that came after it, never of those before it (a worker drains a join
    after a later subscribe of its own: the join's horizon keeps it from
    that subscriber), so of every pair exactly one tells the other."""
    srv = server_factory("--join-leave", workers=2)
    conns = [on_worker(srv, i % 2) for i in range(40)]
    ids = [conn_id(ws) for ws in conns]
    for ws in conns:
        send(ws, type="subscribe", **{"channel-id": "burst"})
    heard = []
    for ws in conns:
        got = events(ws, lambda m: m["type"] == "subscription-result")
        assert got[-1]["success"], got[-1]
        heard.append({m["info"]["conn-id"] for m in got if m["type"] == "join"})
    pub = on_worker(srv, 0)  # not subscribed: its reply is the next frame
    end = ask(pub, type="publish", **{"channel-id": "burst", "data": "end"})["seq"]
    pub.close()
    for ws, h in zip(conns, heard):
        got = events(ws, lambda m: m.get("seq") == end)
        for m in got:
            if m["type"] == "join":
                assert m["info"]["conn-id"] not in h, "the same join twice"
                h.add(m["info"]["conn-id"])
    for i, a in enumerate(ids):
        assert a not in heard[i], "told of its own join"
        for j in range(i + 1, len(ids)):
            both = (ids[j] in heard[i]) + (a in heard[j])
            assert both == 1, (a, ids[j], both)
    assert sum(map(len, heard)) == len(ids) * (len(ids) - 1) // 2
    for ws in conns:
        ws.close()


def test_a_killed_worker_leaves_once_per_connection(server_factory):
    srv = server_factory("--join-leave", workers=2)
    watchers = [on_worker(srv, 0) for _ in range(3)]
    for w in watchers:
        sub(w, "room")
    victims, keep = [], []
    for _ in range(10):
        ws = on_worker(srv, 1)
        keep.append(ws)  # open until their worker dies
        sub(ws, "room")
        victims.append(conn_id(ws))
    for w in watchers:
        joined = set()
        events(w, lambda m: m["type"] == "join" and joined.add(m["info"]["conn-id"]) is None and
               set(victims) <= joined)
    os.kill(srv.stats()["workers"][1]["pid"], signal.SIGKILL)
    # Every remaining subscriber: one leave per lost connection, no more.
    for w in watchers:
        left = []
        events(w, lambda m: m["type"] == "leave" and left.append(m["info"]["conn-id"]) is None and
               len(left) == len(victims))
        assert sorted(left) == sorted(victims)
        assert [m for m in quiet(w, 1.0) if m["type"] == "leave"] == []
    clients, _ = presence_all(watchers[0], "room")
    assert len(clients) == 3
    wait_for(lambda: srv.stats()["workers"][1]["alive"], timeout=10, what="the replacement")
    for w in watchers:
        w.close()


def hist(ws, ch, **kw):
    r = ask(ws, type="history", **{"channel-id": ch}, **kw)
    assert r["type"] == "history-result" and r["success"], r
    return r


def seqs(r):
    return [p["seq"] for p in r["publications"]]


def test_history_pages_both_ways(server_factory):
    srv = server_factory("--message-retention", "5", "--admin-token", "t0ken", workers=2)
    a, b = on_worker(srv, 0), on_worker(srv, 1)
    s = sub(b, "h")
    r = hist(b, "h")
    assert (r["publications"], r["top-seq"], r["more"], r["epoch"]) == ([], 0, False, s["epoch"])
    sent = []
    for i in range(8):
        ask(a, type="publish", **{"channel-id": "h", "data": {"i": i}})
    for _ in range(8):
        sent.append(recv(b))
    r = hist(b, "h")
    assert seqs(r) == [4, 5, 6, 7, 8] and r["top-seq"] == 8 and not r["more"]
    # Each publication as it was delivered.
    m = sent[3]
    assert r["publications"][0] == {"seq": 4, "message-id": m["message-id"], "data": {"i": 3},
                                    "created-at": m["published-at"]}
    assert seqs(hist(b, "h", limit=2)) == [4, 5] and hist(b, "h", limit=2)["more"]
    assert seqs(hist(b, "h", **{"since-seq": 5, "limit": 2})) == [6, 7]
    last = hist(b, "h", **{"since-seq": 7, "limit": 2})
    assert seqs(last) == [8] and not last["more"]
    assert seqs(hist(b, "h", **{"since-seq": 8})) == []          # at the top
    assert seqs(hist(b, "h", **{"since-seq": 1000})) == []       # beyond it
    assert seqs(hist(b, "h", **{"since-seq": 1})) == [4, 5, 6, 7, 8]  # before the ring
    back = hist(b, "h", reverse=True, limit=2)
    assert seqs(back) == [8, 7] and back["more"]
    assert seqs(hist(b, "h", reverse=True, limit=2, **{"since-seq": 7})) == [6, 5]
    end = hist(b, "h", reverse=True, limit=2, **{"since-seq": 5})
    assert seqs(end) == [4] and not end["more"]
    pos = hist(b, "h", limit=0)
    assert seqs(pos) == [] and pos["more"] and pos["top-seq"] == 8
    # Bad fields are invalid-message, counted.
    before = srv.stats()["errors"].get("invalid-message", 0)
    for bad in ({"limit": -1}, {"limit": "2"}, {"since-seq": 1.5}, {"reverse": 1}):
        e = ask(b, type="history", **{"channel-id": "h"}, **bad)
        assert e["type"] == "error" and e["reason"] == "invalid-message", e
        assert "history: field '" in e["message"]
    assert srv.stats()["errors"]["invalid-message"] == before + 4
    # Deleted and created again: a new epoch, seqs from 1.
    st, _, _ = srv.request("DELETE", "/api/channels/h", headers={"Authorization": "Bearer t0ken"})
    assert st == 200
    assert recv(b)["type"] == "channel-deleted"
    s2 = sub(b, "h")
    ask(a, type="publish", **{"channel-id": "h", "data": 1})
    assert recv(b)["seq"] == 1
    r = hist(b, "h")
    assert r["epoch"] == s2["epoch"] != s["epoch"] and seqs(r) == [1] and r["top-seq"] == 1
    a.close()
    b.close()


def test_history_keeps_data_with_nul(server_factory):
    """Review r15 L5: publish accepts "\\u0000" in data, so history must
    list that message too (it used to drop it silently)."""
    srv = server_factory("--message-retention", "5", workers=1)
    a, pub = on_worker(srv, 0), on_worker(srv, 0)
    sub(a, "n")
    for d in ("x", "a\u0000b", "y"):
        r = ask(pub, type="publish", **{"channel-id": "n", "data": d})
        assert r["success"], r
    r = reply(a, "history-result", type="history", **{"channel-id": "n"})
    assert r["success"], r
    assert [p["data"] for p in r["publications"]] == ["x", "a\u0000b", "y"], r
    a.close()
    pub.close()


def test_history_ttl_frees_shared_memory(server_factory):
    srv = server_factory("--channel", "ttl:message-retention=1000,history-ttl-ms=1500",
                         "--channel-linger-ms", "2000", workers=2)
    a = on_worker(srv, 0)
    used = lambda: srv.stats()["shared-memory"]["used-bytes"]  # noqa: E731
    base = used()
    blob = "x" * 4000
    for i in range(500):
        assert ask(a, type="publish", **{"channel-id": "ttl", "data": blob})["success"]
    full = used()
    assert full - base > 500 * 4000, (base, full)
    # Nobody publishes or reads it now: the reaper drops them.
    wait_for(lambda: srv.stats()["channel-stats"]["expired-messages"] == 500, timeout=10,
             what="the retained messages expired")
    after = used()
    print(f"\nshared memory: {base} before, {full} with 500 x 4 KB retained, {after} "
          f"after history-ttl-ms")
    assert after - base < 100 * 1024, (base, full, after)
    sub(a, "ttl")
    r = hist(a, "ttl")
    assert r["publications"] == [] and r["top-seq"] == 500
    assert metric(srv, "sente_lite_history_expired_total") == 500
    a.close()


VALUES = ["anyone", "authenticated", "token", "subscribers", "none"]


def test_permissions_of_presence_and_history(server_factory, keys):
    nss = []
    for v in VALUES:
        nss += ["--namespace", f"p-{v}:presence={v},history={v}"]
    srv = server_factory(*keys.flags("secret"), "--allow-anonymous", *nss, workers=2)
    chans = [f"p-{v}:room" for v in VALUES] + ["plain"]
    owner = on_worker(srv, 0)
    for ch in chans:
        sub(owner, ch)
    tokens = {"anon": None, "authed": keys.token(sub="carl"),
              "granted": keys.token(sub="dora", channels=["p-token:*"])}
    expect = {  # (value, who, subscribed) -> reason or None
        "anyone": {}, "authenticated": {"anon": "unauthenticated"},
        "token": {"anon": "unauthenticated", "authed": "permission-denied"},
    }

    def want(v, who, subscribed, typ):
        if v == "none":
            return "presence-disabled" if typ != "history" else "permission-denied"
        if v in ("subscribers", "default"):
            return None if subscribed else "permission-denied"
        return expect[v].get(who)

    errors0 = srv.stats()["errors"]
    refused = {}
    for who, tok in tokens.items():
        for subscribed in (False, True):
            actor = on_worker(srv, 1, tok)
            for ch in chans:
                v = ch.split(":")[0][2:] if ":" in ch else "default"
                if subscribed:
                    sub(actor, ch)
                for typ in ("presence", "presence-stats", "history"):
                    r = ask(actor, type=typ, **{"channel-id": ch})
                    assert r["type"] == typ + "-result", r
                    got = None if r["success"] else r["reason"]
                    assert got == want(v, who, subscribed, typ), (who, subscribed, ch, typ, r)
                    if got:
                        refused[got] = refused.get(got, 0) + 1
            actor.close()
    errors = srv.stats()["errors"]
    for reason, n in refused.items():
        assert errors.get(reason, 0) - errors0.get(reason, 0) == n, reason
    # A channel that is not there (where anyone may ask): channel-not-found, counted.
    r = ask(owner, type="presence", **{"channel-id": "p-anyone:nothing"})
    assert (r["success"], r["reason"]) == (False, "channel-not-found")
    r = ask(owner, type="history", **{"channel-id": "p-anyone:nothing"})
    assert (r["success"], r["reason"]) == (False, "channel-not-found")
    assert srv.stats()["errors"]["channel-not-found"] == 2
    r = ask(owner, type="presence", **{"channel-id": 7})
    assert r["type"] == "error" and r["reason"] == "invalid-message"
    owner.close()


def test_join_leave_follow_the_presence_rule(server_factory, keys):
    """Review r15 M2: join / leave show what presence would, so they reach
    only subscribers the namespace's presence rule lets ask it; with
    presence=none nobody gets them, whatever join-leave says."""
    srv = server_factory(*keys.flags("secret"), "--allow-anonymous", "--join-leave",
                         "--namespace", "jt:presence=token",
                         "--namespace", "jn:presence=none,join-leave=true", workers=2)
    tok = keys.token(sub="dora", channels=["jt:*", "jn:*"])
    granted = on_worker(srv, 0, tok)           # may ask presence of jt:*
    authed = on_worker(srv, 0, keys.token(sub="carl"))  # may not (no claim)
    anon = on_worker(srv, 1)                   # may not (unauthenticated)
    for ch in ("jt:room", "jn:room", "plain"):
        for ws in (granted, authed, anon):
            sub(ws, ch)
    comer = on_worker(srv, 1, keys.token(sub="erin", channels=["jt:*", "jn:*"]))
    cid = conn_id(comer)
    for ch in ("jt:room", "jn:room", "plain"):
        sub(comer, ch)
    comer.close()
    pub = on_worker(srv, 1)
    for ch in ("jt:room", "jn:room", "plain"):
        assert ask(pub, type="publish", **{"channel-id": ch, "data": "end"})["success"]

    def seen(ws):
        got = []
        for m in events(ws, lambda m: m.get("data") == "end" and m["channel-id"] == "plain"):
            if m["type"] in ("join", "leave") and m["info"]["conn-id"] == cid:
                got.append((m["type"], m["channel-id"]))
        return sorted(got)

    # Each leave comes before the "end" of its own channel; "plain" is last.
    assert seen(granted) == sorted([("join", "jt:room"), ("leave", "jt:room"),
                                    ("join", "plain"), ("leave", "plain")])
    for ws in (authed, anon):  # plain: the default rule (subscribers) lets them
        assert seen(ws) == sorted([("join", "plain"), ("leave", "plain")])
    # presence agrees: refused to those two on jt:, to everyone on jn:.
    assert ask(authed, type="presence", **{"channel-id": "jt:room"})["reason"] == \
        "permission-denied"
    assert ask(granted, type="presence", **{"channel-id": "jn:room"})["reason"] == \
        "presence-disabled"
    # A token refresh decides it again (review rf15 F6): carl now may,
    # dora no longer may; both stay subscribed.
    r = ask(authed, type="authenticate", token=keys.token(sub="carl", channels=["jt:*"]))
    assert r["success"], r
    # ...and, having had no baseline, is told once to ask presence (rg15 G4).
    assert recv(authed) == {"type": "presence-resync", "channel-id": "jt:room"}
    r = ask(granted, type="authenticate", token=keys.token(sub="dora"))
    assert r["success"], r
    comer = on_worker(srv, 1, keys.token(sub="erin", channels=["jt:*"]))
    cid = conn_id(comer)
    sub(comer, "jt:room")
    assert reply(comer, "unsubscription-result", type="unsubscribe",
                 **{"channel-id": "jt:room"})["success"]
    comer.close()
    assert ask(pub, type="publish", **{"channel-id": "jt:room", "data": "end2"})["success"]

    def seen2(ws):
        return [m["type"] for m in events(ws, lambda m: m.get("data") == "end2")
                if m["type"] in ("join", "leave") and m["info"]["conn-id"] == cid]
    assert seen2(authed) == ["join", "leave"]
    assert seen2(granted) == []
    for ws in (granted, authed, anon, pub):
        ws.close()


def test_presence_none_turns_join_leave_off_for_every_channel(server_factory):
    """Review rf15 F7: with presence=none no channel of the namespace sends
    join / leave - declared (--channel) and admin-created ones too, not
    only those a subscribe creates."""
    srv = server_factory("--admin-token", "t0k3n", "--join-leave",
                         "--namespace", "jn:presence=none,join-leave=true",
                         "--channel", "jn:decl:join-leave=true",
                         "--channel", "open:decl:join-leave=true")
    auth = {"Authorization": "Bearer t0k3n"}
    st, raw, _ = srv.request("POST", "/api/channels/jn%3Aadm", body=b'{"join-leave":true}',
                             headers=auth)
    assert st == 201 and json.loads(raw)["config"]["join-leave"] is False, raw
    for ch, want in (("jn:decl", False), ("open:decl", True), ("jn:adm", False)):
        st, raw, _ = srv.request("GET", "/api/channels/" + ch.replace(":", "%3A"), headers=auth)
        assert st == 200 and json.loads(raw)["config"]["join-leave"] is want, (ch, raw)


def test_pipelined_presence_and_history_all_answered(server_factory):
    """Review r15 M1: presence, presence-stats and history are charged
    against their connection's turn budget by the work they do, so a batch
    of them in one read is spread over turns - and none is lost."""
    srv = server_factory("--message-retention", "200", workers=1)
    members = [on_worker(srv, 0) for _ in range(20)]
    for ws in members:
        sub(ws, "big")
    pub = on_worker(srv, 0)  # not a subscriber: its next frame is the reply
    for i in range(200):
        assert ask(pub, type="publish", **{"channel-id": "big", "data": i})["success"]
    asker = on_worker(srv, 0)
    sub(asker, "big")
    from wsraw import OP_TEXT, frame
    kinds = [("presence-stats", {}), ("presence", {"cursor": 1}),
             ("history", {"since-seq": 150}), ("history", {"since-seq": 60, "reverse": True})]
    batch = b"".join(frame(OP_TEXT, json.dumps({"type": t, "channel-id": "big", **kw}).encode())
                     for _ in range(100) for t, kw in kinds)
    asker.send(batch)
    got = []
    asker.sock.settimeout(30 * SLOW)
    while len(got) < 400:
        m = recv(asker)
        if m["type"].endswith("-result"):
            got.append(m)
    for i, m in enumerate(got):
        t, kw = kinds[i % 4]
        assert m["type"] == t + "-result" and m["success"], m
        if t == "presence-stats":
            assert m["num-clients"] == 21
        elif t == "presence":
            assert list(m["clients"]) == [] and m["next-cursor"] is None
        elif kw.get("reverse"):
            assert [p["seq"] for p in m["publications"]] == list(range(59, 0, -1))
        else:
            assert [p["seq"] for p in m["publications"]] == list(range(151, 201))
    for ws in members + [asker, pub]:
        ws.close()



def tick_among_replies(srv, pub, asker, request, check):
    """Send 40 of `request` at once, and another connection's publish to
    "tick" (which asker is subscribed to), while worker 0 is stopped; then
    how many replies (`check`ed) came before that message."""
    from wsraw import OP_TEXT, frame
    batch = b"".join(frame(OP_TEXT, json.dumps(request).encode()) for _ in range(40))
    pid = srv.stats()["workers"][0]["pid"]
    os.kill(pid, signal.SIGSTOP)
    try:
        asker.send(batch)
        time.sleep(0.2)
        send(pub, type="publish", **{"channel-id": "tick", "data": "t"})
        time.sleep(0.3)  # both in the socket buffers before the worker goes on
    finally:
        os.kill(pid, signal.SIGCONT)
    asker.sock.settimeout(30 * SLOW)
    replies, tick_after = 0, None
    while replies < 40 or tick_after is None:
        m = recv(asker)
        if m["type"] == request["type"] + "-result":
            check(m)
            replies += 1
        elif m.get("channel-id") == "tick":
            tick_after = replies
    assert recv(pub)["success"]
    return tick_after


def test_a_charged_batch_is_spread_over_turns(server_factory):
    """Review rf15 F4: the test above cannot fail (its requests charge
    next to nothing).  Here each history request copies 500 messages: it
    is charged 500/16 = 31 more messages of its connection's turn budget
    (64), so a batch of 40 takes 20 turns, two a turn.  The worker is
    stopped while the batch and another connection's publish arrive; the
    publish's message reaches the asker at the end of the first turn, so
    it comes among the first replies.  Uncharged, the whole batch (40 <
    64 messages, a few KB of input) goes in the first turn and the message
    comes after all 40."""
    srv = server_factory("--message-retention", "600", "--max-outbound-bytes", "256M",
                         workers=1)
    pub, asker = on_worker(srv, 0), on_worker(srv, 0)
    sub(asker, "big")
    sub(asker, "tick")
    for i in range(600):
        send(pub, type="publish", **{"channel-id": "big", "data": i})
    pub.sock.settimeout(30 * SLOW)
    for _ in range(600):
        r = recv(pub)
        assert r["success"], r

    def check(m):
        assert m["success"] and len(m["publications"]) == 500, m
    tick_after = tick_among_replies(srv, pub, asker, {"type": "history", "channel-id": "big",
                                                      "limit": 500}, check)
    # Two replies a turn; the publish may be read a turn late on a loaded
    # machine (its bytes came last), so allow a few turns.
    assert tick_after <= 10, f"the other connection's message came after {tick_after} replies"
    for ws in (asker, pub):
        ws.close()


@pytest.mark.parametrize("kind", ["presence", "presence-stats"])
def test_a_charged_presence_batch_is_spread_over_turns(server_factory, kind):
    """Review rm15 N3: the presence walks' charges (members walked /
    SL_PRESENCE_WALK_UNIT) tested as the history charge is above.  The
    crash build takes the unit from SL_PRESENCE_WALK_UNIT (1 here), so a
    channel of 40 subscribers charges each `presence` / `presence-stats`
    40 messages of the asker's turn budget (64): two a turn, a batch of
    40 in 20 turns, and another connection's message (drained at the end
    of the first turn) comes among the first replies.  Uncharged, the
    batch goes in one turn and the message comes after all 40."""
    srv = server_factory("--max-outbound-bytes", "256M", workers=1, binary=CRASH_BIN,
                         env={"SL_PRESENCE_WALK_UNIT": "1"})
    pub, asker = on_worker(srv, 0), on_worker(srv, 0)
    sub(asker, "big")
    sub(asker, "tick")
    members = [on_worker(srv, 0) for _ in range(39)]
    for ws in members:
        sub(ws, "big")

    def check(m):
        assert m["success"], m
        if kind == "presence":
            assert len(m["clients"]) == 40, m
        else:
            assert m["num-clients"] == 40, m
    tick_after = tick_among_replies(srv, pub, asker, {"type": kind, "channel-id": "big"}, check)
    # Two replies a turn; a few turns of slack for a loaded machine.
    assert tick_after <= 10, f"the other connection's message came after {tick_after} replies"
    for ws in [asker, pub] + members:
        ws.close()


def test_a_drain_stops_at_its_frame_bound(server_factory):
    """The drain's per-turn bound in frames (SL_DRAIN_FRAMES_MAX = 262,144,
    review r15 H2) is reached: 4,000 messages of a channel with 200
    subscribers on worker 1 are 800,000 frames, so its drain takes four
    turns of 1,311 messages, and a request read in between is answered
    between them.  Worker 1 (a crash-point build) stops itself at its
    1,500th pop (its second turn); the request is sent then.  Its reply
    comes after the second turn's deliveries (2,622 messages); without
    the bound the whole inbox went in one turn and the reply came after
    all 4,000."""
    srv = server_factory("--worker-stall-ms", "30000", "--worker-stall-kill-ms", "60000",
                         workers=2, binary=CRASH_BIN,
                         env={"SL_CRASH_ARM": "1:inbox.pop.head:1500:stop"})
    subs, spare = [], []
    while len(subs) < 200:
        ws, status, w = upgrade(srv.port, None)
        assert status == 101
        if w["worker"] == 1:
            sub(ws, "big")
            subs.append(ws)
        else:
            spare.append(ws)
    q = subs[0]
    pub = on_worker(srv, 0)
    pid = srv.stats()["workers"][1]["pid"]
    os.kill(pid, signal.SIGSTOP)
    try:
        for i in range(4000):
            send(pub, type="publish", **{"channel-id": "big", "data": i})
        pub.sock.settimeout(60 * SLOW)
        for _ in range(4000):
            r = recv(pub)
            assert r["success"], r
    finally:
        os.kill(pid, signal.SIGCONT)

    def state():
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1][0]
    wait_for(lambda: state() == "T", timeout=60 * SLOW, what="worker 1 stopped at its pop")
    send(q, type="presence-stats", **{"channel-id": "big"})
    time.sleep(0.2)
    os.kill(pid, signal.SIGCONT)
    q.sock.settimeout(60 * SLOW)
    before = 0
    while True:
        m = recv(q)
        if m["type"] == "presence-stats-result":
            break
        if m.get("channel-id") == "big" and "data" in m:
            before += 1
    assert 1311 <= before < 3500, f"the reply came after {before} of 4000 messages"
    for ws in subs + spare + [pub]:
        ws.close()

def test_joins_count_against_the_publish_rate(server_factory):
    """Review r15 H2: a subscribe to a join-leave channel fans out like a
    publish, so it is counted at --max-publishes-per-second (a bucket of its
    own: review rg15 G2): a
    subscribe / unsubscribe loop is refused rate-limited like a publisher;
    channels without join-leave are not counted; leaves are never refused."""
    srv = server_factory("--join-leave", "--namespace", "quiet:join-leave=false",
                         "--max-publishes-per-second", "1", "--publish-burst", "3", workers=1)
    watcher = on_worker(srv, 0)
    sub(watcher, "room")
    ws = on_worker(srv, 0)
    got = []
    # Until the first refusal (a loaded machine may earn one more back
    # meanwhile, so no exact count beyond the burst).
    while "rate-limited" not in got and len(got) < 50:
        send(ws, type="subscribe", **{"channel-id": "room"})
        m = recv(ws)
        assert m["type"] == "subscription-result" and m["channel-id"] == "room", m
        got.append("ok" if m["success"] else m["reason"])
        if m["success"]:
            assert reply(ws, "unsubscription-result", type="unsubscribe",
                         **{"channel-id": "room"})["success"]
    assert got[:3] == ["ok"] * 3 and got[-1] == "rate-limited", got
    joined = got.count("ok")
    # Channels without join-leave: not counted.
    for i in range(5):
        sub(ws, f"quiet:c{i}")
    # The watcher heard exactly those that got in, each joining and leaving.
    evs = [m["type"] for m in quiet(watcher, 1.0) if m["type"] in ("join", "leave")]
    assert evs == ["join", "leave"] * joined, evs
    # Joins have a bucket of their own (review rg15 G2): with the join
    # bucket empty, publishes still have their whole burst.
    sub(watcher, "quiet:p")
    for i in range(3):
        r = ask(ws, type="publish", **{"channel-id": "quiet:p", "data": i})
        assert r["type"] == "publish-result" and r["success"], r
    for w in (watcher, ws):
        w.close()


def test_many_join_leave_rooms_at_once_are_not_closed(server_factory):
    """Review rf15 F2: a refused join is a subscription-result (rate-limited,
    with its channel-id), never a strike that closes the connection - a
    client subscribing to many rooms at once (a reconnect) stays open; the
    first subscriber of a channel tells nobody and is not counted."""
    srv = server_factory("--join-leave", "--max-publishes-per-second", "1",
                         "--publish-burst", "2", workers=1)
    others = on_worker(srv, 0)
    rooms = [f"room{i}" for i in range(10)]
    for r in rooms:   # nobody to tell: none of these is counted
        sub(others, r)
    ws = on_worker(srv, 0)
    for r in rooms:
        send(ws, type="subscribe", **{"channel-id": r})
    got = [recv(ws) for _ in rooms]
    assert all(m["type"] == "subscription-result" for m in got), got
    assert [m["channel-id"] for m in got] == rooms, got
    refused = [m for m in got if not m["success"]]
    assert refused and all(m["reason"] == "rate-limited" for m in refused), got
    assert sum(m["success"] for m in got) >= 2, got
    # Still open: it answers, and a later try gets in.
    assert ask(ws, type="ping")["type"] == "pong"
    time.sleep(1.2)
    assert ask(ws, type="subscribe", **{"channel-id": refused[-1]["channel-id"]})["success"]
    for w in (others, ws):
        w.close()


def test_full_inbox_refuses_a_join_and_resyncs_on_a_leave(server_factory):
    """Review r15 H2: a leave that cannot enter a full inbox does not close
    that worker's subscribers 1013 (a leave has no seq to recover it by):
    each is told once to ask presence again (presence-resync)."""
    srv = server_factory("--join-leave", "--worker-stall-ms", "30000",
                         "--worker-stall-kill-ms", "60000", workers=2)
    far = on_worker(srv, 1)     # its worker is stopped below
    sub(far, "jl")
    filler = on_worker(srv, 1)  # the only subscriber of the channel that fills the inbox
    sub(filler, "fill")
    near = on_worker(srv, 0)    # leaves while worker 1 is stopped
    sub(near, "jl")
    assert recv(far)["type"] == "join"
    near_id = conn_id(near)
    pub, late, mid = on_worker(srv, 0), on_worker(srv, 0), on_worker(srv, 0)
    pid = srv.stats()["workers"][1]["pid"]
    total = 8192  # SL_INBOX_CAP
    os.kill(pid, signal.SIGSTOP)
    try:
        # Fill worker 1's inbox with another channel's messages (nothing
        # of "jl" is skipped but the leave); one more is refused.
        for _ in range(total + 1):
            send(pub, type="publish", **{"channel-id": "fill", "data": 0})
        pub.sock.settimeout(30 * SLOW)
        got = [recv(pub) for _ in range(total + 1)]
        assert all(m["success"] for m in got[:total]), got[-2]
        assert (got[-1]["success"], got[-1]["reason"]) == (False, "overloaded"), got[-1]
        # A join is not refused for worker 1's crowded inbox (review rf15
        # F1): near, on worker 0, is told; worker 1 gets a presence note.
        r = ask(mid, type="subscribe", **{"channel-id": "jl"})
        assert r["success"], r
        assert recv(near)["type"] == "join"
        # A leave is never refused (worker 1 gets a presence note)...
        assert ask(near, type="unsubscribe", **{"channel-id": "jl"})["success"]
        assert recv(mid)["type"] == "leave"
        # ...a join only worker 1 would be told of is: nothing happens.
        assert ask(mid, type="unsubscribe", **{"channel-id": "jl"})["success"]
        r = ask(late, type="subscribe", **{"channel-id": "jl"})
        assert (r["success"], r["reason"]) == (False, "overloaded"), r
    finally:
        os.kill(pid, signal.SIGCONT)
    # far stays: presence-resync notices (the join and the leaves may come
    # as one), no join, no leave, no close; presence then shows it alone.
    got = events(far, lambda m: m["type"] == "presence-resync", timeout=30)
    got += quiet(far, 0.5)
    assert got and all(m == {"type": "presence-resync", "channel-id": "jl"} for m in got), got
    clients, _ = presence_all(far, "jl")
    assert list(clients) == [conn_id(far)] and near_id not in clients, clients
    w1 = srv.stats()["workers"][1]
    assert w1["presence-resyncs"] == len(got), w1
    # The filler gets all it was sent; nobody was closed.
    filler.sock.settimeout(30 * SLOW)
    assert sum(recv(filler)["type"] == "channel-message" for _ in range(total)) == total
    assert quiet(filler, 0.2) == []
    assert srv.stats()["workers"][1]["missed-disconnects"] == 0
    assert metric(srv, 'sente_lite_presence_resyncs_total{worker="1"}') == len(got)
    for ws in (far, filler, near, pub, late, mid):
        ws.close()


def test_join_storm_to_a_crowded_worker_closes_nobody(server_factory):
    """Review rg15 G1 (the reviewer's reproducer): joins to 300 rooms shared
    with a stopped worker whose inbox is over half full were 300 missed
    notes that lapped its note ring: it closed every subscriber 1013 -
    also filler, whose channel missed nothing.  Now they go into the
    inbox's presence set: 64 rooms fit, the rest overflow, and the worker
    tells every presence subscriber to ask presence again; nobody is
    closed, nothing is skipped."""
    srv = server_factory("--join-leave", "--worker-stall-ms", "30000",
                         "--worker-stall-kill-ms", "60000", workers=2)
    far = on_worker(srv, 1)
    rooms = [f"room{i}" for i in range(300)]
    for r in rooms:
        send(far, type="subscribe", **{"channel-id": r})
    far.sock.settimeout(30 * SLOW)
    assert all(recv(far)["success"] for _ in rooms)
    other0 = on_worker(srv, 0)
    for r in rooms:
        send(other0, type="subscribe", **{"channel-id": r})
    other0.sock.settimeout(30 * SLOW)
    assert all(recv(other0)["success"] for _ in rooms)
    filler = on_worker(srv, 1)
    sub(filler, "fill")
    near = on_worker(srv, 0)
    pub = on_worker(srv, 0)
    # far has heard other0 join each room: take those first.
    joins = 0
    while joins < len(rooms):
        joins += recv(far)["type"] == "join"
    pid = srv.stats()["workers"][1]["pid"]
    os.kill(pid, signal.SIGSTOP)
    try:
        for _ in range(4200):   # more than half of the inbox (8,192)
            send(pub, type="publish", **{"channel-id": "fill", "data": 0})
        pub.sock.settimeout(30 * SLOW)
        assert all(recv(pub)["success"] for _ in range(4200))
        for r in rooms:
            send(near, type="subscribe", **{"channel-id": r})
        near.sock.settimeout(30 * SLOW)
        assert all(recv(near)["success"] for _ in rooms)
    finally:
        os.kill(pid, signal.SIGCONT)
    # far: one presence-resync for each of its rooms (the overflow), no
    # close; none twice (review rh15 M1: the overflow's "all" covers the
    # slots, which were told again).
    told = []
    while len(set(told)) < len(rooms):
        _, op, payload = far.read_frame()
        assert op != 8, ("far closed", payload)
        m = json.loads(payload)
        if m["type"] == "presence-resync":
            told.append(m["channel-id"])
    told += [m["channel-id"] for m in quiet(far, 1.0) if m["type"] == "presence-resync"]
    assert sorted(told) == sorted(rooms), [r for r in set(told) if told.count(r) > 1]
    # filler gets every message, and no close.
    filler.sock.settimeout(30 * SLOW)
    got = 0
    while got < 4200:
        _, op, payload = filler.read_frame()
        assert op != 8, ("filler closed", payload)
        got += json.loads(payload)["type"] == "channel-message"
    w1 = srv.stats()["workers"][1]
    print("rg15 G1 worker 1:", {k: w1[k] for k in (
        "presence-resyncs", "presence-coalesced", "presence-overflows", "missed-disconnects",
        "inbox-skipped")})
    assert w1["missed-disconnects"] == 0 and w1["inbox-skipped"] == 0, w1
    assert w1["presence-overflows"] >= 1 and w1["presence-resyncs"] >= len(rooms), w1
    assert w1["presence-coalesced"] >= 0 and w1["presence-resync-failed"] == 0, w1
    assert metric(srv, 'sente_lite_presence_overflows_total{worker="1"}') >= 1
    assert metric(srv, 'sente_lite_missed_disconnects_total{worker="1"}') == 0
    for ws in (far, other0, filler, near, pub):
        ws.close()


def test_a_resync_that_cannot_be_built_closes_1013_and_is_counted(server_factory):
    """Review rg15 G3: a presence-resync the worker cannot build (out of
    memory; here the crash build's fault point) was dropped silently, and
    the subscriber's member list stayed wrong for good.  Now it is closed
    1013 (its resubscribe asks presence again) and the loss is counted;
    nobody else is touched."""
    srv = server_factory("--join-leave", "--worker-stall-ms", "30000",
                         "--worker-stall-kill-ms", "60000", workers=2, binary=CRASH_BIN,
                         env={"SL_CRASH_ARM": "1:presence-resync:1:fail"})
    far = on_worker(srv, 1)
    sub(far, "jl")
    filler = on_worker(srv, 1)
    sub(filler, "fill")
    near, pub = on_worker(srv, 0), on_worker(srv, 0)
    sub(near, "jl")
    assert recv(far)["type"] == "join"
    pid = srv.stats()["workers"][1]["pid"]
    os.kill(pid, signal.SIGSTOP)
    try:
        for _ in range(4200):   # more than half of the inbox (8,192)
            send(pub, type="publish", **{"channel-id": "fill", "data": 0})
        pub.sock.settimeout(30 * SLOW)
        assert all(recv(pub)["success"] for _ in range(4200))
        # A join worker 1's crowded inbox is not handed: a presence loss.
        assert ask(pub, type="subscribe", **{"channel-id": "jl"})["success"]
    finally:
        os.kill(pid, signal.SIGCONT)
    far.sock.settimeout(30 * SLOW)
    _, op, payload = far.read_frame()
    assert op == 8 and int.from_bytes(payload[:2], "big") == 1013, payload
    filler.sock.settimeout(30 * SLOW)
    got = 0
    while got < 4200:
        _, op, payload = filler.read_frame()
        assert op != 8, ("filler closed", payload)
        got += json.loads(payload)["type"] == "channel-message"
    w1 = wait_for(lambda: (lambda w: w if w["presence-resync-failed"] == 1 else None)(
        srv.stats()["workers"][1]), what="presence-resync-failed counted")
    assert w1["missed-disconnects"] == 1 and w1["presence-resyncs"] == 0, w1
    assert metric(srv, 'sente_lite_presence_resync_failed_total{worker="1"}') == 1
    for ws in (far, filler, near, pub):
        ws.close()


def test_a_resync_never_overtakes_an_older_join(server_factory):
    """Review rh15 H1 (the reviewer's reproducer): the presence-resync
    was sent at the first pop after a loss, ahead of older join / leave
    entries still queued; a client that asked presence then applied the
    stale join kept a ghost member for good.  Now the loss keeps its
    inbox position and the notice comes after them.  X (worker 0) joins
    while worker 1's inbox is under half full (queued), leaves when it is
    full (a presence loss); far (worker 1) does what the library does:
    on presence-resync it asks presence, replaces its list, applies the
    later deltas.  160 fillers make worker 1's drain take several turns,
    so far's presence request is answered in the middle of it."""
    srv = server_factory("--join-leave", "--worker-stall-ms", "30000",
                         "--worker-stall-kill-ms", "60000", workers=2)
    far = on_worker(srv, 1)
    sub(far, "room")
    fillers, spare = [], []
    while len(fillers) < 160:
        ws, status, w = upgrade(srv.port, None)
        assert status == 101
        if w["worker"] == 1:
            sub(ws, "fillA")
            fillers.append(ws)
        else:
            spare.append(ws)
    fb = on_worker(srv, 1)
    sub(fb, "fillB")
    pub, x = on_worker(srv, 0), on_worker(srv, 0)
    pid = srv.stats()["workers"][1]["pid"]
    os.kill(pid, signal.SIGSTOP)
    try:
        for _ in range(4000):
            send(pub, type="publish", **{"channel-id": "fillA", "data": 0})
        pub.sock.settimeout(60 * SLOW)
        assert all(recv(pub)["success"] for _ in range(4000))
        sub(x, "room")            # join X: queued (inbox under half full)
        x_id = conn_id(x)
        while True:               # fill worker 1's inbox
            send(pub, type="publish", **{"channel-id": "fillB", "data": 0})
            if not recv(pub)["success"]:
                break
        x.close()                 # leave X: into the presence set
        time.sleep(0.5)           # worker 0 handles the close
    finally:
        os.kill(pid, signal.SIGCONT)
    view, log = None, []
    far.sock.settimeout(60 * SLOW)
    while True:
        try:
            m = recv(far)
        except (socket.timeout, TimeoutError):
            break
        log.append(m["type"])
        if m["type"] == "presence-resync":
            send(far, type="presence", **{"channel-id": "room"})
        elif m["type"] == "presence-result":
            view = set(m["clients"])
        elif m["type"] == "join" and view is not None:
            view.add(m["info"]["conn-id"])
        elif m["type"] == "leave" and view is not None:
            view.discard(m["info"]["conn-id"])
        far.sock.settimeout(3)
    far.sock.settimeout(10 * SLOW)
    truth, _ = presence_all(far, "room")
    assert "presence-resync" in log and view is not None, log
    assert view == set(truth), ("ghost", view - set(truth), x_id, log)
    for ws in fillers + spare + [far, fb, pub]:
        ws.close()


def test_an_overflow_resyncs_only_join_leave_channels_once(server_factory):
    """Review rh15 M1 (the reviewer's reproducer): an overflow of the
    presence set told every channel of the worker, also one without
    join-leave (quiet:x), and the 64 slots again: 135 notices for 70
    rooms.  Now one per join-leave room, none for quiet:x."""
    srv = server_factory("--join-leave", "--namespace", "quiet:join-leave=false",
                         "--worker-stall-ms", "30000", "--worker-stall-kill-ms", "60000",
                         workers=2)
    far = on_worker(srv, 1)
    rooms = [f"room{i}" for i in range(70)]
    for r in rooms + ["quiet:x"]:
        sub(far, r)
    other0 = on_worker(srv, 0)
    for r in rooms:
        sub(other0, r)
    filler = on_worker(srv, 1)
    sub(filler, "fill")
    near, pub = on_worker(srv, 0), on_worker(srv, 0)
    quiet(far, 1.0)
    pid = srv.stats()["workers"][1]["pid"]
    os.kill(pid, signal.SIGSTOP)
    try:
        for _ in range(4200):   # more than half of the inbox (8,192)
            send(pub, type="publish", **{"channel-id": "fill", "data": 0})
        pub.sock.settimeout(30 * SLOW)
        assert all(recv(pub)["success"] for _ in range(4200))
        for r in rooms:         # 70 joins lost: 64 slots and an overflow
            sub(near, r)
    finally:
        os.kill(pid, signal.SIGCONT)
    far.sock.settimeout(30 * SLOW)
    chans = []
    while len(chans) < len(rooms):
        m = recv(far)
        if m["type"] == "presence-resync":
            chans.append(m["channel-id"])
    chans += [m["channel-id"] for m in quiet(far, 2.0) if m["type"] == "presence-resync"]
    w1 = srv.stats()["workers"][1]
    assert w1["presence-overflows"] >= 1, w1
    assert "quiet:x" not in chans, "a channel without join-leave got presence-resync"
    assert sorted(chans) == sorted(rooms), [r for r in set(chans) if chans.count(r) > 1]
    for ws in (far, other0, filler, near, pub):
        ws.close()
