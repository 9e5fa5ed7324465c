/*
 * inbox.c - per-worker inboxes (see sl_inbox.h for the contract).
 *
 * Ordering: the producer writes the entry, then stores tail with release
 * semantics (cmm_smp_wmb before it); the consumer loads tail, then reads
 * entries up to it (cmm_smp_rmb after the load).  The consumer stores head
 * after it has copied an entry out, so a producer that sees room (head) can
 * only overwrite slots already consumed (cmm_smp_mb before the head store,
 * and the producer loads head with acquire semantics: its later stores into
 * the slot cannot come before that load).
 *
 * The missed-note ring is a seqlock of sorts: the producer (under the lock)
 * makes the previous count visible before it overwrites a slot, writes the
 * note, then publishes it by the count (cmm_smp_wmb both times); the
 * consumer reads a note, then (cmm_smp_rmb) the count again: if the count
 * says the producer may have started the note that reuses that slot
 * (count - i >= SL_INBOX_MISSED), the note may be torn and everything
 * counts as missed.
 *
 * Inbox lock, invariants: entries [head, tail) are published and each holds
 * one reference to its message; pending.msg is NULL between pushes.
 * Recovery: a recorded push whose hand-off committed is made if tail still
 * equals the recorded position (no one else could move tail while the dead
 * producer held the lock), then the record is cleared.  A push of an
 * uncommitted hand-off is dropped; the owner of that hand-off (a channel
 * lock's recovery) frees the message.  The presence set needs nothing:
 * each of its stores leaves a valid state (sl_inbox.h).
 *
 * The consumer is lock-free and killed only with its worker: an entry it
 * had copied out but whose reference it had not yet dropped leaks that
 * one reference (the message is never freed); an entry whose head store it
 * had not made is drained again by the master.
 */
#include "sl_inbox.h"
#include "sl_crash.h"

#include <string.h>
#include <urcu/arch.h>
#include <urcu/system.h>
#include <urcu/uatomic.h>

static bool committed(const sl_inbox_t *in)
{
    return in->pending_commit == NULL || CMM_LOAD_SHARED(*in->pending_commit) != 0;
}

static void write_entry(sl_inbox_t *in, const sl_inbox_entry_t *e)
{
    if (SL_MUTATED(M_INBOX_COMMIT_ORDER)) {
        uint64_t t = in->tail; /* mutant: published before it is written */
        CMM_STORE_SHARED(in->tail, t + 1);
        SL_CRASHPOINT("inbox.push.entry");
        in->ring[t & (SL_INBOX_CAP - 1)] = *e;
    } else {
        in->ring[in->tail & (SL_INBOX_CAP - 1)] = *e;
        SL_CRASHPOINT("inbox.push.entry");
        cmm_smp_wmb(); /* the entry before the tail that publishes it */
        CMM_STORE_SHARED(in->tail, in->tail + 1);
    }
    SL_CRASHPOINT("inbox.push.tail");
    uatomic_add(&in->enqueued, 1);
}

static void inbox_recover(void *arg)
{
    sl_inbox_t *in = arg;
    if (in->pending.msg == NULL)
        return;
    if (!SL_MUTATED(M_INBOX_RECOVER) && committed(in) && in->tail == in->pending_pos)
        write_entry(in, &in->pending);
    in->pending_commit = NULL;
    CMM_STORE_SHARED(in->pending.msg, NULL);
}

int sl_inbox_init(sl_inbox_t *in)
{
    memset(&in->pending, 0, sizeof(in->pending));
    in->pending_commit = NULL;
    in->head = in->tail = 0;
    in->enqueued = in->refused = in->missed_n = 0;
    in->presence_n = in->presence_overflows = in->presence_overflow_pos = in->coalesced = 0;
    in->presence_overflow_first = SL_INBOX_NO_OVERFLOW;
    memset(in->presence, 0, sizeof(in->presence));
    return sl_lock_init(&in->lock, inbox_recover, in);
}

void sl_inbox_lock(sl_inbox_t *in)
{
    sl_lock_acquire(&in->lock);
}

int sl_inbox_trylock(sl_inbox_t *in)
{
    return sl_lock_try(&in->lock) == SL_OK ? SL_OK : SL_AGAIN;
}

void sl_inbox_unlock(sl_inbox_t *in)
{
    sl_lock_release(&in->lock);
}

bool sl_inbox_room(const sl_inbox_t *in, uint32_t n)
{
    /* Acquire: the slots we then overwrite were handed back by this head
     * store (the consumer's copy out of them is done). */
    uint64_t head = __atomic_load_n(&in->head, __ATOMIC_ACQUIRE);
    return in->tail - head + n <= SL_INBOX_CAP;
}

bool sl_inbox_has_room(sl_inbox_t *in, uint32_t n)
{
    if (sl_inbox_room(in, n))
        return true;
    uatomic_add(&in->refused, 1);
    return false;
}

void sl_inbox_prepare(sl_inbox_t *in, const sl_inbox_entry_t *e, const uint32_t *commit)
{
    in->pending_pos = in->tail;
    in->pending_commit = commit;
    in->pending.kind = e->kind;
    in->pending.target_slot = e->target_slot;
    in->pending.target_conn = e->target_conn;
    in->pending.exclude_conn = e->exclude_conn;
    in->pending.tag = e->tag;
    in->pending.from = e->from;
    in->pending.status = e->status;
    in->pending.deadline = e->deadline;
    cmm_smp_wmb(); /* the record before the message pointer that validates it */
    CMM_STORE_SHARED(in->pending.msg, e->msg);
    SL_CRASHPOINT("inbox.prepared");
}

void sl_inbox_push_prepared(sl_inbox_t *in)
{
    write_entry(in, &in->pending);
    in->pending_commit = NULL;
    CMM_STORE_SHARED(in->pending.msg, NULL);
    SL_CRASHPOINT("inbox.push.done");
}

void sl_inbox_push_bare(sl_inbox_t *in, const sl_inbox_entry_t *e)
{
    write_entry(in, e);
}

void sl_inbox_drop_prepared(sl_inbox_t *in)
{
    in->pending_commit = NULL;
    CMM_STORE_SHARED(in->pending.msg, NULL);
}

/* A join / leave loss: into the presence set, never the missed ring
 * (sl_inbox.h: review rg15 G1).  Lock held. */
static void note_presence(sl_inbox_t *in, const sl_inbox_note_t *note)
{
    sl_inbox_presence_t *free_slot = NULL;
    for (uint32_t i = 0; i < SL_INBOX_PRESENCE; i++) {
        sl_inbox_presence_t *x = &in->presence[i];
        if (x->chan_hash == 0) {
            if (free_slot == NULL)
                free_slot = x;
        } else if (note->chan_hash != 0 && x->chan_hash == note->chan_hash &&
                   x->serial == note->serial) {
            /* Later than the queued entries: a second notice waits for
             * them; `first` (the oldest untold loss) stays (review ri15 R2). */
            if (SL_MUTATED(M_PRESENCE_FIRST_FOLD))
                CMM_STORE_SHARED(x->first, in->tail); /* mutant: the notice moves away */
            CMM_STORE_SHARED(x->pos, in->tail);
            if (x->horizon < note->horizon)
                CMM_STORE_SHARED(x->horizon, note->horizon);
            uatomic_add(&in->coalesced, 1);
            CMM_STORE_SHARED(in->presence_n, in->presence_n + 1);
            return;
        }
    }
    if (free_slot && note->chan_hash != 0 && SL_MUTATED(M_PRESENCE_SLOT_ORDER)) {
        CMM_STORE_SHARED(free_slot->chan_hash, note->chan_hash); /* mutant: valid first */
        SL_CRASHPOINT("inbox.presence.slot");
        free_slot->serial = note->serial;
        free_slot->horizon = note->horizon;
        free_slot->pos = in->tail;
        free_slot->first = in->tail;
    } else if (free_slot && note->chan_hash != 0) { /* (hash 0 marks a free slot: "all") */
        free_slot->serial = note->serial;
        free_slot->horizon = note->horizon;
        free_slot->pos = in->tail;
        free_slot->first = in->tail;
        SL_CRASHPOINT("inbox.presence.slot");
        cmm_smp_wmb(); /* the slot before the hash that makes it valid */
        CMM_STORE_SHARED(free_slot->chan_hash, note->chan_hash);
    } else {
        /* first (if none is untold) before pos: a cut between leaves
         * first > pos, which tells and clears - valid. */
        if (in->presence_overflow_first == SL_INBOX_NO_OVERFLOW ||
            SL_MUTATED(M_PRESENCE_FIRST_FOLD))
            CMM_STORE_SHARED(in->presence_overflow_first, in->tail);
        SL_CRASHPOINT("inbox.presence.overflow"); /* (review rm15 N4) */
        CMM_STORE_SHARED(in->presence_overflow_pos, in->tail);
        uatomic_add(&in->presence_overflows, 1);
    }
    CMM_STORE_SHARED(in->presence_n, in->presence_n + 1);
}

void sl_inbox_note_missed(sl_inbox_t *in, const sl_inbox_note_t *note)
{
    if (note->seq == SL_INBOX_SEQ_PRESENCE) {
        note_presence(in, note);
        return;
    }
    uint64_t n = in->missed_n;
    sl_inbox_note_t *x = &in->missed[n & (SL_INBOX_MISSED - 1)];
    cmm_smp_wmb(); /* the count that covers the old note before we overwrite it */
    x->chan_hash = note->chan_hash;
    x->serial = note->serial;
    x->seq = note->seq;
    x->horizon = note->horizon;
    x->pos = in->tail;
    SL_CRASHPOINT("inbox.missed.noted");
    cmm_smp_wmb(); /* the note before the count that covers it */
    CMM_STORE_SHARED(in->missed_n, n + 1);
}

bool sl_inbox_presence(sl_inbox_t *in, uint64_t *seen, uint64_t upto, uint64_t *next,
                       void (*fn)(const sl_inbox_presence_t *p, void *arg), void *arg)
{
    if (CMM_LOAD_SHARED(in->presence_n) == *seen && (*next == UINT64_MAX || upto < *next))
        return false;
    sl_inbox_presence_t got[SL_INBOX_PRESENCE];
    uint32_t k = 0;
    /* Only tried: the consumer never waits for a producer (one stopped
     * with the lock must not stop us).  Busy: *seen unchanged, so the next
     * look tries again - and the holder wakes us after its push or note. */
    if (sl_inbox_trylock(in) != SL_OK)
        return false;
    *seen = in->presence_n;
    uint64_t low = UINT64_MAX, ofirst = in->presence_overflow_first;
    bool all = ofirst != SL_INBOX_NO_OVERFLOW && ofirst <= upto;
    if (all) {
        /* Told; losses after upto need one more (review ri15 R2). */
        uint64_t opos = in->presence_overflow_pos;
        CMM_STORE_SHARED(in->presence_overflow_first, opos > upto ? opos : SL_INBOX_NO_OVERFLOW);
    }
    if (CMM_LOAD_SHARED(in->presence_overflow_first) != SL_INBOX_NO_OVERFLOW)
        low = in->presence_overflow_first;
    for (uint32_t i = 0; i < SL_INBOX_PRESENCE; i++) {
        sl_inbox_presence_t *x = &in->presence[i];
        if (x->chan_hash == 0)
            continue;
        if (x->first > upto && !SL_MUTATED(M_PRESENCE_POS)) {
            low = SL_MIN(low, x->first); /* entries queued before it come first */
            continue;
        }
        if (!all)
            got[k++] = *x;
        if (x->pos > upto && !SL_MUTATED(M_PRESENCE_POS)) {
            CMM_STORE_SHARED(x->first, x->pos); /* one store: the later losses wait */
            low = SL_MIN(low, x->pos);
        } else {
            CMM_STORE_SHARED(x->chan_hash, 0); /* one store empties it */
        }
    }
    sl_inbox_unlock(in);
    *next = low;
    if (all)
        fn(NULL, arg); /* covers the slots told with it */
    for (uint32_t i = 0; i < k; i++)
        fn(&got[i], arg);
    return all || k > 0;
}

bool sl_inbox_drained(sl_inbox_t *in, uint64_t *upto)
{
    uint64_t t = CMM_LOAD_SHARED(in->tail);
    if (t != in->head)
        return false;
    *upto = SL_MUTATED(M_DRAIN_UPTO) ? UINT64_MAX : t; /* mutant: "everything" (ri15 R1) */
    return true;
}

void sl_inbox_look(sl_inbox_t *in, sl_inbox_reader_t *r, uint64_t upto,
                   const sl_inbox_look_fns_t *fns)
{
    if (!r->started) {
        /* Missed notes from before we started were for our predecessor;
         * the presence set is looked at as left (presence_seen 0). */
        r->missed_seen = uatomic_read(&in->missed_n);
        r->started = true;
    }
    sl_inbox_presence(in, &r->presence_seen, upto, &r->presence_next, fns->presence, fns->arg);
    if (uatomic_read(&in->missed_n) != r->missed_seen)
        sl_inbox_missed(in, &r->missed_seen, upto, fns->missed, fns->arg);
}

bool sl_inbox_look_drained(sl_inbox_t *in, sl_inbox_reader_t *r, const sl_inbox_look_fns_t *fns)
{
    uint64_t upto;
    if (!sl_inbox_drained(in, &upto))
        return false;
    sl_inbox_look(in, r, upto, fns); /* up to the tail seen empty (ri15 R1) */
    return true;
}

bool sl_inbox_pop(sl_inbox_t *in, sl_inbox_entry_t *out, uint64_t *pos)
{
    uint64_t head = in->head;
    if (head == CMM_LOAD_SHARED(in->tail))
        return false;
    if (pos)
        *pos = head;
    cmm_smp_rmb(); /* tail before the entry it covers */
    *out = in->ring[head & (SL_INBOX_CAP - 1)];
    cmm_smp_mb(); /* the copy is done before the slot is handed back */
    CMM_STORE_SHARED(in->head, head + 1);
    SL_CRASHPOINT("inbox.pop.head");
    return true;
}

/* The note at i may be torn or replaced: producers have (or may have
 * started) a note that reuses its slot. */
static bool lapped(uint64_t n, uint64_t i)
{
    if (SL_MUTATED(M_MISSED_LAP))
        return n - i > SL_INBOX_MISSED; /* mutant: a note being overwritten passes */
    return n - i >= SL_INBOX_MISSED;
}

void sl_inbox_missed(sl_inbox_t *in, uint64_t *seen, uint64_t upto,
                     void (*fn)(const sl_inbox_note_t *note, uint64_t index, void *arg),
                     void *arg)
{
    uint64_t n = CMM_LOAD_SHARED(in->missed_n);
    if (n == *seen)
        return;
    cmm_smp_rmb(); /* the count before the notes it covers */
    if (lapped(n, *seen)) {
        fn(NULL, n, arg);
        *seen = n;
        return;
    }
    uint64_t i = *seen;
    for (; i < n; i++) {
        sl_inbox_note_t x = in->missed[i & (SL_INBOX_MISSED - 1)];
        cmm_smp_rmb(); /* the note before the count that tells whether it is still whole */
        uint64_t now = CMM_LOAD_SHARED(in->missed_n);
        if (lapped(now, i)) {
            fn(NULL, now, arg);
            i = now;
            break;
        }
        if (x.pos > upto)
            break;
        fn(&x, i, arg);
    }
    *seen = i;
}

uint64_t sl_inbox_depth(sl_inbox_t *in)
{
    return CMM_LOAD_SHARED(in->tail) - CMM_LOAD_SHARED(in->head);
}
