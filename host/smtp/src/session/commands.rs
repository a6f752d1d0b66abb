//! The commands outside a mail transaction: greetings, STARTTLS, AUTH and its SASL
//! exchange, and the dispatch of every parsed command line.

use crate::command::{self, Command, Mechanism, ParseError};
use crate::replies;
use crate::reply::Reply;

use super::sasl::{self, SaslError};
use super::{Credentials, Greeting, Pipeline, SaslStep, Session, State, Verb};

impl<P: Pipeline> Session<P> {
    pub(super) fn command(&mut self, line: &[u8]) {
        let parsed = command::parse(line, self.settings.limits.syntax);
        self.counts.add(Verb::of(&parsed));
        let command = match parsed {
            Ok(c) => c,
            Err(ParseError::Http) => {
                self.reply(replies::NOT_HTTP);
                self.close();
                return;
            }
            Err(e) => return self.refuse_command(replies::parse_error(&e)),
        };
        if let Err(reply) = P::gate(&command, &self.info.security) {
            return self.refuse_command(reply);
        }
        match command {
            Command::Ehlo(name) => {
                self.txn = None;
                self.info.greeting = Some(Greeting::Ehlo(name));
                let reply = self.ehlo_reply();
                self.reply(reply);
            }
            Command::Helo(name) => {
                self.txn = None;
                self.info.greeting = Some(Greeting::Helo(name));
                self.reply(replies::helo(&self.settings.hostname));
            }
            Command::StartTls => self.starttls(),
            Command::Auth { mechanism, initial } => self.auth(mechanism, initial),
            Command::Mail { path, params } => self.mail(path, params),
            Command::Rcpt { path, params } => self.rcpt(path, params),
            Command::Data => self.data(),
            Command::Bdat { size, last } => self.bdat(size, last),
            Command::Rset => {
                self.txn = None;
                self.reply(replies::RESET);
            }
            Command::Noop => self.reply(replies::OK),
            Command::Quit => {
                self.reply(replies::BYE);
                self.close();
            }
            Command::Vrfy => self.reply(replies::VRFY),
            Command::Expn => self.refuse_command(replies::NOT_IMPLEMENTED),
            Command::Help => self.reply(replies::HELP),
        }
    }

    fn ehlo_reply(&self) -> Reply {
        let security = &self.info.security;
        let mut lines = vec![
            self.settings.hostname.clone(),
            "PIPELINING".into(),
            format!("SIZE {}", self.settings.limits.message_size),
            "8BITMIME".into(),
            "ENHANCEDSTATUSCODES".into(),
            "SMTPUTF8".into(),
            "CHUNKING".into(),
            "DSN".into(),
        ];
        if security.tls.is_none() && self.settings.tls_available {
            lines.push("STARTTLS".into());
        }
        if P::OFFERS_AUTH && security.tls.is_some() && security.account.is_none() {
            lines.push("AUTH PLAIN LOGIN".into());
        }
        Reply::new(250, None, lines.join("\n"))
    }

    fn starttls(&mut self) {
        if self.info.security.tls.is_some() {
            return self.refuse_command(replies::TLS_ALREADY);
        }
        if !self.settings.tls_available {
            return self.reply(replies::TLS_UNAVAILABLE);
        }
        self.reply(replies::START_TLS);
        // CVE-2011-0411: anything pipelined after STARTTLS was sent in cleartext and must
        // not be read as if it came through TLS.
        self.discarded_after_starttls = self.input.len();
        self.input.clear();
        self.state = State::AwaitingTls;
    }

    fn auth(&mut self, mechanism: Mechanism, initial: Option<String>) {
        let security = &self.info.security;
        let refusal = if !P::OFFERS_AUTH {
            Some(replies::AUTH_NOT_OFFERED)
        } else if security.tls.is_none() {
            Some(replies::TLS_REQUIRED)
        } else if self.info.greeting.is_none() {
            Some(replies::HELLO_FIRST)
        } else if security.account.is_some() {
            Some(replies::AUTH_ALREADY)
        } else if self.txn.is_some() {
            Some(replies::AUTH_IN_TRANSACTION)
        } else {
            None
        };
        if let Some(reply) = refusal {
            return self.refuse_command(reply);
        }
        match (mechanism, initial) {
            (Mechanism::Plain, None) => {
                self.reply(replies::AUTH_EMPTY_CHALLENGE);
                self.state = State::Sasl(SaslStep::Plain);
            }
            (Mechanism::Plain, Some(response)) => self.sasl_result(sasl::plain(&response)),
            (Mechanism::Login, None) => {
                self.reply(replies::AUTH_USERNAME);
                self.state = State::Sasl(SaslStep::LoginUser);
            }
            (Mechanism::Login, Some(response)) => match sasl::decode(&response) {
                Ok(user) => {
                    self.reply(replies::AUTH_PASSWORD);
                    self.state = State::Sasl(SaslStep::LoginPassword(user));
                }
                Err(e) => self.sasl_result(Err(e)),
            },
        }
    }

    pub(super) fn sasl_line(&mut self, line: &[u8]) {
        let State::Sasl(step) = std::mem::replace(&mut self.state, State::Command) else {
            return;
        };
        let Ok(line) = std::str::from_utf8(line) else {
            return self.sasl_result(Err(SaslError::Malformed));
        };
        match step {
            SaslStep::Plain => self.sasl_result(sasl::plain(line)),
            SaslStep::LoginUser => match sasl::decode(line) {
                Ok(user) => {
                    self.reply(replies::AUTH_PASSWORD);
                    self.state = State::Sasl(SaslStep::LoginPassword(user));
                }
                Err(e) => self.sasl_result(Err(e)),
            },
            SaslStep::LoginPassword(username) => {
                let result = sasl::decode(line).map(|password| Credentials {
                    mechanism: Mechanism::Login,
                    authzid: None,
                    username,
                    password,
                });
                self.sasl_result(result)
            }
        }
    }

    fn sasl_result(&mut self, result: Result<Credentials, SaslError>) {
        match result {
            Ok(credentials) => self.state = State::AwaitingAuth(credentials),
            Err(SaslError::Cancelled) => self.refuse_command(replies::AUTH_CANCELLED),
            Err(SaslError::Malformed) => self.refuse_command(replies::AUTH_MALFORMED),
        }
    }
}
