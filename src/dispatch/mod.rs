//! The dispatcher: the one place that decides which child gets a request.
//!
//! It owns, behind one mutex and with no thread of its own, the route to
//! every ready child (slot, generation, port, profile, completions and other
//! requests in use) and the fleet-wide FIFO of completions waiting for a
//! child. A request leaves with a [`Ticket`]; dropping the ticket frees its
//! place and, in the same step, hands the child to the oldest waiter that
//! may use it, waking exactly that waiter (its own eventfd), so a freed child
//! never sits idle while someone waits and nobody polls.
//!
//! Completions (`Kind::Completion`) count against `MAX_INFLIGHT_PER_CHILD`
//! and wait when no ready child has a free place; everything else
//! (`Kind::Other`: GETs, models) goes to the least busy ready child at once
//! or is refused at once. The pool tells the dispatcher every slot change
//! ([`Dispatch::set_slot`]); a waiter is refused at once only when no child
//! can become ready any more.
//!
//! Models: a route whose profile cools for some models (published by the
//! pool) takes no request for those; a request for a model no profile can
//! serve until some time is refused at once with `Retry-After` (`models`),
//! one for a model no profile's tier allows with 403;
//! a route's budgets (an `Allowance`, published by the supervisor after
//! every counted answer) take no request for a model with none left, less
//! the requests for it in flight there, and among the routes that may take
//! a request for a budgeted model the one with the most left wins;
//! a waiter for a model only cooling routes could serve is reported to the
//! pool (`on_starved`), which may rotate a profile in that serves it. The
//! models asked for lately are the demand the pool reads.
//!
//! Runs on the HTTP worker threads that call it;
//! the lock is held only for bookkeeping, never across I/O or a wait: wakes
//! are signalled after it is released.

mod inner;
pub mod models;
mod ticket;
mod wake;

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::os::fd::RawFd;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use crossbeam_channel::Sender;

use crate::budget::{self, accounts::Allowance};
pub use models::Blocked;

use log::warn;
use serde::Serialize;

use inner::Spend;
pub use ticket::Ticket;
use wake::{Wake, Woke};

/// How many requests a child may serve and how long a request may wait.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Completions one child serves at once; 0 means no limit.
    pub per_child: usize,
    /// Completions that may wait at once; past it, refused.
    pub max_queue: usize,
    /// Longest wait in the queue.
    pub queue_timeout: Duration,
    /// How long a model asked for counts as in demand.
    pub demand_window: Duration,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            per_child: 1,
            max_queue: 512,
            queue_timeout: Duration::from_secs(120),
            demand_window: Duration::from_secs(600),
        }
    }
}

/// What a request is, for the dispatcher.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A completion (`POST` under `/v1/` other than cancel): limited, queued.
    Completion,
    /// Anything else: never limited, never queued.
    Other,
}

/// One child: a slot's generation (bumped at every spawn).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub struct ChildId {
    pub slot: usize,
    pub generation: u64,
}

impl fmt::Display for ChildId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "slot {} generation {}", self.slot, self.generation)
    }
}

/// What the pool tells the dispatcher about one slot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SlotView {
    /// Its child answers requests, except for the models its profile
    /// cools for (until when).
    Ready {
        generation: u64,
        port: u16,
        profile: String,
        cooling: Vec<(String, Instant)>,
        budget: Option<Arc<Allowance>>,
    },
    /// Its child takes no new requests; those in flight finish (a drain
    /// before a restart, a rotation or a cooldown). A child will come.
    Draining { generation: u64 },
    /// A child will come: idle, starting, or stopping before the next start.
    Coming,
    /// A child will come after a backoff ending at `until`.
    BackingOff { until: Instant },
    /// No child will come (stopped, or no profile to run).
    Gone,
}

/// What a request asks for.
#[derive(Debug, Clone)]
pub struct Want {
    /// The request's internal id: the key a cancel uses.
    pub id: u64,
    pub kind: Kind,
    /// The model a completion names, if it names one.
    pub model: Option<String>,
    /// A child the request must not go to (the one that just failed it).
    pub avoid: Option<ChildId>,
    /// The client's socket, watched for a hang-up while the request waits.
    /// Must stay open for the duration of the call.
    pub client: Option<RawFd>,
}

/// Why a request gets no child.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// `MAX_QUEUE` requests wait already.
    QueueFull {
        retry_after: u64,
    },
    /// No child freed up within `QUEUE_TIMEOUT_S`.
    QueueTimeout {
        waited: Duration,
        retry_after: u64,
    },
    /// No child is ready (for a request that does not wait), or none can
    /// become ready any more.
    NoChild {
        retry_after: u64,
    },
    /// Only the child to avoid exists and it stays.
    NoOtherChild,
    /// Every profile cools for this model (or used its budget for it) for
    /// `retry_after` seconds.
    ModelCooling {
        model: String,
        retry_after: u64,
    },
    /// No profile's tier allows this model.
    ModelOff {
        model: String,
    },
    ShuttingDown,
    /// Cancelled by `POST /v1/cancel/{id}` while waiting.
    Cancelled,
    /// The client hung up while waiting.
    ClientGone,
    /// The waiter could not be set up (no file descriptor left).
    Internal(String),
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::QueueFull { .. } => f.write_str("the request queue is full"),
            Refusal::QueueTimeout { waited, .. } => {
                write!(f, "no child freed up within {:.1?}", waited)
            }
            Refusal::NoChild { .. } => f.write_str("no ready child"),
            Refusal::NoOtherChild => f.write_str("no other child to try"),
            Refusal::ModelCooling { model, retry_after } => write!(
                f,
                "every account is out of quota or of today's budget for model {model} for {retry_after} s more"
            ),
            Refusal::ModelOff { model } => write!(
                f,
                "no account's tier allows model {model} (MODEL_BUDGETS_FILE)"
            ),
            Refusal::ShuttingDown => f.write_str("the coordinator is shutting down"),
            Refusal::Cancelled => f.write_str("cancelled while queued"),
            Refusal::ClientGone => f.write_str("the client went away while queued"),
            Refusal::Internal(why) => write!(f, "cannot queue the request: {why}"),
        }
    }
}

/// The suggested wait when nothing better is known, in seconds.
const DEFAULT_RETRY_AFTER: u64 = 5;

/// A ready child and what it is doing.
#[derive(Debug, Clone)]
struct Route {
    child: ChildId,
    port: u16,
    profile: String,
    /// Models its profile cools for, until when.
    cooling: Vec<(String, Instant)>,
    /// What its budgets have left (None: no budget applies).
    budget: Option<Arc<Allowance>>,
    /// Completions per budget line on this child: in flight, and served
    /// (the allowance says how many of those the book has counted).
    spending: Vec<inner::Spending>,
    completions: usize,
    others: usize,
}

#[derive(Debug, Clone)]
enum Slot {
    Open(Route),
    /// Still counted, never picked.
    Draining(Route),
    Coming,
    BackingOff {
        until: Instant,
    },
    Gone,
}

struct Waiter {
    id: u64,
    avoid: Option<ChildId>,
    model: Option<String>,
    since: Instant,
    wake: Arc<Wake>,
}

/// A waiter's fate, decided under the lock and collected by the waiter.
enum Decision {
    Granted(Grant),
    Refused(Refusal),
}

#[derive(Debug, Clone)]
struct Grant {
    child: ChildId,
    port: u16,
    profile: String,
    /// The budget line the request counts under, on that route.
    line: Option<String>,
}

/// Whether a waiter can still be served.
#[derive(Debug, PartialEq, Eq)]
enum Prospect {
    Some,
    OnlyAvoided,
    None,
}

struct Inner {
    slots: Vec<Slot>,
    queue: VecDeque<Waiter>,
    decided: HashMap<u64, Decision>,
    /// Where the search for the least busy child starts next, so equally
    /// busy children take turns.
    turn: usize,
    shutting_down: bool,
    models: models::Gate,
}

pub struct Dispatch {
    inner: Mutex<Inner>,
    limits: Limits,
    /// Hears of models waiters want that only cooling routes could serve.
    starved: OnceLock<Sender<String>>,
}

impl fmt::Debug for Dispatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Dispatch")
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

/// One slot as `/v1/queue` and `/ready` show it.
#[derive(Debug, Clone, Serialize)]
pub struct RouteView {
    pub slot: usize,
    pub state: &'static str,
    pub profile: Option<String>,
    pub generation: Option<u64>,
    pub completions: usize,
    pub others: usize,
}

/// The queue and the routes at one moment.
#[derive(Debug, Clone, Serialize)]
pub struct View {
    pub queue_length: usize,
    pub oldest_wait_ms: Option<u64>,
    pub max_inflight_per_child: usize,
    pub max_queue: usize,
    pub queue_timeout_s: u64,
    pub slots: Vec<RouteView>,
}

/// What `acquire` finds at once.
enum Now {
    Granted(Ticket),
    Queued(Arc<Wake>),
}

impl Dispatch {
    /// `slots` slots, each with a child coming.
    pub fn new(slots: usize, limits: Limits) -> Arc<Dispatch> {
        Arc::new(Dispatch {
            inner: Mutex::new(Inner {
                slots: vec![Slot::Coming; slots],
                queue: VecDeque::new(),
                decided: HashMap::new(),
                turn: 0,
                shutting_down: false,
                models: Default::default(),
            }),
            limits,
            starved: OnceLock::new(),
        })
    }

    /// Send the model of every waiter that only cooling routes could serve
    /// to `tx` (the pool rotates a profile in for it). The first call wins.
    pub fn on_starved(&self, tx: Sender<String>) {
        let _ = self.starved.set(tx);
    }

    /// Until when no profile can serve each model, and which no profile's
    /// tier allows (the supervisor's word).
    pub fn set_blocked(&self, blocked: Blocked) {
        let wakes = {
            let mut inner = self.lock();
            inner.models.set_blocked(blocked);
            inner.settle(&self.limits)
        };
        signal(wakes);
    }

    /// What `child`'s profile may serve now: the models it cools for and
    /// its budgets; ignored when the slot moved on. A request already
    /// waiting for a model this route no longer serves (it waited for a
    /// place that has now gone to the reset) is reported starved, as at
    /// its arrival.
    pub fn set_serves(
        &self,
        child: ChildId,
        cooling: Vec<(String, Instant)>,
        budget: Option<Arc<Allowance>>,
    ) {
        let (wakes, starved) = {
            let mut inner = self.lock();
            match inner.slots.get_mut(child.slot) {
                Some(Slot::Open(r) | Slot::Draining(r)) if r.child == child => {
                    r.cooling = cooling;
                    r.budget = budget;
                }
                _ => return,
            }
            let wakes = inner.settle(&self.limits);
            (wakes, inner.starved_waiters(Instant::now()))
        };
        signal(wakes);
        if let Some(tx) = self.starved.get() {
            for m in starved {
                // Unbounded: never blocks.
                let _ = tx.send(m);
            }
        }
    }

    /// The models asked for within the demand window, sorted.
    pub fn demand(&self) -> Vec<String> {
        self.lock()
            .models
            .demand(self.limits.demand_window, Instant::now())
    }

    /// The models the waiting requests ask for.
    pub fn waiting_models(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .lock()
            .queue
            .iter()
            .filter_map(|w| w.model.clone())
            .collect();
        v.sort();
        v.dedup();
        v
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // Every update under this lock completes before it is released and
        // none can panic halfway, so a poisoned lock is still coherent.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The pool's report of slot `slot`: opens, replaces or closes its route.
    /// A new route starts empty; tickets of an older generation no longer
    /// count anywhere.
    pub fn set_slot(&self, slot: usize, view: SlotView) {
        let wakes = {
            let mut inner = self.lock();
            let Some(s) = inner.slots.get_mut(slot) else {
                return;
            };
            *s = match view {
                SlotView::Ready {
                    generation,
                    port,
                    profile,
                    cooling,
                    budget,
                } => Slot::Open(Route {
                    child: ChildId { slot, generation },
                    port,
                    profile,
                    cooling,
                    budget,
                    spending: Vec::new(),
                    completions: 0,
                    others: 0,
                }),
                SlotView::Draining { generation } => match std::mem::replace(s, Slot::Coming) {
                    Slot::Open(r) | Slot::Draining(r) if r.child.generation == generation => {
                        Slot::Draining(r)
                    }
                    _ => Slot::Coming,
                },
                SlotView::Coming => Slot::Coming,
                SlotView::BackingOff { until } => Slot::BackingOff { until },
                SlotView::Gone => Slot::Gone,
            };
            inner.settle(&self.limits)
        };
        signal(wakes);
    }

    /// Stop sending requests to `child` (it is being evicted); its slot
    /// counts as coming. Ignored if the slot has moved on already.
    pub fn close(&self, child: ChildId) {
        let wakes = {
            let mut inner = self.lock();
            match inner.slots.get(child.slot) {
                Some(Slot::Open(r)) if r.child == child => {
                    inner.slots[child.slot] = Slot::Coming;
                }
                _ => return,
            }
            inner.settle(&self.limits)
        };
        signal(wakes);
    }

    /// No request gets a child any more; every waiter is refused.
    pub fn shut(&self) {
        let wakes = {
            let mut inner = self.lock();
            inner.shutting_down = true;
            inner.settle(&self.limits)
        };
        signal(wakes);
    }

    /// A queued request with internal id `id` leaves the queue, refused as
    /// cancelled. False when no such request waits.
    pub fn cancel(&self, id: u64) -> bool {
        let wake = {
            let mut inner = self.lock();
            let Some(i) = inner.queue.iter().position(|w| w.id == id) else {
                return false;
            };
            let w = inner.queue.remove(i).expect("index found above");
            inner
                .decided
                .insert(id, Decision::Refused(Refusal::Cancelled));
            w.wake
        };
        wake.signal();
        true
    }

    /// A child for `want`: at once if one has a free place, else (for a
    /// completion) after waiting in the queue up to the queue timeout.
    pub fn acquire(self: &Arc<Self>, want: Want) -> Result<Ticket, Refusal> {
        let started = Instant::now();
        match self.at_once(&want, started)? {
            Now::Granted(ticket) => Ok(ticket),
            Now::Queued(wake) => self.wait_turn(&want, &wake, started),
        }
    }

    /// A free place now, or the request's place in the queue (after
    /// telling of a starved model), or the refusal.
    fn at_once(self: &Arc<Self>, want: &Want, started: Instant) -> Result<Now, Refusal> {
        let model = want.model.as_deref();
        let starved;
        let wake = {
            let mut inner = self.lock();
            if inner.shutting_down {
                return Err(Refusal::ShuttingDown);
            }
            if let (Some(m), Kind::Completion) = (model, want.kind) {
                inner.models.asked(m, started);
                if inner.models.off(m) {
                    return Err(Refusal::ModelOff {
                        model: m.to_string(),
                    });
                }
                if let Some(t) = inner.models.blocked(m, started) {
                    return Err(Refusal::ModelCooling {
                        model: m.to_string(),
                        retry_after: models::secs_until(t, started),
                    });
                }
            }
            if let Some(g) = inner.take(&self.limits, want.kind, want.avoid, model) {
                return Ok(Now::Granted(Ticket::new(self.clone(), g, want.kind)));
            }
            if want.kind == Kind::Other {
                return Err(Refusal::NoChild {
                    retry_after: inner.retry_after(),
                });
            }
            match inner.prospect(want.avoid) {
                Prospect::Some => {}
                Prospect::OnlyAvoided => return Err(Refusal::NoOtherChild),
                Prospect::None => {
                    return Err(Refusal::NoChild {
                        retry_after: DEFAULT_RETRY_AFTER,
                    })
                }
            }
            if inner.queue.len() >= self.limits.max_queue {
                return Err(Refusal::QueueFull {
                    retry_after: inner.retry_after(),
                });
            }
            let wake = match Wake::new() {
                Ok(w) => Arc::new(w),
                Err(e) => {
                    warn!("cannot queue a request: {e}");
                    return Err(Refusal::Internal(e.to_string()));
                }
            };
            inner.queue.push_back(Waiter {
                id: want.id,
                avoid: want.avoid,
                model: want.model.clone(),
                since: started,
                wake: wake.clone(),
            });
            starved = model.is_some_and(|m| inner.starved_for(m, started));
            wake
        };
        if starved {
            if let (Some(tx), Some(m)) = (self.starved.get(), model) {
                // Unbounded: never blocks.
                let _ = tx.send(m.to_string());
            }
        }
        Ok(Now::Queued(wake))
    }

    /// Wait in the queue for a place, up to the queue timeout; a client
    /// that leaves meanwhile gives its place up.
    fn wait_turn(
        self: &Arc<Self>,
        want: &Want,
        wake: &Wake,
        started: Instant,
    ) -> Result<Ticket, Refusal> {
        let model = want.model.as_deref();
        let deadline = started + self.limits.queue_timeout;
        loop {
            // A route's cooldown of our model ends without any event: look
            // again then.
            let until = match model {
                Some(m) => self
                    .next_cooling_end(m)
                    .map_or(deadline, |t| t.min(deadline)),
                None => deadline,
            };
            let woke = wake.wait(want.client, until);
            let mut inner = self.lock();
            if let Some(d) = inner.decided.remove(&want.id) {
                drop(inner);
                return match d {
                    Decision::Granted(g) => {
                        let ticket = Ticket::new(self.clone(), g, want.kind);
                        if woke == Woke::ClientGone {
                            // Granted as the client left: the place goes
                            // straight to the next waiter.
                            drop(ticket);
                            return Err(Refusal::ClientGone);
                        }
                        Ok(ticket)
                    }
                    Decision::Refused(r) => Err(r),
                };
            }
            match woke {
                Woke::Signalled => continue,
                Woke::ClientGone => {
                    inner.queue.retain(|w| w.id != want.id);
                    return Err(Refusal::ClientGone);
                }
                Woke::TimedOut => {
                    if Instant::now() < deadline {
                        let wakes = inner.settle(&self.limits);
                        drop(inner);
                        signal(wakes);
                        continue;
                    }
                    inner.queue.retain(|w| w.id != want.id);
                    return Err(Refusal::QueueTimeout {
                        waited: started.elapsed(),
                        retry_after: inner.retry_after(),
                    });
                }
            }
        }
    }

    /// The earliest end of a route's cooldown of `model`.
    /// (or of a route's budget for it: its reset).
    fn next_cooling_end(&self, model: &str) -> Option<Instant> {
        let inner = self.lock();
        let now = Instant::now();
        let cooled = models::next_end(
            inner.slots.iter().filter_map(|s| match s {
                Slot::Open(r) => Some(r.cooling.as_slice()),
                _ => None,
            }),
            model,
            now,
        );
        let reset = inner
            .slots
            .iter()
            .filter_map(|s| match s {
                Slot::Open(r) => match r.take(model, now) {
                    budget::accounts::Take::Until(t) => Some(t),
                    _ => None,
                },
                _ => None,
            })
            .min();
        cooled.into_iter().chain(reset).min()
    }

    /// A ticket's place is free again: the child goes to the next waiter.
    fn release(&self, child: ChildId, kind: Kind, line: Option<&str>, served: bool) {
        let wakes = {
            let mut inner = self.lock();
            match inner.slots.get_mut(child.slot) {
                Some(Slot::Open(r) | Slot::Draining(r)) if r.child == child => {
                    match kind {
                        Kind::Completion => r.completions = r.completions.saturating_sub(1),
                        Kind::Other => r.others = r.others.saturating_sub(1),
                    }
                    if let Some(l) = line {
                        r.spent(l, if served { Spend::Served } else { Spend::Back });
                    }
                }
                // The route closed or moved on: the ticket counts nowhere.
                _ => return,
            }
            inner.settle(&self.limits)
        };
        signal(wakes);
    }

    /// Ready children now: (slot, api port, profile), for the cancel fan-out.
    pub fn ready(&self) -> Vec<(usize, u16, String)> {
        self.lock()
            .slots
            .iter()
            .filter_map(|s| match s {
                Slot::Open(r) => Some((r.child.slot, r.port, r.profile.clone())),
                _ => None,
            })
            .collect()
    }

    /// Requests in use of each slot's current child (0 when not ready).
    pub fn in_flight(&self) -> Vec<usize> {
        self.lock()
            .slots
            .iter()
            .map(|s| match s {
                Slot::Open(r) | Slot::Draining(r) => r.completions + r.others,
                _ => 0,
            })
            .collect()
    }

    /// Requests waiting in the queue now.
    pub fn waiting(&self) -> usize {
        self.lock().queue.len()
    }

    pub fn view(&self) -> View {
        let inner = self.lock();
        let now = Instant::now();
        View {
            queue_length: inner.queue.len(),
            oldest_wait_ms: inner
                .queue
                .front()
                .map(|w| now.duration_since(w.since).as_millis() as u64),
            max_inflight_per_child: self.limits.per_child,
            max_queue: self.limits.max_queue,
            queue_timeout_s: self.limits.queue_timeout.as_secs(),
            slots: inner
                .slots
                .iter()
                .enumerate()
                .map(|(i, s)| match s {
                    Slot::Open(r) => RouteView {
                        slot: i,
                        state: "ready",
                        profile: Some(r.profile.clone()),
                        generation: Some(r.child.generation),
                        completions: r.completions,
                        others: r.others,
                    },
                    other => RouteView {
                        slot: i,
                        state: match other {
                            Slot::Draining(_) => "draining",
                            Slot::BackingOff { .. } => "backoff",
                            Slot::Gone => "gone",
                            _ => "coming",
                        },
                        profile: None,
                        generation: None,
                        completions: 0,
                        others: 0,
                    },
                })
                .collect(),
        }
    }
}

fn signal(wakes: Vec<Arc<Wake>>) {
    for w in wakes {
        w.signal();
    }
}

#[cfg(test)]
mod tests;
