"""Review r15 L6 against the real binary: join / leave frames are counted
in /stats workers[i] presence-events (and /metrics
sente_lite_presence_events_total), not in delivered, which counts channel
messages only."""
from authkit import recv, send  # noqa: F401
from conftest import CRASH_BIN, SLOW, wait_for
from test_permissions import on_worker
from test_presence import events, metric, reply, sub


def test_join_leave_counted_apart_from_delivered(server_factory):
    srv = server_factory("--join-leave", workers=1)
    watcher = on_worker(srv, 0)
    sub(watcher, "room")
    base = srv.stats()["workers"][0]
    joiner = on_worker(srv, 0)
    sub(joiner, "room")
    events(watcher, lambda m: m["type"] == "join")
    assert reply(joiner, "unsubscription-result", type="unsubscribe",
                 **{"channel-id": "room"})["success"]
    events(watcher, lambda m: m["type"] == "leave")
    wait_for(lambda: srv.stats()["workers"][0]["presence-events"] >= base["presence-events"] + 2,
             timeout=10 * SLOW, what="the join and the leave counted")
    w = srv.stats()["workers"][0]
    assert w["presence-events"] == base["presence-events"] + 2, w
    assert w["delivered"] == base["delivered"], w
    # A channel message still counts in delivered, not in presence-events.
    sub(joiner, "room")
    events(watcher, lambda m: m["type"] == "join")
    assert reply(joiner, "publish-result", type="publish",
                 **{"channel-id": "room", "data": 1})["success"]
    events(watcher, lambda m: m.get("data") == 1)
    wait_for(lambda: srv.stats()["workers"][0]["delivered"] >= base["delivered"] + 1,
             timeout=10 * SLOW, what="the message counted")
    w = srv.stats()["workers"][0]
    assert w["presence-events"] == base["presence-events"] + 3, w
    assert metric(srv, 'sente_lite_presence_events_total{worker="0"}') == w["presence-events"]
    for ws in (watcher, joiner):
        ws.close()


def test_presence_request_walk_is_bounded(server_factory):
    """Review rf15 F5: one presence request walks at most a bound of
    subscriber nodes, skipped ones included (SL_PRESENCE_WALK_MAX; the crash
    build takes it from SL_PRESENCE_PAGE_WALK: 5 here).  Eight subscribers,
    pages of 2: the newest five are listed, the page reaching the bound
    ends with truncated and no next-cursor; a far cursor gets an empty
    truncated page (it walked five nodes, not eight)."""
    srv = server_factory(workers=1, binary=CRASH_BIN, env={"SL_PRESENCE_PAGE_WALK": "5"})
    subs = []
    for _ in range(8):
        ws = on_worker(srv, 0)
        sub(ws, "room")
        subs.append(ws)
    q = subs[0]
    seen, cursor, pages = [], None, []
    while True:
        msg = {"type": "presence", "channel-id": "room", "limit": 2}
        if cursor is not None:
            msg["cursor"] = cursor
        r = reply(q, "presence-result", **msg)
        assert r["success"], r
        pages.append(r)
        seen += list(r["clients"])
        cursor = r["next-cursor"]
        if cursor is None:
            break
    assert len(seen) == len(set(seen)) == 5, pages
    assert pages[-1].get("truncated") is True and len(pages[-1]["clients"]) == 1, pages
    assert all("truncated" not in p for p in pages[:-1]), pages
    far = reply(q, "presence-result", type="presence", **{"channel-id": "room", "cursor": 1})
    assert far["clients"] == {} and far["next-cursor"] is None and far["truncated"] is True, far
    # Within the bound nothing is truncated.
    subs[-1].close()
    for ws in subs[1:4]:
        assert reply(ws, "unsubscription-result", type="unsubscribe",
                     **{"channel-id": "room"})["success"]
    wait_for(lambda: len(reply(q, "presence-result", type="presence",
                               **{"channel-id": "room"})["clients"]) == 4,
             timeout=10 * SLOW, what="four left")
    r = reply(q, "presence-result", type="presence", **{"channel-id": "room"})
    assert "truncated" not in r and r["next-cursor"] is None, r
    for ws in subs[:-1]:
        ws.close()
