//! The single service lane: one completion at a time, the rest wait in
//! arrival order, as the real child does against its one browser page.
//!
//! Owns the queue, each entry's own request id and the cancellation marks.
//! Used by the per-completion threads (waiting for their turn) and by HTTP
//! workers (`/v1/cancel/{req_id}`, `/v1/queue`, stats). The lock is held only
//! to read or change the queue; every wait is a `Condvar` wait with a timeout
//! of at most [`CHECK_EVERY`], which releases it, so a waiter also looks at
//! its client's connection that often (the real child checks every 0.3 s).
//! Every change wakes all waiters, so cancellation is seen at once. No wait
//! needs a shutdown wake-up: the process ends by `exit`, never by joining.

use serde_json::{json, Value};
use std::collections::{HashSet, VecDeque};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// How often a waiting completion checks whether its client went away.
pub const CHECK_EVERY: Duration = Duration::from_millis(300);

/// One queued completion, as `/v1/queue` shows it.
struct Entry {
    ticket: u64,
    req_id: String,
    stream: bool,
    enqueued_unix_ms: u64,
}

#[derive(Default)]
struct State {
    next_ticket: u64,
    /// Completions not yet served, in arrival order.
    waiting: VecDeque<Entry>,
    /// The ticket and request id being served.
    serving: Option<(u64, String)>,
    /// Waiting tickets cancelled by `/v1/cancel/{req_id}`.
    cancelled: HashSet<u64>,
    /// The most completions ever waiting at once.
    max_waiting: usize,
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

/// How a wait for the turn ended.
#[derive(Debug, PartialEq)]
pub enum Turn {
    /// This completion is now the one being served.
    Served,
    /// Cancelled by `/v1/cancel/{req_id}` while waiting.
    Cancelled,
    /// The client's connection closed while waiting.
    ClientGone,
}

impl Lane {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding this lock cannot leave State half-changed in
        // a way that matters to a test double; keep serving.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Joins the back of the line under the child's own `req_id`.
    pub fn enqueue(self: &Arc<Self>, req_id: &str, stream: bool, unix_ms: u64) -> Ticket {
        let mut s = self.lock();
        let id = s.next_ticket;
        s.next_ticket += 1;
        s.waiting.push_back(Entry {
            ticket: id,
            req_id: req_id.to_string(),
            stream,
            enqueued_unix_ms: unix_ms,
        });
        s.max_waiting = s.max_waiting.max(s.waiting.len());
        Ticket {
            lane: Arc::clone(self),
            id,
        }
    }

    /// Cancels the completion with this request id if it is still waiting.
    /// False when none waits under it (a running one cannot be cancelled,
    /// as with the real child).
    pub fn cancel(&self, req_id: &str) -> bool {
        let mut s = self.lock();
        let Some(ticket) = s
            .waiting
            .iter()
            .find(|e| e.req_id == req_id)
            .map(|e| e.ticket)
        else {
            return false;
        };
        if !s.cancelled.insert(ticket) {
            return false; // already cancelled; its waiter is leaving
        }
        drop(s);
        self.changed.notify_all();
        true
    }

    /// (completions waiting, one is being served)
    pub fn status(&self) -> (usize, bool) {
        let s = self.lock();
        (s.waiting.len(), s.serving.is_some())
    }

    /// The most completions ever waiting at once.
    pub fn max_waiting(&self) -> usize {
        self.lock().max_waiting
    }

    /// The `/v1/queue` answer: the real child's fields (`queue_length`,
    /// `is_processing_locked`, `items`) plus `processing` and
    /// `processing_req_id`.
    pub fn queue_json(&self, now_unix_ms: u64) -> Value {
        let s = self.lock();
        let items: Vec<Value> = s
            .waiting
            .iter()
            .map(|e| {
                json!({
                    "req_id": e.req_id,
                    "enqueue_time": e.enqueued_unix_ms as f64 / 1000.0,
                    "wait_time_seconds":
                        (now_unix_ms.saturating_sub(e.enqueued_unix_ms) / 10) as f64 / 100.0,
                    "is_streaming": e.stream,
                    "cancelled": s.cancelled.contains(&e.ticket),
                })
            })
            .collect();
        json!({
            "queue_length": s.waiting.len(),
            "is_processing_locked": s.serving.is_some(),
            "processing": s.serving.is_some(),
            "processing_req_id": s.serving.as_ref().map(|(_, r)| r.clone()),
            "items": items,
        })
    }
}

impl Ticket {
    /// Waits until this ticket is served, it is cancelled, or `client_gone`
    /// (asked every [`CHECK_EVERY`], never with the lock held) says the
    /// client left.
    pub fn wait_turn(&self, mut client_gone: impl FnMut() -> bool) -> Turn {
        let mut next_check = Instant::now() + CHECK_EVERY;
        loop {
            {
                let mut s = self.lane.lock();
                loop {
                    if s.cancelled.contains(&self.id) {
                        return Turn::Cancelled;
                    }
                    let first = s.waiting.front().map(|e| e.ticket) == Some(self.id);
                    if s.serving.is_none() && first {
                        if let Some(e) = s.waiting.pop_front() {
                            s.serving = Some((self.id, e.req_id));
                        }
                        return Turn::Served;
                    }
                    let now = Instant::now();
                    if now >= next_check {
                        break;
                    }
                    s = self
                        .lane
                        .changed
                        .wait_timeout(s, next_check - now)
                        .unwrap_or_else(|e| e.into_inner())
                        .0;
                }
            }
            if client_gone() {
                return Turn::ClientGone;
            }
            next_check = Instant::now() + CHECK_EVERY;
        }
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let mut s = self.lane.lock();
        s.waiting.retain(|e| e.ticket != self.id);
        if s.serving.as_ref().map(|(t, _)| *t) == Some(self.id) {
            s.serving = None;
        }
        s.cancelled.remove(&self.id);
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
        let a = lane.enqueue("aaaaaaa", false, 0);
        let b = lane.enqueue("bbbbbbb", true, 0);
        assert_eq!(lane.status(), (2, false));
        assert_eq!(lane.max_waiting(), 2);
        assert_eq!(a.wait_turn(|| false), Turn::Served);
        assert_eq!(lane.status(), (1, true));
        let q = lane.queue_json(1500);
        assert_eq!(q["processing_req_id"], "aaaaaaa");
        assert_eq!(q["items"][0]["req_id"], "bbbbbbb");
        assert_eq!(q["items"][0]["is_streaming"], true);
        assert_eq!(q["items"][0]["wait_time_seconds"], 1.5);
        let (tx, rx) = crossbeam_channel::bounded(1);
        let h = thread::spawn(move || {
            assert_eq!(b.wait_turn(|| false), Turn::Served);
            tx.send(()).unwrap();
        });
        assert!(rx.recv_timeout(Duration::from_millis(50)).is_err());
        drop(a);
        rx.recv_timeout(Duration::from_secs(2)).unwrap();
        h.join().unwrap();
        assert_eq!(lane.status(), (0, false));
    }

    #[test]
    fn only_waiting_ones_can_be_cancelled() {
        let lane = Arc::new(Lane::default());
        let a = lane.enqueue("aaaaaaa", false, 0);
        let b = lane.enqueue("bbbbbbb", false, 0);
        assert_eq!(a.wait_turn(|| false), Turn::Served);
        assert!(!lane.cancel("aaaaaaa"), "a running one is not cancellable");
        let l2 = Arc::clone(&lane);
        let h = thread::spawn(move || {
            thread::sleep(Duration::from_millis(20));
            l2.cancel("bbbbbbb")
        });
        let t0 = Instant::now();
        assert_eq!(b.wait_turn(|| false), Turn::Cancelled);
        assert!(t0.elapsed() < Duration::from_secs(1), "seen at once");
        assert!(h.join().unwrap());
        assert!(!lane.cancel("bbbbbbb"), "twice is not found");
        drop(b);
        assert!(!lane.cancel("bbbbbbb"), "gone once dropped");
        assert!(!lane.cancel("zzzzzzz"));
    }

    #[test]
    fn a_waiter_notices_its_client_leaving() {
        let lane = Arc::new(Lane::default());
        let a = lane.enqueue("aaaaaaa", false, 0);
        assert_eq!(a.wait_turn(|| false), Turn::Served);
        let b = lane.enqueue("bbbbbbb", false, 0);
        let mut asked = 0;
        let t0 = Instant::now();
        let turn = b.wait_turn(|| {
            asked += 1;
            asked == 2
        });
        assert_eq!(turn, Turn::ClientGone);
        let took = t0.elapsed();
        assert!(
            took >= CHECK_EVERY * 2 && took < Duration::from_secs(2),
            "{took:?}"
        );
        drop(b);
        assert_eq!(lane.status(), (0, true));
    }
}
