/*
 * pmd.c - permessage-deflate (sl_pmd.h).
 *
 * One deflate and one inflate stream per process, created at first use and
 * reset for every message (no context takeover either way): a connection
 * holds no zlib state at all, whether it compresses or not.  The deflate
 * stream (window 2^15, memLevel 8: about 268 KiB) and the inflate stream
 * (about 44 KiB) are the whole cost, per worker.
 */
#include "sl_pmd.h"
#include "sl_ws.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <zlib.h>

static z_stream zd, zi;
static bool zd_ready, zi_ready;
/* Deflate's output before it is copied into a buffer of its exact size;
 * kept between messages up to SL_PMD_SCRATCH_KEEP, freed after a larger one. */
static uint8_t *zscratch;
static size_t zscratch_cap;
#define SL_PMD_SCRATCH_KEEP (64u * 1024)

size_t sl_pmd_memory(void)
{
    /* zlib's own figures: deflate (1 << (windowBits + 2)) + (1 << (memLevel
     * + 9)) plus ~6 KiB; inflate 1 << windowBits plus ~7 KiB. */
    return (zd_ready ? (1u << 17) + (1u << 17) + 6 * 1024 : 0) +
           (zi_ready ? (1u << 15) + 7 * 1024 : 0) + zscratch_cap;
}

/* ----------------------------------------------------------- negotiation */

static bool is_token(const char *p, size_t n, const char *t)
{
    return n == strlen(t) && strncasecmp(p, t, n) == 0;
}

static const char *trim(const char *p, const char *end, const char **tend)
{
    while (p < end && (*p == ' ' || *p == '\t'))
        p++;
    while (end > p && (end[-1] == ' ' || end[-1] == '\t'))
        end--;
    *tend = end;
    return p;
}

/* A window-bits value: 8..15, digits only (quotes allowed, RFC 7692 7.1.2.1
 * via RFC 6455's quoted-string). */
static int window_bits(const char *v, const char *vend)
{
    if (vend - v >= 2 && v[0] == '"' && vend[-1] == '"') {
        v++;
        vend--;
    }
    if (vend - v < 1 || vend - v > 2)
        return -1;
    int n = 0;
    for (const char *p = v; p < vend; p++) {
        if (*p < '0' || *p > '9')
            return -1;
        n = n * 10 + (*p - '0');
    }
    if (vend - v == 2 && v[0] == '0')
        return -1;
    return n >= 8 && n <= 15 ? n : -1;
}

/* One offer: "permessage-deflate; p1; p2=v ...".  True when acceptable;
 * *server_bits is the server_max_window_bits it asked for, 0 if none. */
static bool offer_ok(const char *p, const char *end, int *server_bits_out)
{
    const char *semi = memchr(p, ';', (size_t)(end - p));
    const char *nend, *name = trim(p, semi ? semi : end, &nend);
    if (!is_token(name, (size_t)(nend - name), "permessage-deflate"))
        return false;
    bool seen[4] = {false, false, false, false};
    int server_bits = 0;
    for (const char *q = semi; q && q < end;) {
        q++; /* past ';' */
        const char *next = memchr(q, ';', (size_t)(end - q));
        const char *pend = next ? next : end, *tend;
        const char *t = trim(q, pend, &tend);
        const char *eq = memchr(t, '=', (size_t)(tend - t));
        const char *kend, *k = trim(t, eq ? eq : tend, &kend), *vend = NULL, *v = NULL;
        if (eq)
            v = trim(eq + 1, tend, &vend);
        size_t kl = (size_t)(kend - k);
        int which = is_token(k, kl, "server_no_context_takeover")   ? 0
                    : is_token(k, kl, "client_no_context_takeover") ? 1
                    : is_token(k, kl, "server_max_window_bits")     ? 2
                    : is_token(k, kl, "client_max_window_bits")     ? 3
                                                                    : -1;
        if (which < 0 || seen[which])
            return false; /* unknown or repeated: decline this offer */
        seen[which] = true;
        if (which <= 1 && eq)
            return false; /* these take no value */
        if (which == 2 && (!eq || (server_bits = window_bits(v, vend)) < 0))
            return false;
        if (which == 3 && eq && window_bits(v, vend) < 0)
            return false;
        q = next;
    }
    *server_bits_out = server_bits;
    return true;
}

bool sl_pmd_negotiate(const char *value, size_t len, char *out, size_t outsz, bool *shared)
{
    const char *p = value, *end = value + len;
    while (p < end) {
        /* Offers are separated by commas (no parameter value here may
         * contain one: quoted values are digits). */
        const char *comma = memchr(p, ',', (size_t)(end - p));
        const char *oend = comma ? comma : end;
        int bits = 0;
        if (offer_ok(p, oend, &bits)) {
            /* server_max_window_bits offered: the answer must carry it with
             * the same or a smaller value (RFC 7692 7.1.2.1), or a client
             * that checks fails the handshake (review r16 M2).  Under 15 we
             * send that client nothing compressed at all (the RFC allows it
             * per message), so echoing its value is honest. */
            *shared = bits == 0 || bits == 15;
            char sb[48] = "";
            if (bits)
                snprintf(sb, sizeof(sb), "; server_max_window_bits=%d", bits);
            snprintf(out, outsz,
                     "permessage-deflate; server_no_context_takeover; client_no_context_takeover%s",
                     sb);
            return true;
        }
        p = comma ? comma + 1 : end;
    }
    return false;
}

/* ----------------------------------------------------------- compression */

sl_buf_t *sl_pmd_compress_frame(const sl_buf_t *b)
{
    const uint8_t *f = b->data + b->start;
    size_t flen = b->len - b->start;
    if (flen < 2 || (f[0] & 0x70) || !(f[0] & 0x80))
        return NULL;
    int op = f[0] & 0x0F;
    if (op != SL_WS_OP_TEXT && op != SL_WS_OP_BINARY)
        return NULL;
    size_t hl = 2, n = f[1] & 0x7F;
    if (n == 126) {
        hl = 4;
        n = (size_t)f[2] << 8 | f[3];
    } else if (n == 127) {
        hl = 10;
        n = 0;
        for (int i = 0; i < 8; i++)
            n = n << 8 | f[2 + i];
    }
    if (hl + n != flen)
        return NULL;
    if (!zd_ready) {
        if (deflateInit2(&zd, Z_DEFAULT_COMPRESSION, Z_DEFLATED, -15, 8, Z_DEFAULT_STRATEGY) !=
            Z_OK)
            return NULL;
        zd_ready = true;
    }
    /* Worth it only when smaller: room for the payload itself (plus the
     * 5-byte sync tail deflate appends before we drop its last 4 bytes).
     * Deflate into the process's scratch, then copy into a buffer of
     * exactly the compressed size: the twin is what the output queue
     * holds, often for a connection that does not read, so its memory
     * must be what the queue counts (its length), never the size of the
     * message it came from (review r16 H1: 894 bytes queued held 900 KB). */
    size_t room = n + 8;
    if (room > zscratch_cap) {
        uint8_t *ns = realloc(zscratch, room);
        if (ns == NULL)
            return NULL;
        zscratch = ns;
        zscratch_cap = room;
    }
    deflateReset(&zd);
    zd.next_in = (Bytef *)(f + hl);
    zd.avail_in = (uInt)n;
    zd.next_out = zscratch;
    zd.avail_out = (uInt)room;
    int rc = deflate(&zd, Z_SYNC_FLUSH);
    size_t out = room - zd.avail_out;
    sl_buf_t *z = NULL;
    if (rc == Z_OK && zd.avail_in == 0 && out >= 4 && out - 4 < n) {
        out -= 4; /* the 00 00 ff ff of the sync flush (RFC 7692 7.2.1) */
        uint8_t hdr[SL_WS_MAX_HEADER];
        size_t h = sl_ws_encode_header(hdr, op, true, out, NULL);
        hdr[0] |= 0x40; /* RSV1: a compressed message */
        z = sl_buf_new(h + out);
        if (z != NULL) {
            memcpy(z->data, hdr, h);
            memcpy(z->data + h, zscratch, out);
            z->start = 0;
            z->len = (uint32_t)(h + out);
        }
    } /* else no gain (or the room ran out: incompressible) */
    if (zscratch_cap > SL_PMD_SCRATCH_KEEP) { /* a large message: give it back */
        free(zscratch);
        zscratch = NULL;
        zscratch_cap = 0;
    }
    return z;
}

/* ------------------------------------------------------------- inflation */

int sl_pmd_inflate(const uint8_t *in, size_t n, size_t max, uint8_t **out, size_t *outlen)
{
    static const uint8_t tail[4] = {0x00, 0x00, 0xff, 0xff};
    if (!zi_ready) {
        if (inflateInit2(&zi, -15) != Z_OK)
            return SL_ERROR;
        zi_ready = true;
    }
    inflateReset(&zi);
    size_t cap = SL_MIN(SL_MAX(n * 4, (size_t)256), max + 1), len = 0;
    uint8_t *buf = malloc(cap);
    if (buf == NULL)
        return SL_ERROR;
    int rc = Z_OK;
    for (int part = 0; part < 2 && rc != Z_STREAM_END; part++) {
        zi.next_in = (Bytef *)(part == 0 ? in : tail);
        zi.avail_in = (uInt)(part == 0 ? n : sizeof(tail));
        for (;;) {
            if (len == cap) {
                if (cap > max) {
                    free(buf);
                    return SL_AGAIN; /* more than max: a zip bomb, or just too big */
                }
                size_t ncap = SL_MIN(cap * 2, max + 1);
                uint8_t *nb = realloc(buf, ncap);
                if (nb == NULL) {
                    free(buf);
                    return SL_ERROR;
                }
                buf = nb;
                cap = ncap;
            }
            zi.next_out = buf + len;
            zi.avail_out = (uInt)(cap - len);
            rc = inflate(&zi, Z_SYNC_FLUSH);
            len = cap - zi.avail_out;
            if (rc == Z_STREAM_END)
                break;
            if (rc != Z_OK && rc != Z_BUF_ERROR) {
                free(buf);
                return SL_ERROR;
            }
            if (zi.avail_out > 0)
                break; /* this part's input is used up (output had room) */
        }
    }
    if (len > max) {
        free(buf);
        return SL_AGAIN;
    }
    *out = buf;
    *outlen = len;
    return SL_OK;
}
