"""A tiny raw RFC 6455 client for tests that must send what a real library
refuses to send (unmasked frames, bad UTF-8, reserved bits...).  Independent
of the server's code: written from the RFC."""
import base64
import os
import json
import socket
import struct

OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0, 1, 2, 8, 9, 10


def frame(op, payload=b"", fin=True, mask=True, rsv=0):
    if isinstance(payload, str):
        payload = payload.encode()
    b0 = (0x80 if fin else 0) | rsv | op
    n = len(payload)
    m = 0x80 if mask else 0
    if n < 126:
        head = bytes([b0, m | n])
    elif n < 65536:
        head = bytes([b0, m | 126]) + struct.pack(">H", n)
    else:
        head = bytes([b0, m | 127]) + struct.pack(">Q", n)
    if not mask:
        return head + payload
    key = os.urandom(4)
    return head + key + bytes(c ^ key[i % 4] for i, c in enumerate(payload))


def close_frame(code, reason=b""):
    return frame(OP_CLOSE, struct.pack(">H", code) + reason)


def http_request(port, raw, timeout=5.0):
    """Send raw bytes, return everything until the server closes or a whole
    response (head + Content-Length body) has arrived."""
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    s.sendall(raw)
    data = read_response(s)
    s.close()
    return data


def read_response(s):
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = s.recv(65536)
        if not chunk:
            return data
        data += chunk
    head, body = data.split(b"\r\n\r\n", 1)
    length = 0
    for line in head.split(b"\r\n")[1:]:
        k, _, v = line.partition(b":")
        if k.strip().lower() == b"content-length":
            length = int(v.strip())
    while len(body) < length:
        chunk = s.recv(65536)
        if not chunk:
            break
        body += chunk
    return head + b"\r\n\r\n" + body


def status_of(resp):
    return int(resp.split(b" ", 2)[1])


def body_of(resp):
    """The JSON body of a raw HTTP response."""
    return json.loads(resp.split(b"\r\n\r\n", 1)[1])


class RawWS:
    def __init__(self, port, path="/", headers=None, timeout=5.0, rcvbuf=None, source=None,
                 unix=None, wrap=None):
        """unix: the path of a Unix socket to connect to instead of the port;
        wrap: applied to the connected socket (e.g. TLS)."""
        self.sock = socket.socket(socket.AF_UNIX if unix else socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        if source:  # another loopback address, e.g. 127.0.0.2
            self.sock.bind((source, 0))
        self.sock.settimeout(timeout)
        self.sock.connect(unix or ("127.0.0.1", port))
        if wrap:  # e.g. TLS: lambda s: ctx.wrap_socket(s, server_hostname=...)
            self.sock = wrap(self.sock)
        key = base64.b64encode(os.urandom(16)).decode()
        extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
        self.sock.sendall(
            (f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
             f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
             f"Sec-WebSocket-Version: 13\r\n{extra}\r\n").encode())
        buf = b""
        while b"\r\n\r\n" not in buf:
            chunk = self.sock.recv(4096)
            if not chunk:
                break
            buf += chunk
        head, _, self.buf = buf.partition(b"\r\n\r\n")
        self.head = head
        self.status = int(head.split(b" ", 2)[1]) if head else 0

    def send(self, data):
        self.sock.sendall(data)

    def _need(self, n):
        while len(self.buf) < n:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise EOFError("connection closed")
            self.buf += chunk

    def read_frame(self):
        """Returns (fin, opcode, payload)."""
        self._need(2)
        b0, b1 = self.buf[0], self.buf[1]
        assert not b1 & 0x80, "server frames must not be masked"
        n, p = b1 & 0x7F, 2
        if n == 126:
            self._need(4)
            n, p = struct.unpack(">H", self.buf[2:4])[0], 4
        elif n == 127:
            self._need(10)
            n, p = struct.unpack(">Q", self.buf[2:10])[0], 10
        self._need(p + n)
        payload = self.buf[p:p + n]
        self.buf = self.buf[p + n:]
        return bool(b0 & 0x80), b0 & 0x0F, payload

    def read_data(self):
        """The next text/binary message payload, skipping control frames."""
        while True:
            _, op, payload = self.read_frame()
            if op in (OP_TEXT, OP_BINARY):
                return payload
            if op == OP_CLOSE:
                raise EOFError("closed: %r" % payload)

    def read_until_close(self):
        """Read frames until a close frame; returns (code, reason)."""
        while True:
            _, op, payload = self.read_frame()
            if op == OP_CLOSE:
                code = struct.unpack(">H", payload[:2])[0] if len(payload) >= 2 else None
                return code, payload[2:]

    def wait_eof(self):
        while True:
            chunk = self.sock.recv(65536)
            if not chunk:
                return

    def close(self):
        self.sock.close()
