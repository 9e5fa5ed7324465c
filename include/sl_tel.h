/*
 * sl_tel.h - telemetry: emitting events (every process) and the logger
 * process that drains them.
 *
 * Emitting never blocks and never makes a syscall per event: sl_tel_emit
 * appends a compact binary record to a per-process batch buffer; the batch
 * is written to the process's own telemetry pipe by sl_tel_flush (once per
 * event-loop turn, or earlier when the 64 KiB buffer fills).  Each pipe has
 * one writer, so batches never interleave; the pipe is non-blocking, a
 * partial write is continued by the next flush, and a record that finds
 * the batch full of unwritten bytes is dropped and counted (tel_dropped),
 * never waited for.
 *
 * The logger process reads records, formats them as text lines or JSON
 * lines, filters by level, writes them to the log file (or stderr), reopens
 * the file on SIGHUP and counts what it processed in shared memory.
 *
 * Record wire format (host byte order, both ends are the same binary):
 *   u16 total record length (header included)
 *   u8  level, u8 event id, i32 source (-1 master, -2 logger, -3 broker, else the
 *       worker id; shown as "source" in the data map), i64 timestamp ms
 *   then fields until the record ends:
 *   u8 type (SL_TF_*), u8 key length, key bytes, then
 *     SL_TF_INT:  i64
 *     SL_TF_BOOL: u8
 *     SL_TF_STR:  u16 length, bytes (JSON string contents, unescaped)
 *     SL_TF_NULL: nothing
 * A field whose string would not fit in the record is truncated.
 */
#ifndef SL_TEL_H
#define SL_TEL_H

#include "sl_common.h"
#include "sl_shm.h"

#include <string.h>

typedef enum { SL_TRACE, SL_DEBUG, SL_INFO, SL_WARN, SL_ERROR_LEVEL } sl_level_t;

/* The seed's event names (PROTOCOL section 7).  Keep sl_tel_event_name in
 * step with this list. */
typedef enum {
    SL_EV_SERVER_STARTING,
    SL_EV_SERVER_STARTED,
    SL_EV_SERVER_STOPPING,
    SL_EV_SERVER_STOPPED,
    SL_EV_CONNECTION_ADDED,
    SL_EV_CONNECTION_REMOVED,
    SL_EV_WEBSOCKET_OPENED,
    SL_EV_WEBSOCKET_CLOSED,
    SL_EV_WEBSOCKET_ERROR,
    SL_EV_WEBSOCKET_MESSAGE_RECEIVED,
    SL_EV_MESSAGE_ROUTING,
    SL_EV_MESSAGE_PROCESSED,
    SL_EV_MESSAGE_SENT,
    SL_EV_CHANNEL_CREATED,
    SL_EV_CHANNEL_DELETED,
    SL_EV_SUBSCRIPTION_ADDED,
    SL_EV_SUBSCRIPTION_REMOVED,
    SL_EV_SUBSCRIPTION_REJECTED,
    SL_EV_MESSAGE_PUBLISHED,
    SL_EV_MESSAGE_PUBLISH_FAILED,
    SL_EV_CHANNEL_BROADCAST_START,
    SL_EV_CHANNEL_BROADCAST_COMPLETE,
    SL_EV_BROADCAST_FAILED,
    SL_EV_RPC_REQUEST_SENT,
    SL_EV_RPC_RESPONSE_SENT,
    SL_EV_RPC_REQUEST_EXPIRED,
    SL_EV_RPC_CLEANUP_COMPLETED,
    SL_EV_HTTP_REQUEST,
    SL_EV_SLOW_CONSUMER_DISCONNECTED,
    SL_EV_WORKER_EXITED,
    SL_EV_WORKER_STARTED,
    /* sente-lite's own additions */
    SL_EV_SERVER_UPGRADING,
    SL_EV_SERVER_UPGRADE_FAILED,
    SL_EV_WORKER_STALLED,
    SL_EV_AUTHENTICATED,          /* a token accepted (upgrade or authenticate) */
    SL_EV_AUTHENTICATION_FAILED,  /* a token refused */
    SL_EV_SESSION_EXPIRED,        /* closed 4401 / 4408 */
    SL_EV_PERMISSION_DENIED,      /* an action refused by the rules */
    SL_EV_RATE_LIMITED,           /* closed 1008 for staying over a rate limit */
    SL_EV_CONNECTION_LIMIT,       /* refused over a per-IP / per-user limit */
    SL_EV_KEYS_RELOADED,          /* SIGHUP: token keys reread */
    SL_EV_KEYS_RELOAD_FAILED,     /* SIGHUP: kept the old keys */
    SL_EV_OPEN_ACCESS,            /* start-up warning: no key, no namespace, not loopback */
    SL_EV_WORKER_RECOVERED,
    SL_EV_REDIS_CONNECTED,    /* --redis: a link to a Redis instance is up */
    SL_EV_REDIS_DISCONNECTED, /* --redis: a link went down (reason) */
    SL_EV_BROKER_EXITED,      /* --redis: the broker process died (the master respawns it) */
    SL_EV_TLS_RELOADED,           /* SIGHUP: certificates reread */
    SL_EV_TLS_RELOAD_FAILED,      /* SIGHUP: kept the certificates in use */
    SL_EV_WORKER_CLEANUP_WAITING, /* a dead worker's cleanup waits past the kill bound */
    SL_EV_CHANNEL_JOIN,           /* join / leave events handed out (debug level) */
    SL_EV_CHANNEL_LEAVE,
    SL_EV_BROKER_NO_MEMORY, /* --redis: the broker's start-up walk found no memory (links held down) */
    SL_EV__COUNT
} sl_event_t;

const char *sl_tel_event_name(sl_event_t ev);
const char *sl_level_name(sl_level_t lvl); /* "trace" .. "error" */
/* Parse "trace".."error" (case-insensitive); SL_OK or SL_ERROR. */
int sl_level_parse(const char *s, sl_level_t *out);

enum { SL_TF_INT = 1, SL_TF_BOOL = 2, SL_TF_STR = 3, SL_TF_NULL = 4 };

typedef struct {
    const char *key;
    uint8_t klen;  /* strlen(key), known at compile time: keys are literals */
    uint8_t type;
    int64_t i;     /* SL_TF_INT, SL_TF_BOOL */
    const char *s; /* SL_TF_STR (need not be NUL-terminated) */
    size_t slen;
} sl_tel_field_t;

/* Keys must be string literals (their length is taken with sizeof). */
#define SL_TF_K_(k) .key = (k), .klen = (uint8_t)(sizeof(k) - 1)
#define SL_TF_I(k, v) {SL_TF_K_(k), .type = SL_TF_INT, .i = (int64_t)(v)}
#define SL_TF_B(k, v) {SL_TF_K_(k), .type = SL_TF_BOOL, .i = (v) ? 1 : 0}
#define SL_TF_S(k, v) {SL_TF_K_(k), .type = SL_TF_STR, .s = (v), .slen = strlen(v)}
#define SL_TF_SN(k, v, n) {SL_TF_K_(k), .type = SL_TF_STR, .s = (v), .slen = (n)}
#define SL_TF_NUL(k) {SL_TF_K_(k), .type = SL_TF_NULL}

/* Set up emitting in this process: `fd` is the pipe's write end (made
 * non-blocking here), `worker` the number written into records (-1 master),
 * `stats` the slot that counts emitted/dropped records, `enabled` false for
 * --no-telemetry, `min_level` from --log-level (records below it are not
 * even built). */
void sl_tel_init(int fd, int worker, sl_worker_stats_t *stats, bool enabled,
                 sl_level_t min_level);

/* Is an event of this level going to be recorded?  Cheap; use it to skip
 * building fields. */
bool sl_tel_on(sl_level_t lvl);

/* Append one record to the batch (flushing first if it would not fit). */
void sl_tel_emit(sl_event_t ev, sl_level_t lvl, const sl_tel_field_t *fields, size_t nfields);

/* Write what the batch holds with one write(); what the pipe did not
 * take is written by the next call. */
void sl_tel_flush(void);

/* At exit: keep flushing for up to timeout_ms while the pipe is full. */
void sl_tel_finish(int timeout_ms);

#define SL_TEL(ev, lvl, ...)                                                   \
    do {                                                                       \
        if (sl_tel_on(lvl)) {                                                  \
            const sl_tel_field_t sl_tf_[] = {__VA_ARGS__};                     \
            sl_tel_emit((ev), (lvl), sl_tf_, SL_ARRAY_LEN(sl_tf_));            \
        }                                                                      \
    } while (0)

typedef struct {
    const char *log_file;   /* NULL or "" = stderr */
    const char *app_name;   /* "sente-lite": names events "<app>.server/<event>" */
    bool json;              /* --log-format json */
    sl_level_t min_level;
} sl_logger_opts_t;

/* Body of the logger process: reads records from the pipes fds[0..n) (one
 * per writing process) until every one is at EOF (every write end closed),
 * writes them out, reopens the log file on SIGHUP.  Returns the process
 * exit status. */
int sl_logger_main(const int *fds, int n, const sl_logger_opts_t *opts);

/* Format one record as a line (text or JSON, with trailing '\n') into out;
 * returns the line length, or -1 if the record is malformed.  Used by the
 * logger and by the unit tests. */
int sl_tel_format(const uint8_t *rec, size_t len, const sl_logger_opts_t *opts, char *out,
                  size_t outsz);

#endif
