/*
 * sl_rpc.h - RPC correlations in the shared registry.
 *
 * A correlation (request-id -> requester's worker, slot and conn number,
 * created-at, deadline, state) lives in the rpcs table from the moment a
 * request is accepted until exactly one party claims it: the first
 * response (state ANSWERED), the requester's timer (EXPIRED), or a cleanup
 * (requester gone, worker dead: CANCELLED).  The claim is one atomic
 * compare-and-swap on the state word, which also records who claimed (the
 * claimer's worker slot), so two responders on different workers answering
 * at the same instant cannot both win, and a claim held by a worker that
 * died is found and settled by the master's cleanup (sl_rpc_cleanup_one);
 * the claimer then removes the entry from the table.
 *
 * A requester that goes away (its connection closes, its worker dies)
 * cancels the entry - or, when a responder holds the claim at that moment,
 * marks it abandoned (SL_RPC_ABANDONED, one compare-and-swap): a responder
 * that then un-claims (its hand-off failed) removes the entry instead of
 * making it pending again, so no entry is ever left that nobody watches.
 *
 * Deadlines are enforced by a timer in the requester's worker (one per
 * request), not by scanning the table.  The requester's worker is also
 * where the client-visible outcome is decided exactly once: its local
 * record of the request is settled by whichever comes first of the
 * response's DIRECT entry and the timeout (src/call.c).
 */
#ifndef SL_RPC_H
#define SL_RPC_H

#include "sl_reg.h"

#define SL_RPC_ID_MAX 48
#define SL_RPC_OLD_MS 60000 /* a request older than this is "old" (/health, /stats) */

enum { SL_RPC_PENDING = 0, SL_RPC_ANSWERED = 1, SL_RPC_EXPIRED = 2, SL_RPC_CANCELLED = 3 };

/* The state word: kind in the low byte, (claimer slot + 1) in the next,
 * and the requester-gone flag. */
#define SL_RPC_KIND(state) ((state) & 0xff)
#define SL_RPC_CLAIMER(state) ((int)(((state) >> 8) & 0xff) - 1)
#define SL_RPC_ABANDONED 0x10000u /* claimed, and the requester has gone meanwhile */

typedef struct {
    sl_table_node_t node; /* first: retired through QSBR */
    uint64_t no;          /* request number (the n of req-<ms>-<n>) */
    uint32_t state;       /* atomic: kind | (claimer + 1) << 8; see above */
    int32_t worker;       /* the requester's */
    uint32_t slot;
    uint64_t conn_no;
    int64_t created_at, deadline; /* wall ms */
    char request_id[SL_RPC_ID_MAX];
    /* The channel it was made on (a responder must subscribe to it when
     * access control is on), NUL-terminated, in the same object: 152 bytes
     * plus the id, a 256-byte object for ids up to 103 bytes. */
    char channel_id[];
} sl_rpc_t;

/* Register a pending request made on channel chan[0..chan_len) (at most
 * 128 bytes); NULL when shared memory is exhausted. */
sl_rpc_t *sl_rpc_create(sl_reg_t *r, int worker, uint32_t slot, uint64_t conn_no,
                        const char *chan, size_t chan_len, int64_t timeout_ms);

/* Read side. */
sl_rpc_t *sl_rpc_find(sl_reg_t *r, const char *request_id, size_t len);

/* Claim a pending request for `kind` on behalf of slot `claimer` (a
 * worker id, or SL_REG_MASTER_SLOT): true for exactly one caller. */
bool sl_rpc_claim(sl_rpc_t *q, uint32_t kind, int claimer);
/* Give back a claim that could not be completed (e.g. the response could
 * not be handed over): the request is pending again (true) - unless its
 * requester has gone meanwhile, then the entry is removed (false). */
bool sl_rpc_unclaim(sl_reg_t *r, sl_rpc_t *q);
/* The requester gives up on its request (it closed, or its worker died):
 * cancelled and removed (true), or - a responder holds the claim - marked
 * abandoned, for that responder to remove (false). */
bool sl_rpc_cancel(sl_reg_t *r, sl_rpc_t *q, int claimer);
/* The claimer removes it (retired through QSBR). */
void sl_rpc_remove(sl_reg_t *r, sl_rpc_t *q);

/* Whether the entry concerns dead worker `worker`: it made the request,
 * or holds its claim.  Read side. */
bool sl_rpc_held_by(const sl_rpc_t *q, int worker);
/* Master, after worker `worker` died, for an entry sl_rpc_held_by: a
 * request it made is cancelled and removed (nobody to tell; or abandoned to
 * the live responder holding its claim, sl_rpc_cancel); a claim it
 * held (a response it may or may not have handed over) is taken over and
 * the entry removed, so the requester's timer settles it with
 * rpc-timeout unless the response arrives first.  Returns 1 when it
 * removed the entry. */
int sl_rpc_cleanup_one(sl_reg_t *r, sl_rpc_t *q, int worker);

/* Expire and remove every pending request whose deadline is before
 * now_ms, claimed by slot `claimer`; returns how many (a safety net; the
 * requester's timer normally does it).  Reader side: caller online. */
size_t sl_rpc_expire(sl_reg_t *r, int64_t now_ms, int claimer);

/* Count the requests created before `before_ms` in buckets [from, from +
 * max_buckets) into *old; returns the next bucket (the table's bucket
 * count: done).  The master's sweep, a slice per tick, so that /health and
 * /stats read a figure instead of walking the table. */
uint32_t sl_rpc_count_old(sl_reg_t *r, uint32_t from, uint32_t max_buckets, int64_t before_ms,
                          uint64_t *old);

/* Pending requests, and those older than `old_ms` (walks the table: tests
 * and tools; the server reads the sweep's figure). */
void sl_rpc_counts(sl_reg_t *r, int64_t now_ms, int64_t old_ms, uint64_t *pending,
                   uint64_t *old);

#endif
