/*
 * test_proc.c - descriptor passing between processes' sockets: batches of
 * 1 to SL_PROC_FDS_MAX descriptors arrive whole, in order, and refer to the
 * same open files; bad batch sizes are refused; an empty queue says so.
 * And sl_proc_ending: a running or stopped child has not ended, an exited
 * one not yet reaped has.
 */
#include "sl_proc.h"
#include "sl_test.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <time.h>
#include <sys/socket.h>
#include <unistd.h>

static void test_batches_arrive_whole_and_in_order(void)
{
    int sv[2];
    SL_CHECK_INT(socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv), 0);
    static const int sizes[] = {1, SL_PROC_FDS_MAX, 10};
    int pipes[SL_PROC_FDS_MAX][2];
    for (size_t b = 0; b < SL_ARRAY_LEN(sizes); b++) {
        int n = sizes[b], fds[SL_PROC_FDS_MAX];
        for (int k = 0; k < n; k++) {
            SL_CHECK_INT(pipe(pipes[k]), 0);
            fds[k] = pipes[k][1];
        }
        char want = n % 2 ? SL_PROC_TAG_OPS : SL_PROC_TAG_PUBLIC; /* the tag travels too */
        SL_CHECK_INT(sl_proc_send_fds(sv[0], fds, n, want), SL_OK);
        for (int k = 0; k < n; k++)
            close(pipes[k][1]); /* the receiver's copies keep them open */
        int got[SL_PROC_FDS_MAX];
        char tag = 0;
        SL_CHECK_INT(sl_proc_recv_fds(sv[1], got, &tag), n);
        SL_CHECK_INT(tag, want);
        for (int k = 0; k < n; k++) {
            char c = (char)('a' + k % 26), r = 0;
            SL_CHECK_INT(write(got[k], &c, 1), 1);
            SL_CHECK_INT(read(pipes[k][0], &r, 1), 1);
            SL_CHECK(r == c); /* the k-th received is the k-th sent */
            SL_CHECK(fcntl(got[k], F_GETFD) & FD_CLOEXEC);
            close(got[k]);
            close(pipes[k][0]);
        }
    }
    int got[SL_PROC_FDS_MAX];
    fcntl(sv[1], F_SETFL, O_NONBLOCK);
    SL_CHECK_INT(sl_proc_recv_fds(sv[1], got, NULL), SL_AGAIN);
    int one = 0;
    SL_CHECK_INT(sl_proc_send_fds(sv[0], &one, 0, SL_PROC_TAG_PUBLIC), SL_ERROR);
    SL_CHECK_INT(sl_proc_send_fds(sv[0], got, SL_PROC_FDS_MAX + 1, SL_PROC_TAG_PUBLIC),
                 SL_ERROR);
    close(sv[0]);
    SL_CHECK_INT(sl_proc_recv_fds(sv[1], got, NULL), SL_ERROR); /* EOF */
    close(sv[1]);
}

/* A receiver out of descriptors gets fewer than were sent (the kernel
 * closes the rest): it learns how many were sent, so the hand-off count
 * (pending-handoff) drops by all of them (review r13 finding 9). */
static void test_lost_to_emfile_are_known(void)
{
    int sv[2], res[2];
    SL_CHECK_INT(socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv), 0);
    SL_CHECK_INT(pipe(res), 0);
    pid_t pid = fork();
    if (pid == 0) {
        /* Fill the table up to a low limit, then free three places. */
        struct rlimit rl = {64, 64};
        setrlimit(RLIMIT_NOFILE, &rl);
        int last = -1, prev[3] = {-1, -1, -1};
        for (int fd; (fd = open("/dev/null", O_RDONLY)) >= 0; last = fd) {
            prev[0] = prev[1];
            prev[1] = prev[2];
            prev[2] = fd;
        }
        (void)last;
        for (int k = 0; k < 3; k++)
            close(prev[k]);
        int fds[SL_PROC_FDS_MAX], sent = -1;
        char tag = 0;
        /* The receive does not wait: wait here for the parent's send. */
        struct pollfd pfd = {.fd = sv[1], .events = POLLIN};
        (void)poll(&pfd, 1, 30000);
        int got = sl_proc_recv_fds_n(sv[1], fds, &tag, &sent);
        int e = errno;
        int out[4] = {got, sent, e == EMFILE, tag == SL_PROC_TAG_OPS};
        if (write(res[1], out, sizeof(out)) != (ssize_t)sizeof(out))
            _exit(1);
        _exit(0);
    }
    int fds[10];
    for (int k = 0; k < 10; k++)
        fds[k] = open("/dev/null", O_RDONLY);
    SL_CHECK_INT(sl_proc_send_fds(sv[0], fds, 10, SL_PROC_TAG_OPS), SL_OK);
    int out[4] = {0};
    SL_CHECK_INT(read(res[0], out, sizeof(out)), (int)sizeof(out));
    SL_CHECK_INT(out[0], 3);  /* received */
    SL_CHECK_INT(out[1], 10); /* sent */
    SL_CHECK_INT(out[2], 1);  /* EMFILE */
    SL_CHECK_INT(out[3], 1);  /* the tag still arrives */
    int status;
    waitpid(pid, &status, 0);
    for (int k = 0; k < 10; k++)
        close(fds[k]);
    close(sv[0]);
    close(sv[1]);
    close(res[0]);
    close(res[1]);
}

static void test_ending(void)
{
    pid_t pid = fork();
    if (pid == 0) {
        pause();
        _exit(0);
    }
    SL_CHECK(!sl_proc_ending(pid)); /* running (sleeping) */
    kill(pid, SIGSTOP);
    siginfo_t si;
    SL_CHECK_INT(waitid(P_PID, (id_t)pid, &si, WSTOPPED), 0);
    SL_CHECK(!sl_proc_ending(pid)); /* stopped: stalled, not ending */
    kill(pid, SIGKILL);
    /* Exited, not reaped: a zombie (WNOWAIT leaves it so). */
    SL_CHECK_INT(waitid(P_PID, (id_t)pid, &si, WEXITED | WNOWAIT), 0);
    SL_CHECK(sl_proc_ending(pid));
    int status;
    SL_CHECK_INT(waitpid(pid, &status, 0), pid);
    SL_CHECK(sl_proc_ending(pid)); /* reaped: gone */
}

int main(void)
{
    SL_TEST_RUN(test_batches_arrive_whole_and_in_order);
    SL_TEST_RUN(test_lost_to_emfile_are_known);
    SL_TEST_RUN(test_ending);
    return sl_test_summary();
}
