/*
 * access.c - connection counts per IP address and per user, and the user of
 * each authenticated connection, in shared memory (see sl_access.h).
 *
 * Every change of a count entry happens under the stripe lock of its key
 * (sl_table_lock), and so does the check against the limit: lookup, insert
 * if absent, check, increment - one critical section, so two workers can
 * never both take the last place, and a removal can never race with an
 * increment on the entry it removes.  Stores, in order, and what a process
 * killed after each leaves behind (kill points K1..K6, used by the tests):
 *
 *   acquire: allocate (K1: one object leaked) -> insert, one publishing
 *            store (K2: an entry with a zero total: valid, removed by the
 *            next release of the key or by the master's cleanup) -> our
 *            counter + 1, one atomic store (K3: the count is the dead
 *            worker's and the master zeroes it) -> unlock.
 *   release: our counter - 1 (K4: a zero-total entry, as K2) -> if the
 *            total is zero, unlink (one store) and retire (K5: after the
 *            retire, nothing left to do) -> unlock.
 *   user entries: allocate (K6: leaked) -> insert (one store); removal is
 *            one unlink + retire.
 *
 * The stripe locks are robust: a process killed holding one hands it to
 * the next locker with EOWNERDEAD and, as above, there is nothing to repair
 * (the table's locks have no recovery function for the same reason).
 */
#include "sl_access.h"

#include <signal.h>
#include <string.h>
#include <urcu/uatomic.h>

volatile int sl_access_kill_point;

static inline void kill_point(int n)
{
    if (sl_access_kill_point == n)
        raise(SIGKILL);
}

static uint32_t buckets_for(uint64_t n)
{
    uint32_t p = 64;
    while (p < n && p < (1u << 30))
        p <<= 1;
    return p;
}

int sl_access_init(sl_reg_t *r, uint64_t max_conns, uint32_t nworkers)
{
    sl_access_t *a = sl_arena_calloc(r->arena, sizeof(*a));
    if (a == NULL)
        return SL_ERROR;
    /* Sized like the connections table: a bucket per four connections
     * (there are at most as many keys as connections). */
    a->counts = sl_table_create(r->arena, &r->qsbr, buckets_for(max_conns / 4), 64);
    a->users = sl_table_create(r->arena, &r->qsbr, buckets_for(max_conns / 4), 64);
    a->nworkers = nworkers;
    if (a->counts == NULL || a->users == NULL)
        return SL_ERROR;
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

static uint64_t total_of(const sl_access_count_t *e)
{
    uint64_t t = 0;
    for (uint32_t i = 0; i < e->nworkers; i++)
        t += uatomic_read(&e->counts[i]);
    return t;
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
    int rc = SL_OK;
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
        kill_point(1);
        /* One publishing store (it cannot exist: we looked under the lock). */
        sl_table_insert_locked(a->counts, &e->node);
        kill_point(2);
    }
    if (limit > 0 && total_of(e) >= limit) {
        rc = SL_ACCESS_FULL;
        goto out;
    }
    uatomic_add(&e->counts[worker], 1);
    kill_point(3);
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
    sl_table_lock(a->counts, hash);
    sl_access_count_t *e = find_count(a, hash, key, klen);
    if (e && uatomic_read(&e->counts[worker]) > 0) {
        uatomic_add(&e->counts[worker], -1);
        kill_point(4);
        if (total_of(e) == 0) {
            sl_table_remove_locked(a->counts, hash, key, klen);
            kill_point(5);
        }
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
    memcpy(u->conn_id, conn_id, idlen);
    memcpy(u->user, user, ulen);
    u->worker = worker;
    u->slot = slot;
    u->conn_no = conn_no;
    u->node.key = u->conn_id;
    u->node.klen = (uint32_t)idlen;
    u->node.hash = sl_table_hash(conn_id, idlen);
    kill_point(6);
    /* conn-ids are unique, and a connection has at most one entry. */
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

typedef struct {
    sl_access_t *a;
    int worker;
} cleanup_t;

/* Under the entry's stripe lock: the dead worker's count goes, and the
 * entry with it when nothing is left (also an entry a killed acquire left
 * empty).  Unlinking during the walk is safe: the unlinked node keeps its
 * next pointer, and we are online, so it is not freed under us. */
static int count_cleanup_cb(sl_table_node_t *n, void *arg)
{
    cleanup_t *x = arg;
    sl_access_count_t *e = (sl_access_count_t *)n;
    sl_table_lock(x->a->counts, n->hash);
    /* Still linked?  (A release may have removed it since the walk saw it.) */
    if (sl_table_lookup(x->a->counts, n->hash, n->key, n->klen) == n) {
        if ((uint32_t)x->worker < e->nworkers)
            uatomic_set(&e->counts[x->worker], 0);
        if (total_of(e) == 0)
            sl_table_remove_locked(x->a->counts, n->hash, n->key, n->klen);
    }
    sl_table_unlock(x->a->counts, n->hash);
    return 0;
}

static int user_cleanup_cb(sl_table_node_t *n, void *arg)
{
    cleanup_t *x = arg;
    sl_access_user_t *u = (sl_access_user_t *)n;
    if (u->worker == x->worker)
        sl_table_remove(x->a->users, n->hash, n->key, n->klen);
    return 0;
}

void sl_access_worker_cleanup(sl_reg_t *r, int worker)
{
    if (r->access == NULL)
        return;
    cleanup_t x = {r->access, worker};
    sl_table_foreach(r->access->counts, count_cleanup_cb, &x);
    sl_table_foreach(r->access->users, user_cleanup_cb, &x);
}
