/*
 * sl_metrics.h - the Prometheus text exposition of /stats (see metrics.c).
 */
#ifndef SL_METRICS_H
#define SL_METRICS_H

#include "sl_common.h"

#include <jansson.h>

/* Render the /stats document (and health verdict) as Prometheus text;
 * malloc'd, NULL when out of memory. */
char *sl_metrics_text(json_t *stats, json_t *health, bool healthy);

#endif
