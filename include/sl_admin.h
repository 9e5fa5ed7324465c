/*
 * sl_admin.h - the HTTP admin API under /api/ (see admin.c).
 */
#ifndef SL_ADMIN_H
#define SL_ADMIN_H

#include "sl_http.h"

#include <jansson.h>

/* Does the request carry the admin token (Authorization: Bearer, compared
 * in constant time)?  false when the admin API is disabled. */
bool sl_admin_bearer_ok(const sl_http_request_t *req);

/* Handle one /api/ request; returns the HTTP status and sets *out to the
 * JSON body (new reference) and *allow to the Allow header value for 405. */
int sl_admin_handle(const sl_http_request_t *req, const char *body, size_t blen, json_t **out,
                    const char **allow);

#endif
