//! Watching one running child until its end: its exit, its `/health`
//! until ready, its log's account signs, its memory and age, the periodic
//! write-back, and the supervisor's commands (evict, drain, lease lost).
//!
//! Runs on the slot's watcher thread. What it sees goes to the supervisor
//! (slot moves, sign outcomes, measured memory); how a drain ends is the
//! only thing it decides (when nothing is in flight, or at its bound).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crossbeam_channel::{after, never, select, Receiver};
use log::{info, warn};

use super::launch;
use super::run::{note_writeback, Ending, Started};
use super::Watcher;
use crate::dispatch::ChildId;
use crate::hydrate::Profile;
use crate::metrics;
use crate::process::child::Exit;
use crate::process::logsigns::Sign;
use crate::process::sessions::Sessions;
use crate::recycle;
use crate::slot::{Event, StopReason};
use crate::supervisor::msg::Msg;
use crate::supervisor::{outcome, Cmd, Then};

/// How often a starting child's /health is asked.
const READY_POLL: Duration = Duration::from_millis(20);
/// The same account sign again within this is the same event (the real
/// child logs two lines per quota round).
const SIGN_REPEAT: Duration = Duration::from_secs(10);
/// How often a draining slot looks at its requests in flight.
const DRAIN_POLL: Duration = Duration::from_millis(10);
/// How often a ready child's own sessions (its browser) are looked at.
const SESSION_LOOK: Duration = Duration::from_millis(500);

/// What one watch keeps between its wake-ups.
struct Watch {
    /// Set once a drain begins: what follows it, and its bound.
    draining: Option<(StopReason, Then, Instant)>,
    /// When each exhaustion (of a model, or the whole account: None) was
    /// reported: the log repeats a sign every round.
    exhausted: HashMap<Option<String>, Instant>,
    /// A keep-alive turn's child: fires `keepalive::SETTLE` after ready.
    turn_over: Receiver<Instant>,
    care: recycle::Watch,
    /// Its browser, in a session of its own, found at readiness; and when
    /// to look whether it still runs.
    sessions: Sessions,
    session_looks: Receiver<Instant>,
    /// The child's tag (finds its processes).
    tag: String,
}

impl Watcher {
    pub(super) fn watch(
        &mut self,
        run: &mut Started,
        profile: &Profile,
        ready_at: &mut Option<Instant>,
    ) -> Ending {
        let name = run.copy.profile().to_string();
        let exits = run.child.exit_events().clone();
        let wb = &self.settings.writeback;
        let writebacks = if wb.enabled() {
            crossbeam_channel::tick(wb.interval())
        } else {
            never()
        };
        let url = format!("http://127.0.0.1:{}/health", self.ports.api);
        // Memory and age: a limit passed drains the slot (a command to ourselves).
        let tag = self.settings.identity.tag(self.slot, self.starts);
        let care = recycle::Watch::new(
            self.settings.recycle,
            self.slot,
            run.generation,
            run.child.pid(),
            tag.clone(),
            Instant::now(),
        );
        let (samples, age_due) = (care.samples(), care.age_due());
        let mut w = Watch {
            draining: None,
            exhausted: HashMap::new(),
            turn_over: never(),
            care,
            sessions: Sessions::default(),
            session_looks: never(),
            tag,
        };
        if let Some(Cmd::Drain { reason, then, .. }) = self.early.take() {
            // Asked for while it started: nothing is in flight yet.
            return Ending::Drained(reason, then);
        }
        loop {
            let tick = if let Some((_, _, until)) = &w.draining {
                after(DRAIN_POLL.min(until.saturating_duration_since(Instant::now())))
            } else if ready_at.is_none() {
                after(READY_POLL.min(run.deadline.saturating_duration_since(Instant::now())))
            } else {
                never()
            };
            let ended = select! {
                recv(exits) -> e => {
                    let e = e.unwrap_or(Exit::Unknown);
                    run.child.mark_exited(e);
                    Some(Ending::Exited(e))
                }
                recv(self.signals.shutdown) -> _ => Some(Ending::Stop(StopReason::Shutdown)),
                recv(writebacks) -> _ => {
                    note_writeback(self.slot, &name, &run.copy.tick());
                    None
                }
                recv(run.signs) -> sign => self.on_sign(sign.ok(), profile, run.generation, &mut w),
                recv(samples) -> _ => self.measure(&name, &mut w),
                recv(w.turn_over) -> _ => self.turn_done(&name, run.generation),
                recv(age_due) -> _ => self.measure(&name, &mut w),
                recv(w.session_looks) -> _ => w.sessions.ended().map(|pid| {
                    self.browser_ended(&name, run.child.pid(), pid, run.generation)
                }),
                recv(self.cmds) -> cmd => self.on_cmd(cmd.ok(), run, &name, ready_at, &mut w),
                recv(tick) -> _ => self.on_tick(run, &name, &url, ready_at, &mut w),
            };
            if let Some(e) = ended {
                return e;
            }
        }
    }

    /// A line of the child's log meant something for its account.
    fn on_sign(
        &mut self,
        sign: Option<Sign>,
        profile: &Profile,
        generation: u64,
        w: &mut Watch,
    ) -> Option<Ending> {
        match sign {
            Some(Sign::LoginNeeded) => {
                // Marked now: the older fork hangs after this line, and
                // its stop takes the whole grace.
                self.login_needed(profile);
                Some(Ending::Stop(StopReason::NeedsLogin))
            }
            Some(sign) => {
                self.account_ran_out(&profile.name, sign, generation, &mut w.exhausted);
                None
            }
            // The pumps ended: the exit follows.
            None => None,
        }
    }

    /// Measure memory and age: the figure goes to the supervisor, a limit
    /// passed drains the slot and starts the same profile again.
    fn measure(&mut self, name: &str, w: &mut Watch) -> Option<Ending> {
        let (rss, over) = w.care.look(name);
        let generation = w.care.generation();
        if let Some(bytes) = rss {
            self.sup.tell(Msg::Rss {
                slot: self.slot,
                generation,
                bytes,
            });
        }
        if let Some(reason) = over {
            let cmd = Cmd::Drain {
                generation: Some(generation),
                reason,
                then: Then::Restart,
            };
            self.sup.tell(Msg::Command {
                slot: self.slot,
                cmd,
            });
        }
        None
    }

    /// A keep-alive turn's child has settled: drained like any other (a
    /// request may have come).
    fn turn_done(&mut self, name: &str, generation: u64) -> Option<Ending> {
        let cmd = Cmd::Drain {
            generation: Some(generation),
            reason: StopReason::Turn(format!("keep-alive turn for {name} done")),
            then: Then::Rotate,
        };
        self.sup.tell(Msg::Command {
            slot: self.slot,
            cmd,
        });
        None
    }

    /// A command of the supervisor (stale ones, aimed at an earlier
    /// generation, change nothing).
    fn on_cmd(
        &mut self,
        cmd: Option<Cmd>,
        run: &Started,
        name: &str,
        ready_at: &Option<Instant>,
        w: &mut Watch,
    ) -> Option<Ending> {
        let generation = run.generation;
        match cmd {
            Some(Cmd::Evict {
                generation: g,
                reason,
            }) if g == generation => Some(Ending::Stop(StopReason::Evicted(reason))),
            // Even mid-drain: another replica may start it soon.
            Some(Cmd::LeaseLost { generation: g, why }) if g == generation => {
                Some(Ending::Stop(StopReason::LeaseLost(why)))
            }
            Some(Cmd::Drain {
                generation: g,
                reason,
                then,
            }) if g.is_none_or(|g| g == generation) && w.draining.is_none() => {
                if ready_at.is_none() {
                    // Nothing in flight before readiness.
                    return Some(Ending::Drained(reason, then));
                }
                info!(
                    "slot {}: draining profile {name} pid {} ({reason}): no new requests, {} in flight",
                    self.slot,
                    run.child.pid(),
                    self.in_flight()
                );
                self.moved(Event::Drain(reason.clone()));
                let until = Instant::now() + self.settings.drain_timeout;
                w.draining = Some((reason, then, until));
                None
            }
            Some(_) => None,
            None => Some(Ending::Stop(StopReason::Shutdown)),
        }
    }

    /// A drain's look at what is in flight, or a look at a starting
    /// child's `/health`.
    fn on_tick(
        &mut self,
        run: &Started,
        name: &str,
        url: &str,
        ready_at: &mut Option<Instant>,
        w: &mut Watch,
    ) -> Option<Ending> {
        if let Some((reason, then, until)) = &w.draining {
            let left = self.in_flight();
            if left == 0 || Instant::now() >= *until {
                if left > 0 {
                    warn!(
                        "slot {}: profile {name}: {left} requests still in flight after the drain bound; stopping it anyway",
                        self.slot
                    );
                }
                return Some(Ending::Drained(reason.clone(), *then));
            }
        } else if launch::is_ready(&self.http, url) {
            let (_, settle) = self.moved(Event::BecameReady);
            *ready_at = Some(Instant::now());
            // The deadline is the start plus the readiness timeout.
            let left = run.deadline.saturating_duration_since(Instant::now());
            metrics::child_ready(self.settings.ready_timeout.saturating_sub(left));
            info!(
                "slot {}: profile {name} pid {} is ready",
                self.slot,
                run.child.pid()
            );
            crate::events::record(
                crate::events::Kind::ChildReady,
                Some(self.slot),
                Some(name),
                "ready",
            );
            if let Some(settle) = settle {
                w.turn_over = after(settle);
            }
            w.sessions = Sessions::of_child(run.child.pid(), &w.tag);
            w.session_looks = w.sessions.looks(SESSION_LOOK);
        } else if Instant::now() >= run.deadline {
            return Some(Ending::Stop(StopReason::ReadyTimeout));
        }
        None
    }

    /// A process of the child (launcher `leader`) in a session of its own,
    /// its browser, ended while the launcher lives: the child is evicted
    /// before a request finds it broken.
    fn browser_ended(&self, name: &str, leader: i32, pid: i32, generation: u64) -> Ending {
        let why = format!(
            "its process {pid}, in a session of its own (its browser), ended while the launcher lives"
        );
        warn!("slot {}: profile {name} pid {leader}: {why}", self.slot);
        self.sup.evict(self.slot, generation, why.clone());
        Ending::Stop(StopReason::Evicted(why))
    }

    /// Requests the dispatcher has on this slot's child now.
    fn in_flight(&self) -> usize {
        self.sup
            .dispatch()
            .in_flight()
            .get(self.slot)
            .copied()
            .unwrap_or(0)
    }

    /// The child's log says its account ran out (`sign`): the first time,
    /// the supervisor hears of it (the profile cools; the slot drains and
    /// rotates); every time, the requests the child has not begun to
    /// answer are taken back, so another child serves them instead of this
    /// one holding them until its own deadline.
    fn account_ran_out(
        &self,
        name: &str,
        sign: Sign,
        generation: u64,
        reported: &mut HashMap<Option<String>, Instant>,
    ) {
        let child = ChildId {
            slot: self.slot,
            generation,
        };
        // Quotas and rate limits are per model: the one its request named,
        // when it ran one model; else the whole account's.
        let models = self.settings.requests.models_on(child);
        let model = match models.as_slice() {
            [one] => Some(one.as_str()),
            _ => None,
        };
        let key = model.map(str::to_string);
        let fresh = reported
            .get(&key)
            .is_none_or(|at| at.elapsed() > SIGN_REPEAT);
        if fresh {
            reported.insert(key, Instant::now());
            warn!(
                "slot {}: profile {name}: the child's log says {sign}{}",
                self.slot,
                model.map(|m| format!(" (model {m})")).unwrap_or_default()
            );
            // Asked, not told: the slot must be draining (when the profile
            // leaves) before the requests taken back below ask for a child.
            if let Some(o) = outcome::of_sign(child, sign, model) {
                self.sup.ask(Msg::Outcome(o));
            }
        }
        let n = self.settings.requests.reclaim(child);
        if n > 0 {
            info!(
                "slot {}: profile {name}: {n} requests taken back from its child, to be served elsewhere",
                self.slot
            );
        }
    }
}
