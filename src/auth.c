/*
 * auth.c - verifying JSON Web Tokens (see sl_auth.h for the contract).
 *
 * A token is read in this order, each step refusing with its own reason:
 *   1. size (8 KiB) and shape: three non-empty base64url parts (the
 *      signature may be empty only to be refused below), nothing else;
 *   2. the header: a JSON object whose "alg" is one we accept and for which
 *      the matching key is loaded ("typ", if any, is JWT; "crit" refused);
 *   3. the payload parses as a JSON object (duplicate keys refused, so
 *      no other reader can see a different claim set in the same token);
 *   4. the signature, decoded by the same strict decoder and checked by
 *      OpenSSL (verify_evp) with the key of the algorithm's family only;
 *   5. the claims: sub, exp, nbf, aud, iss, channels, publish, info.
 * Steps 1-3 decode with a strict base64url decoder of our own (parsing, not
 * cryptography), so an odd token is refused before any key is touched.
 *
 * Every key is parsed once, when it is loaded, and every verification uses
 * it as it is: an HMAC context keyed with the secret per SHA-2 size
 * (EVP_MAC), the public key as an EVP_PKEY, and the three digests fetched
 * once.  (libjwt 1.10, which the tests keep as the independent reference,
 * reads the PEM key again for every RS/ES token - about 0.3 ms of CPU, a
 * forged token's as much as a good one's - and re-fetches the digest for
 * every HMAC.)  No signature arithmetic is written here: HMAC,
 * RSASSA-PKCS1-v1_5, RSASSA-PSS and ECDSA are OpenSSL's; the only
 * conversion is ES*'s JOSE signature (r || s, RFC 7518 3.4) into the DER
 * form OpenSSL verifies.
 *
 * The HMAC contexts are re-initialised for each token: a process verifies
 * one token at a time (the workers are single-threaded).
 */
#include "sl_auth.h"
#include "sl_chan.h"

#include <errno.h>
#include <jansson.h>
#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/ec.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/rsa.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#define SL_AUTH_KEY_FILE_MAX (64 * 1024)
#define SL_AUTH_SECRET_MIN 32 /* bytes: RFC 7518 3.2 wants at least the hash size */
#define SL_AUTH_RSA_MIN_BITS 2048

typedef enum { FAM_HS = 1, FAM_RS, FAM_PS, FAM_ES } family_t;

/* The SHA-2 digests, fetched once (sl_auth_load). */
enum { MD_SHA256, MD_SHA384, MD_SHA512, NSHA };
static const char *const sha_names[NSHA] = {"SHA256", "SHA384", "SHA512"};
static EVP_MD *sha[NSHA];

static const struct {
    const char *name;
    family_t fam;
    int md;            /* sha[] index */
    const char *curve; /* ES*: the curve the key must be on */
} algs[] = {
    {"HS256", FAM_HS, MD_SHA256, NULL},        {"HS384", FAM_HS, MD_SHA384, NULL},
    {"HS512", FAM_HS, MD_SHA512, NULL},        {"RS256", FAM_RS, MD_SHA256, NULL},
    {"RS384", FAM_RS, MD_SHA384, NULL},        {"RS512", FAM_RS, MD_SHA512, NULL},
    {"PS256", FAM_PS, MD_SHA256, NULL},        {"PS384", FAM_PS, MD_SHA384, NULL},
    {"PS512", FAM_PS, MD_SHA512, NULL},        {"ES256", FAM_ES, MD_SHA256, "prime256v1"},
    {"ES384", FAM_ES, MD_SHA384, "secp384r1"}, {"ES512", FAM_ES, MD_SHA512, "secp521r1"},
};

typedef struct {
    unsigned char *secret; /* HS*: the file's bytes less trailing newlines */
    size_t secret_len;
    EVP_MAC_CTX *hmac[NSHA]; /* HMAC-SHA-2 keyed with the secret, once */
    EVP_PKEY *pkey;          /* RS/PS/ES: the public key, parsed once */
    bool rsa;                /* pkey is RSA (else EC) */
    char curve[32];          /* EC: OpenSSL's group name */
    size_t ec_bytes;         /* EC: bytes of r and of s in a JOSE signature */
    uint64_t fingerprint;    /* of the key material (sl_auth_fingerprint) */
} keys_t;

static keys_t K;
static sl_auth_policy_t P;

static const char *const reasons[SL_AUTH__COUNT] = {
    [SL_AUTH_OK] = "ok",
    [SL_AUTH_INVALID_TOKEN] = "invalid-token",
    [SL_AUTH_TOKEN_EXPIRED] = "token-expired",
    [SL_AUTH_NOT_YET_VALID] = "token-not-yet-valid",
    [SL_AUTH_WRONG_AUDIENCE] = "wrong-audience",
    [SL_AUTH_WRONG_ISSUER] = "wrong-issuer",
    [SL_AUTH_WRONG_ALGORITHM] = "wrong-algorithm",
    [SL_AUTH_TOKEN_TOO_LARGE] = "token-too-large",
    [SL_AUTH_NOT_CONFIGURED] = "authentication-not-configured",
};

const char *sl_auth_reason(sl_auth_result_t r)
{
    return (unsigned)r < SL_AUTH__COUNT ? reasons[r] : "invalid-token";
}

const char *sl_auth_peer_message(sl_auth_result_t r, const char *detail)
{
    switch (r) {
    case SL_AUTH_WRONG_ALGORITHM: return "the token's algorithm (alg) is not accepted here";
    case SL_AUTH_WRONG_AUDIENCE: return "claim 'aud' does not name this server's audience";
    case SL_AUTH_WRONG_ISSUER: return "claim 'iss' is not this server's issuer";
    case SL_AUTH_NOT_CONFIGURED: return "the server does not take tokens";
    default: return detail;
    }
}

void sl_auth_set_policy(const sl_auth_policy_t *p)
{
    P = *p;
}

/* ------------------------------------------------------------------ keys */

static void keys_free(keys_t *k)
{
    if (k->secret) {
        OPENSSL_cleanse(k->secret, k->secret_len);
        free(k->secret);
    }
    for (int i = 0; i < NSHA; i++)
        EVP_MAC_CTX_free(k->hmac[i]); /* cleanses the keyed state */
    EVP_PKEY_free(k->pkey);
    memset(k, 0, sizeof(*k));
}

static int read_file(const char *flag, const char *path, char **out, size_t *len, char *err,
                     size_t errsz)
{
    FILE *f = fopen(path, "rb");
    if (f == NULL) {
        snprintf(err, errsz, "%s: cannot open %s: %s", flag, path, strerror(errno));
        return SL_ERROR;
    }
    char *buf = malloc(SL_AUTH_KEY_FILE_MAX + 1);
    size_t n = buf ? fread(buf, 1, SL_AUTH_KEY_FILE_MAX + 1, f) : 0;
    bool bad = ferror(f);
    fclose(f);
    if (buf == NULL || bad || n > SL_AUTH_KEY_FILE_MAX) {
        snprintf(err, errsz, "%s: cannot read %s (or it is over %d bytes)", flag, path,
                 SL_AUTH_KEY_FILE_MAX);
        free(buf);
        return SL_ERROR;
    }
    buf[n] = '\0';
    *out = buf;
    *len = n;
    return SL_OK;
}

static int load_secret(keys_t *k, const char *path, char *err, size_t errsz)
{
    char *buf;
    size_t n;
    if (read_file("--jwt-secret-file", path, &buf, &n, err, errsz) != SL_OK)
        return SL_ERROR;
    /* Editors add a final newline; it is not part of the secret. */
    while (n > 0 && (buf[n - 1] == '\n' || buf[n - 1] == '\r'))
        n--;
    if (n < SL_AUTH_SECRET_MIN) {
        snprintf(err, errsz, "--jwt-secret-file: %s holds %zu bytes; an HMAC secret needs at "
                             "least %d", path, n, SL_AUTH_SECRET_MIN);
        OPENSSL_cleanse(buf, n);
        free(buf);
        return SL_ERROR;
    }
    k->secret = (unsigned char *)buf;
    k->secret_len = n;
    /* One HMAC context per digest, keyed now; each token re-initialises
     * it (same key, no fetch, no key schedule). */
    EVP_MAC *mac = EVP_MAC_fetch(NULL, "HMAC", NULL);
    for (int i = 0; mac && i < NSHA; i++) {
        OSSL_PARAM params[] = {
            OSSL_PARAM_construct_utf8_string(OSSL_MAC_PARAM_DIGEST, (char *)sha_names[i], 0),
            OSSL_PARAM_construct_end()};
        k->hmac[i] = EVP_MAC_CTX_new(mac);
        if (k->hmac[i] == NULL || EVP_MAC_init(k->hmac[i], k->secret, n, params) != 1)
            break;
    }
    EVP_MAC_free(mac); /* the contexts hold their own reference */
    for (int i = 0; i < NSHA; i++)
        if (k->hmac[i] == NULL) {
            snprintf(err, errsz, "--jwt-secret-file: OpenSSL has no HMAC-%s", sha_names[i]);
            return SL_ERROR;
        }
    return SL_OK;
}

static int load_public_key(keys_t *k, const char *path, char *err, size_t errsz)
{
    char *pem;
    size_t pem_len;
    if (read_file("--jwt-public-key-file", path, &pem, &pem_len, err, errsz) != SL_OK)
        return SL_ERROR;
    BIO *b = BIO_new_mem_buf(pem, (int)pem_len);
    k->pkey = b ? PEM_read_bio_PUBKEY(b, NULL, NULL, NULL) : NULL;
    BIO_free(b);
    free(pem);
    if (k->pkey == NULL) {
        snprintf(err, errsz, "--jwt-public-key-file: %s is not a PEM public key "
                             "(-----BEGIN PUBLIC KEY-----)", path);
        return SL_ERROR;
    }
    int id = EVP_PKEY_get_base_id(k->pkey);
    if (id == EVP_PKEY_RSA) {
        if (EVP_PKEY_get_bits(k->pkey) < SL_AUTH_RSA_MIN_BITS) {
            snprintf(err, errsz, "--jwt-public-key-file: %s is a %d-bit RSA key; at least %d "
                                 "bits are needed", path, EVP_PKEY_get_bits(k->pkey),
                     SL_AUTH_RSA_MIN_BITS);
            return SL_ERROR;
        }
        k->rsa = true;
        return SL_OK;
    }
    if (id == EVP_PKEY_EC &&
        EVP_PKEY_get_group_name(k->pkey, k->curve, sizeof(k->curve), NULL) == 1) {
        k->ec_bytes = (size_t)(EVP_PKEY_get_bits(k->pkey) + 7) / 8; /* P-521: 66 */
        for (size_t i = 0; i < SL_ARRAY_LEN(algs); i++)
            if (algs[i].curve && strcmp(algs[i].curve, k->curve) == 0)
                return SL_OK;
        snprintf(err, errsz, "--jwt-public-key-file: %s is an EC key on %s; ES256/384/512 need "
                             "P-256, P-384 or P-521", path, k->curve);
        return SL_ERROR;
    }
    snprintf(err, errsz, "--jwt-public-key-file: %s must be an RSA or EC public key", path);
    return SL_ERROR;
}

/* SHA-256 over the key material - "S" and the secret's bytes, "P" and the
 * public key's DER - cut to 64 bits (never 0, which means "no keys"). */
static uint64_t fingerprint_of(const keys_t *k)
{
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    unsigned char d[EVP_MAX_MD_SIZE], *der = NULL;
    unsigned int dlen = 0;
    int derlen = k->pkey ? i2d_PUBKEY(k->pkey, &der) : 0;
    bool ok = ctx && EVP_DigestInit_ex(ctx, sha[MD_SHA256], NULL) == 1 &&
              (k->secret == NULL || (EVP_DigestUpdate(ctx, "S", 1) == 1 &&
                                     EVP_DigestUpdate(ctx, k->secret, k->secret_len) == 1)) &&
              (derlen <= 0 || (EVP_DigestUpdate(ctx, "P", 1) == 1 &&
                               EVP_DigestUpdate(ctx, der, (size_t)derlen) == 1)) &&
              EVP_DigestFinal_ex(ctx, d, &dlen) == 1 && dlen >= 8;
    EVP_MD_CTX_free(ctx);
    OPENSSL_free(der);
    uint64_t fp = 0;
    for (int i = 0; ok && i < 8; i++)
        fp = fp << 8 | d[i];
    return fp ? fp : 1;
}

int sl_auth_reload(const char *secret_file, const char *public_key_file, uint64_t expect,
                   char *err, size_t errsz)
{
    for (int i = 0; i < NSHA; i++)
        if (sha[i] == NULL && (sha[i] = EVP_MD_fetch(NULL, sha_names[i], NULL)) == NULL) {
            snprintf(err, errsz, "OpenSSL has no %s", sha_names[i]);
            return SL_ERROR;
        }
    keys_t k = {0};
    if ((secret_file && secret_file[0] && load_secret(&k, secret_file, err, errsz) != SL_OK) ||
        (public_key_file && public_key_file[0] &&
         load_public_key(&k, public_key_file, err, errsz) != SL_OK)) {
        keys_free(&k);
        return SL_ERROR;
    }
    k.fingerprint = fingerprint_of(&k);
    if (expect && k.fingerprint != expect) {
        snprintf(err, errsz, "the key files now hold other keys (fingerprint %016llx) than the "
                             "master read (%016llx): replace key files by an atomic rename",
                 (unsigned long long)k.fingerprint, (unsigned long long)expect);
        keys_free(&k);
        return SL_ERROR;
    }
    /* Only now, complete and checked, do the new keys replace the old. */
    keys_free(&K);
    K = k;
    return SL_OK;
}

int sl_auth_load(const char *secret_file, const char *public_key_file, char *err, size_t errsz)
{
    return sl_auth_reload(secret_file, public_key_file, 0, err, errsz);
}

uint64_t sl_auth_fingerprint(void)
{
    return K.fingerprint;
}

void sl_auth_unload(void)
{
    keys_free(&K);
    for (int i = 0; i < NSHA; i++) {
        EVP_MD_free(sha[i]);
        sha[i] = NULL;
    }
}

bool sl_auth_enabled(void)
{
    return K.secret != NULL || K.pkey != NULL;
}

/* ------------------------------------------------------------- decoding */

/* base64url alphabet -> value, -1 elsewhere (a table: tokens are decoded on
 * every handshake that carries one). */
static const signed char b64_values[256] = {
    ['A'] = 0,  ['B'] = 1,  ['C'] = 2,  ['D'] = 3,  ['E'] = 4,  ['F'] = 5,  ['G'] = 6,
    ['H'] = 7,  ['I'] = 8,  ['J'] = 9,  ['K'] = 10, ['L'] = 11, ['M'] = 12, ['N'] = 13,
    ['O'] = 14, ['P'] = 15, ['Q'] = 16, ['R'] = 17, ['S'] = 18, ['T'] = 19, ['U'] = 20,
    ['V'] = 21, ['W'] = 22, ['X'] = 23, ['Y'] = 24, ['Z'] = 25, ['a'] = 26, ['b'] = 27,
    ['c'] = 28, ['d'] = 29, ['e'] = 30, ['f'] = 31, ['g'] = 32, ['h'] = 33, ['i'] = 34,
    ['j'] = 35, ['k'] = 36, ['l'] = 37, ['m'] = 38, ['n'] = 39, ['o'] = 40, ['p'] = 41,
    ['q'] = 42, ['r'] = 43, ['s'] = 44, ['t'] = 45, ['u'] = 46, ['v'] = 47, ['w'] = 48,
    ['x'] = 49, ['y'] = 50, ['z'] = 51, ['0'] = 52, ['1'] = 53, ['2'] = 54, ['3'] = 55,
    ['4'] = 56, ['5'] = 57, ['6'] = 58, ['7'] = 59, ['8'] = 60, ['9'] = 61, ['-'] = 62,
    ['_'] = 63,
};

/* The table above has 0 for 'A' and for every byte not in the alphabet;
 * this tells them apart. */
static inline signed char b64_value(unsigned char ch)
{
    return b64_values[ch] || ch == 'A' ? b64_values[ch] : -1;
}

/* Strict base64url without padding (RFC 7515 section 2): the alphabet
 * only, no '=', a length that is not 1 modulo 4, and the unused low bits of
 * the last character zero (so each byte string has exactly one encoding
 * and a signature cannot be respelt).  out has room for len * 3 / 4 bytes.
 * SL_OK or SL_ERROR. */
static int b64url_decode(const char *s, size_t len, uint8_t *out, size_t *outlen)
{
    if (len % 4 == 1)
        return SL_ERROR;
    uint32_t acc = 0;
    int bits = 0;
    size_t o = 0;
    for (size_t i = 0; i < len; i++) {
        signed char v = b64_value((unsigned char)s[i]);
        if (v < 0)
            return SL_ERROR;
        acc = (acc << 6) | (uint32_t)v;
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            out[o++] = (uint8_t)(acc >> bits);
        }
    }
    if (acc & ((1u << bits) - 1))
        return SL_ERROR;
    *outlen = o;
    return SL_OK;
}

static json_t *decode_json_part(const char *s, size_t len, uint8_t *scratch)
{
    size_t n;
    if (b64url_decode(s, len, scratch, &n) != SL_OK)
        return NULL;
    json_t *j = json_loadb((const char *)scratch, n, JSON_REJECT_DUPLICATES, NULL);
    if (j && !json_is_object(j)) {
        json_decref(j);
        return NULL;
    }
    return j;
}

/* ------------------------------------------------------------ the claims */

void sl_ident_free(sl_ident_t *id)
{
    if (id == NULL)
        return;
    free(id->user);
    for (uint32_t i = 0; i < id->nchannels; i++)
        free(id->channels[i]);
    free(id->channels);
    for (uint32_t i = 0; i < id->npublish; i++)
        free(id->publish[i]);
    free(id->publish);
    free(id->info);
    free(id);
}

/* A "prefix*" pattern stops at the boundaries of a channel id: the
 * namespace ends at the first ':' and the user list starts at the first
 * '#', so a prefix that has not reached one matches no id that goes on
 * past it ("chat*" matches "chat-1", not "chatops:x", "chat:x" or
 * "chat#bob"). */
static bool crosses(const char *prefix, size_t plen, const char *rest, size_t rlen)
{
    return (memchr(prefix, ':', plen) == NULL && memchr(rest, ':', rlen) != NULL) ||
           (memchr(prefix, '#', plen) == NULL && memchr(rest, '#', rlen) != NULL);
}

bool sl_ident_grants(char *const *patterns, uint32_t n, const char *id, size_t len)
{
    for (uint32_t i = 0; i < n; i++) {
        const char *p = patterns[i];
        size_t plen = strlen(p);
        if (plen == 1 && p[0] == '*')
            return true; /* "*" alone: everything */
        if (plen > 0 && p[plen - 1] == '*') {
            size_t pre = plen - 1;
            if (len >= pre && memcmp(id, p, pre) == 0 && !crosses(p, pre, id + pre, len - pre))
                return true;
        } else if (plen == len && memcmp(id, p, len) == 0) {
            return true;
        }
    }
    return false;
}

/* "channels" / "publish": absent, null, or an array of channel ids and
 * "prefix*" patterns. */
static int claim_patterns(json_t *claims, const char *name, char ***out, uint32_t *n)
{
    json_t *a = json_object_get(claims, name);
    *out = NULL;
    *n = 0;
    if (a == NULL || json_is_null(a))
        return SL_OK;
    if (!json_is_array(a))
        return SL_ERROR;
    size_t count = json_array_size(a);
    if (count == 0)
        return SL_OK;
    char **list = calloc(count, sizeof(*list));
    if (list == NULL)
        return SL_ERROR;
    *out = list;
    for (size_t i = 0; i < count; i++) {
        json_t *v = json_array_get(a, i);
        const char *s = json_string_value(v);
        size_t len = json_string_length(v);
        size_t idlen = len && s[len - 1] == '*' ? len - 1 : len;
        /* "*" alone (idlen 0) grants everything; otherwise the id part
         * must be a possible channel id (or a prefix of one). */
        if (s == NULL || len == 0 || (idlen > 0 && !sl_chan_id_valid(s, idlen)) ||
            (list[i] = strndup(s, len)) == NULL)
            return SL_ERROR;
        (*n)++;
    }
    return SL_OK;
}

/* Seconds since the epoch (integer or not) as wall ms; SL_ERROR when the
 * claim is there but not a number. */
static int claim_time(json_t *claims, const char *name, int64_t *ms)
{
    json_t *v = json_object_get(claims, name);
    *ms = 0;
    if (v == NULL)
        return SL_OK;
    if (!json_is_number(v))
        return SL_ERROR;
    double s = json_number_value(v);
    if (!(s > 0 && s < 1e13))
        return SL_ERROR;
    /* 0 means "no such claim": a present one is at least 1 ms (an exp of
     * 0.0004 s is long past, not absent). */
    *ms = (int64_t)(s * 1000.0);
    if (*ms < 1)
        *ms = 1;
    return SL_OK;
}

static bool audience_ok(json_t *claims)
{
    if (P.audience == NULL || P.audience[0] == '\0')
        return true;
    json_t *aud = json_object_get(claims, "aud");
    if (json_is_string(aud))
        return strcmp(json_string_value(aud), P.audience) == 0;
    size_t i;
    json_t *v;
    json_array_foreach(aud, i, v)
    {
        if (json_is_string(v) && strcmp(json_string_value(v), P.audience) == 0)
            return true;
    }
    return false;
}

static sl_auth_result_t fail(sl_auth_result_t r, char *msg, size_t msgsz, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

static sl_auth_result_t fail(sl_auth_result_t r, char *msg, size_t msgsz, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, msgsz, fmt, ap);
    va_end(ap);
    return r;
}

static sl_auth_result_t read_claims(json_t *claims, int64_t now, sl_ident_t *id, char *msg,
                                    size_t msgsz)
{
    json_t *sub = json_object_get(claims, "sub");
    const char *user = json_string_value(sub);
    size_t ulen = json_string_length(sub);
    if (user == NULL || !sl_chan_id_valid(user, ulen))
        return fail(SL_AUTH_INVALID_TOKEN, msg, msgsz,
                    "claim 'sub' (the user id) must be a string of 1 to %d bytes without control "
                    "characters", SL_AUTH_USER_MAX);
    int64_t exp, nbf;
    if (claim_time(claims, "exp", &exp) != SL_OK || claim_time(claims, "nbf", &nbf) != SL_OK)
        return fail(SL_AUTH_INVALID_TOKEN, msg, msgsz, "claims 'exp' and 'nbf' must be numbers");
    if (exp && now >= exp + P.leeway_ms)
        return fail(SL_AUTH_TOKEN_EXPIRED, msg, msgsz, "the token expired at %lld ms",
                    (long long)exp);
    if (nbf && now + P.leeway_ms < nbf)
        return fail(SL_AUTH_NOT_YET_VALID, msg, msgsz, "the token is valid from %lld ms",
                    (long long)nbf);
    if (!audience_ok(claims))
        return fail(SL_AUTH_WRONG_AUDIENCE, msg, msgsz, "claim 'aud' does not name '%s'",
                    P.audience);
    if (P.issuer && P.issuer[0]) {
        const char *iss = json_string_value(json_object_get(claims, "iss"));
        if (iss == NULL || strcmp(iss, P.issuer) != 0)
            return fail(SL_AUTH_WRONG_ISSUER, msg, msgsz, "claim 'iss' is not '%s'", P.issuer);
    }
    if (claim_patterns(claims, "channels", &id->channels, &id->nchannels) != SL_OK ||
        claim_patterns(claims, "publish", &id->publish, &id->npublish) != SL_OK)
        return fail(SL_AUTH_INVALID_TOKEN, msg, msgsz,
                    "claims 'channels' and 'publish' must be arrays of channel ids or prefix* "
                    "patterns");
    json_t *info = json_object_get(claims, "info");
    if (info && !json_is_null(info)) {
        char *enc = json_is_object(info) ? json_dumps(info, JSON_COMPACT) : NULL;
        if (enc == NULL || strlen(enc) > SL_AUTH_INFO_MAX) {
            free(enc);
            return fail(SL_AUTH_INVALID_TOKEN, msg, msgsz,
                        "claim 'info' must be a JSON object of at most %d bytes",
                        SL_AUTH_INFO_MAX);
        }
        id->info = enc;
    }
    id->user = strndup(user, ulen);
    id->exp_ms = exp;
    return id->user ? SL_AUTH_OK : fail(SL_AUTH_INVALID_TOKEN, msg, msgsz, "out of memory");
}

/* ----------------------------------------------------------- signatures */

/* ES*: the JOSE signature is r || s, each ec_bytes big-endian (RFC 7518
 * 3.4); OpenSSL verifies the DER SEQUENCE { r, s }.  0 when sig is not
 * exactly 2 * ec_bytes long (or on no memory). */
static size_t jose_to_der(const uint8_t *sig, size_t slen, uint8_t *der, size_t dsz)
{
    size_t n = K.ec_bytes;
    if (n == 0 || slen != 2 * n)
        return 0;
    ECDSA_SIG *es = ECDSA_SIG_new();
    BIGNUM *r = BN_bin2bn(sig, (int)n, NULL), *s = BN_bin2bn(sig + n, (int)n, NULL);
    if (es == NULL || r == NULL || s == NULL || ECDSA_SIG_set0(es, r, s) != 1) {
        BN_free(r);
        BN_free(s);
        ECDSA_SIG_free(es);
        return 0;
    }
    int need = i2d_ECDSA_SIG(es, NULL);
    uint8_t *p = der;
    size_t len = need > 0 && (size_t)need <= dsz && i2d_ECDSA_SIG(es, &p) == need ? (size_t)need : 0;
    ECDSA_SIG_free(es); /* frees r and s */
    return len;
}

/* The signature of algorithm a over input[0..ilen) (the token's
 * "header.payload" text), with the loaded key of a's family: HMAC compared
 * in constant time, or OpenSSL's verify (PKCS#1 v1.5, PSS with RFC 7518
 * 3.5's parameters: MGF1 with the same digest, a salt as long as the
 * digest; ECDSA). */
static bool verify_evp(int a, const char *input, size_t ilen, const uint8_t *sig, size_t slen)
{
    const EVP_MD *md = sha[algs[a].md];
    if (algs[a].fam == FAM_HS) {
        EVP_MAC_CTX *m = K.hmac[algs[a].md];
        uint8_t mac[EVP_MAX_MD_SIZE];
        size_t n = 0;
        return EVP_MAC_init(m, NULL, 0, NULL) == 1 &&
               EVP_MAC_update(m, (const unsigned char *)input, ilen) == 1 &&
               EVP_MAC_final(m, mac, &n, sizeof(mac)) == 1 && n == slen &&
               CRYPTO_memcmp(mac, sig, n) == 0;
    }
    uint8_t der[160]; /* P-521: at most 139 bytes */
    if (algs[a].fam == FAM_ES) {
        slen = jose_to_der(sig, slen, der, sizeof(der));
        sig = der;
        if (slen == 0)
            return false;
    }
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    EVP_PKEY_CTX *pctx = NULL;
    bool ok = ctx && EVP_DigestVerifyInit(ctx, &pctx, md, NULL, K.pkey) == 1;
    if (ok && algs[a].fam == FAM_PS)
        ok = EVP_PKEY_CTX_set_rsa_padding(pctx, RSA_PKCS1_PSS_PADDING) == 1 &&
             EVP_PKEY_CTX_set_rsa_pss_saltlen(pctx, RSA_PSS_SALTLEN_DIGEST) == 1 &&
             EVP_PKEY_CTX_set_rsa_mgf1_md(pctx, md) == 1;
    ok = ok && EVP_DigestVerify(ctx, sig, slen, (const unsigned char *)input, ilen) == 1;
    EVP_MD_CTX_free(ctx);
    return ok;
}

/* The key for algorithm a, or why there is none. */
static const char *key_missing(int a)
{
    switch (algs[a].fam) {
    case FAM_HS: return K.secret ? NULL : "needs --jwt-secret-file";
    case FAM_RS:
    case FAM_PS: return K.pkey && K.rsa ? NULL : "needs an RSA key in --jwt-public-key-file";
    case FAM_ES:
        return K.pkey && !K.rsa && strcmp(K.curve, algs[a].curve) == 0
                   ? NULL
                   : "needs an EC key on its curve in --jwt-public-key-file";
    }
    return "is not accepted";
}

static bool b64url_part(const char *s, size_t len)
{
    for (size_t i = 0; i < len; i++)
        if (b64_value((unsigned char)s[i]) < 0)
            return false;
    return true;
}

sl_auth_result_t sl_auth_verify(const char *token, size_t len, int64_t now_ms, sl_ident_t **out,
                                char *msg, size_t msgsz)
{
    *out = NULL;
    if (!sl_auth_enabled())
        return fail(SL_AUTH_NOT_CONFIGURED, msg, msgsz, "the server has no token key");
    if (len > SL_AUTH_TOKEN_MAX)
        return fail(SL_AUTH_TOKEN_TOO_LARGE, msg, msgsz, "a token may have at most %d bytes",
                    SL_AUTH_TOKEN_MAX);
    const char *d1 = memchr(token, '.', len);
    const char *d2 = d1 ? memchr(d1 + 1, '.', len - (size_t)(d1 + 1 - token)) : NULL;
    size_t hlen = d1 ? (size_t)(d1 - token) : 0, plen = d2 ? (size_t)(d2 - d1 - 1) : 0;
    size_t slen = d2 ? len - (size_t)(d2 + 1 - token) : 0;
    if (d2 == NULL || hlen == 0 || plen == 0 || !b64url_part(token, hlen) ||
        !b64url_part(d1 + 1, plen) || !b64url_part(d2 + 1, slen))
        return fail(SL_AUTH_INVALID_TOKEN, msg, msgsz,
                    "a token is three base64url parts separated by dots");

    /* One scratch area for the decoded parts, one after the other (jansson
     * copies what it parses).  Every part is shorter than the token. */
    static uint8_t scratch[SL_AUTH_TOKEN_MAX + 1];
    json_t *hdr = decode_json_part(token, hlen, scratch), *claims = NULL;
    sl_ident_t *id = NULL;
    sl_auth_result_t r;
    if (hdr == NULL) {
        r = fail(SL_AUTH_INVALID_TOKEN, msg, msgsz, "the header is not a base64url JSON object");
        goto out;
    }
    const char *alg = json_string_value(json_object_get(hdr, "alg"));
    json_t *typ = json_object_get(hdr, "typ");
    int a = -1;
    for (size_t i = 0; alg && i < SL_ARRAY_LEN(algs); i++)
        if (strcmp(algs[i].name, alg) == 0)
            a = (int)i;
    if (a < 0) {
        r = fail(SL_AUTH_WRONG_ALGORITHM, msg, msgsz, "algorithm '%.16s' is not accepted",
                 alg ? alg : "(missing)");
        goto out;
    }
    const char *why = key_missing(a);
    if (why) {
        r = fail(SL_AUTH_WRONG_ALGORITHM, msg, msgsz, "%s %s", algs[a].name, why);
        goto out;
    }
    if (json_object_get(hdr, "crit") != NULL ||
        (typ && !(json_is_string(typ) && strcasecmp(json_string_value(typ), "JWT") == 0))) {
        r = fail(SL_AUTH_INVALID_TOKEN, msg, msgsz,
                 "header: 'typ' must be JWT and 'crit' is not supported");
        goto out;
    }
    claims = decode_json_part(d1 + 1, plen, scratch);
    if (claims == NULL) {
        r = fail(SL_AUTH_INVALID_TOKEN, msg, msgsz,
                 "the payload is not a base64url JSON object (without duplicate keys)");
        goto out;
    }
    size_t n;
    if (slen == 0 || b64url_decode(d2 + 1, slen, scratch, &n) != SL_OK) {
        r = fail(SL_AUTH_INVALID_TOKEN, msg, msgsz,
                 "the signature is missing or not canonical base64url");
        goto out;
    }
    if (!verify_evp(a, token, (size_t)(d2 - token), scratch, n)) {
        r = fail(SL_AUTH_INVALID_TOKEN, msg, msgsz, "the %s signature does not verify",
                 algs[a].name);
        goto out;
    }
    id = calloc(1, sizeof(*id));
    r = id ? read_claims(claims, now_ms, id, msg, msgsz)
           : fail(SL_AUTH_INVALID_TOKEN, msg, msgsz, "out of memory");
out:
    json_decref(hdr);
    json_decref(claims);
    if (r == SL_AUTH_OK) {
        *out = id;
        msg[0] = '\0';
    } else {
        sl_ident_free(id);
    }
    return r;
}
