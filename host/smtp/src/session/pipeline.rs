//! The two fixed pipelines, as types: [`Submission`] (587, 465) and [`Mx`] (25).
//!
//! A session is a `Session<P: Pipeline>`; the listener picks `P` once at accept time and the
//! state machine never asks which port it is on. Everything that differs between the two
//! flows is here, and only here.

use crate::address::Path;
use crate::command::Command;
use crate::replies;
use crate::reply::Reply;

use super::{Destination, Directory, Hook, Security};

/// Which pipeline a session runs, for logs and trace headers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PipelineKind {
    /// Mail exchange, port 25.
    Mx,
    /// Message submission, ports 587 and 465.
    Submission,
}

/// A recipient that passed the pipeline's checks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RoutedRecipient {
    /// The recipient as given (the source route dropped, `<postmaster>` completed).
    pub mailbox: crate::address::Mailbox,
    /// Whether it is in one of our domains.
    pub local: bool,
    /// For a local recipient, where its mail goes ([`Directory::resolve`]): a mailbox, or
    /// the targets of an alias.
    pub destination: Option<Destination>,
}

/// The policy of one fixed flow. Implemented by [`Mx`] and [`Submission`] only.
pub trait Pipeline: Send + Sync + 'static {
    /// Which flow this is.
    const KIND: PipelineKind;
    /// Whether AUTH is ever advertised and accepted (never in cleartext).
    const OFFERS_AUTH: bool;
    /// Hooks consulted once the envelope is complete, before content is read.
    const BEFORE_CONTENT: &'static [Hook];
    /// Hooks consulted once the content is received, before it is spooled.
    const AFTER_CONTENT: &'static [Hook];
    /// Whether the host checks the sender's authentication (SPF, DKIM, ARC, DMARC, iprev)
    /// once the content is received, before the hooks after content.
    const CHECKS_AUTHENTICATION: bool;

    /// Refuses commands the flow does not allow yet (the 530 gates of submission).
    fn gate(command: &Command, security: &Security) -> Result<(), Reply>;

    /// Checks MAIL FROM against who the client is.
    fn check_sender(path: &Path, security: &Security, directory: &dyn Directory) -> Result<(), Reply>;

    /// Checks one RCPT TO; relay rules live here and nowhere else.
    fn check_recipient(path: &Path, directory: &dyn Directory) -> Result<RoutedRecipient, Reply>;
}

/// Mail exchange: anyone may connect; only local domains and existing mailboxes are accepted.
#[derive(Debug)]
pub enum Mx {}

/// Message submission: TLS first, then AUTH, then any recipient.
#[derive(Debug)]
pub enum Submission {}

/// Resolves a recipient in a local domain, or says it is not ours (`Ok(None)`).
fn local_recipient(path: &Path, directory: &dyn Directory) -> Result<Option<RoutedRecipient>, Reply> {
    let Some(mailbox) = &path.mailbox else {
        return Err(replies::NULL_RECIPIENT);
    };
    let mut mailbox = mailbox.clone();
    if mailbox.domain.is_empty() {
        // RCPT TO:<Postmaster> (RFC 5321 4.5.1) names the postmaster of our primary domain.
        mailbox.domain = directory.primary_domain().to_string();
    }
    if !directory.is_local_domain(&mailbox.domain) {
        return Ok(None);
    }
    if mailbox.routing_hazard().is_some() {
        return Err(replies::RELAY_DENIED);
    }
    let Some(destination) = directory.resolve(&mailbox) else {
        return Err(replies::UNKNOWN_USER);
    };
    Ok(Some(RoutedRecipient {
        mailbox,
        local: true,
        destination: Some(destination),
    }))
}

impl Pipeline for Mx {
    const KIND: PipelineKind = PipelineKind::Mx;
    const OFFERS_AUTH: bool = false;
    const BEFORE_CONTENT: &'static [Hook] = &[];
    const AFTER_CONTENT: &'static [Hook] = &[Hook::Virus, Hook::Spam];
    const CHECKS_AUTHENTICATION: bool = true;

    fn gate(_: &Command, _: &Security) -> Result<(), Reply> {
        Ok(())
    }

    fn check_sender(_: &Path, _: &Security, _: &dyn Directory) -> Result<(), Reply> {
        Ok(())
    }

    fn check_recipient(path: &Path, directory: &dyn Directory) -> Result<RoutedRecipient, Reply> {
        // A source route asks us to forward: never, whatever the final domain.
        if path.source_route {
            return Err(replies::RELAY_DENIED);
        }
        local_recipient(path, directory)?.ok_or(replies::RELAY_DENIED)
    }
}

impl Pipeline for Submission {
    const KIND: PipelineKind = PipelineKind::Submission;
    const OFFERS_AUTH: bool = true;
    const BEFORE_CONTENT: &'static [Hook] = &[Hook::Rate];
    const AFTER_CONTENT: &'static [Hook] = &[Hook::Virus];
    // The sender is an account of ours: nothing to verify (its mail is signed instead).
    const CHECKS_AUTHENTICATION: bool = false;

    fn gate(command: &Command, security: &Security) -> Result<(), Reply> {
        use Command::*;
        let always = matches!(command, Ehlo(_) | Helo(_) | Noop | Rset | Quit);
        if security.tls.is_none() {
            if !(always || matches!(command, StartTls)) {
                return Err(replies::TLS_REQUIRED);
            }
        } else if security.account.is_none() && !(always || matches!(command, Auth { .. })) {
            return Err(replies::AUTH_REQUIRED);
        }
        Ok(())
    }

    fn check_sender(path: &Path, security: &Security, directory: &dyn Directory) -> Result<(), Reply> {
        match (&path.mailbox, &security.account) {
            (Some(mailbox), Some(account)) if directory.may_send_as(account, mailbox) => Ok(()),
            _ => Err(replies::SENDER_NOT_OWNED),
        }
    }

    fn check_recipient(path: &Path, directory: &dyn Directory) -> Result<RoutedRecipient, Reply> {
        // The client is authenticated, so relaying is its right; a source route is ignored
        // as RFC 5321 4.1.1.3 asks.
        match local_recipient(path, directory)? {
            Some(routed) => Ok(routed),
            None => {
                let mailbox = path.mailbox.clone().ok_or(replies::NULL_RECIPIENT)?;
                Ok(RoutedRecipient {
                    mailbox,
                    local: false,
                    destination: None,
                })
            }
        }
    }
}
