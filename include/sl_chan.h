/*
 * sl_chan.h - channels and subscriptions in the shared registry, and
 * publishing across workers.
 *
 * A channel (sl_chan_t) lives in the channels table.  Its mutable state -
 * next seq, the subscriber list and counts per worker, the retention ring -
 * is guarded by the channel's own robust lock; counters others read without
 * the lock are updated with atomic stores.  A subscription (sl_sub_t, key
 * "<channel-id>\n<conn-id>": '\n' cannot occur in either) records which
 * connection on which worker listens to which channel; it is on the
 * channel's list and in the subscriptions table.
 *
 * Every update that takes the channel lock and makes more than one store
 * first records its intent in the channel (sl_chan_intent_t); the lock's
 * recovery completes it, or undoes it if it had not committed (see
 * channels.c and shm/README.md for each case).
 *
 * Publishing: the publisher holds the channel lock while it assigns the
 * seq, puts one reference into the inbox of every worker that has
 * subscribers and stores the message in the retention ring.  Holding the
 * lock across the hand-off is what makes every worker receive a channel's
 * messages in seq order even with concurrent publishers on different
 * workers.  An inbox that is full is skipped (its worker notes the channel
 * as missed and closes its subscribers of it with 1013, see sl_inbox.h), so
 * one slow or stopped worker costs only its own clients; only when every
 * target inbox is full is the publish refused ("overloaded", no seq taken).
 *
 * Presence: the subscriber list is also read without the lock (RCU read
 * side: sl_chan_members, sl_chan_presence_counts).  Writers publish a node
 * on the list with one release store of the pointer to it (its fields,
 * next included, written before), unlink with one store that leaves the
 * unlinked node's own next intact, and retire a node only after its unlink
 * (through the subscriptions table, so it is freed after a grace period):
 * a reader walking the list sees every node that stayed for the whole walk
 * exactly once, and never a freed one.  Nodes are only ever added at the
 * head, so the list is in descending subscribe order (sub_no): the cursor
 * of a presence page.  A subscription carries its connection's user and
 * token info (copied in when it is made), so presence reads no other
 * object per entry.
 *
 * Join and leave (channel option join_leave): the subscribe / unsubscribe
 * itself hands a join / leave frame (no seq, not retained) to the other
 * subscribers' workers through the same inboxes, under the channel lock,
 * so it is ordered with the channel's messages on every worker.  The
 * hand-off is the update's commit: a subscribe killed before it is undone,
 * after it completed; so every subscriber sees a connection's join and
 * leave both or neither.  When every target inbox is full a join is
 * refused (SL_CHAN_OVERLOADED, like a publish); a leave is never refused:
 * the full inboxes are noted as missed (their subscribers are closed 1013).
 *
 * Retention TTL (history_ttl_ms): retained messages older than that are
 * dropped - and their memory freed - by whoever next takes the channel
 * lock to publish or read it, and by the master's reaper (sl_chan_expire),
 * so an idle channel's history does not hold memory for ever.
 *
 * Messages (sl_chan_msg_t) are encoded once, in shared memory, as complete
 * WebSocket text frames; they are reference counted (retention ring: one
 * reference; each inbox entry: one) and freed when the last goes.  Nobody
 * reads a message after handing away the references it does not own.
 */
#ifndef SL_CHAN_H
#define SL_CHAN_H

#include "sl_inbox.h"
#include "sl_reg.h"

#define SL_CHAN_ID_MAX 128
#define SL_CHAN_MAX_WORKERS 64
#define SL_CHAN_USER_MAX 128  /* bytes of a subscriber's user (a token's sub) */
#define SL_CHAN_INFO_MAX 1024 /* bytes of its info (compact JSON) */

typedef struct {
    int64_t max_subscribers;
    int64_t message_retention;
    int64_t rpc_timeout_ms;
    int64_t history_ttl_ms; /* retained messages older than this are dropped (0: never) */
    bool telemetry_enabled;
    bool lingers;    /* auto-created: removed once empty for --channel-linger-ms */
    bool join_leave; /* subscribers are told of others' subscribes and unsubscribes */
} sl_chan_config_t;

typedef struct sl_chan_msg {
    uint32_t refs; /* atomic */
    uint32_t len;  /* frame bytes */
    uint64_t seq;
    uint64_t chan_hash;
    uint32_t idlen;
    uint32_t payload_off; /* where the JSON starts in frame */
    int64_t published_us; /* monotonic us the publish was accepted (0: not a publish) */
    int64_t created_us;   /* monotonic us it was encoded (retention TTL) */
    uint64_t horizon;     /* join / leave: only subscriptions with sub_no <= horizon get it
                           * (those made before its hand-off); 0: every subscriber */
    char id[SL_CHAN_ID_MAX + 1];
    uint8_t frame[];
} sl_chan_msg_t;

enum {
    SL_CI_NONE = 0,
    SL_CI_SUB,
    SL_CI_UNSUB,
    SL_CI_PUB,
    SL_CI_SEND,
    SL_CI_DEL,
    SL_CI_BCAST,
    SL_CI_EXPIRE,
    SL_CI_DLV,   /* --redis delivery */
    SL_CI_RESET, /* --redis reset */
};

typedef struct sl_chan {
    sl_table_node_t node; /* first: retired through QSBR */
    sl_reg_t *reg;        /* for the lock's recovery */
    char id[SL_CHAN_ID_MAX + 1];
    char epoch[16];
    sl_chan_config_t config;
    uint64_t serial;      /* this incarnation: unique for the server's life, never 0 */
    int64_t created_at;   /* wall ms */
    int64_t empty_since;  /* monotonic ms when subscribers last became 0 (atomic) */
    sl_lock_t lock;
    sl_chan_intent_t intent; /* under lock */
    uint64_t next_seq;    /* under lock, atomic for readers; message-count = next_seq - 1 */
    uint32_t subscribers; /* under lock; atomic for readers */
    uint64_t sub_seq;     /* under lock: the last sl_sub_t.sub_no given here */
    bool deleted;         /* under lock: deleted, only still reachable by stale readers */
    /* --redis, under lock: epoch and next_seq are the cluster's - taken
     * from a delivery or a reset with an epoch (take_position, which the
     * lock's recovery redoes from the intent), never set back.  False: the
     * channel's own epoch from its creation, which no subscription here
     * has been positioned from yet (review rh17 M1). */
    bool cluster_pos;
    /* --redis, written by the broker only: the highest sub_no of a
     * subscription here whose JOIN a broker answered successfully, stored
     * before the answer is sent (0: none).  A subscription with sub_no <=
     * served_upto was served from the channel's position, whether or not
     * its worker has read the answer yet (review rn17 M1); a respawned
     * broker reads the exact value (review rp17 M1).  One store of a value
     * that only grows (sub_no is unique and increasing for the registry's
     * life; a record deleted and made again starts at 0): any value seen
     * is a valid state, so it needs no intent and no recovery.  A
     * high-water mark, not a set: a subscription still waiting for its
     * answer whose sub_no is below an answered one counts as served too,
     * so a kept position may be kept for it (the safe side: at worst a
     * catch-up that closes it 1012, counted - never a silent loss;
     * review rq17 L1). */
    uint64_t served_upto;
    uint32_t worker_subs[SL_CHAN_MAX_WORKERS]; /* under lock */
    struct sl_sub *subs;  /* every subscription of the channel, under lock; RCU for readers */
    /* Retention ring: positions [ring_lo, ring_hi) are retained (slot =
     * position % message_retention), oldest first; under lock. */
    uint64_t ring_lo, ring_hi;
    sl_chan_msg_t *ring[]; /* message_retention slots, in the same object */
} sl_chan_t;

#define SL_SUB_KEY_MAX (SL_CHAN_ID_MAX + 1 + SL_CONN_ID_MAX)

/* Immutable once published, except prev/next (the list, under the lock;
 * next also read lock-free).  Variable size: the key, then the user and
 * the info, each NUL-terminated, in the same object. */
typedef struct sl_sub {
    sl_table_node_t node;
    struct sl_sub *prev, *next; /* the channel's subscriber list, under its lock */
    int32_t worker;
    uint32_t slot;
    uint64_t sub_no;    /* from the registry's next_sub_no when it was made: the list descends */
    uint16_t chan_len;  /* key = id "\n" conn-id (id: at most SL_CHAN_ID_MAX) */
    /* 1 while a --redis subscribe waits for the cluster's JOIN (its
     * subscription-result not sent yet): the broker's presence rewrite
     * leaves it out (review ro17 L2).  Set before the subscription is
     * linked; cleared once by its worker (sl_chan_sub_confirm), a single
     * store read by the broker - either value is a valid state (a worker
     * killed before it clears it has its subscriptions removed anyway). */
    uint8_t join_pending;
    uint8_t spare;
    uint16_t user_len;  /* 0: anonymous */
    uint16_t info_len;  /* 0: no info */
    /* key NUL [user NUL] [info NUL], allocated to fit: 88 B (the offset
     * of key) + klen + 1 (+ user and info + 1 each), so an anonymous
     * subscription's key up to 39 bytes takes the arena's 128 B class,
     * longer ones 256 B (test_sub_sizes_in_the_design_note). */
    char key[];
} sl_sub_t;
#define SL_SUB_KEY_MAX (SL_CHAN_ID_MAX + 1 + SL_CONN_ID_MAX)

static inline const char *sl_sub_conn_id(const sl_sub_t *s)
{
    return s->key + s->chan_len + 1;
}
/* The user (a token's sub) or NULL; the info (compact JSON) or NULL. */
static inline const char *sl_sub_user(const sl_sub_t *s)
{
    return s->user_len ? s->key + s->node.klen + 1 : NULL;
}
static inline const char *sl_sub_info(const sl_sub_t *s)
{
    return s->info_len ? s->key + s->node.klen + 1 + (s->user_len ? s->user_len + 1u : 0u)
                       : NULL;
}

enum {
    SL_CHAN_CREATED = 0,
    SL_CHAN_EXISTS = 1,
    SL_CHAN_ALREADY = 2,       /* subscribe: already subscribed */
    SL_CHAN_FULL = 3,          /* subscribe: max-subscribers reached */
    SL_CHAN_NOT_SUBSCRIBED = 4, /* also: the channel was deleted meanwhile */
    SL_CHAN_OVERLOADED = 5,    /* publish: every target inbox is full */
    SL_CHAN_NO_MEMORY = 6,     /* shared memory exhausted */
    SL_CHAN_TOO_MANY = 7,      /* create: --max-channels reached */
};

/* Who subscribes (for presence and join / leave). */
typedef struct {
    uint64_t conn_no; /* the n of conn-<ms>-<n>: not told of its own join / leave (0: none) */
    const char *user; /* NULL: anonymous */
    const char *info; /* compact JSON (at most 1 KiB), NULL: none */
    bool join_pending; /* a --redis subscribe: unconfirmed until sl_chan_sub_confirm */
} sl_chan_who_t;

/* Channel ids: 1..128 bytes of valid UTF-8 without control characters. */
bool sl_chan_id_valid(const char *id, size_t len);

sl_chan_t *sl_chan_find(sl_reg_t *r, const char *id, size_t len);
/* Create, or find the existing one (SL_CHAN_EXISTS) - *out set either way;
 * SL_CHAN_NO_MEMORY when exhausted, SL_CHAN_TOO_MANY at --max-channels. */
int sl_chan_create(sl_reg_t *r, const char *id, size_t len, const sl_chan_config_t *cfg,
                   sl_chan_t **out);

/* Subscribe / unsubscribe a connection (its owner worker calls these;
 * `who` may be NULL: anonymous).  *count gets the subscriber count after
 * the call.  Subscribe returns SL_CHAN_NOT_SUBSCRIBED when the channel was
 * deleted since it was found (look it up again), SL_CHAN_OVERLOADED when
 * its join could go to no inbox (join_leave; nothing done).  With
 * join_leave the other subscribers are told (a leave: never refused);
 * *woken (may be NULL) gets the workers to wake for it.  *sub_no (may be
 * NULL) gets the new subscription's number: the worker delivers a join or
 * leave only to subscriptions numbered up to its horizon (sl_chan_msg_t). */
int sl_chan_subscribe(sl_reg_t *r, sl_chan_t *c, const char *conn_id, int worker, uint32_t slot,
                      const sl_chan_who_t *who, uint64_t *woken, uint32_t *count,
                      uint64_t *sub_no);
/* The same; *last (may be NULL) gets the channel's last seq at the moment
 * of the subscription: every message with a higher seq is handed to
 * `worker` for it - or noted there as missed (sl_inbox_note_t.seq). */
int sl_chan_subscribe_at(sl_reg_t *r, sl_chan_t *c, const char *conn_id, int worker,
                         uint32_t slot, const sl_chan_who_t *who, uint64_t *woken,
                         uint32_t *count, uint64_t *sub_no, uint64_t *last);
int sl_chan_unsubscribe(sl_reg_t *r, sl_chan_t *c, const char *conn_id, uint64_t conn_no,
                        uint64_t *woken, uint32_t *count);

/* Whether conn_id is subscribed to this incarnation of the channel (a
 * deleted channel has no subscribers).  Reader side: caller online. */
bool sl_chan_is_subscriber(sl_reg_t *r, const sl_chan_t *c, const char *conn_id);
/* conn_id's subscription of c, made with who->join_pending, is confirmed
 * (the cluster's JOIN answered: clears join_pending).  Its own worker,
 * inside its read-side section. */
void sl_chan_sub_confirm(sl_reg_t *r, const sl_chan_t *c, const char *conn_id);

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
    uint32_t delivered_to; /* subscribers on the workers that got it */
    uint64_t woken;        /* bitmask of workers whose inbox got an entry */
    uint64_t skipped;      /* bitmask of workers skipped (inbox full) */
} sl_chan_pub_result_t;

/* SL_OK, SL_CHAN_OVERLOADED, SL_CHAN_NO_MEMORY, or SL_CHAN_NOT_SUBSCRIBED
 * when the channel was deleted since it was found. */
int sl_chan_publish(sl_reg_t *r, sl_chan_t *c, const sl_chan_pub_t *p, sl_chan_pub_result_t *out);

/* Hand an already encoded frame (not a channel-message: no seq, not
 * retained) to every worker with subscribers, except that the connection
 * `exclude_conn` (0: none) is skipped at delivery; under the channel lock,
 * so it is ordered with publishes.  `fn` is called for every subscriber
 * it reaches other than the excluded one (conn-id), before the hand-off;
 * *recipients gets their number.  SL_OK, SL_CHAN_OVERLOADED or
 * SL_CHAN_NO_MEMORY. */
int sl_chan_send(sl_reg_t *r, sl_chan_t *c, const uint8_t *frame, size_t len,
                 const char *exclude_conn_id, uint64_t exclude_conn,
                 void (*fn)(const char *conn_id, void *arg), void *arg, uint32_t *recipients,
                 uint64_t *woken);

/* --redis: a join / leave that came through Redis (a frame, no seq, not
 * retained) to this node's subscribers of c - those subscribed now (its
 * horizon), the connection exclude_conn skipped - under the channel lock,
 * so in order with the deliveries; a full inbox gets a presence note (its
 * subscribers: presence-resync).  SL_OK, SL_CHAN_OVERLOADED (every target
 * full: nothing done, try again) or SL_CHAN_NO_MEMORY. */
int sl_chan_send_presence(sl_reg_t *r, sl_chan_t *c, const uint8_t *frame, size_t len,
                          uint64_t exclude_conn, uint64_t *woken);

/* Hand a frame to one connection on `worker` (slot + conn number), e.g.
 * an RPC response; kind SL_INBOX_DIRECT, or SL_INBOX_CLOSE (frame unused,
 * may be NULL).  SL_OK, SL_CHAN_OVERLOADED or SL_CHAN_NO_MEMORY. */
int sl_chan_send_direct(sl_reg_t *r, int worker, uint32_t slot, uint64_t conn_no, uint64_t tag,
                        const uint8_t *frame, size_t len);
int sl_chan_send_kind(sl_reg_t *r, int kind, int worker, uint32_t slot, uint64_t conn_no,
                      const uint8_t *frame, size_t len);

/* Hand a frame to every worker in `workers` (bitmask) as a BROADCAST,
 * skipping full inboxes; *reached gets the workers that got it.  SL_OK,
 * SL_CHAN_OVERLOADED (every inbox full) or SL_CHAN_NO_MEMORY. */
int sl_chan_broadcast(sl_reg_t *r, uint64_t workers, const uint8_t *frame, size_t len,
                      uint64_t *reached);

/* Delete a channel: remove it and every subscription, drop its retained
 * messages, and hand `frame` (the channel-deleted notice) to every worker
 * with subscribers, after everything published before.  *unsubscribed gets
 * the number of subscriptions removed, *woken the workers to wake.
 * SL_OK, SL_CHAN_NOT_SUBSCRIBED (no such channel), SL_CHAN_OVERLOADED or
 * SL_CHAN_NO_MEMORY. */
int sl_chan_delete(sl_reg_t *r, const char *id, size_t len, const uint8_t *frame, size_t flen,
                   uint32_t *unsubscribed, uint64_t *woken);

/* Call fn for every subscriber's conn-id (under the channel lock). */
void sl_chan_subscribers(sl_chan_t *c, void (*fn)(const char *conn_id, void *arg), void *arg);

/* Presence, lock-free (reader side: the caller is online and keeps what it
 * is given only until its next quiescent state).  fn gets each subscriber,
 * newest first, starting with the first whose sub_no is below `before`
 * (0: from the newest); it returns non-zero to stop.  A deleted channel
 * has none.  Returns the number of nodes walked (those skipped to reach
 * `before` included: what the walk cost). */
uint32_t sl_chan_members(const sl_chan_t *c, uint64_t before,
                         int (*fn)(const sl_sub_t *s, void *arg), void *arg);
/* The same, walking at most max_walk nodes (skipped ones included: review
 * rf15 F5); *cut (may be NULL) tells whether it stopped there with nodes
 * left to walk. */
uint32_t sl_chan_members_max(const sl_chan_t *c, uint64_t before, uint32_t max_walk, bool *cut,
                             int (*fn)(const sl_sub_t *s, void *arg), void *arg);
/* The same, resuming after the subscription of conn-id after_conn whose
 * sub_no is after_no (the last one a previous walk gave fn): found through
 * the subscriptions table, so the walk does not pass every newer node
 * again (*resumed true).  When that subscription is gone it walks from the
 * head with before = after_no, as sl_chan_members_max (*resumed false). */
uint32_t sl_chan_members_after(sl_reg_t *r, const sl_chan_t *c, const char *after_conn,
                               uint64_t after_no, uint32_t max_walk, bool *cut, bool *resumed,
                               int (*fn)(const sl_sub_t *s, void *arg), void *arg);

/* Connections and distinct users (anonymous ones are not users) among the
 * subscribers, lock-free.  Walks at most max_walk entries: returns false
 * (and *users unknown) when the channel has more, or out of memory; then
 * *clients is the number of entries walked (what it cost). */
bool sl_chan_presence_counts(const sl_chan_t *c, uint32_t max_walk, uint32_t *clients,
                             uint32_t *users);

/* Visit the retained messages with seq > since (oldest first) under the
 * channel lock (not taken on a channel with retention 0), after dropping
 * the expired ones (history_ttl_ms); fn gets the message's JSON text.
 * Returns the seq of the oldest retained message (0 when none); *last gets
 * the last seq assigned (0 when nothing was ever published), and epoch
 * (when not NULL, 16 bytes) the channel's epoch, read under the same lock
 * (retention 0: not written). */
uint64_t sl_chan_retained(sl_reg_t *r, sl_chan_t *c, uint64_t since,
                          void (*fn)(const char *json, size_t len, void *arg), void *arg,
                          uint64_t *last, char *epoch);

/* History: a page of the retained messages, under the channel lock, after
 * dropping the expired ones.  Forward: seq > since (with has_since; else
 * from the oldest), oldest first; reverse: seq < since (with has_since;
 * else from the newest), newest first.  At most `limit` messages and about
 * max_bytes of frames (always one, if any matches).  fn gets each message
 * (its JSON: m->frame + m->payload_off) and must not keep it. */
typedef struct {
    uint64_t since;
    bool has_since;
    bool reverse;
    uint32_t limit;
    size_t max_bytes;
} sl_chan_history_q_t;

typedef struct {
    uint64_t top_seq;    /* the last seq assigned (0: none yet) */
    uint64_t oldest_seq; /* the oldest retained (0: none retained) */
    uint32_t count;      /* messages given to fn */
    bool more;           /* more matched than were given */
} sl_chan_history_t;

void sl_chan_history(sl_reg_t *r, sl_chan_t *c, const sl_chan_history_q_t *q,
                     void (*fn)(const sl_chan_msg_t *m, void *arg), void *arg,
                     sl_chan_history_t *out);

/* Drop the retained messages older than history_ttl_ms at now_us
 * (monotonic).  Never waits for the lock (the master's reaper): false when
 * busy.  *dropped gets how many went. */
bool sl_chan_expire(sl_reg_t *r, sl_chan_t *c, int64_t now_us, uint32_t *dropped);

/* Lock-free figures of a channel (may be a message behind). */
static inline uint64_t sl_chan_message_count(const sl_chan_t *c)
{
    return __atomic_load_n(&c->next_seq, __ATOMIC_RELAXED) - 1;
}
static inline uint64_t sl_chan_retained_count(const sl_chan_t *c)
{
    return __atomic_load_n(&c->ring_hi, __ATOMIC_RELAXED) -
           __atomic_load_n(&c->ring_lo, __ATOMIC_RELAXED);
}
/* --redis (the broker): hand a channel-message whose seq Redis assigned
 * (json: the complete message text) to every local worker with
 * subscribers, and retain it in the local ring, under the channel lock
 * like a publish (recorded intent SL_CI_DLV: a kill at any point is
 * repaired by the lock's recovery).  The ring stays one run of one epoch
 * ending at the last seq delivered: a message of another epoch, or one
 * that does not follow, empties it first; the channel takes the message's
 * epoch and seq (next_seq = seq + 1) once it is handed off.  A full inbox
 * is skipped and noted as missed (its subscribers get 1013), and
 * SL_INBOX_RESERVED entries of each are left for the broker's answers.
 * exclude_conn: the sender's connection number (0: none); received_us: the
 * monotonic us the broker got it (the delivery-latency histogram).  SL_OK
 * (also for a seq already handed off: nothing done), SL_CHAN_OVERLOADED
 * (every target inbox full: nothing done, try again), SL_CHAN_NO_MEMORY or
 * SL_CHAN_NOT_SUBSCRIBED (deleted).  *woken gets the workers to wake. */
int sl_chan_deliver(sl_reg_t *r, sl_chan_t *c, const char *epoch, uint64_t seq, const char *json,
                    size_t len, uint64_t exclude_conn, int64_t received_us, uint64_t *woken);

/* --redis: set the channel's position, emptying the local ring (intent
 * SL_CI_RESET).  epoch/last: the epoch it takes and the last seq
 * (next_seq = last + 1); epoch NULL keeps both.  how:
 *  - SL_CHAN_RESET_NOTIFY: its subscribers here lost messages this node
 *    cannot recover for them (epoch changed, history gone, a backlog
 *    dropped): every worker with subscribers gets an SL_INBOX_CHANNEL_RESET
 *    and closes them with 1012 (a full inbox: noted as missed, 1013), so
 *    they resubscribe with since-seq and learn recovered:false;
 *  - SL_CHAN_RESET_QUIET: nobody is told (the ring is no longer followed,
 *    or the channel nobody here listened to moves on);
 *  - SL_CHAN_RESET_FORWARD: quiet, and only if the channel is behind
 *    (another epoch, or next_seq <= last): a JOIN's answer moving it on.
 * SL_OK, SL_CHAN_NO_MEMORY or SL_CHAN_NOT_SUBSCRIBED (deleted). */
enum { SL_CHAN_RESET_NOTIFY, SL_CHAN_RESET_QUIET, SL_CHAN_RESET_FORWARD };
int sl_chan_reset(sl_reg_t *r, sl_chan_t *c, const char *epoch, uint64_t last, int how,
                  uint64_t *woken);

/* --redis: take the cluster's settings (from Redis) for max-subscribers,
 * rpc-timeout-ms and telemetry (the local ring keeps its size). */
void sl_chan_set_config(sl_chan_t *c, const sl_chan_config_t *cfg);

/* The last seq this node holds for c (what it last delivered or
 * published; 0 when none) and, when epoch is not NULL (16 bytes), its
 * epoch, and, when cluster is not NULL, whether that position is the
 * cluster's (sl_chan_t.cluster_pos), all read under the channel lock. */
uint64_t sl_chan_position(sl_chan_t *c, char *epoch, bool *cluster);

/* Drop a reference to a message (frees it with the last). */
void sl_chan_msg_unref(sl_reg_t *r, sl_chan_msg_t *m);

/* The master, cleaning up after dead worker `worker`: remove subscription
 * s (found in the table walk) from its channel, telling the others
 * (join_leave; *woken |= the workers to wake).  Never waits for the
 * channel lock or an inbox lock: SL_AGAIN when a live process holds one
 * (try later; nothing done). */
int sl_chan_cleanup_sub(sl_reg_t *r, sl_sub_t *s, uint64_t *woken);

/* The master's reaper: delete c if it lingers (auto-created), has had no
 * subscriber and no retained message for linger_ms.  Never waits for the
 * lock (skipped when busy).  Returns true when it deleted it. */
bool sl_chan_reap(sl_reg_t *r, sl_chan_t *c, int64_t now_mono, int64_t linger_ms);

/* Walk a page of channels from bucket `cursor`: fn for each, until about
 * `limit` were visited (whole buckets).  Returns the cursor of the next
 * page, or 0 when this was the last.  Reader side. */
uint32_t sl_chan_page(sl_reg_t *r, uint32_t cursor, uint32_t limit,
                      void (*fn)(sl_chan_t *c, void *arg), void *arg);

/* Repair the broadcast lock's hand-off (its recovery function). */
void sl_chan_bcast_recover(void *arg);

/* Figures. */
typedef struct {
    uint64_t channels, subscriptions;
} sl_chan_totals_t;
void sl_chan_totals(sl_reg_t *r, sl_chan_totals_t *t);

#endif
