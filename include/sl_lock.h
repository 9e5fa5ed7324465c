/*
 * sl_lock.h - process-shared, robust mutexes for writers in shared memory.
 *
 * If the owner of a lock dies, the next locker gets it anyway (the kernel
 * hands over a robust futex with EOWNERDEAD); before the lock is marked
 * consistent, the lock's recovery function runs so the structure it guards
 * can be repaired.  Every structure in shm/ is designed so that repair is
 * either unnecessary (updates are single publishing stores) or a rebuild of
 * derived data from a source of truth.
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

/* Initialise in shared memory (before other processes use it). */
int sl_lock_init(sl_lock_t *l, sl_lock_recover_fn recover, void *arg);

/* Lock; repairs after a dead owner.  SL_OK or SL_ERROR (never expected). */
int sl_lock_acquire(sl_lock_t *l);

void sl_lock_release(sl_lock_t *l);

#endif
