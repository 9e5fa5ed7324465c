"""What operators use: /metrics parsed by a real Prometheus parser,
/stats consistency under load from several workers, and the packaging
scripts (health-check.sh)."""
import asyncio
import json
import os
import signal
import subprocess

from prometheus_client.parser import text_string_to_metric_families

from conftest import wait_for
from test_channels import on_workers, run

ROOT = os.path.join(os.path.dirname(__file__), "..", "..")


def metrics(srv):
    status, body, resp = srv.request("GET", "/metrics")
    assert status == 200
    assert resp.getheader("Content-Type").startswith("text/plain; version=0.0.4")
    text = body.decode()
    fams = {f.name: f for f in text_string_to_metric_families(text)}
    # Every metric has HELP and TYPE lines.
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name = line.split("{")[0].split(" ")[0]
            base = name[:-len("_total")] if name.endswith("_total") else name
            for suffix in ("_bucket", "_sum", "_count"):  # histogram series
                if name.endswith(suffix) and f"# TYPE {name[:-len(suffix)]} histogram" in text:
                    base = name[:-len(suffix)]
            assert f"# TYPE {name} " in text or f"# TYPE {base}" in text, name
    return fams, text


def value(fams, name, **labels):
    for s in fams[name].samples:
        if all(s.labels.get(k) == v for k, v in labels.items()) and s.name.startswith(
                "sente_lite_" + name.replace("sente_lite_", "")):
            return s.value
    raise KeyError((name, labels))


def test_metrics_parse_and_match_stats(server_factory):
    srv = server_factory("--channel", 'odd "name"\\x', "--message-retention", "3")

    async def go():
        pub, sub = await on_workers(srv.url, [0, 1])
        await sub.subscribe("m")
        for i in range(5):
            await pub.publish("m", i)
        for _ in range(5):
            await sub.message()
        fams, text = metrics(srv)
        st = srv.stats()
        assert value(fams, "sente_lite_up") == 1
        for w in st["workers"]:
            lbl = str(w["id"])
            assert value(fams, "sente_lite_connections", worker=lbl) == w["connections"]
            assert value(fams, "sente_lite_published", worker=lbl) == w["published"]
            assert value(fams, "sente_lite_delivered", worker=lbl) == w["delivered"]
        assert fams["sente_lite_published"].type == "counter"
        assert fams["sente_lite_connections"].type == "gauge"
        assert value(fams, "sente_lite_channel_messages", channel="m") == 5
        assert value(fams, "sente_lite_channel_subscribers", channel='odd "name"\\x') == 0
        assert value(fams, "sente_lite_channels") == 2
        assert value(fams, "sente_lite_errors", reason="invalid-json") == 0
        for c in (pub, sub):
            await c.close()
    run(go())


def test_channel_series_capped(server_factory):
    args = []
    for i in range(110):
        args += ["--channel", f"c{i}"]
    srv = server_factory(*args, workers=1)
    fams, _ = metrics(srv)
    assert len(fams["sente_lite_channel_subscribers"].samples) == 100
    assert value(fams, "sente_lite_channel_series_omitted") == 10


def test_stats_consistent_under_load(server):
    async def go():
        clients = await on_workers(server.url, [0, 1] * 4)
        for c in clients:
            await c.subscribe("load")

        async def spam(c):
            for i in range(200):
                await c.send(type="publish", data=i, **{"channel-id": "load"})
            for _ in range(200):
                await c.reply("publish-result")

        task = asyncio.gather(*(spam(c) for c in clients))
        for _ in range(10):
            st = await asyncio.get_running_loop().run_in_executor(None, server.stats)
            assert st["active-connections"] == sum(w["connections"] for w in st["workers"])
            assert st["total-messages"] == sum(w["messages-in"] for w in st["workers"])
            assert st["published"] == sum(w["published"] for w in st["workers"])
            assert st["delivered"] == sum(w["delivered"] for w in st["workers"])
            assert st["overloaded"] == sum(w["overloaded"] for w in st["workers"])
            await asyncio.sleep(0.02)
        await task
        for c in clients:
            for _ in range(8 * 200):
                await c.message()
        st = server.stats()
        assert st["published"] == 1600 and st["delivered"] == 1600 * 8
        for c in clients:
            await c.close()
    run(go(), timeout=120)


def test_health_check_script(server):
    script = os.path.join(ROOT, "scripts", "health-check.sh")
    ok = subprocess.run([script, f"http://127.0.0.1:{server.port}"], capture_output=True,
                        text=True, timeout=20)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    down = subprocess.run([script, "http://127.0.0.1:1"], capture_output=True, text=True,
                          timeout=20)
    assert down.returncode != 0
    # A worker that keeps dying young is respawned with a growing back-off
    # (100, 200, 400, 800 ms): after four quick deaths /health is 503 for
    # long enough to run the script against it.
    def worker1():
        # A request may land on the worker just as it is killed: that
        # request is lost (as any in-flight request of a killed worker is).
        try:
            return server.stats()["workers"][1]["pid"], server.get_json("/health")[0]
        except OSError:
            return None, None

    for _ in range(4):
        victim = wait_for(lambda: (worker1()[0] or 0) > 0 and worker1()[0], what="worker 1 up")
        os.kill(victim, signal.SIGKILL)
        wait_for(lambda: worker1()[0] not in (None, victim), what="death noticed")
    wait_for(lambda: worker1()[1] == 503, what="the back-off gap")
    bad = subprocess.run([script, f"http://127.0.0.1:{server.port}"], capture_output=True,
                         text=True, timeout=20)
    assert bad.returncode != 0 and "unhealthy" in bad.stderr
    wait_for(server.healthy, timeout=10, what="replacement after the back-off")
    again = subprocess.run([script, f"http://127.0.0.1:{server.port}"], capture_output=True,
                           text=True, timeout=20)
    assert again.returncode == 0


def test_packaging_files():
    unit = open(os.path.join(ROOT, "scripts", "sente-lite.service")).read()
    assert "ExecReload=/bin/kill -HUP $MAINPID" in unit
    assert "LimitNOFILE=" in unit
    rot = open(os.path.join(ROOT, "scripts", "sente-lite.logrotate")).read()
    assert "postrotate" in rot and "HUP" in rot


def test_make_install(tmp_path):
    out = subprocess.run(["make", "-s", "install", f"DESTDIR={tmp_path}", "PREFIX=/usr"],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    for p in ("usr/bin/sente-lite", "usr/share/man/man8/sente-lite.8",
              "usr/lib/systemd/system/sente-lite.service", "etc/logrotate.d/sente-lite",
              "usr/share/sente-lite/health-check.sh"):
        assert (tmp_path / p).exists(), p
