/*
 * fuzz_pmd.c - permessage-deflate (src/pmd.c): the offer parser and the
 * bounded inflation of client messages, differential against zlib used
 * directly (the reference inflates without any bound, then compares).
 *
 * Input: byte 0 picks the mode, the rest is its data.
 *   mode 0: the rest is a Sec-WebSocket-Extensions value: negotiating it
 *           never crashes, and an accepted offer's answer is always the
 *           one documented response (docs/protocol.md 1.2);
 *   mode 1: the rest is a compressed message: sl_pmd_inflate with a bound
 *           of 4 KiB agrees with zlib (same bytes when within the bound,
 *           "too big" exactly when zlib yields more, an error only when
 *           zlib fails too);
 *   mode 2: the rest is a message: compressing it as a text frame and
 *           inflating the result gives it back.
 */
#include "sl_pmd.h"
#include "sl_ws.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zlib.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t n);

#define BOUND 4096

/* zlib on its own: SL_OK and the bytes (at most cap), SL_AGAIN over cap,
 * SL_ERROR on bad data. */
static int reference(const uint8_t *in, size_t n, uint8_t *out, size_t cap, size_t *len)
{
    static const uint8_t tail[4] = {0, 0, 0xff, 0xff};
    uint8_t *all = malloc(n + 4);
    memcpy(all, in, n);
    memcpy(all + n, tail, 4);
    z_stream z;
    memset(&z, 0, sizeof(z));
    inflateInit2(&z, -15);
    z.next_in = all;
    z.avail_in = (uInt)(n + 4);
    z.next_out = out;
    z.avail_out = (uInt)(cap + 1);
    int rc = inflate(&z, Z_SYNC_FLUSH);
    *len = cap + 1 - z.avail_out;
    inflateEnd(&z);
    free(all);
    if (*len > cap)
        return SL_AGAIN;
    if (rc != Z_OK && rc != Z_STREAM_END && rc != Z_BUF_ERROR)
        return SL_ERROR;
    return SL_OK;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t n)
{
    if (n < 1 || n > 65536)
        return 0;
    const uint8_t *p = data + 1;
    size_t len = n - 1;
    switch (data[0] % 3) {
    case 0: {
        char out[128];
        bool shared = false;
        static const char base[] = "permessage-deflate; server_no_context_takeover; "
                                   "client_no_context_takeover";
        if (sl_pmd_negotiate((const char *)p, len, out, sizeof(out), &shared)) {
            /* The fixed answer, plus the server window the client asked
             * for (8..15) echoed; compressed for it only at 15 (or none). */
            int bits = 0;
            if (strncmp(out, base, sizeof(base) - 1) != 0)
                abort();
            const char *rest = out + sizeof(base) - 1;
            if (*rest && (sscanf(rest, "; server_max_window_bits=%d", &bits) != 1 ||
                          bits < 8 || bits > 15))
                abort();
            if (shared != (bits == 0 || bits == 15))
                abort();
        }
        break;
    }
    case 1: {
        static uint8_t ref[BOUND + 1];
        size_t rlen;
        int want = reference(p, len, ref, BOUND, &rlen);
        uint8_t *got;
        size_t glen;
        int rc = sl_pmd_inflate(p, len, BOUND, &got, &glen);
        if (rc == SL_OK) {
            if (want != SL_OK || glen != rlen || memcmp(got, ref, glen) != 0)
                abort();
            free(got);
        } else if (rc == SL_AGAIN) {
            if (want != SL_AGAIN)
                abort();
        } else if (want == SL_OK && rlen > 0) {
            abort(); /* an error where zlib inflated something whole */
        }
        break;
    }
    default: {
        sl_buf_t *b = sl_buf_new(SL_WS_MAX_HEADER + len);
        b->len = (uint32_t)sl_ws_encode_header(b->data, SL_WS_OP_TEXT, true, len, NULL);
        memcpy(b->data + b->len, p, len);
        b->len += (uint32_t)len;
        sl_buf_t *z = sl_pmd_compress_frame(b);
        if (z != NULL) {
            const uint8_t *f = z->data + z->start;
            if (f[0] != 0xC1)
                abort();
            size_t hl = (f[1] & 0x7F) == 126 ? 4 : (f[1] & 0x7F) == 127 ? 10 : 2;
            uint8_t *got;
            size_t glen;
            if (sl_pmd_inflate(f + hl, z->len - z->start - hl, len, &got, &glen) != SL_OK ||
                glen != len || memcmp(got, p, len) != 0)
                abort();
            free(got);
            sl_buf_unref(z);
        }
        sl_buf_unref(b);
        break;
    }
    }
    return 0;
}
