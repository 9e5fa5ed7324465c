/*
 * utf8.c - incremental UTF-8 validation (RFC 3629), for text frames.
 *
 * The state is the number of continuation bytes still expected plus the
 * allowed range of the next byte (which is narrower than 80..BF right after
 * E0, ED, F0 and F4: that is where overlongs, surrogates and code points
 * above U+10FFFF are excluded).  A sequence may be split anywhere across
 * calls.  Runs of ASCII are skipped eight bytes at a time.
 *
 * state encoding: 0 = boundary; 1 = rejected (sticky); otherwise
 * (need << 16) | (lo << 8) | hi for the next byte.
 */
#include "sl_ws.h"

#include <string.h>

#define ST(need, lo, hi) (((uint32_t)(need) << 16) | ((uint32_t)(lo) << 8) | (uint32_t)(hi))

bool sl_utf8_feed(sl_utf8_t *u, const uint8_t *p, size_t n)
{
    uint32_t st = u->state;
    size_t i = 0;

    if (st == SL_UTF8_REJECT)
        return false;
    while (i < n) {
        if (st == SL_UTF8_ACCEPT) {
            /* ASCII fast path: whole words with no high bit set. */
            while (i + 8 <= n) {
                uint64_t w;
                memcpy(&w, p + i, 8);
                if (w & 0x8080808080808080ULL)
                    break;
                i += 8;
            }
            if (i >= n)
                break;
            uint8_t b = p[i++];
            if (b < 0x80)
                continue;
            if (b < 0xC2)
                st = SL_UTF8_REJECT; /* continuation byte or overlong C0/C1 */
            else if (b < 0xE0)
                st = ST(1, 0x80, 0xBF);
            else if (b == 0xE0)
                st = ST(2, 0xA0, 0xBF); /* no overlong 3-byte forms */
            else if (b == 0xED)
                st = ST(2, 0x80, 0x9F); /* no surrogates D800..DFFF */
            else if (b < 0xF0)
                st = ST(2, 0x80, 0xBF);
            else if (b == 0xF0)
                st = ST(3, 0x90, 0xBF); /* no overlong 4-byte forms */
            else if (b < 0xF4)
                st = ST(3, 0x80, 0xBF);
            else if (b == 0xF4)
                st = ST(3, 0x80, 0x8F); /* nothing above U+10FFFF */
            else
                st = SL_UTF8_REJECT;
            if (st == SL_UTF8_REJECT)
                break;
            continue;
        }
        uint8_t b = p[i++];
        uint32_t need = st >> 16, lo = (st >> 8) & 0xFF, hi = st & 0xFF;
        if (b < lo || b > hi) {
            st = SL_UTF8_REJECT;
            break;
        }
        need--;
        st = need ? ST(need, 0x80, 0xBF) : SL_UTF8_ACCEPT;
    }
    u->state = st;
    return st != SL_UTF8_REJECT;
}

bool sl_utf8_valid(const uint8_t *p, size_t n)
{
    sl_utf8_t u;
    sl_utf8_init(&u);
    return sl_utf8_feed(&u, p, n) && sl_utf8_complete(&u);
}

size_t sl_utf8_sanitize(const uint8_t *src, size_t n, char *dst, size_t cap)
{
    static const char repl[] = "\xEF\xBF\xBD"; /* U+FFFD */
    size_t i = 0, o = 0;
    while (i < n) {
        /* Length of the valid sequence starting at i (0: none). */
        size_t k = 0;
        sl_utf8_t u;
        sl_utf8_init(&u);
        for (size_t j = i; j < n && j - i < 4; j++) {
            if (!sl_utf8_feed(&u, src + j, 1))
                break;
            if (sl_utf8_complete(&u)) {
                k = j - i + 1;
                break;
            }
        }
        const char *piece = k ? (const char *)src + i : repl;
        size_t plen = k ? k : 3;
        if (o + plen + 1 > cap)
            break; /* cut at a character boundary */
        memcpy(dst + o, piece, plen);
        o += plen;
        i += k ? k : 1;
    }
    if (cap > 0)
        dst[o] = '\0';
    return o;
}
