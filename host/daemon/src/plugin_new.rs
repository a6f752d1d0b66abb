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

/// A language's starter: the files every plugin in it has, and its main source file with
/// one version per hook (the template folder's own main file is the spam starter; the
/// others live in its `hooks/` folder).
struct Starter {
    files: &'static [File],
    main: &'static str,
    /// auth, rate, virus, spam.
    sources: [&'static str; 4],
}

/// The hooks, in the order of [`Starter::sources`].
const HOOKS: [&str; 4] = ["auth", "rate", "virus", "spam"];

macro_rules! template {
    ($path:literal) => {
        include_str!(concat!("../../../plugins/templates/", $path))
    };
}

const RUST: Starter = Starter {
    files: &[
        ("Cargo.toml", template!("rust/Cargo.toml"), false),
        ("build.sh", template!("rust/build.sh"), true),
    ],
    main: "src/lib.rs",
    sources: [
        template!("rust/hooks/auth.rs"),
        template!("rust/hooks/rate.rs"),
        template!("rust/hooks/virus.rs"),
        template!("rust/src/lib.rs"),
    ],
};
const PYTHON: Starter = Starter {
    files: &[("build.sh", template!("python/build.sh"), true)],
    main: "app.py",
    sources: [
        template!("python/hooks/auth.py"),
        template!("python/hooks/rate.py"),
        template!("python/hooks/virus.py"),
        template!("python/app.py"),
    ],
};
const JAVASCRIPT: Starter = Starter {
    files: &[
        ("package.json", template!("javascript/package.json"), false),
        (
            "package-lock.json",
            template!("javascript/package-lock.json"),
            false,
        ),
        ("build.mjs", template!("javascript/build.mjs"), false),
        ("build.sh", template!("javascript/build.sh"), true),
    ],
    main: "plugin.js",
    sources: [
        template!("javascript/hooks/auth.js"),
        template!("javascript/hooks/rate.js"),
        template!("javascript/hooks/virus.js"),
        template!("javascript/plugin.js"),
    ],
};
const C: Starter = Starter {
    files: &[("build.sh", template!("c/build.sh"), true)],
    main: "plugin.c",
    sources: [
        template!("c/hooks/auth.c"),
        template!("c/hooks/rate.c"),
        template!("c/hooks/virus.c"),
        template!("c/plugin.c"),
    ],
};

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
    let starter = match lang {
        "rust" => RUST,
        "python" => PYTHON,
        "javascript" | "js" => JAVASCRIPT,
        "c" => C,
        other => return Err(format!("{other:?} is not one of rust, python, javascript, c")),
    };
    let source = HOOKS
        .iter()
        .position(|h| *h == hook)
        .map(|i| starter.sources[i])
        .ok_or_else(|| format!("{hook:?} is not one of auth, rate, virus, spam"))?;
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
    for (path, text, executable) in starter
        .files
        .iter()
        .copied()
        .chain([(starter.main, source, false)])
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
