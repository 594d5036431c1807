//! The front door's own rules, end to end against the real coordinator and
//! real test children: one completion per child with one fleet-wide queue
//! (waiting, work-conserving hand-off, queue full and queue timeout,
//! clients that leave while queued), request ids and cancel of queued and
//! running requests, blame (a bad request evicts nobody, counted 5xx, a
//! restart is waited for), exhaustion (empty answers and a 502 with
//! `Retry-After` cool a profile, across restarts), and the one key form the
//! child accepts.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::common::*;
use crate::proxy::{
    chat, child_requests, completions_seen, content_of, get, knobs, open_stream, post, read_events,
};

fn completion(port: u16, headers: &[(&str, &str)], text: &str) -> Reply {
    post(port, "/v1/chat/completions", headers, &chat(text, false))
}

/// The coordinator's `GET /v1/queue`.
fn queue_view(c: &Coordinator) -> Value {
    let r = get(c.ports.coordinator, "/v1/queue", &[]);
    assert_eq!(r.status, 200, "{}", r.body);
    r.json()
}

fn queue_length(c: &Coordinator) -> u64 {
    queue_view(c)["queue_length"].as_u64().unwrap_or(u64::MAX)
}

/// A child's `/_testchild/stats`.
fn child_stats(api_port: u16) -> Value {
    let r = http_get(api_port, "/_testchild/stats").expect("child answers");
    assert_eq!(r.status, 200, "{}", r.body);
    r.json()
}

/// How long the child kept a completion waiting inside it, from the
/// `X-Testchild-Queue-Wait-Ms` it puts on every completion answer.
fn queue_wait_ms(r: &Reply) -> u64 {
    r.header("X-Testchild-Queue-Wait-Ms")
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no X-Testchild-Queue-Wait-Ms in {:?}", r.headers))
}

// ---------------------------------------------------------------------------
// One completion per child, one queue

/// A coordinator with one slot, its child ready: it, its port and the
/// child's API port.
fn one_ready_slot(dir: &TestDir) -> (Coordinator<'_>, u16, u16) {
    let c = Coordinator::start(dir, Builder::new().pool_size(1));
    c.wait_all_ready(secs(10.0));
    let (port, api) = (c.ports.coordinator, c.slots()[0].ports.0);
    (c, port, api)
}

#[test]
fn six_requests_over_two_children_queue_at_the_front_door() {
    let dir = TestDir::new("six_requests_over_two_children_queue_at_the_front_door");
    dir.write_profile("a", &knobs(json!({"completion_delay_ms": 300})));
    dir.write_profile("b", &knobs(json!({"completion_delay_ms": 300})));
    let c = Coordinator::start(&dir, Builder::new().pool_size(2));
    c.wait_all_ready(secs(10.0));
    let port = c.ports.coordinator;
    // Sample the coordinator's view while the requests run.
    let stop = Arc::new(AtomicBool::new(false));
    let worst = Arc::new(AtomicU64::new(0));
    let most_waiting = Arc::new(AtomicU64::new(0));
    let sampler = {
        let (stop, worst, most_waiting) = (stop.clone(), worst.clone(), most_waiting.clone());
        std::thread::spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(20);
            while !stop.load(Ordering::SeqCst) && Instant::now() < deadline {
                let v = get(port, "/v1/queue", &[]).json();
                for s in v["slots"].as_array().into_iter().flatten() {
                    worst.fetch_max(s["completions"].as_u64().unwrap_or(0), Ordering::SeqCst);
                }
                most_waiting.fetch_max(v["queue_length"].as_u64().unwrap_or(0), Ordering::SeqCst);
                std::thread::sleep(Duration::from_millis(5));
            }
        })
    };
    let t = Instant::now();
    let clients: Vec<_> = (0..6)
        .map(|i| std::thread::spawn(move || completion(port, &[], &format!("n{i}"))))
        .collect();
    let mut waits = Vec::new();
    for (i, h) in clients.into_iter().enumerate() {
        let r = h.join().unwrap();
        assert_eq!(r.status, 200, "request {i}: {}", r.body);
        assert!(content_of(&r).ends_with(&format!("echo=n{i}")));
        waits.push(queue_wait_ms(&r));
    }
    let took = t.elapsed();
    stop.store(true, Ordering::SeqCst);
    sampler.join().unwrap();
    eprintln!(
        "6 completions of 300 ms over 2 children: {took:?}; most waiting {}; waits inside the children {waits:?} ms",
        most_waiting.load(Ordering::SeqCst)
    );
    assert_eq!(worst.load(Ordering::SeqCst), 1, "never two on one child");
    assert!(
        most_waiting.load(Ordering::SeqCst) >= 2,
        "the rest waited in our queue"
    );
    // None waited inside a child: each was sent when its child was free.
    assert!(waits.iter().all(|&w| w < 100), "queued inside: {waits:?}");
    // Three rounds of 300 ms (one child serves one at a time), and no
    // more than twice that: the hand-off wastes no time. Functional, not
    // a benchmark, so the upper bound is generous.
    assert!(took >= Duration::from_millis(850), "{took:?}");
    assert!(took < Duration::from_millis(6 * 300), "{took:?}");
    for s in c.slots() {
        let st = child_stats(s.ports.0);
        assert_eq!(st["max_concurrent"], 1, "{st}");
        assert_eq!(
            st["completions_succeeded"], 3,
            "each child took its share: {st}"
        );
    }
}

#[test]
fn a_client_that_leaves_the_queue_never_reaches_a_child() {
    let dir = TestDir::new("a_client_that_leaves_the_queue_never_reaches_a_child");
    dir.write_profile("a", &knobs(json!({"completion_delay_ms": 800})));
    let (c, port, api) = one_ready_slot(&dir);
    let holder = std::thread::spawn(move || completion(port, &[], "first"));
    wait_until("the child to be busy", secs(3.0), || {
        completions_seen(api) == 1
    });
    let quitter = open_stream(port, &chat("never", false), "");
    wait_until("the second to queue", secs(3.0), || queue_length(&c) == 1);
    drop(quitter);
    let took = wait_until("the queue to empty", secs(2.0), || queue_length(&c) == 0);
    eprintln!("a queued client that hung up left the queue after {took:?}");
    assert!(took < Duration::from_millis(500), "{took:?}");
    assert_eq!(holder.join().unwrap().status, 200);
    // The child is free again and the next request is served at once.
    let r = completion(port, &[], "third");
    assert_eq!(r.status, 200);
    let seen: Vec<String> = child_requests(api)
        .iter()
        .filter(|r| r["path"] == "/v1/chat/completions")
        .map(|r| r["body"].as_str().unwrap_or("").to_string())
        .collect();
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert!(seen.iter().all(|b| !b.contains("never")), "{seen:?}");
}

#[test]
fn queue_full_and_queue_timeout_carry_retry_after() {
    let dir = TestDir::new("queue_full_and_queue_timeout_carry_retry_after");
    dir.write_profile("a", &knobs(json!({"completion_delay_ms": 2500})));
    let c = Coordinator::start(
        &dir,
        Builder::new()
            .pool_size(1)
            .env("MAX_QUEUE", 1)
            .env("QUEUE_TIMEOUT_S", 1),
    );
    c.wait_all_ready(secs(10.0));
    let port = c.ports.coordinator;
    let api = c.slots()[0].ports.0;
    let holder = std::thread::spawn(move || completion(port, &[], "holder"));
    wait_until("the child to be busy", secs(3.0), || {
        completions_seen(api) == 1
    });
    let waiter = std::thread::spawn(move || {
        let t = Instant::now();
        (completion(port, &[], "waiter"), t.elapsed())
    });
    wait_until("one to queue", secs(3.0), || queue_length(&c) == 1);
    let t = Instant::now();
    let full = completion(port, &[("X-Request-Id", "third")], "third");
    assert!(t.elapsed() < Duration::from_millis(500), "refused at once");
    assert_eq!(full.status, 503, "{}", full.body);
    assert_eq!(full.json()["error"]["code"], "queue_full");
    assert!(full.header("Retry-After").is_some());
    assert_eq!(full.header("X-Request-Id"), Some("third"));
    let (timed_out, waited) = waiter.join().unwrap();
    assert_eq!(timed_out.status, 503, "{}", timed_out.body);
    assert_eq!(timed_out.json()["error"]["code"], "queue_timeout");
    assert!(timed_out.header("Retry-After").is_some());
    assert!(
        waited >= Duration::from_millis(950) && waited < Duration::from_millis(2000),
        "{waited:?}"
    );
    assert_eq!(holder.join().unwrap().status, 200);
    assert_eq!(
        completions_seen(api),
        1,
        "refused requests never reach the child"
    );
}

#[test]
fn gets_never_wait_behind_completions() {
    let dir = TestDir::new("gets_never_wait_behind_completions");
    dir.write_profile("a", &knobs(json!({"completion_delay_ms": 1500})));
    let (c, port, api) = one_ready_slot(&dir);
    let holders: Vec<_> = (0..2)
        .map(|i| std::thread::spawn(move || completion(port, &[], &i.to_string())))
        .collect();
    wait_until("one running, one queued", secs(3.0), || {
        completions_seen(api) == 1 && queue_length(&c) == 1
    });
    let t = Instant::now();
    let r = get(port, "/v1/models", &[]);
    assert_eq!(r.status, 200);
    assert!(
        t.elapsed() < Duration::from_millis(500),
        "{:?}",
        t.elapsed()
    );
    let v = queue_view(&c);
    assert_eq!(v["slots"][0]["completions"], 1, "{v}");
    assert!(v["oldest_wait_ms"].as_u64().is_some(), "{v}");
    assert_eq!(v["max_inflight_per_child"], 1);
    for h in holders {
        assert_eq!(h.join().unwrap().status, 200);
    }
}

// ---------------------------------------------------------------------------
// Blame

/// Every child answers 500 to an unknown model, as the real child does: the
/// request is the problem. Its client gets the child's answer, and the
/// children stay.
#[test]
fn a_request_every_child_fails_evicts_nobody() {
    let dir = TestDir::new("a_request_every_child_fails_evicts_nobody");
    for p in ["a", "b", "c", "d"] {
        dir.write_profile(p, &knobs(json!({})));
    }
    let c = Coordinator::start(&dir, Builder::new().pool_size(4));
    c.wait_all_ready(secs(10.0));
    let before: Vec<Option<i32>> = c.slots().iter().map(|s| s.pid).collect();
    let body = json!({"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]});
    let r = post(
        c.ports.coordinator,
        "/v1/chat/completions",
        &[],
        &body.to_string(),
    );
    assert_eq!(r.status, 500, "{}", r.body);
    let detail = r.json()["detail"].as_str().unwrap_or("").to_string();
    assert!(
        detail.starts_with('[')
            && detail.contains("] Request processing error: ")
            && detail.contains("gpt-4o"),
        "the child's body: {}",
        r.body
    );
    assert!(
        r.header("X-Testchild-Profile").is_some(),
        "the child's headers"
    );
    assert!(r.header("X-Request-Id").is_some());
    // Give a wrong eviction time to show.
    std::thread::sleep(Duration::from_millis(300));
    let after = c.slots();
    let untouched = after
        .iter()
        .zip(&before)
        .filter(|(s, b)| s.pid == **b && s.state == "ready")
        .count();
    assert!(untouched >= 3, "at most one child may go: {after:?}");
    assert_eq!(
        after.iter().map(|s| s.restarts).sum::<u64>(),
        0,
        "{after:?}"
    );
    // Two children were asked, no more.
    let asked: usize = after.iter().map(|s| completions_seen(s.ports.0)).sum();
    assert_eq!(asked, 2);
}

/// A child that fails requests others serve is counted, and evicted after
/// CONSECUTIVE_5XX_TO_EVICT of them in a row.
#[test]
fn consecutive_500s_evict_a_child_others_serve_fine() {
    let dir = TestDir::new("consecutive_500s_evict_a_child_others_serve_fine");
    dir.write_profile("a-bad", &knobs(json!({"fail_status": 500})));
    dir.write_profile("b-good", &knobs(json!({})));
    dir.write_profile("c-spare", &knobs(json!({})));
    let c = Coordinator::start(
        &dir,
        Builder::new()
            .pool_size(2)
            .env("CONSECUTIVE_5XX_TO_EVICT", 3),
    );
    c.wait_all_ready(secs(10.0));
    let port = c.ports.coordinator;
    let (bad_api, bad_pid) = (c.slots()[0].ports.0, c.slots()[0].pid);
    // Each request tries a-bad first (equally idle children, slot 0 first),
    // is answered 500 and is then served by b-good.
    for i in 0..2 {
        let r = completion(port, &[], &format!("n{i}"));
        assert_eq!(r.status, 200, "{}", r.body);
        assert!(content_of(&r).starts_with("profile=b-good "));
    }
    assert_eq!(
        completions_seen(bad_api),
        2,
        "a-bad was tried first each time"
    );
    std::thread::sleep(Duration::from_millis(200));
    let s = c.slots();
    assert_eq!(
        (s[0].pid, s[0].state.as_str()),
        (bad_pid, "ready"),
        "two are not enough"
    );
    let r = completion(port, &[], "n2");
    assert_eq!(r.status, 200, "{}", r.body);
    wait_until("a-bad to be rotated out", secs(10.0), || {
        let s = c.slots();
        s[0].profile.as_deref() == Some("c-spare") && s[0].state == "ready"
    });
    assert!(c.stderr().contains("3 times in a row"));
}

#[test]
fn a_429_rotates_the_profile_out_and_the_request_succeeds() {
    let dir = TestDir::new("a_429_rotates_the_profile_out_and_the_request_succeeds");
    dir.write_profile("a-spent", &knobs(json!({"fail_status": 429})));
    dir.write_profile("b-good", &knobs(json!({})));
    dir.write_profile("c-spare", &knobs(json!({})));
    let c = Coordinator::start(&dir, Builder::new().pool_size(2));
    c.wait_all_ready(secs(10.0));
    let r = completion(c.ports.coordinator, &[], "x");
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(content_of(&r).starts_with("profile=b-good "));
    wait_until("a-spent to be rotated out", secs(10.0), || {
        let s = c.slots();
        s[0].profile.as_deref() == Some("c-spare") && s[0].state == "ready"
    });
    assert!(c.stderr().contains("quota exhausted"));
}

#[test]
fn a_request_during_a_restart_is_served_by_the_replacement() {
    let dir = TestDir::new("a_request_during_a_restart_is_served_by_the_replacement");
    dir.write_profile("a", &knobs(json!({})));
    dir.write_profile("b", &knobs(json!({"ready_after_ms": 700})));
    let c = Coordinator::start(&dir, Builder::new().pool_size(1));
    c.wait_all_ready(secs(10.0));
    let pid = c.slots()[0].pid.expect("ready child has a pid");
    send_signal_to(pid, libc::SIGKILL);
    wait_until("the slot to restart", secs(5.0), || {
        c.slots()[0].state != "ready"
    });
    let t = Instant::now();
    let r = completion(c.ports.coordinator, &[], "patience");
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(content_of(&r).starts_with("profile=b "), "{}", r.body);
    eprintln!("served by the replacement after {:?}", t.elapsed());
}

// ---------------------------------------------------------------------------
// Request ids and cancel

#[test]
fn request_ids_are_echoed_or_made_up() {
    let dir = TestDir::new("request_ids_are_echoed_or_made_up");
    dir.write_profile("a", &knobs(json!({"completion_delay_ms": 300})));
    dir.write_profile("b", &knobs(json!({"completion_delay_ms": 300})));
    dir.write_key("k\n");
    let c = Coordinator::start(&dir, Builder::new().pool_size(2));
    c.wait_all_ready(secs(10.0));
    let port = c.ports.coordinator;
    let auth = ("Authorization", "Bearer k");
    let r = completion(port, &[auth, ("X-Request-Id", "mine-1")], "x");
    assert_eq!(r.status, 200);
    assert_eq!(r.header("X-Request-Id"), Some("mine-1"));
    let made = completion(port, &[auth], "x");
    let id = made
        .header("X-Request-Id")
        .expect("an id is made up")
        .to_string();
    assert!(id.starts_with("aisp-"), "{id}");
    let again = completion(port, &[auth], "x");
    assert_ne!(again.header("X-Request-Id"), Some(id.as_str()), "unique");
    // The child saw the same id the client got.
    let seen: Vec<String> = c
        .slots()
        .iter()
        .flat_map(|s| child_requests(s.ports.0))
        .filter_map(|r| r["headers"]["x-request-id"].as_str().map(String::from))
        .collect();
    assert!(
        seen.contains(&id) && seen.contains(&"mine-1".to_string()),
        "{seen:?}"
    );
    // Errors the coordinator makes carry it too.
    let denied = completion(port, &[("X-Request-Id", "bad-key")], "x");
    assert_eq!(denied.status, 401);
    assert_eq!(denied.header("X-Request-Id"), Some("bad-key"));
    let nf = post(port, "/v1/cancel/zzz", &[auth, ("X-Request-Id", "c-1")], "");
    assert_eq!(nf.status, 404);
    assert_eq!(nf.header("X-Request-Id"), Some("c-1"));
    // Two clients with the same id do not disturb each other.
    let both: Vec<_> = (0..2)
        .map(|i| {
            std::thread::spawn(move || {
                completion(port, &[auth, ("X-Request-Id", "same")], &format!("d{i}"))
            })
        })
        .collect();
    for (i, h) in both.into_iter().enumerate() {
        let r = h.join().unwrap();
        assert_eq!(r.status, 200, "{}", r.body);
        assert!(content_of(&r).ends_with(&format!("echo=d{i}")));
        assert_eq!(r.header("X-Request-Id"), Some("same"));
    }
}

#[test]
fn cancel_a_queued_request() {
    let dir = TestDir::new("cancel_a_queued_request");
    dir.write_profile("a", &knobs(json!({"completion_delay_ms": 1500})));
    let (c, port, api) = one_ready_slot(&dir);
    let holder = std::thread::spawn(move || completion(port, &[], "holder"));
    wait_until("the child to be busy", secs(3.0), || {
        completions_seen(api) == 1
    });
    let queued = std::thread::spawn(move || {
        let r = completion(port, &[("X-Request-Id", "q-1")], "queued");
        (r, Instant::now())
    });
    wait_until("it to queue", secs(3.0), || queue_length(&c) == 1);
    let r = post(port, "/v1/cancel/q-1", &[], "");
    let cancelled_at = Instant::now();
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["cancelled"][0]["state"], "queued", "{}", r.body);
    let (answer, answered_at) = queued.join().unwrap();
    assert_eq!(answer.status, 409, "{}", answer.body);
    assert_eq!(answer.json()["error"]["code"], "request_cancelled");
    assert_eq!(answer.header("X-Request-Id"), Some("q-1"));
    assert!(answered_at.duration_since(cancelled_at) < Duration::from_millis(500));
    assert_eq!(queue_length(&c), 0);
    assert_eq!(holder.join().unwrap().status, 200);
    assert_eq!(
        completions_seen(api),
        1,
        "the cancelled request never reached the child"
    );
}

#[test]
fn cancel_a_running_stream_closes_the_child_connection() {
    let dir = TestDir::new("cancel_a_running_stream_closes_the_child_connection");
    dir.write_profile(
        "a",
        &knobs(json!({"stream_events": 100, "stream_interval_ms": 50})),
    );
    let (c, port, api) = one_ready_slot(&dir);
    let s = open_stream(port, &chat("long", true), "X-Request-Id: s-1\r\n");
    let reader = std::thread::spawn(move || read_events(s, 1000));
    wait_until("the stream to run", secs(3.0), || {
        http_get(api, "/v1/queue").is_some_and(|r| r.json()["processing"] == true)
    });
    std::thread::sleep(Duration::from_millis(200));
    let r = post(port, "/v1/cancel/s-1", &[], "");
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["cancelled"][0]["state"], "running");
    let (head, events) = reader.join().unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(
        !events.is_empty() && events.len() < 100,
        "cut mid-stream after {} events",
        events.len()
    );
    assert_ne!(events.last().map(|e| e.1.as_str()), Some("[DONE]"));
    // The child notices the closed connection and stops working for nobody;
    // its page may still be generating, so it is started again.
    let pid = c.slots()[0].pid;
    wait_until("the child to stop", secs(3.0), || {
        http_get(api, "/v1/queue").is_some_and(|r| r.json()["processing"] == false)
            || c.slots()[0].pid != pid
    });
    assert_eq!(completion(port, &[], "after").status, 200);
    assert_eq!(c.slots()[0].restarts, 1, "started again");
    assert!(!c.stderr().contains("evicting"), "a cancel blames nobody");
}

// ---------------------------------------------------------------------------
// Keys

/// Whatever form of a valid key the client uses, the child gets exactly
/// `Authorization: Bearer <key>` and no other credentials, so it never
/// refuses what the coordinator let in.
#[test]
fn every_accepted_key_form_reaches_the_child_as_one_bearer() {
    let dir = TestDir::new("every_accepted_key_form_reaches_the_child_as_one_bearer");
    dir.write_profiles(&["a"]);
    dir.write_key("k1\nk2\n");
    let (_c, port, api) = one_ready_slot(&dir);
    let accepted: &[(&[(&str, &str)], &str)] = &[
        (&[("Authorization", "Bearer k1")], "Bearer k1"),
        (&[("Authorization", "bearer k1")], "Bearer k1"),
        (&[("Authorization", "BEARER   k2 ")], "Bearer k2"),
        (&[("X-API-Key", "k2")], "Bearer k2"),
        (
            &[("Authorization", "Bearer nope"), ("X-API-Key", "k1")],
            "Bearer k1",
        ),
        (
            &[("Authorization", "Bearer k2"), ("X-API-Key", "nope")],
            "Bearer k2",
        ),
        (
            &[("Authorization", "Bearer k1"), ("X-API-Key", "k2")],
            "Bearer k1",
        ),
    ];
    for (i, (headers, forwarded)) in accepted.iter().enumerate() {
        let marker = format!("form{i}");
        let r = completion(port, headers, &marker);
        assert_eq!(r.status, 200, "{headers:?}: {}", r.body);
        let rec = child_requests(api)
            .into_iter()
            .rev()
            .find(|r| r["body"].as_str().is_some_and(|b| b.contains(&marker)))
            .expect("recorded");
        let h = &rec["headers"];
        assert_eq!(h["authorization"], *forwarded, "{headers:?}: {h}");
        assert!(h.get("x-api-key").is_none(), "{headers:?}: {h}");
    }
    for bad in [
        vec![],
        vec![("Authorization", "k1")],
        vec![("Authorization", "Basic k1")],
        vec![("Authorization", "Bearer k3"), ("X-API-Key", "k4")],
    ] {
        let r = completion(port, &bad, "refused");
        assert_eq!(r.status, 401, "{bad:?}");
        assert_eq!(r.json()["error"]["code"], "invalid_api_key");
    }
    assert_eq!(completions_seen(api), accepted.len());
    // /v1/models stays open, and a wrong key does not reach the child.
    let r = get(port, "/v1/models", &[("Authorization", "Bearer wrong")]);
    assert_eq!(r.status, 200);
    let rec = child_requests(api)
        .into_iter()
        .rev()
        .find(|r| r["path"] == "/v1/models")
        .expect("recorded");
    assert!(rec["headers"].get("authorization").is_none());
}

// ---------------------------------------------------------------------------
// Raw HTTP edge: an HTTP/1.0 client waiting in the queue is served.

#[test]
fn an_http10_client_waits_and_is_served() {
    let dir = TestDir::new("an_http10_client_waits_and_is_served");
    dir.write_profile("a", &knobs(json!({"completion_delay_ms": 400})));
    let (_c, port, api) = one_ready_slot(&dir);
    let holder = std::thread::spawn(move || completion(port, &[], "first"));
    wait_until("the child to be busy", secs(3.0), || {
        completions_seen(api) == 1
    });
    let body = chat("old", false);
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "POST /v1/chat/completions HTTP/1.0\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut answer = String::new();
    let _ = s.read_to_string(&mut answer);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains("echo=old"), "{answer}");
    assert_eq!(holder.join().unwrap().status, 200);
}

// ---------------------------------------------------------------------------
// Exhaustion: empty answers and Retry-After cool a profile down

fn now_unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// One profile of `/ready`'s `profiles` list.
fn profile_view(c: &Coordinator, name: &str) -> Value {
    let (_, ready) = c.ready();
    ready["profiles"]
        .as_array()
        .and_then(|ps| ps.iter().find(|p| p["profile"] == name).cloned())
        .unwrap_or_else(|| panic!("no profile {name} in {ready}"))
}

/// A streamed completion read to its end: (status line and headers, the
/// content of its deltas, whether it ended with `[DONE]`).
fn streamed(port: u16, text: &str) -> (String, String, bool) {
    let (head, events) = read_events(open_stream(port, &chat(text, true), ""), 1000);
    let done = events.last().is_some_and(|e| e.1 == "[DONE]");
    let content = events
        .iter()
        .filter(|e| e.1 != "[DONE]")
        .filter_map(|e| serde_json::from_str::<Value>(&e.1).ok())
        .filter_map(|v| {
            v["choices"][0]["delta"]["content"]
                .as_str()
                .map(String::from)
        })
        .collect();
    (head, content, done)
}

fn file_mode(path: &std::path::Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o777
}

/// The child's sign of an exhausted account is a streamed 200 with nothing
/// in it. EMPTY_ANSWERS_TO_ROTATE of them in a row retire the profile: its
/// slot drains and rotates to the next one, the profile cools for
/// PROFILE_COOLDOWN_S, and that survives a restart of the coordinator and a
/// crash of the child now on the slot.
#[test]
fn empty_answers_rotate_and_cool_a_profile() {
    let dir = TestDir::new("empty_answers_rotate_and_cool_a_profile");
    dir.write_profile("a", &knobs(json!({"exhaust_after": 1})));
    dir.write_profile("b", &knobs(json!({})));
    dir.write_profile("c", &knobs(json!({})));
    let builder = Builder::new()
        .pool_size(1)
        .env("EMPTY_ANSWERS_TO_ROTATE", 2)
        .env("PROFILE_COOLDOWN_S", 600);
    let c = Coordinator::start(&dir, builder.clone());
    c.wait_all_ready(secs(10.0));
    assert_eq!(c.slots()[0].profile.as_deref(), Some("a"));
    let port = c.ports.coordinator;
    let r = completion(port, &[], "served");
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(content_of(&r), "profile=a echo=served");
    // a's account is now spent: its streams come back empty.
    let (head, content, done) = streamed(port, "empty-1");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(content.is_empty() && done, "{content:?} done={done}");
    // The verdict reaches the book just after the answer went out.
    wait_until("the empty answer to be counted", secs(3.0), || {
        profile_view(&c, "a")["empty_in_a_row"] == 1
    });
    let a = profile_view(&c, "a");
    assert_eq!(a["state"], "running", "{a}");
    assert_eq!(
        c.slots()[0].profile.as_deref(),
        Some("a"),
        "one empty answer is not enough"
    );
    // The second in a row retires it; nothing of it reached the client (its
    // head is held until content), so the next profile on the slot answers.
    let retired_at = now_unix_ms();
    let (head, content, done) = streamed(port, "empty-2");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(
        content.starts_with("profile=b ") && done,
        "{content:?} done={done}"
    );
    wait_until("slot 0 to rotate away from a", secs(10.0), || {
        let s = &c.slots()[0];
        s.profile.as_deref() != Some("a") && s.state == "ready"
    });
    let log = c.stderr();
    assert!(
        log.lines()
            .any(|l| l.contains("stopping profile a") && l.contains("exhausted")),
        "{log}"
    );
    // Its answers named their model: that model cools (the account would
    // serve any other).
    let a = profile_view(&c, "a");
    assert_eq!(a["state"], "queued", "{a}");
    assert_eq!(a["cools_for"], json!(["gemini-test"]), "{a}");
    let cool = &a["model_cooldowns"][0];
    assert_eq!(cool["reason"], "exhausted", "{a}");
    let until = cool["until_unix_ms"].as_u64().expect("until when");
    let expect = retired_at + 600_000;
    assert!(
        until.abs_diff(expect) < 5_000,
        "until {until}, expected about {expect}"
    );
    let state = dir.cache_dir().join("profile-state.json");
    assert_eq!(file_mode(&state), 0o600);
    let first_slot_profile = c.slots()[0].profile.clone();
    drop(c);

    // A new coordinator on the same cache directory keeps a cooling.
    let c = Coordinator::start(&dir, builder);
    c.wait_all_ready(secs(10.0));
    let s = c.slots();
    assert_ne!(s[0].profile.as_deref(), Some("a"), "{s:?}");
    assert_eq!(
        s[0].profile, first_slot_profile,
        "the first eligible profile, in name order"
    );
    let a = profile_view(&c, "a");
    assert_eq!(a["cools_for"], json!(["gemini-test"]), "{a}");
    assert_eq!(
        a["model_cooldowns"][0]["until_unix_ms"].as_u64(),
        Some(until),
        "the same cooldown: {a}"
    );
    assert_eq!(file_mode(&state), 0o600);

    // The child on the slot dies: its replacement is never a.
    let pid = s[0].pid.expect("a ready child has a pid");
    send_signal_to(pid, libc::SIGKILL);
    wait_until("the slot to come back", secs(10.0), || {
        let s = &c.slots()[0];
        assert_ne!(s.profile.as_deref(), Some("a"), "back on a: {s:?}");
        s.state == "ready" && s.pid.is_some_and(|p| p != pid)
    });
    assert_eq!(profile_view(&c, "a")["cools_for"], json!(["gemini-test"]));
    let r = completion(c.ports.coordinator, &[], "after");
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(!content_of(&r).starts_with("profile=a "), "{}", r.body);
}

/// A non-streamed answer of an exhausted account is a 502 with
/// `Retry-After`: the profile cools for exactly that long (not
/// PROFILE_COOLDOWN_S), and the slot rotates away from it.
#[test]
fn a_502_with_retry_after_cools_the_profile_that_long() {
    let dir = TestDir::new("a_502_with_retry_after_cools_the_profile_that_long");
    dir.write_profile(
        "a",
        &knobs(json!({"exhaust_after": 1, "exhaust_retry_after_s": 120})),
    );
    dir.write_profile("b", &knobs(json!({})));
    let c = Coordinator::start(
        &dir,
        Builder::new().pool_size(1).env("PROFILE_COOLDOWN_S", 3600),
    );
    c.wait_all_ready(secs(10.0));
    let port = c.ports.coordinator;
    assert_eq!(completion(port, &[], "served").status, 200);
    let sent = now_unix_ms();
    let r = completion(port, &[], "spent");
    eprintln!("the exhausted request got {} {}", r.status, r.body);
    // The slot drains at once, so the retry waits for the replacement on
    // the one slot (b) instead of finding no other child.
    let served_by_b = r.status == 200 && content_of(&r) == "profile=b echo=spent";
    assert!(served_by_b, "{} {:?} {}", r.status, r.headers, r.body);
    wait_until("a to cool for its model", secs(10.0), || {
        profile_view(&c, "a")["cools_for"] == json!(["gemini-test"])
    });
    let a = profile_view(&c, "a");
    let cool = &a["model_cooldowns"][0];
    assert_eq!(cool["reason"], "exhausted", "{a}");
    let until = cool["until_unix_ms"].as_u64().expect("until when");
    let expect = sent + 120_000;
    assert!(
        until >= sent + 119_000 && until <= now_unix_ms() + 121_000,
        "until {until}, expected about {expect}"
    );
    wait_until("slot 0 to rotate to b", secs(10.0), || {
        let s = &c.slots()[0];
        s.profile.as_deref() == Some("b") && s.state == "ready"
    });
}
