/*
 * sl_worker.h - a worker process: one libevent loop owning a set of
 * connections handed over by the master.
 *
 * Each loop turn ends with sl_worker_turn_end: queued output of every
 * connection touched in the turn is written (one writev per connection),
 * telemetry is flushed, and dead connections are freed.
 */
#ifndef SL_WORKER_H
#define SL_WORKER_H

#include "sl_conn.h"
#include "sl_shm.h"

#define SL_SCRATCH_SIZE (64 * 1024)

typedef struct {
    int id;
    struct event_base *base;
    int ctl_fd; /* Unix socket from the master: accepted fds arrive here */
    struct event *ctl_ev, *tick_ev, *sig_ev, *wake_ev;
    sl_worker_stats_t *stats; /* this worker's slot in shared memory */
    sl_conn_t *conns;         /* live connections (doubly linked) */
    sl_conn_t *dirty;         /* to flush (or free, if dead) at turn end */
    sl_conn_t *ready;         /* input left for the next turn (doubly linked) */
    sl_conn_t *idle_head, *idle_tail; /* idle HTTP connections, oldest first (conn.c) */
    sl_conn_t **slots;        /* slot -> connection (NULL: free) */
    uint32_t nslots, slot_cap, free_hint;
    uint32_t nconns;
    bool stopping;
    int64_t stop_deadline; /* monotonic ms */
    /* Two separate buffers: input is parsed in place from rbuf while
     * replies are encoded into ebuf, so encoding never clobbers bytes not
     * yet parsed. */
    uint8_t *rbuf; /* SL_SCRATCH_SIZE bytes: socket reads */
    uint8_t *ebuf; /* SL_SCRATCH_SIZE bytes: JSON encoding */
    /* The fan-out trace (SENTE_FANOUT_TRACE, sl_pubsub.h): its file, -1
     * while off (the default); when on, the monotonic us of the last read
     * from a client socket and of the last wake-up by another worker. */
    int trace_fd;
    int64_t read_us, woken_us;
} sl_worker_t;

extern sl_worker_t *sl_worker;

/* Body of worker process `id`: runs until stopped, returns exit status. */
int sl_worker_main(int id, int ctl_fd, int tel_fd);

/* Connection bookkeeping used by conn.c. */
int sl_worker_attach(sl_conn_t *c);
void sl_worker_mark_dirty(sl_conn_t *c);
void sl_worker_mark_dead(sl_conn_t *c);

/* The connection has input left that it must process in the next loop
 * turn (its per-turn budget is spent, or it resumed after a pause).  It is
 * activated at the end of sl_worker_turn_end - outside the dispatch, so
 * libevent runs it once in the next pass, after every other connection's
 * events, the timers and the end-of-turn work; activated from inside a
 * callback it would run again in the same pass, and a peer that keeps
 * sending would hold the whole worker there. */
void sl_worker_mark_ready(sl_conn_t *c);

/* Count an error or refusal by reason (shows in /stats "errors"). */
void sl_worker_count_error(sl_err_t e);

/* Is this worker holding more output than its share of
 * --max-outbound-total (sl_buf_live_bytes)? */
bool sl_worker_over_budget(void);

/* Set up worker `id` in this process without the master: the loop, the
 * scratch buffers, the stats slot (shared memory must exist).  Used by
 * sl_worker_main and by the fuzzers.  SL_OK or SL_ERROR. */
int sl_worker_setup(sl_worker_t *w, int id);

/* The end of one loop turn: channel deliveries, every touched connection's
 * writes, telemetry, freeing dead connections, the RCU quiescent state,
 * then the ready connections are activated for the next turn.
 * Exported for the fuzzers, which run turns without a loop. */
void sl_worker_turn_end(sl_worker_t *w);

#endif
