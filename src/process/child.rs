//! One child process and every process it starts.
//!
//! A `Child` is owned by exactly one slot watcher. It starts the program in a
//! new process group with an explicit environment that carries the child's
//! tag (see `tree`), drains stdout/stderr into the profile's rotating log on
//! two pump threads, and runs a waiter thread that blocks in
//! `waitpid(-pgid)`: the leader's exit is reported on a channel the moment it
//! happens, and group members orphaned to us (we are their subreaper, see
//! `reaper`) are reaped there too. `stop` stops the child's whole tree (the
//! group, whatever left it by `setsid`, and their descendants): SIGTERM to
//! each, a bounded grace, SIGKILL to what is left, and it returns only when
//! none of it remains. `Drop` is the last line of defence: whatever of the
//! tree is still alive is killed.

use std::ffi::OsString;
use std::fmt;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{after, never, select, Receiver};

use super::childlog::{self, RotatingLog};
use super::reaper;
use super::tree::{self, Scan};

/// How a child's leader ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    Code(i32),
    Signal(i32),
    /// Reaped by someone else before we could read its status.
    Unknown,
}

impl fmt::Display for Exit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Exit::Code(c) => write!(f, "exit code {c}"),
            Exit::Signal(s) => write!(f, "signal {s}"),
            Exit::Unknown => f.write_str("unknown status"),
        }
    }
}

/// What to run: program, arguments, the whole environment (see `env`),
/// directory, log file.
pub struct Spec {
    pub program: String,
    pub args: Vec<String>,
    pub env: Vec<(OsString, OsString)>,
    pub workdir: PathBuf,
    pub log_path: PathBuf,
    /// Names the pump and waiter threads, e.g. "slot0".
    pub name: String,
    /// The child's tag, also present in `env` (see `tree`).
    pub tag: String,
    /// Hears the account signs in its log lines.
    pub listener: Option<childlog::Listener>,
}

pub struct Child {
    pid: i32,
    tag: String,
    exit_rx: Receiver<Exit>,
    exit: Option<Exit>,
    threads: Vec<JoinHandle<()>>,
}

impl Child {
    pub fn spawn(spec: &Spec) -> std::io::Result<Child> {
        let mut cmd = Command::new(&spec.program);
        cmd.args(&spec.args)
            .env_clear()
            .envs(spec.env.iter().map(|(k, v)| (k, v)))
            .current_dir(&spec.workdir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0);
        // SAFETY: prctl is async-signal-safe and touches no memory of ours.
        // If the coordinator dies without cleaning up (SIGKILL), the kernel
        // kills the child too instead of leaving it to run unsupervised.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0);
                Ok(())
            });
        }
        let mut child = reaper::spawn_registered(|| cmd.spawn())?;
        let pid = child.id() as i32;

        let log = Arc::new(Mutex::new(RotatingLog::open(&spec.log_path)));
        let mut threads = Vec::new();
        if let Some(out) = child.stdout.take() {
            threads.push(childlog::pump(
                format!("{}-stdout", spec.name),
                out,
                log.clone(),
                spec.listener.clone(),
            )?);
        }
        if let Some(err) = child.stderr.take() {
            threads.push(childlog::pump(
                format!("{}-stderr", spec.name),
                err,
                log,
                spec.listener.clone(),
            )?);
        }
        // std's handle is not used to wait: the waiter below owns reaping.
        drop(child);

        let (tx, exit_rx) = crossbeam_channel::bounded(1);
        threads.push(
            std::thread::Builder::new()
                .name(format!("{}-wait", spec.name))
                .stack_size(64 * 1024)
                .spawn(move || {
                    let mut leader_seen = false;
                    loop {
                        let mut status = 0;
                        // SAFETY: plain syscall with a valid out-pointer.
                        let r = unsafe { libc::waitpid(-pid, &mut status, 0) };
                        if r == pid {
                            leader_seen = true;
                            let _ = tx.send(decode(status));
                        } else if r < 0 {
                            let err = std::io::Error::last_os_error();
                            if err.raw_os_error() == Some(libc::EINTR) {
                                continue;
                            }
                            // ECHILD: no child of ours is left in the group.
                            break;
                        }
                    }
                    if !leader_seen {
                        let _ = tx.send(Exit::Unknown);
                    }
                    reaper::unregister_group(pid);
                })?,
        );
        Ok(Child {
            pid,
            tag: spec.tag.clone(),
            exit_rx,
            exit: None,
            threads,
        })
    }

    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// Fires once, when the leader has exited (select on it).
    pub fn exit_events(&self) -> &Receiver<Exit> {
        &self.exit_rx
    }

    /// Record an exit received from `exit_events`.
    pub fn mark_exited(&mut self, exit: Exit) {
        self.exit = Some(exit);
    }

    /// The child's tree as one scan of `/proc` sees it now.
    fn members(&self, scan: &Scan) -> Vec<crate::process::proc::Stat> {
        scan.child_tree(self.pid, &self.tag)
    }

    /// Stop the whole tree: SIGTERM to the launcher alone first (so it can
    /// save its login), then to the rest, all within `grace` (cut short when
    /// `hurry` fires or closes), SIGKILL to what is left, until none of it
    /// remains. Returns the leader's exit and how the stop went.
    pub fn stop(mut self, grace: Duration, hurry: &Receiver<()>) -> (Exit, tree::Stopped) {
        let leader = if self.exit.is_some() { -1 } else { self.pid };
        let report = tree::stop_leader_first(leader, |scan| self.members(scan), grace, hurry);
        if report.left > 0 {
            log::error!(
                "{} processes of child {} still alive 5 s after SIGKILL (stuck in the kernel?)",
                report.left,
                self.pid
            );
        }
        if self.exit.is_none() {
            // The leader was a member, so it is gone: its status is on the
            // way from the waiter.
            let timeout = after(Duration::from_secs(1));
            select! {
                recv(self.exit_rx) -> e => self.exit = Some(e.unwrap_or(Exit::Unknown)),
                recv(timeout) -> _ => {}
            }
        }
        self.join_threads();
        (self.exit.unwrap_or(Exit::Unknown), report)
    }

    /// The pumps end when the pipes close, the waiter when nobody of the
    /// group is left to reap; both follow the group's death closely. Threads
    /// not done within a second are left to finish on their own.
    fn join_threads(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(1);
        for t in std::mem::take(&mut self.threads) {
            while !t.is_finished() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(2));
            }
            if t.is_finished() {
                let _ = t.join();
            }
        }
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        if !self.threads.is_empty() {
            tree::stop(|scan| self.members(scan), Duration::ZERO, &never());
        }
    }
}

fn decode(status: i32) -> Exit {
    if libc::WIFEXITED(status) {
        Exit::Code(libc::WEXITSTATUS(status))
    } else if libc::WIFSIGNALED(status) {
        Exit::Signal(libc::WTERMSIG(status))
    } else {
        Exit::Unknown
    }
}
