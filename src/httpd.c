/*
 * httpd.c - routing HTTP requests inside a worker.
 *
 * The upgrade is checked in the order a client can fix things: a malformed
 * handshake (400), the wrong version (426), a refused Origin (403), access
 * control (sl_session.h: per-IP place 429, token 401, per-user place 429),
 * then capacity (503).  Capacity is reserved before the 101 goes out, so the
 * server never holds more than --max-connections WebSockets.
 */
#include "sl_httpd.h"
#include "sl_accesslog.h"
#include "sl_admin.h"
#include "sl_metrics.h"
#include "sl_pmd.h"
#include "sl_conf.h"
#include "sl_router.h"
#include "sl_pubsub.h"
#include "sl_session.h"
#include "sl_stats.h"
#include "sl_tel.h"
#include "sl_web.h"

#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <urcu/system.h>
#include <urcu/uatomic.h>

/* HEAD (RFC 9110 9.3.2): routed exactly as GET, and send_raw cuts the body
 * off every response while it is answered (Content-Length stays). */
static bool head_only;

static void send_raw(sl_conn_t *c, char *resp, size_t len)
{
    if (head_only) {
        char *end = memmem(resp, len, "\r\n\r\n", 4);
        if (end)
            len = (size_t)(end - resp) + 4;
    }
    sl_accesslog_response(resp, len);
    sl_buf_t *b = sl_buf_new(len);
    if (b == NULL) {
        free(resp);
        sl_conn_abort(c, "out-of-memory");
        return;
    }
    memcpy(b->data, resp, len);
    b->len = (uint32_t)len;
    free(resp);
    sl_conn_send(c, b);
    sl_buf_unref(b);
}

void sl_httpd_error(sl_conn_t *c, int status, const char *code, const char *message,
                    bool keep_alive)
{
    char *resp;
    size_t len;
    const char *extra = NULL;
    if (status == 426)
        extra = "Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n";
    else if (status == 405)
        extra = "Allow: GET, HEAD\r\n";
    else if (status == 401)
        extra = "WWW-Authenticate: Bearer\r\n";
    if (sl_http_error_response(status, code, message, keep_alive, extra, &resp, &len) != SL_OK) {
        sl_conn_abort(c, "out-of-memory");
        return;
    }
    send_raw(c, resp, len);
}

/* A response body over the bound on one reply (sl_conn_reply_max) is not
 * queued: 503 reply-too-large instead.  True when it was refused. */
static bool too_large(sl_conn_t *c, size_t len, bool keep_alive)
{
    if (len <= sl_conn_reply_max())
        return false;
    char m[160];
    snprintf(m, sizeof(m), "the response would be %zu bytes, over the %zu-byte bound on one reply",
             len, sl_conn_reply_max());
    sl_conns_count_error(SL_ERR_REPLY_TOO_LARGE);
    sl_httpd_error(c, 503, "reply-too-large", m, keep_alive);
    return true;
}

static void send_json_extra(sl_conn_t *c, int status, json_t *doc, bool keep_alive,
                            const char *extra)
{
    char *body = doc ? json_dumps(doc, JSON_COMPACT) : NULL;
    json_decref(doc);
    char *resp;
    size_t len;
    if (body && too_large(c, strlen(body), keep_alive)) {
        free(body);
        return;
    }
    if (body == NULL ||
        sl_http_response(status, "application/json", extra, body, strlen(body), keep_alive,
                         &resp, &len) != SL_OK) {
        free(body);
        sl_conn_abort(c, "out-of-memory");
        return;
    }
    free(body);
    send_raw(c, resp, len);
}

static void send_json(sl_conn_t *c, int status, json_t *doc, bool keep_alive)
{
    send_json_extra(c, status, doc, keep_alive, NULL);
}

static bool header_is(const sl_http_header_t *h, const char *v)
{
    return h && h->value_len == strlen(v) && strncasecmp(h->value, v, h->value_len) == 0;
}

static void handshake_failed(sl_hs_fail_t why)
{
    uint64_t *n = &sl_conns.stats->handshake_failures[why];
    CMM_STORE_SHARED(*n, *n + 1);
}

/* The handshake-failures reason of an access-control refusal (the status
 * and code sl_session_upgrade answered with). */
static sl_hs_fail_t session_refusal(int status, const char *code)
{
    if (status == 401)
        return SL_HS_UNAUTHORIZED;
    if (status != 429)
        return SL_HS_SHM_EXHAUSTED; /* 503: shared or local memory exhausted */
    return strcmp(code, "max-connections-per-ip") == 0 ? SL_HS_MAX_CONNECTIONS_PER_IP
                                                       : SL_HS_MAX_CONNECTIONS_PER_USER;
}

static bool origin_allowed(const sl_http_request_t *req)
{
    const sl_http_header_t *o = sl_http_header(req, "Origin");
    if (sl_conf->norigins == 0 || o == NULL)
        return true; /* no allow-list, or a non-browser client */
    for (int i = 0; i < sl_conf->norigins; i++)
        if (header_is(o, sl_conf->allowed_origins[i]))
            return true;
    return false;
}

/* Reserve one WebSocket slot across all workers.  Our own count goes up
 * first, then the sum is checked: two workers racing for the last slot may
 * both back off, but the total can never exceed the limit. */
static bool reserve_capacity(sl_conn_kind_t kind)
{
    sl_worker_stats_t *me = sl_conns.stats;
    uint64_t *mine = kind == SL_KIND_ECHO ? &me->echo_connections : &me->connections;
    uatomic_add(mine, 1);
    uint64_t total = 0;
    for (uint32_t i = 0; i < sl_shm->nworkers; i++)
        total += uatomic_read(&sl_shm->workers[i].connections) +
                 uatomic_read(&sl_shm->workers[i].echo_connections);
    if (total > (uint64_t)sl_conf->max_connections) {
        uatomic_add(mine, -1);
        return false;
    }
    return true;
}

static void upgrade(sl_conn_t *c, const sl_http_request_t *req, sl_conn_kind_t kind)
{
    const sl_http_header_t *up = sl_http_header(req, "Upgrade");
    const sl_http_header_t *conn = sl_http_header(req, "Connection");
    const sl_http_header_t *key = sl_http_header(req, "Sec-WebSocket-Key");
    const sl_http_header_t *ver = sl_http_header(req, "Sec-WebSocket-Version");
    char accept[29];

    if (!sl_http_method_is(req, "GET") || req->version_minor != 1 || up == NULL ||
        !sl_http_has_token(up->value, up->value_len, "websocket") || conn == NULL ||
        !sl_http_has_token(conn->value, conn->value_len, "upgrade") || key == NULL) {
        sl_conns_count_error(SL_ERR_BAD_HANDSHAKE);
        handshake_failed(SL_HS_BAD_HANDSHAKE);
        sl_httpd_error(c, 400, "bad-handshake",
                       "a WebSocket upgrade needs GET, HTTP/1.1, Upgrade: websocket, "
                       "Connection: Upgrade and Sec-WebSocket-Key",
                       false);
        return;
    }
    if (!header_is(ver, "13")) {
        sl_conns_count_error(SL_ERR_BAD_HANDSHAKE);
        handshake_failed(SL_HS_UNSUPPORTED_VERSION);
        sl_httpd_error(c, 426, "unsupported-version", "only WebSocket version 13 is supported",
                       false);
        return;
    }
    if (sl_ws_accept_key(key->value, key->value_len, accept) != SL_OK) {
        sl_conns_count_error(SL_ERR_BAD_HANDSHAKE);
        handshake_failed(SL_HS_BAD_HANDSHAKE);
        sl_httpd_error(c, 400, "bad-handshake", "Sec-WebSocket-Key is not 16 base64 bytes",
                       false);
        return;
    }
    if (!origin_allowed(req)) {
        sl_conns_count_error(SL_ERR_ORIGIN_REFUSED);
        handshake_failed(SL_HS_ORIGIN_NOT_ALLOWED);
        sl_httpd_error(c, 403, "origin-not-allowed", "this Origin may not connect", false);
        return;
    }
    if (kind == SL_KIND_PROTOCOL) {
        /* Access control (sl_session.h): per-IP place, token, per-user
         * place.  It counts and logs its own refusals. */
        const char *code = NULL;
        char msg[256];
        int st = sl_session_upgrade(c, req, &code, msg, sizeof(msg));
        if (st != SL_OK) {
            handshake_failed(session_refusal(st, code));
            sl_httpd_error(c, st, code, msg, false);
            return;
        }
    }
    if (!reserve_capacity(kind)) {
        sl_session_end(c);
        sl_conns_count_error(SL_ERR_MAX_CONNECTIONS);
        handshake_failed(SL_HS_TOO_MANY_CONNECTIONS);
        sl_httpd_error(c, 503, "too-many-connections", "the server is at --max-connections",
                       false);
        return;
    }
    if (kind == SL_KIND_PROTOCOL && sl_router_admit(c) != SL_OK) {
        sl_session_end(c);
        uatomic_add(&sl_conns.stats->connections, -1);
        sl_conns_count_error(SL_ERR_SHM_EXHAUSTED);
        handshake_failed(SL_HS_SHM_EXHAUSTED);
        sl_httpd_error(c, 503, "shm-exhausted", "the server's shared memory is full", false);
        return;
    }
    /* permessage-deflate: the first acceptable offer, over every
     * Sec-WebSocket-Extensions header in order (sl_pmd.h). */
    char ext[128] = "";
    for (size_t i = 0; sl_conf->compression && !c->pmd && i < req->nheaders; i++) {
        const sl_http_header_t *h = &req->headers[i];
        bool shared = false;
        if (h->name_len == 24 && strncasecmp(h->name, "Sec-WebSocket-Extensions", 24) == 0) {
            c->pmd = sl_pmd_negotiate(h->value, h->value_len, ext, sizeof(ext), &shared);
            c->pmd_shared = shared;
        }
    }
    char resp[320];
    int n = snprintf(resp, sizeof(resp),
                     "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                     "Connection: Upgrade\r\nSec-WebSocket-Accept: %s\r\n%s%s%s\r\n",
                     accept, c->pmd ? "Sec-WebSocket-Extensions: " : "", c->pmd ? ext : "",
                     c->pmd ? "\r\n" : "");
    sl_buf_t *b = sl_buf_new((size_t)n);
    if (b == NULL) {
        /* Registered but never upgraded: abort frees it as an HTTP
         * connection, so undo what the upgrade took here. */
        if (kind == SL_KIND_PROTOCOL)
            sl_router_closed(c);
        uatomic_add(kind == SL_KIND_ECHO ? &sl_conns.stats->echo_connections
                                         : &sl_conns.stats->connections,
                    -1);
        sl_conn_abort(c, "out-of-memory");
        return;
    }
    memcpy(b->data, resp, (size_t)n);
    b->len = (uint32_t)n;
    sl_conn_send(c, b);
    sl_buf_unref(b);
    sl_accesslog_response(resp, (size_t)n);
    sl_conn_upgraded(c, kind);
    if (kind == SL_KIND_PROTOCOL) {
        /* The peer's address is only for telemetry (websocket-opened at
         * debug, connection-added at info): not looked up when filtered. */
        char peer[SL_PEER_MAX] = "-";
        if (sl_tel_on(SL_INFO))
            sl_accesslog_peer(c, req, peer, sizeof(peer));
        sl_router_opened(c, peer);
    }
}

/* A file of web/ compiled into the binary (sl_web.h): GET only. */
static bool send_web(sl_conn_t *c, const sl_http_request_t *req, const sl_web_asset_t *a,
                     bool keep)
{
    if (!sl_http_method_is(req, "GET")) {
        sl_conns_count_error(SL_ERR_METHOD_NOT_ALLOWED);
        sl_httpd_error(c, 405, "method-not-allowed", "use GET or HEAD", keep);
        return keep;
    }
    char *resp;
    size_t len;
    if (sl_web_response(a, req, keep, &resp, &len) != SL_OK) {
        sl_conn_abort(c, "out-of-memory");
        return false;
    }
    send_raw(c, resp, len);
    return keep;
}

/* An admin API answer's refusal, counted by kind: the token (401/403:
 * admin-refused), the server unable to serve it now (5xx: overloaded,
 * shm-exhausted, broker-unavailable, ...: admin-unavailable - not the
 * client's fault, so not a bad HTTP request), or the request itself (other
 * 4xx: bad-http-request). */
static void admin_count(int status)
{
    if (status < 400)
        return;
    sl_conns_count_error(status == 401 || status == 403 ? SL_ERR_ADMIN_REFUSED
                         : status >= 500                ? SL_ERR_ADMIN_UNAVAILABLE
                                                        : SL_ERR_BAD_HTTP_REQUEST);
}

void sl_httpd_deferred_reply(sl_conn_t *c, int status, json_t *doc)
{
    admin_count(status);
    /* (It exists: the request it answers was submitted for c.) */
    sl_conn_cl_t *cl = sl_conn_cl(c);
    bool keep = cl && cl->http_deferred_keep;
    if (cl)
        cl->http_deferred = false;
    if (c->state != SL_CONN_HTTP) {
        json_decref(doc);
        return;
    }
    send_json_extra(c, status, doc, keep, NULL);
    sl_conn_http_resume(c);
}

static bool path_is(const sl_http_request_t *req, const char *p)
{
    return req->path_len == strlen(p) && memcmp(req->path, p, req->path_len) == 0;
}

/* With --ops-listen, these are served there and only there. */
static bool ops_path(const sl_http_request_t *req)
{
    return path_is(req, "/health") || path_is(req, "/stats") || path_is(req, "/metrics") ||
           path_is(req, "/channels") || path_is(req, "/dashboard") ||
           (req->path_len >= 5 && memcmp(req->path, "/api/", 5) == 0);
}

static bool route(sl_conn_t *c, const sl_http_request_t *req, const char *body, size_t blen);

bool sl_httpd_request(sl_conn_t *c, const sl_http_request_t *req, const char *body, size_t blen)
{
    sl_accesslog_begin(c, req);
    /* HEAD is GET without the body, wherever GET is answered (an upgrade
     * needs a real GET: HEAD with Upgrade is refused as GET-less). */
    sl_http_request_t as_get;
    if (sl_http_method_is(req, "HEAD") && sl_http_header(req, "Upgrade") == NULL) {
        as_get = *req;
        as_get.method = "GET";
        as_get.method_len = 3;
        req = &as_get;
        head_only = true;
    }
    bool keep = route(c, req, body, blen);
    head_only = false;
    sl_accesslog_end();
    return keep;
}

static bool route(sl_conn_t *c, const sl_http_request_t *req, const char *body, size_t blen)
{
    uatomic_add(&sl_conns.stats->http_requests, 1);
    const sl_http_header_t *up = sl_http_header(req, "Upgrade");
    /* A draining worker answers, and says the connection ends there. */
    bool keep = req->keep_alive && !sl_conns.stopping;

    SL_TEL(SL_EV_HTTP_REQUEST, SL_DEBUG, SL_TF_SN("method", req->method, req->method_len),
           SL_TF_SN("path", req->path, req->path_len));

    /* --ops-listen splits the paths: operators' endpoints on the ops
     * listener, everything else (the WebSocket, the pages) on the public
     * one; the other side answers 404 as for any unknown path. */
    if (sl_conf->ops_port && c->ops != ops_path(req)) {
        sl_conns_count_error(SL_ERR_NOT_FOUND);
        sl_httpd_error(c, 404, "not-found",
                       c->ops ? "the operator listener serves /health, /stats, /metrics, "
                                "/channels, /dashboard and /api/ only"
                              : "no such endpoint",
                       keep);
        return keep;
    }

    /* Pages and /client.js; "/" with an Upgrade header stays the WebSocket. */
    const sl_web_asset_t *web = up == NULL ? sl_web_find(req->path, req->path_len) : NULL;
    if (web != NULL)
        return send_web(c, req, web, keep);

    if (path_is(req, "/") || (sl_conf->echo && path_is(req, "/echo"))) {
        if (up != NULL) {
            upgrade(c, req, path_is(req, "/") ? SL_KIND_PROTOCOL : SL_KIND_ECHO);
            return false;
        }
        if (!sl_http_method_is(req, "GET")) {
            sl_conns_count_error(SL_ERR_METHOD_NOT_ALLOWED);
            sl_httpd_error(c, 405, "method-not-allowed", "use GET with a WebSocket upgrade",
                           keep);
            return keep;
        }
        sl_conns_count_error(SL_ERR_BAD_HANDSHAKE);
        sl_httpd_error(c, 426, "upgrade-required",
                       "this path speaks WebSocket; see /health and /stats for HTTP", keep);
        return keep;
    }
    if (req->path_len >= 5 && memcmp(req->path, "/api/", 5) == 0) {
        json_t *doc;
        const char *allow;
        int status = sl_admin_handle(c, req, body, blen, &doc, &allow);
        if (status == 0) {
            /* Answered later (the broker): no further request is read
             * before, so responses stay in order. */
            sl_conn_cl_t *cl = sl_conn_cl(c); /* made by the broker request */
            if (cl) {
                cl->http_deferred = true;
                cl->http_deferred_keep = keep;
            }
            return keep;
        }
        admin_count(status);
        char extra[96] = "";
        if (allow)
            snprintf(extra, sizeof(extra), "Allow: %s\r\n", allow);
        else if (status == 401)
            snprintf(extra, sizeof(extra), "WWW-Authenticate: Bearer\r\n");
        send_json_extra(c, status, doc, keep, extra[0] ? extra : NULL);
        return keep;
    }
    bool health = path_is(req, "/health"), stats = path_is(req, "/stats"),
         channels = path_is(req, "/channels"), metrics = path_is(req, "/metrics");
    if (!health && !stats && !channels && !metrics) {
        sl_conns_count_error(SL_ERR_NOT_FOUND);
        sl_httpd_error(c, 404, "not-found", "no such endpoint", keep);
        return keep;
    }
    if (!sl_http_method_is(req, "GET")) {
        sl_conns_count_error(SL_ERR_METHOD_NOT_ALLOWED);
        sl_httpd_error(c, 405, "method-not-allowed", "use GET or HEAD", keep);
        return keep;
    }
    /* Who is connected (user ids, client addresses, user-limited channel
     * ids) only for operators: on the ops listener, or with the admin
     * token; on a public port anyone else sees counts. */
    bool identities = c->ops || sl_admin_bearer_ok(req);
    if (health) {
        bool ok;
        json_t *doc = sl_health_json(&ok);
        send_json(c, ok ? 200 : 503, doc, keep);
    } else if (metrics) {
        bool ok;
        json_t *h = sl_health_json(&ok), *st = sl_stats_json(identities);
        char *text = sl_metrics_text(st, h, ok);
        json_decref(h);
        json_decref(st);
        char *resp;
        size_t len;
        if (text && too_large(c, strlen(text), keep)) {
            free(text);
            return keep;
        }
        if (text == NULL || sl_http_response(200, "text/plain; version=0.0.4; charset=utf-8", NULL,
                                             text, strlen(text), keep, &resp, &len) != SL_OK) {
            free(text);
            sl_conn_abort(c, "out-of-memory");
            return false;
        }
        free(text);
        send_raw(c, resp, len);
    } else if (channels) {
        /* Paged (sl_pubsub.h): ?cursor=<next-cursor>&limit=<1..1000>. */
        long long cursor = sl_http_query_uint(req, "cursor", 0);
        long long limit = sl_http_query_uint(req, "limit", SL_CHANNELS_PAGE_MAX);
        if (cursor < 0 || limit < 1) {
            sl_conns_count_error(SL_ERR_BAD_HTTP_REQUEST);
            sl_httpd_error(c, 400, "bad-query", "cursor and limit must be non-negative integers "
                                                "(limit at least 1)", keep);
            return keep;
        }
        uint32_t next;
        json_t *page = sl_pubsub_channels_page(
            (uint32_t)cursor, (uint32_t)SL_MIN(limit, SL_CHANNELS_PAGE_MAX), &next, identities);
        send_json(c, 200, json_pack("{s:o, s:o}", "channels", page, "next-cursor",
                                    next ? json_integer(next) : json_null()), keep);
    } else {
        send_json(c, 200, sl_stats_json(identities), keep);
    }
    return keep;
}
