//! Reading the token counts of a completion's answer while it is relayed:
//! the `usage` object of a JSON answer, or of the last event of a stream
//! that carries one (OpenAI streams send it in the final chunk).
//!
//! Pure and incremental: the relay hands every piece to [`Scanner::feed`]
//! (the same pieces as the inspector, after they reached the client), an
//! event stream is scanned line by line (a line may span pieces) and only
//! lines that mention `"usage"` are parsed; a JSON answer is kept up to a
//! bound and parsed once at the end. Memory is bounded by [`MAX_KEPT`]
//! whatever the child sends; past it the answer's tokens are simply not
//! counted. Runs on the HTTP worker relaying the answer.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Longest SSE line, and largest JSON answer, that is scanned.
const MAX_KEPT: usize = 4 << 20;

/// The token counts of one answer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tokens {
    pub prompt: u64,
    pub completion: u64,
    pub total: u64,
}

#[derive(Debug, PartialEq, Eq)]
enum Mode {
    Events,
    Json,
    Off,
}

#[derive(Debug)]
pub struct Scanner {
    mode: Mode,
    /// The unfinished SSE line, or the JSON answer so far.
    buf: Vec<u8>,
    /// A line grew past the bound: skip it to its end.
    skipping: bool,
    found: Option<Tokens>,
}

impl Scanner {
    /// A scanner for a 200 answer of `content_type`; anything else is not
    /// scanned.
    pub fn new(content_type: Option<&str>, status: u16) -> Scanner {
        let ct = content_type.unwrap_or("").to_ascii_lowercase();
        let mode = if status != 200 {
            Mode::Off
        } else if ct.starts_with("text/event-stream") {
            Mode::Events
        } else if ct.starts_with("application/json") {
            Mode::Json
        } else {
            Mode::Off
        };
        Scanner {
            mode,
            buf: Vec::new(),
            skipping: false,
            found: None,
        }
    }

    pub fn feed(&mut self, mut bytes: &[u8]) {
        match self.mode {
            Mode::Off => {}
            Mode::Json => {
                if self.buf.len() + bytes.len() > MAX_KEPT {
                    self.mode = Mode::Off;
                    self.buf = Vec::new();
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
                if self.buf.len() + bytes.len() > MAX_KEPT {
                    self.buf = Vec::new();
                    self.skipping = true;
                } else {
                    self.buf.extend_from_slice(bytes);
                }
            }
        }
    }

    fn line(&mut self, line: &[u8]) {
        let Some(data) = line.strip_prefix(b"data:") else {
            return;
        };
        // Most chunks carry no usage: look before parsing.
        if !contains(data, b"\"usage\"") {
            return;
        }
        if let Some(t) = serde_json::from_slice::<Value>(data)
            .ok()
            .as_ref()
            .and_then(tokens_of)
        {
            self.found = Some(t);
        }
    }

    /// The answer's tokens, when it carried any.
    pub fn finish(mut self) -> Option<Tokens> {
        match self.mode {
            Mode::Json => serde_json::from_slice::<Value>(&self.buf)
                .ok()
                .as_ref()
                .and_then(tokens_of),
            Mode::Events => {
                if !self.buf.is_empty() && !self.skipping {
                    let last = std::mem::take(&mut self.buf);
                    self.line(&last);
                }
                self.found
            }
            Mode::Off => None,
        }
    }
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// The `usage` of a completion or chunk object.
fn tokens_of(v: &Value) -> Option<Tokens> {
    let u = v.get("usage")?.as_object()?;
    let n = |k: &str| u.get(k).and_then(Value::as_u64);
    let (prompt, completion) = (n("prompt_tokens"), n("completion_tokens"));
    if prompt.is_none() && completion.is_none() && n("total_tokens").is_none() {
        return None;
    }
    let (prompt, completion) = (prompt.unwrap_or(0), completion.unwrap_or(0));
    Some(Tokens {
        prompt,
        completion,
        total: n("total_tokens").unwrap_or(prompt + completion),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scan(ct: &str, status: u16, pieces: &[&[u8]]) -> Option<Tokens> {
        let mut s = Scanner::new(Some(ct), status);
        for p in pieces {
            s.feed(p);
        }
        s.finish()
    }

    fn t(prompt: u64, completion: u64, total: u64) -> Option<Tokens> {
        Some(Tokens {
            prompt,
            completion,
            total,
        })
    }

    #[test]
    fn answers_and_their_tokens() {
        let json =
            br#"{"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":4,"total_tokens":7}}"#;
        let last =
            b"data: {\"choices\":[],\"usage\":{\"prompt_tokens\":5,\"completion_tokens\":6}}\n\n";
        type Case<'a> = (&'a str, &'a str, u16, Vec<&'a [u8]>, Option<Tokens>);
        let cases: Vec<Case> = vec![
            (
                "json whole",
                "application/json",
                200,
                vec![json],
                t(3, 4, 7),
            ),
            (
                "json in pieces",
                "application/json; charset=utf-8",
                200,
                vec![&json[..10], &json[10..]],
                t(3, 4, 7),
            ),
            (
                "json without usage",
                "application/json",
                200,
                vec![b"{\"a\":1}"],
                None,
            ),
            ("json not 200", "application/json", 500, vec![json], None),
            ("not json", "application/json", 200, vec![b"{nope"], None),
            ("other type", "text/plain", 200, vec![json], None),
            (
                "stream last chunk, total computed",
                "text/event-stream",
                200,
                vec![
                    b"data: {\"choices\":[{\"delta\":{\"content\":\"hi\"}}]}\n\n",
                    last,
                    b"data: [DONE]\n\n",
                ],
                t(5, 6, 11),
            ),
            (
                "stream line split across pieces",
                "text/event-stream",
                200,
                vec![&last[..20], &last[20..41], &last[41..]],
                t(5, 6, 11),
            ),
            (
                "stream without usage",
                "text/event-stream",
                200,
                vec![b"data: {\"x\":1}\n\ndata: [DONE]\n\n"],
                None,
            ),
            (
                "stream usage null",
                "text/event-stream",
                200,
                vec![b"data: {\"usage\":null}\n\n"],
                None,
            ),
            (
                "stream last line unterminated",
                "text/event-stream",
                200,
                vec![b"data: {\"usage\":{\"total_tokens\":9}}"],
                t(0, 0, 9),
            ),
        ];
        for (what, ct, status, pieces, want) in cases {
            assert_eq!(scan(ct, status, &pieces), want, "{what}");
        }
    }

    #[test]
    fn memory_stays_bounded() {
        let mut s = Scanner::new(Some("text/event-stream"), 200);
        let big = vec![b'x'; 1 << 20];
        for _ in 0..10 {
            s.feed(&big);
            assert!(s.buf.len() <= MAX_KEPT);
        }
        // The long line is skipped; the next one still counts.
        s.feed(b"\ndata: {\"usage\":{\"prompt_tokens\":1,\"completion_tokens\":1}}\n");
        assert_eq!(s.finish(), t(1, 1, 2));
        let mut j = Scanner::new(Some("application/json"), 200);
        for _ in 0..10 {
            j.feed(&big);
        }
        assert!(j.buf.is_empty());
        assert_eq!(j.finish(), None);
    }
}
