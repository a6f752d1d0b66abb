//! `rate-limit`: defers a submission (`451 4.7.0`) when the sender went over a limit.
//!
//! The host counts; this plugin only compares. Every limit is optional:
//!
//! ```toml
//! [plugin.config.account]          # per authenticated account
//! messages-per-minute = 10
//! messages-per-hour = 200
//! messages-per-day = 1000
//! recipients-per-day = 5000
//! [plugin.config.client-ip]        # per client IP address
//! messages-per-minute = 30
//! ```

use serde::Deserialize;

wit_bindgen::generate!({ path: "../../wit", world: "rate-plugin" });

use exports::portcullis::filter::rate::{Counters, Guest, Usage, Window};
use portcullis::filter::log::{Level, log};
use portcullis::filter::types::{EnhancedCode, Envelope, Reply, SessionInfo, Verdict};

#[derive(Deserialize, Default, Clone, Copy)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
struct Limits {
    messages_per_minute: Option<u32>,
    messages_per_hour: Option<u32>,
    messages_per_day: Option<u32>,
    recipients_per_minute: Option<u32>,
    recipients_per_hour: Option<u32>,
    recipients_per_day: Option<u32>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
struct Config {
    #[serde(default)]
    account: Limits,
    #[serde(default)]
    client_ip: Limits,
}

/// The first limit this message would exceed, described.
fn exceeded(limits: Limits, counters: &Counters, recipients: u32, who: &str) -> Option<String> {
    let windows: [(&str, &Window, Option<u32>, Option<u32>); 3] = [
        (
            "minute",
            &counters.minute,
            limits.messages_per_minute,
            limits.recipients_per_minute,
        ),
        (
            "hour",
            &counters.hour,
            limits.messages_per_hour,
            limits.recipients_per_hour,
        ),
        (
            "day",
            &counters.day,
            limits.messages_per_day,
            limits.recipients_per_day,
        ),
    ];
    for (name, window, messages, rcpts) in windows {
        if let Some(max) = messages
            && window.messages.saturating_add(1) > max
        {
            return Some(format!("{who} may send {max} messages per {name}"));
        }
        if let Some(max) = rcpts
            && window.recipients.saturating_add(recipients) > max
        {
            return Some(format!("{who} may send to {max} recipients per {name}"));
        }
    }
    None
}

struct RateLimit;

impl Guest for RateLimit {
    fn check(session: SessionInfo, envelope: Envelope, usage: Usage) -> Verdict {
        let config: Config = match serde_json::from_str(&portcullis::filter::config::json()) {
            Ok(c) => c,
            Err(e) => {
                log(Level::Error, &format!("bad config: {e}"));
                return Verdict::Defer(Reply {
                    code: 451,
                    enhanced: Some(EnhancedCode {
                        class: 4,
                        subject: 3,
                        detail: 0,
                    }),
                    text: "Rate limit configuration error".into(),
                });
            }
        };
        let recipients = envelope.rcpt_to.len() as u32;
        let account = session.account.as_deref().unwrap_or("this account");
        let reason = exceeded(config.account, &usage.account, recipients, account)
            .or_else(|| exceeded(config.client_ip, &usage.client_ip, recipients, &session.client_ip));
        match reason {
            None => Verdict::Accept,
            Some(reason) => {
                log(Level::Info, &format!("deferring: {reason}"));
                Verdict::Defer(Reply {
                    code: 451,
                    enhanced: Some(EnhancedCode {
                        class: 4,
                        subject: 7,
                        detail: 0,
                    }),
                    text: format!("Rate limit exceeded: {reason}; try again later"),
                })
            }
        }
    }
}

export!(RateLimit);
