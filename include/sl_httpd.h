/*
 * sl_httpd.h - what a worker answers to an HTTP request: the WebSocket
 * upgrade (with every refusal of PROTOCOL section 1), the JSON endpoints,
 * and JSON errors for everything else.
 */
#ifndef SL_HTTPD_H
#define SL_HTTPD_H

#include "sl_conn.h"
#include "sl_http.h"

/* Answer one complete request (head parsed, body of blen bytes).  Queues
 * the response, or performs the upgrade (c->state becomes SL_CONN_WS).
 * Returns true when the connection may carry another request. */
bool sl_httpd_request(sl_conn_t *c, const sl_http_request_t *req, const char *body,
                      size_t blen);

/* Queue a JSON error response {"error":code,"message":message}. */
void sl_httpd_error(sl_conn_t *c, int status, const char *code, const char *message,
                    bool keep_alive);

/* --redis: the response to the request the connection is waiting on
 * (sl_admin_handle returned 0): send it and go on with the connection's
 * next request. */
void sl_httpd_deferred_reply(sl_conn_t *c, int status, json_t *doc);

#endif
