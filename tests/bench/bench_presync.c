/*
 * bench_presync.c - the CPU cost of listing one big channel's subscribers
 * for the broker's sliced presence rewrite (PRES_SYNC, 1,000 entries per
 * slice, each formatted as the broker does: conn-id and its JSON entry),
 * before and after review rs finding 6:
 *   head:   each slice walks from the list head past every newer node
 *           (sl_chan_members with `before`: O(N^2 / slice));
 *   resume: each slice resumes after the last node of the one before
 *           (sl_chan_members_after, the checkpoint found in the
 *           subscriptions table: O(N)).
 * N = 10,000 and 50,000 subscriptions (more with arguments).  Prints the
 * pass's walk time, nodes walked and slices, best of three.  A
 * measurement, not a test: figures depend on the machine and its load.
 */
#include "sl_chan.h"
#include "sl_reg.h"

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>

#define SLICE 1000

static sl_reg_t *R;

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

typedef struct {
    uint32_t n;
    uint64_t last;
    char conn[SL_CONN_ID_MAX];
    size_t bytes;
} slice_t;

/* As the broker's pres_entry_cb: the entry's JSON text. */
static int entry_cb(const sl_sub_t *s, void *arg)
{
    slice_t *t = arg;
    if (t->n == SLICE)
        return 1;
    const char *user = sl_sub_user(s);
    json_t *e = json_pack("{s:s, s:o, s:n}", "conn-id", sl_sub_conn_id(s), "user",
                          user ? json_string(user) : json_null(), "info");
    char *txt = json_dumps(e, JSON_COMPACT);
    t->bytes += strlen(txt);
    free(txt);
    json_decref(e);
    t->n++;
    t->last = s->sub_no;
    snprintf(t->conn, sizeof(t->conn), "%s", sl_sub_conn_id(s));
    return 0;
}

static double pass(sl_chan_t *c, int resume, uint64_t *walked, int *slices, uint32_t *entries)
{
    double t0 = now();
    slice_t t = {0};
    *walked = sl_chan_members(c, 0, entry_cb, &t);
    *slices = 1;
    *entries = t.n;
    while (t.n == SLICE) {
        slice_t u = {0};
        bool resumed;
        if (resume)
            *walked += sl_chan_members_after(R, c, t.conn, t.last, UINT32_MAX, NULL, &resumed,
                                             entry_cb, &u);
        else
            *walked += sl_chan_members(c, t.last, entry_cb, &u);
        *entries += u.n;
        ++*slices;
        t = u;
    }
    return now() - t0;
}

int main(int argc, char **argv)
{
    int sizes[8] = {10000, 50000}, nsizes = 2;
    if (argc > 1) {
        nsizes = 0;
        for (int i = 1; i < argc && nsizes < 8; i++)
            sizes[nsizes++] = atoi(argv[i]);
    }
    printf("%-8s %-7s %10s %14s %7s %8s\n", "subs", "walk", "pass ms", "nodes walked", "slices",
           "entries");
    for (int k = 0; k < nsizes; k++) {
        int n = sizes[k];
        size_t sz = (size_t)n * 1024 + (64u << 20);
        uint8_t *m = mmap(NULL, sz, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
        if (m == MAP_FAILED)
            return 1;
        R = (sl_reg_t *)m;
        sl_reg_limits_t lim = {.max_connections = (uint64_t)n, .max_channels = 16, .nworkers = 2};
        if (sl_reg_init(R, m + 65536, sz - 65536, &lim) != SL_OK)
            return 1;
        sl_qsbr_register(&R->qsbr, 0);
        sl_chan_config_t cfg = {.max_subscribers = (uint32_t)n, .rpc_timeout_ms = 1000};
        sl_chan_t *c;
        if (sl_chan_create(R, "big", 3, &cfg, &c) != SL_OK)
            return 1;
        char id[48], user[32];
        for (int i = 0; i < n; i++) {
            uint32_t cnt;
            snprintf(id, sizeof(id), "conn-1764500000000-%d", i);
            snprintf(user, sizeof(user), "user-%d", i % 1000);
            if (sl_chan_subscribe(R, c, id, i % 2, (uint32_t)i, &(sl_chan_who_t){.user = user},
                                  NULL, &cnt, NULL) != SL_OK) {
                fprintf(stderr, "subscribe %d failed\n", i);
                return 1;
            }
        }
        for (int resume = 0; resume < 2; resume++) {
            double best = 1e9;
            uint64_t walked = 0;
            int slices = 0;
            uint32_t entries = 0;
            for (int rep = 0; rep < 3; rep++) {
                double d = pass(c, resume, &walked, &slices, &entries);
                if (d < best)
                    best = d;
            }
            printf("%-8d %-7s %10.1f %14llu %7d %8u\n", n, resume ? "resume" : "head", best * 1e3,
                   (unsigned long long)walked, slices, entries);
        }
        munmap(m, sz);
    }
    return 0;
}
