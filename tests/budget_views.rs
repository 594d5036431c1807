//! Seeing the account budgets (issue 24): with a budgets file of two tiers
//! and a few completions through the real binary and the test child, the
//! same figures show in `GET /v1/budget` (the fleet's lines per model, no
//! account named, each key its own part), `/ready` (each profile's lines),
//! `ctl status` and `ctl usage` (tables and `--json`), `/metrics` (per
//! account and per fleet line) and the status page's data; without a
//! budgets file they say so (null, no table). The page drawing them is
//! driven in Chromium by tests/python/test_budget_page.py.

use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};

use crate::common::*;

const ADMIN: &str = "views-admin-key-5c1e";
const KEYS: &str = "sk-views-one-1 # viewer\nsk-views-two-2 # other rpd=100\n";

/// Free accounts: 3 of gemini-test, no gemini-pro; paid ones: 2 and 4.
const BUDGETS: &str = "\
default = free
[free]
gemini-test = 3
gemini-pro  = off
[paid]
profiles = paid-*
gemini-test = 2
gemini-pro  = 4
";

fn chat(c: &Coordinator, model: &str) -> Reply {
    post_json_with(
        c.ports.coordinator,
        "/v1/chat/completions",
        &json!({"model": model, "messages": [{"role": "user", "content": "hi"}]}),
        &[("Authorization", "Bearer sk-views-one-1")],
    )
    .expect("the coordinator answers a completion")
}

fn get_with(port: u16, path: &str, header: (&str, &str)) -> Reply {
    get_with_header(port, path, header)
}

fn bearer(key: &str) -> String {
    format!("Bearer {key}")
}

/// `profile`'s budget line for `model` in a `/ready` or status body.
fn line<'v>(body: &'v Value, profile: &str, model: &str) -> &'v Value {
    profile_of(body, profile)
        .and_then(|p| p["budgets"].as_array())
        .and_then(|ls| ls.iter().find(|l| l["model"] == model))
        .unwrap_or_else(|| panic!("no {model} line of {profile} in {body:#}"))
}

/// Completions counted against the budgets so far, over both accounts.
fn counted(c: &Coordinator) -> u64 {
    let (_, body) = c.ready();
    let mut n = 0;
    for p in body["profiles"].as_array().into_iter().flatten() {
        for l in p["budgets"].as_array().into_iter().flatten() {
            n += l["used"].as_u64().unwrap_or(0);
        }
    }
    n
}

/// Some line of `text` begins with these words (columns padded by spaces).
fn has_row(text: &str, words: &[&str]) -> bool {
    text.lines().any(|l| {
        let w: Vec<&str> = l.split_whitespace().collect();
        w.len() >= words.len() && w[..words.len()] == *words
    })
}

fn now_unix() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

fn start_fleet(dir: &TestDir, budgets: bool) -> Coordinator<'_> {
    let knobs = json!({"models": "gemini-test,gemini-pro"});
    for name in ["alice", "paid-bob"] {
        dir.write_profile(
            name,
            &json!({"cookies": [], "name": name, "testchild": knobs}),
        );
    }
    dir.write_key(KEYS);
    let mut b = Builder::new().pool_size(2).env("ADMIN_KEY", ADMIN);
    if budgets {
        let file = dir.path.join("budgets.txt");
        std::fs::write(&file, BUDGETS).unwrap();
        b = b.env("MODEL_BUDGETS_FILE", file.display());
    }
    let c = Coordinator::start(dir, b);
    c.wait_all_ready(secs(15.0));
    c
}

#[test]
fn budget_views_show_the_same_figures_everywhere() {
    let dir = TestDir::new("budget_views_everywhere");
    let c = start_fleet(&dir, true);
    let port = c.ports.coordinator;
    // Five gemini-test, each counted before the next is sent: the most
    // left wins, so alice (3) and paid-bob (2) end with all of theirs used;
    // then one gemini-pro, which only paid-bob's tier allows.
    for i in 1..=5u64 {
        let r = chat(&c, "gemini-test");
        assert_eq!(r.status, 200, "{}", r.body);
        wait_until("the answer counted", secs(5.0), || counted(&c) == i);
    }
    let r = chat(&c, "gemini-pro");
    assert_eq!(r.status, 200, "{}", r.body);
    wait_until("the pro answer counted", secs(5.0), || counted(&c) == 6);

    // /v1/budget: the fleet's lines, summed, no account named.
    let r = get_with(
        port,
        "/v1/budget",
        ("Authorization", &bearer("sk-views-one-1")),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let v = r.json();
    assert_eq!(v["key"]["key"], "viewer", "{v:#}");
    let m = &v["models"];
    assert_eq!(m["zone"], "America/Los_Angeles", "{v:#}");
    let day = m["day"].as_str().unwrap();
    assert!(day.len() == 10 && day.as_bytes()[4] == b'-', "{day}");
    let resets = m["resets_at_unix"].as_i64().unwrap();
    let now = now_unix();
    assert!(resets > now && resets <= now + 25 * 3600, "{resets} {now}");
    let lines: Vec<Value> = m["lines"].as_array().unwrap().clone();
    let expect = |model: &str, accounts: u64, budget: u64, used: u64, left: u64| {
        json!({"model": model, "accounts": accounts, "budget": budget, "used": used,
               "left": left, "resets_at_unix": resets})
    };
    assert_eq!(
        lines,
        vec![
            expect("gemini-pro*", 1, 4, 1, 3),
            expect("gemini-test*", 2, 5, 5, 0)
        ],
        "{v:#}"
    );
    for name in ["alice", "paid-bob", "free", "other"] {
        assert!(!r.body.contains(name), "{name} shows to a key: {}", r.body);
    }
    // Another key: the same fleet, its own key part only.
    let r2 = get_with(
        port,
        "/v1/budget",
        ("Authorization", &bearer("sk-views-two-2")),
    );
    let v2 = r2.json();
    assert_eq!(
        (v2["key"]["key"].as_str(), &v2["models"]),
        (Some("other"), m)
    );
    assert!(!r2.body.contains("viewer"), "{}", r2.body);
    let r3 = get_with(port, "/v1/budget", ("Authorization", "Bearer sk-wrong"));
    assert_eq!(r3.status, 401, "{}", r3.body);

    // /ready with the admin key: each profile's lines.
    let (_, ready) = c.ready();
    let a = line(&ready, "alice", "gemini-test*");
    assert_eq!(
        (&a["tier"], &a["used"], &a["budget"], &a["resets_at_unix"]),
        (&json!("free"), &json!(3), &json!(3), &json!(resets)),
        "{a}"
    );
    assert_eq!(line(&ready, "alice", "gemini-pro*")["budget"], Value::Null);
    let b = line(&ready, "paid-bob", "gemini-pro*");
    assert_eq!((&b["used"], &b["budget"]), (&json!(1), &json!(4)), "{b}");
    assert_eq!(line(&ready, "paid-bob", "gemini-test*")["used"], 2);
    // Anyone else's /ready names no profile, so no budget either.
    let public = http_get(port, "/ready").unwrap();
    assert!(!public.body.contains("budgets"), "{}", public.body);

    // ctl status and ctl usage: the tables, and the same in --json.
    let st = ctl(&dir, &["status"]).ok().stdout;
    let usage = ctl(&dir, &["usage"]).ok().stdout;
    for text in [&st, &usage] {
        assert!(
            text.contains(&format!(
                "budgets today {day} (America/Los_Angeles), reset in "
            )),
            "{text}"
        );
        assert!(
            has_row(text, &["PROFILE", "TIER", "MODEL", "USED/BUDGET", "RESETS"]),
            "{text}"
        );
        assert!(
            has_row(
                text,
                &["alice", "free", "gemini-test*", "3/3", "spent", "in"]
            ),
            "{text}"
        );
        assert!(
            has_row(text, &["alice", "free", "gemini-pro*", "off", "-"]),
            "{text}"
        );
        assert!(
            has_row(text, &["paid-bob", "paid", "gemini-pro*", "1/4", "in"]),
            "{text}"
        );
        assert!(
            has_row(text, &["gemini-test*", "2", "5/5", "0", "in"]),
            "{text}"
        );
        assert!(
            has_row(text, &["gemini-pro*", "1", "1/4", "3", "in"]),
            "{text}"
        );
    }
    let st_json = status(&dir);
    assert_eq!(st_json["budgets"]["lines"], json!(lines), "{st_json:#}");
    assert_eq!(line(&st_json, "paid-bob", "gemini-pro*")["used"], 1);
    let u = ctl(&dir, &["--json", "usage"]).ok().json();
    assert_eq!(u["budgets"]["lines"], json!(lines), "{u:#}");
    assert_eq!(
        u["budgets"]["accounts"].as_array().unwrap().len(),
        4,
        "{u:#}"
    );

    // /metrics: per account and line, and per fleet line; a key holder
    // sees the accounts' rows as it sees their other per-profile rows.
    let text = get_with(
        port,
        "/metrics",
        ("Authorization", &bearer("sk-views-two-2")),
    )
    .body;
    for needle in [
        "aistudioproxy_budget_used{profile=\"alice\",model=\"gemini-test*\"} 3".to_string(),
        "aistudioproxy_budget_limit{profile=\"alice\",model=\"gemini-test*\"} 3".into(),
        "aistudioproxy_budget_limit{profile=\"alice\",model=\"gemini-pro*\"} 0".into(),
        "aistudioproxy_budget_used{profile=\"paid-bob\",model=\"gemini-pro*\"} 1".into(),
        "aistudioproxy_budget_limit{profile=\"paid-bob\",model=\"gemini-pro*\"} 4".into(),
        format!("aistudioproxy_budget_resets_at_seconds{{profile=\"paid-bob\",model=\"gemini-test*\"}} {resets}"),
        "aistudioproxy_fleet_budget{model=\"gemini-test*\"} 5".into(),
        "aistudioproxy_fleet_budget_left{model=\"gemini-test*\"} 0".into(),
        "aistudioproxy_fleet_budget_left{model=\"gemini-pro*\"} 3".into(),
    ] {
        assert!(text.contains(&needle), "{needle} missing from\n{text}");
    }

    // The page: its budgets tables, and the data it draws them from.
    let page = get_with(port, "/admin/", ("Accept", "text/html")).body;
    assert!(page.contains("id=\"budgets\"") && page.contains("id=\"fleet-budgets\""));
    let js = get_with(port, "/admin/console.js", ("Accept", "*/*")).body;
    assert!(
        js.contains("function drawBudgets"),
        "the page draws the budgets"
    );
    let r = post_json_with(
        port,
        "/admin/console",
        &json!({"after": 0}),
        &[("X-Admin-Key", ADMIN)],
    )
    .unwrap();
    let data = r.json();
    assert_eq!(data["status"]["budgets"]["lines"], json!(lines), "{data:#}");
    assert_eq!(line(&data["status"], "alice", "gemini-test*")["used"], 3);
}

#[test]
fn budget_views_without_a_budgets_file_say_so() {
    let dir = TestDir::new("budget_views_none");
    let c = start_fleet(&dir, false);
    let port = c.ports.coordinator;
    assert_eq!(chat(&c, "gemini-test").status, 200);
    let v = get_with(
        port,
        "/v1/budget",
        ("Authorization", &bearer("sk-views-one-1")),
    )
    .json();
    assert_eq!(
        (v["key"]["key"].as_str(), &v["models"]),
        (Some("viewer"), &Value::Null)
    );
    let st = ctl(&dir, &["status"]).ok().stdout;
    assert!(!st.contains("budgets today"), "{st}");
    assert_eq!(status(&dir)["budgets"], Value::Null);
    let (_, ready) = c.ready();
    assert!(profile_of(&ready, "alice")
        .unwrap()
        .get("budgets")
        .is_none());
    let text = get_with(port, "/metrics", ("X-Admin-Key", ADMIN)).body;
    assert!(!text.contains("aistudioproxy_budget_used{"), "{text}");
    assert!(!text.contains("aistudioproxy_fleet_budget_left{"), "{text}");
}
