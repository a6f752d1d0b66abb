//! The hook points of a transaction, as states of the machine: the session stops in
//! `AwaitingVerdict` at each hook of the pipeline, in order, and a verdict either lets it
//! go on to the next one or ends the transaction with a reply.

use std::sync::Arc;

use crate::replies;
use crate::reply::Reply;

use super::transaction::{Disposition, Phase};
use super::{Folder, Hook, HookCall, Pipeline, Session, SpoolRequest, State, Verdict};

/// Which hooks run: those before content (at DATA, or at the first BDAT with its chunk
/// still to read), or those after.
#[derive(Clone, Copy, Debug)]
pub(super) enum Stage {
    BeforeData,
    BeforeChunk { size: u64, last: bool },
    AfterContent,
}

impl<P: Pipeline> Session<P> {
    /// Applies a verdict in `stage`: records what it adds and goes on with hook `next`, or
    /// refuses.
    pub(super) fn apply_verdict(&mut self, stage: Stage, next: usize, verdict: Verdict) {
        let Some(txn) = self.txn.as_mut() else {
            return;
        };
        match verdict {
            Verdict::Accept => {}
            Verdict::Tag(headers) => txn.headers.extend(headers),
            Verdict::Junk(headers) => {
                txn.headers.extend(headers);
                if let Disposition::Deliver(folder) = &mut txn.disposition {
                    *folder = Folder::Junk;
                }
            }
            Verdict::Discard => txn.disposition = Disposition::Discard,
            // A hook can refuse, never make the server lie about how.
            Verdict::Reject(reply) => {
                let reply = if reply.is_permanent() {
                    reply
                } else {
                    replies::REJECTED_BY_HOOK
                };
                return self.refuse(stage, reply);
            }
            Verdict::Defer(reply) => {
                let reply = if reply.is_transient() {
                    reply
                } else {
                    replies::DEFERRED_BY_HOOK
                };
                return self.refuse(stage, reply);
            }
        }
        self.run_hooks(stage, next);
    }

    /// Stops at the next hook of `stage` from `from` on, or finishes the stage.
    pub(super) fn run_hooks(&mut self, stage: Stage, from: usize) {
        let hooks = match stage {
            Stage::AfterContent => P::AFTER_CONTENT,
            Stage::BeforeData | Stage::BeforeChunk { .. } => P::BEFORE_CONTENT,
        };
        if let Some(hook) = hooks.get(from) {
            // What the hook runs on goes with it; a content hook without content (a bug)
            // fails closed, as a deferral, never as an accept.
            let call = self.txn.as_ref().and_then(|txn| match hook {
                Hook::Rate => Some(HookCall::Rate(txn.envelope())),
                Hook::Virus => txn.message().map(|m| HookCall::Virus(Arc::clone(m))),
                Hook::Spam => txn.message().map(|m| HookCall::Spam(Arc::clone(m))),
                Hook::Auth => None,
            });
            match call {
                Some(call) => {
                    if let Some(txn) = self.txn.as_ref() {
                        self.info.added_headers = txn.headers.clone();
                        self.info.queue_id = txn.queue_id.clone();
                        self.info.earlier = txn.earlier.clone();
                        self.info.authentication = txn.authentication.clone();
                    }
                    self.state = State::AwaitingVerdict {
                        call,
                        stage,
                        index: from,
                    }
                }
                None => self.refuse(stage, replies::HOOK_DEFERRED),
            }
            return;
        }
        let Some(txn) = self.txn.as_mut() else {
            self.state = State::Command;
            return self.reply(replies::MAIL_FIRST);
        };
        match stage {
            Stage::BeforeData => match self.receiver() {
                Some(receiver) => {
                    if let Some(txn) = self.txn.as_mut() {
                        txn.phase = Phase::Data;
                    }
                    self.state = State::Data(receiver);
                    self.reply(replies::START_DATA);
                }
                None => {
                    // The envelope stands: the client may try DATA again.
                    self.state = State::Command;
                    self.reply(replies::INSUFFICIENT_STORAGE);
                }
            },
            Stage::BeforeChunk { size, last } => self.enter_chunk(size, last),
            Stage::AfterContent => match (&txn.phase, txn.disposition) {
                (_, Disposition::Discard) => {
                    self.txn = None;
                    self.state = State::Command;
                    self.reply(replies::DISCARDED);
                }
                (Phase::Received(message), Disposition::Deliver(folder)) => {
                    self.state = State::AwaitingSpool(SpoolRequest {
                        message: Arc::clone(message),
                        headers: txn.headers.clone(),
                        remove: txn.remove.clone(),
                        folder,
                        queue_id: txn.queue_id.clone(),
                    });
                }
                _ => {
                    self.txn = None;
                    self.state = State::Command;
                    self.reply(replies::MAIL_FIRST);
                }
            },
        }
    }

    /// Ends the transaction with `reply` (after a BDAT refused by a hook, once its chunk is
    /// read).
    fn refuse(&mut self, stage: Stage, reply: Reply) {
        self.txn = None;
        match stage {
            Stage::BeforeChunk { size, last } => {
                self.state = State::Chunk {
                    remaining: size,
                    size,
                    last,
                    refusal: Some(reply),
                };
            }
            Stage::BeforeData | Stage::AfterContent => {
                self.state = State::Command;
                self.reply(reply);
            }
        }
    }
}
