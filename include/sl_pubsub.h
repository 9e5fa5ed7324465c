/*
 * sl_pubsub.h - the channel part of the JSON protocol on a worker:
 * subscribe, unsubscribe, publish, list-channels, get-subscriptions,
 * presence, presence-stats, history, and
 * delivering what arrives in the worker's inbox to local subscribers.
 */
#ifndef SL_PUBSUB_H
#define SL_PUBSUB_H

#include "sl_chan.h"
#include "sl_conn.h"

#include <jansson.h>

void sl_pubsub_subscribe(sl_conn_t *c, json_t *msg);
void sl_pubsub_unsubscribe(sl_conn_t *c, json_t *msg);
void sl_pubsub_publish(sl_conn_t *c, json_t *msg);
void sl_pubsub_list_channels(sl_conn_t *c, json_t *msg);
void sl_pubsub_get_subscriptions(sl_conn_t *c, json_t *msg);
void sl_pubsub_presence(sl_conn_t *c, json_t *msg);
void sl_pubsub_presence_stats(sl_conn_t *c, json_t *msg);
void sl_pubsub_history(sl_conn_t *c, json_t *msg);

/* presence: at most this many connections per page (next-cursor for the
 * rest); presence-stats counts distinct users over at most this many
 * subscribers (num-users null beyond); history: at most this many
 * publications per page (and about a quarter of --max-outbound-bytes). */
#define SL_PRESENCE_PAGE_MAX 1000
#define SL_PRESENCE_WALK_MAX 100000
/* --redis: the entries a presence-stats script in Redis walks for
 * num-users at most (num-users null past it): Redis runs scripts one at a
 * time for every node, and each entry walked is decoded (review rj17 H2:
 * ~1 s at 100,000). */
#define SL_PRESENCE_CLUSTER_WALK_MAX 10000
/* A request's cost against its connection's turn budget (sl_conn_charge):
 * one message more per this many subscriber nodes walked, and per this
 * many history messages copied - a full presence-stats walk (100,000) uses
 * the whole turn, so 1,000 of them pipelined take 1,000 turns. */
#ifdef SL_CRASHPOINTS
/* The crash build (sl_crash.h) takes the unit from the environment
 * (SL_PRESENCE_WALK_UNIT=n, else 1024), so a test can make the presence
 * walks' charges visible with a channel of a few dozen subscribers
 * (review rm15 N3: 2 x 1,024 connections are too many for a test). */
uint32_t sl_presence_walk_unit(void);
#define SL_PRESENCE_WALK_UNIT sl_presence_walk_unit()
#else
#define SL_PRESENCE_WALK_UNIT 1024
#endif
/* presence: the subscriber nodes one request walks at most, skipped ones
 * included (review rf15 F5): SL_PRESENCE_WALK_MAX; the crash build takes
 * it from the environment (SL_PRESENCE_PAGE_WALK=n) so a test reaches it. */
#ifdef SL_CRASHPOINTS
uint32_t sl_presence_page_walk(void);
#define SL_PRESENCE_PAGE_WALK sl_presence_page_walk()
#else
#define SL_PRESENCE_PAGE_WALK SL_PRESENCE_WALK_MAX
#endif
/* A worker's inbox drain stops for the turn after queuing this many frames
 * (or SL_INBOX_CAP entries); the rest waits for the next turn. */
#define SL_DRAIN_FRAMES_MAX 262144
#define SL_HISTORY_CHARGE_UNIT 16
#define SL_HISTORY_LIMIT_MAX 1000

/* A channel's settings as JSON (list-channels, /channels, the admin API). */
json_t *sl_pubsub_config_json(const sl_chan_config_t *cfg);

/* Is the connection subscribed to channel id[0..len)? */
bool sl_pubsub_subscribed(sl_conn_t *c, const char *id, size_t len);

/* The connection's token was refreshed: leave every channel the new claims
 * no longer let it subscribe to, telling it {"type":"unsubscribed",
 * "reason":"permission-revoked"} for each (counted as permission-revoked). */
void sl_pubsub_recheck(sl_conn_t *c);

/* The connection is closing: leave every channel. */
void sl_pubsub_closed(sl_conn_t *c);

/* Fan out everything waiting in this worker's inbox; returns how many
 * inbox entries were handled.  A message for one connection that carries
 * a tag (an RPC response) is delivered only if `settle` (installed by the
 * worker: sl_call_answered, the layer above) says its request is still
 * waiting; NULL delivers every one. */
size_t sl_pubsub_drain(void);
extern bool (*sl_pubsub_settle)(uint64_t tag);
/* --redis: an rpc-request's JSON text delivered to subscribers here, with
 * its channel (installed by the worker: sl_call_remote_seen, the layer
 * above; NULL: not told). */
extern void (*sl_pubsub_rpc_seen)(const char *json, size_t len, const char *chan,
                                  size_t chan_len);

/* Wake the workers whose inboxes this turn's publishes filled (one eventfd
 * write per worker per turn). */
void sl_pubsub_wake(void);
/* Note workers to wake at the end of this turn (a bit per worker). */
void sl_pubsub_wake_later(uint64_t workers);

/* Listings are paged so that one request costs one worker turn little:
 * at most this many channels (or subscriptions, connections) per page. */
#define SL_CHANNELS_PAGE_MAX 1000

/* The channel's retained messages with seq > since, oldest first, as a
 * JSON array of at most `budget` bytes of message text: the newest that
 * fit (a reply is bounded, sl_conn_reply_max).  *omitted gets how many
 * older ones were left out; *last and the return value as
 * sl_chan_retained's. */
struct sl_chan;
json_t *sl_pubsub_retained(struct sl_chan *ch, uint64_t since, size_t budget, uint64_t *omitted,
                           uint64_t *last, uint64_t *oldest);

/* --redis: the same bound on history that came from Redis: the oldest
 * messages of `a` are removed until its messages' text fits `budget`
 * bytes; returns how many were removed. */
uint64_t sl_pubsub_cut_history(json_t *a, size_t budget);

/* {"<id>":{"config":..,"created-at":..,"message-count":..,"subscriber-count":..}}
 * for about `limit` channels (capped at SL_CHANNELS_PAGE_MAX) from
 * `cursor` (0: the first page); *next gets the next page's cursor, 0 after
 * the last.  identities false: user-limited channels (their ids name
 * users) are left out. */
json_t *sl_pubsub_channels_page(uint32_t cursor, uint32_t limit, uint32_t *next,
                                bool identities);

/* --redis: publish data_txt (compact JSON) on channel id through the
 * broker; c is the publishing connection (an HTTP connection: the admin
 * API, sender null).  mid receives the message-id.  SL_OK (fn(arg) is
 * called with the broker's answer) or an SL_BR_* status. */
#include "sl_cluster.h"
int sl_pubsub_cluster_publish(sl_conn_t *c, const char *id, size_t len, const char *data_txt,
                              size_t dl, bool exclude, sl_cluster_fn fn, void *arg,
                              char mid[48]);

/* Per-worker eventfds, created by the master before forking. */
extern int sl_wake_fds[];

/* Observe the delivery latency of the channel messages queued this turn
 * (the worker calls it after the turn's writes). */
void sl_pubsub_latency_flush(void);

/* Fan-out trace, a measuring aid for benchmarks (docs/benchmarks.md), off
 * unless the environment variable SENTE_FANOUT_TRACE names a file prefix:
 * worker i then appends one line per event to PREFIX.i, each written once
 * the turn's writes are done (one write() per such turn):
 *   pub seq=S arrival=T accepted=T wake=T     the publishing worker
 *   del seq=S published=T woken=T drain=T queued=T done=T cpu=D n=N
 *                                             every worker
 * T: monotonic microseconds (CLOCK_MONOTONIC, as sente-bench's send
 * stamps); arrival: the read that brought the publish frame; accepted: the
 * publish accepted (published-us of the message); wake: the start of this
 * turn's first eventfd write to another worker (0: none); woken: when a
 * wake-up reached this worker in the turn (0: not woken - the publisher's
 * own worker, or one that found the message at the end of a turn it had
 * for other reasons, before the wake-up came); drain: this worker began
 * taking the turn's messages from its inbox; queued: the message queued on
 * this worker's N subscribers; done: the end of the flush (last write) of the turn that
 * wrote it; cpu: microseconds this worker ran on a CPU from drain to done
 * (CLOCK_THREAD_CPUTIME_ID: done - drain - cpu is time it waited for one).  Off, it costs a test of
 * sl_conns.trace_fd per read and per message. */
void sl_pubsub_trace_open(int worker);
void sl_pubsub_trace_close(void);

#endif
