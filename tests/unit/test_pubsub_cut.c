/*
 * test_pubsub_cut.c - sl_pubsub_cut_history, the cut of a subscription
 * result's (or admin info's) retained messages to a byte budget: the
 * newest that fit are kept, in order, and the rest counted; the array
 * keeps its elements' references valid (rg17 L4 made the cut linear).
 */
#include "sl_pubsub.h"
#include "sl_test.h"

#include <jansson.h>
#include <stdlib.h>

static json_t *msgs(size_t n)
{
    json_t *a = json_array();
    for (size_t i = 1; i <= n; i++)
        json_array_append_new(a, json_pack("{s:I, s:s}", "seq", (json_int_t)i, "data", "x"));
    return a;
}

static size_t one(json_t *a, size_t i)
{
    return json_dumpb(json_array_get(a, i), NULL, 0, JSON_COMPACT) + 1;
}

static void test_keeps_the_newest_that_fit(void)
{
    json_t *a = msgs(100);
    size_t each = one(a, 99); /* seqs 10..99 take 2 digits, 100 three */
    size_t budget = one(a, 99) + one(a, 98) + one(a, 97) + each / 2;
    json_t *last = json_incref(json_array_get(a, 99));
    SL_CHECK_INT(sl_pubsub_cut_history(a, budget), 97);
    SL_CHECK_INT(json_array_size(a), 3);
    for (size_t i = 0; i < 3; i++)
        SL_CHECK_INT(json_integer_value(json_object_get(json_array_get(a, i), "seq")), 98 + i);
    SL_CHECK(json_array_get(a, 2) == last);
    json_decref(last);
    json_decref(a);
}

static void test_all_or_nothing(void)
{
    json_t *a = msgs(10);
    SL_CHECK_INT(sl_pubsub_cut_history(a, 1 << 20), 0);
    SL_CHECK_INT(json_array_size(a), 10);
    SL_CHECK_INT(json_integer_value(json_object_get(json_array_get(a, 0), "seq")), 1);
    SL_CHECK_INT(sl_pubsub_cut_history(a, 3), 10);
    SL_CHECK_INT(json_array_size(a), 0);
    json_decref(a);
    json_t *e = json_array();
    SL_CHECK_INT(sl_pubsub_cut_history(e, 0), 0);
    json_decref(e);
}

/* Many cut to a few: the case a peer can repeat (since-seq with a small
 * --max-outbound-bytes); the kept ones are the newest, in order. */
static void test_many_cut_to_a_few(void)
{
    size_t n = 20000;
    json_t *a = msgs(n);
    size_t budget = one(a, n - 1) * 5;
    SL_CHECK_INT(sl_pubsub_cut_history(a, budget), n - 5);
    SL_CHECK_INT(json_array_size(a), 5);
    for (size_t i = 0; i < 5; i++)
        SL_CHECK_INT(json_integer_value(json_object_get(json_array_get(a, i), "seq")),
                     n - 4 + i);
    json_decref(a);
}

int main(void)
{
    SL_TEST_RUN(test_keeps_the_newest_that_fit);
    SL_TEST_RUN(test_all_or_nothing);
    SL_TEST_RUN(test_many_cut_to_a_few);
    return sl_test_summary();
}
