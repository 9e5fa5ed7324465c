/*
 * bench_auth.c - what verifying a token costs (make bench-auth): µs per
 * sl_auth_verify for HS256, RS256 and ES256, and, to see where it goes,
 * libjwt's jwt_decode alone and OpenSSL reading the PEM public key (which
 * libjwt 1.10 does for every RS/ES token).  Keys are generated here; the
 * tokens are signed by libjwt.  Figures, not a test.
 */
#include "sl_auth.h"

#include <jwt.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
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

static void verify_row(const char *name, const char *tok, int n)
{
    char msg[200];
    sl_ident_t *id = NULL;
    if (sl_auth_verify(tok, strlen(tok), 1700000000000LL, &id, msg, sizeof(msg)) != SL_AUTH_OK) {
        printf("%s: refused: %s\n", name, msg);
        return;
    }
    sl_ident_free(id);
    double us = BEST(n, {
        sl_auth_verify(tok, strlen(tok), 1700000000000LL, &id, msg, sizeof(msg));
        sl_ident_free(id);
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

    printf("token verification, best of 5 rounds (this machine: %ld CPUs)\n",
           sysconf(_SC_NPROCESSORS_ONLN));
    if (sl_auth_load(spath, rpath, err, sizeof(err)) != SL_OK) {
        printf("%s\n", err);
        return 1;
    }
    verify_row("sl_auth_verify HS256", hs, 100000);
    double jd = BEST(100000, {
        jwt_t *j;
        jwt_decode(&j, hs, (const unsigned char *)secret, (int)strlen(secret));
        jwt_free(j);
    });
    printf("%-34s %9.2f us\n", "  of which libjwt jwt_decode", jd);
    verify_row("sl_auth_verify RS256", rs, 2000);
    if (sl_auth_load(NULL, epath, err, sizeof(err)) != SL_OK) {
        printf("%s\n", err);
        return 1;
    }
    verify_row("sl_auth_verify ES256", es, 2000);
    double pp = BEST(2000, {
        BIO *b = BIO_new_mem_buf(ec_pub, -1);
        EVP_PKEY_free(PEM_read_bio_PUBKEY(b, NULL, NULL, NULL));
        BIO_free(b);
    });
    printf("%-34s %9.2f us\n", "  of which reading the PEM key", pp);
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
    unlink(spath);
    unlink(rpath);
    unlink(epath);
    rmdir(dir);
    return 0;
}
