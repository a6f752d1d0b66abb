//! Mail authentication of what arrives on MX: SPF, DKIM, ARC, DMARC and iprev, checked
//! by mail-auth through the server's one resolver, recorded in one
//! `Authentication-Results:` header (RFC 8601), and DMARC's policy applied as
//! `[authentication] dmarc` says. Also the removal, on both pipelines, of
//! `Authentication-Results` fields that claim to be ours.

use std::borrow::Cow;
use std::net::IpAddr;
use std::sync::Arc;

use mail_auth::{
    ArcOutput, AuthenticatedMessage, AuthenticationResults, DkimOutput, DkimResult, DmarcOutput, DmarcResult,
    IprevOutput, IprevResult, MessageAuthenticator, SpfOutput, SpfResult, dmarc::Policy,
    dmarc::verify::DmarcParameters, spf::verify::SpfParameters,
};
use portcullis_outbound::Resolver;
use portcullis_smtp::content::Storage;
use portcullis_smtp::session::{AuthMethod, AuthResult, AuthStatus, Header, SessionInfo};
use portcullis_smtp::{Enhanced, Message, Reply, Verdict};

use crate::config::Network;
use crate::config::authentication::{AuthenticationSettings, DmarcMode};

/// The checks, as configured; one per generation of the configuration.
pub struct Checks {
    settings: AuthenticationSettings,
    /// Our local domains: an authserv-id under one of them is ours.
    local_domains: Vec<String>,
    /// Clients whose results are recorded but never enforced (`[limits] exempt`).
    exempt: Vec<Network>,
    /// Our host name, for SPF's `%{r}` macro.
    hostname: String,
    authenticator: MessageAuthenticator,
}

/// What one method found (one DKIM signature), for the header, the log line, the
/// metrics and the hooks.
type Found = AuthResult;

fn found(method: AuthMethod, status: AuthStatus, domain: Option<&str>, text: String) -> Found {
    AuthResult {
        method,
        status,
        domain: domain.filter(|d| !d.is_empty()).map(str::to_string),
        text,
    }
}

impl Checks {
    /// The checks of `settings`, asking `resolver`.
    pub fn new(
        settings: AuthenticationSettings,
        local_domains: &[String],
        exempt: &[Network],
        hostname: &str,
        resolver: &Resolver,
    ) -> Checks {
        Checks {
            settings,
            local_domains: local_domains.to_vec(),
            exempt: exempt.to_vec(),
            hostname: hostname.to_string(),
            authenticator: MessageAuthenticator(resolver.hickory().clone()),
        }
    }

    /// Runs every configured check on `message` from the client of `info`, within
    /// `[authentication] timeout`, and says what the session does: `Tag` with the results
    /// header, `Junk` for a DMARC quarantine, `Reject` (DMARC reject, or not exactly one
    /// From field) or `Defer` (DMARC could not be checked), as `[authentication] dmarc`
    /// and the client's exemption allow; and each method's result, for the hooks.
    pub async fn run(
        &self,
        info: &SessionInfo,
        message: &Arc<Message>,
        storage: &Storage,
    ) -> (Verdict, Vec<AuthResult>) {
        let froms = portcullis_smtp::fields::fields(&message.body.header_section())
            .iter()
            .filter(|f| f.is("From"))
            .count();
        let found = tokio::time::timeout(
            self.settings.timeout,
            self.evaluate(info, message, storage, froms),
        )
        .await;
        let (found, dmarc) = match found {
            Ok(found) => found,
            Err(_) => {
                tracing::warn!(timeout = ?self.settings.timeout, "the authentication checks timed out");
                self.timed_out()
            }
        };
        let mut value = self.settings.authserv_id.clone();
        if found.is_empty() {
            value.push_str("; none");
        }
        for f in &found {
            value.push_str("; ");
            value.push_str(&f.text);
            crate::metrics::authentication(f.method.name(), f.status.name());
        }
        tracing::info!(results = %value, "authentication checked");
        let header = vec![Header {
            name: "Authentication-Results".into(),
            value,
        }];
        if self.settings.dmarc != DmarcMode::Enforce || crate::abuse::is_exempt(&self.exempt, info.peer) {
            return (Verdict::Tag(header), found);
        }
        let verdict = match dmarc {
            Decision::Deliver => Verdict::Tag(header),
            Decision::Quarantine => Verdict::Junk(header),
            Decision::Reject(text) => Verdict::Reject(Reply::new(550, Some(Enhanced(5, 7, 1)), text)),
            Decision::Retry(text) => Verdict::Defer(Reply::new(451, Some(Enhanced(4, 7, 0)), text)),
        };
        (verdict, found)
    }

    /// Every method `temperror`: the checks took longer than they may.
    fn timed_out(&self) -> (Vec<Found>, Decision) {
        use AuthMethod::*;
        let all = [Iprev, Spf, Dkim, Arc, Dmarc];
        self.unchecked(Vec::new(), &all, "the checks timed out")
    }

    async fn evaluate(
        &self,
        info: &SessionInfo,
        message: &Arc<Message>,
        storage: &Storage,
        froms: usize,
    ) -> (Vec<Found>, Decision) {
        let sender = message
            .envelope
            .mail_from
            .as_ref()
            .map(ToString::to_string)
            .unwrap_or_default();
        let (mut found, spf) = self.envelope_checks(info, &sender).await;
        // DKIM, ARC and DMARC need the whole message in memory at once (mail-auth takes
        // one slice): a large one is read back from its file within the memory budget.
        let bytes = match whole(message, storage).await {
            Ok(bytes) => bytes,
            Err(why) => {
                tracing::warn!(reason = %why, "DKIM, ARC and DMARC not checked");
                return self.unchecked(
                    found,
                    &[AuthMethod::Dkim, AuthMethod::Arc, AuthMethod::Dmarc],
                    &why,
                );
            }
        };
        let Some(parsed) = AuthenticatedMessage::parse(&bytes) else {
            // Nothing to retry: the message itself is not one DMARC can read.
            return self.unreadable(found, froms);
        };
        let s = &self.settings;
        let dkim: Vec<DkimOutput<'_>> = if s.dkim || s.dmarc != DmarcMode::Off {
            self.authenticator.verify_dkim(&parsed).await
        } else {
            Vec::new()
        };
        if s.dkim {
            let header_from = parsed.from.first().cloned().unwrap_or_default();
            found.extend(dkim_found(&dkim, &header_from));
        }
        let arc = if s.arc {
            let arc = self.authenticator.verify_arc(&parsed).await;
            found.push(arc_found(&arc, info.peer));
            Some(arc)
        } else {
            None
        };
        if s.dmarc == DmarcMode::Off {
            return (found, Decision::Deliver);
        }
        let helo = info.greeting.as_ref().map_or("", |g| g.name());
        let mail_from_domain = sender.rsplit_once('@').map_or(helo, |(_, domain)| domain);
        let (dmarc, decision) = self
            .dmarc(&parsed, froms, &dkim, arc.as_ref(), mail_from_domain, &spf)
            .await;
        found.push(dmarc);
        (found, decision)
    }

    /// iprev and SPF: what the connection and the envelope say. SPF is checked when DMARC
    /// needs it even if its own result is not recorded.
    async fn envelope_checks(&self, info: &SessionInfo, sender: &str) -> (Vec<Found>, SpfOutput) {
        let s = &self.settings;
        let (ip, helo) = (info.peer, info.greeting.as_ref().map_or("", |g| g.name()));
        let mut found = Vec::new();
        if s.iprev {
            let iprev = self.authenticator.verify_iprev(ip).await;
            found.push(iprev_found(&iprev, ip));
        }
        if !s.spf && s.dmarc == DmarcMode::Off {
            return (found, SpfOutput::default());
        }
        let params = if sender.is_empty() {
            SpfParameters::verify_ehlo(ip, helo, &self.hostname)
        } else {
            SpfParameters::verify_mail_from(ip, helo, &self.hostname, sender)
        };
        let spf = self.authenticator.verify_spf(params).await;
        if s.spf {
            found.push(spf_found(&s.authserv_id, &spf, ip, sender, helo));
        }
        (found, spf)
    }

    /// `methods` could not be checked (`why`): each one switched on is `temperror`, and
    /// under DMARC the sender is asked to retry.
    fn unchecked(&self, mut found: Vec<Found>, methods: &[AuthMethod], why: &str) -> (Vec<Found>, Decision) {
        let s = &self.settings;
        let on = |method: AuthMethod| match method {
            AuthMethod::Iprev => s.iprev,
            AuthMethod::Spf => s.spf,
            AuthMethod::Dkim => s.dkim,
            AuthMethod::Arc => s.arc,
            AuthMethod::Dmarc => s.dmarc != DmarcMode::Off,
        };
        for &method in methods.iter().filter(|m| on(**m)) {
            let text = format!("{}=temperror (not checked: {why})", method.name());
            found.push(self::found(method, AuthStatus::Temperror, None, text));
        }
        let decision = if s.dmarc == DmarcMode::Off {
            Decision::Deliver
        } else {
            Decision::Retry(format!("DMARC could not be checked ({why}); try again later"))
        };
        (found, decision)
    }

    /// The message has no header section mail-auth can read: DKIM and ARC are `permerror`,
    /// and so is DMARC (refused under `enforce`), as for a message without one From field.
    fn unreadable(&self, mut found: Vec<Found>, froms: usize) -> (Vec<Found>, Decision) {
        let s = &self.settings;
        for (method, _) in [(AuthMethod::Dkim, s.dkim), (AuthMethod::Arc, s.arc)]
            .into_iter()
            .filter(|(_, on)| *on)
        {
            let text = format!("{}=permerror (no header section to verify)", method.name());
            found.push(self::found(method, AuthStatus::Permerror, None, text));
        }
        if s.dmarc == DmarcMode::Off {
            return (found, Decision::Deliver);
        }
        let why = format!(
            "{froms} From header fields in a header section that cannot be read; DMARC needs exactly one"
        );
        let text = format!("dmarc=permerror ({why})");
        found.push(self::found(AuthMethod::Dmarc, AuthStatus::Permerror, None, text));
        (
            found,
            Decision::Reject(format!("message refused: {why} (RFC 5322, RFC 7489)")),
        )
    }

    /// DMARC for the message's one From domain (not exactly one From field is a
    /// `permerror` and a refusal).
    async fn dmarc(
        &self,
        parsed: &AuthenticatedMessage<'_>,
        froms: usize,
        dkim: &[DkimOutput<'_>],
        arc: Option<&ArcOutput<'_>>,
        mail_from_domain: &str,
        spf: &SpfOutput,
    ) -> (Found, Decision) {
        if froms != 1 {
            let why = format!("{froms} From header fields; DMARC needs exactly one");
            let text = format!("dmarc=permerror ({why})");
            let found = found(AuthMethod::Dmarc, AuthStatus::Permerror, None, text);
            return (
                found,
                Decision::Reject(format!("message refused: {why} (RFC 5322, RFC 7489)")),
            );
        }
        let dmarc = self
            .authenticator
            .verify_dmarc(DmarcParameters::new(parsed, dkim, mail_from_domain, spf))
            .await;
        let (comment, decision) = self.dmarc_decision(&dmarc, arc);
        let text = unfold(
            &AuthenticationResults::new("")
                .with_dmarc_result(&dmarc)
                .to_string(),
        ) + &comment;
        let found = found(
            AuthMethod::Dmarc,
            dmarc_status(&dmarc.result()),
            Some(dmarc.domain()),
            text,
        );
        (found, decision)
    }

    /// What DMARC's result and the domain's policy mean here, and a comment for the
    /// header when a trusted ARC sealer overrides a failure.
    fn dmarc_decision(&self, dmarc: &DmarcOutput, arc: Option<&ArcOutput<'_>>) -> (String, Decision) {
        let domain = dmarc.domain();
        match dmarc.result() {
            DmarcResult::Fail(_) => {
                if let Some(sealer) = arc.and_then(|arc| self.trusted_sealer(arc)) {
                    return (
                        format!(" (delivered: ARC sealed by trusted forwarder {sealer})"),
                        Decision::Deliver,
                    );
                }
                let decision = match dmarc.policy() {
                    Policy::Reject => Decision::Reject(format!(
                        "message refused: the DMARC policy of {domain} rejects mail from it that fails authentication"
                    )),
                    Policy::Quarantine => Decision::Quarantine,
                    Policy::None | Policy::Unspecified => Decision::Deliver,
                };
                (String::new(), decision)
            }
            DmarcResult::TempError(_) => (
                String::new(),
                Decision::Retry(format!(
                    "the DMARC policy of {domain} could not be checked (DNS); try again later"
                )),
            ),
            DmarcResult::Pass | DmarcResult::PermError(_) | DmarcResult::None => {
                (String::new(), Decision::Deliver)
            }
        }
    }

    /// The sealer of the latest ARC set, when the chain passes and that sealer is trusted.
    fn trusted_sealer<'a>(&self, arc: &'a ArcOutput<'_>) -> Option<&'a str> {
        if *arc.result() != DkimResult::Pass {
            return None;
        }
        let latest = arc.sets().iter().max_by_key(|set| set.seal.header.i)?;
        let sealer = latest.seal.header.d.as_str();
        let trusted = self
            .settings
            .trusted_arc_sealers
            .iter()
            .any(|d| d.eq_ignore_ascii_case(sealer.trim_end_matches('.')));
        trusted.then_some(sealer)
    }

    /// The ranges of `section` (a header section) holding `Authentication-Results` fields
    /// that claim to be ours (our authserv-id, or a name in one of our local domains): forged,
    /// since nothing before us may speak in our name. They are left out when the message
    /// is delivered.
    pub fn forged_results(&self, section: &[u8]) -> Vec<(u64, u64)> {
        portcullis_smtp::fields::fields(section)
            .into_iter()
            .filter(|field| field.is("Authentication-Results"))
            .filter(|field| {
                let id = authserv_id(&field.value());
                id == self.settings.authserv_id
                    || self.local_domains.iter().any(|d| {
                        id == *d
                            || id
                                .strip_suffix(d.as_str())
                                .is_some_and(|rest| rest.ends_with('.'))
                    })
            })
            .map(|field| (field.range.start as u64, field.range.end as u64))
            .collect()
    }
}

/// What DMARC means for the message.
enum Decision {
    Deliver,
    Quarantine,
    Reject(String),
    Retry(String),
}

/// The message in one piece: borrowed when in memory, else read from its file within the
/// memory budget (an `Err` says why not).
async fn whole<'a>(message: &'a Arc<Message>, storage: &Storage) -> Result<Cow<'a, [u8]>, String> {
    if let Some(bytes) = message.body.in_memory() {
        return Ok(Cow::Borrowed(bytes));
    }
    let len = usize::try_from(message.body.len()).map_err(|_| "too large".to_string())?;
    let reservation = match &storage.budget {
        Some(budget) => Some(budget.reserve(len).ok_or("the server's memory budget is spent")?),
        None => None,
    };
    let message = Arc::clone(message);
    let bytes = tokio::task::spawn_blocking(move || message.body.to_vec())
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| format!("cannot read the spooled content: {e}"))?;
    drop(reservation);
    Ok(Cow::Owned(bytes))
}

/// The authserv-id of an `Authentication-Results` value: its first token, lower-case,
/// past any comment.
fn authserv_id(value: &str) -> String {
    let mut rest = value.trim_start();
    while let Some(after) = rest.strip_prefix('(') {
        rest = after.split_once(')').map_or("", |(_, r)| r).trim_start();
    }
    rest.split([';', ' ', '\t', '('])
        .next()
        .unwrap_or("")
        .trim_end_matches('.')
        .to_ascii_lowercase()
}

/// A part written by mail-auth (`";\r\n\tmethod=..."`) as one line, without the separator.
fn unfold(part: &str) -> String {
    part.trim_start_matches(';')
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

fn spf_found(authserv_id: &str, spf: &SpfOutput, ip: IpAddr, sender: &str, helo: &str) -> Found {
    let text = if sender.is_empty() {
        AuthenticationResults::new(authserv_id).with_spf_ehlo_result(spf, ip, helo)
    } else {
        AuthenticationResults::new(authserv_id).with_spf_mailfrom_result(spf, ip, sender, helo)
    };
    let status = match spf.result() {
        SpfResult::Pass => AuthStatus::Pass,
        SpfResult::Fail => AuthStatus::Fail,
        SpfResult::SoftFail => AuthStatus::Softfail,
        SpfResult::Neutral => AuthStatus::Neutral,
        SpfResult::TempError => AuthStatus::Temperror,
        SpfResult::PermError => AuthStatus::Permerror,
        SpfResult::None => AuthStatus::None,
    };
    let text = unfold(text.to_string().trim_start_matches(authserv_id));
    found(AuthMethod::Spf, status, Some(spf.domain()), text)
}

/// One result per signature, in the message's order (`none` without one).
fn dkim_found(dkim: &[DkimOutput<'_>], header_from: &str) -> Vec<Found> {
    if dkim.is_empty() {
        let text = "dkim=none (no signature)".to_string();
        return vec![found(AuthMethod::Dkim, AuthStatus::None, None, text)];
    }
    dkim.iter()
        .map(|output| {
            let text = AuthenticationResults::new("")
                .with_dkim_results(std::slice::from_ref(output), header_from)
                .to_string();
            let domain = output.signature().map(|signature| signature.d.as_str());
            found(
                AuthMethod::Dkim,
                dkim_status(output.result()),
                domain,
                unfold(&text),
            )
        })
        .collect()
}

fn arc_found(arc: &ArcOutput<'_>, ip: IpAddr) -> Found {
    let text = AuthenticationResults::new("")
        .with_arc_result(arc, ip)
        .to_string();
    found(AuthMethod::Arc, dkim_status(arc.result()), None, unfold(&text))
}

fn iprev_found(iprev: &IprevOutput, ip: IpAddr) -> Found {
    let text = AuthenticationResults::new("")
        .with_iprev_result(iprev, ip)
        .to_string();
    let status = match &iprev.result {
        IprevResult::Pass => AuthStatus::Pass,
        IprevResult::Fail(_) => AuthStatus::Fail,
        IprevResult::TempError(_) => AuthStatus::Temperror,
        IprevResult::PermError(_) => AuthStatus::Permerror,
        IprevResult::None => AuthStatus::None,
    };
    found(AuthMethod::Iprev, status, None, unfold(&text))
}

fn dkim_status(result: &DkimResult) -> AuthStatus {
    match result {
        DkimResult::Pass => AuthStatus::Pass,
        DkimResult::Neutral(_) => AuthStatus::Neutral,
        DkimResult::Fail(_) => AuthStatus::Fail,
        DkimResult::PermError(_) => AuthStatus::Permerror,
        DkimResult::TempError(_) => AuthStatus::Temperror,
        DkimResult::None => AuthStatus::None,
    }
}

fn dmarc_status(result: &DmarcResult) -> AuthStatus {
    match result {
        DmarcResult::Pass => AuthStatus::Pass,
        DmarcResult::Fail(_) => AuthStatus::Fail,
        DmarcResult::TempError(_) => AuthStatus::Temperror,
        DmarcResult::PermError(_) => AuthStatus::Permerror,
        DmarcResult::None => AuthStatus::None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn authserv_ids_are_read_past_comments() {
        assert_eq!(authserv_id(" Example.TEST; spf=pass"), "example.test");
        assert_eq!(authserv_id("(forged) mx.example.test 1; none"), "mx.example.test");
        assert_eq!(authserv_id("example.test.;dkim=pass"), "example.test");
        assert_eq!(authserv_id(""), "");
    }

    #[test]
    fn mail_auth_parts_become_one_line() {
        assert_eq!(
            unfold(";\r\n\tspf=pass smtp.mailfrom=a@b"),
            "spf=pass smtp.mailfrom=a@b"
        );
    }
}
