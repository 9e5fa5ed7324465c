"""The worker side calls one way (issue 16): a lower module never names a
higher one - no call of its functions, no use of its header, no access to
the worker's structure.  The layers, lowest first (shm/README.md, "Worker-side
layers"; README "How it runs"):

    outq       the output queue and its shared buffers
    xport      transport: read, flush of the output queue, half-close
    tlsrec     TLS 1.3 record protection after the handshake (keys, seal, open)
    tls        the TLS transport
    ws         the RFC 6455 engine (the inflater of an extension installed
               from above: sl_ws_set_inflater)
    jw         fixed-shape JSON replies written directly into a ws frame
    pmd        permessage-deflate (frames it compresses are ws frames)
    conn       a connection, and the process's set of them (sl_conns):
               raises HTTP requests, WebSocket messages, ticks and its end
               through the handler table the worker installs
    proto      the protocol's replies (and, with --redis, their order)
    cluster    the worker's side of the broker (--redis): requests to it,
               its answers handed back to a callback of the layer above
    session    access control on a connection
    pubsub     channels on a worker (RPC settling through sl_pubsub_settle)
    call       RPC on a worker
    admin      the admin API
    router     the protocol's life and dispatch
    httpd      HTTP routing, the upgrade
    worker     the process: the loop, installs the handlers

The modules are read from src/, so a call added later in the wrong
direction fails here."""
import os
import re

ROOT = os.path.join(os.path.dirname(__file__), "..", "..")
LAYERS = ["outq", "xport", "tlsrec", "tls", "ws", "jw", "pmd", "conn", "proto", "cluster", "session", "pubsub", "call", "admin", "router", "httpd",
          "worker"]


def source(mod):
    with open(os.path.join(ROOT, "src", mod + ".c")) as f:
        text = f.read()
    text = re.sub(r"/\*.*?\*/", lambda m: re.sub(r"[^\n]", " ", m.group(0)), text, flags=re.S)
    return re.sub(r"//[^\n]*", "", text)


def names_of(mod):
    """What naming module `mod` looks like in C: a call of one of its
    functions, its header, or (for the worker) its structure."""
    pats = [r"\bsl_%s_[a-z0-9_]*\s*\(" % mod, r'#include\s+"sl_%s\.h"' % mod]
    if mod == "worker":
        pats += [r"\bsl_worker\b", r"\bsl_worker_t\b"]
    if mod == "conn":
        pats += [r"\bsl_conns_[a-z0-9_]*\s*\(", r"\bsl_conns\b"]
    return re.compile("|".join(pats))


def test_layers_call_one_way():
    bad = []
    for i, low in enumerate(LAYERS):
        text = source(low)
        for high in LAYERS[i + 1:]:
            for m in names_of(high).finditer(text):
                line = text.count("\n", 0, m.start()) + 1
                bad.append("src/%s.c:%d names %s (%s)" % (low, line, high, m.group(0).strip()))
    assert bad == [], "\n".join(bad)


def test_conn_raises_events_through_the_table():
    """conn.c reaches HTTP routing and the protocol only through sl_conns.on."""
    text = source("conn")
    for field in ("http_request", "http_error", "ws_message", "ws_tick", "closed"):
        assert re.search(r"sl_conns\.on->%s\(" % field, text), field
    worker = source("worker")
    assert re.search(r"sl_conns\.on\s*=\s*&worker_handlers", worker)


def test_the_check_sees_a_wrong_call():
    """The pattern finds a call up the layers (a check that cannot fail
    guards nothing)."""
    assert names_of("httpd").search("    sl_httpd_error(c, 400, \"x\", \"y\", false);")
    assert names_of("worker").search("sl_worker->stats")
    assert not names_of("worker").search("sl_worker_stats_t *st;")
