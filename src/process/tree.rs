//! Finding and stopping every process a child started, wherever it went.
//!
//! The real launcher starts its browser with `setsid`, so the browser is in
//! neither the launcher's process group nor its session, and a signal to the
//! group misses it. So each child is started with a tag in its environment,
//! `AISTUDIOPROXY_CHILD=<owner>/<run>/<slot>/<generation>`, which every
//! descendant inherits through fork and exec:
//! - `owner` names the cache directory (a hash of its canonical path), so a
//!   later coordinator on the same directory can recognise what an earlier
//!   one left behind (`leftovers`);
//! - `run` is this coordinator's pid and start time: a process whose run is
//!   still alive belongs to a live coordinator and is never touched;
//! - `slot` and `generation` name one start of one slot.
//!
//! A child's tree is, at one scan of `/proc`: the launcher, every process in
//! its process group, every process carrying its tag, and every descendant
//! (by parent links) of any of those; zombies do not count (they hold
//! nothing and are reaped by the waiter or the reaper). Stopping the tree is
//! SIGTERM to each member, the grace, SIGKILL to what is left, and rescans
//! until none is left; a process forked during the stop is found by the next
//! scan. A child's own stop ([`stop_leader_first`]) first gives its launcher
//! alone most of the grace: the real launcher saves its browser's cookies on
//! SIGTERM through its Playwright driver, which a SIGTERM to the whole tree
//! would kill first. Signals go through a pidfd opened after the scan and checked
//! against the scanned start time, so a recycled pid is never signalled.
//!
//! What it cannot see: a process that both clears its environment (or
//! execs with an empty one) and leaves the tree's parent links (double
//! fork) and process group. Such a process is re-parented to the
//! coordinator (the subreaper, or PID 1 in a container) and reaped when it
//! ends, but not stopped with its child. The real child does none of this.
//! Reading another user's `/proc/<pid>/environ` needs privilege, so a
//! descendant that changes its user is found by parent links only.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::time::{Duration, Instant};

use crossbeam_channel::{never, select, Receiver};

use super::proc::{self, Stat};

/// The environment variable that carries a child's tag.
pub const VAR: &str = "AISTUDIOPROXY_CHILD";

/// How often a stop looks again for members still alive.
const RESCAN: Duration = Duration::from_millis(20);
/// How long members may take to vanish after SIGKILL.
const AFTER_KILL: Duration = Duration::from_secs(5);

/// This coordinator: which cache directory it serves, and which run it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    owner: String,
    run: String,
}

impl Identity {
    pub fn new(cache_dir: &Path) -> Identity {
        let me = std::process::id() as i32;
        let start = proc::stat(me).map(|s| s.start).unwrap_or(0);
        Identity {
            owner: owner_of(cache_dir),
            run: format!("{me}.{start}"),
        }
    }

    /// The tag of one start of one slot.
    pub fn tag(&self, slot: usize, generation: u64) -> String {
        format!("{}/{}/{slot}/{generation}", self.owner, self.run)
    }

    /// True when `tag` was given by this run to slot `slot` (any generation).
    pub fn is_slot_tag(&self, tag: &str, slot: usize) -> bool {
        tag.strip_prefix(&format!("{}/{}/{slot}/", self.owner, self.run))
            .is_some_and(|g| g.parse::<u64>().is_ok())
    }

    /// True when `tag` was given by an earlier coordinator on the same cache
    /// directory that is no longer running.
    fn is_leftover(&self, tag: &str) -> bool {
        let mut parts = tag.split('/');
        if parts.next() != Some(self.owner.as_str()) {
            return false;
        }
        let Some(run) = parts.next() else {
            return false;
        };
        run != self.run && !run_alive(run)
    }
}

/// A stable name for a cache directory: FNV-1a of its canonical path.
fn owner_of(cache_dir: &Path) -> String {
    let canon = std::fs::canonicalize(cache_dir).unwrap_or_else(|_| cache_dir.to_path_buf());
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in canon.as_os_str().as_encoded_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{h:016x}")
}

/// Is the coordinator run `"<pid>.<start>"` still alive?
fn run_alive(run: &str) -> bool {
    let Some((pid, start)) = run.split_once('.') else {
        return false;
    };
    let (Ok(pid), Ok(start)) = (pid.parse::<i32>(), start.parse::<u64>()) else {
        return false;
    };
    proc::stat(pid).is_some_and(|s| s.start == start && !s.is_zombie())
}

/// One look at every live (non-zombie) process.
pub struct Scan {
    procs: HashMap<i32, Stat>,
}

impl Scan {
    pub fn take() -> Scan {
        let me = std::process::id() as i32;
        let procs = proc::pids()
            .into_iter()
            .filter(|p| *p != me)
            .filter_map(proc::stat)
            .filter(|s| !s.is_zombie())
            .map(|s| (s.pid, s))
            .collect();
        Scan { procs }
    }

    /// The processes `seed` picks, plus all their descendants.
    pub fn closure(&self, seed: impl Fn(&Stat) -> bool) -> Vec<Stat> {
        let mut kids: HashMap<i32, Vec<i32>> = HashMap::new();
        for s in self.procs.values() {
            kids.entry(s.ppid).or_default().push(s.pid);
        }
        let mut found: HashSet<i32> = HashSet::new();
        let mut todo: Vec<i32> = self
            .procs
            .values()
            .filter(|s| seed(s))
            .map(|s| s.pid)
            .collect();
        while let Some(pid) = todo.pop() {
            if found.insert(pid) {
                todo.extend(kids.get(&pid).into_iter().flatten().copied());
            }
        }
        let mut out: Vec<Stat> = found.iter().map(|p| self.procs[p]).collect();
        out.sort_by_key(|s| s.pid);
        out
    }

    /// One child's tree: its launcher `leader`, its process group, and what
    /// carries `tag`, with all descendants.
    pub fn child_tree(&self, leader: i32, tag: &str) -> Vec<Stat> {
        self.closure(|s| s.pid == leader || s.pgid == leader || carries(s.pid, tag))
    }

    /// Processes left by earlier runs on our cache directory, with their
    /// descendants.
    pub fn leftovers(&self, me: &Identity) -> Vec<Stat> {
        self.closure(|s| proc::env_var(s.pid, VAR).is_some_and(|t| me.is_leftover(&t)))
    }
}

/// Stop whatever earlier runs of a coordinator on our cache directory left
/// running (a coordinator killed with SIGKILL leaves session-detached
/// browsers behind), with one log line each. Returns how many were found.
pub fn stop_leftovers(me: &Identity, grace: Duration) -> usize {
    let found = Scan::take().leftovers(me);
    for s in &found {
        log::warn!(
            "stopping pid {} left running by an earlier coordinator on this cache directory: {}",
            s.pid,
            proc::cmdline(s.pid, 160)
        );
    }
    if !found.is_empty() {
        let r = stop(|scan| scan.leftovers(me), grace, &never());
        if r.left > 0 {
            log::error!("{} leftover processes could not be stopped", r.left);
        }
    }
    found.len()
}

fn carries(pid: i32, tag: &str) -> bool {
    proc::env_var(pid, VAR).is_some_and(|t| t == tag)
}

/// How a stop went.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stopped {
    /// Members found at the first scan.
    pub found: usize,
    /// Members that needed SIGKILL.
    pub killed: usize,
    /// Members still there when the stop gave up (0 unless stuck in the kernel).
    pub left: usize,
}

/// SIGTERM every member `members` finds, wait up to `grace` (cut short by
/// `hurry` firing or closing) for all of them to go, SIGKILL what is left
/// and wait for that too. Members are looked up again at every rescan, so
/// processes forked meanwhile are caught.
pub fn stop(
    members: impl Fn(&Scan) -> Vec<Stat>,
    grace: Duration,
    hurry: &Receiver<()>,
) -> Stopped {
    let first = members(&Scan::take());
    let mut report = Stopped {
        found: first.len(),
        ..Stopped::default()
    };
    if first.is_empty() {
        return report;
    }
    let mut termed: HashSet<(i32, u64)> = HashSet::new();
    for s in &first {
        signal(s, libc::SIGTERM);
        termed.insert((s.pid, s.start));
    }
    let deadline = Instant::now() + grace;
    let left = wait_empty(&members, deadline, hurry, |s| {
        // A process forked after the first SIGTERM gets its own.
        if termed.insert((s.pid, s.start)) {
            signal(s, libc::SIGTERM);
        }
    });
    if left.is_empty() {
        return report;
    }
    report.killed = left.len();
    for s in &left {
        signal(s, libc::SIGKILL);
    }
    let left = wait_empty(&members, Instant::now() + AFTER_KILL, &never(), |s| {
        signal(s, libc::SIGKILL)
    });
    report.left = left.len();
    report
}

/// The launcher's share of the grace in [`stop_leader_first`].
fn leader_share(grace: Duration) -> Duration {
    grace * 3 / 4
}

/// Stop a child's tree the way its launcher can save its login: SIGTERM to
/// `leader` alone, wait for it to exit (up to three quarters of `grace`, cut
/// short by `hurry`), then [`stop`] whatever is left of the tree with the
/// rest of the grace. A leader already gone skips the first step.
pub fn stop_leader_first(
    leader: i32,
    members: impl Fn(&Scan) -> Vec<Stat>,
    grace: Duration,
    hurry: &Receiver<()>,
) -> Stopped {
    let began = Instant::now();
    let first = members(&Scan::take());
    let mut hurried = false;
    if let Some(l) = first.iter().find(|s| s.pid == leader) {
        signal(l, libc::SIGTERM);
        let alive = || proc::stat(l.pid).is_some_and(|s| s.start == l.start && !s.is_zombie());
        let deadline = began + leader_share(grace);
        while alive() && Instant::now() < deadline {
            let wait = RESCAN.min(deadline.saturating_duration_since(Instant::now()));
            hurried = select! {
                recv(hurry) -> _ => true,
                default(wait) => false,
            };
            if hurried {
                break;
            }
        }
    }
    let rest = if hurried {
        Duration::ZERO
    } else {
        grace.saturating_sub(began.elapsed())
    };
    let mut report = stop(members, rest, hurry);
    report.found = report.found.max(first.len());
    report
}

/// Rescan until `members` finds nothing or `deadline`/`hurry`; `on_new` is
/// called for each member of each rescan. Returns what was left.
fn wait_empty(
    members: &impl Fn(&Scan) -> Vec<Stat>,
    deadline: Instant,
    hurry: &Receiver<()>,
    mut on_new: impl FnMut(&Stat),
) -> Vec<Stat> {
    loop {
        let now = Instant::now();
        let wait = RESCAN.min(deadline.saturating_duration_since(now));
        let hurried = select! {
            recv(hurry) -> _ => true,
            default(wait) => false,
        };
        let left = members(&Scan::take());
        if left.is_empty() || hurried || Instant::now() >= deadline {
            return left;
        }
        left.iter().for_each(&mut on_new);
    }
}

/// Send `sig` to the process `s` names, only if it is still that process.
fn signal(s: &Stat, sig: i32) {
    // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, s.pid, 0) } as i32;
    let same = || proc::stat(s.pid).is_some_and(|now| now.start == s.start);
    if fd >= 0 {
        // The fd pins the process: if it is still the one scanned now, it
        // is the one the signal reaches.
        if same() {
            // SAFETY: a valid pidfd, a signal number, no siginfo, no flags.
            unsafe {
                libc::syscall(
                    libc::SYS_pidfd_send_signal,
                    fd,
                    sig,
                    std::ptr::null::<libc::siginfo_t>(),
                    0,
                )
            };
        }
        // SAFETY: closing the fd we opened.
        unsafe { libc::close(fd) };
    } else if same() {
        // Kernels before 5.3: a plain kill, right after the check.
        // SAFETY: kill(2) with a pid and signal number.
        unsafe { libc::kill(s.pid, sig) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::CommandExt;
    use std::process::Command;

    #[test]
    fn tags_name_owner_run_slot_and_generation() {
        let me = Identity::new(Path::new("/tmp"));
        let tag = me.tag(2, 7);
        assert!(me.is_slot_tag(&tag, 2));
        assert!(!me.is_slot_tag(&tag, 1));
        assert!(!me.is_leftover(&tag), "our own run is not a leftover");
        let other_dir = Identity::new(Path::new("/var"));
        assert!(
            !other_dir.is_leftover(&tag),
            "another cache dir is not ours"
        );
        let dead = format!("{}/999999999.1/0/1", me.owner);
        assert!(me.is_leftover(&dead));
        assert_eq!(owner_of(Path::new("/tmp")), owner_of(Path::new("/tmp/")));
    }

    #[test]
    fn a_tagged_process_in_its_own_session_is_found_and_stopped() {
        let me = Identity::new(&std::env::temp_dir());
        let tag = me.tag(0, u64::from(std::process::id()));
        let mut cmd = Command::new("/bin/sh");
        cmd.args(["-c", "trap '' TERM; sleep 30"]).env(VAR, &tag);
        // SAFETY: setsid is async-signal-safe.
        unsafe {
            cmd.pre_exec(|| {
                libc::setsid();
                Ok(())
            });
        }
        let mut c = cmd.spawn().unwrap();
        let pid = c.id() as i32;
        let deadline = Instant::now() + Duration::from_secs(5);
        // Found, and ignoring SIGTERM already: a SIGTERM before the shell's
        // trap would end it, and the kill would go untested.
        let ignores_term = |pid: i32| {
            std::fs::read_to_string(format!("/proc/{pid}/status"))
                .ok()
                .and_then(|st| {
                    let hex = st.lines().find_map(|l| l.strip_prefix("SigIgn:"))?;
                    u64::from_str_radix(hex.trim(), 16).ok()
                })
                .is_some_and(|mask| mask & (1 << (libc::SIGTERM - 1)) != 0)
        };
        while !Scan::take()
            .child_tree(-1, &tag)
            .iter()
            .any(|s| ignores_term(s.pid))
        {
            assert!(Instant::now() < deadline, "tagged process not found");
            std::thread::sleep(Duration::from_millis(5));
        }
        let found = Scan::take().child_tree(-1, &tag);
        assert!(found.iter().any(|s| s.pid == pid && s.sid == pid));
        // Reap it from another thread, as the reaper would.
        let reaper = std::thread::spawn(move || c.wait());
        let r = stop(
            |s| s.child_tree(-1, &tag),
            Duration::from_millis(200),
            &never(),
        );
        assert!(r.found >= 1 && r.killed >= 1, "{r:?}");
        assert_eq!(r.left, 0);
        reaper.join().unwrap().unwrap();
        assert!(Scan::take().child_tree(-1, &tag).is_empty());
    }
}
