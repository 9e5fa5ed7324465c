/*
 * test_tel.c - telemetry: records through a real pipe, both line formats,
 * escaping, truncation, level filtering, drops on a full pipe, records from
 * two processes, the logger process end to end, and the cost of emitting
 * (printed, not asserted).
 */
#include "sl_shm.h"
#include "sl_tel.h"
#include "sl_test.h"

#include <fcntl.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static const sl_logger_opts_t TEXT = {.app_name = "sente-lite", .json = false};
static const sl_logger_opts_t JSON = {.app_name = "myapp", .json = true};

/* Read one batch from the pipe and format its first record. */
static int read_records(int fd, uint8_t *buf, size_t cap)
{
    ssize_t n = read(fd, buf, cap);
    return (int)n;
}

static const char *after_timestamp(const char *line)
{
    /* "2025-10-25T02:28:32.348Z " is 25 characters. */
    return strlen(line) > 25 ? line + 25 : "";
}

static bool timestamp_shape(const char *l)
{
    return strlen(l) > 24 && l[4] == '-' && l[7] == '-' && l[10] == 'T' && l[13] == ':' &&
           l[16] == ':' && l[19] == '.' && l[23] == 'Z';
}

/* Every value of the enums that several issues append to has its own,
 * distinct name (a name table out of step with its enum would leave a
 * NULL or shift every later name). */
static void check_names(const char *(*name)(int), int count, const char *what)
{
    for (int i = 0; i < count; i++) {
        const char *n = name(i);
        if (n == NULL || n[0] == '\0' || strcmp(n, "unknown") == 0) {
            fprintf(stderr, "  %s %d has no name\n", what, i);
            SL_CHECK(false);
            continue;
        }
        for (int j = 0; j < i; j++)
            if (strcmp(n, name(j)) == 0) {
                fprintf(stderr, "  %s %d and %d are both '%s'\n", what, j, i, n);
                SL_CHECK(false);
            }
    }
    SL_CHECK(strcmp(name(count), "unknown") == 0);
}

static const char *ev_name(int i) { return sl_tel_event_name((sl_event_t)i); }
static const char *err_name(int i) { return sl_err_name((sl_err_t)i); }
static const char *hs_name(int i) { return sl_hs_fail_name((sl_hs_fail_t)i); }

static void test_name_tables(void)
{
    check_names(ev_name, SL_EV__COUNT, "telemetry event");
    check_names(err_name, SL_ERR__COUNT, "error reason");
    check_names(hs_name, SL_HS__COUNT, "handshake failure");
    /* Spot checks at the ends, where two issues appended. */
    SL_CHECK(strcmp(sl_tel_event_name(SL_EV_WORKER_STALLED), "worker-stalled") == 0);
    SL_CHECK(strcmp(sl_tel_event_name(SL_EV_OPEN_ACCESS), "open-access") == 0);
    SL_CHECK(strcmp(sl_err_name(SL_ERR_ACCESS_LOG), "access-log-failed") == 0);
    SL_CHECK(strcmp(sl_err_name(SL_ERR_MAX_CONNECTIONS_PER_USER), "max-connections-per-user") == 0);
    SL_CHECK(strcmp(sl_hs_fail_name(SL_HS_UNAUTHORIZED), "unauthorized") == 0);
}

static void test_text_and_json_lines(void)
{
    int p[2];
    SL_CHECK_INT(pipe(p), 0);
    sl_worker_stats_t st = {0};
    sl_tel_init(p[1], 3, &st, true, SL_INFO);
    SL_TEL(SL_EV_CONNECTION_ADDED, SL_INFO, SL_TF_S("conn-id", "conn-1-2"),
           SL_TF_I("total-connections", 1), SL_TF_B("ok", true), SL_TF_NUL("nothing"));
    sl_tel_flush();
    SL_CHECK_INT(st.tel_emitted, 1);
    uint8_t buf[4096];
    int n = read_records(p[0], buf, sizeof(buf));
    SL_CHECK(n > 16);
    char line[2048];
    int l = sl_tel_format(buf, (size_t)n, &TEXT, line, sizeof(line));
    SL_CHECK(l > 0);
    line[l > 0 ? l : 0] = '\0';
    SL_CHECK(timestamp_shape(line));
    SL_CHECK_STR(after_timestamp(line),
                 "INFO [sente-lite.server/connection-added] {\"conn-id\":\"conn-1-2\","
                 "\"total-connections\":1,\"ok\":true,\"nothing\":null,\"source\":\"worker-3\"}\n");
    l = sl_tel_format(buf, (size_t)n, &JSON, line, sizeof(line));
    SL_CHECK(l > 0);
    line[l > 0 ? l : 0] = '\0';
    SL_CHECK(strncmp(line, "{\"timestamp\":\"", 14) == 0);
    SL_CHECK(strstr(line, "\",\"level\":\"info\",\"event\":\"connection-added\",\"ns\":\"myapp.server\","
                          "\"app\":\"myapp\",\"data\":{\"conn-id\":\"conn-1-2\",") != NULL);
    SL_CHECK(line[l - 1] == '\n' && line[l - 2] == '}');
    close(p[0]);
    close(p[1]);
}

static void test_escaping(void)
{
    int p[2];
    SL_CHECK_INT(pipe(p), 0);
    sl_worker_stats_t st = {0};
    sl_tel_init(p[1], -1, &st, true, SL_TRACE);
    const char bad[] = "q\"b\\n\n\x01\xff\xc3\xa9";
    SL_TEL(SL_EV_WEBSOCKET_ERROR, SL_WARN, SL_TF_SN("reason", bad, sizeof(bad) - 1));
    sl_tel_flush();
    uint8_t buf[4096];
    int n = read_records(p[0], buf, sizeof(buf));
    char line[2048];
    int l = sl_tel_format(buf, (size_t)n, &TEXT, line, sizeof(line));
    SL_CHECK(l > 0);
    line[l > 0 ? l : 0] = '\0';
    SL_CHECK_STR(after_timestamp(line),
                 "WARN [sente-lite.server/websocket-error] "
                 "{\"reason\":\"q\\\"b\\\\n\\u000a\\u0001\\ufffd\xc3\xa9\",\"source\":\"master\"}\n");
    close(p[0]);
    close(p[1]);
}

static void test_truncation(void)
{
    int p[2];
    SL_CHECK_INT(pipe(p), 0);
    sl_worker_stats_t st = {0};
    sl_tel_init(p[1], 0, &st, true, SL_INFO);
    char *big = malloc(10000);
    memset(big, 'z', 10000);
    SL_TEL(SL_EV_HTTP_REQUEST, SL_INFO, SL_TF_SN("path", big, 10000), SL_TF_I("after", 5));
    sl_tel_flush();
    uint8_t buf[4096];
    int n = read_records(p[0], buf, sizeof(buf));
    SL_CHECK(n > 0 && n <= 1024);
    char line[4096];
    int l = sl_tel_format(buf, (size_t)n, &TEXT, line, sizeof(line));
    SL_CHECK(l > 0); /* still a well-formed record */
    free(big);
    close(p[0]);
    close(p[1]);
}

static void test_levels_and_disabled(void)
{
    int p[2];
    SL_CHECK_INT(pipe(p), 0);
    fcntl(p[0], F_SETFL, O_NONBLOCK);
    sl_worker_stats_t st = {0};
    sl_tel_init(p[1], 0, &st, true, SL_WARN);
    SL_CHECK(!sl_tel_on(SL_INFO));
    SL_CHECK(sl_tel_on(SL_WARN));
    SL_CHECK(sl_tel_on(SL_ERROR_LEVEL));
    SL_TEL(SL_EV_HTTP_REQUEST, SL_INFO, SL_TF_I("x", 1));
    sl_tel_flush();
    SL_CHECK_INT(st.tel_emitted, 0);
    sl_tel_init(p[1], 0, &st, false, SL_TRACE);
    SL_CHECK(!sl_tel_on(SL_ERROR_LEVEL));
    SL_TEL(SL_EV_HTTP_REQUEST, SL_ERROR_LEVEL, SL_TF_I("x", 1));
    sl_tel_flush();
    uint8_t buf[64];
    SL_CHECK_INT(read(p[0], buf, sizeof(buf)), -1); /* nothing was written */
    SL_CHECK_INT(st.tel_emitted, 0);
    close(p[0]);
    close(p[1]);

    sl_level_t lv;
    SL_CHECK_INT(sl_level_parse("DEBUG", &lv), SL_OK);
    SL_CHECK_INT(lv, SL_DEBUG);
    SL_CHECK_INT(sl_level_parse("loud", &lv), SL_ERROR);
    SL_CHECK_STR(sl_tel_event_name(SL_EV_WORKER_STARTED), "worker-started");
    SL_CHECK_STR(sl_tel_event_name(SL_EV_SERVER_STARTING), "server-starting");
}

static void test_full_pipe_drops_and_counts(void)
{
    int p[2];
    SL_CHECK_INT(pipe(p), 0);
    fcntl(p[1], F_SETPIPE_SZ, 32768);
    sl_worker_stats_t st = {0};
    sl_tel_init(p[1], 0, &st, true, SL_INFO);
    /* Nobody reads: the pipe fills, and records that find the batch full
     * of unwritten bytes are dropped, counted. */
    for (int i = 0; i < 2000; i++) {
        SL_TEL(SL_EV_HTTP_REQUEST, SL_INFO, SL_TF_S("path", "/stats"), SL_TF_I("i", i));
        if (i % 50 == 49)
            sl_tel_flush();
    }
    sl_tel_flush();
    SL_CHECK(st.tel_dropped > 0);
    SL_CHECK(st.tel_emitted + st.tel_dropped < 2000); /* the rest waits in the batch */
    /* The logger catches up: what waited is delivered, whole records only. */
    fcntl(p[0], F_SETFL, O_NONBLOCK);
    static uint8_t buf[1 << 20];
    size_t n = 0;
    for (int k = 0; k < 1000; k++) {
        ssize_t r = read(p[0], buf + n, sizeof(buf) - n);
        if (r > 0)
            n += (size_t)r;
        sl_tel_flush();
        if (r <= 0 && st.tel_emitted + st.tel_dropped == 2000)
            break;
    }
    SL_CHECK_INT(st.tel_emitted + st.tel_dropped, 2000);
    size_t pos = 0, recs = 0;
    while (pos + 2 <= n) {
        uint16_t len;
        memcpy(&len, buf + pos, 2);
        char line[1024];
        SL_CHECK(pos + len <= n && sl_tel_format(buf + pos, len, &TEXT, line, sizeof(line)) > 0);
        pos += len;
        recs++;
    }
    SL_CHECK_INT(pos, n);
    SL_CHECK_INT(recs, st.tel_emitted);
    close(p[0]);
    close(p[1]);
}

/* A write the full pipe takes only partly is continued by the next flush:
 * the reader sees a stream of whole records with none lost or torn, the
 * counts are exact (emitted = records read, emitted + dropped = emitted
 * calls), and nothing is waited for. */
static void test_partial_writes_continue(void)
{
    int p[2];
    SL_CHECK_INT(pipe(p), 0);
    fcntl(p[1], F_SETPIPE_SZ, 4096); /* one page: almost every batch is partial */
    fcntl(p[0], F_SETFL, O_NONBLOCK);
    sl_worker_stats_t st = {0};
    sl_tel_init(p[1], 1, &st, true, SL_INFO);
    static uint8_t stream[1 << 22];
    size_t have = 0;
    char pad[700];
    memset(pad, 'x', sizeof(pad));
    unsigned seed = 7;
    const int total = 20000;
    for (int i = 0; i < total; i++) {
        seed = seed * 1103515245u + 12345u;
        size_t plen = (seed >> 16) % sizeof(pad);
        SL_TEL(SL_EV_HTTP_REQUEST, SL_INFO, SL_TF_SN("pad", pad, plen), SL_TF_I("i", i));
        if (i % 7 == 6)
            sl_tel_flush();
        if (i % 13 == 12) { /* the logger reads now and then, in odd sizes */
            ssize_t r = read(p[0], stream + have, SL_MIN(sizeof(stream) - have, (size_t)(1500 + i % 977)));
            if (r > 0)
                have += (size_t)r;
        }
    }
    for (int k = 0; k < 10000; k++) { /* drain to the end */
        sl_tel_flush();
        ssize_t r = read(p[0], stream + have, sizeof(stream) - have);
        if (r > 0)
            have += (size_t)r;
        else if (st.tel_emitted + st.tel_dropped == (uint64_t)total)
            break;
    }
    size_t pos = 0, recs = 0;
    int64_t last_i = -1;
    bool ordered = true;
    while (pos + 2 <= have) {
        uint16_t len;
        memcpy(&len, stream + pos, 2);
        if (len < 16 || pos + len > have)
            break;
        char line[2048];
        if (sl_tel_format(stream + pos, len, &JSON, line, sizeof(line)) <= 0)
            break;
        /* "i" is the last field: its 8 bytes end the record. */
        int64_t iv;
        memcpy(&iv, stream + pos + len - 8, 8);
        ordered = ordered && iv > last_i;
        last_i = iv;
        pos += len;
        recs++;
    }
    SL_CHECK_INT(pos, have);
    SL_CHECK(ordered);
    SL_CHECK(st.tel_dropped > 0);
    SL_CHECK_INT(recs, st.tel_emitted);
    SL_CHECK_INT(st.tel_emitted + st.tel_dropped, total);
    close(p[0]);
    close(p[1]);
}

/* The logger process end to end: two emitting processes, each with its
 * own pipe as in the server, batches far above PIPE_BUF; every line
 * arrives intact in the log file. */
static void test_logger_two_writers(void)
{
    char path[] = "/tmp/sl-tel-test-XXXXXX";
    int tmp = mkstemp(path);
    SL_CHECK(tmp >= 0);
    close(tmp);
    int p[2], q[2];
    SL_CHECK_INT(pipe(p), 0);
    SL_CHECK_INT(pipe(q), 0);
    /* As the master does: pipes large enough that this burst fits even if
     * the logger is slow to be scheduled, so nothing is dropped. */
    fcntl(p[1], F_SETPIPE_SZ, 1 << 20);
    fcntl(q[1], F_SETPIPE_SZ, 1 << 20);
    pid_t logger = fork();
    if (logger == 0) {
        close(p[1]);
        close(q[1]);
        sl_logger_opts_t o = {.log_file = path, .app_name = "sente-lite", .json = false,
                              .min_level = SL_TRACE};
        int fds[2] = {p[0], q[0]};
        _exit(sl_logger_main(fds, 2, &o));
    }
    close(p[0]);
    close(q[0]);
    pid_t child = fork();
    if (child == 0) {
        close(p[1]);
        sl_worker_stats_t st = {0};
        sl_tel_init(q[1], 1, &st, true, SL_TRACE);
        for (int i = 0; i < 1000; i++) {
            SL_TEL(SL_EV_MESSAGE_SENT, SL_DEBUG, SL_TF_S("conn-id", "conn-child"), SL_TF_I("i", i));
            if (i % 370 == 0)
                sl_tel_flush();
        }
        sl_tel_flush();
        _exit(st.tel_emitted == 1000 ? 0 : 1);
    }
    close(q[1]);
    sl_worker_stats_t st = {0};
    sl_tel_init(p[1], 0, &st, true, SL_TRACE);
    for (int i = 0; i < 1000; i++) {
        SL_TEL(SL_EV_MESSAGE_SENT, SL_DEBUG, SL_TF_S("conn-id", "conn-parent"), SL_TF_I("i", i));
        if (i % 410 == 0)
            sl_tel_flush();
    }
    sl_tel_flush();
    int status;
    waitpid(child, &status, 0);
    SL_CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    SL_CHECK_INT(st.tel_emitted, 1000);
    close(p[1]); /* last writers gone: the logger drains and exits */
    waitpid(logger, &status, 0);
    SL_CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);

    FILE *f = fopen(path, "r");
    SL_CHECK(f != NULL);
    char line[1024];
    int parent = 0, childn = 0, bad = 0;
    while (f && fgets(line, sizeof(line), f)) {
        if (!timestamp_shape(line) || strstr(line, "[sente-lite.server/message-sent] {") == NULL)
            bad++;
        else if (strstr(line, "conn-parent") && strstr(line, "\"source\":\"worker-0\"}"))
            parent++;
        else if (strstr(line, "conn-child") && strstr(line, "\"source\":\"worker-1\"}"))
            childn++;
        else
            bad++;
    }
    if (f)
        fclose(f);
    SL_CHECK_INT(parent, 1000);
    SL_CHECK_INT(childn, 1000);
    SL_CHECK_INT(bad, 0);
    unlink(path);
}

int main(void)
{
    signal(SIGPIPE, SIG_IGN);
    SL_TEST_RUN(test_name_tables);
    SL_TEST_RUN(test_text_and_json_lines);
    SL_TEST_RUN(test_escaping);
    SL_TEST_RUN(test_truncation);
    SL_TEST_RUN(test_levels_and_disabled);
    SL_TEST_RUN(test_full_pipe_drops_and_counts);
    SL_TEST_RUN(test_partial_writes_continue);
    SL_TEST_RUN(test_logger_two_writers);
    return sl_test_summary();
}
