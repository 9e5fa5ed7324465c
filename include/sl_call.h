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

/* The requester is closing: cancel its pending requests. */
void sl_call_closed(sl_conn_t *c);

#endif
