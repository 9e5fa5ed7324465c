"""Test certificates, made with the openssl command for each test session:
a throw-away CA, an ECDSA P-256 and an RSA-2048 leaf for localhost and
127.0.0.1 signed by it, a second one for SNI (other.test), an expired one,
a wrong-host one and a key that matches none of them.  Nothing is
committed: every run makes its own."""
import os
import socket
import ssl
import subprocess


def _run(*args, cwd):
    subprocess.run(["openssl"] + list(args), cwd=cwd, check=True, capture_output=True)


def _leaf(d, name, keyargs, cn, san, days=30, start_days_ago=0):
    _run("req", "-new", "-newkey", *keyargs, "-nodes", "-keyout", f"{name}.key", "-out",
         f"{name}.csr", "-subj", f"/CN={cn}", cwd=d)
    ext = os.path.join(d, f"{name}.ext")
    with open(ext, "w") as f:
        f.write(f"subjectAltName={san}\nbasicConstraints=CA:FALSE\n"
                "keyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n")
    if start_days_ago:
        _signed_in_the_past(d, name, cn, start_days_ago, days)
    else:
        _run("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
             "-CAcreateserial", "-out", f"{name}.crt", "-extfile", ext, "-days", str(days), cwd=d)
    return os.path.join(d, f"{name}.crt"), os.path.join(d, f"{name}.key")


def _signed_in_the_past(d, name, cn, start_days_ago, days):
    """An expired certificate (openssl 3.0's x509 cannot backdate one):
    valid from start_days_ago days ago for `days` days, signed by the CA."""
    import datetime
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.x509.oid import NameOID
    with open(os.path.join(d, "ca.key"), "rb") as f:
        ca_key = serialization.load_pem_private_key(f.read(), None)
    with open(os.path.join(d, "ca.crt"), "rb") as f:
        ca = x509.load_pem_x509_certificate(f.read())
    with open(os.path.join(d, f"{name}.key"), "rb") as f:
        key = serialization.load_pem_private_key(f.read(), None)
    start = datetime.datetime.utcnow() - datetime.timedelta(days=start_days_ago)
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
            .issuer_name(ca.subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(start).not_valid_after(start + datetime.timedelta(days=days))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(cn)]), critical=False)
            .sign(ca_key, hashes.SHA256()))
    with open(os.path.join(d, f"{name}.crt"), "wb") as f:
        f.write(cert.public_bytes(serialization.Encoding.PEM))


EC = ["ec", "-pkeyopt", "ec_paramgen_curve:P-256"]
RSA = ["rsa:2048"]


class Certs:
    def __init__(self, d):
        os.makedirs(d, exist_ok=True)
        self.dir = d
        _run("req", "-x509", "-newkey", *EC, "-nodes", "-keyout", "ca.key", "-out", "ca.crt",
             "-days", "30", "-subj", "/CN=sente-lite test CA", cwd=d)
        self.ca = os.path.join(d, "ca.crt")
        local = "DNS:localhost,IP:127.0.0.1"
        self.ec = _leaf(d, "ec", EC, "localhost", local)
        self.ec2 = _leaf(d, "ec2", EC, "localhost", local)  # a second one (reload)
        self.rsa = _leaf(d, "rsa", RSA, "localhost", local)
        self.other = _leaf(d, "other", EC, "other.test", "DNS:other.test")
        self.wrong_host = _leaf(d, "wrong", EC, "wrong.example", "DNS:wrong.example")
        self.expired = _leaf(d, "expired", EC, "localhost", local, days=2, start_days_ago=10)
        _run("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out",
             "stray.key", cwd=d)
        self.stray_key = os.path.join(d, "stray.key")

    def client_context(self, **kw):
        ctx = ssl.create_default_context(cafile=self.ca)
        ctx.set_alpn_protocols(["http/1.1"])  # what browsers offer too (with h2)
        for k, v in kw.items():
            setattr(ctx, k, v)
        return ctx


def tls_connect(port, ctx, host="localhost", session=None, timeout=5.0):
    raw = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    return ctx.wrap_socket(raw, server_hostname=host, session=session)


def https_get(port, ctx, path, host="localhost", headers=None, session=None):
    """One request on a new TLS connection: (status, body, socket info)."""
    s = tls_connect(port, ctx, host, session)
    try:
        hdrs = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}\r\n{hdrs}Connection: close\r\n\r\n"
                  .encode())
        data = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        info = {"session": s.session, "reused": s.session_reused, "version": s.version(),
                "alpn": s.selected_alpn_protocol(), "cert": s.getpeercert(binary_form=True)}
        if b"chunked" in head.lower():
            body = _dechunk(body)
        return status, body, info
    finally:
        s.close()


def _dechunk(b):
    out = b""
    while b:
        size, _, rest = b.partition(b"\r\n")
        n = int(size, 16)
        if n == 0:
            break
        out += rest[:n]
        b = rest[n + 2:]
    return out
