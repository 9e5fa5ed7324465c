/*
 * rpc.c - RPC correlations (see sl_rpc.h for the life of an entry).
 *
 * Memory ordering: the entry is filled before sl_table_insert publishes it;
 * the state is claimed with uatomic_cmpxchg (a full barrier), so whatever
 * the winner does next is ordered after its win.
 */
#include "sl_rpc.h"
#include "sl_crash.h"

#include <inttypes.h>
#include <stdio.h>
#include <string.h>
#include <urcu/uatomic.h>

sl_rpc_t *sl_rpc_create(sl_reg_t *r, int worker, uint32_t slot, uint64_t conn_no,
                        const char *chan, size_t chan_len, int64_t timeout_ms)
{
    if (chan_len > 128)
        return NULL;
    sl_rpc_t *q = sl_arena_calloc(r->arena, sizeof(*q) + chan_len + 1);
    if (q == NULL)
        return NULL;
    SL_CRASHPOINT("rpc.create.allocated");
    q->no = uatomic_add_return(&r->next_rpc, 1);
    q->created_at = sl_now_ms();
    q->deadline = q->created_at + timeout_ms;
    snprintf(q->request_id, sizeof(q->request_id), "req-%" PRId64 "-%" PRIu64 "%s", q->created_at,
             q->no, r->id_suffix);
    q->worker = worker;
    q->slot = slot;
    q->conn_no = conn_no;
    memcpy(q->channel_id, chan, chan_len);
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

bool sl_rpc_claim(sl_rpc_t *q, uint32_t kind, int claimer)
{
    uint32_t state = kind | (uint32_t)(claimer + 1) << 8;
    bool won = uatomic_cmpxchg(&q->state, SL_RPC_PENDING, state) == SL_RPC_PENDING;
    if (won)
        SL_CRASHPOINT("rpc.claimed");
    return won;
}

void sl_rpc_unclaim(sl_rpc_t *q)
{
    uatomic_set(&q->state, SL_RPC_PENDING);
}

bool sl_rpc_held_by(const sl_rpc_t *q, int worker)
{
    return q->worker == worker || SL_RPC_CLAIMER(uatomic_read(&q->state)) == worker;
}

int sl_rpc_cleanup_one(sl_reg_t *r, sl_rpc_t *q, int worker)
{
    if (q->worker == worker) {
        /* Its requester is gone: cancel (a live responder holding the
         * claim removes it itself; its response finds no connection). */
        if (!sl_rpc_claim(q, SL_RPC_CANCELLED, SL_REG_MASTER_SLOT))
            return 0;
    } else {
        /* A claim the dead worker held: take it over.  Whether or not its
         * response was handed over, the requester's record settles it:
         * with the response if it arrived, else with rpc-timeout. */
        uint32_t st = uatomic_read(&q->state);
        if (SL_RPC_CLAIMER(st) != worker ||
            uatomic_cmpxchg(&q->state, st,
                            SL_RPC_EXPIRED | (uint32_t)(SL_REG_MASTER_SLOT + 1) << 8) != st)
            return 0;
    }
    sl_rpc_remove(r, q);
    return 1;
}

void sl_rpc_remove(sl_reg_t *r, sl_rpc_t *q)
{
    sl_table_remove_node(r->rpcs, q->node.hash, &q->node);
}

typedef struct {
    sl_reg_t *r;
    int64_t deadline;
    int claimer;
    size_t n;
} rpc_expire_t;

static int rpc_expire_cb(sl_table_node_t *n, void *arg)
{
    rpc_expire_t *x = arg;
    sl_rpc_t *q = (sl_rpc_t *)n;
    /* Removing while walking is fine: a removed node keeps its next
     * pointer until a grace period after our next quiescent state. */
    if (q->deadline <= x->deadline && sl_rpc_claim(q, SL_RPC_EXPIRED, x->claimer)) {
        sl_rpc_remove(x->r, q);
        x->n++;
    }
    return 0;
}

size_t sl_rpc_expire(sl_reg_t *r, int64_t now_ms, int claimer)
{
    rpc_expire_t x = {r, now_ms, claimer, 0};
    sl_table_foreach(r->rpcs, rpc_expire_cb, &x);
    return x.n;
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
