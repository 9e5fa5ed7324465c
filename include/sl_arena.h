/*
 * sl_arena.h - the allocator of the shared mapping (in the spirit of nginx's
 * ngx_slab): 4 KiB pages; objects of up to 2 KiB come from pages carved into
 * one power-of-two size class each (16 .. 2048 bytes); larger objects take a
 * run of whole pages.
 *
 * Every process maps the arena at the same address (the mapping is created
 * before fork), so the pointers it returns are valid everywhere.  All calls
 * take the arena's robust lock; an owner that died mid-call is repaired by
 * rebuilding the derived lists and figures from the page descriptors (see
 * arena.c).  Exhaustion returns NULL and is counted; it never corrupts.
 */
#ifndef SL_ARENA_H
#define SL_ARENA_H

#include "sl_common.h"
#include "sl_lock.h"

#define SL_ARENA_PAGE 4096
#define SL_ARENA_MIN_SHIFT 4  /* 16 bytes */
#define SL_ARENA_MAX_SHIFT 11 /* 2048 bytes */
#define SL_ARENA_CLASSES (SL_ARENA_MAX_SHIFT - SL_ARENA_MIN_SHIFT + 1)
#define SL_ARENA_OWNERS 66 /* slab page owners: workers 0..63, master, others */

typedef struct sl_arena sl_arena_t;

typedef struct {
    uint64_t total_bytes;   /* bytes of pages the arena manages */
    uint64_t used_bytes;    /* objects handed out (class size) + run pages */
    uint64_t free_pages;
    uint64_t run_pages;     /* pages in large-object runs */
    uint64_t failures;      /* allocations refused: exhausted */
    uint64_t bad_frees;     /* double or foreign frees detected and ignored */
    uint64_t recoveries;    /* lock owners that died and were repaired */
    struct {
        uint32_t size;
        uint64_t used;  /* objects allocated */
        uint64_t total; /* object slots in this class's pages */
    } cls[SL_ARENA_CLASSES];
} sl_arena_stats_t;

/* Lay an arena over region[0..size).  Returns NULL if it is too small. */
sl_arena_t *sl_arena_init(void *region, size_t size);

/* Allocate; NULL when exhausted (counted). */
void *sl_arena_alloc(sl_arena_t *a, size_t n);
void *sl_arena_calloc(sl_arena_t *a, size_t n);

/* Free; NULL is a no-op; a pointer not currently allocated is counted in
 * bad_frees and ignored. */
void sl_arena_free(sl_arena_t *a, void *p);

void sl_arena_stats(sl_arena_t *a, sl_arena_stats_t *out);
/* Bytes handed out (as sl_arena_stats' used_bytes) and, in *total (may be
 * NULL), the bytes managed - without the lock, so a figure only: for
 * thresholds that must not wait for a process that holds the lock
 * (/health, the master's stall watch). */
uint64_t sl_arena_used(sl_arena_t *a, uint64_t *total);

/* Which slab pages this process allocates small objects from (0..
 * SL_ARENA_OWNERS-1; the default is the last, "others").  Each worker takes
 * its own id, so the objects it creates share pages only with each other:
 * a page is touched - and counted in resident memory - by one process
 * instead of by every process whose objects happen to land on it.  Any
 * process may free any object. */
void sl_arena_set_owner(unsigned owner);

/* Fill freed memory with 0x5A (tests use it to catch use after free). */
void sl_arena_set_poison(sl_arena_t *a, bool on);

/* Rebuild derived lists and figures from the page descriptors (what lock
 * recovery runs; exposed for tests).  Call with the lock held or while no
 * other process uses the arena. */
void sl_arena_rebuild(sl_arena_t *a);

/* The arena's lock, for tests that kill a process while it holds it. */
sl_lock_t *sl_arena_lock(sl_arena_t *a);

#endif
