"""README "Behind a reverse proxy": scripts/nginx-sente-lite.conf, the
example site, run by Debian's nginx on loopback in front of the real binary
(the lines marked "# TEST:" get the test's port, certificate and operator
address): WebSocket through it over wss (upgrade headers), the client's
upgrade reaching the server (its access log), operator endpoints
refused to others (403), and an idle WebSocket kept open by the server's
heartbeats beyond nginx's proxy_read_timeout."""
import asyncio
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import time

import pytest
import websockets

from conftest import free_port, wait_for
from tlskit import Certs

ROOT = os.path.join(os.path.dirname(__file__), "..", "..")
NGINX = "/usr/sbin/nginx"

pytestmark = pytest.mark.skipif(not os.path.exists(NGINX), reason="nginx not installed")


def site(port, upstream, cert, key, read_timeout=None):
    with open(os.path.join(ROOT, "scripts", "nginx-sente-lite.conf")) as f:
        lines = f.read().splitlines()
    out = []
    for line in lines:
        if "# TEST: listen" in line:
            line = f"    listen 127.0.0.1:{port} ssl;"
        elif "# TEST: cert" in line:
            line = f"    ssl_certificate {cert};"
        elif "# TEST: key" in line:
            line = f"    ssl_certificate_key {key};"
        elif "# TEST: operators" in line:
            line = "        allow 127.0.0.1;"
        elif "server 127.0.0.1:3000;" in line:
            line = f"    server 127.0.0.1:{upstream};"
        elif read_timeout and "proxy_read_timeout" in line:
            line = f"        proxy_read_timeout {read_timeout};"
        out.append(line)
    return "\n".join(out)


@pytest.fixture
def proxy(server_factory, tmp_path):
    certs = Certs(str(tmp_path / "certs"))
    s = server_factory("--trusted-proxy", "127.0.0.1/32", "--access-log",
                       str(tmp_path / "access.log"), "--heartbeat-interval-ms", "1000")
    port = free_port()
    conf = tmp_path / "nginx.conf"
    conf.write_text(f"""
pid {tmp_path}/nginx.pid;
error_log {tmp_path}/error.log;
events {{ worker_connections 256; }}
http {{
    access_log off;
    client_body_temp_path {tmp_path};
    proxy_temp_path {tmp_path};
    {site(port, s.port, certs.ec[0], certs.ec[1], read_timeout="2500ms")}
}}
""")
    subprocess.run([NGINX, "-c", str(conf), "-p", str(tmp_path)], check=True, timeout=20)
    try:
        wait_for(lambda: socket.create_connection(("127.0.0.1", port), timeout=1).close() or True,
                 what="nginx listening")
        yield s, port, certs, tmp_path
    finally:
        with open(tmp_path / "nginx.pid") as f:
            os.kill(int(f.read()), signal.SIGQUIT)
        time.sleep(0.3)


def test_websocket_and_operators_through_nginx(proxy):
    s, port, certs, tmp = proxy
    ctx = certs.client_context()

    async def go():
        async with websockets.connect(f"wss://localhost:{port}/", ssl=ctx) as ws:
            assert json.loads(await ws.recv())["type"] == "welcome"
            await ws.send(json.dumps({"type": "subscribe", "channel-id": "p"}))
            assert json.loads(await ws.recv())["success"] is True
            # Idle for longer than proxy_read_timeout (2.5 s here): the
            # server's pings (every second) keep it open through nginx.
            # (Margins of seconds: the machine may be loaded.)
            await asyncio.sleep(4)
            await ws.send(json.dumps({"type": "publish", "channel-id": "p", "data": 1}))
            got = [json.loads(await ws.recv()) for _ in range(2)]
            assert {m["type"] for m in got} == {"publish-result", "channel-message"}

    asyncio.run(go())
    # Operators (127.0.0.1) reach /stats; anyone else gets 403 from nginx.
    import http.client
    c = http.client.HTTPSConnection("localhost", port, context=ctx, timeout=5)
    c.request("GET", "/stats")
    assert c.getresponse().status == 200
    c.close()
    raw = socket.socket()
    raw.bind(("127.0.0.2", 0))
    raw.connect(("127.0.0.1", port))
    t = ctx.wrap_socket(raw, server_hostname="localhost")
    t.sendall(b"GET /stats HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
    assert t.recv(100).startswith(b"HTTP/1.1 403")
    t.close()
    # The upgrade went through with the client's address, not nginx's.
    log = (tmp / "access.log").read_text()
    assert '"GET / HTTP/1.1" 101' in log or " 101 " in log
