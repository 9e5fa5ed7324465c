#!/bin/bash
# Runs the web tests with node's test runner: the client library against the
# real server (tests/web/*.test.mjs) and the pages in headless chromium
# (tests/browser/*.test.mjs), against $SENTE_LITE_BIN (default
# build/sente-lite).  Output is TAP; the last line is
# "web: N passed, N failed".  `make check-web` installs what is needed
# (scripts/deps-web.sh) and sets SENTE_LITE_BIN.
set -uo pipefail
cd "$(dirname "$0")/.."
export SENTE_LITE_BIN=${SENTE_LITE_BIN:-$PWD/build/sente-lite}

log=$(mktemp)
trap 'rm -f "$log"' EXIT
# One file at a time: both start servers and time things.  Bounded: a test
# may take 2 minutes (6 under ASan), the whole run 20 (a handle left open
# after the last test would otherwise keep node waiting forever).
case "$SENTE_LITE_BIN" in *asan*) slow=3 ;; *) slow=1 ;; esac
timeout --kill-after=10 $((1200 * slow)) \
    node --test --test-reporter=tap --test-concurrency=1 --test-timeout=$((120000 * slow)) \
    tests/web/*.test.mjs tests/browser/*.test.mjs 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
passed=$(sed -n 's/^# pass \([0-9]*\)$/\1/p' "$log" | tail -1)
failed=$(sed -n 's/^# fail \([0-9]*\)$/\1/p' "$log" | tail -1)
echo "web: ${passed:-0} passed, ${failed:-0} failed"
[ "${passed:-0}" -gt 0 ] || { echo "no web test ran" >&2; exit 1; }
exit "$status"
