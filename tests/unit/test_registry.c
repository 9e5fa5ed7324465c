/*
 * test_registry.c - registry operations: connections added, found, counted,
 * removed, and a dead worker's entries cleaned by the master's entry point.
 */
#include "sl_reg.h"
#include "sl_test.h"

#include <stdio.h>
#include <sys/mman.h>

static sl_reg_t *R;

static void setup(void)
{
    size_t sz = 8 << 20;
    uint8_t *m = mmap(NULL, sz, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    R = (sl_reg_t *)m;
    SL_CHECK(sizeof(sl_reg_t) < 65536);
    SL_CHECK_INT(sl_reg_init(R, m + 65536, sz - 65536, &(sl_reg_limits_t){.max_connections = 1000, .max_channels = 1000, .nworkers = 2}), SL_OK);
    sl_qsbr_register(&R->qsbr, 0);
}

static void test_connections(void)
{
    setup();
    sl_reg_figures_t f0, f;
    sl_reg_figures(R, &f0);
    char id[40];
    sl_reg_conn_t *c[10];
    for (int i = 0; i < 10; i++) {
        snprintf(id, sizeof(id), "conn-1-%d", i);
        c[i] = sl_reg_conn_add(R, id, i % 2, (uint32_t)i, (uint64_t)i + 1, 1000 + i);
        SL_CHECK(c[i] != NULL);
    }
    sl_reg_conn_t *x = sl_reg_conn_find(R, "conn-1-7", 8);
    SL_CHECK(x == c[7] && x->worker == 1 && x->slot == 7 && x->opened_at == 1007);
    SL_CHECK(sl_reg_conn_find(R, "conn-1-70", 9) == NULL);
    sl_reg_figures(R, &f);
    SL_CHECK_INT(f.registered_connections, 10);
    SL_CHECK(f.used_bytes > f0.used_bytes);
    sl_reg_conn_remove(R, c[7]);
    SL_CHECK(sl_reg_conn_find(R, "conn-1-7", 8) == NULL);
    /* Worker 0 dies: its five entries go, worker 1's stay. */
    SL_CHECK_INT(sl_reg_worker_cleanup(R, 0), 5);
    sl_reg_figures(R, &f);
    SL_CHECK_INT(f.registered_connections, 4);
    SL_CHECK(sl_reg_conn_find(R, "conn-1-1", 8) != NULL);
    SL_CHECK(sl_reg_conn_find(R, "conn-1-2", 8) == NULL);
    /* Slot 0 was released by the cleanup, so everything retired frees. */
    for (int i = 1; i < 10; i += 2)
        if (i != 7)
            sl_reg_conn_remove(R, c[i]);
    sl_qsbr_reclaim(&R->qsbr);
    sl_reg_figures(R, &f);
    SL_CHECK_INT(f.registered_connections, 0);
    SL_CHECK_INT(f.qsbr_pending, 0);
    SL_CHECK_INT(f.used_bytes, f0.used_bytes);
}

static void test_long_id_refused(void)
{
    setup();
    char id[80];
    memset(id, 'x', sizeof(id) - 1);
    id[79] = '\0';
    SL_CHECK(sl_reg_conn_add(R, id, 0, 0, 1, 0) == NULL);
}

/* The hash key is drawn at random for every registry (server start). */
static void test_random_hash_key(void)
{
    setup();
    uint64_t k1[2] = {R->hash_key[0], R->hash_key[1]};
    uint64_t h1 = sl_table_hash("room", 4);
    setup();
    SL_CHECK(k1[0] != R->hash_key[0] || k1[1] != R->hash_key[1]);
    SL_CHECK(h1 != sl_table_hash("room", 4));
}

int main(void)
{
    SL_TEST_RUN(test_random_hash_key);
    SL_TEST_RUN(test_connections);
    SL_TEST_RUN(test_long_id_refused);
    return sl_test_summary();
}
