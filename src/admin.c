/*
 * admin.c - the authenticated HTTP admin API under /api/ (PROTOCOL 5).
 *
 * Enabled only when --admin-token (or SENTE_ADMIN_TOKEN) is set; every call
 * carries "Authorization: Bearer <token>", compared in constant time (both
 * sides are hashed with SHA-256 and the digests compared with
 * CRYPTO_memcmp, so neither the length nor the content leaks through
 * timing).  Whichever worker receives a call acts on every worker through
 * the shared registry and the inboxes.  Path segments are percent-decoded
 * after splitting on '/', so a channel id may contain "/" as %2F.
 */
#include "sl_admin.h"
#include "sl_access.h"
#include "sl_chan.h"
#include "sl_cluster.h"
#include "sl_conf.h"
#include "sl_pubsub.h"
#include "sl_rpc.h"
#include "sl_tel.h"

#include <urcu/urcu-qsbr.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <urcu/uatomic.h>

#define REG (&sl_shm->reg)
#define SEG_MAX 4

typedef struct {
    int status;
    json_t *body;
    const char *allow; /* for 405 */
} result_t;

static result_t err(int status, const char *code, const char *message)
{
    return (result_t){status, json_pack("{s:s, s:s}", "error", code, "message", message), NULL};
}

static result_t ok(int status, json_t *body)
{
    return (result_t){status, body, NULL};
}

static result_t not_allowed(const char *allow)
{
    result_t r = err(405, "method-not-allowed", "this method is not allowed here");
    r.allow = allow;
    return r;
}

/* --redis (below) */
enum { A_CREATE, A_DELETE, A_INFO, A_PUBLISH, A_BROADCAST, A_SEND, A_CLOSE };
static result_t cluster_call(int op, const char *id, size_t len, int kind, json_t *req,
                             const char *raw, size_t rawlen);
static result_t cluster_channel_call(const char *method, const char *id, size_t len,
                                     json_t *body, bool has_body);

/* ---------------------------------------------------------------- auth */

static bool token_ok(const sl_http_request_t *req)
{
    const sl_http_header_t *h = sl_http_header(req, "Authorization");
    if (h == NULL || h->value_len < 7 || strncasecmp(h->value, "Bearer ", 7) != 0)
        return false;
    unsigned char a[EVP_MAX_MD_SIZE], b[EVP_MAX_MD_SIZE];
    unsigned int al = 0, bl = 0;
    const char *tok = sl_conf->admin_token;
    EVP_Digest(h->value + 7, h->value_len - 7, a, &al, EVP_sha256(), NULL);
    EVP_Digest(tok, strlen(tok), b, &bl, EVP_sha256(), NULL);
    return al == bl && al > 0 && CRYPTO_memcmp(a, b, al) == 0;
}

bool sl_admin_bearer_ok(const sl_http_request_t *req)
{
    return sl_conf->admin_token[0] != '\0' && token_ok(req);
}

/* ---------------------------------------------------------------- path */

/* Split "/api/a/b%2Fc" after "/api/" into decoded segments (malloc'd,
 * NUL-free: %00 is refused).  Returns the count, or -1 for a bad escape. */
static int split(const char *path, size_t len, char *seg[SEG_MAX], size_t seglen[SEG_MAX])
{
    int n = 0;
    size_t i = 5; /* after "/api/" */
    while (i <= len && n < SEG_MAX) {
        size_t s = i;
        while (i < len && path[i] != '/')
            i++;
        char *out = malloc(i - s + 1);
        int o = out ? sl_http_unescape(path + s, i - s, out, i - s) : -1;
        if (o < 0) {
            free(out);
            return -1;
        }
        out[o] = '\0';
        seg[n] = out;
        seglen[n] = (size_t)o;
        n++;
        i++; /* skip '/' */
    }
    return i <= len ? SEG_MAX + 1 : n; /* too many segments: no route has that many */
}

/* ------------------------------------------------------------- channels */

static json_t *channel_entry(sl_chan_t *c)
{
    return json_pack("{s:s%, s:o, s:I, s:I, s:I}", "channel-id", c->id, (size_t)c->node.klen,
                     "config", sl_pubsub_config_json(&c->config), "created-at", (json_int_t)c->created_at,
                     "message-count", (json_int_t)sl_chan_message_count(c),
                     "subscriber-count", (json_int_t)uatomic_read(&c->subscribers));
}

/* Read a channel config body: every key optional, unknown keys refused. */
static const char *parse_config(json_t *body, sl_chan_config_t *cfg)
{
    *cfg = (sl_chan_config_t){.max_subscribers = sl_conf->max_subscribers,
                              .message_retention = sl_conf->message_retention,
                              .rpc_timeout_ms = sl_conf->rpc_timeout_ms,
                              .history_ttl_ms = sl_conf->history_ttl_ms,
                              .telemetry_enabled = true,
                              .join_leave = sl_conf->join_leave};
    if (body == NULL)
        return NULL;
    if (!json_is_object(body))
        return "the body must be a JSON object of channel settings";
    const char *key;
    json_t *v;
    json_object_foreach(body, key, v)
    {
        int64_t *field = NULL, min = 0, max = 0;
        if (strcmp(key, "max-subscribers") == 0)
            field = &cfg->max_subscribers, min = 1, max = 10000000;
        else if (strcmp(key, "message-retention") == 0)
            field = &cfg->message_retention, min = 0, max = 10000;
        else if (strcmp(key, "rpc-timeout-ms") == 0)
            field = &cfg->rpc_timeout_ms, min = 1, max = 3600000;
        else if (strcmp(key, "history-ttl-ms") == 0)
            field = &cfg->history_ttl_ms, min = 0, max = 2592000000LL;
        else if (strcmp(key, "telemetry-enabled") == 0 || strcmp(key, "join-leave") == 0) {
            if (!json_is_boolean(v))
                return "telemetry-enabled and join-leave must be booleans";
            if (strcmp(key, "join-leave") == 0)
                cfg->join_leave = json_is_true(v);
            else
                cfg->telemetry_enabled = json_is_true(v);
            continue;
        } else
            return "unknown setting (max-subscribers, message-retention, rpc-timeout-ms, "
                   "history-ttl-ms, telemetry-enabled, join-leave)";
        if (!json_is_integer(v) || json_integer_value(v) < min || json_integer_value(v) > max)
            return "a setting is out of range (max-subscribers 1..10000000, message-retention "
                   "0..10000, rpc-timeout-ms 1..3600000, history-ttl-ms 0..2592000000)";
        *field = json_integer_value(v);
    }
    return NULL;
}

/* Listings in one answer are cut at SL_CHANNELS_PAGE_MAX entries (the
 * rest counted in an "...-omitted" field) or paged; retained messages at a
 * share of the bound on one reply. */
typedef struct {
    json_t *list;
    uint64_t omitted;
} capped_t;

static void add_id(const char *conn_id, void *arg)
{
    capped_t *c = arg;
    if (json_array_size(c->list) < SL_CHANNELS_PAGE_MAX)
        json_array_append_new(c->list, json_string(conn_id));
    else
        c->omitted++;
}

static result_t channel_call(const char *method, const char *id, size_t len, json_t *body,
                             bool has_body)
{
    if (!sl_chan_id_valid(id, len))
        return err(400, "invalid-channel-id", "1-128 bytes of UTF-8 without control characters");
    if (sl_cluster)
        return cluster_channel_call(method, id, len, body, has_body);
    if (strcmp(method, "POST") == 0) {
        sl_chan_config_t cfg;
        const char *why = parse_config(has_body ? body : NULL, &cfg);
        if (why)
            return err(400, "bad-config", why);
        /* presence=none: no join / leave, whatever the body says (as for
         * every channel of the namespace: review rf15 F7). */
        if (sl_conf_namespace(sl_conf, id, len, NULL)->rules[SL_NS_PRESENCE] == SL_RULE_NONE)
            cfg.join_leave = false;
        sl_chan_t *c;
        int rc = sl_chan_create(REG, id, len, &cfg, &c);
        if (rc == SL_CHAN_EXISTS)
            return err(409, "channel-exists", "a channel with this id exists");
        if (rc == SL_CHAN_TOO_MANY) {
            sl_conns_count_error(SL_ERR_TOO_MANY_CHANNELS);
            return err(503, "too-many-channels", "the server is at --max-channels");
        }
        if (rc != SL_CHAN_CREATED)
            return err(503, "shm-exhausted", "the server's shared memory is full");
        SL_TEL(SL_EV_CHANNEL_CREATED, SL_INFO, SL_TF_SN("channel-id", id, len),
               SL_TF_S("by", "admin-api"), SL_TF_I("max-subscribers", cfg.max_subscribers),
               SL_TF_I("message-retention", cfg.message_retention));
        return ok(201, channel_entry(c));
    }
    if (strcmp(method, "DELETE") == 0) {
        json_t *notice = json_pack("{s:s, s:s%}", "type", "channel-deleted", "channel-id", id, len);
        sl_buf_t *f = notice ? sl_frame_json(notice) : NULL;
        json_decref(notice);
        uint32_t n = 0;
        uint64_t woken = 0;
        int rc = f ? sl_chan_delete(REG, id, len, f->data + f->start, f->len - f->start, &n,
                                    &woken)
                   : SL_CHAN_NO_MEMORY;
        sl_buf_unref(f);
        if (rc == SL_CHAN_NOT_SUBSCRIBED)
            return err(404, "channel-not-found", "no such channel");
        if (rc != SL_OK)
            return err(503, "overloaded", "a worker's inbox is full; try again");
        sl_pubsub_wake_later(woken);
        SL_TEL(SL_EV_CHANNEL_DELETED, SL_INFO, SL_TF_SN("channel-id", id, len),
               SL_TF_I("unsubscribed", n));
        return ok(200, json_pack("{s:b, s:I}", "deleted", 1, "unsubscribed", (json_int_t)n));
    }
    if (strcmp(method, "GET") == 0) {
        sl_chan_t *c = sl_chan_find(REG, id, len);
        if (c == NULL)
            return err(404, "channel-not-found", "no such channel");
        capped_t subs = {json_array(), 0};
        sl_chan_subscribers(c, add_id, &subs);
        uint64_t last, oldest, omitted;
        json_t *retained =
            sl_pubsub_retained(c, 0, sl_conn_reply_max() / 2, &omitted, &last, &oldest);
        json_t *o = json_pack("{s:s%, s:o, s:I, s:I, s:s, s:o, s:I, s:o, s:I}", "channel-id", id,
                              len, "config", sl_pubsub_config_json(&c->config), "created-at",
                              (json_int_t)c->created_at, "message-count",
                              (json_int_t)sl_chan_message_count(c), "epoch", c->epoch,
                              "subscribers", subs.list, "subscribers-omitted",
                              (json_int_t)subs.omitted, "retained-messages", retained,
                              "retained-omitted", (json_int_t)omitted);
        return ok(200, o);
    }
    return not_allowed("GET, HEAD, POST, DELETE");
}

static result_t channel_publish(const char *id, size_t len, const char *body, size_t blen)
{
    if (sl_cluster) {
        if (!sl_chan_id_valid(id, len))
            return err(404, "channel-not-found", "no such channel");
        json_t *data = json_loadb(body, blen, JSON_DECODE_ANY | JSON_ALLOW_NUL, NULL);
        if (data == NULL)
            return err(400, "invalid-json", "the body must be JSON (the message data)");
        char *enc = json_dumps(data, JSON_COMPACT | JSON_ENCODE_ANY);
        json_decref(data);
        if (enc == NULL)
            return err(500, "encode-failed", "could not encode the data");
        result_t r = cluster_call(A_PUBLISH, id, len, SL_BRQ_PUBLISH, NULL, enc, strlen(enc));
        free(enc);
        return r;
    }
    sl_chan_t *c = sl_chan_id_valid(id, len) ? sl_chan_find(REG, id, len) : NULL;
    if (c == NULL)
        return err(404, "channel-not-found", "no such channel");
    /* The body is the data itself; re-encode it compactly. */
    json_t *data = json_loadb(body, blen, JSON_DECODE_ANY | JSON_ALLOW_NUL, NULL);
    if (data == NULL)
        return err(400, "invalid-json", "the body must be JSON (the message data)");
    char *enc = json_dumps(data, JSON_COMPACT | JSON_ENCODE_ANY);
    json_decref(data);
    if (enc == NULL)
        return err(500, "encode-failed", "could not encode the data");
    sl_chan_pub_t p = {.data_json = enc, .data_len = strlen(enc), .sender_conn_id = NULL,
                       .published_at = sl_now_ms()};
    sl_chan_pub_result_t res;
    int rc = sl_chan_publish(REG, c, &p, &res);
    free(enc);
    if (rc == SL_CHAN_NOT_SUBSCRIBED)
        return err(404, "channel-not-found", "no such channel");
    if (rc != SL_OK) {
        uatomic_add(&sl_conns.stats->overloaded, 1);
        return ok(503, json_pack("{s:b, s:s}", "success", 0, "reason", "overloaded"));
    }
    uatomic_add(&sl_conns.stats->published, 1);
    sl_pubsub_wake_later(res.woken);
    char mid[32];
    snprintf(mid, sizeof(mid), "msg-%llu", (unsigned long long)res.message_id);
    return ok(200, json_pack("{s:b, s:s, s:I, s:I}", "success", 1, "message-id", mid, "seq",
                             (json_int_t)res.seq, "delivered-to", (json_int_t)res.delivered_to));
}

/* ------------------------------------------------------------ broadcast */

static result_t broadcast(json_t *body)
{
    if (!json_is_object(body))
        return err(400, "not-an-object", "the body must be a JSON object");
    json_t *msg = json_deep_copy(body);
    json_object_set_new(msg, "broadcast", json_true());
    if (sl_cluster) {
        /* Every node's broker hands it to its own workers. */
        char *txt = json_dumps(msg, JSON_COMPACT);
        json_decref(msg);
        if (txt == NULL)
            return err(500, "encode-failed", "could not encode the message");
        SL_TEL(SL_EV_CHANNEL_BROADCAST_START, SL_INFO, SL_TF_S("scope", "cluster"));
        result_t r = cluster_call(A_BROADCAST, NULL, 0, SL_BRQ_ADMIN,
                                  json_pack("{s:s, s:s}", "op", "broadcast", "frame", txt), NULL,
                                  0);
        free(txt);
        return r;
    }
    sl_buf_t *f = sl_frame_json(msg);
    json_decref(msg);
    if (f == NULL)
        return err(500, "encode-failed", "could not encode the message");
    uint64_t workers = 0, n = 0;
    for (uint32_t w = 0; w < sl_shm->nworkers; w++) {
        uint64_t k = uatomic_read(&sl_shm->workers[w].connections);
        if (k && uatomic_read(&sl_shm->workers[w].pid) > 0) {
            workers |= (uint64_t)1 << w;
            n += k;
        }
    }
    SL_TEL(SL_EV_CHANNEL_BROADCAST_START, SL_INFO, SL_TF_S("scope", "all-connections"),
           SL_TF_I("connections", n));
    uint64_t reached = 0;
    int rc = sl_chan_broadcast(REG, workers, f->data + f->start, f->len - f->start, &reached);
    sl_buf_unref(f);
    if (rc != SL_OK) {
        SL_TEL(SL_EV_BROADCAST_FAILED, SL_WARN, SL_TF_S("reason", "overloaded"));
        return err(503, "overloaded", "a worker's inbox is full; try again");
    }
    /* A worker whose inbox was full is skipped: its connections are not
     * counted as reached. */
    for (uint32_t w = 0; w < sl_shm->nworkers; w++)
        if ((workers & ~reached) >> w & 1)
            n -= SL_MIN(n, uatomic_read(&sl_shm->workers[w].connections));
    sl_pubsub_wake_later(reached);
    SL_TEL(SL_EV_CHANNEL_BROADCAST_COMPLETE, SL_INFO, SL_TF_I("sent-to", n));
    return ok(200, json_pack("{s:I}", "sent-to", (json_int_t)n));
}

/* ---------------------------------------------------------- connections */

/* One connection of the listing; "user" is null for anonymous ones. */
static json_t *conn_json(const sl_reg_conn_t *c)
{
    const sl_access_user_t *u = sl_access_user_find(REG, c->conn_id, strlen(c->conn_id));
    return json_pack("{s:s, s:i, s:I, s:I, s:I, s:s?}", "conn-id", c->conn_id, "worker",
                     c->worker, "opened-at", (json_int_t)c->opened_at, "last-activity",
                     (json_int_t)uatomic_read(&c->last_activity), "message-count",
                     (json_int_t)uatomic_read(&c->message_count), "user", u ? u->user : NULL);
}

typedef struct {
    json_t *list;
    uint32_t limit;
} conn_page_t;

static int conn_cb(sl_table_node_t *n, void *arg)
{
    conn_page_t *p = arg;
    json_array_append_new(p->list, conn_json((sl_reg_conn_t *)n));
    return json_array_size(p->list) >= p->limit; /* the page is full after this bucket */
}

/* GET /api/connections?cursor=&limit=: a page of whole hash buckets, about
 * `limit` (1..1000) connections; next-cursor null after the last. */
static result_t connections_page(const sl_http_request_t *req)
{
    long long cursor = sl_http_query_uint(req, "cursor", 0);
    long long limit = sl_http_query_uint(req, "limit", SL_CHANNELS_PAGE_MAX);
    if (cursor < 0 || limit < 1)
        return err(400, "bad-query", "cursor and limit must be non-negative integers (limit at "
                                     "least 1)");
    conn_page_t p = {json_array(), (uint32_t)SL_MIN(limit, SL_CHANNELS_PAGE_MAX)};
    uint32_t next = (uint32_t)cursor, nb = REG->conns->nbuckets;
    while (next < nb && json_array_size(p.list) < p.limit)
        next = sl_table_walk(REG->conns, next, 4096, conn_cb, &p);
    return ok(200, json_pack("{s:o, s:o}", "connections", p.list, "next-cursor",
                             next < nb ? json_integer(next) : json_null()));
}

static result_t connection_call(const char *method, const char *id, size_t len, bool send,
                                json_t *body)
{
    sl_reg_conn_t *c = sl_reg_conn_find(REG, id, len);
    const char *node = c ? NULL : sl_cluster_remote_node(id, len);
    if (node) {
        /* A connection of another node: that node's broker acts. */
        if (send && strcmp(method, "POST") != 0)
            return not_allowed("POST");
        if (!send && strcmp(method, "DELETE") != 0)
            return not_allowed("DELETE");
        if (send && !json_is_object(body))
            return err(400, "not-an-object", "the body must be a JSON object");
        char *frame = send ? json_dumps(body, JSON_COMPACT) : NULL;
        json_t *req = json_pack("{s:s, s:s, s:s%}", "op", send ? "send" : "close", "node", node,
                                "conn-id", id, len);
        if (frame)
            json_object_set_new(req, "frame", json_string(frame));
        free(frame);
        return cluster_call(send ? A_SEND : A_CLOSE, NULL, 0, SL_BRQ_ADMIN, req, NULL, 0);
    }
    if (c == NULL)
        return err(404, "connection-not-found", "no such connection");
    if (send) {
        if (strcmp(method, "POST") != 0)
            return not_allowed("POST");
        if (!json_is_object(body))
            return err(400, "not-an-object", "the body must be a JSON object");
        sl_buf_t *f = sl_frame_json(body);
        if (f == NULL)
            return err(500, "encode-failed", "could not encode the message");
        int rc = sl_chan_send_kind(REG, SL_INBOX_DIRECT, c->worker, c->slot, c->conn_no,
                                   f->data + f->start, f->len - f->start);
        sl_buf_unref(f);
        if (rc != SL_OK)
            return err(503, "overloaded", "the connection's worker inbox is full");
        sl_pubsub_wake_later((uint64_t)1 << c->worker);
        return ok(200, json_pack("{s:b}", "success", 1));
    }
    if (strcmp(method, "DELETE") != 0)
        return not_allowed("DELETE");
    if (sl_chan_send_kind(REG, SL_INBOX_CLOSE, c->worker, c->slot, c->conn_no, NULL, 0) != SL_OK)
        return err(503, "overloaded", "the connection's worker inbox is full");
    sl_pubsub_wake_later((uint64_t)1 << c->worker);
    return ok(200, json_pack("{s:b}", "closed", 1));
}

/* ----------------------------------------------------------------- users */

typedef struct {
    const char *method;
    json_t *list;          /* GET: the connections */
    const char *chan;      /* DELETE .../subscriptions/{id}: the channel */
    size_t chan_len;
    sl_chan_t *ch;
    uint64_t done, refused, workers;
    uint64_t omitted; /* GET: connections beyond SL_CHANNELS_PAGE_MAX */
} user_op_t;

static void user_conn_cb(const sl_access_user_t *u, void *arg)
{
    user_op_t *x = arg;
    if (x->list) {
        sl_reg_conn_t *c = sl_reg_conn_find(REG, u->conn_id, strlen(u->conn_id));
        if (c && json_array_size(x->list) < SL_CHANNELS_PAGE_MAX)
            json_array_append_new(x->list, conn_json(c));
        else if (c)
            x->omitted++;
        return;
    }
    int rc;
    if (x->chan) {
        if (!sl_chan_is_subscriber(REG, x->ch, u->conn_id))
            return;
        /* The connection's worker leaves the channel and tells it. */
        rc = sl_chan_send_kind(REG, SL_INBOX_UNSUBSCRIBE, u->worker, u->slot, u->conn_no,
                               (const uint8_t *)x->chan, x->chan_len);
    } else {
        rc = sl_chan_send_kind(REG, SL_INBOX_CLOSE, u->worker, u->slot, u->conn_no, NULL, 0);
    }
    if (rc == SL_OK) {
        x->done++;
        x->workers |= (uint64_t)1 << u->worker;
    } else {
        x->refused++;
    }
}

/* /api/users/{user}/connections (GET: list, DELETE: close them all) and
 * DELETE /api/users/{user}/subscriptions/{channel-id}, on every worker. */
static result_t user_call(const char *method, const char *user, size_t ulen, const char *chan,
                          size_t chan_len)
{
    user_op_t x = {.method = method, .chan = chan, .chan_len = chan_len};
    if (chan) {
        if (strcmp(method, "DELETE") != 0)
            return not_allowed("DELETE");
        if (!sl_chan_id_valid(chan, chan_len) || (x.ch = sl_chan_find(REG, chan, chan_len)) == NULL)
            return err(404, "channel-not-found", "no such channel");
    } else if (strcmp(method, "GET") == 0) {
        x.list = json_array();
    } else if (strcmp(method, "DELETE") != 0) {
        return not_allowed("GET, HEAD, DELETE");
    }
    sl_access_user_conns(REG, user, ulen, user_conn_cb, &x);
    if (x.list)
        return ok(200, json_pack("{s:s%, s:o, s:I}", "user", user, ulen, "connections", x.list,
                                 "connections-omitted", (json_int_t)x.omitted));
    sl_pubsub_wake_later(x.workers);
    SL_TEL(SL_EV_CONNECTION_REMOVED, SL_INFO, SL_TF_SN("user", user, ulen),
           SL_TF_S("by", "admin-api"), SL_TF_S("what", chan ? "unsubscribed" : "closed"),
           SL_TF_I("count", x.done));
    if (x.refused)
        return err(503, "overloaded", "a worker's inbox is full; some were not reached, try again");
    return ok(200, json_pack("{s:s%, s:I}", "user", user, ulen, chan ? "unsubscribed" : "closed",
                             (json_int_t)x.done));
}

/* ------------------------------------------------------------ --redis */

/* With --redis the channel calls, publish, broadcast, and send/close for a
 * connection of another node go through the broker; the HTTP response
 * waits for its answer (status 0 = deferred: httpd stops reading the
 * connection's next request until sl_admin_deferred_reply, which the
 * worker points at httpd's sl_httpd_deferred_reply). */
typedef struct {
    int op;
    size_t len;
    char mid[48];
    char id[SL_CHAN_ID_MAX + 1];
} admin_wait_t;

static sl_conn_t *cur_conn; /* the connection of the call being routed */

static result_t admin_result(admin_wait_t *w, uint32_t status, json_t *res)
{
    if (status == SL_BR_UNAVAILABLE)
        return err(503, "broker-unavailable", "the cluster's Redis cannot be reached; try again");
    if (status == SL_BR_TIMEOUT)
        return err(504, "broker-timeout",
                   "sent to the cluster's Redis, no answer in time: it may have been done");
    if (status == SL_BR_OVERLOADED)
        return err(503, "overloaded", "a queue is full; try again");
    switch (w->op) {
    case A_CREATE:
        if (status == SL_BR_EXISTS)
            return err(409, "channel-exists", "a channel with this id exists");
        if (status != SL_BR_OK)
            break;
        return ok(201, json_pack("{s:s%, s:O, s:O, s:O, s:i}", "channel-id", w->id, w->len,
                                 "config", json_object_get(res, "config"), "created-at",
                                 json_object_get(res, "created-at"), "message-count",
                                 json_object_get(res, "message-count"), "subscriber-count", 0));
    case A_DELETE:
        if (status == SL_BR_NOT_FOUND)
            return err(404, "channel-not-found", "no such channel");
        if (status != SL_BR_OK)
            break;
        SL_TEL(SL_EV_CHANNEL_DELETED, SL_INFO, SL_TF_SN("channel-id", w->id, w->len),
               SL_TF_S("by", "admin-api"));
        return ok(200, json_pack("{s:b, s:O}", "deleted", 1, "unsubscribed",
                                 json_object_get(res, "unsubscribed")));
    case A_INFO: {
        if (status == SL_BR_NOT_FOUND)
            return err(404, "channel-not-found", "no such channel");
        if (status != SL_BR_OK)
            break;
        json_t *o = json_deep_copy(res);
        capped_t subs = {json_array(), 0};
        sl_chan_t *c = sl_chan_find(REG, w->id, w->len);
        if (c)
            sl_chan_subscribers(c, add_id, &subs);
        json_object_set_new(o, "channel-id", json_stringn(w->id, w->len));
        json_object_set_new(o, "subscribers", subs.list); /* this node's */
        json_object_set_new(o, "subscribers-omitted", json_integer((json_int_t)subs.omitted));
        /* Redis's answer is cut at 1000 messages / 4 MiB; this reply at
         * the same share of the bound on one reply as a local channel's. */
        uint64_t omitted = sl_pubsub_cut_history(json_object_get(o, "retained-messages"),
                                                 sl_conn_reply_max() / 2);
        json_object_set_new(o, "retained-omitted", json_integer((json_int_t)omitted));
        return ok(200, o);
    }
    case A_PUBLISH:
        if (status == SL_BR_NOT_FOUND)
            return err(404, "channel-not-found", "no such channel");
        if (status != SL_BR_OK)
            break;
        uatomic_add(&sl_conns.stats->published, 1);
        return ok(200, json_pack("{s:b, s:s, s:O, s:O}", "success", 1, "message-id", w->mid,
                                 "seq", json_object_get(res, "seq"), "delivered-to",
                                 json_object_get(res, "delivered-to")));
    case A_BROADCAST: {
        if (status != SL_BR_OK)
            break;
        /* Every node's connections, as of the last heartbeats. */
        uint64_t n = 0;
        json_t *nodes = sl_cluster_nodes();
        size_t i;
        json_t *node;
        json_array_foreach(nodes, i, node)
            n += (uint64_t)json_integer_value(json_object_get(node, "connections"));
        json_decref(nodes);
        SL_TEL(SL_EV_CHANNEL_BROADCAST_COMPLETE, SL_INFO, SL_TF_I("sent-to", n),
               SL_TF_S("scope", "cluster"));
        return ok(200, json_pack("{s:I}", "sent-to", (json_int_t)n));
    }
    case A_SEND:
    case A_CLOSE:
        if (status == SL_BR_NOT_FOUND)
            return err(404, "connection-not-found", "no such connection");
        if (status != SL_BR_OK)
            break;
        return ok(200, json_pack(w->op == A_SEND ? "{s:b}" : "{s:b}",
                                 w->op == A_SEND ? "success" : "closed", 1));
    }
    return err(500, "internal-error", sl_brq_reason(status));
}

void (*sl_admin_deferred_reply)(sl_conn_t *c, int status, json_t *doc);

static void admin_done(sl_conn_t *c, void *arg, uint32_t status, json_t *res)
{
    admin_wait_t *w = arg;
    if (c) {
        result_t r = admin_result(w, status, res);
        if (sl_admin_deferred_reply)
            sl_admin_deferred_reply(c, r.status, r.body);
        else
            json_decref(r.body);
    }
    free(w);
}

static result_t cluster_call(int op, const char *id, size_t len, int kind, json_t *req,
                             const char *raw, size_t rawlen)
{
    admin_wait_t *w = calloc(1, sizeof(*w));
    if (w == NULL || cur_conn == NULL) {
        free(w);
        json_decref(req);
        return err(503, "overloaded", "out of memory");
    }
    w->op = op;
    w->len = SL_MIN(len, (size_t)SL_CHAN_ID_MAX);
    if (id)
        memcpy(w->id, id, w->len);
    int rc;
    if (kind == SL_BRQ_PUBLISH) {
        rc = sl_pubsub_cluster_publish(cur_conn, id, len, raw, rawlen, false, admin_done, w,
                                       w->mid);
    } else {
        char *txt = req ? json_dumps(req, JSON_COMPACT) : NULL;
        rc = txt ? sl_cluster_submit(kind, cur_conn, 0, txt, strlen(txt), admin_done, w)
                 : SL_BR_OVERLOADED;
        free(txt);
    }
    json_decref(req);
    if (rc != SL_OK) {
        result_t r = admin_result(w, (uint32_t)rc, NULL);
        free(w);
        return r;
    }
    return (result_t){0, NULL, NULL};
}

static result_t cluster_channel_call(const char *method, const char *id, size_t len,
                                     json_t *body, bool has_body)
{
    if (strcmp(method, "POST") == 0) {
        sl_chan_config_t cfg;
        const char *why = parse_config(has_body ? body : NULL, &cfg);
        if (why)
            return err(400, "bad-config", why);
        json_t *req = json_pack("{s:s, s:s%, s:I, s:I, s:I, s:i}", "op", "create", "channel-id", id,
                                len, "max-subscribers", (json_int_t)cfg.max_subscribers,
                                "message-retention", (json_int_t)cfg.message_retention,
                                "rpc-timeout-ms", (json_int_t)cfg.rpc_timeout_ms,
                                "telemetry-enabled", cfg.telemetry_enabled ? 1 : 0);
        return cluster_call(A_CREATE, id, len, SL_BRQ_ADMIN, req, NULL, 0);
    }
    if (strcmp(method, "DELETE") == 0)
        return cluster_call(A_DELETE, id, len, SL_BRQ_ADMIN,
                            json_pack("{s:s, s:s%}", "op", "delete", "channel-id", id, len), NULL,
                            0);
    if (strcmp(method, "GET") == 0)
        return cluster_call(A_INFO, id, len, SL_BRQ_ADMIN,
                            json_pack("{s:s, s:s%}", "op", "info", "channel-id", id, len), NULL, 0);
    return not_allowed("GET, POST, DELETE");
}

/* --------------------------------------------------------------- router */

static result_t route(const sl_http_request_t *req, const char *body, size_t blen)
{
    char method[16];
    snprintf(method, sizeof(method), "%.*s", (int)SL_MIN(req->method_len, 15), req->method);
    char *seg[SEG_MAX] = {0};
    size_t sl[SEG_MAX] = {0};
    int n = split(req->path, req->path_len, seg, sl);
    result_t r;
    json_t *json = NULL;
    bool has_body = blen > 0;
    if (has_body) {
        json = json_loadb(body, blen, JSON_DECODE_ANY | JSON_ALLOW_NUL, NULL);
        /* publish takes the raw body; everything else needs valid JSON */
        if (json == NULL && !(n == 3 && strcmp(seg[0], "channels") == 0 &&
                              strcmp(seg[2], "publish") == 0)) {
            r = err(400, "invalid-json", "the body is not valid JSON");
            goto out;
        }
    }
    if (n < 0) {
        r = err(400, "bad-path", "bad percent-encoding in the path");
    } else if (n == 2 && strcmp(seg[0], "channels") == 0) {
        r = channel_call(method, seg[1], sl[1], json, has_body);
    } else if (n == 3 && strcmp(seg[0], "channels") == 0 && strcmp(seg[2], "publish") == 0) {
        r = strcmp(method, "POST") ? not_allowed("POST")
                                   : channel_publish(seg[1], sl[1], body, blen);
    } else if (n == 1 && strcmp(seg[0], "broadcast") == 0) {
        r = strcmp(method, "POST") ? not_allowed("POST") : broadcast(json);
    } else if (n == 1 && strcmp(seg[0], "connections") == 0) {
        if (strcmp(method, "GET") != 0) {
            r = not_allowed("GET, HEAD");
        } else {
            r = connections_page(req);
        }
    } else if (n == 2 && strcmp(seg[0], "connections") == 0) {
        r = connection_call(method, seg[1], sl[1], false, json);
    } else if (n == 3 && strcmp(seg[0], "connections") == 0 && strcmp(seg[2], "send") == 0) {
        r = connection_call(method, seg[1], sl[1], true, json);
    } else if (n == 3 && strcmp(seg[0], "users") == 0 && strcmp(seg[2], "connections") == 0) {
        r = user_call(method, seg[1], sl[1], NULL, 0);
    } else if (n == 4 && strcmp(seg[0], "users") == 0 && strcmp(seg[2], "subscriptions") == 0) {
        r = user_call(method, seg[1], sl[1], seg[3], sl[3]);
    } else if (n == 2 && strcmp(seg[0], "rpc") == 0 && strcmp(seg[1], "cleanup") == 0) {
        if (strcmp(method, "POST") != 0) {
            r = not_allowed("POST");
        } else {
            /* Only requests a second past their deadline: younger ones are
             * their requester timer's to settle (it tells the requester). */
            size_t k = sl_rpc_expire(REG, sl_now_ms() - 1000, sl_conns.id);
            SL_TEL(SL_EV_RPC_CLEANUP_COMPLETED, SL_INFO, SL_TF_I("expired", k),
                   SL_TF_S("by", "admin-api"));
            r = ok(200, json_pack("{s:I}", "expired", (json_int_t)k));
        }
    } else {
        r = err(404, "not-found", "no such admin endpoint");
    }
out:
    json_decref(json);
    for (int i = 0; i < SEG_MAX; i++)
        free(seg[i]);
    return r;
}

int sl_admin_handle(sl_conn_t *c, const sl_http_request_t *req, const char *body, size_t blen,
                    json_t **out, const char **allow)
{
    cur_conn = c;
    result_t r;
    *allow = NULL;
    if (sl_conf->admin_token[0] == '\0')
        r = err(403, "admin-api-disabled", "start the server with --admin-token to enable it");
    else if (!token_ok(req))
        r = err(401, "unauthorized", "Authorization: Bearer <token> is missing or wrong");
    else
        r = route(req, body, blen);
    *out = r.body;
    *allow = r.allow;
    cur_conn = NULL;
    return r.status;
}
