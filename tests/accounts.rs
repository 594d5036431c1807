//! Account health as the real child shows it, through the real coordinator
//! and the test child imitating the real child (issue 15): fast tests, each
//! a few seconds, for the paths `upstream_child` walks slowly with the real
//! child.
//!
//! - Expired login: the current child's log lines and exit 0 (cookie
//!   `FAKE_EXPIRED`), and the older fork's hang (`fork` + the cookie): the
//!   profile `needs_login` at once, is never started again by rotations,
//!   and runs again after new content and a reload, `ctl enable` or `ctl
//!   reset`; the hanging child is stopped with nothing left.
//! - Expired Google session cookies: never started; live, mixed, browser
//!   session (`expires: -1`) or no Google cookies: started.
//! - Quota in the log: a non-streamed request the child would hold until its
//!   own 504 is taken back and served by another child in about a second;
//!   the profile cools for `PROFILE_COOLDOWN_S` (quota) or
//!   `RATE_LIMIT_COOLDOWN_S` (rate limit). (A streamed quota: `day.rs`.)
//! - A client that leaves (non-streamed, before its streamed head, mid
//!   stream) frees its slot at once, its child is started again (its page
//!   may still generate), and the shutdown drain does not wait for it.
//! - The stop signals the launcher alone first, so it saves its login,
//!   which is written back; the fork's stop takes the grace, leaving nothing.
//! - Answers: `[Error:` text counts like a 5xx (evicts), never as empty;
//!   empty outputs rotate without eviction; the fork's 502 internal timeout
//!   evicts nothing, counts toward exhaustion and reaches the client.
//! - `CHILD_SIGNALS_FILE`: an operator's pattern cools a profile; a bad file
//!   stops the start naming its line.
//!
//! Observed only from outside: `/ready`, `ctl --json status`, `/metrics`,
//! the coordinator's stderr, the test child's pid files, logs and
//! `/_testchild/stats`, the profile source files, `/proc`.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};

use crate::common::*;

// ---------------------------------------------------------------------------
// Helpers

/// The stop grace of these tests (the harness default, named here).
const GRACE_S: u64 = 2;

/// A profile with no cookies and these test-child knobs.
pub(crate) fn knobbed(knobs: Value) -> Value {
    json!({ "cookies": [], "testchild": knobs })
}

/// A Playwright-style cookie.
pub(crate) fn cookie(name: &str, value: &str, expires: f64) -> Value {
    json!({"name": name, "value": value, "domain": ".google.com", "path": "/",
           "expires": expires, "httpOnly": false, "secure": true, "sameSite": "Lax"})
}

/// A profile with these cookies and knobs.
pub(crate) fn with_cookies(cookies: Vec<Value>, knobs: Value) -> Value {
    json!({ "cookies": cookies, "origins": [], "testchild": knobs })
}

/// A profile whose login the (fake) Google redirects to the sign-in page.
fn expired_login(knobs: Value) -> Value {
    with_cookies(vec![cookie("FAKE_EXPIRED", "1", -1.0)], knobs)
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

pub(crate) fn chat(content: &str, stream: bool) -> Value {
    json!({"model": "gemini-test", "stream": stream,
           "messages": [{"role": "user", "content": content}]})
}

/// `name`'s entry in `/ready`.
pub(crate) fn profile(c: &Coordinator, name: &str) -> Value {
    profile_of(&c.ready().1, name)
        .cloned()
        .unwrap_or_else(|| panic!("no profile {name} in /ready"))
}

/// Wait until `name`'s state is `state`; how long it took.
fn wait_state(c: &Coordinator, name: &str, state: &str, within: f64) -> Duration {
    wait_until(
        &format!("profile {name} to be {state}"),
        secs(within),
        || profile(c, name)["state"] == state,
    )
}

/// How many times the coordinator started `name`.
fn starts_of(c: &Coordinator, name: &str) -> usize {
    c.stderr()
        .matches(&format!("started profile {name} pid "))
        .count()
}

/// Wait for `name`'s `n`th start; how long it took.
fn wait_started(c: &Coordinator, name: &str, n: usize, within: f64) -> Duration {
    wait_until(&format!("start {n} of {name}"), secs(within), || {
        starts_of(c, name) >= n
    })
}

/// Wait until a slot runs `name`, ready; that slot.
pub(crate) fn wait_ready_on(c: &Coordinator, name: &str, within: f64) -> Slot {
    let mut found = None;
    wait_until(
        &format!("{name} to be ready in a slot"),
        secs(within),
        || {
            found = c
                .slots()
                .into_iter()
                .find(|s| s.state == "ready" && s.profile.as_deref() == Some(name));
            found.is_some()
        },
    );
    found.expect("set above")
}

/// The `/ready` in-flight count of slot `i`.
pub(crate) fn in_flight(c: &Coordinator, i: usize) -> u64 {
    c.ready().1["slots"][i]["in_flight"].as_u64().unwrap_or(0)
}

/// The test child's counters on API port `api` (None when it does not
/// answer).
pub(crate) fn stats(api: u16) -> Option<Value> {
    http_get(api, "/_testchild/stats")
        .filter(|r| r.status == 200)
        .map(|r| r.json())
}

pub(crate) fn stat(api: u16, key: &str) -> u64 {
    stats(api)
        .map(|s| s[key].as_u64().unwrap_or(0))
        .unwrap_or(0)
}

/// One sample of `/metrics`: the value of the line starting with `series`.
fn metric(c: &Coordinator, series: &str) -> Option<f64> {
    let text = c.get("/metrics")?.body;
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
}

/// The stderr lines holding `needle`.
fn lines_with(c: &Coordinator, needle: &str) -> Vec<String> {
    c.stderr()
        .lines()
        .filter(|l| l.contains(needle))
        .map(String::from)
        .collect()
}

/// A profile's child log.
pub(crate) fn child_log(dir: &TestDir, name: &str) -> String {
    read_to_string(&dir.log_dir().join(format!("{name}.log")))
}

/// Write a completion request on a raw connection and leave it open, so
/// the test can hang up whenever it likes.
pub(crate) fn open_request(port: u16, body: &Value) -> TcpStream {
    let body = body.to_string();
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    write!(
        s,
        "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    s
}

/// Read an answer's head (status line and headers) from a raw connection.
pub(crate) fn read_head(r: &mut BufReader<TcpStream>) -> String {
    let mut head = String::new();
    loop {
        let mut line = String::new();
        if r.read_line(&mut line).unwrap_or(0) == 0 {
            return head;
        }
        head.push_str(&line);
        if line == "\r\n" {
            return head;
        }
    }
}

/// Read the next SSE `data:` line's payload.
pub(crate) fn next_event(r: &mut BufReader<TcpStream>) -> Option<String> {
    let mut line = String::new();
    loop {
        line.clear();
        if r.read_line(&mut line).ok()? == 0 {
            return None;
        }
        if let Some(data) = line.trim_end().strip_prefix("data: ") {
            return Some(data.to_string());
        }
    }
}

/// The `data:` payloads of a whole SSE body.
pub(crate) fn events(body: &str) -> Vec<String> {
    body.lines()
        .filter_map(|l| l.strip_prefix("data: ").map(String::from))
        .collect()
}

/// The content of a whole SSE answer, its deltas joined.
pub(crate) fn streamed_content(body: &str) -> String {
    events(body)
        .iter()
        .filter_map(|e| serde_json::from_str::<Value>(e).ok())
        .filter_map(|v| {
            v["choices"][0]["delta"]["content"]
                .as_str()
                .map(String::from)
        })
        .collect()
}

/// POST a completion through the coordinator: the whole reply and how long
/// it took.
pub(crate) fn complete(c: &Coordinator, body: &Value) -> (Reply, Duration) {
    let began = Instant::now();
    let r = post_json(c.ports.coordinator, "/v1/chat/completions", body)
        .expect("the coordinator answers within 10 s");
    (r, began.elapsed())
}

// ---------------------------------------------------------------------------
// 1. An expired login (the child's log)

/// Pool 1: `a-expired` (the current child's expired login) starts first,
/// `b-good` after it. Returns when `a-expired` needs a login, with how long
/// that took from its start.
fn expired_then_good(dir: &TestDir) -> (Coordinator<'_>, Duration) {
    dir.write_profile("a-expired", &expired_login(json!({})));
    dir.write_profile("b-good", &knobbed(json!({})));
    let c = Coordinator::start(dir, Builder::new().pool_size(1).ready_timeout_s(10));
    wait_started(&c, "a-expired", 1, 10.0);
    let took = wait_state(&c, "a-expired", "needs_login", 10.0);
    (c, took)
}

#[test]
fn an_expired_login_needs_a_login_and_no_rotation_starts_it_again() {
    let dir = TestDir::new("an_expired_login_needs_a_login_and_no_rotation_starts_it_again");
    let (c, took) = expired_then_good(&dir);
    eprintln!("MEASURED: expired login (current child) started -> needs_login in {took:.2?}");
    assert!(took < Duration::from_secs(3), "{took:.2?}");

    let a = profile(&c, "a-expired");
    assert!(
        a["needs_login"]["why"]
            .as_str()
            .is_some_and(|w| w.contains("log")),
        "{a}"
    );
    // A login needed, not a start failure.
    assert_eq!(a["counts"]["logins_needed"], 1, "{a}");
    assert_eq!(a["counts"]["start_failures"], 0, "{a}");
    assert_eq!(a["start_failures_in_a_row"], 0, "{a}");
    assert_eq!(
        metric(&c, "aistudioproxy_profiles{state=\"needs_login\"}"),
        Some(1.0)
    );
    assert_eq!(
        profile_state(&status(&dir), "a-expired").as_deref(),
        Some("needs_login")
    );
    // One warning naming the profile and the fix.
    let good = wait_ready_on(&c, "b-good", 10.0);
    let warnings = lines_with(&c, "profile a-expired needs a new login");
    assert_eq!(warnings.len(), 1, "{warnings:#?}");
    assert!(warnings[0].contains("WARN"), "{}", warnings[0]);
    assert!(warnings[0].contains("ctl reload"), "{}", warnings[0]);
    assert!(
        warnings[0].contains("ctl reset a-expired"),
        "{}",
        warnings[0]
    );

    // Rotations go from b-good to b-good: a-expired is never started again.
    for n in 2..=3 {
        ctl(&dir, &["rotate", &good.slot.to_string()]).ok();
        wait_started(&c, "b-good", n, 10.0);
        wait_ready_on(&c, "b-good", 10.0);
    }
    assert_eq!(starts_of(&c, "a-expired"), 1, "{}", c.stderr());
    assert_eq!(
        lines_with(&c, "profile a-expired needs a new login").len(),
        1
    );

    // A new login (new content) and a reload: queued, and it runs again.
    dir.write_profile("a-expired", &json!({"cookies": [], "renewed": true}));
    ctl(&dir, &["reload"]).ok();
    wait_state(&c, "a-expired", "queued", 2.0);
    assert!(profile(&c, "a-expired").get("needs_login").is_none());
    ctl(&dir, &["rotate", &good.slot.to_string()]).ok();
    wait_ready_on(&c, "a-expired", 10.0);
    assert_eq!(starts_of(&c, "a-expired"), 2);
}

/// `ctl <verb> a-expired` clears a needed login: queued again.
fn an_operator_clears_a_needed_login(name: &str, verb: &str) {
    let dir = TestDir::new(name);
    let (c, _) = expired_then_good(&dir);
    wait_ready_on(&c, "b-good", 10.0);
    ctl(&dir, &[verb, "a-expired"]).ok();
    wait_state(&c, "a-expired", "queued", 2.0);
    assert!(profile(&c, "a-expired").get("needs_login").is_none());
    assert_eq!(
        metric(&c, "aistudioproxy_profiles{state=\"needs_login\"}"),
        Some(0.0)
    );
}

#[test]
fn ctl_enable_clears_a_needed_login() {
    an_operator_clears_a_needed_login("ctl_enable_clears_a_needed_login", "enable");
}

#[test]
fn ctl_reset_clears_a_needed_login() {
    an_operator_clears_a_needed_login("ctl_reset_clears_a_needed_login", "reset");
}

#[test]
fn the_forks_expired_login_hangs_and_is_marked_and_stopped_anyway() {
    let dir = TestDir::new("the_forks_expired_login_hangs_and_is_marked_and_stopped_anyway");
    // The whole real-child tree: browser, stream helper, driver.
    dir.write_profile(
        "fork",
        &expired_login(json!({"real_child": true, "fork": true})),
    );
    let c = Coordinator::start(&dir, Builder::new().pool_size(1).ready_timeout_s(10));
    wait_started(&c, "fork", 1, 10.0);
    let took = wait_state(&c, "fork", "needs_login", 10.0);
    eprintln!("MEASURED: expired login (fork, hangs) started -> needs_login in {took:.2?}");
    assert!(took < Duration::from_secs(3), "{took:.2?}");
    let launcher = dir.child_pid("fork").expect("the launcher's pid file");
    let gone = wait_no_survivors(&dir, Duration::from_secs(GRACE_S + 3));
    eprintln!("MEASURED: the hanging fork child's tree gone {gone:.2?} after needs_login");
    assert!(process_gone(launcher));
    for kind in ["helper", "driver", "browser"] {
        if let Some(pid) = pid_file(&dir, &format!("fork.{kind}.pid")) {
            assert!(process_gone(pid), "the {kind} survived");
        }
    }
    let p = profile(&c, "fork");
    assert_eq!(p["counts"]["start_failures"], 0, "{p}");
    assert_eq!(p["counts"]["logins_needed"], 1, "{p}");
    // Its only slot waits for an operator instead of starting it again.
    wait_until("the slot to wait for an operator", secs(5.0), || {
        c.stderr().contains("waiting for an operator")
    });
    assert_eq!(starts_of(&c, "fork"), 1);
}

// ---------------------------------------------------------------------------
// 2. Expired session cookies (before a start)

#[test]
fn expired_session_cookies_are_never_started_and_live_ones_are() {
    let dir = TestDir::new("expired_session_cookies_are_never_started_and_live_ones_are");
    let (past, later) = (unix_now() - 86_400.0, unix_now() + 30.0 * 86_400.0);
    dir.write_profile(
        "stale",
        &with_cookies(
            vec![cookie("SID", "s", past), cookie("HSID", "h", past)],
            json!({}),
        ),
    );
    dir.write_profile(
        "mixed",
        &with_cookies(
            vec![cookie("SID", "s", past), cookie("HSID", "h", later)],
            json!({}),
        ),
    );
    dir.write_profile(
        "session",
        &with_cookies(
            vec![cookie("HSID", "h", past), cookie("SID", "s", -1.0)],
            json!({}),
        ),
    );
    dir.write_profile(
        "nogoogle",
        &with_cookies(vec![cookie("NID", "n", past)], json!({})),
    );
    let c = Coordinator::start(&dir, Builder::new().pool_size(4).ready_timeout_s(10));
    for name in ["mixed", "session", "nogoogle"] {
        wait_ready_on(&c, name, 10.0);
    }
    wait_state(&c, "stale", "needs_login", 5.0);
    let p = profile(&c, "stale");
    assert!(
        p["needs_login"]["why"]
            .as_str()
            .is_some_and(|w| w.contains("session cookies")),
        "{p}"
    );
    assert_eq!(p["counts"]["logins_needed"], 1, "{p}");
    assert_eq!(p["counts"]["start_failures"], 0, "{p}");
    assert_eq!(starts_of(&c, "stale"), 0, "{}", c.stderr());
    assert!(dir.child_pid("stale").is_none(), "a child was started");
    assert_eq!(
        metric(&c, "aistudioproxy_profiles{state=\"needs_login\"}"),
        Some(1.0)
    );
    assert_eq!(
        lines_with(&c, "profile stale needs a new login").len(),
        1,
        "{}",
        c.stderr()
    );
}

// ---------------------------------------------------------------------------
// 3. Quota in the log

/// Two ready children: `a-quota` out of quota (cookie `FAKE_QUOTA`; it
/// ignores SIGTERM so its counters can be read while it is stopped) and
/// `b-good` (half a second per answer); `c-spare` queued. Two requests at
/// once: one lands on `a-quota`, whose child would hold it until its own
/// 504 (420 s); both must be answered 200 by another child within seconds.
/// Then `a-quota` cools for `want_cooldown_s` with `want_reason`, its slot
/// rotates to `c-spare`, and its child counts the request abandoned.
fn quota_in_the_log(name: &str, quota_type: &str, want_reason: &str, want_cooldown_s: u64) {
    let dir = TestDir::new(name);
    dir.write_profile(
        "a-quota",
        &with_cookies(
            vec![cookie("FAKE_QUOTA", "1", -1.0)],
            json!({"quota_type": quota_type, "ignore_sigterm": true}),
        ),
    );
    dir.write_profile("b-good", &knobbed(json!({"completion_delay_ms": 500})));
    dir.write_profile("c-spare", &knobbed(json!({})));
    let c = Coordinator::start(
        &dir,
        Builder::new()
            .pool_size(2)
            .ready_timeout_s(10)
            .grace_s(3)
            .env("PROFILE_COOLDOWN_S", 900)
            .env("RATE_LIMIT_COOLDOWN_S", 120),
    );
    let quota_slot = wait_ready_on(&c, "a-quota", 10.0);
    wait_ready_on(&c, "b-good", 10.0);
    let quota_api = quota_slot.ports.0;

    let answers: Vec<(Reply, Duration)> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..2)
            .map(|i| {
                let c = &c;
                s.spawn(move || complete(c, &chat(&format!("hello {i}"), false)))
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for (r, _) in &answers {
        assert_eq!(r.status, 200, "{}", r.body);
        assert!(!r.body.contains("profile=a-quota"), "{}", r.body);
        assert!(r.body.contains("echo=hello"), "{}", r.body);
    }
    let slowest = answers.iter().map(|a| a.1).max().unwrap();
    eprintln!(
        "MEASURED: a non-streamed request on an exhausted account ({quota_type}) answered 200 by another child in {slowest:.2?} (its own deadline: 420 s)"
    );
    assert!(slowest < Duration::from_secs(5), "{slowest:.2?}");
    assert!(
        c.stderr().contains("requests taken back from its child"),
        "no request landed on a-quota:\n{}",
        c.stderr()
    );
    // The quota child stopped working on it: the coordinator closed the
    // connection (read while its SIGTERM-ignoring launcher is being stopped).
    wait_until(
        "a-quota's child to count the request abandoned",
        secs(3.0),
        || stat(quota_api, "completions_abandoned") >= 1,
    );
    assert_eq!(stat(quota_api, "completions_succeeded"), 0);

    // The request named its model: that model cools (the account would
    // serve any other), the profile is not cooling as a whole.
    wait_until("a-quota to cool for gemini-test", secs(5.0), || {
        profile(&c, "a-quota")["cools_for"] == json!(["gemini-test"])
    });
    let a = profile(&c, "a-quota");
    assert_ne!(a["state"], "cooling", "{a}");
    let m = &a["model_cooldowns"][0];
    assert_eq!(m["reason"], want_reason, "{a}");
    let left = m["left_s"].as_u64().unwrap_or(0);
    assert!(
        left <= want_cooldown_s && left + 10 >= want_cooldown_s,
        "cooldown_left_s {left}, want about {want_cooldown_s}: {a}"
    );
    let spare = wait_ready_on(&c, "c-spare", 15.0);
    assert_eq!(spare.slot, quota_slot.slot, "the quota slot rotated");
    assert!(!c.stderr().contains("evicting"), "{}", c.stderr());
}

#[test]
fn a_quota_in_the_log_takes_the_request_back_and_cools_the_profile() {
    quota_in_the_log(
        "a_quota_in_the_log_takes_the_request_back_and_cools_the_profile",
        "QUOTA_EXCEEDED",
        "exhausted",
        900,
    );
}

#[test]
fn a_rate_limit_in_the_log_takes_the_request_back_and_cools_briefly() {
    quota_in_the_log(
        "a_rate_limit_in_the_log_takes_the_request_back_and_cools_briefly",
        "RATE_LIMIT",
        "rate_limited",
        120,
    );
}

// ---------------------------------------------------------------------------
// 4. A client that leaves

#[test]
fn a_client_leaving_a_non_streamed_request_frees_its_slot_and_restarts_its_child() {
    let dir = TestDir::new("a_client_leaving_a_non_streamed_request_restarts_its_child");
    // As the real child: a page left generating makes the next turn stall
    // for the child's own timeout (60 s here).
    dir.write_profile("a", &knobbed(json!({"abandoned_stall_ms": 60_000})));
    let c = Coordinator::start(&dir, Builder::new().pool_size(1));
    c.wait_all_ready(secs(10.0));
    let first = c.slots()[0].clone();
    let api = first.ports.0;
    let client = open_request(c.ports.coordinator, &chat("FAKE_DELAY=30 slow", false));
    wait_until("the child to work on it", secs(5.0), || {
        in_flight(&c, 0) == 1 && stats(api).is_some_and(|s| s["processing"] == true)
    });
    drop(client);
    let left = Instant::now();
    wait_until("the coordinator to free the slot", secs(2.0), || {
        in_flight(&c, 0) == 0
    });
    let freed = left.elapsed();
    let again = wait_ready_on(&c, "a", 10.0);
    wait_until("a new child in the slot", secs(10.0), || {
        c.slots()[0].pid.is_some_and(|p| Some(p) != first.pid) && c.slots()[0].state == "ready"
    });
    let restarted = left.elapsed();
    eprintln!(
        "MEASURED: client left a non-streamed turn: slot free in {freed:.2?}, its child restarted in {restarted:.2?}"
    );
    assert_eq!(again.profile.as_deref(), Some("a"));
    let log = c.stderr();
    assert!(log.contains("restarting that child"), "{log}");
    // The next request is not stalled by the abandoned turn.
    let (r, took) = complete(&c, &chat("next", false));
    assert_eq!(r.status, 200, "{}", r.body);
    eprintln!("MEASURED: the next request answered {took:.2?} after it was sent");
    assert!(!child_log(&dir, "a").contains("stays unsent"));
}

#[test]
fn a_client_leaving_before_its_streamed_head_frees_its_place() {
    let dir = TestDir::new("a_client_leaving_before_its_streamed_head_frees_its_place");
    dir.write_profile("a", &knobbed(json!({"completion_delay_ms": 30_000})));
    // Two at once on the child: the second waits in the child's own queue
    // for its head, as the real child's requests do.
    let c = Coordinator::start(
        &dir,
        Builder::new().pool_size(1).env("MAX_INFLIGHT_PER_CHILD", 2),
    );
    c.wait_all_ready(secs(10.0));
    let api = c.slots()[0].ports.0;
    let first = open_request(c.ports.coordinator, &chat("first", false));
    wait_until("the child to work on the first", secs(5.0), || {
        stats(api).is_some_and(|s| s["processing"] == true)
    });
    let second = open_request(c.ports.coordinator, &chat("second", true));
    wait_until("the second to wait inside the child", secs(5.0), || {
        in_flight(&c, 0) == 2 && stats(api).is_some_and(|s| s["waiting"] == 1)
    });
    drop(second);
    let left = Instant::now();
    wait_until("the coordinator to free its place", secs(2.0), || {
        in_flight(&c, 0) == 1
    });
    wait_until("the child to drop it from its queue", secs(2.0), || {
        stats(api).is_some_and(|s| s["waiting"] == 0 && s["completions_abandoned"] == 1)
    });
    eprintln!(
        "MEASURED: client left while waiting for its streamed head: freed in {:.2?}",
        left.elapsed()
    );
    // The first is untouched.
    let s = stats(api).unwrap();
    assert_eq!(s["processing"], true, "{s}");
    drop(first);
    wait_until("the first to be freed too", secs(2.0), || {
        in_flight(&c, 0) == 0
    });
    // The child had both: it is started again once neither is in flight.
    wait_until("the child to be started again", secs(10.0), || {
        c.stderr().matches("started profile a pid ").count() == 2
    });
}

#[test]
fn a_client_leaving_mid_stream_frees_its_child() {
    let dir = TestDir::new("a_client_leaving_mid_stream_frees_its_child");
    dir.write_profile(
        "a",
        &knobbed(json!({"stream_events": 100, "stream_interval_ms": 500})),
    );
    let c = Coordinator::start(&dir, Builder::new().pool_size(1));
    c.wait_all_ready(secs(10.0));
    let api = c.slots()[0].ports.0;
    let mut r = BufReader::new(open_request(c.ports.coordinator, &chat("long", true)));
    assert!(read_head(&mut r).starts_with("HTTP/1.1 200"));
    next_event(&mut r).expect("a first event");
    drop(r);
    let left = Instant::now();
    wait_until("the coordinator to free the slot", secs(2.0), || {
        in_flight(&c, 0) == 0
    });
    let pid = c.slots()[0].pid;
    wait_until("the child to stop streaming", secs(2.0), || {
        stat(api, "completions_abandoned") == 1 || c.slots()[0].pid != pid
    });
    eprintln!(
        "MEASURED: client left mid-stream: the child stopped in {:.2?}",
        left.elapsed()
    );
    wait_ready_on(&c, "a", 10.0);
    assert_eq!(c.stderr().matches("started profile a pid ").count(), 2);
}

#[test]
fn the_shutdown_drain_does_not_wait_for_an_abandoned_request() {
    let dir = TestDir::new("the_shutdown_drain_does_not_wait_for_an_abandoned_request");
    dir.write_profile("a", &knobbed(json!({"completion_delay_ms": 30_000})));
    let mut c = Coordinator::start(
        &dir,
        Builder::new().pool_size(1).env("SHUTDOWN_DRAIN_S", 20),
    );
    c.wait_all_ready(secs(10.0));
    let api = c.slots()[0].ports.0;
    let client = open_request(c.ports.coordinator, &chat("slow", false));
    wait_until("the child to work on it", secs(5.0), || {
        stats(api).is_some_and(|s| s["processing"] == true)
    });
    drop(client);
    let began = Instant::now();
    c.send_signal(libc::SIGTERM);
    let status = c.wait_exit(secs(8.0));
    let took = began.elapsed();
    assert!(status.success(), "{status:?}");
    eprintln!("MEASURED: SIGTERM right after a client left: exit in {took:.2?} (drain bound 20 s)");
    assert!(took < Duration::from_secs(5), "{took:.2?}");
    assert!(
        !c.stderr()
            .contains("still in flight or queued after SHUTDOWN_DRAIN_S"),
        "{}",
        c.stderr()
    );
    wait_no_survivors(&dir, Duration::from_secs(2));
}

// ---------------------------------------------------------------------------
// 5. The stop saves the login

#[test]
fn the_stop_lets_the_launcher_save_its_login_and_writes_it_back() {
    let dir = TestDir::new("the_stop_lets_the_launcher_save_its_login_and_writes_it_back");
    // The launcher kills its SIGTERM-ignoring stream helper within the grace.
    dir.write_profile(
        "solo",
        &knobbed(json!({"real_child": true, "refresh_every": 10, "helper_kill_after_ms": 500})),
    );
    let mut c = Coordinator::start(
        &dir,
        Builder::new().pool_size(1).env("AUTH_WRITEBACK", "all"),
    );
    c.wait_all_ready(secs(10.0));
    let source = dir.profiles_dir().join("solo.json");
    assert!(!read_to_string(&source).contains("FAKE_REFRESHED"));
    let began = Instant::now();
    c.send_signal(libc::SIGTERM);
    let status = c.wait_exit(secs(10.0));
    assert!(status.success(), "{status:?}");
    eprintln!(
        "MEASURED: SIGTERM with one real-child-like child: exit in {:.2?}",
        began.elapsed()
    );
    wait_no_survivors(&dir, Duration::from_secs(2));
    let log = child_log(&dir, "solo");
    assert!(!log.contains("Failed to save cookies"), "{log}");
    assert!(log.contains("Cookies saved"), "{log}");
    let after = read_to_string(&source);
    assert!(after.contains("FAKE_REFRESHED"), "{after}");
    assert!(
        c.stderr().contains("refreshed auth state written back"),
        "{}",
        c.stderr()
    );
}

#[test]
fn the_forks_stop_takes_the_grace_and_leaves_nothing() {
    let dir = TestDir::new("the_forks_stop_takes_the_grace_and_leaves_nothing");
    dir.write_profile("fork", &knobbed(json!({"real_child": true, "fork": true})));
    let mut c = Coordinator::start(&dir, Builder::new().pool_size(1));
    c.wait_all_ready(secs(10.0));
    let began = Instant::now();
    c.send_signal(libc::SIGTERM);
    let status = c.wait_exit(secs(GRACE_S as f64 + 6.0));
    let took = began.elapsed();
    assert!(status.success(), "{status:?}");
    wait_no_survivors(&dir, Duration::from_secs(2));
    eprintln!("MEASURED: SIGTERM with a fork-like child: exit in {took:.2?} (grace {GRACE_S} s)");
    // It never exits by itself: the stop ran to the end of the grace.
    assert!(
        took >= Duration::from_secs(GRACE_S) - Duration::from_millis(300),
        "{took:.2?}"
    );
    assert!(c.stderr().contains("ignored SIGTERM"), "{}", c.stderr());
    assert!(!child_log(&dir, "fork").contains("Cookies saved"));
}

// ---------------------------------------------------------------------------
// 6. What answers say

/// Pool 1: `a` with `knobs` and `b-spare` queued, evicting after two
/// counted 5xx and rotating after two empty answers.
fn answers_setup(dir: &TestDir, knobs: Value) -> Coordinator<'_> {
    dir.write_profile("a", &knobbed(knobs));
    dir.write_profile("b-spare", &knobbed(json!({})));
    let c = Coordinator::start(
        dir,
        Builder::new()
            .pool_size(1)
            .ready_timeout_s(10)
            .env("CONSECUTIVE_5XX_TO_EVICT", 2)
            .env("EMPTY_ANSWERS_TO_ROTATE", 2)
            .env("PROFILE_COOLDOWN_S", 900),
    );
    wait_ready_on(&c, "a", 10.0);
    c
}

/// After `a` was evicted for error text: it is queued (not cooling), its
/// answers were never counted empty, and `b-spare` took the slot.
fn assert_evicted_not_empty(c: &Coordinator) {
    wait_ready_on(c, "b-spare", 10.0);
    let a = profile(c, "a");
    assert_eq!(a["state"], "queued", "{a}");
    assert_eq!(a["empty_in_a_row"], 0, "{a}");
    assert_eq!(a["counts"]["empty"], 0, "{a}");
    assert!(a.get("reason").is_none_or(Value::is_null), "{a}");
    assert_eq!(lines_with(c, "evicting it").len(), 1, "{}", c.stderr());
}

#[test]
fn error_text_counts_like_a_5xx_and_evicts_never_as_empty() {
    let dir = TestDir::new("error_text_counts_like_a_5xx_and_evicts_never_as_empty");
    let c = answers_setup(
        &dir,
        json!({"error_text": "boom", "error_text_mark": "\n\n[Error:"}),
    );
    let pid = c.slots()[0].pid;
    let (r, _) = complete(&c, &chat("one", false));
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(
        r.body.contains("[Error: AI Studio error: 500 boom]"),
        "{}",
        r.body
    );
    // One strike: still running, nothing counted empty.
    let s = &c.slots()[0];
    assert_eq!((s.pid, s.state.as_str()), (pid, "ready"));
    assert_eq!(profile(&c, "a")["empty_in_a_row"], 0);
    assert!(lines_with(&c, "evicting it").is_empty());
    let (r, _) = complete(&c, &chat("two", false));
    assert_eq!(r.status, 200, "{}", r.body);
    assert_evicted_not_empty(&c);
}

#[test]
fn a_streamed_upstream_500_text_counts_like_a_5xx_and_evicts() {
    let dir = TestDir::new("a_streamed_upstream_500_text_counts_like_a_5xx_and_evicts");
    let c = answers_setup(&dir, json!({}));
    for n in 0..2 {
        let (r, _) = complete(&c, &chat(&format!("FAKE_ERROR500 {n}"), true));
        assert_eq!(r.status, 200, "{}", r.body);
        assert!(
            r.body.contains("[Error: AI Studio error: 500"),
            "{}",
            r.body
        );
    }
    assert_evicted_not_empty(&c);
}

/// Wait until `a`'s run of empty answers is `n` (the book hears of an
/// answer just after the client got it).
fn wait_empty_in_a_row(c: &Coordinator, n: u64) {
    wait_until(&format!("{n} empty answers in a row"), secs(2.0), || {
        profile(c, "a")["empty_in_a_row"] == n
    });
}

#[test]
fn empty_outputs_rotate_the_profile_without_eviction() {
    let dir = TestDir::new("empty_outputs_rotate_the_profile_without_eviction");
    let c = answers_setup(&dir, json!({"empty_output": true}));
    let pid = c.slots()[0].pid;
    // Non-streamed: the 502 `Aux stream completed but no content provided`
    // reaches the client (no other child to try).
    let (r, _) = complete(&c, &chat("one", false));
    assert_eq!(r.status, 502, "{}", r.body);
    assert!(
        r.body
            .contains("Aux stream completed but no content provided"),
        "{}",
        r.body
    );
    wait_empty_in_a_row(&c, 1);
    let s = &c.slots()[0];
    assert_eq!(
        (s.pid, s.state.as_str()),
        (pid, "ready"),
        "one empty answer changes nothing"
    );
    // Streamed: the no-output placeholder, the second in a row. Nothing of
    // it reached the client (its head is held until content): the profile
    // cools for the model, and the spare that took its slot answers.
    let (r, _) = complete(&c, &chat("two", true));
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(!r.body.contains("generated no output"), "{}", r.body);
    assert!(
        streamed_content(&r.body).starts_with("profile=b-spare"),
        "{}",
        r.body
    );
    let a = profile(&c, "a");
    assert_eq!(a["cools_for"], json!(["gemini-test"]), "{a}");
    assert_eq!(a["model_cooldowns"][0]["reason"], "exhausted", "{a}");
    assert_eq!(a["counts"]["empty"], 2, "{a}");
    wait_ready_on(&c, "b-spare", 10.0);
    assert!(lines_with(&c, "evicting it").is_empty(), "{}", c.stderr());
}

#[test]
fn the_forks_internal_timeout_evicts_nothing_and_counts_as_empty() {
    let dir = TestDir::new("the_forks_internal_timeout_evicts_nothing_and_counts_as_empty");
    let c = answers_setup(
        &dir,
        json!({"fork_internal_timeout": true, "internal_timeout_ms": 300}),
    );
    let pid = c.slots()[0].pid;
    let (r, took) = complete(&c, &chat("one", false));
    assert_eq!(r.status, 502, "{}", r.body);
    assert!(r.body.contains("内部超时"), "{}", r.body);
    eprintln!("MEASURED: the fork's 502 internal timeout reached the client in {took:.2?}");
    wait_empty_in_a_row(&c, 1);
    let s = &c.slots()[0];
    assert_eq!((s.pid, s.state.as_str(), s.restarts), (pid, "ready", 0));
    // Streamed: its `internal_timeout` reasoning, the second in a row; held
    // (no content), so the spare that took its slot answers instead.
    let (r, _) = complete(&c, &chat("two", true));
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(!r.body.contains("internal_timeout"), "{}", r.body);
    assert!(
        streamed_content(&r.body).starts_with("profile=b-spare"),
        "{}",
        r.body
    );
    let a = profile(&c, "a");
    assert_eq!(a["cools_for"], json!(["gemini-test"]), "{a}");
    assert_eq!(a["model_cooldowns"][0]["reason"], "exhausted", "{a}");
    wait_ready_on(&c, "b-spare", 10.0);
    assert!(lines_with(&c, "evicting it").is_empty(), "{}", c.stderr());
}

// ---------------------------------------------------------------------------
// 7. CHILD_SIGNALS_FILE

#[test]
fn an_operators_quota_pattern_cools_the_profile() {
    let dir = TestDir::new("an_operators_quota_pattern_cools_the_profile");
    // `log_lines` prints `log line <i> xxx...` at start; only `a` prints any.
    dir.write_profile("a", &knobbed(json!({"log_lines": 3, "log_line_bytes": 30})));
    dir.write_profile("b", &knobbed(json!({})));
    let signals = dir.path.join("signals.txt");
    std::fs::write(&signals, "# our words\nquota: log line 2 xxxx\n").unwrap();
    let c = Coordinator::start(
        &dir,
        Builder::new()
            .pool_size(1)
            .ready_timeout_s(10)
            .env("CHILD_SIGNALS_FILE", signals.display())
            .env("PROFILE_COOLDOWN_S", 900),
    );
    wait_state(&c, "a", "cooling", 10.0);
    let a = profile(&c, "a");
    assert_eq!(a["reason"], "exhausted", "{a}");
    assert!(
        c.stderr()
            .contains("profile a: the child's log says quota exhausted"),
        "{}",
        c.stderr()
    );
    assert!(
        c.stderr()
            .contains("children's logs are read for 10 account signs"),
        "{}",
        c.stderr()
    );
    wait_ready_on(&c, "b", 10.0);
    assert_eq!(profile(&c, "b")["state"], "running");
}

#[test]
fn a_malformed_signals_file_exits_2_naming_the_line_and_the_fix() {
    let dir = TestDir::new("a_malformed_signals_file_exits_2_naming_the_line_and_the_fix");
    dir.write_profiles(&["a"]);
    let signals = dir.path.join("signals.txt");
    std::fs::write(&signals, "quota: daily limit\nsomething odd\n").unwrap();
    let r = Coordinator::run_to_exit(
        &dir,
        Builder::new().env("CHILD_SIGNALS_FILE", signals.display()),
    );
    assert_eq!(r.status.code(), Some(2), "{}", r.stderr);
    let lines = r.error_lines();
    assert_eq!(lines.len(), 1, "{}", r.stderr);
    assert!(
        lines[0].contains("CHILD_SIGNALS_FILE line 2"),
        "{}",
        lines[0]
    );
    assert!(lines[0].contains("`quota: <text>`"), "{}", lines[0]);
    assert!(dir.child_pid("a").is_none(), "a child was started");
}
