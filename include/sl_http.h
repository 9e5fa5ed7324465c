/*
 * sl_http.h - a strict, bounded HTTP/1.1 request parser and the one
 * response builder.  No sockets here: the parser works on a buffer the
 * connection owns and returns pointers into it.
 */
#ifndef SL_HTTP_H
#define SL_HTTP_H

#include "sl_common.h"

#define SL_HTTP_MAX_HEADERS 64

typedef struct {
    const char *name; /* not NUL-terminated */
    size_t name_len;
    const char *value; /* leading/trailing OWS removed; not NUL-terminated */
    size_t value_len;
} sl_http_header_t;

typedef struct {
    const char *method;
    size_t method_len;
    const char *target; /* request-target as sent (origin-form "/path?q") */
    size_t target_len;
    const char *path; /* target without the query string */
    size_t path_len;
    int version_minor; /* HTTP/1.<minor>: 0 or 1 */
    sl_http_header_t headers[SL_HTTP_MAX_HEADERS];
    size_t nheaders;
    size_t head_len;        /* bytes of request line + headers + empty line */
    int64_t content_length; /* -1 when absent */
    bool keep_alive;        /* after Connection/version rules */
} sl_http_request_t;

/* Parse one request head from buf[0..len).
 * Returns SL_OK when a whole head was parsed (req->head_len bytes; the body,
 * if any, follows), SL_AGAIN when more bytes are needed (and fewer than
 * max_head have arrived), or an HTTP status for a bad request:
 *   400 malformed (bad request line, bad header syntax, obs-fold, a bare
 *       LF instead of CRLF, bad Content-Length, two Content-Length
 *       headers that differ, missing Host on HTTP/1.1, ...),
 *   431 head larger than max_head bytes or more than SL_HTTP_MAX_HEADERS,
 *   414 request-target longer than max_head / 2,
 *   501 Transfer-Encoding present (bodies only with Content-Length),
 *   505 version other than HTTP/1.0 or HTTP/1.1. */
int sl_http_parse_request(const char *buf, size_t len, size_t max_head, sl_http_request_t *req);

/* Case-insensitive header lookup; NULL when absent (the first one wins). */
const sl_http_header_t *sl_http_header(const sl_http_request_t *req, const char *name);

/* Does a comma-separated header value contain `token` (case-insensitive,
 * surrounding whitespace ignored)?  For Connection: keep-alive, Upgrade. */
bool sl_http_has_token(const char *value, size_t len, const char *token);

/* Is the method exactly `m`? */
bool sl_http_method_is(const sl_http_request_t *req, const char *m);

/* The decimal value of query parameter `name` (def when absent, -1 when
 * it is not a number up to 2^32 - 1). */
long long sl_http_query_uint(const sl_http_request_t *req, const char *name, long long def);

/* Percent-decode in[0..len) into out (cap bytes): the decoded length, or
 * -1 for a bad escape, an escaped NUL (%00) or too little room. */
int sl_http_unescape(const char *in, size_t len, char *out, size_t cap);

/* Reason phrase for a status code ("OK", "Not Found", ...). */
const char *sl_http_reason(int status);

/* Build a complete response into a malloc'd buffer (*out, *outlen; caller
 * frees): status line, Content-Type (if non-NULL), Content-Length,
 * Connection: keep-alive|close, Cache-Control: no-store (left out when
 * extra_headers has its own Cache-Control), any extra header lines (each
 * ending in "\r\n", may be NULL), then the body.
 * Returns SL_OK or SL_ERROR (out of memory). */
int sl_http_response(int status, const char *content_type, const char *extra_headers,
                     const char *body, size_t body_len, bool keep_alive, char **out,
                     size_t *outlen);

/* A JSON error response: body {"error":"<code>","message":"<message>"}
 * (both escaped as JSON strings).  Same ownership as sl_http_response. */
int sl_http_error_response(int status, const char *code, const char *message, bool keep_alive,
                           const char *extra_headers, char **out, size_t *outlen);

#endif
