#!/bin/sh
# Installs what `make check-web` needs, only what is missing:
#   - Debian's chromium (and a font, so screenshots have text), driven
#     headless by playwright-core; playwright never downloads a browser;
#   - node and npm (Debian's, when there is no node at all);
#   - the npm packages pinned in tests/web/package-lock.json (npm ci), again
#     only when tests/web/node_modules is missing or older than the lock file.
# The Debian packages come from scripts/deps.sh --web (as root it runs
# apt-get itself; otherwise it prints the command to run).
set -eu
cd "$(dirname "$0")/.."

scripts/deps.sh --web

# npm ci wipes and reinstalls node_modules: do it only when the lock file
# changed since the last install (the stamp is a copy of it).
stamp=tests/web/node_modules/.sente-lite-lock
if ! cmp -s tests/web/package-lock.json "$stamp" 2>/dev/null; then
    echo "sente-lite: npm ci in tests/web" >&2
    (cd tests/web && PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci --no-audit --no-fund --loglevel=error)
    cp tests/web/package-lock.json "$stamp"
fi
