//! Shared helpers of the benchmarks (`tests/bench/*.rs`, each a
//! `harness = false` binary that includes this file as `mod support`).
//!
//! Owns: temp dirs, free ports, the coordinator and nginx under test (each in
//! a handle whose `Drop` stops it and everything it started), a watchdog that
//! kills all of that and exits when a benchmark overruns, tiny blocking HTTP
//! probes, and the load generator (raw HTTP/1.1 over `std::net::TcpStream`,
//! one keep-alive connection per client thread) with its statistics.
//!
//! Everything listens on and connects to 127.0.0.1 only. Every loop is
//! bounded by a count or a deadline. Nothing here asserts on timings: the
//! benchmarks print figures, people judge them.

#![allow(dead_code)] // each benchmark uses a different part of this module

use std::collections::HashMap;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

pub mod haproxy;
pub mod openloop;
pub mod pcap;

pub const COORDINATOR: &str = env!("CARGO_BIN_EXE_aistudioproxy");
pub const TESTCHILD: &str = env!("CARGO_BIN_EXE_aisp-testchild");
pub const LOCALHOST: &str = "127.0.0.1";

// ---------------------------------------------------------------------------
// Process groups to kill when the watchdog fires.

/// Process groups started by this benchmark and not yet stopped. The
/// watchdog thread reads it when it must end the run early, while the main
/// thread's handles are still alive; the lock is held only to push, remove or
/// copy.
static GROUPS: Mutex<Vec<i32>> = Mutex::new(Vec::new());

fn register_group(pgid: i32) {
    GROUPS.lock().unwrap_or_else(|p| p.into_inner()).push(pgid);
}

fn forget_group(pgid: i32) {
    GROUPS
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .retain(|&g| g != pgid);
}

fn kill_group(pgid: i32, sig: libc::c_int) {
    if pgid > 1 {
        // SAFETY: plain syscall on a process group we started.
        unsafe { libc::killpg(pgid, sig) };
    }
}

/// Ends the process after `limit` unless the benchmark finished first:
/// everything registered gets SIGKILL, so no server outlives an overrun.
pub fn watchdog(name: &'static str, limit: Duration) {
    let _ = thread::Builder::new()
        .name("watchdog".into())
        .spawn(move || {
            thread::sleep(limit);
            eprintln!("{name}: watchdog: still running after {limit:?}; killing everything");
            let groups = GROUPS.lock().unwrap_or_else(|p| p.into_inner()).clone();
            for g in groups {
                kill_group(g, libc::SIGKILL);
            }
            std::process::exit(3);
        });
}

// ---------------------------------------------------------------------------
// Temp dirs and ports.

/// A fresh directory under the system temp dir, removed on drop.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let p =
            std::env::temp_dir().join(format!("aisp-bench-{tag}-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&p).expect("create a temp dir");
        TempDir(p)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A port the OS just gave us, released again for the server under test.
pub fn free_port() -> u16 {
    TcpListener::bind((LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind 127.0.0.1:0")
}

/// A base port such that `base..base+n` are all free right now. Starts from
/// an OS-chosen port so parallel runs rarely collide; bounded tries.
pub fn free_range(n: u16) -> u16 {
    for _ in 0..200 {
        let base = free_port();
        if u32::from(base) + u32::from(n) > 65000 {
            continue;
        }
        let held: Vec<TcpListener> = (0..n)
            .filter_map(|i| TcpListener::bind((LOCALHOST, base + i)).ok())
            .collect();
        if held.len() == usize::from(n) {
            return base;
        }
    }
    panic!("no range of {n} free ports found");
}

// ---------------------------------------------------------------------------
// Small blocking HTTP probes (one connection each, `Connection: close`).

/// `GET path` on 127.0.0.1:port; `(status, body)` or None on any failure.
pub fn http_get(port: u16, path: &str, timeout: Duration) -> Option<(u16, String)> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut s = TcpStream::connect_timeout(&addr, timeout).ok()?;
    s.set_read_timeout(Some(timeout)).ok()?;
    s.set_write_timeout(Some(timeout)).ok()?;
    let _ = s.set_nodelay(true);
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut r = BufReader::new(s);
    let head = read_head(&mut r).ok()?;
    let mut body = Vec::new();
    match head.framing {
        BodyFraming::Length(n) => {
            body.resize(n as usize, 0);
            r.read_exact(&mut body).ok()?;
        }
        BodyFraming::Chunked => {
            let mut sink = ChunkSink::Collect(&mut body);
            read_chunked(&mut r, &mut sink).ok()?;
        }
        BodyFraming::UntilClose => {
            r.read_to_end(&mut body).ok()?;
        }
    }
    Some((head.status, String::from_utf8_lossy(&body).into_owned()))
}

/// A slot as `/ready` reports it.
#[derive(Debug, Clone)]
pub struct Slot {
    pub state: String,
    pub pid: Option<i32>,
    pub api_port: u16,
    pub profile: Option<String>,
    pub restarts: u64,
}

/// The coordinator's slots from one `/ready` answer (200 or 503).
pub fn ready_slots(port: u16) -> Option<Vec<Slot>> {
    let (_, body) = http_get(port, "/ready", Duration::from_millis(500))?;
    let v: serde_json::Value = serde_json::from_str(&body).ok()?;
    let slots = v.get("slots")?.as_array()?;
    Some(
        slots
            .iter()
            .map(|s| Slot {
                state: s["state"].as_str().unwrap_or("").to_string(),
                pid: s["pid"].as_i64().map(|p| p as i32),
                api_port: s["ports"]["api"].as_u64().unwrap_or(0) as u16,
                profile: s["profile"].as_str().map(str::to_string),
                restarts: s["restarts"].as_u64().unwrap_or(0),
            })
            .collect(),
    )
}

/// Polls `cond` every `every` until it returns Some or `deadline` passes.
pub fn wait_for<T>(
    deadline: Instant,
    every: Duration,
    mut cond: impl FnMut() -> Option<T>,
) -> Option<T> {
    loop {
        if let Some(v) = cond() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        thread::sleep(every);
    }
}

/// VmRSS of a process in KiB, from /proc.
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|n| n.parse().ok())
}

/// Number of threads of a process, from /proc.
pub fn threads_of(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .and_then(|n| n.trim().parse().ok())
}

// ---------------------------------------------------------------------------
// The coordinator under test.

/// How to start a coordinator: profiles (name, JSON object) and settings.
pub struct CoordinatorSpec {
    pub pool_size: u16,
    pub profiles: Vec<(String, serde_json::Value)>,
    /// Extra environment for the coordinator (and so for its children, e.g.
    /// `TESTCHILD_*` knobs).
    pub env: Vec<(String, String)>,
    /// How many slots must be ready before `start` returns.
    pub wait_ready: usize,
}

impl CoordinatorSpec {
    /// `n` profiles `p0..` with no knobs, all in slots.
    pub fn plain(n: u16) -> CoordinatorSpec {
        CoordinatorSpec {
            pool_size: n,
            profiles: (0..n)
                .map(|i| (format!("p{i}"), serde_json::json!({})))
                .collect(),
            env: Vec::new(),
            wait_ready: usize::from(n),
        }
    }
}

/// A running coordinator with its children. Drop stops all of it: SIGTERM
/// to the coordinator (which stops its children's groups), a bounded wait,
/// then SIGKILL to the coordinator and to every child group it reported.
pub struct Coordinator {
    proc: Child,
    pub port: u16,
    pub api_ports: Vec<u16>,
    /// Child process groups seen in /ready, killed on drop as a last resort.
    child_groups: Arc<Mutex<Vec<i32>>>,
    dir: TempDir,
}

impl Coordinator {
    pub fn start(spec: &CoordinatorSpec) -> Coordinator {
        Coordinator::start_binary(COORDINATOR.as_ref(), spec)
    }

    /// Start `bin` (this build's coordinator, or an earlier build to
    /// compare with) as `spec` says.
    pub fn start_binary(bin: &std::ffi::OsStr, spec: &CoordinatorSpec) -> Coordinator {
        let dir = TempDir::new("coord");
        let profiles = dir.path().join("profiles/active");
        std::fs::create_dir_all(&profiles).expect("create the profile dir");
        for (name, json) in &spec.profiles {
            std::fs::write(profiles.join(format!("{name}.json")), json.to_string())
                .expect("write a profile");
        }
        let port = free_port();
        let n = spec.pool_size;
        let (api, stream, camoufox) = (free_range(n), free_range(n), free_range(n));
        let log = std::fs::File::create(dir.path().join("coordinator.log"))
            .expect("create the coordinator log");
        let mut cmd = Command::new(bin);
        cmd.env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("COORDINATOR_HOST", LOCALHOST)
            .env("COORDINATOR_PORT", port.to_string())
            .env("BASE_API_PORT", api.to_string())
            .env("BASE_STREAM_PORT", stream.to_string())
            .env("BASE_CAMOUFOX_PORT", camoufox.to_string())
            .env("POOL_SIZE", n.to_string())
            .env("LOCAL_PROFILE_DIR", &profiles)
            .env("AUTH_PROFILE_CACHE_DIR", dir.path().join("cache"))
            .env("COORDINATOR_LOG_DIR", dir.path().join("logs"))
            .env("CHILD_STOP_GRACE_S", "1")
            .env("RUST_LOG", "warn")
            .envs(spec.env.iter().map(|(k, v)| (k, v)))
            .arg("--")
            .arg(TESTCHILD)
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .process_group(0);
        // If this benchmark dies abruptly the kernel kills the coordinator,
        // which takes its children with it (they carry the same signal).
        die_with_parent(&mut cmd);
        let proc = cmd.spawn().expect("start the coordinator");
        register_group(proc.id() as i32);
        let mut c = Coordinator {
            proc,
            port,
            api_ports: Vec::new(),
            child_groups: Arc::new(Mutex::new(Vec::new())),
            dir,
        };
        let want = spec.wait_ready;
        let slots = wait_for(
            Instant::now() + Duration::from_secs(20),
            Duration::from_millis(5),
            || {
                let slots = c.slots()?;
                (slots.iter().filter(|s| s.state == "ready").count() >= want).then_some(slots)
            },
        );
        let Some(slots) = slots else {
            let log =
                std::fs::read_to_string(c.dir.path().join("coordinator.log")).unwrap_or_default();
            panic!(
                "the coordinator did not get {want} ready children within 20 s; /ready: {:?}\nits log:\n{log}",
                c.slots()
            );
        };
        c.api_ports = slots.iter().map(|s| s.api_port).collect();
        c
    }

    pub fn pid(&self) -> u32 {
        self.proc.id()
    }

    /// Waits (at most `limit`) until every slot is ready again, e.g. after
    /// an eviction; returns the total restarts so far, or None on timeout.
    pub fn wait_all_ready(&self, limit: Duration) -> Option<u64> {
        wait_for(Instant::now() + limit, Duration::from_millis(5), || {
            let slots = self.slots()?;
            slots
                .iter()
                .all(|s| s.state == "ready")
                .then(|| slots.iter().map(|s| s.restarts).sum())
        })
    }

    /// The coordinator's stderr so far (RUST_LOG=warn: warnings and errors).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("coordinator.log")).unwrap_or_default()
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The slots from /ready; every child pid seen is remembered for drop.
    pub fn slots(&self) -> Option<Vec<Slot>> {
        let slots = ready_slots(self.port)?;
        let mut groups = self.child_groups.lock().unwrap_or_else(|p| p.into_inner());
        for pid in slots.iter().filter_map(|s| s.pid) {
            if !groups.contains(&pid) {
                groups.push(pid);
                register_group(pid);
            }
        }
        Some(slots)
    }
}

impl Drop for Coordinator {
    fn drop(&mut self) {
        let pid = self.proc.id() as i32;
        // SAFETY: plain syscall on our own child.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(4);
        let exited = wait_for(deadline, Duration::from_millis(5), || {
            self.proc.try_wait().ok().flatten()
        });
        if exited.is_none() {
            kill_group(pid, libc::SIGKILL);
            let _ = self.proc.wait();
        }
        forget_group(pid);
        let groups = self.child_groups.lock().unwrap_or_else(|p| p.into_inner());
        for &g in groups.iter() {
            kill_group(g, libc::SIGKILL);
            forget_group(g);
        }
    }
}

// ---------------------------------------------------------------------------
// nginx under test.

/// Debian's nginx on PATH or in /usr/sbin.
pub fn find_nginx() -> Option<PathBuf> {
    let on_path = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join("nginx"))
            .find(|p| p.is_file())
    });
    on_path.or_else(|| {
        let p = PathBuf::from("/usr/sbin/nginx");
        p.is_file().then_some(p)
    })
}

/// nginx as a reverse proxy in front of `upstreams`, configured like the
/// project's bar says: keep-alive upstream, least_conn, no buffering. One
/// master and `workers` worker processes, all in one process group that drop
/// kills.
pub struct Nginx {
    proc: Daemon,
    pub port: u16,
    pub workers: u32,
    dir: TempDir,
}

impl Nginx {
    pub fn start(binary: &Path, upstreams: &[u16], workers: u32) -> Result<Nginx, String> {
        let dir = TempDir::new("nginx");
        let port = free_port();
        let d = dir.path().display();
        let servers: String = upstreams
            .iter()
            // max_fails=0: the coordinator under test restarts these same
            // children when it evicts one; nginx must not then blacklist
            // them for 10 s (its default) after they are back.
            .map(|p| format!("        server 127.0.0.1:{p} max_fails=0;\n"))
            .collect();
        let conf = format!(
            "daemon off;
master_process on;
worker_processes {workers};
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{
    worker_connections 1024;
}}
http {{
    access_log off;
    client_body_temp_path {d}/client_body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    keepalive_requests 100000;
    upstream children {{
        least_conn;
{servers}        keepalive 64;
    }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://children;
            proxy_http_version 1.1;
            proxy_set_header Connection \"\";
            proxy_buffering off;
        }}
    }}
}}
"
        );
        let conf_path = dir.path().join("nginx.conf");
        std::fs::write(&conf_path, conf).map_err(|e| format!("write nginx.conf: {e}"))?;
        let mut cmd = Command::new(binary);
        cmd.arg("-p")
            .arg(dir.path())
            .arg("-c")
            .arg(&conf_path)
            .arg("-e")
            .arg(dir.path().join("error.log"));
        // nginx workers are in the same process group, which drop and the
        // watchdog kill.
        let proc = Daemon::start(cmd, &dir, port, "nginx", &["error.log", "stderr.log"])?;
        Ok(Nginx {
            proc,
            port,
            workers,
            dir,
        })
    }

    pub fn pid(&self) -> u32 {
        self.proc.pid()
    }
}

/// A server under test in its own process group (nginx, HAProxy): started
/// with its stderr in `dir`, up once its port accepts; on drop SIGTERM to
/// the group, up to 3 s, then SIGKILL to what is left (workers of a master
/// that died first).
pub struct Daemon {
    child: Child,
}

impl Daemon {
    /// Spawn `cmd` and wait (5 s at most) until `port` accepts; `logs` are
    /// the files in `dir` shown when it does not come up.
    pub fn start(
        mut cmd: Command,
        dir: &TempDir,
        port: u16,
        what: &str,
        logs: &[&str],
    ) -> Result<Daemon, String> {
        let log = std::fs::File::create(dir.path().join("stderr.log"))
            .map_err(|e| format!("create {what} stderr log: {e}"))?;
        cmd.current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .process_group(0);
        die_with_parent(&mut cmd);
        let child = cmd.spawn().map_err(|e| format!("start {what}: {e}"))?;
        register_group(child.id() as i32);
        let mut d = Daemon { child };
        let up = wait_for(
            Instant::now() + Duration::from_secs(5),
            Duration::from_millis(5),
            || TcpStream::connect((LOCALHOST, port)).ok(),
        );
        if up.is_none() || d.child.try_wait().ok().flatten().is_some() {
            let text: String = logs
                .iter()
                .map(|l| std::fs::read_to_string(dir.path().join(l)).unwrap_or_default())
                .collect();
            return Err(format!("{what} did not come up:\n{text}"));
        }
        Ok(d)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let pgid = self.child.id() as i32;
        kill_group(pgid, libc::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(3);
        if wait_for(deadline, Duration::from_millis(5), || {
            self.child.try_wait().ok().flatten()
        })
        .is_none()
        {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        kill_group(pgid, libc::SIGKILL);
        forget_group(pgid);
    }
}

// ---------------------------------------------------------------------------
// HTTP/1.1 response parsing, just enough for the load generator.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BodyFraming {
    Length(u64),
    Chunked,
    UntilClose,
}

struct Head {
    status: u16,
    framing: BodyFraming,
    close: bool,
    /// Value of the header the caller asked to capture, if present.
    captured: Option<String>,
}

fn read_head<R: BufRead>(r: &mut R) -> io::Result<Head> {
    read_head_capturing(r, None, &mut String::new())
}

fn read_head_capturing<R: BufRead>(
    r: &mut R,
    capture: Option<&str>,
    line: &mut String,
) -> io::Result<Head> {
    line.clear();
    if r.read_line(line)? == 0 {
        return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "no response"));
    }
    let status = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "bad status line"))?;
    let http10 = line.starts_with("HTTP/1.0");
    let mut length = None;
    let mut chunked = false;
    let mut close = http10;
    let mut captured = None;
    loop {
        line.clear();
        if r.read_line(line)? == 0 {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "eof in head"));
        }
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        let Some((name, value)) = l.split_once(':') else {
            continue;
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            length = value.parse().ok();
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = value.to_ascii_lowercase().contains("chunked");
        } else if name.eq_ignore_ascii_case("connection") {
            let v = value.to_ascii_lowercase();
            close = v.contains("close") || (http10 && !v.contains("keep-alive"));
        }
        if capture.is_some_and(|c| name.eq_ignore_ascii_case(c)) {
            captured = Some(value.to_string());
        }
    }
    let framing = if chunked {
        BodyFraming::Chunked
    } else if let Some(n) = length {
        BodyFraming::Length(n)
    } else if (100..200).contains(&status) || status == 204 || status == 304 {
        BodyFraming::Length(0)
    } else {
        close = true;
        BodyFraming::UntilClose
    };
    Ok(Head {
        status,
        framing,
        close,
        captured,
    })
}

/// Where chunk data goes while a chunked body is read.
enum ChunkSink<'a> {
    /// Keep it (probes).
    Collect(&'a mut Vec<u8>),
    /// Discard it, noting when the first data byte arrived (load).
    FirstByte(&'a mut Option<Instant>),
}

fn read_chunked<R: BufRead>(r: &mut R, sink: &mut ChunkSink<'_>) -> io::Result<()> {
    let mut line = String::new();
    // A response of more than this many chunks is not one we send.
    for _ in 0..1_000_000 {
        line.clear();
        if r.read_line(&mut line)? == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "eof in chunks",
            ));
        }
        let size_txt = line.trim_end().split(';').next().unwrap_or("");
        let mut left = u64::from_str_radix(size_txt.trim(), 16)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "bad chunk size"))?;
        if left == 0 {
            // Trailers (none expected) end with an empty line.
            for _ in 0..64 {
                line.clear();
                if r.read_line(&mut line)? == 0 || line.trim_end().is_empty() {
                    return Ok(());
                }
            }
            return Ok(());
        }
        while left > 0 {
            let buf = r.fill_buf()?;
            if buf.is_empty() {
                return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "eof in chunk"));
            }
            let n = buf.len().min(left as usize);
            match sink {
                ChunkSink::Collect(v) => v.extend_from_slice(&buf[..n]),
                ChunkSink::FirstByte(t) => {
                    if t.is_none() {
                        **t = Some(Instant::now());
                    }
                }
            }
            r.consume(n);
            left -= n as u64;
        }
        line.clear();
        r.read_line(&mut line)?; // the CRLF after the data
    }
    Err(io::Error::new(
        io::ErrorKind::InvalidData,
        "too many chunks",
    ))
}

/// Reads and discards `n` body bytes, noting when the first one arrived.
fn skip_exact<R: BufRead>(r: &mut R, mut n: u64, first: &mut Option<Instant>) -> io::Result<()> {
    while n > 0 {
        let buf = r.fill_buf()?;
        if buf.is_empty() {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "short body"));
        }
        if first.is_none() {
            *first = Some(Instant::now());
        }
        let k = buf.len().min(n as usize);
        r.consume(k);
        n -= k as u64;
    }
    Ok(())
}

fn skip_to_end<R: BufRead>(r: &mut R, first: &mut Option<Instant>) -> io::Result<()> {
    loop {
        let buf = r.fill_buf()?;
        if buf.is_empty() {
            return Ok(());
        }
        if first.is_none() {
            *first = Some(Instant::now());
        }
        let k = buf.len();
        r.consume(k);
    }
}

// ---------------------------------------------------------------------------
// The load generator.

/// A closed-loop load: `clients` threads, each with its own keep-alive
/// connection (TCP_NODELAY) to `ports[i % ports.len()]`, sending `request`
/// back to back.
///
/// Clients start one after another: each opens its connection and gets its
/// first answer (or waits at most 200 ms) before the next starts. tiny_http
/// (in the coordinator and in the test child) hands each new connection to a
/// task pool whose idle-thread count is stale for a moment after a wake-up;
/// connections accepted in a burst can then sit queued behind keep-alive
/// connections until one of those closes (see the report on the benchmark
/// branch). Ramping up keeps that start-up artefact out of the steady-state
/// figures; `starved` still counts clients that got nothing in the window.
///
/// After the ramp, `warmup` passes unrecorded, then `measure` is recorded
/// (at most `max_requests` per client). A response that says
/// `Connection: close` (or a connection the server closed while idle) makes
/// the client reconnect; the connect time counts into that request's
/// latency, whatever the path.
pub struct Load {
    pub ports: Vec<u16>,
    pub clients: usize,
    pub request: Vec<u8>,
    pub warmup: Duration,
    pub measure: Duration,
    pub max_requests: usize,
    /// A response header whose values are counted (e.g. which child answered).
    pub capture_header: Option<&'static str>,
}

/// What one load run measured.
#[derive(Debug, Default)]
pub struct LoadResult {
    /// Whole request: (connect +) write + full response, nanoseconds.
    pub latency_ns: Vec<u64>,
    /// From the start of the request to the first body byte, nanoseconds.
    pub first_byte_ns: Vec<u64>,
    pub errors: u64,
    pub non_200: u64,
    pub connects: u64,
    /// Length of the measured window (from its start to the last recorded
    /// completion).
    pub window: Duration,
    pub captured: HashMap<String, u64>,
    pub first_error: Option<String>,
    /// Clients that completed no request in the measured window.
    pub starved: usize,
    /// Fewest and most requests one client completed in the window.
    pub per_client_min: usize,
    pub per_client_max: usize,
}

/// A request line + headers + JSON body, ready to write.
pub fn post_json(path: &str, port_hint: u16, body: &str) -> Vec<u8> {
    format!(
        "POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port_hint}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

pub fn chat_body(stream: bool) -> String {
    format!(
        r#"{{"model":"gemini-test","stream":{stream},"messages":[{{"role":"user","content":"hello from the benchmark"}}]}}"#
    )
}

struct ClientOutcome {
    latency_ns: Vec<u64>,
    first_byte_ns: Vec<u64>,
    errors: u64,
    non_200: u64,
    connects: u64,
    last_done: Option<Instant>,
    captured: HashMap<String, u64>,
    first_error: Option<String>,
}

/// The measured window, known once every client has started.
type Window = Arc<std::sync::OnceLock<(Instant, Instant)>>;

impl Load {
    pub fn run(&self) -> LoadResult {
        let window: Window = Arc::new(std::sync::OnceLock::new());
        // Bounds the whole run even if the window is never published.
        let hard_stop = Instant::now()
            + Duration::from_millis(200) * self.clients as u32
            + self.warmup
            + self.measure
            + Duration::from_secs(5);
        let mut handles = Vec::with_capacity(self.clients);
        for i in 0..self.clients {
            let port = self.ports[i % self.ports.len()];
            let request = self.request.clone();
            let max = self.max_requests;
            let capture = self.capture_header;
            let window = window.clone();
            let (started_tx, started_rx) = crossbeam_channel::bounded::<()>(1);
            let h = thread::Builder::new()
                .name(format!("load-{i}"))
                .stack_size(256 * 1024)
                .spawn(move || {
                    client_loop(port, &request, &window, hard_stop, max, capture, started_tx)
                })
                .expect("spawn a load client");
            handles.push(h);
            let _ = started_rx.recv_timeout(Duration::from_millis(200));
        }
        let measure_from = Instant::now() + self.warmup;
        let _ = window.set((measure_from, measure_from + self.measure));
        let mut out = LoadResult {
            per_client_min: usize::MAX,
            ..LoadResult::default()
        };
        let mut last = measure_from;
        for h in handles {
            let Ok(c) = h.join() else {
                out.errors += 1;
                continue;
            };
            let n = c.latency_ns.len();
            out.starved += usize::from(n == 0);
            out.per_client_min = out.per_client_min.min(n);
            out.per_client_max = out.per_client_max.max(n);
            out.latency_ns.extend(c.latency_ns);
            out.first_byte_ns.extend(c.first_byte_ns);
            out.errors += c.errors;
            out.non_200 += c.non_200;
            out.connects += c.connects;
            if let Some(t) = c.last_done {
                last = last.max(t);
            }
            for (k, v) in c.captured {
                *out.captured.entry(k).or_default() += v;
            }
            if out.first_error.is_none() {
                out.first_error = c.first_error;
            }
        }
        out.window = last.saturating_duration_since(measure_from);
        out
    }
}

/// A client's connection and its read buffer.
struct Conn {
    w: TcpStream,
    r: BufReader<TcpStream>,
}

fn connect(port: u16) -> io::Result<Conn> {
    // Bounds a wedged server: no request here legitimately takes this long.
    connect_with(port, Duration::from_secs(5))
}

/// A keep-alive client connection whose reads and writes give up after
/// `timeout`.
fn connect_with(port: u16, timeout: Duration) -> io::Result<Conn> {
    let s = TcpStream::connect((LOCALHOST, port))?;
    s.set_nodelay(true)?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    Ok(Conn {
        w: s.try_clone()?,
        r: BufReader::with_capacity(16 * 1024, s),
    })
}

/// One request on `conn` (opened first if None). Returns status, whether
/// the connection must be dropped, when the first body byte arrived, and
/// the captured header value.
fn exchange(
    conn: &mut Option<Conn>,
    port: u16,
    request: &[u8],
    capture: Option<&str>,
    connects: &mut u64,
    line: &mut String,
) -> io::Result<(u16, bool, Option<Instant>, Option<String>)> {
    let fresh = conn.is_none();
    if fresh {
        *conn = Some(connect(port)?);
        *connects += 1;
    }
    let c = conn.as_mut().expect("connected just above");
    c.w.write_all(request)?;
    let head = read_head_capturing(&mut c.r, capture, line)?;
    let mut first = None;
    match head.framing {
        BodyFraming::Length(n) => skip_exact(&mut c.r, n, &mut first)?,
        BodyFraming::Chunked => read_chunked(&mut c.r, &mut ChunkSink::FirstByte(&mut first))?,
        BodyFraming::UntilClose => skip_to_end(&mut c.r, &mut first)?,
    }
    Ok((head.status, head.close, first, head.captured))
}

fn client_loop(
    port: u16,
    request: &[u8],
    window: &Window,
    hard_stop: Instant,
    max: usize,
    capture: Option<&str>,
    started: crossbeam_channel::Sender<()>,
) -> ClientOutcome {
    let mut o = ClientOutcome {
        latency_ns: Vec::with_capacity(max.min(200_000)),
        first_byte_ns: Vec::with_capacity(max.min(200_000)),
        errors: 0,
        non_200: 0,
        connects: 0,
        last_done: None,
        captured: HashMap::new(),
        first_error: None,
    };
    let mut conn: Option<Conn> = None;
    let mut line = String::with_capacity(256);
    let mut started = Some(started);
    let mut recorded = 0usize;
    while recorded < max && Instant::now() < hard_stop {
        let t0 = Instant::now();
        let span = window.get().copied();
        if span.is_some_and(|(_, stop_at)| t0 >= stop_at) {
            break;
        }
        let reused = conn.is_some();
        let mut r = exchange(
            &mut conn,
            port,
            request,
            capture,
            &mut o.connects,
            &mut line,
        );
        if r.is_err() && reused {
            // The server closed the idle keep-alive connection under us
            // (a race every HTTP client handles by retrying once on a
            // fresh connection); the reconnect counts into this request.
            conn = None;
            r = exchange(
                &mut conn,
                port,
                request,
                capture,
                &mut o.connects,
                &mut line,
            );
        }
        let done = Instant::now();
        if let Some(tx) = started.take() {
            let _ = tx.send(());
        }
        let measured = span.is_some_and(|(from, _)| t0 >= from);
        match r {
            Ok((status, close, first, captured)) => {
                if close {
                    if let Some(c) = conn.take() {
                        let _ = c.w.shutdown(Shutdown::Both);
                    }
                }
                if !measured {
                    continue;
                }
                recorded += 1;
                if status != 200 {
                    // A fast error page is not a served request: counted,
                    // kept out of the latency figures.
                    o.non_200 += 1;
                    if o.first_error.is_none() {
                        o.first_error = Some(format!("status {status}"));
                    }
                    continue;
                }
                o.latency_ns.push((done - t0).as_nanos() as u64);
                if let Some(f) = first {
                    o.first_byte_ns.push((f - t0).as_nanos() as u64);
                }
                if let Some(v) = captured {
                    *o.captured.entry(v).or_default() += 1;
                }
                o.last_done = Some(done);
            }
            Err(e) => {
                conn = None;
                if measured {
                    o.errors += 1;
                    if o.first_error.is_none() {
                        o.first_error = Some(e.to_string());
                    }
                }
                // Do not spin on a dead server.
                thread::sleep(Duration::from_millis(1));
            }
        }
    }
    o
}

// ---------------------------------------------------------------------------
// Statistics and tables.

/// Order statistics of a sample, in milliseconds.
#[derive(Debug, Clone, Copy, Default)]
pub struct Summary {
    pub n: usize,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub mean: f64,
    pub min: f64,
    pub max: f64,
}

pub fn summarize_ns(samples: &[u64]) -> Summary {
    if samples.is_empty() {
        return Summary::default();
    }
    let mut v = samples.to_vec();
    v.sort_unstable();
    let ms = |ns: u64| ns as f64 / 1e6;
    // Nearest-rank percentile.
    let pct = |p: f64| {
        let rank = ((p / 100.0) * v.len() as f64).ceil() as usize;
        ms(v[rank.clamp(1, v.len()) - 1])
    };
    Summary {
        n: v.len(),
        p50: pct(50.0),
        p90: pct(90.0),
        p99: pct(99.0),
        mean: v.iter().map(|&x| x as f64).sum::<f64>() / v.len() as f64 / 1e6,
        min: ms(v[0]),
        max: ms(v[v.len() - 1]),
    }
}

pub fn summarize_durations(samples: &[Duration]) -> Summary {
    let ns: Vec<u64> = samples.iter().map(|d| d.as_nanos() as u64).collect();
    summarize_ns(&ns)
}

impl LoadResult {
    pub fn latency(&self) -> Summary {
        summarize_ns(&self.latency_ns)
    }

    pub fn first_byte(&self) -> Summary {
        summarize_ns(&self.first_byte_ns)
    }

    /// Completed requests per second over the measured window.
    pub fn throughput(&self) -> f64 {
        let s = self.window.as_secs_f64();
        if s > 0.0 {
            self.latency_ns.len() as f64 / s
        } else {
            0.0
        }
    }
}

/// A ratio printed as `x.xx`, or `-` when the base is zero.
pub fn ratio(a: f64, b: f64) -> String {
    if b > 0.0 {
        format!("{:.2}", a / b)
    } else {
        "-".to_string()
    }
}

/// Make the kernel SIGKILL the spawned process when this one dies.
fn die_with_parent(cmd: &mut Command) {
    // SAFETY: prctl is async-signal-safe and touches no memory of ours.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0);
            Ok(())
        });
    }
}
