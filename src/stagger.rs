//! The fleet-wide start gate (`START_STAGGER_S`): at most one child start
//! per interval across every slot, the first at once, so a pool of many
//! slots does not start every browser in the same second (each one loads a
//! browser, logs in and pulls pages: a burst of them slows every start and
//! looks like a bot farm to Google).
//!
//! One `Stagger` is shared by all watcher threads. It holds one instant,
//! "the next start may go at", behind a mutex held only to read and bump it
//! (no I/O, no wait). A watcher reserves its turn right before it starts a
//! child and then waits, on its own thread, in slot state `stagger` (shown
//! in `/ready` with `until_unix_ms`); the wait wakes at once on shutdown.
//! Turns are handed out in the order they are asked for. Off (interval 0),
//! nothing is locked and nothing waits.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use crossbeam_channel::{after, select, Receiver};
use log::info;

use crate::slot::Event;

/// The pure core: with the next free turn at `next` (None: no start yet),
/// a start asked for at `now` goes at the returned first instant, and the
/// turn after it is the returned second one.
pub fn reserve_at(next: Option<Instant>, now: Instant, interval: Duration) -> (Instant, Instant) {
    let go = match next {
        Some(n) if n > now => n,
        _ => now,
    };
    (go, go + interval)
}

#[derive(Debug, Default)]
pub struct Stagger {
    interval: Duration,
    /// When the next start may go; None before the first start.
    next: Mutex<Option<Instant>>,
}

impl Stagger {
    pub fn new(interval: Duration) -> Stagger {
        Stagger {
            interval,
            next: Mutex::new(None),
        }
    }

    pub fn interval(&self) -> Duration {
        self.interval
    }

    /// Take the next turn: when this start may go (`now` or later).
    pub fn reserve(&self, now: Instant) -> Instant {
        if self.interval.is_zero() {
            return now;
        }
        // A single assignment under the lock: a poisoned lock is coherent.
        let mut next = self.next.lock().unwrap_or_else(|p| p.into_inner());
        let (go, after) = reserve_at(*next, now, self.interval);
        *next = Some(after);
        go
    }
}

/// Called by slot `slot`'s watcher right before it starts `profile`: take
/// a turn and, when it is not now, wait for it in state `stagger`. False
/// when shutdown came first (nothing is started then).
pub fn wait_turn(
    gate: &Stagger,
    slot: usize,
    profile: &str,
    moved: &dyn Fn(Event),
    shutdown: &Receiver<()>,
) -> bool {
    let now = Instant::now();
    let go = gate.reserve(now);
    let wait = go.saturating_duration_since(now);
    if wait.is_zero() {
        return true;
    }
    info!(
        "slot {slot}: profile {profile} starts in {:.1} s (START_STAGGER_S: one start per {:.1} s across the fleet)",
        wait.as_secs_f64(),
        gate.interval().as_secs_f64()
    );
    moved(Event::Stagger { until: go });
    let stopped = select! {
        recv(shutdown) -> _ => true,
        recv(after(wait)) -> _ => false,
    };
    moved(Event::StaggerOver);
    !stopped
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// (next turn relative to now in ms, None: first start) -> (goes after
    /// ms, next turn after ms), with a 1000 ms interval.
    #[test]
    fn reserve_table() {
        let now = Instant::now() + ms(10_000);
        let at = |d: i64| {
            if d >= 0 {
                now + ms(d as u64)
            } else {
                now - ms((-d) as u64)
            }
        };
        let table: &[(Option<i64>, u64, u64)] = &[
            (None, 0, 1000),          // the first start goes at once
            (Some(-5000), 0, 1000),   // long after the last: at once
            (Some(0), 0, 1000),       // exactly at its turn
            (Some(400), 400, 1400),   // inside the interval: waits
            (Some(3000), 3000, 4000), // behind others: after them
        ];
        for (next, go, then) in table {
            let (g, t) = reserve_at(next.map(at), now, ms(1000));
            assert_eq!(g - now, ms(*go), "next {next:?}");
            assert_eq!(t - now, ms(*then), "next {next:?}");
        }
    }

    #[test]
    fn starts_asked_together_are_spaced_by_the_interval() {
        let gate = Stagger::new(ms(1500));
        let now = Instant::now();
        let turns: Vec<Duration> = (0..4).map(|_| gate.reserve(now) - now).collect();
        assert_eq!(turns, vec![ms(0), ms(1500), ms(3000), ms(4500)]);
        // Long after: at once again.
        let later = now + ms(60_000);
        assert_eq!(gate.reserve(later), later);
    }

    #[test]
    fn off_never_waits() {
        let gate = Stagger::default();
        let now = Instant::now();
        for _ in 0..3 {
            assert_eq!(gate.reserve(now), now);
        }
    }
}
