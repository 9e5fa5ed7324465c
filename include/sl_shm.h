/*
 * sl_shm.h - the one shared mapping and the counters that live in it.
 *
 * The master creates the mapping (MAP_SHARED | MAP_ANONYMOUS, --shm-size
 * bytes) before it forks the logger and the workers, so every process sees
 * it at the same address.  This header owns the fixed layout at its start:
 * server-wide figures and one sl_worker_stats per worker slot.
 *
 * Ownership: each worker writes only its own slot (the master resets a slot
 * when it respawns the worker); the logger writes the telemetry figures.
 * Anyone may read everything.  Every field is a plain integer updated with
 * liburcu's uatomic operations (uatomic_add, uatomic_set, uatomic_read):
 * counters need atomicity, not ordering, so no barrier is implied and none
 * is needed (a /stats reader may see figures a few increments apart).
 */
#ifndef SL_SHM_H
#define SL_SHM_H

#include "sl_common.h"
#include "sl_reg.h"

#define SL_MAX_WORKERS 64
#define SL_SHM_MAGIC 0x73656e74656c6974ULL /* "sentelit" */

/* Errors and refusals by reason: every one is counted here and shown in
 * /stats "errors" under its name (sl_err_name). */
typedef enum {
    SL_ERR_INVALID_JSON,       /* text message that is not JSON */
    SL_ERR_INVALID_MESSAGE,    /* JSON but not a valid protocol message */
    SL_ERR_PROTOCOL_ERROR,     /* WebSocket protocol violation, close 1002 */
    SL_ERR_INVALID_UTF8,       /* close 1007 */
    SL_ERR_UNSUPPORTED_DATA,   /* binary frame on "/", close 1003 */
    SL_ERR_MESSAGE_TOO_BIG,    /* close 1009 */
    SL_ERR_MESSAGE_TIMEOUT,    /* message not finished in time, close 1008 */
    SL_ERR_HEARTBEAT_TIMEOUT,  /* silent peer, close 1001 */
    SL_ERR_HANDSHAKE_TIMEOUT,  /* HTTP request not finished in time, 408 */
    SL_ERR_MAX_CONNECTIONS,    /* upgrade refused, 503 */
    SL_ERR_ORIGIN_REFUSED,     /* upgrade refused, 403 */
    SL_ERR_BAD_HANDSHAKE,      /* malformed upgrade request, 400 / 426 */
    SL_ERR_BAD_HTTP_REQUEST,   /* malformed or oversized HTTP, 4xx */
    SL_ERR_NOT_FOUND,          /* unknown path, 404 */
    SL_ERR_METHOD_NOT_ALLOWED, /* 405 */
    SL_ERR_ACCEPT_FAILED,      /* master: accept() or hand-off failed */
    SL_ERR_SHM_EXHAUSTED,      /* shared memory full: request refused */
    SL_ERR_ADMIN_REFUSED,      /* admin API: disabled, or bad/missing token */
    SL_ERR_SLOW_CONSUMER,      /* output over --max-outbound-bytes (or the worker's
                                  share of --max-outbound-total), close 1008 */
    SL_ERR_CONTROL_FLOOD,      /* pings/pongs over --max-control-rate, close 1008 */
    SL_ERR_HTTP_CONNECTIONS,   /* over --max-http-connections: idle keep-alive
                                  connection closed, or 503 */
    SL_ERR_FD_EXHAUSTED,       /* master: accept() hit EMFILE/ENFILE */
    SL_ERR__COUNT
} sl_err_t;

const char *sl_err_name(sl_err_t e);

typedef struct {
    int32_t pid;          /* 0 while the slot has no live worker */
    uint32_t restarts;    /* how many times the master respawned it */
    int64_t started_ms;   /* wall clock of the current incarnation */
    uint64_t connections; /* open protocol (WebSocket on "/") connections */
    uint64_t echo_connections;
    uint64_t http_connections; /* TCP connections not (yet) upgraded */
    uint64_t pending_handoff;  /* fds sent by the master, not yet taken */
    uint64_t accepted;         /* fds taken from the master */
    uint64_t http_requests;
    uint64_t messages_in;  /* protocol messages received */
    uint64_t messages_out; /* protocol messages queued to clients */
    uint64_t slow_consumer_disconnects;
    uint64_t published;  /* publishes accepted from this worker's clients */
    uint64_t delivered;  /* channel messages queued to local subscribers */
    uint64_t overloaded; /* publishes refused: an inbox or memory full */
    uint64_t rpc_requests;  /* RPC requests accepted from this worker's clients */
    uint64_t rpc_responses; /* RPC responses accepted from this worker's clients */
    uint64_t rpc_expired;   /* this worker's requesters that timed out */
    uint64_t outbound_bytes;      /* gauge: output buffers held (set each turn) */
    uint64_t backpressure_pauses; /* times a connection's reading was paused */
    uint64_t tel_emitted; /* telemetry records written to the pipe */
    uint64_t tel_dropped; /* telemetry records dropped (pipe full) */
    uint64_t errors[SL_ERR__COUNT];
} __attribute__((aligned(64))) sl_worker_stats_t;

typedef struct {
    uint64_t magic;
    uint64_t size;        /* bytes in the whole mapping */
    int64_t start_ms;     /* wall clock when the master started */
    uint64_t next_conn;   /* conn-id sequence, shared by every worker */
    uint32_t nworkers;
    int32_t master_pid;
    int32_t logger_pid;
    /* Telemetry figures.  Emitters count what they wrote or dropped in their
     * own slot (the master uses master_tel); the logger counts what it read
     * (processed) and what it failed to write out (errors). */
    uint64_t tel_processed;
    uint64_t tel_errors;
    int64_t fd_exhausted_mono; /* master: last accept() EMFILE/ENFILE (0: never) */
    sl_worker_stats_t master_tel; /* the master's own emit figures */
    sl_worker_stats_t workers[SL_MAX_WORKERS];
    sl_reg_t reg; /* the registry; its arena manages the rest of the mapping */
} sl_shm_hdr_t;

/* The mapping of this process (set by sl_shm_create before fork). */
extern sl_shm_hdr_t *sl_shm;

/* Create the shared mapping of `size` bytes: the header, then the
 * registry's arena over everything after it, with tables sized for
 * max_conns connections.  Returns SL_OK or SL_ERROR (errno set; EINVAL when
 * `size` is too small for the tables). */
int sl_shm_create(size_t size, uint32_t nworkers, uint64_t max_conns);

/* Smallest mapping the layout needs. */
size_t sl_shm_min_size(void);

#endif
