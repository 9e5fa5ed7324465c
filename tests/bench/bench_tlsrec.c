/*
 * bench_tlsrec.c - what our record layer's plaintext cleansing costs
 * (review rw16 L2): per suite, opening a 16 KiB record (sl_tlsrec_open,
 * with the copy of its bytes) against OPENSSL_cleanse of its 16 KiB of
 * plaintext, as tls.c does to the worker's rec_in after each record and
 * to the staging record after each write.  Figures, not a test:
 * `make build/bench/bench_tlsrec && build/bench/bench_tlsrec`.
 */
#include "sl_common.h"
#include "sl_tlsrec.h"

#include <openssl/crypto.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

static double now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

static uint8_t rec[SL_TLSREC_MAX_OUT], buf[SL_TLSREC_MAX_OUT], plain[SL_TLSREC_PLAIN];

int main(void)
{
    static const char *names[] = {"AES-128-GCM", "AES-256-GCM", "ChaCha20-Poly1305"};
    const int n_iter = 20000;
    for (int suite = 0; suite < SL_TLSREC_SUITES; suite++) {
        sl_tlsrec_t r;
        uint8_t secret[48] = {1};
        memset(&r, 0, sizeof(r));
        r.suite = (uint8_t)suite;
        size_t sl = sl_tlsrec_secret_len(suite);
        if (sl_tlsrec_set(&r.wr, suite, secret, sl) != SL_OK ||
            sl_tlsrec_set(&r.rd, suite, secret, sl) != SL_OK)
            return 1;
        size_t n = sl_tlsrec_seal(&r, SL_TLSREC_CT_APPDATA, plain, sizeof(plain), rec);
        uint8_t type;
        size_t len = 0;
        double t0 = now();
        for (int i = 0; i < n_iter; i++) {
            memcpy(buf, rec, n);
            if (sl_tlsrec_open(&r, buf, n, &type, &len) != 0)
                return 1;
        }
        double t1 = now();
        for (int i = 0; i < n_iter; i++)
            OPENSSL_cleanse(buf + SL_TLSREC_HDR, len);
        double t2 = now();
        printf("%-18s open a 16 KiB record %.2f us, cleanse its plaintext %.2f us (%.0f%%)\n",
               names[suite], (t1 - t0) / n_iter * 1e6, (t2 - t1) / n_iter * 1e6,
               100.0 * (t2 - t1) / (t1 - t0));
    }
    return 0;
}
