#!/bin/bash
# RFC 6455 conformance: the vendored Autobahn|Testsuite fuzzingclient
# (tests/autobahn/testsuite, unmodified) against /echo of the real binary on
# a free loopback port, sections 1-10 (9.* included unless AUTOBAHN_CASES
# says otherwise).  Ends with the runner's line "autobahn: N passed, M
# failed" (NON-STRICT and INFORMATIONAL count as passed: the summary above
# it gives their numbers).
#
#   scripts/check-autobahn.sh BIN [extra runner options...]
#
# AUTOBAHN_TLS=1: the same over wss:// (a throw-away self-signed certificate,
# made here with openssl, on --tls-port).
#
# The limits the suite needs are passed here, not made defaults: 9.* sends
# messages up to 16 MiB.  --max-outbound-bytes stays at its default: one
# message larger than it is always queued whole (sl_conn.h).
set -uo pipefail
bin=${1:?usage: scripts/check-autobahn.sh BIN [runner options]}
shift
here=$(cd "$(dirname "$0")/.." && pwd)
port=$(/usr/bin/python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
out=$(mktemp -d)
trap 'kill "$pid" 2>/dev/null; wait "$pid" 2>/dev/null; rm -rf "$out"' EXIT
url="ws://127.0.0.1:$port/echo"
tls=()
if [ "${AUTOBAHN_TLS:-0}" = 1 ]; then
    tport=$(/usr/bin/python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$out/key.pem" \
        -out "$out/cert.pem" -days 2 -subj /CN=127.0.0.1 -addext subjectAltName=IP:127.0.0.1 \
        >/dev/null 2>&1
    tls=(--tls-port "$tport" --tls-cert "$out/cert.pem" --tls-key "$out/key.pem")
    url="wss://127.0.0.1:$tport/echo"
fi
"$bin" --host 127.0.0.1 --port "$port" --workers 1 --echo --max-message-size 16M "${tls[@]}" \
    --log-file "$out/server.log" --log-level warn > "$out/stderr" 2>&1 &
pid=$!
for _ in $(seq 100); do
    curl -sf "http://127.0.0.1:$port/health" >/dev/null 2>&1 && break
    sleep 0.1
done
start=$(date +%s)
"$here/tests/autobahn/testsuite/run-fuzzingclient.sh" --agent sente-lite \
    --outdir "$out/autobahn" "$@" "$url"
rc=$?
echo "autobahn took $(( $(date +%s) - start )) s ($(basename "$(dirname "$bin")"), ${url%%:*})"
if ! kill -0 "$pid" 2>/dev/null; then
    echo "autobahn: the server died during the run" >&2
    cat "$out/stderr" >&2
    rc=1
fi
exit $rc
