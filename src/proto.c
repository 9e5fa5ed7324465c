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
#include "sl_conf.h"
#include "sl_session.h"
#include "sl_tel.h"
#include "sl_worker.h"

#include <inttypes.h>
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

int sl_proto_admit(sl_conn_t *c)
{
    /* conn-id: wall-clock ms at open plus a server-wide sequence from
     * shared memory, so ids are unique across workers and never reused
     * (the sequence lives as long as the master). */
    c->opened_at = sl_now_ms();
    uint64_t n = uatomic_add_return(&sl_shm->next_conn, 1);
    c->conn_no = n;
    snprintf(c->conn_id, sizeof(c->conn_id), "conn-%" PRId64 "-%" PRIu64, c->opened_at, n);
    c->reg = sl_reg_conn_add(&sl_shm->reg, c->conn_id, sl_worker->id, c->slot, c->conn_no,
                             c->opened_at);
    if (c->reg == NULL)
        return SL_ERROR;
    sl_session_admitted(c);
    return SL_OK;
}

void sl_proto_opened(sl_conn_t *c, const char *peer)
{
    json_t *w = json_pack("{s:s, s:s, s:I, s:i}", "type", "welcome", "conn-id", c->conn_id,
                          "server-time", (json_int_t)c->opened_at, "worker", sl_worker->id);
    if (w && c->sess)
        sl_session_welcome(c, w);
    sl_proto_reply(c, w);
    SL_TEL(SL_EV_WEBSOCKET_OPENED, SL_DEBUG, SL_TF_S("conn-id", c->conn_id),
           SL_TF_S("peer", peer));
    SL_TEL(SL_EV_CONNECTION_ADDED, SL_INFO, SL_TF_S("conn-id", c->conn_id),
           SL_TF_S("peer", peer), SL_TF_I("total-connections", total_connections()));
}

void sl_proto_closed(sl_conn_t *c)
{
    sl_pubsub_closed(c); /* a closing connection leaves no subscription */
    sl_call_closed(c);   /* ...and no pending RPC request */
    sl_session_end(c);   /* ...and no place in the per-IP / per-user counts */
    if (c->reg) {
        sl_reg_conn_remove(&sl_shm->reg, c->reg);
        c->reg = NULL;
    }
    SL_TEL(SL_EV_WEBSOCKET_CLOSED, SL_DEBUG, SL_TF_S("conn-id", c->conn_id),
           SL_TF_I("code", c->close_code ? c->close_code : SL_WS_CLOSE_ABNORMAL),
           SL_TF_S("reason", c->close_reason ? c->close_reason : "connection lost"));
    SL_TEL(SL_EV_CONNECTION_REMOVED, SL_INFO, SL_TF_S("conn-id", c->conn_id),
           SL_TF_I("duration-ms", sl_now_ms() - c->opened_at),
           SL_TF_I("message-count", c->message_count),
           SL_TF_I("total-connections", total_connections()));
}

void sl_proto_reply(sl_conn_t *c, json_t *r)
{
    if (r == NULL)
        return;
    sl_buf_t *b = sl_frame_json(r);
    if (b == NULL) {
        json_decref(r);
        sl_conn_abort(c, "encode-failed");
        return;
    }
    size_t len = b->len - b->start, max = sl_conn_reply_max();
    if (len <= max) {
        sl_conn_send(c, b);
        sl_buf_unref(b);
        json_decref(r);
        return;
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
    sl_proto_error(c, "reply-too-large", m);
}

void sl_proto_error(sl_conn_t *c, const char *reason, const char *message)
{
    /* The message may quote input (jansson's error text shows the bytes it
     * choked on, and may end inside a UTF-8 character): json_pack refuses
     * invalid UTF-8, and the protocol promises a reply for any bad input,
     * so the text is made valid first. */
    char m[400];
    sl_utf8_sanitize((const uint8_t *)message, strlen(message), m, sizeof(m));
    sl_proto_reply(c, json_pack("{s:s, s:s, s:s, s:I}", "type", "error", "message", m, "reason",
                                reason, "timestamp", (json_int_t)sl_now_ms()));
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
    sl_proto_reply(c, json_pack("{s:s, s:I, s:O}", "type", "pong", "timestamp",
                                (json_int_t)sl_now_ms(), "original-timestamp",
                                ts ? ts : json_null()));
}

static void handle_echo(sl_conn_t *c, json_t *msg)
{
    sl_proto_reply(c, json_pack("{s:s, s:O, s:s, s:I}", "type", "echo", "original", msg,
                                "conn-id", c->conn_id, "timestamp", (json_int_t)sl_now_ms()));
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
    {"rpc-request", sl_call_request},
    {"rpc-response", sl_call_response},
    {"authenticate", sl_session_authenticate},
};

void sl_proto_message(sl_conn_t *c, char *data, size_t len)
{
    c->message_count++;
    uatomic_add(&sl_worker->stats->messages_in, 1);
    /* The registry entry is ours: plain atomic stores, read by others. */
    uatomic_set(&c->reg->last_activity, (uint64_t)sl_now_ms());
    uatomic_set(&c->reg->message_count, c->message_count);
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
