/*
 * registry.c - the shared registry (see sl_reg.h for ownership rules).
 *
 * Entries are immutable except for the counters their owner updates with
 * atomic stores, so readers never see a half-written entry: an entry is
 * filled completely before sl_table_insert_new publishes it.
 */
#include "sl_reg.h"
#include "sl_access.h"
#include "sl_chan.h"
#include "sl_rpc.h"

#include <string.h>
#include <urcu/uatomic.h>

static uint32_t pow2_at_least(uint64_t n)
{
    uint32_t p = 64;
    while (p < n && p < (1u << 30))
        p <<= 1;
    return p;
}

int sl_reg_init(sl_reg_t *r, void *region, size_t size, uint64_t max_conns, uint32_t nworkers)
{
    r->arena = sl_arena_init(region, size);
    if (r->arena == NULL || sl_qsbr_init(&r->qsbr, r->arena) != SL_OK)
        return SL_ERROR;
    /* A bucket per four connections: chains stay short at the limit, and
     * the bucket array - which every worker's inserts touch all over, so
     * each of them holds all of it resident - stays small (8 bytes per 4
     * connections).  Lookups by conn-id are rare (admin calls). */
    r->conns = sl_table_create(r->arena, &r->qsbr, pow2_at_least(max_conns / 4), 64);
    r->rpcs = sl_table_create(r->arena, &r->qsbr, 4096, 64);
    if (r->conns == NULL || r->rpcs == NULL ||
        sl_access_init(r, max_conns, nworkers) != SL_OK)
        return SL_ERROR;
    return sl_chan_init(r, nworkers);
}

sl_reg_conn_t *sl_reg_conn_add(sl_reg_t *r, const char *conn_id, int worker, uint32_t slot,
                               uint64_t conn_no, int64_t opened_at)
{
    size_t len = strlen(conn_id);
    if (len >= SL_CONN_ID_MAX)
        return NULL;
    sl_reg_conn_t *c = sl_arena_calloc(r->arena, sizeof(*c));
    if (c == NULL)
        return NULL;
    memcpy(c->conn_id, conn_id, len);
    c->worker = worker;
    c->slot = slot;
    c->conn_no = conn_no;
    c->opened_at = opened_at;
    c->last_activity = (uint64_t)opened_at;
    c->node.key = c->conn_id;
    c->node.klen = (uint32_t)len;
    c->node.hash = sl_table_hash(conn_id, len);
    /* conn-ids are unique by construction (a server-wide counter), so the
     * insert need not walk the chain through other workers' entries. */
    sl_table_insert_new(r->conns, &c->node);
    return c;
}

void sl_reg_conn_remove(sl_reg_t *r, sl_reg_conn_t *c)
{
    sl_table_remove(r->conns, c->node.hash, c->conn_id, c->node.klen);
}

sl_reg_conn_t *sl_reg_conn_find(sl_reg_t *r, const char *conn_id, size_t len)
{
    return (sl_reg_conn_t *)sl_table_lookup(r->conns, sl_table_hash(conn_id, len), conn_id, len);
}

typedef struct {
    int worker;
    sl_reg_conn_t **found;
    size_t n, cap;
} collect_t;

static int collect_cb(sl_table_node_t *n, void *arg)
{
    collect_t *col = arg;
    sl_reg_conn_t *c = (sl_reg_conn_t *)n;
    if (c->worker == col->worker && col->n < col->cap)
        col->found[col->n++] = c;
    return 0;
}

size_t sl_reg_worker_cleanup(sl_reg_t *r, int worker)
{
    /* The dead worker cannot be reading: take its slot offline first so
     * nothing it held blocks reclamation. */
    sl_qsbr_release(&r->qsbr, worker);
    sl_qsbr_online(&r->qsbr, SL_REG_MASTER_SLOT);
    size_t total = 0;
    sl_reg_conn_t *batch[256];
    for (;;) {
        /* Collect in batches: the walk is a read-side section, removal a
         * write; entries found stay valid until our next quiescent state. */
        collect_t col = {worker, batch, 0, SL_ARRAY_LEN(batch)};
        sl_table_foreach(r->conns, collect_cb, &col);
        for (size_t i = 0; i < col.n; i++)
            sl_reg_conn_remove(r, batch[i]);
        total += col.n;
        sl_qsbr_quiescent(&r->qsbr, SL_REG_MASTER_SLOT);
        if (col.n < col.cap)
            break;
    }
    sl_chan_worker_cleanup(r, worker);
    sl_rpc_worker_cleanup(r, worker);
    sl_access_worker_cleanup(r, worker); /* its connections' places per IP and user */
    /* Its inbox may hold message references it never consumed; nobody
     * else consumes it until the replacement starts, so drain it here. */
    if ((uint32_t)worker < r->nworkers && r->inboxes[worker]) {
        sl_inbox_entry_t e;
        while (sl_inbox_pop(r->inboxes[worker], &e))
            sl_chan_msg_unref(r, e.msg);
    }
    sl_qsbr_offline(&r->qsbr, SL_REG_MASTER_SLOT);
    sl_qsbr_reclaim(&r->qsbr);
    return total;
}

void sl_reg_figures(sl_reg_t *r, sl_reg_figures_t *f)
{
    sl_arena_stats_t s;
    sl_arena_stats(r->arena, &s);
    f->used_bytes = s.used_bytes;
    f->total_bytes = s.total_bytes;
    f->failures = s.failures;
    f->qsbr_pending = uatomic_read(&r->qsbr.pending);
    f->qsbr_retired = uatomic_read(&r->qsbr.retired);
    f->qsbr_reclaimed = uatomic_read(&r->qsbr.reclaimed);
    f->registered_connections = sl_table_count(r->conns);
}
