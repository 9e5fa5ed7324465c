/*
 * cidx.c - the worker's local subscriber index (see sl_cidx.h).
 *
 * Chained hash table that doubles when it averages more than one entry per
 * bucket.  An entry without subscribers is freed at once.
 */
#include "sl_cidx.h"

#include <stdlib.h>
#include <string.h>

static sl_cidx_entry_t **buckets;
static uint32_t nbuckets, nentries;

static sl_cidx_entry_t **slot_of(uint64_t hash)
{
    return &buckets[hash & (nbuckets - 1)];
}

sl_cidx_entry_t *sl_cidx_find(uint64_t hash, const char *id, size_t len)
{
    if (nbuckets == 0)
        return NULL;
    for (sl_cidx_entry_t *e = *slot_of(hash); e; e = e->next)
        if (e->hash == hash && e->idlen == len && memcmp(e->id, id, len) == 0)
            return e;
    return NULL;
}

void sl_cidx_foreach_hash(uint64_t hash, void (*fn)(sl_cidx_entry_t *e, void *arg), void *arg)
{
    if (nbuckets == 0)
        return;
    for (sl_cidx_entry_t *e = *slot_of(hash); e; e = e->next)
        if (e->hash == hash)
            fn(e, arg);
}

void sl_cidx_foreach(void (*fn)(sl_cidx_entry_t *e, void *arg), void *arg)
{
    for (uint32_t i = 0; i < nbuckets; i++)
        for (sl_cidx_entry_t *e = buckets[i]; e; e = e->next)
            fn(e, arg);
}

static int grow(void)
{
    uint32_t n = nbuckets ? nbuckets * 2 : 64;
    sl_cidx_entry_t **b = calloc(n, sizeof(*b));
    if (b == NULL)
        return SL_ERROR;
    for (uint32_t i = 0; i < nbuckets; i++)
        for (sl_cidx_entry_t *e = buckets[i], *next; e; e = next) {
            next = e->next;
            e->next = b[e->hash & (n - 1)];
            b[e->hash & (n - 1)] = e;
        }
    free(buckets);
    buckets = b;
    nbuckets = n;
    return SL_OK;
}

/* A new entry that got no subscriber (out of memory): unlinked and freed,
 * never left empty.  It is at the head of its bucket (just inserted). */
static void drop_if_empty(sl_cidx_entry_t *e)
{
    if (e->n != 0)
        return;
    *slot_of(e->hash) = e->next;
    free(e->conns);
    free(e->marks);
    free(e);
    nentries--;
}

sl_cidx_entry_t *sl_cidx_add(uint64_t hash, const char *id, size_t len, sl_conn_t *c,
                             const sl_cidx_mark_t *mark)
{
    sl_cidx_entry_t *e = sl_cidx_find(hash, id, len);
    if (e == NULL) {
        if (nentries >= nbuckets && grow() != SL_OK)
            return NULL;
        e = calloc(1, sizeof(*e) + len + 1);
        if (e == NULL)
            return NULL;
        e->hash = hash;
        e->idlen = (uint32_t)len;
        memcpy(e->id, id, len);
        e->next = *slot_of(hash);
        *slot_of(hash) = e;
        nentries++;
    }
    if (e->n == e->cap) {
        uint32_t cap = e->cap ? e->cap * 2 : 4;
        sl_conn_t **a = realloc(e->conns, sizeof(*a) * cap);
        if (a == NULL) {
            drop_if_empty(e);
            return NULL;
        }
        e->conns = a;
        sl_cidx_mark_t *m = realloc(e->marks, sizeof(*m) * cap);
        if (m == NULL) {
            drop_if_empty(e);
            return NULL;
        }
        e->marks = m;
        uint64_t *l = realloc(e->last, sizeof(*l) * cap);
        if (l == NULL) {
            drop_if_empty(e); /* conns and marks grew: harmless, cap stays */
            return NULL;
        }
        e->last = l;
        e->cap = cap;
    }
    e->marks[e->n] = mark ? *mark : (sl_cidx_mark_t){0, 0, 0, 0, false, true};
    e->last[e->n] = 0;
    e->conns[e->n++] = c;
    return e;
}

void sl_cidx_remove(uint64_t hash, const char *id, size_t len, sl_conn_t *c)
{
    sl_cidx_entry_t **link = nbuckets ? slot_of(hash) : NULL;
    for (sl_cidx_entry_t *e = link ? *link : NULL; e; link = &e->next, e = e->next) {
        if (!(e->hash == hash && e->idlen == len && memcmp(e->id, id, len) == 0))
            continue;
        for (uint32_t i = 0; i < e->n; i++)
            if (e->conns[i] == c) {
                /* Keep arrival order: fan-out order across subscribers is
                 * not part of the contract, but stable order is kinder. */
                memmove(&e->conns[i], &e->conns[i + 1], sizeof(*e->conns) * (e->n - i - 1));
                memmove(&e->marks[i], &e->marks[i + 1], sizeof(*e->marks) * (e->n - i - 1));
                memmove(&e->last[i], &e->last[i + 1], sizeof(*e->last) * (e->n - i - 1));
                e->n--;
                break;
            }
        if (e->n == 0) {
            *link = e->next;
            free(e->conns);
            free(e->marks);
            free(e->last);
            free(e);
            nentries--;
        }
        return;
    }
}

void sl_cidx_seen(uint64_t hash, const char *id, size_t len, sl_conn_t *c, uint64_t seq)
{
    sl_cidx_entry_t *e = sl_cidx_find(hash, id, len);
    for (uint32_t i = 0; e && i < e->n; i++)
        if (e->conns[i] == c && e->last[i] < seq)
            e->last[i] = seq;
}
