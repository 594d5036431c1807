//! The pool: the one shared record of what every slot is doing and which
//! profiles wait in the rotation queue, behind one mutex held only for short,
//! I/O-free updates. Watchers write their slot's state here; the HTTP side
//! reads snapshots (health). Which child gets a request is not decided here
//! but by the dispatcher, which the pool tells of every slot move
//! ([`Pool::apply`]) and of every eviction ([`Pool::evict`]).
//!
//! Invariant: every hydrated profile is in exactly one place at every moment,
//! either held by a slot or waiting in the queue. `rotate` moves a slot's
//! profile to the back of the queue and takes the front in one step under
//! the lock, so no reader can observe a profile twice or not at all.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use crossbeam_channel::{Receiver, Sender};
use serde::Serialize;

use crate::book::{self, Book};
use crate::config::{PortPlan, Ports};
use crate::dispatch::{ChildId, Dispatch, Limits, SlotView};
use crate::fleet::{Release, StatsView};
use crate::hydrate::Profile;
use crate::keepalive;
use crate::placement;
use crate::slot::{Event, State, StopReason};

/// Requests to a slot's watcher from elsewhere (the proxy, the admin
/// interface, the profile book).
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
    /// Make way for the keep-alive turn the pool holds for this slot
    /// ([`Pool::begin_turn`]): the slot's profile waits at the front of the
    /// queue and the turn's profile starts.
    KeepAlive,
}

struct SlotInfo {
    ports: Ports,
    profile: Option<Profile>,
    state: State,
    since: SystemTime,
    /// Bumped at every spawn, so a late eviction cannot hit the successor.
    generation: u64,
    restarts: u32,
    /// Resident bytes of the running child's tree at its last measurement
    /// (see `recycle`); cleared at every spawn.
    rss: Option<u64>,
    /// When its profile was placed in it (`PROFILE_MAX_RUNTIME_S` counts
    /// from here, across restarts of the same profile).
    placed: SystemTime,
}

impl SlotInfo {
    /// What the dispatcher needs to know of this slot (`book`: which
    /// models its profile cools for).
    fn view(&self, book: &Book) -> SlotView {
        match &self.state {
            State::Ready { .. } => {
                let profile = self
                    .profile
                    .as_ref()
                    .map(|p| p.name.clone())
                    .unwrap_or_default();
                SlotView::Ready {
                    generation: self.generation,
                    port: self.ports.api,
                    cooling: cooling_instants(book, &profile),
                    profile,
                }
            }
            State::Draining { .. } => SlotView::Draining {
                generation: self.generation,
            },
            State::Waiting { until, .. }
            | State::Staggered { until }
            | State::Cooldown { until: Some(until) } => SlotView::BackingOff { until: *until },
            // Every profile disabled: no child can come until an operator acts.
            State::Cooldown { until: None } | State::Stopped => SlotView::Gone,
            State::Idle | State::Starting { .. } | State::Stopping { .. } => SlotView::Coming,
        }
    }
}

struct Inner {
    slots: Vec<SlotInfo>,
    queue: VecDeque<Profile>,
    shutting_down: bool,
    /// Per-profile health: which profiles may run (see `book`).
    book: Book,
    /// Every profile name placed (in a slot or the queue), sorted: the
    /// invariant's reference; changed by reloads.
    all: Vec<String>,
    /// Profiles a reload removed that still hold a slot until it rotates.
    removed: Vec<String>,
    /// With `PROFILE_LEASES=s3`: the profiles whose lease we hold; only
    /// those may run.
    leases: Option<Leases>,
    /// The fleet's one keep-alive turn, while it runs (see `keepalive`).
    turn: Option<keepalive::Turn>,
    /// A turn that ended under the lock, to be logged once it is released.
    ended: Option<keepalive::Turn>,
    /// The slot draining for `PROFILE_MAX_RUNTIME_S`, until it rotates:
    /// one at a time, so one waiting profile does not move two.
    overstay: Option<usize>,
}

/// The pool's side of the profile leases (see `fleet`).
struct Leases {
    held: std::collections::BTreeSet<String>,
    /// To the leaser: a held profile left its slot.
    releases: Sender<Release>,
}

impl Inner {
    /// May `name` start now to serve some model of `demand`: the book
    /// allows it and, when leasing, we hold its lease.
    fn may_run(&self, name: &str, demand: &[String], now: SystemTime) -> bool {
        self.book.eligible_for(name, demand, now)
            && self.leases.as_ref().is_none_or(|l| l.held.contains(name))
    }

    /// `name` left its slot: give its lease back (when we hold it).
    fn release(&mut self, name: &str) {
        let cooling = cooling_of(&self.book, name);
        if let Some(l) = &mut self.leases {
            if l.held.remove(name) {
                // Unbounded: never blocks under the lock.
                let _ = l.releases.send(Release {
                    profile: name.to_string(),
                    cooling,
                });
            }
        }
    }
}

/// The book's cooldown of `name` as a lease records it.
fn cooling_of(book: &Book, name: &str) -> Option<(u64, String)> {
    let st = book.status(SystemTime::now());
    let s = st.into_iter().find(|s| s.profile == name)?;
    Some((
        s.cooling_until_unix_ms?,
        s.reason.map(|r| r.to_string()).unwrap_or_default(),
    ))
}

pub struct Pool {
    inner: Mutex<Inner>,
    cmds: Vec<Sender<Cmd>>,
    dispatch: Arc<Dispatch>,
    /// Where the book is saved; locked only to write that file, which keeps
    /// two saves from interleaving.
    saver: Mutex<Option<PathBuf>>,
    /// The leaser's figures, shown in snapshots; set once with leasing.
    lease_stats: std::sync::OnceLock<Arc<crate::fleet::Stats>>,
}

/// A point-in-time copy of one slot, for /ready and tests.
#[derive(Debug, Clone, Serialize)]
pub struct SlotSnapshot {
    pub slot: usize,
    pub ports: Ports,
    pub profile: Option<String>,
    pub state: &'static str,
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

#[derive(Debug, Clone, Serialize)]
pub struct Snapshot {
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

impl Pool {
    /// The first `min(size, profiles)` profiles (in name order) get slots,
    /// the rest queue; the slots' dispatcher applies `limits`. Returns each
    /// slot watcher's command receiver.
    pub fn new(
        profiles: Vec<Profile>,
        size: usize,
        plan: PortPlan,
        limits: Limits,
    ) -> (Arc<Pool>, Vec<Receiver<Cmd>>) {
        let mut all: Vec<String> = profiles.iter().map(|p| p.name.clone()).collect();
        all.sort();
        let mut queue: VecDeque<Profile> = profiles.into();
        let n = size.min(queue.len());
        let mut slots = Vec::with_capacity(n);
        let mut cmds = Vec::with_capacity(n);
        let mut rxs = Vec::with_capacity(n);
        for i in 0..n {
            let (tx, rx) = crossbeam_channel::unbounded();
            cmds.push(tx);
            rxs.push(rx);
            slots.push(SlotInfo {
                ports: plan.slot(i),
                profile: queue.pop_front(),
                state: State::Idle,
                since: SystemTime::now(),
                generation: 0,
                restarts: 0,
                rss: None,
                placed: SystemTime::now(),
            });
        }
        let dispatch = Dispatch::new(n, limits);
        let pool = Pool {
            inner: Mutex::new(Inner {
                slots,
                queue,
                shutting_down: false,
                book: Book::new(
                    all.iter().map(String::as_str),
                    Default::default(),
                    book::Settings::default(),
                ),
                all,
                removed: Vec::new(),
                leases: None,
                turn: None,
                ended: None,
                overstay: None,
            }),
            cmds,
            dispatch,
            saver: Mutex::new(None),
            lease_stats: std::sync::OnceLock::new(),
        };
        (Arc::new(pool), rxs)
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // Updates under this lock are single assignments; a panic elsewhere
        // cannot leave them half done, so a poisoned lock is still coherent.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn size(&self) -> usize {
        self.cmds.len()
    }

    /// The dispatcher of this pool's children.
    pub fn dispatch(&self) -> &Arc<Dispatch> {
        &self.dispatch
    }

    pub fn ports(&self, slot: usize) -> Ports {
        self.lock().slots[slot].ports
    }

    #[cfg(test)]
    pub fn state(&self, slot: usize) -> State {
        self.lock().slots[slot].state.clone()
    }

    /// Move slot `slot` through `ev`; refused moves change nothing and
    /// return false. A spawn starts a new generation. The dispatcher hears
    /// of every move (after the lock is released): a ready child opens its
    /// route, any other state closes it. Only the slot's watcher applies
    /// events to it, so the dispatcher hears them in order.
    pub fn apply(&self, slot: usize, ev: &Event) -> bool {
        let ran;
        let view = {
            let mut inner = self.lock();
            let inner = &mut *inner;
            let s = &mut inner.slots[slot];
            match s.state.next(ev) {
                Some(next) => {
                    // Its login is fresh when its child is ready, and saved
                    // when a ready one stops: the keep-alive clock restarts.
                    ran = matches!(ev, Event::BecameReady)
                        || matches!(
                            (&s.state, ev),
                            (State::Ready { .. } | State::Draining { .. }, Event::Stop(_))
                        );
                    if let (true, Some(p)) = (ran, &s.profile) {
                        inner.book.ran(&p.name, SystemTime::now());
                    }
                    if let Some(t) = inner.turn.as_mut().filter(|t| t.slot == slot) {
                        t.ready |= matches!(ev, Event::BecameReady);
                    }
                    if matches!(ev, Event::Spawned { .. }) {
                        if s.generation > 0 {
                            s.restarts += 1;
                        }
                        s.generation += 1;
                        s.rss = None;
                    }
                    s.state = next;
                    s.since = SystemTime::now();
                }
                None => {
                    log::error!("slot {slot}: refused move {ev:?} from {}", s.state.name());
                    return false;
                }
            }
            inner.slots[slot].view(&inner.book)
        };
        self.dispatch.set_slot(slot, view);
        if ran {
            self.save_book();
        }
        true
    }

    pub fn generation(&self, slot: usize) -> u64 {
        self.lock().slots[slot].generation
    }

    /// Record the measured memory of the child of `generation` (a late
    /// measurement of an earlier child is dropped).
    pub fn set_rss(&self, slot: usize, generation: u64, bytes: u64) {
        let mut inner = self.lock();
        let s = &mut inner.slots[slot];
        if s.generation == generation {
            s.rss = Some(bytes);
        }
    }

    /// The slot's profile goes to the back of the queue and the first
    /// queued profile that may run becomes the slot's (possibly the same
    /// one); None, with every profile queued, when none may run now.
    pub fn rotate(&self, slot: usize) -> Option<Profile> {
        let want = self.wanted_models();
        let (next, ended) = {
            let mut inner = self.lock();
            let next = take_next(&mut inner, slot, SystemTime::now(), &want);
            (next, inner.ended.take())
        };
        keepalive::note_end(ended);
        next
    }

    /// The models in demand and those requests wait for (asked of the
    /// dispatcher before our lock: the two are never held together).
    fn wanted_models(&self) -> WantedModels {
        WantedModels {
            asked: self.dispatch.demand(),
            waited_for: self.dispatch.waiting_models(),
        }
    }

    /// `/ready` says 503 from now on; the dispatcher keeps serving until
    /// the caller shuts it (after the shutdown drain).
    pub fn begin_shutdown(&self) {
        self.lock().shutting_down = true;
    }

    /// Ask slot `slot` to evict the child of `generation` (ignored by the
    /// watcher if that child is already gone). The dispatcher stops sending
    /// it requests at once, before the watcher acts.
    pub fn evict(&self, slot: usize, generation: u64, reason: String) {
        self.dispatch.close(ChildId { slot, generation });
        if let Some(tx) = self.cmds.get(slot) {
            let _ = tx.send(Cmd::Evict { generation, reason });
        }
    }

    pub fn snapshot(&self) -> Snapshot {
        // Read apart from our lock: the two locks are never held together.
        let in_flight = self.dispatch.in_flight();
        let requests_waiting = self.dispatch.waiting();
        let inner = self.lock();
        Snapshot {
            slots: inner
                .slots
                .iter()
                .enumerate()
                .map(|(i, s)| SlotSnapshot {
                    slot: i,
                    ports: s.ports,
                    profile: s.profile.as_ref().map(|p| p.name.clone()),
                    state: s.state.name(),
                    reason: s.state.reason().or_else(|| {
                        let t = inner.turn.as_ref().filter(|t| t.slot == i)?;
                        t.running()
                            .then(|| format!("keep-alive turn for {}", t.profile))
                    }),
                    until_unix_ms: s.state.until().map(|t| {
                        let left = t.saturating_duration_since(std::time::Instant::now());
                        book::unix_ms(SystemTime::now() + left)
                    }),
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
            queue: inner.queue.iter().map(|p| p.name.clone()).collect(),
            shutting_down: inner.shutting_down,
            requests_waiting,
            profiles: profiles_of(&inner),
            leases: self.lease_stats.get().map(|s| s.view()),
        }
    }

    /// Every profile is held by exactly one slot or queued exactly once.
    pub fn check_invariant(&self) -> Result<(), String> {
        let all = self.lock().all.clone();
        check_placement(&self.snapshot(), &all)
    }
}

/// What a reload changed in the placed profiles.
#[derive(Debug, Default, Clone, Serialize, PartialEq, Eq)]
pub struct ProfileChanges {
    pub added: Vec<String>,
    pub removed: Vec<String>,
    /// Slots draining a removed profile.
    pub draining: Vec<usize>,
}

/// What `/ready` and the admin status say about one profile.
#[derive(Debug, Clone, Serialize)]
pub struct ProfileSnapshot {
    /// running, queued, cooling, needs_login or disabled.
    pub state: &'static str,
    /// The slot holding it, when one does.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub slot: Option<usize>,
    /// The models it cools for now (it serves the others).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub cools_for: Vec<String>,
    #[serde(flatten)]
    pub health: book::Status,
}

/// Profile health: the book, and the placement decisions that use it. The
/// book lives under the pool's one lock because rotation must see exactly
/// the eligibility it acts on.
impl Pool {
    /// Adopt the book read at start, and the file it is saved to.
    pub fn set_book(&self, book: Book, store: PathBuf) {
        self.lock().book = book;
        *self.saver.lock().unwrap_or_else(|p| p.into_inner()) = Some(store);
    }

    /// Save the book (serialised by `saver`, never under the pool's lock).
    pub fn save_book(&self) {
        let path = self.saver.lock().unwrap_or_else(|p| p.into_inner());
        let Some(path) = path.as_ref() else { return };
        let entries = self.lock().book.entries().clone();
        // Every change worth saving may change which models can be served.
        self.publish_blocked_models();
        if let Err(e) = book::store::save(path, &entries) {
            log::warn!("cannot save the profile state to {}: {e}", path.display());
        }
    }

    /// The profile slot `slot` should start now: its own if it may run,
    /// else the first of the queue that may (its own goes to the back).
    /// None when no profile may run now.
    pub fn current(&self, slot: usize) -> Option<Profile> {
        let want = self.wanted_models();
        let (next, ended) = {
            let mut inner = self.lock();
            let next = current_of(&mut inner, slot, SystemTime::now(), &want);
            (next, inner.ended.take())
        };
        keepalive::note_end(ended);
        next
    }

    /// How long until some profile this pool holds may run again (a
    /// cooldown ends); None when nothing is cooling (all disabled, or none).
    pub fn next_eligible_in(&self) -> Option<std::time::Duration> {
        let asked = self.dispatch.demand();
        let inner = self.lock();
        let now = SystemTime::now();
        let demand = inner.book.demand(&asked, now);
        let names = inner
            .slots
            .iter()
            .filter_map(|s| s.profile.as_ref())
            .chain(inner.queue.iter())
            .map(|p| p.name.as_str());
        inner
            .book
            .next_eligible_at(names, &demand, now)
            .map(|t| t.duration_since(now).unwrap_or_default())
    }

    /// One completion of the child of `generation` on `slot`, for `model`
    /// (when the request named one), answered so. An exhausted profile's
    /// slot is told to drain and rotate; one that cools for a model keeps
    /// serving the others unless it is of no use any more (see `placement`).
    pub fn report(&self, slot: usize, generation: u64, answer: book::Answer, model: Option<&str>) {
        let want = self.wanted_models();
        let (verdict, leaves, cooling) = {
            let mut inner = self.lock();
            let s = &inner.slots[slot];
            if s.generation != generation {
                return;
            }
            let Some(name) = s.profile.as_ref().map(|p| p.name.clone()) else {
                return;
            };
            let now = SystemTime::now();
            let v = inner.book.answer(&name, answer, model, now);
            let mut leaves = false;
            match &v {
                book::Verdict::Retire { reason, until } => {
                    let left = until.duration_since(now).unwrap_or_default();
                    log::warn!(
                        "slot {slot}: profile {name} is {reason}: draining it, then it cools down for {}s",
                        left.as_secs()
                    );
                    crate::events::record(
                        crate::events::Kind::CooldownSet,
                        Some(slot),
                        Some(&name),
                        format!("{reason}, {}s", left.as_secs()),
                    );
                    leaves = true;
                }
                book::Verdict::CoolModel { model, until } => {
                    let left = until.duration_since(now).unwrap_or_default();
                    let spare = inner.queue.iter().any(|p| {
                        inner.may_run(&p.name, &[], now)
                            && inner
                                .book
                                .models_cooling(&p.name, now)
                                .iter()
                                .all(|(m, _)| m != model)
                    });
                    let demand = inner.book.demand(&want.asked, now);
                    let spare_for_demand = inner
                        .queue
                        .iter()
                        .any(|p| inner.may_run(&p.name, &demand, now));
                    leaves = placement::leaves_slot(
                        inner.book.eligible_for(&name, &demand, now),
                        spare_for_demand,
                        want.waited_for.contains(model),
                        spare,
                    );
                    log::warn!(
                        "slot {slot}: profile {name} is out of quota for model {model}: it cools for it for {}s{}",
                        left.as_secs(),
                        if leaves {
                            "; it is rotated out (another profile serves the models in demand, or the waiting requests)"
                        } else {
                            " and keeps serving other models"
                        }
                    );
                    crate::events::record(
                        crate::events::Kind::CooldownSet,
                        Some(slot),
                        Some(&name),
                        format!("exhausted for model {model}, {}s", left.as_secs()),
                    );
                }
                book::Verdict::Keep => {}
            }
            (v, leaves, cooling_instants(&inner.book, &name))
        };
        if verdict == book::Verdict::Keep {
            return;
        }
        self.dispatch
            .set_cooling(ChildId { slot, generation }, cooling);
        if leaves {
            self.rotate_out(slot, generation);
        }
        self.save_book();
    }

    /// Drain the child of `generation` on `slot` (no new requests from now
    /// on: the dispatcher counts the slot as draining, a child will come,
    /// before its watcher even hears of it), then rotate.
    fn rotate_out(&self, slot: usize, generation: u64) {
        self.drain_now(slot, generation, StopReason::Exhausted, Then::Rotate);
    }

    /// A turn the child of `generation` on `slot` had begun was abandoned
    /// (its client left, or it was cancelled): its page may go on
    /// generating for nobody, and the real child's next turn would stop that
    /// one instead of sending its own prompt. No new request goes to it from
    /// now on; it is drained and started again.
    pub fn restart_abandoned(&self, slot: usize, generation: u64) {
        let why = "a turn it had begun was abandoned; its page may still be generating";
        self.drain_now(
            slot,
            generation,
            StopReason::Recycled(why.into()),
            Then::Restart,
        );
    }

    /// Close the slot to new requests at once (before its watcher even
    /// hears of it), then have it drain and go on with `then`.
    fn drain_now(&self, slot: usize, generation: u64, reason: StopReason, then: Then) {
        self.dispatch
            .set_slot(slot, SlotView::Draining { generation });
        if let Some(tx) = self.cmds.get(slot) {
            let _ = tx.send(Cmd::Drain {
                generation: Some(generation),
                reason,
                then,
            });
        }
    }

    /// Requests wait for `model`, which only cooling routes could serve: when
    /// a queued profile that may run serves it, rotate out one ready slot
    /// whose profile cools for it.
    pub fn model_starved(&self, model: &str) {
        let want = self.wanted_models();
        let target = {
            let inner = self.lock();
            let now = SystemTime::now();
            let demand = inner.book.demand(&want.asked, now);
            let serves = |name: &str| {
                inner
                    .book
                    .models_cooling(name, now)
                    .iter()
                    .all(|(m, _)| m != model)
            };
            let spare = inner
                .queue
                .iter()
                .find(|p| inner.may_run(&p.name, &demand, now) && serves(&p.name))
                .map(|p| p.name.clone());
            let Some(spare) = spare else { return };
            inner
                .slots
                .iter()
                .enumerate()
                .find(|(_, s)| {
                    matches!(s.state, State::Ready { .. })
                        && s.profile.as_ref().is_some_and(|p| !serves(&p.name))
                })
                .map(|(i, s)| (i, s.generation, spare))
        };
        if let Some((slot, generation, spare)) = target {
            log::info!(
                "slot {slot}: requests wait for model {model}, which its profile cools for: rotating it out for {spare}"
            );
            self.rotate_out(slot, generation);
        }
    }

    /// Tell the dispatcher which models no profile can serve, until when.
    fn publish_blocked_models(&self) {
        let blocked = {
            let inner = self.lock();
            let now = SystemTime::now();
            inner
                .book
                .cooled_models()
                .into_iter()
                .filter_map(|m| {
                    let t = inner.book.model_blocked(&m, now)?;
                    Some((m, instant_of(t, now)))
                })
                .collect()
        };
        self.dispatch.set_blocked(blocked);
    }

    /// `profile`'s login expired (`why`; its source content has fingerprint
    /// `content`): it is not started again until new content or an
    /// operator. One warning the first time, naming the fix.
    pub fn login_needed(&self, profile: &str, why: &str, content: u64) {
        let news = self
            .lock()
            .book
            .login_needed(profile, why, content, SystemTime::now());
        if news {
            log::warn!(
                "profile {profile} needs a new login ({why}): it is not started again until its file changes; renew the login and upload the profile, then reload (SIGHUP or `aistudioproxy ctl reload`), or `aistudioproxy ctl reset {profile}`"
            );
            crate::events::record(
                crate::events::Kind::NeedsLogin,
                None,
                Some(profile),
                format!("{why}: log in again and replace its auth file"),
            );
            self.save_book();
        }
    }

    /// What the profiles' files say now (hydration, a reload): one that
    /// needed a login and has new content may run again; one whose session
    /// cookies all expired needs a login, before any start.
    pub fn content_seen(&self, facts: &[crate::hydrate::LoginFacts]) {
        let renewed: Vec<&str> = {
            let mut inner = self.lock();
            facts
                .iter()
                .filter(|f| inner.book.content_seen(&f.profile, f.fingerprint))
                .map(|f| f.profile.as_str())
                .collect()
        };
        for name in &renewed {
            log::info!("profile {name} has new content: its login is tried again");
        }
        for f in facts {
            if let Some(why) = &f.expired {
                self.login_needed(&f.profile, why, f.fingerprint);
            }
        }
        if !renewed.is_empty() {
            self.save_book();
            self.wake_all();
        }
    }

    /// A start of `profile` ended; it had become ready or not.
    pub fn started(&self, profile: &str, became_ready: bool) {
        let v = self
            .lock()
            .book
            .started(profile, became_ready, SystemTime::now());
        if let book::Verdict::Retire { until, .. } = v {
            let left = until.duration_since(SystemTime::now()).unwrap_or_default();
            log::warn!(
                "profile {profile} failed to become ready {} times in a row: it cools down for {}s",
                book::START_FAILURES_TO_COOL,
                left.as_secs()
            );
            crate::events::record(
                crate::events::Kind::CooldownSet,
                None,
                Some(profile),
                format!("start_failures, {}s", left.as_secs()),
            );
        }
        if !became_ready {
            self.save_book();
        }
    }

    /// Every profile with its state and health, in name order.
    pub fn profiles(&self) -> Vec<ProfileSnapshot> {
        profiles_of(&self.lock())
    }

    /// Clear a profile's cooldown and runs (an operator's reset). False
    /// when no such profile is hydrated.
    pub fn reset_profile(&self, name: &str) -> bool {
        let done = self.lock().book.reset(name);
        if done {
            self.refresh_cooling(name);
            self.save_book();
            self.wake_all();
        }
        done
    }

    /// Clear a profile's cooldown of `model` (an operator's reset of one
    /// model). None when no such profile; false when it had none.
    pub fn reset_model(&self, name: &str, model: &str) -> Option<bool> {
        let done = {
            let mut inner = self.lock();
            if !inner.book.entries().contains_key(name) {
                return None;
            }
            inner.book.reset_model(name, model)
        };
        if done {
            self.refresh_cooling(name);
            self.save_book();
            self.wake_all();
        }
        Some(done)
    }

    /// Tell the dispatcher the models the slot running `name` cools for now.
    fn refresh_cooling(&self, name: &str) {
        let found = {
            let inner = self.lock();
            inner
                .slots
                .iter()
                .enumerate()
                .find(|(_, s)| s.profile.as_ref().is_some_and(|p| p.name == name))
                .map(|(i, s)| {
                    (
                        ChildId {
                            slot: i,
                            generation: s.generation,
                        },
                        cooling_instants(&inner.book, name),
                    )
                })
        };
        if let Some((child, cooling)) = found {
            self.dispatch.set_cooling(child, cooling);
        }
    }

    /// Disable or enable a profile. Returns the slot running it (to be
    /// drained by the caller when disabling), or Err when unknown.
    pub fn set_disabled(&self, name: &str, disabled: bool) -> Result<Option<usize>, ()> {
        let slot = {
            let mut inner = self.lock();
            if !inner.book.set_disabled(name, disabled) {
                return Err(());
            }
            inner
                .slots
                .iter()
                .position(|s| s.profile.as_ref().is_some_and(|p| p.name == name))
        };
        self.save_book();
        self.wake_all();
        Ok(slot)
    }

    /// Send `cmd` to the watcher of `slot`; false when there is no such slot.
    pub fn command(&self, slot: usize, cmd: Cmd) -> bool {
        self.cmds.get(slot).is_some_and(|tx| tx.send(cmd).is_ok())
    }

    /// Adopt a new hydrated set (a reload): new profiles join the back of
    /// the queue, removed ones leave it, and a removed one that holds a slot
    /// stays placed until that slot rotates; its slot is told to drain.
    /// Profiles in both keep their place (their new content is used at
    /// their next start).
    pub fn apply_profiles(&self, fresh: Vec<Profile>) -> ProfileChanges {
        let mut changes = ProfileChanges::default();
        {
            let mut inner = self.lock();
            let names: Vec<String> = fresh.iter().map(|p| p.name.clone()).collect();
            for p in fresh {
                if !inner.all.contains(&p.name) {
                    changes.added.push(p.name.clone());
                    inner.book.ensure(&p.name);
                    inner.all.push(p.name.clone());
                    inner.queue.push_back(p);
                } else if let Some(i) = inner.removed.iter().position(|n| *n == p.name) {
                    // Removed by an earlier reload and back before its slot rotated.
                    inner.removed.remove(i);
                }
            }
            let gone: Vec<String> = inner
                .all
                .iter()
                .filter(|n| !names.contains(n) && !inner.removed.contains(n))
                .cloned()
                .collect();
            for name in gone {
                changes.removed.push(name.clone());
                inner.queue.retain(|p| p.name != name);
                match inner
                    .slots
                    .iter()
                    .position(|s| s.profile.as_ref().is_some_and(|p| p.name == name))
                {
                    Some(slot) => {
                        inner.removed.push(name);
                        changes.draining.push(slot);
                    }
                    None => {
                        inner.all.retain(|n| *n != name);
                        inner.book.forget(&name);
                    }
                }
            }
            inner.all.sort();
        }
        for &slot in &changes.draining {
            self.command(
                slot,
                Cmd::Drain {
                    generation: None,
                    reason: StopReason::Operator("profile removed by a reload".into()),
                    then: Then::Rotate,
                },
            );
        }
        if !changes.added.is_empty() {
            self.wake_all();
        }
        changes
    }

    /// Requests in flight on `slot` now.
    pub fn in_flight(&self, slot: usize) -> usize {
        self.dispatch.in_flight().get(slot).copied().unwrap_or(0)
    }

    pub fn wake_all(&self) {
        for tx in &self.cmds {
            let _ = tx.send(Cmd::Wake);
        }
    }
}

/// The pool's side of the profile leases: only held profiles run; the
/// leaser asks what we want, grants, and takes away; a profile leaving its
/// slot is released (`take_next`).
impl Pool {
    /// Turn leasing on: from now on only profiles granted by the leaser
    /// run; releases go to `releases`.
    pub fn enable_leases(&self, releases: Sender<Release>, stats: Arc<crate::fleet::Stats>) {
        self.lock().leases = Some(Leases {
            held: Default::default(),
            releases,
        });
        let _ = self.lease_stats.set(stats);
    }

    /// Is leasing on?
    pub fn leasing(&self) -> bool {
        self.lock().leases.is_some()
    }

    /// How many more leases the slots could use, and the profiles we could
    /// run if we held them (queue order, then the slots' own).
    pub fn lease_demand(&self) -> (usize, Vec<String>) {
        let inner = self.lock();
        let Some(l) = &inner.leases else {
            return (0, Vec::new());
        };
        if inner.shutting_down {
            return (0, Vec::new());
        }
        let want = inner.slots.len().saturating_sub(l.held.len());
        let now = SystemTime::now();
        let candidates = inner
            .queue
            .iter()
            .chain(inner.slots.iter().filter_map(|s| s.profile.as_ref()))
            .map(|p| p.name.clone())
            .filter(|n| {
                !l.held.contains(n) && inner.book.eligible(n, now) && !inner.removed.contains(n)
            })
            .collect();
        (want, candidates)
    }

    /// The leaser took these leases: the slots may run them.
    pub fn lease_granted(&self, names: &[String]) {
        {
            let mut inner = self.lock();
            let shutting_down = inner.shutting_down;
            let Some(l) = &mut inner.leases else { return };
            for n in names {
                if shutting_down {
                    // Too late to run it: give it straight back.
                    let _ = l.releases.send(Release {
                        profile: n.clone(),
                        cooling: None,
                    });
                } else {
                    l.held.insert(n.clone());
                    crate::events::record(
                        crate::events::Kind::LeaseGained,
                        None,
                        Some(n),
                        "lease taken",
                    );
                }
            }
        }
        self.wake_all();
    }

    /// The lease of `name` is lost: it may not run, and a slot running it
    /// stops its child at once.
    pub fn lease_lost(&self, name: &str, why: String) {
        crate::events::record(crate::events::Kind::LeaseLost, None, Some(name), &why);
        let target = {
            let mut inner = self.lock();
            if let Some(l) = &mut inner.leases {
                l.held.remove(name);
            }
            inner
                .slots
                .iter()
                .position(|s| s.profile.as_ref().is_some_and(|p| p.name == name))
                .map(|i| (i, inner.slots[i].generation))
        };
        if let Some((slot, generation)) = target {
            self.dispatch.close(ChildId { slot, generation });
            self.command(slot, Cmd::LeaseLost { generation, why });
        }
    }

    /// May the child of `name` keep running (leasing off, or we hold it)?
    pub fn lease_ok(&self, name: &str) -> bool {
        self.lock()
            .leases
            .as_ref()
            .is_none_or(|l| l.held.contains(name))
    }

    /// Profiles whose slot has a child process now.
    pub fn running_profiles(&self) -> Vec<String> {
        self.lock()
            .slots
            .iter()
            .filter(|s| s.state.pid().is_some())
            .filter_map(|s| s.profile.as_ref().map(|p| p.name.clone()))
            .collect()
    }

    /// The book's cooldown of `name`, as a lease records it.
    pub fn cooling_of(&self, name: &str) -> Option<(u64, String)> {
        cooling_of(&self.lock().book, name)
    }
}

/// Keep-alive turns and long runs giving way (`keepalive`): the pool
/// gathers the facts under its lock, `keepalive::decide` decides, and the
/// drains it asks for go out once the lock is released.
impl Pool {
    /// One look of the keep-alive thread at `now`: stamp first sights, end
    /// a turn stuck making way longer than `stuck`, start a due turn
    /// (`every`), rotate out a profile past `max_runtime` while another
    /// waits. Returns what it did and when to look again.
    pub fn keepalive_look(
        &self,
        now: SystemTime,
        every: Option<std::time::Duration>,
        max_runtime: Option<std::time::Duration>,
        stuck: std::time::Duration,
    ) -> keepalive::Look {
        use keepalive::decide;
        // Read apart from our lock: the two locks are never held together.
        let in_flight = self.dispatch.in_flight();
        let waiting = self.dispatch.waiting();
        let mut look = keepalive::Look::default();
        let mut drains = Vec::new();
        let stamped = {
            let mut inner = self.lock();
            let inner = &mut *inner;
            if inner.shutting_down {
                return look;
            }
            let stamped = inner.book.stamp_first_seen(now);
            if let Some(t) = inner
                .turn
                .take_if(|t| !t.running() && t.asked.elapsed() > stuck)
            {
                look.abandoned = Some(t);
            }
            let spares: Vec<decide::Spare> = inner
                .queue
                .iter()
                .map(|p| {
                    let idle = inner.book.idle_since(&p.name);
                    decide::Spare {
                        name: &p.name,
                        // A login refreshes whatever models it is out of quota for.
                        may_run: inner.may_run(&p.name, &[], now)
                            && !inner.removed.contains(&p.name),
                        idle_since: idle.map(|(t, _)| t),
                        ran: idle.is_some_and(|(_, ran)| ran),
                    }
                })
                .collect();
            let slots: Vec<decide::Slot> = inner
                .slots
                .iter()
                .enumerate()
                .filter(|(_, s)| s.profile.is_some())
                .map(|(i, s)| decide::Slot {
                    slot: i,
                    ready: matches!(s.state, State::Ready { .. }),
                    in_flight: in_flight.get(i).copied().unwrap_or(0),
                    placed: s.placed,
                })
                .collect();
            let mut next = decide::LOOK_MAX;
            if let Some(every) = every {
                // The turn's own profile waits in the queue while its slot
                // makes way: it is not due again.
                let turn_of = inner.turn.as_ref().map(|t| t.profile.as_str());
                let others: Vec<decide::Spare> = spares
                    .iter()
                    .filter(|s| Some(s.name) != turn_of)
                    .cloned()
                    .collect();
                let d = decide::turn(now, every, &others, &slots, waiting, turn_of.is_some());
                match d {
                    decide::Decision::NotDue(after) => next = after,
                    decide::Decision::Held(profile, why) => {
                        next = decide::LOOK_HELD;
                        look.held = Some((profile.to_string(), why));
                    }
                    decide::Decision::Turn { profile, slot } => {
                        let s = &inner.slots[slot];
                        let idle = inner.book.idle_since(profile).map(|(t, _)| t);
                        let turn = keepalive::Turn::new(
                            profile.to_string(),
                            slot,
                            s.profile.as_ref().map(|p| p.name.clone()),
                            idle.and_then(|t| now.duration_since(t).ok()),
                        );
                        drains.push((
                            slot,
                            s.generation,
                            StopReason::Turn(turn.making_way()),
                            Then::KeepAlive,
                        ));
                        look.started = Some(turn.clone());
                        inner.turn = Some(turn);
                        next = decide::LOOK_HELD;
                    }
                }
            }
            if let Some(max) = max_runtime.filter(|_| inner.overstay.is_none()) {
                let except = inner.turn.as_ref().map(|t| t.slot);
                if let Some(slot) = decide::overstayed(now, max, &spares, &slots, except) {
                    let s = &inner.slots[slot];
                    let name = s.profile.as_ref().map(|p| p.name.as_str()).unwrap_or("-");
                    let ran = now.duration_since(s.placed).unwrap_or_default();
                    let why = format!(
                        "profile {name} has run {} s, PROFILE_MAX_RUNTIME_S={}, and others wait their turn: rotating it out",
                        ran.as_secs(),
                        max.as_secs()
                    );
                    drains.push((
                        slot,
                        s.generation,
                        StopReason::Turn(why.clone()),
                        Then::Rotate,
                    ));
                    look.overstayed = Some((slot, why));
                    inner.overstay = Some(slot);
                }
                // A slot not ready yet reaches the limit no sooner than `max`.
                let d = decide::next_overstay(now, max, &slots).unwrap_or(max);
                next = next.min(d.max(decide::LOOK_HELD));
            }
            look.next = next;
            stamped
        };
        for (slot, generation, reason, then) in drains {
            // No new requests from now on, as for an exhausted profile.
            self.dispatch
                .set_slot(slot, SlotView::Draining { generation });
            self.command(
                slot,
                Cmd::Drain {
                    generation: Some(generation),
                    reason,
                    then,
                },
            );
        }
        if stamped {
            self.save_book();
        }
        look
    }

    /// The slot drained for a keep-alive turn (`Then::KeepAlive`): its
    /// profile waits at the front of the queue (keeping its lease, to come
    /// back) and the turn's profile takes the slot, in one step. When the
    /// turn is void (its profile may no longer run, or took another slot),
    /// the slot goes on as before.
    pub fn begin_turn(&self, slot: usize) -> Option<Profile> {
        let want = self.wanted_models();
        let (next, void) = {
            let mut inner = self.lock();
            let inner = &mut *inner;
            let now = SystemTime::now();
            let ours = inner
                .turn
                .as_ref()
                .filter(|t| t.slot == slot && !t.running())
                .map(|t| t.profile.clone());
            let own = inner.slots[slot].profile.as_ref().map(|p| p.name.clone());
            let at = ours.as_ref().and_then(|k| {
                inner
                    .queue
                    .iter()
                    .position(|p| p.name == *k && inner.may_run(k, &[], now))
            });
            match (ours, at) {
                (Some(k), _) if own.as_deref() == Some(k.as_str()) => {
                    // A rotation already brought it here: this start is the turn.
                    if let Some(t) = inner.turn.as_mut() {
                        t.begin(None);
                    }
                    (inner.slots[slot].profile.clone(), None)
                }
                (Some(_), Some(at)) => {
                    let k = inner.queue.remove(at);
                    let mut displaced = None;
                    if let Some(p) = inner.slots[slot].profile.take() {
                        if let Some(i) = inner.removed.iter().position(|n| *n == p.name) {
                            // Removed by a reload: it leaves with its slot.
                            inner.release(&p.name);
                            inner.removed.remove(i);
                            inner.all.retain(|n| *n != p.name);
                            inner.book.forget(&p.name);
                        } else {
                            displaced = Some(p.name.clone());
                            inner.queue.push_front(p);
                        }
                    }
                    inner.slots[slot].profile = k.clone();
                    inner.slots[slot].placed = now;
                    if let Some(t) = inner.turn.as_mut() {
                        t.begin(displaced);
                    }
                    (k, None)
                }
                (ours, _) => {
                    let void = ours.and(inner.turn.take());
                    (current_of(inner, slot, now, &want), void)
                }
            }
        };
        match (&next, void) {
            (_, Some(t)) => log::info!(
                "slot {slot}: keep-alive turn for {} dropped: it may not run now (or runs elsewhere)",
                t.profile
            ),
            (Some(k), None) => {
                if let Some(t) = self.lock().turn.clone() {
                    keepalive::note_begin(&t, &k.name);
                }
            }
            _ => {}
        }
        next
    }

    /// When slot `slot` runs a keep-alive turn: how long its ready child
    /// stays before it is stopped (so its own start finishes).
    pub fn turn_settle(&self, slot: usize) -> Option<std::time::Duration> {
        let inner = self.lock();
        let t = inner
            .turn
            .as_ref()
            .filter(|t| t.slot == slot && t.running())?;
        let own = inner.slots[slot].profile.as_ref()?;
        (own.name == t.profile).then_some(keepalive::SETTLE)
    }
}

/// Every profile with its state and health, in name order. `cooling` is
/// the whole account's cooldown only: one that cools for some models is
/// running or queued, and `cools_for` names those models (it can serve any
/// other, and takes a slot when nothing better can).
fn profiles_of(inner: &Inner) -> Vec<ProfileSnapshot> {
    let now = SystemTime::now();
    inner
        .book
        .status(now)
        .into_iter()
        .map(|health| {
            let slot = inner.slots.iter().position(|s| {
                s.profile.as_ref().is_some_and(|p| p.name == health.profile)
                    && s.state.pid().is_some()
            });
            let state = if health.disabled {
                "disabled"
            } else if health.needs_login.is_some() {
                "needs_login"
            } else if slot.is_some() {
                "running"
            } else if health.cooling_until_unix_ms.is_some() {
                "cooling"
            } else {
                "queued"
            };
            ProfileSnapshot {
                state,
                slot,
                cools_for: health
                    .model_cooldowns
                    .iter()
                    .map(|m| m.model.clone())
                    .collect(),
                health,
            }
        })
        .collect()
}

/// The models the dispatcher saw asked for lately (the book adds those it
/// saw run out, see `Book::demand`), and those requests wait for.
struct WantedModels {
    asked: Vec<String>,
    waited_for: Vec<String>,
}

/// The slot's own profile if it may run at `now` for the models in demand
/// (and is out of quota for none while a queued one is, see `placement`),
/// else `take_next`.
fn current_of(
    inner: &mut Inner,
    slot: usize,
    now: SystemTime,
    want: &WantedModels,
) -> Option<Profile> {
    let demand = inner.book.demand(&want.asked, now);
    if let Some(p) = &inner.slots[slot].profile {
        let fresh = |name: &str| inner.book.models_cooling(name, now).is_empty();
        let keep = fresh(&p.name)
            || !inner
                .queue
                .iter()
                .any(|q| inner.may_run(&q.name, &demand, now) && fresh(&q.name));
        if keep && inner.may_run(&p.name, &demand, now) && !inner.removed.contains(&p.name) {
            return Some(p.clone());
        }
    }
    take_next(inner, slot, now, want)
}

/// Put the slot's profile (if any) at the back of the queue and give the
/// slot the first queued profile that may run at `now` for the models in
/// demand, preferring one that serves what requests wait for (see
/// `placement`); the others keep their order. The profile of a keep-alive
/// turn leaving its slot ends the turn (kept in `ended`); the profile it
/// displaced waits at the front.
fn take_next(
    inner: &mut Inner,
    slot: usize,
    now: SystemTime,
    want: &WantedModels,
) -> Option<Profile> {
    if inner.overstay == Some(slot) {
        inner.overstay = None;
    }
    let leaving = inner.slots[slot].profile.as_ref().map(|p| p.name.clone());
    if let Some(t) = inner.turn.take() {
        // A turn still making way here is dropped too: the slot moved on
        // by itself (its child ended), and the next look asks again.
        let ours = t.slot == slot && (!t.running() || leaving.as_deref() == Some(&t.profile));
        if ours {
            inner.ended = Some(t);
        } else {
            inner.turn = Some(t);
        }
    }
    if let Some(p) = inner.slots[slot].profile.take() {
        inner.release(&p.name);
        if let Some(i) = inner.removed.iter().position(|n| *n == p.name) {
            // Removed by a reload: it leaves with its slot.
            inner.removed.remove(i);
            inner.all.retain(|n| *n != p.name);
            inner.book.forget(&p.name);
        } else {
            inner.queue.push_back(p);
        }
    }
    let at = {
        let inner = &*inner;
        let demand = inner.book.demand(&want.asked, now);
        placement::next_in_queue(
            inner.queue.iter().map(|p| p.name.as_str()),
            |name| inner.may_run(name, &demand, now),
            |name| inner.may_run(name, &[], now),
            |name, model| {
                inner
                    .book
                    .models_cooling(name, now)
                    .iter()
                    .all(|(m, _)| m != model)
            },
            |name| inner.book.models_cooling(name, now).is_empty(),
            &want.waited_for,
        )
    };
    let next = at.and_then(|at| inner.queue.remove(at));
    inner.slots[slot].profile = next.clone();
    inner.slots[slot].placed = now;
    // The profile a finished turn displaced kept its lease to come back;
    // if it did not (it cools now, say), the lease goes.
    let displaced = inner.ended.as_ref().and_then(|t| t.displaced.clone());
    if let Some(d) = displaced.filter(|d| next.as_ref().is_none_or(|n| n.name != *d)) {
        if inner.queue.iter().any(|p| p.name == d) {
            inner.release(&d);
        }
    }
    next
}

/// `t` (wall clock) as an instant, from `now`.
fn instant_of(t: SystemTime, now: SystemTime) -> Instant {
    Instant::now() + t.duration_since(now).unwrap_or_default()
}

/// The models `name` cools for, with their ends as instants.
fn cooling_instants(book: &Book, name: &str) -> Vec<(String, Instant)> {
    let now = SystemTime::now();
    book.models_cooling(name, now)
        .into_iter()
        .map(|(m, t)| (m, instant_of(t, now)))
        .collect()
}

/// The placement invariant over a snapshot: slots' profiles plus the queue
/// are exactly `all`, each once.
pub fn check_placement(snap: &Snapshot, all: &[String]) -> Result<(), String> {
    let mut seen: Vec<&String> = snap
        .slots
        .iter()
        .filter_map(|s| s.profile.as_ref())
        .chain(snap.queue.iter())
        .collect();
    seen.sort();
    let want: Vec<&String> = all.iter().collect();
    if seen == want {
        Ok(())
    } else {
        Err(format!(
            "profiles placed {seen:?}, expected each of {want:?} once"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;
    use std::time::Instant;

    fn profiles(names: &[&str]) -> Vec<Profile> {
        names
            .iter()
            .map(|n| Profile {
                name: n.to_string(),
                path: PathBuf::from(format!("/x/{n}.json")),
            })
            .collect()
    }

    fn plan() -> PortPlan {
        PortPlan {
            base_api: 3100,
            base_stream: 3200,
            base_camoufox: 9222,
            step: 1,
        }
    }

    fn make_ready(pool: &Pool, slot: usize) {
        assert!(pool.apply(
            slot,
            &Event::Spawned {
                pid: 10 + slot as i32,
                deadline: Instant::now()
            }
        ));
        assert!(pool.apply(slot, &Event::BecameReady));
    }

    #[test]
    fn slots_take_the_first_profiles_and_the_rest_queue() {
        let (pool, rx) = Pool::new(
            profiles(&["a", "b", "c", "d"]),
            2,
            plan(),
            Limits::default(),
        );
        assert_eq!(rx.len(), 2);
        let snap = pool.snapshot();
        assert_eq!(snap.slots[0].profile.as_deref(), Some("a"));
        assert_eq!(snap.slots[1].ports.api, 3101);
        assert_eq!(snap.queue, vec!["c", "d"]);
        pool.check_invariant().unwrap();
    }

    #[test]
    fn pool_never_exceeds_profiles() {
        let (pool, _) = Pool::new(profiles(&["a"]), 3, plan(), Limits::default());
        assert_eq!(pool.size(), 1);
    }

    #[test]
    fn rotation_is_fifo_and_keeps_the_invariant() {
        let (pool, _) = Pool::new(
            profiles(&["a", "b", "c", "d"]),
            2,
            plan(),
            Limits::default(),
        );
        assert_eq!(pool.rotate(0).unwrap().name, "c");
        assert_eq!(pool.snapshot().queue, vec!["d", "a"]);
        assert_eq!(pool.rotate(1).unwrap().name, "d");
        assert_eq!(pool.rotate(0).unwrap().name, "a");
        assert_eq!(pool.snapshot().queue, vec!["b", "c"]);
        pool.check_invariant().unwrap();
        let (solo, _) = Pool::new(profiles(&["a"]), 2, plan(), Limits::default());
        assert_eq!(solo.rotate(0).unwrap().name, "a");
        solo.check_invariant().unwrap();
    }

    #[test]
    fn refused_moves_change_nothing() {
        let (pool, _) = Pool::new(profiles(&["a"]), 1, plan(), Limits::default());
        assert!(!pool.apply(0, &Event::BecameReady));
        assert_eq!(pool.state(0), State::Idle);
        assert_eq!(pool.generation(0), 0);
    }

    #[test]
    fn the_dispatcher_follows_every_move_and_eviction() {
        let (pool, _) = Pool::new(profiles(&["a", "b"]), 2, plan(), Limits::default());
        let d = pool.dispatch().clone();
        assert!(d.ready().is_empty());
        make_ready(&pool, 0);
        assert_eq!(d.ready(), vec![(0, 3100, "a".to_string())]);
        let until = Instant::now() + std::time::Duration::from_secs(9);
        assert!(pool.apply(
            1,
            &Event::Backoff {
                until,
                reason: "r".into()
            }
        ));
        assert_eq!(d.view().slots[1].state, "backoff");
        // An eviction closes the route before the watcher acts on it.
        pool.evict(0, pool.generation(0), "test".into());
        assert!(d.ready().is_empty());
        assert!(pool.apply(0, &Event::Stop(crate::slot::StopReason::Shutdown)));
        assert!(pool.apply(0, &Event::Gone));
        make_ready(&pool, 0);
        assert_eq!(d.view().slots[0].generation, Some(2));
        pool.begin_shutdown();
        assert!(pool.snapshot().shutting_down);
    }

    #[test]
    fn generations_count_spawns() {
        let (pool, _) = Pool::new(profiles(&["a"]), 1, plan(), Limits::default());
        make_ready(&pool, 0);
        assert_eq!(pool.generation(0), 1);
        assert!(pool.apply(0, &Event::Stop(crate::slot::StopReason::Shutdown)));
        assert!(pool.apply(0, &Event::Gone));
        make_ready(&pool, 0);
        assert_eq!(pool.generation(0), 2);
        assert_eq!(pool.snapshot().slots[0].restarts, 1);
    }

    #[test]
    fn with_leases_only_held_profiles_run_and_leaving_a_slot_releases() {
        let (pool, rxs) = Pool::new(profiles(&["a", "b", "c"]), 2, plan(), Limits::default());
        let (tx, releases) = crossbeam_channel::unbounded();
        pool.enable_leases(tx, Arc::new(crate::fleet::Stats::new("me")));
        assert_eq!(pool.current(0), None, "nothing held: nothing runs");
        let (want, cands) = pool.lease_demand();
        assert_eq!(want, 2);
        assert_eq!(cands.len(), 3);
        pool.lease_granted(&["c".to_string()]);
        assert_eq!(rxs[0].try_recv(), Ok(Cmd::Wake));
        assert_eq!(pool.current(0).unwrap().name, "c");
        assert_eq!(pool.lease_demand().0, 1);
        assert!(!pool.lease_demand().1.contains(&"c".to_string()));
        // c leaves its slot: its lease goes back, with no cooldown.
        assert_eq!(pool.rotate(0), None);
        assert_eq!(
            releases.try_recv(),
            Ok(Release {
                profile: "c".into(),
                cooling: None
            })
        );
        pool.check_invariant().unwrap();
        // A lost lease stops the child of the slot at once.
        pool.lease_granted(&["b".to_string()]);
        assert_eq!(pool.current(1).unwrap().name, "b");
        make_ready(&pool, 1);
        while rxs[1].try_recv().is_ok() {}
        pool.lease_lost("b", "taken by x".into());
        assert!(!pool.lease_ok("b"));
        assert_eq!(
            rxs[1].try_recv(),
            Ok(Cmd::LeaseLost {
                generation: 1,
                why: "taken by x".into()
            })
        );
        assert!(pool.dispatch().ready().is_empty(), "its route closes first");
        // Released on the way out, since we no longer hold it: no message.
        assert_eq!(pool.rotate(1), None);
        assert!(releases.try_recv().is_err());
    }

    #[test]
    fn a_keepalive_turn_displaces_one_profile_and_gives_its_slot_back() {
        use std::time::Duration;
        let s = Duration::from_secs;
        let (pool, rxs) = Pool::new(
            profiles(&["a", "b", "c", "d"]),
            1,
            plan(),
            Limits::default(),
        );
        make_ready(&pool, 0);
        let t0 = SystemTime::now();
        let look = |at: u64| pool.keepalive_look(t0 + s(at), Some(s(100)), None, s(60));
        // The first look sees b, c and d for the first time: none is due.
        let first = look(0);
        assert!(first.started.is_none() && first.held.is_none());
        assert_eq!(first.next, s(30));
        // The book keeps milliseconds: b runs in a later one than t0.
        std::thread::sleep(Duration::from_millis(3));
        // d may not run: of b and c (seen together), b goes first.
        assert_eq!(pool.set_disabled("d", true), Ok(None));
        let started = look(100).started.expect("b is due");
        assert_eq!((started.profile.as_str(), started.slot), ("b", 0));
        assert_eq!(
            rxs[0].try_iter().find(|c| matches!(c, Cmd::Drain { .. })),
            Some(Cmd::Drain {
                generation: Some(1),
                reason: StopReason::Turn("making way for a keep-alive turn for b".into()),
                then: Then::KeepAlive,
            })
        );
        assert!(pool.dispatch().ready().is_empty(), "no new requests for a");
        let held = look(101).held.expect("c waits");
        assert_eq!(
            held,
            ("c".to_string(), keepalive::decide::Hold::TurnRunning)
        );
        // The watcher drains a, stops it, and begins the turn.
        assert!(pool.apply(0, &Event::Drain(StopReason::Turn("x".into()))));
        assert!(pool.apply(0, &Event::Stop(StopReason::Turn("x".into()))));
        assert!(pool.apply(0, &Event::Gone));
        assert_eq!(pool.begin_turn(0).unwrap().name, "b");
        pool.check_invariant().unwrap();
        assert_eq!(pool.snapshot().queue, vec!["a", "c", "d"]);
        assert_eq!(pool.current(0).unwrap().name, "b");
        make_ready(&pool, 0);
        assert_eq!(pool.turn_settle(0), Some(keepalive::SETTLE));
        let snap = pool.snapshot();
        assert_eq!(
            snap.slots[0].reason.as_deref(),
            Some("keep-alive turn for b")
        );
        assert!(pool.lock().book.idle_since("b").unwrap().1, "b ran");
        // b's turn is over: it stops and the slot goes back to a.
        assert!(pool.apply(0, &Event::Stop(StopReason::Turn("done".into()))));
        assert!(pool.apply(0, &Event::Gone));
        assert_eq!(pool.rotate(0).unwrap().name, "a");
        pool.check_invariant().unwrap();
        assert_eq!(pool.snapshot().queue, vec!["c", "d", "b"]);
        assert!(pool.lock().turn.is_none());
        // Next, c (a is not ready yet: no quiet slot).
        assert_eq!(
            look(102).held,
            Some(("c".to_string(), keepalive::decide::Hold::NoQuietSlot))
        );
    }

    #[test]
    fn a_turn_whose_profile_can_no_longer_run_is_void_and_the_slot_goes_on() {
        use std::time::Duration;
        let s = Duration::from_secs;
        let (pool, _rxs) = Pool::new(profiles(&["a", "b"]), 1, plan(), Limits::default());
        make_ready(&pool, 0);
        let t0 = SystemTime::now();
        pool.keepalive_look(t0, Some(s(10)), None, s(60));
        assert!(pool
            .keepalive_look(t0 + s(10), Some(s(10)), None, s(60))
            .started
            .is_some());
        pool.login_needed("b", "test", 1);
        assert!(pool.apply(0, &Event::Stop(StopReason::Shutdown)));
        assert!(pool.apply(0, &Event::Gone));
        assert_eq!(pool.begin_turn(0).unwrap().name, "a");
        assert!(pool.lock().turn.is_none());
        pool.check_invariant().unwrap();
    }

    #[test]
    fn a_long_run_makes_way_only_when_another_waits_and_one_at_a_time() {
        use std::time::Duration;
        let s = Duration::from_secs;
        let (pool, rxs) = Pool::new(profiles(&["a", "b", "c"]), 2, plan(), Limits::default());
        make_ready(&pool, 0);
        make_ready(&pool, 1);
        let t0 = SystemTime::now();
        let look = |at: u64| pool.keepalive_look(t0 + s(at), None, Some(s(100)), s(60));
        assert!(look(50).overstayed.is_none());
        let (slot, why) = look(101).overstayed.expect("c waits");
        assert_eq!(slot, 0);
        assert!(why.contains("PROFILE_MAX_RUNTIME_S=100"), "{why}");
        assert!(matches!(
            rxs[0].try_iter().last(),
            Some(Cmd::Drain {
                then: Then::Rotate,
                ..
            })
        ));
        assert!(look(102).overstayed.is_none(), "one at a time");
        // The book keeps milliseconds: a stops in a later one than b came.
        std::thread::sleep(Duration::from_millis(3));
        assert!(pool.apply(0, &Event::Stop(StopReason::Turn(why))));
        assert!(pool.apply(0, &Event::Gone));
        assert_eq!(pool.rotate(0).unwrap().name, "c");
        make_ready(&pool, 0);
        // a ran after b was placed: b keeps its slot, but once c has run
        // as long, a (stopped before c came) takes its turn from c.
        assert_eq!(look(200).overstayed.map(|o| o.0), Some(0));
        pool.check_invariant().unwrap();
    }
}
