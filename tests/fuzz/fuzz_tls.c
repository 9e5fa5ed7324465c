/*
 * fuzz_tls.c - the TLS transport (src/tls.c) end to end in one worker: TLS
 * record input from the socket -> the handshake -> HTTP -> upgrade ->
 * WebSocket frames -> the JSON protocol -> replies sealed into records.
 *
 * fuzz_e2e feeds plaintext through sl_conn_input, below the transport, so
 * it cannot reach TLS; here every byte reaches the server through its
 * socket and the transport's read, as in production.  Three connections
 * of one worker sit on socketpairs, accepted with sl_tls_accept and the
 * certificate of a key made for the run (ECDSA P-256, self-signed).  The
 * client side of each is either raw bytes (anything: record headers,
 * garbage, plain HTTP) or a real OpenSSL client on the same socket, whose
 * handshake and application data interleave with the raw bytes the input
 * chooses (raw bytes in the middle of a TLS stream are a corrupt record).
 * Real components throughout: shared memory, the ticket keys the master
 * would rotate, telemetry (to /dev/null), the injectable clock.
 *
 * Input: a sequence of operations, each starting with a byte b:
 *   b & 3 == 0  raw bytes to connection (b >> 2) % 3's socket: a length
 *               byte, then that many bytes
 *   b & 3 == 1  end of turn: the worker's loop runs once (non-blocking),
 *               the turn ends; each client reads what it was sent (the
 *               OpenSSL clients go on with their handshakes)
 *   b & 3 == 2  time passes: (next byte) * 64 ms, then the timers tick
 *   b & 3 == 3  the OpenSSL client of connection (b >> 2) % 3: if none yet,
 *               its ClientHello (TLS 1.2 only when b & 0x40, with the last
 *               session of the run when b & 0x80); once its handshake is
 *               done: b & 0x40 the upgrade request (to /echo when b &
 *               0x80), else a client frame (opcode and FIN from the next
 *               byte, a length byte, the payload; masked here) or, with
 *               opcode byte 0xff, its close_notify
 * Checks: a connection whose first bytes were raw gets either nothing, a
 * TLS record (alert or handshake), or - when it began with a letter -
 * the plain-HTTP 400; what an OpenSSL client decrypts after a 101 is a
 * well-formed stream of server frames (compressed ones only when
 * negotiated, and they inflate), and on "/" every text message is a JSON
 * object.
 */
#include "sl_conf.h"
#include "sl_conn.h"
#include "sl_pmd.h"
#include "sl_pubsub.h"
#include "sl_shm.h"
#include "sl_tel.h"
#include "sl_tls.h"
#include "sl_worker.h"

#include <ctype.h>
#include <event2/event.h>
#include <fcntl.h>
#include <signal.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t n);

#define NCONN 3

static sl_worker_t W;
static sl_conf_t FCONF;
static SSL_CTX *CLIENT;
static SSL_SESSION *last_session;
static int64_t clock_ms = 1000000;

static int64_t fake_mono(void)
{
    return clock_ms;
}

static int64_t fake_now(void)
{
    return 1700000000000LL + clock_ms;
}

/* A P-256 key and a self-signed certificate for localhost, as PEM files. */
static void make_cert(const char *crt, const char *key)
{
    EVP_PKEY *pk = EVP_EC_gen("P-256");
    X509 *x = X509_new();
    if (!pk || !x)
        abort();
    X509_set_version(x, 2);
    ASN1_INTEGER_set(X509_get_serialNumber(x), 1);
    X509_gmtime_adj(X509_getm_notBefore(x), -3600);
    X509_gmtime_adj(X509_getm_notAfter(x), 30L * 86400);
    X509_NAME *nm = X509_get_subject_name(x);
    X509_NAME_add_entry_by_txt(nm, "CN", MBSTRING_ASC, (const unsigned char *)"localhost", -1, -1,
                               0);
    X509_set_issuer_name(x, nm);
    X509_set_pubkey(x, pk);
    if (X509_sign(x, pk, EVP_sha256()) == 0)
        abort();
    FILE *f = fopen(crt, "w");
    FILE *g = fopen(key, "w");
    if (!f || !g || PEM_write_X509(f, x) != 1 ||
        PEM_write_PrivateKey(g, pk, NULL, NULL, 0, NULL, NULL) != 1)
        abort();
    fclose(f);
    fclose(g);
    X509_free(x);
    EVP_PKEY_free(pk);
}

static void init_once(void)
{
    static bool done;
    if (done)
        return;
    done = true;
    /* As the server does (OpenSSL writes to its sockets with write(2)). */
    signal(SIGPIPE, SIG_IGN);
    static char dir[] = "/tmp/fuzz_tls.XXXXXX", crt[64], key[64];
    if (!mkdtemp(dir))
        abort();
    snprintf(crt, sizeof(crt), "%s/cert.pem", dir);
    snprintf(key, sizeof(key), "%s/key.pem", dir);
    make_cert(crt, key);
    char *argv[] = {"sente-lite", "--echo", "--workers", "1", "--max-connections", "64",
                    "--max-message-size", "64K", "--max-outbound-bytes", "16K",
                    "--message-retention", "4", "--max-http-connections", "8",
                    "--shm-size", "8M", "--log-level", "trace", "--tls-port", "1",
                    "--tls-cert", crt, "--tls-key", key, NULL};
    char *env[] = {NULL};
    sl_conf_action_t act;
    char err[256];
    if (sl_conf_parse(&FCONF, (int)(sizeof(argv) / sizeof(argv[0])) - 1, argv, env, &act, err,
                      sizeof(err)) != SL_OK) {
        fprintf(stderr, "%s\n", err);
        abort();
    }
    sl_conf = &FCONF;
    sl_clock_override(fake_now, fake_mono);
    if (sl_shm_create((size_t)FCONF.shm_size, 1, (uint64_t)FCONF.max_connections,
                      (uint64_t)FCONF.max_channels) != SL_OK)
        abort();
    if (sl_tls_load(err, sizeof(err)) != SL_OK) {
        fprintf(stderr, "%s\n", err);
        abort();
    }
    unlink(crt);
    unlink(key);
    rmdir(dir);
    sl_tls_rotate_tickets(); /* the master's first key */
    sl_wake_fds[0] = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (sl_worker_setup(&W, 0) != SL_OK)
        abort();
    sl_qsbr_register(&sl_shm->reg.qsbr, 0);
    sl_tel_init(open("/dev/null", O_WRONLY | O_CLOEXEC), 0, W.stats, true, SL_TRACE);
    CLIENT = SSL_CTX_new(TLS_client_method());
    if (!CLIENT)
        abort();
    SSL_CTX_set_verify(CLIENT, SSL_VERIFY_NONE, NULL);
    SSL_CTX_set_session_cache_mode(CLIENT, SSL_SESS_CACHE_OFF);
}

typedef struct {
    sl_conn_t *c;
    int peer;         /* the client's end */
    SSL *ssl;         /* the OpenSSL client, when the input made one */
    bool hs_done;     /* its handshake finished */
    bool raw_first;   /* raw bytes came before any TLS client */
    bool raw_after;   /* raw bytes went into the TLS stream: no more checks */
    uint8_t first;    /* the first raw byte */
    bool saw_output;  /* the raw-first check is done */
    uint8_t *out;     /* decrypted server output not yet checked */
    size_t out_len;
    int phase;        /* 0: HTTP, 1: WebSocket frames, 2: not checked */
    bool protocol;    /* upgraded to "/" */
    bool upgrade_sent;
    sl_ws_reader_t reader;
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

/* Decrypted server output: the 101, then a well-formed frame stream. */
static void check_plain(client_t *cl, const uint8_t *p, size_t r)
{
    if (cl->phase == 2 || cl->raw_after)
        return;
    uint8_t *np = realloc(cl->out, cl->out_len + r);
    if (np == NULL)
        abort();
    cl->out = np;
    memcpy(cl->out + cl->out_len, p, r);
    cl->out_len += r;
    if (cl->phase == 0) {
        uint8_t *end = memmem(cl->out, cl->out_len, "\r\n\r\n", 4);
        if (end == NULL)
            return;
        if (cl->out_len < 12 || memcmp(cl->out, "HTTP/1.1 101", 12) != 0) {
            cl->phase = 2;
            return;
        }
        size_t head = (size_t)(end + 4 - cl->out);
        cl->reader.deflate = memmem(cl->out, head, "permessage-deflate", 18) != NULL;
        memmove(cl->out, cl->out + head, cl->out_len - head);
        cl->out_len -= head;
        cl->phase = 1;
    }
    if (cl->out_len) {
        int rc = sl_ws_reader_feed(&cl->reader, cl->out, cl->out_len, &CHECK, cl, NULL);
        if (rc != 0) {
            fprintf(stderr, "server sent a bad frame stream over TLS: %d\n", rc);
            abort();
        }
        cl->out_len = 0;
    }
}

/* The server's answer to a client that began with raw bytes. */
static void check_raw_first(client_t *cl, const uint8_t *p, size_t r)
{
    if (cl->saw_output || r == 0)
        return;
    cl->saw_output = true;
    if (isalpha(cl->first)) {
        if (r < 12 || memcmp(p, "HTTP/1.1 400", 12) != 0) {
            fprintf(stderr, "plain HTTP on the TLS port got: %.*s\n", (int)SL_MIN(r, 40), p);
            abort();
        }
    } else if (p[0] != 0x15 && p[0] != 0x16) {
        fprintf(stderr, "raw TLS input got a first byte %#x\n", p[0]);
        abort();
    }
}

/* One client's side of the end of a turn. */
static void client_pump(client_t *cl)
{
    static uint8_t buf[1 << 16];
    if (cl->ssl && !cl->raw_after) {
        if (!cl->hs_done) {
            ERR_clear_error();
            int r = SSL_do_handshake(cl->ssl);
            if (r == 1) {
                cl->hs_done = true;
            } else {
                int e = SSL_get_error(cl->ssl, r);
                if (e != SSL_ERROR_WANT_READ && e != SSL_ERROR_WANT_WRITE)
                    cl->raw_after = true; /* the handshake failed: no more checks */
                return;
            }
        }
        for (;;) {
            ERR_clear_error();
            int r = SSL_read(cl->ssl, buf, sizeof(buf));
            if (r <= 0) {
                int e = SSL_get_error(cl->ssl, r);
                if (e != SSL_ERROR_WANT_READ && e != SSL_ERROR_WANT_WRITE)
                    cl->raw_after = true;
                break;
            }
            check_plain(cl, buf, (size_t)r);
        }
        /* A new session (ticket) to resume with later. */
        SSL_SESSION *s = SSL_get1_session(cl->ssl);
        if (s && SSL_SESSION_is_resumable(s)) {
            if (last_session)
                SSL_SESSION_free(last_session);
            last_session = s;
        } else if (s) {
            SSL_SESSION_free(s);
        }
        return;
    }
    ssize_t r;
    while ((r = read(cl->peer, buf, sizeof(buf))) > 0)
        if (cl->raw_first && !cl->ssl)
            check_raw_first(cl, buf, (size_t)r);
}

static void turn(void)
{
    event_base_loop(W.base, EVLOOP_NONBLOCK);
    sl_worker_turn_end(&W);
    for (int i = 0; i < NCONN; i++)
        client_pump(&C[i]);
}

static void tick(void)
{
    SL_CONNS_EACH(c)
        if (c->state != SL_CONN_DEAD)
            sl_conn_tick(c, clock_ms);
}

static void raw(client_t *cl, const uint8_t *p, size_t len)
{
    if (len == 0)
        return;
    if (!cl->ssl && !cl->raw_first) {
        cl->raw_first = true;
        cl->first = p[0];
    }
    if (cl->ssl)
        cl->raw_after = true;
    (void)!write(cl->peer, p, len);
}

static void tls_write(client_t *cl, const void *p, size_t len)
{
    ERR_clear_error();
    if (SSL_write(cl->ssl, p, (int)len) <= 0)
        cl->raw_after = true;
}

static void client_op(client_t *cl, uint8_t b, const uint8_t *data, size_t n, size_t *pos)
{
    if (cl->raw_first)
        return; /* the stream is not TLS from its start */
    if (!cl->ssl) {
        cl->ssl = SSL_new(CLIENT);
        if (!cl->ssl)
            abort();
        SSL_set_fd(cl->ssl, cl->peer);
        SSL_set_tlsext_host_name(cl->ssl, "localhost");
        if (b & 0x40)
            SSL_set_max_proto_version(cl->ssl, TLS1_2_VERSION);
        if ((b & 0x80) && last_session)
            SSL_set_session(cl->ssl, last_session);
        SSL_set_connect_state(cl->ssl);
        ERR_clear_error();
        (void)SSL_do_handshake(cl->ssl); /* the ClientHello */
        return;
    }
    if (!cl->hs_done || cl->raw_after) {
        if (!(b & 0x40)) /* consume the frame's bytes all the same */
            *pos = SL_MIN(n, *pos + 2 + (*pos + 1 < n ? data[*pos + 1] : 0));
        return;
    }
    if (b & 0x40) {
        static const char up[] = "GET %s HTTP/1.1\r\nHost: f\r\nUpgrade: websocket\r\n"
                                 "Connection: Upgrade\r\nSec-WebSocket-Key: "
                                 "dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
                                 "Sec-WebSocket-Extensions: permessage-deflate\r\n\r\n";
        char req[320];
        int l = snprintf(req, sizeof(req), up, (b & 0x80) ? "/echo" : "/");
        if (!cl->upgrade_sent && !(b & 0x80))
            cl->protocol = true;
        cl->upgrade_sent = true;
        tls_write(cl, req, (size_t)l);
        return;
    }
    uint8_t f = *pos < n ? data[(*pos)++] : 0;
    size_t len = *pos < n ? data[(*pos)++] : 0;
    len = SL_MIN(len, n - *pos);
    if (f == 0xff) {
        ERR_clear_error();
        (void)SSL_shutdown(cl->ssl);
        *pos += len;
        return;
    }
    static const int ops[8] = {SL_WS_OP_TEXT, SL_WS_OP_TEXT, SL_WS_OP_CONT, SL_WS_OP_CONT,
                               SL_WS_OP_BINARY, SL_WS_OP_PING, SL_WS_OP_PONG, SL_WS_OP_CLOSE};
    uint8_t fr[SL_WS_MAX_HEADER + 256];
    static const uint8_t mask[4] = {0x11, 0x22, 0x33, 0x44};
    size_t h = sl_ws_encode_header(fr, ops[f & 7], (f & 8) == 0, len, mask);
    if (f & 0x10)
        fr[0] |= 0x40; /* RSV1: a compressed message, if negotiated */
    memcpy(fr + h, data + *pos, len);
    sl_ws_mask(fr + h, len, mask, 0);
    tls_write(cl, fr, h + len);
    *pos += len;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t n)
{
    init_once();
    sl_ws_set_inflater(sl_pmd_inflate);
    for (int i = 0; i < NCONN; i++) {
        int sv[2];
        if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, sv) != 0)
            abort();
        memset(&C[i], 0, sizeof(C[i]));
        C[i].peer = sv[0];
        sl_ws_reader_init(&C[i].reader, false, 1 << 24);
        void *t = sl_tls_accept(sv[1]);
        if (t == NULL)
            abort();
        C[i].c = sl_conn_new(sv[1], false, &sl_xport_tls, t);
    }
    size_t pos = 0;
    while (pos < n) {
        uint8_t b = data[pos++];
        client_t *cl = &C[(b >> 2) % NCONN];
        switch (b & 3) {
        case 0: {
            size_t len = pos < n ? data[pos++] : 0;
            len = SL_MIN(len, n - pos);
            raw(cl, data + pos, len);
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
            client_op(cl, b, data, n, &pos);
            break;
        }
    }
    turn();
    /* Leave nothing behind for the next input. */
    SL_CONNS_EACH(c)
        sl_conn_abort(c, "fuzz input done");
    turn();
    for (int i = 0; i < NCONN; i++) {
        if (C[i].ssl)
            SSL_free(C[i].ssl);
        close(C[i].peer);
        free(C[i].out);
        sl_ws_reader_free(&C[i].reader);
    }
    return 0;
}
