/*
 * master.c - the master process: listens, forks the logger and the
 * workers, hands every accepted socket to the least-loaded worker, respawns
 * what dies, and runs the graceful stop.  It never reads client bytes.
 *
 * Descriptors: each worker gets one end of its own SOCK_SEQPACKET pair;
 * accepted sockets travel over it with SCM_RIGHTS and the master closes its
 * copy.  The master also keeps the worker's end open: a socket still queued
 * there when the worker dies is not lost with it (closing the last reference
 * would reset the client) but taken back and handed to another worker, and
 * while no worker is up accepted sockets wait in a bounded parking list.  A child closes every descriptor meant for someone else (the
 * listener, other workers' pairs), so a worker holds only its clients, its
 * pair and the telemetry pipe's write end.  The master keeps the pipe's read
 * end open only so that a respawned logger can inherit it.
 */
#include "sl_master.h"
#include "sl_arena.h"
#include "sl_conf.h"
#include "sl_proc.h"
#include "sl_pubsub.h"
#include "sl_chan.h"
#include "sl_shm.h"
#include "sl_tel.h"
#include "sl_worker.h"

#include <errno.h>
#include <event2/event.h>
#include <fcntl.h>
#include <netdb.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/eventfd.h>
#include <sys/wait.h>
#include <unistd.h>
#include <urcu/uatomic.h>

#define SL_RESPAWN_MIN_MS 100
#define SL_RESPAWN_MAX_MS 5000
#define SL_STABLE_MS 2000   /* a worker alive this long resets its back-off */
#define SL_STOP_GRACE_MS 8000 /* then remaining workers get SIGKILL */
#define SL_PARKED_MAX 1024    /* accepted sockets held while no worker is up */
#define SL_WS_WEIGHT 4        /* a WebSocket weighs this many HTTP connections */

typedef struct {
    pid_t pid;
    int ctl;            /* master's end of the pair, -1 when down */
    int peer;           /* the worker's end, kept to rescue queued sockets */
    int64_t started;    /* monotonic ms */
    int64_t backoff_ms; /* next respawn delay after a quick death */
    struct event *respawn_ev;
} slot_t;

static struct {
    struct event_base *base;
    int lfd;
    int tel_r, tel_w;                /* the master's own telemetry pipe */
    int wtel[SL_MAX_WORKERS][2];     /* one per worker slot, kept across respawns */
    pid_t logger;
    slot_t w[SL_MAX_WORKERS];
    int nworkers;
    int next_rr; /* round-robin start among equally loaded workers */
    bool stopping;
    int parked[SL_PARKED_MAX];
    int nparked;
    struct event *accept_ev, *accept_retry_ev, *stop_ev;
    int spare_fd; /* held in reserve for accept() at EMFILE (see accept_cb) */
} M;

static void close_foreign_fds(int keep_ctl)
{
    if (M.lfd >= 0)
        close(M.lfd);
    if (M.spare_fd >= 0)
        close(M.spare_fd);
    for (int i = 0; i < M.nworkers; i++) {
        if (M.w[i].ctl >= 0 && M.w[i].ctl != keep_ctl)
            close(M.w[i].ctl);
        if (M.w[i].peer >= 0)
            close(M.w[i].peer);
    }
    for (int k = 0; k < M.nparked; k++)
        close(M.parked[k]);
}

static int listen_on(const char *host, int port, char *err, size_t errsz)
{
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM,
                             .ai_flags = AI_PASSIVE | AI_ADDRCONFIG};
    struct addrinfo *res, *ai;
    char pstr[16];
    snprintf(pstr, sizeof(pstr), "%d", port);
    int rc = getaddrinfo(host, pstr, &hints, &res);
    if (rc != 0) {
        snprintf(err, errsz, "cannot resolve --host %s: %s", host, gai_strerror(rc));
        return -1;
    }
    int fd = -1, saved = 0;
    for (ai = res; ai; ai = ai->ai_next) {
        fd = socket(ai->ai_family, ai->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        if (fd < 0)
            continue;
        int one = 1;
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
        if (bind(fd, ai->ai_addr, ai->ai_addrlen) == 0 && listen(fd, SOMAXCONN) == 0)
            break;
        saved = errno;
        close(fd);
        fd = -1;
    }
    freeaddrinfo(res);
    if (fd < 0)
        snprintf(err, errsz, "cannot listen on %s:%d: %s", host, port, strerror(saved));
    return fd;
}

/* Every connection is a descriptor in the master for a moment and in a
 * worker for its life: take the hard limit (a soft limit of 1024 would
 * cap each worker far below --max-connections). */
static void raise_fd_limit(void)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
}

/* fork() with every signal blocked, so that no signal reaches a child
 * while it still has the master's libevent handlers (they would write into
 * the master's own signal pipe and, say, stop the master). */
static pid_t fork_blocked(void)
{
    sigset_t all, old;
    sigfillset(&all);
    sigprocmask(SIG_BLOCK, &all, &old);
    pid_t pid = fork();
    if (pid != 0)
        sigprocmask(SIG_SETMASK, &old, NULL);
    return pid;
}

/* In a new child: default dispositions, then unblock. */
static void child_signals(void)
{
    static const int sigs[] = {SIGTERM, SIGINT, SIGHUP, SIGCHLD};
    for (size_t i = 0; i < SL_ARRAY_LEN(sigs); i++)
        signal(sigs[i], SIG_DFL);
    signal(SIGPIPE, SIG_IGN);
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL);
}

static pid_t spawn_logger(void)
{
    pid_t pid = fork_blocked();
    if (pid != 0)
        return pid;
    child_signals();
    close_foreign_fds(-1);
    /* Only read ends here: a write end kept open would keep its pipe from
     * ever reaching EOF, and the logger from ever finishing. */
    close(M.tel_w);
    int fds[SL_MAX_WORKERS + 1], n = 0;
    fds[n++] = M.tel_r;
    for (int i = 0; i < M.nworkers; i++) {
        close(M.wtel[i][1]);
        fds[n++] = M.wtel[i][0];
    }
    sl_proc_title("sente-lite: logger");
    sl_logger_opts_t o = {.log_file = sl_conf->log_file, .app_name = sl_conf->app_name,
                          .json = sl_conf->log_json, .min_level = sl_conf->log_level};
    _exit(sl_logger_main(fds, n, &o));
}

static int spawn_worker(int i)
{
    int sv[2];
    if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) != 0)
        return SL_ERROR;
    /* A deep queue of pending sockets lets a busy worker fall behind for a
     * moment without the master giving up on it. */
    int sz = 1 << 20;
    setsockopt(sv[0], SOL_SOCKET, SO_SNDBUF, &sz, sizeof(sz));
    sl_worker_stats_t *st = &sl_shm->workers[i];
    /* Gauges of the dead incarnation are void: its sockets died with it. */
    uatomic_set(&st->pid, 0);
    uatomic_set(&st->connections, 0);
    uatomic_set(&st->echo_connections, 0);
    uatomic_set(&st->http_connections, 0);
    uatomic_set(&st->pending_handoff, 0);
    pid_t pid = fork_blocked();
    if (pid < 0) {
        close(sv[0]);
        close(sv[1]);
        return SL_ERROR;
    }
    if (pid == 0) {
        close(sv[0]);
        child_signals();
        close_foreign_fds(-1);
        /* Our own telemetry pipe's write end only. */
        close(M.tel_r);
        close(M.tel_w);
        for (int j = 0; j < M.nworkers; j++) {
            close(M.wtel[j][0]);
            if (j != i)
                close(M.wtel[j][1]);
        }
        _exit(sl_worker_main(i, sv[1], M.wtel[i][1]));
    }
    M.w[i].pid = pid;
    M.w[i].ctl = sv[0];
    M.w[i].peer = sv[1];
    M.w[i].started = sl_mono_ms();
    return SL_OK;
}

/* Least loaded: WebSocket connections weigh SL_WS_WEIGHT times an HTTP
 * connection or a socket in flight (a WebSocket lives long and carries
 * traffic; an idle keep-alive HTTP connection, such as the one a browser
 * keeps after loading a page, costs little - counted equally, it would
 * send each page's WebSocket to the same worker as the page before);
 * ties go round-robin so equal workers take turns. */
static int pick_worker(uint64_t skip)
{
    int best = -1;
    uint64_t best_load = UINT64_MAX;
    for (int k = 0; k < M.nworkers; k++) {
        int i = (M.next_rr + k) % M.nworkers;
        /* A worker still starting up is a valid target: the socket waits
         * in its queue until its loop runs. */
        if (M.w[i].pid <= 0 || M.w[i].ctl < 0 || (skip >> i & 1))
            continue;
        sl_worker_stats_t *st = &sl_shm->workers[i];
        uint64_t load =
            SL_WS_WEIGHT * (uatomic_read(&st->connections) + uatomic_read(&st->echo_connections)) +
            uatomic_read(&st->http_connections) + uatomic_read(&st->pending_handoff);
        if (load < best_load) {
            best_load = load;
            best = i;
        }
    }
    if (best >= 0)
        M.next_rr = (best + 1) % M.nworkers;
    return best;
}

/* One socket to the least-loaded worker that takes it (the slow path:
 * a batch that could not be sent, rescued or parked sockets). */
static void hand_off(int fd)
{
    uint64_t tried = 0;
    for (;;) {
        int i = pick_worker(tried);
        if (i < 0)
            break;
        uatomic_add(&sl_shm->workers[i].pending_handoff, 1);
        int rc = sl_proc_send_fds(M.w[i].ctl, &fd, 1);
        if (rc == SL_OK) {
            close(fd);
            return;
        }
        uatomic_add(&sl_shm->workers[i].pending_handoff, -1);
        tried |= (uint64_t)1 << i;
    }
    /* No worker up (between a death and its respawn): park it. */
    if (!M.stopping && M.nparked < SL_PARKED_MAX && tried == 0) {
        M.parked[M.nparked++] = fd;
        return;
    }
    /* All backed up, or too many parked: refuse. */
    uatomic_add(&sl_shm->master_tel.errors[SL_ERR_ACCEPT_FAILED], 1);
    close(fd);
}

/* Sockets accepted in one wake-up, grouped by the worker chosen for each:
 * one sendmsg per worker carries up to SL_PROC_FDS_MAX of them. */
typedef struct {
    int fds[SL_PROC_FDS_MAX];
    int n;
} batch_t;

static void batch_send(int i, batch_t *b)
{
    if (b->n == 0)
        return;
    if (sl_proc_send_fds(M.w[i].ctl, b->fds, b->n) == SL_OK) {
        for (int k = 0; k < b->n; k++)
            close(b->fds[k]);
    } else {
        /* That worker is backed up or gone: one by one, elsewhere. */
        uatomic_add(&sl_shm->workers[i].pending_handoff, -b->n);
        for (int k = 0; k < b->n; k++)
            hand_off(b->fds[k]);
    }
    b->n = 0;
}

static void accept_cb(evutil_socket_t lfd, short what, void *arg)
{
    static batch_t batch[SL_MAX_WORKERS];
    for (int n = 0; n < 256; n++) {
        int fd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd >= 0) {
            int i = pick_worker(0);
            if (i < 0) {
                hand_off(fd); /* parks it */
                continue;
            }
            /* Counted as in flight now, so the next pick sees it. */
            uatomic_add(&sl_shm->workers[i].pending_handoff, 1);
            batch[i].fds[batch[i].n++] = fd;
            if (batch[i].n == SL_PROC_FDS_MAX)
                batch_send(i, &batch[i]);
            continue;
        }
        int err = errno;
        if (err == EINTR || err == ECONNABORTED)
            continue;
        if (err == EMFILE || err == ENFILE) {
            /* Out of descriptors.  The reserve descriptor is given up for
             * a moment to take the first waiting connection off the
             * backlog and close it at once (the client sees the refusal
             * instead of hanging in the backlog), then the listener rests
             * for 100 ms instead of spinning while it stays readable.
             * Counted, and /health is unhealthy for a while. */
            uatomic_add(&sl_shm->master_tel.errors[SL_ERR_FD_EXHAUSTED], 1);
            uatomic_set(&sl_shm->fd_exhausted_mono, sl_mono_ms());
            if (M.spare_fd >= 0) {
                close(M.spare_fd);
                int refused = accept4(lfd, NULL, NULL, SOCK_CLOEXEC);
                if (refused >= 0)
                    close(refused);
                M.spare_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
            }
            SL_TEL(SL_EV_WEBSOCKET_ERROR, SL_WARN, SL_TF_S("reason", "descriptors-exhausted"),
                   SL_TF_S("errno", err == EMFILE ? "EMFILE" : "ENFILE"));
        } else if (err == ENOBUFS || err == ENOMEM) {
            uatomic_add(&sl_shm->master_tel.errors[SL_ERR_ACCEPT_FAILED], 1);
        }
        if (err == EMFILE || err == ENFILE || err == ENOBUFS || err == ENOMEM) {
            event_del(M.accept_ev);
            struct timeval tv = {0, 100 * 1000};
            event_add(M.accept_retry_ev, &tv);
        }
        break;
    }
    for (int i = 0; i < M.nworkers; i++)
        batch_send(i, &batch[i]);
}

static void accept_retry_cb(evutil_socket_t fd, short what, void *arg)
{
    if (!M.stopping)
        event_add(M.accept_ev, NULL);
}

static void respawn_cb(evutil_socket_t fd, short what, void *arg)
{
    int i = (int)(intptr_t)arg;
    if (M.stopping || M.w[i].pid > 0)
        return;
    if (spawn_worker(i) != SL_OK) {
        struct timeval tv = {1, 0};
        event_add(M.w[i].respawn_ev, &tv);
        return;
    }
    uatomic_add(&sl_shm->workers[i].restarts, 1);
    int n = M.nparked;
    M.nparked = 0;
    for (int k = 0; k < n; k++)
        hand_off(M.parked[k]);
    SL_TEL(SL_EV_WORKER_STARTED, SL_WARN, SL_TF_I("worker", i), SL_TF_I("pid", M.w[i].pid),
           SL_TF_B("respawned", true));
    sl_tel_flush();
}

static void worker_died(int i, int status)
{
    slot_t *s = &M.w[i];
    int64_t lived = sl_mono_ms() - s->started;
    char how[64];
    if (WIFSIGNALED(status))
        snprintf(how, sizeof(how), "signal %d", WTERMSIG(status));
    else
        snprintf(how, sizeof(how), "exit %d", WEXITSTATUS(status));
    pid_t pid = s->pid;
    s->pid = 0;
    if (s->ctl >= 0)
        close(s->ctl);
    s->ctl = -1;
    /* Sockets handed over but never taken are still queued on its end:
     * take them back before closing it, to give them to another worker. */
    int rescued[4 * SL_PROC_FDS_MAX], nrescued = 0, got;
    while (s->peer >= 0 && nrescued + SL_PROC_FDS_MAX <= (int)SL_ARRAY_LEN(rescued) &&
           (got = sl_proc_recv_fds(s->peer, rescued + nrescued)) > 0)
        nrescued += got;
    if (s->peer >= 0)
        close(s->peer); /* anything beyond 256 sockets is closed with it */
    s->peer = -1;
    SL_TEL(SL_EV_WORKER_EXITED, M.stopping ? SL_INFO : SL_ERROR_LEVEL, SL_TF_I("worker", i),
           SL_TF_I("pid", pid), SL_TF_S("status", how), SL_TF_I("lived-ms", lived),
           SL_TF_I("rescued-sockets", nrescued));
    /* Its connections are gone with it: clean them out of the registry
     * (this also takes its reader slot offline so reclamation goes on). */
    size_t removed = sl_reg_worker_cleanup(&sl_shm->reg, i);
    if (removed)
        SL_TEL(SL_EV_CONNECTION_REMOVED, SL_WARN, SL_TF_I("worker", i),
               SL_TF_I("removed-connections", removed), SL_TF_S("reason", "worker died"));
    uatomic_set(&sl_shm->workers[i].pid, 0);
    uatomic_set(&sl_shm->workers[i].connections, 0);
    uatomic_set(&sl_shm->workers[i].echo_connections, 0);
    uatomic_set(&sl_shm->workers[i].http_connections, 0);
    uatomic_set(&sl_shm->workers[i].pending_handoff, 0);
    for (int k = 0; k < nrescued; k++)
        hand_off(rescued[k]);
    if (M.stopping)
        return;
    /* Back-off against crash loops: a worker that dies young waits twice
     * as long as the last one, up to SL_RESPAWN_MAX_MS. */
    if (lived >= SL_STABLE_MS)
        s->backoff_ms = 0;
    else
        s->backoff_ms = s->backoff_ms ? SL_MIN(s->backoff_ms * 2, SL_RESPAWN_MAX_MS)
                                      : SL_RESPAWN_MIN_MS;
    struct timeval tv = {s->backoff_ms / 1000, (s->backoff_ms % 1000) * 1000};
    event_add(s->respawn_ev, &tv);
}

static void finish_if_done(void);

static void sigchld_cb(evutil_socket_t sig, short what, void *arg)
{
    int status;
    pid_t pid;
    while ((pid = waitpid(-1, &status, WNOHANG)) > 0) {
        if (pid == M.logger) {
            M.logger = 0;
            if (!M.stopping) {
                M.logger = spawn_logger();
                uatomic_set(&sl_shm->logger_pid, M.logger);
            }
            continue;
        }
        for (int i = 0; i < M.nworkers; i++)
            if (M.w[i].pid == pid)
                worker_died(i, status);
    }
    sl_tel_flush();
    finish_if_done();
}

static void finish_if_done(void)
{
    if (!M.stopping)
        return;
    for (int i = 0; i < M.nworkers; i++)
        if (M.w[i].pid > 0)
            return;
    event_base_loopbreak(M.base);
}

static void stop_timeout_cb(evutil_socket_t fd, short what, void *arg)
{
    for (int i = 0; i < M.nworkers; i++)
        if (M.w[i].pid > 0)
            kill(M.w[i].pid, SIGKILL);
}

static void stop_cb(evutil_socket_t sig, short what, void *arg)
{
    if (M.stopping)
        return;
    M.stopping = true;
    SL_TEL(SL_EV_SERVER_STOPPING, SL_INFO, SL_TF_S("signal", sig == SIGINT ? "SIGINT" : "SIGTERM"));
    sl_tel_flush();
    event_del(M.accept_ev);
    event_del(M.accept_retry_ev);
    close(M.lfd);
    M.lfd = -1;
    for (int k = 0; k < M.nparked; k++)
        close(M.parked[k]);
    M.nparked = 0;
    for (int i = 0; i < M.nworkers; i++) {
        event_del(M.w[i].respawn_ev);
        if (M.w[i].pid > 0)
            kill(M.w[i].pid, SIGTERM);
    }
    struct timeval tv = {SL_STOP_GRACE_MS / 1000, 0};
    event_add(M.stop_ev, &tv);
    finish_if_done();
}

static void sighup_cb(evutil_socket_t sig, short what, void *arg)
{
    if (M.logger > 0)
        kill(M.logger, SIGHUP);
}

/* --channel NAME[:...]: created before the workers start, so they exist
 * from the first connection on. */
static int create_predefined_channels(void)
{
    sl_reg_t *r = &sl_shm->reg;
    int rc = SL_OK;
    sl_qsbr_online(&r->qsbr, SL_REG_MASTER_SLOT);
    for (int i = 0; i < sl_conf->nchannels; i++) {
        const sl_conf_channel_t *ch = &sl_conf->channels[i];
        sl_chan_config_t cfg = {.max_subscribers = ch->max_subscribers,
                                .message_retention = ch->message_retention,
                                .rpc_timeout_ms = ch->rpc_timeout_ms,
                                .telemetry_enabled = true};
        sl_chan_t *c;
        int crc = sl_chan_create(r, ch->name, strlen(ch->name), &cfg, &c);
        if (crc == SL_CHAN_NO_MEMORY) {
            fprintf(stderr, "sente-lite: --shm-size too small for --channel %s\n", ch->name);
            rc = SL_ERROR;
            break;
        }
        if (crc == SL_CHAN_CREATED)
            SL_TEL(SL_EV_CHANNEL_CREATED, SL_INFO, SL_TF_S("channel-id", ch->name),
                   SL_TF_S("by", "--channel"), SL_TF_I("max-subscribers", cfg.max_subscribers),
                   SL_TF_I("message-retention", cfg.message_retention));
    }
    sl_qsbr_offline(&r->qsbr, SL_REG_MASTER_SLOT);
    return rc;
}

static int write_pid_file(const char *path)
{
    FILE *f = fopen(path, "w");
    if (f == NULL)
        return SL_ERROR;
    fprintf(f, "%d\n", (int)getpid());
    return fclose(f) == 0 ? SL_OK : SL_ERROR;
}

int sl_master_run(void)
{
    const sl_conf_t *cf = sl_conf;
    char err[512];
    memset(&M, 0, sizeof(M));
    M.nworkers = cf->workers;
    M.spare_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
    raise_fd_limit();
    for (int i = 0; i < SL_MAX_WORKERS; i++)
        M.w[i].ctl = M.w[i].peer = -1;

    signal(SIGPIPE, SIG_IGN);
    M.lfd = listen_on(cf->host, cf->port, err, sizeof(err));
    if (M.lfd < 0) {
        fprintf(stderr, "sente-lite: %s\n", err);
        return 1;
    }
    if (sl_shm_create((size_t)cf->shm_size, (uint32_t)cf->workers,
                      (uint64_t)cf->max_connections) != SL_OK) {
        if (errno == EINVAL)
            fprintf(stderr, "sente-lite: --shm-size %lld is too small for --max-connections "
                            "%lld\n", (long long)cf->shm_size, (long long)cf->max_connections);
        else
            fprintf(stderr, "sente-lite: cannot map %lld bytes of shared memory (--shm-size): "
                            "%s\n", (long long)cf->shm_size, strerror(errno));
        return 1;
    }
    sl_arena_set_owner(SL_MAX_WORKERS); /* the master's own slab pages */
    sl_shm->start_ms = sl_now_ms();
    sl_shm->master_pid = getpid();
    /* One eventfd per worker: whoever fills a worker's inbox wakes it.
     * Created before any fork so every worker (and respawn) inherits all. */
    for (int i = 0; i < cf->workers; i++) {
        sl_wake_fds[i] = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
        if (sl_wake_fds[i] < 0) {
            fprintf(stderr, "sente-lite: cannot create an eventfd: %s\n", strerror(errno));
            return 1;
        }
    }

    int p[2];
    if (pipe2(p, O_CLOEXEC) != 0) {
        fprintf(stderr, "sente-lite: cannot create the telemetry pipe: %s\n", strerror(errno));
        return 1;
    }
    M.tel_r = p[0];
    M.tel_w = p[1];
    /* A pipe per worker slot: each has one writer at a time, so batches of
     * any size never interleave (sl_tel.h).  A respawned worker inherits its
     * slot's write end from us. */
    for (int i = 0; i < cf->workers; i++) {
        if (pipe2(M.wtel[i], O_CLOEXEC) != 0) {
            fprintf(stderr, "sente-lite: cannot create a telemetry pipe: %s\n", strerror(errno));
            return 1;
        }
        fcntl(M.wtel[i][1], F_SETPIPE_SZ, 1 << 20);
    }
    /* A larger pipe absorbs bursts before anything is dropped; the kernel
     * caps it at /proc/sys/fs/pipe-max-size, and failing is harmless. */
    fcntl(M.tel_w, F_SETPIPE_SZ, 1 << 20);
    if (cf->pid_file[0] && write_pid_file(cf->pid_file) != SL_OK) {
        fprintf(stderr, "sente-lite: cannot write --pid-file %s: %s\n", cf->pid_file,
                strerror(errno));
        return 1;
    }

    M.base = event_base_new();
    if (M.base == NULL)
        return 1;
    M.logger = spawn_logger();
    if (M.logger < 0) {
        fprintf(stderr, "sente-lite: cannot fork the logger: %s\n", strerror(errno));
        return 1;
    }
    sl_shm->logger_pid = M.logger;
    sl_proc_title("sente-lite: master");
    sl_tel_init(M.tel_w, -1, &sl_shm->master_tel, cf->telemetry, cf->log_level);
    SL_TEL(SL_EV_SERVER_STARTING, SL_INFO, SL_TF_S("host", cf->host), SL_TF_I("port", cf->port),
           SL_TF_I("workers", cf->workers), SL_TF_S("version", SL_VERSION));
    if (create_predefined_channels() != SL_OK)
        return 1;
    sl_tel_flush();

    struct event *sigs[4] = {
        evsignal_new(M.base, SIGTERM, stop_cb, NULL),
        evsignal_new(M.base, SIGINT, stop_cb, NULL),
        evsignal_new(M.base, SIGHUP, sighup_cb, NULL),
        evsignal_new(M.base, SIGCHLD, sigchld_cb, NULL),
    };
    for (int i = 0; i < 4; i++)
        event_add(sigs[i], NULL);
    M.accept_ev = event_new(M.base, M.lfd, EV_READ | EV_PERSIST, accept_cb, NULL);
    M.accept_retry_ev = evtimer_new(M.base, accept_retry_cb, NULL);
    M.stop_ev = evtimer_new(M.base, stop_timeout_cb, NULL);
    for (int i = 0; i < M.nworkers; i++) {
        M.w[i].respawn_ev = evtimer_new(M.base, respawn_cb, (void *)(intptr_t)i);
        if (spawn_worker(i) != SL_OK) {
            fprintf(stderr, "sente-lite: cannot start worker %d: %s\n", i, strerror(errno));
            stop_cb(SIGTERM, 0, NULL);
            break;
        }
    }
    if (!M.stopping) {
        event_add(M.accept_ev, NULL);
        SL_TEL(SL_EV_SERVER_STARTED, SL_INFO, SL_TF_S("host", cf->host),
               SL_TF_I("port", cf->port), SL_TF_I("workers", cf->workers),
               SL_TF_I("pid", getpid()));
        sl_tel_flush();
    }

    event_base_dispatch(M.base);

    /* Every worker is gone.  Tell the logger we are done by closing the
     * last write ends; it drains the pipes and exits at EOF. */
    SL_TEL(SL_EV_SERVER_STOPPED, SL_INFO, SL_TF_I("uptime-ms", sl_now_ms() - sl_shm->start_ms));
    sl_tel_finish(1000);
    close(M.tel_w);
    close(M.tel_r);
    for (int i = 0; i < M.nworkers; i++) {
        close(M.wtel[i][1]);
        close(M.wtel[i][0]);
    }
    if (M.logger > 0) {
        int status;
        for (int waited = 0; waited < 300; waited++) {
            if (waitpid(M.logger, &status, WNOHANG) == M.logger) {
                M.logger = 0;
                break;
            }
            usleep(10 * 1000);
        }
        if (M.logger > 0) {
            kill(M.logger, SIGKILL);
            waitpid(M.logger, &status, 0);
        }
    }
    if (cf->pid_file[0])
        unlink(cf->pid_file);
    for (int i = 0; i < 4; i++)
        event_free(sigs[i]);
    event_free(M.accept_ev);
    event_free(M.accept_retry_ev);
    event_free(M.stop_ev);
    for (int i = 0; i < M.nworkers; i++)
        event_free(M.w[i].respawn_ev);
    event_base_free(M.base);
    return 0;
}
