/*
 * sl_conf.h - the server's configuration: the one place that parses command
 * line flags, environment variables and the --config file (flags beat the
 * environment, which beats the file, which beats the defaults), validates
 * them and describes them for --help, --check-config and /stats
 * "server-config".
 *
 * The master parses once before forking; workers and the logger inherit the
 * resulting sl_conf_t by fork and never change it.
 */
#ifndef SL_CONF_H
#define SL_CONF_H

#include "sl_common.h"
#include "sl_tel.h"

#include <jansson.h>
#include <stdio.h>

#define SL_MAX_ORIGINS 32
#define SL_MAX_PREDEFINED 256
#define SL_MAX_REDIS 8 /* --redis shards */

/* One --redis URL, parsed: redis://[user:password@]host:port[/db] or
 * unix:///path[?db=N]. */
typedef struct {
    char url[512];      /* for display: without the password */
    char host[256];     /* "" for a Unix socket */
    int port;
    char path[256];     /* Unix socket path, "" for TCP */
    char user[128];     /* "" = default user */
    char password[256]; /* "" = none (or from --redis-password-file) */
    int db;
} sl_conf_redis_t;
#define SL_MAX_PROXIES 32
#define SL_MAX_TLS_CERTS 16 /* --tls-cert/--tls-key pairs (SNI) */

/* A repeatable file-name option (--tls-cert, --tls-key). */
typedef struct {
    char *path[SL_MAX_TLS_CERTS];
    int n;
} sl_conf_paths_t;

/* An address range: --trusted-proxy 10.0.0.0/8, ::1, ... */
typedef struct {
    int family; /* AF_INET or AF_INET6 */
    int prefix;
    uint8_t addr[16];
} sl_cidr_t;

#define SL_MAX_NAMESPACES 64
#define SL_NAMESPACE_NAME_MAX 64

/* Who may do an action in a namespace (--namespace NAME:key=value). */
typedef enum {
    SL_RULE_ANYONE = 0,     /* every connection, anonymous ones included */
    SL_RULE_AUTHENTICATED,  /* connections with a verified token */
    SL_RULE_TOKEN,          /* the token's channels / publish claim lists the channel */
    SL_RULE_SUBSCRIBERS,    /* connections subscribed to the channel */
    SL_RULE_NONE,           /* nobody (the admin API still may) */
} sl_rule_t;

/* The actions a namespace has a key for, in the order of its rules[]. */
typedef enum {
    SL_NS_SUBSCRIBE = 0,
    SL_NS_PUBLISH,
    SL_NS_RPC,      /* who may send rpc-request */
    SL_NS_PRESENCE, /* who may ask presence / presence-stats (none: presence-disabled) */
    SL_NS_HISTORY,  /* who may ask history */
    SL_NS_RPC_RESPOND, /* who may answer rpc-request (besides being subscribed) */
    SL_NS__KEYS
} sl_ns_key_t;

/* A namespace: channel ids "NAME:..." (NAME "" = the default namespace,
 * channel ids without ':'). */
typedef struct {
    char name[SL_NAMESPACE_NAME_MAX];
    uint8_t rules[SL_NS__KEYS]; /* sl_rule_t */
    int8_t auto_create;         /* -1: the server default (--[no-]auto-create) */
    int64_t max_subscribers;    /* -1: the server default */
    int64_t message_retention;  /* -1: the server default */
    int64_t rpc_timeout_ms;     /* -1: the server default */
    int64_t history_ttl_ms;     /* -1: the server default */
    int8_t join_leave;          /* -1: the server default */
} sl_conf_namespace_t;

/* A channel predefined with --channel NAME[:key=value,...]. */
typedef struct {
    char name[129];
    int64_t max_subscribers;   /* -1: the server default */
    int64_t message_retention; /* -1: the server default */
    int64_t rpc_timeout_ms;    /* -1: the server default */
    int64_t history_ttl_ms;    /* -1: the server default */
    int64_t join_leave;        /* -1: the server default; 0 or 1 */
} sl_conf_channel_t;

typedef struct {
    char host[256];
    int port;
    int workers;       /* resolved: never 0 after parsing */
    bool workers_auto; /* --workers auto was used */
    int64_t max_connections;
    int64_t heartbeat_interval_ms;
    int64_t message_timeout_ms;
    int64_t max_message_size;
    int64_t max_outbound_bytes;
    int64_t max_outbound_total;   /* all workers; each gets total / workers */
    int64_t max_inbound_total;    /* unfinished input, all workers; each gets total / workers */
    int64_t max_http_connections; /* not-upgraded TCP connections, all workers */
    int64_t keepalive_timeout_ms; /* idle keep-alive HTTP connection */
    int64_t max_control_rate;     /* ping/pong frames per second per connection */
    char *allowed_origins[SL_MAX_ORIGINS];
    int norigins;
    bool echo;
    bool web_ui; /* the pages of web/ (sl_web.h) */
    bool telemetry;
    char app_name[64];
    char log_file[1024]; /* "" = stderr */
    sl_level_t log_level;
    bool log_json;
    int64_t shm_size;
    char pid_file[1024];
    /* channels */
    bool auto_create;
    int64_t max_subscribers;
    int64_t message_retention;
    int64_t rpc_timeout_ms;
    bool join_leave;        /* default of channels: join / leave events */
    int64_t history_ttl_ms; /* default of channels: retained messages expire (0: never) */
    int64_t max_subscriptions_per_connection;
    int64_t max_channels;                 /* channels across the server */
    int64_t channel_linger_ms;            /* empty auto-created channels go after this */
    int64_t channel_creations_per_minute; /* per connection, by subscribing */
    int64_t worker_stall_ms;              /* no progress this long: stalled */
    int64_t worker_stall_kill_ms;         /* stalled this long: killed, replaced */
    sl_conf_channel_t *channels; /* --channel, resolved after parsing */
    int nchannels;
    char admin_token[256]; /* "" = admin API disabled */
    /* cluster (--redis; src/broker.c) */
    sl_conf_redis_t redis[SL_MAX_REDIS];
    int nredis; /* 0: a single node, no broker process */
    char redis_password_file[1024];
    int64_t redis_timeout_ms;
    char redis_prefix[64];
    char node_id[64]; /* "" = chosen at start (random) */
    int64_t redis_history_ttl_s;
    int64_t redis_max_held_bytes;
    char access_log[1024]; /* "" = no access log */
    sl_cidr_t trusted_proxies[SL_MAX_PROXIES];
    int nproxies;
    char config_file[1024]; /* the --config file read, "" = none */
    char admin_token_file[1024]; /* read into admin_token at parse time */
    /* access control (sl_auth.h, sl_perm.h, sl_session.h) */
    char jwt_secret_file[1024];     /* HS256/384/512 */
    char jwt_public_key_file[1024]; /* RS*, PS*, ES* (PEM) */
    int64_t jwt_leeway_ms;
    char jwt_audience[256];
    char jwt_issuer[256];
    bool allow_anonymous;
    int64_t auth_timeout_ms;
    sl_conf_namespace_t *namespaces; /* --namespace, in the order given */
    int nnamespaces;
    sl_conf_namespace_t default_namespace; /* resolved after parsing */
    bool strict_namespaces;
    int64_t max_messages_per_second; /* 0: unlimited */
    int64_t message_burst;           /* 0: one second's worth */
    int64_t max_publishes_per_second;
    int64_t publish_burst;
    int64_t max_connections_per_ip;   /* 0: unlimited */
    int64_t max_connections_per_user; /* 0: unlimited */
    char ops_host[256]; /* --ops-listen HOST:PORT; ops_port 0 = none */
    int ops_port;
    /* TLS (sl_tls.h): certificate chains and their keys, paired in order
     * (the first is the default; the others are chosen by SNI) */
    sl_conf_paths_t tls_cert, tls_key;
    int64_t tls_port;     /* 0: no TLS listener beside --port */
    bool tls;             /* --port itself speaks TLS */
    char tls_min_version[8]; /* "1.2" or "1.3" */
    bool compression;              /* permessage-deflate offered by clients is accepted */
    int64_t compression_min_bytes; /* smaller messages go uncompressed */
} sl_conf_t;

typedef enum { SL_CONF_RUN, SL_CONF_HELP, SL_CONF_VERSION, SL_CONF_CHECK } sl_conf_action_t;

/* Fill conf with defaults, then the --config file (-c FILE, or the
 * variable SENTE_CONFIG), then the environment (`env` is a NULL-terminated
 * "NAME=value" array like environ: SENTE_<FLAG> for every flag, and the
 * seeds' names as aliases), then the flags.  On error returns SL_ERROR
 * with a message naming the flag, variable or file:line in err.  *action
 * says whether to run, print help, the version, or check the configuration
 * (--check-config / -t). */
int sl_conf_parse(sl_conf_t *conf, int argc, char **argv, char **env, sl_conf_action_t *action,
                  char *err, size_t errsz);

/* Parse one --redis URL into r.  SL_OK, or SL_ERROR with the reason in err. */
int sl_conf_redis_url(const char *url, sl_conf_redis_t *r, char *err, size_t errsz);

/* Release what parsing allocated. */
void sl_conf_free(sl_conf_t *conf);

/* Print --help (every flag, its default and environment variable). */
void sl_conf_usage(FILE *out);

/* Print the effective configuration as `key = value` lines (a valid
 * --config file; secrets are not shown). */
void sl_conf_print(const sl_conf_t *conf, FILE *out);

/* The environment variable of a flag: "max-connections" ->
 * "SENTE_MAX_CONNECTIONS". */
void sl_conf_env_name(const char *flag, char *out, size_t n);

/* Parse "a.b.c.d[/n]" or an IPv6 address[/n]; SL_OK or SL_ERROR. */
int sl_cidr_parse(const char *s, sl_cidr_t *out);

/* Is the address (family AF_INET or AF_INET6, raw bytes) in the range?
 * IPv4-mapped IPv6 addresses match IPv4 ranges. */
bool sl_cidr_match(const sl_cidr_t *range, int family, const void *addr);

/* The effective settings as a JSON object (for /stats "server-config"). */
json_t *sl_conf_to_json(const sl_conf_t *conf);

/* The namespace of channel id[0..len): the declared one, or the default
 * namespace's (declared with an empty NAME, or built-in: every rule
 * "anyone") when the id has no ':' or (without --strict-namespaces) names an
 * undeclared one.  *declared (may be NULL) says whether the id's namespace
 * is known: false only for "NAME:..." ids whose NAME was not declared. */
const sl_conf_namespace_t *sl_conf_namespace(const sl_conf_t *conf, const char *id, size_t len,
                                             bool *declared);

/* Is a token key configured (--jwt-secret-file or --jwt-public-key-file)? */
bool sl_conf_auth_enabled(const sl_conf_t *conf);

/* CPUs this process may use: affinity mask, capped by the CPU quota of the
 * process's own cgroup or any ancestor (cgroup v2 cpu.max, v1
 * cpu.cfs_quota_us), as /proc/self/cgroup names it. */
int sl_conf_usable_cpus(void);

/* The tightest CPU quota (in CPUs, rounded up) along the cgroups that
 * `proc_cgroup` (a /proc/PID/cgroup file) names, with the cgroup file
 * systems under `root` (/sys/fs/cgroup); 0 when there is none. */
int sl_conf_cgroup_cpus(const char *proc_cgroup, const char *root);

/* The configuration of this process (set by main before forking). */
extern const sl_conf_t *sl_conf;

#endif
