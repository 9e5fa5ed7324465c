/*
 * session.c - access control on a connection (see sl_session.h): the token
 * of the upgrade request or of an "authenticate" message, expiry and
 * refresh, the per-IP and per-user places, rate limits, and the permission
 * decision with its accounting.
 *
 * Ownership: the session (c->sess) and its identity are the connection's,
 * malloc'd on its worker and freed by sl_session_end, which also gives back
 * the shared places it took (sl_access) - on every path: refused upgrade,
 * close, worker shutdown.  If the worker dies instead, the master gives them
 * back (a step of its dead-worker cleanup, sl_reg_cleanup_step).
 *
 * Rate limits are token buckets in milli-tokens, refilled by the time of
 * the read that brought the message (c->last_rx_mono), so every message of
 * one read sees the same clock and the counts are exact.  A refused message
 * draws from a second bucket of the same rate and burst (its "strikes");
 * when that one is empty too - the peer has kept sending at more than twice
 * its rate for a burst's worth - the connection is closed with 1008.
 */
#include "sl_session.h"
#include "sl_access.h"
#include "sl_accesslog.h"
#include "sl_conf.h"
#include "sl_proto.h"
#include "sl_tel.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <arpa/inet.h>
#include <sys/socket.h>

#define REG (&sl_shm->reg)

typedef struct {
    int64_t level; /* milli-tokens */
    int64_t last;  /* monotonic ms of the last refill */
} bucket_t;

struct sl_session {
    sl_ident_t *ident;         /* NULL: anonymous */
    int64_t expires_mono;      /* token expiry (+ leeway) in monotonic ms; 0: none */
    int64_t auth_deadline;     /* monotonic ms to authenticate by; 0: none */
    sl_access_user_t *user_entry; /* shared: conn-id -> user */
    bool ip_held, user_held;   /* places taken in the shared counts */
    const char *via;           /* how the upgrade brought the token (static) */
    char ip[SL_PEER_MAX];      /* the client's address (sl_accesslog_peer) */
    bucket_t msgs, msg_strikes, pubs, pub_strikes;
    bucket_t joins;            /* joins: the publish rate, a bucket of their own (rg15 G2) */
    uint32_t auth_failures;    /* refused authenticate messages so far */
};

/* ---------------------------------------------------------------- helpers */

static sl_err_t auth_err(sl_auth_result_t r)
{
    switch (r) {
    case SL_AUTH_TOKEN_EXPIRED: return SL_ERR_TOKEN_EXPIRED;
    case SL_AUTH_NOT_YET_VALID: return SL_ERR_TOKEN_NOT_YET_VALID;
    case SL_AUTH_WRONG_AUDIENCE: return SL_ERR_WRONG_AUDIENCE;
    case SL_AUTH_WRONG_ISSUER: return SL_ERR_WRONG_ISSUER;
    case SL_AUTH_WRONG_ALGORITHM: return SL_ERR_WRONG_ALGORITHM;
    case SL_AUTH_TOKEN_TOO_LARGE: return SL_ERR_TOKEN_TOO_LARGE;
    case SL_AUTH_NOT_CONFIGURED: return SL_ERR_AUTH_NOT_CONFIGURED;
    default: return SL_ERR_INVALID_TOKEN;
    }
}

static int64_t burst_of(int64_t rate, int64_t burst)
{
    return burst > 0 ? burst : rate;
}

static void bucket_fill(bucket_t *b, int64_t rate, int64_t burst, int64_t now)
{
    b->level = burst_of(rate, burst) * 1000;
    b->last = now;
}

static bool bucket_take(bucket_t *b, int64_t rate, int64_t burst, int64_t now)
{
    int64_t cap = burst_of(rate, burst) * 1000;
    if (now > b->last) {
        b->level += (now - b->last) * rate; /* rate/s = rate milli-tokens/ms */
        if (b->level > cap)
            b->level = cap;
        b->last = now;
    }
    if (b->level < 1000)
        return false;
    b->level -= 1000;
    return true;
}

bool sl_session_needed(void)
{
    const sl_conf_t *cf = sl_conf;
    return sl_perm_active() || cf->max_messages_per_second > 0 ||
           cf->max_publishes_per_second > 0 || cf->max_connections_per_ip > 0 ||
           cf->max_connections_per_user > 0;
}

const sl_ident_t *sl_session_ident(const sl_conn_t *c)
{
    return c->sess ? c->sess->ident : NULL;
}

static const char *user_of(const sl_conn_t *c)
{
    const sl_ident_t *id = sl_session_ident(c);
    return id ? id->user : "";
}

static void set_expiry(sl_session_t *s)
{
    if (s->ident->exp_ms == 0) {
        s->expires_mono = 0;
        return;
    }
    int64_t left = s->ident->exp_ms + sl_conf->jwt_leeway_ms - sl_now_ms();
    s->expires_mono = sl_mono_ms() + (left > 0 ? left : 0);
}

/* The upgrade request's token: "Authorization: Bearer T", else the query
 * parameter "token" (percent-decoded into buf, which has room for a whole
 * request target; a bad escape leaves it as sent, to be refused).  Its
 * length, 0 when there is none. */
static size_t request_token(const sl_http_request_t *req, char *buf, const char **tok,
                            const char **via)
{
    const sl_http_header_t *h = sl_http_header(req, "Authorization");
    if (h && h->value_len > 7 && strncasecmp(h->value, "Bearer ", 7) == 0) {
        *tok = h->value + 7;
        *via = "header";
        size_t n = h->value_len - 7;
        while (n && **tok == ' ')
            (*tok)++, n--;
        return n;
    }
    const char *q = memchr(req->target, '?', req->target_len);
    const char *end = req->target + req->target_len;
    while (q && q < end) {
        const char *p = q + 1, *amp = memchr(p, '&', (size_t)(end - p));
        const char *stop = amp ? amp : end;
        if (stop - p > 6 && memcmp(p, "token=", 6) == 0) {
            size_t raw = (size_t)(stop - p - 6);
            int n = sl_http_unescape(p + 6, raw, buf, SL_AUTH_TOKEN_MAX + 1);
            *tok = n >= 0 ? buf : p + 6;
            *via = "query";
            return n >= 0 ? (size_t)n : raw;
        }
        q = amp;
    }
    return 0;
}

/* authentication-failed events: at most SL_AUTH_LOG_PER_SECOND a second
 * on this worker (a peer can make failures as fast as it can send tokens,
 * and each would be a log line); each logged event says how many were
 * left out since the one before ("suppressed").  Every failure is counted
 * in /stats errors either way.  -1: leave this one out. */
static int64_t auth_log_slot(void)
{
    static int64_t window, in_window, suppressed;
    int64_t now = sl_mono_ms();
    if (now - window >= 1000) {
        window = now;
        in_window = 0;
    }
    if (in_window >= SL_AUTH_LOG_PER_SECOND) {
        suppressed++;
        return -1;
    }
    in_window++;
    int64_t n = suppressed;
    suppressed = 0;
    return n;
}

/* req: the upgrade request (NULL for an authenticate message).  reason:
 * sl_auth_reason's, or a reason of our own (user-mismatch). */
static void auth_failed(sl_conn_t *c, const sl_http_request_t *req, sl_err_t err,
                        const char *reason, const char *via, const char *msg)
{
    sl_conns_count_error(err);
    if (!sl_tel_on(SL_INFO))
        return;
    int64_t left_out = auth_log_slot();
    if (left_out < 0)
        return;
    /* On the upgrade there is no conn-id yet: the peer's address says who. */
    char peer[SL_PEER_MAX] = "";
    if (c->conn_id[0] == '\0')
        sl_accesslog_peer(c, req, peer, sizeof(peer));
    SL_TEL(SL_EV_AUTHENTICATION_FAILED, SL_INFO, SL_TF_S("conn-id", c->conn_id),
           SL_TF_S("peer", peer), SL_TF_S("via", via), SL_TF_S("reason", reason),
           SL_TF_S("message", msg), SL_TF_I("suppressed", left_out));
}

/* A place refused on the upgrade (rc from sl_access_acquire): counted,
 * logged, the session ended; the HTTP status to answer. */
static int place_refused(sl_conn_t *c, int rc, sl_access_kind_t kind, const char *key,
                         const char **code, char *message, size_t msgsz)
{
    bool ip = kind == SL_ACCESS_IP;
    if (rc == SL_ACCESS_FULL) {
        int64_t limit = ip ? sl_conf->max_connections_per_ip : sl_conf->max_connections_per_user;
        sl_conns_count_error(ip ? SL_ERR_MAX_CONNECTIONS_PER_IP
                                 : SL_ERR_MAX_CONNECTIONS_PER_USER);
        SL_TEL(SL_EV_CONNECTION_LIMIT, SL_INFO, SL_TF_S("scope", ip ? "ip" : "user"),
               SL_TF_S("key", key), SL_TF_I("limit", limit));
        *code = ip ? "max-connections-per-ip" : "max-connections-per-user";
        snprintf(message, msgsz, "too many connections %s (--%s)",
                 ip ? "from this address" : "of this user", *code);
    } else {
        sl_conns_count_error(SL_ERR_SHM_EXHAUSTED);
        *code = "shm-exhausted";
        snprintf(message, msgsz, "the server's shared memory is full");
    }
    sl_session_end(c);
    return rc == SL_ACCESS_FULL ? 429 : 503;
}

/* The connection becomes `id`'s: a place in the user's count, and - once
 * the connection has its conn-id (an authenticate message; on the upgrade
 * sl_session_admitted does it) - its entry in the users table, which the
 * admin API's user calls and /stats walk.  Only when both are taken is the
 * identity the session's; otherwise nothing is held and the caller keeps
 * and frees `id`.  SL_OK, SL_ACCESS_FULL or SL_ACCESS_NO_MEMORY. */
static int take_identity(sl_conn_t *c, sl_ident_t *id)
{
    sl_session_t *s = c->sess;
    /* Counted only when limited: without a limit the count decides nothing,
     * and every connection of one user would take the same lock. */
    if (sl_conf->max_connections_per_user > 0) {
        int rc = sl_access_acquire(REG, SL_ACCESS_USER, id->user, strlen(id->user),
                                   sl_conns.id, (uint64_t)sl_conf->max_connections_per_user);
        if (rc != SL_OK)
            return rc;
        s->user_held = true;
    }
    if (c->reg && (s->user_entry = sl_access_user_add(REG, c->conn_id, sl_conns.id, c->slot,
                                                      c->conn_no, id->user)) == NULL) {
        /* A connection missing from the users table would escape the
         * administrator's "close this user": refused instead. */
        if (s->user_held)
            sl_access_release(REG, SL_ACCESS_USER, id->user, strlen(id->user), sl_conns.id);
        s->user_held = false;
        return SL_ACCESS_NO_MEMORY;
    }
    s->ident = id;
    s->auth_deadline = 0;
    set_expiry(s);
    return SL_OK;
}

static void told_authenticated(sl_conn_t *c, const char *via, bool refresh)
{
    const sl_ident_t *id = c->sess->ident;
    SL_TEL(SL_EV_AUTHENTICATED, SL_INFO, SL_TF_S("conn-id", c->conn_id),
           SL_TF_S("user", id->user), SL_TF_S("via", via), SL_TF_I("expires-at", id->exp_ms),
           SL_TF_B("refresh", refresh));
}

/* ---------------------------------------------------------------- upgrade */

int sl_session_upgrade(sl_conn_t *c, const sl_http_request_t *req, const char **code,
                       char *message, size_t msgsz)
{
    const sl_conf_t *cf = sl_conf;
    if (!sl_session_needed())
        return SL_OK;
    sl_session_t *s = calloc(1, sizeof(*s));
    if (s == NULL) {
        *code = "out-of-memory";
        snprintf(message, msgsz, "the server is out of memory");
        return 503;
    }
    c->sess = s;
    int64_t now = sl_mono_ms();
    bucket_fill(&s->msgs, cf->max_messages_per_second, cf->message_burst, now);
    bucket_fill(&s->msg_strikes, cf->max_messages_per_second, cf->message_burst, now);
    bucket_fill(&s->pubs, cf->max_publishes_per_second, cf->publish_burst, now);
    bucket_fill(&s->pub_strikes, cf->max_publishes_per_second, cf->publish_burst, now);
    bucket_fill(&s->joins, cf->max_publishes_per_second, cf->publish_burst, now);

    /* Per address first: a flood from one address costs no signature check.
     * The address is the client's: behind a --trusted-proxy, the one its
     * X-Forwarded-For names (the proxy's own would put every client of it
     * in one count). */
    if (cf->max_connections_per_ip > 0) {
        sl_accesslog_peer(c, req, s->ip, sizeof(s->ip));
        sl_session_ip_key(s->ip, sizeof(s->ip));
        int rc = sl_access_acquire(REG, SL_ACCESS_IP, s->ip, strlen(s->ip), sl_conns.id,
                                   (uint64_t)cf->max_connections_per_ip);
        if (rc != SL_OK)
            return place_refused(c, rc, SL_ACCESS_IP, s->ip, code, message, msgsz);
        s->ip_held = true;
    }

    static char buf[SL_AUTH_TOKEN_MAX + 1];
    const char *tok = NULL, *via = NULL;
    size_t n = sl_auth_enabled() ? request_token(req, buf, &tok, &via) : 0;
    if (n == 0) {
        /* No token: anonymous, or given --auth-timeout-ms to authenticate. */
        if (sl_auth_enabled() && !cf->allow_anonymous)
            s->auth_deadline = now + cf->auth_timeout_ms;
        return SL_OK;
    }
    sl_ident_t *id;
    char detail[200];
    sl_auth_result_t r = sl_auth_verify(tok, n, sl_now_ms(), &id, detail, sizeof(detail));
    if (r != SL_AUTH_OK) {
        auth_failed(c, req, auth_err(r), sl_auth_reason(r), via, detail);
        *code = sl_auth_reason(r);
        snprintf(message, msgsz, "%s", sl_auth_peer_message(r, detail));
        sl_session_end(c);
        return 401;
    }
    int rc = take_identity(c, id);
    if (rc != SL_OK) {
        char user[SL_AUTH_USER_MAX + 1];
        snprintf(user, sizeof(user), "%s", id->user);
        sl_ident_free(id);
        return place_refused(c, rc, SL_ACCESS_USER, user, code, message, msgsz);
    }
    s->via = via; /* logged once the connection has its conn-id */
    return SL_OK;
}

int sl_session_admitted(sl_conn_t *c)
{
    sl_session_t *s = c->sess;
    if (s == NULL || s->ident == NULL)
        return SL_OK;
    /* Listed under its user, or refused (see take_identity). */
    s->user_entry = sl_access_user_add(REG, c->conn_id, sl_conns.id, c->slot, c->conn_no,
                                       s->ident->user);
    if (s->user_entry == NULL)
        return SL_ERROR;
    told_authenticated(c, s->via, false);
    return SL_OK;
}

void sl_session_welcome(sl_conn_t *c, sl_jw_t *w)
{
    const sl_ident_t *id = sl_session_ident(c);
    if (id == NULL)
        return;
    sl_jw_lit(w, ",\"user\":");
    sl_jw_str(w, id->user, strlen(id->user));
    sl_jw_lit(w, ",\"expires-at\":");
    if (id->exp_ms)
        sl_jw_int(w, id->exp_ms);
    else
        sl_jw_lit(w, "null");
}

void sl_session_end(sl_conn_t *c)
{
    sl_session_t *s = c->sess;
    if (s == NULL)
        return;
    if (s->user_entry)
        sl_access_user_remove(REG, s->user_entry);
    if (s->user_held)
        sl_access_release(REG, SL_ACCESS_USER, s->ident->user, strlen(s->ident->user),
                          sl_conns.id);
    if (s->ip_held)
        sl_access_release(REG, SL_ACCESS_IP, s->ip, strlen(s->ip), sl_conns.id);
    sl_ident_free(s->ident);
    free(s);
    c->sess = NULL;
}

/* ----------------------------------------------------------- authenticate */

static void auth_result(sl_conn_t *c, const char *reason, const char *message)
{
    if (reason) {
        sl_proto_reply(c, json_pack("{s:s, s:b, s:s, s:s}", "type", "authenticate-result",
                                    "success", 0, "reason", reason, "message", message));
        return;
    }
    const sl_ident_t *id = c->sess->ident;
    sl_proto_reply(c, json_pack("{s:s, s:b, s:s, s:o}", "type", "authenticate-result", "success",
                                1, "user", id->user, "expires-at",
                                id->exp_ms ? json_integer(id->exp_ms) : json_null()));
}

/* A refused authenticate message: counted, told, and after
 * SL_AUTH_MAX_FAILURES of them the connection is closed (each costs a
 * signature check; a peer holding no good token has nothing to try). */
static void auth_refused(sl_conn_t *c, sl_err_t err, const char *reason, const char *detail,
                         const char *peer_message)
{
    auth_failed(c, NULL, err, reason, "message", detail);
    auth_result(c, reason, peer_message);
    if (c->sess && ++c->sess->auth_failures >= SL_AUTH_MAX_FAILURES) {
        sl_conns_count_error(SL_ERR_AUTH_FAILURES_CLOSED);
        SL_TEL(SL_EV_SESSION_EXPIRED, SL_INFO, SL_TF_S("conn-id", c->conn_id),
               SL_TF_S("user", user_of(c)), SL_TF_S("reason", "authentication-failures"),
               SL_TF_I("code", SL_CLOSE_AUTH_REQUIRED));
        sl_conn_close_ws(c, SL_CLOSE_AUTH_REQUIRED, "too many failed authentications");
    }
}

bool sl_session_authenticate(sl_conn_t *c, json_t *msg)
{
    json_t *t = json_object_get(msg, "token");
    if (!json_is_string(t)) {
        sl_proto_bad_field(c, "authenticate", "token", t ? "must be a string" : "is missing");
        return false;
    }
    char m[200];
    sl_ident_t *id = NULL;
    sl_auth_result_t r =
        sl_auth_verify(json_string_value(t), json_string_length(t), sl_now_ms(), &id, m, sizeof(m));
    if (r == SL_AUTH_OK && c->sess == NULL)
        r = SL_AUTH_NOT_CONFIGURED; /* cannot happen: a key makes sessions needed */
    if (r != SL_AUTH_OK) {
        sl_ident_free(id);
        auth_refused(c, auth_err(r), sl_auth_reason(r), m, sl_auth_peer_message(r, m));
        return false;
    }
    sl_session_t *s = c->sess;
    if (s->ident) {
        /* A refresh: same user, new claims and expiry. */
        if (strcmp(s->ident->user, id->user) != 0) {
            sl_ident_free(id);
            auth_refused(c, SL_ERR_USER_MISMATCH, "user-mismatch",
                         "a refresh must be for the same user (sub)",
                         "a refresh must be for the same user (sub)");
            return false;
        }
        sl_ident_free(s->ident);
        s->ident = id;
        set_expiry(s);
        told_authenticated(c, "message", true);
        auth_result(c, NULL, NULL);
        return true; /* the caller checks the subscriptions against the new claims */
    }
    int rc = take_identity(c, id);
    if (rc == SL_ACCESS_FULL) {
        sl_conns_count_error(SL_ERR_MAX_CONNECTIONS_PER_USER);
        SL_TEL(SL_EV_CONNECTION_LIMIT, SL_INFO, SL_TF_S("scope", "user"),
               SL_TF_S("key", id->user), SL_TF_I("limit", sl_conf->max_connections_per_user));
        sl_ident_free(id);
        auth_result(c, "max-connections-per-user",
                    "too many connections of this user (--max-connections-per-user)");
        sl_conn_close_ws(c, SL_CLOSE_TOO_MANY_FOR_USER, "too many connections for this user");
        return false;
    }
    if (rc != SL_OK) {
        sl_ident_free(id);
        sl_conns_count_error(SL_ERR_SHM_EXHAUSTED);
        auth_result(c, "overloaded", "the server's shared memory is full");
        return false;
    }
    told_authenticated(c, "message", false);
    auth_result(c, NULL, NULL);
    return false;
}

/* ------------------------------------------------------------ rate limits */

static bool admit(sl_conn_t *c, bucket_t *b, bucket_t *strikes, int64_t rate, int64_t burst,
                  const char *flag)
{
    if (rate <= 0)
        return true;
    int64_t now = c->last_rx_mono;
    if (bucket_take(b, rate, burst, now))
        return true;
    if (bucket_take(strikes, rate, burst, now)) {
        char m[160];
        snprintf(m, sizeof(m), "over %s (%lld/s, burst %lld): not processed", flag,
                 (long long)rate, (long long)burst_of(rate, burst));
        sl_conns_count_error(SL_ERR_RATE_LIMITED);
        sl_proto_error(c, "rate-limited", m);
        return false;
    }
    sl_conns_count_error(SL_ERR_RATE_LIMIT_CLOSED);
    SL_TEL(SL_EV_RATE_LIMITED, SL_WARN, SL_TF_S("conn-id", c->conn_id), SL_TF_S("user", user_of(c)),
           SL_TF_S("limit", flag), SL_TF_I("rate", rate));
    sl_conn_close_ws(c, SL_WS_CLOSE_POLICY, "rate limit exceeded");
    return false;
}

static bool timers_due(sl_conn_t *c, int64_t now);

bool sl_session_admit_message(sl_conn_t *c)
{
    sl_session_t *s = c->sess;
    /* An expired token (or a passed authentication deadline) closes the
     * connection before the message is looked at, not only at the next
     * tick: nothing is done on a token after its exp. */
    if (s && timers_due(c, c->last_rx_mono))
        return false;
    return s == NULL || admit(c, &s->msgs, &s->msg_strikes, sl_conf->max_messages_per_second,
                              sl_conf->message_burst, "--max-messages-per-second");
}

bool sl_session_take_join(sl_conn_t *c)
{
    sl_session_t *s = c->sess;
    int64_t rate = sl_conf->max_publishes_per_second;
    return s == NULL || rate <= 0 ||
           bucket_take(&s->joins, rate, sl_conf->publish_burst, c->last_rx_mono);
}

bool sl_session_admit_publish(sl_conn_t *c)
{
    sl_session_t *s = c->sess;
    return s == NULL || admit(c, &s->pubs, &s->pub_strikes, sl_conf->max_publishes_per_second,
                              sl_conf->publish_burst, "--max-publishes-per-second");
}

/* ----------------------------------------------------------------- timers */

/* The authentication deadline or the token's expiry has come: close
 * (4401 / 4408), and true. */
static bool timers_due(sl_conn_t *c, int64_t now)
{
    sl_session_t *s = c->sess;
    if (s->auth_deadline && s->ident == NULL && now >= s->auth_deadline) {
        sl_conns_count_error(SL_ERR_AUTH_TIMEOUT);
        SL_TEL(SL_EV_SESSION_EXPIRED, SL_INFO, SL_TF_S("conn-id", c->conn_id),
               SL_TF_S("reason", "authentication-timeout"), SL_TF_I("code", SL_CLOSE_AUTH_REQUIRED));
        sl_conn_close_ws(c, SL_CLOSE_AUTH_REQUIRED, "authentication required");
        return true;
    }
    if (s->expires_mono && now >= s->expires_mono) {
        sl_conns_count_error(SL_ERR_SESSION_EXPIRED);
        SL_TEL(SL_EV_SESSION_EXPIRED, SL_INFO, SL_TF_S("conn-id", c->conn_id),
               SL_TF_S("user", s->ident->user), SL_TF_S("reason", "token-expired"),
               SL_TF_I("code", SL_CLOSE_TOKEN_EXPIRED));
        sl_conn_close_ws(c, SL_CLOSE_TOKEN_EXPIRED, "token expired");
        return true;
    }
    return false;
}

void sl_session_tick(sl_conn_t *c, int64_t now)
{
    if (c->sess)
        timers_due(c, now);
}

bool sl_session_may_only_authenticate(const sl_conn_t *c)
{
    return c->sess && c->sess->ident == NULL && sl_auth_enabled() && !sl_conf->allow_anonymous;
}

/* ------------------------------------------------------------- permission */

const char *sl_session_permit(sl_conn_t *c, sl_action_t act, const char *id, size_t len,
                              bool subscribed)
{
    sl_perm_t p = sl_perm_check(sl_session_ident(c), act, id, len, subscribed);
    if (p == SL_PERM_OK)
        return NULL;
    sl_conns_count_error(p == SL_PERM_UNAUTHENTICATED     ? SL_ERR_UNAUTHENTICATED
                          : p == SL_PERM_UNKNOWN_NAMESPACE ? SL_ERR_UNKNOWN_NAMESPACE
                          : p == SL_PERM_DISABLED          ? SL_ERR_PRESENCE_DISABLED
                                                           : SL_ERR_PERMISSION_DENIED);
    SL_TEL(SL_EV_PERMISSION_DENIED, SL_INFO, SL_TF_S("conn-id", c->conn_id),
           SL_TF_S("user", user_of(c)), SL_TF_SN("channel-id", id, len),
           SL_TF_S("action", sl_perm_action(act)), SL_TF_S("reason", sl_perm_reason(p)));
    return sl_perm_reason(p);
}

/* ------------------------------------------------------------------- keys */

uint64_t sl_session_reload_keys(uint64_t expect)
{
    const sl_conf_t *cf = sl_conf;
    if (!sl_conf_auth_enabled(cf))
        return 0;
    char err[512], fp[24];
    if (sl_auth_reload(cf->jwt_secret_file, cf->jwt_public_key_file, expect, err, sizeof(err)) !=
        SL_OK) {
        SL_TEL(SL_EV_KEYS_RELOAD_FAILED, SL_ERROR_LEVEL, SL_TF_S("reason", err),
               SL_TF_S("kept", "the keys in use"));
        return 0;
    }
    snprintf(fp, sizeof(fp), "%016llx", (unsigned long long)sl_auth_fingerprint());
    SL_TEL(SL_EV_KEYS_RELOADED, SL_INFO, SL_TF_S("secret-file", cf->jwt_secret_file),
           SL_TF_S("public-key-file", cf->jwt_public_key_file), SL_TF_S("fingerprint", fp));
    return sl_auth_fingerprint();
}

/* ------------------------------------------------------ per-IP count key */

void sl_session_ip_key(char *ip, size_t n)
{
    struct in6_addr a;
    if (strcmp(ip, "-") == 0) {
        snprintf(ip, n, "unknown");
        return;
    }
    if (strchr(ip, ':') == NULL || inet_pton(AF_INET6, ip, &a) != 1)
        return; /* IPv4 (mapped ones are already written as such) */
    char p[INET6_ADDRSTRLEN];
    if (IN6_IS_ADDR_V4MAPPED(&a)) { /* an IPv4 client (e.g. named by a proxy) */
        if (inet_ntop(AF_INET, a.s6_addr + 12, p, sizeof(p)) != NULL)
            snprintf(ip, n, "%s", p);
        return;
    }
    memset(a.s6_addr + 8, 0, 8);
    if (inet_ntop(AF_INET6, &a, p, sizeof(p)) != NULL)
        snprintf(ip, n, "%s/64", p);
}
