/*
 * sl_table.h - an RCU hash table in shared memory.
 *
 * Fixed power-of-two bucket array (no resizing: size it for the expected
 * entries; lookups stay fast up to a load of about 1-2 entries per bucket
 * and degrade linearly beyond), chains of intrusive nodes, writers
 * serialised by lock striping (bucket i uses lock i % nlocks, robust
 * process-shared mutexes), readers lock-free.
 *
 * Every update is one publishing pointer store: insert publishes the new
 * node at the chain head with rcu_assign_pointer; remove unlinks with one
 * store and retires the node through QSBR; replace links the new node where
 * the old one was with one rcu_assign_pointer.  So at every instant the
 * chains are consistent, and a writer that dies holding a stripe lock
 * leaves nothing to repair: at most the node it was inserting (allocated,
 * never published) or removing (unlinked, never retired) is leaked.
 *
 * Readers must be in a QSBR read-side section (a worker between two
 * quiescent states) and may use a node until their next quiescent state.
 */
#ifndef SL_TABLE_H
#define SL_TABLE_H

#include "sl_arena.h"
#include "sl_lock.h"
#include "sl_qsbr.h"

typedef struct sl_table_node {
    sl_qsbr_head_t rcu; /* must stay first: retired nodes are freed by QSBR */
    struct sl_table_node *next;
    uint64_t hash;
    uint32_t klen;
    const char *key; /* points into the node's own object, in shared memory */
} sl_table_node_t;

typedef struct {
    uint32_t nbuckets, nlocks; /* powers of two */
    uint64_t count;
    sl_arena_t *arena;
    sl_qsbr_t *qsbr;
    sl_table_node_t **buckets;
    sl_lock_t *locks;
} sl_table_t;

#define SL_TABLE_EXISTS 1

uint64_t sl_table_hash(const void *key, size_t len);

/* Allocate a table (and its buckets and locks) from the arena. */
sl_table_t *sl_table_create(sl_arena_t *a, sl_qsbr_t *q, uint32_t nbuckets, uint32_t nlocks);

/* Read side. */
sl_table_node_t *sl_table_lookup(sl_table_t *t, uint64_t hash, const char *key, size_t klen);

/* Write side, taking the stripe lock. */
int sl_table_insert(sl_table_t *t, sl_table_node_t *n); /* SL_OK or SL_TABLE_EXISTS */
/* Insert a key the caller knows is absent (unique by construction, or
 * checked under a lock that covers it): no walk of the chain, so inserting
 * reads no other node - and touches no page another process owns. */
void sl_table_insert_new(sl_table_t *t, sl_table_node_t *n);
/* Unlink and retire; returns the node (readable until the caller's next
 * quiescent state) or NULL when absent. */
sl_table_node_t *sl_table_remove(sl_table_t *t, uint64_t hash, const char *key, size_t klen);
/* Put `n` in place of the node with the same key (retired), or insert it;
 * returns the old node or NULL. */
sl_table_node_t *sl_table_replace(sl_table_t *t, sl_table_node_t *n);

/* For read-modify-write across several steps: hold the stripe of `hash`
 * and use the _locked variants. */
void sl_table_lock(sl_table_t *t, uint64_t hash);
void sl_table_unlock(sl_table_t *t, uint64_t hash);
int sl_table_insert_locked(sl_table_t *t, sl_table_node_t *n);
sl_table_node_t *sl_table_remove_locked(sl_table_t *t, uint64_t hash, const char *key,
                                        size_t klen);
sl_table_node_t *sl_table_replace_locked(sl_table_t *t, sl_table_node_t *n);

/* Visit every node (read side).  A node present for the whole walk is
 * visited exactly once; nodes inserted or removed meanwhile may or may not
 * be.  Stop early by returning non-zero from fn. */
void sl_table_foreach(sl_table_t *t, int (*fn)(sl_table_node_t *n, void *arg), void *arg);

static inline uint64_t sl_table_count(const sl_table_t *t)
{
    return __atomic_load_n(&t->count, __ATOMIC_RELAXED);
}

#endif
