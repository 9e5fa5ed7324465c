"""A connection's --redis state (sl_conn_cl_t, a side table indexed by the
connection's slot) is freed and cleared with the connection: the next
connection in the same slot starts with none (review rn19 M1: with the
free in sl_conn_destroy removed, the first test's HTTP connection is never
read, and the second is a heap-use-after-free under ASan).  Slots are
reused once the worker's slot table is full, hence the 300 connections."""
import os
import signal
import socket
import struct
import time
from conftest import SLOW, needs_own_redis
from test_cluster import TOKEN


def test_slot_reuse_after_a_deferred_admin_call(cluster, redis):
    needs_own_redis()
    (a,) = cluster(1, "--admin-token", TOKEN, workers=1)
    os.kill(redis.proc.pid, signal.SIGSTOP)
    try:
        s = socket.create_connection(("127.0.0.1", a.port))
        body = b'{"n":1}'
        s.sendall(b"POST /api/channels/q1/publish HTTP/1.1\r\nHost: x\r\n"
                  b"Authorization: Bearer " + TOKEN.encode() +
                  b"\r\nContent-Type: application/json\r\nContent-Length: " +
                  str(len(body)).encode() + b"\r\n\r\n" + body)
        time.sleep(0.5)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack('ii', 1, 0))
        s.close()  # reset: gone while its response waits on the broker
        time.sleep(0.5)
    finally:
        os.kill(redis.proc.pid, signal.SIGCONT)
    time.sleep(1)
    # 300 connections open at once fill every slot, the freed one too.
    socks = [socket.create_connection(("127.0.0.1", a.port)) for _ in range(300)]
    time.sleep(0.5)
    for x in socks:
        x.sendall(b"GET /stats HTTP/1.1\r\nHost: x\r\n\r\n")
    stuck = 0
    for x in socks:
        x.settimeout(5 * SLOW)
        try:
            if not x.recv(100).startswith(b"HTTP/1.1 200"):
                stuck += 1
        except socket.timeout:
            stuck += 1
        x.close()
    assert stuck == 0


def test_slot_reuse_after_a_pending_join(cluster, redis):
    import asyncio
    from test_cluster import Client, run
    from test_cluster_faults import publish
    needs_own_redis()
    (a,) = cluster(1, workers=1)

    async def go():
        x = await Client.open(a)
        os.kill(redis.proc.pid, signal.SIGSTOP)
        try:
            await x.send(type="subscribe", **{"channel-id": "j1"})
            await asyncio.sleep(0.5)
            await x.ws.close()  # gone while its join waits on the broker
            await asyncio.sleep(0.5)
        finally:
            os.kill(redis.proc.pid, signal.SIGCONT)
        await asyncio.sleep(4)  # the join's record finishes (answer or timeout)
        subs = [await Client.open(a) for _ in range(300)]
        for s in subs:
            assert (await s.subscribe("j1"))["success"]
        pub = await Client.open(a)
        await publish(pub, "j1", 7)
        for s in subs:
            m = await s.of_type("channel-message")
            assert m["data"] == 7
        for s in subs + [pub]:
            await s.ws.close()
    run(go())
