/*
 * arena_layout.h - the arena's shared-memory layout (see arena.c), for
 * arena.c and the unit test that corrupts a page descriptor on purpose.
 */
#ifndef SL_ARENA_LAYOUT_H
#define SL_ARENA_LAYOUT_H

#include "sl_arena.h"

#define NONE UINT32_MAX

enum { PG_FREE = 0, PG_SLAB = 1, PG_RUN = 2, PG_TAIL = 3 };

typedef struct {
    uint8_t kind;      /* truth */
    uint8_t cls;       /* truth, PG_SLAB */
    uint8_t owner;     /* truth, PG_SLAB: the process that allocates from it */
    uint16_t used;     /* derived: allocated slots, PG_SLAB */
    uint32_t run;      /* PG_RUN: pages in the run (truth); free head: run length */
    uint32_t head;     /* free runs: on the last page, the run's first page */
    uint32_t next, prev; /* derived list links (partial lists, free list) */
    uint64_t bits[4];  /* truth, PG_SLAB: one bit per slot, 1 = allocated */
} page_t;

struct sl_arena {
    sl_lock_t lock;
    uint32_t npages;
    bool poison;
    uint8_t *base;
    page_t *pages;
    uint32_t partial[SL_ARENA_CLASSES][SL_ARENA_OWNERS]; /* derived */
    uint32_t free_head;                 /* derived */
    uint64_t free_pages, run_pages;     /* derived */
    uint64_t cls_used[SL_ARENA_CLASSES], cls_total[SL_ARENA_CLASSES]; /* derived */
    uint64_t failures, bad_frees;       /* event counts (not derived) */
};

#endif
