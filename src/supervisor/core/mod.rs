//! The supervisor's pure core: the fleet's state (slots, the rotation
//! queue, the profile book, the leases held, the keep-alive turn and the
//! one overstay) and [`handle`], which turns one [`Msg`] at one instant
//! ([`At`]) into the state's next value and a list of [`Action`]s.
//!
//! Runs on the supervisor thread only (and in table tests). It must do no
//! I/O, read no clock and hold no channel: every fact from outside (the
//! time, what the dispatcher counts) comes in `At`, and everything it wants
//! done (route a child, command a watcher, save the book, give a lease
//! back, log a line) goes out as an `Action` the thread carries out.
//!
//! Invariant: every placed profile is in exactly one place at every moment,
//! either held by a slot or waiting in the queue ([`State::check`]).

mod health;
mod place;
#[cfg(test)]
mod tests;
mod turns;

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use crate::book::Book;
use crate::budget::accounts::Allowance;
use crate::config::{PortPlan, Ports};
use crate::dispatch::{Blocked, ChildId, SlotView};
use crate::events::Kind;
use crate::fleet::Release;
use crate::hydrate::Profile;
use crate::keepalive::{self, Turn};
use crate::slot::{Event, State as Phase};

use super::msg::{Cmd, Msg, Reply};

/// Fixed for the run: what the keep-alive clock does, and with leases on.
#[derive(Debug, Clone, Copy, Default)]
pub struct Settings {
    pub keepalive: keepalive::Settings,
    /// How long a turn may take to make way before it is dropped.
    pub stuck: Duration,
    pub leasing: bool,
    /// Alert when the fleet has under this percent of a model's budget left
    /// (`BUDGET_FLEET_ALERT_PERCENT`).
    pub budget_alert_percent: u8,
}

/// One slot as the supervisor records it.
#[derive(Debug, Clone)]
pub struct SlotRec {
    pub ports: Ports,
    pub profile: Option<Profile>,
    pub state: Phase,
    /// When it entered its state.
    pub since: SystemTime,
    /// Bumped at every spawn, so a late eviction cannot hit the successor.
    pub generation: u64,
    pub restarts: u32,
    /// Resident bytes of the running child's tree at its last measurement;
    /// cleared at every spawn.
    pub rss: Option<u64>,
    /// Its child's served answers the book counted per budget line (the
    /// line's prefix); cleared at every spawn. The dispatcher holds back
    /// the ones it saw served and this does not count yet.
    pub served: BTreeMap<String, u64>,
    /// When its profile was placed in it (`PROFILE_MAX_RUNTIME_S` counts
    /// from here, across restarts of the same profile).
    pub placed: SystemTime,
}

impl SlotRec {
    pub fn name(&self) -> Option<&str> {
        self.profile.as_ref().map(|p| p.name.as_str())
    }
}

/// Everything the supervisor owns. Plain data: cloned whole, it is the
/// snapshot readers see.
#[derive(Debug, Clone)]
pub struct State {
    pub slots: Vec<SlotRec>,
    pub queue: VecDeque<Profile>,
    pub shutting_down: bool,
    /// Per-profile health: which profiles may run.
    pub book: Book,
    /// Every profile name placed (in a slot or the queue), sorted.
    pub all: Vec<String>,
    /// Profiles a reload removed that still hold a slot until it rotates.
    pub removed: Vec<String>,
    /// With `PROFILE_LEASES=s3`: the profiles whose lease we hold; only
    /// those may run.
    pub leases: Option<BTreeSet<String>>,
    /// The fleet's one keep-alive turn, while it runs.
    pub turn: Option<Turn>,
    /// The slot draining for `PROFILE_MAX_RUNTIME_S`, until it rotates:
    /// one at a time, so one waiting profile does not move two.
    pub overstay: Option<usize>,
    /// Slots told to make way for a starved model, until they take their
    /// next profile: one spare moves one slot, however often the model is
    /// reported starved meanwhile.
    pub making_way: BTreeSet<usize>,
    pub settings: Settings,
}

/// The instant a message is handled at, and what the dispatcher counts
/// then (read by the thread before the core runs: the two never share a
/// lock).
#[derive(Debug, Clone)]
pub struct At {
    pub wall: SystemTime,
    pub mono: Instant,
    /// The models asked for lately (the book adds those it saw run out).
    pub asked: Vec<String>,
    /// The models requests wait for.
    pub waited_for: Vec<String>,
    /// Requests in flight per slot.
    pub in_flight: Vec<usize>,
    /// Requests waiting for a child.
    pub waiting: usize,
}

impl At {
    pub fn new(wall: SystemTime, mono: Instant) -> At {
        At {
            wall,
            mono,
            asked: Vec::new(),
            waited_for: Vec::new(),
            in_flight: Vec::new(),
            waiting: 0,
        }
    }
    fn wall(&self) -> SystemTime {
        self.wall
    }
    fn mono(&self) -> Instant {
        self.mono
    }
    /// `t` (wall clock) as an instant.
    fn instant_of(&self, t: SystemTime) -> Instant {
        self.mono() + t.duration_since(self.wall()).unwrap_or_default()
    }
}

/// What the supervisor thread carries out for the core.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// The answer to the message that asked.
    Reply(Reply),
    /// Tell the dispatcher what slot `slot` is now.
    Route {
        slot: usize,
        view: SlotView,
    },
    /// The dispatcher stops sending this child requests at once.
    Close(ChildId),
    /// What `child`'s profile may serve now: the models it cools for, and
    /// what its budgets have left.
    Serves {
        child: ChildId,
        cooling: Vec<(String, Instant)>,
        budget: Option<Arc<Allowance>>,
    },
    /// A command to a slot's watcher.
    Tell {
        slot: usize,
        cmd: Cmd,
    },
    /// Give a profile's lease back to the leaser.
    Release(Release),
    /// Save the book, and tell the dispatcher which models nobody serves.
    Save,
    /// A fleet's budget for a model came under the alert threshold or
    /// ran out: the alert's text (the thread records the event).
    BudgetAlert(String),
    Log {
        warn: bool,
        line: String,
    },
    Event {
        kind: Kind,
        slot: Option<usize>,
        profile: Option<String>,
        text: String,
    },
    /// A keep-alive turn began with `profile` (for its log).
    TurnBegan(Turn, String),
    /// A keep-alive turn ended (or was dropped before it began).
    TurnEnded(Turn),
    /// What a keep-alive look did (for its log).
    Look(keepalive::Look),
}

/// Where the core's decisions go.
type Out = Vec<Action>;

fn log(out: &mut Out, line: String) {
    out.push(Action::Log { warn: false, line });
}

fn warn(out: &mut Out, line: String) {
    out.push(Action::Log { warn: true, line });
}

fn event(out: &mut Out, kind: Kind, slot: Option<usize>, profile: Option<&str>, text: String) {
    out.push(Action::Event {
        kind,
        slot,
        profile: profile.map(str::to_string),
        text,
    });
}

impl State {
    /// The first `min(size, profiles)` profiles get slots, the rest queue.
    pub fn new(
        profiles: Vec<Profile>,
        size: usize,
        plan: PortPlan,
        book: Book,
        settings: Settings,
        wall: SystemTime,
    ) -> State {
        let mut all: Vec<String> = profiles.iter().map(|p| p.name.clone()).collect();
        all.sort();
        let mut queue: VecDeque<Profile> = profiles.into();
        let n = size.min(queue.len());
        let slots = (0..n)
            .map(|i| SlotRec {
                ports: plan.slot(i),
                profile: queue.pop_front(),
                state: Phase::Idle,
                since: wall,
                generation: 0,
                restarts: 0,
                rss: None,
                served: BTreeMap::new(),
                placed: wall,
            })
            .collect();
        State {
            slots,
            queue,
            shutting_down: false,
            book,
            all,
            removed: Vec::new(),
            leases: settings.leasing.then(BTreeSet::new),
            turn: None,
            overstay: None,
            making_way: BTreeSet::new(),
            settings,
        }
    }

    /// May `name` start now to serve some model of `demand`: the book
    /// allows it and, when leasing, we hold its lease.
    fn may_run(&self, name: &str, demand: &[String], now: SystemTime) -> bool {
        self.book.eligible_for(name, demand, now)
            && self.leases.as_ref().is_none_or(|l| l.contains(name))
    }

    /// The placed profiles whose budgets the fleet can spend: all but those
    /// a person must act on first (disabled, login needed).
    pub fn budget_accounts(&self, now: SystemTime) -> Vec<&str> {
        self.all
            .iter()
            .map(String::as_str)
            .filter(|n| self.book.available_at(n, &[], now).is_some())
            .collect()
    }

    /// The slot holding `name`, when one does.
    fn slot_of(&self, name: &str) -> Option<usize> {
        self.slots.iter().position(|s| s.name() == Some(name))
    }

    /// What the dispatcher needs to know of slot `i`.
    fn view(&self, i: usize, at: &At) -> SlotView {
        let s = &self.slots[i];
        match &s.state {
            Phase::Ready { .. } => {
                let profile = s.name().unwrap_or_default().to_string();
                SlotView::Ready {
                    generation: s.generation,
                    port: s.ports.api,
                    cooling: cooling_instants(&self.book, &profile, at),
                    budget: allowance(&self.book, &profile, &s.served, at),
                    profile,
                }
            }
            Phase::Draining { .. } => SlotView::Draining {
                generation: s.generation,
            },
            Phase::Waiting { until, .. }
            | Phase::Staggered { until }
            | Phase::Cooldown { until: Some(until) } => SlotView::BackingOff { until: *until },
            // Every profile disabled: no child can come until an operator acts.
            Phase::Cooldown { until: None } | Phase::Stopped => SlotView::Gone,
            Phase::Idle | Phase::Starting { .. } | Phase::Stopping { .. } => SlotView::Coming,
        }
    }

    /// Every profile is held by exactly one slot or queued exactly once.
    pub fn check(&self) -> Result<(), String> {
        let mut seen: Vec<&str> = self
            .slots
            .iter()
            .filter_map(SlotRec::name)
            .chain(self.queue.iter().map(|p| p.name.as_str()))
            .collect();
        seen.sort();
        if seen == self.all.iter().map(String::as_str).collect::<Vec<_>>() {
            Ok(())
        } else {
            Err(format!(
                "profiles placed {seen:?}, expected each of {:?} once",
                self.all
            ))
        }
    }

    /// What the dispatcher must know of what `child`'s profile may serve.
    fn serves(&self, child: ChildId, at: &At) -> Action {
        let s = &self.slots[child.slot];
        let name = s.name().unwrap_or_default();
        Action::Serves {
            child,
            cooling: cooling_instants(&self.book, name, at),
            budget: allowance(&self.book, name, &s.served, at),
        }
    }

    /// Tell every watcher to look again: which profiles may run changed.
    fn wake_all(&self, out: &mut Out) {
        for slot in 0..self.slots.len() {
            out.push(Action::Tell {
                slot,
                cmd: Cmd::Wake,
            });
        }
    }

    /// `name` left its slot: give its lease back (when we hold it).
    fn release(&mut self, name: &str, at: &At, out: &mut Out) {
        let cooling = cooling_of(&self.book, name, at.wall());
        if let Some(held) = &mut self.leases {
            if held.remove(name) {
                out.push(Action::Release(Release {
                    profile: name.to_string(),
                    cooling,
                }));
            }
        }
    }
}

/// Turn `msg`, handled at `at`, into the next state and the actions that
/// carry it out. The one entry to every decision of the fleet.
pub fn handle(st: &mut State, msg: Msg, at: &At) -> Vec<Action> {
    let mut out = Vec::new();
    let o = &mut out;
    match msg {
        Msg::Slot { slot, ev } => moved(st, slot, &ev, at, o),
        Msg::Next { slot, pick } => place::next(st, slot, pick, at, o),
        Msg::Started {
            profile,
            became_ready,
        } => health::started(st, &profile, became_ready, at, o),
        Msg::LoginNeeded {
            profile,
            why,
            content,
        } => health::login_needed(st, &profile, &why, content, at, o),
        Msg::Rss {
            slot,
            generation,
            bytes,
        } => {
            if let Some(s) = st
                .slots
                .get_mut(slot)
                .filter(|s| s.generation == generation)
            {
                s.rss = Some(bytes);
            }
        }
        Msg::LeaseOk { profile } => {
            let ok = st.leases.as_ref().is_none_or(|l| l.contains(&profile));
            o.push(Action::Reply(Reply::Yes(ok)));
        }
        Msg::Command { slot, cmd } => {
            let ok = slot < st.slots.len();
            if ok {
                o.push(Action::Tell { slot, cmd });
            }
            o.push(Action::Reply(Reply::Yes(ok)));
        }
        Msg::Evict {
            slot,
            generation,
            reason,
        } => {
            if slot < st.slots.len() {
                o.push(Action::Tell {
                    slot,
                    cmd: Cmd::Evict { generation, reason },
                });
            }
        }
        Msg::Outcome(outcome) => health::outcome(st, outcome, at, o),
        Msg::Abandoned { slot, generation } => health::abandoned(st, slot, generation, o),
        Msg::Starved(model) => health::starved(st, &model, at, o),
        Msg::Tick => turns::look(st, at, o),
        Msg::LeaseDemand => health::lease_demand(st, at, o),
        Msg::LeaseGranted(names) => health::lease_granted(st, names, o),
        Msg::LeaseLost { profile, why } => health::lease_lost(st, &profile, why, o),
        Msg::Profiles(fresh) => place::apply_profiles(st, fresh, o),
        Msg::ContentSeen(facts) => health::content_seen(st, &facts, at, o),
        Msg::Admin(op) => health::admin(st, op, at, o),
        Msg::Budgets(plan) => health::budgets(st, plan, at, o),
        Msg::Spent {
            profile,
            day,
            counts,
        } => health::spent(st, &profile, day, &counts, at, o),
        Msg::BeginShutdown => st.shutting_down = true,
        Msg::Save => {
            o.push(Action::Save);
            o.push(Action::Reply(Reply::Yes(true)));
        }
    }
    out
}

/// Does this move mean the profile's login was just used (a fresh login
/// when its child is ready, saved when a ready one stops)? The keep-alive
/// clock restarts from such a move.
pub fn counts_as_ran(from: &Phase, ev: &Event) -> bool {
    matches!(ev, Event::BecameReady)
        || matches!(
            (from, ev),
            (Phase::Ready { .. } | Phase::Draining { .. }, Event::Stop(_))
        )
}

/// Move slot `slot` through `ev`; a refused move changes nothing. A spawn
/// starts a new generation. The dispatcher hears of every move.
fn moved(st: &mut State, slot: usize, ev: &Event, at: &At, out: &mut Out) {
    let Some(s) = st.slots.get_mut(slot) else {
        out.push(Action::Reply(Reply::Moved {
            ok: false,
            generation: 0,
            settle: None,
        }));
        return;
    };
    let Some(next) = s.state.next(ev) else {
        let line = format!("slot {slot}: refused move {ev:?} from {}", s.state.name());
        warn(out, line);
        let generation = s.generation;
        out.push(Action::Reply(Reply::Moved {
            ok: false,
            generation,
            settle: None,
        }));
        return;
    };
    let ran = counts_as_ran(&s.state, ev);
    if matches!(ev, Event::Spawned { .. }) {
        if s.generation > 0 {
            s.restarts += 1;
        }
        s.generation += 1;
        s.rss = None;
        s.served.clear();
        st.making_way.remove(&slot);
    }
    s.state = next;
    s.since = at.wall();
    let generation = s.generation;
    if let (true, Some(name)) = (ran, s.name().map(str::to_string)) {
        st.book.ran(&name, at.wall());
        out.push(Action::Save);
    }
    let ready = matches!(ev, Event::BecameReady);
    if let Some(t) = st.turn.as_mut().filter(|t| t.slot == slot) {
        t.ready |= ready;
    }
    out.push(Action::Route {
        slot,
        view: st.view(slot, at),
    });
    let settle = ready.then(|| turns::settle(st, slot)).flatten();
    out.push(Action::Reply(Reply::Moved {
        ok: true,
        generation,
        settle,
    }));
}

/// The book's cooldown of `name` as a lease records it.
pub fn cooling_of(book: &Book, name: &str, now: SystemTime) -> Option<(u64, String)> {
    let s = book.status(now).into_iter().find(|s| s.profile == name)?;
    Some((
        s.cooling_until_unix_ms?,
        s.reason.map(|r| r.to_string()).unwrap_or_default(),
    ))
}

/// The models `name` cools for, with their ends as instants.
fn cooling_instants(book: &Book, name: &str, at: &At) -> Vec<(String, Instant)> {
    book.models_cooling(name, at.wall())
        .into_iter()
        .map(|(m, t)| (m, at.instant_of(t)))
        .collect()
}

/// What `name`'s budgets leave a child of it, for the dispatcher.
fn allowance(
    book: &Book,
    name: &str,
    served: &BTreeMap<String, u64>,
    at: &At,
) -> Option<Arc<Allowance>> {
    book.budget()
        .allowance(name, at.wall(), |t| at.instant_of(t), served)
}

/// The models no profile can serve, until when (for the dispatcher), and
/// those no profile's tier allows. The candidates: every model some
/// profile cooled for, served today, or asked for lately.
pub fn blocked_models(book: &Book, at: &At) -> Blocked {
    let mut names = book.cooled_models();
    names.extend(book.budget().models_today());
    names.extend(at.asked.iter().cloned());
    names.extend(at.waited_for.iter().cloned());
    let mut b = Blocked::default();
    for m in names {
        if book.model_off_everywhere(&m, at.wall()) {
            b.off.insert(m);
        } else if let Some(t) = book.model_blocked(&m, at.wall()) {
            b.until.insert(m, at.instant_of(t));
        }
    }
    b
}

/// What `/ready` and the admin status say a profile is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ProfileState {
    Running,
    Queued,
    Cooling,
    NeedsLogin,
    Disabled,
}

impl ProfileState {
    /// The precedence of a profile's states: an operator's disable over a
    /// needed login over running over cooling over queued.
    pub fn of(disabled: bool, needs_login: bool, running: bool, cooling: bool) -> ProfileState {
        if disabled {
            ProfileState::Disabled
        } else if needs_login {
            ProfileState::NeedsLogin
        } else if running {
            ProfileState::Running
        } else if cooling {
            ProfileState::Cooling
        } else {
            ProfileState::Queued
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            ProfileState::Running => "running",
            ProfileState::Queued => "queued",
            ProfileState::Cooling => "cooling",
            ProfileState::NeedsLogin => "needs_login",
            ProfileState::Disabled => "disabled",
        }
    }
}

impl std::fmt::Display for ProfileState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}
