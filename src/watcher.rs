//! One watcher thread per slot: the only owner of that slot's child.
//!
//! Before each start it checks that the slot's three ports are free (a
//! foreign holder is named in the log and the slot backs off instead of
//! starting a child that cannot bind). It starts the slot's profile, polls
//! the child's `/health` until it is ready or the readiness deadline passes,
//! then blocks until the child exits or is evicted (also when a process of
//! its tree in a session of its own, its browser, ends). Every ending stops the
//! child's whole process tree (see `process::tree`; its launcher first, so
//! it can save its login) and rotates the slot:
//! the profile goes to the back of the queue, the front of the queue is
//! started on the same ports (after a crash-loop backoff). All waits select
//! on the shutdown channel, so a signal interrupts any of them; on shutdown
//! the child's tree is stopped with its grace period (cut short by the
//! "hurry" channel on a second signal) and the thread ends.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{after, select, Receiver, Sender};
use log::{error, info, warn};

use crate::book;
use crate::config::{Config, Ports};
use crate::dispatch::ChildId;
use crate::hydrate::Profile;
use crate::metrics;
use crate::pool::{Cmd, Pool, Then};
use crate::process::child::{self, Child, Exit};
use crate::process::childlog::Listener;
use crate::process::env;
use crate::process::logsigns::{Sign, Signs};
use crate::process::ports::{self, Busy};
use crate::process::sessions::Sessions;
use crate::process::tree::{self, Identity};
use crate::proxy::requests::Registry;
use crate::slot::{Backoff, Event, StopReason};
use crate::stagger::{self, Stagger};
use crate::writeback::{self, WorkingCopy, WriteBack};
use crate::{outbound, recycle};

/// How often a starting child's /health is asked.
const READY_POLL: Duration = Duration::from_millis(20);
/// Beyond the stop grace, how long a port held by our own earlier child
/// may take to come free.
const PORT_WAIT: Duration = Duration::from_secs(3);
const PORT_RECHECK: Duration = Duration::from_millis(50);
/// The shortest backoff after finding a port taken by a foreign process.
const BACKOFF_PORT_MIN: Duration = Duration::from_secs(1);
/// The same account sign again within this is the same event (the real
/// child logs two lines per quota round).
const SIGN_REPEAT: Duration = Duration::from_secs(10);
/// How often a draining slot looks at its requests in flight.
const DRAIN_POLL: Duration = Duration::from_millis(10);
/// How often a ready child's own sessions (its browser) are looked at.
const SESSION_LOOK: Duration = Duration::from_millis(500);

/// What the watcher needs from the configuration, copied out once.
#[derive(Clone)]
pub struct Settings {
    pub command: Vec<String>,
    pub workdir: PathBuf,
    pub log_dir: PathBuf,
    pub headless: bool,
    pub key_file: Option<PathBuf>,
    pub ready_timeout: Duration,
    pub stop_grace: Duration,
    /// The longest a drain waits for requests in flight (REQUEST_TIMEOUT_S).
    pub drain_timeout: Duration,
    /// Names this coordinator in every child's tag.
    pub identity: Identity,
    /// Working copies of profiles, and their write-back.
    pub writeback: WriteBack,
    /// What the child's log lines mean for its account.
    pub signs: Arc<Signs>,
    /// The requests running on children, to take back those of a child
    /// whose account ran out.
    pub requests: Arc<Registry>,
    /// The fleet's start gate (START_STAGGER_S), shared by every slot.
    pub stagger: Arc<Stagger>,
    /// When a running child is drained and started again (memory, age).
    pub recycle: recycle::Limits,
    /// Each profile's own outbound proxy (PROFILE_PROXIES_FILE).
    pub proxies: Arc<outbound::Proxies>,
}

impl Settings {
    pub fn new(
        cfg: &Config,
        key_file: Option<PathBuf>,
        identity: Identity,
        writeback: WriteBack,
        requests: Arc<Registry>,
        proxies: Arc<outbound::Proxies>,
        signs: Signs,
    ) -> Settings {
        Settings {
            command: cfg.child_command.clone(),
            workdir: cfg.child_workdir.clone(),
            log_dir: cfg.log_dir.clone(),
            headless: cfg.headless,
            key_file,
            ready_timeout: cfg.ready_timeout,
            stop_grace: cfg.stop_grace,
            drain_timeout: cfg.request_timeout,
            identity,
            writeback,
            signs: Arc::new(signs),
            requests,
            stagger: Arc::new(Stagger::new(cfg.start_stagger)),
            recycle: cfg.recycle,
            proxies,
        }
    }
}

/// Channels every watcher listens to: `shutdown` and `hurry` fire by being
/// closed (their senders dropped), which wakes every receiver at once.
#[derive(Clone)]
pub struct Signals {
    pub shutdown: Receiver<()>,
    pub hurry: Receiver<()>,
}

pub fn spawn(
    slot: usize,
    pool: Arc<Pool>,
    cmds: Receiver<Cmd>,
    settings: Settings,
    signals: Signals,
    done: Sender<()>,
) -> std::io::Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name(format!("slot{slot}"))
        .spawn(move || {
            // Dropped when the thread ends: once every watcher's `done` is
            // gone, the main thread's receiver reports it.
            let _done = done;
            let backoff = Backoff::new(settings.ready_timeout);
            Watcher {
                slot,
                pool,
                cmds,
                settings,
                signals,
                backoff,
                http: health_agent(),
                starts: 0,
                early: None,
            }
            .run()
        })
}

fn health_agent() -> ureq::Agent {
    crate::upstream::agent(
        crate::upstream::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_millis(1000)))
            .max_idle_connections_per_host(1)
            .build(),
    )
}

struct Watcher {
    slot: usize,
    pool: Arc<Pool>,
    cmds: Receiver<Cmd>,
    settings: Settings,
    signals: Signals,
    backoff: Backoff,
    http: ureq::Agent,
    /// Children started so far; numbers each child's tag.
    starts: u64,
    /// An operator's drain that arrived while the current child started.
    early: Option<Cmd>,
}

/// How one turn of the slot ended.
enum Turn {
    /// A child ran.
    Ran(RunEnd),
    /// Not started: a port of the slot is held by someone else.
    PortBusy(Busy),
    /// Not started: the profile's login expired (its cookies say so).
    NeedsLogin,
}

struct RunEnd {
    /// How long it was ready (None: never).
    ready_for: Option<Duration>,
    /// What the slot does next: the same profile again, or the next one.
    then: Then,
    /// Stopped on purpose (an operator, exhaustion), not by a failure: the
    /// crash-loop backoff does not grow.
    deliberate: bool,
}

/// How a child's watch ended.
enum Ending {
    Stop(StopReason),
    /// Drained on request, then stopped.
    Drained(StopReason, Then),
    /// The child already exited; nothing to signal but stragglers.
    Exited(Exit),
}

impl Watcher {
    fn run(mut self) {
        loop {
            if self.shutting_down() {
                self.pool.apply(self.slot, &Event::Shutdown);
                return;
            }
            self.take_early_commands();
            let Some(profile) = self.pool.current(self.slot) else {
                self.wait_for_a_profile();
                continue;
            };
            let shutdown = &self.signals.shutdown;
            if !stagger::wait_turn(
                &self.settings.stagger,
                self.slot,
                &profile.name,
                &self.pool,
                shutdown,
            ) {
                continue;
            }
            let end = match self.run_one(&profile) {
                Turn::Ran(end) => end,
                Turn::NeedsLogin => RunEnd {
                    ready_for: None,
                    then: Then::Rotate,
                    deliberate: true,
                },
                Turn::PortBusy(busy) => {
                    // The profile is not at fault: it keeps the slot and
                    // is tried again after the backoff.
                    let delay = self.backoff.after_end(None).max(BACKOFF_PORT_MIN);
                    error!(
                        "slot {}: not starting profile {}: {busy}; retrying in {delay:?}",
                        self.slot, profile.name
                    );
                    self.back_off(delay, busy.to_string());
                    continue;
                }
            };
            if self.shutting_down() {
                self.pool.apply(self.slot, &Event::Shutdown);
                return;
            }
            if !end.deliberate {
                self.pool.started(&profile.name, end.ready_for.is_some());
            }
            let delay = if end.deliberate {
                self.backoff.reset();
                Duration::ZERO
            } else {
                self.backoff.after_end(end.ready_for)
            };
            if end.then == Then::Restart {
                info!(
                    "slot {}: starting profile {} again",
                    self.slot, profile.name
                );
                continue;
            }
            let next = match end.then {
                Then::KeepAlive => self.pool.begin_turn(self.slot),
                _ => self.pool.rotate(self.slot),
            };
            if let Err(e) = self.pool.check_invariant() {
                error!("slot {}: profile invariant broken: {e}", self.slot);
            }
            let next_name = next.as_ref().map(|p| p.name.as_str()).unwrap_or("-");
            crate::events::record(
                crate::events::Kind::Rotation,
                Some(self.slot),
                next.as_ref().map(|p| p.name.as_str()),
                format!("{} -> {next_name}", profile.name),
            );
            if delay.is_zero() {
                info!(
                    "slot {}: rotating {} -> {next_name}",
                    self.slot, profile.name
                );
                continue;
            }
            warn!(
                "slot {}: rotating {} -> {next_name} after a {delay:?} backoff (repeated failures)",
                self.slot, profile.name
            );
            self.back_off(delay, "repeated failures".into());
        }
    }

    /// Commands that came while no child ran (during a backoff or a stop):
    /// an operator's rotation rotates now, before the next start; a restart
    /// is what happens next anyway; the rest aimed at a child that is gone.
    fn take_early_commands(&mut self) {
        while let Ok(cmd) = self.cmds.try_recv() {
            if let Cmd::Drain {
                generation: None,
                reason,
                then,
            } = cmd
            {
                if then != Then::Restart {
                    let next = match then {
                        Then::KeepAlive => self.pool.begin_turn(self.slot),
                        _ => self.pool.rotate(self.slot),
                    };
                    info!(
                        "slot {}: {reason} while no child ran: rotating to {} before the next start",
                        self.slot,
                        next.as_ref().map(|p| p.name.as_str()).unwrap_or("-")
                    );
                } else {
                    info!(
                        "slot {}: {reason} while no child ran: it starts next",
                        self.slot
                    );
                }
                self.backoff.reset();
            }
        }
    }

    /// No profile may run now (all cooling or disabled): wait, in state
    /// cooldown, until the first cooldown ends, something changes (a reset,
    /// an enable, a reload: `Cmd::Wake`) or shutdown.
    fn wait_for_a_profile(&mut self) {
        let wait = self.pool.next_eligible_in();
        let until = wait.map(|d| Instant::now() + d);
        self.pool.apply(self.slot, &Event::Cooldown { until });
        match wait {
            Some(d) => info!(
                "slot {}: every profile is cooling down or disabled; waiting {}s for the first cooldown to end",
                self.slot,
                d.as_secs()
            ),
            None if self.pool.leasing() => {}
            None => warn!(
                "slot {}: every profile is disabled or needs a login; waiting for an operator (enable, reset, or a reload with a new login)",
                self.slot
            ),
        }
        let timer = wait.map(after).unwrap_or_else(crossbeam_channel::never);
        if wait.is_none() && self.pool.leasing() {
            info!(
                "slot {}: waiting for the lease of a profile (the others run elsewhere or cool down)",
                self.slot
            );
        }
        select! {
            recv(self.signals.shutdown) -> _ => {}
            recv(self.cmds) -> cmd => {
                if cmd.is_err() {
                    // The pool is gone: only shutdown remains.
                    let _ = self.signals.shutdown.recv_timeout(Duration::from_secs(1));
                }
            }
            recv(timer) -> _ => {}
        }
        self.pool.apply(self.slot, &Event::CooldownOver);
    }

    /// Wait `delay` in state backoff (shown with `reason`), or until shutdown.
    fn back_off(&mut self, delay: Duration, reason: String) {
        let until = Instant::now() + delay;
        self.pool
            .apply(self.slot, &Event::Backoff { until, reason });
        select! {
            recv(self.signals.shutdown) -> _ => {}
            recv(after(delay)) -> _ => {}
        }
        self.pool.apply(self.slot, &Event::BackoffOver);
    }

    fn shutting_down(&self) -> bool {
        // The shutdown channel is closed, never sent on: a disconnect is the signal.
        matches!(
            self.signals.shutdown.try_recv(),
            Err(crossbeam_channel::TryRecvError::Disconnected)
        )
    }

    /// Start `profile` once its ports are free, watch it to its end, stop
    /// its whole tree.
    fn run_one(&mut self, profile: &Profile) -> Turn {
        // Session cookies expire while a profile waits its turn too.
        if let Some(facts) = profile.login() {
            if let Some(why) = facts.expired {
                info!(
                    "slot {}: not starting profile {}: {why}",
                    self.slot, profile.name
                );
                self.pool
                    .login_needed(&profile.name, &why, facts.fingerprint);
                return Turn::NeedsLogin;
            }
        }
        let ports = self.pool.ports(self.slot);
        if let Some(busy) = self.wait_ports_free(&ports) {
            return Turn::PortBusy(busy);
        }
        self.starts += 1;
        let failed = RunEnd {
            ready_for: None,
            then: Then::Rotate,
            deliberate: false,
        };
        // The child's own copy of its profile: hydration and reload never
        // touch it, and what the child writes into it is written back.
        let copy = match self.settings.writeback.start(profile, self.starts) {
            Ok(c) => c,
            Err(e) => {
                error!(
                    "slot {}: cannot make the working copy of profile {}: {e} (is AUTH_PROFILE_CACHE_DIR writable?)",
                    self.slot, profile.name
                );
                return Turn::Ran(failed);
            }
        };
        let tag = self.settings.identity.tag(self.slot, self.starts);
        let (signs_tx, signs) = crossbeam_channel::unbounded();
        let mut spec = self.spec(profile, copy.path(), &ports, tag);
        spec.listener = Some(Listener {
            signs: self.settings.signs.clone(),
            tx: signs_tx,
        });
        let mut child = match Child::spawn(&spec) {
            Ok(c) => c,
            Err(e) => {
                error!(
                    "slot {}: cannot start {} for profile {}: {e} (check CHILD_COMMAND and CHILD_WORKDIR)",
                    self.slot, spec.program, profile.name
                );
                return Turn::Ran(failed);
            }
        };
        let pid = child.pid();
        metrics::child_started(self.slot);
        let deadline = Instant::now() + self.settings.ready_timeout;
        self.pool
            .apply(self.slot, &Event::Spawned { pid, deadline });
        // Evictions aimed at earlier generations are stale; an operator's
        // drain that came meanwhile applies to this child.
        while let Ok(cmd) = self.cmds.try_recv() {
            if matches!(
                cmd,
                Cmd::Drain {
                    generation: None,
                    ..
                }
            ) {
                self.early = Some(cmd);
            }
        }
        let generation = self.pool.generation(self.slot);
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

        let mut ready_at: Option<Instant> = None;
        // A lease lost between `current` and the spawn sent its stop to the
        // old generation, drained above: look again, after the drain, so
        // a later loss reaches this generation's watch.
        let ending = if self.pool.lease_ok(&profile.name) {
            self.watch(
                &mut child,
                profile,
                &copy,
                &signs,
                generation,
                deadline,
                ports.api,
                &mut ready_at,
            )
        } else {
            Ending::Stop(StopReason::LeaseLost("lost while the child started".into()))
        };
        let (reason, then) = match &ending {
            Ending::Stop(r) => (r.clone(), Then::Rotate),
            Ending::Drained(r, then) => (r.clone(), *then),
            Ending::Exited(e) => (StopReason::Exited(*e), Then::Rotate),
        };
        self.pool.apply(self.slot, &Event::Stop(reason.clone()));
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
        let began = Instant::now();
        let (exit, stopped) = child.stop(self.settings.stop_grace, &self.signals.hurry);
        let took = began.elapsed();
        if stopped.killed > 0 {
            warn!(
                "slot {}: profile {} pid {pid}: {} of its {} processes ignored SIGTERM and were killed after {took:.1?}",
                self.slot, profile.name, stopped.killed, stopped.found
            );
        } else if stopped.found > 0 {
            info!(
                "slot {}: profile {} pid {pid} stopped ({exit}): {} processes gone in {took:.1?}",
                self.slot, profile.name, stopped.found
            );
        }
        self.pool.apply(self.slot, &Event::Gone);
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
        // The child is gone, its shutdown write with it: the last state goes
        // back, unless the lease is lost (only the holder writes a profile)
        // or the login expired (a logged-out state would read as new
        // content and end the profile's `needs_login`).
        if let StopReason::LeaseLost(_) = reason {
            info!(
                "slot {}: profile {}: not writing back, its lease belongs to another replica now",
                self.slot, profile.name
            );
        } else if login_needed {
            info!(
                "slot {}: profile {}: not writing back, its login expired",
                self.slot, profile.name
            );
        } else {
            note_writeback(self.slot, copy.profile(), &copy.on_stop());
        }
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

    /// The command line and environment of one start of `profile`, whose
    /// auth file for this start is `auth`.
    fn spec(
        &self,
        profile: &Profile,
        auth: &std::path::Path,
        ports: &Ports,
        tag: String,
    ) -> child::Spec {
        let mut args: Vec<String> = self.settings.command[1..].to_vec();
        args.extend([
            "--server-port".to_string(),
            ports.api.to_string(),
            "--stream-port".to_string(),
            ports.stream.to_string(),
            "--camoufox-debug-port".to_string(),
            ports.camoufox.to_string(),
            "--active-auth-json".to_string(),
            auth.display().to_string(),
        ]);
        if self.settings.headless {
            args.push("--headless".to_string());
        }
        let proxy = self.settings.proxies.of(&profile.name);
        let env = env::for_child(
            std::env::vars_os(),
            self.settings.key_file.as_deref(),
            &tag,
            proxy.as_ref().map(outbound::ProxyUrl::secret),
        );
        child::Spec {
            program: self.settings.command[0].clone(),
            args,
            env,
            workdir: self.settings.workdir.clone(),
            log_path: self.settings.log_dir.join(format!("{}.log", profile.name)),
            name: format!("slot{}", self.slot),
            tag,
            listener: None,
        }
    }

    /// None once the slot's three ports are free. A port held by a process
    /// of this slot's earlier children (a stop that gave up, or a socket
    /// still closing) is waited for, and such processes stopped again, up to
    /// a bound; a foreign holder is returned at once.
    fn wait_ports_free(&self, p: &Ports) -> Option<Busy> {
        let triple = [
            ("api", p.api),
            ("stream", p.stream),
            ("camoufox", p.camoufox),
        ];
        let deadline = Instant::now() + self.settings.stop_grace + PORT_WAIT;
        loop {
            let busy = ports::first_busy(&triple)?;
            let ours = busy
                .holder
                .as_ref()
                .and_then(|h| h.tag.clone())
                .filter(|t| self.settings.identity.is_slot_tag(t, self.slot));
            if busy.holder.is_some() && ours.is_none() {
                return Some(busy);
            }
            if Instant::now() >= deadline || self.shutting_down() {
                return Some(busy);
            }
            if let Some(tag) = ours {
                warn!(
                    "slot {}: {busy}, left by an earlier child of this slot; stopping it",
                    self.slot
                );
                tree::stop(
                    |scan| scan.child_tree(-1, &tag),
                    self.settings.stop_grace,
                    &self.signals.hurry,
                );
            }
            select! {
                recv(self.signals.shutdown) -> _ => {}
                recv(after(PORT_RECHECK)) -> _ => {}
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn watch(
        &mut self,
        child: &mut Child,
        profile: &Profile,
        copy: &WorkingCopy,
        signs: &Receiver<Sign>,
        generation: u64,
        deadline: Instant,
        api_port: u16,
        ready_at: &mut Option<Instant>,
    ) -> Ending {
        let name = copy.profile();
        let exits = child.exit_events().clone();
        let wb = &self.settings.writeback;
        let writebacks = if wb.enabled() {
            crossbeam_channel::tick(wb.interval())
        } else {
            crossbeam_channel::never()
        };
        let url = format!("http://127.0.0.1:{api_port}/health");
        // Memory and age: a limit passed drains the slot (a command to ourselves).
        let tag = self.settings.identity.tag(self.slot, self.starts);
        // Its browser, in a session of its own, found at readiness.
        let (mut sessions, mut session_looks) = (Sessions::default(), crossbeam_channel::never());
        let session_tag = tag.clone();
        let limits = self.settings.recycle;
        let mut care = recycle::Watch::new(
            limits,
            self.slot,
            generation,
            child.pid(),
            tag,
            Instant::now(),
        );
        let (samples, age_due) = (care.samples(), care.age_due());
        // Set once a drain begins: what follows it, and its bound.
        let mut draining: Option<(StopReason, Then, Instant)> = None;
        // When each exhaustion (of a model, or the whole account: None) was
        // reported: the log repeats a sign every round.
        let mut exhausted: HashMap<Option<String>, Instant> = HashMap::new();
        // A keep-alive turn's child: fires `keepalive::SETTLE` after ready.
        let mut turn_over = crossbeam_channel::never();
        if let Some(Cmd::Drain { reason, then, .. }) = self.early.take() {
            // Asked for while it started: nothing is in flight yet.
            return Ending::Drained(reason, then);
        }
        loop {
            let tick = if let Some((_, _, until)) = &draining {
                after(DRAIN_POLL.min(until.saturating_duration_since(Instant::now())))
            } else if ready_at.is_none() {
                after(READY_POLL.min(deadline.saturating_duration_since(Instant::now())))
            } else {
                crossbeam_channel::never()
            };
            select! {
                recv(exits) -> e => {
                    let e = e.unwrap_or(Exit::Unknown);
                    child.mark_exited(e);
                    return Ending::Exited(e);
                }
                recv(self.signals.shutdown) -> _ => return Ending::Stop(StopReason::Shutdown),
                recv(writebacks) -> _ => note_writeback(self.slot, name, &copy.tick()),
                recv(signs) -> sign => match sign {
                    Ok(Sign::LoginNeeded) => {
                        // Marked now: the older fork hangs after this line, and
                        // its stop takes the whole grace.
                        self.login_needed(profile);
                        return Ending::Stop(StopReason::NeedsLogin);
                    }
                    Ok(sign) => self.account_ran_out(name, sign, generation, &mut exhausted),
                    // The pumps ended: the exit follows.
                    Err(_) => {}
                },
                recv(samples) -> _ => care.look(&self.pool, name),
                recv(turn_over) -> _ => {
                    // Drained like any other (a request may have come).
                    self.pool.command(self.slot, Cmd::Drain {
                        generation: Some(generation),
                        reason: StopReason::Turn(format!("keep-alive turn for {name} done")),
                        then: Then::Rotate,
                    });
                }
                recv(age_due) -> _ => care.look(&self.pool, name),
                recv(session_looks) -> _ => if let Some(pid) = sessions.ended() {
                    return self.browser_ended(name, child.pid(), pid, generation);
                },
                recv(self.cmds) -> cmd => match cmd {
                    Ok(Cmd::Evict { generation: g, reason }) if g == generation => {
                        return Ending::Stop(StopReason::Evicted(reason));
                    }
                    // Even mid-drain: another replica may start it soon.
                    Ok(Cmd::LeaseLost { generation: g, why }) if g == generation => {
                        return Ending::Stop(StopReason::LeaseLost(why));
                    }
                    Ok(Cmd::Drain { generation: g, reason, then })
                        if g.is_none_or(|g| g == generation) && draining.is_none() =>
                    {
                        if ready_at.is_none() {
                            // Nothing in flight before readiness.
                            return Ending::Drained(reason, then);
                        }
                        info!(
                            "slot {}: draining profile {name} pid {} ({reason}): no new requests, {} in flight",
                            self.slot,
                            child.pid(),
                            self.pool.in_flight(self.slot)
                        );
                        self.pool.apply(self.slot, &Event::Drain(reason.clone()));
                        draining = Some((reason, then, Instant::now() + self.settings.drain_timeout));
                    }
                    Ok(_) => {}
                    Err(_) => return Ending::Stop(StopReason::Shutdown),
                },
                recv(tick) -> _ => {
                    if let Some((reason, then, until)) = &draining {
                        let left = self.pool.in_flight(self.slot);
                        if left == 0 || Instant::now() >= *until {
                            if left > 0 {
                                warn!(
                                    "slot {}: profile {name}: {left} requests still in flight after the drain bound; stopping it anyway",
                                    self.slot
                                );
                            }
                            return Ending::Drained(reason.clone(), *then);
                        }
                    } else if is_ready(&self.http, &url) {
                        *ready_at = Some(Instant::now());
                        (turn_over, sessions) = self.became_ready(name, child.pid(), deadline, &session_tag);
                        session_looks = sessions.looks(SESSION_LOOK);
                    } else if Instant::now() >= deadline {
                        return Ending::Stop(StopReason::ReadyTimeout);
                    }
                }
            }
        }
    }
}

impl Watcher {
    /// The child (launcher `leader`, tag `tag`) answered ready: recorded,
    /// and its keep-alive turn's settle timer (or never) and the processes
    /// of its tree in sessions of their own (its browser) returned.
    fn became_ready(
        &self,
        name: &str,
        leader: i32,
        deadline: Instant,
        tag: &str,
    ) -> (Receiver<Instant>, Sessions) {
        self.pool.apply(self.slot, &Event::BecameReady);
        // The deadline is the start plus the readiness timeout.
        let left = deadline.saturating_duration_since(Instant::now());
        metrics::child_ready(self.settings.ready_timeout.saturating_sub(left));
        info!("slot {}: profile {name} pid {leader} is ready", self.slot);
        let kind = crate::events::Kind::ChildReady;
        crate::events::record(kind, Some(self.slot), Some(name), "ready");
        let turn_over = match self.pool.turn_settle(self.slot) {
            Some(settle) => after(settle),
            None => crossbeam_channel::never(),
        };
        (turn_over, Sessions::of_child(leader, tag))
    }

    /// A process of the child (launcher `leader`) in a session of its own,
    /// its browser, ended while the launcher lives: the child is evicted
    /// before a request finds it broken.
    fn browser_ended(&self, name: &str, leader: i32, pid: i32, generation: u64) -> Ending {
        let why = format!(
            "its process {pid}, in a session of its own (its browser), ended while the launcher lives"
        );
        warn!("slot {}: profile {name} pid {leader}: {why}", self.slot);
        self.pool.evict(self.slot, generation, why.clone());
        Ending::Stop(StopReason::Evicted(why))
    }

    /// The child's log says `profile`'s login expired.
    fn login_needed(&self, profile: &Profile) {
        self.pool.login_needed(
            &profile.name,
            "the child's log says its login expired",
            profile.fingerprint().unwrap_or(0),
        );
    }

    /// The child's log says its account ran out (`sign`): the first time,
    /// the profile cools (the slot drains and rotates, see `Pool::report`);
    /// every time, the requests the child has not begun to answer are taken
    /// back, so another child serves them instead of this one holding them
    /// until its own deadline.
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
            let limit = match sign {
                Sign::RateLimit => book::Limit::RateLimit,
                _ => book::Limit::Quota,
            };
            self.pool.report(
                self.slot,
                generation,
                book::Answer::Exhausted {
                    retry_after: None,
                    limit,
                },
                model,
            );
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

/// Log what a write-back did when it did something; skips and failures
/// are logged (once) by the write-back itself.
fn note_writeback(slot: usize, profile: &str, outcome: &writeback::Outcome) {
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

/// A child is ready when /health answers 200 with `"status": "OK"`.
fn is_ready(agent: &ureq::Agent, url: &str) -> bool {
    let Ok(mut resp) = agent.get(url).call() else {
        return false;
    };
    if resp.status() != 200 {
        return false;
    }
    let Ok(body) = resp.body_mut().with_config().limit(64 * 1024).read_to_vec() else {
        return false;
    };
    serde_json::from_slice::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| v.get("status").and_then(|s| s.as_str()).map(|s| s == "OK"))
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    //! Eviction is driven here through `Pool::evict`, against a real
    //! watcher thread and real processes: the "child" is a few lines of
    //! Python that answer /health on the API port they are given.

    use super::*;
    use crate::config::PortPlan;
    use crate::slot::State;
    use std::net::TcpListener;

    const CHILD: &str = r#"
import sys, http.server
port = int(sys.argv[sys.argv.index("--server-port") + 1])
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = b'{"status": "OK"}'
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass
http.server.HTTPServer(("127.0.0.1", port), H).serve_forever()
"#;

    fn free_port() -> u16 {
        TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    }

    fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !cond() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    struct Rig {
        pool: Arc<Pool>,
        thread: Option<JoinHandle<()>>,
        shutdown: Option<crossbeam_channel::Sender<()>>,
        _hurry: crossbeam_channel::Sender<()>,
        dir: PathBuf,
    }

    /// One slot, profiles `a` and `b`, the watcher running the Python child.
    fn rig(name: &str) -> Rig {
        let dir = std::env::temp_dir().join(format!("aisp-watcher-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let profiles = ["a", "b"]
            .iter()
            .map(|n| {
                let path = dir.join(format!("{n}.json"));
                std::fs::write(&path, br#"{"cookies": []}"#).unwrap();
                Profile {
                    name: n.to_string(),
                    path,
                }
            })
            .collect();
        let plan = PortPlan {
            base_api: free_port(),
            base_stream: free_port(),
            base_camoufox: free_port(),
            step: 1,
        };
        let (pool, mut rxs) = Pool::new(profiles, 1, plan, Default::default());
        let (shutdown_tx, shutdown) = crossbeam_channel::bounded(0);
        let (hurry_tx, hurry) = crossbeam_channel::bounded(0);
        let settings = Settings {
            command: vec!["python3".into(), "-c".into(), CHILD.into()],
            workdir: dir.clone(),
            log_dir: dir.clone(),
            headless: true,
            key_file: None,
            ready_timeout: Duration::from_secs(30),
            stop_grace: Duration::from_secs(2),
            drain_timeout: Duration::from_secs(5),
            identity: Identity::new(&dir),
            writeback: WriteBack::with_target(
                writeback::Target::Off("unit test".into()),
                &dir,
                &crate::hydrate::Hydrated {
                    profiles_dir: dir.clone(),
                    key_file: None,
                    profiles: Vec::new(),
                    skipped: Vec::new(),
                    bases: Default::default(),
                },
                Duration::from_secs(600),
            ),
            signs: Default::default(),
            requests: Default::default(),
            stagger: Default::default(),
            recycle: Default::default(),
            proxies: Default::default(),
        };
        let thread = spawn(
            0,
            pool.clone(),
            rxs.remove(0),
            settings,
            Signals { shutdown, hurry },
            crossbeam_channel::bounded(0).0,
        )
        .unwrap();
        Rig {
            pool,
            thread: Some(thread),
            shutdown: Some(shutdown_tx),
            _hurry: hurry_tx,
            dir,
        }
    }

    impl Rig {
        fn ready_pid(&self) -> Option<i32> {
            match self.pool.state(0) {
                State::Ready { pid } => Some(pid),
                _ => None,
            }
        }
    }

    impl Drop for Rig {
        fn drop(&mut self) {
            drop(self.shutdown.take());
            if let Some(t) = self.thread.take() {
                let _ = t.join();
            }
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    fn gone(pid: i32) -> bool {
        // SAFETY: signal 0 only checks for existence; our waiter reaps it.
        unsafe { libc::kill(pid, 0) != 0 }
    }

    #[test]
    fn eviction_stops_the_child_and_rotates_the_slot() {
        let r = rig("evict");
        wait_for("a to be ready", || r.ready_pid().is_some());
        let a_pid = r.ready_pid().unwrap();
        assert_eq!(r.pool.snapshot().slots[0].profile.as_deref(), Some("a"));
        let generation = r.pool.generation(0);

        r.pool
            .evict(0, generation, "HTTP 500 from the child".into());
        wait_for("b to be ready", || {
            r.ready_pid().is_some() && r.pool.snapshot().slots[0].profile.as_deref() == Some("b")
        });
        let snap = r.pool.snapshot();
        assert_eq!(snap.queue, vec!["a"], "a goes to the back of the queue");
        assert_eq!(snap.slots[0].restarts, 1);
        assert_eq!(r.pool.generation(0), generation + 1);
        assert_ne!(r.ready_pid(), Some(a_pid));
        wait_for("a's child to be gone", || gone(a_pid));
        r.pool.check_invariant().unwrap();
    }

    #[test]
    fn a_stale_eviction_does_not_hit_the_successor() {
        let r = rig("stale");
        wait_for("a to be ready", || r.ready_pid().is_some());
        let old = r.pool.generation(0);
        r.pool.evict(0, old, "first".into());
        wait_for("b to be ready", || {
            r.ready_pid().is_some() && r.pool.snapshot().slots[0].profile.as_deref() == Some("b")
        });
        let b_pid = r.ready_pid().unwrap();
        // A second eviction aimed at a's generation arrives late.
        r.pool.evict(0, old, "late".into());
        // Nothing may happen; give the watcher time to (wrongly) act on it.
        let until = Instant::now() + Duration::from_millis(300);
        while Instant::now() < until {
            assert_eq!(
                r.ready_pid(),
                Some(b_pid),
                "b was evicted by a stale command"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(r.pool.generation(0), old + 1);
    }
}
