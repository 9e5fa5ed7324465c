#!/bin/sh
# Exit 0 when sente-lite's /health says healthy, non-zero otherwise
# (unreachable, HTTP 503, or a body that is not "healthy").
#   health-check.sh [BASE-URL]      default http://localhost:3000
set -u
base=${1:-http://localhost:3000}
body=$(curl -fsS --max-time 5 "$base/health") || { echo "unhealthy: $base/health unreachable or not 200" >&2; exit 1; }
case "$body" in
    *'"status":"healthy"'*) exit 0 ;;
    *) echo "unhealthy: $body" >&2; exit 1 ;;
esac
