//! One mail transaction: MAIL, RCPT, then content by DATA or BDAT. Its phases are a type,
//! so that a transaction cannot, say, hold BDAT chunks and a finished message at once.

use std::sync::Arc;

use crate::address::{Mailbox, Path};
use crate::content::Content;
use crate::data::ContentReceiver;
use crate::envelope::{Envelope, MailParams, RcptParams, Recipient};
use crate::replies;
use crate::reply::Reply;

use super::verdicts::Stage;
use super::{
    AuthResult, Destination, Folder, Header, Message, Pipeline, PluginVerdict, RoutedRecipient, Session,
    State, Target,
};

/// The most recipients one transaction delivers to once its aliases are expanded (a
/// hundred RCPTs to an alias of a thousand targets must not make a hundred thousand
/// deliveries).
pub(super) const MAX_DELIVERIES: usize = 1000;

/// Where a transaction is.
#[derive(Debug)]
pub(super) enum Phase {
    /// MAIL accepted; recipients are being given.
    Envelope,
    /// The hooks before content passed at DATA; the content is arriving (its receiver is
    /// the session's state, as no command comes in between).
    Data,
    /// The hooks before content passed at the first BDAT; chunks are arriving, commands
    /// come in between.
    Chunks(ContentReceiver),
    /// The content is complete; the hooks after content decide.
    Received(Arc<Message>),
}

/// What the hooks decided so far about where the message goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Disposition {
    /// Into this folder of each local recipient.
    Deliver(Folder),
    /// Answer 250 and drop it.
    Discard,
}

#[derive(Debug)]
pub(super) struct Transaction {
    mail_from: Option<Mailbox>,
    params: MailParams,
    recipients: Vec<Recipient>,
    /// RCPT commands accepted (an alias adds its targets to `recipients`, but counts once
    /// against the limit).
    accepted_rcpts: usize,
    pub(super) phase: Phase,
    /// Headers the hooks asked to add, in order.
    pub(super) headers: Vec<Header>,
    /// Names of the message's own header fields the hooks asked to remove.
    pub(super) remove: Vec<String>,
    pub(super) disposition: Disposition,
    /// The queue id the host gave the message under way ([`Session::assign_queue_id`]).
    ///
    /// [`Session::assign_queue_id`]: super::Session::assign_queue_id
    pub(super) queue_id: Option<String>,
    /// What the plugins of the hooks so far decided, in order.
    pub(super) earlier: Vec<PluginVerdict>,
    /// What the mail authentication checks found (MX).
    pub(super) authentication: Vec<AuthResult>,
}

impl Transaction {
    /// Adds `recipient` unless the same address (delivered the same way) is there already;
    /// returns whether it was added.
    fn push_once(&mut self, recipient: Recipient) -> bool {
        let known = self
            .recipients
            .iter()
            .any(|r| r.mailbox == recipient.mailbox && r.local == recipient.local);
        if !known {
            self.recipients.push(recipient);
        }
        !known
    }

    pub(super) fn envelope(&self) -> Envelope {
        Envelope {
            mail_from: self.mail_from.clone(),
            params: self.params.clone(),
            recipients: self.recipients.clone(),
        }
    }

    /// The message, once its content is complete.
    pub(super) fn message(&self) -> Option<&Arc<Message>> {
        match &self.phase {
            Phase::Received(message) => Some(message),
            _ => None,
        }
    }

    /// The receiver of BDAT chunks, while they arrive.
    pub(super) fn chunks_mut(&mut self) -> Option<&mut ContentReceiver> {
        match &mut self.phase {
            Phase::Chunks(receiver) => Some(receiver),
            _ => None,
        }
    }
}

impl<P: Pipeline> Session<P> {
    pub(super) fn mail(&mut self, path: Path, params: MailParams) {
        let refusal = if self.info.greeting.is_none() {
            Some(replies::HELLO_FIRST)
        } else if self.txn.is_some() {
            Some(replies::NESTED_MAIL)
        } else if params
            .size
            .is_some_and(|s| s > self.settings.limits.message_size as u64)
        {
            Some(replies::SIZE_DECLARED_TOO_BIG)
        } else if path.mailbox.as_ref().is_some_and(Mailbox::is_utf8) && !params.smtputf8 {
            Some(replies::UTF8_REQUIRED)
        } else {
            P::check_sender(&path, &self.info.security, self.directory.as_ref()).err()
        };
        if let Some(reply) = refusal {
            return self.refuse_command(reply);
        }
        let room = (self.settings.limits.spool_min_free).saturating_add(params.size.unwrap_or(0));
        if !self.settings.storage.has_room(room) {
            // The server's disk, not the client's fault: no error counted (RFC 1870 6.1).
            return self.reply(replies::INSUFFICIENT_STORAGE);
        }
        self.txn = Some(Transaction {
            mail_from: path.mailbox,
            params,
            recipients: Vec::new(),
            accepted_rcpts: 0,
            phase: Phase::Envelope,
            headers: Vec::new(),
            remove: Vec::new(),
            disposition: Disposition::Deliver(Folder::Inbox),
            queue_id: None,
            earlier: Vec::new(),
            authentication: Vec::new(),
        });
        self.reply(replies::SENDER_OK);
    }

    pub(super) fn rcpt(&mut self, path: Path, params: RcptParams) {
        let Some(txn) = self.txn.as_ref() else {
            return self.refuse_command(replies::MAIL_FIRST);
        };
        if !matches!(txn.phase, Phase::Envelope) {
            return self.refuse_command(replies::MAIL_FIRST);
        }
        if txn.accepted_rcpts >= self.settings.limits.recipients {
            return self.reply(replies::TOO_MANY_RECIPIENTS);
        }
        if path.mailbox.as_ref().is_some_and(Mailbox::is_utf8) && !txn.params.smtputf8 {
            return self.refuse_command(replies::UTF8_REQUIRED);
        }
        match P::check_recipient(&path, self.directory.as_ref()) {
            Ok(routed) => self.add_recipient(routed, params),
            Err(reply) if reply == replies::UNKNOWN_USER && self.directory.looks_up_unknown() => {
                // A local address the directory does not know: the host asks its outside
                // user database before the answer.
                let Some(mut mailbox) = path.mailbox else {
                    return self.refuse_command(reply);
                };
                if mailbox.domain.is_empty() {
                    mailbox.domain = self.directory.primary_domain().to_string();
                }
                self.state = State::AwaitingRecipient { mailbox, params };
            }
            Err(reply) => self.refuse_command(reply),
        }
    }

    /// Adds a recipient to the open transaction (the address itself, or the targets of
    /// the alias it is, each once) and answers the RCPT: `250`, or `452 4.5.3` when its
    /// targets would take the transaction past [`MAX_DELIVERIES`].
    pub(super) fn add_recipient(&mut self, routed: RoutedRecipient, params: RcptParams) {
        let Some(txn) = self.txn.as_mut() else {
            return self.reply(replies::MAIL_FIRST);
        };
        let adds = match &routed.destination {
            Some(Destination::Alias(targets)) => targets.len(),
            _ => 1,
        };
        if txn.recipients.len() + adds > MAX_DELIVERIES {
            return self.reply(replies::TOO_MANY_RECIPIENTS);
        }
        txn.accepted_rcpts += 1;
        self.reply(replies::RECIPIENT_OK);
        let Some(txn) = self.txn.as_mut() else {
            return;
        };
        let RoutedRecipient {
            mailbox,
            local,
            destination,
        } = routed;
        let targets = match destination {
            Some(Destination::Alias(targets)) => targets,
            Some(Destination::Mailbox(owner)) => {
                txn.push_once(Recipient::local(mailbox, params, owner));
                return;
            }
            None => {
                let mut recipient = Recipient::remote(mailbox, params);
                recipient.local = local;
                txn.push_once(recipient);
                return;
            }
        };
        // RFC 3461 6.2.7.3: an alias of several targets is reported `expanded` when the
        // client asked for success reports; its targets then ask for none of their own.
        let expands = targets.len() > 1;
        let wants_expansion_report = expands && params.notify.is_some_and(|n| n.success && !n.never);
        let mut target_params = params.clone();
        if wants_expansion_report && let Some(notify) = target_params.notify.as_mut() {
            notify.success = false;
            notify.never = !(notify.failure || notify.delay);
        }
        let mut report_owed = wants_expansion_report;
        for target in targets {
            let mut recipient = match target {
                Target::Local {
                    address,
                    mailbox: owner,
                } => Recipient::local(address, target_params.clone(), owner),
                Target::Remote(address) => {
                    let mut recipient = Recipient::remote(address, target_params.clone());
                    recipient.sender = txn
                        .mail_from
                        .as_ref()
                        .and_then(|sender| self.directory.forwarding_sender(sender, &mailbox));
                    recipient
                }
            };
            recipient.alias = Some(mailbox.clone());
            recipient.reports_expansion = report_owed;
            if txn.push_once(recipient) {
                report_owed = false;
            }
        }
    }

    /// Whether the open transaction may receive content; the refusal otherwise.
    fn content_refusal(&self) -> Option<Reply> {
        match &self.txn {
            None => Some(replies::MAIL_FIRST),
            Some(t) if t.recipients.is_empty() => Some(replies::NO_RECIPIENTS),
            Some(_) => None,
        }
    }

    pub(super) fn data(&mut self) {
        if let Some(reply) = self.content_refusal() {
            return self.refuse_command(reply);
        }
        if self
            .txn
            .as_ref()
            .is_some_and(|t| matches!(t.phase, Phase::Chunks(_)))
        {
            return self.refuse_command(replies::DATA_AFTER_BDAT);
        }
        self.run_hooks(Stage::BeforeData, 0);
    }

    pub(super) fn bdat(&mut self, size: u64, last: bool) {
        // The chunk's octets follow whatever we answer, so they are always read (and, when
        // refused, discarded: never taken as commands).
        let too_big = size > self.settings.limits.message_size as u64;
        let refusal = self
            .content_refusal()
            .or(too_big.then_some(replies::MESSAGE_TOO_BIG));
        if too_big {
            // No hook runs and nothing is kept for a chunk refused up front.
            self.txn = None;
        }
        if let Some(reply) = refusal {
            self.errors += 1;
            self.state = State::Chunk {
                remaining: size,
                size,
                last,
                refusal: Some(reply),
            };
            return;
        }
        let cleared = self
            .txn
            .as_ref()
            .is_some_and(|t| matches!(t.phase, Phase::Chunks(_)));
        if cleared {
            self.enter_chunk(size, last);
        } else {
            self.run_hooks(Stage::BeforeChunk { size, last }, 0);
        }
    }

    /// A receiver for the content of this transaction, or `None` when the memory for
    /// contents in transit is spent.
    pub(super) fn receiver(&self) -> Option<ContentReceiver> {
        let limits = &self.settings.limits;
        let memory = limits.memory_per_message.min(limits.message_size);
        let content = self.settings.storage.content(memory)?;
        Some(ContentReceiver::new(
            content,
            limits.message_size,
            limits.line_length,
            limits.bare_lf,
        ))
    }

    /// Starts reading a chunk of `size` octets (the first one opens the receiver).
    pub(super) fn enter_chunk(&mut self, size: u64, last: bool) {
        let mut refusal = None;
        if self
            .txn
            .as_ref()
            .is_some_and(|t| matches!(t.phase, Phase::Envelope))
        {
            match self.receiver() {
                Some(receiver) => {
                    if let Some(txn) = self.txn.as_mut() {
                        txn.phase = Phase::Chunks(receiver);
                    }
                }
                None => {
                    // The chunk is read and discarded; its octets are lost, so the
                    // transaction is too.
                    self.txn = None;
                    refusal = Some(replies::INSUFFICIENT_STORAGE);
                }
            }
        }
        self.state = State::Chunk {
            remaining: size,
            size,
            last,
            refusal,
        };
    }

    pub(super) fn chunk_complete(&mut self) {
        let State::Chunk {
            size, last, refusal, ..
        } = std::mem::replace(&mut self.state, State::Command)
        else {
            return;
        };
        if let Some(reply) = refusal {
            return self.reply(reply);
        }
        let Some(receiver) = self.txn.as_mut().and_then(Transaction::chunks_mut) else {
            return self.reply(replies::MAIL_FIRST);
        };
        if last {
            receiver.finish_counted();
        }
        if let Some(e) = receiver.failure() {
            self.txn = None;
            return self.reply(replies::content_error(e));
        }
        if !last {
            return self.reply(replies::chunk_ok(size));
        }
        let body = match self
            .txn
            .as_mut()
            .map(|t| std::mem::replace(&mut t.phase, Phase::Envelope))
        {
            Some(Phase::Chunks(receiver)) => receiver.finish(),
            _ => return self.reply(replies::MAIL_FIRST),
        };
        match body {
            Ok(body) => self.content_complete(body),
            Err(e) => {
                self.txn = None;
                self.reply(replies::content_error(e));
            }
        }
    }

    /// The content is complete: the message exists, and the hooks after content decide.
    pub(super) fn content_complete(&mut self, body: Content) {
        let Some(txn) = self.txn.as_mut() else {
            return self.reply(replies::MAIL_FIRST);
        };
        let message = Arc::new(Message::new(txn.envelope(), body));
        txn.phase = Phase::Received(Arc::clone(&message));
        if P::CHECKS_AUTHENTICATION {
            self.state = State::AwaitingChecks(message);
        } else {
            self.run_hooks(Stage::AfterContent, 0);
        }
    }
}
