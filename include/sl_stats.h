/*
 * sl_stats.h - the figures operators read: /stats and /health, built from
 * the shared-memory counters so any worker answers for the whole server.
 */
#ifndef SL_STATS_H
#define SL_STATS_H

#include "sl_common.h"

#include <jansson.h>

/* The /stats document (new reference). */
json_t *sl_stats_json(void);

/* The /health document (new reference); *healthy tells 200 or 503. */
json_t *sl_health_json(bool *healthy);

#endif
