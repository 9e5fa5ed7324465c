/*
 * router.c - the JSON protocol on a WebSocket connection: its start (conn-id,
 * registry entry, welcome), each message handed to its handler, its end.
 * The top of the protocol side: the worker installs sl_router_message and
 * sl_router_closed as the connection's handlers, httpd calls admit and
 * opened on an upgrade; the handlers (pubsub.c, call.c, session.c) answer
 * through proto.c and never call back up here.
 *
 * Every text message is one JSON object with a string "type".  Replies to a
 * connection's own requests are queued in the order the requests arrived
 * (they are handled one at a time, synchronously, in arrival order).  Bad
 * input gets an error reply and never closes the connection.
 */
#include "sl_router.h"
#include "sl_call.h"
#include "sl_conf.h"
#include "sl_proto.h"
#include "sl_pubsub.h"
#include "sl_session.h"
#include "sl_tel.h"

#include <stdio.h>
#include <string.h>
#include <urcu/uatomic.h>

static uint64_t total_connections(void)
{
    uint64_t n = 0;
    for (uint32_t i = 0; i < sl_shm->nworkers; i++)
        n += uatomic_read(&sl_shm->workers[i].connections);
    return n;
}

/* "conn-<ms>-<n>", as snprintf would write it (a tenth of the cost). */
static void put_u64(char **o, uint64_t v)
{
    char t[20], *e = t + sizeof(t), *b = e;
    do {
        *--b = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    memcpy(*o, b, (size_t)(e - b));
    *o += e - b;
}

/* "conn-<ms>-<n><suffix>" into out (cut to 39 bytes, as snprintf would; a
 * real id has 13 digits of ms and fits, with --redis's ".<node>" suffix
 * too). */
static void conn_id(char out[40], int64_t ms, uint64_t n, const char *suffix)
{
    char t[64], *o = t;
    memcpy(o, "conn-", 5);
    o += 5;
    if (ms < 0) {
        *o++ = '-';
        ms = -ms;
    }
    put_u64(&o, (uint64_t)ms);
    *o++ = '-';
    put_u64(&o, n);
    size_t sl = strlen(suffix); /* --redis: ".<node>" (at most 9 bytes), else "" */
    memcpy(o, suffix, SL_MIN(sl, (size_t)(t + sizeof(t) - o)));
    o += SL_MIN(sl, (size_t)(t + sizeof(t) - o));
    size_t len = SL_MIN((size_t)(o - t), (size_t)39); /* cut as snprintf would */
    memcpy(out, t, len);
    out[len] = '\0';
}

int sl_router_admit(sl_conn_t *c)
{
    /* conn-id: wall-clock ms at open plus a server-wide sequence from
     * shared memory, so ids are unique across workers and never reused
     * (the sequence lives as long as the master). */
    int64_t opened_at = sl_now_ms(); /* kept in the registry entry only */
    uint64_t n = uatomic_add_return(&sl_shm->next_conn, 1);
    c->conn_no = n;
    conn_id(c->conn_id, opened_at, n, sl_shm->reg.id_suffix);
    c->reg = sl_reg_conn_add(&sl_shm->reg, c->conn_id, sl_conns.id, c->slot, c->conn_no,
                             opened_at);
    if (c->reg == NULL)
        return SL_ERROR;
    if (sl_session_admitted(c) != SL_OK) {
        sl_reg_conn_remove(&sl_shm->reg, c->reg);
        c->reg = NULL;
        return SL_ERROR;
    }
    return SL_OK;
}

void sl_router_opened(sl_conn_t *c, const char *peer)
{
    sl_jw_t w;
    sl_proto_begin(&w);
    sl_jw_lit(&w, "{\"type\":\"welcome\",\"conn-id\":");
    sl_jw_str(&w, c->conn_id, strlen(c->conn_id));
    sl_jw_lit(&w, ",\"server-time\":");
    sl_jw_int(&w, c->reg->opened_at); /* admitted: the entry is ours */
    sl_jw_lit(&w, ",\"worker\":");
    sl_jw_int(&w, sl_conns.id);
    if (c->sess)
        sl_session_welcome(c, &w);
    sl_jw_lit(&w, "}");
    sl_proto_send(c, &w);
    SL_TEL(SL_EV_WEBSOCKET_OPENED, SL_DEBUG, SL_TF_S("conn-id", c->conn_id),
           SL_TF_S("peer", peer));
    SL_TEL(SL_EV_CONNECTION_ADDED, SL_INFO, SL_TF_S("conn-id", c->conn_id),
           SL_TF_S("peer", peer), SL_TF_I("total-connections", total_connections()));
}

void sl_router_closed(sl_conn_t *c)
{
    sl_pubsub_closed(c); /* a closing connection leaves no subscription */
    sl_call_closed(c);   /* ...and no pending RPC request */
    sl_session_end(c);   /* ...and no place in the per-IP / per-user counts */
    sl_proto_closed(c);  /* ...and no queued reply (--redis) */
    /* Its open time and message count live in its registry entry (ours:
     * read before we hand it back). */
    int64_t opened_at = c->reg ? c->reg->opened_at : sl_now_ms();
    uint64_t messages = c->reg ? c->reg->message_count : 0;
    if (c->reg) {
        sl_reg_conn_remove(&sl_shm->reg, c->reg);
        c->reg = NULL;
    }
    SL_TEL(SL_EV_WEBSOCKET_CLOSED, SL_DEBUG, SL_TF_S("conn-id", c->conn_id),
           SL_TF_I("code", c->close_code ? c->close_code : SL_WS_CLOSE_ABNORMAL),
           SL_TF_S("reason", c->close_reason ? c->close_reason : "connection lost"));
    SL_TEL(SL_EV_CONNECTION_REMOVED, SL_INFO, SL_TF_S("conn-id", c->conn_id),
           SL_TF_I("duration-ms", sl_now_ms() - opened_at),
           SL_TF_I("message-count", messages),
           SL_TF_I("total-connections", total_connections()));
}

static void handle_ping(sl_conn_t *c, json_t *msg)
{
    json_t *ts = json_object_get(msg, "timestamp");
    if (ts != NULL && !json_is_number(ts) && !json_is_null(ts)) {
        sl_proto_bad_field(c, "ping", "timestamp", "must be a number");
        return;
    }
    sl_jw_t w;
    sl_proto_begin(&w);
    sl_jw_lit(&w, "{\"type\":\"pong\",\"timestamp\":");
    sl_jw_int(&w, sl_now_ms());
    sl_jw_lit(&w, ",\"original-timestamp\":");
    if (ts == NULL || json_is_null(ts))
        sl_jw_lit(&w, "null");
    else if (json_is_integer(ts))
        sl_jw_int(&w, json_integer_value(ts));
    else {
        /* A real: jansson's own formatting, so it reads back the same. */
        char num[64];
        size_t n = json_dumpb(ts, num, sizeof(num), JSON_ENCODE_ANY | JSON_COMPACT);
        if (n == 0 || n > sizeof(num)) {
            sl_jw_drop(&w);
            sl_conn_abort(c, "encode-failed");
            return;
        }
        sl_jw_raw(&w, num, n);
    }
    sl_jw_lit(&w, "}");
    sl_proto_send(c, &w);
}

static void handle_echo(sl_conn_t *c, json_t *msg)
{
    sl_proto_reply(c, json_pack("{s:s, s:O, s:s, s:I}", "type", "echo", "original", msg,
                                "conn-id", c->conn_id, "timestamp", (json_int_t)sl_now_ms()));
}

/* A refresh may narrow what the token allows: the subscriptions it no
 * longer allows are dropped (each with an "unsubscribed" notice). */
static void handle_authenticate(sl_conn_t *c, json_t *msg)
{
    if (sl_session_authenticate(c, msg))
        sl_pubsub_recheck(c);
}

typedef struct {
    const char *type;
    void (*handle)(sl_conn_t *c, json_t *msg);
} sl_handler_t;

static const sl_handler_t handlers[] = {
    {"ping", handle_ping},
    {"subscribe", sl_pubsub_subscribe},
    {"unsubscribe", sl_pubsub_unsubscribe},
    {"publish", sl_pubsub_publish},
    {"list-channels", sl_pubsub_list_channels},
    {"get-subscriptions", sl_pubsub_get_subscriptions},
    {"presence", sl_pubsub_presence},
    {"presence-stats", sl_pubsub_presence_stats},
    {"history", sl_pubsub_history},
    {"rpc-request", sl_call_request},
    {"rpc-response", sl_call_response},
    {"authenticate", handle_authenticate},
};

void sl_router_message(sl_conn_t *c, char *data, size_t len)
{
    uatomic_add(&sl_conns.stats->messages_in, 1);
    /* The registry entry is ours: plain atomic stores, read by others (its
     * message count is the only one: only we write it, so our plain read
     * of it is exact). */
    uatomic_set(&c->reg->last_activity, (uint64_t)sl_now_ms());
    uatomic_set(&c->reg->message_count, c->reg->message_count + 1);
    SL_TEL(SL_EV_WEBSOCKET_MESSAGE_RECEIVED, SL_TRACE, SL_TF_S("conn-id", c->conn_id),
           SL_TF_I("bytes", len));
    /* Over --max-messages-per-second: refused before it is even parsed. */
    if (c->sess && !sl_session_admit_message(c))
        return;

    json_error_t jerr;
    json_t *msg = json_loadb(data, len, JSON_DECODE_ANY | JSON_ALLOW_NUL, &jerr);
    if (msg == NULL) {
        sl_conns_count_error(SL_ERR_INVALID_JSON);
        char m[200];
        snprintf(m, sizeof(m), "message is not valid JSON: %s (at byte %d)", jerr.text,
                 jerr.position);
        sl_proto_error(c, "invalid-json", m);
        return;
    }
    json_t *type = json_object_get(msg, "type");
    if (!json_is_object(msg) || !json_is_string(type)) {
        sl_conns_count_error(SL_ERR_INVALID_MESSAGE);
        sl_proto_error(c, "invalid-message",
                       json_is_object(msg) ? "field 'type' must be a string"
                                           : "a message must be a JSON object");
        json_decref(msg);
        return;
    }
    const char *t = json_string_value(type);
    size_t tlen = json_string_length(type); /* may contain NUL: compare lengths */
    void (*fn)(sl_conn_t *, json_t *) = handle_echo;
    for (size_t i = 0; i < SL_ARRAY_LEN(handlers); i++)
        if (strlen(handlers[i].type) == tlen && memcmp(handlers[i].type, t, tlen) == 0)
            fn = handlers[i].handle;
    SL_TEL(SL_EV_MESSAGE_ROUTING, SL_TRACE, SL_TF_S("conn-id", c->conn_id), SL_TF_S("type", t));
    if (fn == sl_pubsub_publish && c->sess && !sl_session_admit_publish(c)) {
        json_decref(msg);
        return;
    }
    fn(c, msg);
    SL_TEL(SL_EV_MESSAGE_PROCESSED, SL_TRACE, SL_TF_S("conn-id", c->conn_id), SL_TF_S("type", t));
    json_decref(msg);
}
