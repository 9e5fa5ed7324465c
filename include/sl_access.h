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
 * Crash consistency (shm/README.md, "Access control"; issue 12's rules):
 * an update of more than one store under a counts stripe lock (acquire of a
 * new key, a release or cleanup that may empty an entry) records its intent
 * in the stripe's record first; the stripe's recovery completes it, so
 * between updates every entry's total is above zero.  The crash points are
 * named "access.*" (sl_crash.h) and covered by the kill-point test.  When a
 * worker dies the master's stepwise cleanup (sl_reg_cleanup_step) zeroes
 * its counter in every entry it holds, removes emptied entries and its user
 * entries - each with a try-lock, never waiting - so a dead worker's
 * connections give their places back.
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

/* The update in progress under a stripe lock of the counts table (one
 * record per stripe): op 0 between updates. */
typedef struct {
    uint32_t op;
    uint32_t pad;
    sl_access_count_t *entry;
} sl_access_intent_t;

typedef struct sl_access {
    sl_table_t *counts; /* key -> sl_access_count_t */
    sl_table_t *users;  /* conn-id -> sl_access_user_t */
    uint32_t nworkers;
    sl_arena_t *arena;
    sl_access_intent_t *intents; /* one per stripe of counts */
} sl_access_t;

/* Set up the tables (from the registry's arena, sized from the limits);
 * r->access points to them. */
int sl_access_init(sl_reg_t *r, const sl_reg_limits_t *lim);

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

/* The master's cleanup after worker `worker` died, one entry at a time
 * (steps of sl_reg_cleanup_step, which walks the tables; caller online):
 * does the entry hold places of `worker`?  (read side) */
bool sl_access_count_held_by(const sl_access_count_t *e, int worker);
/* Zero its counter, and remove the entry if that empties it.  Only tries
 * the stripe lock: SL_AGAIN when a live process holds it (retry later). */
int sl_access_cleanup_count(sl_reg_t *r, sl_access_count_t *e, int worker);
/* Remove a dead worker's user entry; SL_AGAIN as above. */
int sl_access_cleanup_user(sl_reg_t *r, sl_access_user_t *u);

#endif
