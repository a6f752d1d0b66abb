#!/usr/bin/env bash
# The one test command (README and CI): makes sure the pinned toolchain is there, then runs
# every test of the workspace — unit, transcript and end-to-end against the real daemon.
set -euo pipefail
cd "$(dirname "$0")/.."

# A fresh clone's run leaves 3.6 GiB in target/ and 1.1 GiB in fuzz/target/, and the
# end-to-end tests hold 2 GiB for a while (100 unfinished 20 MiB messages in abuse.rs):
# say so at once when the disk is short, rather than fail as dozens of tests out of space.
free_gib() { df -P -k "$1" | awk 'NR == 2 { print int($4 / 1048576) }'; }
for dir in . "${TMPDIR:-/tmp}"; do
  if [ "$(free_gib "$dir")" -lt 6 ]; then
    echo "test.sh: only $(free_gib "$dir") GiB free on the disk of $dir; a fresh build and the tests need about 6" >&2
  fi
done

toolchain=$(sed -n 's/^channel *= *"\(.*\)"/\1/p' rust-toolchain.toml)
# rustup installs nothing by itself on these machines (RUSTUP_AUTO_INSTALL=0): do it here.
if ! rustup run "$toolchain" rustc --version >/dev/null 2>&1; then
  rustup toolchain install "$toolchain" --profile minimal --component rustfmt,clippy
fi
installed=$(rustup component list --toolchain "$toolchain" --installed 2>/dev/null || true)
for component in rustfmt clippy; do
  grep -q "^$component" <<<"$installed" || rustup component add --toolchain "$toolchain" "$component"
done
# The example plugins are WebAssembly components: the build needs the wasm32-wasip2 target,
# and wasm32-unknown-unknown for those that use nothing of WASI (host/runtime/build.rs).
for target in wasm32-wasip2 wasm32-unknown-unknown; do
  rustup target list --toolchain "$toolchain" --installed | grep -q "^$target\$" \
    || rustup target add --toolchain "$toolchain" "$target"
done

# Plugins in other languages are built by their own scripts, with pinned toolchains
# installed under target/toolchains (a missing one is installed, never skipped).
# need FOR CHECK PACKAGE...: when CHECK fails, installs the Debian packages (as root) or
# says which are needed.
need() {
  local what=$1 check=$2
  shift 2
  bash -c "$check" >/dev/null 2>&1 && return 0
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    apt-get update -qq && apt-get install -y -qq --no-install-recommends "$@"
  else
    echo "$what needs: apt-get install $*" >&2
    exit 1
  fi
}
need plugins/python "python3 -c 'import venv, ensurepip'" python3 python3-venv
plugins/python/build.sh
need plugins/javascript "command -v npm" nodejs npm
plugins/javascript/build.sh
need plugins/c "command -v clang-19 && test -f /usr/lib/wasm32-wasi/libc.a" \
  clang-19 lld-19 libclang-rt-19-dev-wasm32 wasi-libc
plugins/c/build.sh
# Real mail services the end-to-end tests start on loopback with their own config.
need tests/e2e "command -v dovecot && test -x /usr/lib/dovecot/imap && test -x /usr/lib/dovecot/lmtp" \
  dovecot-core dovecot-imapd dovecot-lmtpd
# OpenSSL makes the keys of the independent DKIM signer (tests/e2e/authentication.rs).
need tests/e2e "command -v openssl" openssl
# clamd (with a socket and a signature database of the test's own), rspamd and
# clamav-milter, started by the tests on loopback (testing/kit); Postfix is installed by
# the tests that start one (testing/kit/src/postfix.rs, which preseeds debconf).
need testing/kit "test -x /usr/sbin/clamd" clamav-daemon
need testing/kit "test -x /usr/bin/rspamd" rspamd
need testing/kit "test -x /usr/sbin/clamav-milter" clamav-milter
# Redis, for the rate counters two nodes share (tests/e2e/stack.rs).
need testing/kit "test -x /usr/bin/redis-server && command -v redis-cli" redis-server
# postsrsd, which reverses the SRS addresses of alias forwarding (tests/e2e/aliases.rs).
need tests/e2e "test -x /usr/sbin/postsrsd" postsrsd
# An independent DKIM signer and verifier (dkimpy, with dnspython, PyNaCl for Ed25519 and
# authres for ARC) from PyPI, in a venv of its own.
if ! target/e2e-python/bin/python -c 'import dkim, dns.resolver, nacl, authres' >/dev/null 2>&1; then
  python3 -m venv target/e2e-python
  target/e2e-python/bin/pip install -q dkimpy==1.1.8 dnspython==2.9.2 pynacl authres==1.2.0
fi

# The helpers the shipped plugins share are plain Rust: their unit tests run natively.
(cd plugins && cargo test --locked --quiet -p plugin-kit --target-dir ../target/plugins)
cargo test --workspace --locked "$@"

# Every fuzz target for a short, fixed time (nightly and cargo-fuzz, installed if missing):
# what reads untrusted or on-disk bytes must never panic. Long runs: scripts/fuzz.sh 3600.
scripts/fuzz.sh 20
