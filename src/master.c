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
 *
 * Shared memory: the master cleans up after a dead worker in bounded steps
 * from its event loop (sl_reg_cleanup_step, ~2 ms each), so it keeps
 * accepting meanwhile, and respawns the worker only once its cleanup is
 * done.  It watches every worker's progress (its QSBR turn counter): one
 * that makes none for --worker-stall-ms is "stalled" (no new sockets, the
 * ones queued to it handed to others, /health unhealthy), and after
 * --worker-stall-kill-ms it is killed and replaced.  It reaps empty
 * auto-created channels after --channel-linger-ms, a slice of the channel
 * table per tick.  Whenever it must wait for a lock of the registry, it
 * goes on accepting and watching meanwhile (sl_lock_set_wait_hook), so a
 * stopped holder costs at most the kill bound, never a hang.
 */
#include "sl_master.h"
#include "sl_arena.h"
#include "sl_broker.h"
#include "sl_brq.h"
#include "sl_conf.h"
#include "sl_perm.h"
#include "sl_proc.h"
#include "sl_pubsub.h"
#include "sl_rpc.h"
#include "sl_session.h"
#include "sl_chan.h"
#include "sl_cluster.h"
#include "sl_shm.h"
#include "sl_tel.h"
#include "sl_tls.h"
#include "sl_worker.h"

#include <errno.h>
#include <event2/event.h>
#include <fcntl.h>
#include <netdb.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <limits.h>
#include <stddef.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/eventfd.h>
#include <sys/random.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>
#include <urcu/uatomic.h>

#define SL_RESPAWN_MIN_MS 100
#define SL_RESPAWN_MAX_MS 5000
#define SL_STABLE_MS 2000   /* a worker alive this long resets its back-off */
#define SL_STOP_GRACE_MS 8000 /* then remaining workers get SIGKILL */
#define SL_PARKED_MAX 1024    /* accepted sockets held while no worker is up */
#define SL_WS_WEIGHT 4        /* a WebSocket weighs this many HTTP connections */
#define SL_MAX_LISTEN 16      /* listening sockets (socket activation may pass several) */
#define SL_UPGRADE_TIMEOUT_MS 30000 /* the new master's workers must be up by then */
#define SL_UPGRADE_KILL_MS 3000     /* an abandoned new master gets SIGKILL after */
#define SL_NOTIFY_RETRY_MS 1000     /* a one-shot notification waits for room this long */
#define SL_CLEANUP_SLICE_US 2000 /* one cleanup turn of the master's loop */
#define SL_CLEANUP_BUDGET 128    /* removals per cleanup step */

typedef struct {
    pid_t pid;
    int ctl;            /* master's end of the pair, -1 when down */
    int peer;           /* the worker's end, kept to rescue queued sockets */
    int64_t started;    /* monotonic ms */
    int64_t backoff_ms; /* next respawn delay after a quick death */
    struct event *respawn_ev;
    /* Cleanup after its death (the replacement waits for it). */
    bool cleaning;
    sl_reg_cleanup_t job;
    int64_t cleanup_started_us;
    int64_t cleanup_wait_ms;   /* monotonic: its first step found a dead's lock held (0: no) */
    int64_t cleanup_waited_ms; /* how long that first step waited, in all */
    bool cleanup_warned;       /* worker-cleanup-waiting sent for this wait */
    struct event *cleanup_ev;
    /* Progress watch (the stall detector, which also decides the systemd
     * watchdog). */
    uint64_t turns;       /* its QSBR turn count when last seen to move */
    int64_t progress_ms;  /* monotonic: when it last moved */
    bool killed;          /* SIGKILL sent for staying stalled */
    int64_t killed_ms;    /* monotonic: when */
    bool ending;          /* exited or dumping core, not yet reaped: dead, not stalled */
} slot_t;

static struct {
    struct event_base *base;
    int lfds[SL_MAX_LISTEN]; /* listening sockets, bound here or inherited */
    char ltags[SL_MAX_LISTEN]; /* each one's SL_PROC_TAG_*: public or --ops-listen */
    /* Sockets still to be given TCP_NODELAY one by one (-1: all): those an
     * inherited listener had queued before we set it there (see
     * take_inherited_listeners).  0 for every listener we bound. */
    int nodelay_left[SL_MAX_LISTEN];
    int nlfd;
    bool inherited; /* from LISTEN_FDS (systemd, or the master we replace) */
    int tel_r, tel_w;                /* the master's own telemetry pipe */
    int wtel[SL_MAX_WORKERS][2];     /* one per worker slot, kept across respawns */
    pid_t logger;
    /* --redis: the broker, supervised like a worker (back-off on quick
     * deaths); its own telemetry pipe. */
    pid_t broker;
    int btel[2];
    int64_t broker_started, broker_backoff_ms;
    struct event *broker_ev;
    slot_t b; /* its cleanup and progress watch, as a worker's (b.pid = broker) */
    slot_t w[SL_MAX_WORKERS];
    int nworkers;
    int next_rr; /* round-robin start among equally loaded workers */
    bool stopping;
    int parked[SL_PARKED_MAX];
    char parked_tag[SL_PARKED_MAX]; /* the listener each came from */
    int nparked;
    struct event *accept_evs[SL_MAX_LISTEN], *accept_retry_ev, *stop_ev, *watch_ev, *reap_ev;
    struct event *tickets_ev; /* TLS session-ticket key rotation */
    uint32_t reap_cursor;
    uint32_t rpc_cursor; /* the RPC sweep: next bucket, old requests counted so far */
    uint64_t rpc_old;
    /* Binary upgrade (SIGUSR2), as the old master: the new one's pid (until
     * it is reaped, or handed over to) and our end of the socketpair on
     * which it says 'R' (ready) and we answer 'H' (handed over). */
    pid_t upgrade_pid;
    int upgrade_fd;
    struct event *upgrade_ev, *upgrade_timer, *upgrade_kill_ev;
    bool upgraded; /* handed over: draining for the new master */
    /* As the new master: our end of that socketpair until the old master
     * answered 'H' (-1 after, and for a master started any other way). */
    int parent_fd;
    struct event *parent_ev;
    bool new_master; /* started by an older master (SIGUSR2) */
    /* systemd: readiness and the watchdog (sd_notify protocol).  notify_ok:
     * we are systemd's main process - false for a new master not handed
     * over yet (it must never speak for the service: a failed upgrade would
     * otherwise send STOPPING=1 or READY=1 for it), and false again for an
     * old master once it has handed over (MAINPID= is its last word). */
    bool notify_ok;
    int notify_fd;
    struct sockaddr_un notify_addr;
    socklen_t notify_len;
    int64_t watchdog_us;
    int64_t watchdog_fed_us; /* monotonic: last WATCHDOG=1 */
    bool ready_sent, starved;
    char status[160];        /* the last STATUS= sent */
    struct event *ready_timer, *watchdog_timer;
    /* The stall watch's previous look at each reader slot's lock wait
     * (sl_lock_blocker). */
    sl_lock_view_t seen[SL_QSBR_SLOTS];
    int spare_fd; /* held in reserve for accept() at EMFILE (see accept_cb) */
} M;


/* ------------------------------------------------------------ systemd */

/* sd_notify(3) without libsystemd: one datagram of "KEY=value" lines to
 * the unix socket named by NOTIFY_SOCKET ('@' = abstract namespace).  Not
 * under systemd (no NOTIFY_SOCKET) it does nothing. */
static void notify_init(void)
{
    M.notify_fd = -1;
    const char *path = getenv("NOTIFY_SOCKET");
    size_t n = path ? strlen(path) : 0;
    if (n == 0 || n >= sizeof(M.notify_addr.sun_path) || (path[0] != '/' && path[0] != '@'))
        return;
    M.notify_addr.sun_family = AF_UNIX;
    memcpy(M.notify_addr.sun_path, path, n);
    if (path[0] == '@')
        M.notify_addr.sun_path[0] = '\0';
    M.notify_len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + n);
    M.notify_fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    /* The watchdog: WATCHDOG_USEC, for us only if WATCHDOG_PID is unset or
     * ours. */
    const char *us = getenv("WATCHDOG_USEC"), *wp = getenv("WATCHDOG_PID");
    if (us && (!wp || atol(wp) == (long)getpid()))
        M.watchdog_us = atoll(us);
}

static int notify_send(const char *msg)
{
    return sendto(M.notify_fd, msg, strlen(msg), MSG_NOSIGNAL, (struct sockaddr *)&M.notify_addr,
                  M.notify_len) < 0
               ? -1
               : 0;
}

/* Periodic and informational messages (WATCHDOG=1, STATUS=): best effort;
 * the next one follows soon. */
void sl_notify(const char *msg)
{
    if (M.notify_fd < 0 || !M.notify_ok)
        return;
    if (notify_send(msg) < 0) {
    }
}

/* One-shot messages systemd must get (READY=1, MAINPID=, STOPPING=1): the
 * socket is non-blocking, so when systemd's queue is full (EAGAIN) wait for
 * room and send again, for up to SL_NOTIFY_RETRY_MS. */
static void notify_sure(const char *msg)
{
    if (M.notify_fd < 0 || !M.notify_ok)
        return;
    int64_t until = sl_mono_ms() + SL_NOTIFY_RETRY_MS;
    while (notify_send(msg) < 0) {
        int64_t left = until - sl_mono_ms();
        if ((errno != EAGAIN && errno != EINTR) || left <= 0) {
            sl_stderr(SL_LOG_ERR, "cannot notify systemd (%.*s): %s",
                      (int)strcspn(msg, "\n"), msg, strerror(errno));
            return;
        }
        struct pollfd pfd = {.fd = M.notify_fd, .events = POLLOUT};
        if (poll(&pfd, 1, (int)SL_MIN(left, 20)) < 0 && errno != EINTR)
            return;
    }
}

/* What the master re-executes on SIGUSR2 (saved before the process title
 * overwrites argv). */
static char sl_exe[4096];
static char **sl_argv;

void sl_master_set_exec(int argc, char **argv)
{
    ssize_t n = readlink("/proc/self/exe", sl_exe, sizeof(sl_exe) - 1);
    sl_exe[n > 0 ? n : 0] = '\0';
    sl_argv = calloc((size_t)argc + 1, sizeof(char *));
    for (int i = 0; sl_argv && i < argc; i++)
        sl_argv[i] = strdup(argv[i]);
}

static void watch_workers(void);
static void watchdog_feed(bool due);
static void accept_cb(evutil_socket_t lfd, short what, void *arg);

/* While the master waits for a registry lock (cleanup, reaper), it keeps
 * watching and accepting: the holder may be a stopped worker that only the
 * watchdog will kill.  Neither takes a lock. */
static void wait_hook(void)
{
    watch_workers();
    watchdog_feed(true);
    for (int k = 0; k < M.nlfd && !M.stopping; k++)
        if (M.lfds[k] >= 0 && M.accept_evs[k] && event_pending(M.accept_evs[k], EV_READ, NULL))
            accept_cb(M.lfds[k], EV_READ, (void *)(intptr_t)k);
}

static void master_online(void)
{
    sl_qsbr_online(&sl_shm->reg.qsbr, SL_REG_MASTER_SLOT);
    sl_lock_set_wait_hook(wait_hook);
}

static void master_offline(void)
{
    sl_lock_set_wait_hook(NULL);
    sl_qsbr_offline(&sl_shm->reg.qsbr, SL_REG_MASTER_SLOT);
    sl_qsbr_reclaim(&sl_shm->reg.qsbr);
}

static void close_foreign_fds(int keep_ctl)
{
    for (int k = 0; k < M.nlfd; k++)
        if (M.lfds[k] >= 0)
            close(M.lfds[k]);
    /* And set to -1: a later sl_notify here must not write to whatever
     * reuses the number. */
    if (M.notify_fd >= 0)
        close(M.notify_fd);
    M.notify_fd = -1;
    M.notify_ok = false;
    if (M.parent_fd >= 0)
        close(M.parent_fd);
    M.parent_fd = -1;
    if (M.spare_fd >= 0)
        close(M.spare_fd);
    M.spare_fd = -1;
    /* The old master's end of the upgrade socketpair: only it may hold it,
     * or the new master would not see it go away. */
    if (M.upgrade_fd >= 0)
        close(M.upgrade_fd);
    M.upgrade_fd = -1;
    for (int i = 0; i < M.nworkers; i++) {
        if (M.w[i].ctl >= 0 && M.w[i].ctl != keep_ctl)
            close(M.w[i].ctl);
        if (M.w[i].peer >= 0)
            close(M.w[i].peer);
    }
    for (int k = 0; k < M.nparked; k++)
        close(M.parked[k]);
}

/* Only the broker itself writes its pipe; the logger keeps the read end. */
static void close_broker_pipe_for_child(void)
{
    if (M.btel[0] >= 0)
        close(M.btel[0]);
    if (M.btel[1] >= 0)
        close(M.btel[1]);
}

static int listen_on(const char *what, const char *host, int port, char *err, size_t errsz)
{
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM,
                             .ai_flags = AI_PASSIVE | AI_ADDRCONFIG};
    struct addrinfo *res, *ai;
    char pstr[16];
    snprintf(pstr, sizeof(pstr), "%d", port);
    int rc = getaddrinfo(host, pstr, &hints, &res);
    if (rc != 0) {
        snprintf(err, errsz, "cannot resolve %s %s: %s", what, host, gai_strerror(rc));
        return -1;
    }
    int fd = -1, saved = 0;
    for (ai = res; ai; ai = ai->ai_next) {
        fd = socket(ai->ai_family, ai->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        if (fd < 0)
            continue;
        int one = 1;
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
        /* Accepted sockets inherit it: no setsockopt per connection. */
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
        if (bind(fd, ai->ai_addr, ai->ai_addrlen) == 0 && listen(fd, SOMAXCONN) == 0)
            break;
        saved = errno;
        close(fd);
        fd = -1;
    }
    freeaddrinfo(res);
    if (fd < 0)
        snprintf(err, errsz, "cannot listen on %s:%d (%s): %s", host, port, what, strerror(saved));
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

/* In a new child: default dispositions for every signal the master handles
 * through libevent, then unblock - all but SIGHUP for a worker
 * (`keep_hup`), which takes it from a signalfd: were it unblocked here, a
 * SIGHUP forwarded by the master before the worker has set that up would
 * kill it (the default action).  SIGUSR2 is ignored, not defaulted: the
 * inherited libevent handler would pass it to the master (a stray
 * `kill -USR2 <worker>` would upgrade the server), and its default action
 * would kill the child; a new master (exec keeps "ignored") installs its
 * own handler once it can take it. */
static void child_signals(bool keep_hup)
{
    static const int sigs[] = {SIGTERM, SIGINT, SIGHUP, SIGCHLD};
    for (size_t i = 0; i < SL_ARRAY_LEN(sigs); i++)
        signal(sigs[i], SIG_DFL);
    signal(SIGUSR2, SIG_IGN);
    signal(SIGPIPE, SIG_IGN);
    sigset_t keep;
    sigemptyset(&keep);
    if (keep_hup)
        sigaddset(&keep, SIGHUP);
    sigprocmask(SIG_SETMASK, &keep, NULL);
}

static pid_t spawn_logger(void)
{
    pid_t pid = fork_blocked();
    if (pid != 0)
        return pid;
    child_signals(false);
    close_foreign_fds(-1);
    /* Only read ends here: a write end kept open would keep its pipe from
     * ever reaching EOF, and the logger from ever finishing. */
    close(M.tel_w);
    int fds[SL_MAX_WORKERS + 2], n = 0;
    fds[n++] = M.tel_r;
    if (M.btel[1] >= 0) {
        close(M.btel[1]);
        fds[n++] = M.btel[0];
    }
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
    uatomic_set(&st->draining, 0);
    pid_t pid = fork_blocked();
    if (pid < 0) {
        close(sv[0]);
        close(sv[1]);
        return SL_ERROR;
    }
    if (pid == 0) {
        close(sv[0]);
        child_signals(true);
        close_foreign_fds(-1);
        /* Our own telemetry pipe's write end only. */
        close(M.tel_r);
        close(M.tel_w);
        close_broker_pipe_for_child();
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
    M.w[i].turns = sl_qsbr_turns(&sl_shm->reg.qsbr, i);
    M.w[i].progress_ms = M.w[i].started;
    M.w[i].killed = false;
    M.w[i].killed_ms = 0;
    M.w[i].ending = false;
    uatomic_set(&st->stalled, 0);
    uatomic_set(&st->blocked_by, 0);
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
        if (M.w[i].pid <= 0 || M.w[i].ctl < 0 || (skip >> i & 1) || M.w[i].ending ||
            uatomic_read(&sl_shm->workers[i].stalled) ||
            uatomic_read(&sl_shm->workers[i].blocked_by) ||
            uatomic_read(&sl_shm->workers[i].draining))
            continue; /* down, tried, ending, stalled, blocked or stopping: not for new sockets */
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
 * a batch that could not be sent, rescued or parked sockets); `tag`: the
 * listener it came from (SL_PROC_TAG_*). */
static void hand_off(int fd, char tag)
{
    uint64_t tried = 0;
    for (;;) {
        int i = pick_worker(tried);
        if (i < 0)
            break;
        uatomic_add(&sl_shm->workers[i].pending_handoff, 1);
        int rc = sl_proc_send_fds(M.w[i].ctl, &fd, 1, tag);
        if (rc == SL_OK) {
            close(fd);
            return;
        }
        uatomic_add(&sl_shm->workers[i].pending_handoff, -1);
        tried |= (uint64_t)1 << i;
    }
    /* No worker up (between a death and its respawn): park it. */
    if (!M.stopping && M.nparked < SL_PARKED_MAX && tried == 0) {
        M.parked_tag[M.nparked] = tag;
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
    char tag; /* every socket of a batch comes from the same listener */
} batch_t;

static void batch_send(int i, batch_t *b)
{
    if (b->n == 0)
        return;
    if (sl_proc_send_fds(M.w[i].ctl, b->fds, b->n, b->tag) == SL_OK) {
        for (int k = 0; k < b->n; k++)
            close(b->fds[k]);
    } else {
        /* That worker is backed up or gone: one by one, elsewhere. */
        uatomic_add(&sl_shm->workers[i].pending_handoff, -b->n);
        for (int k = 0; k < b->n; k++)
            hand_off(b->fds[k], b->tag);
    }
    b->n = 0;
}

/* arg: the listener's index in M.lfds; its tag (SL_PROC_TAG_PUBLIC or
 * SL_PROC_TAG_OPS) travels with every socket.  The batches are all sent
 * before returning, so one array serves every listener. */
static void accept_cb(evutil_socket_t lfd, short what, void *arg)
{
    int li = (int)(intptr_t)arg;
    static batch_t batch[SL_MAX_WORKERS];
    char tag = M.ltags[li];
    for (int i = 0; i < M.nworkers; i++)
        batch[i].tag = tag;
    if (M.spare_fd < 0) /* lost to another process at ENFILE: take one again */
        M.spare_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
    bool flushed = false, sent_first = false;
    for (int n = 0; n < 256; n++) {
        int fd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd >= 0) {
            if (M.nodelay_left[li] != 0) {
                int one = 1;
                setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
                if (M.nodelay_left[li] > 0)
                    M.nodelay_left[li]--;
            }
            int i = pick_worker(0);
            if (i < 0) {
                hand_off(fd, tag); /* parks it */
                continue;
            }
            /* Counted as in flight now, so the next pick sees it. */
            uatomic_add(&sl_shm->workers[i].pending_handoff, 1);
            batch[i].fds[batch[i].n++] = fd;
            /* The first socket of a wake-up goes at once: its worker starts
             * on it while we look for more (under light load there is none,
             * and waiting for that accept4's EAGAIN was on every
             * connection's path); the rest go in batches. */
            if (batch[i].n == SL_PROC_FDS_MAX || !sent_first) {
                batch_send(i, &batch[i]);
                sent_first = true;
            }
            continue;
        }
        int err = errno;
        if (err == EINTR || err == ECONNABORTED)
            continue;
        if ((err == EMFILE || err == ENFILE) && !flushed) {
            /* The batches not sent yet hold descriptors: hand them over
             * (which closes our copies) and try once more before refusing
             * anyone. */
            flushed = true;
            bool any = false;
            for (int i = 0; i < M.nworkers; i++) {
                any = any || batch[i].n > 0;
                batch_send(i, &batch[i]);
            }
            if (any)
                continue;
        }
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
            event_del(M.accept_evs[li]);
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
        for (int k = 0; k < M.nlfd; k++)
            event_add(M.accept_evs[k], NULL);
}

static void respawn_cb(evutil_socket_t fd, short what, void *arg)
{
    int i = (int)(intptr_t)arg;
    if (M.stopping || M.w[i].pid > 0)
        return;
    if (M.w[i].cleaning) {
        /* Its registry entries are still being removed: a replacement
         * under the same id must not start before. */
        struct timeval tv = {0, 20 * 1000};
        event_add(M.w[i].respawn_ev, &tv);
        return;
    }
    /* Its cleanup is done: the replacement's subscriptions are handed
     * their messages from the first (cleared before the fork). */
    sl_reg_worker_back(&sl_shm->reg, i);
    if (spawn_worker(i) != SL_OK) {
        struct timeval tv = {1, 0};
        event_add(M.w[i].respawn_ev, &tv);
        return;
    }
    uatomic_add(&sl_shm->workers[i].restarts, 1);
    int n = M.nparked;
    M.nparked = 0;
    for (int k = 0; k < n; k++)
        hand_off(M.parked[k], M.parked_tag[k]);
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
    s->ending = false;
    if (s->ctl >= 0)
        close(s->ctl);
    s->ctl = -1;
    /* Sockets handed over but never taken are still queued on its end:
     * take them back before closing it, to give them to another worker. */
    int rescued[4 * SL_PROC_FDS_MAX], nrescued = 0, got;
    char rescued_tag[4 * SL_PROC_FDS_MAX], tag = SL_PROC_TAG_PUBLIC;
    while (s->peer >= 0 && nrescued + SL_PROC_FDS_MAX <= (int)SL_ARRAY_LEN(rescued) &&
           (got = sl_proc_recv_fds(s->peer, rescued + nrescued, &tag)) > 0) {
        memset(rescued_tag + nrescued, tag, (size_t)got);
        nrescued += got;
    }
    if (s->peer >= 0)
        close(s->peer); /* anything beyond 256 sockets is closed with it */
    s->peer = -1;
    SL_TEL(SL_EV_WORKER_EXITED, M.stopping ? SL_INFO : SL_ERROR_LEVEL, SL_TF_I("worker", i),
           SL_TF_I("pid", pid), SL_TF_S("status", how), SL_TF_I("lived-ms", lived),
           SL_TF_I("rescued-sockets", nrescued));
    uatomic_set(&sl_shm->workers[i].pid, 0);
    uatomic_set(&sl_shm->workers[i].stalled, 0);
    uatomic_set(&sl_shm->workers[i].blocked_by, 0);
    uatomic_set(&sl_shm->workers[i].connections, 0);
    uatomic_set(&sl_shm->workers[i].echo_connections, 0);
    uatomic_set(&sl_shm->workers[i].http_connections, 0);
    uatomic_set(&sl_shm->workers[i].pending_handoff, 0);
    /* Its gauges too (what it held died with it), so the /stats totals do
     * not keep them until the replacement's first tick (review rq16 L1). */
    uatomic_set(&sl_shm->workers[i].tls_heap_bytes, 0);
    uatomic_set(&sl_shm->workers[i].outbound_bytes, 0);
    uatomic_set(&sl_shm->workers[i].inbound_bytes, 0);
    /* Its connections are gone with it: clean them out of the registry, in
     * steps (first the locks it held are repaired and its reader slot taken
     * offline, so reclamation goes on). */
    sl_reg_worker_gone(&sl_shm->reg, i); /* its inbox out of every hand-off (rf15 F3 a) */
    sl_reg_cleanup_start(&s->job, i);
    s->cleaning = true;
    s->cleanup_started_us = sl_mono_us();
    s->cleanup_wait_ms = 0;
    s->cleanup_waited_ms = 0;
    s->cleanup_warned = false;
    struct timeval now = {0, 0};
    event_add(s->cleanup_ev, &now);
    for (int k = 0; k < nrescued; k++)
        hand_off(rescued[k], rescued_tag[k]);
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

static int slot_of_pid(pid_t pid);

/* The first cleanup step waits to take the locks the dead worker's record
 * names; its reader slot stays online meanwhile, so nothing retired
 * anywhere is reclaimed.  That wait ends when each such lock has been
 * released once (sl_lock_recover_dead), which a holder that makes no
 * progress does when the stall watch kills it: so it lasts about the kill
 * bound at most - unless the holder is dumping core (the kernel's time).
 * Shown in /stats (cleanup-wait-ms, cleanup-blocked-by), /health
 * (stuck-cleanups, past the kill bound) and telemetry. */
static void note_cleanup_wait(int i)
{
    slot_t *s = &M.w[i];
    sl_worker_stats_t *st = &sl_shm->workers[i];
    sl_lock_t *l = s->cleaning ? sl_reg_cleanup_waits_for(&sl_shm->reg, &s->job) : NULL;
    int64_t now = sl_mono_ms();
    if (l == NULL) {
        if (s->cleanup_wait_ms) {
            s->cleanup_waited_ms += now - s->cleanup_wait_ms;
            s->cleanup_wait_ms = 0;
            uatomic_set(&st->cleanup_wait_since_ms, 0);
            uatomic_set(&st->cleanup_blocked_by, 0);
        }
        return;
    }
    if (s->cleanup_wait_ms == 0) {
        s->cleanup_wait_ms = now;
        uatomic_set(&st->cleanup_wait_since_ms, sl_now_ms());
    }
    int by = slot_of_pid(sl_lock_owner(l));
    uatomic_set(&st->cleanup_blocked_by, by >= 0 ? (uint32_t)by + 1 : 0);
    if (!s->cleanup_warned && now - s->cleanup_wait_ms >= sl_conf->worker_stall_kill_ms) {
        s->cleanup_warned = true;
        SL_TEL(SL_EV_WORKER_CLEANUP_WAITING, SL_ERROR_LEVEL, SL_TF_I("worker", i),
               SL_TF_I("waited-ms", now - s->cleanup_wait_ms), SL_TF_I("blocked-by", by),
               SL_TF_I("owner-pid", sl_lock_owner(l)));
        sl_tel_flush();
    }
}

/* One turn of a dead process's cleanup (worker i's, or the broker's: i
 * -1): steps until ~2 ms have passed, a channel lock was busy, or it is
 * done.  Returns true when done. */
static bool cleanup_turn(slot_t *s, int i)
{
    int64_t t0 = sl_mono_us();
    uint64_t busy = s->job.busy;
    int rc;
    master_online();
    do {
        rc = sl_reg_cleanup_step(&sl_shm->reg, &s->job, SL_CLEANUP_BUDGET);
        sl_qsbr_quiescent(&sl_shm->reg.qsbr, SL_REG_MASTER_SLOT);
    } while (rc == SL_AGAIN && s->job.busy == busy && sl_mono_us() - t0 < SL_CLEANUP_SLICE_US);
    master_offline();
    /* The leaves this turn handed to live workers (join-leave channels). */
    for (uint32_t w = 0; s->job.woken; w++, s->job.woken >>= 1) {
        uint64_t one = 1;
        if ((s->job.woken & 1) && write(sl_wake_fds[w], &one, sizeof(one)) < 0) {
        } /* a full eventfd counter still means "woken" */
    }
    if (i >= 0) {
        note_cleanup_wait(i);
        uatomic_set(&sl_shm->workers[i].cleanup_set_aside, s->job.aside_last);
        uatomic_set(&sl_shm->workers[i].cleanup_passes, s->job.sub_passes);
    }
    if (rc == SL_AGAIN) {
        /* More to do: right after the loop has looked at the listener
         * again; a little later if a live process held a channel lock. */
        struct timeval tv = {0, s->job.busy != busy ? 10 * 1000 : 0};
        event_add(s->cleanup_ev, &tv);
        return false;
    }
    s->cleaning = false;
    if (i >= 0) {
        /* Shown while it runs only (review rs 4): the telemetry event
         * keeps the totals. */
        uatomic_set(&sl_shm->workers[i].cleanup_set_aside, 0);
        uatomic_set(&sl_shm->workers[i].cleanup_passes, 0);
    }
    return true;
}

static void cleanup_cb(evutil_socket_t fd, short what, void *arg)
{
    int i = (int)(intptr_t)arg;
    slot_t *s = &M.w[i];
    if (!s->cleaning || !cleanup_turn(s, i))
        return;
    if (sl_cluster && s->job.removed_subs)
        sl_cluster_presence_changed(); /* their presence entries go (with leaves) */
    if (s->job.removed_conns || s->job.removed_subs || s->job.rpcs || s->job.dead_waits)
        SL_TEL(SL_EV_CONNECTION_REMOVED, SL_WARN, SL_TF_I("worker", i),
               SL_TF_I("removed-connections", s->job.removed_conns),
               SL_TF_I("removed-subscriptions", s->job.removed_subs),
               SL_TF_I("settled-rpc-requests", s->job.rpcs),
               SL_TF_I("cleanup-us", sl_mono_us() - s->cleanup_started_us),
               SL_TF_I("steps", s->job.steps),
               SL_TF_I("busy-retries", s->job.busy - s->job.dead_waits),
               SL_TF_I("dead-lock-waits", s->job.dead_waits),
               SL_TF_I("dead-lock-wait-ms", s->cleanup_waited_ms),
               SL_TF_I("set-aside", s->job.set_aside),
               SL_TF_I("subscription-passes", s->job.sub_passes),
               SL_TF_S("reason", "worker died"));
    sl_tel_flush();
}

static void watch_broker(int64_t now, const int next[SL_QSBR_SLOTS]);

/* Queued sockets a stalled worker has not taken: give them to others. */
static void rescue_queued(int i)
{
    slot_t *s = &M.w[i];
    int fds[SL_PROC_FDS_MAX], got;
    char tag = SL_PROC_TAG_PUBLIC;
    while (s->peer >= 0 && (got = sl_proc_recv_fds(s->peer, fds, &tag)) > 0) {
        uatomic_add(&sl_shm->workers[i].pending_handoff, -got);
        for (int k = 0; k < got; k++)
            hand_off(fds[k], tag);
    }
}

/* STATUS= for systemd: serving, or which worker is stalled and what is
 * done about it.  Sent when it changes (and once ready). */
static void update_status(void)
{
    if (!M.ready_sent)
        return;
    char st[sizeof(M.status)];
    snprintf(st, sizeof(st), "STATUS=serving with %d workers", M.nworkers);
    for (int i = 0; i < M.nworkers; i++) {
        slot_t *s = &M.w[i];
        if (s->pid <= 0 || s->ending || !uatomic_read(&sl_shm->workers[i].stalled))
            continue;
        if (M.starved)
            snprintf(st, sizeof(st), "STATUS=worker %d stalled and could not be killed; "
                                     "watchdog not fed", i);
        else if (s->killed)
            snprintf(st, sizeof(st), "STATUS=worker %d stalled: killed, being replaced", i);
        else
            snprintf(st, sizeof(st), "STATUS=worker %d stalled (no progress for %lld ms): "
                                     "bypassed, killed after %lld ms", i,
                     (long long)sl_conf->worker_stall_ms, (long long)sl_conf->worker_stall_kill_ms);
        break;
    }
    if (strcmp(st, M.status) != 0) {
        memcpy(M.status, st, sizeof(st));
        sl_notify(st);
    }
}

/* The reader slot of the process `pid` (a live or ending worker of ours,
 * the broker, or the master), -1 for any other. */
static int slot_of_pid(pid_t pid)
{
    if (pid <= 0)
        return -1;
    if (pid == getpid())
        return SL_REG_MASTER_SLOT;
    if (pid == M.b.pid)
        return SL_REG_BROKER_SLOT;
    for (int k = 0; k < M.nworkers; k++)
        if (M.w[k].pid == pid)
            return k;
    return -1;
}

/* For each reader slot (a worker that is up, the master): the slot of the
 * process its lock wait is explained by, -1 for none - one look per slot
 * and watch pass, which also moves that slot's view (M.seen) on.
 * sl_lock_blocker names a lock's owner only if it has held the lock all
 * along since the wait began, or since our previous look: a wait for a
 * lock that others keep taking and releasing is explained by nobody - the
 * waiter is stopped or starved itself (review rf12, finding 1) - while a
 * waiter passed over when a hot lock changed hands is blocked by the new
 * owner from the second look on, if that owner keeps it.  The owner is
 * the kernel's record (the futex word), so a held lock never names
 * "nobody" (finding 4).  Lock-free reads: a stale view lasts one watch
 * period at most. */
static void look_at_waits(int next[SL_QSBR_SLOTS])
{
    sl_qsbr_t *q = &sl_shm->reg.qsbr;
    for (int k = 0; k < SL_QSBR_SLOTS; k++) {
        next[k] = -1;
        bool up = k == SL_REG_MASTER_SLOT || (k < M.nworkers && M.w[k].pid > 0 && !M.w[k].ending) ||
                  (k == SL_REG_BROKER_SLOT && M.b.pid > 0 && !M.b.ending);
        if (!up) {
            M.seen[k] = (sl_lock_view_t){0};
            continue;
        }
        next[k] = slot_of_pid(sl_lock_blocker(&q->holders[k], &M.seen[k]));
    }
}

/* The reader slot of the process worker i (or the broker: i =
 * SL_REG_BROKER_SLOT) is blocked by, following the
 * chain of waits (next[], look_at_waits) to its root, or -1 when i is held
 * up by nobody (then it is judged on its own progress).  A worker that is
 * ending (dumping core; the kernel hands its locks over when that ends)
 * is a root like any other: its waiters are blocked, not stalled (finding
 * 2).  The lock order has no cycle; a chain that loops anyway, or runs
 * longer than there are slots, names nobody. */
static int blocked_by(int i, const int next[SL_QSBR_SLOTS])
{
    int cur = i;
    for (int hops = 0; hops < SL_QSBR_SLOTS; hops++) {
        int slot = next[cur];
        if (slot < 0 || slot == cur)
            return cur == i ? -1 : cur;
        if (slot == i)
            return -1;
        cur = slot;
        if ((cur < M.nworkers && M.w[cur].ending) || (cur == SL_REG_BROKER_SLOT && M.b.ending))
            return cur; /* dead but not reaped: it waits for nothing */
    }
    return -1;
}

/* Shared memory so full that a stalled worker's hold on reclamation (its
 * reader slot keeps everything retired since it stopped in limbo) must end
 * now rather than at the kill bound. */
#define SL_SHM_PRESSURE 0.75

static bool shm_pressure(void)
{
    uint64_t total, used = sl_arena_used(sl_shm->reg.arena, &total);
    return (double)used >= SL_SHM_PRESSURE * (double)total;
}

/* The stall detector.  Progress is a worker's QSBR turn count, which moves
 * at the end of every loop turn; an idle worker ticks at least four times
 * per --worker-stall-ms (worker.c), so only a worker that really makes no
 * progress is found stalled, whatever the systemd watchdog's period.
 *
 * A worker blocked on a registry lock makes no progress either, but it is
 * not the culprit: the root holder of its chain of waits is (blocked_by).
 * It is "blocked", not stalled - it gets no new sockets (the queued ones go
 * to others) and its clock restarts, so it gets a full bound of its own
 * once it has the lock - while the holder is judged on its own progress:
 * stalled, then killed, which hands the lock (EOWNERDEAD) to a waiter.  So
 * one stopped worker holding a hot channel's lock costs its own clients
 * only, not those of every worker that publishes there.  "Blocked" lasts
 * only while the lock it waits for has not been released since its wait
 * began: a waiter stopped (or starved) while others take and release that
 * lock is held up by nobody and is judged on its own - stalled, killed -
 * whoever holds the lock when we look (review rf12, finding 1).  A root
 * that is ending (dumping core) keeps its waiters blocked: the kernel hands
 * its locks over when the dump ends, and killing them would free nothing
 * (finding 2) - that wait is as long as the dump, which we do not bound.
 *
 * A stalled worker gets no new sockets (the queued ones go to others);
 * after --worker-stall-kill-ms - or at once, with shared memory over 75%
 * full, since its reader slot holds back every reclamation - it is killed,
 * then cleaned up and replaced as any crash.  A worker that has ended but
 * is not reaped yet (a core dump may take seconds) is dead, not stalled:
 * SIGCHLD brings it to worker_died. */
static void watch_workers(void)
{
    int64_t now = sl_mono_ms();
    int root[SL_MAX_WORKERS], blocking[SL_MAX_WORKERS] = {0}, next[SL_QSBR_SLOTS];
    look_at_waits(next);
    for (int i = 0; i < M.nworkers; i++) {
        slot_t *s = &M.w[i];
        root[i] = -1;
        if (s->pid <= 0 || s->ending)
            continue;
        uint64_t t = sl_qsbr_turns(&sl_shm->reg.qsbr, i);
        if (t != s->turns) {
            s->turns = t;
            s->progress_ms = now;
        } else {
            root[i] = blocked_by(i, next);
        }
        if (root[i] >= 0 && root[i] < M.nworkers)
            blocking[root[i]]++;
    }
    bool pressure = shm_pressure();
    for (int i = 0; i < M.nworkers; i++) {
        slot_t *s = &M.w[i];
        sl_worker_stats_t *st = &sl_shm->workers[i];
        if (s->pid <= 0 || s->ending)
            continue;
        uint32_t was_blocked = uatomic_read(&st->blocked_by);
        if (root[i] >= 0) {
            /* Waiting for another live process's lock: not its own stall. */
            s->progress_ms = now;
            if (was_blocked != (uint32_t)root[i] + 1) {
                uatomic_set(&st->blocked_by, (uint32_t)root[i] + 1);
                if (!was_blocked)
                    rescue_queued(i);
            }
        } else if (was_blocked) {
            uatomic_set(&st->blocked_by, 0);
        }
        int64_t idle = now - s->progress_ms;
        if (idle < sl_conf->worker_stall_ms) {
            if (uatomic_read(&st->stalled)) {
                uatomic_set(&st->stalled, 0);
                SL_TEL(SL_EV_WORKER_RECOVERED, SL_WARN, SL_TF_I("worker", i),
                       SL_TF_I("pid", s->pid));
            }
            continue;
        }
        if (sl_proc_ending(s->pid)) {
            s->ending = true;
            uatomic_set(&st->stalled, 0);
            rescue_queued(i);
            continue;
        }
        if (!uatomic_read(&st->stalled)) {
            uatomic_set(&st->stalled_since_ms, sl_now_ms() - idle);
            uatomic_set(&st->stalled, 1);
            uatomic_add(&st->stalls, 1);
            SL_TEL(SL_EV_WORKER_STALLED, SL_ERROR_LEVEL, SL_TF_I("worker", i),
                   SL_TF_I("pid", s->pid), SL_TF_I("no-progress-ms", idle),
                   SL_TF_I("kill-after-ms", sl_conf->worker_stall_kill_ms),
                   SL_TF_I("blocking-workers", blocking[i]));
            rescue_queued(i);
        }
        bool overdue = idle >= sl_conf->worker_stall_kill_ms;
        if ((overdue || pressure) && !s->killed) {
            /* Its reader slot can only be released once it can no longer
             * read: killed, it is cleaned up and replaced as any crash. */
            s->killed = true;
            s->killed_ms = now;
            uatomic_add(&st->stall_kills, 1);
            SL_TEL(SL_EV_WORKER_STALLED, SL_ERROR_LEVEL, SL_TF_I("worker", i),
                   SL_TF_I("pid", s->pid), SL_TF_I("no-progress-ms", idle),
                   SL_TF_S("action", "killed"),
                   SL_TF_S("reason", overdue ? "no-progress" : "shared-memory"),
                   SL_TF_I("blocking-workers", blocking[i]));
            kill(s->pid, SIGKILL);
        }
    }
    watch_broker(now, next);
    update_status();
}

/* The systemd watchdog (WATCHDOG=1 every WATCHDOG_USEC/2) is fed from this
 * loop - so a master that is stuck starves it - as long as every stalled
 * worker is being handled: bypassed, then killed at --worker-stall-kill-ms.
 * It is starved only by a worker that was killed for stalling and is still
 * there (not even ending) --worker-stall-kill-ms after the kill: one the
 * kernel cannot kill (uninterruptible sleep), which only a restart of the
 * whole service can clear.  `due`: only if a period has passed since the
 * last feed (the lock wait hook); the timer feeds at every tick. */
static int64_t watchdog_period_us(void)
{
    return SL_MAX(M.watchdog_us / 2, 10 * 1000); /* WATCHDOG_USEC < 20 ms: no busy loop */
}

static void watchdog_feed(bool due)
{
    if (M.watchdog_us <= 0 || !M.ready_sent)
        return;
    int64_t now_us = sl_mono_us();
    if (due && now_us - M.watchdog_fed_us < watchdog_period_us())
        return;
    int64_t now = now_us / 1000;
    int stuck = -1;
    for (int i = 0; i < M.nworkers && stuck < 0; i++)
        if (M.w[i].pid > 0 && !M.w[i].ending && M.w[i].killed &&
            now - M.w[i].killed_ms > sl_conf->worker_stall_kill_ms)
            stuck = i;
    if (stuck < 0) {
        sl_notify("WATCHDOG=1");
        M.watchdog_fed_us = now_us;
        M.starved = false;
    } else if (!M.starved) {
        M.starved = true;
        SL_TEL(SL_EV_WORKER_STALLED, SL_ERROR_LEVEL, SL_TF_I("worker", stuck),
               SL_TF_I("pid", M.w[stuck].pid), SL_TF_S("action", "could not be killed"),
               SL_TF_S("watchdog", "not fed"));
        sl_tel_flush();
    }
    update_status();
}

static void watch_cb(evutil_socket_t fd, short what, void *arg)
{
    watch_workers();
    sl_tel_flush();
}

/* The reaper: a slice of the channel table per tick, a whole pass in
 * about half the linger time. */
typedef struct {
    int64_t now, now_us;
    uint64_t reaped;
} reap_t;

static int reap_one(sl_table_node_t *n, void *arg)
{
    reap_t *x = arg;
    sl_chan_t *c = (sl_chan_t *)n;
    /* Retained messages past the channel's history-ttl-ms go first (their
     * memory with them), so an idle channel can then be reaped too. */
    uint32_t dropped;
    sl_chan_expire(&sl_shm->reg, c, x->now_us, &dropped);
    if (sl_chan_reap(&sl_shm->reg, c, x->now, sl_conf->channel_linger_ms)) {
        x->reaped++;
        SL_TEL(SL_EV_CHANNEL_DELETED, SL_DEBUG, SL_TF_SN("channel-id", c->id, c->node.klen),
               SL_TF_S("reason", "empty"));
    }
    return 0;
}

static int64_t reap_tick_ms(void)
{
    return SL_MAX(50, SL_MIN(1000, sl_conf->channel_linger_ms / 8));
}

/* The RPC requests older than a minute, for /health and /stats: counted
 * by a slice of the RPC table per tick, a whole pass about every second,
 * so that no request walks the table. */
static void rpc_sweep(int64_t tick_ms)
{
    sl_table_t *t = sl_shm->reg.rpcs;
    uint32_t slice = (uint32_t)SL_MAX(64, (int64_t)t->nbuckets * tick_ms / 1000 + 1);
    M.rpc_cursor = sl_rpc_count_old(&sl_shm->reg, M.rpc_cursor, slice,
                                    sl_now_ms() - SL_RPC_OLD_MS, &M.rpc_old);
    if (M.rpc_cursor >= t->nbuckets) {
        uatomic_set(&sl_shm->rpc_old, M.rpc_old);
        M.rpc_cursor = 0;
        M.rpc_old = 0;
    }
}

static void reap_cb(evutil_socket_t fd, short what, void *arg)
{
    sl_table_t *t = sl_shm->reg.channels;
    int64_t tick = reap_tick_ms(), pass = SL_MAX(200, sl_conf->channel_linger_ms / 2);
    uint32_t slice = (uint32_t)SL_MAX(64, (int64_t)t->nbuckets * tick / pass + 1);
    reap_t x = {sl_mono_ms(), sl_mono_us(), 0};
    master_online();
    M.reap_cursor = sl_table_walk(t, M.reap_cursor, slice, reap_one, &x);
    if (M.reap_cursor >= t->nbuckets)
        M.reap_cursor = 0;
    rpc_sweep(tick);
    master_offline();
    if (x.reaped)
        uatomic_add(&sl_shm->channels_reaped, x.reaped);

    sl_tel_flush();
    struct timeval tv = {tick / 1000, (tick % 1000) * 1000};
    event_add(M.reap_ev, &tv);
}

static int spawn_broker(void)
{
    pid_t pid = fork_blocked();
    if (pid < 0)
        return SL_ERROR;
    if (pid == 0) {
        child_signals(true);
        close_foreign_fds(-1);
        close(M.tel_r);
        close(M.tel_w);
        close(M.btel[0]);
        for (int j = 0; j < M.nworkers; j++) {
            close(M.wtel[j][0]);
            close(M.wtel[j][1]);
        }
        _exit(sl_broker_main(M.btel[1]));
    }
    M.broker = pid;
    M.broker_started = sl_mono_ms();
    M.b.pid = pid;
    M.b.turns = sl_qsbr_turns(&sl_shm->reg.qsbr, SL_REG_BROKER_SLOT);
    M.b.progress_ms = M.broker_started;
    M.b.killed = false;
    M.b.ending = false;
    uatomic_set(&sl_shm->broker.stalled, 0);
    return SL_OK;
}

static void broker_respawn_cb(evutil_socket_t fd, short what, void *arg)
{
    if (M.stopping || M.broker > 0)
        return;
    if (M.b.cleaning || spawn_broker() != SL_OK) {
        /* The last one's cleanup first (its locks, its claims). */
        struct timeval tv = {0, M.b.cleaning ? 10 * 1000 : 1000 * 1000};
        event_add(M.broker_ev, &tv);
        return;
    }
    uatomic_add(&sl_shm->broker.restarts, 1);
}

static void broker_cleanup_cb(evutil_socket_t fd, short what, void *arg)
{
    if (M.b.cleaning && cleanup_turn(&M.b, -1) && M.b.job.rpcs)
        SL_TEL(SL_EV_BROKER_EXITED, SL_WARN, SL_TF_I("settled-rpc-requests", M.b.job.rpcs),
               SL_TF_I("cleanup-us", sl_mono_us() - M.b.cleanup_started_us));
}

/* The broker died: what it had popped from its queue is lost with it, so
 * every worker is told (gen) to answer what it waits for with
 * broker-timeout now instead of at its deadline; requests still queued
 * wait for the next broker, which drops those past their deadline.  Like
 * a dead worker it is cleaned up in steps (sl_reg_cleanup_*, for reader
 * slot SL_REG_BROKER_SLOT): the locks it may have held are repaired -
 * a delivery or reset it was making is finished or undone - its reader
 * slot is released, and the RPC claims it held are taken over; the next
 * broker starts only then. */
static void broker_died(int status)
{
    int64_t lived = sl_mono_ms() - M.broker_started;
    M.broker = 0;
    M.b.pid = 0;
    uatomic_set(&sl_shm->broker.pid, 0);
    uatomic_set(&sl_shm->broker.stalled, 0);
    uatomic_set(&sl_shm->broker.blocked_by, 0); /* no broker waits (rg17 L5) */
    for (int i = 0; i < SL_BROKER_SHARDS; i++) {
        uatomic_set(&sl_shm->broker.link[i].connected, 0);
        uatomic_set(&sl_shm->broker.link[i].in_flight, 0);
        uatomic_set(&sl_shm->broker.link[i].subscribed, 0);
    }
    uatomic_add(&sl_shm->broker.gen, 1);
    sl_reg_cleanup_start(&M.b.job, SL_REG_BROKER_SLOT);
    M.b.cleaning = true;
    M.b.cleanup_started_us = sl_mono_us();
    struct timeval now = {0, 0};
    event_add(M.b.cleanup_ev, &now);
    for (int i = 0; i < M.nworkers; i++) {
        uint64_t one = 1;
        if (M.w[i].pid > 0 && write(sl_wake_fds[i], &one, sizeof(one)) < 0) {
        }
    }
    char how[64];
    if (WIFSIGNALED(status))
        snprintf(how, sizeof(how), "signal %d", WTERMSIG(status));
    else
        snprintf(how, sizeof(how), "exit %d", WEXITSTATUS(status));
    SL_TEL(SL_EV_BROKER_EXITED, M.stopping ? SL_INFO : SL_ERROR_LEVEL, SL_TF_S("status", how),
           SL_TF_I("lived-ms", lived));
    if (M.stopping)
        return;
    if (lived >= SL_STABLE_MS)
        M.broker_backoff_ms = 0;
    else
        M.broker_backoff_ms = M.broker_backoff_ms ? SL_MIN(M.broker_backoff_ms * 2, SL_RESPAWN_MAX_MS)
                                                  : SL_RESPAWN_MIN_MS;
    struct timeval tv = {M.broker_backoff_ms / 1000, (M.broker_backoff_ms % 1000) * 1000};
    event_add(M.broker_ev, &tv);
}

/* The broker's progress, watched like a worker's (the same bounds and
 * the same rule, watch_workers): a broker that stops - stopped, spinning,
 * stuck in a call - holds back every grace period of the node and answers
 * nobody; stalled, /health says so; after --worker-stall-kill-ms it is
 * killed and replaced.  A broker waiting for a registry lock that another
 * process holds all along (a stopped worker in a channel's lock, where
 * the broker delivers) is "blocked" by the root of that chain of waits,
 * not stalled: its clock restarts, and the holder is judged - killed -
 * on its own, which hands the lock over. */
static void watch_broker(int64_t now, const int next[SL_QSBR_SLOTS])
{
    slot_t *s = &M.b;
    sl_broker_stats_t *st = &sl_shm->broker;
    if (s->pid <= 0 || s->ending) {
        uatomic_set(&st->blocked_by, 0); /* not judged: not shown as waiting (rg17 L5) */
        return;
    }
    uint64_t t = sl_qsbr_turns(&sl_shm->reg.qsbr, SL_REG_BROKER_SLOT);
    int root = t != s->turns ? -1 : blocked_by(SL_REG_BROKER_SLOT, next);
    uatomic_set(&st->blocked_by, root >= 0 ? (uint32_t)root + 1 : 0);
    if (t != s->turns || root >= 0) {
        s->turns = t;
        s->progress_ms = now;
        if (uatomic_read(&st->stalled)) {
            uatomic_set(&st->stalled, 0);
            SL_TEL(SL_EV_WORKER_RECOVERED, SL_WARN, SL_TF_S("process", "broker"),
                   SL_TF_I("pid", s->pid));
        }
        return;
    }
    int64_t idle = now - s->progress_ms;
    if (idle < sl_conf->worker_stall_ms)
        return;
    if (sl_proc_ending(s->pid)) {
        s->ending = true; /* dead, not stalled: SIGCHLD brings it to broker_died */
        return;
    }
    if (!uatomic_read(&st->stalled)) {
        uatomic_set(&st->stalled_since_ms, sl_now_ms() - idle);
        uatomic_set(&st->stalled, 1);
        uatomic_add(&st->stalls, 1);
        SL_TEL(SL_EV_WORKER_STALLED, SL_ERROR_LEVEL, SL_TF_S("process", "broker"),
               SL_TF_I("pid", s->pid), SL_TF_I("no-progress-ms", idle),
               SL_TF_I("kill-after-ms", sl_conf->worker_stall_kill_ms));
    }
    if (idle >= sl_conf->worker_stall_kill_ms && !s->killed) {
        s->killed = true;
        s->killed_ms = now;
        uatomic_add(&st->stall_kills, 1);
        SL_TEL(SL_EV_WORKER_STALLED, SL_ERROR_LEVEL, SL_TF_S("process", "broker"),
               SL_TF_I("pid", s->pid), SL_TF_I("no-progress-ms", idle),
               SL_TF_S("action", "killed"));
        kill(s->pid, SIGKILL);
    }
}

static void finish_if_done(void);

static void sigchld_cb(evutil_socket_t sig, short what, void *arg)
{
    int status;
    pid_t pid;
    while ((pid = waitpid(-1, &status, WNOHANG)) > 0) {
        if (pid == M.upgrade_pid && pid > 0) {
            /* Gone before it was handed over: its end of the socketpair
             * reports it too (upgrade_ready_cb), which ends the upgrade. */
            M.upgrade_pid = 0;
            evtimer_del(M.upgrade_kill_ev);
            continue;
        }
        if (pid == M.logger) {
            M.logger = 0;
            if (!M.stopping) {
                M.logger = spawn_logger();
                uatomic_set(&sl_shm->logger_pid, M.logger);
            }
            continue;
        }
        if (pid == M.broker) {
            broker_died(status);
            continue;
        }
        for (int i = 0; i < M.nworkers; i++)
            if (M.w[i].pid == pid)
                worker_died(i, status);
    }
    sl_tel_flush();
    finish_if_done();
}

/* Done when every worker is gone, and a new master we started but never
 * handed over to is too (it is stopped with us: see stop_cb). */
static void finish_if_done(void)
{
    if (!M.stopping || M.upgrade_pid > 0)
        return;
    for (int i = 0; i < M.nworkers; i++)
        if (M.w[i].pid > 0)
            return;
    if (M.broker > 0) {
        /* The workers are gone: nothing can ask the broker anything. */
        kill(M.broker, SIGTERM);
        return;
    }
    event_base_loopbreak(M.base);
}

static void stop_timeout_cb(evutil_socket_t fd, short what, void *arg)
{
    for (int i = 0; i < M.nworkers; i++)
        if (M.w[i].pid > 0)
            kill(M.w[i].pid, SIGKILL);
    if (M.broker > 0)
        kill(M.broker, SIGKILL);
    if (M.upgrade_pid > 0)
        kill(M.upgrade_pid, SIGKILL);
}

static void upgrade_abandon(const char *why);

static void stop_cb(evutil_socket_t sig, short what, void *arg)
{
    if (M.stopping)
        return;
    /* A new master we started and have not handed over to stops with us:
     * the operator asked for a stop. */
    if (M.upgrade_ev && !M.upgraded)
        upgrade_abandon("the running master is stopping");
    M.stopping = true;
    SL_TEL(SL_EV_SERVER_STOPPING, SL_INFO,
           SL_TF_S("signal", M.upgraded ? "upgrade" : sig == SIGINT ? "SIGINT" : "SIGTERM"));
    sl_tel_flush();
    /* Not from an old master that handed over (MAINPID= was its last word)
     * nor from a new master never handed over (notify_ok is false). */
    if (!M.upgraded)
        notify_sure("STOPPING=1");
    event_del(M.watchdog_timer);
    event_del(M.accept_retry_ev);
    /* Closing our copy of a listener the new master (or systemd) also holds
     * loses nothing: connections waiting in its queue are theirs to accept. */
    for (int k = 0; k < M.nlfd; k++) {
        event_del(M.accept_evs[k]);
        close(M.lfds[k]);
        M.lfds[k] = -1;
    }
    for (int k = 0; k < M.nparked; k++)
        close(M.parked[k]);
    M.nparked = 0;
    for (int i = 0; i < M.nworkers; i++) {
        event_del(M.w[i].respawn_ev);
        if (M.w[i].pid > 0)
            kill(M.w[i].pid, SIGTERM);
    }
    if (M.broker_ev)
        event_del(M.broker_ev);
    struct timeval tv = {SL_STOP_GRACE_MS / 1000, 0};
    event_add(M.stop_ev, &tv);
    finish_if_done();
}

/* Written whole or not at all (a temporary file renamed over it), so a
 * reader never sees it empty; it names `pid` (ours, or at a hand-over the
 * new master's). */
static int write_pid_file_of(const char *path, pid_t pid)
{
    char tmp[sizeof(((sl_conf_t *)0)->pid_file) + 32];
    snprintf(tmp, sizeof(tmp), "%s.%d.tmp", path, (int)getpid());
    FILE *f = fopen(tmp, "w");
    if (f == NULL)
        return SL_ERROR;
    fprintf(f, "%d\n", (int)pid);
    if (fclose(f) != 0 || rename(tmp, path) != 0) {
        int e = errno;
        unlink(tmp);
        errno = e;
        return SL_ERROR;
    }
    return SL_OK;
}

static int write_pid_file(const char *path)
{
    return write_pid_file_of(path, getpid());
}

/* Unlink the pid file only while it is ours: after a binary upgrade it
 * names the new master. */
static void remove_pid_file(const char *path)
{
    FILE *f = fopen(path, "r");
    int pid = 0;
    if (f == NULL)
        return;
    if (fscanf(f, "%d", &pid) != 1)
        pid = 0;
    fclose(f);
    if (pid == (int)getpid())
        unlink(path);
}

/* A new session-ticket key every SL_TLS_TICKET_ROTATE_MS; tickets sealed
 * with the one before stay valid one more period. */
static void tickets_cb(evutil_socket_t fd, short what, void *arg)
{
    sl_tls_rotate_tickets();
}

/* SIGHUP: the logger reopens its file; every worker reopens the access
 * log if it was moved; the token keys are reread here (so that a respawned
 * worker inherits the new ones) and in every worker (each keeps its old
 * keys if its reload fails, and says why). */
/* SIGHUP: the logger reopens its file; the keys are reread here first, and
 * only what the master accepted is reloaded by the workers: the signal
 * carries the new keys' fingerprint (sigqueue), which each worker's reload
 * must reach, or 0 - the master's reload failed, keep the keys in use - so
 * every process stays on the same keys. */
static void sighup_cb(evutil_socket_t sig, short what, void *arg)
{
    if (M.logger > 0)
        kill(M.logger, SIGHUP);
    uint64_t fp = sl_session_reload_keys(0);
    /* The certificates the same way (here first: a respawned worker
     * inherits them), their fingerprint published with one store before
     * the signals (sigqueue orders it before the worker's read). */
    sl_tls_reload(0);
    uatomic_set(&sl_shm->tls_fingerprint, sl_tls_fingerprint());
    sl_tel_flush();
    union sigval v = {.sival_ptr = (void *)(uintptr_t)fp};
    for (int i = 0; i < M.nworkers; i++)
        if (M.w[i].pid > 0)
            sigqueue(M.w[i].pid, SIGHUP, v);
}

/* ---------------------------------------------------- listening sockets */

/* Is fd bound to one of the addresses host:port resolves to (as
 * listen_on resolves them)? */
static bool bound_to(int fd, const char *host, int port)
{
    struct sockaddr_storage ss;
    socklen_t len = sizeof(ss);
    if (getsockname(fd, (struct sockaddr *)&ss, &len) != 0)
        return false;
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM,
                             .ai_flags = AI_PASSIVE};
    struct addrinfo *res;
    char pstr[16];
    snprintf(pstr, sizeof(pstr), "%d", port);
    if (getaddrinfo(host, pstr, &hints, &res) != 0)
        return false;
    bool same = false;
    for (struct addrinfo *ai = res; ai && !same; ai = ai->ai_next) {
        if (ai->ai_family != ss.ss_family)
            continue;
        if (ss.ss_family == AF_INET) {
            const struct sockaddr_in *a = (const void *)&ss, *b = (const void *)ai->ai_addr;
            same = a->sin_port == b->sin_port && a->sin_addr.s_addr == b->sin_addr.s_addr;
        } else if (ss.ss_family == AF_INET6) {
            const struct sockaddr_in6 *a = (const void *)&ss, *b = (const void *)ai->ai_addr;
            same = a->sin6_port == b->sin6_port &&
                   memcmp(&a->sin6_addr, &b->sin6_addr, sizeof(a->sin6_addr)) == 0;
        }
    }
    freeaddrinfo(res);
    return same;
}

/* The k-th name of LISTEN_FDNAMES ("a:b:c") is "ops"? */
static bool fd_named_ops(const char *names, int k)
{
    for (; names && k > 0; k--) {
        names = strchr(names, ':');
        if (names)
            names++;
    }
    return names && strncmp(names, "ops", 3) == 0 && (names[3] == '\0' || names[3] == ':');
}

/* Listening sockets handed to us with the sd_listen_fds(3) protocol:
 * LISTEN_PID is our pid and descriptors 3 .. 3+LISTEN_FDS-1 listen.  Both
 * systemd socket activation and the binary upgrade use it.  Returns how
 * many were taken (0: none; bind ourselves).
 *
 * Which one is the --ops-listen listener: the one bound to the address and
 * port --ops-listen names; every other one is public.  A master handing its
 * listeners to a new binary names them "public" and "ops" in
 * LISTEN_FDNAMES (a socket unit may say FileDescriptorName=ops too): one
 * named "ops" that is not bound to --ops-listen (the setting changed, or was
 * removed) is closed, so that an operators' port never turns public. */
/* TCP_NODELAY on an inherited listener, to be inherited by the sockets
 * accepted from it, as for our own listeners.  A socket copies the flag
 * when its handshake completes, not at accept: the ones already queued
 * (systemd's listener without NoDelay=yes, the listener of a master from
 * before issue 19) keep Nagle on.  Returns how many of the next accepted
 * sockets need it set one by one: the queue's length read after the flag
 * is set (tcpi_unacked is a listener's accept queue; the queue is first
 * in, first out, and a count too high costs only a syscall each), 0 when
 * the socket is not TCP, -1 (all of them) when the queue cannot be read.
 * The queue is counted even when the flag was on already: the listener
 * outlives the process that set it (systemd holds it; an instance that set
 * it may have stopped before accepting what was queued, review rf19), so
 * the flag says nothing about the sockets waiting in it.  At most one
 * setsockopt per socket queued at start-up. */
static int listener_nodelay(int fd)
{
    int on = 0, one = 1;
    socklen_t len = sizeof(on);
    if (getsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &on, &len) != 0)
        return 0;
    if (!on && setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one)) != 0)
        return 0;
    struct tcp_info ti;
    len = sizeof(ti);
    if (getsockopt(fd, IPPROTO_TCP, TCP_INFO, &ti, &len) != 0 ||
        len < offsetof(struct tcp_info, tcpi_unacked) + sizeof(ti.tcpi_unacked))
        return -1;
    return ti.tcpi_unacked > INT_MAX ? -1 : (int)ti.tcpi_unacked;
}

static int take_inherited_listeners(char *err, size_t errsz)
{
    const sl_conf_t *cf = sl_conf;
    const char *pid = getenv("LISTEN_PID"), *nfds = getenv("LISTEN_FDS");
    const char *names = getenv("LISTEN_FDNAMES");
    int n = nfds ? atoi(nfds) : 0;
    if (pid == NULL || atol(pid) != (long)getpid() || n <= 0)
        return 0;
    if (n > SL_MAX_LISTEN) {
        snprintf(err, errsz, "LISTEN_FDS=%d: at most %d listening sockets can be served", n,
                 SL_MAX_LISTEN);
        return -1;
    }
    /* Every descriptor of the range is either served or closed: none stays
     * open unused in us, our children or a later exec (systemd would think
     * it served). */
    int listening = 0;
    for (int k = 0; k < n; k++) {
        int fd = 3 + k, yes = 0;
        socklen_t len = sizeof(yes);
        if (getsockopt(fd, SOL_SOCKET, SO_ACCEPTCONN, &yes, &len) != 0 || !yes) {
            sl_stderr(SL_LOG_WARNING, "inherited descriptor %d is not a listening socket: closed",
                      fd);
            close(fd);
            continue;
        }
        listening++;
        bool ops = cf->ops_port && bound_to(fd, cf->ops_host, cf->ops_port);
        if (!ops && fd_named_ops(names, k)) {
            sl_stderr(SL_LOG_WARNING, "inherited descriptor %d is an operator listener that "
                  "--ops-listen no longer names: closed", fd);
            close(fd);
            continue;
        }
        fcntl(fd, F_SETFD, FD_CLOEXEC);
        fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
        M.nodelay_left[M.nlfd] = listener_nodelay(fd);
        bool tls = !ops && (cf->tls || (cf->tls_port && bound_to(fd, cf->host, (int)cf->tls_port)));
        M.ltags[M.nlfd] = ops ? SL_PROC_TAG_OPS : tls ? SL_PROC_TAG_TLS : SL_PROC_TAG_PUBLIC;
        M.lfds[M.nlfd++] = fd;
    }
    /* Not for our children (nor a later exec of ours: it sets its own). */
    unsetenv("LISTEN_PID");
    unsetenv("LISTEN_FDS");
    unsetenv("LISTEN_FDNAMES");
    if (listening == 0) {
        snprintf(err, errsz, "LISTEN_FDS=%d: none of the inherited descriptors is a listening "
                             "socket", n);
        return -1;
    }
    return M.nlfd;
}

/* What we serve, as the kernel says ("127.0.0.1:8080 [::1]:9100 (ops)"):
 * inherited listeners may differ from --host/--port. */
static void listeners_str(char *buf, size_t size)
{
    size_t used = 0;
    buf[0] = '\0';
    for (int k = 0; k < M.nlfd && used < size; k++) {
        struct sockaddr_storage ss;
        socklen_t len = sizeof(ss);
        char host[INET6_ADDRSTRLEN] = "?";
        int port = 0;
        if (M.lfds[k] < 0 || getsockname(M.lfds[k], (struct sockaddr *)&ss, &len) != 0)
            continue;
        if (ss.ss_family == AF_INET) {
            const struct sockaddr_in *a = (const void *)&ss;
            inet_ntop(AF_INET, &a->sin_addr, host, sizeof(host));
            port = ntohs(a->sin_port);
        } else if (ss.ss_family == AF_INET6) {
            const struct sockaddr_in6 *a = (const void *)&ss;
            inet_ntop(AF_INET6, &a->sin6_addr, host, sizeof(host));
            port = ntohs(a->sin6_port);
        }
        int w = snprintf(buf + used, size - used, ss.ss_family == AF_INET6 ? "%s[%s]:%d%s" : "%s%s:%d%s",
                         used ? " " : "", host, port,
                         M.ltags[k] == SL_PROC_TAG_OPS   ? " (ops)"
                         : M.ltags[k] == SL_PROC_TAG_TLS ? " (tls)"
                                                         : "");
        used += w > 0 ? (size_t)w : 0;
    }
}

static bool have_listener(char tag)
{
    for (int k = 0; k < M.nlfd; k++)
        if (M.ltags[k] == tag)
            return true;
    return false;
}

/* Bind what was not inherited: the public listener (--host/--port) unless
 * some public one was, and the --ops-listen one. */
static int bind_listeners(char *err, size_t errsz)
{
    const sl_conf_t *cf = sl_conf;
    struct {
        char tag;
        const char *what, *host;
        int port;
    } want[] = {{cf->tls ? SL_PROC_TAG_TLS : SL_PROC_TAG_PUBLIC, "--host/--port", cf->host,
                 cf->port},
                {SL_PROC_TAG_OPS, "--ops-listen", cf->ops_host, cf->ops_port},
                {SL_PROC_TAG_TLS, "--tls-port", cf->host, (int)cf->tls_port}};
    for (size_t i = 0; i < SL_ARRAY_LEN(want); i++) {
        if (want[i].port == 0 || have_listener(want[i].tag))
            continue;
        if (M.nlfd >= SL_MAX_LISTEN) {
            snprintf(err, errsz, "more than %d listening sockets", SL_MAX_LISTEN);
            return SL_ERROR;
        }
        int fd = listen_on(want[i].what, want[i].host, want[i].port, err, errsz);
        if (fd < 0)
            return SL_ERROR;
        M.ltags[M.nlfd] = want[i].tag;
        M.lfds[M.nlfd++] = fd;
    }
    return SL_OK;
}

/* -------------------------------------------- binary upgrade (SIGUSR2) */

/*
 * The hand-over, over a socketpair (SENTE_UPGRADE_FD in the new master):
 *
 *   old master (A)                        new master (B)
 *   fork, exec B on the same listeners    starts its workers; does not accept,
 *                                         writes no pid file, says nothing to
 *                                         systemd, refuses SIGUSR2
 *                                         all workers up: accepts, sends 'R'
 *   'R': MAINPID=B to systemd, 'H' to B
 *   stops accepting, drains, exits;       'H': writes the pid file, READY=1
 *   says nothing more to systemd          with MAINPID and STATUS, feeds the
 *                                         watchdog
 *
 * So every notification comes from systemd's main process (the unit ships
 * NotifyAccess=main), and B never speaks for the service before it is it:
 * when A gives up (B's workers not up in SL_UPGRADE_TIMEOUT_MS, B gone, A
 * stopped meanwhile) it stops B - SIGTERM, SIGKILL SL_UPGRADE_KILL_MS later
 * - and B ends without a word to systemd; A goes on, its pid file intact.
 * Between 'R' and 'H' both masters accept on the shared listeners.
 */

static void upgrade_kill_cb(evutil_socket_t fd, short what, void *arg)
{
    if (M.upgrade_pid > 0)
        kill(M.upgrade_pid, SIGKILL); /* not reaped yet: still ours, never a reused pid */
}

static void upgrade_abandon(const char *why)
{
    SL_TEL(SL_EV_SERVER_UPGRADE_FAILED, SL_ERROR_LEVEL,
           SL_TF_S("reason", why), SL_TF_I("new-master", M.upgrade_pid));
    sl_tel_flush();
    sl_stderr(SL_LOG_ERR, "binary upgrade failed: %s; the running master goes on", why);
    if (M.upgrade_pid > 0) {
        /* Kept until reaped (sigchld_cb): a new master stuck in its loop is
         * killed, and we wait for it when we stop ourselves. */
        kill(M.upgrade_pid, SIGTERM);
        struct timeval tv = {SL_UPGRADE_KILL_MS / 1000, (SL_UPGRADE_KILL_MS % 1000) * 1000};
        evtimer_add(M.upgrade_kill_ev, &tv);
    }
    if (M.upgrade_ev) {
        event_free(M.upgrade_ev);
        M.upgrade_ev = NULL;
    }
    if (M.upgrade_fd >= 0)
        close(M.upgrade_fd);
    M.upgrade_fd = -1;
    evtimer_del(M.upgrade_timer);
    /* Still ours (the new master writes it only once handed over). */
    if (sl_conf->pid_file[0] && !M.stopping && write_pid_file(sl_conf->pid_file) != SL_OK)
        sl_stderr(SL_LOG_ERR, "cannot write --pid-file %s: %s", sl_conf->pid_file,
                  strerror(errno));
}

static void stop_cb(evutil_socket_t sig, short what, void *arg);

/* The new master sent 'R' (its workers are up) or closed its end (it died
 * or gave up): hand over, or go on as if nothing happened. */
static void upgrade_ready_cb(evutil_socket_t fd, short what, void *arg)
{
    char ch = 0;
    ssize_t n = read(fd, &ch, 1);
    if (n < 0 && (errno == EAGAIN || errno == EINTR))
        return;
    if (n != 1 || ch != 'R' || M.upgrade_pid <= 0) {
        upgrade_abandon("the new master exited before its workers were up");
        return;
    }
    evtimer_del(M.upgrade_timer);
    char msg[64];
    snprintf(msg, sizeof(msg), "MAINPID=%d", (int)M.upgrade_pid);
    notify_sure(msg); /* systemd follows the new master from now on */
    M.notify_ok = false; /* ...and that was our last word to it */
    /* The pid file names it from this instant (it writes it too, once it
     * reads 'H'), so there is no moment without a live pid in it. */
    if (sl_conf->pid_file[0] && write_pid_file_of(sl_conf->pid_file, M.upgrade_pid) != SL_OK)
        sl_stderr(SL_LOG_ERR, "cannot write --pid-file %s: %s", sl_conf->pid_file,
                  strerror(errno));
    if (write(M.upgrade_fd, "H", 1) != 1)
        sl_stderr(SL_LOG_ERR, "the new master went away during the hand-over: %s",
                  strerror(errno));
    event_free(M.upgrade_ev);
    M.upgrade_ev = NULL;
    close(M.upgrade_fd);
    M.upgrade_fd = -1;
    M.upgrade_pid = 0; /* the service's master now: not ours to stop or wait for */
    M.upgraded = true;
    stop_cb(SIGTERM, 0, NULL); /* stop accepting, close 1001, drain */
}

static void upgrade_timeout_cb(evutil_socket_t fd, short what, void *arg)
{
    upgrade_abandon("the new master's workers were not up in time");
}

/* In the forked child: put the listeners at 3 .. 3+n-1 and our end of the
 * hand-over socketpair after them, describe them in the environment, and
 * exec the binary found at the path we were started from (the new
 * version, once installed). */
static void exec_new_master(int handover)
{
    int n = 0, tmp[SL_MAX_LISTEN + 1];
    for (int k = 0; k < M.nlfd; k++)
        if (M.lfds[k] >= 0)
            tmp[n++] = fcntl(M.lfds[k], F_DUPFD, 3 + SL_MAX_LISTEN + 1);
    tmp[n] = fcntl(handover, F_DUPFD, 3 + SL_MAX_LISTEN + 1);
    for (int k = 0; k <= n; k++) {
        if (tmp[k] < 0 || dup2(tmp[k], 3 + k) < 0)
            _exit(127);
        close(tmp[k]);
    }
    /* Names (sd_listen_fds_with_names(3)) tell the new master which one is
     * the ops listener even if its --ops-listen changed meanwhile. */
    char names[SL_MAX_LISTEN * 7 + 1] = "";
    for (int k = 0, j = 0; k < M.nlfd; k++)
        if (M.lfds[k] >= 0)
            snprintf(names + strlen(names), sizeof(names) - strlen(names), "%s%s", j++ ? ":" : "",
                     M.ltags[k] == SL_PROC_TAG_OPS ? "ops" : "public");
    setenv("LISTEN_FDNAMES", names, 1);
    char v[32];
    snprintf(v, sizeof(v), "%d", n);
    setenv("LISTEN_FDS", v, 1);
    snprintf(v, sizeof(v), "%d", (int)getpid());
    setenv("LISTEN_PID", v, 1);
    if (getenv("WATCHDOG_USEC"))
        setenv("WATCHDOG_PID", v, 1);
    snprintf(v, sizeof(v), "%d", 3 + n);
    setenv("SENTE_UPGRADE_FD", v, 1);
    child_signals(false);
    execv(sl_exe, sl_argv);
    sl_stderr(SL_LOG_ERR, "cannot execute %s: %s", sl_exe, strerror(errno));
    _exit(127);
}

/* SIGUSR2: start the new binary beside us on the same listening sockets
 * (see the hand-over above).  Refused while we stop, while an upgrade is
 * under way (or its abandoned new master has not exited yet), and while we
 * are ourselves a new master not handed over yet: one master always owns
 * the service. */
static void upgrade_cb(evutil_socket_t sig, short what, void *arg)
{
    const char *no = M.stopping                          ? "stopping"
                     : M.parent_fd >= 0                  ? "this master is not handed over yet"
                     : M.upgrade_ev || M.upgrade_pid > 0 ? "an upgrade is already under way"
                     : sl_exe[0] == '\0' || sl_argv == NULL
                         ? "the path of the running binary is unknown (/proc/self/exe)"
                         : NULL;
    if (no) {
        sl_stderr(SL_LOG_WARNING, "SIGUSR2 ignored: %s", no);
        return;
    }
    int sv[2];
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0)
        return;
    pid_t pid = fork_blocked();
    if (pid < 0) {
        close(sv[0]);
        close(sv[1]);
        return;
    }
    if (pid == 0) {
        close(sv[0]);
        exec_new_master(sv[1]);
    }
    close(sv[1]);
    M.upgrade_pid = pid;
    M.upgrade_fd = sv[0];
    M.upgrade_ev = event_new(M.base, sv[0], EV_READ | EV_PERSIST, upgrade_ready_cb, NULL);
    event_add(M.upgrade_ev, NULL);
    struct timeval tv = {SL_UPGRADE_TIMEOUT_MS / 1000, 0};
    evtimer_add(M.upgrade_timer, &tv);
    SL_TEL(SL_EV_SERVER_UPGRADING, SL_INFO, SL_TF_I("new-master", pid),
           SL_TF_S("binary", sl_exe));
    sl_tel_flush();
}

/* ------------------------------------------------- readiness, watchdog */

static void watchdog_cb(evutil_socket_t fd, short what, void *arg)
{
    watchdog_feed(false);
}

/* Every worker started (it published its pid) and not stalled (a slow
 * start may have been taken for a stall: its flag clears once the watch
 * sees it move). */
static bool all_workers_up(void)
{
    watch_workers();
    for (int i = 0; i < M.nworkers; i++)
        if (M.w[i].pid <= 0 || uatomic_read(&sl_shm->workers[i].pid) != M.w[i].pid ||
            uatomic_read(&sl_shm->workers[i].stalled))
            return false;
    return true;
}

/* We are the service's master now: the pid file, READY=1, the watchdog. */
static void become_main(void)
{
    M.notify_ok = true;
    if (sl_conf->pid_file[0] && M.new_master && write_pid_file(sl_conf->pid_file) != SL_OK)
        sl_stderr(SL_LOG_ERR, "cannot write --pid-file %s: %s", sl_conf->pid_file,
                  strerror(errno));
    char msg[128];
    snprintf(msg, sizeof(msg), "READY=1\nMAINPID=%d\nSTATUS=serving with %d workers",
             (int)getpid(), M.nworkers);
    notify_sure(msg);
    snprintf(M.status, sizeof(M.status), "STATUS=serving with %d workers", M.nworkers);
    M.ready_sent = true;
    if (M.watchdog_us > 0) {
        int64_t period = watchdog_period_us();
        struct timeval tv = {period / 1000000, period % 1000000};
        watchdog_feed(false);
        event_add(M.watchdog_timer, &tv);
    }
}

/* As a new master: the old one's answer to our 'R'. */
static void handover_cb(evutil_socket_t fd, short what, void *arg)
{
    char ch = 0;
    ssize_t n = read(fd, &ch, 1);
    if (n < 0 && (errno == EAGAIN || errno == EINTR))
        return;
    event_free(M.parent_ev);
    M.parent_ev = NULL;
    close(M.parent_fd);
    M.parent_fd = -1;
    if (n == 1 && ch == 'H') {
        become_main();
        return;
    }
    /* The old master gave up on us (or is gone): we never were the
     * service, and stop without a word to systemd. */
    sl_stderr(SL_LOG_ERR, "not handed over by the running master: stopping");
    stop_cb(SIGTERM, 0, NULL);
}

/* Every worker up: become the service's master - or, started by an older
 * master, start accepting and tell it so (it then hands over). */
static void ready_cb(evutil_socket_t fd, short what, void *arg)
{
    if (M.stopping)
        return;
    if (!all_workers_up()) {
        struct timeval tv = {0, 20 * 1000};
        evtimer_add(M.ready_timer, &tv);
        return;
    }
    if (M.parent_fd < 0) {
        become_main();
        return;
    }
    /* Not before: a connection taken while our workers are not up would
     * wait for them, or fail with them. */
    for (int k = 0; k < M.nlfd; k++)
        event_add(M.accept_evs[k], NULL);
    if (write(M.parent_fd, "R", 1) != 1) {
    } /* gone: its end's EOF stops us (handover_cb) */
    M.parent_ev = event_new(M.base, M.parent_fd, EV_READ | EV_PERSIST, handover_cb, NULL);
    event_add(M.parent_ev, NULL);
}

/* --channel NAME[:...]: created before the workers start, so they exist
 * from the first connection on. */
static int create_predefined_channels(void)
{
    sl_reg_t *r = &sl_shm->reg;
    int rc = SL_OK;
    master_online();
    for (int i = 0; i < sl_conf->nchannels; i++) {
        const sl_conf_channel_t *ch = &sl_conf->channels[i];
        sl_chan_config_t cfg = {.max_subscribers = ch->max_subscribers,
                                .message_retention = ch->message_retention,
                                .rpc_timeout_ms = ch->rpc_timeout_ms,
                                .history_ttl_ms = ch->history_ttl_ms,
                                .telemetry_enabled = true,
                                .join_leave = ch->join_leave > 0};
        sl_chan_t *c;
        int crc = sl_chan_create(r, ch->name, strlen(ch->name), &cfg, &c);
        if (crc == SL_CHAN_NO_MEMORY || crc == SL_CHAN_TOO_MANY) {
            sl_stderr(SL_LOG_ERR, "%s too small for --channel %s",
                    crc == SL_CHAN_TOO_MANY ? "--max-channels" : "--shm-size", ch->name);
            rc = SL_ERROR;
            break;
        }
        if (crc == SL_CHAN_CREATED)
            SL_TEL(SL_EV_CHANNEL_CREATED, SL_INFO, SL_TF_S("channel-id", ch->name),
                   SL_TF_S("by", "--channel"), SL_TF_I("max-subscribers", cfg.max_subscribers),
                   SL_TF_I("message-retention", cfg.message_retention));
    }
    master_offline();
    return rc;
}

/* A server anyone on the network can reach says at start (once) what
 * anyone may do there: with no key and no namespace, everything on every
 * channel; without --ops-listen, read the operators' endpoints (/stats,
 * /metrics, /channels, /health, /dashboard: figures, configuration, pids;
 * who is connected only with the admin token). */
static void warn_if_open(void)
{
    bool loopback = true;
    for (int k = 0; k < M.nlfd && loopback; k++) {
        struct sockaddr_storage ss;
        socklen_t len = sizeof(ss);
        if (M.ltags[k] == SL_PROC_TAG_OPS ||
            getsockname(M.lfds[k], (struct sockaddr *)&ss, &len) != 0)
            continue;
        if (ss.ss_family == AF_INET)
            loopback = (ntohl(((struct sockaddr_in *)&ss)->sin_addr.s_addr) >> 24) == 127;
        else if (ss.ss_family == AF_INET6)
            loopback = IN6_IS_ADDR_LOOPBACK(&((struct sockaddr_in6 *)&ss)->sin6_addr);
        else
            loopback = ss.ss_family == AF_UNIX;
    }
    if (loopback)
        return;
    if (!sl_perm_active())
        SL_TEL(SL_EV_OPEN_ACCESS, SL_WARN, SL_TF_S("host", sl_conf->host),
               SL_TF_I("port", sl_conf->port), SL_TF_S("scope", "channels"),
               SL_TF_S("message", "listening beyond loopback with no token key and no namespace: "
                                  "every client may subscribe, publish and answer RPC on every "
                                  "channel (see --jwt-secret-file, --namespace)"));
    if (sl_conf->ops_port == 0)
        SL_TEL(SL_EV_OPEN_ACCESS, SL_WARN, SL_TF_S("host", sl_conf->host),
               SL_TF_I("port", sl_conf->port), SL_TF_S("scope", "operator-endpoints"),
               SL_TF_S("message", "listening beyond loopback without --ops-listen: every client "
                                  "may read /stats, /metrics, /channels, /health and /dashboard "
                                  "(who is connected only with the admin token); see "
                                  "--ops-listen"));
}

/* --redis: this node's name, the broker's queue and wake-up, its pipe. */
static int cluster_setup(void)
{
    sl_broker_stats_t *b = &sl_shm->broker;
    if (sl_conf->node_id[0]) {
        if (strchr(sl_conf->node_id, '.') || strchr(sl_conf->node_id, ':')) {
            fprintf(stderr, "sente-lite: --node-id may not contain '.' or ':'\n");
            return SL_ERROR;
        }
        snprintf(b->node_id, sizeof(b->node_id), "%.31s", sl_conf->node_id);
    } else {
        /* Random: a restarted node is a new node (its old entries expire). */
        static const char abc[] = "0123456789abcdefghijklmnopqrstuvwxyz";
        uint8_t rnd[8];
        if (getrandom(rnd, sizeof(rnd), 0) != (ssize_t)sizeof(rnd))
            for (int i = 0; i < 8; i++)
                rnd[i] = (uint8_t)(sl_mono_us() >> (3 * i));
        for (int i = 0; i < 8; i++)
            b->node_id[i] = abc[rnd[i] % 36];
        b->node_id[8] = '\0';
    }
    /* Ids made here end in ".<node>" (conn-…, req-…): any node can tell
     * whose connection or request an id names. */
    snprintf(sl_shm->reg.id_suffix, sizeof(sl_shm->reg.id_suffix), ".%.8s", b->node_id);
    sl_shm->reg.presence_remote = 1;
    b->queue = sl_arena_alloc(sl_shm->reg.arena, sizeof(sl_inbox_t));
    if (b->queue == NULL || sl_inbox_init(b->queue) != SL_OK) {
        fprintf(stderr, "sente-lite: --shm-size too small for the broker's queue\n");
        return SL_ERROR;
    }
    sl_broker_wake_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (sl_broker_wake_fd < 0 || pipe2(M.btel, O_CLOEXEC) != 0) {
        fprintf(stderr, "sente-lite: cannot create the broker's eventfd or pipe: %s\n",
                strerror(errno));
        return SL_ERROR;
    }
    fcntl(M.btel[1], F_SETPIPE_SZ, 1 << 20);
    return SL_OK;
}

int sl_master_run(void)
{
    const sl_conf_t *cf = sl_conf;
    char err[512];
    memset(&M, 0, sizeof(M));
    M.nworkers = cf->workers;
    M.btel[0] = M.btel[1] = -1;
    M.upgrade_fd = M.parent_fd = -1;
    M.spare_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
    raise_fd_limit();
    M.notify_ok = true;
    for (int i = 0; i < SL_MAX_WORKERS; i++)
        M.w[i].ctl = M.w[i].peer = -1;

    signal(SIGPIPE, SIG_IGN);
    notify_init();
    /* Started by an older master (SIGUSR2): the socketpair of the
     * hand-over; until it is done we are not the service. */
    const char *ufd = getenv("SENTE_UPGRADE_FD");
    if (ufd) {
        M.parent_fd = atoi(ufd);
        if (M.parent_fd < 3 || fcntl(M.parent_fd, F_SETFD, FD_CLOEXEC) != 0)
            M.parent_fd = -1;
        unsetenv("SENTE_UPGRADE_FD");
        M.new_master = M.parent_fd >= 0;
        M.notify_ok = !M.new_master;
    }
    int got = take_inherited_listeners(err, sizeof(err));
    if (got < 0) {
        sl_stderr(SL_LOG_ERR, "%s", err);
        return 1;
    }
    M.inherited = got > 0;
    if (bind_listeners(err, sizeof(err)) != SL_OK) {
        sl_stderr(SL_LOG_ERR, "%s", err);
        return 1;
    }
    if (sl_shm_create((size_t)cf->shm_size, (uint32_t)cf->workers,
                      (uint64_t)cf->max_connections, (uint64_t)cf->max_channels) != SL_OK) {
        if (errno == EINVAL)
            sl_stderr(SL_LOG_ERR, "--shm-size %lld is too small for --max-connections "
                  "%lld and --max-channels %lld", (long long)cf->shm_size,
                    (long long)cf->max_connections, (long long)cf->max_channels);
        else
            sl_stderr(SL_LOG_ERR, "cannot map %lld bytes of shared memory (--shm-size): "
                  "%s", (long long)cf->shm_size, strerror(errno));
        return 1;
    }
    sl_arena_set_owner(SL_MAX_WORKERS); /* the master's own slab pages */
    /* Our reader slot (offline except while we work in the registry) and
     * our lock-holder record. */
    sl_qsbr_register(&sl_shm->reg.qsbr, SL_REG_MASTER_SLOT);
    sl_qsbr_offline(&sl_shm->reg.qsbr, SL_REG_MASTER_SLOT);
    sl_shm->start_ms = sl_now_ms();
    sl_shm->master_pid = getpid();
    if (sl_tls_enabled())
        sl_tls_rotate_tickets(); /* the first key, before any worker exists */
    uatomic_set(&sl_shm->tls_fingerprint, sl_tls_fingerprint());
    /* One eventfd per worker: whoever fills a worker's inbox wakes it.
     * Created before any fork so every worker (and respawn) inherits all. */
    for (int i = 0; i < cf->workers; i++) {
        sl_wake_fds[i] = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
        if (sl_wake_fds[i] < 0) {
            sl_stderr(SL_LOG_ERR, "cannot create an eventfd: %s", strerror(errno));
            return 1;
        }
    }

    sl_cluster = cf->nredis > 0;
    if (sl_cluster && cluster_setup() != SL_OK)
        return 1;

    int p[2];
    if (pipe2(p, O_CLOEXEC) != 0) {
        sl_stderr(SL_LOG_ERR, "cannot create the telemetry pipe: %s", strerror(errno));
        return 1;
    }
    M.tel_r = p[0];
    M.tel_w = p[1];
    /* A pipe per worker slot: each has one writer at a time, so batches of
     * any size never interleave (sl_tel.h).  A respawned worker inherits its
     * slot's write end from us. */
    for (int i = 0; i < cf->workers; i++) {
        if (pipe2(M.wtel[i], O_CLOEXEC) != 0) {
            sl_stderr(SL_LOG_ERR, "cannot create a telemetry pipe: %s", strerror(errno));
            return 1;
        }
        fcntl(M.wtel[i][1], F_SETPIPE_SZ, 1 << 20);
    }
    /* A larger pipe absorbs bursts before anything is dropped; the kernel
     * caps it at /proc/sys/fs/pipe-max-size, and failing is harmless. */
    fcntl(M.tel_w, F_SETPIPE_SZ, 1 << 20);
    /* A new master writes it once handed over (become_main). */
    if (cf->pid_file[0] && !M.new_master && write_pid_file(cf->pid_file) != SL_OK) {
        sl_stderr(SL_LOG_ERR, "cannot write --pid-file %s: %s", cf->pid_file,
                strerror(errno));
        return 1;
    }

    M.base = event_base_new();
    if (M.base == NULL) {
        if (cf->pid_file[0])
            remove_pid_file(cf->pid_file);
        return 1;
    }
    M.logger = spawn_logger();
    if (M.logger < 0) {
        sl_stderr(SL_LOG_ERR, "cannot fork the logger: %s", strerror(errno));
        if (cf->pid_file[0])
            remove_pid_file(cf->pid_file);
        return 1;
    }
    sl_shm->logger_pid = M.logger;
    sl_proc_title("sente-lite: master");
    sl_tel_init(M.tel_w, -1, &sl_shm->master_tel, cf->telemetry, cf->log_level);
    SL_TEL(SL_EV_SERVER_STARTING, SL_INFO, SL_TF_S("host", cf->host), SL_TF_I("port", cf->port),
           SL_TF_I("workers", cf->workers), SL_TF_S("version", SL_VERSION));
    if (create_predefined_channels() != SL_OK) {
        if (cf->pid_file[0])
            remove_pid_file(cf->pid_file);
        return 1; /* the logger ends at the pipe's EOF, with us */
    }
    sl_tel_flush();

    struct event *sigs[5] = {
        evsignal_new(M.base, SIGTERM, stop_cb, NULL),
        evsignal_new(M.base, SIGINT, stop_cb, NULL),
        evsignal_new(M.base, SIGHUP, sighup_cb, NULL),
        evsignal_new(M.base, SIGCHLD, sigchld_cb, NULL),
        evsignal_new(M.base, SIGUSR2, upgrade_cb, NULL),
    };
    for (int i = 0; i < 5; i++)
        event_add(sigs[i], NULL);
    for (int k = 0; k < M.nlfd; k++)
        M.accept_evs[k] =
            event_new(M.base, M.lfds[k], EV_READ | EV_PERSIST, accept_cb, (void *)(intptr_t)k);
    M.accept_retry_ev = evtimer_new(M.base, accept_retry_cb, NULL);
    M.stop_ev = evtimer_new(M.base, stop_timeout_cb, NULL);
    if (cf->nredis > 0) {
        M.broker_ev = evtimer_new(M.base, broker_respawn_cb, NULL);
        M.b.cleanup_ev = evtimer_new(M.base, broker_cleanup_cb, NULL);
        if (spawn_broker() != SL_OK) {
            fprintf(stderr, "sente-lite: cannot start the broker: %s\n", strerror(errno));
            return 1;
        }
    }
    M.upgrade_timer = evtimer_new(M.base, upgrade_timeout_cb, NULL);
    M.upgrade_kill_ev = evtimer_new(M.base, upgrade_kill_cb, NULL);
    M.ready_timer = evtimer_new(M.base, ready_cb, NULL);
    M.watchdog_timer = event_new(M.base, -1, EV_PERSIST, watchdog_cb, NULL);
    M.watch_ev = event_new(M.base, -1, EV_PERSIST, watch_cb, NULL);
    M.reap_ev = evtimer_new(M.base, reap_cb, NULL);
    M.tickets_ev = event_new(M.base, -1, EV_PERSIST, tickets_cb, NULL);
    if (sl_tls_enabled()) {
        struct timeval ttv = {SL_TLS_TICKET_ROTATE_MS / 1000, 0};
        event_add(M.tickets_ev, &ttv);
    }
    int64_t wms = SL_MAX(10, SL_MIN(250, cf->worker_stall_ms / 4)), rms = reap_tick_ms();
    struct timeval wtv = {wms / 1000, (wms % 1000) * 1000}, rtv = {rms / 1000, (rms % 1000) * 1000};
    event_add(M.watch_ev, &wtv);
    event_add(M.reap_ev, &rtv);
    for (int i = 0; i < M.nworkers; i++) {
        M.w[i].respawn_ev = evtimer_new(M.base, respawn_cb, (void *)(intptr_t)i);
        M.w[i].cleanup_ev = evtimer_new(M.base, cleanup_cb, (void *)(intptr_t)i);
        if (spawn_worker(i) != SL_OK) {
            sl_stderr(SL_LOG_ERR, "cannot start worker %d: %s", i, strerror(errno));
            stop_cb(SIGTERM, 0, NULL);
            break;
        }
    }
    if (!M.stopping) {
        /* A new master accepts once its workers are up (ready_cb). */
        for (int k = 0; k < M.nlfd && !M.new_master; k++)
            event_add(M.accept_evs[k], NULL);
        warn_if_open();
        char addrs[SL_MAX_LISTEN * 64];
        listeners_str(addrs, sizeof(addrs));
        SL_TEL(SL_EV_SERVER_STARTED, SL_INFO, SL_TF_S("host", cf->host),
               SL_TF_I("port", cf->port), SL_TF_I("workers", cf->workers),
               SL_TF_I("pid", getpid()), SL_TF_I("listeners", M.nlfd),
               SL_TF_S("listening", addrs), SL_TF_B("inherited", M.inherited));
        sl_tel_flush();
        ready_cb(-1, 0, NULL);
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
    if (M.btel[0] >= 0) {
        close(M.btel[0]);
        close(M.btel[1]);
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
        remove_pid_file(cf->pid_file);
    for (int i = 0; i < 5; i++)
        event_free(sigs[i]);
    for (int k = 0; k < M.nlfd; k++)
        event_free(M.accept_evs[k]);
    event_free(M.accept_retry_ev);
    event_free(M.stop_ev);
    if (M.upgrade_ev)
        event_free(M.upgrade_ev);
    if (M.parent_ev)
        event_free(M.parent_ev);
    event_free(M.upgrade_timer);
    event_free(M.upgrade_kill_ev);
    event_free(M.ready_timer);
    event_free(M.watchdog_timer);
    if (M.notify_fd >= 0)
        close(M.notify_fd);
    event_free(M.watch_ev);
    event_free(M.reap_ev);
    event_free(M.tickets_ev);
    for (int i = 0; i < M.nworkers; i++) {
        event_free(M.w[i].respawn_ev);
        event_free(M.w[i].cleanup_ev);
    }
    if (M.broker_ev)
        event_free(M.broker_ev);
    if (M.b.cleanup_ev)
        event_free(M.b.cleanup_ev);
    event_base_free(M.base);
    return 0;
}
