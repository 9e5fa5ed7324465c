/*
 * sl_admin.h - the HTTP admin API under /api/ (see admin.c).
 */
#ifndef SL_ADMIN_H
#define SL_ADMIN_H

#include "sl_conn.h"
#include "sl_http.h"

#include <jansson.h>

/* Does the request carry the admin token (Authorization: Bearer, compared
 * in constant time)?  false when the admin API is disabled. */
bool sl_admin_bearer_ok(const sl_http_request_t *req);

/* Handle one /api/ request on connection c; returns the HTTP status and
 * sets *out to the JSON body (new reference) and *allow to the Allow
 * header value for 405.  Status 0: the answer comes later, through
 * sl_admin_deferred_reply (--redis: the call waits for the broker). */
int sl_admin_handle(sl_conn_t *c, const sl_http_request_t *req, const char *body, size_t blen,
                    json_t **out, const char **allow);

/* Where a deferred answer goes (status, body taken): installed by the
 * worker (sl_httpd_deferred_reply, the layer above); NULL drops it. */
extern void (*sl_admin_deferred_reply)(sl_conn_t *c, int status, json_t *doc);

#endif
