/*
 * xport.c - the plain TCP transport (sl_xport.h).  Owns nothing: the socket
 * belongs to the connection, the queue to its caller.
 */
#include "sl_xport.h"

#include <errno.h>
#include <sys/socket.h>
#include <unistd.h>

static ssize_t plain_read(int fd, void *ctx, void *buf, size_t n)
{
    for (;;) {
        ssize_t r = read(fd, buf, n);
        if (r >= 0)
            return r;
        if (errno == EINTR)
            continue;
        return errno == EAGAIN || errno == EWOULDBLOCK ? SL_AGAIN : SL_ERROR;
    }
}

static int plain_flush(int fd, void *ctx, sl_outq_t *q)
{
    return sl_outq_flush(q, fd);
}

static int plain_shutdown(int fd, void *ctx)
{
    shutdown(fd, SHUT_WR);
    return SL_OK;
}

static void plain_release(void *ctx)
{
}

static bool plain_yes(void *ctx)
{
    return true;
}

static bool plain_no(void *ctx)
{
    return false;
}

const sl_xport_t sl_xport_plain = {"tcp",         plain_read, plain_flush, plain_shutdown,
                                   plain_release, plain_yes,  plain_no,    plain_no,
                                   plain_yes};
