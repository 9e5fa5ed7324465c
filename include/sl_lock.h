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
 * Waits are visible (for the master's stall watch): a process records in
 * its holder record which lock it is blocked on, since when, and the lock's
 * release count at that moment, before it blocks; who holds a lock is the
 * kernel's own record, the owner's thread id in the robust futex word
 * (sl_lock_owner), which is exact at every instruction - from the atomic
 * take to the atomic release, and while a crashed owner dumps core, until
 * the kernel hands the lock over.  A waiter is blocked *by the owner* only
 * while the lock has not been released since its wait began
 * (sl_lock_blocker): then that owner has held it all along and is the one
 * to judge.  Once the lock has been released, the waiter is not held up by
 * anyone frozen: if it still has not taken it, it is itself stopped (or
 * starved) and answers for its own time.  Once its owner is dead, a lock
 * is also done for the master's cleanup as soon as it has been released
 * once (sl_lock_recover_dead).
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
    /* Times it was released (by sl_lock_release: written by the holder
     * only, before the unlock - a plain single-writer count).  A lock
     * handed over by the kernel after its owner died is not counted: that
     * owner released nothing. */
    uint64_t releases;
} sl_lock_t;

/* Locks one process may hold at once: a channel, every inbox of a
 * hand-off (one per worker), a table stripe, limbo, the arena. */
#define SL_LOCK_HELD_MAX 80

typedef struct {
    uint32_t n;    /* entries of held[] in use */
    int32_t slot;  /* the reader slot this record belongs to */
    /* The lock this process is blocked on (NULL: none), since when
     * (monotonic ms) and its `releases` then: stored before it blocks (the
     * time and count first), cleared once it has the lock. */
    sl_lock_t *waiting;
    int64_t wait_since_ms;
    uint64_t wait_releases;
    sl_lock_t *held[SL_LOCK_HELD_MAX];
    /* Written by the master only, once the process is dead: for each lock
     * held[] still names, 1 + its `releases` when the master first found
     * it held by a live process (0: not yet). */
    uint64_t kept_releases[SL_LOCK_HELD_MAX];
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
 * (NULL: nowhere). */
void sl_lock_set_holder(sl_lock_holder_t *h);

/* The process (thread id: our processes are single-threaded) holding l, 0
 * when it is free or its owner died and nobody took it yet.  Read without
 * a lock from the kernel's robust-futex word (glibc keeps the owner's tid
 * there; the kernel relies on it to hand the lock over when the owner
 * dies): a figure for the master's stall watch and for /stats, never used
 * to decide who may take the lock. */
pid_t sl_lock_owner(const sl_lock_t *l);

/* What a watcher saw of a process's wait at its previous look. */
typedef struct {
    const sl_lock_t *lock; /* the lock waited for (NULL: none) */
    pid_t owner;           /* its owner then (0: free) */
    uint64_t releases;     /* its release count then */
} sl_lock_view_t;

/* The process h's owner is blocked by: the owner of the lock it waits for,
 * if that owner has held it all along since the wait began (the release
 * count is the one the waiter noted), or since the watcher's previous look
 * (*seen: the same lock, the same owner, no release in between - a waiter
 * that was passed over when the lock changed hands, as a futex does not
 * queue, is blocked by the new owner once that one has held it from one
 * look to the next); 0 when it waits for nothing, for a free lock, or for
 * one that has changed hands since both (then it is held up by nobody
 * frozen: it is stopped or starved itself).  *seen (may be NULL: the first
 * rule only) is updated to this look.  Lock-free reads; a stale view lasts
 * until the next look. */
pid_t sl_lock_blocker(const sl_lock_holder_t *h, sl_lock_view_t *seen);

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
 * process's objects must stay readable - call again later.  A kept lock is
 * done once it is taken, or once it has been released since the first
 * call found it held: every recovery runs while its process holds the
 * lock, so a release after that moment proves the holder then - and any
 * recovery it was running - has finished, even if live processes keep the
 * lock so busy that a try never finds it free.  Returns how many locks are
 * still to be taken (0: none, the record is empty); adds to *repaired (may
 * be NULL) the locks that needed repair. */
size_t sl_lock_recover_dead(sl_lock_holder_t *h, size_t *repaired);

#endif
