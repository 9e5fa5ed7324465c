/*
 * proto.c - the JSON protocol on a WebSocket connection.
 *
 * Every text message is one JSON object with a string "type".  Replies to a
 * connection's own requests are queued in the order the requests arrived
 * (they are handled one at a time, synchronously, in arrival order).  Bad
 * input gets an error reply and never closes the connection.
 */
#include "sl_proto.h"
#include "sl_pubsub.h"
#include "sl_call.h"
#include "sl_cluster.h"
#include "sl_conf.h"
#include "sl_session.h"
#include "sl_tel.h"
#include "sl_worker.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
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

void sl_proto_conn_id(char out[40], int64_t ms, uint64_t n, const char *suffix)
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

int sl_proto_admit(sl_conn_t *c)
{
    /* conn-id: wall-clock ms at open plus a server-wide sequence from
     * shared memory, so ids are unique across workers and never reused
     * (the sequence lives as long as the master). */
    int64_t opened_at = sl_now_ms(); /* kept in the registry entry only */
    uint64_t n = uatomic_add_return(&sl_shm->next_conn, 1);
    c->conn_no = n;
    sl_proto_conn_id(c->conn_id, opened_at, n, sl_shm->reg.id_suffix);
    c->reg = sl_reg_conn_add(&sl_shm->reg, c->conn_id, sl_worker->id, c->slot, c->conn_no,
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

void sl_proto_opened(sl_conn_t *c, const char *peer)
{
    sl_jw_t w;
    sl_proto_begin(&w);
    sl_jw_lit(&w, "{\"type\":\"welcome\",\"conn-id\":");
    sl_jw_str(&w, c->conn_id, strlen(c->conn_id));
    sl_jw_lit(&w, ",\"server-time\":");
    sl_jw_int(&w, c->reg->opened_at); /* admitted: the entry is ours */
    sl_jw_lit(&w, ",\"worker\":");
    sl_jw_int(&w, sl_worker->id);
    if (c->sess)
        sl_session_welcome(c, &w);
    sl_jw_lit(&w, "}");
    sl_proto_send(c, &w);
    SL_TEL(SL_EV_WEBSOCKET_OPENED, SL_DEBUG, SL_TF_S("conn-id", c->conn_id),
           SL_TF_S("peer", peer));
    SL_TEL(SL_EV_CONNECTION_ADDED, SL_INFO, SL_TF_S("conn-id", c->conn_id),
           SL_TF_S("peer", peer), SL_TF_I("total-connections", total_connections()));
}

static void rq_free(sl_conn_t *c);

void sl_proto_closed(sl_conn_t *c)
{
    sl_pubsub_closed(c); /* a closing connection leaves no subscription */
    sl_call_closed(c);   /* ...and no pending RPC request */
    sl_session_end(c);   /* ...and no place in the per-IP / per-user counts */
    rq_free(c);
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

/* --------------------------------------------------- deferred replies */

struct sl_reply {
    struct sl_reply *next;
    sl_buf_t *frame; /* NULL: nothing to send */
    uint64_t chan_hash; /* a reply about this channel (0: none) */
    bool ready;
};

static void rq_flush(sl_conn_t *c)
{
    while (c->rq_head && c->rq_head->ready) {
        sl_reply_t *r = c->rq_head;
        c->rq_head = r->next;
        if (c->rq_head == NULL)
            c->rq_tail = NULL;
        c->nrq--;
        if (r->frame) {
            sl_conn_send(c, r->frame);
            sl_buf_unref(r->frame);
        }
        free(r);
    }
}

static sl_reply_t *rq_append(sl_conn_t *c, sl_buf_t *frame, bool ready)
{
    sl_reply_t *r = calloc(1, sizeof(*r));
    if (r == NULL)
        return NULL;
    r->frame = frame;
    r->ready = ready;
    if (c->rq_tail)
        c->rq_tail->next = r;
    else
        c->rq_head = r;
    c->rq_tail = r;
    c->nrq++;
    return r;
}

sl_reply_t *sl_proto_defer_chan(sl_conn_t *c, uint64_t chan_hash)
{
    if (c->nrq >= SL_PROTO_MAX_DEFERRED)
        return NULL;
    sl_reply_t *r = rq_append(c, NULL, false);
    if (r)
        r->chan_hash = chan_hash;
    return r;
}

sl_reply_t *sl_proto_defer(sl_conn_t *c)
{
    return sl_proto_defer_chan(c, 0);
}

bool sl_proto_waits_on(sl_conn_t *c, uint64_t chan_hash)
{
    for (sl_reply_t *r = c->rq_head; r; r = r->next)
        if (!r->ready && r->chan_hash == chan_hash)
            return true;
    return false;
}

static json_t *error_json(const char *reason, const char *message)
{
    /* The message may quote input (jansson's error text shows the bytes it
     * choked on, and may end inside a UTF-8 character): json_pack refuses
     * invalid UTF-8, and the protocol promises a reply for any bad input,
     * so the text is made valid first. */
    char m[400];
    sl_utf8_sanitize((const uint8_t *)message, strlen(message), m, sizeof(m));
    return json_pack("{s:s, s:s, s:s, s:I}", "type", "error", "message", m, "reason", reason,
                     "timestamp", (json_int_t)sl_now_ms());
}

/* The frame of reply r (taken): r itself, or a reply-too-large error when
 * it is over the bound on one reply; NULL (connection aborted) when it
 * cannot be encoded. */
static sl_buf_t *reply_frame(sl_conn_t *c, json_t *r)
{
    sl_buf_t *b = sl_frame_json(r);
    if (b == NULL) {
        json_decref(r);
        sl_conn_abort(c, "encode-failed");
        return NULL;
    }
    size_t len = b->len - b->start, max = sl_conn_reply_max();
    if (len <= max) {
        json_decref(r);
        return b;
    }
    /* The builders of large replies page or cut them to fit; anything
     * still over the bound is refused rather than queued. */
    sl_buf_unref(b);
    const char *type = json_string_value(json_object_get(r, "type"));
    char m[200];
    snprintf(m, sizeof(m), "the %.40s reply would be %zu bytes, over the %zu-byte bound on one "
                           "reply (half of --max-outbound-bytes)", type ? type : "", len, max);
    json_decref(r);
    sl_worker_count_error(SL_ERR_REPLY_TOO_LARGE);
    json_t *e = error_json("reply-too-large", m);
    return e ? reply_frame(c, e) : NULL;
}

void sl_proto_complete(sl_conn_t *c, sl_reply_t *slot, json_t *r)
{
    if (r)
        slot->frame = reply_frame(c, r);
    slot->ready = true;
    rq_flush(c);
}

void sl_proto_send_ordered(sl_conn_t *c, sl_buf_t *b)
{
    /* Bounded: past it (a reply pending a long time on a busy channel),
     * frames go out at once. */
    if (c->rq_head == NULL || c->nrq >= 4 * SL_PROTO_MAX_DEFERRED) {
        sl_conn_send(c, b);
        return;
    }
    sl_reply_t *r = rq_append(c, sl_buf_ref(b), true);
    if (r == NULL) {
        sl_buf_unref(b);
        sl_conn_send(c, b);
    }
}

static void rq_free(sl_conn_t *c)
{
    while (c->rq_head) {
        sl_reply_t *r = c->rq_head;
        c->rq_head = r->next;
        sl_buf_unref(r->frame);
        free(r);
    }
    c->rq_tail = NULL;
    c->nrq = 0;
}

void sl_proto_reply(sl_conn_t *c, json_t *r)
{
    if (r == NULL)
        return;
    sl_buf_t *f = reply_frame(c, r);
    if (f == NULL)
        return;
    /* Behind a reply that waits for the broker, this one waits too. */
    if (c->rq_head) {
        if (rq_append(c, f, true) == NULL)
            sl_buf_unref(f);
        return;
    }
    sl_conn_send(c, f);
    sl_buf_unref(f);
}

void sl_proto_begin(sl_jw_t *w)
{
    sl_jw_init(w, sl_worker->ebuf, SL_SCRATCH_SIZE);
}

int sl_proto_send(sl_conn_t *c, sl_jw_t *w)
{
    sl_buf_t *b = sl_jw_frame(w);
    if (b == NULL) {
        sl_conn_abort(c, "encode-failed");
        return SL_ERROR;
    }
    /* Behind a reply that waits for the broker, this one waits too. */
    if (c->rq_head) {
        if (rq_append(c, b, true) != NULL)
            return SL_OK;
        sl_buf_unref(b);
        return SL_ERROR;
    }
    int rc = sl_conn_send(c, b);
    sl_buf_unref(b);
    return rc;
}

void sl_proto_error(sl_conn_t *c, const char *reason, const char *message)
{
    sl_proto_reply(c, error_json(reason, message));
}

void sl_proto_bad_field(sl_conn_t *c, const char *type, const char *field, const char *what)
{
    char m[160];
    snprintf(m, sizeof(m), "%s: field '%s' %s", type, field, what);
    sl_worker_count_error(SL_ERR_INVALID_MESSAGE);
    sl_proto_error(c, "invalid-message", m);
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

void sl_proto_message(sl_conn_t *c, char *data, size_t len)
{
    uatomic_add(&sl_worker->stats->messages_in, 1);
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
        sl_worker_count_error(SL_ERR_INVALID_JSON);
        char m[200];
        snprintf(m, sizeof(m), "message is not valid JSON: %s (at byte %d)", jerr.text,
                 jerr.position);
        sl_proto_error(c, "invalid-json", m);
        return;
    }
    json_t *type = json_object_get(msg, "type");
    if (!json_is_object(msg) || !json_is_string(type)) {
        sl_worker_count_error(SL_ERR_INVALID_MESSAGE);
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
