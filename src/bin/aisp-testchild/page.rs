//! The AI Studio page as a turn whose client left leaves it (knob
//! `abandoned_stall_ms`), as the real child does: when its client goes
//! away after the prompt was sent, the child skips its cleanup and the page
//! goes on generating; the next turn's Run click (the enabled Stop button
//! then) stops the old turn instead of sending its own prompt, which stays
//! unsent, and that request waits for the child's own timeout.
//!
//! One mark, the end of the abandoned turn, behind a global lock held only
//! to read or set it; set and taken by completion threads.

use std::sync::Mutex;
use std::time::Instant;

/// Until when the page generates for a client that left.
static LEFT: Mutex<Option<Instant>> = Mutex::new(None);

/// A turn whose client left would have generated until `until`.
pub fn left_generating(until: Instant) {
    let mut left = LEFT.lock().unwrap_or_else(|e| e.into_inner());
    *left = Some(left.map_or(until, |t| t.max(until)));
}

/// Whether the page still generates for a client that left, as a new turn
/// begins; that turn stops it, so the mark is cleared either way.
pub fn take_busy() -> bool {
    let mut left = LEFT.lock().unwrap_or_else(|e| e.into_inner());
    left.take().is_some_and(|t| Instant::now() < t)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn the_next_turn_finds_the_page_busy_once() {
        assert!(!take_busy());
        left_generating(Instant::now() + Duration::from_secs(60));
        assert!(take_busy());
        assert!(!take_busy(), "its Run click stopped the old turn");
        left_generating(Instant::now() - Duration::from_millis(1));
        assert!(!take_busy(), "the old turn had ended");
    }
}
