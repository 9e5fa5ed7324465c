/*
 * fuzz_e2e.c - the whole worker path in one process: bytes -> HTTP ->
 * upgrade -> WebSocket frames -> the JSON protocol (channels, RPC, echo,
 * admin API) -> replies, over three connections of one worker, with the
 * end-of-turn work (deliveries, writes, freeing, RCU) run between inputs.
 *
 * Real components throughout: the worker's connections are real sockets
 * (socketpairs; the server writes to its end, we read the other), shared
 * memory is a real mapping, telemetry is encoded (to /dev/null), and time
 * is the injectable clock (so timeouts fire without waiting).  Input is
 * fed through sl_conn_input, as a read would.
 *
 * Input: a sequence of operations, each starting with a byte b:
 *   b & 3 == 0  raw bytes to connection (b >> 2) % 3: a length byte, then
 *               that many bytes
 *   b & 3 == 1  end of turn: the loop runs once (non-blocking), the turn
 *               ends, the clients read what they were sent
 *   b & 3 == 2  time passes: (next byte) * 64 ms, then the timers tick
 *   b & 3 == 3  a client frame to connection (b >> 2) % 3: opcode and FIN
 *               from the next byte, a length byte, the payload (masked
 *               here); b & 0x40: instead, the upgrade request (to /echo
 *               when b & 0x80)
 * Checks: the server's first bytes on a connection are an HTTP response;
 * whatever it writes after a 101 is a well-formed stream of server frames
 * (unmasked, whole: no truncated frame before a close; compressed ones only
 * when the 101 accepted permessage-deflate, and they inflate), and on "/"
 * every text message is a JSON object.
 */
#include "sl_conf.h"
#include "sl_conn.h"
#include "sl_pmd.h"
#include "sl_pubsub.h"
#include "sl_shm.h"
#include "sl_tel.h"
#include "sl_worker.h"

#include <event2/event.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t n);

#define NCONN 3

static sl_worker_t W;
static sl_conf_t CONF;
static int64_t clock_ms = 1000000;

static int64_t fake_mono(void)
{
    return clock_ms;
}

static int64_t fake_now(void)
{
    return 1700000000000LL + clock_ms;
}

static void init_once(void)
{
    static bool done;
    if (done)
        return;
    done = true;
    char *argv[] = {"sente-lite", "--echo", "--workers", "1", "--max-connections", "64",
                    "--max-message-size", "64K", "--max-outbound-bytes", "16K",
                    "--message-retention", "4", "--admin-token", "tok",
                    "--max-http-connections", "8", "--max-control-rate", "20",
                    "--shm-size", "8M", "--log-level", "trace", NULL};
    char *env[] = {NULL};
    sl_conf_action_t act;
    char err[256];
    if (sl_conf_parse(&CONF, (int)(sizeof(argv) / sizeof(argv[0])) - 1, argv, env, &act, err,
                      sizeof(err)) != SL_OK) {
        fprintf(stderr, "%s\n", err);
        abort();
    }
    sl_conf = &CONF;
    sl_clock_override(fake_now, fake_mono);
    if (sl_shm_create((size_t)CONF.shm_size, 1, (uint64_t)CONF.max_connections,
                      (uint64_t)CONF.max_channels) != SL_OK)
        abort();
    sl_wake_fds[0] = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (sl_worker_setup(&W, 0) != SL_OK)
        abort();
    sl_qsbr_register(&sl_shm->reg.qsbr, 0);
    sl_tel_init(open("/dev/null", O_WRONLY | O_CLOEXEC), 0, W.stats, true, SL_TRACE);
}

typedef struct {
    sl_conn_t *c;
    int peer;         /* the client's end */
    uint8_t *out;     /* what the server wrote, not yet checked */
    size_t out_len;
    int phase;        /* 0: HTTP, 1: WebSocket frames, 2: not checked */
    bool protocol;    /* upgraded to "/" by us, before any raw byte */
    bool raw;         /* raw bytes were sent */
    bool upgrade_sent;
    sl_ws_reader_t reader; /* client side: expects unmasked frames */
} client_t;

static client_t C[NCONN];

static int check_msg(void *ctx, int op, uint8_t *d, size_t len)
{
    client_t *cl = ctx;
    if (op == SL_WS_OP_TEXT && cl->protocol) {
        json_error_t e;
        json_t *j = json_loadb((const char *)d, len, 0, &e);
        if (!json_is_object(j)) {
            fprintf(stderr, "not a JSON object: %.*s\n", (int)SL_MIN(len, 200), d);
            abort();
        }
        json_decref(j);
    }
    return 0;
}

static int check_ctl(void *ctx, int op, uint8_t *d, size_t len)
{
    return 0;
}

static const sl_ws_handlers_t CHECK = {check_msg, check_ctl};

/* Read what the server sent to each client and check its frames. */
static void drain(void)
{
    static uint8_t buf[1 << 16];
    for (int i = 0; i < NCONN; i++) {
        client_t *cl = &C[i];
        ssize_t r;
        while ((r = read(cl->peer, buf, sizeof(buf))) > 0) {
            if (cl->phase == 2)
                continue;
            uint8_t *p = realloc(cl->out, cl->out_len + (size_t)r);
            if (p == NULL)
                abort();
            cl->out = p;
            memcpy(cl->out + cl->out_len, buf, (size_t)r);
            cl->out_len += (size_t)r;
            if (cl->phase == 0) {
                /* Before anything else, an HTTP response (a slow-consumer
                 * close must never come before the 101). */
                if (memcmp(cl->out, "HTTP/1.1 ", SL_MIN(cl->out_len, 9)) != 0) {
                    fprintf(stderr, "the server's first bytes are not an HTTP response\n");
                    abort();
                }
                uint8_t *end = memmem(cl->out, cl->out_len, "\r\n\r\n", 4);
                if (end == NULL)
                    continue;
                if (cl->out_len < 12 || memcmp(cl->out, "HTTP/1.1 101", 12) != 0) {
                    cl->phase = 2; /* plain HTTP: responses, not checked */
                    continue;
                }
                size_t head = (size_t)(end + 4 - cl->out);
                memmove(cl->out, cl->out + head, cl->out_len - head);
                cl->out_len -= head;
                cl->phase = 1;
                sl_ws_reader_init(&cl->reader, false, 1 << 24);
                /* permessage-deflate negotiated (an upgrade sent as raw
                 * bytes may offer it): compressed frames are checked
                 * inflated. */
                cl->reader.deflate = memmem(cl->out, head, "permessage-deflate", 18) != NULL;
                sl_ws_set_inflater(sl_pmd_inflate);
            }
            if (cl->phase == 1 && cl->out_len) {
                int rc = sl_ws_reader_feed(&cl->reader, cl->out, cl->out_len, &CHECK, cl, NULL);
                if (rc != 0) {
                    fprintf(stderr, "server sent a bad frame stream: %d\n", rc);
                    abort();
                }
                cl->out_len = 0;
            }
        }
    }
}

static void turn(void)
{
    event_base_loop(W.base, EVLOOP_NONBLOCK);
    sl_worker_turn_end(&W);
    drain();
}

static void tick(void)
{
    SL_CONNS_EACH(c)
        if (c->state != SL_CONN_DEAD)
            sl_conn_tick(c, clock_ms);
}

/* The connection of client i, if it is still alive. */
static sl_conn_t *live(int i)
{
    SL_CONNS_EACH(c)
        if (c == C[i].c && c->state != SL_CONN_DEAD)
            return c;
    return NULL;
}

static void input(int i, const uint8_t *p, size_t len)
{
    sl_conn_t *c = live(i);
    if (c == NULL || len == 0)
        return;
    static uint8_t buf[1024];
    memcpy(buf, p, len); /* the server unmasks in place */
    sl_conn_input(c, buf, len);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t n)
{
    init_once();
    for (int i = 0; i < NCONN; i++) {
        int sv[2];
        if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, sv) != 0)
            abort();
        memset(&C[i], 0, sizeof(C[i]));
        C[i].peer = sv[0];
        C[i].c = sl_conn_new(sv[1], false, &sl_xport_plain, NULL);
    }
    size_t pos = 0;
    while (pos < n) {
        uint8_t b = data[pos++];
        int i = (b >> 2) % NCONN;
        switch (b & 3) {
        case 0: {
            size_t len = pos < n ? data[pos++] : 0;
            len = SL_MIN(len, n - pos);
            if (!C[i].upgrade_sent)
                C[i].raw = true;
            input(i, data + pos, len);
            pos += len;
            break;
        }
        case 1:
            turn();
            break;
        case 2:
            clock_ms += 64 * (pos < n ? data[pos++] : 1);
            tick();
            break;
        case 3:
            if (b & 0x40) {
                static const char up[] = "GET %s HTTP/1.1\r\nHost: f\r\nUpgrade: websocket\r\n"
                                         "Connection: Upgrade\r\nSec-WebSocket-Key: "
                                         "dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: "
                                         "13\r\n\r\n";
                char req[256];
                int l = snprintf(req, sizeof(req), up, (b & 0x80) ? "/echo" : "/");
                if (!C[i].upgrade_sent && !C[i].raw && !(b & 0x80))
                    C[i].protocol = true;
                C[i].upgrade_sent = true;
                input(i, (const uint8_t *)req, (size_t)l);
            } else {
                uint8_t f = pos < n ? data[pos++] : 0;
                size_t len = pos < n ? data[pos++] : 0;
                len = SL_MIN(len, n - pos);
                static const int ops[8] = {SL_WS_OP_TEXT, SL_WS_OP_TEXT, SL_WS_OP_CONT,
                                           SL_WS_OP_CONT, SL_WS_OP_BINARY, SL_WS_OP_PING,
                                           SL_WS_OP_PONG, SL_WS_OP_CLOSE};
                uint8_t fr[SL_WS_MAX_HEADER + 256];
                static const uint8_t mask[4] = {0x11, 0x22, 0x33, 0x44};
                size_t h = sl_ws_encode_header(fr, ops[f & 7], (f & 8) == 0, len, mask);
                memcpy(fr + h, data + pos, len);
                sl_ws_mask(fr + h, len, mask, 0);
                input(i, fr, h + len);
                pos += len;
            }
            break;
        }
    }
    turn();
    /* Leave nothing behind for the next input. */
    SL_CONNS_EACH(c)
        sl_conn_abort(c, "fuzz input done");
    turn();
    for (int i = 0; i < NCONN; i++) {
        close(C[i].peer);
        free(C[i].out);
        sl_ws_reader_free(&C[i].reader);
    }
    return 0;
}
