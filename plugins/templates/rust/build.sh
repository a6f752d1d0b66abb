#!/bin/sh
# Builds starter.wasm from this folder (Rust with the wasm32-wasip2 target).
set -eu
cd "$(dirname "$0")"
name=$(sed -n 's/^name = "\(.*\)"/\1/p' Cargo.toml | head -n 1)
cargo build --quiet --release --target wasm32-wasip2
target=${CARGO_TARGET_DIR:-target}
cp "$target/wasm32-wasip2/release/$(echo "$name" | tr - _).wasm" "$name.wasm"
echo "built $(pwd)/$name.wasm"
