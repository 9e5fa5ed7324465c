#!/usr/bin/python3
"""Compressed fan-out (issue 16): one publisher, S subscribers on 2
workers, M messages of a compressible ~2 KiB JSON document; once with every
subscriber negotiating permessage-deflate, once without.  Prints, per mode:
delivered messages per second of the run (publish start to the last
delivery counted by /stats "delivered"), the workers' CPU time per delivered
message (/proc utime+stime: what the server spends, the subscribers being a
Python drain), and the bytes the server wrote per delivered message
(/stats bytes-out: the bytes on the wire).  Figures, not a test; the
machine is shared: --runs rounds alternating the modes, medians.

    scripts/bench/pmd_fanout.py BIN [--subs 500] [--msgs 100] [--runs 3]
"""
import argparse
import base64
import json
import os
import selectors
import socket
import statistics
import struct
import subprocess
import threading
import time
import urllib.request
from benchlib import free_port  # noqa: E402  (scripts/bench/benchlib.py)


def frame(payload):
    key = os.urandom(4)
    n = len(payload)
    head = bytes([0x81, 0x80 | 126]) + struct.pack(">H", n) if n >= 126 else bytes([0x81, 0x80 | n])
    return head + key + bytes(c ^ key[i % 4] for i, c in enumerate(payload))


def upgrade(port, pmd):
    s = socket.create_connection(("127.0.0.1", port))
    key = base64.b64encode(os.urandom(16)).decode()
    ext = "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n" if pmd else ""
    s.sendall((f"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
               f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n{ext}\r\n").encode())
    buf = b""
    while b"\r\n\r\n" not in buf:
        buf += s.recv(4096)
    assert (b"permessage-deflate" in buf) == pmd
    return s


def stats(port):
    return json.load(urllib.request.urlopen(f"http://127.0.0.1:{port}/stats", timeout=10))


def cpu_ticks(pids):
    t = 0
    for pid in pids:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        t += int(fields[11]) + int(fields[12])
    return t / os.sysconf("SC_CLK_TCK")


def run(binary, pmd, subs, msgs):
    port = free_port()
    p = subprocess.Popen([binary, "--host", "127.0.0.1", "--port", str(port), "--workers", "2",
                          "--max-connections", str(subs + 100), "--max-http-connections",
                          str(subs + 100), "--log-level", "warn",
                          "--max-outbound-bytes", "64M"],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(100):
            try:
                stats(port)
                break
            except OSError:
                time.sleep(0.1)
        socks = [upgrade(port, pmd) for _ in range(subs)]
        for s in socks:
            s.sendall(frame(json.dumps({"type": "subscribe", "channel-id": "bench"}).encode()))
        sel = selectors.DefaultSelector()
        for s in socks:
            s.setblocking(False)
            sel.register(s, selectors.EVENT_READ)
        stop = threading.Event()

        def drain():
            while not stop.is_set():
                for key, _ in sel.select(0.1):
                    try:
                        key.fileobj.recv(1 << 20)
                    except BlockingIOError:
                        pass

        t = threading.Thread(target=drain, daemon=True)
        t.start()
        time.sleep(1.0)
        pub = upgrade(port, False)
        doc = {"rows": [{"id": i, "sensor": "sensor-%03d" % i, "ok": True, "value": i * 1.25,
                         "unit": "celsius"} for i in range(24)]}
        body = json.dumps({"type": "publish", "channel-id": "bench", "data": doc}).encode()
        st0 = stats(port)
        pids = [w["pid"] for w in st0["workers"]]
        c0, d0, b0 = cpu_ticks(pids), st0["delivered"], st0["bytes-out"]
        t0 = time.monotonic()
        for _ in range(msgs):
            pub.sendall(frame(body))
        want = d0 + subs * msgs
        while True:
            st = stats(port)
            if st["delivered"] >= want:
                break
            time.sleep(0.02)
        elapsed = time.monotonic() - t0
        while stats(port)["outbound-bytes"] > 0 and time.monotonic() - t0 < 60:
            time.sleep(0.05)  # written out, so bytes-out is complete
        time.sleep(0.5)
        st = stats(port)
        c1 = cpu_ticks(pids)
        n = st["delivered"] - d0
        stop.set()
        t.join()
        return {"rate": n / elapsed, "cpu_us": (c1 - c0) * 1e6 / n,
                "bytes": (st["bytes-out"] - b0) / n, "payload": len(json.dumps(doc))}
    finally:
        p.terminate()
        p.wait()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("binary")
    ap.add_argument("--subs", type=int, default=500)
    ap.add_argument("--msgs", type=int, default=100)
    ap.add_argument("--runs", type=int, default=3)
    a = ap.parse_args()
    import resource
    resource.setrlimit(resource.RLIMIT_NOFILE, (8192, 8192))
    res = {False: [], True: []}
    for _ in range(a.runs):
        for pmd in (False, True):
            res[pmd].append(run(a.binary, pmd, a.subs, a.msgs))
    med = {k: {f: statistics.median(r[f] for r in v) for f in v[0]} for k, v in res.items()}
    for pmd in (False, True):
        m = med[pmd]
        print(f"{'deflate' if pmd else 'plain  '}: {m['rate']:9.0f} delivered/s, "
              f"{m['cpu_us']:6.2f} us worker CPU per delivery, {m['bytes']:7.0f} bytes on the "
              f"wire per delivery (payload {m['payload']:.0f} B; {a.subs} subscribers x "
              f"{a.msgs} messages, medians of {a.runs})")
    print(f"compressed / uncompressed delivered/s: {med[True]['rate'] / med[False]['rate']:.2f}; "
          f"bytes: {med[True]['bytes'] / med[False]['bytes']:.2f}")


if __name__ == "__main__":
    main()
