/*
 * sl_access.h - the HTTP access log (--access-log) and the peer address of
 * a request (the socket's peer, or X-Forwarded-For when that peer is a
 * --trusted-proxy).
 *
 * One line per answered request, in the common "combined" layout plus the
 * duration:
 *   PEER - - [30/Nov/2026:05:10:00 +0000] "GET /health HTTP/1.1" 200 312 "-" "curl/7.88.1" 0.000213
 * Lines are collected per worker during a loop turn and written with one
 * write() at its end (O_APPEND: lines of different workers never mix).  The
 * file is reopened when it was moved away (log rotation), checked at most
 * once a second.  Nothing is kept per connection.
 */
#ifndef SL_ACCESS_H
#define SL_ACCESS_H

#include "sl_conn.h"
#include "sl_http.h"

#define SL_PEER_MAX 64 /* "address" or "[v6 address]", NUL included */

/* The client's address for this request: X-Forwarded-For's rightmost
 * address that is not a trusted proxy, when the socket's peer is one;
 * otherwise the socket's peer.  "-" when unknown. */
void sl_access_peer(const sl_conn_t *c, const sl_http_request_t *req, char *out, size_t n);

/* Around one request in httpd: begin (req), the response bytes as they
 * are queued (status taken from the first), end (writes the line into the
 * turn's batch).  No-ops without --access-log. */
void sl_access_begin(const sl_conn_t *c, const sl_http_request_t *req);
void sl_access_response(const char *resp, size_t len);
void sl_access_end(void);

/* Write the lines of this turn (the worker calls it at turn end). */
void sl_access_log_flush(void);

#endif
