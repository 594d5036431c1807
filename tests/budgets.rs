//! Account budgets (issue 24, `MODEL_BUDGETS_FILE`), through the real
//! binary and the test child: requests spread over the accounts by budget
//! left; an account at its budget for a model serves the others, is
//! refused for it with the reset as `Retry-After` when no account has any
//! left, keeps its count across a restart and is used again after the
//! zone's midnight (crossed in real time, the budget clock moved with the
//! test-only `AISP_TEST_CLOCK_OFFSET_S`); a model a tier turns off never
//! reaches its accounts; the fleet's threshold alert arrives once; a bad
//! file stops the start with one line, a bad reload keeps the budgets in
//! force and a good one applies at once, the day's counts kept.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};

use crate::common::*;

/// A completion for `model`: its status, the profile that answered (or
/// the error code), the reply.
fn ask(c: &Coordinator, model: &str) -> (u16, String, Reply) {
    let body = json!({"model": model, "messages": [{"role": "user", "content": "hi"}]});
    let r = post_json(c.ports.coordinator, "/v1/chat/completions", &body)
        .expect("the coordinator answers a completion");
    let who = served_by(&r);
    (r.status, who, r)
}

/// `name`'s budget lines as `/ready` shows them: model -> (used, budget).
fn lines(c: &Coordinator, name: &str) -> BTreeMap<String, (u64, Option<u64>)> {
    let ready = c.ready().1;
    let p = profile_of(&ready, name).unwrap_or_else(|| panic!("no {name} in {ready:#}"));
    p["budgets"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|l| {
            let m = l["model"].as_str().unwrap().to_string();
            (m, (l["used"].as_u64().unwrap(), l["budget"].as_u64()))
        })
        .collect()
}

fn now_s() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// Profiles whose test children serve `models` (comma-separated).
fn write_serving(dir: &TestDir, names: &[&str], models: &str) {
    for n in names {
        dir.write_profile(n, &json!({"cookies": [], "testchild": {"models": models}}));
    }
}

fn budgets_file(dir: &TestDir, text: &str) -> String {
    let path = dir.cache_dir().parent().unwrap().join("budgets.conf");
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

#[test]
fn budgets_spread_requests_over_the_accounts_by_budget_left() {
    let dir = TestDir::new("budgets_spread");
    let names = ["acct-a", "acct-b", "acct-c", "big-d"];
    dir.write_profiles(&names);
    // The three `acct-*` have 30 a day of gemini-test, `big-d` 60.
    let file = budgets_file(
        &dir,
        "default = small\n[small]\ngemini-test = 30\n[big]\nprofiles = big-*\ngemini-test = 60\n",
    );
    let c = Coordinator::start(
        &dir,
        Builder::new().pool_size(4).env("MODEL_BUDGETS_FILE", &file),
    );
    c.wait_all_ready(secs(15.0));
    // 40 one at a time: big-d (the most left) alone until it has 30 left
    // like the others, then turns: about 30 + 10 / 4 for it.
    let mut by: BTreeMap<String, u64> = BTreeMap::new();
    for _ in 0..40 {
        let (status, who, r) = ask(&c, "gemini-test");
        assert_eq!(status, 200, "{}", r.body);
        *by.entry(who).or_default() += 1;
    }
    assert!((32..=34).contains(&by["big-d"]), "{by:?}");
    for n in &names[..3] {
        assert!((2..=3).contains(&by[*n]), "{by:?}");
    }
    // /ready says the same per account (an answer is counted as the
    // client reads it: wait a moment for the last).
    for n in names {
        wait_until("/ready's count", secs(5.0), || {
            lines(&c, n)["gemini-test*"].0 == by[n]
        });
    }
    assert_eq!(lines(&c, "big-d")["gemini-test*"].1, Some(60));
}

#[test]
fn budgets_an_account_at_its_budget_serves_other_models_and_again_after_midnight() {
    let dir = TestDir::new("budgets_reset");
    write_serving(
        &dir,
        &["alice"],
        "gemini-pro,gemini-pro-preview,gemini-flash",
    );
    let file = budgets_file(&dir, "[all]\nprofiles = *\ngemini-pro = 2\n");
    // The budget day in UTC, its midnight 25 s away on the moved clock.
    let midnight = (now_s() / 86_400 + 1) * 86_400;
    let builder = |offset: i64| {
        Builder::new()
            .pool_size(1)
            .env("MODEL_BUDGETS_FILE", &file)
            .env("BUDGET_TIMEZONE", "UTC")
            .env("AISP_TEST_CLOCK_OFFSET_S", offset)
    };
    let offset = midnight - now_s() - 25;
    let mut c = Coordinator::start(&dir, builder(offset));
    c.wait_all_ready(secs(15.0));
    for _ in 0..2 {
        let (status, _, r) = ask(&c, "gemini-pro");
        assert_eq!(status, 200, "{}", r.body);
    }
    // At its budget: refused for that model, the reset as Retry-After...
    let (status, code, r) = ask(&c, "gemini-pro-preview");
    assert_eq!(
        (status, code.as_str()),
        (503, "model_quota_exhausted"),
        "{}",
        r.body
    );
    let wait: i64 = r.header("retry-after").unwrap().parse().unwrap();
    let reset = midnight - offset;
    assert!(
        (wait - (reset - now_s())).abs() <= 2,
        "{wait} vs {}",
        reset - now_s()
    );
    assert!(r.body.contains("budget"), "{}", r.body);
    // ...while it serves the others.
    assert_eq!(ask(&c, "gemini-flash").0, 200);
    wait_until("/ready's count", secs(5.0), || {
        lines(&c, "alice")["gemini-pro*"] == (2, Some(2))
    });
    let alice = profile_of(&c.ready().1, "alice").cloned().unwrap();
    assert_eq!(alice["cools_for"], json!(["gemini-pro*"]), "{alice:#}");

    // A restart keeps the day's count.
    c.send_signal(libc::SIGTERM);
    c.wait_exit(secs(15.0));
    drop(c);
    let c = Coordinator::start(&dir, builder(offset));
    c.wait_all_ready(secs(15.0));
    assert_eq!(lines(&c, "alice")["gemini-pro*"], (2, Some(2)));
    assert_eq!(ask(&c, "gemini-pro").0, 503);

    // Midnight passes (real time, no restart): served again.
    let left = reset - now_s();
    assert!(
        left > 0,
        "the test was too slow to see midnight pass: {left}"
    );
    std::thread::sleep(Duration::from_secs(left as u64 + 1));
    let (status, who, r) = ask(&c, "gemini-pro");
    assert_eq!((status, who.as_str()), (200, "alice"), "{}", r.body);
    wait_until("a new day's count", secs(5.0), || {
        lines(&c, "alice")["gemini-pro*"] == (1, Some(2))
    });
}

#[test]
fn budgets_a_model_a_tier_turns_off_never_reaches_its_accounts() {
    let dir = TestDir::new("budgets_tiers");
    let models = "gemini-test,gemini-ultra,gemini-ultra-preview";
    write_serving(&dir, &["free-1", "free-2", "paid-1"], models);
    let file = budgets_file(
        &dir,
        "default = free\n[free]\ngemini-ultra = off\ngemini-test = 100\n[paid]\nprofiles = paid-*\ngemini-ultra = 100\n",
    );
    let c = Coordinator::start(
        &dir,
        Builder::new().pool_size(3).env("MODEL_BUDGETS_FILE", &file),
    );
    c.wait_all_ready(secs(15.0));
    let mut by: BTreeMap<String, u64> = BTreeMap::new();
    for _ in 0..12 {
        let (status, who, r) = ask(&c, "gemini-ultra-preview");
        assert_eq!(status, 200, "{}", r.body);
        *by.entry(who).or_default() += 1;
    }
    assert_eq!(by, BTreeMap::from([("paid-1".to_string(), 12)]));
    // The free accounts still serve what their tier allows.
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..9 {
        seen.insert(ask(&c, "gemini-test").1);
    }
    assert!(
        seen.contains("free-1") && seen.contains("free-2"),
        "{seen:?}"
    );
    // A model no tier of the fleet allows: 403 at once, no account pays.
    std::fs::write(&file, "[all]\nprofiles = *\ngemini-ultra = off\n").unwrap();
    ctl(&dir, &["reload"]).ok();
    let (status, code, r) = ask(&c, "gemini-ultra");
    // The first may wait for the supervisor's word; the answer is a 403.
    assert_eq!(
        (status, code.as_str()),
        (403, "model_not_allowed"),
        "{}",
        r.body
    );
    assert!(r.body.contains("MODEL_BUDGETS_FILE"), "{}", r.body);
    let (status, code, _) = ask(&c, "gemini-ultra");
    assert_eq!((status, code.as_str()), (403, "model_not_allowed"));
}

#[test]
fn budgets_the_fleet_alert_arrives_once_before_the_wall_and_once_at_it() {
    let dir = TestDir::new("budgets_alert");
    dir.write_profiles(&["alice", "bob"]);
    let file = budgets_file(&dir, "[all]\nprofiles = *\ngemini-test = 5\n");
    let hook = crate::console::Hook::start(false);
    let c = Coordinator::start(
        &dir,
        Builder::new()
            .pool_size(2)
            .env("MODEL_BUDGETS_FILE", &file)
            .env("NOTIFY_WEBHOOK_URL", hook.url())
            .env("NOTIFY_FOLD_S", 0)
            .env("BUDGET_FLEET_ALERT_PERCENT", 30),
    );
    c.wait_all_ready(secs(15.0));
    // 10 over the fleet; under 30 % left is 2 left, after the 8th.
    for i in 0..8 {
        assert_eq!(ask(&c, "gemini-test").0, 200, "{i}");
    }
    wait_until("the low alert", secs(10.0), || !hook.bodies().is_empty());
    for i in 8..10 {
        assert_eq!(ask(&c, "gemini-test").0, 200, "{i}");
    }
    let (status, code, _) = ask(&c, "gemini-test");
    assert_eq!((status, code.as_str()), (503, "model_quota_exhausted"));
    wait_until("the gone alert", secs(10.0), || hook.bodies().len() >= 2);
    std::thread::sleep(Duration::from_millis(500));
    let got: Vec<Value> = hook.bodies();
    assert_eq!(got.len(), 2, "{got:#?}");
    assert!(got.iter().all(|b| b["kind"] == "model_budget"), "{got:#?}");
    let text = |i: usize| got[i]["text"].as_str().unwrap().to_string();
    assert!(
        text(0).contains("gemini-test* is running low: 2 of 10"),
        "{}",
        text(0)
    );
    assert!(
        text(1).contains("gemini-test* is gone until the reset"),
        "{}",
        text(1)
    );
}

#[test]
fn budgets_a_bad_file_stops_the_start_and_a_bad_reload_keeps_the_budgets() {
    let dir = TestDir::new("budgets_bad");
    dir.write_profiles(&["alice"]);
    let file = budgets_file(&dir, "[all]\nprofiles = *\ngemini-test = lots\n");
    let builder = || Builder::new().pool_size(1).env("MODEL_BUDGETS_FILE", &file);
    let out = Coordinator::run_to_exit(&dir, builder());
    assert_eq!(out.status.code(), Some(2), "{}", out.stderr);
    let lines = out.error_lines();
    assert_eq!(lines.len(), 1, "{}", out.stderr);
    assert!(
        lines[0]
            .contains("MODEL_BUDGETS_FILE line 3: \"lots\" is not a budget; write a whole number"),
        "{lines:?}"
    );

    std::fs::write(&file, "[all]\nprofiles = *\ngemini-test = 1\n").unwrap();
    let c = Coordinator::start(&dir, builder());
    c.wait_all_ready(secs(15.0));
    std::fs::write(
        &file,
        "[all]\nprofiles = *\ngemini-test = 100\nbroken line\n",
    )
    .unwrap();
    let out = ctl(&dir, &["reload"]);
    assert_ne!(out.code, Some(0), "{out:?}");
    assert!(out.stderr.contains("line 4"), "{out:?}");
    assert_eq!(ask(&c, "gemini-test").0, 200);
    assert_eq!(ask(&c, "gemini-test").0, 503, "the budget of 1 still holds");
    // A good one applies at once; the day's count stays.
    std::fs::write(&file, "[all]\nprofiles = *\ngemini-test = 2\n").unwrap();
    ctl(&dir, &["reload"]).ok();
    assert_eq!(
        ask(&c, "gemini-test").0,
        200,
        "one more under the new budget"
    );
    assert_eq!(ask(&c, "gemini-test").0, 503, "two used today");
}

#[test]
fn budgets_rotation_brings_in_a_queued_account_with_budget_left() {
    let dir = TestDir::new("budgets_rotate");
    write_serving(&dir, &["first", "second"], "gemini-pro,gemini-flash");
    let file = budgets_file(&dir, "[all]\nprofiles = *\ngemini-pro = 2\n");
    let c = Coordinator::start(
        &dir,
        Builder::new().pool_size(1).env("MODEL_BUDGETS_FILE", &file),
    );
    c.wait_all_ready(secs(15.0));
    // One slot: the first account serves its two, then (pro is all that is
    // asked for, the queued one has budget) makes way; the requests wait.
    let mut by: Vec<String> = Vec::new();
    for _ in 0..4 {
        let (status, who, r) = ask(&c, "gemini-pro");
        assert_eq!(status, 200, "{}", r.body);
        by.push(who);
    }
    let first = by[0].clone();
    let second = if first == "first" { "second" } else { "first" };
    assert_eq!(
        by,
        vec![first.clone(), first.clone(), second.into(), second.into()]
    );
    let (status, code, r) = ask(&c, "gemini-pro");
    assert_eq!(
        (status, code.as_str()),
        (503, "model_quota_exhausted"),
        "{}",
        r.body
    );
    // Nothing left for pro anywhere: the slot stays with what it has and
    // serves the other model.
    assert_eq!(ask(&c, "gemini-flash").1, second);
    let ready = c.ready().1;
    assert_eq!(profile_state(&ready, &first).as_deref(), Some("queued"));
}
