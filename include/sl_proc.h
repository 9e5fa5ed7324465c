/*
 * sl_proc.h - process plumbing shared by master, workers and logger:
 * process titles for ps(1) and passing descriptors over Unix sockets.
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

/* Send one descriptor over a Unix socket with SCM_RIGHTS.  SL_OK, SL_AGAIN
 * (the socket is full: try another worker), or SL_ERROR. */
int sl_proc_send_fd(int sock, int fd);

/* Receive one descriptor: the fd (>= 0), SL_AGAIN when none is waiting, or
 * SL_ERROR (errno set; 0 with EOF meaning the peer closed). */
int sl_proc_recv_fd(int sock);

#endif
