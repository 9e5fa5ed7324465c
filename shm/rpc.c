/*
 * rpc.c - RPC correlations (see sl_rpc.h for the life of an entry).
 *
 * Memory ordering: the entry is filled before sl_table_insert publishes it;
 * the state is claimed with uatomic_cmpxchg (a full barrier), so whatever
 * the winner does next is ordered after its win.  Every change of the
 * state word is a compare-and-swap against the value just read, so a
 * cancel that marks a claimed entry abandoned and the claimer's un-claim
 * cannot both succeed: one of them sees the other's word and acts on it.
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

bool sl_rpc_unclaim(sl_reg_t *r, sl_rpc_t *q)
{
    for (;;) {
        uint32_t st = uatomic_read(&q->state);
        if ((st & SL_RPC_ABANDONED) && !SL_MUTATED(M_RPC_ORPHAN)) {
            /* Its requester went while we held the claim and left the
             * entry to us: nobody would ever claim it again. */
            sl_rpc_remove(r, q);
            return false;
        }
        /* A compare-and-swap: an abandonment between the read and here
         * makes it fail, and we look again. */
        if (uatomic_cmpxchg(&q->state, st, SL_RPC_PENDING) == st)
            return true;
    }
}

bool sl_rpc_cancel(sl_reg_t *r, sl_rpc_t *q, int claimer)
{
    for (;;) {
        uint32_t st = uatomic_read(&q->state);
        if (st == SL_RPC_PENDING) {
            if (sl_rpc_claim(q, SL_RPC_CANCELLED, claimer)) {
                sl_rpc_remove(r, q);
                return true;
            }
            continue;
        }
        /* Claimed: whoever holds the claim removes it - after a response
         * handed over, or, now, instead of un-claiming it. */
        if ((st & SL_RPC_ABANDONED) ||
            uatomic_cmpxchg(&q->state, st, st | SL_RPC_ABANDONED) == st)
            return false;
    }
}

bool sl_rpc_held_by(const sl_rpc_t *q, int worker)
{
    return q->worker == worker || SL_RPC_CLAIMER(uatomic_read(&q->state)) == worker;
}

int sl_rpc_cleanup_one(sl_reg_t *r, sl_rpc_t *q, int worker)
{
    for (;;) {
        uint32_t st = uatomic_read(&q->state);
        if (SL_RPC_CLAIMER(st) == worker) {
            /* A claim the dead worker held (whoever made the request):
             * take it over.  Whether or not its response was handed over,
             * the requester's record settles it: with the response if it
             * arrived, else with rpc-timeout. */
            if (uatomic_cmpxchg(&q->state, st,
                                SL_RPC_EXPIRED | (uint32_t)(SL_REG_MASTER_SLOT + 1) << 8) != st)
                continue; /* abandoned meanwhile: look again */
            sl_rpc_remove(r, q);
            return 1;
        }
        if (q->worker != worker)
            return 0;
        /* Its requester is gone: cancel - or abandon it to the live
         * responder holding the claim, which then removes it. */
        return sl_rpc_cancel(r, q, SL_REG_MASTER_SLOT) ? 1 : 0;
    }
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

uint32_t sl_rpc_count_old(sl_reg_t *r, uint32_t from, uint32_t max_buckets, int64_t before_ms,
                          uint64_t *old)
{
    rpc_old_t o = {before_ms, 0};
    uint32_t next = sl_table_walk(r->rpcs, from, max_buckets, rpc_old_cb, &o);
    *old += o.old;
    return next;
}

void sl_rpc_counts(sl_reg_t *r, int64_t now_ms, int64_t old_ms, uint64_t *pending, uint64_t *old)
{
    *pending = sl_table_count(r->rpcs);
    rpc_old_t o = {now_ms - old_ms, 0};
    if (*pending)
        sl_table_foreach(r->rpcs, rpc_old_cb, &o);
    *old = o.old;
}
