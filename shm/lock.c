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
 * `wait_since_ms` and `wait_releases`), so the uncontended path costs
 * nothing more.  Who holds a lock is not stored by us at all: the futex
 * word of a robust mutex holds its owner's tid from the atomic take to the
 * atomic release (sl_lock_owner), with no window where a held lock names
 * nobody.  The master reads all of it without any lock: a stale or torn
 * view only delays a stall decision by one watch period (see master.c,
 * watch_workers).
 */
#include "sl_lock.h"
#include "sl_crash.h"

#include <errno.h>
#include <linux/futex.h>
#include <time.h>
#include <unistd.h>
#include <urcu/arch.h>
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
    l->releases = 0;
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

/* Blocking for l (busy): visible to the master from now on.  The release
 * count is read after the try failed, so it names the holder that made it
 * fail or a later one (sl_lock_blocker). */
static void wait_begin(sl_lock_t *l)
{
    if (me == NULL)
        return;
    CMM_STORE_SHARED(me->wait_since_ms, sl_mono_ms());
    CMM_STORE_SHARED(me->wait_releases, CMM_LOAD_SHARED(l->releases));
    cmm_smp_wmb(); /* the time and count before the lock that validates them */
    CMM_STORE_SHARED(me->waiting, l);
}

static void wait_end(void)
{
    if (me)
        CMM_STORE_SHARED(me->waiting, NULL);
}

/* Block until l is ours (0 or EOWNERDEAD), calling the wait hook (when
 * there is one) every 50 ms of CLOCK_MONOTONIC.
 *
 * The wait is re-armed every 50 ms even without a hook, so that no lost
 * wake-up - whatever its cause: a release wakes ONE waiter, and a waiter
 * killed (the stall watch, a crash) after it was woken and before it took
 * the lock takes that wake-up with it unless the kernel hands it on (recent
 * kernels' futex exit handling is meant to; we do not depend on it) - can
 * leave the other waiters asleep on a free lock for ever.  Re-armed, it
 * costs a waiter at most 50 ms; the uncontended path never gets here.
 * test_access once hung 17 minutes on a free lock under load; the cause
 * was not proven - this makes any such hang a 50 ms delay. */
static int wait_for(sl_lock_t *l)
{
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
        if (wait_hook)
            wait_hook();
    }
}

/* The mutex is ours (rc 0 or EOWNERDEAD): repair if needed. */
static int taken(sl_lock_t *l, int rc)
{
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
    /* Counted before the unlock (its release orders the count first): a
     * master that sees the new count knows this hold - and any recovery
     * run in it - is over. */
    CMM_STORE_SHARED(l->releases, l->releases + 1);
    pthread_mutex_unlock(&l->m);
    forget_held(l);
}

pid_t sl_lock_owner(const sl_lock_t *l)
{
    /* glibc's robust mutexes keep the owner's tid in __lock (the kernel's
     * robust-list handling depends on it); FUTEX_WAITERS and
     * FUTEX_OWNER_DIED are flags beside it. */
    int w = __atomic_load_n(&l->m.__data.__lock, __ATOMIC_RELAXED);
    return (pid_t)((unsigned)w & FUTEX_TID_MASK);
}

pid_t sl_lock_blocker(const sl_lock_holder_t *h, sl_lock_view_t *seen)
{
    sl_lock_t *l = CMM_LOAD_SHARED(h->waiting);
    pid_t owner = 0;
    uint64_t since = 0, now = 0;
    if (l) {
        cmm_smp_rmb(); /* pairs with wait_begin's wmb: this wait's count */
        since = CMM_LOAD_SHARED(h->wait_releases);
        owner = sl_lock_owner(l);
        cmm_smp_rmb(); /* the owner read before the count that vouches for it */
        now = CMM_LOAD_SHARED(l->releases);
    }
    bool held_since_look =
        seen && seen->lock == l && seen->owner == owner && seen->releases == now;
    if (seen)
        *seen = (sl_lock_view_t){l, owner, now};
    if (l == NULL || owner == 0)
        return 0;
    if (SL_MUTATED(M_WAITER_FORGIVEN))
        return owner;
    return now == since || held_since_look ? owner : 0;
}

size_t sl_lock_recover_dead(sl_lock_holder_t *h, size_t *repaired)
{
    uint32_t n = SL_MIN(CMM_LOAD_SHARED(h->n), SL_LOCK_HELD_MAX), left = 0;
    for (uint32_t i = 0; i < n; i++) {
        sl_lock_t *l = h->held[i];
        uint64_t kept = h->kept_releases[i];
        h->kept_releases[i] = 0;
        if (l == NULL)
            continue;
        if (kept != 0 && CMM_LOAD_SHARED(l->releases) != kept - 1 &&
            !SL_MUTATED(M_KEPT_UNTIL_TAKEN))
            continue; /* released since we found it held: that hold is over */
        uint64_t before = uatomic_read(&l->recoveries);
        if (sl_lock_try(l) != SL_OK) {
            /* A live process holds it - maybe it is repairing it right now
             * (it got EOWNERDEAD when our process died): done once it has
             * been released (or we take it).  The count is read after the
             * failed try, so it cannot predate the hold that made it fail. */
            cmm_smp_mb();
            h->held[left] = l;
            h->kept_releases[left++] = kept ? kept : CMM_LOAD_SHARED(l->releases) + 1;
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
