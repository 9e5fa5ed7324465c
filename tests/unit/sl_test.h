/*
 * sl_test.h - the unit-test harness: a few assertion macros and a closing
 * line "N passed, N failed" that tests/run-unit.sh adds up.
 *
 * A test is a function `static void test_x(void)` registered with
 * SL_TEST_RUN(test_x) in main(); a failed check reports file:line and marks
 * the current test failed, and the test goes on (so one run shows every
 * broken check).  main() ends with `return sl_test_summary();`.
 */
#ifndef SL_TEST_H
#define SL_TEST_H

#include <inttypes.h>
#include <stdio.h>
#include <string.h>

static int sl_test_passed, sl_test_failed, sl_test_cur_failed;
static const char *sl_test_cur_name;

#define SL_CHECK(cond)                                                          \
    do {                                                                        \
        if (!(cond)) {                                                          \
            fprintf(stderr, "  FAIL %s:%d in %s: %s\n", __FILE__, __LINE__,     \
                    sl_test_cur_name, #cond);                                   \
            sl_test_cur_failed = 1;                                             \
        }                                                                       \
    } while (0)

#define SL_CHECK_INT(a, b)                                                      \
    do {                                                                        \
        long long a_ = (long long)(a), b_ = (long long)(b);                     \
        if (a_ != b_) {                                                         \
            fprintf(stderr, "  FAIL %s:%d in %s: %s == %s (%lld != %lld)\n",    \
                    __FILE__, __LINE__, sl_test_cur_name, #a, #b, a_, b_);      \
            sl_test_cur_failed = 1;                                             \
        }                                                                       \
    } while (0)

#define SL_CHECK_STR(a, b)                                                      \
    do {                                                                        \
        const char *a_ = (a), *b_ = (b);                                        \
        if (a_ == NULL || b_ == NULL || strcmp(a_, b_) != 0) {                  \
            fprintf(stderr, "  FAIL %s:%d in %s: %s == %s (\"%s\" != \"%s\")\n",\
                    __FILE__, __LINE__, sl_test_cur_name, #a, #b,               \
                    a_ ? a_ : "(null)", b_ ? b_ : "(null)");                    \
            sl_test_cur_failed = 1;                                             \
        }                                                                       \
    } while (0)

#define SL_TEST_RUN(fn)                                                         \
    do {                                                                        \
        sl_test_cur_name = #fn;                                                 \
        sl_test_cur_failed = 0;                                                 \
        fn();                                                                   \
        if (sl_test_cur_failed) {                                               \
            sl_test_failed++;                                                   \
            fprintf(stderr, "not ok %s\n", #fn);                                \
        } else {                                                                \
            sl_test_passed++;                                                   \
        }                                                                       \
    } while (0)

static inline int sl_test_summary(void)
{
    printf("%d passed, %d failed\n", sl_test_passed, sl_test_failed);
    return sl_test_failed ? 1 : 0;
}

#endif
