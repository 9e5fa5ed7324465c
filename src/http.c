/*
 * http.c - a strict HTTP/1.1 request-head parser (RFC 9112) and the one
 * response builder.
 *
 * The parser never allocates and never trusts a length it has not
 * bounded: it scans the buffer once, rejects a bad byte as soon as it sees
 * it (so garbage is refused without waiting for the end of a head), and
 * returns SL_AGAIN only while what it has seen is a valid prefix shorter
 * than the head limit.  Pointers in the result point into the caller's
 * buffer.
 */
#include "sl_http.h"
#include "sl_ws.h"

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

/* RFC 9110 tchar. */
static bool is_tchar(unsigned char ch)
{
    if (isalnum(ch))
        return true;
    return ch != '\0' && strchr("!#$%&'*+-.^_`|~", ch) != NULL;
}

/* A byte allowed inside a field value: VCHAR, obs-text, SP, HTAB. */
static bool is_field_byte(unsigned char ch)
{
    return ch == '\t' || (ch >= 0x20 && ch != 0x7F);
}

/* A byte allowed in the request-target (origin-form): printable ASCII
 * without space. */
static bool is_target_byte(unsigned char ch)
{
    return ch > 0x20 && ch < 0x7F;
}

static bool name_is(const sl_http_header_t *h, const char *name)
{
    return h->name_len == strlen(name) && strncasecmp(h->name, name, h->name_len) == 0;
}

static int parse_content_length(const char *v, size_t n, int64_t *out)
{
    if (n == 0 || n > 15)
        return SL_ERROR; /* 15 digits: far beyond any body we accept */
    int64_t x = 0;
    for (size_t i = 0; i < n; i++) {
        if (v[i] < '0' || v[i] > '9')
            return SL_ERROR;
        x = x * 10 + (v[i] - '0');
    }
    *out = x;
    return SL_OK;
}

/* Find the end of the line starting at p: returns the index of '\r' of
 * "\r\n", -1 if the line is not complete yet, -2 for a bare LF or a CR
 * not followed by LF. */
static long line_end(const char *buf, size_t start, size_t len)
{
    for (size_t i = start; i < len; i++) {
        if (buf[i] == '\n')
            return -2;
        if (buf[i] == '\r') {
            if (i + 1 >= len)
                return -1;
            return buf[i + 1] == '\n' ? (long)i : -2;
        }
    }
    return -1;
}

static int parse_request_line(const char *buf, size_t start, size_t len, size_t max_head,
                              sl_http_request_t *req, size_t *next)
{
    size_t i = start;
    /* method */
    while (i < len && buf[i] != ' ') {
        if (!is_tchar((unsigned char)buf[i]))
            return 400;
        i++;
    }
    if (i >= len)
        return SL_AGAIN;
    if (i == start || i - start > 32)
        return 400;
    req->method = buf + start;
    req->method_len = i - start;
    i++;
    /* request-target */
    size_t t = i;
    if (i < len && buf[i] != '/')
        return 400;
    while (i < len && buf[i] != ' ') {
        if (!is_target_byte((unsigned char)buf[i]))
            return 400;
        if (i - t > max_head / 2)
            return 414;
        i++;
    }
    if (i >= len)
        return SL_AGAIN;
    if (i == t)
        return 400;
    req->target = buf + t;
    req->target_len = i - t;
    const char *q = memchr(req->target, '?', req->target_len);
    req->path = req->target;
    req->path_len = q ? (size_t)(q - req->target) : req->target_len;
    i++;
    /* HTTP-version: check each byte as it arrives */
    static const char proto[] = "HTTP/1.";
    for (size_t k = 0; k < sizeof(proto) - 1; k++, i++) {
        if (i >= len)
            return SL_AGAIN;
        if (buf[i] != proto[k])
            return (k < 5) ? 400 : (isdigit((unsigned char)buf[i]) ? 505 : 400);
    }
    if (i >= len)
        return SL_AGAIN;
    if (!isdigit((unsigned char)buf[i]))
        return 400;
    if (buf[i] != '0' && buf[i] != '1')
        return 505;
    req->version_minor = buf[i] - '0';
    i++;
    if (i >= len)
        return SL_AGAIN;
    if (buf[i] != '\r')
        return isdigit((unsigned char)buf[i]) ? 505 : 400;
    if (i + 1 >= len)
        return SL_AGAIN;
    if (buf[i + 1] != '\n')
        return 400;
    *next = i + 2;
    return SL_OK;
}

int sl_http_parse_request(const char *buf, size_t len, size_t max_head, sl_http_request_t *req)
{
    memset(req, 0, sizeof(*req));
    req->content_length = -1;
    size_t scan = len > max_head ? max_head : len;
    size_t i = 0;

    /* RFC 9112 2.2: ignore empty lines before the request-line. */
    while (i + 1 < scan && buf[i] == '\r' && buf[i + 1] == '\n')
        i += 2;
    if (i < scan && buf[i] == '\n')
        return 400;
    if (i + 1 == scan && buf[i] == '\r') /* its '\n' has not arrived yet */
        return len >= max_head ? 431 : SL_AGAIN;

    size_t next;
    int rc = parse_request_line(buf, i, scan, max_head, req, &next);
    if (rc != SL_OK)
        return rc == SL_AGAIN && len >= max_head ? 431 : rc;
    i = next;

    bool have_cl = false;
    for (;;) {
        if (i >= scan)
            return len >= max_head ? 431 : SL_AGAIN;
        long e = line_end(buf, i, scan);
        if (e == -2)
            return 400;
        if (e == -1) {
            /* Validate the partial line so garbage fails early. */
            for (size_t k = i; k < scan && buf[k] != '\r'; k++)
                if (!is_field_byte((unsigned char)buf[k]))
                    return 400;
            return len >= max_head ? 431 : SL_AGAIN;
        }
        size_t end = (size_t)e;
        if (end == i) { /* the empty line: end of the head */
            req->head_len = end + 2;
            break;
        }
        if (buf[i] == ' ' || buf[i] == '\t')
            return 400; /* obs-fold */
        const char *colon = memchr(buf + i, ':', end - i);
        if (colon == NULL || colon == buf + i)
            return 400;
        for (const char *c = buf + i; c < colon; c++)
            if (!is_tchar((unsigned char)*c))
                return 400;
        const char *v = colon + 1, *ve = buf + end;
        for (const char *c = v; c < ve; c++)
            if (!is_field_byte((unsigned char)*c))
                return 400;
        while (v < ve && (*v == ' ' || *v == '\t'))
            v++;
        while (ve > v && (ve[-1] == ' ' || ve[-1] == '\t'))
            ve--;
        if (req->nheaders == SL_HTTP_MAX_HEADERS)
            return 431;
        sl_http_header_t *h = &req->headers[req->nheaders++];
        h->name = buf + i;
        h->name_len = (size_t)(colon - (buf + i));
        h->value = v;
        h->value_len = (size_t)(ve - v);
        if (name_is(h, "Content-Length")) {
            int64_t cl;
            if (parse_content_length(h->value, h->value_len, &cl) != SL_OK)
                return 400;
            if (have_cl && cl != req->content_length)
                return 400;
            have_cl = true;
            req->content_length = cl;
        } else if (name_is(h, "Transfer-Encoding")) {
            return 501;
        }
        i = end + 2;
    }

    if (req->version_minor == 1 && sl_http_header(req, "Host") == NULL)
        return 400;
    const sl_http_header_t *conn = sl_http_header(req, "Connection");
    if (req->version_minor == 1)
        req->keep_alive = !(conn && sl_http_has_token(conn->value, conn->value_len, "close"));
    else
        req->keep_alive = conn && sl_http_has_token(conn->value, conn->value_len, "keep-alive");
    return SL_OK;
}

const sl_http_header_t *sl_http_header(const sl_http_request_t *req, const char *name)
{
    for (size_t i = 0; i < req->nheaders; i++)
        if (name_is(&req->headers[i], name))
            return &req->headers[i];
    return NULL;
}

bool sl_http_has_token(const char *value, size_t len, const char *token)
{
    size_t tlen = strlen(token), i = 0;
    while (i < len) {
        while (i < len && (value[i] == ' ' || value[i] == '\t' || value[i] == ','))
            i++;
        size_t s = i;
        while (i < len && value[i] != ',')
            i++;
        size_t e = i;
        while (e > s && (value[e - 1] == ' ' || value[e - 1] == '\t'))
            e--;
        if (e - s == tlen && strncasecmp(value + s, token, tlen) == 0)
            return true;
    }
    return false;
}

bool sl_http_method_is(const sl_http_request_t *req, const char *m)
{
    return req->method_len == strlen(m) && memcmp(req->method, m, req->method_len) == 0;
}

long long sl_http_query_uint(const sl_http_request_t *req, const char *name, long long def)
{
    const char *q = memchr(req->target, '?', req->target_len), *end = req->target + req->target_len;
    size_t nl = strlen(name);
    for (const char *p = q ? q + 1 : end; p < end;) {
        const char *amp = memchr(p, '&', (size_t)(end - p));
        const char *stop = amp ? amp : end;
        if ((size_t)(stop - p) > nl && memcmp(p, name, nl) == 0 && p[nl] == '=') {
            long long v = 0;
            const char *d = p + nl + 1;
            if (d == stop)
                return -1;
            for (; d < stop; d++) {
                if (*d < '0' || *d > '9' || v > 0xffffffffLL / 10)
                    return -1;
                v = v * 10 + (*d - '0');
            }
            return v > 0xffffffffLL ? -1 : v;
        }
        p = stop + 1;
    }
    return def;
}

static int hex_digit(char ch)
{
    if (ch >= '0' && ch <= '9')
        return ch - '0';
    if (ch >= 'a' && ch <= 'f')
        return ch - 'a' + 10;
    if (ch >= 'A' && ch <= 'F')
        return ch - 'A' + 10;
    return -1;
}

int sl_http_unescape(const char *in, size_t len, char *out, size_t cap)
{
    size_t o = 0;
    for (size_t i = 0; i < len; i++) {
        char ch = in[i];
        if (ch == '%') {
            int hi = i + 2 < len ? hex_digit(in[i + 1]) : -1;
            int lo = hi >= 0 ? hex_digit(in[i + 2]) : -1;
            if (lo < 0 || (hi == 0 && lo == 0))
                return -1;
            ch = (char)(hi * 16 + lo);
            i += 2;
        }
        if (o >= cap)
            return -1;
        out[o++] = ch;
    }
    return (int)o;
}

const char *sl_http_reason(int status)
{
    switch (status) {
    case 101: return "Switching Protocols";
    case 200: return "OK";
    case 201: return "Created";
    case 204: return "No Content";
    case 304: return "Not Modified";
    case 400: return "Bad Request";
    case 401: return "Unauthorized";
    case 403: return "Forbidden";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    case 408: return "Request Timeout";
    case 409: return "Conflict";
    case 411: return "Length Required";
    case 413: return "Content Too Large";
    case 414: return "URI Too Long";
    case 426: return "Upgrade Required";
    case 431: return "Request Header Fields Too Large";
    case 500: return "Internal Server Error";
    case 501: return "Not Implemented";
    case 503: return "Service Unavailable";
    case 504: return "Gateway Timeout";
    case 505: return "HTTP Version Not Supported";
    default: return "Unknown";
    }
}

int sl_http_response(int status, const char *content_type, const char *extra_headers,
                     const char *body, size_t body_len, bool keep_alive, char **out,
                     size_t *outlen)
{
    char head[512];
    /* The caller's own Cache-Control (the embedded web files) replaces ours. */
    bool own_cache = extra_headers && strstr(extra_headers, "Cache-Control:") != NULL;
    int n = snprintf(head, sizeof(head),
                     "HTTP/1.1 %d %s\r\n%s%s%sContent-Length: %zu\r\nConnection: %s\r\n"
                     "%sServer: sente-lite\r\n",
                     status, sl_http_reason(status), content_type ? "Content-Type: " : "",
                     content_type ? content_type : "", content_type ? "\r\n" : "", body_len,
                     keep_alive ? "keep-alive" : "close",
                     own_cache ? "" : "Cache-Control: no-store\r\n");
    if (n < 0 || (size_t)n >= sizeof(head))
        return SL_ERROR;
    size_t extra = extra_headers ? strlen(extra_headers) : 0;
    size_t total = (size_t)n + extra + 2 + body_len;
    char *p = malloc(total);
    if (p == NULL)
        return SL_ERROR;
    memcpy(p, head, (size_t)n);
    if (extra)
        memcpy(p + n, extra_headers, extra);
    memcpy(p + n + extra, "\r\n", 2);
    if (body_len)
        memcpy(p + n + extra + 2, body, body_len);
    *out = p;
    *outlen = total;
    return SL_OK;
}

/* Append s as the contents of a JSON string (without quotes). */
static size_t json_escape(char *dst, const char *s)
{
    size_t n = 0;
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        if (*p == '"' || *p == '\\') {
            dst[n++] = '\\';
            dst[n++] = (char)*p;
        } else if (*p < 0x20) {
            n += (size_t)sprintf(dst + n, "\\u%04x", *p);
        } else {
            dst[n++] = (char)*p;
        }
    }
    return n;
}

int sl_http_error_response(int status, const char *code, const char *message, bool keep_alive,
                           const char *extra_headers, char **out, size_t *outlen)
{
    /* A message may quote input (a JSON parser's error text): made valid
     * UTF-8 first (each bad byte becomes U+FFFD, 3 bytes), so the body is
     * valid JSON whatever it quotes. */
    size_t mlen = strlen(message);
    char *msg = malloc(3 * mlen + 1);
    if (msg == NULL)
        return SL_ERROR;
    sl_utf8_sanitize((const uint8_t *)message, mlen, msg, 3 * mlen + 1);
    /* Worst case every byte becomes \u00XX (6 bytes). */
    size_t cap = 32 + 6 * (strlen(code) + strlen(msg));
    char *body = malloc(cap);
    if (body == NULL) {
        free(msg);
        return SL_ERROR;
    }
    size_t n = 0;
    memcpy(body + n, "{\"error\":\"", 10);
    n += 10;
    n += json_escape(body + n, code);
    memcpy(body + n, "\",\"message\":\"", 13);
    n += 13;
    n += json_escape(body + n, msg);
    free(msg);
    memcpy(body + n, "\"}", 2);
    n += 2;
    int rc = sl_http_response(status, "application/json", extra_headers, body, n, keep_alive, out,
                              outlen);
    free(body);
    return rc;
}
