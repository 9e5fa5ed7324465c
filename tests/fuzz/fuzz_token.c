/*
 * fuzz_token.c - JSON Web Token verification (src/auth.c: sl_auth_verify):
 * the token's shape, the header and its algorithm pinning, the signature
 * binding, and the claims.
 *
 * Keys are generated for the run (an HMAC secret, RSA 2048, EC P-256,
 * P-384 and P-521), their public halves written to files and loaded with
 * sl_auth_load like the server does; the harness holds the private keys, so
 * it can sign what the fuzzer writes and reach every claim rule (a fuzzer
 * cannot forge a signature).  Since the keys are new for each run, a corpus
 * input means the same thing in every run.
 *
 * Input: byte 0: mode (bits 0-2), key set (bits 3-5), leeway 30 s (bit 6),
 * --jwt-audience "api" (bit 7); byte 1: the algorithm (bits 0-3), header
 * variant (bits 4-6), --jwt-issuer "https://iss" (bit 7); then the mode's
 * bytes.  Modes:
 *   0  the rest is the token itself: never accepted
 *   1  byte 2 = header length, then the header's JSON text, the rest the
 *      payload's: signed with the header's algorithm (when known and its
 *      key is loaded); the verdict must equal the reference's
 *   2  a header made here (algorithm, typ/crit variant), the rest the
 *      payload: signed; the verdict must equal the reference's
 *   3  key confusion: header HS256/384/512, HMAC keyed with the loaded
 *      public key's PEM text: never accepted
 *   4  another algorithm's signature (byte 2 names it): never accepted
 *   5  a good token with one byte changed (bytes 2-3 where, byte 4 how):
 *      never accepted; the untouched token verifies as before afterwards
 *      (no state left behind)
 *   6  "none" and friends, or an empty or garbage signature: never accepted
 *   7  a token over 8 KiB: token-too-large
 * The reference (ref_verdict) is written from the documented rules
 * (docs/protocol.md 3.1, sl_auth.h), not from auth.c: the header checks in
 * their order, then the claims - sub, exp/nbf, expiry, not-before,
 * audience, issuer, channels/publish, info - and on success the identity
 * must carry exactly the claims.
 */
#include "sl_auth.h"
#include "sl_ws.h" /* sl_utf8_valid */

#include <jansson.h>
#include <openssl/core_names.h>
#include <openssl/ec.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/rsa.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t n);

#define NOW_MS 1700000000000LL

/* Indexed by byte 1 & 15: the HMAC and EC families more often than RSA
 * (an RSA signature costs a millisecond). */
static const char *const ALG[16] = {"HS256", "HS384", "HS512", "HS256", "ES256", "ES384",
                                    "ES512", "ES256", "RS256", "RS384", "RS512", "PS256",
                                    "PS384", "PS512", "HS256", "ES256"};
enum { K_SECRET = 1, K_RSA = 2, K_EC256 = 4, K_EC384 = 8, K_EC521 = 16 };
/* Key sets (byte 0 bits 3-5). */
static const int KEYSET[8] = {K_SECRET | K_RSA, K_SECRET | K_EC256, K_SECRET,    K_RSA,
                              K_EC384,          K_SECRET | K_EC521, K_EC256,     0};

static EVP_PKEY *rsa, *ec[3]; /* ec: P-256, P-384, P-521 */
static unsigned char secret[48];
static char dir[] = "/tmp/fuzz_token.XXXXXX";
static char f_secret[64], f_rsa[64], f_ec[3][64];
static char *pem_rsa, *pem_ec[3];
static int loaded = -1;

static void cleanup(void)
{
    unlink(f_secret);
    unlink(f_rsa);
    for (int i = 0; i < 3; i++)
        unlink(f_ec[i]);
    rmdir(dir);
}

static char *write_pub(EVP_PKEY *k, const char *path)
{
    FILE *f = fopen(path, "w");
    if (f == NULL || PEM_write_PUBKEY(f, k) != 1)
        abort();
    fclose(f);
    f = fopen(path, "r");
    char *buf = calloc(1, 8192);
    if (f == NULL || buf == NULL || fread(buf, 1, 8191, f) == 0)
        abort();
    fclose(f);
    return buf;
}

static void init_once(void)
{
    static bool done;
    if (done)
        return;
    done = true;
    if (mkdtemp(dir) == NULL)
        abort();
    atexit(cleanup);
    if (RAND_bytes(secret, sizeof(secret)) != 1)
        abort();
    for (size_t i = 0; i < sizeof(secret); i++)
        secret[i] = (unsigned char)('a' + secret[i] % 26); /* text: no trailing newline */
    snprintf(f_secret, sizeof(f_secret), "%s/secret", dir);
    FILE *f = fopen(f_secret, "w");
    if (f == NULL || fwrite(secret, 1, sizeof(secret), f) != sizeof(secret))
        abort();
    fclose(f);
    rsa = EVP_RSA_gen(2048);
    ec[0] = EVP_EC_gen("P-256");
    ec[1] = EVP_EC_gen("P-384");
    ec[2] = EVP_EC_gen("P-521");
    if (!rsa || !ec[0] || !ec[1] || !ec[2])
        abort();
    snprintf(f_rsa, sizeof(f_rsa), "%s/rsa.pem", dir);
    pem_rsa = write_pub(rsa, f_rsa);
    for (int i = 0; i < 3; i++) {
        snprintf(f_ec[i], sizeof(f_ec[i]), "%s/ec%d.pem", dir, i);
        pem_ec[i] = write_pub(ec[i], f_ec[i]);
    }
}

static void load_keys(int set)
{
    if (set == loaded)
        return;
    int k = KEYSET[set];
    const char *pub = k & K_RSA     ? f_rsa
                      : k & K_EC256 ? f_ec[0]
                      : k & K_EC384 ? f_ec[1]
                      : k & K_EC521 ? f_ec[2]
                                    : NULL;
    char err[256];
    if (k == 0)
        sl_auth_unload();
    else if (sl_auth_load(k & K_SECRET ? f_secret : NULL, pub, err, sizeof(err)) != SL_OK) {
        fprintf(stderr, "sl_auth_load: %s\n", err);
        abort();
    }
    loaded = set;
}

/* ---------------------------------------------------------------- encoding */

static size_t b64url(const uint8_t *in, size_t n, char *out)
{
    static const char abc[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    size_t o = 0;
    for (size_t i = 0; i < n; i += 3) {
        uint32_t v = (uint32_t)in[i] << 16;
        if (i + 1 < n)
            v |= (uint32_t)in[i + 1] << 8;
        if (i + 2 < n)
            v |= in[i + 2];
        out[o++] = abc[v >> 18 & 63];
        out[o++] = abc[v >> 12 & 63];
        if (i + 1 < n)
            out[o++] = abc[v >> 6 & 63];
        if (i + 2 < n)
            out[o++] = abc[v & 63];
    }
    return o;
}

typedef struct {
    int fam; /* 'H', 'R', 'P', 'E' */
    const char *md;
    int ec; /* ec[] index */
} alg_t;

static bool alg_of(const char *name, alg_t *a)
{
    static const char *const names[] = {"HS256", "HS384", "HS512", "RS256", "RS384", "RS512",
                                        "PS256", "PS384", "PS512", "ES256", "ES384", "ES512"};
    static const char *const mds[] = {"SHA256", "SHA384", "SHA512"};
    for (int i = 0; i < 12; i++)
        if (strcmp(names[i], name) == 0) {
            a->fam = "HRPE"[i / 3];
            a->md = mds[i % 3];
            a->ec = i % 3;
            return true;
        }
    return false;
}

static bool key_loaded(const alg_t *a, int set)
{
    int k = KEYSET[set];
    switch (a->fam) {
    case 'H': return k & K_SECRET;
    case 'R':
    case 'P': return k & K_RSA;
    default: return k & (K_EC256 << a->ec);
    }
}

/* The signature of msg[0..n) with algorithm a (HMAC keyed with key/klen
 * when given, else the run's secret).  Returns its length in sig. */
static size_t sign(const alg_t *a, const char *msg, size_t n, uint8_t *sig, const void *key,
                   size_t klen)
{
    size_t len = 0;
    if (a->fam == 'H') {
        if (EVP_Q_mac(NULL, "HMAC", NULL, a->md, NULL, key ? key : secret,
                      key ? klen : sizeof(secret), (const unsigned char *)msg, n, sig, 64,
                      &len) == NULL)
            abort();
        return len;
    }
    EVP_PKEY *k = a->fam == 'E' ? ec[a->ec] : rsa;
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    EVP_PKEY_CTX *pctx = NULL;
    uint8_t der[600];
    size_t dlen = sizeof(der);
    len = 512; /* room in sig (make_token's) for an RSA 2048 signature */
    if (ctx == NULL || EVP_DigestSignInit_ex(ctx, &pctx, a->md, NULL, NULL, k, NULL) != 1)
        abort();
    if (a->fam == 'P' && (EVP_PKEY_CTX_set_rsa_padding(pctx, RSA_PKCS1_PSS_PADDING) != 1 ||
                          EVP_PKEY_CTX_set_rsa_pss_saltlen(pctx, RSA_PSS_SALTLEN_DIGEST) != 1))
        abort();
    if (EVP_DigestSign(ctx, a->fam == 'E' ? der : sig, a->fam == 'E' ? &dlen : &len,
                       (const unsigned char *)msg, n) != 1)
        abort();
    EVP_MD_CTX_free(ctx);
    if (a->fam != 'E')
        return len;
    /* DER -> JOSE r || s, each as wide as the curve. */
    static const size_t width[3] = {32, 48, 66};
    const unsigned char *p = der;
    ECDSA_SIG *es = d2i_ECDSA_SIG(NULL, &p, (long)dlen);
    if (es == NULL)
        abort();
    size_t w = width[a->ec];
    if (BN_bn2binpad(ECDSA_SIG_get0_r(es), sig, (int)w) != (int)w ||
        BN_bn2binpad(ECDSA_SIG_get0_s(es), sig + w, (int)w) != (int)w)
        abort();
    ECDSA_SIG_free(es);
    return 2 * w;
}

/* header.payload.signature: the two JSON texts encoded, the signature made
 * over them with `a` (none: an empty signature). */
static size_t make_token(const uint8_t *hdr, size_t hn, const uint8_t *pl, size_t pn,
                         const alg_t *a, const void *key, size_t klen, char *out)
{
    size_t o = b64url(hdr, hn, out);
    out[o++] = '.';
    o += b64url(pl, pn, out + o);
    uint8_t sig[600];
    size_t sn = a ? sign(a, out, o, sig, key, klen) : 0;
    out[o++] = '.';
    return o + b64url(sig, sn, out + o);
}

/* ---------------------------------------------------------------- reference */

typedef struct {
    const char *aud, *iss;
    int64_t leeway;
} policy_t;

static bool id_valid(const char *s, size_t len)
{
    if (len == 0 || len > 128 || !sl_utf8_valid((const uint8_t *)s, len))
        return false;
    for (size_t i = 0; i < len; i++) {
        uint8_t b = (uint8_t)s[i];
        if (b < 0x20 || b == 0x7f || (b == 0xc2 && i + 1 < len && (uint8_t)s[i + 1] >= 0x80 &&
                                      (uint8_t)s[i + 1] <= 0x9f))
            return false;
    }
    return true;
}

static bool str_is(json_t *v, const char *want)
{
    return json_is_string(v) && json_string_length(v) == strlen(want) &&
           memcmp(json_string_value(v), want, strlen(want)) == 0;
}

static bool patterns_ok(json_t *a)
{
    if (a == NULL || json_is_null(a))
        return true;
    if (!json_is_array(a))
        return false;
    size_t i;
    json_t *v;
    json_array_foreach(a, i, v)
    {
        if (!json_is_string(v) || json_string_length(v) == 0)
            return false;
        size_t len = json_string_length(v);
        const char *s = json_string_value(v);
        size_t idlen = s[len - 1] == '*' ? len - 1 : len;
        if (idlen > 0 && !id_valid(s, idlen))
            return false;
    }
    return true;
}

/* A time claim as wall ms: 0 absent, -1 not a number in (0, 1e13) s. */
static int64_t time_claim(json_t *v)
{
    if (v == NULL)
        return 0;
    if (!json_is_number(v))
        return -1;
    double s = json_number_value(v);
    return s > 0 && s < 1e13 ? (int64_t)(s * 1000.0) : -1;
}

/* The verdict on a correctly signed token with this header and payload. */
static sl_auth_result_t ref_verdict(json_t *hdr, json_t *claims, int set, const policy_t *p)
{
    if (KEYSET[set] == 0)
        return SL_AUTH_NOT_CONFIGURED;
    if (!json_is_object(hdr))
        return SL_AUTH_INVALID_TOKEN;
    alg_t a;
    json_t *alg = json_object_get(hdr, "alg");
    if (!json_is_string(alg) || strlen(json_string_value(alg)) != json_string_length(alg) ||
        !alg_of(json_string_value(alg), &a) || !key_loaded(&a, set))
        return SL_AUTH_WRONG_ALGORITHM;
    json_t *typ = json_object_get(hdr, "typ");
    if (json_object_get(hdr, "crit") ||
        (typ && !(json_is_string(typ) && json_string_length(typ) == 3 &&
                  strcasecmp(json_string_value(typ), "JWT") == 0)))
        return SL_AUTH_INVALID_TOKEN;
    if (!json_is_object(claims))
        return SL_AUTH_INVALID_TOKEN;
    json_t *sub = json_object_get(claims, "sub");
    if (!json_is_string(sub) || !id_valid(json_string_value(sub), json_string_length(sub)))
        return SL_AUTH_INVALID_TOKEN;
    int64_t exp = time_claim(json_object_get(claims, "exp")),
            nbf = time_claim(json_object_get(claims, "nbf"));
    if (exp < 0 || nbf < 0)
        return SL_AUTH_INVALID_TOKEN;
    if (exp && NOW_MS >= exp + p->leeway)
        return SL_AUTH_TOKEN_EXPIRED;
    if (nbf && NOW_MS + p->leeway < nbf)
        return SL_AUTH_NOT_YET_VALID;
    if (p->aud) {
        json_t *aud = json_object_get(claims, "aud"), *v;
        bool ok = str_is(aud, p->aud);
        size_t i;
        json_array_foreach(aud, i, v) ok = ok || str_is(v, p->aud);
        if (!ok)
            return SL_AUTH_WRONG_AUDIENCE;
    }
    if (p->iss && !str_is(json_object_get(claims, "iss"), p->iss))
        return SL_AUTH_WRONG_ISSUER;
    if (!patterns_ok(json_object_get(claims, "channels")) ||
        !patterns_ok(json_object_get(claims, "publish")))
        return SL_AUTH_INVALID_TOKEN;
    json_t *info = json_object_get(claims, "info");
    if (info && !json_is_null(info)) {
        char *enc = json_is_object(info) ? json_dumps(info, JSON_COMPACT) : NULL;
        bool ok = enc && strlen(enc) <= 1024;
        free(enc);
        if (!ok)
            return SL_AUTH_INVALID_TOKEN;
    }
    return SL_AUTH_OK;
}

static bool list_is(json_t *a, char **list, uint32_t n)
{
    if (a == NULL || json_is_null(a))
        return n == 0;
    if (json_array_size(a) != n)
        return false;
    for (uint32_t i = 0; i < n; i++)
        if (!str_is(json_array_get(a, i), list[i]))
            return false;
    return true;
}

/* An accepted token's identity carries exactly its claims. */
static void check_ident(const sl_ident_t *id, json_t *claims)
{
    json_t *info = json_object_get(claims, "info");
    char *enc = info && !json_is_null(info) ? json_dumps(info, JSON_COMPACT) : NULL;
    if (!str_is(json_object_get(claims, "sub"), id->user) ||
        id->exp_ms != time_claim(json_object_get(claims, "exp")) ||
        !list_is(json_object_get(claims, "channels"), id->channels, id->nchannels) ||
        !list_is(json_object_get(claims, "publish"), id->publish, id->npublish) ||
        (enc == NULL) != (id->info == NULL) || (enc && strcmp(enc, id->info) != 0)) {
        fprintf(stderr, "the identity does not carry the token's claims\n");
        abort();
    }
    free(enc);
}

/* ------------------------------------------------------------------ runs */

static char tok[SL_AUTH_TOKEN_MAX * 2 + 2048];

/* Verify; the message is always a NUL-terminated text, empty on success. */
static sl_auth_result_t verify(const char *t, size_t len, sl_ident_t **id)
{
    char msg[200];
    memset(msg, 'x', sizeof(msg));
    sl_auth_result_t r = sl_auth_verify(t, len, NOW_MS, id, msg, sizeof(msg));
    if ((unsigned)r >= SL_AUTH__COUNT || memchr(msg, '\0', sizeof(msg)) == NULL ||
        (r == SL_AUTH_OK) != (msg[0] == '\0') || (r == SL_AUTH_OK) != (*id != NULL)) {
        fprintf(stderr, "bad verdict %d / message / identity\n", (int)r);
        abort();
    }
    return r;
}

static void never_accepted(const char *t, size_t len, const char *what)
{
    sl_ident_t *id = NULL;
    if (verify(t, len, &id) == SL_AUTH_OK) {
        fprintf(stderr, "%s was accepted: %.*s\n", what, (int)SL_MIN(len, 400), t);
        abort();
    }
}

/* Sign and verify; the verdict must be the reference's. */
static sl_auth_result_t signed_run(const uint8_t *hdr, size_t hn, const uint8_t *pl, size_t pn,
                                   int set, const policy_t *p, size_t *tlen)
{
    json_t *h = json_loadb((const char *)hdr, hn, JSON_REJECT_DUPLICATES, NULL);
    json_t *c = json_loadb((const char *)pl, pn, JSON_REJECT_DUPLICATES, NULL);
    alg_t a, hs = {'H', "SHA256", 0};
    json_t *alg = json_object_get(h, "alg");
    bool known = json_is_string(alg) && alg_of(json_string_value(alg), &a);
    /* Signed with the header's algorithm when we can; otherwise HS256 (the
     * verdict is then decided before the signature). */
    *tlen = make_token(hdr, hn, pl, pn, known ? &a : &hs, NULL, 0, tok);
    /* Before the header: a key at all, the size, three non-empty parts. */
    sl_auth_result_t want = KEYSET[set] == 0            ? SL_AUTH_NOT_CONFIGURED
                            : *tlen > SL_AUTH_TOKEN_MAX ? SL_AUTH_TOKEN_TOO_LARGE
                            : hn == 0 || pn == 0        ? SL_AUTH_INVALID_TOKEN
                                                        : ref_verdict(h, c, set, p);
    sl_ident_t *id = NULL;
    sl_auth_result_t got = verify(tok, *tlen, &id);
    if (got != want) {
        fprintf(stderr, "verdict %s, the reference says %s\nheader %.*s\npayload %.*s\n",
                sl_auth_reason(got), sl_auth_reason(want), (int)hn, hdr, (int)SL_MIN(pn, 2000),
                pl);
        abort();
    }
    if (id)
        check_ident(id, c);
    sl_ident_free(id);
    json_decref(h);
    json_decref(c);
    return got;
}

/* A header for algorithm `name` in one of 8 variants (typ, crit, kid). */
static size_t make_header(const char *name, int variant, char *out, size_t cap)
{
    static const char *const extra[8] = {"", ",\"typ\":\"JWT\"", ",\"typ\":\"jwt\"",
                                         ",\"typ\":\"JOSE\"", ",\"typ\":1",
                                         ",\"crit\":[\"exp\"]", ",\"kid\":\"k1\"",
                                         ",\"typ\":\"JWT\",\"alg\":\"none\""};
    return (size_t)snprintf(out, cap, "{\"alg\":\"%s\"%s}", name, extra[variant & 7]);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t n)
{
    init_once();
    if (n < 2)
        return 0;
    int mode = data[0] & 7, set = (data[0] >> 3) & 7;
    policy_t p = {.aud = (data[0] & 0x80) ? "api" : NULL,
                  .iss = (data[1] & 0x80) ? "https://iss" : NULL,
                  .leeway = (data[0] & 0x40) ? 30000 : 0};
    sl_auth_policy_t sp = {.audience = p.aud, .issuer = p.iss, .leeway_ms = p.leeway};
    sl_auth_set_policy(&sp);
    load_keys(set);
    const char *name = ALG[data[1] & 15];
    int variant = (data[1] >> 4) & 7;
    const uint8_t *rest = data + 2;
    size_t rn = n - 2;
    char hdr[128];
    size_t hn, tlen;
    alg_t a;
    switch (mode) {
    case 0:
        never_accepted((const char *)rest, rn, "an unsigned token");
        break;
    case 1: {
        size_t l = rn ? SL_MIN(rest[0], rn - 1) : 0;
        if (rn)
            signed_run(rest + 1, l, rest + 1 + l, rn - 1 - l, set, &p, &tlen);
        break;
    }
    case 2:
        hn = make_header(name, variant, hdr, sizeof(hdr));
        signed_run((const uint8_t *)hdr, hn, rest, rn, set, &p, &tlen);
        break;
    case 3: {
        /* The classic attack: the public key used as an HMAC secret. */
        int k = KEYSET[set];
        const char *pem = k & K_EC256 ? pem_ec[0]
                          : k & K_EC384 ? pem_ec[1]
                          : k & K_EC521 ? pem_ec[2]
                                        : pem_rsa;
        static const char *const hs[3] = {"HS256", "HS384", "HS512"};
        hn = make_header(hs[data[1] % 3], variant & 1, hdr, sizeof(hdr));
        alg_of(hs[data[1] % 3], &a);
        tlen = make_token((const uint8_t *)hdr, hn, rest, rn, &a, pem, strlen(pem), tok);
        never_accepted(tok, tlen, "an HMAC keyed with the public key");
        break;
    }
    case 4: {
        if (rn < 1)
            break;
        alg_t b;
        alg_of(name, &a);
        const char *other = ALG[rest[0] & 15];
        if (strcmp(other, name) == 0)
            other = strcmp(name, "HS256") == 0 ? "HS384" : "HS256";
        alg_of(other, &b);
        hn = make_header(name, variant & 1, hdr, sizeof(hdr));
        tlen = make_token((const uint8_t *)hdr, hn, rest + 1, rn - 1, &b, NULL, 0, tok);
        never_accepted(tok, tlen, "another algorithm's signature");
        break;
    }
    case 5: {
        if (rn < 3)
            break;
        hn = make_header(name, variant, hdr, sizeof(hdr));
        sl_auth_result_t first =
            signed_run((const uint8_t *)hdr, hn, rest + 3, rn - 3, set, &p, &tlen);
        size_t at = ((size_t)rest[0] << 8 | rest[1]) % tlen;
        uint8_t x = rest[2] ? rest[2] : 1;
        tok[at] = (char)(tok[at] ^ x);
        never_accepted(tok, tlen, "a changed token");
        tok[at] = (char)(tok[at] ^ x);
        sl_ident_t *id = NULL;
        if (verify(tok, tlen, &id) != first) {
            fprintf(stderr, "a refused token changed the next verdict\n");
            abort();
        }
        sl_ident_free(id);
        break;
    }
    case 6: {
        static const char *const nones[4] = {"none", "None", "NONE", "nOnE"};
        if (variant < 4)
            hn = make_header(nones[variant], 0, hdr, sizeof(hdr));
        else
            hn = make_header(name, 0, hdr, sizeof(hdr));
        tlen = make_token((const uint8_t *)hdr, hn, rest, rn, NULL, NULL, 0, tok);
        if (variant >= 6) {
            memcpy(tok + tlen, "AAAA", 4); /* 3 zero bytes for a signature */
            tlen += 4;
        }
        sl_ident_t *id = NULL;
        sl_auth_result_t r = verify(tok, tlen, &id);
        if (r == SL_AUTH_OK || (variant < 4 && rn > 0 && KEYSET[set] &&
                                tlen <= SL_AUTH_TOKEN_MAX && r != SL_AUTH_WRONG_ALGORITHM)) {
            fprintf(stderr, "alg none / no signature: %s\n", sl_auth_reason(r));
            abort();
        }
        sl_ident_free(id);
        break;
    }
    case 7: {
        /* Padded past the bound with the input repeated in an extra claim. */
        static uint8_t pl[SL_AUTH_TOKEN_MAX + 64];
        size_t pn = (size_t)snprintf((char *)pl, sizeof(pl), "{\"sub\":\"u\",\"pad\":\"");
        for (; pn < SL_AUTH_TOKEN_MAX * 3 / 4 + 8; pn++)
            pl[pn] = rn ? (uint8_t)('a' + rest[pn % rn] % 26) : 'a';
        pn += (size_t)snprintf((char *)pl + pn, sizeof(pl) - pn, "\"}");
        hn = make_header(name, 0, hdr, sizeof(hdr));
        alg_of(name, &a);
        tlen = make_token((const uint8_t *)hdr, hn, pl, pn, &a, NULL, 0, tok);
        sl_ident_t *id = NULL;
        sl_auth_result_t r = verify(tok, tlen, &id);
        if (r != (KEYSET[set] ? SL_AUTH_TOKEN_TOO_LARGE : SL_AUTH_NOT_CONFIGURED)) {
            fprintf(stderr, "a %zu-byte token: %s\n", tlen, sl_auth_reason(r));
            abort();
        }
        sl_ident_free(id);
        break;
    }
    }
    return 0;
}
