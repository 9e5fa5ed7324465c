/*
 * bench_tel.c - what telemetry costs: nanoseconds per event emitted in a
 * worker (encoding plus its share of the once-per-loop-turn pipe write,
 * with a real logger process draining the pipe), and events per second
 * through the logger (records read, decoded, formatted as text lines and
 * written to a file).  Compared with the seeds' figures: 2,720 events/s
 * synchronous and 66,667 events/s asynchronous.  Prints a table and a
 * final JSON line.  A measurement, not a test.
 */
#include "sl_tel.h"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define EVENTS_PER_TURN 64 /* a busy loop turn; the worker flushes once per turn */

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static pid_t start_logger(int rfd, int wfd, const char *path)
{
    pid_t pid = fork();
    if (pid == 0) {
        close(wfd);
        sl_logger_opts_t o = {.log_file = path, .app_name = "sente-lite", .json = false,
                              .min_level = SL_INFO};
        _exit(sl_logger_main(&rfd, 1, &o));
    }
    close(rfd);
    return pid;
}

static void emit_one(int i)
{
    SL_TEL(SL_EV_MESSAGE_PUBLISHED, SL_INFO, SL_TF_S("channel-id", "chat-room"),
           SL_TF_S("message-id", "msg-1234"), SL_TF_I("seq", i), SL_TF_I("delivered-to", 8));
}

/* n events as loop turns of EVENTS_PER_TURN, each ended by a flush as a
 * worker's turn is; nanoseconds per event. */
static double emit_turns(int n)
{
    double t0 = now_s();
    for (int i = 0; i < n; i++) {
        emit_one(i);
        if (i % EVENTS_PER_TURN == EVENTS_PER_TURN - 1)
            sl_tel_flush();
    }
    sl_tel_flush();
    return (now_s() - t0) * 1e9 / n;
}

/* Emit cost: as a worker does, never waiting for the logger.  Flat out
 * the emitter outruns the logger, so part of the batches find the pipe full
 * and are dropped (counted): the figure is wall time per event attempted. */
static double bench_emit(int n, uint64_t *written, uint64_t *dropped, const char *path)
{
    int p[2];
    if (pipe(p) != 0)
        return -1;
    fcntl(p[1], F_SETPIPE_SZ, 1 << 20);
    pid_t lg = start_logger(p[0], p[1], path);
    sl_worker_stats_t st = {0};
    sl_tel_init(p[1], 0, &st, true, SL_INFO);
    double ns = emit_turns(n);
    close(p[1]);
    waitpid(lg, NULL, 0);
    *written = st.tel_emitted;
    *dropped = st.tel_dropped;
    return ns;
}

/* The worker's own cost: encoding plus one write per turn, into /dev/null
 * (no reader to wake, nothing dropped). */
static double bench_encode(int n)
{
    int fd = open("/dev/null", O_WRONLY);
    sl_worker_stats_t st = {0};
    sl_tel_init(fd, 0, &st, true, SL_INFO);
    double ns = emit_turns(n);
    close(fd);
    return ns;
}

/* Logger throughput: the emitter waits for room instead of dropping, so
 * every event goes through; the time runs until the logger has written
 * the last line and exited. */
static double bench_logger(int n, const char *path, long *bytes)
{
    int p[2];
    if (pipe(p) != 0)
        return -1;
    fcntl(p[1], F_SETPIPE_SZ, 1 << 20);
    pid_t lg = start_logger(p[0], p[1], path);
    sl_worker_stats_t st = {0};
    sl_tel_init(p[1], 0, &st, true, SL_INFO);
    double t0 = now_s();
    uint64_t sent = 0;
    for (int i = 0; i < n; i++) {
        emit_one(i);
        if (i % EVENTS_PER_TURN == EVENTS_PER_TURN - 1 || i == n - 1) {
            struct pollfd pf = {.fd = p[1], .events = POLLOUT};
            for (;;) {
                uint64_t before = st.tel_dropped;
                /* Wait until the pipe can take a whole batch (4 KiB). */
                poll(&pf, 1, -1);
                sl_tel_flush();
                if (st.tel_dropped == before)
                    break;
                /* Dropped: re-emit this turn's events (counted once). */
                st.tel_dropped = before;
                for (int k = i - (i % EVENTS_PER_TURN); k <= i; k++)
                    emit_one(k);
            }
            sent = st.tel_emitted;
        }
    }
    close(p[1]);
    waitpid(lg, NULL, 0);
    double secs = now_s() - t0;
    struct stat sb;
    *bytes = stat(path, &sb) == 0 ? (long)sb.st_size : -1;
    return (double)sent / secs;
}

int main(int argc, char **argv)
{
    int n = argc > 1 ? atoi(argv[1]) : 2000000;
    char path[] = "/tmp/sente-bench-tel-XXXXXX";
    int fd = mkstemp(path);
    if (fd < 0)
        return 1;
    close(fd);
    signal(SIGPIPE, SIG_IGN);

    double enc = bench_encode(n);
    uint64_t written = 0, dropped = 0;
    double emit = bench_emit(n, &written, &dropped, path);
    unlink(path);
    long bytes = 0;
    double lps = bench_logger(n / 2, path, &bytes);
    unlink(path);

    printf("telemetry (%d events, 4 fields, flushed every %d as a loop turn does)\n", n,
           EVENTS_PER_TURN);
    printf("  encode + write /dev/null %6.1f ns/event\n", enc);
    printf("  emit, logger draining  %8.1f ns/event  (%llu written, %llu dropped)\n", emit,
           (unsigned long long)written, (unsigned long long)dropped);
    printf("  logger throughput      %8.0f events/s  (%ld bytes of text lines)\n", lps, bytes);
    printf("  seeds: 2720 events/s synchronous, 66667 events/s asynchronous\n");
    printf("{\"bench\":\"telemetry\",\"events\":%d,\"encode-ns\":%.1f,\"emit-ns\":%.1f,"
           "\"emit-written\":%llu,\"emit-dropped\":%llu,\"logger-events-per-s\":%.0f,"
           "\"seed-sync-events-per-s\":2720,\"seed-async-events-per-s\":66667}\n",
           n, enc, emit, (unsigned long long)written, (unsigned long long)dropped, lps);
    return 0;
}
