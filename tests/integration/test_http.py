"""HTTP side: endpoints, errors with JSON bodies, limits, keep-alive."""
import json
import socket

from wsraw import body_of, http_request, read_response, status_of


def test_health(server):
    status, doc = server.get_json("/health")
    assert status == 200
    assert doc["status"] == "healthy"
    assert doc["connections"] == 0
    assert doc["system-health"]["healthy"] is True
    assert doc["uptime-ms"] >= 0


def test_stats_shape(server):
    st = server.stats()
    for key in ("active-connections", "total-messages", "uptime-ms", "server-config", "workers",
                "telemetry-stats", "slow-consumer-disconnects", "errors", "shared-memory"):
        assert key in st, key
    cfg = st["server-config"]
    assert cfg["port"] == server.port
    assert cfg["host"] == "127.0.0.1"
    assert cfg["workers"] == 2
    assert cfg["max-connections"] == 10000
    assert cfg["heartbeat-interval-ms"] == 30000
    assert len(st["workers"]) == 2
    for i, w in enumerate(st["workers"]):
        assert w["id"] == i
        assert w["pid"] > 0
        for k in ("connections", "messages-in", "messages-out", "restarts"):
            assert w[k] == 0 or k in ("messages-in", "messages-out")
    assert "sente-lite" in st["telemetry-stats"]
    t = st["telemetry-stats"]["sente-lite"]
    for k in ("processed", "queued", "dropped", "errors"):
        assert isinstance(t[k], int)
    assert st["shared-memory"]["total-bytes"] == 64 << 20


def test_unknown_path_404_json(server):
    resp = http_request(server.port, b"GET /nope HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert status_of(resp) == 404
    doc = body_of(resp)
    assert doc["error"] and doc["message"]
    assert b"Content-Type: application/json" in resp


def test_method_not_allowed(server):
    status, body, r = server.request("POST", "/stats", body=b"{}")
    assert status == 405
    assert json.loads(body)["error"]
    assert r.getheader("Allow") == "GET, HEAD"


def test_garbage_request_400(server):
    resp = http_request(server.port, b"\x16\x03\x01garbage\r\n\r\n")
    assert status_of(resp) == 400
    assert body_of(resp)["error"]


def test_huge_head_431(server):
    head = b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 9000 + b"\r\n\r\n"
    resp = http_request(server.port, head)
    assert status_of(resp) == 431


def test_too_many_headers_431(server):
    head = b"GET /health HTTP/1.1\r\nHost: x\r\n" + b"".join(
        b"X-H%d: v\r\n" % i for i in range(100)) + b"\r\n"
    assert status_of(http_request(server.port, head)) == 431


def test_http10_bad_version_505(server):
    resp = http_request(server.port, b"GET /health HTTP/2.0\r\nHost: x\r\n\r\n")
    assert status_of(resp) == 505


def test_missing_host_400(server):
    assert status_of(http_request(server.port, b"GET /health HTTP/1.1\r\n\r\n")) == 400


def test_body_too_large_413(server_factory):
    srv = server_factory("--max-message-size", "1K")
    resp = http_request(srv.port, b"POST /stats HTTP/1.1\r\nHost: x\r\nContent-Length: 5000\r\n\r\n")
    assert status_of(resp) == 413


def split_responses(data):
    """Split a byte stream into complete HTTP responses."""
    out = []
    while b"\r\n\r\n" in data:
        head, rest = data.split(b"\r\n\r\n", 1)
        length = 0
        for line in head.split(b"\r\n")[1:]:
            k, _, v = line.partition(b":")
            if k.strip().lower() == b"content-length":
                length = int(v.strip())
        if len(rest) < length:
            break
        out.append(head + b"\r\n\r\n" + rest[:length])
        data = rest[length:]
    return out


def test_keep_alive_and_pipelining(server):
    s = socket.create_connection(("127.0.0.1", server.port), timeout=5)
    req = b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n"
    s.sendall(req)
    assert status_of(read_response(s)) == 200
    # Two pipelined requests in one segment, answered in order.
    s.sendall(req + b"GET /stats HTTP/1.1\r\nHost: x\r\n\r\n")
    data = b""
    while len(split_responses(data)) < 2:
        chunk = s.recv(65536)
        assert chunk, "connection closed early"
        data += chunk
    r1, r2 = split_responses(data)
    assert status_of(r1) == 200 and "status" in body_of(r1)
    assert status_of(r2) == 200 and "workers" in body_of(r2)
    s.close()


def test_plain_get_on_websocket_path(server_factory):
    # With the web UI on (the default), "/" answers the landing page
    # (test_web.py); without it, a plain GET there needs an upgrade.
    s = server_factory("--no-web-ui")
    resp = http_request(s.port, b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert status_of(resp) == 426
    # Any other method there is simply not allowed.
    resp = http_request(s.port, b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n"
                        b"Connection: close\r\n\r\n{}")
    assert status_of(resp) == 405 and body_of(resp)["error"] == "method-not-allowed"


def test_bad_requests_counted(server):
    http_request(server.port, b"GET /x HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    http_request(server.port, b"BAD\x01 / HTTP/1.1\r\n\r\n")
    errors = server.stats()["errors"]
    assert errors["not-found"] == 1
    assert errors["bad-http-request"] == 1
