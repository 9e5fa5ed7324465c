"""Access control under a hostile peer (the independent review of issue 14,
/work/review/r14-findings.md): what a user-limited channel does and does
not override, failed authentications, a refresh that narrows the grants,
who may answer RPC requests, who is shown in /stats, expiry at every
message, the per-IP key of IPv6 and unreadable addresses, a users table
that cannot take a connection, broadcasts, refusal texts, and key reloads
that every process must agree on.  Each test names the finding it guards."""
import json
import os
import signal
import socket
import subprocess
import threading
import time

import jwt

from authkit import ask, keys, recv, send, upgrade  # noqa: F401
from conftest import BIN, SLOW, wait_for
from wsraw import OP_CLOSE, OP_TEXT, RawWS, body_of, frame, read_response


def log_events(srv, name):
    """The JSON bodies of the log's `name` events."""
    return [json.loads(l.split("] ", 1)[1]) for l in srv.log_lines() if f"{name}]" in l]


def first_frame(ws):
    """(opcode, payload) of the next frame, control frames included."""
    _, op, payload = ws.read_frame()
    return op, payload


# --------------------------------------------------------------- finding 2

def test_user_limited_channels_are_created_and_bounded_like_any(server_factory, keys):
    """'#' lets the listed users subscribe whatever the namespace's subscribe
    rule says - and nothing more: the namespace's auto-create, the
    per-connection creation quota and the linger after which an empty
    channel is removed apply to user-limited channels as to any other."""
    srv = server_factory(*keys.flags("secret"), "--namespace",
                         "admin:subscribe=none,publish=none,auto-create=false", "--namespace",
                         "locked:subscribe=none", "--channel-creations-per-minute", "3",
                         "--channel-linger-ms", "200", ops=True)
    m, st, _ = upgrade(srv.port, keys.token(sub="mallory"))
    assert st == 101
    # auto-create=false: a '#' id does not create the channel.
    r = ask(m, type="subscribe", **{"channel-id": "admin:junk#mallory"})
    assert (r["success"], r["reason"]) == (False, "channel-not-found")
    # subscribe=none, but mallory is listed: allowed, up to the quota.
    for i in range(3):
        r = ask(m, type="subscribe", **{"channel-id": f"locked:j{i}#mallory"})
        assert r["success"], r
    r = ask(m, type="subscribe", **{"channel-id": "locked:j3#mallory"})
    assert (r["success"], r["reason"]) == (False, "too-many-channels")
    assert srv.stats()["errors"]["too-many-channels"] == 1
    # Left empty, they are removed after the linger.
    for i in range(3):
        assert ask(m, type="unsubscribe", **{"channel-id": f"locked:j{i}#mallory"})["success"]
    wait_for(lambda: not any(c.startswith("locked:") for c in
                             srv.get_json("/channels")[1]["channels"]),
             timeout=10, what="the user-limited channels reaped")
    m.close()


# --------------------------------------------------------------- finding 3

def test_failed_authentications_close_the_connection(server_factory, keys):
    srv = server_factory(*keys.flags("secret"), "--allow-anonymous", workers=1)
    ws, st, _ = upgrade(srv.port)
    bad = keys.token()[:-2] + "AA"
    for i in range(2):
        r = ask(ws, type="authenticate", token=bad)
        assert (r["success"], r["reason"]) == (False, "invalid-token")
    assert ask(ws, type="ping")["type"] == "pong"  # still open after two
    # A good token resets nothing: the count is of failures.
    assert ask(ws, type="authenticate", token=keys.token(sub="al"))["success"]
    r = ask(ws, type="authenticate", token=keys.token(sub="other"))
    assert (r["success"], r["reason"]) == (False, "user-mismatch")  # the third failure
    code, reason = ws.read_until_close()
    assert (code, reason) == (4401, b"too many failed authentications")
    ws.close()
    errs = srv.stats()["errors"]
    assert errs["authentication-failures-disconnect"] == 1
    assert errs["invalid-token"] == 2 and errs["user-mismatch"] == 1


def test_authentication_failures_are_logged_within_a_budget(server_factory, keys):
    """A flood of bad tokens is counted in full, but logged at most 10 times
    a second per worker; the logged events say how many were left out."""
    srv = server_factory(*keys.flags("secret"), "--allow-anonymous", "--log-level", "info",
                         workers=1)
    conns = [upgrade(srv.port)[0] for _ in range(20)]
    bad = keys.token()[:-2] + "AA"
    msg = frame(OP_TEXT, json.dumps({"type": "authenticate", "token": bad}).encode())
    t0 = time.monotonic()
    for ws in conns:
        ws.send(msg * 3)
    for ws in conns:
        assert ws.read_until_close()[0] == 4401
        ws.close()
    elapsed = time.monotonic() - t0
    assert srv.stats()["errors"]["invalid-token"] == 60
    wait_for(lambda: log_events(srv, "authentication-failed"), what="the log lines")
    time.sleep(0.2)
    lines = log_events(srv, "authentication-failed")
    windows = int(elapsed) + 2  # the 1-s windows the flood can have touched
    assert len(lines) <= 10 * windows and len(lines) < 60, (len(lines), elapsed)
    assert all("suppressed" in l for l in lines)
    assert len(lines) + sum(l["suppressed"] for l in lines) <= 60


# --------------------------------------------------------------- finding 4

def test_refresh_drops_subscriptions_the_new_token_does_not_allow(server_factory, keys):
    srv = server_factory(*keys.flags("secret"), "--allow-anonymous", "--admin-token", "t0k",
                         "--namespace", "vip:subscribe=token", "--namespace",
                         "chatops:subscribe=token", workers=1)
    alice, st, _ = upgrade(srv.port, keys.token(sub="alice", channels=["vip:*", "chat*"]))
    for ch in ("vip:room", "vip:lounge", "news"):
        assert ask(alice, type="subscribe", **{"channel-id": ch})["success"]
    # A prefix does not reach into another namespace (finding 17).
    r = ask(alice, type="subscribe", **{"channel-id": "chatops:secret"})
    assert (r["success"], r["reason"]) == (False, "permission-denied")
    r = ask(alice, type="authenticate", token=keys.token(sub="alice", channels=["vip:room"]))
    assert r["type"] == "authenticate-result" and r["success"]
    notice = recv(alice)
    assert notice == {"type": "unsubscribed", "channel-id": "vip:lounge",
                      "reason": "permission-revoked",
                      "message": "the refreshed token no longer allows this channel"}
    subs = ask(alice, type="get-subscriptions")["subscriptions"]
    assert sorted(subs) == ["news", "vip:room"]
    # Nothing published there reaches her any more.
    auth = {"Authorization": "Bearer t0k"}
    st, body, _ = srv.request("POST", "/api/channels/vip:lounge/publish", body=b'"secret"',
                              headers=auth)
    assert st == 200 and json.loads(body)["delivered-to"] == 0
    assert ask(alice, type="ping")["type"] == "pong"
    assert srv.stats()["errors"]["permission-revoked"] == 1
    alice.close()


# --------------------------------------------------------------- finding 5

def test_rpc_respond_restricts_who_may_answer(server_factory, keys):
    srv = server_factory(*keys.flags("secret"), "--allow-anonymous", "--namespace",
                         "svc:publish=token,rpc=authenticated,rpc-respond=token", workers=1)
    service, _, _ = upgrade(srv.port, keys.token(sub="bank", publish=["svc:*"]))
    reader, _, _ = upgrade(srv.port)  # anonymous: may subscribe (the default)
    carol, _, _ = upgrade(srv.port, keys.token(sub="carol"))
    for c in (service, reader):
        assert ask(c, type="subscribe", **{"channel-id": "svc:bank"})["success"]
    r = ask(carol, type="rpc-request", **{"channel-id": "svc:bank", "data": {"q": "balance"}})
    rid = r["request-id"]
    assert recv(reader)["request-id"] == rid  # readers see requests...
    r = ask(reader, type="rpc-response", **{"request-id": rid, "data": {"balance": 1e9}})
    assert (r["success"], r["reason"]) == (False, "unauthenticated")  # ...and may not answer
    assert recv(service)["request-id"] == rid
    assert ask(service, type="rpc-response", **{"request-id": rid, "data": {"balance": 3}})[
        "success"]
    got = recv(carol)
    assert got["type"] == "rpc-response" and got["data"] == {"balance": 3}
    for c in (service, reader, carol):
        c.close()


# --------------------------------------------------------------- finding 7

def test_stats_shows_who_is_connected_to_operators_only(server_factory, keys):
    srv = server_factory(*keys.flags("secret"), "--allow-anonymous", "--max-connections-per-ip",
                         "5", "--admin-token", "t0k")
    alice, _, _ = upgrade(srv.port, keys.token(sub="alice@example.com"))
    anon, _, _ = upgrade(srv.port)
    for ch in ("notifications#alice@example.com", "news"):
        assert ask(alice, type="subscribe", **{"channel-id": ch})["success"]
        assert ask(alice, type="publish", **{"channel-id": ch, "data": 1})["success"]
        recv(alice)
    auth = {"Authorization": "Bearer t0k"}

    def get(path, headers=None):
        st, body, _ = srv.request("GET", path, headers=headers)
        assert st == 200
        return body.decode()
    # Anyone on the public port: counts, no user id, no address.
    for path in ("/stats", "/channels", "/metrics"):
        text = get(path)
        assert "alice" not in text, (path, text[:300])
    access = json.loads(get("/stats"))["access"]
    assert access == {"authenticated-connections": 1, "anonymous-connections": 1,
                      "identities-hidden": True}
    assert "news" in json.loads(get("/channels"))["channels"]
    st = json.loads(get("/stats"))["channel-stats"]
    assert list(st["channels"]) == ["news"] and st["channels-omitted"] == 1
    # The admin token's bearer sees who.
    access = json.loads(get("/stats", auth))["access"]
    assert list(access["users"]) == ["alice@example.com"]
    assert access["connections-per-ip"] == {"127.0.0.1": 2}
    assert "notifications#alice@example.com" in json.loads(get("/channels", auth))["channels"]
    assert 'channel="notifications#alice@example.com"' in get("/metrics", auth)
    # A wrong token is nobody.
    assert "users" not in json.loads(get("/stats", {"Authorization": "Bearer no"}))["access"]
    alice.close()
    anon.close()


# --------------------------------------------------------------- finding 9

def test_an_expired_token_is_refused_at_the_next_message(server_factory, keys):
    """Not only at the worker's tick (up to a second later): the first
    message after exp closes the connection with 4408, unprocessed."""
    srv = server_factory(*keys.flags("secret"), "--jwt-leeway-ms", "0", workers=1)
    for _ in range(3):  # the tick may beat us once; three times it cannot
        exp = time.time() + 0.6 * SLOW
        ws, st, _ = upgrade(srv.port, keys.token(sub="al", ttl=None, exp=exp))
        assert st == 101
        assert ask(ws, type="subscribe", **{"channel-id": "news"})["success"]
        time.sleep(max(0.0, exp - time.time()) + 0.03)
        send(ws, type="publish", **{"channel-id": "news", "data": "late"})
        op, payload = first_frame(ws)
        assert op == OP_CLOSE and int.from_bytes(payload[:2], "big") == 4408, payload
        ws.close()
    st, body, _ = srv.request("GET", "/stats")
    assert json.loads(body)["published"] == 0


# -------------------------------------------------------------- finding 10

def test_ipv6_clients_count_per_64(server_factory):
    srv = server_factory("--max-connections-per-ip", "1", "--trusted-proxy", "127.0.0.2",
                         ops=True)

    def via_proxy(client):
        return RawWS(srv.port, headers={"X-Forwarded-For": client}, source="127.0.0.2")
    a = via_proxy("2001:db8:1:2::1")
    assert a.status == 101
    assert via_proxy("2001:db8:1:2:ffff:ffff:ffff:ffff").status == 429  # same /64
    b = via_proxy("2001:db8:1:3::1")  # the next /64
    assert b.status == 101
    c = via_proxy("::ffff:192.0.2.7")  # IPv4-mapped: counted as the IPv4 address
    assert c.status == 101
    assert srv.stats()["access"]["connections-per-ip"] == {
        "2001:db8:1:2::/64": 1, "2001:db8:1:3::/64": 1, "192.0.2.7": 1}
    for x in (a, b, c):
        x.close()


# -------------------------------------------------------------- finding 11

def test_peers_without_an_address_share_one_count(tmp_path):
    """A peer whose address cannot be read (here: a Unix socket, as socket
    activation may pass) is counted under "unknown", not let through."""
    path = str(tmp_path / "s.sock")
    lsock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    lsock.bind(path)
    lsock.listen(16)
    fd = lsock.fileno()
    script = f'exec 3<&{fd}; exec {fd}<&-; LISTEN_PID=$$ LISTEN_FDS=1 exec "$0" "$@"'
    proc = subprocess.Popen(
        ["/bin/bash", "-c", script, BIN, "--host", "127.0.0.1", "--port", "1", "--workers", "1",
         "--max-connections-per-ip", "1", "--admin-token", "t0k",
         "--log-file", str(tmp_path / "sente.log")], pass_fds=(fd,),
        stderr=open(tmp_path / "stderr.log", "ab"))
    lsock.close()
    try:
        def up():
            try:
                return RawWS(0, unix=path, timeout=2)
            except OSError:
                return None
        a = wait_for(lambda: (lambda w: w if w and w.status == 101 else None)(up()),
                     timeout=10, what="the activated server")
        b = RawWS(0, unix=path)
        assert b.status == 429
        b.close()
        s = socket.socket(socket.AF_UNIX)
        s.connect(path)
        s.sendall(b"GET /stats HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer t0k\r\n"
                  b"Connection: close\r\n\r\n")
        doc = body_of(read_response(s))
        s.close()
        assert doc["access"]["connections-per-ip"] == {"unknown": 1}
        a.close()
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15 * SLOW) == 0


# -------------------------------------------------------------- finding 12

def test_a_user_that_cannot_be_listed_is_refused(server_factory, keys):
    """The users table is what the admin API's "close this user" walks: a
    connection that cannot be entered there (shared memory full) is refused,
    never left running unlisted."""
    srv = server_factory(*keys.flags("secret"), "--allow-anonymous", "--shm-size", "4M",
                         "--channel", "feed:message-retention=10000", workers=1, ops=True)
    filler, _, _ = upgrade(srv.port)
    # Fill every free page with retained messages; the slabs of small
    # objects that exist keep their free slots (anonymous connections still
    # fit), but a user entry for a long user id needs a slab of its own.
    for size in (60000, 16000, 3000):
        while ask(filler, type="publish", **{"channel-id": "feed", "data": "x" * size})["success"]:
            pass
    assert srv.stats()["shared-memory"]["free-pages"] == 0
    long_user = "u" * 128
    _, st, doc = upgrade(srv.port, keys.token(sub=long_user))
    assert (st, doc["error"]) == (503, "shm-exhausted")
    ws, st, _ = upgrade(srv.port)
    assert st == 101
    r = ask(ws, type="authenticate", token=keys.token(sub=long_user))
    assert (r["success"], r["reason"]) == (False, "overloaded")
    assert ask(ws, type="get-subscriptions")["type"] == "subscription-list"  # still anonymous
    access = srv.stats()["access"]
    assert access["authenticated-connections"] == 0 and access["users"] == {}
    assert srv.stats()["handshake-failures"]["shm-exhausted"] == 1
    ws.close()
    filler.close()


# -------------------------------------------------------------- finding 14

def test_broadcasts_skip_connections_that_must_authenticate(server_factory, keys):
    srv = server_factory(*keys.flags("secret"), "--admin-token", "t0k", "--auth-timeout-ms",
                         "30000", workers=1)
    authed, _, _ = upgrade(srv.port, keys.token(sub="al"))
    waiting, _, _ = upgrade(srv.port)
    st, body, _ = srv.request("POST", "/api/broadcast", body=b'{"notice":"maintenance"}',
                              headers={"Authorization": "Bearer t0k"})
    assert st == 200
    assert recv(authed) == {"notice": "maintenance", "broadcast": True}
    # The same worker drained the broadcast before answering this ping.
    assert ask(waiting, type="ping")["type"] == "pong"
    # Once authenticated, it hears the next one.
    assert ask(waiting, type="authenticate", token=keys.token(sub="bo"))["success"]
    srv.request("POST", "/api/broadcast", body=b'{"n":2}', headers={"Authorization": "Bearer t0k"})
    assert recv(waiting) == {"n": 2, "broadcast": True}
    authed.close()
    waiting.close()


# -------------------------------------------------------------- finding 15

def test_refusals_do_not_tell_the_key_setup(server_factory, keys):
    srv = server_factory(*keys.flags("secret"), "--allow-anonymous", "--jwt-audience",
                         "aud-7f3", "--log-level", "info", workers=1)
    tokens = [keys.token(alg="ES256"), keys.token(alg="RS256"), keys.token(aud="elsewhere")]
    for tok in tokens:
        _, st, doc = upgrade(srv.port, tok)
        assert st == 401
        ws, _, _ = upgrade(srv.port)
        r = ask(ws, type="authenticate", token=tok)
        ws.close()
        for text in (doc["message"], r["message"]):
            assert not any(w in text for w in ("--jwt", "EC ", "RSA", "curve", "aud-7f3")), text
    # The operator's log has the details (the logger may lag under load).
    def logged():
        msgs = " ".join(l["message"] for l in log_events(srv, "authentication-failed"))
        return "EC key" in msgs and "RSA key" in msgs and "aud-7f3" in msgs
    wait_for(logged, what="the three refusals' details in the log")


# -------------------------------------------------------------- finding 16

def test_workers_take_only_the_keys_the_master_read(server_factory, keys, tmp_path):
    """The key file is a FIFO here, so that the master and the worker read
    different contents in one reload - what a key file rewritten in place
    during a reload does.  The worker must refuse what the master did not
    read, and keep its keys: never a worker on keys the master has not."""
    fifo = str(tmp_path / "secret")
    os.mkfifo(fifo)
    feed = []  # contents handed to whoever opens the FIFO next, in order
    done = threading.Event()

    def writer():
        while not done.is_set():
            if not feed:
                time.sleep(0.01)
                continue
            try:
                fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
            except OSError:  # ENXIO: nobody reading yet
                time.sleep(0.005)
                continue
            os.set_blocking(fd, True)
            os.write(fd, feed.pop(0).encode())
            os.close(fd)
    t = threading.Thread(target=writer, daemon=True)
    t.start()
    orig, a, b = keys.secret(), "a" * 40, "b" * 40
    feed.append(orig)  # the master's read at start
    try:
        srv = server_factory("--jwt-secret-file", fifo, workers=1)
        assert not feed
        # The master's reread, then - once it is done with the FIFO - the
        # worker's (which waits for a writer meanwhile).
        feed.append(a)
        os.kill(srv.pid, signal.SIGHUP)
        wait_for(lambda: log_events(srv, "keys-reloaded"), what="the master's reload")
        feed.append(b)
        wait_for(lambda: not feed, what="the worker's read")
        fails = wait_for(lambda: log_events(srv, "keys-reload-failed"), what="the refusal")
        assert "atomic rename" in fails[0]["reason"]
        ok = log_events(srv, "keys-reloaded")
        assert len(ok) == 1 and len(ok[0]["fingerprint"]) == 16  # the master's
        # The worker serves with the keys it had.
        assert upgrade(srv.port, keys.token())[1] == 101
        assert upgrade(srv.port, jwt.encode(keys.claims(), b, algorithm="HS256"))[1] == 401
        # A reload the master refuses is not tried by the workers at all.
        feed.append("short")
        os.kill(srv.pid, signal.SIGHUP)
        wait_for(lambda: len(log_events(srv, "keys-reload-failed")) == 2, what="the master's")
        time.sleep(0.3)
        assert len(log_events(srv, "keys-reload-failed")) == 2 and not feed
        assert upgrade(srv.port, keys.token())[1] == 101
    finally:
        done.set()
        t.join(5)
