//! Orphan reaping for when the coordinator runs as PID 1 in a container.
//!
//! Processes whose parent died are reparented to PID 1; if nobody waits for
//! them they stay zombies forever. Each child's waiter thread already reaps
//! the members of its own process group, so this module keeps the registry
//! of live child groups, and its thread (started only as PID 1) reaps every
//! other zombie, woken by SIGCHLD and at least once a second.

use std::collections::HashSet;
use std::io::Read;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

/// Process groups whose waiter thread is alive; their zombies are theirs.
static GROUPS: Mutex<Option<HashSet<i32>>> = Mutex::new(None);

pub fn register_group(pgid: i32) {
    let mut g = GROUPS.lock().unwrap_or_else(|p| p.into_inner());
    g.get_or_insert_with(HashSet::new).insert(pgid);
}

pub fn unregister_group(pgid: i32) {
    let mut g = GROUPS.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(set) = g.as_mut() {
        set.remove(&pgid);
    }
}

fn owned_by_a_waiter(pgid: i32) -> bool {
    let g = GROUPS.lock().unwrap_or_else(|p| p.into_inner());
    g.as_ref().is_some_and(|s| s.contains(&pgid))
}

/// Reap every zombie child that no waiter thread is responsible for.
/// Returns how many were reaped.
fn sweep() -> usize {
    let mut reaped = 0;
    loop {
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
            return reaped;
        }
        let pgid = unsafe { libc::getpgid(pid) };
        if owned_by_a_waiter(pgid) {
            // Its waiter reaps it within moments; look again on the next wake.
            return reaped;
        }
        let mut status = 0;
        // SAFETY: reaping one specific zombie.
        if unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) } == pid {
            log::debug!("reaped orphan pid {pid}");
            reaped += 1;
        } else {
            return reaped;
        }
    }
}

pub struct Reaper {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<()>,
    sig_id: signal_hook::SigId,
}

impl Reaper {
    /// Start the reaper thread when we are PID 1; otherwise orphans go to
    /// the real init and there is nothing to do.
    pub fn start_if_pid1() -> std::io::Result<Option<Reaper>> {
        if std::process::id() != 1 {
            return Ok(None);
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
        log::info!("running as PID 1: reaping orphaned processes");
        Ok(Some(Reaper {
            stop,
            thread,
            sig_id,
        }))
    }

    pub fn stop(self) {
        self.stop.store(true, Ordering::Relaxed);
        signal_hook::low_level::unregister(self.sig_id);
        let _ = self.thread.join();
        sweep();
    }
}
