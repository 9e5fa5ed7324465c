/*
 * sb_selftest.c - `sente-bench --self-test`: checks of the parts that can
 * be checked without a server: the frame encoder and decoder (the three
 * length forms both ways, fragmentation with interleaved control frames,
 * input cut at every byte boundary, protocol errors), the handshake check,
 * the timing marker, the histogram, the raw result JSON round trip and the
 * barrier aggregator.  Prints "self-test: N passed, M failed"; exits
 * non-zero when anything failed.
 */
#include "sb.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int passed, failed;

#define CHECK(cond, ...)                                                                           \
    do {                                                                                           \
        if (cond) {                                                                                \
            passed++;                                                                              \
        } else {                                                                                   \
            failed++;                                                                              \
            fprintf(stderr, "self-test: FAIL %s:%d: ", __FILE__, __LINE__);                        \
            fprintf(stderr, __VA_ARGS__);                                                          \
            fputc('\n', stderr);                                                                   \
        }                                                                                          \
    } while (0)

/* --------------------------------------------------------- collecting */

#define MAXGOT 32

struct got {
    int n;
    unsigned op[MAXGOT];
    uint8_t *data[MAXGOT];
    size_t len[MAXGOT];
};

static int collect(void *ctx, unsigned op, uint8_t *d, size_t n)
{
    struct got *g = ctx;
    if (g->n >= MAXGOT)
        return 1;
    g->op[g->n] = op;
    g->data[g->n] = malloc(n ? n : 1);
    memcpy(g->data[g->n], d, n);
    g->len[g->n] = n;
    g->n++;
    return 0;
}

static void got_free(struct got *g)
{
    for (int i = 0; i < g->n; i++)
        free(g->data[i]);
    g->n = 0;
}

struct want {
    unsigned op;
    const uint8_t *data;
    size_t len;
};

static bool got_matches(const struct got *g, const struct want *w, int nw)
{
    if (g->n != nw)
        return false;
    for (int i = 0; i < nw; i++)
        if (g->op[i] != w[i].op || g->len[i] != w[i].len ||
            (w[i].len && memcmp(g->data[i], w[i].data, w[i].len) != 0))
            return false;
    return true;
}

/* Decodes buf cut into pieces at the given offsets (each piece a fresh
 * copy, since decoding unmasks in place). Returns the feed status. */
static int decode_cuts(const uint8_t *buf, size_t n, const size_t *cuts, int ncuts,
                       bool expect_masked, struct got *g)
{
    struct sb_ws_dec d;
    memset(&d, 0, sizeof(d));
    d.expect_masked = expect_masked;
    uint8_t *copy = malloc(n ? n : 1);
    memcpy(copy, buf, n);
    size_t at = 0;
    int rc = 0;
    for (int i = 0; i <= ncuts && rc == 0; i++) {
        size_t to = i < ncuts ? cuts[i] : n;
        rc = sb_ws_feed(&d, copy + at, to - at, collect, g);
        at = to;
    }
    sb_ws_dec_free(&d);
    free(copy);
    return rc;
}

static int decode_bytewise(const uint8_t *buf, size_t n, bool expect_masked, struct got *g)
{
    struct sb_ws_dec d;
    memset(&d, 0, sizeof(d));
    d.expect_masked = expect_masked;
    uint8_t *copy = malloc(n ? n : 1);
    memcpy(copy, buf, n);
    int rc = 0;
    for (size_t i = 0; i < n && rc == 0; i++)
        rc = sb_ws_feed(&d, copy + i, 1, collect, g);
    sb_ws_dec_free(&d);
    free(copy);
    return rc;
}

static uint8_t *pattern(size_t n, unsigned seed)
{
    uint8_t *p = malloc(n ? n : 1);
    for (size_t i = 0; i < n; i++)
        p[i] = (uint8_t)(i * 131 + seed);
    return p;
}

/* ------------------------------------------------------------- frames */

static void test_length_forms(void)
{
    static const size_t lens[] = {0, 1, 125, 126, 127, 1000, 65535, 65536, 70000};
    for (size_t k = 0; k < sizeof(lens) / sizeof(lens[0]); k++) {
        size_t len = lens[k];
        uint8_t *pl = pattern(len, (unsigned)k);
        uint8_t *frame = malloc(len + SB_WS_MAX_HEADER);
        for (int masked = 0; masked < 2; masked++) {
            uint8_t mask[4] = {0x37, 0xFA, 0x21, 0x3D};
            size_t fl = sb_ws_encode(frame, SB_OP_TEXT, true, pl, len, masked ? mask : NULL);
            uint8_t l7 = frame[1] & 0x7F;
            size_t hl = (len < 126 ? 2 : len <= 0xFFFF ? 4 : 10) + (masked ? 4 : 0);
            CHECK(fl == hl + len, "frame size %zu for payload %zu", fl, len);
            CHECK(frame[0] == 0x81, "first byte %02x", frame[0]);
            CHECK(((frame[1] & 0x80) != 0) == (masked != 0), "mask bit, len %zu", len);
            CHECK(len < 126       ? l7 == len
                  : len <= 0xFFFF ? l7 == 126
                                  : l7 == 127,
                  "length form for %zu: %u", len, l7);
            if (masked && len >= 8)
                CHECK(memcmp(frame + hl, pl, 8) != 0, "payload masked, len %zu", len);
            struct want w = {SB_OP_TEXT, pl, len};
            struct got g = {0};
            int rc = decode_cuts(frame, fl, NULL, 0, masked, &g);
            CHECK(rc == 0 && got_matches(&g, &w, 1), "decode len %zu masked %d", len, masked);
            got_free(&g);
            rc = decode_bytewise(frame, fl, masked, &g);
            CHECK(rc == 0 && got_matches(&g, &w, 1), "bytewise len %zu masked %d", len, masked);
            got_free(&g);
            /* Every cut within the header and at the payload edges. */
            bool ok = true;
            for (size_t c = 1; c < fl && ok; c++) {
                if (c > hl + 16 && c + 16 < fl)
                    continue;
                rc = decode_cuts(frame, fl, &c, 1, masked, &g);
                ok = rc == 0 && got_matches(&g, &w, 1);
                got_free(&g);
            }
            CHECK(ok, "two-piece cuts, len %zu masked %d", len, masked);
        }
        free(frame);
        free(pl);
    }
}

/* A server stream with every kind of frame, cut at every byte boundary. */
static void test_stream_cuts(void)
{
    uint8_t s[2048];
    size_t n = 0;
    uint8_t *bin = pattern(300, 7);
    n += sb_ws_encode(s + n, SB_OP_TEXT, true, "hello", 5, NULL);
    n += sb_ws_encode(s + n, SB_OP_PING, true, "p", 1, NULL);
    n += sb_ws_encode(s + n, SB_OP_BIN, true, bin, 300, NULL);
    n += sb_ws_encode(s + n, SB_OP_TEXT, false, "Hel", 3, NULL);
    n += sb_ws_encode(s + n, SB_OP_PING, true, "x", 1, NULL);
    n += sb_ws_encode(s + n, SB_OP_CONT, false, "lo", 2, NULL);
    n += sb_ws_encode(s + n, SB_OP_PONG, true, "", 0, NULL);
    n += sb_ws_encode(s + n, SB_OP_CONT, true, " world", 6, NULL);
    n += sb_ws_encode(s + n, SB_OP_TEXT, true, "", 0, NULL);
    n += sb_ws_encode(s + n, SB_OP_BIN, false, "", 0, NULL);
    n += sb_ws_encode(s + n, SB_OP_CONT, true, "z", 1, NULL);
    n += sb_ws_encode(s + n, SB_OP_CLOSE, true, "\x03\xe8", 2, NULL);
    const struct want w[] = {
        {SB_OP_TEXT, (const uint8_t *)"hello", 5},
        {SB_OP_PING, (const uint8_t *)"p", 1},
        {SB_OP_BIN, bin, 300},
        {SB_OP_PING, (const uint8_t *)"x", 1},
        {SB_OP_PONG, (const uint8_t *)"", 0},
        {SB_OP_TEXT, (const uint8_t *)"Hello world", 11},
        {SB_OP_TEXT, (const uint8_t *)"", 0},
        {SB_OP_BIN, (const uint8_t *)"z", 1},
        {SB_OP_CLOSE, (const uint8_t *)"\x03\xe8", 2},
    };
    int nw = (int)(sizeof(w) / sizeof(w[0]));
    struct got g = {0};
    int rc = decode_cuts(s, n, NULL, 0, false, &g);
    CHECK(rc == 0 && got_matches(&g, w, nw), "whole stream: rc %d, %d messages", rc, g.n);
    got_free(&g);
    rc = decode_bytewise(s, n, false, &g);
    CHECK(rc == 0 && got_matches(&g, w, nw), "stream byte by byte");
    got_free(&g);
    int bad = 0;
    for (size_t c = 1; c < n; c++) {
        rc = decode_cuts(s, n, &c, 1, false, &g);
        if (rc != 0 || !got_matches(&g, w, nw))
            bad++;
        got_free(&g);
    }
    CHECK(bad == 0, "stream cut at every boundary: %d of %zu cuts wrong", bad, n - 1);
    /* Three pieces: every pair of cuts (n^2/2 decodes of ~400 bytes). */
    bad = 0;
    for (size_t c1 = 1; c1 < n; c1 += 3)
        for (size_t c2 = c1 + 1; c2 < n; c2++) {
            size_t cuts[2] = {c1, c2};
            rc = decode_cuts(s, n, cuts, 2, false, &g);
            if (rc != 0 || !got_matches(&g, w, nw))
                bad++;
            got_free(&g);
        }
    CHECK(bad == 0, "stream cut in three pieces: %d wrong", bad);

    /* The same messages as a client sends them (masked), decoded by the
     * server side of the decoder, at every cut. */
    uint8_t m[2048];
    size_t mn = 0;
    uint8_t mask[4] = {1, 2, 3, 4};
    mn += sb_ws_encode(m + mn, SB_OP_TEXT, false, "Hel", 3, mask);
    mn += sb_ws_encode(m + mn, SB_OP_PING, true, "x", 1, mask);
    mn += sb_ws_encode(m + mn, SB_OP_CONT, true, "lo world", 8, mask);
    const struct want wm[] = {{SB_OP_PING, (const uint8_t *)"x", 1},
                              {SB_OP_TEXT, (const uint8_t *)"Hello world", 11}};
    bad = 0;
    for (size_t c = 1; c < mn; c++) {
        rc = decode_cuts(m, mn, &c, 1, true, &g);
        if (rc != 0 || !got_matches(&g, wm, 2))
            bad++;
        got_free(&g);
    }
    CHECK(bad == 0, "masked fragmented stream at every cut: %d wrong", bad);
    free(bin);
}

static void test_errors(void)
{
    static const struct {
        const char *what;
        uint8_t b[24];
        size_t n;
        bool masked;
    } cases[] = {
        {"masked server frame", {0x81, 0x81, 1, 2, 3, 4, 'a'}, 7, false},
        {"unmasked client frame", {0x81, 0x01, 'a'}, 3, true},
        {"reserved bit", {0xC1, 0x00}, 2, false},
        {"reserved opcode 3", {0x83, 0x00}, 2, false},
        {"reserved opcode 11", {0x8B, 0x00}, 2, false},
        {"fragmented ping", {0x09, 0x00}, 2, false},
        {"control frame over 125", {0x89, 0x7E, 0x00, 0x7E}, 4, false},
        {"continuation without start", {0x80, 0x00}, 2, false},
        {"text inside fragmented message", {0x01, 0x01, 'a', 0x81, 0x01, 'b'}, 6, false},
        {"64-bit length with top bit", {0x82, 0x7F, 0x80, 0, 0, 0, 0, 0, 0, 0}, 10, false},
        {"non-minimal 16-bit length", {0x81, 0x7E, 0x00, 0x05, 'a', 'b', 'c', 'd', 'e'}, 9, false},
        {"non-minimal 64-bit length", {0x82, 0x7F, 0, 0, 0, 0, 0, 0, 0, 0x10}, 10, false},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        struct got g = {0};
        int rc = decode_cuts(cases[i].b, cases[i].n, NULL, 0, cases[i].masked, &g);
        CHECK(rc == SB_WS_PROTOCOL_ERROR, "%s not refused (rc %d)", cases[i].what, rc);
        got_free(&g);
        rc = decode_bytewise(cases[i].b, cases[i].n, cases[i].masked, &g);
        CHECK(rc == SB_WS_PROTOCOL_ERROR, "%s not refused byte by byte (rc %d)", cases[i].what, rc);
        got_free(&g);
    }
}

static void test_mask(void)
{
    uint8_t mask[4] = {0xA1, 0x5B, 0x07, 0xEE};
    bool ok = true;
    for (size_t pos = 0; pos < 8; pos++)
        for (size_t n = 0; n < 40; n++) {
            uint8_t *a = pattern(n, 3), *b = pattern(n, 3);
            sb_ws_mask(a, n, mask, pos);
            for (size_t i = 0; i < n; i++)
                b[i] ^= mask[(pos + i) & 3];
            ok = ok && memcmp(a, b, n) == 0;
            free(a);
            free(b);
        }
    CHECK(ok, "word-wise masking equals byte-wise at every offset");
}

/* ---------------------------------------------------------- handshake */

static void test_handshake(void)
{
    char acc[29];
    sb_ws_accept_for("dGhlIHNhbXBsZSBub25jZQ==", acc);
    CHECK(strcmp(acc, "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=") == 0, "RFC 6455 example accept: %s", acc);
    char key[25];
    sb_ws_make_key(key, sb_rand);
    CHECK(strlen(key) == 24 && key[22] == '=' && key[23] == '=', "key shape: %s", key);
    char key2[25];
    sb_ws_make_key(key2, sb_rand);
    CHECK(strcmp(key, key2) != 0, "keys differ");

    const char *ok = "HTTP/1.1 101 Switching Protocols\r\nUpgrade: WebSocket\r\n"
                     "connection: keep-alive, Upgrade\r\n"
                     "Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n";
    CHECK(sb_ws_check_response(ok, strlen(ok), "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=") == 0,
          "valid 101 accepted");
    CHECK(sb_ws_check_response(ok, strlen(ok), "AAAALMBiTxaQ9kYGzzhZRbK+xOo=") == -2,
          "wrong accept refused");
    const char *r503 = "HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n";
    CHECK(sb_ws_check_response(r503, strlen(r503), acc) == 503, "503 reported");
    const char *noup = "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\n"
                       "Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n";
    CHECK(sb_ws_check_response(noup, strlen(noup), acc) == -1, "missing Upgrade refused");
    CHECK(sb_ws_check_response("garbage\r\n\r\n", 11, acc) == -1, "garbage refused");
}

/* ------------------------------------------------------------- marker */

static void test_marker(void)
{
    char buf[200];
    char mark[SB_MARK_LEN + 1];
    sb_mark_write(mark, 1234567890123456ull, 42, 9876543210ull);
    mark[SB_MARK_LEN] = '\0';
    snprintf(buf, sizeof(buf),
             "{\"type\":\"channel-message\",\"seq\":7,\"data\":\"T12%sxxxx\",\"T\":1}", mark);
    struct sb_mark m;
    size_t at = 0;
    int rc = sb_mark_find((const uint8_t *)buf, strlen(buf), &m, &at);
    CHECK(rc == 0 && m.t_us == 1234567890123456ull && m.sender == 42 && m.seq == 9876543210ull,
          "marker found after a decoy");
    CHECK(rc == 0 && memcmp(buf + at, mark, SB_MARK_LEN) == 0, "marker offset");
    CHECK(sb_mark_find((const uint8_t *)buf, at + SB_MARK_LEN - 1, &m, NULL) == -1,
          "truncated marker not found");
    CHECK(sb_mark_find((const uint8_t *)"{\"type\":\"welcome\"}", 18, &m, NULL) == -1,
          "no marker in a welcome");
}

/* ---------------------------------------------------------- histogram */

static void test_hist(void)
{
    struct sb_hist *h = malloc(sizeof(*h)), *h2 = malloc(sizeof(*h2));
    sb_hist_init(h);
    bool mono = true, bound = true;
    int last = -1;
    for (uint64_t v = 0; v < 200000000; v = v < 1000 ? v + 1 : v + v / 97) {
        int i = sb_hist_index(v);
        mono = mono && i >= last;
        last = i;
        uint64_t up = sb_hist_upper(i);
        if (v < 134000000)
            bound = bound && up >= v && (double)(up - v) <= (double)v / 64.0 + 1;
    }
    CHECK(mono, "bucket index is monotonic");
    CHECK(bound, "bucket upper bound within 1/64 of the value");
    CHECK(sb_hist_index(100000000) < SB_HIST_BUCKETS - 1, "100 s is below the last bucket");
    for (uint64_t v = 1; v <= 10000; v++)
        sb_hist_add(h, v);
    uint64_t p50 = sb_hist_percentile(h, 50), p99 = sb_hist_percentile(h, 99);
    CHECK(p50 >= 5000 && p50 <= 5000 + 5000 / 64 + 1, "p50 of 1..10000: %llu",
          (unsigned long long)p50);
    CHECK(p99 >= 9900 && p99 <= 9900 + 9900 / 64 + 1, "p99 of 1..10000: %llu",
          (unsigned long long)p99);
    CHECK(sb_hist_percentile(h, 100) == 10000 && h->min == 1, "max and min exact");
    sb_hist_init(h2);
    sb_hist_add(h2, 50000);
    sb_hist_merge(h2, h);
    CHECK(h2->count == 10001 && h2->max == 50000 && h2->min == 1, "merge");
    free(h);
    free(h2);
}

/* ---------------------------------------------------- result and agg */

static void test_result_json(void)
{
    struct sb_result *a = malloc(sizeof(*a)), *b = malloc(sizeof(*b));
    sb_result_init(a);
    a->published = 12345;
    a->delivered = 999999;
    a->t_go = 1234567890123;
    a->cpu_user = 1.25;
    a->dup_checked = 1;
    for (uint64_t v = 1; v < 5000; v += 7)
        sb_hist_add(&a->hist, v);
    char *j = sb_result_raw_json(a);
    int rc = sb_result_parse_raw(j, b);
    free(j);
    CHECK(rc == 0 && b->published == 12345 && b->delivered == 999999 && b->t_go == 1234567890123 &&
              b->cpu_user == 1.25 && b->dup_checked == 1,
          "raw JSON round trip of counts");
    CHECK(rc == 0 && memcmp(a->hist.b, b->hist.b, sizeof(a->hist.b)) == 0 &&
              a->hist.count == b->hist.count && a->hist.max == b->hist.max,
          "raw JSON round trip of buckets");
    sb_result_merge(b, a);
    CHECK(b->published == 24690 && b->t_go == 1234567890123 && b->hist.count == 2 * a->hist.count,
          "merge adds counts, keeps the earliest start");
    free(a);
    free(b);
}

static void test_agg(void)
{
    struct sb_config cfg;
    memset(&cfg, 0, sizeof(cfg));
    cfg.mode = SB_FANOUT;
    cfg.subscribers = 4;
    struct sb_agg a;
    char out[256];
    sb_agg_init(&a, &cfg, 2);
    sb_agg_line(&a, 0, "READY 2 0 1 0", out, sizeof(out));
    CHECK(out[0] == '\0', "no GO before every process is ready");
    sb_agg_line(&a, 1, "READY 2 0 0 0", out, sizeof(out));
    CHECK(strcmp(out, "GO\n") == 0, "GO once all are ready: %s", out);
    sb_agg_line(&a, 0, "STOPPED 5", out, sizeof(out));
    sb_agg_line(&a, 1, "STOPPED 7", out, sizeof(out));
    CHECK(strcmp(out, "TOTAL 12\n") == 0, "TOTAL sums: %s", out);
    sb_agg_line(&a, 0, "DRAINED", out, sizeof(out));
    sb_agg_line(&a, 1, NULL, out, sizeof(out));
    CHECK(strcmp(out, "FINISH\n") == 0, "a process gone counts as drained: %s", out);
    sb_agg_free(&a);
    sb_agg_init(&a, &cfg, 2);
    sb_agg_line(&a, 0, "READY 0 2 1 0", out, sizeof(out));
    sb_agg_line(&a, 1, "READY 0 2 0 0", out, sizeof(out));
    CHECK(strcmp(out, "ABORT\n") == 0, "no subscriber at all aborts: %s", out);
    sb_agg_free(&a);
}

int sb_selftest(void)
{
    test_length_forms();
    test_stream_cuts();
    test_errors();
    test_mask();
    test_handshake();
    test_marker();
    test_hist();
    test_result_json();
    test_agg();
    printf("self-test: %d passed, %d failed\n", passed, failed);
    return failed ? 1 : 0;
}
