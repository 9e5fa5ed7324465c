/*
 * sl_broker.h - the broker process (--redis): the only process of a node
 * that talks to Redis.  Forked and supervised by the master like the
 * logger; see src/broker.c.
 */
#ifndef SL_BROKER_H
#define SL_BROKER_H

#include "sl_common.h"

/* Body of the broker process: runs until SIGTERM (or the master's death),
 * returns the exit status.  tel_fd: its telemetry pipe. */
int sl_broker_main(int tel_fd);

/* The broker's wake-up eventfd (created by the master before forking;
 * workers write 1 after queueing a request). */
extern int sl_broker_wake_fd;

/* Channel shard for a channel id: a fixed hash (FNV-1a 64), the same on
 * every node whatever its build or start-up, modulo the number of --redis
 * instances. */
uint32_t sl_broker_shard(const char *id, size_t len, uint32_t nshards);

#endif
