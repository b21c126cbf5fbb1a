#!/usr/bin/env bash
# Set up what the browser test (pytest -m browser) needs; safe to run again (skips what is there).
#   - Debian's headless Chromium at /usr/bin/chromium (apt-get; needs root or sudo)
#   - npm packages in .browser-test/node_modules: playwright-core (drives Chromium) and the scripts
#     the frontend loads from CDNs (d3 v7 + d3-jetpack, dagre, pako), answered locally by the test
#   - the circuit-tracer 0.5.0 wheel, unpacked in .browser-test/circuit-tracer (frontend assets only;
#     nothing of it is committed)
# Usage: scripts/setup-browser-test.sh            (from anywhere; works in the repo root)
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
DEST="${TL_CLT_BROWSER_DIR:-$ROOT/.browser-test}"
CT_VERSION="0.5.0"
NPM_PACKAGES=(playwright-core@1.65.1 d3-jetpack@2.3.0 dagre@0.8.5 pako@2.1.0)
mkdir -p "$DEST"
say() { echo "[setup-browser-test] $*" >&2; }

# 1. Chromium
if [ -x /usr/bin/chromium ]; then
  say "chromium present: $(/usr/bin/chromium --version 2>/dev/null || echo '?')"
else
  if ! command -v apt-get >/dev/null; then
    say "no apt-get: install Chromium yourself and make /usr/bin/chromium point to it"; exit 1
  fi
  SUDO=""
  if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null || { say "need root or sudo to apt-get install chromium"; exit 1; }
    SUDO="sudo"
  fi
  say "installing chromium with apt-get"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends chromium \
    fonts-dejavu-core >/dev/null
fi

# 2. npm packages
command -v npm >/dev/null || { say "npm not found: install Node.js >= 18 (apt-get install nodejs npm)"; exit 1; }
missing=0
for pkg in playwright-core d3-jetpack dagre pako; do
  [ -f "$DEST/node_modules/$pkg/package.json" ] || missing=1
done
if [ "$missing" -eq 1 ]; then
  say "npm install ${NPM_PACKAGES[*]}"
  [ -f "$DEST/package.json" ] || echo '{"name": "tl-clt-browser-test", "private": true}' > "$DEST/package.json"
  (cd "$DEST" && npm install --save-exact --no-audit --no-fund --loglevel=error "${NPM_PACKAGES[@]}" >/dev/null)
else
  say "npm packages present"
fi

# 3. circuit-tracer frontend assets (from the wheel, no dependencies)
ASSETS="$DEST/circuit-tracer/circuit_tracer/frontend/assets"
if [ -f "$ASSETS/index.html" ]; then
  say "circuit-tracer frontend present"
else
  say "pip download circuit-tracer==$CT_VERSION"
  tmp="$(mktemp -d)"
  python -m pip download --quiet --no-deps --only-binary=:all: -d "$tmp" "circuit-tracer==$CT_VERSION"
  python - "$tmp" "$DEST/circuit-tracer" <<'PY'
import glob, sys, zipfile
wheel = glob.glob(sys.argv[1] + "/circuit_tracer-*.whl")[0]
with zipfile.ZipFile(wheel) as z:
    z.extractall(sys.argv[2], [n for n in z.namelist() if n.startswith("circuit_tracer/frontend/")])
PY
  rm -rf "$tmp"
fi
say "done: $DEST"
