/*
 * sl_access.h - the shared-memory side of access control: how many
 * connections each IP address and each user holds across all workers
 * (--max-connections-per-ip / --max-connections-per-user), and which user
 * each authenticated connection belongs to (/stats, the admin API).
 *
 * Counts: one entry per key ("i" + address, "u" + user) with one counter
 * per worker slot.  A worker changes only its own counter, always under the
 * key's stripe lock, and the check against the limit is made under the same
 * lock, so the limit holds exactly across workers.  The total is the sum of
 * the counters.  An entry whose total reaches zero is removed.
 *
 * Users: conn-id -> (worker, slot, conn number, user), created by the
 * connection's worker when it authenticates and removed when it closes.
 *
 * Crash consistency (shm/README.md, "Access control"): every update is one
 * publishing store or one atomic counter store, and every intermediate state
 * is valid (an entry with a zero total is a valid, empty entry).  When a
 * worker dies the master zeroes its counter in every entry, removes emptied
 * entries and the dead worker's user entries (sl_access_worker_cleanup), so
 * a dead worker's connections give their places back.
 */
#ifndef SL_ACCESS_H
#define SL_ACCESS_H

#include "sl_reg.h"

#define SL_ACCESS_KEY_MAX 130 /* kind byte + up to 129 bytes (a user id, an address) */

enum { SL_ACCESS_FULL = 1, SL_ACCESS_NO_MEMORY = 2 };

typedef enum { SL_ACCESS_IP = 'i', SL_ACCESS_USER = 'u' } sl_access_kind_t;

typedef struct sl_access_count {
    sl_table_node_t node; /* first: retired through QSBR */
    uint32_t nworkers;
    /* One per worker slot; atomic; each written only by its worker, under
     * the stripe lock (and zeroed by the master after that worker died).
     * The key (kind byte + name) follows them in the same object. */
    uint32_t counts[];
} sl_access_count_t;

typedef struct sl_access_user {
    sl_table_node_t node; /* first: retired through QSBR */
    int32_t worker;
    uint32_t slot;
    uint64_t conn_no;
    char conn_id[SL_CONN_ID_MAX];
    char user[]; /* NUL-terminated */
} sl_access_user_t;

typedef struct sl_access {
    sl_table_t *counts; /* key -> sl_access_count_t */
    sl_table_t *users;  /* conn-id -> sl_access_user_t */
    uint32_t nworkers;
} sl_access_t;

/* Set up the tables (from the registry's arena); r->access points to them. */
int sl_access_init(sl_reg_t *r, uint64_t max_conns, uint32_t nworkers);

/* Take one place for name[0..len) of `kind` on `worker`, if the total is
 * below `limit` (0: no limit, counted all the same).  SL_OK,
 * SL_ACCESS_FULL or SL_ACCESS_NO_MEMORY. */
int sl_access_acquire(sl_reg_t *r, sl_access_kind_t kind, const char *name, size_t len,
                      int worker, uint64_t limit);
/* Give one back (a no-op when `worker` holds none). */
void sl_access_release(sl_reg_t *r, sl_access_kind_t kind, const char *name, size_t len,
                       int worker);
/* The total (read side; a figure: the counters are read one by one, so
 * while others change theirs it may be off by those changes). */
uint64_t sl_access_total(sl_reg_t *r, sl_access_kind_t kind, const char *name, size_t len);
/* Every entry of `kind` with its total (read side). */
void sl_access_foreach(sl_reg_t *r, sl_access_kind_t kind,
                       void (*fn)(const char *name, size_t len, uint64_t total, void *arg),
                       void *arg);

/* Record the user of a connection (its worker calls these).  NULL when
 * shared memory is exhausted. */
sl_access_user_t *sl_access_user_add(sl_reg_t *r, const char *conn_id, int worker, uint32_t slot,
                                     uint64_t conn_no, const char *user);
void sl_access_user_remove(sl_reg_t *r, sl_access_user_t *u);
/* Read side. */
sl_access_user_t *sl_access_user_find(sl_reg_t *r, const char *conn_id, size_t len);
/* Call fn for every connection of `user` (NULL: of every user; read side). */
void sl_access_user_conns(sl_reg_t *r, const char *user, size_t len,
                          void (*fn)(const sl_access_user_t *u, void *arg), void *arg);

/* Master, after worker `worker` died (from sl_reg_worker_cleanup): its
 * counts go back, emptied entries and its user entries are removed. */
void sl_access_worker_cleanup(sl_reg_t *r, int worker);

/* Test hook: when set to n, the process SIGKILLs itself at kill point n
 * (the numbers are in access.c); 0 in the server. */
extern volatile int sl_access_kill_point;

#endif
