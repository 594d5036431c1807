//! Writing a child's answer to the client ourselves: the status line and
//! headers, then the body with our own framing, flushed as it arrives.
//!
//! tiny_http buffers a `Response` of unknown length (about 8 KiB) before
//! sending anything, which would hold SSE events back; so the proxy takes the
//! raw connection writer (`Request::into_writer`) and frames the body itself:
//! `Content-Length` when the child gave one, else chunked (one chunk per read
//! from the child, flushed at once), or close-delimited for HTTP/1.0 clients.
//! Each piece is shown to an observer (the answer inspection) only after it
//! was written and flushed, so looking never delays an event.

use std::io::{self, Read, Write};

use super::HOP_BY_HOP;

/// How the body is delimited on the client connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    Length(u64),
    Chunked,
    /// HTTP/1.0: the body ends when the connection closes.
    UntilClose,
    /// HEAD, 204, 304: no body at all.
    NoBody,
}

/// Which side failed while relaying.
#[derive(Debug)]
pub enum RelayError {
    Upstream(io::Error),
    Client(io::Error),
}

pub fn write_head(
    w: &mut dyn Write,
    status: u16,
    headers: &[(String, Vec<u8>)],
    framing: Framing,
    close: bool,
) -> io::Result<()> {
    w.write_all(&head_bytes(status, headers, framing, close))?;
    w.flush()
}

/// The status line and headers, with the framing headers for `framing`.
pub fn head_bytes(
    status: u16,
    headers: &[(String, Vec<u8>)],
    framing: Framing,
    close: bool,
) -> Vec<u8> {
    let reason = ureq::http::StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("Unknown");
    let mut head = Vec::with_capacity(512);
    head.extend_from_slice(format!("HTTP/1.1 {status} {reason}\r\n").as_bytes());
    for (name, value) in headers {
        head.extend_from_slice(name.as_bytes());
        head.extend_from_slice(b": ");
        head.extend_from_slice(value);
        head.extend_from_slice(b"\r\n");
    }
    match framing {
        Framing::Length(n) => head.extend_from_slice(format!("Content-Length: {n}\r\n").as_bytes()),
        Framing::Chunked => head.extend_from_slice(b"Transfer-Encoding: chunked\r\n"),
        Framing::UntilClose | Framing::NoBody => {}
    }
    if close || framing == Framing::UntilClose {
        head.extend_from_slice(b"Connection: close\r\n");
    }
    head.extend_from_slice(b"\r\n");
    head
}

/// Write one piece of a body with `framing` (a chunk of its own when
/// chunked), flushed unless its length is known; `frame` is scratch space.
pub fn write_piece(
    w: &mut dyn Write,
    framing: Framing,
    piece: &[u8],
    frame: &mut Vec<u8>,
) -> io::Result<()> {
    match framing {
        Framing::NoBody => Ok(()),
        _ if piece.is_empty() => Ok(()),
        Framing::Chunked => {
            frame.clear();
            frame.extend_from_slice(format!("{:x}\r\n", piece.len()).as_bytes());
            frame.extend_from_slice(piece);
            frame.extend_from_slice(b"\r\n");
            w.write_all(frame)?;
            w.flush()
        }
        Framing::UntilClose => {
            w.write_all(piece)?;
            w.flush()
        }
        Framing::Length(_) => w.write_all(piece),
    }
}

/// A child's answer head, as the relay and a kept answer need it.
pub struct AnswerHead {
    /// Its `Content-Length`, if any.
    pub length: Option<u64>,
    /// End-to-end headers with our request id `rid`, for the client.
    pub headers: Vec<(String, Vec<u8>)>,
    /// End-to-end headers as the child gave them, for a kept answer.
    pub kept: Vec<(String, Vec<u8>)>,
}

/// The parts of `resp`'s head the relay needs, for the request the client
/// knows as `rid`: hop-by-hop headers (and those `Connection` names) are
/// the child's connection's own, its `X-Request-Id` is replaced by ours.
pub fn answer_head(resp: &ureq::http::Response<ureq::Body>, rid: &str) -> AnswerHead {
    let named: Vec<String> = resp
        .headers()
        .get_all("connection")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(',').map(|t| t.trim().to_ascii_lowercase()))
        .collect();
    let end_to_end = || {
        resp.headers()
            .iter()
            .filter(|(k, _)| !HOP_BY_HOP.contains(&k.as_str()))
            .map(|(k, v)| (k.as_str().to_string(), v.as_bytes().to_vec()))
    };
    let mut headers: Vec<(String, Vec<u8>)> = end_to_end()
        .filter(|(k, _)| !named.iter().any(|n| n == k) && k != "x-request-id")
        .collect();
    headers.push(("X-Request-Id".to_string(), rid.as_bytes().to_vec()));
    AnswerHead {
        length: resp
            .headers()
            .get("content-length")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok()),
        headers,
        kept: end_to_end().collect(),
    }
}

/// Shut the client's connection both ways (the child broke off: the
/// client must see the break instead of waiting for the rest).
pub fn cut_client(fd: Option<std::os::fd::RawFd>) {
    if let Some(fd) = fd {
        // SAFETY: the caller holds the request's writer, which keeps `fd`
        // open; shutdown(2) does not close it.
        unsafe {
            libc::shutdown(fd, libc::SHUT_RDWR);
        }
    }
}

thread_local! {
    /// One copy buffer per worker thread, reused by every response it relays.
    static BUF: std::cell::RefCell<Vec<u8>> = std::cell::RefCell::new(vec![0u8; 32 * 1024]);
}

/// Copy the body from `src` to the client with `framing`. Chunked bodies are
/// flushed after every read, so each event reaches the client as the child
/// wrote it; memory stays one buffer whatever the size. `observe` sees each
/// piece once it has gone out.
pub fn copy_body(
    src: &mut dyn Read,
    w: &mut dyn Write,
    framing: Framing,
    observe: &mut dyn FnMut(&[u8]),
) -> Result<u64, RelayError> {
    if framing == Framing::NoBody {
        return Ok(0);
    }
    BUF.with(|b| copy_with(src, w, framing, &mut b.borrow_mut(), observe))
}

fn copy_with(
    src: &mut dyn Read,
    w: &mut dyn Write,
    framing: Framing,
    buf: &mut [u8],
    observe: &mut dyn FnMut(&[u8]),
) -> Result<u64, RelayError> {
    let mut frame = Vec::new();
    let mut total = 0u64;
    loop {
        let n = match src.read(buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(RelayError::Upstream(e)),
        };
        total += n as u64;
        write_piece(w, framing, &buf[..n], &mut frame).map_err(RelayError::Client)?;
        observe(&buf[..n]);
    }
    if let Framing::Length(expected) = framing {
        if total != expected {
            return Err(RelayError::Upstream(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("child sent {total} of {expected} body bytes"),
            )));
        }
    }
    if framing == Framing::Chunked {
        w.write_all(b"0\r\n\r\n").map_err(RelayError::Client)?;
    }
    w.flush().map_err(RelayError::Client)?;
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A reader that hands out its pieces one read at a time, like a socket.
    struct Pieces(Vec<&'static [u8]>);
    impl Read for Pieces {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            if self.0.is_empty() {
                return Ok(0);
            }
            let p = self.0.remove(0);
            buf[..p.len()].copy_from_slice(p);
            Ok(p.len())
        }
    }

    #[test]
    fn chunked_framing_is_one_chunk_per_read() {
        let mut out = Vec::new();
        let mut src = Pieces(vec![b"data: 1\n\n", b"data: [DONE]\n\n"]);
        copy_body(&mut src, &mut out, Framing::Chunked, &mut |_| {}).unwrap();
        assert_eq!(
            out,
            b"9\r\ndata: 1\n\n\r\ne\r\ndata: [DONE]\n\n\r\n0\r\n\r\n"
        );
    }

    #[test]
    fn length_framing_copies_verbatim_and_notices_short_bodies() {
        let mut out = Vec::new();
        let mut seen = Vec::new();
        copy_body(
            &mut Pieces(vec![b"ab", b"c"]),
            &mut out,
            Framing::Length(3),
            &mut |p| seen.push(p.to_vec()),
        )
        .unwrap();
        assert_eq!(seen, vec![b"ab".to_vec(), b"c".to_vec()]);
        assert_eq!(out, b"abc");
        let err = copy_body(
            &mut Pieces(vec![b"ab"]),
            &mut Vec::new(),
            Framing::Length(3),
            &mut |_| {},
        );
        assert!(matches!(err, Err(RelayError::Upstream(_))));
    }

    #[test]
    fn head_carries_framing_and_close() {
        let mut out = Vec::new();
        let h = vec![("Content-Type".to_string(), b"text/event-stream".to_vec())];
        write_head(&mut out, 200, &h, Framing::Chunked, false).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
        );
        let mut out = Vec::new();
        write_head(&mut out, 404, &[], Framing::Length(0), true).unwrap();
        assert!(String::from_utf8(out)
            .unwrap()
            .contains("404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n"));
    }
}
