//! Per-key limits and budget days (issue 24, the edge's part): a key over
//! its per-minute, daily or token limit gets 429 with `Retry-After` while
//! other keys are served, a model outside its list 403, each dialect in its
//! own error shape; a key sees only its own limits and use (`/v1/budget`,
//! `/metrics`); the alert before the wall arrives once; the day's counts
//! survive a restart and roll over at the zone's midnight (the budget
//! clock moved with the test-only `AISP_TEST_CLOCK_OFFSET_S`); a bad limit
//! or zone stops the start with one line (exit 2), a bad limit at a reload
//! keeps the keys in force.

use std::time::Duration;

use serde_json::{json, Value};

use crate::common::*;

const KEYS: &str = "\
sk-budget-rate-1 # rate rpm=2
sk-budget-free-2 # free for all
sk-budget-day-3  # daily rpd=2
sk-budget-tok-4  # thrifty tpd=3
sk-budget-pick-5 # picky models=gemini-test*,exact-one
sk-budget-ant-6  # dialects rpm=1
";

fn chat(c: &Coordinator, key: &str, model: &str) -> Reply {
    post_json_with(
        c.ports.coordinator,
        "/v1/chat/completions",
        &json!({"model": model, "messages": [{"role": "user", "content": "hi"}]}),
        &[("Authorization", &format!("Bearer {key}"))],
    )
    .expect("the coordinator answers a completion")
}

fn get_with(port: u16, path: &str, key: &str) -> Reply {
    get_with_header(port, path, ("Authorization", &format!("Bearer {key}")))
}

fn budget(c: &Coordinator, key: &str) -> Value {
    let r = get_with(c.ports.coordinator, "/v1/budget", key);
    assert_eq!(r.status, 200, "{}", r.body);
    r.json()
}

/// The code of an OpenAI-shaped error.
fn code(r: &Reply) -> String {
    r.json()["error"]["code"].as_str().unwrap_or("").to_string()
}

fn retry_after(r: &Reply) -> u64 {
    r.header("retry-after")
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no Retry-After: {r:?}"))
}

#[test]
fn budget_keys_over_their_limits_are_refused_at_the_edge_while_others_are_served() {
    let dir = TestDir::new("budget_limits");
    dir.write_profiles(&["alice"]);
    dir.write_key(KEYS);
    let c = Coordinator::start(&dir, Builder::new().pool_size(1));
    c.wait_all_ready(secs(10.0));

    // rpm=2: the third in the minute is refused, another key is served.
    for _ in 0..2 {
        assert_eq!(chat(&c, "sk-budget-rate-1", "gemini-test").status, 200);
    }
    let r = chat(&c, "sk-budget-rate-1", "gemini-test");
    assert_eq!(
        (r.status, code(&r)),
        (429, "key_rate_limited".into()),
        "{}",
        r.body
    );
    assert!((1..=60).contains(&retry_after(&r)), "{r:?}");
    assert!(
        r.body.contains("rpm"),
        "the message names the limit: {}",
        r.body
    );
    assert_eq!(chat(&c, "sk-budget-free-2", "gemini-test").status, 200);

    // rpd=2: refused until the budget day ends (at most 25 hours away).
    for _ in 0..2 {
        assert_eq!(chat(&c, "sk-budget-day-3", "gemini-test").status, 200);
    }
    let r = chat(&c, "sk-budget-day-3", "gemini-test");
    assert_eq!(
        (r.status, code(&r)),
        (429, "key_daily_limit".into()),
        "{}",
        r.body
    );
    let reset = budget(&c, "sk-budget-day-3")["key"]["resets_at_unix"]
        .as_u64()
        .unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let wait = retry_after(&r);
    assert!(
        wait <= 25 * 3600 && reset.abs_diff(now + wait) <= 2,
        "{wait} {reset} {now}"
    );

    // tpd=3: each answer reports 2 tokens; past 3 the key is refused.
    for _ in 0..2 {
        assert_eq!(chat(&c, "sk-budget-tok-4", "gemini-test").status, 200);
    }
    wait_until("the tokens counted", secs(5.0), || {
        budget(&c, "sk-budget-tok-4")["key"]["today"]["tokens"] == 4
    });
    let r = chat(&c, "sk-budget-tok-4", "gemini-test");
    assert_eq!(
        (r.status, code(&r)),
        (429, "key_token_limit".into()),
        "{}",
        r.body
    );

    // models=gemini-test*,exact-one.
    assert_eq!(chat(&c, "sk-budget-pick-5", "gemini-test").status, 200);
    let r = chat(&c, "sk-budget-pick-5", "gpt-4o");
    assert_eq!(
        (r.status, code(&r)),
        (403, "model_not_allowed".into()),
        "{}",
        r.body
    );

    // Only completions count: listing models is free.
    let r = get_with(c.ports.coordinator, "/v1/models", "sk-budget-rate-1");
    assert_eq!(r.status, 200);

    // The dialects, limited in their own shapes (rpm=1 for this key).
    let port = c.ports.coordinator;
    let ant = json!({"model": "gemini-test", "max_tokens": 20,
                     "messages": [{"role": "user", "content": "hi"}]});
    let hdr = [
        ("x-api-key", "sk-budget-ant-6"),
        ("anthropic-version", "2023-06-01"),
    ];
    let r = post_json_with(port, "/v1/messages", &ant, &hdr).unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
    let r = post_json_with(port, "/v1/messages", &ant, &hdr).unwrap();
    assert_eq!(r.status, 429, "{}", r.body);
    assert_eq!(r.json()["type"], "error");
    assert_eq!(r.json()["error"]["type"], "rate_limit_error", "{}", r.body);
    assert!(retry_after(&r) >= 1);
    let g = json!({"contents": [{"role": "user", "parts": [{"text": "hi"}]}]});
    let path = "/v1beta/models/gemini-test:generateContent?key=sk-budget-ant-6";
    let r = post_json_with(port, path, &g, &[]).unwrap();
    assert_eq!(r.status, 429, "{}", r.body);
    assert_eq!(
        r.json()["error"]["status"],
        "RESOURCE_EXHAUSTED",
        "{}",
        r.body
    );
    assert!(retry_after(&r) >= 1);
    let hdr = [
        ("x-api-key", "sk-budget-pick-5"),
        ("anthropic-version", "2023-06-01"),
    ];
    let other = json!({"model": "claude-x", "max_tokens": 20,
                       "messages": [{"role": "user", "content": "hi"}]});
    let r = post_json_with(port, "/v1/messages", &other, &hdr).unwrap();
    assert_eq!(r.status, 403, "{}", r.body);
    assert_eq!(r.json()["error"]["type"], "permission_error", "{}", r.body);
    let path = "/v1beta/models/claude-x:generateContent?key=sk-budget-pick-5";
    let r = post_json_with(port, path, &g, &[]).unwrap();
    assert_eq!(
        r.json()["error"]["status"],
        "PERMISSION_DENIED",
        "{}",
        r.body
    );

    // A key sees its own limits and use, nobody else's.
    let b = budget(&c, "sk-budget-rate-1");
    assert_eq!(b["key"]["key"], "rate", "{b:#}");
    assert_eq!(b["key"]["limits"]["rpm"], 2);
    assert_eq!(b["key"]["today"]["requests"], 2, "refusals are not counted");
    assert_eq!(b["key"]["remaining"]["rpm"], 0);
    assert!(b.get("models").is_some(), "room for the account budgets");
    let text = b.to_string();
    for other in ["daily", "thrifty", "picky", "free for all", "sk-budget"] {
        assert!(
            !text.contains(other),
            "{other} shows to the rate key: {text}"
        );
    }
    let free = budget(&c, "sk-budget-free-2");
    assert_eq!(free["key"]["limits"]["rpd"], Value::Null);
    assert_eq!(free["key"]["today"]["requests"], 1);
    let m = get_with(port, "/metrics", "sk-budget-rate-1").body;
    assert!(
        m.contains("aistudioproxy_key_limit{key=\"rate\",limit=\"rpm\"} 2"),
        "{m}"
    );
    assert!(
        m.contains("aistudioproxy_key_refusals_total{key=\"rate\",code=\"key_rate_limited\"} 1"),
        "{m}"
    );
    assert!(
        !m.contains("key=\"daily\"") && !m.contains("key=\"picky\""),
        "{m}"
    );

    // The operator sees every key's day.
    let u = ctl(&dir, &["--json", "usage"]).ok().json();
    let today = &u["today"];
    assert_eq!(today["zone"], "America/Los_Angeles", "{today:#}");
    let daily = today["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["key"] == "daily");
    assert_eq!(daily.unwrap()["today"]["requests"], 2, "{today:#}");
    let alice: u64 = today["profiles"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["profile"] == "alice")
        .map(|p| p["answers"].as_u64().unwrap())
        .sum();
    assert_eq!(alice, 9, "every answer of the day: {today:#}");
    let table = ctl(&dir, &["usage"]).ok().stdout;
    assert!(
        table.contains("today ") && table.contains("daily"),
        "{table}"
    );
    assert!(!table.contains("sk-budget"), "{table}");
    assert!(!c.stderr().contains("sk-budget"), "keys are never logged");
}

#[test]
fn budget_alerts_arrive_once_and_the_day_survives_restarts_until_midnight() {
    let dir = TestDir::new("budget_days");
    dir.write_profiles(&["alice"]);
    dir.write_key("sk-budget-alert-7 # alerted rpd=5\n");
    let hook = crate::console::Hook::start(false);
    let url = hook.url();
    let builder = |offset: i64| {
        Builder::new()
            .pool_size(1)
            .env("NOTIFY_WEBHOOK_URL", &url)
            .env("BUDGET_ALERT_PERCENT", 60)
            .env("AISP_TEST_CLOCK_OFFSET_S", offset)
    };
    let mut c = Coordinator::start(&dir, builder(0));
    c.wait_all_ready(secs(10.0));
    let key = "sk-budget-alert-7";
    for _ in 0..5 {
        assert_eq!(chat(&c, key, "gemini-test").status, 200);
    }
    assert_eq!(chat(&c, key, "gemini-test").status, 429);
    wait_until("two alerts", secs(10.0), || hook.bodies().len() >= 2);
    std::thread::sleep(Duration::from_millis(500));
    let got = hook.bodies();
    assert_eq!(got.len(), 2, "{got:#?}");
    assert!(got.iter().all(|b| b["kind"] == "key_budget"), "{got:#?}");
    let texts: Vec<&str> = got.iter().map(|b| b["text"].as_str().unwrap()).collect();
    assert!(
        texts[0].contains("key alerted: used 60%") && texts[0].contains("3 of 5"),
        "{texts:?}"
    );
    assert!(
        texts[1].contains("key alerted: reached its limit of 5"),
        "{texts:?}"
    );
    assert!(!texts.concat().contains("sk-budget"), "{texts:?}");
    let day = budget(&c, key)["key"].clone();

    // A restart: the day's counts and its alerts come back.
    c.send_signal(libc::SIGTERM);
    c.wait_exit(secs(15.0));
    drop(c);
    let mut c = Coordinator::start(&dir, builder(0));
    c.wait_all_ready(secs(10.0));
    let r = chat(&c, key, "gemini-test");
    assert_eq!(
        (r.status, code(&r)),
        (429, "key_daily_limit".into()),
        "{}",
        r.body
    );
    assert_eq!(budget(&c, key)["key"]["today"]["requests"], 5);

    // The clock past the zone's midnight: a new day, the key served again.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let past = day["resets_at_unix"].as_i64().unwrap() - now + 5;
    c.send_signal(libc::SIGTERM);
    c.wait_exit(secs(15.0));
    drop(c);
    let c = Coordinator::start(&dir, builder(past));
    c.wait_all_ready(secs(10.0));
    assert_eq!(chat(&c, key, "gemini-test").status, 200);
    let b = budget(&c, key)["key"].clone();
    assert_eq!(b["today"]["requests"], 1, "{b:#}");
    assert_ne!(b["day"], day["day"], "{b:#} after {day:#}");
    assert!(b["resets_at_unix"].as_i64().unwrap() > day["resets_at_unix"].as_i64().unwrap());
    assert_eq!(hook.bodies().len(), 2, "no alert on the new day yet");
}

#[test]
fn budget_bad_limits_and_zones_stop_the_start_and_a_reload_keeps_the_keys() {
    let dir = TestDir::new("budget_bad");
    dir.write_profiles(&["alice"]);
    dir.write_key("sk-budget-good-8 # ok\nsk-budget-secret-9 # team rpm=often\n");
    let out = Coordinator::run_to_exit(&dir, Builder::new().pool_size(1));
    assert_eq!(out.status.code(), Some(2), "{}", out.stderr);
    let lines = out.error_lines();
    assert_eq!(lines.len(), 1, "{}", out.stderr);
    assert!(lines[0].contains("line 2: rpm=\"often\""), "{lines:?}");
    assert!(
        !out.stderr.contains("sk-budget"),
        "never the key: {}",
        out.stderr
    );

    dir.write_key("sk-budget-good-8 # ok rpd=100\n");
    let out = Coordinator::run_to_exit(
        &dir,
        Builder::new()
            .pool_size(1)
            .env("BUDGET_TIMEZONE", "Mars/Olympus"),
    );
    assert_eq!(out.status.code(), Some(2), "{}", out.stderr);
    let lines = out.error_lines();
    assert_eq!(lines.len(), 1, "{}", out.stderr);
    assert!(
        lines[0].contains("BUDGET_TIMEZONE") && lines[0].contains("PST8PDT"),
        "{lines:?}"
    );

    // A POSIX rule is taken as it is; a bad limit at a reload changes nothing.
    let c = Coordinator::start(
        &dir,
        Builder::new().pool_size(1).env("BUDGET_TIMEZONE", "UTC0"),
    );
    c.wait_all_ready(secs(10.0));
    assert_eq!(chat(&c, "sk-budget-good-8", "gemini-test").status, 200);
    assert_eq!(
        budget(&c, "sk-budget-good-8")["key"]["resets_at_unix"]
            .as_i64()
            .unwrap()
            % 86_400,
        0
    );
    dir.write_key("sk-budget-good-8 # ok rpd=lots\n");
    let r = ctl(&dir, &["reload"]);
    assert_ne!(r.code, Some(0), "{r:#?}");
    assert!(r.stderr.contains("line 1: rpd=\"lots\""), "{r:#?}");
    let b = budget(&c, "sk-budget-good-8");
    assert_eq!(
        b["key"]["limits"]["rpd"], 100,
        "the keys in force stay: {b:#}"
    );
    // A good file at the next reload: its limits apply at once.
    dir.write_key("sk-budget-good-8 # ok rpd=1\n");
    ctl(&dir, &["reload"]).ok();
    let r = chat(&c, "sk-budget-good-8", "gemini-test");
    assert_eq!(
        (r.status, code(&r)),
        (429, "key_daily_limit".into()),
        "{}",
        r.body
    );
}
