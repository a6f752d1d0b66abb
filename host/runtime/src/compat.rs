//! Contract 0.1.0 in terms of 0.2.0: what a plugin built against the first contract is
//! given (the facts it knew) and how its answers read as the current ones. Every answer of
//! 0.1.0 has an exact counterpart in 0.2.0, so the checks applied after a call are the same
//! for both versions.

use portcullis_smtp::Envelope;
use portcullis_smtp::session::{PipelineKind, SessionInfo};

use crate::bindings::{auth, rate, spam, types, v1, virus};

/// The session as 0.1.0 shows it.
pub fn session_info(info: &SessionInfo) -> v1::types::SessionInfo {
    v1::types::SessionInfo {
        pipeline: match info.pipeline {
            PipelineKind::Mx => v1::types::Pipeline::Mx,
            PipelineKind::Submission => v1::types::Pipeline::Submission,
        },
        client_ip: info.peer.to_string(),
        helo: info.greeting.as_ref().map(|g| g.name().to_string()),
        tls: info.security.tls.as_ref().map(|t| v1::types::TlsInfo {
            protocol: t.protocol.clone(),
            cipher: t.cipher.clone(),
        }),
        account: info.security.account.clone(),
    }
}

/// The envelope as 0.1.0 shows it (without ESMTP parameters).
pub fn envelope(envelope: &Envelope, size: u64) -> v1::types::Envelope {
    v1::types::Envelope {
        mail_from: envelope.mail_from.as_ref().map(ToString::to_string),
        rcpt_to: envelope
            .recipients
            .iter()
            .map(|r| r.mailbox.to_string())
            .collect(),
        size,
    }
}

/// The SASL mechanism, in 0.1.0's enum.
pub fn mechanism(
    mechanism: auth::exports::portcullis::filter::auth::Mechanism,
) -> v1::auth::exports::portcullis::filter::auth::Mechanism {
    use auth::exports::portcullis::filter::auth::Mechanism as Now;
    use v1::auth::exports::portcullis::filter::auth::Mechanism as Then;
    match mechanism {
        Now::Plain => Then::Plain,
        Now::Login => Then::Login,
    }
}

/// The host's counters, in 0.1.0's records.
pub fn usage(
    usage: &rate::exports::portcullis::filter::rate::Usage,
) -> v1::rate::exports::portcullis::filter::rate::Usage {
    use rate::exports::portcullis::filter::rate::{Counters, Window};
    use v1::rate::exports::portcullis::filter::rate as then;
    let window = |w: Window| then::Window {
        messages: w.messages,
        recipients: w.recipients,
    };
    let counters = |c: Counters| then::Counters {
        minute: window(c.minute),
        hour: window(c.hour),
        day: window(c.day),
    };
    then::Usage {
        account: counters(usage.account),
        client_ip: counters(usage.client_ip),
    }
}

/// An auth answer of 0.1.0.
pub fn auth_result(
    result: v1::auth::exports::portcullis::filter::auth::AuthResult,
) -> auth::exports::portcullis::filter::auth::AuthResult {
    use auth::exports::portcullis::filter::auth::AuthResult as Now;
    use v1::auth::exports::portcullis::filter::auth::AuthResult as Then;
    match result {
        Then::Accept(account) => Now::Accept(account),
        Then::Reject => Now::Reject,
        Then::Defer => Now::Defer,
    }
}

/// A scan result of 0.1.0.
pub fn scan_result(
    result: v1::virus::exports::portcullis::filter::virus::ScanResult,
) -> virus::exports::portcullis::filter::virus::ScanReport {
    use v1::virus::exports::portcullis::filter::virus::ScanResult as Then;
    use virus::exports::portcullis::filter::virus::ScanResult as Now;
    let found = match result {
        Then::Clean => Now::Clean,
        Then::Infected(name) => Now::Infected(name),
        Then::Error(reason) => Now::Error(reason),
    };
    virus::exports::portcullis::filter::virus::ScanReport {
        found,
        headers: Vec::new(),
    }
}

/// A spam result of 0.1.0.
pub fn spam_result(
    result: v1::spam::exports::portcullis::filter::spam::SpamResult,
) -> spam::exports::portcullis::filter::spam::SpamResult {
    spam::exports::portcullis::filter::spam::SpamResult {
        score: result.score,
        verdict: verdict(result.verdict),
        headers: result.headers.into_iter().map(header).collect(),
        remove_headers: Vec::new(),
    }
}

fn header(header: v1::types::Header) -> types::Header {
    types::Header {
        name: header.name,
        value: header.value,
    }
}

fn reply(reply: v1::types::Reply) -> types::Reply {
    types::Reply {
        code: reply.code,
        enhanced: reply.enhanced.map(|e| types::EnhancedCode {
            class: e.class,
            subject: e.subject,
            detail: e.detail,
        }),
        text: reply.text,
    }
}

/// A verdict of 0.1.0.
pub fn verdict(verdict: v1::types::Verdict) -> types::Verdict {
    use types::Verdict as Now;
    use v1::types::Verdict as Then;
    match verdict {
        Then::Accept => Now::Accept,
        Then::Reject(r) => Now::Reject(reply(r)),
        Then::Defer(r) => Now::Defer(reply(r)),
        Then::Discard => Now::Discard,
        Then::Junk => Now::Junk,
    }
}
