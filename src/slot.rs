//! A slot's life as a state machine, with no threads and no I/O: the states
//! (each carrying its data), the one transition function that decides which
//! moves are allowed, and the crash-loop backoff policy. The watcher thread
//! performs the I/O; the supervisor stores the current state for readers.

use std::fmt;
use std::time::{Duration, Instant};

use crate::process::child::Exit;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum State {
    /// About to start the slot's profile.
    Idle,
    /// Backing off after failures; starts again at `until`. `reason` says
    /// why, for /ready.
    Waiting { until: Instant, reason: String },
    /// Started, polling its /health until `deadline`.
    Starting { pid: i32, deadline: Instant },
    /// Answered /health with status OK; receives traffic.
    Ready { pid: i32 },
    /// Takes no new requests; its in-flight ones finish, then it stops.
    Draining { pid: i32, reason: StopReason },
    /// Every profile is cooling down or disabled: waits until `until` (or a
    /// change: a reset, an enable, a reload) before taking one.
    Cooldown { until: Option<Instant> },
    /// Waits for its turn to start (`START_STAGGER_S`: one start per
    /// interval across the fleet); starts at `until`. Not a failure.
    Staggered { until: Instant },
    /// Its process group is being terminated.
    Stopping { pid: i32, reason: StopReason },
    /// Shut down for good.
    Stopped,
}

/// Why a child is being stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StopReason {
    Exited(Exit),
    ReadyTimeout,
    Evicted(String),
    /// The profile's account is out of quota: rotated out and cooled down.
    Exhausted,
    /// Its login expired: stopped at once, the profile waits for a new one.
    NeedsLogin,
    /// An operator asked (restart, rotate, disable) or a reload removed it.
    Operator(String),
    /// Its profile's lease is lost (another replica holds it, or it could
    /// not be renewed in time): stopped at once, without a drain.
    LeaseLost(String),
    /// Past a limit of its own (`CHILD_MAX_RSS_MB`, `CHILD_MAX_AGE_S`):
    /// drained and started again, the same profile. Says which limit.
    Recycled(String),
    /// A turn ended on schedule (`PROFILE_KEEPALIVE_S`,
    /// `PROFILE_MAX_RUNTIME_S`): making way for a keep-alive turn, the end
    /// of one, or a long run giving way. Says which.
    Turn(String),
    Shutdown,
}

impl StopReason {
    /// A short fixed word for metrics labels.
    pub fn label(&self) -> &'static str {
        match self {
            StopReason::Exited(_) => "exited",
            StopReason::ReadyTimeout => "ready_timeout",
            StopReason::Evicted(_) => "evicted",
            StopReason::Exhausted => "exhausted",
            StopReason::NeedsLogin => "needs_login",
            StopReason::Operator(_) => "operator",
            StopReason::LeaseLost(_) => "lease_lost",
            StopReason::Recycled(_) => "recycled",
            StopReason::Turn(_) => "turn",
            StopReason::Shutdown => "shutdown",
        }
    }
}

impl fmt::Display for StopReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StopReason::Exited(e) => write!(f, "exited ({e})"),
            StopReason::ReadyTimeout => f.write_str("not ready before the readiness deadline"),
            StopReason::Evicted(why) => write!(f, "evicted ({why})"),
            StopReason::Exhausted => f.write_str("exhausted (empty answers or out of quota)"),
            StopReason::NeedsLogin => f.write_str("its login expired (needs_login)"),
            StopReason::Operator(what) => f.write_str(what),
            StopReason::LeaseLost(why) => write!(f, "lease lost ({why})"),
            StopReason::Recycled(why) => write!(f, "recycled ({why})"),
            StopReason::Turn(what) => f.write_str(what),
            StopReason::Shutdown => f.write_str("coordinator shutting down"),
        }
    }
}

/// What happened to a slot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    Spawned {
        pid: i32,
        deadline: Instant,
    },
    BecameReady,
    /// Stop taking requests; stop once the in-flight ones are done.
    Drain(StopReason),
    Stop(StopReason),
    /// The stopped group is gone; the slot may start its next profile.
    Gone,
    Backoff {
        until: Instant,
        reason: String,
    },
    BackoffOver,
    /// No profile may run now; wait until `until` (None: until a change).
    Cooldown {
        until: Option<Instant>,
    },
    CooldownOver,
    /// Its start waits for its turn until `until` (the start stagger).
    Stagger {
        until: Instant,
    },
    StaggerOver,
    Shutdown,
}

impl State {
    /// The one place that decides the allowed moves. `None`: not allowed,
    /// and the caller keeps the state it had.
    pub fn next(&self, ev: &Event) -> Option<State> {
        use Event as E;
        use State as S;
        Some(match (self, ev) {
            (S::Idle, E::Spawned { pid, deadline }) => S::Starting {
                pid: *pid,
                deadline: *deadline,
            },
            (S::Idle, E::Backoff { until, reason }) => S::Waiting {
                until: *until,
                reason: reason.clone(),
            },
            (S::Waiting { .. }, E::BackoffOver) => S::Idle,
            (S::Starting { pid, .. }, E::BecameReady) => S::Ready { pid: *pid },
            (S::Ready { pid }, E::Drain(reason)) => S::Draining {
                pid: *pid,
                reason: reason.clone(),
            },
            (
                S::Starting { pid, .. } | S::Ready { pid } | S::Draining { pid, .. },
                E::Stop(reason),
            ) => S::Stopping {
                pid: *pid,
                reason: reason.clone(),
            },
            (S::Stopping { .. }, E::Gone) => S::Idle,
            (S::Idle, E::Cooldown { until }) => S::Cooldown { until: *until },
            (S::Cooldown { .. }, E::CooldownOver) => S::Idle,
            (S::Idle, E::Stagger { until }) => S::Staggered { until: *until },
            (S::Staggered { .. }, E::StaggerOver) => S::Idle,
            (
                S::Idle | S::Waiting { .. } | S::Cooldown { .. } | S::Staggered { .. },
                E::Shutdown,
            ) => S::Stopped,
            _ => return None,
        })
    }

    /// Which state, without its data: what probes compare and print.
    pub fn phase(&self) -> Phase {
        match self {
            State::Idle => Phase::Idle,
            State::Waiting { .. } => Phase::Backoff,
            State::Starting { .. } => Phase::Starting,
            State::Ready { .. } => Phase::Ready,
            State::Draining { .. } => Phase::Draining,
            State::Cooldown { .. } => Phase::Cooldown,
            State::Staggered { .. } => Phase::Stagger,
            State::Stopping { .. } => Phase::Stopping,
            State::Stopped => Phase::Stopped,
        }
    }

    pub fn name(&self) -> &'static str {
        self.phase().name()
    }

    /// When a waiting slot starts again, where its state says.
    pub fn until(&self) -> Option<Instant> {
        match self {
            State::Waiting { until, .. } => Some(*until),
            State::Cooldown { until } => *until,
            State::Staggered { until } => Some(*until),
            _ => None,
        }
    }

    /// Why the slot is not serving, where its state says.
    pub fn reason(&self) -> Option<String> {
        match self {
            State::Waiting { reason, .. } => Some(reason.clone()),
            State::Draining { reason, .. } | State::Stopping { reason, .. } => {
                Some(reason.to_string())
            }
            State::Cooldown { .. } => Some("every profile is cooling down or disabled".into()),
            // Read at snapshot time, so it counts down; the clock is no I/O.
            State::Staggered { until } => Some(stagger_reason(
                until.saturating_duration_since(Instant::now()),
            )),
            _ => None,
        }
    }

    pub fn pid(&self) -> Option<i32> {
        match self {
            State::Starting { pid, .. }
            | State::Ready { pid }
            | State::Draining { pid, .. }
            | State::Stopping { pid, .. } => Some(*pid),
            _ => None,
        }
    }
}

/// A slot's state without its data, as `/ready`, the metrics and `ctl`
/// show it (serialized as its name).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    Idle,
    Backoff,
    Starting,
    Ready,
    Draining,
    Cooldown,
    Stagger,
    Stopping,
    Stopped,
}

impl Phase {
    pub fn name(self) -> &'static str {
        match self {
            Phase::Idle => "idle",
            Phase::Backoff => "backoff",
            Phase::Starting => "starting",
            Phase::Ready => "ready",
            Phase::Draining => "draining",
            Phase::Cooldown => "cooldown",
            Phase::Stagger => "stagger",
            Phase::Stopping => "stopping",
            Phase::Stopped => "stopped",
        }
    }
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What `/ready` says of a slot waiting for its start turn.
pub fn stagger_reason(left: Duration) -> String {
    format!("start stagger: starts in {:.1} s", left.as_secs_f64())
}

/// Crash-loop protection for one slot: the first restart is immediate, then
/// 1 s doubling up to 5 min. It grows only for children that failed: never
/// ready, or ended within `reset_after` (the readiness timeout) of becoming
/// ready; a child that served longer, or was stopped on purpose (an
/// operator, exhaustion), resets it.
#[derive(Debug)]
pub struct Backoff {
    failures: u32,
    reset_after: Duration,
}

pub const BACKOFF_FIRST: Duration = Duration::from_secs(1);
pub const BACKOFF_CAP: Duration = Duration::from_secs(300);

impl Backoff {
    pub fn new(reset_after: Duration) -> Backoff {
        Backoff {
            failures: 0,
            reset_after,
        }
    }

    /// The slot's child was stopped on purpose: no failure to count.
    pub fn reset(&mut self) {
        self.failures = 0;
    }

    /// A child ended after having been ready for `ready_for` (None: never
    /// ready). Returns how long to wait before the next start.
    pub fn after_end(&mut self, ready_for: Option<Duration>) -> Duration {
        if ready_for.is_some_and(|d| d >= self.reset_after) {
            self.failures = 0;
        }
        let delay = match self.failures {
            0 => Duration::ZERO,
            n => BACKOFF_FIRST
                .checked_mul(1 << (n - 1).min(16))
                .unwrap_or(BACKOFF_CAP)
                .min(BACKOFF_CAP),
        };
        self.failures = self.failures.saturating_add(1);
        delay
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all_states(t: Instant) -> Vec<State> {
        vec![
            State::Idle,
            State::Waiting {
                until: t,
                reason: "r".into(),
            },
            State::Starting {
                pid: 7,
                deadline: t,
            },
            State::Ready { pid: 7 },
            State::Draining {
                pid: 7,
                reason: StopReason::Exhausted,
            },
            State::Cooldown { until: Some(t) },
            State::Staggered { until: t },
            State::Stopping {
                pid: 7,
                reason: StopReason::ReadyTimeout,
            },
            State::Stopped,
        ]
    }

    fn all_events(t: Instant) -> Vec<Event> {
        vec![
            Event::Spawned {
                pid: 7,
                deadline: t,
            },
            Event::BecameReady,
            Event::Drain(StopReason::Exhausted),
            Event::Stop(StopReason::Evicted("x".into())),
            Event::Gone,
            Event::Backoff {
                until: t,
                reason: "r".into(),
            },
            Event::BackoffOver,
            Event::Cooldown { until: None },
            Event::CooldownOver,
            Event::Stagger { until: t },
            Event::StaggerOver,
            Event::Shutdown,
        ]
    }

    /// The whole table: exactly these (state, event) pairs move, to exactly
    /// these states; every other pair is refused.
    #[test]
    fn transition_table() {
        let t = Instant::now();
        let allowed: Vec<(&str, &str, &str)> = vec![
            ("idle", "Spawned", "starting"),
            ("idle", "Backoff", "backoff"),
            ("idle", "Shutdown", "stopped"),
            ("backoff", "BackoffOver", "idle"),
            ("backoff", "Shutdown", "stopped"),
            ("starting", "BecameReady", "ready"),
            ("starting", "Stop", "stopping"),
            ("ready", "Stop", "stopping"),
            ("ready", "Drain", "draining"),
            ("draining", "Stop", "stopping"),
            ("stopping", "Gone", "idle"),
            ("idle", "Cooldown", "cooldown"),
            ("cooldown", "CooldownOver", "idle"),
            ("cooldown", "Shutdown", "stopped"),
            ("idle", "Stagger", "stagger"),
            ("stagger", "StaggerOver", "idle"),
            ("stagger", "Shutdown", "stopped"),
        ];
        for s in all_states(t) {
            for e in all_events(t) {
                let ev_name = format!("{e:?}");
                let ev_name = ev_name.split([' ', '(']).next().unwrap().to_string();
                let want = allowed
                    .iter()
                    .find(|(from, ev, _)| *from == s.name() && *ev == ev_name)
                    .map(|(_, _, to)| *to);
                let got = s.next(&e).map(|n| n.name());
                assert_eq!(got, want, "{} + {ev_name}", s.name());
            }
        }
    }

    #[test]
    fn states_keep_their_pid() {
        let t = Instant::now();
        let s = State::Starting {
            pid: 42,
            deadline: t,
        };
        let r = s.next(&Event::BecameReady).unwrap();
        assert_eq!(r.pid(), Some(42));
        let st = r.next(&Event::Stop(StopReason::Shutdown)).unwrap();
        assert_eq!(st.pid(), Some(42));
        assert_eq!(st.next(&Event::Gone), Some(State::Idle));
    }

    #[test]
    fn a_staggered_slot_says_when_it_starts() {
        let until = Instant::now() + Duration::from_millis(1450);
        let s = State::Idle.next(&Event::Stagger { until }).unwrap();
        assert_eq!(s.name(), "stagger");
        assert_eq!(s.until(), Some(until));
        assert_eq!(s.pid(), None);
        let why = s.reason().unwrap();
        assert!(why.starts_with("start stagger: starts in 1."), "{why}");
        assert_eq!(
            stagger_reason(Duration::from_millis(1400)),
            "start stagger: starts in 1.4 s"
        );
        assert_eq!(
            stagger_reason(Duration::ZERO),
            "start stagger: starts in 0.0 s"
        );
        assert_eq!(s.next(&Event::StaggerOver), Some(State::Idle));
        assert_eq!(
            s.next(&Event::Spawned {
                pid: 1,
                deadline: until
            }),
            None,
            "starts only from idle"
        );
    }

    #[test]
    fn a_recycled_child_is_labelled_apart_from_failures() {
        let r = StopReason::Recycled("tree RSS 900 MB over CHILD_MAX_RSS_MB=800".into());
        assert_eq!(r.label(), "recycled");
        assert_eq!(
            r.to_string(),
            "recycled (tree RSS 900 MB over CHILD_MAX_RSS_MB=800)"
        );
    }

    #[test]
    fn backoff_doubles_to_a_cap_and_resets_after_serving_past_the_ready_timeout() {
        let ready_timeout = Duration::from_secs(60);
        let mut b = Backoff::new(ready_timeout);
        let got: Vec<u64> = (0..12).map(|_| b.after_end(None).as_secs()).collect();
        assert_eq!(got, vec![0, 1, 2, 4, 8, 16, 32, 64, 128, 256, 300, 300]);
        assert_eq!(b.after_end(Some(Duration::from_secs(59))).as_secs(), 300);
        assert_eq!(b.after_end(Some(ready_timeout)), Duration::ZERO);
        assert_eq!(b.after_end(None), BACKOFF_FIRST);
        b.reset();
        assert_eq!(b.after_end(None), Duration::ZERO);
    }
}
