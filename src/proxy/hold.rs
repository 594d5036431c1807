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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::conns::Conns;

    /// A reader that hands out its pieces one read at a time, then an
    /// error if `fail`, else the end.
    struct Pieces(Vec<&'static str>, bool);
    impl Read for Pieces {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            if self.0.is_empty() {
                return if self.1 {
                    Err(io::Error::new(io::ErrorKind::ConnectionReset, "reset"))
                } else {
                    Ok(0)
                };
            }
            let p = self.0.remove(0).as_bytes();
            buf[..p.len()].copy_from_slice(p);
            Ok(p.len())
        }
    }

    const ROLE: &str = "data: {\"choices\":[{\"delta\":{\"role\":\"assistant\"}}]}\n\n";
    const EMPTY_STOP: &str =
        "data: {\"choices\":[{\"delta\":{\"content\":\"\"},\"finish_reason\":\"stop\"}]}\n\n";
    const AFTER_DONE: &str =
        "data: [DONE]\n\n: processing auth rotation...\n\ndata: {\"error\": \"Auth rotation failed.\"}\n\n";
    const HELLO: &str = "data: {\"choices\":[{\"delta\":{\"content\":\"hello\"}}]}\n\n";

    fn held(pieces: Vec<&'static str>, fail: bool) -> (HoldEnd, usize) {
        let conn = Conns::new(ureq::config::Config::default()).take(1, 1);
        let mut src = Pieces(pieces, fail);
        let mut inspector = Inspector::new(Some("text/event-stream"), true);
        let far = Instant::now() + Duration::from_secs(60);
        let end = hold_answer(&mut src, &mut inspector, &conn, Duration::from_secs(5), far);
        (end, src.0.len())
    }

    #[test]
    fn a_stream_is_held_until_its_content_and_an_empty_one_to_its_end() {
        let (end, left) = held(vec![ROLE, HELLO, EMPTY_STOP, "data: [DONE]\n\n"], false);
        match end {
            HoldEnd::Begun(bytes) => assert_eq!(bytes, format!("{ROLE}{HELLO}").into_bytes()),
            other => panic!("{other:?}"),
        }
        assert_eq!(left, 2, "the rest is relayed as it comes, not held");
        // The current child's streamed quota: all of it, judged exhausted.
        let (end, _) = held(vec![ROLE, EMPTY_STOP, AFTER_DONE], false);
        match end {
            HoldEnd::Empty { verdict, body } => {
                assert!(matches!(verdict, Verdict::Exhausted { status: 200, .. }));
                assert_eq!(body, format!("{ROLE}{EMPTY_STOP}{AFTER_DONE}").into_bytes());
            }
            other => panic!("{other:?}"),
        }
        // Broken off before any content: the child's fault, nothing sent.
        let (end, _) = held(vec![ROLE], true);
        assert!(matches!(end, HoldEnd::Failed(Fault::Broken(_))), "{end:?}");
    }

    #[test]
    fn the_hold_ends_with_the_heads_deadline() {
        let conn = Conns::new(ureq::config::Config::default()).take(1, 1);
        let mut inspector = Inspector::new(Some("text/event-stream"), true);
        let past = Instant::now() - Duration::from_millis(1);
        let mut src = Pieces(vec![ROLE], false);
        let end = hold_answer(
            &mut src,
            &mut inspector,
            &conn,
            Duration::from_secs(5),
            past,
        );
        assert!(matches!(end, HoldEnd::Failed(Fault::NoHead)), "{end:?}");
    }
}
