/*
 * sl_master.h - the master process (see master.c).
 */
#ifndef SL_MASTER_H
#define SL_MASTER_H

/* Run the server with sl_conf until stopped; returns the exit status. */
int sl_master_run(void);

#endif
