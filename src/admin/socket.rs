//! The admin Unix socket: `AUTH_PROFILE_CACHE_DIR/admin.sock` unless
//! `ADMIN_SOCKET` names another path, mode 0600 in a 0700 directory, so only
//! the coordinator's own user (and root) can connect; `kubectl exec` and
//! `podman exec` reach it. The peer's uid is checked too (`SO_PEERCRED`).
//!
//! One named thread accepts connections and gives each its own short-lived
//! thread (at most [`MAX_CLIENTS`] at once; past that a connection gets an
//! error line at once), so a silent client never blocks another. Each
//! connection has one deadline, [`IO_TIMEOUT`], for its whole request line
//! however it trickles in, and for its answer: read one request line
//! (bounded in size), hand it to the `Control`, write the answer line,
//! close. Operations only decide and send commands (a restart's drain
//! happens on the slot's own thread), so no connection holds its thread
//! for long. `stop` wakes the accept and joins every thread; the socket
//! file is removed.
//!
//! Who may connect: the coordinator's own user or root (`SO_PEERCRED`),
//! and never a process of a child's tree: the peer, or any of its
//! ancestors, carries a child's tag, or descends from the coordinator
//! (children are the coordinator's only descendants, and orphans are
//! re-parented to it as the subreaper). A child runs a browser that loads
//! web pages; it is not trusted with the fleet. Refusals are logged,
//! rate-limited, and slowed (see `refusals`).

use std::fmt;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use log::warn;

use crate::process::{proc, tree};

use super::proto;
use super::{Control, Via};

/// Longest request line.
const MAX_REQUEST: u64 = 64 * 1024;
const IO_TIMEOUT: Duration = Duration::from_secs(5);
/// Connections served at once.
pub const MAX_CLIENTS: usize = 16;
/// Ancestors looked at for a peer's descent.
const MAX_ANCESTORS: usize = 64;

#[derive(Debug)]
pub enum SocketError {
    /// Another process answers on the path: a coordinator already runs there.
    InUse(PathBuf),
    Bind(PathBuf, std::io::Error),
}

impl fmt::Display for SocketError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SocketError::InUse(p) => write!(
                f,
                "admin socket {} is in use by a running coordinator: give each coordinator its own AUTH_PROFILE_CACHE_DIR",
                p.display()
            ),
            SocketError::Bind(p, e) => write!(
                f,
                "cannot create the admin socket {}: {e}; set ADMIN_SOCKET to a writable path",
                p.display()
            ),
        }
    }
}

impl std::error::Error for SocketError {}

/// `sun_path` holds 108 bytes; longer paths (a deep cache directory) are
/// reached through the parent directory's descriptor instead.
const SUN_PATH_MAX: usize = 100;

/// A path `bind`/`connect` accept for `path`, and the directory handle that
/// must stay open while it is used: for a long path,
/// `/proc/self/fd/<dir>/<name>`, which the kernel resolves through the
/// open directory.
pub fn reachable(path: &Path) -> std::io::Result<(Option<std::fs::File>, PathBuf)> {
    if path.as_os_str().len() <= SUN_PATH_MAX {
        return Ok((None, path.to_path_buf()));
    }
    let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
        return Ok((None, path.to_path_buf()));
    };
    let handle = std::fs::File::open(dir)?;
    let short = PathBuf::from(format!("/proc/self/fd/{}", handle.as_raw_fd())).join(name);
    Ok((Some(handle), short))
}

pub struct AdminSocket {
    path: PathBuf,
    stop: Arc<AtomicBool>,
    /// The listening socket's own handle, to wake its accept at the stop
    /// even when the socket's file is gone (removed with its directory).
    listener: Option<UnixListener>,
    thread: Option<JoinHandle<()>>,
}

/// The longest wait for the admin thread at the stop.
const STOP_WAIT: Duration = Duration::from_secs(2);

impl AdminSocket {
    pub fn start(path: &Path, control: Arc<dyn Control>) -> Result<AdminSocket, SocketError> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| SocketError::Bind(path.into(), e))?;
        }
        let (_dir, at) = reachable(path).map_err(|e| SocketError::Bind(path.into(), e))?;
        if path.exists() {
            if UnixStream::connect(&at).is_ok() {
                return Err(SocketError::InUse(path.to_path_buf()));
            }
            // Left by a coordinator that did not stop cleanly.
            let _ = std::fs::remove_file(path);
        }
        let listener = UnixListener::bind(&at).map_err(|e| SocketError::Bind(path.into(), e))?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
            .map_err(|e| SocketError::Bind(path.into(), e))?;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let own = listener.try_clone().ok();
        let thread = std::thread::Builder::new()
            .name("admin".into())
            .spawn(move || accept_loop(listener, control, flag))
            .map_err(|e| SocketError::Bind(path.into(), e))?;
        Ok(AdminSocket {
            path: path.to_path_buf(),
            stop,
            listener: own,
            thread: Some(thread),
        })
    }

    pub fn stop(mut self) {
        self.shut();
    }

    fn shut(&mut self) {
        self.stop.store(true, Ordering::Release);
        // Wake the accept: shutting the listening socket down makes a
        // blocked accept fail at once (Linux), whether or not its file is
        // still there; a connection of our own is the fallback.
        if let Some(l) = self.listener.take() {
            // SAFETY: the descriptor is valid while `l` lives; shutdown
            // touches no memory.
            unsafe { libc::shutdown(l.as_raw_fd(), libc::SHUT_RDWR) };
        }
        if let Ok((_dir, at)) = reachable(&self.path) {
            let _ = UnixStream::connect(at);
        }
        if let Some(t) = self.thread.take() {
            let deadline = Instant::now() + STOP_WAIT;
            while !t.is_finished() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
            if t.is_finished() {
                let _ = t.join();
            } else {
                warn!("the admin socket's thread did not stop in time; leaving it");
            }
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

impl Drop for AdminSocket {
    fn drop(&mut self) {
        if self.thread.is_some() {
            self.shut();
        }
    }
}

/// Accept until `stop`, one thread per connection (bounded); joins them
/// all before returning.
fn accept_loop(listener: UnixListener, control: Arc<dyn Control>, stop: Arc<AtomicBool>) {
    let busy = Arc::new(AtomicUsize::new(0));
    let mut threads: Vec<JoinHandle<()>> = Vec::new();
    for conn in listener.incoming() {
        if stop.load(Ordering::Acquire) {
            break;
        }
        threads.retain(|t| !t.is_finished());
        let c = match conn {
            Ok(c) => c,
            Err(e) => {
                warn!("admin socket: accept failed: {e}");
                std::thread::sleep(Duration::from_millis(50));
                continue;
            }
        };
        if busy.fetch_add(1, Ordering::SeqCst) >= MAX_CLIENTS {
            busy.fetch_sub(1, Ordering::SeqCst);
            let _ = c.set_write_timeout(Some(Duration::from_millis(200)));
            let mut w = &c;
            let answer = proto::error("the admin socket is busy; try again in a few seconds");
            let _ = writeln!(w, "{answer}");
            continue;
        }
        let (control, count) = (control.clone(), busy.clone());
        let spawned = std::thread::Builder::new()
            .name("admin-conn".into())
            .stack_size(256 * 1024)
            .spawn(move || {
                serve(c, control.as_ref());
                count.fetch_sub(1, Ordering::SeqCst);
            });
        match spawned {
            Ok(t) => threads.push(t),
            Err(e) => {
                busy.fetch_sub(1, Ordering::SeqCst);
                warn!("admin socket: cannot serve a connection: {e}");
            }
        }
    }
    for t in threads {
        let _ = t.join();
    }
}

/// The connected peer's pid and uid.
fn peer(s: &UnixStream) -> Option<(i32, u32)> {
    let mut cred: libc::ucred = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: getsockopt with a correctly sized out-buffer on our own fd.
    let r = unsafe {
        libc::getsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            &mut cred as *mut _ as *mut libc::c_void,
            &mut len,
        )
    };
    (r == 0).then_some((cred.pid, cred.uid))
}

/// Whether `pid` is a process of one of our children's trees: it or an
/// ancestor carries a child's tag, or it descends from us.
pub fn in_child_tree(pid: i32) -> bool {
    let me = std::process::id() as i32;
    let mut p = pid;
    for _ in 0..MAX_ANCESTORS {
        if p <= 1 || p == me {
            return p == me && pid != me;
        }
        if proc::env_var(p, tree::VAR).is_some() {
            return true;
        }
        match proc::stat(p) {
            Some(st) => p = st.ppid,
            None => return false,
        }
    }
    // Deeper than any real tree: not trusted either.
    true
}

/// Reads from `conn` until `deadline`, however the bytes trickle in.
struct Deadlined<'a> {
    conn: &'a UnixStream,
    deadline: Instant,
}

impl Read for Deadlined<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let left = self.deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "the request line did not come in time",
            ));
        }
        self.conn.set_read_timeout(Some(left))?;
        (&mut &*self.conn).read(buf)
    }
}

fn serve(conn: UnixStream, control: &dyn Control) {
    let deadline = Instant::now() + IO_TIMEOUT;
    let _ = conn.set_write_timeout(Some(IO_TIMEOUT));
    // SAFETY: geteuid has no failure mode.
    let me = unsafe { libc::geteuid() };
    let answer = match peer(&conn) {
        Some((pid, uid)) if (uid == me || uid == 0) && !in_child_tree(pid) => {
            let mut line = String::new();
            let mut reader = BufReader::new(
                Deadlined {
                    conn: &conn,
                    deadline,
                }
                .take(MAX_REQUEST),
            );
            match reader.read_line(&mut line) {
                Ok(0) => return, // a wake-up or a probe: nothing asked
                Ok(_) => match proto::parse(&line) {
                    Ok(rq) => control.handle(rq, Via::Socket),
                    Err(answer) => answer,
                },
                Err(e) => proto::error(format!("cannot read the request: {e}")),
            }
        }
        Some((pid, uid)) if uid == me || uid == 0 => {
            super::refusals::refused(&format!(
                "process {pid} of a child's tree connected to the admin socket"
            ));
            proto::error("a child's process may not use this socket")
        }
        _ => {
            super::refusals::refused("another user connected to the admin socket");
            proto::error("only the coordinator's own user may use this socket")
        }
    };
    let mut w = &conn;
    let _ = writeln!(w, "{answer}");
    let _ = w.flush();
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};
    use std::sync::Mutex;

    struct Echo(Mutex<Vec<String>>);
    impl Control for Echo {
        fn handle(&self, rq: proto::Request, via: Via) -> Value {
            self.0
                .lock()
                .unwrap()
                .push(format!("{} via {via}", rq.describe()));
            proto::ok(json!({ "echo": rq.describe() }))
        }
    }

    fn ask(path: &Path, line: &str) -> Value {
        let (_dir, at) = reachable(path).unwrap();
        let mut s = UnixStream::connect(at).unwrap();
        writeln!(s, "{line}").unwrap();
        let mut out = String::new();
        BufReader::new(s).read_line(&mut out).unwrap();
        serde_json::from_str(&out).unwrap()
    }

    #[test]
    fn a_childs_tree_is_recognised_by_its_tag_or_its_descent() {
        // Our own descendant, tagged or not.
        let mut tagged = std::process::Command::new("sleep")
            .arg("5")
            .env(tree::VAR, "o/r/0/1")
            .spawn()
            .unwrap();
        let mut plain = std::process::Command::new("sleep")
            .arg("5")
            .spawn()
            .unwrap();
        assert!(in_child_tree(tagged.id() as i32));
        assert!(in_child_tree(plain.id() as i32));
        // Ourselves, our parent (the test runner) and init are not.
        assert!(!in_child_tree(std::process::id() as i32));
        let parent = proc::stat(std::process::id() as i32).unwrap().ppid;
        assert!(!in_child_tree(parent));
        assert!(!in_child_tree(1));
        for c in [&mut tagged, &mut plain] {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// A silent client does not keep another from its answer.
    #[test]
    fn a_silent_client_blocks_nobody() {
        let dir = std::env::temp_dir().join(format!("aisp-admin-silent-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let path = dir.join("admin.sock");
        let echo = Arc::new(Echo(Mutex::new(Vec::new())));
        let sock = AdminSocket::start(&path, echo.clone()).unwrap();
        let silent: Vec<UnixStream> = (0..3)
            .map(|_| UnixStream::connect(&path).unwrap())
            .collect();
        let t = std::time::Instant::now();
        let a = ask(&path, r#"{"op": "restart", "slot": 2}"#);
        assert_eq!(a["ok"], true);
        assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
        drop(silent);
        sock.stop();
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn one_request_one_answer_private_socket_and_clean_stop() {
        // Longer than sun_path allows: reached through the directory.
        let dir = std::env::temp_dir().join(format!(
            "aisp-admin-{}-{}",
            std::process::id(),
            "a-long-directory-name".repeat(5)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        let path = dir.join("admin.sock");
        let echo = Arc::new(Echo(Mutex::new(Vec::new())));
        let sock = AdminSocket::start(&path, echo.clone()).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let a = ask(&path, r#"{"op": "restart", "slot": 1}"#);
        assert_eq!(a, json!({"ok": true, "echo": "restart slot 1"}));
        let bad = ask(&path, "nonsense");
        assert_eq!(bad["ok"], false);
        assert!(matches!(
            AdminSocket::start(&path, echo.clone()),
            Err(SocketError::InUse(_))
        ));
        sock.stop();
        assert!(!path.exists());
        assert_eq!(*echo.0.lock().unwrap(), vec!["restart slot 1 via socket"]);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
