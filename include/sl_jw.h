/*
 * sl_jw.h - the JSON writer for fixed-shape replies (welcome,
 * subscription-result, publish-result, pong, ...): text frames formatted
 * directly, without building a jansson tree and dumping it (which cost about
 * 10,000 instructions per reply; this costs a few hundred).  Replies of open
 * shape (echo, errors, listings) keep using jansson through
 * sl_proto_reply.
 *
 * A writer formats into a caller's scratch buffer (the worker's encode
 * buffer) with room for the largest frame header kept in front, and moves to
 * the heap only if the text outgrows it.  sl_jw_frame then allocates the
 * frame at its exact size.  Strings are escaped as jansson does by default
 * (", \ and control characters; UTF-8 passes through: every string written
 * here comes from a parsed message or from the server itself).
 */
#ifndef SL_JW_H
#define SL_JW_H

#include "sl_outq.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#define SL_JW_HEAD 10 /* the largest server frame header */

typedef struct {
    char *p;        /* scratch, or heap once it outgrew it */
    size_t len;     /* bytes used, SL_JW_HEAD included */
    size_t cap;
    bool heap;      /* p is malloc'd */
    bool failed;    /* out of memory: sl_jw_frame returns NULL */
} sl_jw_t;

void sl_jw_init(sl_jw_t *w, void *scratch, size_t cap);
void sl_jw_raw(sl_jw_t *w, const char *s, size_t n);
/* A quoted, escaped JSON string. */
void sl_jw_str(sl_jw_t *w, const char *s, size_t n);
void sl_jw_int(sl_jw_t *w, int64_t v);
void sl_jw_bool(sl_jw_t *w, bool v);
/* A string literal, raw (its length known at compile time). */
#define sl_jw_lit(w, lit) sl_jw_raw((w), (lit), sizeof(lit) - 1)
/* The payload written so far, and cutting back to an earlier length. */
static inline size_t sl_jw_mark(const sl_jw_t *w) { return w->len; }
static inline void sl_jw_cut(sl_jw_t *w, size_t mark) { w->len = mark; }
/* Finish: the text frame (one reference, the caller's), or NULL when out of
 * memory.  Frees what the writer holds either way. */
sl_buf_t *sl_jw_frame(sl_jw_t *w);
/* Abandon without a frame. */
void sl_jw_drop(sl_jw_t *w);

#endif
