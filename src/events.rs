//! The fleet's recent history: the last [`CAPACITY`] things that happened
//! (a child started, became ready, exited and why, a rotation, a cooldown
//! set or ended, a profile needing a login, a reload, a write-back, a lease
//! gained or lost, an operator's command), each with a sequence number, a
//! time, and the slot and profile it concerns.
//!
//! One process-wide recorder (`record`), like the metrics, so the hooks
//! where things happen are one line each; a ring buffer behind one mutex
//! held for a push or a copy only. Readers ask for what came after a
//! sequence number (`ctl events -f` and the status page poll so). Every
//! event is also handed to the one subscriber, if any (the notifier, see
//! [`subscribe`]), which never blocks. Texts are ours or a child's exit reason, never a key or a
//! profile's content.

use std::collections::VecDeque;
use std::sync::{Mutex, OnceLock};

use serde::Serialize;

/// Events kept.
pub const CAPACITY: usize = 500;
/// Longest event text kept.
const MAX_TEXT: usize = 300;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    ChildStart,
    ChildReady,
    /// Stopped on purpose (operator, rotation, exhaustion, shutdown, lease).
    ChildExit,
    /// Exited by itself, never became ready, or evicted for failing.
    ChildCrash,
    Rotation,
    CooldownSet,
    CooldownEnded,
    NeedsLogin,
    Reload,
    Writeback,
    /// A keep-alive turn began or ended (`PROFILE_KEEPALIVE_S`).
    KeepAlive,
    LeaseGained,
    LeaseLost,
    Operator,
    /// No child was ready for a while (the console's own observation).
    NoReady,
    /// An API key came near or to one of its daily limits.
    KeyBudget,
    /// An account used its daily budget for a model (`MODEL_BUDGETS_FILE`).
    BudgetSpent,
    /// The fleet's budget for a model came under the alert threshold, or
    /// is gone until the reset.
    ModelBudget,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Event {
    pub seq: u64,
    pub at_unix_ms: u64,
    pub kind: Kind,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub slot: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub profile: Option<String>,
    pub text: String,
}

/// The ring: pure, no clock of its own.
#[derive(Debug)]
pub struct Ring {
    events: VecDeque<Event>,
    next: u64,
    capacity: usize,
}

impl Ring {
    pub fn new(capacity: usize) -> Ring {
        Ring {
            events: VecDeque::with_capacity(capacity),
            next: 1,
            capacity: capacity.max(1),
        }
    }

    pub fn push(
        &mut self,
        kind: Kind,
        slot: Option<usize>,
        profile: Option<&str>,
        text: &str,
        at_unix_ms: u64,
    ) -> Event {
        let mut text: String = text.chars().take(MAX_TEXT).collect();
        text.retain(|c| !c.is_control());
        let e = Event {
            seq: self.next,
            at_unix_ms,
            kind,
            slot,
            profile: profile.map(str::to_string),
            text,
        };
        self.next += 1;
        if self.events.len() == self.capacity {
            self.events.pop_front();
        }
        self.events.push_back(e.clone());
        e
    }

    /// Events after `after` (oldest first, at most `limit`: the newest
    /// ones when more came), and the last sequence number given out.
    pub fn since(&self, after: u64, limit: usize) -> (Vec<Event>, u64) {
        let newer: Vec<&Event> = self.events.iter().filter(|e| e.seq > after).collect();
        let skip = newer.len().saturating_sub(limit);
        (
            newer.into_iter().skip(skip).cloned().collect(),
            self.next - 1,
        )
    }
}

fn ring() -> &'static Mutex<Ring> {
    static R: OnceLock<Mutex<Ring>> = OnceLock::new();
    R.get_or_init(|| Mutex::new(Ring::new(CAPACITY)))
}

/// Record that `kind` happened to `slot` / `profile`.
pub fn record(kind: Kind, slot: Option<usize>, profile: Option<&str>, text: impl AsRef<str>) {
    let e = ring().lock().unwrap_or_else(|p| p.into_inner()).push(
        kind,
        slot,
        profile,
        text.as_ref(),
        crate::civil::now_ms(),
    );
    if let Some(hear) = LISTENER.get() {
        hear(&e);
    }
}

type Listener = Box<dyn Fn(&Event) + Send + Sync>;

/// The one subscriber; called after the ring's lock is released.
static LISTENER: OnceLock<Listener> = OnceLock::new();

/// Hear of every event from now on; `hear` must never block. One
/// subscriber per process: a second call (tests) keeps the first.
pub fn subscribe(hear: impl Fn(&Event) + Send + Sync + 'static) {
    let _ = LISTENER.set(Box::new(hear));
}

/// A child of `slot` running `profile` stopped for `reason`.
pub fn child_ended(slot: usize, profile: &str, reason: &crate::slot::StopReason) {
    let kind = match reason.label() {
        "exited" | "ready_timeout" | "evicted" => Kind::ChildCrash,
        _ => Kind::ChildExit,
    };
    record(kind, Some(slot), Some(profile), reason.to_string());
}

/// Events after `after`, at most `limit`, and the last sequence number.
pub fn since(after: u64, limit: usize) -> (Vec<Event>, u64) {
    ring()
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .since(after, limit)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ring_keeps_the_newest_with_rising_sequence_numbers() {
        let mut r = Ring::new(3);
        for i in 0..5 {
            r.push(Kind::Rotation, Some(i), Some("p"), "x", 1000 + i as u64);
        }
        let (all, last) = r.since(0, 100);
        assert_eq!(last, 5);
        assert_eq!(all.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![3, 4, 5]);
        assert_eq!(r.since(4, 100).0.len(), 1);
        assert!(r.since(5, 100).0.is_empty());
        assert_eq!(r.since(0, 1).0[0].seq, 5, "the newest when limited");
    }

    #[test]
    fn texts_are_bounded_and_single_line() {
        let mut r = Ring::new(2);
        let e = r.push(
            Kind::ChildCrash,
            None,
            None,
            &format!("a\nb{}", "y".repeat(999)),
            0,
        );
        assert!(!e.text.contains('\n'));
        assert!(e.text.chars().count() <= MAX_TEXT);
        let v = serde_json::to_value(&e).unwrap();
        assert_eq!(v["kind"], "child_crash");
        assert!(v.get("slot").is_none());
    }
}
