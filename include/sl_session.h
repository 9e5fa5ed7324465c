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
 *   4401  no valid token within --auth-timeout-ms (anonymous not allowed)
 *   4408  the token expired and was not refreshed in time
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

typedef struct sl_session sl_session_t;

/* Does this configuration need sessions at all? */
bool sl_session_needed(void);

/* The upgrade request of a protocol connection, before capacity is
 * reserved: per-IP place, token (header "Authorization: Bearer", or query
 * "token"), per-user place.  SL_OK, or an HTTP status (401, 429) with the
 * error code and message for the refusal (nothing is held then). */
int sl_session_upgrade(sl_conn_t *c, const sl_http_request_t *req, const char **code,
                       char *message, size_t msgsz);

/* The connection is registered (it has its conn-id): record its user. */
void sl_session_admitted(sl_conn_t *c);

/* Add ,"user":..,"expires-at":.. to the welcome being written. */
void sl_session_welcome(sl_conn_t *c, sl_jw_t *welcome);

/* Give back everything the session holds and free it (connection closing,
 * or an upgrade refused after sl_session_upgrade succeeded). */
void sl_session_end(sl_conn_t *c);

/* The "authenticate" message: first authentication, or refresh. */
void sl_session_authenticate(sl_conn_t *c, json_t *msg);

/* Rate limits.  false: the message is refused (an error was sent, or the
 * connection is being closed) and must not be processed. */
bool sl_session_admit_message(sl_conn_t *c);
bool sl_session_admit_publish(sl_conn_t *c);

/* Timers: authentication deadline and token expiry. */
void sl_session_tick(sl_conn_t *c, int64_t now_mono);

/* The identity of the connection (NULL: anonymous). */
const sl_ident_t *sl_session_ident(const sl_conn_t *c);

/* The decision (sl_perm_check) for this connection.  NULL when allowed;
 * otherwise the reason, counted in /stats errors and told to telemetry. */
const char *sl_session_permit(sl_conn_t *c, sl_action_t act, const char *id, size_t len,
                              bool subscribed);

/* SIGHUP in a worker (and the master): reread the key files; keep the old
 * keys when that fails.  Logged either way. */
void sl_session_reload_keys(void);

#endif
