/*
 * channels.c - channels, subscriptions and publishing (see sl_chan.h).
 *
 * Lock order: channel lock (or the broadcast lock) -> inbox locks
 * (ascending worker id) -> subscription/channel stripes -> limbo -> arena.
 * Nothing takes a channel lock while holding another lock of this list.
 *
 * Channel lock, invariants (between updates, and after recovery):
 *  - the list c->subs, followed through next, holds exactly the channel's
 *    subscriptions in the subscriptions table; prev pointers mirror next;
 *    worker_subs[w] counts the list's nodes of worker w and subscribers
 *    their sum; no node on the list is retired;
 *  - ring positions [ring_lo, ring_hi) hold retained messages, at most
 *    message_retention of them, each holding one reference;
 *  - next_seq - 1 is the last seq handed off (= message-count);
 *  - deleted: the list and ring are empty and the channel is no longer in
 *    the channels table (or is being removed by the update in intent);
 *  - intent.op is SL_CI_NONE.
 *
 * Every multi-store update records its intent (op and the objects it
 * works on) before its first store, and clears it after its last.  The
 * lock's recovery (chan_recover) completes what was recorded:
 *  - SUB / UNSUB: see below;
 *  - PUB / SEND / DEL / BCAST hand-offs: every target inbox lock is taken
 *    (each one's recovery makes or drops its recorded push, by the commit
 *    flag); if the hand-off had not committed, nothing went out: the
 *    message is freed and the update undone (a delete did not happen, a
 *    publish took no seq); if it had, the rest is completed (seq, ring, or
 *    the whole delete);
 *  - then the counts are recomputed from the list, and the intent cleared.
 * Recovery reads only objects the dead process was working on, which cannot
 * have been reclaimed yet: the master repairs a dead process's locks before
 * it releases its reader slot (sl_reg_dead).
 *
 * Subscribe and unsubscribe commit at one store: the hand-off of their join
 * / leave (join_leave, other subscribers to tell), or else intent.committed.
 * Before it nothing of the list or the table changed; after it they do:
 *  - SUB: not committed - the new node (never published) and the join
 *    message (never handed out) are freed: no subscription, no join;
 *    committed - the node is linked on the list and into the table if it
 *    is not yet (roll forward; the master's cleanup then removes the dead
 *    worker's subscription, with a leave);
 *  - UNSUB: not committed - nothing was removed (the master's cleanup
 *    removes it later, with a leave); committed - if the node is still in
 *    the table it is unlinked from the list and removed; if it is no longer
 *    in the table it was retired, and so - unlink before retire - is off
 *    the list already;
 * so every subscriber sees a connection's join and leave both or neither.
 * EXPIRE (retention TTL): messages popped off the ring one by one, each pop
 * recorded (ring_pop); recovery finishes the one in progress.
 *
 * Lock-free readers of the list (presence, sl_chan_members): a node is
 * published on it by one release store (rcu_assign_pointer) after all its
 * fields, next included, are written; an unlink is one store that leaves
 * the unlinked node's next as it was; a node is retired only after its
 * unlink (unlink before retire), so a reader that is on it goes on along
 * nodes that were on the list at some instant of its walk, none of them
 * freed before its next quiescent state.
 *
 * A SIGKILL may leak one object, never corrupt: one allocated but not yet
 * recorded in an intent (a message being encoded, a subscription node, a
 * channel), or a message whose reference the dead process had taken out of
 * the ring (or an inbox) but not yet dropped.  shm/README.md lists them.
 */
#define _LGPL_SOURCE
#include "sl_chan.h"
#include "sl_crash.h"

#include <inttypes.h>
#include <stdio.h>
#include <string.h>
#include <sys/random.h>
#include <stdlib.h>
#include <urcu/arch.h>
#include <urcu/pointer.h>
#include <urcu/system.h>
#include <urcu/uatomic.h>

#include "sl_ws.h"

static void chan_recover(void *arg);
static void ring_clear(sl_reg_t *r, sl_chan_t *c);
static void take_position(sl_chan_t *c, const sl_chan_intent_t *in);

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
    if ((*out = sl_chan_find(r, id, len)) != NULL)
        return SL_CHAN_EXISTS;
    /* The cap is checked against the live count: concurrent creators may
     * pass it together, so it can be exceeded by one per worker at most. */
    if (sl_table_count(r->channels) >= r->max_channels)
        return SL_CHAN_TOO_MANY;
    size_t retention = cfg->message_retention > 0 ? (size_t)cfg->message_retention : 0;
    sl_chan_t *c = sl_arena_calloc(r->arena, sizeof(*c) + sizeof(c->ring[0]) * retention);
    if (c == NULL)
        return SL_CHAN_NO_MEMORY;
    SL_CRASHPOINT("chan.create.allocated");
    c->reg = r;
    memcpy(c->id, id, len);
    new_epoch(c->epoch);
    c->config = *cfg;
    c->config.message_retention = (int64_t)retention;
    c->serial = uatomic_add_return(&r->next_serial, 1);
    c->created_at = sl_now_ms();
    c->empty_since = sl_mono_ms();
    c->next_seq = 1;
    sl_lock_init(&c->lock, chan_recover, c);
    c->node.key = c->id;
    c->node.klen = (uint32_t)len;
    c->node.hash = sl_table_hash(id, len);
    if (sl_table_insert(r->channels, &c->node) == SL_TABLE_EXISTS) {
        /* Someone created it first: use theirs. */
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

/* ------------------------------------------------------------ intents */

static void intent_begin(sl_chan_intent_t *in, int op)
{
    cmm_smp_wmb(); /* the recorded fields before the op that validates them */
    CMM_STORE_SHARED(in->op, (uint32_t)op);
}

static void intent_end(sl_chan_intent_t *in)
{
    cmm_smp_wmb();
    CMM_STORE_SHARED(in->op, SL_CI_NONE);
    in->sub = NULL;
    in->msg = NULL;
    in->dropped = NULL;
}

static void intent_clear_fields(sl_chan_intent_t *in)
{
    in->committed = 0;
    in->targets = 0;
    in->got = 0;
    in->sub = NULL;
    in->sub_hash = 0;
    in->msg = NULL;
    in->seq = 0;
    in->dropped = NULL;
}

/* -------------------------------------------------------- subscribers */

/* hand_off's flags (see there). */
/* HO_RESERVE (--redis deliveries): leave SL_INBOX_RESERVED entries free in
 * each inbox, for the broker's answers. */
enum { HO_ALWAYS = 2, HO_TRY = 4, HO_HEADROOM = 8, HO_RESERVE = 16, HO_PRESENCE = 32 };

static uint64_t hand_off(sl_reg_t *r, sl_chan_intent_t *in, sl_chan_msg_t *m,
                         const sl_inbox_entry_t *tmpl, uint32_t extra_refs,
                         const sl_inbox_note_t *note, unsigned flags, bool *busy);
static bool hand_off_settle(sl_reg_t *r, sl_chan_intent_t *in, const sl_inbox_note_t *note);
static uint64_t targets_of(sl_reg_t *r, sl_chan_t *c);
static sl_chan_msg_t *presence_msg(sl_reg_t *r, sl_chan_t *c, const sl_sub_t *s, bool join);

/* Join / leave handed off by the subscribe / unsubscribe itself: not with
 * --redis, where they travel through Redis to every node's subscribers
 * alike (sl_chan_send_presence), in order with the channel's messages. */
static bool local_join_leave(const sl_reg_t *r, const sl_chan_t *c)
{
    return c->config.join_leave && !r->presence_remote;
}

/* The subscriptions a join / leave of s is for (lock held): those made
 * before it - a join: before s; a leave: before now. */
static uint64_t presence_horizon(const sl_chan_t *c, const sl_sub_t *s, bool join)
{
    return join ? s->sub_no - 1 : c->sub_seq;
}

/* The missed note of a join / leave of s that a full inbox could not take:
 * it carries no seq, so its subscribers are not closed but told to ask
 * presence again (presence-resync; sl_inbox.h). */
static sl_inbox_note_t presence_note(const sl_chan_t *c, const sl_sub_t *s, bool join)
{
    return (sl_inbox_note_t){.chan_hash = c->node.hash,
                             .serial = c->serial,
                             .seq = SL_INBOX_SEQ_PRESENCE,
                             .horizon = presence_horizon(c, s, join)};
}

static bool on_list(const sl_chan_t *c, const sl_sub_t *s)
{
    for (const sl_sub_t *x = c->subs; x; x = x->next)
        if (x == s)
            return true;
    return false;
}

/* Put s at the head of the list (s not on it).  Lock held.  Its fields,
 * next included, before the store that publishes it to lock-free readers. */
static void list_link(sl_chan_t *c, sl_sub_t *s)
{
    if (SL_MUTATED(M_LIST_PUBLISH_ORDER)) {
        sl_sub_t *head = c->subs; /* mutant: published before its next is set */
        rcu_assign_pointer(c->subs, s);
        SL_CRASHPOINT("chan.sub.listed");
        s->next = head;
        if (head)
            head->prev = s;
        SL_CRASHPOINT("chan.sub.prev-set");
        return;
    }
    s->prev = NULL;
    s->next = c->subs;
    if (c->subs)
        c->subs->prev = s;
    SL_CRASHPOINT("chan.sub.prev-set");
    rcu_assign_pointer(c->subs, s);
    SL_CRASHPOINT("chan.sub.listed");
}

/* Unlink s from the list (s is on it).  Lock held.  One store takes it off
 * for readers; its own next stays, for a reader standing on it. */
static void list_unlink(sl_chan_t *c, sl_sub_t *s)
{
    if (s->prev)
        CMM_STORE_SHARED(s->prev->next, s->next);
    else
        CMM_STORE_SHARED(c->subs, s->next);
    SL_CRASHPOINT("chan.unsub.unlinked");
    if (s->next)
        s->next->prev = s->prev;
    SL_CRASHPOINT("chan.unsub.prev-fixed");
    if (SL_MUTATED(M_UNLINK_CLEARS_NEXT))
        CMM_STORE_SHARED(s->next, NULL); /* mutant: a reader standing on s loses the rest */
}

/* Recovery: unlink s wherever it is, trusting next pointers only. */
static void list_unlink_walk(sl_chan_t *c, sl_sub_t *s)
{
    for (sl_sub_t **link = &c->subs; *link; link = &(*link)->next)
        if (*link == s) {
            CMM_STORE_SHARED(*link, s->next);
            return;
        }
}

/* Counts and prev pointers from the list (the truth).  Lock held. */
static void recount(sl_chan_t *c)
{
    uint32_t total = 0;
    memset(c->worker_subs, 0, sizeof(c->worker_subs));
    sl_sub_t *prev = NULL;
    for (sl_sub_t *s = c->subs; s; prev = s, s = s->next) {
        s->prev = prev;
        if (s->worker >= 0 && s->worker < SL_CHAN_MAX_WORKERS)
            c->worker_subs[s->worker]++;
        total++;
    }
    if (total == 0 && uatomic_read(&c->subscribers) != 0)
        uatomic_set(&c->empty_since, sl_mono_ms());
    uatomic_set(&c->subscribers, total);
}

/* The commit of a subscribe or an unsubscribe whose intent (sub, op) is
 * recorded: with a join / leave message to hand to `targets`, its
 * hand-off; else the commit flag alone.  Lock held.  A join goes to the
 * target inboxes with room to spare (HO_HEADROOM: at most half full); the
 * crowded ones get a presence note; when no target has room it is not
 * committed: SL_CHAN_OVERLOADED, and the message is freed.  A leave always
 * commits (HO_ALWAYS: full inboxes are noted, and so are all of them when
 * m is NULL: no memory for it).  SL_AGAIN: an inbox lock was busy (try: the master), nothing done. */
static int commit_presence(sl_reg_t *r, sl_chan_t *c, sl_chan_msg_t *m, uint64_t targets,
                           uint64_t exclude_conn, bool join, bool try, uint64_t *woken)
{
    sl_chan_intent_t *in = &c->intent;
    *woken = 0;
    if (targets == 0) {
        cmm_smp_wmb();
        CMM_STORE_SHARED(in->committed, 1);
        if (join)
            SL_CRASHPOINT("chan.sub.committed");
        else
            SL_CRASHPOINT("chan.unsub.committed");
        return SL_OK;
    }
    sl_inbox_entry_t tmpl = {.kind = SL_INBOX_CHANNEL_MSG, .exclude_conn = exclude_conn};
    /* A worker whose inbox is full tells its subscribers from before it to
     * ask presence again (presence-resync; not 1013: there is no seq to
     * recover a join / leave by - review r15 H2). */
    sl_inbox_note_t note = presence_note(c, in->sub, join);
    bool busy = false;
    uint64_t got = hand_off(r, in, m, &tmpl, 0, &note,
                            (join ? HO_HEADROOM : HO_ALWAYS) | (try ? HO_TRY : 0) | HO_PRESENCE,
                            &busy);
    if (busy || (join && got == 0)) {
        /* Nothing went out.  The record is dropped before the message is
         * freed: killed in between, the message leaks (never a double free). */
        CMM_STORE_SHARED(in->msg, NULL);
        sl_arena_free(r->arena, m);
        return busy ? SL_AGAIN : SL_CHAN_OVERLOADED;
    }
    /* Every target got the message or a note: wake them all, a noted one
     * to act on its note now rather than at its next tick (review r15 L1). */
    *woken = targets;
    if (got == 0 && m) {
        /* A leave nobody could take (every inbox noted as missed): its
         * message was never handed out. */
        CMM_STORE_SHARED(in->msg, NULL);
        SL_CRASHPOINT("chan.leave.unsent");
        sl_arena_free(r->arena, m);
    }
    return SL_OK;
}

static int subscribe_locked(sl_reg_t *r, sl_chan_t *c, const char *key, size_t klen,
                            uint64_t hash, int worker, uint32_t slot, const sl_chan_who_t *who,
                            uint64_t *woken)
{
    const char *user = who ? who->user : NULL, *info = who ? who->info : NULL;
    size_t ulen = user ? strlen(user) : 0, ilen = info ? strlen(info) : 0;
    sl_sub_t *s = sl_arena_calloc(r->arena, offsetof(sl_sub_t, key) + klen + 1 +
                                                (ulen ? ulen + 1 : 0) + (ilen ? ilen + 1 : 0));
    if (s == NULL)
        return SL_CHAN_NO_MEMORY;
    SL_CRASHPOINT("chan.sub.allocated");
    memcpy(s->key, key, klen);
    char *x = s->key + klen + 1;
    if (ulen) {
        memcpy(x, user, ulen);
        x += ulen + 1;
    }
    if (ilen)
        memcpy(x, info, ilen);
    s->worker = worker;
    s->slot = slot;
    /* Registry-wide (review r15 L2); a number taken by a process killed
     * before it subscribed is only skipped. */
    s->sub_no = c->sub_seq = uatomic_add_return(&r->next_sub_no, 1);
    s->chan_len = (uint16_t)c->node.klen;
    s->join_pending = who && who->join_pending; /* before the list and table link it */
    s->user_len = (uint16_t)ulen;
    s->info_len = (uint16_t)ilen;
    s->node.key = s->key;
    s->node.klen = (uint32_t)klen;
    s->node.hash = hash;
    sl_chan_intent_t *in = &c->intent;
    intent_clear_fields(in);
    in->sub = s;
    in->sub_hash = hash;
    intent_begin(in, SL_CI_SUB);
    SL_CRASHPOINT("chan.sub.intent");
    /* The join, to the subscribers there are (not to s itself). */
    uint64_t targets = local_join_leave(r, c) ? targets_of(r, c) : 0;
    sl_chan_msg_t *m = NULL;
    if (targets) {
        m = presence_msg(r, c, s, true);
        if (m == NULL) {
            CMM_STORE_SHARED(in->sub, NULL);
            sl_arena_free(r->arena, s);
            intent_end(in);
            return SL_CHAN_NO_MEMORY;
        }
        SL_CRASHPOINT("chan.join.allocated");
        in->targets = targets;
        cmm_smp_wmb(); /* the targets before the message that makes recovery use them */
        CMM_STORE_SHARED(in->msg, m);
        SL_CRASHPOINT("chan.join.recorded");
    }
    if (SL_MUTATED(M_JOIN_AFTER_LINK))
        list_link(c, s); /* mutant: on the list before the commit */
    int rc = commit_presence(r, c, m, targets, who ? who->conn_no : 0, true, false, woken);
    if (rc != SL_OK) {
        /* Not committed (every inbox full): s was never published. */
        CMM_STORE_SHARED(in->sub, NULL);
        sl_arena_free(r->arena, s);
        intent_end(in);
        return rc;
    }
    /* Committed: the list first, then the table. */
    if (!SL_MUTATED(M_JOIN_AFTER_LINK))
        list_link(c, s);
    sl_table_insert_new(r->subs, &s->node); /* absent: checked under the lock */
    SL_CRASHPOINT("chan.sub.inserted");
    c->worker_subs[worker]++;
    uatomic_set(&c->subscribers, c->subscribers + 1);
    SL_CRASHPOINT("chan.sub.counted");
    intent_end(in);
    return SL_OK;
}

int sl_chan_subscribe(sl_reg_t *r, sl_chan_t *c, const char *conn_id, int worker, uint32_t slot,
                      const sl_chan_who_t *who, uint64_t *woken, uint32_t *count,
                      uint64_t *sub_no)
{
    return sl_chan_subscribe_at(r, c, conn_id, worker, slot, who, woken, count, sub_no, NULL);
}

int sl_chan_subscribe_at(sl_reg_t *r, sl_chan_t *c, const char *conn_id, int worker,
                         uint32_t slot, const sl_chan_who_t *who, uint64_t *woken,
                         uint32_t *count, uint64_t *sub_no, uint64_t *last)
{
    uint64_t w = 0;
    if (strlen(conn_id) >= SL_CONN_ID_MAX || worker < 0 || worker >= SL_CHAN_MAX_WORKERS ||
        (who && who->user && strlen(who->user) > SL_CHAN_USER_MAX) ||
        (who && who->info && strlen(who->info) > SL_CHAN_INFO_MAX))
        return SL_ERROR;
    char key[SL_SUB_KEY_MAX];
    size_t klen = sub_key(key, c, conn_id);
    uint64_t hash = sl_table_hash(key, klen);
    int rc;
    sl_lock_acquire(&c->lock);
    if (c->deleted)
        rc = SL_CHAN_NOT_SUBSCRIBED; /* gone between lookup and lock */
    else if (sl_table_lookup(r->subs, hash, key, klen))
        rc = SL_CHAN_ALREADY;
    else if ((int64_t)c->subscribers >= c->config.max_subscribers)
        rc = SL_CHAN_FULL;
    else
        rc = subscribe_locked(r, c, key, klen, hash, worker, slot, who, &w);
    if (sub_no && rc == SL_OK)
        *sub_no = c->sub_seq; /* ours: taken under this lock */
    *count = c->subscribers;
    if (last)
        *last = c->next_seq - 1; /* publishes after this one see the subscription */
    sl_lock_release(&c->lock);
    if (woken)
        *woken = w;
    return rc;
}

bool sl_chan_is_subscriber(sl_reg_t *r, const sl_chan_t *c, const char *conn_id)
{
    char key[SL_SUB_KEY_MAX];
    if (strlen(conn_id) >= SL_CONN_ID_MAX)
        return false;
    /* Deletion removes every subscription of the channel from the table
     * before a new channel of the same name can be created, so a hit here
     * belongs to the incarnation the caller found. */
    size_t klen = sub_key(key, c, conn_id);
    return sl_table_lookup(r->subs, sl_table_hash(key, klen), key, klen) != NULL;
}

void sl_chan_sub_confirm(sl_reg_t *r, const sl_chan_t *c, const char *conn_id)
{
    char key[SL_SUB_KEY_MAX];
    if (strlen(conn_id) >= SL_CONN_ID_MAX)
        return;
    size_t klen = sub_key(key, c, conn_id);
    sl_table_node_t *n = sl_table_lookup(r->subs, sl_table_hash(key, klen), key, klen);
    if (n)
        uatomic_set(&((sl_sub_t *)n)->join_pending, 0); /* one store (see sl_sub_t) */
}

/* Remove subscription s of c (on the list and in the table), telling the
 * others (join_leave).  Lock held.  `dead`: s's worker died (the master's
 * cleanup): its inbox is not told, and inbox locks are only tried -
 * SL_AGAIN when one is busy, nothing done. */
static int unsubscribe_locked(sl_reg_t *r, sl_chan_t *c, sl_sub_t *s, uint64_t conn_no, bool dead,
                              uint64_t *woken)
{
    uint64_t targets = 0;
    if (local_join_leave(r, c)) {
        targets = targets_of(r, c);
        if (dead || c->worker_subs[s->worker] <= 1)
            targets &= ~((uint64_t)1 << s->worker); /* nobody else there */
    }
    sl_chan_msg_t *m = NULL;
    if (targets) {
        m = presence_msg(r, c, s, false); /* NULL (no memory): every target misses it */
        if (m)
            SL_CRASHPOINT("chan.leave.allocated");
    }
    sl_chan_intent_t *in = &c->intent;
    intent_clear_fields(in);
    in->sub = s;
    in->sub_hash = s->node.hash;
    in->msg = m;
    in->targets = targets;
    intent_begin(in, SL_CI_UNSUB);
    SL_CRASHPOINT("chan.unsub.intent");
    if (commit_presence(r, c, m, targets, conn_no, false, dead, woken) != SL_OK) {
        intent_end(in); /* an inbox lock was busy: nothing done */
        return SL_AGAIN;
    }
    if (SL_MUTATED(M_RETIRE_BEFORE_UNLINK)) {
        sl_table_remove_node(r->subs, s->node.hash, &s->node);
        SL_CRASHPOINT("chan.unsub.removed");
        list_unlink(c, s);
    } else {
        /* Unlink before retire: the list must never hold a retired node. */
        list_unlink(c, s);
        sl_table_remove_node(r->subs, s->node.hash, &s->node);
        SL_CRASHPOINT("chan.unsub.removed");
    }
    if (c->worker_subs[s->worker] > 0)
        c->worker_subs[s->worker]--;
    if (c->subscribers == 1)
        uatomic_set(&c->empty_since, sl_mono_ms());
    uatomic_set(&c->subscribers, c->subscribers - 1);
    SL_CRASHPOINT("chan.unsub.counted");
    intent_end(in);
    return SL_OK;
}

int sl_chan_unsubscribe(sl_reg_t *r, sl_chan_t *c, const char *conn_id, uint64_t conn_no,
                        uint64_t *woken, uint32_t *count)
{
    uint64_t w = 0;
    char key[SL_SUB_KEY_MAX];
    if (strlen(conn_id) >= SL_CONN_ID_MAX)
        return SL_CHAN_NOT_SUBSCRIBED;
    size_t klen = sub_key(key, c, conn_id);
    int rc = SL_OK;
    sl_lock_acquire(&c->lock);
    sl_sub_t *s = (sl_sub_t *)sl_table_lookup(r->subs, sl_table_hash(key, klen), key, klen);
    if (s == NULL || c->deleted)
        rc = SL_CHAN_NOT_SUBSCRIBED;
    else
        unsubscribe_locked(r, c, s, conn_no, false, &w);
    if (count)
        *count = c->subscribers;
    sl_lock_release(&c->lock);
    if (woken)
        *woken = w;
    return rc;
}

/* ----------------------------------------------------------- presence */

uint32_t sl_chan_members(const sl_chan_t *c, uint64_t before,
                         int (*fn)(const sl_sub_t *s, void *arg), void *arg)
{
    return sl_chan_members_max(c, before, UINT32_MAX, NULL, fn, arg);
}

uint32_t sl_chan_members_max(const sl_chan_t *c, uint64_t before, uint32_t max_walk, bool *cut,
                             int (*fn)(const sl_sub_t *s, void *arg), void *arg)
{
    uint32_t n = 0;
    if (cut)
        *cut = false;
    if (CMM_LOAD_SHARED(c->deleted))
        return 0;
    /* Dependency-ordered loads: a node's fields are seen as they were
     * written before the store that published it. */
    for (const sl_sub_t *s = rcu_dereference(((sl_chan_t *)c)->subs); s;
         s = rcu_dereference(((sl_sub_t *)s)->next)) {
        if (n == max_walk) { /* the request's walk budget (review rf15 F5) */
            if (cut)
                *cut = true;
            break;
        }
        n++; /* walked: skipped ones cost the same (the caller charges it) */
        if (before && s->sub_no >= before)
            continue;
        if (fn(s, arg))
            break;
    }
    return n;
}

uint32_t sl_chan_members_after(sl_reg_t *r, const sl_chan_t *c, const char *after_conn,
                               uint64_t after_no, uint32_t max_walk, bool *cut, bool *resumed,
                               int (*fn)(const sl_sub_t *s, void *arg), void *arg)
{
    *resumed = false;
    if (cut)
        *cut = false;
    if (CMM_LOAD_SHARED(c->deleted))
        return 0;
    const sl_sub_t *from = NULL;
    char key[SL_SUB_KEY_MAX];
    if (after_conn && after_no && strlen(after_conn) < SL_CONN_ID_MAX) {
        size_t klen = sub_key(key, c, after_conn);
        /* The checkpoint through the subscriptions table, in O(1), instead
         * of a walk from the head past every newer node (review rs 6: a
         * big channel's sliced rewrite was O(N^2 / slice)).  The same
         * sub_no: this very node (sub_no is never reused), not a later
         * subscription of the connection or a re-created channel's.  A
         * node still in the table is on the list, or was unlinked in the
         * lock hold that is removing it (unlink, then table, one hold; a
         * dead holder's recovery finishes both before the lock is free):
         * its next is then a node that nobody could unlink since, so not
         * retired, and the walk goes on along nodes of the list. */
        const sl_sub_t *s = (const sl_sub_t *)sl_table_lookup(r->subs, sl_table_hash(key, klen),
                                                              key, klen);
        if (s && CMM_LOAD_SHARED(s->sub_no) == after_no)
            from = s;
    }
    if (from == NULL) /* gone (unsubscribed): from the head, as sl_chan_members_max */
        return sl_chan_members_max(c, after_no, max_walk, cut, fn, arg);
    *resumed = true;
    uint32_t n = 0;
    for (const sl_sub_t *s = rcu_dereference(((sl_sub_t *)from)->next); s;
         s = rcu_dereference(((sl_sub_t *)s)->next)) {
        if (n == max_walk) {
            if (cut)
                *cut = true;
            break;
        }
        n++;
        if (fn(s, arg))
            break;
    }
    return n;
}

typedef struct {
    uint64_t *set; /* user hashes (never 0), open addressing */
    uint32_t cap, n, clients, max;
    bool over, oom;
} pcount_t;

static bool pset_add(uint64_t *set, uint32_t cap, uint64_t h)
{
    for (uint32_t i = (uint32_t)h & (cap - 1);; i = (i + 1) & (cap - 1)) {
        if (set[i] == h)
            return false;
        if (set[i] == 0) {
            set[i] = h;
            return true;
        }
    }
}

static int pcount_cb(const sl_sub_t *s, void *arg)
{
    pcount_t *p = arg;
    if (p->clients == p->max) {
        p->over = true;
        return 1;
    }
    p->clients++;
    const char *user = sl_sub_user(s);
    if (user == NULL)
        return 0;
    if (2 * (p->n + 1) > p->cap) {
        uint32_t cap = p->cap * 2;
        uint64_t *set = calloc(cap, sizeof(*set));
        if (set == NULL) {
            p->oom = true;
            return 1;
        }
        for (uint32_t i = 0; i < p->cap; i++)
            if (p->set[i])
                pset_add(set, cap, p->set[i]);
        free(p->set);
        p->set = set;
        p->cap = cap;
    }
    /* 64-bit keyed hashes: a collision among 10^5 users has odds ~10^-9. */
    if (pset_add(p->set, p->cap, sl_table_hash(user, s->user_len) | 1))
        p->n++;
    return 0;
}

bool sl_chan_presence_counts(const sl_chan_t *c, uint32_t max_walk, uint32_t *clients,
                             uint32_t *users)
{
    pcount_t p = {.cap = 64, .max = max_walk};
    *clients = *users = 0;
    p.set = calloc(p.cap, sizeof(*p.set));
    if (p.set == NULL)
        return false;
    sl_chan_members(c, 0, pcount_cb, &p);
    free(p.set);
    *clients = p.clients;
    *users = p.n;
    return !p.over && !p.oom;
}

/* --------------------------------------------------------------- messages */

void sl_chan_msg_unref(sl_reg_t *r, sl_chan_msg_t *m)
{
    if (m && uatomic_add_return(&m->refs, -1) == 0) {
        SL_CRASHPOINT("chan.msg.last-ref"); /* killed here: the message leaks */
        sl_arena_free(r->arena, m);
    }
}

/* s[0..n) as a JSON string, quotes included, into out (room for 6n + 2
 * bytes: every byte may become \u00XX); returns its length. */
static size_t json_quote(char *out, const char *s, size_t n)
{
    static const char hex[] = "0123456789abcdef";
    size_t o = 0;
    out[o++] = '"';
    for (size_t i = 0; i < n; i++) {
        unsigned char ch = (unsigned char)s[i];
        if (ch == '"' || ch == '\\') {
            out[o++] = '\\';
            out[o++] = (char)ch;
        } else if (ch < 0x20) {
            memcpy(out + o, "\\u00", 4);
            out[o + 4] = hex[ch >> 4];
            out[o + 5] = hex[ch & 15];
            o += 6;
        } else {
            out[o++] = (char)ch;
        }
    }
    out[o++] = '"';
    return o;
}

/* Build the channel-message frame in shared memory.  The caller holds the
 * channel lock (seq and message-id are final). */
static sl_chan_msg_t *encode(sl_reg_t *r, sl_chan_t *c, const sl_chan_pub_t *p, uint64_t seq,
                             uint64_t msg_id)
{
    char idj[6 * SL_CHAN_ID_MAX + 2];
    size_t il = json_quote(idj, c->id, c->node.klen);
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
    m->created_us = sl_mono_us();
    m->horizon = 0;
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

/* A message object around an already encoded frame. */
static sl_chan_msg_t *msg_of_frame(sl_reg_t *r, sl_chan_t *c, const uint8_t *frame, size_t len)
{
    sl_chan_msg_t *m = sl_arena_alloc(r->arena, sizeof(*m) + len);
    if (m == NULL)
        return NULL;
    m->refs = 0;
    m->len = (uint32_t)len;
    m->seq = 0;
    m->published_us = 0;
    m->created_us = 0;
    m->horizon = 0;
    m->chan_hash = c ? c->node.hash : 0;
    m->idlen = c ? c->node.klen : 0;
    if (c)
        memcpy(m->id, c->id, c->node.klen);
    m->id[m->idlen] = '\0';
    m->payload_off = 0;
    if (len)
        memcpy(m->frame, frame, len);
    return m;
}

/* The join / leave frame of subscription s (a channel message without
 * seq: {"type":"join"|"leave","channel-id":C,"info":{"conn-id":…,"user":…,
 * "info":…}}, user and info null when the connection has none), for the
 * subscriptions made before it (horizon). */
static sl_chan_msg_t *presence_msg(sl_reg_t *r, sl_chan_t *c, const sl_sub_t *s, bool join)
{
    char idj[6 * SL_CHAN_ID_MAX + 2], uj[6 * SL_CHAN_USER_MAX + 2];
    size_t il = json_quote(idj, c->id, c->node.klen);
    const char *user = sl_sub_user(s), *info = sl_sub_info(s);
    size_t ul = user ? json_quote(uj, user, s->user_len) : 0;
    char body[sizeof(idj) + sizeof(uj) + SL_CHAN_INFO_MAX + SL_CONN_ID_MAX + 128];
    int n = snprintf(body, sizeof(body),
                     "{\"type\":\"%s\",\"channel-id\":%.*s,\"info\":{\"conn-id\":\"%s\","
                     "\"user\":%.*s,\"info\":%s}}",
                     join ? "join" : "leave", (int)il, idj, sl_sub_conn_id(s),
                     user ? (int)ul : 4, user ? uj : "null", info ? info : "null");
    if (n < 0 || (size_t)n >= sizeof(body))
        return NULL;
    uint8_t frame[SL_WS_MAX_HEADER + sizeof(body)];
    size_t h = sl_ws_encode_header(frame, SL_WS_OP_TEXT, true, (size_t)n, NULL);
    memcpy(frame + h, body, (size_t)n);
    sl_chan_msg_t *m = msg_of_frame(r, c, frame, h + (size_t)n);
    if (m) {
        m->payload_off = (uint32_t)h;
        /* Only for the subscriptions there are at its hand-off (lock
         * held): a worker may deliver it after a later subscribe of its
         * own, which must not hear of who came or went before it. */
        m->horizon = presence_horizon(c, s, join);
    }
    return m;
}

/* Workers holding subscribers of c (channel lock held). */
/* The workers with subscribers of c - but not a dead one whose cleanup
 * runs (r->dead_workers: its inbox is not read until its replacement
 * starts; review rf15 F3 a).  The value is recorded in the intent before
 * any push, so a recovery uses the same targets. */
static uint64_t targets_of(sl_reg_t *r, sl_chan_t *c)
{
    uint64_t targets = 0;
    for (uint32_t w = 0; w < r->nworkers; w++)
        if (c->worker_subs[w] > 0)
            targets |= (uint64_t)1 << w;
    if (!SL_MUTATED(M_DEAD_TARGETED))
        targets &= ~uatomic_read(&r->dead_workers);
    return targets;
}

static uint32_t subscribers_on(sl_reg_t *r, sl_chan_t *c, uint64_t workers)
{
    uint32_t n = 0;
    for (uint32_t w = 0; w < r->nworkers; w++)
        if (workers >> w & 1)
            n += c->worker_subs[w];
    return n;
}

/* ----------------------------------------------------------- hand-off */

/* Hand m to every worker of in->targets whose inbox has room, all of them
 * or none, with one commit store (in->committed).  The outer lock (channel
 * or broadcast) is held and in->op, in->msg and in->targets are recorded.
 *
 *  1. take every target inbox lock (ascending: a fixed order, no deadlock;
 *     with HO_TRY only tried - one busy: release those taken, *busy, return
 *     0, nothing done) and see which have room; none: release all, return
 *     0, nothing done - unless HO_ALWAYS (below);
 *  2. m->refs = their number + extra (nothing else can see m yet);
 *  3. record a push in each (sl_inbox_prepare, pointing at the commit flag);
 *  4. the commit: in->committed = 1;
 *  5. push into each and release it; full inboxes get the missed note
 *     `note` (when not NULL) and are released.
 * HO_HEADROOM (a join): a target inbox more than half full counts as
 * full - the inboxes are shared by every channel of their worker, so a
 * storm of joins must leave room for publications (review r15 H2) - and
 * gets the note (a presence note: its subscribers are told to ask
 * presence again, not closed); refused, nothing done, only when every
 * target is so (one slow or stopped worker must not refuse joins on the
 * others: review rf15 F1).
 * HO_ALWAYS (a leave, which is never refused): with no room anywhere - or
 * no message at all (m NULL: no memory for it) - it still commits, with no
 * push, every target given the note; m (refs 0) is the caller's to free.
 * HO_PRESENCE (a join or leave): a full inbox is not counted as a refusal.
 * A process killed before 4 leaves recorded pushes that recovery drops; at
 * or after 4, pushes that recovery makes.  Returns the workers that got m;
 * the caller must not read m afterwards (the references are theirs). */
static uint64_t hand_off(sl_reg_t *r, sl_chan_intent_t *in, sl_chan_msg_t *m,
                         const sl_inbox_entry_t *tmpl, uint32_t extra_refs,
                         const sl_inbox_note_t *note, unsigned flags, bool *busy)
{
    /* The note comes from the caller, not from m: after the first push m
     * is not ours to read. */
    uint64_t targets = in->targets, push = 0;
    uint32_t room = flags & HO_RESERVE ? 1 + SL_INBOX_RESERVED : 1;
    for (uint32_t w = 0; w < r->nworkers; w++) {
        if (!(targets >> w & 1))
            continue;
        if (flags & HO_TRY) {
            if (sl_inbox_trylock(r->inboxes[w]) != SL_OK) {
                for (uint32_t v = 0; v < w; v++)
                    if (targets >> v & 1)
                        sl_inbox_unlock(r->inboxes[v]);
                *busy = true;
                return 0;
            }
        } else {
            sl_inbox_lock(r->inboxes[w]);
        }
        if ((flags & HO_HEADROOM) && sl_inbox_depth(r->inboxes[w]) > SL_INBOX_CAP / 2)
            continue; /* crowded: noted below (the room is kept for publications) */
        /* A full inbox counts in its `refused` (/stats inbox-skipped) for
         * publications only: a join / leave that finds it full is a
         * presence note (counted as presence-coalesced / -overflows), and
         * the master's cleanup retries its leaves every few ms (review
         * r15 L6). */
        if (m && ((flags & HO_PRESENCE) ? sl_inbox_room(r->inboxes[w], room)
                                        : sl_inbox_has_room(r->inboxes[w], room)))
            push |= (uint64_t)1 << w;
    }
    SL_CRASHPOINT("handoff.locked");
    if (push == 0 && targets != 0 && !(flags & HO_ALWAYS)) {
        for (uint32_t w = 0; w < r->nworkers; w++)
            if (targets >> w & 1)
                sl_inbox_unlock(r->inboxes[w]);
        return 0;
    }
    if (m)
        m->refs = (uint32_t)__builtin_popcountll(push) + extra_refs;
    in->got = push;
    sl_inbox_entry_t e = *tmpl;
    e.msg = m;
    for (uint32_t w = 0; w < r->nworkers; w++)
        if (push >> w & 1)
            sl_inbox_prepare(r->inboxes[w], &e, &in->committed);
    SL_CRASHPOINT("handoff.prepared");
    if (!SL_MUTATED(M_HANDOFF_COMMIT)) {
        cmm_smp_wmb(); /* every recorded push before the commit that makes them due */
        CMM_STORE_SHARED(in->committed, 1);
        SL_CRASHPOINT("handoff.committed");
    }
    for (uint32_t w = 0; w < r->nworkers; w++) {
        if (!(targets >> w & 1))
            continue;
        if (push >> w & 1) {
            sl_inbox_push_prepared(r->inboxes[w]);
            SL_CRASHPOINT("handoff.pushed");
        } else if (note && !SL_MUTATED(M_NO_MISSED_NOTE)) {
            sl_inbox_note_missed(r->inboxes[w], note);
        }
        sl_inbox_unlock(r->inboxes[w]);
    }
    if (SL_MUTATED(M_HANDOFF_COMMIT)) {
        CMM_STORE_SHARED(in->committed, 1); /* mutant: committed after the pushes */
        SL_CRASHPOINT("handoff.committed");
    }
    return push;
}

/* Recovery of a hand-off recorded in `in`: take and release every target
 * inbox lock (each one's recovery makes or drops its recorded push).  A
 * committed one also puts `note` (NULL: none) in the target inboxes that
 * were full, in case the dead owner had not: a second note of the same
 * message is harmless (it closes only subscribers from before that
 * message, whom the first closed already).  Returns whether it had
 * committed. */
static bool hand_off_settle(sl_reg_t *r, sl_chan_intent_t *in, const sl_inbox_note_t *note)
{
    for (uint32_t w = 0; w < r->nworkers; w++)
        if (in->targets >> w & 1) {
            sl_inbox_lock(r->inboxes[w]);
            if (in->committed && note && !(in->got >> w & 1) && !SL_MUTATED(M_RECOVERY_NOTE))
                sl_inbox_note_missed(r->inboxes[w], note);
            sl_inbox_unlock(r->inboxes[w]);
        }
    return in->committed != 0;
}

/* The same, and the message is freed if the hand-off never committed
 * (nobody else ever saw it). */
static bool hand_off_recover(sl_reg_t *r, sl_chan_intent_t *in, const sl_inbox_note_t *note)
{
    if (hand_off_settle(r, in, note))
        return true;
    sl_chan_msg_t *m = in->msg;
    in->msg = NULL;
    sl_arena_free(r->arena, m);
    return false;
}

/* ------------------------------------------------------------ the ring */

static uint32_t ring_cap(const sl_chan_t *c)
{
    return (uint32_t)c->config.message_retention;
}

/* Take the oldest retained message out of the ring: recorded in
 * intent.dropped (its reference to be dropped by finish_drop). */
static void ring_pop(sl_chan_t *c)
{
    sl_chan_intent_t *in = &c->intent;
    in->ring_lo = c->ring_lo;
    in->dropped = c->ring[c->ring_lo % ring_cap(c)];
    SL_CRASHPOINT("chan.ring.drop-noted");
    uatomic_set(&c->ring_lo, c->ring_lo + 1); /* the commit of the pop */
    SL_CRASHPOINT("chan.ring.dropped");
}

/* Drop the reference of a message ring_pop took out.  The record is
 * cleared first: killed in between, the message leaks (never a double
 * drop). */
static void finish_drop(sl_reg_t *r, sl_chan_t *c)
{
    sl_chan_intent_t *in = &c->intent;
    sl_chan_msg_t *d = in->dropped;
    if (d == NULL)
        return;
    in->dropped = NULL;
    SL_CRASHPOINT("chan.ring.drop-cleared");
    if (c->ring_lo == in->ring_lo + 1)
        sl_chan_msg_unref(r, d);
    /* else the pop never happened: the ring still holds d */
}

static void ring_store(sl_chan_t *c, sl_chan_msg_t *m)
{
    uint32_t cap = ring_cap(c);
    if (c->ring_hi - c->ring_lo == cap)
        ring_pop(c);
    c->ring[c->ring_hi % cap] = m;
    SL_CRASHPOINT("chan.ring.slot");
    uatomic_set(&c->ring_hi, c->ring_hi + 1); /* the commit: retained */
    SL_CRASHPOINT("chan.ring.stored");
}

/* Drop the retained messages older than the channel's history_ttl_ms
 * (oldest first: the ring is in publish order).  Lock held.  Returns how
 * many went. */
static uint32_t expire_locked(sl_reg_t *r, sl_chan_t *c, int64_t now_us)
{
    uint32_t cap = ring_cap(c);
    int64_t ttl = c->config.history_ttl_ms;
    if (ttl <= 0 || cap == 0 || c->ring_lo == c->ring_hi)
        return 0;
    int64_t cutoff = now_us - ttl * 1000;
    if (c->ring[c->ring_lo % cap]->created_us > cutoff)
        return 0;
    sl_chan_intent_t *in = &c->intent;
    intent_clear_fields(in);
    intent_begin(in, SL_CI_EXPIRE);
    SL_CRASHPOINT("chan.expire.intent");
    uint32_t n = 0;
    while (c->ring_lo < c->ring_hi && c->ring[c->ring_lo % cap]->created_us <= cutoff) {
        ring_pop(c);
        finish_drop(r, c);
        n++;
    }
    /* The last retained message gone from a channel nobody subscribes to:
     * its linger starts now ("no subscriber and no retained message for
     * --channel-linger-ms"), not at the last unsubscribe long ago (review
     * r15 L4).  One store: killed before it, the linger is just shorter. */
    if (c->ring_lo == c->ring_hi && c->subscribers == 0)
        uatomic_set(&c->empty_since, sl_mono_ms());
    intent_end(in);
    uatomic_add(&r->expired, n);
    return n;
}

bool sl_chan_expire(sl_reg_t *r, sl_chan_t *c, int64_t now_us, uint32_t *dropped)
{
    *dropped = 0;
    if (c->config.history_ttl_ms <= 0 || sl_chan_retained_count(c) == 0)
        return true;
    if (sl_lock_try(&c->lock) != SL_OK)
        return false;
    if (!c->deleted)
        *dropped = expire_locked(r, c, now_us);
    sl_lock_release(&c->lock);
    return true;
}

/* ------------------------------------------------------------ publish */

int sl_chan_publish(sl_reg_t *r, sl_chan_t *c, const sl_chan_pub_t *p, sl_chan_pub_result_t *out)
{
    memset(out, 0, sizeof(*out));
    sl_lock_acquire(&c->lock);
    if (c->deleted) {
        sl_lock_release(&c->lock);
        return SL_CHAN_NOT_SUBSCRIBED;
    }
    uint64_t seq = c->next_seq;
    uint64_t targets = targets_of(r, c);
    bool retain = ring_cap(c) > 0;
    if (retain)
        expire_locked(r, c, sl_mono_us()); /* before: not counted against the ring */
    uint64_t msg_id = uatomic_add_return(&r->next_msg_id, 1);
    if (targets == 0 && !retain) {
        /* Nobody to deliver to and nothing to keep: only the seq moves. */
        uatomic_set(&c->next_seq, seq + 1);
        sl_lock_release(&c->lock);
        out->seq = seq;
        out->message_id = msg_id;
        return SL_OK;
    }
    sl_chan_msg_t *m = encode(r, c, p, seq, msg_id);
    if (m == NULL) {
        sl_lock_release(&c->lock);
        return SL_CHAN_NO_MEMORY;
    }
    SL_CRASHPOINT("chan.pub.encoded");
    sl_chan_intent_t *in = &c->intent;
    intent_clear_fields(in);
    in->targets = targets;
    in->msg = m;
    in->seq = seq;
    in->ring_lo = c->ring_lo;
    in->ring_hi = c->ring_hi;
    intent_begin(in, SL_CI_PUB);
    SL_CRASHPOINT("chan.pub.intent");
    sl_inbox_entry_t tmpl = {.kind = SL_INBOX_CHANNEL_MSG,
                             .exclude_conn = p->exclude_sender ? p->sender_conn_no : 0};
    sl_inbox_note_t note = {.chan_hash = c->node.hash, .serial = c->serial, .seq = seq};
    /* The ring's reference is counted in from the start: nobody can drop
     * the last reference while we still store m in the ring. */
    uint64_t got = hand_off(r, in, m, &tmpl, retain ? 1 : 0, &note, 0, NULL);
    if (got == 0 && targets != 0) {
        /* Every target inbox is full: nothing went out, no seq taken. */
        intent_end(in);
        sl_lock_release(&c->lock);
        SL_CRASHPOINT("chan.pub.refused"); /* killed here: m leaks */
        sl_arena_free(r->arena, m);
        return SL_CHAN_OVERLOADED;
    }
    /* From here on m may be consumed and freed by the workers that got it,
     * unless the ring holds the reference counted for it: only the ring
     * step below uses m, and only when retain. */
    uatomic_set(&c->next_seq, seq + 1);
    SL_CRASHPOINT("chan.pub.seq");
    if (retain) {
        ring_store(c, m);
        finish_drop(r, c); /* the message the ring pushed out, if any */
    }
    intent_end(in);
    SL_CRASHPOINT("chan.pub.done");
    out->delivered_to = subscribers_on(r, c, got);
    sl_lock_release(&c->lock);
    SL_CRASHPOINT("chan.pub.handed");
    if (SL_MUTATED(M_READ_AFTER_HANDOFF) && !retain && m->refs == 0)
        sl_arena_free(r->arena, m); /* mutant: finding 1, reads references it gave away */
    out->seq = seq;
    out->message_id = msg_id;
    out->woken = got;
    out->skipped = targets & ~got;
    return SL_OK;
}

/* --------------------------------------------------------------- send */

int sl_chan_send(sl_reg_t *r, sl_chan_t *c, const uint8_t *frame, size_t len,
                 const char *exclude_conn_id, uint64_t exclude_conn,
                 void (*fn)(const char *conn_id, void *arg), void *arg, uint32_t *recipients,
                 uint64_t *woken)
{
    *recipients = 0;
    *woken = 0;
    sl_lock_acquire(&c->lock);
    /* Subscribers on a dead worker (the mask) are no recipients: a
     * channel left with none of its targets is "no one", not a refusal,
     * as in publish / deliver (review rt15 T2). */
    uint64_t targets = targets_of(r, c);
    uint32_t n = 0;
    for (sl_sub_t *s = c->deleted ? NULL : c->subs; s; s = s->next)
        if (!(exclude_conn_id && strcmp(sl_sub_conn_id(s), exclude_conn_id) == 0) &&
            (targets >> s->worker & 1))
            n++;
    if (n == 0) {
        sl_lock_release(&c->lock);
        return SL_OK;
    }
    sl_chan_msg_t *m = msg_of_frame(r, c, frame, len);
    if (m == NULL) {
        sl_lock_release(&c->lock);
        return SL_CHAN_NO_MEMORY;
    }
    SL_CRASHPOINT("chan.send.allocated");
    sl_chan_intent_t *in = &c->intent;
    intent_clear_fields(in);
    in->targets = targets;
    in->msg = m;
    intent_begin(in, SL_CI_SEND);
    SL_CRASHPOINT("chan.send.intent");
    sl_inbox_entry_t tmpl = {.kind = SL_INBOX_CHANNEL_MSG, .exclude_conn = exclude_conn};
    uint64_t got = hand_off(r, in, m, &tmpl, 0, NULL, 0, NULL);
    intent_end(in);
    if (got == 0) {
        sl_lock_release(&c->lock);
        SL_CRASHPOINT("chan.send.refused"); /* killed here: m leaks */
        sl_arena_free(r->arena, m);
        return SL_CHAN_OVERLOADED;
    }
    n = 0;
    for (sl_sub_t *s = c->subs; s; s = s->next) {
        const char *conn_id = sl_sub_conn_id(s);
        if ((exclude_conn_id && strcmp(conn_id, exclude_conn_id) == 0) ||
            !(got >> s->worker & 1))
            continue;
        n++;
        if (fn)
            fn(conn_id, arg);
    }
    sl_lock_release(&c->lock);
    *recipients = n;
    *woken = got;
    return SL_OK;
}

int sl_chan_send_presence(sl_reg_t *r, sl_chan_t *c, const uint8_t *frame, size_t len,
                          uint64_t exclude_conn, uint64_t *woken)
{
    *woken = 0;
    sl_lock_acquire(&c->lock);
    /* Only subscribers on a dead worker: no one to tell (rt15 T2). */
    uint64_t targets = c->deleted ? 0 : targets_of(r, c);
    if (c->deleted || c->subscribers == 0 || targets == 0) {
        sl_lock_release(&c->lock);
        return SL_OK;
    }
    sl_chan_msg_t *m = msg_of_frame(r, c, frame, len);
    if (m == NULL) {
        sl_lock_release(&c->lock);
        return SL_CHAN_NO_MEMORY;
    }
    /* For the subscriptions there are now, as a local join / leave. */
    m->horizon = c->sub_seq;
    SL_CRASHPOINT("chan.send.allocated");
    sl_chan_intent_t *in = &c->intent;
    intent_clear_fields(in);
    in->targets = targets;
    in->msg = m;
    intent_begin(in, SL_CI_SEND);
    SL_CRASHPOINT("chan.send.intent");
    sl_inbox_entry_t tmpl = {.kind = SL_INBOX_CHANNEL_MSG, .exclude_conn = exclude_conn};
    sl_inbox_note_t note = {.chan_hash = c->node.hash,
                            .serial = c->serial,
                            .seq = SL_INBOX_SEQ_PRESENCE,
                            .horizon = c->sub_seq};
    /* HO_PRESENCE: a remote join / leave that finds an inbox full is a
     * presence note, not a refusal, as a local one (review rs 3). */
    uint64_t got = hand_off(r, in, m, &tmpl, 0, &note, HO_RESERVE | HO_PRESENCE, NULL);
    intent_end(in);
    sl_lock_release(&c->lock);
    if (got == 0) {
        SL_CRASHPOINT("chan.send.refused"); /* killed here: m leaks */
        sl_arena_free(r->arena, m);
        return SL_CHAN_OVERLOADED;
    }
    *woken = got;
    return SL_OK;
}

static int send_entry(sl_reg_t *r, int kind, int worker, uint32_t slot, uint64_t conn_no,
                      uint64_t tag, const uint8_t *frame, size_t len)
{
    if (worker < 0 || (uint32_t)worker >= r->nworkers)
        return SL_CHAN_NOT_SUBSCRIBED;
    sl_chan_msg_t *m = msg_of_frame(r, NULL, frame, frame ? len : 0);
    if (m == NULL)
        return SL_CHAN_NO_MEMORY;
    SL_CRASHPOINT("chan.direct.allocated");
    m->refs = 1;
    sl_inbox_t *in = r->inboxes[worker];
    sl_inbox_lock(in);
    if (!sl_inbox_has_room(in, 1)) {
        sl_inbox_unlock(in);
        SL_CRASHPOINT("chan.direct.refused"); /* killed here: m leaks */
        sl_arena_free(r->arena, m);
        return SL_CHAN_OVERLOADED;
    }
    sl_inbox_entry_t e = {.kind = (uint32_t)kind, .target_slot = slot, .target_conn = conn_no,
                          .tag = tag, .msg = m};
    sl_inbox_prepare(in, &e, NULL); /* one inbox: committed by its own tail store */
    sl_inbox_push_prepared(in);
    sl_inbox_unlock(in);
    return SL_OK;
}

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

/* ---------------------------------------------------------- broadcast */

void sl_chan_bcast_recover(void *arg)
{
    sl_reg_t *r = arg;
    sl_chan_intent_t *in = &r->bcast.intent;
    if (in->op != SL_CI_NONE && !SL_MUTATED(M_CHAN_RECOVER))
        hand_off_recover(r, in, NULL);
    intent_end(in);
}

int sl_chan_broadcast(sl_reg_t *r, uint64_t workers, const uint8_t *frame, size_t len,
                      uint64_t *reached)
{
    *reached = 0;
    workers &= r->nworkers >= 64 ? ~(uint64_t)0 : ((uint64_t)1 << r->nworkers) - 1;
    workers &= ~uatomic_read(&r->dead_workers); /* as targets_of */
    if (workers == 0)
        return SL_OK;
    sl_chan_msg_t *m = msg_of_frame(r, NULL, frame, len);
    if (m == NULL)
        return SL_CHAN_NO_MEMORY;
    SL_CRASHPOINT("chan.bcast.allocated"); /* killed here: m leaks */
    sl_lock_acquire(&r->bcast.lock);
    sl_chan_intent_t *in = &r->bcast.intent;
    intent_clear_fields(in);
    in->targets = workers;
    in->msg = m;
    intent_begin(in, SL_CI_BCAST);
    sl_inbox_entry_t tmpl = {.kind = SL_INBOX_BROADCAST};
    uint64_t got = hand_off(r, in, m, &tmpl, 0, NULL, 0, NULL);
    intent_end(in);
    sl_lock_release(&r->bcast.lock);
    if (got == 0) {
        SL_CRASHPOINT("chan.bcast.refused"); /* killed here: m leaks */
        sl_arena_free(r->arena, m);
        return SL_CHAN_OVERLOADED;
    }
    *reached = got;
    return SL_OK;
}

/* ------------------------------------------------------------- listing */

void sl_chan_subscribers(sl_chan_t *c, void (*fn)(const char *conn_id, void *arg), void *arg)
{
    sl_lock_acquire(&c->lock);
    for (sl_sub_t *s = c->deleted ? NULL : c->subs; s; s = s->next)
        fn(sl_sub_conn_id(s), arg);
    sl_lock_release(&c->lock);
}

uint64_t sl_chan_retained(sl_reg_t *r, sl_chan_t *c, uint64_t since,
                          void (*fn)(const char *json, size_t len, void *arg), void *arg,
                          uint64_t *last, char *epoch)
{
    uint64_t oldest = 0;
    /* A channel that retains nothing by configuration (retention 0, the
     * common case; fixed at creation) has no ring: last = next_seq - 1
     * and oldest = 0 are then one consistent answer, read without the
     * lock.  With a ring the lock is taken: a publisher moves next_seq,
     * ring_lo and ring_hi one store at a time (seq before the ring, a
     * full ring popped before it is stored), and only the locked walk -
     * after sl_lock_acquire has repaired a publisher killed in between -
     * never sees those intermediate states (review r19, finding 1). */
    if (ring_cap(c) == 0) {
        *last = __atomic_load_n(&c->next_seq, __ATOMIC_ACQUIRE) - 1;
        return 0;
    }
    sl_lock_acquire(&c->lock);
    if (!c->deleted)
        expire_locked(r, c, sl_mono_us());
    *last = c->next_seq - 1;
    if (epoch)
        memcpy(epoch, c->epoch, sizeof(c->epoch));
    uint32_t cap = ring_cap(c);
    for (uint64_t pos = c->ring_lo; pos < c->ring_hi; pos++) {
        sl_chan_msg_t *m = c->ring[pos % cap];
        if (pos == c->ring_lo)
            oldest = m->seq;
        if (m->seq > since)
            fn((const char *)m->frame + m->payload_off, m->len - m->payload_off, arg);
    }
    sl_lock_release(&c->lock);
    return oldest;
}

void sl_chan_history(sl_reg_t *r, sl_chan_t *c, const sl_chan_history_q_t *q,
                     void (*fn)(const sl_chan_msg_t *m, void *arg), void *arg,
                     sl_chan_history_t *out)
{
    memset(out, 0, sizeof(*out));
    sl_lock_acquire(&c->lock);
    if (!c->deleted)
        expire_locked(r, c, sl_mono_us());
    out->top_seq = c->next_seq - 1;
    uint32_t cap = ring_cap(c);
    uint64_t n = c->ring_hi - c->ring_lo;
    if (n)
        out->oldest_seq = c->ring[c->ring_lo % cap]->seq;
    size_t bytes = 0;
    /* Seqs rise along the ring: find where the page starts by bisection
     * instead of walking past every older (newer) one under the lock
     * (review r15 M1).  skip: how many are passed over first. */
    uint64_t skip = 0;
    if (q->has_since && n) {
        uint64_t lo = 0, hi = n; /* first index (oldest first) with seq > since (>= for reverse) */
        while (lo < hi) {
            uint64_t mid = lo + (hi - lo) / 2;
            uint64_t s = c->ring[(c->ring_lo + mid) % cap]->seq;
            if (q->reverse ? s < q->since : s <= q->since)
                lo = mid + 1;
            else
                hi = mid;
        }
        skip = q->reverse ? n - lo : lo;
    }
    for (uint64_t i = skip; i < n; i++) {
        uint64_t pos = q->reverse ? c->ring_hi - 1 - i : c->ring_lo + i;
        const sl_chan_msg_t *m = c->ring[pos % cap];
        if (q->has_since && (q->reverse ? m->seq >= q->since : m->seq <= q->since))
            continue;
        if (out->count == q->limit || (out->count > 0 && bytes + m->len > q->max_bytes)) {
            out->more = true;
            break;
        }
        fn(m, arg);
        out->count++;
        bytes += m->len;
    }
    sl_lock_release(&c->lock);
}

/* ------------------------------------------------------------- delete */

/* Everything of a delete after its notice went out (or when it had none):
 * idempotent, so recovery runs it again from wherever the dead owner was.
 * Lock held.  Returns the subscriptions removed. */
static uint32_t delete_rest(sl_reg_t *r, sl_chan_t *c)
{
    sl_chan_intent_t *in = &c->intent;
    CMM_STORE_SHARED(c->deleted, true);
    SL_CRASHPOINT("chan.del.marked");
    uint32_t n = 0;
    for (sl_sub_t *s; (s = c->subs) != NULL; n++) {
        in->sub = s;
        in->sub_hash = s->node.hash;
        SL_CRASHPOINT("chan.del.sub-noted");
        /* Unlink before retire (one store, for lock-free readers). */
        CMM_STORE_SHARED(c->subs, s->next);
        if (s->next)
            s->next->prev = NULL;
        SL_CRASHPOINT("chan.del.sub-unlinked");
        sl_table_remove_node(r->subs, s->node.hash, &s->node);
        SL_CRASHPOINT("chan.del.sub-removed");
    }
    in->sub = NULL;
    memset(c->worker_subs, 0, sizeof(c->worker_subs));
    uatomic_set(&c->subscribers, 0);
    SL_CRASHPOINT("chan.del.counts");
    while (c->ring_lo < c->ring_hi) {
        ring_pop(c);
        finish_drop(r, c);
    }
    sl_table_remove_node(r->channels, c->node.hash, &c->node);
    SL_CRASHPOINT("chan.del.removed");
    return n;
}

int sl_chan_delete(sl_reg_t *r, const char *id, size_t len, const uint8_t *frame, size_t flen,
                   uint32_t *unsubscribed, uint64_t *woken)
{
    *unsubscribed = 0;
    *woken = 0;
    sl_chan_t *c = sl_chan_find(r, id, len);
    if (c == NULL)
        return SL_CHAN_NOT_SUBSCRIBED;
    sl_lock_acquire(&c->lock);
    if (c->deleted) {
        sl_lock_release(&c->lock);
        return SL_CHAN_NOT_SUBSCRIBED;
    }
    uint64_t targets = targets_of(r, c);
    sl_chan_msg_t *m = NULL;
    if (targets) {
        m = msg_of_frame(r, c, frame, flen);
        if (m == NULL) {
            sl_lock_release(&c->lock);
            return SL_CHAN_NO_MEMORY;
        }
        SL_CRASHPOINT("chan.del.allocated");
    }
    sl_chan_intent_t *in = &c->intent;
    intent_clear_fields(in);
    in->targets = targets;
    in->msg = m;
    intent_begin(in, SL_CI_DEL);
    SL_CRASHPOINT("chan.del.intent");
    uint64_t got = 0;
    if (targets) {
        /* The notice goes out first (after everything already published),
         * so nothing is removed unless the subscribers will be told - or,
         * on a full inbox, closed with 1013 (noted as missed). */
        sl_inbox_entry_t tmpl = {.kind = SL_INBOX_CHANNEL_GONE};
        sl_inbox_note_t note = {.chan_hash = c->node.hash, .serial = c->serial,
                                .seq = UINT64_MAX};
        got = hand_off(r, in, m, &tmpl, 0, &note, 0, NULL);
        if (got == 0) {
            intent_end(in);
            sl_lock_release(&c->lock);
            SL_CRASHPOINT("chan.del.refused"); /* killed here: m leaks */
            sl_arena_free(r->arena, m);
            return SL_CHAN_OVERLOADED;
        }
    } else {
        CMM_STORE_SHARED(in->committed, 1);
    }
    *unsubscribed = delete_rest(r, c);
    intent_end(in);
    sl_lock_release(&c->lock);
    *woken = got;
    return SL_OK;
}

/* ------------------------------------------------------------ recovery */

static void chan_recover(void *arg)
{
    sl_chan_t *c = arg;
    sl_reg_t *r = c->reg;
    sl_chan_intent_t *in = &c->intent;
    if (SL_MUTATED(M_CHAN_RECOVER)) {
        intent_end(in);
        return;
    }
    sl_sub_t *s = in->sub;
    /* A join's or leave's missed note, as commit_presence makes it. */
    sl_inbox_note_t pn = {0};
    if (s && (in->op == SL_CI_SUB || in->op == SL_CI_UNSUB))
        pn = presence_note(c, s, in->op == SL_CI_SUB);
    switch (in->op) {
    case SL_CI_SUB:
        /* Committed: the join (if any) went out; roll forward.  Not: the
         * node was never published, the join never handed out; undo. */
        if (in->targets ? hand_off_settle(r, in, &pn) : in->committed) {
            if (!on_list(c, s)) {
                s->next = c->subs;
                rcu_assign_pointer(c->subs, s);
            }
            sl_table_insert(r->subs, &s->node); /* SL_TABLE_EXISTS: it is there */
        } else {
            sl_chan_msg_t *m = in->msg;
            in->msg = NULL;
            sl_arena_free(r->arena, m);
            /* Never on the list before the commit - unless the order was
             * broken (M_JOIN_AFTER_LINK): then off it first, so that no
             * walk is left on freed memory (test_killpoints'
             * test_presence_sees_only_committed catches the order). */
            if (on_list(c, s))
                list_unlink_walk(c, s);
            in->sub = NULL;
            sl_arena_free(r->arena, s);
        }
        break;
    case SL_CI_UNSUB:
        /* By the targets, not the message: a leave with no memory for
         * it (msg NULL) committed with notes only, which the dead owner
         * may not all have made (review r15 L1). */
        if (in->targets ? hand_off_settle(r, in, &pn) : in->committed) {
            if (in->msg && in->got == 0) {
                /* A leave nobody took, not yet freed (chan.leave.unsent). */
                sl_chan_msg_t *m = in->msg;
                in->msg = NULL;
                sl_arena_free(r->arena, m);
            }
            /* Still in the table: not retired, so it may still be on the
             * list.  Not in the table: removed and retired - and, unlink
             * before retire, no longer on the list. */
            if (sl_table_has_node(r->subs, in->sub_hash, &s->node)) {
                list_unlink_walk(c, s);
                sl_table_remove_node(r->subs, in->sub_hash, &s->node);
            }
        } else {
            /* Nothing was removed; the leave never went out. */
            sl_chan_msg_t *m = in->msg;
            in->msg = NULL;
            sl_arena_free(r->arena, m);
        }
        break;
    case SL_CI_EXPIRE:
        finish_drop(r, c); /* the pop in progress, if any */
        break;
    case SL_CI_PUB:
        if (hand_off_recover(r, in,
                             &(sl_inbox_note_t){.chan_hash = c->node.hash,
                                                .serial = c->serial, .seq = in->seq})) {
            if (c->next_seq == in->seq)
                uatomic_set(&c->next_seq, in->seq + 1);
            /* The ring: a pop recorded but not made is made again below. */
            if (in->dropped && c->ring_lo == in->ring_lo)
                in->dropped = NULL;
            if (ring_cap(c) > 0 && c->ring_hi == in->ring_hi)
                ring_store(c, in->msg);
            finish_drop(r, c);
        }
        break;
    case SL_CI_SEND:
        hand_off_recover(r, in, NULL);
        break;
    case SL_CI_DLV:
        if (SL_MUTATED(M_DELIVER_RECOVER))
            break;
        {
        /* --redis delivery.  A pop of the clear or of the ring step: made
         * or not, finish_drop sorts it out; then the clear is finished
         * (while the message is not in the ring yet); committed, the rest:
         * position, ring. */
        bool done = hand_off_recover(r, in,
                                     &(sl_inbox_note_t){.chan_hash = c->node.hash,
                                                        .serial = c->serial, .seq = in->seq});
        finish_drop(r, c);
        if (in->clear && c->ring_hi == in->ring_hi)
            ring_clear(r, c);
        if (done) {
            take_position(c, in);
            if (in->msg && ring_cap(c) > 0 && c->ring_hi == in->ring_hi) {
                ring_store(c, in->msg);
                finish_drop(r, c);
            }
        }
        break;
        }
    case SL_CI_RESET:
        if (SL_MUTATED(M_DELIVER_RECOVER))
            break;
        /* --redis reset.  Not committed: nothing happened (the notice is
         * freed).  Committed: a notice no inbox took is freed (unless the
         * dead owner had), the ring emptied, the position taken. */
        if (hand_off_recover(r, in,
                             &(sl_inbox_note_t){.chan_hash = c->node.hash,
                                                .serial = c->serial, .seq = UINT64_MAX})) {
            if (in->msg && in->got == 0) {
                sl_chan_msg_t *m = in->msg;
                in->msg = NULL;
                sl_arena_free(r->arena, m);
            }
            finish_drop(r, c);
            ring_clear(r, c);
            take_position(c, in);
        }
        break;
    case SL_CI_DEL:
        /* Committed (the notice went out, or there was none): finish it. */
        if (hand_off_recover(r, in,
                             &(sl_inbox_note_t){.chan_hash = c->node.hash,
                                                .serial = c->serial, .seq = UINT64_MAX})) {
            /* A subscription noted, unlinked, maybe not yet removed. */
            if (s && !on_list(c, s))
                sl_table_remove_node(r->subs, in->sub_hash, &s->node);
            finish_drop(r, c);
            delete_rest(r, c);
        }
        break;
    }
    recount(c);
    intent_end(in);
}

/* ------------------------------------------------- the master's helpers */

int sl_chan_cleanup_sub(sl_reg_t *r, sl_sub_t *s, uint64_t *woken)
{
    sl_chan_t *c = sl_chan_find(r, s->key, s->chan_len);
    if (c == NULL) {
        /* No channel: cannot happen (a delete removes the subscriptions
         * first), but an orphan must not stay. */
        sl_table_remove_node(r->subs, s->node.hash, &s->node);
        return SL_OK;
    }
    if (sl_lock_try(&c->lock) != SL_OK)
        return SL_AGAIN;
    /* Still there?  (It may have gone with a delete meanwhile.)  In the
     * table means on the list: the lock is ours, so no update is half done. */
    int rc = SL_OK;
    uint64_t w = 0;
    if (!c->deleted && sl_table_has_node(r->subs, s->node.hash, &s->node))
        rc = unsubscribe_locked(r, c, s, 0, true, &w);
    sl_lock_release(&c->lock);
    *woken |= w;
    return rc;
}

bool sl_chan_reap(sl_reg_t *r, sl_chan_t *c, int64_t now_mono, int64_t linger_ms)
{
    if (!c->config.lingers || uatomic_read(&c->subscribers) != 0 ||
        sl_chan_retained_count(c) != 0 || now_mono - uatomic_read(&c->empty_since) < linger_ms)
        return false;
    if (sl_lock_try(&c->lock) != SL_OK)
        return false;
    bool gone = false;
    if (!c->deleted && c->subscribers == 0 && c->ring_lo == c->ring_hi &&
        now_mono - c->empty_since >= linger_ms) {
        sl_chan_intent_t *in = &c->intent;
        intent_clear_fields(in);
        in->committed = 1; /* no notice: nobody to tell */
        intent_begin(in, SL_CI_DEL);
        SL_CRASHPOINT("chan.reap.intent");
        delete_rest(r, c);
        intent_end(in);
        gone = true;
    }
    sl_lock_release(&c->lock);
    return gone;
}

typedef struct {
    void (*fn)(sl_chan_t *c, void *arg);
    void *arg;
    uint32_t seen, limit;
} page_t;

static int page_cb(sl_table_node_t *n, void *arg)
{
    page_t *p = arg;
    p->fn((sl_chan_t *)n, p->arg);
    return ++p->seen >= p->limit;
}

uint32_t sl_chan_page(sl_reg_t *r, uint32_t cursor, uint32_t limit,
                      void (*fn)(sl_chan_t *c, void *arg), void *arg)
{
    page_t p = {fn, arg, 0, limit ? limit : 1};
    uint32_t next = cursor;
    while (next < r->channels->nbuckets && p.seen < p.limit)
        next = sl_table_walk(r->channels, next, 4096, page_cb, &p);
    return next >= r->channels->nbuckets ? 0 : next;
}

void sl_chan_totals(sl_reg_t *r, sl_chan_totals_t *t)
{
    t->channels = sl_table_count(r->channels);
    t->subscriptions = sl_table_count(r->subs);
}

/* ------------------------------------------------------------ --redis */

/* Empty the ring, one recorded pop at a time (each pop and the drop of its
 * reference as ring_store's).  Lock held, an intent (DLV, RESET) recorded:
 * killed in between, recovery finishes it. */
static void ring_clear(sl_reg_t *r, sl_chan_t *c)
{
    if (SL_MUTATED(M_RING_CLEAR_ORDER)) {
        /* mutant: finding 4 of issue 17, references dropped first */
        uint32_t cap = ring_cap(c);
        for (uint64_t pos = c->ring_lo; pos < c->ring_hi; pos++) {
            sl_chan_msg_unref(r, c->ring[pos % cap]);
            SL_CRASHPOINT("chan.ring.drop-noted");
        }
        uatomic_set(&c->ring_lo, c->ring_hi);
        return;
    }
    while (c->ring_lo < c->ring_hi) {
        ring_pop(c);
        finish_drop(r, c);
    }
}

/* Take the recorded position (DLV after its commit, RESET): epoch, seq. */
static void take_position(sl_chan_t *c, const sl_chan_intent_t *in)
{
    if (in->set_epoch) {
        memcpy(c->epoch, in->epoch, sizeof(c->epoch));
        SL_CRASHPOINT("chan.pos.epoch");
        /* After the epoch (a kill between: the recovery redoes both); a
         * delivery of the same epoch follows one that set it. */
        c->cluster_pos = true;
    }
    uatomic_set(&c->next_seq, in->seq + 1);
    SL_CRASHPOINT("chan.pos.seq");
}

int sl_chan_deliver(sl_reg_t *r, sl_chan_t *c, const char *epoch, uint64_t seq, const char *json,
                    size_t len, uint64_t exclude_conn, int64_t received_us, uint64_t *woken)
{
    *woken = 0;
    if (seq == 0)
        return SL_ERROR;
    /* The frame: the text Redis sent, encoded once, built before the lock. */
    uint8_t hdr[SL_WS_MAX_HEADER];
    size_t h = sl_ws_encode_header(hdr, SL_WS_OP_TEXT, true, len, NULL);
    sl_chan_msg_t *m = sl_arena_alloc(r->arena, sizeof(*m) + h + len);
    if (m == NULL)
        return SL_CHAN_NO_MEMORY;
    SL_CRASHPOINT("chan.dlv.allocated");
    m->refs = 0;
    m->len = (uint32_t)(h + len);
    m->seq = seq;
    m->published_us = received_us;
    m->created_us = sl_mono_us(); /* the retention TTL counts from its arrival here */
    m->horizon = 0;
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
    bool other_epoch = strncmp(c->epoch, epoch, sizeof(c->epoch) - 1) != 0;
    if (!other_epoch && seq < c->next_seq) {
        /* Never back: a seq this node has handed off already (the broker
         * filters these; this is the registry's own guard). */
        sl_lock_release(&c->lock);
        sl_arena_free(r->arena, m);
        return SL_OK;
    }
    uint32_t cap = ring_cap(c);
    bool retain = cap > 0;
    /* The ring stays one run of one epoch ending at next_seq - 1, so "the
     * ring holds since+1 .. last" is a valid recovery answer: a message of
     * another epoch, or one that does not follow, empties it first. */
    bool gap = c->ring_hi > c->ring_lo && c->ring[(c->ring_hi - 1) % cap]->seq + 1 != seq;
    uint64_t targets = targets_of(r, c);
    sl_chan_intent_t *in = &c->intent;
    intent_clear_fields(in);
    in->targets = targets;
    in->seq = seq;
    in->ring_lo = c->ring_lo;
    in->ring_hi = c->ring_hi;
    in->clear = other_epoch || gap;
    in->set_epoch = other_epoch;
    snprintf(in->epoch, sizeof(in->epoch), "%s", epoch);
    if (targets == 0 && !retain) {
        /* Nobody here and nothing to keep: only the position moves (the
         * frame, never seen by anyone, goes first). */
        sl_arena_free(r->arena, m);
        CMM_STORE_SHARED(in->committed, 1);
        intent_begin(in, SL_CI_DLV);
        SL_CRASHPOINT("chan.dlv.position");
        take_position(c, in);
        intent_end(in);
        sl_lock_release(&c->lock);
        return SL_OK;
    }
    in->msg = m;
    intent_begin(in, SL_CI_DLV);
    SL_CRASHPOINT("chan.dlv.intent");
    if (in->clear)
        ring_clear(r, c);
    /* Full inboxes are skipped and noted (their subscribers are closed with
     * 1013, as for a local publish); some room is left in every inbox for
     * the broker's answers. */
    sl_inbox_entry_t tmpl = {.kind = SL_INBOX_CHANNEL_MSG, .exclude_conn = exclude_conn};
    sl_inbox_note_t note = {.chan_hash = c->node.hash, .serial = c->serial, .seq = seq};
    uint64_t got = hand_off(r, in, m, &tmpl, retain ? 1 : 0, &note, HO_RESERVE, NULL);
    if (got == 0 && targets != 0) {
        /* Every target inbox is full: nothing went out (an emptied ring
         * stays empty: still valid).  The broker tries again later. */
        intent_end(in);
        sl_lock_release(&c->lock);
        sl_arena_free(r->arena, m);
        return SL_CHAN_OVERLOADED;
    }
    /* m is the inboxes' (and the ring's, when retain) from here on. */
    take_position(c, in);
    if (retain) {
        ring_store(c, m);
        finish_drop(r, c);
    }
    intent_end(in);
    sl_lock_release(&c->lock);
    SL_CRASHPOINT("chan.dlv.done");
    *woken = got;
    return SL_OK;
}

int sl_chan_reset(sl_reg_t *r, sl_chan_t *c, const char *epoch, uint64_t last, int how,
                  uint64_t *woken)
{
    *woken = 0;
    sl_chan_msg_t *m = NULL;
    if (how == SL_CHAN_RESET_NOTIFY) {
        m = msg_of_frame(r, c, (const uint8_t *)"", 0);
        if (m == NULL)
            return SL_CHAN_NO_MEMORY;
        SL_CRASHPOINT("chan.reset.allocated");
    }
    sl_lock_acquire(&c->lock);
    if (c->deleted) {
        sl_lock_release(&c->lock);
        sl_arena_free(r->arena, m);
        return SL_CHAN_NOT_SUBSCRIBED;
    }
    if (how == SL_CHAN_RESET_FORWARD && epoch &&
        strncmp(c->epoch, epoch, sizeof(c->epoch) - 1) == 0 && c->next_seq > last) {
        sl_lock_release(&c->lock); /* not behind: nothing to do */
        return SL_OK;
    }
    sl_chan_intent_t *in = &c->intent;
    intent_clear_fields(in);
    in->targets = m ? targets_of(r, c) : 0;
    in->msg = in->targets ? m : NULL;
    in->clear = 1;
    in->set_epoch = epoch != NULL;
    if (epoch)
        snprintf(in->epoch, sizeof(in->epoch), "%s", epoch);
    in->seq = epoch ? last : c->next_seq - 1; /* no epoch: the position stays */
    in->ring_hi = c->ring_hi;
    if (in->msg == NULL)
        CMM_STORE_SHARED(in->committed, 1); /* nobody to tell */
    intent_begin(in, SL_CI_RESET);
    SL_CRASHPOINT("chan.reset.intent");
    uint64_t got = 0;
    if (in->msg) {
        /* Always commits: a full inbox is noted as missed, and its worker
         * closes those subscribers with 1013 instead - either way they
         * resubscribe and learn what was lost. */
        sl_inbox_entry_t tmpl = {.kind = SL_INBOX_CHANNEL_RESET};
        sl_inbox_note_t note = {.chan_hash = c->node.hash, .serial = c->serial,
                                .seq = UINT64_MAX};
        got = hand_off(r, in, m, &tmpl, 0, &note, HO_ALWAYS, NULL);
        if (got == 0) {
            /* No inbox took it: it is nobody's.  The record goes first, so
             * a kill in between leaks it rather than freeing it twice. */
            in->msg = NULL;
            SL_CRASHPOINT("chan.reset.unused");
            sl_arena_free(r->arena, m);
        }
        m = NULL;
    }
    ring_clear(r, c);
    take_position(c, in);
    intent_end(in);
    sl_lock_release(&c->lock);
    sl_arena_free(r->arena, m); /* allocated, but nobody subscribed here */
    *woken = got;
    return SL_OK;
}

void sl_chan_set_config(sl_chan_t *c, const sl_chan_config_t *cfg)
{
    /* Single stores, each valid alone (the ring keeps its size). */
    sl_lock_acquire(&c->lock);
    uatomic_set(&c->config.max_subscribers, cfg->max_subscribers);
    uatomic_set(&c->config.rpc_timeout_ms, cfg->rpc_timeout_ms);
    c->config.telemetry_enabled = cfg->telemetry_enabled;
    sl_lock_release(&c->lock);
}

uint64_t sl_chan_position(sl_chan_t *c, char *epoch, bool *cluster)
{
    sl_lock_acquire(&c->lock);
    uint64_t last = c->next_seq - 1;
    if (epoch)
        memcpy(epoch, c->epoch, sizeof(c->epoch));
    if (cluster)
        *cluster = c->cluster_pos;
    sl_lock_release(&c->lock);
    return last;
}
