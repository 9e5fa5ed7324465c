/*
 * sl_call.h - RPC on a worker (see call.c): the rpc-request and
 * rpc-response handlers, settling requests, and cleanup when a requester
 * closes.
 */
#ifndef SL_CALL_H
#define SL_CALL_H

#include "sl_conn.h"

#include <jansson.h>

typedef struct sl_call sl_call_t;

void sl_call_request(sl_conn_t *c, json_t *msg);
void sl_call_response(sl_conn_t *c, json_t *msg);

/* A response for local request number `no` arrived: true when it settles
 * the request (deliver it), false when the request was already settled
 * (its rpc-timeout was sent, or its requester left): drop it. */
bool sl_call_answered(uint64_t no);

/* --redis: an rpc-request (its JSON text) of channel `chan` was delivered
 * to subscribers here: remember which channel it belongs to, so a
 * response is checked against the channel's permissions. */
void sl_call_remote_seen(const char *json, size_t len, const char *chan, size_t chan_len);

/* The requester is closing: cancel its pending requests. */
void sl_call_closed(sl_conn_t *c);

#endif
