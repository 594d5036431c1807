//! The dialect edge inside the proxy: a request in Anthropic's or
//! Gemini's form is turned into the chat completion (or model listing) a
//! child serves before it enters the queue ([`plan`]), and the child's
//! answer is turned back on its way out ([`relay`]). Everything between,
//! the queue, failover before the first byte, take-back of an exhausted
//! account, the client watch, usage and the answer inspection, is the
//! OpenAI path's own: the inspector reads the child's bytes as they came,
//! before translation.
//!
//! Streams are translated as a transform over the child's SSE events: each
//! piece read from the child goes to the dialect's translator, and what it
//! returns (whole events only) is written as one chunk and flushed, so
//! every event reaches the client as soon as the child's does. Errors,
//! ours and the child's, take the dialect's error shape.

use std::cell::RefCell;
use std::io::{self, Read, Write};

use serde_json::Value;
use tiny_http::Request;

use crate::dialect::{self, Dialect, Prepared, Route, Translator};
use crate::dispatch::Kind;
use crate::reply::{self, ApiError, Reply};

use super::inspect::Inspector;
use super::relay::{self, Framing, RelayError};

/// Largest child answer translated whole (a JSON completion, a model list).
const MAX_WHOLE: u64 = 64 << 20;

/// What the proxy sends a child for a dialect request.
pub(super) struct Plan {
    pub url: String,
    pub body: Vec<u8>,
    pub kind: Kind,
    pub streaming: bool,
    pub model: Option<String>,
    pub completion: bool,
    pub translator: Translator,
}

/// The dialect request `rq` is, if any (its URL is `url`), and the
/// dialect it speaks.
pub(super) fn route_of(rq: &Request, url: &str) -> (Option<Route>, Dialect) {
    let (path, query) = url.split_once('?').unwrap_or((url, ""));
    let has = |name: &'static str| rq.headers().iter().any(|h| h.field.equiv(name));
    let hints = dialect::Hints {
        anthropic: has("anthropic-version"),
        google: has("x-goog-api-key") || has("x-goog-api-client"),
    };
    let route = dialect::route(rq.method().as_str(), path, query, hints);
    let speaks = route.as_ref().map_or(Dialect::OpenAi, Route::dialect);
    (route, speaks)
}

/// The child request for `route`, or the answer to give at once (a token
/// count, or a 400 naming what cannot be translated).
pub(super) fn plan(route: &Route, body: &[u8]) -> Result<Plan, Reply> {
    let d = route.dialect();
    match dialect::prepare(route, body) {
        Ok(Prepared::Completion {
            body,
            model,
            stream,
            translator,
        }) => Ok(Plan {
            url: "/v1/chat/completions".into(),
            body,
            kind: Kind::Completion,
            streaming: stream,
            model,
            completion: true,
            translator,
        }),
        Ok(Prepared::Models(translator)) => Ok(Plan {
            url: "/v1/models".into(),
            body: Vec::new(),
            kind: Kind::Other,
            streaming: false,
            model: None,
            completion: false,
            translator,
        }),
        Ok(Prepared::Local(v)) => Err(reply::json(200, &v)),
        Err(e) if matches!(route, Route::Unknown(_)) => Err(shaped(
            d,
            ApiError::NotFound.reply(&format!("{e}: generateContent, streamGenerateContent, countTokens and the model list are served")),
        )),
        Err(e) => Err(shaped(d, ApiError::BadRequest.reply(&e.to_string()))),
    }
}

/// The headers a child gets for a dialect request: the client's, minus
/// what described its body (we send a new one, and read the answer raw).
pub(super) fn child_headers(mut headers: Vec<(String, Vec<u8>)>) -> Vec<(String, Vec<u8>)> {
    headers.retain(|(k, _)| {
        !k.eq_ignore_ascii_case("content-type") && !k.eq_ignore_ascii_case("accept-encoding")
    });
    headers.push(("Content-Type".into(), b"application/json".to_vec()));
    headers
}

/// Refuse a request before its body is read, in its dialect's shape.
pub(super) fn refuse(dialect: Dialect, rq: Request, rid: &str, err: ApiError, msg: &str) {
    match dialect {
        Dialect::OpenAi => super::body::refuse(rq, rid, err, msg),
        d => super::body::refuse_with(
            rq,
            rid,
            err.status(),
            &dialect::error_body(d, err.status(), msg),
            err.retry_after(),
        ),
    }
}

/// What to tell a client whose key was refused, in its dialect's words.
pub(super) fn key_hint(dialect: Dialect) -> &'static str {
    match dialect {
        Dialect::OpenAi => "Invalid API key: send Authorization: Bearer <key> or X-API-Key: <key>",
        Dialect::Anthropic => {
            "Invalid API key: send x-api-key: <key> or Authorization: Bearer <key>"
        }
        Dialect::Gemini => "Invalid API key: send x-goog-api-key: <key> or ?key=<key>",
    }
}

/// A reply of ours in `dialect`'s error shape (unchanged for OpenAI, and
/// for a 2xx).
pub(super) fn shaped(dialect: Dialect, r: Reply) -> Reply {
    let status = r.status_code().0;
    if dialect == Dialect::OpenAi || status < 400 {
        return r;
    }
    let headers: Vec<tiny_http::Header> = r
        .headers()
        .iter()
        .filter(|h| !h.field.equiv("Content-Type") && !h.field.equiv("Content-Length"))
        .cloned()
        .collect();
    let body = r.into_reader().into_inner();
    let msg = dialect::error_message(&body);
    let mut out = reply::json(status, &dialect::error_body(dialect, status, &msg));
    for h in headers {
        out.add_header(h);
    }
    out
}

/// A child's error body in `dialect`'s shape.
pub(super) fn shaped_body(dialect: Dialect, status: u16, body: &[u8]) -> Vec<u8> {
    let msg = dialect::error_message(body);
    dialect::error_body(dialect, status, &msg)
        .to_string()
        .into_bytes()
}

/// What the relay of a translated answer needs of its exchange.
pub(super) struct Edge {
    pub dialect: Dialect,
    /// The client's connection closes after the answer.
    pub close: bool,
    pub http10: bool,
    pub head_only: bool,
    /// The child's end-to-end headers, with our request id.
    pub headers: Vec<(String, Vec<u8>)>,
    /// Cuts the client's connection (when the child broke off).
    pub cut: fn(Option<std::os::fd::RawFd>),
}

/// Relay the child's answer translated: an error in the dialect's shape,
/// a JSON answer whole, a stream event by event.
/// `held`: the answer's first bytes, read (and inspected) already while
/// its head was held; `reader` has the rest.
pub(super) fn relay(
    x: Edge,
    rq: Request,
    status: u16,
    held: &[u8],
    reader: &mut dyn Read,
    inspector: &mut Inspector,
    translator: &RefCell<Translator>,
) -> Result<u64, RelayError> {
    let mut t = translator.borrow_mut();
    let mut headers: Vec<(String, Vec<u8>)> = x
        .headers
        .into_iter()
        .filter(|(k, _)| k != "content-type" && k != "content-encoding" && k != "cache-control")
        .collect();
    let client = rq.socket_fd();
    let mut w = rq.into_writer();
    let close = x.close;
    if status != 200 || !t.streams() {
        let mut raw = held.to_vec();
        let mut rest = Vec::new();
        reader
            .take(MAX_WHOLE.saturating_sub(raw.len() as u64))
            .read_to_end(&mut rest)
            .map_err(RelayError::Upstream)?;
        inspector.feed(&rest);
        raw.extend_from_slice(&rest);
        let (status, body) = whole(x.dialect, &t, status, &raw);
        headers.push(("Content-Type".into(), b"application/json".to_vec()));
        let framing = if x.head_only {
            Framing::NoBody
        } else {
            Framing::Length(body.len() as u64)
        };
        w.write_all(&relay::head_bytes(status, &headers, framing, close))
            .map_err(RelayError::Client)?;
        if !x.head_only {
            w.write_all(&body).map_err(RelayError::Client)?;
        }
        w.flush().map_err(RelayError::Client)?;
        return Ok(raw.len() as u64);
    }
    headers.push(("Content-Type".into(), t.content_type().as_bytes().to_vec()));
    headers.push(("Cache-Control".into(), b"no-cache".to_vec()));
    let framing = if x.http10 {
        Framing::UntilClose
    } else {
        Framing::Chunked
    };
    w.write_all(&relay::head_bytes(200, &headers, framing, close))
        .map_err(RelayError::Client)?;
    let mut out = Events {
        inner: &mut w,
        translator: &mut t,
        chunked: framing == Framing::Chunked,
        buf: Vec::new(),
    };
    let opened = out.open();
    // What the hold read goes through the translator first, as it came.
    let opened = opened.and_then(|()| out.write_all(held).map_err(RelayError::Client));
    let result = opened.and_then(|()| {
        relay::copy_body(reader, &mut out, Framing::UntilClose, &mut |piece| {
            inspector.feed(piece)
        })
        .map(|n| n + held.len() as u64)
    });
    let result = result.and_then(|n| out.finish().map(|()| n));
    if let Err(RelayError::Upstream(_)) = &result {
        (x.cut)(client);
    }
    drop(w);
    result
}

/// A whole answer's status and translated body.
fn whole(dialect: Dialect, t: &Translator, status: u16, raw: &[u8]) -> (u16, Vec<u8>) {
    if status != 200 {
        return (status, shaped_body(dialect, status, raw));
    }
    match t.whole(raw) {
        // A model lookup that found nothing says so in an error body.
        Some(body) if is_error(&body) => (404, body),
        Some(body) => (200, body),
        None => (
            502,
            dialect::error_body(dialect, 502, "the child's answer was not a chat completion")
                .to_string()
                .into_bytes(),
        ),
    }
}

fn is_error(body: &[u8]) -> bool {
    serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|v| v.get("error").map(|e| e.is_object()))
        .unwrap_or(false)
}

/// The client side of a translated stream: the relay writes the child's
/// bytes here; the translator's events go out as one flushed chunk per
/// write.
struct Events<'a> {
    inner: &'a mut Box<dyn Write + Send>,
    translator: &'a mut Translator,
    chunked: bool,
    buf: Vec<u8>,
}

impl Events<'_> {
    fn open(&mut self) -> Result<(), RelayError> {
        let mut out = std::mem::take(&mut self.buf);
        self.translator.open(&mut out);
        self.send(out).map_err(RelayError::Client)
    }

    fn finish(&mut self) -> Result<(), RelayError> {
        let mut out = std::mem::take(&mut self.buf);
        self.translator.finish(&mut out);
        self.send(out).map_err(RelayError::Client)?;
        if self.chunked {
            self.inner
                .write_all(b"0\r\n\r\n")
                .map_err(RelayError::Client)?;
        }
        self.inner.flush().map_err(RelayError::Client)
    }

    /// Write `out` (whole events) as one chunk, in one write, and flush.
    fn send(&mut self, mut out: Vec<u8>) -> io::Result<()> {
        if !out.is_empty() {
            if self.chunked {
                let mut frame = format!("{:x}\r\n", out.len()).into_bytes();
                frame.reserve(out.len() + 2);
                frame.extend_from_slice(&out);
                frame.extend_from_slice(b"\r\n");
                self.inner.write_all(&frame)?;
            } else {
                self.inner.write_all(&out)?;
            }
            self.inner.flush()?;
        }
        out.clear();
        self.buf = out;
        Ok(())
    }
}

impl Write for Events<'_> {
    fn write(&mut self, piece: &[u8]) -> io::Result<usize> {
        let mut out = std::mem::take(&mut self.buf);
        self.translator.push(piece, &mut out);
        self.send(out)?;
        Ok(piece.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        // Each write already flushed its events.
        Ok(())
    }
}
