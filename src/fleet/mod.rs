//! Many coordinators over one bucket: a lease per profile in
//! `<prefix>/leases/<profile>.json`, taken and renewed with S3 conditional
//! writes, so no account is ever driven by two replicas at once.
//!
//! `lease` is pure (what a lease says, whether we may take it, whom a
//! profile prefers); `leaser` is the one thread that talks to S3. The
//! supervisor decides nothing about leases: it only runs profiles we hold, tells the
//! leaser when one leaves its slot ([`Release`]) and hears of grants and
//! losses from it.

pub mod lease;
pub mod leaser;

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use serde::Serialize;

/// From the supervisor to the leaser: `profile` left its slot (its child is
/// gone); give its lease back, recording its cooldown for other replicas.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Release {
    pub profile: String,
    /// The book's cooldown of the profile: (until, unix ms; reason).
    pub cooling: Option<(u64, String)>,
}

/// What the leaser has done, for `/ready`, `ctl status` and the metrics.
/// Written only by the leaser thread; read by probes (atomics, and a short
/// lock on the held set).
#[derive(Default)]
pub struct Stats {
    pub replica: String,
    held: Mutex<BTreeSet<String>>,
    /// Free leases created.
    pub taken: AtomicU64,
    /// Stale (expired or released) leases replaced.
    pub taken_over: AtomicU64,
    pub renewed: AtomicU64,
    /// Renewals refused (someone else holds it) or given up (S3 unreachable).
    pub lost: AtomicU64,
    pub released: AtomicU64,
    /// Every conditional write sent (takes, renewals, releases).
    pub writes: AtomicU64,
}

/// A copy of [`Stats`].
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct StatsView {
    pub replica: String,
    pub held: Vec<String>,
    pub taken: u64,
    pub taken_over: u64,
    pub renewed: u64,
    pub lost: u64,
    pub released: u64,
    pub writes: u64,
}

impl Stats {
    pub fn new(replica: &str) -> Stats {
        Stats {
            replica: replica.to_string(),
            ..Default::default()
        }
    }

    fn set_held(&self, held: impl Iterator<Item = String>) {
        *self.held.lock().unwrap_or_else(|p| p.into_inner()) = held.collect();
    }

    pub fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub fn view(&self) -> StatsView {
        let n = |c: &AtomicU64| c.load(Ordering::Relaxed);
        StatsView {
            replica: self.replica.clone(),
            held: self
                .held
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .iter()
                .cloned()
                .collect(),
            taken: n(&self.taken),
            taken_over: n(&self.taken_over),
            renewed: n(&self.renewed),
            lost: n(&self.lost),
            released: n(&self.released),
            writes: n(&self.writes),
        }
    }
}
