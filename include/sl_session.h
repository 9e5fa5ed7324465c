/*
 * sl_session.h - the access-control state of one protocol connection on its
 * worker: who it is (a verified token, or anonymous), when that expires,
 * the places it holds in the per-IP and per-user counts, and its rate
 * buckets.  It joins the modules that decide (sl_auth, sl_perm, sl_access)
 * to a connection, counts every refusal and tells telemetry.
 *
 * A connection has a session only when something needs one (a token key,
 * a namespace, a rate or connection limit); otherwise c->sess is NULL and
 * nothing here costs anything.
 *
 * Close codes (documented in the README and the man page):
 *   4401  no valid token within --auth-timeout-ms (anonymous not allowed),
 *         or SL_AUTH_MAX_FAILURES refused authenticate messages
 *   4408  the token expired and was not refreshed in time (checked at every
 *         message and at the worker's tick)
 *   4429  over --max-connections-per-user (user learnt from a message)
 *   1008  far over a rate limit
 */
#ifndef SL_SESSION_H
#define SL_SESSION_H

#include "sl_auth.h"
#include "sl_conn.h"
#include "sl_jw.h"
#include "sl_http.h"
#include "sl_perm.h"

#include <jansson.h>

#define SL_CLOSE_AUTH_REQUIRED 4401
#define SL_CLOSE_TOKEN_EXPIRED 4408
#define SL_CLOSE_TOO_MANY_FOR_USER 4429

/* Refused authenticate messages a connection may send; the last one is
 * answered, then the connection is closed with 4401. */
#define SL_AUTH_MAX_FAILURES 3
/* authentication-failed log lines per second and worker (the rest are
 * counted, and the next logged line says how many were left out). */
#define SL_AUTH_LOG_PER_SECOND 10

typedef struct sl_session sl_session_t;

/* Does this configuration need sessions at all? */
bool sl_session_needed(void);

/* The upgrade request of a protocol connection, before capacity is
 * reserved: per-IP place, token (header "Authorization: Bearer", or query
 * "token"), per-user place.  SL_OK, or an HTTP status (401, 429) with the
 * error code and message for the refusal (nothing is held then). */
int sl_session_upgrade(sl_conn_t *c, const sl_http_request_t *req, const char **code,
                       char *message, size_t msgsz);

/* The connection is registered (it has its conn-id): record its user in
 * the shared users table.  SL_ERROR when that fails (shared memory full):
 * the upgrade must be refused, so that no connection of a user is missing
 * from the table the admin API's user calls walk. */
int sl_session_admitted(sl_conn_t *c);

/* Add ,"user":..,"expires-at":.. to the welcome being written. */
void sl_session_welcome(sl_conn_t *c, sl_jw_t *welcome);

/* Give back everything the session holds and free it (connection closing,
 * or an upgrade refused after sl_session_upgrade succeeded). */
void sl_session_end(sl_conn_t *c);

/* The "authenticate" message: first authentication, or refresh.  true
 * when a refresh replaced the claims: the caller then drops the
 * subscriptions they no longer allow (sl_pubsub_recheck). */
bool sl_session_authenticate(sl_conn_t *c, json_t *msg);

/* Rate limits.  false: the message is refused (an error was sent, or the
 * connection is being closed) and must not be processed. */
bool sl_session_admit_message(sl_conn_t *c);
bool sl_session_admit_publish(sl_conn_t *c);
/* A join (a subscribe to a join-leave channel with others to tell) takes a
 * token from a bucket of its own, at the publish rate and burst (so a
 * reconnect's resubscribes leave its publishes alone: review rg15 G2):
 * false when it is empty - no strike, no close: the caller refuses the
 * subscribe rate-limited (review rf15 F2). */
bool sl_session_take_join(sl_conn_t *c);

/* Timers: authentication deadline and token expiry. */
void sl_session_tick(sl_conn_t *c, int64_t now_mono);

/* With a token key and without --allow-anonymous: the connection has not
 * authenticated yet and may do nothing else (not even hear broadcasts). */
bool sl_session_may_only_authenticate(const sl_conn_t *c);

/* The identity of the connection (NULL: anonymous). */
const sl_ident_t *sl_session_ident(const sl_conn_t *c);

/* The decision (sl_perm_check) for this connection.  NULL when allowed;
 * otherwise the reason, counted in /stats errors and told to telemetry. */
const char *sl_session_permit(sl_conn_t *c, sl_action_t act, const char *id, size_t len,
                              bool subscribed);

/* SIGHUP in the master, then in every worker: reread the key files; keep
 * the old keys when that fails.  `expect` (not 0): the fingerprint the
 * master loaded, which the new keys must have (a file rewritten in place
 * between the master's read and ours is refused).  Logged either way, with
 * the fingerprint.  The new fingerprint, or 0 (failed, or no key). */
uint64_t sl_session_reload_keys(uint64_t expect);

/* The key of a client address in the per-IP count, in place: an IPv6
 * address counts by its /64 ("2001:db8::/64": one site or host), an
 * address that cannot be read ("-", or a Unix socket's peer) as
 * "unknown"; IPv4 as itself. */
void sl_session_ip_key(char *ip, size_t n);

#endif
