/*
 * test_web.c - the embedded web files: the generated table, lookups with
 * and without --no-web-ui, If-None-Match matching and the 200/304 responses.
 */
#include "sl_conf.h"
#include "sl_web.h"
#include "sl_test.h"

#include <stdlib.h>

static sl_conf_t conf;

static const sl_web_asset_t *find(const char *p)
{
    return sl_web_find(p, strlen(p));
}

static void test_table(void)
{
    SL_CHECK_INT(sl_web_nassets, 5);
    for (size_t i = 0; i < sl_web_nassets; i++) {
        const sl_web_asset_t *a = &sl_web_assets[i];
        SL_CHECK(a->len > 100);
        SL_CHECK(a->data[a->len] == '\0'); /* the uncounted terminator */
        SL_CHECK(a->etag[0] == '"' && a->etag[strlen(a->etag) - 1] == '"');
    }
    SL_CHECK(memcmp(find("/")->data, "<!doctype html>", 15) == 0);
    SL_CHECK_STR(find("/client.js")->content_type, "text/javascript; charset=utf-8");
    SL_CHECK_STR(find("/demo")->content_type, "text/html; charset=utf-8");
    SL_CHECK_STR(find("/favicon.ico")->content_type, "image/x-icon");
    SL_CHECK(!find("/favicon.ico")->page);
    SL_CHECK(strstr((const char *)find("/client.js")->data, "export class SenteLite") != NULL);
}

static void test_find(void)
{
    conf.web_ui = true;
    SL_CHECK(find("/") && find("/demo") && find("/dashboard") && find("/client.js"));
    SL_CHECK(find("/demo/") == NULL);
    SL_CHECK(find("/dem") == NULL);
    SL_CHECK(find("") == NULL);
    SL_CHECK(find("/stats") == NULL);
    SL_CHECK(sl_web_find("/demox", 5) == find("/demo")); /* length, not NUL, delimits */
    conf.web_ui = false;
    SL_CHECK(find("/") == NULL && find("/demo") == NULL && find("/dashboard") == NULL);
    SL_CHECK(find("/client.js") != NULL);
    conf.web_ui = true;
}

static bool matches(const char *v)
{
    return sl_web_etag_matches(find("/demo"), v, strlen(v));
}

static void test_etag(void)
{
    char tag[64], list[160];
    snprintf(tag, sizeof(tag), "%s", find("/demo")->etag);
    SL_CHECK(matches(tag));
    snprintf(list, sizeof(list), "W/%s", tag);
    SL_CHECK(matches(list));
    snprintf(list, sizeof(list), "\"a\",  %s ,\"b\"", tag);
    SL_CHECK(matches(list));
    SL_CHECK(matches("*"));
    SL_CHECK(matches(" * "));
    SL_CHECK(!matches(""));
    SL_CHECK(!matches("\"x\""));
    SL_CHECK(!matches(","));
    SL_CHECK(!matches(tag + 1)); /* unquoted */
    SL_CHECK(strcmp(find("/demo")->etag, find("/dashboard")->etag) != 0);
}

static void test_response(void)
{
    const sl_web_asset_t *a = find("/client.js");
    char raw[256];
    sl_http_request_t req;
    char *out;
    size_t len;

    snprintf(raw, sizeof(raw), "GET /client.js HTTP/1.1\r\nHost: x\r\n\r\n");
    SL_CHECK_INT(sl_http_parse_request(raw, strlen(raw), 8192, &req), SL_OK);
    SL_CHECK_INT(sl_web_response(a, &req, true, &out, &len), SL_OK);
    SL_CHECK(strncmp(out, "HTTP/1.1 200 OK\r\n", 17) == 0);
    SL_CHECK(memmem(out, len, "Cache-Control: no-cache\r\n", 25) != NULL);
    SL_CHECK(memmem(out, len, "no-store", 8) == NULL);
    SL_CHECK(len > a->len && memcmp(out + len - a->len, a->data, a->len) == 0);
    free(out);

    snprintf(raw, sizeof(raw), "GET /client.js HTTP/1.1\r\nHost: x\r\nIf-None-Match: %s\r\n\r\n",
             a->etag);
    SL_CHECK_INT(sl_http_parse_request(raw, strlen(raw), 8192, &req), SL_OK);
    SL_CHECK_INT(sl_web_response(a, &req, false, &out, &len), SL_OK);
    SL_CHECK(strncmp(out, "HTTP/1.1 304 Not Modified\r\n", 27) == 0);
    char cl[64];
    snprintf(cl, sizeof(cl), "Content-Length: %zu\r\n", a->len);
    SL_CHECK(memmem(out, len, cl, strlen(cl)) != NULL);
    SL_CHECK(len >= 4 && memcmp(out + len - 4, "\r\n\r\n", 4) == 0); /* no body */
    free(out);
}

int main(void)
{
    conf.web_ui = true;
    sl_conf = &conf;
    SL_TEST_RUN(test_table);
    SL_TEST_RUN(test_find);
    SL_TEST_RUN(test_etag);
    SL_TEST_RUN(test_response);
    return sl_test_summary();
}
