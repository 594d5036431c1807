//! The S3 profile backend, end to end: the real binary's `--hydrate-only`
//! against a real, signature-checking S3 server (`s3s-fs`) on 127.0.0.1,
//! plus two tiny fake endpoints for what s3s-fs cannot serve (keys with `..`
//! segments, a non-TLS answer to a TLS handshake).
//!
//! Each test starts its own server on a port from the OS and owns a fresh
//! temp dir; both die on Drop. s3s-fs maps bucket = top-level directory of
//! its data dir and object key = path below it, so tests create objects by
//! writing files. Every wait has a deadline.
//!
//! s3s-fs comes from `S3S_FS_BIN`, else `PATH`, else `~/.cargo/bin`; install
//! it with `cargo install --locked s3s-fs@0.14.1 --features binary`.
//!
//! Self-contained on purpose (no shared helpers) so the benchmark
//! `tests/bench/hydrate.rs` can include this file for its server harness.

use std::collections::BTreeMap;
use std::fs;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub const ACCESS_KEY: &str = "AKIATESTAISTUDIO";
pub const SECRET_KEY: &str = "test-secret-key-for-s3s-fs-0123456789";
/// Longest a single run of the binary may take before the test fails.
const RUN_DEADLINE: Duration = Duration::from_secs(120);
const START_DEADLINE: Duration = Duration::from_secs(30);

/// A directory under the system temp dir, removed on Drop.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static SEQ: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "aisp-{tag}-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).expect("create temp dir");
        TempDir(dir)
    }
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// A port nothing listens on right now (the OS's pick, released).
pub fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    l.local_addr().expect("bound address").port()
}

fn s3s_fs_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("S3S_FS_BIN") {
        return PathBuf::from(p);
    }
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    if let Some(home) = std::env::var_os("HOME") {
        dirs.push(Path::new(&home).join(".cargo/bin"));
    }
    dirs.into_iter()
        .map(|d| d.join("s3s-fs"))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "s3s-fs not found (S3S_FS_BIN, PATH, ~/.cargo/bin): install it with \
                 `cargo install --locked s3s-fs@0.14.1 --features binary`"
            )
        })
}

/// A running s3s-fs with its data dir; killed and reaped on Drop.
pub struct S3Server {
    child: Child,
    pub port: u16,
    pub data: PathBuf,
    log: PathBuf,
    _dir: TempDir,
}

impl S3Server {
    pub fn start() -> S3Server {
        let dir = TempDir::new("s3s");
        let data = dir.path().join("data");
        fs::create_dir_all(&data).expect("create s3s-fs data dir");
        let log = dir.path().join("s3s-fs.log");
        let bin = s3s_fs_bin();
        // The port is free when picked; if another process grabs it before
        // s3s-fs binds, s3s-fs exits and we try a new one.
        for _attempt in 0..5 {
            let port = free_port();
            let out = fs::File::create(&log).expect("create s3s-fs log");
            let err = out.try_clone().expect("clone log handle");
            let mut child = Command::new(&bin)
                .args(["--host", "127.0.0.1", "--port", &port.to_string()])
                .args(["--access-key", ACCESS_KEY, "--secret-key", SECRET_KEY])
                .arg(&data)
                .stdin(Stdio::null())
                .stdout(out)
                .stderr(err)
                .spawn()
                .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
            let deadline = Instant::now() + START_DEADLINE;
            loop {
                if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                    return S3Server {
                        child,
                        port,
                        data,
                        log,
                        _dir: dir,
                    };
                }
                if let Ok(Some(_)) = child.try_wait() {
                    break; // lost the port race, or s3s-fs failed: retry
                }
                if Instant::now() > deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!(
                        "s3s-fs did not accept connections on 127.0.0.1:{port} within {START_DEADLINE:?}; log:\n{}",
                        fs::read_to_string(&log).unwrap_or_default()
                    );
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        panic!(
            "s3s-fs exited at start five times; last log:\n{}",
            fs::read_to_string(&log).unwrap_or_default()
        );
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn bucket(&self, name: &str) -> PathBuf {
        let b = self.data.join(name);
        fs::create_dir_all(&b).expect("create bucket dir");
        b
    }

    /// Store `bytes` as object `key` in `bucket` (created if needed).
    pub fn put(&self, bucket: &str, key: &str, bytes: &[u8]) {
        let path = self.bucket(bucket).join(key);
        fs::create_dir_all(path.parent().expect("object path has a parent"))
            .expect("create object dirs");
        fs::write(&path, bytes).expect("write object");
    }

    /// Stop the server now (the endpoint then refuses connections).
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        self.stop();
    }
}

/// What one run of the binary did.
pub struct Run {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
    pub elapsed: Duration,
    described: String,
}

impl Run {
    pub fn code(&self) -> Option<i32> {
        self.status.code()
    }
    /// stderr without log lines: what the binary says on failure.
    pub fn error_lines(&self) -> Vec<&str> {
        self.stderr
            .lines()
            .filter(|l| l.starts_with("aistudioproxy:"))
            .collect()
    }
    pub fn expect_code(&self, code: i32) -> &Run {
        assert_eq!(self.code(), Some(code), "unexpected exit\n{self}");
        self
    }
    /// The single error line, checked to be the only one.
    pub fn error_line(&self) -> String {
        let lines = self.error_lines();
        assert_eq!(lines.len(), 1, "expected exactly one error line\n{self}");
        lines[0].trim_start_matches("aistudioproxy: ").to_string()
    }
    pub fn summary(&self) -> serde_json::Value {
        serde_json::from_str(self.stdout.trim())
            .unwrap_or_else(|e| panic!("stdout is not the JSON summary ({e})\n{self}"))
    }
}

impl std::fmt::Display for Run {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "command: {}\nstatus: {}\n--- stdout\n{}\n--- stderr\n{}",
            self.described, self.status, self.stdout, self.stderr
        )
    }
}

/// The binary with a clean environment (PATH only) plus `env`.
pub fn hydrate_only(env: &[(&str, &str)]) -> Run {
    run_binary(&["--hydrate-only"], env)
}

pub fn run_binary(args: &[&str], env: &[(&str, &str)]) -> Run {
    let bin = env!("CARGO_BIN_EXE_aistudioproxy");
    let mut cmd = Command::new(bin);
    cmd.args(args);
    let described = format!("{bin} {}", args.join(" "));
    run_clean(cmd, described, env)
}

/// Run `cmd` with a clean environment (PATH plus `env`), stdout and stderr
/// to files (a full pipe can never block it), killed after `RUN_DEADLINE`.
fn run_clean(mut cmd: Command, described: String, env: &[(&str, &str)]) -> Run {
    let dir = TempDir::new("run");
    let (out_path, err_path) = (dir.path().join("stdout"), dir.path().join("stderr"));
    cmd.env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(fs::File::create(&out_path).expect("stdout file"))
        .stderr(fs::File::create(&err_path).expect("stderr file"));
    let described = format!(
        "{described} with env {:?}",
        env.iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
    );
    let started = Instant::now();
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {described}: {e}"));
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait for the child") {
            break s;
        }
        if started.elapsed() > RUN_DEADLINE {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "{described} still running after {RUN_DEADLINE:?}; stderr so far:\n{}",
                fs::read_to_string(&err_path).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    Run {
        status,
        stdout: fs::read_to_string(&out_path).unwrap_or_default(),
        stderr: fs::read_to_string(&err_path).unwrap_or_default(),
        elapsed: started.elapsed(),
        described,
    }
}

/// The environment of an S3 hydration against `endpoint`.
pub fn s3_env<'a>(endpoint: &'a str, bucket: &'a str, cache: &'a Path) -> Vec<(&'a str, &'a str)> {
    vec![
        ("PROFILE_BACKEND", "s3"),
        ("AUTH_PROFILE_S3_BUCKET", bucket),
        ("AUTH_PROFILE_S3_ENDPOINT", endpoint),
        ("AUTH_PROFILE_S3_REGION", "us-east-1"),
        ("AWS_ACCESS_KEY_ID", ACCESS_KEY),
        ("AWS_SECRET_ACCESS_KEY", SECRET_KEY),
        (
            "AUTH_PROFILE_CACHE_DIR",
            cache.to_str().expect("temp paths are UTF-8"),
        ),
    ]
}

fn with<'a>(
    mut env: Vec<(&'a str, &'a str)>,
    extra: &[(&'a str, &'a str)],
) -> Vec<(&'a str, &'a str)> {
    for (k, v) in extra {
        env.retain(|(name, _)| name != k);
        env.push((k, v));
    }
    env
}

fn without<'a>(mut env: Vec<(&'a str, &'a str)>, names: &[&str]) -> Vec<(&'a str, &'a str)> {
    env.retain(|(k, _)| !names.contains(k));
    env
}

/// Every file and directory below `dir`: relative path -> (mode, bytes).
fn snapshot(dir: &Path) -> BTreeMap<String, (u32, Vec<u8>)> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, (u32, Vec<u8>)>) {
        let Ok(entries) = fs::read_dir(dir) else {
            return;
        };
        for e in entries.flatten() {
            let path = e.path();
            let rel = path
                .strip_prefix(root)
                .expect("walked paths are below the root")
                .to_string_lossy()
                .into_owned();
            let meta = fs::symlink_metadata(&path).expect("metadata of a walked path");
            let mode = meta.permissions().mode() & 0o7777;
            if meta.is_dir() {
                out.insert(format!("{rel}/"), (mode, Vec::new()));
                walk(root, &path, out);
            } else {
                out.insert(rel, (mode, fs::read(&path).unwrap_or_default()));
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(dir, dir, &mut out);
    out
}

fn profile(i: usize) -> Vec<u8> {
    format!("{{\"cookies\":[{{\"name\":\"SID\",\"value\":\"v{i}\"}}],\"origins\":[]}}").into_bytes()
}

#[test]
fn s3_hydrates_a_prefix_with_its_key_file() {
    let s3 = S3Server::start();
    let tmp = TempDir::new("t");
    let cache = tmp.path().join("cache");
    for i in 0..3 {
        s3.put(
            "auth",
            &format!("prod/coordinator/active/p{i}.json"),
            &profile(i),
        );
    }
    s3.put("auth", "prod/coordinator/key.txt", b"key-one\nkey-two\n");
    s3.put("auth", "prod/coordinator/active/sub/nested.json", b"{}");
    s3.put(
        "auth",
        "prod/coordinator/active/readme.txt",
        b"not a profile",
    );
    s3.put("auth", "prod/coordinator/active/._p0.json", b"macOS litter");
    s3.put("auth", "prod/other/active/stray.json", b"{}");
    let ep = s3.endpoint();

    // Leading and trailing slashes in the prefix are tolerated.
    let run = hydrate_only(&with(
        s3_env(&ep, "auth", &cache),
        &[("AUTH_PROFILE_S3_PREFIX", "/prod/coordinator/")],
    ));
    run.expect_code(0);
    let summary = run.summary();
    assert_eq!(summary["profiles"], 3, "{run}");
    assert_eq!(
        summary["key_file"],
        cache.join("key.txt").to_str().unwrap(),
        "{run}"
    );
    assert_eq!(
        summary["profiles_dir"],
        cache.join("active").to_str().unwrap(),
        "{run}"
    );

    let snap = snapshot(&cache);
    let names: Vec<&str> = snap.keys().map(String::as_str).collect();
    assert_eq!(
        names,
        [
            "active/",
            "active/p0.json",
            "active/p1.json",
            "active/p2.json",
            "key.txt"
        ],
        "{run}"
    );
    for i in 0..3 {
        assert_eq!(snap[&format!("active/p{i}.json")], (0o600, profile(i)));
    }
    assert_eq!(snap["key.txt"], (0o600, b"key-one\nkey-two\n".to_vec()));
    assert_eq!(snap["active/"].0, 0o700);
    assert!(run.stderr.contains("found 3 profiles"), "{run}");
    assert!(
        run.stderr.contains("hydrated 3 profiles (0 left out)"),
        "{run}"
    );
    assert!(
        run.stderr
            .contains("prod/coordinator/active/sub/nested.json"),
        "{run}"
    );
    assert!(run.stderr.contains("skipping 1 hidden"), "{run}");
    assert!(!run.stderr.contains(SECRET_KEY), "secret leaked\n{run}");
}

#[test]
fn s3_hydrates_without_prefix_or_key_file_and_drops_a_stale_key() {
    let s3 = S3Server::start();
    let tmp = TempDir::new("t");
    let cache = tmp.path().join("cache");
    s3.put("flat", "active/only.json", &profile(7));
    let ep = s3.endpoint();
    // A key.txt from an earlier run must not outlive the bucket's.
    fs::create_dir_all(&cache).unwrap();
    fs::write(cache.join("key.txt"), "old-key").unwrap();

    let run = hydrate_only(&s3_env(&ep, "flat", &cache));
    run.expect_code(0);
    assert_eq!(run.summary()["key_file"], serde_json::Value::Null, "{run}");
    assert_eq!(run.summary()["profiles"], 1, "{run}");
    assert!(!cache.join("key.txt").exists());
    assert_eq!(
        fs::read(cache.join("active/only.json")).unwrap(),
        profile(7)
    );
    let said = run.stderr.matches("API key checks are disabled").count();
    assert_eq!(said, 1, "missing key.txt must be said once\n{run}");
    assert!(run.stderr.contains(" INFO "), "{run}");
}

#[test]
fn s3_listing_follows_pagination_past_1000_objects() {
    let s3 = S3Server::start();
    let tmp = TempDir::new("t");
    let cache = tmp.path().join("cache");
    let n = 1_234;
    for i in 0..n {
        s3.put("many", &format!("p/active/prof-{i:05}.json"), &profile(i));
    }
    let ep = s3.endpoint();
    let run = hydrate_only(&with(
        s3_env(&ep, "many", &cache),
        &[("AUTH_PROFILE_S3_PREFIX", "p"), ("RUST_LOG", "debug")],
    ));
    run.expect_code(0);
    assert_eq!(run.summary()["profiles"], n, "{run}");
    assert_eq!(fs::read_dir(cache.join("active")).unwrap().count(), n);
    assert_eq!(
        fs::read(cache.join(format!("active/prof-{:05}.json", n - 1))).unwrap(),
        profile(n - 1)
    );
    // The server really paginated: two pages were asked for.
    assert!(run.stderr.contains("page 2 holds"), "{run}");
}

#[test]
fn s3_wrong_secret_names_the_signature_and_the_permission() {
    let s3 = S3Server::start();
    let tmp = TempDir::new("t");
    s3.put("auth", "active/a.json", &profile(1));
    let ep = s3.endpoint();
    let wrong = "wrong-secret-do-not-print-me";
    let run = hydrate_only(&with(
        s3_env(&ep, "auth", &tmp.path().join("cache")),
        &[("AWS_SECRET_ACCESS_KEY", wrong)],
    ));
    run.expect_code(1);
    let line = run.error_line();
    assert!(
        line.starts_with(
            "S3 rejected the request signature listing s3://auth/active/ (SignatureDoesNotMatch)"
        ),
        "{run}"
    );
    assert!(line.contains("AWS_SECRET_ACCESS_KEY"), "{run}");
    assert!(line.contains("s3:ListBucket on s3://auth/active/"), "{run}");
    assert!(!run.stderr.contains(wrong), "secret leaked\n{run}");

    let run = hydrate_only(&with(
        s3_env(&ep, "auth", &tmp.path().join("cache")),
        &[("AWS_ACCESS_KEY_ID", "AKIAUNKNOWN")],
    ));
    run.expect_code(1);
    assert!(
        run.error_line().contains("check AWS_ACCESS_KEY_ID"),
        "{run}"
    );
}

#[test]
fn s3_missing_bucket_and_missing_bucket_setting_are_one_line_each() {
    let s3 = S3Server::start();
    let tmp = TempDir::new("t");
    let ep = s3.endpoint();
    let cache = tmp.path().join("cache");
    let run = hydrate_only(&s3_env(&ep, "no-such-bucket", &cache));
    run.expect_code(1);
    assert_eq!(
        run.error_line(),
        format!("S3 bucket \"no-such-bucket\" does not exist (at {ep}): check AUTH_PROFILE_S3_BUCKET and AUTH_PROFILE_S3_ENDPOINT"),
        "{run}"
    );

    let run = hydrate_only(&without(
        s3_env(&ep, "x", &cache),
        &["AUTH_PROFILE_S3_BUCKET"],
    ));
    run.expect_code(1);
    assert_eq!(
        run.error_line(),
        "AUTH_PROFILE_S3_BUCKET is not set: PROFILE_BACKEND=s3 needs a bucket",
        "{run}"
    );
}

#[test]
fn s3_prefix_without_profiles_says_where_it_looked() {
    let s3 = S3Server::start();
    let tmp = TempDir::new("t");
    s3.put("auth", "live/active/a.json", &profile(1));
    s3.put("auth", "empty/key.txt", b"k");
    s3.put("auth", "empty/active/notes.txt", b"no profiles here");
    let ep = s3.endpoint();
    let run = hydrate_only(&with(
        s3_env(&ep, "auth", &tmp.path().join("cache")),
        &[("AUTH_PROFILE_S3_PREFIX", "empty/")],
    ));
    run.expect_code(1);
    assert_eq!(
        run.error_line(),
        "No auth profiles found under s3://auth/empty/active/",
        "{run}"
    );
}

#[test]
fn s3_malformed_profile_is_named_and_left_out_while_others_hydrate() {
    let s3 = S3Server::start();
    let tmp = TempDir::new("t");
    let cache = tmp.path().join("cache");
    s3.put("auth", "active/good.json", &profile(1));
    s3.put(
        "auth",
        "active/bad.json",
        b"{\"cookie\": \"SECRET-COOKIE-VALUE\", oops",
    );
    s3.put("auth", "active/zgood.json", &profile(2));
    let ep = s3.endpoint();
    let run = hydrate_only(&s3_env(&ep, "auth", &cache));
    run.expect_code(0);
    assert_eq!(run.summary()["profiles"], 2, "{run}");
    assert!(
        run.stderr.contains("bad.json") && run.stderr.contains("not valid JSON"),
        "{run}"
    );
    assert!(
        !run.stderr.contains("SECRET-COOKIE-VALUE"),
        "profile content leaked\n{run}"
    );
    assert!(run.stderr.contains("(1 left out)"), "{run}");
    assert!(!cache.join("active/bad.json").exists());
    assert!(cache.join("active/good.json").exists() && cache.join("active/zgood.json").exists());
}

#[test]
fn s3_key_that_would_escape_is_refused_by_name_and_nothing_changes() {
    let s3 = S3Server::start();
    let tmp = TempDir::new("t");
    let cache = tmp.path().join("cache");
    s3.put("auth", "active/a.json", &profile(1));
    let ep = s3.endpoint();
    hydrate_only(&s3_env(&ep, "auth", &cache)).expect_code(0);
    let before = snapshot(tmp.path());

    // A backslash name: a file name on Linux, a separator elsewhere.
    s3.put("auth", "active/..\\..\\evil.json", b"{}");
    s3.put("auth", "active/b.json", &profile(2));
    let run = hydrate_only(&s3_env(&ep, "auth", &cache));
    run.expect_code(1);
    assert_eq!(
        run.error_line(),
        "refusing profile object \"active/..\\\\..\\\\evil.json\": its name would escape the cache directory; rename it to a plain <name>.json",
        "{run}"
    );
    assert_eq!(snapshot(tmp.path()), before, "the cache changed\n{run}");
}

/// A minimal HTTP/1.1 server on 127.0.0.1 answering each request with
/// `respond(request_line)`; records request lines; stops on Drop.
pub struct FakeEndpoint {
    pub port: u16,
    pub requests: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl FakeEndpoint {
    pub fn start(respond: fn(&str) -> Vec<u8>) -> FakeEndpoint {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        let port = listener.local_addr().expect("bound address").port();
        listener
            .set_nonblocking(true)
            .expect("nonblocking listener");
        let stop = Arc::new(AtomicBool::new(false));
        let requests = Arc::new(Mutex::new(Vec::new()));
        let (stop2, requests2) = (stop.clone(), requests.clone());
        let thread = std::thread::Builder::new()
            .name("fake-endpoint".into())
            .spawn(move || {
                let deadline = Instant::now() + RUN_DEADLINE;
                while !stop2.load(Ordering::Relaxed) && Instant::now() < deadline {
                    let Ok((mut conn, _)) = listener.accept() else {
                        std::thread::sleep(Duration::from_millis(5));
                        continue;
                    };
                    let _ = conn.set_nonblocking(false);
                    let _ = conn.set_read_timeout(Some(Duration::from_secs(5)));
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 4096];
                    // Read the request head (or whatever a TLS client sends).
                    while !buf.windows(4).any(|w| w == b"\r\n\r\n") && buf.len() < 65536 {
                        match conn.read(&mut chunk) {
                            Ok(0) | Err(_) => break,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                        if buf.first().is_some_and(|b| *b == 0x16) {
                            break; // a TLS ClientHello: answer right away
                        }
                    }
                    let line = String::from_utf8_lossy(&buf)
                        .lines()
                        .next()
                        .unwrap_or_default()
                        .to_string();
                    if let Ok(mut r) = requests2.lock() {
                        r.push(line.clone());
                    }
                    let _ = conn.write_all(&respond(&line));
                }
            })
            .expect("spawn fake endpoint");
        FakeEndpoint {
            port,
            requests,
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for FakeEndpoint {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn http(status: &str, body: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 {status}\r\nContent-Type: application/xml\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

#[test]
fn s3_keys_with_dot_dot_or_empty_segments_are_refused_never_fetched() {
    // s3s-fs stores keys as paths, so it cannot hold `active/../x.json`;
    // real S3 can. A fake endpoint lists such keys (it checks no signature).
    fn respond(line: &str) -> Vec<u8> {
        if line.contains("list-type=2") {
            http(
                "200 OK",
                "<?xml version=\"1.0\" encoding=\"UTF-8\"?><ListBucketResult><Name>auth</Name><Prefix>active/</Prefix><KeyCount>4</KeyCount><MaxKeys>1000</MaxKeys><IsTruncated>false</IsTruncated>\
                 <Contents><Key>active/ok.json</Key><LastModified>2024-01-01T00:00:00.000Z</LastModified><Size>2</Size></Contents>\
                 <Contents><Key>active/../../escape.json</Key><LastModified>2024-01-01T00:00:00.000Z</LastModified><Size>2</Size></Contents>\
                 <Contents><Key>active//etc/abs.json</Key><LastModified>2024-01-01T00:00:00.000Z</LastModified><Size>2</Size></Contents>\
                 <Contents><Key>active/./dot.json</Key><LastModified>2024-01-01T00:00:00.000Z</LastModified><Size>2</Size></Contents>\
                 </ListBucketResult>",
            )
        } else {
            http("200 OK", "{}")
        }
    }
    let fake = FakeEndpoint::start(respond);
    let tmp = TempDir::new("t");
    let cache = tmp.path().join("deep/cache");
    let ep = format!("http://127.0.0.1:{}", fake.port);
    let run = hydrate_only(&s3_env(&ep, "auth", &cache));
    run.expect_code(1);
    assert_eq!(
        run.error_line(),
        "refusing profile object \"active/../../escape.json\": its name would escape the cache directory; rename it to a plain <name>.json",
        "{run}"
    );
    for key in ["active//etc/abs.json", "active/./dot.json"] {
        assert!(
            run.stderr.contains(&format!("refusing object {key:?}")),
            "{run}"
        );
    }
    // Nothing was fetched and nothing was written anywhere.
    let requests = fake.requests.lock().expect("request log").clone();
    assert!(
        requests.iter().all(|r| r.contains("list-type=2")),
        "{requests:?}"
    );
    let written: Vec<String> = snapshot(tmp.path()).into_keys().collect();
    assert!(
        written
            .iter()
            .all(|p| !p.contains("escape") && !p.contains("abs") && !p.contains("dot")),
        "{written:?}"
    );
}

#[test]
fn s3_endpoint_down_without_a_cache_fails_naming_the_endpoint() {
    let tmp = TempDir::new("t");
    let ep = format!("http://127.0.0.1:{}", free_port());
    let run = hydrate_only(&s3_env(&ep, "auth", &tmp.path().join("cache")));
    run.expect_code(1);
    let line = run.error_line();
    assert!(
        line.starts_with(&format!("cannot reach S3 at {ep} listing s3://auth/active/ (connection refused): check that the store is up and AUTH_PROFILE_S3_ENDPOINT")),
        "{run}"
    );
    assert!(line.contains("no usable cached profiles in"), "{run}");
    // Refused is refused: one retry after 1 s, no hanging on a dead port.
    assert!(
        run.elapsed < Duration::from_secs(20),
        "took {:?}\n{run}",
        run.elapsed
    );
}

#[test]
fn s3_endpoint_down_with_a_previous_cache_starts_from_it_loudly() {
    let mut s3 = S3Server::start();
    let tmp = TempDir::new("t");
    let cache = tmp.path().join("cache");
    s3.put("auth", "active/a.json", &profile(1));
    s3.put("auth", "active/b.json", &profile(2));
    s3.put("auth", "key.txt", b"k\n");
    let ep = s3.endpoint();
    hydrate_only(&s3_env(&ep, "auth", &cache)).expect_code(0);
    let before = snapshot(&cache);
    s3.stop();

    let run = hydrate_only(&s3_env(&ep, "auth", &cache));
    run.expect_code(0);
    assert_eq!(run.summary()["profiles"], 2, "{run}");
    assert_eq!(
        run.summary()["key_file"],
        cache.join("key.txt").to_str().unwrap(),
        "{run}"
    );
    let warning = run
        .stderr
        .lines()
        .find(|l| l.contains(" WARN ") && l.contains("S3 unreachable"))
        .unwrap_or_else(|| panic!("no warning\n{run}"));
    assert!(
        warning.contains(&format!("cannot reach S3 at {ep}")),
        "{run}"
    );
    assert!(warning.contains("connection refused"), "{run}");
    assert_eq!(snapshot(&cache), before, "the cache changed\n{run}");
}

#[test]
fn s3_download_failure_halfway_leaves_the_previous_cache_untouched() {
    let s3 = S3Server::start();
    let tmp = TempDir::new("t");
    let cache = tmp.path().join("cache");
    for i in 0..10 {
        s3.put("auth", &format!("active/p{i:02}.json"), &profile(i));
    }
    s3.put("auth", "key.txt", b"old-key\n");
    let ep = s3.endpoint();
    hydrate_only(&s3_env(&ep, "auth", &cache)).expect_code(0);
    let before = snapshot(&cache);
    assert_eq!(before.len(), 12);

    // The bucket changes: new contents, more profiles, a new key, and one
    // object in the middle that s3s-fs lists but cannot serve (its data
    // file is a dangling symlink, so the GET fails after others succeeded).
    for i in 0..60 {
        s3.put("auth", &format!("active/p{i:02}.json"), &profile(100 + i));
    }
    s3.put("auth", "key.txt", b"new-key\n");
    std::os::unix::fs::symlink(
        s3.data.join("auth/gone"),
        s3.data.join("auth/active/p30-broken.json"),
    )
    .expect("symlink");
    let run = hydrate_only(&with(
        s3_env(&ep, "auth", &cache),
        &[("S3_DOWNLOAD_THREADS", "4")],
    ));
    run.expect_code(1);
    assert!(
        run.error_line()
            .contains("s3://auth/active/p30-broken.json"),
        "the failing object is not named\n{run}\n{}",
        s3.log()
    );
    assert_eq!(snapshot(&cache), before, "the cache changed\n{run}");
}

#[test]
fn s3_https_endpoint_that_is_not_tls_gives_one_line_not_a_panic() {
    let fake = FakeEndpoint::start(|_| b"HTTP/1.1 400 Bad Request\r\n\r\nnot TLS\n".to_vec());
    let tmp = TempDir::new("t");
    let ep = format!("https://127.0.0.1:{}", fake.port);
    let run = hydrate_only(&s3_env(&ep, "auth", &tmp.path().join("cache")));
    run.expect_code(1);
    assert!(!run.stderr.contains("panicked"), "{run}");
    assert!(
        run.error_line().starts_with(&format!(
            "cannot talk to S3 at {ep} listing s3://auth/active/"
        )),
        "{run}"
    );
    assert!(
        !fake.requests.lock().expect("request log").is_empty(),
        "no TLS request was made"
    );
}

#[test]
fn s3_credentials_from_a_shared_file_and_aws_profile() {
    let s3 = S3Server::start();
    let tmp = TempDir::new("t");
    let cache = tmp.path().join("cache");
    s3.put("auth", "active/a.json", &profile(1));
    let creds = tmp.path().join("credentials");
    fs::write(
        &creds,
        format!(
            "[default]\naws_access_key_id = AKIAWRONG\naws_secret_access_key = wrong\n\n\
             [aisp]\naws_access_key_id = {ACCESS_KEY}\naws_secret_access_key = {SECRET_KEY}\n"
        ),
    )
    .unwrap();
    let ep = s3.endpoint();
    let base = without(
        s3_env(&ep, "auth", &cache),
        &["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"],
    );
    let creds_s = creds.to_str().expect("UTF-8 temp path");
    let run = hydrate_only(&with(
        base.clone(),
        &[
            ("AWS_SHARED_CREDENTIALS_FILE", creds_s),
            ("AWS_PROFILE", "aisp"),
        ],
    ));
    run.expect_code(0);
    assert!(run.stderr.contains("profile [aisp] of"), "{run}");

    // Without AWS_PROFILE the [default] section is used (and is wrong here).
    let run = hydrate_only(&with(
        base.clone(),
        &[("AWS_SHARED_CREDENTIALS_FILE", creds_s)],
    ));
    run.expect_code(1);
    assert!(
        run.error_line().contains("check AWS_ACCESS_KEY_ID"),
        "{run}"
    );

    let run = hydrate_only(&with(
        base.clone(),
        &[
            ("AWS_SHARED_CREDENTIALS_FILE", creds_s),
            ("AWS_PROFILE", "nope"),
        ],
    ));
    run.expect_code(1);
    assert!(
        run.error_line()
            .starts_with("AWS_PROFILE=\"nope\" is unusable"),
        "{run}"
    );
    assert!(!run.stderr.contains(SECRET_KEY), "secret leaked\n{run}");

    // Half of the environment pair is a mistake, not a reason to look further.
    let run = hydrate_only(&with(base, &[("AWS_ACCESS_KEY_ID", ACCESS_KEY)]));
    run.expect_code(1);
    assert_eq!(
        run.error_line(),
        "AWS_ACCESS_KEY_ID is set but AWS_SECRET_ACCESS_KEY is not: set both, or neither to use another credential source",
        "{run}"
    );
}

#[test]
fn s3_hydrate_only_output_is_read_by_a_shell_script() {
    let s3 = S3Server::start();
    let tmp = TempDir::new("t");
    let cache = tmp.path().join("cache");
    s3.put("auth", "team/active/a.json", &profile(1));
    s3.put("auth", "team/active/b.json", &profile(2));
    s3.put("auth", "team/key.txt", b"sk-one\nsk-two\n");
    let ep = s3.endpoint();
    // What an entrypoint does: hydrate, then hand key.txt to the children.
    let script = r#"
        set -eu
        summary=$("$AISP" --hydrate-only)
        count=$(printf '%s\n' "$summary" | sed -n 's/.*"profiles":\([0-9]*\).*/\1/p')
        AUTH_KEY_FILE_PATH=$(printf '%s\n' "$summary" | sed -n 's/.*"key_file":"\([^"]*\)".*/\1/p')
        dir=$(printf '%s\n' "$summary" | sed -n 's/.*"profiles_dir":"\([^"]*\)".*/\1/p')
        export AUTH_KEY_FILE_PATH
        echo "count=$count"
        echo "files=$(ls "$dir" | tr '\n' ' ')"
        echo "keys=$(wc -l < "$AUTH_KEY_FILE_PATH" | tr -d ' ')"
    "#;
    let bin = env!("CARGO_BIN_EXE_aistudioproxy");
    let env = with(
        s3_env(&ep, "auth", &cache),
        &[("AUTH_PROFILE_S3_PREFIX", "team"), ("AISP", bin)],
    );
    let run = run_binary_via_sh(script, &env);
    assert!(run.status.success(), "{run}");
    assert_eq!(
        run.stdout, "count=2\nfiles=a.json b.json \nkeys=2\n",
        "{run}"
    );
}

/// `sh -c script` with the same clean environment and deadline.
fn run_binary_via_sh(script: &str, env: &[(&str, &str)]) -> Run {
    let mut cmd = Command::new("sh");
    cmd.args(["-c", script]);
    run_clean(cmd, format!("sh -c {script:?}"), env)
}

#[test]
fn s3_credentials_from_a_container_credentials_endpoint() {
    // ECS task roles and EKS Pod Identity: aws-creds allows a loopback
    // AWS_CONTAINER_CREDENTIALS_FULL_URI, so the real code path can be
    // driven locally. (The RELATIVE_URI form only differs by its fixed host,
    // 169.254.170.2, which a test cannot serve.)
    fn respond(_: &str) -> Vec<u8> {
        let body = format!(
            "{{\"AccessKeyId\":\"{ACCESS_KEY}\",\"SecretAccessKey\":\"{SECRET_KEY}\",\"Token\":\"container-session-token\",\"Expiration\":\"2099-01-01T00:00:00Z\"}}"
        );
        format!(
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
        .into_bytes()
    }
    let creds = FakeEndpoint::start(respond);
    let s3 = S3Server::start();
    let tmp = TempDir::new("t");
    s3.put("auth", "active/a.json", &profile(1));
    let ep = s3.endpoint();
    let uri = format!("http://127.0.0.1:{}/v1/credentials", creds.port);
    let cache = tmp.path().join("cache");
    let env = with(
        without(
            s3_env(&ep, "auth", &cache),
            &["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"],
        ),
        &[
            ("AWS_CONTAINER_CREDENTIALS_FULL_URI", &uri),
            ("AWS_CONTAINER_AUTHORIZATION_TOKEN", "container-auth-token"),
            ("HOME", "/nonexistent"),
        ],
    );
    let run = hydrate_only(&env);
    run.expect_code(0);
    assert!(
        run.stderr.contains("the container credentials endpoint"),
        "{run}"
    );
    assert!(
        !run.stderr.contains("container-auth-token") && !run.stderr.contains(SECRET_KEY),
        "secret leaked\n{run}"
    );
    let requests = creds.requests.lock().expect("request log").clone();
    assert_eq!(requests, ["GET /v1/credentials HTTP/1.1"], "{run}");
}
