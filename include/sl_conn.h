/*
 * sl_conn.h - one client connection inside a worker: its socket, its state
 * (HTTP request, WebSocket, closing), its reader and its write queue.
 *
 * A connection belongs to exactly one worker for its whole life and is only
 * touched by that worker's single thread.  It is freed by sl_conn_destroy,
 * which is deferred to the end of the event-loop turn (sl_conns_flush) so
 * that no callback further up the stack is left holding a dangling
 * pointer: code that closes a connection marks it SL_CONN_DEAD and returns.
 *
 * Layering (shm/README.md, "Worker-side layers"): a connection sits on a
 * transport (sl_xport.h) and under everything that gives its bytes a
 * meaning.  It never names the layers above: what it receives - a complete
 * HTTP request, a WebSocket text message, its end - it raises through the
 * handler table the worker installs (sl_conn_handlers_t), and the layers
 * above call down into it to send and to close.  The process's set of
 * connections (sl_conns: the loop, the stats slot, the lists walked at the
 * end of a turn, the scratch buffers) lives here too, so that the layers
 * above need nothing from the worker.
 */
#ifndef SL_CONN_H
#define SL_CONN_H

#include "sl_common.h"
#include "sl_http.h"
#include "sl_outq.h"
#include "sl_shm.h"
#include "sl_ws.h"
#include "sl_xport.h"

#include <event2/event.h>
#include <event2/event_struct.h>
#include <jansson.h>

typedef enum {
    SL_CONN_HTTP,    /* reading HTTP requests (before any upgrade) */
    SL_CONN_WS,      /* WebSocket open */
    SL_CONN_CLOSING, /* we sent a close frame; waiting for the peer's */
    SL_CONN_LINGER,  /* output done, write side shut: discard input until EOF */
    SL_CONN_DEAD,    /* closed; freed at the end of this loop turn */
} sl_conn_state_t;

typedef enum {
    SL_KIND_HTTP,     /* plain HTTP so far */
    SL_KIND_PROTOCOL, /* WebSocket on "/": the JSON protocol */
    SL_KIND_ECHO,     /* WebSocket on "/echo" (--echo) */
} sl_conn_kind_t;

typedef struct sl_conn sl_conn_t;

/* A connection's place on one of its process's lists (conn.c's list
 * helper: every list of connections is this one kind). */
typedef struct {
    sl_conn_t *prev, *next;
} sl_conn_link_t;

/* A list of connections through one of their links, oldest first. */
typedef struct {
    sl_conn_t *first, *last;
} sl_conn_list_t;

struct sl_conn {
    int fd;
    uint32_t slot;     /* index in the worker's slot table */
    uint8_t state;     /* sl_conn_state_t */
    uint8_t kind;      /* sl_conn_kind_t */
    bool dirty;        /* on the worker's flush list */
    bool write_armed;  /* ev also waits for EV_WRITE (socket was full) */
    bool close_after_flush; /* HTTP "Connection: close": shut after output */
    bool shut_wr;      /* shutdown(SHUT_WR) done */
    bool ops;          /* accepted on --ops-listen (operator endpoints only) */
    bool read_paused;  /* back-pressure: our output to it is over its bound */
    bool in_input;     /* its own input is being processed: what it is sent
                          now is a reply (back-pressured), not a delivery */
    bool backlog;      /* c->in holds input whose processing was stopped (a
                          pause, or the per-turn budget): not read further */
    bool ready;        /* on the worker's ready list (sl_worker_mark_ready) */
    /* These seven share a byte (bit-fields): see shm/README.md for
     * sl_conn_t's size and its malloc chunk. */
    bool http_counted : 1; /* counts against --max-http-connections */
    uint8_t idle : 2;  /* on an HTTP list: 1 the worker's idle one, 2 the
                          unfinished heads (conn.c), oldest first */
    bool held : 1;     /* on the list of holders of unfinished input (conn.c) */
    bool refused : 1;  /* answered 503 at admission: closed once it is written */
    bool pmd : 1;      /* permessage-deflate negotiated (sl_pmd.h) */
    bool pmd_shared : 1; /* ...and it takes the shared compressed frames (window 15) */
    bool xport_wants_read : 1; /* the transport's flush waits for the peer's bytes
                                  (TLS): read for it even while input is paused */
    bool peer_eof;     /* the peer's FIN came: not read any more (HTTP: its
                          complete requests are answered, then we close) */
    uint8_t turn_messages; /* messages processed in this callback */
    uint16_t close_code;   /* first close code sent or received */
    uint32_t ctl_count; /* control frames received in the current second */
    uint32_t ctl_second; /* that second (monotonic) */
    /* One event for both directions: EV_READ always, EV_WRITE added only
     * while output is stuck (one struct event less per connection). */
    struct event ev;
    sl_conn_link_t link_all;   /* the worker's live connections (sl_conns.conns) */
    sl_conn_t *dirty_next;     /* the worker's flush list (singly linked) */
    sl_conn_link_t link_ready; /* the worker's ready list */
    sl_conn_link_t link_idle;  /* the worker's idle HTTP list (or heads) */
    sl_conn_link_t link_held;  /* holders of unfinished input */
    /* One monotonic ms time, read by state (never two at once; issue 19m:
     * 16 B less).  Every change of state that reads another one sets it. */
    union {
        int64_t accepted_mono;  /* HTTP: accept hand-off time (keep-alive: the
                                   end of the last exchange) */
        int64_t last_ping_mono; /* WS: last heartbeat ping sent (set by the upgrade) */
        int64_t deadline_mono;  /* CLOSING / LINGER: give-up time (set on entry) */
    };
    int64_t last_rx_mono;     /* last byte received */
    int64_t last_tx_mono;     /* last time the socket took output */
    int64_t backlog_since_mono; /* 64 KiB or more queued after each write since */
    uint64_t written_total;   /* bytes the socket has taken, ever */
    uint64_t input_held;      /* its share of sl_conn_inbound_bytes */
    uint64_t ws_from;         /* written_total at which its WebSocket frames begin
                                 (the end of the 101) */
    uint64_t reply_end;       /* written_total + queued bytes when the last
                                 reply was queued (conn_reply_bytes) */
    int64_t busy_since_mono;  /* HTTP head or WS message started (0: idle) */
    /* Input not processed yet (malloc'd): an unfinished HTTP request, or
     * pipelined requests / WebSocket bytes left when back-pressure stopped
     * processing (at most one read's worth: reading stops with it). */
    char *in;
    uint32_t in_len, in_cap;
    uint32_t head_scanned; /* HTTP: c->in[0..this) holds no complete head */
    float chan_tokens;     /* channel creations it may still make (refilled per minute) */
    /* Pong coalescing (RFC 6455 5.5.3: only the latest ping need be
     * answered): `pong` is the answer to the latest ping, not queued yet;
     * `pong_sent` the one in the queue (its buffer is ours again once its
     * reference count is back to 1, i.e. it has been written). */
    sl_buf_t *pong, *pong_sent;
    sl_ws_reader_t reader;
    sl_outq_t out;
    /* our entry in the shared registry (protocol): also our open time
     * (wall ms) and message count, not copied here */
    struct sl_reg_conn *reg;
    void *xctx;               /* its transport's state, which names the transport
                                 (sl_xport_of; NULL: plain TCP, no state) */
    uint64_t conn_no;         /* the n of conn-<ms>-<n>: unique, never reused */
    /* The channels subscribed to: their entries in the worker's local
     * index (sl_cidx.h), whose id we read - no copy of our own.  Up to
     * one (subs_cap 1) it is held here, no array (a 32-byte malloc chunk
     * less per connection with one subscription); more: a malloc'd array
     * (subs_cap > 1).  Through sl_pubsub's subs_of() only. */
    union {
        struct sl_cidx_entry **subs; /* subs_cap > 1 */
        struct sl_cidx_entry *sub1;  /* subs_cap == 1 */
    };
    struct sl_call *calls;    /* RPC requests this connection is waiting on */
    struct sl_session *sess;  /* access control state (sl_session.h); NULL: none */
    uint32_t nsubs, subs_cap;
    int64_t chan_tokens_mono; /* last refill; 0: never created one */
    /* (--redis: what it has waiting on the broker is sl_conn_cl_t, not here) */
    const char *close_reason; /* static string */
    char conn_id[40];
};

/* --redis only: what a connection has waiting on the broker (issue 19m:
 * 48 B that every connection carried, kept out of sl_conn_t).  A side
 * table indexed by the connection's slot (sl_conns.cl), not a pointer in
 * sl_conn_t: a node without --redis pays nothing at all - no pointer, no
 * table - and the slot is the connection's dense, reused index already.
 *
 * Ownership: the connection's.  Made on first need by the layer that needs
 * it (sl_conn_cl_get: a deferred reply, a broker request, which also
 * covers a join and a deferred HTTP response - both follow one of those),
 * and freed by sl_conn_destroy after the layers above were told (`freed`:
 * the broker's records forget it; `closed`: deferred replies freed, the
 * joins still waiting left to their broker requests, whose answers free
 * them), so nothing above frees it and nothing reads it after.  Not freed
 * when it empties: a connection that waited once keeps its 64-byte chunk
 * (48 B) until it closes - every subscriber of a --redis node does (a
 * subscribe waits for the broker).  Read it with sl_conn_cl (NULL: nothing ever waited);
 * it stays where it is (the table holds pointers), but a layer keeps no
 * pointer to it across turns. */
typedef struct sl_conn_cl {
    /* proto.c: replies that wait for the broker keep their place (sl_proto_defer) */
    struct sl_reply *rq_head, *rq_tail;
    /* Bytes those replies hold (frames and entries), set through
     * sl_conn_hold: counted with the connection's output, so a client whose
     * replies pile up behind one waiting for the broker is stopped being
     * read at the same bound as one whose replies are queued (review rk16
     * N1). */
    uint64_t held_bytes;
    struct sl_crec *crecs;    /* cluster.c: its broker requests in flight (their records) */
    struct sl_join *joins;    /* pubsub.c: subscriptions waiting for the cluster */
    uint32_t nrq;             /* proto.c: entries in rq_head */
    bool history_busy;        /* pubsub.c: a `history` waits for the broker: stop reading (rv17 H1) */
    bool peer_gone;           /* conn.c: the peer's FIN seen meanwhile (told once: peer_gone) */
    bool http_deferred;       /* httpd.c: an HTTP response waits for the broker: stop parsing */
    bool http_deferred_keep;  /* ... and whether to keep the connection after it */
} sl_conn_cl_t;

/* What a connection raises to the layers above (installed by the worker,
 * sl_conns.on).  Each may close the connection (sl_conn_close_ws,
 * sl_conn_abort); none may free it. */
typedef struct {
    /* A complete HTTP request (head and body): answer it by queueing a
     * response (sl_conn_send), or upgrade (sl_conn_upgraded).  True: keep
     * the connection open for the next request. */
    bool (*http_request)(sl_conn_t *c, const sl_http_request_t *req, const char *body,
                         size_t body_len);
    /* Refuse the request under way with an HTTP error response (queued);
     * `keep`: the connection may carry the next request. */
    void (*http_error)(sl_conn_t *c, int status, const char *code, const char *message,
                       bool keep);
    /* One complete text message on a protocol WebSocket (valid UTF-8). */
    void (*ws_message)(sl_conn_t *c, char *data, size_t len);
    /* The timer tick of an open protocol WebSocket (authentication
     * deadline, token expiry), after the connection's own timers. */
    void (*ws_tick)(sl_conn_t *c, int64_t now_mono);
    /* A protocol connection is being freed: release what the layers above
     * hold for it (registry entry, subscriptions, calls, session). */
    void (*closed)(sl_conn_t *c);
    /* Any connection (every kind) is being freed: forget what still
     * refers to it (--redis: the broker's answers for it). */
    void (*freed)(sl_conn_t *c);
    /* The peer of a protocol WebSocket closed its side while the
     * connection is not read because a `history` waits for the broker
     * (history_busy): what it waits for may be given up (review rf17 H1).
     * Told once per wait; the connection stays (its input before the FIN
     * is still processed when reading resumes, then the EOF closes it). */
    void (*peer_gone)(sl_conn_t *c);
} sl_conn_handlers_t;

#define SL_SCRATCH_SIZE (64 * 1024)

/* The connections of this process (a worker, or a fuzzer's stand-in),
 * set up by the worker before the first connection. */
typedef struct {
    int id;                       /* the worker's number */
    struct event_base *base;      /* the loop connections' events live on */
    sl_worker_stats_t *stats;     /* the worker's slot in shared memory */
    const sl_conn_handlers_t *on; /* the layers above */
    bool stopping;                /* draining: requests answered Connection: close */
    /* The loop reports edge-triggered events and the peer's FIN (epoll):
     * only then is a paused connection whose history waits watched for
     * its FIN (conn.c; review rg17 L6: poll/select ignore EV_ET and
     * EV_CLOSED, and unread input would wake it every turn).  Without,
     * the request is cancelled when the connection is freed. */
    bool fin_watch;
    sl_conn_list_t conns;         /* live connections (SL_CONNS_EACH) */
    sl_conn_t *dirty;             /* to flush (or free, if dead) at turn end */
    sl_conn_list_t ready;         /* input left for the next turn */
    sl_conn_list_t idle;          /* idle HTTP connections, oldest first */
    sl_conn_t **slots;            /* slot -> connection (NULL: free) */
    uint32_t nslots, slot_cap, free_hint;
    uint32_t nconns;
    /* --redis: slot -> its sl_conn_cl_t (NULL: none); cl_cap entries, grown
     * to slot_cap on first need (never allocated without --redis). */
    sl_conn_cl_t **cl;
    uint32_t cl_cap;
    /* Two separate buffers: input is parsed in place from rbuf while
     * replies are encoded into ebuf, so encoding never clobbers bytes not
     * yet parsed. */
    uint8_t *rbuf; /* SL_SCRATCH_SIZE bytes: socket reads */
    uint8_t *ebuf; /* SL_SCRATCH_SIZE bytes: JSON encoding */
    /* The fan-out trace (SENTE_FANOUT_TRACE, sl_pubsub.h): its file, -1
     * while off (the default); when on, the monotonic us of the last read
     * from a client socket and of the last wake-up by another worker. */
    int trace_fd;
    int64_t read_us, woken_us;
} sl_conns_t;

extern sl_conns_t sl_conns;

/* Every live connection of the process, oldest first (one may be marked
 * dead in the body: it is freed only at the end of the turn). */
#define SL_CONNS_EACH(c) for (sl_conn_t *c = sl_conns.conns.first; c; c = c->link_all.next)

/* c's --redis state (sl_conn_cl_t), or NULL: nothing of it has waited yet. */
static inline sl_conn_cl_t *sl_conn_cl(const sl_conn_t *c)
{
    return c->slot < sl_conns.cl_cap ? sl_conns.cl[c->slot] : NULL;
}

/* c's --redis state, made (zeroed) on first need; NULL when out of memory
 * (the caller refuses what needed it the way it refuses when its own
 * allocation fails: "overloaded", counted in /stats). */
sl_conn_cl_t *sl_conn_cl_get(sl_conn_t *c);

/* The layers above hold `delta` more (or, negative, fewer) bytes for c that
 * it will send later (sl_conn_cl_t.held_bytes; c's --redis state must
 * exist when delta > 0): they count with its output for the read pause,
 * and a release below the resume mark resumes reading. */
void sl_conn_hold(sl_conn_t *c, int64_t delta);

/* c has a `history` request waiting for the broker (busy) or no longer:
 * while one waits, c is not read (its output counts as over the pause
 * mark), so a connection has at most one in flight (review rv17 H1). */
void sl_conn_history_busy(sl_conn_t *c, bool busy);

/* Count an error or refusal by reason (/stats "errors", /metrics). */
void sl_conns_count_error(sl_err_t e);

/* The connection in slot `slot`, or NULL (slots are how other workers'
 * messages name a connection). */
sl_conn_t *sl_conns_at(uint32_t slot);

/* The end of a loop turn, for connections: write the output of every
 * connection touched in the turn (one flush each) and free the dead ones. */
void sl_conns_flush(void);

/* After sl_conns_flush and the rest of the turn's work: connections with
 * input left over are activated, so the next turn runs each once - after
 * every other connection's events, the timers and the end-of-turn work
 * (activated from inside a callback, a peer that keeps sending would hold
 * the whole worker in one pass). */
void sl_conns_activate_ready(void);

/* Unfinished input this worker holds: every connection's c->in and the
 * message its WebSocket reader is assembling (the gauge inbound-bytes;
 * bounded by the worker's share of --max-inbound-total). */
extern uint64_t sl_conn_inbound_bytes;

/* Take over an accepted socket, already non-blocking and with TCP_NODELAY
 * (from the master's accept4; TCP_NODELAY from the listener, or set by the
 * master on a socket an inherited listener queued before it had the flag),
 * on transport xp with its state xctx (sl_xport_plain, NULL; or
 * sl_xport_tls and its session: xp is sl_xport_of(xctx), kept only there);
 * `ops`: it came in on --ops-listen.  NULL on failure (the fd is closed,
 * xctx released). */
sl_conn_t *sl_conn_new(int fd, bool ops, const sl_xport_t *xp, void *xctx);

/* Read a connection just taken over at once, without waiting for the
 * socket to be announced readable: its client spoke first (a ClientHello,
 * an HTTP request), and what it sent is usually there by the time the
 * socket was handed over - this saves a poll round on the connection
 * path.  Nothing there is no harm: the socket is announced later. */
void sl_conn_read_now(sl_conn_t *c);

/* Queue a whole frame/response already encoded in b (from b->start to
 * b->len).  Returns SL_OK, or SL_ERROR when it was not queued (the
 * connection is closing, or was closed instead: slow consumer, out of
 * memory).  The caller keeps its reference.
 *
 * Bounds: a reply (sent while the connection's own input is processed) is
 * always queued, and reading from the connection pauses while its output
 * is over half of --max-outbound-bytes (64 KiB for HTTP: the next
 * pipelined request waits); a delivery (a channel message, an RPC from
 * another client) that would take the deliveries queued over
 * --max-outbound-bytes (its own replies still queued do not count), or
 * arrives while the worker is over its share of --max-outbound-total and
 * the connection does not read (nothing written for a second while output
 * waits), makes it a slow consumer: close 1008.  One message is always
 * queued whole into an empty queue, so a message larger than the bound is
 * not a slow consumer by itself.  (sl_conn_tick also closes connections
 * that do not read while their worker is over its share.) */
int sl_conn_send(sl_conn_t *c, sl_buf_t *b);

/* The largest one reply may be: half of --max-outbound-bytes, at least
 * 256 KiB.  Builders of replies that grow with the server's state (retained
 * history, listings) stay under it, and sl_proto_reply / httpd refuse a
 * reply over it (reply-too-large) instead of queueing it. */
size_t sl_conn_reply_max(void);

/* Charge the message being processed `units` more messages of this turn's
 * budget (SL_CONN_TURN_MESSAGES a callback): a request whose work grows
 * with the server's state (presence walks, history copies) costs as much
 * as that many small ones, so pipelining many of them is spread over
 * turns instead of holding the worker's loop (review r15 M1). */
void sl_conn_charge(sl_conn_t *c, uint32_t units);

/* Encode `j` as a text frame and queue it (one encoder: sl_frame_json).
 * Does not take the reference to j. */
int sl_conn_send_json(sl_conn_t *c, json_t *j);

/* The HTTP phase is over: the 101 response is queued and the connection
 * speaks WebSocket from now on, as a protocol or an echo connection. */
void sl_conn_upgraded(sl_conn_t *c, sl_conn_kind_t kind);

/* --redis: an HTTP response that waited (c->http_deferred) was queued:
 * finish the exchange, or parse the next request already buffered. */
void sl_conn_http_resume(sl_conn_t *c);

/* Start the closing handshake with `code` and a reason (a static string). */
void sl_conn_close_ws(sl_conn_t *c, uint16_t code, const char *reason);

/* Close the socket now (no handshake) and schedule the free. */
void sl_conn_abort(sl_conn_t *c, const char *why);

/* Process n bytes received from the peer (data may be modified in place).
 * What reading the socket does; also the entry point of the fuzzers. */
void sl_conn_input(sl_conn_t *c, uint8_t *data, size_t n);

/* Write queued output; called at the end of each loop turn. */
void sl_conn_flush(sl_conn_t *c);

/* Timers: handshake/message timeouts, heartbeat, closing deadlines. */
void sl_conn_tick(sl_conn_t *c, int64_t now_mono);

/* Graceful stop: close 1001 to WebSocket peers, drop idle HTTP peers. */
void sl_conn_shutdown(sl_conn_t *c);

/* Free a DEAD connection (the worker calls this at turn end). */
void sl_conn_destroy(sl_conn_t *c);

/* --- frames (the one frame encoder; sl_ws_encode_header underneath) --- */

/* A server frame carrying a copy of payload. */
sl_buf_t *sl_frame_new(int opcode, const void *payload, size_t len);
/* A text frame with the compact JSON encoding of j. */
sl_buf_t *sl_frame_json(json_t *j);
/* A close frame with code and reason (reason cut to fit 125 bytes). */
sl_buf_t *sl_frame_close(uint16_t code, const char *reason);

#endif
