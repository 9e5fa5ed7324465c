/*
 * test_utf8.c - the incremental UTF-8 validator: valid forms, each class of
 * invalid input, and sequences split at every position.
 */
#include "sl_test.h"
#include "sl_ws.h"

static bool valid(const char *s, size_t n)
{
    return sl_utf8_valid((const uint8_t *)s, n);
}

#define V(lit) valid(lit, sizeof(lit) - 1)

static void test_valid(void)
{
    SL_CHECK(V(""));
    SL_CHECK(V("plain ascii, long enough for the 8-byte fast path to kick in"));
    SL_CHECK(V("\xc2\x80"));             /* U+0080 */
    SL_CHECK(V("\xdf\xbf"));             /* U+07FF */
    SL_CHECK(V("\xe0\xa0\x80"));         /* U+0800 */
    SL_CHECK(V("\xed\x9f\xbf"));         /* U+D7FF */
    SL_CHECK(V("\xee\x80\x80"));         /* U+E000 */
    SL_CHECK(V("\xef\xbf\xbf"));         /* U+FFFF */
    SL_CHECK(V("\xf0\x90\x80\x80"));     /* U+10000 */
    SL_CHECK(V("\xf4\x8f\xbf\xbf"));     /* U+10FFFF */
    SL_CHECK(V("h\xc3\xa9llo \xe2\x98\x83 \xf0\x9f\x98\x80"));
}

static void test_invalid(void)
{
    SL_CHECK(!V("\x80"));             /* lone continuation */
    SL_CHECK(!V("\xbf"));
    SL_CHECK(!V("\xc0\xaf"));         /* overlong '/' */
    SL_CHECK(!V("\xc1\xbf"));
    SL_CHECK(!V("\xe0\x80\xaf"));     /* overlong 3-byte */
    SL_CHECK(!V("\xe0\x9f\xbf"));
    SL_CHECK(!V("\xf0\x80\x80\xaf")); /* overlong 4-byte */
    SL_CHECK(!V("\xf0\x8f\xbf\xbf"));
    SL_CHECK(!V("\xed\xa0\x80"));     /* U+D800 surrogate */
    SL_CHECK(!V("\xed\xbf\xbf"));     /* U+DFFF */
    SL_CHECK(!V("\xf4\x90\x80\x80")); /* U+110000 */
    SL_CHECK(!V("\xf5\x80\x80\x80"));
    SL_CHECK(!V("\xfe"));
    SL_CHECK(!V("\xff"));
    SL_CHECK(!V("\xc2"));             /* truncated */
    SL_CHECK(!V("\xe2\x82"));
    SL_CHECK(!V("\xc2\x41"));         /* bad continuation */
    SL_CHECK(!V("abcdefgh\xe2\x28\xa1"));
}

static void test_split_everywhere(void)
{
    static const char s[] = "a\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80z";
    size_t n = sizeof(s) - 1;
    for (size_t cut = 0; cut <= n; cut++) {
        sl_utf8_t u;
        sl_utf8_init(&u);
        SL_CHECK(sl_utf8_feed(&u, (const uint8_t *)s, cut));
        SL_CHECK(sl_utf8_feed(&u, (const uint8_t *)s + cut, n - cut));
        SL_CHECK(sl_utf8_complete(&u));
    }
    /* Byte by byte, and incomplete in the middle. */
    sl_utf8_t u;
    sl_utf8_init(&u);
    for (size_t i = 0; i < n; i++) {
        SL_CHECK(sl_utf8_feed(&u, (const uint8_t *)s + i, 1));
        if (i == 1)
            SL_CHECK(!sl_utf8_complete(&u)); /* inside \xc3\xa9 */
    }
    SL_CHECK(sl_utf8_complete(&u));
}

static void test_reject_is_sticky(void)
{
    sl_utf8_t u;
    sl_utf8_init(&u);
    SL_CHECK(!sl_utf8_feed(&u, (const uint8_t *)"\xe2\x28", 2));
    SL_CHECK(!sl_utf8_feed(&u, (const uint8_t *)"abc", 3));
    SL_CHECK(!sl_utf8_complete(&u));
}

static void test_fail_fast_before_end(void)
{
    /* The first byte that cannot continue is rejected immediately. */
    sl_utf8_t u;
    sl_utf8_init(&u);
    SL_CHECK(sl_utf8_feed(&u, (const uint8_t *)"\xf0", 1));
    SL_CHECK(!sl_utf8_feed(&u, (const uint8_t *)"\x80", 1)); /* F0 needs 90..BF */
}

int main(void)
{
    SL_TEST_RUN(test_valid);
    SL_TEST_RUN(test_invalid);
    SL_TEST_RUN(test_split_everywhere);
    SL_TEST_RUN(test_reject_is_sticky);
    SL_TEST_RUN(test_fail_fast_before_end);
    return sl_test_summary();
}
