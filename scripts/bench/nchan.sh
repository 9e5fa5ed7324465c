#!/bin/bash
# nginx + nchan as a benchmark peer of sente-lite.
#
#   nchan.sh start PORT WORKERS RUNDIR   write RUNDIR/nginx.conf, start nginx
#                                        (daemon, pid file RUNDIR/nginx.pid),
#                                        wait until /health answers
#   nchan.sh stop  [PORT WORKERS] RUNDIR  QUIT, wait, then TERM/KILL
#   nchan.sh pids  [PORT WORKERS] RUNDIR  master and worker PIDs, one a line
#                                         (master first)
#
# RUNDIR is always the last argument.  NCHAN_REDIS_URL=redis://host:port in
# the environment of `start` stores channels in that Redis (an upstream with
# nchan_redis_server, nchan_redis_pass): several nginx on one Redis share their channels, the
# peer of sente-lite --redis.  Everything listens on 127.0.0.1:PORT:
#   ws://127.0.0.1:PORT/sub/CHANNEL   websocket subscriber
#   ws://127.0.0.1:PORT/pub/CHANNEL   websocket publisher (each text frame is
#                                     one message, delivered verbatim)
#   POST http://127.0.0.1:PORT/pub/CHANNEL   HTTP publisher (body = message)
#   GET  http://127.0.0.1:PORT/health        200 {"status":"healthy"}
# Logs: RUNDIR/error.log (access log off). Needs scripts/bench/peers-install.sh.
#
# TLS (issue 16's wss rows): with NCHAN_TLS_PORT, NCHAN_TLS_CERT and
# NCHAN_TLS_KEY in the environment of `start`, the same server also listens
# with TLS on 127.0.0.1:NCHAN_TLS_PORT (wss://, https://), session tickets on
# (nginx's default key, per nginx process group) and no session cache, as
# sente-lite (stateless tickets, no server cache).
set -eu

NGINX=${NGINX:-/usr/sbin/nginx}
STOP_GRACE_S=${STOP_GRACE_S:-10}

die() { echo "nchan.sh: $*" >&2; exit 1; }
usage() {
    die "usage: nchan.sh start PORT WORKERS RUNDIR | stop [PORT WORKERS] RUNDIR | pids [PORT WORKERS] RUNDIR"
}

find_module() {
    local f
    for f in /usr/lib/nginx/modules/ngx_nchan_module.so /usr/share/nginx/modules/ngx_nchan_module.so; do
        [ -f "$f" ] && { echo "$f"; return 0; }
    done
    die "ngx_nchan_module.so not found: run scripts/bench/peers-install.sh"
}

# PID of the master if it is running (per RUNDIR/nginx.pid), else nothing.
master_pid() {
    local pid cmdline
    [ -s "$rundir/nginx.pid" ] || return 0
    read -r pid 2>/dev/null <"$rundir/nginx.pid" || true
    case "$pid" in ''|*[!0-9]*) return 0 ;; esac
    [ -r "/proc/$pid/cmdline" ] || return 0
    # nginx rewrites its argv into one string: "nginx: master process ... -c CONF"
    IFS= read -r -d '' cmdline 2>/dev/null <"/proc/$pid/cmdline" || true
    case "$cmdline" in "nginx: master process "*"$rundir/nginx.conf"*) ;; *) return 0 ;; esac
    [ "$(proc_state "$pid")" != Z ] || return 0
    echo "$pid"
}

# Children of a PID (the nginx workers), from /proc; no forks per process
# (a driver may call this on a loaded machine).
children_of() {
    local parent=$1 d stat rest f
    for d in /proc/[0-9]*; do
        read -r stat 2>/dev/null <"$d/stat" || continue
        rest=${stat##*) }          # "STATE PPID ..." after "PID (comm) "
        read -r -a f <<<"$rest"
        [ "${f[1]}" = "$parent" ] && [ "${f[0]}" != Z ] && echo "${d#/proc/}"
    done
    return 0
}

# State letter of a PID (R, S, Z, ...), empty when it is gone.
proc_state() {
    local stat rest
    read -r stat 2>/dev/null <"/proc/$1/stat" || return 0
    rest=${stat##*) }
    echo "${rest%% *}"
}

# True when something accepts TCP connections on 127.0.0.1:PORT.
port_busy() {
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

health_ok() {
    # In a subshell: a failed `exec` redirection would end this script.
    (
        exec 3<>"/dev/tcp/127.0.0.1/$1" || exit 1
        printf 'GET /health HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n' >&3
        IFS= read -r -t 2 line <&3 || exit 1
        case "$line" in "HTTP/1."?" 200"*) exit 0 ;; *) exit 1 ;; esac
    ) 2>/dev/null
}

write_conf() {
    local port=$1 workers=$2 module=$3 nofile=200000 hard redis_conf="" redis_loc=""
    if [ -n "${NCHAN_REDIS_URL:-}" ]; then
        redis_conf="    upstream sl_redis { nchan_redis_server $NCHAN_REDIS_URL; }"
        redis_loc="nchan_redis_pass sl_redis;"
    fi
    # 200000 descriptors per worker, or the hard limit when it is lower and
    # cannot be raised (containers without CAP_SYS_RESOURCE): nginx would
    # only log a failed setrlimit and keep the old limit anyway.
    hard=$(ulimit -Hn)
    if [ "$hard" != unlimited ] && [ "$hard" -lt "$nofile" ] &&
       ! (ulimit -Hn "$nofile") 2>/dev/null; then
        echo "nchan.sh: note: open-files hard limit is $hard (cannot raise it): worker_rlimit_nofile $hard" >&2
        nofile=$hard
    fi
    tls_conf=
    if [ -n "${NCHAN_TLS_PORT:-}" ]; then
        [ -r "${NCHAN_TLS_CERT:-}" ] && [ -r "${NCHAN_TLS_KEY:-}" ] ||
            die "NCHAN_TLS_PORT needs readable NCHAN_TLS_CERT and NCHAN_TLS_KEY"
        tls_conf="        listen 127.0.0.1:$NCHAN_TLS_PORT ssl backlog=4096 reuseport;
        ssl_certificate $NCHAN_TLS_CERT;
        ssl_certificate_key $NCHAN_TLS_KEY;
        ssl_protocols TLSv1.2 TLSv1.3;
        ssl_session_tickets on;
        ssl_session_cache off;"
    fi
    cat >"$rundir/nginx.conf" <<EOF
# Generated by scripts/bench/nchan.sh: nginx + nchan benchmark peer.
load_module $module;

worker_processes $workers;
worker_rlimit_nofile $nofile;
# Upgraded (websocket) connections would otherwise keep a worker that got
# QUIT alive for as long as its clients stay connected.
worker_shutdown_timeout 5s;
pid $rundir/nginx.pid;
error_log $rundir/error.log warn;

events {
    worker_connections 100000;
    use epoll;
    multi_accept on;
}

http {
    access_log off;
    server_tokens off;
    default_type application/octet-stream;
    sendfile off;
    tcp_nodelay on;
    keepalive_timeout 65s;
    keepalive_requests 1000000;
    # HTTP publishes up to 1 MiB, held in memory (sente-lite's default
    # --max-message-size is 1 MiB too).
    client_max_body_size 1m;
    client_body_buffer_size 1m;
    client_body_temp_path $rundir/tmp/body;
    proxy_temp_path $rundir/tmp/proxy;
    fastcgi_temp_path $rundir/tmp/fastcgi;
    uwsgi_temp_path $rundir/tmp/uwsgi;
    scgi_temp_path $rundir/tmp/scgi;

    # Shared memory for channels, buffered messages and subscriber bookkeeping
    # across workers; 256 MiB is plenty for 50,000 subscribers.
    nchan_shared_memory_size 256m;
$redis_conf

    server {
        listen 127.0.0.1:$port backlog=4096 reuseport;
        server_name _;
$tls_conf

        # Keep memory flat during long runs: at most 10 buffered messages
        # per channel, each forgotten after 10 s. New subscribers start with
        # the next message published (no replay of the buffer on connect).
        nchan_message_buffer_length 10;
        nchan_message_timeout 10s;
        nchan_subscriber_first_message newest;
        # Messages go out to subscribers uncompressed. (nchan still accepts
        # permessage-deflate from clients that offer it, and 1.3.6 crashes
        # on some compressed publishes: benchmark clients must not offer it.)
        nchan_deflate_message_for_websocket off;

        location = /health {
            default_type application/json;
            return 200 '{"status":"healthy"}';
        }

        location ~ ^/sub/(.+)\$ {
            nchan_subscriber websocket;
            nchan_channel_id \$1;
            $redis_loc
        }

        location ~ ^/pub/(.+)\$ {
            nchan_publisher websocket http;
            nchan_channel_id \$1;
            $redis_loc
        }

        location / {
            return 404;
        }
    }
}
EOF
}

cmd=${1:-}
[ $# -ge 2 ] || usage
case "$cmd" in
    start)
        [ $# -eq 4 ] || usage
        port=$2 workers=$3 rundir=$4
        case "$port" in ''|*[!0-9]*) die "bad PORT: $port" ;; esac
        case "$workers" in ''|*[!0-9]*) die "bad WORKERS: $workers" ;; esac
        [ "$workers" -ge 1 ] || die "WORKERS must be >= 1"
        [ -x "$NGINX" ] || die "$NGINX not found: run scripts/bench/peers-install.sh"
        ;;
    stop|pids)
        rundir=${!#}
        ;;
    *) usage ;;
esac
mkdir -p "$rundir"
rundir=$(cd "$rundir" && pwd)

case "$cmd" in
start)
    [ -z "$(master_pid)" ] || die "already running in $rundir (pid $(master_pid))"
    # reuseport would let a second nginx share a port that is already in use
    # (a stale peer), silently splitting the connections between the two.
    ! port_busy "$port" || die "127.0.0.1:$port is already in use"
    module=$(find_module)
    mkdir -p "$rundir/tmp"
    rm -f "$rundir/nginx.pid"
    write_conf "$port" "$workers" "$module"
    # -e: errors before the config is read go to RUNDIR, not /var/log/nginx.
    if ! "$NGINX" -p "$rundir/" -e "$rundir/error.log" -c "$rundir/nginx.conf" \
            >"$rundir/nginx.out" 2>&1; then
        cat "$rundir/nginx.out" >&2
        die "nginx failed to start (see $rundir/error.log)"
    fi
    i=0
    until health_ok "$port"; do
        i=$((i + 1))
        if [ $i -ge 100 ]; then
            tail -n 20 "$rundir/error.log" >&2 || true
            "$0" stop "$rundir" || true
            die "nginx did not answer /health on 127.0.0.1:$port within 10 s"
        fi
        sleep 0.1
    done
    # All workers up (they start asynchronously after the master).
    mp=$(master_pid)
    i=0
    while [ "$(children_of "$mp" | wc -l)" -lt "$workers" ] && [ $i -lt 50 ]; do
        sleep 0.1; i=$((i + 1))
    done
    echo "nchan.sh: nginx $mp with $workers workers on 127.0.0.1:$port ($rundir)" >&2
    ;;
pids)
    mp=$(master_pid)
    [ -n "$mp" ] || die "not running in $rundir"
    echo "$mp"
    children_of "$mp"
    ;;
stop)
    mp=$(master_pid)
    if [ -z "$mp" ]; then
        rm -f "$rundir/nginx.pid"
        echo "nchan.sh: not running in $rundir" >&2
        exit 0
    fi
    all="$mp $(children_of "$mp" | tr '\n' ' ')"
    kill -QUIT "$mp" 2>/dev/null || true
    deadline=$((STOP_GRACE_S * 10)) i=0
    alive() {
        local p st
        for p in $all; do
            st=$(proc_state "$p")
            [ -n "$st" ] && [ "$st" != Z ] && return 0
        done
        return 1
    }
    while alive && [ $i -lt $deadline ]; do sleep 0.1; i=$((i + 1)); done
    if alive; then
        echo "nchan.sh: nginx did not quit in ${STOP_GRACE_S}s, killing" >&2
        # shellcheck disable=SC2086
        kill -TERM $all 2>/dev/null || true
        i=0
        while alive && [ $i -lt 20 ]; do sleep 0.1; i=$((i + 1)); done
        # shellcheck disable=SC2086
        if alive; then kill -KILL $all 2>/dev/null || true; fi
    fi
    rm -f "$rundir/nginx.pid"
    echo "nchan.sh: stopped nginx $mp ($rundir)" >&2
    ;;
esac
