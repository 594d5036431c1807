//! The coordinator against a test child that behaves like the real one
//! (`real_child`: a "browser" in its own session holding the camoufox port,
//! a stream helper that ignores SIGTERM and keeps the launcher alive, the
//! API port bound only after a delay). Every way a child ends must leave
//! none of its processes behind, checked by `/proc` (the child tag and this
//! test's pid directory), and a slot must start only on free ports.

use std::net::TcpListener;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::common::*;

/// The stop grace these tests run with.
const GRACE_S: u64 = 1;
/// What `wait_no_survivors` allows: the grace plus 2 s.
fn within() -> Duration {
    Duration::from_secs(GRACE_S + 2)
}

fn real(extra: Value) -> Value {
    let mut knobs = json!({ "real_child": true });
    if let (Some(k), Some(e)) = (knobs.as_object_mut(), extra.as_object()) {
        k.extend(e.clone());
    }
    json!({ "cookies": [], "testchild": knobs })
}

fn real_builder() -> Builder {
    Builder::new().grace_s(GRACE_S)
}

/// The browser pid of `profile`, once its child wrote it.
fn browser_of(dir: &TestDir, profile: &str, deadline: Instant) -> i32 {
    let mut pid = None;
    wait_until(&format!("{profile}'s browser pid file"), deadline, || {
        pid = pid_file(dir, &format!("{profile}.browser.pid"));
        pid.is_some_and(|p| !process_gone(p))
    });
    pid.expect("set above")
}

fn session_of(pid: i32) -> i32 {
    let stat = read_to_string(std::path::Path::new(&format!("/proc/{pid}/stat")));
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r.to_string())
        .unwrap_or_default();
    rest.split_whitespace()
        .nth(3)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn slot_of(c: &Coordinator, i: usize) -> Slot {
    c.slots().remove(i)
}

#[test]
fn the_real_child_mode_detaches_its_browser() {
    let dir = TestDir::new("the_real_child_mode_detaches_its_browser");
    dir.write_profile("a", &real(json!({})));
    let c = Coordinator::start(&dir, real_builder().pool_size(1));
    c.wait_all_ready(secs(15.0));
    let launcher = slot_of(&c, 0).pid.unwrap();
    let browser = browser_of(&dir, "a", secs(5.0));
    assert_ne!(
        session_of(browser),
        session_of(launcher),
        "browser in its own session"
    );
    let helper = pid_file(&dir, "a.helper.pid").expect("stream helper pid");
    assert!(!process_gone(helper));
    // The browser holds the slot's camoufox port.
    let camoufox = c.ports.camoufox;
    assert!(TcpListener::bind(("127.0.0.1", camoufox)).is_err());
}

#[test]
fn a_launcher_killed_from_outside_leaves_no_browser_and_its_slot_recovers() {
    let dir =
        TestDir::new("a_launcher_killed_from_outside_leaves_no_browser_and_its_slot_recovers");
    dir.write_profile("a", &real(json!({})));
    let c = Coordinator::start(&dir, real_builder().pool_size(1));
    c.wait_all_ready(secs(15.0));
    let first = slot_of(&c, 0);
    let browser = browser_of(&dir, "a", secs(5.0));

    let killed_at = Instant::now();
    let killed_ms = unix_ms();
    send_signal_to(first.pid.unwrap(), libc::SIGKILL);
    wait_until(
        "the orphaned browser to be stopped",
        Instant::now() + within(),
        || process_gone(browser),
    );
    let browser_gone = killed_at.elapsed();
    // One profile: the replacement is `a` again, on the same ports, and its
    // browser must be able to bind the camoufox port the orphan held.
    let mut started_ms = None;
    wait_until("the replacement to be ready", secs(15.0), || {
        let s = slot_of(&c, 0);
        if s.state == "starting" && s.pid != first.pid {
            started_ms.get_or_insert(s.since_unix_ms);
        }
        s.state == "ready" && s.pid.is_some() && s.pid != first.pid
    });
    let ready_after = killed_at.elapsed();
    let second = slot_of(&c, 0);
    assert_eq!(second.ports, first.ports);
    assert_eq!(second.restarts, 1, "one restart, not a crash loop");
    let new_browser = browser_of(&dir, "a", secs(5.0));
    assert_ne!(new_browser, browser);
    // The coordinator's part: from the launcher's death to the replacement's
    // start (orphans found and stopped, ports checked); the rest is the
    // child's own start (its 300 ms bind delay and its browser).
    let ours = started_ms.map(|t| t.saturating_sub(killed_ms));
    let own = started_ms.map(|t| second.since_unix_ms.saturating_sub(t));
    println!(
        "launcher SIGKILL -> orphaned browser gone in {browser_gone:.1?}; replacement started after {ours:?} ms (the coordinator's part), ready {own:?} ms later (the child's own start); {ready_after:.1?} in all"
    );
    assert!(
        !c.stderr().contains("in use"),
        "no port conflict:\n{}",
        c.stderr()
    );
}

#[test]
fn eviction_stops_the_whole_tree() {
    let dir = TestDir::new("eviction_stops_the_whole_tree");
    // `a` answers 502 (a broken browser page): the child's fault, evicted.
    dir.write_profile("a", &real(json!({ "fail_status": 502 })));
    dir.write_profile("b", &real(json!({})));
    let c = Coordinator::start(&dir, real_builder().pool_size(1));
    c.wait_all_ready(secs(15.0));
    let a_browser = browser_of(&dir, "a", secs(5.0));
    let a_helper = pid_file(&dir, "a.helper.pid").unwrap();
    let r = post_json(
        c.ports.coordinator,
        "/v1/chat/completions",
        &json!({"model": "gemini-test", "messages": [{"role": "user", "content": "hi"}]}),
    );
    assert!(r.is_some());
    wait_until(
        "a's browser and helper to be gone",
        Instant::now() + within() + Duration::from_secs(1),
        || process_gone(a_browser) && process_gone(a_helper),
    );
    wait_until("b to be ready on the same slot", secs(15.0), || {
        let s = slot_of(&c, 0);
        s.state == "ready" && s.profile.as_deref() == Some("b")
    });
    browser_of(&dir, "b", secs(5.0));
}

#[test]
fn a_readiness_timeout_stops_the_whole_tree() {
    let dir = TestDir::new("a_readiness_timeout_stops_the_whole_tree");
    dir.write_profile("a", &real(json!({ "never_ready": true })));
    dir.write_profile("b", &real(json!({})));
    let c = Coordinator::start(&dir, real_builder().pool_size(1).ready_timeout_s(1));
    let a_browser = browser_of(&dir, "a", secs(5.0));
    wait_until("b to be ready after a's timeout", secs(15.0), || {
        let s = slot_of(&c, 0);
        s.state == "ready" && s.profile.as_deref() == Some("b")
    });
    assert!(
        process_gone(a_browser),
        "a's browser survived its readiness timeout"
    );
}

#[test]
fn coordinator_sigterm_leaves_no_process() {
    let dir = TestDir::new("coordinator_sigterm_leaves_no_process");
    dir.write_profile("a", &real(json!({})));
    dir.write_profile("b", &real(json!({ "browser_ignore_sigterm": true })));
    let mut c = Coordinator::start(&dir, real_builder().pool_size(2));
    c.wait_all_ready(secs(15.0));
    browser_of(&dir, "a", secs(5.0));
    browser_of(&dir, "b", secs(5.0));
    assert!(
        tree_survivors(&dir).len() >= 6,
        "{:?}",
        tree_survivors(&dir)
    );
    let sent = Instant::now();
    c.send_signal(libc::SIGTERM);
    let status = c.wait_exit(Instant::now() + within());
    assert!(status.success(), "{status:?}");
    let gone_in = sent.elapsed();
    assert!(
        tree_survivors(&dir).is_empty(),
        "left: {:?}",
        tree_survivors(&dir)
    );
    println!("SIGTERM -> exit with no process left in {gone_in:.2?} (grace {GRACE_S} s)");
    assert!(
        c.stderr().contains("ignored SIGTERM"),
        "the stubborn ones were killed"
    );
}

#[test]
fn a_new_coordinator_stops_what_a_killed_one_left() {
    let dir = TestDir::new("a_new_coordinator_stops_what_a_killed_one_left");
    dir.write_profile("a", &real(json!({})));
    let mut first = Coordinator::start(&dir, real_builder().pool_size(1));
    first.wait_all_ready(secs(15.0));
    let browser = browser_of(&dir, "a", secs(5.0));
    let helper = pid_file(&dir, "a.helper.pid").unwrap();
    first.send_signal(libc::SIGKILL);
    first.wait_exit(secs(5.0));
    // PDEATHSIG took the launcher; the browser (own session) and the helper
    // (orphaned in the launcher's group) live on.
    std::thread::sleep(Duration::from_millis(200));
    assert!(
        !process_gone(browser) && !process_gone(helper),
        "nothing was left to clean up"
    );

    let second = Coordinator::start(&dir, real_builder().pool_size(1));
    second.wait_all_ready(secs(15.0));
    assert!(process_gone(browser) && process_gone(helper));
    let log = second.stderr();
    for pid in [browser, helper] {
        assert!(
            log.lines()
                .any(|l| l.contains(&format!("stopping pid {pid} left running"))),
            "no log line for {pid}:\n{log}"
        );
    }
    browser_of(&dir, "a", secs(5.0));
}

#[test]
fn a_foreign_holder_of_a_port_is_named_and_the_slot_backs_off() {
    let dir = TestDir::new("a_foreign_holder_of_a_port_is_named_and_the_slot_backs_off");
    dir.write_profile("a", &real(json!({})));
    let squatter = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = squatter.local_addr().unwrap().port();
    let c = Coordinator::start(
        &dir,
        real_builder().pool_size(1).env("BASE_CAMOUFOX_PORT", port),
    );
    wait_until("the slot to back off naming the port", secs(10.0), || {
        let (_, body) = c.ready();
        body["slots"][0]["state"] == "backoff"
            && body["slots"][0]["reason"]
                .as_str()
                .is_some_and(|r| r.contains(&port.to_string()))
    });
    let me = std::process::id();
    wait_until("the log line", secs(5.0), || {
        c.stderr().lines().any(|l| {
            l.contains(&format!(
                "camoufox port 127.0.0.1:{port} is in use by pid {me}"
            ))
        })
    });
    // No child was started against the taken port.
    assert!(
        dir.child_pid("a").is_none(),
        "a child was started on a taken port"
    );
    assert!(!c.stderr().contains("started profile a"));
    drop(squatter);
    c.wait_all_ready(secs(15.0));
    browser_of(&dir, "a", secs(5.0));
}

#[test]
fn children_get_a_clean_environment() {
    let dir = TestDir::new("children_get_a_clean_environment");
    dir.write_profiles(&["a"]);
    let c = Coordinator::start(
        &dir,
        Builder::new()
            .pool_size(1)
            .env("AWS_ACCESS_KEY_ID", "AKIATESTSECRET")
            .env("AWS_SECRET_ACCESS_KEY", "very-secret")
            .env("AWS_SESSION_TOKEN", "token-secret")
            .env(
                "AWS_CONTAINER_CREDENTIALS_FULL_URI",
                "http://127.0.0.1:1/creds",
            )
            .env("AWS_WEB_IDENTITY_TOKEN_FILE", "/var/run/token")
            .env("ADMIN_KEY", "admin-secret")
            .env("AUTH_PROFILE_S3_BUCKET", "bucket-name")
            .env("HTTPS_PROXY", "http://127.0.0.1:3128")
            .env("LOG_LEVEL", "DEBUG"),
    );
    c.wait_all_ready(secs(10.0));
    let pid = slot_of(&c, 0).pid.unwrap();
    let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
    let text = String::from_utf8_lossy(&environ).replace('\0', "\n");
    for secret in [
        "AKIATESTSECRET",
        "very-secret",
        "token-secret",
        "AWS_CONTAINER_CREDENTIALS_FULL_URI",
        "AWS_WEB_IDENTITY_TOKEN_FILE",
        "admin-secret",
        "bucket-name",
    ] {
        assert!(
            !text.contains(secret),
            "{secret} reached the child:\n{text}"
        );
    }
    for kept in [
        "HTTPS_PROXY=http://127.0.0.1:3128",
        "LOG_LEVEL=DEBUG",
        "AUTO_ROTATE_AUTH_PROFILE=false",
        "AUTO_AUTH_ROTATION_ON_STARTUP=false",
        "AISTUDIOPROXY_CHILD=",
    ] {
        assert!(text.contains(kept), "{kept} missing:\n{text}");
    }
    assert!(
        !text.contains("AUTH_KEY_FILE_PATH"),
        "no key file, no variable"
    );
}

#[test]
fn an_operators_key_file_is_used_and_a_missing_one_refused() {
    let dir = TestDir::new("an_operators_key_file_is_used_and_a_missing_one_refused");
    dir.write_profiles(&["a"]);
    let missing = dir.path.join("nope/key.txt");
    let r = Coordinator::run_to_exit(
        &dir,
        Builder::new().env("AUTH_KEY_FILE_PATH", missing.display()),
    );
    assert_eq!(r.status.code(), Some(2), "{}", r.stderr);
    let lines = r.error_lines();
    assert_eq!(lines.len(), 1, "{}", r.stderr);
    assert!(lines[0].contains("AUTH_KEY_FILE_PATH"), "{}", lines[0]);

    let keys = dir.path.join("operator-keys.txt");
    std::fs::write(&keys, "op-key-1\n").unwrap();
    let c = Coordinator::start(
        &dir,
        Builder::new()
            .pool_size(1)
            .env("AUTH_KEY_FILE_PATH", keys.display())
            // /ready names profiles and pids to the admin key only.
            .env("ADMIN_KEY", "adm-test"),
    );
    c.wait_all_ready(secs(10.0));
    let body = json!({"model": "gemini-test", "messages": [{"role": "user", "content": "hi"}]});
    let denied = post_json_with(c.ports.coordinator, "/v1/chat/completions", &body, &[]).unwrap();
    assert_eq!(
        denied.status, 401,
        "the coordinator checks the operator's keys"
    );
    let ok = post_json_with(
        c.ports.coordinator,
        "/v1/chat/completions",
        &body,
        &[("Authorization", "Bearer op-key-1")],
    )
    .unwrap();
    assert_eq!(ok.status, 200, "{}", ok.body);
    let pid = slot_of(&c, 0).pid.unwrap();
    let environ = String::from_utf8_lossy(&std::fs::read(format!("/proc/{pid}/environ")).unwrap())
        .replace('\0', "\n");
    assert!(environ.contains(&format!("AUTH_KEY_FILE_PATH={}", keys.display())));
}

#[test]
fn the_kill_storm_in_real_child_mode_leaves_nothing() {
    let dir = TestDir::new("the_kill_storm_in_real_child_mode_leaves_nothing");
    for n in ["p1", "p2", "p3", "p4"] {
        dir.write_profile(n, &real(json!({})));
    }
    let mut c = Coordinator::start(&dir, real_builder().pool_size(2));
    c.wait_all_ready(secs(15.0));
    let mut kills = 0;
    let storm_end = secs(3.0);
    let mut n = 0usize;
    while Instant::now() < storm_end {
        n = n.wrapping_mul(31).wrapping_add(7);
        let s = c.slots();
        if let Some(pid) = s[n % s.len()].pid {
            send_signal_to(pid, libc::SIGKILL);
            kills += 1;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(kills >= 4, "the storm killed only {kills} launchers");
    c.wait_all_ready(secs(20.0));
    // Every slot runs exactly one browser: no orphan kept a port.
    let browsers = tree_survivors(&dir)
        .into_iter()
        .filter(|(_, cmd)| cmd.contains("--browser"))
        .count();
    assert_eq!(browsers, 2, "{:?}", tree_survivors(&dir));
    c.send_signal(libc::SIGTERM);
    c.wait_exit(Instant::now() + within());
    assert!(
        tree_survivors(&dir).is_empty(),
        "left: {:?}",
        tree_survivors(&dir)
    );
}

#[test]
fn a_corrupt_profile_state_file_is_reported_and_ignored() {
    let dir = TestDir::new("a_corrupt_profile_state_file_is_reported_and_ignored");
    dir.write_profiles(&["a", "b"]);
    std::fs::create_dir_all(dir.cache_dir()).unwrap();
    let state = dir.cache_dir().join("profile-state.json");
    std::fs::write(&state, b"{\"version\": 1, \"profiles\": {\"a\": [not json").unwrap();
    let c = Coordinator::start(&dir, Builder::new());
    c.wait_all_ready(secs(10.0));
    let log = c.stderr();
    assert!(
        log.lines().any(|l| l.contains("profile-state.json")
            && l.contains("starting with no saved profile state")),
        "{log}"
    );
    let (_, ready) = c.ready();
    let profiles = ready["profiles"].as_array().unwrap();
    assert_eq!(profiles.len(), 2);
    assert!(profiles.iter().all(|p| p["state"] == "running"), "{ready}");
}

#[test]
fn the_test_childs_browser_refuses_a_taken_camoufox_port() {
    // The real browser cannot start on a taken debug port; neither does ours:
    // run the test child by hand, without a coordinator.
    let dir = TestDir::new("the_test_childs_browser_refuses_a_taken_camoufox_port");
    dir.write_profile("a", &real(json!({})));
    let held = TcpListener::bind("127.0.0.1:0").unwrap();
    let camoufox = held.local_addr().unwrap().port();
    let free = |_: ()| {
        TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    };
    let started = Instant::now();
    let out = std::process::Command::new(TESTCHILD)
        .args(["--server-port", &free(()).to_string()])
        .args(["--stream-port", &free(()).to_string()])
        .args(["--camoufox-debug-port", &camoufox.to_string()])
        .arg("--active-auth-json")
        .arg(dir.profiles_dir().join("a.json"))
        .arg("--headless")
        .env("TESTCHILD_PID_DIR", dir.pid_dir())
        .output()
        .unwrap();
    let took = started.elapsed();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(&format!(
            "camoufox debug port 127.0.0.1:{camoufox} is already in use"
        )),
        "{text}"
    );
    assert!(
        took >= Duration::from_millis(250),
        "exits after a short delay, took {took:?}"
    );
    wait_no_survivors(&dir, Duration::from_secs(3));
}

#[test]
fn a_dead_browser_shows_as_failing_requests_and_the_child_is_replaced() {
    let dir = TestDir::new("a_dead_browser_shows_as_failing_requests_and_the_child_is_replaced");
    dir.write_profile("a", &real(json!({})));
    dir.write_profile("b", &real(json!({})));
    let c = Coordinator::start(&dir, real_builder().pool_size(1));
    c.wait_all_ready(secs(15.0));
    let first = slot_of(&c, 0);
    let browser = browser_of(&dir, "a", secs(5.0));
    send_signal_to(browser, libc::SIGKILL);
    wait_until("the browser to die", secs(5.0), || process_gone(browser));
    // The child itself still says it is healthy.
    let health = http_get(c.ports.api, "/health").expect("the child answers /health");
    assert_eq!(health.status, 200, "{}", health.body);
    // A completion meets the dead page (503 from the child): the child is
    // blamed and replaced, and the retry or the next request is served.
    let body = json!({"model": "gemini-test", "messages": [{"role": "user", "content": "hi"}]});
    let _ = post_json(c.ports.coordinator, "/v1/chat/completions", &body);
    wait_until("a replacement on the slot", secs(15.0), || {
        let s = slot_of(&c, 0);
        s.state == "ready" && s.pid != first.pid
    });
    let ok = post_json(c.ports.coordinator, "/v1/chat/completions", &body).unwrap();
    assert_eq!(ok.status, 200, "{}", ok.body);
    assert!(c.stderr().contains("answered 503"), "{}", c.stderr());
}
