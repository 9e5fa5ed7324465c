/*
 * test_tlsrec.c - our TLS 1.3 record protection (src/tlsrec.c) against the
 * published trace of RFC 8448 section 3 ("Simple 1-RTT Handshake",
 * TLS_AES_128_GCM_SHA256): the application traffic keys and IVs derived
 * from the application traffic secrets (HKDF-Expand-Label "key"/"iv"),
 * the application data records both sides send and the client's
 * close_notify sealed byte for byte (the nonce from the IV and the
 * sequence number, the header as AAD, the inner content type), and each
 * opened back.  The hex is typed in from the RFC's trace.
 */
#include "sl_common.h"
#include "sl_test.h"
#include "sl_tlsrec.h"

#include <stdlib.h>

/* "a1 1a f9 ..." -> bytes; the length. */
static size_t unhex(const char *h, uint8_t *out, size_t cap)
{
    size_t n = 0;
    while (*h) {
        if (*h == ' ') {
            h++;
            continue;
        }
        unsigned v;
        if (n == cap || sscanf(h, "%2x", &v) != 1)
            abort();
        out[n++] = (uint8_t)v;
        h += 2;
    }
    return n;
}

static bool same(const uint8_t *a, const char *hex)
{
    uint8_t b[512];
    size_t n = unhex(hex, b, sizeof(b));
    return memcmp(a, b, n) == 0;
}

/* RFC 8448 section 3: {server} derive secret "tls13 s ap traffic" and
 * {server} derive write traffic keys for application data. */
#define S_AP_SECRET                                                                            \
    "a1 1a f9 f0 55 31 f8 56 ad 47 11 6b 45 a9 50 32 82 04 b4 f4 4b fb 6b 3a 4b 4f 1f 3f cb "  \
    "63 16 43"
#define S_AP_KEY "9f 02 28 3b 6c 9c 07 ef c2 6b b9 f2 ac 92 e3 56"
#define S_AP_IV "cf 78 2b 88 dd 83 54 9a ad f1 e9 84"
/* {server} derive secret "tls13 c ap traffic" and {client} derive write
 * traffic keys for application data. */
#define C_AP_SECRET                                                                            \
    "9e 40 64 6c e7 9a 7f 9d c0 5a f8 88 9b ce 65 52 87 5a fa 0b 06 df 00 87 f7 92 eb b7 c1 "  \
    "75 04 a5"
#define C_AP_KEY "17 42 2d da 59 6e d5 d9 ac d8 90 e3 c6 3f 50 51"
#define C_AP_IV "5b 78 92 3d ee 08 57 90 33 e5 23 d9"
/* {client} send application_data record (its first: sequence number 0),
 * payload 00 01 .. 31 (50 octets). */
#define C_APP_REC                                                                              \
    "17 03 03 00 43 a2 3f 70 54 b6 2c 94 d0 af fa fe 82 28 ba 55 cb ef ac ea 42 f9 14 aa 66 "  \
    "bc ab 3f 2b 98 19 a8 a5 b4 6b 39 5b d5 4a 9a 20 44 1e 2b 62 97 4e 1f 5a 62 92 a2 97 70 "  \
    "14 bd 1e 3d ea e6 3a ee bb 21 69 49 15 e4"
/* {server} send application_data record: the same payload, after its
 * NewSessionTicket record (sequence number 1). */
#define S_APP_REC                                                                              \
    "17 03 03 00 43 2e 93 7e 11 ef 4a c7 40 e5 38 ad 36 00 5f c4 a4 69 32 fc 32 25 d0 5f 82 "  \
    "aa 1b 36 e3 0e fa f9 7d 90 e6 df fc 60 2d cb 50 1a 59 a8 fc c4 9c 4b f2 e5 f0 a2 1c 00 "  \
    "47 c2 ab f3 32 54 0d d0 32 e1 67 c2 95 5d"
/* {client} send alert record: close_notify (sequence number 1). */
#define C_ALERT_REC                                                                            \
    "17 03 03 00 13 c9 87 27 60 65 56 66 b7 4d 7f f1 15 3e fd 6d b6 d0 b0 e3"

static uint8_t payload[50];

/* Seal `type` p[0..len) at seq and compare with the RFC's record; open
 * the RFC's record with the same direction and compare the content. */
static void check_record(const char *secret, uint64_t seq, uint8_t type, const uint8_t *p,
                         size_t len, const char *rec_hex)
{
    uint8_t sec[48], want[SL_TLSREC_MAX_OUT], out[SL_TLSREC_MAX_OUT];
    size_t sl = unhex(secret, sec, sizeof(sec));
    size_t wn = unhex(rec_hex, want, sizeof(want));
    sl_tlsrec_t r;
    memset(&r, 0, sizeof(r));
    r.suite = SL_TLSREC_AES128;
    SL_CHECK_INT(sl_tlsrec_set(&r.wr, SL_TLSREC_AES128, sec, sl), SL_OK);
    SL_CHECK_INT(sl_tlsrec_set(&r.rd, SL_TLSREC_AES128, sec, sl), SL_OK);
    r.wr.seq = r.rd.seq = seq;
    size_t n = sl_tlsrec_seal(&r, type, p, len, out);
    SL_CHECK_INT(n, wn);
    SL_CHECK(memcmp(out, want, wn) == 0);
    /* Sealing again at the same sequence number gives the same bytes
     * (a half-sent record is resent from its plaintext). */
    uint8_t again[SL_TLSREC_MAX_OUT];
    SL_CHECK_INT(sl_tlsrec_seal(&r, type, p, len, again), wn);
    SL_CHECK(memcmp(again, want, wn) == 0);
    uint8_t got_type = 0;
    size_t got_len = 0;
    memcpy(out, want, wn);
    SL_CHECK_INT(sl_tlsrec_open(&r, out, wn, &got_type, &got_len), 0);
    SL_CHECK_INT(got_type, type);
    SL_CHECK_INT(got_len, len);
    SL_CHECK(memcmp(out + SL_TLSREC_HDR, p, len) == 0);
    /* One bit flipped anywhere (header: the AAD; body; tag) is refused;
     * the wrong sequence number too. */
    size_t at[] = {1, 4, SL_TLSREC_HDR, wn / 2, wn - 1};
    for (size_t k = 0; k < sizeof(at) / sizeof(at[0]); k++) {
        memcpy(out, want, wn);
        out[at[k]] ^= 0x01;
        SL_CHECK_INT(sl_tlsrec_open(&r, out, wn, &got_type, &got_len),
                     SL_TLSREC_AD_BAD_RECORD_MAC);
    }
    memcpy(out, want, wn);
    r.rd.seq = seq + 1;
    SL_CHECK_INT(sl_tlsrec_open(&r, out, wn, &got_type, &got_len), SL_TLSREC_AD_BAD_RECORD_MAC);
}

static void test_rfc8448_traffic_keys(void)
{
    uint8_t sec[48];
    sl_tlsrec_dir_t d;
    SL_CHECK_INT(sl_tlsrec_suite(0x1301), SL_TLSREC_AES128);
    SL_CHECK_INT(sl_tlsrec_secret_len(SL_TLSREC_AES128), 32);
    size_t n = unhex(S_AP_SECRET, sec, sizeof(sec));
    SL_CHECK_INT(sl_tlsrec_set(&d, SL_TLSREC_AES128, sec, n), SL_OK);
    SL_CHECK(same(d.key, S_AP_KEY));
    SL_CHECK(same(d.iv, S_AP_IV));
    SL_CHECK_INT(d.seq, 0);
    n = unhex(C_AP_SECRET, sec, sizeof(sec));
    SL_CHECK_INT(sl_tlsrec_set(&d, SL_TLSREC_AES128, sec, n), SL_OK);
    SL_CHECK(same(d.key, C_AP_KEY));
    SL_CHECK(same(d.iv, C_AP_IV));
    /* A secret of the wrong length for the suite is refused. */
    SL_CHECK_INT(sl_tlsrec_set(&d, SL_TLSREC_AES128, sec, 48), SL_ERROR);
}

static void test_rfc8448_records(void)
{
    static const uint8_t close_notify[2] = {1, 0};
    check_record(C_AP_SECRET, 0, SL_TLSREC_CT_APPDATA, payload, sizeof(payload), C_APP_REC);
    check_record(S_AP_SECRET, 1, SL_TLSREC_CT_APPDATA, payload, sizeof(payload), S_APP_REC);
    check_record(C_AP_SECRET, 1, SL_TLSREC_CT_ALERT, close_notify, 2, C_ALERT_REC);
}

int main(void)
{
    for (size_t k = 0; k < sizeof(payload); k++)
        payload[k] = (uint8_t)k;
    SL_TEST_RUN(test_rfc8448_traffic_keys);
    SL_TEST_RUN(test_rfc8448_records);
    return sl_test_summary();
}
