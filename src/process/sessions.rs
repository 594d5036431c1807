//! The processes of a child that lead sessions of their own (its browser),
//! and whether they still live.
//!
//! The real launcher starts its browser (Camoufox, or the stand-in chromium
//! under Playwright's browser server) with `setsid`, two session levels
//! below itself. When that browser dies (the OOM killer, a crash), the
//! launcher lives on and its `/health` keeps saying OK, so a request is the
//! first to find out, and fails. What the coordinator can see without a
//! request: the session leaders of the child's tree, found once when it
//! became ready, and each one's `/proc` entry. A leader that is gone, a
//! zombie, or a new process under its pid has ended: the child has lost a
//! part it cannot do without.
//!
//! Plain reads of `/proc`, called from the slot's watcher thread: one full
//! scan at readiness, then one `stat` per leader per look.

use std::time::{Duration, Instant};

use crossbeam_channel::Receiver;

use super::proc;
use super::tree::Scan;

/// The session leaders of one child's tree (besides the launcher).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Sessions {
    /// (pid, start time) of each leader.
    leaders: Vec<(i32, u64)>,
}

impl Sessions {
    /// The session leaders of the tree of `leader` (tag `tag`) now.
    pub fn of_child(leader: i32, tag: &str) -> Sessions {
        Sessions::among(&Scan::take().child_tree(leader, tag), leader)
    }

    /// The leaders among `tree`, other than the launcher `leader`.
    pub fn among(tree: &[proc::Stat], leader: i32) -> Sessions {
        Sessions {
            leaders: tree
                .iter()
                .filter(|s| s.pid != leader && s.sid == s.pid && !s.is_zombie())
                .map(|s| (s.pid, s.start))
                .collect(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.leaders.is_empty()
    }

    /// A tick every `every` to look at the leaders, or never when there
    /// are none.
    pub fn looks(&self, every: Duration) -> Receiver<Instant> {
        if self.is_empty() {
            crossbeam_channel::never()
        } else {
            crossbeam_channel::tick(every)
        }
    }

    /// The pid of the first leader that has ended, if one has.
    pub fn ended(&self) -> Option<i32> {
        self.leaders
            .iter()
            .find(|(pid, start)| {
                !proc::stat(*pid).is_some_and(|s| s.start == *start && !s.is_zombie())
            })
            .map(|(pid, _)| *pid)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stat(pid: i32, ppid: i32, sid: i32, state: char) -> proc::Stat {
        proc::Stat {
            pid,
            ppid,
            pgid: sid,
            sid,
            state,
            start: 7,
        }
    }

    #[test]
    fn the_leaders_are_the_trees_own_sessions_but_the_launchers() {
        // Launcher 10 in its caller's session 1, a helper in its group, a
        // launch server leading session 20, the browser leading 30 with a
        // renderer in it, and a zombie leader.
        let tree = [
            stat(10, 1, 1, 'S'),
            stat(11, 10, 1, 'S'),
            stat(20, 10, 20, 'S'),
            stat(30, 21, 30, 'S'),
            stat(31, 30, 30, 'S'),
            stat(40, 10, 40, 'Z'),
        ];
        let s = Sessions::among(&tree, 10);
        assert_eq!(s.leaders, vec![(20, 7), (30, 7)]);
        // A leader launched by hand (launcher leads its own session too).
        let s = Sessions::among(&[stat(10, 1, 10, 'S')], 10);
        assert!(s.is_empty());
    }

    #[test]
    fn a_leader_that_is_gone_or_replaced_has_ended() {
        let me = std::process::id() as i32;
        let start = proc::stat(me).unwrap().start;
        let alive = Sessions {
            leaders: vec![(me, start)],
        };
        assert_eq!(alive.ended(), None);
        let reused = Sessions {
            leaders: vec![(me, start + 1)],
        };
        assert_eq!(reused.ended(), Some(me), "another process under its pid");
        let gone = Sessions {
            leaders: vec![(me, start), (i32::MAX, 1)],
        };
        assert_eq!(gone.ended(), Some(i32::MAX));
    }
}
