/*
 * crash.c - crash points for the kill-point tests (see sl_crash.h).  Empty
 * unless built with -DSL_CRASHPOINTS.
 *
 * The armed name lives in process memory: a test arms it in the child it
 * forks (or, for the server, in one worker: sl_crash_arm_env), so one crash
 * point acts in one process only.
 */
#include "sl_crash.h"

#ifdef SL_CRASHPOINTS

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static const char *armed;
static unsigned armed_nth, armed_hits;
static sl_crash_action_t armed_act;
static const sl_crashpoint_t **trace_buf;
static size_t trace_cap, *trace_n;

void sl_crash_trace(const sl_crashpoint_t **buf, size_t cap, size_t *n)
{
    trace_buf = buf;
    trace_cap = cap;
    trace_n = n;
    *n = 0;
}

void sl_crash_arm(const char *name, unsigned nth, sl_crash_action_t act)
{
    armed = name;
    armed_nth = nth ? nth : 1;
    armed_hits = 0;
    armed_act = act;
}

void sl_crash_at(const sl_crashpoint_t *cp)
{
    if (trace_buf && *trace_n < trace_cap)
        trace_buf[(*trace_n)++] = cp;
    if (armed == NULL || armed_act == SL_CRASH_FAIL || strcmp(cp->name, armed) != 0)
        return;
    ++armed_hits;
    if (armed_act == SL_CRASH_STOPS ? armed_hits < armed_nth : armed_hits != armed_nth)
        return;
    if (armed_act == SL_CRASH_STOP || armed_act == SL_CRASH_STOPS) {
        raise(SIGSTOP);
        return;
    }
    _exit(SL_CRASH_EXIT_CODE);
}

bool sl_crash_fault(const sl_crashpoint_t *cp)
{
    return armed != NULL && armed_act == SL_CRASH_FAIL && strcmp(cp->name, armed) == 0 &&
           ++armed_hits == armed_nth;
}

void sl_crash_arm_env(int worker)
{
    static char name[128];
    const char *v = getenv("SL_CRASH_ARM");
    int w;
    unsigned nth;
    char act[8];
    if (v == NULL || sscanf(v, "%d:%127[^:]:%u:%7s", &w, name, &nth, act) != 4 || w != worker)
        return;
    sl_crash_arm(name, nth,
                 strcmp(act, "stop") == 0   ? SL_CRASH_STOP
                 : strcmp(act, "stops") == 0 ? SL_CRASH_STOPS
                 : strcmp(act, "fail") == 0 ? SL_CRASH_FAIL
                                            : SL_CRASH_EXIT);
}

extern const sl_crashpoint_t *const __start_sl_crashpoints[];
extern const sl_crashpoint_t *const __stop_sl_crashpoints[];

static int by_name(const void *a, const void *b)
{
    return strcmp((*(const sl_crashpoint_t *const *)a)->name,
                  (*(const sl_crashpoint_t *const *)b)->name);
}

size_t sl_crash_points(const sl_crashpoint_t ***out)
{
    size_t n = (size_t)(__stop_sl_crashpoints - __start_sl_crashpoints);
    const sl_crashpoint_t **v = malloc(sizeof(*v) * (n ? n : 1));
    if (v == NULL)
        return 0;
    memcpy(v, __start_sl_crashpoints, sizeof(*v) * n);
    qsort(v, n, sizeof(*v), by_name);
    size_t k = 0;
    for (size_t i = 0; i < n; i++)
        if (k == 0 || strcmp(v[k - 1]->name, v[i]->name) != 0)
            v[k++] = v[i];
    *out = v;
    return k;
}

#else
typedef int sl_crash_unused_t; /* ISO C wants a translation unit to declare something */
#endif
