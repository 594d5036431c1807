//! Holding a streamed completion's head until the answer has begun.
//!
//! The real child sends its head as soon as it starts on a request, and an
//! account out of quota then gives a stream with nothing in it: an empty
//! chunk with `finish_reason: stop`, `[DONE]`, then (after `[DONE]`) an
//! error event, its log saying why. Relayed at once, the client would have
//! its 200 and no answer, with no way back. So the forwarder reads such a
//! stream here first, head and events kept, until the first event that
//! carries content, a tool call or reasoning text (the answer has begun:
//! relay it all from the start), or the stream's end (it was empty: the
//! forwarder serves the request elsewhere and keeps this one to pass on if
//! no account has better). Nothing reaches the client meanwhile.
//!
//! Bounds: the hold ends with the same deadline as a head (the first byte
//! is due within `REQUEST_TIMEOUT_S` of the request), every read waits at
//! most `STREAM_IDLE_TIMEOUT_S`, and no more than `MAX_HELD` bytes are kept
//! (past that the answer is taken as begun). Runs on the request's worker
//! thread; a taking back (quota line in the log, cancel, client gone) shuts
//! the child connection, which ends the read at once.

use std::io::{self, Read};
use std::time::{Duration, Instant};

use super::conns::Conn;
use super::inspect::Inspector;
use super::verdict::{Fault, Verdict};

/// Most bytes held before the answer counts as begun anyway.
const MAX_HELD: usize = 1 << 20;

/// How a hold ended.
#[derive(Debug)]
pub enum Held {
    /// The answer has begun: these bytes came first, relay them.
    Begun(Vec<u8>),
    /// The stream ended before anything began: its whole body.
    Ended(Vec<u8>),
    /// Reading failed (`past_deadline`: at or after the deadline); nothing
    /// reached the client.
    Failed {
        error: io::Error,
        past_deadline: bool,
    },
}

/// Read `src` into memory, feeding `inspector`, until the answer begins,
/// ends, fails, or `deadline` passes; each read waits at most `idle`.
pub fn hold(
    src: &mut dyn Read,
    inspector: &mut Inspector,
    conn: &Conn,
    idle: Duration,
    deadline: Instant,
) -> Held {
    let mut held = Vec::new();
    let mut buf = vec![0u8; 16 * 1024];
    let result = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break Held::Failed {
                error: io::Error::new(io::ErrorKind::TimedOut, "no content before the deadline"),
                past_deadline: true,
            };
        }
        conn.set_idle(Some(idle.min(left)));
        match src.read(&mut buf) {
            Ok(0) => break Held::Ended(held),
            Ok(n) => {
                held.extend_from_slice(&buf[..n]);
                inspector.feed(&buf[..n]);
                if inspector.begun() || held.len() >= MAX_HELD {
                    break Held::Begun(held);
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(error) => {
                break Held::Failed {
                    error,
                    past_deadline: Instant::now() >= deadline,
                }
            }
        }
    };
    conn.set_idle(Some(idle));
    result
}

/// How a held answer turned out, for the forwarder.
#[derive(Debug)]
pub enum HoldEnd {
    /// It has begun: relay these bytes first, then the rest.
    Begun(Vec<u8>),
    /// It ended with nothing in it: its verdict, and its whole body to pass
    /// on if no other account has more.
    Empty { verdict: Verdict, body: Vec<u8> },
    /// The child failed it before it began.
    Failed(Fault),
}

/// Hold a 200 event stream (see [`hold`]) and judge how it turned out: an
/// answer that ended without beginning is judged by `inspector` (which is
/// spent then), a failed read is the child's fault (no content before the
/// deadline counts as no head).
pub fn hold_answer(
    src: &mut dyn Read,
    inspector: &mut Inspector,
    conn: &Conn,
    idle: Duration,
    deadline: Instant,
) -> HoldEnd {
    match hold(src, inspector, conn, idle, deadline) {
        Held::Begun(bytes) => HoldEnd::Begun(bytes),
        Held::Ended(body) => {
            let reading = std::mem::replace(inspector, Inspector::new(None, false)).finish();
            match Verdict::of_answer(200, reading.empty) {
                // Not judged empty after all: relay it as it is.
                Verdict::Ok => HoldEnd::Begun(body),
                verdict => HoldEnd::Empty { verdict, body },
            }
        }
        Held::Failed {
            error,
            past_deadline,
        } => HoldEnd::Failed(match (past_deadline, is_timeout(&error)) {
            (true, _) => Fault::NoHead,
            (false, true) => Fault::Silent,
            (false, false) => Fault::Broken(error.to_string()),
        }),
    }
}

/// Whether a read from a child failed by timing out.
pub fn is_timeout(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::TimedOut
        || e.get_ref()
            .and_then(|inner| inner.downcast_ref::<ureq::Error>())
            .is_some_and(|u| matches!(u, ureq::Error::Timeout(_)))
}
