//! What a reload may change, as one immutable snapshot: the configuration and what is built
//! from it (session settings, TLS acceptor, accounts, DKIM keys, the resolver). A session takes the snapshot current
//! when it is accepted and keeps it to its end, so a reload never changes the rules (or the
//! certificate) under an open session; new sessions get the new snapshot.

use std::sync::Arc;

use portcullis_outbound::Resolver;
use portcullis_smtp::Settings;
use portcullis_smtp::content::Storage;
use tokio_rustls::TlsAcceptor;

use crate::accounts::Accounts;
use crate::authentication::Checks;
use crate::config::Config;
use crate::dkim::Signers;
use crate::dovecot::{DovecotAuth, DovecotUserdb};
use crate::start_error::StartError;
use crate::tls;

/// One generation of the reloadable state.
pub struct Live {
    /// The validated configuration.
    pub config: Config,
    /// What the SMTP core needs to know of it.
    pub settings: Arc<Settings>,
    /// Present when a certificate is configured.
    pub tls: Option<TlsAcceptor>,
    /// The accounts and local domains.
    pub accounts: Arc<Accounts>,
    /// The `[[dkim]]` keys, loaded.
    pub signers: Arc<Signers>,
    /// The resolver of `[dns]`, shared by outbound delivery and the authentication checks.
    pub resolver: Resolver,
    /// The mail authentication checks of MX (`[authentication]`).
    pub checks: Arc<Checks>,
    /// `[auth] dovecot`: Dovecot's authentication service, when configured.
    pub dovecot: Option<DovecotAuth>,
    /// `[auth] dovecot-userdb`: Dovecot's user database, when configured.
    pub userdb: Option<DovecotUserdb>,
}

impl Live {
    /// Builds a generation from `config`: loads (or generates) the certificate and the
    /// accounts. Nothing is swapped in if any of it fails.
    pub fn build(config: Config) -> Result<Live, StartError> {
        let tls = match &config.tls {
            Some(section) => {
                if tls::ensure_self_signed(section, &config.server.hostname)? {
                    tracing::info!(cert = %section.cert.display(), key = %section.key.display(), "generated a self-signed certificate");
                }
                Some(tls::acceptor(section)?)
            }
            None => None,
        };
        let accounts = Accounts::for_config(&config)?;
        let signers = Signers::load(&config.dkim)?;
        let resolver = Resolver::new(&config.dns)?;
        let checks = Checks::new(
            config.authentication.clone(),
            &config.local_domains,
            &config.limits.exempt,
            &config.server.hostname,
            &resolver,
        );
        let settings = Arc::new(Settings {
            hostname: config.server.hostname.clone(),
            limits: config.session_limits(),
            tls_available: tls.is_some(),
            storage: Default::default(),
        });
        let dovecot = config.dovecot.clone().map(DovecotAuth::new);
        let userdb = config.dovecot_userdb.clone().map(DovecotUserdb::new);
        Ok(Live {
            config,
            settings,
            tls,
            accounts: Arc::new(accounts),
            signers: Arc::new(signers),
            resolver,
            checks: Arc::new(checks),
            dovecot,
            userdb,
        })
    }
}

impl Live {
    /// This generation with contents kept in `storage`: the server's memory budget and
    /// its spool for large contents (without, contents stay in memory whole).
    pub fn with_storage(self, storage: &Storage) -> Live {
        if let Some(budget) = &storage.budget {
            budget.set_cap(self.config.limits.buffered_content.as_u64() as usize);
        }
        let settings = Arc::new(Settings {
            storage: storage.clone(),
            ..Settings::clone(&self.settings)
        });
        Live { settings, ..self }
    }

    /// This generation with the accounts and aliases read again from the users file and
    /// the aliases file (one of them changed; nothing else did).
    pub fn reload_accounts(&self) -> Result<Live, crate::accounts::AccountsError> {
        let accounts = Accounts::for_config(&self.config)?.keep_cache_of(&self.accounts);
        Ok(self.with_accounts(Arc::new(accounts)))
    }

    /// This generation with `accounts` in place of its own.
    pub fn with_accounts(&self, accounts: Arc<Accounts>) -> Live {
        Live {
            config: self.config.clone(),
            settings: Arc::clone(&self.settings),
            tls: self.tls.clone(),
            accounts,
            signers: Arc::clone(&self.signers),
            resolver: self.resolver.clone(),
            checks: Arc::clone(&self.checks),
            dovecot: self.dovecot.clone(),
            userdb: self.userdb.clone(),
        }
    }
}

/// Why a reload was refused (the running configuration stays).
pub fn unchangeable(old: &Config, new: &Config) -> Option<String> {
    let listeners = |c: &Config| -> Vec<(&'static str, std::net::SocketAddr)> {
        c.listeners.iter().map(|l| (l.kind.name(), l.address)).collect()
    };
    if listeners(old) != listeners(new) {
        return Some(format!(
            "listeners cannot change on reload (running {:?}, new {:?}); restart to change them",
            listeners(old),
            listeners(new)
        ));
    }
    if old.metrics != new.metrics {
        return Some("[metrics] cannot change on reload; restart to change it".into());
    }
    if old.server.spool_sync != new.server.spool_sync {
        return Some("server.spool-sync cannot change on reload; restart to change it".into());
    }
    if old.delivery.lmtp != new.delivery.lmtp {
        return Some("[delivery] local and lmtp cannot change on reload; restart to change them".into());
    }
    if old.rate != new.rate {
        return Some("[rate] cannot change on reload; restart to change it".into());
    }
    if old.server.data_dir != new.server.data_dir {
        return Some("server.data-dir cannot change on reload; restart to change it".into());
    }
    None
}
