/*
 * main.c - the sente-lite command: parse the configuration, then become the
 * master.  Exit status: 0 after a clean stop (and after --help, --version and
 * a successful --check-config), 1 when the server cannot run (port in use, no
 * memory), 2 for a bad command line, environment or config file.
 */
#include "sl_auth.h"
#include "sl_conf.h"
#include "sl_master.h"
#include "sl_proc.h"
#include "sl_tls.h"

#include <stdio.h>

extern char **environ;

int main(int argc, char **argv)
{
    static sl_conf_t conf;
    sl_conf_action_t action;
    char err[512];

    if (sl_tls_count_heap() != SL_OK)
        sl_stderr(SL_LOG_WARNING, "OpenSSL's heap is not counted (tls-heap-bytes stays 0)");
    if (sl_conf_parse(&conf, argc, argv, environ, &action, err, sizeof(err)) != SL_OK) {
        sl_stderr(SL_LOG_ERR, "%s", err);
        return 2;
    }
    if (action == SL_CONF_HELP) {
        sl_conf_usage(stdout);
        return 0;
    }
    if (action == SL_CONF_VERSION) {
        printf("sente-lite %s\n", SL_VERSION);
        return 0;
    }
    /* The token keys: read now, so that a bad file stops the server before
     * it listens (every process inherits them; SIGHUP rereads them). */
    if (sl_auth_load(conf.jwt_secret_file, conf.jwt_public_key_file, err, sizeof(err)) != SL_OK) {
        sl_stderr(SL_LOG_ERR, "%s", err);
        return 2;
    }
    /* The TLS certificates, likewise: a missing file, a key that does not
     * match its certificate, an expired certificate exit 2 naming it. */
    sl_conf = &conf;
    if (conf.tls_cert.n > 0 && sl_tls_load(err, sizeof(err)) != SL_OK) {
        sl_stderr(SL_LOG_ERR, "%s", err);
        return 2;
    }
    sl_auth_set_policy(&(sl_auth_policy_t){.audience = conf.jwt_audience,
                                           .issuer = conf.jwt_issuer,
                                           .leeway_ms = conf.jwt_leeway_ms});
    if (action == SL_CONF_CHECK) {
        sl_conf_print(&conf, stdout);
        sl_conf_free(&conf);
        return 0;
    }
    sl_conf = &conf;
    sl_master_set_exec(argc, argv);
    sl_proc_title_init(argc, argv);
    int rc = sl_master_run();
    sl_conf_free(&conf);
    return rc;
}
