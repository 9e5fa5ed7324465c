/*
 * sl_lock.h - process-shared, robust mutexes for writers in shared memory.
 *
 * If the owner of a lock dies, the next locker gets it anyway (the kernel
 * hands over a robust futex with EOWNERDEAD); before the lock is marked
 * consistent, the lock's recovery function runs so the structure it guards
 * can be repaired.  A lock that guards an update of more than one store has
 * a recovery function: the update records its intent in the lock's shared
 * state first, and recovery completes (or, before its commit, undoes) it.
 * Recovery functions are idempotent: a recovery that is itself killed is
 * run again by the next locker.
 *
 * The recovery function and its argument are pointers stored in shared
 * memory.  That is valid because every process of the server is forked
 * from the one that created the mapping, without exec: the same binary at
 * the same addresses.  (A process that exec'd would need an index into a
 * table of functions instead.)
 *
 * Held locks are recorded: each process has an sl_lock_holder_t in shared
 * memory (one per QSBR slot) and notes a lock there before it waits for it
 * and clears it after releasing, so the record may name a lock not held but
 * never misses one that is.  When a process dies, the master takes every
 * lock its record names once (sl_lock_recover_dead, try-locks only, retried
 * at its next cleanup steps while a live process holds one) before anything
 * else touches what that process left - and before its reader slot is
 * released.  Having taken a lock proves that no recovery of it is still
 * running in another process (a recovery runs while its process holds the
 * lock), so the objects a recovery reads cannot have been reclaimed.
 *
 * Waits are visible (for the master's stall watch): a lock records who
 * holds it (`holder`: pid and reader slot, stored after taking it, cleared
 * before releasing it), and a process records in its holder record which
 * lock it is blocked on and since when, before it blocks.  So a worker that
 * makes no progress because it waits for a lock can be told from the
 * process that holds it, and only the root holder is treated as stalled.
 */
#ifndef SL_LOCK_H
#define SL_LOCK_H

#include "sl_common.h"

#include <pthread.h>

typedef void (*sl_lock_recover_fn)(void *arg);

typedef struct {
    pthread_mutex_t m;
    sl_lock_recover_fn recover; /* NULL: nothing to repair */
    void *arg;
    uint64_t recoveries; /* times an owner died holding it */
    /* Who holds it (SL_LOCK_HOLDER_*): written by the holder only, after
     * taking it and before releasing it; 0 while free - or for a moment
     * around those stores, or when its holder died.  A figure for the
     * master's stall watch, never used to decide who may take the lock. */
    uint64_t holder;
} sl_lock_t;

/* The holder word: the process id in the high half, reader slot + 1 in the
 * low half (0: unknown). */
#define SL_LOCK_HOLDER_PID(h) ((int32_t)((h) >> 32))
#define SL_LOCK_HOLDER_SLOT(h) ((int32_t)((h) & 0xffffffffu) - 1)

/* Locks one process may hold at once: a channel, every inbox of a
 * hand-off (one per worker), a table stripe, limbo, the arena. */
#define SL_LOCK_HELD_MAX 80

typedef struct {
    uint32_t n;    /* entries of held[] in use */
    int32_t slot;  /* the reader slot this record belongs to */
    /* The lock this process is blocked on (NULL: none), and since when
     * (monotonic ms): stored before it blocks, cleared once it has the lock. */
    sl_lock_t *waiting;
    int64_t wait_since_ms;
    sl_lock_t *held[SL_LOCK_HELD_MAX];
} sl_lock_holder_t;

/* Initialise in shared memory (before other processes use it). */
int sl_lock_init(sl_lock_t *l, sl_lock_recover_fn recover, void *arg);

/* Lock; repairs after a dead owner.  SL_OK or SL_ERROR (never expected). */
int sl_lock_acquire(sl_lock_t *l);
/* Lock only if free (repairing after a dead owner): SL_OK, or SL_AGAIN when
 * a live process holds it.  For callers that must never wait for a process
 * that may be stopped (the master). */
int sl_lock_try(sl_lock_t *l);

void sl_lock_release(sl_lock_t *l);

/* Where this process records the locks it holds and the one it waits for
 * (NULL: nowhere); its locks' holder word names h->slot and our pid. */
void sl_lock_set_holder(sl_lock_holder_t *h);

/* While waiting for a lock, call fn every 50 ms (NULL: just wait).  The
 * master uses it to go on accepting and to watch for stalled workers - one
 * of which may be the holder - instead of waiting blindly.  fn must not
 * take locks.  The 50 ms are measured on CLOCK_MONOTONIC: a step of the
 * wall clock does not stretch a wait. */
void sl_lock_set_wait_hook(void (*fn)(void));

/* The process that recorded into h is dead: take every lock its record
 * names once, without waiting (repairing each one its owner left
 * mid-update), and forget it.  A lock a live process holds is kept in the
 * record: that process may be running its recovery right now, so the dead
 * process's objects must stay readable - call again later.  Returns how
 * many locks are still to be taken (0: none, the record is empty); adds to
 * *repaired (may be NULL) the locks that needed repair. */
size_t sl_lock_recover_dead(sl_lock_holder_t *h, size_t *repaired);

#endif
