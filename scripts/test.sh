#!/bin/bash
# Build and run every test: unit, integration and web tests on the normal
# build, then the same under ASan/UBSan.  Installs missing Debian packages first
# when run as root.  Ends with one line "total: N passed, N failed".
set -uo pipefail
cd "$(dirname "$0")/.."
scripts/deps.sh --test || exit 1

log=$(mktemp)
trap 'rm -f "$log"' EXIT
make -j"$(nproc)" check 2>&1 | tee "$log"
status=${PIPESTATUS[0]}

# Add up the runners' closing lines: "unit: N passed, N failed",
# "web: ...", "fuzz: ..." (corpus inputs replayed), "autobahn: ..." (RFC 6455
# cases) and pytest's "N passed[, N failed][, N errors] in Xs".
read -r passed failed < <(awk '
    /^(unit|web|fuzz|autobahn): [0-9]+ passed, [0-9]+ failed$/ { p += $2; f += $4 }
    / passed| failed| error/ && / in [0-9.]+s/ {
        for (i = 1; i <= NF; i++) {
            n = $(i - 1) + 0
            if ($i ~ /^passed/) p += n
            if ($i ~ /^failed/ || $i ~ /^error/) f += n
        }
    }
    END { print p + 0, f + 0 }' "$log")
# Where the time went (scripts/phase.sh, one line per phase of make check).
grep '^phase ' "$log"
echo "suite took $SECONDS s"
echo "total: $passed passed, $failed failed"
if [ "$passed" -eq 0 ]; then
    echo "no test ran" >&2
    exit 1
fi
[ "$status" -eq 0 ] && [ "$failed" -eq 0 ]
