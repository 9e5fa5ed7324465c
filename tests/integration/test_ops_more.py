"""Operator-facing additions: the new /metrics families parsed by the
Prometheus client parser and checked against /stats and against the traffic
made; HEAD wherever GET works; /favicon.ico; CORS on /client.js;
--access-log with --trusted-proxy; the peer address in telemetry."""
import json
import os

from prometheus_client.parser import text_string_to_metric_families

from conftest import wait_for
from test_channels import connect, on_workers, run
from wsraw import RawWS, http_request, status_of


def families(srv):
    status, body, _ = srv.request("GET", "/metrics")
    assert status == 200
    return {f.name: f for f in text_string_to_metric_families(body.decode())}


def samples(fams, name, **labels):
    return [s for s in fams[name].samples
            if all(s.labels.get(k) == v for k, v in labels.items())]


def one(fams, sample_name, **labels):
    for f in fams.values():
        for s in f.samples:
            if s.name == sample_name and all(s.labels.get(k) == v for k, v in labels.items()):
                return s.value
    raise KeyError((sample_name, labels))


def test_new_metrics_parse_and_match_traffic(server_factory):
    srv = server_factory("--message-retention", "0")

    async def go():
        pub, sub = await on_workers(srv.url, [0, 1])
        await sub.subscribe("lat")
        for i in range(20):
            await pub.publish("lat", {"i": i})
        for _ in range(20):
            await sub.message()
        # An RPC round trip: sub serves, pub asks.
        await pub.send(type="rpc-request", data={"q": 1}, **{"channel-id": "lat"})
        req = await sub.reply("rpc-request")
        await sub.send(type="rpc-response", data={"a": 2}, **{"request-id": req["request-id"]})
        await pub.reply("rpc-request-result")
        await pub.reply("rpc-response")
        await sub.reply("rpc-response-result")
        check(pub, sub)
        await pub.close()
        await sub.close()

    def check(pub, sub):
        # A refused upgrade of each kind we can make from here.
        checks(srv, pub, sub)

    run(go())


def checks(srv, pub, sub):
    assert status_of(http_request(srv.port, b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
                                            b"Connection: Upgrade\r\nSec-WebSocket-Key: "
                                            b"dGhlIHNhbXBsZSBub25jZQ==\r\n"
                                            b"Sec-WebSocket-Version: 8\r\n\r\n")) == 426
    assert status_of(http_request(srv.port, b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
                                            b"Connection: Upgrade\r\n\r\n")) == 400
    st = srv.stats()
    fams = families(srv)
    assert one(fams, "sente_lite_build_info", version=st["version"]) == 1
    assert st["version"] == open(os.path.join(os.path.dirname(__file__), "..", "..", "include",
                                              "sl_common.h")).read().split('SL_VERSION "')[1].split('"')[0]
    # Delivery latency: the subscriber's worker observed the 20 messages.
    w = sub.worker
    assert fams["sente_lite_delivery_latency_seconds"].type == "histogram"
    assert one(fams, "sente_lite_delivery_latency_seconds_count", worker=str(w)) == 20
    inf = one(fams, "sente_lite_delivery_latency_seconds_bucket", worker=str(w), le="+Inf")
    assert inf == 20
    assert one(fams, "sente_lite_delivery_latency_seconds_sum", worker=str(w)) > 0
    assert st["delivery-latency"]["count"] == 20
    assert st["workers"][w]["delivery-latency"]["buckets"]["+Inf"] == 20
    # Buckets are cumulative and end at the count.
    b = st["delivery-latency"]["buckets"]
    vals = list(b.values())
    assert vals == sorted(vals) and vals[-1] == st["delivery-latency"]["count"]
    # RPC round trip on the requester's worker.
    assert one(fams, "sente_lite_rpc_round_trip_seconds_count", worker=str(pub.worker)) == 1
    assert st["rpc-round-trip"]["count"] == 1
    # Handshake failures by reason.
    assert one(fams, "sente_lite_handshake_failures_total", reason="unsupported-version") == 1
    assert one(fams, "sente_lite_handshake_failures_total", reason="bad-handshake") == 1
    assert st["handshake-failures"]["unsupported-version"] == 1
    # Per-worker process figures, bytes, accepted connections.
    for wk in st["workers"]:
        lbl = str(wk["id"])
        assert one(fams, "sente_lite_process_resident_memory_bytes", worker=lbl) > 100000
        assert one(fams, "sente_lite_process_open_fds", worker=lbl) >= 3
        assert one(fams, "sente_lite_process_cpu_seconds_total", worker=lbl) >= 0
        start = one(fams, "sente_lite_process_start_time_seconds", worker=lbl)
        assert abs(start - wk["start-time-ms"] / 1000) < 1
        # /metrics was fetched after /stats: one more connection at most.
        assert wk["accepted-connections"] <= one(fams, "sente_lite_connections_accepted_total",
                                                 worker=lbl) <= wk["accepted-connections"] + 1
    assert fams["sente_lite_bytes_received"].type == "counter"
    assert st["bytes-in"] == sum(wk["bytes-in"] for wk in st["workers"]) > 0
    assert st["bytes-out"] == sum(wk["bytes-out"] for wk in st["workers"]) > 0
    assert st["accepted-connections"] >= 4


def test_bytes_counted_exactly(server_factory):
    """A known number of bytes in and out on a worker with nothing else."""
    srv = server_factory(workers=1)
    before = srv.stats()
    # /stats requests themselves move bytes: measure them with a raw one.
    req = b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    resp = http_request(srv.port, req)
    after = srv.stats()
    st_req_len = None  # the second /stats request is counted in `after` too
    d_in = after["bytes-in"] - before["bytes-in"]
    d_out = after["bytes-out"] - before["bytes-out"]
    # in: our request + the second /stats request; out: our response + the
    # first /stats response (the second one is written after it was built).
    assert d_in > len(req) and d_out >= len(resp), (d_in, d_out, st_req_len)


def test_head_everywhere_get_works(server_factory):
    srv = server_factory("--admin-token", "t")
    for path, headers in [("/health", {}), ("/stats", {}), ("/metrics", {}), ("/channels", {}),
                          ("/", {}), ("/demo", {}), ("/client.js", {}), ("/favicon.ico", {}),
                          ("/api/connections", {"Authorization": "Bearer t"})]:
        gs, gbody, gr = srv.request("GET", path, headers=headers)
        hs, hbody, hr = srv.request("HEAD", path, headers=headers)
        assert hs == gs and hbody == b"", (path, hs, hbody[:80])
        assert hr.getheader("Content-Type") == gr.getheader("Content-Type"), path
        if path not in ("/stats", "/metrics", "/health", "/api/connections"):  # figures move
            assert int(hr.getheader("Content-Length")) == len(gbody), path
    # Unknown paths are 404 for HEAD as for GET; other methods list both.
    assert srv.request("HEAD", "/nope")[0] == 404
    s, _, r = srv.request("DELETE", "/health")
    assert s == 405 and r.getheader("Allow") == "GET, HEAD"
    # The connection stays usable after a HEAD (no body left in the stream).
    raw = http_request(srv.port, b"HEAD /health HTTP/1.1\r\nHost: x\r\n\r\n"
                                 b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert raw.count(b"HTTP/1.1 200") >= 1


def test_favicon(server):
    s, body, r = server.request("GET", "/favicon.ico")
    assert s == 200 and r.getheader("Content-Type") == "image/x-icon"
    assert body[:4] == b"\x00\x00\x01\x00"  # ICO header
    assert body == open(os.path.join(os.path.dirname(__file__), "..", "..", "web",
                                     "favicon.ico"), "rb").read()


def test_client_js_cors(server_factory):
    anyone = server_factory()
    s, _, r = anyone.request("GET", "/client.js", headers={"Origin": "https://a.example"})
    assert s == 200 and r.getheader("Access-Control-Allow-Origin") == "*"
    listed = server_factory("--allowed-origin", "https://a.example",
                            "--allowed-origin", "https://b.example")
    s, _, r = listed.request("GET", "/client.js", headers={"Origin": "https://b.example"})
    assert r.getheader("Access-Control-Allow-Origin") == "https://b.example"
    assert "Origin" in r.getheader("Vary")
    s, _, r = listed.request("GET", "/client.js", headers={"Origin": "https://evil.example"})
    assert s == 200 and r.getheader("Access-Control-Allow-Origin") is None
    # Pages are not for other origins.
    s, _, r = anyone.request("GET", "/demo", headers={"Origin": "https://a.example"})
    assert r.getheader("Access-Control-Allow-Origin") is None


def access_lines(path):
    try:
        with open(path) as f:
            return f.read().splitlines()
    except FileNotFoundError:
        return []


def test_access_log_and_trusted_proxy(server_factory, tmp_path):
    log = str(tmp_path / "access.log")
    srv = server_factory("--access-log", log, "--trusted-proxy", "127.0.0.0/8",
                         "--trusted-proxy", "10.0.0.0/8", workers=1)
    srv.request("GET", "/health?x=1", headers={"User-Agent": 'probe "1"'})
    srv.request("GET", "/nope", headers={"X-Forwarded-For": "203.0.113.7, 10.1.2.3"})
    srv.request("HEAD", "/stats", headers={"X-Forwarded-For": "198.51.100.1"})
    # /health polls of the fixture are logged too: wait for our last line.
    lines = wait_for(lambda: any('"HEAD /stats' in ln for ln in access_lines(log))
                     and access_lines(log), what="log lines")
    health = [ln for ln in lines if '"GET /health?x=1 HTTP/1.1"' in ln][0]
    assert health.startswith("127.0.0.1 - - [")
    assert ' 200 ' in health and '"probe \\"1\\""' in health
    nope = [ln for ln in lines if "/nope" in ln][0]
    # Rightmost untrusted hop of X-Forwarded-For (10.1.2.3 is a trusted proxy).
    assert nope.startswith("203.0.113.7 ") and '" 404 ' in nope
    head = [ln for ln in lines if '"HEAD /stats' in ln][0]
    assert head.startswith("198.51.100.1 ")
    # Fields: status, bytes (head only for HEAD), duration in seconds.
    parts = head.rsplit(" ", 1)
    assert float(parts[1]) >= 0
    # Rotation: the file moved away is replaced within a second or so.
    os.rename(log, log + ".1")
    wait_for(lambda: (srv.request("GET", "/health"), os.path.exists(log))[1], timeout=10,
             interval=0.2, what="reopened access log")


def test_forwarded_for_ignored_from_untrusted_peer(server_factory, tmp_path):
    log = str(tmp_path / "access.log")
    srv = server_factory("--access-log", log, workers=1)  # no --trusted-proxy
    srv.request("GET", "/nope", headers={"X-Forwarded-For": "203.0.113.7"})
    lines = wait_for(lambda: [ln for ln in access_lines(log) if "/nope" in ln], what="a log line")
    assert lines[0].startswith("127.0.0.1 ")


def test_peer_address_in_connection_telemetry(server):
    async def go():
        c = await connect(server.url)
        await c.close()
    run(go())
    line = wait_for(lambda: [ln for ln in server.log_lines() if "connection-added" in ln],
                    what="connection-added")[0]
    assert json.loads(line.split("] ", 1)[1])["peer"] == "127.0.0.1"
