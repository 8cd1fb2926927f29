#!/usr/bin/env bash
# Builds app.py into a vipd selector plugin: examples/policies/python/build.sh OUT.wasm
# Installs componentize-py (PyPI, pinned) into a virtualenv of its own under TOOLS (default target/tools of
# the repository) the first time; needs python3 with venv (Debian: python3-venv).
set -euo pipefail
out=$(realpath -m "${1:?usage: build.sh OUT.wasm}")
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../../.." && pwd)
tools=${TOOLS:-$repo/target/tools}
venv=$tools/componentize-py
version=0.25.1
if [[ ! -x $venv/bin/componentize-py ]] || [[ $("$venv/bin/componentize-py" --version) != "componentize-py $version" ]]; then
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check "componentize-py==$version"
fi
mkdir -p "$(dirname "$out")"
cd "$here"
"$venv/bin/componentize-py" -d "$repo/wit" -w selector componentize app -o "$out" >/dev/null
echo "$out"
