/*
 * sl_brq.h - the broker's request queue (--redis) and the way its answers
 * reach the workers.
 *
 * Workers never talk to Redis.  They hand requests to the broker process
 * through one more inbox in shared memory (sl_inbox_t: a bounded ring,
 * producers under a robust lock, the broker the only consumer, an eventfd
 * wake-up), and the broker answers each request that wants an answer with
 * an SL_INBOX_BROKER_RESULT entry in the requesting worker's own inbox,
 * carrying the request's tag, a status and a small JSON document.
 *
 * Ownership: a request's payload is one sl_chan_msg_t allocated from the
 * arena by the producer and owned by the queue entry once pushed; the
 * broker copies what it needs (into the Redis command it formats) and
 * frees it right after popping, so a broker killed at any instant leaks at
 * most the one payload it had in hand.  The ring is an inbox, with an
 * inbox's crash consistency (inbox.c): a push is recorded before it is
 * made, the tail store publishes a whole entry, and the lock's recovery
 * makes or drops a recorded push, so a producer killed while pushing
 * leaves a whole entry or none.
 *
 * Requests carry a deadline (monotonic ms, the same clock in every process
 * of the machine): the broker drops, unanswered, a request it pops after
 * its deadline (or stamped with an older broker generation).  Outcomes a
 * client sees:
 *  - SL_BR_UNAVAILABLE ("broker-unavailable"): not done - refused before
 *    anything was sent to Redis;
 *  - SL_BR_TIMEOUT ("broker-timeout"): unknown - the command may have
 *    reached Redis and run there (the link failed with it in flight, the
 *    broker died, or no answer came in time);
 *  - any other status: the answer Redis gave.
 */
#ifndef SL_BRQ_H
#define SL_BRQ_H

#include "sl_chan.h"

/* Request kinds (sl_inbox_entry_t.kind in the broker's queue). */
enum {
    SL_BRQ_PUBLISH = 16, /* payload: sl_brq_pub layout below; answered */
    SL_BRQ_JOIN = 17,    /* a local subscribe: JSON; answered */
    SL_BRQ_SYNC = 18,    /* a channel's local count changed: JSON {"channel-id"}; no answer */
    SL_BRQ_RPC = 19,     /* an rpc-request to deliver cluster-wide: JSON; answered */
    SL_BRQ_RPC_RESPONSE = 20, /* an rpc-response for another node: JSON; answered */
    SL_BRQ_ADMIN = 21,   /* an admin call on the cluster: JSON {"op":..}; answered */
    /* Presence (JSON; set/del not answered): a local subscriber's entry
     * {"channel-id","conn-id","entry":{conn-id,user,info},"frame"?,"conn-no"}
     * and its removal; a page of a channel's presence over the live nodes
     * {"channel-id","cursor","limit"} -> {"clients","next-cursor"}; its
     * counts {"channel-id","max-walk"} -> {"num-clients","num-users"}. */
    SL_BRQ_PRESENCE_SET = 22,
    SL_BRQ_PRESENCE_DEL = 23,
    SL_BRQ_PRESENCE = 24,
    SL_BRQ_PRESENCE_STATS = 25,
    /* A page of a channel's history (docs/protocol.md 4.11), from Redis:
     * {"channel-id","since" (-1: none),"reverse","limit","max-bytes",
     * "min-at" (wall ms; 0: no age bound)} -> {"epoch","top-seq","more",
     * "messages": [the retained channel-message texts, in page order]}. */
    SL_BRQ_HISTORY = 26,
    /* The worker gave up on its history request `tag` (the entry's own tag;
     * no payload, no answer to it): its connection closed, or its peer did
     * while it waited (review rf17 H1).  A request still waiting for the
     * page budget is taken off the wait list, never sent, and answered
     * broker-unavailable (so the worker's record goes); one already sent
     * runs to its end. */
    SL_BRQ_CANCEL = 27,
};

/* Request flags (status of a request entry). */
#define SL_BRQ_F_EXCLUDE 1u    /* publish: skip the sender at delivery */
#define SL_BRQ_F_SENDER_SUB 2u /* publish: the excluded sender is a subscriber (delivered-to) */
#define SL_BRQ_F_ADMIN 4u      /* publish: by the admin API (sender null) */

/* Result statuses (status of an SL_INBOX_BROKER_RESULT entry). */
enum {
    SL_BR_OK = 0,
    SL_BR_UNAVAILABLE = 1,     /* Redis or the broker unreachable, not done: "broker-unavailable" */
    SL_BR_NOT_FOUND = 2,       /* channel-not-found / connection-not-found */
    SL_BR_FULL = 3,            /* max-subscribers-reached */
    SL_BR_OVERLOADED = 4,      /* a queue or the shared memory is full */
    SL_BR_EXISTS = 5,          /* channel-exists */
    SL_BR_NO_SUBSCRIBERS = 6,  /* rpc: nobody to ask */
    SL_BR_REQUEST_NOT_FOUND = 7, /* rpc-response: late, duplicate or unknown */
    SL_BR_BAD = 8,             /* a malformed request (a bug): "internal-error" */
    SL_BR_TIMEOUT = 9,         /* sent, outcome unknown: "broker-timeout" (may have been done) */
};

/* "broker-unavailable", "channel-not-found", ... for a status. */
const char *sl_brq_reason(uint32_t status);

/* Producer (a worker): copy `len` bytes of payload into shared memory and
 * queue the request e (kind, from, target_slot, target_conn, tag, status,
 * deadline; e->msg is set here).  SL_OK, SL_CHAN_OVERLOADED (queue full,
 * counted in q->refused) or SL_CHAN_NO_MEMORY.  Never blocks beyond the
 * queue's lock. */
int sl_brq_submit(sl_reg_t *r, sl_inbox_t *q, sl_inbox_entry_t *e, const void *payload,
                  size_t len);

/* The broker: answer request `tag` of `worker` with status and a payload
 * (may be NULL).  SL_OK, SL_CHAN_OVERLOADED or SL_CHAN_NO_MEMORY. */
int sl_brq_result(sl_reg_t *r, int worker, uint64_t tag, uint32_t status, const void *payload,
                  size_t len);

/* A payload object of len bytes (refs 1), contents copied; NULL when
 * shared memory is exhausted.  Its bytes are m->frame[0..m->len). */
sl_chan_msg_t *sl_brq_blob(sl_reg_t *r, const void *bytes, size_t len);

/* The cluster's view, built by the broker from Redis a slice at a time
 * (a bounded number of channels per heartbeat; a whole pass takes
 * channels / slice heartbeats) and published about once a second: the
 * live nodes and every channel with its figures, sorted by id so a
 * listing can be paged by index without parsing the rest.  Written whole,
 * then published by one pointer store (rcu_assign_pointer) into
 * sl_shm->broker.snapshot; the old one is retired through QSBR, so a
 * worker may read the one it found until its next quiescent state. */
typedef struct {
    uint32_t off, len;     /* text[off..off+len): its figures, a JSON object */
    uint32_t idoff, idlen; /* text[idoff..idoff+idlen): its id */
    uint64_t messages;     /* message-count (for /stats' busiest) */
} sl_brq_snap_chan_t;

typedef struct {
    sl_qsbr_head_t head; /* first: retired through QSBR */
    int64_t at_ms;
    uint32_t nchan;
    uint32_t nodes_off, nodes_len; /* text[...]: the live nodes, a JSON array */
    uint32_t text_len;
    sl_brq_snap_chan_t chan[]; /* nchan of them, then the text */
} sl_brq_snap_t;

static inline const char *sl_brq_snap_text(const sl_brq_snap_t *s)
{
    return (const char *)&s->chan[s->nchan];
}

#endif
