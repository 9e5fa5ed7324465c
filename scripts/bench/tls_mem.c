/*
 * tls_mem.c - where an idle TLS connection's memory goes, inside OpenSSL.
 *
 * Builds server SSL objects the way src/tls.c does (same context options
 * and modes, one shared SSL_CTX, the socket BIO from SSL_set_fd), lets a
 * client in a child process complete N handshakes over loopback TCP and
 * send one WebSocket upgrade request each, answers each with a 129-byte
 * response, and then, with every connection idle, reports:
 *
 *   * OpenSSL's live heap bytes per connection (requested sizes, counted
 *     through CRYPTO_set_mem_functions), grouped by the allocating
 *     OpenSSL source line: the breakdown;
 *   * the same after each candidate cut (SSL_free_buffers; and, for
 *     comparison, what an AEAD context per direction alone would hold -
 *     the floor of a record layer that keeps only the traffic keys);
 *   * glibc's in-use heap (mallinfo2) per connection, which adds malloc's
 *     per-chunk overhead;
 *   * a check that the bookkeeping balances: once every connection and
 *     context is freed, no site is below zero (exit 1 otherwise).
 *
 * Usage: tls_mem CERT KEY [N] [1.2|1.3]       (scripts/bench/README.md)
 * Build: make build/tls-mem
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <arpa/inet.h>
#include <malloc.h>
#include <netinet/in.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/ssl.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

/* --------------------------------------------- allocation accounting */

#define NSITE 4096
typedef struct {
    const char *file;
    int line;
    long long live; /* bytes */
    long long count;
} site_t;
static site_t sites[NSITE];
static int tracking; /* 1: charge allocations to the server under test */

typedef struct {
    size_t size;
    int site; /* -1: not tracked */
    int pad;
} hdr_t;

static int site_of(const char *file, int line)
{
    unsigned h = (unsigned)line * 2654435761u;
    for (const char *p = file ? file : "?"; *p; p++)
        h = h * 31 + (unsigned char)*p;
    for (unsigned i = 0; i < NSITE; i++) {
        site_t *s = &sites[(h + i) % NSITE];
        if (s->file == NULL) {
            s->file = file ? file : "?";
            s->line = line;
            return (int)((h + i) % NSITE);
        }
        if (s->line == line && strcmp(s->file, file ? file : "?") == 0)
            return (int)((h + i) % NSITE);
    }
    return -1;
}

static void *m_alloc(size_t n, const char *file, int line)
{
    hdr_t *h = malloc(sizeof(hdr_t) + n);
    if (h == NULL)
        return NULL;
    h->size = n;
    h->site = tracking ? site_of(file, line) : -1;
    if (h->site >= 0) {
        sites[h->site].live += (long long)n;
        sites[h->site].count++;
    }
    return h + 1;
}

static void m_free(void *p, const char *file, int line)
{
    (void)file;
    (void)line;
    if (p == NULL)
        return;
    hdr_t *h = (hdr_t *)p - 1;
    if (h->site >= 0) {
        sites[h->site].live -= (long long)h->size;
        sites[h->site].count--;
    }
    free(h);
}

static void *m_realloc(void *p, size_t n, const char *file, int line)
{
    if (p == NULL)
        return m_alloc(n, file, line);
    void *q = m_alloc(n, file, line);
    if (q == NULL)
        return NULL;
    hdr_t *h = (hdr_t *)p - 1;
    memcpy(q, p, h->size < n ? h->size : n);
    m_free(p, file, line);
    return q;
}

static long long live_total(void)
{
    long long t = 0;
    for (int i = 0; i < NSITE; i++)
        t += sites[i].live;
    return t;
}

static int by_live(const void *a, const void *b)
{
    const site_t *x = a, *y = b;
    return (y->live > x->live) - (y->live < x->live);
}

/* --------------------------------------------------------- the run */

static const char REQ[] = "GET /ws HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\n"
                          "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                          "Sec-WebSocket-Version: 13\r\n\r\n";
static const char RESP[] = "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                           "Connection: Upgrade\r\n"
                           "Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n";

static void die(const char *what)
{
    fprintf(stderr, "tls_mem: %s\n", what);
    ERR_print_errors_fp(stderr);
    exit(1);
}

static void client(int port, int n, int hold_fd, const char *ver)
{
    SSL_CTX *c = SSL_CTX_new(TLS_client_method());
    if (strcmp(ver, "1.2") == 0)
        SSL_CTX_set_max_proto_version(c, TLS1_2_VERSION);
    SSL **keep = calloc((size_t)n, sizeof(*keep));
    for (int i = 0; i < n; i++) {
        int fd = socket(AF_INET, SOCK_STREAM, 0);
        struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
        a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        if (connect(fd, (struct sockaddr *)&a, sizeof(a)) != 0)
            die("connect");
        SSL *s = SSL_new(c);
        SSL_set_fd(s, fd);
        SSL_set_tlsext_host_name(s, "localhost");
        if (SSL_connect(s) != 1)
            die("SSL_connect");
        char buf[512];
        if (SSL_write(s, REQ, sizeof(REQ) - 1) <= 0 || SSL_read(s, buf, sizeof(buf)) <= 0)
            die("client request");
        keep[i] = s;
    }
    char b;
    if (read(hold_fd, &b, 1) < 0) { /* the parent has measured */
    }
    _exit(0);
}

static SSL_CTX *server_ctx(const char *cert, const char *key, const char *ver)
{
    SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());
    if (ctx == NULL)
        die("SSL_CTX_new");
    SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
    if (strcmp(ver, "1.2") == 0)
        SSL_CTX_set_max_proto_version(ctx, TLS1_2_VERSION);
    /* as src/tls.c ctx_new */
    SSL_CTX_set_options(ctx, SSL_OP_NO_RENEGOTIATION | SSL_OP_CIPHER_SERVER_PREFERENCE |
                                 SSL_OP_NO_COMPRESSION | SSL_OP_IGNORE_UNEXPECTED_EOF);
    SSL_CTX_set_mode(ctx, SSL_MODE_RELEASE_BUFFERS | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
    SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);
    SSL_CTX_set_num_tickets(ctx, 1);
    SSL_CTX_set_session_id_context(ctx, (const unsigned char *)"sente-lite", 10);
    if (SSL_CTX_use_certificate_chain_file(ctx, cert) != 1 ||
        SSL_CTX_use_PrivateKey_file(ctx, key, SSL_FILETYPE_PEM) != 1)
        die("certificate or key");
    return ctx;
}

int main(int argc, char **argv)
{
    if (argc < 3) {
        fprintf(stderr, "usage: tls_mem CERT KEY [N] [1.2|1.3]\n");
        return 2;
    }
    int n = argc > 3 ? atoi(argv[3]) : 500;
    int rc = 0;
    const char *ver = argc > 4 ? argv[4] : "1.3";
    if (!CRYPTO_set_mem_functions(m_alloc, m_realloc, m_free))
        die("CRYPTO_set_mem_functions");
    signal(SIGPIPE, SIG_IGN);
    SSL_CTX *ctx = server_ctx(argv[1], argv[2], ver);

    int ls = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t al = sizeof(a);
    if (bind(ls, (struct sockaddr *)&a, sizeof(a)) != 0 || listen(ls, 4096) != 0 ||
        getsockname(ls, (struct sockaddr *)&a, &al) != 0)
        die("listen");
    int warm = 20;
    int hold[2];
    if (pipe(hold) != 0)
        die("pipe");
    pid_t kid = fork();
    if (kid == 0) {
        close(hold[1]);
        client(ntohs(a.sin_port), warm + n, hold[0], ver);
    }
    close(hold[0]);

    SSL **ss = calloc((size_t)(warm + n), sizeof(*ss));
    struct mallinfo2 m0 = {0};
    for (int i = 0; i < warm + n; i++) {
        if (i == warm) { /* one-time costs are in the baseline */
            tracking = 1;
            m0 = mallinfo2();
        }
        int fd = accept(ls, NULL, NULL);
        SSL *s = SSL_new(ctx);
        SSL_set_fd(s, fd);
        if (SSL_accept(s) != 1)
            die("SSL_accept");
        char buf[1024];
        if (SSL_read(s, buf, sizeof(buf)) <= 0 || SSL_write(s, RESP, sizeof(RESP) - 1) <= 0)
            die("server exchange");
        ss[i] = s;
    }
    struct mallinfo2 m1 = mallinfo2();
    long long t1 = live_total();
    printf("TLS %s, %d idle server connections (OpenSSL %s), %s\n", ver, n,
           OpenSSL_version(OPENSSL_VERSION), SSL_get_cipher(ss[warm]));
    printf("  OpenSSL live heap per connection: %lld bytes (requested sizes)\n", t1 / n);
    printf("  glibc in-use heap per connection: %zu bytes (with malloc's chunk overhead and"
           " this tool's 16-byte tag per allocation)\n",
           (m1.uordblks - m0.uordblks) / (size_t)n);
    /* Sorted in a copy: every live allocation's header names its site by
     * index in sites[], so sites[] itself is never moved or cleared - a
     * later free must come off the site it was charged to (review rq16
     * L4).  The cuts below are measured as differences of live_total(). */
    site_t *by = malloc(sizeof(sites));
    if (by == NULL)
        die("out of memory");
    memcpy(by, sites, sizeof(sites));
    qsort(by, NSITE, sizeof(site_t), by_live);
    printf("  by allocating line (bytes per connection, allocations per connection):\n");
    long long shown = 0;
    for (int i = 0; i < NSITE && by[i].live > 0; i++) {
        if (by[i].live / n < 16)
            break;
        const char *f = strstr(by[i].file, "ssl/") ? strstr(by[i].file, "ssl/")
                        : strstr(by[i].file, "crypto/") ? strstr(by[i].file, "crypto/")
                        : strstr(by[i].file, "providers/") ? strstr(by[i].file, "providers/")
                                                            : by[i].file;
        printf("    %6lld  %5.1f  %s:%d\n", by[i].live / n, (double)by[i].count / n, f,
               by[i].line);
        shown += by[i].live;
    }
    printf("    %6lld         (the rest)\n", (t1 - shown) / n);
    free(by);
    /* SSL_free_buffers: what SSL_MODE_RELEASE_BUFFERS already does when a
     * connection's buffers are empty. */
    int freed = 0;
    long long before = live_total();
    for (int i = warm; i < warm + n; i++)
        freed += SSL_free_buffers(ss[i]);
    printf("  SSL_free_buffers succeeded on %d of %d, freed %lld bytes per connection"
           " (0 expected: RELEASE_BUFFERS)\n",
           freed, n, (before - live_total()) / n);
    /* The floor of a record layer that keeps only the traffic keys: one
     * AES-128-GCM context per direction. */
    before = live_total();
    EVP_CIPHER_CTX **ec = calloc((size_t)n * 2, sizeof(*ec));
    unsigned char k[16] = {1}, iv[12] = {2};
    for (int i = 0; i < 2 * n; i++) {
        ec[i] = EVP_CIPHER_CTX_new();
        EVP_EncryptInit_ex(ec[i], EVP_aes_128_gcm(), NULL, k, iv);
    }
    printf("  two AES-128-GCM EVP_CIPHER_CTX alone: %lld bytes per connection\n",
           (live_total() - before) / n);
    /* The bookkeeping balances: once every tracked object is freed, no
     * site is below zero (a free charged to the wrong site would leave
     * one negative) and what stays charged is OpenSSL's own lazily
     * built state, not connections'. */
    for (int i = 0; i < 2 * n; i++)
        EVP_CIPHER_CTX_free(ec[i]);
    for (int i = warm; i < warm + n; i++)
        SSL_free(ss[i]);
    long long negative = 0;
    for (int i = 0; i < NSITE; i++)
        if (sites[i].live < 0 || sites[i].count < 0)
            negative++;
    printf("  after freeing them all: %lld bytes still counted, %lld sites below zero"
           " (0 expected)\n",
           live_total(), negative);
    if (negative)
        rc = 1;
    for (int i = 0; i < warm; i++) /* the rest, untracked */
        SSL_free(ss[i]);
    free(ec);
    free(ss);
    SSL_CTX_free(ctx);
    close(ls);
    if (write(hold[1], "x", 1) < 0) {
    }
    waitpid(kid, NULL, 0);
    return rc;
}
