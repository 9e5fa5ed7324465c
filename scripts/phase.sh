#!/bin/bash
# Time one phase of the test run: scripts/phase.sh NAME COMMAND...
# Runs COMMAND, then prints "phase NAME: N s (exit RC)" and exits with its
# status.  scripts/test.sh repeats these lines at the end, so every CI log
# says where the time went.
name=${1:?usage: scripts/phase.sh NAME COMMAND...}
shift
start=$(date +%s)
"$@"
rc=$?
echo "phase $name: $(( $(date +%s) - start )) s (exit $rc)"
exit $rc
