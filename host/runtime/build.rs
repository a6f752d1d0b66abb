//! Builds the plugins under `plugins/` as WebAssembly components, so that `cargo build`,
//! `cargo run` and `cargo test` need nothing else. The wasmtime project builds its own test
//! programs the same way.
//!
//! Most are built for wasm32-wasip2, which makes components by itself. The content filters
//! of every MX message ([`BARE`]) use nothing of WASI: they are built for
//! wasm32-unknown-unknown, with the kit's arena as their allocator, and made components
//! here (`wit-component`), so that an instance links only the host's own interfaces instead
//! of the WASI ones Rust's standard library pulls in on wasip2 (docs/benchmarks.md, round
//! five). Every component lands in `target/plugins/components/`, where operators take
//! them from, and in this build's `OUT_DIR`, where the host and the tests do.
//!
//! The plugins are their own cargo workspace with their own target directory
//! (`target/plugins`), so this nested cargo never waits on the outer build's lock.

// Without the engine (the config parser's fuzz target) nothing is built: the helpers below
// are then unused.
#![cfg_attr(not(feature = "engine"), allow(dead_code, unused_imports))]

use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

const TARGET: &str = "wasm32-wasip2";
/// The target of the plugins that use nothing of WASI.
const BARE_TARGET: &str = "wasm32-unknown-unknown";
/// The plugins built for [`BARE_TARGET`], by package name.
const BARE: &[&str] = &["virus-signatures", "spam-rules"];
/// The components built for [`TARGET`] the host embeds or the tests load, by crate file
/// name.
const OUTPUTS: &[&str] = &[
    "auth_table",
    "rate_limit",
    "clamav",
    "dnsbl",
    "rspamd",
    "milter",
    "hostile",
    "probe",
    "legacy",
];

#[cfg(not(feature = "engine"))]
fn main() {
    // Without the engine there is nothing to embed, and nothing to build.
}

#[cfg(feature = "engine")]
fn main() {
    let manifest_dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let root = manifest_dir.join("../..").canonicalize().expect("workspace root");
    let plugins = root.join("plugins");
    let out = PathBuf::from(env::var("OUT_DIR").expect("cargo sets OUT_DIR")).join("plugins");
    std::fs::create_dir_all(&out).expect("create OUT_DIR/plugins");

    for watched in [
        ".cargo",
        "Cargo.toml",
        "Cargo.lock",
        "kit",
        "auth-table",
        "rate-limit",
        "virus-signatures",
        "spam-rules",
        "clamav",
        "dnsbl",
        "rspamd",
        "milter",
        "testing",
    ] {
        println!("cargo:rerun-if-changed={}", plugins.join(watched).display());
    }
    println!("cargo:rerun-if-changed={}", root.join("wit").display());
    println!("cargo:rustc-env=PORTCULLIS_BUILT_PLUGINS={}", out.display());

    ensure_target(&plugins, TARGET);
    ensure_target(&plugins, BARE_TARGET);
    let target_dir = env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"))
        .join("plugins");
    let components = target_dir.join("components");
    std::fs::create_dir_all(&components).expect("create target/plugins/components");
    let release = target_dir.join(TARGET).join("release");

    let mut all = vec!["--workspace"];
    for package in BARE {
        all.extend(["--exclude", package]);
    }
    cargo_build(&plugins, &target_dir, TARGET, &all);
    for name in OUTPUTS {
        let file = format!("{name}.wasm");
        copy(&release.join(&file), &components.join(&file));
        copy(&release.join(&file), &out.join(&file));
    }
    let bare: Vec<&str> = BARE.iter().flat_map(|package| ["-p", package]).collect();
    cargo_build(&plugins, &target_dir, BARE_TARGET, &bare);
    for package in BARE {
        let file = format!("{}.wasm", package.replace('-', "_"));
        let module = target_dir.join(BARE_TARGET).join("release").join(&file);
        let component = componentize(&module);
        write(&components.join(&file), &component);
        write(&out.join(&file), &component);
    }
    // The second version of the probe plugin, for the hot-swap tests.
    cargo_build(
        &plugins,
        &target_dir,
        TARGET,
        &["-p", "probe", "--features", "version-b"],
    );
    copy(&release.join("probe.wasm"), &out.join("probe_b.wasm"));
}

/// The component of a core module built with wit-bindgen (which left the component's
/// type in a custom section), checked.
#[cfg(feature = "engine")]
fn componentize(module: &Path) -> Vec<u8> {
    let bytes = std::fs::read(module).unwrap_or_else(|e| panic!("read {}: {e}", module.display()));
    wit_component::ComponentEncoder::default()
        .module(&bytes)
        .and_then(|encoder| encoder.validate(true).encode())
        .unwrap_or_else(|e| panic!("make a component of {}: {e:#}", module.display()))
}

fn write(to: &Path, bytes: &[u8]) {
    std::fs::write(to, bytes).unwrap_or_else(|e| panic!("write {}: {e}", to.display()));
}

/// The toolchain's own program `name`: under rustup, its proxy run in `plugins/` with
/// nothing of the outer build's toolchain choice, so that the plugins are built with the
/// toolchain the repository pins (rust-toolchain.toml) whatever toolchain builds the host
/// (nightly, for the fuzz targets); otherwise what the outer build uses.
fn tool(name: &str, outer: &str, plugins: &Path) -> Command {
    let under_rustup = env::var_os("RUSTUP_TOOLCHAIN").is_some();
    let program = match env::var_os(outer) {
        Some(path) if !under_rustup => path,
        _ => name.into(),
    };
    let mut command = Command::new(program);
    command.current_dir(plugins);
    if under_rustup {
        for var in ["RUSTUP_TOOLCHAIN", "RUSTC", "RUSTDOC", "CARGO"] {
            command.env_remove(var);
        }
    }
    command
}

fn cargo(plugins: &Path) -> Command {
    let mut command = tool("cargo", "CARGO", plugins);
    // Nothing of the outer build may leak into the guest build: no host RUSTFLAGS, no
    // clippy wrapper, no outer target.
    for var in [
        "RUSTFLAGS",
        "CARGO_ENCODED_RUSTFLAGS",
        "RUSTC_WORKSPACE_WRAPPER",
        "CARGO_BUILD_TARGET",
        "CARGO_TARGET_DIR",
        "CARGO_BUILD_RUSTFLAGS",
    ] {
        command.env_remove(var);
    }
    command
}

fn cargo_build(plugins: &Path, target_dir: &Path, target: &str, extra: &[&str]) {
    let status = cargo(plugins)
        .args([
            "build",
            "--release",
            "--locked",
            "--target",
            target,
            "--target-dir",
        ])
        .arg(target_dir)
        .args(extra)
        .status()
        .expect("run cargo for the plugins");
    assert!(
        status.success(),
        "building the plugins in {} failed",
        plugins.display()
    );
}

/// Installs the standard library of `target` if rustup has not: rustup will not do it by
/// itself on machines with RUSTUP_AUTO_INSTALL=0.
fn ensure_target(plugins: &Path, target: &str) {
    let libdir = tool("rustc", "RUSTC", plugins)
        .args(["--print", "target-libdir", "--target", target])
        .output()
        .ok()
        .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()));
    if libdir.is_some_and(|d| d.is_dir()) {
        return;
    }
    println!("cargo:warning=installing the {target} target with rustup (needed to build the plugins)");
    let mut command = Command::new("rustup");
    command.current_dir(plugins).env_remove("RUSTUP_TOOLCHAIN");
    command.args(["target", "add", target]);
    let ok = command.status().is_ok_and(|s| s.success());
    assert!(
        ok,
        "the {target} target is missing and `rustup target add {target}` failed"
    );
}

fn copy(from: &Path, to: &Path) {
    std::fs::copy(from, to).unwrap_or_else(|e| panic!("copy {} to {}: {e}", from.display(), to.display()));
}
