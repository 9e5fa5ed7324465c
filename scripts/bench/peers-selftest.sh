#!/bin/bash
# Correctness check of the benchmark peers: starts each peer on a free port
# (nginx+nchan with WORKERS workers, default 2; the Node ws server), connects
# 3 websocket subscribers, publishes 10 messages, checks that every
# subscriber got all 10 in order (selftest-client.js), stops the peer.
# Ends with `peers-selftest: N passed, N failed`; exits 1 on any failure.
#
#   scripts/bench/peers-selftest.sh [WORKERS]
set -eu

here=$(cd "$(dirname "$0")" && pwd)
workers=${1:-2}
passed=0 failed=0

# Install what is missing (idempotent, quick when everything is there).
"$here/peers-install.sh"

rundir=$(mktemp -d /tmp/peers-selftest.XXXXXX)
started=""
cleanup() {
    local p
    for p in $started; do
        case "$p" in
            nchan) "$here/nchan.sh" stop "$rundir/nchan" 2>/dev/null || true ;;
            ws) "$here/ws.sh" stop "$rundir/ws" 2>/dev/null || true ;;
        esac
    done
    # Logs are kept only when something failed.
    [ "$failed" -gt 0 ] || rm -rf "$rundir"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_port() {
    /usr/bin/python3 "$here/benchlib.py"
}

run_peer() {   # run_peer nchan|ws
    local peer=$1 port ok=1
    port=$(free_port)
    echo "peers-selftest: $peer on 127.0.0.1:$port" >&2
    # Marked before the start, so that an interrupt during it stops it too.
    started="$started $peer"
    case "$peer" in
        nchan) "$here/nchan.sh" start "$port" "$workers" "$rundir/nchan" || ok=0 ;;
        ws) "$here/ws.sh" start "$port" "$rundir/ws" || ok=0 ;;
    esac
    if [ $ok = 1 ]; then
        if ! node "$here/selftest-client.js" "$peer" "$port" 3 10; then ok=0; fi
        # A peer process that died (e.g. an nginx worker crash) is a failure too.
        if [ "$peer" = nchan ] && grep -q 'exited on signal' "$rundir/nchan/error.log"; then
            grep 'exited on signal' "$rundir/nchan/error.log" >&2
            ok=0
        fi
        case "$peer" in
            nchan) "$here/nchan.sh" stop "$rundir/nchan" || ok=0 ;;
            ws) "$here/ws.sh" stop "$rundir/ws" || ok=0 ;;
        esac
    fi
    started=${started/ $peer/}
    if [ $ok = 1 ]; then
        passed=$((passed + 1)); echo "ok - $peer"
    else
        failed=$((failed + 1)); echo "FAIL - $peer (logs in $rundir/$peer)"
    fi
}

run_peer nchan
run_peer ws

echo "peers-selftest: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
