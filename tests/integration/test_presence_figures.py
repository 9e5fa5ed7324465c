"""Review r15 L6 against the real binary: join / leave frames are counted
in /stats workers[i] presence-events (and /metrics
sente_lite_presence_events_total), not in delivered, which counts channel
messages only."""
from authkit import recv, send  # noqa: F401
from conftest import SLOW, wait_for
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
