//! Looking inside a completion's answer while it is relayed, to tell an
//! empty one (the child's sign of an exhausted quota) from a real one, and
//! both from the child's own error text. Read as both children write them:
//! the upstream error text `\n\n[Error: ...]` (older: `[错误: ...]`), the
//! no-output placeholder, the older fork's `internal_timeout` reasoning,
//! and an error event after `[DONE]` (the current child's failed auth
//! rotation after a quota).
//!
//! The same pass reads the answer's token counts for the usage book: the
//! `usage` of a JSON answer, or of the last event of a stream that carries
//! one (`usage::tokens_of`).
//!
//! The relay hands every piece to [`Inspector::feed`] after writing it to
//! the client, so inspection never delays an event. An event stream is
//! scanned line by line as it arrives (a line may span pieces); a JSON
//! answer is kept (up to a bound) and read at the end. Anything past the
//! bounds, or of another type, is not judged.

use serde_json::Value;

use super::usage::{tokens_of, Tokens};
use super::verdict::Emptiness;

/// What reading an answer found.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Reading {
    /// How it was empty, if it was (None also when not judged).
    pub empty: Option<Emptiness>,
    /// Its token counts, when it carried any.
    pub tokens: Option<Tokens>,
}

/// The child's ways of reporting an upstream error inside a 200 answer,
/// anywhere in the content: the current child always puts `\n\n` before
/// its `[Error:`, which keeps a model's own text from reading as one.
const ERROR_MARKS: &[&str] = &["[错误", "\n\n[Error:"];
/// The same, at the very start of the content.
const ERROR_START: &str = "[Error:";
/// What the current child sends when the model wrote nothing.
const NO_OUTPUT: &str = "*(Model finished thinking but generated no output.)*";
/// The older fork's reasoning text when its stream timed out.
const INTERNAL_TIMEOUT: &str = "internal_timeout";
/// How much of the content's start is kept (to compare with `NO_OUTPUT`).
const KEEP_START: usize = 128;
/// Longest SSE line, and largest JSON answer, that is inspected; a longer
/// line is skipped (and taken for content), a larger answer not judged.
const MAX_INSPECTED: usize = 8 << 20;

#[derive(Debug, PartialEq, Eq)]
enum Mode {
    Events,
    Json,
    Off,
}

#[derive(Debug)]
pub struct Inspector {
    mode: Mode,
    /// The unfinished SSE line, or the whole JSON answer.
    buf: Vec<u8>,
    content: bool,
    error_text: bool,
    /// `[DONE]` was seen.
    done: bool,
    error_after_done: bool,
    internal_timeout: bool,
    /// Reasoning text other than the fork's `internal_timeout` was seen.
    reasoning: bool,
    /// A tool call was seen.
    tools: bool,
    /// The content's first `KEEP_START` bytes, and its whole length.
    start: String,
    length: usize,
    /// The end of the content seen so far, so a mark split across events
    /// is still found.
    tail: String,
    /// A line grew past the bound: skip it to its end.
    skipping: bool,
    tokens: Option<Tokens>,
}

impl Inspector {
    /// An inspector for an answer of `content_type`; `judge` false (not a
    /// completion, not a 200) turns it off.
    pub fn new(content_type: Option<&str>, judge: bool) -> Inspector {
        let ct = content_type.unwrap_or("").to_ascii_lowercase();
        let mode = if !judge {
            Mode::Off
        } else if ct.starts_with("text/event-stream") {
            Mode::Events
        } else if ct.starts_with("application/json") {
            Mode::Json
        } else {
            Mode::Off
        };
        Inspector {
            mode,
            buf: Vec::new(),
            content: false,
            error_text: false,
            done: false,
            error_after_done: false,
            internal_timeout: false,
            reasoning: false,
            tools: false,
            start: String::new(),
            length: 0,
            tail: String::new(),
            skipping: false,
            tokens: None,
        }
    }

    pub fn feed(&mut self, mut bytes: &[u8]) {
        match self.mode {
            Mode::Off => {}
            Mode::Json => {
                if self.buf.len() + bytes.len() > MAX_INSPECTED {
                    self.off();
                } else {
                    self.buf.extend_from_slice(bytes);
                }
            }
            Mode::Events => {
                while let Some(nl) = bytes.iter().position(|&b| b == b'\n') {
                    if self.skipping {
                        self.skipping = false;
                    } else if self.buf.is_empty() {
                        self.line(&bytes[..nl]);
                    } else {
                        let mut line = std::mem::take(&mut self.buf);
                        line.extend_from_slice(&bytes[..nl]);
                        self.line(&line);
                    }
                    bytes = &bytes[nl + 1..];
                }
                if self.skipping {
                    return;
                }
                if self.buf.len() + bytes.len() > MAX_INSPECTED {
                    // Too long to judge: content, as far as we know.
                    self.buf = Vec::new();
                    self.skipping = true;
                    self.content = true;
                } else {
                    self.buf.extend_from_slice(bytes);
                }
            }
        }
    }

    /// Whether this is an event stream that is judged (what `hold` holds).
    pub fn judges_events(&self) -> bool {
        self.mode == Mode::Events
    }

    /// Whether the answer has begun for its client: content, a tool call or
    /// reasoning text was seen (a stream's empty role chunk, its empty
    /// finishing chunk, `[DONE]` and error events are no beginning, nor is
    /// content that may still be the no-output placeholder).
    pub fn begun(&self) -> bool {
        let text = self.length > 0
            && (self.length > KEEP_START || !NO_OUTPUT.starts_with(self.start.trim()));
        text || self.tools || self.reasoning
    }

    /// The answer ended normally: was it empty, and its tokens.
    pub fn finish(mut self) -> Reading {
        match self.mode {
            Mode::Off => return Reading::default(),
            Mode::Json => {
                let buf = std::mem::take(&mut self.buf);
                match serde_json::from_slice::<Value>(&buf) {
                    Ok(v) => {
                        self.choices(&v, "message");
                        self.tokens = tokens_of(&v);
                    }
                    Err(_) => return Reading::default(),
                }
            }
            Mode::Events => {
                let rest = std::mem::take(&mut self.buf);
                if !rest.is_empty() && !self.skipping {
                    self.line(&rest);
                }
            }
        }
        Reading {
            empty: self.emptiness(),
            tokens: self.tokens,
        }
    }

    fn emptiness(&self) -> Option<Emptiness> {
        let trimmed = self.start.trim();
        if self.error_text || trimmed.starts_with(ERROR_START) {
            Some(Emptiness::ErrorText)
        } else if self.error_after_done {
            Some(Emptiness::ErrorAfterDone)
        } else if self.internal_timeout && !self.content {
            Some(Emptiness::InternalTimeout)
        } else if !self.content || (self.length <= KEEP_START && trimmed == NO_OUTPUT) {
            Some(Emptiness::NoContent)
        } else {
            None
        }
    }

    fn off(&mut self) {
        self.mode = Mode::Off;
        self.buf = Vec::new();
    }

    fn line(&mut self, line: &[u8]) {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let Some(data) = line.strip_prefix(b"data:") else {
            return;
        };
        let data = data.trim_ascii();
        if data == b"[DONE]" {
            self.done = true;
            return;
        }
        if data.is_empty() {
            return;
        }
        if let Ok(v) = serde_json::from_slice::<Value>(data) {
            if self.done && v.get("error").is_some() {
                self.error_after_done = true;
            }
            if let Some(t) = tokens_of(&v) {
                self.tokens = Some(t);
            }
            self.choices(&v, "delta");
        }
    }

    /// Look at `choices[].<part>` (`delta` of a chunk, `message` of a whole
    /// answer) for content and tool calls.
    fn choices(&mut self, v: &Value, part: &str) {
        let Some(choices) = v.get("choices").and_then(Value::as_array) else {
            return;
        };
        for c in choices {
            let Some(p) = c.get(part) else { continue };
            let tools = ["tool_calls", "function_call"]
                .iter()
                .any(|k| match p.get(*k) {
                    Some(Value::Array(a)) => !a.is_empty(),
                    Some(Value::Null) | None => false,
                    Some(_) => true,
                });
            if tools {
                self.content = true;
                self.tools = true;
            }
            match p.get("reasoning_content").and_then(Value::as_str) {
                Some(INTERNAL_TIMEOUT) => self.internal_timeout = true,
                Some(r) if !r.is_empty() => self.reasoning = true,
                _ => {}
            }
            match p.get("content") {
                Some(Value::String(s)) => self.text(s),
                Some(Value::Array(parts)) => {
                    for t in parts
                        .iter()
                        .filter_map(|x| x.get("text").and_then(Value::as_str))
                    {
                        self.text(t);
                    }
                }
                _ => {}
            }
        }
    }

    fn text(&mut self, s: &str) {
        if s.is_empty() {
            return;
        }
        self.content = true;
        self.length += s.len();
        if self.start.len() < KEEP_START {
            let mut take = (KEEP_START - self.start.len()).min(s.len());
            while !s.is_char_boundary(take) {
                take -= 1;
            }
            self.start.push_str(&s[..take]);
        }
        self.tail.push_str(s);
        if ERROR_MARKS.iter().any(|m| self.tail.contains(m)) {
            self.error_text = true;
        }
        // Keep only as much as a split mark needs.
        let keep = ERROR_MARKS.iter().map(|m| m.len()).max().unwrap_or(0);
        if self.tail.len() > keep {
            let mut cut = self.tail.len() - keep;
            while !self.tail.is_char_boundary(cut) {
                cut -= 1;
            }
            self.tail.drain(..cut);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn events(pieces: &[&str]) -> Option<Emptiness> {
        let mut i = Inspector::new(Some("text/event-stream; charset=utf-8"), true);
        for p in pieces {
            i.feed(p.as_bytes());
        }
        i.finish().empty
    }

    fn chunk(delta: &str) -> String {
        format!("data: {{\"choices\":[{{\"index\":0,\"delta\":{delta}}}]}}\n\n")
    }

    #[test]
    fn streams() {
        let role = chunk(r#"{"role":"assistant"}"#);
        let hello = chunk(r#"{"content":"hello"}"#);
        let empty = chunk(r#"{"content":""}"#);
        let done = "data: [DONE]\n\n";
        assert_eq!(events(&[&role, &hello, done]), None);
        assert_eq!(
            events(&[&role, &empty, done]),
            Some(Emptiness::NoContent),
            "quota exhausted: nothing but empty deltas"
        );
        // A line split across reads, CRLF line ends.
        let crlf = hello.replace('\n', "\r\n");
        let (a, b) = crlf.split_at(17);
        assert_eq!(events(&[&role, a, b, done]), None);
        let tool = chunk(r#"{"tool_calls":[{"index":0,"function":{"name":"f"}}]}"#);
        assert_eq!(events(&[&tool, done]), None);
        let err = chunk(r#"{"content":"[错误: quota]"}"#);
        assert_eq!(events(&[&role, &err, done]), Some(Emptiness::ErrorText));
        // The mark split between two events.
        let e1 = chunk(r#"{"content":"ok [错"}"#);
        let e2 = chunk(r#"{"content":"误: x]"}"#);
        assert_eq!(events(&[&e1, &e2, done]), Some(Emptiness::ErrorText));
        assert_eq!(events(&[done]), Some(Emptiness::NoContent));
    }

    #[test]
    fn both_childrens_signs() {
        let role = chunk(r#"{"role":"assistant"}"#);
        let done = "data: [DONE]\n\n";
        // The current child's upstream error, after some content or alone.
        let partial = chunk(r#"{"content":"Hel"}"#);
        let err = chunk(r#"{"content":"\n\n[Error: AI Studio error: 500 boom]"}"#);
        assert_eq!(
            events(&[&role, &partial, &err, done]),
            Some(Emptiness::ErrorText)
        );
        let alone = chunk(r#"{"content":"[Error: AI Studio error: 500 boom]"}"#);
        assert_eq!(events(&[&role, &alone, done]), Some(Emptiness::ErrorText));
        let quoted = chunk(r#"{"content":"write `[Error: x]` in your log"}"#);
        assert_eq!(events(&[&role, &quoted, done]), None, "a model's own words");
        // A streamed quota: an empty chunk, [DONE], then the rotation's failure.
        let empty = chunk(r#"{"content":""}"#);
        let after =
            ": processing auth rotation...\n\ndata: {\"error\": \"Auth rotation failed.\"}\n\n";
        assert_eq!(
            events(&[&role, &empty, done, after]),
            Some(Emptiness::ErrorAfterDone)
        );
        // The no-output placeholder.
        let none =
            chunk(r#"{"content":"\n\n*(Model finished thinking but generated no output.)*"}"#);
        assert_eq!(events(&[&role, &none, done]), Some(Emptiness::NoContent));
        let more = chunk(r#"{"content":"And yet it said something."}"#);
        assert_eq!(events(&[&role, &none, &more, done]), None);
        // The older fork's internal timeout.
        let it = chunk(r#"{"reasoning_content":"internal_timeout"}"#);
        let stop =
            "data: {\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}]}\n\n";
        assert_eq!(events(&[&it, stop, done]), Some(Emptiness::InternalTimeout));
    }

    #[test]
    fn a_stream_begins_with_content_a_tool_call_or_reasoning_only() {
        let begun = |pieces: &[&str]| {
            let mut i = Inspector::new(Some("text/event-stream"), true);
            for p in pieces {
                i.feed(p.as_bytes());
            }
            i.begun()
        };
        let role = chunk(r#"{"role":"assistant"}"#);
        let empty_stop = "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"\"},\"finish_reason\":\"stop\"}],\"usage\":{\"completion_tokens\":0}}\n\n";
        let after = "data: [DONE]\n\n: processing auth rotation...\n\ndata: {\"error\": \"Auth rotation failed.\"}\n\n";
        assert!(
            !begun(&[&role, empty_stop, after]),
            "the current child's streamed quota"
        );
        let it = chunk(r#"{"reasoning_content":"internal_timeout"}"#);
        assert!(!begun(&[&it]), "the fork's internal timeout");
        assert!(begun(&[&role, &chunk(r#"{"content":"h"}"#)]));
        // The no-output placeholder, whole or in part, is no beginning.
        let none = r#"{"content":"\n\n*(Model finished thinking but generated no output.)*"}"#;
        assert!(!begun(&[&role, &chunk(none)]));
        assert!(!begun(&[&role, &chunk(r#"{"content":"\n\n*(Model fin"}"#)]));
        assert!(begun(&[
            &role,
            &chunk(none),
            &chunk(r#"{"content":" But"}"#)
        ]));
        assert!(begun(&[&role, &chunk(r#"{"content":"*(Model said"}"#)]));
        assert!(begun(&[&chunk(r#"{"reasoning_content":"hmm"}"#)]));
        assert!(begun(&[&chunk(r#"{"tool_calls":[{"index":0}]}"#)]));
        // A line split across pieces begins when its end comes.
        let c = chunk(r#"{"content":"hello"}"#);
        let (a, b) = c.split_at(20);
        assert!(!begun(&[a]));
        assert!(begun(&[a, b]));
    }

    #[test]
    fn whole_answers() {
        let judge = |body: &str| {
            let mut i = Inspector::new(Some("application/json"), true);
            i.feed(body.as_bytes());
            i.finish().empty
        };
        let msg = |m: &str| format!(r#"{{"choices":[{{"message":{m}}}]}}"#);
        assert_eq!(judge(&msg(r#"{"content":"hi"}"#)), None);
        assert_eq!(judge(&msg(r#"{"content":""}"#)), Some(Emptiness::NoContent));
        assert_eq!(
            judge(&msg(r#"{"content":null}"#)),
            Some(Emptiness::NoContent)
        );
        assert_eq!(
            judge(&msg(r#"{"content":null,"tool_calls":[{"id":"x"}]}"#)),
            None
        );
        assert_eq!(
            judge(&msg(r#"{"content":"[错误: boom]"}"#)),
            Some(Emptiness::ErrorText)
        );
        assert_eq!(judge("not json"), None, "not judged");
        let mut off = Inspector::new(Some("text/plain"), true);
        off.feed(b"whatever");
        assert_eq!(off.finish(), Reading::default());
        let mut off = Inspector::new(Some("application/json"), false);
        off.feed(b"{}");
        assert_eq!(off.finish(), Reading::default());
    }
}
