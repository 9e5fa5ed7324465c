"""The shared registry seen from outside: every protocol connection is
registered, closing removes it, a killed worker's entries are cleaned out by
the master, and retired memory is reclaimed."""
import json
import os
import signal

from conftest import wait_for
from wsraw import RawWS


def shm(server):
    return server.stats()["shared-memory"]


def test_connections_registered_and_removed(server):
    base = shm(server)
    assert base["registered-connections"] == 0
    assert 0 < base["used-bytes"] < base["total-bytes"]
    conns = [RawWS(server.port) for _ in range(6)]
    for c in conns:
        c.read_data()
    assert shm(server)["registered-connections"] == 6
    for c in conns:
        c.close()
    wait_for(lambda: shm(server)["registered-connections"] == 0, what="entries removed")
    # Workers report quiescent states every loop turn: everything retired
    # is eventually reclaimed and the arena is back where it started.
    wait_for(lambda: shm(server)["rcu-pending"] == 0, what="reclamation")
    end = shm(server)
    assert end["rcu-retired"] >= 6
    assert end["rcu-retired"] == end["rcu-reclaimed"]
    assert end["used-bytes"] == base["used-bytes"]


def test_dead_worker_entries_cleaned(server):
    conns = [RawWS(server.port) for _ in range(6)]
    placed = [json.loads(c.read_data())["worker"] for c in conns]
    on0 = placed.count(0)
    assert on0 == 3
    assert shm(server)["registered-connections"] == 6
    victim = server.stats()["workers"][0]["pid"]
    os.kill(victim, signal.SIGKILL)
    wait_for(lambda: shm(server)["registered-connections"] == 6 - on0,
             what="the dead worker's entries removed")
    wait_for(server.healthy, what="replacement worker")
    wait_for(lambda: shm(server)["rcu-pending"] == 0, what="reclamation after cleanup")
    for c in conns:
        c.close()
    wait_for(lambda: shm(server)["registered-connections"] == 0, what="all removed")
    assert any("worker died" in l for l in server.log_lines())


def test_health_reports_shared_memory(server):
    status, doc = server.get_json("/health")
    assert status == 200
    assert doc["system-health"]["shared-memory-ok"] is True
