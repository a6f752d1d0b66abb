//! Framing: the client's bytes into command lines, SASL lines, and DATA or BDAT content.
//!
//! A command line must end in CRLF; a bare CR or LF in one is SMTP smuggling and closes the
//! session. Content goes to the [`ContentReceiver`] of its transaction.

use crate::data::Progress;
use crate::replies;

use super::{MAX_COMMAND_LINE, MAX_SASL_LINE, Pipeline, Session, State, Transaction};

/// What [`Session::take_line`] found in the input.
enum LineRead {
    Line(Vec<u8>),
    Incomplete,
    TooLong { complete: bool },
    BareEnding,
}

impl<P: Pipeline> Session<P> {
    fn take_line(&mut self, max: usize) -> LineRead {
        match self.input.iter().position(|b| *b == b'\n') {
            Some(lf) => {
                if lf == 0 || self.input[lf - 1] != b'\r' || self.input[..lf - 1].contains(&b'\r') {
                    return LineRead::BareEnding;
                }
                if lf + 1 > max {
                    self.input.drain(..=lf);
                    return LineRead::TooLong { complete: true };
                }
                let line = self.input[..lf - 1].to_vec();
                self.input.drain(..=lf);
                LineRead::Line(line)
            }
            None => {
                let bare_cr = self
                    .input
                    .iter()
                    .position(|b| *b == b'\r')
                    .is_some_and(|cr| cr + 1 < self.input.len());
                if bare_cr {
                    LineRead::BareEnding
                } else if self.input.len() >= max {
                    self.input.clear();
                    LineRead::TooLong { complete: false }
                } else {
                    LineRead::Incomplete
                }
            }
        }
    }

    /// Handles buffered input; false when nothing more can be done without more bytes.
    pub(super) fn process_input(&mut self) -> bool {
        match &mut self.state {
            State::Command | State::Sasl(_) => self.line(),
            State::SkipLine => match self.input.iter().position(|b| *b == b'\n') {
                Some(lf) => {
                    self.input.drain(..=lf);
                    self.state = State::Command;
                    true
                }
                None => {
                    self.input.clear();
                    false
                }
            },
            State::Data(_) => self.data_content(),
            State::Chunk { .. } => self.chunk_content(),
            State::AwaitingTls
            | State::AwaitingAuth(_)
            | State::AwaitingRecipient { .. }
            | State::AwaitingVerdict { .. }
            | State::AwaitingChecks(_)
            | State::AwaitingSpool(_)
            | State::Closed => false,
        }
    }

    /// A command line, or a line of a SASL exchange.
    fn line(&mut self) -> bool {
        let command = matches!(self.state, State::Command);
        let max = if command { MAX_COMMAND_LINE } else { MAX_SASL_LINE };
        match self.take_line(max) {
            LineRead::Line(line) if command => self.command(&line),
            LineRead::Line(line) => self.sasl_line(&line),
            LineRead::Incomplete => return false,
            LineRead::TooLong { complete } => {
                if !complete {
                    self.state = State::SkipLine;
                } else if !command {
                    self.state = State::Command;
                }
                self.refuse_command(replies::LINE_TOO_LONG);
            }
            LineRead::BareEnding => {
                self.reply(replies::BARE_LINE_ENDING);
                self.close();
            }
        }
        true
    }

    /// DATA content, up to its end.
    fn data_content(&mut self) -> bool {
        let State::Data(receiver) = &mut self.state else {
            return false;
        };
        let (consumed, progress) = receiver.ingest_dot(&self.input);
        self.input.drain(..consumed);
        match progress {
            Progress::NeedMore => return false,
            Progress::Complete => {
                let State::Data(receiver) = std::mem::replace(&mut self.state, State::Command) else {
                    return true;
                };
                match receiver.finish() {
                    Err(e) => {
                        self.txn = None;
                        self.reply(replies::content_error(e));
                    }
                    Ok(content) => self.content_complete(content),
                }
            }
            Progress::Fatal(_) => {
                self.reply(replies::BARE_LINE_ENDING);
                self.close();
            }
        }
        true
    }

    /// The octets of a BDAT chunk, counted.
    fn chunk_content(&mut self) -> bool {
        let State::Chunk {
            remaining, refusal, ..
        } = &mut self.state
        else {
            return false;
        };
        let take = (*remaining).min(self.input.len() as u64) as usize;
        *remaining -= take as u64;
        let done = *remaining == 0;
        if refusal.is_none()
            && let Some(receiver) = self.txn.as_mut().and_then(Transaction::chunks_mut)
        {
            receiver.ingest_counted(&self.input[..take]);
        }
        self.input.drain(..take);
        if done {
            self.chunk_complete();
        }
        done
    }
}
