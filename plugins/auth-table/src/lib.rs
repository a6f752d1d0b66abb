//! `auth-table`: checks AUTH credentials against a table of accounts and argon2 hashes
//! kept in the plugin's own config.
//!
//! ```toml
//! [[plugin]]
//! hook = "auth"
//! path = "auth_table.wasm"
//! [plugin.config]
//! default-domain = "example.org"          # for bare user names; optional
//! [plugin.config.accounts]
//! "alice@example.org" = "$argon2id$v=19$m=19456,t=2,p=1$..."   # `portcullis user add` writes these
//! ```

use std::collections::BTreeMap;

use argon2::Argon2;
use argon2::password_hash::PasswordVerifier;
use argon2::password_hash::phc::PasswordHash;
use serde::Deserialize;

wit_bindgen::generate!({ path: "../../wit", world: "auth-plugin" });

use exports::portcullis::filter::auth::{AuthResult, Guest, Mechanism};
use portcullis::filter::log::{Level, log};
use portcullis::filter::types::SessionInfo;

#[derive(Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
struct Config {
    #[serde(default)]
    default_domain: Option<String>,
    #[serde(default)]
    accounts: BTreeMap<String, String>,
}

struct AuthTable;

impl Guest for AuthTable {
    fn authenticate(
        _session: SessionInfo,
        _mechanism: Mechanism,
        username: String,
        password: String,
    ) -> AuthResult {
        let config: Config = match serde_json::from_str(&portcullis::filter::config::json()) {
            Ok(c) => c,
            Err(e) => {
                log(Level::Error, &format!("bad config: {e}"));
                return AuthResult::Defer;
            }
        };
        let mut name = username.trim().to_lowercase();
        if !name.contains('@')
            && let Some(domain) = &config.default_domain
        {
            name = format!("{name}@{}", domain.to_lowercase());
        }
        let stored = config
            .accounts
            .iter()
            .find(|(account, _)| account.to_lowercase() == name)
            .map(|(_, hash)| hash.as_str());
        let Some(stored) = stored else {
            return AuthResult::Reject;
        };
        let Ok(hash) = PasswordHash::new(stored) else {
            log(Level::Error, &format!("the hash of {name} is not a PHC string"));
            return AuthResult::Defer;
        };
        match Argon2::default().verify_password(password.as_bytes(), &hash) {
            Ok(()) => AuthResult::Accept(name),
            Err(_) => AuthResult::Reject,
        }
    }
}

export!(AuthTable);
