/*
 * hostile_gen.c - the hostile side of make bench-hostile in C: one epoll
 * loop driving N connection slots, each running one misbehaving kind in a
 * loop (connect, misbehave, get refused or closed, reconnect), a new round
 * at most every 500 ms per slot.  Standalone (libc only), so that what a
 * benchmark measures is the server's cost, not the generator's.
 *
 *   hostile_gen PORT SLOTS SECONDS      prints {"rounds":N,"cpu-s":S}
 *
 * Kinds, SLOTS/10 slots each: slowloris (an HTTP head a byte per 200 ms),
 * oversize (a 2^40-byte frame length), unmasked frame, reserved opcode/RSV,
 * invalid UTF-8, huge-fragments (64 KiB fragments every 50 ms of a message
 * that would be 100 MB), tiny-fragments (10,000 one-byte fragments),
 * ping-flood (8 KiB of pings every 10 ms, never reading), conn-flood
 * (connect and close, 10/s), pipelined (GET /health without reading).
 * Frames are masked with a fixed key: the server does not care which.
 */
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>
#include <arpa/inet.h>

enum { K_SLOWLORIS, K_OVERSIZE, K_UNMASKED, K_RESERVED, K_BAD_UTF8, K_HUGE, K_TINY, K_PINGS,
       K_CONNFLOOD, K_PIPELINED, K_COUNT };

typedef struct {
    int kind, fd;
    int64_t round_start, next, until; /* ms */
    size_t pos;                      /* progress in the kind's script */
    int step;
} slot_t;

typedef struct {
    uint8_t *p;
    size_t n;
} buf_t;

static struct sockaddr_in addr;
static buf_t b_up_root, b_up_echo, b_oversize, b_unmasked, b_reserved, b_bad_utf8, b_huge_first,
    b_huge_next, b_tiny, b_pings, b_pipelined, b_slow_head;
static uint64_t rounds;

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void append(buf_t *b, const void *p, size_t n)
{
    b->p = realloc(b->p, b->n + n);
    if (b->p == NULL)
        exit(1);
    memcpy(b->p + b->n, p, n);
    b->n += n;
}

/* A client frame masked with a fixed key. */
static void frame(buf_t *b, int op, int fin, int rsv, const void *payload, size_t n, int masked)
{
    static const uint8_t key[4] = {0x12, 0x34, 0x56, 0x78};
    uint8_t h[14];
    size_t hl = 2;
    h[0] = (uint8_t)((fin ? 0x80 : 0) | rsv | op);
    uint8_t m = masked ? 0x80 : 0;
    if (n < 126) {
        h[1] = (uint8_t)(m | n);
    } else if (n < 65536) {
        h[1] = m | 126;
        h[2] = (uint8_t)(n >> 8);
        h[3] = (uint8_t)n;
        hl = 4;
    } else {
        h[1] = m | 127;
        for (int i = 0; i < 8; i++)
            h[2 + i] = (uint8_t)((uint64_t)n >> (56 - 8 * i));
        hl = 10;
    }
    if (masked) {
        memcpy(h + hl, key, 4);
        hl += 4;
    }
    append(b, h, hl);
    size_t at = b->n;
    append(b, payload, n);
    if (masked)
        for (size_t i = 0; i < n; i++)
            b->p[at + i] ^= key[i & 3];
}

static void build(int port)
{
    char up[512];
    int l = snprintf(up, sizeof(up),
                     "GET / HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nUpgrade: websocket\r\n"
                     "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                     "Sec-WebSocket-Version: 13\r\n\r\n", port);
    append(&b_up_root, up, (size_t)l);
    l = snprintf(up, sizeof(up),
                 "GET /echo HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nUpgrade: websocket\r\n"
                 "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                 "Sec-WebSocket-Version: 13\r\n\r\n", port);
    append(&b_up_echo, up, (size_t)l);
    static const uint8_t over[] = {0x81, 0xFF, 0, 0, 1, 0, 0, 0, 0, 0, 'm', 'a', 's', 'k'};
    append(&b_oversize, b_up_root.p, b_up_root.n);
    append(&b_oversize, over, sizeof(over));
    append(&b_unmasked, b_up_root.p, b_up_root.n);
    frame(&b_unmasked, 1, 1, 0, "hello", 5, 0);
    append(&b_reserved, b_up_echo.p, b_up_echo.n);
    frame(&b_reserved, 3, 1, 0, "x", 1, 1);
    append(&b_bad_utf8, b_up_root.p, b_up_root.n);
    frame(&b_bad_utf8, 1, 1, 0, "ok \xc3\x28", 5, 1);
    static uint8_t chunk[65536];
    memset(chunk, 'a', sizeof(chunk));
    append(&b_huge_first, b_up_echo.p, b_up_echo.n);
    frame(&b_huge_first, 2, 0, 0, chunk, sizeof(chunk), 1);
    frame(&b_huge_next, 0, 0, 0, chunk, sizeof(chunk), 1);
    append(&b_tiny, b_up_echo.p, b_up_echo.n);
    for (int i = 0; i < 10000; i++)
        frame(&b_tiny, i == 0 ? 2 : 0, i == 9999, 0, "x", 1, 1);
    append(&b_pings, b_up_echo.p, b_up_echo.n);
    static uint8_t pp[125];
    memset(pp, 'p', sizeof(pp));
    for (int i = 0; i < 64; i++)
        frame(&b_pings, 9, 1, 0, pp, sizeof(pp), 1);
    for (int i = 0; i < 200; i++)
        append(&b_pipelined, "GET /health HTTP/1.1\r\nHost: x\r\n\r\n", 33);
    append(&b_slow_head, "GET / HTTP/1.1\r\nHost: x\r\n", 25);
    for (int i = 0; i < 100; i++)
        append(&b_slow_head, "X-a: b\r\n", 8);
}

static int ep;

static void slot_close(slot_t *s)
{
    if (s->fd >= 0) {
        epoll_ctl(ep, EPOLL_CTL_DEL, s->fd, NULL);
        close(s->fd);
        s->fd = -1;
    }
}

/* Next round no earlier than 500 ms after this one began. */
static void slot_done(slot_t *s, int64_t now)
{
    slot_close(s);
    rounds++;
    s->next = s->round_start + 500 > now ? s->round_start + 500 : now;
    s->step = 0;
    s->pos = 0;
}

static int slot_connect(slot_t *s)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -1;
    int small = 4096;
    setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &small, sizeof(small));
    if (connect(fd, (struct sockaddr *)&addr, sizeof(addr)) != 0 && errno != EINPROGRESS) {
        close(fd);
        return -1;
    }
    s->fd = fd;
    struct epoll_event ev = {.events = EPOLLIN | EPOLLRDHUP, .data.ptr = s};
    epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev);
    return 0;
}

/* Write what the socket takes of b from s->pos; 1 when all of it is out. */
static int slot_write(slot_t *s, const buf_t *b)
{
    while (s->pos < b->n) {
        ssize_t w = send(s->fd, b->p + s->pos, b->n - s->pos, MSG_NOSIGNAL);
        if (w <= 0)
            return 0;
        s->pos += (size_t)w;
    }
    return 1;
}

/* One step of a slot's script, due at s->next. */
static void slot_step(slot_t *s, int64_t now)
{
    if (s->fd < 0 && s->kind != K_CONNFLOOD) {
        s->round_start = now;
        s->until = now + 6000;
        s->pos = 0;
        if (slot_connect(s) != 0) {
            slot_done(s, now);
            return;
        }
    }
    if (now >= s->until && s->fd >= 0) {
        slot_done(s, now);
        return;
    }
    switch (s->kind) {
    case K_SLOWLORIS:
        if (s->pos < b_slow_head.n && send(s->fd, b_slow_head.p + s->pos, 1, MSG_NOSIGNAL) == 1)
            s->pos++;
        s->next = now + 200;
        break;
    case K_OVERSIZE:
    case K_UNMASKED:
    case K_RESERVED:
    case K_BAD_UTF8: {
        const buf_t *b = s->kind == K_OVERSIZE   ? &b_oversize
                         : s->kind == K_UNMASKED ? &b_unmasked
                         : s->kind == K_RESERVED ? &b_reserved
                                                 : &b_bad_utf8;
        slot_write(s, b);
        s->next = now + 100; /* the reply: read in the loop; close ends it */
        break;
    }
    case K_HUGE:
        if (s->step == 0) {
            if (slot_write(s, &b_huge_first)) {
                s->step = 1;
                s->pos = 0;
            }
        } else if (slot_write(s, &b_huge_next)) {
            s->pos = 0;
        }
        s->next = now + 50;
        break;
    case K_TINY:
        slot_write(s, &b_tiny);
        if (now - s->round_start >= 500) {
            slot_done(s, now);
            return;
        }
        s->next = now + 20;
        break;
    case K_PINGS:
        if (s->step == 0 && slot_write(s, &b_up_echo)) { /* the upgrade, then pings */
            s->step = 1;
            s->pos = 0;
        }
        /* 8 KiB of pings per tick; a partial write is continued first. */
        if (s->step == 1 &&
            slot_write(s, &(buf_t){b_pings.p + b_up_echo.n, b_pings.n - b_up_echo.n}))
            s->pos = 0;
        if (now - s->round_start >= 3000) {
            slot_done(s, now);
            return;
        }
        s->next = now + 10;
        break;
    case K_CONNFLOOD:
        if (s->step == 0)
            s->round_start = now;
        if (slot_connect(s) == 0)
            slot_close(s);
        if (++s->step >= 5) {
            rounds++;
            s->step = 0;
            s->next = s->round_start + 500 > now ? s->round_start + 500 : now;
            return;
        }
        s->next = now + 100;
        break;
    case K_PIPELINED:
        if (slot_write(s, &b_pipelined))
            s->pos = 0;
        if (now - s->round_start >= 3000) {
            slot_done(s, now);
            return;
        }
        s->next = now + 10;
        break;
    }
}

int main(int argc, char **argv)
{
    if (argc != 4) {
        fprintf(stderr, "usage: hostile_gen PORT SLOTS SECONDS\n");
        return 2;
    }
    int port = atoi(argv[1]), nslots = atoi(argv[2]);
    int64_t end = now_ms() + (int64_t)(atof(argv[3]) * 1000);
    addr.sin_family = AF_INET;
    addr.sin_port = htons((uint16_t)port);
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    build(port);
    ep = epoll_create1(EPOLL_CLOEXEC);
    slot_t *slots = calloc((size_t)nslots, sizeof(*slots));
    int64_t t0 = now_ms();
    for (int i = 0; i < nslots; i++) {
        slots[i].kind = i % K_COUNT;
        slots[i].fd = -1;
        slots[i].next = t0 + (i * 7) % 500; /* spread the starts */
    }
    static uint8_t sink[65536];
    struct epoll_event evs[256];
    for (;;) {
        int64_t now = now_ms();
        if (now >= end)
            break;
        int64_t wake = end;
        for (int i = 0; i < nslots; i++) {
            if (slots[i].next <= now)
                slot_step(&slots[i], now);
            if (slots[i].next < wake)
                wake = slots[i].next;
        }
        int timeout = (int)(wake > now ? wake - now : 0);
        int n = epoll_wait(ep, evs, 256, timeout);
        now = now_ms();
        for (int k = 0; k < n; k++) {
            slot_t *s = evs[k].data.ptr;
            if (s->fd < 0)
                continue;
            /* Ping floods and pipelined requests never read: only the end
             * of the connection matters to them.  The others read what
             * they are sent (the 101, a close frame) and the EOF. */
            if (s->kind == K_PINGS || s->kind == K_PIPELINED) {
                if (evs[k].events & (EPOLLRDHUP | EPOLLHUP | EPOLLERR))
                    slot_done(s, now);
                else {
                    /* level-triggered input we do not read: stop asking */
                    struct epoll_event ev = {.events = EPOLLRDHUP, .data.ptr = s};
                    epoll_ctl(ep, EPOLL_CTL_MOD, s->fd, &ev);
                }
                continue;
            }
            ssize_t r = recv(s->fd, sink, sizeof(sink), 0);
            if (r == 0 || (r < 0 && errno != EAGAIN && errno != EINTR))
                slot_done(s, now);
        }
    }
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    printf("{\"rounds\": %llu, \"cpu-s\": %.2f}\n", (unsigned long long)rounds,
           (double)ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6 + (double)ru.ru_stime.tv_sec +
               ru.ru_stime.tv_usec / 1e6);
    return 0;
}
