//! Gentle operation of a big fleet, through the real binaries: starts spaced
//! by `START_STAGGER_S`, children recycled past `CHILD_MAX_RSS_MB` or
//! `CHILD_MAX_AGE_S` (drained, no request lost, the same profile again), and
//! a proxy per account from `PROFILE_PROXIES_FILE` that reaches only its own
//! child and never the coordinator's log.

use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::common::*;

/// A profile whose test child gets `knobs`.
fn knobbed(name: &str, knobs: Value) -> Value {
    json!({ "cookies": [], "name": name, "testchild": knobs })
}

fn chat_body() -> Value {
    json!({"model": "gemini-test", "messages": [{"role": "user", "content": "hi"}]})
}

/// When process `pid` started, in seconds after boot (from `/proc`).
fn started_s(pid: i32) -> f64 {
    let stat = read_to_string(std::path::Path::new(&format!("/proc/{pid}/stat")));
    let after_name = &stat[stat.rfind(')').expect("a stat line") + 1..];
    let ticks: u64 = after_name
        .split_whitespace()
        .nth(19)
        .and_then(|t| t.parse().ok())
        .expect("starttime");
    // SAFETY: sysconf only reads a system constant.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    ticks as f64 / hz
}

/// The `/ready` entry of slot `i`.
fn slot_json(c: &Coordinator, i: usize) -> Value {
    c.ready().1["slots"][i].clone()
}

#[test]
fn starts_are_spaced_by_the_stagger() {
    let dir = TestDir::new("starts_are_spaced_by_the_stagger");
    dir.write_profiles(&["a", "b", "c"]);
    let stagger = 0.8;
    let c = Coordinator::start(
        &dir,
        Builder::new().pool_size(3).env("START_STAGGER_S", stagger),
    );
    // A slot waiting for its turn says so, and when.
    let mut seen: Option<Value> = None;
    wait_until("a slot in state stagger", secs(5.0), || {
        seen = c.ready().1["slots"]
            .as_array()
            .and_then(|a| a.iter().find(|s| s["state"] == "stagger").cloned());
        seen.is_some()
    });
    let s = seen.unwrap();
    let reason = s["reason"].as_str().unwrap_or_default();
    assert!(reason.starts_with("start stagger: starts in "), "{s}");
    assert!(s["until_unix_ms"].as_u64().is_some(), "{s}");

    let body = c.wait_all_ready(secs(15.0));
    let mut starts: Vec<f64> = slots(&body)
        .iter()
        .map(|s| started_s(s.pid.expect("a ready slot has a pid")))
        .collect();
    starts.sort_by(f64::total_cmp);
    let gaps: Vec<f64> = starts.windows(2).map(|w| w[1] - w[0]).collect();
    let first = starts[0] - started_s(c.pid());
    println!("START_STAGGER_S={stagger}: first child {first:.2} s after the coordinator, then gaps {gaps:.2?} s");
    // /proc start times tick every 10 ms: allow two ticks.
    for g in &gaps {
        assert!(
            *g >= stagger - 0.02,
            "starts {gaps:?} s apart, closer than {stagger} s"
        );
    }
    assert!(
        first < stagger,
        "the first start waited {first:.2} s: it should go at once"
    );
    let log = c.stderr();
    assert_eq!(
        log.matches("START_STAGGER_S: one start per 0.8 s across the fleet")
            .count(),
        2,
        "the two delayed starts say so once each:\n{log}"
    );
}

/// Send completions from `clients` threads until `stop`; every status.
fn load(c: &Coordinator, clients: usize, stop: &AtomicBool) -> Vec<u16> {
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..clients)
            .map(|_| {
                s.spawn(|| {
                    let mut got = Vec::new();
                    while !stop.load(Ordering::Relaxed) {
                        let r =
                            post_json(c.ports.coordinator, "/v1/chat/completions", &chat_body());
                        got.push(r.map_or(0, |r| r.status));
                    }
                    got
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("a client thread"))
            .collect()
    })
}

#[test]
fn a_child_past_its_memory_limit_is_drained_and_restarted_with_no_failed_request() {
    let dir = TestDir::new("memory_limit");
    // b waits in the queue: a restart must not rotate to it.
    for name in ["a", "b"] {
        dir.write_profile(name, &knobbed(name, json!({"completion_delay_ms": 150})));
    }
    let limit_mb = 48;
    let c = Coordinator::start(
        &dir,
        Builder::new()
            .pool_size(1)
            .env("CHILD_MAX_RSS_MB", limit_mb)
            .env("CHILD_RSS_SAMPLE_S", 1),
    );
    let body = c.wait_all_ready(secs(15.0));
    let first = slots(&body)[0].clone();
    assert_eq!(first.profile.as_deref(), Some("a"));
    let old_pid = first.pid.unwrap();
    let mut baseline = 0;
    wait_until("the slot's memory in /ready", secs(5.0), || {
        baseline = slot_json(&c, 0)["rss_mb"].as_u64().unwrap_or(0);
        baseline > 0
    });
    assert!(
        baseline < limit_mb,
        "the test child alone holds {baseline} MB"
    );

    let stop = AtomicBool::new(false);
    let (statuses, took) = std::thread::scope(|s| {
        let clients = s.spawn(|| load(&c, 3, &stop));
        // Let requests flow, then push the child's tree past the limit.
        std::thread::sleep(Duration::from_millis(400));
        let t0 = Instant::now();
        let grown = post_json(first.ports.0, "/_testchild/grow_rss/96", &json!({}))
            .expect("the child answers grow_rss");
        assert_eq!(grown.status, 200, "{}", grown.body);
        let mut new_pid = None;
        wait_until(
            "the same profile ready again in a new child",
            secs(20.0),
            || {
                let s = &c.slots()[0];
                new_pid = s.pid.filter(|p| *p != old_pid && s.state == "ready");
                new_pid.is_some() && s.profile.as_deref() == Some("a")
            },
        );
        let took = t0.elapsed();
        std::thread::sleep(Duration::from_millis(500));
        stop.store(true, Ordering::Relaxed);
        (clients.join().expect("the clients"), took)
    });
    println!(
        "memory limit {limit_mb} MB (baseline {baseline} MB, sampled every 1 s): {:.2} s from passing the limit to the restarted child ready; {} requests, all answered",
        took.as_secs_f64(),
        statuses.len()
    );
    assert!(
        statuses.len() >= 5,
        "too few requests to show anything: {statuses:?}"
    );
    assert!(
        statuses.iter().all(|s| *s == 200),
        "a request failed across the restart: {statuses:?}"
    );
    let log = c.stderr();
    let over = format!(
        "over CHILD_MAX_RSS_MB={limit_mb}: draining it, then starting the same profile again"
    );
    assert_eq!(
        log.matches(&over).count(),
        1,
        "one line for the limit:\n{log}"
    );
    assert!(log.contains("recycled (memory limit)"), "{log}");
    let snap = c.ready().1;
    assert_eq!(
        queue(&snap),
        vec!["b"],
        "b still waits: the same profile restarted"
    );
    assert_eq!(snap["slots"][0]["restarts"], 1);

    // The same figure in ctl status and /metrics.
    let out = Command::new(COORDINATOR)
        .args(["ctl", "status"])
        .env_clear()
        .env("AUTH_PROFILE_CACHE_DIR", dir.cache_dir())
        .output()
        .expect("ctl status runs");
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        table.lines().next().unwrap_or_default().contains("RSS-MB"),
        "{table}"
    );
    // The new child's first measurement comes within a sample interval.
    let mut metrics = String::new();
    wait_until("the new child's memory in /metrics", secs(5.0), || {
        metrics = c.get("/metrics").expect("/metrics answers").body;
        metrics.contains("aistudioproxy_child_rss_bytes{slot=\"0\"}")
    });
    assert!(
        metrics.contains("aistudioproxy_child_exits_total{slot=\"0\",reason=\"recycled\"} 1"),
        "{metrics}"
    );
}

#[test]
fn a_child_past_its_age_limit_is_restarted() {
    let dir = TestDir::new("age_limit");
    dir.write_profiles(&["a"]);
    let c = Coordinator::start(&dir, Builder::new().pool_size(1).env("CHILD_MAX_AGE_S", 2));
    let body = c.wait_all_ready(secs(15.0));
    let old_pid = slots(&body)[0].pid.unwrap();
    let mut new_pid = None;
    wait_until("a new child of a", secs(15.0), || {
        let s = &c.slots()[0];
        new_pid = s.pid.filter(|p| *p != old_pid && s.state == "ready");
        new_pid.is_some() && s.profile.as_deref() == Some("a")
    });
    let lived = started_s(new_pid.unwrap()) - started_s(c.pid());
    println!("CHILD_MAX_AGE_S=2: the second child started {lived:.2} s after the coordinator");
    assert!(
        lived >= 2.0,
        "restarted after {lived:.2} s, before its age limit"
    );
    let log = c.stderr();
    assert!(log.contains("CHILD_MAX_AGE_S=2: draining it"), "{log}");
    assert!(log.contains("recycled (age limit)"), "{log}");
}

const SECRET: &str = "s3cretpw";

#[test]
fn each_profile_gets_its_own_proxy_and_no_log_shows_its_credentials() {
    let dir = TestDir::new("profile_proxy");
    dir.write_profiles(&["a", "b"]);
    let own = format!("http://alice:{SECRET}@127.0.0.1:3128");
    let file = dir.path.join("proxies.txt");
    std::fs::write(
        &file,
        format!("# account proxies\n\na   {own}\nghost socks5://127.0.0.1:1080\n"),
    )
    .unwrap();
    let fleet = "http://fleet.invalid:8080";
    let c = Coordinator::start(
        &dir,
        Builder::new()
            .env("PROFILE_PROXIES_FILE", file.display())
            .env("HTTP_PROXY", fleet),
    );
    let body = c.wait_all_ready(secs(15.0));
    let env_of = |profile: &str| -> Value {
        let s = slots(&body)
            .into_iter()
            .find(|s| s.profile.as_deref() == Some(profile))
            .expect("a slot for the profile");
        http_get(s.ports.0, "/_testchild/env")
            .expect("the child answers")
            .json()
    };
    let a = env_of("a");
    for var in ["UNIFIED_PROXY_CONFIG", "HTTP_PROXY", "HTTPS_PROXY"] {
        assert_eq!(a[var], own.as_str(), "{var} of a");
    }
    let b = env_of("b");
    assert_eq!(b["HTTP_PROXY"], fleet, "b keeps what the coordinator had");
    assert!(b.get("UNIFIED_PROXY_CONFIG").is_none(), "{b}");
    assert!(!b.to_string().contains(SECRET), "a's proxy reached b: {b}");

    let log = c.stderr();
    assert!(
        log.contains("PROFILE_PROXIES_FILE names profiles that do not exist: ghost"),
        "{log}"
    );
    assert!(
        log.contains("1 of 2 profiles have a proxy of their own"),
        "{log}"
    );

    // A malformed file on reload: reported in one line, the old one kept.
    std::fs::write(&file, format!("a {own}\nb http://bob:{SECRET}@127.0.0.1\n")).unwrap();
    c.send_signal(libc::SIGHUP);
    wait_until("the reload to fail", secs(10.0), || {
        c.stderr().contains("reload (SIGHUP) failed")
    });
    let log = c.stderr();
    let line = log
        .lines()
        .find(|l| l.contains("reload (SIGHUP) failed"))
        .unwrap();
    assert!(line.contains("line 2 (profile b)"), "{line}");
    assert!(
        !log.contains(SECRET),
        "credentials in the coordinator's log:\n{log}"
    );
    for l in ["a", "b"] {
        let child_log = read_to_string(&dir.log_dir().join(format!("{l}.log")));
        assert!(!child_log.contains(SECRET), "credentials in {l}.log");
    }
}

#[test]
fn a_malformed_proxy_entry_exits_2_naming_the_profile() {
    let dir = TestDir::new("proxy_file_malformed");
    dir.write_profiles(&["a", "b"]);
    let file = dir.path.join("proxies.txt");
    std::fs::write(
        &file,
        format!("a http://127.0.0.1:3128\n\n# b next\nb ftp://bob:{SECRET}@127.0.0.1:21\n"),
    )
    .unwrap();
    let f = Coordinator::run_to_exit(
        &dir,
        Builder::new().env("PROFILE_PROXIES_FILE", file.display()),
    );
    assert_eq!(f.status.code(), Some(2), "{}", f.stderr);
    let lines: Vec<&str> = f.stderr.lines().collect();
    assert_eq!(lines.len(), 1, "one line: {}", f.stderr);
    assert!(
        lines[0].starts_with("aistudioproxy: PROFILE_PROXIES_FILE "),
        "{}",
        lines[0]
    );
    assert!(lines[0].contains("line 4 (profile b)"), "{}", lines[0]);
    assert!(
        lines[0].contains("scheme must be http, https or socks5"),
        "{}",
        lines[0]
    );
    assert!(!f.stderr.contains(SECRET), "{}", f.stderr);
    assert!(
        !dir.log_dir().join("a.log").exists(),
        "no child may start on a bad proxy file"
    );
}
