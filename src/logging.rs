//! The coordinator's own log on stderr: today's text lines, or with
//! `LOG_FORMAT=json` one JSON object per line for log shippers (Loki,
//! Elasticsearch, CloudWatch): `time` (RFC 3339, UTC, milliseconds),
//! `level`, `target`, `message`, and `slot`, `profile` and `pid` when the
//! event names them.
//!
//! Those three come from the message itself: every log line about a slot
//! or a child follows the convention `slot <i>: ... profile <name> ... pid
//! <pid>`, so they are read from the text instead of being passed twice.
//! Nothing here adds content: no profile content or key is ever given to the
//! logger in the first place. Text lines have control characters escaped
//! ([`one_line`]); JSON escapes them by itself.

use std::io::Write;

use serde_json::{json, Map, Value};

pub use crate::config::LogFormat as Format;

/// What is logged when `RUST_LOG` is unset: info, except rust-s3 (target
/// `s3`), whose only warning ("Retrying safe S3 request after transient
/// failure") names neither the store nor the error and precedes our own
/// line that names both; its errors still show.
const DEFAULT_FILTER: &str = "info,s3=error";

/// Install the logger (once, at start). `RUST_LOG` filters as usual.
pub fn init(format: Format) {
    let mut b =
        env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(DEFAULT_FILTER));
    b.target(env_logger::Target::Stderr);
    match format {
        Format::Text => {
            // env_logger's own layout, with control characters escaped: a
            // line is one event, however a message was made.
            b.format(|buf, record| {
                let raw = record.args().to_string();
                let message = one_line(&raw);
                writeln!(
                    buf,
                    "[{} {:<5} {}] {message}",
                    buf.timestamp_millis(),
                    record.level(),
                    record.target()
                )
            });
        }
        Format::Json => {
            b.format(|buf, record| {
                let line = json_line(
                    &buf.timestamp_millis().to_string(),
                    record.level().as_str(),
                    record.target(),
                    &record.args().to_string(),
                );
                writeln!(buf, "{line}")
            });
        }
    }
    // A second init (tests) keeps the first logger.
    let _ = b.try_init();
}

/// `message` with every control character (CR, LF, ESC, ...) written as
/// an escape, so no text, whoever supplied it, splits a line or drives a
/// terminal.
pub fn one_line(message: &str) -> std::borrow::Cow<'_, str> {
    if !message.chars().any(char::is_control) {
        return std::borrow::Cow::Borrowed(message);
    }
    let mut out = String::with_capacity(message.len() + 8);
    for c in message.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() => out.push_str(&format!("\\u{{{:x}}}", c as u32)),
            c => out.push(c),
        }
    }
    std::borrow::Cow::Owned(out)
}

/// One log event as a JSON object. Client text cannot set the lifted
/// fields: the edge admits request ids, paths and model names only as
/// single words without spaces (see `edge`), and each is logged inside
/// parentheses or after its own keyword, never as a bare `slot`, `profile`
/// or `pid` word.
pub fn json_line(time: &str, level: &str, target: &str, message: &str) -> Value {
    let mut obj = Map::new();
    obj.insert("time".into(), json!(time));
    obj.insert("level".into(), json!(level));
    obj.insert("target".into(), json!(target));
    obj.insert("message".into(), json!(message));
    if let Some(slot) = word_after(message, "slot").and_then(|w| w.parse::<u64>().ok()) {
        obj.insert("slot".into(), json!(slot));
    }
    if let Some(profile) = word_after(message, "profile") {
        obj.insert("profile".into(), json!(profile));
    }
    if let Some(pid) = word_after(message, "pid").and_then(|w| w.parse::<u64>().ok()) {
        obj.insert("pid".into(), json!(pid));
    }
    Value::Object(obj)
}

/// The word after the first standalone `key` in `message`, without
/// trailing punctuation.
fn word_after<'a>(message: &'a str, key: &str) -> Option<&'a str> {
    let mut words = message.split_whitespace();
    while let Some(w) = words.next() {
        if w == key {
            let next = words.next()?;
            let next = next.trim_end_matches([':', ',', ';', ')', '.']);
            return (!next.is_empty()).then_some(next);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slot_profile_and_pid_are_lifted_from_the_message() {
        let v = json_line(
            "2026-01-01T00:00:00.000Z",
            "INFO",
            "aistudioproxy::watcher",
            "slot 1: started profile alice pid 4242 on ports api 3101 stream 3201 camoufox 9223",
        );
        assert_eq!(v["slot"], 1);
        assert_eq!(v["profile"], "alice");
        assert_eq!(v["pid"], 4242);
        assert_eq!(v["level"], "INFO");
        assert!(v["message"].as_str().unwrap().starts_with("slot 1:"));
    }

    #[test]
    fn events_without_them_have_none() {
        let v = json_line(
            "t",
            "WARN",
            "x",
            "API keys enforced on /v1/* (2 keys loaded)",
        );
        assert!(v.get("slot").is_none() && v.get("profile").is_none() && v.get("pid").is_none());
        let v = json_line("t", "INFO", "x", "no profile");
        assert!(v.get("profile").is_none());
    }
}
