"""Identity (README "Access control"): tokens on the upgrade request (header
and query) and in an authenticate message, every algorithm against every
way a token can be wrong, refresh, expiry (close 4408), the authentication
deadline (close 4401), anonymous connections, and SIGHUP key reload."""
import json
import os
import signal
import time

import pytest

from authkit import ALGS, ask, b64u, keys, recv, send, unsigned, upgrade  # noqa: F401
from conftest import SLOW, wait_for
from wsraw import RawWS


def errors(srv):
    return srv.stats()["errors"]


def case_tokens(keys, alg, other_alg):
    """Every way a token for `alg` can be wrong, with the expected reason."""
    now = int(time.time())
    good = keys.token(alg)
    head, body, sig = good.split(".")
    mid = len(sig) // 2
    bad_sig = f"{head}.{body}.{sig[:mid]}{'A' if sig[mid] != 'A' else 'B'}{sig[mid + 1:]}"
    return [
        ("good", good, None),
        ("expired", keys.token(alg, exp=now - 10), "token-expired"),
        ("not yet valid", keys.token(alg, nbf=now + 600), "token-not-yet-valid"),
        ("wrong signature", bad_sig, "invalid-token"),
        ("wrong algorithm", keys.token(other_alg), "wrong-algorithm"),
        ("alg none", unsigned(keys.claims()), "wrong-algorithm"),
        ("alg none, signed", unsigned(keys.claims()) + sig, "wrong-algorithm"),
        ("malformed base64", f"{head}.{body}!.{sig}", "invalid-token"),
        ("malformed JSON", f"{head}.{b64u('{not json')}.{sig}", "invalid-token"),
        ("payload not an object", f"{head}.{b64u('[1]')}.{sig}", "invalid-token"),
        ("two parts", f"{head}.{body}", "invalid-token"),
        ("missing sub", keys.token(alg, sub=None), "invalid-token"),
    ]


SERVERS = [  # (key kinds, algorithms to try, an algorithm whose key is absent)
    (("secret", "rsa"), ["HS256", "HS384", "HS512", "RS256", "RS384", "RS512", "PS256",
                         "PS384", "PS512"], "ES256"),
    (("ec256",), ["ES256"], "HS256"),
    (("ec384",), ["ES384"], "RS256"),
    (("ec521",), ["ES512"], "PS256"),
]


@pytest.mark.parametrize("kinds,algs,other", SERVERS, ids=["secret+rsa", "p256", "p384", "p521"])
def test_every_algorithm_every_case(server_factory, keys, kinds, algs, other):
    srv = server_factory(*keys.flags(*kinds))
    expected_errors = {}
    for alg in algs:
        for name, tok, reason in case_tokens(keys, alg, other):
            ws, status, doc = upgrade(srv.port, tok)
            what = f"{alg} {name}"
            if reason is None:
                assert status == 101, what
                assert doc["type"] == "welcome" and doc["user"] == "alice", what
                assert doc["expires-at"] > time.time() * 1000, what
                ws.close()
            else:
                assert status == 401, what
                assert doc["error"] == reason, (what, doc)
                assert doc["message"], what
                expected_errors[reason] = expected_errors.get(reason, 0) + 1
    # HS/RS key confusion: an HS256 token "signed" with the RSA (or EC)
    # public key's PEM.  With a secret configured it fails its signature;
    # without one, HS256 is not an algorithm this server accepts at all.
    pub = keys.path[kinds[-1]]
    with open(pub, "rb") as f:
        confused = keys.hs256_with(f.read(), keys.claims())
    _, status, doc = upgrade(srv.port, confused)
    want = "invalid-token" if "secret" in kinds else "wrong-algorithm"
    assert status == 401 and doc["error"] == want
    expected_errors[want] = expected_errors.get(want, 0) + 1
    # Every refusal is counted by its reason.
    errs = errors(srv)
    for reason, n in expected_errors.items():
        assert errs[reason] == n, (reason, errs)


def test_delivery_paths_and_oversized(server_factory, keys):
    srv = server_factory(*keys.flags("secret"), "--allow-anonymous")
    tok = keys.token("HS256", sub="ann")
    for via in ("header", "query"):
        ws, status, w = upgrade(srv.port, tok, via=via)
        assert status == 101 and w["user"] == "ann"
        ws.close()
    _, status, doc = upgrade(srv.port, "x" + tok, via="query")
    assert status == 401 and doc["error"] == "invalid-token"
    # "bearer" in any case; an Authorization that is not Bearer is ignored.
    ws = RawWS(srv.port, headers={"Authorization": "bEaReR " + tok})
    assert ws.status == 101 and json.loads(ws.read_data())["user"] == "ann"
    ws.close()
    ws = RawWS(srv.port, headers={"Authorization": "Basic YTpi"})
    assert ws.status == 101 and "user" not in json.loads(ws.read_data())
    # The message: an anonymous connection becomes ann's.
    ws, status, w = upgrade(srv.port)
    assert status == 101 and "user" not in w
    r = ask(ws, type="authenticate", token=tok)
    assert r["type"] == "authenticate-result" and r["success"] is True and r["user"] == "ann"
    assert r["expires-at"] == json.loads(
        __import__("base64").urlsafe_b64decode(tok.split(".")[1] + "==").decode())["exp"] * 1000
    # Bad authenticate messages: answered, counted, the connection stays.
    r = ask(ws, type="authenticate")
    assert r["type"] == "error" and r["reason"] == "invalid-message"
    r = ask(ws, type="authenticate", token=42)
    assert r["type"] == "error" and r["reason"] == "invalid-message"
    r = ask(ws, type="authenticate", token="a.b")
    assert r == {"type": "authenticate-result", "success": False, "reason": "invalid-token",
                 "message": r["message"]}
    # Oversized: over 8 KiB in a message is refused unread...
    big = "A" * 8193
    r = ask(ws, type="authenticate", token=big)
    assert r["success"] is False and r["reason"] == "token-too-large"
    assert ask(ws, type="ping")["type"] == "pong"
    ws.close()
    # ...and on the upgrade request the 8 KiB request head is the bound.
    _, status, _ = upgrade(srv.port, "A" * 8300)
    assert status == 431
    errs = errors(srv)
    assert errs["token-too-large"] == 1 and errs["invalid-token"] == 2


def test_refresh_and_expiry(server_factory, keys):
    srv = server_factory(*keys.flags("secret"), "--jwt-leeway-ms", "0")
    ws, status, w = upgrade(srv.port, keys.token(ttl=2))
    assert status == 101
    first_exp = w["expires-at"]
    # Refresh before expiry: same user, new expiry; the connection lives on
    # past the first token's end.
    r = ask(ws, type="authenticate", token=keys.token(ttl=60, channels=["x"]))
    assert r["success"] and r["user"] == "alice" and r["expires-at"] > first_exp
    # A refresh for another user is refused and changes nothing.
    r = ask(ws, type="authenticate", token=keys.token(sub="mallory"))
    assert r["success"] is False and r["reason"] == "user-mismatch"
    r = ask(ws, type="authenticate", token=keys.token(exp=int(time.time()) - 1))
    assert r["success"] is False and r["reason"] == "token-expired"
    time.sleep(max(0, first_exp / 1000 - time.time()) + 1.5)
    assert ask(ws, type="ping")["type"] == "pong"
    ws.close()

    # Without a refresh the connection is closed with 4408 when the token
    # expires (the tick looks at least every second).  ttl 2: exp is whole
    # seconds, so ttl 1 left between 0 and 1 s, and a loaded machine's
    # upgrade could come after it (401; seen once in check-fast).
    ws, status, w = upgrade(srv.port, keys.token(ttl=2))
    assert status == 101
    ws.sock.settimeout(10 * SLOW)
    code, reason = ws.read_until_close()
    assert code == 4408 and reason == b"token expired"
    assert time.time() * 1000 >= w["expires-at"]
    ws.close()
    assert errors(srv)["session-expired"] == 1
    assert errors(srv)["user-mismatch"] == 1

    def logged():
        return [l for l in srv.log_lines() if "session-expired" in l and w["conn-id"] in l]
    line = wait_for(logged, what="session-expired in the log")[0]
    assert '"user":"alice"' in line and '"code":4408' in line


def test_authentication_deadline_and_anonymous(server_factory, keys):
    srv = server_factory(*keys.flags("secret"), "--auth-timeout-ms", "400",
                         "--namespace", "pub:publish=authenticated")
    # No token, anonymous not allowed: a welcome, every action refused with
    # "unauthenticated", and close 4401 after --auth-timeout-ms.
    ws, status, w = upgrade(srv.port)
    assert status == 101 and "user" not in w
    r = ask(ws, type="subscribe", **{"channel-id": "a"})
    assert r["success"] is False and r["reason"] == "unauthenticated"
    r = ask(ws, type="publish", **{"channel-id": "a", "data": 1})
    assert r["success"] is False and r["reason"] == "unauthenticated"
    r = ask(ws, type="rpc-request", **{"channel-id": "a", "data": {}})
    assert r["delivery"] == {"success": False, "reason": "unauthenticated"}
    assert ask(ws, type="list-channels")["channels"] == {}
    ws.sock.settimeout(10 * SLOW)
    code, reason = ws.read_until_close()
    assert code == 4401 and reason == b"authentication required"
    ws.close()
    # Authenticating in time lifts the deadline.
    ws, status, _ = upgrade(srv.port)
    assert ask(ws, type="authenticate", token=keys.token())["success"]
    time.sleep(1.5 * SLOW)
    assert ask(ws, type="ping")["type"] == "pong"
    ws.close()
    errs = errors(srv)
    assert errs["authentication-timeout"] == 1 and errs["unauthenticated"] == 3

    # --allow-anonymous: no deadline; rules still ask for authentication.
    srv2 = server_factory(*keys.flags("secret"), "--allow-anonymous", "--auth-timeout-ms", "300",
                          "--namespace", "pub:publish=authenticated")
    ws, status, _ = upgrade(srv2.port)
    assert ask(ws, type="subscribe", **{"channel-id": "pub:a"})["success"]
    r = ask(ws, type="publish", **{"channel-id": "pub:a", "data": 1})
    assert r["success"] is False and r["reason"] == "unauthenticated"
    time.sleep(1.0 * SLOW)
    assert ask(ws, type="authenticate", token=keys.token())["success"]
    r = ask(ws, type="publish", **{"channel-id": "pub:a", "data": 1})
    assert r["success"] is True
    ws.close()


def test_without_a_key_nothing_changes(server_factory, keys):
    srv = server_factory()
    tok = keys.token()
    ws, status, w = upgrade(srv.port, tok)  # the header is ignored
    assert status == 101 and "user" not in w
    r = ask(ws, type="authenticate", token=tok)
    assert r["success"] is False and r["reason"] == "authentication-not-configured"
    assert ask(ws, type="subscribe", **{"channel-id": "dm#bob"})["success"]
    ws.close()
    assert srv.stats()["access"]["authenticated-connections"] == 0


def connect_on_every_worker(srv, tok, want_status):
    """Connect until each worker has answered; every answer must be
    want_status (the keys are per worker process)."""
    seen = set()
    # Until each has answered or 15 s: a worker just respawned may take a
    # while before the master hands it connections (CI once saw 20 in a row
    # go to the other worker).
    deadline = time.monotonic() + 15
    for n in range(1000):
        ws, status, doc = upgrade(srv.port, tok)
        assert status == want_status, doc
        if ws:
            seen.add(doc["worker"])
            ws.close()
        elif n >= 19:
            return  # a refusal does not say which worker: 20 of them will do
        else:
            continue
        if len(seen) == srv.workers or time.monotonic() > deadline:
            break
        if n >= 19:
            time.sleep(0.05)
    assert len(seen) == srv.workers


def test_sighup_reloads_keys_in_every_worker(server_factory, keys, tmp_path):
    secret = tmp_path / "secret"
    secret.write_text(keys.secret() + "\n")
    srv = server_factory("--jwt-secret-file", str(secret))
    old = keys.token()
    connect_on_every_worker(srv, old, 101)

    def reloads(what):
        return [l for l in srv.log_lines() if what in l]

    # A bad file: the master refuses it and says why; the workers, told so,
    # do not try - every process keeps its keys.
    secret.write_text("short\n")
    os.kill(srv.pid, signal.SIGHUP)
    lines = wait_for(lambda: reloads("keys-reload-failed"), what="the master's reload failure")
    assert all("at least 32" in l for l in lines)
    connect_on_every_worker(srv, old, 101)
    assert len(reloads("keys-reload-failed")) == 1

    # A new secret: old tokens refused, new ones accepted, everywhere.
    new_secret = "n" * 40
    secret.write_text(new_secret)
    os.kill(srv.pid, signal.SIGHUP)
    wait_for(lambda: len(reloads("keys-reloaded")) >= 3, what="three reloads")
    import jwt
    new = jwt.encode(keys.claims(), new_secret, algorithm="HS256")
    connect_on_every_worker(srv, new, 101)
    for _ in range(6):
        _, status, doc = upgrade(srv.port, old)
        assert status == 401 and doc["error"] == "invalid-token"
    # A worker started after the reload has the new key (the master reread
    # it too, and workers inherit the master's).
    pid = srv.worker_pids()[0]
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: srv.worker_pids()[0] not in (0, pid), what="worker 0 respawned")
    connect_on_every_worker(srv, new, 101)


def test_sighup_reopens_the_logs_and_reloads_the_keys(server_factory, keys, tmp_path):
    """One SIGHUP (logrotate's postrotate, `systemctl reload`) does all of
    it: the logger reopens --log-file, the worker writes its next access-log
    line into the new --access-log file (at once, not within a second), and
    every process rereads the key files."""
    import jwt
    secret = tmp_path / "secret"
    secret.write_text(keys.secret() + "\n")
    access = tmp_path / "access.log"
    srv = server_factory("--jwt-secret-file", str(secret), "--access-log", str(access),
                         workers=1)
    old = keys.token()
    assert upgrade(srv.port, old)[1] == 101
    srv.request("GET", "/health?before")
    wait_for(lambda: access.exists() and "/health?before" in access.read_text(),
             what="the first access-log line")
    os.rename(access, str(access) + ".1")
    # (The logger opens --log-file when it starts, which on a loaded
    # machine may be after /health already answers.)
    wait_for(lambda: os.path.exists(srv.log), what="the log file opened")
    os.rename(srv.log, srv.log + ".1")
    new_secret = "m" * 40
    secret.write_text(new_secret)
    os.kill(srv.pid, signal.SIGHUP)

    def both_logs():
        text = ""
        for p in (srv.log + ".1", srv.log):
            if os.path.exists(p):
                text += open(p).read()
        return text
    wait_for(lambda: both_logs().count("keys-reloaded") >= 2, what="master and worker reloaded")
    wait_for(lambda: os.path.exists(srv.log), what="the log file reopened")
    srv.request("GET", "/health?after")
    wait_for(lambda: access.exists() and "/health?after" in access.read_text(),
             what="the access log reopened")
    assert "/health?after" not in open(str(access) + ".1").read()
    new = jwt.encode(keys.claims(), new_secret, algorithm="HS256")
    assert upgrade(srv.port, new)[1] == 101
    assert upgrade(srv.port, old)[1] == 401
