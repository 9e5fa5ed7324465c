"""Replies that wait behind one waiting for the broker (review rk16 N1):
they count with the connection's output, so a client that keeps sending
while its publish waits is stopped being read at the usual bound instead
of making the worker hold its replies without limit; nothing is lost and
the order stays."""
import asyncio
import os
import signal

from conftest import SLOW
from test_cluster import Client, broker_pid, run


def test_replies_behind_a_waiting_one_pause_reading(cluster):
    (a,) = cluster(1, "--redis-timeout-ms", "30000", "--max-outbound-bytes", "1M",
                   "--worker-stall-ms", "1000", "--worker-stall-kill-ms", "60000", workers=1)
    pid = broker_pid(a)
    pad = "x" * 100_000

    async def go():
        c = await Client.open(a)
        assert (await c.subscribe("n1"))["success"]
        pauses0 = a.stats()["backpressure-pauses"]
        os.kill(pid, signal.SIGSTOP)
        try:
            # Waits for the broker: every reply after it waits behind it.
            await c.send(type="publish", **{"channel-id": "n1"}, data=1)

            async def flood():
                for i in range(60):  # 6 MB of echoes against a 1 MB bound
                    await c.send(type="echo", n=i, pad=pad)
            task = asyncio.create_task(flood())
            # Paused (about half the bound held, not 6 MB), and counted.
            paused = False
            for _ in range(int(100 * SLOW)):
                await asyncio.sleep(0.1)
                if a.stats()["backpressure-pauses"] > pauses0:
                    paused = True
                    break
            assert paused, "reading never paused while the replies piled up"
        finally:
            os.kill(pid, signal.SIGCONT)
        r = await c.of_type("publish-result", timeout=30)
        assert r["success"], r
        await asyncio.wait_for(task, 60 * SLOW)
        for i in range(60):
            m = await c.of_type("echo", timeout=30)
            assert m["original"]["n"] == i, (i, m["original"].get("n"))
        await c.ws.close()
    run(go())
