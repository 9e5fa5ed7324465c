/*
 * sl_proto.h - the JSON protocol spoken on "/" (PROTOCOL sections 2-3):
 * the welcome, one handler per message type, and the error replies.
 */
#ifndef SL_PROTO_H
#define SL_PROTO_H

#include "sl_conn.h"
#include "sl_jw.h"

#include <jansson.h>

/* Before the 101 goes out: give the connection its conn-id and register
 * it in the shared registry.  SL_ERROR when shared memory is exhausted
 * (the upgrade is then refused). */
int sl_proto_admit(sl_conn_t *c);

/* Write "conn-<ms>-<n>" into a connection's conn_id (cut to 39 bytes, as
 * snprintf would; a real id has 13 digits of ms and fits). */
void sl_proto_conn_id(char out[40], int64_t ms, uint64_t n);

/* The connection has just been upgraded: send the welcome.  `peer` is the
 * client's address (for telemetry). */
void sl_proto_opened(sl_conn_t *c, const char *peer);

/* One complete text message (valid UTF-8, not NUL-terminated). */
void sl_proto_message(sl_conn_t *c, char *data, size_t len);

/* The connection is going away (called from sl_conn_destroy). */
void sl_proto_closed(sl_conn_t *c);

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
