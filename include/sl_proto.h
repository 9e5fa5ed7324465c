/*
 * sl_proto.h - replies of the JSON protocol spoken on "/" (PROTOCOL
 * sections 2-3): what every message handler answers with.  The protocol's
 * life and dispatch are sl_router.h.
 */
#ifndef SL_PROTO_H
#define SL_PROTO_H

#include "sl_conn.h"
#include "sl_jw.h"

#include <jansson.h>

/* An error reply {"type":"error","reason":..,"message":..,"timestamp":..}. */
void sl_proto_error(sl_conn_t *c, const char *reason, const char *message);

/* The one way handlers answer: send `r` (may be NULL) and release it. */
void sl_proto_reply(sl_conn_t *c, json_t *r);

/* Fixed-shape replies, formatted directly (sl_jw.h): begin a writer on the
 * worker's encode buffer, write the object, then sl_proto_send queues it as
 * a text frame (and releases the writer whatever happens); SL_OK when it
 * was queued. */
void sl_proto_begin(sl_jw_t *w);
int sl_proto_send(sl_conn_t *c, sl_jw_t *w);

/* invalid-message naming the field: "<type>: field '<field>' <what>". */
void sl_proto_bad_field(sl_conn_t *c, const char *type, const char *field, const char *what);

/* --redis: a reply that will come later keeps its place among the
 * connection's replies (requests are answered in request order).
 * NULL when the connection already waits for SL_PROTO_MAX_DEFERRED. */
#define SL_PROTO_MAX_DEFERRED 1024
typedef struct sl_reply sl_reply_t;
sl_reply_t *sl_proto_defer(sl_conn_t *c);
/* The same for a reply about channel `chan_hash` (a subscribe, publish or
 * rpc-request on it): frames of that channel that come meanwhile wait
 * behind it (sl_proto_waits_on), so a client sees the order it would on
 * one node. */
sl_reply_t *sl_proto_defer_chan(sl_conn_t *c, uint64_t chan_hash);
bool sl_proto_waits_on(sl_conn_t *c, uint64_t chan_hash);
/* Does a reply of c wait for the broker (later ones queue behind it)? */
bool sl_proto_deferring(const sl_conn_t *c);
/* Fill a deferred reply with r (released; NULL sends nothing) and send
 * every reply that is ready in order. */
void sl_proto_complete(sl_conn_t *c, sl_reply_t *slot, json_t *r);
/* Queue an already encoded frame behind the replies still waiting (or now
 * when none waits): an RPC response after its rpc-request-result. */
void sl_proto_send_ordered(sl_conn_t *c, sl_buf_t *b);
/* The connection is going away (router.c's closed): drop the replies
 * still queued, sent or not. */
void sl_proto_closed(sl_conn_t *c);

#endif
