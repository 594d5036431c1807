//! Write-back through the real hydration code: local directories, and a
//! real S3 server (`s3s-fs`, started per test on a port from the OS) for
//! the S3 paths; tiny fake endpoints on 127.0.0.1 for what s3s-fs cannot
//! express (a 403 on writes only, an endpoint that never answers).
//!
//! These are unit tests of the binary crate (there is no library target for
//! integration tests to call); s3s-fs comes from `S3S_FS_BIN`, `PATH` or
//! `~/.cargo/bin`, installed by scripts/test.sh.

use std::collections::HashMap;
use std::ffi::OsString;
use std::io::BufRead;
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::MetadataExt;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use super::*;
use crate::config::{Config, Invocation, S3Settings};

const ACCESS_KEY: &str = "AKIATESTAISTUDIO";
const SECRET_KEY: &str = "test-secret-key-for-s3s-fs-0123456789";
const BUCKET: &str = "profiles";

/// A temp directory, removed on drop.
struct Tmp(PathBuf);

impl Tmp {
    fn new(tag: &str) -> Tmp {
        static SEQ: AtomicUsize = AtomicUsize::new(0);
        let d = std::env::temp_dir().join(format!(
            "aisp-wb-{tag}-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(&d).expect("create temp dir");
        Tmp(d)
    }
}

impl Drop for Tmp {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn profile_json(value: &str) -> String {
    format!(r#"{{"cookies":[{{"name":"SID","value":"{value}"}}],"origins":[]}}"#)
}

fn config(env: &[(&str, &str)]) -> Config {
    let env: HashMap<String, String> = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    match Config::parse(Vec::<OsString>::new(), &env, Path::new("/")) {
        Ok(Invocation::Run(c)) => *c,
        other => panic!("not a run configuration: {other:?}"),
    }
}

/// A local profile directory with `a.json`, and a config over it.
struct LocalSetup {
    dir: Tmp,
    cfg: Config,
}

impl LocalSetup {
    fn new(tag: &str, writeback: &str) -> LocalSetup {
        let dir = Tmp::new(tag);
        let profiles = dir.0.join("profiles/active");
        fs::create_dir_all(&profiles).unwrap();
        fs::write(profiles.join("a.json"), profile_json("hydrated")).unwrap();
        let cfg = config(&[
            ("PROFILE_BACKEND", "local"),
            ("LOCAL_PROFILE_DIR", &profiles.display().to_string()),
            (
                "AUTH_PROFILE_CACHE_DIR",
                &dir.0.join("cache").display().to_string(),
            ),
            ("AUTH_WRITEBACK", writeback),
        ]);
        LocalSetup { dir, cfg }
    }

    fn source(&self) -> PathBuf {
        self.dir.0.join("profiles/active/a.json")
    }

    fn hydrate(&self) -> Hydrated {
        crate::hydrate::hydrate(&self.cfg).unwrap_or_else(|e| panic!("{e}"))
    }
}

fn profile_a(h: &Hydrated) -> Profile {
    h.profiles
        .iter()
        .find(|p| p.name == "a")
        .cloned()
        .expect("profile a hydrated")
}

fn mode(p: &Path) -> u32 {
    fs::metadata(p).unwrap().mode() & 0o777
}

// ---------------------------------------------------------------------------
// Working copies

#[test]
fn a_working_copy_is_private_to_one_start_and_hydration_never_touches_it() {
    let s = LocalSetup::new("copy", "off");
    let h = s.hydrate();
    let a = profile_a(&h);
    let wb = WriteBack::new(&s.cfg, &h);
    let one = wb.start(&a, 1).unwrap();
    let two = wb.start(&a, 2).unwrap();
    let running = s.cfg.cache_dir.join("running");
    assert_eq!(one.path(), running.join("a.1/a.json"));
    assert_eq!(two.path(), running.join("a.2/a.json"));
    assert_eq!(mode(&running), 0o700);
    assert_eq!(mode(one.path()), 0o600);
    assert_eq!(fs::read(one.path()).unwrap(), fs::read(&a.path).unwrap());

    // A child's half-written rewrite stays in its own copy.
    fs::write(one.path(), b"{\"cookies\": [").unwrap();
    assert_eq!(
        fs::read_to_string(&a.path).unwrap(),
        profile_json("hydrated")
    );
    // Hydrating again (RENAME_EXCHANGE of active/, removal of the old set)
    // leaves running/ and every copy in it alone.
    fs::write(s.source(), profile_json("operator")).unwrap();
    let again = s.hydrate();
    assert_eq!(
        fs::read_to_string(&profile_a(&again).path).unwrap(),
        profile_json("operator")
    );
    assert_eq!(fs::read(one.path()).unwrap(), b"{\"cookies\": [");
    assert_eq!(
        fs::read_to_string(two.path()).unwrap(),
        profile_json("hydrated")
    );

    // Off: nothing is ever written.
    assert_eq!(one.tick(), Outcome::Disabled);
    assert_eq!(two.on_stop(), Outcome::Disabled);
    assert_eq!(
        fs::read_to_string(s.source()).unwrap(),
        profile_json("operator")
    );
    let p1 = one.path().to_path_buf();
    drop(one);
    assert!(!p1.exists());
    let p2 = two.path().to_path_buf();
    two.finish().unwrap();
    assert!(!p2.exists());
}

#[test]
fn copies_an_earlier_run_left_are_removed_at_start() {
    let s = LocalSetup::new("sweep", "off");
    let running = s.cfg.cache_dir.join("running");
    fs::create_dir_all(&running).unwrap();
    fs::write(running.join("a.7.json"), profile_json("left")).unwrap();
    let h = s.hydrate();
    let _wb = WriteBack::new(&s.cfg, &h);
    assert_eq!(fs::read_dir(&running).unwrap().count(), 0);
}

#[test]
fn local_profiles_are_left_alone_unless_all() {
    let s = LocalSetup::new("local-s3", "s3");
    let h = s.hydrate();
    let wb = WriteBack::new(&s.cfg, &h);
    assert!(!wb.enabled());
    let copy = wb.start(&profile_a(&h), 1).unwrap();
    fs::write(copy.path(), profile_json("refreshed")).unwrap();
    assert_eq!(copy.on_stop(), Outcome::Disabled);
    assert_eq!(
        fs::read_to_string(s.source()).unwrap(),
        profile_json("hydrated")
    );
}

#[test]
fn each_skip_reason_is_said_once_per_profile_until_a_write() {
    let s = LocalSetup::new("said", "all");
    let h = s.hydrate();
    let wb = WriteBack::new(&s.cfg, &h);
    let inner = &wb.inner;
    let truncated = Outcome::Invalid(Invalid::NotJson("truncated"));
    let failed = Outcome::Failed("x".into());
    for (outcome, said) in [
        (&Outcome::Unchanged, true),
        (&Outcome::Unchanged, false),
        (&truncated, true),
        (&Outcome::Invalid(Invalid::NotJson("syntax error")), false),
        (&Outcome::Unchanged, false),
        (&Outcome::Invalid(Invalid::NotProfile), true),
        (&failed, true),
        (&failed, false),
        (&Outcome::Written, true),
        (&Outcome::Written, true),
        (&Outcome::Unchanged, true),
        (&failed, true),
    ] {
        assert_eq!(inner.record("a", outcome, "test"), said, "{outcome:?}");
    }
    assert_eq!(wb.stats()["a"].failed, 3);
}

// ---------------------------------------------------------------------------
// Local write-back

#[test]
fn local_write_back_replaces_the_source_atomically_and_moves_the_base() {
    let s = LocalSetup::new("local-write", "all");
    let h = s.hydrate();
    let wb = WriteBack::new(&s.cfg, &h);
    let a = profile_a(&h);
    let copy = wb.start(&a, 1).unwrap();
    assert_eq!(copy.tick(), Outcome::Unchanged);

    fs::write(copy.path(), profile_json("refreshed-1")).unwrap();
    assert_eq!(copy.tick(), Outcome::Written);
    assert_eq!(
        fs::read_to_string(s.source()).unwrap(),
        profile_json("refreshed-1")
    );
    assert_eq!(mode(&s.source()), 0o600);
    // The written content is the new base: no second write of the same.
    assert_eq!(copy.tick(), Outcome::Unchanged);
    fs::write(copy.path(), profile_json("refreshed-2")).unwrap();
    assert_eq!(copy.on_stop(), Outcome::Written);
    assert_eq!(
        fs::read_to_string(s.source()).unwrap(),
        profile_json("refreshed-2")
    );
    // The staged set is not touched; the next start gets the refresh.
    assert_eq!(
        fs::read_to_string(&a.path).unwrap(),
        profile_json("hydrated")
    );
    drop(copy);
    let next = wb.start(&a, 2).unwrap();
    assert_eq!(
        fs::read_to_string(next.path()).unwrap(),
        profile_json("refreshed-2")
    );
    let stats = &wb.stats()["a"];
    assert_eq!(stats.written, 2);
    assert_eq!(stats.last_outcome.as_deref(), Some("written"));
    assert!(stats.last_written_unix_ms.is_some());
    // Nothing but the profile is left in the source directory.
    let names: Vec<_> = fs::read_dir(s.dir.0.join("profiles/active"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, vec![OsString::from("a.json")]);
}

#[test]
fn local_source_changed_since_hydration_wins() {
    let s = LocalSetup::new("local-conflict", "all");
    let h = s.hydrate();
    let wb = WriteBack::new(&s.cfg, &h);
    let a = profile_a(&h);
    let copy = wb.start(&a, 1).unwrap();
    fs::write(s.source(), profile_json("operator")).unwrap();
    fs::write(copy.path(), profile_json("refreshed")).unwrap();
    assert_eq!(copy.tick(), Outcome::Conflict);
    assert_eq!(
        fs::read_to_string(s.source()).unwrap(),
        profile_json("operator")
    );
    // This start writes no more, even with new content.
    fs::write(copy.path(), profile_json("refreshed-again")).unwrap();
    assert_eq!(copy.on_stop(), Outcome::Conflict);
    assert_eq!(
        fs::read_to_string(s.source()).unwrap(),
        profile_json("operator")
    );
    // The operator's version is what the next start gets.
    let next = wb.start(&a, 2).unwrap();
    assert_eq!(
        fs::read_to_string(next.path()).unwrap(),
        profile_json("operator")
    );
    assert_eq!(wb.stats()["a"].conflicts, 1);
}

#[test]
fn a_half_written_copy_is_never_written_back() {
    let s = LocalSetup::new("local-half", "all");
    let h = s.hydrate();
    let wb = WriteBack::new(&s.cfg, &h);
    let copy = wb.start(&profile_a(&h), 1).unwrap();
    let full = profile_json("refreshed");
    fs::write(copy.path(), &full[..full.len() - 7]).unwrap();
    assert_eq!(copy.tick(), Outcome::Invalid(Invalid::NotJson("truncated")));
    fs::write(copy.path(), b"").unwrap();
    assert_eq!(copy.tick(), Outcome::Invalid(Invalid::NotJson("truncated")));
    fs::write(copy.path(), b"{\"not\": \"a profile\"}").unwrap();
    assert_eq!(copy.tick(), Outcome::Invalid(Invalid::NotProfile));
    assert_eq!(
        fs::read_to_string(s.source()).unwrap(),
        profile_json("hydrated")
    );
    // The child finished its write: the next chance takes it.
    fs::write(copy.path(), &full).unwrap();
    assert_eq!(copy.tick(), Outcome::Written);
    assert_eq!(fs::read_to_string(s.source()).unwrap(), full);
}

// ---------------------------------------------------------------------------
// A real S3 server

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
                 `cargo install --locked s3s-fs@0.14.1 --features binary` (scripts/test.sh does)"
            )
        })
}

/// s3s-fs on a port from the OS, with its data dir; killed on drop.
struct S3Server {
    child: Child,
    port: u16,
    dir: Tmp,
}

impl S3Server {
    fn start() -> S3Server {
        let dir = Tmp::new("s3s");
        let data = dir.0.join("data");
        fs::create_dir_all(data.join(BUCKET)).unwrap();
        for _ in 0..5 {
            let port = TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .map(|a| a.port())
                .expect("a free port");
            let log = fs::File::create(dir.0.join("s3s-fs.log")).unwrap();
            let mut child = Command::new(s3s_fs_bin())
                .args(["--host", "127.0.0.1", "--port", &port.to_string()])
                .args(["--access-key", ACCESS_KEY, "--secret-key", SECRET_KEY])
                .arg(&data)
                .stdin(Stdio::null())
                .stdout(log.try_clone().unwrap())
                .stderr(log)
                .spawn()
                .expect("start s3s-fs");
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                    return S3Server { child, port, dir };
                }
                if let Ok(Some(_)) = child.try_wait() {
                    break; // lost the port: another one
                }
                assert!(
                    Instant::now() < deadline,
                    "s3s-fs did not listen within 30 s"
                );
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        panic!(
            "s3s-fs exited at start five times: {}",
            fs::read_to_string(dir.0.join("s3s-fs.log")).unwrap_or_default()
        );
    }

    fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Where s3s-fs keeps object `active/<name>`.
    fn object(&self, name: &str) -> PathBuf {
        self.dir
            .0
            .join("data")
            .join(BUCKET)
            .join("active")
            .join(name)
    }

    fn put_file(&self, name: &str, bytes: &[u8]) {
        let p = self.object(name);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, bytes).unwrap();
    }

    fn read(&self, name: &str) -> String {
        fs::read_to_string(self.object(name)).unwrap()
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn settings(endpoint: &str) -> S3Settings {
    S3Settings {
        bucket: Some(BUCKET.into()),
        prefix: String::new(),
        region: "us-east-1".into(),
        endpoint: Some(endpoint.into()),
        download_threads: 2,
    }
}

fn creds() -> s3::creds::Credentials {
    s3::creds::Credentials::new(Some(ACCESS_KEY), Some(SECRET_KEY), None, None, None)
        .expect("static credentials")
}

fn store(endpoint: &str) -> Store {
    crate::hydrate::s3_store_with(&settings(endpoint), creds(), REQUEST_TIMEOUT)
        .unwrap_or_else(|e| panic!("{e}"))
}

/// `a.json` in the bucket, hydrated through the real code into `cache`.
struct S3Setup {
    server: S3Server,
    cache: Tmp,
    hydrated: Hydrated,
}

impl S3Setup {
    fn new() -> S3Setup {
        let server = S3Server::start();
        server.put_file("a.json", profile_json("hydrated").as_bytes());
        let cache = Tmp::new("s3-cache");
        let (hydrated, _) = crate::hydrate::hydrate_s3_with(
            &settings(&server.endpoint()),
            creds(),
            &cache.0,
            REQUEST_TIMEOUT,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        S3Setup {
            server,
            cache,
            hydrated,
        }
    }

    /// Write-back to `endpoint` (the real server, or a fake one).
    fn writeback_to(&self, endpoint: &str) -> WriteBack {
        WriteBack::with_target(
            Target::S3(store(endpoint)),
            &self.cache.0,
            &self.hydrated,
            Duration::from_secs(600),
        )
    }

    fn writeback(&self) -> WriteBack {
        self.writeback_to(&self.server.endpoint())
    }
}

#[test]
fn s3_hydration_records_each_profiles_content_and_etag() {
    let s = S3Setup::new();
    let base = &s.hydrated.bases["a"];
    assert_eq!(&*base.content, profile_json("hydrated").as_bytes());
    let (_, etag) = store(&s.server.endpoint()).get_with_etag("a.json").unwrap();
    assert!(etag.is_some());
    assert_eq!(base.etag, etag);
    // Debug output never shows the content.
    assert!(!format!("{base:?}").contains("hydrated"));
}

#[test]
fn s3_write_back_stores_the_refresh_and_the_new_etag_is_the_next_base() {
    let s = S3Setup::new();
    let wb = s.writeback();
    let a = profile_a(&s.hydrated);
    let copy = wb.start(&a, 1).unwrap();
    assert_eq!(copy.tick(), Outcome::Unchanged);
    fs::write(copy.path(), profile_json("refreshed-1")).unwrap();
    assert_eq!(copy.tick(), Outcome::Written);
    assert_eq!(s.server.read("a.json"), profile_json("refreshed-1"));
    let (_, now) = store(&s.server.endpoint()).get_with_etag("a.json").unwrap();
    let base = wb.base_of("a").unwrap();
    assert_eq!(base.etag, now);
    assert_ne!(base.etag, s.hydrated.bases["a"].etag);
    // The second write conditions on the new ETag, so it goes through.
    fs::write(copy.path(), profile_json("refreshed-2")).unwrap();
    assert_eq!(copy.on_stop(), Outcome::Written);
    assert_eq!(s.server.read("a.json"), profile_json("refreshed-2"));
    // The staged set keeps what was hydrated; the next start gets the refresh.
    assert_eq!(
        fs::read_to_string(&a.path).unwrap(),
        profile_json("hydrated")
    );
    drop(copy);
    let next = wb.start(&a, 2).unwrap();
    assert_eq!(
        fs::read_to_string(next.path()).unwrap(),
        profile_json("refreshed-2")
    );
    assert_eq!(wb.stats()["a"].written, 2);
}

#[test]
fn s3_operator_upload_after_hydration_wins_over_the_refresh() {
    let s = S3Setup::new();
    let wb = s.writeback();
    let a = profile_a(&s.hydrated);
    let copy = wb.start(&a, 1).unwrap();
    // The operator uploads a new login through the S3 API.
    let operator = store(&s.server.endpoint());
    let etag = s.hydrated.bases["a"].etag.clone().unwrap();
    operator
        .put_if_match("a.json", profile_json("operator").as_bytes(), &etag)
        .unwrap();
    fs::write(copy.path(), profile_json("refreshed")).unwrap();
    assert_eq!(copy.tick(), Outcome::Conflict);
    assert_eq!(s.server.read("a.json"), profile_json("operator"));
    // No second try from this start, whatever the child writes.
    fs::write(copy.path(), profile_json("refreshed-again")).unwrap();
    assert_eq!(copy.on_stop(), Outcome::Conflict);
    assert_eq!(s.server.read("a.json"), profile_json("operator"));
    // The operator's version is used at the next start, and its ETag is the
    // base that start writes back over.
    drop(copy);
    let next = wb.start(&a, 2).unwrap();
    assert_eq!(
        fs::read_to_string(next.path()).unwrap(),
        profile_json("operator")
    );
    fs::write(next.path(), profile_json("refreshed-operator")).unwrap();
    assert_eq!(next.on_stop(), Outcome::Written);
    assert_eq!(s.server.read("a.json"), profile_json("refreshed-operator"));
    let stats = &wb.stats()["a"];
    assert_eq!((stats.conflicts, stats.written), (1, 1));
}

#[test]
fn s3_a_half_written_copy_is_never_uploaded() {
    let s = S3Setup::new();
    let wb = s.writeback();
    let copy = wb.start(&profile_a(&s.hydrated), 1).unwrap();
    let full = profile_json("refreshed");
    fs::write(copy.path(), &full[..20]).unwrap();
    assert_eq!(copy.tick(), Outcome::Invalid(Invalid::NotJson("truncated")));
    assert_eq!(
        copy.on_stop(),
        Outcome::Invalid(Invalid::NotJson("truncated"))
    );
    assert_eq!(s.server.read("a.json"), profile_json("hydrated"));
    let stats = &wb.stats()["a"];
    assert_eq!(stats.written, 0);
    assert_eq!(
        stats.last_outcome.as_deref(),
        Some("invalid: not valid JSON (truncated)")
    );
}

#[test]
fn s3_off_writes_nothing() {
    let s = S3Setup::new();
    let cfg = config(&[
        ("PROFILE_BACKEND", "s3"),
        ("AUTH_PROFILE_S3_BUCKET", BUCKET),
        ("AUTH_PROFILE_S3_ENDPOINT", &s.server.endpoint()),
        ("AUTH_PROFILE_CACHE_DIR", &s.cache.0.display().to_string()),
        ("AUTH_WRITEBACK", "off"),
    ]);
    let wb = WriteBack::new(&cfg, &s.hydrated);
    assert!(!wb.enabled());
    let copy = wb.start(&profile_a(&s.hydrated), 1).unwrap();
    fs::write(copy.path(), profile_json("refreshed")).unwrap();
    assert_eq!(copy.tick(), Outcome::Disabled);
    assert_eq!(copy.on_stop(), Outcome::Disabled);
    assert_eq!(s.server.read("a.json"), profile_json("hydrated"));
}

#[test]
fn s3_an_adopted_cache_without_etag_learns_it_only_when_the_bucket_matches() {
    let s = S3Setup::new();
    let mut offline = s.hydrated.clone();
    for b in offline.bases.values_mut() {
        b.etag = None; // as `stage::adopt` records a cached set
    }
    let wb = WriteBack::with_target(
        Target::S3(store(&s.server.endpoint())),
        &s.cache.0,
        &offline,
        Duration::from_secs(600),
    );
    let a = profile_a(&offline);
    let copy = wb.start(&a, 1).unwrap();
    fs::write(copy.path(), profile_json("refreshed")).unwrap();
    assert_eq!(copy.tick(), Outcome::Written);
    assert_eq!(s.server.read("a.json"), profile_json("refreshed"));
    drop(copy);

    // The bucket moved on while we ran from the cache: the bucket wins.
    let mut offline = s.hydrated.clone();
    for b in offline.bases.values_mut() {
        b.etag = None;
    }
    let wb = WriteBack::with_target(
        Target::S3(store(&s.server.endpoint())),
        &s.cache.0,
        &offline,
        Duration::from_secs(600),
    );
    let copy = wb.start(&a, 1).unwrap();
    fs::write(copy.path(), profile_json("stale-refresh")).unwrap();
    assert_eq!(copy.tick(), Outcome::Conflict);
    assert_eq!(s.server.read("a.json"), profile_json("refreshed"));
    assert_eq!(
        &*wb.base_of("a").unwrap().content,
        profile_json("refreshed").as_bytes()
    );
}

#[test]
fn s3_a_removed_profile_is_not_recreated() {
    let s = S3Setup::new();
    let wb = s.writeback();
    let copy = wb.start(&profile_a(&s.hydrated), 1).unwrap();
    fs::remove_file(s.server.object("a.json")).unwrap();
    fs::write(copy.path(), profile_json("refreshed")).unwrap();
    assert_eq!(copy.tick(), Outcome::Conflict);
    assert!(!s.server.object("a.json").exists());
}

#[test]
fn s3_conditional_operations_against_the_real_server() {
    let server = S3Server::start();
    let st = store(&server.endpoint());
    assert_eq!(st.get_with_etag("x.json").unwrap_err(), CondError::NotFound);
    let first = st.put_if_absent("x.json", b"{\"cookies\":[]}").unwrap();
    assert!(first.is_some());
    assert_eq!(
        st.put_if_absent("x.json", b"{}").unwrap_err(),
        CondError::PreconditionFailed
    );
    assert_eq!(
        st.put_if_match("x.json", b"{}", "\"0000\"").unwrap_err(),
        CondError::PreconditionFailed
    );
    let (bytes, etag) = st.get_with_etag("x.json").unwrap();
    assert_eq!(
        (bytes.as_slice(), &etag),
        (&b"{\"cookies\":[]}"[..], &first)
    );
    let second = st
        .put_if_match("x.json", b"{\"cookies\":[1]}", first.as_deref().unwrap())
        .unwrap();
    assert_ne!(second, first);
    st.delete_if_match("x.json", second.as_deref().unwrap())
        .unwrap();
    assert_eq!(st.get_with_etag("x.json").unwrap_err(), CondError::NotFound);
}

// ---------------------------------------------------------------------------
// What s3s-fs cannot express: fake endpoints

/// Answers every request on 127.0.0.1 with `reply` (None: reads the
/// request and never answers); counts requests.
struct Fake {
    port: u16,
    requests: Arc<AtomicUsize>,
}

impl Fake {
    fn start(reply: Option<&'static str>) -> Fake {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let requests = Arc::new(AtomicUsize::new(0));
        let count = requests.clone();
        std::thread::Builder::new()
            .name("fake-s3".into())
            .spawn(move || {
                let mut held = Vec::new();
                for conn in l.incoming().flatten() {
                    let mut r = std::io::BufReader::new(conn);
                    let mut len = 0usize;
                    loop {
                        let mut line = String::new();
                        if r.read_line(&mut line).unwrap_or(0) == 0 {
                            break;
                        }
                        let lower = line.to_ascii_lowercase();
                        if let Some(v) = lower.strip_prefix("content-length:") {
                            len = v.trim().parse().unwrap_or(0);
                        }
                        if line == "\r\n" {
                            break;
                        }
                    }
                    let mut body = vec![0; len];
                    let _ = r.read_exact(&mut body);
                    count.fetch_add(1, Ordering::SeqCst);
                    let mut conn = r.into_inner();
                    match reply {
                        Some(text) => {
                            let _ = write!(
                                conn,
                                "HTTP/1.1 403 Forbidden\r\nContent-Type: application/xml\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{text}",
                                text.len()
                            );
                        }
                        None => held.push(conn), // silence, until the test ends
                    }
                }
            })
            .unwrap();
        Fake { port, requests }
    }

    fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

#[test]
fn a_child_rewriting_its_copy_in_place_never_gets_a_torn_file_uploaded() {
    // The real child's write: truncate, first half, pause, rest. Ticks race
    // it; the source must only ever hold whole profiles.
    let s = LocalSetup::new("torn", "all");
    let h = s.hydrate();
    let wb = WriteBack::new(&s.cfg, &h);
    let copy = wb.start(&profile_a(&h), 1).unwrap();
    let path = copy.path().to_path_buf();
    let writer = std::thread::spawn(move || {
        for i in 0..20 {
            let text = profile_json(&format!("refresh-{i}"));
            let mut f = OpenOptions::new()
                .write(true)
                .truncate(true)
                .open(&path)
                .unwrap();
            f.write_all(&text.as_bytes()[..text.len() / 2]).unwrap();
            std::thread::sleep(Duration::from_millis(5));
            f.write_all(&text.as_bytes()[text.len() / 2..]).unwrap();
            std::thread::sleep(Duration::from_millis(2));
        }
    });
    let (mut written, mut torn) = (0, 0);
    while !writer.is_finished() {
        match copy.tick() {
            Outcome::Written => written += 1,
            Outcome::Invalid(Invalid::NotJson(_)) => torn += 1,
            Outcome::Unchanged => {}
            other => panic!("{other:?}"),
        }
        let source = fs::read(s.source()).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&source).expect("whole JSON");
        assert!(decide::looks_like_profile(&v));
    }
    writer.join().unwrap();
    // The last tick may have caught the last write already.
    let last = copy.on_stop();
    assert!(
        matches!(last, Outcome::Written | Outcome::Unchanged),
        "{last:?}"
    );
    assert_eq!(
        fs::read_to_string(s.source()).unwrap(),
        profile_json("refresh-19")
    );
    assert!(written >= 1, "written {written}, torn {torn}");
}

#[test]
fn on_stop_waits_for_a_running_write_back_then_sends_the_last_state() {
    let s = LocalSetup::new("stop-waits", "all");
    let h = s.hydrate();
    let wb = WriteBack::new(&s.cfg, &h);
    let copy = wb.start(&profile_a(&h), 1).unwrap();
    // A worker that is still busy (as after a timed-out tick) ...
    let guard = copy.shared.claim(Instant::now()).unwrap();
    let release = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(300));
        drop(guard);
    });
    fs::write(copy.path(), profile_json("last")).unwrap();
    // ... is waited for within the deadline, and the last state goes out.
    assert_eq!(copy.on_stop(), Outcome::Written);
    assert_eq!(
        fs::read_to_string(s.source()).unwrap(),
        profile_json("last")
    );
    release.join().unwrap();
}

#[test]
fn s3_a_denied_write_warns_once_and_turns_write_back_off() {
    // s3s-fs has one key pair with every permission, so the 403 a role
    // without s3:PutObject gets comes from a fake endpoint.
    let s = S3Setup::new();
    let fake = Fake::start(Some(
        "<?xml version=\"1.0\"?><Error><Code>AccessDenied</Code><Message>no</Message></Error>",
    ));
    let wb = s.writeback_to(&fake.endpoint());
    let copy = wb.start(&profile_a(&s.hydrated), 1).unwrap();
    fs::write(copy.path(), profile_json("refreshed")).unwrap();
    assert_eq!(copy.tick(), Outcome::Disabled);
    assert_eq!(fake.requests.load(Ordering::SeqCst), 1);
    assert!(!wb.enabled());
    // No more requests for the rest of the run, from any copy.
    fs::write(copy.path(), profile_json("refreshed-2")).unwrap();
    assert_eq!(copy.tick(), Outcome::Disabled);
    let other = wb.start(&profile_a(&s.hydrated), 2).unwrap();
    fs::write(other.path(), profile_json("refreshed-3")).unwrap();
    assert_eq!(other.on_stop(), Outcome::Disabled);
    assert_eq!(fake.requests.load(Ordering::SeqCst), 1);
    assert_eq!(s.server.read("a.json"), profile_json("hydrated"));
}

#[test]
fn s3_a_store_that_never_answers_keeps_the_caller_only_until_the_deadline() {
    let s = S3Setup::new();
    let fake = Fake::start(None);
    let wb = s.writeback_to(&fake.endpoint());
    let copy = wb.start(&profile_a(&s.hydrated), 1).unwrap();
    fs::write(copy.path(), profile_json("refreshed")).unwrap();
    let t = Instant::now();
    let o = copy.write_back("test", Duration::from_millis(300));
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    assert!(
        matches!(&o, Outcome::Failed(why) if why.contains("no answer within")),
        "{o:?}"
    );
    // The worker is still waiting on the request: a call with a short
    // deadline waits that long for it, then says so.
    let t = Instant::now();
    let o = copy.write_back("test", Duration::from_millis(200));
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    assert!(
        matches!(&o, Outcome::Failed(why) if why.contains("has not finished")),
        "{o:?}"
    );
    // The request timeout ends the worker, which records its failure.
    let idle = copy
        .shared
        .claim(Instant::now() + REQUEST_TIMEOUT + Duration::from_secs(5));
    assert!(idle.is_some(), "the worker did not end");
    drop(idle);
    let stats = &wb.stats()["a"];
    assert_eq!(stats.failed, 2, "{stats:?}");
    assert!(
        stats
            .last_outcome
            .as_deref()
            .is_some_and(|o| o.starts_with("failed: cannot write s3://profiles/active/a.json")),
        "{stats:?}"
    );
}

#[test]
fn a_reload_that_read_the_source_before_a_write_back_keeps_the_written_base() {
    let s = LocalSetup::new("rebase-race", "all");
    let h = s.hydrate();
    let wb = WriteBack::new(&s.cfg, &h);
    let a = profile_a(&h);
    let copy = wb.start(&a, 1).unwrap();
    // A reload starts and reads the source ...
    let since = wb.mark();
    let stale = s.hydrate();
    // ... while the child's refresh is written back; then it applies.
    fs::write(copy.path(), profile_json("refreshed-1")).unwrap();
    assert_eq!(copy.tick(), Outcome::Written);
    wb.rebase(&stale, since);
    let base = |wb: &WriteBack| String::from_utf8(wb.base_of("a").unwrap().content.to_vec());
    assert_eq!(base(&wb).unwrap(), profile_json("refreshed-1"));
    // A reload that starts after the write adopts what it read (an
    // operator's edit here).
    let since = wb.mark();
    fs::write(s.source(), profile_json("operator")).unwrap();
    wb.rebase(&s.hydrate(), since);
    assert_eq!(base(&wb).unwrap(), profile_json("operator"));
    // And so does every later one, until the next write.
    fs::write(s.source(), profile_json("operator-2")).unwrap();
    wb.rebase(&s.hydrate(), wb.mark());
    assert_eq!(base(&wb).unwrap(), profile_json("operator-2"));
}
