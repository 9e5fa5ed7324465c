/*
 * sl_web.h - the browser side served by the server itself: the landing
 * page, /demo, /dashboard and the client library /client.js.
 *
 * The files of web/ are compiled into the binary (scripts/embed-web.sh
 * generates $(BUILD)/gen/web_assets.c), so a running server never reads
 * the file system for them and an installed binary needs nothing beside it.
 */
#ifndef SL_WEB_H
#define SL_WEB_H

#include "sl_common.h"
#include "sl_http.h"

/* One embedded file.  Everything points into read-only static data. */
typedef struct {
    const char *path;         /* request path it answers, e.g. "/demo" */
    const char *content_type; /* full Content-Type value */
    const unsigned char *data;
    size_t len;
    const char *etag; /* quoted strong validator: "<crc32>-<length>" */
    bool page;        /* a UI page: off with --no-web-ui (/client.js is not) */
} sl_web_asset_t;

/* The table generated from web/ (web_assets.c). */
extern const sl_web_asset_t sl_web_assets[];
extern const size_t sl_web_nassets;

/* The asset answering path[0..len), or NULL: unknown paths, and the pages
 * when the server runs with --no-web-ui. */
const sl_web_asset_t *sl_web_find(const char *path, size_t len);

/* Does an If-None-Match value (a list of entity tags, or "*") match the
 * asset's ETag?  Weak comparison, as RFC 9110 13.1.2 asks for GET. */
bool sl_web_etag_matches(const sl_web_asset_t *a, const char *value, size_t len);

/* The complete response to a GET for the asset: 200 with the body, or 304
 * (no body) when the request's If-None-Match matches.  Cache-Control:
 * no-cache and the ETag make browsers revalidate every time, so a rebuilt
 * server is picked up at once while an unchanged file costs a 304.
 * Same ownership as sl_http_response (*out is malloc'd; caller frees). */
int sl_web_response(const sl_web_asset_t *a, const sl_http_request_t *req, bool keep_alive,
                    char **out, size_t *outlen);

#endif
