//! The token counts of a completion's answer: the `usage` object of a JSON
//! answer, or of the last event of a stream that carries one (OpenAI
//! streams send it in the final chunk). The inspector reads them in the
//! same pass that judges the answer (see `inspect`); this module says what
//! a `usage` object means.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The token counts of one answer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tokens {
    pub prompt: u64,
    pub completion: u64,
    pub total: u64,
}

/// The `usage` of a completion or chunk object.
pub fn tokens_of(v: &Value) -> Option<Tokens> {
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
    use super::super::inspect::Inspector;
    use super::*;

    fn scan(ct: &str, status: u16, pieces: &[&[u8]]) -> Option<Tokens> {
        let mut s = Inspector::new(Some(ct), status == 200);
        for p in pieces {
            s.feed(p);
        }
        s.finish().tokens
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
    fn a_line_too_long_is_skipped_and_the_next_still_counts() {
        let mut s = Inspector::new(Some("text/event-stream"), true);
        let big = vec![b'x'; 1 << 20];
        for _ in 0..10 {
            s.feed(&big);
        }
        s.feed(b"\ndata: {\"usage\":{\"prompt_tokens\":1,\"completion_tokens\":1}}\n");
        assert_eq!(s.finish().tokens, t(1, 1, 2));
        let mut j = Inspector::new(Some("application/json"), true);
        for _ in 0..10 {
            j.feed(&big);
        }
        assert_eq!(j.finish().tokens, None);
    }
}
