#!/bin/bash
# Mutation check of the shared registry: every recovery routine, ordering
# and unlink-before-retire listed in include/sl_crash.h (M_*) is disabled,
# one at a time, in a build of its own (make MUTANT=<n>, objects in
# build-mutant-<n>/), and the registry's unit tests run against it.  A
# mutant is killed when at least one of them fails; every mutant must be.
# Prints one line per mutant with the tests that killed it, then
# "mutants: N killed of N".  Runs nice'd; about 3 minutes on 2 cores.
set -u
cd "$(dirname "$0")/.."
TESTS="test_killpoints test_access test_chan_stress test_table_stress test_arena test_qsbr test_table \
test_channels test_registry test_rpc"
mapfile -t NAMES < <(sed -n 's/^ *\(M_[A-Z_]*\) = \([0-9]*\),.*/\2 \1/p' include/sl_crash.h |
                     awk '$1 > 0')
killed=0 total=0
for entry in "${NAMES[@]}"; do
    n=${entry%% *} name=${entry#* }
    total=$((total + 1))
    bins=""
    for t in $TESTS; do bins="$bins build-mutant-$n/tests/$t"; done
    if ! nice -n 10 make -s -j2 MUTANT="$n" $bins >/dev/null 2>build-mutant-"$n".log; then
        echo "$name: BUILD FAILED (build-mutant-$n.log)"
        continue
    fi
    by=""
    for t in $TESTS; do
        if ! timeout 300 nice -n 10 "build-mutant-$n/tests/$t" >"build-mutant-$n/$t.out" 2>&1; then
            by="$by $t"
        fi
    done
    if [ -n "$by" ]; then
        killed=$((killed + 1))
        set -- $by
        first=$(grep -v -E '^(killpoints|chan-stress|stress):|passed, .* failed$|not covered' \
                "build-mutant-$n/$1.out" | head -n 1 | cut -c1-150)
        echo "$name: killed by$by"
        echo "    e.g. $1: $first"
    else
        echo "$name: SURVIVED"
    fi
done
echo "mutants: $killed killed of $total"
[ "$killed" -eq "$total" ]
