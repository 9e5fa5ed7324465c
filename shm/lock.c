/*
 * lock.c - robust process-shared mutexes (see sl_lock.h).
 *
 * ENOTRECOVERABLE can only happen if a previous locker got EOWNERDEAD and
 * unlocked without pthread_mutex_consistent; sl_lock_acquire always marks
 * the mutex consistent after recovery, so it never happens by design.
 */
#include "sl_lock.h"

#include <errno.h>
#include <urcu/uatomic.h>

int sl_lock_init(sl_lock_t *l, sl_lock_recover_fn recover, void *arg)
{
    pthread_mutexattr_t a;
    if (pthread_mutexattr_init(&a) != 0)
        return SL_ERROR;
    int rc = pthread_mutexattr_setpshared(&a, PTHREAD_PROCESS_SHARED);
    if (rc == 0)
        rc = pthread_mutexattr_setrobust(&a, PTHREAD_MUTEX_ROBUST);
    if (rc == 0)
        rc = pthread_mutex_init(&l->m, &a);
    pthread_mutexattr_destroy(&a);
    l->recover = recover;
    l->arg = arg;
    l->recoveries = 0;
    return rc == 0 ? SL_OK : SL_ERROR;
}

int sl_lock_acquire(sl_lock_t *l)
{
    int rc = pthread_mutex_lock(&l->m);
    if (rc == EOWNERDEAD) {
        /* We own the lock now, and the dead owner may have left the
         * structure mid-update: repair before anyone else sees it. */
        if (l->recover)
            l->recover(l->arg);
        uatomic_add(&l->recoveries, 1);
        pthread_mutex_consistent(&l->m);
        return SL_OK;
    }
    return rc == 0 ? SL_OK : SL_ERROR;
}

void sl_lock_release(sl_lock_t *l)
{
    pthread_mutex_unlock(&l->m);
}
