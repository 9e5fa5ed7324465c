/*
 * lock.c - robust process-shared mutexes (see sl_lock.h).
 *
 * ENOTRECOVERABLE can only happen if a previous locker got EOWNERDEAD and
 * unlocked without pthread_mutex_consistent; every path here marks the
 * mutex consistent after recovery, so it never happens by design.
 *
 * The holder record is written by its process only (the master reads it
 * after that process died, when all its stores are visible): an entry is
 * added before waiting for the lock and removed after releasing it.
 */
#include "sl_lock.h"
#include "sl_crash.h"

#include <errno.h>
#include <time.h>
#include <urcu/system.h>
#include <urcu/uatomic.h>

static sl_lock_holder_t *me;
static void (*wait_hook)(void);

void sl_lock_set_holder(sl_lock_holder_t *h)
{
    me = h;
}

void sl_lock_set_wait_hook(void (*fn)(void))
{
    wait_hook = fn;
}

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

static void note_held(sl_lock_t *l)
{
    if (me && me->n < SL_LOCK_HELD_MAX) {
        me->held[me->n] = l;
        CMM_STORE_SHARED(me->n, me->n + 1); /* the entry before the count that covers it */
    }
}

static void forget_held(sl_lock_t *l)
{
    if (me == NULL)
        return;
    for (uint32_t i = me->n; i-- > 0;)
        if (me->held[i] == l) {
            /* Killed between these two stores, the record names the last
             * lock twice: harmless (it over-reports, never under-reports). */
            me->held[i] = me->held[me->n - 1];
            CMM_STORE_SHARED(me->n, me->n - 1);
            return;
        }
}

/* We own l after its owner died: repair, then make it usable again. */
static void repair(sl_lock_t *l)
{
    if (l->recover)
        l->recover(l->arg);
    uatomic_add(&l->recoveries, 1);
    pthread_mutex_consistent(&l->m);
}

int sl_lock_acquire(sl_lock_t *l)
{
    note_held(l);
    int rc;
    if (wait_hook == NULL) {
        rc = pthread_mutex_lock(&l->m);
    } else {
        for (;;) {
            struct timespec ts;
            clock_gettime(CLOCK_REALTIME, &ts);
            ts.tv_nsec += 50 * 1000 * 1000;
            if (ts.tv_nsec >= 1000000000L) {
                ts.tv_sec++;
                ts.tv_nsec -= 1000000000L;
            }
            rc = pthread_mutex_timedlock(&l->m, &ts);
            if (rc != ETIMEDOUT)
                break;
            wait_hook();
        }
    }
    if (rc == EOWNERDEAD) {
        /* We own the lock now, and the dead owner may have left the
         * structure mid-update: repair before anyone else sees it. */
        repair(l);
        return SL_OK;
    }
    if (rc != 0) {
        forget_held(l);
        return SL_ERROR;
    }
    return SL_OK;
}

int sl_lock_try(sl_lock_t *l)
{
    note_held(l);
    int rc = pthread_mutex_trylock(&l->m);
    if (rc == EOWNERDEAD) {
        repair(l);
        return SL_OK;
    }
    if (rc != 0) {
        forget_held(l);
        return SL_AGAIN;
    }
    return SL_OK;
}

void sl_lock_release(sl_lock_t *l)
{
    pthread_mutex_unlock(&l->m);
    forget_held(l);
}

size_t sl_lock_recover_dead(sl_lock_holder_t *h)
{
    size_t repaired = 0;
    uint32_t n = SL_MIN(CMM_LOAD_SHARED(h->n), SL_LOCK_HELD_MAX);
    for (uint32_t i = 0; i < n; i++) {
        sl_lock_t *l = h->held[i];
        if (l == NULL)
            continue;
        uint64_t before = uatomic_read(&l->recoveries);
        if (sl_lock_try(l) == SL_OK) {
            sl_lock_release(l);
            if (uatomic_read(&l->recoveries) != before)
                repaired++;
        }
    }
    CMM_STORE_SHARED(h->n, 0);
    return repaired;
}
