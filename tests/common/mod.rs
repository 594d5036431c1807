//! The integration-test harness: runs the real `aistudioproxy` binary against
//! the real `aisp-testchild`, on free 127.0.0.1 ports, inside a fresh temp
//! directory, under deadlines.
//!
//! What a test gets:
//! - [`TestDir`]: a private temp directory (kept, and its path printed, when
//!   the test fails; removed otherwise) with helpers to write profiles and
//!   `key.txt`, and a watchdog that kills every coordinator of the process
//!   and exits if the test runs longer than [`TEST_DEADLINE`].
//! - [`Ports`]: a coordinator port and one run of child ports, reserved
//!   across concurrently running test processes (see [`Ports::reserve`]).
//! - [`Builder`] / [`Coordinator`]: launch the binary with a cleared
//!   environment (only what the test names reaches it), stdout and stderr
//!   captured to files (so it never blocks on a pipe), the test child after
//!   `--`. Dropping a `Coordinator` kills it and every test child it is known
//!   to have started; when the test is failing it first prints the command,
//!   its working directory, stdout and stderr.
//! - [`wait_until`]: poll a condition every few ms up to a deadline; tests
//!   never sleep a fixed time to synchronise.
//! - HTTP helpers over 127.0.0.1 with explicit timeouts ([`http_get`],
//!   [`Coordinator::get_json`]) and readers of the `/ready` slot snapshot.
//!
//! Every test child started through the harness gets `TESTCHILD_PID_DIR`
//! pointing into the test's directory, so the harness can always find (and
//! on drop kill) the children and grandchildren, whatever the coordinator
//! did or failed to do.

#![allow(dead_code)] // each test module uses a different part of the harness

use std::collections::BTreeSet;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::net::TcpListener;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::Value;

/// The coordinator under test.
pub const COORDINATOR: &str = env!("CARGO_BIN_EXE_aistudioproxy");
/// The stand-in child (see `src/bin/aisp-testchild`).
pub const TESTCHILD: &str = env!("CARGO_BIN_EXE_aisp-testchild");

/// No test may run longer than this; the watchdog then kills everything.
pub const TEST_DEADLINE: Duration = Duration::from_secs(60);
/// How often [`wait_until`] looks again.
pub const POLL: Duration = Duration::from_millis(10);

/// `Instant::now() + secs`, for readable deadlines.
pub fn secs(s: f64) -> Instant {
    Instant::now() + Duration::from_secs_f64(s)
}

/// Poll `cond` every [`POLL`] until it holds; panic naming `what` at
/// `deadline`. Returns how long it took.
pub fn wait_until(what: &str, deadline: Instant, mut cond: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    loop {
        if cond() {
            return start.elapsed();
        }
        if Instant::now() >= deadline {
            panic!("timed out after {:.2?} waiting for {what}", start.elapsed());
        }
        std::thread::sleep(POLL);
    }
}

// ---------------------------------------------------------------------------
// Temp directory and watchdog

/// Coordinators alive in this process, for the watchdog.
static LIVE: Mutex<BTreeSet<i32>> = Mutex::new(BTreeSet::new());

/// A test's private directory:
///
/// ```text
/// <tmp>/profiles/active/*.json   LOCAL_PROFILE_DIR
/// <tmp>/profiles/key.txt         optional
/// <tmp>/cache                    AUTH_PROFILE_CACHE_DIR
/// <tmp>/logs                     COORDINATOR_LOG_DIR
/// <tmp>/pids                     TESTCHILD_PID_DIR
/// <tmp>/coordinator-N.{stdout,stderr}
/// ```
pub struct TestDir {
    pub path: PathBuf,
    name: String,
    /// Dropped with the directory: stops the watchdog.
    _watchdog: crossbeam_channel::Sender<()>,
}

impl TestDir {
    /// A fresh directory for the test `name` (use the test function's name).
    pub fn new(name: &str) -> TestDir {
        TestDir::with_deadline(name, TEST_DEADLINE)
    }

    /// Like `new`, for a test that needs longer than `TEST_DEADLINE`.
    pub fn with_deadline(name: &str, deadline: Duration) -> TestDir {
        static SEQ: AtomicU64 = AtomicU64::new(0);
        let path = std::env::temp_dir().join(format!(
            "aisp-test-{name}-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = fs::remove_dir_all(&path);
        // cache/ and logs/ are left for the coordinator to create.
        for sub in ["profiles/active", "pids"] {
            fs::create_dir_all(path.join(sub)).expect("create test dir");
        }
        let (tx, rx) = crossbeam_channel::bounded::<()>(0);
        let test = name.to_string();
        std::thread::Builder::new()
            .name(format!("watchdog-{name}"))
            .spawn(move || {
                if let Err(crossbeam_channel::RecvTimeoutError::Timeout) =
                    rx.recv_timeout(deadline)
                {
                    eprintln!(
                        "WATCHDOG: test {test} ran longer than {deadline:?}; killing its coordinators and exiting"
                    );
                    for pid in LIVE.lock().unwrap_or_else(|p| p.into_inner()).iter() {
                        // SAFETY: plain kill(2) of a process we started.
                        unsafe { libc::kill(*pid, libc::SIGKILL) };
                    }
                    std::process::exit(101);
                }
            })
            .expect("start watchdog");
        TestDir {
            path,
            name: name.to_string(),
            _watchdog: tx,
        }
    }

    pub fn profiles_dir(&self) -> PathBuf {
        self.path.join("profiles/active")
    }
    pub fn cache_dir(&self) -> PathBuf {
        self.path.join("cache")
    }
    pub fn log_dir(&self) -> PathBuf {
        self.path.join("logs")
    }
    pub fn pid_dir(&self) -> PathBuf {
        self.path.join("pids")
    }

    /// Write `<profiles>/active/<name>.json`. Test-child knobs for this
    /// profile go in its `"testchild": {..}` object.
    pub fn write_profile(&self, name: &str, json: &Value) {
        self.write_profile_bytes(name, json.to_string().as_bytes());
    }

    pub fn write_profile_bytes(&self, name: &str, bytes: &[u8]) {
        fs::write(self.profiles_dir().join(format!("{name}.json")), bytes).expect("write profile");
    }

    /// Several profiles without knobs.
    pub fn write_profiles(&self, names: &[&str]) {
        for n in names {
            self.write_profile(n, &serde_json::json!({ "cookies": [], "name": n }));
        }
    }

    /// Write `<profiles>/key.txt` (the local backend reads it from the
    /// parent of `LOCAL_PROFILE_DIR`).
    pub fn write_key(&self, text: &str) {
        fs::write(self.path.join("profiles/key.txt"), text).expect("write key.txt");
    }

    /// The pid the test child of `profile` last wrote, if any.
    pub fn child_pid(&self, profile: &str) -> Option<i32> {
        read_pid(&self.pid_dir().join(format!("{profile}.pid")))
    }

    pub fn grandchild_pid(&self, profile: &str) -> Option<i32> {
        read_pid(&self.pid_dir().join(format!("{profile}.grandchild.pid")))
    }

    /// Every pid in the pid directory (children and grandchildren).
    fn recorded_pids(&self) -> Vec<i32> {
        let Ok(entries) = fs::read_dir(self.pid_dir()) else {
            return Vec::new();
        };
        entries
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().ends_with(".pid"))
            .filter_map(|e| read_pid(&e.path()))
            .collect()
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "test {} failed; its directory is kept: {}",
                self.name,
                self.path.display()
            );
        } else {
            let _ = fs::remove_dir_all(&self.path);
        }
    }
}

fn read_pid(path: &Path) -> Option<i32> {
    fs::read_to_string(path).ok()?.trim().parse().ok()
}

// ---------------------------------------------------------------------------
// Processes

/// A process is gone when it does not exist or is a zombie: a zombie has
/// exited, and whether it is reaped depends on who its parent is (an
/// orphan's zombie belongs to init, which in some containers never reaps).
pub fn process_gone(pid: i32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        // The state follows the command name in parentheses, which may
        // itself contain spaces or parentheses.
        Ok(stat) => stat
            .rsplit_once(')')
            .map(|(_, rest)| rest.trim_start().starts_with(['Z', 'X']))
            .unwrap_or(true),
    }
}

/// True when `pid` is a live test child or grandchild of the test in `dir`:
/// pids are reused (pid_max may be 32768), possibly by another test's child,
/// so killing by pid checks the command line names this test's directory
/// (children get `--active-auth-json <dir>/cache/..`, grandchildren a pid
/// file in `<dir>/pids`).
fn is_test_child_of(pid: i32, dir: &Path) -> bool {
    let Ok(cmdline) = fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    let cmdline = String::from_utf8_lossy(&cmdline);
    !process_gone(pid)
        && cmdline.contains("aisp-testchild")
        && cmdline.contains(&*dir.to_string_lossy())
}

/// The child tag (`AISTUDIOPROXY_CHILD`) in `pid`'s environment.
fn tag_of(pid: i32) -> Option<String> {
    let environ = fs::read(format!("/proc/{pid}/environ")).ok()?;
    environ
        .split(|b| *b == 0)
        .find_map(|v| v.strip_prefix(b"AISTUDIOPROXY_CHILD="))
        .map(|t| String::from_utf8_lossy(t).into_owned())
}

pub fn send_signal_to(pid: i32, sig: i32) {
    // SAFETY: plain kill(2); a gone pid gives ESRCH, which is fine.
    unsafe { libc::kill(pid, sig) };
}

// ---------------------------------------------------------------------------
// Ports

/// Ports for one coordinator: its own, and child ports
/// `api + i`, `stream + i`, `camoufox + i` for slot `i` (PORT_STEP 1).
#[derive(Debug)]
pub struct Ports {
    pub coordinator: u16,
    pub api: u16,
    pub stream: u16,
    pub camoufox: u16,
    /// Slots the child ranges have room for.
    pub slots: u16,
    _claims: Vec<PortClaim>,
}

/// One port reserved by a lock file under the temp directory, so that test
/// processes running at the same time (nextest runs each test in its own
/// process) never hand out the same port. Released on drop; a claim whose
/// owner died is taken over.
#[derive(Debug)]
struct PortClaim(PathBuf);

impl PortClaim {
    fn take(port: u16) -> Option<PortClaim> {
        let dir = std::env::temp_dir().join("aisp-test-ports");
        let _ = fs::create_dir_all(&dir);
        let path = dir.join(port.to_string());
        for _ in 0..2 {
            match OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o644)
                .open(&path)
            {
                Ok(mut f) => {
                    let _ = write!(f, "{}", std::process::id());
                    return Some(PortClaim(path));
                }
                Err(_) => {
                    let owner = read_pid(&path);
                    let stale =
                        owner.is_none_or(|p| p != std::process::id() as i32 && process_gone(p));
                    if !stale {
                        return None;
                    }
                    let _ = fs::remove_file(&path);
                }
            }
        }
        None
    }
}

impl Drop for PortClaim {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.0);
    }
}

fn bindable(port: u16) -> bool {
    TcpListener::bind(("127.0.0.1", port)).is_ok()
}

/// A small pseudo-random number, different per call and per process.
fn random() -> u64 {
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let t = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    let mut x =
        t ^ (u64::from(std::process::id()) << 32) ^ SEQ.fetch_add(0x9e37_79b9, Ordering::Relaxed);
    // xorshift64*
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    x.wrapping_mul(0x2545_f491_4f6c_dd1d)
}

/// Ports the kernel will not hand out as the local port of an outgoing
/// connection: below `ip_local_port_range`. Ports from `bind(0)` come from
/// that range, and a child restarting on its slot's port leaves it unbound
/// for a moment, during which any connection (our own polling included)
/// could take it as its local port and make the child's bind fail.
fn port_window() -> (u16, u16) {
    let low = fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    (10_000, low.max(12_000) - 1)
}

impl Ports {
    /// Reserve a coordinator port and, for `slots` slots, three runs of
    /// `slots` consecutive ports, all verified bindable on 127.0.0.1 and
    /// claimed against other test processes. Retries other ports when any
    /// is taken.
    pub fn reserve(slots: u16) -> Ports {
        let (lo, hi) = port_window();
        let need = 1 + 3 * slots;
        for _ in 0..200 {
            let span = u64::from(hi - lo - need);
            let base = lo + (random() % span) as u16;
            let all: Vec<u16> = (base..base + need).collect();
            let mut claims = Vec::new();
            for &p in &all {
                match PortClaim::take(p) {
                    Some(c) if bindable(p) => claims.push(c),
                    _ => break,
                }
            }
            if claims.len() == all.len() {
                return Ports {
                    coordinator: base,
                    api: base + 1,
                    stream: base + 1 + slots,
                    camoufox: base + 1 + 2 * slots,
                    slots,
                    _claims: claims,
                };
            }
        }
        panic!("no free run of {need} ports on 127.0.0.1 between {lo} and {hi}");
    }

    /// The triple of slot `i` as `/ready` reports it.
    pub fn slot(&self, i: u16) -> (u16, u16, u16) {
        (self.api + i, self.stream + i, self.camoufox + i)
    }
}

// ---------------------------------------------------------------------------
// HTTP

/// One answer: status, headers we care about, body text.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", self.body))
    }
}

fn agent() -> &'static ureq::Agent {
    static AGENT: OnceLock<ureq::Agent> = OnceLock::new();
    AGENT.get_or_init(|| {
        ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(3)))
            .build()
            .new_agent()
    })
}

/// GET `http://127.0.0.1:<port><path>`; None when no answer came (refused,
/// reset, timeout).
pub fn http_get(port: u16, path: &str) -> Option<Reply> {
    let url = format!("http://127.0.0.1:{port}{path}");
    let mut resp = agent().get(&url).call().ok()?;
    reply_of(&mut resp)
}

/// An answer read whole; None when its body could not be read.
pub fn reply_of(resp: &mut ureq::http::Response<ureq::Body>) -> Option<Reply> {
    let status = resp.status().as_u16();
    let headers = resp
        .headers()
        .iter()
        .map(|(k, v)| (k.as_str().to_string(), v.to_str().unwrap_or("").to_string()))
        .collect();
    let body = resp.body_mut().read_to_string().ok()?;
    Some(Reply {
        status,
        headers,
        body,
    })
}

// ---------------------------------------------------------------------------
// The coordinator

/// How to start a coordinator. Defaults: pool size 2, READY_TIMEOUT_S 20,
/// CHILD_STOP_GRACE_S 2, the test child as the child program.
#[derive(Clone, Debug)]
pub struct Builder {
    pool_size: u16,
    env: Vec<(String, String)>,
    args: Vec<String>,
    child: Vec<String>,
}

impl Default for Builder {
    fn default() -> Self {
        Builder {
            pool_size: 2,
            env: vec![
                ("READY_TIMEOUT_S".into(), "20".into()),
                ("CHILD_STOP_GRACE_S".into(), "2".into()),
            ],
            args: Vec::new(),
            child: vec![TESTCHILD.to_string()],
        }
    }
}

impl Builder {
    pub fn new() -> Builder {
        Builder::default()
    }

    /// POOL_SIZE (also sizes the reserved port runs).
    pub fn pool_size(mut self, n: u16) -> Builder {
        self.pool_size = n;
        self
    }

    /// Set (or override) one environment variable of the coordinator; its
    /// children inherit it, so `TESTCHILD_*` knobs for every child go here.
    pub fn env(mut self, key: &str, value: impl ToString) -> Builder {
        self.env.retain(|(k, _)| k != key);
        self.env.push((key.to_string(), value.to_string()));
        self
    }

    pub fn ready_timeout_s(self, s: u64) -> Builder {
        self.env("READY_TIMEOUT_S", s)
    }

    pub fn grace_s(self, s: u64) -> Builder {
        self.env("CHILD_STOP_GRACE_S", s)
    }

    /// A command-line argument before `--`.
    pub fn arg(mut self, a: &str) -> Builder {
        self.args.push(a.to_string());
        self
    }

    /// The program (and leading arguments) given after `--`.
    pub fn child(mut self, words: &[&str]) -> Builder {
        self.child = words.iter().map(|s| s.to_string()).collect();
        self
    }

    /// The full environment for `dir` and `ports`: the harness's defaults,
    /// then the builder's settings.
    fn environment(&self, dir: &TestDir, ports: &Ports) -> Vec<(String, String)> {
        let path = |p: PathBuf| p.display().to_string();
        let mut env: Vec<(String, String)> = vec![
            ("PATH".into(), std::env::var("PATH").unwrap_or_default()),
            ("RUST_BACKTRACE".into(), "1".into()),
            ("COORDINATOR_HOST".into(), "127.0.0.1".into()),
            ("COORDINATOR_PORT".into(), ports.coordinator.to_string()),
            ("BASE_API_PORT".into(), ports.api.to_string()),
            ("BASE_STREAM_PORT".into(), ports.stream.to_string()),
            ("BASE_CAMOUFOX_PORT".into(), ports.camoufox.to_string()),
            ("PORT_STEP".into(), "1".into()),
            ("POOL_SIZE".into(), self.pool_size.to_string()),
            ("LOCAL_PROFILE_DIR".into(), path(dir.profiles_dir())),
            ("AUTH_PROFILE_CACHE_DIR".into(), path(dir.cache_dir())),
            ("COORDINATOR_LOG_DIR".into(), path(dir.log_dir())),
            ("CHILD_WORKDIR".into(), path(dir.path.clone())),
            ("TESTCHILD_PID_DIR".into(), path(dir.pid_dir())),
        ];
        for (k, v) in &self.env {
            env.retain(|(e, _)| e != k);
            env.push((k.clone(), v.clone()));
        }
        env
    }
}

/// How a coordinator run ended, for tests of runs that end by themselves.
#[derive(Debug)]
pub struct Finished {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl Finished {
    /// stderr without log lines: what the binary says on failure.
    pub fn error_lines(&self) -> Vec<&str> {
        self.stderr
            .lines()
            .filter(|l| l.starts_with("aistudioproxy:"))
            .collect()
    }
}

/// A running coordinator; killed (with all test children we know of) on drop.
pub struct Coordinator<'a> {
    dir: &'a TestDir,
    pub ports: Ports,
    child: Option<Child>,
    status: Option<ExitStatus>,
    /// A shell-like rendering of how it was started, for failure reports.
    command: String,
    stdout_path: PathBuf,
    stderr_path: PathBuf,
    /// Test-child pids seen in `/ready` snapshots.
    seen_pids: Mutex<BTreeSet<i32>>,
    /// Its ADMIN_KEY, if set: `/ready` shows names and pids only with it.
    admin_key: Option<String>,
}

impl<'a> Coordinator<'a> {
    /// Start the coordinator and wait until `/live` answers; retries on other
    /// ports if its port turned out to be taken. Panics (printing its
    /// output) if it exits instead.
    pub fn start(dir: &'a TestDir, builder: Builder) -> Coordinator<'a> {
        for attempt in 0..3 {
            let mut c = Coordinator::spawn(dir, builder.clone());
            let deadline = secs(15.0);
            loop {
                if http_get(c.ports.coordinator, "/live").is_some_and(|r| r.status == 200) {
                    return c;
                }
                if c.try_status().is_some() {
                    if c.stderr().contains("cannot listen on") && attempt < 2 {
                        break; // the port was taken after all: new ports
                    }
                    panic!("the coordinator exited before answering /live");
                }
                if Instant::now() >= deadline {
                    panic!("the coordinator did not answer /live within 15 s");
                }
                std::thread::sleep(POLL);
            }
        }
        unreachable!("the loop above returns or panics")
    }

    /// Start the coordinator without waiting for anything.
    pub fn spawn(dir: &'a TestDir, builder: Builder) -> Coordinator<'a> {
        static SEQ: AtomicU64 = AtomicU64::new(0);
        let n = SEQ.fetch_add(1, Ordering::Relaxed);
        let ports = Ports::reserve(builder.pool_size);
        let env = builder.environment(dir, &ports);
        let stdout_path = dir.path.join(format!("coordinator-{n}.stdout"));
        let stderr_path = dir.path.join(format!("coordinator-{n}.stderr"));
        let mut cmd = Command::new(COORDINATOR);
        cmd.env_clear()
            .envs(env.iter().map(|(k, v)| (k, v)))
            .args(&builder.args)
            .current_dir(&dir.path)
            .stdin(Stdio::null())
            .stdout(File::create(&stdout_path).expect("stdout file"))
            .stderr(File::create(&stderr_path).expect("stderr file"));
        if !builder.child.is_empty() {
            cmd.arg("--").args(&builder.child);
        }
        let command = format!(
            "cd {} && env -i {} {} {}{}",
            dir.path.display(),
            env.iter()
                .map(|(k, v)| format!("{k}={v:?}"))
                .collect::<Vec<_>>()
                .join(" "),
            COORDINATOR,
            builder.args.join(" "),
            if builder.child.is_empty() {
                String::new()
            } else {
                format!(" -- {}", builder.child.join(" "))
            }
        );
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {COORDINATOR}: {e}\n{command}"));
        LIVE.lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(child.id() as i32);
        Coordinator {
            dir,
            ports,
            child: Some(child),
            status: None,
            command,
            stdout_path,
            stderr_path,
            seen_pids: Mutex::new(BTreeSet::new()),
            admin_key: env
                .iter()
                .find(|(k, _)| k == "ADMIN_KEY")
                .map(|(_, v)| v.clone())
                .or_else(|| {
                    let (_, file) = env.iter().find(|(k, _)| k == "ADMIN_KEY_FILE")?;
                    let text = std::fs::read_to_string(dir.path.join(file)).ok()?;
                    Some(text.lines().next()?.trim().to_string())
                }),
        }
    }

    /// Run a coordinator that is expected to end by itself (bad
    /// configuration, `--hydrate-only`) and collect its output.
    pub fn run_to_exit(dir: &'a TestDir, builder: Builder) -> Finished {
        let mut c = Coordinator::spawn(dir, builder);
        let status = c.wait_exit(secs(15.0));
        Finished {
            status,
            stdout: c.stdout(),
            stderr: c.stderr(),
        }
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().map(|c| c.id() as i32).unwrap_or(0)
    }

    pub fn stdout(&self) -> String {
        fs::read_to_string(&self.stdout_path).unwrap_or_default()
    }

    pub fn stderr(&self) -> String {
        fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    fn try_status(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            if let Some(c) = self.child.as_mut() {
                self.status = c.try_wait().ok().flatten();
            }
        }
        self.status
    }

    /// SIGTERM, SIGINT, ... to the coordinator.
    pub fn send_signal(&self, sig: i32) {
        if self.status.is_none() {
            send_signal_to(self.pid(), sig);
        }
    }

    /// Wait for the coordinator to exit; panics at `deadline`.
    pub fn wait_exit(&mut self, deadline: Instant) -> ExitStatus {
        wait_until("the coordinator to exit", deadline, || {
            self.try_status().is_some()
        });
        self.status.expect("set by try_status")
    }

    /// True once the coordinator has exited.
    pub fn exited(&mut self) -> bool {
        self.try_status().is_some()
    }

    /// GET a coordinator path; None when it did not answer.
    pub fn get(&self, path: &str) -> Option<Reply> {
        http_get(self.ports.coordinator, path)
    }

    /// GET a coordinator path that must answer JSON.
    pub fn get_json(&self, path: &str) -> (u16, Value) {
        let r = self
            .get(path)
            .unwrap_or_else(|| panic!("no answer from the coordinator on {path}"));
        (r.status, r.json())
    }

    /// `/ready` as (status, body), with the admin key when there is one
    /// (names and pids are shown only with it once keys are configured);
    /// remembers the child pids it names.
    pub fn ready(&self) -> (u16, Value) {
        let (status, body) = match &self.admin_key {
            None => self.get_json("/ready"),
            Some(key) => {
                let url = format!("http://127.0.0.1:{}/ready", self.ports.coordinator);
                let r = agent()
                    .get(&url)
                    .header("X-Admin-Key", key.as_str())
                    .call()
                    .ok()
                    .and_then(|mut resp| reply_of(&mut resp))
                    .unwrap_or_else(|| panic!("no answer from the coordinator on /ready"));
                (r.status, r.json())
            }
        };
        let mut seen = self.seen_pids.lock().unwrap_or_else(|p| p.into_inner());
        for s in slots(&body) {
            if let Some(pid) = s.pid {
                seen.insert(pid);
            }
        }
        (status, body)
    }

    /// The slots of a `/ready` snapshot taken now.
    pub fn slots(&self) -> Vec<Slot> {
        slots(&self.ready().1)
    }

    /// Wait until every slot is `ready`; returns the snapshot.
    pub fn wait_all_ready(&self, deadline: Instant) -> Value {
        let mut last = Value::Null;
        wait_until("every slot to be ready", deadline, || {
            let (status, body) = self.ready();
            let all = status == 200 && slots(&body).iter().all(|s| s.state == "ready");
            last = body;
            all
        });
        last
    }

    /// Kill the coordinator and every test child we know of.
    fn kill_everything(&mut self) {
        let coordinator = self.pid();
        if let Some(mut c) = self.child.take() {
            if self.status.is_none() {
                let _ = c.kill();
                let _ = c.wait();
            }
            LIVE.lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&(c.id() as i32));
        }
        // Children die with the coordinator (PDEATHSIG), grandchildren only
        // with their group: make sure of both, by pid, guarding against reuse.
        let mut pids: BTreeSet<i32> = self
            .seen_pids
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        pids.extend(self.dir.recorded_pids());
        for pid in pids {
            if is_test_child_of(pid, &self.dir.path) {
                send_signal_to(pid, libc::SIGKILL);
            }
        }
        // A child caught starting its own-session browser when the
        // coordinator died may have forked it before writing its pid file:
        // find this coordinator's stragglers by their tag (`<owner>/<its
        // pid>.<start>/...`), for a bounded while.
        let run = format!("/{coordinator}.");
        let deadline = Instant::now() + Duration::from_secs(2);
        loop {
            let left: Vec<i32> = tree_survivors(self.dir)
                .into_iter()
                .map(|(pid, _)| pid)
                .filter(|pid| tag_of(*pid).is_some_and(|t| t.contains(&run)))
                .collect();
            if left.is_empty() || Instant::now() >= deadline {
                break;
            }
            for pid in left {
                send_signal_to(pid, libc::SIGKILL);
            }
            std::thread::sleep(POLL);
        }
    }

    fn report(&self) {
        let tail = |s: String, n: usize| {
            let lines: Vec<&str> = s.lines().collect();
            let from = lines.len().saturating_sub(n);
            lines[from..].join("\n")
        };
        eprintln!(
            "---- coordinator command (cwd {}):\n{}\n---- exit: {:?}\n---- stdout:\n{}\n---- stderr (last 300 lines):\n{}\n----",
            self.dir.path.display(),
            self.command,
            self.status,
            tail(self.stdout(), 100),
            tail(self.stderr(), 300),
        );
    }
}

impl Drop for Coordinator<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            // Capture the state first, so the report shows it as it was.
            self.try_status();
            self.report();
        }
        self.kill_everything();
    }
}

// ---------------------------------------------------------------------------
// The /ready snapshot

/// One slot of a `/ready` body.
#[derive(Debug, Clone, PartialEq)]
pub struct Slot {
    pub slot: u64,
    pub ports: (u16, u16, u16),
    pub profile: Option<String>,
    pub state: String,
    pub pid: Option<i32>,
    /// Wall-clock ms when the slot entered `state` (the coordinator's clock).
    pub since_unix_ms: u64,
    pub restarts: u64,
}

pub fn slots(body: &Value) -> Vec<Slot> {
    let port = |s: &Value, k: &str| s["ports"][k].as_u64().unwrap_or(0) as u16;
    body["slots"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|s| Slot {
                    slot: s["slot"].as_u64().unwrap_or(u64::MAX),
                    ports: (port(s, "api"), port(s, "stream"), port(s, "camoufox")),
                    profile: s["profile"].as_str().map(String::from),
                    state: s["state"].as_str().unwrap_or("").to_string(),
                    pid: s["pid"].as_i64().map(|p| p as i32),
                    since_unix_ms: s["since_unix_ms"].as_u64().unwrap_or(0),
                    restarts: s["restarts"].as_u64().unwrap_or(0),
                })
                .collect()
        })
        .unwrap_or_default()
}

/// The queue of a `/ready` body.
pub fn queue(body: &Value) -> Vec<String> {
    strings(&body["queue"])
}

/// A JSON array of strings.
pub fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

/// Read the whole of a file, for assertions on logs.
pub fn read_to_string(path: &Path) -> String {
    let mut s = String::new();
    if let Ok(mut f) = File::open(path) {
        let _ = f.read_to_string(&mut s);
    }
    s
}

// ---------------------------------------------------------------------------
// Process trees

/// Live processes of the test in `dir` that a coordinator started: they
/// carry a child tag (`AISTUDIOPROXY_CHILD`) and this test's
/// `TESTCHILD_PID_DIR`, or name this test's cache directory (the profile
/// path) on their command line. `(pid, command line)`.
pub fn tree_survivors(dir: &TestDir) -> Vec<(i32, String)> {
    let pid_dir = format!("TESTCHILD_PID_DIR={}", dir.pid_dir().display());
    let cache = dir.cache_dir().display().to_string();
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut found = Vec::new();
    for e in entries.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        if process_gone(pid) {
            continue;
        }
        let environ = fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
        let vars: Vec<&[u8]> = environ.split(|b| *b == 0).collect();
        let tagged = vars.iter().any(|v| v.starts_with(b"AISTUDIOPROXY_CHILD="))
            && vars.contains(&pid_dir.as_bytes());
        let cmdline = fs::read(format!("/proc/{pid}/cmdline"))
            .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
            .unwrap_or_default();
        if (tagged || cmdline.contains(&cache)) && !process_gone(pid) {
            found.push((pid, cmdline));
        }
    }
    found
}

/// Wait until no process of the test in `dir` is left; panics naming them.
pub fn wait_no_survivors(dir: &TestDir, within: Duration) -> Duration {
    let deadline = Instant::now() + within;
    let start = Instant::now();
    loop {
        let left = tree_survivors(dir);
        if left.is_empty() {
            return start.elapsed();
        }
        if Instant::now() >= deadline {
            panic!("processes survived {within:?}: {left:?}");
        }
        std::thread::sleep(POLL);
    }
}

/// The pid a test child wrote to `<pid dir>/<name>` (e.g. `a.browser.pid`).
pub fn pid_file(dir: &TestDir, name: &str) -> Option<i32> {
    read_pid(&dir.pid_dir().join(name))
}

/// POST a JSON body to the coordinator (or a child) with extra headers;
/// None when no answer came within 10 s.
pub fn post_json_with(
    port: u16,
    path: &str,
    body: &Value,
    headers: &[(&str, &str)],
) -> Option<Reply> {
    let url = format!("http://127.0.0.1:{port}{path}");
    let mut rq = agent()
        .post(&url)
        .config()
        .timeout_global(Some(Duration::from_secs(10)))
        .build()
        .header("Content-Type", "application/json");
    for (k, v) in headers {
        rq = rq.header(*k, *v);
    }
    let mut resp = rq.send(body.to_string()).ok()?;
    reply_of(&mut resp)
}

/// POST a JSON body with no extra headers.
pub fn post_json(port: u16, path: &str, body: &Value) -> Option<Reply> {
    post_json_with(port, path, body, &[])
}

/// What one `aistudioproxy ctl` run did.
#[derive(Debug)]
pub struct Ctl {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
    /// Shown (through `Debug`) when an assertion on the run fails.
    #[allow(dead_code)]
    pub command: String,
}

impl Ctl {
    pub fn ok(self) -> Ctl {
        assert_eq!(self.code, Some(0), "{self:#?}");
        self
    }
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {self:#?}"))
    }
}

/// Run `aistudioproxy ctl <args>` with only `env` in its environment.
pub fn ctl_with(env: &[(&str, &Path)], args: &[&str]) -> Ctl {
    let mut cmd = Command::new(COORDINATOR);
    cmd.env_clear().arg("ctl").args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let command = format!("{env:?} {COORDINATOR} ctl {}", args.join(" "));
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {command}: {e}"));
    Ctl {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        command,
    }
}

/// `ctl <args>` finding the socket through `AUTH_PROFILE_CACHE_DIR`, as an
/// operator inside the pod would.
pub fn ctl(dir: &TestDir, args: &[&str]) -> Ctl {
    let cache = dir.cache_dir();
    ctl_with(&[("AUTH_PROFILE_CACHE_DIR", &cache)], args)
}

/// `ctl --json status`.
pub fn status(dir: &TestDir) -> Value {
    ctl(dir, &["--json", "status"]).ok().json()
}

/// The profile entry of a status (or `/ready`) body.
pub fn profile_of<'v>(body: &'v Value, name: &str) -> Option<&'v Value> {
    body["profiles"]
        .as_array()?
        .iter()
        .find(|p| p["profile"] == name)
}

pub fn profile_state(body: &Value, name: &str) -> Option<String> {
    profile_of(body, name).and_then(|p| p["state"].as_str().map(String::from))
}

/// The Python with the test packages (the OpenAI SDK): `AISP_PYTHON`, else
/// the `.venv` that scripts/test.sh makes.
pub fn python() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("AISP_PYTHON") {
        return Some(p.into());
    }
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/python");
    venv.is_file().then_some(venv)
}

/// `GET path` with one header (a key, an admin key), whatever the status.
pub fn get_with_header(port: u16, path: &str, header: (&str, &str)) -> Reply {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(5)))
        .build()
        .into();
    let mut r = agent
        .get(format!("http://127.0.0.1:{port}{path}"))
        .header(header.0, header.1)
        .call()
        .expect("an answer");
    reply_of(&mut r).expect("a body")
}

/// Who answered a completion: the test child's `profile=<name>` content,
/// else the error code, else empty.
pub fn served_by(r: &Reply) -> String {
    let v = r.json();
    v["choices"][0]["message"]["content"]
        .as_str()
        .and_then(|c| c.strip_prefix("profile="))
        .and_then(|c| c.split(' ').next())
        .map(String::from)
        .or_else(|| v["error"]["code"].as_str().map(String::from))
        .unwrap_or_default()
}
