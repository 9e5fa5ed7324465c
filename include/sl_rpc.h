/*
 * sl_rpc.h - RPC correlations in the shared registry.
 *
 * A correlation (request-id -> requester's worker, slot and conn number,
 * created-at, deadline, state) lives in the rpcs table from the moment a
 * request is accepted until exactly one party claims it: the first
 * response (state ANSWERED), the requester's timer (EXPIRED), or a cleanup
 * (requester gone, worker dead: CANCELLED).  The claim is one atomic
 * compare-and-swap on the state, so two responders on different workers
 * answering at the same instant cannot both win; the claimer then removes
 * the entry from the table.
 *
 * Deadlines are enforced by a timer in the requester's worker (one per
 * request), not by scanning the table.
 */
#ifndef SL_RPC_H
#define SL_RPC_H

#include "sl_reg.h"

#define SL_RPC_ID_MAX 48

enum { SL_RPC_PENDING = 0, SL_RPC_ANSWERED = 1, SL_RPC_EXPIRED = 2, SL_RPC_CANCELLED = 3 };

typedef struct {
    sl_table_node_t node; /* first: retired through QSBR */
    uint64_t no;          /* request number (the n of req-<ms>-<n>) */
    uint32_t state;       /* atomic; see above */
    int32_t worker;       /* the requester's */
    uint32_t slot;
    uint64_t conn_no;
    int64_t created_at, deadline; /* wall ms */
    char request_id[SL_RPC_ID_MAX];
    char requester[SL_CONN_ID_MAX];
    char channel_id[129];
} sl_rpc_t;

/* Register a pending request; NULL when shared memory is exhausted. */
sl_rpc_t *sl_rpc_create(sl_reg_t *r, const char *requester, int worker, uint32_t slot,
                        uint64_t conn_no, const char *channel_id, size_t chan_len,
                        int64_t timeout_ms);

/* Read side. */
sl_rpc_t *sl_rpc_find(sl_reg_t *r, const char *request_id, size_t len);

/* Claim a pending request for `state`: true for exactly one caller. */
bool sl_rpc_claim(sl_rpc_t *q, uint32_t state);
/* Give back a claim that could not be completed (e.g. the response could
 * not be handed over): the request is pending again. */
void sl_rpc_unclaim(sl_rpc_t *q);
/* The claimer removes it (retired through QSBR). */
void sl_rpc_remove(sl_reg_t *r, sl_rpc_t *q);

/* Master, after a worker died: cancel and remove every request it made.
 * Returns how many. */
size_t sl_rpc_worker_cleanup(sl_reg_t *r, int worker);

/* Cancel and remove every pending request whose deadline passed; returns
 * how many (a safety net; the requester's timer normally does it). */
size_t sl_rpc_expire(sl_reg_t *r, int64_t now_ms);

/* Pending requests, and those older than `old_ms`. */
void sl_rpc_counts(sl_reg_t *r, int64_t now_ms, int64_t old_ms, uint64_t *pending,
                   uint64_t *old);

#endif
