/*
 * test_proc.c - descriptor passing between processes' sockets: batches of
 * 1 to SL_PROC_FDS_MAX descriptors arrive whole, in order, and refer to the
 * same open files; bad batch sizes are refused; an empty queue says so.
 * And sl_proc_ending: a running or stopped child has not ended, an exited
 * one not yet reaped has.
 */
#include "sl_proc.h"
#include "sl_test.h"

#include <fcntl.h>
#include <signal.h>
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
    SL_TEST_RUN(test_ending);
    return sl_test_summary();
}
