/*
 * test_jw.c - the JSON writer of fixed-shape replies: what it writes reads
 * back with jansson as the same values (escapes, numbers at the edges), the
 * frame header fits each length form, and text that outgrows the scratch
 * buffer moves to the heap intact.
 */
#include "sl_jw.h"
#include "sl_test.h"
#include "sl_ws.h"

#include <jansson.h>
#include <stdlib.h>

/* The payload of a frame made by sl_jw_frame, checking its header. */
static const char *payload(sl_buf_t *b, size_t *n)
{
    const uint8_t *f = b->data + b->start;
    SL_CHECK_INT(f[0], 0x81); /* FIN + text */
    size_t len = f[1] & 0x7f, h = 2;
    if (len == 126) {
        len = (size_t)f[2] << 8 | f[3];
        h = 4;
    } else if (len == 127) {
        len = 0;
        for (int i = 0; i < 8; i++)
            len = len << 8 | f[2 + i];
        h = 10;
    }
    SL_CHECK_INT(b->start + h + len, b->len);
    *n = len;
    return (const char *)f + h;
}

static void test_escapes_read_back(void)
{
    char scratch[256];
    sl_jw_t w;
    sl_jw_init(&w, scratch, sizeof(scratch));
    const char s[] = "a\"b\\c\n\t\r\b\f\x01\x1f/\xc3\xa9z\0end";
    sl_jw_lit(&w, "{\"s\":");
    sl_jw_str(&w, s, sizeof(s) - 1);
    sl_jw_lit(&w, ",\"min\":");
    sl_jw_int(&w, INT64_MIN);
    sl_jw_lit(&w, ",\"max\":");
    sl_jw_int(&w, INT64_MAX);
    sl_jw_lit(&w, ",\"zero\":");
    sl_jw_int(&w, 0);
    sl_jw_lit(&w, ",\"neg\":");
    sl_jw_int(&w, -42);
    sl_jw_lit(&w, ",\"t\":");
    sl_jw_bool(&w, true);
    sl_jw_lit(&w, ",\"f\":");
    sl_jw_bool(&w, false);
    sl_jw_lit(&w, "}");
    sl_buf_t *b = sl_jw_frame(&w);
    SL_CHECK(b != NULL);
    size_t n;
    const char *p = payload(b, &n);
    json_error_t err;
    json_t *j = json_loadb(p, n, JSON_ALLOW_NUL, &err);
    SL_CHECK(j != NULL);
    json_t *js = json_object_get(j, "s");
    SL_CHECK_INT(json_string_length(js), sizeof(s) - 1);
    SL_CHECK(memcmp(json_string_value(js), s, sizeof(s) - 1) == 0);
    SL_CHECK(json_integer_value(json_object_get(j, "min")) == INT64_MIN);
    SL_CHECK(json_integer_value(json_object_get(j, "max")) == INT64_MAX);
    SL_CHECK_INT(json_integer_value(json_object_get(j, "zero")), 0);
    SL_CHECK_INT(json_integer_value(json_object_get(j, "neg")), -42);
    SL_CHECK(json_is_true(json_object_get(j, "t")));
    SL_CHECK(json_is_false(json_object_get(j, "f")));
    /* The same text jansson writes for the same string. */
    char *mine = strndup(p + 5, (size_t)(strstr(p, ",\"min\"") - p - 5));
    json_t *alone = json_stringn(s, sizeof(s) - 1);
    char *theirs = json_dumps(alone, JSON_ENCODE_ANY);
    SL_CHECK_STR(mine, theirs);
    free(mine);
    free(theirs);
    json_decref(alone);
    json_decref(j);
    sl_buf_unref(b);
}

static void test_spill_and_header_forms(void)
{
    /* Payloads of 125, 126, 65535 and 65536+ bytes: every header form, and
     * a scratch buffer of 64 bytes so the text moves to the heap. */
    size_t sizes[] = {5, 125, 126, 65535, 65536, 200000};
    for (size_t k = 0; k < SL_ARRAY_LEN(sizes); k++) {
        char scratch[64];
        sl_jw_t w;
        sl_jw_init(&w, scratch, sizeof(scratch));
        size_t want = sizes[k];
        sl_jw_lit(&w, "[");
        size_t mark = sl_jw_mark(&w);
        sl_jw_lit(&w, "\"cut away\"");
        sl_jw_cut(&w, mark);
        size_t body = want - 3; /* "[" + quotes... */
        char *x = malloc(body);
        memset(x, 'x', body);
        x[0] = '"';
        x[body - 1] = '"';
        sl_jw_raw(&w, x, body);
        sl_jw_lit(&w, "]");
        free(x);
        sl_buf_t *b = sl_jw_frame(&w);
        SL_CHECK(b != NULL);
        size_t n;
        const char *p = payload(b, &n);
        SL_CHECK_INT(n, want - 1);
        SL_CHECK(p[0] == '[' && p[1] == '"' && p[n - 1] == ']');
        json_t *j = json_loadb(p, n, 0, NULL);
        SL_CHECK(j != NULL && json_is_array(j));
        json_decref(j);
        sl_buf_unref(b);
    }
}

static void test_drop_frees(void)
{
    char scratch[16];
    sl_jw_t w;
    sl_jw_init(&w, scratch, sizeof(scratch));
    sl_jw_lit(&w, "a string longer than sixteen bytes"); /* on the heap now */
    SL_CHECK(w.heap);
    sl_jw_drop(&w); /* ASan: no leak */
    SL_CHECK(!w.heap);
}

int main(void)
{
    SL_TEST_RUN(test_escapes_read_back);
    SL_TEST_RUN(test_spill_and_header_forms);
    SL_TEST_RUN(test_drop_frees);
    return sl_test_summary();
}
