/*
 * fuzz_ws.c - the WebSocket reader (sl_ws_reader_feed).
 *
 * Property: the events (messages and control frames, with their payloads)
 * and the final verdict are the same whether the input is fed in one call,
 * in random pieces, byte by byte, or with the reader stopped after every
 * event and resumed from the byte it reports (back-pressure in conn.c).
 * Every text message delivered is valid UTF-8, every control payload at
 * most 125 bytes, no message larger than the limit.
 */
#include "sl_ws.h"

#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t n);

#define MAX_MSG 4096

typedef struct {
    uint8_t *log; /* op, u32 length, payload: for every event */
    size_t len, cap;
    bool stop_each;
} events_t;

static int record(events_t *e, int op, const uint8_t *d, size_t n)
{
    if (n > MAX_MSG)
        abort();
    if (op >= 8 && n > SL_WS_MAX_CONTROL)
        abort();
    if (op == SL_WS_OP_TEXT && !sl_utf8_valid(d, n))
        abort();
    if (e->len + 5 + n > e->cap) {
        size_t cap = (e->len + 5 + n) * 2;
        uint8_t *p = realloc(e->log, cap);
        if (p == NULL)
            abort();
        e->log = p;
        e->cap = cap;
    }
    e->log[e->len] = (uint8_t)op;
    uint32_t l = (uint32_t)n;
    memcpy(e->log + e->len + 1, &l, 4);
    if (n)
        memcpy(e->log + e->len + 5, d, n);
    e->len += 5 + n;
    return e->stop_each ? 1 : 0;
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

/* Feed `in` in pieces given by `split` (0: one call; 1: byte by byte;
 * otherwise pseudo-random sizes from the seed).  Returns the verdict. */
static int run(const uint8_t *in, size_t n, bool masked, int split, uint32_t seed,
               bool stop_each, events_t *e)
{
    sl_ws_reader_t r;
    sl_ws_reader_init(&r, masked, MAX_MSG);
    e->stop_each = stop_each;
    if (stop_each)
        r.frame_limit = 1 + seed % 4; /* and a frame budget, as conn.c sets one */
    int rc = 0;
    size_t pos = 0;
    while (pos < n && rc == 0 && !r.closed) {
        size_t k = n - pos;
        if (split == 1)
            k = 1;
        else if (split == 2) {
            seed = seed * 1103515245u + 12345u;
            k = SL_MIN(k, (size_t)(seed >> 16) % 97 + 1);
        }
        /* Resume from where the reader stopped, as many times as needed. */
        uint8_t *buf = malloc(k);
        if (buf == NULL)
            abort();
        memcpy(buf, in + pos, k);
        size_t off = 0;
        for (;;) {
            size_t used = 0;
            rc = sl_ws_reader_feed(&r, buf + off, k - off, &H, e, &used);
            if (used > k - off)
                abort();
            off += used;
            if (rc == 1 && stop_each && off < k && !r.closed) {
                rc = 0;
                r.frames = 0; /* the next turn's budget */
                continue;
            }
            if (stop_each)
                r.frames = 0;
            if (rc == 1 && stop_each)
                rc = 0;
            break;
        }
        free(buf);
        pos += k;
    }
    sl_ws_reader_free(&r);
    return rc;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t n)
{
    if (n < 1)
        return 0;
    bool masked = data[0] & 1;
    uint32_t seed = data[0];
    data++;
    n--;
    events_t a = {0}, b = {0}, c = {0}, d = {0};
    int ra = run(data, n, masked, 0, seed, false, &a);
    int rb = run(data, n, masked, 1, seed, false, &b);
    int rc = run(data, n, masked, 2, seed, false, &c);
    int rd = run(data, n, masked, 2, seed ^ 0x5a5a, true, &d);
    if (ra != rb || ra != rc || ra != rd)
        abort();
    if (a.len != b.len || a.len != c.len || a.len != d.len ||
        (a.len && (memcmp(a.log, b.log, a.len) || memcmp(a.log, c.log, a.len) ||
                   memcmp(a.log, d.log, a.len))))
        abort();
    free(a.log);
    free(b.log);
    free(c.log);
    free(d.log);
    return 0;
}
