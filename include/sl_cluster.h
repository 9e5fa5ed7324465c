/*
 * sl_cluster.h - a worker's side of the cluster (--redis): handing requests
 * to the broker and getting its answers, each answered exactly once.
 *
 * A request is queued for the broker (sl_brq.h) with a tag and a deadline;
 * the worker keeps a local record (tag -> callback) until the broker's
 * result arrives in its inbox, or the deadline passes, or the broker dies
 * (the master bumps sl_shm->broker.gen): then the callback gets
 * SL_BR_UNAVAILABLE.  A record never outlives its connection's interest:
 * when the connection closes first the callback still runs, with c NULL,
 * so it can release what it holds.
 */
#ifndef SL_CLUSTER_H
#define SL_CLUSTER_H

#include "sl_brq.h"
#include "sl_conn.h"

#include <jansson.h>

/* --redis was given: the one test the hot paths make. */
extern bool sl_cluster;

/* c: the connection (NULL when it closed meanwhile); result: the broker's
 * document (borrowed; NULL when none). */
typedef void (*sl_cluster_fn)(sl_conn_t *c, void *arg, uint32_t status, json_t *result);

/* Queue a request of `kind` for connection c (may be NULL: a request of
 * the server itself).  SL_OK: fn(arg) will be called exactly once.
 * Otherwise an SL_BR_* status (the queue is full: SL_BR_OVERLOADED, no
 * broker: SL_BR_UNAVAILABLE) and fn is not called. */
int sl_cluster_submit(int kind, sl_conn_t *c, uint32_t flags, const void *payload, size_t len,
                      sl_cluster_fn fn, void *arg);

/* A request nobody waits for (a local count changed). */
void sl_cluster_notify(int kind, const void *payload, size_t len);

/* The master, after a dead worker's cleanup removed subscriptions: the
 * broker rewrites this node's presence entries in Redis from the registry
 * (PRES_SYNC), so the dead worker's clients' entries go, a leave published
 * for each.  Lock-free: a counter and a wake-up. */
void sl_cluster_presence_changed(void);

/* An SL_INBOX_BROKER_RESULT entry arrived. */
void sl_cluster_result(const sl_inbox_entry_t *e);

/* Deadlines and the broker's deaths; called every tick and turn. */
void sl_cluster_tick(void);

/* The peer of c left while c waits for a history (sl_conn_handlers_t
 * peer_gone): that request is cancelled if it still waits for the link's
 * page budget (the answer then says broker-unavailable). */
void sl_cluster_peer_gone(sl_conn_t *c);

/* Connection c is being freed: its records keep running without it (its
 * history requests still waiting are cancelled). */
void sl_cluster_conn_closed(sl_conn_t *c);

/* The node an id (conn-…/req-… ".<node>") names; NULL when it has none
 * or it is this node. */
const char *sl_cluster_remote_node(const char *id, size_t len);

/* A page of the latest cluster snapshot's channels (id -> figures), from
 * index `cursor`, at most `limit` of those `keep` accepts (NULL: all);
 * *next gets the cursor of the next page, 0 after the last.  Read side:
 * the caller is inside its loop turn. */
json_t *sl_cluster_channels_page(uint32_t cursor, uint32_t limit,
                                 bool (*keep)(const char *id, size_t len, void *arg), void *arg,
                                 uint32_t *next);

/* The `max` busiest channels of the snapshot into `out` (id -> figures);
 * returns how many more there are. */
uint64_t sl_cluster_top_channels(json_t *out, uint32_t max);

/* The live nodes of the snapshot (a new reference, an array). */
json_t *sl_cluster_nodes(void);

/* /stats "cluster": this node, the broker and its Redis links. */
json_t *sl_cluster_stats(void);

/* /health: false with the reason when the cluster link is not usable. */
bool sl_cluster_healthy(char *why, size_t n);

#endif
