//! How other threads reach the supervisor: [`Handle`] sends it typed
//! messages (a tell never blocks; an ask waits, bounded, for the reply) and
//! reads the snapshot it publishes. Cloned into every thread that needs it.
//!
//! Runs on the caller's thread. It must never touch the supervisor's state:
//! the only lock here guards the pointer to the latest snapshot, held for
//! the time of an `Arc` clone.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use crossbeam_channel::Sender;
use log::warn;

use super::msg::{Msg, Reply};
use super::outcome;
use super::snapshot::{Snapshot, View};
use crate::dispatch::{ChildId, Dispatch};
use crate::proxy::verdict::Verdict;

/// The longest an ask waits for the supervisor's reply (it only ever waits
/// for a save of the book).
const ASK_BOUND: Duration = Duration::from_secs(10);

/// A message and where its reply goes, when it asks.
pub struct Envelope {
    pub msg: Msg,
    pub reply: Option<Sender<Reply>>,
}

/// The latest snapshot, replaced whole by the supervisor.
pub type Published = Arc<Mutex<Arc<Snapshot>>>;

#[derive(Clone)]
pub struct Handle {
    tx: Sender<Envelope>,
    published: Published,
    dispatch: Arc<Dispatch>,
    size: usize,
}

impl Handle {
    pub fn new(
        tx: Sender<Envelope>,
        published: Published,
        dispatch: Arc<Dispatch>,
        size: usize,
    ) -> Handle {
        Handle {
            tx,
            published,
            dispatch,
            size,
        }
    }

    /// The dispatcher of the fleet's children (its own state, its own lock).
    pub fn dispatch(&self) -> &Arc<Dispatch> {
        &self.dispatch
    }

    /// How many slots.
    pub fn size(&self) -> usize {
        self.size
    }

    /// The state as of the supervisor's last change.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.published
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The read models now: the last snapshot and the dispatcher's counts.
    pub fn view(&self) -> View {
        self.snapshot().view(&self.dispatch)
    }

    /// Send `msg` without waiting (the channel is unbounded).
    pub fn tell(&self, msg: Msg) {
        let _ = self.tx.send(Envelope { msg, reply: None });
    }

    /// Send `msg` and wait for its reply; None when the supervisor is gone
    /// or did not answer within the bound.
    pub fn ask(&self, msg: Msg) -> Option<Reply> {
        let (tx, rx) = crossbeam_channel::bounded(1);
        self.tx
            .send(Envelope {
                msg,
                reply: Some(tx),
            })
            .ok()?;
        match rx.recv_timeout(ASK_BOUND) {
            Ok(r) => Some(r),
            Err(crossbeam_channel::RecvTimeoutError::Timeout) => {
                warn!("the supervisor did not answer within {ASK_BOUND:?}");
                None
            }
            Err(_) => None,
        }
    }

    /// The proxy evicts `child`: its route closes at once, before its
    /// watcher acts.
    pub fn evict(&self, slot: usize, generation: u64, reason: String) {
        self.dispatch.close(ChildId { slot, generation });
        self.tell(Msg::Evict {
            slot,
            generation,
            reason,
        });
    }

    /// The verdict on `child`'s answer, when it must reach the book at once
    /// (`outcome::at_once`: its slot must be draining before the request's
    /// retry asks for a child); the others go through the outcome channel.
    /// Waits for the supervisor, bounded.
    pub fn report_now(&self, child: ChildId, verdict: &Verdict, model: Option<&str>) {
        // Every answer passes here: the others cost one comparison.
        if !outcome::at_once(verdict) {
            return;
        }
        if let Some(o) = outcome::of_verdict(child, verdict, model) {
            self.ask(Msg::Outcome(o));
        }
    }

    /// A turn the child of `generation` on `slot` had begun was abandoned
    /// (its client left, or it was cancelled): no new request goes to it
    /// from the moment this returns; it is drained and started again.
    pub fn restart_abandoned(&self, slot: usize, generation: u64) {
        self.ask(Msg::Abandoned { slot, generation });
    }
}
