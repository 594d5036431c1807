//! One watcher thread per slot: the supervisor's hands for that slot's
//! child, and the only owner of it.
//!
//! It asks the supervisor which profile to start ([`Msg::Next`]), checks
//! that the slot's three ports are free (a foreign holder is named in the
//! log and the slot backs off instead of starting a child that cannot
//! bind), starts the child (`launch`), polls its `/health` until it is
//! ready or the readiness deadline passes, then watches it (`watch`) until
//! it exits (or a process of its tree in a session of its own, its
//! browser, ends) or a command of the supervisor ends it. Every ending stops the
//! child's whole process tree (see `process::tree`; its launcher first, so
//! it can save its login) and writes the profile back (`run`). Every move of
//! the slot, and everything seen in the child's log, is sent to the
//! supervisor; what follows (which profile next, whether a profile cools,
//! leaves or waits) is the supervisor's to decide. The crash-loop backoff
//! is the slot's own: it paces starts, whatever the profile.
//!
//! All waits select on the shutdown channel, so a signal interrupts any of
//! them; on shutdown the child's tree is stopped with its grace period (cut
//! short by the "hurry" channel on a second signal) and the thread ends.

mod launch;
mod run;
mod watch;

use std::path::PathBuf;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{after, select, Receiver, Sender};
use log::{error, info, warn};

use crate::config::{Config, Ports};
use crate::process::logsigns::Signs;
use crate::process::ports::Busy;
use crate::process::tree::Identity;
use crate::proxy::requests::Registry;
use crate::slot::{Backoff, Event};
use crate::stagger::{self, Stagger};
use crate::supervisor::msg::{Msg, Next, Pick, Reply};
use crate::supervisor::{Cmd, Handle, Then};
use crate::writeback::WriteBack;
use crate::{outbound, recycle};

/// The shortest backoff after finding a port taken by a foreign process.
const BACKOFF_PORT_MIN: Duration = Duration::from_secs(1);

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
    ports: Ports,
    sup: Handle,
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
                ports,
                sup,
                cmds,
                settings,
                signals,
                backoff,
                http: launch::health_agent(),
                starts: 0,
                early: None,
            }
            .run()
        })
}

struct Watcher {
    slot: usize,
    ports: Ports,
    sup: Handle,
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

impl Watcher {
    /// Tell the supervisor the slot moved; answers the slot's generation
    /// and, for a keep-alive turn's child now ready, how long it stays.
    fn moved(&self, ev: Event) -> (u64, Option<Duration>) {
        match self.sup.ask(Msg::Slot {
            slot: self.slot,
            ev,
        }) {
            Some(Reply::Moved {
                generation, settle, ..
            }) => (generation, settle),
            _ => (0, None),
        }
    }

    /// Ask the supervisor which profile to start.
    fn next(&self, pick: Pick) -> Next {
        match self.sup.ask(Msg::Next {
            slot: self.slot,
            pick,
        }) {
            Some(Reply::Next(n)) => n,
            _ => Next::Wait {
                until: Some(Duration::from_secs(1)),
                leasing: false,
            },
        }
    }

    fn run(mut self) {
        loop {
            if self.shutting_down() {
                self.moved(Event::Shutdown);
                return;
            }
            self.take_early_commands();
            let profile = match self.next(Pick::Current) {
                Next::Run(p) => p,
                Next::Wait { until, leasing } => {
                    self.wait_for_a_profile(until, leasing);
                    continue;
                }
            };
            let (gate, shutdown) = (&self.settings.stagger, &self.signals.shutdown);
            let moved = |ev| {
                self.moved(ev);
            };
            if !stagger::wait_turn(gate, self.slot, &profile.name, &moved, shutdown) {
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
                self.moved(Event::Shutdown);
                return;
            }
            self.after_run(&profile.name, end);
        }
    }

    /// A run of `name` ended: report it, pace the next start, and move on
    /// as the drain asked (the same profile, or the supervisor's next).
    fn after_run(&mut self, name: &str, end: RunEnd) {
        if !end.deliberate {
            self.sup.tell(Msg::Started {
                profile: name.to_string(),
                became_ready: end.ready_for.is_some(),
            });
        }
        let delay = if end.deliberate {
            self.backoff.reset();
            Duration::ZERO
        } else {
            self.backoff.after_end(end.ready_for)
        };
        if end.then == Then::Restart {
            info!("slot {}: starting profile {name} again", self.slot);
            return;
        }
        let pick = match end.then {
            Then::KeepAlive => Pick::Turn,
            _ => Pick::Rotate,
        };
        let next = match self.next(pick) {
            Next::Run(p) => p.name,
            Next::Wait { .. } => "-".into(),
        };
        if delay.is_zero() {
            info!("slot {}: rotating {name} -> {next}", self.slot);
            return;
        }
        warn!(
            "slot {}: rotating {name} -> {next} after a {delay:?} backoff (repeated failures)",
            self.slot
        );
        self.back_off(delay, "repeated failures".into());
    }

    /// Commands that came while no child ran (during a backoff or a stop):
    /// an operator's rotation rotates now, before the next start; a restart
    /// is what happens next anyway; the rest aimed at a child that is gone.
    fn take_early_commands(&mut self) {
        while let Ok(cmd) = self.cmds.try_recv() {
            let Cmd::Drain {
                generation: None,
                reason,
                then,
            } = cmd
            else {
                continue;
            };
            if then != Then::Restart {
                let pick = match then {
                    Then::KeepAlive => Pick::Turn,
                    _ => Pick::Rotate,
                };
                let next = match self.next(pick) {
                    Next::Run(p) => p.name,
                    Next::Wait { .. } => "-".into(),
                };
                info!(
                    "slot {}: {reason} while no child ran: rotating to {next} before the next start",
                    self.slot
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

    /// No profile may run now (all cooling or disabled): wait, in state
    /// cooldown, until the first cooldown ends (`wait`), something changes
    /// (a reset, an enable, a reload: `Cmd::Wake`) or shutdown.
    fn wait_for_a_profile(&mut self, wait: Option<Duration>, leasing: bool) {
        let until = wait.map(|d| Instant::now() + d);
        self.moved(Event::Cooldown { until });
        match wait {
            Some(d) => info!(
                "slot {}: every profile is cooling down or disabled; waiting {}s for the first cooldown to end",
                self.slot,
                d.as_secs()
            ),
            None if leasing => info!(
                "slot {}: waiting for the lease of a profile (the others run elsewhere or cool down)",
                self.slot
            ),
            None => warn!(
                "slot {}: every profile is disabled or needs a login; waiting for an operator (enable, reset, or a reload with a new login)",
                self.slot
            ),
        }
        let timer = wait.map(after).unwrap_or_else(crossbeam_channel::never);
        select! {
            recv(self.signals.shutdown) -> _ => {}
            recv(self.cmds) -> cmd => {
                if cmd.is_err() {
                    // The supervisor is gone: only shutdown remains.
                    let _ = self.signals.shutdown.recv_timeout(Duration::from_secs(1));
                }
            }
            recv(timer) -> _ => {}
        }
        self.moved(Event::CooldownOver);
    }

    /// Wait `delay` in state backoff (shown with `reason`), or until shutdown.
    fn back_off(&mut self, delay: Duration, reason: String) {
        let until = Instant::now() + delay;
        self.moved(Event::Backoff { until, reason });
        select! {
            recv(self.signals.shutdown) -> _ => {}
            recv(after(delay)) -> _ => {}
        }
        self.moved(Event::BackoffOver);
    }

    fn shutting_down(&self) -> bool {
        // The shutdown channel is closed, never sent on: a disconnect is the signal.
        matches!(
            self.signals.shutdown.try_recv(),
            Err(crossbeam_channel::TryRecvError::Disconnected)
        )
    }
}

#[cfg(test)]
mod tests {
    //! Eviction is driven here through the supervisor's handle, against a
    //! real supervisor thread, a real watcher thread and real processes:
    //! the "child" is a few lines of Python that answer /health on the API
    //! port they are given.

    use super::*;
    use crate::book::Book;
    use crate::config::PortPlan;
    use crate::hydrate::Profile;
    use crate::slot::State;
    use crate::supervisor::core;
    use crate::writeback;
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
        pool: Handle,
        _stop_sup: crossbeam_channel::Sender<()>,
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
        let book = Book::new(["a", "b"], Default::default(), Default::default());
        let now = std::time::SystemTime::now();
        let state = core::State::new(profiles, 1, plan, book, Default::default(), now);
        let (cmd_tx, cmd_rx) = crossbeam_channel::unbounded();
        let (stop_sup, stop) = crossbeam_channel::bounded(0);
        let wiring = crate::supervisor::Wiring {
            dispatch: crate::dispatch::Dispatch::new(1, Default::default()),
            cmds: vec![cmd_tx],
            store: None,
            leases: None,
            outcomes: crossbeam_channel::never(),
            starved: crossbeam_channel::never(),
            stop,
        };
        let (pool, _sup) = crate::supervisor::spawn(state, wiring).unwrap();
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
            plan.slot(0),
            pool.clone(),
            cmd_rx,
            settings,
            Signals { shutdown, hurry },
            crossbeam_channel::bounded(0).0,
        )
        .unwrap();
        Rig {
            pool,
            _stop_sup: stop_sup,
            thread: Some(thread),
            shutdown: Some(shutdown_tx),
            _hurry: hurry_tx,
            dir,
        }
    }

    impl Rig {
        fn ready_pid(&self) -> Option<i32> {
            match self.pool.snapshot().state.slots[0].state {
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
        assert_eq!(r.pool.view().slots[0].profile.as_deref(), Some("a"));
        let generation = r.pool.snapshot().state.slots[0].generation;

        r.pool
            .evict(0, generation, "HTTP 500 from the child".into());
        wait_for("b to be ready", || {
            r.ready_pid().is_some() && r.pool.view().slots[0].profile.as_deref() == Some("b")
        });
        let snap = r.pool.view();
        assert_eq!(snap.queue, vec!["a"], "a goes to the back of the queue");
        assert_eq!(snap.slots[0].restarts, 1);
        assert_eq!(r.pool.snapshot().state.slots[0].generation, generation + 1);
        assert_ne!(r.ready_pid(), Some(a_pid));
        wait_for("a's child to be gone", || gone(a_pid));
        r.pool.snapshot().state.check().unwrap();
    }

    #[test]
    fn a_stale_eviction_does_not_hit_the_successor() {
        let r = rig("stale");
        wait_for("a to be ready", || r.ready_pid().is_some());
        let old = r.pool.snapshot().state.slots[0].generation;
        r.pool.evict(0, old, "first".into());
        wait_for("b to be ready", || {
            r.ready_pid().is_some() && r.pool.view().slots[0].profile.as_deref() == Some("b")
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
        assert_eq!(r.pool.snapshot().state.slots[0].generation, old + 1);
    }
}
