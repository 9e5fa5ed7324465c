/*
 * sl_reg.h - the shared registry: the tables every worker and the master
 * consult, in the shared mapping, built on sl_arena (memory), sl_qsbr
 * (grace periods) and sl_table (RCU hash tables).
 *
 * Connections: conn-id -> owning worker, its local slot, opened-at, last
 * activity and message count.  Ownership: an entry is created and removed
 * by the worker that owns the connection (so that worker may keep a pointer
 * to it for the connection's life), or removed by the master after that
 * worker died.  Anyone may read entries inside a read-side section.
 *
 * Reader slots: worker N uses QSBR slot N; the master uses SL_REG_MASTER_SLOT.
 */
#ifndef SL_REG_H
#define SL_REG_H

#include "sl_arena.h"
#include "sl_lock.h"
#include "sl_qsbr.h"
#include "sl_table.h"

#define SL_REG_MASTER_SLOT 64
#define SL_REG_BROKER_SLOT 65 /* the broker process (--redis) */
#define SL_CONN_ID_MAX 40

typedef struct sl_reg_conn {
    sl_table_node_t node; /* first: retired through QSBR */
    int32_t worker;
    uint32_t slot;
    uint64_t conn_no;       /* the n of conn-<ms>-<n>: guards against slot reuse */
    int64_t opened_at;      /* wall ms */
    uint64_t last_activity; /* wall ms, updated by the owner (uatomic) */
    uint64_t message_count; /* updated by the owner (uatomic) */
    char conn_id[SL_CONN_ID_MAX];
} sl_reg_conn_t;

struct sl_inbox;
struct sl_access;
struct sl_sub;
struct sl_chan_msg;

/* The update in progress under a channel's lock (or the broadcast lock):
 * written before its first store, read by the lock's recovery (channels.c
 * and shm/README.md say what each op does and how it is completed). */
typedef struct {
    uint32_t op;        /* SL_CI_* (sl_chan.h): 0 between updates */
    uint32_t committed; /* hand-off commit flag: the inboxes' recorded pushes point here */
    uint64_t targets;   /* inboxes the hand-off locks */
    uint64_t got;       /* those with room, that get the message (set before the commit) */
    struct sl_sub *sub; /* SUB, UNSUB, DEL: the subscription being linked / unlinked */
    uint64_t sub_hash;
    struct sl_chan_msg *msg; /* PUB, SEND, DEL, BCAST, and SUB / UNSUB's join / leave:
                                the message being handed off */
    uint64_t seq;            /* PUB: its seq */
    uint64_t ring_lo, ring_hi;   /* the ring's positions before the step */
    struct sl_chan_msg *dropped; /* pushed out of the ring; its reference still to drop */
    /* --redis (DLV, RESET): the ring is to be emptied; the position the
     * channel takes (epoch, and seq: next_seq becomes seq + 1). */
    uint32_t clear;
    uint32_t set_epoch; /* epoch[] is to be stored */
    char epoch[16];
} sl_chan_intent_t;

/* What the tables are sized for (from the configuration). */
typedef struct {
    uint64_t max_connections; /* conns: a bucket per 4 */
    uint64_t max_channels;    /* channels: a bucket each; also the cap */
    uint32_t nworkers;
} sl_reg_limits_t;

/* The broadcast hand-off's lock and intent. */
typedef struct {
    sl_lock_t lock;
    sl_chan_intent_t intent;
} sl_reg_bcast_t;

typedef struct {
    sl_qsbr_t qsbr;
    sl_arena_t *arena;
    sl_table_t *conns;
    sl_table_t *channels; /* sl_chan.h */
    sl_table_t *subs;     /* sl_chan.h */
    sl_table_t *rpcs;     /* sl_rpc.h */
    struct sl_inbox *inboxes[64]; /* one per worker, from the arena */
    struct sl_access *access;     /* sl_access.h: counts per IP and user, users */
    uint32_t nworkers;
    uint64_t max_channels;
    uint64_t hash_key[2]; /* the tables' SipHash key (random, drawn at init) */
    uint64_t next_msg_id; /* atomic: message-ids, unique for the server's life */
    uint64_t next_rpc;    /* atomic: request numbers, unique for the server's life */
    uint64_t expired;     /* atomic: retained messages dropped for their age (history_ttl_ms) */
    uint64_t next_serial; /* atomic: channel incarnations (sl_chan_t.serial), never 0 */
    uint64_t next_sub_no; /* atomic: subscription numbers (sl_sub_t.sub_no), across all
                             channels and incarnations, so a join / leave's horizon never
                             covers a later incarnation's subscribers (review r15 L2) */
    sl_reg_bcast_t bcast;
    uint64_t dead_workers; /* atomic, written by the master alone: bit w while dead worker w's
                              cleanup runs - no hand-off targets its inbox (review rf15 F3 a).
                              One store each way: every value is a valid state */
    char id_suffix[12];   /* --redis: ".<node>" ends every conn-id and request-id; else "" */
    uint32_t presence_remote; /* --redis: joins / leaves travel through Redis (the broker
                                 publishes them, sl_chan_send_presence delivers them), never
                                 handed off by the subscribe / unsubscribe itself */
} sl_reg_t;

/* Buckets for about n entries: a power of two, at least 64, at most 2^24
 * (the sizing of every table; shm/README.md, "Hashing and sizing"). */
uint32_t sl_reg_buckets(uint64_t n);

/* Lay the registry's memory over region[0..size) (the mapping after its
 * fixed header); tables sized from `lim`; draws the hash key (getrandom)
 * and installs it for this process and every process forked after.
 * SL_OK or SL_ERROR (region too small). */
int sl_reg_init(sl_reg_t *r, void *region, size_t size, const sl_reg_limits_t *lim);

/* Register a connection (conn_id must be new: ids come from a server-wide
 * counter); NULL when shared memory is exhausted. */
sl_reg_conn_t *sl_reg_conn_add(sl_reg_t *r, const char *conn_id, int worker, uint32_t slot,
                               uint64_t conn_no, int64_t opened_at);
/* Remove the owner's entry (retired: freed after a grace period). */
void sl_reg_conn_remove(sl_reg_t *r, sl_reg_conn_t *c);
/* Read side. */
sl_reg_conn_t *sl_reg_conn_find(sl_reg_t *r, const char *conn_id, size_t len);

/* After the process of QSBR slot `slot` died: take every lock it may have
 * held once, without waiting (sl_lock_recover_dead: repairing the ones it
 * left mid-update), and only then take its reader slot offline.  In this
 * order: recovery - ours, or a live process's that got the lock first and
 * may still be running it - reads objects the dead process was working on,
 * which its online slot keeps from being reclaimed.  SL_OK when the slot
 * is released; SL_AGAIN while a live process holds one of those locks
 * (call again later: nothing is released, nothing else may start).  Adds
 * the locks that needed repair to *repaired (may be NULL). */
int sl_reg_dead(sl_reg_t *r, int slot, size_t *repaired);

/* The master's cleanup after worker `worker` died, in bounded steps so its
 * event loop keeps running: first sl_reg_dead (retried at every step while
 * a live process holds one of the dead worker's locks), then connections, subscriptions, RPC requests it
 * made or had claimed, its places per IP and user and its user entries
 * (sl_access.h), then its inbox; each table is walked once, from where the
 * previous step stopped.  Each subscription of a channel with join_leave
 * is told to the others as a leave (the workers handed one accumulate in
 * job->woken: the caller wakes them).  Never waits for a channel lock, an
 * inbox lock or an access stripe lock (a busy one is retried at the next
 * step).  A subscription whose channel or inbox locks are busy is set
 * aside and the pass goes on with the others (review r15 H1: one busy
 * inbox must not hold up every other subscription, the RPC claims and the
 * places per IP / user); the later phases run, then those set aside are
 * retried by themselves (job->aside, looked up again by hash and sub_no;
 * whole passes only if more than SL_REG_ASIDE_MAX were set aside), with
 * the caller's pause between tries, until none is left. */
#define SL_REG_ASIDE_MAX 256
typedef struct {
    int worker;
    int phase;       /* 0 start, then conns, subs, rpcs, counts, users, inbox, done */
    uint32_t cursor; /* next bucket of the table of this phase */
    uint64_t removed_conns, removed_subs, rpcs, drained;
    uint64_t access; /* count entries and user entries cleaned */
    uint64_t steps, busy; /* steps taken, locks found busy (the dead's, channel, stripe) */
    uint64_t dead_waits;  /* of those: steps that found one of the dead's locks held */
    size_t repaired;      /* the dead process's locks that needed repair */
    uint64_t woken;       /* workers handed a leave since the caller last cleared it */
    uint64_t set_aside;   /* subscriptions set aside (busy locks), all passes */
    uint32_t aside_pass;  /* set aside in the current subscriptions pass */
    uint32_t aside_last;  /* still to remove: set aside in the last finished pass, or more
                           * in the current one (/stats: review rs 5) */
    uint32_t sub_passes;  /* subscriptions passes finished, whole or over aside[] (/stats, telemetry: review rf15 F3) */
    bool subs_again;      /* the subscriptions pass again after the users phase */
    /* The subscriptions set aside, to retry by themselves (review rf15 F3
     * d): not node pointers - the master holds no RCU read lock between
     * steps, so a stored node may be freed - but the node's hash (its
     * bucket) and sub_no (unique for the registry's life), looked up again
     * at each retry.  A pass that sets aside more than SL_REG_ASIDE_MAX
     * sets aside_full, and the retries are whole passes, as before. */
    struct {
        uint64_t hash, sub_no;
    } aside[SL_REG_ASIDE_MAX];
    uint32_t aside_n;      /* entries in aside[] */
    uint32_t aside_cursor; /* next entry a retry tries */
    bool aside_full;       /* the last whole pass overflowed aside[] */
    bool whole_pass;       /* the subscriptions phase is a whole pass (else aside[] alone) */
    uint64_t aside_rounds; /* retries of the list alone (tests, telemetry) */
    uint64_t buckets;      /* table buckets looked at, all phases (tests) */
    /* Called with each of the dead worker's subscriptions before it is
     * removed (again if its removal is retried): --redis, its presence
     * entry and leave go through the broker (unused since gap17: the master
     * has the broker rewrite the node's entries after the cleanup). */
    void (*sub_gone)(const struct sl_sub *s);
} sl_reg_cleanup_t;

void sl_reg_cleanup_start(sl_reg_cleanup_t *job, int worker);
/* One step of at most `budget` removals (and 4 x budget buckets); the
 * caller's reader slot must be online.  SL_AGAIN: call again; SL_OK: done. */
int sl_reg_cleanup_step(sl_reg_t *r, sl_reg_cleanup_t *job, unsigned budget);
/* While the job waits to take a lock the dead process's record names (its
 * first step, sl_reg_dead): that lock, else NULL. */
sl_lock_t *sl_reg_cleanup_waits_for(sl_reg_t *r, const sl_reg_cleanup_t *job);
/* Worker w is dead (set as its cleanup starts) / replaced (cleared just
 * before its replacement is forked): while set, channel hand-offs and
 * broadcasts leave its inbox out, so it does not fill while the cleanup
 * waits for set-aside subscriptions (review rf15 F3 a). */
void sl_reg_worker_gone(sl_reg_t *r, int w);
void sl_reg_worker_back(sl_reg_t *r, int w);
/* All of it at once (tests, and a master that is stopping). */
size_t sl_reg_worker_cleanup(sl_reg_t *r, int worker);

/* Shared-memory figures for /stats and /health. */
typedef struct {
    uint64_t used_bytes, total_bytes, failures;
    uint64_t qsbr_pending, qsbr_retired, qsbr_reclaimed;
    uint64_t registered_connections;
} sl_reg_figures_t;
void sl_reg_figures(sl_reg_t *r, sl_reg_figures_t *f);

#endif
