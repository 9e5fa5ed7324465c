/*
 * bench_auth.c - what verifying a token costs (make bench-auth): µs per
 * sl_auth_verify for HS256, RS256, ES256 and PS256, for forged RS256 and
 * ES256 tokens (a bad signature costs what a good one does: the claims are
 * read after it), and, to compare, libjwt's jwt_decode on the same tokens
 * (libjwt 1.10 reads the PEM public key for every RS/ES token; sente-lite
 * parses each key once).  Keys are generated here; the tokens are signed
 * by libjwt, PS256 by OpenSSL.  Figures, not a test.
 */
#include "sl_auth.h"

#include <jwt.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/rsa.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static double now_us(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec * 1e6 + (double)t.tv_nsec / 1e3;
}

static char *pem(EVP_PKEY *k, bool priv)
{
    BIO *b = BIO_new(BIO_s_mem());
    if (priv)
        PEM_write_bio_PrivateKey(b, k, NULL, NULL, 0, NULL, NULL);
    else
        PEM_write_bio_PUBKEY(b, k);
    char *p;
    long n = BIO_get_mem_data(b, &p);
    char *out = strndup(p, (size_t)n);
    BIO_free(b);
    return out;
}

static char *sign(jwt_alg_t alg, const char *key)
{
    jwt_t *j;
    jwt_new(&j);
    jwt_add_grants_json(j, "{\"sub\":\"bench\",\"exp\":4102444800,\"publish\":[\"bench:*\"]}");
    jwt_set_alg(j, alg, (const unsigned char *)key, (int)strlen(key));
    char *t = jwt_encode_str(j);
    jwt_free(j);
    return t;
}

static char *b64url(const unsigned char *d, size_t n)
{
    static const char tab[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    char *o = malloc(n * 4 / 3 + 4);
    size_t k = 0;
    uint32_t acc = 0;
    int bits = 0;
    for (size_t i = 0; i < n; i++) {
        acc = acc << 8 | d[i];
        for (bits += 8; bits >= 6; bits -= 6)
            o[k++] = tab[acc >> (bits - 6) & 63];
    }
    if (bits)
        o[k++] = tab[acc << (6 - bits) & 63];
    o[k] = '\0';
    return o;
}

/* A PS256 token (libjwt 1.10 has no PS*): the RS256 token's payload under
 * a PS256 header, signed with OpenSSL. */
static char *sign_ps256(const char *rs256, EVP_PKEY *key)
{
    const char *hdr = "eyJhbGciOiJQUzI1NiIsInR5cCI6IkpXVCJ9"; /* {"alg":"PS256","typ":"JWT"} */
    const char *payload = strchr(rs256, '.') + 1;
    size_t plen = (size_t)(strchr(payload, '.') - payload);
    size_t ilen = strlen(hdr) + 1 + plen;
    char *input = malloc(ilen + 1);
    snprintf(input, ilen + 1, "%s.%.*s", hdr, (int)plen, payload);
    unsigned char sig[512];
    size_t slen = sizeof(sig);
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    EVP_PKEY_CTX *pctx;
    EVP_DigestSignInit(ctx, &pctx, EVP_sha256(), NULL, key);
    EVP_PKEY_CTX_set_rsa_padding(pctx, RSA_PKCS1_PSS_PADDING);
    EVP_PKEY_CTX_set_rsa_pss_saltlen(pctx, RSA_PSS_SALTLEN_DIGEST);
    EVP_DigestSign(ctx, sig, &slen, (const unsigned char *)input, ilen);
    EVP_MD_CTX_free(ctx);
    char *s64 = b64url(sig, slen);
    char *tok = malloc(ilen + strlen(s64) + 2);
    sprintf(tok, "%s.%s", input, s64);
    free(input);
    free(s64);
    return tok;
}

/* The same token with its signature's middle character changed. */
static char *forged(const char *tok)
{
    char *f = strdup(tok);
    char *sig = strrchr(f, '.') + 1;
    size_t mid = strlen(sig) / 2;
    sig[mid] = sig[mid] == 'A' ? 'B' : 'A';
    return f;
}

/* Best of 5 rounds of n calls: the machine is shared. */
#define BEST(n, body)                                                   \
    ({                                                                  \
        double best_ = 1e18;                                            \
        for (int r_ = 0; r_ < 5; r_++) {                                \
            double t0_ = now_us();                                      \
            for (int i_ = 0; i_ < (n); i_++) {                          \
                body;                                                   \
            }                                                           \
            double d_ = (now_us() - t0_) / (n);                         \
            if (d_ < best_)                                             \
                best_ = d_;                                             \
        }                                                               \
        best_;                                                          \
    })

/* want_ok: a good token (a forged one must be refused). */
static void verify_row(const char *name, const char *tok, int n, bool want_ok)
{
    char msg[200];
    sl_ident_t *id = NULL;
    if ((sl_auth_verify(tok, strlen(tok), 1700000000000LL, &id, msg, sizeof(msg)) ==
         SL_AUTH_OK) != want_ok) {
        printf("%s: %s: %s\n", name, want_ok ? "refused" : "accepted", msg);
        sl_ident_free(id);
        return;
    }
    sl_ident_free(id);
    double us = BEST(n, {
        sl_auth_verify(tok, strlen(tok), 1700000000000LL, &id, msg, sizeof(msg));
        sl_ident_free(id);
    });
    printf("%-34s %9.2f us\n", name, us);
}

static void libjwt_row(const char *name, const char *tok, const char *key, int n)
{
    double us = BEST(n, {
        jwt_t *j = NULL;
        jwt_decode(&j, tok, (const unsigned char *)key, (int)strlen(key));
        jwt_free(j);
    });
    printf("%-34s %9.2f us\n", name, us);
}

int main(void)
{
    char dir[] = "/tmp/sl-bench-auth-XXXXXX";
    if (mkdtemp(dir) == NULL)
        return 1;
    char spath[64], rpath[64], epath[64], err[256];
    snprintf(spath, sizeof(spath), "%s/secret", dir);
    snprintf(rpath, sizeof(rpath), "%s/rsa.pem", dir);
    snprintf(epath, sizeof(epath), "%s/ec.pem", dir);
    const char *secret = "0123456789abcdef0123456789abcdef-bench-secret";
    FILE *f = fopen(spath, "w");
    fputs(secret, f);
    fclose(f);
    EVP_PKEY *rsa = EVP_PKEY_Q_keygen(NULL, NULL, "RSA", (size_t)2048);
    EVP_PKEY *ec = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-256");
    char *rsa_priv = pem(rsa, true), *rsa_pub = pem(rsa, false);
    char *ec_priv = pem(ec, true), *ec_pub = pem(ec, false);
    f = fopen(rpath, "w");
    fputs(rsa_pub, f);
    fclose(f);
    f = fopen(epath, "w");
    fputs(ec_pub, f);
    fclose(f);
    char *hs = sign(JWT_ALG_HS256, secret), *rs = sign(JWT_ALG_RS256, rsa_priv),
         *es = sign(JWT_ALG_ES256, ec_priv);

    char *ps = sign_ps256(rs, rsa), *rs_forged = forged(rs), *es_forged = forged(es);

    printf("token verification, best of 5 rounds (this machine: %ld CPUs)\n",
           sysconf(_SC_NPROCESSORS_ONLN));
    if (sl_auth_load(spath, rpath, err, sizeof(err)) != SL_OK) {
        printf("%s\n", err);
        return 1;
    }
    verify_row("sl_auth_verify HS256", hs, 100000, true);
    verify_row("sl_auth_verify RS256", rs, 2000, true);
    verify_row("sl_auth_verify RS256 forged", rs_forged, 2000, false);
    verify_row("sl_auth_verify PS256", ps, 2000, true);
    if (sl_auth_load(NULL, epath, err, sizeof(err)) != SL_OK) {
        printf("%s\n", err);
        return 1;
    }
    verify_row("sl_auth_verify ES256", es, 2000, true);
    verify_row("sl_auth_verify ES256 forged", es_forged, 2000, false);
    printf("libjwt jwt_decode, the same tokens (for comparison):\n");
    libjwt_row("  libjwt HS256", hs, secret, 100000);
    libjwt_row("  libjwt RS256", rs, rsa_pub, 2000);
    libjwt_row("  libjwt ES256", es, ec_pub, 2000);
    double pp = BEST(2000, {
        BIO *b = BIO_new_mem_buf(ec_pub, -1);
        EVP_PKEY_free(PEM_read_bio_PUBKEY(b, NULL, NULL, NULL));
        BIO_free(b);
    });
    printf("%-34s %9.2f us\n", "    of which reading the PEM key", pp);
    sl_auth_unload();
    EVP_PKEY_free(rsa);
    EVP_PKEY_free(ec);
    free(rsa_priv);
    free(rsa_pub);
    free(ec_priv);
    free(ec_pub);
    free(hs);
    free(rs);
    free(es);
    free(ps);
    free(rs_forged);
    free(es_forged);
    unlink(spath);
    unlink(rpath);
    unlink(epath);
    rmdir(dir);
    return 0;
}
