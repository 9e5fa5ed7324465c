/*
 * sl_crash.h - named crash points, fault points and mutants, for the
 * kill-point and mutation tests of the shared registry
 * (tests/unit/test_killpoints.c, tests/mutation-check.sh) and the
 * integration tests that stop a worker inside a lock.
 *
 * SL_CRASHPOINT("name") marks the instant after a store of a multi-store
 * update of shared memory.  In a build with -DSL_CRASHPOINTS every crash
 * point registers itself in the linker section "sl_crashpoints" (so a test
 * can list all of them and prove each one is covered) and a test can arm one
 * by name: the process then _exits (or stops itself) the n-th time it gets
 * there, leaving shared memory exactly as a SIGKILL at that instant would.
 * Everywhere else it is a compiler barrier (cmm_barrier, no instruction):
 * the crash-point build calls a function there, which the compiler cannot
 * move stores across, so the production build keeps the very store order
 * that the kill-point test exercised.  (The CPU's order is the explicit
 * barriers' business: cmm_smp_wmb and friends, reasoned about in each
 * file; x86 does not reorder stores, so no test here can see a missing
 * one - see shm/README.md, "How barriers are checked".)
 *
 * SL_FAULT("name") is false in the server; in a crash-point build a test
 * can arm it (action SL_CRASH_FAIL) to make the code behind it take its
 * failure path - e.g. a local allocation that fails.
 *
 * SL_MUTATED(M_x) is true only in a build with -DSL_MUTANT=M_x: the code
 * it guards is a recovery routine, an ordering or unlink-before-retire that
 * the mutation check disables one at a time, to show a test fails for each.
 */
#ifndef SL_CRASH_H
#define SL_CRASH_H

#include "sl_common.h"

#ifdef SL_CRASHPOINTS

typedef struct {
    const char *name;
    const char *file;
    int line;
} sl_crashpoint_t;

void sl_crash_at(const sl_crashpoint_t *cp);
bool sl_crash_fault(const sl_crashpoint_t *cp);

#define SL_CRASHPOINT(nm)                                                                  \
    do {                                                                                   \
        static const sl_crashpoint_t sl_cp_ = {nm, __FILE__, __LINE__};                    \
        static const sl_crashpoint_t *const sl_cpp_                                        \
            __attribute__((used, section("sl_crashpoints"))) = &sl_cp_;                    \
        sl_crash_at(&sl_cp_);                                                              \
    } while (0)

/* Fault points are not crash points: not registered, not counted. */
#define SL_FAULT(nm)                                                                       \
    __extension__({                                                                        \
        static const sl_crashpoint_t sl_fp_ = {nm, __FILE__, __LINE__};                    \
        sl_crash_fault(&sl_fp_);                                                           \
    })

#define SL_CRASH_EXIT_CODE 86

typedef enum {
    SL_CRASH_EXIT = 1, /* _exit(SL_CRASH_EXIT_CODE): what a SIGKILL leaves */
    SL_CRASH_STOP = 2, /* raise(SIGSTOP): the parent interleaves, then SIGCONT */
    SL_CRASH_FAIL = 3, /* a fault point: SL_FAULT is true that time */
    SL_CRASH_STOPS = 4, /* raise(SIGSTOP) at the nth hit and at every later one */
} sl_crash_action_t;

/* Arm the point `name` (NULL: disarm): act the nth time it is reached. */
void sl_crash_arm(const char *name, unsigned nth, sl_crash_action_t act);
/* Instead, record every crash point reached, in order, into buf (at most
 * cap; *n counts them) - e.g. a buffer in shared memory the parent reads. */
void sl_crash_trace(const sl_crashpoint_t **buf, size_t cap, size_t *n);
/* Every crash point compiled into this program (duplicates removed). */
size_t sl_crash_points(const sl_crashpoint_t ***out);
/* Arm from the environment, for a server built with crash points (the
 * integration tests): SL_CRASH_ARM="<worker>:<name>:<nth>:<exit|stop|stops|fail>"
 * arms <name> in worker <worker> only. */
void sl_crash_arm_env(int worker);
#define SL_CRASH_BROKER 99 /* <worker> for the broker process */

#else
#include <urcu/compiler.h>
#define SL_CRASHPOINT(nm) cmm_barrier()
#define SL_FAULT(nm) 0
#endif

/* Mutants (tests/mutation-check.sh builds with -DSL_MUTANT=<n>; the design
 * note lists the test that kills each). */
enum {
    M_NONE = 0,
    M_ARENA_RECOVER = 1,     /* arena lock: no rebuild after a dead owner */
    M_LIMBO_RECOVER = 2,     /* limbo lock: no repair after a dead owner */
    M_STRIPE_RECOVER = 3,    /* table stripe lock: no completion of a dead writer's update */
    M_CHAN_RECOVER = 4,      /* channel lock: no completion of a dead owner's update */
    M_INBOX_RECOVER = 5,     /* inbox lock: no completion of a dead producer's push */
    M_GP_SNAPSHOT = 6,       /* reclaim: slots scanned before the counter is read */
    M_RETIRE_BEFORE_UNLINK = 7, /* unsubscribe: node retired while still on the list */
    M_PUBLISH_BEFORE_NEXT = 8,  /* table insert: node published before its next is set */
    M_ARENA_COMMIT_ORDER = 9,   /* arena: a page run's head committed before its length */
    M_INBOX_COMMIT_ORDER = 10,  /* inbox: tail published before the entry is written */
    M_HANDOFF_COMMIT = 11,      /* hand-off: pushed before the commit flag is set */
    M_READ_AFTER_HANDOFF = 12,  /* publish: reads m->refs after handing it away */
    M_ACCESS_RECOVER = 13,      /* access counts: no completion of a dead owner's update */
    M_DEAD_SLOT_EARLY = 14,     /* a dead process's slot released while a live process
                                   still holds (and may be repairing) one of its locks */
    M_MISSED_LAP = 15,          /* missed-note ring: a note being overwritten passes the lap check */
    M_RECOVERY_NOTE = 16,       /* hand-off recovery: full inboxes of a committed hand-off not noted */
    M_NO_MISSED_NOTE = 17,      /* hand-off: a full inbox skipped without a missed note */
    M_RPC_ORPHAN = 18,          /* RPC: an un-claim ignores that the requester gave up on it */
    M_WAITER_FORGIVEN = 19,     /* stall watch: a waiter is blocked by whoever holds the lock
                                   now, even after it was released since the wait began */
    M_KEPT_UNTIL_TAKEN = 20,    /* a dead process's kept lock is done only once the master
                                   wins a try, not once it has been released */
    M_LIST_PUBLISH_ORDER = 21,  /* subscribe: node on the channel's list before its next is set */
    M_JOIN_AFTER_LINK = 22,     /* subscribe: node on the list before its join hand-off commits */
    M_UNLINK_CLEARS_NEXT = 23,  /* unsubscribe: the unlinked node's next cleared (a reader on it stops) */
    M_DELIVER_RECOVER = 24,     /* --redis delivery / reset: no completion after a dead broker */
    M_RING_CLEAR_ORDER = 25,    /* --redis ring emptied: references dropped before the pops */
    M_PRESENCE_SLOT_ORDER = 26, /* presence set: a slot's hash (its validity) stored before its
                                   serial and horizon */
    M_PRESENCE_POS = 27,        /* presence set: a slot taken at the next pop, whatever its inbox
                                   position (the notice overtakes older join / leave entries) */
    M_TICKETS_PUBLISH_FIRST = 28, /* ticket keys: the slot published before it is written */
    M_PRESENCE_FIRST_FOLD = 29, /* presence set: a later loss moves the slot's (and the
                                   overflow's) untold position to itself (review ri15 R2) */
    M_DRAIN_UPTO = 30,          /* the empty-inbox look takes every note, not those up to the
                                   tail it saw (review ri15 R1) */
    M_ASIDE_UNLISTED = 31,      /* cleanup: a set-aside subscription is not listed, so each
                                   retry is a whole table pass (review rf15 F3 d) */
    M_DEAD_TARGETED = 32,       /* hand-offs still target a dead worker's inbox while its
                                   cleanup runs (review rf15 F3 a) */
    M__COUNT
};

#ifdef SL_MUTANT
#define SL_MUTATED(id) (SL_MUTANT == (id))
#else
#define SL_MUTATED(id) 0
#endif

#endif
