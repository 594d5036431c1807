//! The single service lane: one completion at a time, the rest wait in
//! arrival order, as the real child does against its one browser page.
//!
//! Owns the queue and the cancellation marks. Used by the per-completion
//! threads (waiting, pausing) and by HTTP workers (cancel, status). The lock
//! is held only to read or change the queue; every wait is a `Condvar` wait,
//! which releases it, and every change wakes all waiters, so cancellation is
//! seen at once. No wait needs a shutdown wake-up: the process ends by
//! `exit`, never by joining these threads.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

#[derive(Default)]
struct State {
    next_ticket: u64,
    /// Tickets not yet served, in arrival order.
    waiting: VecDeque<u64>,
    serving: Option<u64>,
    cancelled: HashSet<u64>,
    /// `X-Request-Id` of queued or running completions.
    req_ids: HashMap<String, u64>,
}

#[derive(Default)]
pub struct Lane {
    state: Mutex<State>,
    changed: Condvar,
}

/// A place in the lane. Dropping it leaves the lane (and frees the lane for
/// the next one if it was being served), also on early return or panic.
pub struct Ticket {
    lane: Arc<Lane>,
    id: u64,
}

impl Lane {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding this lock cannot leave State half-changed in
        // a way that matters to a test double; keep serving.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Joins the back of the line.
    pub fn enqueue(self: &Arc<Self>, req_id: Option<&str>) -> Ticket {
        let mut s = self.lock();
        let id = s.next_ticket;
        s.next_ticket += 1;
        s.waiting.push_back(id);
        if let Some(r) = req_id {
            s.req_ids.insert(r.to_string(), id);
        }
        Ticket {
            lane: Arc::clone(self),
            id,
        }
    }

    /// Marks the completion with this request id cancelled. False when no
    /// queued or running completion carries it.
    pub fn cancel(&self, req_id: &str) -> bool {
        let mut s = self.lock();
        let Some(&id) = s.req_ids.get(req_id) else {
            return false;
        };
        s.cancelled.insert(id);
        drop(s);
        self.changed.notify_all();
        true
    }

    /// (completions waiting, one is being served)
    pub fn status(&self) -> (usize, bool) {
        let s = self.lock();
        (s.waiting.len(), s.serving.is_some())
    }
}

impl Ticket {
    /// Waits until this ticket is served. False when it was cancelled while
    /// waiting (it is then never served).
    pub fn wait_turn(&self) -> bool {
        let mut s = self.lane.lock();
        loop {
            if s.cancelled.contains(&self.id) {
                return false;
            }
            if s.serving.is_none() && s.waiting.front() == Some(&self.id) {
                s.waiting.pop_front();
                s.serving = Some(self.id);
                return true;
            }
            s = self.lane.changed.wait(s).unwrap_or_else(|e| e.into_inner());
        }
    }

    /// Waits `d`, or less if cancelled. False when cancelled.
    pub fn pause(&self, d: Duration) -> bool {
        let deadline = Instant::now() + d;
        let mut s = self.lane.lock();
        loop {
            if s.cancelled.contains(&self.id) {
                return false;
            }
            let now = Instant::now();
            if now >= deadline {
                return true;
            }
            s = self
                .lane
                .changed
                .wait_timeout(s, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    pub fn is_cancelled(&self) -> bool {
        self.lane.lock().cancelled.contains(&self.id)
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let mut s = self.lane.lock();
        s.waiting.retain(|&t| t != self.id);
        if s.serving == Some(self.id) {
            s.serving = None;
        }
        s.cancelled.remove(&self.id);
        s.req_ids.retain(|_, t| *t != self.id);
        drop(s);
        self.lane.changed.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::thread;

    #[test]
    fn serves_in_order_one_at_a_time() {
        let lane = Arc::new(Lane::default());
        let a = lane.enqueue(Some("a"));
        let b = lane.enqueue(None);
        assert_eq!(lane.status(), (2, false));
        assert!(a.wait_turn());
        assert_eq!(lane.status(), (1, true));
        let (tx, rx) = crossbeam_channel::bounded(1);
        let h = thread::spawn(move || {
            assert!(b.wait_turn());
            tx.send(()).unwrap();
        });
        assert!(rx.recv_timeout(Duration::from_millis(50)).is_err());
        drop(a);
        rx.recv_timeout(Duration::from_secs(2)).unwrap();
        h.join().unwrap();
        assert_eq!(lane.status(), (0, false));
    }

    #[test]
    fn cancel_waiting_and_running() {
        let lane = Arc::new(Lane::default());
        let a = lane.enqueue(Some("a"));
        let b = lane.enqueue(Some("b"));
        assert!(a.wait_turn());
        assert!(lane.cancel("b"));
        assert!(!b.wait_turn());
        drop(b);
        assert!(!lane.cancel("b"), "gone once dropped");
        let l2 = Arc::clone(&lane);
        let h = thread::spawn(move || {
            thread::sleep(Duration::from_millis(20));
            l2.cancel("a")
        });
        let t0 = Instant::now();
        assert!(!a.pause(Duration::from_secs(5)));
        assert!(t0.elapsed() < Duration::from_secs(2));
        assert!(h.join().unwrap());
        assert!(a.is_cancelled());
        assert!(!lane.cancel("zzz"));
    }
}
