//! Write-back, from outside: what our S3 test server enforces (write-back's
//! conflict handling rests on it), the write-back settings of the real
//! binary, and write-back end to end: the real coordinator running real
//! test children that refresh their profile (knob `refresh_every`), against
//! a real s3s-fs or a local directory. The decision table and the worker
//! logic are unit-tested in `src/writeback/tests.rs`.
//!
//! Which server for what: s3s-fs 0.14.1 (installed by scripts/test.sh)
//! enforces `If-Match: <etag>` and `If-None-Match: *` on PutObject, answering
//! 412 PreconditionFailed, which the first test proves. It checks them
//! before writing, without a lock, so two racing writers could both pass
//! (AWS would answer one of them 409): fine for tests that write from one
//! place at a time. It ignores `If-Match` on DeleteObject, and it has one
//! key pair with every permission, so the 403 test puts a small 127.0.0.1
//! proxy in front of it that refuses every PUT and forwards the rest.
//!
//! Objects are read straight from s3s-fs's data directory: it writes each
//! PUT to a temp file and renames it, so a reader there sees whole objects
//! only, exactly what a GET would serve. Operators' uploads go through the
//! S3 API, since a file written into the data directory would keep the
//! ETag s3s-fs recorded for the previous PUT.

use std::fs;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use s3::creds::Credentials;
use s3::error::S3Error;
use s3::{Bucket, Region};
use serde_json::{json, Value};

use crate::common::{
    http_get, post_json, secs, send_signal_to, wait_until, Builder, Coordinator, TestDir,
    COORDINATOR,
};

use crate::s3::{hydrate_only, s3_env, S3Server, TempDir, ACCESS_KEY, SECRET_KEY};

fn bucket(s3: &S3Server, name: &str) -> Box<Bucket> {
    s3.bucket(name);
    let region = Region::Custom {
        region: "us-east-1".into(),
        endpoint: s3.endpoint(),
    };
    let creds = Credentials::new(Some(ACCESS_KEY), Some(SECRET_KEY), None, None, None)
        .expect("static credentials");
    Bucket::new(name, region, creds)
        .expect("bucket client")
        .with_path_style()
}

fn with_header(b: &Bucket, k: &str, v: &str) -> Bucket {
    let mut b = b.clone();
    b.add_header(k, v);
    b
}

fn status(r: Result<s3::request::ResponseData, S3Error>) -> u16 {
    match r {
        Ok(d) => d.status_code(),
        Err(S3Error::HttpFailWithBody(status, _)) => status,
        Err(e) => panic!("no HTTP answer: {e}"),
    }
}

#[test]
fn writeback_s3s_fs_enforces_put_preconditions() {
    let s3 = S3Server::start();
    let b = bucket(&s3, "cond");
    let key = "active/a.json";

    // If-None-Match: * creates once, then refuses.
    let absent = with_header(&b, "if-none-match", "*");
    assert_eq!(status(absent.put_object(key, b"{\"cookies\":[]}")), 200);
    assert_eq!(status(absent.put_object(key, b"{}")), 412);

    // If-Match holds only for the current ETag.
    let etag = b
        .get_object(key)
        .expect("get")
        .headers()
        .get("etag")
        .cloned()
        .expect("an ETag header");
    let stale = with_header(&b, "if-match", "\"00000000000000000000000000000000\"");
    assert_eq!(status(stale.put_object(key, b"{\"x\":1}")), 412);
    let current = with_header(&b, "if-match", &etag);
    assert_eq!(status(current.put_object(key, b"{\"cookies\":[1]}")), 200);
    // ... and the old ETag no longer matches after that write.
    assert_eq!(status(current.put_object(key, b"{\"cookies\":[2]}")), 412);
    // If-Match on a missing object fails too.
    let missing = with_header(&b, "if-match", &etag);
    assert_eq!(status(missing.put_object("active/none.json", b"{}")), 412);
    assert_eq!(
        b.get_object(key).expect("get").as_slice(),
        b"{\"cookies\":[1]}"
    );
}

#[test]
fn writeback_settings_are_checked_before_anything_runs() {
    let tmp = TempDir::new("wb-settings");
    let cache = tmp.path().join("cache");
    for (name, value, expected) in [
        (
            "AUTH_WRITEBACK",
            "local",
            "invalid AUTH_WRITEBACK=\"local\": expected s3, all or off",
        ),
        (
            "AUTH_WRITEBACK_INTERVAL_S",
            "0",
            "invalid AUTH_WRITEBACK_INTERVAL_S=\"0\": expected an integer from 1 to 86400",
        ),
    ] {
        let run = hydrate_only(&[
            ("AUTH_PROFILE_CACHE_DIR", cache.to_str().expect("UTF-8")),
            (name, value),
        ]);
        run.expect_code(2);
        assert_eq!(run.error_line(), expected, "{run}");
        assert!(!cache.exists(), "nothing may be staged on a bad setting");
    }
    let help = Command::new(env!("CARGO_BIN_EXE_aistudioproxy"))
        .arg("--help")
        .output()
        .expect("run --help");
    let help = String::from_utf8_lossy(&help.stdout);
    assert!(help.contains("--auth-writeback ") && help.contains("AUTH_WRITEBACK_INTERVAL_S"));
}

#[test]
fn writeback_hydration_stages_no_working_copies() {
    // Working copies belong to child starts; hydration only stages active/.
    let s3 = S3Server::start();
    s3.put("auth", "active/a.json", b"{\"cookies\":[]}");
    let tmp = TempDir::new("wb-hydrate");
    let cache = tmp.path().join("cache");
    let endpoint = s3.endpoint();
    let mut env = s3_env(&endpoint, "auth", &cache);
    env.push(("AUTH_WRITEBACK", "all"));
    hydrate_only(&env).expect_code(0);
    assert!(cache.join("active/a.json").is_file());
    assert!(!cache.join("running").exists());
}

// ---------------------------------------------------------------------------
// End to end: the coordinator, its children's refreshes, and the source

const BUCKET: &str = "auth";

/// A profile whose test child rewrites it after every completion and at
/// SIGTERM, pausing `pause_ms` between the two halves of each write.
fn refreshing(pause_ms: u64) -> Value {
    json!({
        "cookies": [{"name": "SID", "value": "hydrated", "domain": ".google.com", "path": "/"}],
        "origins": [],
        "testchild": {"refresh_every": 1, "refresh_pause_ms": pause_ms},
    })
}

/// A profile as an operator would upload it: cookie `aisp_refresh` set to
/// `mark`, no test-child knobs.
fn operators(mark: &str) -> Vec<u8> {
    json!({
        "cookies": [{"name": "aisp_refresh", "value": mark, "domain": ".google.com", "path": "/"}],
        "origins": [],
    })
    .to_string()
    .into_bytes()
}

/// The value of cookie `aisp_refresh` in a profile's bytes, if they are
/// whole JSON and hold it.
fn refresh_mark(bytes: &[u8]) -> Option<String> {
    let v: Value = serde_json::from_slice(bytes).ok()?;
    v["cookies"]
        .as_array()?
        .iter()
        .find(|c| c["name"] == "aisp_refresh")?["value"]
        .as_str()
        .map(String::from)
}

fn mark_of(path: &Path) -> Option<String> {
    refresh_mark(&fs::read(path).ok()?)
}

/// The coordinator on `endpoint` (s3s-fs, or a proxy in front of it), one
/// slot unless told otherwise.
fn s3_coordinator(endpoint: &str) -> Builder {
    Builder::new()
        .pool_size(1)
        .env("PROFILE_BACKEND", "s3")
        .env("AUTH_PROFILE_S3_BUCKET", BUCKET)
        .env("AUTH_PROFILE_S3_ENDPOINT", endpoint)
        .env("AUTH_PROFILE_S3_REGION", "us-east-1")
        .env("AWS_ACCESS_KEY_ID", ACCESS_KEY)
        .env("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
}

/// Where s3s-fs keeps object `active/<name>.json` of the bucket.
fn object_path(s3: &S3Server, name: &str) -> PathBuf {
    s3.data.join(BUCKET).join(format!("active/{name}.json"))
}

fn object(s3: &S3Server, name: &str) -> Vec<u8> {
    fs::read(object_path(s3, name)).expect("the object exists")
}

/// One completion served by the child on `api_port`.
fn completion(api_port: u16) {
    let body = json!({"model": "gemini-test",
                      "messages": [{"role": "user", "content": "hi"}]});
    let r = post_json(api_port, "/v1/chat/completions", &body).expect("the child answers");
    assert_eq!(r.status, 200, "{}", r.body);
}

/// The child's stats (`started_with_refresh`, `refreshes`, ...).
fn child_stats(api_port: u16) -> Value {
    http_get(api_port, "/_testchild/stats")
        .expect("the child answers")
        .json()
}

/// The child's working copy: the `--active-auth-json` it was given.
fn working_copy(api_port: u16) -> PathBuf {
    let info = http_get(api_port, "/api/info")
        .expect("the child answers")
        .json();
    PathBuf::from(info["auth_json"].as_str().expect("auth_json"))
}

fn count(haystack: &str, needle: &str) -> usize {
    haystack.matches(needle).count()
}

/// A thread reading `path` every few ms until dropped, keeping every
/// distinct content it saw that is not whole JSON: a reader of the source
/// must never catch a write-back half done.
struct Watch {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<(usize, Vec<Vec<u8>>)>>,
}

impl Watch {
    fn start(path: PathBuf) -> Watch {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name("watch-source".into())
            .spawn(move || {
                let (mut reads, mut bad) = (0usize, Vec::new());
                while !flag.load(Ordering::Relaxed) {
                    if let Ok(bytes) = fs::read(&path) {
                        reads += 1;
                        if serde_json::from_slice::<Value>(&bytes).is_err() && !bad.contains(&bytes)
                        {
                            bad.push(bytes);
                        }
                    }
                    std::thread::sleep(Duration::from_millis(2));
                }
                (reads, bad)
            })
            .expect("start the watch thread");
        Watch {
            stop,
            thread: Some(thread),
        }
    }

    /// Stop, and panic if any read was not whole JSON.
    fn finish(mut self) -> usize {
        self.stop.store(true, Ordering::Relaxed);
        let (reads, bad) = self
            .thread
            .take()
            .expect("joined once")
            .join()
            .expect("the watch thread ran");
        assert!(
            bad.is_empty(),
            "the source held {} contents that are not whole JSON, e.g. {:?}",
            bad.len(),
            String::from_utf8_lossy(&bad[0])
        );
        reads
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

#[test]
fn writeback_e2e_a_refresh_reaches_the_bucket_at_stop_and_the_next_run_starts_on_it() {
    let s3 = S3Server::start();
    let original = refreshing(0).to_string().into_bytes();
    s3.put(BUCKET, "active/a.json", &original);
    let dir = TestDir::new("writeback_e2e_stop");
    // No periodic write-back within the test: only the stop writes.
    let builder = s3_coordinator(&s3.endpoint()).env("AUTH_WRITEBACK_INTERVAL_S", 3600);
    let mut c = Coordinator::start(&dir, builder.clone());
    c.wait_all_ready(secs(10.0));
    let api = c.ports.api;
    assert_eq!(child_stats(api)["started_with_refresh"], Value::Null);
    completion(api);
    let copy = working_copy(api);
    wait_until("the child to refresh its copy", secs(5.0), || {
        mark_of(&copy).is_some_and(|m| m.starts_with("a-1-"))
    });
    assert_eq!(
        object(&s3, "a"),
        original,
        "nothing is written before a tick or the stop"
    );

    c.send_signal(libc::SIGTERM);
    assert!(c.wait_exit(secs(15.0)).success(), "{}", c.stderr());
    // The child refreshed once more at SIGTERM; that is what went back.
    let stored: Value = serde_json::from_slice(&object(&s3, "a")).expect("whole JSON");
    let written = refresh_mark(stored.to_string().as_bytes()).expect("the refresh cookie");
    assert!(written.starts_with("a-2-"), "{written}");
    assert_eq!(
        stored["cookies"][0]["value"], "hydrated",
        "the rest is kept"
    );
    assert_eq!(stored["testchild"]["refresh_every"], 1);
    let log = c.stderr();
    assert_eq!(
        count(
            &log,
            "profile a: refreshed auth state written back (child stopped)"
        ),
        1,
        "{log}"
    );
    assert!(!copy.exists(), "the working copy is removed after the stop");
    drop(c);

    // The next run hydrates what was written back and starts the child on it.
    let c = Coordinator::start(&dir, builder);
    c.wait_all_ready(secs(10.0));
    assert_eq!(
        child_stats(c.ports.api)["started_with_refresh"],
        json!(written)
    );
}

#[test]
fn writeback_e2e_the_interval_writes_back_while_the_child_runs() {
    let s3 = S3Server::start();
    s3.put(
        BUCKET,
        "active/a.json",
        refreshing(0).to_string().as_bytes(),
    );
    let dir = TestDir::new("writeback_e2e_interval");
    let c = Coordinator::start(
        &dir,
        s3_coordinator(&s3.endpoint()).env("AUTH_WRITEBACK_INTERVAL_S", 1),
    );
    c.wait_all_ready(secs(10.0));
    let pid = c.slots()[0].pid;
    let api = c.ports.api;
    for n in 1..=2 {
        completion(api);
        // Each refresh goes out at the next tick; the second one only if
        // the first write's new ETag was kept as the If-Match.
        let took = wait_until(&format!("refresh {n} in the bucket"), secs(5.0), || {
            mark_of(&object_path(&s3, "a")).is_some_and(|m| m.starts_with(&format!("a-{n}-")))
        });
        // At the 1 s interval, not at the default 600 s one (or at a stop).
        assert!(took < Duration::from_secs(4), "{took:?}");
    }
    // The log line follows the upload's answer: wait for it.
    wait_until("both write-backs logged", secs(5.0), || {
        count(
            &c.stderr(),
            "profile a: refreshed auth state written back (periodic check)",
        ) == 2
    });
    let log = c.stderr();
    assert!(
        !log.contains("conflict") && !log.contains("replaced since"),
        "{log}"
    );
    let slot = &c.slots()[0];
    assert_eq!(
        (slot.pid, slot.restarts),
        (pid, 0),
        "the child kept running"
    );
}

#[test]
fn writeback_e2e_an_operators_upload_between_hydration_and_writeback_wins() {
    let s3 = S3Server::start();
    let b = bucket(&s3, BUCKET);
    s3.put(
        BUCKET,
        "active/a.json",
        refreshing(0).to_string().as_bytes(),
    );
    let dir = TestDir::new("writeback_e2e_operator");
    let builder = s3_coordinator(&s3.endpoint()).env("AUTH_WRITEBACK_INTERVAL_S", 1);
    let mut c = Coordinator::start(&dir, builder.clone());
    c.wait_all_ready(secs(10.0));
    let api = c.ports.api;

    // The operator uploads a fresh login while the child runs ...
    let theirs = operators("operator-1");
    assert_eq!(status(b.put_object("active/a.json", &theirs)), 200);
    // ... then the child refreshes its copy: the conditional write is refused.
    completion(api);
    let conflict = "profile a: s3://auth/active/a.json was replaced since it was hydrated; keeping that version";
    wait_until("the refused write-back to be logged", secs(5.0), || {
        c.stderr().contains(conflict)
    });
    assert_eq!(object(&s3, "a"), theirs);
    // The child refreshes again and again, and stops: this start writes no
    // more, so the operator's object stays and the warning was said once.
    completion(api);
    wait_until("the second refresh", secs(5.0), || {
        mark_of(&working_copy(api)).is_some_and(|m| m.starts_with("a-2-"))
    });
    c.send_signal(libc::SIGTERM);
    assert!(c.wait_exit(secs(15.0)).success(), "{}", c.stderr());
    assert_eq!(object(&s3, "a"), theirs, "the operator's upload is kept");
    let log = c.stderr();
    assert_eq!(count(&log, conflict), 1, "{log}");
    assert!(!log.contains("refreshed auth state written back"), "{log}");
    drop(c);

    // Nothing lost: the next start runs on the operator's login.
    let c = Coordinator::start(&dir, builder);
    c.wait_all_ready(secs(10.0));
    assert_eq!(
        child_stats(c.ports.api)["started_with_refresh"],
        "operator-1"
    );
}

#[test]
fn writeback_e2e_a_half_written_copy_is_never_uploaded() {
    let s3 = S3Server::start();
    // Each refresh leaves the copy half-written for 2.5 s: two ticks and
    // more see it so; the stop's grace (1 s) ends the shutdown refresh
    // halfway, so the stop's write-back sees it so too.
    s3.put(
        BUCKET,
        "active/a.json",
        refreshing(2500).to_string().as_bytes(),
    );
    let dir = TestDir::new("writeback_e2e_half");
    let mut c = Coordinator::start(
        &dir,
        s3_coordinator(&s3.endpoint())
            .env("AUTH_WRITEBACK_INTERVAL_S", 1)
            .grace_s(1),
    );
    c.wait_all_ready(secs(10.0));
    let api = c.ports.api;
    let watch = Watch::start(object_path(&s3, "a"));
    let copy = working_copy(api);
    // The child refreshes on the completion's thread after answering, and
    // the answer may reach us only once the refresh is done: ask from
    // another thread, to watch the copy meanwhile.
    let asked = std::thread::spawn(move || completion(api));
    wait_until("the child to be mid-write", secs(5.0), || {
        fs::read(&copy).is_ok_and(|b| serde_json::from_slice::<Value>(&b).is_err())
    });
    wait_until("a tick to skip the half-written copy", secs(5.0), || {
        c.stderr()
            .contains("profile a: working copy is not valid JSON (truncated) (periodic check), likely mid-write: not uploaded")
    });
    assert_eq!(
        mark_of(&object_path(&s3, "a")),
        None,
        "nothing uploaded yet"
    );
    // Once whole, it goes out at the next tick.
    wait_until("the finished refresh in the bucket", secs(8.0), || {
        mark_of(&object_path(&s3, "a")).is_some_and(|m| m.starts_with("a-1-"))
    });
    let uploaded = object(&s3, "a");
    asked.join().expect("the completion was answered");

    c.send_signal(libc::SIGTERM);
    assert!(c.wait_exit(secs(15.0)).success(), "{}", c.stderr());
    let log = c.stderr();
    assert!(
        log.contains("ignored SIGTERM") || log.contains("were killed"),
        "the child was to be killed mid-write: {log}"
    );
    assert_eq!(
        object(&s3, "a"),
        uploaded,
        "the half-written last state stays out"
    );
    let reads = watch.finish();
    assert!(reads > 100, "the bucket was read only {reads} times");
}

/// A 127.0.0.1 front for s3s-fs that answers every PUT 403 AccessDenied
/// (as S3 does without `s3:PutObject`) and forwards everything else: s3s-fs
/// itself has one key pair with every permission. attohttpc (under
/// rust-s3) sends one request per connection, so looking at the first
/// request line of each connection is enough.
struct DenyPuts {
    port: u16,
    puts: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
}

impl DenyPuts {
    fn start(upstream: u16) -> DenyPuts {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind the proxy");
        l.set_nonblocking(true).expect("non-blocking listener");
        let port = l.local_addr().expect("bound").port();
        let puts = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (p, s) = (puts.clone(), stop.clone());
        std::thread::Builder::new()
            .name("deny-puts".into())
            .spawn(move || {
                while !s.load(Ordering::Relaxed) {
                    match l.accept() {
                        Ok((conn, _)) => {
                            let p = p.clone();
                            let _ = std::thread::Builder::new()
                                .name("deny-puts-conn".into())
                                .spawn(move || proxy_one(conn, upstream, &p));
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(5)),
                    }
                }
            })
            .expect("start the proxy");
        DenyPuts { port, puts, stop }
    }

    fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

impl Drop for DenyPuts {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn proxy_one(mut client: TcpStream, upstream: u16, puts: &AtomicUsize) {
    let _ = client.set_nonblocking(false);
    let _ = client.set_read_timeout(Some(Duration::from_secs(5)));
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        match client.read(&mut chunk) {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    if head.starts_with("PUT ") {
        puts.fetch_add(1, Ordering::Relaxed);
        // Take the body in, so the client reads our answer, not a reset.
        let len = head
            .lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case("content-length")
                    .then(|| v.trim().parse::<usize>().ok())?
            })
            .unwrap_or(0);
        while buf.len() < head_end + len {
            match client.read(&mut chunk) {
                Ok(0) | Err(_) => break,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        let body = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>AccessDenied</Code><Message>Access Denied</Message></Error>";
        let _ = write!(
            client,
            "HTTP/1.1 403 Forbidden\r\nContent-Type: application/xml\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        return;
    }
    let Ok(mut up) = TcpStream::connect(("127.0.0.1", upstream)) else {
        return;
    };
    if up.write_all(&buf).is_err() {
        return;
    }
    let (Ok(mut from_client), Ok(mut to_up)) = (client.try_clone(), up.try_clone()) else {
        return;
    };
    let _ = std::thread::Builder::new()
        .name("deny-puts-up".into())
        .spawn(move || {
            let _ = std::io::copy(&mut from_client, &mut to_up);
            let _ = to_up.shutdown(std::net::Shutdown::Write);
        });
    let _ = std::io::copy(&mut up, &mut client);
    let _ = client.shutdown(std::net::Shutdown::Both);
}

/// The value of `writebacks_total{profile, outcome}` in `/metrics`.
fn writebacks(c: &Coordinator, profile: &str, outcome: &str) -> u64 {
    let text = c.get("/metrics").expect("/metrics answers").body;
    text.lines()
        .filter(|l| l.contains("writebacks_total{"))
        .filter(|l| {
            l.contains(&format!("profile=\"{profile}\""))
                && l.contains(&format!("outcome=\"{outcome}\""))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .map(|v| v as u64)
        .sum()
}

#[test]
fn writeback_e2e_a_permission_error_warns_once_and_the_fleet_keeps_running() {
    let s3 = S3Server::start();
    let originals: Vec<Vec<u8>> = ["a", "b"]
        .iter()
        .map(|n| {
            let bytes = refreshing(0).to_string().into_bytes();
            s3.put(BUCKET, &format!("active/{n}.json"), &bytes);
            bytes
        })
        .collect();
    let proxy = DenyPuts::start(s3.port);
    let dir = TestDir::new("writeback_e2e_denied");
    let mut c = Coordinator::start(
        &dir,
        s3_coordinator(&proxy.endpoint())
            .pool_size(2)
            .env("AUTH_WRITEBACK_INTERVAL_S", 1),
    );
    c.wait_all_ready(secs(10.0));
    let pids: Vec<_> = c.slots().iter().map(|s| s.pid).collect();
    let apis = [c.ports.api, c.ports.api + 1];
    for api in apis {
        completion(api);
    }
    let denied = "S3 denied s3:PutObject on s3://auth/active/";
    wait_until("the 403 to be reported", secs(5.0), || {
        c.stderr().contains(denied)
    });
    // The other slot's upload of the same tick may still have been under
    // way: once each slot has ticked with write-back off, none is.
    wait_until("a tick of each slot with write-back off", secs(6.0), || {
        ["a", "b"]
            .iter()
            .all(|p| writebacks(&c, p, "disabled") >= 1)
    });
    let puts = proxy.puts.load(Ordering::Relaxed);
    // Write-back is off for the run: more refreshes, more ticks, no PUT.
    for api in apis {
        completion(api);
    }
    wait_until("two more ticks of each slot", secs(6.0), || {
        ["a", "b"]
            .iter()
            .all(|p| writebacks(&c, p, "disabled") >= 3)
    });
    assert_eq!(
        proxy.puts.load(Ordering::Relaxed),
        puts,
        "no PUT after the 403"
    );
    assert!((1..=2).contains(&puts), "{puts} PUTs");
    let log = c.stderr();
    assert_eq!(count(&log, denied), 1, "{log}");
    assert!(
        log.contains("write-back needs s3:PutObject on s3://auth/active/*"),
        "{log}"
    );
    // The fleet is untouched: same children, still serving.
    let now: Vec<_> = c.slots().iter().map(|s| s.pid).collect();
    assert_eq!(now, pids);
    assert!(c
        .slots()
        .iter()
        .all(|s| s.state == "ready" && s.restarts == 0));
    for api in apis {
        completion(api);
    }
    c.send_signal(libc::SIGTERM);
    assert!(c.wait_exit(secs(15.0)).success(), "{}", c.stderr());
    assert_eq!(count(&c.stderr(), denied), 1);
    assert_eq!(proxy.puts.load(Ordering::Relaxed), puts);
    for (n, original) in ["a", "b"].iter().zip(&originals) {
        assert_eq!(&object(&s3, n), original, "{n}");
    }
}

#[test]
fn writeback_e2e_all_replaces_a_local_source_atomically_and_a_changed_source_wins() {
    let dir = TestDir::new("writeback_e2e_local");
    dir.write_profile("a", &refreshing(300));
    let source = dir.profiles_dir().join("a.json");
    fs::set_permissions(&source, fs::Permissions::from_mode(0o644)).expect("chmod");
    let builder = Builder::new()
        .pool_size(1)
        .env("AUTH_WRITEBACK", "all")
        .env("AUTH_WRITEBACK_INTERVAL_S", 1);
    let mut c = Coordinator::start(&dir, builder.clone());
    c.wait_all_ready(secs(10.0));
    let api = c.ports.api;
    let watch = Watch::start(source.clone());
    completion(api);
    let copy = working_copy(api);
    wait_until("the refresh in the source", secs(6.0), || {
        mark_of(&source).is_some_and(|m| m.starts_with("a-1-"))
    });
    assert_eq!(fs::read(&source).unwrap(), fs::read(&copy).unwrap());
    let mode = fs::metadata(&source).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "{mode:o}");
    assert!(
        fs::read_dir(dir.profiles_dir())
            .unwrap()
            .flatten()
            .all(|e| e.file_name() == "a.json"),
        "no temp file is left beside the source"
    );

    // The operator replaces the file (atomically, as an editor or a deploy
    // tool would): the child's next refresh is not written over it.
    let theirs = operators("operator-1");
    let tmp = dir.profiles_dir().join(".a.json.new");
    fs::write(&tmp, &theirs).unwrap();
    fs::rename(&tmp, &source).unwrap();
    completion(api);
    let changed = "changed since it was hydrated; keeping that version";
    wait_until("the refused write-back to be logged", secs(6.0), || {
        c.stderr().contains(changed)
    });
    c.send_signal(libc::SIGTERM);
    assert!(c.wait_exit(secs(15.0)).success(), "{}", c.stderr());
    assert_eq!(
        fs::read(&source).unwrap(),
        theirs,
        "the operator's file is kept"
    );
    assert_eq!(count(&c.stderr(), changed), 1);
    watch.finish();
    drop(c);

    let c = Coordinator::start(&dir, builder);
    c.wait_all_ready(secs(10.0));
    assert_eq!(
        child_stats(c.ports.api)["started_with_refresh"],
        "operator-1"
    );
}

#[test]
fn writeback_e2e_off_writes_nothing() {
    // S3 with AUTH_WRITEBACK=off, then a local source with the default
    // (s3): the child refreshes at every completion and at its stop, and
    // the stop always runs a write-back, so after the run the source would
    // differ if anything were written.
    let s3 = S3Server::start();
    let original = refreshing(0).to_string().into_bytes();
    s3.put(BUCKET, "active/a.json", &original);
    let dir = TestDir::new("writeback_e2e_off");
    dir.write_profile_bytes("a", &original);
    for (builder, says) in [
        (
            s3_coordinator(&s3.endpoint()).env("AUTH_WRITEBACK", "off"),
            "auth write-back is off: AUTH_WRITEBACK=off",
        ),
        (
            Builder::new().pool_size(1),
            "auth write-back is off: local profiles are written back only with AUTH_WRITEBACK=all",
        ),
    ] {
        let mut c = Coordinator::start(&dir, builder.env("AUTH_WRITEBACK_INTERVAL_S", 1));
        c.wait_all_ready(secs(10.0));
        completion(c.ports.api);
        let copy = working_copy(c.ports.api);
        wait_until("the child to refresh its copy", secs(5.0), || {
            mark_of(&copy).is_some_and(|m| m.starts_with("a-1-"))
        });
        c.send_signal(libc::SIGTERM);
        assert!(c.wait_exit(secs(15.0)).success(), "{}", c.stderr());
        let log = c.stderr();
        assert!(log.contains(says), "{log}");
        assert!(!log.contains("written back ("), "{log}");
    }
    assert_eq!(object(&s3, "a"), original);
    assert_eq!(
        fs::read(dir.profiles_dir().join("a.json")).unwrap(),
        original
    );
}

#[test]
fn writeback_e2e_reload_never_touches_a_running_childs_copy() {
    let s3 = S3Server::start();
    let b = bucket(&s3, BUCKET);
    s3.put(
        BUCKET,
        "active/a.json",
        refreshing(0).to_string().as_bytes(),
    );
    let dir = TestDir::new("writeback_e2e_reload");
    let c = Coordinator::start(
        &dir,
        s3_coordinator(&s3.endpoint()).env("AUTH_WRITEBACK_INTERVAL_S", 1),
    );
    c.wait_all_ready(secs(10.0));
    let api = c.ports.api;
    let pid = c.slots()[0].pid;
    completion(api);
    wait_until("refresh 1 in the bucket", secs(5.0), || {
        mark_of(&object_path(&s3, "a")).is_some_and(|m| m.starts_with("a-1-"))
    });
    let copy = working_copy(api);
    let before = (fs::read(&copy).unwrap(), fs::metadata(&copy).unwrap());

    // The source changes: a new profile, and the reload stages it.
    assert_eq!(
        status(b.put_object("active/b.json", b"{\"cookies\": []}")),
        200
    );
    send_signal_to(c.pid(), libc::SIGHUP);
    wait_until("the SIGHUP reload", secs(5.0), || {
        c.stderr().contains("reload (SIGHUP): reloaded 2 profiles")
    });
    // And through the admin socket.
    let ctl = Command::new(COORDINATOR)
        .args(["ctl", "reload"])
        .env_clear()
        .env("AUTH_PROFILE_CACHE_DIR", dir.cache_dir())
        .output()
        .expect("run ctl reload");
    assert!(ctl.status.success(), "{ctl:?}");
    wait_until("the ctl reload", secs(5.0), || {
        count(&c.stderr(), "reloaded 2 profiles") == 2
    });
    assert!(dir.cache_dir().join("active/b.json").is_file());
    let after = (fs::read(&copy).unwrap(), fs::metadata(&copy).unwrap());
    assert_eq!(after.0, before.0, "the copy's content");
    assert_eq!(after.1.ino(), before.1.ino(), "the copy's file");
    assert_eq!(after.1.mtime_nsec(), before.1.mtime_nsec());
    assert_eq!(after.1.mode() & 0o777, 0o600);
    assert_eq!(working_copy(api), copy);
    assert_eq!(c.slots()[0].pid, pid, "the child kept running");

    // Write-back goes on from the same copy, over its own last write.
    completion(api);
    wait_until("refresh 2 in the bucket", secs(5.0), || {
        mark_of(&object_path(&s3, "a")).is_some_and(|m| m.starts_with("a-2-"))
    });
    assert!(!c.stderr().contains("replaced since"), "{}", c.stderr());
}

#[test]
fn writeback_e2e_a_profile_removed_from_the_bucket_is_not_recreated() {
    // s3s-fs answers If-Match on a missing key 412 (AWS: 404 NoSuchKey);
    // either way the profile is gone, and write-back must say so and leave
    // it gone.
    let s3 = S3Server::start();
    let b = bucket(&s3, BUCKET);
    s3.put(
        BUCKET,
        "active/a.json",
        refreshing(0).to_string().as_bytes(),
    );
    let dir = TestDir::new("writeback_e2e_removed");
    let mut c = Coordinator::start(
        &dir,
        s3_coordinator(&s3.endpoint()).env("AUTH_WRITEBACK_INTERVAL_S", 1),
    );
    c.wait_all_ready(secs(10.0));
    assert_eq!(status(b.delete_object("active/a.json")), 204);
    completion(c.ports.api);
    let removed =
        "profile a: s3://auth/active/a.json was removed since it was hydrated; not recreating it";
    wait_until("the removal to be noticed", secs(5.0), || {
        c.stderr().contains(removed)
    });
    c.send_signal(libc::SIGTERM);
    assert!(c.wait_exit(secs(15.0)).success(), "{}", c.stderr());
    let log = c.stderr();
    assert_eq!(count(&log, removed), 1, "{log}");
    assert!(!log.contains("replaced since"), "{log}");
    assert!(!object_path(&s3, "a").exists(), "recreated");
}

// ---------------------------------------------------------------------------
// The production container: the coordinator hydrates itself, as PID 1

#[test]
fn writeback_container_a_sigterm_during_hydration_ends_the_run_at_once() {
    // The image's entrypoint now execs the coordinator, which hydrates from
    // its own source (so write-back and reloads reach it). As PID 1 a
    // signal without a handler is ignored, so the coordinator handles
    // SIGTERM from its first line: proven here by the exit code (143 from
    // the handler; the default action would report a signal, not a code)
    // against an endpoint that accepts connections and never answers.
    let hole = TcpListener::bind("127.0.0.1:0").expect("bind");
    let endpoint = format!("http://127.0.0.1:{}", hole.local_addr().unwrap().port());
    let dir = TestDir::new("writeback_container_sigterm");
    let mut c = Coordinator::spawn(&dir, s3_coordinator(&endpoint));
    wait_until("hydration to be under way", secs(10.0), || {
        c.stderr().contains("S3: using AWS credentials")
    });
    let sent = std::time::Instant::now();
    c.send_signal(libc::SIGTERM);
    let status = c.wait_exit(secs(5.0));
    assert_eq!(status.code(), Some(143), "{status:?}\n{}", c.stderr());
    assert!(
        sent.elapsed() < Duration::from_secs(1),
        "{:?}",
        sent.elapsed()
    );
    drop(hole);
}
