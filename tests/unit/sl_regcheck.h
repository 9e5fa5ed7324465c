/*
 * sl_regcheck.h - the registry's invariants, checked from outside (the
 * kill-point and channel stress tests).  Header-only: static functions.
 *
 * Checks: every intent cleared (channels, stripes, inboxes, limbo); each
 * channel's list and the subscriptions table agree, prev pointers and
 * per-worker counts match; every stripe's count is right; limbo well
 * formed; every message's refs equals the references inbox entries and
 * retention rings hold; access counts: no intent left, every entry's total
 * above zero; nothing of a dead worker left once cleaned up (connections,
 * subscriptions, RPC claims, places per IP and user, user entries).
 * Pointers are range-checked before they are followed, so a dangling node
 * (freed, poisoned) shows as a failure, not a crash.
 */
#ifndef SL_REGCHECK_H
#define SL_REGCHECK_H

#include "sl_access.h"
#include "sl_chan.h"
#include "sl_rpc.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    sl_reg_t *r;
    const uint8_t *lo, *hi; /* the arena's memory */
    int nworkers;
    int dead;     /* a dead worker whose entries must be gone (-1: none) */
    char failure[512];
} regcheck_t;

#define RC_EXPECT(k, cond, ...)                                                           \
    do {                                                                                  \
        if (!(cond) && (k)->failure[0] == '\0')                                           \
            snprintf((k)->failure, sizeof((k)->failure), __VA_ARGS__);                    \
    } while (0)

static inline bool rc_live(const regcheck_t *k, const void *p)
{
    const uint8_t *x = p;
    return x >= k->lo && x < k->hi && ((uintptr_t)p & 7) == 0;
}

static inline void rc_table(regcheck_t *k, sl_table_t *t, const char *name)
{
    for (uint32_t s = 0; s < t->nlocks; s++) {
        sl_table_stripe_t *st = &t->stripes[s];
        RC_EXPECT(k, st->op == 0, "%s stripe %u: intent left (op %u)", name, s, st->op);
        uint64_t n = 0;
        for (uint32_t b = s; b < t->nbuckets; b += t->nlocks)
            for (sl_table_node_t *x = t->buckets[b]; x && n < 10000000; x = x->next) {
                RC_EXPECT(k, rc_live(k, x) && x->rcu.epoch == 0,
                          "%s bucket %u: a node that is not live (%p)", name, b, (void *)x);
                if (!rc_live(k, x))
                    break;
                n++;
            }
        RC_EXPECT(k, st->count == n, "%s stripe %u: count %llu, chains hold %llu", name, s,
                  (unsigned long long)st->count, (unsigned long long)n);
    }
}

typedef struct {
    regcheck_t *k;
    sl_chan_msg_t **m;
    uint32_t *refs;
    size_t n, cap;
    uint32_t *idx; /* open addressing over m: index + 1, 0 empty (2 x cap slots) */
} rc_refs_t;

static inline size_t rc_slot(const sl_chan_msg_t *m, size_t mask)
{
    return (size_t)(((uintptr_t)m >> 3) * 0x9E3779B97F4A7C15ull >> 17) & mask;
}

/* Count one reference to m.  A hashed index over the messages seen (a
 * scenario with full inboxes holds thousands of references, and a linear
 * search made the kill-point run quadratic in them). */
static inline void rc_ref(rc_refs_t *rf, sl_chan_msg_t *m, const char *where)
{
    if (m == NULL)
        return;
    RC_EXPECT(rf->k, rc_live(rf->k, m) && m->len < (1u << 20) && m->refs != 0x5A5A5A5A,
              "%s: a reference to a message that is not live", where);
    if (!rc_live(rf->k, m))
        return;
    size_t mask = rf->cap * 2 - 1, i;
    if (rf->cap)
        for (i = rc_slot(m, mask); rf->idx[i]; i = (i + 1) & mask)
            if (rf->m[rf->idx[i] - 1] == m) {
                rf->refs[rf->idx[i] - 1]++;
                return;
            }
    if (rf->n == rf->cap) {
        size_t cap = rf->cap ? rf->cap * 2 : 256;
        rf->m = realloc(rf->m, sizeof(*rf->m) * cap);
        rf->refs = realloc(rf->refs, sizeof(*rf->refs) * cap);
        free(rf->idx);
        rf->idx = calloc(cap * 2, sizeof(*rf->idx));
        if (!rf->m || !rf->refs || !rf->idx) {
            fprintf(stderr, "rc_ref: out of memory\n");
            exit(2);
        }
        rf->cap = cap;
        mask = cap * 2 - 1;
        for (size_t j = 0; j < rf->n; j++) {
            for (i = rc_slot(rf->m[j], mask); rf->idx[i]; i = (i + 1) & mask) {
            }
            rf->idx[i] = (uint32_t)j + 1;
        }
    }
    for (i = rc_slot(m, mask); rf->idx[i]; i = (i + 1) & mask) {
    }
    rf->idx[i] = (uint32_t)rf->n + 1;
    rf->m[rf->n] = m;
    rf->refs[rf->n++] = 1;
}

static inline int rc_chan_cb(sl_table_node_t *n, void *arg)
{
    rc_refs_t *rf = arg;
    regcheck_t *k = rf->k;
    sl_chan_t *c = (sl_chan_t *)n;
    RC_EXPECT(k, c->intent.op == SL_CI_NONE, "channel %s: intent left (op %u)", c->id,
              c->intent.op);
    RC_EXPECT(k, !c->deleted, "channel %s: deleted but still in the table", c->id);
    uint32_t per[SL_CHAN_MAX_WORKERS] = {0}, total = 0;
    sl_sub_t *prev = NULL;
    for (sl_sub_t *s = c->subs; s; prev = s, s = s->next) {
        bool ok = rc_live(k, s) && s->worker >= 0 && s->worker < k->nworkers;
        RC_EXPECT(k, ok && s->chan_len == c->node.klen &&
                         memcmp(s->key, c->id, c->node.klen) == 0 && s->key[c->node.klen] == '\n',
                  "channel %s: list node %p is not a live subscription of it", c->id, (void *)s);
        if (!ok || total > 10000000)
            break;
        RC_EXPECT(k, s->prev == prev, "channel %s: prev pointer wrong", c->id);
        RC_EXPECT(k, s->node.rcu.epoch == 0, "channel %s: a retired node on the list", c->id);
        RC_EXPECT(k, sl_table_lookup(k->r->subs, s->node.hash, s->key, s->node.klen) == &s->node,
                  "channel %s: list node not in the subscriptions table", c->id);
        RC_EXPECT(k, s->worker != k->dead, "channel %s: the dead worker's subscription is left",
                  c->id);
        per[s->worker]++;
        total++;
    }
    RC_EXPECT(k, c->subscribers == total, "channel %s: subscribers %u, list %u", c->id,
              c->subscribers, total);
    for (int w = 0; w < k->nworkers; w++)
        RC_EXPECT(k, c->worker_subs[w] == per[w], "channel %s: worker_subs[%d] %u, list %u",
                  c->id, w, c->worker_subs[w], per[w]);
    uint32_t cap = (uint32_t)c->config.message_retention;
    RC_EXPECT(k, c->ring_lo <= c->ring_hi && c->ring_hi - c->ring_lo <= cap,
              "channel %s: ring [%llu, %llu) over %u", c->id, (unsigned long long)c->ring_lo,
              (unsigned long long)c->ring_hi, cap);
    uint64_t last = 0;
    for (uint64_t pos = c->ring_lo; pos < c->ring_hi && cap; pos++) {
        sl_chan_msg_t *m = c->ring[pos % cap];
        rc_ref(rf, m, c->id);
        if (!rc_live(k, m))
            break;
        RC_EXPECT(k, m->seq > last, "channel %s: ring out of seq order", c->id);
        last = m->seq;
    }
    if (c->ring_hi > c->ring_lo)
        RC_EXPECT(k, last == c->next_seq - 1,
                  "channel %s: newest retained seq %llu, next_seq %llu", c->id,
                  (unsigned long long)last, (unsigned long long)c->next_seq);
    return 0;
}

static inline int rc_sub_cb(sl_table_node_t *n, void *arg)
{
    regcheck_t *k = arg;
    sl_sub_t *s = (sl_sub_t *)n;
    sl_chan_t *c = sl_chan_find(k->r, s->key, s->chan_len);
    bool found = false;
    for (sl_sub_t *x = c ? c->subs : NULL; x && rc_live(k, x); x = x->next)
        if (x == s)
            found = true;
    RC_EXPECT(k, found, "subscription %.*s: in the table but on no channel's list",
              (int)s->node.klen, s->key);
    return 0;
}

static inline int rc_conn_cb(sl_table_node_t *n, void *arg)
{
    regcheck_t *k = arg;
    RC_EXPECT(k, ((sl_reg_conn_t *)n)->worker != k->dead, "the dead worker's connection is left");
    return 0;
}

static inline int rc_rpc_cb(sl_table_node_t *n, void *arg)
{
    regcheck_t *k = arg;
    sl_rpc_t *q = (sl_rpc_t *)n;
    if (k->dead < 0)
        return 0;
    RC_EXPECT(k, q->worker != k->dead, "the dead worker's RPC request is left");
    RC_EXPECT(k, SL_RPC_CLAIMER(q->state) != k->dead,
              "RPC %s: claimed by the dead worker: orphaned", q->request_id);
    return 0;
}

static inline int rc_count_cb(sl_table_node_t *n, void *arg)
{
    regcheck_t *k = arg;
    sl_access_count_t *e = (sl_access_count_t *)n;
    uint64_t total = 0;
    for (uint32_t w = 0; w < e->nworkers; w++)
        total += e->counts[w];
    RC_EXPECT(k, total > 0, "access entry %.*s: empty but still in the table", (int)n->klen - 1,
              n->key + 1);
    RC_EXPECT(k, k->dead < 0 || (uint32_t)k->dead >= e->nworkers || e->counts[k->dead] == 0,
              "access entry %.*s: the dead worker's places are left", (int)n->klen - 1,
              n->key + 1);
    return 0;
}

static inline int rc_user_cb(sl_table_node_t *n, void *arg)
{
    regcheck_t *k = arg;
    RC_EXPECT(k, ((sl_access_user_t *)n)->worker != k->dead, "the dead worker's user entry %s is left",
              ((sl_access_user_t *)n)->conn_id);
    return 0;
}

static inline void rc_access(regcheck_t *k)
{
    sl_access_t *a = k->r->access;
    rc_table(k, a->counts, "access counts");
    rc_table(k, a->users, "access users");
    for (uint32_t s = 0; s < a->counts->nlocks; s++)
        RC_EXPECT(k, a->intents[s].op == 0, "access stripe %u: intent left (op %u)", s,
                  a->intents[s].op);
    sl_table_foreach(a->counts, rc_count_cb, k);
    sl_table_foreach(a->users, rc_user_cb, k);
}

/* Everything; k->failure gets the first failure ("" when all is well). */
static inline void rc_check(regcheck_t *k, sl_table_t *extra)
{
    sl_reg_t *r = k->r;
    /* The reference index is kept from one check to the next: the kill-point
     * test checks thousands of times, forking between checks, and under ASan
     * each freed buffer stays in its quarantine, growing the heap every fork
     * copies (which made the run twice as long). */
    static rc_refs_t keep;
    rc_refs_t rf = keep;
    rf.k = k;
    rf.n = 0;
    if (rf.idx)
        memset(rf.idx, 0, sizeof(*rf.idx) * rf.cap * 2);
    rc_table(k, r->conns, "conns");
    rc_table(k, r->channels, "channels");
    rc_table(k, r->subs, "subs");
    rc_table(k, r->rpcs, "rpcs");
    if (extra)
        rc_table(k, extra, "extra");
    sl_table_foreach(r->channels, rc_chan_cb, &rf);
    sl_table_foreach(r->subs, rc_sub_cb, k);
    sl_table_foreach(r->conns, rc_conn_cb, k);
    sl_table_foreach(r->rpcs, rc_rpc_cb, k);
    rc_access(k);
    for (int w = 0; w < k->nworkers; w++) {
        sl_inbox_t *in = r->inboxes[w];
        RC_EXPECT(k, in->pending.msg == NULL, "inbox %d: a recorded push is left", w);
        for (uint64_t i = in->head; i < in->tail; i++)
            rc_ref(&rf, in->ring[i & (SL_INBOX_CAP - 1)].msg, "inbox");
    }
    for (size_t i = 0; i < rf.n; i++)
        RC_EXPECT(k, rf.m[i]->refs == rf.refs[i], "message seq %llu: refs %u, referenced %u times",
                  (unsigned long long)rf.m[i]->seq, rf.m[i]->refs, rf.refs[i]);
    keep = rf;
    sl_qsbr_t *q = &r->qsbr;
    RC_EXPECT(k, q->adding == NULL, "limbo: an append is left");
    uint64_t n = 0;
    sl_qsbr_head_t *last = NULL;
    for (sl_qsbr_head_t *h = q->limbo_head; h && n < 100000000; h = h->next) {
        RC_EXPECT(k, rc_live(k, h) && h->epoch != 0, "limbo: an object that is not retired");
        if (!rc_live(k, h))
            break;
        last = h;
        n++;
    }
    RC_EXPECT(k, n == q->pending && last == q->limbo_tail, "limbo: %llu objects, pending %llu",
              (unsigned long long)n, (unsigned long long)q->pending);
}

#endif
