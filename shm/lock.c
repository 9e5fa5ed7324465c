/*
 * lock.c - robust process-shared mutexes (see sl_lock.h).
 *
 * ENOTRECOVERABLE can only happen if a previous locker got EOWNERDEAD and
 * unlocked without pthread_mutex_consistent; every path here marks the
 * mutex consistent after recovery, so it never happens by design.
 *
 * The holder record is written by its process only (the master reads it
 * after that process died, when all its stores are visible): an entry is
 * added before waiting for the lock and removed after releasing it.  Once
 * the process is dead only the master writes it (sl_lock_recover_dead
 * keeps there the locks it could not take yet).
 *
 * Waits: a lock is first tried; only when it is busy does the process note
 * in its record the lock it is about to block on (`waiting`, after
 * `wait_since_ms`), so the uncontended path costs nothing more.  The lock's
 * `holder` word is stored right after the mutex is taken (before a
 * recovery runs, so a recovery in progress is attributed to the process
 * running it) and cleared right before it is released.  The master reads
 * both without any lock: a stale or torn view only delays a stall decision
 * by one watch period (see master.c, watch_workers).
 */
#include "sl_lock.h"
#include "sl_crash.h"

#include <errno.h>
#include <time.h>
#include <unistd.h>
#include <urcu/arch.h>
#include <urcu/system.h>
#include <urcu/uatomic.h>

static sl_lock_holder_t *me;
static uint64_t me_word; /* our holder word: pid << 32 | (slot + 1) */
static void (*wait_hook)(void);

void sl_lock_set_holder(sl_lock_holder_t *h)
{
    me = h;
    me_word = h ? (uint64_t)(uint32_t)getpid() << 32 | (uint32_t)(h->slot + 1) : 0;
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
    l->holder = 0;
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

/* Blocking for l (busy): visible to the master from now on. */
static void wait_begin(sl_lock_t *l)
{
    if (me == NULL)
        return;
    CMM_STORE_SHARED(me->wait_since_ms, sl_mono_ms());
    cmm_smp_wmb(); /* the time before the lock that validates it */
    CMM_STORE_SHARED(me->waiting, l);
}

static void wait_end(void)
{
    if (me)
        CMM_STORE_SHARED(me->waiting, NULL);
}

/* Block until l is ours (0 or EOWNERDEAD), calling the wait hook every
 * 50 ms of CLOCK_MONOTONIC when there is one. */
static int wait_for(sl_lock_t *l)
{
    if (wait_hook == NULL)
        return pthread_mutex_lock(&l->m);
    for (;;) {
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        ts.tv_nsec += 50 * 1000 * 1000;
        if (ts.tv_nsec >= 1000000000L) {
            ts.tv_sec++;
            ts.tv_nsec -= 1000000000L;
        }
        int rc = pthread_mutex_clocklock(&l->m, CLOCK_MONOTONIC, &ts);
        if (rc != ETIMEDOUT)
            return rc;
        wait_hook();
    }
}

/* The mutex is ours (rc 0 or EOWNERDEAD): say so, repair if needed. */
static int taken(sl_lock_t *l, int rc)
{
    CMM_STORE_SHARED(l->holder, me_word);
    if (rc == EOWNERDEAD)
        /* The dead owner may have left the structure mid-update: repair
         * before anyone else sees it. */
        repair(l);
    return SL_OK;
}

int sl_lock_acquire(sl_lock_t *l)
{
    note_held(l);
    int rc = pthread_mutex_trylock(&l->m);
    if (rc == EBUSY) {
        wait_begin(l);
        rc = wait_for(l);
        wait_end();
    }
    if (rc == 0 || rc == EOWNERDEAD)
        return taken(l, rc);
    forget_held(l);
    return SL_ERROR;
}

int sl_lock_try(sl_lock_t *l)
{
    note_held(l);
    int rc = pthread_mutex_trylock(&l->m);
    if (rc == 0 || rc == EOWNERDEAD)
        return taken(l, rc);
    forget_held(l);
    return SL_AGAIN;
}

void sl_lock_release(sl_lock_t *l)
{
    CMM_STORE_SHARED(l->holder, 0);
    pthread_mutex_unlock(&l->m);
    forget_held(l);
}

size_t sl_lock_recover_dead(sl_lock_holder_t *h, size_t *repaired)
{
    uint32_t n = SL_MIN(CMM_LOAD_SHARED(h->n), SL_LOCK_HELD_MAX), left = 0;
    for (uint32_t i = 0; i < n; i++) {
        sl_lock_t *l = h->held[i];
        if (l == NULL)
            continue;
        uint64_t before = uatomic_read(&l->recoveries);
        if (sl_lock_try(l) != SL_OK) {
            /* A live process holds it - maybe it is repairing it right now
             * (it got EOWNERDEAD when our process died): try again later. */
            h->held[left++] = l;
            continue;
        }
        sl_lock_release(l);
        if (repaired && uatomic_read(&l->recoveries) != before)
            (*repaired)++;
    }
    CMM_STORE_SHARED(h->n, left);
    CMM_STORE_SHARED(h->waiting, NULL);
    return left;
}
