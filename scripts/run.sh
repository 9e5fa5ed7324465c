#!/bin/sh
# Build sente-lite (installing missing Debian packages when run as root) and
# start it.  Without arguments: localhost:3000, one worker per usable core.
# Arguments are passed to sente-lite (see sente-lite --help).
set -eu
cd "$(dirname "$0")/.."
scripts/deps.sh
make -s -j"$(nproc)"
exec ./sente-lite "$@"
