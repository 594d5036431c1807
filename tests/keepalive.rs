//! Every login gets its turn, through the real binaries: a spare profile
//! idle `PROFILE_KEEPALIVE_S` is started on a slot for a short turn, its
//! refreshed login is saved by its child's stop and written back to the
//! source, and the slot goes back to the profile it displaced; never while
//! requests wait, never for a profile that is cooling, disabled or
//! `needs_login`; a keep-alive start of an expired login marks it
//! `needs_login` at once. `PROFILE_MAX_RUNTIME_S` rotates a long run out
//! when another profile waits, and never a profile alone.

use std::collections::BTreeSet;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};

use crate::common::*;

/// A profile whose test child behaves like the real one (its stop saves
/// the login with cookie `FAKE_REFRESHED`), stopping quickly, plus `knobs`.
fn real_like(name: &str, extra_cookies: &[&str], knobs: Value) -> Value {
    let mut k = json!({"real_child": true, "helper_kill_after_ms": 200});
    for (key, v) in knobs.as_object().into_iter().flatten() {
        k[key] = v.clone();
    }
    let mut cookies =
        vec![json!({"name": "SID", "value": "hydrated", "domain": ".google.com", "path": "/"})];
    cookies.extend(
        extra_cookies
            .iter()
            .map(|c| json!({"name": c, "value": "1", "domain": ".google.com", "path": "/"})),
    );
    json!({"cookies": cookies, "origins": [], "name": name, "testchild": k})
}

/// Every profile placed exactly once in a `/ready` body (slots + queue).
fn check_placement(body: &Value, all: &[&str]) {
    let mut seen: Vec<String> = slots(body)
        .into_iter()
        .filter_map(|s| s.profile)
        .chain(queue(body))
        .collect();
    seen.sort();
    assert_eq!(seen, all, "placement broken: {body}");
}

fn source_has(dir: &TestDir, profile: &str, cookie: &str) -> bool {
    std::fs::read_to_string(dir.profiles_dir().join(format!("{profile}.json")))
        .is_ok_and(|s| s.contains(cookie))
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

#[test]
fn a_spare_gets_a_keepalive_turn_and_its_refreshed_login_reaches_the_source() {
    let dir = TestDir::new("keepalive_turn");
    for n in ["a", "b"] {
        dir.write_profile(n, &real_like(n, &[], json!({})));
    }
    assert!(!source_has(&dir, "b", "FAKE_REFRESHED"));
    let c = Coordinator::start(
        &dir,
        Builder::new()
            .pool_size(1)
            .env("PROFILE_KEEPALIVE_S", 2)
            .env("AUTH_WRITEBACK", "all"),
    );
    c.wait_all_ready(secs(15.0));
    assert_eq!(c.slots()[0].profile.as_deref(), Some("a"));

    // b's turn: a makes way, b runs (shown in /ready), then a again; every
    // profile placed once at every look.
    let mut reason_seen = None;
    let began = Instant::now();
    wait_until("b's keep-alive turn to end", secs(25.0), || {
        let (_, body) = c.ready();
        check_placement(&body, &["a", "b"]);
        let s = &body["slots"][0];
        if s["profile"] == "b" && s["state"] == "ready" {
            reason_seen = s["reason"].as_str().map(String::from);
        }
        c.stderr().contains("keep-alive turn for b ended after")
    });
    assert_eq!(reason_seen.as_deref(), Some("keep-alive turn for b"));
    let log = c.stderr();
    assert!(
        log.lines()
            .any(|l| l.contains("keep-alive turn for b (idle ")
                && l.contains(" s): draining a to make way")),
        "{log}"
    );
    assert!(log.contains("keep-alive turn for b begins"), "{log}");
    assert!(
        log.contains("its child was ready, then stopped and its login saved"),
        "{log}"
    );
    assert!(
        log.contains("slot 0: profile b: refreshed auth state written back"),
        "{log}"
    );
    assert!(source_has(&dir, "b", "FAKE_REFRESHED"), "b's source");
    let took: f64 = log
        .split("keep-alive turn for b ended after ")
        .nth(1)
        .and_then(|r| r.split(' ').next())
        .and_then(|n| n.parse().ok())
        .expect("the turn's length in the log");
    println!(
        "MEASURED test child: keep-alive turn took {took:.1} s (begun {:.1} s into the wait)",
        began.elapsed().as_secs_f64() - took
    );
    // a comes back to its slot.
    wait_until("a to be ready again", secs(15.0), || {
        let s = &c.slots()[0];
        s.profile.as_deref() == Some("a") && s.state == "ready"
    });
    let (_, body) = c.ready();
    check_placement(&body, &["a", "b"]);
    assert!(profile_of(&body, "b").unwrap()["last_ran_unix_ms"]
        .as_u64()
        .is_some());
}

#[test]
fn no_keepalive_turn_while_requests_wait() {
    let dir = TestDir::new("keepalive_waits");
    dir.write_profile(
        "a",
        &real_like("a", &[], json!({"completion_delay_ms": 1200})),
    );
    dir.write_profile("b", &real_like("b", &[], json!({})));
    let c = Coordinator::start(
        &dir,
        Builder::new().pool_size(1).env("PROFILE_KEEPALIVE_S", 2),
    );
    c.wait_all_ready(secs(15.0));
    // Four requests at once on one child: three wait in the queue, and the
    // child is busy ~5 s, past the moment b falls due.
    let port = c.ports.coordinator;
    let body = json!({"model": "gemini-test", "messages": [{"role": "user", "content": "hi"}]});
    let statuses: Vec<u16> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..4)
            .map(|_| {
                s.spawn(|| post_json(port, "/v1/chat/completions", &body).map_or(0, |r| r.status))
            })
            .collect();
        // While requests wait (or the one child serves), b never starts.
        let mut waited = false;
        while !hs.iter().all(|h| h.is_finished()) {
            let (_, r) = c.ready();
            waited |= r["requests_waiting"].as_u64().unwrap_or(0) > 0;
            assert_eq!(r["slots"][0]["profile"], "a", "{r}");
            assert!(
                !c.stderr().contains("to make way"),
                "a turn began while requests waited or ran:\n{}",
                c.stderr()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(waited, "no request ever waited");
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(statuses, vec![200; 4]);
    let log = c.stderr();
    assert!(
        log.contains("keep-alive turn for b is due but waits: requests wait for a child")
            || log.contains(
                "keep-alive turn for b is due but waits: no ready slot is free of requests"
            ),
        "{log}"
    );
    // Once they are served, b gets its turn.
    wait_until("b's turn after the requests", secs(20.0), || {
        c.stderr().contains("keep-alive turn for b ended after")
    });
}

#[test]
fn no_turn_for_cooling_or_disabled_and_an_expired_login_is_marked_at_its_turn() {
    let dir = TestDir::new("keepalive_eligible");
    dir.write_profile("a", &real_like("a", &[], json!({})));
    dir.write_profile("b", &real_like("b", &[], json!({})));
    dir.write_profile("c", &real_like("c", &[], json!({})));
    dir.write_profile(
        "e",
        &real_like("e", &["FAKE_EXPIRED"], json!({"login_fail_after_ms": 300})),
    );
    // b cools for an hour and c is disabled, as an earlier run left them.
    std::fs::create_dir_all(dir.cache_dir()).unwrap();
    let state = json!({"version": 1, "profiles": {
        "b": {"cooling_until_unix_ms": unix_ms() + 3_600_000, "cool_reason": "exhausted"},
        "c": {"disabled": true},
    }});
    std::fs::write(
        dir.cache_dir().join("profile-state.json"),
        state.to_string(),
    )
    .unwrap();
    let c = Coordinator::start(
        &dir,
        Builder::new().pool_size(1).env("PROFILE_KEEPALIVE_S", 1),
    );
    c.wait_all_ready(secs(15.0));
    // e's turn: its child logs the expired login, e needs_login at once,
    // and a gets its slot back.
    wait_until("e to need a login", secs(20.0), || {
        profile_state(&c.ready().1, "e").as_deref() == Some("needs_login")
    });
    let log = c.stderr();
    assert!(log.contains("keep-alive turn for e begins"), "{log}");
    assert!(log.contains("profile e needs a new login"), "{log}");
    let mark = log_seconds(
        &log,
        "keep-alive turn for e begins",
        "profile e needs a new login",
    );
    println!(
        "MEASURED test child: keep-alive start of an expired login -> needs_login in {mark:.1} s"
    );
    wait_until("a ready again", secs(15.0), || {
        let s = &c.slots()[0];
        s.profile.as_deref() == Some("a") && s.state == "ready"
    });
    // From now on nobody may have a turn: b cools, c is disabled, e
    // needs a login. Several keep-alive intervals pass with none.
    let quiet_from = c.stderr().len();
    std::thread::sleep(Duration::from_secs(4));
    let later = &c.stderr()[quiet_from..];
    assert!(!later.contains("keep-alive turn for"), "{later}");
    let (_, body) = c.ready();
    check_placement(&body, &["a", "b", "c", "e"]);
    assert_eq!(profile_state(&body, "b").as_deref(), Some("cooling"));
    assert_eq!(profile_state(&body, "c").as_deref(), Some("disabled"));
    let log = c.stderr();
    let started: BTreeSet<&str> = log
        .lines()
        .filter_map(|l| l.split("started profile ").nth(1))
        .filter_map(|r| r.split(' ').next())
        .collect();
    assert_eq!(started, BTreeSet::from(["a", "e"]), "{log}");
}

/// Seconds between the first log lines holding `from` and `to`, from the
/// coordinator's `[YYYY-MM-DDTHH:MM:SS.mmmZ ...]` stamps.
fn log_seconds(log: &str, from: &str, to: &str) -> f64 {
    let at = |needle: &str| -> f64 {
        let line = log
            .lines()
            .find(|l| l.contains(needle))
            .unwrap_or_else(|| panic!("no log line with {needle:?}"));
        let t = line
            .split('T')
            .nth(1)
            .and_then(|t| t.split('Z').next())
            .expect("a stamp");
        t.split(':')
            .map(|p| p.parse::<f64>().expect("a number"))
            .fold(0.0, |acc, x| acc * 60.0 + x)
    };
    at(to) - at(from)
}

#[test]
fn max_runtime_rotates_a_long_run_out_when_another_waits_and_never_one_alone() {
    let dir = TestDir::new("keepalive_max_runtime");
    dir.write_profiles(&["a", "b"]);
    let c = Coordinator::start(
        &dir,
        Builder::new()
            .pool_size(1)
            .env("PROFILE_KEEPALIVE_S", 0)
            .env("PROFILE_MAX_RUNTIME_S", 2),
    );
    c.wait_all_ready(secs(15.0));
    assert_eq!(c.slots()[0].profile.as_deref(), Some("a"));
    wait_until("b to take its turn", secs(10.0), || {
        let s = &c.slots()[0];
        s.profile.as_deref() == Some("b") && s.state == "ready"
    });
    wait_until("a to come back", secs(10.0), || {
        let s = &c.slots()[0];
        s.profile.as_deref() == Some("a") && s.state == "ready"
    });
    let log = c.stderr();
    assert!(
        log.contains("profile a has run 2 s, PROFILE_MAX_RUNTIME_S=2, and others wait their turn: rotating it out"),
        "{log}"
    );
    assert!(
        !log.contains("keep-alive turn"),
        "PROFILE_KEEPALIVE_S=0 is off: {log}"
    );
    check_placement(&c.ready().1, &["a", "b"]);
    drop(c);

    // Alone, a profile keeps its slot however long it runs.
    let solo = TestDir::new("keepalive_max_runtime_solo");
    solo.write_profiles(&["a"]);
    let c = Coordinator::start(
        &solo,
        Builder::new().pool_size(1).env("PROFILE_MAX_RUNTIME_S", 1),
    );
    c.wait_all_ready(secs(15.0));
    std::thread::sleep(Duration::from_secs(3));
    let s = &c.slots()[0];
    assert_eq!(
        (s.state.as_str(), s.restarts),
        ("ready", 0),
        "{}",
        c.stderr()
    );
    assert!(!c.stderr().contains("rotating it out"), "{}", c.stderr());
}
