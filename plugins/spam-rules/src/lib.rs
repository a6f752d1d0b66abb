//! `spam-rules`: scored rules in the spirit of SpamAssassin.
//!
//! Built-in tests look at missing or forged headers, shouting, exclamation marks and URL
//! counts, plus a few phrases; operators add their own phrase rules. The score decides:
//! below `tag-threshold` the message is accepted with `X-Spam-Status: No`; from it on it is
//! tagged (`X-Spam-Flag: YES`); from `junk-threshold` on it goes to the Junk folder; from
//! `reject-threshold` (off by default) on it is refused with `550 5.7.1`.
//!
//! Plain-text mail (one UTF-8 or ASCII part, no transfer encoding, a plain subject and From)
//! is read as it is; for anything else the body is the decoded text of the parts the host
//! parsed (`message.parts`, contract 0.2.0: every `text/plain` part that is not an
//! attachment nor inside an enclosed message, else the `text/html` ones), and the subject
//! and From come from the header section alone (mail-parser, for RFC 2047).
//!
//! ```toml
//! [plugin.config]
//! tag-threshold = 3.0
//! junk-threshold = 6.0
//! # reject-threshold = 15.0
//! # default-phrases = false      # drop the built-in phrase list
//! [[plugin.config.rules]]
//! name = "CRYPTO_PITCH"
//! in = "body"                     # "subject", "body", or a header name
//! contains = "guaranteed returns" # case-insensitive for ASCII letters
//! score = 2.5
//! ```

use std::ops::ControlFlow;

use mail_parser::MessageParser;
use plugin_kit::needles::Needles;
use serde::Deserialize;

wit_bindgen::generate!({ path: "../../wit", world: "spam-plugin" });

use exports::portcullis::filter::spam::{Guest, SpamResult};
use portcullis::filter::types::{
    EnhancedCode, Envelope, Header, Message, MimePart, Pipeline, Reply, SessionInfo, Verdict,
};

#[derive(Deserialize, Clone)]
#[serde(deny_unknown_fields)]
struct Rule {
    name: String,
    #[serde(rename = "in")]
    field: String,
    contains: String,
    score: f64,
}

/// Where a rule looks, from its `in`.
enum Place<'a> {
    Subject,
    Body,
    /// The subject and the body (the built-in phrases).
    Any,
    /// The header of this name.
    Header(&'a str),
}

impl Rule {
    fn place(&self) -> Place<'_> {
        match self.field.to_ascii_lowercase().as_str() {
            "subject" => Place::Subject,
            "body" => Place::Body,
            "any" => Place::Any,
            _ => Place::Header(&self.field),
        }
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
struct Config {
    #[serde(default = "default_tag")]
    tag_threshold: f64,
    #[serde(default = "default_junk")]
    junk_threshold: f64,
    #[serde(default)]
    reject_threshold: Option<f64>,
    #[serde(default = "yes")]
    default_phrases: bool,
    #[serde(default)]
    rules: Vec<Rule>,
}

fn default_tag() -> f64 {
    3.0
}
fn default_junk() -> f64 {
    6.0
}
fn yes() -> bool {
    true
}

const PHRASES: &[(&str, &str, f64)] = &[
    ("PHRASE_VIAGRA", "viagra", 2.5),
    ("PHRASE_YOU_HAVE_WON", "you have won", 2.5),
    ("PHRASE_LOTTERY", "lottery", 2.0),
    ("PHRASE_ACT_NOW", "act now", 1.0),
    ("PHRASE_100_FREE", "100% free", 1.5),
    ("PHRASE_WIRE_TRANSFER", "wire transfer", 1.0),
    ("PHRASE_CLICK_HERE", "click here", 0.8),
    ("PHRASE_RISK_FREE", "risk-free", 1.0),
];

/// What the rules look at, extracted once.
struct Facts<'a> {
    subject: Option<String>,
    /// The body as a reader sees it: for plain-text mail, the message's own bytes.
    body: std::borrow::Cow<'a, str>,
    headers: Vec<(String, String)>,
    has_date: bool,
    has_message_id: bool,
    from_domain: Option<String>,
}

fn facts<'a>(message: &Message, raw: &'a [u8], headers: Vec<Header>) -> Facts<'a> {
    match plain_text(raw, &headers) {
        Some((body, subject, from_domain)) => Facts {
            subject,
            body: std::borrow::Cow::Borrowed(body),
            from_domain,
            ..header_facts(headers)
        },
        None => parsed_facts(message, raw, headers),
    }
}

/// The facts the host's header list gives directly.
fn header_facts(headers: Vec<Header>) -> Facts<'static> {
    let header = |name: &str| headers.iter().any(|h| h.name.eq_ignore_ascii_case(name));
    Facts {
        subject: None,
        body: std::borrow::Cow::Borrowed(""),
        has_date: header("date"),
        has_message_id: header("message-id"),
        from_domain: None,
        headers: headers.into_iter().map(|h| (h.name, h.value)).collect(),
    }
}

/// Body, subject and From domain without a MIME parse, for the most common kind of mail:
/// one part of plain text in UTF-8 or ASCII, not transfer-encoded, with a plain subject
/// and one plain From address. There a parse would return the body as it is and the
/// headers as the host already split them; anything else (`None`) is parsed in full.
fn plain_text<'a>(raw: &'a [u8], headers: &[Header]) -> Option<(&'a str, Option<String>, Option<String>)> {
    // The header's value when it is there once, `None` inside when absent, `None` when
    // repeated (which one counts is the parser's call).
    let one = |name: &str| {
        let mut found = headers.iter().filter(|h| h.name.eq_ignore_ascii_case(name));
        match (found.next(), found.next()) {
            (first, None) => Some(first.map(|h| h.value.as_str())),
            _ => None,
        }
    };
    let plain_type = match one("content-type")? {
        None => true,
        Some(value) => {
            let value: String = value
                .chars()
                .filter(|c| !c.is_ascii_whitespace() && *c != '"')
                .collect::<String>()
                .to_ascii_lowercase();
            let mut params = value.split(';');
            params.next() == Some("text/plain")
                && params.all(|p| {
                    matches!(
                        p,
                        "" | "charset=utf-8" | "charset=us-ascii" | "format=flowed" | "format=fixed"
                    )
                })
        }
    };
    let identity = one("content-transfer-encoding")?.is_none_or(|value| {
        ["7bit", "8bit", "binary"]
            .iter()
            .any(|e| value.trim().eq_ignore_ascii_case(e))
    });
    if !plain_type || !identity || one("mime-version").is_none() {
        return None;
    }
    // Encoded words, comments, quoting and groups are the parser's job.
    let plain = |text: &str| !text.contains("=?");
    let subject = one("subject")?;
    if !subject.is_none_or(plain) {
        return None;
    }
    let from_domain = match one("from")? {
        None => None,
        Some(from) => {
            if !plain(from) || from.contains(['"', '(', ')', ',', ';', ':', '\\']) {
                return None;
            }
            let address = match (from.rfind('<'), from.ends_with('>')) {
                (Some(open), true) => &from[open + 1..from.len() - 1],
                (None, false) => from,
                _ => return None,
            };
            let (local, domain) = address.trim().rsplit_once('@')?;
            if local.is_empty() || domain.is_empty() || address.trim().contains(char::is_whitespace) {
                return None;
            }
            Some(domain.to_lowercase())
        }
    };
    let start = memchr::memmem::find(raw, b"\r\n\r\n")? + 4;
    let body = std::str::from_utf8(&raw[start..]).ok()?;
    Some((body, subject.map(str::to_string), from_domain))
}

/// The facts of any message, from a MIME parse.
fn parsed_facts(message: &Message, raw: &[u8], headers: Vec<Header>) -> Facts<'static> {
    let parsed = MessageParser::default().parse_headers(raw);
    let body = match message.parts() {
        Ok(parts) => body_text(message, &parts),
        Err(e) => {
            portcullis::filter::log::log(
                portcullis::filter::log::Level::Info,
                &format!("no MIME structure ({e:?}): the body is not scored"),
            );
            String::new()
        }
    };
    let from_domain = parsed
        .as_ref()
        .and_then(|m| m.from())
        .and_then(|f| f.first())
        .and_then(|a| a.address())
        .and_then(|a| a.rsplit_once('@').map(|(_, d)| d.to_lowercase()));
    Facts {
        subject: parsed.as_ref().and_then(|m| m.subject().map(str::to_string)),
        from_domain,
        body: std::borrow::Cow::Owned(body),
        ..header_facts(headers)
    }
}

/// The text a reader sees: every `text/plain` part that is not an attachment and not
/// inside an enclosed message, each followed by a line break; without one, the `text/html`
/// parts.
fn body_text(message: &Message, parts: &[MimePart]) -> String {
    let enclosed = |part: &MimePart| {
        let mut parent = part.parent;
        while let Some(index) = parent {
            let Some(up) = parts.get(index as usize) else {
                return true;
            };
            if up.content_type == "message/rfc822" {
                return true;
            }
            parent = up.parent;
        }
        false
    };
    let text_of = |kind: &str| {
        let mut text = String::new();
        for part in parts.iter().filter(|p| {
            p.content_type == kind && p.disposition.as_deref() != Some("attachment") && !enclosed(p)
        }) {
            let mut content = Vec::with_capacity(part.size as usize);
            loop {
                let chunk = message.read_part(part.index, content.len() as u64, 1 << 20);
                if chunk.is_empty() {
                    break;
                }
                content.extend_from_slice(&chunk);
            }
            text.push_str(&String::from_utf8_lossy(&content));
            if kind == "text/plain" {
                text.push('\n');
            }
        }
        text
    };
    let plain = text_of("text/plain");
    if plain.is_empty() {
        text_of("text/html")
    } else {
        plain
    }
}

/// Whether most letters are capitals. ASCII letters only: fast, and shouting in spam is
/// overwhelmingly ASCII.
fn shouting(text: &str, min_letters: usize, ratio: f64) -> bool {
    Letters::of(text).shouting(min_letters, ratio)
}

/// The ASCII letters of a text and how many of them are capitals, counted in one pass.
struct Letters {
    letters: u32,
    upper: u32,
}

impl Letters {
    fn of(text: &str) -> Letters {
        // Without branches and with byte-wide counts summed every 255 bytes, so that the
        // loop is vectorised sixteen bytes at a time (with 32-bit counts it took four).
        let (mut letters, mut upper) = (0u32, 0u32);
        for chunk in text.as_bytes().chunks(255) {
            let (mut chunk_letters, mut chunk_upper) = (0u8, 0u8);
            for &b in chunk {
                let letter = (b | 0x20).wrapping_sub(b'a') < 26;
                chunk_letters += u8::from(letter);
                chunk_upper += u8::from(letter & (b & 0x20 == 0));
            }
            letters += u32::from(chunk_letters);
            upper += u32::from(chunk_upper);
        }
        Letters { letters, upper }
    }

    fn shouting(&self, min_letters: usize, ratio: f64) -> bool {
        self.letters as usize >= min_letters && f64::from(self.upper) / f64::from(self.letters) > ratio
    }
}

/// What one pass over the body finds: its URLs, and which phrase rules occur in it.
struct BodyScan {
    urls: usize,
    /// By rule, in the order of [`phrase_rules`]; `false` for rules that do not look in the
    /// body.
    phrases: Vec<bool>,
}

impl BodyScan {
    fn of(body: &str, rules: &[Rule]) -> BodyScan {
        let body = body.as_bytes();
        let in_body: Vec<usize> = (0..rules.len())
            .filter(|&i| matches!(rules[i].place(), Place::Body | Place::Any))
            .collect();
        // Needle 0 is "http", as written ("HTTP://" is not counted); the others are the
        // phrases, regardless of ASCII case.
        let needles = Needles::new(
            std::iter::once((&b"http"[..], false))
                .chain(in_body.iter().map(|&i| (rules[i].contains.as_bytes(), true))),
        );
        let mut scan = BodyScan {
            urls: 0,
            phrases: vec![false; rules.len()],
        };
        needles.find(body, |found| {
            match found.needle {
                0 => {
                    let rest = &body[found.at + 4..];
                    if rest.starts_with(b"://") || rest.starts_with(b"s://") {
                        scan.urls += 1;
                    }
                }
                n => scan.phrases[in_body[n - 1]] = true,
            }
            ControlFlow::<()>::Continue(())
        });
        scan
    }
}

fn score(config: &Config, facts: &Facts, session: &SessionInfo, envelope: &Envelope) -> (f64, Vec<String>) {
    let mut hits: Vec<(String, f64)> = Vec::new();
    let mut hit = |name: &str, score: f64| hits.push((name.to_string(), score));
    if !facts.has_date {
        hit("MISSING_DATE", 1.0);
    }
    if !facts.has_message_id {
        hit("MISSING_MESSAGE_ID", 1.0);
    }
    if facts.from_domain.is_none() {
        hit("MISSING_FROM", 2.5);
    }
    match &facts.subject {
        None => hit("MISSING_SUBJECT", 0.5),
        Some(subject) => {
            if shouting(subject, 8, 0.9) {
                hit("SUBJECT_ALL_CAPS", 1.5);
            }
            if subject.matches('!').count() >= 3 {
                hit("SUBJECT_EXCLAMATIONS", 1.0);
            }
        }
    }
    if Letters::of(&facts.body).shouting(50, 0.6) {
        hit("BODY_SHOUTING", 1.0);
    }
    let rules = phrase_rules(config);
    let body = BodyScan::of(&facts.body, &rules);
    if body.urls > 10 {
        hit("MANY_URLS", 1.5);
    }
    // Mail from outside that claims to come from the recipient's own domain.
    if session.pipeline == Pipeline::Mx
        && let Some(from) = &facts.from_domain
    {
        let envelope_domain = envelope
            .mail_from
            .as_deref()
            .and_then(|m| m.rsplit_once('@'))
            .map(|(_, d)| d.to_lowercase());
        let to_own_domain = envelope
            .rcpt_to
            .iter()
            .any(|r| r.to_lowercase().ends_with(&format!("@{from}")));
        if to_own_domain && envelope_domain.as_deref() != Some(from.as_str()) {
            hit("FROM_FORGED_LOCAL", 2.0);
        }
    }
    phrase_hits(&rules, facts, &body.phrases, &mut hit);
    let total = hits.iter().map(|(_, s)| s).sum();
    (total, hits.into_iter().map(|(n, _)| n).collect())
}

/// The phrase rules: the built-in ones (unless `default-phrases = false`), then the
/// configured ones.
fn phrase_rules(config: &Config) -> Vec<Rule> {
    PHRASES
        .iter()
        .filter(|_| config.default_phrases)
        .map(|(name, phrase, score)| Rule {
            name: name.to_string(),
            field: "any".into(),
            contains: phrase.to_string(),
            score: *score,
        })
        .chain(config.rules.iter().cloned())
        .collect()
}

/// The phrase rules that match `facts`, given which of them the body holds. Matching is
/// case-insensitive for ASCII letters (byte-wise, fast).
fn phrase_hits(rules: &[Rule], facts: &Facts, in_body: &[bool], hit: &mut impl FnMut(&str, f64)) {
    let subject = facts.subject.clone().unwrap_or_default().to_ascii_lowercase();
    for (rule, &in_body) in rules.iter().zip(in_body) {
        let needle = rule.contains.to_ascii_lowercase();
        let in_subject = || subject.contains(&needle);
        let found = match rule.place() {
            Place::Subject => in_subject(),
            Place::Body => in_body,
            Place::Any => in_body || in_subject(),
            Place::Header(name) => facts
                .headers
                .iter()
                .any(|(n, v)| n.eq_ignore_ascii_case(name) && v.to_ascii_lowercase().contains(&needle)),
        };
        if found {
            hit(&rule.name, rule.score);
        }
    }
}

struct SpamRules;

impl Guest for SpamRules {
    fn classify(session: SessionInfo, envelope: Envelope, message: &Message) -> Result<SpamResult, String> {
        let config: Config = match serde_json::from_str(&portcullis::filter::config::json()) {
            Ok(c) => c,
            Err(e) => {
                portcullis::filter::log::log(
                    portcullis::filter::log::Level::Error,
                    &format!("bad config: {e}"),
                );
                Config {
                    tag_threshold: default_tag(),
                    junk_threshold: default_junk(),
                    reject_threshold: None,
                    default_phrases: true,
                    rules: Vec::new(),
                }
            }
        };
        let raw = plugin_kit::read_all(message.size(), |at, max| message.read(at, max));
        let facts = facts(message, &raw, message.headers());
        let (total, tests) = score(&config, &facts, &session, &envelope);
        let spam = total >= config.tag_threshold;
        let headers = vec![
            Header {
                name: "X-Spam-Score".into(),
                value: format!("{total:.1}"),
            },
            Header {
                name: "X-Spam-Status".into(),
                value: format!(
                    "{}, score={total:.1} tag={:.1} junk={:.1} tests={}",
                    if spam { "Yes" } else { "No" },
                    config.tag_threshold,
                    config.junk_threshold,
                    if tests.is_empty() {
                        "NONE".to_string()
                    } else {
                        tests.join(",")
                    }
                ),
            },
            Header {
                name: "X-Spam-Flag".into(),
                value: if spam { "YES" } else { "NO" }.into(),
            },
        ];
        let verdict = if config.reject_threshold.is_some_and(|t| total >= t) {
            Verdict::Reject(Reply {
                code: 550,
                enhanced: Some(EnhancedCode {
                    class: 5,
                    subject: 7,
                    detail: 1,
                }),
                text: format!("Message refused as spam (score {total:.1})"),
            })
        } else if total >= config.junk_threshold {
            Verdict::Junk
        } else {
            Verdict::Accept
        };
        // Ours stand in place of any the message came with: a sender cannot pass off its own.
        let remove_headers = headers.iter().map(|h| h.name.clone()).collect();
        Ok(SpamResult {
            score: total,
            verdict,
            headers,
            remove_headers,
        })
    }
}

export!(SpamRules);
