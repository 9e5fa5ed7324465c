"""The benchmark scripts share one free_port (scripts/bench/benchlib.py):
none carries its own copy, and each that uses it still starts (its
--help runs, so the import resolves from where make runs it)."""
import glob
import os
import re
import socket
import subprocess

import pytest

from conftest import SLOW

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")
LIB = os.path.join(ROOT, "scripts", "bench", "benchlib.py")
USERS = sorted(p for p in glob.glob(os.path.join(ROOT, "scripts", "bench", "*.py")) +
               glob.glob(os.path.join(ROOT, "tests", "bench", "*.py"))
               if p != LIB and "free_port" in open(p).read())


def test_one_free_port():
    assert len(USERS) >= 8, USERS
    own = [os.path.relpath(p, ROOT) for p in USERS
           if re.search(r"^def free_port\b", open(p).read(), re.M)]
    assert own == [], "their own free_port(): use scripts/bench/benchlib.py"
    for sh in glob.glob(os.path.join(ROOT, "scripts", "bench", "*.sh")):
        assert "getsockname" not in open(sh).read() and "listen(0" not in open(sh).read(), sh


@pytest.mark.parametrize("script", USERS, ids=lambda p: os.path.relpath(p, ROOT))
def test_script_imports_it(script):
    p = subprocess.run(["/usr/bin/python3", script, "--help"], capture_output=True, text=True,
                       cwd=ROOT, timeout=30 * SLOW)
    assert p.returncode == 0, p.stderr


def test_benchlib_prints_a_free_port():
    out = subprocess.run(["/usr/bin/python3", LIB], capture_output=True, text=True,
                         timeout=30 * SLOW).stdout
    port = int(out)
    s = socket.socket()
    s.bind(("127.0.0.1", port))  # free: it can be taken
    s.close()
