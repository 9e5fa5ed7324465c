#!/bin/bash
# TLS handshakes per second (issue 16): sente-lite and nginx + nchan as the
# TLS peer, the same certificate and the same number of workers (2), each
# with an ECDSA P-256 and an RSA-2048 certificate, full handshakes
# (`openssl s_time -new`) and resumed ones (`-reuse`: session tickets).
# Figures, not a test; the machine is shared: ROUNDS rounds (default 3),
# the servers alternating, medians printed.  The client (s_time, one
# process) is part of what is measured, the same for both.
#
#   scripts/bench/tls_handshakes.sh BIN [SECONDS] [ROUNDS]
set -eu
bin=$(readlink -f "${1:?usage: tls_handshakes.sh BIN [SECONDS] [ROUNDS]}")
secs=${2:-4}
rounds=${3:-3}
here=$(cd "$(dirname "$0")/../.." && pwd)
d=$(mktemp -d)
trap 'kill $(cat "$d"/*.pid 2>/dev/null) 2>/dev/null; rm -rf "$d"' EXIT
port() { /usr/bin/python3 "$here/scripts/bench/benchlib.py"; }
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$d/ec.key" \
    -out "$d/ec.crt" -days 2 -subj /CN=localhost >/dev/null 2>&1
openssl req -x509 -newkey rsa:2048 -nodes -keyout "$d/rsa.key" -out "$d/rsa.crt" -days 2 \
    -subj /CN=localhost >/dev/null 2>&1
# Handshakes per wall-clock second.  Resumed ones over TLS 1.2: s_time
# takes its session right after the handshake, before a TLS 1.3 ticket
# (sent after the handshake) has arrived, so its TLS 1.3 -reuse resumes
# only by luck of timing; with 1.2 the ticket is part of the handshake.
rate() { # PORT -new|-reuse
    local v=
    [ "$2" = -reuse ] && v=-tls1_2
    openssl s_time -connect "127.0.0.1:$1" "$2" $v -time "$secs" 2>/dev/null |
        sed -n 's/^\([0-9]*\) connections in \([0-9]*\) real seconds.*/\1 \2/p' | tail -1 |
        awk '{ if ($2 > 0) printf "%.0f\n", $1 / $2; else print 0 }'
}
median() { sort -n | awk '{ a[NR] = $1 } END { print a[int((NR + 1) / 2)] }'; }
for kind in ec rsa; do
    sp=$(port); tp=$(port); np=$(port)
    "$bin" --host 127.0.0.1 --port "$sp" --tls-port "$tp" --tls-cert "$d/$kind.crt" \
        --tls-key "$d/$kind.key" --workers 2 --log-level error >/dev/null 2>&1 &
    echo $! > "$d/sente.pid"
    cat > "$d/nginx.conf" <<CONF
load_module /usr/lib/nginx/modules/ngx_nchan_module.so;
worker_processes 2;
pid $d/nginx.pid;
error_log $d/error.log;
events { worker_connections 4096; }
http {
    access_log off;
    ssl_session_tickets on;
    server {
        listen 127.0.0.1:$np ssl;
        ssl_certificate $d/$kind.crt;
        ssl_certificate_key $d/$kind.key;
        location = /health { return 200 '{"status":"healthy"}'; }
        location ~ /sub/(\w+)$ { nchan_subscriber; nchan_channel_id \$1; }
    }
}
CONF
    /usr/sbin/nginx -c "$d/nginx.conf" -p "$d" 2>/dev/null
    sleep 1
    for mode in -new -reuse; do
        : > "$d/s"; : > "$d/n"
        for r in $(seq "$rounds"); do
            rate "$tp" "$mode" >> "$d/s"
            rate "$np" "$mode" >> "$d/n"
        done
        printf '%-4s %-7s sente-lite %6s/s   nchan %6s/s   (medians of %d x %d s; runs: %s | %s)\n' \
            "$kind" "${mode#-}" "$(median < "$d/s")" "$(median < "$d/n")" "$rounds" "$secs" \
            "$(tr '\n' ' ' < "$d/s")" "$(tr '\n' ' ' < "$d/n")"
    done
    kill "$(cat "$d/sente.pid")"; wait "$(cat "$d/sente.pid")" 2>/dev/null || true
    kill -QUIT "$(cat "$d/nginx.pid")" 2>/dev/null || true
    sleep 1
done
