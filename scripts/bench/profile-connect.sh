#!/bin/sh
# profile-connect.sh - instruction counts (callgrind) of the connection
# path: N connections, each subscribing to one channel and waiting for its
# subscription-result, against sente-lite with one worker under callgrind.
# Instruction counts are repeatable on a noisy shared machine, where timings
# are not (this VM does not expose the PMU to perf).  Prints, per process
# (master, worker), the instructions per connection of the set-up phase
# (counters zeroed once the server is up, dumped when all N are open) and
# the top functions, inclusive and exclusive.
#
#   scripts/bench/profile-connect.sh [N] [outdir]      (N default 2000)
set -eu
N=${1:-2000}
OUT=${2:-build/bench/profile}
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
cd "$ROOT"
rm -rf "$OUT" && mkdir -p "$OUT"
PORT=$(/usr/bin/python3 scripts/bench/benchlib.py)
valgrind --tool=callgrind --trace-children=yes --collect-atstart=yes \
    --callgrind-out-file="$OUT/cg.%p" build/sente-lite --host 127.0.0.1 --port "$PORT" \
    --workers 1 --log-level warn --log-file "$OUT/sente-lite.log" \
    --max-connections 60000 --max-subscribers 60000 >"$OUT/valgrind.out" 2>&1 &
SRV=$!
i=0
until build/sente-bench connect --host 127.0.0.1 --port "$PORT" --path / --connections 1 \
        --json-only >/dev/null 2>&1; do
    i=$((i + 1)); [ $i -lt 100 ] || { kill $SRV; echo "server did not come up" >&2; exit 1; }
    sleep 0.2
done
sleep 1
callgrind_control -z "$SRV" >/dev/null 2>&1 || true      # master
for p in $(ps -o pid= --ppid "$SRV"); do callgrind_control -z "$p" >/dev/null 2>&1 || true; done
FIFO="$OUT/bench.err"
build/sente-bench connect --host 127.0.0.1 --port "$PORT" --path / --wait-welcome \
    --source-addrs 127.0.0.2,127.0.0.3 --connections "$N" --max-handshakes 50 \
    --connect-timeout 60 --hold 3 --sub-frame '{"type":"subscribe","channel-id":"bench"}' \
    --sub-ack subscription-result --json-only >"$OUT/bench.json" 2>"$FIFO" &
B=$!
while ! grep -q holding "$FIFO" 2>/dev/null; do sleep 0.2; done
callgrind_control -d open "$SRV" >/dev/null 2>&1 || true
for p in $(ps -o pid= --ppid "$SRV"); do callgrind_control -d open "$p" >/dev/null 2>&1 || true; done
wait $B
kill $SRV; wait $SRV 2>/dev/null || true
echo "connections: $N ($(tr , '\n' <"$OUT/bench.json" | grep -E '"connected"|"subscribe-errors"' | tr '\n' ' '))"
for f in "$OUT"/cg.*.*; do
    [ -f "$f" ] || continue
    grep -q "open" "$f" || continue
    tot=$(grep '^totals:\|^summary:' "$f" | head -1 | awk '{print $2}')
    echo "== $f: $tot instructions, $((tot / N)) per connection"
    callgrind_annotate --inclusive=yes "$f" 2>/dev/null | grep -E '^ *[0-9,]+ \(' | head -40 > "$f.incl"
    callgrind_annotate "$f" 2>/dev/null | grep -E '^ *[0-9,]+ \(' | head -25 > "$f.excl"
    sed 's/^/  incl /' "$f.incl" | head -40
    sed 's/^/  excl /' "$f.excl" | head -25
done
