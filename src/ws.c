/*
 * ws.c - RFC 6455 framing: the accept key, the frame header encoder,
 * masking, and the reader that turns bytes into messages.
 *
 * The reader is a small state machine over (header, payload) with one rule
 * about memory: a whole unfragmented frame found inside the caller's buffer
 * is unmasked in place and handed out without a copy.  Only a frame split
 * across reads, or a fragmented message, is assembled in r->msg, which is
 * freed as soon as the message is delivered, so an idle connection holds no
 * heap memory here.  Text is validated as it arrives, so invalid UTF-8 fails
 * the connection at the first bad byte, not at the end of the message.
 */
#include "sl_ws.h"

#include <openssl/evp.h>
#include <stdlib.h>
#include <string.h>

#define SL_WS_GUID "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

/* ------------------------------------------------------------ handshake */

static bool is_b64(char ch)
{
    return (ch >= 'A' && ch <= 'Z') || (ch >= 'a' && ch <= 'z') || (ch >= '0' && ch <= '9') ||
           ch == '+' || ch == '/';
}

int sl_ws_accept_key(const char *key, size_t keylen, char out[29])
{
    /* 16 bytes in base64: 22 significant characters and "==". */
    if (keylen != 24 || key[22] != '=' || key[23] != '=')
        return SL_ERROR;
    for (size_t i = 0; i < 22; i++)
        if (!is_b64(key[i]))
            return SL_ERROR;

    char buf[24 + sizeof(SL_WS_GUID)];
    memcpy(buf, key, 24);
    memcpy(buf + 24, SL_WS_GUID, sizeof(SL_WS_GUID) - 1);
    /* SHA-1 fetched once per process and one context reused (workers are
     * single-threaded): EVP_Digest with EVP_sha1() looked the algorithm up
     * and set up a context on every handshake, 60% of the digest's cost. */
    static EVP_MD *sha1;
    static EVP_MD_CTX *ctx;
    if (sha1 == NULL && (sha1 = EVP_MD_fetch(NULL, "SHA1", NULL)) == NULL)
        return SL_ERROR;
    if (ctx == NULL && (ctx = EVP_MD_CTX_new()) == NULL)
        return SL_ERROR;
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int mdlen = 0;
    if (EVP_DigestInit_ex2(ctx, sha1, NULL) != 1 ||
        EVP_DigestUpdate(ctx, buf, 24 + sizeof(SL_WS_GUID) - 1) != 1 ||
        EVP_DigestFinal_ex(ctx, md, &mdlen) != 1 || mdlen != 20)
        return SL_ERROR;
    if (EVP_EncodeBlock((unsigned char *)out, md, 20) != 28)
        return SL_ERROR;
    out[28] = '\0';
    return SL_OK;
}

/* --------------------------------------------------------------- frames */

static sl_ws_inflate_fn ws_inflater;

void sl_ws_set_inflater(sl_ws_inflate_fn fn)
{
    ws_inflater = fn;
}

size_t sl_ws_encode_header(uint8_t out[SL_WS_MAX_HEADER], int opcode, bool fin, uint64_t len,
                           const uint8_t *mask)
{
    size_t n = 2;
    out[0] = (uint8_t)((fin ? 0x80 : 0) | (opcode & 0x0F));
    uint8_t m = mask ? 0x80 : 0;
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

void sl_ws_mask(uint8_t *p, size_t n, const uint8_t mask[4], uint64_t pos)
{
    size_t i = 0;
    /* Byte-wise until the mask phase is 0, then 8 bytes at a time with the
     * mask repeated twice. */
    while (i < n && ((pos + i) & 3) != 0) {
        p[i] ^= mask[(pos + i) & 3];
        i++;
    }
    if (n - i >= 8) {
        uint8_t m8[8];
        for (int k = 0; k < 8; k++)
            m8[k] = mask[k & 3];
        uint64_t mw;
        memcpy(&mw, m8, 8);
        for (; i + 8 <= n; i += 8) {
            uint64_t w;
            memcpy(&w, p + i, 8);
            w ^= mw;
            memcpy(p + i, &w, 8);
        }
    }
    for (; i < n; i++)
        p[i] ^= mask[(pos + i) & 3];
}

bool sl_ws_close_code_valid(unsigned code)
{
    /* RFC 6455 7.4.1 codes that may appear on the wire, plus the IANA
     * registered 1012-1014, plus the ranges for libraries (3000-3999) and
     * applications (4000-4999).  1004, 1005, 1006 and 1015 are reserved and
     * never sent. */
    if (code >= 1000 && code <= 1003)
        return true;
    if (code >= 1007 && code <= 1014)
        return true;
    return code >= 3000 && code <= 4999;
}

/* --------------------------------------------------------------- reader */

void sl_ws_reader_init(sl_ws_reader_t *r, bool expect_masked, uint64_t max_message)
{
    memset(r, 0, sizeof(*r));
    r->expect_masked = expect_masked;
    /* (A message is held in 32-bit lengths: a few bytes less in every
     * connection; --max-message-size stops far below.) */
    r->max_message = SL_MIN(max_message, (uint64_t)UINT32_MAX);
}

void sl_ws_reader_free(sl_ws_reader_t *r)
{
    free(r->ctl);
    r->ctl = NULL;
    free(r->msg);
    r->msg = NULL;
    r->msg_len = r->msg_cap = 0;
}

bool sl_ws_reader_busy(const sl_ws_reader_t *r)
{
    return r->hdr_have > 0 || r->in_frame || r->in_message;
}

size_t sl_ws_reader_buffered(const sl_ws_reader_t *r)
{
    return r->msg_cap;
}

/* Bytes a header needs once its first two bytes are known. */
static size_t header_size(const uint8_t *h)
{
    size_t n = 2;
    uint8_t len7 = h[1] & 0x7F;
    if (len7 == 126)
        n += 2;
    else if (len7 == 127)
        n += 8;
    if (h[1] & 0x80)
        n += 4;
    return n;
}

/* Checks that need only the first two bytes: done as soon as they arrive. */
static int check_first_bytes(const sl_ws_reader_t *r, const uint8_t *h)
{
    uint8_t op = h[0] & 0x0F;
    bool fin = h[0] & 0x80, masked = h[1] & 0x80;
    if (h[0] & 0x30)
        return SL_WS_CLOSE_PROTOCOL; /* RSV2/RSV3: no extension uses them */
    if ((h[0] & 0x40) && (!r->deflate || ws_inflater == NULL || (op != SL_WS_OP_TEXT && op != SL_WS_OP_BINARY)))
        return SL_WS_CLOSE_PROTOCOL; /* RSV1: only a compressed message's first frame */
    if (masked != r->expect_masked)
        return SL_WS_CLOSE_PROTOCOL;
    switch (op) {
    case SL_WS_OP_CONT:
        if (!r->in_message)
            return SL_WS_CLOSE_PROTOCOL;
        break;
    case SL_WS_OP_TEXT:
    case SL_WS_OP_BINARY:
        if (r->in_message)
            return SL_WS_CLOSE_PROTOCOL;
        break;
    case SL_WS_OP_CLOSE:
    case SL_WS_OP_PING:
    case SL_WS_OP_PONG:
        if (!fin || (h[1] & 0x7F) > SL_WS_MAX_CONTROL)
            return SL_WS_CLOSE_PROTOCOL;
        break;
    default:
        return SL_WS_CLOSE_PROTOCOL;
    }
    return 0;
}

/* A whole header is in h: fill in the frame state. */
static int start_frame(sl_ws_reader_t *r, const uint8_t *h)
{
    uint8_t len7 = h[1] & 0x7F;
    uint64_t len = len7;
    size_t p = 2;
    if (len7 == 126) {
        len = (uint64_t)h[2] << 8 | h[3];
        p = 4;
    } else if (len7 == 127) {
        len = 0;
        for (int i = 0; i < 8; i++)
            len = len << 8 | h[2 + i];
        if (len >> 63)
            return SL_WS_CLOSE_PROTOCOL;
        p = 10;
    }
    r->frame_op = h[0] & 0x0F;
    r->frame_fin = (h[0] & 0x80) != 0;
    r->frame_masked = (h[1] & 0x80) != 0;
    if (r->frame_masked)
        memcpy(r->frame_mask, h + p, 4);
    r->frame_len = len;
    r->frame_have = 0;
    if (r->frame_op < 8) {
        uint64_t already = r->frame_op == SL_WS_OP_CONT ? r->msg_len : 0;
        if (len > r->max_message || already + len > r->max_message)
            return SL_WS_CLOSE_TOO_BIG;
        if (r->frame_op != SL_WS_OP_CONT) {
            r->msg_op = r->frame_op;
            r->msg_deflated = (h[0] & 0x40) != 0;
            sl_utf8_init(&r->utf8);
        }
    }
    r->in_frame = true;
    return 0;
}

static int msg_append(sl_ws_reader_t *r, const uint8_t *p, size_t n)
{
    if (r->msg_len + n > r->msg_cap) {
        size_t want = r->msg_len + n;
        size_t cap = r->msg_cap ? r->msg_cap * 2 : 256;
        /* Grow with the data actually received, never ahead of it by more
         * than doubling: an announced length alone reserves nothing. */
        if (cap < want)
            cap = want;
        if (cap > r->max_message)
            cap = SL_MAX(want, (size_t)r->max_message);
        uint8_t *m = realloc(r->msg, cap);
        if (m == NULL)
            return SL_WS_CLOSE_INTERNAL;
        r->msg = m;
        r->msg_cap = (uint32_t)cap; /* <= max_message */
    }
    memcpy(r->msg + r->msg_len, p, n);
    r->msg_len += (uint32_t)n;
    return 0;
}

static int deliver_control(sl_ws_reader_t *r, uint8_t *p, size_t n, const sl_ws_handlers_t *h,
                           void *ctx)
{
    if (r->frame_op == SL_WS_OP_CLOSE) {
        if (n == 1)
            return SL_WS_CLOSE_PROTOCOL;
        if (n >= 2) {
            unsigned code = (unsigned)p[0] << 8 | p[1];
            if (!sl_ws_close_code_valid(code))
                return SL_WS_CLOSE_PROTOCOL;
            if (!sl_utf8_valid(p + 2, n - 2))
                return SL_WS_CLOSE_INVALID_DATA;
        }
        r->closed = true;
    }
    return h->on_control(ctx, r->frame_op, p, n);
}

/* A compressed message: inflated within max_message (over it: 1009; not
 * deflate data: 1007), text validated, then delivered. */
static int deliver_inflated(sl_ws_reader_t *r, const uint8_t *p, size_t n,
                            const sl_ws_handlers_t *h, void *ctx)
{
    uint8_t *m;
    size_t mlen;
    int z = ws_inflater(p, n, (size_t)r->max_message, &m, &mlen);
    if (z == SL_AGAIN)
        return SL_WS_CLOSE_TOO_BIG;
    if (z != SL_OK)
        return SL_WS_CLOSE_INVALID_DATA;
    int rc = 0;
    if (r->msg_op == SL_WS_OP_TEXT && !sl_utf8_valid(m, mlen))
        rc = SL_WS_CLOSE_INVALID_DATA;
    else
        rc = h->on_message(ctx, r->msg_op, m, mlen);
    free(m);
    return rc;
}

/* The reader's loop; *pos is how far it got (also when it stops early). */
static int reader_run(sl_ws_reader_t *r, uint8_t *buf, size_t n, const sl_ws_handlers_t *h,
                      void *ctx, size_t *pos)
{
    int rc;


    while (*pos < n && !r->closed) {
        if (!r->in_frame && r->hdr_have == 0 && r->frame_limit && r->frames >= r->frame_limit)
            return 1; /* the caller's budget: resume here later */
        if (!r->in_frame) {
            const uint8_t *hdr;
            if (r->hdr_have == 0 && n - *pos >= 2 && n - *pos >= header_size(buf + *pos)) {
                hdr = buf + *pos; /* whole header in the buffer: no copy */
                if ((rc = check_first_bytes(r, hdr)) != 0)
                    return rc;
                *pos += header_size(hdr);
            } else {
                /* Collect the header byte by byte across feeds; check the
                 * first two bytes as soon as they are here. */
                while (*pos < n && (r->hdr_have < 2 || r->hdr_have < header_size(r->hdr))) {
                    r->hdr[r->hdr_have++] = buf[(*pos)++];
                    if (r->hdr_have == 2 && (rc = check_first_bytes(r, r->hdr)) != 0)
                        return rc;
                }
                if (r->hdr_have < 2 || r->hdr_have < header_size(r->hdr))
                    return 0;
                hdr = r->hdr;
            }
            rc = start_frame(r, hdr);
            r->hdr_have = 0;
            if (rc != 0)
                return rc;
        }

        /* Payload (possibly empty). */
        size_t take = (size_t)SL_MIN((uint64_t)(n - *pos), r->frame_len - r->frame_have);
        uint8_t *p = buf + *pos;
        if (r->frame_masked)
            sl_ws_mask(p, take, r->frame_mask, r->frame_have);
        bool whole = r->frame_have == 0 && take == r->frame_len;
        *pos += take;

        if (r->frame_op >= 8) {
            if (!whole) {
                if (r->ctl == NULL && (r->ctl = malloc(SL_WS_MAX_CONTROL)) == NULL)
                    return SL_WS_CLOSE_INTERNAL;
                memcpy(r->ctl + r->frame_have, p, take);
                r->frame_have += take;
                if (r->frame_have < r->frame_len)
                    return 0;
                p = r->ctl;
            } else {
                r->frame_have = take;
            }
            r->in_frame = false;
            r->frames++;
            if (!r->in_message)
                r->completed++;
            rc = deliver_control(r, p, (size_t)r->frame_len, h, ctx);
            free(r->ctl);
            r->ctl = NULL;
            if (rc != 0)
                return rc;
            continue;
        }

        if (r->msg_op == SL_WS_OP_TEXT && !r->msg_deflated && !sl_utf8_feed(&r->utf8, p, take))
            return SL_WS_CLOSE_INVALID_DATA;
        r->frame_have += take;
        bool frame_done = r->frame_have == r->frame_len;

        if (whole && r->frame_fin && !r->in_message) {
            /* The common case: an unfragmented frame, delivered in place. */
            r->in_frame = false;
            r->frames++;
            r->completed++;
            if (r->msg_deflated) {
                if ((rc = deliver_inflated(r, p, take, h, ctx)) != 0)
                    return rc;
                continue;
            }
            if (r->msg_op == SL_WS_OP_TEXT && !sl_utf8_complete(&r->utf8))
                return SL_WS_CLOSE_INVALID_DATA;
            if ((rc = h->on_message(ctx, r->msg_op, p, take)) != 0)
                return rc;
            continue;
        }
        if (take && (rc = msg_append(r, p, take)) != 0)
            return rc;
        if (!frame_done)
            return 0;
        r->in_frame = false;
        r->frames++;
        if (!r->frame_fin) {
            r->in_message = true;
            continue;
        }
        /* Last fragment: the message is complete. */
        r->in_message = false;
        r->completed++;
        if (!r->msg_deflated && r->msg_op == SL_WS_OP_TEXT && !sl_utf8_complete(&r->utf8))
            return SL_WS_CLOSE_INVALID_DATA;
        uint8_t *m = r->msg;
        size_t mlen = r->msg_len;
        r->msg = NULL;
        r->msg_len = r->msg_cap = 0;
        static uint8_t empty[1];
        if (r->msg_deflated)
            rc = deliver_inflated(r, m ? m : empty, mlen, h, ctx);
        else
            rc = h->on_message(ctx, r->msg_op, m ? m : empty, mlen);
        free(m);
        if (rc != 0)
            return rc;
    }
    return 0;
}

int sl_ws_reader_feed(sl_ws_reader_t *r, uint8_t *buf, size_t n, const sl_ws_handlers_t *h,
                      void *ctx, size_t *used)
{
    size_t pos = 0;
    int rc = r->failed ? r->failed : reader_run(r, buf, n, h, ctx, &pos);
    /* A protocol error is final: the state it left (a header that failed
     * its checks half collected) must never be parsed on.  (Found by
     * fuzz_e2e: a connection closing cleanly kept feeding its reader, and a
     * control frame longer than 125 bytes overflowed the control buffer.) */
    if (rc >= 1000)
        r->failed = rc;
    if (used)
        *used = r->failed ? n : pos;
    return rc;
}
