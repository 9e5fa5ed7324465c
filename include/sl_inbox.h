/*
 * sl_inbox.h - one inbox per worker in shared memory: how any process hands
 * work (a published message to fan out, later direct messages) to a worker.
 *
 * A bounded ring of entries.  The same ring, with its own kinds, is the
 * broker's request queue (sl_brq.h).  Producers (any worker, the master) enqueue
 * under the inbox's robust lock; the owning worker is the only consumer and
 * reads without the lock.  The tail index is the commit point of an
 * enqueue: an entry is written first, then published by a release store of
 * tail, so a producer killed mid-enqueue leaves nothing half-visible.  The
 * head index is written only by the consumer.  Wake-ups go through an
 * eventfd per worker (created by the master before forking, outside shm).
 */
#ifndef SL_INBOX_H
#define SL_INBOX_H

#include "sl_lock.h"

#define SL_INBOX_CAP 8192 /* entries; a power of two */

struct sl_chan_msg;

typedef enum {
    SL_INBOX_CHANNEL_MSG = 1, /* fan out msg to local subscribers of its channel */
    SL_INBOX_DIRECT = 2,      /* msg for one local connection (slot + conn number) */
    SL_INBOX_BROADCAST = 3,   /* msg for every local protocol connection */
    SL_INBOX_CLOSE = 4,       /* close one local connection with 1008 */
    SL_INBOX_CHANNEL_GONE = 5, /* msg's channel was deleted: drop local subscribers, tell them */
    SL_INBOX_BROKER_RESULT = 6, /* --redis: the broker's answer to request `tag` (sl_brq.h) */
    SL_INBOX_CHANNEL_RESET = 7, /* --redis: msg's channel lost messages: close its local subscribers */
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

typedef struct sl_inbox {
    sl_lock_t lock;                            /* producers */
    uint64_t head __attribute__((aligned(64))); /* consumer only */
    uint64_t tail __attribute__((aligned(64))); /* producers, under the lock */
    uint64_t enqueued, refused;                /* figures */
    sl_inbox_entry_t ring[SL_INBOX_CAP];
} sl_inbox_t;

int sl_inbox_init(sl_inbox_t *in);

/* Producer, lock held: room for n more entries? */
bool sl_inbox_has_room(sl_inbox_t *in, uint32_t n);
/* Producer, lock held, room checked: append and publish one entry. */
void sl_inbox_push_locked(sl_inbox_t *in, const sl_inbox_entry_t *e);

/* Consumer: take the next entry; false when empty. */
bool sl_inbox_pop(sl_inbox_t *in, sl_inbox_entry_t *out);

/* Entries waiting (approximate; for figures). */
uint64_t sl_inbox_depth(sl_inbox_t *in);

#endif
