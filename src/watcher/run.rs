//! One child's life on a slot, from its start to its write-back: make the
//! profile's working copy, start the child (`launch`), watch it (`watch`),
//! stop its whole tree, write its profile back.
//!
//! Runs on the slot's watcher thread. It reports every move and every
//! sign to the supervisor and decides nothing about profiles, except what
//! only the hands can know: a write-back is skipped when the lease is lost
//! (only the holder writes a profile) or the login expired.

use std::time::{Duration, Instant};

use log::{error, info, warn};

use super::launch;
use super::{RunEnd, Turn, Watcher};
use crate::hydrate::Profile;
use crate::metrics;
use crate::process::child::{Child, Exit};
use crate::process::childlog::Listener;
use crate::process::logsigns::Sign;
use crate::slot::{Event, StopReason};
use crate::supervisor::msg::{Msg, Reply};
use crate::supervisor::Then;
use crate::writeback::{self, WorkingCopy};

/// How a child's watch ended.
pub(super) enum Ending {
    Stop(StopReason),
    /// Drained on request, then stopped.
    Drained(StopReason, Then),
    /// The child already exited; nothing to signal but stragglers.
    Exited(Exit),
}

/// A child that was started, and what its watch needs.
pub(super) struct Started {
    pub child: Child,
    pub copy: WorkingCopy,
    pub signs: crossbeam_channel::Receiver<Sign>,
    pub generation: u64,
    pub deadline: Instant,
}

impl Watcher {
    /// Start `profile` once its ports are free, watch it to its end, stop
    /// its whole tree, write it back.
    pub(super) fn run_one(&mut self, profile: &Profile) -> Turn {
        // Session cookies expire while a profile waits its turn too.
        if let Some(facts) = profile.login() {
            if let Some(why) = facts.expired {
                let line = format!(
                    "slot {}: not starting profile {}: {why}",
                    self.slot, profile.name
                );
                self.sup.ask(Msg::LoginNeeded {
                    profile: profile.name.clone(),
                    why,
                    content: facts.fingerprint,
                });
                info!("{line}");
                return Turn::NeedsLogin;
            }
        }
        let (shutdown, hurry) = (&self.signals.shutdown, &self.signals.hurry);
        let ports = self.ports;
        if let Some(busy) =
            launch::wait_ports_free(&self.settings, self.slot, &ports, shutdown, hurry)
        {
            return Turn::PortBusy(busy);
        }
        self.starts += 1;
        let Some(mut run) = self.start(profile) else {
            return Turn::Ran(RunEnd {
                ready_for: None,
                then: Then::Rotate,
                deliberate: false,
            });
        };
        let mut ready_at: Option<Instant> = None;
        // A lease lost between the supervisor's pick and the spawn sent its
        // stop to the old generation, drained at the start: ask again, so a
        // later loss reaches this generation's watch.
        let lease_ok = self.sup.ask(Msg::LeaseOk {
            profile: profile.name.clone(),
        });
        let ending = if lease_ok != Some(Reply::Yes(false)) {
            self.watch(&mut run, profile, &mut ready_at)
        } else {
            Ending::Stop(StopReason::LeaseLost("lost while the child started".into()))
        };
        self.finish(profile, run, ending, ready_at)
    }

    /// Make the working copy and start the child; None when it cannot be
    /// started (logged).
    fn start(&mut self, profile: &Profile) -> Option<Started> {
        // The child's own copy of its profile: hydration and reload never
        // touch it, and what the child writes into it is written back.
        let copy = match self.settings.writeback.start(profile, self.starts) {
            Ok(c) => c,
            Err(e) => {
                error!(
                    "slot {}: cannot make the working copy of profile {}: {e} (is AUTH_PROFILE_CACHE_DIR writable?)",
                    self.slot, profile.name
                );
                return None;
            }
        };
        let tag = self.settings.identity.tag(self.slot, self.starts);
        let (signs_tx, signs) = crossbeam_channel::unbounded();
        let ports = self.ports;
        let mut spec = launch::spec(&self.settings, self.slot, profile, copy.path(), &ports, tag);
        spec.listener = Some(Listener {
            signs: self.settings.signs.clone(),
            tx: signs_tx,
        });
        let child = match Child::spawn(&spec) {
            Ok(c) => c,
            Err(e) => {
                error!(
                    "slot {}: cannot start {} for profile {}: {e} (check CHILD_COMMAND and CHILD_WORKDIR)",
                    self.slot, spec.program, profile.name
                );
                return None;
            }
        };
        let pid = child.pid();
        metrics::child_started(self.slot);
        let deadline = Instant::now() + self.settings.ready_timeout;
        let (generation, _) = self.moved(Event::Spawned { pid, deadline });
        // Evictions aimed at earlier generations are stale; an operator's
        // drain that came meanwhile applies to this child.
        while let Ok(cmd) = self.cmds.try_recv() {
            if matches!(
                cmd,
                crate::supervisor::Cmd::Drain {
                    generation: None,
                    ..
                }
            ) {
                self.early = Some(cmd);
            }
        }
        info!(
            "slot {}: started profile {} pid {pid} on ports api {} stream {} camoufox {}",
            self.slot, profile.name, ports.api, ports.stream, ports.camoufox
        );
        crate::events::record(
            crate::events::Kind::ChildStart,
            Some(self.slot),
            Some(&profile.name),
            format!("pid {pid}"),
        );
        Some(Started {
            child,
            copy,
            signs,
            generation,
            deadline,
        })
    }

    /// The watch ended: stop the child's tree, write the profile back,
    /// and say how the run ended.
    fn finish(
        &mut self,
        profile: &Profile,
        run: Started,
        ending: Ending,
        ready_at: Option<Instant>,
    ) -> Turn {
        let Started {
            child, copy, signs, ..
        } = run;
        let pid = child.pid();
        let (reason, then) = match &ending {
            Ending::Stop(r) => (r.clone(), Then::Rotate),
            Ending::Drained(r, then) => (r.clone(), *then),
            Ending::Exited(e) => (StopReason::Exited(*e), Then::Rotate),
        };
        self.moved(Event::Stop(reason.clone()));
        metrics::child_ended(self.slot, reason.label());
        crate::events::child_ended(self.slot, &profile.name, &reason);
        if let StopReason::Evicted(_) = reason {
            metrics::evicted(self.slot, "child_failure");
        }
        match &ending {
            Ending::Exited(_) => warn!(
                "slot {}: profile {} pid {pid} {reason}",
                self.slot, profile.name
            ),
            Ending::Stop(_) | Ending::Drained(..) => info!(
                "slot {}: stopping profile {} pid {pid}: {reason}",
                self.slot, profile.name
            ),
        }
        self.stop(child, &profile.name);
        self.moved(Event::Gone);
        // The pumps are done: a login line printed just before the child
        // exited by itself has arrived now.
        // (Marked already when the watch saw the line: marking again now
        // would undo an operator's reset made during the stop.)
        let marked = matches!(reason, StopReason::NeedsLogin);
        let late = !marked && signs.try_iter().any(|s| s == Sign::LoginNeeded);
        if late {
            self.login_needed(profile);
        }
        let login_needed = marked || late;
        self.write_back(&profile.name, &copy, &reason, login_needed);
        if let Err(e) = copy.finish() {
            warn!(
                "slot {}: cannot remove the working copy of profile {}: {e}",
                self.slot, profile.name
            );
        }
        Turn::Ran(RunEnd {
            ready_for: ready_at.map(|t| t.elapsed()),
            then,
            // A lost lease or an expired login is no failure of the
            // child: no backoff, no start failure for it.
            deliberate: login_needed
                || matches!(
                    ending,
                    Ending::Drained(..) | Ending::Stop(StopReason::LeaseLost(_))
                ),
        })
    }

    /// Stop the child's whole tree (its grace, cut short by a hurry).
    fn stop(&self, child: Child, name: &str) {
        let pid = child.pid();
        let began = Instant::now();
        let (exit, stopped) = child.stop(self.settings.stop_grace, &self.signals.hurry);
        let took: Duration = began.elapsed();
        if stopped.killed > 0 {
            warn!(
                "slot {}: profile {name} pid {pid}: {} of its {} processes ignored SIGTERM and were killed after {took:.1?}",
                self.slot, stopped.killed, stopped.found
            );
        } else if stopped.found > 0 {
            info!(
                "slot {}: profile {name} pid {pid} stopped ({exit}): {} processes gone in {took:.1?}",
                self.slot, stopped.found
            );
        }
    }

    /// The child is gone, its shutdown write with it: the last state goes
    /// back, unless the lease is lost (only the holder writes a profile) or
    /// the login expired (a logged-out state would read as new content and
    /// end the profile's `needs_login`).
    fn write_back(&self, name: &str, copy: &WorkingCopy, reason: &StopReason, login_needed: bool) {
        if let StopReason::LeaseLost(_) = reason {
            info!(
                "slot {}: profile {name}: not writing back, its lease belongs to another replica now",
                self.slot
            );
        } else if login_needed {
            info!(
                "slot {}: profile {name}: not writing back, its login expired",
                self.slot
            );
        } else {
            note_writeback(self.slot, copy.profile(), &copy.on_stop());
        }
    }

    /// The child's log says `profile`'s login expired.
    pub(super) fn login_needed(&self, profile: &Profile) {
        self.sup.ask(Msg::LoginNeeded {
            profile: profile.name.clone(),
            why: "the child's log says its login expired".into(),
            content: profile.fingerprint().unwrap_or(0),
        });
    }
}

/// Log what a write-back did when it did something; skips and failures
/// are logged (once) by the write-back itself.
pub(super) fn note_writeback(slot: usize, profile: &str, outcome: &writeback::Outcome) {
    metrics::writeback(profile, outcome);
    if matches!(outcome, writeback::Outcome::Written) {
        info!("slot {slot}: profile {profile}: refreshed auth state written back");
        crate::events::record(
            crate::events::Kind::Writeback,
            Some(slot),
            Some(profile),
            "refreshed auth state written back",
        );
    }
}
