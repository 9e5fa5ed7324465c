/*
 * fuzz_conf.c - flags, environment variables and --channel specs
 * (sl_conf_parse).
 *
 * Input: NUL-separated tokens; a token starting with '$' is an environment
 * entry ("$PORT=80"), any other an argument.  Properties, whenever the
 * input parses:
 *  - round trip: the effective settings (sl_conf_to_json) written back as
 *    flags by this file's own formatter parse to the same settings;
 *  - every --channel value agrees with an independent parser of the
 *    documented grammar NAME[:key=N,...] (the part after the last ':' is
 *    settings when it is empty or has an '='), name and settings alike.
 */
#include "sl_chan.h"
#include "sl_conf.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t n);

#define MAXTOK 24

typedef struct {
    bool ok;
    char name[129];
    int64_t v[3]; /* -1: not given */
} ref_channel_t;

static const char *const keys[3] = {"max-subscribers", "message-retention", "rpc-timeout-ms"};
static const int64_t kmin[3] = {1, 0, 1}, kmax[3] = {10000000, 10000, 3600000};

/* The reference parser, written from the man page. */
static ref_channel_t ref_parse(const char *s)
{
    ref_channel_t r = {.ok = false, .v = {-1, -1, -1}};
    size_t len = strlen(s), nlen = len;
    const char *colon = NULL;
    for (size_t i = 0; i < len; i++)
        if (s[i] == ':')
            colon = s + i;
    if (colon && (colon[1] == '\0' || strchr(colon, '=') != NULL)) {
        nlen = (size_t)(colon - s);
        const char *p = colon + 1;
        while (*p) {
            const char *e = strchr(p, ',');
            size_t il = e ? (size_t)(e - p) : strlen(p);
            if (il > 0) {
                const char *eq = memchr(p, '=', il);
                if (eq == NULL)
                    return r;
                int k = -1;
                for (int j = 0; j < 3; j++)
                    if (strlen(keys[j]) == (size_t)(eq - p) && memcmp(p, keys[j], (size_t)(eq - p)) == 0)
                        k = j;
                size_t vl = il - (size_t)(eq - p) - 1;
                if (k < 0 || vl == 0 || vl >= 24)
                    return r;
                int64_t v = 0;
                for (size_t q = 0; q < vl; q++) {
                    char ch = eq[1 + q];
                    if (ch < '0' || ch > '9')
                        return r;
                    if (v < 100000000000LL)
                        v = v * 10 + (ch - '0');
                }
                if (v < kmin[k] || v > kmax[k])
                    return r;
                r.v[k] = v;
            }
            p += il + (e ? 1 : 0);
        }
    }
    if (!sl_chan_id_valid(s, nlen))
        return r;
    memcpy(r.name, s, nlen);
    r.name[nlen] = '\0';
    r.ok = true;
    return r;
}

/* The settings as flags again (the formatter under no test). */
static int to_argv(json_t *j, char **argv, int max)
{
    int n = 0;
    argv[n++] = strdup("sente-lite");
    const char *key;
    json_t *v;
    json_object_foreach(j, key, v)
    {
        /* Values are not bounded in length (an origin): the buffer is sized
         * to the longest possible line. */
        static char buf[8192];
        if (n + 2 >= max)
            break;
        if (strcmp(key, "admin-token") == 0 || json_is_null(v))
            continue; /* a secret is never shown; null: not set */
        if (json_is_boolean(v)) {
            snprintf(buf, sizeof(buf), "--%s%s", json_is_true(v) ? "" : "no-", key);
        } else if (json_is_integer(v)) {
            snprintf(buf, sizeof(buf), "--%s=%lld", key, (long long)json_integer_value(v));
        } else if (json_is_string(v)) {
            snprintf(buf, sizeof(buf), "--%s=%s", key, json_string_value(v));
        } else if (json_is_array(v)) {
            size_t i;
            json_t *e;
            json_array_foreach(v, i, e)
            {
                if (n + 2 >= max)
                    break;
                if (json_is_string(e))
                    snprintf(buf, sizeof(buf), "--%s=%s", key, json_string_value(e));
                else
                    snprintf(buf, sizeof(buf),
                             "--%s=%s:max-subscribers=%lld,message-retention=%lld,"
                             "rpc-timeout-ms=%lld",
                             key, json_string_value(json_object_get(e, "name")),
                             (long long)json_integer_value(json_object_get(e, "max-subscribers")),
                             (long long)json_integer_value(json_object_get(e, "message-retention")),
                             (long long)json_integer_value(json_object_get(e, "rpc-timeout-ms")));
                argv[n++] = strdup(buf);
            }
            continue;
        } else {
            continue;
        }
        argv[n++] = strdup(buf);
    }
    return n;
}

/* Does "--X" (no '=') take the next token as its value?  Asked of the
 * parser itself, so this file needs no list of flags. */
static bool takes_value(const char *flag)
{
    static sl_conf_t c;
    char *argv[] = {"sente-lite", (char *)flag, NULL};
    char *noenv[] = {NULL};
    sl_conf_action_t act;
    char err[512] = "";
    int rc = sl_conf_parse(&c, 2, argv, noenv, &act, err, sizeof(err));
    sl_conf_free(&c);
    return rc != SL_OK && strstr(err, "needs a value") != NULL;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t n)
{
    if (n > 4096)
        return 0;
    char *copy = malloc(n + 1);
    memcpy(copy, data, n);
    copy[n] = '\0';
    char *argv[MAXTOK + 2], *env[MAXTOK + 1];
    int argc = 0, nenv = 0;
    argv[argc++] = "sente-lite";
    for (size_t i = 0; i <= n && argc < MAXTOK && nenv < MAXTOK;) {
        char *t = copy + i;
        size_t l = strlen(t);
        if (t[0] == '$')
            env[nenv++] = t + 1;
        else
            argv[argc++] = t;
        i += l + 1;
    }
    argv[argc] = NULL;
    env[nenv] = NULL;

    static sl_conf_t c1, c2;
    sl_conf_action_t act;
    char err[512];
    if (sl_conf_parse(&c1, argc, argv, env, &act, err, sizeof(err)) == SL_OK &&
        act == SL_CONF_RUN) {
        /* Every --channel as the reference reads it. */
        int k = 0;
        for (int i = 1; i < argc; i++) {
            const char *v = NULL;
            if (strncmp(argv[i], "--channel=", 10) == 0)
                v = argv[i] + 10;
            else if (strcmp(argv[i], "--channel") == 0 && i + 1 < argc)
                v = argv[++i];
            else if (strncmp(argv[i], "--", 2) == 0 && strchr(argv[i], '=') == NULL &&
                     i + 1 < argc && takes_value(argv[i]))
                i++; /* another flag's separate value */
            if (v == NULL)
                continue;
            ref_channel_t r = ref_parse(v);
            if (!r.ok || k >= c1.nchannels || strcmp(r.name, c1.channels[k].name) != 0)
                abort();
            int64_t got[3] = {c1.channels[k].max_subscribers, c1.channels[k].message_retention,
                              c1.channels[k].rpc_timeout_ms};
            int64_t def[3] = {c1.max_subscribers, c1.message_retention, c1.rpc_timeout_ms};
            for (int q = 0; q < 3; q++)
                if (got[q] != (r.v[q] >= 0 ? r.v[q] : def[q]))
                    abort();
            k++;
        }
        if (k != c1.nchannels)
            abort();

        json_t *j1 = sl_conf_to_json(&c1);
        char *argv2[600];
        int argc2 = to_argv(j1, argv2, 598);
        argv2[argc2] = NULL;
        char *noenv[] = {NULL};
        int rc2;
        /* A bare flag (--echo) has no --no- form: false is its default. */
        while ((rc2 = sl_conf_parse(&c2, argc2, argv2, noenv, &act, err, sizeof(err))) != SL_OK &&
               strncmp(err, "unknown option '--no-", 21) == 0) {
            sl_conf_free(&c2);
            int i = 1;
            while (i < argc2 && strncmp(argv2[i], err + 16, strlen(argv2[i])) != 0)
                i++;
            if (i == argc2)
                break;
            free(argv2[i]);
            memmove(argv2 + i, argv2 + i + 1, sizeof(char *) * (size_t)(argc2 - i));
            argc2--;
        }
        if (rc2 != SL_OK) {
            fprintf(stderr, "round trip refused: %s\n", err);
            abort();
        }
        json_t *j2 = sl_conf_to_json(&c2);
        /* A secret is shown only as whether it is set: not round-tripped. */
        json_object_del(j1, "admin-token");
        json_object_del(j2, "admin-token");
        if (!json_equal(j1, j2)) {
            char *a = json_dumps(j1, JSON_SORT_KEYS), *b = json_dumps(j2, JSON_SORT_KEYS);
            fprintf(stderr, "round trip differs:\n%s\n%s\n", a, b);
            abort();
        }
        json_decref(j1);
        json_decref(j2);
        for (int i = 0; i < argc2; i++)
            free(argv2[i]);
        sl_conf_free(&c2);
    }
    sl_conf_free(&c1);
    free(copy);
    return 0;
}
