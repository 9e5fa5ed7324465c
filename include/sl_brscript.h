/*
 * sl_brscript.h - the broker's Lua scripts (--redis): what each one does
 * atomically in Redis, and the keys they share (see src/brscript.c).
 *
 * Keys (P = --redis-prefix, C = a channel id; {C} keeps a channel's keys
 * in one Redis Cluster slot):
 *   P:{C}:c  hash: epoch, seq, created, max, ret, rpc, tel, auto (1: made
 *            by a subscribe; expires once nobody subscribes, see SYNC)
 *   P:{C}:h  list: the retained messages (trimmed to ret, TTL)
 *   P:{C}:n  hash: node -> its subscriber count
 *   P:{C}:x  the channel was deleted (expires): a catch-up does not bring
 *            it back
 *   P:{C}:m  pub/sub: "M<epoch>\n<seq>\n<origin>\n<exclude>\n<json>",
 *            "R<origin>\n<exclude>\n<json>" (an rpc-request) and
 *            "J<origin>\n<exclude>\n<json>" (a join / leave: no seq)
 *   P:{C}:p:<node>  hash: conn-id -> {"conn-id","user","info"} of that
 *            node's subscribers (presence); read only while the node's
 *            heartbeat key lives; a survivor's HEARTBEAT removes a dead
 *            node's, publishing a leave for each
 *   P:nodepr:<node>  set: channels the node has presence entries in
 *   P:nodeinst:<node>  the master process (instance) whose entries and
 *            counts the node's keys hold (see PRES_PURGE)
 *   P:channels, P:nodes (sets), P:node:<node> (heartbeat, expires),
 *   P:nodech:<node> (set: channels the node has counts in), P:runid (the
 *   Redis process whose data this is, see EPOCHS), P:ctl (pub/sub: channel
 *   deleted, broadcast), P:to:<node> (pub/sub: RPC responses and admin
 *   calls for one node, their outcomes, and the link's echo).
 */
#ifndef SL_BRSCRIPT_H
#define SL_BRSCRIPT_H

enum {
    SL_BRS_PUBLISH,
    SL_BRS_JOIN,
    SL_BRS_SYNC,
    SL_BRS_RPC,
    SL_BRS_CATCHUP,
    SL_BRS_CREATE,
    SL_BRS_DELETE,
    SL_BRS_INFO,
    SL_BRS_SNAPSHOT,
    SL_BRS_HEARTBEAT,
    SL_BRS_EPOCHS,
    SL_BRS_PRES_SET,
    SL_BRS_PRES_DEL,
    SL_BRS_PRES_GET,
    SL_BRS_PRES_STATS,
    SL_BRS_PRES_PURGE,
    SL_BRS_PRES_SYNC,
    SL_BRS_HISTORY,
    SL_BRS__COUNT
};

/* The scripts' text, by SL_BRS_*. */
extern const char *const sl_brscript[SL_BRS__COUNT];

#endif
