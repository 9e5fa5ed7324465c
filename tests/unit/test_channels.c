/*
 * test_channels.c - channel registry operations: create, ids, subscribe
 * limits and idempotency, unsubscribe, publish (seq, inbox hand-off,
 * references, retention ring), overload without a seq gap, retained
 * messages, a dead worker's cleanup, and the missed-message notes of a
 * full inbox (which message, ordered by inbox position, overflow).
 */
#include "sl_chan.h"
#include "sl_test.h"

#include <stddef.h>
#include <stdio.h>
#include <sys/mman.h>

static sl_reg_t *R;

static void setup(void)
{
    size_t sz = 16 << 20;
    uint8_t *m = mmap(NULL, sz, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    R = (sl_reg_t *)m;
    SL_CHECK_INT(sl_reg_init(R, m + 65536, sz - 65536, &(sl_reg_limits_t){.max_connections = 1000, .max_channels = 1000, .nworkers = 2}), SL_OK);
    sl_qsbr_register(&R->qsbr, 0);
}

static const sl_chan_config_t CFG = {.max_subscribers = 2, .message_retention = 3,
                                     .rpc_timeout_ms = 1000, .telemetry_enabled = true};

static void test_ids(void)
{
    SL_CHECK(sl_chan_id_valid("room", 4));
    SL_CHECK(sl_chan_id_valid("r\xc3\xa9sum\xc3\xa9/with spaces", 20));
    SL_CHECK(!sl_chan_id_valid("", 0));
    SL_CHECK(!sl_chan_id_valid("a\tb", 3));
    SL_CHECK(!sl_chan_id_valid("a\x7f", 2));
    SL_CHECK(!sl_chan_id_valid("a\xc2\x85", 3)); /* C1 NEL */
    SL_CHECK(!sl_chan_id_valid("\xff", 1));
    char big[130];
    memset(big, 'x', sizeof(big));
    SL_CHECK(sl_chan_id_valid(big, 128));
    SL_CHECK(!sl_chan_id_valid(big, 129));
}

static void test_create_subscribe(void)
{
    setup();
    sl_chan_t *c, *c2;
    SL_CHECK_INT(sl_chan_create(R, "ch", 2, &CFG, &c), SL_CHAN_CREATED);
    SL_CHECK_INT(sl_chan_create(R, "ch", 2, &CFG, &c2), SL_CHAN_EXISTS);
    SL_CHECK(c == c2 && sl_chan_find(R, "ch", 2) == c);
    SL_CHECK(strlen(c->epoch) == 12);
    uint32_t n;
    SL_CHECK_INT(sl_chan_subscribe(R, c, "conn-1", 0, 5, &n), SL_OK);
    SL_CHECK_INT(n, 1);
    SL_CHECK_INT(sl_chan_subscribe(R, c, "conn-1", 0, 5, &n), SL_CHAN_ALREADY);
    SL_CHECK_INT(n, 1);
    SL_CHECK_INT(sl_chan_subscribe(R, c, "conn-2", 1, 6, &n), SL_OK);
    SL_CHECK_INT(sl_chan_subscribe(R, c, "conn-3", 1, 7, &n), SL_CHAN_FULL);
    SL_CHECK_INT(c->worker_subs[0], 1);
    SL_CHECK_INT(c->worker_subs[1], 1);
    SL_CHECK_INT(sl_chan_unsubscribe(R, c, "conn-3", &n), SL_CHAN_NOT_SUBSCRIBED);
    SL_CHECK_INT(sl_chan_unsubscribe(R, c, "conn-2", &n), SL_OK);
    SL_CHECK_INT(n, 1);
    SL_CHECK_INT(c->worker_subs[1], 0);
    sl_chan_totals_t t;
    sl_chan_totals(R, &t);
    SL_CHECK_INT(t.channels, 1);
    SL_CHECK_INT(t.subscriptions, 1);
}

static void collect(const char *json, size_t len, void *arg)
{
    char *out = arg;
    strncat(out, json, len);
    strcat(out, "|");
}

static void test_publish_and_retention(void)
{
    setup();
    sl_chan_t *c;
    sl_chan_create(R, "p\"q", 3, &CFG, &c);
    uint32_t n;
    sl_chan_subscribe(R, c, "conn-a", 1, 0, &n);
    sl_chan_pub_t p = {.data_json = "{\"x\":1}", .data_len = 7, .sender_conn_id = "conn-s",
                       .sender_conn_no = 9, .exclude_sender = true, .published_at = 42};
    sl_chan_pub_result_t r;
    for (int i = 1; i <= 5; i++) {
        SL_CHECK_INT(sl_chan_publish(R, c, &p, &r), SL_OK);
        SL_CHECK_INT(r.seq, i);
        SL_CHECK_INT(r.delivered_to, 1);
        SL_CHECK_INT(r.woken, 2); /* worker 1 only */
    }
    SL_CHECK_INT(sl_inbox_depth(R->inboxes[1]), 5);
    SL_CHECK_INT(sl_inbox_depth(R->inboxes[0]), 0);
    sl_inbox_entry_t e;
    SL_CHECK(sl_inbox_pop(R->inboxes[1], &e, NULL));
    SL_CHECK_INT(e.exclude_conn, 9);
    SL_CHECK_INT(e.msg->seq, 1);
    const char *payload = (const char *)e.msg->frame + e.msg->payload_off;
    const char *want = "{\"type\":\"channel-message\",\"channel-id\":\"p\\\"q\",\"message-id\":\"msg-1\","
                       "\"seq\":1,\"data\":{\"x\":1},\"sender-conn-id\":\"conn-s\","
                       "\"published-at\":42}";
    SL_CHECK(e.msg->len - e.msg->payload_off == strlen(want) &&
             memcmp(payload, want, strlen(want)) == 0);
    SL_CHECK_INT(e.msg->frame[0], 0x81);
    /* Seq 1 fell out of the 3-message ring: only the inbox holds it now. */
    SL_CHECK_INT(e.msg->refs, 1);
    sl_chan_msg_unref(R, e.msg);
    while (sl_inbox_pop(R->inboxes[1], &e, NULL))
        sl_chan_msg_unref(R, e.msg);
    char out[4096] = "";
    uint64_t last;
    SL_CHECK_INT(sl_chan_retained(c, 0, collect, out, &last), 3);
    SL_CHECK_INT(last, 5);
    SL_CHECK(strstr(out, "\"seq\":3") && strstr(out, "\"seq\":5") && !strstr(out, "\"seq\":2"));
    out[0] = '\0';
    sl_chan_retained(c, 4, collect, out, &last);
    SL_CHECK(strstr(out, "\"seq\":5") && !strstr(out, "\"seq\":4"));
    SL_CHECK_INT(sl_chan_message_count(c), 5);
}

static void test_overload_keeps_seq(void)
{
    setup();
    sl_chan_config_t cfg = CFG;
    cfg.message_retention = 0;
    sl_chan_t *c;
    sl_chan_create(R, "busy", 4, &cfg, &c);
    uint32_t n;
    sl_chan_subscribe(R, c, "conn-a", 0, 0, &n);
    sl_chan_pub_t p = {.data_json = "1", .data_len = 1, .published_at = 1};
    sl_chan_pub_result_t r;
    for (int i = 0; i < SL_INBOX_CAP; i++)
        SL_CHECK_INT(sl_chan_publish(R, c, &p, &r), SL_OK);
    SL_CHECK_INT(sl_chan_publish(R, c, &p, &r), SL_CHAN_OVERLOADED);
    sl_inbox_entry_t e;
    SL_CHECK(sl_inbox_pop(R->inboxes[0], &e, NULL));
    sl_chan_msg_unref(R, e.msg);
    SL_CHECK_INT(sl_chan_publish(R, c, &p, &r), SL_OK);
    SL_CHECK_INT(r.seq, SL_INBOX_CAP + 1); /* the refused one took no seq */
    SL_CHECK_INT(R->inboxes[0]->refused, 1);
    while (sl_inbox_pop(R->inboxes[0], &e, NULL))
        sl_chan_msg_unref(R, e.msg);
}

static void test_no_subscribers_frees(void)
{
    setup();
    sl_chan_config_t cfg = CFG;
    cfg.message_retention = 0;
    sl_chan_t *c;
    sl_chan_create(R, "empty", 5, &cfg, &c);
    sl_arena_stats_t before, after;
    sl_arena_stats(R->arena, &before);
    sl_chan_pub_t p = {.data_json = "1", .data_len = 1, .published_at = 1};
    sl_chan_pub_result_t r;
    SL_CHECK_INT(sl_chan_publish(R, c, &p, &r), SL_OK);
    SL_CHECK_INT(r.delivered_to, 0);
    sl_arena_stats(R->arena, &after);
    SL_CHECK_INT(after.used_bytes, before.used_bytes);
}

static void test_worker_cleanup(void)
{
    setup();
    sl_chan_t *a, *b;
    sl_chan_config_t cfg = CFG;
    cfg.max_subscribers = 100;
    sl_chan_create(R, "a", 1, &cfg, &a);
    sl_chan_create(R, "b", 1, &cfg, &b);
    uint32_t n;
    char id[32];
    for (int i = 0; i < 10; i++) {
        snprintf(id, sizeof(id), "conn-%d", i);
        sl_chan_subscribe(R, a, id, i % 2, (uint32_t)i, &n);
        sl_chan_subscribe(R, b, id, i % 2, (uint32_t)i, &n);
    }
    /* A message waits in worker 1's inbox when it dies. */
    sl_chan_pub_t p = {.data_json = "1", .data_len = 1, .published_at = 1};
    sl_chan_pub_result_t r;
    sl_chan_publish(R, a, &p, &r);
    sl_reg_worker_cleanup(R, 1);
    SL_CHECK_INT(a->subscribers, 5);
    SL_CHECK_INT(b->subscribers, 5);
    SL_CHECK_INT(a->worker_subs[1], 0);
    SL_CHECK_INT(sl_inbox_depth(R->inboxes[1]), 0);
    sl_chan_totals_t t;
    sl_chan_totals(R, &t);
    SL_CHECK_INT(t.subscriptions, 10);
}

typedef struct {
    int n, all;
    uint64_t lost_below, index[600];
    sl_inbox_note_t got[600];
} notes_t;

static void take_note(const sl_inbox_note_t *note, uint64_t index, void *arg)
{
    notes_t *x = arg;
    if (note == NULL) {
        x->all++;
        x->lost_below = index;
    } else {
        x->index[x->n] = index;
        x->got[x->n++] = *note;
    }
}

/* A publish that skips a full inbox notes which message of which channel
 * incarnation was missed, and where in the inbox; the consumer gets the
 * notes made before an entry's position before that entry, the rest once it
 * has everything; more than the ring trusts (SL_INBOX_MISSED - 1) since it
 * last looked is "anything" (NULL) once. */
static void test_missed_notes(void)
{
    setup();
    sl_chan_t *c;
    sl_chan_create(R, "m", 1, &CFG, &c);
    uint32_t n;
    uint64_t last = 99;
    SL_CHECK_INT(sl_chan_subscribe_at(R, c, "conn-1", 1, 1, &n, &last), SL_OK);
    SL_CHECK_INT(last, 0); /* nothing published yet */
    sl_inbox_t *in = R->inboxes[1];
    static const uint8_t F[] = {0x81, 0x02, '{', '}'};
    for (int i = 0; i < SL_INBOX_CAP; i++)
        SL_CHECK_INT(sl_chan_send_direct(R, 1, 0, 1, 0, F, sizeof(F)), SL_OK);
    sl_chan_pub_t p = {.data_json = "1", .data_len = 1, .published_at = 1};
    sl_chan_pub_result_t res;
    /* Only worker 1 has subscribers, and its inbox is full: refused. */
    SL_CHECK_INT(sl_chan_publish(R, c, &p, &res), SL_CHAN_OVERLOADED);
    SL_CHECK_INT(in->missed_n, 0);
    SL_CHECK_INT(sl_chan_subscribe(R, c, "conn-0", 0, 1, &n), SL_OK);
    SL_CHECK_INT(sl_chan_publish(R, c, &p, &res), SL_OK); /* to worker 0; worker 1 noted */
    SL_CHECK(res.skipped == 2 && res.woken == 1);
    SL_CHECK_INT(in->missed_n, 1);
    notes_t x = {0};
    uint64_t seen = 0;
    sl_inbox_missed(in, &seen, in->tail - 1, take_note, &x); /* before the note's position */
    SL_CHECK_INT(x.n, 0);
    sl_inbox_missed(in, &seen, in->tail, take_note, &x);
    SL_CHECK_INT(x.n, 1);
    SL_CHECK(x.got[0].chan_hash == c->node.hash && x.got[0].serial == c->serial);
    SL_CHECK_INT(x.got[0].seq, res.seq);
    SL_CHECK_INT(x.got[0].pos, in->tail);
    SL_CHECK_INT(x.index[0], 0);
    SL_CHECK_INT(seen, 1);
    /* A delete notice that skips the inbox is noted as seq "infinity". */
    uint64_t woken;
    SL_CHECK_INT(sl_chan_delete(R, "m", 1, F, sizeof(F), &n, &woken), SL_OK);
    sl_inbox_missed(in, &seen, UINT64_MAX, take_note, &x);
    SL_CHECK_INT(x.n, 2);
    SL_CHECK(x.got[1].seq == UINT64_MAX && x.got[1].serial == c->serial);
    /* SL_INBOX_MISSED - 1 notes since we looked are trusted; one more is
     * "anything may have been missed", given once. */
    sl_inbox_lock(in);
    for (int i = 0; i < SL_INBOX_MISSED - 1; i++)
        sl_inbox_note_missed(in, &(sl_inbox_note_t){.chan_hash = 1000 + i, .serial = 1, .seq = 1});
    sl_inbox_unlock(in);
    x.n = 0;
    sl_inbox_missed(in, &seen, UINT64_MAX, take_note, &x);
    SL_CHECK_INT(x.n, SL_INBOX_MISSED - 1);
    SL_CHECK_INT(x.all, 0);
    sl_inbox_lock(in);
    for (int i = 0; i < SL_INBOX_MISSED; i++)
        sl_inbox_note_missed(in, &(sl_inbox_note_t){.chan_hash = 2000 + i, .serial = 1, .seq = 1});
    sl_inbox_unlock(in);
    x.n = 0;
    sl_inbox_missed(in, &seen, UINT64_MAX, take_note, &x);
    SL_CHECK_INT(x.n, 0);
    SL_CHECK_INT(x.all, 1);
    SL_CHECK_INT(x.lost_below, in->missed_n); /* every note before now may be lost */
    SL_CHECK_INT(seen, in->missed_n);
}

/* The figures of shm/README.md's object-size table (review r19, finding
 * 3): a subscription is offsetof(sl_sub_t, key) = 76 B + its key + 1,
 * so keys up to 51 bytes take the arena's 128 B class and every other one
 * - up to the longest, SL_SUB_KEY_MAX - 1 = 168 bytes: 245 B - the 256 B
 * class.  Change the table with these numbers. */
static void test_sub_sizes_in_the_design_note(void)
{
    SL_CHECK_INT(offsetof(sl_sub_t, key), 76);
    SL_CHECK(offsetof(sl_sub_t, key) + 51 + 1 <= 128);
    SL_CHECK(offsetof(sl_sub_t, key) + 52 + 1 > 128);
    SL_CHECK_INT(SL_SUB_KEY_MAX - 1, 168);
    SL_CHECK(offsetof(sl_sub_t, key) + SL_SUB_KEY_MAX <= 256);
}

int main(void)
{
    SL_TEST_RUN(test_ids);
    SL_TEST_RUN(test_create_subscribe);
    SL_TEST_RUN(test_publish_and_retention);
    SL_TEST_RUN(test_overload_keeps_seq);
    SL_TEST_RUN(test_no_subscribers_frees);
    SL_TEST_RUN(test_worker_cleanup);
    SL_TEST_RUN(test_missed_notes);
    SL_TEST_RUN(test_sub_sizes_in_the_design_note);
    return sl_test_summary();
}
