/*
 * sl_pmd.h - permessage-deflate (RFC 7692), the WebSocket compression every
 * browser offers: the negotiation, the compression of one server frame and
 * the bounded inflation of one client message.  A codec beside sl_ws.h: no
 * sockets, no connections.
 *
 * What the server accepts and asks (section 7 of the RFC):
 *   server_no_context_takeover, always: every message is compressed on its
 *     own, so one compressed frame serves every subscriber (encode-once);
 *   client_no_context_takeover, always (a server may ask it of any client):
 *     client messages are inflated on their own too, so no connection
 *     keeps a zlib stream (~40 KiB) between messages - one per process;
 *   server_max_window_bits=N (offered by the client), honoured: under 15,
 *     that connection gets its messages uncompressed (allowed per message)
 *     rather than a frame of its own;
 *   client_max_window_bits[=N]: accepted (any window inflates with 15).
 * An offer with an unknown, repeated or invalid parameter is declined and
 * the next offer tried; none acceptable: no compression.
 */
#ifndef SL_PMD_H
#define SL_PMD_H

#include "sl_common.h"
#include "sl_outq.h"

/* The offers in one Sec-WebSocket-Extensions value (several headers: call
 * once per header, in order, until one is accepted).  Accepted: true, the
 * response's value in out (NUL-terminated) and *shared set when the
 * shared compressed frames (window 15) may be sent to this client. */
bool sl_pmd_negotiate(const char *value, size_t len, char *out, size_t outsz, bool *shared);

/* The frame `b` (one whole unmasked server frame: text or binary, FIN, not
 * compressed) compressed as one message: a new buffer with RSV1 set, or
 * NULL when compression does not make it smaller (or fails). */
sl_buf_t *sl_pmd_compress_frame(const sl_buf_t *b);

/* Inflate one client message (the compressed payload of its frames, the
 * 00 00 ff ff tail removed by the sender) into a malloc'd buffer of at most
 * `max` bytes: SL_OK (*out, *outlen; free it), SL_AGAIN (it inflates to
 * more than max: the caller closes 1009), SL_ERROR (not valid deflate data:
 * 1007, or out of memory). */
int sl_pmd_inflate(const uint8_t *in, size_t n, size_t max, uint8_t **out, size_t *outlen);

/* Per-process zlib state in use (bytes, for the design note's figures). */
size_t sl_pmd_memory(void);

#endif
