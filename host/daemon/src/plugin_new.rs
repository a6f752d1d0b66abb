//! `portcullis plugin new --lang LANG --hook HOOK NAME`: writes a working starter plugin —
//! the same files as `plugins/templates/<lang>/`, with the WIT contract beside them — so a
//! filter author goes from nothing to `./build.sh` and `portcullis plugin test` in one step.

use std::path::{Path, PathBuf};

/// The contract every starter compiles against.
const WIT: &[(&str, &str)] = &[
    ("wit/types.wit", include_str!("../../../wit/types.wit")),
    ("wit/host.wit", include_str!("../../../wit/host.wit")),
    ("wit/auth.wit", include_str!("../../../wit/auth.wit")),
    ("wit/rate.wit", include_str!("../../../wit/rate.wit")),
    ("wit/virus.wit", include_str!("../../../wit/virus.wit")),
    ("wit/spam.wit", include_str!("../../../wit/spam.wit")),
    ("wit/worlds.wit", include_str!("../../../wit/worlds.wit")),
];

/// One file of a starter: path inside the new folder, contents, executable.
type File = (&'static str, &'static str, bool);

const RUST: &[File] = &[
    (
        "Cargo.toml",
        include_str!("../../../plugins/templates/rust/Cargo.toml"),
        false,
    ),
    (
        "src/lib.rs",
        include_str!("../../../plugins/templates/rust/src/lib.rs"),
        false,
    ),
    (
        "build.sh",
        include_str!("../../../plugins/templates/rust/build.sh"),
        true,
    ),
];
const PYTHON: &[File] = &[
    (
        "app.py",
        include_str!("../../../plugins/templates/python/app.py"),
        false,
    ),
    (
        "build.sh",
        include_str!("../../../plugins/templates/python/build.sh"),
        true,
    ),
];
const JAVASCRIPT: &[File] = &[
    (
        "plugin.js",
        include_str!("../../../plugins/templates/javascript/plugin.js"),
        false,
    ),
    (
        "package.json",
        include_str!("../../../plugins/templates/javascript/package.json"),
        false,
    ),
    (
        "package-lock.json",
        include_str!("../../../plugins/templates/javascript/package-lock.json"),
        false,
    ),
    (
        "build.mjs",
        include_str!("../../../plugins/templates/javascript/build.mjs"),
        false,
    ),
    (
        "build.sh",
        include_str!("../../../plugins/templates/javascript/build.sh"),
        true,
    ),
];
const C: &[File] = &[
    (
        "plugin.c",
        include_str!("../../../plugins/templates/c/plugin.c"),
        false,
    ),
    (
        "build.sh",
        include_str!("../../../plugins/templates/c/build.sh"),
        true,
    ),
];

/// `portcullis plugin wit DIR`: writes the WIT contract into `dir` (what a copied template
/// folder's build script asks for when it has no `wit/` of its own).
pub fn write_wit(dir: &Path) -> Result<(), String> {
    for (path, text) in WIT {
        let name = path.trim_start_matches("wit/");
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let dest = dir.join(name);
        std::fs::write(&dest, text).map_err(|e| format!("{}: {e}", dest.display()))?;
    }
    Ok(())
}

/// Writes the starter for `lang` and `hook` into a new folder `name`; returns its path.
pub fn run(lang: &str, hook: &str, name: &str) -> Result<PathBuf, String> {
    let files = match lang {
        "rust" => RUST,
        "python" => PYTHON,
        "javascript" | "js" => JAVASCRIPT,
        "c" => C,
        other => return Err(format!("{other:?} is not one of rust, python, javascript, c")),
    };
    match hook {
        "spam" => {}
        "auth" | "rate" | "virus" => {
            return Err(format!(
                "starters exist for the spam hook so far; for {hook}, start from the spam starter and \
                 the {hook} examples in plugins/ (see docs/plugins.md)"
            ));
        }
        other => return Err(format!("{other:?} is not one of auth, rate, virus, spam")),
    }
    let valid = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
        && name.as_bytes()[0].is_ascii_lowercase();
    if !valid {
        return Err(format!(
            "{name:?}: use lower-case letters, digits, - and _, starting with a letter (it names the folder and the .wasm)"
        ));
    }
    let dir = Path::new(name).to_path_buf();
    if dir.exists() {
        return Err(format!("{} already exists", dir.display()));
    }
    for (path, text, executable) in files
        .iter()
        .copied()
        .chain(WIT.iter().map(|(p, t)| (*p, *t, false)))
    {
        let dest = dir.join(path);
        if let Some(parent) = dest.parent() {
            std::fs::create_dir_all(parent).map_err(|e| format!("{}: {e}", parent.display()))?;
        }
        let text = if path == "Cargo.toml" {
            text.replacen("name = \"starter\"", &format!("name = \"{name}\""), 1)
        } else {
            text.to_string()
        };
        std::fs::write(&dest, text).map_err(|e| format!("{}: {e}", dest.display()))?;
        if executable {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&dest, std::fs::Permissions::from_mode(0o755))
                .map_err(|e| format!("{}: {e}", dest.display()))?;
        }
    }
    Ok(dir)
}
