//! How many of each command a session received, for the closing log line (in the style of
//! Postfix's `disconnect from ... ehlo=1 mail=1 rcpt=1 data=1 quit=1 commands=5`).

use crate::command::{Command, ParseError};

/// A command as counted: each verb the server knows, and everything else.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verb {
    /// EHLO.
    Ehlo,
    /// HELO.
    Helo,
    /// STARTTLS.
    StartTls,
    /// AUTH.
    Auth,
    /// MAIL.
    Mail,
    /// RCPT.
    Rcpt,
    /// DATA.
    Data,
    /// BDAT.
    Bdat,
    /// RSET.
    Rset,
    /// NOOP.
    Noop,
    /// VRFY.
    Vrfy,
    /// HELP.
    Help,
    /// QUIT.
    Quit,
    /// Anything not understood (and EXPN, which is not offered).
    Unknown,
}

impl Verb {
    /// Every verb, in the order of the log line.
    pub const ALL: [Verb; 14] = [
        Verb::Ehlo,
        Verb::Helo,
        Verb::StartTls,
        Verb::Auth,
        Verb::Mail,
        Verb::Rcpt,
        Verb::Data,
        Verb::Bdat,
        Verb::Rset,
        Verb::Noop,
        Verb::Vrfy,
        Verb::Help,
        Verb::Quit,
        Verb::Unknown,
    ];

    /// The verb of a parsed (or refused) command line.
    pub fn of(parsed: &Result<Command, ParseError>) -> Verb {
        match parsed {
            Ok(Command::Ehlo(_)) => Verb::Ehlo,
            Ok(Command::Helo(_)) => Verb::Helo,
            Ok(Command::StartTls) => Verb::StartTls,
            Ok(Command::Auth { .. }) => Verb::Auth,
            Ok(Command::Mail { .. }) => Verb::Mail,
            Ok(Command::Rcpt { .. }) => Verb::Rcpt,
            Ok(Command::Data) => Verb::Data,
            Ok(Command::Bdat { .. }) => Verb::Bdat,
            Ok(Command::Rset) => Verb::Rset,
            Ok(Command::Noop) => Verb::Noop,
            Ok(Command::Vrfy) => Verb::Vrfy,
            Ok(Command::Help) => Verb::Help,
            Ok(Command::Quit) => Verb::Quit,
            Ok(Command::Expn) | Err(_) => Verb::Unknown,
        }
    }

    /// Its name in the log line.
    pub fn name(self) -> &'static str {
        match self {
            Verb::Ehlo => "ehlo",
            Verb::Helo => "helo",
            Verb::StartTls => "starttls",
            Verb::Auth => "auth",
            Verb::Mail => "mail",
            Verb::Rcpt => "rcpt",
            Verb::Data => "data",
            Verb::Bdat => "bdat",
            Verb::Rset => "rset",
            Verb::Noop => "noop",
            Verb::Vrfy => "vrfy",
            Verb::Help => "help",
            Verb::Quit => "quit",
            Verb::Unknown => "unknown",
        }
    }
}

/// The commands of one session, by verb.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CommandCounts {
    counts: [u32; Verb::ALL.len()],
}

impl CommandCounts {
    pub(super) fn add(&mut self, verb: Verb) {
        self.counts[verb as usize] += 1;
    }

    /// All commands received.
    pub fn total(&self) -> u32 {
        self.counts.iter().sum()
    }

    /// How many times `verb` was received.
    pub fn get(&self, verb: Verb) -> u32 {
        self.counts[verb as usize]
    }
}

impl std::fmt::Display for CommandCounts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for verb in Verb::ALL {
            let count = self.get(verb);
            if count > 0 {
                write!(f, "{}={count} ", verb.name())?;
            }
        }
        write!(f, "commands={}", self.total())
    }
}
