//! What the front door accepts of a request before any route sees it, and
//! how client-supplied text is shown where it reaches a log line, a header
//! or a notification.
//!
//! [`check`] runs on the HTTP worker before dispatch: the method is one we
//! serve, the request target is an origin-form path and query made of the
//! characters RFC 3986 allows (percent escapes well formed, no `.` or `..`
//! segment, even percent-encoded), header names are tokens and header
//! values carry no control byte but HTAB (RFC 9110 5.5). A request failing
//! any of these is the client's fault: 400 with the usual error JSON, and
//! no child ever sees it.
//!
//! [`shown`] makes any client text safe for a log line: printable ASCII
//! other than backslash and quotes passes, anything else becomes an escape,
//! so a line cannot be split, coloured or given a field it did not have.
//! Runs on whatever thread logs; no state.

use std::fmt::Write as _;

use tiny_http::{Method, Request};

/// Methods the API and the probes answer.
const METHODS: &[&str] = &["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"];

/// The longest request id a client may send (longer ones are replaced).
pub const MAX_REQUEST_ID: usize = 200;

/// Whether a model name a client sent may be routed by and logged: 1 to
/// 200 visible ASCII characters, no quotes or backslash (model names are
/// words like `gemini-2.5-pro`).
pub fn model_ok(name: &str) -> bool {
    !name.is_empty() && name.len() <= 200 && request_id_ok(name)
}

/// Why a request was refused at the edge (the message of its 400).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    Method,
    Target(&'static str),
    HeaderName,
    HeaderValue(String),
    RequestId,
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::Method => write!(f, "unsupported method: use one of {}", METHODS.join(", ")),
            Refusal::Target(why) => write!(f, "malformed request path: {why}"),
            Refusal::HeaderName => f.write_str(
                "malformed header name: header names are tokens (letters, digits and !#$%&'*+-.^_`|~)",
            ),
            Refusal::HeaderValue(name) => write!(
                f,
                "header {} carries a control character: send visible characters, spaces and tabs only",
                shown(name)
            ),
            Refusal::RequestId => f.write_str(
                "X-Request-Id must be visible ASCII characters (no spaces or control characters)",
            ),
        }
    }
}

/// Everything the edge checks of `rq` before dispatch.
pub fn check(rq: &Request) -> Result<(), Refusal> {
    check_method(rq.method())?;
    check_target(rq.url())?;
    for h in rq.headers() {
        let name = h.field.as_str().as_str();
        if name.is_empty() || !name.bytes().all(is_tchar) {
            return Err(Refusal::HeaderName);
        }
        if !h.value.as_str().bytes().all(is_field_byte) {
            return Err(Refusal::HeaderValue(name.to_string()));
        }
        if h.field.equiv("X-Request-Id") && !request_id_ok(h.value.as_str().trim()) {
            return Err(Refusal::RequestId);
        }
    }
    Ok(())
}

fn check_method(m: &Method) -> Result<(), Refusal> {
    if METHODS.contains(&m.as_str()) {
        Ok(())
    } else {
        Err(Refusal::Method)
    }
}

/// An origin-form target: `/path[?query]` of RFC 3986 characters.
pub fn check_target(target: &str) -> Result<(), Refusal> {
    if !target.starts_with('/') {
        return Err(Refusal::Target("it must start with /"));
    }
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (target, None),
    };
    if !path.bytes().all(is_pchar_or_slash) {
        return Err(Refusal::Target(
            "it holds a character that must be percent-encoded",
        ));
    }
    if let Some(q) = query {
        if !q.bytes().all(|b| is_pchar_or_slash(b) || b == b'?') {
            return Err(Refusal::Target(
                "the query holds a character that must be percent-encoded",
            ));
        }
    }
    if !escapes_ok(target) {
        return Err(Refusal::Target("a % is not followed by two hex digits"));
    }
    if path.split('/').any(is_dot_segment) {
        return Err(Refusal::Target("it has a . or .. segment"));
    }
    Ok(())
}

/// `.` or `..`, also with the dots percent-encoded.
fn is_dot_segment(seg: &str) -> bool {
    let lower = seg.to_ascii_lowercase().replace("%2e", ".");
    lower == "." || lower == ".."
}

fn escapes_ok(s: &str) -> bool {
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            if !(b.get(i + 1).is_some_and(u8::is_ascii_hexdigit)
                && b.get(i + 2).is_some_and(u8::is_ascii_hexdigit))
            {
                return false;
            }
            i += 3;
        } else {
            i += 1;
        }
    }
    true
}

/// RFC 3986 `pchar` (unreserved, sub-delims, `:`, `@`, `%`) or `/`.
fn is_pchar_or_slash(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:@%/".contains(&b)
}

/// RFC 9110 `tchar`.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// A byte allowed in a field value: visible, space, tab, or obs-text.
fn is_field_byte(b: u8) -> bool {
    b == b'\t' || (b' '..=b'~').contains(&b) || b >= 0x80
}

/// A client's request id we keep and echo: visible ASCII, no quotes or
/// backslash (it is shown in logs and JSON), at most [`MAX_REQUEST_ID`]
/// (a longer one is replaced, not refused).
pub fn request_id_ok(id: &str) -> bool {
    id.bytes()
        .all(|b| (b'!'..=b'~').contains(&b) && !matches!(b, b'"' | b'\\'))
}

/// Client text made safe for a log line: printable ASCII passes (a space
/// too, so a path or a model name stays readable), `\` and `"` and every
/// other byte become escapes (`\x1b`, `\u{e9}`).
pub fn shown(text: &str) -> std::borrow::Cow<'_, str> {
    if text
        .bytes()
        .all(|b| (b' '..=b'~').contains(&b) && b != b'\\' && b != b'"')
    {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            ' '..='~' => out.push(c),
            c if (c as u32) < 0x100 => {
                let _ = write!(out, "\\x{:02x}", c as u32);
            }
            c => {
                let _ = write!(out, "\\u{{{:x}}}", c as u32);
            }
        }
    }
    std::borrow::Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets() {
        for ok in [
            "/v1/models",
            "/v1/chat/completions?x=1&y=a%20b",
            "/v1/cancel/abc-1_2~3",
            "/",
            "/live?",
            "/v1/a:b@c;d=e",
        ] {
            assert_eq!(check_target(ok), Ok(()), "{ok}");
        }
        for bad in [
            "/v1/../x",
            "/v1/./models",
            "/v1/%2e%2E/x",
            "/..",
            "/v1/x\u{7f}",
            "/v1/x?\u{7f}",
            "/v1/a\"b",
            "/v1/a<b>",
            "/v1/a\\b",
            "/v1/%zz",
            "/v1/%4",
            "http://evil/v1/models",
            "*",
            "/v1/x y",
            "/v1/caf\u{e9}",
        ] {
            assert!(check_target(bad).is_err(), "{bad:?} passed");
        }
    }

    #[test]
    fn bytes_of_names_and_values() {
        assert!("X-Foo".bytes().all(is_tchar));
        assert!(!"X(A".bytes().all(is_tchar));
        assert!("a\tb c~".bytes().all(is_field_byte));
        for b in [0u8, 1, 0x0d, 0x0a, 0x1b, 0x7f] {
            assert!(!is_field_byte(b), "{b:#x}");
        }
    }

    #[test]
    fn request_ids() {
        assert!(request_id_ok("abc-123_x.y:z"));
        assert!(!request_id_ok("a b"));
        assert!(!request_id_ok("a\x1bb"));
        assert!(!request_id_ok("a\"b"));
        assert!(!request_id_ok("é"));
    }

    #[test]
    fn shown_escapes_what_could_forge_a_line() {
        assert_eq!(shown("plain /v1/x"), "plain /v1/x");
        assert_eq!(shown("a\x1b[31mb"), "a\\x1b[31mb");
        assert_eq!(shown("a\r\nprofile x"), "a\\x0d\\x0aprofile x");
        assert_eq!(shown("q\"\\"), "q\\\"\\\\");
        assert_eq!(shown("é€"), "\\xe9\\u{20ac}");
    }
}
