/*
 * sl_common.h - definitions every sente-lite module shares.
 *
 * Return codes follow nginx's convention: SL_OK on success, SL_AGAIN when
 * more input (or buffer space) is needed, SL_ERROR on failure.  Functions
 * that can fail return one of these (or a documented positive code such as
 * an HTTP status or a WebSocket close code) and never exit(); the caller
 * decides what a failure means.
 */
#ifndef SL_COMMON_H
#define SL_COMMON_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define SL_OK 0
#define SL_ERROR (-1)
#define SL_AGAIN (-2)

#define SL_VERSION "0.1.0"

#define SL_ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))
#define SL_MIN(a, b) ((a) < (b) ? (a) : (b))
#define SL_MAX(a, b) ((a) > (b) ? (a) : (b))
#define SL_UNUSED(x) ((void)(x))

/* Milliseconds since the Unix epoch (wall clock): every timestamp on the
 * wire uses this. */
int64_t sl_now_ms(void);

/* Monotonic milliseconds: every timeout and interval uses this. */
int64_t sl_mono_ms(void);

/* Monotonic microseconds, for latency measurement. */
int64_t sl_mono_us(void);

/* Tests and fuzzers replace the clocks (NULL: the real one again), so that
 * timeouts can be driven without waiting.  The server never calls this. */
void sl_clock_override(int64_t (*now_ms)(void), int64_t (*mono_ms)(void));
/* Is standard error the journal's stream (JOURNAL_STREAM = its dev:ino)? */
bool sl_stderr_is_journal(void);
/* A line "sente-lite: ..." on standard error, prefixed with its syslog
 * priority "<N>" when standard error is the journal (3 error, 4 warning),
 * so systemd files it at that priority.  For the processes' own messages
 * before or beside telemetry (start-up errors, the master's upgrade). */
#define SL_LOG_ERR 3
#define SL_LOG_WARNING 4
void sl_stderr(int prio, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Tests and fuzzers replace the clocks (NULL: the real one again), so that
 * timeouts can be driven without waiting.  The server never calls this. */
void sl_clock_override(int64_t (*now_ms)(void), int64_t (*mono_ms)(void));

#endif
