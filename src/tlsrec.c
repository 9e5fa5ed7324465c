/*
 * tlsrec.c - TLS 1.3 record protection after the handshake (sl_tlsrec.h):
 * key schedule pieces (HKDF-Expand-Label, KeyUpdate), AEAD seal and open.
 * The worker's cipher contexts (one per suite and direction, keyed per
 * record) are the only state here; a connection's keys live in its
 * sl_tlsrec_t.  One thread per worker: the contexts are not shared.
 */
#include "sl_tlsrec.h"
#include "sl_common.h"

#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <string.h>

static const struct {
    const char *cipher, *digest;
    size_t key, hash;
} suites[SL_TLSREC_SUITES] = {
    [SL_TLSREC_AES128] = {"AES-128-GCM", "SHA256", 16, 32},
    [SL_TLSREC_AES256] = {"AES-256-GCM", "SHA384", 32, 48},
    [SL_TLSREC_CHACHA] = {"ChaCha20-Poly1305", "SHA256", 32, 32},
};

int sl_tlsrec_suite(uint16_t id)
{
    switch (id) {
    case 0x1301:
        return SL_TLSREC_AES128;
    case 0x1302:
        return SL_TLSREC_AES256;
    case 0x1303:
        return SL_TLSREC_CHACHA;
    default:
        return -1;
    }
}

size_t sl_tlsrec_secret_len(int suite)
{
    return suites[suite].hash;
}

/* HKDF-Expand-Label(secret, label, "", len) for len <= the hash length
 * (RFC 8446 7.1; RFC 5869 2.3): a single block, HMAC(secret, info | 0x01). */
static int expand_label(int suite, const uint8_t *secret, const char *label, uint8_t *out,
                        size_t len)
{
    uint8_t info[2 + 1 + 6 + 32 + 1 + 1], mac[EVP_MAX_MD_SIZE];
    size_t ll = strlen(label), n = 0, got = 0;
    info[n++] = (uint8_t)(len >> 8);
    info[n++] = (uint8_t)len;
    info[n++] = (uint8_t)(6 + ll);
    memcpy(info + n, "tls13 ", 6);
    n += 6;
    memcpy(info + n, label, ll);
    n += ll;
    info[n++] = 0; /* no context */
    info[n++] = 1; /* the block counter */
    if (EVP_Q_mac(NULL, "HMAC", NULL, suites[suite].digest, NULL, secret, suites[suite].hash,
                  info, n, mac, sizeof(mac), &got) == NULL ||
        got < len)
        return SL_ERROR;
    memcpy(out, mac, len);
    OPENSSL_cleanse(mac, sizeof(mac));
    return SL_OK;
}

static int derive(sl_tlsrec_dir_t *d, int suite)
{
    d->seq = 0;
    return expand_label(suite, d->secret, "key", d->key, suites[suite].key) == SL_OK &&
                   expand_label(suite, d->secret, "iv", d->iv, sizeof(d->iv)) == SL_OK
               ? SL_OK
               : SL_ERROR;
}

int sl_tlsrec_set(sl_tlsrec_dir_t *d, int suite, const uint8_t *secret, size_t len)
{
    if (suite < 0 || suite >= SL_TLSREC_SUITES || len != suites[suite].hash)
        return SL_ERROR;
    memset(d, 0, sizeof(*d));
    memcpy(d->secret, secret, len);
    return derive(d, suite);
}

int sl_tlsrec_update(sl_tlsrec_dir_t *d, int suite)
{
    uint8_t next[48];
    size_t h = suites[suite].hash;
    if (expand_label(suite, d->secret, "traffic upd", next, h) != SL_OK)
        return SL_ERROR;
    memcpy(d->secret, next, h);
    OPENSSL_cleanse(next, sizeof(next));
    return derive(d, suite);
}

/* The worker's context for (suite, enc), created at first use. */
static EVP_CIPHER_CTX *cipher_ctx(int suite, int enc)
{
    static EVP_CIPHER_CTX *cx[SL_TLSREC_SUITES][2];
    EVP_CIPHER_CTX **c = &cx[suite][enc];
    if (*c == NULL) {
        EVP_CIPHER *ci = EVP_CIPHER_fetch(NULL, suites[suite].cipher, NULL);
        EVP_CIPHER_CTX *n = EVP_CIPHER_CTX_new();
        if (ci == NULL || n == NULL || EVP_CipherInit_ex2(n, ci, NULL, NULL, enc, NULL) != 1) {
            EVP_CIPHER_free(ci);
            EVP_CIPHER_CTX_free(n);
            return NULL;
        }
        EVP_CIPHER_free(ci); /* the context holds its own reference */
        *c = n;
    }
    return *c;
}

/* The per-record nonce: the IV xor the sequence number, right-aligned. */
static void nonce(const sl_tlsrec_dir_t *d, uint8_t out[12])
{
    memcpy(out, d->iv, 12);
    for (int k = 0; k < 8; k++)
        out[11 - k] ^= (uint8_t)(d->seq >> (8 * k));
}

size_t sl_tlsrec_seal(const sl_tlsrec_t *r, uint8_t type, const uint8_t *p, size_t len,
                      uint8_t *out)
{
    EVP_CIPHER_CTX *c = cipher_ctx(r->suite, 1);
    uint8_t iv[12];
    int o;
    if (c == NULL || len > SL_TLSREC_PLAIN)
        return 0;
    size_t body = len + 1 + SL_TLSREC_TAG;
    out[0] = SL_TLSREC_CT_APPDATA;
    out[1] = 3;
    out[2] = 3;
    out[3] = (uint8_t)(body >> 8);
    out[4] = (uint8_t)body;
    nonce(&r->wr, iv);
    uint8_t *ct = out + SL_TLSREC_HDR;
    if (EVP_CipherInit_ex2(c, NULL, r->wr.key, iv, 1, NULL) != 1 ||
        EVP_EncryptUpdate(c, NULL, &o, out, SL_TLSREC_HDR) != 1 ||
        (len > 0 && EVP_EncryptUpdate(c, ct, &o, p, (int)len) != 1) ||
        EVP_EncryptUpdate(c, ct + len, &o, &type, 1) != 1 ||
        EVP_EncryptFinal_ex(c, ct + len + 1, &o) != 1 ||
        EVP_CIPHER_CTX_ctrl(c, EVP_CTRL_AEAD_GET_TAG, SL_TLSREC_TAG, ct + len + 1) != 1)
        return 0;
    return SL_TLSREC_HDR + body;
}

int sl_tlsrec_open(const sl_tlsrec_t *r, uint8_t *rec, size_t n, uint8_t *type, size_t *len)
{
    EVP_CIPHER_CTX *c = cipher_ctx(r->suite, 0);
    uint8_t iv[12];
    int o;
    if (n > SL_TLSREC_MAX_IN)
        return SL_TLSREC_AD_RECORD_OVERFLOW;
    if (c == NULL || n < SL_TLSREC_HDR + 1 + SL_TLSREC_TAG)
        return SL_TLSREC_AD_BAD_RECORD_MAC; /* too short to hold a tag: cannot authenticate */
    size_t m = n - SL_TLSREC_HDR - SL_TLSREC_TAG;
    uint8_t *ct = rec + SL_TLSREC_HDR;
    nonce(&r->rd, iv);
    if (EVP_CipherInit_ex2(c, NULL, r->rd.key, iv, 0, NULL) != 1 ||
        EVP_CIPHER_CTX_ctrl(c, EVP_CTRL_AEAD_SET_TAG, SL_TLSREC_TAG, ct + m) != 1 ||
        EVP_DecryptUpdate(c, NULL, &o, rec, SL_TLSREC_HDR) != 1 ||
        EVP_DecryptUpdate(c, ct, &o, ct, (int)m) != 1 || EVP_DecryptFinal_ex(c, ct + m, &o) != 1) {
        /* The unauthenticated plaintext (a bit-flipped record's is the
         * real one with those bits flipped) is not left behind. */
        OPENSSL_cleanse(ct, m);
        return SL_TLSREC_AD_BAD_RECORD_MAC;
    }
    /* TLSInnerPlaintext: content, the type, zero padding (RFC 8446 5.4). */
    while (m > 0 && ct[m - 1] == 0)
        m--;
    if (m == 0)
        return SL_TLSREC_AD_UNEXPECTED_MESSAGE;
    if (m - 1 > SL_TLSREC_PLAIN)
        return SL_TLSREC_AD_RECORD_OVERFLOW;
    *type = ct[m - 1];
    *len = m - 1;
    return 0;
}
