/*
 * conf.c - flags and environment variables, in one table.
 *
 * Every option is a row of sl_options[]: its flag, the seed's environment
 * variable (if any), its kind, where it lands in sl_conf_t, its bounds, its
 * default and its help line.  Parsing, --help, --check-config and /stats
 * "server-config" all walk the same table, so an option cannot exist in one
 * and not the others.  Each row also gives, with nothing more to write:
 *   - an environment variable SENTE_<FLAG> (upper case, '-' -> '_'); the
 *     seed's name, where there is one, stays as an alias the SENTE_ name beats;
 *   - a config-file key, the flag's own name (`key = value` lines, --config).
 * Order of precedence: defaults, then the config file, then the environment,
 * then the flags.  A repeatable option (--channel, --allowed-origin,
 * --trusted-proxy, --namespace) takes its whole list from the highest source
 * that names it at all.
 */
#include "sl_conf.h"
#include "sl_chan.h"
#include "sl_shm.h"
#include "sl_ws.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <limits.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

const sl_conf_t *sl_conf;

typedef enum {
    OPT_STR,     /* char[] field */
    OPT_INT,     /* int64_t field, decimal */
    OPT_PORT,    /* int field */
    OPT_BYTES,   /* int64_t field, with K/M/G suffix */
    OPT_BOOL,    /* bool field; --name / --no-name, env true/false */
    OPT_FLAG,    /* bool field set by the bare flag */
    OPT_WORKERS, /* N or auto */
    OPT_LEVEL,   /* sl_level_t */
    OPT_FORMAT,  /* text|json -> log_json */
    OPT_ORIGIN,  /* repeatable string list */
    OPT_NAME,    /* app name: [A-Za-z0-9._-]+ */
    OPT_CHANNEL, /* --channel NAME[:key=value,...], repeatable */
    OPT_SECRET,  /* like OPT_STR, but never shown (/stats says only whether set) */
    OPT_NAMESPACE, /* --namespace NAME:key=value,..., repeatable; env: space-separated */
    OPT_HOSTPORT,  /* HOST:PORT ([v6]:PORT) */
    OPT_REDIS,   /* --redis URL, repeatable (shards); env: a comma-separated list */
    OPT_HELP,
    OPT_VERSION,
    OPT_CONFIG, /* --config FILE / -c FILE: read before everything else */
    OPT_CHECK,  /* --check-config / -t */
    OPT_CIDR,   /* repeatable address/prefix (--trusted-proxy) */
    OPT_PATHS,  /* repeatable file name (sl_conf_paths_t field) */
} opt_kind_t;

/* Where a value came from, lowest precedence first. */
enum { SRC_DEFAULT, SRC_FILE, SRC_ENV, SRC_FLAG };

typedef struct {
    const char *flag; /* without the leading "--" */
    const char *env;  /* the seed's name, an alias of SENTE_<FLAG>; NULL if none */
    opt_kind_t kind;
    size_t off;
    size_t size; /* for OPT_STR / OPT_NAME: field size */
    int64_t min, max;
    const char *def; /* default, as text (applied through the parser) */
    const char *arg; /* placeholder shown in --help */
    const char *help;
} sl_option_t;

#define OFF(f) offsetof(sl_conf_t, f)
#define SZ(f) sizeof(((sl_conf_t *)0)->f)

static const sl_option_t sl_options[] = {
    {"host", "HOST", OPT_STR, OFF(host), SZ(host), 1, 0, "localhost", "HOST",
     "address to listen on"},
    {"port", "PORT", OPT_PORT, OFF(port), 0, 1, 65535, "3000", "N", "TCP port to listen on"},
    {"workers", NULL, OPT_WORKERS, OFF(workers), 0, 1, SL_MAX_WORKERS, "auto", "N|auto",
     "worker processes; auto = usable CPU cores"},
    {"max-connections", NULL, OPT_INT, OFF(max_connections), 0, 1, 10000000, "10000", "N",
     "WebSocket connections across all workers (over it: 503)"},
    {"heartbeat-interval-ms", NULL, OPT_INT, OFF(heartbeat_interval_ms), 0, 10, 86400000,
     "30000", "MS", "ping interval; silent for two intervals: close 1001"},
    {"message-timeout-ms", NULL, OPT_INT, OFF(message_timeout_ms), 0, 10, 3600000, "5000", "MS",
     "time to finish an HTTP request head or a WebSocket message"},
    {"max-message-size", NULL, OPT_BYTES, OFF(max_message_size), 0, 64, 256LL << 20, "1M",
     "BYTES", "largest WebSocket message or HTTP body (over it: 1009 / 413)"},
    {"max-outbound-bytes", NULL, OPT_BYTES, OFF(max_outbound_bytes), 0, 1024, 1LL << 30, "4M",
     "BYTES", "per-connection send queue bound (replies: reading pauses at half of it; "
     "deliveries over it: close 1008)"},
    {"max-outbound-total", NULL, OPT_BYTES, OFF(max_outbound_total), 0, 1 << 20, 1LL << 40, "1G",
     "BYTES", "output buffered by all workers together (an equal share each; over it: "
     "stop reading, close slow consumers 1008)"},
    {"max-inbound-total", NULL, OPT_BYTES, OFF(max_inbound_total), 0, 1 << 20, 1LL << 40, "256M",
     "BYTES", "unfinished input (messages, request bodies) all workers together may hold (an "
     "equal share each; over it: connections holding 64 KiB or more of it are closed 1013 / "
     "503)"},
    {"max-http-connections", NULL, OPT_INT, OFF(max_http_connections), 0, 1, 10000000, "1024",
     "N", "TCP connections not upgraded to WebSocket, across all workers (over it: idle "
     "keep-alive ones are closed, else 503)"},
    {"keepalive-timeout-ms", NULL, OPT_INT, OFF(keepalive_timeout_ms), 0, 100, 3600000, "5000",
     "MS", "idle time after which a keep-alive HTTP connection is closed"},
    {"max-control-rate", NULL, OPT_INT, OFF(max_control_rate), 0, 1, 1000000, "100", "N",
     "ping/pong frames a connection may send per second (over it: close 1008)"},
    {"allowed-origin", NULL, OPT_ORIGIN, 0, 0, 0, 0, NULL, "ORIGIN",
     "accept browser upgrades only from this Origin (repeatable)"},
    {"echo", NULL, OPT_FLAG, OFF(echo), 0, 0, 0, NULL, NULL,
     "enable the raw RFC 6455 echo endpoint /echo"},
    {"web-ui", "SENTE_WEB_UI", OPT_BOOL, OFF(web_ui), 0, 0, 0, "true", NULL,
     "serve the pages /, /demo and /dashboard (--no-web-ui: off; /client.js stays)"},
    {"telemetry", "TELEMETRY_ENABLED", OPT_BOOL, OFF(telemetry), 0, 0, 0, "true", NULL,
     "emit telemetry events (--no-telemetry: off)"},
    {"app-name", "APP_NAME", OPT_NAME, OFF(app_name), SZ(app_name), 1, 0, "sente-lite", "NAME",
     "application name in event names and /stats"},
    {"log-file", NULL, OPT_STR, OFF(log_file), SZ(log_file), 0, 0, "", "PATH",
     "telemetry log file (default: standard error)"},
    {"log-level", NULL, OPT_LEVEL, OFF(log_level), 0, 0, 0, "info", "LEVEL",
     "trace, debug, info, warn or error"},
    {"log-format", NULL, OPT_FORMAT, OFF(log_json), 0, 0, 0, "text", "text|json",
     "telemetry line format"},
    {"shm-size", NULL, OPT_BYTES, OFF(shm_size), 0, 1 << 20, 64LL << 30, "64M", "BYTES",
     "size of the shared-memory mapping"},
    {"pid-file", NULL, OPT_STR, OFF(pid_file), SZ(pid_file), 0, 0, "", "PATH",
     "write the master's pid here"},
    {"auto-create", "AUTO_CREATE_CHANNELS", OPT_BOOL, OFF(auto_create), 0, 0, 0, "true", NULL,
     "subscribe creates missing channels (--no-auto-create: off)"},
    {"max-subscribers", "MAX_SUBSCRIBERS", OPT_INT, OFF(max_subscribers), 0, 1, 10000000, "1000",
     "N", "default subscriber limit of a channel"},
    {"message-retention", "MESSAGE_RETENTION", OPT_INT, OFF(message_retention), 0, 0, 10000, "0",
     "N", "default number of messages a channel retains"},
    {"rpc-timeout-ms", NULL, OPT_INT, OFF(rpc_timeout_ms), 0, 1, 3600000, "30000", "MS",
     "default RPC timeout of a channel"},
    {"join-leave", NULL, OPT_BOOL, OFF(join_leave), 0, 0, 0, "false", NULL,
     "default of channels: subscribers get join / leave events (--no-join-leave: off)"},
    {"history-ttl-ms", NULL, OPT_INT, OFF(history_ttl_ms), 0, 0, 2592000000LL, "0", "MS",
     "default of channels: retained messages older than this are dropped (0: never)"},
    {"max-subscriptions-per-connection", NULL, OPT_INT, OFF(max_subscriptions_per_connection), 0,
     1, 1000000, "1000", "N", "channels one connection may subscribe to"},
    {"max-channels", NULL, OPT_INT, OFF(max_channels), 0, 1, 10000000, "10000", "N",
     "channels across the server; sizes the channel table (over it: too-many-channels)"},
    {"channel-linger-ms", NULL, OPT_INT, OFF(channel_linger_ms), 0, 0, 86400000, "30000", "MS",
     "an auto-created channel without subscribers or retained messages is removed after this"},
    {"channel-creations-per-minute", NULL, OPT_INT, OFF(channel_creations_per_minute), 0, 1,
     1000000, "600", "N", "channels one connection may create by subscribing, per minute"},
    {"worker-stall-ms", NULL, OPT_INT, OFF(worker_stall_ms), 0, 100, 3600000, "3000", "MS",
     "a worker without progress this long is stalled: no new sockets, /health unhealthy"},
    {"worker-stall-kill-ms", NULL, OPT_INT, OFF(worker_stall_kill_ms), 0, 200, 3600000, "10000",
     "MS", "a worker stalled this long is killed and replaced (more than --worker-stall-ms)"},
    {"admin-token", "SENTE_ADMIN_TOKEN", OPT_SECRET, OFF(admin_token), SZ(admin_token), 1, 0, "",
     "TOKEN", "enable the admin API under /api/ with this bearer token (visible in the process "
     "list: prefer SENTE_ADMIN_TOKEN or --admin-token-file)"},
    {"admin-token-file", "SENTE_ADMIN_TOKEN_FILE", OPT_STR, OFF(admin_token_file),
     SZ(admin_token_file), 0, 0, "", "PATH",
     "read the admin token from this file (not visible in the process list)"},
    {"ops-listen", NULL, OPT_HOSTPORT, 0, 0, 0, 0, "", "HOST:PORT",
     "serve /health, /stats, /metrics, /channels, /dashboard and /api/ only on this second "
     "listener"},
    {"tls-cert", NULL, OPT_PATHS, OFF(tls_cert), 0, 0, 0, NULL, "FILE",
     "PEM certificate chain for TLS (repeatable: the first is the default, the others are "
     "chosen by SNI; reread on SIGHUP)"},
    {"tls-key", NULL, OPT_PATHS, OFF(tls_key), 0, 0, 0, NULL, "FILE",
     "PEM private key of the --tls-cert in the same position (repeatable)"},
    {"tls-port", NULL, OPT_INT, OFF(tls_port), 0, 0, 65535, "0", "N",
     "serve TLS (wss://, https://) on this second port beside --port (0: none)"},
    {"tls", NULL, OPT_FLAG, OFF(tls), 0, 0, 0, NULL, NULL,
     "--port itself speaks TLS (wss://, https://) instead of plain TCP"},
    {"tls-min-version", NULL, OPT_STR, OFF(tls_min_version), SZ(tls_min_version), 1, 0, "1.2",
     "1.2|1.3", "lowest TLS version accepted"},
    {"compression", NULL, OPT_BOOL, OFF(compression), 0, 0, 0, "true", NULL,
     "accept permessage-deflate (RFC 7692) when a client offers it (--no-compression: off)"},
    {"compression-min-bytes", NULL, OPT_BYTES, OFF(compression_min_bytes), 0, 0, 1 << 20, "128",
     "BYTES", "messages smaller than this are sent uncompressed"},
    {"jwt-secret-file", "SENTE_JWT_SECRET_FILE", OPT_STR, OFF(jwt_secret_file),
     SZ(jwt_secret_file), 0, 0, "", "PATH",
     "HMAC secret (at least 32 bytes) for HS256/384/512 tokens; reread on SIGHUP"},
    {"jwt-public-key-file", "SENTE_JWT_PUBLIC_KEY_FILE", OPT_STR, OFF(jwt_public_key_file),
     SZ(jwt_public_key_file), 0, 0, "", "PATH",
     "PEM public key: RSA (RS256/384/512, PS256/384/512) or EC P-256/384/521 (ES256/384/512); "
     "reread on SIGHUP"},
    {"jwt-leeway-ms", NULL, OPT_INT, OFF(jwt_leeway_ms), 0, 0, 3600000, "0", "MS",
     "clock skew allowed on a token's exp and nbf"},
    {"jwt-audience", NULL, OPT_STR, OFF(jwt_audience), SZ(jwt_audience), 0, 0, "", "AUD",
     "tokens must name this audience in aud"},
    {"jwt-issuer", NULL, OPT_STR, OFF(jwt_issuer), SZ(jwt_issuer), 0, 0, "", "ISS",
     "tokens must have this iss"},
    {"allow-anonymous", "SENTE_ALLOW_ANONYMOUS", OPT_BOOL, OFF(allow_anonymous), 0, 0, 0,
     "false", NULL, "with a token key, also accept connections without a token"},
    {"auth-timeout-ms", NULL, OPT_INT, OFF(auth_timeout_ms), 0, 10, 3600000, "5000", "MS",
     "time a connection without a token has to authenticate (close 4401 after it)"},
    {"namespace", "SENTE_NAMESPACES", OPT_NAMESPACE, 0, 0, 0, 0, NULL, "NAME:key=value,...",
     "channel namespace with permissions and channel defaults (repeatable; see sente-lite(8))"},
    {"strict-namespaces", NULL, OPT_FLAG, OFF(strict_namespaces), 0, 0, 0, NULL, NULL,
     "refuse channels in undeclared namespaces (unknown-namespace)"},
    {"max-messages-per-second", NULL, OPT_INT, OFF(max_messages_per_second), 0, 0, 1000000, "0",
     "N", "per-connection message rate (0: unlimited; over it: rate-limited)"},
    {"message-burst", NULL, OPT_INT, OFF(message_burst), 0, 0, 1000000, "0", "N",
     "messages a connection may send at once (0: one second's worth)"},
    {"max-publishes-per-second", NULL, OPT_INT, OFF(max_publishes_per_second), 0, 0, 1000000,
     "0", "N", "per-connection publish rate (0: unlimited)"},
    {"publish-burst", NULL, OPT_INT, OFF(publish_burst), 0, 0, 1000000, "0", "N",
     "publishes a connection may send at once (0: one second's worth)"},
    {"max-connections-per-ip", NULL, OPT_INT, OFF(max_connections_per_ip), 0, 0, 10000000, "0",
     "N", "WebSocket connections from one IP address across workers (0: unlimited; 429)"},
    {"max-connections-per-user", NULL, OPT_INT, OFF(max_connections_per_user), 0, 0, 10000000,
     "0", "N", "WebSocket connections of one user across workers (0: unlimited; 429 / 4429)"},
    {"redis", "SENTE_REDIS_URL", OPT_REDIS, 0, 0, 0, 0, NULL, "URL",
     "join a cluster through Redis: redis://[user:password@]host:port[/db] or unix:///path "
     "(repeatable: channels are sharded over the instances)"},
    {"redis-password-file", NULL, OPT_STR, OFF(redis_password_file),
     SZ(redis_password_file), 0, 0, "", "PATH", "read the Redis password from this file"},
    {"redis-timeout-ms", NULL, OPT_INT, OFF(redis_timeout_ms), 0, 50, 60000, "1000", "MS",
     "bound on a Redis round trip; past it the link counts as down (broker-unavailable)"},
    {"redis-prefix", NULL, OPT_NAME, OFF(redis_prefix), SZ(redis_prefix), 1, 0,
     "sl", "NAME", "prefix of every Redis key and channel of this cluster"},
    {"node-id", NULL, OPT_NAME, OFF(node_id), 9, 0, 0, "", "NAME",
     "this node's name in the cluster, up to 8 characters (default: random)"},
    {"redis-history-ttl-s", NULL, OPT_INT, OFF(redis_history_ttl_s), 0, 1, 31536000, "86400",
     "S", "a channel's history in Redis expires after this long without a publish"},
    {"redis-max-held-bytes", NULL, OPT_BYTES, OFF(redis_max_held_bytes), 0, 64 << 10, 1LL << 34,
     "64M", "BYTES", "live messages held while their channel catches up, node-wide (one "
     "channel: a quarter of it); past it that channel is reset (1012)"},
    {"channel", NULL, OPT_CHANNEL, 0, 0, 0, 0, NULL, "NAME[:key=value,...]",
     "predefine a channel (keys: max-subscribers, message-retention, rpc-timeout-ms, join-leave, "
     "history-ttl-ms; repeatable)"},
    {"access-log", NULL, OPT_STR, OFF(access_log), SZ(access_log), 0, 0, "", "PATH",
     "write one line per HTTP request here (peer, method, path, status, bytes, time, agent)"},
    {"trusted-proxy", NULL, OPT_CIDR, 0, 0, 0, 0, NULL, "CIDR",
     "take the peer address from X-Forwarded-For only from these peers (repeatable)"},
    {"config", NULL, OPT_CONFIG, OFF(config_file), SZ(config_file), 0, 0, "", "FILE",
     "read `key = value` settings from FILE (short: -c FILE)"},
    {"check-config", NULL, OPT_CHECK, 0, 0, 0, 0, NULL, NULL,
     "print the effective configuration and exit 0, or the error and exit 2 (short: -t)"},
    {"help", NULL, OPT_HELP, 0, 0, 0, 0, NULL, NULL, "show this help (short: -h)"},
    {"version", NULL, OPT_VERSION, 0, 0, 0, 0, NULL, NULL, "show the version (short: -v)"},
};

#define NOPTS SL_ARRAY_LEN(sl_options)

/* Short options: each is a spelling of a long one. */
static const struct {
    char c;
    const char *flag;
} sl_short[] = {{'c', "config"}, {'t', "check-config"}, {'h', "help"}, {'v', "version"}};

static int parse_int(const char *s, int64_t *out)
{
    char *end;
    errno = 0;
    long long v = strtoll(s, &end, 10);
    if (errno || end == s || *end != '\0' || !isdigit((unsigned char)s[0]))
        return SL_ERROR;
    *out = v;
    return SL_OK;
}

static int parse_bytes(const char *s, int64_t *out)
{
    char *end;
    errno = 0;
    if (!isdigit((unsigned char)s[0]))
        return SL_ERROR;
    long long v = strtoll(s, &end, 10);
    if (errno || end == s)
        return SL_ERROR;
    int shift = 0;
    switch (*end) {
    case '\0': break;
    case 'k': case 'K': shift = 10; end++; break;
    case 'm': case 'M': shift = 20; end++; break;
    case 'g': case 'G': shift = 30; end++; break;
    default: return SL_ERROR;
    }
    if (*end != '\0' || v > (LLONG_MAX >> shift))
        return SL_ERROR;
    *out = v << shift;
    return SL_OK;
}

static int parse_bool(const char *s, bool *out)
{
    static const char *yes[] = {"true", "1", "yes", "on"}, *no[] = {"false", "0", "no", "off"};
    for (size_t i = 0; i < SL_ARRAY_LEN(yes); i++) {
        if (strcasecmp(s, yes[i]) == 0)
            return *out = true, SL_OK;
        if (strcasecmp(s, no[i]) == 0)
            return *out = false, SL_OK;
    }
    return SL_ERROR;
}

static int parse_channel(const char *v, sl_conf_channel_t *ch, const char *who, char *err,
                         size_t errsz);
static int parse_namespace(sl_conf_t *c, const char *v, const char *who, char *err,
                           size_t errsz);
static int parse_hostport(sl_conf_t *c, const char *v, const char *who, char *err, size_t errsz);

/* Apply one value to the option's field.  `who` names the source in
 * errors ("--port" or "PORT"). */
static int apply(sl_conf_t *c, const sl_option_t *o, const char *v, const char *who, char *err,
                 size_t errsz)
{
    char *field = (char *)c + o->off;
    int64_t n = 0;

    switch (o->kind) {
    case OPT_STR:
    case OPT_SECRET:
    case OPT_CONFIG:
        if (strlen(v) >= o->size || (o->min > 0 && v[0] == '\0')) {
            snprintf(err, errsz, "%s: value must be 1 to %zu characters", who, o->size - 1);
            return SL_ERROR;
        }
        /* Shown in /stats (JSON): text only.  (Found by fuzz_conf: a
         * non-UTF-8 --host vanished from server-config.) */
        if (o->kind == OPT_STR && !sl_utf8_valid((const uint8_t *)v, strlen(v))) {
            snprintf(err, errsz, "%s: value must be valid UTF-8", who);
            return SL_ERROR;
        }
        snprintf(field, o->size, "%s", v);
        return SL_OK;
    case OPT_NAME:
        if (v[0] == '\0' || strlen(v) >= o->size || strspn(v,
            "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._-") != strlen(v)) {
            snprintf(err, errsz, "%s: '%s' must be 1 to %zu of A-Z a-z 0-9 . _ -", who, v,
                     o->size - 1);
            return SL_ERROR;
        }
        snprintf(field, o->size, "%s", v);
        return SL_OK;
    case OPT_INT:
    case OPT_PORT:
    case OPT_BYTES:
        if ((o->kind == OPT_BYTES ? parse_bytes(v, &n) : parse_int(v, &n)) != SL_OK ||
            n < o->min || n > o->max) {
            snprintf(err, errsz, "%s: '%s' is not %s between %lld and %lld", who, v,
                     o->kind == OPT_BYTES ? "a size (bytes, or with K/M/G)" : "an integer",
                     (long long)o->min, (long long)o->max);
            return SL_ERROR;
        }
        if (o->kind == OPT_PORT)
            *(int *)field = (int)n;
        else
            *(int64_t *)field = n;
        return SL_OK;
    case OPT_BOOL:
        if (parse_bool(v, (bool *)field) != SL_OK) {
            snprintf(err, errsz, "%s: '%s' is not true or false", who, v);
            return SL_ERROR;
        }
        return SL_OK;
    case OPT_WORKERS:
        if (strcmp(v, "auto") == 0) {
            c->workers_auto = true;
            c->workers = SL_MIN(sl_conf_usable_cpus(), SL_MAX_WORKERS);
            return SL_OK;
        }
        if (parse_int(v, &n) != SL_OK || n < o->min || n > o->max) {
            snprintf(err, errsz, "%s: '%s' is not 'auto' or an integer between 1 and %d", who, v,
                     SL_MAX_WORKERS);
            return SL_ERROR;
        }
        c->workers_auto = false;
        c->workers = (int)n;
        return SL_OK;
    case OPT_LEVEL:
        if (sl_level_parse(v, (sl_level_t *)field) != SL_OK) {
            snprintf(err, errsz, "%s: '%s' is not one of trace, debug, info, warn, error", who, v);
            return SL_ERROR;
        }
        return SL_OK;
    case OPT_FORMAT:
        if (strcmp(v, "text") != 0 && strcmp(v, "json") != 0) {
            snprintf(err, errsz, "%s: '%s' is not text or json", who, v);
            return SL_ERROR;
        }
        *(bool *)field = strcmp(v, "json") == 0;
        return SL_OK;
    case OPT_ORIGIN:
        if (!sl_utf8_valid((const uint8_t *)v, strlen(v))) {
            snprintf(err, errsz, "%s: value must be valid UTF-8", who);
            return SL_ERROR;
        }
        if (v[0] == '\0' || c->norigins >= SL_MAX_ORIGINS) {
            snprintf(err, errsz, "%s: empty origin or more than %d origins", who, SL_MAX_ORIGINS);
            return SL_ERROR;
        }
        c->allowed_origins[c->norigins] = strdup(v);
        if (c->allowed_origins[c->norigins] == NULL) {
            snprintf(err, errsz, "%s: out of memory", who);
            return SL_ERROR;
        }
        c->norigins++;
        return SL_OK;
    case OPT_PATHS: {
        sl_conf_paths_t *l = (sl_conf_paths_t *)field;
        if (v[0] == '\0' || strlen(v) >= 1024 || l->n >= SL_MAX_TLS_CERTS ||
            !sl_utf8_valid((const uint8_t *)v, strlen(v))) {
            snprintf(err, errsz, "%s: a file name (UTF-8, under 1024 bytes), at most %d of them",
                     who, SL_MAX_TLS_CERTS);
            return SL_ERROR;
        }
        if ((l->path[l->n] = strdup(v)) == NULL) {
            snprintf(err, errsz, "%s: out of memory", who);
            return SL_ERROR;
        }
        l->n++;
        return SL_OK;
    }
    case OPT_CHANNEL:
        if (c->nchannels >= SL_MAX_PREDEFINED) {
            snprintf(err, errsz, "%s: at most %d channels", who, SL_MAX_PREDEFINED);
            return SL_ERROR;
        }
        if (c->channels == NULL)
            c->channels = calloc(SL_MAX_PREDEFINED, sizeof(*c->channels));
        if (c->channels == NULL)
            return SL_ERROR;
        return parse_channel(v, &c->channels[c->nchannels++], who, err, errsz);
    case OPT_REDIS: {
        /* The environment may list several, separated by commas or spaces. */
        char buf[4096];
        snprintf(buf, sizeof(buf), "%s", v);
        char *save = NULL;
        for (char *u = strtok_r(buf, ", ", &save); u; u = strtok_r(NULL, ", ", &save)) {
            if (c->nredis >= SL_MAX_REDIS) {
                snprintf(err, errsz, "%s: at most %d Redis instances", who, SL_MAX_REDIS);
                return SL_ERROR;
            }
            char why[256];
            if (sl_conf_redis_url(u, &c->redis[c->nredis], why, sizeof(why)) != SL_OK) {
                snprintf(err, errsz, "%s: %s", who, why);
                return SL_ERROR;
            }
            /* The same instance twice would be two shards sharing one
             * nodepr set (review rl17 M1): the same address and db, as
             * parsed, is refused.  Two addresses of one server (a socket
             * and a port, a name and its IP) are found at connect. */
            const sl_conf_redis_t *nu = &c->redis[c->nredis];
            for (int i = 0; i < c->nredis; i++) {
                const sl_conf_redis_t *ou = &c->redis[i];
                if (strcmp(ou->host, nu->host) == 0 && ou->port == nu->port &&
                    strcmp(ou->path, nu->path) == 0 && ou->db == nu->db) {
                    snprintf(err, errsz, "%s: '%s' is given twice (each --redis must be "
                             "another Redis instance, or another db)", who, nu->url);
                    return SL_ERROR;
                }
            }
            c->nredis++;
        }
        return SL_OK;
    }
    case OPT_CIDR:
        if (c->nproxies >= SL_MAX_PROXIES || sl_cidr_parse(v, &c->trusted_proxies[c->nproxies])
                                                 != SL_OK) {
            snprintf(err, errsz, "%s: '%s' is not an address or address/prefix (at most %d)", who,
                     v, SL_MAX_PROXIES);
            return SL_ERROR;
        }
        c->nproxies++;
        return SL_OK;
    case OPT_NAMESPACE:
        return parse_namespace(c, v, who, err, errsz);
    case OPT_HOSTPORT:
        return parse_hostport(c, v, who, err, errsz);
    case OPT_FLAG:
        /* The bare flag sets it; the file and the environment say true/false. */
        if (parse_bool(v, (bool *)field) != SL_OK) {
            snprintf(err, errsz, "%s: '%s' is not true or false", who, v);
            return SL_ERROR;
        }
        return SL_OK;
    case OPT_HELP:
    case OPT_VERSION:
    case OPT_CHECK:
        break;
    }
    return SL_OK;
}

int sl_conf_redis_url(const char *url, sl_conf_redis_t *r, char *err, size_t errsz)
{
    memset(r, 0, sizeof(*r));
    if (strlen(url) >= sizeof(r->url)) {
        snprintf(err, errsz, "URL too long");
        return SL_ERROR;
    }
    if (strncmp(url, "unix://", 7) == 0) {
        const char *p = url + 7, *q = strchr(p, '?');
        size_t n = q ? (size_t)(q - p) : strlen(p);
        if (n == 0 || p[0] != '/' || n >= sizeof(r->path)) {
            snprintf(err, errsz, "'%s': unix:///absolute/path expected", url);
            return SL_ERROR;
        }
        memcpy(r->path, p, n);
        if (q) {
            int64_t db;
            if (strncmp(q, "?db=", 4) != 0 || parse_int(q + 4, &db) != SL_OK || db > 1000000) {
                snprintf(err, errsz, "'%s': only ?db=N may follow the path", url);
                return SL_ERROR;
            }
            r->db = (int)db;
        }
        snprintf(r->url, sizeof(r->url), "%s", url);
        return SL_OK;
    }
    if (strncmp(url, "redis://", 8) != 0) {
        snprintf(err, errsz, "'%s' is not redis://host:port[/db] or unix:///path", url);
        return SL_ERROR;
    }
    const char *p = url + 8, *at = strrchr(p, '@'), *slash;
    if (at) {
        const char *colon = memchr(p, ':', (size_t)(at - p));
        size_t ul = colon ? (size_t)(colon - p) : 0;
        const char *pw = colon ? colon + 1 : p;
        size_t pl = (size_t)(at - pw);
        if (ul >= sizeof(r->user) || pl >= sizeof(r->password)) {
            snprintf(err, errsz, "user or password too long");
            return SL_ERROR;
        }
        memcpy(r->user, p, ul);
        memcpy(r->password, pw, pl);
        p = at + 1;
    }
    slash = strchr(p, '/');
    size_t hp = slash ? (size_t)(slash - p) : strlen(p);
    const char *colon = NULL;
    for (size_t i = 0; i < hp; i++)
        if (p[i] == ':')
            colon = p + i;
    size_t hl = colon ? (size_t)(colon - p) : hp;
    if (hl == 0 || hl >= sizeof(r->host)) {
        snprintf(err, errsz, "'%s': no host", url);
        return SL_ERROR;
    }
    memcpy(r->host, p, hl);
    r->port = 6379;
    if (colon) {
        char ps[16];
        size_t pl = hp - hl - 1;
        int64_t port;
        if (pl == 0 || pl >= sizeof(ps)) {
            snprintf(err, errsz, "'%s': bad port", url);
            return SL_ERROR;
        }
        memcpy(ps, colon + 1, pl);
        ps[pl] = '\0';
        if (parse_int(ps, &port) != SL_OK || port < 1 || port > 65535) {
            snprintf(err, errsz, "'%s': bad port", url);
            return SL_ERROR;
        }
        r->port = (int)port;
    }
    if (slash && slash[1]) {
        int64_t db;
        if (parse_int(slash + 1, &db) != SL_OK || db > 1000000) {
            snprintf(err, errsz, "'%s': the path must be a database number", url);
            return SL_ERROR;
        }
        r->db = (int)db;
    }
    /* What /stats and --check-config show: never the password. */
    snprintf(r->url, sizeof(r->url), "redis://%s%s%s:%d/%d", r->user, r->user[0] ? "@" : "",
             r->host, r->port, r->db);
    return SL_OK;
}

int sl_cidr_parse(const char *s, sl_cidr_t *out)
{
    char buf[INET6_ADDRSTRLEN + 8];
    if (strlen(s) >= sizeof(buf))
        return SL_ERROR;
    snprintf(buf, sizeof(buf), "%s", s);
    char *slash = strchr(buf, '/');
    int64_t prefix = -1;
    if (slash) {
        *slash = '\0';
        if (parse_int(slash + 1, &prefix) != SL_OK)
            return SL_ERROR;
    }
    memset(out, 0, sizeof(*out));
    if (inet_pton(AF_INET, buf, out->addr) == 1) {
        out->family = AF_INET;
        if (prefix > 32)
            return SL_ERROR;
        out->prefix = prefix < 0 ? 32 : (int)prefix;
    } else if (inet_pton(AF_INET6, buf, out->addr) == 1) {
        out->family = AF_INET6;
        if (prefix > 128)
            return SL_ERROR;
        out->prefix = prefix < 0 ? 128 : (int)prefix;
    } else {
        return SL_ERROR;
    }
    return SL_OK;
}

bool sl_cidr_match(const sl_cidr_t *r, int family, const void *addr)
{
    const uint8_t *a = addr;
    uint8_t mapped[4];
    /* An IPv4 peer on a dual-stack socket arrives as ::ffff:a.b.c.d. */
    if (family == AF_INET6 && r->family == AF_INET &&
        memcmp(a, "\0\0\0\0\0\0\0\0\0\0\xff\xff", 12) == 0) {
        memcpy(mapped, a + 12, 4);
        a = mapped;
        family = AF_INET;
    }
    if (family != r->family)
        return false;
    int full = r->prefix / 8, rest = r->prefix % 8;
    if (memcmp(a, r->addr, (size_t)full) != 0)
        return false;
    if (rest == 0)
        return true;
    uint8_t mask = (uint8_t)(0xff << (8 - rest));
    return (a[full] & mask) == (r->addr[full] & mask);
}

static void cidr_format(const sl_cidr_t *r, char *out, size_t n)
{
    char a[INET6_ADDRSTRLEN];
    inet_ntop(r->family, r->addr, a, sizeof(a));
    snprintf(out, n, "%s/%d", a, r->prefix);
}

/* Parse "k=v,k=v" (p[0..n), not NUL-terminated, any length) into the
 * channel's settings; SL_ERROR when any part is not one of the keys or its
 * value is out of range. */
static int parse_channel_keys(const char *p, size_t n, sl_conf_channel_t *ch, const char *who,
                              char *err, size_t errsz)
{
    static const struct {
        const char *key;
        int64_t min, max; /* max 1 with min 0: a boolean (true / false) */
        size_t off;
    } keys[] = {
        {"max-subscribers", 1, 10000000, offsetof(sl_conf_channel_t, max_subscribers)},
        {"message-retention", 0, 10000, offsetof(sl_conf_channel_t, message_retention)},
        {"rpc-timeout-ms", 1, 3600000, offsetof(sl_conf_channel_t, rpc_timeout_ms)},
        {"history-ttl-ms", 0, 2592000000LL, offsetof(sl_conf_channel_t, history_ttl_ms)},
        {"join-leave", 0, 1, offsetof(sl_conf_channel_t, join_leave)},
    };
    const char *end = p + n;
    while (p < end) {
        const char *comma = memchr(p, ',', (size_t)(end - p));
        const char *kv_end = comma ? comma : end;
        size_t kvlen = (size_t)(kv_end - p);
        const char *eq = memchr(p, '=', kvlen);
        size_t k = 0;
        if (kvlen == 0) { /* an empty item: "a=1,,b=2" or a trailing comma */
            p = kv_end + 1;
            continue;
        }
        if (eq != NULL)
            for (; k < SL_ARRAY_LEN(keys); k++)
                if (strlen(keys[k].key) == (size_t)(eq - p) &&
                    memcmp(p, keys[k].key, (size_t)(eq - p)) == 0)
                    break;
        if (eq == NULL || k == SL_ARRAY_LEN(keys)) {
            snprintf(err, errsz, "%s: '%.*s' is not max-subscribers=N, message-retention=N, "
                                 "rpc-timeout-ms=N, history-ttl-ms=N or join-leave=true|false (a "
                                 "channel name with ':' and '=' needs a trailing ':')",
                     who, (int)SL_MIN(kvlen, 200), p);
            return SL_ERROR;
        }
        char num[24];
        size_t vlen = (size_t)(kv_end - eq - 1);
        int64_t v;
        bool boolean = keys[k].min == 0 && keys[k].max == 1;
        if (vlen >= sizeof(num)) {
            v = -1; /* far too long to be in range */
        } else {
            memcpy(num, eq + 1, vlen);
            num[vlen] = '\0';
            bool bv;
            if (boolean)
                v = parse_bool(num, &bv) == SL_OK ? bv : -1;
            else if (parse_int(num, &v) != SL_OK)
                v = -1;
        }
        if (boolean && v < 0) {
            snprintf(err, errsz, "%s: %s=%.*s is not true or false", who, keys[k].key,
                     (int)SL_MIN(vlen, 40), eq + 1);
            return SL_ERROR;
        }
        if (v < keys[k].min || v > keys[k].max) {
            snprintf(err, errsz, "%s: %s=%.*s is not an integer between %lld and %lld", who,
                     keys[k].key, (int)SL_MIN(vlen, 40), eq + 1, (long long)keys[k].min,
                     (long long)keys[k].max);
            return SL_ERROR;
        }
        *(int64_t *)((char *)ch + keys[k].off) = v;
        p = kv_end + (comma ? 1 : 0);
    }
    return SL_OK;
}

/* NAME[:k=v,...].  A channel name may itself contain ':' (and '='): the
 * part after the last ':' is the settings when it is empty or has an '=',
 * so "NAME:" is always just NAME, and any name can be given by ending it
 * with ':' ("a:b=c:" is the channel "a:b=c"). */
static int parse_channel(const char *v, sl_conf_channel_t *ch, const char *who, char *err,
                         size_t errsz)
{
    ch->max_subscribers = ch->message_retention = ch->rpc_timeout_ms = -1;
    ch->history_ttl_ms = ch->join_leave = -1;
    const char *colon = strrchr(v, ':');
    size_t nlen = strlen(v);
    if (colon && (colon[1] == '\0' || strchr(colon, '='))) {
        if (parse_channel_keys(colon + 1, strlen(colon + 1), ch, who, err, errsz) != SL_OK)
            return SL_ERROR;
        nlen = (size_t)(colon - v);
    }
    if (!sl_chan_id_valid(v, nlen)) {
        snprintf(err, errsz, "%s: '%.*s' is not a valid channel id (1-128 bytes of UTF-8, no "
                             "control characters)", who, (int)SL_MIN(nlen, 200), v);
        return SL_ERROR;
    }
    memcpy(ch->name, v, nlen);
    ch->name[nlen] = '\0';
    return SL_OK;
}

/* ------------------------------------------------------------ namespaces */

static const char *const rule_names[] = {"anyone", "authenticated", "token", "subscribers",
                                         "none"};
static const char *const ns_key_names[SL_NS__KEYS] = {"subscribe", "publish", "rpc", "presence",
                                                      "history", "rpc-respond"};

/* One "NAME:key=value,..." (NAME may be empty: the default namespace). */
static int parse_namespace(sl_conf_t *c, const char *v, const char *who, char *err,
                           size_t errsz)
{
    char buf[1024];
    size_t vlen = strlen(v);
    if (vlen >= sizeof(buf)) {
        snprintf(err, errsz, "%s: namespace setting longer than %zu bytes", who, sizeof(buf) - 1);
        return SL_ERROR;
    }
    memcpy(buf, v, vlen);
    buf[vlen] = '\0';
    char *colon = strchr(buf, ':');
    if (colon == NULL) {
        snprintf(err, errsz, "%s: '%s' is not NAME:key=value,... (an empty NAME is the default "
                             "namespace)", who, buf);
        return SL_ERROR;
    }
    *colon = '\0';
    size_t nlen = strlen(buf);
    if (nlen >= SL_NAMESPACE_NAME_MAX ||
        strspn(buf, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._-") != nlen) {
        snprintf(err, errsz, "%s: namespace name '%s' must be up to %d of A-Z a-z 0-9 . _ -", who,
                 buf, SL_NAMESPACE_NAME_MAX - 1);
        return SL_ERROR;
    }
    for (int i = 0; i < c->nnamespaces; i++)
        if (strcmp(c->namespaces[i].name, buf) == 0) {
            snprintf(err, errsz, "%s: namespace '%s' is declared twice", who, buf);
            return SL_ERROR;
        }
    if (c->nnamespaces >= SL_MAX_NAMESPACES) {
        snprintf(err, errsz, "%s: at most %d namespaces", who, SL_MAX_NAMESPACES);
        return SL_ERROR;
    }
    if (c->namespaces == NULL)
        c->namespaces = calloc(SL_MAX_NAMESPACES, sizeof(*c->namespaces));
    if (c->namespaces == NULL)
        return SL_ERROR;
    sl_conf_namespace_t ns = {.auto_create = -1, .max_subscribers = -1, .message_retention = -1,
                              .rpc_timeout_ms = -1, .history_ttl_ms = -1, .join_leave = -1,
                              .rules[SL_NS_RPC_RESPOND] = SL_RULE_SUBSCRIBERS};
    ns.rules[SL_NS_PRESENCE] = ns.rules[SL_NS_HISTORY] = SL_RULE_SUBSCRIBERS;
    memcpy(ns.name, buf, nlen + 1);
    char *save = NULL;
    for (char *kv = strtok_r(colon + 1, ",", &save); kv; kv = strtok_r(NULL, ",", &save)) {
        char *eq = strchr(kv, '=');
        if (eq == NULL)
            goto bad_key;
        *eq = '\0';
        const char *val = eq + 1;
        int k = 0;
        for (; k < SL_NS__KEYS; k++)
            if (strcmp(kv, ns_key_names[k]) == 0)
                break;
        if (k < SL_NS__KEYS) {
            size_t r = 0;
            for (; r < SL_ARRAY_LEN(rule_names); r++)
                if (strcmp(val, rule_names[r]) == 0)
                    break;
            /* Subscribing because one is subscribed means nothing. */
            if (r == SL_ARRAY_LEN(rule_names) || (k == SL_NS_SUBSCRIBE && r == SL_RULE_SUBSCRIBERS)) {
                snprintf(err, errsz, "%s: %s=%s: the value must be one of anyone, authenticated, "
                                     "token%s, none", who, kv, val,
                         k == SL_NS_SUBSCRIBE ? "" : ", subscribers");
                return SL_ERROR;
            }
            ns.rules[k] = (uint8_t)r;
            continue;
        }
        if (strcmp(kv, "auto-create") == 0) {
            bool b;
            if (parse_bool(val, &b) != SL_OK) {
                snprintf(err, errsz, "%s: auto-create=%s is not true or false", who, val);
                return SL_ERROR;
            }
            ns.auto_create = b;
            continue;
        }
        if (strcmp(kv, "max-subscribers") != 0 && strcmp(kv, "message-retention") != 0 &&
            strcmp(kv, "rpc-timeout-ms") != 0 && strcmp(kv, "history-ttl-ms") != 0 &&
            strcmp(kv, "join-leave") != 0)
            goto bad_key;
        sl_conf_channel_t ch = {.max_subscribers = -1, .message_retention = -1,
                                .rpc_timeout_ms = -1, .history_ttl_ms = -1, .join_leave = -1};
        *eq = '=';
        if (parse_channel_keys(kv, strlen(kv), &ch, who, err, errsz) != SL_OK)
            return SL_ERROR;
        if (ch.max_subscribers >= 0)
            ns.max_subscribers = ch.max_subscribers;
        if (ch.message_retention >= 0)
            ns.message_retention = ch.message_retention;
        if (ch.rpc_timeout_ms >= 0)
            ns.rpc_timeout_ms = ch.rpc_timeout_ms;
        if (ch.history_ttl_ms >= 0)
            ns.history_ttl_ms = ch.history_ttl_ms;
        if (ch.join_leave >= 0)
            ns.join_leave = (int8_t)ch.join_leave;
        continue;
    bad_key:
        snprintf(err, errsz, "%s: '%s' is not key=value (keys: subscribe, publish, rpc, "
                             "rpc-respond, presence, history, auto-create, max-subscribers, "
                             "message-retention, rpc-timeout-ms, history-ttl-ms, join-leave)",
                 who, kv);
        return SL_ERROR;
    }
    c->namespaces[c->nnamespaces++] = ns;
    return SL_OK;
}

const sl_conf_namespace_t *sl_conf_namespace(const sl_conf_t *c, const char *id, size_t len,
                                             bool *declared)
{
    const char *colon = memchr(id, ':', len);
    if (declared)
        *declared = true;
    if (colon == NULL)
        return &c->default_namespace;
    size_t nlen = (size_t)(colon - id);
    for (int i = 0; i < c->nnamespaces; i++) {
        const sl_conf_namespace_t *ns = &c->namespaces[i];
        if (ns->name[0] && strlen(ns->name) == nlen && memcmp(ns->name, id, nlen) == 0)
            return ns;
    }
    if (declared)
        *declared = false;
    return &c->default_namespace;
}

bool sl_conf_auth_enabled(const sl_conf_t *c)
{
    return c->jwt_secret_file[0] != '\0' || c->jwt_public_key_file[0] != '\0';
}

/* Namespaces take the server defaults for what they leave out; the default
 * namespace is the one declared with an empty name, or all "anyone". */
static void resolve_namespaces(sl_conf_t *c)
{
    sl_conf_namespace_t def = {.name = "", .auto_create = -1, .max_subscribers = -1,
                               .message_retention = -1, .rpc_timeout_ms = -1,
                               .history_ttl_ms = -1, .join_leave = -1,
                               .rules[SL_NS_RPC_RESPOND] = SL_RULE_SUBSCRIBERS};
    def.rules[SL_NS_PRESENCE] = def.rules[SL_NS_HISTORY] = SL_RULE_SUBSCRIBERS;
    for (int i = 0; i < c->nnamespaces; i++)
        if (c->namespaces[i].name[0] == '\0')
            def = c->namespaces[i];
    c->default_namespace = def;
    for (int i = -1; i < c->nnamespaces; i++) {
        sl_conf_namespace_t *ns = i < 0 ? &c->default_namespace : &c->namespaces[i];
        if (ns->auto_create < 0)
            ns->auto_create = c->auto_create;
        if (ns->max_subscribers < 0)
            ns->max_subscribers = c->max_subscribers;
        if (ns->message_retention < 0)
            ns->message_retention = c->message_retention;
        if (ns->rpc_timeout_ms < 0)
            ns->rpc_timeout_ms = c->rpc_timeout_ms;
        if (ns->history_ttl_ms < 0)
            ns->history_ttl_ms = c->history_ttl_ms;
        if (ns->join_leave < 0)
            ns->join_leave = c->join_leave;
    }
}

/* HOST:PORT, or [IPv6]:PORT. */
static int parse_hostport(sl_conf_t *c, const char *v, const char *who, char *err, size_t errsz)
{
    const char *colon = strrchr(v, ':');
    int64_t port;
    if (colon == NULL || colon == v || parse_int(colon + 1, &port) != SL_OK || port < 1 ||
        port > 65535) {
        snprintf(err, errsz, "%s: '%s' is not HOST:PORT", who, v);
        return SL_ERROR;
    }
    const char *h = v;
    size_t hlen = (size_t)(colon - v);
    if (h[0] == '[' && hlen >= 2 && h[hlen - 1] == ']')
        h++, hlen -= 2;
    if (hlen == 0 || hlen >= sizeof(c->ops_host)) {
        snprintf(err, errsz, "%s: '%s' is not HOST:PORT", who, v);
        return SL_ERROR;
    }
    memcpy(c->ops_host, h, hlen);
    c->ops_host[hlen] = '\0';
    c->ops_port = (int)port;
    return SL_OK;
}

/* --admin-token-file: the file's content less trailing white space. */
static int read_admin_token(sl_conf_t *c, char *err, size_t errsz)
{
    if (c->admin_token[0]) {
        snprintf(err, errsz, "--admin-token-file: --admin-token (or SENTE_ADMIN_TOKEN) is set too; "
                             "use one");
        return SL_ERROR;
    }
    FILE *f = fopen(c->admin_token_file, "r");
    if (f == NULL) {
        snprintf(err, errsz, "--admin-token-file: cannot open %s: %s", c->admin_token_file,
                 strerror(errno));
        return SL_ERROR;
    }
    char buf[sizeof(c->admin_token) + 1];
    size_t n = fread(buf, 1, sizeof(buf), f);
    fclose(f);
    while (n > 0 && isspace((unsigned char)buf[n - 1]))
        n--;
    bool printable = n > 0 && n < sizeof(c->admin_token);
    for (size_t i = 0; printable && i < n; i++)
        printable = (unsigned char)buf[i] >= 0x21 && buf[i] != 0x7f;
    if (!printable) {
        snprintf(err, errsz, "--admin-token-file: %s must hold 1 to %zu printable characters "
                             "(no spaces)", c->admin_token_file, sizeof(c->admin_token) - 1);
        return SL_ERROR;
    }
    memcpy(c->admin_token, buf, n);
    c->admin_token[n] = '\0';
    return SL_OK;
}

static const char *env_get(char **env, const char *name)
{
    size_t n = strlen(name);
    for (char **e = env; e && *e; e++)
        if (strncmp(*e, name, n) == 0 && (*e)[n] == '=')
            return *e + n + 1;
    return NULL;
}

void sl_conf_env_name(const char *flag, char *out, size_t n)
{
    size_t k = (size_t)snprintf(out, n, "SENTE_");
    for (; *flag && k + 1 < n; flag++)
        out[k++] = *flag == '-' ? '_' : (char)toupper((unsigned char)*flag);
    out[k < n ? k : n - 1] = '\0';
}

static bool is_list(const sl_option_t *o)
{
    return o->kind == OPT_ORIGIN || o->kind == OPT_CHANNEL || o->kind == OPT_CIDR ||
           o->kind == OPT_NAMESPACE || o->kind == OPT_REDIS || o->kind == OPT_PATHS;
}

/* Options that only steer the parse: no environment variable, no key. */
static bool is_meta(const sl_option_t *o)
{
    return o->kind == OPT_HELP || o->kind == OPT_VERSION || o->kind == OPT_CHECK ||
           o->kind == OPT_CONFIG;
}

static bool takes_value(const sl_option_t *o)
{
    return !(o->kind == OPT_BOOL || o->kind == OPT_FLAG || o->kind == OPT_HELP ||
             o->kind == OPT_VERSION || o->kind == OPT_CHECK);
}

typedef struct {
    sl_conf_t *c;
    uint8_t src[NOPTS]; /* the source that set each option last */
    char *err;
    size_t errsz;
} pctx_t;

static void clear_list(sl_conf_t *c, const sl_option_t *o)
{
    if (o->kind == OPT_ORIGIN) {
        for (int i = 0; i < c->norigins; i++)
            free(c->allowed_origins[i]);
        c->norigins = 0;
    } else if (o->kind == OPT_CHANNEL) {
        c->nchannels = 0;
    } else if (o->kind == OPT_CIDR) {
        c->nproxies = 0;
    } else if (o->kind == OPT_NAMESPACE) {
        c->nnamespaces = 0;
    } else if (o->kind == OPT_REDIS) {
        c->nredis = 0;
    } else if (o->kind == OPT_PATHS) {
        sl_conf_paths_t *l = (sl_conf_paths_t *)((char *)c + o->off);
        for (int i = 0; i < l->n; i++)
            free(l->path[i]);
        l->n = 0;
    }
}

/* Apply a value from source `src`.  The first value of a repeatable option
 * from a higher source replaces the list the lower sources built. */
static int set_from(pctx_t *p, const sl_option_t *o, const char *v, const char *who, int src)
{
    size_t idx = (size_t)(o - sl_options);
    if (is_list(o) && p->src[idx] < src)
        clear_list(p->c, o);
    p->src[idx] = (uint8_t)src;
    return apply(p->c, o, v, who, p->err, p->errsz);
}

static const sl_option_t *find_flag(const char *name, size_t nlen)
{
    for (size_t k = 0; k < NOPTS; k++)
        if (strlen(sl_options[k].flag) == nlen && strncmp(sl_options[k].flag, name, nlen) == 0)
            return &sl_options[k];
    return NULL;
}

static char *trim(char *s)
{
    while (*s == ' ' || *s == '\t')
        s++;
    size_t n = strlen(s);
    while (n > 0 && (s[n - 1] == ' ' || s[n - 1] == '\t' || s[n - 1] == '\r'))
        s[--n] = '\0';
    return s;
}

#define SL_CONF_FILE_MAX (1 << 20)

/* `key = value` lines; `#` starts a comment at the start of a line only
 * (a value may itself contain '#'). */
static int read_file(pctx_t *p, const char *path)
{
    FILE *f = fopen(path, "r");
    if (f == NULL) {
        snprintf(p->err, p->errsz, "--config: cannot read %s: %s", path, strerror(errno));
        return SL_ERROR;
    }
    char line[4096];
    int lineno = 0, rc = SL_OK;
    long total = 0;
    while (rc == SL_OK && fgets(line, sizeof(line), f)) {
        lineno++;
        size_t n = strlen(line);
        total += (long)n;
        if (total > SL_CONF_FILE_MAX || (n == sizeof(line) - 1 && line[n - 1] != '\n')) {
            snprintf(p->err, p->errsz, "%s:%d: line too long or file over 1 MiB", path, lineno);
            rc = SL_ERROR;
            break;
        }
        if (n && line[n - 1] == '\n')
            line[--n] = '\0';
        char *l = trim(line);
        if (*l == '\0' || *l == '#')
            continue;
        char *eq = strchr(l, '=');
        if (eq == NULL) {
            snprintf(p->err, p->errsz, "%s:%d: expected `key = value`, got '%.64s'", path,
                     lineno, l);
            rc = SL_ERROR;
            break;
        }
        *eq = '\0';
        char *key = trim(l), *val = trim(eq + 1);
        const sl_option_t *o = find_flag(key, strlen(key));
        if (o == NULL || is_meta(o)) {
            snprintf(p->err, p->errsz, "%s:%d: unknown key '%.64s' (keys are the long flags' "
                     "names, see --help)", path, lineno, key);
            rc = SL_ERROR;
            break;
        }
        char who[1100];
        snprintf(who, sizeof(who), "%s:%d: %s", path, lineno, key);
        rc = set_from(p, o, val, who, SRC_FILE);
    }
    fclose(f);
    return rc;
}

/* Repeatable options take several values from one variable, one a line
 * (a newline is the one character no channel id or origin may contain).
 * Namespaces may also be separated by spaces or tabs (their names, keys
 * and values have none): SENTE_NAMESPACE="chat:publish=token dm:rpc=none". */
static int set_env(pctx_t *p, const sl_option_t *o, const char *v, const char *name)
{
    if (!is_list(o))
        return set_from(p, o, v, name, SRC_ENV);
    const char *sep = o->kind == OPT_NAMESPACE ? " \t\n" : "\n";
    char *copy = strdup(v);
    if (copy == NULL)
        return SL_ERROR;
    int rc = SL_OK;
    char *save = NULL;
    for (char *item = strtok_r(copy, sep, &save); item && rc == SL_OK;
         item = strtok_r(NULL, sep, &save))
        if (*trim(item))
            rc = set_from(p, o, trim(item), name, SRC_ENV);
    free(copy);
    return rc;
}

/* argv[i] names an option: "--name", "--name=value", "--no-name", or a
 * short spelling ("-c FILE", "-t", "-h", "-v").  Sets *o, *negated and
 * *inline_value (NULL when the value, if any, is the next argument). */
static int match_arg(const char *a, const sl_option_t **o, bool *negated,
                     const char **inline_value, char *err, size_t errsz)
{
    *o = NULL;
    *negated = false;
    *inline_value = NULL;
    if (a[0] == '-' && a[1] != '-' && a[1] != '\0' && a[2] == '\0') {
        for (size_t k = 0; k < SL_ARRAY_LEN(sl_short); k++)
            if (sl_short[k].c == a[1])
                *o = find_flag(sl_short[k].flag, strlen(sl_short[k].flag));
        if (*o == NULL) {
            snprintf(err, errsz, "unknown option '%s' (see --help)", a);
            return SL_ERROR;
        }
        return SL_OK;
    }
    if (strncmp(a, "--", 2) != 0 || a[2] == '\0') {
        snprintf(err, errsz, "unexpected argument '%s' (options start with --)", a);
        return SL_ERROR;
    }
    const char *name = a + 2, *eq = strchr(name, '=');
    size_t nlen = eq ? (size_t)(eq - name) : strlen(name);
    *o = find_flag(name, nlen);
    if (!*o && nlen > 3 && strncmp(name, "no-", 3) == 0) {
        *o = find_flag(name + 3, nlen - 3);
        if (*o && (*o)->kind != OPT_BOOL)
            *o = NULL;
        *negated = *o != NULL;
    }
    if (!*o) {
        snprintf(err, errsz, "unknown option '--%.*s' (see --help)", (int)nlen, name);
        return SL_ERROR;
    }
    *inline_value = eq ? eq + 1 : NULL;
    return SL_OK;
}

int sl_conf_parse(sl_conf_t *c, int argc, char **argv, char **env, sl_conf_action_t *action,
                  char *err, size_t errsz)
{
    memset(c, 0, sizeof(*c));
    *action = SL_CONF_RUN;
    pctx_t p = {.c = c, .err = err, .errsz = errsz};

    for (size_t i = 0; i < NOPTS; i++) {
        const sl_option_t *o = &sl_options[i];
        /* An empty default means "not set" and skips the value checks. */
        if (o->def != NULL && o->def[0] != '\0' &&
            apply(c, o, o->def, o->flag, err, errsz) != SL_OK)
            return SL_ERROR; /* a bad default is a bug; still fail loudly */
    }

    /* First pass over the flags: only --config and the actions, so the file
     * can be read before the environment and the other flags. */
    const char *config = env_get(env, "SENTE_CONFIG");
    const char *config_who = "SENTE_CONFIG";
    for (int i = 1; i < argc; i++) {
        const sl_option_t *o;
        bool neg;
        const char *v;
        if (match_arg(argv[i], &o, &neg, &v, err, errsz) != SL_OK)
            return SL_ERROR;
        if (takes_value(o) && v == NULL)
            i++; /* skip the value (a missing one is reported below) */
        if (o->kind == OPT_CONFIG && i < argc) {
            config = v ? v : argv[i];
            config_who = "--config";
        } else if (o->kind == OPT_HELP && *action != SL_CONF_VERSION) {
            *action = SL_CONF_HELP;
        } else if (o->kind == OPT_VERSION && *action != SL_CONF_HELP) {
            *action = SL_CONF_VERSION;
        } else if (o->kind == OPT_CHECK && *action == SL_CONF_RUN) {
            *action = SL_CONF_CHECK;
        }
    }
    /* --help and --version answer whatever else is wrong. */
    if (*action == SL_CONF_HELP || *action == SL_CONF_VERSION)
        return SL_OK;
    if (config != NULL) {
        if (config[0] == '\0') {
            snprintf(err, errsz, "%s: needs a file name", config_who);
            return SL_ERROR;
        }
        snprintf(c->config_file, sizeof(c->config_file), "%s", config);
        if (read_file(&p, config) != SL_OK)
            return SL_ERROR;
    }

    for (size_t i = 0; i < NOPTS; i++) {
        const sl_option_t *o = &sl_options[i];
        if (is_meta(o))
            continue;
        char name[80];
        sl_conf_env_name(o->flag, name, sizeof(name));
        /* SENTE_<FLAG> wins over the alias (only one of them is read: a
         * list must not take values from both). */
        const char *v = env_get(env, name), *who = name;
        if (v == NULL && o->env && strcmp(o->env, name) != 0) {
            v = env_get(env, o->env);
            who = o->env;
        }
        if (v != NULL && set_env(&p, o, v, who) != SL_OK)
            return SL_ERROR;
    }

    for (int i = 1; i < argc; i++) {
        const sl_option_t *o;
        bool negated;
        const char *v;
        if (match_arg(argv[i], &o, &negated, &v, err, errsz) != SL_OK)
            return SL_ERROR;
        char who[64];
        snprintf(who, sizeof(who), "--%s%s", negated ? "no-" : "", o->flag);
        if (!takes_value(o)) {
            if (v) {
                snprintf(err, errsz, "%s takes no value", who);
                return SL_ERROR;
            }
            if (o->kind == OPT_BOOL || o->kind == OPT_FLAG) {
                *(bool *)((char *)c + o->off) = !negated;
                p.src[o - sl_options] = SRC_FLAG;
            }
            continue;
        }
        if (!v) {
            if (i + 1 >= argc) {
                snprintf(err, errsz, "%s needs a value (%s)", who, o->arg);
                return SL_ERROR;
            }
            v = argv[++i];
        }
        if (o->kind == OPT_CONFIG)
            continue; /* read above */
        if (set_from(&p, o, v, who, SRC_FLAG) != SL_OK)
            return SL_ERROR;
    }

    /* Predefined channels take their namespace's defaults, then the
     * server's, for what they omit (known only now: a default may come
     * after --channel). */
    resolve_namespaces(c);
    for (int i = 0; i < c->nchannels; i++) {
        sl_conf_channel_t *ch = &c->channels[i];
        const sl_conf_namespace_t *ns = sl_conf_namespace(c, ch->name, strlen(ch->name), NULL);
        if (ch->max_subscribers < 0)
            ch->max_subscribers = ns->max_subscribers;
        if (ch->message_retention < 0)
            ch->message_retention = ns->message_retention;
        if (ch->rpc_timeout_ms < 0)
            ch->rpc_timeout_ms = ns->rpc_timeout_ms;
        if (ch->history_ttl_ms < 0)
            ch->history_ttl_ms = ns->history_ttl_ms;
        if (ch->join_leave < 0)
            ch->join_leave = ns->join_leave;
        /* presence=none: nobody may see who comes and goes, so none are
         * sent, whatever the channel says (review rf15 F7). */
        if (ns->rules[SL_NS_PRESENCE] == SL_RULE_NONE)
            ch->join_leave = 0;
    }
    if (c->admin_token_file[0] && read_admin_token(c, err, errsz) != SL_OK)
        return SL_ERROR;
    /* A rule that needs a token while no key can verify one is a mistake
     * (nobody could ever pass it): say so now. */
    for (int i = 0; i < c->nnamespaces && !sl_conf_auth_enabled(c); i++)
        for (int k = 0; k < SL_NS__KEYS; k++)
            if (c->namespaces[i].rules[k] == SL_RULE_AUTHENTICATED ||
                c->namespaces[i].rules[k] == SL_RULE_TOKEN) {
                snprintf(err, errsz, "--namespace %s: %s=%s needs --jwt-secret-file or "
                                     "--jwt-public-key-file", c->namespaces[i].name,
                         ns_key_names[k], rule_names[c->namespaces[i].rules[k]]);
                return SL_ERROR;
            }
    if (c->worker_stall_kill_ms <= c->worker_stall_ms) {
        snprintf(err, errsz, "--worker-stall-kill-ms (%lld) must be more than --worker-stall-ms "
                             "(%lld)", (long long)c->worker_stall_kill_ms,
                 (long long)c->worker_stall_ms);
        return SL_ERROR;
    }
    if (c->redis_password_file[0]) {
        FILE *f = fopen(c->redis_password_file, "r");
        char pw[256] = "";
        if (f == NULL || fgets(pw, sizeof(pw), f) == NULL) {
            snprintf(err, errsz, "--redis-password-file: cannot read %s: %s",
                     c->redis_password_file, f ? "empty file" : strerror(errno));
            if (f)
                fclose(f);
            return SL_ERROR;
        }
        fclose(f);
        pw[strcspn(pw, "\r\n")] = '\0';
        for (int i = 0; i < c->nredis; i++)
            if (c->redis[i].password[0] == '\0')
                snprintf(c->redis[i].password, sizeof(c->redis[i].password), "%s", pw);
    }
    if ((size_t)c->shm_size < sl_shm_min_size()) {
        snprintf(err, errsz, "--shm-size: must be at least %zu bytes", sl_shm_min_size());
        return SL_ERROR;
    }
    if (strcmp(c->tls_min_version, "1.2") != 0 && strcmp(c->tls_min_version, "1.3") != 0) {
        snprintf(err, errsz, "--tls-min-version: '%s' is not 1.2 or 1.3", c->tls_min_version);
        return SL_ERROR;
    }
    if (c->tls_cert.n != c->tls_key.n) {
        snprintf(err, errsz, "--tls-cert given %d times and --tls-key %d times: each certificate "
                             "needs its key, in the same order", c->tls_cert.n, c->tls_key.n);
        return SL_ERROR;
    }
    if ((c->tls || c->tls_port) && c->tls_cert.n == 0) {
        snprintf(err, errsz, "%s needs --tls-cert and --tls-key", c->tls ? "--tls" : "--tls-port");
        return SL_ERROR;
    }
    if (c->tls_cert.n > 0 && !c->tls && !c->tls_port) {
        snprintf(err, errsz, "--tls-cert: say where TLS is served (--tls-port N, or --tls)");
        return SL_ERROR;
    }
    if (c->tls && c->tls_port) {
        snprintf(err, errsz, "--tls makes --port TLS already: --tls-port is for a second port");
        return SL_ERROR;
    }
    if (c->tls_port && (c->tls_port == c->port || c->tls_port == c->ops_port)) {
        snprintf(err, errsz, "--tls-port %lld: already --port or --ops-listen's port",
                 (long long)c->tls_port);
        return SL_ERROR;
    }
    return SL_OK;
}

void sl_conf_free(sl_conf_t *c)
{
    for (int i = 0; i < c->tls_cert.n; i++)
        free(c->tls_cert.path[i]);
    for (int i = 0; i < c->tls_key.n; i++)
        free(c->tls_key.path[i]);
    c->tls_cert.n = c->tls_key.n = 0;
    for (int i = 0; i < c->norigins; i++)
        free(c->allowed_origins[i]);
    c->norigins = 0;
    free(c->channels);
    c->channels = NULL;
    c->nchannels = 0;
    free(c->namespaces);
    c->namespaces = NULL;
    c->nnamespaces = 0;
}

void sl_conf_usage(FILE *out)
{
    fprintf(out, "usage: sente-lite [options]\n\n"
                 "Real-time WebSocket pub/sub server: a master, pre-forked workers and a\n"
                 "logger process.  See sente-lite(8).\n\n"
                 "Every option can also be set by the environment variable SENTE_<NAME>\n"
                 "(upper case, '-' as '_', e.g. SENTE_MAX_CONNECTIONS) and by a line\n"
                 "`name = value` in the --config file.  Flags beat the environment, which\n"
                 "beats the file, which beats the defaults.\n\noptions:\n");
    for (size_t i = 0; i < SL_ARRAY_LEN(sl_options); i++) {
        const sl_option_t *o = &sl_options[i];
        char left[64];
        if (o->kind == OPT_BOOL)
            snprintf(left, sizeof(left), "--[no-]%s", o->flag);
        else if (o->arg)
            snprintf(left, sizeof(left), "--%s %s", o->flag, o->arg);
        else
            snprintf(left, sizeof(left), "--%s", o->flag);
        fprintf(out, "  %-34s %s", left, o->help);
        if (o->def && o->def[0])
            fprintf(out, " [default: %s]", o->def);
        if (!is_meta(o)) {
            char name[80];
            sl_conf_env_name(o->flag, name, sizeof(name));
            fprintf(out, " [env: %s%s%s]", name, o->env && strcmp(o->env, name) ? ", " : "",
                    o->env && strcmp(o->env, name) ? o->env : "");
        }
        fputc('\n', out);
    }
}

/* --check-config: the effective settings as a config file would say them
 * (the output is itself a valid --config file). */
void sl_conf_print(const sl_conf_t *c, FILE *out)
{
    fprintf(out, "# sente-lite %s: effective configuration\n", SL_VERSION);
    if (c->config_file[0])
        fprintf(out, "# read from the file %s, the environment and the flags\n", c->config_file);
    for (size_t i = 0; i < NOPTS; i++) {
        const sl_option_t *o = &sl_options[i];
        const char *field = (const char *)c + o->off;
        switch (o->kind) {
        case OPT_STR:
        case OPT_NAME:
            if (field[0])
                fprintf(out, "%s = %s\n", o->flag, field);
            else
                fprintf(out, "# %s is not set\n", o->flag);
            break;
        case OPT_SECRET:
            fprintf(out, "# %s is %s (never shown)\n", o->flag, field[0] ? "set" : "not set");
            break;
        case OPT_INT:
        case OPT_BYTES: fprintf(out, "%s = %lld\n", o->flag, (long long)*(const int64_t *)field); break;
        case OPT_PORT: fprintf(out, "%s = %d\n", o->flag, *(const int *)field); break;
        case OPT_BOOL:
        case OPT_FLAG: fprintf(out, "%s = %s\n", o->flag, *(const bool *)field ? "true" : "false"); break;
        case OPT_WORKERS:
            if (c->workers_auto)
                fprintf(out, "# workers: auto = %d usable CPUs\nworkers = auto\n", c->workers);
            else
                fprintf(out, "workers = %d\n", c->workers);
            break;
        case OPT_LEVEL: fprintf(out, "%s = %s\n", o->flag, sl_level_name(c->log_level)); break;
        case OPT_FORMAT: fprintf(out, "%s = %s\n", o->flag, c->log_json ? "json" : "text"); break;
        case OPT_ORIGIN:
            for (int k = 0; k < c->norigins; k++)
                fprintf(out, "%s = %s\n", o->flag, c->allowed_origins[k]);
            break;
        case OPT_PATHS: {
            const sl_conf_paths_t *l = (const sl_conf_paths_t *)field;
            for (int k = 0; k < l->n; k++)
                fprintf(out, "%s = %s\n", o->flag, l->path[k]);
            if (l->n == 0)
                fprintf(out, "# %s is not set\n", o->flag);
            break;
        }
        case OPT_CIDR:
            for (int k = 0; k < c->nproxies; k++) {
                char b[64];
                cidr_format(&c->trusted_proxies[k], b, sizeof(b));
                fprintf(out, "%s = %s\n", o->flag, b);
            }
            break;
        case OPT_REDIS:
            if (c->nredis == 0)
                fprintf(out, "# %s is not set (a single node)\n", o->flag);
            for (int k = 0; k < c->nredis; k++) {
                if (c->redis[k].password[0])
                    fprintf(out, "# the next one has a password (never shown)\n");
                fprintf(out, "%s = %s\n", o->flag, c->redis[k].url);
            }
            break;
        case OPT_CHANNEL:
            for (int k = 0; k < c->nchannels; k++)
                fprintf(out, "%s = %s:max-subscribers=%lld,message-retention=%lld,"
                             "rpc-timeout-ms=%lld,history-ttl-ms=%lld,join-leave=%s\n", o->flag,
                        c->channels[k].name, (long long)c->channels[k].max_subscribers,
                        (long long)c->channels[k].message_retention,
                        (long long)c->channels[k].rpc_timeout_ms,
                        (long long)c->channels[k].history_ttl_ms,
                        c->channels[k].join_leave > 0 ? "true" : "false");
            break;
        case OPT_NAMESPACE:
            for (int k = 0; k < c->nnamespaces; k++) {
                const sl_conf_namespace_t *ns = &c->namespaces[k];
                fprintf(out, "%s = %s:", o->flag, ns->name);
                for (int r = 0; r < SL_NS__KEYS; r++)
                    fprintf(out, "%s=%s,", ns_key_names[r], rule_names[ns->rules[r]]);
                fprintf(out, "auto-create=%s,max-subscribers=%lld,message-retention=%lld,"
                             "rpc-timeout-ms=%lld,history-ttl-ms=%lld,join-leave=%s\n",
                        ns->auto_create > 0 ? "true" : "false", (long long)ns->max_subscribers,
                        (long long)ns->message_retention, (long long)ns->rpc_timeout_ms,
                        (long long)ns->history_ttl_ms, ns->join_leave > 0 ? "true" : "false");
            }
            break;
        case OPT_HOSTPORT:
            if (c->ops_port == 0)
                fprintf(out, "# %s is not set\n", o->flag);
            else if (strchr(c->ops_host, ':'))
                fprintf(out, "%s = [%s]:%d\n", o->flag, c->ops_host, c->ops_port);
            else
                fprintf(out, "%s = %s:%d\n", o->flag, c->ops_host, c->ops_port);
            break;
        case OPT_CONFIG:
        case OPT_CHECK:
        case OPT_HELP:
        case OPT_VERSION: break;
        }
    }
}

json_t *sl_conf_to_json(const sl_conf_t *c)
{
    json_t *j = json_object();
    for (size_t i = 0; i < SL_ARRAY_LEN(sl_options); i++) {
        const sl_option_t *o = &sl_options[i];
        const char *field = (const char *)c + o->off;
        json_t *v = NULL;
        switch (o->kind) {
        case OPT_STR:
        case OPT_CONFIG:
        case OPT_NAME: v = field[0] ? json_string(field) : json_null(); break;
        case OPT_CIDR:
            v = json_array();
            for (int k = 0; k < c->nproxies; k++) {
                char b[64];
                cidr_format(&c->trusted_proxies[k], b, sizeof(b));
                json_array_append_new(v, json_string(b));
            }
            break;
        case OPT_SECRET: v = json_boolean(field[0] != '\0'); break;
        case OPT_INT:
        case OPT_BYTES: v = json_integer(*(const int64_t *)field); break;
        case OPT_PORT: v = json_integer(*(const int *)field); break;
        case OPT_BOOL:
        case OPT_FLAG: v = json_boolean(*(const bool *)field); break;
        case OPT_WORKERS: v = json_integer(c->workers); break;
        case OPT_LEVEL: v = json_string(sl_level_name(c->log_level)); break;
        case OPT_FORMAT: v = json_string(c->log_json ? "json" : "text"); break;
        case OPT_ORIGIN:
            v = json_array();
            for (int k = 0; k < c->norigins; k++)
                json_array_append_new(v, json_string(c->allowed_origins[k]));
            break;
        case OPT_PATHS: {
            const sl_conf_paths_t *l = (const sl_conf_paths_t *)field;
            v = json_array();
            for (int k = 0; k < l->n; k++)
                json_array_append_new(v, json_string(l->path[k]));
            break;
        }
        case OPT_CHANNEL:
            v = json_array();
            for (int k = 0; k < c->nchannels; k++)
                json_array_append_new(
                    v, json_pack("{s:s, s:I, s:I, s:I, s:I, s:b}", "name", c->channels[k].name,
                                 "max-subscribers", (json_int_t)c->channels[k].max_subscribers,
                                 "message-retention", (json_int_t)c->channels[k].message_retention,
                                 "rpc-timeout-ms", (json_int_t)c->channels[k].rpc_timeout_ms,
                                 "history-ttl-ms", (json_int_t)c->channels[k].history_ttl_ms,
                                 "join-leave", c->channels[k].join_leave > 0));
            break;
        case OPT_NAMESPACE:
            v = json_array();
            for (int k = 0; k < c->nnamespaces; k++) {
                const sl_conf_namespace_t *ns = &c->namespaces[k];
                json_t *n = json_pack("{s:s, s:b, s:I, s:I, s:I, s:I, s:b}", "name", ns->name,
                                      "auto-create", ns->auto_create > 0, "max-subscribers",
                                      (json_int_t)ns->max_subscribers, "message-retention",
                                      (json_int_t)ns->message_retention, "rpc-timeout-ms",
                                      (json_int_t)ns->rpc_timeout_ms, "history-ttl-ms",
                                      (json_int_t)ns->history_ttl_ms, "join-leave",
                                      ns->join_leave > 0);
                for (int r = 0; r < SL_NS__KEYS; r++)
                    json_object_set_new(n, ns_key_names[r], json_string(rule_names[ns->rules[r]]));
                json_array_append_new(v, n);
            }
            break;
        case OPT_HOSTPORT:
            v = c->ops_port ? json_pack("{s:s, s:i}", "host", c->ops_host, "port", c->ops_port)
                            : json_null();
            break;
        case OPT_REDIS:
            v = json_array();
            for (int k = 0; k < c->nredis; k++)
                json_array_append_new(v, json_string(c->redis[k].url));
            break;
        case OPT_CHECK:
        case OPT_HELP:
        case OPT_VERSION: continue;
        }
        json_object_set_new(j, o->flag, v);
    }
    return j;
}

/* CPUs allowed by a cgroup quota: cgroup v2 "cpu.max" ("max 100000" or
 * "<quota> <period>"), v1 cpu.cfs_quota_us / cpu.cfs_period_us (-1: none).
 * Rounded up: 1.5 CPUs -> 2.  0 when there is no quota. */
static int quota_cpus(long long quota, long long period)
{
    if (quota <= 0 || period <= 0)
        return 0;
    return (int)((quota + period - 1) / period);
}

static int read_cpu_max(const char *dir)
{
    char path[PATH_MAX + 32];
    snprintf(path, sizeof(path), "%s/cpu.max", dir);
    FILE *f = fopen(path, "r");
    if (!f)
        return 0;
    char q[32] = "";
    long long period = 0;
    int n = fscanf(f, "%31s %lld", q, &period);
    fclose(f);
    if (n != 2 || strcmp(q, "max") == 0)
        return 0;
    return quota_cpus(atoll(q), period);
}

static long long read_ll(const char *dir, const char *file)
{
    char path[PATH_MAX + 64];
    if (strlen(file) > 32)
        return 0;
    snprintf(path, sizeof(path), "%s/%s", dir, file);
    FILE *f = fopen(path, "r");
    long long v = 0;
    if (!f)
        return 0;
    if (fscanf(f, "%lld", &v) != 1)
        v = 0;
    fclose(f);
    return v;
}

static int min_limit(int a, int b)
{
    return a == 0 ? b : b == 0 ? a : SL_MIN(a, b);
}

int sl_conf_cgroup_cpus(const char *proc_cgroup, const char *root)
{
    FILE *f = fopen(proc_cgroup, "r");
    if (!f)
        return 0;
    char line[4096];
    int limit = 0;
    while (fgets(line, sizeof(line), f)) {
        /* "hierarchy-ID:controllers:path"; v2 is "0::/path". */
        char *c1 = strchr(line, ':'), *c2 = c1 ? strchr(c1 + 1, ':') : NULL;
        if (!c2)
            continue;
        *c1 = *c2 = '\0';
        char *ctrl = c1 + 1, *path = c2 + 1;
        path[strcspn(path, "\n")] = '\0';
        bool v2 = strcmp(line, "0") == 0 && ctrl[0] == '\0';
        bool v1cpu = false;
        for (char *save = NULL, *t = strtok_r(ctrl, ",", &save); t; t = strtok_r(NULL, ",", &save))
            if (strcmp(t, "cpu") == 0)
                v1cpu = true;
        if (!v2 && !v1cpu)
            continue;
        /* Our own cgroup and every ancestor up to the mount: the tightest
         * quota on the way applies (a systemd CPUQuota= sits on the
         * service's own cgroup, a container's on an ancestor). */
        char dir[PATH_MAX];
        snprintf(dir, sizeof(dir), "%s%s%s", root, v2 ? "" : "/cpu,cpuacct", path);
        if (!v2) {
            /* cgroup v1 mounts the cpu controller under one of several names. */
            static const char *const mounts[] = {"/cpu,cpuacct", "/cpu", "/cpuacct,cpu"};
            for (size_t m = 0; m < SL_ARRAY_LEN(mounts); m++) {
                char test[PATH_MAX];
                snprintf(test, sizeof(test), "%s%s", root, mounts[m]);
                if (access(test, F_OK) == 0) {
                    snprintf(dir, sizeof(dir), "%s%s%s", root, mounts[m], path);
                    break;
                }
            }
        }
        size_t base = strlen(dir) - strlen(path);
        for (;;) {
            int l = v2 ? read_cpu_max(dir)
                       : quota_cpus(read_ll(dir, "cpu.cfs_quota_us"),
                                    read_ll(dir, "cpu.cfs_period_us"));
            limit = min_limit(limit, l);
            char *slash = strrchr(dir, '/');
            if (slash == NULL || (size_t)(slash - dir) < base)
                break;
            *slash = '\0';
        }
    }
    fclose(f);
    return limit;
}

int sl_conf_usable_cpus(void)
{
    cpu_set_t set;
    int n = 1;
    if (sched_getaffinity(0, sizeof(set), &set) == 0)
        n = CPU_COUNT(&set);
    int limit = sl_conf_cgroup_cpus("/proc/self/cgroup", "/sys/fs/cgroup");
    if (limit > 0 && limit < n)
        n = limit;
    return n < 1 ? 1 : n;
}
