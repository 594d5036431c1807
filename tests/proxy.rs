//! The OpenAI front door, end to end: real clients talk to the real
//! coordinator, which forwards to real test children. Streaming timing,
//! failover (refused, reset, 500), no retry after the first byte, body
//! replay, deadlines, client disconnects, cancel routing, API keys, limits,
//! pass-through of paths and statuses, least-busy routing, probes under 200
//! open streams, and the official OpenAI Python SDK. The fleet queue, blame
//! and request ids have their own module, `frontdoor`.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::sync::OnceLock;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};

use crate::common::*;

pub(crate) fn knobs(k: Value) -> Value {
    json!({ "cookies": [], "testchild": k })
}

fn agent() -> &'static ureq::Agent {
    static AGENT: OnceLock<ureq::Agent> = OnceLock::new();
    AGENT.get_or_init(|| {
        ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(30)))
            .build()
            .new_agent()
    })
}

/// POST a JSON body with extra headers; the reply with its headers.
pub(crate) fn post(port: u16, path: &str, headers: &[(&str, &str)], body: &str) -> Reply {
    let mut rq = agent()
        .post(format!("http://127.0.0.1:{port}{path}"))
        .header("Content-Type", "application/json");
    for (k, v) in headers {
        rq = rq.header(*k, *v);
    }
    let mut resp = rq.send(body).unwrap_or_else(|e| panic!("POST {path}: {e}"));
    reply_of(&mut resp)
}

pub(crate) fn get(port: u16, path: &str, headers: &[(&str, &str)]) -> Reply {
    let mut rq = agent().get(format!("http://127.0.0.1:{port}{path}"));
    for (k, v) in headers {
        rq = rq.header(*k, *v);
    }
    let mut resp = rq.call().unwrap_or_else(|e| panic!("GET {path}: {e}"));
    reply_of(&mut resp)
}

fn reply_of(resp: &mut ureq::http::Response<ureq::Body>) -> Reply {
    Reply {
        status: resp.status().as_u16(),
        headers: resp
            .headers()
            .iter()
            .map(|(k, v)| (k.as_str().to_string(), v.to_str().unwrap_or("").to_string()))
            .collect(),
        body: resp.body_mut().read_to_string().unwrap_or_default(),
    }
}

pub(crate) fn chat(content: &str, stream: bool) -> String {
    json!({"model": "gemini-test", "stream": stream,
           "messages": [{"role": "user", "content": content}]})
    .to_string()
}

pub(crate) fn content_of(r: &Reply) -> String {
    r.json()["choices"][0]["message"]["content"]
        .as_str()
        .unwrap_or_else(|| panic!("no content in {:?}", r.body))
        .to_string()
}

/// Poll until `f` gives a value, up to `deadline`.
pub(crate) fn wait_until_some<T>(
    what: &str,
    deadline: Instant,
    mut f: impl FnMut() -> Option<T>,
) -> T {
    let mut out = None;
    wait_until(what, deadline, || {
        out = f();
        out.is_some()
    });
    out.expect("set when wait_until returns")
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The requests a child recorded (see the test child's `/_testchild/requests`).
pub(crate) fn child_requests(api_port: u16) -> Vec<Value> {
    let r = http_get(api_port, "/_testchild/requests").expect("child answers");
    r.json().as_array().cloned().unwrap_or_default()
}

pub(crate) fn completions_seen(api_port: u16) -> usize {
    child_requests(api_port)
        .iter()
        .filter(|r| r["path"] == "/v1/chat/completions")
        .count()
}

/// A raw HTTP/1.1 streaming request; returns the open socket after the
/// request was written.
pub(crate) fn open_stream(port: u16, body: &str, extra: &str) -> TcpStream {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s.set_nodelay(true).unwrap();
    write!(
        s,
        "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n{extra}\r\n{body}",
        body.len()
    )
    .unwrap();
    s
}

/// Read SSE `data:` lines from a raw response as they arrive, with the
/// unix-ms time each one arrived; stops at `[DONE]`, EOF or `max` events.
pub(crate) fn read_events(s: TcpStream, max: usize) -> (String, Vec<(u64, String)>) {
    let mut r = BufReader::new(s);
    let mut head = String::new();
    loop {
        let mut line = String::new();
        if r.read_line(&mut line).unwrap_or(0) == 0 {
            return (head, Vec::new());
        }
        head.push_str(&line);
        if line == "\r\n" {
            break;
        }
    }
    let mut events = Vec::new();
    let mut line = String::new();
    while events.len() < max {
        line.clear();
        match r.read_line(&mut line) {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
        if let Some(data) = line.trim_end().strip_prefix("data: ") {
            events.push((unix_ms(), data.to_string()));
            if data == "[DONE]" {
                break;
            }
        }
    }
    (head, events)
}

// ---------------------------------------------------------------------------
// Streaming

#[test]
fn stream_events_arrive_as_the_child_writes_them() {
    let dir = TestDir::new("stream_events_arrive_as_the_child_writes_them");
    dir.write_profile(
        "a",
        &knobs(json!({"stream_events": 6, "stream_interval_ms": 150})),
    );
    let c = Coordinator::start(&dir, Builder::new().pool_size(1));
    c.wait_all_ready(secs(10.0));
    let s = open_stream(
        c.ports.coordinator,
        &chat("hello streaming world", true),
        "",
    );
    let (head, events) = read_events(s, 100);
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: text/event-stream"),
        "{head}"
    );
    assert_eq!(events.last().map(|e| e.1.as_str()), Some("[DONE]"));
    let mut worst = 0i64;
    let mut text = String::new();
    for (arrived, data) in &events {
        if data == "[DONE]" {
            continue;
        }
        let v: Value = serde_json::from_str(data).unwrap();
        text.push_str(v["choices"][0]["delta"]["content"].as_str().unwrap_or(""));
        let sent = v["testchild_sent_ms"]
            .as_u64()
            .expect("the child stamps events");
        worst = worst.max(*arrived as i64 - sent as i64);
    }
    assert_eq!(text, "profile=a echo=hello streaming world");
    let span = events.last().unwrap().0 - events.first().unwrap().0;
    eprintln!("worst event delay through the proxy: {worst} ms; stream span {span} ms");
    // Buffered until the end, the first events would be ~900 ms late.
    assert!(worst < 100, "events were held back: worst delay {worst} ms");
    assert!(span >= 600, "events came together ({span} ms apart)");
}

#[test]
fn a_client_that_goes_away_frees_the_child() {
    let dir = TestDir::new("a_client_that_goes_away_frees_the_child");
    dir.write_profile(
        "a",
        &knobs(json!({"stream_events": 200, "stream_interval_ms": 50})),
    );
    let c = Coordinator::start(&dir, Builder::new().pool_size(1));
    c.wait_all_ready(secs(10.0));
    let api = c.slots()[0].ports.0;
    let s = open_stream(c.ports.coordinator, &chat("long", true), "");
    let (_, events) = read_events(s, 3);
    assert_eq!(events.len(), 3);
    // The socket is dropped here; the 10 s stream must stop at the child.
    let busy = |q: &Value| q["processing"].as_bool().unwrap_or(true);
    let took = wait_until("the child to stop streaming for nobody", secs(3.0), || {
        http_get(api, "/v1/queue").is_some_and(|r| !busy(&r.json()))
    });
    eprintln!("child freed {took:?} after the client left");
    // The child is healthy and still serves.
    let r = post(
        c.ports.coordinator,
        "/v1/chat/completions",
        &[],
        &chat("after", false),
    );
    assert_eq!(r.status, 200);
}

// ---------------------------------------------------------------------------
// Failover

/// Start `bad` (knobs) and a healthy `good` in a pool of two, plus a queued
/// healthy `spare`; returns the coordinator.
fn failover_setup<'a>(dir: &'a TestDir, bad: Value) -> Coordinator<'a> {
    dir.write_profile("a-bad", &knobs(bad));
    dir.write_profile("b-good", &knobs(json!({})));
    dir.write_profile("c-spare", &knobs(json!({})));
    let c = Coordinator::start(dir, Builder::new().pool_size(2));
    c.wait_all_ready(secs(10.0));
    c
}

/// Every request succeeds despite the bad child, which is rotated out for
/// the spare on the same ports and queued at the back.
fn assert_failover(c: &Coordinator) {
    let slot0 = c.slots()[0].clone();
    assert_eq!(slot0.profile.as_deref(), Some("a-bad"));
    for i in 0..4 {
        let r = post(
            c.ports.coordinator,
            "/v1/chat/completions",
            &[],
            &chat(&format!("n{i}"), false),
        );
        assert_eq!(r.status, 200, "request {i}: {}", r.body);
        assert!(content_of(&r).ends_with(&format!("echo=n{i}")));
    }
    wait_until("slot 0 to rotate to the spare", secs(10.0), || {
        let s = c.slots();
        s[0].profile.as_deref() == Some("c-spare") && s[0].state == "ready"
    });
    let (_, body) = c.ready();
    assert_eq!(queue(&body), vec!["a-bad".to_string()]);
    assert_eq!(
        c.slots()[0].ports,
        slot0.ports,
        "the replacement keeps the port triple"
    );
}

#[test]
fn failover_on_500_retries_elsewhere_and_rotates_the_child() {
    let dir = TestDir::new("failover_on_500");
    let c = failover_setup(&dir, json!({"fail_status": 500}));
    assert_failover(&c);
    assert!(
        c.stderr().contains("answered 500"),
        "the eviction is logged with its cause"
    );
}

#[test]
fn failover_on_reset_before_the_answer() {
    let dir = TestDir::new("failover_on_reset");
    let c = failover_setup(&dir, json!({"reset": true}));
    assert_failover(&c);
}

#[test]
fn failover_on_refused_connection() {
    let dir = TestDir::new("failover_on_refused");
    // Ready first, then the port refuses while the process lives on.
    let c = failover_setup(&dir, json!({"refuse_after_ms": 400}));
    let api = c.slots()[0].ports.0;
    wait_until("a-bad to refuse connections", secs(5.0), || {
        TcpStream::connect(("127.0.0.1", api)).is_err()
    });
    assert_failover(&c);
}

#[test]
fn the_replayed_body_and_headers_are_identical() {
    let dir = TestDir::new("the_replayed_body_and_headers_are_identical");
    let c = failover_setup(&dir, json!({"fail_status": 503}));
    let (bad_api, good_api) = (c.slots()[0].ports.0, c.slots()[1].ports.0);
    // A body past tiny_http's 1 KiB in-memory threshold, with non-ASCII text.
    let big = "ünïcödé ✓ ".repeat(5000);
    let body = chat(&big, false);
    // Both are idle, so the rotating start decides who is tried first;
    // send until one request went to the failing child first (its eviction
    // is logged) and was then replayed to the good one.
    let mut sent = 0;
    for _ in 0..4 {
        let r = post(
            c.ports.coordinator,
            "/v1/chat/completions",
            &[("Authorization", "Bearer tok"), ("X-Custom", "kept")],
            &body,
        );
        sent += 1;
        assert_eq!(r.status, 200);
        assert!(
            content_of(&r).starts_with("profile=b-good "),
            "served by the good child"
        );
        if c.stderr().contains("answered 503") {
            break;
        }
    }
    assert!(
        c.stderr().contains("answered 503"),
        "no request went to the failing child first"
    );
    let _ = bad_api;
    let seen: Vec<Value> = child_requests(good_api)
        .into_iter()
        .filter(|r| r["path"] == "/v1/chat/completions")
        .collect();
    assert_eq!(seen.len(), sent);
    let retry = seen.last().unwrap();
    assert_eq!(
        retry["body"],
        json!(body),
        "the replay carries the client's body byte for byte"
    );
    assert_eq!(retry["body_len"], json!(body.len()));
    assert_eq!(retry["headers"]["authorization"], "Bearer tok");
    assert_eq!(retry["headers"]["x-custom"], "kept");
}

#[test]
fn no_retry_once_the_client_has_bytes() {
    let dir = TestDir::new("no_retry_once_the_client_has_bytes");
    dir.write_profile("a", &knobs(json!({"die_mid_stream": true})));
    dir.write_profile("b", &knobs(json!({"die_mid_stream": true})));
    let c = Coordinator::start(&dir, Builder::new().pool_size(2));
    c.wait_all_ready(secs(10.0));
    let apis: Vec<u16> = c.slots().iter().map(|s| s.ports.0).collect();
    let s = open_stream(c.ports.coordinator, &chat("x", true), "");
    let (head, events) = read_events(s, 100);
    assert!(head.starts_with("HTTP/1.1 200"));
    assert!(
        !events.is_empty() && events.last().unwrap().1 != "[DONE]",
        "the stream is cut: {events:?}"
    );
    // The child that broke off is evicted (and its records go with it); the
    // other one must never have seen the request.
    let evicted = wait_until_some("the broken child to be evicted", secs(10.0), || {
        c.slots().iter().position(|s| s.restarts > 0)
    });
    let other = apis[1 - evicted];
    assert_eq!(
        completions_seen(other),
        0,
        "a request that already sent bytes is never retried"
    );
    assert_eq!(
        c.stderr().matches("failed: broke off its answer").count(),
        1
    );
}

#[test]
fn no_ready_child_gives_503_with_retry_after() {
    let dir = TestDir::new("no_ready_child_gives_503_with_retry_after");
    dir.write_profile("a", &knobs(json!({"never_ready": true})));
    let c = Coordinator::start(&dir, Builder::new().pool_size(1).env("QUEUE_TIMEOUT_S", 1));
    // A GET never waits: refused at once.
    let t = Instant::now();
    let r = get(c.ports.coordinator, "/v1/models", &[]);
    assert!(t.elapsed() < Duration::from_millis(500));
    assert_eq!(r.status, 503);
    assert!(r.header("Retry-After").is_some());
    let e = &r.json()["error"];
    assert_eq!(e["type"], "server_error");
    assert_eq!(e["code"], "no_ready_child");
    // A completion waits for the starting child, up to QUEUE_TIMEOUT_S.
    let t = Instant::now();
    let r = post(
        c.ports.coordinator,
        "/v1/chat/completions",
        &[],
        &chat("x", false),
    );
    assert!(t.elapsed() >= Duration::from_millis(900));
    assert_eq!(r.status, 503);
    assert!(r.header("Retry-After").is_some());
    assert_eq!(r.json()["error"]["code"], "queue_timeout");
}

/// A request both children answer with 5xx is the request's problem: its
/// client gets the second child's answer as it is, and at most one child
/// (the one that answered a gateway error first, if it did) is evicted.
#[test]
fn a_request_every_child_fails_gets_the_last_answer_as_is() {
    let dir = TestDir::new("a_request_every_child_fails_gets_the_last_answer_as_is");
    dir.write_profile("a", &knobs(json!({"fail_status": 500})));
    dir.write_profile("b", &knobs(json!({"fail_status": 500})));
    let c = Coordinator::start(&dir, Builder::new().pool_size(2));
    c.wait_all_ready(secs(10.0));
    let pids: Vec<Option<i32>> = c.slots().iter().map(|s| s.pid).collect();
    for i in 0..4 {
        let r = post(
            c.ports.coordinator,
            "/v1/chat/completions",
            &[],
            &chat(&format!("x{i}"), false),
        );
        assert_eq!(r.status, 500, "{}", r.body);
        assert_eq!(
            r.json()["error"]["code"],
            "testchild_fail",
            "the child's own body"
        );
        assert!(
            r.header("X-Testchild-Profile").is_some(),
            "the child's headers"
        );
    }
    let now: Vec<Option<i32>> = c.slots().iter().map(|s| s.pid).collect();
    assert_eq!(now, pids, "nobody is evicted for a bad request");
    assert!(c.stderr().contains("by two children"));
}

// ---------------------------------------------------------------------------
// Deadlines

#[test]
fn slow_answers_are_not_failures_but_the_deadline_holds() {
    let dir = TestDir::new("slow_answers_are_not_failures_but_the_deadline_holds");
    dir.write_profile("a", &knobs(json!({"completion_delay_ms": 1500})));
    let c = Coordinator::start(
        &dir,
        Builder::new()
            .pool_size(1)
            .env("REQUEST_TIMEOUT_S", 2)
            .env("STREAM_IDLE_TIMEOUT_S", 1),
    );
    c.wait_all_ready(secs(10.0));
    // 1.5 s of silence is longer than the stream idle limit but the idle
    // limit starts with the head, and it is within the request deadline.
    let t = Instant::now();
    let r = post(
        c.ports.coordinator,
        "/v1/chat/completions",
        &[],
        &chat("slow", false),
    );
    assert_eq!(r.status, 200);
    assert!(t.elapsed() >= Duration::from_millis(1400));
    // Two at once: the second waits in the coordinator's queue, not inside
    // the child, so its deadline only runs from when the child takes it:
    // its head comes about 3 s after it was sent, past REQUEST_TIMEOUT_S,
    // and it still succeeds. (Both are non-streamed: a streamed head
    // leaves the child as soon as its turn comes, so it would not test the
    // deadline, and its 1.5 s of silence after the head is rightly cut
    // off by the 1 s idle limit.)
    let port = c.ports.coordinator;
    let api = c.slots()[0].ports.0;
    let first =
        std::thread::spawn(move || post(port, "/v1/chat/completions", &[], &chat("1", false)));
    wait_until("the first to reach the child", secs(3.0), || {
        http_get(api, "/v1/queue").is_some_and(|r| r.json()["processing"] == true)
    });
    let t = Instant::now();
    let r = post(port, "/v1/chat/completions", &[], &chat("2", false));
    let took = t.elapsed();
    assert_eq!(first.join().unwrap().status, 200);
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(took >= Duration::from_millis(2500), "{took:?}");
    let waited: u64 = r
        .header("X-Testchild-Queue-Wait-Ms")
        .and_then(|v| v.parse().ok())
        .expect("the child says how long it queued the request");
    assert!(waited < 100, "it waited {waited} ms inside the child");
    assert_eq!(c.slots()[0].restarts, 0, "slow is not broken");
}

#[test]
fn no_head_within_the_deadline_is_a_child_failure() {
    let dir = TestDir::new("no_head_within_the_deadline_is_a_child_failure");
    dir.write_profile("a", &knobs(json!({"completion_delay_ms": 5000})));
    dir.write_profile("b", &knobs(json!({"completion_delay_ms": 5000})));
    let c = Coordinator::start(
        &dir,
        Builder::new().pool_size(2).env("REQUEST_TIMEOUT_S", 1),
    );
    c.wait_all_ready(secs(10.0));
    let t = Instant::now();
    let r = post(
        c.ports.coordinator,
        "/v1/chat/completions",
        &[],
        &chat("x", false),
    );
    let took = t.elapsed();
    assert_eq!(r.status, 504, "{}", r.body);
    assert_eq!(r.json()["error"]["code"], "upstream_timeout");
    assert!(r.header("X-Request-Id").is_some());
    // One deadline per child tried (two), never the 5 s of the stall.
    assert!(
        took < Duration::from_millis(3500),
        "the deadline held ({took:?})"
    );
    wait_until("one child to be evicted", secs(10.0), || {
        c.slots().iter().map(|s| s.restarts).sum::<u64>() == 1
    });
}

#[test]
fn a_silent_stream_is_cut_off_and_the_child_evicted() {
    let dir = TestDir::new("a_silent_stream_is_cut_off_and_the_child_evicted");
    dir.write_profile("a", &knobs(json!({"stall_mid_stream_ms": 5000})));
    dir.write_profile("b", &knobs(json!({})));
    let c = Coordinator::start(
        &dir,
        Builder::new().pool_size(1).env("STREAM_IDLE_TIMEOUT_S", 1),
    );
    c.wait_all_ready(secs(10.0));
    let t = Instant::now();
    let s = open_stream(c.ports.coordinator, &chat("x", true), "");
    let (_, events) = read_events(s, 100);
    let took = t.elapsed();
    assert!(events.last().map(|e| e.1.as_str()) != Some("[DONE]"));
    assert!(
        took < Duration::from_millis(3500),
        "cut off after the idle limit, not the stall ({took:?})"
    );
    wait_until("the silent child to be replaced", secs(10.0), || {
        let s = c.slots();
        s[0].profile.as_deref() == Some("b") && s[0].state == "ready"
    });
}

// ---------------------------------------------------------------------------
// Cancel

/// An id the coordinator knows is cancelled by the coordinator (the running
/// request's child connection is closed and its client answered at once);
/// an id it does not know is a child's own (its 7-character id, the one in
/// `/v1/queue` and in `chatcmpl-<req_id>-...`), asked of every ready child.
/// The child cancels only what still waits inside it, never the one it is
/// serving, and answers that client 499 itself.
#[test]
fn cancel_by_our_id_or_by_the_childs() {
    let dir = TestDir::new("cancel_by_our_id_or_by_the_childs");
    dir.write_profile("a", &knobs(json!({"completion_delay_ms": 4000})));
    dir.write_profile("b", &knobs(json!({"completion_delay_ms": 4000})));
    let c = Coordinator::start(&dir, Builder::new().pool_size(2));
    c.wait_all_ready(secs(10.0));
    let port = c.ports.coordinator;
    let pending = std::thread::spawn(move || {
        post(
            port,
            "/v1/chat/completions",
            &[("X-Request-Id", "req-77")],
            &chat("x", false),
        )
    });
    let busy = wait_until_some("the request to be in flight", secs(3.0), || {
        c.slots()
            .iter()
            .position(|s| c.ready().1["slots"][s.slot as usize]["in_flight"].as_u64() == Some(1))
    });
    let t = Instant::now();
    let r = post(port, "/v1/cancel/req-77", &[], "");
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["cancelled"][0]["state"], "running", "{}", r.body);
    let done = pending.join().unwrap();
    assert!(t.elapsed() < Duration::from_millis(1500), "ended early");
    assert_eq!(done.status, 409, "{}", done.body);
    assert_eq!(done.json()["error"]["code"], "request_cancelled");
    assert_eq!(done.header("X-Request-Id"), Some("req-77"));
    // The closed connection frees the child (it looks every 0.3 s), and
    // the child, whose page may still be generating, is started again.
    let (busy_api, busy_pid) = (c.slots()[busy].ports.0, c.slots()[busy].pid);
    wait_until("the cancelled child to stop", secs(3.0), || {
        http_get(busy_api, "/v1/queue").is_some_and(|r| r.json()["processing"] == false)
            || c.slots()[busy].pid != busy_pid
    });
    wait_until("the cancelled child to be started again", secs(5.0), || {
        let s = &c.slots()[busy];
        s.state == "ready" && s.pid.is_some_and(|p| Some(p) != busy_pid)
    });
    // Two requests the other child holds, unknown to us: one it serves,
    // one waiting inside it behind the first.
    let other_slot = &c.slots()[1 - busy];
    let (other, other_profile) = (other_slot.ports.0, other_slot.profile.clone().unwrap());
    let holder = open_stream(other, &chat("hold", false), "");
    wait_until("the child to serve the first", secs(3.0), || {
        http_get(other, "/v1/queue").is_some_and(|r| r.json()["processing"] == true)
    });
    let queued = std::thread::spawn(move || {
        post(other, "/v1/chat/completions", &[], &chat("inside", false))
    });
    let inner = wait_until_some("the second to wait inside the child", secs(3.0), || {
        let q = http_get(other, "/v1/queue")?.json();
        q["items"][0]["req_id"].as_str().map(String::from)
    });
    let running = http_get(other, "/v1/queue").unwrap().json()["processing_req_id"]
        .as_str()
        .expect("the served one has an id")
        .to_string();
    // The one being served cannot be cancelled by its id: no child says yes.
    let r = post(port, &format!("/v1/cancel/{running}"), &[], "");
    assert_eq!(r.status, 404, "{}", r.body);
    assert_eq!(r.json()["error"]["code"], "request_not_found");
    let t = Instant::now();
    let r = post(port, &format!("/v1/cancel/{inner}"), &[], "");
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        strings(&r.json()["acknowledged_by"]),
        vec![other_profile],
        "{}",
        r.body
    );
    let gone = queued.join().unwrap();
    assert!(
        t.elapsed() < Duration::from_millis(1500),
        "answered at once"
    );
    assert_eq!(gone.status, 499, "{}", gone.body);
    let detail = gone.json()["detail"].as_str().unwrap_or("").to_string();
    assert!(detail.starts_with(&format!("[{inner}]")), "{detail}");
    drop(holder);
    // Unknown ids go to every child; none knows it.
    let r = post(port, "/v1/cancel/nobody-knows", &[], "");
    assert_eq!(r.status, 404);
    assert_eq!(r.json()["error"]["code"], "request_not_found");
    // Only the child whose running turn was cancelled was started again.
    assert_eq!(c.slots().iter().map(|s| s.restarts).sum::<u64>(), 1);
}

// ---------------------------------------------------------------------------
// API keys

#[test]
fn api_keys_are_enforced_and_forwarded() {
    let dir = TestDir::new("api_keys_are_enforced_and_forwarded");
    dir.write_profiles(&["a"]);
    dir.write_key("first-key\n\n  second-key  \n");
    let c = Coordinator::start(&dir, Builder::new().pool_size(1));
    c.wait_all_ready(secs(10.0));
    let port = c.ports.coordinator;
    let body = chat("k", false);
    let p = |h: &[(&str, &str)]| post(port, "/v1/chat/completions", h, &body);
    // The child enforces the same keys: a 200 proves they were forwarded.
    assert_eq!(p(&[("Authorization", "Bearer first-key")]).status, 200);
    assert_eq!(p(&[("X-API-Key", "second-key")]).status, 200);
    for bad in [
        vec![],
        vec![("Authorization", "Bearer nope")],
        vec![("X-API-Key", "first-ke")],
        vec![("Authorization", "first-key")],
    ] {
        let r = p(&bad);
        assert_eq!(r.status, 401, "{bad:?}");
        assert_eq!(r.json()["error"]["code"], "invalid_api_key");
    }
    let api = c.slots()[0].ports.0;
    assert_eq!(
        completions_seen(api),
        2,
        "refused requests never reach a child"
    );
    assert_eq!(
        get(port, "/v1/models", &[]).status,
        200,
        "/v1/models is open"
    );
    assert!(
        !c.stderr().contains("first-key") && !c.stderr().contains("second-key"),
        "keys are never logged"
    );
}

#[test]
fn without_a_key_file_no_key_is_needed() {
    let dir = TestDir::new("without_a_key_file_no_key_is_needed");
    dir.write_profiles(&["a"]);
    let c = Coordinator::start(&dir, Builder::new().pool_size(1));
    c.wait_all_ready(secs(10.0));
    let r = post(
        c.ports.coordinator,
        "/v1/chat/completions",
        &[],
        &chat("open", false),
    );
    assert_eq!(r.status, 200);
}

// ---------------------------------------------------------------------------
// Limits, errors, pass-through

#[test]
fn oversized_and_malformed_requests_are_refused() {
    let dir = TestDir::new("oversized_and_malformed_requests_are_refused");
    dir.write_profiles(&["a"]);
    let c = Coordinator::start(
        &dir,
        Builder::new().pool_size(1).env("MAX_BODY_BYTES", 10_000),
    );
    c.wait_all_ready(secs(10.0));
    let port = c.ports.coordinator;
    let r = post(
        port,
        "/v1/chat/completions",
        &[],
        &chat(&"x".repeat(20_000), false),
    );
    assert_eq!(r.status, 413);
    assert_eq!(r.json()["error"]["code"], "request_too_large");
    // A declared length far beyond memory is refused at once, unread.
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let t = Instant::now();
    write!(
        s,
        "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999999999\r\n\r\n{{"
    )
    .unwrap();
    let mut answer = String::new();
    let _ = s.read_to_string(&mut answer);
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(t.elapsed() < Duration::from_secs(2));
    // Not JSON at all.
    let r = post(port, "/v1/chat/completions", &[], "{not json");
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["error"]["type"], "invalid_request_error");
    // Headers past the limit.
    let r = get(port, "/v1/models", &[("X-Big", &"a".repeat(20_000))]);
    assert_eq!(r.status, 431);
    assert_eq!(r.json()["error"]["code"], "headers_too_large");
    let many: Vec<(String, String)> = (0..200)
        .map(|i| (format!("X-H{i}"), "v".to_string()))
        .collect();
    let many: Vec<(&str, &str)> = many.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    assert_eq!(get(port, "/v1/models", &many).status, 431);
    // Not HTTP at all.
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(b"GARBAGE\r\n\r\n").unwrap();
    let mut answer = String::new();
    let _ = s.read_to_string(&mut answer);
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert!(answer.contains("\"code\":\"bad_request\""), "{answer}");
    // The coordinator is still fine.
    assert_eq!(get(port, "/v1/models", &[]).status, 200);
    assert_eq!(completions_seen(c.slots()[0].ports.0), 0);
}

#[test]
fn other_paths_statuses_and_headers_pass_through() {
    let dir = TestDir::new("other_paths_statuses_and_headers_pass_through");
    dir.write_profiles(&["a"]);
    let c = Coordinator::start(&dir, Builder::new().pool_size(1));
    c.wait_all_ready(secs(10.0));
    let port = c.ports.coordinator;
    let api = c.slots()[0].ports.0;
    let r = get(port, "/v1/models?verbose=1", &[]);
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("X-Testchild-Profile"),
        Some("a"),
        "child headers reach the client"
    );
    // A 4xx from the child is the client's answer, not a failure.
    let r = get(port, "/v1/no-such-thing", &[]);
    assert_eq!(r.status, 404);
    assert_eq!(r.header("X-Testchild-Profile"), Some("a"));
    assert_eq!(c.slots()[0].restarts, 0, "a 404 evicts nobody");
    // Hop-by-hop headers stay on their hop; end-to-end ones travel.
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(
        s,
        "GET /v1/models?x=1 HTTP/1.1\r\nHost: x\r\nConnection: close, X-Drop-Me\r\nX-Drop-Me: 1\r\nKeep-Alive: timeout=5\r\nTE: trailers\r\nProxy-Authorization: Basic Zm9v\r\nX-Keep: 2\r\n\r\n"
    )
    .unwrap();
    let mut answer = String::new();
    let _ = s.read_to_string(&mut answer);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let rec = child_requests(api)
        .into_iter()
        .rev()
        .find(|r| r["path"] == "/v1/models?x=1")
        .expect("recorded");
    let h = &rec["headers"];
    assert_eq!(h["x-keep"], "2");
    for gone in [
        "x-drop-me",
        "keep-alive",
        "te",
        "proxy-authorization",
        "accept-encoding",
        "expect",
    ] {
        assert!(h.get(gone).is_none(), "{gone} was forwarded: {h}");
    }
    assert_ne!(h["connection"], "close, X-Drop-Me");
}

// ---------------------------------------------------------------------------
// Routing and load

#[test]
fn concurrent_requests_go_to_the_least_busy_child() {
    let dir = TestDir::new("concurrent_requests_go_to_the_least_busy_child");
    dir.write_profile("a", &knobs(json!({"completion_delay_ms": 600})));
    dir.write_profile("b", &knobs(json!({"completion_delay_ms": 600})));
    let c = Coordinator::start(&dir, Builder::new().pool_size(2));
    c.wait_all_ready(secs(10.0));
    let port = c.ports.coordinator;
    let t = Instant::now();
    let handles: Vec<_> = (0..4)
        .map(|i| {
            std::thread::sleep(Duration::from_millis(30));
            std::thread::spawn(move || {
                post(
                    port,
                    "/v1/chat/completions",
                    &[],
                    &chat(&i.to_string(), false),
                )
            })
        })
        .collect();
    let mut by_profile = std::collections::BTreeMap::new();
    for h in handles {
        let r = h.join().unwrap();
        let who = content_of(&r).split(' ').next().unwrap().to_string();
        *by_profile.entry(who).or_insert(0) += 1;
    }
    assert_eq!(
        by_profile.values().copied().collect::<Vec<_>>(),
        vec![2, 2],
        "{by_profile:?}"
    );
    // Two rounds of 600 ms, not four.
    assert!(
        t.elapsed() < Duration::from_millis(2200),
        "{:?}",
        t.elapsed()
    );
}

#[test]
fn probes_stay_fast_under_200_open_streams() {
    let dir = TestDir::new("probes_stay_fast_under_200_open_streams");
    dir.write_profile(
        "a",
        &knobs(json!({"stream_events": 40, "stream_interval_ms": 200})),
    );
    dir.write_profile(
        "b",
        &knobs(json!({"stream_events": 40, "stream_interval_ms": 200})),
    );
    let c = Coordinator::start(&dir, Builder::new().pool_size(2).env("HTTP_WORKERS", 4));
    c.wait_all_ready(secs(10.0));
    let port = c.ports.coordinator;
    // 200 streams: the children serve one at a time, so 198 wait in the
    // coordinator's queue, each holding a connection (and a coordinator
    // thread) open.
    let streams: Vec<TcpStream> = (0..200)
        .map(|_| open_stream(port, &chat("x", true), ""))
        .collect();
    let mut held = 0;
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(30) && held < 200 {
        let (_, body) = c.ready();
        held = body["in_flight"].as_u64().unwrap_or(0)
            + body["requests_waiting"].as_u64().unwrap_or(0);
        std::thread::sleep(POLL);
    }
    assert_eq!(held, 200, "requests held after {:?}", t.elapsed());
    let mut worst = Duration::ZERO;
    for _ in 0..20 {
        for path in ["/live", "/ready"] {
            let t = Instant::now();
            let r = http_get(port, path).expect("probe answered");
            assert_eq!(r.status, 200);
            worst = worst.max(t.elapsed());
        }
    }
    eprintln!("worst probe latency with 200 open streams: {worst:?}");
    assert!(
        worst < Duration::from_millis(500),
        "probes stalled: {worst:?}"
    );
    drop(streams);
}

// ---------------------------------------------------------------------------
// The official SDK

#[test]
fn official_openai_sdk_works() {
    let py = python().expect(
        "no Python with the openai package: run scripts/test.sh (it creates .venv) or set AISP_PYTHON",
    );
    let dir = TestDir::new("official_openai_sdk_works");
    dir.write_profile("a", &knobs(json!({"stream_events": 4})));
    dir.write_key("sdk-key\n");
    let c = Coordinator::start(&dir, Builder::new().pool_size(1));
    c.wait_all_ready(secs(10.0));
    let script =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/openai_client.py");
    let out = std::process::Command::new(&py)
        .arg(&script)
        .arg(format!("http://127.0.0.1:{}/v1", c.ports.coordinator))
        .arg("sdk-key")
        .output()
        .expect("python runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}\n{stdout}\n{}",
        py.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_str(stdout.trim()).expect("one JSON line");
    assert_eq!(v["models"], json!(["gemini-test"]));
    assert_eq!(v["plain"], "profile=a echo=plain");
    assert_eq!(v["streamed"], "profile=a echo=streamed");
    assert!(v["stream_chunks"].as_u64().unwrap() >= 4);
    assert_eq!(v["finish_reason"], "stop");
    assert_eq!(v["wrong_key_status"], 401);
    eprintln!("openai SDK {} OK", v["sdk_version"]);
}
