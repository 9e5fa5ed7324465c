/*
 * sb_ws.c - the RFC 6455 client side: opening-handshake key and its check,
 * the frame encoder, the incremental frame decoder, the timing marker, and
 * the random source for keys and masks.
 *
 * The decoder is a state machine over (header, payload) that accepts input
 * cut anywhere.  A whole unfragmented frame inside the caller's buffer is
 * handed to the callback in place, without a copy: that is the case for
 * nearly every message in a benchmark.  Only a frame split across reads or
 * a fragmented message is assembled in d->buf (grown on demand and freed
 * when the message is out, so an idle connection holds no heap here);
 * control frames split across reads go to d->ctl (125 bytes), since they
 * may arrive between the fragments of a data message.
 *
 * Strictness (RFC 6455 5.2, 5.4, 5.5): reserved bits, unknown opcodes, a
 * masked server frame, a fragmented or >125-byte control frame, a
 * continuation with nothing to continue, a new data frame inside a
 * fragmented message, a non-minimal or 2^63+ length: all protocol errors.
 */
#include "sb.h"

#include <ctype.h>
#include <openssl/evp.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#define SB_WS_GUID "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

/* ---------------------------------------------------------------- rng */

/* xorshift64*: keys and masks need to be unpredictable to intermediaries,
 * not cryptographic; seeded from getrandom() in main. */
static uint64_t rng_state = 0x9E3779B97F4A7C15ull;

void sb_rand_seed(uint64_t s)
{
    rng_state = s ? s : 0x9E3779B97F4A7C15ull;
}

uint64_t sb_rand(void)
{
    uint64_t x = rng_state;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    rng_state = x;
    return x * 0x2545F4914F6CDD1Dull;
}

/* ---------------------------------------------------------- handshake */

void sb_ws_make_key(char out[25], uint64_t (*rnd)(void))
{
    unsigned char raw[16];
    uint64_t a = rnd(), b = rnd();
    memcpy(raw, &a, 8);
    memcpy(raw + 8, &b, 8);
    EVP_EncodeBlock((unsigned char *)out, raw, 16); /* 24 chars + NUL */
}

void sb_ws_accept_for(const char *key, char out[29])
{
    char buf[64 + sizeof(SB_WS_GUID)];
    size_t kl = strlen(key);
    if (kl > 64)
        kl = 64;
    memcpy(buf, key, kl);
    memcpy(buf + kl, SB_WS_GUID, sizeof(SB_WS_GUID) - 1);
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int mdlen = 0;
    out[0] = '\0';
    if (EVP_Digest(buf, kl + sizeof(SB_WS_GUID) - 1, md, &mdlen, EVP_sha1(), NULL) != 1 ||
        mdlen != 20)
        return;
    EVP_EncodeBlock((unsigned char *)out, md, 20); /* 28 chars + NUL */
}

/* Does the comma-separated header value contain token (case-insensitive)? */
static bool has_token(const char *v, size_t n, const char *token)
{
    size_t tl = strlen(token);
    size_t i = 0;
    while (i < n) {
        while (i < n && (v[i] == ' ' || v[i] == '\t' || v[i] == ','))
            i++;
        size_t s = i;
        while (i < n && v[i] != ',')
            i++;
        size_t e = i;
        while (e > s && (v[e - 1] == ' ' || v[e - 1] == '\t'))
            e--;
        if (e - s == tl && strncasecmp(v + s, token, tl) == 0)
            return true;
    }
    return false;
}

int sb_ws_check_response(const char *head, size_t len, const char *accept)
{
    /* Status line: HTTP/1.1 SP 3DIGIT SP reason CRLF */
    if (len < 12 || memcmp(head, "HTTP/1.", 7) != 0 || head[8] != ' ')
        return -1;
    int status = 0;
    for (int i = 9; i < 12; i++) {
        if (head[i] < '0' || head[i] > '9')
            return -1;
        status = status * 10 + (head[i] - '0');
    }
    if (status != 101)
        return status;
    bool upgrade = false, connection = false, accepted = false, bad_accept = false;
    const char *p = memchr(head, '\n', len);
    const char *end = head + len;
    while (p && p + 1 < end) {
        const char *line = p + 1;
        const char *eol = memchr(line, '\n', (size_t)(end - line));
        if (!eol)
            break;
        const char *le = eol;
        if (le > line && le[-1] == '\r')
            le--;
        const char *colon = memchr(line, ':', (size_t)(le - line));
        if (colon) {
            size_t nl = (size_t)(colon - line);
            const char *v = colon + 1;
            while (v < le && (*v == ' ' || *v == '\t'))
                v++;
            size_t vl = (size_t)(le - v);
            while (vl > 0 && (v[vl - 1] == ' ' || v[vl - 1] == '\t'))
                vl--;
            if (nl == 7 && strncasecmp(line, "upgrade", 7) == 0)
                upgrade = has_token(v, vl, "websocket");
            else if (nl == 10 && strncasecmp(line, "connection", 10) == 0)
                connection = connection || has_token(v, vl, "upgrade");
            else if (nl == 20 && strncasecmp(line, "sec-websocket-accept", 20) == 0) {
                if (vl == strlen(accept) && memcmp(v, accept, vl) == 0)
                    accepted = true;
                else
                    bad_accept = true;
            }
        }
        p = eol;
    }
    if (bad_accept)
        return -2;
    if (!upgrade || !connection || !accepted)
        return -1;
    return 0;
}

/* ------------------------------------------------------------- frames */

size_t sb_ws_header(uint8_t *out, unsigned opcode, bool fin, uint64_t len, const uint8_t *mask)
{
    size_t n = 2;
    uint8_t m = mask ? 0x80 : 0;
    out[0] = (uint8_t)((fin ? 0x80 : 0) | (opcode & 0x0F));
    if (len < 126) {
        out[1] = (uint8_t)(m | len);
    } else if (len <= 0xFFFF) {
        out[1] = m | 126;
        out[2] = (uint8_t)(len >> 8);
        out[3] = (uint8_t)len;
        n = 4;
    } else {
        out[1] = m | 127;
        for (int i = 0; i < 8; i++)
            out[2 + i] = (uint8_t)(len >> (56 - 8 * i));
        n = 10;
    }
    if (mask) {
        memcpy(out + n, mask, 4);
        n += 4;
    }
    return n;
}

void sb_ws_mask(uint8_t *p, size_t n, const uint8_t mask[4], uint64_t pos)
{
    size_t i = 0;
    /* Byte-wise up to a mask boundary, then 8 bytes at a time with the key
     * rotated to the current offset. */
    while (i < n && ((pos + i) & 3) != 0) {
        p[i] ^= mask[(pos + i) & 3];
        i++;
    }
    if (n - i >= 8) {
        uint32_t m32;
        memcpy(&m32, mask, 4);
        uint64_t m64 = ((uint64_t)m32 << 32) | m32;
        for (; n - i >= 8; i += 8) {
            uint64_t w;
            memcpy(&w, p + i, 8);
            w ^= m64;
            memcpy(p + i, &w, 8);
        }
    }
    for (; i < n; i++)
        p[i] ^= mask[(pos + i) & 3];
}

size_t sb_ws_encode(uint8_t *out, unsigned opcode, bool fin, const void *payload, size_t len,
                    const uint8_t *mask)
{
    size_t h = sb_ws_header(out, opcode, fin, len, mask);
    if (len)
        memcpy(out + h, payload, len);
    if (mask)
        sb_ws_mask(out + h, len, mask, 0);
    return h + len;
}

/* The extension answer: does a Sec-WebSocket-Extensions line of the
 * response head accept permessage-deflate, and with which context mode. */
int sb_ws_response_pmd(const char *head, size_t len)
{
    static const char NAME[] = "sec-websocket-extensions:";
    const char *p = head, *end = head + len;
    while (p < end) {
        const char *eol = memchr(p, '\n', (size_t)(end - p));
        const char *le = eol ? eol : end;
        size_t ll = (size_t)(le - p);
        if (ll > sizeof(NAME) - 1 && strncasecmp(p, NAME, sizeof(NAME) - 1) == 0) {
            char v[512];
            size_t vl = ll - (sizeof(NAME) - 1);
            if (vl >= sizeof(v))
                vl = sizeof(v) - 1;
            memcpy(v, p + sizeof(NAME) - 1, vl);
            v[vl] = '\0';
            for (char *q = v; *q; q++)
                *q = (char)tolower((unsigned char)*q);
            if (strstr(v, "permessage-deflate"))
                return strstr(v, "server_no_context_takeover") ? 1 : 2;
        }
        p = le + 1;
    }
    return 0;
}

/* -------------------------------------------------------------- decoder */

void sb_ws_dec_free(struct sb_ws_dec *d)
{
    free(d->buf);
    free(d->ctl);
    d->buf = d->ctl = NULL;
    d->len = d->cap = 0;
}

/* Header length implied by its first two bytes. */
static uint8_t header_need(const uint8_t *h)
{
    uint8_t l7 = h[1] & 0x7F;
    uint8_t n = 2 + (l7 == 126 ? 2 : l7 == 127 ? 8 : 0);
    return (uint8_t)(n + ((h[1] & 0x80) ? 4 : 0));
}

/* Validates a complete header and loads it into d. */
static int header_parse(struct sb_ws_dec *d, const uint8_t *h)
{
    uint8_t op = h[0] & 0x0F;
    bool fin = (h[0] & 0x80) != 0, masked = (h[1] & 0x80) != 0;
    /* RSV2/3: no extension uses them.  RSV1: permessage-deflate, only when
     * negotiated and only on a data message's first frame (RFC 7692 6). */
    if (h[0] & 0x30)
        return SB_WS_PROTOCOL_ERROR;
    bool rsv1 = (h[0] & 0x40) != 0;
    if (rsv1 && (!d->allow_rsv1 || !(op == SB_OP_TEXT || op == SB_OP_BIN)))
        return SB_WS_PROTOCOL_ERROR;
    if (masked != (d->expect_masked != 0))
        return SB_WS_PROTOCOL_ERROR;
    uint64_t len = h[1] & 0x7F;
    size_t at = 2;
    if (len == 126) {
        len = ((uint64_t)h[2] << 8) | h[3];
        if (len < 126)
            return SB_WS_PROTOCOL_ERROR;
        at = 4;
    } else if (len == 127) {
        len = 0;
        for (int i = 0; i < 8; i++)
            len = (len << 8) | h[2 + i];
        if (len >> 63 || len <= 0xFFFF)
            return SB_WS_PROTOCOL_ERROR;
        at = 10;
    }
    if (op & 0x08) {
        if (op > SB_OP_PONG || !fin || len > 125)
            return SB_WS_PROTOCOL_ERROR;
    } else if (op == SB_OP_CONT) {
        if (!d->msg_op)
            return SB_WS_PROTOCOL_ERROR;
    } else if (op == SB_OP_TEXT || op == SB_OP_BIN) {
        if (d->msg_op)
            return SB_WS_PROTOCOL_ERROR;
    } else {
        return SB_WS_PROTOCOL_ERROR;
    }
    if (!(op & 0x08) && d->len + len > SB_WS_MAX_MESSAGE)
        return SB_WS_PROTOCOL_ERROR;
    d->op = op;
    d->fin = fin;
    d->rsv1 = rsv1;
    d->masked = masked;
    if (masked)
        memcpy(d->mask, h + at, 4);
    d->left = len;
    d->pos = 0;
    d->in_payload = 1;
    return 0;
}

static int buf_append(struct sb_ws_dec *d, const uint8_t *p, size_t n)
{
    if (d->len + n > d->cap) {
        size_t cap = d->cap ? d->cap : 256;
        while (cap < d->len + n)
            cap *= 2;
        uint8_t *nb = realloc(d->buf, cap);
        if (!nb)
            return SB_WS_PROTOCOL_ERROR;
        d->buf = nb;
        d->cap = cap;
    }
    memcpy(d->buf + d->len, p, n);
    d->len += n;
    return 0;
}

/* The current frame's payload is complete: deliver what is due. */
static int frame_done(struct sb_ws_dec *d, uint8_t *direct, size_t dlen, sb_ws_msg_fn fn, void *ctx)
{
    d->in_payload = 0;
    d->hlen = 0;
    if (d->op & 0x08) {
        uint8_t *pl = direct ? direct : d->ctl;
        size_t n = direct ? dlen : d->ctl_len;
        d->ctl_len = 0;
        return fn(ctx, d->op, pl, n);
    }
    if (direct) /* an unfragmented frame wholly inside the input */
        return fn(ctx, d->op | (d->rsv1 ? SB_WS_COMPRESSED : 0u), direct, dlen);
    if (d->op != SB_OP_CONT) {
        d->msg_op = d->op;
        d->msg_rsv1 = d->rsv1;
    }
    if (!d->fin)
        return 0;
    unsigned op = d->msg_op | (d->msg_rsv1 ? SB_WS_COMPRESSED : 0u);
    d->msg_op = 0;
    d->msg_rsv1 = 0;
    /* Hand out the assembled message, then drop the buffer so idle
     * connections hold nothing; a callback that keeps data must copy. */
    uint8_t *b = d->buf;
    size_t n = d->len;
    d->buf = NULL;
    d->len = d->cap = 0;
    int rc = fn(ctx, op, b ? b : (uint8_t *)"", n);
    free(b);
    return rc;
}

int sb_ws_feed(struct sb_ws_dec *d, uint8_t *p, size_t n, sb_ws_msg_fn fn, void *ctx)
{
    for (;;) {
        if (!d->in_payload) {
            if (n == 0)
                return 0;
            if (d->hlen == 0 && n >= 2 && n >= header_need(p)) {
                /* Fast path: the whole header is in the input. */
                uint8_t hn = header_need(p);
                int rc = header_parse(d, p);
                if (rc)
                    return rc;
                p += hn;
                n -= hn;
            } else {
                /* Collect the header byte by byte across reads. */
                while (n > 0 && (d->hlen < 2 || d->hlen < d->hneed)) {
                    d->hdr[d->hlen++] = *p++;
                    n--;
                    if (d->hlen == 2)
                        d->hneed = header_need(d->hdr);
                }
                if (d->hlen < 2 || d->hlen < d->hneed)
                    return 0;
                int rc = header_parse(d, d->hdr);
                if (rc)
                    return rc;
            }
        }
        /* Payload of the current frame (possibly empty). */
        size_t take = d->left < n ? (size_t)d->left : n;
        bool whole = take == d->left;
        if (d->op & 0x08) {
            if (whole && d->ctl_len == 0) {
                if (d->masked)
                    sb_ws_mask(p, take, d->mask, 0);
                int rc = frame_done(d, p, take, fn, ctx);
                p += take;
                n -= take;
                if (rc)
                    return rc;
                continue;
            }
            if (!d->ctl && !(d->ctl = malloc(125)))
                return SB_WS_PROTOCOL_ERROR;
            memcpy(d->ctl + d->ctl_len, p, take);
            if (d->masked)
                sb_ws_mask(d->ctl + d->ctl_len, take, d->mask, d->pos);
            d->ctl_len = (uint8_t)(d->ctl_len + take);
        } else {
            if (whole && d->op != SB_OP_CONT && d->fin && d->len == 0 && d->pos == 0) {
                if (d->masked)
                    sb_ws_mask(p, take, d->mask, 0);
                int rc = frame_done(d, p, take, fn, ctx);
                p += take;
                n -= take;
                if (rc)
                    return rc;
                continue;
            }
            size_t was = d->len;
            if (take && buf_append(d, p, take))
                return SB_WS_PROTOCOL_ERROR;
            if (d->masked)
                sb_ws_mask(d->buf + was, take, d->mask, d->pos);
        }
        p += take;
        n -= take;
        d->left -= take;
        d->pos += take;
        if (d->left > 0)
            return 0; /* input exhausted inside the payload */
        int rc = frame_done(d, NULL, 0, fn, ctx);
        if (rc)
            return rc;
    }
}

/* -------------------------------------------------------------- marker */

static void put_digits(char *out, uint64_t v, int width)
{
    for (int i = width - 1; i >= 0; i--) {
        out[i] = (char)('0' + v % 10);
        v /= 10;
    }
}

void sb_mark_write(char *out, uint64_t t_us, uint32_t sender, uint64_t seq)
{
    out[0] = 'T';
    put_digits(out + 1, t_us, 16);
    out[17] = 'P';
    put_digits(out + 18, sender, 5);
    out[23] = 'S';
    put_digits(out + 24, seq, 10);
}

static bool digits(const uint8_t *p, int width, uint64_t *v)
{
    uint64_t x = 0;
    for (int i = 0; i < width; i++) {
        unsigned c = (unsigned)p[i] - '0';
        if (c > 9)
            return false;
        x = x * 10 + c;
    }
    *v = x;
    return true;
}

int sb_mark_find(const uint8_t *p, size_t n, struct sb_mark *m, size_t *at)
{
    const uint8_t *s = p, *end = p + n;
    while (end - s >= SB_MARK_LEN) {
        const uint8_t *t = memchr(s, 'T', (size_t)(end - s) - SB_MARK_LEN + 1);
        if (!t)
            return -1;
        uint64_t ts, snd, seq;
        if (t[17] == 'P' && t[23] == 'S' && digits(t + 1, 16, &ts) && digits(t + 18, 5, &snd) &&
            digits(t + 24, 10, &seq)) {
            m->t_us = ts;
            m->sender = (uint32_t)snd;
            m->seq = seq;
            if (at)
                *at = (size_t)(t - p);
            return 0;
        }
        s = t + 1;
    }
    return -1;
}
