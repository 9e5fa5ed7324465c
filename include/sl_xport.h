/*
 * sl_xport.h - the transport under a connection: how its bytes are read
 * from and written to the socket.  The lowest layer of the worker side
 * (shm/README.md, "Worker-side layers"): it knows sockets, buffers and the
 * output queue, and nothing of connections, HTTP or WebSocket.
 *
 * A connection holds one pointer for its transport: the transport's own
 * state (ctx), which begins with its table of operations (sl_xport_ctx_t);
 * NULL is plain TCP, which has no state.  All output queued for
 * a connection in one loop turn leaves in one flush at the turn's end (the
 * "corked" write): plain TCP writes it with writev; a transport that frames
 * its bytes (TLS) packs it into as few records as fit.
 */
#ifndef SL_XPORT_H
#define SL_XPORT_H

#include "sl_common.h"
#include "sl_outq.h"

#include <sys/types.h>

/* flush: nothing can be written until the peer's bytes have been read
 * (a TLS handshake under way): wait for readability, not writability. */
#define SL_XPORT_WAIT_READ (-3)
/* read: the transport refused the peer and answered it itself (plain HTTP
 * on a TLS port: a 400 is sent): linger - half-close, then drain what the
 * peer still sends (read returns it raw, to be discarded) until its FIN or
 * the deadline, so closing does not reset the answer away. */
#define SL_XPORT_REFUSED (-4)

typedef struct sl_xport {
    const char *name;
    /* Read at most n bytes: > 0 bytes read, 0 the peer's end of stream,
     * SL_AGAIN nothing to read now, SL_ERROR (errno says why). */
    ssize_t (*read)(int fd, void *ctx, void *buf, size_t n);
    /* Write what the queue holds, as much as the socket takes: SL_OK
     * (queue empty), SL_AGAIN (socket full: wait until writable), SL_ERROR. */
    int (*flush)(int fd, void *ctx, sl_outq_t *q);
    /* Our side is done sending (after the last output): half-close.
     * SL_OK, or SL_AGAIN when the transport's own closing bytes (TLS
     * close_notify) wait for the socket: called again once writable. */
    int (*shutdown)(int fd, void *ctx);
    /* Release ctx (the caller closes the socket). */
    void (*release)(void *ctx);
    /* Ready to carry data (TLS: the handshake is done)? */
    bool (*established)(void *ctx);
    /* Bytes already received and decoded, waiting to be read (read again
     * without waiting for the socket)? */
    bool (*pending)(void *ctx);
    /* The last read returned SL_AGAIN because the transport must write
     * first (TLS): read again once the socket is writable. */
    bool (*read_wants_write)(void *ctx);
    /* Has the peer sent anything yet (TLS: its first byte was seen)?  A
     * read tried before the socket was announced readable may have found
     * nothing. */
    bool (*heard)(void *ctx);
} sl_xport_t;

/* Plain TCP: read(2), writev(2) through sl_outq_flush, shutdown(SHUT_WR);
 * always established, nothing pending (and "heard": never asked, being
 * established). */
extern const sl_xport_t sl_xport_plain;

/* The head of every transport's state: its operations. */
typedef struct {
    const sl_xport_t *ops;
} sl_xport_ctx_t;

/* The operations of the transport whose state is ctx (NULL: plain TCP). */
static inline const sl_xport_t *sl_xport_of(void *ctx)
{
    return ctx ? ((const sl_xport_ctx_t *)ctx)->ops : &sl_xport_plain;
}

#endif
