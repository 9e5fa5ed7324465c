/*
 * access.c - connection counts per IP address and per user, and the user of
 * each authenticated connection, in shared memory (see sl_access.h).
 *
 * Every change of a count entry happens under the stripe lock of its key
 * (sl_table_lock), and so does the check against the limit: lookup, insert
 * if absent, check, increment - one critical section, so two workers can
 * never both take the last place, and a removal can never race with an
 * increment on the entry it removes.
 *
 * Crash consistency, in issue 12's terms (shm/README.md, "Access control"):
 * an acquire of a new key (allocate, insert, count) and a release that
 * empties an entry (count, remove) are updates of more than one store under
 * one stripe lock.  Each records its intent - the operation and the entry -
 * in the stripe's record (a->intents[stripe]) before its first store and
 * clears it after its last.  The counts table's stripe recovery (table.c)
 * completes the table's own insert or remove first and then calls
 * access_recover, which finishes ours: an entry recorded but never
 * published is freed; a published entry whose total is zero is removed.  So
 * between updates every entry's total is above zero.  What a kill leaves:
 *
 *   access.acquire.intent    entry allocated and recorded -> freed
 *   access.acquire.inserted  published, count 0           -> removed
 *   access.acquire.counted   our count + 1                -> the master's
 *                            cleanup zeroes a dead worker's counts
 *   access.release.intent / .counted / .removed           -> removed when
 *                            its total is zero
 *   access.cleanup.zeroed / .removed (the master)         -> removed when
 *                            its total is zero
 *   access.user.allocated    a user entry not yet inserted: one object
 *                            leaked (the insert itself is one table op)
 *
 * Only our own worker's counter is ever decremented (it is one atomic
 * store); a dead worker's counts are zeroed by the master's cleanup
 * (sl_access_cleanup_count), a step of the registry's stepwise dead-worker
 * cleanup that only ever *tries* a stripe lock.
 *
 * Keys come from clients (addresses, user ids): the tables hash with the
 * registry's keyed SipHash like every other, and are sized from
 * --max-connections (sl_reg_buckets).
 */
#define _LGPL_SOURCE
#include "sl_access.h"
#include "sl_crash.h"

#include <string.h>
#include <urcu/arch.h>
#include <urcu/pointer.h>
#include <urcu/system.h>
#include <urcu/uatomic.h>

enum { ACC_NONE = 0, ACC_ACQUIRE = 1, ACC_RELEASE = 2, ACC_CLEANUP = 3 };

/* ------------------------------------------------------------- recovery */

static uint64_t total_of(const sl_access_count_t *e)
{
    uint64_t t = 0;
    for (uint32_t i = 0; i < e->nworkers; i++)
        t += uatomic_read(&e->counts[i]);
    return t;
}

static void intent(sl_access_intent_t *in, uint32_t op, sl_access_count_t *e)
{
    in->entry = e;
    cmm_smp_wmb(); /* the entry before the op that makes recovery read it */
    CMM_STORE_SHARED(in->op, op);
}

static void done(sl_access_intent_t *in)
{
    cmm_smp_wmb();
    CMM_STORE_SHARED(in->op, ACC_NONE);
}

/* The counts table's stripe `stripe` was held by a process that died: the
 * table's own update is complete; finish ours.  The recorded entry is
 * readable: a dead process's reader slot is released only after its locks
 * were repaired (sl_reg_dead), so nothing it could see was reclaimed. */
static void access_recover(void *arg, uint32_t stripe)
{
    sl_access_t *a = arg;
    sl_access_intent_t *in = &a->intents[stripe];
    sl_access_count_t *e = in->entry, *unpublished = NULL;
    if (in->op != ACC_NONE && e && !SL_MUTATED(M_ACCESS_RECOVER)) {
        sl_table_node_t *n = &e->node;
        bool linked = sl_table_lookup(a->counts, n->hash, n->key, n->klen) == n;
        if (linked) {
            if (total_of(e) == 0)
                sl_table_remove_locked(a->counts, n->hash, n->key, n->klen);
        } else if (in->op == ACC_ACQUIRE && n->rcu.epoch == 0) {
            /* Allocated and recorded, never published (a published one
             * that was removed since is retired: epoch set). */
            unpublished = e;
        }
    }
    in->entry = NULL;
    CMM_STORE_SHARED(in->op, ACC_NONE);
    /* Freed only once the record is gone: a recovery killed in between
     * leaks it, instead of the next recovery freeing it twice. */
    sl_arena_free(a->arena, unpublished);
}

int sl_access_init(sl_reg_t *r, const sl_reg_limits_t *lim)
{
    sl_access_t *a = sl_arena_calloc(r->arena, sizeof(*a));
    if (a == NULL)
        return SL_ERROR;
    /* Sized like the connections table (a bucket per four connections:
     * there are at most as many keys of each kind as connections). */
    uint32_t nb = sl_reg_buckets(lim->max_connections / 4);
    a->counts = sl_table_create(r->arena, &r->qsbr, nb, 64);
    a->users = sl_table_create(r->arena, &r->qsbr, nb, 64);
    a->intents = sl_arena_calloc(r->arena, sizeof(*a->intents) * 64);
    a->nworkers = lim->nworkers;
    a->arena = r->arena;
    if (a->counts == NULL || a->users == NULL || a->intents == NULL)
        return SL_ERROR;
    sl_table_set_recover(a->counts, access_recover, a);
    r->access = a;
    return SL_OK;
}

/* ---------------------------------------------------------------- counts */

static size_t make_key(sl_access_kind_t kind, const char *name, size_t len, char *key)
{
    if (len > SL_ACCESS_KEY_MAX - 1)
        len = SL_ACCESS_KEY_MAX - 1;
    key[0] = (char)kind;
    memcpy(key + 1, name, len);
    return len + 1;
}

static sl_access_count_t *find_count(sl_access_t *a, uint64_t hash, const char *key, size_t klen)
{
    return (sl_access_count_t *)sl_table_lookup(a->counts, hash, key, klen);
}

int sl_access_acquire(sl_reg_t *r, sl_access_kind_t kind, const char *name, size_t len,
                      int worker, uint64_t limit)
{
    sl_access_t *a = r->access;
    if (worker < 0 || (uint32_t)worker >= a->nworkers)
        return SL_ERROR;
    char key[SL_ACCESS_KEY_MAX];
    size_t klen = make_key(kind, name, len, key);
    uint64_t hash = sl_table_hash(key, klen);
    sl_access_intent_t *in = &a->intents[sl_table_stripe_index(a->counts, hash)];
    int rc = SL_OK;
    bool recorded = false;
    sl_table_lock(a->counts, hash);
    sl_access_count_t *e = find_count(a, hash, key, klen);
    if (e == NULL) {
        size_t counts = sizeof(uint32_t) * a->nworkers;
        e = sl_arena_calloc(r->arena, sizeof(*e) + counts + klen);
        if (e == NULL) {
            rc = SL_ACCESS_NO_MEMORY;
            goto out;
        }
        e->nworkers = a->nworkers;
        char *k = (char *)e->counts + counts;
        memcpy(k, key, klen);
        e->node.key = k;
        e->node.klen = (uint32_t)klen;
        e->node.hash = hash;
        /* Three stores follow (publish, count): recorded first. */
        intent(in, ACC_ACQUIRE, e);
        recorded = true;
        SL_CRASHPOINT("access.acquire.intent");
        /* One publishing store (it cannot exist: we looked under the lock). */
        sl_table_insert_locked(a->counts, &e->node);
        SL_CRASHPOINT("access.acquire.inserted");
    } else if (limit > 0 && total_of(e) >= limit) {
        rc = SL_ACCESS_FULL; /* a new entry (total 0) is never full: limit >= 1 */
        goto out;
    }
    uatomic_add(&e->counts[worker], 1);
    SL_CRASHPOINT("access.acquire.counted");
    if (recorded)
        done(in);
out:
    sl_table_unlock(a->counts, hash);
    return rc;
}

void sl_access_release(sl_reg_t *r, sl_access_kind_t kind, const char *name, size_t len,
                       int worker)
{
    sl_access_t *a = r->access;
    if (worker < 0 || (uint32_t)worker >= a->nworkers)
        return;
    char key[SL_ACCESS_KEY_MAX];
    size_t klen = make_key(kind, name, len, key);
    uint64_t hash = sl_table_hash(key, klen);
    sl_access_intent_t *in = &a->intents[sl_table_stripe_index(a->counts, hash)];
    sl_table_lock(a->counts, hash);
    sl_access_count_t *e = find_count(a, hash, key, klen);
    if (e && uatomic_read(&e->counts[worker]) > 0) {
        intent(in, ACC_RELEASE, e); /* the count, then maybe the removal */
        SL_CRASHPOINT("access.release.intent");
        uatomic_add(&e->counts[worker], -1);
        SL_CRASHPOINT("access.release.counted");
        if (total_of(e) == 0) {
            sl_table_remove_locked(a->counts, hash, key, klen);
            SL_CRASHPOINT("access.release.removed");
        }
        done(in);
    }
    sl_table_unlock(a->counts, hash);
}

uint64_t sl_access_total(sl_reg_t *r, sl_access_kind_t kind, const char *name, size_t len)
{
    char key[SL_ACCESS_KEY_MAX];
    size_t klen = make_key(kind, name, len, key);
    sl_access_count_t *e = find_count(r->access, sl_table_hash(key, klen), key, klen);
    return e ? total_of(e) : 0;
}

typedef struct {
    char kind;
    void (*fn)(const char *name, size_t len, uint64_t total, void *arg);
    void *arg;
} each_t;

static int each_cb(sl_table_node_t *n, void *arg)
{
    each_t *x = arg;
    sl_access_count_t *e = (sl_access_count_t *)n;
    uint64_t t = total_of(e);
    if (n->key[0] == x->kind && t > 0)
        x->fn(n->key + 1, n->klen - 1, t, x->arg);
    return 0;
}

void sl_access_foreach(sl_reg_t *r, sl_access_kind_t kind,
                       void (*fn)(const char *name, size_t len, uint64_t total, void *arg),
                       void *arg)
{
    each_t x = {(char)kind, fn, arg};
    sl_table_foreach(r->access->counts, each_cb, &x);
}

/* ----------------------------------------------------------------- users */

sl_access_user_t *sl_access_user_add(sl_reg_t *r, const char *conn_id, int worker, uint32_t slot,
                                     uint64_t conn_no, const char *user)
{
    size_t idlen = strlen(conn_id), ulen = strlen(user);
    if (idlen >= SL_CONN_ID_MAX)
        return NULL;
    sl_access_user_t *u = sl_arena_calloc(r->arena, sizeof(*u) + ulen + 1);
    if (u == NULL)
        return NULL;
    SL_CRASHPOINT("access.user.allocated");
    memcpy(u->conn_id, conn_id, idlen);
    memcpy(u->user, user, ulen);
    u->worker = worker;
    u->slot = slot;
    u->conn_no = conn_no;
    u->node.key = u->conn_id;
    u->node.klen = (uint32_t)idlen;
    u->node.hash = sl_table_hash(conn_id, idlen);
    /* conn-ids are unique, and a connection has at most one entry: one
     * table insert (recorded and completed by the table itself). */
    sl_table_insert_new(r->access->users, &u->node);
    return u;
}

void sl_access_user_remove(sl_reg_t *r, sl_access_user_t *u)
{
    sl_table_remove(r->access->users, u->node.hash, u->conn_id, u->node.klen);
}

sl_access_user_t *sl_access_user_find(sl_reg_t *r, const char *conn_id, size_t len)
{
    return (sl_access_user_t *)sl_table_lookup(r->access->users, sl_table_hash(conn_id, len),
                                               conn_id, len);
}

typedef struct {
    const char *user;
    size_t len;
    void (*fn)(const sl_access_user_t *u, void *arg);
    void *arg;
} of_user_t;

static int of_user_cb(sl_table_node_t *n, void *arg)
{
    of_user_t *x = arg;
    sl_access_user_t *u = (sl_access_user_t *)n;
    if (x->user == NULL || (strlen(u->user) == x->len && memcmp(u->user, x->user, x->len) == 0))
        x->fn(u, x->arg);
    return 0;
}

void sl_access_user_conns(sl_reg_t *r, const char *user, size_t len,
                          void (*fn)(const sl_access_user_t *u, void *arg), void *arg)
{
    of_user_t x = {user, len, fn, arg};
    sl_table_foreach(r->access->users, of_user_cb, &x);
}

/* --------------------------------------------------------------- cleanup */

bool sl_access_count_held_by(const sl_access_count_t *e, int worker)
{
    return (uint32_t)worker < e->nworkers && uatomic_read(&e->counts[worker]) != 0;
}

int sl_access_cleanup_count(sl_reg_t *r, sl_access_count_t *e, int worker)
{
    sl_access_t *a = r->access;
    sl_table_node_t *n = &e->node;
    if (sl_table_trylock(a->counts, n->hash) != SL_OK)
        return SL_AGAIN;
    /* Still linked?  (A release may have removed it since the walk saw it;
     * it is readable either way: the caller is online.) */
    if (find_count(a, n->hash, n->key, n->klen) == e && (uint32_t)worker < e->nworkers) {
        sl_access_intent_t *in = &a->intents[sl_table_stripe_index(a->counts, n->hash)];
        intent(in, ACC_CLEANUP, e);
        uatomic_set(&e->counts[worker], 0);
        SL_CRASHPOINT("access.cleanup.zeroed");
        if (total_of(e) == 0) {
            sl_table_remove_locked(a->counts, n->hash, n->key, n->klen);
            SL_CRASHPOINT("access.cleanup.removed");
        }
        done(in);
    }
    sl_table_unlock(a->counts, n->hash);
    return SL_OK;
}

int sl_access_cleanup_user(sl_reg_t *r, sl_access_user_t *u)
{
    sl_table_t *t = r->access->users;
    if (sl_table_trylock(t, u->node.hash) != SL_OK)
        return SL_AGAIN;
    if (sl_table_lookup(t, u->node.hash, u->conn_id, u->node.klen) == &u->node)
        sl_table_remove_locked(t, u->node.hash, u->conn_id, u->node.klen);
    sl_table_unlock(t, u->node.hash);
    return SL_OK;
}
