//! The host side of the hook points: who answers when the session stops in
//! `AwaitingVerdict(hook)`.
//!
//! With no plugin configured for a hook, the host's answer is `Accept`: the hook point
//! exists in the state machine whether or not anything is plugged into it. The Wasm plugin
//! runtime answers here once plugins are configured.

use portcullis_smtp::session::SessionInfo;
use portcullis_smtp::{Envelope, Hook, Message, Verdict};

/// Answers hook calls for every session.
#[derive(Debug, Default)]
pub struct Hooks {}

impl Hooks {
    /// The verdict of every plugin configured on `hook`, in order; `Accept` when none is.
    pub async fn call(
        &self,
        hook: Hook,
        info: &SessionInfo,
        envelope: Option<&Envelope>,
        message: Option<&Message>,
    ) -> Verdict {
        tracing::trace!(
            hook = hook.name(),
            peer = %info.peer,
            recipients = envelope.map_or(0, |e| e.recipients.len()),
            size = message.map_or(0, |m| m.body.len()),
            "no plugin configured on this hook: accept"
        );
        Verdict::Accept
    }
}
