/*
 * sl_proto.h - the JSON protocol spoken on "/" (PROTOCOL sections 2-3):
 * the welcome, one handler per message type, and the error replies.
 */
#ifndef SL_PROTO_H
#define SL_PROTO_H

#include "sl_conn.h"

/* A protocol connection has just been upgraded: give it its conn-id and
 * send the welcome. */
void sl_proto_opened(sl_conn_t *c);

/* One complete text message (valid UTF-8, not NUL-terminated). */
void sl_proto_message(sl_conn_t *c, char *data, size_t len);

/* The connection is going away (called from sl_conn_destroy). */
void sl_proto_closed(sl_conn_t *c);

/* An error reply {"type":"error","reason":..,"message":..,"timestamp":..}. */
void sl_proto_error(sl_conn_t *c, const char *reason, const char *message);

#endif
