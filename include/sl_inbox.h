/*
 * sl_inbox.h - one inbox per worker in shared memory: how any process hands
 * work (a published message to fan out, a direct message) to a worker.
 *
 * A bounded ring of entries.  The same ring, with its own kinds, is the
 * broker's request queue (sl_brq.h).  Producers (any worker, the master) enqueue
 * under the inbox's robust lock; the owning worker is the only consumer and
 * reads without the lock.  The tail index is the commit point of an
 * enqueue: an entry is written first, then published by a release store of
 * tail.  The head index is written only by the consumer.  Wake-ups go
 * through an eventfd per worker (created by the master before forking,
 * outside shm).
 *
 * A push is recorded before it is made (sl_inbox_prepare: the entry, the
 * tail it will go to, and the commit flag of the hand-off it belongs to),
 * so a producer killed holding the lock leaves a push that recovery
 * completes - if its hand-off committed - or drops.  A hand-off to several
 * inboxes is all-or-none through that one commit flag (see channels.c).
 *
 * Missed messages: a producer that finds an inbox full skips it (one slow
 * or stopped worker must not stop publishing for everyone) and notes the
 * channel in the inbox's `missed` ring: which channel (hash and incarnation
 * serial), which message (its seq; UINT64_MAX for a delete notice) and the
 * inbox position then.  The owner reads it (sl_inbox_missed) and closes its
 * local subscribers of that channel incarnation that subscribed before that
 * message (sl_inbox_note_t.seq) with 1013, so they reconnect and recover
 * with since-seq instead of silently missing a seq; a subscriber that came
 * later did not miss it and is left alone.
 *
 * A join or leave has no seq, so since-seq cannot recover one, and it
 * must never close anybody: its note (seq SL_INBOX_SEQ_PRESENCE, `horizon`
 * the last subscription it was for) does not go into the missed ring at
 * all but into the inbox's small presence set (review rg15 G1): one slot
 * per channel incarnation with a loss pending, whose horizon and latest
 * position (pos) a later loss of the same channel raises (coalesced); its
 * first position (the oldest loss not yet told) stays.  With every slot
 * busy, the overflow (its own first and pos) is noted instead.  The owner
 * tells the set (under the lock: sl_inbox_presence) once its drain has
 * passed a slot's first (join / leave entries queued before the loss are
 * delivered first): the subscribers of each channel up to its horizon get
 * one presence-resync notice ("ask presence again"); after an overflow,
 * every subscriber of a join-leave channel gets one.  A slot whose pos is
 * still ahead is kept with first = pos, for one more notice after the
 * entries between (review ri15 R2).  So presence losses cost notices,
 * never a 1013, however many there are.
 *
 * Presence set, crash-consistency (inbox lock): a slot is free while its
 * chan_hash is 0; a producer writes serial, horizon, pos and first, then
 * the hash (one store makes it valid); folding raises pos then the
 * horizon; an overflow stores its first (if none is untold) then its pos:
 * single stores, each state valid (a fold cut after pos only means a
 * later second notice, and the re-note below raises the horizon; an
 * overflow cut after first has first > pos: told, then cleared).  So
 * every state a killed producer leaves is valid and the lock's recovery
 * has nothing to finish: a loss whose note the dead producer had not made
 * is noted again by the hand-off's recovery (hand_off_settle), and a
 * second note of a channel folds into the first.  The consumer changes a
 * slot by one store (hash 0, or first = pos) after copying it; a consumer
 * killed in the middle is a dead worker, whose successor wipes nothing
 * (review ri15 R4): the predecessor's slots tell nobody of its (their
 * horizons are below its subscriptions).
 *
 * The ring holds SL_INBOX_MISSED notes, of which the consumer trusts the
 * last SL_INBOX_MISSED - 1: the slot of the next note may be under
 * overwrite.  More than that noted since it last looked means "anything may
 * have been missed".
 */
#ifndef SL_INBOX_H
#define SL_INBOX_H

#include "sl_lock.h"

#define SL_INBOX_CAP 8192   /* entries; a power of two */
#define SL_INBOX_MISSED 256 /* notes of missed messages; a power of two */
#define SL_INBOX_PRESENCE 64 /* channels with a join / leave loss pending */
/* --redis: entries the broker's deliveries leave free in a worker's inbox,
 * so the broker's answers to that worker's requests always find room. */
#define SL_INBOX_RESERVED 256
/* sl_inbox_note_t.seq of a join / leave that was not put here. */
#define SL_INBOX_SEQ_PRESENCE (UINT64_MAX - 1)

struct sl_chan_msg;

typedef enum {
    SL_INBOX_CHANNEL_MSG = 1, /* fan out msg to local subscribers of its channel */
    SL_INBOX_DIRECT = 2,      /* msg for one local connection (slot + conn number) */
    SL_INBOX_BROADCAST = 3,   /* msg for every local protocol connection */
    SL_INBOX_CLOSE = 4,       /* close one local connection with 1008 */
    SL_INBOX_CHANNEL_GONE = 5, /* msg's channel was deleted: drop local subscribers, tell them */
    SL_INBOX_UNSUBSCRIBE = 6,  /* admin: unsubscribe one local connection from the channel
                                  whose id is msg's bytes (not a frame), and tell it */
    SL_INBOX_BROKER_RESULT = 7, /* --redis: the broker's answer to request `tag` (sl_brq.h) */
    SL_INBOX_CHANNEL_RESET = 8, /* --redis: msg's channel lost messages: close its local subscribers */
} sl_inbox_kind_t;

typedef struct {
    uint32_t kind;
    uint32_t target_slot;  /* DIRECT */
    uint64_t target_conn;  /* DIRECT: conn number, guards against slot reuse */
    uint64_t exclude_conn; /* CHANNEL_MSG: the sender's conn number; 0 none */
    uint64_t tag;          /* DIRECT: what it answers (an RPC request number) */
    struct sl_chan_msg *msg; /* one reference, owned by the entry */
    /* The broker's queue and its results (sl_brq.h): */
    int32_t from;     /* the requesting worker */
    uint32_t status;  /* request flags, or the result's status */
    int64_t deadline; /* monotonic ms: past it the broker drops the request */
} sl_inbox_entry_t;

/* A missed message (see above). */
typedef struct {
    uint64_t chan_hash; /* the channel whose message was not put here (0: unknown, "all") */
    uint64_t serial;    /* its incarnation (sl_chan_t.serial) */
    uint64_t seq;       /* the message's seq (UINT64_MAX: the channel's delete notice;
                           SL_INBOX_SEQ_PRESENCE: a join / leave) */
    uint64_t pos;       /* tail then: entries from pos on came after it */
    uint64_t horizon;   /* a join / leave: for subscriptions numbered up to this */
} sl_inbox_note_t;

/* A channel incarnation with a join / leave loss pending (see above). */
typedef struct {
    uint64_t chan_hash; /* 0: free; stored last when filled, first when emptied */
    uint64_t serial;
    uint64_t horizon;   /* the highest horizon of its losses */
    uint64_t pos;       /* tail at its latest loss */
    uint64_t first;     /* tail at its oldest loss not yet told: told once the drain
                           passed it, then kept (first = pos) if pos is still ahead */
} sl_inbox_presence_t;

/* presence_overflow_first when no overflow waits to be told. */
#define SL_INBOX_NO_OVERFLOW UINT64_MAX

typedef struct sl_inbox {
    sl_lock_t lock; /* producers */
    /* Intent of the push in progress (under the lock): pending.msg != NULL
     * while one is recorded; pending_commit NULL means committed. */
    sl_inbox_entry_t pending;
    uint64_t pending_pos;
    const uint32_t *pending_commit;
    uint64_t head __attribute__((aligned(64))); /* consumer only */
    uint64_t tail __attribute__((aligned(64))); /* producers, under the lock */
    uint64_t enqueued, refused;                /* figures */
    uint64_t missed_n;                         /* producers, under the lock */
    uint64_t presence_n;   /* producers, under the lock: presence losses noted */
    uint64_t presence_overflows; /* figures: ... with every slot busy */
    uint64_t presence_overflow_pos; /* producers, under the lock: tail at the latest overflow */
    uint64_t presence_overflow_first; /* under the lock: tail at the oldest overflow not yet
                                         told (SL_INBOX_NO_OVERFLOW: none) */
    uint64_t coalesced;    /* figures: presence losses folded into a busy slot */
    sl_inbox_presence_t presence[SL_INBOX_PRESENCE];
    sl_inbox_note_t missed[SL_INBOX_MISSED];   /* ring */
    sl_inbox_entry_t ring[SL_INBOX_CAP];
} sl_inbox_t;

int sl_inbox_init(sl_inbox_t *in);

/* Producer side.  lock/unlock; then, lock held: */
void sl_inbox_lock(sl_inbox_t *in);
void sl_inbox_unlock(sl_inbox_t *in);
/* Only if free (the master, which never waits): SL_OK or SL_AGAIN. */
int sl_inbox_trylock(sl_inbox_t *in);
/* Room for n more entries? (counts a refusal when not) */
bool sl_inbox_has_room(sl_inbox_t *in, uint32_t n);
/* The same, counting nothing (a join / leave: review r15 L6). */
bool sl_inbox_room(const sl_inbox_t *in, uint32_t n);
/* Record the push of e (room checked); `commit` points at the hand-off's
 * commit flag (non-zero: committed), NULL for a push committed by itself. */
void sl_inbox_prepare(sl_inbox_t *in, const sl_inbox_entry_t *e, const uint32_t *commit);
/* Make the recorded push: write the entry, publish it by the tail store. */
void sl_inbox_push_prepared(sl_inbox_t *in);
/* Push an entry that carries no message (msg NULL: nothing to own, so
 * nothing to record): written, then published by the tail store. */
void sl_inbox_push_bare(sl_inbox_t *in, const sl_inbox_entry_t *e);
/* Forget the recorded push (the hand-off did not commit). */
void sl_inbox_drop_prepared(sl_inbox_t *in);
/* A message was not put in this (full) inbox: note it (`pos` is set
 * here; a presence note goes into the presence set, see above). */
void sl_inbox_note_missed(sl_inbox_t *in, const sl_inbox_note_t *note);

/* Consumer: take the next entry; false when empty.  *pos (may be NULL)
 * gets its position. */
bool sl_inbox_pop(sl_inbox_t *in, sl_inbox_entry_t *out, uint64_t *pos);

/* Consumer: call fn for every note made since *seen, up to the notes
 * made before the entry at position `upto` was pushed,
 * and advance *seen past them; `index` is the note's number (missed_n when
 * it was made).  So the owner delivers every entry pushed before a skip,
 * and acts on the skip before the first entry pushed after it.  When more
 * were noted than the ring keeps (SL_INBOX_MISSED - 1), or producers lapped
 * us while we read, fn gets note NULL once: "every note numbered below
 * `index` may have been lost" - which concerns only subscriptions made
 * before missed_n reached `index` (a note counted before a subscription
 * began is of a message published before it). */
void sl_inbox_missed(sl_inbox_t *in, uint64_t *seen, uint64_t upto,
                     void (*fn)(const sl_inbox_note_t *note, uint64_t index, void *arg),
                     void *arg);

/* Consumer: tell what of the presence set was noted before the entry at
 * position `upto` was pushed, as sl_inbox_missed does, so a
 * presence-resync never overtakes join / leave entries queued before the
 * loss (review rh15 H1).  A slot (the overflow likewise) is told once the
 * drain has passed its oldest untold loss (`first`), and kept, with
 * first = pos, if its latest loss is still ahead (review ri15 R2: the
 * entries between may be older than the presence the client asks for, so
 * those losses get a notice of their own; moving the one position to the
 * latest loss starved a channel whose losses came faster than the drain).
 * Looks only if anything was noted since *seen or upto reached *next (the
 * lowest position still pending after the last look; start with
 * UINT64_MAX) (review ri15 R5: no lock on a drain with nothing pending).
 * Tries the lock (busy: nothing done, returns false); then, without it,
 * calls fn(NULL) once if an overflow was told (the slots told with it
 * are covered by it and not passed on), else fn(slot) for every channel
 * told.  A new worker looks at what its predecessor left as well (review
 * ri15 R4: nothing is wiped at start; a slot's horizon is below every
 * subscription of the new worker, so it tells nobody).  Returns whether
 * it told anything. */
bool sl_inbox_presence(sl_inbox_t *in, uint64_t *seen, uint64_t upto, uint64_t *next,
                       void (*fn)(const sl_inbox_presence_t *p, void *arg), void *arg);

/* Consumer: is the inbox empty?  *upto gets the tail it saw so: every
 * entry before it was delivered, so notes made at or before it are due;
 * a note made later is at a later position, and the entries before it
 * wake us (review ri15 R1: "everything", UINT64_MAX, let a loss noted
 * after this look overtake join / leave entries pushed meanwhile). */
bool sl_inbox_drained(sl_inbox_t *in, uint64_t *upto);

/* A consumer's place in its inbox's notes (the missed ring and the
 * presence set).  A worker starts with SL_INBOX_READER_INIT and keeps it
 * for its life; the start policy is sl_inbox_look's (review rm15 N1). */
typedef struct {
    uint64_t missed_seen;   /* notes of the missed ring handled */
    uint64_t presence_seen; /* presence notes looked at (starts at 0) */
    uint64_t presence_next; /* the set's lowest position still pending */
    bool started;           /* missed_seen taken at the first look */
} sl_inbox_reader_t;
#define SL_INBOX_READER_INIT {0, 0, UINT64_MAX, false}

/* What a look calls: sl_inbox_presence's fn and sl_inbox_missed's fn,
 * both with `arg`. */
typedef struct {
    void (*presence)(const sl_inbox_presence_t *p, void *arg);
    void (*missed)(const sl_inbox_note_t *note, uint64_t index, void *arg);
    void *arg;
} sl_inbox_look_fns_t;

/* Consumer: act on the notes made before the entry at `upto` was pushed:
 * the presence set (sl_inbox_presence), then the missed ring
 * (sl_inbox_missed).  At a new worker's first look the missed ring's
 * notes so far are its predecessor's and are skipped; the presence set
 * is looked at as left, never wiped (review ri15 R4: a wipe, retried
 * while the lock was busy, took losses noted for the new worker's own
 * subscriptions meanwhile; a predecessor's slot tells nobody of ours,
 * its horizon being below every subscription we make). */
void sl_inbox_look(sl_inbox_t *in, sl_inbox_reader_t *r, uint64_t upto,
                   const sl_inbox_look_fns_t *fns);

/* Consumer, after a drain: if the inbox is empty, look up to the tail it
 * saw empty (sl_inbox_drained; review ri15 R1) and return true; else do
 * nothing and return false (the drain stopped at a bound). */
bool sl_inbox_look_drained(sl_inbox_t *in, sl_inbox_reader_t *r, const sl_inbox_look_fns_t *fns);

/* Entries waiting (approximate; for figures). */
uint64_t sl_inbox_depth(sl_inbox_t *in);

#endif
