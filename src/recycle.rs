//! Recycling a child that grew too big or too old: `CHILD_MAX_RSS_MB` (the
//! resident memory of its whole process tree) and `CHILD_MAX_AGE_S` (time
//! since its start). A browser driven for days grows; restarting it on our
//! terms, drained, beats the kernel's OOM killer picking a process mid-answer.
//!
//! While a child runs, its slot's watcher looks at it every
//! `CHILD_RSS_SAMPLE_S` (and once more when its age limit falls due): the
//! tree's RSS is read from `/proc` on the watcher's thread with no lock held,
//! then sent to the supervisor for `/ready`, `ctl status` and `/metrics`. The
//! first look past a limit logs one line naming the size (or age) and the
//! limit and returns the reason; the watcher then drains the slot (no new
//! requests, those in flight finish) and starts the same profile again.
//!
//! [`check`] is the pure decision; [`Watch`] is one child's record.

use std::fmt;
use std::time::{Duration, Instant};

use crossbeam_channel::{after, never, tick, Receiver};
use log::warn;

use crate::process::rss;
use crate::slot::StopReason;

const MB: u64 = 1024 * 1024;

pub use crate::config::RecycleLimits as Limits;

/// A limit passed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Over {
    Memory { rss: u64, limit: u64 },
    Age { age: Duration, limit: Duration },
}

impl fmt::Display for Over {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Over::Memory { rss, limit } => write!(
                f,
                "its process tree holds {} MB, over CHILD_MAX_RSS_MB={}",
                mb(*rss),
                limit / MB
            ),
            Over::Age { age, limit } => write!(
                f,
                "it has run {} s, CHILD_MAX_AGE_S={}",
                age.as_secs(),
                limit.as_secs()
            ),
        }
    }
}

/// Whole megabytes (MiB), rounded to the nearest, as shown to operators.
pub fn mb(bytes: u64) -> u64 {
    (bytes + MB / 2) / MB
}

/// The decision: is a child with tree RSS `rss` (None: not measured) that
/// has run for `age` past a limit? Memory is named first when both are.
pub fn check(limits: &Limits, rss: Option<u64>, age: Duration) -> Option<Over> {
    if let (Some(limit), Some(rss)) = (limits.max_rss, rss) {
        if rss > limit {
            return Some(Over::Memory { rss, limit });
        }
    }
    match limits.max_age {
        Some(limit) if age >= limit => Some(Over::Age { age, limit }),
        _ => None,
    }
}

/// One running child, as its watcher keeps it.
pub struct Watch {
    limits: Limits,
    slot: usize,
    generation: u64,
    leader: i32,
    tag: String,
    started: Instant,
    /// A limit was passed and reported: the drain is under way.
    tripped: bool,
}

impl Watch {
    /// The child of `slot` in generation `generation`, led by `leader`,
    /// tagged `tag`, started at `started`.
    pub fn new(
        limits: Limits,
        slot: usize,
        generation: u64,
        leader: i32,
        tag: String,
        started: Instant,
    ) -> Watch {
        Watch {
            limits,
            slot,
            generation,
            leader,
            tag,
            started,
            tripped: false,
        }
    }

    /// The generation of the child watched.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Fires every sample interval.
    pub fn samples(&self) -> Receiver<Instant> {
        tick(self.limits.sample)
    }

    /// Fires once, when the age limit falls due (never without one).
    pub fn age_due(&self) -> Receiver<Instant> {
        match self.limits.max_age {
            Some(limit) => after(limit.saturating_sub(self.started.elapsed())),
            None => never(),
        }
    }

    /// Measure the tree: its resident bytes (None when no process of it
    /// was found), and why the child must be recycled the first time a
    /// limit is passed (logging it once); the watcher reports the first
    /// and drains the slot for the second.
    pub fn look(&mut self, profile: &str) -> (Option<u64>, Option<StopReason>) {
        let (bytes, procs) = rss::of_tree(self.leader, &self.tag);
        let rss = (procs > 0).then_some(bytes);
        (rss, self.over(rss, profile))
    }

    fn over(&mut self, rss: Option<u64>, profile: &str) -> Option<StopReason> {
        if self.tripped {
            return None;
        }
        let over = check(&self.limits, rss, self.started.elapsed())?;
        self.tripped = true;
        warn!(
            "slot {}: profile {profile} pid {}: {over}: draining it, then starting the same profile again",
            self.slot, self.leader
        );
        Some(StopReason::Recycled(match over {
            Over::Memory { .. } => "memory limit".into(),
            Over::Age { .. } => "age limit".into(),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn check_table() {
        let s = Duration::from_secs;
        let limits = |rss_mb: Option<u64>, age_s: Option<u64>| Limits {
            max_rss: rss_mb.map(|m| m * MB),
            max_age: age_s.map(s),
            sample: s(5),
        };
        // (limits, rss MB measured, age s) -> passed
        let table: &[(Limits, Option<u64>, u64, Option<&str>)] = &[
            (limits(None, None), Some(100_000), 1_000_000, None),
            (limits(Some(800), None), Some(799), 10, None),
            (limits(Some(800), None), Some(800), 10, None),
            (limits(Some(800), None), Some(801), 10, Some("memory")),
            (limits(Some(800), None), None, 10, None),
            (limits(None, Some(3600)), Some(5000), 3599, None),
            (limits(None, Some(3600)), Some(5000), 3600, Some("age")),
            (
                limits(Some(800), Some(3600)),
                Some(900),
                4000,
                Some("memory"),
            ),
            (limits(Some(800), Some(3600)), Some(700), 4000, Some("age")),
            (limits(Some(800), Some(3600)), None, 4000, Some("age")),
        ];
        for (l, rss, age, want) in table {
            let got = check(l, rss.map(|m| m * MB), s(*age)).map(|o| match o {
                Over::Memory { .. } => "memory",
                Over::Age { .. } => "age",
            });
            assert_eq!(got, *want, "{l:?} rss {rss:?} MB age {age} s");
        }
    }

    #[test]
    fn what_the_log_line_says() {
        let m = Over::Memory {
            rss: 812 * MB + 100,
            limit: 800 * MB,
        };
        assert_eq!(
            m.to_string(),
            "its process tree holds 812 MB, over CHILD_MAX_RSS_MB=800"
        );
        let a = Over::Age {
            age: Duration::from_millis(3_600_400),
            limit: Duration::from_secs(3600),
        };
        assert_eq!(a.to_string(), "it has run 3600 s, CHILD_MAX_AGE_S=3600");
        assert_eq!(mb(MB / 2), 1);
        assert_eq!(mb(MB / 2 - 1), 0);
    }
}
