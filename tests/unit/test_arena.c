/*
 * test_arena.c - the shared-memory allocator: classes, runs, exhaustion,
 * reuse, accounting, rebuild, bad frees, and recovery after a process dies
 * holding the lock.
 */
#include "sl_arena.h"
#include "sl_test.h"
#include "../../shm/arena_layout.h"

#include <signal.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

static void *map(size_t n)
{
    void *p = mmap(NULL, n, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    return p == MAP_FAILED ? NULL : p;
}

static void same_stats(const sl_arena_stats_t *a, const sl_arena_stats_t *b)
{
    SL_CHECK_INT(a->used_bytes, b->used_bytes);
    SL_CHECK_INT(a->free_pages, b->free_pages);
    SL_CHECK_INT(a->run_pages, b->run_pages);
    for (int c = 0; c < SL_ARENA_CLASSES; c++) {
        SL_CHECK_INT(a->cls[c].used, b->cls[c].used);
        SL_CHECK_INT(a->cls[c].total, b->cls[c].total);
    }
}

static void test_classes_and_runs(void)
{
    size_t sz = 4 << 20;
    void *r = map(sz);
    sl_arena_t *a = sl_arena_init(r, sz);
    SL_CHECK(a != NULL);
    sl_arena_stats_t s0, s;
    sl_arena_stats(a, &s0);
    SL_CHECK_INT(s0.used_bytes, 0);
    SL_CHECK(s0.total_bytes > 3 << 20);
    static const size_t sizes[] = {1, 16, 17, 100, 512, 2048, 2049, 4096, 10000, 100000};
    void *p[SL_ARRAY_LEN(sizes)];
    for (size_t i = 0; i < SL_ARRAY_LEN(sizes); i++) {
        p[i] = sl_arena_alloc(a, sizes[i]);
        SL_CHECK(p[i] != NULL);
        memset(p[i], (int)i, sizes[i]); /* usable to its full size */
    }
    sl_arena_stats(a, &s);
    /* 16+16+32+128+512+2048 + runs of 1,1,3,25 pages */
    SL_CHECK_INT(s.used_bytes, 16 + 16 + 32 + 128 + 512 + 2048 + (1 + 1 + 3 + 25) * 4096);
    SL_CHECK_INT(s.run_pages, 30);
    SL_CHECK(((uintptr_t)p[7] & 4095) == 0);
    for (size_t i = 0; i < SL_ARRAY_LEN(sizes); i++)
        sl_arena_free(a, p[i]);
    sl_arena_stats(a, &s);
    SL_CHECK_INT(s.used_bytes, 0);
    SL_CHECK_INT(s.run_pages, 0);
    SL_CHECK_INT(s.bad_frees, 0);
    munmap(r, sz);
}

static void test_exhaustion_and_reuse(void)
{
    size_t sz = 1 << 20;
    void *r = map(sz);
    sl_arena_t *a = sl_arena_init(r, sz);
    void **ptrs = malloc(sizeof(void *) * 100000);
    size_t n = 0;
    while ((ptrs[n] = sl_arena_alloc(a, 64)) != NULL)
        n++;
    sl_arena_stats_t s;
    sl_arena_stats(a, &s);
    SL_CHECK(n > 10000);
    SL_CHECK_INT(s.failures, 1);
    SL_CHECK_INT(s.free_pages, 0);
    SL_CHECK(sl_arena_alloc(a, 100000) == NULL); /* runs refused too */
    /* Free every other object: the same number fits again. */
    for (size_t i = 0; i < n; i += 2)
        sl_arena_free(a, ptrs[i]);
    size_t again = 0;
    while (sl_arena_alloc(a, 64) != NULL)
        again++;
    SL_CHECK_INT(again, (n + 1) / 2);
    free(ptrs);
    munmap(r, sz);
}

static void test_bad_frees(void)
{
    size_t sz = 1 << 20;
    void *r = map(sz);
    sl_arena_t *a = sl_arena_init(r, sz);
    char *p = sl_arena_alloc(a, 32), *q = sl_arena_alloc(a, 32);
    sl_arena_free(a, p);
    sl_arena_free(a, p);     /* double */
    sl_arena_free(a, q + 1); /* not an object start */
    int local;
    sl_arena_free(a, &local); /* foreign */
    sl_arena_free(a, NULL);   /* no-op */
    sl_arena_stats_t s;
    sl_arena_stats(a, &s);
    SL_CHECK_INT(s.bad_frees, 3);
    SL_CHECK_INT(s.cls[1].used, 1);
    munmap(r, sz);
}

static void test_rebuild_matches(void)
{
    size_t sz = 8 << 20;
    void *r = map(sz);
    sl_arena_t *a = sl_arena_init(r, sz);
    srand(7);
    void *live[2000] = {0};
    for (int i = 0; i < 20000; i++) {
        int k = rand() % 2000;
        if (live[k]) {
            sl_arena_free(a, live[k]);
            live[k] = NULL;
        } else {
            live[k] = sl_arena_alloc(a, (size_t)(rand() % 3 ? rand() % 2048 + 1 : rand() % 20000 + 1));
        }
    }
    sl_arena_stats_t before, after;
    sl_arena_stats(a, &before);
    sl_arena_rebuild(a);
    sl_arena_stats(a, &after);
    same_stats(&before, &after);
    /* Everything still frees cleanly after a rebuild. */
    for (int k = 0; k < 2000; k++)
        sl_arena_free(a, live[k]);
    sl_arena_stats(a, &after);
    SL_CHECK_INT(after.used_bytes, 0);
    SL_CHECK_INT(after.bad_frees, 0);
    munmap(r, sz);
}

static void test_owner_dies_holding_lock(void)
{
    size_t sz = 2 << 20;
    void *r = map(sz);
    sl_arena_t *a = sl_arena_init(r, sz);
    void *keep = sl_arena_alloc(a, 200);
    int pfd[2];
    SL_CHECK_INT(pipe(pfd), 0);
    pid_t pid = fork();
    if (pid == 0) {
        sl_lock_acquire(sl_arena_lock(a));
        /* Leave the derived data half-updated, as a crash mid-call would. */
        char c = 'x';
        if (write(pfd[1], &c, 1) != 1)
            _exit(1);
        pause();
        _exit(0);
    }
    char c;
    SL_CHECK_INT(read(pfd[0], &c, 1), 1);
    kill(pid, SIGKILL);
    int st;
    waitpid(pid, &st, 0);
    void *p = sl_arena_alloc(a, 200); /* EOWNERDEAD path: repaired, works */
    SL_CHECK(p != NULL && p != keep);
    sl_arena_stats_t s;
    sl_arena_stats(a, &s);
    SL_CHECK_INT(s.recoveries, 1);
    SL_CHECK_INT(s.cls[4].used, 2);
    sl_arena_free(a, p);
    sl_arena_free(a, keep);
    sl_arena_stats(a, &s);
    SL_CHECK_INT(s.used_bytes, 0);
    close(pfd[0]);
    close(pfd[1]);
    munmap(r, sz);
}

/* Each owner allocates from its own slab pages; frees may come from
 * anyone; a rebuild keeps pages with their owners. */
static void test_owners_have_their_own_pages(void)
{
    size_t sz = 1 << 20;
    void *r = map(sz);
    sl_arena_t *a = sl_arena_init(r, sz);
    SL_CHECK(a != NULL);
    void *p0[40], *p1[40];
    for (int i = 0; i < 40; i++) {
        sl_arena_set_owner(0);
        p0[i] = sl_arena_alloc(a, 128);
        sl_arena_set_owner(1);
        p1[i] = sl_arena_alloc(a, 128);
        SL_CHECK(p0[i] && p1[i]);
    }
    for (int i = 0; i < 40; i++)
        for (int j = 0; j < 40; j++)
            SL_CHECK(((uintptr_t)p0[i] >> 12) != ((uintptr_t)p1[j] >> 12));
    sl_arena_free(a, p1[39]); /* freed "by owner 1's neighbour" */
    sl_arena_rebuild(a);
    sl_arena_set_owner(1);
    void *again = sl_arena_alloc(a, 128);
    SL_CHECK(((uintptr_t)again >> 12) == ((uintptr_t)p1[38] >> 12));
    sl_arena_set_owner(0);
    void *zero = sl_arena_alloc(a, 128);
    SL_CHECK(((uintptr_t)zero >> 12) == ((uintptr_t)p0[39] >> 12));
    sl_arena_set_owner(SL_ARENA_OWNERS - 1);
    munmap(r, sz);
}

static void test_poison(void)
{
    size_t sz = 1 << 20;
    void *r = map(sz);
    sl_arena_t *a = sl_arena_init(r, sz);
    sl_arena_set_poison(a, true);
    unsigned char *p = sl_arena_alloc(a, 64);
    sl_arena_alloc(a, 64); /* keep the page */
    memset(p, 0, 64);
    sl_arena_free(a, p);
    SL_CHECK_INT(p[0], 0x5A);
    SL_CHECK_INT(p[63], 0x5A);
    munmap(r, sz);
}

/* A page descriptor no code writes (memory corruption): the rebuild ends
 * (it used to loop forever under the arena lock) and quarantines the page
 * as a one-page allocated run, never handing it out again. */
static void test_rebuild_quarantines_corrupt_pages(void)
{
    size_t sz = 1 << 20;
    void *r = map(sz);
    sl_arena_t *a = sl_arena_init(r, sz);
    void *slab = sl_arena_alloc(a, 64), *run = sl_arena_alloc(a, 3 * 4096);
    uint32_t ps = (uint32_t)(((uint8_t *)slab - a->base) / 4096);
    uint32_t pr = (uint32_t)(((uint8_t *)run - a->base) / 4096);
    a->pages[ps].cls = 200;   /* no such class */
    a->pages[pr].run = 0;     /* a run of no pages */
    a->pages[pr + 10].kind = 9; /* no such kind, in the free pages */
    sl_arena_rebuild(a);
    sl_arena_stats_t s;
    sl_arena_stats(a, &s);
    /* Three quarantined pages; the run's two tails are free again. */
    SL_CHECK_INT(s.run_pages, 3);
    SL_CHECK_INT(s.used_bytes, 3 * 4096);
    void *p[64];
    for (int i = 0; i < 64; i++) {
        p[i] = sl_arena_alloc(a, 4096);
        SL_CHECK(p[i] == NULL || ((uint8_t *)p[i] != (uint8_t *)slab - ((uintptr_t)slab & 4095) &&
                                  p[i] != run && (uint8_t *)p[i] != a->base + (pr + 10) * 4096));
    }
    munmap(r, sz);
}

int main(void)
{
    SL_TEST_RUN(test_rebuild_quarantines_corrupt_pages);
    SL_TEST_RUN(test_classes_and_runs);
    SL_TEST_RUN(test_owners_have_their_own_pages);
    SL_TEST_RUN(test_exhaustion_and_reuse);
    SL_TEST_RUN(test_bad_frees);
    SL_TEST_RUN(test_rebuild_matches);
    SL_TEST_RUN(test_owner_dies_holding_lock);
    SL_TEST_RUN(test_poison);
    return sl_test_summary();
}
