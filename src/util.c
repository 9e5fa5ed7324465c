/*
 * util.c - clocks and standard-error messages.  Wall-clock milliseconds for
 * every timestamp on the wire, monotonic time for every timeout, so a clock
 * step never fires or delays a timer.
 */
#include "sl_common.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

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

bool sl_stderr_is_journal(void)
{
    const char *js = getenv("JOURNAL_STREAM");
    unsigned long long dev, ino;
    struct stat st;
    if (js == NULL || sscanf(js, "%llu:%llu", &dev, &ino) != 2 || fstat(STDERR_FILENO, &st) != 0)
        return false;
    return (unsigned long long)st.st_dev == dev && (unsigned long long)st.st_ino == ino;
}

void sl_stderr(int prio, const char *fmt, ...)
{
    char line[1024];
    int n = 0;
    if (sl_stderr_is_journal())
        n = snprintf(line, sizeof(line), "<%d>", prio);
    n += snprintf(line + n, sizeof(line) - (size_t)n, "sente-lite: ");
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line + n, sizeof(line) - (size_t)n, fmt, ap);
    va_end(ap);
    fprintf(stderr, "%s\n", line); /* one write: one journal entry */
}
