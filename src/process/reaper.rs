//! Orphan reaping: the coordinator adopts and reaps whatever its children
//! leave behind.
//!
//! A child's descendants (the browser and its helpers) are orphaned when the
//! child dies first. Normally they go to PID 1, and only leave the process
//! table once PID 1 reaps them; some container inits never do, and a
//! zombie still counts as a member of its process group, so a stopped
//! group would look alive until the stop gives up. We therefore make the
//! coordinator the reaper of its own descendants (it is PID 1 in a
//! container, or a child subreaper otherwise): each child's waiter thread
//! reaps the members of its own process group, and this module keeps the
//! registry of live child groups while its thread reaps every other zombie,
//! woken by SIGCHLD and at least once a second.

use std::collections::HashSet;
use std::io::Read;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

/// Process groups whose waiter thread is alive; their zombies are theirs.
static GROUPS: Mutex<Option<HashSet<i32>>> = Mutex::new(None);

pub fn unregister_group(pgid: i32) {
    let mut g = GROUPS.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(set) = g.as_mut() {
        set.remove(&pgid);
    }
}

/// Start a child with `spawn` and register its process group in one step
/// as far as `sweep` is concerned: the registry's lock is held across the
/// spawn, so the reaper can never take a new child's exit status before its
/// waiter thread is responsible for it.
pub fn spawn_registered(
    spawn: impl FnOnce() -> std::io::Result<std::process::Child>,
) -> std::io::Result<std::process::Child> {
    let mut g = GROUPS.lock().unwrap_or_else(|p| p.into_inner());
    let child = spawn()?;
    g.get_or_insert_with(HashSet::new).insert(child.id() as i32);
    Ok(child)
}

/// Reap every zombie child that no waiter thread is responsible for.
fn sweep() {
    loop {
        // Held for this zombie's decision and reaping (no blocking calls),
        // so a group registered by `spawn_registered` is never raced.
        let groups = GROUPS.lock().unwrap_or_else(|p| p.into_inner());
        // SAFETY: zeroed siginfo_t is a valid out-parameter for waitid.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        // Peek (WNOWAIT) so that a zombie belonging to a child group stays
        // for its own waiter, which needs its exit status.
        let r = unsafe {
            libc::waitid(
                libc::P_ALL,
                0,
                &mut info,
                libc::WEXITED | libc::WNOHANG | libc::WNOWAIT,
            )
        };
        // SAFETY: waitid filled `info` (or left it zeroed: pid 0).
        let pid = unsafe { info.si_pid() };
        if r != 0 || pid == 0 {
            return;
        }
        let pgid = unsafe { libc::getpgid(pid) };
        if groups.as_ref().is_some_and(|s| s.contains(&pgid)) {
            // Its waiter reaps it within moments; look again on the next wake.
            return;
        }
        let mut status = 0;
        // SAFETY: reaping one specific zombie.
        if unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) } == pid {
            log::debug!("reaped orphan pid {pid}");
        } else {
            return;
        }
    }
}

pub struct Reaper {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<()>,
    sig_id: signal_hook::SigId,
}

impl Reaper {
    /// Become the reaper of our descendants' orphans (as PID 1 we are
    /// already; otherwise as a child subreaper) and start the reaper thread.
    pub fn start() -> std::io::Result<Reaper> {
        let pid1 = std::process::id() == 1;
        // SAFETY: prctl with integer arguments only.
        if !pid1 && unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        let (mut rx, tx) = UnixStream::pair()?;
        rx.set_read_timeout(Some(Duration::from_secs(1)))?;
        let sig_id = signal_hook::low_level::pipe::register(libc::SIGCHLD, tx)?;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name("reaper".into())
            .stack_size(64 * 1024)
            .spawn(move || {
                let mut buf = [0u8; 64];
                while !flag.load(Ordering::Relaxed) {
                    let _ = rx.read(&mut buf);
                    sweep();
                }
            })?;
        if pid1 {
            log::info!("running as PID 1: reaping orphaned processes");
        }
        Ok(Reaper {
            stop,
            thread,
            sig_id,
        })
    }

    pub fn stop(self) {
        self.stop.store(true, Ordering::Relaxed);
        signal_hook::low_level::unregister(self.sig_id);
        let _ = self.thread.join();
        sweep();
    }
}
