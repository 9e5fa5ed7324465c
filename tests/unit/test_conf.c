/*
 * test_conf.c - flag and environment parsing: defaults, precedence, every
 * value form, and refusals that name the flag.
 */
#include "sl_conf.h"
#include "sl_test.h"

#include <arpa/inet.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

static sl_conf_t conf;
static sl_conf_action_t action;
static char err[512];

static int parse(char **env, int argc, char **argv)
{
    sl_conf_free(&conf);
    err[0] = '\0';
    return sl_conf_parse(&conf, argc, argv, env, &action, err, sizeof(err));
}

#define ARGS(...) (char *[]){"sente-lite", __VA_ARGS__, NULL}
#define NARGS(...) (int)(sizeof((char *[]){"sente-lite", __VA_ARGS__}) / sizeof(char *))

static void test_defaults(void)
{
    char *argv[] = {"sente-lite", NULL};
    SL_CHECK_INT(parse(NULL, 1, argv), SL_OK);
    SL_CHECK_STR(conf.host, "localhost");
    SL_CHECK_INT(conf.port, 3000);
    SL_CHECK(conf.workers >= 1);
    SL_CHECK(conf.workers_auto);
    SL_CHECK_INT(conf.max_connections, 10000);
    SL_CHECK_INT(conf.heartbeat_interval_ms, 30000);
    SL_CHECK_INT(conf.message_timeout_ms, 5000);
    SL_CHECK_INT(conf.max_message_size, 1 << 20);
    SL_CHECK_INT(conf.max_outbound_bytes, 4 << 20);
    SL_CHECK_INT(conf.shm_size, 64LL << 20);
    SL_CHECK_INT(conf.max_channels, 10000);
    SL_CHECK_INT(conf.channel_linger_ms, 30000);
    SL_CHECK_INT(conf.channel_creations_per_minute, 600);
    SL_CHECK_INT(conf.worker_stall_ms, 3000);
    SL_CHECK_INT(conf.worker_stall_kill_ms, 10000);
    SL_CHECK(conf.telemetry);
    SL_CHECK(!conf.echo);
    SL_CHECK(!conf.log_json);
    SL_CHECK_INT(conf.log_level, SL_INFO);
    SL_CHECK_STR(conf.app_name, "sente-lite");
    SL_CHECK_STR(conf.log_file, "");
    SL_CHECK_INT(action, SL_CONF_RUN);
}

static void test_value_forms(void)
{
    SL_CHECK_INT(parse(NULL, NARGS("--port", "8080", "--host=0.0.0.0", "--workers", "3",
                                   "--max-message-size=2K", "--shm-size", "1G", "--echo",
                                   "--no-telemetry", "--log-format", "json", "--log-level=warn"),
                       ARGS("--port", "8080", "--host=0.0.0.0", "--workers", "3",
                            "--max-message-size=2K", "--shm-size", "1G", "--echo",
                            "--no-telemetry", "--log-format", "json", "--log-level=warn")),
                 SL_OK);
    SL_CHECK_INT(conf.port, 8080);
    SL_CHECK_STR(conf.host, "0.0.0.0");
    SL_CHECK_INT(conf.workers, 3);
    SL_CHECK(!conf.workers_auto);
    SL_CHECK_INT(conf.max_message_size, 2048);
    SL_CHECK_INT(conf.shm_size, 1LL << 30);
    SL_CHECK(conf.echo);
    SL_CHECK(!conf.telemetry);
    SL_CHECK(conf.log_json);
    SL_CHECK_INT(conf.log_level, SL_WARN);
}

static void test_origins_repeat(void)
{
    SL_CHECK_INT(parse(NULL, NARGS("--allowed-origin", "http://a", "--allowed-origin=http://b"),
                       ARGS("--allowed-origin", "http://a", "--allowed-origin=http://b")),
                 SL_OK);
    SL_CHECK_INT(conf.norigins, 2);
    SL_CHECK_STR(conf.allowed_origins[0], "http://a");
    SL_CHECK_STR(conf.allowed_origins[1], "http://b");
}

static void test_env_and_precedence(void)
{
    char *env[] = {"PORT=4000", "HOST=127.0.0.2", "TELEMETRY_ENABLED=false", "APP_NAME=myapp",
                   "UNRELATED=1", NULL};
    char *argv[] = {"sente-lite", NULL};
    SL_CHECK_INT(parse(env, 1, argv), SL_OK);
    SL_CHECK_INT(conf.port, 4000);
    SL_CHECK_STR(conf.host, "127.0.0.2");
    SL_CHECK(!conf.telemetry);
    SL_CHECK_STR(conf.app_name, "myapp");
    /* Flags win over the environment. */
    SL_CHECK_INT(parse(env, NARGS("--port", "5000", "--telemetry"),
                       ARGS("--port", "5000", "--telemetry")),
                 SL_OK);
    SL_CHECK_INT(conf.port, 5000);
    SL_CHECK(conf.telemetry);
}

static void expect_refused(int argc, char **argv, const char *named)
{
    SL_CHECK_INT(parse(NULL, argc, argv), SL_ERROR);
    if (strstr(err, named) == NULL) {
        fprintf(stderr, "  error '%s' does not name '%s'\n", err, named);
        sl_test_cur_failed = 1;
    }
}

static void test_refusals(void)
{
    expect_refused(NARGS("--port", "0"), ARGS("--port", "0"), "--port");
    expect_refused(NARGS("--port", "65536"), ARGS("--port", "65536"), "--port");
    expect_refused(NARGS("--port", "abc"), ARGS("--port", "abc"), "--port");
    expect_refused(NARGS("--port", "-1"), ARGS("--port", "-1"), "--port");
    expect_refused(NARGS("--port"), ARGS("--port"), "--port");
    expect_refused(NARGS("--workers", "0"), ARGS("--workers", "0"), "--workers");
    expect_refused(NARGS("--workers", "65"), ARGS("--workers", "65"), "--workers");
    expect_refused(NARGS("--log-level", "loud"), ARGS("--log-level", "loud"), "--log-level");
    expect_refused(NARGS("--log-format", "xml"), ARGS("--log-format", "xml"), "--log-format");
    expect_refused(NARGS("--shm-size", "12Q"), ARGS("--shm-size", "12Q"), "--shm-size");
    expect_refused(NARGS("--shm-size", "1"), ARGS("--shm-size", "1"), "--shm-size");
    expect_refused(NARGS("--max-message-size", "99999999999G"),
                   ARGS("--max-message-size", "99999999999G"), "--max-message-size");
    expect_refused(NARGS("--app-name", "a b"), ARGS("--app-name", "a b"), "--app-name");
    expect_refused(NARGS("--bogus"), ARGS("--bogus"), "--bogus");
    expect_refused(NARGS("--echo=yes"), ARGS("--echo=yes"), "--echo");
    expect_refused(NARGS("stray"), ARGS("stray"), "stray");
    char *env[] = {"PORT=abc", NULL};
    char *argv[] = {"sente-lite", NULL};
    SL_CHECK_INT(parse(env, 1, argv), SL_ERROR);
    SL_CHECK(strstr(err, "PORT") != NULL);
    char *env2[] = {"TELEMETRY_ENABLED=maybe", NULL};
    SL_CHECK_INT(parse(env2, 1, argv), SL_ERROR);
    SL_CHECK(strstr(err, "TELEMETRY_ENABLED") != NULL);
}

static void test_channel_flags(void)
{
    SL_CHECK_INT(parse(NULL, NARGS("--channel", "chat:max-subscribers=5,message-retention=10",
                                   "--channel", "room:1", "--channel=plain",
                                   "--max-subscribers", "50", "--no-auto-create"),
                       ARGS("--channel", "chat:max-subscribers=5,message-retention=10",
                            "--channel", "room:1", "--channel=plain", "--max-subscribers", "50",
                            "--no-auto-create")),
                 SL_OK);
    SL_CHECK_INT(conf.nchannels, 3);
    SL_CHECK_STR(conf.channels[0].name, "chat");
    SL_CHECK_INT(conf.channels[0].max_subscribers, 5);
    SL_CHECK_INT(conf.channels[0].message_retention, 10);
    SL_CHECK_INT(conf.channels[0].rpc_timeout_ms, 30000); /* the default */
    SL_CHECK_STR(conf.channels[1].name, "room:1");       /* ':' without settings */
    SL_CHECK_INT(conf.channels[1].max_subscribers, 50);  /* a later default applies */
    SL_CHECK_STR(conf.channels[2].name, "plain");
    SL_CHECK(!conf.auto_create);
    expect_refused(NARGS("--channel", "x:bogus=1"), ARGS("--channel", "x:bogus=1"), "--channel");
    expect_refused(NARGS("--channel", "x:max-subscribers=0"), ARGS("--channel", "x:max-subscribers=0"),
                   "--channel");
    expect_refused(NARGS("--channel", ""), ARGS("--channel", ""), "--channel");
    expect_refused(NARGS("--max-subscriptions-per-connection", "0"),
                   ARGS("--max-subscriptions-per-connection", "0"),
                   "--max-subscriptions-per-connection");
    char *env[] = {"AUTO_CREATE_CHANNELS=false", "MAX_SUBSCRIBERS=9", "MESSAGE_RETENTION=4", NULL};
    char *argv[] = {"sente-lite", NULL};
    SL_CHECK_INT(parse(env, 1, argv), SL_OK);
    SL_CHECK(!conf.auto_create);
    SL_CHECK_INT(conf.max_subscribers, 9);
    SL_CHECK_INT(conf.message_retention, 4);
}

static void test_stall_bounds(void)
{
    SL_CHECK_INT(parse(NULL, NARGS("--worker-stall-ms", "500", "--worker-stall-kill-ms", "2000"),
                       ARGS("--worker-stall-ms", "500", "--worker-stall-kill-ms", "2000")),
                 SL_OK);
    SL_CHECK_INT(conf.worker_stall_kill_ms, 2000);
    /* The kill bound must come after the stall bound. */
    SL_CHECK_INT(parse(NULL, NARGS("--worker-stall-ms", "5000", "--worker-stall-kill-ms", "4000"),
                       ARGS("--worker-stall-ms", "5000", "--worker-stall-kill-ms", "4000")),
                 SL_ERROR);
    SL_CHECK(strstr(err, "--worker-stall-kill-ms") != NULL);
    SL_CHECK_INT(parse(NULL, NARGS("--max-channels", "0"), ARGS("--max-channels", "0")), SL_ERROR);
}

/* Issue 13 (fuzzing): a spec of any length is read whole (it was cut at
 * 511 bytes: max-subscribers=20 became 2), and a trailing ':' gives any
 * name as it is, also one with ':' and '='. */
static void test_channel_spec_edges(void)
{
    static char spec[700];
    size_t n = (size_t)snprintf(spec, sizeof(spec), "long:");
    while (n < 500)
        n += (size_t)snprintf(spec + n, sizeof(spec) - n, "rpc-timeout-ms=5,");
    snprintf(spec + n, sizeof(spec) - n, "max-subscribers=20");
    SL_CHECK(strlen(spec) > 511);
    SL_CHECK_INT(parse(NULL, NARGS("--channel", spec), ARGS("--channel", spec)), SL_OK);
    SL_CHECK_INT(conf.channels[0].max_subscribers, 20);
    SL_CHECK_INT(conf.channels[0].rpc_timeout_ms, 5);
    SL_CHECK_INT(parse(NULL, NARGS("--channel", "a:b=c:", "--channel", "x:"),
                       ARGS("--channel", "a:b=c:", "--channel", "x:")),
                 SL_OK);
    SL_CHECK_STR(conf.channels[0].name, "a:b=c");
    SL_CHECK_STR(conf.channels[1].name, "x");
    expect_refused(NARGS("--channel", "a:b=c"), ARGS("--channel", "a:b=c"), "trailing ':'");
    /* String options are shown in /stats (JSON): UTF-8 only. */
    expect_refused(NARGS("--host", "h\xff"), ARGS("--host", "h\xff"), "--host");
    /* The new bounds. */
    SL_CHECK_INT(parse(NULL, NARGS("--max-http-connections", "7", "--keepalive-timeout-ms", "250",
                                   "--max-control-rate", "9", "--max-outbound-total", "2G"),
                       ARGS("--max-http-connections", "7", "--keepalive-timeout-ms", "250",
                            "--max-control-rate", "9", "--max-outbound-total", "2G")),
                 SL_OK);
    SL_CHECK_INT(conf.max_http_connections, 7);
    SL_CHECK_INT(conf.keepalive_timeout_ms, 250);
    SL_CHECK_INT(conf.max_control_rate, 9);
    SL_CHECK_INT(conf.max_outbound_total, 2LL << 30);
}

static void test_help_version(void)
{
    SL_CHECK_INT(parse(NULL, NARGS("--help"), ARGS("--help")), SL_OK);
    SL_CHECK_INT(action, SL_CONF_HELP);
    SL_CHECK_INT(parse(NULL, NARGS("--version"), ARGS("--version")), SL_OK);
    SL_CHECK_INT(action, SL_CONF_VERSION);
}

static void test_json(void)
{
    SL_CHECK_INT(parse(NULL, NARGS("--port", "8081"), ARGS("--port", "8081")), SL_OK);
    json_t *j = sl_conf_to_json(&conf);
    SL_CHECK_INT(json_integer_value(json_object_get(j, "port")), 8081);
    SL_CHECK_STR(json_string_value(json_object_get(j, "host")), "localhost");
    SL_CHECK_STR(json_string_value(json_object_get(j, "log-level")), "info");
    SL_CHECK(json_is_true(json_object_get(j, "telemetry")));
    SL_CHECK(json_object_get(j, "help") == NULL);
    json_decref(j);
}

static void test_usable_cpus(void)
{
    int n = sl_conf_usable_cpus();
    SL_CHECK(n >= 1 && n <= 4096);
}

static void put_file(const char *path, const char *text)
{
    FILE *f = fopen(path, "w");
    SL_CHECK(f != NULL);
    if (f) {
        fputs(text, f);
        fclose(f);
    }
}

/* A fake /proc/self/cgroup and cgroup trees: the quota of our own cgroup
 * (systemd's CPUQuota=) counts, so does an ancestor's, the tightest wins;
 * cgroup v1 reads cpu.cfs_quota_us / cpu.cfs_period_us. */
static void test_cgroup_quota(void)
{
    char dir[] = "/tmp/sl-cgroup-XXXXXX";
    SL_CHECK(mkdtemp(dir) != NULL);
    char p[512], proc[512];
    snprintf(proc, sizeof(proc), "%s/proc-cgroup", dir);

    /* v2: /system.slice/sente-lite.service with CPUQuota=150% -> 2 CPUs. */
    put_file(proc, "0::/system.slice/sente-lite.service\n");
    snprintf(p, sizeof(p), "mkdir -p %s/v2/system.slice/sente-lite.service", dir);
    SL_CHECK(system(p) == 0);
    snprintf(p, sizeof(p), "%s/v2/system.slice/sente-lite.service/cpu.max", dir);
    put_file(p, "150000 100000\n");
    snprintf(p, sizeof(p), "%s/v2/system.slice/cpu.max", dir);
    put_file(p, "max 100000\n");
    char root[512];
    snprintf(root, sizeof(root), "%s/v2", dir);
    SL_CHECK_INT(sl_conf_cgroup_cpus(proc, root), 2);
    /* An ancestor tighter than the service: 1 CPU. */
    put_file(p, "50000 100000\n");
    SL_CHECK_INT(sl_conf_cgroup_cpus(proc, root), 1);
    /* No quota anywhere: 0. */
    put_file(p, "max 100000\n");
    snprintf(p, sizeof(p), "%s/v2/system.slice/sente-lite.service/cpu.max", dir);
    put_file(p, "max 100000\n");
    SL_CHECK_INT(sl_conf_cgroup_cpus(proc, root), 0);

    /* v1: the cpu controller's line names the path. */
    put_file(proc, "12:memory:/x\n4:cpu,cpuacct:/system.slice/svc\n0::/\n");
    snprintf(p, sizeof(p), "mkdir -p %s/v1/cpu,cpuacct/system.slice/svc", dir);
    SL_CHECK(system(p) == 0);
    snprintf(p, sizeof(p), "%s/v1/cpu,cpuacct/system.slice/svc/cpu.cfs_quota_us", dir);
    put_file(p, "300000\n");
    snprintf(p, sizeof(p), "%s/v1/cpu,cpuacct/system.slice/svc/cpu.cfs_period_us", dir);
    put_file(p, "100000\n");
    snprintf(root, sizeof(root), "%s/v1", dir);
    SL_CHECK_INT(sl_conf_cgroup_cpus(proc, root), 3);
    snprintf(p, sizeof(p), "%s/v1/cpu,cpuacct/system.slice/svc/cpu.cfs_quota_us", dir);
    put_file(p, "-1\n");
    SL_CHECK_INT(sl_conf_cgroup_cpus(proc, root), 0);
    SL_CHECK_INT(sl_conf_cgroup_cpus("/nonexistent/cgroup", root), 0);
    snprintf(p, sizeof(p), "rm -rf %s", dir);
    SL_CHECK(system(p) == 0);
}

/* --config, SENTE_* names and the precedence file < env < flags. */
static void test_config_file(void)
{
    char path[] = "/tmp/sl-conf-XXXXXX";
    int fd = mkstemp(path);
    SL_CHECK(fd >= 0);
    const char *text = "# comment\nport = 4001\nmax-subscribers = 5\n"
                       "channel = a:message-retention=3\nchannel = b\necho = true\n";
    SL_CHECK(write(fd, text, strlen(text)) == (ssize_t)strlen(text));
    close(fd);
    char *env[] = {"SENTE_MAX_SUBSCRIBERS=6", "PORT=4002", NULL};
    SL_CHECK_INT(parse(env, NARGS("-c", path), ARGS("-c", path)), SL_OK);
    SL_CHECK_INT(conf.port, 4002);             /* env alias beats the file */
    SL_CHECK_INT(conf.max_subscribers, 6);     /* env beats the file */
    SL_CHECK_INT(conf.nchannels, 2);
    SL_CHECK_STR(conf.channels[1].name, "b");
    SL_CHECK_INT(conf.channels[1].max_subscribers, 6); /* the resolved default */
    SL_CHECK(conf.echo);
    SL_CHECK_STR(conf.config_file, path);
    SL_CHECK_INT(parse(env, NARGS("-c", path, "--port", "4003", "-t"),
                       ARGS("-c", path, "--port", "4003", "-t")), SL_OK);
    SL_CHECK_INT(conf.port, 4003);
    SL_CHECK_INT(action, SL_CONF_CHECK);
    char name[64];
    sl_conf_env_name("max-subscriptions-per-connection", name, sizeof(name));
    SL_CHECK_STR(name, "SENTE_MAX_SUBSCRIPTIONS_PER_CONNECTION");
    unlink(path);
}

static void test_cidr(void)
{
    sl_cidr_t r;
    uint8_t a[16];
    SL_CHECK_INT(sl_cidr_parse("10.0.0.0/8", &r), SL_OK);
    inet_pton(AF_INET, "10.200.1.2", a);
    SL_CHECK(sl_cidr_match(&r, AF_INET, a));
    inet_pton(AF_INET, "11.0.0.1", a);
    SL_CHECK(!sl_cidr_match(&r, AF_INET, a));
    inet_pton(AF_INET6, "::ffff:10.1.1.1", a);
    SL_CHECK(sl_cidr_match(&r, AF_INET6, a));
    SL_CHECK_INT(sl_cidr_parse("192.168.1.0/23", &r), SL_OK);
    inet_pton(AF_INET, "192.168.0.255", a);
    SL_CHECK(sl_cidr_match(&r, AF_INET, a));
    inet_pton(AF_INET, "192.168.2.0", a);
    SL_CHECK(!sl_cidr_match(&r, AF_INET, a));
    SL_CHECK_INT(sl_cidr_parse("::1", &r), SL_OK);
    SL_CHECK_INT(r.prefix, 128);
    SL_CHECK_INT(sl_cidr_parse("10.0.0.0/33", &r), SL_ERROR);
    SL_CHECK_INT(sl_cidr_parse("nonsense", &r), SL_ERROR);
}

int main(void)
{
    SL_TEST_RUN(test_defaults);
    SL_TEST_RUN(test_value_forms);
    SL_TEST_RUN(test_origins_repeat);
    SL_TEST_RUN(test_env_and_precedence);
    SL_TEST_RUN(test_refusals);
    SL_TEST_RUN(test_channel_flags);
    SL_TEST_RUN(test_stall_bounds);
    SL_TEST_RUN(test_channel_spec_edges);
    SL_TEST_RUN(test_help_version);
    SL_TEST_RUN(test_json);
    SL_TEST_RUN(test_usable_cpus);
    SL_TEST_RUN(test_cgroup_quota);
    SL_TEST_RUN(test_config_file);
    SL_TEST_RUN(test_cidr);
    sl_conf_free(&conf);
    return sl_test_summary();
}
