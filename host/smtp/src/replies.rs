//! Every reply the server can send, in one place: the protocol surface, readable at a glance.
//!
//! Codes follow RFC 5321; enhanced codes follow RFC 3463 and its registry.

use crate::command::ParseError;
use crate::data::ContentError;
use crate::reply::{Enhanced, Reply};

const fn e(class: u8, subject: u16, detail: u16) -> Option<Enhanced> {
    Some(Enhanced(class, subject, detail))
}

/// 220 greeting. RFC 5321 4.3.1.
pub fn greeting(hostname: &str) -> Reply {
    Reply::new(220, None, format!("{hostname} ESMTP Portcullis"))
}

/// 250 to HELO.
pub fn helo(hostname: &str) -> Reply {
    Reply::new(250, None, hostname.to_string())
}

/// 250 OK, for MAIL, RCPT, RSET, NOOP.
pub const OK: Reply = Reply::fixed(250, e(2, 0, 0), "OK");
/// 250 to MAIL FROM.
pub const SENDER_OK: Reply = Reply::fixed(250, e(2, 1, 0), "Sender OK");
/// 250 to RCPT TO.
pub const RECIPIENT_OK: Reply = Reply::fixed(250, e(2, 1, 5), "Recipient OK");
/// 250 to RSET.
pub const RESET: Reply = Reply::fixed(250, e(2, 0, 0), "Reset");
/// 221 to QUIT.
pub const BYE: Reply = Reply::fixed(221, e(2, 0, 0), "Bye");
/// 354 to DATA.
pub const START_DATA: Reply = Reply::fixed(354, None, "End data with <CR><LF>.<CR><LF>");
/// 220 to STARTTLS.
pub const START_TLS: Reply = Reply::fixed(220, e(2, 0, 0), "Ready to start TLS");
/// 252 to VRFY: we never disclose whether a mailbox exists.
pub const VRFY: Reply = Reply::fixed(
    252,
    e(2, 5, 0),
    "Cannot VRFY user, but will accept message and attempt delivery",
);
/// 214 to HELP.
pub const HELP: Reply = Reply::fixed(
    214,
    e(2, 0, 0),
    "Commands: EHLO HELO MAIL RCPT DATA BDAT RSET NOOP QUIT STARTTLS AUTH VRFY HELP\nSee RFC 5321",
);
/// 250 for one BDAT chunk that is not the last.
pub fn chunk_ok(octets: u64) -> Reply {
    Reply::new(250, e(2, 0, 0), format!("{octets} octets received"))
}
/// 250 after the message is on stable storage.
pub fn queued(id: &str) -> Reply {
    Reply::new(250, e(2, 0, 0), format!("Ok: queued as {id}"))
}
/// 250 for a message a hook chose to discard: the client must believe it was delivered.
pub const DISCARDED: Reply = Reply::fixed(250, e(2, 0, 0), "Ok");

/// 334 to start a SASL exchange with an empty challenge (PLAIN).
pub const AUTH_EMPTY_CHALLENGE: Reply = Reply::fixed(334, None, "");
/// 334 `Username:` (LOGIN).
pub const AUTH_USERNAME: Reply = Reply::fixed(334, None, "VXNlcm5hbWU6");
/// 334 `Password:` (LOGIN).
pub const AUTH_PASSWORD: Reply = Reply::fixed(334, None, "UGFzc3dvcmQ6");
/// 235 authentication succeeded. RFC 4954.
pub const AUTH_OK: Reply = Reply::fixed(235, e(2, 7, 0), "Authentication successful");
/// 535 bad credentials. RFC 4954.
pub const AUTH_FAILED: Reply = Reply::fixed(535, e(5, 7, 8), "Authentication credentials invalid");
/// 454 the credential store could not answer. RFC 4954.
pub const AUTH_TEMPFAIL: Reply = Reply::fixed(454, e(4, 7, 0), "Temporary authentication failure");
/// 501 the client cancelled the exchange with `*`. RFC 4954.
pub const AUTH_CANCELLED: Reply = Reply::fixed(501, e(5, 0, 0), "Authentication cancelled");
/// 501 the SASL response is not base64 or not of the mechanism's form.
pub const AUTH_MALFORMED: Reply = Reply::fixed(501, e(5, 5, 2), "Malformed authentication response");
/// 503 AUTH a second time.
pub const AUTH_ALREADY: Reply = Reply::fixed(503, e(5, 5, 1), "Already authenticated");
/// 503 AUTH inside a mail transaction.
pub const AUTH_IN_TRANSACTION: Reply =
    Reply::fixed(503, e(5, 5, 1), "AUTH not permitted during a mail transaction");
/// 502 AUTH on a pipeline that never authenticates (MX).
pub const AUTH_NOT_OFFERED: Reply = Reply::fixed(
    502,
    e(5, 5, 1),
    "AUTH not available on this service; use the submission port",
);
/// 504 an unknown SASL mechanism.
pub const AUTH_MECHANISM: Reply = Reply::fixed(
    504,
    e(5, 5, 4),
    "Unrecognized authentication mechanism; use PLAIN or LOGIN",
);
/// 421 after too many failed AUTH attempts.
pub const AUTH_TOO_MANY: Reply = Reply::fixed(
    421,
    e(4, 7, 0),
    "Too many failed authentication attempts, closing connection",
);

/// 530 submission before STARTTLS. RFC 3207.
pub const TLS_REQUIRED: Reply = Reply::fixed(530, e(5, 7, 0), "Must issue a STARTTLS command first");
/// 530 submission before AUTH. RFC 4954.
pub const AUTH_REQUIRED: Reply = Reply::fixed(530, e(5, 7, 0), "Authentication required");
/// 503 STARTTLS inside TLS.
pub const TLS_ALREADY: Reply = Reply::fixed(503, e(5, 5, 1), "TLS already active");
/// 454 STARTTLS without a certificate.
pub const TLS_UNAVAILABLE: Reply = Reply::fixed(454, e(4, 7, 0), "TLS not available");

/// 503 MAIL before EHLO/HELO.
pub const HELLO_FIRST: Reply = Reply::fixed(503, e(5, 5, 1), "Send EHLO or HELO first");
/// 503 nested MAIL.
pub const NESTED_MAIL: Reply = Reply::fixed(503, e(5, 5, 1), "Sender already given; RSET first");
/// 503 RCPT, DATA or BDAT before MAIL.
pub const MAIL_FIRST: Reply = Reply::fixed(503, e(5, 5, 1), "Send MAIL first");
/// 554 DATA with no accepted recipient.
pub const NO_RECIPIENTS: Reply = Reply::fixed(554, e(5, 5, 1), "No valid recipients");
/// 503 DATA after BDAT in one transaction.
pub const DATA_AFTER_BDAT: Reply = Reply::fixed(503, e(5, 5, 1), "DATA not allowed after BDAT");
/// 553 the authenticated account does not own the sender address.
pub const SENDER_NOT_OWNED: Reply = Reply::fixed(
    553,
    e(5, 7, 1),
    "Sender address not owned by the authenticated account",
);
/// 553 non-ASCII address without SMTPUTF8. RFC 6531.
pub const UTF8_REQUIRED: Reply = Reply::fixed(
    553,
    e(5, 6, 7),
    "Non-ASCII address requires the SMTPUTF8 parameter",
);
/// 552 SIZE= larger than the limit. RFC 1870.
pub const SIZE_DECLARED_TOO_BIG: Reply =
    Reply::fixed(552, e(5, 3, 4), "Message size exceeds fixed maximum message size");
/// 452 recipient limit reached. RFC 5321 4.5.3.1.10.
pub const TOO_MANY_RECIPIENTS: Reply = Reply::fixed(452, e(4, 5, 3), "Too many recipients");
/// 550 the domain is not ours and this pipeline does not relay.
pub const RELAY_DENIED: Reply = Reply::fixed(550, e(5, 7, 1), "Relaying denied");
/// 550 no such mailbox in a local domain.
pub const UNKNOWN_USER: Reply = Reply::fixed(550, e(5, 1, 1), "Mailbox unavailable: user unknown");
/// 451 the user database that says whether a local recipient exists could not answer.
pub const RECIPIENT_TEMPFAIL: Reply =
    Reply::fixed(451, e(4, 3, 0), "Temporary lookup failure, try again later");
/// 501 RCPT TO:<>.
pub const NULL_RECIPIENT: Reply = Reply::fixed(501, e(5, 1, 3), "Null recipient not allowed");

/// 552 message larger than the limit. RFC 1870.
pub const MESSAGE_TOO_BIG: Reply =
    Reply::fixed(552, e(5, 3, 4), "Message size exceeds fixed maximum message size");
/// 452 DATA or BDAT while the memory for contents in transit is spent (`[limits]
/// buffered-content`), or a large content whose file could not be written. RFC 3463.
pub const INSUFFICIENT_STORAGE: Reply =
    Reply::fixed(452, e(4, 3, 1), "Insufficient system storage, try again later");
/// 500 a text line longer than the limit. RFC 5321 4.5.3.1.6.
pub const CONTENT_LINE_TOO_LONG: Reply = Reply::fixed(500, e(5, 5, 6), "Message line too long");
/// 554 bare CR or LF, in commands or DATA: the session is closed after it.
pub const BARE_LINE_ENDING: Reply = Reply::fixed(
    554,
    e(5, 5, 2),
    "Bare CR or LF not allowed; lines must end with CRLF",
);
/// 550 bare CR or LF inside a BDAT chunk.
pub const BARE_LINE_ENDING_CHUNK: Reply = Reply::fixed(550, e(5, 6, 0), "Bare CR or LF in message content");
/// 451 the spool could not store the message.
pub const SPOOL_FAILED: Reply = Reply::fixed(
    451,
    e(4, 3, 0),
    "Temporary failure storing the message, try again later",
);

/// 500 a command line longer than 512 octets. RFC 5321 4.5.3.1.4.
pub const LINE_TOO_LONG: Reply = Reply::fixed(500, e(5, 5, 2), "Line too long");
/// 500 unknown verb.
pub const UNRECOGNIZED: Reply = Reply::fixed(500, e(5, 5, 1), "Command unrecognized");
/// 502 EXPN.
pub const NOT_IMPLEMENTED: Reply = Reply::fixed(502, e(5, 5, 1), "Command not implemented");
/// 421 too many errors in one session.
pub const TOO_MANY_ERRORS: Reply = Reply::fixed(421, e(4, 7, 0), "Too many errors, closing connection");
/// 421 instead of a greeting: the listener is full.
pub const TOO_MANY_CONNECTIONS: Reply =
    Reply::fixed(421, e(4, 7, 0), "Too many connections, try again later");
/// 421 instead of a greeting: this client address holds too many connections.
pub const TOO_MANY_CONNECTIONS_FROM_YOU: Reply = Reply::fixed(
    421,
    e(4, 7, 0),
    "Too many connections from your address, try again later",
);
/// 454 to AUTH from an address that failed too often recently (not checked at all).
pub const AUTH_TOO_MANY_RECENTLY: Reply = Reply::fixed(
    454,
    e(4, 7, 0),
    "Too many failed authentications from your address, try again later",
);

/// 421 idle or slow client. RFC 5321 4.5.3.2.
pub const TIMEOUT: Reply = Reply::fixed(421, e(4, 4, 2), "Timeout, closing connection");
/// 421 the server is shutting down.
pub const SHUTTING_DOWN: Reply = Reply::fixed(421, e(4, 3, 2), "Service shutting down, try again later");
/// 554 an HTTP request: close without further ado.
pub const NOT_HTTP: Reply = Reply::fixed(554, e(5, 7, 0), "This is an SMTP server, not HTTP");

/// 554 for a hook's `Reject` whose reply is not 5xx: a hook can refuse, never make the
/// server lie about how.
pub const REJECTED_BY_HOOK: Reply = Reply::fixed(554, e(5, 7, 1), "Message rejected");
/// 451 for a hook's `Defer` whose reply is not 4xx.
pub const DEFERRED_BY_HOOK: Reply = Reply::fixed(451, e(4, 7, 1), "Message deferred, try again later");

/// 554 a plugin failed and its `on-error` policy is to reject.
pub const REFUSED_BY_FILTER: Reply = Reply::fixed(554, e(5, 7, 0), "Message refused by a content filter");

/// 554 the virus hook found malware (nothing is bounced: the refusal is in-session).
pub fn virus_found(name: &str) -> Reply {
    Reply::new(554, e(5, 7, 1), format!("Message refused: virus found ({name})"))
}

/// 451 a hook failed and its policy is to defer. The default `on-error` reply.
pub const HOOK_DEFERRED: Reply = Reply::fixed(451, e(4, 3, 0), "Temporary local problem, try again later");

/// The reply to a command line that did not parse.
pub fn parse_error(error: &ParseError) -> Reply {
    match error {
        ParseError::Unrecognized => UNRECOGNIZED,
        ParseError::Http => NOT_HTTP,
        ParseError::Syntax(grammar) => Reply::new(501, e(5, 5, 4), format!("Syntax: {grammar}")),
        ParseError::Address(inner) => Reply::new(501, e(5, 1, 7), format!("Bad address syntax: {inner}")),
        ParseError::UnknownParameter(name) => {
            Reply::new(555, e(5, 5, 4), format!("Unsupported parameter {name}"))
        }
        ParseError::BadParameter(grammar) => {
            Reply::new(501, e(5, 5, 4), format!("Bad parameter, expected {grammar}"))
        }
        ParseError::UnknownMechanism => AUTH_MECHANISM,
        ParseError::BadCharacters => Reply::fixed(501, e(5, 5, 2), "Invalid characters in command"),
    }
}

/// The reply to content refused at the end of DATA or BDAT.
pub fn content_error(error: ContentError) -> Reply {
    match error {
        ContentError::TooBig => MESSAGE_TOO_BIG,
        ContentError::LineTooLong => CONTENT_LINE_TOO_LONG,
        ContentError::BareCr | ContentError::BareLf => BARE_LINE_ENDING_CHUNK,
        ContentError::Storage => INSUFFICIENT_STORAGE,
    }
}
