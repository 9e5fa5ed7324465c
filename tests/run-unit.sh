#!/bin/sh
# Runs every unit-test binary given as an argument and adds up their closing
# lines ("N passed, N failed") into one line of the same form.  Each binary
# runs under a time limit (UNIT_TIMEOUT seconds, 900 by default): a test that
# hangs (a lost wake-up, a deadlock) fails the run instead of stalling CI.
set -u
limit=${UNIT_TIMEOUT:-900}
passed=0 failed=0 broken=0
for t in "$@"; do
    start=$(date +%s)
    out=$(timeout -k 10 "$limit" "$t") ; rc=$?
    took="($(( $(date +%s) - start )) s)"
    if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
        echo "$(basename "$t"): timed out after ${limit} s (hung?)"
        broken=$((broken + 1)); continue
    fi
    line=$(printf '%s\n' "$out" | tail -n 1)
    p=$(printf '%s' "$line" | sed -n 's/^\([0-9][0-9]*\) passed, \([0-9][0-9]*\) failed$/\1/p')
    f=$(printf '%s' "$line" | sed -n 's/^\([0-9][0-9]*\) passed, \([0-9][0-9]*\) failed$/\2/p')
    if [ -z "$p" ]; then
        echo "$(basename "$t"): crashed or printed no summary (exit $rc)"
        broken=$((broken + 1)); continue
    fi
    printf '%s\n' "$out" | sed '$d'   # what the test printed (figures)
    echo "$(basename "$t"): $line $took"
    passed=$((passed + p)); failed=$((failed + f))
    [ "$rc" -ne 0 ] && [ "$f" -eq 0 ] && broken=$((broken + 1))
done
failed=$((failed + broken))
echo "unit: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
