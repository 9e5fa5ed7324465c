/*
 * shm.c - creating the shared mapping and naming its counters.
 *
 * The mapping is anonymous and shared: it exists only while some process of
 * this server maps it, so a crash leaves nothing behind in /dev/shm.  Pages
 * are committed by the kernel on first touch, so a large --shm-size costs
 * only what is used.
 */
#include "sl_shm.h"

#include <errno.h>
#include <urcu/system.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

sl_shm_hdr_t *sl_shm;

static const char *const sl_err_names[SL_ERR__COUNT] = {
    [SL_ERR_INVALID_JSON] = "invalid-json",
    [SL_ERR_INVALID_MESSAGE] = "invalid-message",
    [SL_ERR_PROTOCOL_ERROR] = "protocol-error",
    [SL_ERR_INVALID_UTF8] = "invalid-utf8",
    [SL_ERR_UNSUPPORTED_DATA] = "unsupported-data",
    [SL_ERR_MESSAGE_TOO_BIG] = "message-too-big",
    [SL_ERR_MESSAGE_TIMEOUT] = "message-timeout",
    [SL_ERR_HEARTBEAT_TIMEOUT] = "heartbeat-timeout",
    [SL_ERR_HANDSHAKE_TIMEOUT] = "handshake-timeout",
    [SL_ERR_MAX_CONNECTIONS] = "max-connections",
    [SL_ERR_ORIGIN_REFUSED] = "origin-refused",
    [SL_ERR_BAD_HANDSHAKE] = "bad-handshake",
    [SL_ERR_BAD_HTTP_REQUEST] = "bad-http-request",
    [SL_ERR_NOT_FOUND] = "not-found",
    [SL_ERR_METHOD_NOT_ALLOWED] = "method-not-allowed",
    [SL_ERR_ACCEPT_FAILED] = "accept-failed",
    [SL_ERR_SHM_EXHAUSTED] = "shm-exhausted",
    [SL_ERR_ADMIN_REFUSED] = "admin-refused",
    [SL_ERR_ACCESS_LOG] = "access-log-failed",
    [SL_ERR_INVALID_TOKEN] = "invalid-token",
    [SL_ERR_TOKEN_EXPIRED] = "token-expired",
    [SL_ERR_TOKEN_NOT_YET_VALID] = "token-not-yet-valid",
    [SL_ERR_WRONG_AUDIENCE] = "wrong-audience",
    [SL_ERR_WRONG_ISSUER] = "wrong-issuer",
    [SL_ERR_WRONG_ALGORITHM] = "wrong-algorithm",
    [SL_ERR_TOKEN_TOO_LARGE] = "token-too-large",
    [SL_ERR_AUTH_NOT_CONFIGURED] = "authentication-not-configured",
    [SL_ERR_USER_MISMATCH] = "user-mismatch",
    [SL_ERR_AUTH_TIMEOUT] = "authentication-timeout",
    [SL_ERR_SESSION_EXPIRED] = "session-expired",
    [SL_ERR_UNAUTHENTICATED] = "unauthenticated",
    [SL_ERR_PERMISSION_DENIED] = "permission-denied",
    [SL_ERR_UNKNOWN_NAMESPACE] = "unknown-namespace",
    [SL_ERR_RATE_LIMITED] = "rate-limited",
    [SL_ERR_RATE_LIMIT_CLOSED] = "rate-limit-disconnect",
    [SL_ERR_MAX_CONNECTIONS_PER_IP] = "max-connections-per-ip",
    [SL_ERR_MAX_CONNECTIONS_PER_USER] = "max-connections-per-user",
    [SL_ERR_TOO_MANY_CHANNELS] = "too-many-channels",
    [SL_ERR_PRESENCE_DISABLED] = "presence-disabled",
    [SL_ERR_CHANNEL_NOT_FOUND] = "channel-not-found",
    [SL_ERR_SLOW_CONSUMER] = "slow-consumer",
    [SL_ERR_CONTROL_FLOOD] = "control-flood",
    [SL_ERR_HTTP_CONNECTIONS] = "http-connection-limit",
    [SL_ERR_FD_EXHAUSTED] = "descriptors-exhausted",
    [SL_ERR_REPLY_TOO_LARGE] = "reply-too-large",
    [SL_ERR_INBOUND_LIMIT] = "inbound-limit",
    [SL_ERR_TLS_PLAIN_HTTP] = "tls-plain-http",
    [SL_ERR_TLS_HANDSHAKE] = "tls-handshake-failed",
    [SL_ERR_TLS_HANDSHAKE_TIMEOUT] = "tls-handshake-timeout",
    [SL_ERR_TLS_VERSION] = "tls-protocol-version",
    [SL_ERR_TLS_NO_SHARED_CIPHER] = "tls-no-shared-cipher",
    [SL_ERR_TLS_BAD_RECORD] = "tls-bad-record",
    [SL_ERR_TLS_PEER_ALERT] = "tls-peer-alert",
    [SL_ERR_TLS_TWIN_FAILED] = "tls-twin-failed",
    [SL_ERR_AUTH_FAILURES_CLOSED] = "authentication-failures-disconnect",
    [SL_ERR_PERMISSION_REVOKED] = "permission-revoked",
    [SL_ERR_ADMIN_UNAVAILABLE] = "admin-unavailable",
};

const char *sl_err_name(sl_err_t e)
{
    return (unsigned)e < SL_ERR__COUNT ? sl_err_names[e] : "unknown";
}

static const char *const sl_hs_names[SL_HS__COUNT] = {
    [SL_HS_BAD_HANDSHAKE] = "bad-handshake",
    [SL_HS_UNSUPPORTED_VERSION] = "unsupported-version",
    [SL_HS_ORIGIN_NOT_ALLOWED] = "origin-not-allowed",
    [SL_HS_TOO_MANY_CONNECTIONS] = "too-many-connections",
    [SL_HS_SHM_EXHAUSTED] = "shm-exhausted",
    [SL_HS_UNAUTHORIZED] = "unauthorized",
    [SL_HS_MAX_CONNECTIONS_PER_IP] = "max-connections-per-ip",
    [SL_HS_MAX_CONNECTIONS_PER_USER] = "max-connections-per-user",
};

const char *sl_hs_fail_name(sl_hs_fail_t f)
{
    return (unsigned)f < SL_HS__COUNT ? sl_hs_names[f] : "unknown";
}

/* 100 us .. 2.5 s, then +Inf. */
const int64_t sl_hist_bounds_us[SL_HIST_BUCKETS - 1] = {
    100, 250, 500, 1000, 2500, 5000, 10000, 25000, 50000, 100000, 250000, 500000, 1000000,
    2500000};

void sl_hist_observe(sl_hist_t *h, int64_t us, uint64_t n)
{
    if (us < 0)
        us = 0;
    int b = 0;
    while (b < SL_HIST_BUCKETS - 1 && us > sl_hist_bounds_us[b])
        b++;
    /* One writer: load, add, store; no lock prefix on the hot path. */
    CMM_STORE_SHARED(h->buckets[b], CMM_LOAD_SHARED(h->buckets[b]) + n);
    CMM_STORE_SHARED(h->sum_us, CMM_LOAD_SHARED(h->sum_us) + (uint64_t)us * n);
    CMM_STORE_SHARED(h->count, CMM_LOAD_SHARED(h->count) + n);
}

static size_t header_size(void)
{
    long page = sysconf(_SC_PAGESIZE);
    return (sizeof(sl_shm_hdr_t) + (size_t)page - 1) / (size_t)page * (size_t)page;
}

size_t sl_shm_min_size(void)
{
    return header_size() + (1 << 20); /* and at least 1 MiB for the arena */
}

int sl_shm_create(size_t size, uint32_t nworkers, uint64_t max_conns, uint64_t max_channels)
{
    if (size < sl_shm_min_size() || nworkers == 0 || nworkers > SL_MAX_WORKERS) {
        errno = EINVAL;
        return SL_ERROR;
    }
    void *p = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED)
        return SL_ERROR;
    sl_shm = p;
    /* Fresh anonymous pages are zero; only the identity needs writing. No
     * other process exists yet, so plain stores suffice. */
    sl_shm->magic = SL_SHM_MAGIC;
    sl_shm->size = size;
    sl_shm->nworkers = nworkers;
    sl_reg_limits_t lim = {.max_connections = max_conns, .max_channels = max_channels,
                           .nworkers = nworkers};
    if (sl_reg_init(&sl_shm->reg, (char *)p + header_size(), size - header_size(), &lim) !=
        SL_OK) {
        munmap(p, size);
        sl_shm = NULL;
        errno = EINVAL;
        return SL_ERROR;
    }
    return SL_OK;
}
