/*
 * test_brq.c - the broker's request queue (shm/brq.c) under processes that
 * are killed.
 *
 *   - round trip: a request and its payload, a result into a worker's
 *     inbox, a full queue refused (counted) with its payload given back;
 *   - producers killed: four processes queue requests as fast as they can
 *     (each payload derived from its tag, so a torn or mixed-up entry fails
 *     a check); one is SIGKILLed at a random moment, another kills itself
 *     while holding the queue's lock (the next producer gets EOWNERDEAD, the
 *     inbox lock's recovery makes or drops the recorded push, and it goes
 *     on).  The
 *     consumer checks every entry whole and each producer's entries in
 *     order without duplicates; at the end the arena balances but for at
 *     most the two payloads the killed producers had allocated;
 *   - consumer killed: a broker-like child pops and frees, and is
 *     SIGKILLed at a random moment; the next consumer goes on from the next
 *     entry, and at most the one payload in the dead one's hands leaks.
 */
#include "sl_brq.h"
#include "sl_test.h"

#include <signal.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <urcu/uatomic.h>

static sl_reg_t *R;
static sl_inbox_t *Q;

static void setup(void)
{
    size_t sz = 32 << 20;
    uint8_t *m = mmap(NULL, sz, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    R = (sl_reg_t *)m;
    sl_reg_limits_t lim = {.max_connections = 1000, .max_channels = 100, .nworkers = 2};
    SL_CHECK_INT(sl_reg_init(R, m + 65536, sz - 65536, &lim), SL_OK);
    Q = sl_arena_alloc(R->arena, sizeof(*Q));
    SL_CHECK_INT(sl_inbox_init(Q), SL_OK);
}

static uint64_t used(void)
{
    sl_arena_stats_t s;
    sl_arena_stats(R->arena, &s);
    return s.used_bytes;
}

/* A payload that says which tag it belongs to: len and bytes follow tag. */
static size_t payload_of(uint64_t tag, char *out)
{
    size_t len = 8 + tag % 200;
    for (size_t i = 0; i < len; i++)
        out[i] = (char)((tag * 31 + i * 7) & 0xff);
    return len;
}

static int check_entry(const sl_inbox_entry_t *e)
{
    char want[256];
    size_t len = payload_of(e->tag, want);
    if (e->msg == NULL || e->msg->len != len || memcmp(e->msg->frame, want, len) != 0)
        return 0;
    if (e->kind != SL_BRQ_PUBLISH || e->target_conn != e->tag || e->from != (int)(e->tag >> 32))
        return 0;
    return 1;
}

static int submit(uint64_t tag)
{
    char p[256];
    size_t len = payload_of(tag, p);
    sl_inbox_entry_t e = {.kind = SL_BRQ_PUBLISH, .from = (int32_t)(tag >> 32),
                          .target_conn = tag, .tag = tag, .deadline = 1};
    return sl_brq_submit(R, Q, &e, p, len);
}

static void test_round_trip(void)
{
    uint64_t before = used();
    SL_CHECK_INT(submit(7), SL_OK);
    sl_inbox_entry_t e;
    SL_CHECK(sl_inbox_pop(Q, &e, NULL));
    SL_CHECK(check_entry(&e));
    sl_chan_msg_unref(R, e.msg);
    SL_CHECK(!sl_inbox_pop(Q, &e, NULL));
    /* A result lands in the worker's inbox with its tag and status. */
    SL_CHECK_INT(sl_brq_result(R, 1, 99, SL_BR_FULL, "{\"count\":3}", 11), SL_OK);
    SL_CHECK(sl_inbox_pop(R->inboxes[1], &e, NULL));
    SL_CHECK_INT(e.kind, SL_INBOX_BROKER_RESULT);
    SL_CHECK_INT(e.tag, 99);
    SL_CHECK_INT(e.status, SL_BR_FULL);
    SL_CHECK(e.msg && e.msg->len == 11 && memcmp(e.msg->frame, "{\"count\":3}", 11) == 0);
    SL_CHECK_INT(e.msg->frame[11], 0); /* parseable in place */
    sl_chan_msg_unref(R, e.msg);
    SL_CHECK_INT(sl_brq_result(R, 5, 1, SL_BR_OK, NULL, 0), SL_CHAN_NOT_SUBSCRIBED);
    SL_CHECK_STR(sl_brq_reason(SL_BR_UNAVAILABLE), "broker-unavailable");
    /* Full: refused, counted, nothing kept. */
    int n = 0;
    while (submit((uint64_t)n) == SL_OK)
        n++;
    SL_CHECK_INT(n, SL_INBOX_CAP);
    SL_CHECK_INT(uatomic_read(&Q->refused), 1);
    while (sl_inbox_pop(Q, &e, NULL))
        sl_chan_msg_unref(R, e.msg);
    SL_CHECK_INT(used(), before);
}

#define NPROD 4
#define PER 60000

static void producer(int id, int lock_victim)
{
    srand((unsigned)getpid());
    for (uint64_t i = 0; i < PER; i++) {
        if (lock_victim && i == PER / 3) {
            /* Die holding the producers' lock. */
            sl_lock_acquire(&Q->lock);
            raise(SIGKILL);
        }
        uint64_t tag = (uint64_t)id << 32 | i;
        while (submit(tag) != SL_OK)
            usleep(50); /* full: the consumer catches up */
    }
    _exit(0);
}

static void test_producers_killed(void)
{
    uint64_t before = used();
    pid_t pids[NPROD];
    for (int i = 0; i < NPROD; i++) {
        pids[i] = fork();
        if (pids[i] == 0)
            producer(i, i == 3);
    }
    uint64_t next[NPROD] = {0};
    int bad = 0, out_of_order = 0;
    struct timespec t0;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    srand((unsigned)t0.tv_nsec);
    int64_t kill_after = 2000 + rand() % 30000; /* entries */
    int64_t seen = 0;
    bool killed = false;
    int alive = NPROD;
    while (alive > 0 || sl_inbox_depth(Q) > 0) {
        sl_inbox_entry_t e;
        if (!sl_inbox_pop(Q, &e, NULL)) {
            int status;
            pid_t p = waitpid(-1, &status, WNOHANG);
            if (p > 0)
                alive--;
            else
                usleep(20);
            continue;
        }
        if (!check_entry(&e))
            bad++;
        int who = (int)(e.tag >> 32);
        uint64_t i = e.tag & 0xffffffff;
        if (who >= 0 && who < NPROD) {
            if (i != next[who])
                out_of_order++;
            next[who] = i + 1;
        }
        sl_chan_msg_unref(R, e.msg);
        if (++seen == kill_after && !killed) {
            kill(pids[1], SIGKILL);
            killed = true;
        }
    }
    SL_CHECK_INT(bad, 0);
    SL_CHECK_INT(out_of_order, 0);
    SL_CHECK_INT(next[0], PER);
    SL_CHECK_INT(next[2], PER);
    SL_CHECK_INT(next[3], PER / 3); /* died holding the lock, after queueing a third */
    SL_CHECK(next[1] <= PER);
    /* The queue still works after both deaths. */
    SL_CHECK_INT(submit(5), SL_OK);
    sl_inbox_entry_t e;
    SL_CHECK(sl_inbox_pop(Q, &e, NULL) && check_entry(&e));
    sl_chan_msg_unref(R, e.msg);
    SL_CHECK(Q->lock.recoveries >= 1);
    /* At most the payloads the two killed producers had in hand. */
    uint64_t after = used();
    SL_CHECK(after <= before + 2 * 512);
    printf("  brq: %lld entries checked; producer 1 killed after %llu, lock holder recovered "
           "(%llu recoveries), %llu bytes leaked\n",
           (long long)seen, (unsigned long long)next[1],
           (unsigned long long)Q->lock.recoveries, (unsigned long long)(after - before));
}

static void test_consumer_killed(void)
{
    uint64_t before = used(), base = Q->head;
    for (uint64_t i = 0; i < 5000; i++)
        SL_CHECK_INT(submit(i), SL_OK);
    pid_t c = fork();
    if (c == 0) {
        sl_inbox_entry_t e;
        for (;;)
            if (sl_inbox_pop(Q, &e, NULL)) {
                sl_chan_msg_unref(R, e.msg);
                usleep(10);
            }
    }
    struct timespec t0;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    usleep(2000 + (useconds_t)(t0.tv_nsec % 20000));
    kill(c, SIGKILL);
    waitpid(c, NULL, 0);
    uint64_t head = Q->head - base;
    /* The next consumer goes on from the entry after the last one taken. */
    sl_inbox_entry_t e;
    uint64_t expect = head, bad = 0, n = 0;
    while (sl_inbox_pop(Q, &e, NULL)) {
        if (!check_entry(&e) || e.tag != expect)
            bad++;
        expect++;
        n++;
        sl_chan_msg_unref(R, e.msg);
    }
    SL_CHECK_INT(bad, 0);
    SL_CHECK_INT(head + n, 5000);
    SL_CHECK(used() <= before + 512); /* the one it had popped, perhaps */
    printf("  brq: consumer killed after %llu entries; %llu taken by the next\n",
           (unsigned long long)head, (unsigned long long)n);
}

int main(void)
{
    setup();
    SL_TEST_RUN(test_round_trip);
    SL_TEST_RUN(test_producers_killed);
    SL_TEST_RUN(test_consumer_killed);
    return sl_test_summary();
}
