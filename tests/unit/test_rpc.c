/*
 * test_rpc.c - RPC correlations: create, find, claim exactly once (also
 * with two processes racing), unclaim, remove, expiry, a dead worker's
 * cleanup, the pending/old counts, and no orphan when the requester goes
 * while a responder holds the claim and then un-claims (review finding 4).
 */
#include "sl_chan.h"
#include "sl_rpc.h"
#include "sl_test.h"

#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

static sl_reg_t *R;

static void setup(void)
{
    size_t sz = 16 << 20;
    uint8_t *m = mmap(NULL, sz, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    R = (sl_reg_t *)m;
    SL_CHECK_INT(sl_reg_init(R, m + 65536, sz - 65536, &(sl_reg_limits_t){.max_connections = 1000, .max_channels = 1000, .nworkers = 2}), SL_OK);
    sl_qsbr_register(&R->qsbr, 0);
}

static void test_lifecycle(void)
{
    setup();
    sl_rpc_t *q = sl_rpc_create(R, 1, 7, 1, "ch", 2, 5000);
    SL_CHECK(q != NULL);
    SL_CHECK(strncmp(q->request_id, "req-", 4) == 0);
    SL_CHECK_INT(q->deadline - q->created_at, 5000);
    SL_CHECK(sl_rpc_find(R, q->request_id, strlen(q->request_id)) == q);
    SL_CHECK(sl_rpc_claim(q, SL_RPC_ANSWERED, 1));
    SL_CHECK(!sl_rpc_claim(q, SL_RPC_ANSWERED, 1)); /* duplicate */
    SL_CHECK(!sl_rpc_claim(q, SL_RPC_EXPIRED, 1));  /* the timer loses */
    SL_CHECK(sl_rpc_unclaim(R, q));              /* hand-over failed: pending again */
    SL_CHECK(sl_rpc_claim(q, SL_RPC_EXPIRED, 1));
    sl_rpc_remove(R, q);
    SL_CHECK(sl_rpc_find(R, q->request_id, strlen(q->request_id)) == NULL);
    sl_rpc_t *q2 = sl_rpc_create(R, 1, 7, 1, "ch", 2, 5000);
    SL_CHECK(q2 && q2->no == q->no + 1);
}

static void test_cleanup_expire_counts(void)
{
    setup();
    for (int i = 0; i < 6; i++)
        sl_rpc_create(R, i % 2, 0, 1, "ch", 2, i < 2 ? 1 : 100000);
    uint64_t pending, old;
    int64_t now = sl_now_ms();
    sl_rpc_counts(R, now, 60000, &pending, &old);
    SL_CHECK_INT(pending, 6);
    SL_CHECK_INT(old, 0);
    sl_rpc_counts(R, now + 61000, 60000, &pending, &old);
    SL_CHECK_INT(old, 6);
    SL_CHECK_INT(sl_rpc_expire(R, now + 10, 0), 2); /* the two 1 ms ones */
    sl_reg_worker_cleanup(R, 1); /* the rest of worker 1's */
    sl_rpc_counts(R, now, 60000, &pending, &old);
    SL_CHECK_INT(pending, 2);
}

/* Two processes claim the same 2000 requests at the same time: every
 * request is won exactly once. */
static void test_claim_race(void)
{
    setup();
    enum { N = 2000 };
    sl_rpc_t **qs = mmap(NULL, sizeof(*qs) * N, PROT_READ | PROT_WRITE,
                         MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    int *wins = mmap(NULL, sizeof(int) * 2, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS,
                     -1, 0);
    for (int i = 0; i < N; i++)
        qs[i] = sl_rpc_create(R, 0, 0, 1, "ch", 2, 100000);
    pid_t pid[2];
    for (int p = 0; p < 2; p++)
        if ((pid[p] = fork()) == 0) {
            int w = 0;
            for (int i = 0; i < N; i++)
                if (sl_rpc_claim(qs[i], SL_RPC_ANSWERED, p))
                    w++;
            wins[p] = w;
            _exit(0);
        }
    for (int p = 0; p < 2; p++)
        waitpid(pid[p], NULL, 0);
    SL_CHECK_INT(wins[0] + wins[1], N);
    for (int i = 0; i < N; i++)
        SL_CHECK_INT(SL_RPC_KIND(qs[i]->state), SL_RPC_ANSWERED);
}

/* Review of issue 12, finding 4: the requester's worker Q (1) dies while
 * responder R (0) holds the claim; the master's cleanup passes the entry;
 * then R's hand-off fails and it un-claims.  Before the fix the entry went
 * back to pending with nobody left to settle it: a permanent leak, and
 * after a minute an "old" request that makes /health unhealthy. */
static void test_unclaim_after_requester_died(void)
{
    setup();
    sl_rpc_t *q = sl_rpc_create(R, 1, 3, 9, "ch", 2, 100000);
    SL_CHECK(sl_rpc_claim(q, SL_RPC_ANSWERED, 0)); /* R claims */
    sl_reg_worker_cleanup(R, 1);                  /* Q died: cleanup passes */
    SL_CHECK(sl_rpc_find(R, q->request_id, strlen(q->request_id)) == q); /* R's to settle */
    SL_CHECK(q->state & SL_RPC_ABANDONED);
    SL_CHECK(!sl_rpc_unclaim(R, q)); /* R's hand-off failed: it removes the entry */
    SL_CHECK_INT(sl_table_count(R->rpcs), 0);
    /* A claim held by the dead requester's own worker is taken over. */
    q = sl_rpc_create(R, 1, 3, 9, "ch", 2, 100000);
    SL_CHECK(sl_rpc_claim(q, SL_RPC_ANSWERED, 1));
    sl_reg_worker_cleanup(R, 1);
    SL_CHECK_INT(sl_table_count(R->rpcs), 0);
}

/* The same with a live worker whose requester's connection closes while
 * a responder holds the claim (sl_call_closed cancels with sl_rpc_cancel). */
static void test_unclaim_after_requester_closed(void)
{
    setup();
    sl_rpc_t *q = sl_rpc_create(R, 1, 3, 9, "ch", 2, 100000);
    SL_CHECK(sl_rpc_claim(q, SL_RPC_ANSWERED, 0));
    SL_CHECK(!sl_rpc_cancel(R, q, 1)); /* left to the responder */
    SL_CHECK(!sl_rpc_unclaim(R, q));
    SL_CHECK_INT(sl_table_count(R->rpcs), 0);
    /* Not claimed: cancelled and removed at once. */
    q = sl_rpc_create(R, 1, 3, 9, "ch", 2, 100000);
    SL_CHECK(sl_rpc_cancel(R, q, 1));
    SL_CHECK_INT(sl_table_count(R->rpcs), 0);
    /* A responder whose hand-off works removes it as before. */
    q = sl_rpc_create(R, 1, 3, 9, "ch", 2, 100000);
    SL_CHECK(sl_rpc_claim(q, SL_RPC_ANSWERED, 0));
    SL_CHECK(!sl_rpc_cancel(R, q, 1));
    sl_rpc_remove(R, q);
    SL_CHECK_INT(sl_table_count(R->rpcs), 0);
}

int main(void)
{
    SL_TEST_RUN(test_lifecycle);
    SL_TEST_RUN(test_unclaim_after_requester_died);
    SL_TEST_RUN(test_unclaim_after_requester_closed);
    SL_TEST_RUN(test_cleanup_expire_counts);
    SL_TEST_RUN(test_claim_race);
    return sl_test_summary();
}
