#!/bin/sh
# Builds <package name>.wasm (the name in Cargo.toml) from this folder (Rust with the
# wasm32-wasip2 target).
set -eu
# Prerequisites first: a build must not run for minutes before finding one missing.
if ! command -v cargo >/dev/null 2>&1; then
    echo "build.sh: Rust is needed; install it from https://rustup.rs, then:" >&2
    echo "  rustup target add wasm32-wasip2" >&2
    exit 1
fi
if command -v rustup >/dev/null 2>&1 && ! rustup target list --installed | grep -q '^wasm32-wasip2$'; then
    echo "build.sh: the wasm32-wasip2 target is missing; add it with:" >&2
    echo "  rustup target add wasm32-wasip2" >&2
    exit 1
fi
cd "$(dirname "$0")"
# The WIT contract: this folder's own wit/, else the repository's (building in place),
# else the one the portcullis binary carries.
if [ ! -d wit ]; then
    if [ -f ../../../wit/worlds.wit ]; then cp -r ../../../wit wit
    elif command -v portcullis >/dev/null 2>&1; then portcullis plugin wit wit
    else echo "no wit/ here: copy the contract in, or put portcullis on PATH" >&2; exit 1
    fi
fi
name=$(sed -n 's/^name = "\(.*\)"/\1/p' Cargo.toml | head -n 1)
cargo build --quiet --release --target wasm32-wasip2
target=${CARGO_TARGET_DIR:-target}
cp "$target/wasm32-wasip2/release/$(echo "$name" | tr - _).wasm" "$name.wasm"
echo "built $(pwd)/$name.wasm"
