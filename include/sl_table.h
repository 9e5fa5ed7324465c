/*
 * sl_table.h - an RCU hash table in shared memory.
 *
 * Fixed power-of-two bucket array (no resizing: size it for the expected
 * entries - the registry sizes its tables from the configuration; lookups
 * stay fast up to a load of about 1-2 entries per bucket and degrade
 * linearly beyond), chains of intrusive nodes, writers serialised by lock
 * striping (bucket i uses stripe i % nstripes), readers lock-free.
 *
 * Hashing is keyed (SipHash-1-3 with a random 128-bit key the registry
 * draws before any worker is forked), so a client cannot choose keys that
 * collide: chains stay short whatever ids it sends.
 *
 * Every update publishes with one pointer store: insert publishes the new
 * node at the chain head with rcu_assign_pointer; remove unlinks with one
 * store and retires the node through QSBR; replace links the new node where
 * the old one was with one rcu_assign_pointer.  So at every instant the
 * chains are consistent for readers.  A writer records its update in the
 * stripe (op, node) before its first store; if it dies holding the stripe
 * lock, recovery completes it - publishes the node it was inserting, or
 * retires the node it had unlinked - and recounts the stripe.
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

struct sl_table;

/* A stripe: its writers' lock, the intent of the update in progress, and
 * how many nodes its buckets hold. */
typedef struct {
    sl_lock_t lock;
    uint32_t op; /* intent: 0 none, else the update in progress */
    uint32_t pad;
    sl_table_node_t *node, *old;
    uint64_t count; /* nodes in this stripe's buckets (atomic for readers) */
    struct sl_table *table;
} __attribute__((aligned(64))) sl_table_stripe_t;

/* A user of the table whose own multi-store updates run under a stripe
 * lock (holding it across several table calls) records them in state of
 * its own and repairs them here: called by a stripe's recovery, lock held,
 * after the table's own update was completed and the stripe recounted. */
typedef void (*sl_table_recover_fn)(void *arg, uint32_t stripe);

typedef struct sl_table {
    uint32_t nbuckets, nlocks; /* powers of two */
    sl_arena_t *arena;
    sl_qsbr_t *qsbr;
    sl_table_node_t **buckets;
    sl_table_stripe_t *stripes;
    sl_table_recover_fn user_recover; /* NULL: the table's own updates only */
    void *user_arg;
} sl_table_t;

#define SL_TABLE_EXISTS 1

/* The keyed hash of every table: set the key once, before any fork. */
void sl_table_set_key(const uint64_t key[2]);
uint64_t sl_table_hash(const void *key, size_t len);
/* SipHash-c-d (sl_table_hash is c=1, d=3); for the test vectors. */
uint64_t sl_siphash(const uint64_t key[2], int c, int d, const void *data, size_t len);

/* Allocate a table (and its buckets and stripes) from the arena. */
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
/* Unlink and retire exactly this node (found by address in the chain of
 * `hash`, never dereferenced unless found): true if it was there. */
bool sl_table_remove_node(sl_table_t *t, uint64_t hash, sl_table_node_t *n);
/* Whether exactly this node is in the chain of `hash` (takes the stripe
 * lock, so a dead writer's update of that stripe is completed first). */
bool sl_table_has_node(sl_table_t *t, uint64_t hash, const sl_table_node_t *n);
/* Put `n` in place of the node with the same key (retired), or insert it;
 * returns the old node or NULL. */
sl_table_node_t *sl_table_replace(sl_table_t *t, sl_table_node_t *n);

/* For read-modify-write across several steps: hold the stripe of `hash`
 * and use the _locked variants.  An update of more than one store made
 * that way is recorded by its user and repaired by sl_table_set_recover's
 * function. */
void sl_table_lock(sl_table_t *t, uint64_t hash);
/* Only if free (repairing after a dead owner): SL_OK, or SL_AGAIN when a
 * live process holds it - for the master, which never waits for a process
 * that may be stopped. */
int sl_table_trylock(sl_table_t *t, uint64_t hash);
void sl_table_unlock(sl_table_t *t, uint64_t hash);
/* The stripe `hash` falls in (0 .. nlocks-1): the index of the user's
 * per-stripe record. */
static inline uint32_t sl_table_stripe_index(const sl_table_t *t, uint64_t hash)
{
    return (uint32_t)(hash & (t->nlocks - 1));
}
/* Set once, before other processes use the table (a pointer to a function
 * in shared memory: see sl_lock.h for why that is valid). */
void sl_table_set_recover(sl_table_t *t, sl_table_recover_fn fn, void *arg);
int sl_table_insert_locked(sl_table_t *t, sl_table_node_t *n);
sl_table_node_t *sl_table_remove_locked(sl_table_t *t, uint64_t hash, const char *key,
                                        size_t klen);
sl_table_node_t *sl_table_replace_locked(sl_table_t *t, sl_table_node_t *n);

/* Visit every node (read side).  A node present for the whole walk is
 * visited exactly once; nodes inserted or removed meanwhile may or may not
 * be.  Stop early by returning non-zero from fn. */
void sl_table_foreach(sl_table_t *t, int (*fn)(sl_table_node_t *n, void *arg), void *arg);

/* Visit the nodes of buckets [from, from + max_buckets) (read side), one
 * whole bucket at a time; fn returning non-zero ends the walk after the
 * current bucket.  Returns the next bucket to visit (nbuckets: done).  For
 * walks spread over several loop turns: resume from the value returned. */
uint32_t sl_table_walk(sl_table_t *t, uint32_t from, uint32_t max_buckets,
                       int (*fn)(sl_table_node_t *n, void *arg), void *arg);

/* First node of bucket i (read side). */
sl_table_node_t *sl_table_bucket(sl_table_t *t, uint32_t i);

uint64_t sl_table_count(const sl_table_t *t);

/* Lock recoveries over all stripes (figures, tests). */
uint64_t sl_table_recoveries(const sl_table_t *t);

#endif
