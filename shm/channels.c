/*
 * channels.c - channels, subscriptions and publishing (see sl_chan.h).
 *
 * Lock order: channel lock -> subscription stripe -> inbox locks (ascending
 * worker id) -> arena.  Nothing takes a channel lock while holding another
 * lock of this list.
 */
#include "sl_chan.h"

#include <inttypes.h>
#include <stdio.h>
#include <string.h>
#include <sys/random.h>
#include <urcu/uatomic.h>

#include "sl_ws.h"

int sl_chan_init(sl_reg_t *r, uint32_t nworkers)
{
    r->channels = sl_table_create(r->arena, &r->qsbr, 4096, 64);
    r->subs = sl_table_create(r->arena, &r->qsbr, 16384, 64);
    if (r->channels == NULL || r->subs == NULL || nworkers > SL_CHAN_MAX_WORKERS)
        return SL_ERROR;
    r->nworkers = nworkers;
    for (uint32_t i = 0; i < nworkers; i++) {
        r->inboxes[i] = sl_arena_alloc(r->arena, sizeof(sl_inbox_t));
        if (r->inboxes[i] == NULL || sl_inbox_init(r->inboxes[i]) != SL_OK)
            return SL_ERROR;
    }
    return SL_OK;
}

bool sl_chan_id_valid(const char *id, size_t len)
{
    if (len == 0 || len > SL_CHAN_ID_MAX || !sl_utf8_valid((const uint8_t *)id, len))
        return false;
    for (size_t i = 0; i < len; i++) {
        uint8_t b = (uint8_t)id[i];
        if (b < 0x20 || b == 0x7F)
            return false; /* C0 and DEL */
        /* C1 controls U+0080..U+009F are encoded C2 80 .. C2 9F. */
        if (b == 0xC2 && i + 1 < len && (uint8_t)id[i + 1] >= 0x80 && (uint8_t)id[i + 1] <= 0x9F)
            return false;
    }
    return true;
}

sl_chan_t *sl_chan_find(sl_reg_t *r, const char *id, size_t len)
{
    return (sl_chan_t *)sl_table_lookup(r->channels, sl_table_hash(id, len), id, len);
}

static void new_epoch(char out[16])
{
    static const char abc[] = "0123456789abcdefghijklmnopqrstuvwxyz";
    uint8_t rnd[12];
    if (getrandom(rnd, sizeof(rnd), 0) != (ssize_t)sizeof(rnd)) {
        uint64_t t = (uint64_t)sl_now_ms() ^ (uint64_t)sl_mono_us() << 20;
        memcpy(rnd, &t, 8);
        memcpy(rnd + 8, &t, 4);
    }
    for (int i = 0; i < 12; i++)
        out[i] = abc[rnd[i] % 36];
    out[12] = '\0';
}

int sl_chan_create(sl_reg_t *r, const char *id, size_t len, const sl_chan_config_t *cfg,
                   sl_chan_t **out)
{
    *out = NULL;
    sl_chan_t *c = sl_arena_calloc(r->arena, sizeof(*c));
    if (c == NULL)
        return SL_CHAN_NO_MEMORY;
    if (cfg->message_retention > 0) {
        c->ring = sl_arena_calloc(r->arena, sizeof(*c->ring) * (size_t)cfg->message_retention);
        if (c->ring == NULL) {
            sl_arena_free(r->arena, c);
            return SL_CHAN_NO_MEMORY;
        }
    }
    memcpy(c->id, id, len);
    new_epoch(c->epoch);
    c->config = *cfg;
    c->created_at = sl_now_ms();
    c->next_seq = 1;
    sl_lock_init(&c->lock, NULL, NULL);
    c->node.key = c->id;
    c->node.klen = (uint32_t)len;
    c->node.hash = sl_table_hash(id, len);
    if (sl_table_insert(r->channels, &c->node) == SL_TABLE_EXISTS) {
        /* Someone created it first: use theirs. */
        sl_arena_free(r->arena, c->ring);
        sl_arena_free(r->arena, c);
        *out = sl_chan_find(r, id, len);
        return *out ? SL_CHAN_EXISTS : SL_CHAN_NO_MEMORY;
    }
    *out = c;
    return SL_CHAN_CREATED;
}

static size_t sub_key(char *key, const sl_chan_t *c, const char *conn_id)
{
    size_t cl = c->node.klen, nl = strlen(conn_id);
    memcpy(key, c->id, cl);
    key[cl] = '\n';
    memcpy(key + cl + 1, conn_id, nl);
    return cl + 1 + nl;
}

int sl_chan_subscribe(sl_reg_t *r, sl_chan_t *c, const char *conn_id, int worker, uint32_t slot,
                      uint32_t *count)
{
    if (strlen(conn_id) >= SL_CONN_ID_MAX || worker < 0 || worker >= SL_CHAN_MAX_WORKERS)
        return SL_ERROR;
    char key[sizeof(((sl_sub_t *)0)->key)];
    size_t klen = sub_key(key, c, conn_id);
    int rc = SL_OK;
    sl_lock_acquire(&c->lock);
    if (c->deleted) {
        rc = SL_CHAN_NOT_SUBSCRIBED; /* gone between lookup and lock */
    } else if (sl_table_lookup(r->subs, sl_table_hash(key, klen), key, klen)) {
        rc = SL_CHAN_ALREADY;
    } else if ((int64_t)c->subscribers >= c->config.max_subscribers) {
        rc = SL_CHAN_FULL;
    } else {
        sl_sub_t *s = sl_arena_calloc(r->arena, sizeof(*s));
        if (s == NULL) {
            rc = SL_CHAN_NO_MEMORY;
        } else {
            memcpy(s->key, key, klen);
            s->worker = worker;
            s->slot = slot;
            s->chan_len = c->node.klen;
            s->node.key = s->key;
            s->node.klen = (uint32_t)klen;
            s->node.hash = sl_table_hash(key, klen);
            sl_table_insert_new(r->subs, &s->node); /* absent: checked under the lock */
            s->next = c->subs;
            if (c->subs)
                c->subs->prev = s;
            c->subs = s;
            c->worker_subs[worker]++;
            uatomic_set(&c->subscribers, c->subscribers + 1);
        }
    }
    *count = c->subscribers;
    sl_lock_release(&c->lock);
    return rc;
}

bool sl_chan_is_subscriber(sl_reg_t *r, const sl_chan_t *c, const char *conn_id)
{
    char key[sizeof(((sl_sub_t *)0)->key)];
    if (strlen(conn_id) >= SL_CONN_ID_MAX)
        return false;
    /* Deletion removes every subscription of the channel from the table
     * before a new channel of the same name can be created, so a hit here
     * belongs to the incarnation the caller found. */
    size_t klen = sub_key(key, c, conn_id);
    return sl_table_lookup(r->subs, sl_table_hash(key, klen), key, klen) != NULL;
}

int sl_chan_unsubscribe(sl_reg_t *r, sl_chan_t *c, const char *conn_id, uint32_t *count)
{
    char key[sizeof(((sl_sub_t *)0)->key)];
    if (strlen(conn_id) >= SL_CONN_ID_MAX)
        return SL_CHAN_NOT_SUBSCRIBED;
    size_t klen = sub_key(key, c, conn_id);
    int rc = SL_OK;
    sl_lock_acquire(&c->lock);
    sl_sub_t *s = (sl_sub_t *)sl_table_remove(r->subs, sl_table_hash(key, klen), key, klen);
    if (s == NULL) {
        rc = SL_CHAN_NOT_SUBSCRIBED;
    } else {
        if (s->prev)
            s->prev->next = s->next;
        else
            c->subs = s->next;
        if (s->next)
            s->next->prev = s->prev;
        if (c->worker_subs[s->worker] > 0)
            c->worker_subs[s->worker]--;
        uatomic_set(&c->subscribers, c->subscribers - 1);
    }
    if (count)
        *count = c->subscribers;
    sl_lock_release(&c->lock);
    return rc;
}

void sl_chan_msg_unref(sl_reg_t *r, sl_chan_msg_t *m)
{
    if (m && uatomic_add_return(&m->refs, -1) == 0)
        sl_arena_free(r->arena, m);
}

/* Build the channel-message frame in shared memory.  The caller holds the
 * channel lock (seq and message-id are final). */
static sl_chan_msg_t *encode(sl_reg_t *r, sl_chan_t *c, const sl_chan_pub_t *p, uint64_t seq,
                             uint64_t msg_id)
{
    /* The channel id as a JSON string: escape quote, backslash (controls
     * cannot occur in a valid id). */
    char idj[2 * SL_CHAN_ID_MAX + 3];
    size_t il = 0;
    idj[il++] = '"';
    for (uint32_t i = 0; i < c->node.klen; i++) {
        if (c->id[i] == '"' || c->id[i] == '\\')
            idj[il++] = '\\';
        idj[il++] = c->id[i];
    }
    idj[il++] = '"';
    char head[512], tail[160];
    int hl = snprintf(head, sizeof(head),
                      "{\"type\":\"channel-message\",\"channel-id\":%.*s,\"message-id\":\"msg-%" PRIu64
                      "\",\"seq\":%" PRIu64 ",\"data\":",
                      (int)il, idj, msg_id, seq);
    int tl;
    if (p->sender_conn_id)
        tl = snprintf(tail, sizeof(tail), ",\"sender-conn-id\":\"%s\",\"published-at\":%" PRId64 "}",
                      p->sender_conn_id, p->published_at);
    else
        tl = snprintf(tail, sizeof(tail), ",\"sender-conn-id\":null,\"published-at\":%" PRId64 "}",
                      p->published_at);
    size_t plen = (size_t)hl + p->data_len + (size_t)tl;
    uint8_t hdr[SL_WS_MAX_HEADER];
    size_t h = sl_ws_encode_header(hdr, SL_WS_OP_TEXT, true, plen, NULL);
    sl_chan_msg_t *m = sl_arena_alloc(r->arena, sizeof(*m) + h + plen);
    if (m == NULL)
        return NULL;
    m->refs = 0;
    m->len = (uint32_t)(h + plen);
    m->seq = seq;
    m->published_us = p->published_us;
    m->chan_hash = c->node.hash;
    m->idlen = c->node.klen;
    memcpy(m->id, c->id, c->node.klen);
    m->id[c->node.klen] = '\0';
    m->payload_off = (uint32_t)h;
    uint8_t *o = m->frame;
    memcpy(o, hdr, h);
    memcpy(o + h, head, (size_t)hl);
    memcpy(o + h + hl, p->data_json, p->data_len);
    memcpy(o + h + hl + p->data_len, tail, (size_t)tl);
    return m;
}

/* Workers holding subscribers of c (channel lock held). */
static uint64_t targets_of(sl_reg_t *r, sl_chan_t *c, uint32_t *subscribers)
{
    uint64_t targets = 0;
    *subscribers = 0;
    for (uint32_t w = 0; w < r->nworkers; w++)
        if (c->worker_subs[w] > 0) {
            targets |= (uint64_t)1 << w;
            *subscribers += c->worker_subs[w];
        }
    return targets;
}

/* Put one entry for m in every target inbox, or in none: every target
 * inbox is taken (ascending: a fixed order, no deadlock) and checked for
 * room before anything is committed.  m->refs must already count the
 * entries.  SL_OK, or SL_CHAN_OVERLOADED with nothing handed off. */
static int hand_off_kind(sl_reg_t *r, uint64_t targets, sl_chan_msg_t *m, int kind,
                         uint64_t exclude_conn)
{
    uint32_t locked = 0;
    bool room = true;
    for (uint32_t w = 0; w < r->nworkers; w++) {
        if (!(targets >> w & 1))
            continue;
        sl_lock_acquire(&r->inboxes[w]->lock);
        locked = w + 1;
        if (!sl_inbox_has_room(r->inboxes[w], 1)) {
            uatomic_add(&r->inboxes[w]->refused, 1);
            room = false;
            break;
        }
    }
    if (!room) {
        for (uint32_t w = 0; w < locked; w++)
            if (targets >> w & 1)
                sl_lock_release(&r->inboxes[w]->lock);
        return SL_CHAN_OVERLOADED;
    }
    for (uint32_t w = 0; w < r->nworkers; w++) {
        if (!(targets >> w & 1))
            continue;
        sl_inbox_entry_t e = {.kind = (uint32_t)kind, .exclude_conn = exclude_conn, .msg = m};
        sl_inbox_push_locked(r->inboxes[w], &e);
        sl_lock_release(&r->inboxes[w]->lock);
    }
    return SL_OK;
}

static int hand_off(sl_reg_t *r, uint64_t targets, sl_chan_msg_t *m, uint64_t exclude_conn)
{
    return hand_off_kind(r, targets, m, SL_INBOX_CHANNEL_MSG, exclude_conn);
}

/* A message object around an already encoded frame. */
static sl_chan_msg_t *msg_of_frame(sl_reg_t *r, sl_chan_t *c, const uint8_t *frame, size_t len,
                                   size_t payload_off)
{
    sl_chan_msg_t *m = sl_arena_alloc(r->arena, sizeof(*m) + len);
    if (m == NULL)
        return NULL;
    m->refs = 0;
    m->len = (uint32_t)len;
    m->seq = 0;
    m->published_us = 0;
    m->chan_hash = c ? c->node.hash : 0;
    m->idlen = c ? c->node.klen : 0;
    if (c)
        memcpy(m->id, c->id, c->node.klen);
    m->id[m->idlen] = '\0';
    m->payload_off = (uint32_t)payload_off;
    memcpy(m->frame, frame, len);
    return m;
}

int sl_chan_send(sl_reg_t *r, sl_chan_t *c, const uint8_t *frame, size_t len,
                 const char *exclude_conn_id, uint64_t exclude_conn,
                 void (*fn)(const char *conn_id, void *arg), void *arg, uint32_t *recipients,
                 uint64_t *woken)
{
    *recipients = 0;
    *woken = 0;
    sl_chan_msg_t *m = msg_of_frame(r, c, frame, len, 0);
    if (m == NULL)
        return SL_CHAN_NO_MEMORY;
    sl_lock_acquire(&c->lock);
    uint32_t n = 0;
    for (sl_sub_t *s = c->deleted ? NULL : c->subs; s; s = s->next) {
        const char *conn_id = s->key + s->chan_len + 1;
        if (exclude_conn_id && strcmp(conn_id, exclude_conn_id) == 0)
            continue;
        n++;
    }
    if (n == 0) {
        sl_lock_release(&c->lock);
        sl_arena_free(r->arena, m);
        return SL_OK;
    }
    uint32_t subs;
    uint64_t targets = targets_of(r, c, &subs);
    m->refs = (uint32_t)__builtin_popcountll(targets);
    if (hand_off(r, targets, m, exclude_conn) != SL_OK) {
        sl_lock_release(&c->lock);
        sl_arena_free(r->arena, m);
        return SL_CHAN_OVERLOADED;
    }
    for (sl_sub_t *s = c->subs; s && fn; s = s->next) {
        const char *conn_id = s->key + s->chan_len + 1;
        if (!(exclude_conn_id && strcmp(conn_id, exclude_conn_id) == 0))
            fn(conn_id, arg);
    }
    sl_lock_release(&c->lock);
    *recipients = n;
    *woken = targets;
    return SL_OK;
}

static int send_entry(sl_reg_t *r, int kind, int worker, uint32_t slot, uint64_t conn_no,
                      uint64_t tag, const uint8_t *frame, size_t len);

int sl_chan_send_direct(sl_reg_t *r, int worker, uint32_t slot, uint64_t conn_no,
                        uint64_t tag, const uint8_t *frame, size_t len)
{
    return send_entry(r, SL_INBOX_DIRECT, worker, slot, conn_no, tag, frame, len);
}

int sl_chan_send_kind(sl_reg_t *r, int kind, int worker, uint32_t slot, uint64_t conn_no,
                      const uint8_t *frame, size_t len)
{
    return send_entry(r, kind, worker, slot, conn_no, 0, frame, len);
}

int sl_chan_broadcast(sl_reg_t *r, uint64_t workers, const uint8_t *frame, size_t len)
{
    sl_chan_msg_t *m = msg_of_frame(r, NULL, frame, len, 0);
    if (m == NULL)
        return SL_CHAN_NO_MEMORY;
    m->refs = (uint32_t)__builtin_popcountll(workers);
    if (m->refs == 0) {
        sl_arena_free(r->arena, m);
        return SL_OK;
    }
    if (hand_off_kind(r, workers, m, SL_INBOX_BROADCAST, 0) != SL_OK) {
        sl_arena_free(r->arena, m);
        return SL_CHAN_OVERLOADED;
    }
    return SL_OK;
}

void sl_chan_subscribers(sl_chan_t *c, void (*fn)(const char *conn_id, void *arg), void *arg)
{
    sl_lock_acquire(&c->lock);
    for (sl_sub_t *s = c->deleted ? NULL : c->subs; s; s = s->next)
        fn(s->key + s->chan_len + 1, arg);
    sl_lock_release(&c->lock);
}

int sl_chan_delete(sl_reg_t *r, const char *id, size_t len, const uint8_t *frame, size_t flen,
                   uint32_t *unsubscribed, uint64_t *woken)
{
    *unsubscribed = 0;
    *woken = 0;
    sl_chan_t *c = sl_chan_find(r, id, len);
    if (c == NULL)
        return SL_CHAN_NOT_SUBSCRIBED;
    sl_chan_msg_t *m = msg_of_frame(r, c, frame, flen, 0);
    if (m == NULL)
        return SL_CHAN_NO_MEMORY;
    sl_lock_acquire(&c->lock);
    if (c->deleted) {
        sl_lock_release(&c->lock);
        sl_arena_free(r->arena, m);
        return SL_CHAN_NOT_SUBSCRIBED;
    }
    uint32_t subs;
    uint64_t targets = targets_of(r, c, &subs);
    m->refs = (uint32_t)__builtin_popcountll(targets);
    /* The notice goes out first (after everything already published), so
     * nothing is removed unless the subscribers will be told. */
    if (m->refs && hand_off_kind(r, targets, m, SL_INBOX_CHANNEL_GONE, 0) != SL_OK) {
        sl_lock_release(&c->lock);
        sl_arena_free(r->arena, m);
        return SL_CHAN_OVERLOADED;
    }
    if (m->refs == 0)
        sl_arena_free(r->arena, m);
    c->deleted = true;
    uint32_t n = 0;
    for (sl_sub_t *s = c->subs, *next; s; s = next) {
        next = s->next;
        sl_table_remove(r->subs, s->node.hash, s->key, s->node.klen);
        n++;
    }
    c->subs = NULL;
    memset(c->worker_subs, 0, sizeof(c->worker_subs));
    uatomic_set(&c->subscribers, 0);
    uint32_t cap = (uint32_t)c->config.message_retention;
    for (uint32_t i = 0; i < c->ring_count; i++)
        sl_chan_msg_unref(r, c->ring[(c->ring_start + i) % cap]);
    c->ring_count = 0;
    sl_table_remove(r->channels, c->node.hash, c->id, c->node.klen);
    sl_lock_release(&c->lock);
    /* The ring array is not reachable any more (deleted is set under the
     * lock every reader of it takes); the node itself goes through QSBR. */
    sl_arena_free(r->arena, c->ring);
    *unsubscribed = n;
    *woken = targets;
    return SL_OK;
}

static int send_entry(sl_reg_t *r, int kind, int worker, uint32_t slot, uint64_t conn_no,
                      uint64_t tag, const uint8_t *frame, size_t len)
{
    if (worker < 0 || (uint32_t)worker >= r->nworkers)
        return SL_CHAN_NOT_SUBSCRIBED;
    static const uint8_t none[1];
    sl_chan_msg_t *m = msg_of_frame(r, NULL, frame ? frame : none, frame ? len : 0, 0);
    if (m == NULL)
        return SL_CHAN_NO_MEMORY;
    m->refs = 1;
    sl_inbox_t *in = r->inboxes[worker];
    sl_lock_acquire(&in->lock);
    if (!sl_inbox_has_room(in, 1)) {
        uatomic_add(&in->refused, 1);
        sl_lock_release(&in->lock);
        sl_arena_free(r->arena, m);
        return SL_CHAN_OVERLOADED;
    }
    sl_inbox_entry_t e = {.kind = (uint32_t)kind, .target_slot = slot, .target_conn = conn_no,
                          .tag = tag, .msg = m};
    sl_inbox_push_locked(in, &e);
    sl_lock_release(&in->lock);
    return SL_OK;
}

int sl_chan_publish(sl_reg_t *r, sl_chan_t *c, const sl_chan_pub_t *p, sl_chan_pub_result_t *out)
{
    memset(out, 0, sizeof(*out));
    sl_lock_acquire(&c->lock);
    if (c->deleted) {
        sl_lock_release(&c->lock);
        return SL_CHAN_NOT_SUBSCRIBED;
    }
    uint64_t seq = c->next_seq;
    uint64_t msg_id = uatomic_add_return(&r->next_msg_id, 1);
    sl_chan_msg_t *m = encode(r, c, p, seq, msg_id);
    if (m == NULL) {
        sl_lock_release(&c->lock);
        return SL_CHAN_NO_MEMORY;
    }
    uint32_t delivered = 0;
    uint64_t targets = targets_of(r, c, &delivered);
    bool retain = c->config.message_retention > 0 && c->ring != NULL;
    m->refs = (uint32_t)__builtin_popcountll(targets) + (retain ? 1 : 0);
    /* The seq is taken before the hand-off: should this process die in
     * between, the channel shows a gap (a message its publisher never got
     * acknowledged) rather than two messages with one seq. */
    c->next_seq = seq + 1;
    if (hand_off(r, targets, m, p->exclude_sender ? p->sender_conn_no : 0) != SL_OK) {
        c->next_seq = seq; /* nothing went out: give the seq back, no gap */
        sl_lock_release(&c->lock);
        sl_arena_free(r->arena, m);
        return SL_CHAN_OVERLOADED;
    }
    sl_chan_msg_t *dropped = NULL;
    if (retain) {
        uint32_t cap = (uint32_t)c->config.message_retention;
        if (c->ring_count == cap) {
            dropped = c->ring[c->ring_start];
            c->ring_start = (c->ring_start + 1) % cap;
            c->ring_count--;
        }
        c->ring[(c->ring_start + c->ring_count) % cap] = m;
        c->ring_count++;
    }
    uatomic_add(&c->message_count, 1);
    sl_lock_release(&c->lock);
    sl_chan_msg_unref(r, dropped);
    if (m->refs == 0)
        sl_arena_free(r->arena, m); /* no subscriber, no retention */
    out->seq = seq;
    out->message_id = msg_id;
    out->delivered_to = delivered;
    out->woken = targets;
    return SL_OK;
}

uint64_t sl_chan_retained(sl_chan_t *c, uint64_t since,
                          void (*fn)(const char *json, size_t len, void *arg), void *arg,
                          uint64_t *last)
{
    uint64_t oldest = 0;
    sl_lock_acquire(&c->lock);
    *last = c->next_seq - 1;
    uint32_t cap = (uint32_t)c->config.message_retention;
    for (uint32_t i = 0; i < c->ring_count; i++) {
        sl_chan_msg_t *m = c->ring[(c->ring_start + i) % cap];
        if (i == 0)
            oldest = m->seq;
        if (m->seq > since)
            fn((const char *)m->frame + m->payload_off, m->len - m->payload_off, arg);
    }
    sl_lock_release(&c->lock);
    return oldest;
}

typedef struct {
    int worker;
    sl_sub_t *found[256];
    size_t n;
} sub_collect_t;

static int sub_collect_cb(sl_table_node_t *n, void *arg)
{
    sub_collect_t *col = arg;
    sl_sub_t *s = (sl_sub_t *)n;
    if (s->worker == col->worker && col->n < SL_ARRAY_LEN(col->found))
        col->found[col->n++] = s;
    return 0;
}

size_t sl_chan_worker_cleanup(sl_reg_t *r, int worker)
{
    /* Called by the master inside a read-side section (its slot online). */
    size_t total = 0;
    for (;;) {
        sub_collect_t col = {.worker = worker, .n = 0};
        sl_table_foreach(r->subs, sub_collect_cb, &col);
        for (size_t i = 0; i < col.n; i++) {
            sl_sub_t *s = col.found[i];
            sl_chan_t *c = sl_chan_find(r, s->key, s->chan_len);
            const char *conn_id = s->key + s->chan_len + 1;
            if (c) {
                sl_chan_unsubscribe(r, c, conn_id, NULL);
            } else {
                sl_table_remove(r->subs, s->node.hash, s->key, s->node.klen);
            }
        }
        total += col.n;
        sl_qsbr_quiescent(&r->qsbr, SL_REG_MASTER_SLOT);
        if (col.n < SL_ARRAY_LEN(col.found))
            break;
    }
    return total;
}

void sl_chan_totals(sl_reg_t *r, sl_chan_totals_t *t)
{
    t->channels = sl_table_count(r->channels);
    t->subscriptions = sl_table_count(r->subs);
}

/* ------------------------------------------------------------ --redis */

int sl_chan_deliver(sl_reg_t *r, sl_chan_t *c, const char *epoch, uint64_t seq, const char *json,
                    size_t len, uint64_t exclude_conn, uint64_t *woken)
{
    *woken = 0;
    uint8_t hdr[SL_WS_MAX_HEADER];
    size_t h = sl_ws_encode_header(hdr, SL_WS_OP_TEXT, true, len, NULL);
    sl_chan_msg_t *m = sl_arena_alloc(r->arena, sizeof(*m) + h + len);
    if (m == NULL)
        return SL_CHAN_NO_MEMORY;
    m->len = (uint32_t)(h + len);
    m->seq = seq;
    m->chan_hash = c->node.hash;
    m->idlen = c->node.klen;
    memcpy(m->id, c->id, c->node.klen);
    m->id[c->node.klen] = '\0';
    m->payload_off = (uint32_t)h;
    memcpy(m->frame, hdr, h);
    memcpy(m->frame + h, json, len);
    sl_lock_acquire(&c->lock);
    if (c->deleted) {
        sl_lock_release(&c->lock);
        sl_arena_free(r->arena, m);
        return SL_CHAN_NOT_SUBSCRIBED;
    }
    uint32_t cap = (uint32_t)c->config.message_retention;
    bool retain = cap > 0 && c->ring != NULL;
    /* The local ring stays one contiguous run of one epoch, so "the ring
     * has since+1 .. last" is a valid recovery answer. */
    bool other_epoch = strncmp(c->epoch, epoch, sizeof(c->epoch) - 1) != 0;
    bool gap = c->ring_count > 0 && c->ring[(c->ring_start + c->ring_count - 1) % cap]->seq + 1 != seq;
    sl_chan_msg_t *drop[2] = {NULL, NULL};
    uint32_t subs;
    uint64_t targets = targets_of(r, c, &subs);
    uint32_t refs = (uint32_t)__builtin_popcountll(targets) + (retain ? 1 : 0);
    if (refs == 0) {
        /* Nobody here and nothing to keep: still follow the seq. */
        if (other_epoch)
            snprintf(c->epoch, sizeof(c->epoch), "%s", epoch);
        c->next_seq = seq + 1;
        uatomic_add(&c->message_count, 1);
        sl_lock_release(&c->lock);
        sl_arena_free(r->arena, m);
        return SL_OK;
    }
    m->refs = refs;
    /* Decided before the hand-off: after it, m belongs to the inboxes and
     * is not read again here. */
    if (hand_off(r, targets, m, exclude_conn) != SL_OK) {
        sl_lock_release(&c->lock);
        sl_arena_free(r->arena, m);
        return SL_CHAN_OVERLOADED;
    }
    if (other_epoch || gap) {
        for (uint32_t i = 0; i < c->ring_count; i++)
            sl_chan_msg_unref(r, c->ring[(c->ring_start + i) % cap]);
        c->ring_count = 0;
        c->ring_start = 0;
        if (other_epoch)
            snprintf(c->epoch, sizeof(c->epoch), "%s", epoch);
    }
    if (retain) {
        if (c->ring_count == cap) {
            drop[0] = c->ring[c->ring_start];
            c->ring_start = (c->ring_start + 1) % cap;
            c->ring_count--;
        }
        c->ring[(c->ring_start + c->ring_count) % cap] = m;
        c->ring_count++;
    }
    c->next_seq = seq + 1;
    uatomic_add(&c->message_count, 1);
    sl_lock_release(&c->lock);
    sl_chan_msg_unref(r, drop[0]);
    *woken = targets;
    return SL_OK;
}

int sl_chan_reset(sl_reg_t *r, sl_chan_t *c, const char *epoch, uint64_t *woken)
{
    *woken = 0;
    sl_chan_msg_t *m = msg_of_frame(r, c, (const uint8_t *)"", 0, 0);
    if (m == NULL)
        return SL_CHAN_NO_MEMORY;
    sl_lock_acquire(&c->lock);
    uint32_t subs;
    uint64_t targets = c->deleted ? 0 : targets_of(r, c, &subs);
    uint32_t refs = (uint32_t)__builtin_popcountll(targets);
    m->refs = refs;
    if (refs && hand_off_kind(r, targets, m, SL_INBOX_CHANNEL_RESET, 0) != SL_OK) {
        sl_lock_release(&c->lock);
        sl_arena_free(r->arena, m);
        return SL_CHAN_OVERLOADED;
    }
    uint32_t cap = (uint32_t)c->config.message_retention;
    for (uint32_t i = 0; i < c->ring_count; i++)
        sl_chan_msg_unref(r, c->ring[(c->ring_start + i) % cap]);
    c->ring_count = 0;
    c->ring_start = 0;
    if (epoch)
        snprintf(c->epoch, sizeof(c->epoch), "%s", epoch);
    sl_lock_release(&c->lock);
    if (refs == 0)
        sl_arena_free(r->arena, m);
    *woken = targets;
    return SL_OK;
}

void sl_chan_set_config(sl_chan_t *c, const sl_chan_config_t *cfg)
{
    sl_lock_acquire(&c->lock);
    uatomic_set(&c->config.max_subscribers, cfg->max_subscribers);
    uatomic_set(&c->config.rpc_timeout_ms, cfg->rpc_timeout_ms);
    c->config.telemetry_enabled = cfg->telemetry_enabled;
    sl_lock_release(&c->lock);
}

uint64_t sl_chan_last_seq(sl_chan_t *c)
{
    sl_lock_acquire(&c->lock);
    uint64_t last = c->next_seq - 1;
    sl_lock_release(&c->lock);
    return last;
}
