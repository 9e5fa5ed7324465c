/*
 * logger.c - the logger process: drains the telemetry pipe into the log.
 *
 * It reads whole batches (records never straddle a pipe write, but one
 * read may return several writes, or, with a large read size, end inside a
 * record, so a partial tail is kept for the next read), formats each record,
 * filters by level and writes the lines with one write per read.  It exits
 * when the pipe reaches end-of-file, i.e. after every writer (master and
 * workers) has exited, so nothing emitted before shutdown is lost.
 * SIGTERM/SIGINT are ignored for that reason; SIGHUP reopens the log file.
 */
#include "sl_tel.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <urcu/uatomic.h>

#define SL_LOGGER_READ (64 * 1024)
#define SL_LOGGER_LINE 8192

static volatile sig_atomic_t reopen_requested;

static void on_hup(int sig)
{
    reopen_requested = 1;
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

int sl_logger_main(int fd, const sl_logger_opts_t *opts)
{
    struct sigaction sa = {0};
    sa.sa_handler = on_hup; /* no SA_RESTART: read() returns EINTR */
    sigaction(SIGHUP, &sa, NULL);
    signal(SIGTERM, SIG_IGN);
    signal(SIGINT, SIG_IGN);
    signal(SIGPIPE, SIG_IGN);

    int out = open_log(opts->log_file);
    if (out < 0) {
        fprintf(stderr, "sente-lite: cannot open log file %s: %s\n", opts->log_file,
                strerror(errno));
        return 1;
    }
    uint8_t *in = malloc(SL_LOGGER_READ);
    /* Every record formats to at most SL_LOGGER_LINE bytes; a full read of
     * minimal records (16 bytes) could make 4096 lines, so the output buffer
     * is flushed whenever it is nearly full. */
    size_t ocap = 256 * 1024;
    char *obuf = malloc(ocap);
    if (in == NULL || obuf == NULL)
        return 1;
    size_t have = 0;

    for (;;) {
        if (reopen_requested) {
            reopen_requested = 0;
            int nfd = open_log(opts->log_file);
            if (nfd >= 0) {
                close(out);
                out = nfd;
            } else {
                count_error();
                fprintf(stderr, "sente-lite: cannot reopen log file %s: %s\n", opts->log_file,
                        strerror(errno));
            }
        }
        ssize_t n = read(fd, in + have, SL_LOGGER_READ - have);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            break;
        }
        if (n == 0)
            break; /* every writer is gone */
        have += (size_t)n;

        size_t pos = 0, olen = 0, nrec = 0;
        while (have - pos >= 2) {
            uint16_t rlen;
            memcpy(&rlen, in + pos, 2);
            if (rlen < 16) {
                /* A corrupt length cannot be resynchronised: drop the
                 * rest of this read and count it. */
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
                int l = sl_tel_format(in + pos, rlen, opts, obuf + olen, SL_LOGGER_LINE);
                if (l < 0)
                    count_error();
                else
                    olen += (size_t)l;
            }
            pos += rlen;
        }
        if (olen)
            write_all(out, obuf, olen);
        if (sl_shm && nrec)
            uatomic_add(&sl_shm->tel_processed, nrec);
        memmove(in, in + pos, have - pos);
        have -= pos;
    }
    close(out);
    free(in);
    free(obuf);
    return 0;
}
