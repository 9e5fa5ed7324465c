/*
 * outq.c - reference-counted buffers and the per-connection write queue.
 *
 * One segment waits inline in the queue; more go to a ring that grows by
 * doubling.  Once drained, a small ring is kept (so steady traffic
 * allocates nothing) until the worker's timer trims it, and a large one is
 * freed at once.  A segment remembers its own offset, so a partial write
 * just advances the first segment.
 */
#include "sl_outq.h"

#include <errno.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>

#define SL_OUTQ_IOV 64 /* segments per writev: enough to fill a socket */
#define SL_OUTQ_KEEP 8 /* ring size kept while idle (128 bytes) */

uint64_t sl_buf_live_bytes;

sl_buf_t *sl_buf_new(size_t cap)
{
    if (cap > UINT32_MAX - sizeof(sl_buf_t))
        return NULL;
    sl_buf_t *b = malloc(sizeof(sl_buf_t) + cap);
    if (b == NULL)
        return NULL;
    sl_buf_live_bytes += cap;
    b->refs = 1;
    b->len = 0;
    b->cap = (uint32_t)cap;
    b->start = 0;
    b->zip = NULL;
    return b;
}

sl_buf_t sl_buf_nozip = {.refs = 1};

void sl_buf_unref(sl_buf_t *b)
{
    if (b != NULL && --b->refs == 0) {
        if (b->zip != &sl_buf_nozip)
            sl_buf_unref(b->zip);
        sl_buf_live_bytes -= b->cap;
        free(b);
    }
}

/* The i-th queued segment. */
static inline sl_seg_t *seg_at(sl_outq_t *q, uint32_t i)
{
    return q->cap ? &q->segs[(q->head + i) % q->cap] : &q->one;
}

int sl_outq_push(sl_outq_t *q, sl_buf_t *buf, size_t off, size_t len)
{
    if (len == 0)
        return SL_OK;
    if (q->count > 0 && q->count == q->cap + (q->cap == 0)) {
        /* Full: the inline slot (cap 0, one queued) or the ring. */
        uint32_t ncap = q->cap ? q->cap * 2 : 4;
        sl_seg_t *n = malloc(sizeof(sl_seg_t) * ncap);
        if (n == NULL)
            return SL_ERROR;
        for (uint32_t i = 0; i < q->count; i++)
            n[i] = *seg_at(q, i);
        free(q->segs);
        q->segs = n;
        q->cap = ncap;
        q->head = 0;
    }
    *seg_at(q, q->count) =
        (sl_seg_t){.buf = sl_buf_ref(buf), .off = (uint32_t)off, .len = (uint32_t)len};
    q->count++;
    q->bytes += len;
    return SL_OK;
}

static void outq_pop(sl_outq_t *q)
{
    sl_buf_unref(seg_at(q, 0)->buf);
    q->head_partial = false;
    if (q->cap)
        q->head = (q->head + 1) % q->cap;
    q->count--;
    if (q->count == 0) {
        q->head = 0;
        /* A small ring stays: a subscriber that gets a message per turn
         * would otherwise cost an allocation per delivered message.  A ring
         * that grew for a burst is given back. */
        if (q->cap > SL_OUTQ_KEEP) {
            free(q->segs);
            q->segs = NULL;
            q->cap = 0;
        }
    }
}

int sl_outq_flush(sl_outq_t *q, int fd)
{
    while (q->count > 0) {
        struct iovec iov[SL_OUTQ_IOV];
        int n = 0;
        for (uint32_t i = 0; i < q->count && n < SL_OUTQ_IOV; i++, n++) {
            sl_seg_t *s = seg_at(q, i);
            iov[n].iov_base = s->buf->data + s->off;
            iov[n].iov_len = s->len;
        }
        /* One buffer (a light-load delivery, most replies): send(2) skips
         * the VFS layer writev goes through (rw checks, the iovec import),
         * a few percent of the kernel's cost per write on loopback.  Not a
         * socket (ENOTSOCK): writev as before. */
        ssize_t w = n == 1 ? send(fd, iov[0].iov_base, iov[0].iov_len, MSG_NOSIGNAL) : -1;
        if (n != 1 || (w < 0 && errno == ENOTSOCK))
            w = writev(fd, iov, n);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK)
                return SL_AGAIN;
            return SL_ERROR;
        }
        sl_outq_advance(q, (size_t)w);
    }
    return SL_OK;
}

void sl_outq_advance(sl_outq_t *q, size_t n)
{
    q->bytes -= (uint64_t)n;
    q->pinned = q->pinned > n ? (uint16_t)(q->pinned - n) : 0;
    size_t left = n;
    while (left > 0) {
        sl_seg_t *s = seg_at(q, 0);
        if (left >= s->len) {
            left -= s->len;
            outq_pop(q);
        } else {
            s->off += (uint32_t)left;
            s->len -= (uint32_t)left;
            q->head_partial = true;
            left = 0;
        }
    }
}

size_t sl_outq_peek(const sl_outq_t *q, uint8_t *buf, size_t cap, const uint8_t **p)
{
    if (q->count == 0)
        return 0;
    const sl_seg_t *s = seg_at((sl_outq_t *)q, 0);
    if (s->len >= cap || q->count == 1) {
        *p = s->buf->data + s->off;
        return SL_MIN((size_t)s->len, cap);
    }
    size_t used = 0;
    for (uint32_t i = 0; i < q->count && used < cap; i++) {
        s = seg_at((sl_outq_t *)q, i);
        size_t k = SL_MIN((size_t)s->len, cap - used);
        memcpy(buf + used, s->buf->data + s->off, k);
        used += k;
    }
    *p = buf;
    return used;
}

void sl_outq_trim(sl_outq_t *q)
{
    if (q->count == 0 && q->segs != NULL) {
        free(q->segs);
        q->segs = NULL;
        q->cap = q->head = 0;
    }
}

void sl_outq_clear(sl_outq_t *q)
{
    while (q->count > 0)
        outq_pop(q);
    free(q->segs);
    q->segs = NULL;
    q->cap = q->head = 0;
    q->bytes = 0;
    q->pinned = 0;
}

void sl_outq_drop_unstarted(sl_outq_t *q)
{
    uint32_t keep = sl_outq_partial(q) ? 1 : 0;
    uint64_t seen = 0;
    for (uint32_t i = 0; i < q->count && seen < q->pinned; i++) {
        seen += seg_at(q, i)->len;
        keep = SL_MAX(keep, i + 1);
    }
    while (q->count > keep) {
        /* Pop from the tail. */
        sl_seg_t *s = seg_at(q, q->count - 1);
        q->bytes -= s->len;
        sl_buf_unref(s->buf);
        q->count--;
    }
    if (q->count == 0) {
        q->head = 0;
        q->head_partial = false;
    }
}

bool sl_outq_partial(const sl_outq_t *q)
{
    return q->count > 0 && q->head_partial;
}
