/*
 * test_perm.c - the permission decision (sl_perm_check) over its whole
 * matrix: each namespace key x each value x anonymous / authenticated /
 * token-granted / subscribed, user-limited channels, strict namespaces,
 * rpc-response; and the --namespace syntax with its refusals.  The expected
 * answers are written out as tables, from the rules in the README.
 */
#include "sl_perm.h"
#include "sl_test.h"

#include <stdlib.h>
#include <unistd.h>

static sl_conf_t conf;
static char err[512];

static int parse(int argc, char **argv, char **env)
{
    sl_conf_free(&conf);
    err[0] = '\0';
    sl_conf_action_t action;
    int rc = sl_conf_parse(&conf, argc, argv, env, &action, err, sizeof(err));
    sl_conf = &conf;
    return rc;
}

#define CONF(...)                                                                          \
    parse((int)(sizeof((char *[]){"sente-lite", __VA_ARGS__}) / sizeof(char *)),           \
          (char *[]){"sente-lite", __VA_ARGS__, NULL}, NULL)

static char *granted_ch[] = {"ns:*", "dm#*"};
static char *granted_pub[] = {"ns:room"};
static sl_ident_t alice = {.user = "alice"};                     /* no claims */
static sl_ident_t bob = {.user = "bob", .channels = granted_ch, .nchannels = 2,
                         .publish = granted_pub, .npublish = 1}; /* token-granted */

enum { OK = SL_PERM_OK, UN = SL_PERM_UNAUTHENTICATED, NO = SL_PERM_DENIED,
       NS = SL_PERM_UNKNOWN_NAMESPACE, OFF = SL_PERM_DISABLED };

static void test_matrix(void)
{
    static const char *const values[] = {"anyone", "authenticated", "token", "subscribers",
                                         "none"};
    static const char *const keys[] = {"subscribe", "publish", "rpc"};
    static const sl_action_t acts[] = {SL_ACT_SUBSCRIBE, SL_ACT_PUBLISH, SL_ACT_RPC};
    /* Columns: anonymous, alice (authenticated), bob (token lists ns:room),
     * then the same three subscribed to the channel. */
    static const int expect[5][6] = {
        /* anyone        */ {OK, OK, OK, OK, OK, OK},
        /* authenticated */ {UN, OK, OK, UN, OK, OK},
        /* token         */ {UN, NO, OK, UN, NO, OK},
        /* subscribers   */ {NO, NO, NO, OK, OK, OK},
        /* none          */ {NO, NO, NO, NO, NO, NO},
    };
    const sl_ident_t *who[3] = {NULL, &alice, &bob};
    for (int k = 0; k < 3; k++) {
        for (int v = 0; v < 5; v++) {
            char ns[96];
            snprintf(ns, sizeof(ns), "ns:%s=%s", keys[k], values[v]);
            int rc = CONF("--jwt-secret-file", "/unused", "--allow-anonymous", "--namespace", ns);
            if (k == 0 && v == 3) { /* subscribe=subscribers means nothing: refused */
                SL_CHECK_INT(rc, SL_ERROR);
                SL_CHECK(strstr(err, "subscribe=subscribers") != NULL);
                continue;
            }
            SL_CHECK_INT(rc, SL_OK);
            for (int col = 0; col < 6; col++) {
                int got = sl_perm_check(who[col % 3], acts[k], "ns:room", 7, col >= 3);
                if (got != expect[v][col])
                    fprintf(stderr, "  %s, column %d: got %d, want %d\n", ns, col, got,
                            expect[v][col]);
                SL_CHECK_INT(got, expect[v][col]);
            }
            /* Other namespaces and the default one keep "anyone". */
            SL_CHECK_INT(sl_perm_check(NULL, acts[k], "other:x", 7, false), OK);
            SL_CHECK_INT(sl_perm_check(NULL, acts[k], "plain", 5, false), OK);
        }
    }
    /* token: the channels claim is for reading, publish for writing. */
    CONF("--jwt-secret-file", "/unused", "--namespace", "ns:subscribe=token,publish=token");
    SL_CHECK_INT(sl_perm_check(&bob, SL_ACT_SUBSCRIBE, "ns:other", 8, false), OK);
    SL_CHECK_INT(sl_perm_check(&bob, SL_ACT_PUBLISH, "ns:other", 8, false), NO);
    SL_CHECK_INT(sl_perm_check(&bob, SL_ACT_PUBLISH, "ns:room", 7, false), OK);
    /* Presence and history follow their own keys, reading claims like
     * subscribe; presence=none switches presence off (for everyone). */
    CONF("--jwt-secret-file", "/unused", "--namespace", "ns:presence=token,history=none");
    SL_CHECK_INT(sl_perm_check(&bob, SL_ACT_PRESENCE, "ns:x", 4, false), OK);
    SL_CHECK_INT(sl_perm_check(&alice, SL_ACT_PRESENCE, "ns:x", 4, false), NO);
    SL_CHECK_INT(sl_perm_check(&bob, SL_ACT_HISTORY, "ns:x", 4, true), NO);
    CONF("--jwt-secret-file", "/unused", "--allow-anonymous", "--namespace", "ns:presence=none");
    SL_CHECK_INT(sl_perm_check(&bob, SL_ACT_PRESENCE, "ns:x", 4, true), OFF);
    SL_CHECK_INT(sl_perm_check(NULL, SL_ACT_PRESENCE, "ns:x#bob", 8, true), OFF);
    SL_CHECK_STR(sl_perm_reason(SL_PERM_DISABLED), "presence-disabled");
    /* By default only subscribers may ask presence and history. */
    SL_CHECK_INT(sl_perm_check(&bob, SL_ACT_HISTORY, "ns:x", 4, false), NO);
    SL_CHECK_INT(sl_perm_check(&bob, SL_ACT_HISTORY, "ns:x", 4, true), OK);
    SL_CHECK_INT(sl_perm_check(NULL, SL_ACT_PRESENCE, "plain", 5, false), NO);
    SL_CHECK_INT(sl_perm_check(NULL, SL_ACT_PRESENCE, "plain", 5, true), OK);
}

static void test_anonymous_refused_without_allow(void)
{
    CONF("--jwt-secret-file", "/unused");
    for (int a = 0; a < SL_ACT__COUNT; a++)
        SL_CHECK_INT(sl_perm_check(NULL, (sl_action_t)a, "x", 1, true), UN);
    SL_CHECK_INT(sl_perm_check(&alice, SL_ACT_PUBLISH, "x", 1, false), OK);
    /* No key, no namespace: everything allowed, as before - but presence
     * and history (which came later) only to subscribers. */
    CONF("--port", "3000");
    SL_CHECK(!sl_perm_active());
    for (int a = 0; a < SL_ACT__COUNT; a++) {
        bool reads = a == SL_ACT_PRESENCE || a == SL_ACT_HISTORY;
        SL_CHECK_INT(sl_perm_check(NULL, (sl_action_t)a, "dm#alice", 8, false), reads ? NO : OK);
        SL_CHECK_INT(sl_perm_check(NULL, (sl_action_t)a, "dm#alice", 8, true), OK);
    }
}

static void test_user_limited(void)
{
    /* The user list decides subscribing, whatever the namespace says. */
    char *nss[] = {"dm:subscribe=anyone", "dm:subscribe=none", "dm:subscribe=token"};
    for (int i = 0; i < 3; i++) {
        CONF("--jwt-secret-file", "/unused", "--allow-anonymous", "--namespace", nss[i]);
        SL_CHECK_INT(sl_perm_check(&alice, SL_ACT_SUBSCRIBE, "dm:x#alice,bob", 14, false), OK);
        SL_CHECK_INT(sl_perm_check(&bob, SL_ACT_SUBSCRIBE, "dm:x#alice,bob", 14, false), OK);
        SL_CHECK_INT(sl_perm_check(&(sl_ident_t){.user = "carol"}, SL_ACT_SUBSCRIBE,
                                   "dm:x#alice,bob", 14, false), NO);
        SL_CHECK_INT(sl_perm_check(&(sl_ident_t){.user = "ali"}, SL_ACT_SUBSCRIBE,
                                   "dm:x#alice,bob", 14, false), NO);
        SL_CHECK_INT(sl_perm_check(NULL, SL_ACT_SUBSCRIBE, "dm:x#alice,bob", 14, false), UN);
        SL_CHECK_INT(sl_perm_check(&bob, SL_ACT_HISTORY, "dm:x#alice", 10, false), NO);
    }
    /* One user, in the default namespace. */
    CONF("--jwt-secret-file", "/unused");
    SL_CHECK_INT(sl_perm_check(&alice, SL_ACT_SUBSCRIBE, "notifications#alice", 19, false), OK);
    SL_CHECK_INT(sl_perm_check(&bob, SL_ACT_SUBSCRIBE, "notifications#alice", 19, false), NO);
    /* Writing to it (publish, rpc, rpc-response): the listed users, or a
     * token whose publish claim names it (a service), and then the
     * namespace's rule too (review r14 finding 6). */
    sl_ident_t svc = {.user = "svc", .publish = (char *[]){"notifications#*"}, .npublish = 1};
    sl_ident_t near = {.user = "near", .publish = (char *[]){"notif*"}, .npublish = 1};
    for (int a = SL_ACT_PUBLISH; a <= SL_ACT_RPC; a++) {
        SL_CHECK_INT(sl_perm_check(&alice, (sl_action_t)a, "notifications#alice", 19, false), OK);
        SL_CHECK_INT(sl_perm_check(&bob, (sl_action_t)a, "notifications#alice", 19, false), NO);
        SL_CHECK_INT(sl_perm_check(&svc, (sl_action_t)a, "notifications#alice", 19, false), OK);
        SL_CHECK_INT(sl_perm_check(&near, (sl_action_t)a, "notifications#alice", 19, false), NO);
    }
    SL_CHECK_INT(sl_perm_check(&alice, SL_ACT_RPC_RESPONSE, "notifications#alice", 19, true), OK);
    SL_CHECK_INT(sl_perm_check(&bob, SL_ACT_RPC_RESPONSE, "notifications#alice", 19, true), NO);
    CONF("--jwt-secret-file", "/unused", "--allow-anonymous", "--namespace",
         "dm:publish=none,rpc=subscribers");
    SL_CHECK_INT(sl_perm_check(NULL, SL_ACT_PUBLISH, "x#alice", 7, false), UN);
    SL_CHECK_INT(sl_perm_check(&alice, SL_ACT_PUBLISH, "dm:x#alice", 10, false), NO);
    SL_CHECK_INT(sl_perm_check(&alice, SL_ACT_RPC, "dm:x#alice", 10, false), NO);
    SL_CHECK_INT(sl_perm_check(&alice, SL_ACT_RPC, "dm:x#alice", 10, true), OK);
    /* ... while reading is the list's alone, whatever the namespace. */
    SL_CHECK_INT(sl_perm_check(&alice, SL_ACT_SUBSCRIBE, "dm:x#alice", 10, false), OK);
    /* An empty list admits nobody. */
    SL_CHECK_INT(sl_perm_check(&alice, SL_ACT_SUBSCRIBE, "x#", 2, false), NO);
    SL_CHECK_INT(sl_perm_check(&alice, SL_ACT_PUBLISH, "x#", 2, false), NO);
}

static void test_strict_and_default_namespace(void)
{
    CONF("--jwt-secret-file", "/unused", "--allow-anonymous", "--strict-namespaces", "--namespace",
         "chat:publish=authenticated", "--namespace", ":publish=none");
    SL_CHECK_INT(sl_perm_check(&alice, SL_ACT_PUBLISH, "zzz:x", 5, false), NS);
    SL_CHECK_INT(sl_perm_check(&alice, SL_ACT_SUBSCRIBE, "zzz:x", 5, false), NS);
    SL_CHECK_INT(sl_perm_check(&alice, SL_ACT_PUBLISH, "chat:x", 6, false), OK);
    SL_CHECK_INT(sl_perm_check(&alice, SL_ACT_PUBLISH, "plain", 5, false), NO); /* default ns */
    /* Without --strict-namespaces an undeclared one takes the default's rules. */
    CONF("--jwt-secret-file", "/unused", "--allow-anonymous", "--namespace", ":publish=none");
    SL_CHECK_INT(sl_perm_check(&alice, SL_ACT_PUBLISH, "zzz:x", 5, false), NO);
    SL_CHECK_INT(sl_perm_check(&alice, SL_ACT_SUBSCRIBE, "zzz:x", 5, false), OK);
    /* --strict-namespaces alone, no key: ids without ':' only. */
    CONF("--strict-namespaces");
    SL_CHECK(sl_perm_active());
    SL_CHECK_INT(sl_perm_check(NULL, SL_ACT_SUBSCRIBE, "a:b", 3, false), NS);
    SL_CHECK_INT(sl_perm_check(NULL, SL_ACT_SUBSCRIBE, "ab", 2, false), OK);
}

static void test_rpc_response(void)
{
    CONF("--jwt-secret-file", "/unused", "--allow-anonymous", "--namespace", "svc:rpc=anyone");
    SL_CHECK_INT(sl_perm_check(&alice, SL_ACT_RPC_RESPONSE, "svc:x", 5, true), OK);
    SL_CHECK_INT(sl_perm_check(&alice, SL_ACT_RPC_RESPONSE, "svc:x", 5, false), NO);
    SL_CHECK_INT(sl_perm_check(NULL, SL_ACT_RPC_RESPONSE, "svc:x", 5, false), NO);
    /* rpc-respond narrows who of the subscribers may answer (review r14
     * finding 5); a subscription is needed whatever it says. */
    static const struct {
        const char *rule;
        int anon, alice, bob; /* subscribed; bob's publish claim names ns:room */
    } respond[] = {
        {"anyone", OK, OK, OK},        {"subscribers", OK, OK, OK},
        {"authenticated", UN, OK, OK}, {"token", UN, NO, OK},
        {"none", NO, NO, NO},
    };
    for (size_t i = 0; i < SL_ARRAY_LEN(respond); i++) {
        char ns[64];
        snprintf(ns, sizeof(ns), "ns:rpc-respond=%s", respond[i].rule);
        SL_CHECK_INT(CONF("--jwt-secret-file", "/unused", "--allow-anonymous", "--namespace", ns),
                     SL_OK);
        SL_CHECK_INT(sl_perm_check(NULL, SL_ACT_RPC_RESPONSE, "ns:room", 7, true), respond[i].anon);
        SL_CHECK_INT(sl_perm_check(&alice, SL_ACT_RPC_RESPONSE, "ns:room", 7, true),
                     respond[i].alice);
        SL_CHECK_INT(sl_perm_check(&bob, SL_ACT_RPC_RESPONSE, "ns:room", 7, true), respond[i].bob);
        SL_CHECK_INT(sl_perm_check(&bob, SL_ACT_RPC_RESPONSE, "ns:room", 7, false), NO);
        /* Only answering: the other keys keep their default. */
        SL_CHECK_INT(sl_perm_check(NULL, SL_ACT_PUBLISH, "ns:room", 7, false), OK);
    }
    /* The default (no rpc-respond given) is subscribers. */
    CONF("--jwt-secret-file", "/unused", "--namespace", "ns:publish=none");
    SL_CHECK_INT(conf.namespaces[0].rules[SL_NS_RPC_RESPOND], SL_RULE_SUBSCRIBERS);
    SL_CHECK_INT(conf.default_namespace.rules[SL_NS_RPC_RESPOND], SL_RULE_SUBSCRIBERS);
    SL_CHECK_STR(sl_perm_reason(SL_PERM_UNAUTHENTICATED), "unauthenticated");
    SL_CHECK_STR(sl_perm_reason(SL_PERM_DENIED), "permission-denied");
    SL_CHECK_STR(sl_perm_reason(SL_PERM_UNKNOWN_NAMESPACE), "unknown-namespace");
    SL_CHECK_STR(sl_perm_action(SL_ACT_RPC_RESPONSE), "rpc-response");
}

static void test_namespace_syntax(void)
{
    SL_CHECK_INT(CONF("--namespace", "chat:max-subscribers=5,auto-create=false,message-retention=3",
                      "--max-subscribers", "7", "--rpc-timeout-ms", "900", "--channel", "chat:a",
                      "--channel", "b"),
                 SL_OK);
    bool declared;
    const sl_conf_namespace_t *ns = sl_conf_namespace(&conf, "chat:room", 9, &declared);
    SL_CHECK(declared && strcmp(ns->name, "chat") == 0);
    SL_CHECK_INT(ns->max_subscribers, 5);
    SL_CHECK_INT(ns->message_retention, 3);
    SL_CHECK_INT(ns->rpc_timeout_ms, 900); /* the server's, given after */
    SL_CHECK_INT(ns->auto_create, 0);
    ns = sl_conf_namespace(&conf, "other:x", 7, &declared);
    SL_CHECK(!declared && ns->max_subscribers == 7 && ns->auto_create == 1);
    /* Predefined channels take their namespace's defaults. */
    SL_CHECK_INT(conf.channels[0].max_subscribers, 5);
    SL_CHECK_INT(conf.channels[1].max_subscribers, 7);

    static char *bad[] = {
        "chat",                      /* no ':' */
        "ch at:publish=anyone",      /* bad name */
        "chat:publish=everyone",     /* bad value */
        "chat:subscribe=subscribers",
        "chat:colour=red",           /* unknown key */
        "chat:publish",              /* no '=' */
        "chat:max-subscribers=0",
        "chat:auto-create=maybe",
        "chat:publish=token",        /* needs a key: there is none here */
        "chat:rpc-respond=token",
        "chat:rpc-respond=everyone",
    };
    for (size_t i = 0; i < SL_ARRAY_LEN(bad); i++) {
        SL_CHECK_INT(CONF("--namespace", bad[i]), SL_ERROR);
        SL_CHECK(strstr(err, "--namespace") != NULL);
    }
    SL_CHECK_INT(CONF("--namespace", "a:publish=none", "--namespace", "a:rpc=none"), SL_ERROR);
    SL_CHECK(strstr(err, "declared twice") != NULL);
    /* From the environment: several, separated by spaces. */
    char *env[] = {"SENTE_NAMESPACES=chat:publish=authenticated  dm:rpc=none",
                   "SENTE_JWT_SECRET_FILE=/unused", NULL};
    SL_CHECK_INT(parse(1, (char *[]){"sente-lite", NULL}, env), SL_OK);
    SL_CHECK_INT(conf.nnamespaces, 2);
    SL_CHECK_INT(sl_perm_check(NULL, SL_ACT_PUBLISH, "chat:x", 6, false), UN);
    /* --ops-listen and --admin-token-file. */
    SL_CHECK_INT(CONF("--ops-listen", "127.0.0.1:9100"), SL_OK);
    SL_CHECK_STR(conf.ops_host, "127.0.0.1");
    SL_CHECK_INT(conf.ops_port, 9100);
    SL_CHECK_INT(CONF("--ops-listen", "[::1]:9101"), SL_OK);
    SL_CHECK_STR(conf.ops_host, "::1");
    SL_CHECK_INT(CONF("--ops-listen", "9100"), SL_ERROR);
    SL_CHECK_INT(CONF("--ops-listen", "h:0"), SL_ERROR);
    char path[] = "/tmp/sl-admin-token-XXXXXX";
    int fd = mkstemp(path);
    SL_CHECK(write(fd, "s3cret-token\n", 13) == 13);
    close(fd);
    SL_CHECK_INT(CONF("--admin-token-file", path), SL_OK);
    SL_CHECK_STR(conf.admin_token, "s3cret-token");
    SL_CHECK_INT(CONF("--admin-token-file", path, "--admin-token", "x"), SL_ERROR);
    SL_CHECK_INT(CONF("--admin-token-file", "/nonexistent"), SL_ERROR);
    unlink(path);
}

int main(void)
{
    SL_TEST_RUN(test_matrix);
    SL_TEST_RUN(test_anonymous_refused_without_allow);
    SL_TEST_RUN(test_user_limited);
    SL_TEST_RUN(test_strict_and_default_namespace);
    SL_TEST_RUN(test_rpc_response);
    SL_TEST_RUN(test_namespace_syntax);
    sl_conf_free(&conf);
    return sl_test_summary();
}
