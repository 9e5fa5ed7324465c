/*
 * tls.c - TLS with OpenSSL (sl_tls.h): server contexts, SNI, reload,
 * shared session tickets, failures by reason, and the TLS transport.
 *
 * Contexts: one per --tls-cert/--tls-key pair, the first the default.  A
 * client's SNI name picks the first context whose certificate names it
 * (X509_check_host); an unknown name gets the default.  Every context:
 * the --tls-min-version floor, the system's cipher policy, ALPN
 * "http/1.1", no renegotiation, SSL_MODE_RELEASE_BUFFERS (an idle
 * connection holds no 16 KiB read or write buffer), no server-side session
 * cache: resumption is by session tickets, sealed with the keys in shared
 * memory (sl_tickets.h), so any worker resumes a session any other began.
 * A reload builds a complete new set before it replaces the old one, so a
 * failure changes nothing; live connections keep the context they began
 * with (OpenSSL counts its references).
 *
 * The transport: non-blocking, on the socket itself (no memory BIO: no
 * extra copy).  The handshake happens in the first reads.  Before the
 * first byte is handed to OpenSSL it is peeked at: a TLS handshake starts
 * with 0x16; an ASCII letter is plain HTTP, answered "400 plain HTTP
 * request was sent to the TLS port" (nginx does the same) and closed.
 * Output: the turn's queued segments are packed into records of up to 16
 * KiB, one SSL_write each (a 40-byte frame to 1,000 subscribers is one
 * record each, not one per frame).  When the socket is full, OpenSSL
 * requires the same bytes again: they stay at the head of the queue,
 * pinned (sl_outq_t.pinned), until SSL_write takes them - held and
 * counted as queued output, never copied.
 *
 * After a TLS 1.3 handshake the records are ours (below, "our record
 * layer"; sl_tlsrec.h): the SSL object is freed and an idle connection
 * holds ~300 B of TLS state instead of ~14 KB (docs/benchmarks.md).
 *
 * Memory: every allocation OpenSSL makes goes through counting hooks
 * (sl_tls_count_heap), so /stats tls-heap-bytes is what it holds - the
 * SSL objects (~14 KB each once idle over TLS 1.2: docs/benchmarks.md has
 * the breakdown), their record buffers, and our record layer's partial
 * records.  A handshake's temporaries (~40
 * KiB) leave holes between the long-lived SSL objects; the worker's tick
 * gives those pages back (malloc_trim, once handshakes have paused for
 * half a second): 22 KB -> 16.5 KB of PSS per idle wss connection.
 */
#include "sl_tls.h"
#include "sl_conf.h"
#include "sl_crash.h"
#include "sl_tel.h"
#include "sl_tickets.h"
#include "sl_tlsrec.h"

#include <errno.h>
#include <malloc.h>
#include <openssl/core_names.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/rand.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <urcu/uatomic.h>

#define SL_TLS_RECORD 16384 /* the largest TLS record's payload */
/* Records our TLS 1.3 layer opens per read at most (one read per
 * connection per turn): what a turn costs is bounded whatever the records
 * carry (OpenSSL's SSL_read returns one record's data per call). */
#define SL_TLS_READ_RECORDS 64

typedef struct {
    SSL_CTX *ctx[SL_MAX_TLS_CERTS];
    /* Each one's twin for TLS 1.2 handshakes (sni_cb switches to it): the
     * same certificate, key, chain and settings without the key-log and
     * message callbacks, which only TLS 1.3 needs (the switch to our
     * record layer) - with a key-log callback set, OpenSSL formats every
     * secret as hex with a sprintf per byte, for TLS 1.2 the 80 bytes of
     * its CLIENT_RANDOM line, on every handshake. */
    SSL_CTX *ctx12[SL_MAX_TLS_CERTS];
    X509 *cert[SL_MAX_TLS_CERTS]; /* each context's leaf (owned by the context) */
    int n;
} ctxset_t;

static ctxset_t live; /* what new handshakes use */
static uint64_t live_fp; /* its fingerprint (set_fingerprint) */
static sl_worker_stats_t *tls_stats;

/* ------------------------------------------------ OpenSSL's heap */

/* Bytes of heap OpenSSL holds in this process, by usable size: the SSL
 * objects, their record buffers (a pinned record's, a partial record's),
 * contexts.  A worker inherits the master's count (the contexts it built
 * before the fork) and goes on from it; it publishes only what it added
 * (heap_base).  Relaxed atomics: OpenSSL may be called from more than
 * one thread. */
static uint64_t heap_bytes;
static uint64_t heap_freed; /* bytes OpenSSL freed since the last trim */

static void *heap_malloc(size_t n, const char *file, int line)
{
    (void)file;
    (void)line;
    void *p = malloc(n);
    if (p)
        __atomic_add_fetch(&heap_bytes, malloc_usable_size(p), __ATOMIC_RELAXED);
    return p;
}

static void heap_free(void *p, const char *file, int line)
{
    (void)file;
    (void)line;
    if (p == NULL)
        return;
    size_t n = malloc_usable_size(p);
    __atomic_sub_fetch(&heap_bytes, n, __ATOMIC_RELAXED);
    __atomic_add_fetch(&heap_freed, n, __ATOMIC_RELAXED);
    free(p);
}

static void *heap_realloc(void *p, size_t n, const char *file, int line)
{
    (void)file;
    (void)line;
    if (n == 0) { /* realloc(p, 0) frees p */
        heap_free(p, file, line);
        return NULL;
    }
    size_t old = p ? malloc_usable_size(p) : 0;
    void *q = realloc(p, n);
    if (q) {
        __atomic_sub_fetch(&heap_bytes, old, __ATOMIC_RELAXED);
        __atomic_add_fetch(&heap_freed, old, __ATOMIC_RELAXED);
        __atomic_add_fetch(&heap_bytes, malloc_usable_size(q), __ATOMIC_RELAXED);
    }
    return q;
}

/* Our record layer's own buffers (a partial record, undelivered
 * plaintext): counted in heap_bytes (tls-heap-bytes is the TLS state this
 * process holds), but not in heap_freed - that is what OpenSSL freed, the
 * trim trigger (review rw16 L1: a trickling peer pumped it).  Cleansed
 * before they are freed (they may hold plaintext). */
static void *own_alloc(size_t n)
{
    void *p = malloc(n);
    if (p)
        __atomic_add_fetch(&heap_bytes, malloc_usable_size(p), __ATOMIC_RELAXED);
    return p;
}

static void own_free(void *p)
{
    if (p == NULL)
        return;
    size_t n = malloc_usable_size(p);
    OPENSSL_cleanse(p, n);
    __atomic_sub_fetch(&heap_bytes, n, __ATOMIC_RELAXED);
    free(p);
}

static uint64_t heap_base; /* heap_bytes when the worker started */

void sl_tls_set_stats(sl_worker_stats_t *stats)
{
    tls_stats = stats;
    /* What the worker inherited from the master (its contexts, built
     * before the fork, shared copy-on-write) is not the worker's: its
     * tls-heap-bytes is what OpenSSL allocated since (review rq16 L1),
     * so the /stats total does not count the master's part once per
     * worker. */
    heap_base = __atomic_load_n(&heap_bytes, __ATOMIC_RELAXED);
}

int sl_tls_count_heap(void)
{
    return CRYPTO_set_mem_functions(heap_malloc, heap_realloc, heap_free) ? SL_OK : SL_ERROR;
}

void sl_tls_housekeep(int64_t now_ms)
{
    /* Trim once handshakes have stopped for half a second (while they go
     * on, the next ones reuse the holes), and only when it is worth it and
     * not often: a trim walks the whole heap (up to ~20 ms measured under
     * load, more with a large heap) and serves nobody meanwhile, so a peer
     * handshaking every few seconds must not buy one each time (review
     * rq16 M1).  Worth it: OpenSSL has freed SL_TLS_TRIM_FREED bytes since
     * the last trim (a handshake's temporaries, closed connections' SSL
     * objects); not often: SL_TLS_TRIM_INTERVAL_MS apart.  Counted:
     * tls-trims, tls-trim-ms. */
    static uint64_t seen;
    static int64_t seen_ms, trimmed_ms = INT64_MIN / 2;
    if (tls_stats == NULL)
        return;
    uint64_t held = __atomic_load_n(&heap_bytes, __ATOMIC_RELAXED);
    CMM_STORE_SHARED(tls_stats->tls_heap_bytes, held > heap_base ? held - heap_base : 0);
    uint64_t hs = uatomic_read(&tls_stats->tls_handshakes);
    if (hs != seen) {
        seen = hs;
        seen_ms = now_ms;
        return;
    }
    if (now_ms - seen_ms < 500 || now_ms - trimmed_ms < SL_TLS_TRIM_INTERVAL_MS ||
        __atomic_load_n(&heap_freed, __ATOMIC_RELAXED) < SL_TLS_TRIM_FREED)
        return;
    trimmed_ms = now_ms;
    __atomic_store_n(&heap_freed, 0, __ATOMIC_RELAXED);
    int64_t t0 = sl_mono_us();
    malloc_trim(0);
    uatomic_add(&tls_stats->tls_trims, 1);
    uatomic_add(&tls_stats->tls_trim_us, (uint64_t)(sl_mono_us() - t0));
}

bool sl_tls_enabled(void)
{
    return live.n > 0;
}

static void count(sl_err_t e)
{
    if (tls_stats)
        uatomic_add(&tls_stats->errors[e], 1);
}

/* The first error on OpenSSL's queue, as text; the queue is cleared. */
static const char *ssl_reason(char *buf, size_t size)
{
    unsigned long e = ERR_get_error();
    if (e == 0)
        snprintf(buf, size, "%s", errno ? strerror(errno) : "unknown error");
    else
        ERR_error_string_n(e, buf, size);
    ERR_clear_error();
    return buf;
}

/* ---------------------------------------------------------- contexts */

static int alpn_cb(SSL *ssl, const unsigned char **out, unsigned char *outlen,
                   const unsigned char *in, unsigned int inlen, void *arg)
{
    static const unsigned char h11[] = "\x08http/1.1";
    unsigned char *sel;
    if (SSL_select_next_proto(&sel, outlen, h11, sizeof(h11) - 1, in, inlen) !=
        OPENSSL_NPN_NEGOTIATED)
        return SSL_TLSEXT_ERR_NOACK; /* no http/1.1 offered: go on without ALPN */
    *out = sel;
    return SSL_TLSEXT_ERR_OK;
}

/* Called for every ClientHello (with or without a name), once the
 * version is chosen. */
static int sni_cb(SSL *ssl, int *alert, void *arg)
{
    const char *name = SSL_get_servername(ssl, TLSEXT_NAMETYPE_host_name);
    int pick = 0; /* an unknown name, or none: the default certificate */
    for (int k = 0; name != NULL && live.n > 1 && k < live.n; k++)
        if (X509_check_host(live.cert[k], name, 0, 0, NULL) == 1) {
            pick = k;
            break;
        }
    if (SSL_version(ssl) == TLS1_2_VERSION && live.ctx12[pick] != NULL) {
        /* (Tickets stay with the first context, OpenSSL's session
         * context: one key set for all.) */
        SSL_set_SSL_CTX(ssl, live.ctx12[pick]);
        SSL_set_msg_callback(ssl, NULL);
    } else if (pick > 0) {
        SSL_set_SSL_CTX(ssl, live.ctx[pick]);
    }
    return SSL_TLSEXT_ERR_OK;
}

/* Session tickets: sealed with the current shared key; a ticket sealed
 * with the previous key is accepted and renewed (2); an unknown or
 * expired key means a full handshake (0). */
static int ticket_cb(SSL *ssl, unsigned char name[16], unsigned char *iv, EVP_CIPHER_CTX *cctx,
                     EVP_MAC_CTX *hctx, int enc)
{
    sl_ticket_key_t k;
    OSSL_PARAM params[] = {OSSL_PARAM_construct_utf8_string(OSSL_MAC_PARAM_DIGEST, "SHA256", 0),
                           OSSL_PARAM_construct_end()};
    int rc;
    /* Every path ends at the cleanse below: a key copied into k (even one
     * that does not match) never stays on the stack. */
    if (enc) {
        if (sl_tickets_current(&sl_shm->tickets, &k) != SL_OK)
            rc = 0; /* no key yet: no ticket */
        else if (RAND_bytes(iv, EVP_MAX_IV_LENGTH) != 1)
            rc = -1;
        else {
            memcpy(name, k.name, SL_TICKET_NAME);
            rc = EVP_EncryptInit_ex(cctx, EVP_aes_256_cbc(), NULL, k.aes, iv) == 1 &&
                         EVP_MAC_init(hctx, k.hmac, sizeof(k.hmac), params) == 1
                     ? 1
                     : -1;
        }
    } else {
        int found = sl_tickets_find(&sl_shm->tickets, name, &k);
        if (found == 0)
            rc = 0;
        else
            rc = EVP_MAC_init(hctx, k.hmac, sizeof(k.hmac), params) == 1 &&
                         EVP_DecryptInit_ex(cctx, EVP_aes_256_cbc(), NULL, k.aes, iv) == 1
                     ? found
                     : -1;
    }
    OPENSSL_cleanse(&k, sizeof(k));
    return rc;
}

static void ctxset_free(ctxset_t *s)
{
    for (int k = 0; k < s->n; k++) {
        SSL_CTX_free(s->ctx[k]); /* connections still using one keep it */
        SSL_CTX_free(s->ctx12[k]);
    }
    memset(s, 0, sizeof(*s));
}

/* A certificate outside its validity period is refused: serving it would
 * fail every client's verification. */
static int check_dates(X509 *x, const char *file, char *err, size_t errsz)
{
    if (X509_cmp_current_time(X509_get0_notAfter(x)) <= 0) {
        snprintf(err, errsz, "--tls-cert %s: the certificate has expired", file);
        return SL_ERROR;
    }
    if (X509_cmp_current_time(X509_get0_notBefore(x)) >= 0) {
        snprintf(err, errsz, "--tls-cert %s: the certificate is not valid yet", file);
        return SL_ERROR;
    }
    return SL_OK;
}

static void keylog_cb(const SSL *ssl, const char *line);
static void msg_cb(int write_p, int version, int content_type, const void *buf, size_t len,
                   SSL *ssl, void *arg);

/* A context with every setting but the certificate (see above);
 * `keylog`: with the key-log and message callbacks (TLS 1.3's switch). */
static SSL_CTX *ctx_base(bool keylog)
{
    SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());
    if (ctx == NULL)
        return NULL;
    int floor = strcmp(sl_conf->tls_min_version, "1.3") == 0 ? TLS1_3_VERSION : TLS1_2_VERSION;
    SSL_CTX_set_min_proto_version(ctx, floor);
    /* IGNORE_UNEXPECTED_EOF: a peer that closes TCP without close_notify
     * (most HTTP clients, health checks, browsers) is an end of stream
     * (SSL_ERROR_ZERO_RETURN), not an error counted as a bad record. */
    SSL_CTX_set_options(ctx, SSL_OP_NO_RENEGOTIATION | SSL_OP_CIPHER_SERVER_PREFERENCE |
                                 SSL_OP_NO_COMPRESSION | SSL_OP_IGNORE_UNEXPECTED_EOF);
    SSL_CTX_set_mode(ctx, SSL_MODE_RELEASE_BUFFERS | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
    SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);
    SSL_CTX_set_num_tickets(ctx, 1);
    SSL_CTX_set_timeout(ctx, 2 * SL_TLS_TICKET_ROTATE_MS / 1000);
    SSL_CTX_set_session_id_context(ctx, (const unsigned char *)"sente-lite", 10);
    SSL_CTX_set_alpn_select_cb(ctx, alpn_cb, NULL);
    SSL_CTX_set_tlsext_servername_callback(ctx, sni_cb);
    SSL_CTX_set_tlsext_ticket_key_evp_cb(ctx, ticket_cb);
    if (keylog) {
        SSL_CTX_set_keylog_callback(ctx, keylog_cb);
        SSL_CTX_set_msg_callback(ctx, msg_cb);
    }
    return ctx;
}

/* ctx's twin for TLS 1.2 (ctxset_t): its certificate, key and chain. */
static SSL_CTX *ctx_twin12(SSL_CTX *ctx)
{
    SSL_CTX *tw = ctx_base(false);
    STACK_OF(X509) *chain = NULL;
    if (tw == NULL || SSL_CTX_use_certificate(tw, SSL_CTX_get0_certificate(ctx)) != 1 ||
        SSL_CTX_use_PrivateKey(tw, SSL_CTX_get0_privatekey(ctx)) != 1 ||
        SSL_CTX_get0_chain_certs(ctx, &chain) != 1 ||
        (chain != NULL && SSL_CTX_set1_chain(tw, chain) != 1)) {
        SSL_CTX_free(tw);
        ERR_clear_error();
        return NULL; /* TLS 1.2 handshakes keep the first context */
    }
    return tw;
}

static SSL_CTX *ctx_new(const char *cert, const char *key, X509 **leaf, char *err, size_t errsz)
{
    char why[256];
    SSL_CTX *ctx = ctx_base(true);
    if (ctx == NULL) {
        snprintf(err, errsz, "TLS: %s", ssl_reason(why, sizeof(why)));
        return NULL;
    }
    errno = 0;
    if (SSL_CTX_use_certificate_chain_file(ctx, cert) != 1) {
        snprintf(err, errsz, "--tls-cert %s: %s", cert, ssl_reason(why, sizeof(why)));
        goto fail;
    }
    errno = 0;
    if (SSL_CTX_use_PrivateKey_file(ctx, key, SSL_FILETYPE_PEM) != 1) {
        int r = ERR_GET_REASON(ERR_peek_error());
        if (r == X509_R_KEY_VALUES_MISMATCH || r == X509_R_KEY_TYPE_MISMATCH) {
            ERR_clear_error();
            snprintf(err, errsz, "--tls-key %s does not match the certificate of --tls-cert %s",
                     key, cert);
        } else {
            snprintf(err, errsz, "--tls-key %s: %s", key, ssl_reason(why, sizeof(why)));
        }
        goto fail;
    }
    if (SSL_CTX_check_private_key(ctx) != 1) {
        ERR_clear_error();
        snprintf(err, errsz, "--tls-key %s does not match the certificate of --tls-cert %s", key,
                 cert);
        goto fail;
    }
    *leaf = SSL_CTX_get0_certificate(ctx);
    if (check_dates(*leaf, cert, err, errsz) != SL_OK)
        goto fail;
    return ctx;
fail:
    SSL_CTX_free(ctx);
    return NULL;
}

/* Every --tls-cert/--tls-key pair into `next` (all or nothing). */
static int set_load(ctxset_t *next, char *err, size_t errsz)
{
    const sl_conf_t *cf = sl_conf;
    memset(next, 0, sizeof(*next));
    for (int k = 0; k < cf->tls_cert.n; k++) {
        next->ctx[k] = ctx_new(cf->tls_cert.path[k], cf->tls_key.path[k], &next->cert[k], err,
                               errsz);
        if (next->ctx[k] == NULL) {
            ctxset_free(next);
            return SL_ERROR;
        }
        next->ctx12[k] = ctx_twin12(next->ctx[k]);
        if (next->ctx12[k] == NULL) { /* not silent (review rd16 F1) */
            count(SL_ERR_TLS_TWIN_FAILED);
            SL_TEL(SL_EV_TLS_RELOAD_FAILED, SL_WARN, SL_TF_S("certificate", cf->tls_cert.path[k]),
                   SL_TF_S("reason", "its TLS 1.2 context was not built"),
                   SL_TF_S("kept", "TLS 1.2 handshakes on its TLS 1.3 context"));
        }
        next->n = k + 1;
    }
    return SL_OK;
}

/* SHA-256 over each pair's chain (leaf first: the SHA-256 of each
 * certificate's DER), its first 8 bytes; the key is the leaf's own (it
 * must match), so the chains say what is served. */
static uint64_t set_fingerprint(const ctxset_t *s)
{
    unsigned char d[EVP_MAX_MD_SIZE], out[EVP_MAX_MD_SIZE];
    unsigned int dlen = 0, olen = 0;
    EVP_MD_CTX *md = EVP_MD_CTX_new();
    if (md == NULL || EVP_DigestInit_ex(md, EVP_sha256(), NULL) != 1) {
        EVP_MD_CTX_free(md);
        return 1;
    }
    for (int k = 0; k < s->n; k++) {
        STACK_OF(X509) *chain = NULL;
        SSL_CTX_get0_chain_certs(s->ctx[k], &chain);
        int n = chain ? sk_X509_num(chain) : 0;
        for (int i = -1; i < n; i++) {
            X509 *x = i < 0 ? s->cert[k] : sk_X509_value(chain, i);
            if (X509_digest(x, EVP_sha256(), d, &dlen) == 1)
                EVP_DigestUpdate(md, d, dlen);
        }
        EVP_DigestUpdate(md, "|", 1); /* the end of pair k */
    }
    EVP_DigestFinal_ex(md, out, &olen);
    EVP_MD_CTX_free(md);
    uint64_t fp = 0;
    memcpy(&fp, out, sizeof(fp));
    return fp ? fp : 1;
}

static void set_install(ctxset_t *next)
{
    ctxset_free(&live);
    live = *next;
    live_fp = set_fingerprint(&live);
}

int sl_tls_load(char *err, size_t errsz)
{
    ctxset_t next;
    if (set_load(&next, err, errsz) != SL_OK)
        return SL_ERROR;
    set_install(&next);
    return SL_OK;
}

uint64_t sl_tls_fingerprint(void)
{
    return sl_tls_enabled() ? live_fp : 0;
}

void sl_tls_reload(uint64_t expect)
{
    if (!sl_tls_enabled() || (expect != 0 && expect == live_fp))
        return; /* (a worker: the master serves what we serve) */
    char err[512], fp[24];
    ctxset_t next;
    if (set_load(&next, err, sizeof(err)) == SL_OK) {
        uint64_t got = set_fingerprint(&next);
        if (expect == 0 || got == expect) {
            set_install(&next);
            snprintf(fp, sizeof(fp), "%016llx", (unsigned long long)live_fp);
            SL_TEL(SL_EV_TLS_RELOADED, SL_INFO, SL_TF_I("certificates", live.n),
                   SL_TF_S("fingerprint", fp));
            return;
        }
        ctxset_free(&next);
        snprintf(err, sizeof(err),
                 "the certificate files changed after the master read them (master %016llx, "
                 "read here %016llx)",
                 (unsigned long long)expect, (unsigned long long)got);
    }
    SL_TEL(SL_EV_TLS_RELOAD_FAILED, SL_ERROR_LEVEL, SL_TF_S("reason", err),
           SL_TF_S("kept", "the certificates in use"));
}

void sl_tls_rotate_tickets(void)
{
    if (sl_tickets_rotate(&sl_shm->tickets) != SL_OK)
        SL_TEL(SL_EV_TLS_RELOAD_FAILED, SL_ERROR_LEVEL,
               SL_TF_S("reason", "no random bytes for a new session-ticket key"),
               SL_TF_S("kept", "the session-ticket keys in use"));
}

/* ---------------------------------------------------------- transport */

/* After a TLS 1.3 handshake the transport does the records itself
 * (sl_tlsrec.h) and frees the SSL object (docs/benchmarks.md, "Idle
 * memory per wss connection"): t->ssl is NULL from then on, t->own set.
 * Anything else - TLS 1.2, a suite we do not do, input OpenSSL already
 * holds - stays with OpenSSL for the connection's life.
 *
 * The switch (try_own, right after SSL_do_handshake returns 1, before any
 * SSL_read of application data) needs:
 * - the two application traffic secrets, caught by the keylog callback
 *   during the handshake (kept in t->rl, never logged);
 * - the sequence numbers: OpenSSL's message callback counts the records it
 *   read after the client's Finished (must be 0: the handshake is driven
 *   by SSL_do_handshake, and without read-ahead - off for TLS 1.3 from
 *   the ServerHello on - OpenSSL reads record by record, so none of the
 *   client's application records was read) and
 *   the records it wrote after our Finished (the NewSessionTicket
 *   records: our write sequence starts there);
 * - nothing pending in OpenSSL (SSL_has_pending) and no shutdown begun.
 *
 * Ours, per connection: the keys (~200 B), a partial incoming record
 * (only while incomplete, bounded by SL_TLSREC_MAX_IN), plaintext
 * decoded but not yet read (only when the caller's buffer was short).
 * Output packs the turn's queued segments into records as the OpenSSL
 * path does (one staging record per worker); a record the socket took
 * only part of is resealed from the same plaintext (pinned at the head of
 * the queue, as for SSL_write) with the same sequence number - the same
 * bytes - and sent on from where it stopped, so no ciphertext is held. */
typedef struct {
    sl_xport_ctx_t head; /* first: &sl_xport_tls (sl_xport_of) */
    SSL *ssl;            /* NULL once the records are ours */
    int fd;
    sl_tlsrec_t rl;      /* the traffic secrets (caught during the handshake), then keys */
    uint8_t *part;       /* a partial incoming record (own), allocated at the
                            record's full length once its header is known */
    uint8_t *left;       /* decoded plaintext the last read had no room for (own) */
    uint16_t part_len, left_off, left_len; /* part_len: bytes of it received (in
                            phdr while fewer than the header's 5) */
    uint8_t phdr[SL_TLSREC_HDR];
    uint8_t rsec_len, wsec_len; /* the secrets caught (0: not yet) */
    uint16_t hs_read, hs_wrote; /* records read after the client's Finished, written after ours */
    uint32_t pend_len;   /* a refused record's length: the queue's pinned head */
    uint32_t w_off;      /* own: bytes of the record under way already sent */
    uint8_t ctl[5];      /* own: a record of our own (KeyUpdate, alert) under way */
    uint8_t ctl_len, ctl_type;
    uint8_t rd_end;      /* own: 1 the peer's end of stream, 2 an error, to be read next */
    bool peeked;         /* the first byte was looked at */
    bool ra_wait;        /* OpenSSL's path: its last read wanted the socket (what
                            read-ahead holds, if anything, is a partial record) */
    bool refused;        /* plain HTTP answered 400: what comes is drained raw */
    bool established;    /* handshake done */
    bool read_wants_write;
    bool own;            /* the records are ours (t->ssl freed) */
    bool cli_fin, srv_fin; /* the Finished messages seen */
    bool ku_owed;        /* own: the peer asked for our KeyUpdate */
    bool sent_close, got_close; /* own: close_notify sent / received */
    bool failed;         /* own: a record refused (alert sent or not): nothing
                            more is read or written, not even raw (review rw16
                            H1: raw bytes after a refused record were handed
                            up as if authenticated) */
} tls_conn_t;

void *sl_tls_accept(int fd)
{
    tls_conn_t *t = calloc(1, sizeof(*t));
    if (t == NULL || live.n == 0 || (t->ssl = SSL_new(live.ctx[0])) == NULL ||
        SSL_set_fd(t->ssl, fd) != 1) {
        if (t)
            SSL_free(t->ssl);
        free(t);
        ERR_clear_error();
        count(SL_ERR_TLS_HANDSHAKE);
        return NULL;
    }
    SSL_set_app_data(t->ssl, t);
    SSL_set_accept_state(t->ssl);
    /* Read-ahead: OpenSSL reads what the socket has (a record header and
     * its body, a flight of several records) in one read(2) instead of
     * two per record - 2 reads instead of 6 for a resumed TLS 1.2
     * handshake.  Off again as soon as the ServerHello says TLS 1.3
     * (msg_cb): the switch to our record layer needs OpenSSL to have read
     * nothing past the client's Finished. */
    SSL_set_read_ahead(t->ssl, 1);
    t->fd = fd;
    t->head.ops = &sl_xport_tls;
    return t;
}

static int unhex(char c)
{
    return c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
}

/* "CLIENT_TRAFFIC_SECRET_0 <client random> <secret>" (and SERVER_...):
 * the application traffic secrets, kept for the switch.  Nothing else of
 * the key log is looked at, nothing is written anywhere. */
static void keylog_cb(const SSL *ssl, const char *line)
{
    tls_conn_t *t = SSL_get_app_data(ssl);
    bool cli = strncmp(line, "CLIENT_TRAFFIC_SECRET_0 ", 24) == 0;
    if (t == NULL || (!cli && strncmp(line, "SERVER_TRAFFIC_SECRET_0 ", 24) != 0))
        return;
    const char *h = strchr(line + 24, ' ');
    uint8_t *out = cli ? t->rl.rd.secret : t->rl.wr.secret;
    size_t n = 0;
    for (h = h ? h + 1 : ""; n < sizeof(t->rl.rd.secret) && unhex(h[0]) >= 0 && unhex(h[1]) >= 0;
         h += 2)
        out[n++] = (uint8_t)(unhex(h[0]) << 4 | unhex(h[1]));
    if (*h != '\0')
        n = 0; /* not what we expect: no switch */
    if (cli)
        t->rsec_len = (uint8_t)n;
    else
        t->wsec_len = (uint8_t)n;
}

/* Counts records OpenSSL reads after the client's Finished and writes
 * after ours: the sequence numbers our record layer starts from.  A
 * handshake message's callback comes once the message is done, after its
 * record's header: the Finished record itself is not counted. */
static void msg_cb(int write_p, int version, int content_type, const void *buf, size_t len,
                   SSL *ssl, void *arg)
{
    (void)version;
    (void)arg;
    tls_conn_t *t = SSL_get_app_data(ssl);
    if (t == NULL)
        return;
    if (content_type == SSL3_RT_HEADER) {
        if (write_p && t->srv_fin)
            t->hs_wrote++;
        else if (!write_p && t->cli_fin)
            t->hs_read++;
    } else if (content_type == SSL3_RT_HANDSHAKE && len > 0 && write_p &&
               ((const uint8_t *)buf)[0] == SSL3_MT_SERVER_HELLO) {
        /* The version is chosen (a HelloRetryRequest is a ServerHello
         * too): read-ahead stays for TLS 1.2 only (sl_tls_accept). */
        if (SSL_version(ssl) != TLS1_2_VERSION)
            SSL_set_read_ahead(ssl, 0);
    } else if (content_type == SSL3_RT_HANDSHAKE && len > 0 &&
               ((const uint8_t *)buf)[0] == SSL3_MT_FINISHED) {
        if (write_p)
            t->srv_fin = true;
        else
            t->cli_fin = true;
    }
}

/* The handshake is done: take the records over if we can (see above). */
static void try_own(tls_conn_t *t)
{
    const SSL_CIPHER *c = SSL_get_current_cipher(t->ssl);
    int suite = c ? sl_tlsrec_suite(SSL_CIPHER_get_protocol_id(c)) : -1;
    if (SSL_version(t->ssl) == TLS1_3_VERSION && suite >= 0 && !SL_FAULT("tls.own.off") &&
        t->cli_fin && t->srv_fin && t->hs_read == 0 && !SSL_has_pending(t->ssl) &&
        SSL_get_shutdown(t->ssl) == 0 && t->rsec_len == sl_tlsrec_secret_len(suite) &&
        /* a client that negotiated max_fragment_length stays with OpenSSL,
         * which honours it (review rw16 M1: ours writes 16 KiB records) */
        SSL_SESSION_get_max_fragment_length(SSL_get_session(t->ssl)) ==
            TLSEXT_max_fragment_length_DISABLED &&
        t->wsec_len == t->rsec_len) {
        uint8_t rs[48], ws[48];
        memcpy(rs, t->rl.rd.secret, sizeof(rs));
        memcpy(ws, t->rl.wr.secret, sizeof(ws));
        t->rl.suite = (uint8_t)suite;
        if (sl_tlsrec_set(&t->rl.rd, suite, rs, t->rsec_len) == SL_OK &&
            sl_tlsrec_set(&t->rl.wr, suite, ws, t->wsec_len) == SL_OK) {
            t->rl.wr.seq = t->hs_wrote; /* the NewSessionTicket records */
            SSL_set_app_data(t->ssl, NULL);
            SSL_free(t->ssl);
            t->ssl = NULL;
            t->own = true;
        }
        OPENSSL_cleanse(rs, sizeof(rs));
        OPENSSL_cleanse(ws, sizeof(ws));
        if (t->own)
            return;
    }
    /* OpenSSL's path (test build: the fault point puts a TLS 1.3
     * connection there): the secrets are not needed, nor the counting. */
    OPENSSL_cleanse(&t->rl, sizeof(t->rl));
    t->rsec_len = t->wsec_len = 0;
    SSL_set_msg_callback(t->ssl, NULL);
}

/* Plain HTTP on the TLS port: read what it sent, answer 400; the
 * connection then lingers (SL_XPORT_REFUSED): half-close, drain. */
static void answer_plain_http(int fd)
{
    static const char resp[] =
        "HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain\r\nContent-Length: 54\r\n"
        "Connection: close\r\n\r\nplain HTTP request was sent to the TLS port: use https\n";
    char sink[4096];
    for (int k = 0; k < 4 && recv(fd, sink, sizeof(sink), MSG_DONTWAIT) > 0; k++) {
    }
    if (send(fd, resp, sizeof(resp) - 1, MSG_DONTWAIT | MSG_NOSIGNAL) < 0) {
    }
}

/* A failed handshake (or a fatal TLS error later), counted by reason. */
static void count_failure(tls_conn_t *t)
{
    unsigned long e = ERR_peek_error();
    int r = ERR_GET_REASON(e);
    sl_err_t why = SL_ERR_TLS_HANDSHAKE;
    if (r == SSL_R_UNSUPPORTED_PROTOCOL || r == SSL_R_TLSV1_ALERT_PROTOCOL_VERSION ||
        r == SSL_R_WRONG_SSL_VERSION || r == SSL_R_UNKNOWN_PROTOCOL)
        why = SL_ERR_TLS_VERSION;
    else if (r == SSL_R_NO_SHARED_CIPHER)
        why = SL_ERR_TLS_NO_SHARED_CIPHER;
    else if (r == SSL_R_WRONG_VERSION_NUMBER || r == SSL_R_PACKET_LENGTH_TOO_LONG ||
             r == SSL_R_RECORD_LENGTH_MISMATCH || r == SSL_R_DECRYPTION_FAILED_OR_BAD_RECORD_MAC ||
             r == SSL_R_UNEXPECTED_RECORD || r == SSL_R_BAD_RECORD_TYPE ||
             r == SSL_R_HTTP_REQUEST || r == SSL_R_LENGTH_MISMATCH)
        why = SL_ERR_TLS_BAD_RECORD;
    else if (r >= SSL_AD_REASON_OFFSET && r < SSL_AD_REASON_OFFSET + 256)
        why = SL_ERR_TLS_PEER_ALERT; /* the client refused us (e.g. an unknown CA) */
    if (t->established && why == SL_ERR_TLS_HANDSHAKE)
        why = SL_ERR_TLS_BAD_RECORD;
    count(why);
    ERR_clear_error();
}

static void note_established(tls_conn_t *t)
{
    if (t->established || !SSL_is_init_finished(t->ssl))
        return;
    t->established = true;
    if (tls_stats) {
        uatomic_add(&tls_stats->tls_handshakes, 1);
        if (SSL_session_reused(t->ssl))
            uatomic_add(&tls_stats->tls_resumed, 1);
    }
}

/* ------------------------------------------------- our record layer */

static uint8_t rec_out[SL_TLSREC_MAX_OUT]; /* one worker thread: one record sealed at a time */
static uint8_t rec_in[SL_TLSREC_MAX_IN];   /* ... and one opened */
static unsigned read_opened; /* records opened by the current own_read (its test below) */

/* Send the record of `type` carrying p[0..len) from t->w_off on: SL_OK
 * (all of it; the write sequence advanced), SL_AGAIN (the socket took part:
 * t->w_off says how much; give the same plaintext again), SL_ERROR. */
static int own_send(int fd, tls_conn_t *t, uint8_t type, const uint8_t *p, size_t len)
{
    if (t->rl.wr.seq == UINT64_MAX) {
        count(SL_ERR_TLS_BAD_RECORD); /* cannot happen in practice: never wrap (RFC 8446 5.3) */
        errno = EPROTO;
        return SL_ERROR;
    }
    size_t n = sl_tlsrec_seal(&t->rl, type, p, len, rec_out);
    if (n == 0 || t->w_off >= n) {
        errno = EPROTO;
        return SL_ERROR;
    }
    while (t->w_off < n) {
        ssize_t w = send(fd, rec_out + t->w_off, n - t->w_off, MSG_DONTWAIT | MSG_NOSIGNAL);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            return errno == EAGAIN || errno == EWOULDBLOCK ? SL_AGAIN : SL_ERROR;
        }
        t->w_off += (uint32_t)w;
    }
    t->w_off = 0;
    t->rl.wr.seq++;
    return SL_OK;
}

/* A record of our own (KeyUpdate, alert) under way: on with it. */
static int own_send_ctl(int fd, tls_conn_t *t)
{
    int rc = own_send(fd, t, t->ctl_type, t->ctl, t->ctl_len);
    if (rc != SL_OK)
        return rc;
    if (t->ctl_type == SL_TLSREC_CT_HANDSHAKE && sl_tlsrec_update(&t->rl.wr, t->rl.suite) != SL_OK)
        rc = SL_ERROR; /* our KeyUpdate is out: what follows uses the next keys */
    if (t->ctl_type == SL_TLSREC_CT_ALERT)
        t->sent_close = true; /* close_notify or a fatal alert: nothing follows */
    t->ctl_len = 0;
    return rc;
}

static void own_start_ctl(tls_conn_t *t, uint8_t type, const uint8_t *p, uint8_t len)
{
    t->ctl_type = type;
    memcpy(t->ctl, p, len);
    t->ctl_len = len;
}

/* A fatal alert to the peer, best effort (not when a record of ours is
 * half-sent: the alert would land inside it), and the refusal counted. */
static ssize_t own_fail(int fd, tls_conn_t *t, uint8_t alert, sl_err_t why)
{
    count(why);
    t->failed = true;
    if (t->w_off == 0 && t->ctl_len == 0 && !t->sent_close) {
        uint8_t a[2] = {2, alert};
        own_start_ctl(t, SL_TLSREC_CT_ALERT, a, 2);
        own_send_ctl(fd, t);
        t->ctl_len = 0;
        t->sent_close = true;
    }
    /* The connection is closed next: what the peer sent after the refused
     * record is read and dropped first (bounded: 4 reads), so the close
     * is a FIN and not a reset that could overtake our alert (review ry,
     * "not new").  Never handed up (rw16 H1); rec_in is only a sink. */
    for (int k = 0; k < 4 && recv(fd, rec_in, sizeof(rec_in), MSG_DONTWAIT) > 0; k++) {
    }
    OPENSSL_cleanse(rec_in, sizeof(rec_in)); /* (nor left there: rw16 L2) */
    errno = EPROTO;
    return SL_ERROR;
}

/* The next record's content: 1 with application data at *p (*len bytes,
 * possibly 0), SL_AGAIN, 0 (the peer's end of stream), SL_ERROR.  Each
 * record opened costs one of *budget; none left: SL_AGAIN between records
 * (the rest waits in the socket for the next turn: a peer sending only
 * KeyUpdates or empty records cannot hold the worker). */
static ssize_t own_next(int fd, tls_conn_t *t, uint8_t **p, size_t *len, int *budget)
{
    /* A record comes into rec_in, or, once it is known to be partial,
     * into its own buffer of its full length (part, allocated once per
     * record: a peer trickling a record a byte per segment costs one
     * allocation and one copy, not one of each per segment - review rw16
     * L1); fewer bytes than its header wait in phdr. */
    uint8_t *s = t->part ? t->part : rec_in;
    size_t have = t->part_len;
    if (t->part == NULL && have > 0)
        memcpy(s, t->phdr, have);
    t->part_len = 0;
    for (;;) {
        size_t need = SL_TLSREC_HDR;
        if (have >= SL_TLSREC_HDR) {
            need += (size_t)s[3] << 8 | s[4];
            if (need > SL_TLSREC_MAX_IN)
                return own_fail(fd, t, SL_TLSREC_AD_RECORD_OVERFLOW, SL_ERR_TLS_BAD_RECORD);
        }
        if (have == 0 && *budget <= 0)
            return SL_AGAIN;
        if (have < need) {
            ssize_t r = recv(fd, s + have, need - have, MSG_DONTWAIT);
            if (r > 0) {
                have += (size_t)r;
                continue;
            }
            if (r < 0 && errno == EINTR)
                continue;
            if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
                /* Kept only until the rest comes (at most the longest
                 * record, SL_TLSREC_MAX_IN). */
                if (s == rec_in && have >= SL_TLSREC_HDR) {
                    if ((t->part = SL_FAULT("tls.part.alloc") ? NULL : own_alloc(need)) == NULL)
                        return SL_ERROR;
                    memcpy(t->part, s, have);
                } else if (s == rec_in) {
                    memcpy(t->phdr, s, have);
                }
                t->part_len = (uint16_t)have;
                return SL_AGAIN;
            }
            if (r == 0 || errno == ECONNRESET) {
                /* TCP's end without close_notify: an end of stream, as
                 * on OpenSSL's path (IGNORE_UNEXPECTED_EOF) - unless a
                 * record was cut short. */
                if (have > 0)
                    count(SL_ERR_TLS_BAD_RECORD);
                return have > 0 ? SL_ERROR : 0;
            }
            return SL_ERROR;
        }
        if (s != rec_in) { /* a partial record now whole: opened in rec_in */
            memcpy(rec_in, s, have);
            own_free(t->part);
            t->part = NULL;
            s = rec_in;
        }
        /* A whole record (read whole even when refused: a close with its
         * bytes unread would be a reset that could lose our alert). */
        uint8_t type;
        size_t n;
        if (s[0] != SL_TLSREC_CT_APPDATA) /* after the handshake every record is */
            return own_fail(fd, t, SL_TLSREC_AD_UNEXPECTED_MESSAGE, SL_ERR_TLS_BAD_RECORD);
        if (t->rl.rd.seq == UINT64_MAX)
            return own_fail(fd, t, SL_TLSREC_AD_UNEXPECTED_MESSAGE, SL_ERR_TLS_BAD_RECORD);
        int bad = sl_tlsrec_open(&t->rl, s, have, &type, &n);
        if (bad)
            return own_fail(fd, t, (uint8_t)bad, SL_ERR_TLS_BAD_RECORD);
        t->rl.rd.seq++;
        read_opened++;
        (*budget)--;
        uint8_t *c = s + SL_TLSREC_HDR;
        if (type == SL_TLSREC_CT_APPDATA) {
            *p = c;
            *len = n;
            return 1;
        }
        have = 0;
        if (type == SL_TLSREC_CT_ALERT && n == 2) {
            if (c[1] == SL_TLSREC_AD_CLOSE_NOTIFY) {
                t->got_close = true;
                return 0;
            }
            if (c[1] == SL_TLSREC_AD_USER_CANCELED && c[0] == 1)
                continue; /* a warning; its close_notify follows */
            count(SL_ERR_TLS_PEER_ALERT);
            errno = EPROTO;
            return SL_ERROR;
        }
        if (type == SL_TLSREC_CT_HANDSHAKE && n == 5 && c[0] == 24 && c[1] == 0 && c[2] == 0 &&
            c[3] == 1 && c[4] <= 1) {
            /* KeyUpdate (RFC 8446 4.6.3), alone in its record: the peer's
             * next records use its next secret; asked to, ours goes
             * before our next application data (tls_flush). */
            if (sl_tlsrec_update(&t->rl.rd, t->rl.suite) != SL_OK)
                return SL_ERROR;
            if (c[4] == 1)
                t->ku_owed = true;
            continue;
        }
        if (type == SL_TLSREC_CT_ALERT)
            return own_fail(fd, t, SL_TLSREC_AD_DECODE_ERROR, SL_ERR_TLS_BAD_RECORD);
        /* Any other handshake message (none is expected after ours is
         * done), change_cipher_spec inside a record, unknown types. */
        return own_fail(fd, t, SL_TLSREC_AD_UNEXPECTED_MESSAGE, SL_ERR_TLS_BAD_RECORD);
    }
}

static ssize_t own_read(int fd, tls_conn_t *t, uint8_t *buf, size_t n)
{
    size_t got = 0;
    int budget = SL_TLS_READ_RECORDS;
    read_opened = 0;
    while (got < n) {
        if (t->left_len > 0) {
            size_t k = SL_MIN(n - got, (size_t)t->left_len);
            memcpy(buf + got, t->left + t->left_off, k);
            got += k;
            t->left_off += (uint16_t)k;
            t->left_len -= (uint16_t)k;
            if (t->left_len == 0) {
                own_free(t->left);
                t->left = NULL;
                t->left_off = 0;
            }
            continue;
        }
        if (t->rd_end)
            break;
        uint8_t *p = NULL;
        size_t len = 0;
        ssize_t r = own_next(fd, t, &p, &len, &budget);
        if (r == SL_AGAIN)
            break;
        if (r != 1) {
            t->rd_end = r == 0 ? 1 : 2;
            break;
        }
        size_t k = SL_MIN(n - got, len);
        memcpy(buf + got, p, k);
        got += k;
        if (k < len) { /* the caller's room is full: the rest waits here */
            if ((t->left = own_alloc(len - k)) == NULL) {
                OPENSSL_cleanse(p, len);
                t->rd_end = 2;
                break;
            }
            memcpy(t->left, p + k, len - k);
            t->left_len = (uint16_t)(len - k);
        }
        /* The worker's rec_in keeps no connection's plaintext once it is
         * handed on (review rw16 L2; 0.5 us per 16 KiB record, against
         * 3-6 us to open it: tests/bench/bench_tlsrec.c).  rec_out holds
         * ciphertext only.  The worker's cipher contexts keep the last
         * record's expanded key until the next record (any connection's)
         * rekeys them: not cleansed per record - that would be freeing
         * and making them again (an allocation and a cipher fetch each),
         * and the residue is one key, readable only by whoever can read
         * this process's memory, which holds every live connection's
         * keys anyway.  The plaintext handed on lands in the worker's
         * read buffer and the connection's input, which are not
         * cleansed (as for a plain connection): the wipe here keeps the
         * record layer's own buffers clean, not the process (review
         * ra16 F2). */
        OPENSSL_cleanse(p, len);
    }
    if (read_opened > SL_TLS_READ_RECORDS && SL_FAULT("tls.read.over-budget")) {
        /* Test build, armed: a read that opened more records than the
         * budget fails its connection, so a test sees the budget is kept
         * (counted apart from the budget itself). */
        errno = EPROTO;
        return SL_ERROR;
    }
    if (got > 0)
        return (ssize_t)got;
    if (t->rd_end == 1)
        return 0;
    if (t->rd_end == 2) {
        errno = EPROTO;
        return SL_ERROR;
    }
    return SL_AGAIN;
}

/* ------------------------------------------------------ the transport */

static ssize_t tls_read(int fd, void *ctx, void *buf, size_t n)
{
    tls_conn_t *t = ctx;
    t->read_wants_write = false;
    if (!t->peeked) {
        unsigned char b;
        ssize_t r = recv(fd, &b, 1, MSG_PEEK | MSG_DONTWAIT);
        if (r == 0)
            return 0;
        if (r < 0)
            return errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR ? SL_AGAIN
                                                                             : SL_ERROR;
        t->peeked = true;
        if (b != 0x16) { /* not a TLS handshake record */
            if ((b >= 'A' && b <= 'Z') || (b >= 'a' && b <= 'z')) {
                count(SL_ERR_TLS_PLAIN_HTTP);
                answer_plain_http(fd);
                t->refused = true;
                return SL_XPORT_REFUSED;
            } else {
                count(SL_ERR_TLS_BAD_RECORD);
            }
            errno = EPROTO;
            return SL_ERROR;
        }
    }
    if (t->own && t->failed) {
        /* A refused record: the plaintext authenticated before it is
         * handed up (what is left of it, from own_read); nothing after it
         * ever is, not even raw (review rw16 H1, ry Y2: never the
         * raw-drain branch below). */
        if (t->left_len > 0)
            return own_read(fd, t, buf, n);
        errno = EPROTO;
        return SL_ERROR;
    }
    if (t->refused || t->sent_close || (t->ssl && (SSL_get_shutdown(t->ssl) & SSL_SENT_SHUTDOWN))) {
        /* Our close_notify is out: what still comes is only waited out
         * (the connection lingers until the peer's FIN), not decrypted. */
        ssize_t r = recv(fd, buf, n, MSG_DONTWAIT);
        if (r < 0)
            return errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR ? SL_AGAIN
                                                                             : SL_ERROR;
        return r;
    }
    if (t->own)
        return own_read(fd, t, buf, n);
    ERR_clear_error();
    errno = 0; /* SSL_ERROR_SYSCALL below reads it */
    int r = 0;
    if (!t->established) {
        /* The handshake alone (not SSL_read: no application record may be
         * read by OpenSSL before the switch to ours). */
        r = SSL_do_handshake(t->ssl);
        note_established(t);
        if (r == 1) {
            try_own(t);
            if (t->own)
                return own_read(fd, t, buf, n);
        }
    }
    if (t->established)
        r = SSL_read(t->ssl, buf, (int)SL_MIN(n, (size_t)INT32_MAX));
    t->ra_wait = false;
    if (r > 0)
        return r;
    int e = SSL_get_error(t->ssl, r);
    /* Wanting the socket, at the peer's end or an error: what read-ahead
     * holds is not input (tls_pending). */
    t->ra_wait = e != SSL_ERROR_WANT_WRITE;
    switch (e) {
    case SSL_ERROR_WANT_READ:
        return SL_AGAIN;
    case SSL_ERROR_WANT_WRITE:
        t->read_wants_write = true;
        return SL_AGAIN;
    case SSL_ERROR_ZERO_RETURN:
        /* The peer's end of stream: its close_notify, or a TCP FIN without
         * one (IGNORE_UNEXPECTED_EOF).  Ours is not sent now: what the peer
         * asked is answered first, and close_notify follows the output
         * (tls_shutdown when the connection half-closes, or tls_release). */
        ERR_clear_error();
        if (!t->established)
            count(SL_ERR_TLS_HANDSHAKE); /* gone in the middle of the handshake */
        return 0;
    case SSL_ERROR_SYSCALL:
        if (ERR_peek_error() == 0) {
            if (!t->established)
                count(SL_ERR_TLS_HANDSHAKE); /* gone in the middle of the handshake */
            return errno == 0 || errno == ECONNRESET ? 0 : SL_ERROR;
        }
        /* fall through */
    default:
        count_failure(t);
        errno = EPROTO;
        return SL_ERROR;
    }
}

/* One record of len bytes: SL_OK, SL_AGAIN (socket full / handshake needs
 * the peer: the bytes must be given again), SL_ERROR. */
static int write_record(int fd, tls_conn_t *t, const void *p, int len)
{
    if (t->own) {
        if (t->failed || t->sent_close) {
            /* Nothing after a fatal alert or our close_notify (review
             * rw16 L4), and never from a half-sent alert's offset with
             * its key and sequence number (M2). */
            errno = EPIPE;
            return SL_ERROR;
        }
        if (t->ku_owed && t->w_off == 0 && t->ctl_len == 0) {
            /* Our KeyUpdate, asked for by the peer's: before our next
             * application data (RFC 8446 4.6.3). */
            static const uint8_t ku[5] = {24, 0, 0, 1, 0};
            own_start_ctl(t, SL_TLSREC_CT_HANDSHAKE, ku, sizeof(ku));
            t->ku_owed = false;
        }
        if (t->ctl_len > 0) {
            int rc = own_send_ctl(fd, t);
            if (rc != SL_OK)
                return rc;
        }
        return own_send(fd, t, SL_TLSREC_CT_APPDATA, p, (size_t)len);
    }
    ERR_clear_error();
    errno = 0;
    int r = SSL_write(t->ssl, p, len);
    note_established(t);
    if (r > 0)
        return SL_OK;
    switch (SSL_get_error(t->ssl, r)) {
    case SSL_ERROR_WANT_WRITE:
        return SL_AGAIN;
    case SSL_ERROR_WANT_READ:
        return SL_XPORT_WAIT_READ;
    default:
        count_failure(t);
        return SL_ERROR;
    }
}

static int tls_flush(int fd, void *ctx, sl_outq_t *q)
{
    static uint8_t rec[SL_TLS_RECORD]; /* one worker thread: one staging record */
    tls_conn_t *t = ctx;
    if (!t->established && q->count > 0) {
        /* Nothing is written before the handshake is done (a response
         * queued early waits for it; the reads drive the handshake). */
        ERR_clear_error();
        int r = SSL_do_handshake(t->ssl);
        note_established(t);
        if (r != 1) {
            int e = SSL_get_error(t->ssl, r);
            if (e == SSL_ERROR_WANT_READ)
                return SL_XPORT_WAIT_READ;
            if (e == SSL_ERROR_WANT_WRITE)
                return SL_AGAIN;
            count_failure(t);
            return SL_ERROR;
        }
        try_own(t);
    }
    /* Fault point (test build): the transport needs the peer's bytes
     * before it can write more, as a handshake message from the peer
     * makes it - once, when 64 KiB or more wait to be written (an HTTP
     * connection is paused by back-pressure then): the flush must still
     * be retried on the peer's next bytes (conn.c, review r16 L1; a test
     * for it, review rg16 F4). */
    if (t->established && q->bytes >= 64 * 1024 && SL_FAULT("tls.flush.wait-read"))
        return SL_XPORT_WAIT_READ;
    while (q->count > 0) {
        /* Pack the head of the queue into one record: a segment of 16 KiB
         * or more is written from where it is, smaller ones are gathered.
         * A record the transport refused is given again with the same
         * bytes: they stayed at the head of the queue, pinned (only
         * appended to since, so the first pend_len bytes are unchanged;
         * the address may differ: SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER, and
         * ours reseals from wherever they are).  Until written they count
         * as held, not as sent (review r16 M4). */
        const uint8_t *p;
        if (t->pend_len > q->bytes)
            return SL_ERROR; /* the pinned bytes are gone: cannot happen */
        size_t len = sl_outq_peek(q, rec, t->pend_len ? t->pend_len : sizeof(rec), &p);
        int rc = write_record(fd, t, p, (int)len);
        if (p == rec)
            OPENSSL_cleanse(rec, len); /* no plaintext kept here (review rw16 L2) */
        if (rc == SL_ERROR)
            return SL_ERROR;
        if (rc != SL_OK) {
            t->pend_len = (uint32_t)len;
            q->pinned = (uint16_t)len; /* <= SL_TLS_RECORD */
            return rc;
        }
        t->pend_len = 0;
        sl_outq_advance(q, len); /* releases the pin */
    }
    return SL_OK;
}

static int tls_shutdown(int fd, void *ctx)
{
    tls_conn_t *t = ctx;
    if (t->established && t->pend_len == 0) {
        /* close_notify (the peer's is not waited for).  Called again after
         * SL_AGAIN, SSL_shutdown writes the rest of the alert.  (Fault
         * point, test build: the socket full at the alert, once - review
         * r16 L2 (b), its test: review rg16 F4.) */
        if (SL_FAULT("tls.shutdown.again"))
            return SL_AGAIN;
        if (t->own) {
            static const uint8_t cn[2] = {1, SL_TLSREC_AD_CLOSE_NOTIFY};
            while (!t->sent_close) { /* (a KeyUpdate under way goes first) */
                if (t->ctl_len == 0)
                    own_start_ctl(t, SL_TLSREC_CT_ALERT, cn, sizeof(cn));
                int rc = own_send_ctl(fd, t);
                if (rc == SL_AGAIN)
                    return SL_AGAIN; /* SHUT_WR now would cut the alert record short */
                if (rc != SL_OK)
                    break;
            }
        } else {
            ERR_clear_error();
            int r = SSL_shutdown(t->ssl);
            bool again = r < 0 && SSL_get_error(t->ssl, r) == SSL_ERROR_WANT_WRITE;
            ERR_clear_error();
            if (again)
                return SL_AGAIN; /* SHUT_WR now would cut the alert record short */
        }
    }
    shutdown(fd, SHUT_WR);
    return SL_OK;
}

static void tls_release(void *ctx)
{
    tls_conn_t *t = ctx;
    if (t == NULL)
        return;
    if (t->own) {
        /* The peer ended and nothing was left to answer: our close_notify
         * answers its own (best effort; the socket is closed next). */
        if (t->got_close && !t->sent_close && t->pend_len == 0 && t->w_off == 0 &&
            t->ctl_len == 0) {
            static const uint8_t cn[2] = {1, SL_TLSREC_AD_CLOSE_NOTIFY};
            own_start_ctl(t, SL_TLSREC_CT_ALERT, cn, sizeof(cn));
            own_send_ctl(t->fd, t);
        }
        own_free(t->part); /* counted with OpenSSL's: tls-heap-bytes */
        own_free(t->left);
        OPENSSL_cleanse(t, sizeof(*t));
        free(t);
        return;
    }
    if (t->established && t->pend_len == 0 &&
        (SSL_get_shutdown(t->ssl) & (SSL_RECEIVED_SHUTDOWN | SSL_SENT_SHUTDOWN)) ==
            SSL_RECEIVED_SHUTDOWN) {
        /* The peer ended and nothing was left to answer: our close_notify
         * answers its own (best effort; the socket is closed next). */
        ERR_clear_error();
        SSL_shutdown(t->ssl);
        ERR_clear_error();
    }
    SSL_free(t->ssl);
    /* The traffic secrets keylog_cb caught stay here when the switch to
     * our records never happened (the handshake failed, timed out, or the
     * client left after our Finished): cleansed as on our path (review
     * rw16 L2). */
    OPENSSL_cleanse(t, sizeof(*t));
    free(t);
}

static bool tls_established(void *ctx)
{
    return ((tls_conn_t *)ctx)->established;
}

static bool tls_pending(void *ctx)
{
    tls_conn_t *t = ctx;
    if (t->own)
        return t->left_len > 0 || t->rd_end != 0;
    /* Decrypted bytes, or (read-ahead, TLS 1.2) records read from the
     * socket and not opened yet - the socket will not announce those.  A
     * partial record after a read that wanted the socket is not input:
     * the rest of it is announced.  Once closing (refused, our close_notify
     * out) reads go to the socket raw and OpenSSL's buffer is never opened;
     * after the peer's end or an error (ra_wait set there) nothing is
     * either (review rd16 F3). */
    if (t->refused || t->sent_close || (SSL_get_shutdown(t->ssl) & SSL_SENT_SHUTDOWN))
        return false;
    return SSL_pending(t->ssl) > 0 || (!t->ra_wait && SSL_has_pending(t->ssl));
}

static bool tls_read_wants_write(void *ctx)
{
    return ((tls_conn_t *)ctx)->read_wants_write;
}

static bool tls_heard(void *ctx)
{
    return ((tls_conn_t *)ctx)->peeked;
}

const sl_xport_t sl_xport_tls = {"tls",          tls_read,       tls_flush,
                                 tls_shutdown,   tls_release,    tls_established,
                                 tls_pending,    tls_read_wants_write, tls_heard};
