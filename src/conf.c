/*
 * conf.c - flags and environment variables, in one table.
 *
 * Every option is a row of sl_options[]: its flag, the seed's environment
 * variable (if any), its kind, where it lands in sl_conf_t, its bounds, its
 * default and its help line.  Parsing, --help and /stats "server-config" all
 * walk the same table, so an option cannot exist in one and not the others.
 * Order of precedence: defaults, then environment, then flags.
 */
#include "sl_conf.h"
#include "sl_chan.h"
#include "sl_shm.h"
#include "sl_ws.h"

#include <ctype.h>
#include <errno.h>
#include <limits.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

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
    OPT_HELP,
    OPT_VERSION,
} opt_kind_t;

typedef struct {
    const char *flag; /* without the leading "--" */
    const char *env;  /* NULL when the seeds define none */
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
    {"max-subscriptions-per-connection", NULL, OPT_INT, OFF(max_subscriptions_per_connection), 0,
     1, 1000000, "1000", "N", "channels one connection may subscribe to"},
    {"admin-token", "SENTE_ADMIN_TOKEN", OPT_SECRET, OFF(admin_token), SZ(admin_token), 1, 0, "",
     "TOKEN", "enable the admin API under /api/ with this bearer token"},
    {"channel", NULL, OPT_CHANNEL, 0, 0, 0, 0, NULL, "NAME[:key=value,...]",
     "predefine a channel (keys: max-subscribers, message-retention, rpc-timeout-ms; repeatable)"},
    {"help", NULL, OPT_HELP, 0, 0, 0, 0, NULL, NULL, "show this help"},
    {"version", NULL, OPT_VERSION, 0, 0, 0, 0, NULL, NULL, "show the version"},
};

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
    case OPT_FLAG:
    case OPT_HELP:
    case OPT_VERSION:
        break;
    }
    return SL_OK;
}

/* Parse "k=v,k=v" (p[0..n), not NUL-terminated, any length) into the
 * channel's settings; SL_ERROR when any part is not one of the keys or its
 * value is out of range. */
static int parse_channel_keys(const char *p, size_t n, sl_conf_channel_t *ch, const char *who,
                              char *err, size_t errsz)
{
    static const struct {
        const char *key;
        int64_t min, max;
        size_t off;
    } keys[] = {
        {"max-subscribers", 1, 10000000, offsetof(sl_conf_channel_t, max_subscribers)},
        {"message-retention", 0, 10000, offsetof(sl_conf_channel_t, message_retention)},
        {"rpc-timeout-ms", 1, 3600000, offsetof(sl_conf_channel_t, rpc_timeout_ms)},
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
            snprintf(err, errsz, "%s: '%.*s' is not max-subscribers=N, message-retention=N or "
                                 "rpc-timeout-ms=N (a channel name with ':' and '=' needs a "
                                 "trailing ':')", who, (int)SL_MIN(kvlen, 200), p);
            return SL_ERROR;
        }
        char num[24];
        size_t vlen = (size_t)(kv_end - eq - 1);
        int64_t v;
        if (vlen >= sizeof(num)) {
            v = -1; /* far too long to be in range */
        } else {
            memcpy(num, eq + 1, vlen);
            num[vlen] = '\0';
            if (parse_int(num, &v) != SL_OK)
                v = -1;
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

static const char *env_get(char **env, const char *name)
{
    size_t n = strlen(name);
    for (char **e = env; e && *e; e++)
        if (strncmp(*e, name, n) == 0 && (*e)[n] == '=')
            return *e + n + 1;
    return NULL;
}

int sl_conf_parse(sl_conf_t *c, int argc, char **argv, char **env, sl_conf_action_t *action,
                  char *err, size_t errsz)
{
    memset(c, 0, sizeof(*c));
    *action = SL_CONF_RUN;

    for (size_t i = 0; i < SL_ARRAY_LEN(sl_options); i++) {
        const sl_option_t *o = &sl_options[i];
        /* An empty default means "not set" and skips the value checks. */
        if (o->def != NULL && o->def[0] != '\0' &&
            apply(c, o, o->def, o->flag, err, errsz) != SL_OK)
            return SL_ERROR; /* a bad default is a bug; still fail loudly */
    }

    for (size_t i = 0; i < SL_ARRAY_LEN(sl_options); i++) {
        const sl_option_t *o = &sl_options[i];
        const char *v = o->env ? env_get(env, o->env) : NULL;
        if (v != NULL && apply(c, o, v, o->env, err, errsz) != SL_OK)
            return SL_ERROR;
    }

    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (strncmp(a, "--", 2) != 0 || a[2] == '\0') {
            snprintf(err, errsz, "unexpected argument '%s' (options start with --)", a);
            return SL_ERROR;
        }
        const char *name = a + 2, *eq = strchr(name, '=');
        size_t nlen = eq ? (size_t)(eq - name) : strlen(name);
        bool negated = false;
        const sl_option_t *o = NULL;

        for (size_t k = 0; k < SL_ARRAY_LEN(sl_options) && !o; k++)
            if (strlen(sl_options[k].flag) == nlen && strncmp(sl_options[k].flag, name, nlen) == 0)
                o = &sl_options[k];
        if (!o && nlen > 3 && strncmp(name, "no-", 3) == 0) {
            for (size_t k = 0; k < SL_ARRAY_LEN(sl_options) && !o; k++)
                if (sl_options[k].kind == OPT_BOOL && strlen(sl_options[k].flag) == nlen - 3 &&
                    strncmp(sl_options[k].flag, name + 3, nlen - 3) == 0)
                    o = &sl_options[k], negated = true;
        }
        if (!o) {
            snprintf(err, errsz, "unknown option '--%.*s' (see --help)", (int)nlen, name);
            return SL_ERROR;
        }

        char who[64];
        snprintf(who, sizeof(who), "--%s%s", negated ? "no-" : "", o->flag);
        bool takes_value = !(o->kind == OPT_BOOL || o->kind == OPT_FLAG || o->kind == OPT_HELP ||
                             o->kind == OPT_VERSION);
        if (!takes_value) {
            if (eq) {
                snprintf(err, errsz, "%s takes no value", who);
                return SL_ERROR;
            }
            if (o->kind == OPT_HELP)
                *action = SL_CONF_HELP;
            else if (o->kind == OPT_VERSION)
                *action = SL_CONF_VERSION;
            else
                *(bool *)((char *)c + o->off) = !negated;
            continue;
        }
        const char *v = eq ? eq + 1 : NULL;
        if (!v) {
            if (i + 1 >= argc) {
                snprintf(err, errsz, "%s needs a value (%s)", who, o->arg);
                return SL_ERROR;
            }
            v = argv[++i];
        }
        if (apply(c, o, v, who, err, errsz) != SL_OK)
            return SL_ERROR;
    }

    /* Predefined channels take the server defaults for what they omit
     * (known only now: a default may come after --channel). */
    for (int i = 0; i < c->nchannels; i++) {
        sl_conf_channel_t *ch = &c->channels[i];
        if (ch->max_subscribers < 0)
            ch->max_subscribers = c->max_subscribers;
        if (ch->message_retention < 0)
            ch->message_retention = c->message_retention;
        if (ch->rpc_timeout_ms < 0)
            ch->rpc_timeout_ms = c->rpc_timeout_ms;
    }
    if ((size_t)c->shm_size < sl_shm_min_size()) {
        snprintf(err, errsz, "--shm-size: must be at least %zu bytes", sl_shm_min_size());
        return SL_ERROR;
    }
    return SL_OK;
}

void sl_conf_free(sl_conf_t *c)
{
    for (int i = 0; i < c->norigins; i++)
        free(c->allowed_origins[i]);
    c->norigins = 0;
    free(c->channels);
    c->channels = NULL;
    c->nchannels = 0;
}

void sl_conf_usage(FILE *out)
{
    fprintf(out, "usage: sente-lite [options]\n\n"
                 "Real-time WebSocket pub/sub server: a master, pre-forked workers and a\n"
                 "logger process.  See sente-lite(8).\n\noptions:\n");
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
        if (o->env)
            fprintf(out, " [env: %s]", o->env);
        fputc('\n', out);
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
        case OPT_NAME: v = field[0] ? json_string(field) : json_null(); break;
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
        case OPT_CHANNEL:
            v = json_array();
            for (int k = 0; k < c->nchannels; k++)
                json_array_append_new(
                    v, json_pack("{s:s, s:I, s:I, s:I}", "name", c->channels[k].name,
                                 "max-subscribers", (json_int_t)c->channels[k].max_subscribers,
                                 "message-retention", (json_int_t)c->channels[k].message_retention,
                                 "rpc-timeout-ms", (json_int_t)c->channels[k].rpc_timeout_ms));
            break;
        case OPT_HELP:
        case OPT_VERSION: continue;
        }
        json_object_set_new(j, o->flag, v);
    }
    return j;
}

/* cgroup v2: "max 100000" (no quota) or "<quota> <period>". */
static int cgroup_cpu_limit(void)
{
    FILE *f = fopen("/sys/fs/cgroup/cpu.max", "r");
    if (!f)
        return 0;
    char q[32] = "";
    long long period = 0;
    int n = fscanf(f, "%31s %lld", q, &period);
    fclose(f);
    if (n != 2 || strcmp(q, "max") == 0 || period <= 0)
        return 0;
    long long quota = atoll(q);
    if (quota <= 0)
        return 0;
    return (int)((quota + period - 1) / period); /* round up: 1.5 CPUs -> 2 */
}

int sl_conf_usable_cpus(void)
{
    cpu_set_t set;
    int n = 1;
    if (sched_getaffinity(0, sizeof(set), &set) == 0)
        n = CPU_COUNT(&set);
    int limit = cgroup_cpu_limit();
    if (limit > 0 && limit < n)
        n = limit;
    return n < 1 ? 1 : n;
}
