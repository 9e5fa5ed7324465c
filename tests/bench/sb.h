/*
 * sb.h - sente-bench, a load generator for sente-lite (and any RFC 6455
 * pub/sub server): the interfaces between its files.
 *
 *   sb_main.c      flags, RLIMIT_NOFILE, forking --processes and merging
 *   sb_ws.c        RFC 6455 client codec: handshake key/accept, frame
 *                  encoder, incremental frame decoder
 *   sb_conn.c      connections on one libevent base: paced non-blocking
 *                  connect, upgrade, raw-fd reads into one shared buffer,
 *                  per-connection output buffers
 *   sb_tls.c       wss://: an OpenSSL client per connection (non-blocking,
 *                  one SSL per connection, optional resumption), and the
 *                  permessage-deflate inflater for --deflate
 *   sb_run.c       the four modes and the phase machine that drives them
 *   sb_result.c    figures, the latency histogram, JSON out and in, merging
 *   sb_selftest.c  --self-test
 *
 * Everything in one process runs on one thread and one event base, so no
 * state here is locked.  Timestamps are CLOCK_MONOTONIC microseconds: the
 * generator and the server share the machine, and children of --processes
 * share the clock, so times from different processes compare directly.
 */
#ifndef SB_H
#define SB_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>
#include <time.h>

struct event_base;

#define SB_VERSION "0.1.0"

/* Exit statuses. */
enum { SB_EXIT_OK = 0, SB_EXIT_SETUP = 1, SB_EXIT_USAGE = 2 };

static inline uint64_t sb_now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

/* ------------------------------------------------------------ config */

enum sb_mode { SB_FANOUT, SB_ECHO, SB_CONNECT, SB_RPC };

struct sb_addr {
    struct sockaddr_storage sa;
    socklen_t len;
};

struct sb_config {
    enum sb_mode mode;
    const char *host;
    int port;
    const char *path, *sub_path, *pub_path;
    const char *header; /* one extra request header line ("Name: value"), or NULL */
    bool tls;            /* --tls: wss:// (TLS on the connection) */
    bool tls_resume;     /* --tls-resume: offer the last session (tickets) */
    bool deflate;        /* --deflate: offer permessage-deflate */
    const char *tls_ca;  /* --tls-ca FILE: verify the server; NULL = no check */
    const char *tls_name; /* --tls-name NAME: SNI and the name checked [host] */
    double duration, drain, hold, connect_timeout, connect_rate;
    bool hold_until_signal, json_only;
    int wait_welcome; /* -1 unset: the mode decides */
    int max_handshakes;
    int processes;
    struct sb_addr target;
    /* Fan-out over several servers (nodes of a cluster): subscribers go
     * round-robin to sub_targets, publishers to pub_target. */
    int pub_port;
    int sub_ports[16];
    int n_sub_ports;
    struct sb_addr pub_target;
    struct sb_addr sub_targets[16];
    struct sb_addr *sources;
    int n_sources;
    const char *source_list; /* as given, for the JSON parameters */

    /* Per-role counts (whole run). */
    long subscribers, publishers, connections, requesters, responders;
    const char *channel;
    const char *sub_frame, *sub_ack, *pub_frame, *pub_ack, *echo_frame;
    bool connect_sub; /* connect mode: each connection sends --sub-frame and
                       * is ready on --sub-ack (given explicitly) */
    double rate;   /* aggregate msgs/s; 0 = flat out */
    long inflight; /* -1 unset: the mode decides */
    long count;    /* 0 = no limit, the duration decides */
    long payload_size;
    long rpc_timeout_ms;

    /* This process's slice (equal to the totals without --processes). */
    int proc_index;
    long my_subscribers, my_publishers, my_connections, my_requesters, my_responders;
    long pub_base; /* global id of my first publisher or requester */
    long my_count;
    double my_rate;
};

/* ---------------------------------------------------------- histogram */

/* Log-linear: values below 64 us exact, then 64 buckets per power of two
 * (1/64 resolution) up to 2^27 us (134 s; larger values land in the last
 * bucket, the exact maximum is kept beside). */
#define SB_HIST_SUB 64
#define SB_HIST_BUCKETS (SB_HIST_SUB + 21 * SB_HIST_SUB)

struct sb_hist {
    uint64_t count, min, max, sum;
    uint64_t b[SB_HIST_BUCKETS];
};

void sb_hist_init(struct sb_hist *h);
void sb_hist_add(struct sb_hist *h, uint64_t v);
int sb_hist_index(uint64_t v);
uint64_t sb_hist_upper(int idx);
uint64_t sb_hist_percentile(const struct sb_hist *h, double pct);
void sb_hist_merge(struct sb_hist *into, const struct sb_hist *from);

/* ------------------------------------------------------------ results */

/* Every figure a run produces.  Counts add up across --processes; the
 * times are CLOCK_MONOTONIC microseconds and merge by min or max; rates and
 * percentiles are derived at the end, from merged counts and buckets. */
struct sb_result {
    int64_t connections, connected, connect_errors, handshake_errors, subscribe_errors,
        protocol_errors, closed_by_server;
    int64_t subscribers, subscribed, publishers, published, acknowledged, publish_errors, delivered,
        expected, duplicates, other_messages;
    int64_t round_trips;
    int64_t requests, responses, rpc_timeouts, rpc_errors, rpc_served, rpc_late_responses;
    int64_t held;
    int64_t tls_handshakes, tls_resumed; /* completed TLS handshakes, of them resumed */
    int64_t compressed;                  /* messages received compressed (inflated) */
    int64_t t_connect_start, t_connect_end, t_go, t_stop, t_last;
    double cpu_user, cpu_sys, wall;
    int64_t setup_failed; /* a child could not set up: exit 1 */
    int64_t dup_checked;  /* 1 when every process tracked duplicates */
    struct sb_hist hist;
};

void sb_result_init(struct sb_result *r);
void sb_result_merge(struct sb_result *into, const struct sb_result *from);
/* Raw figures and buckets as one JSON line (child -> parent). */
char *sb_result_raw_json(const struct sb_result *r);
int sb_result_parse_raw(const char *json, struct sb_result *r);
/* The final line on stdout and the summary on stderr. */
char *sb_result_final_json(const struct sb_config *cfg, const struct sb_result *r);
void sb_result_print_summary(const struct sb_config *cfg, const struct sb_result *r);
const char *sb_mode_name(enum sb_mode m);

/* ------------------------------------------------------- RFC 6455 codec */

enum {
    SB_OP_CONT = 0,
    SB_OP_TEXT = 1,
    SB_OP_BIN = 2,
    SB_OP_CLOSE = 8,
    SB_OP_PING = 9,
    SB_OP_PONG = 10
};

/* Set in the opcode handed to sb_ws_msg_fn for a data message whose first
 * frame had RSV1 (permessage-deflate: the payload is compressed). */
#define SB_WS_COMPRESSED 0x40

#define SB_WS_MAX_HEADER 14
#define SB_WS_MAX_MESSAGE (64u << 20)

/* Fixed-width marker embedded in every timed payload:
 *   T<16 digits: send time, us>P<5 digits: publisher/requester/conn id>
 *   S<10 digits: that sender's sequence number>                        */
#define SB_MARK_LEN 34

struct sb_mark {
    uint64_t t_us;
    uint32_t sender;
    uint64_t seq;
};

void sb_mark_write(char *out, uint64_t t_us, uint32_t sender, uint64_t seq);
/* Finds the first marker in p[0..n); 0 found, -1 none.  *at receives its
 * offset when at is not NULL. */
int sb_mark_find(const uint8_t *p, size_t n, struct sb_mark *m, size_t *at);

/* Writes a frame header; mask NULL = unmasked (a server's frame). */
size_t sb_ws_header(uint8_t *out, unsigned opcode, bool fin, uint64_t len, const uint8_t *mask);
/* XORs p with the mask, starting at mask offset pos. */
void sb_ws_mask(uint8_t *p, size_t n, const uint8_t mask[4], uint64_t pos);
/* A whole frame: header, mask and (masked) payload. Returns its size. */
size_t sb_ws_encode(uint8_t *out, unsigned opcode, bool fin, const void *payload, size_t len,
                    const uint8_t *mask);

/* A message or control frame out of the decoder.  Return 0 to go on, any
 * other value stops sb_ws_feed, which returns it. */
typedef int (*sb_ws_msg_fn)(void *ctx, unsigned opcode, uint8_t *data, size_t len);

#define SB_WS_PROTOCOL_ERROR (-1)

struct sb_ws_dec {
    uint8_t hdr[SB_WS_MAX_HEADER];
    uint8_t hlen, hneed; /* header bytes held / needed so far */
    uint8_t in_payload;  /* header done, payload bytes outstanding */
    uint8_t op, fin;     /* current frame */
    uint8_t masked, mask[4];
    uint8_t expect_masked; /* 1: decode a client's frames (self-test) */
    uint8_t msg_op;        /* opcode of the fragmented message in progress, 0 none */
    uint8_t allow_rsv1;    /* permessage-deflate negotiated: RSV1 on a message's first frame */
    uint8_t rsv1, msg_rsv1; /* current frame's RSV1 / the message's */
    uint8_t ctl_len;
    uint64_t left, pos; /* payload bytes still to come / already seen */
    uint8_t *ctl;       /* a control frame split across reads (125 bytes) */
    uint8_t *buf;       /* a data message split across reads or fragments */
    size_t len, cap;
};

/* Feeds n bytes (modified in place when unmasking).  Returns 0, a
 * callback's non-zero value, or SB_WS_PROTOCOL_ERROR. */
int sb_ws_feed(struct sb_ws_dec *d, uint8_t *p, size_t n, sb_ws_msg_fn fn, void *ctx);
void sb_ws_dec_free(struct sb_ws_dec *d);

/* Handshake: a random 16-byte key in base64 (24 chars + NUL), the accept
 * value a server must answer with (28 chars + NUL), and the check of a
 * response head: 0 when valid, else the HTTP status (or -1 when
 * malformed/missing headers, -2 when the accept value is wrong). */
void sb_ws_make_key(char out[25], uint64_t (*rnd)(void));
void sb_ws_accept_for(const char *key, char out[29]);
int sb_ws_check_response(const char *head, size_t len, const char *accept);
/* 1 when the response head accepts permessage-deflate (and says
 * server_no_context_takeover: each message inflates on its own), 2 when it
 * accepts it with context takeover, 0 when it does not accept it. */
int sb_ws_response_pmd(const char *head, size_t len);

/* -------------------------------------------------------- connections */

enum sb_role { SB_R_SUB, SB_R_PUB, SB_R_ECHO, SB_R_CONN, SB_R_REQ, SB_R_RESP };
enum sb_cstate { SB_CS_IDLE, SB_CS_CONNECTING, SB_CS_TLS, SB_CS_HANDSHAKE, SB_CS_OPEN, SB_CS_CLOSED };
/* Why a connection went down (sb_net.on_down). */
enum sb_down {
    SB_DOWN_CONNECT,
    SB_DOWN_HANDSHAKE,
    SB_DOWN_TIMEOUT,
    SB_DOWN_PROTOCOL,
    SB_DOWN_CLOSED
};

struct sb_hs;
struct event;
struct ssl_st;
struct z_stream_s;

/* One WebSocket client connection.  The arrays of these are allocated once
 * by sb_run.c; the engine owns fd, ev, hs, dec and out. */
struct sb_conn {
    int fd;
    uint8_t state, role;
    uint8_t settled;    /* counted out of the handshakes in flight */
    uint8_t ready;      /* the mode's: subscribed / welcomed */
    uint8_t want_close; /* close once the current read batch is done */
    uint8_t writing;    /* EV_WRITE registered */
    uint8_t dirty;      /* on the flush list */
    uint8_t close_sent;
    uint8_t timed;  /* registered with the connect timeout */
    uint8_t mflags; /* the mode's flags */
    uint8_t tls_wants_write; /* the TLS engine waits for the socket to take bytes */
    uint8_t pmd;             /* permessage-deflate accepted: 1 no context takeover, 2 with */
    uint32_t idx;   /* index within its role */
    struct event *ev;
    struct sb_hs *hs; /* handshake state, freed once open */
    struct ssl_st *ssl;          /* wss: the connection's TLS state, else NULL */
    struct z_stream_s *zctx;     /* pmd with context takeover: this connection's inflater */
    struct sb_conn *next_dirty;
    struct sb_ws_dec dec;
    uint8_t *out; /* output buffer: [ooff, olen) not yet written */
    size_t olen, ooff, ocap;
    uint64_t t_start; /* connect() time */
    /* The modes' per-connection state. */
    uint32_t inflight;
    uint64_t seq, t_sent;
    uint32_t *last_seq; /* per sender, for duplicate detection */
};

struct sb_net {
    struct event_base *base;
    const struct sb_config *cfg;
    struct sb_result *res;
    uint64_t now; /* time of the latest read (one clock read per batch) */
    /* Hooks into the mode; on_message gets text and binary messages only. */
    void (*on_open)(struct sb_conn *c);
    void (*on_message)(struct sb_conn *c, unsigned op, uint8_t *p, size_t n);
    void (*on_down)(struct sb_conn *c, enum sb_down why);
    void (*after_read)(struct sb_conn *c);
    void (*on_setup_done)(void);
};

extern struct sb_net sb_net;

int sb_net_init(struct event_base *base, const struct sb_config *cfg, struct sb_result *res,
                size_t nconns);
void sb_net_free(void);
/* Queue a connection for opening (paced by --max-handshakes and
 * --connect-rate); sb_net_start() starts pumping the queue. */
void sb_net_queue(struct sb_conn *c, enum sb_role role, uint32_t idx);
void sb_net_start(void);
/* Writes every connection that has queued output (end of each callback). */
void sb_net_flush_dirty(void);
/* The mode considers c set up: it leaves the handshakes in flight. */
void sb_conn_settle(struct sb_conn *c);
/* Room for n more output bytes; NULL when the buffer may not grow. */
uint8_t *sb_conn_reserve(struct sb_conn *c, size_t n);
void sb_conn_commit(struct sb_conn *c, size_t n);
size_t sb_conn_pending(const struct sb_conn *c);
/* A whole masked frame into the output buffer. */
int sb_conn_send(struct sb_conn *c, unsigned op, const void *payload, size_t len);
/* Masks a frame whose header (with a fresh mask) is written at hdr. */
size_t sb_conn_frame_header(uint8_t *hdr, unsigned op, uint64_t len, uint8_t mask[4]);
void sb_conn_close(struct sb_conn *c);
/* Sends close 1000 and stops reading messages; sb_net_close_all waits up
 * to wait_s for the server's answers, then closes what is left. */
void sb_net_close_all(struct sb_conn *conns, size_t n, double wait_s);

/* ---------------------------------------------------------------- TLS */

/* sb_tls.c: the client context (once per process, before connecting). */
int sb_tls_init(const struct sb_config *cfg);
void sb_tls_free(void);
/* Starts the TLS handshake on c->fd (connected); 0 ok, -1 failed. */
int sb_tls_start(struct sb_conn *c);
/* Drives the handshake: 1 done, 0 in progress (c->tls_wants_write says
 * which way), -1 failed. */
int sb_tls_step(struct sb_conn *c);
/* Like recv/send (ssize_t; 0 = end of stream; -1 with errno, EAGAIN when
 * it must wait; c->tls_wants_write set when it waits to write). */
long sb_tls_recv(struct sb_conn *c, void *buf, size_t n);
long sb_tls_send(struct sb_conn *c, const void *buf, size_t n);
/* Decoded bytes OpenSSL holds that the socket will not signal. */
int sb_tls_pending(const struct sb_conn *c);
/* 1 when c's handshake resumed a session. */
int sb_tls_resumed(const struct sb_conn *c);
void sb_tls_close(struct sb_conn *c);
/* Inflates one permessage-deflate message (RFC 7692 7.2.2) into a
 * process-wide buffer; *out and *outlen valid until the next call.  0 ok, -1
 * invalid data or larger than SB_WS_MAX_MESSAGE. */
int sb_pmd_inflate(struct sb_conn *c, const uint8_t *p, size_t n, uint8_t **out, size_t *outlen);
void sb_pmd_release(struct sb_conn *c);

/* ---------------------------------------------------------------- rng */

uint64_t sb_rand(void);
void sb_rand_seed(uint64_t s);

/* -------------------------------------------------------------- run */

/* Runs the configured mode in this process.  ctl_in/ctl_out are the pipe
 * to the parent of --processes (-1/-1 when alone).  Fills r; returns an
 * exit status. */
int sb_run(const struct sb_config *cfg, int ctl_in, int ctl_out, struct sb_result *r);

/* The barriers between the processes of --processes, kept by the parent
 * (or, for a lone process, by the process itself).  Each process sends
 * READY, STOPPED and DRAINED lines; once every process has sent one (or is
 * gone) the aggregator answers all with GO/ABORT, TOTAL and FINISH.  See
 * sb_run.c for the lines. */
struct sb_agg {
    const struct sb_config *cfg;
    int n;
    int *stage; /* per process: last barrier line seen; 4 = gone */
    bool sent[4];
    bool gone_early; /* a process went away before READY */
    int64_t ok_a, fail_a, ok_b, fail_b, published;
};
int sb_agg_init(struct sb_agg *a, const struct sb_config *cfg, int n);
void sb_agg_free(struct sb_agg *a);
/* Handles one line from process i (or i's end when line is NULL); appends
 * the answers due for every process to out (NUL-terminated, maybe empty). */
void sb_agg_line(struct sb_agg *a, int i, const char *line, char *out, size_t outlen);

int sb_selftest(void);

#endif
