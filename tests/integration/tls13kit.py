"""A TLS 1.3 client whose handshake is Python's ssl (over a MemoryBIO) and
whose records after the handshake are done here, from the traffic secrets
of the key log (RFC 8446 5.2, 7.1-7.3): so a test can send what a normal
client never would - a tampered record, a KeyUpdate, a handshake message
after the handshake, a record cut into single bytes - and see exactly what
the server sends back (its NewSessionTicket records, KeyUpdate, alerts).
Socket-like (sendall, recv): wsraw.RawWS(wrap=...) runs over it."""
import hashlib
import hmac
import os
import socket
import ssl
import struct
import tempfile

from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305

SUITES = {  # name: (hash, key length, AEAD)
    "TLS_AES_128_GCM_SHA256": (hashlib.sha256, 16, AESGCM),
    "TLS_AES_256_GCM_SHA384": (hashlib.sha384, 32, AESGCM),
    "TLS_CHACHA20_POLY1305_SHA256": (hashlib.sha256, 32, ChaCha20Poly1305),
}
CT_ALERT, CT_HANDSHAKE, CT_APPDATA = 21, 22, 23


def expand_label(h, secret, label, length):
    info = struct.pack(">HB", length, 6 + len(label)) + b"tls13 " + label + b"\x00"
    out, t, i = b"", b"", 1
    while len(out) < length:
        t = hmac.new(secret, t + info + bytes([i]), h).digest()
        out += t
        i += 1
    return out[:length]


class Direction:
    def __init__(self, suite, secret):
        self.h, self.klen, self.aead = SUITES[suite]
        self.set(secret)

    def set(self, secret):
        self.secret = secret
        self.key = expand_label(self.h, secret, b"key", self.klen)
        self.iv = expand_label(self.h, secret, b"iv", 12)
        self.seq = 0

    def update(self):
        self.set(expand_label(self.h, self.secret, b"traffic upd", self.h().digest_size))

    def nonce(self):
        return bytes(a ^ b for a, b in zip(self.iv, self.seq.to_bytes(12, "big")))


class Closed(Exception):
    pass


class Tls13:
    def __init__(self, port, ctx, host="localhost", timeout=5.0):
        self.log = tempfile.NamedTemporaryFile(prefix="keylog", delete=False).name
        ctx.keylog_filename = self.log
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        inc, out = ssl.MemoryBIO(), ssl.MemoryBIO()
        obj = ctx.wrap_bio(inc, out, server_hostname=host)
        while True:
            try:
                obj.do_handshake()
                break
            except ssl.SSLWantReadError:
                self.sock.sendall(out.read())
                data = self.sock.recv(65536)
                if not data:
                    raise Closed("closed in the handshake")
                inc.write(data)
        self.sock.sendall(out.read())  # the client's Finished
        assert obj.version() == "TLSv1.3", obj.version()
        self.suite = obj.cipher()[0]
        secrets = {}
        with open(self.log) as f:
            for line in f:
                p = line.split()
                if len(p) == 3:
                    secrets[p[0]] = bytes.fromhex(p[2])
        os.unlink(self.log)
        self.wr = Direction(self.suite, secrets["CLIENT_TRAFFIC_SECRET_0"])
        self.rd = Direction(self.suite, secrets["SERVER_TRAFFIC_SECRET_0"])
        self.raw = inc.read()  # whatever came after the server's Finished
        self.plain = b""
        self.seen = []  # (inner type, first content byte) of every non-data record
        self.alerts = []

    # ------------------------------------------------------------ output
    def seal(self, ctype, content, pad=0, outer=CT_APPDATA):
        inner = content + bytes([ctype]) + b"\x00" * pad
        hdr = struct.pack(">BHH", outer, 0x0303, len(inner) + 16)
        ct = self.wr.aead(self.wr.key).encrypt(self.wr.nonce(), inner, hdr)
        self.wr.seq += 1
        return hdr + ct

    def send_record(self, ctype, content, pad=0):
        self.sock.sendall(self.seal(ctype, content, pad))

    def sendall(self, data):
        for i in range(0, len(data), 16384):
            self.send_record(CT_APPDATA, data[i:i + 16384])

    def key_update(self, requested):
        self.send_record(CT_HANDSHAKE, bytes([24, 0, 0, 1, 1 if requested else 0]))
        self.wr.update()

    def close_notify(self):
        self.send_record(CT_ALERT, b"\x01\x00")

    # ------------------------------------------------------------- input
    def _need(self, n):
        while len(self.raw) < n:
            data = self.sock.recv(65536)
            if not data:
                raise Closed("TCP end")
            self.raw += data

    def read_record(self):
        """(inner type, content) of the server's next record."""
        self._need(5)
        outer, _, n = struct.unpack(">BHH", self.raw[:5])
        self._need(5 + n)
        hdr, ct, self.raw = self.raw[:5], self.raw[5:5 + n], self.raw[5 + n:]
        assert outer == CT_APPDATA, "outer type %d" % outer
        inner = self.rd.aead(self.rd.key).decrypt(self.rd.nonce(), ct, hdr)
        self.rd.seq += 1
        inner = inner.rstrip(b"\x00")
        return inner[-1], inner[:-1]

    def recv(self, n=65536):
        """Application data, as a socket's recv: b"" at the server's
        close_notify (or TCP end).  Its KeyUpdate is applied, its tickets
        skipped; every such record noted in self.seen."""
        while not self.plain:
            try:
                ctype, content = self.read_record()
            except Closed:
                return b""
            if ctype == CT_APPDATA:
                self.plain += content
                continue
            self.seen.append((ctype, content[0] if content else None))
            if ctype == CT_HANDSHAKE and content[0] == 24:
                self.rd.update()
                if content[4] == 1:
                    self.key_update(False)
            elif ctype == CT_ALERT:
                self.alerts.append(content[1])
                if content[1] == 0:
                    return b""
        out, self.plain = self.plain[:n], self.plain[n:]
        return out

    def settimeout(self, t):
        self.sock.settimeout(t)

    def close(self):
        self.sock.close()
