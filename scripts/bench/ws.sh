#!/bin/bash
# The Node.js `ws` pub/sub server (ws-server.js) as a benchmark peer.
#
#   ws.sh start PORT RUNDIR        start it in the background on 127.0.0.1:PORT
#                                  (pid file RUNDIR/ws-server.pid, stdout and
#                                  stderr in RUNDIR/ws-server.out/.err), wait
#                                  until it prints `listening` and /health answers
#   ws.sh stop  [PORT] RUNDIR      TERM, wait, then KILL
#   ws.sh pids  [PORT] RUNDIR      its PID (one process)
#
# RUNDIR is always the last argument. Extra server flags can be passed in
# WS_SERVER_ARGS (e.g. "--max-outbound-bytes 8388608").
# Needs scripts/bench/peers-install.sh (node + the ws package).
set -eu

here=$(cd "$(dirname "$0")" && pwd)
NODE=${NODE:-node}
STOP_GRACE_S=${STOP_GRACE_S:-5}

die() { echo "ws.sh: $*" >&2; exit 1; }
usage() { die "usage: ws.sh start PORT RUNDIR | stop [PORT] RUNDIR | pids [PORT] RUNDIR"; }

# State letter of a PID (R, S, Z, ...), empty when it is gone.
proc_state() {
    local stat rest
    read -r stat 2>/dev/null <"/proc/$1/stat" || return 0
    rest=${stat##*) }
    echo "${rest%% *}"
}

server_pid() {
    local pid="" arg found=0
    [ -s "$rundir/ws-server.pid" ] || return 0
    read -r pid 2>/dev/null <"$rundir/ws-server.pid" || true
    case "$pid" in ''|*[!0-9]*) return 0 ;; esac
    [ -r "/proc/$pid/cmdline" ] || return 0
    [ "$(proc_state "$pid")" != Z ] || return 0
    while IFS= read -r -d '' arg; do
        case "$arg" in *ws-server.js) found=1 ;; esac
    done 2>/dev/null <"/proc/$pid/cmdline" || true
    [ $found = 1 ] && echo "$pid"
    return 0
}

port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

health_ok() {
    (
        exec 3<>"/dev/tcp/127.0.0.1/$1" || exit 1
        printf 'GET /health HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n' >&3
        IFS= read -r -t 2 line <&3 || exit 1
        case "$line" in "HTTP/1."?" 200"*) exit 0 ;; *) exit 1 ;; esac
    ) 2>/dev/null
}

cmd=${1:-}
[ $# -ge 2 ] || usage
case "$cmd" in
    start)
        [ $# -eq 3 ] || usage
        port=$2 rundir=$3
        case "$port" in ''|*[!0-9]*) die "bad PORT: $port" ;; esac
        ;;
    stop|pids) rundir=${!#} ;;
    *) usage ;;
esac
mkdir -p "$rundir"
rundir=$(cd "$rundir" && pwd)

case "$cmd" in
start)
    [ -z "$(server_pid)" ] || die "already running in $rundir (pid $(server_pid))"
    command -v "$NODE" >/dev/null 2>&1 || die "node not found: run scripts/bench/peers-install.sh"
    [ -d "$here/node/node_modules/ws" ] || die "ws package missing: run scripts/bench/peers-install.sh"
    port_busy "$port" && die "127.0.0.1:$port is already in use"
    # As many descriptors as the hard limit allows (50,000 clients need more
    # than the usual 1024; root may raise the hard limit where permitted).
    ulimit -Hn 200000 2>/dev/null || true
    ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
    nofile=$(ulimit -n)
    rm -f "$rundir/ws-server.pid"
    # shellcheck disable=SC2086
    nohup "$NODE" "$here/ws-server.js" --port "$port" --host 127.0.0.1 ${WS_SERVER_ARGS:-} \
        </dev/null >"$rundir/ws-server.out" 2>"$rundir/ws-server.err" &
    pid=$!
    echo "$pid" >"$rundir/ws-server.pid"
    i=0
    until grep -q '^listening' "$rundir/ws-server.out" 2>/dev/null && health_ok "$port"; do
        if ! kill -0 "$pid" 2>/dev/null; then
            cat "$rundir/ws-server.err" >&2 || true
            rm -f "$rundir/ws-server.pid"
            die "ws-server.js exited during start-up"
        fi
        i=$((i + 1))
        if [ $i -ge 100 ]; then
            kill -KILL "$pid" 2>/dev/null || true
            rm -f "$rundir/ws-server.pid"
            die "ws-server.js did not start listening on 127.0.0.1:$port within 10 s"
        fi
        sleep 0.1
    done
    echo "ws.sh: ws-server.js $pid on 127.0.0.1:$port, open files limit $nofile ($rundir)" >&2
    ;;
pids)
    pid=$(server_pid)
    [ -n "$pid" ] || die "not running in $rundir"
    echo "$pid"
    ;;
stop)
    pid=$(server_pid)
    if [ -z "$pid" ]; then
        rm -f "$rundir/ws-server.pid"
        echo "ws.sh: not running in $rundir" >&2
        exit 0
    fi
    alive() { local st; st=$(proc_state "$pid"); [ -n "$st" ] && [ "$st" != Z ]; }
    kill -TERM "$pid" 2>/dev/null || true
    i=0
    while alive && [ $i -lt $((STOP_GRACE_S * 10)) ]; do sleep 0.1; i=$((i + 1)); done
    if alive; then
        echo "ws.sh: ws-server.js did not exit in ${STOP_GRACE_S}s, killing" >&2
        kill -KILL "$pid" 2>/dev/null || true
        i=0
        while alive && [ $i -lt 20 ]; do sleep 0.1; i=$((i + 1)); done
    fi
    rm -f "$rundir/ws-server.pid"
    echo "ws.sh: stopped ws-server.js $pid ($rundir)" >&2
    ;;
esac
