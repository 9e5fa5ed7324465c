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
 * a text frame (and releases the writer whatever happens). */
void sl_proto_begin(sl_jw_t *w);
void sl_proto_send(sl_conn_t *c, sl_jw_t *w);

/* invalid-message naming the field: "<type>: field '<field>' <what>". */
void sl_proto_bad_field(sl_conn_t *c, const char *type, const char *field, const char *what);

#endif
