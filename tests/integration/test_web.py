"""The browser side served by the server (docs/web.md): the pages and
/client.js compiled in from web/, their caching headers, --no-web-ui, and
the WebSocket upgrade on / left exactly as it was."""
import json
import os

from wsraw import RawWS, http_request, status_of

WEB = os.path.join(os.path.dirname(__file__), "..", "..", "web")
ASSETS = {"/": ("index.html", "text/html; charset=utf-8"),
          "/demo": ("demo.html", "text/html; charset=utf-8"),
          "/dashboard": ("dashboard.html", "text/html; charset=utf-8"),
          "/client.js": ("sente-lite.js", "text/javascript; charset=utf-8")}


def on_disk(name):
    with open(os.path.join(WEB, name), "rb") as f:
        return f.read()


def test_pages_and_client_are_the_files_of_web(server):
    for path, (name, ctype) in ASSETS.items():
        status, body, r = server.request("GET", path)
        assert status == 200, path
        assert r.getheader("Content-Type") == ctype
        assert body == on_disk(name), f"{path} is not web/{name} byte for byte"
        assert r.getheader("Cache-Control") == "no-cache"
        assert len(r.headers.get_all("Cache-Control")) == 1
        etag = r.getheader("ETag")
        assert etag.startswith('"') and etag.endswith('"')
        assert r.getheader("X-Content-Type-Options") == "nosniff"


def test_etag_revalidation(server):
    _, _, r = server.request("GET", "/client.js")
    etag = r.getheader("ETag")
    for inm in (etag, "W/" + etag, '"nope", ' + etag, "*"):
        status, body, r2 = server.request("GET", "/client.js", headers={"If-None-Match": inm})
        assert status == 304, inm
        assert body == b""
        assert r2.getheader("ETag") == etag
    status, body, _ = server.request("GET", "/client.js", headers={"If-None-Match": '"other"'})
    assert status == 200 and body == on_disk("sente-lite.js")
    # Different files, different tags.
    tags = {server.request("GET", p)[2].getheader("ETag") for p in ASSETS}
    assert len(tags) == len(ASSETS)


def test_keep_alive_across_page_requests(server):
    import http.client
    c = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
    for path in ("/", "/client.js", "/stats", "/demo"):
        c.request("GET", path)
        r = c.getresponse()
        r.read()
        assert r.status == 200, path
    c.close()


def test_pages_answer_get_only(server):
    for path in ASSETS:
        status, body, r = server.request("POST", path, body=b"{}")
        assert status == 405, path
        assert json.loads(body)["error"] == "method-not-allowed"


def test_upgrade_on_root_still_opens_a_websocket(server):
    ws = RawWS(server.port)
    assert ws.status == 101, ws.head
    assert json.loads(ws.read_data())["type"] == "welcome"
    ws.close()
    # An upgrade to a page path is not a WebSocket path.
    ws = RawWS(server.port, path="/demo")
    assert ws.status == 404
    ws.close()


def test_no_web_ui_turns_the_pages_off(server_factory):
    s = server_factory("--no-web-ui")
    for path in ("/demo", "/dashboard"):
        status, body, _ = s.request("GET", path)
        assert status == 404, path
        assert json.loads(body)["error"] == "not-found"
    # "/" without an upgrade answers as before there were pages.
    resp = http_request(s.port, b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert status_of(resp) == 426
    # The client library stays: pages served elsewhere may load it.
    status, body, _ = s.request("GET", "/client.js")
    assert status == 200 and body == on_disk("sente-lite.js")
    assert s.stats()["server-config"]["web-ui"] is False
    ws = RawWS(s.port)
    assert ws.status == 101
    ws.close()


def test_web_ui_flag_and_environment(server_factory):
    assert server_factory().stats()["server-config"]["web-ui"] is True
    s = server_factory(env={"SENTE_WEB_UI": "false"})
    assert s.request("GET", "/demo")[0] == 404
    s = server_factory("--web-ui", env={"SENTE_WEB_UI": "false"})
    assert s.request("GET", "/demo")[0] == 200
