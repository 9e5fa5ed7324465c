/*
 * test_ws.c - the RFC 6455 engine: accept key, header encoding, masking,
 * and the reader (every length form, fragmentation, control frames, split
 * input, every protocol error with its close code).
 */
#include "sl_test.h"
#include "sl_outq.h"
#include "sl_pmd.h"
#include "sl_ws.h"

#include <stdlib.h>

/* What the handlers saw, in order. */
typedef struct {
    int n;
    int op[64];
    size_t len[64];
    uint8_t data[64][1024];
    int stop_after; /* return 1 after this many callbacks (0: never) */
} seen_t;

static int record(seen_t *s, int op, const uint8_t *d, size_t n)
{
    if (s->n < 64) {
        s->op[s->n] = op;
        s->len[s->n] = n;
        memcpy(s->data[s->n], d, n < 1024 ? n : 1024);
    }
    s->n++;
    return s->stop_after && s->n >= s->stop_after ? 1 : 0;
}

static int on_msg(void *ctx, int op, uint8_t *d, size_t n)
{
    return record(ctx, op, d, n);
}

static int on_ctl(void *ctx, int op, uint8_t *d, size_t n)
{
    return record(ctx, op, d, n);
}

static const sl_ws_handlers_t H = {on_msg, on_ctl};

/* Build a client frame (masked unless mask == NULL). */
static size_t mkframe(uint8_t *out, int op, bool fin, const void *payload, size_t n,
                      const uint8_t *mask, uint8_t rsv)
{
    size_t h = sl_ws_encode_header(out, op, fin, n, mask);
    out[0] |= rsv;
    memcpy(out + h, payload, n);
    if (mask)
        sl_ws_mask(out + h, n, mask, 0);
    return h + n;
}

static const uint8_t M[4] = {0x37, 0xfa, 0x21, 0x3d};

static int feed_all(sl_ws_reader_t *r, uint8_t *buf, size_t n, seen_t *s)
{
    return sl_ws_reader_feed(r, buf, n, &H, s, NULL);
}

/* Feed in chunks of `chunk` bytes (0: random sizes). */
static int feed_chunks(sl_ws_reader_t *r, const uint8_t *buf, size_t n, size_t chunk, seen_t *s)
{
    size_t pos = 0;
    while (pos < n) {
        size_t k = chunk ? chunk : (size_t)(rand() % 17) + 1;
        if (k > n - pos)
            k = n - pos;
        uint8_t *tmp = malloc(k);
        memcpy(tmp, buf + pos, k);
        int rc = sl_ws_reader_feed(r, tmp, k, &H, s, NULL);
        free(tmp);
        if (rc)
            return rc;
        pos += k;
    }
    return 0;
}

static void test_accept_key(void)
{
    char out[29];
    SL_CHECK_INT(sl_ws_accept_key("dGhlIHNhbXBsZSBub25jZQ==", 24, out), SL_OK);
    SL_CHECK_STR(out, "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="); /* RFC 6455 section 1.3 */
    SL_CHECK_INT(sl_ws_accept_key("dGhlIHNhbXBsZSBub25jZQ", 22, out), SL_ERROR);
    SL_CHECK_INT(sl_ws_accept_key("dGhlIHNhbXBsZSBub25jZQ=!", 24, out), SL_ERROR);
    SL_CHECK_INT(sl_ws_accept_key("dGhlIHNhbXBsZSBub2*jZQ==", 24, out), SL_ERROR);
    SL_CHECK_INT(sl_ws_accept_key("", 0, out), SL_ERROR);
}

static void test_encode_header(void)
{
    uint8_t h[14];
    SL_CHECK_INT(sl_ws_encode_header(h, SL_WS_OP_TEXT, true, 0, NULL), 2);
    SL_CHECK_INT(h[0], 0x81);
    SL_CHECK_INT(h[1], 0x00);
    SL_CHECK_INT(sl_ws_encode_header(h, SL_WS_OP_BINARY, true, 125, NULL), 2);
    SL_CHECK_INT(h[1], 125);
    SL_CHECK_INT(sl_ws_encode_header(h, SL_WS_OP_TEXT, false, 126, NULL), 4);
    SL_CHECK_INT(h[0], 0x01);
    SL_CHECK_INT(h[1], 126);
    SL_CHECK_INT(h[2], 0);
    SL_CHECK_INT(h[3], 126);
    SL_CHECK_INT(sl_ws_encode_header(h, SL_WS_OP_TEXT, true, 65535, NULL), 4);
    SL_CHECK_INT(h[2], 0xff);
    SL_CHECK_INT(h[3], 0xff);
    SL_CHECK_INT(sl_ws_encode_header(h, SL_WS_OP_TEXT, true, 65536, NULL), 10);
    SL_CHECK_INT(h[1], 127);
    static const uint8_t l64[8] = {0, 0, 0, 0, 0, 1, 0, 0};
    SL_CHECK(memcmp(h + 2, l64, 8) == 0);
    SL_CHECK_INT(sl_ws_encode_header(h, SL_WS_OP_TEXT, true, (1ULL << 32) + 1, M), 14);
    static const uint8_t l32[8] = {0, 0, 0, 1, 0, 0, 0, 1};
    SL_CHECK_INT(h[1], 0x80 | 127);
    SL_CHECK(memcmp(h + 2, l32, 8) == 0);
    SL_CHECK(memcmp(h + 10, M, 4) == 0);
}

static void test_mask_roundtrip(void)
{
    uint8_t a[100], b[100];
    for (int i = 0; i < 100; i++)
        a[i] = b[i] = (uint8_t)(i * 13);
    /* Masking in pieces at odd offsets equals masking at once. */
    sl_ws_mask(a, 100, M, 0);
    sl_ws_mask(b, 3, M, 0);
    sl_ws_mask(b + 3, 50, M, 3);
    sl_ws_mask(b + 53, 47, M, 53);
    SL_CHECK(memcmp(a, b, 100) == 0);
    for (int i = 0; i < 100; i++)
        SL_CHECK_INT(a[i], (uint8_t)(i * 13) ^ M[i % 4]);
    sl_ws_mask(a, 100, M, 0);
    for (int i = 0; i < 100; i++)
        SL_CHECK_INT(a[i], (uint8_t)(i * 13));
}

static void test_close_codes(void)
{
    SL_CHECK(sl_ws_close_code_valid(1000));
    SL_CHECK(sl_ws_close_code_valid(1003));
    SL_CHECK(!sl_ws_close_code_valid(1004));
    SL_CHECK(!sl_ws_close_code_valid(1005));
    SL_CHECK(!sl_ws_close_code_valid(1006));
    SL_CHECK(sl_ws_close_code_valid(1007));
    SL_CHECK(sl_ws_close_code_valid(1011));
    SL_CHECK(!sl_ws_close_code_valid(1015));
    SL_CHECK(!sl_ws_close_code_valid(999));
    SL_CHECK(!sl_ws_close_code_valid(2000));
    SL_CHECK(sl_ws_close_code_valid(3000));
    SL_CHECK(sl_ws_close_code_valid(4999));
    SL_CHECK(!sl_ws_close_code_valid(5000));
}

/* RFC 6455 section 5.7 examples. */
static void test_rfc_examples(void)
{
    sl_ws_reader_t r;
    seen_t s = {0};
    sl_ws_reader_init(&r, false, 1 << 20);
    uint8_t unmasked[] = {0x81, 0x05, 0x48, 0x65, 0x6c, 0x6c, 0x6f};
    SL_CHECK_INT(feed_all(&r, unmasked, sizeof(unmasked), &s), 0);
    SL_CHECK_INT(s.n, 1);
    SL_CHECK_INT(s.op[0], SL_WS_OP_TEXT);
    SL_CHECK(s.len[0] == 5 && memcmp(s.data[0], "Hello", 5) == 0);
    uint8_t frag[] = {0x01, 0x03, 0x48, 0x65, 0x6c, 0x80, 0x02, 0x6c, 0x6f};
    SL_CHECK_INT(feed_all(&r, frag, sizeof(frag), &s), 0);
    SL_CHECK_INT(s.n, 2);
    SL_CHECK(s.len[1] == 5 && memcmp(s.data[1], "Hello", 5) == 0);
    uint8_t ping[] = {0x89, 0x05, 0x48, 0x65, 0x6c, 0x6c, 0x6f};
    SL_CHECK_INT(feed_all(&r, ping, sizeof(ping), &s), 0);
    SL_CHECK_INT(s.op[2], SL_WS_OP_PING);
    sl_ws_reader_free(&r);

    sl_ws_reader_init(&r, true, 1 << 20);
    seen_t s2 = {0};
    uint8_t masked[] = {0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58};
    SL_CHECK_INT(feed_all(&r, masked, sizeof(masked), &s2), 0);
    SL_CHECK(s2.n == 1 && s2.len[0] == 5 && memcmp(s2.data[0], "Hello", 5) == 0);
    sl_ws_reader_free(&r);
}

/* A stream of several frames gives the same callbacks whatever the split. */
static void test_split_invariance(void)
{
    static uint8_t stream[300000];
    size_t n = 0;
    static char big[70000];
    memset(big, 'b', sizeof(big));
    n += mkframe(stream + n, SL_WS_OP_TEXT, true, "hello", 5, M, 0);
    n += mkframe(stream + n, SL_WS_OP_BINARY, true, "\x00\x01\x02", 3, M, 0);
    n += mkframe(stream + n, SL_WS_OP_TEXT, true, big, 126, M, 0);
    n += mkframe(stream + n, SL_WS_OP_TEXT, true, big, 65535, M, 0);
    n += mkframe(stream + n, SL_WS_OP_TEXT, true, big, 65536, M, 0);
    n += mkframe(stream + n, SL_WS_OP_TEXT, false, "frag", 4, M, 0);
    n += mkframe(stream + n, SL_WS_OP_PING, true, "p", 1, M, 0);
    n += mkframe(stream + n, SL_WS_OP_CONT, false, "ment", 4, M, 0);
    n += mkframe(stream + n, SL_WS_OP_PONG, true, "", 0, M, 0);
    n += mkframe(stream + n, SL_WS_OP_CONT, true, "ed", 2, M, 0);
    n += mkframe(stream + n, SL_WS_OP_TEXT, true, "", 0, M, 0);
    static const int ops[] = {1, 2, 1, 1, 1, 9, 10, 1, 1};
    static const size_t lens[] = {5, 3, 126, 65535, 65536, 1, 0, 10, 0};

    size_t chunks[] = {1, 2, 3, 7, 13, 1000, 0, 0, 0, sizeof(stream)};
    for (size_t c = 0; c < SL_ARRAY_LEN(chunks); c++) {
        sl_ws_reader_t r;
        static seen_t s;
        memset(&s, 0, sizeof(s));
        sl_ws_reader_init(&r, true, 1 << 20);
        SL_CHECK_INT(feed_chunks(&r, stream, n, chunks[c], &s), 0);
        SL_CHECK_INT(s.n, 9);
        for (int i = 0; i < 9 && i < s.n; i++) {
            SL_CHECK_INT(s.op[i], ops[i]);
            SL_CHECK_INT(s.len[i], lens[i]);
        }
        SL_CHECK(memcmp(s.data[0], "hello", 5) == 0);
        SL_CHECK(memcmp(s.data[7], "fragmented", 10) == 0);
        SL_CHECK(!sl_ws_reader_busy(&r));
        SL_CHECK_INT(sl_ws_reader_buffered(&r), 0);
        sl_ws_reader_free(&r);
    }
}

static int expect_error(const uint8_t *buf, size_t n, bool masked_mode, uint64_t max)
{
    sl_ws_reader_t r;
    seen_t s = {0};
    sl_ws_reader_init(&r, masked_mode, max);
    uint8_t *tmp = malloc(n);
    memcpy(tmp, buf, n);
    int rc = feed_all(&r, tmp, n, &s);
    free(tmp);
    sl_ws_reader_free(&r);
    return rc;
}

static void test_protocol_errors(void)
{
    uint8_t b[200];
    size_t n;
    n = mkframe(b, SL_WS_OP_TEXT, true, "x", 1, NULL, 0);
    SL_CHECK_INT(expect_error(b, n, true, 1000), 1002); /* unmasked to a server */
    n = mkframe(b, SL_WS_OP_TEXT, true, "x", 1, M, 0);
    SL_CHECK_INT(expect_error(b, n, false, 1000), 1002); /* masked to a client */
    for (uint8_t rsv = 0x10; rsv <= 0x40; rsv <<= 1) {
        n = mkframe(b, SL_WS_OP_TEXT, true, "x", 1, M, rsv);
        SL_CHECK_INT(expect_error(b, n, true, 1000), 1002);
    }
    static const int bad_ops[] = {3, 4, 5, 6, 7, 0xB, 0xC, 0xD, 0xE, 0xF};
    for (size_t i = 0; i < SL_ARRAY_LEN(bad_ops); i++) {
        n = mkframe(b, bad_ops[i], true, "x", 1, M, 0);
        SL_CHECK_INT(expect_error(b, n, true, 1000), 1002);
    }
    n = mkframe(b, SL_WS_OP_PING, false, "x", 1, M, 0); /* fragmented control */
    SL_CHECK_INT(expect_error(b, n, true, 1000), 1002);
    uint8_t big[130] = {0};
    n = mkframe(b, SL_WS_OP_PING, true, big, 126, M, 0); /* control > 125 */
    SL_CHECK_INT(expect_error(b, n, true, 1000), 1002);
    n = mkframe(b, SL_WS_OP_CONT, true, "x", 1, M, 0); /* nothing to continue */
    SL_CHECK_INT(expect_error(b, n, true, 1000), 1002);
    n = mkframe(b, SL_WS_OP_TEXT, false, "x", 1, M, 0);
    n += mkframe(b + n, SL_WS_OP_BINARY, true, "y", 1, M, 0); /* new message mid-way */
    SL_CHECK_INT(expect_error(b, n, true, 1000), 1002);
    /* 64-bit length with the top bit set */
    uint8_t huge[] = {0x82, 0xFF, 0x80, 0, 0, 0, 0, 0, 0, 1, 1, 2, 3, 4};
    SL_CHECK_INT(expect_error(huge, sizeof(huge), true, UINT64_MAX), 1002);
    /* close frames: 1-byte payload, bad code, bad reason */
    n = mkframe(b, SL_WS_OP_CLOSE, true, "\x03", 1, M, 0);
    SL_CHECK_INT(expect_error(b, n, true, 1000), 1002);
    n = mkframe(b, SL_WS_OP_CLOSE, true, "\x03\xed", 2, M, 0); /* 1005 */
    SL_CHECK_INT(expect_error(b, n, true, 1000), 1002);
    n = mkframe(b, SL_WS_OP_CLOSE, true, "\x03\xe8\xff", 3, M, 0);
    SL_CHECK_INT(expect_error(b, n, true, 1000), 1007);
}

static void test_message_size(void)
{
    static uint8_t b[5000];
    static char p[3000];
    memset(p, 'a', sizeof(p));
    size_t n = mkframe(b, SL_WS_OP_TEXT, true, p, 1001, M, 0);
    /* Refused as soon as the whole header (2 + 2 length + 4 mask bytes)
     * is in, before any payload arrives. */
    SL_CHECK_INT(expect_error(b, 8, true, 1000), 1009);
    SL_CHECK_INT(expect_error(b, 7, true, 1000), 0);
    SL_CHECK_INT(expect_error(b, n, true, 1001), 0);
    n = mkframe(b, SL_WS_OP_TEXT, false, p, 600, M, 0);
    n += mkframe(b + n, SL_WS_OP_CONT, true, p, 600, M, 0);
    SL_CHECK_INT(expect_error(b, n, true, 1000), 1009);
    SL_CHECK_INT(expect_error(b, n, true, 1200), 0);
}

static void test_utf8_in_reader(void)
{
    uint8_t b[100];
    size_t n = mkframe(b, SL_WS_OP_TEXT, true, "\xff", 1, M, 0);
    SL_CHECK_INT(expect_error(b, n, true, 1000), 1007);
    /* Valid 4-byte sequence split across two fragments. */
    n = mkframe(b, SL_WS_OP_TEXT, false, "\xf0\x9f", 2, M, 0);
    n += mkframe(b + n, SL_WS_OP_CONT, true, "\x98\x80", 2, M, 0);
    SL_CHECK_INT(expect_error(b, n, true, 1000), 0);
    /* Invalid continuation in the second fragment. */
    n = mkframe(b, SL_WS_OP_TEXT, false, "\xf0\x9f", 2, M, 0);
    n += mkframe(b + n, SL_WS_OP_CONT, true, "\x28\x80", 2, M, 0);
    SL_CHECK_INT(expect_error(b, n, true, 1000), 1007);
    /* Truncated sequence at the end of the message. */
    n = mkframe(b, SL_WS_OP_TEXT, true, "ok\xe2\x82", 4, M, 0);
    SL_CHECK_INT(expect_error(b, n, true, 1000), 1007);
    /* Fail fast: the first fragment alone already fails. */
    n = mkframe(b, SL_WS_OP_TEXT, false, "a\xc0\xaf" "b", 4, M, 0);
    SL_CHECK_INT(expect_error(b, n, true, 1000), 1007);
    /* Binary is not validated. */
    n = mkframe(b, SL_WS_OP_BINARY, true, "\xff\xfe", 2, M, 0);
    SL_CHECK_INT(expect_error(b, n, true, 1000), 0);
}

static void test_close_then_ignore(void)
{
    uint8_t b[100];
    size_t n = mkframe(b, SL_WS_OP_CLOSE, true, "\x03\xe8" "bye", 5, M, 0);
    n += mkframe(b + n, SL_WS_OP_TEXT, true, "after", 5, M, 0);
    sl_ws_reader_t r;
    seen_t s = {0};
    sl_ws_reader_init(&r, true, 1000);
    SL_CHECK_INT(feed_all(&r, b, n, &s), 0);
    SL_CHECK_INT(s.n, 1);
    SL_CHECK_INT(s.op[0], SL_WS_OP_CLOSE);
    SL_CHECK(r.closed);
    sl_ws_reader_free(&r);
}

static void test_handler_stop(void)
{
    uint8_t b[100];
    size_t n = mkframe(b, SL_WS_OP_TEXT, true, "a", 1, M, 0);
    n += mkframe(b + n, SL_WS_OP_TEXT, true, "b", 1, M, 0);
    sl_ws_reader_t r;
    seen_t s = {0};
    s.stop_after = 1;
    sl_ws_reader_init(&r, true, 1000);
    SL_CHECK_INT(feed_all(&r, b, n, &s), 1);
    SL_CHECK_INT(s.n, 1);
    sl_ws_reader_free(&r);
}

static void test_busy(void)
{
    uint8_t b[100];
    size_t n = mkframe(b, SL_WS_OP_TEXT, false, "abc", 3, M, 0);
    sl_ws_reader_t r;
    seen_t s = {0};
    sl_ws_reader_init(&r, true, 1000);
    SL_CHECK(!sl_ws_reader_busy(&r));
    SL_CHECK_INT(feed_all(&r, b, 1, &s), 0); /* half a header */
    SL_CHECK(sl_ws_reader_busy(&r));
    SL_CHECK_INT(feed_all(&r, b + 1, n - 1, &s), 0);
    SL_CHECK(sl_ws_reader_busy(&r)); /* fragmented message pending */
    SL_CHECK(sl_ws_reader_buffered(&r) >= 3);
    n = mkframe(b, SL_WS_OP_CONT, true, "d", 1, M, 0);
    SL_CHECK_INT(feed_all(&r, b, n, &s), 0);
    SL_CHECK(!sl_ws_reader_busy(&r));
    SL_CHECK_INT(s.n, 1);
    SL_CHECK(s.len[0] == 4 && memcmp(s.data[0], "abcd", 4) == 0);
    sl_ws_reader_free(&r);
}

/* A protocol error is final: feeding on (a connection closing cleanly
 * still reads) never parses the half-checked header (fuzz_e2e found a
 * 127-byte ping overflowing the control buffer that way). */
static void test_error_is_sticky(void)
{
    sl_ws_reader_t r;
    seen_t s = {0};
    sl_ws_reader_init(&r, true, 1 << 20);
    uint8_t hdr[2] = {0x89, 0x80 | 127}; /* ping, 64-bit length: refused */
    SL_CHECK_INT(feed_chunks(&r, hdr, 2, 1, &s), SL_WS_CLOSE_PROTOCOL);
    uint8_t rest[200];
    memset(rest, 0, sizeof(rest));
    rest[7] = 127;
    size_t used = 0;
    SL_CHECK_INT(sl_ws_reader_feed(&r, rest, sizeof(rest), &H, &s, &used), SL_WS_CLOSE_PROTOCOL);
    SL_CHECK_INT(used, sizeof(rest));
    SL_CHECK_INT(s.n, 0);
    sl_ws_reader_free(&r);
}

/* permessage-deflate: the compressed twin of a frame holds exactly its
 * compressed bytes (review r16 H1: it kept the uncompressed size, 900 KB
 * held for 894 bytes queued, so the output bounds saw 1/1000 of it). */
static void test_pmd_twin_exact_size(void)
{
    size_t n = 900000;
    sl_buf_t *b = sl_buf_new(SL_WS_MAX_HEADER + n);
    SL_CHECK(b != NULL);
    size_t h = sl_ws_encode_header(b->data, SL_WS_OP_TEXT, true, n, NULL);
    memset(b->data + h, 'a', n);
    b->len = (uint32_t)(h + n);
    uint64_t before = sl_buf_live_bytes;
    sl_buf_t *z = sl_pmd_compress_frame(b);
    SL_CHECK(z != NULL);
    SL_CHECK(z->len - z->start < 2000);
    SL_CHECK_INT(z->cap, z->len - z->start); /* no slack at all */
    SL_CHECK_INT(sl_buf_live_bytes - before, z->cap);
    SL_CHECK_INT(z->data[z->start], 0xC1);   /* FIN, RSV1, text */
    SL_CHECK(sl_pmd_memory() < 400 * 1024);  /* the scratch was given back */
    sl_buf_unref(z);
    sl_buf_unref(b);
}

int main(void)
{
    srand(42);
    SL_TEST_RUN(test_accept_key);
    SL_TEST_RUN(test_error_is_sticky);
    SL_TEST_RUN(test_encode_header);
    SL_TEST_RUN(test_mask_roundtrip);
    SL_TEST_RUN(test_close_codes);
    SL_TEST_RUN(test_rfc_examples);
    SL_TEST_RUN(test_split_invariance);
    SL_TEST_RUN(test_protocol_errors);
    SL_TEST_RUN(test_message_size);
    SL_TEST_RUN(test_utf8_in_reader);
    SL_TEST_RUN(test_close_then_ignore);
    SL_TEST_RUN(test_handler_stop);
    SL_TEST_RUN(test_busy);
    SL_TEST_RUN(test_pmd_twin_exact_size);
    return sl_test_summary();
}
