/*
 * sl_conf.h - the server's configuration: the one place that parses command
 * line flags and environment variables (flags win), validates them and
 * describes them for --help and /stats "server-config".
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

/* A channel predefined with --channel NAME[:key=value,...]. */
typedef struct {
    char name[129];
    int64_t max_subscribers;   /* -1: the server default */
    int64_t message_retention; /* -1: the server default */
    int64_t rpc_timeout_ms;    /* -1: the server default */
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
    int64_t max_subscriptions_per_connection;
    sl_conf_channel_t *channels; /* --channel, resolved after parsing */
    int nchannels;
    char admin_token[256]; /* "" = admin API disabled */
} sl_conf_t;

typedef enum { SL_CONF_RUN, SL_CONF_HELP, SL_CONF_VERSION } sl_conf_action_t;

/* Fill conf with defaults, then apply the environment (`env` is a NULL-
 * terminated "NAME=value" array like environ), then the flags.  On error
 * returns SL_ERROR with a message naming the flag or variable in err.
 * *action says whether to run, print help or print the version. */
int sl_conf_parse(sl_conf_t *conf, int argc, char **argv, char **env, sl_conf_action_t *action,
                  char *err, size_t errsz);

/* Release what parsing allocated. */
void sl_conf_free(sl_conf_t *conf);

/* Print --help (every flag, its default and environment variable). */
void sl_conf_usage(FILE *out);

/* The effective settings as a JSON object (for /stats "server-config"). */
json_t *sl_conf_to_json(const sl_conf_t *conf);

/* CPUs this process may use: affinity mask, capped by a cgroup v2 CPU
 * quota when one is set. */
int sl_conf_usable_cpus(void);

/* The configuration of this process (set by main before forking). */
extern const sl_conf_t *sl_conf;

#endif
