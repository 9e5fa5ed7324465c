/*
 * proc.c - process titles and descriptor passing.
 *
 * Titles: Linux shows /proc/PID/cmdline, which is the memory of the original
 * argv strings; environ usually follows them contiguously.  Like nginx, we
 * copy environ to the heap and then treat argv[0] .. end of environ as one
 * writable area for the title.  The comm name (top, pgrep) is set with
 * prctl(PR_SET_NAME), truncated by the kernel to 15 bytes.
 */
#include "sl_proc.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <unistd.h>

extern char **environ;

static char *title_start;
/* Not static: a variable nobody reads could be optimised away. */
char **sl_proc_env_copies;
static size_t title_len;

void sl_proc_title_init(int argc, char **argv)
{
    if (argc < 1 || argv[0] == NULL)
        return;
    char *end = argv[0] + strlen(argv[0]);
    for (int i = 1; i < argc; i++)
        if (argv[i] == end + 1)
            end = argv[i] + strlen(argv[i]);
    size_t n = 0;
    while (environ[n])
        n++;
    char **env = calloc(n + 1, sizeof(char *));
    if (env == NULL)
        return;
    for (size_t i = 0; i < n; i++) {
        if (environ[i] == end + 1)
            end = environ[i] + strlen(environ[i]);
        env[i] = strdup(environ[i]);
        if (env[i] == NULL)
            return; /* keep the old environ; titles stay within argv */
    }
    environ = env;
    /* setenv/unsetenv (the master's systemd variables) drop entries from
     * environ without freeing them; a second list keeps the copies
     * reachable (they live as long as the process). */
    sl_proc_env_copies = malloc((n + 1) * sizeof(char *));
    if (sl_proc_env_copies)
        memcpy(sl_proc_env_copies, env, (n + 1) * sizeof(char *));
    title_start = argv[0];
    title_len = (size_t)(end - argv[0]);
    for (int i = 1; i < argc; i++)
        argv[i] = NULL; /* the strings are about to be overwritten */
}

void sl_proc_title(const char *fmt, ...)
{
    char buf[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof(buf), fmt, ap);
    va_end(ap);
    prctl(PR_SET_NAME, buf, 0, 0, 0);
    if (title_start == NULL || title_len == 0)
        return;
    size_t n = SL_MIN(strlen(buf), title_len);
    memcpy(title_start, buf, n);
    memset(title_start + n, 0, title_len - n + 1);
}

int sl_proc_send_fds(int sock, const int *fds, int n, char tag)
{
    if (n < 1 || n > SL_PROC_FDS_MAX)
        return SL_ERROR;
    /* The tag, and how many descriptors the message carries: a receiver
     * out of descriptors gets fewer (the kernel closes the rest) and must
     * still know how many were handed over. */
    char bytes[2] = {tag, (char)n};
    struct iovec iov = {.iov_base = bytes, .iov_len = 2};
    union {
        struct cmsghdr h;
        char buf[CMSG_SPACE(sizeof(int) * SL_PROC_FDS_MAX)];
    } u;
    memset(&u, 0, sizeof(u));
    struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = u.buf,
                         .msg_controllen = CMSG_SPACE(sizeof(int) * (size_t)n)};
    struct cmsghdr *c = CMSG_FIRSTHDR(&msg);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(sizeof(int) * (size_t)n);
    memcpy(CMSG_DATA(c), fds, sizeof(int) * (size_t)n);
    for (;;) {
        ssize_t r = sendmsg(sock, &msg, MSG_DONTWAIT | MSG_NOSIGNAL);
        if (r == 2)
            return SL_OK;
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == ENOBUFS))
            return SL_AGAIN;
        return SL_ERROR;
    }
}

int sl_proc_recv_fds(int sock, int *fds, char *tag)
{
    return sl_proc_recv_fds_n(sock, fds, tag, NULL);
}

int sl_proc_recv_fds_n(int sock, int *fds, char *tag, int *sent)
{
    char bytes[2];
    struct iovec iov = {.iov_base = bytes, .iov_len = 2};
    union {
        struct cmsghdr h;
        char buf[CMSG_SPACE(sizeof(int) * SL_PROC_FDS_MAX)];
    } u;
    for (;;) {
        struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = u.buf,
                             .msg_controllen = sizeof(u.buf)};
        ssize_t r = recvmsg(sock, &msg, MSG_DONTWAIT | MSG_CMSG_CLOEXEC);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            return SL_AGAIN;
        if (r <= 0) {
            if (r == 0)
                errno = 0;
            return SL_ERROR;
        }
        struct cmsghdr *c = CMSG_FIRSTHDR(&msg);
        bool lost = (msg.msg_flags & MSG_CTRUNC) != 0; /* out of descriptors */
        if (c == NULL || c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS ||
            c->cmsg_len < CMSG_LEN(sizeof(int))) {
            if (lost) {
                if (tag)
                    *tag = bytes[0];
                if (sent)
                    *sent = r >= 2 ? (unsigned char)bytes[1] : 0;
                errno = EMFILE;
                return 0;
            }
            continue; /* a message without descriptors: nothing to take */
        }
        int n = (int)((c->cmsg_len - CMSG_LEN(0)) / sizeof(int));
        memcpy(fds, CMSG_DATA(c), sizeof(int) * (size_t)n);
        if (tag)
            *tag = bytes[0];
        if (sent)
            *sent = r >= 2 ? SL_MAX(n, (int)(unsigned char)bytes[1]) : n;
        errno = lost ? EMFILE : 0;
        return n;
    }
}

bool sl_proc_ending(int pid)
{
    char path[64], buf[512];
    snprintf(path, sizeof(path), "/proc/%d/stat", pid);
    FILE *f = fopen(path, "r");
    if (f == NULL)
        return true; /* gone altogether */
    size_t n = fread(buf, 1, sizeof(buf) - 1, f);
    fclose(f);
    buf[n] = '\0';
    /* The state follows the last ')' (the name may contain any byte). */
    const char *p = strrchr(buf, ')');
    if (p && p[1] == ' ' && (p[2] == 'Z' || p[2] == 'X' || p[2] == 'x'))
        return true;
    snprintf(path, sizeof(path), "/proc/%d/status", pid);
    if ((f = fopen(path, "r")) == NULL)
        return true;
    bool dumping = false;
    char line[128];
    while (fgets(line, sizeof(line), f))
        if (strncmp(line, "CoreDumping:", 12) == 0) {
            dumping = atoi(line + 12) != 0;
            break;
        }
    fclose(f);
    return dumping;
}
