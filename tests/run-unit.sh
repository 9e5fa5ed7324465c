#!/bin/sh
# Runs every unit-test binary given as an argument and adds up their closing
# lines ("N passed, N failed") into one line of the same form.
set -u
passed=0 failed=0 broken=0
for t in "$@"; do
    out=$("$t") ; rc=$?
    line=$(printf '%s\n' "$out" | tail -n 1)
    p=$(printf '%s' "$line" | sed -n 's/^\([0-9][0-9]*\) passed, \([0-9][0-9]*\) failed$/\1/p')
    f=$(printf '%s' "$line" | sed -n 's/^\([0-9][0-9]*\) passed, \([0-9][0-9]*\) failed$/\2/p')
    if [ -z "$p" ]; then
        echo "$(basename "$t"): crashed or printed no summary (exit $rc)"
        broken=$((broken + 1)); continue
    fi
    printf '%s\n' "$out" | sed '$d'   # what the test printed (figures)
    echo "$(basename "$t"): $line"
    passed=$((passed + p)); failed=$((failed + f))
    [ "$rc" -ne 0 ] && [ "$f" -eq 0 ] && broken=$((broken + 1))
done
failed=$((failed + broken))
echo "unit: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
