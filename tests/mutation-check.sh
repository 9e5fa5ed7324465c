#!/bin/bash
# Mutation check of the shared registry: every recovery routine, ordering
# and unlink-before-retire listed in include/sl_crash.h (M_*) is disabled,
# one at a time, in a build of its own (make MUTANT=<n>, objects in
# build-mutant-<n>/), and the registry's unit tests run against it.
#
#  - First the unmutated build (MUTANT=0, the same flags) runs every test:
#    all must pass, or nothing else is meaningful.
#  - A mutant counts as killed only by a real assertion failure: a test
#    that exits 1 with its closing line "N passed, M failed" (M > 0) and at
#    least one "FAIL" line.  A timeout, a crash, a hang caught by a test's
#    own alarm or a missing summary is a harness failure: reported, not
#    counted.
#  - Each mutant must be killed by (at least) the test the design note
#    names for it (EXPECT below, shm/README.md "Mutants").
# Prints one line per mutant with the tests that killed it and the first
# failure, then "mutants: N killed of N".  Runs nice'd; about 6 minutes.
# With arguments (mutant names), only those mutants.
set -u
cd "$(dirname "$0")/.."
TESTS="test_killpoints test_access test_chan_stress test_table_stress test_arena test_qsbr test_table \
test_channels test_registry test_rpc test_lock"
declare -A EXPECT=(
    [M_ARENA_RECOVER]=test_killpoints [M_LIMBO_RECOVER]=test_killpoints
    [M_STRIPE_RECOVER]=test_killpoints [M_CHAN_RECOVER]=test_killpoints
    [M_INBOX_RECOVER]=test_killpoints [M_GP_SNAPSHOT]=test_killpoints
    [M_RETIRE_BEFORE_UNLINK]=test_killpoints [M_PUBLISH_BEFORE_NEXT]=test_killpoints
    [M_ARENA_COMMIT_ORDER]=test_killpoints [M_INBOX_COMMIT_ORDER]=test_killpoints
    [M_HANDOFF_COMMIT]=test_killpoints [M_READ_AFTER_HANDOFF]=test_killpoints
    [M_ACCESS_RECOVER]=test_killpoints [M_DEAD_SLOT_EARLY]=test_killpoints
    [M_MISSED_LAP]=test_killpoints [M_RECOVERY_NOTE]=test_killpoints
    [M_NO_MISSED_NOTE]=test_chan_stress [M_RPC_ORPHAN]=test_rpc
    [M_WAITER_FORGIVEN]=test_lock [M_KEPT_UNTIL_TAKEN]=test_lock
    [M_LIST_PUBLISH_ORDER]=test_killpoints [M_JOIN_AFTER_LINK]=test_killpoints
    [M_UNLINK_CLEARS_NEXT]=test_killpoints
    [M_DELIVER_RECOVER]=test_killpoints [M_RING_CLEAR_ORDER]=test_killpoints [M_PRESENCE_SLOT_ORDER]=test_killpoints
    [M_PRESENCE_POS]=test_channels [M_TICKETS_PUBLISH_FIRST]=test_killpoints
    [M_PRESENCE_FIRST_FOLD]=test_channels [M_DRAIN_UPTO]=test_channels
    [M_ASIDE_UNLISTED]=test_channels [M_DEAD_TARGETED]=test_channels
)
mapfile -t NAMES < <(sed -n 's/^ *\(M_[A-Z_]*\) = \([0-9]*\),.*/\2 \1/p' include/sl_crash.h |
                     awk '$1 > 0')
# tests/mutation-check.sh M_NAME...: only those mutants (the baseline still runs).
if [ $# -gt 0 ]; then
    mapfile -t NAMES < <(printf '%s\n' "${NAMES[@]}" | grep -wF -f <(printf '%s\n' "$@"))
    for want in "$@"; do # a misspelt name must not make "0 killed of 0" a pass
        if ! printf '%s\n' "${NAMES[@]}" | grep -qw -- "$want"; then
            echo "no mutant named $want in include/sl_crash.h"
            exit 1
        fi
    done
fi

build() { # build <n>: the tests of mutant n (0: none) into build-mutant-<n>/
    local bins=""
    for t in $TESTS; do bins="$bins build-mutant-$1/tests/$t"; done
    nice -n 10 make -s -j2 MUTANT="$1" $bins >/dev/null 2>build-mutant-"$1".log
}

# run <n> <test>: 0 passed, 1 failed by an assertion, 2 harness failure
run() {
    local out="build-mutant-$1/$2.out" rc
    timeout 300 nice -n 10 "build-mutant-$1/tests/$2" >"$out" 2>&1
    rc=$?
    [ $rc -eq 0 ] && return 0
    if [ $rc -eq 1 ] && tail -n 1 "$out" | grep -qE '^[0-9]+ passed, [1-9][0-9]* failed$' &&
        grep -q '  FAIL ' "$out"; then
        return 1
    fi
    return 2
}

if ! build 0; then
    echo "baseline: BUILD FAILED (build-mutant-0.log)"
    exit 1
fi
bad=""
for t in $TESTS; do
    run 0 "$t" || bad="$bad $t"
done
if [ -n "$bad" ]; then
    echo "baseline (unmutated) fails:$bad - see build-mutant-0/<test>.out"
    exit 1
fi
echo "baseline: every test passes unmutated ($TESTS)"

killed=0 total=0
for entry in "${NAMES[@]}"; do
    n=${entry%% *} name=${entry#* }
    total=$((total + 1))
    if ! build "$n"; then
        echo "$name: BUILD FAILED (build-mutant-$n.log)"
        continue
    fi
    by="" harness=""
    for t in $TESTS; do
        run "$n" "$t"
        case $? in
        1) by="$by $t" ;;
        2) harness="$harness $t" ;;
        esac
    done
    want=${EXPECT[$name]:-}
    if [ -z "$want" ]; then
        # Every mutant names the test the design note says kills it: an
        # empty entry would match any killer.
        echo "$name: no expected test in EXPECT (tests/mutation-check.sh): not counted"
    elif [ -n "$by" ] && [[ " $by " == *" $want "* ]]; then
        killed=$((killed + 1))
        first=$(grep -m 1 -E '^  [^ ]' "build-mutant-$n/$want.out" | grep -v '^  FAIL' |
                cut -c3-160)
        [ -z "$first" ] && first=$(grep -m 1 '  FAIL ' "build-mutant-$n/$want.out" | cut -c3-160)
        echo "$name: killed by$by"
        echo "    e.g. $want: $first"
    elif [ -n "$by" ]; then
        echo "$name: killed by$by, but not by $want (the design note's test)"
    else
        echo "$name: SURVIVED"
    fi
    [ -n "$harness" ] && echo "    (harness failures, not counted:$harness)"
done
echo "mutants: $killed killed of $total"
[ "$killed" -eq "$total" ]
