//! Reading a client's request body under `MAX_BODY_BYTES`, and refusing a
//! body without reading it.
//!
//! The body is kept whole in memory because a failed attempt is replayed to
//! the next child byte for byte. A declared length over the limit is refused
//! before a byte is read; a chunked body is refused as soon as it passes it.
//! A refused body is not read on: [`refuse`] marks it so (tiny_http's
//! `refuse_body`) and answers with `Connection: close`; tiny_http then ends
//! the connection with a bounded lingering close on the connection's own
//! thread, so a client still sending its body reads the answer instead of a
//! reset, and the worker is free at once.

use std::io::{Read, Write};

use super::relay::{self, Framing};
use crate::reply::ApiError;

use tiny_http::Request;

#[derive(Debug)]
pub enum BodyError {
    TooLarge { limit: u64 },
    Io(std::io::Error),
}

pub fn read_limited(rq: &mut Request, limit: u64) -> Result<Vec<u8>, BodyError> {
    if let Some(n) = rq.body_length() {
        if n as u64 > limit {
            return Err(BodyError::TooLarge { limit });
        }
    }
    let mut body = Vec::with_capacity(rq.body_length().unwrap_or(0).min(1 << 20));
    let mut reader = rq.as_reader().take(limit + 1);
    reader.read_to_end(&mut body).map_err(BodyError::Io)?;
    if body.len() as u64 > limit {
        return Err(BodyError::TooLarge { limit });
    }
    Ok(body)
}

/// Whether the request still has body bytes we have not read.
pub fn has_unread_body(rq: &Request) -> bool {
    rq.body_length().map(|n| n > 0).unwrap_or_else(|| {
        rq.headers()
            .iter()
            .any(|h| h.field.equiv("Transfer-Encoding"))
    })
}

/// Answer `rq` with `err` before (or instead of) reading the rest of its
/// body; a request without a body left unread is answered as usual and its
/// connection kept.
pub fn refuse(rq: Request, rid: &str, err: ApiError, msg: &str) {
    refuse_with(rq, rid, err.status(), &err.body(msg), err.retry_after());
}

/// [`refuse`] with this status and JSON body (another dialect's error).
pub fn refuse_with(
    mut rq: Request,
    rid: &str,
    status: u16,
    body: &serde_json::Value,
    retry_after: Option<&str>,
) {
    if !has_unread_body(&rq) {
        let mut r =
            crate::reply::json(status, body).with_header(crate::reply::header("X-Request-Id", rid));
        if let Some(after) = retry_after {
            r = r.with_header(crate::reply::header("Retry-After", after));
        }
        let _ = rq.respond(r);
        return;
    }
    rq.refuse_body();
    let body = body.to_string().into_bytes();
    let mut headers = vec![
        ("Content-Type".to_string(), b"application/json".to_vec()),
        ("X-Request-Id".to_string(), rid.as_bytes().to_vec()),
    ];
    if let Some(after) = retry_after {
        headers.push(("Retry-After".to_string(), after.as_bytes().to_vec()));
    }
    // Written by hand, as the relay writes heads: the raw writer carries no
    // `Connection` header of tiny_http's, and this connection is not reused.
    let mut w = rq.into_writer();
    let framing = Framing::Length(body.len() as u64);
    if relay::write_head(&mut w, status, &headers, framing, true).is_ok() {
        let _ = w.write_all(&body).and_then(|_| w.flush());
    }
}
