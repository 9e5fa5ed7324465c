/*
 * sb_tls.c - sente-bench's wss:// and permessage-deflate.
 *
 * TLS: one SSL_CTX per process (made before the first connect; children of
 * --processes make their own), one SSL per connection on its non-blocking
 * socket, driven by the connection engine's events (sb_conn.c): the
 * handshake runs between connect and the upgrade request, then every read
 * and write of the connection goes through SSL_read/SSL_write.  Writes are
 * partial (SSL_MODE_ENABLE_PARTIAL_WRITE) from a buffer that may move
 * between retries (ACCEPT_MOVING_WRITE_BUFFER: the output buffer grows by
 * realloc).  --tls-ca verifies the chain and the name (--tls-name, else
 * --host); without it nothing is verified (a benchmark against a
 * throw-away certificate).  --tls-resume offers the newest session this
 * process received (a TLS 1.2 session or a TLS 1.3 ticket, from the
 * new-session callback), so handshakes after the first one resume.
 *
 * permessage-deflate: the client offers server_no_context_takeover and
 * client_no_context_takeover and never compresses what it sends (RFC 7692
 * allows an uncompressed message on a compressing connection).  Received
 * messages with RSV1 are inflated here: with server_no_context_takeover
 * (the answer sente-lite always gives) by one inflater per process, reset
 * per message; with context takeover by an inflater of the connection's
 * own, kept between messages.  The output is one process-wide buffer,
 * bounded by SB_WS_MAX_MESSAGE.  Without context takeover a message
 * inflates to the same bytes whatever connection it came on, and a
 * server that encodes once sends the same compressed bytes to all its
 * subscribers: the last few such messages are kept (input and output,
 * compared byte for byte), so a broadcast to 1,000 subscribers is
 * inflated once per process, not 1,000 times - the generator measures the
 * server, not its own inflater.
 *
 * Ownership: c->ssl and c->zctx belong to the connection engine, freed by
 * sb_tls_close / sb_pmd_release from its release().
 */
#include "sb.h"

#include <errno.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zlib.h>

static SSL_CTX *ctx;
/* --tls-resume: the newest session received, serialized.  Each handshake
 * gets its own copy: OpenSSL spends a TLS 1.3 session object once it has
 * been resumed (RFC 8446 C.4 asks clients to use a ticket once), and a
 * server that sends no new ticket on resumption (sente-lite keeps a ticket
 * while its key is current; nginx renews) would get every second
 * handshake in full otherwise.  The benchmark wants the server's
 * resumption cost, so it offers the same ticket again, as `openssl s_client
 * -sess_in` does. */
static unsigned char *last_session;
static int last_len;
static const struct sb_config *tcfg;

static int new_session(SSL *ssl, SSL_SESSION *s)
{
    (void)ssl;
    int n = i2d_SSL_SESSION(s, NULL);
    unsigned char *der = n > 0 ? malloc((size_t)n) : NULL;
    if (der) {
        unsigned char *p = der;
        i2d_SSL_SESSION(s, &p);
        free(last_session);
        last_session = der;
        last_len = n;
    }
    return 0; /* OpenSSL keeps its reference */
}

int sb_tls_init(const struct sb_config *cfg)
{
    tcfg = cfg;
    if (!cfg->tls || ctx)
        return 0;
    ctx = SSL_CTX_new(TLS_client_method());
    if (!ctx)
        return -1;
    SSL_CTX_set_mode(ctx, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER |
                              SSL_MODE_RELEASE_BUFFERS);
    SSL_CTX_set_options(ctx, SSL_OP_IGNORE_UNEXPECTED_EOF);
    static const unsigned char alpn[] = "\x08http/1.1";
    SSL_CTX_set_alpn_protos(ctx, alpn, sizeof(alpn) - 1);
    if (cfg->tls_ca) {
        if (SSL_CTX_load_verify_locations(ctx, cfg->tls_ca, NULL) != 1) {
            fprintf(stderr, "sente-bench: --tls-ca %s: cannot load it\n", cfg->tls_ca);
            SSL_CTX_free(ctx);
            ctx = NULL;
            return -1;
        }
        SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
    } else {
        SSL_CTX_set_verify(ctx, SSL_VERIFY_NONE, NULL);
    }
    if (cfg->tls_resume) {
        SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_CLIENT | SSL_SESS_CACHE_NO_INTERNAL_STORE);
        SSL_CTX_sess_set_new_cb(ctx, new_session);
    } else {
        SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);
        SSL_CTX_set_options(ctx, SSL_OP_NO_TICKET);
    }
    return 0;
}

void sb_tls_free(void)
{
    free(last_session);
    last_session = NULL;
    last_len = 0;
    if (ctx)
        SSL_CTX_free(ctx);
    ctx = NULL;
}

int sb_tls_start(struct sb_conn *c)
{
    SSL *ssl = SSL_new(ctx);
    if (!ssl)
        return -1;
    const char *name = tcfg->tls_name ? tcfg->tls_name : tcfg->host;
    if (SSL_set_fd(ssl, c->fd) != 1) {
        SSL_free(ssl);
        return -1;
    }
    /* SNI only for a name, never for an address (RFC 6066 3). */
    if (!strchr(name, ':') && strspn(name, "0123456789.") != strlen(name))
        SSL_set_tlsext_host_name(ssl, name);
    if (tcfg->tls_ca && SSL_set1_host(ssl, name) != 1) {
        SSL_free(ssl);
        return -1;
    }
    if (tcfg->tls_resume && last_session) {
        const unsigned char *p = last_session;
        SSL_SESSION *sess = d2i_SSL_SESSION(NULL, &p, last_len);
        if (sess) {
            SSL_set_session(ssl, sess);
            SSL_SESSION_free(sess); /* the SSL holds its own reference */
        }
    }
    SSL_set_connect_state(ssl);
    c->ssl = ssl;
    c->tls_wants_write = 0;
    return 0;
}

int sb_tls_step(struct sb_conn *c)
{
    ERR_clear_error();
    int r = SSL_do_handshake(c->ssl);
    if (r == 1) {
        c->tls_wants_write = 0;
        return 1;
    }
    int e = SSL_get_error(c->ssl, r);
    if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) {
        c->tls_wants_write = e == SSL_ERROR_WANT_WRITE;
        return 0;
    }
    return -1;
}

/* What SSL_read/SSL_write's failure means for the engine. */
static long io_error(struct sb_conn *c, int r)
{
    int e = SSL_get_error(c->ssl, r);
    switch (e) {
    case SSL_ERROR_WANT_READ:
        errno = EAGAIN;
        return -1;
    case SSL_ERROR_WANT_WRITE:
        c->tls_wants_write = 1;
        errno = EAGAIN;
        return -1;
    case SSL_ERROR_ZERO_RETURN:
        return 0; /* close_notify */
    case SSL_ERROR_SYSCALL:
        if (errno == 0)
            return 0; /* EOF (SSL_OP_IGNORE_UNEXPECTED_EOF makes it ZERO_RETURN) */
        return -1;
    default:
        errno = EPROTO;
        return -1;
    }
}

long sb_tls_recv(struct sb_conn *c, void *buf, size_t n)
{
    ERR_clear_error();
    errno = 0;
    int r = SSL_read(c->ssl, buf, n > (size_t)INT32_MAX ? INT32_MAX : (int)n);
    if (r > 0)
        return r;
    return io_error(c, r);
}

long sb_tls_send(struct sb_conn *c, const void *buf, size_t n)
{
    ERR_clear_error();
    errno = 0;
    c->tls_wants_write = 0;
    int r = SSL_write(c->ssl, buf, n > (size_t)INT32_MAX ? INT32_MAX : (int)n);
    if (r > 0)
        return r;
    return io_error(c, r);
}

int sb_tls_resumed(const struct sb_conn *c)
{
    return c->ssl && SSL_session_reused(c->ssl);
}

int sb_tls_pending(const struct sb_conn *c)
{
    return c->ssl && SSL_has_pending(c->ssl);
}

void sb_tls_close(struct sb_conn *c)
{
    if (!c->ssl)
        return;
    if (SSL_is_init_finished(c->ssl) && c->fd >= 0) {
        ERR_clear_error();
        (void)SSL_shutdown(c->ssl); /* our close_notify, if the socket takes it */
    }
    SSL_free(c->ssl);
    c->ssl = NULL;
}

/* ------------------------------------------------- permessage-deflate */

static z_stream shared_z; /* server_no_context_takeover: reset per message */
static bool shared_ready;
static uint8_t *zout;
static size_t zcap;

static int run_inflate(z_stream *z, const uint8_t *p, size_t n, size_t *len)
{
    static const uint8_t tail[4] = {0x00, 0x00, 0xff, 0xff};
    for (int part = 0; part < 2; part++) {
        z->next_in = (Bytef *)(part ? tail : p);
        z->avail_in = (uInt)(part ? 4 : n);
        for (;;) {
            if (*len == zcap) {
                size_t cap = zcap ? zcap * 2 : 64 * 1024;
                if (cap > SB_WS_MAX_MESSAGE)
                    return -1;
                uint8_t *nb = realloc(zout, cap);
                if (!nb)
                    return -1;
                zout = nb;
                zcap = cap;
            }
            z->next_out = zout + *len;
            z->avail_out = (uInt)(zcap - *len);
            int rc = inflate(z, Z_SYNC_FLUSH);
            *len = zcap - z->avail_out;
            if (rc == Z_STREAM_END)
                return 0; /* a final block: what follows is not data */
            if (rc != Z_OK && rc != Z_BUF_ERROR)
                return -1;
            if (z->avail_out > 0 && (z->avail_in == 0 || rc == Z_BUF_ERROR))
                break; /* all input taken (or no progress), all output out */
        }
    }
    return 0;
}

/* Recently inflated stateless messages (see the top): a direct-mapped
 * table by a hash of the compressed bytes, an entry used only when they
 * are equal; big enough for every message in flight (fan-out keeps up to
 * --inflight per publisher), bounded in memory. */
#define ZCACHE_N 2048
#define ZCACHE_IN_MAX (16 * 1024)
#define ZCACHE_OUT_MAX (64 * 1024)
static struct {
    uint8_t *in, *out;
    size_t in_len, out_len;
} zcache[ZCACHE_N];

/* All of the bytes, eight at a time (the deflate block header at the
 * start is often the same for similar messages: the whole input is
 * needed); a collision is only a miss. */
static uint32_t zhash(const uint8_t *p, size_t n)
{
    uint64_t h = 0x9e3779b97f4a7c15u ^ n, w;
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        memcpy(&w, p + i, 8);
        h = (h ^ w) * 0xff51afd7ed558ccdu;
        h ^= h >> 29;
    }
    for (; i < n; i++)
        h = (h ^ p[i]) * 0x100000001b3u;
    return (uint32_t)(h ^ (h >> 32));
}

static bool out_room(size_t n)
{
    if (n <= zcap)
        return true;
    uint8_t *nb = realloc(zout, n);
    if (!nb)
        return false;
    zout = nb;
    zcap = n;
    return true;
}

static int zcache_find(unsigned i, const uint8_t *p, size_t n, size_t *len)
{
    if (!zcache[i].in || zcache[i].in_len != n || memcmp(zcache[i].in, p, n) != 0 ||
        !out_room(zcache[i].out_len))
        return -1;
    memcpy(zout, zcache[i].out, zcache[i].out_len);
    *len = zcache[i].out_len;
    return 0;
}

static void zcache_add(unsigned i, const uint8_t *p, size_t n, size_t len)
{
    if (n > ZCACHE_IN_MAX || len > ZCACHE_OUT_MAX)
        return;
    uint8_t *in = malloc(n ? n : 1), *out = malloc(len ? len : 1);
    if (!in || !out) {
        free(in);
        free(out);
        return;
    }
    memcpy(in, p, n);
    memcpy(out, zout, len);
    free(zcache[i].in);
    free(zcache[i].out);
    zcache[i].in = in;
    zcache[i].out = out;
    zcache[i].in_len = n;
    zcache[i].out_len = len;
}

int sb_pmd_inflate(struct sb_conn *c, const uint8_t *p, size_t n, uint8_t **out, size_t *outlen)
{
    z_stream *z;
    size_t len = 0;
    unsigned slot = n <= ZCACHE_IN_MAX ? zhash(p, n) % ZCACHE_N : 0;
    if (c->pmd != 2 && n <= ZCACHE_IN_MAX && zcache_find(slot, p, n, &len) == 0) {
        *out = zout ? zout : (uint8_t *)"";
        *outlen = len;
        return 0;
    }
    if (c->pmd == 2) {
        if (!c->zctx) {
            c->zctx = calloc(1, sizeof(*c->zctx));
            if (!c->zctx || inflateInit2(c->zctx, -15) != Z_OK) {
                free(c->zctx);
                c->zctx = NULL;
                return -1;
            }
        }
        z = c->zctx;
    } else {
        if (!shared_ready) {
            if (inflateInit2(&shared_z, -15) != Z_OK)
                return -1;
            shared_ready = true;
        }
        z = &shared_z;
        inflateReset(z);
    }
    if (run_inflate(z, p, n, &len) != 0)
        return -1;
    if (c->pmd != 2)
        zcache_add(slot, p, n, len);
    *out = zout ? zout : (uint8_t *)"";
    *outlen = len;
    return 0;
}

void sb_pmd_release(struct sb_conn *c)
{
    if (c->zctx) {
        inflateEnd(c->zctx);
        free(c->zctx);
        c->zctx = NULL;
    }
}
