/*
 * bench_shm.c - lookups per second on the shared RCU table against the same
 * table behind a process-shared rwlock, with 1, 2 and 4 reader processes
 * while one writer process replaces entries continuously.  Same keys, same
 * hash, same chains, same arena; only the read-side synchronisation
 * differs.  Prints a table and a final JSON line.  A measurement, not a
 * test: figures depend on the machine and what else runs on it.
 */
#include "sl_table.h"

#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define NKEYS 10000
#define RUN_SECONDS 1.5

typedef struct {
    sl_table_node_t node;
    uint64_t value;
    char key[16];
} item_t;

typedef struct {
    sl_qsbr_t q;
    pthread_rwlock_t rw;
    sl_table_t *t;
    sl_arena_t *a;
    volatile int stop;
    uint64_t lookups[8];
    uint64_t writes;
    uint8_t mem[];
} shared_t;

static shared_t *S;

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static item_t *make(uint32_t id, uint64_t v)
{
    item_t *it = sl_arena_alloc(S->a, sizeof(*it));
    snprintf(it->key, sizeof(it->key), "key-%u", id);
    it->value = v;
    it->node.key = it->key;
    it->node.klen = (uint32_t)strlen(it->key);
    it->node.hash = sl_table_hash(it->key, it->node.klen);
    return it;
}

static void reader(int me, bool rcu)
{
    char keys[NKEYS][16];
    uint64_t hashes[NKEYS];
    for (uint32_t i = 0; i < NKEYS; i++) {
        snprintf(keys[i], 16, "key-%u", i);
        hashes[i] = sl_table_hash(keys[i], strlen(keys[i]));
    }
    if (rcu)
        sl_qsbr_register(&S->q, me);
    uint64_t n = 0, sink = 0, x = (uint64_t)getpid();
    while (!S->stop) {
        for (int k = 0; k < 256; k++) {
            x = x * 6364136223846793005ULL + 1442695040888963407ULL;
            uint32_t id = (uint32_t)(x >> 33) % NKEYS;
            if (!rcu)
                pthread_rwlock_rdlock(&S->rw);
            item_t *it = (item_t *)sl_table_lookup(S->t, hashes[id], keys[id], strlen(keys[id]));
            if (it)
                sink += it->value;
            if (!rcu)
                pthread_rwlock_unlock(&S->rw);
        }
        n += 256;
        if (rcu)
            sl_qsbr_quiescent(&S->q, me); /* as a worker at the end of a loop turn */
    }
    S->lookups[me] = n;
    if (sink == 42) /* keep the loads from being optimised away */
        fputc(0, stderr);
    if (rcu)
        sl_qsbr_offline(&S->q, me);
    _exit(0);
}

static void writer(bool rcu)
{
    uint64_t v = 0, x = 12345;
    if (rcu)
        sl_qsbr_register(&S->q, 7);
    while (!S->stop) {
        x = x * 6364136223846793005ULL + 1442695040888963407ULL;
        uint32_t id = (uint32_t)(x >> 33) % NKEYS;
        item_t *it = make(id, ++v);
        if (rcu) {
            sl_table_replace(S->t, &it->node);
            if ((v & 63) == 0) {
                sl_qsbr_quiescent(&S->q, 7);
                sl_qsbr_reclaim(&S->q);
            }
        } else {
            pthread_rwlock_wrlock(&S->rw);
            sl_table_lock(S->t, it->node.hash);
            /* Unlink without retiring: under the write lock no reader can
             * be on the old node, so it is freed at once. */
            uint64_t h = it->node.hash;
            sl_table_node_t **link = &S->t->buckets[h & (S->t->nbuckets - 1)];
            while (*link && !((*link)->hash == h && (*link)->klen == it->node.klen &&
                              memcmp((*link)->key, it->node.key, it->node.klen) == 0))
                link = &(*link)->next;
            sl_table_node_t *old = *link;
            if (old) {
                it->node.next = old->next;
                *link = &it->node;
                sl_arena_free(S->a, old);
            } else {
                it->node.next = S->t->buckets[h & (S->t->nbuckets - 1)];
                S->t->buckets[h & (S->t->nbuckets - 1)] = &it->node;
            }
            sl_table_unlock(S->t, h);
            pthread_rwlock_unlock(&S->rw);
        }
    }
    S->writes = v;
    if (rcu)
        sl_qsbr_offline(&S->q, 7);
    _exit(0);
}

static void setup(void)
{
    size_t sz = 256 << 20;
    if (S)
        munmap(S, sz);
    S = mmap(NULL, sz, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    memset(S, 0, sizeof(*S));
    S->a = sl_arena_init(S->mem, sz - sizeof(shared_t));
    sl_qsbr_init(&S->q, S->a);
    pthread_rwlockattr_t at;
    pthread_rwlockattr_init(&at);
    pthread_rwlockattr_setpshared(&at, PTHREAD_PROCESS_SHARED);
    pthread_rwlock_init(&S->rw, &at);
    S->t = sl_table_create(S->a, &S->q, 16384, 64);
    for (uint32_t i = 0; i < NKEYS; i++)
        sl_table_insert(S->t, &make(i, i)->node);
}

static double run(int nreaders, bool rcu, uint64_t *writes)
{
    setup();
    pid_t pids[8];
    for (int i = 0; i < nreaders; i++)
        if ((pids[i] = fork()) == 0)
            reader(i, rcu);
    pid_t w = fork();
    if (w == 0)
        writer(rcu);
    double t0 = now();
    usleep((useconds_t)(RUN_SECONDS * 1e6));
    S->stop = 1;
    int st;
    for (int i = 0; i < nreaders; i++)
        waitpid(pids[i], &st, 0);
    waitpid(w, &st, 0);
    double el = now() - t0;
    uint64_t total = 0;
    for (int i = 0; i < nreaders; i++)
        total += S->lookups[i];
    *writes = S->writes;
    return (double)total / el;
}

int main(void)
{
    static const int readers[] = {1, 2, 4};
    double r_rcu[3], r_rw[3];
    uint64_t w_rcu[3], w_rw[3];
    printf("shared-memory table: %d keys, 1 writer replacing continuously, %.1f s per run, "
           "%ld CPUs\n",
           NKEYS, RUN_SECONDS, sysconf(_SC_NPROCESSORS_ONLN));
    printf("%8s %16s %16s %8s %14s %14s\n", "readers", "rcu lookups/s", "rwlock lookups/s",
           "ratio", "rcu writes/s", "rwlock writes/s");
    for (int i = 0; i < 3; i++) {
        r_rcu[i] = run(readers[i], true, &w_rcu[i]);
        r_rw[i] = run(readers[i], false, &w_rw[i]);
        printf("%8d %16.0f %16.0f %8.2f %14.0f %14.0f\n", readers[i], r_rcu[i], r_rw[i],
               r_rcu[i] / r_rw[i], (double)w_rcu[i] / RUN_SECONDS, (double)w_rw[i] / RUN_SECONDS);
    }
    printf("{\"bench\":\"shm-table\",\"keys\":%d", NKEYS);
    for (int i = 0; i < 3; i++)
        printf(",\"readers_%d\":{\"rcu_lookups_per_s\":%.0f,\"rwlock_lookups_per_s\":%.0f,"
               "\"ratio\":%.2f}",
               readers[i], r_rcu[i], r_rw[i], r_rcu[i] / r_rw[i]);
    printf("}\n");
    return 0;
}
