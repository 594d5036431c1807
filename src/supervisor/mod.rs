//! The supervisor: the one owner of which profile runs where. Its thread
//! owns the slots, the rotation queue, the profile book, the leases held
//! and the keep-alive turns ([`core::State`]); everything reaches it as a
//! typed message ([`msg::Msg`] through a [`Handle`], the proxy's verdicts
//! and the dispatcher's starved models on channels of their own, the
//! keep-alive clock on a timer). For each, the pure [`core::handle`]
//! decides and this thread carries out the actions: it tells the
//! dispatcher of routes, the watchers of commands, the leaser of released
//! leases, saves the book, logs. After each change it publishes an
//! `Arc<Snapshot>` for probes, metrics, the page and `ctl`.
//!
//! Runs on the thread "supervisor". It must not wait on a child, a
//! watcher or the network: it only sends on unbounded channels, takes the
//! dispatcher's lock for bookkeeping, and writes the book's file.

pub mod core;
mod handle;
pub mod msg;
pub mod outcome;
pub mod snapshot;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use crossbeam_channel::{never, select, Receiver, Sender};
use log::{info, warn};

pub use self::core::Settings;
pub use handle::{Envelope, Handle};
pub use msg::{Cmd, Then};
pub use snapshot::{ProfileSnapshot, Snapshot, View};

use self::core::{Action, At, State};
use crate::book::{self, Answer};
use crate::dispatch::Dispatch;
use crate::fleet::{Release, Stats};
use crate::keepalive::{self, decide};
use crate::proxy::verdict;
use msg::{Msg, Reply};

/// What the supervisor thread is wired to.
pub struct Wiring {
    pub dispatch: Arc<Dispatch>,
    /// One per slot, to its watcher.
    pub cmds: Vec<Sender<Cmd>>,
    /// Where the book is saved; None: not saved (tests).
    pub store: Option<PathBuf>,
    /// With leasing: where released leases go, and the leaser's figures.
    pub leases: Option<(Sender<Release>, Arc<Stats>)>,
    /// The proxy's verdicts, one per answer.
    pub outcomes: Receiver<verdict::Outcome>,
    /// The models waiters starve for, from the dispatcher.
    pub starved: Receiver<String>,
    /// Closed to stop the thread (after the watchers are done).
    pub stop: Receiver<()>,
}

/// How long an answer's counts may wait to be published: answers come at
/// the proxy's rate, and a copy of the state for each would be work on
/// every request for figures nobody reads that fast.
const COUNTS_LAG: Duration = Duration::from_millis(50);

/// The running supervisor.
pub struct Supervisor {
    state: State,
    w: Wiring,
    published: handle::Published,
    /// Since when the state has changes not yet published (only answers'
    /// counts wait; every other change is published at once).
    unpublished: Option<Instant>,
    /// The keep-alive look last held back (logged once per change).
    held: Option<(String, decide::Hold)>,
}

/// Start the supervisor thread over `state`. Returns its handle (clone it
/// for every thread that needs it) and the thread.
pub fn spawn(state: State, w: Wiring) -> std::io::Result<(Handle, JoinHandle<()>)> {
    let (tx, rx) = crossbeam_channel::unbounded();
    let first = Arc::new(Snapshot {
        state: state.clone(),
        leases: w.leases.as_ref().map(|(_, s)| s.clone()),
    });
    let published = Arc::new(Mutex::new(first));
    let h = Handle::new(tx, published.clone(), w.dispatch.clone(), state.slots.len());
    let mut sup = Supervisor {
        state,
        w,
        published,
        unpublished: None,
        held: None,
    };
    let thread = std::thread::Builder::new()
        .name("supervisor".into())
        .spawn(move || sup.run(rx))?;
    Ok((h, thread))
}

impl Supervisor {
    fn run(&mut self, rx: Receiver<Envelope>) {
        let ticking = self.state.settings.keepalive.on();
        let mut next_look = Instant::now();
        loop {
            // One deadline, no timer channel: this loop turns once per
            // answer, and allocates nothing to wait.
            let look = ticking.then_some(next_look);
            let publish = self.unpublished.map(|since| since + COUNTS_LAG);
            let deadline = match (look, publish) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            let wait = deadline.map_or(Duration::from_secs(3600), |d| {
                d.saturating_duration_since(Instant::now())
            });
            let env = select! {
                recv(self.w.stop) -> _ => return,
                recv(rx) -> e => match e {
                    Ok(e) => e,
                    Err(_) => return,
                },
                recv(self.w.outcomes) -> o => match o.map(|o| self.of_verdict(&o)) {
                    Ok(Some(msg)) => Envelope { msg, reply: None },
                    Ok(None) => continue,
                    // The proxy is gone: no more answers (and no spinning).
                    Err(_) => {
                        self.w.outcomes = never();
                        continue;
                    }
                },
                recv(self.w.starved) -> m => match m {
                    Ok(m) => Envelope { msg: Msg::Starved(m), reply: None },
                    Err(_) => {
                        self.w.starved = never();
                        continue;
                    }
                },
                default(wait) => {
                    let now = Instant::now();
                    if publish.is_some_and(|p| p <= now) {
                        self.publish();
                    }
                    if look.is_none_or(|l| l > now) {
                        continue;
                    }
                    Envelope { msg: Msg::Tick, reply: None }
                }
            };
            if let Some(Reply::Look(next)) = self.one(env) {
                next_look = Instant::now() + next;
            }
        }
    }

    /// A verdict from the proxy as a message: those that came at once
    /// through `Handle::report_now` are not counted twice.
    fn of_verdict(&self, o: &verdict::Outcome) -> Option<Msg> {
        if let verdict::Verdict::EmptyAnswer(_) = o.verdict {
            crate::metrics::empty_answer(&o.profile);
        }
        if outcome::at_once(&o.verdict) {
            return None;
        }
        let out = outcome::of_verdict(o.child, &o.verdict, o.model.as_deref())?;
        Some(Msg::Outcome(out))
    }

    /// Handle one message: decide, carry out, publish, answer.
    fn one(&mut self, env: Envelope) -> Option<Reply> {
        let at = self.facts(&env.msg);
        // A served or empty answer only counts (its verdict, when it has
        // one, comes with actions): it may wait to be published.
        let counts_only = matches!(&env.msg, Msg::Outcome(_)) && env.reply.is_none();
        let actions = self::core::handle(&mut self.state, env.msg, &at);
        let save = actions.contains(&Action::Save);
        // Readers see every change before anything is said of it (a log
        // line, a reply); answers' counts within `COUNTS_LAG`.
        if counts_only && !save {
            self.unpublished.get_or_insert_with(Instant::now);
        } else {
            self.publish();
        }
        let mut reply = None;
        for a in actions {
            match a {
                Action::Reply(r) => reply = Some(r),
                a => self.carry_out(a),
            }
        }
        if save {
            self.save(&at);
        }
        if let Some(tx) = env.reply {
            // An asker of a message with no answer of its own is told it
            // was handled.
            let _ = tx.send(reply.clone().unwrap_or(Reply::Yes(true)));
        }
        reply
    }

    /// The instant, and what the dispatcher counts, for a message whose
    /// decision reads them (read apart: the two never share a lock).
    fn facts(&self, msg: &Msg) -> At {
        let mut at = At::new(SystemTime::now(), Instant::now());
        let wants = match msg {
            Msg::Next { .. } | Msg::Starved(_) | Msg::Tick | Msg::Budgets(_) => true,
            // A served answer decides nothing, unless it uses the last of a
            // budget; an empty or exhausted one may cool a model. Both read
            // the demand.
            Msg::Outcome(o) => {
                !matches!(o.answer, Answer::Served) || self.state.book.budget().is_on()
            }
            _ => false,
        };
        if wants {
            let d = &self.w.dispatch;
            at.asked = d.demand();
            at.waited_for = d.waiting_models();
            if let Msg::Tick = msg {
                at.in_flight = d.in_flight();
                at.waiting = d.waiting();
            }
        }
        at
    }

    fn carry_out(&mut self, a: Action) {
        let d = &self.w.dispatch;
        match a {
            Action::Route { slot, view } => d.set_slot(slot, view),
            Action::Close(child) => d.close(child),
            Action::Serves {
                child,
                cooling,
                budget,
            } => d.set_serves(child, cooling, budget),
            Action::BudgetAlert(text) => {
                crate::events::record(crate::events::Kind::ModelBudget, None, None, text)
            }
            Action::Tell { slot, cmd } => {
                if let Some(tx) = self.w.cmds.get(slot) {
                    let _ = tx.send(cmd);
                }
            }
            Action::Release(r) => {
                if let Some((tx, _)) = &self.w.leases {
                    // Unbounded: never blocks.
                    let _ = tx.send(r);
                }
            }
            Action::Log { warn: true, line } => warn!("{line}"),
            Action::Log { warn: false, line } => info!("{line}"),
            Action::Event {
                kind,
                slot,
                profile,
                text,
            } => crate::events::record(kind, slot, profile.as_deref(), text),
            Action::TurnBegan(t, name) => keepalive::note_begin(&t, &name),
            Action::TurnEnded(t) => keepalive::note_end(Some(t)),
            Action::Look(look) => keepalive::log_look(&look, &mut self.held),
            Action::Reply(_) | Action::Save => {}
        }
    }

    /// Save the book; every change worth saving may change which models
    /// can be served, so the dispatcher hears of those nobody serves.
    fn save(&self, at: &At) {
        let blocked = self::core::blocked_models(&self.state.book, at);
        self.w.dispatch.set_blocked(blocked);
        let Some(path) = &self.w.store else { return };
        if let Err(e) = book::store::save(path, self.state.book.entries()) {
            warn!("cannot save the profile state to {}: {e}", path.display());
        }
    }

    fn publish(&mut self) {
        self.unpublished = None;
        let snap = Arc::new(Snapshot {
            state: self.state.clone(),
            leases: self.w.leases.as_ref().map(|(_, s)| s.clone()),
        });
        *self.published.lock().unwrap_or_else(|p| p.into_inner()) = snap;
    }
}
