/*
 * qsbr.c - cross-process grace periods (see sl_qsbr.h for the contract).
 *
 * Invariant: an object retired with epoch E is freed only when every slot
 * is offline (ctr == 0) or has ctr >= E.  Why that is safe: the writer
 * unlinked the object before the atomic increment that produced E (which
 * is a full barrier); a reader whose slot reads ctr >= E stored it after
 * reading the counter at a quiescent state that came after that increment,
 * so everything it reads from then on comes after the unlink, and whatever
 * it read before that quiescent state it no longer holds.
 *
 * The limbo list is appended in epoch order (epochs are taken under the
 * limbo lock), so reclamation pops from the head until it meets an epoch
 * that is still too new.  Lock order: limbo -> arena, never the reverse.
 *
 * Limbo lock, invariants: the list from limbo_head through next pointers
 * ends at limbo_tail; pending is its length; every object on it has a
 * non-zero epoch, increasing along the list.  An append records its object
 * in `adding` first; recovery walks the list (fixing tail and pending) and
 * links `adding` if the dead owner had not.  Reclaim pops one object (the
 * commit) and then frees it: killed in between, that one object leaks.
 */
#define _LGPL_SOURCE
#include "sl_qsbr.h"
#include "sl_crash.h"

#include <time.h>
#include <unistd.h>
#include <urcu/arch.h>
#include <urcu/system.h>
#include <urcu/uatomic.h>

static void limbo_recover(void *arg)
{
    sl_qsbr_t *q = arg;
    if (SL_MUTATED(M_LIMBO_RECOVER))
        return;
    uint64_t n = 0;
    sl_qsbr_head_t *last = NULL;
    for (sl_qsbr_head_t *h = q->limbo_head; h; h = h->next) {
        last = h;
        n++;
    }
    sl_qsbr_head_t *a = q->adding;
    if (a != NULL && a != last) {
        /* The dead owner had not linked it yet: finish the append. */
        a->next = NULL;
        if (a->epoch == 0)
            a->epoch = uatomic_add_return(&q->gp, 1);
        if (last)
            last->next = a;
        else
            q->limbo_head = a;
        last = a;
        n++;
    }
    q->adding = NULL;
    q->limbo_tail = last;
    uatomic_set(&q->pending, n);
}

int sl_qsbr_init(sl_qsbr_t *q, sl_arena_t *arena)
{
    q->gp = 1;
    for (int i = 0; i < SL_QSBR_SLOTS; i++) {
        q->slots[i].ctr = 0;
        q->slots[i].turns = 0;
        q->slots[i].pid = 0;
    }
    q->limbo_head = q->limbo_tail = q->adding = NULL;
    q->pending = q->reclaimed = 0;
    q->arena = arena;
    q->holders = sl_arena_calloc(arena, sizeof(*q->holders) * SL_QSBR_SLOTS);
    if (q->holders == NULL)
        return SL_ERROR;
    for (int i = 0; i < SL_QSBR_SLOTS; i++)
        q->holders[i].slot = i;
    return sl_lock_init(&q->limbo_lock, limbo_recover, q);
}

void sl_qsbr_quiescent(sl_qsbr_t *q, int slot)
{
    /* Order every read of shared pointers before the announcement... */
    cmm_smp_mb();
    CMM_STORE_SHARED(q->slots[slot].ctr, CMM_LOAD_SHARED(q->gp));
    /* ...and the announcement before any read that follows. */
    cmm_smp_mb();
    CMM_STORE_SHARED(q->slots[slot].turns, q->slots[slot].turns + 1);
}

void sl_qsbr_online(sl_qsbr_t *q, int slot)
{
    CMM_STORE_SHARED(q->slots[slot].ctr, CMM_LOAD_SHARED(q->gp));
    cmm_smp_mb(); /* online before the first read of a shared pointer */
}

void sl_qsbr_offline(sl_qsbr_t *q, int slot)
{
    cmm_smp_mb(); /* every read done before we stop counting */
    CMM_STORE_SHARED(q->slots[slot].ctr, 0);
}

void sl_qsbr_register(sl_qsbr_t *q, int slot)
{
    uatomic_set(&q->slots[slot].pid, (int32_t)getpid());
    q->holders[slot].n = 0;
    q->holders[slot].waiting = NULL;
    sl_lock_set_holder(&q->holders[slot]);
    sl_qsbr_online(q, slot);
}

void sl_qsbr_release(sl_qsbr_t *q, int slot)
{
    /* The owner is dead: it holds nothing.  No barrier needed beyond the
     * store: nothing of the dead process can be ordered against it. */
    uatomic_set(&q->slots[slot].ctr, 0);
    uatomic_set(&q->slots[slot].pid, 0);
}

static void append_locked(sl_qsbr_t *q, sl_qsbr_head_t *obj)
{
    q->adding = obj;
    SL_CRASHPOINT("limbo.add.intent");
    /* The increment is a full barrier (uatomic_add_return): the caller's
     * unlink is visible to everyone before the new epoch is. */
    obj->epoch = uatomic_add_return(&q->gp, 1);
    SL_CRASHPOINT("limbo.add.epoch");
    if (q->limbo_tail)
        q->limbo_tail->next = obj; /* the commit: the object is in limbo */
    else
        q->limbo_head = obj;
    SL_CRASHPOINT("limbo.add.linked");
    q->limbo_tail = obj;
    uatomic_add(&q->pending, 1);
    SL_CRASHPOINT("limbo.add.counted");
    q->adding = NULL;
}

void sl_qsbr_retire(sl_qsbr_t *q, sl_qsbr_head_t *obj)
{
    obj->next = NULL;
    sl_lock_acquire(&q->limbo_lock);
    append_locked(q, obj);
    sl_lock_release(&q->limbo_lock);
}

void sl_qsbr_retire_once(sl_qsbr_t *q, sl_qsbr_head_t *obj)
{
    sl_lock_acquire(&q->limbo_lock);
    /* Under the lock (after its recovery) epoch != 0 means appended. */
    if (obj->epoch == 0) {
        obj->next = NULL;
        append_locked(q, obj);
    }
    sl_lock_release(&q->limbo_lock);
}

/* The oldest epoch an online reader may still be in (UINT64_MAX: none). */
static uint64_t min_online(sl_qsbr_t *q)
{
    uint64_t m = UINT64_MAX;
    for (int i = 0; i < SL_QSBR_SLOTS; i++) {
        uint64_t c = CMM_LOAD_SHARED(q->slots[i].ctr);
        if (c != 0 && c < m)
            m = c;
    }
    return m;
}

size_t sl_qsbr_reclaim(sl_qsbr_t *q)
{
    if (uatomic_read(&q->pending) == 0)
        return 0;
    /* Snapshot the counter first, then the slots.  An object with epoch
     * <= the snapshot was unlinked before the snapshot; a reader whose slot
     * we then see offline can only come online (store ctr, full barrier,
     * read) in a way that sees the unlink.  Without the snapshot, a reader
     * coming online after the scan could hold an object retired after it. */
    uint64_t m, online;
    if (SL_MUTATED(M_GP_SNAPSHOT)) {
        online = min_online(q);
        SL_CRASHPOINT("qsbr.reclaim.scanned");
        cmm_smp_mb();
        m = CMM_LOAD_SHARED(q->gp);
    } else {
        m = CMM_LOAD_SHARED(q->gp);
        cmm_smp_mb();
        online = min_online(q);
        SL_CRASHPOINT("qsbr.reclaim.scanned");
    }
    if (online < m)
        m = online;
    size_t n = 0;
    sl_lock_acquire(&q->limbo_lock);
    /* Pop one object (the commit: limbo no longer holds it), then free it,
     * under the limbo lock (lock order limbo -> arena; the arena takes no
     * other lock).  A process killed in between leaks that one object,
     * never a batch, and never leaves limbo pointing at freed memory. */
    /* At most SL_QSBR_RECLAIM_BATCH per call: a worker reclaims at the end
     * of every loop turn, and a turn must stay short even just after a
     * cleanup retired 100,000 objects; the rest waits for the next call. */
    while (q->limbo_head && q->limbo_head->epoch <= m && n < SL_QSBR_RECLAIM_BATCH) {
        sl_qsbr_head_t *h = q->limbo_head;
        q->limbo_head = h->next;
        SL_CRASHPOINT("limbo.pop.head");
        if (q->limbo_head == NULL)
            q->limbo_tail = NULL;
        /* reclaimed first: pending + reclaimed (= retired) stays exact */
        uatomic_add(&q->reclaimed, 1);
        uatomic_add(&q->pending, -1);
        SL_CRASHPOINT("limbo.pop.counted");
        sl_arena_free(q->arena, h);
        n++;
    }
    sl_lock_release(&q->limbo_lock);
    return n;
}

int sl_qsbr_synchronize(sl_qsbr_t *q, int timeout_ms)
{
    uint64_t target = uatomic_add_return(&q->gp, 1);
    struct timespec ts = {0, 1000 * 1000};
    for (int waited = 0;; waited++) {
        if (min_online(q) >= target)
            return SL_OK;
        if (waited >= timeout_ms)
            return SL_AGAIN;
        nanosleep(&ts, NULL);
    }
}
