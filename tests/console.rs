//! The operator's console: usage per profile, model and API key (tokens
//! included, streamed and not, surviving a restart; key labels shown, keys
//! never), `ctl events` following the fleet as things happen, webhook
//! notifications (one message per event, a dead webhook costing the fleet
//! nothing), and the status page's files and their Content-Security-Policy.
//! The page itself is driven in a real Chromium by
//! tests/python/test_console_page.py.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::common::*;

const KEY_A: &str = "sk-console-alpha-7f3a9c";
const KEY_B: &str = "sk-console-beta-51d2e8";

fn knobbed(name: &str, knobs: Value) -> Value {
    json!({ "cookies": [], "name": name, "testchild": knobs })
}

fn chat(c: &Coordinator, key: &str, model: &str, stream: bool) -> Reply {
    post_json_with(
        c.ports.coordinator,
        "/v1/chat/completions",
        &json!({"model": model, "stream": stream, "messages": [{"role": "user", "content": "hi"}]}),
        &[("Authorization", &format!("Bearer {key}"))],
    )
    .expect("the coordinator answers a completion")
}

/// `aistudioproxy ctl <args>` against the test's coordinator.
fn ctl(dir: &TestDir, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(COORDINATOR)
        .env_clear()
        .env("AUTH_PROFILE_CACHE_DIR", dir.cache_dir())
        .arg("ctl")
        .args(args)
        .output()
        .expect("run ctl");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn ctl_json(dir: &TestDir, args: &[&str]) -> Value {
    let mut all = vec!["--json"];
    all.extend_from_slice(args);
    let (code, out, err) = ctl(dir, &all);
    assert_eq!(code, 0, "ctl {args:?}: {err}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("not JSON ({e}): {out}"))
}

fn metrics(c: &Coordinator) -> String {
    let r = http_get(c.ports.coordinator, "/metrics").expect("metrics answer");
    assert_eq!(r.status, 200);
    r.body.clone()
}

fn model_row<'v>(usage: &'v Value, profile: &str, model: &str) -> Option<&'v Value> {
    usage["profiles"]
        .as_array()?
        .iter()
        .find(|p| p["profile"] == profile)?["models"]
        .as_array()?
        .iter()
        .find(|m| m["model"] == model)
}

fn key_row<'v>(usage: &'v Value, label: &str) -> Option<&'v Value> {
    usage["keys"].as_array()?.iter().find(|k| k["key"] == label)
}

/// Every file under `root` (logs, state), read as text.
fn all_text_under(root: &Path) -> String {
    let mut out = String::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if let Ok(b) = std::fs::read(&p) {
                out.push_str(&String::from_utf8_lossy(&b));
            }
        }
    }
    out
}

#[test]
fn console_usage_counts_tokens_per_profile_model_and_key_and_survives_a_restart() {
    let dir = TestDir::new("console_usage_counts");
    dir.write_profile(
        "alice",
        &knobbed("alice", json!({"models": "gemini-x,gemini-y"})),
    );
    dir.write_key(&format!(
        "# the keys of two teams\n{KEY_A}   # team-a\n{KEY_B}\n"
    ));
    let builder = || Builder::new().pool_size(1).env("METRICS_OPEN", "true");
    let mut c = Coordinator::start(&dir, builder());
    c.wait_all_ready(secs(10.0));
    // The child reads its keys without the labels: it accepts both.
    for stream in [false, false, false, true, true] {
        let r = chat(&c, KEY_A, "gemini-x", stream);
        assert_eq!(r.status, 200, "{}", r.body);
        if stream {
            assert!(
                r.body.contains("\"usage\""),
                "the stream's last chunk carries usage"
            );
        }
    }
    assert_eq!(chat(&c, KEY_B, "gemini-y", false).status, 200);
    assert_eq!(chat(&c, "sk-wrong", "gemini-x", false).status, 401);

    let u = ctl_json(&dir, &["usage"]);
    let x = model_row(&u, "alice", "gemini-x").unwrap_or_else(|| panic!("{u:#}"));
    assert_eq!(x["total"]["answers"], 5, "{u:#}");
    assert_eq!(x["total"]["ok"], 5);
    assert_eq!(x["total"]["prompt_tokens"], 5, "1 per answer, streamed too");
    assert_eq!(x["total"]["completion_tokens"], 5);
    assert_eq!(x["total"]["total_tokens"], 10);
    assert_eq!(x["last_hour"]["answers"], 5);
    let a = key_row(&u, "team-a").unwrap_or_else(|| panic!("{u:#}"));
    assert_eq!(
        (
            a["total"]["answers"].as_u64(),
            a["total"]["total_tokens"].as_u64()
        ),
        (Some(5), Some(10))
    );
    let labels: Vec<String> = u["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["key"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(labels.len(), 2, "{labels:?}");
    let hashed = labels.iter().find(|l| *l != "team-a").unwrap().clone();
    assert!(hashed.starts_with("key-") && hashed.len() == 10, "{hashed}");
    assert_eq!(key_row(&u, &hashed).unwrap()["total"]["answers"], 1);

    let (code, table, _) = ctl(&dir, &["usage"]);
    assert_eq!(code, 0);
    assert!(table.contains("alice    gemini-x  5"), "{table}");
    assert!(table.contains("team-a"), "{table}");

    let m = metrics(&c);
    for needle in [
        "aistudioproxy_usage_answers_total{profile=\"alice\",model=\"gemini-x\",class=\"ok\"} 5",
        "aistudioproxy_usage_tokens_total{profile=\"alice\",model=\"gemini-x\",kind=\"prompt\"} 5",
        "aistudioproxy_key_answers_total{key=\"team-a\",class=\"ok\"} 5",
        "aistudioproxy_key_tokens_total{key=\"team-a\",kind=\"completion\"} 5",
    ] {
        assert!(m.contains(needle), "{needle} missing from\n{m}");
    }
    assert!(m.contains(&format!("key=\"{hashed}\"")));

    // Restart: the counts come back from usage-state.json (0600).
    c.send_signal(libc::SIGTERM);
    c.wait_exit(secs(15.0));
    let state = dir.cache_dir().join("usage-state.json");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&state).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let c2 = Coordinator::start(&dir, builder());
    c2.wait_all_ready(secs(10.0));
    let u2 = ctl_json(&dir, &["usage"]);
    assert_eq!(
        model_row(&u2, "alice", "gemini-x").unwrap()["total"],
        x["total"],
        "{u2:#}"
    );
    assert_eq!(key_row(&u2, "team-a").unwrap()["total"]["answers"], 5);
    assert!(metrics(&c2).contains("aistudioproxy_key_answers_total{key=\"team-a\",class=\"ok\"} 5"));
    assert_eq!(chat(&c2, KEY_A, "gemini-x", true).status, 200);
    wait_until("the new answer counted", secs(5.0), || {
        model_row(&ctl_json(&dir, &["usage"]), "alice", "gemini-x").unwrap()["total"]["answers"]
            == 6
    });

    // The keys appear nowhere but in key.txt and the children's copy.
    let children_copy = dir.cache_dir().join("child-keys.txt");
    assert_eq!(
        std::fs::read_to_string(&children_copy).unwrap(),
        format!("{KEY_A}\n{KEY_B}\n"),
        "the children's copy has the keys alone"
    );
    let mut seen = all_text_under(&dir.log_dir());
    seen.push_str(&c.stdout());
    seen.push_str(&c.stderr());
    seen.push_str(&c2.stderr());
    seen.push_str(&std::fs::read_to_string(&state).unwrap());
    seen.push_str(&metrics(&c2));
    seen.push_str(&ctl_json(&dir, &["events"]).to_string());
    seen.push_str(&ctl_json(&dir, &["status"]).to_string());
    for key in [KEY_A, KEY_B] {
        assert!(!seen.contains(key), "a key leaked");
        assert!(!seen.contains(&key[..12]), "part of a key leaked");
    }
}

#[test]
fn console_ctl_events_follows_a_cooldown_and_a_rotation_as_they_happen() {
    let dir = TestDir::new("console_ctl_events_follows");
    dir.write_profile("alice", &knobbed("alice", json!({"exhaust_after": 1})));
    dir.write_profiles(&["bob"]);
    let c = Coordinator::start(
        &dir,
        Builder::new()
            .pool_size(1)
            .env("EMPTY_ANSWERS_TO_ROTATE", 1),
    );
    c.wait_all_ready(secs(10.0));
    let out_path = dir.path.join("events-f.out");
    let mut follow = Command::new(COORDINATOR)
        .env_clear()
        .env("AUTH_PROFILE_CACHE_DIR", dir.cache_dir())
        .args(["ctl", "events", "-f"])
        .stdout(std::fs::File::create(&out_path).unwrap())
        .stderr(Stdio::null())
        .spawn()
        .expect("start ctl events -f");
    let read = || std::fs::read_to_string(&out_path).unwrap_or_default();
    wait_until("the start events", secs(5.0), || {
        read().contains("child_ready")
    });
    let before = read();
    assert!(!before.contains("cooldown_set"), "{before}");
    assert_eq!(chat(&c, "any", "gemini-test", false).status, 200);
    let _ = chat(&c, "any", "gemini-test", true); // alice answers empty now
    wait_until(
        "the cooldown and the rotation, followed",
        secs(10.0),
        || {
            let t = read();
            t.lines().any(|l| {
                l.contains("cooldown_set") && l.contains("alice") && l.contains("exhausted")
            }) && t
                .lines()
                .any(|l| l.contains("rotation") && l.contains("alice -> bob"))
        },
    );
    wait_until("bob ready", secs(10.0), || {
        read()
            .lines()
            .any(|l| l.contains("child_ready") && l.contains("bob"))
    });
    let _ = follow.kill();
    let _ = follow.wait();
    // Sequence numbers only rise, and nothing was printed twice.
    let seqs: Vec<u64> = read()
        .lines()
        .filter_map(|l| l.split_whitespace().next()?.parse().ok())
        .collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
    let (_, table, _) = ctl(
        &dir,
        &["events", "--after", &seqs[seqs.len() - 2].to_string()],
    );
    assert_eq!(table.lines().count(), 1, "{table}");
}

/// A webhook receiver on 127.0.0.1: records every body; `hang` accepts and
/// never answers.
pub(crate) struct Hook {
    port: u16,
    bodies: Arc<Mutex<Vec<Value>>>,
}

impl Hook {
    pub(crate) fn start(hang: bool) -> Hook {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let bodies = Arc::new(Mutex::new(Vec::new()));
        let seen = bodies.clone();
        std::thread::spawn(move || {
            let mut held = Vec::new();
            for s in l.incoming().flatten() {
                if hang {
                    held.push(s);
                    continue;
                }
                if let Some(b) = read_post(s) {
                    seen.lock().unwrap().push(b);
                }
            }
        });
        Hook { port, bodies }
    }

    pub(crate) fn url(&self) -> String {
        format!("http://127.0.0.1:{}/hooks/T0-SECRET-PATH", self.port)
    }

    pub(crate) fn bodies(&self) -> Vec<Value> {
        self.bodies.lock().unwrap().clone()
    }
}

fn read_post(mut s: TcpStream) -> Option<Value> {
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    let mut r = BufReader::new(s.try_clone().ok()?);
    let mut len = 0;
    loop {
        let mut line = String::new();
        r.read_line(&mut line).ok()?;
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        if let Some(v) = l.to_ascii_lowercase().strip_prefix("content-length:") {
            len = v.trim().parse().ok()?;
        }
    }
    let mut body = vec![0; len];
    r.read_exact(&mut body).ok()?;
    let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok");
    serde_json::from_slice(&body).ok()
}

/// Wait until a notification was folded into an earlier one.
fn wait_folded(c: &Coordinator, what: &str, within: f64) {
    wait_until(what, secs(within), || {
        metric(
            &metrics(c),
            "aistudioproxy_notifications_total{outcome=\"folded\"}",
        ) >= 1.0
    });
}

fn metric(text: &str, prefix: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or(0.0)
}

#[test]
fn console_webhook_gets_an_exhausted_profile_once_with_its_text() {
    let dir = TestDir::new("console_webhook_once");
    dir.write_profile("alice", &knobbed("alice", json!({"exhaust_after": 1})));
    dir.write_profiles(&["bob"]);
    let hook = Hook::start(false);
    let url_file = dir.path.join("webhook-url");
    std::fs::write(&url_file, format!("{}\n", hook.url())).unwrap();
    let c = Coordinator::start(
        &dir,
        Builder::new()
            .pool_size(1)
            .env("EMPTY_ANSWERS_TO_ROTATE", 1)
            .env("METRICS_OPEN", "true")
            .env("NOTIFY_WEBHOOK_URL_FILE", url_file.display()),
    );
    c.wait_all_ready(secs(10.0));
    assert_eq!(chat(&c, "any", "gemini-test", false).status, 200);
    let _ = chat(&c, "any", "gemini-test", true);
    wait_until("the exhausted message", secs(10.0), || {
        !hook.bodies().is_empty()
    });
    // bob takes over; alice is exhausted again after a reset and a rotation:
    // folded, not sent again within NOTIFY_FOLD_S.
    wait_until("bob ready", secs(10.0), || {
        c.slots()[0].profile.as_deref() == Some("bob")
    });
    assert_eq!(ctl(&dir, &["reset", "alice"]).0, 0);
    assert_eq!(ctl(&dir, &["rotate", "0"]).0, 0);
    wait_until("alice back", secs(10.0), || {
        c.slots()[0].profile.as_deref() == Some("alice") && c.slots()[0].state == "ready"
    });
    assert_eq!(chat(&c, "any", "gemini-test", false).status, 200);
    let _ = chat(&c, "any", "gemini-test", true);
    wait_folded(&c, "the second exhaustion folded", 10.0);
    let bodies = hook.bodies();
    assert_eq!(bodies.len(), 1, "{bodies:#?}");
    let b = &bodies[0];
    assert_eq!(b["kind"], "exhausted");
    assert_eq!(b["profile"], "alice");
    assert_eq!(b["count"], 1);
    let text = b["text"].as_str().unwrap();
    assert!(
        text.starts_with("aistudioproxy: profile alice (slot 0) is exhausted"),
        "{text}"
    );
    assert_eq!(
        metric(
            &metrics(&c),
            "aistudioproxy_notifications_total{outcome=\"sent\"}"
        ),
        1.0
    );
    let logs = c.stderr();
    assert!(
        logs.contains(&format!("http://127.0.0.1:{}/…", hook.port)),
        "the host is named"
    );
    assert!(
        !logs.contains("SECRET-PATH"),
        "the URL is never logged whole"
    );
}

#[test]
fn console_webhook_gets_a_needs_login_once() {
    let dir = TestDir::new("console_webhook_needs_login");
    // fay's login expired: her child logs the login redirect and exits 0.
    dir.write_profile(
        "fay",
        &json!({"cookies": [{"name": "FAKE_EXPIRED", "value": "1", "domain": ".google.com",
                              "path": "/", "expires": -1}],
                "testchild": {"login_fail_after_ms": 200}}),
    );
    dir.write_profiles(&["bob"]);
    let hook = Hook::start(false);
    let c = Coordinator::start(
        &dir,
        Builder::new()
            .pool_size(2)
            .env("METRICS_OPEN", "true")
            .env("NOTIFY_WEBHOOK_URL", hook.url()),
    );
    wait_until("the needs_login message", secs(15.0), || {
        !hook.bodies().is_empty()
    });
    let b = &hook.bodies()[0];
    assert_eq!(
        (b["kind"].as_str(), b["profile"].as_str()),
        (Some("needs_login"), Some("fay")),
        "{b}"
    );
    let text = b["text"].as_str().unwrap();
    assert!(
        text.contains("profile fay") && text.contains("needs a new login"),
        "{text}"
    );
    // An operator's reset starts her again; the same login need again is
    // folded into the first message, not sent twice.
    wait_until("fay's child stopped", secs(10.0), || {
        c.stderr().contains("rotating fay")
    });
    assert_eq!(ctl(&dir, &["reset", "fay"]).0, 0);
    wait_folded(&c, "the second one folded", 15.0);
    let bodies = hook.bodies();
    assert_eq!(bodies.len(), 1, "{bodies:#?}");
    assert!(c.stderr().matches("started profile fay").count() >= 2);
}

#[test]
fn console_a_hanging_webhook_costs_the_fleet_nothing() {
    let dir = TestDir::new("console_webhook_hangs");
    dir.write_profile("alice", &knobbed("alice", json!({"exhaust_after": 1})));
    dir.write_profiles(&["bob", "carol"]);
    let hook = Hook::start(true);
    let c = Coordinator::start(
        &dir,
        Builder::new()
            .pool_size(2)
            .env("EMPTY_ANSWERS_TO_ROTATE", 1)
            .env("METRICS_OPEN", "true")
            .env("NOTIFY_WEBHOOK_URL", hook.url()),
    );
    c.wait_all_ready(secs(10.0));
    // Exhaust alice over and over (each a message to the hanging webhook)
    // while timing every request.
    let mut slowest = Duration::ZERO;
    let started = Instant::now();
    let mut n = 0;
    while started.elapsed() < Duration::from_secs(8) || n < 30 {
        let t = Instant::now();
        let r = chat(&c, "any", "gemini-test", n % 2 == 0);
        assert!(r.status == 200 || r.status == 503, "{}", r.body);
        slowest = slowest.max(t.elapsed());
        n += 1;
        if n % 10 == 0 {
            let _ = ctl(&dir, &["reset", "alice"]);
        }
    }
    assert!(
        slowest < Duration::from_secs(2),
        "slowest request {slowest:?}"
    );
    wait_until("a failed try counted", secs(15.0), || {
        metric(
            &metrics(&c),
            "aistudioproxy_notifications_total{outcome=\"failed_try\"}",
        ) >= 1.0
    });
    assert!(!c.stderr().contains("SECRET-PATH"));
    // And the coordinator still stops promptly with the webhook hanging.
    let mut c = c;
    let t = Instant::now();
    c.send_signal(libc::SIGTERM);
    c.wait_exit(secs(20.0));
    assert!(
        t.elapsed() < Duration::from_secs(12),
        "stopped in {:?}",
        t.elapsed()
    );
}

#[test]
fn console_page_files_are_open_and_strict_and_data_needs_the_key() {
    let dir = TestDir::new("console_page_files");
    dir.write_profiles(&["alice"]);
    let c = Coordinator::start(
        &dir,
        Builder::new().pool_size(1).env("ADMIN_KEY", "adm-key-1"),
    );
    let mut total = 0;
    for (path, ct) in [
        ("/admin/", "text/html"),
        ("/admin/console.js", "text/javascript"),
        ("/admin/console.css", "text/css"),
    ] {
        let r = http_get(c.ports.coordinator, path).unwrap();
        assert_eq!(r.status, 200, "{path}");
        assert!(r.header("content-type").unwrap().starts_with(ct), "{path}");
        let csp = r.header("content-security-policy").unwrap();
        for d in [
            "default-src 'none'",
            "script-src 'self'",
            "connect-src 'self'",
            "frame-ancestors 'none'",
            "form-action 'none'",
        ] {
            assert!(csp.contains(d), "{csp}");
        }
        total += r.body.len();
    }
    println!("page size: {total} bytes (html+js+css)");
    assert!(total < 40_000, "{total}");
    for path in [
        "/admin/console",
        "/admin/usage",
        "/admin/events",
        "/admin/status",
    ] {
        assert_eq!(
            http_get(c.ports.coordinator, path).unwrap().status,
            401,
            "{path}"
        );
    }
    let r = post_json_with(
        c.ports.coordinator,
        "/admin/console",
        &json!({"after": 0}),
        &[("X-Admin-Key", "adm-key-1")],
    )
    .unwrap();
    assert_eq!(r.status, 200);
    let v = r.json();
    assert!(
        v["status"]["slots"].is_array()
            && v["usage"]["profiles"].is_array()
            && v["events"].is_array(),
        "{v}"
    );
    // Without ADMIN_KEY there is no page at all.
    let dir2 = TestDir::new("console_page_files_off");
    dir2.write_profiles(&["alice"]);
    let c2 = Coordinator::start(&dir2, Builder::new().pool_size(1));
    assert_eq!(
        http_get(c2.ports.coordinator, "/admin/").unwrap().status,
        404
    );
}
