"""Keys and tokens for the access-control tests.

Keys are made with the openssl command line (once per test session);
tokens are signed with PyJWT - an implementation independent of the
server's (OpenSSL) verification - and the malformed ones are put together
by hand."""
import base64
import hashlib
import hmac
import json
import os
import subprocess
import time

import jwt
import pytest

from wsraw import RawWS

# Algorithms and the key file the server needs for each.
ALGS = {
    "HS256": "secret", "HS384": "secret", "HS512": "secret",
    "RS256": "rsa", "RS384": "rsa", "RS512": "rsa",
    "PS256": "rsa", "PS384": "rsa", "PS512": "rsa",
    "ES256": "ec256", "ES384": "ec384", "ES512": "ec521",
}


def b64u(data):
    if isinstance(data, str):
        data = data.encode()
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def openssl(*args):
    subprocess.run(["openssl", *args], check=True, capture_output=True)


class Keys:
    def __init__(self, d):
        self.dir = d
        self.path = {"secret": os.path.join(d, "secret")}
        with open(self.path["secret"], "w") as f:
            f.write(subprocess.run(["openssl", "rand", "-hex", "32"], check=True,
                                   capture_output=True, text=True).stdout)
        self.priv = {}
        specs = {"rsa": ["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"],
                 "ec256": ["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"],
                 "ec384": ["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-384"],
                 "ec521": ["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-521"]}
        for name, spec in specs.items():
            key = os.path.join(d, name + ".key")
            pub = os.path.join(d, name + ".pub")
            openssl("genpkey", *spec, "-out", key)
            openssl("pkey", "-in", key, "-pubout", "-out", pub)
            self.path[name] = pub
            with open(key) as f:
                self.priv[name] = f.read()

    def secret(self):
        with open(self.path["secret"]) as f:
            return f.read().strip()

    def flags(self, *kinds):
        """Server flags for these key kinds ("secret", "rsa", "ec256", ...)."""
        out = []
        for k in kinds:
            out += ["--jwt-secret-file" if k == "secret" else "--jwt-public-key-file",
                    self.path[k]]
        return out

    def token(self, alg="HS256", sub="alice", ttl=600, **claims):
        """A good token for `alg` (claims: exp = now + ttl unless given)."""
        body = {"sub": sub, **claims}
        if sub is None:
            del body["sub"]
        if ttl is not None and "exp" not in body:
            body["exp"] = int(time.time()) + ttl
        kind = ALGS[alg]
        key = self.secret() if kind == "secret" else self.priv[kind]
        return jwt.encode(body, key, algorithm=alg)

    def hs256_with(self, key_bytes, claims, header=None):
        """An HS256 token signed with arbitrary key bytes (the confusion
        attack uses a public key's PEM as the HMAC secret)."""
        h = b64u(json.dumps(header or {"alg": "HS256", "typ": "JWT"}))
        p = b64u(json.dumps(claims))
        sig = hmac.new(key_bytes, f"{h}.{p}".encode(), hashlib.sha256).digest()
        return f"{h}.{p}.{b64u(sig)}"

    def claims(self, sub="alice", ttl=600, **more):
        return {"sub": sub, "exp": int(time.time()) + ttl, **more}


@pytest.fixture(scope="session")
def keys(tmp_path_factory):
    return Keys(str(tmp_path_factory.mktemp("keys")))


def unsigned(claims, alg="none"):
    return f"{b64u(json.dumps({'alg': alg, 'typ': 'JWT'}))}.{b64u(json.dumps(claims))}."


def upgrade(port, token=None, via="header", source=None, timeout=5.0):
    """Open a WebSocket with the token in the Authorization header or the
    query; returns (RawWS, status, welcome-or-error-body)."""
    headers, path = {}, "/"
    if token is not None and via == "header":
        headers["Authorization"] = "Bearer " + token
    elif token is not None:
        path = "/?token=" + token
    ws = RawWS(port, path=path, headers=headers, source=source, timeout=timeout)
    if ws.status == 101:
        return ws, 101, json.loads(ws.read_data())
    body = ws.buf
    try:
        while True:
            chunk = ws.sock.recv(65536)
            if not chunk:
                break
            body += chunk
    except OSError:
        pass
    ws.close()
    return None, ws.status, json.loads(body) if body else None


def send(ws, **msg):
    from wsraw import OP_TEXT, frame
    ws.send(frame(OP_TEXT, json.dumps(msg).encode()))


def recv(ws):
    return json.loads(ws.read_data())


def ask(ws, **msg):
    send(ws, **msg)
    return recv(ws)
