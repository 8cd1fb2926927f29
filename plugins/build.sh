#!/bin/sh
# Builds the shipped vipd plugins as WebAssembly components and copies them into OUTDIR as NAME.wasm.
#   plugins/build.sh OUTDIR            shipped plugins only (what an operator deploys)
#   plugins/build.sh OUTDIR --testing  also the test plugins, into OUTDIR/testing/ (what the host tests load)
# Each plugin is built by its own cargo call: the SDK's `selector` and `binder` features must not be unified
# (a component carries exactly one world).
set -eu

if [ $# -lt 1 ]; then
    echo "usage: $0 OUTDIR [--testing]" >&2
    exit 2
fi
out=$1
testing=${2:-}
root=$(cd "$(dirname "$0")/.." && pwd)
target=${CARGO_TARGET_DIR:-$root/target}
mkdir -p "$out"

build() { # crate, destination file
    CARGO_PROFILE_RELEASE_DEBUG=false CARGO_PROFILE_RELEASE_STRIP=true \
        cargo build --manifest-path "$root/Cargo.toml" --target wasm32-wasip2 --release --quiet -p "$1"
    cp "$target/wasm32-wasip2/release/$(echo "$1" | tr - _).wasm" "$2"
    echo "built $2"
}

for name in round-robin least-connections fastest maglev source-affinity port-offset; do
    build "$name" "$out/$name.wasm"
done

if [ "$testing" = "--testing" ]; then
    mkdir -p "$out/testing"
    build misbehave "$out/testing/misbehave.wasm"
    build notices "$out/testing/notices.wasm"
    # Built against vipd:policy@0.1.0 without the SDK: proves old plugins still load.
    build v0-1 "$out/testing/v0-1.wasm"
fi
