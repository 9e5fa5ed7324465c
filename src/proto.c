/*
 * proto.c - replies of the JSON protocol (PROTOCOL sections 2-3): the one
 * way a handler answers (sl_proto_reply, bounded by sl_conn_reply_max), the
 * error reply and the invalid-field one.  Below the message handlers
 * (pubsub.c, call.c, session.c) and above the connection; the dispatch of
 * a message to its handler is router.c.
 */
#include "sl_proto.h"

#include <stdio.h>
#include <string.h>

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
    sl_conns_count_error(SL_ERR_REPLY_TOO_LARGE);
    sl_proto_error(c, "reply-too-large", m);
}

void sl_proto_begin(sl_jw_t *w)
{
    sl_jw_init(w, sl_conns.ebuf, SL_SCRATCH_SIZE);
}

void sl_proto_send(sl_conn_t *c, sl_jw_t *w)
{
    sl_buf_t *b = sl_jw_frame(w);
    if (b == NULL) {
        sl_conn_abort(c, "encode-failed");
        return;
    }
    sl_conn_send(c, b);
    sl_buf_unref(b);
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
    sl_conns_count_error(SL_ERR_INVALID_MESSAGE);
    sl_proto_error(c, "invalid-message", m);
}

