/*
 * sl_perm.h - who may do what with a channel: the one decision asked by
 * subscribe, publish, rpc-request, rpc-response and list-channels (and, for
 * presence, presence-stats and history).
 *
 * The rules, in the order they are applied (README "Access control"):
 *   0. presence and history are decided even without access control (their
 *      rule defaults to subscribers); a namespace with presence=none has
 *      presence switched off: presence-disabled;
 *   1. with a token key and without --allow-anonymous, a connection that
 *      has not authenticated may do nothing: unauthenticated;
 *   2. with --strict-namespaces, a channel "NAME:..." whose NAME was not
 *      declared: unknown-namespace;
 *   3. rpc-response: only a subscriber of the request's channel;
 *   4. a user-limited channel ("ID#u1,u2", with a token key configured;
 *      without one '#' means nothing):
 *      - subscribe (and presence, history): only those users, and for them
 *        whatever the namespace's rule says (it decides alone);
 *      - publish, rpc, rpc-response: only those users or a token whose
 *        publish claim names the channel, and then rule 5 as well;
 *   5. the namespace's rule for the action: anyone, authenticated, token
 *      (the token's channels claim, or publish claim for publish, rpc and
 *      rpc-response, names the channel), subscribers, none.  The key of
 *      rpc-response is "rpc-respond" (default subscribers, which rule 3
 *      already demands).
 * An anonymous connection refused by a rule it could pass with a token
 * (authenticated, token, a user-limited channel) is told unauthenticated;
 * every other refusal is permission-denied.
 *
 * What '#' does not override: rules 1-3, the namespace's auto-create and
 * every bound on channels (--max-channels, --channel-creations-per-minute,
 * the linger after which an empty channel is removed) - a user-limited
 * channel is created, bounded and removed like any other.
 */
#ifndef SL_PERM_H
#define SL_PERM_H

#include "sl_auth.h"
#include "sl_conf.h"

typedef enum {
    SL_ACT_SUBSCRIBE = SL_NS_SUBSCRIBE,
    SL_ACT_PUBLISH = SL_NS_PUBLISH,
    SL_ACT_RPC = SL_NS_RPC,
    SL_ACT_PRESENCE = SL_NS_PRESENCE,
    SL_ACT_HISTORY = SL_NS_HISTORY,
    SL_ACT_RPC_RESPONSE = SL_NS_RPC_RESPOND, /* answering a request made on the channel */
    SL_ACT__COUNT
} sl_action_t;

typedef enum {
    SL_PERM_OK = 0,
    SL_PERM_UNAUTHENTICATED,
    SL_PERM_DENIED,
    SL_PERM_UNKNOWN_NAMESPACE,
    SL_PERM_DISABLED, /* presence switched off in the namespace (presence=none) */
} sl_perm_t;

/* May `who` (NULL: not authenticated) do `act` on channel id[0..len)?
 * `subscribed`: the connection is subscribed to that channel. */
sl_perm_t sl_perm_check(const sl_ident_t *who, sl_action_t act, const char *id, size_t len,
                        bool subscribed);

/* "unauthenticated", "permission-denied", "unknown-namespace",
 * "presence-disabled". */
const char *sl_perm_reason(sl_perm_t p);

/* "subscribe", "publish", "rpc", "presence", "history", "rpc-response". */
const char *sl_perm_action(sl_action_t act);

/* Is there anything to check at all?  (No token key, no namespace, no
 * --strict-namespaces: everything is allowed, as before access control -
 * except presence and history, which only subscribers may ask.) */
bool sl_perm_active(void);

#endif
