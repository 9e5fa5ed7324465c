"""Hostile clients (issue 13): everything a peer can make the server hold is
bounded, refused with the documented close code or status, and counted in
/stats "errors" by reason; the worker's RSS stays under a stated bound.
Counts and times are bounded; loopback only."""
import json
import os
import signal
import socket
import struct
import time

import pytest

from conftest import SLOW, wait_for
from wsraw import (OP_BINARY, OP_CLOSE, OP_CONT, OP_PING, OP_PONG, OP_TEXT, RawWS, frame,
                   read_response, status_of)

MIB = 1 << 20


# ASan keeps freed memory in quarantine and pads every allocation, so RSS
# says nothing about our bounds there: they are checked on the normal build.
ASAN = SLOW > 1


def assert_rss_growth(pid, before, bound):
    grown = rss_bytes(pid) - before
    print(f"RSS growth {grown / 1048576:.2f} MiB (bound {bound / 1048576:.2f} MiB)")
    if not ASAN:
        assert grown <= bound, f"worker RSS grew {grown} bytes, bound {bound}"


def rss_bytes(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def warm_up(srv):
    """One connection's worth of first-use allocations (libevent, jansson,
    telemetry), so RSS growth measures what the hostile one costs."""
    ws = opened(srv)
    ws.send(frame(OP_TEXT, json.dumps({"type": "x", "p": "q" * 60000})))
    ws.read_data()
    ws.close()


def opened(srv, **kw):
    ws = RawWS(srv.port, **kw)
    assert ws.status == 101, ws.head
    assert json.loads(ws.read_data())["type"] == "welcome"
    return ws


def errors(srv):
    """/stats errors; retried while our own request is refused at
    --max-http-connections (closed connections take a moment to count)."""
    deadline = time.time() + 5 * SLOW
    while True:
        try:
            return srv.stats()["errors"]
        except (KeyError, OSError, ValueError):
            if time.time() > deadline:
                raise
            time.sleep(0.05)


def http_conns(srv):
    """The worker's not-upgraded connections, or a large number while the
    server refuses our own /stats request (it counts against the limit)."""
    try:
        return srv.stats()["workers"][0]["http-connections"]
    except (KeyError, OSError, ValueError):
        return 1 << 30


def close_code(ws):
    """The close code the server sends, skipping everything before it."""
    try:
        code, _ = ws.read_until_close()
        return code
    except (EOFError, ConnectionResetError):
        return None


def send_until_refused(sock, data, limit_bytes, seconds, stalled=1.0):
    """Write data repeatedly (non-blocking) until the server stops taking
    it, closes, or the bounds pass; returns the bytes written.  "Stops
    taking it": nothing written for `stalled` seconds (x SLOW) - both socket
    buffers are full and the server reads no more (back-pressure); waiting
    out the whole `seconds` after that only cost time."""
    sock.setblocking(False)
    now = time.time()
    sent, off, deadline, progress = 0, 0, now + seconds * SLOW, now
    while sent < limit_bytes and now < deadline and now - progress < stalled * SLOW:
        try:
            n = sock.send(data[off:])  # a partial send continues where it stopped
            sent += n
            off = (off + n) % len(data)
            progress = time.time()
        except BlockingIOError:
            time.sleep(0.005)
        except OSError:
            break
        now = time.time()
    sock.setblocking(True)
    return sent


def finish_frame(sock, unit, sent):
    """Complete the frame a send_until_refused left half sent."""
    if sent % len(unit):
        sock.sendall(unit[sent % len(unit):])


# --------------------------------------------------------------- control

def test_ping_flood_closed_1008_and_counted(server_factory):
    """Finding 1: pings sent without reading used to queue pongs without
    bound.  Now at most one pong waits, and a flood is closed 1008."""
    srv = server_factory("--max-control-rate", "100", workers=1)
    wpid = srv.worker_pids()[0]
    warm_up(srv)
    before = rss_bytes(wpid)
    ws = RawWS(srv.port, rcvbuf=4096, timeout=10 * SLOW)
    ping = frame(OP_PING, b"p" * 125)
    send_until_refused(ws.sock, ping * 200, 50 * MIB, 5)
    wait_for(lambda: errors(srv)["control-flood"] >= 1, what="control-flood counted")
    assert_rss_growth(wpid, before, 4 * MIB + 1 * MIB)
    assert close_code(ws) == 1008
    ws.close()


def test_pongs_coalesced_latest_ping_answered(server_factory):
    srv = server_factory(workers=1)
    ws = opened(srv)
    # 50 pings in one write (under the rate limit): not 50 pongs queued;
    # the last pong answers the last ping.
    ws.send(b"".join(frame(OP_PING, b"%03d" % i) for i in range(50)))
    ws.send(frame(OP_TEXT, json.dumps({"type": "ping", "timestamp": 1})))
    pongs = []
    while True:
        _, op, payload = ws.read_frame()
        if op == OP_PONG:
            pongs.append(payload)
        elif op == OP_TEXT:
            break
    assert 1 <= len(pongs) <= 50
    # Whatever was coalesced, the latest ping got its answer by now or
    # gets it next (never an older one after it).
    if pongs[-1] != b"049":
        _, op, payload = ws.read_frame()
        assert (op, payload) == (OP_PONG, b"049")
    assert pongs == sorted(pongs)
    ws.close()


def test_unsolicited_pong_flood_closed(server_factory):
    srv = server_factory("--max-control-rate", "50", workers=1)
    ws = opened(srv)
    ws.send(frame(OP_PONG, b"x") * 200)
    assert close_code(ws) == 1008
    assert errors(srv)["control-flood"] == 1
    ws.close()


# ---------------------------------------------------------------- output

def test_echo_flood_without_reading_is_back_pressured(server_factory):
    """A client that sends requests and never reads the replies is not
    buffered for: reading stops at half of --max-outbound-bytes, nothing is
    closed, RSS stays bounded, and it is served once it reads again."""
    srv = server_factory(workers=1)  # --max-outbound-bytes 4M
    wpid = srv.worker_pids()[0]
    warm_up(srv)
    before = rss_bytes(wpid)
    ws = opened(srv, rcvbuf=4096, timeout=20 * SLOW)
    msg = frame(OP_TEXT, json.dumps({"type": "spam", "p": "y" * 4000}))
    sent = send_until_refused(ws.sock, msg * 16, 64 * MIB, 4)
    assert sent < 64 * MIB  # the server stopped taking it
    wait_for(lambda: srv.stats()["backpressure-pauses"] >= 1, what="pause")
    assert_rss_growth(wpid, before, 4 * MIB + 1 * MIB)
    assert srv.stats()["slow-consumer-disconnects"] == 0
    # Reading again: every reply arrives, in order, and the connection lives.
    n = 0
    replies = sent // len(msg)
    while n < replies:
        r = json.loads(ws.read_data())
        assert r["type"] == "echo"
        n += 1
    finish_frame(ws.sock, msg, sent)
    ws.send(frame(OP_TEXT, json.dumps({"type": "ping", "timestamp": 3})))
    while True:
        r = json.loads(ws.read_data())
        if r["type"] == "pong":
            break
    assert r["original-timestamp"] == 3
    ws.close()


def test_slow_subscriber_gets_whole_frames_then_1008(server_factory):
    """Finding 4: the frame being written is finished, the rest of the queue
    dropped, and the close 1008 follows it: no truncated frame."""
    srv = server_factory("--max-outbound-bytes", "256K", workers=1)
    slow = opened(srv, rcvbuf=4096, timeout=20 * SLOW)
    slow.send(frame(OP_TEXT, json.dumps({"type": "subscribe", "channel-id": "firehose"})))
    assert json.loads(slow.read_data())["success"] is True
    pub = opened(srv)
    data = {"p": "z" * 30000}
    for i in range(200):
        pub.send(frame(OP_TEXT, json.dumps({"type": "publish", "channel-id": "firehose",
                                            "data": data})))
        json.loads(pub.read_data())
        if srv.stats()["slow-consumer-disconnects"]:
            break
    wait_for(lambda: srv.stats()["slow-consumer-disconnects"] == 1, what="slow consumer")
    frames = 0
    while True:
        _, op, payload = slow.read_frame()  # raises on a truncated frame
        if op == OP_CLOSE:
            assert struct.unpack(">H", payload[:2])[0] == 1008
            break
        assert json.loads(payload)["type"] == "channel-message"
        frames += 1
    assert frames >= 1
    assert errors(srv)["slow-consumer"] == 1
    slow.close()
    pub.close()


def test_message_bigger_than_outbound_bound_is_echoed(server_factory):
    """Finding 5: one message larger than --max-outbound-bytes is queued
    whole; only a backlog makes a slow consumer."""
    srv = server_factory("--echo", "--max-message-size", "16M", "--max-outbound-bytes", "1M",
                         workers=1)
    ws = RawWS(srv.port, path="/echo", timeout=30 * SLOW)
    big = b"a" * (4 * MIB)
    ws.send(frame(OP_BINARY, big))
    assert ws.read_data() == big
    assert srv.stats()["slow-consumer-disconnects"] == 0
    ws.close()


# ------------------------------------------------------------------ HTTP

def test_pipelined_http_bounded(server_factory):
    """Finding 2: pipelined requests from a client that does not read are
    answered only while the previous responses have drained."""
    srv = server_factory(workers=1)
    wpid = srv.worker_pids()[0]
    warm_up(srv)
    before = rss_bytes(wpid)
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.connect(("127.0.0.1", srv.port))
    req = b"GET /dashboard HTTP/1.1\r\nHost: x\r\n\r\n"
    sent = send_until_refused(s, req * 500, 2 * MIB, 4)
    wait_for(lambda: srv.stats()["backpressure-pauses"] >= 1, what="pause")
    assert_rss_growth(wpid, before, 4 * MIB + 1 * MIB)
    # Now read: each request is answered, in order.
    s.settimeout(10 * SLOW)
    want = sent // len(req)
    got = 0
    f = s.makefile("rb")
    while got < want:
        line = f.readline()
        assert line.startswith(b"HTTP/1.1 200"), (line, got, want)
        length = 0
        while True:
            h = f.readline()
            if h == b"\r\n":
                break
            if h.lower().startswith(b"content-length:"):
                length = int(h.split(b":")[1])
        f.read(length)
        got += 1
    s.close()


def test_idle_keepalive_limit_and_upgrade_still_served(server_factory):
    """Finding 3: idle keep-alive connections count against
    --max-http-connections; the longest idle is closed to make room, so a
    WebSocket upgrade still succeeds."""
    srv = server_factory("--max-http-connections", "20", "--keepalive-timeout-ms", "60000",
                         workers=1)
    idle = []
    for _ in range(20):
        s = socket.create_connection(("127.0.0.1", srv.port))
        s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        assert status_of(read_response(s)) == 200
        idle.append(s)
    ws = opened(srv)
    assert errors(srv)["http-connection-limit"] >= 1
    ws.close()
    for s in idle:
        s.close()


def test_http_limit_evicts_silent_then_refuses_503(server_factory):
    """At --max-http-connections a new connection closes the oldest one that
    holds nothing (never sent a byte); when every one is receiving a request
    body (an unfinished head is taken back too since rm13 N1), the new one
    gets 503."""
    srv = server_factory("--max-http-connections", "10", workers=1)
    silent = [socket.create_connection(("127.0.0.1", srv.port)) for _ in range(10)]
    time.sleep(0.7)  # silent for longer than the 500 ms that makes them evictable
    wait_for(lambda: 10 <= http_conns(srv) < 1 << 30, what="accepted")
    # (the /stats request itself evicted the oldest silent one)
    silent[0].settimeout(5 * SLOW)
    assert silent[0].recv(10) == b""
    for s in silent:
        s.close()
    wait_for(lambda: http_conns(srv) <= 1, what="closed")
    time.sleep(0.5)  # the server sees our own /stats connections close too
    partial = []
    for _ in range(10):
        s = socket.create_connection(("127.0.0.1", srv.port))
        s.sendall(b"POST /api/x HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nab")
        partial.append(s)
    time.sleep(0.3)
    extra = socket.create_connection(("127.0.0.1", srv.port), timeout=5 * SLOW)
    resp = read_response(extra)
    assert status_of(resp) == 503 and b"too-many-http-connections" in resp
    for s in partial + [extra]:
        s.close()
    wait_for(lambda: errors(srv)["http-connection-limit"] >= 2, what="counted")


def test_keepalive_timeout(server_factory):
    srv = server_factory("--keepalive-timeout-ms", "300", workers=1)
    s = socket.create_connection(("127.0.0.1", srv.port), timeout=5 * SLOW)
    s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
    assert status_of(read_response(s)) == 200
    t0 = time.time()
    assert s.recv(100) == b""  # closed by the server
    assert time.time() - t0 < 3 * SLOW
    s.close()


def test_leading_crlf_split_across_reads(server):
    """Finding 8: an empty line before the request split between CR and LF."""
    s = socket.create_connection(("127.0.0.1", server.port), timeout=5 * SLOW)
    s.sendall(b"\r")
    time.sleep(0.1)
    s.sendall(b"\nGET /health HTTP/1.1\r\nHost: x\r\n\r\n")
    assert status_of(read_response(s)) == 200
    s.close()


def test_json_error_cut_inside_utf8_still_answered(server):
    """Finding 8: jansson's error text quoting "\\é" ends inside a UTF-8
    character; the reply must still come."""
    ws = opened(server)
    ws.send(frame(OP_TEXT, '"\\\u00e9"'))
    r = json.loads(ws.read_data())
    assert r["type"] == "error" and r["reason"] == "invalid-json"
    ws.send(frame(OP_TEXT, '{"type":"x","v":"\u00e9\u00e9\\\u00e9"}'))
    assert json.loads(ws.read_data())["reason"] == "invalid-json"
    ws.close()


# ------------------------------------------------- the hostile kinds of finding 7

# The frames carry random masks: the test ids are the kinds alone, the same
# in every pytest-xdist worker (which must collect identical ids).
HOSTILE_FRAMES = [
    ("unmasked", frame(OP_TEXT, "hi", mask=False), 1002, "protocol-error"),
    ("reserved-opcode", frame(3, b"x"), 1002, "protocol-error"),
    ("rsv-bits", frame(OP_TEXT, "x", rsv=0x40), 1002, "protocol-error"),
    ("bad-utf8", frame(OP_TEXT, b"\xc3\x28"), 1007, "invalid-utf8"),
    ("oversize-length", bytes([0x81, 0xFF]) + struct.pack(">Q", 1 << 40) + b"mask", 1009,
     "message-too-big"),
]


@pytest.mark.parametrize("kind,payload,code,reason", HOSTILE_FRAMES,
                         ids=[f[0] for f in HOSTILE_FRAMES])
def test_hostile_frames(server_factory, kind, payload, code, reason):
    srv = server_factory(workers=1)
    ws = opened(srv)
    ws.send(payload)
    assert close_code(ws) == code
    assert errors(srv)[reason] == 1
    ws.close()


def test_huge_message_in_fragments_1009(server_factory):
    srv = server_factory(workers=1)
    wpid = srv.worker_pids()[0]
    warm_up(srv)
    before = rss_bytes(wpid)
    ws = opened(srv, timeout=10 * SLOW)
    chunk = b"a" * 65536
    ws.send(frame(OP_TEXT, chunk, fin=False))
    try:
        for _ in range(200):  # would be 13 MB: far over the 1 MiB default
            ws.send(frame(OP_CONT, chunk, fin=False))
    except OSError:
        pass
    assert close_code(ws) == 1009
    assert errors(srv)["message-too-big"] == 1
    assert_rss_growth(wpid, before, 4 * MIB + 1 * MIB)
    ws.close()


def test_ten_thousand_tiny_fragments(server_factory):
    srv = server_factory(workers=1)
    ws = opened(srv, timeout=10 * SLOW)
    text = json.dumps({"type": "ping", "timestamp": 4, "pad": "x" * 10050})
    parts = [frame(OP_TEXT if i == 0 else OP_CONT, text[i:i + 1], fin=(i == len(text) - 1))
             for i in range(len(text))]
    assert len(parts) >= 10000
    ws.send(b"".join(parts))
    assert json.loads(ws.read_data())["original-timestamp"] == 4
    ws.close()


def test_slowloris_head_408(server_factory):
    srv = server_factory("--message-timeout-ms", "300", workers=1)
    s = socket.create_connection(("127.0.0.1", srv.port), timeout=5 * SLOW)
    s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n")
    for _ in range(5):
        try:
            s.sendall(b"X-a: b\r\n")
        except OSError:
            break
        time.sleep(0.1)
    assert status_of(read_response(s)) == 408
    assert errors(srv)["handshake-timeout"] == 1
    s.close()


def test_connection_flood_bounded(server_factory):
    """A flood of connections that send nothing: over --max-http-connections
    the oldest silent ones are closed for the newcomers, so the flood
    churns itself however fast it comes and a real client is served at
    once (review r13 finding 6: a silent connection used to be safe for
    500 ms, and a fast flood got every newcomer refused).  Connections
    receiving a request body are not taken (unfinished heads are, rm13
    N1); when every one is, a newcomer gets 503."""
    srv = server_factory("--max-http-connections", "50", workers=1)
    socks = [socket.create_connection(("127.0.0.1", srv.port), timeout=5 * SLOW)
             for _ in range(150)]
    evicted = 0
    for s in socks[:100]:
        try:
            evicted += s.recv(1) == b""
        except OSError:
            evicted += 1
    assert evicted == 100
    ws = opened(srv)  # a well-behaved client is served at once
    ws.close()
    assert errors(srv)["http-connection-limit"] >= 100
    wait_for(lambda: http_conns(srv) <= 50, what="bounded")
    for s in socks:
        s.close()
    wait_for(lambda: http_conns(srv) <= 1, what="all gone")  # (our own /stats counts)
    # Every place taken by a request body under way: the newcomer gets 503.
    busy = [socket.create_connection(("127.0.0.1", srv.port), timeout=5 * SLOW)
            for _ in range(50)]
    for s in busy:
        s.sendall(b"POST /api/x HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nab")
    time.sleep(0.3 * SLOW)  # read by the server: 50 requests under way
    s = socket.create_connection(("127.0.0.1", srv.port), timeout=5 * SLOW)
    assert status_of(read_response(s)) == 503
    s.close()
    for s in busy:
        s.close()


def test_accept_out_of_descriptors_counted_and_unhealthy(server_factory, tmp_path):
    """The master at EMFILE keeps working: the connection it cannot take is
    taken with the reserve descriptor and closed, accepting pauses briefly,
    it is counted, and /health says so for a while."""
    import subprocess
    from conftest import BIN, Server, free_port
    port = free_port()
    log = str(tmp_path / "fd.log")
    proc = subprocess.Popen([BIN, "--host", "127.0.0.1", "--port",
                             str(port), "--workers", "1", "--log-file", log],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        srv = Server.__new__(Server)
        srv.port = srv.http_port = port
        wait_for(lambda: srv.healthy(), timeout=10, what="server up")
        # The master's limit alone, a few descriptors above what it holds:
        # its batches of accepted sockets run into it at once (a worker at
        # its own limit is counted but does not make the node unhealthy,
        # test_hostile_more).
        used = len(os.listdir(f"/proc/{proc.pid}/fd"))
        subprocess.run(["prlimit", f"--pid={proc.pid}", f"--nofile={used + 4}:{used + 4}"],
                       check=True)
        # All of them waiting at once (the master stopped meanwhile), so it
        # cannot keep up by accepting a few at a time.
        os.kill(proc.pid, signal.SIGSTOP)
        socks = []
        try:
            for _ in range(120):
                try:
                    socks.append(socket.create_connection(("127.0.0.1", port), timeout=2))
                except OSError:
                    pass
        finally:
            os.kill(proc.pid, signal.SIGCONT)
        def exhausted():
            try:
                return srv.get_json("/stats")[1]["errors"]["descriptors-exhausted"] >= 1
            except (OSError, ValueError, KeyError):
                return False
        for s in socks:
            s.close()
        wait_for(exhausted, timeout=10, what="descriptors-exhausted counted")
        st, doc = srv.get_json("/health")
        assert st == 503 and doc["descriptors-ok"] is False and doc["descriptors-exhausted"] >= 1
        assert srv.get_json("/stats")[1]["descriptors-exhausted-recently"] is True
        # Still serving.
        ws = opened(srv)
        ws.close()
    finally:
        proc.terminate()
        proc.wait(timeout=15)
