"""sente-bench (tests/bench/sb_*.c) against the real server: each mode runs
for a second or so and the test checks its counts only, never timings
(delivered == expected, nothing lost, no errors), plus --self-test.

The generator is the one built next to the server under test
(build/sente-bench, or build-asan/sente-bench when SENTE_LITE_BIN points
there); `make` and `make check` build it.  A missing binary fails the test."""
import base64
import hashlib
import json
import os
import re
import socket
import struct
import subprocess
import threading
import zlib

import pytest

from conftest import BIN, SLOW, free_port
from tlskit import Certs
from wsraw import OP_CLOSE, OP_CONT, OP_PING, OP_PONG, OP_TEXT, frame

BENCH = os.path.join(os.path.dirname(os.path.abspath(BIN)), "sente-bench")


def need_bench():
    assert os.access(BENCH, os.X_OK), (
        f"{BENCH} is missing: build it with `make {os.path.relpath(BENCH)}`")


def bench(*args, expect_rc=0, timeout=60):
    """Runs sente-bench with --json-only and returns its final JSON line."""
    need_bench()
    cmd = [BENCH, *map(str, args), "--json-only"]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout * SLOW)
    assert p.returncode == expect_rc, f"{cmd}: exit {p.returncode}\n{p.stderr}\n{p.stdout}"
    lines = p.stdout.strip().splitlines()
    assert lines, f"{cmd}: no output\n{p.stderr}"
    return json.loads(lines[-1])


def assert_clean(r):
    for key in ("connect-errors", "handshake-errors", "protocol-errors", "closed-by-server",
                "errors"):
        assert r[key] == 0, f"{key} = {r[key]}: {r}"
    assert r["setup-failed"] is False


def test_self_test():
    need_bench()
    p = subprocess.run([BENCH, "--self-test"], capture_output=True, text=True,
                       timeout=60 * SLOW)
    assert p.returncode == 0, p.stdout + p.stderr
    m = re.search(r"^self-test: (\d+) passed, 0 failed$", p.stdout, re.M)
    assert m and int(m.group(1)) > 50, p.stdout


def test_fanout_at_a_rate(server_factory):
    srv = server_factory()
    r = bench("fanout", "--port", srv.port, "--subscribers", 50, "--publishers", 1,
              "--rate", 200, "--duration", 1, "--drain", 10)
    assert_clean(r)
    assert r["subscribed"] == 50 and r["subscribe-errors"] == 0
    assert r["published"] >= 100
    assert r["acknowledged"] == r["published"] and r["publish-errors"] == 0
    assert r["expected"] == r["published"] * 50
    assert r["delivered"] == r["expected"]
    assert r["lost"] == 0 and r["duplicates"] == 0
    assert r["latency-count"] == r["delivered"]


def test_fanout_flat_out_across_processes(server_factory):
    # In-flight tracked by delivery to one subscriber per process (no
    # --pub-ack), two processes, two publishers: the merged figures add up.
    srv = server_factory()
    r = bench("fanout", "--port", srv.port, "--subscribers", 20, "--publishers", 2,
              "--processes", 2, "--pub-ack", "", "--inflight", 8, "--count", 400,
              "--duration", 5, "--drain", 10, "--payload-size", 300)
    assert_clean(r)
    assert r["subscribed"] == 20
    assert r["published"] == 400
    assert r["acknowledged"] == 400  # each message reached its designated subscriber
    assert r["expected"] == 400 * 20
    assert r["delivered"] == r["expected"] and r["lost"] == 0 and r["duplicates"] == 0


def test_echo_raw(server_factory):
    srv = server_factory("--echo")
    r = bench("echo", "--port", srv.port, "--connections", 10, "--count", 500,
              "--duration", 10)
    assert_clean(r)
    assert r["path"] == "/echo"
    assert r["connected"] == 10
    assert r["round-trips"] == 500
    assert r["latency-count"] == 500


def test_echo_json_ping(server_factory):
    srv = server_factory()
    r = bench("echo", "--port", srv.port, "--connections", 5, "--count", 200,
              "--duration", 10, "--echo-frame", '{"type":"ping","timestamp":1}')
    assert_clean(r)
    assert r["path"] == "/" and r["wait-welcome"] is True
    assert r["round-trips"] == 200


def test_connect(server_factory):
    srv = server_factory()
    r = bench("connect", "--port", srv.port, "--connections", 200, "--hold", 0.5,
              "--wait-welcome", "--max-handshakes", 50)
    assert_clean(r)
    assert r["connections"] == 200 and r["connected"] == 200 and r["held"] == 200
    assert r["latency-count"] == 200


def test_rpc(server_factory):
    srv = server_factory()
    r = bench("rpc", "--port", srv.port, "--requesters", 2, "--responders", 2,
              "--count", 200, "--duration", 10, "--drain", 10)
    assert_clean(r)
    assert r["requests"] == 200
    assert r["responses"] == 200
    assert r["rpc-timeouts"] == 0 and r["rpc-errors"] == 0
    assert r["rpc-served"] >= 200
    assert r["latency-count"] == 200


def test_exit_statuses():
    # 2 on bad flags; 1 when nothing can connect.
    need_bench()
    p = subprocess.run([BENCH, "fanout", "--rate", "fast"], capture_output=True, text=True)
    assert p.returncode == 2 and "--help" in p.stderr
    r = bench("connect", "--port", free_port(), "--connections", 3, expect_rc=1)
    assert r["connect-errors"] == 3 and r["setup-failed"] is True


# ---------------------------------------------------------------------------
# A scripted server, to see the generator's side of RFC 6455: what the real
# server never does (fragmenting its messages, 64-bit lengths, a masked frame).

class FakeServer:
    """Accepts one WebSocket connection on a free port and runs script(conn)
    in a thread; conn.frames() yields the client's (op, payload), unmasked."""

    def __init__(self, script, extra_headers=b""):
        self.extra_headers = extra_headers
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.port = self.sock.getsockname()[1]
        self.script = script
        self.error = None
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self):
        try:
            c, _ = self.sock.accept()
            c.settimeout(30 * SLOW)
            self.conn = c
            self.buf = b""
            self.handshake()
            self.script(self)
        except Exception as e:  # reported by join()
            self.error = e

    def recv_more(self):
        chunk = self.conn.recv(1 << 20)
        if not chunk:
            raise EOFError("client closed")
        self.buf += chunk

    def handshake(self):
        while b"\r\n\r\n" not in self.buf:
            self.recv_more()
        head, self.buf = self.buf.split(b"\r\n\r\n", 1)
        self.head = head
        key = re.search(rb"(?im)^sec-websocket-key:\s*(\S+)", head).group(1)
        accept = base64.b64encode(hashlib.sha1(
            key + b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11").digest())
        self.conn.sendall(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                          b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + accept +
                          b"\r\n" + self.extra_headers + b"\r\n")

    def frame(self):
        """One client frame: (fin, op, payload); client frames must be masked."""
        while len(self.buf) < 2:
            self.recv_more()
        b0, b1 = self.buf[0], self.buf[1]
        assert b1 & 0x80, "client frame not masked"
        n, at = b1 & 0x7F, 2
        if n == 126:
            while len(self.buf) < 4:
                self.recv_more()
            n, at = struct.unpack(">H", self.buf[2:4])[0], 4
        elif n == 127:
            while len(self.buf) < 10:
                self.recv_more()
            n, at = struct.unpack(">Q", self.buf[2:10])[0], 10
        while len(self.buf) < at + 4 + n:
            self.recv_more()
        key = self.buf[at:at + 4]
        data = bytes(b ^ key[i % 4] for i, b in enumerate(self.buf[at + 4:at + 4 + n]))
        self.buf = self.buf[at + 4 + n:]
        return bool(b0 & 0x80), b0 & 0x0F, data

    def send(self, *frames):
        self.conn.sendall(b"".join(frames))

    def join(self):
        self.thread.join(60 * SLOW)
        assert not self.thread.is_alive(), "scripted server still running"
        self.sock.close()
        if self.error:
            raise self.error


def test_client_side_of_rfc6455():
    """Echo through a server that fragments every other reply around a ping
    and sends the others whole with a 64-bit length: every reply is
    reassembled and timed, every ping answered, and the close is a 1000."""
    count, seen = 20, {"pongs": 0, "close": None}

    def script(srv):
        echoed = 0
        while True:
            fin, op, data = srv.frame()
            assert fin and op in (OP_TEXT, OP_PONG, OP_CLOSE), (fin, op)
            if op == OP_PONG:
                assert data == b"pp"
                seen["pongs"] += 1
            elif op == OP_CLOSE:
                seen["close"] = data
                srv.send(frame(OP_CLOSE, data, mask=False))
                return
            elif echoed % 2 == 0:
                k = len(data) // 3
                srv.send(frame(OP_TEXT, data[:k], fin=False, mask=False),
                         frame(OP_PING, b"pp", mask=False),
                         frame(OP_CONT, data[k:2 * k], fin=False, mask=False),
                         frame(OP_CONT, data[2 * k:], mask=False))
                echoed += 1
            else:
                srv.send(frame(OP_TEXT, data, mask=False))
                echoed += 1

    srv = FakeServer(script)
    r = bench("echo", "--port", srv.port, "--connections", 1, "--count", count,
              "--duration", 20, "--payload-size", 70000)
    srv.join()
    assert_clean(r)
    assert r["round-trips"] == count and r["other-messages"] == 0
    assert seen["pongs"] == count // 2
    assert seen["close"] == struct.pack(">H", 1000)


def test_protocol_error_is_counted():
    """A masked frame from the server fails the connection: counted in
    protocol-errors, and the generator closes with 1002."""
    seen = {}

    def script(srv):
        srv.send(frame(OP_TEXT, b"masked", mask=True))
        while True:
            fin, op, data = srv.frame()
            if op == OP_CLOSE:
                seen["close"] = data
                return

    srv = FakeServer(script)
    r = bench("connect", "--port", srv.port, "--connections", 1, "--hold", 1)
    srv.join()
    assert r["connected"] == 1 and r["protocol-errors"] == 1
    assert seen["close"] == struct.pack(">H", 1002)


# ---------------------------------------------------------------------------
# wss:// and permessage-deflate (issue 16) against the real server.

@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    return Certs(str(tmp_path_factory.mktemp("certs")))


def tls_server(server_factory, certs, *args, kind="ec"):
    cert, key = getattr(certs, kind)
    port = free_port()
    s = server_factory("--tls-port", str(port), "--tls-cert", cert, "--tls-key", key, *args)
    s.tls_port = port
    return s


def tls_counts(srv):
    st = srv.stats()
    return st["tls-handshakes"], st["tls-resumed"]


@pytest.mark.parametrize("kind", ["ec", "rsa"])
def test_fanout_over_wss_verified(server_factory, certs, kind):
    # The certificate is checked against the test CA and the name; every
    # connection is a TLS one (the server counts the handshakes too).
    srv = tls_server(server_factory, certs, kind=kind)
    r = bench("fanout", "--port", srv.tls_port, "--tls", "--tls-ca", certs.ca,
              "--tls-name", "localhost", "--subscribers", 30, "--publishers", 1,
              "--count", 300, "--duration", 10, "--drain", 10, "--payload-size", 3000)
    assert_clean(r)
    assert r["tls"] is True and r["tls-verify"] is True
    assert r["connected"] == 31 and r["tls-handshakes"] == 31
    assert r["published"] == 300 and r["acknowledged"] == 300
    assert r["delivered"] == r["expected"] == 300 * 30 and r["lost"] == 0
    assert tls_counts(srv)[0] >= 31


def test_wss_name_mismatch_is_a_handshake_error(server_factory, certs):
    srv = tls_server(server_factory, certs)
    r = bench("connect", "--port", srv.tls_port, "--tls", "--tls-ca", certs.ca,
              "--tls-name", "other.test", "--connections", 3, expect_rc=1)
    assert r["handshake-errors"] == 3 and r["connected"] == 0 and r["setup-failed"] is True
    # Plain WebSocket on the TLS port: the server's 400, a handshake error.
    r = bench("connect", "--port", srv.tls_port, "--connections", 2, expect_rc=1)
    assert r["handshake-errors"] == 2 and r["connected"] == 0


def test_wss_resumption(server_factory, certs):
    # One at a time: the first handshake is full, the 19 after it resume the
    # ticket it received (the server counts them as resumed, on any worker).
    srv = tls_server(server_factory, certs)
    r = bench("connect", "--port", srv.tls_port, "--tls", "--tls-resume",
              "--max-handshakes", 1, "--connections", 20, "--wait-welcome")
    assert_clean(r)
    assert r["connected"] == 20 and r["tls-handshakes"] == 20
    assert r["tls-resumed"] == 19
    assert tls_counts(srv)[1] >= 19
    # Without --tls-resume nothing is resumed.
    r = bench("connect", "--port", srv.tls_port, "--tls", "--max-handshakes", 1,
              "--connections", 5)
    assert r["tls-handshakes"] == 5 and r["tls-resumed"] == 0


@pytest.mark.parametrize("tls", [False, True])
def test_fanout_deflate(server_factory, certs, tls):
    # Compressible payloads (the timed payload is padded with one letter):
    # every delivery arrives compressed and inflates to a message the
    # generator recognises; a server without compression sends them plain.
    srv = tls_server(server_factory, certs)
    port = ["--port", srv.tls_port, "--tls"] if tls else ["--port", srv.port]
    r = bench("fanout", *port, "--deflate", "--subscribers", 20, "--count", 200,
              "--duration", 10, "--drain", 10, "--payload-size", 2000)
    assert_clean(r)
    assert r["deflate"] is True
    assert r["delivered"] == r["expected"] == 200 * 20 and r["lost"] == 0
    assert r["compressed"] >= r["delivered"]
    st = srv.stats()
    assert st["bytes-out"] < 200 * 20 * 1000  # 2 KB payloads, far less on the wire
    plain = server_factory("--no-compression")
    r = bench("fanout", "--port", plain.port, "--deflate", "--subscribers", 5, "--count", 50,
              "--duration", 10, "--drain", 10, "--payload-size", 2000)
    assert_clean(r)
    assert r["delivered"] == r["expected"] == 250 and r["compressed"] == 0


def _deflate(data, z=None):
    z = z or zlib.compressobj(wbits=-15)
    out = z.compress(data) + z.flush(zlib.Z_SYNC_FLUSH)
    assert out.endswith(b"\x00\x00\xff\xff")
    return out[:-4]


def test_client_side_of_rfc7692():
    """A server that keeps its compression context between messages (no
    server_no_context_takeover), fragments a compressed reply (RSV1 on the
    first frame only) and sends every other one uncompressed: the
    generator inflates each with the connection's own context."""
    count = 12
    seen = {}

    def script(srv):
        seen["offer"] = re.search(rb"(?im)^sec-websocket-extensions:\s*(.*)$", srv.head)
        z = zlib.compressobj(wbits=-15)
        for i in range(count + 1):
            fin, op, data = srv.frame()
            if op == OP_CLOSE:
                srv.send(frame(OP_CLOSE, data, mask=False))
                return
            assert fin and op == OP_TEXT
            if i % 3 == 2:
                srv.send(frame(OP_TEXT, data, mask=False))
                continue
            c = _deflate(data, z)
            if i % 3 == 1:
                k = len(c) // 2
                srv.send(frame(OP_TEXT, c[:k], fin=False, mask=False, rsv=0x40),
                         frame(OP_CONT, c[k:], mask=False))
            else:
                srv.send(frame(OP_TEXT, c, mask=False, rsv=0x40))

    srv = FakeServer(script, b"Sec-WebSocket-Extensions: permessage-deflate\r\n")
    r = bench("echo", "--port", srv.port, "--connections", 1, "--count", count,
              "--duration", 20, "--payload-size", 5000, "--deflate")
    srv.join()
    assert_clean(r)
    assert b"permessage-deflate" in seen["offer"].group(1)
    assert r["round-trips"] == count
    assert r["compressed"] == count - count // 3


def test_rsv1_without_deflate_is_a_protocol_error():
    seen = {}

    def script(srv):
        srv.send(frame(OP_TEXT, _deflate(b"hello"), mask=False, rsv=0x40))
        while True:
            fin, op, data = srv.frame()
            if op == OP_CLOSE:
                seen["close"] = data
                return

    srv = FakeServer(script)
    r = bench("connect", "--port", srv.port, "--connections", 1, "--hold", 1, "--deflate")
    srv.join()
    assert r["connected"] == 1 and r["protocol-errors"] == 1
    assert seen["close"] == struct.pack(">H", 1002)
