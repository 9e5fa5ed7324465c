/*
 * worker.c - a worker process: takes accepted sockets from the master and
 * runs their connections on one libevent loop.
 *
 * The loop runs one turn at a time (EVLOOP_ONCE) so that work which must
 * happen between turns has one place: sl_worker_turn_end writes every
 * connection's queued output in one writev each, flushes telemetry, and frees
 * connections that died during the turn.
 *
 * Stopping (SIGTERM/SIGINT from the master or the terminal): send close 1001
 * to every WebSocket peer, drop idle HTTP connections, finish requests under
 * way (answered with Connection: close; an upgrade completed now is closed
 * 1001 at once), and keep running until every connection is gone or the
 * drain deadline passes.  Sockets the master had already handed over are
 * still taken and served that way: closing them unread would reset clients
 * (the master stops handing out new ones before it stops us).
 */
#include "sl_worker.h"
#include "sl_accesslog.h"
#include "sl_admin.h"
#include "sl_arena.h"
#include "sl_call.h"
#include "sl_cluster.h"
#include "sl_conf.h"
#include "sl_crash.h"
#include "sl_httpd.h"
#include "sl_proc.h"
#include "sl_router.h"
#include "sl_pubsub.h"
#include "sl_session.h"
#include "sl_tel.h"
#include "sl_tls.h"

#include <errno.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/signalfd.h>
#include <unistd.h>
#include <urcu/uatomic.h>

#define SL_DRAIN_MS 3000 /* bound on the graceful stop */

sl_worker_t *sl_worker;

/* The worker installs the layers above the connections: HTTP routing
 * (httpd.c) and the JSON protocol (router.c), the only places a
 * connection's events go. */
static void worker_ws_tick(sl_conn_t *c, int64_t now)
{
    if (c->sess)
        sl_session_tick(c, now);
}

static const sl_conn_handlers_t worker_handlers = {
    .http_request = sl_httpd_request,
    .http_error = sl_httpd_error,
    .ws_message = sl_router_message,
    .ws_tick = worker_ws_tick,
    .closed = sl_router_closed,
    .freed = sl_cluster_conn_closed,
    .peer_gone = sl_cluster_peer_gone,
};

void sl_worker_turn_end(sl_worker_t *w)
{
    /* Wake the workers our publishes this turn handed messages to first,
     * so that they fan out on the other cores while we write ours (woken
     * after our own writes, they would start a whole fan-out late). */
    sl_pubsub_wake();
    /* Channel messages handed to us (by others, or by our own publishes
     * this turn) go out with this turn's writes. */
    sl_pubsub_drain();
    /* Broker answers past their deadline, or lost with a dead broker. */
    sl_cluster_tick();
    /* Every touched connection's writes; dead ones freed. */
    sl_conns_flush();
    sl_pubsub_wake(); /* hand-offs made while flushing (closes), if any */
    sl_pubsub_latency_flush();
    sl_accesslog_flush();
    /* A gauge: what the output buffers of this worker hold right now. */
    uatomic_set(&w->stats->outbound_bytes, sl_buf_live_bytes);
    uatomic_set(&w->stats->inbound_bytes, sl_conn_inbound_bytes);
    sl_tel_flush();
    /* Between turns this worker holds no pointer into the registry:
     * report the quiescent state, then free what every reader is past. */
    sl_qsbr_quiescent(&sl_shm->reg.qsbr, w->id);
    sl_qsbr_reclaim(&sl_shm->reg.qsbr);
    /* Input left over goes on in the next turn. */
    sl_conns_activate_ready();
}

static void ctl_cb(evutil_socket_t fd, short what, void *arg)
{
    sl_worker_t *w = arg;
    int fds[SL_PROC_FDS_MAX];
    /* Bounded per turn (4 batches) so a connection storm cannot starve the
     * connections we already have. */
    for (int batch = 0; batch < 4; batch++) {
        char tag = SL_PROC_TAG_PUBLIC;
        int sent = 0;
        int n = sl_proc_recv_fds_n(fd, fds, &tag, &sent);
        if (n == SL_AGAIN)
            return;
        if (n >= 0 && errno == EMFILE) {
            /* We are out of descriptors: the kernel closed the sockets it
             * could not give us (their clients see the connection close);
             * each is counted, and none stays "pending" for good. */
            uatomic_add(&w->stats->errors[SL_ERR_FD_EXHAUSTED], (uint64_t)SL_MAX(sent - n, 1));
            uatomic_add(&w->stats->pending_handoff, -(sent - n));
            /* (Not /health: only the master's accept at EMFILE means the
             * server takes no connection; a worker's own limit, which
             * clients can push it to, must not flap the node out of a load
             * balancer.) */
        }
        if (n < 0) {
            /* The master is gone (EOF) or the socket broke: stop. */
            if (!sl_conns.stopping)
                kill(getpid(), SIGTERM);
            event_del(w->ctl_ev);
            return;
        }
        uatomic_add(&w->stats->pending_handoff, -n);
        uatomic_add(&w->stats->accepted, (uint64_t)n);
        for (int k = 0; k < n; k++) {
            sl_conn_t *c = NULL;
            if (tag == SL_PROC_TAG_TLS) {
                void *t = sl_tls_accept(fds[k]);
                if (t == NULL)
                    close(fds[k]); /* counted (tls-handshake-failed) */
                else
                    c = sl_conn_new(fds[k], false, &sl_xport_tls, t);
            } else {
                c = sl_conn_new(fds[k], tag == SL_PROC_TAG_OPS, &sl_xport_plain, NULL);
            }
            /* Its first bytes are usually there already: read them now
             * (the handshake's reply goes out before the next recvmsg). */
            if (c)
                sl_conn_read_now(c);
        }
    }
}

/* Another process put entries in our inbox: the drain happens at the end
 * of this turn; here we only reset the eventfd. */
static void wake_cb(evutil_socket_t fd, short what, void *arg)
{
    uint64_t n;
    if (read(fd, &n, sizeof(n)) < 0) {
    }
    if (sl_conns.trace_fd >= 0)
        sl_conns.woken_us = sl_mono_us();
}

static void worker_stop(sl_worker_t *w)
{
    if (sl_conns.stopping)
        return;
    sl_conns.stopping = true;
    w->stop_deadline = sl_mono_ms() + SL_DRAIN_MS;
    /* The master hands a stopping worker nothing new (when only we were
     * told to stop, it would otherwise prefer us as our load falls). */
    uatomic_set(&w->stats->draining, 1);
    SL_CONNS_EACH(c)
        sl_conn_shutdown(c);
}

/* SIGTERM/SIGINT (stop) and SIGHUP (reread the token keys and look at the
 * access log's file again, forwarded by the master) arrive through a signalfd rather than libevent's evsignal:
 * the master's libevent signal state is inherited by fork, and a second
 * base registering signals would fight with it. */
static void signal_cb(evutil_socket_t fd, short what, void *arg)
{
    struct signalfd_siginfo si;
    while (read(fd, &si, sizeof(si)) == (ssize_t)sizeof(si)) {
        if (si.ssi_signo == SIGHUP) {
            /* From the master: the fingerprint of the keys it loaded (0: it
             * kept its keys, so do we).  From anyone else: reload alone. */
            if (si.ssi_code == SI_QUEUE && (pid_t)si.ssi_pid == getppid()) {
                if (si.ssi_ptr != 0)
                    sl_session_reload_keys(si.ssi_ptr);
            } else {
                sl_session_reload_keys(0);
            }
            /* The certificates: only to what the master serves now (its
             * fingerprint in shared memory; review r16 L4), whoever sent it. */
            sl_tls_reload(uatomic_read(&sl_shm->tls_fingerprint));
            sl_accesslog_reopen();
        } else
            worker_stop(arg);
    }
}

static void tick_cb(evutil_socket_t fd, short what, void *arg)
{
    int64_t now = sl_mono_ms();
    SL_CONNS_EACH(c)
        if (c->state != SL_CONN_DEAD)
            sl_conn_tick(c, now);
    sl_tls_housekeep(now);
}

/* Tick often enough to honour the shortest configured timer to within a
 * quarter of it, but never busier than every 10 ms nor lazier than 1 s.
 * The stall bound counts too: an idle worker shows progress by ticking. */
static struct timeval tick_interval(void)
{
    int64_t ms = SL_MIN(SL_MIN(sl_conf->heartbeat_interval_ms, sl_conf->message_timeout_ms),
                        sl_conf->worker_stall_ms);
    if (sl_conf_auth_enabled(sl_conf))
        ms = SL_MIN(ms, sl_conf->auth_timeout_ms); /* and the authentication deadline */
    ms /= 4;
    ms = SL_MAX(10, SL_MIN(ms, 1000));
    return (struct timeval){.tv_sec = ms / 1000, .tv_usec = (ms % 1000) * 1000};
}

int sl_worker_setup(sl_worker_t *w, int id)
{
    sl_worker = w;
    w->id = id;
    sl_conns.trace_fd = -1;
    w->stats = &sl_shm->workers[id];
    sl_arena_set_owner((unsigned)id); /* our objects on our own pages */
    w->base = event_base_new();
    sl_conns.id = id;
    sl_conns.base = w->base;
    sl_conns.fin_watch = w->base &&
        (event_base_get_features(w->base) & (EV_FEATURE_ET | EV_FEATURE_EARLY_CLOSE)) ==
            (EV_FEATURE_ET | EV_FEATURE_EARLY_CLOSE);
    sl_conns.stats = w->stats;
    sl_conns.on = &worker_handlers;
    sl_tls_set_stats(w->stats);
    sl_pubsub_settle = sl_call_answered; /* RPC responses: exactly once */
    sl_pubsub_rpc_seen = sl_call_remote_seen; /* --redis: rpc-requests' channels */
    sl_admin_deferred_reply = sl_httpd_deferred_reply; /* --redis: admin answers */
    sl_conns.rbuf = malloc(SL_SCRATCH_SIZE);
    sl_conns.ebuf = malloc(SL_SCRATCH_SIZE);
    if (sl_conns.rbuf == NULL || sl_conns.ebuf == NULL || w->base == NULL)
        return SL_ERROR;
    return SL_OK;
}

int sl_worker_main(int id, int ctl_fd, int tel_fd)
{
    static sl_worker_t worker;
    sl_worker_t *w = &worker;
    w->ctl_fd = ctl_fd;
    if (sl_worker_setup(w, id) != SL_OK)
        return 1;

    /* If the master dies without stopping us, stop gracefully ourselves. */
    prctl(PR_SET_PDEATHSIG, SIGTERM);
    if (getppid() != sl_shm->master_pid)
        return 1;
    signal(SIGPIPE, SIG_IGN);
    sl_proc_title("sente-lite: worker %d", id);
    sl_tel_init(tel_fd, id, w->stats, sl_conf->telemetry, sl_conf->log_level);
    sl_pubsub_trace_open(id); /* SENTE_FANOUT_TRACE: a benchmark's measuring aid */

    struct timeval tv = tick_interval();
    w->ctl_ev = event_new(w->base, ctl_fd, EV_READ | EV_PERSIST, ctl_cb, w);
    w->tick_ev = event_new(w->base, -1, EV_PERSIST, tick_cb, w);
    sigset_t stop;
    sigemptyset(&stop);
    sigaddset(&stop, SIGTERM);
    sigaddset(&stop, SIGINT);
    sigaddset(&stop, SIGHUP); /* blocked since the fork (child_signals) */
    sigprocmask(SIG_BLOCK, &stop, NULL);
    int sfd = signalfd(-1, &stop, SFD_NONBLOCK | SFD_CLOEXEC);
    w->sig_ev = sfd >= 0 ? event_new(w->base, sfd, EV_READ | EV_PERSIST, signal_cb, w) : NULL;
    w->wake_ev = event_new(w->base, sl_wake_fds[id], EV_READ | EV_PERSIST, wake_cb, w);
    if (!w->ctl_ev || !w->tick_ev || !w->sig_ev || !w->wake_ev || event_add(w->ctl_ev, NULL) ||
        event_add(w->tick_ev, &tv) || event_add(w->sig_ev, NULL) || event_add(w->wake_ev, NULL))
        return 1;

    sl_qsbr_register(&sl_shm->reg.qsbr, id);
#ifdef SL_CRASHPOINTS
    sl_crash_arm_env(id); /* a test build: a crash, stop or fault point for this worker */
#endif
    uatomic_set(&w->stats->started_ms, sl_now_ms());
    /* Publishing the pid tells the master and /health that we are up. */
    uatomic_set(&w->stats->pid, (int32_t)getpid());
    SL_TEL(SL_EV_WORKER_STARTED, SL_INFO, SL_TF_I("worker", id), SL_TF_I("pid", getpid()));
    sl_tel_flush();

    for (;;) {
        event_base_loop(w->base, EVLOOP_ONCE);
        sl_worker_turn_end(w);
        if (sl_conns.stopping && sl_conns.conns.first == NULL && sl_mono_ms() < w->stop_deadline)
            ctl_cb(ctl_fd, EV_READ, w); /* sockets handed over before the master knew: serve */
        if (sl_conns.stopping && (sl_conns.conns.first == NULL || sl_mono_ms() >= w->stop_deadline))
            break;
    }

    SL_CONNS_EACH(c)
        sl_conn_abort(c, "shutdown");
    sl_worker_turn_end(w);
    sl_tel_finish(1000); /* what the full pipe has not taken yet */
    sl_qsbr_offline(&sl_shm->reg.qsbr, id);
    uatomic_set(&w->stats->pid, 0);
    event_free(w->ctl_ev);
    event_free(w->tick_ev);
    event_free(w->sig_ev);
    event_free(w->wake_ev);
    close(sfd);
    sl_pubsub_trace_close();
    event_base_free(w->base);
    free(sl_conns.slots);
    free(sl_conns.rbuf);
    free(sl_conns.ebuf);
    close(ctl_fd);
    return 0;
}
