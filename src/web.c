/*
 * web.c - answering requests for the files of web/ compiled into the
 * binary (see sl_web.h; the table itself is generated at build time).
 *
 * Only lookups and response building live here; routing stays in httpd.c.
 * The pages (/, /demo, /dashboard) obey --no-web-ui; /client.js and
 * /favicon.ico are always served, because the library is for the operator's
 * own pages, not a UI.
 *
 * CORS: the non-page assets (/client.js above all: a page on another origin
 * imports it as a module, which is a CORS request) carry
 * Access-Control-Allow-Origin: the request's Origin when it is one of
 * --allowed-origin (with Vary: Origin), "*" when no --allowed-origin is set,
 * and nothing (the browser refuses) for any other Origin.
 */
#include "sl_web.h"
#include "sl_conf.h"

#include <stdio.h>
#include <string.h>
#include <strings.h>

const sl_web_asset_t *sl_web_find(const char *path, size_t len)
{
    for (size_t i = 0; i < sl_web_nassets; i++) {
        const sl_web_asset_t *a = &sl_web_assets[i];
        if (strlen(a->path) == len && memcmp(a->path, path, len) == 0)
            return a->page && !sl_conf->web_ui ? NULL : a;
    }
    return NULL;
}

static bool is_ows(char ch)
{
    return ch == ' ' || ch == '\t';
}

bool sl_web_etag_matches(const sl_web_asset_t *a, const char *value, size_t len)
{
    size_t elen = strlen(a->etag), i = 0;
    while (i < len) {
        while (i < len && (is_ows(value[i]) || value[i] == ','))
            i++;
        size_t start = i;
        while (i < len && value[i] != ',')
            i++;
        size_t end = i;
        while (end > start && is_ows(value[end - 1]))
            end--;
        if (end - start == 1 && value[start] == '*')
            return true;
        if (end - start >= 2 && value[start] == 'W' && value[start + 1] == '/')
            start += 2; /* weak comparison: W/"x" matches "x" */
        if (end - start == elen && memcmp(value + start, a->etag, elen) == 0)
            return true;
    }
    return false;
}

int sl_web_response(const sl_web_asset_t *a, const sl_http_request_t *req, bool keep_alive,
                    char **out, size_t *outlen)
{
    const sl_http_header_t *inm = sl_http_header(req, "If-None-Match");
    bool fresh = inm != NULL && sl_web_etag_matches(a, inm->value, inm->value_len);
    char cors[320] = "";
    if (!a->page) {
        const sl_http_header_t *o = sl_http_header(req, "Origin");
        if (sl_conf->norigins == 0) {
            snprintf(cors, sizeof(cors), "Access-Control-Allow-Origin: *\r\n");
        } else {
            for (int i = 0; o && i < sl_conf->norigins; i++)
                if (strlen(sl_conf->allowed_origins[i]) == o->value_len &&
                    strncasecmp(sl_conf->allowed_origins[i], o->value, o->value_len) == 0 &&
                    o->value_len < 256)
                    snprintf(cors, sizeof(cors), "Access-Control-Allow-Origin: %.*s\r\n",
                             (int)o->value_len, o->value);
            /* The answer depends on Origin: caches must keep them apart. */
            snprintf(cors + strlen(cors), sizeof(cors) - strlen(cors), "Vary: Origin\r\n");
        }
    }
    char extra[480];
    int n = snprintf(extra, sizeof(extra),
                     "Cache-Control: no-cache\r\nETag: %s\r\nX-Content-Type-Options: nosniff\r\n%s",
                     a->etag, cors);
    if (n < 0 || (size_t)n >= sizeof(extra))
        return SL_ERROR;
    if (sl_http_response(fresh ? 304 : 200, a->content_type, extra, (const char *)a->data, a->len,
                         keep_alive, out, outlen) != SL_OK)
        return SL_ERROR;
    /* A 304 carries the Content-Length the 200 would have (RFC 9110 8.6)
     * but no body: the builder wrote the body last, so cut it off. */
    if (fresh)
        *outlen -= a->len;
    return SL_OK;
}
