/*
 * arena.c - the shared-memory allocator (see sl_arena.h).
 *
 * Layout of the region: the sl_arena header, an array of page descriptors,
 * then the pages themselves (page-aligned).
 *
 * Source of truth versus derived data.  A page descriptor's kind (free,
 * slab page of class c and owner o, head of a run of n pages, tail of a
 * run) and a slab page's allocation bitmap are the truth.  Everything else - the per-class
 * lists of slab pages with free slots, the list of free runs with their
 * lengths and boundary tags, per-page used counts and all figures - is
 * derived and can be recomputed by sl_arena_rebuild.  Every operation
 * writes its truth with one "commit" store (the bitmap word, or the run
 * head's kind) after a write barrier that orders the preparatory stores
 * before it; so whatever instant a lock owner dies at, the truth describes
 * either the state before or after its operation, and the next locker's
 * rebuild makes the derived data agree.  The only possible loss is an
 * object whose allocation committed but whose pointer never reached the
 * caller (a leak that the figures still count as used).
 *
 * Arena lock, invariants: every page is covered by exactly one of: a free
 * run (on the free list, length on its head, boundary tag on its last
 * page), a slab page (on its class and owner's partial list iff it has a
 * free slot, `used` = bits set), or an allocated run (head + tails); the
 * figures are the sums of the above.  Recovery = sl_arena_rebuild.  A page
 * descriptor that matches no valid kind (memory corruption, never written
 * by this code) is quarantined as a one-page allocated run: leaked, never
 * reused, so rebuild always terminates and never hands out live memory.
 */
#include "sl_arena.h"
#include "sl_crash.h"

#include <string.h>
#include <urcu/arch.h>
#include <urcu/system.h>

#include "arena_layout.h"

/* Per process (not in the shared header): whose pages we allocate from. */
static unsigned my_owner = SL_ARENA_OWNERS - 1;

void sl_arena_set_owner(unsigned owner)
{
    my_owner = owner < SL_ARENA_OWNERS ? owner : SL_ARENA_OWNERS - 1;
}

static uint32_t slots_of(unsigned cls)
{
    return SL_ARENA_PAGE >> (cls + SL_ARENA_MIN_SHIFT);
}

static size_t size_of(unsigned cls)
{
    return (size_t)1 << (cls + SL_ARENA_MIN_SHIFT);
}

/* ---- doubly linked lists of page indexes (derived data) ---- */

static void list_push(sl_arena_t *a, uint32_t *head, uint32_t i)
{
    a->pages[i].prev = NONE;
    a->pages[i].next = *head;
    if (*head != NONE)
        a->pages[*head].prev = i;
    *head = i;
}

static void list_remove(sl_arena_t *a, uint32_t *head, uint32_t i)
{
    page_t *p = &a->pages[i];
    if (p->prev != NONE)
        a->pages[p->prev].next = p->next;
    else
        *head = p->next;
    if (p->next != NONE)
        a->pages[p->next].prev = p->prev;
    p->next = p->prev = NONE;
}

/* Record [h, h+len) as one free run: length on the head, boundary tag on
 * the last page, head on the free list. */
static void free_run_add(sl_arena_t *a, uint32_t h, uint32_t len)
{
    a->pages[h].run = len;
    a->pages[h + len - 1].head = h;
    list_push(a, &a->free_head, h);
}

/* ---- page runs ---- */

static uint32_t pages_take(sl_arena_t *a, uint32_t k)
{
    for (uint32_t h = a->free_head; h != NONE; h = a->pages[h].next) {
        uint32_t len = a->pages[h].run;
        if (len < k)
            continue;
        list_remove(a, &a->free_head, h);
        if (len > k)
            free_run_add(a, h + k, len - k);
        a->free_pages -= k;
        return h;
    }
    return NONE;
}

/* Give back [h, h+k) whose kinds are already PG_FREE, merging neighbours. */
static void pages_give(sl_arena_t *a, uint32_t h, uint32_t k)
{
    a->free_pages += k;
    uint32_t next = h + k;
    if (next < a->npages && a->pages[next].kind == PG_FREE) {
        /* A free page right after a non-free one is a run head. */
        list_remove(a, &a->free_head, next);
        k += a->pages[next].run;
    }
    if (h > 0 && a->pages[h - 1].kind == PG_FREE) {
        uint32_t ph = a->pages[h - 1].head;
        list_remove(a, &a->free_head, ph);
        k += a->pages[ph].run;
        h = ph;
    }
    free_run_add(a, h, k);
}

/* ---- init and rebuild ---- */

static void arena_recover(void *arg)
{
    if (SL_MUTATED(M_ARENA_RECOVER))
        return;
    sl_arena_rebuild(arg);
}

sl_arena_t *sl_arena_init(void *region, size_t size)
{
    uintptr_t start = (uintptr_t)region;
    uintptr_t end = start + size;
    uintptr_t hdr_end = start + sizeof(sl_arena_t);
    /* Each page costs its 4 KiB plus a descriptor. */
    if (end <= hdr_end + SL_ARENA_PAGE)
        return NULL;
    size_t npages = (end - hdr_end - SL_ARENA_PAGE) / (SL_ARENA_PAGE + sizeof(page_t));
    if (npages == 0 || npages >= NONE)
        return NULL;
    sl_arena_t *a = region;
    memset(a, 0, sizeof(*a));
    a->pages = (page_t *)hdr_end;
    uintptr_t base = hdr_end + npages * sizeof(page_t);
    base = (base + SL_ARENA_PAGE - 1) & ~(uintptr_t)(SL_ARENA_PAGE - 1);
    a->base = (uint8_t *)base;
    a->npages = (uint32_t)npages;
    memset(a->pages, 0, npages * sizeof(page_t)); /* every page PG_FREE */
    if (sl_lock_init(&a->lock, arena_recover, a) != SL_OK)
        return NULL;
    sl_arena_rebuild(a);
    return a;
}

void sl_arena_rebuild(sl_arena_t *a)
{
    for (unsigned c = 0; c < SL_ARENA_CLASSES; c++) {
        for (unsigned o = 0; o < SL_ARENA_OWNERS; o++)
            a->partial[c][o] = NONE;
        a->cls_used[c] = a->cls_total[c] = 0;
    }
    a->free_head = NONE;
    a->free_pages = a->run_pages = 0;
    uint32_t i = 0;
    while (i < a->npages) {
        page_t *p = &a->pages[i];
        if (p->kind == PG_RUN && p->run >= 1 && p->run <= a->npages - i) {
            for (uint32_t k = 1; k < p->run; k++)
                a->pages[i + k].kind = PG_TAIL; /* finish a half-marked run */
            a->run_pages += p->run;
            i += p->run;
        } else if (p->kind == PG_SLAB && p->cls < SL_ARENA_CLASSES &&
                   p->owner < SL_ARENA_OWNERS) {
            uint32_t used = 0;
            for (int w = 0; w < 4; w++)
                used += (uint32_t)__builtin_popcountll(p->bits[w]);
            p->used = (uint16_t)used;
            a->cls_used[p->cls] += used;
            a->cls_total[p->cls] += slots_of(p->cls);
            if (used < slots_of(p->cls))
                list_push(a, &a->partial[p->cls][p->owner], i);
            i++;
        } else if (p->kind == PG_FREE || p->kind == PG_TAIL) {
            /* Free, or a tail no run head covers (an allocation or free cut
             * short): all of it is free. */
            uint32_t h = i;
            while (i < a->npages &&
                   (a->pages[i].kind == PG_FREE || a->pages[i].kind == PG_TAIL)) {
                a->pages[i].kind = PG_FREE;
                i++;
            }
            a->free_pages += i - h;
            free_run_add(a, h, i - h);
        } else {
            /* Corrupt: no valid kind, or a run/slab with impossible fields.
             * Quarantine the page (see the top of this file). */
            p->kind = PG_RUN;
            p->run = 1;
            a->run_pages++;
            i++;
        }
    }
}

/* ---- allocation ---- */

static int class_of(size_t n)
{
    if (n > ((size_t)1 << SL_ARENA_MAX_SHIFT))
        return -1;
    int c = 0;
    while (size_of((unsigned)c) < n)
        c++;
    return c;
}

static void *slab_alloc(sl_arena_t *a, unsigned c)
{
    uint32_t *partial = &a->partial[c][my_owner];
    if (*partial == NONE) {
        uint32_t h = pages_take(a, 1);
        if (h == NONE)
            return NULL;
        SL_CRASHPOINT("arena.slab.page-taken");
        page_t *p = &a->pages[h];
        memset(p->bits, 0, sizeof(p->bits));
        p->used = 0;
        p->cls = (uint8_t)c;
        p->owner = (uint8_t)my_owner;
        SL_CRASHPOINT("arena.slab.prepared");
        cmm_smp_wmb(); /* bitmap, class, owner before the kind that makes them true */
        p->kind = PG_SLAB;
        SL_CRASHPOINT("arena.slab.committed");
        a->cls_total[c] += slots_of(c);
        list_push(a, partial, h);
        SL_CRASHPOINT("arena.slab.listed");
    }
    uint32_t h = *partial;
    page_t *p = &a->pages[h];
    uint32_t nslots = slots_of(c);
    for (uint32_t w = 0; w * 64 < nslots; w++) {
        if (~p->bits[w] == 0)
            continue;
        unsigned b = (unsigned)__builtin_ctzll(~p->bits[w]);
        uint32_t slot = w * 64 + b;
        if (slot >= nslots)
            break;
        p->bits[w] |= 1ULL << b; /* the commit: this slot is now allocated */
        SL_CRASHPOINT("arena.alloc.bit");
        p->used++;
        a->cls_used[c]++;
        SL_CRASHPOINT("arena.alloc.counted");
        if (p->used == nslots) {
            list_remove(a, partial, h);
            SL_CRASHPOINT("arena.alloc.page-full");
        }
        return a->base + (size_t)h * SL_ARENA_PAGE + slot * size_of(c);
    }
    return NULL; /* unreachable: a partial page has a free slot */
}

static void *run_alloc(sl_arena_t *a, size_t n)
{
    uint64_t k = (n + SL_ARENA_PAGE - 1) / SL_ARENA_PAGE;
    if (k >= a->npages)
        return NULL;
    uint32_t h = pages_take(a, (uint32_t)k);
    if (h == NONE)
        return NULL;
    SL_CRASHPOINT("arena.run.pages-taken");
    if (SL_MUTATED(M_ARENA_COMMIT_ORDER)) {
        a->pages[h].kind = PG_RUN; /* mutant: the head before its length */
        SL_CRASHPOINT("arena.run.prepared");
        a->pages[h].run = (uint32_t)k;
        for (uint32_t i = 1; i < k; i++)
            a->pages[h + i].kind = PG_TAIL;
    } else {
        a->pages[h].run = (uint32_t)k;
        for (uint32_t i = 1; i < k; i++)
            a->pages[h + i].kind = PG_TAIL;
        SL_CRASHPOINT("arena.run.prepared");
        cmm_smp_wmb(); /* length and tails before the head's kind commits */
        a->pages[h].kind = PG_RUN;
    }
    SL_CRASHPOINT("arena.run.committed");
    a->run_pages += k;
    SL_CRASHPOINT("arena.run.counted");
    return a->base + (size_t)h * SL_ARENA_PAGE;
}

void *sl_arena_alloc(sl_arena_t *a, size_t n)
{
    if (n == 0)
        n = 1;
    if (sl_lock_acquire(&a->lock) != SL_OK)
        return NULL;
    int c = class_of(n);
    void *p = c >= 0 ? slab_alloc(a, (unsigned)c) : run_alloc(a, n);
    if (p == NULL)
        a->failures++;
    sl_lock_release(&a->lock);
    return p;
}

void *sl_arena_calloc(sl_arena_t *a, size_t n)
{
    void *p = sl_arena_alloc(a, n);
    if (p)
        memset(p, 0, n);
    return p;
}

void sl_arena_free(sl_arena_t *a, void *ptr)
{
    if (ptr == NULL)
        return;
    uint8_t *p8 = ptr;
    if (sl_lock_acquire(&a->lock) != SL_OK)
        return;
    if (p8 < a->base || p8 >= a->base + (size_t)a->npages * SL_ARENA_PAGE) {
        a->bad_frees++;
        goto out;
    }
    size_t off = (size_t)(p8 - a->base);
    uint32_t h = (uint32_t)(off / SL_ARENA_PAGE);
    page_t *p = &a->pages[h];
    if (p->kind == PG_SLAB) {
        size_t s = size_of(p->cls), in = off % SL_ARENA_PAGE;
        uint32_t slot = (uint32_t)(in / s);
        uint64_t bit = 1ULL << (slot % 64);
        if (in % s != 0 || !(p->bits[slot / 64] & bit)) {
            a->bad_frees++;
            goto out;
        }
        if (a->poison)
            memset(ptr, 0x5A, s);
        bool was_full = p->used == slots_of(p->cls);
        cmm_smp_wmb(); /* poison lands before the slot is free to reuse */
        p->bits[slot / 64] &= ~bit; /* the commit */
        SL_CRASHPOINT("arena.free.bit");
        p->used--;
        a->cls_used[p->cls]--;
        SL_CRASHPOINT("arena.free.counted");
        uint32_t *partial = &a->partial[p->cls][p->owner];
        if (was_full) {
            list_push(a, partial, h);
            SL_CRASHPOINT("arena.free.listed");
        }
        /* An empty page goes back to the page pool unless it is its
         * owner's only partial page of the class (which avoids thrashing). */
        if (p->used == 0 && !(*partial == h && p->next == NONE)) {
            list_remove(a, partial, h);
            a->cls_total[p->cls] -= slots_of(p->cls);
            SL_CRASHPOINT("arena.free.page-unlisted");
            p->kind = PG_FREE; /* the commit */
            SL_CRASHPOINT("arena.free.page-freed");
            pages_give(a, h, 1);
            SL_CRASHPOINT("arena.free.page-given");
        }
    } else if (p->kind == PG_RUN && off % SL_ARENA_PAGE == 0) {
        uint32_t k = p->run;
        if (a->poison)
            memset(ptr, 0x5A, (size_t)k * SL_ARENA_PAGE);
        cmm_smp_wmb();
        p->kind = PG_FREE; /* the commit: the run is free */
        SL_CRASHPOINT("arena.run-free.committed");
        for (uint32_t i = 1; i < k; i++)
            a->pages[h + i].kind = PG_FREE;
        SL_CRASHPOINT("arena.run-free.tails");
        a->run_pages -= k;
        pages_give(a, h, k);
        SL_CRASHPOINT("arena.run-free.given");
    } else {
        a->bad_frees++;
    }
out:
    sl_lock_release(&a->lock);
}

void sl_arena_stats(sl_arena_t *a, sl_arena_stats_t *o)
{
    memset(o, 0, sizeof(*o));
    if (sl_lock_acquire(&a->lock) != SL_OK)
        return;
    o->total_bytes = (uint64_t)a->npages * SL_ARENA_PAGE;
    o->free_pages = a->free_pages;
    o->run_pages = a->run_pages;
    o->failures = a->failures;
    o->bad_frees = a->bad_frees;
    o->recoveries = a->lock.recoveries;
    o->used_bytes = a->run_pages * SL_ARENA_PAGE;
    for (unsigned c = 0; c < SL_ARENA_CLASSES; c++) {
        o->cls[c].size = (uint32_t)size_of(c);
        o->cls[c].used = a->cls_used[c];
        o->cls[c].total = a->cls_total[c];
        o->used_bytes += a->cls_used[c] * size_of(c);
    }
    sl_lock_release(&a->lock);
}

uint64_t sl_arena_used(sl_arena_t *a, uint64_t *total)
{
    /* No lock: each figure is one untorn load; together they may be a few
     * allocations apart, which a threshold does not mind. */
    uint64_t used = CMM_LOAD_SHARED(a->run_pages) * SL_ARENA_PAGE;
    for (unsigned c = 0; c < SL_ARENA_CLASSES; c++)
        used += CMM_LOAD_SHARED(a->cls_used[c]) * size_of(c);
    if (total)
        *total = (uint64_t)a->npages * SL_ARENA_PAGE;
    return used;
}

void sl_arena_set_poison(sl_arena_t *a, bool on)
{
    a->poison = on;
}

sl_lock_t *sl_arena_lock(sl_arena_t *a)
{
    return &a->lock;
}
