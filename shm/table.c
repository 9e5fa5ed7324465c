/*
 * table.c - the RCU hash table (see sl_table.h for the contract).
 *
 * Memory ordering, at the lines where it matters:
 *  - publication: rcu_assign_pointer (a release store) makes the node's
 *    fields, written before, visible no later than the pointer to it;
 *  - traversal: rcu_dereference (a dependency-ordered load) so a reader that
 *    sees a pointer sees the fields it points to;
 *  - unlink: the predecessor's next is set to the node's successor with one
 *    shared store; readers already on the node still walk on through its
 *    (unchanged) next pointer, and the node is freed only after a grace
 *    period.
 *
 * Stripe lock, invariants: every chain of the stripe's buckets is a
 * NULL-terminated list of published nodes with distinct keys, each whose
 * rcu.epoch is 0 (not retired); `count` is the number of nodes in them; op
 * is 0 between updates.  Recovery completes the recorded update (roll
 * forward: the node was complete before the intent was written), then
 * recounts.  Recovery may read the recorded nodes: the master runs it
 * (sl_lock_recover_dead) before it releases the dead writer's reader slot,
 * so nothing the writer could see has been reclaimed.
 */
#define _LGPL_SOURCE
#include "sl_table.h"
#include "sl_crash.h"

#include <string.h>
#include <urcu/arch.h>
#include <urcu/pointer.h>
#include <urcu/system.h>
#include <urcu/uatomic.h>

enum { OP_NONE = 0, OP_INSERT = 1, OP_REMOVE = 2, OP_REPLACE = 3 };

/* ---- SipHash (Aumasson & Bernstein), c compression and d finalisation
 * rounds; 1-3 as in CPython and Rust's HashMap: keyed, and fast for short
 * keys. */

static uint64_t hash_key[2];

void sl_table_set_key(const uint64_t key[2])
{
    hash_key[0] = key[0];
    hash_key[1] = key[1];
}

static inline uint64_t rotl(uint64_t x, int b)
{
    return (x << b) | (x >> (64 - b));
}

#define SIPROUND                                                                   \
    do {                                                                           \
        v0 += v1; v1 = rotl(v1, 13); v1 ^= v0; v0 = rotl(v0, 32);                  \
        v2 += v3; v3 = rotl(v3, 16); v3 ^= v2;                                     \
        v0 += v3; v3 = rotl(v3, 21); v3 ^= v0;                                     \
        v2 += v1; v1 = rotl(v1, 17); v1 ^= v2; v2 = rotl(v2, 32);                  \
    } while (0)

static inline uint64_t siphash(const uint64_t k[2], int c, int d, const uint8_t *p, size_t len)
{
    uint64_t v0 = k[0] ^ 0x736f6d6570736575ULL, v1 = k[1] ^ 0x646f72616e646f6dULL;
    uint64_t v2 = k[0] ^ 0x6c7967656e657261ULL, v3 = k[1] ^ 0x7465646279746573ULL;
    uint64_t b = (uint64_t)len << 56;
    for (; len >= 8; p += 8, len -= 8) {
        uint64_t m;
        memcpy(&m, p, 8); /* little-endian hosts (x86-64, arm64) */
        v3 ^= m;
        for (int i = 0; i < c; i++)
            SIPROUND;
        v0 ^= m;
    }
    for (size_t i = 0; i < len; i++)
        b |= (uint64_t)p[i] << (8 * i);
    v3 ^= b;
    for (int i = 0; i < c; i++)
        SIPROUND;
    v0 ^= b;
    v2 ^= 0xff;
    for (int i = 0; i < d; i++)
        SIPROUND;
    return v0 ^ v1 ^ v2 ^ v3;
}

uint64_t sl_siphash(const uint64_t key[2], int c, int d, const void *data, size_t len)
{
    return siphash(key, c, d, data, len);
}

uint64_t sl_table_hash(const void *key, size_t len)
{
    return siphash(hash_key, 1, 3, key, len);
}

/* ---- layout */

static bool pow2(uint32_t x)
{
    return x && !(x & (x - 1));
}

static inline sl_table_node_t **bucket_of(sl_table_t *t, uint64_t hash)
{
    return &t->buckets[hash & (t->nbuckets - 1)];
}

static inline sl_table_stripe_t *stripe_of(sl_table_t *t, uint64_t hash)
{
    return &t->stripes[hash & (t->nlocks - 1)];
}

static inline bool node_is(const sl_table_node_t *n, uint64_t hash, const char *key, size_t klen)
{
    return n->hash == hash && n->klen == klen && memcmp(n->key, key, klen) == 0;
}

/* The link that points at the node with this key, or NULL.  Lock held. */
static sl_table_node_t **find_link(sl_table_t *t, uint64_t hash, const char *key, size_t klen)
{
    sl_table_node_t **link = bucket_of(t, hash);
    for (sl_table_node_t *n = *link; n; link = &n->next, n = n->next)
        if (node_is(n, hash, key, klen))
            return link;
    return NULL;
}

/* The link that points at exactly this node, or NULL (n not dereferenced).
 * Lock held. */
static sl_table_node_t **find_node_link(sl_table_t *t, uint64_t hash, const sl_table_node_t *n)
{
    sl_table_node_t **link = bucket_of(t, hash);
    for (sl_table_node_t *x = *link; x; link = &x->next, x = x->next)
        if (x == n)
            return link;
    return NULL;
}

/* ---- recovery */

static void stripe_recount(sl_table_t *t, sl_table_stripe_t *st)
{
    uint32_t s = (uint32_t)(st - t->stripes);
    uint64_t n = 0;
    for (uint32_t b = s; b < t->nbuckets; b += t->nlocks)
        for (sl_table_node_t *x = t->buckets[b]; x; x = x->next)
            n++;
    uatomic_set(&st->count, n);
}

static void publish(sl_table_t *t, sl_table_node_t *n)
{
    sl_table_node_t **b = bucket_of(t, n->hash);
    n->rcu.epoch = 0;
    n->rcu.next = NULL;
    n->next = *b;
    rcu_assign_pointer(*b, n);
}

static void stripe_recover(void *arg)
{
    sl_table_stripe_t *st = arg;
    sl_table_t *t = st->table;
    sl_table_node_t *n = st->node, *old = st->old, **link;
    if (!SL_MUTATED(M_STRIPE_RECOVER)) {
        switch (st->op) {
        case OP_INSERT:
            if (find_node_link(t, n->hash, n) == NULL && !find_link(t, n->hash, n->key, n->klen))
                publish(t, n);
            break;
        case OP_REMOVE:
            if ((link = find_node_link(t, n->hash, n)) != NULL)
                CMM_STORE_SHARED(*link, n->next);
            sl_qsbr_retire_once(t->qsbr, &n->rcu);
            break;
        case OP_REPLACE:
            if ((link = find_node_link(t, old->hash, old)) != NULL) {
                n->rcu.epoch = 0;
                n->next = old->next;
                rcu_assign_pointer(*link, n);
            } else if (find_node_link(t, n->hash, n) == NULL &&
                       !find_link(t, n->hash, n->key, n->klen)) {
                publish(t, n);
            }
            sl_qsbr_retire_once(t->qsbr, &old->rcu);
            break;
        }
    }
    st->op = OP_NONE;
    stripe_recount(t, st);
    /* Then the user's own update under this lock (idempotent too: killed
     * in it, the next locker comes back here). */
    if (t->user_recover)
        t->user_recover(t->user_arg, (uint32_t)(st - t->stripes));
}

void sl_table_set_recover(sl_table_t *t, sl_table_recover_fn fn, void *arg)
{
    t->user_recover = fn;
    t->user_arg = arg;
}

sl_table_t *sl_table_create(sl_arena_t *a, sl_qsbr_t *q, uint32_t nbuckets, uint32_t nlocks)
{
    if (!pow2(nbuckets) || !pow2(nlocks) || nlocks > nbuckets)
        return NULL;
    sl_table_t *t = sl_arena_calloc(a, sizeof(*t));
    if (t == NULL)
        return NULL;
    t->buckets = sl_arena_calloc(a, sizeof(*t->buckets) * nbuckets);
    t->stripes = sl_arena_calloc(a, sizeof(*t->stripes) * nlocks);
    if (t->buckets == NULL || t->stripes == NULL) {
        sl_arena_free(a, t->buckets);
        sl_arena_free(a, t->stripes);
        sl_arena_free(a, t);
        return NULL;
    }
    for (uint32_t i = 0; i < nlocks; i++) {
        t->stripes[i].table = t;
        sl_lock_init(&t->stripes[i].lock, stripe_recover, &t->stripes[i]);
    }
    t->nbuckets = nbuckets;
    t->nlocks = nlocks;
    t->arena = a;
    t->qsbr = q;
    return t;
}

/* ---- read side */

sl_table_node_t *sl_table_lookup(sl_table_t *t, uint64_t hash, const char *key, size_t klen)
{
    for (sl_table_node_t *n = rcu_dereference(*bucket_of(t, hash)); n;
         n = rcu_dereference(n->next))
        if (node_is(n, hash, key, klen))
            return n;
    return NULL;
}

void sl_table_foreach(sl_table_t *t, int (*fn)(sl_table_node_t *n, void *arg), void *arg)
{
    for (uint32_t i = 0; i < t->nbuckets; i++)
        for (sl_table_node_t *n = rcu_dereference(t->buckets[i]); n;
             n = rcu_dereference(n->next))
            if (fn(n, arg))
                return;
}

uint32_t sl_table_walk(sl_table_t *t, uint32_t from, uint32_t max_buckets,
                       int (*fn)(sl_table_node_t *n, void *arg), void *arg)
{
    uint32_t end = from + SL_MIN(max_buckets, t->nbuckets - SL_MIN(from, t->nbuckets));
    uint32_t i = from;
    bool stop = false;
    for (; i < end && !stop; i++)
        for (sl_table_node_t *n = rcu_dereference(t->buckets[i]); n;
             n = rcu_dereference(n->next))
            if (fn(n, arg))
                stop = true;
    return i;
}

sl_table_node_t *sl_table_bucket(sl_table_t *t, uint32_t i)
{
    return i < t->nbuckets ? rcu_dereference(t->buckets[i]) : NULL;
}

uint64_t sl_table_count(const sl_table_t *t)
{
    uint64_t n = 0;
    for (uint32_t i = 0; i < t->nlocks; i++)
        n += uatomic_read(&t->stripes[i].count);
    return n;
}

uint64_t sl_table_recoveries(const sl_table_t *t)
{
    uint64_t n = 0;
    for (uint32_t i = 0; i < t->nlocks; i++)
        n += uatomic_read(&t->stripes[i].lock.recoveries);
    return n;
}

/* ---- write side */

void sl_table_lock(sl_table_t *t, uint64_t hash)
{
    sl_lock_acquire(&stripe_of(t, hash)->lock);
}

int sl_table_trylock(sl_table_t *t, uint64_t hash)
{
    return sl_lock_try(&stripe_of(t, hash)->lock);
}

void sl_table_unlock(sl_table_t *t, uint64_t hash)
{
    sl_lock_release(&stripe_of(t, hash)->lock);
}

static void intent(sl_table_stripe_t *st, int op, sl_table_node_t *n, sl_table_node_t *old)
{
    st->node = n;
    st->old = old;
    cmm_smp_wmb(); /* the nodes before the op that makes recovery read them */
    CMM_STORE_SHARED(st->op, (uint32_t)op);
}

static void done(sl_table_stripe_t *st)
{
    cmm_smp_wmb();
    CMM_STORE_SHARED(st->op, OP_NONE);
}

static void push_locked(sl_table_t *t, sl_table_node_t *n)
{
    sl_table_stripe_t *st = stripe_of(t, n->hash);
    sl_table_node_t **b = bucket_of(t, n->hash);
    intent(st, OP_INSERT, n, NULL);
    SL_CRASHPOINT("table.insert.intent");
    n->rcu.epoch = 0;
    n->rcu.next = NULL;
    if (SL_MUTATED(M_PUBLISH_BEFORE_NEXT)) {
        sl_table_node_t *head = *b;
        rcu_assign_pointer(*b, n); /* mutant: reachable before its next is set */
        SL_CRASHPOINT("table.insert.next-set");
        n->next = head;
    } else {
        n->next = *b;
        SL_CRASHPOINT("table.insert.next-set");
        rcu_assign_pointer(*b, n); /* publish: the node is complete before it is reachable */
    }
    SL_CRASHPOINT("table.insert.published");
    uatomic_add(&st->count, 1);
    SL_CRASHPOINT("table.insert.counted");
    done(st);
}

int sl_table_insert_locked(sl_table_t *t, sl_table_node_t *n)
{
    if (find_link(t, n->hash, n->key, n->klen))
        return SL_TABLE_EXISTS;
    push_locked(t, n);
    return SL_OK;
}

/* Unlink the node *link points at and retire it.  Lock held. */
static void unlink_locked(sl_table_t *t, sl_table_node_t **link)
{
    sl_table_node_t *n = *link;
    sl_table_stripe_t *st = stripe_of(t, n->hash);
    intent(st, OP_REMOVE, n, NULL);
    SL_CRASHPOINT("table.remove.intent");
    CMM_STORE_SHARED(*link, n->next); /* unlink: one store; n->next stays valid */
    SL_CRASHPOINT("table.remove.unlinked");
    uatomic_add(&st->count, -1);
    SL_CRASHPOINT("table.remove.counted");
    sl_qsbr_retire(t->qsbr, &n->rcu);
    SL_CRASHPOINT("table.remove.retired");
    done(st);
}

sl_table_node_t *sl_table_remove_locked(sl_table_t *t, uint64_t hash, const char *key,
                                        size_t klen)
{
    sl_table_node_t **link = find_link(t, hash, key, klen);
    if (link == NULL)
        return NULL;
    sl_table_node_t *n = *link;
    unlink_locked(t, link);
    return n;
}

sl_table_node_t *sl_table_replace_locked(sl_table_t *t, sl_table_node_t *n)
{
    sl_table_node_t **link = find_link(t, n->hash, n->key, n->klen);
    if (link == NULL) {
        push_locked(t, n);
        return NULL;
    }
    sl_table_node_t *old = *link;
    sl_table_stripe_t *st = stripe_of(t, n->hash);
    intent(st, OP_REPLACE, n, old);
    SL_CRASHPOINT("table.replace.intent");
    n->rcu.epoch = 0;
    n->rcu.next = NULL;
    n->next = old->next;
    rcu_assign_pointer(*link, n); /* readers see the old node or the new one */
    SL_CRASHPOINT("table.replace.swapped");
    sl_qsbr_retire(t->qsbr, &old->rcu);
    SL_CRASHPOINT("table.replace.retired");
    done(st);
    return old;
}

int sl_table_insert(sl_table_t *t, sl_table_node_t *n)
{
    sl_table_lock(t, n->hash);
    int rc = sl_table_insert_locked(t, n);
    sl_table_unlock(t, n->hash);
    return rc;
}

void sl_table_insert_new(sl_table_t *t, sl_table_node_t *n)
{
    sl_table_lock(t, n->hash);
    push_locked(t, n);
    sl_table_unlock(t, n->hash);
}

sl_table_node_t *sl_table_remove(sl_table_t *t, uint64_t hash, const char *key, size_t klen)
{
    sl_table_lock(t, hash);
    sl_table_node_t *n = sl_table_remove_locked(t, hash, key, klen);
    sl_table_unlock(t, hash);
    return n;
}

bool sl_table_remove_node(sl_table_t *t, uint64_t hash, sl_table_node_t *n)
{
    sl_table_lock(t, hash);
    sl_table_node_t **link = find_node_link(t, hash, n);
    if (link)
        unlink_locked(t, link);
    sl_table_unlock(t, hash);
    return link != NULL;
}

bool sl_table_has_node(sl_table_t *t, uint64_t hash, const sl_table_node_t *n)
{
    sl_table_lock(t, hash);
    bool found = find_node_link(t, hash, n) != NULL;
    sl_table_unlock(t, hash);
    return found;
}

sl_table_node_t *sl_table_replace(sl_table_t *t, sl_table_node_t *n)
{
    sl_table_lock(t, n->hash);
    sl_table_node_t *old = sl_table_replace_locked(t, n);
    sl_table_unlock(t, n->hash);
    return old;
}
