//! Operating a running fleet: `/metrics` read by the Prometheus project's own
//! parser, every `aistudioproxy ctl` command run as the real binary against a
//! running coordinator, the admin socket and `/admin/`, drains, reloads (local
//! and S3, SIGHUP and `ctl reload`), and the coordinator's own log as JSON
//! lines for log shippers.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::{json, Value};

use crate::common::*;
use crate::s3::{S3Server, ACCESS_KEY, SECRET_KEY};

// ---------------------------------------------------------------------------
// Helpers

/// A profile whose test child gets `knobs`.
fn knobbed(name: &str, knobs: Value) -> Value {
    json!({ "cookies": [], "name": name, "testchild": knobs })
}

fn chat_body() -> Value {
    json!({"model": "gemini-test", "messages": [{"role": "user", "content": "hi"}]})
}

/// POST a completion with `key`.
fn chat(c: &Coordinator, key: &str) -> Reply {
    post_json_with(
        c.ports.coordinator,
        "/v1/chat/completions",
        &chat_body(),
        &[("Authorization", &format!("Bearer {key}"))],
    )
    .expect("the coordinator answers a completion")
}

/// Any request to the coordinator with extra headers; None when no answer.
fn request(
    c: &Coordinator,
    method: &str,
    path: &str,
    body: Option<&Value>,
    headers: &[(&str, &str)],
) -> Option<Reply> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(5)))
        .build()
        .into();
    let url = format!("http://127.0.0.1:{}{path}", c.ports.coordinator);
    let mut resp = match (method, body) {
        ("GET", _) => {
            let mut rq = agent.get(&url);
            for (k, v) in headers {
                rq = rq.header(*k, *v);
            }
            rq.call().ok()?
        }
        (_, b) => {
            let mut rq = agent.post(&url).header("Content-Type", "application/json");
            for (k, v) in headers {
                rq = rq.header(*k, *v);
            }
            rq.send(b.map(Value::to_string).unwrap_or_default()).ok()?
        }
    };
    reply_of(&mut resp)
}

/// Wait until slot `i` runs `profile` and is ready; returns its pid.
fn wait_slot_ready(c: &Coordinator, i: usize, profile: &str, within: f64) -> i32 {
    let mut pid = None;
    wait_until(
        &format!("slot {i} to run {profile}, ready"),
        secs(within),
        || {
            let s = c.slots();
            pid = s
                .get(i)
                .filter(|s| s.state == "ready" && s.profile.as_deref() == Some(profile))
                .and_then(|s| s.pid);
            pid.is_some()
        },
    );
    pid.expect("set by the wait")
}

/// The Python that has `prometheus_client`: `AISP_PYTHON`, else `.venv`.
fn python() -> PathBuf {
    if let Some(p) = std::env::var_os("AISP_PYTHON") {
        return p.into();
    }
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/python");
    assert!(
        venv.is_file(),
        "no Python with prometheus_client: run scripts/test.sh (it creates .venv) or set AISP_PYTHON"
    );
    venv
}

/// One scrape, parsed by `prometheus_client`'s OpenMetrics parser.
struct Metrics(Value);

impl Metrics {
    /// The value of the sample `name` whose labels include `labels`
    /// (summed when several match); None when none matches.
    fn get(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let mut found = None;
        for f in self.0["families"].as_array().into_iter().flatten() {
            for s in f["samples"].as_array().into_iter().flatten() {
                if s["name"] == name && labels.iter().all(|(k, v)| s["labels"][*k] == *v) {
                    *found.get_or_insert(0.0) += s["value"].as_f64().unwrap_or(f64::NAN);
                }
            }
        }
        found
    }

    /// Like `get`, 0 when absent (a counter not yet incremented).
    fn n(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.get(name, labels).unwrap_or(0.0)
    }

    fn family_type(&self, name: &str) -> Option<String> {
        self.0["families"]
            .as_array()?
            .iter()
            .find(|f| f["name"] == name)
            .and_then(|f| f["type"].as_str().map(String::from))
    }
}

/// GET /metrics (with `key` when given) and parse it.
fn scrape(c: &Coordinator, key: Option<&str>) -> Metrics {
    let auth = key.map(|k| format!("Bearer {k}"));
    let headers: Vec<(&str, &str)> = auth
        .as_deref()
        .map(|a| vec![("Authorization", a)])
        .unwrap_or_default();
    let r = request(c, "GET", "/metrics", None, &headers).expect("/metrics answers");
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(
        r.header("content-type")
            .is_some_and(|t| t.starts_with("application/openmetrics-text")),
        "{:?}",
        r.headers
    );
    parse_metrics(&r.body)
}

fn parse_metrics(text: &str) -> Metrics {
    use std::io::Write;
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/parse_metrics.py");
    let py = python();
    let mut child = Command::new(&py)
        .arg(&script)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", py.display()));
    child
        .stdin
        .take()
        .expect("piped")
        .write_all(text.as_bytes())
        .expect("write the exposition to the parser");
    let out = child.wait_with_output().expect("the parser ends");
    assert!(
        out.status.success(),
        "{} {}: {}\n---- exposition:\n{text}",
        py.display(),
        script.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    Metrics(serde_json::from_slice(&out.stdout).expect("the parser prints JSON"))
}

// ---------------------------------------------------------------------------
// Metrics

#[test]
fn metrics_parse_as_openmetrics_and_count_what_the_fleet_did() {
    let dir = TestDir::new("metrics_parse_as_openmetrics_and_count_what_the_fleet_did");
    // One slot: alice serves slowly (so a second request queues), then dies;
    // bob answers 500 and is evicted; carol takes over.
    dir.write_profile(
        "alice",
        &knobbed("alice", json!({"completion_delay_ms": 700})),
    );
    dir.write_profile("bob", &knobbed("bob", json!({"fail_status": 500})));
    dir.write_profiles(&["carol"]);
    dir.write_key("mkey\n");
    let c = Coordinator::start(
        &dir,
        Builder::new()
            .pool_size(1)
            .env("CONSECUTIVE_5XX_TO_EVICT", 1)
            // /ready names profiles and pids to the admin key only.
            .env("ADMIN_KEY", "adm-test"),
    );
    let alice = wait_slot_ready(&c, 0, "alice", 10.0);

    let denied = request(&c, "GET", "/metrics", None, &[]).unwrap();
    assert_eq!(denied.status, 401, "{}", denied.body);
    let m = scrape(&c, Some("mkey"));
    let version = env!("CARGO_PKG_VERSION");
    assert_eq!(
        m.get("aistudioproxy_build_info", &[("version", version)]),
        Some(1.0)
    );
    assert_eq!(
        m.get("aistudioproxy_slots", &[("state", "ready")]),
        Some(1.0)
    );
    assert_eq!(
        m.get("aistudioproxy_slots", &[("state", "starting")]),
        Some(0.0)
    );
    assert_eq!(
        m.get("aistudioproxy_profiles", &[("state", "running")]),
        Some(1.0)
    );
    assert_eq!(
        m.get("aistudioproxy_profiles", &[("state", "queued")]),
        Some(2.0)
    );
    assert_eq!(
        m.get("aistudioproxy_profiles", &[("state", "cooling")]),
        Some(0.0)
    );
    assert_eq!(
        m.get("aistudioproxy_child_starts_total", &[("slot", "0")]),
        Some(1.0)
    );
    assert_eq!(
        m.get(
            "aistudioproxy_hydrations_total",
            &[("kind", "start"), ("outcome", "ok")]
        ),
        Some(1.0)
    );
    assert_eq!(m.get("aistudioproxy_profiles_hydrated", &[]), Some(3.0));
    assert_eq!(m.get("aistudioproxy_queue_length", &[]), Some(0.0));
    assert_eq!(
        m.family_type("aistudioproxy_child_starts").as_deref(),
        Some("counter")
    );
    assert_eq!(
        m.family_type("aistudioproxy_queue_wait_seconds").as_deref(),
        Some("histogram")
    );
    assert_eq!(
        m.family_type("aistudioproxy_slots").as_deref(),
        Some("gauge")
    );

    // Two completions at once on a child that takes one at a time: the
    // second waits in the fleet queue for the first.
    let port = c.ports.coordinator;
    let both: Vec<_> = (0..2)
        .map(|_| {
            std::thread::spawn(move || {
                post_json_with(
                    port,
                    "/v1/chat/completions",
                    &chat_body(),
                    &[("Authorization", "Bearer mkey")],
                )
                .map(|r| r.status)
            })
        })
        .collect();
    for t in both {
        assert_eq!(t.join().unwrap(), Some(200));
    }
    let m2 = scrape(&c, Some("mkey"));
    let ok = [("slot", "0"), ("class", "2xx")];
    assert_eq!(m2.n("aistudioproxy_requests_total", &ok), 2.0);
    let waits = m2.n("aistudioproxy_queue_wait_seconds_count", &[])
        - m.n("aistudioproxy_queue_wait_seconds_count", &[]);
    assert_eq!(waits, 2.0);
    let waited = m2.n("aistudioproxy_queue_wait_seconds_sum", &[]);
    assert!(waited >= 0.5, "the queued request waited {waited}s");
    assert_eq!(
        m2.n("aistudioproxy_request_duration_seconds_count", &[]),
        2.0
    );
    // A histogram's +Inf bucket holds every observation.
    assert_eq!(
        m2.n("aistudioproxy_queue_wait_seconds_bucket", &[("le", "+Inf")]),
        2.0
    );

    // A rotation: alice's child dies, bob starts on the slot.
    send_signal_to(alice, libc::SIGKILL);
    wait_slot_ready(&c, 0, "bob", 10.0);
    let m3 = scrape(&c, Some("mkey"));
    assert_eq!(
        m3.n(
            "aistudioproxy_child_exits_total",
            &[("slot", "0"), ("reason", "exited")]
        ),
        1.0
    );
    assert_eq!(
        m3.n("aistudioproxy_child_starts_total", &[("slot", "0")]),
        2.0
    );

    // An eviction: bob's 500 evicts it at the first strike; carol follows.
    let r = chat(&c, "mkey");
    assert_eq!(r.status / 100, 5, "{}", r.body);
    wait_slot_ready(&c, 0, "carol", 10.0);
    let m4 = scrape(&c, Some("mkey"));
    assert_eq!(
        m4.n(
            "aistudioproxy_evictions_total",
            &[("slot", "0"), ("reason", "child_failure")]
        ),
        1.0
    );
    assert_eq!(
        m4.n(
            "aistudioproxy_child_exits_total",
            &[("slot", "0"), ("reason", "evicted")]
        ),
        1.0
    );
    assert_eq!(
        m4.n(
            "aistudioproxy_requests_total",
            &[("slot", "0"), ("class", "5xx")]
        ),
        1.0
    );
    assert_eq!(
        m4.n("aistudioproxy_child_starts_total", &[("slot", "0")]),
        3.0
    );

    // A reload.
    assert_eq!(
        m4.n(
            "aistudioproxy_hydrations_total",
            &[("kind", "reload"), ("outcome", "ok")]
        ),
        0.0
    );
    ctl(&dir, &["reload"]).ok();
    let m5 = scrape(&c, Some("mkey"));
    assert_eq!(
        m5.n(
            "aistudioproxy_hydrations_total",
            &[("kind", "reload"), ("outcome", "ok")]
        ),
        1.0
    );
    assert_eq!(
        m5.n("aistudioproxy_hydration_duration_seconds_count", &[]),
        2.0
    );
    assert_eq!(
        m5.get("aistudioproxy_slots", &[("state", "ready")]),
        Some(1.0)
    );
    assert_eq!(
        m5.get("aistudioproxy_profiles", &[("state", "queued")]),
        Some(2.0)
    );
    // The sum over states is the pool and the profile count.
    assert_eq!(m5.n("aistudioproxy_slots", &[]), 1.0);
    assert_eq!(m5.n("aistudioproxy_profiles", &[]), 3.0);
}

#[test]
fn metrics_are_open_with_metrics_open_and_when_no_keys_are_set() {
    let dir = TestDir::new("metrics_are_open_with_metrics_open_and_when_no_keys_are_set");
    dir.write_profiles(&["alice"]);
    dir.write_key("mkey\n");
    let c = Coordinator::start(
        &dir,
        Builder::new().pool_size(1).env("METRICS_OPEN", "true"),
    );
    c.wait_all_ready(secs(10.0));
    let m = scrape(&c, None);
    assert_eq!(
        m.get("aistudioproxy_slots", &[("state", "ready")]),
        Some(1.0)
    );
    // The API itself still needs the key.
    assert_eq!(chat(&c, "wrong").status, 401);
    drop(c);

    let open = TestDir::new("metrics_open_without_keys");
    open.write_profiles(&["alice"]);
    let c = Coordinator::start(&open, Builder::new().pool_size(1));
    c.wait_all_ready(secs(10.0));
    scrape(&c, None);
}

// ---------------------------------------------------------------------------
// ctl

#[test]
fn ctl_status_restart_rotate_disable_enable_logs_and_reload() {
    let dir = TestDir::new("ctl_status_restart_rotate_disable_enable_logs_and_reload");
    dir.write_profile("alice", &knobbed("alice", json!({"log_lines": 20})));
    dir.write_profiles(&["bob", "carol"]);
    let c = Coordinator::start(&dir, Builder::new().pool_size(2));
    let alice = wait_slot_ready(&c, 0, "alice", 10.0);
    let bob = wait_slot_ready(&c, 1, "bob", 10.0);

    // status: the table, then the queue, then the profiles waiting.
    let t = ctl(&dir, &["status"]).ok();
    let lines: Vec<&str> = t.stdout.lines().collect();
    let header: Vec<&str> = lines[0].split("  ").filter(|w| !w.is_empty()).collect();
    assert_eq!(
        header,
        [
            "SLOT",
            "PROFILE",
            "STATE",
            "SINCE",
            "RESTARTS",
            "IN-FLIGHT",
            "RSS-MB",
            "LAST ERROR"
        ],
        "{t:#?}"
    );
    let row = |i: usize| -> Vec<&str> { lines[1 + i].split_whitespace().collect() };
    assert_eq!(row(0)[..3], ["0", "alice", "ready"], "{}", t.stdout);
    assert_eq!(row(1)[..3], ["1", "bob", "ready"], "{}", t.stdout);
    // RSS-MB is "-" until the child's first measurement.
    assert_eq!(row(0)[4..6], ["0", "0"], "{}", t.stdout);
    assert_eq!(row(0).last(), Some(&"-"), "{}", t.stdout);
    assert!(row(0)[3].ends_with('s'), "SINCE {:?}", row(0)[3]);
    assert!(
        t.stdout.contains("\nqueue: 0 waiting, oldest -\n"),
        "{}",
        t.stdout
    );
    assert!(t.stdout.contains("rotation queue: carol\n"), "{}", t.stdout);
    eprintln!("ctl status:\n{}", t.stdout);

    let s = status(&dir);
    assert_eq!(s["ok"], true);
    let slot0 = &s["slots"][0];
    for field in [
        "slot",
        "profile",
        "state",
        "pid",
        "since_unix_ms",
        "restarts",
        "in_flight",
        "ports",
    ] {
        assert!(!slot0[field].is_null(), "{field} missing in {slot0}");
    }
    assert!(slot0.get("last_error").is_some(), "{slot0}");
    assert_eq!(slot0["pid"], alice);
    assert_eq!(s["rotation_queue"], json!(["carol"]));
    assert_eq!(s["queue"]["queue_length"], 0);
    assert_eq!(profile_state(&s, "alice").as_deref(), Some("running"));
    assert_eq!(profile_state(&s, "carol").as_deref(), Some("queued"));
    assert_eq!(s["last_reload"], Value::Null);
    assert_eq!(s["shutting_down"], false);

    // restart 1: the same profile, a new child.
    let r = ctl(&dir, &["restart", "1"]).ok();
    assert!(r.stdout.contains("slot 1 (bob)"), "{r:#?}");
    let bob2 = {
        let mut pid = 0;
        wait_until("bob's new child", secs(10.0), || {
            let s = c.slots();
            pid = s[1].pid.unwrap_or(0);
            s[1].state == "ready" && s[1].profile.as_deref() == Some("bob") && pid != bob
        });
        pid
    };
    assert_eq!(c.slots()[1].restarts, 1);
    assert_eq!(dir.child_pid("bob"), Some(bob2));

    // rotate 0: alice goes to the queue, carol takes slot 0.
    ctl(&dir, &["rotate", "0"]).ok();
    wait_slot_ready(&c, 0, "carol", 10.0);
    wait_until("alice's child to be gone", secs(5.0), || {
        process_gone(alice)
    });
    assert_eq!(
        ctl(&dir, &["--json", "status"]).ok().json()["rotation_queue"],
        json!(["alice"])
    );

    // disable bob (running): drained and rotated out, and never started
    // again; slot 1 takes alice from the queue.
    let d = ctl(&dir, &["disable", "bob"]).ok();
    assert!(d.stdout.contains("slot 1 drains it"), "{d:#?}");
    wait_slot_ready(&c, 1, "alice", 10.0);
    wait_until("bob's child to be gone", secs(5.0), || process_gone(bob2));
    let t = ctl(&dir, &["status"]).ok().stdout;
    assert!(t.contains("disabled: bob\n"), "{t}");
    assert_eq!(
        profile_state(&status(&dir), "bob").as_deref(),
        Some("disabled")
    );
    // Both slots rotate through the queue: bob is skipped every time.
    ctl(&dir, &["rotate", "0"]).ok();
    ctl(&dir, &["rotate", "1"]).ok();
    wait_until("both slots ready again", secs(10.0), || {
        let s = c.slots();
        s.iter().all(|s| s.state == "ready") && s.iter().all(|s| s.restarts >= 2)
    });
    assert!(c
        .slots()
        .iter()
        .all(|s| s.profile.as_deref() != Some("bob")));
    assert_eq!(dir.child_pid("bob"), Some(bob2), "bob was started again");

    // enable bob: back in the rotation queue.
    ctl(&dir, &["enable", "bob"]).ok();
    assert_eq!(
        profile_state(&status(&dir), "bob").as_deref(),
        Some("queued")
    );
    assert!(!ctl(&dir, &["status"]).ok().stdout.contains("disabled:"));

    // logs: the last lines of the profile's child log.
    let l = ctl(&dir, &["logs", "alice", "-n", "5"]).ok();
    let got: Vec<&str> = l.stdout.lines().collect();
    assert_eq!(got.len(), 5, "{l:#?}");
    let j = ctl(&dir, &["logs", "alice", "-n", "3", "--json"])
        .ok()
        .json();
    assert_eq!(j["profile"], "alice");
    assert_eq!(j["lines"].as_array().map(Vec::len), Some(3));
    assert!(
        read_to_string(&dir.log_dir().join("alice.log")).contains("log line 19"),
        "the knob's lines are in the child log"
    );

    // reload: the same profiles, nothing changes; status says when and how.
    let r = ctl(&dir, &["reload"]).ok();
    assert!(
        r.stdout.contains("reloaded 3 profiles: 0 added, 0 removed"),
        "{r:#?}"
    );
    let s = status(&dir);
    assert_eq!(s["last_reload"]["outcome"], "ok", "{s}");
    assert_eq!(s["last_reload"]["trigger"], "ctl", "{s}");
    assert!(s["last_reload"]["at_unix_ms"].as_u64().unwrap() > 0);
    let t = ctl(&dir, &["status"]).ok().stdout;
    assert!(t.contains("last reload: ") && t.contains(" ago, ok"), "{t}");

    // Every operation that changes something is logged once, naming it.
    let log = c.stderr();
    for needle in [
        "admin (socket): restart slot 1",
        "admin (socket): rotate slot 0",
        "admin (socket): disable profile bob",
        "admin (socket): enable profile bob",
        "admin (socket): reload",
    ] {
        assert!(log.contains(needle), "{needle} not logged");
    }
}

#[test]
fn ctl_errors_name_the_fix_and_exit_1_or_2() {
    let dir = TestDir::new("ctl_errors_name_the_fix_and_exit_1_or_2");
    // No coordinator: one line naming the socket, exit 1.
    let none = ctl(&dir, &["status"]);
    assert_eq!(none.code, Some(1), "{none:#?}");
    let sock = dir.cache_dir().join("admin.sock");
    assert_eq!(none.stderr.lines().count(), 1, "{none:#?}");
    assert!(
        none.stderr.starts_with(&format!(
            "aistudioproxy ctl: no coordinator listening on {}: ",
            sock.display()
        )) || none.stderr.starts_with(&format!(
            "aistudioproxy ctl: no coordinator listening on {} (",
            sock.display()
        )),
        "{none:#?}"
    );
    assert!(none.stdout.is_empty());
    // Usage errors: exit 2 with the usage.
    for bad in [
        &[][..],
        &["frobnicate"],
        &["restart"],
        &["restart", "one"],
        &["logs", "alice", "-n", "0"],
        &["--bogus", "status"],
    ] {
        let u = ctl(&dir, bad);
        assert_eq!(u.code, Some(2), "{u:#?}");
        assert!(u.stderr.contains("usage: aistudioproxy ctl"), "{u:#?}");
    }

    dir.write_profiles(&["alice"]);
    let sock_path = dir.path.join("elsewhere.sock");
    let c = Coordinator::start(
        &dir,
        Builder::new()
            .pool_size(1)
            .env("ADMIN_SOCKET", sock_path.display()),
    );
    c.wait_all_ready(secs(10.0));
    // ADMIN_SOCKET moves the socket; --socket finds it.
    let s = ctl_with(&[], &["--socket", sock_path.to_str().unwrap(), "status"]).ok();
    assert!(s.stdout.starts_with("SLOT"), "{s:#?}");
    let s = ctl_with(&[("ADMIN_SOCKET", &sock_path)], &["--json", "status"]).ok();
    assert_eq!(s.json()["slots"][0]["profile"], "alice");
    for (args, names) in [
        (&["disable", "mallory"][..], "\"mallory\""),
        (&["enable", "mallory"], "\"mallory\""),
        (&["reset", "mallory"], "\"mallory\""),
        (&["logs", "mallory"], "\"mallory\""),
        (&["restart", "7"], "no slot 7"),
        (&["rotate", "7"], "no slot 7"),
    ] {
        let mut all = vec!["--socket", sock_path.to_str().unwrap()];
        all.extend_from_slice(args);
        let e = ctl_with(&[], &all);
        assert_eq!(e.code, Some(1), "{e:#?}");
        assert_eq!(e.stderr.lines().count(), 1, "{e:#?}");
        assert!(e.stderr.contains(names), "{e:#?}");
    }
    let _ = c;
}

#[test]
fn ctl_reset_clears_a_cooldown() {
    let dir = TestDir::new("ctl_reset_clears_a_cooldown");
    dir.write_profile("alice", &knobbed("alice", json!({"exhaust_after": 1})));
    dir.write_profiles(&["bob"]);
    let c = Coordinator::start(
        &dir,
        Builder::new()
            .pool_size(1)
            .env("EMPTY_ANSWERS_TO_ROTATE", 1)
            .env("METRICS_OPEN", "true"),
    );
    wait_slot_ready(&c, 0, "alice", 10.0);
    assert_eq!(chat(&c, "any").status, 200);
    // alice is exhausted now: her answer retires her, bob takes the slot.
    let _ = chat(&c, "any");
    wait_slot_ready(&c, 0, "bob", 10.0);
    let s = status(&dir);
    let alice = profile_of(&s, "alice")
        .expect("alice in the status")
        .clone();
    // Her answers named their model: that model cools, not her account.
    assert_eq!(alice["state"], "queued", "{s}");
    assert_eq!(alice["cools_for"], json!(["gemini-test"]), "{alice}");
    assert!(
        alice["model_cooldowns"][0]["left_s"].as_u64().unwrap() > 60,
        "{alice}"
    );
    let t = ctl(&dir, &["status"]).ok().stdout;
    assert!(
        t.contains("rotation queue: alice (cools for gemini-test)"),
        "{t}"
    );
    assert!(t.contains("cooling for model gemini-test: alice ("), "{t}");
    let m = scrape(&c, None);
    assert_eq!(
        m.get("aistudioproxy_profiles", &[("state", "cooling")]),
        Some(0.0)
    );
    assert!(
        m.n(
            "aistudioproxy_model_cooldown_seconds_left",
            &[("profile", "alice"), ("model", "gemini-test")]
        ) > 60.0
    );

    let r = ctl(&dir, &["reset", "alice"]).ok();
    assert!(
        r.stdout.contains("cooldown and failure counts cleared"),
        "{r:#?}"
    );
    let s = status(&dir);
    assert_eq!(profile_state(&s, "alice").as_deref(), Some("queued"), "{s}");
    assert!(!ctl(&dir, &["status"]).ok().stdout.contains("cooling"));
    assert_eq!(
        profile_of(&s, "alice").unwrap()["cools_for"],
        json!(null),
        "{s}"
    );
    // And she runs again at the next rotation.
    ctl(&dir, &["rotate", "0"]).ok();
    wait_slot_ready(&c, 0, "alice", 10.0);
}

// ---------------------------------------------------------------------------
// The admin socket and /admin/

#[test]
fn admin_socket_is_private_and_admin_http_needs_its_key() {
    let dir = TestDir::new("admin_socket_is_private_and_admin_http_needs_its_key");
    dir.write_profiles(&["alice"]);
    let mut c = Coordinator::start(&dir, Builder::new().pool_size(1));
    c.wait_all_ready(secs(10.0));
    let sock = dir.cache_dir().join("admin.sock");
    let meta = std::fs::metadata(&sock).expect("the admin socket exists");
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    // SAFETY: geteuid has no failure mode.
    assert_eq!(meta.uid(), unsafe { libc::geteuid() });
    use std::os::unix::fs::FileTypeExt;
    assert!(meta.file_type().is_socket());
    // Without an admin key there is no /admin/ at all.
    for (m, p) in [("GET", "/admin/status"), ("POST", "/admin/restart")] {
        let r = request(&c, m, p, Some(&json!({"slot": 0})), &[]).unwrap();
        assert_eq!(r.status, 404, "{m} {p}: {}", r.body);
    }
    c.send_signal(libc::SIGTERM);
    c.wait_exit(secs(10.0));
    assert!(!sock.exists(), "the socket is left after a clean exit");
    drop(c);

    let keyed = TestDir::new("admin_http_with_a_key");
    keyed.write_profiles(&["alice"]);
    std::fs::write(keyed.path.join("admin.key"), "adm-s3cret\n").unwrap();
    let c = Coordinator::start(
        &keyed,
        Builder::new()
            .pool_size(1)
            .env("ADMIN_KEY_FILE", keyed.path.join("admin.key").display()),
    );
    let pid = wait_slot_ready(&c, 0, "alice", 10.0);
    for headers in [
        vec![],
        vec![("Authorization", "Bearer wrong")],
        vec![("X-Admin-Key", "adm-s3cre")],
    ] {
        let r = request(&c, "GET", "/admin/status", None, &headers).unwrap();
        assert_eq!(r.status, 401, "{headers:?}: {}", r.body);
    }
    let r = request(
        &c,
        "GET",
        "/admin/status",
        None,
        &[("Authorization", "Bearer adm-s3cret")],
    )
    .unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["slots"][0]["profile"], "alice");
    let r = request(
        &c,
        "POST",
        "/admin/restart",
        Some(&json!({"slot": 0})),
        &[("X-Admin-Key", "adm-s3cret")],
    )
    .unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["ok"], true);
    wait_until("alice restarted", secs(10.0), || {
        let s = c.slots();
        s[0].state == "ready" && s[0].pid.is_some_and(|p| p != pid)
    });
    let bad = request(
        &c,
        "POST",
        "/admin/restart",
        Some(&json!({"slot": 9})),
        &[("X-Admin-Key", "adm-s3cret")],
    )
    .unwrap();
    assert_eq!(bad.status, 400, "{}", bad.body);
    assert!(c.stderr().contains("admin (http): restart slot 0"));
    assert!(
        !c.stderr().contains("adm-s3cret"),
        "the admin key was logged"
    );
}

// ---------------------------------------------------------------------------
// Drain

#[test]
fn a_restart_drains_the_request_in_flight_then_starts_the_same_profile() {
    let dir = TestDir::new("a_restart_drains_the_request_in_flight_then_starts_the_same_profile");
    dir.write_profile(
        "alice",
        &knobbed("alice", json!({"completion_delay_ms": 1500})),
    );
    dir.write_profiles(&["bob"]);
    let c = Coordinator::start(&dir, Builder::new().pool_size(1));
    let pid = wait_slot_ready(&c, 0, "alice", 10.0);
    let port = c.ports.coordinator;
    let slow = std::thread::spawn(move || {
        post_json_with(port, "/v1/chat/completions", &chat_body(), &[]).map(|r| (r.status, r.body))
    });
    wait_until("the request in flight", secs(5.0), || {
        c.ready().1["in_flight"] == 1
    });
    let r = ctl(&dir, &["restart", "0"]).ok();
    assert!(r.stdout.contains("drains 1 in-flight"), "{r:#?}");
    wait_until("slot 0 draining", secs(2.0), || {
        c.slots()[0].state == "draining"
    });
    // Draining: the child still runs, the request is not cut off.
    assert!(!process_gone(pid));
    let (status, body) = slow.join().unwrap().expect("the slow request is answered");
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("profile=alice"), "{body}");
    let again = wait_until_new_pid(&c, pid);
    assert_eq!(c.slots()[0].profile.as_deref(), Some("alice"));
    assert_ne!(again, pid);
    assert!(process_gone(pid));
    assert_eq!(c.ready().1["queue"], json!(["bob"]));
}

fn wait_until_new_pid(c: &Coordinator, old: i32) -> i32 {
    let mut pid = 0;
    wait_until("a new ready child on slot 0", secs(10.0), || {
        let s = c.slots();
        pid = s[0].pid.unwrap_or(0);
        s[0].state == "ready" && pid != old && pid != 0
    });
    pid
}

// ---------------------------------------------------------------------------
// Reload

/// The auth file the child of `slot` runs on, from its `/api/info`.
fn auth_json_of(c: &Coordinator, slot: u16) -> PathBuf {
    let info = http_get(c.ports.api + slot, "/api/info").expect("the child answers /api/info");
    PathBuf::from(info.json()["auth_json"].as_str().expect("auth_json"))
}

#[test]
fn reload_adds_removes_and_changes_profiles_and_keys_on_sighup_and_ctl() {
    let dir = TestDir::new("reload_adds_removes_and_changes_profiles_and_keys_on_sighup_and_ctl");
    dir.write_profile("alice", &json!({"cookies": [], "v": 1}));
    dir.write_profiles(&["bob", "carol"]);
    dir.write_key("old-key\n");
    let c = Coordinator::start(
        &dir,
        Builder::new()
            .pool_size(2)
            .env("METRICS_OPEN", "true")
            // /ready names profiles and pids to the admin key only.
            .env("ADMIN_KEY", "adm-test"),
    );
    let alice = wait_slot_ready(&c, 0, "alice", 10.0);
    let bob = wait_slot_ready(&c, 1, "bob", 10.0);
    assert_eq!(chat(&c, "old-key").status, 200);
    let copy = auth_json_of(&c, 0);
    let before = std::fs::read(&copy).expect("alice's working copy");

    // SIGHUP: dave added, bob (running) removed, alice changed.
    dir.write_profile("alice", &json!({"cookies": [], "v": 2}));
    dir.write_profiles(&["dave"]);
    std::fs::remove_file(dir.profiles_dir().join("bob.json")).unwrap();
    c.send_signal(libc::SIGHUP);
    let mut s = Value::Null;
    wait_until("the SIGHUP reload", secs(10.0), || {
        s = status(&dir);
        s["last_reload"]["trigger"] == "SIGHUP"
    });
    assert_eq!(s["last_reload"]["outcome"], "ok", "{s}");
    let report = &s["last_reload"]["report"];
    assert_eq!(report["added"], json!(["dave"]), "{s}");
    assert_eq!(report["removed"], json!(["bob"]), "{s}");
    assert_eq!(report["draining"], json!([1]), "{s}");
    assert_eq!(report["profiles"], 3);
    assert_eq!(report["keys"], 1);
    assert_eq!(report["keys_changed"], false);

    // bob's slot drains and rotates to carol; bob leaves /ready.
    wait_slot_ready(&c, 1, "carol", 10.0);
    wait_until("bob's child to be gone", secs(5.0), || process_gone(bob));
    let (_, ready) = c.ready();
    assert_eq!(queue(&ready), vec!["dave"], "{ready}");
    assert!(
        profile_of(&ready, "bob").is_none(),
        "bob still in /ready: {ready}"
    );
    assert!(!ready.to_string().contains("\"bob\""), "{ready}");
    for p in ["alice", "carol", "dave"] {
        assert!(
            profile_of(&ready, p).is_some(),
            "{p} missing from /ready: {ready}"
        );
    }
    c.wait_all_ready(secs(5.0));

    // alice runs on, on her untouched copy; her next start gets v2.
    assert_eq!(c.slots()[0].pid, Some(alice));
    assert_eq!(std::fs::read(&copy).unwrap(), before);
    ctl(&dir, &["restart", "0"]).ok();
    let alice2 = wait_until_new_pid(&c, alice);
    let fresh: Value =
        serde_json::from_slice(&std::fs::read(auth_json_of(&c, 0)).unwrap()).unwrap();
    assert_eq!(fresh["v"], 2, "{fresh}");

    // ctl reload with a new key: the edge uses it at once, and every child
    // restarts to read it (a child checks the keys it started with).
    dir.write_key("new-key\n");
    let carol = c.slots()[1].pid.unwrap();
    let r = ctl(&dir, &["reload"]).ok();
    assert!(
        r.stdout.contains(
            "reloaded 3 profiles: 0 added, 0 removed (0 slots draining), 1 API keys (changed: every child restarts"
        ),
        "{r:#?}"
    );
    assert_eq!(chat(&c, "old-key").status, 401);
    let served = chat(&c, "new-key");
    assert_eq!(served.status, 200, "{}", served.body);
    wait_until("both children restarted", secs(10.0), || {
        let s = c.slots();
        s.iter().all(|s| s.state == "ready")
            && s[0].pid.is_some_and(|p| p != alice2)
            && s[1].pid.is_some_and(|p| p != carol)
    });
    for _ in 0..4 {
        let r = chat(&c, "new-key");
        assert_eq!(r.status, 200, "{}", r.body);
    }
    assert_eq!(status(&dir)["last_reload"]["trigger"], "ctl");

    // A reload that changes nothing restarts nothing.
    let pids: Vec<_> = c.slots().iter().map(|s| s.pid).collect();
    let r = ctl(&dir, &["reload"]).ok();
    assert!(r.stdout.ends_with("1 API keys\n"), "{r:#?}");
    let m = scrape(&c, None);
    assert_eq!(
        m.n(
            "aistudioproxy_hydrations_total",
            &[("kind", "reload"), ("outcome", "ok")]
        ),
        3.0
    );
    assert_eq!(c.slots().iter().map(|s| s.pid).collect::<Vec<_>>(), pids);
    let log = c.stderr();
    assert!(
        log.contains("reload (SIGHUP): reloaded 3 profiles: 1 added, 1 removed"),
        "{log}"
    );
}

#[test]
fn reload_interval_picks_up_a_new_profile() {
    let dir = TestDir::new("reload_interval_picks_up_a_new_profile");
    dir.write_profiles(&["alice"]);
    let c = Coordinator::start(
        &dir,
        Builder::new()
            .pool_size(1)
            .env("PROFILE_RELOAD_INTERVAL_S", 1),
    );
    c.wait_all_ready(secs(10.0));
    dir.write_profiles(&["bob"]);
    wait_until("bob in the queue", secs(5.0), || {
        queue(&c.ready().1) == ["bob"]
    });
    assert_eq!(status(&dir)["last_reload"]["trigger"], "interval");
}

/// The coordinator's environment for the S3 backend against `s3`.
fn s3_builder(s3: &S3Server, endpoint: &str) -> Builder {
    let _ = s3;
    Builder::new()
        .env("PROFILE_BACKEND", "s3")
        .env("AUTH_PROFILE_S3_BUCKET", "auth")
        .env("AUTH_PROFILE_S3_ENDPOINT", endpoint)
        .env("AUTH_PROFILE_S3_REGION", "us-east-1")
        .env("AWS_ACCESS_KEY_ID", ACCESS_KEY)
        .env("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
        .env("AUTH_WRITEBACK", "off")
        .env("METRICS_OPEN", "true")
}

#[test]
fn reload_from_s3_picks_up_an_upload_and_a_failed_one_changes_nothing() {
    let dir = TestDir::new("reload_from_s3_picks_up_an_upload_and_a_failed_one_changes_nothing");
    let mut s3 = S3Server::start();
    let profile = |n: &str| json!({"cookies": [], "name": n}).to_string();
    s3.put("auth", "active/alice.json", profile("alice").as_bytes());
    let endpoint = s3.endpoint();
    let c = Coordinator::start(&dir, s3_builder(&s3, &endpoint).pool_size(1));
    wait_slot_ready(&c, 0, "alice", 10.0);
    assert!(queue(&c.ready().1).is_empty());

    s3.put("auth", "active/bob.json", profile("bob").as_bytes());
    let r = ctl(&dir, &["reload"]).ok();
    assert!(r.stdout.contains("2 profiles: 1 added"), "{r:#?}");
    assert_eq!(queue(&c.ready().1), vec!["bob"]);

    // S3 goes down: the reload fails, one warning, nothing changes.
    s3.put("auth", "active/carol.json", profile("carol").as_bytes());
    s3.stop();
    let before = c.ready().1;
    let warnings_before = c.stderr().matches(" WARN ").count();
    let f = ctl(&dir, &["reload"]);
    assert_eq!(f.code, Some(1), "{f:#?}");
    assert!(
        f.stderr.contains("reload failed, nothing changed"),
        "{f:#?}"
    );
    assert!(
        f.stderr.contains(&endpoint),
        "the error names the endpoint: {f:#?}"
    );
    assert_eq!(f.stderr.lines().count(), 1, "{f:#?}");
    let after = c.ready().1;
    assert_eq!(queue(&after), queue(&before));
    assert_eq!(slots(&after), slots(&before));
    assert_eq!(after["profiles"], before["profiles"]);
    let log = c.stderr();
    let new_warnings: Vec<&str> = log
        .lines()
        .filter(|l| l.contains(" WARN "))
        .skip(warnings_before)
        .collect();
    assert_eq!(new_warnings.len(), 1, "{new_warnings:#?}");
    assert!(
        new_warnings[0].contains("reload (ctl) failed, nothing changed"),
        "{new_warnings:?}"
    );
    let s = status(&dir);
    assert_eq!(s["last_reload"]["outcome"], "failed", "{s}");
    assert!(
        s["last_reload"]["error"]
            .as_str()
            .unwrap()
            .contains(&endpoint),
        "{s}"
    );
    let m = scrape(&c, None);
    assert_eq!(
        m.n(
            "aistudioproxy_hydrations_total",
            &[("kind", "reload"), ("outcome", "failed")]
        ),
        1.0
    );
    assert_eq!(
        m.n(
            "aistudioproxy_hydrations_total",
            &[("kind", "reload"), ("outcome", "ok")]
        ),
        1.0
    );
    assert_eq!(m.get("aistudioproxy_profiles_hydrated", &[]), Some(2.0));
    assert_eq!(
        m.get("aistudioproxy_slots", &[("state", "ready")]),
        Some(1.0)
    );
    // Still serving.
    assert_eq!(chat(&c, "any").status, 200);
}

// ---------------------------------------------------------------------------
// JSON logs

#[test]
fn json_logs_parse_name_slot_profile_and_pid_and_hold_no_key() {
    let dir = TestDir::new("json_logs_parse_name_slot_profile_and_pid_and_hold_no_key");
    dir.write_profiles(&["alice", "bob"]);
    dir.write_key("sk-very-secret-key\n");
    let mut c = Coordinator::start(&dir, Builder::new().env("LOG_FORMAT", "json"));
    c.wait_all_ready(secs(10.0));
    let body = json!({"model": "gemini-test", "messages": [{"role": "user", "content": "hi"}]});
    let ok = post_json_with(
        c.ports.coordinator,
        "/v1/chat/completions",
        &body,
        &[("Authorization", "Bearer sk-very-secret-key")],
    )
    .unwrap();
    assert_eq!(ok.status, 200);
    let denied = post_json_with(
        c.ports.coordinator,
        "/v1/chat/completions",
        &body,
        &[("Authorization", "Bearer sk-wrong-guess")],
    )
    .unwrap();
    assert_eq!(denied.status, 401);
    // Operator actions are events of their own, with the slot or profile.
    ctl(&dir, &["restart", "1"]).ok();
    wait_until("slot 1 restarted", secs(10.0), || {
        let s = c.slots();
        s[1].restarts == 1 && s[1].state == "ready"
    });
    ctl(&dir, &["disable", "alice"]).ok();
    wait_until("slot 0 without alice", secs(10.0), || {
        c.slots()[0].state == "cooldown"
    });
    c.send_signal(libc::SIGTERM);
    c.wait_exit(secs(10.0));

    let log = c.stderr();
    let events: Vec<Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    assert!(events.len() >= 5, "{log}");
    for e in &events {
        for field in ["time", "level", "target", "message"] {
            assert!(e[field].is_string(), "{field} missing in {e}");
        }
    }
    let with = |needle: &str| -> Vec<&Value> {
        events
            .iter()
            .filter(|e| e["message"].as_str().unwrap().contains(needle))
            .collect()
    };
    let started = with("started profile");
    assert!(started.len() >= 3, "{log}");
    for e in started {
        assert!(e["slot"].is_u64() && e["pid"].is_u64(), "{e}");
        assert!(
            ["alice", "bob"].contains(&e["profile"].as_str().unwrap()),
            "{e}"
        );
    }
    let restart = with("admin (socket): restart slot 1");
    assert_eq!(restart.len(), 1, "{log}");
    assert_eq!(restart[0]["slot"], 1);
    let disable = with("admin (socket): disable profile alice");
    assert_eq!(disable.len(), 1, "{log}");
    assert_eq!(disable[0]["profile"], "alice");
    assert!(!log.contains("sk-very-secret-key") && !log.contains("sk-wrong-guess"));
}

#[test]
fn sigterm_drains_requests_in_flight_and_queued_before_stopping_children() {
    let dir = TestDir::new("sigterm_drains_requests_in_flight_and_queued_before_stopping_children");
    dir.write_profile("a", &knobbed("a", json!({"completion_delay_ms": 1200})));
    let mut c = Coordinator::start(&dir, Builder::new().pool_size(1));
    c.wait_all_ready(secs(10.0));
    let port = c.ports.coordinator;
    // One completion runs, one waits in the front-door queue behind it.
    let clients: Vec<_> = (0..2)
        .map(|_| {
            std::thread::spawn(move || {
                post_json_with(port, "/v1/chat/completions", &chat_body(), &[]).map(|r| r.status)
            })
        })
        .collect();
    wait_until("one running and one queued", secs(5.0), || {
        let (_, body) = c.ready();
        body["in_flight"] == 1 && body["requests_waiting"] == 1
    });
    let sent = std::time::Instant::now();
    c.send_signal(libc::SIGTERM);
    wait_until("/ready to say 503", secs(2.0), || c.ready().0 == 503);
    let statuses: Vec<Option<u16>> = clients.into_iter().map(|t| t.join().unwrap()).collect();
    assert_eq!(
        statuses,
        vec![Some(200), Some(200)],
        "both were served before the stop"
    );
    let status = c.wait_exit(secs(15.0));
    assert!(status.success(), "{status:?}");
    assert!(
        sent.elapsed() >= std::time::Duration::from_millis(1500),
        "the drain waited for both completions"
    );
    let log = c.stderr();
    assert!(log.contains("requests drained in"), "{log}");
    wait_no_survivors(&dir, std::time::Duration::from_secs(3));
}

#[test]
fn a_second_signal_skips_the_drain() {
    let dir = TestDir::new("a_second_signal_skips_the_drain");
    dir.write_profile("a", &knobbed("a", json!({"completion_delay_ms": 20000})));
    let mut c = Coordinator::start(&dir, Builder::new().pool_size(1).grace_s(10));
    c.wait_all_ready(secs(10.0));
    let port = c.ports.coordinator;
    let client = std::thread::spawn(move || {
        post_json_with(port, "/v1/chat/completions", &chat_body(), &[]).map(|r| r.status)
    });
    wait_until("a request in flight", secs(5.0), || {
        c.ready().1["in_flight"] == 1
    });
    c.send_signal(libc::SIGTERM);
    wait_until("/ready to say 503", secs(2.0), || c.ready().0 == 503);
    let sent = std::time::Instant::now();
    c.send_signal(libc::SIGTERM);
    c.wait_exit(secs(5.0));
    assert!(
        sent.elapsed() < std::time::Duration::from_secs(3),
        "{:?}",
        sent.elapsed()
    );
    let _ = client.join();
}

#[test]
fn a_rotation_asked_for_during_a_backoff_applies_before_the_next_start() {
    let dir = TestDir::new("a_rotation_asked_for_during_a_backoff_applies_before_the_next_start");
    dir.write_profiles(&["a", "b"]);
    // A foreign holder of slot 0's camoufox port keeps the slot backing off
    // on its own profile, a (a taken port does not rotate).
    let squatter = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = squatter.local_addr().unwrap().port();
    let c = Coordinator::start(
        &dir,
        Builder::new().pool_size(1).env("BASE_CAMOUFOX_PORT", port),
    );
    wait_until("slot 0 backing off on a", secs(10.0), || {
        let s = &c.slots()[0];
        s.state == "backoff" && s.profile.as_deref() == Some("a")
    });
    assert_eq!(ctl(&dir, &["rotate", "0"]).code, Some(0));
    drop(squatter);
    wait_until("the slot to start b, not a", secs(15.0), || {
        let s = &c.slots()[0];
        s.state == "ready" && s.profile.as_deref() == Some("b")
    });
    assert!(dir.child_pid("a").is_none(), "a was started after all");
    assert!(
        c.stderr().contains("while no child ran: rotating to b"),
        "{}",
        c.stderr()
    );
}

/// The stop does not hang when the admin socket's file is gone (removed
/// with its directory, as the demo's scratch directory is on Ctrl-C): the
/// admin thread's accept is woken without the file.
#[test]
fn sigterm_stops_even_when_the_admin_socket_file_is_gone() {
    let dir = TestDir::new("operate_admin_socket_gone");
    dir.write_profile("a", &knobbed("a", json!({})));
    let mut c = Coordinator::start(&dir, Builder::new().pool_size(1));
    c.wait_all_ready(secs(10.0));
    let sock = dir.cache_dir().join("admin.sock");
    assert!(sock.exists(), "{}", sock.display());
    std::fs::remove_file(&sock).unwrap();
    c.send_signal(libc::SIGTERM);
    let status = c.wait_exit(secs(10.0));
    assert!(status.success(), "{status:?}\n{}", c.stderr());
}
