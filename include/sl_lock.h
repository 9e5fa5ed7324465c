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
 * never misses one that is.  When a process dies, the master repairs every
 * lock its record names (sl_lock_recover_dead) before anything else touches
 * what that process left - and before its reader slot is released, so the
 * objects a recovery reads cannot have been reclaimed.
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
} sl_lock_t;

/* Locks one process may hold at once: a channel, every inbox of a
 * hand-off (one per worker), a table stripe, limbo, the arena. */
#define SL_LOCK_HELD_MAX 80

typedef struct {
    uint32_t n; /* entries of held[] in use */
    uint32_t pad;
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

/* Where this process records the locks it holds (NULL: nowhere). */
void sl_lock_set_holder(sl_lock_holder_t *h);

/* While waiting for a lock, call fn every 50 ms (NULL: just wait).  The
 * master uses it to go on accepting and to watch for stalled workers - one
 * of which may be the holder - instead of waiting blindly.  fn must not
 * take locks. */
void sl_lock_set_wait_hook(void (*fn)(void));

/* The process that recorded into h is dead: repair every lock it may have
 * held (each is taken without waiting; one a live process holds now was
 * already repaired by it), and empty the record.  Returns how many locks
 * needed repair. */
size_t sl_lock_recover_dead(sl_lock_holder_t *h);

#endif
