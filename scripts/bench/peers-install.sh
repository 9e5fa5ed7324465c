#!/bin/sh
# Installs the benchmark comparison peers, only what is missing (idempotent):
#   * Debian's nginx-light + libnginx-mod-nchan (the nchan peer, see nchan.sh);
#     the distro's default nginx service is never left running or enabled;
#   * Node.js (Debian's nodejs + npm, only when `node` is not on the PATH);
#   * the npm packages pinned in scripts/bench/node/package-lock.json
#     (ws, bufferutil) into scripts/bench/node/node_modules (npm ci).
# Debian packages need root; without root it prints the command to run.
set -eu

here=$(cd "$(dirname "$0")" && pwd)
nodedir="$here/node"

log() { echo "peers-install: $*" >&2; }

is_installed() {
    case "$(dpkg-query -W -f='${Status}' "$1" 2>/dev/null || true)" in
        *"install ok installed"*) return 0 ;;
        *) return 1 ;;
    esac
}

# --- Debian packages -------------------------------------------------------
pkgs="nginx-light libnginx-mod-nchan"
command -v node >/dev/null 2>&1 || pkgs="$pkgs nodejs npm"
command -v npm >/dev/null 2>&1 || pkgs="$pkgs npm"
missing=""
for p in $pkgs; do
    case " $missing " in *" $p "*) continue ;; esac
    is_installed "$p" || missing="$missing $p"
done

# Stops the nginx that the Debian package starts with its default config
# (/etc/nginx/nginx.conf, pid /run/nginx.pid, port 80). Our peers run with
# `-c RUNDIR/nginx.conf` and their own pid file, so they are never touched.
stop_default_nginx() {
    if [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1; then
        systemctl disable --now nginx.service >/dev/null 2>&1 || true
    else
        if command -v update-rc.d >/dev/null 2>&1 && [ -e /etc/init.d/nginx ]; then
            update-rc.d nginx disable >/dev/null 2>&1 || true
        fi
    fi
    for pidf in /run/nginx.pid /var/run/nginx.pid; do
        [ -s "$pidf" ] || continue
        pid=$(cat "$pidf" 2>/dev/null || true)
        case "$pid" in ''|*[!0-9]*) continue ;; esac
        if [ -r "/proc/$pid/cmdline" ] &&
           tr '\0' ' ' <"/proc/$pid/cmdline" | grep -q '^nginx: master'; then
            log "stopping the distro's default nginx (pid $pid)"
            kill -QUIT "$pid" 2>/dev/null || true
            i=0
            while [ -d "/proc/$pid" ] && [ $i -lt 50 ]; do sleep 0.1; i=$((i + 1)); done
            if [ -d "/proc/$pid" ]; then kill -KILL "$pid" 2>/dev/null || true; fi
        fi
        rm -f "$pidf"
    done
    if command -v ss >/dev/null 2>&1 &&
       ss -ltnpH 2>/dev/null | grep -E ':80[[:space:]]' | grep -q '"nginx"'; then
        log "WARNING: an nginx is still listening on port 80:"
        ss -ltnp | grep -E ':80[[:space:]]' >&2 || true
        return 1
    fi
    return 0
}

if [ -n "$missing" ]; then
    if [ "$(id -u)" -ne 0 ]; then
        log "missing Debian packages:$missing"
        log "run as root: apt-get update && apt-get install -y --no-install-recommends$missing"
        exit 1
    fi
    log "installing$missing"
    export DEBIAN_FRONTEND=noninteractive
    # Keep the postinst from starting the default nginx at all (machines
    # without systemd run /etc/init.d/nginx start otherwise): a temporary
    # policy-rc.d that denies every start, removed again afterwards. An
    # existing policy-rc.d (Docker images ship one) is left as it is.
    tmp_policy=""
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        tmp_policy=/usr/sbin/policy-rc.d
        printf '#!/bin/sh\n# temporary, from sente-lite scripts/bench/peers-install.sh\nexit 101\n' >"$tmp_policy"
        chmod 755 "$tmp_policy"
        trap 'rm -f "$tmp_policy"' EXIT INT TERM
    fi
    apt-get update -qq
    # shellcheck disable=SC2086
    apt-get install -y -qq --no-install-recommends $missing >/dev/null
    if [ -n "$tmp_policy" ]; then rm -f "$tmp_policy"; trap - EXIT INT TERM; fi
fi
# Also on every later run: whoever started it, leave no default nginx behind.
if is_installed nginx-light || [ -x /usr/sbin/nginx ]; then
    if [ "$(id -u)" -eq 0 ]; then stop_default_nginx
    elif [ -s /run/nginx.pid ]; then log "WARNING: /run/nginx.pid exists; run as root to stop the default nginx"
    fi
fi

# The nchan module must be loadable.
nchan_so=""
for f in /usr/lib/nginx/modules/ngx_nchan_module.so /usr/share/nginx/modules/ngx_nchan_module.so; do
    [ -f "$f" ] && { nchan_so=$f; break; }
done
if [ -z "$nchan_so" ]; then
    log "ngx_nchan_module.so not found (is libnginx-mod-nchan installed?)"
    exit 1
fi

# --- npm packages ----------------------------------------------------------
command -v node >/dev/null 2>&1 || { log "node not found"; exit 1; }
command -v npm >/dev/null 2>&1 || { log "npm not found"; exit 1; }
# Up to date when every package of the lock is installed at its locked version.
if ! (cd "$nodedir" && node -e '
    const lock = require("./package-lock.json");
    for (const [p, v] of Object.entries(lock.packages)) {
      if (!p) continue;
      const pj = require("./" + p + "/package.json");
      if (pj.version !== v.version) process.exit(1);
    }' ) >/dev/null 2>&1; then
    log "installing npm packages into $nodedir/node_modules"
    # --ignore-scripts: bufferutil ships prebuilt linux-x64 binaries and falls
    # back to plain JS without them; nothing needs compiling.
    if [ -f "$nodedir/package-lock.json" ]; then
        (cd "$nodedir" && npm ci --ignore-scripts --no-audit --no-fund --loglevel=error) >&2
    else
        (cd "$nodedir" && npm install --ignore-scripts --no-audit --no-fund --loglevel=error) >&2
    fi
fi
(cd "$nodedir" && node -e 'require("ws"); require("bufferutil")') || {
    log "the ws package does not load from $nodedir"; exit 1; }
log "ok: $(/usr/sbin/nginx -v 2>&1), nchan $(dpkg-query -W -f='${Version}' libnginx-mod-nchan 2>/dev/null), node $(node --version), ws $(cd "$nodedir" && node -p 'require("ws/package.json").version')"
