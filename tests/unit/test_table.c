/*
 * test_table.c - the RCU hash table: insert, lookup, exists, remove,
 * replace, iteration, counts, collisions in a tiny bucket array, and
 * grace-period freeing of removed nodes.
 */
#include "sl_table.h"
#include "sl_test.h"

#include <stdio.h>
#include <sys/mman.h>

typedef struct {
    sl_table_node_t node;
    int value;
    char key[32];
} item_t;

typedef struct {
    sl_qsbr_t q;
    uint8_t mem[];
} region_t;

static sl_arena_t *A;
static sl_qsbr_t *Q;

static void setup(void)
{
    size_t sz = 4 << 20;
    region_t *r = mmap(NULL, sz, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    A = sl_arena_init(r->mem, sz - sizeof(region_t));
    Q = &r->q;
    sl_qsbr_init(Q, A);
    sl_qsbr_register(Q, 0);
}

static item_t *item(const char *key, int value)
{
    item_t *it = sl_arena_calloc(A, sizeof(*it));
    snprintf(it->key, sizeof(it->key), "%s", key);
    it->value = value;
    it->node.key = it->key;
    it->node.klen = (uint32_t)strlen(key);
    it->node.hash = sl_table_hash(key, strlen(key));
    return it;
}

static item_t *find(sl_table_t *t, const char *key)
{
    return (item_t *)sl_table_lookup(t, sl_table_hash(key, strlen(key)), key, strlen(key));
}

static int count_cb(sl_table_node_t *n, void *arg)
{
    (*(int *)arg) += ((item_t *)n)->value;
    return 0;
}

static void test_basic(void)
{
    setup();
    sl_table_t *t = sl_table_create(A, Q, 4, 2); /* tiny: lots of collisions */
    SL_CHECK(t != NULL);
    char k[16];
    for (int i = 0; i < 100; i++) {
        snprintf(k, sizeof(k), "key-%d", i);
        SL_CHECK_INT(sl_table_insert(t, &item(k, i)->node), SL_OK);
    }
    SL_CHECK_INT(sl_table_count(t), 100);
    SL_CHECK_INT(sl_table_insert(t, &item("key-5", 0)->node), SL_TABLE_EXISTS);
    for (int i = 0; i < 100; i++) {
        snprintf(k, sizeof(k), "key-%d", i);
        item_t *it = find(t, k);
        SL_CHECK(it != NULL && it->value == i);
    }
    SL_CHECK(find(t, "key-100") == NULL);
    SL_CHECK(find(t, "key-1x") == NULL);
    int sum = 0;
    sl_table_foreach(t, count_cb, &sum);
    SL_CHECK_INT(sum, 4950);

    item_t *old = (item_t *)sl_table_replace(t, &item("key-7", 700)->node);
    SL_CHECK(old != NULL && old->value == 7); /* still readable until our QS */
    SL_CHECK_INT(find(t, "key-7")->value, 700);
    SL_CHECK_INT(sl_table_count(t), 100);
    SL_CHECK(sl_table_remove(t, sl_table_hash("key-8", 5), "key-8", 5) != NULL);
    SL_CHECK(find(t, "key-8") == NULL);
    SL_CHECK(sl_table_remove(t, sl_table_hash("key-8", 5), "key-8", 5) == NULL);
    SL_CHECK_INT(sl_table_count(t), 99);
    SL_CHECK(sl_table_replace(t, &item("new", 1)->node) == NULL); /* insert */
    SL_CHECK_INT(sl_table_count(t), 100);

    SL_CHECK_INT(Q->pending, 2);
    sl_qsbr_quiescent(Q, 0);
    SL_CHECK_INT(sl_qsbr_reclaim(Q), 2);
}

static void test_locked_read_modify_write(void)
{
    setup();
    sl_table_t *t = sl_table_create(A, Q, 64, 8);
    /* "insert unless 3 already exist" under the stripe lock */
    uint64_t h = sl_table_hash("limited", 7);
    int inserted = 0;
    for (int i = 0; i < 5; i++) {
        sl_table_lock(t, h);
        item_t *cur = find(t, "limited");
        if (cur == NULL) {
            sl_table_insert_locked(t, &item("limited", 1)->node);
            inserted++;
        } else if (cur->value < 3) {
            sl_table_replace_locked(t, &item("limited", cur->value + 1)->node);
            inserted++;
        }
        sl_table_unlock(t, h);
    }
    SL_CHECK_INT(inserted, 3);
    SL_CHECK_INT(find(t, "limited")->value, 3);
}

static void test_hash_spreads(void)
{
    int buckets[64] = {0};
    char k[32];
    for (int i = 0; i < 64000; i++) {
        snprintf(k, sizeof(k), "conn-1795527014915-%d", i);
        buckets[sl_table_hash(k, strlen(k)) & 63]++;
    }
    for (int b = 0; b < 64; b++)
        SL_CHECK(buckets[b] > 800 && buckets[b] < 1200);
    SL_CHECK(sl_table_hash("a", 1) != sl_table_hash("b", 1));
    SL_CHECK(sl_table_hash("", 0) != sl_table_hash("\0", 1));
}

/* The reference vectors (Aumasson & Bernstein, SipHash-2-4, key 00..0f,
 * messages 00, 00 01, ...): the rounds are right; the tables use the same
 * code with 1 and 3 rounds. */
static void test_siphash_vectors(void)
{
    uint64_t key[2] = {0x0706050403020100ULL, 0x0f0e0d0c0b0a0908ULL};
    uint8_t msg[16];
    for (int i = 0; i < 16; i++)
        msg[i] = (uint8_t)i;
    SL_CHECK(sl_siphash(key, 2, 4, msg, 0) == 0x726fdb47dd0e0e31ULL);
    SL_CHECK(sl_siphash(key, 2, 4, msg, 1) == 0x74f839c593dc67fdULL);
    SL_CHECK(sl_siphash(key, 2, 4, msg, 15) == 0xa129ca6149be45e5ULL);
    /* Keyed: another key, other hashes (a client cannot aim at a bucket
     * without knowing the key). */
    uint64_t k2[2] = {key[0] ^ 1, key[1]};
    SL_CHECK(sl_siphash(key, 1, 3, "room", 4) != sl_siphash(k2, 1, 3, "room", 4));
}

/* 20,000 ids that differ in one digit: chains stay short in a table of
 * 16,384 buckets (the unkeyed hash let chosen ids fill one bucket). */
static void test_chains_stay_short(void)
{
    uint64_t key[2] = {0x243f6a8885a308d3ULL, 0x13198a2e03707344ULL};
    sl_table_set_key(key);
    static uint16_t chain[16384];
    memset(chain, 0, sizeof(chain));
    char k[32];
    int longest = 0;
    for (int i = 0; i < 20000; i++) {
        snprintf(k, sizeof(k), "flood-%d", i);
        int b = (int)(sl_table_hash(k, strlen(k)) & 16383);
        if (++chain[b] > longest)
            longest = chain[b];
    }
    SL_CHECK(longest <= 10);
}

int main(void)
{
    SL_TEST_RUN(test_siphash_vectors);
    SL_TEST_RUN(test_chains_stay_short);
    SL_TEST_RUN(test_basic);
    SL_TEST_RUN(test_locked_read_modify_write);
    SL_TEST_RUN(test_hash_spreads);
    return sl_test_summary();
}
