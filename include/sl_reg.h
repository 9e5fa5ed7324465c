/*
 * sl_reg.h - the shared registry: the tables every worker and the master
 * consult, in the shared mapping, built on sl_arena (memory), sl_qsbr
 * (grace periods) and sl_table (RCU hash tables).
 *
 * Connections: conn-id -> owning worker, its local slot, opened-at, last
 * activity and message count.  Ownership: an entry is created and removed
 * by the worker that owns the connection (so that worker may keep a pointer
 * to it for the connection's life), or removed by the master after that
 * worker died.  Anyone may read entries inside a read-side section.
 *
 * Reader slots: worker N uses QSBR slot N; the master uses SL_REG_MASTER_SLOT.
 */
#ifndef SL_REG_H
#define SL_REG_H

#include "sl_arena.h"
#include "sl_qsbr.h"
#include "sl_table.h"

#define SL_REG_MASTER_SLOT 64
#define SL_REG_BROKER_SLOT 65 /* the broker process (--redis) */
#define SL_CONN_ID_MAX 40

typedef struct sl_reg_conn {
    sl_table_node_t node; /* first: retired through QSBR */
    int32_t worker;
    uint32_t slot;
    uint64_t conn_no;       /* the n of conn-<ms>-<n>: guards against slot reuse */
    int64_t opened_at;      /* wall ms */
    uint64_t last_activity; /* wall ms, updated by the owner (uatomic) */
    uint64_t message_count; /* updated by the owner (uatomic) */
    char conn_id[SL_CONN_ID_MAX];
} sl_reg_conn_t;

struct sl_inbox;

typedef struct {
    sl_qsbr_t qsbr;
    sl_arena_t *arena;
    sl_table_t *conns;
    sl_table_t *channels; /* sl_chan.h */
    sl_table_t *subs;     /* sl_chan.h */
    sl_table_t *rpcs;     /* sl_rpc.h */
    struct sl_inbox *inboxes[64]; /* one per worker, from the arena */
    uint32_t nworkers;
    uint64_t next_msg_id; /* atomic: message-ids, unique for the server's life */
    uint64_t next_rpc;    /* atomic: request numbers, unique for the server's life */
    char id_suffix[12];   /* --redis: ".<node>" ends every conn-id and request-id; else "" */
} sl_reg_t;

/* Lay the registry's memory over region[0..size) (the mapping after its
 * fixed header); tables sized for `max_conns` connections.  SL_OK or
 * SL_ERROR (region too small). */
int sl_reg_init(sl_reg_t *r, void *region, size_t size, uint64_t max_conns, uint32_t nworkers);

/* Register a connection (conn_id must be new: ids come from a server-wide
 * counter); NULL when shared memory is exhausted. */
sl_reg_conn_t *sl_reg_conn_add(sl_reg_t *r, const char *conn_id, int worker, uint32_t slot,
                               uint64_t conn_no, int64_t opened_at);
/* Remove the owner's entry (retired: freed after a grace period). */
void sl_reg_conn_remove(sl_reg_t *r, sl_reg_conn_t *c);
/* Read side. */
sl_reg_conn_t *sl_reg_conn_find(sl_reg_t *r, const char *conn_id, size_t len);

/* Master, after worker `worker` died: take its reader slot offline, remove
 * every connection and subscription it owned, and drop what was waiting in
 * its inbox.  Returns how many connections were removed. */
size_t sl_reg_worker_cleanup(sl_reg_t *r, int worker);

/* Shared-memory figures for /stats and /health. */
typedef struct {
    uint64_t used_bytes, total_bytes, failures;
    uint64_t qsbr_pending, qsbr_retired, qsbr_reclaimed;
    uint64_t registered_connections;
} sl_reg_figures_t;
void sl_reg_figures(sl_reg_t *r, sl_reg_figures_t *f);

#endif
