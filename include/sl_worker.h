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

/* The worker process: its loop and control events.  Its connections, the
 * loop they run on, its stats slot and scratch buffers are sl_conns
 * (sl_conn.h), which every layer below the worker uses. */
typedef struct {
    int id;
    struct event_base *base;
    int ctl_fd; /* Unix socket from the master: accepted fds arrive here */
    struct event *ctl_ev, *tick_ev, *sig_ev, *wake_ev;
    sl_worker_stats_t *stats; /* this worker's slot in shared memory */
    int64_t stop_deadline; /* monotonic ms (stopping: sl_conns.stopping) */
} sl_worker_t;

extern sl_worker_t *sl_worker;

/* Body of worker process `id`: runs until stopped, returns exit status. */
int sl_worker_main(int id, int ctl_fd, int tel_fd);

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
