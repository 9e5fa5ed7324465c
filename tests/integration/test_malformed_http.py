"""Malformed HTTP to every endpoint: each gets a 4xx/5xx answer with a JSON
error body, is counted in /stats errors, and the server keeps serving."""
import socket

import pytest

from wsraw import body_of, http_request, status_of

TOKEN = "malformed-token"
ENDPOINTS = ["/", "/health", "/stats", "/channels", "/metrics", "/echo",
             "/api/channels/x", "/api/broadcast", "/api/connections"]
# name -> (request template, expected status)
KINDS = {
    "no-version": (b"GET %s\r\nHost: x\r\n\r\n", 400),
    "bad-version": (b"GET %s HTTP/9.9\r\nHost: x\r\n\r\n", 505),
    "header-without-colon": (b"GET %s HTTP/1.1\r\nHost: x\r\nBroken header\r\n\r\n", 400),
    "space-before-colon": (b"GET %s HTTP/1.1\r\nHost : x\r\n\r\n", 400),
    "control-char-in-header": (b"GET %s HTTP/1.1\r\nHost: x\r\nX: a\x01b\r\n\r\n", 400),
    "nul-in-target": (b"GET %s\x00x HTTP/1.1\r\nHost: x\r\n\r\n", 400),
    "content-length-not-a-number": (
        b"POST %s HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n", 400),
    "negative-content-length": (
        b"POST %s HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\n", 400),
    "conflicting-content-lengths": (
        b"POST %s HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n{}", 400),
    "chunked-body": (b"POST %s HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                     b"2\r\n{}\r\n0\r\n\r\n", 501),
    "missing-host": (b"GET %s HTTP/1.1\r\n\r\n", 400),
    "huge-header": (b"GET %s HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 9000 + b"\r\n\r\n", 431),
}


@pytest.fixture(scope="module")
def srv(tmp_path_factory):
    from conftest import Server
    s = Server(tmp_path_factory.mktemp("malformed"), ["--admin-token", TOKEN, "--echo"], None, 2)
    s.wait_ready()
    yield s
    assert s.stop() == 0, s.stderr()


@pytest.mark.parametrize("kind", list(KINDS))
@pytest.mark.parametrize("path", ENDPOINTS)
def test_malformed_request(srv, path, kind):
    template, expected = KINDS[kind]
    resp = http_request(srv.port, template.replace(b"%s", path.encode()))
    assert status_of(resp) == expected, resp[:200]
    doc = body_of(resp)
    assert doc["error"] and doc["message"]
    assert srv.healthy()


@pytest.mark.parametrize("path", ["/api/channels/x", "/api/broadcast",
                                  "/api/connections/conn-1-1/send"])
def test_bad_json_body_to_admin_calls(srv, path):
    body = b"{nope"
    resp = http_request(srv.port, b"POST " + path.encode() + b" HTTP/1.1\r\nHost: x\r\n"
                        b"Authorization: Bearer " + TOKEN.encode() +
                        b"\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
    assert status_of(resp) == 400
    assert body_of(resp)["error"]


@pytest.mark.parametrize("path", ENDPOINTS)
def test_truncated_request_then_close(srv, path):
    """Half a request head, then the client goes away: nothing is answered,
    nothing leaks, the next request is served."""
    s = socket.create_connection(("127.0.0.1", srv.port), timeout=5)
    s.sendall(b"GET " + path.encode() + b" HTTP/1.1\r\nHost: x\r\nX-Half: ")
    s.close()
    assert srv.healthy()


def test_malformed_requests_counted(srv):
    errors = srv.stats()["errors"]
    # Every case above was refused and counted by reason.
    assert sum(errors.values()) >= len(ENDPOINTS) * len(KINDS)
    assert srv.stats()["active-connections"] == 0
