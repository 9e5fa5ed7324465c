"""Telemetry through the logger process: formats, filtering, app name,
disabling, SIGHUP reopening, counters in /stats."""
import asyncio
import json
import os
import re
import signal

import websockets

from conftest import wait_for

LINE = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z) (TRACE|DEBUG|INFO|WARN|ERROR) "
                  r"\[([\w.-]+)\.server/([a-z-]+)\] (\{.*\})$")


def connect_and_close(url, n=1):
    async def go():
        for _ in range(n):
            ws = await websockets.connect(url)
            await ws.recv()
            await ws.send(json.dumps({"type": "ping"}))
            await ws.recv()
            await ws.close()
    asyncio.run(asyncio.wait_for(go(), 30))


def events(srv):
    out = []
    for line in srv.log_lines():
        m = LINE.match(line)
        assert m, f"malformed log line: {line!r}"
        out.append((m.group(2), m.group(3), m.group(4), json.loads(m.group(5))))
    return out


def test_text_lines(server):
    connect_and_close(server.url)
    wait_for(lambda: any(e[2] == "connection-removed" for e in events(server)),
             what="connection-removed line")
    evs = events(server)
    names = [e[2] for e in evs]
    for name in ("server-starting", "server-started", "worker-started", "connection-added",
                 "connection-removed"):
        assert name in names, name
    added = next(e for e in evs if e[2] == "connection-added")
    assert added[0] == "INFO" and added[1] == "sente-lite"
    assert added[3]["conn-id"].startswith("conn-")
    assert added[3]["total-connections"] >= 1
    removed = next(e for e in evs if e[2] == "connection-removed")
    assert removed[3]["message-count"] == 1


def test_debug_level_shows_websocket_events(server_factory):
    srv = server_factory("--log-level", "debug")
    connect_and_close(srv.url)
    wait_for(lambda: any(e[2] == "websocket-closed" for e in events(srv)), what="websocket-closed")
    names = [e[2] for e in events(srv)]
    assert "websocket-opened" in names
    assert "http-request" in names


def test_level_filter(server_factory):
    srv = server_factory("--log-level", "warn")
    connect_and_close(srv.url)
    srv.stop()
    assert all(e[0] in ("WARN", "ERROR") for e in events(srv))


def test_json_format(server_factory):
    srv = server_factory("--log-format", "json")
    connect_and_close(srv.url)

    def has_added():
        return any(json.loads(l)["event"] == "connection-added" for l in srv.log_lines())
    wait_for(has_added, what="json connection-added")
    for line in srv.log_lines():
        obj = json.loads(line)
        for k in ("timestamp", "level", "event", "data"):
            assert k in obj
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", obj["timestamp"])
        assert obj["level"] in ("trace", "debug", "info", "warn", "error")


def test_app_name(server_factory):
    srv = server_factory("--app-name", "myapp")
    connect_and_close(srv.url)
    wait_for(lambda: any(e[2] == "connection-added" for e in events(srv)), what="lines")
    assert all(e[1] == "myapp" for e in events(srv))
    assert "myapp" in srv.stats()["telemetry-stats"]


def test_no_telemetry(server_factory):
    srv = server_factory("--no-telemetry")
    connect_and_close(srv.url, 3)
    assert srv.stop() == 0
    assert srv.log_lines() == []


def test_telemetry_env_false(server_factory):
    srv = server_factory(env={"TELEMETRY_ENABLED": "false"})
    connect_and_close(srv.url)
    assert srv.stop() == 0
    assert srv.log_lines() == []


def test_sighup_reopens_log(server):
    connect_and_close(server.url)
    wait_for(lambda: any(e[2] == "connection-added" for e in events(server)), what="lines")
    rotated = server.log + ".1"
    os.rename(server.log, rotated)
    os.kill(server.pid, signal.SIGHUP)
    wait_for(lambda: os.path.exists(server.log), what="log file recreated")
    connect_and_close(server.url)
    wait_for(lambda: any(e[2] == "connection-added" for e in events(server)),
             what="new lines in the reopened file")


def test_stats_counts_processed(server):
    connect_and_close(server.url, 3)

    def processed():
        t = server.stats()["telemetry-stats"]["sente-lite"]
        return t["processed"] >= 8 and t["dropped"] == 0 and t["errors"] == 0
    wait_for(processed, what="processed count")
