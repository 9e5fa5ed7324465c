"""Rate limits with exact counts, and connections per IP address and per
user across workers - including a worker killed while holding places,
whose places the master gives back (README "Access control")."""
import json
import os
import signal
import time

from authkit import ask, keys, recv, send, upgrade  # noqa: F401
from conftest import SLOW, wait_for
from wsraw import OP_CLOSE, OP_TEXT, frame


def burst(ws, msgs):
    """Send every message in one write: they arrive in one read, so the
    server sees them at one instant and the counts are exact."""
    ws.send(b"".join(frame(OP_TEXT, json.dumps(m).encode()) for m in msgs))


def read_all(ws):
    """Every message until the close frame: (messages, close code)."""
    out = []
    while True:
        _, op, payload = ws.read_frame()
        if op == OP_CLOSE:
            return out, int.from_bytes(payload[:2], "big")
        if op == OP_TEXT:
            out.append(json.loads(payload))


def test_message_rate_limit_exact(server_factory):
    srv = server_factory("--max-messages-per-second", "1", "--message-burst", "5")
    ws, status, _ = upgrade(srv.port)
    assert status == 101
    # 5 pass (the burst), the next 5 are refused with rate-limited (the
    # strikes bucket, same size), the 11th closes the connection with 1008.
    burst(ws, [{"type": "ping", "timestamp": i} for i in range(12)])
    msgs, code = read_all(ws)
    assert [m["type"] for m in msgs] == ["pong"] * 5 + ["error"] * 5
    assert [m["original-timestamp"] for m in msgs[:5]] == [0, 1, 2, 3, 4]
    assert all(m["reason"] == "rate-limited" for m in msgs[5:])
    assert "--max-messages-per-second" in msgs[5]["message"]
    assert code == 1008
    ws.close()
    errs = srv.stats()["errors"]
    assert errs["rate-limited"] == 5 and errs["rate-limit-disconnect"] == 1
    wait_for(lambda: any("rate-limited]" in l and "--max-messages-per-second" in l
                         for l in srv.log_lines()), what="rate-limited in the log")

    # The bucket refills: a client that keeps to the rate is never refused.
    ws, _, _ = upgrade(srv.port)
    burst(ws, [{"type": "ping"}] * 5)
    for _ in range(5):
        assert recv(ws)["type"] == "pong"
    time.sleep(1.2)
    assert ask(ws, type="ping")["type"] == "pong"
    ws.close()


def test_publish_rate_limit_exact(server_factory):
    srv = server_factory("--max-publishes-per-second", "1", "--publish-burst", "2")
    ws, _, _ = upgrade(srv.port)
    assert ask(ws, type="subscribe", **{"channel-id": "c"})["success"]
    pub = {"type": "publish", "channel-id": "c", "data": 1}
    # Other messages are not limited: 2 publishes pass, 2 are refused, the
    # ping in between and after is answered, nothing more is published.
    burst(ws, [pub, pub, {"type": "ping"}, pub, pub, {"type": "ping"}])
    types = []
    while len([t for t in types if t != "channel-message"]) < 6:
        m = recv(ws)
        types.append(m["type"] if m["type"] != "error" else m["reason"])
    replies = [t for t in types if t != "channel-message"]
    assert replies == ["publish-result", "publish-result", "pong", "rate-limited",
                       "rate-limited", "pong"]
    assert types.count("channel-message") <= 2
    time.sleep(1.2)  # one publish earned back
    r = ask(ws, type="publish", **{"channel-id": "c", "data": 2})
    while r["type"] == "channel-message":
        r = recv(ws)
    assert r["type"] == "publish-result" and r["success"]
    st = srv.stats()
    assert st["errors"]["rate-limited"] == 2 and st["published"] == 3
    ws.close()


def test_connections_per_ip_across_workers(server_factory):
    srv = server_factory("--max-connections-per-ip", "2", ops=True)
    a, _, wa = upgrade(srv.port, source="127.0.0.2")
    b, _, wb = upgrade(srv.port, source="127.0.0.2")
    assert {wa["worker"], wb["worker"]} == {0, 1}  # one on each worker
    _, status, doc = upgrade(srv.port, source="127.0.0.2")
    assert status == 429 and doc["error"] == "max-connections-per-ip"
    c, status, _ = upgrade(srv.port, source="127.0.0.3")  # another address
    assert status == 101
    assert srv.stats()["access"]["connections-per-ip"] == {"127.0.0.2": 2, "127.0.0.3": 1}
    a.close()

    def admitted():
        ws, status, _ = upgrade(srv.port, source="127.0.0.2")
        return ws if status == 101 else None
    d = wait_for(admitted, what="a place after a close")
    for x in (b, c, d):
        x.close()
    wait_for(lambda: srv.stats()["access"]["connections-per-ip"] == {}, what="no places held")
    assert srv.stats()["errors"]["max-connections-per-ip"] >= 1


def test_connections_per_user_across_workers(server_factory, keys):
    srv = server_factory(*keys.flags("secret"), "--max-connections-per-user", "2", ops=True)
    tok = keys.token(sub="alice")
    a, _, wa = upgrade(srv.port, tok)
    b, _, wb = upgrade(srv.port, tok, via="query")
    assert {wa["worker"], wb["worker"]} == {0, 1}
    _, status, doc = upgrade(srv.port, tok)
    assert status == 429 and doc["error"] == "max-connections-per-user"
    # Through the authenticate message: refused, then closed with 4429.
    c, status, _ = upgrade(srv.port)
    r = ask(c, type="authenticate", token=tok)
    assert r["success"] is False and r["reason"] == "max-connections-per-user"
    assert c.read_until_close()[0] == 4429
    c.close()
    # Another user is not affected; /stats shows each connection's user.
    bob, status, _ = upgrade(srv.port, keys.token(sub="bob"))
    assert status == 101
    users = srv.stats()["access"]["users"]
    assert sorted(users["alice"]) == sorted([wa["conn-id"], wb["conn-id"]])
    assert list(users) == ["alice", "bob"] or set(users) == {"alice", "bob"}
    assert srv.stats()["errors"]["max-connections-per-user"] == 2
    for x in (a, b, bob):
        x.close()


def test_killed_worker_gives_back_its_places(server_factory, keys):
    srv = server_factory(*keys.flags("secret"), "--max-connections-per-ip", "2",
                         "--max-connections-per-user", "2", ops=True)
    tok = keys.token(sub="kim")
    a, _, wa = upgrade(srv.port, tok, source="127.0.0.4")
    b, _, wb = upgrade(srv.port, tok, source="127.0.0.4")
    assert {wa["worker"], wb["worker"]} == {0, 1}
    assert upgrade(srv.port, tok, source="127.0.0.5")[1] == 429  # kim is full
    assert upgrade(srv.port, keys.token(sub="lee"), source="127.0.0.4")[1] == 429  # .4 is full
    victim = srv.worker_pids()[wa["worker"]]
    os.kill(victim, signal.SIGKILL)
    # The master cleans up after the dead worker: its connection's places
    # (one for 127.0.0.4, one for kim) come back, the other worker's stay.
    wait_for(lambda: srv.stats()["access"].get("connections-per-ip") == {"127.0.0.4": 1},
             what="the dead worker's place given back")
    assert list(srv.stats()["access"]["users"]) == ["kim"]
    assert srv.stats()["access"]["users"]["kim"] == [wb["conn-id"]]
    c, status, _ = upgrade(srv.port, tok, source="127.0.0.4")
    assert status == 101
    assert upgrade(srv.port, tok, source="127.0.0.6")[1] == 429  # exactly 2 again
    assert upgrade(srv.port, keys.token(sub="lee"), source="127.0.0.4")[1] == 429
    for x in (a, b, c):
        x.close()


def test_per_ip_limit_counts_the_client_behind_a_trusted_proxy(server_factory):
    """Behind a --trusted-proxy the place is the client's (X-Forwarded-For,
    as the access log reads it), not the proxy's: otherwise every client of
    the proxy would share one count.  From an untrusted peer the header is
    ignored."""
    from wsraw import RawWS
    srv = server_factory("--max-connections-per-ip", "1", "--trusted-proxy", "127.0.0.2",
                         ops=True)

    def via_proxy(client, source="127.0.0.2"):
        return RawWS(srv.port, headers={"X-Forwarded-For": client}, source=source)
    a = via_proxy("198.51.100.1")
    b = via_proxy("198.51.100.2")
    assert (a.status, b.status) == (101, 101)
    assert via_proxy("198.51.100.1").status == 429
    # Not a trusted proxy: its own address counts, whatever the header says.
    c = via_proxy("198.51.100.3", source="127.0.0.3")
    assert c.status == 101
    assert via_proxy("198.51.100.4", source="127.0.0.3").status == 429
    assert srv.stats()["access"]["connections-per-ip"] == {
        "198.51.100.1": 1, "198.51.100.2": 1, "127.0.0.3": 1}
    for x in (a, b, c):
        x.close()


def test_refused_upgrades_in_handshake_failures(server_factory, keys):
    """401 and 429 are upgrade refusals like 400/403/426/503: counted in
    /stats handshake-failures and /metrics sente_lite_handshake_failures_total."""
    srv = server_factory(*keys.flags("secret"), "--max-connections-per-ip", "1",
                         "--max-connections-per-user", "1")
    assert upgrade(srv.port, "not.a.token", source="127.0.0.2")[1] == 401
    a, st, _ = upgrade(srv.port, keys.token(sub="ann"), source="127.0.0.2")
    assert st == 101
    assert upgrade(srv.port, keys.token(sub="bo"), source="127.0.0.2")[1] == 429  # per IP
    assert upgrade(srv.port, keys.token(sub="ann"), source="127.0.0.3")[1] == 429  # per user
    hs = srv.stats()["handshake-failures"]
    assert (hs["unauthorized"], hs["max-connections-per-ip"], hs["max-connections-per-user"]) \
        == (1, 1, 1), hs
    st, body, _ = srv.request("GET", "/metrics")
    assert 'sente_lite_handshake_failures_total{reason="unauthorized"} 1' in body.decode()
    a.close()
