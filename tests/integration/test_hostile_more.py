"""Hostile clients, continued: the findings of the independent review of
issue 13 (fair sharing that really ends a turn, bounded replies, the
worker's share not spent by hostile replies, telemetry across a worker
respawn, half-closed pipelines, the HTTP connection limit under a flood,
the input bound, pong wake-ups).  Each test failed before its fix.
Counts and times are bounded; loopback only."""
import json
import os
import signal
import socket
import time

from conftest import SLOW, wait_for
from test_hostile import errors, opened, rss_bytes, ASAN, MIB
from wsraw import OP_CONT, OP_PING, OP_PONG, OP_TEXT, RawWS, frame


def on_workers(srv, wanted, **kw):
    """Protocol connections, one on each worker named in `wanted` (in that
    order; a worker may be named more than once)."""
    got, spare = [None] * len(wanted), []
    for _ in range(20 * len(wanted)):
        if all(got):
            break
        ws = RawWS(srv.port, **kw)
        assert ws.status == 101, ws.head
        w = json.loads(ws.read_data())["worker"]
        for i, want in enumerate(wanted):
            if got[i] is None and want == w:
                got[i] = ws
                break
        else:
            spare.append(ws)  # kept open a moment: the next one goes elsewhere
    for ws in spare:
        ws.close()
    assert all(got), "connections did not land on the workers wanted"
    return got


def request(ws, msg):
    ws.send(frame(OP_TEXT, json.dumps(msg)))
    return json.loads(ws.read_data())


class Flooder:
    """A child process that writes `unit` over and over on a socket (ours
    too: we keep reading it) until stopped or the server closes.  A process,
    not a thread: it must outrun the worker that parses what it sends."""

    def __init__(self, sock, unit):
        self.pid = os.fork()
        if self.pid == 0:
            try:
                sock.settimeout(None)
                while True:
                    sock.sendall(unit)
            finally:
                os._exit(0)

    def end(self):
        try:
            os.kill(self.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        os.waitpid(self.pid, 0)


# ---------------------------------------------------- 1: the turn really ends

def test_empty_fragment_flood_does_not_hold_the_worker(server_factory):
    """One client sending empty continuation frames as fast as it can used
    to keep its worker in one loop pass for as long as it kept sending
    (the per-turn budget re-activated it inside the same pass): a
    neighbour's reply waited seconds, no timer ran (the flooder's message
    timeout never fired) and no quiescent state was reported, so RCU
    reclamation stopped on the whole server.  Now the neighbour is answered
    promptly, rcu-reclaimed keeps advancing, and the flooder is closed 1008
    when its message times out."""
    srv = server_factory("--message-timeout-ms", "2500", "--channel", "churn", workers=2)
    victim, f1, f2, pub = on_workers(srv, [0, 0, 0, 1], timeout=20 * SLOW)
    floods = [f1, f2]
    # Unsubscribing on worker 1 retires the subscription: reclaiming it
    # needs every worker's quiescent state, worker 0's too.
    def churn():
        assert request(pub, {"type": "subscribe", "channel-id": "churn"})["success"]
        assert request(pub, {"type": "unsubscribe", "channel-id": "churn"})["success"]
    for _ in range(10):
        churn()
    wait_for(lambda: srv.stats()["shared-memory"]["rcu-pending"] == 0, timeout=10,
             what="nothing pending before the flood")
    before = srv.stats()["shared-memory"]["rcu-reclaimed"]

    fs = []
    for fl in floods:
        fl.send(bytes([0x01, 0x81, 0, 0, 0, 0]) + b"{")  # an unfinished text message
        fs.append(Flooder(fl.sock, bytes([0x00, 0x80, 0, 0, 0, 0]) * 10000))
    rtts, i = [], 0
    try:
        start = time.monotonic()
        while time.monotonic() - start < 1.5:
            t0 = time.monotonic()
            assert request(victim, {"type": "hello", "n": i})["type"] == "echo"
            rtts.append(time.monotonic() - t0)
            i += 1
            churn()
            time.sleep(0.05)
        during = srv.stats()["shared-memory"]["rcu-reclaimed"]
        closes = []
        for fl in floods:
            fl.sock.settimeout(15 * SLOW)
            closes.append(fl.read_until_close())
    finally:
        for f in fs:
            f.end()
    print(f"victim max rtt {max(rtts) * 1000:.1f} ms over {len(rtts)}; rcu-reclaimed {before} -> "
          f"{during}")
    assert max(rtts) < 0.5 * SLOW
    assert during > before
    assert closes == [(1008, b"message not completed in time")] * 2
    assert errors(srv)["message-timeout"] >= 1
