#!/usr/bin/env bash
# Runs every fuzz target for SECONDS each (default 20): the short, fixed run the test
# command does, on whatever corpus fuzz/corpus holds (empty on a fresh clone). For a long
# run: scripts/fuzz.sh 3600. Needs the nightly toolchain and cargo-fuzz; installs what is
# missing. A crash stops the run and leaves its input in fuzz/artifacts/TARGET/.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
seconds=${1:-20}
rustup run nightly rustc --version >/dev/null 2>&1 \
  || rustup toolchain install nightly --profile minimal
command -v cargo-fuzz >/dev/null 2>&1 || cargo +nightly install cargo-fuzz --locked
targets=$(sed -n 's/^name = "\(.*\)"/\1/p' Cargo.toml | grep -v '^portcullis-fuzz$')
cargo +nightly fuzz build
# The config target starts from the example configs (any corpus it grew is kept).
mkdir -p corpus/config
for example in ../examples/*.toml; do
  [ -e "corpus/config/${example##*/}" ] || cp "$example" corpus/config/
done
for target in $targets; do
  mkdir -p "corpus/$target"
  echo "fuzz: $target for ${seconds}s"
  log="target/fuzz-$target.log"
  mkdir -p target
  if ! cargo +nightly fuzz run "$target" "corpus/$target" -- \
      -max_total_time="$seconds" -print_final_stats=1 >"$log" 2>&1; then
    tail -n 40 "$log" >&2
    echo "fuzz: $target found a failure; its input is in fuzz/artifacts/$target" >&2
    exit 1
  fi
  grep -E "^stat::(number_of_executed_units|peak_rss_mb)" "$log" | tr '\n' ' '
  echo
done
