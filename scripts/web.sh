#!/usr/bin/env bash
# The web page's steps for make (web/, see docs/web.md). Idempotent, like deps.sh.
#
#   scripts/web.sh build   npm ci when needed, then `npm run build` into web/dist (which
#                          build.rs embeds into kiln) when its sources changed
#   scripts/web.sh test    the unit tests (Vitest)
#   scripts/web.sh e2e     Debian's chromium when missing, then the end-to-end tests
#                          against the kiln binary cargo built
#   scripts/web.sh browser Debian's chromium when missing (for e2e; scripts/test.sh runs it
#                          early, beside the compile)
#   scripts/web.sh shots   the screenshots in docs/screenshots (fonts-noto-cjk when missing)
#   scripts/web.sh measure bundle sizes and first-load time, for docs/benchmarks.md
set -euo pipefail

web="$(cd "$(dirname "$0")/../web" && pwd)"
cd "$web"

have() { command -v "$1" >/dev/null 2>&1; }

if ! have npm; then
    echo "web: npm is missing; install Node.js 20.19 or later (with npm) to build the web page" >&2
    exit 1
fi

# `npm ci` installs exactly the locked versions; it runs again only when node_modules is
# missing or package-lock.json changed since the last install (its hash is kept beside
# the modules).
npm_ci() {
    local lock_hash stamp=node_modules/.kiln-lock-sha256
    lock_hash=$(sha256sum package-lock.json | cut -d' ' -f1)
    if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$lock_hash" ]; then
        npm ci --no-audit --no-fund --loglevel=error
        echo "$lock_hash" >"$stamp"
    fi
}

# Rebuilding unchanged sources would touch every file in dist and make cargo rebuild
# kiln for nothing, so the build runs only when what goes into it changed.
build() {
    npm_ci
    local sources stamp=node_modules/.kiln-build-sha256
    sources=$(find src public index.html package-lock.json tsconfig.json vite.config.ts -type f -print0 |
        sort -z | xargs -0 sha256sum | sha256sum | cut -d' ' -f1)
    if [ -f dist/index.html ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$sources" ]; then
        echo "web: dist/ is up to date"
        return
    fi
    npm run build --silent
    echo "$sources" >"$stamp"
}

# Debian's chromium, never a browser downloaded by npm (there is no network for that).
chromium() {
    if [ -x "${CHROMIUM:-/usr/bin/chromium}" ]; then
        return
    fi
    apt_install chromium
}

apt_install() {
    if [ "$(id -u)" -ne 0 ]; then
        echo "web: $* missing; install it with: sudo apt-get install $*" >&2
        exit 1
    fi
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

case "${1:-build}" in
build) build ;;
browser) chromium ;;
test)
    npm_ci
    npm test --silent
    ;;
e2e)
    build
    chromium
    npm run e2e --silent
    ;;
shots)
    build
    chromium
    if ! fc-list 2>/dev/null | grep -qi "Noto Sans CJK"; then
        apt_install fonts-noto-cjk
    fi
    npm run screenshots --silent
    ;;
measure)
    build
    chromium
    npm run measure --silent
    ;;
*)
    echo "usage: scripts/web.sh build|browser|test|e2e|shots|measure" >&2
    exit 2
    ;;
esac
