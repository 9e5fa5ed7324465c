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

from conftest import BIN, SLOW, free_port
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

    def __init__(self, script):
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
        key = re.search(rb"(?im)^sec-websocket-key:\s*(\S+)", head).group(1)
        accept = base64.b64encode(hashlib.sha1(
            key + b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11").digest())
        self.conn.sendall(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                          b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + accept +
                          b"\r\n\r\n")

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
