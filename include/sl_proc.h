/*
 * sl_proc.h - process plumbing shared by master, workers and logger:
 * process titles for ps(1), passing descriptors over Unix sockets, and
 * telling an ending child from a stalled one.
 */
#ifndef SL_PROC_H
#define SL_PROC_H

#include "sl_common.h"

/* Remember the argv/environ area so sl_proc_title can overwrite it.  Call
 * once in main() after the command line has been parsed (the area is reused:
 * argv strings are gone afterwards; environ is moved to the heap). */
void sl_proc_title_init(int argc, char **argv);

/* Set the title shown by ps(1), e.g. "sente-lite: worker 3". */
void sl_proc_title(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* Descriptors per message: accepted sockets travel in batches, one
 * sendmsg/recvmsg for up to this many. */
#define SL_PROC_FDS_MAX 64

/* The byte each message carries: which listener its sockets came from. */
#define SL_PROC_TAG_PUBLIC 'F' /* --host/--port */
#define SL_PROC_TAG_OPS 'O'    /* --ops-listen */
#define SL_PROC_TAG_TLS 'T'    /* --tls-port, or --port with --tls */

/* Send fds[0..n) (1 <= n <= SL_PROC_FDS_MAX) in one message with
 * SCM_RIGHTS, tagged with `tag`.  SL_OK (all sent: the caller closes its
 * copies), SL_AGAIN (the socket is full: try another worker), or SL_ERROR. */
int sl_proc_send_fds(int sock, const int *fds, int n, char tag);

/* Receive one message's descriptors into fds (room for SL_PROC_FDS_MAX)
 * and its tag (if `tag` is not NULL): their count (>= 1), SL_AGAIN when
 * none is waiting, or SL_ERROR (errno set; 0 with EOF meaning the peer
 * closed).  When this process is out of descriptors the kernel drops
 * (closes) what it cannot install: the count is then of those received,
 * errno is EMFILE, and a message that brought none returns 0. */
int sl_proc_recv_fds(int sock, int *fds, char *tag);

/* The same, and *sent (if not NULL) gets how many descriptors the message
 * carried when it was sent - more than the count returned when some were
 * lost to EMFILE (the hand-off counters must drop by all of them). */
int sl_proc_recv_fds_n(int sock, int *fds, char *tag, int *sent);

/* Has our child `pid` (not yet reaped) ended - exited and waiting to be
 * reaped, or dumping core on its way out (/proc/PID/status CoreDumping)?
 * Such a process makes no progress but is dead, not stalled: the master
 * must not count it against the watchdog.  (Its pid cannot be reused before
 * we reap it.) */
bool sl_proc_ending(int pid);

#endif
