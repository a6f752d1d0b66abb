//! What spares a client that opens a session per message the full cost of each: verified
//! credentials remembered (`[auth] cache-ttl`, an auth plugin's `cache`) and TLS sessions
//! resumed.

use crate::harness::*;

/// A new submission session (with `config`'s TLS sessions) and its answer to AUTH PLAIN.
fn auth(
    daemon: &Daemon,
    config: &std::sync::Arc<rustls::ClientConfig>,
    user: &str,
    password: &str,
) -> String {
    let mut c = TlsRaw::connect_with(daemon.addr("submission"), config);
    c.cmd(&format!("AUTH PLAIN {}", base64_plain(user, password)))
}

const HIT: &str = "credentials accepted from the auth cache";

/// Asserts that `count` AUTHs were answered from the cache (waiting for the log to show
/// that many, then checking there are no more).
fn hits(daemon: &mut Daemon, count: usize) {
    daemon.wait_log_count(HIT, count);
    let seen = daemon.log().iter().filter(|l| l.contains(HIT)).count();
    assert_eq!(seen, count);
}

#[test]
fn a_verified_password_is_remembered_until_the_users_file_changes_and_never_past_the_throttle() {
    let setup = Setup::new(
        "cache-ttl = \"10m\"\n[limits]\nexempt = []\nauth-failures-per-ip = { max = 2, window = \"10m\" }\n",
    );
    setup.add_user("bob", PASSWORD);
    let mut daemon = setup.start();
    let tls = TlsRaw::config(&setup.cert_pem);
    // Verified once, then remembered.
    assert!(auth(&daemon, &tls, "alice@example.org", PASSWORD).starts_with("235"));
    assert!(auth(&daemon, &tls, "alice@example.org", PASSWORD).starts_with("235"));
    hits(&mut daemon, 1);
    assert!(auth(&daemon, &tls, "bob@example.org", PASSWORD).starts_with("235"));
    // A wrong password is checked, never answered from the cache.
    assert!(auth(&daemon, &tls, "alice@example.org", "wrong").starts_with("535"));
    // The users file changes: every remembered password is checked again, and alice's
    // old one refused.
    setup.add_user("alice", "a new password");
    daemon.wait_log_count("accounts reloaded", 1);
    assert!(auth(&daemon, &tls, "bob@example.org", PASSWORD).starts_with("235"));
    assert!(auth(&daemon, &tls, "bob@example.org", PASSWORD).starts_with("235"));
    hits(&mut daemon, 2);
    assert!(auth(&daemon, &tls, "alice@example.org", PASSWORD).starts_with("535"));
    // Two failures from this address: the throttle answers before the cache does, even
    // for credentials the cache holds.
    let closed = auth(&daemon, &tls, "bob@example.org", PASSWORD);
    assert!(closed.starts_with("454"), "{closed}");
    daemon.wait_log("authentication refused unchecked");
    hits(&mut daemon, 2);
}

#[test]
fn no_cache_when_switched_off_and_an_auth_plugin_only_when_it_says_so() {
    use argon2::password_hash::PasswordHasher;
    let hash = argon2::Argon2::default()
        .hash_password(b"table-pass")
        .expect("hash")
        .to_string();
    let setup = Setup::new("cache-ttl = \"0s\"\n");
    let plugin = |name: &str, cache: &str| {
        format!(
            "\n[[plugin]]\nhook = \"auth\"\nname = \"{name}\"\npath = \"{}\"\n{cache}[plugin.config]\ndefault-domain = \"example.org\"\n\
             [plugin.config.accounts]\n\"carol@example.org\" = \"{hash}\"\n",
            setup.plugin("auth_table.wasm").display()
        )
    };
    // The first plugin knows carol and is asked every time; the second would remember,
    // but is reached only when the first refuses.
    let config = std::fs::read_to_string(setup.config()).expect("config")
        + &plugin("asks", "")
        + &plugin("remembers", "cache = \"5m\"\n");
    std::fs::write(setup.config(), config).expect("config");
    let mut daemon = setup.start();
    let tls = TlsRaw::config(&setup.cert_pem);
    for _ in 0..2 {
        assert!(auth(&daemon, &tls, "alice@example.org", PASSWORD).starts_with("235"));
        assert!(auth(&daemon, &tls, "carol", "table-pass").starts_with("235"));
    }
    daemon.wait_log_count("authenticated", 4);
    hits(&mut daemon, 0);

    // One plugin with `cache`: its accepts are remembered.
    let setup = Setup::new("");
    let config =
        std::fs::read_to_string(setup.config()).expect("config") + &plugin("remembers", "cache = \"5m\"\n");
    std::fs::write(setup.config(), config).expect("config");
    let mut daemon = setup.start();
    let tls = TlsRaw::config(&setup.cert_pem);
    assert!(auth(&daemon, &tls, "carol", "table-pass").starts_with("235"));
    assert!(auth(&daemon, &tls, "carol", "table-pass").starts_with("235"));
    assert!(auth(&daemon, &tls, "carol", "wrong").starts_with("535"));
    daemon.wait_log("authentication failed");
    let from_cache: Vec<String> = daemon
        .log()
        .into_iter()
        .filter(|l| l.contains("credentials accepted from the auth cache"))
        .collect();
    assert_eq!(from_cache.len(), 1, "{from_cache:?}");
    assert!(from_cache[0].contains("source=\"remembers\""), "{from_cache:?}");
}

#[test]
fn a_returning_client_resumes_its_tls_session() {
    let setup = Setup::new("");
    let daemon = setup.start();
    let tls = TlsRaw::config(&setup.cert_pem);
    let first = TlsRaw::connect_with(daemon.addr("submission"), &tls);
    assert!(!first.resumed());
    drop(first);
    for _ in 0..3 {
        let mut again = TlsRaw::connect_with(daemon.addr("submission"), &tls);
        assert!(again.resumed(), "the session of an earlier connection is resumed");
        // A resumed session is a session like any other.
        again.login("alice@example.org");
    }
    // A client that keeps no session gets a full handshake, as before.
    assert!(!TlsRaw::connect(daemon.addr("submission"), &setup.cert_pem).resumed());
}
