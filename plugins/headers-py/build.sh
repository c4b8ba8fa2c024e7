#!/bin/sh
# Builds the Python headers-py policy into a Wasm component with componentize-py.
#
#   sh build.sh            # or: make plugins-py (from the repository root)
#
# Output: $OUT, by default $CARGO_TARGET_DIR/wasm32-wasip2/release/
# isobar_plugin_headers_py.wasm (../../target when CARGO_TARGET_DIR is
# unset), beside the Rust plugins. Nothing is done while the inputs (the
# Python sources, the WIT, requirements.txt, this script) are unchanged. The
# tooling lives in a venv, $CARGO_TARGET_DIR/py-plugins-venv, into which the
# locked requirements.txt is installed (hashes checked) only when it changed.
# Needs python3 (3.9 or later) with venv and pip.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
absolute() { case $1 in /*) echo "$1" ;; *) echo "$(pwd)/$1" ;; esac; }
target=$(absolute "${CARGO_TARGET_DIR:-$root/target}")
out=$(absolute "${OUT:-$target/wasm32-wasip2/release/isobar_plugin_headers_py.wasm}")
stamp=$out.inputs
venv=$target/py-plugins-venv
stage=$target/py-plugins-build/headers-py
cd "$here"

# The component is built from the plugin's modules, not from its tests.
sources=$(find . -maxdepth 1 -name '*.py' ! -name 'test_*' | LC_ALL=C sort)
inputs=$( (echo "$sources"; find ../../wit/plugin-0.2.wit -type f | LC_ALL=C sort; echo requirements.txt build.sh) | xargs sha256sum | sha256sum | cut -d' ' -f1)
if [ -f "$out" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$inputs" ]; then
    echo "headers-py: up to date: $out"
    exit 0
fi

python=${PYTHON:-python3}
command -v "$python" >/dev/null 2>&1 || { echo "headers-py: $python not found (Python 3.9+ with venv is needed)" >&2; exit 1; }
if ! cmp -s requirements.txt "$venv/.isobar-requirements"; then
    [ -x "$venv/bin/python" ] || "$python" -m venv "$venv"
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check \
        --require-hashes --no-deps --only-binary=:all: -r requirements.txt
    cp requirements.txt "$venv/.isobar-requirements"
fi

# Build from a copy of the sources so that the interpreter componentize-py
# runs at build time writes no __pycache__ into the work tree.
rm -rf "$stage"
mkdir -p "$stage" "$(dirname "$out")"
# shellcheck disable=SC2086 # one file name per word, none with spaces
cp $sources "$stage/"
(
    cd "$stage"
    # A venv the caller activated would be searched for modules too.
    unset VIRTUAL_ENV
    "$venv/bin/componentize-py" -d "$root/wit/plugin-0.2.wit" -w policy componentize app -o "$out.tmp"
)
mv "$out.tmp" "$out"
echo "$inputs" > "$stamp"
ls -l "$out"
