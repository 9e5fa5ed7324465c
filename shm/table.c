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
 */
#define _LGPL_SOURCE
#include "sl_table.h"

#include <string.h>
#include <urcu/pointer.h>
#include <urcu/system.h>
#include <urcu/uatomic.h>

/* A 64-bit hash in the spirit of the wyhash / murmur finalisers: 8 bytes at
 * a time, multiply-xorshift mixing, length folded in. */
static inline uint64_t mix(uint64_t x)
{
    x ^= x >> 32;
    x *= 0xd6e8feb86659fd93ULL;
    x ^= x >> 32;
    x *= 0xd6e8feb86659fd93ULL;
    x ^= x >> 32;
    return x;
}

uint64_t sl_table_hash(const void *key, size_t len)
{
    const uint8_t *p = key;
    uint64_t h = 0x9e3779b97f4a7c15ULL ^ (len * 0xff51afd7ed558ccdULL);
    while (len >= 8) {
        uint64_t w;
        memcpy(&w, p, 8);
        h = mix(h ^ w) + 0x9e3779b97f4a7c15ULL;
        p += 8;
        len -= 8;
    }
    uint64_t w = 0;
    memcpy(&w, p, len);
    return mix(h ^ w ^ ((uint64_t)len << 56));
}

static bool pow2(uint32_t x)
{
    return x && !(x & (x - 1));
}

sl_table_t *sl_table_create(sl_arena_t *a, sl_qsbr_t *q, uint32_t nbuckets, uint32_t nlocks)
{
    if (!pow2(nbuckets) || !pow2(nlocks) || nlocks > nbuckets)
        return NULL;
    sl_table_t *t = sl_arena_calloc(a, sizeof(*t));
    if (t == NULL)
        return NULL;
    t->buckets = sl_arena_calloc(a, sizeof(*t->buckets) * nbuckets);
    t->locks = sl_arena_calloc(a, sizeof(*t->locks) * nlocks);
    if (t->buckets == NULL || t->locks == NULL) {
        sl_arena_free(a, t->buckets);
        sl_arena_free(a, t->locks);
        sl_arena_free(a, t);
        return NULL;
    }
    for (uint32_t i = 0; i < nlocks; i++)
        sl_lock_init(&t->locks[i], NULL, NULL); /* nothing to repair: see top */
    t->nbuckets = nbuckets;
    t->nlocks = nlocks;
    t->arena = a;
    t->qsbr = q;
    return t;
}

static inline sl_table_node_t **bucket_of(sl_table_t *t, uint64_t hash)
{
    return &t->buckets[hash & (t->nbuckets - 1)];
}

static inline bool node_is(const sl_table_node_t *n, uint64_t hash, const char *key, size_t klen)
{
    return n->hash == hash && n->klen == klen && memcmp(n->key, key, klen) == 0;
}

sl_table_node_t *sl_table_lookup(sl_table_t *t, uint64_t hash, const char *key, size_t klen)
{
    for (sl_table_node_t *n = rcu_dereference(*bucket_of(t, hash)); n;
         n = rcu_dereference(n->next))
        if (node_is(n, hash, key, klen))
            return n;
    return NULL;
}

void sl_table_lock(sl_table_t *t, uint64_t hash)
{
    sl_lock_acquire(&t->locks[hash & (t->nlocks - 1)]);
}

void sl_table_unlock(sl_table_t *t, uint64_t hash)
{
    sl_lock_release(&t->locks[hash & (t->nlocks - 1)]);
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

static void push_locked(sl_table_t *t, sl_table_node_t *n)
{
    sl_table_node_t **b = bucket_of(t, n->hash);
    n->next = *b;
    rcu_assign_pointer(*b, n); /* publish: the node is complete before it is reachable */
    uatomic_add(&t->count, 1);
}

int sl_table_insert_locked(sl_table_t *t, sl_table_node_t *n)
{
    if (find_link(t, n->hash, n->key, n->klen))
        return SL_TABLE_EXISTS;
    push_locked(t, n);
    return SL_OK;
}

sl_table_node_t *sl_table_remove_locked(sl_table_t *t, uint64_t hash, const char *key,
                                        size_t klen)
{
    sl_table_node_t **link = find_link(t, hash, key, klen);
    if (link == NULL)
        return NULL;
    sl_table_node_t *n = *link;
    CMM_STORE_SHARED(*link, n->next); /* unlink: one store; n->next stays valid */
    uatomic_add(&t->count, -1);
    sl_qsbr_retire(t->qsbr, &n->rcu);
    return n;
}

sl_table_node_t *sl_table_replace_locked(sl_table_t *t, sl_table_node_t *n)
{
    sl_table_node_t **link = find_link(t, n->hash, n->key, n->klen);
    if (link == NULL) {
        sl_table_insert_locked(t, n);
        return NULL;
    }
    sl_table_node_t *old = *link;
    n->next = old->next;
    rcu_assign_pointer(*link, n); /* readers see the old node or the new one */
    sl_qsbr_retire(t->qsbr, &old->rcu);
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

sl_table_node_t *sl_table_replace(sl_table_t *t, sl_table_node_t *n)
{
    sl_table_lock(t, n->hash);
    sl_table_node_t *old = sl_table_replace_locked(t, n);
    sl_table_unlock(t, n->hash);
    return old;
}

void sl_table_foreach(sl_table_t *t, int (*fn)(sl_table_node_t *n, void *arg), void *arg)
{
    for (uint32_t i = 0; i < t->nbuckets; i++)
        for (sl_table_node_t *n = rcu_dereference(t->buckets[i]); n;
             n = rcu_dereference(n->next))
            if (fn(n, arg))
                return;
}
