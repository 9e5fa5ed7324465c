/*
 * sl_router.h - the JSON protocol on "/": a connection's start, each of its
 * messages dispatched to the handler of its type, its end (router.c).
 */
#ifndef SL_ROUTER_H
#define SL_ROUTER_H

#include "sl_conn.h"

/* Before the 101 goes out: give the connection its conn-id and register
 * it in the shared registry.  SL_ERROR when shared memory is exhausted
 * (the upgrade is then refused). */
int sl_router_admit(sl_conn_t *c);

/* The connection has just been upgraded: send the welcome.  `peer` is the
 * client's address (for telemetry). */
void sl_router_opened(sl_conn_t *c, const char *peer);

/* One complete text message (valid UTF-8, not NUL-terminated). */
void sl_router_message(sl_conn_t *c, char *data, size_t len);

/* The connection is being freed (sl_conn_destroy raises it: the
 * worker installs this as sl_conns.on->closed). */
void sl_router_closed(sl_conn_t *c);

#endif
