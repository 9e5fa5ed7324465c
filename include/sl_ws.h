/*
 * sl_ws.h - the RFC 6455 engine, independent of sockets and event loops:
 * the handshake's accept key, the frame header encoder, the incremental
 * UTF-8 validator and a reader that turns a byte stream into whole messages
 * and control frames.  Used by the server (expects masked frames) and by the
 * benchmark client (expects unmasked frames).
 */
#ifndef SL_WS_H
#define SL_WS_H

#include "sl_common.h"

enum {
    SL_WS_OP_CONT = 0x0,
    SL_WS_OP_TEXT = 0x1,
    SL_WS_OP_BINARY = 0x2,
    SL_WS_OP_CLOSE = 0x8,
    SL_WS_OP_PING = 0x9,
    SL_WS_OP_PONG = 0xA,
};

enum {
    SL_WS_CLOSE_NORMAL = 1000,
    SL_WS_CLOSE_GOING_AWAY = 1001,
    SL_WS_CLOSE_PROTOCOL = 1002,
    SL_WS_CLOSE_UNSUPPORTED = 1003,
    SL_WS_CLOSE_NO_STATUS = 1005, /* never sent on the wire */
    SL_WS_CLOSE_ABNORMAL = 1006,  /* never sent on the wire */
    SL_WS_CLOSE_INVALID_DATA = 1007,
    SL_WS_CLOSE_POLICY = 1008,
    SL_WS_CLOSE_TOO_BIG = 1009,
    SL_WS_CLOSE_INTERNAL = 1011,
    SL_WS_CLOSE_TRY_AGAIN = 1013, /* missed messages: reconnect and recover */
};

/* Largest header a frame can have: 2 + 8 (length) + 4 (mask). */
#define SL_WS_MAX_HEADER 14
#define SL_WS_MAX_CONTROL 125 /* payload bytes of a ping, pong or close frame */

/* Sec-WebSocket-Accept for a client key: base64(SHA-1(key + GUID)), 28
 * characters plus NUL written to out.  The key is used as given (the caller
 * trims header whitespace).  Returns SL_OK, or SL_ERROR if the key is not
 * the base64 encoding of 16 bytes (RFC 6455 4.2.1 item 5). */
int sl_ws_accept_key(const char *key, size_t keylen, char out[29]);

/* Write a frame header for a payload of `len` bytes into out; returns its
 * length (2..14).  `mask` NULL for server frames (unmasked); otherwise its 4
 * bytes are written and the caller masks the payload with sl_ws_mask. */
size_t sl_ws_encode_header(uint8_t out[SL_WS_MAX_HEADER], int opcode, bool fin, uint64_t len,
                           const uint8_t *mask);

/* XOR `n` bytes with the 4-byte mask, starting at mask position `pos`
 * (the offset of p[0] within the frame's payload).  Its own inverse. */
void sl_ws_mask(uint8_t *p, size_t n, const uint8_t mask[4], uint64_t pos);

/* Is this close code allowed in a close frame on the wire (RFC 6455 7.4)? */
bool sl_ws_close_code_valid(unsigned code);

/* --- incremental UTF-8 validation (also across fragments) --- */

typedef struct {
    uint32_t state; /* 0 = at a character boundary */
} sl_utf8_t;

#define SL_UTF8_ACCEPT 0u
#define SL_UTF8_REJECT 1u

static inline void sl_utf8_init(sl_utf8_t *u)
{
    u->state = SL_UTF8_ACCEPT;
}

/* Feed bytes; returns false as soon as the input cannot be valid UTF-8
 * (overlongs, surrogates, > U+10FFFF, bad continuation).  A sequence may be
 * split across calls. */
bool sl_utf8_feed(sl_utf8_t *u, const uint8_t *p, size_t n);

/* True when the bytes fed so far end on a character boundary. */
static inline bool sl_utf8_complete(const sl_utf8_t *u)
{
    return u->state == SL_UTF8_ACCEPT;
}

/* Whole-buffer convenience. */
bool sl_utf8_valid(const uint8_t *p, size_t n);

/* Copy src[0..n) to dst as valid UTF-8: every byte that does not start a
 * valid sequence (a bad byte, a truncated sequence at the end) becomes
 * U+FFFD.  dst holds cap bytes; the result is cut at a character boundary
 * to fit and NUL-terminated (cap >= 1).  Returns its length.  For text we
 * did not make ourselves (a parser's error message quoting the input). */
size_t sl_utf8_sanitize(const uint8_t *src, size_t n, char *dst, size_t cap);

/* --- the reader --- */

typedef struct {
    /* A complete text or binary message (reassembled if it was fragmented,
     * text already validated as UTF-8).  `data` is valid only during the
     * call and may be modified by the callee. */
    int (*on_message)(void *ctx, int opcode, uint8_t *data, size_t len);
    /* A ping, pong or close frame (payload <= 125 bytes; a close frame's
     * code and reason already validated).  Control frames may arrive
     * between the fragments of a message. */
    int (*on_control)(void *ctx, int opcode, uint8_t *data, size_t len);
} sl_ws_handlers_t;

/* The extension that inflates compressed messages (permessage-deflate:
 * sl_pmd_inflate), installed by the layer above, so this engine names no
 * extension: SL_OK with a malloc'd *out, SL_AGAIN over max, SL_ERROR for
 * bad data.  Without one, RSV1 is refused as if not negotiated. */
typedef int (*sl_ws_inflate_fn)(const uint8_t *in, size_t n, size_t max, uint8_t **out,
                                size_t *outlen);
void sl_ws_set_inflater(sl_ws_inflate_fn fn);

typedef struct {
    /* (Wider fields first, the bytes last: no padding holes - it sits in
     * every connection, issue 19's memory per idle connection.) */
    /* configuration */
    uint64_t max_message; /* bytes; a longer message fails with 1009 (inflated
                             size; the compressed one is bounded by it too);
                             at most UINT32_MAX */
    /* the frame whose payload is being read */
    uint64_t frame_len;
    uint64_t frame_have;
    /* the message being assembled (data frames only) */
    uint8_t *msg;     /* malloc'd; NULL when nothing is buffered */
    uint32_t msg_len; /* both <= max_message, which is < 4 GiB (sl_ws_reader_init) */
    uint32_t msg_cap;
    /* a control frame's payload when it arrives split across feeds
     * (malloc'd for that moment only: idle connections carry no buffer) */
    uint8_t *ctl;
    sl_utf8_t utf8;
    /* Frames read so far (the caller may reset it), and a limit: once
     * `frames` reaches a non-zero `frame_limit`, sl_ws_reader_feed stops at
     * the next frame boundary and returns 1, like a handler that stopped
     * it (a bound on the work one feed does, whatever the frames' size). */
    uint32_t frames, frame_limit;
    /* Messages and lone control frames completed, ever (a control frame
     * inside a fragmented message is not one): the caller's "this message
     * started when" restarts whenever it moves. */
    uint32_t completed;
    int failed;  /* the close code of a protocol error: every later feed
                    returns it and consumes nothing more */
    /* parser state: the header being read */
    uint8_t hdr[SL_WS_MAX_HEADER];
    uint8_t hdr_have;
    bool in_frame;
    uint8_t frame_op;
    bool frame_fin;
    bool frame_masked;
    uint8_t frame_mask[4];
    bool expect_masked;   /* server: true; client: false */
    bool in_message;  /* a fragmented message has started */
    uint8_t msg_op;   /* TEXT or BINARY */
    /* (three flags, one byte) */
    bool closed : 1; /* a close frame was delivered: ignore anything after */
    bool deflate : 1; /* permessage-deflate negotiated: RSV1 marks a compressed
                         message, inflated (by the inflater installed with
                         sl_ws_set_inflater) before it is delivered */
    bool msg_deflated : 1; /* the message being assembled: its first frame had RSV1 */
} sl_ws_reader_t;

void sl_ws_reader_init(sl_ws_reader_t *r, bool expect_masked, uint64_t max_message);

/* Free what the reader buffered. */
void sl_ws_reader_free(sl_ws_reader_t *r);

/* Consume n bytes (buf may be modified: unmasking happens in place).
 * Calls the handlers for each complete message or control frame, in order.
 * Returns 0 when everything was consumed; a WebSocket close code
 * (1002, 1007, 1009) on a protocol violation (the caller closes with it);
 * or the first non-zero value a handler returned (processing stops there,
 * the remaining bytes are not consumed).  *used (may be NULL) receives how
 * many bytes were consumed: after a handler stopped the reader, buf[*used..n)
 * is untouched (still masked) and may be fed again later, so a caller can
 * stop at a message boundary (back-pressure) and resume where it left.
 * After a protocol error every later call returns the same code. */
int sl_ws_reader_feed(sl_ws_reader_t *r, uint8_t *buf, size_t n, const sl_ws_handlers_t *h,
                      void *ctx, size_t *used);

/* True while a message (or a frame) has started but not finished: used for
 * --message-timeout-ms. */
bool sl_ws_reader_busy(const sl_ws_reader_t *r);

/* Bytes the reader currently holds in memory (for accounting). */
size_t sl_ws_reader_buffered(const sl_ws_reader_t *r);

#endif
