/*
 * test_qsbr.c - grace periods across processes: nothing is freed while an
 * online reader has not passed a quiescent state; offline and released
 * slots do not hold reclamation back; synchronize waits and times out.
 */
#include "sl_qsbr.h"
#include "sl_test.h"

#include <signal.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

typedef struct {
    sl_qsbr_t q;
    uint8_t arena_mem[];
} region_t;

static region_t *setup(sl_arena_t **a)
{
    size_t sz = 2 << 20;
    region_t *r = mmap(NULL, sz, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    *a = sl_arena_init(r->arena_mem, sz - sizeof(region_t));
    sl_qsbr_init(&r->q, *a);
    return r;
}

static uint64_t used(sl_arena_t *a)
{
    sl_arena_stats_t s;
    sl_arena_stats(a, &s);
    return s.used_bytes;
}

static void test_waits_for_online_reader(void)
{
    sl_arena_t *a;
    region_t *r = setup(&a);
    sl_qsbr_t *q = &r->q;
    uint64_t base = used(a); /* the lock-holder records */
    sl_qsbr_register(q, 0); /* a reader */
    sl_qsbr_register(q, 1); /* another */
    sl_qsbr_head_t *obj = sl_arena_alloc(a, 64);
    sl_qsbr_retire(q, obj);
    SL_CHECK_INT(sl_qsbr_reclaim(q), 0); /* both readers may hold it */
    sl_qsbr_quiescent(q, 0);
    SL_CHECK_INT(sl_qsbr_reclaim(q), 0); /* reader 1 still may */
    SL_CHECK_INT(used(a) - base, 64);
    sl_qsbr_quiescent(q, 1);
    SL_CHECK_INT(sl_qsbr_reclaim(q), 1);
    SL_CHECK_INT(used(a) - base, 0);
    SL_CHECK_INT(q->pending, 0);
    SL_CHECK_INT(sl_qsbr_retired(q), 1);
    SL_CHECK_INT(q->reclaimed, 1);
}

static void test_offline_and_release(void)
{
    sl_arena_t *a;
    region_t *r = setup(&a);
    sl_qsbr_t *q = &r->q;
    sl_qsbr_register(q, 3);
    sl_qsbr_register(q, 4);
    sl_qsbr_offline(q, 3);
    sl_qsbr_retire(q, sl_arena_alloc(a, 64));
    sl_qsbr_retire(q, sl_arena_alloc(a, 64));
    SL_CHECK_INT(sl_qsbr_reclaim(q), 0); /* slot 4 is online and silent */
    sl_qsbr_release(q, 4);               /* "dead": the master releases it */
    SL_CHECK_INT(sl_qsbr_reclaim(q), 2);
    /* A slot coming back online only counts for what is retired later. */
    sl_qsbr_online(q, 3);
    sl_qsbr_retire(q, sl_arena_alloc(a, 64));
    SL_CHECK_INT(sl_qsbr_reclaim(q), 0);
    sl_qsbr_quiescent(q, 3);
    SL_CHECK_INT(sl_qsbr_reclaim(q), 1);
}

static void test_order_is_fifo_by_epoch(void)
{
    sl_arena_t *a;
    region_t *r = setup(&a);
    sl_qsbr_t *q = &r->q;
    sl_qsbr_register(q, 0);
    sl_qsbr_retire(q, sl_arena_alloc(a, 16));
    sl_qsbr_quiescent(q, 0);                   /* past the first */
    sl_qsbr_retire(q, sl_arena_alloc(a, 16));  /* not past the second */
    SL_CHECK_INT(sl_qsbr_reclaim(q), 1);
    SL_CHECK_INT(q->pending, 1);
}

static void test_reader_in_other_process(void)
{
    sl_arena_t *a;
    region_t *r = setup(&a);
    sl_qsbr_t *q = &r->q;
    int go[2], done[2];
    SL_CHECK_INT(pipe(go), 0);
    SL_CHECK_INT(pipe(done), 0);
    pid_t pid = fork();
    if (pid == 0) {
        sl_qsbr_register(q, 7);
        char c = 'r';
        if (write(done[1], &c, 1) != 1 || read(go[0], &c, 1) != 1)
            _exit(1);
        sl_qsbr_quiescent(q, 7);
        if (write(done[1], &c, 1) != 1)
            _exit(1);
        pause();
        _exit(0);
    }
    char c;
    SL_CHECK_INT(read(done[0], &c, 1), 1);
    sl_qsbr_retire(q, sl_arena_alloc(a, 128));
    SL_CHECK_INT(sl_qsbr_synchronize(q, 20), SL_AGAIN); /* the child has not reported */
    SL_CHECK_INT(sl_qsbr_reclaim(q), 0);
    SL_CHECK_INT(write(go[1], "g", 1), 1);
    SL_CHECK_INT(read(done[0], &c, 1), 1);
    SL_CHECK_INT(sl_qsbr_reclaim(q), 1);
    /* Killed without going offline: the slot blocks until released. */
    sl_qsbr_retire(q, sl_arena_alloc(a, 128));
    kill(pid, SIGKILL);
    int st;
    waitpid(pid, &st, 0);
    SL_CHECK_INT(sl_qsbr_reclaim(q), 0);
    sl_qsbr_release(q, 7);
    SL_CHECK_INT(sl_qsbr_synchronize(q, 1000), SL_OK);
    SL_CHECK_INT(sl_qsbr_reclaim(q), 1);
}

int main(void)
{
    SL_TEST_RUN(test_waits_for_online_reader);
    SL_TEST_RUN(test_offline_and_release);
    SL_TEST_RUN(test_order_is_fifo_by_epoch);
    SL_TEST_RUN(test_reader_in_other_process);
    return sl_test_summary();
}
