/*
 * accesslog.c - the access log and the peer address of a request (see
 * sl_accesslog.h).  Single-threaded per worker: the state of the request being
 * answered and the turn's batch are plain statics.
 */
#include "sl_accesslog.h"
#include "sl_conf.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define SL_ACCESS_BATCH (64 * 1024)
#define SL_ACCESS_LINE 2048

static struct {
    int fd; /* -1: not open yet */
    int64_t checked_ms; /* last rotation check */
    bool recheck;       /* SIGHUP: check at the next write, not within a second */
    char batch[SL_ACCESS_BATCH];
    size_t used;
    /* the request being answered */
    bool active;
    int status;
    uint64_t bytes;
    int64_t start_us;
    char peer[SL_PEER_MAX];
    char line[1024]; /* request line: METHOD target HTTP/1.x */
    char agent[256];
} A = {.fd = -1};

/* Bytes of the socket's peer as (family, raw address); false if unknown. */
static bool socket_peer(int fd, int *family, uint8_t addr[16])
{
    struct sockaddr_storage ss;
    socklen_t len = sizeof(ss);
    if (getpeername(fd, (struct sockaddr *)&ss, &len) != 0)
        return false;
    if (ss.ss_family == AF_INET) {
        memcpy(addr, &((struct sockaddr_in *)&ss)->sin_addr, 4);
        *family = AF_INET;
        return true;
    }
    if (ss.ss_family == AF_INET6) {
        const uint8_t *a = (const uint8_t *)&((struct sockaddr_in6 *)&ss)->sin6_addr;
        static const uint8_t mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
        if (memcmp(a, mapped, 12) == 0) { /* an IPv4 client on a dual-stack socket */
            memcpy(addr, a + 12, 4);
            *family = AF_INET;
        } else {
            memcpy(addr, a, 16);
            *family = AF_INET6;
        }
        return true;
    }
    return false;
}

static bool trusted(int family, const uint8_t *addr)
{
    for (int i = 0; i < sl_conf->nproxies; i++)
        if (sl_cidr_match(&sl_conf->trusted_proxies[i], family, addr))
            return true;
    return false;
}

static void format_addr(int family, const uint8_t *addr, char *out, size_t n)
{
    char a[INET6_ADDRSTRLEN];
    if (inet_ntop(family, addr, a, sizeof(a)) == NULL)
        snprintf(out, n, "-");
    else
        snprintf(out, n, "%s", a);
}

void sl_accesslog_peer(const sl_conn_t *c, const sl_http_request_t *req, char *out, size_t n)
{
    int family;
    uint8_t addr[16];
    if (!socket_peer(c->fd, &family, addr)) {
        snprintf(out, n, "-");
        return;
    }
    format_addr(family, addr, out, n);
    const sl_http_header_t *xff = req ? sl_http_header(req, "X-Forwarded-For") : NULL;
    if (xff == NULL || !trusted(family, addr))
        return;
    /* Right to left: each hop appended the address it saw; the first one
     * that is not one of our proxies is the client. */
    size_t end = xff->value_len;
    while (end > 0) {
        size_t start = end;
        while (start > 0 && xff->value[start - 1] != ',')
            start--;
        char item[INET6_ADDRSTRLEN + 1];
        size_t a = start, b = end;
        while (a < b && (xff->value[a] == ' ' || xff->value[a] == '\t'))
            a++;
        while (b > a && (xff->value[b - 1] == ' ' || xff->value[b - 1] == '\t'))
            b--;
        end = start > 0 ? start - 1 : 0;
        if (b - a == 0 || b - a >= sizeof(item))
            return; /* malformed: keep what we know for sure */
        memcpy(item, xff->value + a, b - a);
        item[b - a] = '\0';
        uint8_t x[16];
        int fam = inet_pton(AF_INET, item, x) == 1    ? AF_INET
                  : inet_pton(AF_INET6, item, x) == 1 ? AF_INET6
                                                      : 0;
        if (fam == 0)
            return;
        format_addr(fam, x, out, n);
        if (!trusted(fam, x))
            return;
        if (start == 0)
            return; /* every hop trusted: the leftmost is the client */
    }
}

/* Copy for a quoted log field: '"', '\' and control bytes escaped. */
static void quoted(char *out, size_t n, const char *s, size_t len)
{
    size_t o = 0;
    for (size_t i = 0; i < len && o + 5 < n; i++) {
        unsigned char ch = (unsigned char)s[i];
        if (ch == '"' || ch == '\\')
            o += (size_t)snprintf(out + o, n - o, "\\%c", ch);
        else if (ch < 0x20 || ch == 0x7f)
            o += (size_t)snprintf(out + o, n - o, "\\x%02x", ch);
        else
            out[o++] = (char)ch;
    }
    out[o] = '\0';
}

void sl_accesslog_begin(const sl_conn_t *c, const sl_http_request_t *req)
{
    A.active = sl_conf->access_log[0] != '\0';
    if (!A.active)
        return;
    A.status = 0;
    A.bytes = 0;
    A.start_us = sl_mono_us();
    sl_accesslog_peer(c, req, A.peer, sizeof(A.peer));
    char m[32], t[900];
    quoted(m, sizeof(m), req->method, req->method_len);
    quoted(t, sizeof(t), req->target, req->target_len);
    snprintf(A.line, sizeof(A.line), "%s %s HTTP/1.%d", m, t, req->version_minor);
    const sl_http_header_t *ua = sl_http_header(req, "User-Agent");
    if (ua)
        quoted(A.agent, sizeof(A.agent), ua->value, ua->value_len);
    else
        snprintf(A.agent, sizeof(A.agent), "-");
}

void sl_accesslog_response(const char *resp, size_t len)
{
    if (!A.active)
        return;
    if (A.status == 0 && len > 12 && memcmp(resp, "HTTP/1.", 7) == 0)
        A.status = (resp[9] - '0') * 100 + (resp[10] - '0') * 10 + (resp[11] - '0');
    A.bytes += len;
}

void sl_accesslog_end(void)
{
    if (!A.active)
        return;
    A.active = false;
    if (A.used + SL_ACCESS_LINE > sizeof(A.batch))
        sl_accesslog_flush();
    time_t now = time(NULL);
    struct tm tm;
    gmtime_r(&now, &tm);
    char when[40];
    strftime(when, sizeof(when), "%d/%b/%Y:%H:%M:%S +0000", &tm);
    double secs = (double)(sl_mono_us() - A.start_us) / 1e6;
    int w = snprintf(A.batch + A.used, SL_ACCESS_LINE,
                     "%s - - [%s] \"%s\" %d %llu \"-\" \"%s\" %.6f\n", A.peer, when, A.line,
                     A.status, (unsigned long long)A.bytes, A.agent, secs);
    if (w > 0)
        A.used += (size_t)SL_MIN(w, SL_ACCESS_LINE - 1);
}

static void reopen_if_moved(void)
{
    int64_t now = sl_mono_ms();
    if (A.fd >= 0 && !A.recheck && now - A.checked_ms < 1000)
        return;
    A.checked_ms = now;
    A.recheck = false;
    struct stat path_st, fd_st;
    if (A.fd >= 0 && stat(sl_conf->access_log, &path_st) == 0 && fstat(A.fd, &fd_st) == 0 &&
        path_st.st_ino == fd_st.st_ino && path_st.st_dev == fd_st.st_dev)
        return;
    int fd = open(sl_conf->access_log, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0640);
    if (fd < 0)
        return; /* keep writing to the old one, if any */
    if (A.fd >= 0)
        close(A.fd);
    A.fd = fd;
}

void sl_accesslog_reopen(void)
{
    A.recheck = true;
}

void sl_accesslog_flush(void)
{
    if (A.used == 0)
        return;
    reopen_if_moved();
    if (A.fd >= 0) {
        ssize_t w;
        do
            w = write(A.fd, A.batch, A.used);
        while (w < 0 && errno == EINTR);
        if (w != (ssize_t)A.used)
            sl_conns_count_error(SL_ERR_ACCESS_LOG);
    } else {
        sl_conns_count_error(SL_ERR_ACCESS_LOG);
    }
    A.used = 0;
}
