//! What a refused admin caller costs and leaves behind: a wrong admin key
//! on `/admin/` (or a socket peer that may not use the socket) is logged,
//! at most one line per [`LOG_EVERY`] with the count since the last line,
//! and answered only after [`DELAY`], so guessing keys is slow and seen.
//!
//! The count is a process-wide atomic and the last line's time a small
//! mutex, never held across the sleep. Runs on the refusing thread (an
//! HTTP worker, or a socket connection's thread).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use log::warn;

/// How long a refused caller waits for its answer.
pub const DELAY: Duration = Duration::from_millis(500);
/// At most one log line about refusals this often.
pub const LOG_EVERY: Duration = Duration::from_secs(10);

static UNREPORTED: AtomicU64 = AtomicU64::new(0);
static LAST_LINE: Mutex<Option<Instant>> = Mutex::new(None);

/// Count one refusal (`what` says which, for the log), log if a line is
/// due, then wait [`DELAY`].
pub fn refused(what: &str) {
    UNREPORTED.fetch_add(1, Ordering::SeqCst);
    let due = {
        let mut last = LAST_LINE.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        let due = last.is_none_or(|t| now.duration_since(t) >= LOG_EVERY);
        if due {
            *last = Some(now);
        }
        due
    };
    if due {
        let n = UNREPORTED.swap(0, Ordering::SeqCst);
        warn!("admin access refused: {what} ({n} refusal(s) since the last report)");
    }
    std::thread::sleep(DELAY);
}
