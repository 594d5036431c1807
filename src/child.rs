//! One child process and its whole process group.
//!
//! A `Child` is owned by exactly one slot watcher. It starts the program in a
//! new process group (so the browser and everything else it spawns can be
//! signalled together), drains stdout/stderr into the profile's rotating log
//! on two pump threads, and runs a waiter thread that blocks in
//! `waitpid(-pgid)`: the leader's exit is reported on a channel the moment it
//! happens, and group members orphaned to us (we are their subreaper, see
//! `reaper`) are reaped there too, so a killed group is gone at once. `stop` is SIGTERM to the group, a bounded grace, SIGKILL to the
//! group, then waiting until the group is gone. `Drop` is the last line of
//! defence: a group still alive is killed.

use std::ffi::OsString;
use std::fmt;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{after, never, select, Receiver};

use crate::childlog::{self, RotatingLog};
use crate::reaper;

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

/// What to run: program, arguments, extra environment, directory, log file.
pub struct Spec {
    pub program: String,
    pub args: Vec<String>,
    pub env: Vec<(String, OsString)>,
    pub workdir: PathBuf,
    pub log_path: PathBuf,
    /// Names the pump and waiter threads, e.g. "slot0".
    pub tag: String,
}

pub struct Child {
    pid: i32,
    exit_rx: Receiver<Exit>,
    exit: Option<Exit>,
    threads: Vec<JoinHandle<()>>,
}

impl Child {
    pub fn spawn(spec: &Spec) -> std::io::Result<Child> {
        let mut cmd = Command::new(&spec.program);
        cmd.args(&spec.args)
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
                format!("{}-stdout", spec.tag),
                out,
                log.clone(),
            )?);
        }
        if let Some(err) = child.stderr.take() {
            threads.push(childlog::pump(format!("{}-stderr", spec.tag), err, log)?);
        }
        // std's handle is not used to wait: the waiter below owns reaping.
        drop(child);

        let (tx, exit_rx) = crossbeam_channel::bounded(1);
        threads.push(
            std::thread::Builder::new()
                .name(format!("{}-wait", spec.tag))
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

    fn group_alive(&self) -> bool {
        // SAFETY: signal 0 only checks for existence.
        unsafe { libc::kill(-self.pid, 0) == 0 }
    }

    fn signal_group(&self, sig: i32) {
        // SAFETY: the group id is our own child's; ESRCH (gone) is fine.
        unsafe {
            libc::kill(-self.pid, sig);
        }
    }

    /// Wait until the leader has exited and no process of the group is
    /// left, until `deadline`, or until `hurry` fires. True when all gone.
    fn wait_gone(&mut self, deadline: Instant, hurry: &Receiver<()>) -> bool {
        if self.exit.is_none() {
            let timeout = after(deadline.saturating_duration_since(Instant::now()));
            select! {
                recv(self.exit_rx) -> e => self.exit = Some(e.unwrap_or(Exit::Unknown)),
                recv(hurry) -> _ => return false,
                recv(timeout) -> _ => return false,
            }
        }
        // The leader is gone; stragglers that ignored the signal may remain.
        loop {
            if !self.group_alive() {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            select! {
                recv(hurry) -> _ => return false,
                default(Duration::from_millis(10)) => {}
            }
        }
    }

    /// SIGTERM the group, wait up to `grace` (cut short when `hurry` fires or
    /// closes), SIGKILL the group, and wait for it to be gone. Returns the
    /// leader's exit and whether SIGKILL was needed.
    pub fn stop(mut self, grace: Duration, hurry: &Receiver<()>) -> (Exit, bool) {
        let killed = self.terminate(grace, hurry);
        (self.exit.unwrap_or(Exit::Unknown), killed)
    }

    fn terminate(&mut self, grace: Duration, hurry: &Receiver<()>) -> bool {
        if self.exit.is_some() && !self.group_alive() {
            self.join_threads();
            return false;
        }
        self.signal_group(libc::SIGTERM);
        if self.wait_gone(Instant::now() + grace, hurry) {
            self.join_threads();
            return false;
        }
        self.signal_group(libc::SIGKILL);
        if !self.wait_gone(Instant::now() + Duration::from_secs(5), &never()) {
            log::error!(
                "process group {} still has members 5 s after SIGKILL (stuck in the kernel?)",
                self.pid
            );
        }
        self.join_threads();
        true
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
        if !self.threads.is_empty() && self.group_alive() {
            self.signal_group(libc::SIGKILL);
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
