/*
 * sl_tls.h - TLS with OpenSSL: the server's certificates (with SNI), their
 * reload on SIGHUP, session tickets sealed with keys every worker shares
 * (sl_tickets.h, rotated by the master), failures counted by reason, and
 * the TLS transport (sl_xport_tls) a connection accepted on a TLS listener
 * sits on.  Beside the plain transport, below the connection: it knows
 * sockets and the output queue, not HTTP or WebSocket.
 */
#ifndef SL_TLS_H
#define SL_TLS_H

#include "sl_common.h"
#include "sl_shm.h"
#include "sl_xport.h"

/* Load --tls-cert/--tls-key (every pair) into new server contexts and make
 * them the ones new handshakes use; the previous ones stay alive as long
 * as connections use them.  SL_OK, or SL_ERROR with `err` naming the file
 * and what is wrong with it (then nothing changes). */
int sl_tls_load(char *err, size_t errsz);

/* Is TLS configured (sl_tls_load succeeded at least once)? */
bool sl_tls_enabled(void);

/* SIGHUP.  The master (expect 0): sl_tls_load again.  A worker: `expect`
 * is the master's sl_tls_fingerprint after its reload - nothing to do when
 * it is ours already (the master's reload failed, so it kept the ones we
 * have too), else the files are loaded and the result kept only if it is
 * what the master serves (files changed in between: keep ours), so every
 * process, respawned ones included, serves the master's certificates.
 * Telemetry says tls-reloaded or, keeping the certificates in use,
 * tls-reload-failed with the reason. */
void sl_tls_reload(uint64_t expect);

/* What this process serves: 64 bits of a SHA-256 over every pair's
 * certificate chain (never 0; 0 without TLS). */
uint64_t sl_tls_fingerprint(void);

/* Count the heap OpenSSL holds in this process: every allocation it
 * makes goes through counting hooks (CRYPTO_set_mem_functions).  Call
 * first thing in main, before anything uses OpenSSL; SL_ERROR if too late. */
int sl_tls_count_heap(void);

/* A worker's tick: publish the heap OpenSSL holds (tls-heap-bytes), and,
 * once handshakes have paused for half a second, give the heap's free
 * pages back to the kernel (malloc_trim: a handshake's ~40 KiB of
 * temporaries leave holes between the long-lived SSL objects) - only when
 * OpenSSL has freed SL_TLS_TRIM_FREED bytes since the last trim, and at
 * most once per SL_TLS_TRIM_INTERVAL_MS (counted: tls-trims, tls-trim-ms). */
#define SL_TLS_TRIM_FREED (4u << 20)
#define SL_TLS_TRIM_INTERVAL_MS 10000
void sl_tls_housekeep(int64_t now_ms);

/* This process counts its handshakes and failures in `stats`. */
void sl_tls_set_stats(sl_worker_stats_t *stats);

/* A TLS server session on accepted socket fd: the transport state for
 * sl_xport_tls, or NULL (out of memory; counted). */
void *sl_tls_accept(int fd);

/* The TLS transport: the handshake happens in the first reads; output of
 * a turn is packed into records of up to 16 KiB (one SSL_write each). */
extern const sl_xport_t sl_xport_tls;

/* Master: rotate the shared ticket keys (at start, then every
 * SL_TLS_TICKET_ROTATE_MS). */
#define SL_TLS_TICKET_ROTATE_MS (3600 * 1000)
void sl_tls_rotate_tickets(void);

#endif
