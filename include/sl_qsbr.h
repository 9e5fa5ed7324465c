/*
 * sl_qsbr.h - grace periods across processes (quiescent-state-based RCU).
 *
 * liburcu's own grace-period machinery tracks the threads of one process;
 * our readers are processes.  So the grace period is ours, built from
 * liburcu's primitives (uatomic, cmm_smp_mb): a global counter and one
 * reader slot per process in shared memory.
 *
 * Readers take no locks and never wait.  A reader holds pointers obtained
 * with rcu_dereference only until its next quiescent state: workers report
 * one at the end of every event-loop turn (sl_qsbr_quiescent).  A writer
 * that unlinks an object retires it (sl_qsbr_retire); it is freed to the
 * arena only once every online slot has reported a quiescent state after
 * the retirement, so no reader can still be looking at it.  An offline slot
 * (a process that is blocked, gone, or released by the master after a
 * crash) never holds back reclamation.
 *
 * Each slot also counts its quiescent states (`turns`): the master watches
 * that counter to tell a worker that makes progress from a stalled one.
 * And each slot has the lock-holder record of its process (sl_lock.h).
 */
#ifndef SL_QSBR_H
#define SL_QSBR_H

#include "sl_arena.h"
#include "sl_lock.h"

#define SL_QSBR_SLOTS 80 /* workers use their id; the rest for the master and tests */

/* Put at the start of every object that is freed through a grace period.
 * epoch is 0 until the object is retired (tables set it when they publish
 * a node), so recovery can tell whether a dead writer retired it. */
typedef struct sl_qsbr_head {
    struct sl_qsbr_head *next;
    uint64_t epoch;
} sl_qsbr_head_t;

typedef struct {
    uint64_t ctr;   /* 0: offline; else the global counter seen at the last QS */
    uint64_t turns; /* quiescent states reported (progress, for the master) */
    int32_t pid;
    uint32_t pad;
} __attribute__((aligned(64))) sl_qsbr_slot_t;

typedef struct {
    uint64_t gp __attribute__((aligned(64))); /* grace-period counter, starts at 1 */
    sl_qsbr_slot_t slots[SL_QSBR_SLOTS];
    sl_lock_t limbo_lock;
    sl_qsbr_head_t *limbo_head, *limbo_tail; /* retired, oldest first */
    sl_qsbr_head_t *adding; /* intent: being appended (limbo lock) */
    uint64_t pending;   /* objects in limbo (recounted by recovery) */
    uint64_t reclaimed; /* ever freed after their grace period */
    sl_arena_t *arena;
    sl_lock_holder_t *holders; /* SL_QSBR_SLOTS, from the arena */
} sl_qsbr_t;

/* Initialise in shared memory; retired objects go back to `arena`. */
int sl_qsbr_init(sl_qsbr_t *q, sl_arena_t *arena);

/* Reader side (each process its own slot).  register also makes the
 * slot's lock-holder record this process's (sl_lock_set_holder). */
void sl_qsbr_register(sl_qsbr_t *q, int slot);   /* online now */
void sl_qsbr_quiescent(sl_qsbr_t *q, int slot);  /* holds no pointers now */
void sl_qsbr_offline(sl_qsbr_t *q, int slot);    /* e.g. before blocking */
void sl_qsbr_online(sl_qsbr_t *q, int slot);
/* The master takes a dead process's slot offline so it stops counting.
 * Only once sl_lock_recover_dead has taken every lock its holder record
 * names (sl_reg_dead). */
void sl_qsbr_release(sl_qsbr_t *q, int slot);

/* Quiescent states slot has reported (for stall detection). */
static inline uint64_t sl_qsbr_turns(const sl_qsbr_t *q, int slot)
{
    return __atomic_load_n(&q->slots[slot].turns, __ATOMIC_RELAXED);
}

/* Objects ever retired: those freed since plus those waiting. */
static inline uint64_t sl_qsbr_retired(const sl_qsbr_t *q)
{
    return __atomic_load_n(&q->reclaimed, __ATOMIC_RELAXED) +
           __atomic_load_n(&q->pending, __ATOMIC_RELAXED);
}

/* Writer side: `obj` is unlinked (no new reader can find it); free it
 * after a grace period. */
void sl_qsbr_retire(sl_qsbr_t *q, sl_qsbr_head_t *obj);
/* The same, unless obj is already retired (its epoch is set): for
 * recovery, which may not know whether a dead writer got that far. */
void sl_qsbr_retire_once(sl_qsbr_t *q, sl_qsbr_head_t *obj);

/* Free what every online reader is past - at most SL_QSBR_RECLAIM_BATCH
 * objects, oldest first - and return how many.  Cheap when nothing is
 * pending. */
#define SL_QSBR_RECLAIM_BATCH 2048
size_t sl_qsbr_reclaim(sl_qsbr_t *q);

/* Wait (sleeping briefly) until a full grace period has passed, at most
 * timeout_ms: SL_OK or SL_AGAIN.  For tests and rare slow paths; the
 * caller's own slot, if any, must be offline or have just reported. */
int sl_qsbr_synchronize(sl_qsbr_t *q, int timeout_ms);

#endif
