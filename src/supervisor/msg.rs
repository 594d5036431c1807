//! Every message that crosses into or out of the supervisor thread: what
//! the watchers, the proxy, the dispatcher, the keep-alive clock, the
//! leaser, reloads and the operator tell it ([`Msg`]), what it answers
//! ([`Reply`]), and what it tells a slot's watcher ([`Cmd`]). Plain data,
//! built on any thread and read on the receiving one: no channel, no clock,
//! no I/O may live here.

use std::time::Duration;

use serde::Serialize;

use crate::book;
use crate::hydrate::{LoginFacts, Profile};
use crate::slot::{Event, StopReason};

/// What the supervisor asks of a slot's watcher.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cmd {
    /// Stop the child of this generation and rotate to the next profile.
    Evict { generation: u64, reason: String },
    /// Take no new requests, let the in-flight ones finish (bounded), then
    /// stop the child for `reason` and go on with `then`. `generation`
    /// None: whatever child runs now.
    Drain {
        generation: Option<u64>,
        reason: StopReason,
        then: Then,
    },
    /// Which profiles may run changed: a slot waiting in cooldown looks again.
    Wake,
    /// The lease of the profile of the child of `generation` is lost:
    /// stop it at once, no drain (another replica may soon start it).
    LeaseLost { generation: u64, why: String },
}

/// What a slot does after a drain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Then {
    /// Start the same profile again.
    Restart,
    /// Start the next eligible profile of the queue.
    Rotate,
    /// Make way for the keep-alive turn the supervisor holds for this
    /// slot: the slot's profile waits at the front of the queue and the
    /// turn's profile starts.
    KeepAlive,
}

/// Which profile a watcher asks for, when it is free to start one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pick {
    /// Its own profile if it may run, else the next of the queue.
    Current,
    /// The next of the queue (its own goes to the back).
    Rotate,
    /// The keep-alive turn made way for (`Then::KeepAlive`).
    Turn,
}

/// What a watcher may start, in answer to [`Msg::Next`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Next {
    Run(Profile),
    /// No profile may run now: wait `until` the first cooldown ends (None:
    /// until a change); `leasing`: a lease may come too.
    Wait {
        until: Option<Duration>,
        leasing: bool,
    },
}

/// One fact about an answer of a child, whichever way it was learnt: the
/// proxy's verdict on a completion, or an account sign in the child's log.
/// The only way an answer reaches the profile book.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub slot: usize,
    pub generation: u64,
    /// The model the request named, when it did.
    pub model: Option<String>,
    pub answer: book::Answer,
}

/// What a reload changed in the placed profiles.
#[derive(Debug, Default, Clone, Serialize, PartialEq, Eq)]
pub struct ProfileChanges {
    pub added: Vec<String>,
    pub removed: Vec<String>,
    /// Slots draining a removed profile.
    pub draining: Vec<usize>,
}

/// An operator's change to a profile's health.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AdminOp {
    Disable(String),
    Enable(String),
    Reset(String),
    ResetModel(String, String),
}

/// Everything the supervisor hears. Those marked "asks" carry a reply.
#[derive(Debug, Clone, PartialEq)]
pub enum Msg {
    /// A watcher's slot moved (asks: [`Reply::Moved`]).
    Slot {
        slot: usize,
        ev: Event,
    },
    /// A watcher is free to start a profile (asks: [`Reply::Next`]).
    Next {
        slot: usize,
        pick: Pick,
    },
    /// A start of `profile` ended; it had become ready or not.
    Started {
        profile: String,
        became_ready: bool,
    },
    /// `profile`'s login expired (`why`; its content's fingerprint).
    LoginNeeded {
        profile: String,
        why: String,
        content: u64,
    },
    /// The measured memory of a child's tree.
    Rss {
        slot: usize,
        generation: u64,
        bytes: u64,
    },
    /// May `profile`'s child keep running (asks: [`Reply::Yes`])?
    LeaseOk {
        profile: String,
    },
    /// A watcher's or the proxy's command to a slot (asks: [`Reply::Yes`]:
    /// false when there is no such slot).
    Command {
        slot: usize,
        cmd: Cmd,
    },
    /// The proxy evicts a child (its route is already closed).
    Evict {
        slot: usize,
        generation: u64,
        reason: String,
    },
    /// An answer's meaning for its profile.
    Outcome(Outcome),
    /// A turn the child of `generation` on `slot` had begun was abandoned
    /// (its client left, or it was cancelled): its page may go on
    /// generating for nobody (asks: [`Reply::Yes`]).
    Abandoned {
        slot: usize,
        generation: u64,
    },
    /// Requests wait for a model only cooling routes could serve.
    Starved(String),
    /// The keep-alive clock: look for due turns and long runs (asks:
    /// [`Reply::Look`], when to look again).
    Tick,
    /// The leaser: how many leases and which profiles we want (asks:
    /// [`Reply::Wanted`]).
    LeaseDemand,
    LeaseGranted(Vec<String>),
    LeaseLost {
        profile: String,
        why: String,
    },
    /// A reload's hydrated set (asks: [`Reply::Changes`]).
    Profiles(Vec<Profile>),
    /// What the profiles' files say about their logins now.
    ContentSeen(Vec<LoginFacts>),
    /// An operator's change (asks: [`Reply::Admin`]).
    Admin(AdminOp),
    /// The budgets in force from now on (`MODEL_BUDGETS_FILE`, at start
    /// and at a reload).
    Budgets(std::sync::Arc<crate::budget::plan::Plan>),
    /// Today's served completions of `profile` as another replica counted
    /// them (its lease said so).
    Spent {
        profile: String,
        day: i64,
        counts: std::collections::BTreeMap<String, u64>,
    },
    /// `/ready` says 503 from now on.
    BeginShutdown,
    /// Save the book now (at shutdown; asks: [`Reply::Yes`]).
    Save,
}

/// What the supervisor answers a message that asks.
#[derive(Debug, Clone, PartialEq)]
pub enum Reply {
    /// The move was allowed; the slot's generation after it; for a
    /// keep-alive turn's child that became ready, how long it stays.
    Moved {
        ok: bool,
        generation: u64,
        settle: Option<Duration>,
    },
    Next(Next),
    Yes(bool),
    Look(Duration),
    Wanted {
        more: usize,
        candidates: Vec<String>,
    },
    Changes(ProfileChanges),
    Admin(AdminAnswer),
}

/// The answer to an [`AdminOp`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AdminAnswer {
    UnknownProfile,
    /// Done; the slot running the profile, when one does.
    Done {
        slot: Option<usize>,
    },
    /// A model reset of a profile that did not cool for it.
    NotCooling,
}
