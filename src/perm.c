/*
 * perm.c - the permission decision (see sl_perm.h for the rules).
 *
 * Pure: it reads the configuration and the identity it is given and
 * touches nothing else, so every caller gets the same answer and the unit
 * test can walk the whole matrix.  The cost on the publish path is a
 * memchr for ':' and a scan of the declared namespaces (at most 64).
 */
#include "sl_perm.h"

#include <string.h>

static const char *const action_names[SL_ACT__COUNT] = {
    [SL_ACT_SUBSCRIBE] = "subscribe", [SL_ACT_PUBLISH] = "publish",
    [SL_ACT_RPC] = "rpc",             [SL_ACT_PRESENCE] = "presence",
    [SL_ACT_HISTORY] = "history",     [SL_ACT_RPC_RESPONSE] = "rpc-response",
};

const char *sl_perm_action(sl_action_t act)
{
    return (unsigned)act < SL_ACT__COUNT ? action_names[act] : "unknown";
}

const char *sl_perm_reason(sl_perm_t p)
{
    switch (p) {
    case SL_PERM_OK: return "ok";
    case SL_PERM_UNAUTHENTICATED: return "unauthenticated";
    case SL_PERM_UNKNOWN_NAMESPACE: return "unknown-namespace";
    case SL_PERM_DISABLED: return "presence-disabled";
    case SL_PERM_DENIED: break;
    }
    return "permission-denied";
}

bool sl_perm_active(void)
{
    return sl_conf_auth_enabled(sl_conf) || sl_conf->nnamespaces > 0 || sl_conf->strict_namespaces;
}

/* "ID#u1,u2,...": is user one of them?  The list starts after the first '#'. */
static bool user_listed(const char *hash, const char *end, const char *user)
{
    size_t ulen = strlen(user);
    const char *p = hash + 1;
    while (p <= end) {
        const char *comma = memchr(p, ',', (size_t)(end - p));
        const char *stop = comma ? comma : end;
        if ((size_t)(stop - p) == ulen && memcmp(p, user, ulen) == 0)
            return true;
        p = stop + 1;
    }
    return false;
}

/* Refused: "unauthenticated" when a token could have helped. */
static sl_perm_t refuse(const sl_ident_t *who)
{
    return who ? SL_PERM_DENIED : SL_PERM_UNAUTHENTICATED;
}

sl_perm_t sl_perm_check(const sl_ident_t *who, sl_action_t act, const char *id, size_t len,
                        bool subscribed)
{
    const sl_conf_t *cf = sl_conf;
    bool keyed = sl_conf_auth_enabled(cf);
    bool reading = act == SL_ACT_SUBSCRIBE || act == SL_ACT_PRESENCE || act == SL_ACT_HISTORY;
    if (!keyed && cf->nnamespaces == 0 && !cf->strict_namespaces && act != SL_ACT_PRESENCE &&
        act != SL_ACT_HISTORY)
        return SL_PERM_OK; /* access control is off: as before it existed */
    bool declared;
    const sl_conf_namespace_t *ns = sl_conf_namespace(cf, id, len, &declared);
    if (act == SL_ACT_PRESENCE && ns->rules[act] == SL_RULE_NONE)
        return SL_PERM_DISABLED; /* switched off: for everyone, whoever asks */
    if (keyed && who == NULL && !cf->allow_anonymous)
        return SL_PERM_UNAUTHENTICATED;
    if (!declared && cf->strict_namespaces)
        return SL_PERM_UNKNOWN_NAMESPACE;
    /* Requests reach subscribers only: nobody else may answer one. */
    if (act == SL_ACT_RPC_RESPONSE && !subscribed)
        return SL_PERM_DENIED;
    const char *hash = keyed ? memchr(id, '#', len) : NULL;
    if (hash) {
        bool listed = who && user_listed(hash, id + len, who->user);
        /* Reading: the listed users, whatever the namespace's rule. */
        if (reading)
            return listed ? SL_PERM_OK : refuse(who);
        /* Writing (publish, rpc, rpc-response): a listed user, or a token
         * whose publish claim names the channel (a service writing to its
         * users) - and then the namespace's rule as well. */
        if (!listed && !(who && sl_ident_grants(who->publish, who->npublish, id, len)))
            return refuse(who);
    }
    switch ((sl_rule_t)ns->rules[act]) {
    case SL_RULE_ANYONE: return SL_PERM_OK;
    case SL_RULE_AUTHENTICATED: return who ? SL_PERM_OK : SL_PERM_UNAUTHENTICATED;
    case SL_RULE_TOKEN:
        if (who == NULL)
            return SL_PERM_UNAUTHENTICATED;
        return (reading ? sl_ident_grants(who->channels, who->nchannels, id, len)
                        : sl_ident_grants(who->publish, who->npublish, id, len))
                   ? SL_PERM_OK
                   : SL_PERM_DENIED;
    case SL_RULE_SUBSCRIBERS: return subscribed ? SL_PERM_OK : SL_PERM_DENIED;
    case SL_RULE_NONE: break;
    }
    return SL_PERM_DENIED;
}
