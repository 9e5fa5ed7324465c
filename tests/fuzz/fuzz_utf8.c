/*
 * fuzz_utf8.c - the incremental UTF-8 validator, differential against
 * glibc's iconv (UTF-8 -> UTF-32LE, which refuses overlongs, surrogates and
 * code points above U+10FFFF, like RFC 3629).
 *
 * Properties: the validator's verdict on the whole input equals iconv's;
 * fed in pieces it gives the same verdict; sl_utf8_sanitize always yields
 * valid UTF-8 and leaves valid input unchanged.
 */
#include "sl_ws.h"

#include <errno.h>
#include <iconv.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t n);

static bool iconv_valid(const uint8_t *p, size_t n)
{
    static iconv_t cd = (iconv_t)-1;
    if (cd == (iconv_t)-1) {
        cd = iconv_open("UTF-32LE", "UTF-8");
        if (cd == (iconv_t)-1)
            abort();
    }
    iconv(cd, NULL, NULL, NULL, NULL);
    char *in = (char *)p;
    size_t inleft = n, outsz = 4 * n + 8;
    char *out = malloc(outsz), *o = out;
    size_t outleft = outsz;
    size_t r = iconv(cd, &in, &inleft, &o, &outleft);
    bool ok = r != (size_t)-1 && inleft == 0;
    free(out);
    return ok;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t n)
{
    if (n > 4096)
        return 0;
    bool mine = sl_utf8_valid(data, n);
    if (mine != iconv_valid(data, n))
        abort();
    /* Split at every point with one cut, and byte by byte. */
    for (size_t k = 0; k <= n; k += 1 + n / 16) {
        sl_utf8_t u;
        sl_utf8_init(&u);
        bool ok = sl_utf8_feed(&u, data, k) && sl_utf8_feed(&u, data + k, n - k) &&
                  sl_utf8_complete(&u);
        if (ok != mine)
            abort();
    }
    sl_utf8_t u;
    sl_utf8_init(&u);
    bool ok = true;
    for (size_t i = 0; i < n && ok; i++)
        ok = sl_utf8_feed(&u, data + i, 1);
    if ((ok && sl_utf8_complete(&u)) != mine)
        abort();
    /* The sanitizer: valid output, identity on valid input. */
    size_t cap = 3 * n + 1;
    char *s = malloc(cap);
    size_t len = sl_utf8_sanitize(data, n, s, cap);
    if (!sl_utf8_valid((const uint8_t *)s, len) || s[len] != '\0')
        abort();
    if (mine && (len != n || memcmp(s, data, n) != 0))
        abort();
    /* Cut short, it still ends on a character boundary. */
    char small[16];
    size_t sl = sl_utf8_sanitize(data, n, small, sizeof(small));
    if (sl >= sizeof(small) || !sl_utf8_valid((const uint8_t *)small, sl))
        abort();
    free(s);
    return 0;
}
