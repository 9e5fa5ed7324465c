#!/bin/sh
# The broker's sliced presence rewrite of one big channel: the registry
# walk and entry text per pass, slices walked from the list head (before
# review rs 6) against slices resumed at their checkpoint (after), for
# 10,000 and 50,000 subscriptions (or the sizes given).  Figures, not a
# test (docs/benchmarks.md).  Usage: scripts/bench/presync.sh [N ...]
set -e
cd "$(dirname "$0")/../.."
make -s build/bench/bench_presync
exec nice -n 10 build/bench/bench_presync "$@"
