//! The supervisor core, end to end: the real coordinator supervising real
//! test children. Startup and probes, rotation (exit, readiness timeout),
//! the profile invariant under a kill storm, crash-loop backoff, process
//! group kills and shutdown, configuration and hydration errors, child log
//! rotation, probes under slow clients, and what a child is given.
//!
//! Eviction (a child answering >= 500 to a proxied request) has no external
//! trigger until the proxy exists; it is covered by unit tests in
//! `src/watcher.rs`, and end to end by the proxy's tests.

use std::collections::BTreeSet;
use std::io::Write;
use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::common::*;

fn profile_with(knobs: Value) -> Value {
    json!({ "cookies": [], "testchild": knobs })
}

fn profile_names(v: &Value) -> Vec<String> {
    let mut n = strings(v);
    n.sort();
    n
}

// ---------------------------------------------------------------------------
// Startup and probes

#[test]
fn startup_reaches_ready_and_probes_agree() {
    let dir = TestDir::new("startup_reaches_ready_and_probes_agree");
    dir.write_profiles(&["a", "b"]);
    let c = Coordinator::start(&dir, Builder::new());

    let body = c.wait_all_ready(secs(10.0));
    assert_eq!(profile_names(&body["ready_children"]), ["a", "b"]);
    assert_eq!(body["status"], "ready");
    assert_eq!(body["unhealthy_children"], json!([]));
    assert_eq!(body["total_children"], 2);
    assert_eq!(body["shutting_down"], false);
    assert_eq!(body["queue_length"], 0);
    for (i, s) in slots(&body).iter().enumerate() {
        assert_eq!(s.slot, i as u64);
        assert_eq!(s.ports, c.ports.slot(i as u16), "slot {i} ports");
        assert!(s.pid.is_some_and(|p| p > 0), "slot {i} pid");
        assert_eq!(s.restarts, 0);
    }

    let live = c.get("/live").expect("/live answers");
    assert_eq!(live.status, 200);
    assert_eq!(live.json(), json!({"status": "alive"}));

    // Everything is settled, so /ready and /health describe the same state.
    let ready = c.get("/ready").expect("/ready answers");
    let health = c.get("/health").expect("/health answers");
    assert_eq!((ready.status, health.status), (200, 200));
    assert_eq!(ready.json(), health.json());
    assert!(ready.header("X-Deprecation-Notice").is_none());
    let notice = health
        .header("X-Deprecation-Notice")
        .expect("/health carries X-Deprecation-Notice");
    assert!(notice.contains("/ready"), "{notice}");
}

#[test]
fn ready_is_503_degraded_while_no_child_is_ready() {
    let dir = TestDir::new("ready_is_503_degraded_while_no_child_is_ready");
    dir.write_profiles(&["a", "b"]);
    let c = Coordinator::start(&dir, Builder::new().env("TESTCHILD_NEVER_READY", "true"));
    wait_until("both children to be started", secs(10.0), || {
        c.slots()
            .iter()
            .all(|s| s.state == "starting" && s.pid.is_some())
    });
    let (status, body) = c.ready();
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["status"], "degraded");
    assert_eq!(body["ready_children"], json!([]));
    assert_eq!(profile_names(&body["unhealthy_children"]), ["a", "b"]);
    let health = c.get("/health").expect("/health answers");
    assert_eq!(health.status, 503);
    assert_eq!(c.get("/live").map(|r| r.status), Some(200));
}

// ---------------------------------------------------------------------------
// Rotation

#[test]
fn rotation_on_exit_keeps_the_ports_and_queues_the_profile() {
    let dir = TestDir::new("rotation_on_exit_keeps_the_ports_and_queues_the_profile");
    dir.write_profile(
        "a",
        &profile_with(json!({"exit_after_ms": 1000, "exit_code": 1})),
    );
    dir.write_profiles(&["b", "c"]);
    let c = Coordinator::start(&dir, Builder::new());

    // The first snapshot: a and b run, c waits.
    let (_, first) = c.ready();
    assert_eq!(queue(&first), ["c"]);
    let before = slots(&first);
    assert_eq!(before[0].profile.as_deref(), Some("a"));
    assert_eq!(before[1].profile.as_deref(), Some("b"));

    let body = {
        let mut last = Value::Null;
        wait_until("slot 0 to run c, ready", secs(10.0), || {
            let (_, b) = c.ready();
            let s = slots(&b);
            let done = s[0].profile.as_deref() == Some("c") && s[0].state == "ready";
            last = b;
            done
        });
        last
    };
    let after = slots(&body);
    assert_eq!(after[0].ports, c.ports.slot(0), "slot 0 keeps its triple");
    assert_eq!(after[0].restarts, 1);
    assert_eq!(queue(&body), ["a"], "a goes to the back of the queue");
    assert_eq!(after[1].profile.as_deref(), Some("b"), "slot 1 untouched");
    assert_eq!(after[1].restarts, 0);
    let b_pid = dir.child_pid("b").expect("b wrote its pid");
    assert_eq!(
        after[1].pid,
        Some(b_pid),
        "slot 1's child was not restarted"
    );
    let a_pid = dir.child_pid("a").expect("a wrote its pid");
    assert!(process_gone(a_pid), "a's child {a_pid} is gone");
    assert!(c.stderr().contains("slot 0: rotating a -> c"));
}

#[test]
fn rotation_on_readiness_timeout() {
    let dir = TestDir::new("rotation_on_readiness_timeout");
    dir.write_profile("a", &profile_with(json!({"never_ready": true})));
    dir.write_profiles(&["b", "c"]);
    let c = Coordinator::start(&dir, Builder::new().ready_timeout_s(1));
    // When a's child was spawned, by the coordinator's own clock: the
    // readiness deadline counts from there.
    let mut a_spawned = 0;
    wait_until("a's child to start", secs(10.0), || {
        let s = &c.slots()[0];
        a_spawned = s.since_unix_ms;
        s.profile.as_deref() == Some("a") && s.state == "starting"
    });
    let a_pid = c.slots()[0].pid.expect("a starting child has a pid");

    let mut last = Value::Null;
    wait_until("slot 0 to move on to c", secs(10.0), || {
        let (_, b) = c.ready();
        let moved = slots(&b)[0].profile.as_deref() == Some("c");
        last = b;
        moved
    });
    // c's state began after a was stopped, which was at the deadline.
    let after = slots(&last)[0].since_unix_ms - a_spawned;
    println!("slot 0 moved on {after} ms after a's child was spawned");
    assert!(
        after >= 990,
        "rotated {after} ms after the spawn, before the 1 s readiness deadline"
    );
    assert_eq!(queue(&last), ["a"], "a is queued at the back");
    assert_eq!(slots(&last)[0].ports, c.ports.slot(0));
    wait_until("a's child to be stopped", secs(5.0), || process_gone(a_pid));
    c.wait_all_ready(secs(10.0));
    assert!(c.stderr().contains(
        "stopping profile a pid {a_pid}: not ready before the readiness deadline"
            .replace("{a_pid}", &a_pid.to_string())
            .as_str()
    ));
}

// ---------------------------------------------------------------------------
// The profile invariant

/// Every profile exactly once across slots and queue.
fn placement(body: &Value) -> Vec<String> {
    let mut all: Vec<String> = slots(body).into_iter().filter_map(|s| s.profile).collect();
    all.extend(queue(body));
    all.sort();
    all
}

#[test]
fn profile_invariant_holds_under_a_kill_storm() {
    let dir = TestDir::new("profile_invariant_holds_under_a_kill_storm");
    let names = ["p1", "p2", "p3", "p4", "p5"];
    dir.write_profiles(&names);
    let c = Coordinator::start(&dir, Builder::new());
    c.wait_all_ready(secs(10.0));
    let want: Vec<String> = names.iter().map(|s| s.to_string()).collect();

    // A second thread polls /ready as fast as it can and checks every
    // snapshot while the main thread kills children.
    let stop = Arc::new(AtomicBool::new(false));
    let snapshots = Arc::new(AtomicUsize::new(0));
    let port = c.ports.coordinator;
    let checker = {
        let (stop, snapshots, want) = (stop.clone(), snapshots.clone(), want.clone());
        std::thread::spawn(move || -> Result<(), String> {
            while !stop.load(Ordering::Relaxed) {
                let Some(r) = http_get(port, "/ready") else {
                    return Err("/ready did not answer".into());
                };
                let body = r.json();
                if placement(&body) != want {
                    return Err(format!("invariant broken: {body}"));
                }
                snapshots.fetch_add(1, Ordering::Relaxed);
            }
            Ok(())
        })
    };

    let mut kills = 0;
    let mut attempts = 0;
    let mut n: usize = 0;
    let storm_end = secs(3.0);
    while Instant::now() < storm_end {
        attempts += 1;
        n = n.wrapping_mul(31).wrapping_add(7);
        let s = c.slots();
        if let Some(pid) = s[n % s.len()].pid {
            send_signal_to(pid, libc::SIGKILL);
            kills += 1;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    stop.store(true, Ordering::Relaxed);
    let checked = checker.join().expect("checker thread");
    println!(
        "{kills} kills in {attempts} attempts; {} snapshots checked",
        snapshots.load(Ordering::Relaxed)
    );
    checked.unwrap();
    // Backoff bounds the kills (about 6 in 3 s: each slot restarts at once,
    // then after 1 s, then 2 s); fewer means the storm did not happen.
    assert!(kills >= 4, "the storm killed only {kills} children");

    // The backoff grows with every kill (1 s, 2 s, 4 s ...), so recovery can
    // take a few seconds; both slots must come back.
    let body = c.wait_all_ready(secs(20.0));
    assert_eq!(placement(&body), want);
    assert!(!c.stderr().contains("invariant broken"));
}

// ---------------------------------------------------------------------------
// Crash-loop backoff

#[test]
fn crash_loop_backs_off() {
    let dir = TestDir::new("crash_loop_backs_off");
    dir.write_profiles(&["a"]);
    let started = Instant::now();
    let c = Coordinator::start(
        &dir,
        Builder::new()
            .pool_size(1)
            .env("TESTCHILD_EXIT_AFTER_MS", 0)
            .env("TESTCHILD_EXIT_CODE", 3),
    );
    let window_end = started + Duration::from_secs(5);
    let mut saw_backoff = false;
    while Instant::now() < window_end {
        let (status, body) = c.ready();
        assert_eq!(status, 503, "a crash-looping child is never ready: {body}");
        saw_backoff |= slots(&body)[0].state == "backoff";
        std::thread::sleep(Duration::from_millis(20));
    }
    let spawns = c.stderr().matches("started profile a").count();
    let (_, body) = c.ready();
    println!(
        "{spawns} spawns in 5 s; restarts {}",
        slots(&body)[0].restarts
    );
    // Starts at 0 s, 0 s, 1 s, 3 s (then 7 s): four, give or take timing.
    assert!(
        (3..=5).contains(&spawns),
        "{spawns} spawns in 5 s, expected about 4"
    );
    assert!(saw_backoff, "the slot never showed state backoff");
    assert!(c.stderr().contains("exited (exit code 3)"));
}

// ---------------------------------------------------------------------------
// Process groups and shutdown

#[test]
fn shutdown_kills_the_whole_process_group() {
    let dir = TestDir::new("shutdown_kills_the_whole_process_group");
    dir.write_profile(
        "a",
        &profile_with(json!({"ignore_sigterm": true, "spawn_grandchild": true})),
    );
    let mut c = Coordinator::start(&dir, Builder::new().pool_size(1).grace_s(1));
    c.wait_all_ready(secs(10.0));
    wait_until("the grandchild's pid file", secs(5.0), || {
        dir.grandchild_pid("a").is_some()
    });
    let child = dir.child_pid("a").unwrap();
    let grandchild = dir.grandchild_pid("a").unwrap();
    assert!(!process_gone(child) && !process_gone(grandchild));

    let t = Instant::now();
    c.send_signal(libc::SIGTERM);
    let status = c.wait_exit(secs(3.0));
    println!("exited {status:?} {:.2?} after SIGTERM", t.elapsed());
    assert_eq!(status.code(), Some(0));
    assert!(
        t.elapsed() <= Duration::from_secs(2),
        "exit took {:.2?} with a 1 s grace",
        t.elapsed()
    );
    wait_until("child and grandchild to be gone", secs(1.0), || {
        process_gone(child) && process_gone(grandchild)
    });
    assert!(
        !c.stderr().contains("did not finish"),
        "the stop waited past the grace for a group already dead"
    );
}

#[test]
fn a_childs_leftover_descendants_are_killed_when_it_exits() {
    let dir = TestDir::new("a_childs_leftover_descendants_are_killed_when_it_exits");
    dir.write_profile(
        "a",
        &profile_with(json!({"spawn_grandchild": true, "exit_after_ms": 300})),
    );
    dir.write_profiles(&["b"]);
    let c = Coordinator::start(&dir, Builder::new().pool_size(1).grace_s(1));
    wait_until("a's grandchild's pid file", secs(5.0), || {
        dir.grandchild_pid("a").is_some()
    });
    let grandchild = dir.grandchild_pid("a").unwrap();
    // a exits; its grandchild (ignoring SIGTERM) is still in the group and
    // must be killed before the slot starts b.
    let took = wait_until("slot 0 to run b", secs(5.0), || {
        c.slots()[0].profile.as_deref() == Some("b")
    });
    println!("rotated to b {took:.2?} after the grandchild appeared");
    assert!(
        process_gone(grandchild),
        "a's grandchild {grandchild} survived"
    );
    c.wait_all_ready(secs(5.0));
    assert!(!c.stderr().contains("still has members"));
}

#[test]
fn a_child_ignoring_sigterm_is_killed_after_the_grace() {
    let dir = TestDir::new("a_child_ignoring_sigterm_is_killed_after_the_grace");
    dir.write_profile("a", &profile_with(json!({"ignore_sigterm": true})));
    let mut c = Coordinator::start(&dir, Builder::new().pool_size(1).grace_s(1));
    c.wait_all_ready(secs(10.0));
    let child = dir.child_pid("a").unwrap();
    let t = Instant::now();
    c.send_signal(libc::SIGTERM);
    let status = c.wait_exit(secs(5.0));
    let took = t.elapsed();
    println!("exited {status:?} {took:.2?} after SIGTERM (grace 1 s)");
    assert_eq!(status.code(), Some(0));
    assert!(
        took >= Duration::from_millis(900),
        "exited after {took:.2?}: the grace was not given"
    );
    assert!(took < Duration::from_secs(3), "exited after {took:.2?}");
    wait_until("the child to be gone", secs(1.0), || process_gone(child));
    assert!(c.stderr().contains("ignored SIGTERM"));
}

#[test]
fn sigterm_and_sigint_exit_0_and_stop_every_child() {
    for (name, sig) in [("SIGTERM", libc::SIGTERM), ("SIGINT", libc::SIGINT)] {
        let dir = TestDir::new(&format!("sig_exit_0_{name}"));
        dir.write_profiles(&["a", "b", "c"]);
        let mut c = Coordinator::start(&dir, Builder::new());
        c.wait_all_ready(secs(10.0));
        let pids: Vec<i32> = c.slots().iter().filter_map(|s| s.pid).collect();
        assert_eq!(pids.len(), 2);
        let t = Instant::now();
        c.send_signal(sig);
        let status = c.wait_exit(secs(5.0));
        println!("{name}: exited {status:?} after {:.2?}", t.elapsed());
        assert_eq!(status.code(), Some(0), "{name}");
        wait_until("every child to be gone", secs(1.0), || {
            pids.iter().all(|p| process_gone(*p))
        });
        assert!(c.stderr().contains(&format!("{name} received")), "{name}");
    }
}

#[test]
fn ready_turns_503_at_once_on_sigterm() {
    let dir = TestDir::new("ready_turns_503_at_once_on_sigterm");
    dir.write_profile("a", &profile_with(json!({"ignore_sigterm": true})));
    let mut c = Coordinator::start(&dir, Builder::new().pool_size(1).grace_s(3));
    c.wait_all_ready(secs(10.0));
    let t = Instant::now();
    c.send_signal(libc::SIGTERM);
    let mut last = Value::Null;
    let took = wait_until("/ready to say 503 shutting_down", secs(1.0), || {
        match c.get("/ready") {
            Some(r) => {
                let done = r.status == 503 && r.json()["shutting_down"] == true;
                last = r.json();
                done
            }
            None => false,
        }
    });
    println!("/ready turned 503 {took:.2?} after SIGTERM");
    assert_eq!(last["status"], "degraded");
    let status = c.wait_exit(secs(6.0));
    assert_eq!(status.code(), Some(0));
    assert!(
        t.elapsed() >= Duration::from_millis(2900),
        "the grace was cut"
    );
}

#[test]
fn a_second_sigterm_cuts_the_grace_short() {
    let dir = TestDir::new("a_second_sigterm_cuts_the_grace_short");
    dir.write_profile("a", &profile_with(json!({"ignore_sigterm": true})));
    let mut c = Coordinator::start(&dir, Builder::new().pool_size(1).grace_s(10));
    c.wait_all_ready(secs(10.0));
    let child = dir.child_pid("a").unwrap();
    c.send_signal(libc::SIGTERM);
    wait_until("shutdown to begin", secs(2.0), || {
        c.get("/ready")
            .is_some_and(|r| r.json()["shutting_down"] == true)
    });
    let t = Instant::now();
    c.send_signal(libc::SIGTERM);
    let status = c.wait_exit(secs(4.0));
    println!("exited {:.2?} after the second SIGTERM", t.elapsed());
    assert_eq!(status.code(), Some(0));
    // Without the hurry it would take the 10 s grace.
    assert!(t.elapsed() < Duration::from_secs(2), "{:.2?}", t.elapsed());
    wait_until("the child to be gone", secs(1.0), || process_gone(child));
}

#[test]
fn sigterm_during_the_readiness_wait_exits_promptly() {
    let dir = TestDir::new("sigterm_during_the_readiness_wait_exits_promptly");
    dir.write_profiles(&["a", "b"]);
    let mut c = Coordinator::start(&dir, Builder::new().env("TESTCHILD_READY_AFTER_MS", 5000));
    wait_until("both children to be starting", secs(5.0), || {
        c.slots()
            .iter()
            .all(|s| s.state == "starting" && s.pid.is_some())
    });
    let pids: Vec<i32> = c.slots().iter().filter_map(|s| s.pid).collect();
    let t = Instant::now();
    c.send_signal(libc::SIGTERM);
    let status = c.wait_exit(secs(3.0));
    println!("exited {:.2?} after SIGTERM", t.elapsed());
    assert_eq!(status.code(), Some(0));
    // Children that honour SIGTERM end well before the 2 s grace.
    assert!(
        t.elapsed() < Duration::from_millis(1900),
        "{:.2?}",
        t.elapsed()
    );
    wait_until("every child to be gone", secs(1.0), || {
        pids.iter().all(|p| process_gone(*p))
    });
}

// ---------------------------------------------------------------------------
// Configuration and hydration

#[test]
fn bad_configuration_is_one_line_and_exit_2() {
    let dir = TestDir::new("bad_configuration_is_one_line_and_exit_2");
    dir.write_profiles(&["a"]);
    // Overlap and overflow depend on the reserved ports, so they are built
    // from a probe run's ports: reserve our own here.
    let p = Ports::reserve(2);
    let cases: Vec<(Builder, String)> = vec![
        (
            Builder::new().env("BASE_API_PORT", "abc"),
            r#"invalid BASE_API_PORT="abc": expected an integer from 1 to 65535"#.into(),
        ),
        (
            Builder::new().env("PORT_STEP", "0"),
            r#"invalid PORT_STEP="0": expected an integer from 1 to 65535"#.into(),
        ),
        (
            Builder::new()
                .env("BASE_API_PORT", p.api)
                .env("BASE_STREAM_PORT", p.api + 1)
                .env("BASE_CAMOUFOX_PORT", p.camoufox),
            format!(
                "port {} is used twice (slot 0 BASE_STREAM_PORT and slot 1 BASE_API_PORT): spread BASE_API_PORT, BASE_STREAM_PORT and BASE_CAMOUFOX_PORT further apart or lower PORT_STEP/POOL_SIZE",
                p.api + 1
            ),
        ),
        (
            Builder::new().env("BASE_CAMOUFOX_PORT", 65535),
            "BASE_CAMOUFOX_PORT=65535 with PORT_STEP=1 and POOL_SIZE=2 needs port 65536, past 65535: lower BASE_CAMOUFOX_PORT, PORT_STEP or POOL_SIZE".into(),
        ),
        (
            Builder::new().env("PROFILE_BACKEND", "gcs"),
            r#"invalid PROFILE_BACKEND="gcs": expected local or s3"#.into(),
        ),
        (
            Builder::new().env("HEADLESS", "maybe"),
            r#"invalid HEADLESS="maybe": expected true or false"#.into(),
        ),
        (
            Builder::new().child(&["/nonexistent/aisp-child"]),
            format!(
                r#"child program "/nonexistent/aisp-child" not found (from CHILD_COMMAND or after --; relative paths are taken from CHILD_WORKDIR {}): install it or fix the command"#,
                dir.path.display()
            ),
        ),
        (
            Builder::new().child(&["no-such-aisp-child-program"]),
            format!(
                r#"child program "no-such-aisp-child-program" not found (from CHILD_COMMAND or after --; relative paths are taken from CHILD_WORKDIR {}): install it or fix the command"#,
                dir.path.display()
            ),
        ),
    ];
    for (builder, want) in cases {
        let out = Coordinator::run_to_exit(&dir, builder.clone());
        let context = format!(
            "{builder:?}\nstdout: {}\nstderr: {}",
            out.stdout, out.stderr
        );
        assert_eq!(out.status.code(), Some(2), "{context}");
        assert_eq!(out.stderr, format!("aistudioproxy: {want}\n"), "{context}");
        assert_eq!(out.stdout, "", "{context}");
    }
}

#[test]
fn invalid_profiles_are_named_and_left_out() {
    let dir = TestDir::new("invalid_profiles_are_named_and_left_out");
    dir.write_profiles(&["a", "c"]);
    dir.write_profile_bytes("b", b"{\"cookies\": [");
    let c = Coordinator::start(&dir, Builder::new().pool_size(3));
    let body = c.wait_all_ready(secs(10.0));
    assert_eq!(body["total_children"], 2);
    assert_eq!(placement(&body), ["a", "c"]);
    let err = c.stderr();
    assert!(
        err.contains("profile b.json") && err.contains("is not valid JSON"),
        "{err}"
    );
    assert!(!err.contains("[\""), "profile content must not be logged");
}

#[test]
fn an_empty_profile_directory_exits_1() {
    let dir = TestDir::new("an_empty_profile_directory_exits_1");
    let out = Coordinator::run_to_exit(&dir, Builder::new());
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert_eq!(
        out.stderr,
        format!(
            "aistudioproxy: No auth profiles found in {}\n",
            dir.profiles_dir().display()
        )
    );
}

fn mode(path: &std::path::Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[test]
fn hydrate_only_stages_private_files_and_prints_one_line() {
    let dir = TestDir::new("hydrate_only_stages_private_files_and_prints_one_line");
    dir.write_profiles(&["a", "b"]);
    let active = dir.cache_dir().join("active");

    let out = Coordinator::run_to_exit(&dir, Builder::new().arg("--hydrate-only").child(&[]));
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert_eq!(out.stdout.lines().count(), 1, "{out:?}");
    let summary: Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(
        summary,
        json!({"profiles_dir": active, "key_file": null, "profiles": 2})
    );
    assert_eq!(mode(&dir.cache_dir()), 0o700);
    assert_eq!(mode(&active), 0o700);
    for n in ["a", "b"] {
        assert_eq!(mode(&active.join(format!("{n}.json"))), 0o600, "{n}");
    }

    dir.write_key("sk-one\nsk-two\n");
    let out = Coordinator::run_to_exit(&dir, Builder::new().arg("--hydrate-only").child(&[]));
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let summary: Value = serde_json::from_str(&out.stdout).unwrap();
    let key = dir.cache_dir().join("key.txt");
    assert_eq!(summary["key_file"], json!(key));
    assert_eq!(mode(&key), 0o600);
    assert_eq!(std::fs::read_to_string(&key).unwrap(), "sk-one\nsk-two\n");

    // A hydration that fails (a profile too large to be real) must leave the
    // staged set as it was.
    let snapshot = |d: &std::path::Path| -> Vec<(String, String)> {
        let mut v: Vec<(String, String)> = std::fs::read_dir(d)
            .unwrap()
            .flatten()
            .map(|e| {
                (
                    e.file_name().to_string_lossy().into_owned(),
                    read_to_string(&e.path()),
                )
            })
            .collect();
        v.sort();
        v
    };
    let before = snapshot(&active);
    let f = std::fs::File::create(dir.profiles_dir().join("huge.json")).unwrap();
    f.set_len(65 << 20).unwrap(); // sparse: costs no disk
    dir.write_key("sk-three\n");
    let out = Coordinator::run_to_exit(&dir, Builder::new().arg("--hydrate-only").child(&[]));
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(out.stderr.contains("huge.json is larger than"), "{out:?}");
    assert_eq!(out.stdout, "");
    assert_eq!(snapshot(&active), before, "the previous set is untouched");
    assert_eq!(std::fs::read_to_string(&key).unwrap(), "sk-one\nsk-two\n");
    let leftovers: Vec<String> = std::fs::read_dir(dir.cache_dir())
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('.'))
        .collect();
    assert!(leftovers.is_empty(), "staging leftovers: {leftovers:?}");
}

// ---------------------------------------------------------------------------
// Child logs

#[test]
fn child_logs_rotate_at_5_mib_keeping_5_backups() {
    let dir = TestDir::new("child_logs_rotate_at_5_mib_keeping_5_backups");
    // 3_000 lines of 12_000 bytes: about 36 MB, enough for six rotations.
    dir.write_profile(
        "a",
        &profile_with(json!({"log_lines": 3000, "log_line_bytes": 12000})),
    );
    let c = Coordinator::start(&dir, Builder::new().pool_size(1));
    c.wait_all_ready(secs(20.0)); // the child logs everything before serving
    let log = dir.log_dir().join("a.log");
    let backup = |n: u32| dir.log_dir().join(format!("a.log.{n}"));
    // The pumps may still be draining the pipes.
    wait_until("the last log line to be written", secs(10.0), || {
        read_to_string(&log).contains("log line 2999 ")
    });
    const LIMIT: u64 = 5 * 1024 * 1024;
    for n in 1..=5 {
        let len = std::fs::metadata(backup(n))
            .unwrap_or_else(|e| panic!("{}: {e}", backup(n).display()))
            .len();
        assert!(
            len <= LIMIT && len > LIMIT - 13_000,
            "a.log.{n} has {len} bytes"
        );
    }
    assert!(!backup(6).exists(), "at most 5 backups");
    assert!(std::fs::metadata(&log).unwrap().len() <= LIMIT);
    // Every line arrived whole, in order within each stream.
    let text = read_to_string(&log);
    assert!(text
        .lines()
        .all(|l| l.len() == 12000 || l.starts_with("aisp-testchild")));
}

// ---------------------------------------------------------------------------
// Probes under load

#[test]
fn probes_answer_while_slow_clients_hold_connections() {
    let dir = TestDir::new("probes_answer_while_slow_clients_hold_connections");
    dir.write_profiles(&["a"]);
    let c = Coordinator::start(&dir, Builder::new().pool_size(1).env("HTTP_WORKERS", 2));
    c.wait_all_ready(secs(10.0));

    let mut held = Vec::new();
    for i in 0..50 {
        let mut s = TcpStream::connect(("127.0.0.1", c.ports.coordinator)).unwrap();
        let partial: &[u8] = if i % 2 == 0 {
            b"GET /v1/models HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: "
        } else {
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{\"model\":"
        };
        s.write_all(partial).unwrap();
        held.push(s);
    }
    // Let the server take all of them in.
    std::thread::sleep(Duration::from_millis(200));

    let mut worst = Duration::ZERO;
    for round in 0..10 {
        for path in ["/live", "/ready"] {
            let t = Instant::now();
            let r = http_get(c.ports.coordinator, path);
            let took = t.elapsed();
            worst = worst.max(took);
            let r = r.unwrap_or_else(|| panic!("{path} did not answer (round {round})"));
            assert_eq!(r.status, 200, "{path}");
        }
    }
    println!("worst probe latency with 50 slow clients: {worst:.2?}");
    assert!(
        worst < Duration::from_millis(500),
        "a probe took {worst:.2?}"
    );
    drop(held);
}

// ---------------------------------------------------------------------------
// What a child is given

fn child_info(c: &Coordinator, slot: u16) -> Value {
    let api = c.ports.slot(slot).0;
    let r = http_get(api, "/api/info").expect("the child answers /api/info");
    assert_eq!(r.status, 200);
    r.json()
}

#[test]
fn children_get_their_ports_profile_and_headless_flag() {
    let dir = TestDir::new("children_get_their_ports_profile_and_headless_flag");
    dir.write_profiles(&["a", "b"]);
    let c = Coordinator::start(&dir, Builder::new());
    c.wait_all_ready(secs(10.0));
    for (i, name) in [(0u16, "a"), (1, "b")] {
        let info = child_info(&c, i);
        let (api, stream, camoufox) = c.ports.slot(i);
        assert_eq!(info["profile"], name);
        assert_eq!(info["server_port"], api);
        assert_eq!(info["stream_port"], stream);
        assert_eq!(info["camoufox_debug_port"], camoufox);
        assert_eq!(info["headless"], true, "headless is the default");
        assert_eq!(info["api_key_required"], false, "no key.txt, no keys");
        // A working copy of its own, under running/, named like the profile.
        let auth = std::path::PathBuf::from(info["auth_json"].as_str().unwrap());
        assert!(
            auth.starts_with(dir.cache_dir().join("running")),
            "{auth:?}"
        );
        assert_eq!(auth.file_name().unwrap(), format!("{name}.json").as_str());
        assert_eq!(
            std::fs::read(&auth).unwrap(),
            std::fs::read(dir.cache_dir().join(format!("active/{name}.json"))).unwrap(),
            "the copy holds the staged profile"
        );
    }
}

#[test]
fn children_get_the_key_file_and_headless_false() {
    let dir = TestDir::new("children_get_the_key_file_and_headless_false");
    dir.write_profiles(&["a"]);
    dir.write_key("sk-test-key\n");
    let c = Coordinator::start(
        &dir,
        Builder::new()
            .pool_size(1)
            .env("HEADLESS", "false")
            // /ready names profiles and pids to the admin key only.
            .env("ADMIN_KEY", "adm-test"),
    );
    c.wait_all_ready(secs(10.0));
    let info = child_info(&c, 0);
    assert_eq!(info["headless"], false);
    assert_eq!(
        info["api_key_required"], true,
        "AUTH_KEY_FILE_PATH reached it"
    );
    // And the key is the hydrated one: the child accepts it.
    let pids: BTreeSet<i32> = c.slots().iter().filter_map(|s| s.pid).collect();
    assert_eq!(pids.len(), 1);
}
