//! Per-model cooldowns through the real binary and the test child: an
//! account out of quota for one model (the child's quota lines while it
//! runs that model, as the real child logs them) keeps its slot and serves
//! the other models; requests for the cooled model go to other accounts;
//! when none can serve it they are refused at once with `Retry-After` while
//! the other models are served; a profile of no use for what is asked is
//! rotated out for one that is.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::{json, Value};

use crate::common::*;

const PRO: &str = "gemini-pro";
const FLASH: &str = "gemini-flash";

/// A profile whose test child serves both models and runs out of quota for
/// the models containing the parts in `quota_for`.
fn profile(quota_for: &str) -> Value {
    let mut knobs = json!({"models": format!("{PRO},{FLASH}"), "quota_requeue_ms": 200});
    if !quota_for.is_empty() {
        knobs["quota_models"] = json!(quota_for);
    }
    json!({"cookies": [], "testchild": knobs})
}

/// A non-streamed completion for `model`: (status, serving profile or the
/// error code, the whole reply).
fn ask(port: u16, model: &str, text: &str) -> (u16, String, Reply) {
    let body = json!({"model": model, "messages": [{"role": "user", "content": text}]});
    let url = format!("http://127.0.0.1:{port}/v1/chat/completions");
    let mut resp = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .proxy(None)
        .build()
        .new_agent()
        .post(&url)
        .config()
        .timeout_global(Some(Duration::from_secs(30)))
        .build()
        .header("Content-Type", "application/json")
        .send(body.to_string())
        .expect("an answer");
    let r = reply_of(&mut resp).expect("a whole answer");
    let who = served_by(&r);
    (r.status, who, r)
}

fn profile_json(c: &Coordinator, name: &str) -> Value {
    profile_of(&c.ready().1, name)
        .cloned()
        .unwrap_or_else(|| panic!("no profile {name}"))
}

/// The models `name` cools for, per `/ready`.
fn cooled(c: &Coordinator, name: &str) -> Vec<String> {
    profile_json(c, name)["model_cooldowns"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|m| m["model"].as_str().map(String::from))
        .collect()
}

#[test]
fn models_an_account_out_of_quota_for_one_model_serves_the_others() {
    let dir = TestDir::new("models_one_model_out");
    dir.write_profile("a", &profile("pro"));
    dir.write_profile("b", &profile(""));
    let c = Coordinator::start(
        &dir,
        Builder::new().pool_size(2).env("METRICS_OPEN", "true"),
    );
    c.wait_all_ready(secs(10.0));
    let port = c.ports.coordinator;
    let pids: Vec<Option<i32>> = c.slots().iter().map(|s| s.pid).collect();

    // Both models are in demand; pro requests until one has landed on a.
    assert_eq!(ask(port, FLASH, "warm").0, 200);
    wait_until("a to run out of quota for pro", secs(20.0), || {
        let (status, who, r) = ask(port, PRO, "pro please");
        assert_eq!((status, who.as_str()), (200, "b"), "{}", r.body);
        cooled(&c, "a") == vec![PRO.to_string()]
    });
    let log = c.stderr();
    assert!(
        log.contains("profile a is out of quota for model gemini-pro"),
        "{log}"
    );
    assert!(log.contains("keeps serving other models"), "{log}");

    // a keeps its slot and child; pro goes to b only, flash to both.
    let mut served: BTreeMap<(String, &str), u32> = BTreeMap::new();
    for i in 0..6 {
        for model in [PRO, FLASH] {
            let (status, who, r) = ask(port, model, &format!("n{i}"));
            assert_eq!(status, 200, "{}", r.body);
            *served.entry((who, model)).or_default() += 1;
        }
    }
    eprintln!("MEASURED per-model (test child): served per account and model {served:?}");
    assert_eq!(served.get(&("a".to_string(), PRO)), None, "{served:?}");
    assert_eq!(served.get(&("b".to_string(), PRO)), Some(&6), "{served:?}");
    assert!(
        served
            .get(&("a".to_string(), FLASH))
            .is_some_and(|n| *n >= 1),
        "{served:?}"
    );
    let now: Vec<Option<i32>> = c.slots().iter().map(|s| s.pid).collect();
    assert_eq!(now, pids, "no child restarted");
    assert_eq!(profile_json(&c, "a")["state"], "running");

    // Shown where operators look.
    let a = profile_json(&c, "a");
    let left = a["model_cooldowns"][0]["left_s"].as_u64().unwrap();
    assert!(left > 3000 && left <= 3600, "{a}");
    let t = ctl(&dir, &["status"]).ok().stdout;
    assert!(
        t.contains("cooling for model gemini-pro: a (exhausted, "),
        "{t}"
    );
    let m = c.get("/metrics").expect("metrics").body;
    assert!(
        m.contains("aistudioproxy_model_cooldown_seconds_left{profile=\"a\",model=\"gemini-pro\"}"),
        "{m}"
    );
    // An operator clears that one model.
    assert!(ctl(&dir, &["reset", "a", "gemini-flash"]).code != Some(0));
    let r = ctl(&dir, &["reset", "a", "gemini-pro"]).ok();
    assert!(
        r.stdout.contains("cooldown of model gemini-pro cleared"),
        "{r:#?}"
    );
    assert!(cooled(&c, "a").is_empty());
}

#[test]
fn models_a_model_no_account_can_serve_is_refused_and_the_others_served() {
    let dir = TestDir::new("models_none_serves");
    dir.write_profile("a", &profile("pro"));
    dir.write_profile("b", &profile("pro"));
    let c = Coordinator::start(
        &dir,
        Builder::new().pool_size(2).env("PROFILE_COOLDOWN_S", 900),
    );
    c.wait_all_ready(secs(10.0));
    let port = c.ports.coordinator;
    assert_eq!(ask(port, FLASH, "warm").0, 200);
    // The first pro request is taken back from a, then from b: no account
    // is left for pro.
    let (status, code, r) = ask(port, PRO, "pro please");
    assert_eq!(
        (status, code.as_str()),
        (503, "model_quota_exhausted"),
        "{}",
        r.body
    );
    let after: u64 = r.header("retry-after").unwrap().parse().unwrap();
    assert!((800..=900).contains(&after), "Retry-After {after}");
    assert_eq!(cooled(&c, "a"), vec![PRO]);
    assert_eq!(cooled(&c, "b"), vec![PRO]);
    // Refused at once from now on, while flash is served.
    let t = std::time::Instant::now();
    assert_eq!(ask(port, PRO, "again").1, "model_quota_exhausted");
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    for _ in 0..3 {
        let (status, _, r) = ask(port, FLASH, "flash");
        assert_eq!(status, 200, "{}", r.body);
    }
    assert!(c.slots().iter().all(|s| s.state == "ready"));
}

#[test]
fn models_a_profile_of_no_use_for_what_is_asked_is_rotated_out() {
    let dir = TestDir::new("models_rotated_out");
    dir.write_profile("a", &profile("pro"));
    dir.write_profile("b", &profile(""));
    let c = Coordinator::start(&dir, Builder::new().pool_size(1));
    c.wait_all_ready(secs(10.0));
    let port = c.ports.coordinator;
    assert_eq!(c.slots()[0].profile.as_deref(), Some("a"));
    // Only pro is asked for: a, out of quota for it, is of no use; the
    // request waits for b, which the slot starts in a's place.
    let (status, who, r) = ask(port, PRO, "pro please");
    assert_eq!((status, who.as_str()), (200, "b"), "{}", r.body);
    assert_eq!(c.slots()[0].profile.as_deref(), Some("b"));
    // Queued, not cooling as a whole: it serves any other model.
    let a = profile_json(&c, "a");
    assert_eq!(a["state"], "queued", "{a}");
    assert_eq!(a["cools_for"], json!([PRO]), "{a}");
    assert_eq!(cooled(&c, "a"), vec![PRO]);
    assert!(c.stderr().contains("it is rotated out"), "{}", c.stderr());
}
