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

/// Most bytes held before the answer counts as begun anyway.
const MAX_HELD: usize = 1 << 20;

/// How a hold ended.
#[derive(Debug)]
pub enum Held {
    /// The answer has begun: these bytes came first, relay them.
    Begun(Vec<u8>),
    /// The stream ended before anything began: its whole body.
    Ended(Vec<u8>),
    /// Reading failed (`timed_out`: silent past the idle limit or the
    /// deadline); nothing reached the client.
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
