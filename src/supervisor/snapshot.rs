//! What the supervisor publishes for everyone else to read: an
//! `Arc<Snapshot>`, a copy of its whole state taken after each change, and
//! the read models built from it at read time ([`View`]: slots, queue,
//! profiles with their states and health) together with what the
//! dispatcher counts at that moment (requests in flight and waiting).
//!
//! Read by any thread (probes, metrics, the page, `ctl`, the leaser);
//! states stay enums up to the edge where they are printed. It must not
//! change anything: the supervisor's state has one owner.

use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use serde::Serialize;

use super::core::{self, ProfileState};
use crate::book;
use crate::config::Ports;
use crate::dispatch::Dispatch;
use crate::fleet::{Stats, StatsView};
use crate::slot::Phase;

/// The supervisor's state as it was after one change.
#[derive(Clone)]
pub struct Snapshot {
    pub state: core::State,
    /// The leaser's figures, with leasing on.
    pub leases: Option<Arc<Stats>>,
}

/// A point-in-time copy of one slot, for /ready and tests.
#[derive(Debug, Clone, Serialize)]
pub struct SlotSnapshot {
    pub slot: usize,
    pub ports: Ports,
    pub profile: Option<String>,
    pub state: Phase,
    /// Why the slot is backing off or stopping, when it is.
    pub reason: Option<String>,
    /// Unix ms when a slot backing off or in cooldown starts again.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub until_unix_ms: Option<u64>,
    pub pid: Option<i32>,
    /// Unix time in milliseconds when the slot entered its state.
    pub since_unix_ms: u64,
    pub restarts: u32,
    /// Requests the dispatcher has on this slot's child now.
    pub in_flight: usize,
    /// The running child's process tree's resident memory, in MiB, at its
    /// last measurement (every CHILD_RSS_SAMPLE_S).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rss_mb: Option<u64>,
    /// The same in bytes, for /metrics.
    #[serde(skip)]
    pub rss_bytes: Option<u64>,
}

/// What `/ready` and the admin status say about one profile.
#[derive(Debug, Clone, Serialize)]
pub struct ProfileSnapshot {
    pub state: ProfileState,
    /// The slot holding it, when one does.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub slot: Option<usize>,
    /// The models it cools for now (it serves the others).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub cools_for: Vec<String>,
    #[serde(flatten)]
    pub health: book::Status,
}

/// The fleet as probes, metrics, the page and `ctl` read it.
#[derive(Debug, Clone, Serialize)]
pub struct View {
    pub slots: Vec<SlotSnapshot>,
    /// The rotation queue: profiles waiting for a slot.
    pub queue: Vec<String>,
    pub shutting_down: bool,
    /// Requests waiting in the dispatcher's queue for a child.
    pub requests_waiting: usize,
    /// Every profile with its state and health.
    pub profiles: Vec<ProfileSnapshot>,
    /// With `PROFILE_LEASES=s3`: the leases held, taken, lost.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub leases: Option<StatsView>,
}

impl Snapshot {
    /// The read models now, with the dispatcher's counts of this moment.
    pub fn view(&self, dispatch: &Dispatch) -> View {
        let in_flight = dispatch.in_flight();
        let requests_waiting = dispatch.waiting();
        let (wall, mono) = (SystemTime::now(), Instant::now());
        let st = &self.state;
        View {
            slots: st
                .slots
                .iter()
                .enumerate()
                .map(|(i, s)| SlotSnapshot {
                    slot: i,
                    ports: s.ports,
                    profile: s.name().map(str::to_string),
                    state: s.state.phase(),
                    reason: s.state.reason().or_else(|| {
                        let t = st.turn.as_ref().filter(|t| t.slot == i)?;
                        t.running()
                            .then(|| format!("keep-alive turn for {}", t.profile))
                    }),
                    until_unix_ms: s
                        .state
                        .until()
                        .map(|t| book::unix_ms(wall + t.saturating_duration_since(mono))),
                    pid: s.state.pid(),
                    since_unix_ms: s
                        .since
                        .duration_since(UNIX_EPOCH)
                        .map(|d| d.as_millis() as u64)
                        .unwrap_or(0),
                    restarts: s.restarts,
                    in_flight: in_flight.get(i).copied().unwrap_or(0),
                    rss_mb: s.state.pid().and(s.rss).map(crate::recycle::mb),
                    rss_bytes: s.state.pid().and(s.rss),
                })
                .collect(),
            queue: st.queue.iter().map(|p| p.name.clone()).collect(),
            shutting_down: st.shutting_down,
            requests_waiting,
            profiles: self.profiles(wall),
            leases: self.leases.as_ref().map(|s| s.view()),
        }
    }

    /// Every profile with its state and health, in name order. `cooling`
    /// is the whole account's cooldown only: one that cools for some models
    /// is running or queued, and `cools_for` names those models and the
    /// budget lines it used up today (it can serve any other, and takes a
    /// slot when nothing better can).
    pub fn profiles(&self, now: SystemTime) -> Vec<ProfileSnapshot> {
        let st = &self.state;
        st.book
            .status(now)
            .into_iter()
            .map(|health| {
                let slot = st.slots.iter().position(|s| {
                    s.name() == Some(health.profile.as_str()) && s.state.pid().is_some()
                });
                let state = ProfileState::of(
                    health.disabled,
                    health.needs_login.is_some(),
                    slot.is_some(),
                    health.cooling_until_unix_ms.is_some(),
                );
                ProfileSnapshot {
                    state,
                    slot,
                    // A budget used up counts as cooling until its reset.
                    cools_for: health
                        .model_cooldowns
                        .iter()
                        .map(|m| m.model.clone())
                        .chain(
                            health
                                .budgets
                                .iter()
                                .filter(|l| l.budget.is_some_and(|b| l.used >= b))
                                .map(|l| l.model.clone()),
                        )
                        .collect(),
                    health,
                }
            })
            .collect()
    }

    /// Profiles whose slot has a child process now.
    pub fn running_profiles(&self) -> Vec<String> {
        self.state
            .slots
            .iter()
            .filter(|s| s.state.pid().is_some())
            .filter_map(|s| s.name().map(str::to_string))
            .collect()
    }

    /// The fleet's account budgets now, over the placed profiles it can
    /// spend (None without `MODEL_BUDGETS_FILE`); `accounts`: every placed
    /// account's lines too.
    pub fn budgets(&self, accounts: bool) -> Option<crate::budget::view::Fleet> {
        let now = SystemTime::now();
        let usable = self.state.budget_accounts(now);
        let all = accounts.then(|| self.state.all.iter().map(String::as_str).collect());
        crate::budget::view::fleet(self.state.book.budget(), usable, all, now)
    }

    /// The book's cooldown of `name`, as a lease records it.
    pub fn cooling_of(&self, name: &str) -> Option<(u64, String)> {
        core::cooling_of(&self.state.book, name, SystemTime::now())
    }
}
