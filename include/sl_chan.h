/*
 * sl_chan.h - channels and subscriptions in the shared registry, and
 * publishing across workers.
 *
 * A channel (sl_chan_t) lives in the channels table.  Its mutable state -
 * next seq, subscriber counts per worker, the retention ring - is guarded
 * by the channel's own robust lock; counters others read without the lock
 * are updated with atomic stores.  A subscription (sl_sub_t, key
 * "<channel-id>\n<conn-id>": '\n' cannot occur in either) records which
 * connection on which worker listens to which channel.
 *
 * Publishing: the publisher holds the channel lock while it assigns the
 * seq, stores the encoded message in the retention ring and puts one
 * reference into the inbox of every worker that has subscribers.  Holding
 * the lock across the hand-off is what makes every worker receive a
 * channel's messages in seq order even with concurrent publishers on
 * different workers.  If any target inbox is full, nothing is handed off,
 * the seq is not consumed and the publisher is told "overloaded".
 *
 * Messages (sl_chan_msg_t) are encoded once, in shared memory, as complete
 * WebSocket text frames; they are reference counted (retention ring: one
 * reference; each inbox entry: one) and freed when the last goes.
 */
#ifndef SL_CHAN_H
#define SL_CHAN_H

#include "sl_inbox.h"
#include "sl_reg.h"

#define SL_CHAN_ID_MAX 128
#define SL_CHAN_MAX_WORKERS 64

typedef struct {
    int64_t max_subscribers;
    int64_t message_retention;
    int64_t rpc_timeout_ms;
    bool telemetry_enabled;
} sl_chan_config_t;

typedef struct sl_chan_msg {
    uint32_t refs; /* atomic */
    uint32_t len;  /* frame bytes */
    uint64_t seq;
    uint64_t chan_hash;
    uint32_t idlen;
    uint32_t payload_off; /* where the JSON starts in frame */
    int64_t published_us; /* monotonic us the publish was accepted (0: not a publish) */
    char id[SL_CHAN_ID_MAX + 1];
    uint8_t frame[];
} sl_chan_msg_t;

typedef struct sl_chan {
    sl_table_node_t node; /* first: retired through QSBR */
    char id[SL_CHAN_ID_MAX + 1];
    char epoch[16];
    sl_chan_config_t config;
    int64_t created_at;
    sl_lock_t lock;
    uint64_t next_seq;      /* under lock; the next seq to assign */
    uint64_t message_count; /* atomic */
    uint32_t subscribers;   /* under lock; atomic for readers */
    uint32_t worker_subs[SL_CHAN_MAX_WORKERS]; /* under lock */
    uint32_t ring_start, ring_count;           /* under lock */
    sl_chan_msg_t **ring; /* message_retention entries, oldest at ring_start */
    struct sl_sub *subs;  /* every subscription of the channel, under lock */
    bool deleted;         /* under lock: deleted, only still reachable by stale readers */
} sl_chan_t;

typedef struct sl_sub {
    sl_table_node_t node;
    struct sl_sub *prev, *next; /* the channel's subscriber list, under its lock */
    int32_t worker;
    uint32_t slot;
    uint32_t chan_len; /* key = id "\n" conn-id */
    char key[SL_CHAN_ID_MAX + 1 + SL_CONN_ID_MAX];
} sl_sub_t;

enum {
    SL_CHAN_CREATED = 0,
    SL_CHAN_EXISTS = 1,
    SL_CHAN_ALREADY = 2,       /* subscribe: already subscribed */
    SL_CHAN_FULL = 3,          /* subscribe: max-subscribers reached */
    SL_CHAN_NOT_SUBSCRIBED = 4,
    SL_CHAN_OVERLOADED = 5,    /* publish: an inbox is full or memory is */
    SL_CHAN_NO_MEMORY = 6,     /* shared memory exhausted */
};

/* Set up the channel tables and one inbox per worker (from the arena). */
int sl_chan_init(sl_reg_t *r, uint32_t nworkers);

/* Channel ids: 1..128 bytes of valid UTF-8 without control characters. */
bool sl_chan_id_valid(const char *id, size_t len);

sl_chan_t *sl_chan_find(sl_reg_t *r, const char *id, size_t len);
/* Create, or find the existing one (SL_CHAN_EXISTS) - *out set either way;
 * SL_CHAN_NO_MEMORY when exhausted. */
int sl_chan_create(sl_reg_t *r, const char *id, size_t len, const sl_chan_config_t *cfg,
                   sl_chan_t **out);

/* Subscribe / unsubscribe a connection (its owner worker calls these).
 * *count gets the subscriber count after the call. */
int sl_chan_subscribe(sl_reg_t *r, sl_chan_t *c, const char *conn_id, int worker, uint32_t slot,
                      uint32_t *count);
int sl_chan_unsubscribe(sl_reg_t *r, sl_chan_t *c, const char *conn_id, uint32_t *count);

/* Whether conn_id is subscribed to this incarnation of the channel (a
 * deleted channel has no subscribers).  Reader side: caller online. */
bool sl_chan_is_subscriber(sl_reg_t *r, const sl_chan_t *c, const char *conn_id);

typedef struct {
    const char *data_json; /* the "data" value, compact JSON */
    size_t data_len;
    const char *sender_conn_id; /* NULL: the server (admin API) */
    bool exclude_sender;
    uint64_t sender_conn_no; /* the n of conn-<ms>-<n>: unique, never reused */
    int64_t published_at;
    int64_t published_us; /* monotonic us (for the delivery-latency histogram) */
} sl_chan_pub_t;

typedef struct {
    uint64_t seq;
    uint64_t message_id;
    uint32_t delivered_to;
    uint64_t woken;       /* bitmask of workers whose inbox got an entry */
} sl_chan_pub_result_t;

/* SL_OK, SL_CHAN_OVERLOADED or SL_CHAN_NO_MEMORY. */
int sl_chan_publish(sl_reg_t *r, sl_chan_t *c, const sl_chan_pub_t *p, sl_chan_pub_result_t *out);

/* Hand an already encoded frame (not a channel-message: no seq, not
 * retained) to every worker with subscribers, except that the connection
 * `exclude_conn` (0: none) is skipped at delivery; under the channel lock,
 * so it is ordered with publishes.  `fn` is called for every subscriber
 * other than the excluded one (conn-id), before the hand-off; *recipients
 * gets their number.  SL_OK, SL_CHAN_OVERLOADED or SL_CHAN_NO_MEMORY. */
int sl_chan_send(sl_reg_t *r, sl_chan_t *c, const uint8_t *frame, size_t len,
                 const char *exclude_conn_id, uint64_t exclude_conn,
                 void (*fn)(const char *conn_id, void *arg), void *arg, uint32_t *recipients,
                 uint64_t *woken);

/* Hand a frame to one connection on `worker` (slot + conn number), e.g.
 * an RPC response; kind SL_INBOX_DIRECT, or SL_INBOX_CLOSE (frame unused,
 * may be NULL).  SL_OK, SL_CHAN_OVERLOADED or SL_CHAN_NO_MEMORY. */
int sl_chan_send_direct(sl_reg_t *r, int worker, uint32_t slot, uint64_t conn_no, uint64_t tag,
                        const uint8_t *frame, size_t len);
int sl_chan_send_kind(sl_reg_t *r, int kind, int worker, uint32_t slot, uint64_t conn_no,
                      const uint8_t *frame, size_t len);

/* Hand a frame to every worker in `workers` (bitmask) as a BROADCAST:
 * all or none.  SL_OK, SL_CHAN_OVERLOADED or SL_CHAN_NO_MEMORY. */
int sl_chan_broadcast(sl_reg_t *r, uint64_t workers, const uint8_t *frame, size_t len);

/* Delete a channel: remove it and every subscription, drop its retained
 * messages, and hand `frame` (the channel-deleted notice) to every worker
 * with subscribers, after everything published before.  *unsubscribed gets
 * the number of subscriptions removed, *woken the workers to wake.
 * SL_OK, SL_CHAN_NOT_SUBSCRIBED (no such channel) or SL_CHAN_OVERLOADED. */
int sl_chan_delete(sl_reg_t *r, const char *id, size_t len, const uint8_t *frame, size_t flen,
                   uint32_t *unsubscribed, uint64_t *woken);

/* Call fn for every subscriber's conn-id (under the channel lock). */
void sl_chan_subscribers(sl_chan_t *c, void (*fn)(const char *conn_id, void *arg), void *arg);

/* Visit the retained messages with seq > since (oldest first) under the
 * channel lock; fn gets the message's JSON text.  Returns the seq of the
 * oldest retained message (0 when none); *last gets the last seq assigned
 * (0 when nothing was ever published). */
uint64_t sl_chan_retained(sl_chan_t *c, uint64_t since,
                          void (*fn)(const char *json, size_t len, void *arg), void *arg,
                          uint64_t *last);

/* --redis (the broker): hand a channel-message whose seq Redis assigned
 * (json: the complete message text) to every local worker with
 * subscribers, and retain it in the local ring.  The ring is kept
 * contiguous: a message of another epoch, or one that does not follow the
 * ring's last seq, empties it first (c->epoch becomes `epoch`).  origin /
 * exclude_conn: skip connection number exclude_conn at delivery when
 * origin is true (the sender's node).  SL_OK, SL_CHAN_OVERLOADED (nothing
 * handed off, nothing retained: retry later), SL_CHAN_NO_MEMORY or
 * SL_CHAN_NOT_SUBSCRIBED (deleted).  *woken gets the workers to wake. */
int sl_chan_deliver(sl_reg_t *r, sl_chan_t *c, const char *epoch, uint64_t seq, const char *json,
                    size_t len, uint64_t exclude_conn, uint64_t *woken);

/* --redis: the channel lost messages this node cannot recover for its
 * subscribers (epoch changed, history gone): empty the local ring and hand
 * every worker with subscribers an SL_INBOX_CHANNEL_RESET, so they close
 * those subscribers (who reconnect and recover with since-seq, or learn
 * recovered:false).  SL_OK or SL_CHAN_OVERLOADED; *woken as above. */
int sl_chan_reset(sl_reg_t *r, sl_chan_t *c, const char *epoch, uint64_t *woken);

/* --redis: take the cluster's settings (from Redis) for max-subscribers,
 * rpc-timeout-ms and telemetry (the local ring keeps its size). */
void sl_chan_set_config(sl_chan_t *c, const sl_chan_config_t *cfg);

/* The last seq this node holds for c (the end of its local ring, or what
 * it last published); 0 when none. */
uint64_t sl_chan_last_seq(sl_chan_t *c);

/* Drop a reference to a message (frees it with the last). */
void sl_chan_msg_unref(sl_reg_t *r, sl_chan_msg_t *m);

/* Master, after a worker died: remove its subscriptions and fix the
 * channels' counts.  Returns how many were removed. */
size_t sl_chan_worker_cleanup(sl_reg_t *r, int worker);

/* Figures. */
typedef struct {
    uint64_t channels, subscriptions;
} sl_chan_totals_t;
void sl_chan_totals(sl_reg_t *r, sl_chan_totals_t *t);

#endif
