//! The envelope of one mail transaction: sender, recipients and their ESMTP parameters.
//!
//! DSN parameters (RFC 3461) are kept as sent so that outbound delivery can honour and
//! relay them; the core only checks their syntax.

use serde::{Deserialize, Serialize};

use crate::address::Mailbox;

/// The declared body type (RFC 6152 BODY=).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum BodyType {
    /// Plain 7-bit text (the default when BODY= is absent).
    #[default]
    SevenBit,
    /// 8-bit MIME text (RFC 6152).
    EightBitMime,
}

/// What a DSN should return of the message (RFC 3461 RET=).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Ret {
    /// The whole message.
    Full,
    /// Only the headers.
    Hdrs,
}

/// When the sender wants a DSN for one recipient (RFC 3461 NOTIFY=).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Notify {
    /// NOTIFY=NEVER: no DSN at all.
    pub never: bool,
    /// SUCCESS was listed.
    pub success: bool,
    /// FAILURE was listed.
    pub failure: bool,
    /// DELAY was listed.
    pub delay: bool,
}

/// Parameters of MAIL FROM.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MailParams {
    /// SIZE= as declared by the client (RFC 1870).
    pub size: Option<u64>,
    /// BODY= (RFC 6152).
    pub body: BodyType,
    /// SMTPUTF8 was given (RFC 6531).
    pub smtputf8: bool,
    /// RET= (RFC 3461).
    pub ret: Option<Ret>,
    /// ENVID= as xtext, kept encoded (RFC 3461).
    pub envid: Option<String>,
}

/// Parameters of RCPT TO.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RcptParams {
    /// NOTIFY= (RFC 3461); `None` when absent.
    pub notify: Option<Notify>,
    /// ORCPT= as `addr-type;xtext`, kept encoded (RFC 3461).
    pub orcpt: Option<String>,
}

/// One accepted recipient.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Recipient {
    /// The forward-path mailbox.
    pub mailbox: Mailbox,
    /// Its DSN parameters.
    pub params: RcptParams,
    /// Whether the recipient's domain is one of ours (deliver to Maildir) or not (relay).
    pub local: bool,
    /// For a local recipient, the mailbox whose Maildir its copy goes to, as the directory
    /// resolved it at RCPT: the account for `account+detail`, the postmaster account for
    /// `postmaster@`. `None` for remote recipients, and in spool files written before it
    /// existed (then [`Recipient::maildir_owner`] drops the detail itself).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deliver_to: Option<Mailbox>,
    /// When this recipient is a target of an alias: the address the client named (its
    /// reports name it as the Original-Recipient, and a forwarded copy carries it in
    /// `Delivered-To:`). `None` for a recipient the client named itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alias: Option<Mailbox>,
    /// The reverse-path this copy is sent with instead of the envelope's: for a copy an
    /// alias forwards to another domain, the sender rewritten by SRS (so that SPF passes
    /// at the next hop). `None`: the envelope's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sender: Option<Mailbox>,
    /// This recipient carries its alias's `expanded` report (RFC 3464 2.3.3): the client
    /// asked for NOTIFY=SUCCESS on an alias of several targets, whose own NOTIFY then
    /// leaves SUCCESS out (RFC 3461 6.2.7.3). Set on the first target only.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub reports_expansion: bool,
}

impl Recipient {
    /// A recipient in another domain, relayed as it is.
    pub fn remote(mailbox: Mailbox, params: RcptParams) -> Self {
        Recipient {
            mailbox,
            params,
            local: false,
            deliver_to: None,
            alias: None,
            sender: None,
            reports_expansion: false,
        }
    }

    /// A recipient in one of our domains whose copy goes to `owner`'s mailbox.
    pub fn local(mailbox: Mailbox, params: RcptParams, owner: Mailbox) -> Self {
        Recipient {
            mailbox,
            params,
            local: true,
            deliver_to: Some(owner),
            alias: None,
            sender: None,
            reports_expansion: false,
        }
    }

    /// The reverse-path this copy is sent with (`<>` for the null sender).
    pub fn reverse_path(&self, envelope: &Envelope) -> String {
        match &self.sender {
            Some(sender) => format!("<{sender}>"),
            None => envelope.reverse_path(),
        }
    }

    /// The mailbox whose Maildir a local recipient's copy goes to (never a folder named
    /// after a `+detail`).
    pub fn maildir_owner(&self) -> Mailbox {
        self.deliver_to
            .clone()
            .unwrap_or_else(|| self.mailbox.without_detail())
    }
}

/// The envelope of one transaction, complete once DATA or the first BDAT is accepted.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    /// The reverse-path; `None` is the null sender `<>` (bounces).
    pub mail_from: Option<Mailbox>,
    /// MAIL FROM parameters.
    pub params: MailParams,
    /// Accepted recipients, in RCPT order.
    pub recipients: Vec<Recipient>,
}

impl Envelope {
    /// The reverse-path as it would be written in MAIL FROM (`<>` for the null sender).
    pub fn reverse_path(&self) -> String {
        match &self.mail_from {
            Some(m) => format!("<{m}>"),
            None => "<>".to_string(),
        }
    }
}
