/*
 * ceiling - a reference WebSocket fan-out server for the benchmark table.
 *
 * What it is: the least a server can do to fan text frames out over
 * WebSocket on this machine, so that scripts/bench/bench.py can show where
 * the machine's limit is next to sente-lite and its peers.  One process, one
 * thread, one epoll loop.  It accepts RFC 6455 upgrades (any path; "/sub"
 * makes a subscriber, "/pub" a publisher), reads masked client frames of any
 * length form, answers ping with pong and close with close, and broadcasts
 * every (unfragmented) text frame a publisher sends, payload unchanged, to
 * every subscriber as an unmasked server text frame.  It sends nothing else:
 * no welcome, no acknowledgement.  GET /health answers {"status":"healthy"}.
 *
 *   --mode raw      one write(2) per message per subscriber, right away (what
 *                   would block is kept and flushed on EPOLLOUT)
 *   --mode batched  frames appended to each subscriber's buffer, one write
 *                   per subscriber per loop iteration after all ready events
 *
 * Handshake ceilings (connect rows): the least a server can do per
 * connection of our protocol's shape - upgrade, 101, a welcome text frame,
 * and one text frame back for each text frame a client sends (its
 * subscribe gets {"type":"subscription-result","success":true}) - in
 * --workers processes (default 2, as sente-lite runs in the table):
 *
 *   --mode handshake  every worker accepts on the shared listening socket
 *                     itself (EPOLLEXCLUSIVE; how nginx's workers do it)
 *   --mode handoff    one more process accepts and hands the sockets to the
 *                     workers over Unix sockets (SCM_RIGHTS, up to 64 per
 *                     sendmsg, round robin): sente-lite's design card, whose
 *                     master accepts and hands off
 *
 * What it is not: a product or a test of anything.  No channels, no JSON, no
 * authentication, no limits beyond a few sanity bounds, no logging, no
 * reassembly of fragmented messages (their frames are ignored), no UTF-8
 * check, no close handshake timeouts.  Built by `make bench`, see Makefile.
 *
 *   ceiling --mode raw|batched|handshake|handoff [--port N] [--host 127.0.0.1]
 *           [--workers N]
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/evp.h>
#include <openssl/sha.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/prctl.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#define CL_MAX_HEAD 8192              /* HTTP request head */
#define CL_MAX_FRAME (16u << 20)      /* client frame payload */
#define CL_MAX_OUT ((size_t)64 << 20) /* pending output per connection */
#define CL_READ 65536

enum { CL_HTTP, CL_WS };
enum { CL_OTHER, CL_SUB, CL_PUB };

typedef struct cl_conn {
    int fd, state, role, dead, dirty, close_after, want_out;
    size_t sub_idx;
    char *in;
    size_t in_len, in_cap;
    char *out;
    size_t out_off, out_len, out_cap;
    struct cl_conn *next_dead;
} cl_conn;

static int cl_batched, cl_hs, cl_ep, cl_ctl = -1;
static volatile sig_atomic_t cl_stop;
static cl_conn **cl_subs, **cl_dirty;
static size_t cl_nsubs, cl_subs_cap, cl_ndirty, cl_dirty_cap;
static cl_conn *cl_dead;
static char *cl_frame;
static size_t cl_frame_cap;

static void cl_on_signal(int sig)
{
    cl_stop = 1;
}

static void *cl_grow(void *p, size_t *cap, size_t need, size_t elem)
{
    if (need <= *cap)
        return p;
    size_t n = *cap ? *cap : 16;
    while (n < need)
        n *= 2;
    p = realloc(p, n * elem);
    if (!p) {
        perror("realloc");
        exit(1);
    }
    *cap = n;
    return p;
}

/* Mark for closing; freed at the end of the loop iteration, so pointers held
 * by this iteration (events, the subscriber and dirty lists) stay valid. */
static void cl_kill(cl_conn *c)
{
    if (c->dead)
        return;
    c->dead = 1;
    c->next_dead = cl_dead;
    cl_dead = c;
}

static void cl_reap(void)
{
    while (cl_dead) {
        cl_conn *c = cl_dead;
        cl_dead = c->next_dead;
        if (c->role == CL_SUB) {
            cl_subs[c->sub_idx] = cl_subs[--cl_nsubs];
            cl_subs[c->sub_idx]->sub_idx = c->sub_idx;
        }
        close(c->fd);
        free(c->in);
        free(c->out);
        free(c);
    }
}

static void cl_want_out(cl_conn *c, int on)
{
    if (c->want_out == on)
        return;
    struct epoll_event ev = {.events = EPOLLIN | (on ? EPOLLOUT : 0), .data.ptr = c};
    if (epoll_ctl(cl_ep, EPOLL_CTL_MOD, c->fd, &ev) == 0)
        c->want_out = on;
}

static void cl_append(cl_conn *c, const char *p, size_t n)
{
    if (c->out_off == c->out_len)
        c->out_off = c->out_len = 0;
    if (c->out_len - c->out_off + n > CL_MAX_OUT) {
        cl_kill(c); /* a consumer this far behind is gone for a measuring stick */
        return;
    }
    if (c->out_off && c->out_len + n > c->out_cap) {
        memmove(c->out, c->out + c->out_off, c->out_len - c->out_off);
        c->out_len -= c->out_off;
        c->out_off = 0;
    }
    c->out = cl_grow(c->out, &c->out_cap, c->out_len + n, 1);
    memcpy(c->out + c->out_len, p, n);
    c->out_len += n;
}

/* One write(2): the bytes taken (0 if it would block), -1 if the peer is gone. */
static ssize_t cl_write(cl_conn *c, const char *p, size_t n)
{
    ssize_t w;
    do
        w = write(c->fd, p, n);
    while (w < 0 && errno == EINTR);
    if (w < 0 && errno != EAGAIN) {
        cl_kill(c);
        return -1;
    }
    return w < 0 ? 0 : w;
}

/* One write of what is pending; the rest waits for EPOLLOUT. */
static void cl_flush(cl_conn *c)
{
    if (c->dead)
        return;
    ssize_t w =
        c->out_off < c->out_len ? cl_write(c, c->out + c->out_off, c->out_len - c->out_off) : 0;
    if (w < 0)
        return;
    c->out_off += (size_t)w;
    if (c->out_off < c->out_len) {
        cl_want_out(c, 1);
        return;
    }
    c->out_off = c->out_len = 0;
    cl_want_out(c, 0);
    if (c->close_after)
        cl_kill(c);
}

static void cl_mark_dirty(cl_conn *c)
{
    if (c->dirty || c->dead)
        return;
    cl_dirty = cl_grow(cl_dirty, &cl_dirty_cap, cl_ndirty + 1, sizeof(*cl_dirty));
    cl_dirty[cl_ndirty++] = c;
    c->dirty = 1;
}

/* raw: write now unless something is already pending (order); batched: to
 * the buffer, written once at the end of this loop iteration. */
static void cl_send(cl_conn *c, const char *p, size_t n)
{
    if (c->dead)
        return;
    if (cl_batched || c->out_off < c->out_len) {
        cl_append(c, p, n);
        if (cl_batched)
            cl_mark_dirty(c);
        return;
    }
    ssize_t w = cl_write(c, p, n);
    if (w < 0)
        return;
    if ((size_t)w < n) {
        cl_append(c, p + w, n - (size_t)w);
        cl_want_out(c, 1);
    } else if (c->close_after) {
        cl_kill(c);
    }
}

/* An unmasked server frame: header and payload in one buffer. */
static size_t cl_make_frame(int opcode, const char *p, size_t n)
{
    size_t h = n < 126 ? 2 : n < 65536 ? 4 : 10;
    cl_frame = cl_grow(cl_frame, &cl_frame_cap, h + n, 1);
    unsigned char *f = (unsigned char *)cl_frame;
    f[0] = (unsigned char)(0x80 | opcode);
    f[1] = (unsigned char)(h == 2 ? n : h == 4 ? 126 : 127);
    for (size_t i = 2; i < h; i++) /* big-endian extended length */
        f[i] = (unsigned char)((uint64_t)n >> (8 * (h - 1 - i)));
    memcpy(cl_frame + h, p, n);
    return h + n;
}

static void cl_broadcast(const char *p, size_t n)
{
    size_t len = cl_make_frame(0x1, p, n);
    for (size_t i = 0; i < cl_nsubs; i++) /* dead ones stay listed until reaped */
        if (!cl_subs[i]->close_after)     /* nothing after our close frame */
            cl_send(cl_subs[i], cl_frame, len);
}

static const char *cl_header(const char *head, const char *name, size_t *len)
{
    size_t nl = strlen(name);
    for (const char *l = strstr(head, "\r\n"); l && l[2] != '\r'; l = strstr(l + 2, "\r\n")) {
        if (strncasecmp(l + 2, name, nl) == 0 && l[2 + nl] == ':') {
            const char *v = l + 3 + nl, *e = strstr(v, "\r\n");
            while (*v == ' ' || *v == '\t')
                v++;
            while (e > v && (e[-1] == ' ' || e[-1] == '\t'))
                e--;
            *len = (size_t)(e - v);
            return v;
        }
    }
    return NULL;
}

/* The request head is complete (NUL-terminated at its blank line). */
static void cl_handshake(cl_conn *c, char *head)
{
    static const char health[] = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                                 "Content-Length: 20\r\nConnection: close\r\n\r\n"
                                 "{\"status\":\"healthy\"}";
    static const char notfound[] = "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n"
                                   "Connection: close\r\n\r\n";
    char path[256] = "";
    size_t klen = 0;
    const char *key = cl_header(head, "Sec-WebSocket-Key", &klen);
    if (sscanf(head, "GET %255s HTTP/1.1", path) != 1 || !key || klen == 0 || klen > 64) {
        c->close_after = 1;
        if (strcmp(path, "/health") == 0)
            cl_send(c, health, sizeof(health) - 1);
        else
            cl_send(c, notfound, sizeof(notfound) - 1);
        return;
    }
    char buf[128];
    unsigned char sha[SHA_DIGEST_LENGTH], acc[64];
    memcpy(buf, key, klen);
    memcpy(buf + klen, "258EAFA5-E914-47DA-95CA-C5AB0DC85B11", 36);
    SHA1((unsigned char *)buf, klen + 36, sha);
    EVP_EncodeBlock(acc, sha, SHA_DIGEST_LENGTH);
    char resp[256];
    int n = snprintf(resp, sizeof(resp),
                     "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                     "Connection: Upgrade\r\nSec-WebSocket-Accept: %s\r\n\r\n",
                     acc);
    c->state = CL_WS;
    if (cl_hs) { /* handshake ceilings: 101 and a welcome in one write */
        static const char welcome[] = "\x81\x12{\"type\":\"welcome\"}";
        memcpy(resp + n, welcome, sizeof(welcome) - 1);
        cl_send(c, resp, (size_t)n + sizeof(welcome) - 1);
        return;
    }
    if (strcmp(path, "/sub") == 0) {
        c->role = CL_SUB;
        cl_subs = cl_grow(cl_subs, &cl_subs_cap, cl_nsubs + 1, sizeof(*cl_subs));
        c->sub_idx = cl_nsubs;
        cl_subs[cl_nsubs++] = c;
    } else if (strcmp(path, "/pub") == 0) {
        c->role = CL_PUB;
    }
    cl_send(c, resp, (size_t)n);
}

/* Consume the whole frames at the start of buf; returns the bytes used. */
static size_t cl_frames(cl_conn *c, char *buf, size_t len)
{
    size_t pos = 0;
    while (!c->dead && !c->close_after && len - pos >= 2) {
        unsigned char *f = (unsigned char *)buf + pos;
        size_t avail = len - pos, h = 2, n = f[1] & 0x7f;
        int fin = f[0] & 0x80, op = f[0] & 0x0f;
        if (!(f[1] & 0x80) || (f[0] & 0x70)) { /* unmasked or reserved bits */
            cl_kill(c);
            break;
        }
        if (n >= 126) { /* 16- or 64-bit length */
            h = n == 126 ? 4 : 10;
            if (avail < h)
                break;
            uint64_t v = 0;
            for (size_t i = 2; i < h; i++)
                v = v << 8 | f[i];
            n = v > CL_MAX_FRAME ? CL_MAX_FRAME + 1 : (size_t)v;
        }
        if (n > CL_MAX_FRAME || ((op & 0x8) && (n > 125 || !fin))) {
            cl_kill(c);
            break;
        }
        if (avail < h + 4 + n)
            break;
        unsigned char *mask = f + h, *p = f + h + 4;
        for (size_t i = 0; i < n; i++)
            p[i] ^= mask[i & 3];
        pos += h + 4 + n;
        if (op == 0x1 && fin && cl_hs) {
            static const char ack[] = "\x81\x2d{\"type\":\"subscription-result\",\"success\":true}";
            cl_send(c, ack, sizeof(ack) - 1);
        } else if (op == 0x1 && fin && c->role == CL_PUB) {
            cl_broadcast((char *)p, n);
        } else if (op == 0x9) {
            cl_send(c, cl_frame, cl_make_frame(0xA, (char *)p, n));
        } else if (op == 0x8) {
            c->close_after = 1; /* echo the status code, then close */
            cl_send(c, cl_frame, cl_make_frame(0x8, (char *)p, n >= 2 ? 2 : 0));
        } else if (op > 0x2 && op != 0xA) {
            cl_kill(c); /* unknown opcode */
        }
    }
    return pos;
}

static void cl_read(cl_conn *c)
{
    static char rbuf[CL_READ];
    ssize_t r = read(c->fd, rbuf, CL_READ);
    if (r < 0 && (errno == EAGAIN || errno == EINTR))
        return;
    if (r <= 0) {
        cl_kill(c);
        return;
    }
    if (c->close_after)
        return; /* closing: input is dropped */
    char *buf = rbuf;
    size_t len = (size_t)r;
    int in_rbuf = 1; /* parse straight from rbuf unless something is left over */
    if (c->in_len || c->state == CL_HTTP) {
        c->in = cl_grow(c->in, &c->in_cap, c->in_len + len + 1, 1);
        memcpy(c->in + c->in_len, rbuf, len);
        c->in_len += len;
        buf = c->in;
        len = c->in_len;
        in_rbuf = 0;
    }
    if (c->state == CL_HTTP) {
        buf[len] = '\0';
        char *end = strstr(buf, "\r\n\r\n");
        if (!end) {
            if (len > CL_MAX_HEAD)
                cl_kill(c);
            return;
        }
        end[2] = '\0'; /* keep the last header's CRLF for cl_header */
        cl_handshake(c, buf);
        len -= (size_t)(end + 4 - buf);
        buf = end + 4; /* frames sent right behind the request */
    }
    size_t used = c->state == CL_WS && !c->close_after ? cl_frames(c, buf, len) : len;
    if (c->dead)
        return;
    size_t rest = len - used;
    if (rest && in_rbuf)
        c->in = cl_grow(c->in, &c->in_cap, rest, 1);
    if (rest)
        memmove(c->in, buf + used, rest);
    c->in_len = rest;
}

static void cl_add(int fd)
{
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    cl_conn *c = calloc(1, sizeof(*c));
    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = c};
    if (!c || epoll_ctl(cl_ep, EPOLL_CTL_ADD, fd, &ev) < 0) {
        free(c);
        close(fd);
        return;
    }
    c->fd = fd;
}

static void cl_accept(int lfd)
{
    for (;;) {
        int fd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0)
            return; /* EAGAIN, or EMFILE and friends: try again on the next event */
        cl_add(fd);
    }
}

/* --- handoff: the accepting process and the workers' end of it --- */

#define CL_BATCH 64
static int cl_ctl_marker; /* epoll data.ptr of a worker's hand-off socket */

/* Worker: take the sockets the acceptor sent (any number of messages). */
static void cl_receive(int ctl)
{
    for (;;) {
        char data[CL_BATCH];
        union {
            struct cmsghdr h;
            char buf[CMSG_SPACE(sizeof(int) * CL_BATCH)];
        } u;
        struct iovec iov = {.iov_base = data, .iov_len = sizeof(data)};
        struct msghdr m = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = u.buf,
                           .msg_controllen = sizeof(u.buf)};
        ssize_t r = recvmsg(ctl, &m, MSG_DONTWAIT | MSG_CMSG_CLOEXEC);
        if (r <= 0) {
            if (r == 0 || (errno != EAGAIN && errno != EINTR))
                cl_stop = 1; /* the acceptor is gone */
            return;
        }
        for (struct cmsghdr *h = CMSG_FIRSTHDR(&m); h; h = CMSG_NXTHDR(&m, h))
            if (h->cmsg_level == SOL_SOCKET && h->cmsg_type == SCM_RIGHTS) {
                int *fds = (int *)CMSG_DATA(h);
                size_t n = (h->cmsg_len - CMSG_LEN(0)) / sizeof(int);
                for (size_t i = 0; i < n; i++)
                    cl_add(fds[i]);
            }
    }
}

/* Acceptor: everything pending, in batches of up to 64 sockets per
 * sendmsg, to the workers in turn; our copies closed once sent. */
static void cl_accept_handoff(int lfd, const int *ctl, int nctl)
{
    static int next;
    for (;;) {
        int fds[CL_BATCH], n = 0;
        while (n < CL_BATCH) {
            int fd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
            if (fd < 0)
                break;
            fds[n++] = fd;
        }
        if (n == 0)
            return;
        union {
            struct cmsghdr h;
            char buf[CMSG_SPACE(sizeof(int) * CL_BATCH)];
        } u;
        memset(&u, 0, sizeof(u));
        char one = 'f';
        struct iovec iov = {.iov_base = &one, .iov_len = 1};
        struct msghdr m = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = u.buf,
                           .msg_controllen = CMSG_SPACE(sizeof(int) * (size_t)n)};
        struct cmsghdr *h = CMSG_FIRSTHDR(&m);
        h->cmsg_level = SOL_SOCKET;
        h->cmsg_type = SCM_RIGHTS;
        h->cmsg_len = CMSG_LEN(sizeof(int) * (size_t)n);
        memcpy(CMSG_DATA(h), fds, sizeof(int) * (size_t)n);
        int w = next++ % nctl;
        while (sendmsg(ctl[w], &m, MSG_NOSIGNAL) < 0 && errno == EINTR)
            ;
        for (int i = 0; i < n; i++)
            close(fds[i]);
        if (n < CL_BATCH)
            return;
    }
}

static void cl_usage(void)
{
    fprintf(stderr, "usage: ceiling --mode raw|batched|handshake|handoff [--port N] "
                    "[--host 127.0.0.1] [--workers N]\n");
    exit(2);
}

/* The parent of the handshake ceilings: forward a stop to the workers. */
static void cl_stop_children(const pid_t *pids, int n)
{
    for (int i = 0; i < n; i++)
        if (pids[i] > 0)
            kill(pids[i], SIGTERM);
    for (int i = 0; i < n; i++)
        if (pids[i] > 0)
            waitpid(pids[i], NULL, 0);
}

int main(int argc, char **argv)
{
    const char *host = "127.0.0.1", *mode = NULL;
    int port = 3000, workers = 2;
    for (int i = 1; i < argc; i++) {
        if (i + 1 < argc && strcmp(argv[i], "--mode") == 0)
            mode = argv[++i];
        else if (i + 1 < argc && strcmp(argv[i], "--port") == 0)
            port = atoi(argv[++i]);
        else if (i + 1 < argc && strcmp(argv[i], "--host") == 0)
            host = argv[++i];
        else if (i + 1 < argc && strcmp(argv[i], "--workers") == 0)
            workers = atoi(argv[++i]);
        else
            cl_usage();
    }
    int handoff = mode && strcmp(mode, "handoff") == 0;
    cl_hs = mode && (handoff || strcmp(mode, "handshake") == 0);
    if (!mode || (strcmp(mode, "raw") != 0 && strcmp(mode, "batched") != 0 && !cl_hs) ||
        port <= 0 || port > 65535 || workers < 1 || workers > 64)
        cl_usage();
    cl_batched = strcmp(mode, "batched") == 0 || cl_hs;

    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
    /* SIGTERM/SIGINT are blocked except inside epoll_pwait: no lost wake-up. */
    struct sigaction sa = {.sa_handler = cl_on_signal};
    sigset_t block, waitmask;
    sigemptyset(&block);
    sigaddset(&block, SIGTERM);
    sigaddset(&block, SIGINT);
    sigprocmask(SIG_BLOCK, &block, &waitmask);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);

    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    int one = 1, lfd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (inet_pton(AF_INET, host, &addr.sin_addr) != 1) {
        fprintf(stderr, "ceiling: bad --host %s (IPv4 address)\n", host);
        return 2;
    }
    setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    if (lfd < 0 || bind(lfd, (struct sockaddr *)&addr, sizeof(addr)) < 0 ||
        listen(lfd, SOMAXCONN) < 0) {
        perror("ceiling: listen");
        return 1;
    }
    pid_t pids[64] = {0};
    int ctl[64], nctl = 0, acceptor = 1;
    if (cl_hs) {
        /* Fork the workers; with --mode handoff this process stays the
         * acceptor, with --mode handshake it only waits for the stop. */
        for (int w = 0; w < workers; w++) {
            int sv[2] = {-1, -1};
            if (handoff && socketpair(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0, sv) < 0) {
                perror("ceiling: socketpair");
                return 1;
            }
            pid_t pid = fork();
            if (pid < 0) {
                perror("ceiling: fork");
                return 1;
            }
            if (pid == 0) {
                prctl(PR_SET_PDEATHSIG, SIGTERM);
                for (int k = 0; k < nctl; k++)
                    close(ctl[k]);
                if (handoff) {
                    close(sv[0]);
                    close(lfd);
                    cl_ctl = sv[1];
                    lfd = -1;
                }
                acceptor = 0;
                break;
            }
            pids[w] = pid;
            if (handoff) {
                close(sv[1]);
                ctl[nctl++] = sv[0];
            }
        }
        if (acceptor && !handoff) {
            /* Nothing to do but wait for SIGTERM / SIGINT. */
            while (!cl_stop)
                sigsuspend(&waitmask);
            cl_stop_children(pids, workers);
            return 0;
        }
    }
    cl_ep = epoll_create1(EPOLL_CLOEXEC);
    if (cl_ep < 0) {
        perror("ceiling: epoll");
        return 1;
    }
    if (lfd >= 0) {
        struct epoll_event lev = {.events = EPOLLIN | (cl_hs && !handoff ? EPOLLEXCLUSIVE : 0),
                                  .data.ptr = NULL};
        if (epoll_ctl(cl_ep, EPOLL_CTL_ADD, lfd, &lev) < 0) {
            perror("ceiling: epoll");
            return 1;
        }
    }
    if (cl_ctl >= 0) {
        struct epoll_event cev = {.events = EPOLLIN, .data.ptr = &cl_ctl_marker};
        if (epoll_ctl(cl_ep, EPOLL_CTL_ADD, cl_ctl, &cev) < 0) {
            perror("ceiling: epoll");
            return 1;
        }
    }
    if (handoff && acceptor) {
        /* The acceptor: accept and hand off, nothing else. */
        struct epoll_event ev;
        while (!cl_stop) {
            int n = epoll_pwait(cl_ep, &ev, 1, -1, &waitmask);
            if (n > 0)
                cl_accept_handoff(lfd, ctl, nctl);
            else if (n < 0 && errno != EINTR)
                break;
        }
        cl_stop_children(pids, workers);
        return 0;
    }

    struct epoll_event evs[1024];
    while (!cl_stop) {
        int n = epoll_pwait(cl_ep, evs, 1024, -1, &waitmask);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            perror("ceiling: epoll_wait");
            return 1;
        }
        for (int i = 0; i < n; i++) {
            cl_conn *c = evs[i].data.ptr;
            if (!c) {
                cl_accept(lfd);
                continue;
            }
            if ((void *)c == (void *)&cl_ctl_marker) {
                cl_receive(cl_ctl);
                continue;
            }
            if (c->dead)
                continue;
            if (evs[i].events & EPOLLOUT) {
                if (cl_batched)
                    cl_mark_dirty(c); /* written with the others below */
                else
                    cl_flush(c);
            }
            if (evs[i].events & (EPOLLIN | EPOLLHUP | EPOLLERR))
                cl_read(c);
        }
        for (size_t i = 0; i < cl_ndirty; i++) { /* batched: one write each */
            cl_dirty[i]->dirty = 0;
            cl_flush(cl_dirty[i]);
        }
        cl_ndirty = 0;
        cl_reap();
    }
    close(lfd);
    close(cl_ep);
    return 0;
}
