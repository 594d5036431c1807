//! The coordinator in front of the real child: the AI Studio proxy
//! project's own launcher, server, stream proxy and page logic, unmodified,
//! with Debian's chromium and a fake Google standing in for the Camoufox
//! browser and Google (`../shared/realchild/README.md`). Both children that
//! operators run are tested: the current upstream and the older fork.
//!
//! Each flavour is set up from `../shared/realchild/setup.sh` into
//! `.realchild/<flavour>` (ignored by git; `scripts/test.sh` does it first,
//! and a test does it itself when it is missing). Where `../shared/realchild`
//! is absent (someone's own clone) a test says in one line how to get the
//! child and passes without running. A child starts in ~10 s and answers in
//! ~12 s, so these tests share one coordinator per scenario, run one at a
//! time (test group `realchild`, `.config/nextest.toml`), and print the
//! figures docs/real-child.md quotes as `MEASURED` lines.

use std::io::Write;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};

use crate::common::*;

/// A set-up real child: what to give the coordinator.
struct RealChild {
    command: PathBuf,
    workdir: PathBuf,
}

/// The real child of `flavour` (`current` or `fork`), set up if needed;
/// None (with one line saying how to get it) where it cannot be had.
fn real_child(flavour: &str) -> Option<RealChild> {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    let source = std::env::var_os("AISP_REALCHILD_SRC")
        .map(PathBuf::from)
        .unwrap_or_else(|| manifest.join("../shared/realchild"));
    let setup = source.join("setup.sh");
    if !setup.is_file() {
        eprintln!(
            "SKIPPED: no real child at {} (set AISP_REALCHILD_SRC): clone CJackHwang/AIstudioProxyAPI at fd1da7bb8128d7f333d71b7529e28bda0ad5b94d (and leonardtan13/AIstudioProxyAPI at d24af294b5750a9e2cf26fa4632db0ff9a35ee78 for the fork) into upstream/ and upstream-fork/ of a folder laid out like ../shared/realchild, with its standin/ and setup.sh",
            source.display()
        );
        return None;
    }
    let dest = std::env::var_os("AISP_REALCHILD_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| manifest.join(".realchild"))
        .join(flavour);
    let command = dest.join("run-real-child.sh");
    let ready = command.is_file()
        && dest.join("venv/.requirements").is_file()
        && std::fs::read_to_string(dest.join("src/.flavour")).is_ok_and(|f| f.trim() == flavour);
    if !ready {
        let out = Command::new("bash")
            .arg(&setup)
            .arg(&dest)
            .arg(flavour)
            .output()
            .expect("run setup.sh");
        assert!(
            out.status.success(),
            "{} {} {flavour} failed:\n{}\n{}",
            setup.display(),
            dest.display(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Some(RealChild {
        command,
        workdir: dest.join("src"),
    })
}

/// A coordinator for the real child: its start takes ~10 s (far more on a
/// loaded machine), its stop ~5 s.
fn builder(rc: &RealChild, dir: &TestDir) -> Builder {
    Builder::new()
        .child(&[rc.command.to_str().expect("utf-8 path")])
        .env("CHILD_WORKDIR", rc.workdir.display())
        .env("HOME", dir.path.display())
        .ready_timeout_s(120)
        .grace_s(10)
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// A Playwright storage state with Google session cookies that expire at
/// `expires` (unix seconds), plus the fake Google's `markers`.
fn google_profile(markers: &[(&str, &str)], expires: f64) -> Value {
    let cookie = |name: &str, value: &str| {
        json!({"name": name, "value": value, "domain": ".google.com", "path": "/",
               "expires": expires, "httpOnly": false, "secure": true, "sameSite": "Lax"})
    };
    let mut cookies: Vec<Value> = ["SID", "HSID", "SAPISID"]
        .iter()
        .map(|n| cookie(n, "session"))
        .collect();
    cookies.extend(markers.iter().map(|(n, v)| cookie(n, v)));
    json!({"cookies": cookies, "origins": []})
}

const MONTH: f64 = 30.0 * 86_400.0;

/// Kills whatever of the test's children is left when a test fails midway
/// (the coordinator's own drop uses SIGKILL, which the real child's
/// session-detached browser survives).
struct Reap<'a>(&'a TestDir);

impl Drop for Reap<'_> {
    fn drop(&mut self) {
        for (pid, _) in tree_survivors(self.0) {
            send_signal_to(pid, libc::SIGKILL);
        }
    }
}

/// The time of day (seconds) of the first coordinator log line holding
/// `needle`, from its `[YYYY-MM-DDTHH:MM:SS.mmmZ ...]` stamp.
fn log_time(log: &str, needle: &str) -> Option<f64> {
    let line = log.lines().find(|l| l.contains(needle))?;
    let t = line.split('T').nth(1)?.split('Z').next()?;
    let mut parts = t.split(':');
    let h: f64 = parts.next()?.parse().ok()?;
    let m: f64 = parts.next()?.parse().ok()?;
    let s: f64 = parts.next()?.parse().ok()?;
    Some(h * 3600.0 + m * 60.0 + s)
}

/// Seconds between the first log lines holding `from` and `to`.
fn log_span(log: &str, from: &str, to: &str) -> f64 {
    let a = log_time(log, from).unwrap_or_else(|| panic!("no log line with {from:?}"));
    let b = log_time(log, to).unwrap_or_else(|| panic!("no log line with {to:?}"));
    b - a
}

fn chat(content: &str) -> Value {
    json!({"model": "gemini-2.5-pro", "messages": [{"role": "user", "content": content}]})
}

/// POST a completion through the coordinator and wait for the whole
/// answer (up to 150 s): `(status, body, seconds)`.
fn complete(port: u16, body: &Value, key: Option<&str>) -> (u16, String, f64) {
    let began = Instant::now();
    let mut rq = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .proxy(None)
        .build()
        .new_agent()
        .post(format!("http://127.0.0.1:{port}/v1/chat/completions"))
        .config()
        .timeout_global(Some(Duration::from_secs(150)))
        .build()
        .header("Content-Type", "application/json");
    if let Some(k) = key {
        rq = rq.header("Authorization", format!("Bearer {k}"));
    }
    match rq.send(body.to_string()) {
        Ok(mut r) => {
            let status = r.status().as_u16();
            let text = r.body_mut().read_to_string().unwrap_or_default();
            (status, text, began.elapsed().as_secs_f64())
        }
        Err(e) => (0, e.to_string(), began.elapsed().as_secs_f64()),
    }
}

fn profile_json(c: &Coordinator, name: &str) -> Value {
    profile_of(&c.ready().1, name)
        .cloned()
        .unwrap_or_else(|| panic!("no profile {name} in /ready"))
}

/// Wait until slot `slot` runs `profile` and is ready; its pid.
fn wait_running(c: &Coordinator, slot: usize, profile: &str, within: f64) -> i32 {
    let mut pid = None;
    wait_until(
        &format!("{profile} ready in slot {slot}"),
        secs(within),
        || {
            let s = c.slots().into_iter().nth(slot);
            pid = s
                .filter(|s| s.state == "ready" && s.profile.as_deref() == Some(profile))
                .and_then(|s| s.pid);
            pid.is_some()
        },
    );
    pid.expect("checked")
}

/// Which account served what: the coordinator's own usage counts, as
/// `"profile"/"model": answers` lines.
fn answers_per_account(dir: &TestDir) -> Vec<String> {
    let usage = ctl(dir, &["--json", "usage"]).ok().json();
    let mut per: Vec<String> = Vec::new();
    for p in usage["profiles"].as_array().into_iter().flatten() {
        for m in p["models"].as_array().into_iter().flatten() {
            per.push(format!(
                "{}/{}: {}",
                p["profile"], m["model"], m["total"]["ok"]
            ));
        }
    }
    per
}

fn in_flight(c: &Coordinator, slot: usize) -> u64 {
    c.ready().1["slots"][slot]["in_flight"]
        .as_u64()
        .unwrap_or(0)
}

#[test]
fn current_child_serves_reclaims_quota_and_spots_expired_logins() {
    let Some(rc) = real_child("current") else {
        return;
    };
    let dir = TestDir::with_deadline("upstream_current_fleet", Duration::from_secs(480));
    let _reap = Reap(&dir);
    let later = unix_now() + MONTH;
    dir.write_profile("a-good", &google_profile(&[], later));
    dir.write_profile("b-quota", &google_profile(&[("FAKE_QUOTA", "1")], later));
    dir.write_profile(
        "c-expired",
        &google_profile(&[("FAKE_EXPIRED", "1")], later),
    );
    dir.write_profile("d-stale", &google_profile(&[], unix_now() - 86_400.0));
    dir.write_profile("e-good", &google_profile(&[], later));
    dir.write_key("sdk-key\n");
    // /ready names profiles to the admin key only, once keys are configured.
    let c = Coordinator::start(
        &dir,
        builder(&rc, &dir).pool_size(2).env("ADMIN_KEY", "adm-test"),
    );
    c.wait_all_ready(secs(150.0));

    // Two requests at once: one lands on b-quota, whose child would put it
    // back in its own queue until its 420 s deadline.
    let port = c.ports.coordinator;
    let answers: Vec<(u16, String, f64)> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..2)
            .map(|i| s.spawn(move || complete(port, &chat(&format!("hello {i}")), Some("sdk-key"))))
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for (status, body, _) in &answers {
        assert_eq!(*status, 200, "{body}");
        assert!(body.contains("Fake answer to: hello"), "{body}");
    }
    let slowest = answers.iter().map(|a| a.2).fold(0.0, f64::max);
    eprintln!(
        "MEASURED current: a non-streamed request on an exhausted account answered 200 by another in {slowest:.1} s (the other request {:.1} s)",
        answers.iter().map(|a| a.2).fold(f64::MAX, f64::min)
    );
    assert!(slowest < 60.0, "took {slowest:.1} s");
    // The request named its model: that model cools (the real child calls
    // its 429 a rate limit).
    let b = profile_json(&c, "b-quota");
    assert_eq!(b["cools_for"], json!(["gemini-2.5-pro"]), "{b}");
    let reason = b["model_cooldowns"][0]["reason"].as_str().unwrap_or("");
    assert!(["rate_limited", "exhausted"].contains(&reason), "{b}");
    let log = c.stderr();
    assert!(log.contains("requests taken back from its child"), "{log}");

    // b-quota's slot went on to c-expired (login redirect), skipped
    // d-stale (expired cookies, never started) and runs e-good.
    wait_running(&c, 1, "e-good", 150.0);
    let log = c.stderr();
    let c_state = profile_json(&c, "c-expired");
    assert_eq!(c_state["state"], "needs_login", "{c_state}");
    let to_mark = log_span(
        &log,
        "started profile c-expired",
        "profile c-expired needs a new login",
    );
    eprintln!("MEASURED current: expired login started -> needs_login in {to_mark:.1} s");
    assert!(to_mark < 20.0, "{to_mark:.1} s");
    let d = profile_json(&c, "d-stale");
    assert_eq!(d["state"], "needs_login", "{d}");
    assert!(
        d["needs_login"]["why"]
            .as_str()
            .unwrap_or("")
            .contains("session cookies"),
        "{d}"
    );
    assert!(!log.contains("started profile d-stale"), "{log}");

    // The OpenAI SDK, streamed and not.
    let py = python().expect(
        "no Python with the openai package: run scripts/test.sh (it creates .venv) or set AISP_PYTHON",
    );
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/openai_client.py");
    let out = Command::new(&py)
        .arg(&script)
        .arg(format!("http://127.0.0.1:{port}/v1"))
        .arg("sdk-key")
        .arg("gemini-2.5-pro")
        .output()
        .expect("python runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_str(stdout.trim()).expect("one JSON line");
    assert_eq!(v["plain"], "Fake answer to: plain", "{v}");
    assert_eq!(v["streamed"], "Fake answer to: streamed", "{v}");
    assert_eq!(v["finish_reason"], "stop", "{v}");
    assert_eq!(v["wrong_key_status"], 401, "{v}");
    assert!(v["models"].to_string().contains("gemini-2.5-pro"), "{v}");

    // Rotations never start a profile that needs a login.
    ctl(&dir, &["rotate", "1"]).ok();
    wait_until("slot 1 to restart", secs(60.0), || {
        c.stderr().matches("started profile e-good").count() >= 2
    });
    wait_running(&c, 1, "e-good", 150.0);
    let log = c.stderr();
    assert_eq!(log.matches("started profile c-expired").count(), 1, "{log}");
    assert!(!log.contains("started profile d-stale"), "{log}");

    // A new login (new content) and a reload: it may run again.
    dir.write_profile("c-expired", &google_profile(&[], later));
    ctl(&dir, &["reload"]).ok();
    let c_state = profile_json(&c, "c-expired");
    assert_eq!(c_state["state"], "queued", "{c_state}");
    assert_eq!(profile_json(&c, "d-stale")["state"], "needs_login");
}

#[test]
fn current_child_client_leaving_a_long_turn_dead_browser_and_stop_saving_the_login() {
    let Some(rc) = real_child("current") else {
        return;
    };
    let dir = TestDir::with_deadline("upstream_current_solo", Duration::from_secs(420));
    let _reap = Reap(&dir);
    dir.write_profile("solo", &google_profile(&[], unix_now() + MONTH));
    let mut c = Coordinator::start(
        &dir,
        builder(&rc, &dir).pool_size(1).env("AUTH_WRITEBACK", "all"),
    );
    c.wait_all_ready(secs(150.0));
    let port = c.ports.coordinator;

    // A client asks for a long turn (90 s upstream) and leaves 15 s in,
    // after the child sent the prompt: the page goes on generating.
    let body = chat("FAKE_DELAY=90 take your time").to_string();
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(
        s,
        "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    wait_until("the request to reach the child", secs(10.0), || {
        in_flight(&c, 0) == 1
    });
    std::thread::sleep(Duration::from_secs(15));
    drop(s);
    let left = Instant::now();
    wait_until("the slot to be freed", secs(10.0), || in_flight(&c, 0) == 0);
    let freed = left.elapsed().as_secs_f64();
    eprintln!(
        "MEASURED current: a client leaving 15 s into a 90 s turn: slot freed in {freed:.2} s"
    );
    assert!(freed < 2.0, "{freed:.2} s");

    // The next request, sent at once: the child is started again (its page
    // may still be generating) and answers, long before the child's own
    // 150-300 s timeout.
    let (status, text, took) = complete(port, &chat("next please"), None);
    assert_eq!(status, 200, "{text}");
    assert!(text.contains("Fake answer to: next please"), "{text}");
    eprintln!("MEASURED current: the request sent right after it answered in {took:.1} s (a restart and one completion)");
    assert!(took < 60.0, "{took:.1} s");
    assert!(
        c.stderr().contains("restarting that child"),
        "{}",
        c.stderr()
    );

    // Its browser is killed as the OOM killer would: the coordinator sees
    // it in the process tree, without a request, and starts a new child.
    let pid = wait_running(&c, 0, "solo", 150.0);
    let browser = browser_of(&dir).expect("the child's browser, in a session of its own");
    send_signal_to(browser, libc::SIGKILL);
    let killed = Instant::now();
    wait_until("the dead browser to be noticed", secs(10.0), || {
        c.stderr().contains("ended while the launcher lives")
    });
    let noticed = killed.elapsed().as_secs_f64();
    wait_until("a new child", secs(150.0), || {
        c.slots()[0].pid.is_some_and(|p| p != pid) && c.slots()[0].state == "ready"
    });
    let replaced = killed.elapsed().as_secs_f64();
    eprintln!("MEASURED current: a killed browser noticed in {noticed:.2} s, its child replaced (ready) in {replaced:.1} s, no request sent");
    let (status, text, _) = complete(port, &chat("after the browser"), None);
    assert_eq!(status, 200, "{text}");
    let log = c.stderr();
    let failed: Vec<&str> = log
        .lines()
        .filter(|l| {
            l.contains("/v1/chat/completions")
                && (l.contains("failed") || l.contains("trying another child"))
        })
        .collect();
    assert!(failed.is_empty(), "no request failed: {failed:?}");

    // SIGTERM: the launcher saves its cookies, nothing is left, and the
    // refreshed login reaches the profile's source.
    let before = std::fs::read_to_string(dir.profiles_dir().join("solo.json")).unwrap();
    let began = Instant::now();
    c.send_signal(libc::SIGTERM);
    let status = c.wait_exit(secs(60.0));
    let stop = began.elapsed().as_secs_f64();
    assert!(status.success(), "{status:?}");
    wait_no_survivors(&dir, Duration::from_secs(5));
    eprintln!("MEASURED current: SIGTERM to a coordinator with one ready child: exit in {stop:.1} s, no process left");
    let child_log = read_to_string(&dir.log_dir().join("solo.log"));
    assert!(!child_log.contains("Failed to save cookies"), "{child_log}");
    let after = std::fs::read_to_string(dir.profiles_dir().join("solo.json")).unwrap();
    assert!(after.contains("FAKE_REFRESHED"), "{after}");
    assert_ne!(after, before, "the last stop saved a newer login");
}

/// The real child's browser: the chromium of this test's tree that leads
/// a session of its own.
fn browser_of(dir: &TestDir) -> Option<i32> {
    tree_survivors(dir).into_iter().find_map(|(pid, cmd)| {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        let rest = &stat[stat.rfind(')')? + 1..];
        let sid: i32 = rest.split_whitespace().nth(3)?.parse().ok()?;
        (sid == pid && cmd.contains("chromium")).then_some(pid)
    })
}

/// Anthropic's and Gemini's official SDKs through the dialect edge to the
/// real child: plain and streamed text (the real child has no tools).
#[test]
fn dialects_through_the_real_child() {
    let Some(rc) = real_child("current") else {
        return;
    };
    let dir = TestDir::with_deadline("upstream_current_dialects", Duration::from_secs(300));
    let _reap = Reap(&dir);
    dir.write_profile("solo", &google_profile(&[], unix_now() + MONTH));
    dir.write_key("sdk-key\n");
    let c = Coordinator::start(&dir, builder(&rc, &dir).pool_size(1));
    c.wait_all_ready(secs(150.0));
    let base = format!("http://127.0.0.1:{}", c.ports.coordinator);
    let args = |_: ()| {
        vec![
            base.clone(),
            "sdk-key".into(),
            "gemini-2.5-pro".into(),
            "text-only".into(),
        ]
    };
    let t = Instant::now();
    let v = crate::dialect::run_client("anthropic_client.py", &args(()));
    assert_eq!(v["plain"], "Fake answer to: plain", "{v}");
    assert_eq!(v["plain_stop_reason"], "end_turn", "{v}");
    assert_eq!(v["streamed"], "Fake answer to: streamed", "{v}");
    assert_eq!(v["streamed_final"], "Fake answer to: streamed", "{v}");
    eprintln!(
        "MEASURED current: anthropic SDK {} plain and streamed through the real child in {:.1} s",
        v["sdk_version"],
        t.elapsed().as_secs_f64()
    );
    let t = Instant::now();
    let v = crate::dialect::run_client("genai_client.py", &args(()));
    assert_eq!(v["plain"], "Fake answer to: plain", "{v}");
    assert_eq!(v["plain_finish"], "STOP", "{v}");
    assert_eq!(v["streamed"], "Fake answer to: streamed", "{v}");
    eprintln!(
        "MEASURED current: google-genai SDK {} plain and streamed through the real child in {:.1} s",
        v["sdk_version"],
        t.elapsed().as_secs_f64()
    );
}

#[test]
fn keepalive_turn_on_the_current_child_refreshes_a_spare_login() {
    let Some(rc) = real_child("current") else {
        return;
    };
    let dir = TestDir::with_deadline("upstream_current_keepalive", Duration::from_secs(300));
    let _reap = Reap(&dir);
    let later = unix_now() + MONTH;
    dir.write_profile("a-runs", &google_profile(&[], later));
    dir.write_profile("b-spare", &google_profile(&[], later));
    let source = dir.profiles_dir().join("b-spare.json");
    assert!(!read_to_string(&source).contains("FAKE_REFRESHED"));
    let c = Coordinator::start(
        &dir,
        builder(&rc, &dir)
            .pool_size(1)
            .env("AUTH_WRITEBACK", "all")
            .env("PROFILE_KEEPALIVE_S", 5),
    );
    wait_running(&c, 0, "a-runs", 150.0);

    // b-spare falls due 5 s after boot; a-runs makes way once ready, b-spare
    // starts, settles, and its stop (launcher first) saves its cookies.
    wait_until("b-spare's keep-alive turn to end", secs(200.0), || {
        c.stderr()
            .contains("keep-alive turn for b-spare ended after")
    });
    let log = c.stderr();
    let way = log_span(
        &log,
        "keep-alive turn for b-spare (idle",
        "keep-alive turn for b-spare begins",
    );
    let took = log_span(
        &log,
        "keep-alive turn for b-spare begins",
        "keep-alive turn for b-spare ended after",
    );
    eprintln!(
        "MEASURED current: keep-alive turn took {took:.1} s (start, ready, 2 s settle, stop with its cookie save, write-back), after {way:.1} s making way"
    );
    assert!(
        log.contains("its child was ready, then stopped and its login saved"),
        "{log}"
    );
    let child_log = read_to_string(&dir.log_dir().join("b-spare.log"));
    assert!(!child_log.contains("Failed to save cookies"), "{child_log}");
    let after = read_to_string(&source);
    assert!(after.contains("FAKE_REFRESHED"), "{after}");

    // The slot goes back to a-runs.
    wait_running(&c, 0, "a-runs", 150.0);
    let body = c.ready().1;
    assert_eq!(queue(&body), vec!["b-spare"], "{body}");
}

#[test]
fn fork_child_login_internal_timeout_and_stop() {
    let Some(rc) = real_child("fork") else {
        return;
    };
    let dir = TestDir::with_deadline("upstream_fork", Duration::from_secs(300));
    let _reap = Reap(&dir);
    let later = unix_now() + MONTH;
    dir.write_profile("a-good", &google_profile(&[], later));
    dir.write_profile(
        "c-expired",
        &google_profile(&[("FAKE_EXPIRED", "1")], later),
    );
    let mut c = Coordinator::start(&dir, builder(&rc, &dir).pool_size(2).grace_s(6));

    // The fork logs its login redirect, then hangs: needs_login from the log.
    let pid = wait_running(&c, 0, "a-good", 150.0);
    wait_until("c-expired to need a login", secs(60.0), || {
        profile_json(&c, "c-expired")["state"] == "needs_login"
    });
    let to_mark = log_span(
        &c.stderr(),
        "started profile c-expired",
        "profile c-expired needs a new login",
    );
    eprintln!("MEASURED fork: expired login started -> needs_login in {to_mark:.1} s");
    assert!(to_mark < 20.0, "{to_mark:.1} s");

    // An upstream error shows as the 502 internal timeout: the account's or
    // the request's trouble, never a reason to evict a healthy browser.
    let (status, text, took) = complete(c.ports.coordinator, &chat("FAKE_ERROR500 boom"), None);
    eprintln!("MEASURED fork: the 502 internal timeout came after {took:.1} s");
    assert_eq!(status, 502, "{text}");
    assert!(text.contains("内部超时"), "{text}");
    let slot = &c.slots()[0];
    assert_eq!((slot.pid, slot.state.as_str()), (Some(pid), "ready"));
    assert_eq!(c.ready().1["slots"][0]["restarts"], 0);
    assert_eq!(profile_json(&c, "a-good")["empty_in_a_row"], 1);
    assert!(!c.stderr().contains("evicting"), "{}", c.stderr());

    // SIGTERM: the fork's launcher never exits by itself (the grace runs
    // out), and nothing is left.
    let began = Instant::now();
    c.send_signal(libc::SIGTERM);
    let status = c.wait_exit(secs(60.0));
    assert!(status.success(), "{status:?}");
    wait_no_survivors(&dir, Duration::from_secs(5));
    eprintln!(
        "MEASURED fork: SIGTERM with one ready child: exit in {:.1} s (grace 6 s), no process left",
        began.elapsed().as_secs_f64()
    );
}

#[test]
fn current_child_out_of_quota_for_one_model_streams_elsewhere_and_keeps_its_slot() {
    let Some(rc) = real_child("current") else {
        return;
    };
    let dir = TestDir::with_deadline("upstream_current_models", Duration::from_secs(360));
    let _reap = Reap(&dir);
    let later = unix_now() + MONTH;
    dir.write_profile("a", &google_profile(&[("FAKE_QUOTA_MODEL", "pro")], later));
    dir.write_profile("b", &google_profile(&[], later));
    let c = Coordinator::start(&dir, builder(&rc, &dir).pool_size(2));
    c.wait_all_ready(secs(150.0));
    let pids: Vec<Option<i32>> = c.slots().iter().map(|s| s.pid).collect();
    let port = c.ports.coordinator;
    let pro = "gemini-2.5-pro";
    let flash = "gemini-2.5-flash";
    let ask = |model: &str, text: &str, stream: bool| {
        let body = json!({"model": model, "stream": stream,
                          "messages": [{"role": "user", "content": text}]});
        complete(port, &body, None)
    };
    let two = |model: &str, stream: bool| -> Vec<(u16, String, f64)> {
        std::thread::scope(|s| {
            let hs: Vec<_> = (0..2)
                .map(|i| s.spawn(move || ask(model, &format!("{model} {i}"), stream)))
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        })
    };
    // Only pro is asked for, streamed, two at once: one lands on a, whose
    // account refuses pro (an empty stream, the quota in its log). Its head
    // is held: it is served by b, with content.
    let answers = two(pro, true);
    for (status, body, _) in &answers {
        assert_eq!(*status, 200, "{body}");
        assert!(body.contains("Fake answer to"), "content: {body}");
    }
    let slowest = answers.iter().map(|a| a.2).fold(0.0, f64::max);
    eprintln!("MEASURED current per-model: a streamed pro request on an account out of pro quota answered with content by another in {slowest:.1} s");
    let a = profile_json(&c, "a");
    assert_eq!(a["cools_for"], json!([pro]), "{a}");
    assert_eq!(a["state"], "running", "it keeps its slot: {a}");
    // Flash, two at once: both slots serve it, no child restarted.
    let began = Instant::now();
    for (status, body, _) in two(flash, false) {
        assert_eq!(status, 200, "{flash}: {body}");
    }
    let took = began.elapsed().as_secs_f64();
    let now: Vec<Option<i32>> = c.slots().iter().map(|s| s.pid).collect();
    assert_eq!(now, pids, "no slot emptied, no child restarted");
    // Which account served what: the coordinator's own usage counts.
    let per = answers_per_account(&dir);
    eprintln!(
        "MEASURED current per-model: two flash requests at once answered in {took:.1} s; answers per account and model: {}",
        per.join(", ")
    );
    assert!(
        per.contains(&"\"a\"/\"gemini-2.5-flash\": 1".to_string()),
        "{per:?}"
    );
    assert!(
        per.contains(&"\"b\"/\"gemini-2.5-flash\": 1".to_string()),
        "{per:?}"
    );
    assert!(
        !per.iter()
            .any(|l| l.starts_with("\"a\"/\"gemini-2.5-pro\": 1")),
        "{per:?}"
    );
    let log = c.stderr();
    assert!(
        log.contains("profile a is out of quota for model gemini-2.5-pro"),
        "{log}"
    );
    assert!(!log.contains("every profile is cooling down"), "{log}");
    // Now pro goes to b only, at once.
    let (status, body, _) = ask(pro, "after", false);
    assert_eq!(status, 200, "{body}");
}

#[test]
fn current_child_spends_budgets_on_purpose() {
    let Some(rc) = real_child("current") else {
        return;
    };
    let dir = TestDir::with_deadline("upstream_current_budgets", Duration::from_secs(300));
    let _reap = Reap(&dir);
    let later = unix_now() + MONTH;
    dir.write_profile("a", &google_profile(&[], later));
    dir.write_profile("b", &google_profile(&[], later));
    let file = dir.path.join("budgets.conf");
    std::fs::write(
        &file,
        "default = free\n[free]\ngemini-2.5-pro = 1\ngemini-2.5-flash = off\n[paid]\nprofiles = b\ngemini-2.5-pro = 1\n",
    )
    .unwrap();
    let b = builder(&rc, &dir)
        .pool_size(2)
        .env("MODEL_BUDGETS_FILE", file.display());
    let c = Coordinator::start(&dir, b);
    c.wait_all_ready(secs(150.0));
    let port = c.ports.coordinator;
    let ask = |model: &str, text: &str| {
        let body = json!({"model": model, "messages": [{"role": "user", "content": text}]});
        complete(port, &body, None)
    };
    // Two pro at once: one on each account (each has 1 left).
    let began = Instant::now();
    let answers: Vec<(u16, String, f64)> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..2)
            .map(|i| s.spawn(move || ask("gemini-2.5-pro", &format!("pro {i}"))))
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for (status, body, _) in &answers {
        assert_eq!(*status, 200, "{body}");
        assert!(body.contains("Fake answer to"), "content: {body}");
    }
    let two = began.elapsed().as_secs_f64();
    // Both budgets used: refused at once, the reset as Retry-After.
    let (status, body, took) = ask("gemini-2.5-pro", "third");
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("model_quota_exhausted"), "{body}");
    assert!(took < 5.0, "at once, no child asked: {took}");
    // Flash is off for a's tier: both go to b.
    for i in 0..2 {
        let (status, body, _) = ask("gemini-2.5-flash", &format!("flash {i}"));
        assert_eq!(status, 200, "{body}");
    }
    let mut per = answers_per_account(&dir);
    per.sort();
    eprintln!(
        "MEASURED current budgets: two pro at once on two accounts with 1 each in {two:.1} s, the third refused in {took:.2} s; answers per account and model: {}",
        per.join(", ")
    );
    assert_eq!(
        per,
        vec![
            "\"a\"/\"gemini-2.5-pro\": 1",
            "\"b\"/\"gemini-2.5-flash\": 2",
            "\"b\"/\"gemini-2.5-pro\": 1",
        ],
        "{per:?}"
    );
    let budgets = profile_json(&c, "a")["budgets"].clone();
    assert!(budgets.to_string().contains("\"used\":1"), "{budgets}");
}

#[test]
fn log_times_parse() {
    let log = "[2026-12-04T17:14:22.163Z INFO  x] slot 1: started profile c\n[2026-12-04T17:14:26.548Z WARN  x] profile c needs a new login\n";
    let d = log_span(log, "started profile c", "needs a new login");
    assert!((d - 4.385).abs() < 1e-6, "{d}");
    assert_eq!(log_time(log, "nothing like it"), None);
}
