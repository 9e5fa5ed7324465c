"""TLS 1.3 after the handshake is our own record layer (src/tls.c,
src/tlsrec.c; issue 16): the SSL object is freed once the handshake is
done.  Driven here by a client that does its records itself (tls13kit)
and by `openssl s_client`: messages across KeyUpdates both ways, every
cipher suite, full and resumed handshakes (different ticket records
before our first application record), records cut into bytes and packed
together, zero-length and padded records, a tampered record, handshake
messages and change_cipher_spec after the handshake, an oversized record,
alerts and close_notify both ways - each refusal answered with its alert,
the connection closed and counted in /stats.  TLS 1.2 stays with OpenSSL."""
import json
import os
import select
import socket
import ssl
import subprocess
import time

import pytest

from conftest import CRASH_BIN, SLOW, free_port, wait_for
from tls13kit import CT_ALERT, CT_HANDSHAKE, Closed, Tls13
from tlskit import Certs, tls_connect
from wsraw import OP_TEXT, RawWS, frame


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    return Certs(str(tmp_path_factory.mktemp("certs")))


def tls_server(server_factory, certs, *args, workers=1, **kw):
    port = free_port()
    s = server_factory("--tls-port", str(port), "--tls-cert", certs.ec[0], "--tls-key",
                       certs.ec[1], *args, workers=workers, **kw)
    s.tls_port = port
    return s


def errors(s):
    return s.stats()["errors"]


def hello(ws, n):
    ws.send(frame(OP_TEXT, json.dumps({"type": "hello", "n": n}).encode()))
    m = json.loads(ws.read_data())
    assert m["type"] == "echo" and m["original"]["n"] == n, m
    return m


def ws_over(t, port):
    ws = RawWS(port, wrap=lambda raw: (raw.close(), t)[1])
    assert ws.status == 101
    assert json.loads(ws.read_data())["type"] == "welcome"
    return ws


def test_messages_across_key_updates_both_ways(server_factory, certs):
    s = tls_server(server_factory, certs)
    t = Tls13(s.tls_port, certs.client_context())
    ws = ws_over(t, s.tls_port)
    # The server's NewSessionTicket record came first: our reads counted it.
    assert (CT_HANDSHAKE, 4) in t.seen, t.seen
    hello(ws, 1)
    t.key_update(False)  # ours: the server's read keys move on
    hello(ws, 2)
    assert not any(x == (CT_HANDSHAKE, 24) for x in t.seen)
    t.key_update(True)   # ours, asking for the server's: it comes before its next data
    hello(ws, 3)
    assert t.seen.count((CT_HANDSHAKE, 24)) == 1, t.seen
    for k in range(3):   # several in a row, asked for or not
        t.key_update(k % 2 == 0)
    hello(ws, 4)
    assert t.seen.count((CT_HANDSHAKE, 24)) == 2, t.seen
    assert all(v == 0 for k, v in errors(s).items() if k.startswith("tls-")), errors(s)
    t.close()


def test_records_cut_packed_padded_and_empty(server_factory, certs):
    s = tls_server(server_factory, certs)
    t = Tls13(s.tls_port, certs.client_context())
    ws = ws_over(t, s.tls_port)
    msg = frame(OP_TEXT, json.dumps({"type": "hello", "n": 1}).encode())
    # One record, one byte per TCP segment: the partial record is held
    # until it is whole.
    t.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    rec = t.seal(23, msg)
    for b in rec:
        t.sock.send(bytes([b]))
        time.sleep(0.002)
    assert json.loads(ws.read_data())["original"]["n"] == 1
    # A message across three records (one empty, one padded), all in one segment.
    m2 = frame(OP_TEXT, json.dumps({"type": "hello", "n": 2}).encode())
    t.sock.sendall(t.seal(23, m2[:5]) + t.seal(23, b"") + t.seal(23, m2[5:], pad=300))
    assert json.loads(ws.read_data())["original"]["n"] == 2
    # A message larger than a record both ways (the echo comes back in
    # several records of ours).
    big = "x" * 40000
    ws.send(frame(OP_TEXT, json.dumps({"type": "hello", "big": big}).encode()))
    assert json.loads(ws.read_data())["original"]["big"] == big
    assert all(v == 0 for k, v in errors(s).items() if k.startswith("tls-")), errors(s)
    t.close()


def connection_ends(t):
    """True once the server's end of the connection is seen (its
    records before it are read and dropped)."""
    try:
        while True:
            t.read_record()
    except (Closed, ConnectionResetError):
        return True
    except (socket.timeout, TimeoutError):
        return False


def test_a_trickled_record_takes_one_allocation(server_factory, certs):
    """Review rw16 L1: a record that comes a few bytes per segment used to
    be copied into a new buffer of everything received so far at every
    read (quadratic).  Now its buffer is allocated once, at the record's
    full length, when its header is known, and the rest is received
    straight into it.  The test build's fault point fails the second
    partial-record allocation of the worker: a record trickled in 200
    pieces still comes through (one allocation), and the next partial
    record's allocation - the second - is the one that fails (the point
    is live)."""
    s = tls_server(server_factory, certs, binary=CRASH_BIN,
                   env={"SL_CRASH_ARM": "0:tls.part.alloc:2:fail"})
    t = Tls13(s.tls_port, certs.client_context())
    ws = ws_over(t, s.tls_port)
    hello(ws, 1)  # whole records: no partial-record buffer
    t.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    pad = "x" * 2000
    rec = t.seal(23, frame(OP_TEXT, json.dumps({"type": "hello", "n": 2, "pad": pad}).encode()))
    cuts = [0, 3] + [3 + (len(rec) - 3) * k // 199 for k in range(1, 199)] + [len(rec)]
    assert len(cuts) == 201  # 200 pieces, the first shorter than the header
    for a, b in zip(cuts, cuts[1:]):
        t.sock.send(rec[a:b])
        time.sleep(0.003)
    m = json.loads(ws.read_data())
    assert m["original"]["n"] == 2 and m["original"]["pad"] == pad, m
    # The next partial record: the second allocation, armed to fail.
    rec = t.seal(23, frame(OP_TEXT, json.dumps({"type": "hello", "n": 3}).encode()))
    t.sock.send(rec[:20])  # its header: the buffer is allocated (and fails)
    t.settimeout(10 * SLOW)
    assert connection_ends(t), "the second partial-record allocation did not fail"


def test_a_burst_of_key_updates_and_empty_records(server_factory, certs):
    """Thousands of records that carry no data (KeyUpdates, empty records,
    user_canceled warnings) in one burst: the worker opens at most 64
    records per read and goes on at the next turn, through every key.
    The test build's fault point, armed, fails the connection of a read
    that opened more than 64 records (counted apart from the budget): so
    this fails without the budget."""
    s = tls_server(server_factory, certs, binary=CRASH_BIN,
                   env={"SL_CRASH_ARM": "0:tls.read.over-budget:1:fail"})
    t = Tls13(s.tls_port, certs.client_context())
    ws = ws_over(t, s.tls_port)
    hello(ws, 1)
    burst = []
    for k in range(3000):
        if k % 3 == 0:
            burst.append(t.seal(22, bytes([24, 0, 0, 1, 0])))
            t.wr.update()
        elif k % 3 == 1:
            burst.append(t.seal(23, b""))
        else:
            burst.append(t.seal(21, b"\x01\x5a"))  # user_canceled, a warning
    burst.append(t.seal(23, frame(OP_TEXT, json.dumps({"type": "hello", "n": 2}).encode())))
    t.sock.sendall(b"".join(burst))
    assert json.loads(ws.read_data())["original"]["n"] == 2
    hello(ws, 3)
    assert all(v == 0 for k, v in errors(s).items() if k.startswith("tls-")), errors(s)
    t.close()


def refused(s, certs, send, alert, counter):
    """Send something after the handshake: the server answers `alert`
    (None: none), closes, and counts `counter`."""
    before = errors(s)[counter]
    t = Tls13(s.tls_port, certs.client_context())
    ws = ws_over(t, s.tls_port)
    hello(ws, 1)
    send(t)
    got = t.recv()
    assert got == b"", got
    if alert is None:
        assert t.alerts == [], t.alerts
    else:
        assert t.alerts == [alert], t.alerts
    with pytest.raises(Closed):
        t._need(len(t.raw) + 1)  # and the TCP end
    wait_for(lambda: errors(s)[counter] == before + 1, what="%s counted" % counter)
    t.close()


def test_bad_records_are_refused_and_counted(server_factory, certs):
    s = tls_server(server_factory, certs)

    def tampered(t):
        rec = bytearray(t.seal(23, frame(OP_TEXT, b'{"type":"hello"}')))
        rec[10] ^= 0x01
        t.sock.sendall(bytes(rec))

    refused(s, certs, tampered, 20, "tls-bad-record")            # bad_record_mac
    # A handshake message other than KeyUpdate after the handshake (a
    # ClientHello), change_cipher_spec outside and inside a record, an
    # unknown inner type, a KeyUpdate with a bad value: unexpected_message.
    refused(s, certs, lambda t: t.send_record(22, b"\x01\x00\x00\x00"), 10, "tls-bad-record")
    refused(s, certs, lambda t: t.sock.sendall(b"\x14\x03\x03\x00\x01\x01"), 10, "tls-bad-record")
    refused(s, certs, lambda t: t.send_record(20, b"\x01"), 10, "tls-bad-record")
    refused(s, certs, lambda t: t.send_record(99, b"abc"), 10, "tls-bad-record")
    refused(s, certs, lambda t: t.send_record(22, b"\x18\x00\x00\x01\x02"), 10, "tls-bad-record")
    # A record longer than 2^14 + 256: record_overflow, at its header.
    refused(s, certs, lambda t: t.sock.sendall(b"\x17\x03\x03\x41\x01"), 22,
            "tls-bad-record")
    # An alert record of the wrong size: decode_error.
    refused(s, certs, lambda t: t.send_record(21, b"\x02"), 50, "tls-bad-record")
    # The client's fatal alert: counted as the peer's, no alert back.
    refused(s, certs, lambda t: t.send_record(21, b"\x02\x28"), None, "tls-peer-alert")


def test_close_notify_both_ways(server_factory, certs):
    s = tls_server(server_factory, certs)
    # Ours: the client's close_notify is an end of stream, answered with ours.
    t = Tls13(s.tls_port, certs.client_context())
    ws = ws_over(t, s.tls_port)
    hello(ws, 1)
    t.close_notify()
    assert t.recv() == b"" and t.alerts == [0], t.alerts
    t.close()
    # The server's: an HTTP request that ends the connection gets its
    # response, then close_notify, then the TCP end.
    t = Tls13(s.tls_port, certs.client_context())
    t.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    data = b""
    while True:
        d = t.recv()
        if not d:
            break
        data += d
    assert data.startswith(b"HTTP/1.1 200"), data[:40]
    assert t.alerts == [0], t.alerts
    with pytest.raises(Closed):
        t._need(len(t.raw) + 1)
    t.close()
    assert all(v == 0 for k, v in errors(s).items() if k.startswith("tls-")), errors(s)


def wss(port, ctx, session=None):
    box = {}

    def wrap(raw):
        box["s"] = ctx.wrap_socket(raw, server_hostname="localhost", session=session)
        return box["s"]
    ws = RawWS(port, wrap=wrap)
    assert ws.status == 101
    assert json.loads(ws.read_data())["type"] == "welcome"
    return ws, box["s"]


def test_resumed_handshake_then_messages(server_factory, certs):
    """A resumed handshake sends its own number of ticket records before
    our first application record: Python's ssl decrypts every record of
    ours after it, so a wrong starting sequence number fails here."""
    s = tls_server(server_factory, certs)
    ctx = certs.client_context()
    ws, sock = wss(s.tls_port, ctx)
    hello(ws, 1)
    sess = sock.session
    assert sess is not None
    ws.close()
    for n in range(3):
        ws, sock = wss(s.tls_port, ctx, session=sess)
        assert sock.session_reused
        for k in range(5):
            hello(ws, k)
        sess = sock.session
        ws.close()
    wait_for(lambda: s.stats()["tls-resumed"] >= 3, what="resumptions counted")


def test_tls13_on_openssls_path_still_works(server_factory, certs):
    """A TLS 1.3 connection that stays with OpenSSL (a suite we do not do,
    input OpenSSL already holds; here the test build's fault point) carries
    messages as before, beside one on our records."""
    s = tls_server(server_factory, certs, binary=CRASH_BIN,
                   env={"SL_CRASH_ARM": "0:tls.own.off:1:fail"})
    ctx = certs.client_context()
    base = tls_heap(s)
    ws1, sock1 = wss(s.tls_port, ctx)   # OpenSSL's records
    ws2, sock2 = wss(s.tls_port, ctx)   # ours
    assert sock1.version() == sock2.version() == "TLSv1.3"
    for k in range(5):
        hello(ws1, k)
        hello(ws2, k)
    wait_for(lambda: tls_heap(s) >= base + 8000, what="the one SSL object kept")
    ws1.close()
    ws2.close()
    assert all(v == 0 for k, v in errors(s).items() if k.startswith("tls-")), errors(s)


def tls_heap(s):
    return s.stats()["tls-heap-bytes"]


def test_tls12_stays_with_openssl_and_tls13_holds_no_ssl_object(server_factory, certs):
    """TLS 1.2 connections keep OpenSSL's SSL object (~12 KB each in
    /stats tls-heap-bytes) and still carry messages; TLS 1.3 ones free
    theirs after the handshake (the records are ours): 20 of them leave
    OpenSSL's heap where it was (the one TLS 1.2 connection after them
    makes sure the figure was published since)."""
    s = tls_server(server_factory, certs, "--message-timeout-ms", "120000",
                   "--keepalive-timeout-ms", "120000")
    ctx13 = certs.client_context()
    ctx12 = certs.client_context(maximum_version=ssl.TLSVersion.TLSv1_2)
    warm = [wss(s.tls_port, ctx13)]  # the worker's cipher contexts, made once
    base = tls_heap(s)
    n = 20
    idle12 = [wss(s.tls_port, ctx12) for _ in range(n)]
    for ws, sock in idle12:
        assert sock.version() == "TLSv1.2"
        hello(ws, 2)
    wait_for(lambda: tls_heap(s) >= base + n * 8000,
             what="TLS 1.2 connections hold their SSL objects")
    h1 = tls_heap(s)
    idle13 = [wss(s.tls_port, ctx13) for _ in range(n)]
    for ws, sock in idle13:
        assert sock.version() == "TLSv1.3"
        hello(ws, 3)
    one12 = wss(s.tls_port, ctx12)
    wait_for(lambda: tls_heap(s) >= h1 + 8000, what="one more TLS 1.2 connection")
    grown = tls_heap(s) - h1
    assert grown < 16000 + n * 1000, "TLS 1.3 idle connections hold ~%d B each in OpenSSL" % (
        (grown - 12000) // n)
    for ws, _ in warm + idle13 + idle12 + [one12]:
        ws.close()
    assert all(v == 0 for k, v in errors(s).items() if k.startswith("tls-")), errors(s)


# ------------------------------------------------------- openssl s_client

def s_client(port, certs, *args):
    return subprocess.Popen(["openssl", "s_client", "-connect", "127.0.0.1:%d" % port,
                             "-servername", "localhost", "-CAfile", certs.ca, "-msg",
                             "-no_ign_eof"] + list(args),
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)


def read_until(p, what, timeout=10.0):
    """Everything s_client printed up to and including `what`."""
    buf, deadline = b"", time.time() + timeout * SLOW
    while what not in buf:
        left = deadline - time.time()
        assert left > 0, "no %r in %r" % (what, buf[-2000:])
        r, _, _ = select.select([p.stdout], [], [], left)
        if r:
            d = os.read(p.stdout.fileno(), 65536)
            assert d, "s_client ended: %r" % buf[-2000:]
            buf += d
    return buf


def say(p, data):
    p.stdin.write(data)
    p.stdin.flush()
    time.sleep(0.2)  # s_client reads each write as its own chunk (its commands)


UPGRADE = (b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
           b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")


def s_client_session(port, certs, suite, sess_out=None, sess_in=None):
    args = ["-ciphersuites", suite]
    if sess_out:
        args += ["-sess_out", sess_out]
    if sess_in:
        args += ["-sess_in", sess_in]
    p = s_client(port, certs, *args)
    try:
        say(p, UPGRADE)
        out = read_until(p, b'"type":"welcome"')
        for n, cmd in enumerate([None, b"k\n", b"K\n", None]):
            if cmd:
                say(p, cmd)
            say(p, frame(OP_TEXT, json.dumps({"type": "hello", "n": n}).encode()))
            out += read_until(p, b'"n":%d}' % n)
        say(p, b"Q\n")
        p.wait(timeout=10 * SLOW)
        return out
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()


@pytest.mark.parametrize("suite", ["TLS_AES_128_GCM_SHA256", "TLS_AES_256_GCM_SHA384",
                                   "TLS_CHACHA20_POLY1305_SHA256"])
def test_s_client_every_suite_key_updates_full_and_resumed(server_factory, certs, suite,
                                                            tmp_path):
    s = tls_server(server_factory, certs)
    sess = str(tmp_path / "sess.pem")
    full = s_client_session(s.tls_port, certs, suite, sess_out=sess)
    assert ("Ciphersuite: " + suite).encode() in full or suite.encode() in full
    # s_client sent a KeyUpdate with update_requested ("K"): ours came back.
    assert b"<<< TLS 1.3, Handshake [length 0005], KeyUpdate" in full, full[-3000:]
    resumed = s_client_session(s.tls_port, certs, suite, sess_in=sess)
    assert b"Reused, TLSv1.3" in resumed, resumed[:3000]
    # Our first application record's sequence number is the number of
    # ticket records before it: one after a full handshake, none after a
    # resumption with the current ticket key - both decrypted fine above.
    tickets = [x.count(b"NewSessionTicket") for x in (full, resumed)]
    assert tickets == [1, 0], tickets
    assert all(v == 0 for k, v in errors(s).items() if k.startswith("tls-")), errors(s)


def test_nothing_after_a_refused_record_is_taken(server_factory, certs):
    """Review rw16 H1: a read that returned plaintext and then met a
    refused record left the connection 'closed' on our side, and the next
    read handed raw socket bytes up as if authenticated - anyone on the
    path could inject a frame into the session.  A good record, a tampered
    one and a raw (unencrypted) frame in one segment: the good one is
    authenticated and read, but the connection fails in that same read, so
    nothing is answered (review ry Y1; rw16 M2/L4: nothing is written
    after a fatal alert) - the client gets the bad_record_mac alert, no
    application record after it (not even the answer to the good one),
    the raw frame is never taken (read and dropped), and the connection
    ends with a FIN."""
    s = tls_server(server_factory, certs)
    t = Tls13(s.tls_port, certs.client_context())
    ws = ws_over(t, s.tls_port)
    hello(ws, 1)
    a = t.seal(23, frame(OP_TEXT, json.dumps({"type": "hello", "n": 2}).encode()))
    b = bytearray(t.seal(23, frame(OP_TEXT, b'{"type":"hello"}')))
    b[10] ^= 1
    # raw (unencrypted): a subscribe that would create channel "injected"
    c = frame(OP_TEXT, json.dumps({"type": "subscribe", "channel-id": "injected"}).encode())
    t.sock.sendall(a + bytes(b) + c)
    records = []  # (inner type, content) of every record the server sends
    t.settimeout(5 * SLOW)
    ended = None
    try:
        while True:
            records.append(t.read_record())
    except Closed:
        ended = "FIN"
    except ConnectionResetError:
        ended = "reset"
    except (socket.timeout, TimeoutError):
        pass
    alerts = [k for k, (ct, _) in enumerate(records) if ct == CT_ALERT]
    assert alerts and records[alerts[0]][1] == b"\x02\x14", records  # fatal bad_record_mac
    assert all(ct != 23 for ct, _ in records[alerts[0]:]), records  # nothing after it
    assert all(ct != 23 for ct, _ in records), records  # the good record unanswered too
    assert ended, "the connection stayed open after a refused record"
    # What followed the refused record (the raw frame) was read and
    # dropped before the close: a FIN, not a reset that could overtake
    # the alert.
    assert ended == "FIN", ended
    time.sleep(0.2)
    assert "injected" not in s.get_json("/channels")[1]["channels"], "the raw frame was taken"
    assert errors(s)["tls-bad-record"] >= 1


def test_max_fragment_length_client_stays_with_openssl(server_factory, certs):
    """Review rw16 M1: a client that negotiated max_fragment_length (512)
    got 16 KiB records from our layer and failed (record_overflow); such a
    connection stays on OpenSSL's path, which honours the limit."""
    s = tls_server(server_factory, certs)
    p = subprocess.Popen(["openssl", "s_client", "-connect", "127.0.0.1:%d" % s.tls_port,
                          "-tls1_3", "-maxfraglen", "512", "-CAfile", str(certs.ca),
                          "-quiet", "-ign_eof"],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        p.stdin.write(b"GET /stats HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        p.stdin.flush()
        out, _ = p.communicate(timeout=15 * SLOW)
    except subprocess.TimeoutExpired:
        p.kill()
        out, _ = p.communicate()
    assert b"HTTP/1.1 200" in out and b'"workers"' in out, out[-500:]
    assert b"record overflow" not in out.lower(), out[-500:]
