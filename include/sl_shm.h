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
#include "sl_tickets.h"

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
    SL_ERR_ACCESS_LOG,         /* --access-log lines that could not be written */
    /* access control: tokens refused (401 on the upgrade, or an
     * authenticate-result with success false), by reason */
    SL_ERR_INVALID_TOKEN,
    SL_ERR_TOKEN_EXPIRED,
    SL_ERR_TOKEN_NOT_YET_VALID,
    SL_ERR_WRONG_AUDIENCE,
    SL_ERR_WRONG_ISSUER,
    SL_ERR_WRONG_ALGORITHM,
    SL_ERR_TOKEN_TOO_LARGE,
    SL_ERR_AUTH_NOT_CONFIGURED, /* authenticate without any key */
    SL_ERR_USER_MISMATCH,       /* a refresh naming another user */
    SL_ERR_AUTH_TIMEOUT,        /* no valid token in time: close 4401 */
    SL_ERR_SESSION_EXPIRED,     /* token expired, not refreshed: close 4408 */
    SL_ERR_UNAUTHENTICATED,     /* an action refused: not authenticated */
    SL_ERR_PERMISSION_DENIED,   /* an action refused by the rules */
    SL_ERR_UNKNOWN_NAMESPACE,   /* --strict-namespaces */
    SL_ERR_RATE_LIMITED,        /* a message over a rate limit, not processed */
    SL_ERR_RATE_LIMIT_CLOSED,   /* far over a rate limit: close 1008 */
    SL_ERR_MAX_CONNECTIONS_PER_IP,   /* 429 */
    SL_ERR_MAX_CONNECTIONS_PER_USER, /* 429, or close 4429 */
    SL_ERR_TOO_MANY_CHANNELS,  /* subscribe refused: --max-channels or the creation quota */
    SL_ERR_PRESENCE_DISABLED,  /* presence / presence-stats in a namespace with presence=none */
    SL_ERR_CHANNEL_NOT_FOUND,  /* presence, presence-stats, history of a channel that is not there */
    SL_ERR_SLOW_CONSUMER,      /* output over --max-outbound-bytes (or the worker's
                                  share of --max-outbound-total), close 1008 */
    SL_ERR_CONTROL_FLOOD,      /* pings/pongs over --max-control-rate, close 1008 */
    SL_ERR_HTTP_CONNECTIONS,   /* over --max-http-connections: idle keep-alive
                                  connection closed, or 503 */
    SL_ERR_FD_EXHAUSTED,       /* master: accept() hit EMFILE/ENFILE */
    SL_ERR_REPLY_TOO_LARGE,    /* a reply or response over sl_conn_reply_max: refused */
    SL_ERR_INBOUND_LIMIT,      /* over the worker's share of --max-inbound-total: 1013 / 503 */
    /* TLS (sl_tls.h): connections closed before or in the handshake, by reason */
    SL_ERR_TLS_PLAIN_HTTP,     /* plain HTTP on a TLS port: 400, closed */
    SL_ERR_TLS_HANDSHAKE,      /* handshake failed (or the peer left in it) */
    SL_ERR_TLS_HANDSHAKE_TIMEOUT, /* not done within --message-timeout-ms */
    SL_ERR_TLS_VERSION,        /* under --tls-min-version, or not TLS at all */
    SL_ERR_TLS_NO_SHARED_CIPHER,
    SL_ERR_TLS_BAD_RECORD,     /* garbage where a TLS record should be */
    SL_ERR_TLS_PEER_ALERT,     /* the client refused us (e.g. an unknown CA) */
    SL_ERR_AUTH_FAILURES_CLOSED, /* too many failed authenticate messages: close 4401 */
    SL_ERR_PERMISSION_REVOKED,   /* a subscription the refreshed token no longer allows */
    SL_ERR_ADMIN_UNAVAILABLE,    /* admin API: a valid request the server could not
                                  * serve now (5xx: overloaded, shm-exhausted, ...) */
    SL_ERR_TLS_TWIN_FAILED,      /* a certificate's TLS 1.2 context was not built: its
                                  * TLS 1.2 handshakes use the TLS 1.3 one (slower) */
    SL_ERR__COUNT
} sl_err_t;

const char *sl_err_name(sl_err_t e);

/* A latency histogram: counts per bucket (not cumulative; the last bucket
 * is +Inf), the sum in microseconds and the number of observations.
 * Bounds: sl_hist_bounds_us.  Written by one process only (plain stores
 * of incremented values suffice: there is one writer; readers need only
 * untorn 64-bit loads). */
#define SL_HIST_BUCKETS 15
typedef struct {
    uint64_t buckets[SL_HIST_BUCKETS];
    uint64_t sum_us;
    uint64_t count;
} sl_hist_t;

extern const int64_t sl_hist_bounds_us[SL_HIST_BUCKETS - 1];

/* Record n observations of us microseconds into h (owner only). */
void sl_hist_observe(sl_hist_t *h, int64_t us, uint64_t n);

/* WebSocket upgrades refused, by reason (the "error" code of the HTTP
 * answer; shown in /stats "handshake-failures"). */
typedef enum {
    SL_HS_BAD_HANDSHAKE,       /* 400: malformed upgrade request */
    SL_HS_UNSUPPORTED_VERSION, /* 426: not version 13 */
    SL_HS_ORIGIN_NOT_ALLOWED,  /* 403: --allowed-origin */
    SL_HS_TOO_MANY_CONNECTIONS, /* 503: --max-connections */
    SL_HS_SHM_EXHAUSTED,       /* 503: no room in the registry */
    SL_HS_UNAUTHORIZED,        /* 401: a token refused (the reason is in errors) */
    SL_HS_MAX_CONNECTIONS_PER_IP,   /* 429: --max-connections-per-ip */
    SL_HS_MAX_CONNECTIONS_PER_USER, /* 429: --max-connections-per-user */
    SL_HS__COUNT
} sl_hs_fail_t;

const char *sl_hs_fail_name(sl_hs_fail_t f);

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
    uint64_t inbound_bytes;       /* gauge: unfinished input held (set each turn) */
    uint64_t backpressure_pauses; /* times a connection's reading was paused */
    uint64_t tel_emitted; /* telemetry records written to the pipe */
    uint64_t tel_dropped; /* telemetry records dropped (pipe full) */
    uint64_t missed_closes; /* subscribers closed 1013: their messages skipped our full inbox */
    uint64_t presence_resyncs; /* presence-resync notices: a join / leave skipped our full inbox */
    uint64_t presence_resync_failed; /* ... that could not be built: closed 1013 instead */
    uint64_t presence_events; /* join / leave frames queued to local subscribers (not in delivered) */
    /* Written by the master's watchdog (kept across respawns except stalled). */
    uint32_t stalled;         /* 1 while the worker makes no progress of its own */
    uint32_t blocked_by;      /* 1 + the reader slot (a worker's id, 64 the master) of the
                                 process holding the lock it is blocked on (0: none) */
    uint32_t draining;        /* written by the worker: stopping, wants no new sockets */
    int64_t stalled_since_ms; /* wall ms of its last progress, while stalled */
    /* The cleanup after its death, while it waits to take a lock the dead
     * worker's record names (its reader slot stays online meanwhile). */
    int64_t cleanup_wait_since_ms; /* wall ms the wait began (0: none) */
    uint32_t cleanup_blocked_by;   /* 1 + the slot holding that lock (0: none known) */
    /* Its subscriptions the cleanup set aside (a live process held their
     * channel or inbox lock) in its last pass over them, still to remove,
     * and the passes it has made (review rf15 F3: a cleanup waiting on
     * them holds the respawn back). */
    uint32_t cleanup_set_aside, cleanup_passes;
    uint64_t stalls;          /* times it was found stalled */
    uint64_t stall_kills;     /* times it was killed for staying stalled */
    uint64_t errors[SL_ERR__COUNT];
    /* Owner-written figures (one writer: CMM_STORE_SHARED of the new value). */
    uint64_t bytes_in;  /* bytes read from client sockets */
    uint64_t bytes_out; /* bytes written to client sockets */
    uint64_t handshake_failures[SL_HS__COUNT];
    uint64_t tls_handshakes; /* TLS handshakes completed */
    uint64_t tls_resumed;    /* ...of which resumed a session (a ticket) */
    uint64_t tls_heap_bytes; /* heap OpenSSL holds in this process (sl_tls_housekeep) */
    uint64_t tls_trims;      /* malloc_trim calls after handshakes paused (sl_tls_housekeep) */
    uint64_t tls_trim_us;    /* ...and the time they took */
    sl_hist_t delivery; /* publish accepted -> frame written by this worker */
    sl_hist_t rpc;      /* rpc-request accepted -> response handed to its requester */
} __attribute__((aligned(64))) sl_worker_stats_t;

/* The broker process (--redis, src/broker.c) and its Redis links.  Written
 * by the broker (the master sets pid/gen), read by any worker for /stats
 * and /health.  Figures are plain integers (uatomic); the strings are
 * written by the broker only, read as "a recent value". */
#define SL_BROKER_SHARDS 8
typedef struct {
    int32_t connected; /* 1 while the link (command and pub/sub connections) is up */
    uint32_t pad;
    uint64_t latency_us;     /* last PING round trip */
    uint64_t reconnects;     /* links established after the first */
    uint64_t errors;         /* error replies, connection failures */
    uint64_t timeouts;       /* commands past --redis-timeout-ms (the link is then dropped) */
    uint64_t in_flight;      /* commands sent, not yet answered */
    uint64_t subscribed;     /* Redis channels subscribed on this link */
    int64_t down_since_ms;   /* wall ms; 0 while up */
    uint64_t refused;        /* commands refused: too many in flight (overloaded) */
    uint64_t epoch_renewals; /* Redis restarted or failed over: every channel's epoch renewed */
    uint64_t presence_purged; /* entries of this --node-id's previous process removed at connect */
    uint32_t catchups_in_flight; /* catch-ups sent on this link (at most 64) */
    uint32_t catchups_waiting;   /* catch-ups waiting for one of those turns (holding) */
    uint64_t catchups_waited;    /* catch-ups that had to wait for a turn (counter) */
    uint64_t history_bytes;      /* max-bytes of the history pages in flight (gauge) */
    uint64_t history_refused;    /* history requests refused: the budget and its wait list were full */
    uint64_t history_waiting;    /* history requests waiting for the page budget (gauge) */
    uint64_t history_waited;     /* history requests that had to wait for it (counter) */
    uint64_t history_cancelled;  /* ... taken off the wait list unsent: the client had gone (counter) */
    uint64_t history_expired;    /* ... answered broker-timeout unsent: waited --redis-timeout-ms (counter) */
    char down_reason[96];
} sl_broker_link_t;

typedef struct {
    int32_t pid;       /* 0 while no broker runs */
    uint32_t restarts; /* respawned by the master */
    uint64_t gen;      /* bumped by the master when a broker dies: workers fail what they wait for */
    uint64_t requests;     /* requests popped */
    uint64_t expired;      /* popped past their deadline: dropped unanswered */
    uint64_t unavailable;  /* answered broker-unavailable (not done) */
    uint64_t timeouts;     /* answered broker-timeout (sent, outcome unknown), by the broker or a worker past its deadline */
    uint64_t delivered;    /* messages from Redis handed to local workers */
    uint64_t backlog;      /* messages from Redis waiting for room in an inbox */
    uint64_t backlog_bytes;
    uint64_t dropped;      /* messages from Redis dropped (backlog or hold bound): their channel reset */
    uint64_t pushback;     /* publishes refused (overloaded) while their channel had a backlog */
    uint64_t recovered;    /* messages fetched from history after a link was lost */
    uint64_t held;         /* live messages held while their channel catches up (gauge) */
    uint64_t held_bytes;   /* ... their bytes (gauge; bounded by --redis-max-held-bytes) */
    uint64_t hold_resets;  /* channels reset because what they held passed a bound */
    uint64_t reset_channels; /* channels whose subscribers were told to resubscribe */
    uint64_t deleted_channels; /* channels deleted on another node, removed here */
    uint64_t adopted_channels; /* channels a broker resumed at its start from the registry's position */
    uint64_t start_no_memory;  /* start-up walks that found no memory for a channel record (retried) */
    uint64_t presence_synced;  /* channel rewrites of presence entries completed (one per channel, not per slice) */
    uint64_t presence_sync_changes; /* entries that rewrite added or removed (a join / leave each) */
    uint64_t presence_sync_rewalks; /* a big channel's slice walked from the list head: its checkpoint had unsubscribed */
    uint64_t presence_sync_skipped; /* channels not rewritten: more local subscribers than a script takes */
    uint64_t presence_sync_errors; /* rewrites abandoned for an error answer (retried after a backoff) */
    uint64_t presence_sync_deferred; /* times a rewrite script was put off (once per turn or answer): its link had no room */
    uint64_t presence_dropped_foreign; /* another instance's channels removed from a link's nodepr set (PRES_SYNC "drop") */
    uint64_t same_instance_links; /* connects that found another --redis entry on the same instance and db */
    uint64_t presence_resyncs; /* presence-resync notices queued after a re-subscribe (per channel) */
    uint64_t presence_lost;    /* presence writes not sent (link down or full) and joins / leaves not delivered (no memory) */
    uint64_t presence_reasserts; /* presence rewrites because this node's heartbeat key had lapsed */
    uint64_t presence_pass_gen; /* raised (master: a dead worker's cleanup removed subscriptions)
                                 * to have the broker rewrite this node's entries (PRES_SYNC) */
    uint32_t nshards;
    uint32_t nodes;        /* live nodes seen at the last heartbeat */
    int64_t snapshot_ms;   /* wall ms of the last cluster snapshot */
    int32_t node_conflict; /* 1: another running process heart-beats with this node id */
    int32_t stalled;       /* set by the master: no progress for --worker-stall-ms */
    uint32_t blocked_by;   /* set by the master: 1 + the reader slot of the process whose
                              lock it waits for (0: none), as a worker's */
    int64_t stalled_since_ms;
    uint64_t stalls, stall_kills;
    char node_id[32];
    sl_broker_link_t link[SL_BROKER_SHARDS];
    struct sl_inbox *queue;  /* requests to the broker (sl_brq.h) */
    void *snapshot;          /* rcu: sl_cluster_snap_t, the cluster's channels */
} sl_broker_stats_t;

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
    uint64_t channels_reaped; /* empty auto-created channels removed (the master) */
    int64_t fd_exhausted_mono; /* master: last accept() EMFILE/ENFILE (0: never) */
    uint64_t rpc_old;         /* RPC requests older than a minute, counted by the master's
                                 sweep (a pass about every second) */
    sl_worker_stats_t master_tel; /* the master's own emit figures */
    sl_worker_stats_t workers[SL_MAX_WORKERS];
    sl_broker_stats_t broker; /* --redis */
    sl_tickets_t tickets; /* TLS session-ticket keys (sl_tickets.h; the master rotates) */
    uint64_t tls_fingerprint; /* the master's certificates (sl_tls_fingerprint; one store,
                                 before it signals SIGHUP): what workers may reload */
    sl_reg_t reg; /* the registry; its arena manages the rest of the mapping */
} sl_shm_hdr_t;

/* The mapping of this process (set by sl_shm_create before fork). */
extern sl_shm_hdr_t *sl_shm;

/* Create the shared mapping of `size` bytes: the header, then the
 * registry's arena over everything after it, with tables sized for
 * max_conns connections and max_channels channels.  Returns SL_OK or
 * SL_ERROR (errno set; EINVAL when `size` is too small for the tables). */
int sl_shm_create(size_t size, uint32_t nworkers, uint64_t max_conns, uint64_t max_channels);

/* Smallest mapping the layout needs. */
size_t sl_shm_min_size(void);

#endif
