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
    /// What its build needs, and how to get it (build.sh checks the same first).
    needs: &'static str,
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
    needs: "Rust (https://rustup.rs) with the wasm32-wasip2 target: rustup target add wasm32-wasip2",
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
    needs: "python3 with venv: apt-get install python3 python3-venv (build.sh installs componentize-py 0.25.1 into .venv; the first build downloads it)",
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
    needs: "Node.js 18 or later and npm: apt-get install nodejs npm (build.sh runs npm ci for componentize-js)",
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
    needs: "apt-get install clang-19 lld-19 libclang-rt-19-dev-wasm32 wasi-libc python3-venv, and cargo (build.sh installs wit-bindgen and wasm-tools into .tools; the first build takes a few minutes)",
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

/// What to do once a starter is written.
pub struct Written {
    /// The new folder.
    pub dir: PathBuf,
    /// The build's prerequisites and how to install them.
    pub needs: &'static str,
    /// The `plugin test` command that fits the hook.
    pub try_it: String,
}

/// The `plugin test` command line for a starter of `hook` built as `wasm`.
fn try_command(wasm: &str, hook: &str) -> String {
    match hook {
        "auth" => {
            format!("portcullis plugin test {wasm} --hook auth --user alice@example.org --password secret")
        }
        "rate" => format!("portcullis plugin test {wasm} --hook rate --usage 12 MESSAGE.eml"),
        _ => format!("portcullis plugin test {wasm} --hook {hook} MESSAGE.eml"),
    }
}

/// Writes the starter for `lang` and `hook` into a new folder `name`.
pub fn run(lang: &str, hook: &str, name: &str) -> Result<Written, String> {
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
        // The templates call their output starter.wasm; the copy is named after the plugin.
        let text = text.replace("starter.wasm", &format!("{name}.wasm"));
        let text = if path == "Cargo.toml" {
            text.replacen("name = \"starter\"", &format!("name = \"{name}\""), 1)
        } else {
            text
        };
        std::fs::write(&dest, text).map_err(|e| format!("{}: {e}", dest.display()))?;
        if executable {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&dest, std::fs::Permissions::from_mode(0o755))
                .map_err(|e| format!("{}: {e}", dest.display()))?;
        }
    }
    Ok(Written {
        try_it: try_command(&format!("{}/{name}.wasm", dir.display()), hook),
        dir,
        needs: starter.needs,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hints_fit_the_hook() {
        assert!(
            try_command("x.wasm", "auth").contains("--user")
                && !try_command("x.wasm", "auth").contains("MESSAGE")
        );
        assert!(try_command("x.wasm", "rate").contains("--usage"));
        assert!(try_command("x.wasm", "spam").ends_with("--hook spam MESSAGE.eml"));
    }
}
