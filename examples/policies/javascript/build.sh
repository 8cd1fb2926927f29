#!/usr/bin/env bash
# Builds policy.js into a vipd selector plugin: examples/policies/javascript/build.sh OUT.wasm
# Installs componentize-js and a Node.js 20 (npm, pinned in package.json) under TOOLS (default target/tools
# of the repository) the first time; needs npm (Debian: npm). componentize-js is called directly: the
# `jco componentize` wrapper (jco 1.35) fails here with "failed to get path metadata" on any WIT path.
set -euo pipefail
out=$(realpath -m "${1:?usage: build.sh OUT.wasm}")
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../../.." && pwd)
tools=${TOOLS:-$repo/target/tools}/componentize-js
mkdir -p "$tools"
if ! cmp -s "$here/package.json" "$tools/package.json" || [[ ! -x $tools/node_modules/.bin/node ]]; then
    cp "$here/package.json" "$tools/package.json"
    (cd "$tools" && npm install --silent --no-audit --no-fund)
fi
mkdir -p "$(dirname "$out")"
cd "$here"
# WASI features the policy does not use are left out: the host gives plugins only powerless WASI anyway.
"$tools/node_modules/.bin/node" "$tools/node_modules/@bytecodealliance/componentize-js/src/cli.js" \
    --wit ../../../wit --world-name selector -d stdio random clocks http fetch-event -o "$out" policy.js
echo "$out"
