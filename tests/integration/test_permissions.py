"""Permissions across two workers (README "Access control"): every
namespace key (subscribe, publish, rpc) x every value x anonymous /
authenticated / token-granted / subscribed connections, rpc-response,
user-limited channels, list-channels, strict namespaces, namespace channel
defaults, and what is counted and logged.  The actor and the other party
(subscriber, responder) always sit on different workers."""
import json
import time

import pytest

from authkit import ask, keys, recv, send, upgrade  # noqa: F401
from conftest import wait_for

VALUES = ["anyone", "authenticated", "token", "subscribers", "none"]
KEYS = ["subscribe", "publish", "rpc"]


def namespaces():
    out = []
    for k in KEYS:
        for v in VALUES:
            if k == "subscribe" and v == "subscribers":
                continue
            out += ["--namespace", f"{k}-{v}:{k}={v}"]
    return out


def on_worker(srv, worker, token=None):
    """A connection (anonymous, or with `token`) on the given worker."""
    spare = []
    try:
        for _ in range(30):
            ws, status, w = upgrade(srv.port, token)
            assert status == 101, w
            if w["worker"] == worker:
                return ws
            spare.append(ws)
        raise AssertionError(f"no connection landed on worker {worker}")
    finally:
        for s in spare:
            s.close()


# Expected answer for (value, who, subscribed): None = allowed, else reason.
EXPECT = {
    "anyone": {},
    "authenticated": {"anon": "unauthenticated"},
    "token": {"anon": "unauthenticated", "authed": "permission-denied"},
    "subscribers": {"anon": "permission-denied", "authed": "permission-denied",
                    "granted": "permission-denied"},
    "none": {"anon": "permission-denied", "authed": "permission-denied",
             "granted": "permission-denied"},
}


def expected(value, who, subscribed):
    if value == "subscribers" and subscribed:
        return None
    if value == "none":
        return "permission-denied"
    return EXPECT[value].get(who)


def test_permission_matrix_across_workers(server_factory, keys):
    srv = server_factory(*keys.flags("secret"), "--allow-anonymous", "--log-level", "info",
                         *namespaces())
    chans = [f"{k}-{v}:room" for k in KEYS for v in VALUES] + \
        [f"subscribe-{v}:dm#alice,svc" for v in VALUES]
    tokens = {
        "anon": None,
        "authed": keys.token(sub="alice"),
        "granted": keys.token(sub="bob", channels=chans, publish=chans),
    }
    # The other party, on worker 0: subscribes to each publish-* and rpc-*
    # channel with a granted token (subscribe is "anyone" there anyway).
    other = on_worker(srv, 0, keys.token(sub="svc", channels=chans, publish=chans))
    for k in ("publish", "rpc"):
        for v in VALUES:
            r = ask(other, type="subscribe", **{"channel-id": f"{k}-{v}:room"})
            assert r["success"], r
    refused = {"unauthenticated": 0, "permission-denied": 0}
    checked = 0
    for who, tok in tokens.items():
        for subscribed in (False, True):
            actor = on_worker(srv, 1, tok)
            for k in KEYS:
                for v in VALUES:
                    if k == "subscribe" and v == "subscribers":
                        continue
                    ch = f"{k}-{v}:room"
                    if subscribed and k != "subscribe":
                        r = ask(actor, type="subscribe", **{"channel-id": ch})
                        assert r["success"], r
                    want = expected(v, who, subscribed) if k != "subscribe" else \
                        expected(v, who, False)
                    what = (who, "subscribed" if subscribed else "not subscribed", ch)
                    if k == "subscribe":
                        r = ask(actor, type="subscribe", **{"channel-id": ch})
                        ok = r["success"]
                        reason = r.get("reason")
                        if ok:
                            ask(actor, type="unsubscribe", **{"channel-id": ch})
                    elif k == "publish":
                        r = ask(actor, type="publish", **{"channel-id": ch, "data": {"n": 1}})
                        ok = r["success"]
                        reason = r.get("reason")
                        if ok:  # delivered to the other worker's subscriber
                            assert r["delivered-to"] == (2 if subscribed else 1), (what, r)
                            if subscribed:  # and to ourselves, after the reply
                                assert recv(actor)["type"] == "channel-message"
                            m = recv(other)
                            assert m["type"] == "channel-message" and m["channel-id"] == ch
                    else:
                        r = ask(actor, type="rpc-request",
                                **{"channel-id": ch, "data": {"q": 1}, "timeout-ms": 60000})
                        ok = r["delivery"]["success"]
                        reason = r["delivery"].get("reason")
                        if ok:
                            req = recv(other)
                            assert req["type"] == "rpc-request" and req["channel-id"] == ch
                            ans = ask(other, type="rpc-response",
                                      **{"request-id": req["request-id"], "data": {"a": 2}})
                            assert ans["success"], ans
                            got = recv(actor)
                            assert got["type"] == "rpc-response" and got["data"] == {"a": 2}
                    assert (None if ok else reason) == want, (what, r)
                    if not ok:
                        refused[reason] += 1
                    checked += 1
            actor.close()
    # User-limited channels in every subscribe-* namespace: the user list
    # decides, whatever the value (alice listed; bob's token lists the
    # channel but bob is not in the list; anonymous).
    for v in VALUES:
        if v == "subscribers":
            continue
        ch = f"subscribe-{v}:dm#alice,svc"
        for who, want in (("authed", None), ("granted", "permission-denied"),
                          ("anon", "unauthenticated")):
            actor = on_worker(srv, 1, tokens[who])
            r = ask(actor, type="subscribe", **{"channel-id": ch})
            assert (None if r["success"] else r["reason"]) == want, (who, ch, r)
            if want:
                refused[want] += 1
            actor.close()
            checked += 1
    other.close()
    assert checked == 2 * 3 * 14 + 4 * 3
    errs = srv.stats()["errors"]
    assert errs["unauthenticated"] == refused["unauthenticated"]
    assert errs["permission-denied"] == refused["permission-denied"]
    # Each refusal is in the log with conn-id, user, channel and action -
    # written by the logger process, which may lag behind under load.
    def logged():
        return [json.loads(l.split("] ", 1)[1]) for l in srv.log_lines()
                if "permission-denied]" in l]
    wait_for(lambda: len(logged()) >= sum(refused.values()), timeout=10,
             what="every refusal logged")
    lines = logged()
    assert len(lines) == sum(refused.values())
    assert {"conn-id", "user", "channel-id", "action", "reason"} <= set(lines[0])
    assert {l["user"] for l in lines} == {"", "alice", "bob"}


def test_rpc_response_only_from_subscribers(server_factory, keys):
    srv = server_factory(*keys.flags("secret"), "--allow-anonymous", "--namespace",
                         "svc:rpc=anyone")
    requester = on_worker(srv, 0)
    service = on_worker(srv, 1, keys.token(sub="svc"))
    intruder = on_worker(srv, 1, keys.token(sub="mallory"))
    assert ask(service, type="subscribe", **{"channel-id": "svc:time"})["success"]
    r = ask(requester, type="rpc-request", **{"channel-id": "svc:time", "data": {}})
    rid = r["request-id"]
    assert recv(service)["request-id"] == rid
    # Knowing the request id is not enough: only a subscriber may answer.
    r = ask(intruder, type="rpc-response", **{"request-id": rid, "data": "forged"})
    assert r == {"type": "rpc-response-result", "request-id": rid, "success": False,
                 "reason": "permission-denied"}
    r = ask(service, type="rpc-response", **{"request-id": rid, "data": "12:00"})
    assert r["success"]
    got = recv(requester)
    assert got["type"] == "rpc-response" and got["data"] == "12:00"
    for c in (requester, service, intruder):
        c.close()


def test_user_limited_channels_and_listing(server_factory, keys):
    srv = server_factory(*keys.flags("secret"), "--allow-anonymous", "--namespace",
                         "dm:subscribe=none,publish=authenticated", ops=True)
    alice = on_worker(srv, 0, keys.token(sub="alice"))
    bob = on_worker(srv, 1, keys.token(sub="bob"))
    carol = on_worker(srv, 1, keys.token(sub="carol"))
    svc = on_worker(srv, 0, keys.token(sub="notifier", publish=["dm:chat#*"]))
    anon = on_worker(srv, 0)
    ch = "dm:chat#alice,bob"
    # The user list decides, whatever the namespace says (subscribe=none).
    assert ask(alice, type="subscribe", **{"channel-id": ch})["success"]
    assert ask(bob, type="subscribe", **{"channel-id": ch})["success"]
    r = ask(carol, type="subscribe", **{"channel-id": ch})
    assert r["success"] is False and r["reason"] == "permission-denied"
    r = ask(anon, type="subscribe", **{"channel-id": ch})
    assert r["success"] is False and r["reason"] == "unauthenticated"
    assert ask(carol, type="subscribe", **{"channel-id": "notes#carol"})["success"]
    # Writing: a listed user, or a token whose publish claim names the
    # channel, and the namespace's rule as well.  carol (authenticated but
    # not listed) may not inject, nor learn who is online from delivered-to.
    r = ask(carol, type="publish", **{"channel-id": ch, "data": "reset your password"})
    assert r["success"] is False and r["reason"] == "permission-denied"
    r = ask(anon, type="publish", **{"channel-id": ch, "data": "hi"})
    assert r["reason"] == "unauthenticated"
    r = ask(bob, type="publish", **{"channel-id": ch, "data": "hi", "exclude-sender": True})
    assert r["success"] and r["delivered-to"] == 1
    assert recv(alice)["data"] == "hi"
    r = ask(svc, type="publish", **{"channel-id": ch, "data": "from the service"})
    assert r["success"] and r["delivered-to"] == 2
    assert recv(alice)["data"] == "from the service" and recv(bob)["data"] == "from the service"
    r = ask(carol, type="rpc-request", **{"channel-id": ch, "data": {}})
    assert r["delivery"]["reason"] == "permission-denied"
    # list-channels: only what one may subscribe to.
    assert set(ask(alice, type="list-channels")["channels"]) == {ch}
    assert set(ask(carol, type="list-channels")["channels"]) == {"notes#carol"}
    assert ask(anon, type="list-channels")["channels"] == {}
    # The operators' /channels shows everything.
    assert set(srv.get_json("/channels")[1]["channels"]) == {ch, "notes#carol"}
    for c in (alice, bob, carol, svc, anon):
        c.close()


def test_strict_namespaces_and_channel_defaults(server_factory, keys):
    srv = server_factory(*keys.flags("secret"), "--allow-anonymous", "--strict-namespaces",
                         "--namespace", "small:max-subscribers=1,message-retention=2",
                         "--namespace", "fixed:auto-create=false", "--namespace",
                         "ro:publish=none", "--admin-token", "t0k")
    a = on_worker(srv, 0)
    b = on_worker(srv, 1)
    r = ask(a, type="subscribe", **{"channel-id": "nowhere:x"})
    assert r["success"] is False and r["reason"] == "unknown-namespace"
    r = ask(a, type="publish", **{"channel-id": "nowhere:x", "data": 1})
    assert r["reason"] == "unknown-namespace"
    assert ask(a, type="subscribe", **{"channel-id": "plain"})["success"]  # default namespace
    # Channels auto-created in a namespace take its defaults.
    assert ask(a, type="subscribe", **{"channel-id": "small:x"})["success"]
    r = ask(b, type="subscribe", **{"channel-id": "small:x"})
    assert r["success"] is False and r["reason"] == "max-subscribers-reached"
    cfg = srv.get_json("/channels")[1]["channels"]["small:x"]["config"]
    assert cfg["max-subscribers"] == 1 and cfg["message-retention"] == 2
    r = ask(a, type="subscribe", **{"channel-id": "fixed:x"})
    assert r["success"] is False and r["reason"] == "channel-not-found"
    # The admin API acts as the server: it creates and publishes anywhere.
    auth = {"Authorization": "Bearer t0k"}
    assert srv.request("POST", "/api/channels/fixed:x", headers=auth)[0] == 201
    assert ask(b, type="subscribe", **{"channel-id": "ro:x"})["success"]
    r = ask(b, type="publish", **{"channel-id": "ro:x", "data": 1})
    assert r["reason"] == "permission-denied"
    st, body, _ = srv.request("POST", "/api/channels/ro:x/publish", body=b'"from admin"',
                              headers=auth)
    assert st == 200 and json.loads(body)["delivered-to"] == 1
    assert recv(b)["data"] == "from admin"
    errs = srv.stats()["errors"]
    assert errs["unknown-namespace"] == 2 and errs["permission-denied"] == 1
    a.close()
    b.close()
