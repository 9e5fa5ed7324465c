/*
 * sl_cidx.h - a worker's own index: channel id -> its local subscribers.
 *
 * Process-local (malloc), touched only by the worker's thread.  Fan-out of
 * a message from the inbox walks one entry's array; subscribe/unsubscribe
 * of a local connection add/remove it.  The shared registry remains the
 * truth for counts and limits; this index only says who, here, gets what.
 */
#ifndef SL_CIDX_H
#define SL_CIDX_H

#include "sl_conn.h"

/* Which incarnation of the channel a local subscriber subscribed to
 * (sl_chan_t.serial) and the channel's last seq then: a missed message of
 * that incarnation with a higher seq was meant for it; and how many missed
 * notes our inbox had counted just before: lost notes numbered below that
 * cannot concern it (sl_inbox.h).  serial 0: unknown - every missed
 * message of the channel concerns it.  sub_no: its subscription's number
 * (sl_sub_t): a join or leave reaches it only when numbered up to the
 * message's horizon (sl_chan_msg_t; 0: unknown - it gets them all).
 * no_presence: the namespace's presence rule refuses this connection
 * (decided when it subscribed, again on a token refresh): it gets no join or leave either, as they
 * show what presence would (review r15 M2).  join_leave: the channel had
 * join-leave when it subscribed - an overflow of the presence set tells
 * only those (review rh15 M1). */
typedef struct {
    uint64_t serial, seq, notes, sub_no;
    bool no_presence;
    bool join_leave;
} sl_cidx_mark_t;

typedef struct sl_cidx_entry {
    struct sl_cidx_entry *next;
    uint64_t hash;
    uint32_t idlen;
    uint32_t n, cap;
    sl_conn_t **conns;
    sl_cidx_mark_t *marks; /* one per conns[i] */
    uint64_t *last; /* --redis: per subscriber, the last seq it was sent (0: none) */
    char id[]; /* idlen bytes + NUL */
} sl_cidx_entry_t;

/* The entry for a channel, or NULL. */
sl_cidx_entry_t *sl_cidx_find(uint64_t hash, const char *id, size_t len);
/* Call fn for every entry whose channel hashes to `hash`. */
void sl_cidx_foreach_hash(uint64_t hash, void (*fn)(sl_cidx_entry_t *e, void *arg), void *arg);
/* Call fn for every entry. */
void sl_cidx_foreach(void (*fn)(sl_cidx_entry_t *e, void *arg), void *arg);
/* Add a local subscriber (mark: NULL for unknown; --redis: its last seq
 * sent starts at 0): the channel's entry (whose id the connection's list
 * of subscriptions points to - it lives while the connection is among its
 * subscribers), or NULL when out of memory.  Remove it again. */
sl_cidx_entry_t *sl_cidx_add(uint64_t hash, const char *id, size_t len, sl_conn_t *c,
                             const sl_cidx_mark_t *mark);
void sl_cidx_remove(uint64_t hash, const char *id, size_t len, sl_conn_t *c);
/* --redis: the last seq subscriber c of the channel was sent; raise it to
 * at least `seq` (a subscription's result carried up to it). */
void sl_cidx_seen(uint64_t hash, const char *id, size_t len, sl_conn_t *c, uint64_t seq);

#endif
