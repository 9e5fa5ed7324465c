"""The operator listener (--ops-listen), --admin-token-file, and the admin
API's user calls: list a user's connections, unsubscribe a user from a
channel, close every connection of a user - on every worker."""
import json

from authkit import ask, keys, recv, upgrade  # noqa: F401
from conftest import wait_for
from wsraw import RawWS

OPS_PATHS = ["/health", "/stats", "/metrics", "/channels", "/dashboard", "/api/connections"]


def test_ops_listener_splits_the_paths(server_factory, tmp_path):
    token_file = tmp_path / "admin-token"
    token_file.write_text("file-t0ken\n")
    srv = server_factory("--admin-token-file", str(token_file), ops=True)
    auth = {"Authorization": "Bearer file-t0ken"}
    for p in OPS_PATHS:
        st, body, _ = srv.request("GET", p, headers=auth)  # on the ops listener
        assert st == 200, (p, st, body)
        st, body, _ = srv.request("GET", p, headers=auth, port=srv.port)  # public: hidden
        assert st == 404 and json.loads(body)["error"] == "not-found", p
    # The public side keeps the WebSocket and the pages; the ops side has
    # neither.
    for p in ("/demo", "/client.js"):
        assert srv.request("GET", p, port=srv.port)[0] == 200
        assert srv.request("GET", p)[0] == 404
    ws, status, w = upgrade(srv.port)
    assert status == 101 and w["type"] == "welcome"
    ws.close()
    ops_ws = RawWS(srv.ops_port)
    assert ops_ws.status == 404
    ops_ws.close()
    st, doc = srv.get_json("/stats")
    assert doc["server-config"]["ops-listen"] == {"host": "127.0.0.1", "port": srv.ops_port}
    assert doc["server-config"]["admin-token"] is True  # set (from the file), never shown
    assert "file-t0ken" not in json.dumps(doc)
    # The admin token from the file works; a wrong one does not.
    assert srv.request("GET", "/api/connections", headers={"Authorization": "Bearer x"})[0] == 401
    assert doc["errors"]["not-found"] >= len(OPS_PATHS) + 3


def on_worker(srv, worker, token):
    spare = []
    try:
        for _ in range(30):
            ws, status, w = upgrade(srv.port, token)
            assert status == 101
            if w["worker"] == worker:
                return ws, w["conn-id"]
            spare.append(ws)
        raise AssertionError("placement")
    finally:
        for s in spare:
            s.close()


def test_admin_user_calls_on_every_worker(server_factory, keys):
    srv = server_factory(*keys.flags("secret"), "--admin-token", "t0k", ops=True)
    auth = {"Authorization": "Bearer t0k"}
    a0, id0 = on_worker(srv, 0, keys.token(sub="alice"))
    a1, id1 = on_worker(srv, 1, keys.token(sub="alice"))
    bob, idb = on_worker(srv, 1, keys.token(sub="bob"))
    for c in (a0, a1, bob):
        assert ask(c, type="subscribe", **{"channel-id": "news"})["success"]
    # The connection listing names each connection's user.
    st, body, _ = srv.request("GET", "/api/connections", headers=auth)
    users = {c["conn-id"]: c.get("user") for c in json.loads(body)["connections"]}
    assert users == {id0: "alice", id1: "alice", idb: "bob"}
    st, body, _ = srv.request("GET", "/api/users/alice/connections", headers=auth)
    doc = json.loads(body)
    assert st == 200 and doc["user"] == "alice"
    assert sorted(c["conn-id"] for c in doc["connections"]) == sorted([id0, id1])
    assert {c["worker"] for c in doc["connections"]} == {0, 1}
    st, body, _ = srv.request("GET", "/api/users/nobody/connections", headers=auth)
    assert st == 200 and json.loads(body)["connections"] == []

    # Unsubscribe alice from "news" everywhere; bob stays.
    st, body, _ = srv.request("DELETE", "/api/users/alice/subscriptions/news", headers=auth)
    assert st == 200 and json.loads(body) == {"user": "alice", "unsubscribed": 2}
    for c in (a0, a1):
        m = recv(c)
        assert m["type"] == "unsubscribed" and m["channel-id"] == "news"
        assert ask(c, type="get-subscriptions")["subscriptions"] == []
    st, body, _ = srv.request("POST", "/api/channels/news/publish", body=b'"after"',
                              headers=auth)
    assert json.loads(body)["delivered-to"] == 1
    assert recv(bob)["data"] == "after"
    assert srv.request("DELETE", "/api/users/alice/subscriptions/none", headers=auth)[0] == 404
    assert srv.request("GET", "/api/users/alice/subscriptions/news", headers=auth)[0] == 405

    # Close every connection of alice, on both workers, with 1008.
    st, body, _ = srv.request("DELETE", "/api/users/alice/connections", headers=auth)
    assert st == 200 and json.loads(body) == {"user": "alice", "closed": 2}
    for c in (a0, a1):
        assert c.read_until_close()[0] == 1008
        c.close()
    wait_for(lambda: set(srv.stats()["access"]["users"]) == {"bob"}, what="alice gone")
    assert ask(bob, type="ping")["type"] == "pong"
    bob.close()
