/*
 * logger.c - the logger process: drains the telemetry pipes into the log.
 *
 * One pipe per writing process (the master, each worker slot), polled
 * together.  A read may end inside a record, so each pipe keeps its
 * partial tail for its next read; each record is formatted, filtered by
 * level and the lines of one read go out with one write.  It exits when
 * every pipe has reached end-of-file, i.e. after every writer (master and
 * workers) has exited, so nothing emitted before shutdown is lost.
 * SIGTERM/SIGINT are ignored for that reason; SIGHUP reopens the log file.
 *
 * Under systemd (JOURNAL_STREAM names our standard error) and without
 * --log-file, each line starts with its syslog priority "<N>", which the
 * journal takes as the entry's priority (sd-daemon(3)).
 */
#include "sl_tel.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <urcu/uatomic.h>

#define SL_LOGGER_READ (64 * 1024)
#define SL_LOGGER_LINE 8192

static volatile sig_atomic_t reopen_requested;

static void on_hup(int sig)
{
    reopen_requested = 1;
}

/* syslog priorities: trace and debug 7, info 6, warn 4, error 3. */
static int journal_priority(uint8_t lvl)
{
    static const int prio[] = {7, 7, 6, 4, 3};
    return lvl < SL_ARRAY_LEN(prio) ? prio[lvl] : 6;
}

static int open_log(const char *path)
{
    if (path == NULL || path[0] == '\0')
        return dup(STDERR_FILENO);
    return open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
}

static void count_error(void)
{
    if (sl_shm)
        uatomic_add(&sl_shm->tel_errors, 1);
}

static void write_all(int fd, const char *p, size_t n)
{
    while (n > 0) {
        ssize_t w = write(fd, p, n);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            count_error();
            return;
        }
        p += w;
        n -= (size_t)w;
    }
}

/* One pipe's unread bytes: records, and at the end perhaps part of one. */
typedef struct {
    int fd;
    uint8_t *in;
    size_t have;
} source_t;

/* Format and write the whole records of src->in; keep a partial tail. */
static bool journal;

static void drain(source_t *src, int out, const sl_logger_opts_t *opts, char *obuf, size_t ocap)
{
    size_t pos = 0, olen = 0, nrec = 0, have = src->have;
    uint8_t *in = src->in;
    while (have - pos >= 2) {
        uint16_t rlen;
        memcpy(&rlen, in + pos, 2);
        if (rlen < 16) {
            /* A corrupt length cannot be resynchronised: drop the rest of
             * this read and count it. */
            count_error();
            pos = have;
            break;
        }
        if (have - pos < rlen)
            break;
        nrec++;
        uint8_t lvl = in[pos + 2];
        if (lvl >= opts->min_level) {
            if (ocap - olen < SL_LOGGER_LINE) {
                write_all(out, obuf, olen);
                olen = 0;
            }
            size_t pre = 0;
            if (journal)
                pre = (size_t)snprintf(obuf + olen, 8, "<%d>", journal_priority(lvl));
            int l = sl_tel_format(in + pos, rlen, opts, obuf + olen + pre, SL_LOGGER_LINE - pre);
            if (l < 0)
                count_error();
            else
                olen += pre + (size_t)l;
        }
        pos += rlen;
    }
    if (olen)
        write_all(out, obuf, olen);
    if (sl_shm && nrec)
        uatomic_add(&sl_shm->tel_processed, nrec);
    memmove(in, in + pos, have - pos);
    src->have = have - pos;
}

int sl_logger_main(const int *fds, int n, const sl_logger_opts_t *opts)
{
    struct sigaction sa = {0};
    sa.sa_handler = on_hup; /* no SA_RESTART: poll() returns EINTR */
    sigaction(SIGHUP, &sa, NULL);
    signal(SIGTERM, SIG_IGN);
    signal(SIGINT, SIG_IGN);
    signal(SIGPIPE, SIG_IGN);

    journal = (opts->log_file == NULL || opts->log_file[0] == '\0') && sl_stderr_is_journal();
    int out = open_log(opts->log_file);
    if (out < 0) {
        sl_stderr(SL_LOG_ERR, "cannot open log file %s: %s", opts->log_file,
                strerror(errno));
        return 1;
    }
    /* Every record formats to at most SL_LOGGER_LINE bytes; a full read of
     * minimal records (16 bytes) could make 4096 lines, so the output buffer
     * is flushed whenever it is nearly full. */
    size_t ocap = 256 * 1024;
    char *obuf = malloc(ocap);
    source_t *src = calloc((size_t)n, sizeof(*src));
    struct pollfd *pfd = calloc((size_t)n, sizeof(*pfd));
    if (obuf == NULL || src == NULL || pfd == NULL)
        return 1;
    int open_fds = n;
    for (int i = 0; i < n; i++) {
        src[i].fd = fds[i];
        src[i].in = malloc(SL_LOGGER_READ);
        if (src[i].in == NULL)
            return 1;
        pfd[i] = (struct pollfd){.fd = fds[i], .events = POLLIN};
    }

    while (open_fds > 0) {
        if (reopen_requested) {
            reopen_requested = 0;
            int nfd = open_log(opts->log_file);
            if (nfd >= 0) {
                close(out);
                out = nfd;
            } else {
                count_error();
                sl_stderr(SL_LOG_ERR, "cannot reopen log file %s: %s", opts->log_file,
                        strerror(errno));
            }
        }
        if (poll(pfd, (nfds_t)n, -1) < 0) {
            if (errno == EINTR)
                continue;
            break;
        }
        for (int i = 0; i < n; i++) {
            if (pfd[i].fd < 0 || !(pfd[i].revents & (POLLIN | POLLHUP | POLLERR)))
                continue;
            ssize_t r = read(src[i].fd, src[i].in + src[i].have, SL_LOGGER_READ - src[i].have);
            if (r < 0 && errno == EINTR)
                continue;
            if (r <= 0) {
                /* Every writer of this pipe is gone. */
                pfd[i].fd = -1;
                open_fds--;
                continue;
            }
            src[i].have += (size_t)r;
            drain(&src[i], out, opts, obuf, ocap);
        }
    }
    close(out);
    for (int i = 0; i < n; i++)
        free(src[i].in);
    free(src);
    free(pfd);
    free(obuf);
    return 0;
}
