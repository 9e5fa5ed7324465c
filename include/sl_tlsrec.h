/*
 * sl_tlsrec.h - our own TLS 1.3 record protection (RFC 8446 5.2-5.4, 7.1-7.3),
 * used by the TLS transport (src/tls.c) once a TLS 1.3 handshake is done
 * and OpenSSL's SSL object has been freed: an idle connection then holds
 * these ~200 bytes of TLS state instead of ~14 KB.
 *
 * Per direction: the traffic secret (kept for KeyUpdate), the key and IV
 * derived from it (HKDF-Expand-Label "key"/"iv"), the record sequence
 * number.  No per-connection cipher context: the worker keeps one
 * EVP_CIPHER_CTX per suite and direction and keys it for each record
 * (single-threaded per worker).  This module knows bytes only: the
 * transport reads and writes the socket.
 */
#ifndef SL_TLSREC_H
#define SL_TLSREC_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define SL_TLSREC_PLAIN 16384                       /* 2^14: most content per record */
#define SL_TLSREC_HDR 5                             /* type, version, length */
#define SL_TLSREC_TAG 16                            /* the AEAD tag of every suite */
#define SL_TLSREC_MAX_IN (SL_TLSREC_HDR + 16384 + 256) /* the longest record accepted */
#define SL_TLSREC_MAX_OUT (SL_TLSREC_HDR + SL_TLSREC_PLAIN + 1 + SL_TLSREC_TAG)

/* The suites: TLS_AES_128_GCM_SHA256, TLS_AES_256_GCM_SHA384,
 * TLS_CHACHA20_POLY1305_SHA256. */
enum { SL_TLSREC_AES128, SL_TLSREC_AES256, SL_TLSREC_CHACHA, SL_TLSREC_SUITES };

/* Content types and the alerts we send or read (RFC 8446 5.1, 6). */
enum {
    SL_TLSREC_CT_ALERT = 21,
    SL_TLSREC_CT_HANDSHAKE = 22,
    SL_TLSREC_CT_APPDATA = 23,
};
enum {
    SL_TLSREC_AD_CLOSE_NOTIFY = 0,
    SL_TLSREC_AD_UNEXPECTED_MESSAGE = 10,
    SL_TLSREC_AD_BAD_RECORD_MAC = 20,
    SL_TLSREC_AD_RECORD_OVERFLOW = 22,
    SL_TLSREC_AD_DECODE_ERROR = 50,
    SL_TLSREC_AD_USER_CANCELED = 90,
};

typedef struct {
    uint8_t secret[48]; /* the current traffic secret (hash length) */
    uint8_t key[32];
    uint8_t iv[12];
    uint64_t seq; /* the next record's sequence number */
} sl_tlsrec_dir_t;

typedef struct {
    sl_tlsrec_dir_t rd, wr;
    uint8_t suite; /* SL_TLSREC_* */
} sl_tlsrec_t;

/* The suite of an IANA cipher-suite number (0x1301..0x1303), or -1. */
int sl_tlsrec_suite(uint16_t id);
/* The suite's hash length: the length of its traffic secrets. */
size_t sl_tlsrec_secret_len(int suite);
/* A direction from its traffic secret (len = the hash length), seq 0. */
int sl_tlsrec_set(sl_tlsrec_dir_t *d, int suite, const uint8_t *secret, size_t len);
/* KeyUpdate: the next traffic secret, its key and IV, seq 0 (RFC 8446 7.2). */
int sl_tlsrec_update(sl_tlsrec_dir_t *d, int suite);
/* One record of `type` carrying p[0..len) (len <= SL_TLSREC_PLAIN), sealed
 * with r->wr at r->wr.seq (not advanced: the same call again gives the
 * same bytes, so a record half-sent is resent from the plaintext), into
 * out (SL_TLSREC_MAX_OUT).  Its length, or 0 on failure. */
size_t sl_tlsrec_seal(const sl_tlsrec_t *r, uint8_t type, const uint8_t *p, size_t len,
                      uint8_t *out);
/* Open the whole record rec[0..n) in place with r->rd at r->rd.seq (not
 * advanced): the content at rec + SL_TLSREC_HDR, *len bytes, its inner
 * type in *type.  0, or the alert to send: BAD_RECORD_MAC (a bad tag),
 * UNEXPECTED_MESSAGE (no inner type), RECORD_OVERFLOW. */
int sl_tlsrec_open(const sl_tlsrec_t *r, uint8_t *rec, size_t n, uint8_t *type, size_t *len);

#endif
