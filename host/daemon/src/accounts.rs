//! Accounts: the users file (argon2id hashes), password checks, and the [`Directory`] the
//! SMTP core asks about local mailboxes.
//!
//! File format (TOML), written by `portcullis user add`:
//!
//! ```toml
//! [accounts."alice@example.org"]
//! password = "$argon2id$v=19$m=19456,t=2,p=1$..."
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use argon2::Argon2;
use argon2::password_hash::phc::PasswordHash;
use argon2::password_hash::{PasswordHasher, PasswordVerifier};
use portcullis_smtp::session::{AuthOutcome, Credentials, Target};
use portcullis_smtp::{Destination, Directory, Mailbox};
use serde::{Deserialize, Serialize};

use crate::auth_cache::{AuthCache, Source};
use crate::config::aliases::{AliasTable, MAX_DEPTH, MAX_TARGETS};
use crate::srs::Srs;

/// Problems with the users file.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AccountsError {
    /// It could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// It is not valid TOML of the expected shape.
    #[error("{path}: {message}")]
    Format {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// The account name is not `local@domain` in a local domain.
    #[error("{0}")]
    BadName(String),
    /// Hashing failed.
    #[error("cannot hash the password: {0}")]
    Hash(String),
    /// The aliases of `[aliases]` and its file do not hold together.
    #[error("{0}")]
    Aliases(String),
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct UsersFile {
    #[serde(default)]
    accounts: BTreeMap<String, AccountEntry>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct AccountEntry {
    password: String,
}

/// The accounts and local domains, loaded at start.
#[derive(Debug)]
pub struct Accounts {
    domains: Vec<String>,
    /// Lower-case `local@domain` → PHC hash string.
    hashes: BTreeMap<String, String>,
    /// `[domains] postmaster`: who gets `postmaster@` and `abuse@` mail.
    postmaster: Option<Mailbox>,
    /// `[auth] dovecot-userdb` is set: unknown local addresses are looked up there.
    userdb: bool,
    /// `[aliases]` and its file.
    aliases: AliasTable,
    /// The SRS rewriting of `[aliases] srs-secret`.
    srs: Option<Srs>,
    /// Credentials verified lately (`[auth] cache-ttl`), this generation's own, or shared
    /// with the generation before when the passwords are the same ([`Accounts::keep_cache_of`]).
    cache: Arc<AuthCache>,
    /// How long the users file's accepts are remembered.
    cache_ttl: std::time::Duration,
}

/// The role addresses of every local domain (RFC 2142) that `[domains] postmaster`
/// receives when no account of that name exists.
const ROLES: [&str; 2] = ["postmaster", "abuse"];

fn mailbox_of(account: &str) -> Option<Mailbox> {
    let (local, domain) = account.rsplit_once('@')?;
    Some(Mailbox {
        local: local.to_string(),
        domain: domain.to_string(),
    })
}

fn read_users(path: &Path) -> Result<UsersFile, AccountsError> {
    match std::fs::read_to_string(path) {
        Ok(text) => toml::from_str(&text).map_err(|e| AccountsError::Format {
            path: path.to_path_buf(),
            message: e.to_string(),
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(UsersFile::default()),
        Err(source) => Err(AccountsError::Io {
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// Turns `alice` or `Alice@Example.org` into `alice@example.org`, checking the domain is ours.
pub fn normalize_name(name: &str, domains: &[String]) -> Result<String, AccountsError> {
    let name = name.trim().to_lowercase();
    let full = if name.contains('@') {
        name
    } else {
        format!("{name}@{}", domains[0])
    };
    let (local, domain) = full
        .rsplit_once('@')
        .ok_or_else(|| AccountsError::BadName(format!("{full:?} is not an address")))?;
    if local.is_empty() || local.contains(['+', '/', '\\', '%', '!', '@', ' ', '"']) || local.starts_with('.')
    {
        return Err(AccountsError::BadName(format!(
            "{local:?} is not a plain local part (letters, digits, dots, hyphens)"
        )));
    }
    if !domains.iter().any(|d| d == domain) {
        return Err(AccountsError::BadName(format!(
            "{domain:?} is not a local domain; local domains are {domains:?}"
        )));
    }
    Ok(full)
}

/// The users file as `portcullis user` edits it: every change is written whole to a new
/// file that replaces the old one by rename, with the old file's mode, owner and group (a
/// new file: mode 0600, owned by `owner` when given — the daemon's user when run as root).
pub struct UsersEditor {
    path: PathBuf,
    domains: Vec<String>,
    owner: Option<(u32, u32)>,
}

impl UsersEditor {
    /// The file at `path`, for accounts in `domains`; `owner` (uid, gid) for a new file.
    pub fn new(path: &Path, domains: &[String], owner: Option<(u32, u32)>) -> Self {
        UsersEditor {
            path: path.to_path_buf(),
            domains: domains.to_vec(),
            owner,
        }
    }

    /// The accounts, sorted.
    pub fn list(&self) -> Result<Vec<String>, AccountsError> {
        Ok(read_users(&self.path)?.accounts.into_keys().collect())
    }

    /// Adds an account, or sets the password of an existing one; returns its full name.
    pub fn add(&self, name: &str, password: &str) -> Result<String, AccountsError> {
        let name = normalize_name(name, &self.domains)?;
        let hash = hash_password(password)?;
        self.edit(|users| {
            users
                .accounts
                .insert(name.clone(), AccountEntry { password: hash });
            Ok(())
        })?;
        Ok(name)
    }

    /// Sets the password of an existing account; returns its full name.
    pub fn passwd(&self, name: &str, password: &str) -> Result<String, AccountsError> {
        let name = normalize_name(name, &self.domains)?;
        let hash = hash_password(password)?;
        self.edit(|users| match users.accounts.get_mut(&name) {
            Some(entry) => {
                entry.password = hash;
                Ok(())
            }
            None => Err(AccountsError::BadName(format!("no account {name:?}"))),
        })?;
        Ok(name)
    }

    /// Removes an account; returns its full name.
    pub fn remove(&self, name: &str) -> Result<String, AccountsError> {
        let name = normalize_name(name, &self.domains)?;
        self.edit(|users| match users.accounts.remove(&name) {
            Some(_) => Ok(()),
            None => Err(AccountsError::BadName(format!("no account {name:?}"))),
        })?;
        Ok(name)
    }

    fn edit(
        &self,
        change: impl FnOnce(&mut UsersFile) -> Result<(), AccountsError>,
    ) -> Result<(), AccountsError> {
        let mut users = read_users(&self.path)?;
        change(&mut users)?;
        let text = format!(
            "# Portcullis accounts, written by `portcullis user`. Hashes are argon2id.\n{}",
            toml::to_string(&users).map_err(|e| AccountsError::Hash(e.to_string()))?
        );
        self.replace(text.as_bytes()).map_err(|source| AccountsError::Io {
            path: self.path.clone(),
            source,
        })
    }

    /// Writes `text` to a new file beside the old one, gives it the old one's mode, owner
    /// and group, syncs it, and renames it over the old one.
    fn replace(&self, text: &[u8]) -> std::io::Result<()> {
        use std::io::Write;
        use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
        if let Some(parent) = self.path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        let old = match std::fs::metadata(&self.path) {
            Ok(meta) => Some(meta),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(e),
        };
        let tmp = self.path.with_extension("toml.tmp");
        let _ = std::fs::remove_file(&tmp);
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        let kept = (|| {
            file.write_all(text)?;
            let owner = old.as_ref().map(|m| (m.uid(), m.gid())).or(self.owner);
            if let Some((uid, gid)) = owner {
                std::os::unix::fs::fchown(&file, Some(uid), Some(gid)).map_err(|e| {
                    std::io::Error::new(
                        e.kind(),
                        format!(
                            "cannot give the new users file owner {uid}:{gid} (run as that user or root): {e}"
                        ),
                    )
                })?;
            }
            if let Some(meta) = &old {
                file.set_permissions(std::fs::Permissions::from_mode(meta.mode() & 0o7777))?;
            }
            file.sync_all()?;
            std::fs::rename(&tmp, &self.path)
        })();
        if kept.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        kept?;
        if let Some(parent) = self.path.parent() {
            portcullis_spool::fsync::sync_dir(parent)?;
        }
        Ok(())
    }
}

fn hash_password(password: &str) -> Result<String, AccountsError> {
    if password.is_empty() {
        return Err(AccountsError::BadName("the password is empty".into()));
    }
    Argon2::default()
        .hash_password(password.as_bytes())
        .map(|h| h.to_string())
        .map_err(|e| AccountsError::Hash(e.to_string()))
}

/// A hash to verify against when the user does not exist, so that timing does not tell.
fn decoy_hash() -> &'static str {
    static DECOY: OnceLock<String> = OnceLock::new();
    DECOY.get_or_init(|| {
        Argon2::default()
            .hash_password(b"portcullis-decoy")
            .map(|h| h.to_string())
            .unwrap_or_default()
    })
}

impl Accounts {
    /// Loads the users file (a missing file is an empty one).
    pub fn load(path: &Path, domains: &[String]) -> Result<Accounts, AccountsError> {
        let users = read_users(path)?;
        let mut hashes = BTreeMap::new();
        for (name, entry) in users.accounts {
            let name = normalize_name(&name, domains).map_err(|e| AccountsError::Format {
                path: path.to_path_buf(),
                message: format!("account {name:?}: {e}"),
            })?;
            PasswordHash::new(&entry.password).map_err(|e| AccountsError::Format {
                path: path.to_path_buf(),
                message: format!("account {name:?}: the password is not a PHC hash: {e}"),
            })?;
            hashes.insert(name, entry.password);
        }
        Ok(Accounts {
            domains: domains.to_vec(),
            hashes,
            postmaster: None,
            userdb: false,
            aliases: AliasTable::default(),
            srs: None,
            cache: Arc::default(),
            cache_ttl: std::time::Duration::ZERO,
        })
    }

    /// Takes over the auth cache of `before` when every account has the password it had
    /// there (a reload that changed aliases only, or nothing: `portcullis user` asks the
    /// daemon and the file watcher sees the write too): what it verified still holds.
    /// Any password added, changed or removed starts an empty cache.
    pub fn keep_cache_of(mut self, before: &Accounts) -> Self {
        if self.hashes == before.hashes && self.cache_ttl == before.cache_ttl {
            self.cache = Arc::clone(&before.cache);
        }
        self
    }

    /// Remembers the users file's accepts for `ttl` (zero: not at all).
    pub fn with_cache_ttl(mut self, ttl: std::time::Duration) -> Self {
        self.cache_ttl = ttl;
        self
    }

    /// The account of credentials the users file accepted lately (`[auth] cache-ttl`).
    pub fn cached(&self, credentials: &Credentials) -> Option<String> {
        self.cache.get(credentials, Source::UsersFile)
    }

    /// The account of credentials the auth plugin whose code has `hash` accepted lately
    /// (its `[[plugin]] cache`).
    pub fn cached_by_plugin(&self, credentials: &Credentials, hash: &str) -> Option<String> {
        self.cache.get(credentials, Source::Plugin(hash))
    }

    /// Remembers an accept of the auth plugin whose code has `hash`, for `ttl`.
    pub fn remember_plugin_accept(
        &self,
        credentials: &Credentials,
        hash: &str,
        account: &str,
        ttl: std::time::Duration,
    ) {
        self.cache
            .remember(credentials, Source::Plugin(hash), account, ttl);
    }

    /// The directory `config` describes: the users file, the postmaster, the user
    /// database, and the aliases of `[aliases]` with those of its file.
    pub fn for_config(config: &crate::config::Config) -> Result<Accounts, AccountsError> {
        let aliases = config
            .aliases
            .load(&config.local_domains)
            .map_err(AccountsError::Aliases)?;
        let srs = config.aliases.srs_secret.as_deref().map(Srs::new);
        Ok(Accounts::load(&config.users_file, &config.local_domains)?
            .with_postmaster(config.postmaster.as_deref())
            .with_userdb(config.dovecot_userdb.is_some())
            .with_aliases(aliases, srs)
            .with_cache_ttl(config.auth_cache_ttl))
    }

    /// Expands `aliases` at RCPT; forwards elsewhere with the sender rewritten by `srs`,
    /// which also turns bounces to rewritten addresses back to their senders.
    pub fn with_aliases(mut self, aliases: AliasTable, srs: Option<Srs>) -> Self {
        self.aliases = aliases;
        self.srs = srs;
        self
    }

    /// How many aliases (catch-alls included) are in force.
    pub fn alias_count(&self) -> usize {
        self.aliases.entries.len()
    }

    /// The alias targets in local domains that lead nowhere (no account, alias, role or
    /// catch-all), for `check-config`: their mail is dropped from the expansion.
    pub fn stray_alias_targets(&self) -> Vec<(String, Mailbox)> {
        if self.userdb {
            return Vec::new();
        }
        let mut stray = Vec::new();
        for (key, targets) in &self.aliases.entries {
            for target in targets {
                let known = !self.is_local_domain(&target.domain)
                    || self.aliases.key_of(target).is_some()
                    || self.mailbox_of_account(target).is_some()
                    || self.aliases.get(&format!("@{}", target.domain_lower())).is_some();
                if !known {
                    stray.push((key.clone(), target.clone()));
                }
            }
        }
        stray
    }

    /// Sends `postmaster@` and `abuse@` mail of every local domain to `account` (from
    /// `[domains] postmaster`, already checked to be in a local domain).
    pub fn with_postmaster(mut self, account: Option<&str>) -> Self {
        self.postmaster = account.and_then(mailbox_of);
        self
    }

    /// Local addresses this file does not hold are looked up in Dovecot's user database
    /// (`[auth] dovecot-userdb`) at RCPT, when `asks` is set.
    pub fn with_userdb(mut self, asks: bool) -> Self {
        self.userdb = asks;
        self
    }

    /// How many accounts exist.
    pub fn len(&self) -> usize {
        self.hashes.len()
    }

    /// Whether there are no accounts.
    pub fn is_empty(&self) -> bool {
        self.hashes.is_empty()
    }

    /// Whether `username` names an account of the users file.
    pub fn knows(&self, username: &str) -> bool {
        normalize_name(username, &self.domains).is_ok_and(|n| self.hashes.contains_key(&n))
    }

    /// The account name of a user another service (Dovecot) authenticated: lower-cased,
    /// in the primary domain when it names none, so that it may send as its own address
    /// and its `+detail` forms as an account of the users file does.
    pub fn account_name(&self, user: &str) -> String {
        let user = user.trim().to_lowercase();
        if user.contains('@') {
            user
        } else {
            format!("{user}@{}", self.domains[0])
        }
    }

    /// Checks credentials; CPU-heavy (argon2), so callers run it off the async threads. An
    /// accept is remembered for `[auth] cache-ttl` ([`Accounts::cached`]).
    pub fn verify(&self, credentials: &Credentials) -> AuthOutcome {
        let name = normalize_name(&credentials.username, &self.domains).ok();
        let stored = name.as_ref().and_then(|n| self.hashes.get(n));
        let hash: &str = match stored {
            Some(h) => h,
            None => decoy_hash(),
        };
        let Ok(parsed) = PasswordHash::new(hash) else {
            return AuthOutcome::TempFail;
        };
        let good = Argon2::default()
            .verify_password(credentials.password.as_bytes(), &parsed)
            .is_ok();
        // A PLAIN authzid different from the user is impersonation: not offered.
        match (good && credentials.authzid.is_none(), name, stored) {
            (true, Some(account), Some(_)) => {
                self.cache
                    .remember(credentials, Source::UsersFile, &account, self.cache_ttl);
                AuthOutcome::Accept { account }
            }
            _ => AuthOutcome::Reject,
        }
    }

    /// The address with any `+detail` removed and lower-cased, if it is local.
    fn account_of(&self, mailbox: &Mailbox) -> Option<String> {
        let domain = mailbox.domain.to_lowercase();
        if !self.is_local_domain(&domain) {
            return None;
        }
        let local = mailbox.local.to_lowercase();
        let base = local.split_once('+').map_or(local.as_str(), |(b, _)| b);
        Some(format!("{base}@{domain}"))
    }
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Alias expansion.
impl Accounts {
    /// The mailbox an account or role address of ours delivers to: the account itself for
    /// `account+detail`, the postmaster account for `postmaster@` and `abuse@`.
    fn mailbox_of_account(&self, address: &Mailbox) -> Option<Mailbox> {
        let account = self.account_of(address)?;
        if self.hashes.contains_key(&account) {
            return mailbox_of(&account);
        }
        let (local, _) = account.rsplit_once('@')?;
        if !ROLES.contains(&local) {
            return None;
        }
        match &self.postmaster {
            Some(postmaster) => Some(postmaster.clone()),
            // RFC 5321 4.5.1: postmaster must be accepted. With nobody named for it, its
            // mail is kept in one place, the primary domain's `postmaster` Maildir
            // (docs/operations.md says how to read it).
            None if local == "postmaster" => Some(Mailbox {
                local: "postmaster".into(),
                domain: self.primary_domain().to_string(),
            }),
            None => None,
        }
    }

    /// A bounce to an address our SRS rewrote: where it goes back to (the original sender,
    /// or the forwarder before us), as a target forwarded there — or delivered here, when
    /// that is one of ours.
    fn reversed(&self, address: &Mailbox) -> Option<Target> {
        let original = self.srs.as_ref()?.reverse(address, unix_now())?;
        if !self.is_local_domain(&original.domain) {
            return Some(Target::Remote(original));
        }
        let mailbox = self.mailbox_of_account(&original)?;
        Some(Target::Local {
            address: original,
            mailbox,
        })
    }

    /// The targets of the alias `key` that `address` stands under, expanded: `None` when
    /// none is deliverable.
    fn expand(&self, address: &Mailbox, key: &str) -> Option<Destination> {
        let mut out = Vec::new();
        let mut path = vec![key.to_string()];
        self.expand_into(key, &mut path, &mut out);
        if out.is_empty() {
            tracing::warn!(alias = %address, "no target of the alias is deliverable; refused");
            return None;
        }
        Some(Destination::Alias(out))
    }

    /// Adds the targets of the alias `key` (the last of `path`, the aliases being
    /// expanded) to `out`, each once, following aliases among them.
    fn expand_into(&self, key: &str, path: &mut Vec<String>, out: &mut Vec<Target>) {
        let Some(targets) = self.aliases.get(key) else {
            return;
        };
        for target in targets {
            if out.len() >= MAX_TARGETS {
                tracing::warn!(
                    alias = key,
                    limit = MAX_TARGETS,
                    "the alias expands to too many targets; the rest are dropped"
                );
                return;
            }
            let found = if !self.is_local_domain(&target.domain) {
                Some(Target::Remote(target.clone()))
            } else {
                self.local_target(target, path, out)
            };
            if let Some(found) = found
                && !out.contains(&found)
            {
                out.push(found);
            }
        }
    }

    /// A target in one of our domains: another alias (expanded into `out`), an account,
    /// an address for the user database, or the domain's catch-all.
    fn local_target(
        &self,
        target: &Mailbox,
        path: &mut Vec<String>,
        out: &mut Vec<Target>,
    ) -> Option<Target> {
        let catch_all = format!("@{}", target.domain_lower());
        let next = self
            .aliases
            .key_of(target)
            .or_else(|| {
                let unknown = self.mailbox_of_account(target).is_none() && !self.userdb;
                (unknown && self.aliases.get(&catch_all).is_some()).then(|| catch_all.clone())
            })
            // An alias on the way is not expanded again: naming itself, an alias keeps a
            // copy in the account of its name (a loop check-config refuses).
            .filter(|next| !path.contains(next));
        if let Some(next) = next {
            if path.len() >= MAX_DEPTH {
                tracing::warn!(alias = %path[0], target = %target, depth = MAX_DEPTH, "aliases nest too deep; the target is dropped");
                return None;
            }
            path.push(next.clone());
            self.expand_into(&next, path, out);
            path.pop();
            return None;
        }
        let mailbox = match self.mailbox_of_account(target) {
            Some(mailbox) => mailbox,
            // Dovecot knows it, or says so at delivery.
            None if self.userdb => {
                let base = target.without_detail();
                Mailbox {
                    local: base.local.to_lowercase(),
                    domain: base.domain_lower(),
                }
            }
            None => {
                tracing::warn!(alias = %path[0], target = %target, "an alias target is no account; skipped");
                return None;
            }
        };
        Some(Target::Local {
            address: target.clone(),
            mailbox,
        })
    }
}

impl Directory for Accounts {
    fn primary_domain(&self) -> &str {
        &self.domains[0]
    }

    fn is_local_domain(&self, domain: &str) -> bool {
        self.domains.iter().any(|d| d.eq_ignore_ascii_case(domain))
    }

    fn resolve(&self, address: &Mailbox) -> Option<Destination> {
        if let Some(original) = self.reversed(address) {
            return Some(Destination::Alias(vec![original]));
        }
        if let Some(key) = self.aliases.key_of(address) {
            return self.expand(address, &key);
        }
        if let Some(mailbox) = self.mailbox_of_account(address) {
            return Some(Destination::Mailbox(mailbox));
        }
        // With a user database, it is asked first; the catch-all comes after it.
        if self.userdb {
            return None;
        }
        self.catch_all(address)
    }

    fn catch_all(&self, address: &Mailbox) -> Option<Destination> {
        let key = format!("@{}", address.domain_lower());
        self.aliases.get(&key)?;
        self.expand(address, &key)
    }

    fn forwarding_sender(&self, sender: &Mailbox, alias: &Mailbox) -> Option<Mailbox> {
        // A sender of ours passes SPF as it is.
        if self.is_local_domain(&sender.domain) {
            return None;
        }
        let srs = self.srs.as_ref()?;
        Some(srs.forward(sender, &alias.domain_lower(), unix_now()))
    }

    fn may_send_as(&self, account: &str, mailbox: &Mailbox) -> bool {
        self.account_of(mailbox).is_some_and(|a| a == account)
    }

    fn looks_up_unknown(&self) -> bool {
        self.userdb
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use portcullis_smtp::command::Mechanism;

    /// AUTH PLAIN credentials.
    fn creds(user: &str, pw: &str) -> Credentials {
        Credentials {
            mechanism: Mechanism::Plain,
            authzid: None,
            username: user.into(),
            password: pw.into(),
        }
    }

    /// A users file (not yet written) in a fresh directory, for accounts in `domains`, and
    /// its editor.
    fn users_file(domains: &[&str]) -> (tempfile::TempDir, PathBuf, Vec<String>, UsersEditor) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("users.toml");
        let domains: Vec<String> = domains.iter().map(|d| d.to_string()).collect();
        let users = UsersEditor::new(&path, &domains, None);
        (dir, path, domains, users)
    }

    #[test]
    fn add_then_verify() {
        let (_dir, path, domains, users) = users_file(&["example.org"]);
        assert_eq!(users.add("Alice", "pw1").unwrap(), "alice@example.org");
        assert!(users.add("bob@elsewhere.example", "pw").is_err());
        assert!(users.add("a%b", "pw").is_err());
        assert!(users.add("carol", "").is_err());
        let accounts = Accounts::load(&path, &domains).unwrap();
        assert_eq!(
            accounts.verify(&creds("alice@EXAMPLE.org", "pw1")),
            AuthOutcome::Accept {
                account: "alice@example.org".into()
            }
        );
        assert_eq!(
            accounts.verify(&creds("alice", "pw1")),
            AuthOutcome::Accept {
                account: "alice@example.org".into()
            }
        );
        assert_eq!(accounts.verify(&creds("alice", "wrong")), AuthOutcome::Reject);
        assert_eq!(accounts.verify(&creds("nobody", "pw1")), AuthOutcome::Reject);
        let mb = |l: &str| Mailbox {
            local: l.into(),
            domain: "example.org".into(),
        };
        assert_eq!(
            accounts.resolve(&mb("Alice+lists")),
            Some(Destination::Mailbox(mb("alice")))
        );
        assert_eq!(
            accounts.resolve(&mb("Postmaster")),
            Some(Destination::Mailbox(mb("postmaster")))
        );
        assert_eq!(accounts.resolve(&mb("abuse")), None);
        assert_eq!(accounts.resolve(&mb("bob")), None);
        // With a postmaster account named, both role addresses go to it.
        let accounts = accounts.with_postmaster(Some("alice@example.org"));
        assert_eq!(
            accounts.resolve(&mb("postmaster")),
            Some(Destination::Mailbox(mb("alice")))
        );
        assert_eq!(
            accounts.resolve(&mb("abuse+x")),
            Some(Destination::Mailbox(mb("alice")))
        );
        assert!(accounts.may_send_as("alice@example.org", &mb("ALICE")));
        assert!(!accounts.may_send_as("alice@example.org", &mb("bob")));
    }

    #[test]
    fn a_reread_keeps_the_auth_cache_only_while_every_password_is_the_same() {
        let (_dir, path, domains, users) = users_file(&["example.org"]);
        users.add("alice", "pw").unwrap();
        let load = || {
            Accounts::load(&path, &domains)
                .unwrap()
                .with_cache_ttl(std::time::Duration::from_secs(600))
        };
        let alice = creds("alice", "pw");
        let first = load();
        assert!(matches!(first.verify(&alice), AuthOutcome::Accept { .. }));
        assert_eq!(first.cached(&alice).as_deref(), Some("alice@example.org"));
        // Read again with nothing changed: what was verified is still remembered.
        let same = load().keep_cache_of(&first);
        assert_eq!(same.cached(&alice).as_deref(), Some("alice@example.org"));
        // Another account added: a password changed the file, the cache starts empty.
        users.add("bob", "pw").unwrap();
        let changed = load().keep_cache_of(&same);
        assert_eq!(changed.cached(&alice), None);
    }

    #[test]
    fn aliases_expand_recursively_with_accounts_catch_alls_and_srs() {
        let (_dir, path, domains, users) = users_file(&["example.org", "example.com"]);
        users.add("alice", "pw").unwrap();
        users.add("bob", "pw").unwrap();
        let table = crate::config::aliases::AliasTable::parse_file(
            "\"team@example.org\" = [\"alice@example.org\", \"sales@example.org\", \"carol@far.example\"]\n\
             \"sales@example.org\" = [\"bob@example.org\", \"alice@example.org\", \"gone@example.org\"]\n\
             \"bob@example.org\" = [\"bob@example.org\", \"bob@far.example\"]\n\
             \"ghost@example.org\" = [\"gone@example.org\"]\n\
             \"@example.com\" = [\"alice@example.org\"]\n",
            &domains,
        )
        .unwrap();
        let accounts = Accounts::load(&path, &domains)
            .unwrap()
            .with_aliases(table, Some(Srs::new("sixteen characters!")));
        let mb = |text: &str| portcullis_smtp::address::parse_mailbox(text).unwrap();
        let local = |address: &str, owner: &str| Target::Local {
            address: mb(address),
            mailbox: mb(owner),
        };
        // Each target once, aliases followed, the account that names itself kept, the
        // target that is nobody skipped.
        assert_eq!(
            accounts.resolve(&mb("Team+x@example.org")),
            Some(Destination::Alias(vec![
                local("alice@example.org", "alice@example.org"),
                local("bob@example.org", "bob@example.org"),
                Target::Remote(mb("bob@far.example")),
                Target::Remote(mb("carol@far.example")),
            ]))
        );
        assert_eq!(
            accounts.resolve(&mb("ghost@example.org")),
            None,
            "no target is deliverable"
        );
        // The catch-all takes what no account or alias takes.
        assert_eq!(
            accounts.resolve(&mb("whoever@example.com")),
            Some(Destination::Alias(vec![local(
                "alice@example.org",
                "alice@example.org"
            )]))
        );
        assert_eq!(accounts.resolve(&mb("whoever@example.org")), None);
        assert_eq!(accounts.alias_count(), 5);
        assert_eq!(
            accounts.stray_alias_targets(),
            [
                ("ghost@example.org".to_string(), mb("gone@example.org")),
                ("sales@example.org".to_string(), mb("gone@example.org"))
            ]
        );
        // A forwarded copy's sender is rewritten, unless it is ours; the bounce to the
        // rewritten address goes back to the sender.
        let sender = mb("dan@origin.test");
        let rewritten = accounts
            .forwarding_sender(&sender, &mb("team@example.org"))
            .expect("rewritten");
        assert!(rewritten.local.starts_with("SRS0=") && rewritten.domain == "example.org");
        assert_eq!(
            accounts.forwarding_sender(&mb("alice@example.org"), &mb("team@example.org")),
            None
        );
        assert_eq!(
            accounts.resolve(&rewritten),
            Some(Destination::Alias(vec![Target::Remote(sender)]))
        );
    }

    #[test]
    fn list_passwd_remove_keep_the_file_mode() {
        use std::os::unix::fs::PermissionsExt;
        let (_dir, path, domains, users) = users_file(&["example.org"]);
        users.add("alice", "pw1").unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&path), 0o600, "a new users file is private");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
        users.add("bob", "pw2").unwrap();
        assert_eq!(mode(&path), 0o640, "an edit keeps the mode it found");
        assert_eq!(users.list().unwrap(), ["alice@example.org", "bob@example.org"]);
        users.passwd("bob", "pw3").unwrap();
        assert!(users.passwd("carol", "pw").is_err());
        let accounts = Accounts::load(&path, &domains).unwrap();
        assert_eq!(accounts.verify(&creds("bob", "pw2")), AuthOutcome::Reject);
        assert!(matches!(
            accounts.verify(&creds("bob", "pw3")),
            AuthOutcome::Accept { .. }
        ));
        users.remove("alice").unwrap();
        assert!(users.remove("alice").is_err());
        assert_eq!(users.list().unwrap(), ["bob@example.org"]);
        assert_eq!(mode(&path), 0o640);
        assert!(!path.with_extension("toml.tmp").exists());
    }
}
