//! Every login gets its turn. A Google login left unused goes stale, and a
//! profile waiting in the rotation queue has no browser to refresh it: with
//! `PROFILE_KEEPALIVE_S`, a profile idle that long (since its last run, or
//! since the book first saw it) is given a slot for a short turn. The slot
//! drains, its profile waits at the front of the queue, the idle profile
//! starts; once its child has been ready for [`SETTLE`] it is drained and
//! stopped like any other (launcher first, so it saves its refreshed
//! cookies, and the stop's write-back sends them to the source), and the
//! slot rotates back to the profile it displaced. One turn at a time per
//! fleet, never while requests wait, never for a profile that is cooling,
//! disabled or `needs_login` (nor, with leases, one we do not hold). A turn
//! whose child shows an expired login makes the profile `needs_login` there
//! and then, like any start.
//!
//! With `PROFILE_MAX_RUNTIME_S`, a profile that has held its slot that long
//! is drained and rotated out while another that may run waits its turn.
//!
//! This module owns what a turn is ([`Turn`]), what a look did ([`Look`])
//! and how both are logged; `decide` decides. The supervisor thread looks
//! when the next profile falls due, about every second while a due turn is
//! held back or runs, at most every [`decide::LOOK_MAX`], and holds the
//! turn in its state (placement must see it). Nothing here touches a
//! child, a channel or the supervisor's state.

pub mod decide;

use std::time::{Duration, Instant};

use log::{info, warn};

/// How long a keep-alive turn's child stays after it is ready, so its own
/// start (page load, cookie refresh) is done before it is stopped.
pub const SETTLE: Duration = Duration::from_secs(2);

pub use crate::config::KeepaliveSettings as Settings;

/// The fleet's one keep-alive turn, held by the supervisor.
#[derive(Debug, Clone, PartialEq)]
pub struct Turn {
    pub profile: String,
    pub slot: usize,
    /// When the slot was asked to make way.
    pub asked: Instant,
    /// Who held the slot when it was asked (for the log).
    pub holder: Option<String>,
    /// How long the profile had been idle.
    pub idle: Option<Duration>,
    /// When its profile took the slot (None: still making way).
    pub began: Option<Instant>,
    /// The profile it displaced, waiting at the front of the queue.
    pub displaced: Option<String>,
    /// Its child became ready.
    pub ready: bool,
}

impl Turn {
    pub fn new(
        profile: String,
        slot: usize,
        holder: Option<String>,
        idle: Option<Duration>,
        asked: Instant,
    ) -> Turn {
        Turn {
            profile,
            slot,
            asked,
            holder,
            idle,
            began: None,
            displaced: None,
            ready: false,
        }
    }

    /// Its profile holds the slot.
    pub fn running(&self) -> bool {
        self.began.is_some()
    }

    /// Its profile took the slot at `at`, displacing `displaced`.
    pub fn begin(&mut self, displaced: Option<String>, at: Instant) {
        self.began = Some(at);
        self.displaced = displaced;
    }

    /// The stop reason of the child making way.
    pub fn making_way(&self) -> String {
        format!("making way for a keep-alive turn for {}", self.profile)
    }
}

/// What one look did, for the thread to log.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Look {
    /// When to look again.
    pub next: Duration,
    /// A turn asked for (its slot drains).
    pub started: Option<Turn>,
    /// A due turn held back, and why.
    pub held: Option<(String, decide::Hold)>,
    /// A turn dropped: its slot never made way.
    pub abandoned: Option<Turn>,
    /// A slot rotated out for `PROFILE_MAX_RUNTIME_S`, and why.
    pub overstayed: Option<(usize, String)>,
}

/// An idle time as operators read it: seconds under an hour, else hours.
fn idle(d: Option<Duration>) -> String {
    match d {
        Some(d) if d.as_secs() < 3600 => format!("{} s", d.as_secs()),
        Some(d) => format!("{:.1} h", d.as_secs_f64() / 3600.0),
        None => "-".into(),
    }
}

/// A turn's profile took its slot (`name` starts now).
pub fn note_begin(t: &Turn, name: &str) {
    info!(
        "slot {}: keep-alive turn for {name} begins (idle {}): starting it; {} waits at the front of the queue",
        t.slot,
        idle(t.idle),
        t.displaced.as_deref().unwrap_or("nobody"),
    );
    crate::events::record(
        crate::events::Kind::KeepAlive,
        Some(t.slot),
        Some(name),
        "keep-alive turn begins",
    );
}

/// A turn ended (its profile left the slot, after its stop and write-back),
/// or was dropped before it began.
pub fn note_end(t: Option<Turn>) {
    let Some(t) = t else { return };
    if !t.running() {
        info!(
            "slot {}: keep-alive turn for {} dropped: the slot moved on before it made way; asked again at the next look",
            t.slot, t.profile
        );
        return;
    }
    let took = t.began.map(|b| b.elapsed()).unwrap_or_default();
    let how = if t.ready {
        "its child was ready, then stopped and its login saved"
    } else {
        "its child never became ready"
    };
    info!(
        "slot {}: keep-alive turn for {} ended after {:.1} s: {how}",
        t.slot,
        t.profile,
        took.as_secs_f64()
    );
    crate::events::record(
        crate::events::Kind::KeepAlive,
        Some(t.slot),
        Some(&t.profile),
        format!("keep-alive turn ended after {:.1} s", took.as_secs_f64()),
    );
}

pub fn log_look(look: &Look, held: &mut Option<(String, decide::Hold)>) {
    if let Some(t) = &look.abandoned {
        warn!(
            "slot {}: keep-alive turn for {} dropped: the slot did not make way within the bound; it is tried again",
            t.slot, t.profile
        );
    }
    if let Some(t) = &look.started {
        info!(
            "slot {}: keep-alive turn for {} (idle {}): draining {} to make way",
            t.slot,
            t.profile,
            idle(t.idle),
            t.holder.as_deref().unwrap_or("the slot")
        );
    }
    if look.held != *held {
        if let Some((profile, why)) = &look.held {
            info!("keep-alive turn for {profile} is due but waits: {why}");
        }
        held.clone_from(&look.held);
    }
    if let Some((slot, why)) = &look.overstayed {
        info!("slot {slot}: {why}");
    }
}
