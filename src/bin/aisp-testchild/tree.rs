//! The child's process tree, shaped like the real one, and how it ends.
//!
//! The launcher (the normal mode) can have three kinds of descendants, each
//! a re-exec of this binary in a hidden mode (see `args.rs`):
//!
//! - the **grandchild** (`spawn_grandchild`): same process group, ignores
//!   SIGTERM, pid in `<pid_dir>/<profile>.grandchild.pid`;
//! - the **browser** (`browser`): started with `setsid()`, so it is in
//!   neither the launcher's process group nor its session; ignores SIGHUP,
//!   has no parent-death signal, holds a listener on
//!   `127.0.0.1:<camoufox port>`, pid in `<pid_dir>/<profile>.browser.pid`.
//!   It exits on SIGTERM unless `browser_ignore_sigterm`. Nothing but a
//!   signal sent to it ends it (safety limit 1 h). It reports "ok" or why it
//!   failed over a pipe, so the launcher knows without guessing;
//! - the **stream helper** (`stream_helper`): same process group, ignores
//!   SIGTERM (set before exec, so even an early group SIGTERM misses it),
//!   may hold `127.0.0.1:<stream port>`, pid in
//!   `<pid_dir>/<profile>.helper.pid`;
//! - the **driver** (`driver`, the server's Playwright driver): same process
//!   group, dies on SIGTERM (default action, reset before exec), and ends
//!   by itself when its stdin (a pipe only the launcher holds) closes, so
//!   it never outlives the launcher; pid in `<pid_dir>/<profile>.driver.pid`.
//!
//! Ending: [`exit_child`] is every normal exit of the launcher; it stops the
//! browser first (SIGTERM, then SIGKILL after 1 s), as the real launcher's
//! exit handler does. [`on_sigterm`] is the launcher's SIGTERM: while the
//! helper lives it only logs and waits for it (so only SIGKILL ends the
//! launcher), then it exits through [`exit_child`]. [`on_sigterm_saving`]
//! is the current real child's SIGTERM (`save_on_term`): save, stop the
//! helper (SIGTERM, which it ignores, then SIGKILL after a grace), the
//! driver and the browser, exit 0. [`on_sigterm_fork`] is the older fork's:
//! stop the browser, then hang for good. A SIGKILLed launcher stops
//! nothing: the browser lives on, re-parented.
//!
//! Shared state is one global [`TREE`] mutex, taken by the main thread while
//! spawning and by the SIGTERM and timer threads while ending; each
//! descendant has a `reap-*` thread that waits for it, so a dead one is seen
//! at once and never left a zombie.

use crate::log_line;
use std::fs::{self, File};
use std::io::{Read, Write};
use std::net::TcpListener;
use std::os::fd::{FromRawFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{self, ChildStdin, Command, Stdio};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

/// Descendants never outlive a forgotten test by much.
pub const DESCENDANT_MAX_LIFE: Duration = Duration::from_secs(3600);
/// How long the launcher waits for its browser's report.
const BROWSER_REPORT_WAIT: Duration = Duration::from_secs(5);
/// How long a browser gets to honour SIGTERM before SIGKILL.
const BROWSER_TERM_GRACE: Duration = Duration::from_secs(1);

/// One spawned descendant, and whether it has exited (set by its reaper).
pub struct Descendant {
    pub pid: i32,
    exited: Mutex<bool>,
    changed: Condvar,
}

impl Descendant {
    /// Starts the reaper thread that waits for `child`.
    fn watch(name: &'static str, mut child: process::Child) -> Arc<Descendant> {
        let d = Arc::new(Descendant {
            pid: child.id() as i32,
            exited: Mutex::new(false),
            changed: Condvar::new(),
        });
        let d2 = Arc::clone(&d);
        let spawned = thread::Builder::new()
            .name(format!("reap-{name}"))
            .spawn(move || {
                let status = child.wait();
                *d2.exited.lock().unwrap_or_else(|e| e.into_inner()) = true;
                d2.changed.notify_all();
                let status = status
                    .map(|s| s.to_string())
                    .unwrap_or_else(|e| e.to_string());
                log_line(&format!("{name} pid={} ended: {status}", d2.pid));
            });
        if let Err(e) = spawned {
            log_line(&format!("error: cannot start reaper for {name}: {e}"));
        }
        d
    }

    fn has_exited(&self) -> bool {
        *self.exited.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Alive: not reaped, signalable and not a zombie.
    pub fn alive(&self) -> bool {
        !self.has_exited() && pid_alive(self.pid)
    }

    /// Waits up to `limit` for the exit; true if it exited.
    pub fn wait_exit(&self, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        let mut exited = self.exited.lock().unwrap_or_else(|e| e.into_inner());
        while !*exited {
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            exited = self
                .changed
                .wait_timeout(exited, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        true
    }

    fn signal(&self, sig: libc::c_int) {
        if !self.has_exited() {
            // SAFETY: kill(2) on a pid we spawned and have not reaped.
            unsafe { libc::kill(self.pid, sig) };
        }
    }
}

/// The process state letter from `/proc/<pid>/stat` text (after the
/// parenthesised command name, which may itself hold spaces or parens).
pub fn stat_state(stat: &str) -> Option<char> {
    let after = &stat[stat.rfind(')')? + 1..];
    after.trim_start().chars().next()
}

/// True when `pid` exists and is not a zombie (or dead) process.
pub fn pid_alive(pid: i32) -> bool {
    // SAFETY: signal 0 only checks that the pid exists and may be signalled.
    if pid <= 0 || unsafe { libc::kill(pid, 0) } != 0 {
        return false;
    }
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !matches!(stat_state(&stat), Some('Z' | 'X' | 'x')),
        Err(_) => true, // no /proc: trust kill(2)
    }
}

#[derive(Default)]
struct Tree {
    browser: Option<Arc<Descendant>>,
    helper: Option<Arc<Descendant>>,
    driver: Option<Arc<Descendant>>,
    /// Our end of the driver's stdin; dropping it ends the driver.
    driver_stdin: Option<ChildStdin>,
    /// Set once the launcher is ending: nothing new is spawned.
    ending: bool,
}

static TREE: Mutex<Tree> = Mutex::new(Tree {
    browser: None,
    helper: None,
    driver: None,
    driver_stdin: None,
    ending: false,
});

fn tree() -> MutexGuard<'static, Tree> {
    TREE.lock().unwrap_or_else(|e| e.into_inner())
}

/// The browser's pid, while it lives.
pub fn browser_pid() -> Option<i32> {
    tree().browser.as_ref().filter(|b| b.alive()).map(|b| b.pid)
}

/// The helper's pid, while it lives.
pub fn helper_pid() -> Option<i32> {
    tree().helper.as_ref().filter(|h| h.alive()).map(|h| h.pid)
}

/// The driver's pid, while it lives.
pub fn driver_pid() -> Option<i32> {
    tree().driver.as_ref().filter(|d| d.alive()).map(|d| d.pid)
}

/// Whether a browser was started and is still alive.
pub fn browser_alive() -> bool {
    browser_pid().is_some()
}

/// Writes `pid` to `path` via a temp file and rename, so a test polling for
/// the file never reads it half-written.
pub fn write_pid_file(path: &Path, pid: u32) -> std::io::Result<()> {
    let tmp = path.with_extension("pid.tmp");
    fs::write(&tmp, format!("{pid}\n"))?;
    fs::rename(&tmp, path)
}

fn set_disposition(sig: libc::c_int, ignore: bool) {
    let action = if ignore { libc::SIG_IGN } else { libc::SIG_DFL };
    // SAFETY: installing SIG_IGN/SIG_DFL has no handler code to be unsafe in.
    unsafe { libc::signal(sig, action) };
}

pub fn ignore_sigterm() {
    set_disposition(libc::SIGTERM, true);
}

/// Sleeps until the safety limit, then exits 0: the end of every
/// descendant mode that is not signalled first, and of a hung launcher.
fn live_until_limit() -> ! {
    let start = Instant::now();
    while start.elapsed() < DESCENDANT_MAX_LIFE {
        thread::sleep(Duration::from_secs(1));
    }
    process::exit(0)
}

/// Accepts and closes connections on `listener` until the process ends.
fn hold_listener(name: &str, listener: TcpListener) {
    let spawned = thread::Builder::new().name(name.into()).spawn(move || {
        for conn in listener.incoming() {
            drop(conn);
        }
    });
    if let Err(e) = spawned {
        log_line(&format!("error: cannot start {name} thread: {e}"));
    }
}

/// The hidden grandchild mode: write our pid, ignore SIGTERM, sleep until
/// SIGKILL (or the safety limit).
pub fn run_grandchild(pidfile: &Path) -> ! {
    ignore_sigterm();
    if let Err(e) = write_pid_file(pidfile, process::id()) {
        eprintln!(
            "aisp-testchild: grandchild cannot write {}: {e}",
            pidfile.display()
        );
        process::exit(1);
    }
    live_until_limit()
}

/// The hidden browser mode's arguments.
#[derive(Debug, Clone, PartialEq)]
pub struct BrowserArgs {
    pub port: u16,
    pub pidfile: Option<PathBuf>,
    pub ignore_sigterm: bool,
    /// Where to report "ok" or "fail <why>"; absent when run by hand.
    pub ready_fd: Option<RawFd>,
}

/// The hidden browser mode: hold the camoufox port, report, live on.
pub fn run_browser(a: &BrowserArgs) -> ! {
    // SAFETY: prctl with PR_SET_PDEATHSIG 0 only clears our own setting.
    unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, 0) };
    set_disposition(libc::SIGHUP, true);
    set_disposition(libc::SIGTERM, a.ignore_sigterm);
    let mut report = a.ready_fd.filter(|&fd| fd > 2).map(|fd| {
        // SAFETY: the launcher passed us this pipe end for our sole use.
        unsafe { File::from_raw_fd(fd) }
    });
    let mut say = |line: &str| {
        if let Some(f) = report.as_mut() {
            let _ = f.write_all(format!("{line}\n").as_bytes());
        }
    };
    let listener = match TcpListener::bind(("127.0.0.1", a.port)) {
        Ok(l) => l,
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
            say(&format!(
                "fail camoufox debug port 127.0.0.1:{} is already in use",
                a.port
            ));
            process::exit(1);
        }
        Err(e) => {
            say(&format!(
                "fail cannot bind camoufox debug port 127.0.0.1:{}: {e}",
                a.port
            ));
            process::exit(1);
        }
    };
    if let Some(p) = &a.pidfile {
        if let Err(e) = write_pid_file(p, process::id()) {
            say(&format!("fail cannot write {}: {e}", p.display()));
            process::exit(1);
        }
    }
    say("ok");
    drop(report);
    hold_listener("camoufox-port", listener);
    live_until_limit()
}

/// The hidden stream-helper mode's arguments.
#[derive(Debug, Clone, PartialEq)]
pub struct HelperArgs {
    pub port: u16,
    pub pidfile: Option<PathBuf>,
}

/// The hidden stream-helper mode: ignore SIGTERM, hold the stream port if
/// free, live on.
pub fn run_helper(a: &HelperArgs) -> ! {
    ignore_sigterm();
    match TcpListener::bind(("127.0.0.1", a.port)) {
        Ok(l) => hold_listener("stream-port", l),
        Err(e) => log_line(&format!(
            "stream helper: cannot bind 127.0.0.1:{}: {e}; running without it",
            a.port
        )),
    }
    if let Some(p) = &a.pidfile {
        if let Err(e) = write_pid_file(p, process::id()) {
            log_line(&format!("stream helper: cannot write {}: {e}", p.display()));
        }
    }
    log_line(&format!(
        "stream helper pid={} up on 127.0.0.1:{} (ignores SIGTERM)",
        process::id(),
        a.port
    ));
    live_until_limit()
}

/// The hidden driver mode: write the pid file, then live until SIGTERM
/// (default action), EOF on stdin (the launcher ended) or the safety limit.
pub fn run_driver(pidfile: Option<&Path>) -> ! {
    set_disposition(libc::SIGTERM, false);
    if let Some(p) = pidfile {
        if let Err(e) = write_pid_file(p, process::id()) {
            eprintln!("aisp-testchild: driver cannot write {}: {e}", p.display());
            process::exit(1);
        }
    }
    let limit = thread::Builder::new()
        .name("driver-limit".into())
        .spawn(|| live_until_limit());
    if let Err(e) = limit {
        eprintln!("aisp-testchild: driver cannot start its limit thread: {e}");
    }
    let _ = std::io::copy(&mut std::io::stdin().lock(), &mut std::io::sink());
    process::exit(0)
}

/// Reads the browser's one-line report from `fd`, for at most `limit`.
/// `None` when it closed the pipe without a line or said nothing in time.
fn read_report(fd: RawFd, limit: Duration) -> Option<String> {
    // SAFETY: fd is our read end of a pipe; the File owns and closes it.
    let mut f = unsafe { File::from_raw_fd(fd) };
    let deadline = Instant::now() + limit;
    let mut got = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return None;
        }
        let mut pfd = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd for the duration of the call.
        let n = unsafe { libc::poll(&mut pfd, 1, left.as_millis().min(1000) as libc::c_int) };
        if n <= 0 {
            continue; // timeout slice or EINTR; the deadline bounds the loop
        }
        let mut buf = [0u8; 256];
        match f.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(k) => {
                got.extend_from_slice(&buf[..k]);
                if got.contains(&b'\n') || got.len() > 4096 {
                    break;
                }
            }
        }
    }
    let text = String::from_utf8_lossy(&got);
    text.lines().next().map(String::from)
}

/// Starts the browser and waits for its report. Err(why) when it failed
/// (the port is taken, ...) or did not report within 5 s.
pub fn spawn_browser(
    camoufox_port: u16,
    pidfile: Option<PathBuf>,
    ignore_sigterm: bool,
) -> Result<i32, String> {
    let mut t = tree();
    if t.ending {
        return Err("the launcher is ending".into());
    }
    let mut fds = [0 as libc::c_int; 2];
    // SAFETY: pipe2 fills two descriptors into the array we pass.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(format!(
            "cannot make a pipe: {}",
            std::io::Error::last_os_error()
        ));
    }
    let (rfd, wfd) = (fds[0], fds[1]);
    let exe = std::env::current_exe().map_err(|e| format!("cannot find own binary: {e}"))?;
    let mut cmd = Command::new(exe);
    cmd.arg("--browser")
        .arg("--port")
        .arg(camoufox_port.to_string())
        .arg("--ready-fd")
        .arg(wfd.to_string());
    if let Some(p) = &pidfile {
        cmd.arg("--pid-file").arg(p);
    }
    if ignore_sigterm {
        cmd.arg("--ignore-sigterm");
    }
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    // SAFETY: only async-signal-safe calls between fork and exec: setsid,
    // fcntl, signal (sigaction), prctl.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setsid() < 0 {
                return Err(std::io::Error::last_os_error());
            }
            let flags = libc::fcntl(wfd, libc::F_GETFD);
            libc::fcntl(wfd, libc::F_SETFD, flags & !libc::FD_CLOEXEC);
            libc::signal(libc::SIGHUP, libc::SIG_IGN);
            let term = if ignore_sigterm {
                libc::SIG_IGN
            } else {
                libc::SIG_DFL
            };
            libc::signal(libc::SIGTERM, term);
            libc::prctl(libc::PR_SET_PDEATHSIG, 0);
            Ok(())
        });
    }
    let spawned = cmd.spawn();
    // SAFETY: our copy of the write end; the browser has its own.
    unsafe { libc::close(wfd) };
    let child = match spawned {
        Ok(c) => c,
        Err(e) => {
            // SAFETY: closing our unused read end.
            unsafe { libc::close(rfd) };
            return Err(format!("cannot spawn the browser: {e}"));
        }
    };
    let pid = child.id() as i32;
    let d = Descendant::watch("browser", child);
    let report = read_report(rfd, BROWSER_REPORT_WAIT);
    match report.as_deref() {
        Some("ok") => {
            t.browser = Some(d);
            Ok(pid)
        }
        Some(other) => Err(other.strip_prefix("fail ").unwrap_or(other).to_string()),
        None => {
            d.signal(libc::SIGKILL);
            Err(format!(
                "the browser pid={pid} did not report within {BROWSER_REPORT_WAIT:?}"
            ))
        }
    }
}

/// SIGKILLs the browser `after` from now, as the OOM killer would; the
/// launcher lives on (knob `browser_dies_after_ms`).
pub fn browser_dies_after(after: Duration) {
    let spawned = thread::Builder::new()
        .name("browser-death".into())
        .spawn(move || {
            thread::sleep(after);
            let browser = tree().browser.clone();
            if let Some(b) = browser.filter(|b| b.alive()) {
                log_line(&format!(
                    "browser pid={} killed (SIGKILL, knob browser_dies_after_ms)",
                    b.pid
                ));
                b.signal(libc::SIGKILL);
            }
        });
    if let Err(e) = spawned {
        log_line(&format!("error: cannot start the browser-death timer: {e}"));
    }
}

/// Starts the stream helper in our process group, SIGTERM ignored from
/// before its exec. Returns its pid.
pub fn spawn_helper(stream_port: u16, pidfile: Option<PathBuf>) -> Result<i32, String> {
    let mut t = tree();
    if t.ending {
        return Err("the launcher is ending".into());
    }
    let exe = std::env::current_exe().map_err(|e| format!("cannot find own binary: {e}"))?;
    let mut cmd = Command::new(exe);
    cmd.arg("--helper")
        .arg("--port")
        .arg(stream_port.to_string());
    if let Some(p) = &pidfile {
        cmd.arg("--pid-file").arg(p);
    }
    cmd.stdin(Stdio::null());
    // SAFETY: signal(2) (sigaction) is async-signal-safe.
    unsafe {
        cmd.pre_exec(|| {
            libc::signal(libc::SIGTERM, libc::SIG_IGN);
            Ok(())
        });
    }
    let child = cmd
        .spawn()
        .map_err(|e| format!("cannot spawn the stream helper: {e}"))?;
    let pid = child.id() as i32;
    t.helper = Some(Descendant::watch("stream-helper", child));
    Ok(pid)
}

/// Starts the driver in our process group, SIGTERM at its default action
/// from before its exec (even if the launcher ignores SIGTERM), stdin a
/// pipe we keep. Returns its pid.
pub fn spawn_driver(pidfile: Option<PathBuf>) -> Result<i32, String> {
    let mut t = tree();
    if t.ending {
        return Err("the launcher is ending".into());
    }
    let exe = std::env::current_exe().map_err(|e| format!("cannot find own binary: {e}"))?;
    let mut cmd = Command::new(exe);
    cmd.arg("--driver");
    if let Some(p) = &pidfile {
        cmd.arg("--pid-file").arg(p);
    }
    cmd.stdin(Stdio::piped()).stdout(Stdio::null());
    // SAFETY: signal(2) (sigaction) is async-signal-safe.
    unsafe {
        cmd.pre_exec(|| {
            libc::signal(libc::SIGTERM, libc::SIG_DFL);
            Ok(())
        });
    }
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("cannot spawn the driver: {e}"))?;
    let pid = child.id() as i32;
    // Taken before the reaper's `wait`, which would close it.
    t.driver_stdin = child.stdin.take();
    t.driver = Some(Descendant::watch("driver", child));
    Ok(pid)
}

/// Whether the driver is still there once a group-wide SIGTERM, if that is
/// what came, has had `grace` to land: the SIGTERM save needs it. True
/// when no driver was started (nothing to need).
pub fn driver_survives(grace: Duration) -> bool {
    match tree().driver.clone() {
        None => true,
        Some(d) => !d.wait_exit(grace) && d.alive(),
    }
}

/// Stops the stream helper, if it lives: SIGTERM (which it ignores), and
/// SIGKILL after `grace`, as the real launcher does after 3 s.
fn stop_helper(grace: Duration) {
    let helper = {
        let mut t = tree();
        t.ending = true;
        t.helper.take()
    };
    let Some(h) = helper.filter(|h| h.alive()) else {
        return;
    };
    log_line(&format!("stopping stream helper pid={} (SIGTERM)", h.pid));
    h.signal(libc::SIGTERM);
    if !h.wait_exit(grace) {
        log_line(&format!(
            "stream helper pid={} still running after {} ms; SIGKILL",
            h.pid,
            grace.as_millis()
        ));
        h.signal(libc::SIGKILL);
        h.wait_exit(BROWSER_TERM_GRACE);
    }
}

/// Stops the driver, if one lives: close its stdin, SIGTERM, SIGKILL after
/// a grace.
fn stop_driver() {
    let (driver, stdin) = {
        let mut t = tree();
        t.ending = true;
        (t.driver.take(), t.driver_stdin.take())
    };
    drop(stdin);
    let Some(d) = driver.filter(|d| d.alive()) else {
        return;
    };
    d.signal(libc::SIGTERM);
    if !d.wait_exit(BROWSER_TERM_GRACE) {
        d.signal(libc::SIGKILL);
        d.wait_exit(BROWSER_TERM_GRACE);
    }
}

/// Stops the browser, if one lives: SIGTERM, and SIGKILL after a grace.
fn stop_browser() {
    let browser = {
        let mut t = tree();
        t.ending = true;
        t.browser.take()
    };
    let Some(b) = browser.filter(|b| b.alive()) else {
        return;
    };
    log_line(&format!("stopping browser pid={} (SIGTERM)", b.pid));
    b.signal(libc::SIGTERM);
    if !b.wait_exit(BROWSER_TERM_GRACE) {
        log_line(&format!("browser pid={} ignored SIGTERM; SIGKILL", b.pid));
        b.signal(libc::SIGKILL);
        b.wait_exit(BROWSER_TERM_GRACE);
    }
}

/// Every normal end of the launcher: stop the browser, then exit.
pub fn exit_child(code: i32) -> ! {
    stop_browser();
    process::exit(code)
}

/// The launcher's SIGTERM: wait for a live stream helper first (it ignores
/// SIGTERM, so in practice until SIGKILL), then run `before_exit` (the auth
/// write-back) and exit 0 through [`exit_child`].
pub fn on_sigterm(before_exit: impl FnOnce()) -> ! {
    let helper = tree().helper.clone();
    if let Some(h) = helper.filter(|h| h.alive()) {
        log_line(&format!(
            "aisp-testchild: SIGTERM, but stream helper pid={} is still running \
             (it ignores SIGTERM); waiting for it before exiting",
            h.pid
        ));
        if !h.wait_exit(DESCENDANT_MAX_LIFE) {
            log_line("stream helper still running after the safety limit");
        }
        log_line("stream helper gone; carrying on with shutdown");
    }
    before_exit();
    log_line("aisp-testchild: SIGTERM, exiting 0");
    exit_child(0)
}

/// The current real child's SIGTERM (`save_on_term`): `save` (the cookie
/// save, which decides itself whether it can), then stop the helper
/// (SIGKILL after `helper_grace`), the driver and the browser, exit 0.
pub fn on_sigterm_saving(save: impl FnOnce(), helper_grace: Duration) -> ! {
    save();
    stop_helper(helper_grace);
    stop_driver();
    log_line("aisp-testchild: SIGTERM, exiting 0");
    exit_child(0)
}

/// The older fork's SIGTERM: stop the browser, then wait for good on the
/// stream proxy, which ignores SIGTERM: only SIGKILL ends the launcher.
pub fn on_sigterm_fork() -> ! {
    log_line("Shutting down (fork): closing the browser, then waiting for the stream proxy");
    stop_browser();
    live_until_limit()
}

/// The current child's end after an expired login: stop the browser, the
/// helper and the driver at once, exit 0.
pub fn exit_stopping_all(code: i32) -> ! {
    stop_helper(Duration::ZERO);
    stop_driver();
    exit_child(code)
}

/// The fork's end after an expired login: stop the browser, ignore
/// SIGTERM from now on and hang (until SIGKILL or the safety limit).
pub fn stop_browser_and_hang() -> ! {
    stop_browser();
    ignore_sigterm();
    live_until_limit()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_state_table() {
        assert_eq!(stat_state("12 (bash) S 1 2 3"), Some('S'));
        assert_eq!(stat_state("12 (a) b) (c) Z 1"), Some('Z'));
        assert_eq!(stat_state("12 (x)"), None);
        assert_eq!(stat_state("nonsense"), None);
    }

    #[test]
    fn liveness() {
        assert!(pid_alive(process::id() as i32));
        assert!(!pid_alive(0));
        assert!(!pid_alive(-5));
        // A child that exited but was not reaped is a zombie: not alive.
        let mut c = Command::new("true").spawn().unwrap();
        let pid = c.id() as i32;
        let t0 = Instant::now();
        while pid_alive(pid) && t0.elapsed() < Duration::from_secs(5) {
            thread::sleep(Duration::from_millis(10));
        }
        assert!(!pid_alive(pid), "a zombie counts as dead");
        c.wait().unwrap();
    }
}
