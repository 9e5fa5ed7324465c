/*
 * util.c - clocks.  Wall-clock milliseconds for every timestamp on the wire,
 * monotonic time for every timeout, so a clock step never fires or delays a
 * timer.
 */
#include "sl_common.h"

#include <time.h>

static int64_t (*now_override)(void), (*mono_override)(void);

void sl_clock_override(int64_t (*now_ms)(void), int64_t (*mono_ms)(void))
{
    now_override = now_ms;
    mono_override = mono_ms;
}

int64_t sl_now_ms(void)
{
    if (now_override)
        return now_override();
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int64_t sl_mono_ms(void)
{
    if (mono_override)
        return mono_override();
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int64_t sl_mono_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}
