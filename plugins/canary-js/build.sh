#!/bin/sh
# Builds the canary-js policy (contract 0.2, world `policy`) into a Wasm component with componentize-js.
#
#   sh build.sh            # or: make plugins-js (from the repository root)
#
# Output: $OUT, by default $CARGO_TARGET_DIR/wasm32-wasip2/release/
# isobar_plugin_canary_js.wasm (../../target when CARGO_TARGET_DIR is unset),
# beside the Rust plugins. Nothing is done while the inputs (sources, WIT,
# package.json, package-lock.json, this script) are unchanged, and `npm ci`
# runs only when the lockfile changed.
set -eu
cd "$(dirname "$0")"
root=$(cd ../.. && pwd)
out=${OUT:-${CARGO_TARGET_DIR:-$root/target}/wasm32-wasip2/release/isobar_plugin_canary_js.wasm}
stamp=$out.inputs

command -v npm >/dev/null 2>&1 || { echo "canary-js: npm not found (Node.js 20+ is needed)" >&2; exit 1; }

# Exactly the locked versions. Not `npm ci`: the registry these machines
# reach lacks some other platforms' optional binaries (rolldown, jco-node-fs,
# componentize-qjs bindings for darwin/win32/musl), so the lockfile cannot
# list them and `npm ci` refuses it as out of sync. `npm install --no-save`
# installs from the lockfile and never rewrites it (checked below).
if ! cmp -s package-lock.json node_modules/.isobar-package-lock.json; then
    cp package-lock.json package-lock.json.orig
    npm install --no-save --no-audit --no-fund --ignore-scripts
    if ! cmp -s package-lock.json package-lock.json.orig; then
        mv package-lock.json.orig package-lock.json
        echo "canary-js: package-lock.json does not match package.json; run npm install and commit it" >&2
        exit 1
    fi
    rm package-lock.json.orig
    cp package-lock.json node_modules/.isobar-package-lock.json
fi

# node_modules first, even when the component is up to date: `npm test`
# transpiles it with the same jco (a fresh clone reuses a cached component).
inputs=$( (find src ../../wit/plugin-0.2.wit -type f | LC_ALL=C sort; echo package.json package-lock.json build.sh) | xargs sha256sum | sha256sum | cut -d' ' -f1)
if [ -f "$out" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$inputs" ]; then
    echo "canary-js: up to date: $out"
    exit 0
fi

mkdir -p "$(dirname "$out")"
# --disable all: no WASI imports at all (no stdio, clocks, random, http), so
# the component needs nothing but the contract's `store` and `log`.
npx --no-install jco componentize src/canary.js \
    --wit ../../wit/plugin-0.2.wit --world-name policy \
    --disable all \
    -o "$out.tmp"
mv "$out.tmp" "$out"
echo "$inputs" > "$stamp"
ls -l "$out"
