/*
 * sl_master.h - the master process (see master.c).
 */
#ifndef SL_MASTER_H
#define SL_MASTER_H

/* Run the server with sl_conf until stopped; returns the exit status. */
int sl_master_run(void);

/* Remember how this process was started (before sl_proc_title_init
 * overwrites argv): SIGUSR2 executes the binary at the same path with the
 * same arguments. */
void sl_master_set_exec(int argc, char **argv);

/* Send a systemd notification ("READY=1", "WATCHDOG=1", ...) to
 * NOTIFY_SOCKET; nothing when not run by systemd. */
void sl_notify(const char *msg);

#endif
