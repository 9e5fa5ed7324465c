/*
 * rpc.c - RPC correlations (see sl_rpc.h for the life of an entry).
 *
 * Memory ordering: the entry is filled before sl_table_insert publishes it;
 * the state is claimed with uatomic_cmpxchg (a full barrier), so whatever
 * the winner does next is ordered after its win.
 */
#include "sl_rpc.h"

#include <inttypes.h>
#include <stdio.h>
#include <string.h>
#include <urcu/uatomic.h>

sl_rpc_t *sl_rpc_create(sl_reg_t *r, const char *requester, int worker, uint32_t slot,
                        uint64_t conn_no, const char *channel_id, size_t chan_len,
                        int64_t timeout_ms)
{
    if (strlen(requester) >= SL_CONN_ID_MAX || chan_len > 128)
        return NULL;
    sl_rpc_t *q = sl_arena_calloc(r->arena, sizeof(*q));
    if (q == NULL)
        return NULL;
    q->no = uatomic_add_return(&r->next_rpc, 1);
    q->created_at = sl_now_ms();
    q->deadline = q->created_at + timeout_ms;
    snprintf(q->request_id, sizeof(q->request_id), "req-%" PRId64 "-%" PRIu64 "%s", q->created_at,
             q->no, r->id_suffix);
    memcpy(q->requester, requester, strlen(requester));
    memcpy(q->channel_id, channel_id, chan_len);
    q->worker = worker;
    q->slot = slot;
    q->conn_no = conn_no;
    q->state = SL_RPC_PENDING;
    q->node.key = q->request_id;
    q->node.klen = (uint32_t)strlen(q->request_id);
    q->node.hash = sl_table_hash(q->request_id, q->node.klen);
    if (sl_table_insert(r->rpcs, &q->node) != SL_OK) {
        sl_arena_free(r->arena, q); /* ids are unique: cannot happen */
        return NULL;
    }
    return q;
}

sl_rpc_t *sl_rpc_find(sl_reg_t *r, const char *request_id, size_t len)
{
    return (sl_rpc_t *)sl_table_lookup(r->rpcs, sl_table_hash(request_id, len), request_id, len);
}

bool sl_rpc_claim(sl_rpc_t *q, uint32_t state)
{
    return uatomic_cmpxchg(&q->state, SL_RPC_PENDING, state) == SL_RPC_PENDING;
}

void sl_rpc_unclaim(sl_rpc_t *q)
{
    uatomic_set(&q->state, SL_RPC_PENDING);
}

void sl_rpc_remove(sl_reg_t *r, sl_rpc_t *q)
{
    sl_table_remove(r->rpcs, q->node.hash, q->request_id, q->node.klen);
}

typedef struct {
    int worker;       /* -1: any */
    int64_t deadline; /* 0: any */
    sl_rpc_t *found[256];
    size_t n;
} rpc_collect_t;

static int rpc_collect_cb(sl_table_node_t *n, void *arg)
{
    rpc_collect_t *col = arg;
    sl_rpc_t *q = (sl_rpc_t *)n;
    if ((col->worker < 0 || q->worker == col->worker) &&
        (col->deadline == 0 || q->deadline <= col->deadline) && col->n < SL_ARRAY_LEN(col->found))
        col->found[col->n++] = q;
    return 0;
}

static size_t cancel_matching(sl_reg_t *r, int worker, int64_t deadline, uint32_t state,
                              int slot)
{
    size_t total = 0;
    for (;;) {
        rpc_collect_t col = {.worker = worker, .deadline = deadline, .n = 0};
        sl_table_foreach(r->rpcs, rpc_collect_cb, &col);
        size_t claimed = 0;
        for (size_t i = 0; i < col.n; i++)
            if (sl_rpc_claim(col.found[i], state)) {
                sl_rpc_remove(r, col.found[i]);
                claimed++;
            }
        total += claimed;
        if (slot >= 0)
            sl_qsbr_quiescent(&r->qsbr, slot);
        if (col.n < SL_ARRAY_LEN(col.found) || claimed == 0)
            break;
    }
    return total;
}

size_t sl_rpc_worker_cleanup(sl_reg_t *r, int worker)
{
    return cancel_matching(r, worker, 0, SL_RPC_CANCELLED, SL_REG_MASTER_SLOT);
}

size_t sl_rpc_expire(sl_reg_t *r, int64_t now_ms)
{
    return cancel_matching(r, -1, now_ms, SL_RPC_EXPIRED, -1);
}

typedef struct {
    int64_t before;
    uint64_t old;
} rpc_old_t;

static int rpc_old_cb(sl_table_node_t *n, void *arg)
{
    rpc_old_t *o = arg;
    if (((sl_rpc_t *)n)->created_at < o->before)
        o->old++;
    return 0;
}

void sl_rpc_counts(sl_reg_t *r, int64_t now_ms, int64_t old_ms, uint64_t *pending, uint64_t *old)
{
    *pending = sl_table_count(r->rpcs);
    rpc_old_t o = {now_ms - old_ms, 0};
    if (*pending)
        sl_table_foreach(r->rpcs, rpc_old_cb, &o);
    *old = o.old;
}
