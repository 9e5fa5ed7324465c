/*
 * registry.c - the shared registry (see sl_reg.h for ownership rules).
 *
 * Entries are immutable except for the counters their owner updates with
 * atomic stores, so readers never see a half-written entry: an entry is
 * filled completely before sl_table_insert_new publishes it.
 *
 * The dead-worker cleanup starts with sl_reg_dead, retried at each step
 * until it has taken every lock the dead worker may have held (a live
 * process may be repairing one of them), and only then releases its reader
 * slot and walks the tables.  It walks each table once, bucket by bucket, and
 * keeps its place (job->cursor) between steps: a step ends after a bounded
 * number of removals or buckets, or at a channel lock a live process
 * holds, and the next step resumes at that bucket.  So the master's loop
 * runs between steps (accepting, watching workers), the cost is linear in
 * the table sizes, and the master never waits on a process that may be
 * stopped.
 */
#define _LGPL_SOURCE
#include "sl_reg.h"
#include "sl_access.h"
#include "sl_chan.h"
#include "sl_crash.h"
#include "sl_inbox.h"
#include "sl_rpc.h"

#include <string.h>
#include <sys/random.h>
#include <time.h>
#include <urcu/pointer.h>
#include <urcu/uatomic.h>

uint32_t sl_reg_buckets(uint64_t n)
{
    uint32_t p = 64;
    while (p < n && p < (1u << 24))
        p <<= 1;
    return p;
}

int sl_reg_init(sl_reg_t *r, void *region, size_t size, const sl_reg_limits_t *lim)
{
    if (lim->nworkers == 0 || lim->nworkers > 64)
        return SL_ERROR;
    /* The key of every table's hash: random, drawn before any worker is
     * forked, so all of them hash alike and no client can predict it. */
    if (getrandom(r->hash_key, sizeof(r->hash_key), 0) != (ssize_t)sizeof(r->hash_key)) {
        r->hash_key[0] = (uint64_t)sl_mono_us() * 0x9e3779b97f4a7c15ULL;
        r->hash_key[1] = (uint64_t)sl_now_ms() ^ (uint64_t)(uintptr_t)r;
    }
    sl_table_set_key(r->hash_key);
    r->arena = sl_arena_init(region, size);
    if (r->arena == NULL || sl_qsbr_init(&r->qsbr, r->arena) != SL_OK)
        return SL_ERROR;
    r->nworkers = lim->nworkers;
    r->max_channels = lim->max_channels;
    r->next_sub_no = 0;
    r->dead_workers = 0;
    /* Sizing (documented in shm/README.md): connections a bucket per four
     * (lookups by conn-id are rare admin calls, while every worker's
     * inserts touch the array all over, so it is kept small); channels a
     * bucket each up to --max-channels (every client message names one);
     * subscriptions two buckets per connection or channel, whichever is
     * more; RPC requests a bucket per two connections. */
    uint64_t subs = 2 * SL_MAX(lim->max_connections, lim->max_channels);
    r->conns = sl_table_create(r->arena, &r->qsbr, sl_reg_buckets(lim->max_connections / 4), 64);
    r->channels = sl_table_create(r->arena, &r->qsbr, sl_reg_buckets(lim->max_channels), 64);
    r->subs = sl_table_create(r->arena, &r->qsbr, sl_reg_buckets(subs), 64);
    r->rpcs = sl_table_create(r->arena, &r->qsbr, sl_reg_buckets(lim->max_connections / 2), 64);
    if (r->conns == NULL || r->channels == NULL || r->subs == NULL || r->rpcs == NULL ||
        sl_access_init(r, lim) != SL_OK)
        return SL_ERROR;
    for (uint32_t i = 0; i < lim->nworkers; i++) {
        r->inboxes[i] = sl_arena_alloc(r->arena, sizeof(sl_inbox_t));
        if (r->inboxes[i] == NULL || sl_inbox_init(r->inboxes[i]) != SL_OK)
            return SL_ERROR;
    }
    memset(&r->bcast.intent, 0, sizeof(r->bcast.intent));
    return sl_lock_init(&r->bcast.lock, sl_chan_bcast_recover, r);
}

sl_reg_conn_t *sl_reg_conn_add(sl_reg_t *r, const char *conn_id, int worker, uint32_t slot,
                               uint64_t conn_no, int64_t opened_at)
{
    size_t len = strlen(conn_id);
    if (len >= SL_CONN_ID_MAX)
        return NULL;
    sl_reg_conn_t *c = sl_arena_calloc(r->arena, sizeof(*c));
    if (c == NULL)
        return NULL;
    SL_CRASHPOINT("reg.conn.allocated");
    memcpy(c->conn_id, conn_id, len);
    c->worker = worker;
    c->slot = slot;
    c->conn_no = conn_no;
    c->opened_at = opened_at;
    c->last_activity = (uint64_t)opened_at;
    c->node.key = c->conn_id;
    c->node.klen = (uint32_t)len;
    c->node.hash = sl_table_hash(conn_id, len);
    /* conn-ids are unique by construction (a server-wide counter), so the
     * insert need not walk the chain through other workers' entries. */
    sl_table_insert_new(r->conns, &c->node);
    return c;
}

void sl_reg_conn_remove(sl_reg_t *r, sl_reg_conn_t *c)
{
    sl_table_remove_node(r->conns, c->node.hash, &c->node);
}

sl_reg_conn_t *sl_reg_conn_find(sl_reg_t *r, const char *conn_id, size_t len)
{
    return (sl_reg_conn_t *)sl_table_lookup(r->conns, sl_table_hash(conn_id, len), conn_id, len);
}

int sl_reg_dead(sl_reg_t *r, int slot, size_t *repaired)
{
    /* Repair first: recovery may read what the dead process was working
     * on, and its slot - still online - keeps that from being reclaimed.
     * A lock a live process holds may be under recovery by that process
     * (it got EOWNERDEAD when ours died): the slot stays online until we
     * have taken that lock too. */
    if (sl_lock_recover_dead(&r->qsbr.holders[slot], repaired) != 0 &&
        !SL_MUTATED(M_DEAD_SLOT_EARLY))
        return SL_AGAIN;
    sl_qsbr_release(&r->qsbr, slot);
    return SL_OK;
}

/* ------------------------------------------------------------ cleanup */

enum { PH_START, PH_CONNS, PH_SUBS, PH_RPCS, PH_COUNTS, PH_USERS, PH_INBOX, PH_DONE };

#define BUCKET_BATCH 64

void sl_reg_cleanup_start(sl_reg_cleanup_t *job, int worker)
{
    memset(job, 0, sizeof(*job));
    job->worker = worker;
    job->phase = PH_START;
}

/* The nodes of bucket i matching the phase's predicate (at most
 * BUCKET_BATCH; *more when the bucket holds more). */
static size_t collect(sl_table_t *t, uint32_t i, int phase, int worker, sl_table_node_t **out,
                      bool *more)
{
    size_t n = 0;
    *more = false;
    for (sl_table_node_t *x = sl_table_bucket(t, i); x; x = rcu_dereference(x->next)) {
        bool match = phase == PH_CONNS    ? ((sl_reg_conn_t *)x)->worker == worker
                     : phase == PH_SUBS   ? ((sl_sub_t *)x)->worker == worker
                     : phase == PH_RPCS   ? sl_rpc_held_by((sl_rpc_t *)x, worker)
                     : phase == PH_COUNTS ? sl_access_count_held_by((sl_access_count_t *)x, worker)
                                          : ((sl_access_user_t *)x)->worker == worker;
        if (!match)
            continue;
        if (n == BUCKET_BATCH) {
            *more = true;
            break;
        }
        out[n++] = x;
    }
    return n;
}

/* A subscriptions pass begins: its set-aside list too. */
static void subs_pass_start(sl_reg_cleanup_t *job)
{
    job->aside_n = 0;
    job->aside_cursor = 0;
    job->aside_full = false;
    job->whole_pass = true;
}

/* One subscription set aside: counted, and remembered for the retries. */
static void set_aside(sl_reg_cleanup_t *job, const sl_sub_t *s, bool listed)
{
    job->busy++;
    job->set_aside++;
    if (++job->aside_pass > job->aside_last)
        job->aside_last = job->aside_pass; /* shown at once, not at the pass's end (rs 5) */
    if (listed)
        return; /* already in aside[] */
    if (job->aside_n < SL_REG_ASIDE_MAX && !SL_MUTATED(M_ASIDE_UNLISTED)) {
        job->aside[job->aside_n].hash = s->node.hash;
        job->aside[job->aside_n++].sub_no = s->sub_no;
    } else
        job->aside_full = true;
}

/* aside[k] looked up again: the master held no read lock since it stored
 * it, so the node may be gone (not by anyone but this job: the dead
 * worker's subscriptions are removed by its cleanup alone) - never a
 * stored pointer.  sub_no tells it from any other in its bucket. */
static sl_sub_t *aside_find(sl_reg_t *r, const sl_reg_cleanup_t *job, uint32_t k)
{
    uint64_t hash = job->aside[k].hash;
    for (sl_table_node_t *x = sl_table_bucket(r->subs, (uint32_t)(hash & (r->subs->nbuckets - 1))); x;
         x = rcu_dereference(x->next)) {
        sl_sub_t *s = (sl_sub_t *)x;
        if (x->hash == hash && s->sub_no == job->aside[k].sub_no && s->worker == job->worker)
            return s;
    }
    return NULL;
}

/* A retry of the set-aside subscriptions alone (review rf15 F3 d: not a
 * whole table pass).  A removed or vanished entry leaves the list (the
 * last untried one takes its place).  SL_OK when the list is empty. */
static int aside_retry(sl_reg_t *r, sl_reg_cleanup_t *job, unsigned budget, unsigned *removed)
{
    while (job->aside_cursor < job->aside_n) {
        if (*removed >= budget)
            return SL_AGAIN;
        uint32_t k = job->aside_cursor;
        sl_sub_t *s = aside_find(r, job, k);
        (*removed)++;
        if (s) {
            if (job->sub_gone)
                job->sub_gone(s);
            if (sl_chan_cleanup_sub(r, s, &job->woken) != SL_OK) {
                set_aside(job, s, true);
                job->aside_cursor++;
                continue;
            }
            job->removed_subs++;
        }
        job->aside[k] = job->aside[--job->aside_n];
    }
    job->aside_rounds++;
    job->sub_passes++;
    job->aside_last = job->aside_pass;
    job->aside_pass = 0;
    job->aside_cursor = 0;
    return job->aside_n ? SL_AGAIN : SL_OK; /* again at the next step, after the caller's pause */
}

int sl_reg_cleanup_step(sl_reg_t *r, sl_reg_cleanup_t *job, unsigned budget)
{
    job->steps++;
    unsigned removed = 0, buckets = 0, max_buckets = 4 * budget + 64;
    sl_table_node_t *found[BUCKET_BATCH];
    while (job->phase != PH_DONE) {
        if (job->phase == PH_START) {
            if (sl_reg_dead(r, job->worker, &job->repaired) != SL_OK) {
                /* A live process holds one of its locks: nothing may start
                 * (its slot stays online) until we have had each once. */
                job->busy++;
                job->dead_waits++;
                return SL_AGAIN;
            }
            job->phase = PH_CONNS;
            job->cursor = 0;
            continue;
        }
        if (job->phase == PH_INBOX) {
            sl_inbox_t *in = (uint32_t)job->worker < r->nworkers ? r->inboxes[job->worker] : NULL;
            sl_inbox_entry_t e;
            while (in && removed < budget && sl_inbox_pop(in, &e, NULL)) {
                sl_chan_msg_unref(r, e.msg);
                job->drained++;
                removed++;
            }
            if (removed >= budget)
                return SL_AGAIN;
            job->phase = PH_DONE;
            break;
        }
        if (job->phase == PH_SUBS && !job->whole_pass) {
            if (aside_retry(r, job, budget, &removed) != SL_OK)
                return SL_AGAIN;
            job->phase = PH_INBOX; /* none left: the other phases are done */
            continue;
        }
        sl_table_t *t = job->phase == PH_CONNS    ? r->conns
                        : job->phase == PH_SUBS   ? r->subs
                        : job->phase == PH_RPCS   ? r->rpcs
                        : job->phase == PH_COUNTS ? r->access->counts
                                                  : r->access->users;
        while (job->cursor < t->nbuckets) {
            if (removed >= budget || buckets >= max_buckets)
                return SL_AGAIN;
            bool more;
            size_t n = collect(t, job->cursor, job->phase, job->worker, found, &more);
            size_t aside = 0;
            buckets++;
            job->buckets++;
            for (size_t k = 0; k < n; k++) {
                sl_table_node_t *x = found[k];
                if (job->phase == PH_CONNS) {
                    sl_table_remove_node(t, x->hash, x);
                    job->removed_conns++;
                } else if (job->phase == PH_SUBS) {
                    if (job->sub_gone)
                        job->sub_gone((sl_sub_t *)x); /* before: not read after its removal */
                    if (sl_chan_cleanup_sub(r, (sl_sub_t *)x, &job->woken) != SL_OK) {
                        /* A live process holds that channel or one of its
                         * inboxes: set it aside and go on; the pass comes
                         * back for it (H1). */
                        set_aside(job, (sl_sub_t *)x, false);
                        aside++;
                        removed++; /* an attempt: the step's budget counts it */
                        continue;
                    }
                    job->removed_subs++;
                } else if (job->phase == PH_RPCS) {
                    job->rpcs += sl_rpc_cleanup_one(r, (sl_rpc_t *)x, job->worker);
                } else {
                    /* Its places per IP and user, its users: stripe locks
                     * only tried, like the channel locks above. */
                    int rc = job->phase == PH_COUNTS
                                 ? sl_access_cleanup_count(r, (sl_access_count_t *)x, job->worker)
                                 : sl_access_cleanup_user(r, (sl_access_user_t *)x);
                    if (rc != SL_OK) {
                        job->busy++;
                        return SL_AGAIN;
                    }
                    job->access++;
                }
                removed++;
            }
            /* A full batch all set aside would be collected again and
             * again: leave the bucket for the next pass. */
            if (!more || (job->phase == PH_SUBS && aside == n))
                job->cursor++;
        }
        job->cursor = 0;
        if (job->phase == PH_SUBS) {
            job->whole_pass = false;
            job->sub_passes++;
            job->aside_last = job->aside_pass;
        }
        if (job->phase == PH_SUBS && job->aside_pass) {
            job->aside_pass = 0;
            if (job->subs_again) {
                /* A later whole pass (aside[] overflowed): the other
                 * phases are done; again at the next step (the caller
                 * lets the holders run first). */
                if (job->aside_full)
                    subs_pass_start(job);
                return SL_AGAIN;
            }
            job->subs_again = true; /* the other phases first, then again */
            job->phase = PH_RPCS;
        } else if (job->phase == PH_SUBS && job->subs_again) {
            job->phase = PH_INBOX; /* a later pass, clean: the others are done */
        } else if (job->phase == PH_USERS && job->subs_again) {
            job->phase = PH_SUBS; /* aside[] alone, or a whole pass if it overflowed */
            if (job->aside_full)
                subs_pass_start(job);
        } else {
            job->phase++;
            if (job->phase == PH_SUBS)
                subs_pass_start(job);
        }
    }
    return SL_OK;
}

sl_lock_t *sl_reg_cleanup_waits_for(sl_reg_t *r, const sl_reg_cleanup_t *job)
{
    if (job->phase != PH_START || job->steps == 0)
        return NULL;
    const sl_lock_holder_t *h = &r->qsbr.holders[job->worker];
    return CMM_LOAD_SHARED(h->n) > 0 ? h->held[0] : NULL;
}

/* One atomic store each: no intermediate state, nothing for a recovery
 * to finish (a master killed between them takes the whole server down;
 * the next start builds the registry anew).  A hand-off that read the
 * mask before the set may still push into the dead inbox: the cleanup's
 * inbox phase, which comes after, drains it. */
void sl_reg_worker_gone(sl_reg_t *r, int w)
{
    if (w >= 0 && w < 64)
        uatomic_or(&r->dead_workers, (uint64_t)1 << w);
}

void sl_reg_worker_back(sl_reg_t *r, int w)
{
    if (w >= 0 && w < 64)
        uatomic_and(&r->dead_workers, ~((uint64_t)1 << w));
}

size_t sl_reg_worker_cleanup(sl_reg_t *r, int worker)
{
    sl_reg_cleanup_t job;
    sl_reg_cleanup_start(&job, worker);
    sl_qsbr_online(&r->qsbr, SL_REG_MASTER_SLOT);
    for (uint64_t busy = 0; sl_reg_cleanup_step(r, &job, 256) == SL_AGAIN;) {
        sl_qsbr_quiescent(&r->qsbr, SL_REG_MASTER_SLOT);
        if (job.busy != busy) {
            /* A live process holds a lock we need: let it run. */
            busy = job.busy;
            sl_qsbr_offline(&r->qsbr, SL_REG_MASTER_SLOT);
            nanosleep(&(struct timespec){0, 1000 * 1000}, NULL);
            sl_qsbr_online(&r->qsbr, SL_REG_MASTER_SLOT);
        }
    }
    sl_qsbr_offline(&r->qsbr, SL_REG_MASTER_SLOT);
    sl_qsbr_reclaim(&r->qsbr);
    return job.removed_conns;
}

void sl_reg_figures(sl_reg_t *r, sl_reg_figures_t *f)
{
    sl_arena_stats_t s;
    sl_arena_stats(r->arena, &s);
    f->used_bytes = s.used_bytes;
    f->total_bytes = s.total_bytes;
    f->failures = s.failures;
    f->qsbr_pending = uatomic_read(&r->qsbr.pending);
    f->qsbr_retired = sl_qsbr_retired(&r->qsbr);
    f->qsbr_reclaimed = uatomic_read(&r->qsbr.reclaimed);
    f->registered_connections = sl_table_count(r->conns);
}
