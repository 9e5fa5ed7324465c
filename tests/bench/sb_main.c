/*
 * sb_main.c - sente-bench's entry point: the one place flags are parsed and
 * checked, RLIMIT_NOFILE, and --processes: forking the children, slicing
 * the work between them, relaying the barrier lines (sb_agg) and merging
 * their raw results into the final figures.
 *
 * Output contract: a human summary on stderr (unless --json-only) and, as
 * the last line on stdout, one JSON object.  Exit 0 when the run completed
 * (losses are figures, not failures), 1 on a setup failure (no connection
 * of a needed kind could be made, the host does not resolve, a child
 * died), 2 on bad flags.
 */
#include "sb.h"

#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <math.h>
#include <netdb.h>
#include <arpa/inet.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

static const char USAGE[] =
    "usage: sente-bench MODE [options]\n"
    "       sente-bench --self-test | --help | --version\n"
    "\n"
    "Load generator for sente-lite (RFC 6455 WebSocket pub/sub).  Summary on\n"
    "stderr, one JSON object as the last line on stdout.  See sente-bench(1).\n"
    "\n"
    "modes:\n"
    "  fanout    S subscribers, P publishers; delivery counts and latency\n"
    "  echo      C connections in ping-pong; round trips and latency\n"
    "  connect   N connections, then hold them; handshakes/s\n"
    "  rpc       R requesters, Q responders through rpc-request/rpc-response\n"
    "\n"
    "common options:\n"
    "  --host HOST              server address [127.0.0.1]\n"
    "  --port N                 server port [3000]\n"
    "  --pub-port N             fanout: publishers connect to this port [--port]\n"
    "  --sub-ports N,M,...      fanout: subscribers round-robin over these ports [--port]\n"
    "  --path PATH              WebSocket path [/; echo: /echo]\n"
    "  --header 'NAME: VALUE'   add this header to every upgrade request (e.g. a token)\n"
    "  --tls                    wss:// (TLS; no certificate check without --tls-ca)\n"
    "  --tls-ca FILE            verify the server's certificate against this CA (PEM)\n"
    "  --tls-name NAME          SNI and the name checked with --tls-ca [--host]\n"
    "  --tls-resume             resume TLS sessions (tickets) after the first handshake\n"
    "  --deflate                offer permessage-deflate; inflate what comes compressed\n"
    "  --duration SEC           sending time (fanout, echo, rpc) [10]\n"
    "  --drain SEC              grace after sending for what is still due [2]\n"
    "  --count N                stop sending after N messages/requests/round trips [0 = none]\n"
    "  --payload-size BYTES     timed payload size, >= 34 [100]\n"
    "  --inflight K             unacknowledged messages per sender [fanout 64, echo 1, rpc 8]\n"
    "  --source-addrs A,B,...   bind each connection to the next of these addresses\n"
    "  --max-handshakes N       connections being set up at once [500]\n"
    "  --connect-rate N         open at most N connections per second [0 = no limit]\n"
    "  --connect-timeout SEC    connect + handshake + ready bound per connection [10]\n"
    "  --wait-welcome           a connection is ready after its first server message\n"
    "  --no-wait-welcome        do not wait (default, except echo with --echo-frame)\n"
    "  --processes K            fork K processes sharing the work, merge results [1]\n"
    "  --json-only              no summary on stderr\n"
    "fanout:\n"
    "  --subscribers S          subscriber connections [100]\n"
    "  --publishers P           publisher connections (not subscribed) [1]\n"
    "  --sub-path PATH          subscribers' path [--path]\n"
    "  --pub-path PATH          publishers' path [--path]\n"
    "  --channel NAME           channel of the default frames [bench; rpc: bench-rpc]\n"
    "  --sub-frame TEXT         sent by each subscriber once open ['' = nothing]\n"
    "                           [{\"type\":\"subscribe\",\"channel-id\":\"bench\"}]\n"
    "  --sub-ack TEXT           substring of the subscription acknowledgement\n"
    "                           ['' = none] [subscription-result]\n"
    "  --pub-frame TEXT         publish template, %s = payload\n"
    "                           [{\"type\":\"publish\",\"channel-id\":\"bench\",\"data\":\"%s\"}]\n"
    "  --pub-ack TEXT           substring of a publish acknowledgement ['' = track in-flight\n"
    "                           by delivery to one subscriber] [publish-result]\n"
    "  --rate N                 aggregate msgs/s, evenly spaced [0 = flat out, --inflight]\n"
    "echo:\n"
    "  --connections C          connections [10]\n"
    "  --echo-frame TEXT        JSON frame to send on --path (%s = timed payload; without\n"
    "                           %s any reply counts) [none: raw payload on /echo]\n"
    "connect:\n"
    "  --connections N          connections [1000]\n"
    "  --hold SEC               hold them open this long once all are open [0]\n"
    "  --hold-until-signal      hold until SIGTERM or SIGINT\n"
    "  --sub-frame TEXT         also subscribe: sent once open, ready on --sub-ack\n"
    "rpc:\n"
    "  --requesters R           requester connections [1]\n"
    "  --responders Q           responder connections, subscribed to --channel [1]\n"
    "  --rpc-timeout-ms MS      timeout-ms of each request [10000]\n";

enum {
    OPT_HOST = 256,
    OPT_PORT,
    OPT_PUB_PORT,
    OPT_SUB_PORTS,
    OPT_PATH,
    OPT_HEADER,
    OPT_SUB_PATH,
    OPT_PUB_PATH,
    OPT_DURATION,
    OPT_DRAIN,
    OPT_JSON,
    OPT_SOURCES,
    OPT_CRATE,
    OPT_MAXHS,
    OPT_CTIMEOUT,
    OPT_PROCS,
    OPT_SUBS,
    OPT_PUBS,
    OPT_SUBF,
    OPT_SUBACK,
    OPT_PUBF,
    OPT_PUBACK,
    OPT_RATE,
    OPT_INFLIGHT,
    OPT_COUNT,
    OPT_PAYLOAD,
    OPT_CHANNEL,
    OPT_CONNS,
    OPT_ECHOF,
    OPT_WAITW,
    OPT_NOWAITW,
    OPT_HOLD,
    OPT_HOLDSIG,
    OPT_REQS,
    OPT_RESPS,
    OPT_RPCTO,
    OPT_SELFTEST,
    OPT_HELP,
    OPT_VERSION,
    OPT_TLS,
    OPT_TLS_CA,
    OPT_TLS_NAME,
    OPT_TLS_RESUME,
    OPT_DEFLATE
};

static const struct option OPTS[] = {
    {"host", required_argument, 0, OPT_HOST},
    {"port", required_argument, 0, OPT_PORT},
    {"pub-port", required_argument, 0, OPT_PUB_PORT},
    {"sub-ports", required_argument, 0, OPT_SUB_PORTS},
    {"path", required_argument, 0, OPT_PATH},
    {"header", required_argument, 0, OPT_HEADER},
    {"sub-path", required_argument, 0, OPT_SUB_PATH},
    {"pub-path", required_argument, 0, OPT_PUB_PATH},
    {"duration", required_argument, 0, OPT_DURATION},
    {"drain", required_argument, 0, OPT_DRAIN},
    {"json-only", no_argument, 0, OPT_JSON},
    {"source-addrs", required_argument, 0, OPT_SOURCES},
    {"connect-rate", required_argument, 0, OPT_CRATE},
    {"max-handshakes", required_argument, 0, OPT_MAXHS},
    {"connect-timeout", required_argument, 0, OPT_CTIMEOUT},
    {"processes", required_argument, 0, OPT_PROCS},
    {"subscribers", required_argument, 0, OPT_SUBS},
    {"publishers", required_argument, 0, OPT_PUBS},
    {"sub-frame", required_argument, 0, OPT_SUBF},
    {"sub-ack", required_argument, 0, OPT_SUBACK},
    {"pub-frame", required_argument, 0, OPT_PUBF},
    {"pub-ack", required_argument, 0, OPT_PUBACK},
    {"rate", required_argument, 0, OPT_RATE},
    {"inflight", required_argument, 0, OPT_INFLIGHT},
    {"count", required_argument, 0, OPT_COUNT},
    {"payload-size", required_argument, 0, OPT_PAYLOAD},
    {"channel", required_argument, 0, OPT_CHANNEL},
    {"connections", required_argument, 0, OPT_CONNS},
    {"echo-frame", required_argument, 0, OPT_ECHOF},
    {"wait-welcome", no_argument, 0, OPT_WAITW},
    {"no-wait-welcome", no_argument, 0, OPT_NOWAITW},
    {"hold", required_argument, 0, OPT_HOLD},
    {"hold-until-signal", no_argument, 0, OPT_HOLDSIG},
    {"requesters", required_argument, 0, OPT_REQS},
    {"responders", required_argument, 0, OPT_RESPS},
    {"rpc-timeout-ms", required_argument, 0, OPT_RPCTO},
    {"self-test", no_argument, 0, OPT_SELFTEST},
    {"help", no_argument, 0, OPT_HELP},
    {"tls", no_argument, 0, OPT_TLS},
    {"tls-ca", required_argument, 0, OPT_TLS_CA},
    {"tls-name", required_argument, 0, OPT_TLS_NAME},
    {"tls-resume", no_argument, 0, OPT_TLS_RESUME},
    {"deflate", no_argument, 0, OPT_DEFLATE},
    {"version", no_argument, 0, OPT_VERSION},
    {0, 0, 0, 0},
};

static int usage_error(const char *fmt, const char *arg)
{
    fprintf(stderr, "sente-bench: ");
    fprintf(stderr, fmt, arg);
    fprintf(stderr, "\n(see sente-bench --help)\n");
    return SB_EXIT_USAGE;
}

static bool parse_long(const char *s, long lo, long hi, long *out)
{
    char *e;
    errno = 0;
    long v = strtol(s, &e, 10);
    if (errno || e == s || *e || v < lo || v > hi)
        return false;
    *out = v;
    return true;
}

static bool parse_double(const char *s, double lo, double hi, double *out)
{
    char *e;
    errno = 0;
    double v = strtod(s, &e);
    if (errno || e == s || *e || !isfinite(v) || v < lo || v > hi)
        return false;
    *out = v;
    return true;
}

static bool parse_addr(const char *s, struct sb_addr *a)
{
    memset(a, 0, sizeof(*a));
    struct sockaddr_in *v4 = (struct sockaddr_in *)&a->sa;
    struct sockaddr_in6 *v6 = (struct sockaddr_in6 *)&a->sa;
    if (inet_pton(AF_INET, s, &v4->sin_addr) == 1) {
        v4->sin_family = AF_INET;
        a->len = sizeof(*v4);
        return true;
    }
    if (inet_pton(AF_INET6, s, &v6->sin6_addr) == 1) {
        v6->sin6_family = AF_INET6;
        a->len = sizeof(*v6);
        return true;
    }
    return false;
}

static int parse_sources(struct sb_config *cfg, const char *list)
{
    char *copy = strdup(list);
    if (!copy)
        return -1;
    int n = 1;
    for (const char *p = list; *p; p++)
        n += *p == ',';
    free(cfg->sources);
    cfg->sources = calloc((size_t)n, sizeof(*cfg->sources));
    if (!cfg->sources) {
        free(copy);
        return -1;
    }
    cfg->n_sources = 0;
    char *save = NULL;
    for (char *t = strtok_r(copy, ",", &save); t; t = strtok_r(NULL, ",", &save)) {
        while (*t == ' ')
            t++;
        if (!*t)
            continue;
        if (!parse_addr(t, &cfg->sources[cfg->n_sources])) {
            free(copy);
            return -1;
        }
        cfg->n_sources++;
    }
    free(copy);
    return cfg->n_sources > 0 ? 0 : -1;
}

/* The default frames built from --channel; freed at the end of main. */
static char *owned_sub_frame, *owned_pub_frame;

static char *fmt_alloc(const char *fmt, const char *a)
{
    size_t n = strlen(fmt) + strlen(a) + 1;
    char *s = malloc(n);
    if (s)
        snprintf(s, n, fmt, a);
    return s;
}

/* Parses argv into cfg.  Returns -1 when the run should go ahead, else an
 * exit status (help, version, self-test, bad flags). */
static int parse_flags(int argc, char **argv, struct sb_config *cfg)
{
    memset(cfg, 0, sizeof(*cfg));
    cfg->host = "127.0.0.1";
    cfg->port = 3000;
    cfg->duration = 10;
    cfg->drain = 2;
    cfg->connect_timeout = 10;
    cfg->max_handshakes = 500;
    cfg->processes = 1;
    cfg->wait_welcome = -1;
    cfg->subscribers = 100;
    cfg->publishers = 1;
    cfg->connections = -1;
    cfg->requesters = 1;
    cfg->responders = 1;
    cfg->inflight = -1;
    cfg->payload_size = 100;
    cfg->rpc_timeout_ms = 10000;
    cfg->sub_ack = "subscription-result";
    cfg->pub_ack = "publish-result";
    const char *sub_frame = NULL, *pub_frame = NULL;
    bool self_test = false;
    long v;
    double d;
    int o;
    opterr = 0;
    while ((o = getopt_long(argc, argv, "", OPTS, NULL)) != -1) {
        const char *a = optarg;
        switch (o) {
        case OPT_HOST:
            cfg->host = a;
            break;
        case OPT_PORT:
            if (!parse_long(a, 1, 65535, &v))
                return usage_error("--port: not a port number: %s", a);
            cfg->port = (int)v;
            break;
        case OPT_PUB_PORT:
            if (!parse_long(a, 1, 65535, &v))
                return usage_error("--pub-port: not a port number: %s", a);
            cfg->pub_port = (int)v;
            break;
        case OPT_SUB_PORTS: {
            char buf[256];
            snprintf(buf, sizeof(buf), "%s", a);
            cfg->n_sub_ports = 0;
            for (char *sv = NULL, *t = strtok_r(buf, ",", &sv); t; t = strtok_r(NULL, ",", &sv)) {
                if (cfg->n_sub_ports >= 16 || !parse_long(t, 1, 65535, &v))
                    return usage_error("--sub-ports: up to 16 port numbers: %s", a);
                cfg->sub_ports[cfg->n_sub_ports++] = (int)v;
            }
            break;
        }
        case OPT_PATH:
        case OPT_SUB_PATH:
        case OPT_PUB_PATH:
            if (a[0] != '/' || strpbrk(a, " \r\n"))
                return usage_error("a path must start with / and have no spaces: %s", a);
            if (o == OPT_PATH)
                cfg->path = a;
            else if (o == OPT_SUB_PATH)
                cfg->sub_path = a;
            else
                cfg->pub_path = a;
            break;
        case OPT_HEADER:
            if (!strchr(a, ':') || strpbrk(a, "\r\n") || strlen(a) > 9000)
                return usage_error("--header must be 'Name: value' on one line: %s", a);
            cfg->header = a;
            break;
        case OPT_DURATION:
        case OPT_DRAIN:
        case OPT_HOLD:
        case OPT_CTIMEOUT:
            if (!parse_double(a, 0, 1e7, &d))
                return usage_error("not a number of seconds: %s", a);
            if (o == OPT_DURATION)
                cfg->duration = d;
            else if (o == OPT_DRAIN)
                cfg->drain = d;
            else if (o == OPT_HOLD)
                cfg->hold = d;
            else if (d <= 0)
                return usage_error("--connect-timeout must be positive: %s", a);
            else
                cfg->connect_timeout = d;
            break;
        case OPT_JSON:
            cfg->json_only = true;
            break;
        case OPT_SOURCES:
            cfg->source_list = a;
            if (parse_sources(cfg, a) < 0)
                return usage_error("--source-addrs: not a list of IP addresses: %s", a);
            break;
        case OPT_CRATE:
        case OPT_RATE:
            if (!parse_double(a, 0, 1e9, &d))
                return usage_error("not a rate: %s", a);
            if (o == OPT_CRATE)
                cfg->connect_rate = d;
            else
                cfg->rate = d;
            break;
        case OPT_MAXHS:
            if (!parse_long(a, 1, 1000000, &v))
                return usage_error("--max-handshakes: 1 to 1000000: %s", a);
            cfg->max_handshakes = (int)v;
            break;
        case OPT_PROCS:
            if (!parse_long(a, 1, 256, &v))
                return usage_error("--processes: 1 to 256: %s", a);
            cfg->processes = (int)v;
            break;
        case OPT_SUBS:
        case OPT_CONNS:
        case OPT_REQS:
        case OPT_RESPS:
            if (!parse_long(a, 0, 10000000, &v))
                return usage_error("not a connection count: %s", a);
            if (o == OPT_SUBS)
                cfg->subscribers = v;
            else if (o == OPT_CONNS)
                cfg->connections = v;
            else if (o == OPT_REQS)
                cfg->requesters = v;
            else
                cfg->responders = v;
            break;
        case OPT_PUBS:
            if (!parse_long(a, 0, 99999, &v))
                return usage_error("--publishers: 0 to 99999: %s", a);
            cfg->publishers = v;
            break;
        case OPT_SUBF:
            sub_frame = a;
            break;
        case OPT_SUBACK:
            cfg->sub_ack = a;
            break;
        case OPT_PUBF:
            pub_frame = a;
            break;
        case OPT_PUBACK:
            cfg->pub_ack = a;
            break;
        case OPT_INFLIGHT:
            if (!parse_long(a, 1, 1000000, &v))
                return usage_error("--inflight: 1 to 1000000: %s", a);
            cfg->inflight = v;
            break;
        case OPT_COUNT:
            if (!parse_long(a, 0, 1000000000000L, &v))
                return usage_error("--count: not a count: %s", a);
            cfg->count = v;
            break;
        case OPT_PAYLOAD:
            if (!parse_long(a, SB_MARK_LEN, 16 << 20, &v))
                return usage_error("--payload-size: 34 to 16777216: %s", a);
            cfg->payload_size = v;
            break;
        case OPT_CHANNEL:
            if (!*a || strpbrk(a, "\"\\") || strlen(a) > 128)
                return usage_error("--channel: 1-128 bytes without quotes or backslashes: %s", a);
            cfg->channel = a;
            break;
        case OPT_ECHOF:
            cfg->echo_frame = a;
            break;
        case OPT_WAITW:
            cfg->wait_welcome = 1;
            break;
        case OPT_NOWAITW:
            cfg->wait_welcome = 0;
            break;
        case OPT_HOLDSIG:
            cfg->hold_until_signal = true;
            break;
        case OPT_RPCTO:
            if (!parse_long(a, 1, 3600000, &v))
                return usage_error("--rpc-timeout-ms: 1 to 3600000: %s", a);
            cfg->rpc_timeout_ms = v;
            break;
        case OPT_SELFTEST:
            self_test = true;
            break;
        case OPT_TLS:
            cfg->tls = true;
            break;
        case OPT_TLS_CA:
            if (access(a, R_OK) != 0)
                return usage_error("--tls-ca: cannot read %s", a);
            cfg->tls_ca = a;
            break;
        case OPT_TLS_NAME:
            if (!*a || strlen(a) > 253 || strpbrk(a, " \r\n"))
                return usage_error("--tls-name: not a host name: %s", a);
            cfg->tls_name = a;
            break;
        case OPT_TLS_RESUME:
            cfg->tls_resume = true;
            break;
        case OPT_DEFLATE:
            cfg->deflate = true;
            break;
        case OPT_HELP:
            fputs(USAGE, stdout);
            return 0;
        case OPT_VERSION:
            printf("sente-bench %s\n", SB_VERSION);
            return 0;
        case ':':
            return usage_error("option needs a value: %s", argv[optind - 1]);
        default:
            return usage_error("unknown option: %s", argv[optind - 1]);
        }
    }
    if (self_test)
        return sb_selftest() == 0 ? 0 : 1;
    if (optind >= argc)
        return usage_error("%s", "no mode given (fanout, echo, connect or rpc)");
    if (optind + 1 < argc)
        return usage_error("unexpected argument: %s", argv[optind + 1]);
    const char *mode = argv[optind];
    if (strcmp(mode, "fanout") == 0)
        cfg->mode = SB_FANOUT;
    else if (strcmp(mode, "echo") == 0)
        cfg->mode = SB_ECHO;
    else if (strcmp(mode, "connect") == 0)
        cfg->mode = SB_CONNECT;
    else if (strcmp(mode, "rpc") == 0)
        cfg->mode = SB_RPC;
    else
        return usage_error("unknown mode: %s (fanout, echo, connect or rpc)", mode);

    /* Mode defaults. */
    if (!cfg->channel)
        cfg->channel = cfg->mode == SB_RPC ? "bench-rpc" : "bench";
    if (!cfg->path)
        cfg->path = (cfg->mode == SB_ECHO && !cfg->echo_frame) ? "/echo" : "/";
    if (!cfg->sub_path)
        cfg->sub_path = cfg->path;
    if (!cfg->pub_path)
        cfg->pub_path = cfg->path;
    if (cfg->connections < 0)
        cfg->connections = cfg->mode == SB_ECHO ? 10 : 1000;
    if (cfg->inflight < 0)
        cfg->inflight = cfg->mode == SB_FANOUT ? 64 : cfg->mode == SB_RPC ? 8 : 1;
    if (cfg->wait_welcome < 0)
        cfg->wait_welcome = cfg->mode == SB_ECHO && cfg->echo_frame;
    if (!sub_frame)
        sub_frame = owned_sub_frame =
            fmt_alloc("{\"type\":\"subscribe\",\"channel-id\":\"%s\"}", cfg->channel);
    if (!pub_frame)
        pub_frame = owned_pub_frame = fmt_alloc(
            "{\"type\":\"publish\",\"channel-id\":\"%s\",\"data\":\"%%s\"}", cfg->channel);
    /* connect: a subscription per connection only when asked for. */
    cfg->connect_sub = cfg->mode == SB_CONNECT && sub_frame != owned_sub_frame && sub_frame[0];
    cfg->sub_frame = sub_frame;
    cfg->pub_frame = pub_frame;
    if (!cfg->sub_frame || !cfg->pub_frame)
        return usage_error("%s", "out of memory");

    /* Combinations. */
    if (cfg->mode == SB_FANOUT) {
        const char *pct = strstr(cfg->pub_frame, "%s");
        if (!pct || strstr(pct + 2, "%s"))
            return usage_error("--pub-frame needs exactly one %%s (the payload): %s",
                               cfg->pub_frame);
        if (cfg->publishers < 1)
            return usage_error("%s", "fanout needs --publishers >= 1");
        bool by_delivery = !cfg->pub_ack[0] && cfg->rate == 0;
        if (by_delivery && cfg->subscribers < cfg->processes)
            return usage_error("%s", "without --pub-ack, flat-out publishing tracks in-flight "
                                     "messages by delivery: every process needs a subscriber");
        if (cfg->processes > cfg->subscribers + cfg->publishers)
            return usage_error("%s", "--processes exceeds the number of connections");
    }
    if (cfg->mode == SB_ECHO && cfg->echo_frame) {
        const char *pct = strstr(cfg->echo_frame, "%s");
        if (pct && strstr(pct + 2, "%s"))
            return usage_error("--echo-frame may hold one %%s: %s", cfg->echo_frame);
    }
    if ((cfg->mode == SB_ECHO || cfg->mode == SB_CONNECT) && cfg->connections < 1)
        return usage_error("%s", "--connections must be at least 1");
    if (cfg->mode == SB_RPC && (cfg->requesters < 1 || cfg->responders < 1))
        return usage_error("%s", "rpc needs --requesters >= 1 and --responders >= 1");
    if (cfg->mode == SB_RPC && cfg->requesters > 99999)
        return usage_error("%s", "--requesters: at most 99999");
    if (cfg->mode != SB_CONNECT && cfg->duration <= 0 && cfg->count == 0)
        return usage_error("%s", "--duration must be positive");
    return -1;
}

/* The share of n that process i of k gets, and how many come before it. */
static long share(long n, int k, int i)
{
    return n / k + (i < n % k ? 1 : 0);
}

static long share_base(long n, int k, int i)
{
    return (long)i * (n / k) + (i < n % k ? i : n % k);
}

static void slice(const struct sb_config *cfg, int k, int i, struct sb_config *out)
{
    *out = *cfg;
    out->proc_index = i;
    out->my_subscribers = share(cfg->subscribers, k, i);
    out->my_publishers = share(cfg->publishers, k, i);
    out->my_connections = share(cfg->connections, k, i);
    out->my_requesters = share(cfg->requesters, k, i);
    out->my_responders = share(cfg->responders, k, i);
    long senders = 0, mine = 0, before = 0;
    switch (cfg->mode) {
    case SB_FANOUT:
        senders = cfg->publishers;
        mine = out->my_publishers;
        before = share_base(cfg->publishers, k, i);
        break;
    case SB_RPC:
        senders = cfg->requesters;
        mine = out->my_requesters;
        before = share_base(cfg->requesters, k, i);
        break;
    default:
        senders = cfg->connections;
        mine = out->my_connections;
        before = share_base(cfg->connections, k, i);
        break;
    }
    out->pub_base = before;
    out->my_rate = senders > 0 ? cfg->rate * (double)mine / (double)senders : 0;
    out->my_count = 0;
    if (cfg->count > 0 && senders > 0) {
        /* Proportional to this process's senders, rounding so the shares
         * add up to --count exactly. */
        long lo = (long)((double)cfg->count * (double)before / (double)senders);
        long hi = (long)((double)cfg->count * (double)(before + mine) / (double)senders);
        out->my_count = hi - lo > 0 ? hi - lo : -1;
    }
}

static void raise_nofile(long need)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) < 0)
        return;
    rlim_t want = (rlim_t)need + 256;
    if (rl.rlim_max != RLIM_INFINITY && rl.rlim_max < want) {
        /* Root may raise the hard limit too (up to fs.nr_open). */
        struct rlimit up = {want, want};
        if (setrlimit(RLIMIT_NOFILE, &up) == 0)
            return;
    }
    rl.rlim_cur = rl.rlim_max;
    setrlimit(RLIMIT_NOFILE, &rl);
    getrlimit(RLIMIT_NOFILE, &rl);
    if (rl.rlim_cur != RLIM_INFINITY && rl.rlim_cur < want)
        fprintf(stderr,
                "sente-bench: warning: RLIMIT_NOFILE is %llu, %ld connections need more"
                "\n",
                (unsigned long long)rl.rlim_cur, need);
}

static int resolve_one(const struct sb_config *cfg, int portn, struct sb_addr *out)
{
    struct addrinfo hints = {.ai_socktype = SOCK_STREAM}, *ai = NULL;
    char port[16];
    snprintf(port, sizeof(port), "%d", portn);
    int rc = getaddrinfo(cfg->host, port, &hints, &ai);
    if (rc != 0 || !ai) {
        fprintf(stderr, "sente-bench: cannot resolve %s: %s\n", cfg->host, gai_strerror(rc));
        return -1;
    }
    memcpy(&out->sa, ai->ai_addr, ai->ai_addrlen);
    out->len = ai->ai_addrlen;
    freeaddrinfo(ai);
    return 0;
}

static int resolve(struct sb_config *cfg)
{
    if (resolve_one(cfg, cfg->port, &cfg->target) < 0)
        return -1;
    cfg->pub_target = cfg->target;
    if (cfg->pub_port && resolve_one(cfg, cfg->pub_port, &cfg->pub_target) < 0)
        return -1;
    for (int i = 0; i < cfg->n_sub_ports; i++)
        if (resolve_one(cfg, cfg->sub_ports[i], &cfg->sub_targets[i]) < 0)
            return -1;
    return 0;
}

/* ---------------------------------------------------------- processes */

struct child {
    pid_t pid;
    int up, down; /* child -> parent lines, parent -> child lines */
    char *buf;
    size_t len, cap;
    bool eof, got_result;
};

static volatile sig_atomic_t got_signal;

static void on_parent_signal(int sig)
{
    got_signal = 1;
}

static void broadcast(struct child *ch, int k, const char *out)
{
    size_t n = strlen(out);
    if (!n)
        return;
    for (int i = 0; i < k; i++) {
        if (ch[i].eof)
            continue;
        size_t off = 0;
        while (off < n) {
            ssize_t w = write(ch[i].down, out + off, n - off);
            if (w < 0 && errno == EINTR)
                continue;
            if (w <= 0)
                break;
            off += (size_t)w;
        }
    }
}

static int run_child(const struct sb_config *cfg, int i, int down, int up)
{
    struct sb_config mine;
    slice(cfg, cfg->processes, i, &mine);
    signal(SIGINT, SIG_IGN); /* the parent forwards SIGTERM once */
    sb_rand_seed(sb_rand() ^ ((uint64_t)getpid() << 32) ^ sb_now_us());
    static struct sb_result r;
    int rc = sb_run(&mine, down, up, &r);
    char *json = sb_result_raw_json(&r);
    if (json) {
        size_t n = strlen(json);
        (void)!write(up, "RESULT ", 7);
        size_t off = 0;
        while (off < n) {
            ssize_t w = write(up, json + off, n - off);
            if (w < 0 && errno == EINTR)
                continue;
            if (w <= 0)
                break;
            off += (size_t)w;
        }
        (void)!write(up, "\n", 1);
        free(json);
    }
    return rc;
}

static int run_processes(const struct sb_config *cfg, struct sb_result *merged)
{
    int k = cfg->processes;
    struct child *ch = calloc((size_t)k, sizeof(*ch));
    struct sb_agg agg;
    if (!ch || sb_agg_init(&agg, cfg, k) < 0) {
        fprintf(stderr, "sente-bench: out of memory\n");
        return SB_EXIT_SETUP;
    }
    struct sigaction sa = {.sa_handler = on_parent_signal};
    sigemptyset(&sa.sa_mask);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    fflush(NULL);
    int started = 0;
    for (int i = 0; i < k; i++) {
        int up[2], down[2];
        if (pipe2(up, O_CLOEXEC) < 0 || pipe2(down, O_CLOEXEC) < 0) {
            perror("sente-bench: pipe");
            break;
        }
        pid_t pid = fork();
        if (pid < 0) {
            perror("sente-bench: fork");
            close(up[0]);
            close(up[1]);
            close(down[0]);
            close(down[1]);
            break;
        }
        if (pid == 0) {
            for (int j = 0; j < i; j++) {
                close(ch[j].up);
                close(ch[j].down);
            }
            close(up[0]);
            close(down[1]);
            sa.sa_handler = SIG_DFL;
            sigaction(SIGTERM, &sa, NULL);
            _exit(run_child(cfg, i, down[0], up[1]));
        }
        close(up[1]);
        close(down[0]);
        ch[i].pid = pid;
        ch[i].up = up[0];
        ch[i].down = down[1];
        started++;
    }
    char out[512];
    int status_rc = 0;
    /* A child that could not be started counts as gone. */
    for (int i = started; i < k; i++) {
        ch[i].eof = true;
        sb_agg_line(&agg, i, NULL, out, sizeof(out));
        broadcast(ch, k, out);
        status_rc = SB_EXIT_SETUP;
    }
    sb_result_init(merged);
    bool any = false;
    struct pollfd *pf = calloc((size_t)k, sizeof(*pf));
    int *map = calloc((size_t)k, sizeof(int));
    for (;;) {
        if (got_signal) {
            /* Each SIGINT/SIGTERM of ours is one SIGTERM for every child. */
            got_signal = 0;
            for (int i = 0; i < k; i++)
                if (!ch[i].eof)
                    kill(ch[i].pid, SIGTERM);
        }
        int n = 0;
        for (int i = 0; i < k; i++)
            if (!ch[i].eof) {
                pf[n].fd = ch[i].up;
                pf[n].events = POLLIN;
                map[n++] = i;
            }
        if (n == 0)
            break;
        if (poll(pf, (nfds_t)n, -1) < 0) {
            if (errno == EINTR)
                continue;
            break;
        }
        for (int j = 0; j < n; j++) {
            if (!pf[j].revents)
                continue;
            struct child *c = &ch[map[j]];
            if (c->cap - c->len < 65536) {
                size_t cap = c->cap ? c->cap * 2 : 131072;
                char *nb = realloc(c->buf, cap);
                if (!nb)
                    abort();
                c->buf = nb;
                c->cap = cap;
            }
            ssize_t r = read(c->up, c->buf + c->len, c->cap - c->len - 1);
            if (r < 0 && errno == EINTR)
                continue;
            if (r <= 0) {
                c->eof = true;
                close(c->up);
                close(c->down);
                sb_agg_line(&agg, map[j], NULL, out, sizeof(out));
                broadcast(ch, k, out);
                continue;
            }
            c->len += (size_t)r;
            c->buf[c->len] = '\0';
            char *s = c->buf, *nl;
            while ((nl = strchr(s, '\n'))) {
                *nl = '\0';
                if (strncmp(s, "RESULT ", 7) == 0) {
                    struct sb_result r1;
                    if (sb_result_parse_raw(s + 7, &r1) == 0) {
                        sb_result_merge(merged, &r1);
                        any = true;
                        c->got_result = true;
                    }
                } else {
                    sb_agg_line(&agg, map[j], s, out, sizeof(out));
                    broadcast(ch, k, out);
                }
                s = nl + 1;
            }
            c->len = strlen(s);
            memmove(c->buf, s, c->len + 1);
        }
    }
    for (int i = 0; i < started; i++) {
        int st = 0;
        while (waitpid(ch[i].pid, &st, 0) < 0 && errno == EINTR)
            ;
        int rc = WIFEXITED(st) ? WEXITSTATUS(st) : SB_EXIT_SETUP;
        if (!ch[i].got_result) {
            fprintf(stderr, "sente-bench: process %d ended without a result\n", i);
            rc = SB_EXIT_SETUP;
        }
        if (rc > status_rc)
            status_rc = rc;
        free(ch[i].buf);
    }
    if (!any)
        merged->dup_checked = 0;
    free(pf);
    free(map);
    free(ch);
    sb_agg_free(&agg);
    return status_rc;
}

/* ---------------------------------------------------------------- main */

/* A parsed configuration, run: the exit status. */
static int run(struct sb_config *cfg)
{
    signal(SIGPIPE, SIG_IGN);
    if (resolve(cfg) < 0)
        return SB_EXIT_SETUP;
    long total = cfg->mode == SB_FANOUT ? cfg->subscribers + cfg->publishers
                 : cfg->mode == SB_RPC  ? cfg->requesters + cfg->responders
                                        : cfg->connections;
    raise_nofile(total / cfg->processes + 1);

    uint64_t t0 = sb_now_us();
    static struct sb_result res;
    int rc;
    if (cfg->processes == 1) {
        struct sb_config mine;
        slice(cfg, 1, 0, &mine);
        rc = sb_run(&mine, -1, -1, &res);
    } else {
        rc = run_processes(cfg, &res);
        res.wall = (double)(sb_now_us() - t0) / 1e6;
    }
    if (res.setup_failed && rc == 0)
        rc = SB_EXIT_SETUP;
    if (!cfg->json_only)
        sb_result_print_summary(cfg, &res);
    char *json = sb_result_final_json(cfg, &res);
    if (json) {
        printf("%s\n", json);
        free(json);
    }
    fflush(stdout);
    return rc;
}

int main(int argc, char **argv)
{
    uint64_t seed = 0;
    if (getrandom(&seed, sizeof(seed), 0) != sizeof(seed))
        seed = sb_now_us() ^ ((uint64_t)getpid() << 40);
    sb_rand_seed(seed);

    struct sb_config cfg;
    int rc = parse_flags(argc, argv, &cfg);
    if (rc < 0)
        rc = run(&cfg);
    free(owned_sub_frame);
    free(owned_pub_frame);
    free(cfg.sources);
    return rc;
}
