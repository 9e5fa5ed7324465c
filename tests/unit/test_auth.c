/*
 * test_auth.c - token verification: every algorithm with a key made here
 * (OpenSSL key generation; tokens signed by libjwt, PS* by OpenSSL), each
 * way a token can be wrong, the algorithm pinned to the key (alg none,
 * HS/RS key confusion), claims, key reload, and a few thousand malformed
 * and mutated tokens that must all be refused without a crash (the unit
 * test the issue asks for while tests/fuzz/ does not exist).
 *
 * libjwt is the independent reference: the server verifies with OpenSSL
 * directly (src/auth.c, verify_evp), and for HS*, RS* and ES* tokens -
 * valid ones, signatures with bits flipped, cut, lengthened, respelt, r and
 * s swapped, and the mutated-token corpus - our verdict must agree with
 * libjwt's jwt_decode (see agree()).
 */
#include "sl_auth.h"
#include "sl_test.h"

#include <jansson.h>
#include <jwt.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/pem.h>
#include <openssl/rsa.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

static char dir[64];
static char secret_path[128], rsa_path[128], ec256_path[128], ec384_path[128], ec521_path[128],
    bad_path[128];
static char *rsa_priv, *ec256_priv, *ec384_priv, *ec521_priv, *rsa_pub;
static char *ec_pubs[3]; /* P-256, P-384, P-521 public keys (PEM), for libjwt */
static size_t rsa_pub_len;
static const char SECRET[] = "0123456789abcdef0123456789abcdef-test-secret";
static int64_t now_ms;

/* ------------------------------------------------------------- helpers */

static void write_file(const char *path, const char *data, size_t len)
{
    FILE *f = fopen(path, "wb");
    fwrite(data, 1, len, f);
    fclose(f);
}

static char *pem_of(EVP_PKEY *k, bool priv, size_t *len)
{
    BIO *b = BIO_new(BIO_s_mem());
    if (priv)
        PEM_write_bio_PrivateKey(b, k, NULL, NULL, 0, NULL, NULL);
    else
        PEM_write_bio_PUBKEY(b, k);
    char *p;
    long n = BIO_get_mem_data(b, &p);
    char *out = malloc((size_t)n + 1);
    memcpy(out, p, (size_t)n);
    out[n] = '\0';
    if (len)
        *len = (size_t)n;
    BIO_free(b);
    return out;
}

static void make_keys(void)
{
    snprintf(dir, sizeof(dir), "/tmp/sl-auth-XXXXXX");
    if (mkdtemp(dir) == NULL)
        abort();
    snprintf(secret_path, sizeof(secret_path), "%s/secret", dir);
    snprintf(rsa_path, sizeof(rsa_path), "%s/rsa.pem", dir);
    snprintf(ec256_path, sizeof(ec256_path), "%s/ec256.pem", dir);
    snprintf(ec384_path, sizeof(ec384_path), "%s/ec384.pem", dir);
    snprintf(ec521_path, sizeof(ec521_path), "%s/ec521.pem", dir);
    snprintf(bad_path, sizeof(bad_path), "%s/bad.pem", dir);
    char s[sizeof(SECRET) + 1];
    snprintf(s, sizeof(s), "%s\n", SECRET); /* a trailing newline is not part of it */
    write_file(secret_path, s, strlen(s));
    write_file(bad_path, "not a key\n", 10);

    EVP_PKEY *rsa = EVP_PKEY_Q_keygen(NULL, NULL, "RSA", (size_t)2048);
    rsa_priv = pem_of(rsa, true, NULL);
    rsa_pub = pem_of(rsa, false, &rsa_pub_len);
    write_file(rsa_path, rsa_pub, rsa_pub_len);
    EVP_PKEY_free(rsa);
    const char *curves[] = {"P-256", "P-384", "P-521"};
    char **privs[] = {&ec256_priv, &ec384_priv, &ec521_priv};
    const char *paths[] = {ec256_path, ec384_path, ec521_path};
    for (int i = 0; i < 3; i++) {
        EVP_PKEY *ec = EVP_PKEY_Q_keygen(NULL, NULL, "EC", curves[i]);
        *privs[i] = pem_of(ec, true, NULL);
        size_t n;
        ec_pubs[i] = pem_of(ec, false, &n);
        write_file(paths[i], ec_pubs[i], n);
        EVP_PKEY_free(ec);
    }
}

static char *b64url(const uint8_t *d, size_t n)
{
    static const char tab[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    char *o = malloc(n * 4 / 3 + 4);
    size_t k = 0;
    for (size_t i = 0; i < n; i += 3) {
        uint32_t v = (uint32_t)d[i] << 16 | (i + 1 < n ? (uint32_t)d[i + 1] << 8 : 0) |
                     (i + 2 < n ? d[i + 2] : 0);
        o[k++] = tab[v >> 18 & 63];
        o[k++] = tab[v >> 12 & 63];
        if (i + 1 < n)
            o[k++] = tab[v >> 6 & 63];
        if (i + 2 < n)
            o[k++] = tab[v & 63];
    }
    o[k] = '\0';
    return o;
}

static char *b64url_str(const char *s)
{
    return b64url((const uint8_t *)s, strlen(s));
}

/* A token signed by libjwt (HS*, RS*, ES*). */
static char *sign(jwt_alg_t alg, const char *claims_json)
{
    jwt_t *j;
    jwt_new(&j);
    jwt_add_grants_json(j, claims_json);
    const char *key = SECRET;
    size_t klen = strlen(SECRET);
    if (alg >= JWT_ALG_RS256 && alg <= JWT_ALG_RS512)
        key = rsa_priv, klen = strlen(rsa_priv);
    else if (alg == JWT_ALG_ES256)
        key = ec256_priv, klen = strlen(ec256_priv);
    else if (alg == JWT_ALG_ES384)
        key = ec384_priv, klen = strlen(ec384_priv);
    else if (alg == JWT_ALG_ES512)
        key = ec521_priv, klen = strlen(ec521_priv);
    jwt_set_alg(j, alg, (const unsigned char *)key, (int)klen);
    char *t = jwt_encode_str(j);
    jwt_free(j);
    return t;
}

/* header.payload with a given header and an HMAC-SHA256 / PSS signature
 * or none, by hand (OpenSSL does the signing). */
static char *assemble(const char *header, const char *claims, const char *how)
{
    char *h = b64url_str(header), *p = b64url_str(claims);
    size_t in_len = strlen(h) + 1 + strlen(p);
    char *input = malloc(in_len + 1);
    snprintf(input, in_len + 1, "%s.%s", h, p);
    uint8_t sig[1024];
    size_t slen = 0;
    if (strcmp(how, "hmac-rsa-pub") == 0) {
        /* The confusion attack: the RSA public key's PEM as HMAC secret. */
        unsigned int n = 0;
        HMAC(EVP_sha256(), rsa_pub, (int)rsa_pub_len, (const uint8_t *)input, in_len, sig, &n);
        slen = n;
    } else if (strcmp(how, "hmac") == 0) {
        unsigned int n = 0;
        HMAC(EVP_sha256(), SECRET, (int)strlen(SECRET), (const uint8_t *)input, in_len, sig, &n);
        slen = n;
    } else if (strncmp(how, "pss", 3) == 0) {
        const EVP_MD *md = strcmp(how, "pss384") == 0   ? EVP_sha384()
                           : strcmp(how, "pss512") == 0 ? EVP_sha512()
                                                        : EVP_sha256();
        BIO *b = BIO_new_mem_buf(rsa_priv, -1);
        EVP_PKEY *k = PEM_read_bio_PrivateKey(b, NULL, NULL, NULL);
        BIO_free(b);
        EVP_MD_CTX *ctx = EVP_MD_CTX_new();
        EVP_PKEY_CTX *pctx;
        EVP_DigestSignInit(ctx, &pctx, md, NULL, k);
        EVP_PKEY_CTX_set_rsa_padding(pctx, RSA_PKCS1_PSS_PADDING);
        EVP_PKEY_CTX_set_rsa_pss_saltlen(pctx, RSA_PSS_SALTLEN_DIGEST);
        slen = sizeof(sig);
        EVP_DigestSign(ctx, sig, &slen, (const uint8_t *)input, in_len);
        EVP_MD_CTX_free(ctx);
        EVP_PKEY_free(k);
    }
    char *s = b64url(sig, slen);
    size_t tl = in_len + 1 + strlen(s);
    char *tok = malloc(tl + 1);
    snprintf(tok, tl + 1, "%s.%s", input, s);
    free(h);
    free(p);
    free(input);
    free(s);
    return tok;
}

static char *claims(const char *extra)
{
    static char buf[2048];
    snprintf(buf, sizeof(buf), "{\"sub\":\"alice\",\"exp\":%lld%s%s}",
             (long long)(now_ms / 1000 + 600), extra[0] ? "," : "", extra);
    return buf;
}

static sl_auth_result_t verify(const char *tok, sl_ident_t **id)
{
    char msg[256];
    sl_ident_t *tmp = NULL;
    sl_auth_result_t r = sl_auth_verify(tok, strlen(tok), now_ms, id ? id : &tmp, msg, sizeof(msg));
    if (r != SL_AUTH_OK)
        SL_CHECK(msg[0] != '\0'); /* every refusal says why */
    sl_ident_free(tmp);
    return r;
}

static void load(const char *secret, const char *pub)
{
    char err[256];
    int rc = sl_auth_load(secret, pub, err, sizeof(err));
    if (rc != SL_OK)
        fprintf(stderr, "load: %s\n", err);
    SL_CHECK_INT(rc, SL_OK);
}

/* ------------------------------------------------- libjwt, the reference */

/* The key libjwt verifies alg with: the secret, or the public key's PEM. */
static const char *ref_key(jwt_alg_t alg)
{
    switch (alg) {
    case JWT_ALG_RS256: case JWT_ALG_RS384: case JWT_ALG_RS512: return rsa_pub;
    case JWT_ALG_ES256: return ec_pubs[0];
    case JWT_ALG_ES384: return ec_pubs[1];
    case JWT_ALG_ES512: return ec_pubs[2];
    default: return SECRET;
    }
}

/* libjwt's jwt_decode accepts tok[0..n) as an alg token. */
static bool libjwt_accepts(const char *tok, size_t n, jwt_alg_t alg)
{
    char *copy = strndup(tok, n);
    const char *key = ref_key(alg);
    jwt_t *j = NULL;
    int rc = jwt_decode(&j, copy, (const unsigned char *)key, (int)strlen(key));
    bool ok = rc == 0 && j != NULL && jwt_get_alg(j) == alg;
    jwt_free(j);
    free(copy);
    return ok;
}

/* Verdicts counted by agree(): [ours * 2 + libjwt's], 1 = accepted. */
static int verdicts[4];

/* Our verdict on tok[0..n) (the key of alg's family loaded) against
 * libjwt's.  We never accept what libjwt refuses; where libjwt accepts and
 * we refuse, it is for one of our stricter rules that are not the
 * signature's arithmetic (canonical base64url, typ/crit, duplicate names,
 * the claims) - never "the signature does not verify".  A token with a NUL
 * inside is judged by both as the C string libjwt sees. */
static void agree(const char *tok, size_t n, jwt_alg_t alg)
{
    n = strnlen(tok, n);
    char msg[256];
    sl_ident_t *id = NULL;
    bool ours = sl_auth_verify(tok, n, now_ms, &id, msg, sizeof(msg)) == SL_AUTH_OK;
    sl_ident_free(id);
    bool ref = libjwt_accepts(tok, n, alg);
    if (ours && !ref)
        fprintf(stderr, "  accepted, libjwt refuses: %.*s\n", (int)n, tok);
    SL_CHECK(!ours || ref);
    if (ref && !ours && strstr(msg, "signature does not verify"))
        fprintf(stderr, "  libjwt accepts, our signature check refuses: %.*s\n", (int)n, tok);
    SL_CHECK(ours || !ref || strstr(msg, "signature does not verify") == NULL);
    verdicts[ours * 2 + ref]++;
}

/* A mutated token: refused as it is (all n bytes, NULs included), and
 * judged like libjwt as the C string it sees. */
static int mutants_accepted;

static void mutant(const char *tok, size_t n, jwt_alg_t alg)
{
    char msg[256];
    sl_ident_t *id = NULL;
    if (sl_auth_verify(tok, n, now_ms, &id, msg, sizeof(msg)) == SL_AUTH_OK) {
        mutants_accepted++;
        sl_ident_free(id);
    }
    agree(tok, n, alg);
}

/* The signature part of tok decoded into sig (at most 1024 bytes). */
static size_t sig_bytes(const char *tok, uint8_t *sig)
{
    const char *s = strrchr(tok, '.') + 1;
    static const char tab[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    uint32_t acc = 0;
    int bits = 0;
    size_t o = 0;
    for (; *s; s++) {
        acc = acc << 6 | (uint32_t)(strchr(tab, *s) - tab);
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            sig[o++] = (uint8_t)(acc >> bits);
        }
    }
    return o;
}

/* tok's header.payload with another signature (canonical base64url). */
static char *with_sig(const char *tok, const uint8_t *sig, size_t n)
{
    size_t head = (size_t)(strrchr(tok, '.') - tok);
    char *s = b64url(sig, n);
    char *out = malloc(head + 2 + strlen(s));
    sprintf(out, "%.*s.%s", (int)head, tok, s);
    free(s);
    return out;
}

/* --------------------------------------------------------------- tests */

static void test_every_algorithm(void)
{
    static const struct {
        jwt_alg_t alg;
        const char *name;
        const char **pub;
    } cases[] = {
        {JWT_ALG_HS256, "HS256", NULL},  {JWT_ALG_HS384, "HS384", NULL},
        {JWT_ALG_HS512, "HS512", NULL},  {JWT_ALG_RS256, "RS256", NULL},
        {JWT_ALG_RS384, "RS384", NULL},  {JWT_ALG_RS512, "RS512", NULL},
        {JWT_ALG_ES256, "ES256", NULL},  {JWT_ALG_ES384, "ES384", NULL},
        {JWT_ALG_ES512, "ES512", NULL},
    };
    const char *pubs[] = {NULL, NULL, NULL, rsa_path, rsa_path, rsa_path,
                          ec256_path, ec384_path, ec521_path};
    for (size_t i = 0; i < SL_ARRAY_LEN(cases); i++) {
        load(pubs[i] ? NULL : secret_path, pubs[i]);
        char *good = sign(cases[i].alg, claims("\"channels\":[\"a:*\"],\"info\":{\"n\":1}"));
        sl_ident_t *id = NULL;
        SL_CHECK_INT(verify(good, &id), SL_AUTH_OK);
        SL_CHECK(id && strcmp(id->user, "alice") == 0 && id->exp_ms > now_ms);
        SL_CHECK(id && id->nchannels == 1 && id->info && strcmp(id->info, "{\"n\":1}") == 0);
        sl_ident_free(id);

        char buf[64];
        snprintf(buf, sizeof(buf), "{\"sub\":\"a\",\"exp\":%lld}", (long long)(now_ms / 1000 - 5));
        char *expired = sign(cases[i].alg, buf);
        SL_CHECK_INT(verify(expired, NULL), SL_AUTH_TOKEN_EXPIRED);
        snprintf(buf, sizeof(buf), "{\"sub\":\"a\",\"nbf\":%lld}", (long long)(now_ms / 1000 + 60));
        char *early = sign(cases[i].alg, buf);
        SL_CHECK_INT(verify(early, NULL), SL_AUTH_NOT_YET_VALID);
        char *nosub = sign(cases[i].alg, "{\"exp\":99999999999}");
        SL_CHECK_INT(verify(nosub, NULL), SL_AUTH_INVALID_TOKEN);

        /* A wrong signature: one character in its middle changed. */
        char *bad = strdup(good);
        char *sig = strrchr(bad, '.') + 1;
        size_t mid = strlen(sig) / 2;
        sig[mid] = sig[mid] == 'A' ? 'B' : 'A';
        SL_CHECK_INT(verify(bad, NULL), SL_AUTH_INVALID_TOKEN);
        /* The signature cut off: "header.payload." */
        sig[0] = '\0';
        SL_CHECK_INT(verify(bad, NULL), SL_AUTH_INVALID_TOKEN);
        free(bad);
        free(good);
        free(expired);
        free(early);
        free(nosub);
    }
}

static void test_pss(void)
{
    load(NULL, rsa_path);
    const char *hows[] = {"pss", "pss384", "pss512"}, *algs[] = {"PS256", "PS384", "PS512"};
    for (int i = 0; i < 3; i++) {
        char hdr[64];
        snprintf(hdr, sizeof(hdr), "{\"alg\":\"%s\",\"typ\":\"JWT\"}", algs[i]);
        char *t = assemble(hdr, claims(""), hows[i]);
        SL_CHECK_INT(verify(t, NULL), SL_AUTH_OK);
        /* PS256's signature under PS384's name does not verify. */
        snprintf(hdr, sizeof(hdr), "{\"alg\":\"%s\"}", algs[(i + 1) % 3]);
        char *other = assemble(hdr, claims(""), hows[i]);
        SL_CHECK_INT(verify(other, NULL), SL_AUTH_INVALID_TOKEN);
        free(t);
        free(other);
    }
    /* A PS token with only the secret: no RSA key, wrong algorithm. */
    load(secret_path, NULL);
    char *t = assemble("{\"alg\":\"PS256\"}", claims(""), "pss");
    SL_CHECK_INT(verify(t, NULL), SL_AUTH_WRONG_ALGORITHM);
    free(t);
}

static void test_algorithm_pinned_to_key(void)
{
    /* alg none, with or without a signature. */
    load(secret_path, rsa_path);
    char *h = b64url_str("{\"alg\":\"none\",\"typ\":\"JWT\"}"), *p = b64url_str(claims(""));
    char none[2048];
    snprintf(none, sizeof(none), "%s.%s.", h, p);
    SL_CHECK_INT(verify(none, NULL), SL_AUTH_WRONG_ALGORITHM);
    snprintf(none, sizeof(none), "%s.%s.AAAA", h, p);
    SL_CHECK_INT(verify(none, NULL), SL_AUTH_WRONG_ALGORITHM);
    char *t = assemble("{\"alg\":\"None\"}", claims(""), "hmac");
    SL_CHECK_INT(verify(t, NULL), SL_AUTH_WRONG_ALGORITHM);
    free(t);
    t = assemble("{\"alg\":\"HS1\"}", claims(""), "hmac");
    SL_CHECK_INT(verify(t, NULL), SL_AUTH_WRONG_ALGORITHM);
    free(t);
    t = assemble("{\"typ\":\"JWT\"}", claims(""), "hmac");
    SL_CHECK_INT(verify(t, NULL), SL_AUTH_WRONG_ALGORITHM);
    free(t);
    free(h);
    free(p);

    /* HS/RS confusion: an HS256 token whose "secret" is the RSA public
     * key.  With only the public key configured it is the wrong algorithm;
     * with both, HS256 is checked with the real secret and fails. */
    char *confused = assemble("{\"alg\":\"HS256\",\"typ\":\"JWT\"}", claims(""), "hmac-rsa-pub");
    load(NULL, rsa_path);
    SL_CHECK_INT(verify(confused, NULL), SL_AUTH_WRONG_ALGORITHM);
    load(secret_path, rsa_path);
    SL_CHECK_INT(verify(confused, NULL), SL_AUTH_INVALID_TOKEN);
    free(confused);

    /* RS token, only a secret; ES token on the wrong curve; RS token with
     * an EC key. */
    char *rs = sign(JWT_ALG_RS256, claims(""));
    load(secret_path, NULL);
    SL_CHECK_INT(verify(rs, NULL), SL_AUTH_WRONG_ALGORITHM);
    load(NULL, ec256_path);
    SL_CHECK_INT(verify(rs, NULL), SL_AUTH_WRONG_ALGORITHM);
    char *es384 = sign(JWT_ALG_ES384, claims(""));
    SL_CHECK_INT(verify(es384, NULL), SL_AUTH_WRONG_ALGORITHM);
    char *hs = sign(JWT_ALG_HS256, claims(""));
    SL_CHECK_INT(verify(hs, NULL), SL_AUTH_WRONG_ALGORITHM);
    free(rs);
    free(es384);
    free(hs);
}

static void test_claims(void)
{
    load(secret_path, NULL);
    char *t;
#define EXPECT(extra, want)                                                     \
    do {                                                                        \
        t = assemble("{\"alg\":\"HS256\",\"typ\":\"JWT\"}", extra, "hmac");     \
        SL_CHECK_INT(verify(t, NULL), want);                                    \
        free(t);                                                                \
    } while (0)
    EXPECT("{\"sub\":\"\"}", SL_AUTH_INVALID_TOKEN);
    EXPECT("{\"sub\":42}", SL_AUTH_INVALID_TOKEN);
    EXPECT("{\"sub\":\"a\\u0001b\"}", SL_AUTH_INVALID_TOKEN);
    EXPECT("{\"sub\":\"a\\u0000b\"}", SL_AUTH_INVALID_TOKEN);
    EXPECT("{\"sub\":\"a\",\"sub\":\"b\"}", SL_AUTH_INVALID_TOKEN); /* duplicate keys */
    EXPECT("{\"sub\":\"a\",\"exp\":\"soon\"}", SL_AUTH_INVALID_TOKEN);
    EXPECT("{\"sub\":\"a\",\"exp\":1e300}", SL_AUTH_INVALID_TOKEN);
    EXPECT("{\"sub\":\"a\",\"channels\":\"a\"}", SL_AUTH_INVALID_TOKEN);
    EXPECT("{\"sub\":\"a\",\"channels\":[1]}", SL_AUTH_INVALID_TOKEN);
    EXPECT("{\"sub\":\"a\",\"publish\":[\"\"]}", SL_AUTH_INVALID_TOKEN);
    EXPECT("{\"sub\":\"a\",\"publish\":[\"*\", \"x*\", \"y\"]}", SL_AUTH_OK);
    EXPECT("{\"sub\":\"a\",\"info\":[1]}", SL_AUTH_INVALID_TOKEN);
    EXPECT("{\"sub\":\"a\",\"info\":null}", SL_AUTH_OK);
    EXPECT("{\"sub\":\"a\",\"exp\":99999999999.5,\"nbf\":1}", SL_AUTH_OK);
    /* Under a millisecond is still a time, long past - not "no exp"
     * (review r14 finding 8). */
    EXPECT("{\"sub\":\"a\",\"exp\":0.0001}", SL_AUTH_TOKEN_EXPIRED);
    EXPECT("{\"sub\":\"a\",\"exp\":0.0009}", SL_AUTH_TOKEN_EXPIRED);
    EXPECT("{\"sub\":\"a\",\"nbf\":0.0004}", SL_AUTH_OK);
    char big[1200 + 64];
    snprintf(big, sizeof(big), "{\"sub\":\"a\",\"info\":{\"x\":\"%01100d\"}}", 0);
    EXPECT(big, SL_AUTH_INVALID_TOKEN); /* info over 1 KiB */
    char longsub[200];
    snprintf(longsub, sizeof(longsub), "{\"sub\":\"%0129d\"}", 0);
    EXPECT(longsub, SL_AUTH_INVALID_TOKEN);

    sl_auth_set_policy(&(sl_auth_policy_t){.audience = "chat", .issuer = "me", .leeway_ms = 0});
    EXPECT("{\"sub\":\"a\",\"iss\":\"me\",\"aud\":\"chat\"}", SL_AUTH_OK);
    EXPECT("{\"sub\":\"a\",\"iss\":\"me\",\"aud\":[\"x\",\"chat\"]}", SL_AUTH_OK);
    EXPECT("{\"sub\":\"a\",\"iss\":\"me\",\"aud\":\"other\"}", SL_AUTH_WRONG_AUDIENCE);
    EXPECT("{\"sub\":\"a\",\"iss\":\"me\"}", SL_AUTH_WRONG_AUDIENCE);
    EXPECT("{\"sub\":\"a\",\"iss\":\"you\",\"aud\":\"chat\"}", SL_AUTH_WRONG_ISSUER);
    /* Leeway: expired 2 s ago passes with 5 s of leeway, not with 1. */
    char c2[128];
    snprintf(c2, sizeof(c2), "{\"sub\":\"a\",\"exp\":%lld}", (long long)(now_ms / 1000 - 2));
    sl_auth_set_policy(&(sl_auth_policy_t){.leeway_ms = 5000});
    EXPECT(c2, SL_AUTH_OK);
    sl_auth_set_policy(&(sl_auth_policy_t){.leeway_ms = 1000});
    EXPECT(c2, SL_AUTH_TOKEN_EXPIRED);
    sl_auth_set_policy(&(sl_auth_policy_t){0});
    /* Header rules. */
    t = assemble("{\"alg\":\"HS256\",\"typ\":\"JWS\"}", claims(""), "hmac");
    SL_CHECK_INT(verify(t, NULL), SL_AUTH_INVALID_TOKEN);
    free(t);
    t = assemble("{\"alg\":\"HS256\",\"crit\":[\"exp\"]}", claims(""), "hmac");
    SL_CHECK_INT(verify(t, NULL), SL_AUTH_INVALID_TOKEN);
    free(t);
    t = assemble("{\"alg\":\"HS256\"}", claims(""), "hmac"); /* no typ: fine */
    SL_CHECK_INT(verify(t, NULL), SL_AUTH_OK);
    free(t);
#undef EXPECT
}

static void test_patterns(void)
{
    char *p[] = {"chat:*", "dm#1,2", "*x"};
    SL_CHECK(sl_ident_grants(p, 3, "chat:room", 9));
    SL_CHECK(sl_ident_grants(p, 3, "chat:", 5));
    SL_CHECK(!sl_ident_grants(p, 3, "chat", 4));
    SL_CHECK(sl_ident_grants(p, 3, "dm#1,2", 6));
    SL_CHECK(!sl_ident_grants(p, 3, "dm#1", 4));
    SL_CHECK(!sl_ident_grants(p, 3, "x", 1)); /* '*' only at the end means "prefix" */
    char *all[] = {"*"};
    SL_CHECK(sl_ident_grants(all, 1, "anything", 8));
    SL_CHECK(sl_ident_grants(all, 1, "a:b#c", 5));
    SL_CHECK(!sl_ident_grants(NULL, 0, "anything", 8));
    /* A prefix stops at the namespace's ':' and the user list's '#' it
     * has not reached (review r14 finding 17). */
    char *chat[] = {"chat*"};
    SL_CHECK(sl_ident_grants(chat, 1, "chat", 4));
    SL_CHECK(sl_ident_grants(chat, 1, "chat-1", 6));
    SL_CHECK(!sl_ident_grants(chat, 1, "chatops:secret", 14));
    SL_CHECK(!sl_ident_grants(chat, 1, "chat:room", 9));
    SL_CHECK(!sl_ident_grants(chat, 1, "chat#bob", 8));
    char *ns[] = {"chat:*"};
    SL_CHECK(sl_ident_grants(ns, 1, "chat:a:b", 8)); /* ':' after the namespace: still in it */
    SL_CHECK(!sl_ident_grants(ns, 1, "chat:dm#bob", 11));
    char *users[] = {"chat:dm#*"};
    SL_CHECK(sl_ident_grants(users, 1, "chat:dm#bob", 11));
    SL_CHECK(sl_ident_grants(users, 1, "chat:dm#bob,carol", 17));
    SL_CHECK(!sl_ident_grants(users, 1, "chat:other#bob", 14));
}

static void test_malformed(void)
{
    load(secret_path, NULL);
    static const char *const junk[] = {
        "", ".", "..", "...", "a", "a.b", "a.b.c.d", "abc..def", ".e30.abc",
        "e30..abc", "!!.e30.abc", "e30.e30.abc=", "e30.e30.ab c", "e30.e30.a",
        "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhIn0", /* two parts */
        "eyJhbGciOiJIUzI1NiJ9.e30.@@@@",
        "W10.e30.abcd",                        /* header [] */
        "bnVsbA.e30.abcd",                     /* header null */
        "eyJhbGciOjF9.e30.abcd",               /* alg 1 */
        "eyJhbGciOiJIUzI1NiJ9.bm90IGpzb24.abcd", /* payload "not json" */
        "eyJhbGciOiJIUzI1NiJ9.W10.abcd",       /* payload [] */
        "eyJhbGciOiJIUzI1NiJ9.e30.abcd",       /* {} payload, bad signature */
        "eyJhbGciOiJIUzI1NiJ9.e30.abcde",      /* 5 characters: not base64url */
        "eyJhbGciOiJIUzI1NiJ9.e30.abcF",       /* non-zero trailing bits */
    };
    for (size_t i = 0; i < SL_ARRAY_LEN(junk); i++) {
        sl_auth_result_t r = verify(junk[i], NULL);
        SL_CHECK(r == SL_AUTH_INVALID_TOKEN || r == SL_AUTH_WRONG_ALGORITHM);
        if (r == SL_AUTH_OK)
            fprintf(stderr, "  accepted: %s\n", junk[i]);
    }
    /* Embedded NUL. */
    char *good = sign(JWT_ALG_HS256, claims(""));
    char copy[2048];
    size_t n = strlen(good);
    memcpy(copy, good, n);
    copy[10] = '\0';
    char msg[128];
    sl_ident_t *id = NULL;
    SL_CHECK_INT(sl_auth_verify(copy, n, now_ms, &id, msg, sizeof(msg)), SL_AUTH_INVALID_TOKEN);
    /* Oversized: refused unread, whatever it holds. */
    char *huge = malloc(SL_AUTH_TOKEN_MAX + 2);
    memset(huge, 'A', SL_AUTH_TOKEN_MAX + 1);
    huge[SL_AUTH_TOKEN_MAX + 1] = '\0';
    SL_CHECK_INT(verify(huge, NULL), SL_AUTH_TOKEN_TOO_LARGE);
    /* Just under the limit but a valid shape: read and refused. */
    huge[100] = '.';
    huge[200] = '.';
    huge[SL_AUTH_TOKEN_MAX] = '\0';
    SL_CHECK_INT(verify(huge, NULL), SL_AUTH_INVALID_TOKEN);
    free(huge);

    free(good);

    /* Mutations of a good HS256, RS256 and ES256 token: every
     * single-character change (every 7th character of the alphabet), and
     * random multi-byte ones, are refused - the canonical-encoding rule
     * means no respelling of a part verifies - and libjwt agrees (agree()). */
    static const char alphabet[] =
        "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.=+/ \x01\xff";
    static const struct {
        jwt_alg_t alg;
        const char *secret, *pub;
        int randoms;
    } kinds[] = {{JWT_ALG_HS256, secret_path, NULL, 5000},
                 {JWT_ALG_RS256, NULL, rsa_path, 1000},
                 {JWT_ALG_ES256, NULL, ec256_path, 1000}};
    memset(verdicts, 0, sizeof(verdicts));
    for (size_t k = 0; k < SL_ARRAY_LEN(kinds); k++) {
        load(kinds[k].secret, kinds[k].pub);
        good = sign(kinds[k].alg, claims(""));
        n = strlen(good);
        for (size_t i = 0; i < n; i++) {
            for (size_t a = 0; a < sizeof(alphabet) - 1; a += 7) {
                memcpy(copy, good, n + 1);
                if (copy[i] == alphabet[a])
                    continue;
                copy[i] = alphabet[a];
                mutant(copy, n, kinds[k].alg);
            }
        }
        srand(7);
        for (int r = 0; r < kinds[k].randoms; r++) {
            memcpy(copy, good, n + 1);
            int changes = 1 + rand() % 4;
            for (int c = 0; c < changes; c++)
                copy[rand() % n] = (char)(rand() % 256);
            if (memcmp(copy, good, n) == 0)
                continue;
            mutant(copy, n, kinds[k].alg);
        }
        free(good);
    }
    /* None accepted by us, whole or cut at a NUL (any that libjwt alone
     * accepts are respellings of the signature). */
    SL_CHECK_INT(mutants_accepted, 0);
    SL_CHECK_INT(verdicts[2] + verdicts[3], 0);
    fprintf(stderr, "  mutated tokens: %d refused by both, %d accepted by libjwt alone\n",
            verdicts[0], verdicts[1]);

    /* An RS256 signature is 256 bytes: 342 characters, the last one with 4
     * unused bits.  Respelt with one of those bits set it decodes to the
     * same bytes - and OpenSSL would verify it - but it is refused. */
    load(NULL, rsa_path);
    char *rs = sign(JWT_ALG_RS256, claims(""));
    SL_CHECK_INT(verify(rs, NULL), SL_AUTH_OK);
    static const char tab[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    char *last = rs + strlen(rs) - 1;
    *last = tab[(strchr(tab, *last) - tab) ^ 1];
    SL_CHECK_INT(verify(rs, NULL), SL_AUTH_INVALID_TOKEN);
    free(rs);
}

/* Our verifier and libjwt agree, algorithm by algorithm, on good tokens
 * and on signatures that are wrong in every way we can think of. */
static void test_agrees_with_libjwt(void)
{
    static const struct {
        jwt_alg_t alg;
        const char *name;
        const char *secret, *const *pub;
    } cases[] = {
        {JWT_ALG_HS256, "HS256", secret_path, NULL}, {JWT_ALG_HS384, "HS384", secret_path, NULL},
        {JWT_ALG_HS512, "HS512", secret_path, NULL}, {JWT_ALG_RS256, "RS256", NULL, NULL},
        {JWT_ALG_RS384, "RS384", NULL, NULL},        {JWT_ALG_RS512, "RS512", NULL, NULL},
        {JWT_ALG_ES256, "ES256", NULL, NULL},        {JWT_ALG_ES384, "ES384", NULL, NULL},
        {JWT_ALG_ES512, "ES512", NULL, NULL},
    };
    const char *pubs[] = {NULL, NULL, NULL, rsa_path, rsa_path, rsa_path,
                          ec256_path, ec384_path, ec521_path};
    memset(verdicts, 0, sizeof(verdicts));
    for (size_t c = 0; c < SL_ARRAY_LEN(cases); c++) {
        jwt_alg_t alg = cases[c].alg;
        load(cases[c].secret, pubs[c]);
        char *good = sign(alg, claims("\"publish\":[\"a:*\"]"));
        int before = verdicts[3];
        agree(good, strlen(good), alg);
        SL_CHECK_INT(verdicts[3], before + 1); /* both accept it */
        uint8_t sig[1024], m[1024];
        size_t n = sig_bytes(good, sig);
        /* Bits flipped, spread over the whole signature (at most ~200). */
        size_t step = n * 8 / 200 + 1;
        for (size_t bit = 0; bit < n * 8; bit += step) {
            memcpy(m, sig, n);
            m[bit / 8] ^= (uint8_t)(1u << (bit % 8));
            char *t = with_sig(good, m, n);
            agree(t, strlen(t), alg);
            free(t);
        }
        /* Cut, lengthened, emptied. */
        size_t lens[] = {n - 1, n + 1, n / 2, 0};
        for (size_t k = 0; k < SL_ARRAY_LEN(lens); k++) {
            memcpy(m, sig, n);
            m[n] = 0;
            char *t = with_sig(good, m, lens[k]);
            agree(t, strlen(t), alg);
            free(t);
        }
        if (strncmp(cases[c].name, "ES", 2) == 0) {
            /* r and s swapped; r or s zero. */
            size_t h = n / 2;
            memcpy(m, sig + h, h);
            memcpy(m + h, sig, h);
            char *t = with_sig(good, m, n);
            agree(t, strlen(t), alg);
            free(t);
            for (int z = 0; z < 2; z++) {
                memcpy(m, sig, n);
                memset(m + z * h, 0, h);
                t = with_sig(good, m, n);
                agree(t, strlen(t), alg);
                free(t);
            }
        }
        /* The last character respelt (its unused bits set): the same bytes
         * to a lenient decoder; we refuse the spelling (if it has such bits). */
        char *respelt = strdup(good);
        static const char tab[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        char *last = respelt + strlen(respelt) - 1;
        *last = tab[(strchr(tab, *last) - tab) ^ 1];
        agree(respelt, strlen(respelt), alg);
        free(respelt);
        /* Another payload under the good signature; the header naming
         * another algorithm of the family. */
        char *other = sign(alg, claims("\"publish\":[\"b:*\"]"));
        size_t head = (size_t)(strrchr(other, '.') - other);
        char *spliced = malloc(head + strlen(strrchr(good, '.')) + 1);
        sprintf(spliced, "%.*s%s", (int)head, other, strrchr(good, '.'));
        agree(spliced, strlen(spliced), alg);
        free(spliced);
        free(other);
        free(good);
    }
    /* The corpus had both verdicts in it, and plenty of each. */
    fprintf(stderr, "  agreement: both accept %d, both refuse %d, only libjwt accepts %d\n",
            verdicts[3], verdicts[0], verdicts[1]);
    SL_CHECK(verdicts[3] >= 9 && verdicts[0] >= 1000);
    SL_CHECK_INT(verdicts[2], 0); /* never we alone */
}

static void test_load_and_reload(void)
{
    char err[256];
    load(secret_path, NULL);
    char *t = sign(JWT_ALG_HS256, claims(""));
    SL_CHECK_INT(verify(t, NULL), SL_AUTH_OK);
    /* A bad file: refused, and the keys in use stay. */
    SL_CHECK_INT(sl_auth_load(NULL, bad_path, err, sizeof(err)), SL_ERROR);
    SL_CHECK(strstr(err, "not a PEM public key") != NULL);
    SL_CHECK_INT(sl_auth_load("/nonexistent/secret", NULL, err, sizeof(err)), SL_ERROR);
    SL_CHECK(strstr(err, "cannot open") != NULL);
    char shortp[160];
    snprintf(shortp, sizeof(shortp), "%s/short", dir);
    write_file(shortp, "tooshort\n", 9);
    SL_CHECK_INT(sl_auth_load(shortp, NULL, err, sizeof(err)), SL_ERROR);
    SL_CHECK(strstr(err, "at least 32") != NULL);
    SL_CHECK_INT(verify(t, NULL), SL_AUTH_OK);
    /* A good new key replaces the old: old tokens fail, new ones pass. */
    load(NULL, rsa_path);
    SL_CHECK_INT(verify(t, NULL), SL_AUTH_WRONG_ALGORITHM);
    char *r = sign(JWT_ALG_RS256, claims(""));
    SL_CHECK_INT(verify(r, NULL), SL_AUTH_OK);
    /* A weak RSA key is refused. */
    EVP_PKEY *weak = EVP_PKEY_Q_keygen(NULL, NULL, "RSA", (size_t)1024);
    size_t wl;
    char *wp = pem_of(weak, false, &wl);
    char weak_path[160];
    snprintf(weak_path, sizeof(weak_path), "%s/weak.pem", dir);
    write_file(weak_path, wp, wl);
    SL_CHECK_INT(sl_auth_load(NULL, weak_path, err, sizeof(err)), SL_ERROR);
    SL_CHECK(strstr(err, "1024-bit") != NULL);
    EVP_PKEY_free(weak);
    free(wp);
    /* A reload that must reach a fingerprint (the master's): another key
     * is refused and the keys in use stay (review r14 finding 16). */
    uint64_t rsa_fp = sl_auth_fingerprint();
    SL_CHECK(rsa_fp != 0);
    load(secret_path, NULL);
    uint64_t secret_fp = sl_auth_fingerprint();
    SL_CHECK(secret_fp != 0 && secret_fp != rsa_fp);
    SL_CHECK_INT(sl_auth_reload(NULL, rsa_path, secret_fp, err, sizeof(err)), SL_ERROR);
    SL_CHECK(strstr(err, "atomic rename") != NULL);
    SL_CHECK(sl_auth_fingerprint() == secret_fp);
    SL_CHECK_INT(verify(t, NULL), SL_AUTH_OK);
    SL_CHECK_INT(sl_auth_reload(NULL, rsa_path, rsa_fp, err, sizeof(err)), SL_OK);
    SL_CHECK(sl_auth_fingerprint() == rsa_fp);
    SL_CHECK_INT(verify(r, NULL), SL_AUTH_OK);
    sl_auth_unload();
    SL_CHECK(!sl_auth_enabled());
    SL_CHECK(sl_auth_fingerprint() == 0);
    SL_CHECK_INT(verify(r, NULL), SL_AUTH_NOT_CONFIGURED);
    free(t);
    free(r);
}

/* What a peer is told never names the server's keys, audience or issuer;
 * the log's detail does (review r14 finding 15). */
static void test_peer_messages(void)
{
    load(secret_path, NULL);
    sl_auth_set_policy(&(sl_auth_policy_t){.audience = "aud-secret", .issuer = "iss-secret"});
    char msg[256];
    sl_ident_t *id = NULL;
    struct {
        char *token;
        sl_auth_result_t want;
        const char *detail; /* in the log's message */
    } cases[] = {
        {NULL, SL_AUTH_WRONG_ALGORITHM, "EC"},
        {NULL, SL_AUTH_WRONG_ALGORITHM, "RSA"},
        {NULL, SL_AUTH_WRONG_AUDIENCE, "aud-secret"},
        {NULL, SL_AUTH_WRONG_ISSUER, "iss-secret"},
    };
    /* One at a time: claims() returns a static buffer. */
    cases[0].token = sign(JWT_ALG_ES384, claims(""));
    cases[1].token = sign(JWT_ALG_RS256, claims(""));
    cases[2].token = sign(JWT_ALG_HS256, claims("\"iss\":\"iss-secret\",\"aud\":\"x\""));
    cases[3].token = sign(JWT_ALG_HS256, claims("\"iss\":\"x\",\"aud\":\"aud-secret\""));
    for (size_t i = 0; i < SL_ARRAY_LEN(cases); i++) {
        sl_auth_result_t r =
            sl_auth_verify(cases[i].token, strlen(cases[i].token), now_ms, &id, msg, sizeof(msg));
        SL_CHECK_INT(r, cases[i].want);
        SL_CHECK(strstr(msg, cases[i].detail) != NULL);
        const char *peer = sl_auth_peer_message(r, msg);
        SL_CHECK(strstr(peer, cases[i].detail) == NULL && strstr(peer, "--jwt") == NULL &&
                 strstr(peer, "curve") == NULL && strstr(peer, "secret") == NULL);
        free(cases[i].token);
    }
    /* Other refusals keep their detail: it names only the token's own
     * content. */
    SL_CHECK_STR(sl_auth_peer_message(SL_AUTH_INVALID_TOKEN, "the HS256 signature does not verify"),
                 "the HS256 signature does not verify");
    sl_auth_set_policy(&(sl_auth_policy_t){0});
}

int main(void)
{
    now_ms = (int64_t)time(NULL) * 1000;
    make_keys();
    SL_TEST_RUN(test_every_algorithm);
    SL_TEST_RUN(test_pss);
    SL_TEST_RUN(test_algorithm_pinned_to_key);
    SL_TEST_RUN(test_claims);
    SL_TEST_RUN(test_patterns);
    SL_TEST_RUN(test_malformed);
    SL_TEST_RUN(test_agrees_with_libjwt);
    SL_TEST_RUN(test_load_and_reload);
    SL_TEST_RUN(test_peer_messages);
    char cmd[96];
    snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
    if (system(cmd) != 0)
        fprintf(stderr, "could not remove %s\n", dir);
    sl_auth_unload();
    free(rsa_priv);
    free(rsa_pub);
    free(ec256_priv);
    free(ec384_priv);
    free(ec521_priv);
    for (int i = 0; i < 3; i++)
        free(ec_pubs[i]);
    return sl_test_summary();
}
