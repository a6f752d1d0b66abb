//! Credentials verified lately, as Dovecot's auth cache keeps them: a client that opens a
//! new session for every message (most mail clients) pays the argon2id verification once
//! per `[auth] cache-ttl`, not once per message.
//!
//! - An entry is filed under an HMAC-SHA256 of the user name and the password (and of what
//!   verified them: the users file, or one auth plugin's code) under a key drawn at random
//!   when the process starts: the password is never kept, and the keys mean nothing
//!   outside this process.
//! - Only successes are remembered; a failure is checked in full every time, and the
//!   cross-session guessing throttle is asked before the cache is.
//! - The cache of the users file belongs to the accounts' passwords: a change of any
//!   password in the users file, or a SIGHUP reload, starts with an empty one.

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use portcullis_smtp::session::Credentials;
use ring::hmac;
use ring::rand::{SecureRandom, SystemRandom};

/// Most entries kept; past it, the expired ones go, and if none has, all of them.
const CAPACITY: usize = 10_000;

/// What verified the credentials (part of the key, so that one source's success never
/// answers for another).
#[derive(Clone, Copy, Debug)]
pub enum Source<'a> {
    /// The users file.
    UsersFile,
    /// An auth plugin, by the hash of its code (a swapped plugin starts afresh).
    Plugin(&'a str),
}

/// Verified credentials, each for a while.
#[derive(Debug, Default)]
pub struct AuthCache {
    entries: Mutex<HashMap<[u8; 32], (String, Instant)>>,
}

/// The process's key: random, drawn once, never written anywhere.
fn key() -> &'static hmac::Key {
    static KEY: OnceLock<hmac::Key> = OnceLock::new();
    KEY.get_or_init(|| {
        let mut secret = [0u8; 32];
        // The system's random source failing is the only way this can fail; a key of
        // zeros would still never store a password.
        let _ = SystemRandom::new().fill(&mut secret);
        hmac::Key::new(hmac::HMAC_SHA256, &secret)
    })
}

/// The entry's key: the name and password, each length-prefixed, and the source.
fn file_key(credentials: &Credentials, source: Source<'_>) -> [u8; 32] {
    let mut context = hmac::Context::with_key(key());
    for part in [
        credentials.username.as_bytes(),
        credentials.password.as_bytes(),
        match source {
            Source::UsersFile => b"users-file".as_slice(),
            Source::Plugin(hash) => hash.as_bytes(),
        },
    ] {
        context.update(&(part.len() as u64).to_be_bytes());
        context.update(part);
    }
    let mut out = [0u8; 32];
    out.copy_from_slice(context.sign().as_ref());
    out
}

impl AuthCache {
    /// The account `credentials` were found to belong to, if verified by `source` less
    /// than the time it was remembered for ago. An authzid (impersonation) never hits.
    pub fn get(&self, credentials: &Credentials, source: Source<'_>) -> Option<String> {
        if credentials.authzid.is_some() {
            return None;
        }
        let key = file_key(credentials, source);
        let entries = self
            .entries
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        entries
            .get(&key)
            .filter(|(_, until)| Instant::now() < *until)
            .map(|(account, _)| account.clone())
    }

    /// Remembers that `source` accepted `credentials` as `account`, for `ttl` (zero: not
    /// at all).
    pub fn remember(&self, credentials: &Credentials, source: Source<'_>, account: &str, ttl: Duration) {
        if ttl.is_zero() || credentials.authzid.is_some() {
            return;
        }
        let key = file_key(credentials, source);
        let now = Instant::now();
        let mut entries = self
            .entries
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if entries.len() >= CAPACITY {
            entries.retain(|_, (_, until)| now < *until);
            if entries.len() >= CAPACITY {
                entries.clear();
            }
        }
        entries.insert(key, (account.to_string(), now + ttl));
    }

    /// How many entries are kept (expired ones included, until they are swept).
    #[cfg(test)]
    fn len(&self) -> usize {
        self.entries
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use portcullis_smtp::command::Mechanism;

    fn creds(user: &str, password: &str) -> Credentials {
        Credentials {
            mechanism: Mechanism::Plain,
            authzid: None,
            username: user.into(),
            password: password.into(),
        }
    }

    #[test]
    fn a_success_is_remembered_for_its_source_and_time_only() {
        let cache = AuthCache::default();
        let alice = creds("alice", "pw");
        cache.remember(
            &alice,
            Source::UsersFile,
            "alice@example.org",
            Duration::from_secs(60),
        );
        assert_eq!(
            cache.get(&alice, Source::UsersFile).as_deref(),
            Some("alice@example.org")
        );
        // Another password, another name, another source, an authzid: not in the cache.
        assert_eq!(cache.get(&creds("alice", "pw2"), Source::UsersFile), None);
        assert_eq!(
            cache.get(&creds("alicepw", ""), Source::UsersFile),
            None,
            "the parts are delimited"
        );
        assert_eq!(cache.get(&alice, Source::Plugin("abc")), None);
        let mut impersonating = alice.clone();
        impersonating.authzid = Some("bob".into());
        assert_eq!(cache.get(&impersonating, Source::UsersFile), None);
        // Expired: gone; a zero time: never kept.
        cache.remember(
            &creds("bob", "pw"),
            Source::UsersFile,
            "bob@example.org",
            Duration::from_nanos(1),
        );
        std::thread::sleep(Duration::from_millis(2));
        assert_eq!(cache.get(&creds("bob", "pw"), Source::UsersFile), None);
        cache.remember(
            &creds("carol", "pw"),
            Source::UsersFile,
            "carol@example.org",
            Duration::ZERO,
        );
        assert_eq!(cache.len(), 2);
    }

    #[test]
    fn it_never_grows_past_its_capacity() {
        let cache = AuthCache::default();
        for n in 0..CAPACITY + 5 {
            cache.remember(
                &creds(&format!("u{n}"), "pw"),
                Source::UsersFile,
                "x",
                Duration::from_secs(60),
            );
        }
        assert!(cache.len() <= CAPACITY);
        assert!(
            cache
                .get(&creds(&format!("u{}", CAPACITY + 4), "pw"), Source::UsersFile)
                .is_some()
        );
    }
}
