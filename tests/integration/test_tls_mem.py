"""scripts/bench/tls_mem.c (build/tls-mem, docs/benchmarks.md) keeps its
per-line bookkeeping right after its first report (review rq16 L4): its
figures are printed and checked for their form only, and after it frees
every connection and cipher context no site is left below zero - a free
charged to a site other than its allocation's would leave one negative.
The tool is the one built next to the server under test."""
import os
import re
import subprocess

from conftest import BIN, SLOW
from tlskit import Certs

TLS_MEM = os.path.join(os.path.dirname(os.path.abspath(BIN)), "tls-mem")


def test_tls_mem_bookkeeping_balances(tmp_path):
    assert os.access(TLS_MEM, os.X_OK), (
        f"{TLS_MEM} is missing: build it with `make {os.path.relpath(TLS_MEM)}`")
    certs = Certs(str(tmp_path))
    cert, key = certs.ec
    p = subprocess.run([TLS_MEM, cert, key, "40", "1.3"], capture_output=True, text=True,
                       timeout=60 * SLOW)
    assert p.returncode == 0, p.stdout + p.stderr
    out = p.stdout
    assert re.search(r"OpenSSL live heap per connection: [1-9]\d* bytes", out), out
    assert re.search(r"two AES-128-GCM EVP_CIPHER_CTX alone: [1-9]\d* bytes", out), out
    assert re.search(r"after freeing them all: -?\d+ bytes still counted, 0 sites below zero",
                     out), out
