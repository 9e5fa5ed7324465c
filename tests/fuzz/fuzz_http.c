/*
 * fuzz_http.c - the HTTP request-head parser (sl_http_parse_request).
 *
 * Property (the one conn.c relies on when a head arrives in pieces): for
 * every prefix of the input the result is "need more" (SL_AGAIN) or exactly
 * the result for the whole input - the same status, and for a parsed head
 * the same length and fields.  So a request split across reads anywhere
 * gets the answer it gets in one read.
 */
#include "sl_http.h"

#include <stdlib.h>
#include <string.h>

#define MAX_HEAD 1024 /* small, so the fuzzer reaches the 431/414 limits */

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t n);

static void same_request(const sl_http_request_t *a, const sl_http_request_t *b)
{
    if (a->head_len != b->head_len || a->nheaders != b->nheaders ||
        a->content_length != b->content_length || a->keep_alive != b->keep_alive ||
        a->method_len != b->method_len || a->target_len != b->target_len ||
        a->path_len != b->path_len || a->version_minor != b->version_minor)
        abort();
    for (size_t i = 0; i < a->nheaders; i++)
        if (a->headers[i].name_len != b->headers[i].name_len ||
            a->headers[i].value_len != b->headers[i].value_len)
            abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t n)
{
    if (n > 3 * MAX_HEAD)
        return 0;
    /* A copy of exactly n bytes: the parser must not read past its end. */
    char *buf = malloc(n ? n : 1);
    if (buf == NULL)
        return 0;
    memcpy(buf, data, n);
    static sl_http_request_t whole, part;
    int full = sl_http_parse_request(buf, n, MAX_HEAD, &whole);
    if (full != SL_OK && full != SL_AGAIN && (full < 400 || full > 505))
        abort();
    if (full == SL_OK && (whole.head_len == 0 || whole.head_len > n || whole.head_len > MAX_HEAD))
        abort();
    for (size_t k = 0; k < n; k++) {
        int rc = sl_http_parse_request(buf, k, MAX_HEAD, &part);
        if (rc == SL_AGAIN)
            continue;
        if (rc != full)
            abort();
        if (rc == SL_OK)
            same_request(&part, &whole);
    }
    free(buf);
    return 0;
}
