/*
 * jw.c - the JSON writer for fixed-shape replies (sl_jw.h).  Owns nothing
 * beyond one call: the scratch buffer is the caller's, a heap spill is freed
 * by sl_jw_frame / sl_jw_drop.
 */
#include "sl_jw.h"
#include "sl_ws.h"

#include <stdlib.h>

void sl_jw_init(sl_jw_t *w, void *scratch, size_t cap)
{
    w->p = scratch;
    w->len = SL_JW_HEAD;
    w->cap = cap;
    w->heap = false;
    w->failed = cap < SL_JW_HEAD;
}

/* Room for n more bytes; false (and failed) when out of memory. */
static bool room(sl_jw_t *w, size_t n)
{
    if (w->failed)
        return false;
    if (w->len + n <= w->cap)
        return true;
    size_t cap = w->cap * 2;
    while (cap < w->len + n)
        cap *= 2;
    char *p = w->heap ? realloc(w->p, cap) : malloc(cap);
    if (p == NULL) {
        w->failed = true;
        return false;
    }
    if (!w->heap)
        memcpy(p, w->p, w->len);
    w->p = p;
    w->cap = cap;
    w->heap = true;
    return true;
}

void sl_jw_raw(sl_jw_t *w, const char *s, size_t n)
{
    if (!room(w, n))
        return;
    memcpy(w->p + w->len, s, n);
    w->len += n;
}

void sl_jw_str(sl_jw_t *w, const char *s, size_t n)
{
    /* Worst case: every byte becomes \u00XX. */
    if (!room(w, 2 + 6 * n))
        return;
    static const char hex[] = "0123456789ABCDEF"; /* as jansson writes them */
    char *o = w->p + w->len;
    *o++ = '"';
    for (size_t i = 0; i < n; i++) {
        unsigned char ch = (unsigned char)s[i];
        if (ch >= 0x20 && ch != '"' && ch != '\\') {
            *o++ = (char)ch;
            continue;
        }
        *o++ = '\\';
        switch (ch) {
        case '"': *o++ = '"'; break;
        case '\\': *o++ = '\\'; break;
        case '\b': *o++ = 'b'; break;
        case '\f': *o++ = 'f'; break;
        case '\n': *o++ = 'n'; break;
        case '\r': *o++ = 'r'; break;
        case '\t': *o++ = 't'; break;
        default:
            *o++ = 'u';
            *o++ = '0';
            *o++ = '0';
            *o++ = hex[ch >> 4];
            *o++ = hex[ch & 15];
        }
    }
    *o++ = '"';
    w->len = (size_t)(o - w->p);
}

void sl_jw_int(sl_jw_t *w, int64_t v)
{
    char t[24], *e = t + sizeof(t), *b = e;
    uint64_t u = v < 0 ? (uint64_t)0 - (uint64_t)v : (uint64_t)v;
    do {
        *--b = (char)('0' + u % 10);
        u /= 10;
    } while (u);
    if (v < 0)
        *--b = '-';
    sl_jw_raw(w, b, (size_t)(e - b));
}

void sl_jw_bool(sl_jw_t *w, bool v)
{
    if (v)
        sl_jw_lit(w, "true");
    else
        sl_jw_lit(w, "false");
}

void sl_jw_drop(sl_jw_t *w)
{
    if (w->heap)
        free(w->p);
    w->heap = false;
    w->failed = true;
}

sl_buf_t *sl_jw_frame(sl_jw_t *w)
{
    if (w->failed) {
        sl_jw_drop(w);
        return NULL;
    }
    size_t n = w->len - SL_JW_HEAD;
    sl_buf_t *b = sl_buf_new(w->len);
    if (b != NULL) {
        /* The header goes right before the payload: one contiguous frame. */
        uint8_t hdr[SL_WS_MAX_HEADER];
        size_t h = sl_ws_encode_header(hdr, SL_WS_OP_TEXT, true, n, NULL);
        b->start = (uint32_t)(SL_JW_HEAD - h);
        memcpy(b->data + b->start, hdr, h);
        memcpy(b->data + SL_JW_HEAD, w->p + SL_JW_HEAD, n);
        b->len = (uint32_t)w->len;
    }
    sl_jw_drop(w);
    return b;
}
