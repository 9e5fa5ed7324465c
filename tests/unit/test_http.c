/*
 * test_http.c - the request-head parser (complete, partial at every split
 * point, pipelined, every refusal with its status) and the response
 * builders.
 */
#include "sl_http.h"
#include "sl_ws.h"
#include "sl_test.h"

#include <stdlib.h>

static sl_http_request_t req;

static int parse(const char *s)
{
    return sl_http_parse_request(s, strlen(s), 8192, &req);
}

static bool hdr_is(const char *name, const char *value)
{
    const sl_http_header_t *h = sl_http_header(&req, name);
    return h && h->value_len == strlen(value) && memcmp(h->value, value, h->value_len) == 0;
}

static const char UPGRADE[] = "GET /chat?x=1 HTTP/1.1\r\n"
                              "Host: server.example.com\r\n"
                              "Upgrade: websocket\r\n"
                              "Connection: keep-alive, Upgrade\r\n"
                              "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                              "Origin:   http://example.com  \r\n"
                              "Sec-WebSocket-Version: 13\r\n\r\n";

static void test_upgrade_request(void)
{
    SL_CHECK_INT(parse(UPGRADE), SL_OK);
    SL_CHECK(sl_http_method_is(&req, "GET"));
    SL_CHECK(req.target_len == 9 && memcmp(req.target, "/chat?x=1", 9) == 0);
    SL_CHECK(req.path_len == 5 && memcmp(req.path, "/chat", 5) == 0);
    SL_CHECK_INT(req.version_minor, 1);
    SL_CHECK_INT(req.nheaders, 6);
    SL_CHECK_INT(req.head_len, strlen(UPGRADE));
    SL_CHECK(hdr_is("upgrade", "websocket"));
    SL_CHECK(hdr_is("ORIGIN", "http://example.com")); /* OWS trimmed */
    SL_CHECK(req.keep_alive);
    SL_CHECK_INT(req.content_length, -1);
    const sl_http_header_t *c = sl_http_header(&req, "Connection");
    SL_CHECK(sl_http_has_token(c->value, c->value_len, "upgrade"));
    SL_CHECK(sl_http_has_token(c->value, c->value_len, "keep-alive"));
    SL_CHECK(sl_http_header(&req, "X-Missing") == NULL);
}

static void test_every_prefix_is_again(void)
{
    size_t n = strlen(UPGRADE);
    for (size_t k = 0; k < n; k++)
        SL_CHECK_INT(sl_http_parse_request(UPGRADE, k, 8192, &req), SL_AGAIN);
    SL_CHECK_INT(sl_http_parse_request(UPGRADE, n, 8192, &req), SL_OK);
}

static void test_pipelined_and_body(void)
{
    const char *two = "POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello"
                      "GET /b HTTP/1.1\r\nHost: x\r\n\r\n";
    size_t len = strlen(two);
    SL_CHECK_INT(sl_http_parse_request(two, len, 8192, &req), SL_OK);
    SL_CHECK_INT(req.content_length, 5);
    size_t next = req.head_len + 5;
    SL_CHECK(memcmp(two + req.head_len, "hello", 5) == 0);
    SL_CHECK_INT(sl_http_parse_request(two + next, len - next, 8192, &req), SL_OK);
    SL_CHECK(req.path_len == 2 && memcmp(req.path, "/b", 2) == 0);
}

static void test_keep_alive_rules(void)
{
    SL_CHECK_INT(parse("GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"), SL_OK);
    SL_CHECK(!req.keep_alive);
    SL_CHECK_INT(parse("GET / HTTP/1.0\r\n\r\n"), SL_OK);
    SL_CHECK(!req.keep_alive);
    SL_CHECK_INT(parse("GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n"), SL_OK);
    SL_CHECK(req.keep_alive);
}

static void test_leading_empty_lines(void)
{
    SL_CHECK_INT(parse("\r\n\r\nGET / HTTP/1.1\r\nHost: x\r\n\r\n"), SL_OK);
    SL_CHECK_INT(req.head_len, strlen("\r\n\r\nGET / HTTP/1.1\r\nHost: x\r\n\r\n"));
}

static void test_refusals(void)
{
    SL_CHECK_INT(parse("G@T / HTTP/1.1\r\n"), 400);          /* early, partial */
    SL_CHECK_INT(parse("\x16\x03\x01"), 400);                /* TLS hello */
    SL_CHECK_INT(parse("GET nopath HTTP/1.1\r\n\r\n"), 400);
    SL_CHECK_INT(parse("GET / HTTX/1.1\r\n\r\n"), 400);
    SL_CHECK_INT(parse("GET / HTTP/2.0\r\n\r\n"), 505);
    SL_CHECK_INT(parse("GET / HTTP/1.2\r\n\r\n"), 505);
    SL_CHECK_INT(parse("GET / HTTP/1.1\nHost: x\n\n"), 400); /* bare LF */
    SL_CHECK_INT(parse("GET / HTTP/1.1\r\n\r\n"), 400);      /* no Host */
    SL_CHECK_INT(parse("GET / HTTP/1.1\r\nHost: x\r\n folded\r\n\r\n"), 400);
    SL_CHECK_INT(parse("GET / HTTP/1.1\r\nHost : x\r\n\r\n"), 400);
    SL_CHECK_INT(parse("GET / HTTP/1.1\r\nNoColon\r\n\r\n"), 400);
    SL_CHECK_INT(parse("GET / HTTP/1.1\r\nHost: a\x01b\r\n\r\n"), 400);
    SL_CHECK_INT(parse("GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 12a\r\n\r\n"), 400);
    SL_CHECK_INT(parse("GET / HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n"), 400);
    SL_CHECK_INT(parse("GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999999999999\r\n\r\n"),
                 400);
    SL_CHECK_INT(parse("GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n"
                       "Content-Length: 2\r\n\r\n"),
                 400);
    SL_CHECK_INT(parse("GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n"
                       "Content-Length: 3\r\n\r\n"),
                 SL_OK);
    SL_CHECK_INT(parse("POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"), 501);
}

static void test_limits(void)
{
    char *big = malloc(20000);
    strcpy(big, "GET / HTTP/1.1\r\nHost: x\r\nX: ");
    size_t n = strlen(big);
    memset(big + n, 'a', 9000);
    big[n + 9000] = '\0';
    /* Over the limit and still no end of head: 431, not "wait". */
    SL_CHECK_INT(sl_http_parse_request(big, strlen(big), 8192, &req), 431);
    strcat(big, "\r\n\r\n");
    SL_CHECK_INT(sl_http_parse_request(big, strlen(big), 8192, &req), 431);

    strcpy(big, "GET / HTTP/1.1\r\nHost: x\r\n");
    for (int i = 0; i < SL_HTTP_MAX_HEADERS; i++)
        sprintf(big + strlen(big), "X-%d: v\r\n", i);
    strcat(big, "\r\n");
    SL_CHECK_INT(parse(big), 431);

    strcpy(big, "GET /");
    memset(big + 5, 'p', 5000);
    strcpy(big + 5005, " HTTP/1.1\r\nHost: x\r\n\r\n");
    SL_CHECK_INT(parse(big), 414);
    free(big);
}

static void test_has_token(void)
{
    SL_CHECK(sl_http_has_token("Upgrade", 7, "upgrade"));
    SL_CHECK(sl_http_has_token("  upgrade  ", 11, "upgrade"));
    SL_CHECK(sl_http_has_token("keep-alive, Upgrade", 19, "upgrade"));
    SL_CHECK(!sl_http_has_token("upgraded", 8, "upgrade"));
    SL_CHECK(!sl_http_has_token("xupgrade", 8, "upgrade"));
    SL_CHECK(!sl_http_has_token("", 0, "upgrade"));
    SL_CHECK(sl_http_has_token(",,upgrade,", 10, "upgrade"));
}

static void test_response(void)
{
    char *out;
    size_t len;
    SL_CHECK_INT(sl_http_response(200, "application/json", "X-A: b\r\n", "{}", 2, true, &out, &len),
                 SL_OK);
    const char *want = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n"
                       "Connection: keep-alive\r\nCache-Control: no-store\r\nServer: sente-lite\r\n"
                       "X-A: b\r\n\r\n{}";
    SL_CHECK(len == strlen(want) && memcmp(out, want, len) == 0);
    free(out);
    SL_CHECK_INT(sl_http_error_response(404, "not-found", "say \"hi\"\n", false, NULL, &out, &len),
                 SL_OK);
    const char *body = strstr(out, "\r\n\r\n");
    SL_CHECK(body != NULL);
    if (body)
        SL_CHECK(strncmp(body + 4, "{\"error\":\"not-found\",\"message\":\"say \\\"hi\\\"\\u000a\"}",
                         len - (size_t)(body + 4 - out)) == 0);
    SL_CHECK(strstr(out, "Connection: close\r\n") != NULL);
    SL_CHECK(strncmp(out, "HTTP/1.1 404 Not Found\r\n", 24) == 0);
    free(out);
    SL_CHECK_STR(sl_http_reason(431), "Request Header Fields Too Large");
}

static void test_unescape(void)
{
    char out[16];
    SL_CHECK_INT(sl_http_unescape("a%2Fb%20c", 9, out, sizeof(out)), 5);
    SL_CHECK(memcmp(out, "a/b c", 5) == 0);
    SL_CHECK_INT(sl_http_unescape("%e2%82%AC", 9, out, sizeof(out)), 3); /* either case */
    SL_CHECK(memcmp(out, "\xe2\x82\xac", 3) == 0);
    SL_CHECK_INT(sl_http_unescape("", 0, out, sizeof(out)), 0);
    SL_CHECK_INT(sl_http_unescape("a%2", 3, out, sizeof(out)), -1);   /* cut short */
    SL_CHECK_INT(sl_http_unescape("%zz", 3, out, sizeof(out)), -1);   /* not hex */
    SL_CHECK_INT(sl_http_unescape("a%00b", 5, out, sizeof(out)), -1); /* NUL */
    SL_CHECK_INT(sl_http_unescape("abcdef", 6, out, 5), -1);          /* no room */
    SL_CHECK_INT(sl_http_unescape("ab%41", 5, out, 3), 3);            /* exactly */
}

/* An error message that quotes input cut inside a UTF-8 character still
 * makes a valid JSON body (issue 13 finding 8). */
static void test_error_body_always_utf8(void)
{
    char *resp;
    size_t len;
    SL_CHECK_INT(sl_http_error_response(400, "bad-json", "near '\xc3", false, NULL, &resp, &len),
                 SL_OK);
    const char *body = strstr(resp, "\r\n\r\n");
    SL_CHECK(body != NULL);
    if (body) {
        body += 4;
        SL_CHECK(sl_utf8_valid((const uint8_t *)body, len - (size_t)(body - resp)));
        SL_CHECK(strstr(body, "\xef\xbf\xbd") != NULL); /* U+FFFD */
    }
    free(resp);
}

/* A leading empty line split between CR and LF is "need more", not 400. */
static void test_leading_crlf_split(void)
{
    SL_CHECK_INT(sl_http_parse_request("\r", 1, 8192, &req), SL_AGAIN);
    const char *full = "\r\nGET / HTTP/1.1\r\nHost: x\r\n\r\n";
    SL_CHECK_INT(sl_http_parse_request(full, strlen(full), 8192, &req), SL_OK);
}

int main(void)
{
    SL_TEST_RUN(test_error_body_always_utf8);
    SL_TEST_RUN(test_leading_crlf_split);
    SL_TEST_RUN(test_upgrade_request);
    SL_TEST_RUN(test_every_prefix_is_again);
    SL_TEST_RUN(test_pipelined_and_body);
    SL_TEST_RUN(test_keep_alive_rules);
    SL_TEST_RUN(test_leading_empty_lines);
    SL_TEST_RUN(test_refusals);
    SL_TEST_RUN(test_limits);
    SL_TEST_RUN(test_has_token);
    SL_TEST_RUN(test_response);
    SL_TEST_RUN(test_unescape);
    return sl_test_summary();
}
