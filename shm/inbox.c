/*
 * inbox.c - per-worker inboxes (see sl_inbox.h for the contract).
 *
 * Ordering: the producer writes the entry, then stores tail with release
 * semantics (cmm_smp_wmb before it); the consumer loads tail, then reads
 * entries up to it (cmm_smp_rmb after the load).  The consumer stores head
 * after it has copied an entry out, so a producer that sees room (head) can
 * only overwrite slots already consumed (cmm_smp_mb before the head store).
 * A producer killed holding the lock leaves tail either before or after its
 * entry; the robust lock needs no repair.
 */
#include "sl_inbox.h"

#include <string.h>
#include <urcu/arch.h>
#include <urcu/system.h>
#include <urcu/uatomic.h>

int sl_inbox_init(sl_inbox_t *in)
{
    in->head = in->tail = 0;
    in->enqueued = in->refused = 0;
    return sl_lock_init(&in->lock, NULL, NULL);
}

bool sl_inbox_has_room(sl_inbox_t *in, uint32_t n)
{
    uint64_t head = CMM_LOAD_SHARED(in->head);
    return in->tail - head + n <= SL_INBOX_CAP;
}

void sl_inbox_push_locked(sl_inbox_t *in, const sl_inbox_entry_t *e)
{
    in->ring[in->tail & (SL_INBOX_CAP - 1)] = *e;
    cmm_smp_wmb(); /* the entry before the tail that publishes it */
    CMM_STORE_SHARED(in->tail, in->tail + 1);
    uatomic_add(&in->enqueued, 1);
}

bool sl_inbox_pop(sl_inbox_t *in, sl_inbox_entry_t *out)
{
    uint64_t head = in->head;
    if (head == CMM_LOAD_SHARED(in->tail))
        return false;
    cmm_smp_rmb(); /* tail before the entry it covers */
    *out = in->ring[head & (SL_INBOX_CAP - 1)];
    cmm_smp_mb(); /* the copy is done before the slot is handed back */
    CMM_STORE_SHARED(in->head, head + 1);
    return true;
}

uint64_t sl_inbox_depth(sl_inbox_t *in)
{
    return CMM_LOAD_SHARED(in->tail) - CMM_LOAD_SHARED(in->head);
}
