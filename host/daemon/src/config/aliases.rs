//! `[aliases]`: addresses of our domains that stand for others (`"sales@example.org" =
//! ["alice@example.org", "bob@example.net"]`, a catch-all `"@example.org" = [...]`), the
//! file of more of them (`aliases-file`), and the secret of the SRS rewriting of the copies
//! they forward to other domains (`srs-secret`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use portcullis_smtp::Mailbox;
use portcullis_smtp::address::{Syntax, parse_mailbox_with};
use serde::Deserialize;

use super::Problems;

/// How deep aliases may point at aliases.
pub const MAX_DEPTH: usize = 10;
/// How many targets one address may expand to (Postfix's `virtual_alias_expansion_limit`).
pub const MAX_TARGETS: usize = 1000;
/// The shortest `srs-secret` taken.
const MIN_SECRET: usize = 16;

/// `[aliases]`, as written: two settings, and every other key an alias.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct AliasesSection {
    /// A TOML file of more aliases, in the shape of this table (without the settings),
    /// watched and read again when it changes. Default: none.
    pub aliases_file: Option<PathBuf>,
    /// The secret of the SRS rewriting (at least 16 characters; every node that forwards
    /// for the same domains needs the same). Required once an alias has a target in
    /// another domain.
    pub srs_secret: Option<String>,
    /// The aliases: `"local@domain"` or `"@domain"` → a target or a list of them.
    #[serde(flatten)]
    pub entries: BTreeMap<String, toml::Value>,
}

/// The aliases of the config or of the file, checked: keys lower-case (`local@domain`,
/// or `@domain` for a catch-all), targets as written.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AliasTable {
    /// Key → targets, never empty.
    pub entries: BTreeMap<String, Vec<Mailbox>>,
}

/// `[aliases]`, validated.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AliasSettings {
    /// `aliases-file`, absolute.
    pub file: Option<PathBuf>,
    /// `srs-secret`.
    pub srs_secret: Option<String>,
    /// The aliases of the config itself.
    pub table: AliasTable,
}

/// A problem with the alias of `key` (or a setting): the key to name, and what is wrong.
type Found = (String, String);

impl AliasTable {
    /// The targets of the alias named exactly `key` (lower-case).
    pub fn get(&self, key: &str) -> Option<&[Mailbox]> {
        self.entries.get(key).map(Vec::as_slice)
    }

    /// Reads aliases as written (`key = [targets]` or `key = "target"`).
    fn read(raw: BTreeMap<String, toml::Value>, local: &[String], found: &mut Vec<Found>) -> AliasTable {
        let mut entries = BTreeMap::new();
        for (key, value) in raw {
            let name = key.trim().to_lowercase();
            if let Err(why) = check_key(&name, local) {
                found.push((key, why));
                continue;
            }
            let texts = match value {
                toml::Value::String(one) => vec![one],
                toml::Value::Array(many) => many
                    .into_iter()
                    .map(|v| v.as_str().map(str::to_string).unwrap_or_else(|| v.to_string()))
                    .collect(),
                other => {
                    found.push((key, format!("{other} is not a target address or a list of them")));
                    continue;
                }
            };
            if texts.is_empty() {
                found.push((key, "an alias to nothing: list at least one target".into()));
                continue;
            }
            let mut targets = Vec::new();
            for text in texts {
                match parse_mailbox_with(text.trim(), Syntax::Lenient) {
                    Ok(mailbox) if mailbox.routing_hazard().is_none() => targets.push(mailbox),
                    _ => found.push((key.clone(), format!("{text:?} is not an address (local@domain)"))),
                }
            }
            if entries.insert(name, targets).is_some() {
                found.push((key, "is listed twice (keys are not case-sensitive)".into()));
            }
        }
        AliasTable { entries }
    }

    /// Parses an `aliases-file`.
    pub fn parse_file(text: &str, local: &[String]) -> Result<AliasTable, Vec<Found>> {
        let raw: BTreeMap<String, toml::Value> =
            toml::from_str(text).map_err(|e| vec![(String::new(), e.to_string())])?;
        let mut found = Vec::new();
        let table = AliasTable::read(raw, local, &mut found);
        if found.is_empty() { Ok(table) } else { Err(found) }
    }

    /// The alias an address of ours stands under: its own key, then the key without its
    /// `+detail` (`sales+eu@` is `sales@` unless listed itself).
    pub fn key_of(&self, address: &Mailbox) -> Option<String> {
        let full = format!("{}@{}", address.local, address.domain).to_lowercase();
        if self.entries.contains_key(&full) {
            return Some(full);
        }
        let base = address.without_detail();
        let base = format!("{}@{}", base.local, base.domain).to_lowercase();
        self.entries.contains_key(&base).then_some(base)
    }

    /// The problems of the table as a whole: a loop of aliases (an alias that names itself
    /// is not one: it keeps a copy in the account of that name), a chain deeper than
    /// [`MAX_DEPTH`], and targets in other domains without an `srs-secret`.
    fn check(&self, local: &[String], srs: bool, found: &mut Vec<Found>) {
        for (key, targets) in &self.entries {
            if !srs
                && let Some(remote) = targets
                    .iter()
                    .find(|t| !local.iter().any(|d| d.eq_ignore_ascii_case(&t.domain)))
            {
                found.push((
                    key.clone(),
                    format!(
                        "forwards to {remote}, in another domain: set [aliases] srs-secret (at least {MIN_SECRET} characters, the same on every node) so that forwarded mail passes SPF"
                    ),
                ));
            }
            let mut path = vec![key.clone()];
            if let Some(why) = self.walk(&mut path, local) {
                found.push((key.clone(), why));
            }
        }
    }

    /// Follows the aliases the last of `path` names, depth first; what is wrong, if
    /// anything.
    fn walk(&self, path: &mut Vec<String>, local: &[String]) -> Option<String> {
        let key = path.last()?.clone();
        for target in self.entries.get(&key)? {
            if !local.iter().any(|d| d.eq_ignore_ascii_case(&target.domain)) {
                continue;
            }
            let Some(next) = self.key_of(target) else {
                continue;
            };
            if next == key {
                continue;
            }
            if path.contains(&next) {
                path.push(next);
                return Some(format!("an alias loop: {}", path.join(" → ")));
            }
            if path.len() >= MAX_DEPTH {
                return Some(format!(
                    "aliases point at aliases more than {MAX_DEPTH} deep: {} → …",
                    path.join(" → ")
                ));
            }
            path.push(next);
            let why = self.walk(path, local);
            path.pop();
            if why.is_some() {
                return why;
            }
        }
        None
    }
}

/// Whether `key` (lower-case) names an address or a catch-all of a local domain.
fn check_key(key: &str, local: &[String]) -> Result<(), String> {
    let Some((name, domain)) = key.rsplit_once('@') else {
        return Err(
            "is not an address: an alias is \"local@domain\", or \"@domain\" for a catch-all (the settings here are aliases-file and srs-secret)"
                .into(),
        );
    };
    if !local.iter().any(|d| d == domain) {
        return Err(format!(
            "{domain:?} is not a local domain; local domains are {local:?}"
        ));
    }
    if !name.is_empty() {
        let address = parse_mailbox_with(key, Syntax::Lenient).map_err(|e| e.to_string())?;
        if address.routing_hazard().is_some() {
            return Err("is not a plain address".into());
        }
    }
    Ok(())
}

impl AliasSettings {
    /// The config's aliases and those of `aliases-file`, checked together; what is wrong
    /// with them, each problem on its line.
    pub fn load(&self, local: &[String]) -> Result<AliasTable, String> {
        let mut table = self.table.clone();
        let mut found = Vec::new();
        if let Some(file) = &self.file {
            let text = std::fs::read_to_string(file)
                .map_err(|e| format!("aliases.aliases-file: cannot read {}: {e}", file.display()))?;
            let from_file = AliasTable::parse_file(&text, local).map_err(|found| {
                found
                    .iter()
                    .map(|(key, why)| format!("{}: {key}: {why}", file.display()))
                    .collect::<Vec<_>>()
                    .join("\n")
            })?;
            for (key, targets) in from_file.entries {
                if table.entries.insert(key.clone(), targets).is_some() {
                    found.push((key, "is both in [aliases] and in aliases-file".into()));
                }
            }
        }
        table.check(local, self.srs_secret.is_some(), &mut found);
        if found.is_empty() {
            Ok(table)
        } else {
            Err(found
                .iter()
                .map(|(key, why)| format!("aliases.{key:?}: {why}"))
                .collect::<Vec<_>>()
                .join("\n"))
        }
    }
}

/// Validates `[aliases]` (the file is read when the server starts, and by check-config).
pub(super) fn settings(
    section: AliasesSection,
    base: &Path,
    local: &[String],
    problems: &mut Problems<'_>,
) -> AliasSettings {
    let mut found = Vec::new();
    let table = AliasTable::read(section.entries, local, &mut found);
    let srs_secret = section.srs_secret.filter(|secret| {
        let long = secret.chars().count() >= MIN_SECRET;
        if !long {
            problems.push(
                "aliases.srs-secret",
                format!("is shorter than {MIN_SECRET} characters; `openssl rand -base64 24` makes one"),
            );
        }
        long
    });
    table.check(local, srs_secret.is_some(), &mut found);
    for (key, why) in found {
        problems.push(&format!("aliases.{key:?}"), why);
    }
    AliasSettings {
        file: section.aliases_file.map(|f| super::resolve(base, &f)),
        srs_secret,
        table,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(text: &str) -> Result<AliasTable, Vec<Found>> {
        let local = vec!["example.org".to_string(), "example.com".to_string()];
        let mut table = AliasTable::parse_file(text, &local)?;
        let mut found = Vec::new();
        table.check(&local, text.contains("far.example"), &mut found);
        table.entries.retain(|_, _| found.is_empty());
        if found.is_empty() { Ok(table) } else { Err(found) }
    }

    fn problems(text: &str) -> String {
        match table(text) {
            Ok(_) => String::new(),
            Err(found) => format!("{found:?}"),
        }
    }

    #[test]
    fn aliases_read_as_written_and_looked_up_with_or_without_detail() {
        let t = table(
            "\"Sales@Example.org\" = [\"alice@example.org\", \"x@far.example\"]\n\
             \"@example.com\" = \"alice@example.org\"\n\
             \"sales+eu@example.org\" = [\"bob@example.org\"]\n",
        )
        .expect("valid");
        assert_eq!(t.get("sales@example.org").map(<[_]>::len), Some(2));
        assert_eq!(t.get("@example.com").map(<[_]>::len), Some(1));
        let mb = |s: &str| parse_mailbox_with(s, Syntax::Lenient).unwrap();
        assert_eq!(
            t.key_of(&mb("SALES+us@example.org")).as_deref(),
            Some("sales@example.org")
        );
        assert_eq!(
            t.key_of(&mb("sales+eu@example.org")).as_deref(),
            Some("sales+eu@example.org")
        );
        assert_eq!(t.key_of(&mb("bob@example.org")), None);
    }

    #[test]
    fn loops_empty_aliases_and_strangers_are_refused() {
        assert!(
            problems("\"a@example.org\" = [\"b@example.org\"]\n\"b@example.org\" = [\"a@example.org\"]\n")
                .contains("an alias loop: a@example.org → b@example.org → a@example.org")
        );
        assert!(problems("\"a@example.org\" = []\n").contains("an alias to nothing"));
        assert!(problems("\"a@elsewhere.test\" = [\"b@example.org\"]\n").contains("not a local domain"));
        assert!(problems("sales = [\"b@example.org\"]\n").contains("is not an address"));
        assert!(problems("\"a@example.org\" = [\"not an address\"]\n").contains("is not an address"));
        assert!(problems("\"a@example.org\" = 3\n").contains("not a target address"));
        // Naming itself keeps a copy in the account: no loop.
        assert_eq!(
            problems("\"a@example.org\" = [\"a@example.org\", \"a@far.example\"]\n"),
            ""
        );
        let chain: String = (0..12)
            .map(|i| format!("\"a{i}@example.org\" = [\"a{}@example.org\"]\n", i + 1))
            .collect();
        assert!(problems(&chain).contains("more than 10 deep"));
    }

    #[test]
    fn forwarding_elsewhere_needs_a_secret() {
        let local = vec!["example.org".to_string()];
        let mut t = AliasTable::default();
        t.entries.insert(
            "a@example.org".into(),
            vec![parse_mailbox_with("x@elsewhere.test", Syntax::Lenient).unwrap()],
        );
        let mut found = Vec::new();
        t.check(&local, false, &mut found);
        assert!(found[0].1.contains("srs-secret"), "{found:?}");
        found.clear();
        t.check(&local, true, &mut found);
        assert!(found.is_empty());
    }
}
