"""TLS (issue 16): https and wss for every endpoint with ECDSA and RSA
certificates from a throw-away CA, SNI, resumption across workers (the
session-reused flag), SIGHUP reload (new connections see the new
certificate, old ones stay), every bad-certificate start and reload error,
plain HTTP and garbage on the TLS port, the handshake timeout, the version
floor, a handshake flood bounded by --max-http-connections, and large and
many small messages through the record packing."""
import asyncio
import json
import os
import select
import shutil
import signal
import socket
import ssl
import subprocess
import time

import pytest
import websockets

from conftest import BIN, CRASH_BIN, SLOW, free_port, wait_for
from tlskit import Certs, https_get, tls_connect
from wsraw import OP_TEXT, RawWS, frame

TOKEN = "t" * 40


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    return Certs(str(tmp_path_factory.mktemp("certs")))


def tls_server(server_factory, certs, pair=None, *args, workers=2, **kw):
    cert, key = pair or certs.ec
    port = free_port()
    s = server_factory("--tls-port", str(port), "--tls-cert", cert, "--tls-key", key, *args,
                       workers=workers, **kw)
    s.tls_port = port
    return s


def errors(s):
    return s.stats()["errors"]


@pytest.mark.parametrize("kind", ["ec", "rsa"])
def test_every_endpoint_over_https_and_wss(server_factory, certs, kind):
    s = tls_server(server_factory, certs, getattr(certs, kind), "--admin-token", TOKEN, "--echo")
    ctx = certs.client_context()
    for path, want in [("/health", b'"healthy"'), ("/stats", b'"workers"'),
                       ("/metrics", b"sente_lite_"), ("/channels", b"channels"),
                       ("/client.js", b"SenteLite"), ("/", b"<html"), ("/demo", b"<html"),
                       ("/dashboard", b"<html")]:
        status, body, info = https_get(s.tls_port, ctx, path)
        assert status == 200, path
        assert want in body, path
        assert info["alpn"] == "http/1.1"
    status, body, _ = https_get(s.tls_port, ctx, "/api/connections",
                                headers={"Authorization": "Bearer " + TOKEN})
    assert status == 200 and b"connections" in body
    status, _, _ = https_get(s.tls_port, ctx, "/api/connections")
    assert status == 401

    async def protocol():
        url = f"wss://localhost:{s.tls_port}/"
        async with websockets.connect(url, ssl=ctx) as a, websockets.connect(url, ssl=ctx) as b:
            wa, wb = json.loads(await a.recv()), json.loads(await b.recv())
            assert wa["type"] == wb["type"] == "welcome"
            await a.send(json.dumps({"type": "subscribe", "channel-id": "news"}))
            assert json.loads(await a.recv())["success"] is True
            await b.send(json.dumps({"type": "ping", "timestamp": 5}))
            assert json.loads(await b.recv())["type"] == "pong"
            # Large (many records, a socket that fills) and many small messages.
            big = "x" * 300000
            await b.send(json.dumps({"type": "publish", "channel-id": "news", "data": big}))
            for i in range(300):
                await b.send(json.dumps({"type": "publish", "channel-id": "news", "data": i}))
            got = json.loads(await a.recv())
            assert got["type"] == "channel-message" and got["data"] == big
            for i in range(300):
                assert json.loads(await a.recv())["data"] == i
            # b reads its 301 publish-results (a client that leaves more than
            # its queue holds unread stops reading: its close then waits for
            # websockets' 10 s close timeout).
            for _ in range(301):
                assert json.loads(await b.recv())["type"] == "publish-result"
            # RPC between the two.
            await a.send(json.dumps({"type": "rpc-request", "channel-id": "news",
                                     "request-id": "r1", "method": "m", "params": {}}))
        async with websockets.connect(f"wss://localhost:{s.tls_port}/echo", ssl=ctx) as e:
            await e.send("hello")
            assert await e.recv() == "hello"

    asyncio.run(protocol())
    st = s.stats()
    assert st["tls-handshakes"] >= 12
    assert all(w["tls-handshakes"] >= 0 for w in st["workers"])
    # The plain port still speaks plain HTTP.
    assert s.request("GET", "/health")[0] == 200


def test_tls_only_port_and_plain_http(server_factory, certs):
    cert, key = certs.ec
    s = server_factory("--tls", "--tls-cert", cert, "--tls-key", key, "--ops-listen",
                       f"127.0.0.1:{free_port()}", wait=False)
    wait_for(s.healthy, timeout=10 * SLOW, what="ops listener")
    status, body, _ = https_get(s.port, certs.client_context(), "/client.js")
    assert status == 200
    # (the operator endpoints are on the --ops-listen listener only)
    assert https_get(s.port, certs.client_context(), "/health")[0] == 404
    # Plain HTTP on the TLS port: a clear 400, counted.
    with socket.create_connection(("127.0.0.1", s.port), timeout=5) as c:
        c.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        data = b""
        while True:
            chunk = c.recv(4096)
            if not chunk:
                break
            data += chunk
    assert data.startswith(b"HTTP/1.1 400 ")
    assert b"plain HTTP request was sent to the TLS port" in data
    wait_for(lambda: errors(s)["tls-plain-http"] == 1, what="tls-plain-http counted")
    # Garbage that is neither TLS nor HTTP: closed, counted.
    with socket.create_connection(("127.0.0.1", s.port), timeout=5) as c:
        c.sendall(b"\x00\x01\x02\x03" * 16)
        try:
            assert c.recv(100) == b""
        except ConnectionResetError:
            pass  # closed with its garbage unread
    wait_for(lambda: errors(s)["tls-bad-record"] == 1, what="tls-bad-record counted: %r" % errors(s))


def test_resumption_across_workers(server_factory, certs):
    s = tls_server(server_factory, certs, workers=2)
    ctx = certs.client_context()
    held = []

    def open_ws(session=None):
        box = {}

        def wrap(raw):
            box["s"] = ctx.wrap_socket(raw, server_hostname="localhost", session=session)
            return box["s"]
        ws = RawWS(s.tls_port, wrap=wrap)
        assert ws.status == 101
        worker = json.loads(ws.read_data())["worker"]
        held.append(ws)  # kept open: the next connection goes to the other worker
        return box["s"], worker

    first, w0 = open_ws()
    session = first.session
    assert session is not None and not first.session_reused
    other = None
    for _ in range(8):
        sock, w = open_ws(session)
        assert sock.session_reused, "the ticket from worker %d was not accepted" % w0
        if w != w0:
            other = w
            break
    assert other is not None, "every connection went to worker %d" % w0
    per = {w["id"]: w["tls-resumed"] for w in s.stats()["workers"]}
    assert per[other] >= 1
    for ws in held:
        ws.close()


def test_sni_picks_the_certificate(server_factory, certs):
    s = tls_server(server_factory, certs, None, "--tls-cert", certs.other[0], "--tls-key",
                   certs.other[1])
    ctx = certs.client_context()
    _, _, a = https_get(s.tls_port, ctx, "/health", host="localhost")
    _, _, b = https_get(s.tls_port, ctx, "/health", host="other.test")
    assert a["cert"] == pem_der(certs.ec[0])
    assert b["cert"] == pem_der(certs.other[0])
    # An unknown name gets the default (and fails verification for it).
    raw = socket.create_connection(("127.0.0.1", s.tls_port), timeout=5)
    nov = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    nov.check_hostname = False
    nov.verify_mode = ssl.CERT_NONE
    c = nov.wrap_socket(raw, server_hostname="unknown.test")
    assert c.getpeercert(binary_form=True) == pem_der(certs.ec[0])
    c.close()


def test_tls12_sni_and_resumption_across_workers(server_factory, certs):
    """TLS 1.2 handshakes use a twin of each context without the key-log
    callback (issue 16, handshake rate): the SNI choice, the chain and the
    shared session tickets must be the same as with TLS 1.3."""
    s = tls_server(server_factory, certs, None, "--tls-cert", certs.other[0], "--tls-key",
                   certs.other[1], workers=2)
    ctx = certs.client_context(maximum_version=ssl.TLSVersion.TLSv1_2)
    _, _, a = https_get(s.tls_port, ctx, "/health", host="localhost")
    _, _, b = https_get(s.tls_port, ctx, "/health", host="other.test")
    assert a["version"] == b["version"] == "TLSv1.2"
    assert a["cert"] == pem_der(certs.ec[0])
    assert b["cert"] == pem_der(certs.other[0])
    assert a["alpn"] == "http/1.1"
    # Resumed, on both workers (round robin between idle workers), with
    # the ticket of the first handshake; the other name too.
    for _ in range(4):
        status, _, r = https_get(s.tls_port, ctx, "/health", session=a["session"])
        assert status == 200 and r["reused"] and r["cert"] == pem_der(certs.ec[0])
    per = {w["id"]: w["tls-resumed"] for w in s.stats()["workers"]}
    assert len(per) == 2 and all(n >= 1 for n in per.values()), per
    status, _, r = https_get(s.tls_port, ctx, "/health", host="other.test", session=b["session"])
    assert status == 200 and r["reused"] and r["cert"] == pem_der(certs.other[0])


def test_tls12_records_read_ahead_together(server_factory, certs):
    """TLS 1.2 reads ahead (issue 16, handshake rate): one read(2) takes
    whatever records the socket has, and SSL_read opens one per call.
    Records left in OpenSSL's buffer are input the socket will not
    announce again: the end of a resumed handshake and two pipelined
    requests in one segment must get both answers (with only the first,
    the second would wait for bytes that never come)."""
    s = tls_server(server_factory, certs, None, workers=1)
    ctx = certs.client_context(maximum_version=ssl.TLSVersion.TLSv1_2)
    _, _, first = https_get(s.tls_port, ctx, "/health")
    raw = socket.create_connection(("127.0.0.1", s.tls_port), timeout=5 * SLOW)
    inc, out = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(inc, out, server_hostname="localhost", session=first["session"])
    while True:
        try:
            obj.do_handshake()
            break
        except ssl.SSLWantReadError:
            raw.sendall(out.read())
            data = raw.recv(65536)
            assert data, "closed in the handshake"
            inc.write(data)
    assert obj.session_reused  # the server's Finished came first: ours is still here
    obj.write(b"GET /health HTTP/1.1\r\nHost: localhost\r\n\r\n")
    obj.write(b"GET /stats HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
    raw.sendall(out.read())  # our Finished and two records, in one segment
    got = b""
    while b'"workers"' not in got:
        try:
            data = raw.recv(65536)
        except socket.timeout:
            pytest.fail("the second request was never answered: %r" % got[:200])
        if not data:
            break
        inc.write(data)
        try:
            while True:
                chunk = obj.read(65536)
                if not chunk:
                    break  # the server's close_notify
                got += chunk
        except (ssl.SSLWantReadError, ssl.SSLZeroReturnError):
            pass
    assert got.count(b"HTTP/1.1 200") == 2, got[:300]
    assert b'"healthy"' in got and b'"workers"' in got
    raw.close()


def pem_der(path):
    with open(path) as f:
        return ssl.PEM_cert_to_DER_cert(f.read())


def test_sighup_reload(server_factory, certs, tmp_path):
    cert, key = str(tmp_path / "c.pem"), str(tmp_path / "k.pem")
    shutil.copy(certs.ec[0], cert)
    shutil.copy(certs.ec[1], key)
    s = tls_server(server_factory, certs, (cert, key))
    ctx = certs.client_context()
    old = tls_connect(s.tls_port, ctx)
    assert old.getpeercert(binary_form=True) == pem_der(certs.ec[0])
    shutil.copy(certs.ec2[0], cert)
    shutil.copy(certs.ec2[1], key)
    os.kill(s.pid, signal.SIGHUP)

    def new_cert():
        return https_get(s.tls_port, ctx, "/health")[2]["cert"] == pem_der(certs.ec2[0])
    wait_for(new_cert, timeout=5 * SLOW, what="the new certificate served")
    # The connection made before the reload goes on with its session.
    old.sendall(b"GET /health HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
    assert old.recv(100).startswith(b"HTTP/1.1 200")
    old.close()
    # A reload that fails keeps the certificates in use, and says why.
    shutil.copy(certs.stray_key, key)
    os.kill(s.pid, signal.SIGHUP)
    wait_for(lambda: any("tls-reload-failed" in l and "does not match" in l
                         for l in s.log_lines()), timeout=5 * SLOW, what="tls-reload-failed")
    assert https_get(s.tls_port, ctx, "/health")[2]["cert"] == pem_der(certs.ec2[0])
    os.remove(cert)
    os.kill(s.pid, signal.SIGHUP)
    wait_for(lambda: sum("tls-reload-failed" in l for l in s.log_lines()) >= 2,
             timeout=5 * SLOW, what="second tls-reload-failed")
    assert https_get(s.tls_port, ctx, "/health")[0] == 200
    # Only the master read the files and failed: the workers, told it
    # kept what they serve, did not try (review r16 L4).
    assert [l for l in s.log_lines() if "tls-reload-failed" in l and '"master"' not in l] == []


def certs_by_worker(s, ctx, workers=2):
    """{worker id: the certificate (DER) a new connection to it gets}.
    wss connections, held open so that the hand-off spreads them; two
    rounds, the first only to make sure each worker has run a turn since
    it was let go (what it does on a queued SIGHUP comes first)."""
    held, seen = [], {}
    for rnd in range(2):
        seen = {}
        for _ in range(8 * workers):
            box = {}

            def wrap(raw):
                box["s"] = ctx.wrap_socket(raw, server_hostname="localhost")
                return box["s"]
            ws = RawWS(s.tls_port, wrap=wrap)
            assert ws.status == 101
            w = json.loads(ws.read_data())["worker"]
            held.append(ws)
            seen.setdefault(w, box["s"].getpeercert(binary_form=True))
            if len(seen) == workers:
                break
        assert len(seen) == workers, "connections reached only workers %r" % list(seen)
    for ws in held:
        ws.close()
    return seen


def test_workers_reload_only_what_the_master_serves(server_factory, certs, tmp_path):
    """Review r16 L4.  A deploy writes the certificate, then the key: the
    master's reload falls between (new certificate, old key: refused, it
    keeps the old pair) and the workers' after it (both new).  Workers
    must not take the new pair on their own: a worker respawned later
    inherits the master's, and the fleet would serve two certificates.
    The workers are held stopped (SIGSTOP) while the files change, so the
    master's SIGHUP waits for them: the interleaving is certain."""
    cert, key = str(tmp_path / "c.pem"), str(tmp_path / "k.pem")
    shutil.copy(certs.ec[0], cert)
    shutil.copy(certs.ec[1], key)
    s = tls_server(server_factory, certs, (cert, key))
    ctx = certs.client_context()
    a, b, c = pem_der(certs.ec[0]), pem_der(certs.ec2[0]), pem_der(certs.rsa[0])
    pids = s.worker_pids()

    def failed(words):
        return [l for l in s.log_lines() if "tls-reload-failed" in l and words in l]

    for p in pids:
        os.kill(p, signal.SIGSTOP)
    try:
        shutil.copy(certs.ec2[0], cert)   # the certificate first ...
        os.kill(s.pid, signal.SIGHUP)
        wait_for(lambda: failed("does not match"), timeout=5 * SLOW, what="the master's refusal")
        shutil.copy(certs.ec2[1], key)    # ... then its key
    finally:
        for p in pids:
            os.kill(p, signal.SIGCONT)
    assert certs_by_worker(s, ctx) == {0: a, 1: a}
    assert https_get(s.tls_port, ctx, "/health")[2]["cert"] == a
    assert [l for l in s.log_lines() if "tls-reloaded" in l] == []

    # The master took a pair; the files changed again before the workers
    # read them: what they read is not what the master serves - refused,
    # each keeps its certificates and says why.
    for p in pids:
        os.kill(p, signal.SIGSTOP)
    try:
        os.kill(s.pid, signal.SIGHUP)     # ec2, whole now
        wait_for(lambda: any("tls-reloaded" in l and '"master"' in l for l in s.log_lines()),
                 timeout=5 * SLOW, what="the master's reload")
        shutil.copy(certs.rsa[0], cert)
        shutil.copy(certs.rsa[1], key)
    finally:
        for p in pids:
            os.kill(p, signal.SIGCONT)
    wait_for(lambda: len(failed("changed after the master read them")) == 2,
             timeout=5 * SLOW, what="both workers' refusals")
    assert certs_by_worker(s, ctx) == {0: a, 1: a}

    # The next SIGHUP with the files left alone: every process serves it.
    os.kill(s.pid, signal.SIGHUP)
    wait_for(lambda: sum("tls-reloaded" in l for l in s.log_lines()) == 4,
             timeout=5 * SLOW, what="master and workers reloaded")
    assert certs_by_worker(s, ctx) == {0: c, 1: c}
    assert b != c


def start_error(*args):
    p = subprocess.run([BIN, "--host", "127.0.0.1", "--port", str(free_port())] + list(args),
                       capture_output=True, text=True, timeout=20)
    return p.returncode, p.stderr


def test_bad_certificates_at_start(certs, tmp_path):
    port = str(free_port())
    cert, key = certs.ec
    missing = str(tmp_path / "missing.pem")
    garbage = str(tmp_path / "garbage.pem")
    with open(garbage, "w") as f:
        f.write("not a certificate\n")
    cases = [
        (["--tls-cert", missing, "--tls-key", key], ["--tls-cert", missing]),
        (["--tls-cert", cert, "--tls-key", missing], ["--tls-key", missing]),
        (["--tls-cert", garbage, "--tls-key", key], ["--tls-cert", garbage]),
        (["--tls-cert", cert, "--tls-key", certs.stray_key], ["does not match", certs.stray_key]),
        (["--tls-cert", certs.expired[0], "--tls-key", certs.expired[1]],
         ["expired", certs.expired[0]]),
        (["--tls-cert", cert], ["--tls-cert given 1 times and --tls-key 0 times"]),
        ([], ["--tls-port needs --tls-cert"]),
        (["--tls-cert", cert, "--tls-key", key, "--tls-min-version", "1.1"],
         ["--tls-min-version"]),
    ]
    for args, words in cases:
        rc, err = start_error("--tls-port", port, *args)
        assert rc == 2, (args, err)
        for w in words:
            assert w in err, (args, err)


def test_wrong_host_and_unknown_ca(server_factory, certs):
    s = tls_server(server_factory, certs, certs.wrong_host)
    with pytest.raises(ssl.SSLCertVerificationError):
        tls_connect(s.tls_port, certs.client_context())
    with pytest.raises(ssl.SSLCertVerificationError):
        tls_connect(s.tls_port, ssl.create_default_context())  # not our CA
    wait_for(lambda: errors(s)["tls-peer-alert"] >= 2, what="refusals counted")


def test_version_floor(server_factory, certs):
    s = tls_server(server_factory, certs, None, "--tls-min-version", "1.3")
    old = certs.client_context(maximum_version=ssl.TLSVersion.TLSv1_2)
    with pytest.raises(ssl.SSLError):
        tls_connect(s.tls_port, old)
    wait_for(lambda: errors(s)["tls-protocol-version"] >= 1, what="tls-protocol-version")
    assert https_get(s.tls_port, certs.client_context(), "/health")[2]["version"] == "TLSv1.3"


def test_handshake_timeout_and_flood(server_factory, certs):
    s = tls_server(server_factory, certs, None, "--message-timeout-ms", "400",
                   "--max-http-connections", "16", workers=1)
    silent = socket.create_connection(("127.0.0.1", s.tls_port), timeout=5 * SLOW)
    half = socket.create_connection(("127.0.0.1", s.tls_port), timeout=5 * SLOW)
    half.sendall(b"\x16\x03\x01\x02\x00\x01")  # a ClientHello that never ends
    t = time.monotonic()
    assert silent.recv(10) == b"" and half.recv(10) == b""
    assert time.monotonic() - t < 3 * SLOW
    wait_for(lambda: errors(s)["tls-handshake-timeout"] == 2, what="handshake timeouts")
    # A flood of connections that never handshake: bounded like any other
    # (the oldest idle ones make room), a real client is still served.
    flood = [socket.create_connection(("127.0.0.1", s.tls_port)) for _ in range(60)]
    assert https_get(s.tls_port, certs.client_context(), "/health")[0] == 200
    assert errors(s)["http-connection-limit"] >= 40
    for f in flood:
        f.close()


def _http_conns(s):
    return sum(w["http-connections"] for w in s.stats()["workers"])


def _pipelined_then_end(s, certs, end, n=30, path="/dashboard"):
    """n pipelined requests on one TLS connection whose client does not
    read (small receive buffer), then the client's end: "fin" (TCP FIN
    without close_notify, as most HTTP clients do) or "close_notify".
    Then it reads everything: the number of complete responses."""
    ctx = certs.client_context()
    raw = socket.socket()
    raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    raw.settimeout(10 * SLOW)
    raw.connect(("127.0.0.1", s.tls_port))
    inc, out = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(inc, out, server_hostname="localhost")

    def pump():
        data = out.read()
        if data:
            raw.sendall(data)

    while True:
        try:
            obj.do_handshake()
            break
        except ssl.SSLWantReadError:
            pump()
            inc.write(raw.recv(65536))
    pump()
    obj.write((f"GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n" * n).encode())
    pump()
    if end == "fin":
        raw.shutdown(socket.SHUT_WR)
    else:
        try:
            obj.unwrap()
        except ssl.SSLWantReadError:
            pass
        pump()
    time.sleep(0.5)  # the server reads our end while its answers are still queued
    got = b""
    while True:
        chunk = raw.recv(65536)
        if not chunk:
            break
        inc.write(chunk)
        try:
            while True:
                d = obj.read(65536)
                if not d:
                    break
                got += d
        except (ssl.SSLWantReadError, ssl.SSLZeroReturnError):
            pass
    raw.close()
    return got.count(b"HTTP/1.1 200 ")


def test_close_without_close_notify_is_an_end_of_stream(server_factory, certs):
    """Review r16 M3: a TLS client that closes TCP without close_notify
    (keep-alive clients, health checks) was counted tls-bad-record, and the
    read failed instead of ending the stream, so a half-closed client lost
    the answers still queued.  L2: a client's close_notify after pipelined
    requests got our close_notify first and no answers."""
    s = tls_server(server_factory, certs, workers=1)
    ctx = certs.client_context()
    for _ in range(3):  # a keep-alive request, then the socket closed
        c = tls_connect(s.tls_port, ctx)
        c.sendall(b"GET /health HTTP/1.1\r\nHost: localhost\r\n\r\n")
        assert c.recv(65536).startswith(b"HTTP/1.1 200")
        c.close()  # no unwrap(): no close_notify
    wait_for(lambda: _http_conns(s) <= 1, what="the three closed")
    err = errors(s)
    assert err.get("tls-bad-record", 0) == 0, err
    assert err.get("tls-handshake-failed", 0) == 0, err
    # Half-closed (FIN, no close_notify) with answers queued: all arrive.
    assert _pipelined_then_end(s, certs, "fin") == 30
    # close_notify after pipelined requests: the answers come first.
    assert _pipelined_then_end(s, certs, "close_notify") == 30
    err = errors(s)
    assert err.get("tls-bad-record", 0) == 0, err


def test_stuck_wss_subscriber_keeps_its_record_queued(server_factory, certs):
    """Review r16 M4: a record SSL_write could not write left the queue
    for a private copy - counted as sent, held by nothing the bounds see.
    Now it stays queued (pinned) until written: a wss subscriber that does
    not read holds its unsent output in /stats outbound-bytes, and once it
    reads, every message arrives whole (the retried records are the same
    bytes) and nothing is counted as a TLS error."""
    s = tls_server(server_factory, certs, workers=1)
    ctx = certs.client_context()
    sub = RawWS(s.tls_port, rcvbuf=4096, timeout=30 * SLOW,
                wrap=lambda raw: ctx.wrap_socket(raw, server_hostname="localhost"))
    assert sub.status == 101
    assert json.loads(sub.read_data())["type"] == "welcome"
    sub.send(frame(OP_TEXT, json.dumps({"type": "subscribe", "channel-id": "t"})))
    assert json.loads(sub.read_data())["success"] is True
    pub = RawWS(s.port)
    assert json.loads(pub.read_data())["type"] == "welcome"
    sent = 0
    for i in range(400):  # 20 KB each: a record of 16 KiB and a piece
        pub.send(frame(OP_TEXT, json.dumps({"type": "publish", "channel-id": "t",
                                            "data": {"i": i, "pad": os.urandom(7000).hex()}})))
        assert json.loads(pub.read_data())["type"] == "publish-result"
        sent += 1
        if s.stats()["outbound-bytes"] >= 16384:
            break
    assert s.stats()["outbound-bytes"] >= 16384, "the subscriber's output never backed up"
    got = [json.loads(sub.read_data())["data"]["i"] for _ in range(sent)]
    assert got == list(range(sent))
    err = errors(s)
    assert err.get("tls-bad-record", 0) == 0 and err.get("slow-consumer", 0) == 0, err


def test_handshake_in_progress_is_not_evicted_first(server_factory, certs):
    """Review r16 L5: a TLS connection stayed on the idle list until HTTP
    bytes arrived, so a real client in the middle of its handshake (more
    round trips than plain HTTP) was the oldest idle connection and the
    first a flood of bare connects evicted.  Now handshake bytes take it
    off the list (the handshake timeout bounds it): the flood churns only
    itself and the client finishes its handshake and request."""
    s = tls_server(server_factory, certs, None, "--max-http-connections", "16",
                   "--message-timeout-ms", "20000", workers=1)
    ctx = certs.client_context()
    raw = socket.create_connection(("127.0.0.1", s.tls_port), timeout=10 * SLOW)
    inc, out = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(inc, out, server_hostname="localhost")
    try:
        obj.do_handshake()
    except ssl.SSLWantReadError:
        pass
    raw.sendall(out.read())  # the ClientHello; the rest after the flood
    inc.write(raw.recv(65536))  # the server's flight: it has read our hello
    flood = [socket.create_connection(("127.0.0.1", s.tls_port)) for _ in range(40)]
    wait_for(lambda: errors(s)["http-connection-limit"] >= 20, what="the flood over the limit")
    while True:
        try:
            obj.do_handshake()
            break
        except ssl.SSLWantReadError:
            raw.sendall(out.read())
            data = raw.recv(65536)
            assert data, "evicted in the middle of its handshake"
            inc.write(data)
    raw.sendall(out.read())
    obj.write(b"GET /health HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
    raw.sendall(out.read())
    got = b""
    while b"healthy" not in got:
        data = raw.recv(65536)
        assert data, "closed before the answer"
        inc.write(data)
        try:
            got += obj.read(65536)
        except ssl.SSLWantReadError:
            pass
    assert got.startswith(b"HTTP/1.1 200")
    for f in flood:
        f.close()
    raw.close()


def test_plain_http_on_the_tls_port_lingers(server_factory, certs):
    """Review r16 L3: plain HTTP on a TLS port was answered 400 and closed
    at once, so what the client sent after (the rest of a body) met a
    closed socket: a reset, which can destroy the 400 before it is read.
    Now the connection lingers like any refused HTTP one: half-closed,
    what still comes is drained, and the client's end gets a clean FIN."""
    s = tls_server(server_factory, certs, workers=1)
    wpid = s.worker_pids()[0]
    time.sleep(0.2)  # (the /stats connection's socket closed: it may only lower base)
    base = _worker_sockets(wpid)
    with socket.create_connection(("127.0.0.1", s.tls_port), timeout=5 * SLOW) as c:
        c.sendall(b"POST /x HTTP/1.1\r\nHost: x\r\nContent-Length: 200000\r\n\r\n")
        data = b""
        while b"use https" not in data:
            chunk = c.recv(4096)
            assert chunk, data
            data += chunk
        assert data.startswith(b"HTTP/1.1 400 ")
        assert c.recv(4096) == b""  # our FIN: the answer is complete
        time.sleep(0.3)  # the server has long finished its turn
        c.sendall(b"b" * 200000)  # the body, after the answer
        time.sleep(0.3)
        c.shutdown(socket.SHUT_WR)
        # Drained, not reset: the server saw our FIN and closed in turn.
        # (Its socket, not http-connections: it stopped counting when it was
        # refused - review rg16 F2.)
        wait_for(lambda: _worker_sockets(wpid) <= base, what="the refused connection closed")
        assert c.recv(4096) == b""
    assert errors(s)["tls-plain-http"] == 1


def test_plain_http_on_the_tls_port_does_not_hold_http_places(server_factory, certs):
    """Review rg16 F2: plain HTTP on the TLS port, answered 400 and
    lingering, kept its --max-http-connections place (off every list, so
    no newcomer could take it back) until its FIN or the 2 s linger: eight
    one-packet GETs locked every HTTP client and WebSocket upgrade out with
    503.  Now it stops counting when it is refused, as every refused HTTP
    connection does."""
    s = tls_server(server_factory, certs, None, "--max-http-connections", "8", workers=1)
    socks = [socket.create_connection(("127.0.0.1", s.tls_port), timeout=5 * SLOW)
             for _ in range(8)]
    for c in socks:
        c.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    for c in socks:  # each is answered 400 and lingers (the socket stays open)
        data = b""
        while b"use https" not in data:
            chunk = c.recv(4096)
            assert chunk, data
            data += chunk
        assert data.startswith(b"HTTP/1.1 400 ")
    # At once (well inside the linger): a plain client is admitted.
    assert s.request("GET", "/health")[0] == 200
    st = s.stats()
    assert st["errors"]["tls-plain-http"] == 8
    assert st["errors"]["http-connection-limit"] == 0
    for c in socks:
        c.close()


def _worker_sockets(pid):
    n = 0
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            n += os.readlink(f"/proc/{pid}/fd/{fd}").startswith("socket:")
        except OSError:
            pass  # closed meanwhile
    return n


def _refused_flood(s, port, n):
    """n bare connects to port while every --max-http-connections place is
    held by a request receiving its body (nothing to take back): each is
    refused at admission.  Returns the most sockets the worker held at
    once (sampled until every flood connection was closed by the server),
    above what it held before."""
    wpid = s.worker_pids()[0]

    def hold():
        h = socket.create_connection(("127.0.0.1", s.port), timeout=5 * SLOW)
        h.sendall(b"POST /x HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\nab")
        return h
    holders = [hold() for _ in range(8)]
    wait_for(lambda: _http_conns(s) == 9, what="8 places held")  # (the 9th: /stats)
    holders.append(hold())  # the last place (or the idle /stats connection's)
    time.sleep(0.2)  # (nothing to poll: /stats would be refused now)
    base = _worker_sockets(wpid)
    flood, most = [], 0
    for k in range(n):
        flood.append(socket.create_connection(("127.0.0.1", port), timeout=5 * SLOW))
        time.sleep(0.001)  # one at a time (not a hand-off batch) reaches the worker
        if k % 10 == 0:
            most = max(most, _worker_sockets(wpid))
    deadline = time.monotonic() + 20 * SLOW
    for f in flood:  # each is closed by the server (EOF or reset), not kept
        f.settimeout(max(0.1, deadline - time.monotonic()))
        try:
            f.recv(10)
        except ConnectionResetError:
            pass
        most = max(most, _worker_sockets(wpid))
        f.close()
    for h in holders:
        h.close()
    return most - base


def test_tls_newcomers_refused_at_the_limit_hold_no_descriptor(server_factory, certs):
    """Review rg16 F1: a TLS connection refused at --max-http-connections
    (a newcomer, or one taken back in the middle of its handshake) was
    given a 503 that cannot be written before a handshake, so it kept its
    descriptor and SSL object, uncounted, until its 100 ms deadline and the
    next tick (up to 1 s): 300 refused connects held ~300 descriptors on
    the TLS port against ~0 on the plain port.  Now it is closed at once,
    on both ports alike."""
    s = tls_server(server_factory, certs, None, "--max-http-connections", "9",
                   "--message-timeout-ms", "20000", "--keepalive-timeout-ms", "20000",
                   workers=1)
    plain = _refused_flood(s, s.port, 300)
    tls = _refused_flood(s, s.tls_port, 300)
    # At most a few hand-off batches (64 descriptors each) in flight.
    assert tls <= plain + 64, (tls, plain)
    assert errors(s)["http-connection-limit"] >= 600


def test_tls_handshake_taken_back_at_the_limit_is_closed_at_once(server_factory, certs):
    """Review rg16 F1, the heads list: connections that began a handshake
    (one byte of a ClientHello) are taken back oldest first by newcomers at
    --max-http-connections; each taken back is closed at once, not kept
    until a tick with a 503 it can never send."""
    s = tls_server(server_factory, certs, None, "--max-http-connections", "8",
                   "--message-timeout-ms", "20000", "--keepalive-timeout-ms", "20000",
                   workers=1)
    wpid = s.worker_pids()[0]
    base = _worker_sockets(wpid)
    flood, most = [], 0
    for k in range(300):
        f = socket.create_connection(("127.0.0.1", s.tls_port), timeout=5 * SLOW)
        f.sendall(b"\x16")  # a handshake under way: on the heads list
        flood.append(f)
        time.sleep(0.002)  # its byte read before the next one comes
        if k % 10 == 0:
            most = max(most, _worker_sockets(wpid))
    # All but 8 are taken back (which 8 stay depends on when each byte was
    # read: one not read yet is idle, and goes first): closed by the server.
    deadline = time.monotonic() + 20 * SLOW
    open_ = list(flood)
    while len(open_) > 8 and time.monotonic() < deadline:
        ready, _, _ = select.select(open_, [], [], 0.05)
        for f in ready:
            try:
                gone = f.recv(10) == b""
            except ConnectionResetError:
                gone = True
            if gone:
                open_.remove(f)
        most = max(most, _worker_sockets(wpid))
    assert len(open_) == 8
    assert most - base <= 8 + 64, most - base
    assert errors(s)["http-connection-limit"] >= 292
    for f in flood:
        f.close()


def test_flush_waiting_for_the_peer_while_paused_goes_on_at_its_bytes(server_factory, certs):
    """Review rg16 F4 (the r16 L1 path): a TLS flush that must read the
    peer's bytes before it can write (a handshake message from the peer)
    while the connection is paused by back-pressure waited for neither
    event, until the not-reading timeout.  The test build's fault point
    makes the flush answer "wait for the peer" once, when the paused
    connection's 64 KiB of responses are queued; the client's next
    request then gets every response out (not 60 s later)."""
    s = tls_server(server_factory, certs, None, "--keepalive-timeout-ms", "30000",
                   "--message-timeout-ms", "30000", workers=1, binary=CRASH_BIN,
                   env={"SL_CRASH_ARM": "0:tls.flush.wait-read:1:fail"})
    ctx = certs.client_context()
    raw = socket.create_connection(("127.0.0.1", s.tls_port), timeout=10 * SLOW)
    inc, out = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(inc, out, server_hostname="localhost")

    def pump():
        data = out.read()
        if data:
            raw.sendall(data)

    while True:
        try:
            obj.do_handshake()
            break
        except ssl.SSLWantReadError:
            pump()
            inc.write(raw.recv(65536))
    pump()
    obj.write(b"GET /dashboard HTTP/1.1\r\nHost: localhost\r\n\r\n" * 30)
    pump()
    wait_for(lambda: s.stats()["workers"][0]["backpressure-pauses"] >= 1, what="paused")
    obj.write(b"GET /health HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
    pump()  # the peer's bytes the flush waits for
    got = b""
    while True:
        chunk = raw.recv(65536)  # (a timeout here: the flush was never retried)
        if not chunk:
            break
        inc.write(chunk)
        try:
            while True:
                d = obj.read(65536)
                if not d:
                    break
                got += d
        except (ssl.SSLWantReadError, ssl.SSLZeroReturnError):
            pass
    raw.close()
    assert got.count(b"HTTP/1.1 200 ") == 31
    assert b"healthy" in got


def test_close_notify_waits_for_a_full_socket(server_factory, certs):
    """Review rg16 F4 (the r16 L2 (b) path): when the socket could not
    take all of our close_notify, the half-close cut the alert short.  The
    test build's fault point makes tls_shutdown answer "socket full" once:
    the alert is written when the socket is writable, and the client reads
    a clean TLS end (close_notify), not a bare EOF."""
    s = tls_server(server_factory, certs, None, workers=1, binary=CRASH_BIN,
                   env={"SL_CRASH_ARM": "0:tls.shutdown.again:1:fail"})
    ctx = certs.client_context()
    ctx.options &= ~ssl.OP_IGNORE_UNEXPECTED_EOF  # (Debian's default sets it)
    raw = socket.create_connection(("127.0.0.1", s.tls_port), timeout=10 * SLOW)
    c = ctx.wrap_socket(raw, server_hostname="localhost", suppress_ragged_eofs=False)
    c.sendall(b"GET /health HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
    data = b""
    while True:
        chunk = c.recv(65536)  # ssl.SSLEOFError: an EOF without close_notify
        if not chunk:
            break
        data += chunk
    c.close()
    assert data.startswith(b"HTTP/1.1 200") and b"healthy" in data


def _tls_heap(s):
    return s.stats()["tls-heap-bytes"]


def test_openssl_heap_is_counted_in_stats(server_factory, certs):
    """rg16 F3: the memory OpenSSL holds for TLS connections - the SSL
    objects, and a partial record's read buffer (a TLS slowloris) - is
    counted: /stats tls-heap-bytes (and /metrics) rise while connections
    hold it and fall when they go."""
    s = tls_server(server_factory, certs, None, "--message-timeout-ms", "120000",
                   "--keepalive-timeout-ms", "120000", workers=1)
    base = _tls_heap(s)  # the worker's own: ~0 when idle (test below)
    n = 20
    # First bytes of a 16 KiB handshake record, then nothing: OpenSSL
    # holds its ~16.7 KiB read buffer for each.
    half = []
    for _ in range(n):
        h = socket.create_connection(("127.0.0.1", s.tls_port), timeout=5 * SLOW)
        h.sendall(b"\x16\x03\x01\x40\x00" + b"\x01" * 100)
        half.append(h)
    wait_for(lambda: _tls_heap(s) >= base + n * 16384, what="partial records counted")
    held = _tls_heap(s)
    # Established, idle TLS 1.2 connections: the SSL objects (~12 KB
    # each; TLS 1.3 ones free theirs: test_tlsrec.py).
    ctx = certs.client_context(maximum_version=ssl.TLSVersion.TLSv1_2)
    idle = [tls_connect(s.tls_port, ctx) for _ in range(n)]
    wait_for(lambda: _tls_heap(s) >= held + n * 8000, what="idle TLS connections counted")
    assert b"sente_lite_tls_heap_bytes{worker=" in s.request("GET", "/metrics")[1]
    for c in half + idle:
        c.close()
    wait_for(lambda: _tls_heap(s) < base + n * 4096, what="tls-heap-bytes back down")
    st = s.stats()  # one snapshot: the worker's figure is the total (one worker)
    assert st["workers"][0]["tls-heap-bytes"] == st["tls-heap-bytes"]


def test_tls_heap_is_each_workers_own_and_dies_with_it(server_factory, certs):
    """Review rq16 L1: a worker's tls-heap-bytes is what OpenSSL allocated
    in it after the fork - not the master's contexts again in every
    worker (~320 KB each before) - so the total is about the connections'
    state; and a killed worker's figure leaves the total with it."""
    s = tls_server(server_factory, certs, None, workers=2)
    # TLS 1.2: its connections keep their SSL objects (TLS 1.3 ones free
    # theirs after the handshake: test_tlsrec.py).
    ctx = certs.client_context(maximum_version=ssl.TLSVersion.TLSv1_2)
    tls_connect(s.tls_port, ctx).close()  # each worker's first turns done
    tls_connect(s.tls_port, ctx).close()
    base = _tls_heap(s)
    assert base < 100000, base  # no worker counts the master's ~320 KB
    n = 16
    idle = [tls_connect(s.tls_port, ctx) for _ in range(n)]

    def both_hold():
        ws = s.stats()["workers"]
        return all(w["tls-heap-bytes"] >= 3 * 8000 for w in ws)
    wait_for(both_hold, what="both workers hold TLS connections")
    wait_for(lambda: _tls_heap(s) >= base + n * 8000, what="the connections counted")
    st = s.stats()
    assert st["tls-heap-bytes"] <= base + n * 40000  # about 14 KB a connection
    assert st["tls-heap-bytes"] == sum(w["tls-heap-bytes"] for w in st["workers"])
    victim = st["workers"][0]["pid"]
    os.kill(victim, signal.SIGKILL)
    # From the moment the master has seen the death (the slot's pid is no
    # longer the victim's), the slot's figure is not the dead worker's.
    wait_for(lambda: s.stats()["workers"][0]["pid"] != victim, what="the death noticed")
    st = s.stats()
    assert st["workers"][0]["tls-heap-bytes"] < 8000, st["workers"][0]
    assert st["tls-heap-bytes"] == sum(w["tls-heap-bytes"] for w in st["workers"])
    for c in idle:
        c.close()


def test_heap_trims_are_few_and_counted(server_factory, certs):
    """Review rq16 M1: the worker's malloc_trim after handshakes pause walks
    the whole heap and serves nobody meanwhile, so a peer must not buy one
    per handshake: a trim only once OpenSSL has freed 4 MiB since the last,
    at most one per 10 s per worker, counted (tls-trims, tls-trim-ms)."""
    s = tls_server(server_factory, certs, None, workers=1)
    ctx = certs.client_context()
    keep = tls_connect(s.tls_port, ctx)  # the worker ticks while it has a connection

    def burst(n):
        for _ in range(n):
            tls_connect(s.tls_port, ctx).close()

    burst(120)  # ~120 x (40 KiB of handshake temporaries + a 14 KB SSL object)
    wait_for(lambda: s.stats()["tls-trims"] >= 1, timeout=8, what="a trim after the burst")
    first = s.stats()["tls-trims"]
    assert s.stats()["workers"][0]["tls-trims"] == first
    assert b"sente_lite_tls_trims_total{worker=" in s.request("GET", "/metrics")[1]
    # Another burst and pauses within the 10 s: no second trim.
    burst(120)
    time.sleep(1.5)
    burst(5)
    time.sleep(1.5)
    assert s.stats()["tls-trims"] == first
    keep.close()
