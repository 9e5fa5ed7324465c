#!/bin/sh
# Installs the Debian packages sente-lite needs, only those missing.
#   scripts/deps.sh          build and run: compiler, pkg-config, -dev libraries
#                            (libjwt-dev only for the unit tests and
#                            bench-auth: the reference token verification is
#                            compared with; the server does not link it)
#   scripts/deps.sh --test   also what the tests need (pytest, websockets,
#                            the Prometheus text parser, PyJWT and openssl to
#                            make keys and tokens, ps, redis-server for
#                            tests/cluster/, and what the vendored
#                            Autobahn|Testsuite fuzzingclient needs)
#   scripts/deps.sh --fuzz   also clang and its libFuzzer runtime (make fuzz)
#   scripts/deps.sh --web    also what the web tests need: Debian's chromium,
#                            a font for screenshots, NSS's certutil (the https
#                            browser test trusts its test CA through an NSS
#                            database), node and npm when absent
#                            (scripts/deps-web.sh adds the npm packages)
#   scripts/deps.sh --bench  also gnuplot for the benchmark chart, PyJWT and
#                            openssl for the access-control rows, valgrind for
#                            make bench-profile (the peers
#                            are installed by scripts/bench/peers-install.sh)
#   scripts/deps.sh --deb    also what `make deb` needs: debhelper, dpkg-dev,
#                            lintian (and systemd, for systemd-analyze in the
#                            unit's hardening test)
# Options combine.  As root it runs apt-get itself; otherwise it prints the
# command to run.
set -eu

pkgs="gcc make pkg-config libc6-dev libevent-dev libjansson-dev liburcu-dev libssl-dev libjwt-dev libhiredis-dev"
for opt in "$@"; do
    case "$opt" in
    --test)
        pkgs="$pkgs python3 python3-pytest python3-pytest-xdist python3-websockets python3-prometheus-client python3-jwt python3-cryptography openssl procps curl redis-server"
        pkgs="$pkgs python3-autobahn python3-twisted python3-jinja2 python3-openssl python3-service-identity"
        ;;
    --fuzz) pkgs="$pkgs clang libclang-rt-dev" ;;
    --web)
        pkgs="$pkgs chromium fonts-dejavu-core libnss3-tools"
        command -v node >/dev/null 2>&1 || pkgs="$pkgs nodejs"
        command -v npm >/dev/null 2>&1 || pkgs="$pkgs npm"
        ;;
    --bench) pkgs="$pkgs python3 python3-jwt openssl procps curl gnuplot-nox valgrind" ;;
    --deb) pkgs="$pkgs debhelper dpkg-dev lintian" ;;
    *) echo "usage: scripts/deps.sh [--test] [--web] [--bench] [--deb] [--fuzz]" >&2; exit 2 ;;
    esac
done

missing=""
for p in $pkgs; do
    status=$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null || true)
    case "$status" in
        *"install ok installed"*) ;;
        *) missing="$missing $p" ;;
    esac
done
[ -z "$missing" ] && exit 0

if [ "$(id -u)" -ne 0 ]; then
    echo "sente-lite: missing Debian packages:$missing" >&2
    echo "run as root: apt-get update && apt-get install -y$missing" >&2
    exit 1
fi
echo "sente-lite: installing$missing" >&2
export DEBIAN_FRONTEND=noninteractive
# Several builds may run apt at once: wait for the dpkg lock, do not fail.
apt-get -o DPkg::Lock::Timeout=600 update -qq
# shellcheck disable=SC2086
apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends $missing >/dev/null
