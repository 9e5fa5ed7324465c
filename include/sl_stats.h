/*
 * sl_stats.h - the figures operators read: /stats and /health, built from
 * the shared-memory counters so any worker answers for the whole server.
 */
#ifndef SL_STATS_H
#define SL_STATS_H

#include "sl_common.h"

#include <jansson.h>

/* The /stats document (new reference).  identities: list who is connected
 * (access.users, access.connections-per-ip) and the user-limited ('#')
 * channels, which name users - for the ops listener and admin-token
 * bearers only.  Without them nothing is walked but the workers and the
 * channels (at most --max-channels). */
json_t *sl_stats_json(bool identities);

/* Does channel id[0..len) name users (a user-limited "ID#u1,u2" channel,
 * with a token key configured)? */
bool sl_stats_names_users(const char *id, size_t len);

/* The /health document (new reference); *healthy tells 200 or 503. */
json_t *sl_health_json(bool *healthy);

#endif
