/*
 * sl_outq.h - what a connection has yet to write: a queue of references to
 * shared, reference-counted byte buffers.
 *
 * A message sent to many connections is encoded once into one sl_buf_t; each
 * connection's queue holds a (buffer, offset, length) segment pointing into
 * it, so fan-out copies no payload.  All segments queued in one event-loop
 * turn leave in one writev().
 *
 * Ownership: sl_buf_new returns a buffer holding one reference (the
 * creator's).  sl_outq_push takes a new reference for the queue; the creator
 * drops its own with sl_buf_unref when done.  A buffer is freed when its last
 * reference goes.  Buffers are process-local (workers are single-threaded),
 * so the count is a plain integer.
 */
#ifndef SL_OUTQ_H
#define SL_OUTQ_H

#include "sl_common.h"

typedef struct sl_buf {
    uint32_t refs;
    uint32_t len; /* bytes used in data */
    uint32_t cap;
    uint32_t start; /* first byte that belongs to the output (frames are
                       encoded with their header just before the payload) */
    /* The same frame compressed (permessage-deflate), made the first time a
     * compressing connection is sent this buffer and then shared by all of
     * them (this buffer holds one reference; &sl_buf_nozip: tried, no
     * gain).  NULL: not tried. */
    struct sl_buf *zip;
    uint8_t data[];
} sl_buf_t;

extern sl_buf_t sl_buf_nozip;

/* Bytes held by live buffers in this process (each buffer counted once,
 * however many queues refer to it): what output really costs in memory,
 * for the worker's share of --max-outbound-total. */
extern uint64_t sl_buf_live_bytes;

sl_buf_t *sl_buf_new(size_t cap);
static inline sl_buf_t *sl_buf_ref(sl_buf_t *b)
{
    b->refs++;
    return b;
}
void sl_buf_unref(sl_buf_t *b);

typedef struct {
    sl_buf_t *buf;
    uint32_t off; /* absolute offset in buf->data */
    uint32_t len;
} sl_seg_t;

typedef struct {
    /* A queue of at most one segment lives in `one` (no allocation: most
     * connections have at most one frame waiting per loop turn); a second
     * segment moves both into the heap ring `segs` (cap > 0). */
    sl_seg_t one;
    sl_seg_t *segs; /* ring; NULL while cap == 0, small rings kept while busy */
    uint32_t cap, head, count;
    bool head_partial; /* the first segment has been partly written */
    /* The first `pinned` bytes are promised to the transport (TLS: a record
     * SSL_write took but could not write must be given again, byte for
     * byte; at most one record, 16 KiB): they stay queued - counted as
     * held, not as written - and sl_outq_drop_unstarted keeps every
     * segment they touch.  advance releases them.  (With head_partial in
     * what was padding: no hole, 48 B in all.) */
    uint16_t pinned;
    uint64_t bytes;    /* queued bytes not yet written */
} sl_outq_t;

/* Queue buf->data[off .. off+len); takes a reference.  SL_OK or SL_ERROR
 * (out of memory). */
int sl_outq_push(sl_outq_t *q, sl_buf_t *buf, size_t off, size_t len);

/* Write as much as the socket takes (writev, IOV_MAX segments per call).
 * Returns SL_OK when the queue is empty, SL_AGAIN when the socket is full,
 * SL_ERROR on a write error (errno set). */
int sl_outq_flush(sl_outq_t *q, int fd);

/* The first bytes of the queue, for a transport that frames them (TLS
 * records): at most `cap`.  When the first segment alone has `cap` bytes
 * or more, *p points into it (no copy); otherwise the first segments are
 * copied into buf and *p = buf.  Returns the length (0: empty queue). */
size_t sl_outq_peek(const sl_outq_t *q, uint8_t *buf, size_t cap, const uint8_t **p);

/* The first n bytes (n <= q->bytes) have been written: drop them. */
void sl_outq_advance(sl_outq_t *q, size_t n);

/* Give back the ring of an empty queue (the worker's timer calls it, so a
 * connection that stays idle holds no ring; a busy one loses it at most
 * once per tick). */
void sl_outq_trim(sl_outq_t *q);

/* Drop everything queued (releasing the references) and free the ring. */
void sl_outq_clear(sl_outq_t *q);

/* Drop every queued segment except a partly written first one (a frame
 * half sent must be finished before anything else can follow it) and those
 * holding pinned bytes (a frame given to the transport in part). */
void sl_outq_drop_unstarted(sl_outq_t *q);

/* Has the first queued segment been partly written?  (Then a frame is half
 * sent and nothing else may be put in front of it.) */
bool sl_outq_partial(const sl_outq_t *q);

#endif
