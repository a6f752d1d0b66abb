//! The example plugins, compiled by this crate's build script from `plugins/` and embedded
//! in the binary, so that the embedded default config can load them on a fresh machine.

/// `auth-table`: accounts and argon2 hashes from its config.
pub const AUTH_TABLE: &[u8] = include_bytes!(concat!(env!("PORTCULLIS_BUILT_PLUGINS"), "/auth_table.wasm"));
/// `rate-limit`: thresholds per account and per IP.
pub const RATE_LIMIT: &[u8] = include_bytes!(concat!(env!("PORTCULLIS_BUILT_PLUGINS"), "/rate_limit.wasm"));
/// `virus-signatures`: EICAR and configured signatures in every MIME part.
pub const VIRUS_SIGNATURES: &[u8] = include_bytes!(concat!(
    env!("PORTCULLIS_BUILT_PLUGINS"),
    "/virus_signatures.wasm"
));
/// `spam-rules`: scored rules with tag and junk thresholds.
pub const SPAM_RULES: &[u8] = include_bytes!(concat!(env!("PORTCULLIS_BUILT_PLUGINS"), "/spam_rules.wasm"));
/// `clamav`: streams every message to clamd over a granted socket (contract 0.2.0).
pub const CLAMAV: &[u8] = include_bytes!(concat!(env!("PORTCULLIS_BUILT_PLUGINS"), "/clamav.wasm"));
/// `dnsbl`: the client's address and the message's domains against DNS blocklists, through
/// the granted resolver (contract 0.2.0).
pub const DNSBL: &[u8] = include_bytes!(concat!(env!("PORTCULLIS_BUILT_PLUGINS"), "/dnsbl.wasm"));
/// `rspamd`: asks rspamd's `/checkv2` over a granted endpoint (contract 0.2.0).
pub const RSPAMD: &[u8] = include_bytes!(concat!(env!("PORTCULLIS_BUILT_PLUGINS"), "/rspamd.wasm"));
/// `milter`: asks one milter (protocol version 6) over a granted endpoint (contract 0.2.0).
pub const MILTER: &[u8] = include_bytes!(concat!(env!("PORTCULLIS_BUILT_PLUGINS"), "/milter.wasm"));

/// Every shipped plugin, with the file names configs use (the embedded default config uses
/// the first four).
pub const ALL: [(&str, &[u8]); 8] = [
    ("auth_table.wasm", AUTH_TABLE),
    ("rate_limit.wasm", RATE_LIMIT),
    ("virus_signatures.wasm", VIRUS_SIGNATURES),
    ("spam_rules.wasm", SPAM_RULES),
    ("clamav.wasm", CLAMAV),
    ("dnsbl.wasm", DNSBL),
    ("rspamd.wasm", RSPAMD),
    ("milter.wasm", MILTER),
];

/// Where the build script left every plugin it built, test-only ones included.
pub const BUILD_DIR: &str = env!("PORTCULLIS_BUILT_PLUGINS");
