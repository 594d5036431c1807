//! A day on the real child (issue 21), fast, through the real coordinator
//! and the test child imitating the real child's awkward ways:
//!
//! - a streamed request to an account out of quota (head at once, an empty
//!   finishing chunk, `[DONE]`, an error event after it, the quota in the
//!   log) is answered with content by another account; with no account
//!   left, the client gets the empty stream;
//! - two accounts on two slots, one out of quota for pro: both slots keep
//!   serving flash, and the cooling one says which model cools;
//! - a ready child whose browser (in a session of its own) dies is evicted
//!   from its process tree, before any request is sent to it.
//!
//! (A client that leaves a turn: `accounts.rs`.)

use std::time::Instant;

use serde_json::{json, Value};

use crate::accounts::{
    chat, child_log, complete, cookie, events, knobbed, profile, streamed_content, wait_ready_on,
    with_cookies,
};
use crate::common::*;
use crate::proxy::post;

/// As the real child out of quota: the head when the work starts, the
/// empty answer a while later.
fn out_of_quota() -> Value {
    with_cookies(
        vec![cookie("FAKE_QUOTA", "1", -1.0)],
        json!({"completion_delay_ms": 300}),
    )
}

#[test]
fn day_a_streamed_quota_is_answered_by_another_account() {
    let dir = TestDir::new("day_streamed_quota");
    dir.write_profile("a-quota", &out_of_quota());
    dir.write_profile("b-good", &knobbed(json!({})));
    let c = Coordinator::start(&dir, Builder::new().pool_size(1).ready_timeout_s(10));
    wait_ready_on(&c, "a-quota", 10.0);
    let (r, took) = complete(&c, &chat("hello", true));
    assert_eq!(r.status, 200, "{}", r.body);
    let content = streamed_content(&r.body);
    assert!(
        content.starts_with("profile=b-good echo=hello"),
        "{}",
        r.body
    );
    assert!(!r.body.contains("Auth rotation failed"), "{}", r.body);
    eprintln!("MEASURED: a streamed quota answered with content by another account in {took:.2?}");
    let a = profile(&c, "a-quota");
    assert_eq!(a["cools_for"], json!(["gemini-test"]), "{a}");
    let log = c.stderr();
    assert!(
        log.contains("a stream with nothing in it, held back"),
        "{log}"
    );
    assert!(!log.contains("evicting"), "{log}");
}

#[test]
fn day_without_the_hold_a_streamed_quota_reaches_its_client_empty() {
    // HOLD_STREAM_HEAD=false: the head goes out at once, as before the
    // hold, and the client is left with the empty stream.
    let dir = TestDir::new("day_streamed_quota_not_held");
    dir.write_profile("a-quota", &out_of_quota());
    dir.write_profile("b-good", &knobbed(json!({})));
    let c = Coordinator::start(
        &dir,
        Builder::new()
            .pool_size(1)
            .ready_timeout_s(10)
            .env("HOLD_STREAM_HEAD", "false"),
    );
    wait_ready_on(&c, "a-quota", 10.0);
    let (r, _) = complete(&c, &chat("hello", true));
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(streamed_content(&r.body), "", "{}", r.body);
    assert!(r.body.contains("Auth rotation failed."), "{}", r.body);
    assert!(!c
        .stderr()
        .contains("a stream with nothing in it, held back"));
}

#[test]
fn day_a_stream_is_empty_for_its_client_only_when_every_account_is() {
    let dir = TestDir::new("day_streamed_quota_everywhere");
    dir.write_profile("a-quota", &out_of_quota());
    dir.write_profile("b-quota", &out_of_quota());
    let c = Coordinator::start(&dir, Builder::new().pool_size(1).ready_timeout_s(10));
    wait_ready_on(&c, "a-quota", 10.0);
    let (r, _) = complete(&c, &chat("hello", true));
    // Both accounts tried: the last empty stream, as its child sent it.
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(streamed_content(&r.body), "", "{}", r.body);
    let ev = events(&r.body);
    assert_eq!(ev.get(1).map(String::as_str), Some("[DONE]"), "{}", r.body);
    assert!(r.body.contains("Auth rotation failed."), "{}", r.body);
    for name in ["a-quota", "b-quota"] {
        assert_eq!(profile(&c, name)["cools_for"], json!(["gemini-test"]));
        assert!(child_log(&dir, name).contains("Quota limit hit during stream"));
    }
}

/// Two models on one test child; `quota_for`: the part of a model name
/// whose quota is used up.
fn two_models(quota_for: &str) -> Value {
    let mut knobs = json!({"models": "gemini-pro,gemini-flash", "completion_delay_ms": 300});
    if !quota_for.is_empty() {
        knobs["quota_models"] = json!(quota_for);
    }
    json!({"cookies": [], "testchild": knobs})
}

fn ask(c: &Coordinator, model: &str, text: &str) -> Reply {
    let body = json!({"model": model, "messages": [{"role": "user", "content": text}]});
    post_json(c.ports.coordinator, "/v1/chat/completions", &body).expect("an answer")
}

/// Who answered: `profile=<name> echo=...`.
fn served_by(r: &Reply) -> String {
    r.json()["choices"][0]["message"]["content"]
        .as_str()
        .and_then(|c| c.strip_prefix("profile="))
        .and_then(|c| c.split(' ').next())
        .unwrap_or_default()
        .to_string()
}

#[test]
fn day_an_account_out_of_quota_for_one_model_keeps_its_slot_serving_the_other() {
    let dir = TestDir::new("day_per_model_slots");
    dir.write_profile("a", &two_models("pro"));
    dir.write_profile("b", &two_models(""));
    let c = Coordinator::start(&dir, Builder::new().pool_size(2));
    c.wait_all_ready(secs(10.0));
    let pids: Vec<Option<i32>> = c.slots().iter().map(|s| s.pid).collect();
    // Only pro asked for, twice at once: one lands on a, taken back, served
    // by b. a is then of no use for what is asked, but nothing better can
    // take its slot: it stays.
    let cr = &c;
    let pros: Vec<Reply> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..2)
            .map(|i| s.spawn(move || ask(cr, "gemini-pro", &format!("pro {i}"))))
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for r in &pros {
        assert_eq!((r.status, served_by(r).as_str()), (200, "b"), "{}", r.body);
    }
    let a = profile(&c, "a");
    assert_eq!(a["cools_for"], json!(["gemini-pro"]), "{a}");
    assert_eq!(a["state"], "running", "{a}");
    // Flash, two at once: both slots serve it.
    let began = Instant::now();
    let mut who: Vec<String> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..2)
            .map(|i| s.spawn(move || ask(cr, "gemini-flash", &format!("flash {i}"))))
            .collect();
        hs.into_iter()
            .map(|h| {
                let r = h.join().unwrap();
                assert_eq!(r.status, 200, "{}", r.body);
                served_by(&r)
            })
            .collect()
    });
    who.sort();
    assert_eq!(who, vec!["a", "b"], "both slots serve flash");
    eprintln!(
        "MEASURED: two flash requests at once, one account out of pro quota: served by {who:?} in {:.2?}",
        began.elapsed()
    );
    let now: Vec<Option<i32>> = c.slots().iter().map(|s| s.pid).collect();
    assert_eq!(now, pids, "no slot emptied, no child restarted");
    let st = ctl(&dir, &["status"]).ok();
    assert!(
        st.stdout.contains("cooling for model gemini-pro: a"),
        "{}",
        st.stdout
    );
    assert!(
        !c.stderr().contains("every profile is cooling down"),
        "{}",
        c.stderr()
    );
}

#[test]
fn day_a_dead_browser_is_noticed_from_the_process_tree_and_its_child_replaced() {
    let dir = TestDir::new("day_dead_browser");
    let pids = dir.path.join("pids");
    std::fs::create_dir_all(&pids).unwrap();
    let pid_dir = pids.display().to_string();
    dir.write_profile(
        "a",
        &knobbed(json!({"browser": true, "pid_dir": pid_dir, "browser_dies_after_ms": 3000})),
    );
    dir.write_profile("b", &knobbed(json!({"browser": true, "pid_dir": pid_dir})));
    let c = Coordinator::start(&dir, Builder::new().pool_size(1));
    wait_ready_on(&c, "a", 10.0);
    let ready = Instant::now();
    // The launcher lives on and its /health says OK.
    wait_until("a's browser to die", secs(8.0), || {
        child_log(&dir, "a").contains("browser pid=")
            && child_log(&dir, "a").contains("killed (SIGKILL")
    });
    let died = Instant::now();
    // Within a few seconds, and with no request sent.
    wait_ready_on(&c, "b", 5.0);
    let replaced = died.elapsed();
    eprintln!(
        "MEASURED: a dead browser under a living launcher: its child replaced {replaced:.2?} after the death ({:.2?} after ready)",
        ready.elapsed()
    );
    let log = c.stderr();
    assert!(log.contains("ended while the launcher lives"), "{log}");
    assert!(
        !child_log(&dir, "a").contains("completion req_id="),
        "no request was sent to it"
    );
    let r = ask(&c, "gemini-test", "after");
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(r.body.contains("profile=b"), "{}", r.body);
}

/// A streamed Anthropic request is held like an OpenAI one: the account out
/// of quota gives an empty stream, which the client never sees; it gets
/// the other account's content as Anthropic events.
#[test]
fn day_a_streamed_quota_in_another_dialect_is_answered_by_another_account() {
    let dir = TestDir::new("day_streamed_quota_dialect");
    dir.write_profile("a-quota", &out_of_quota());
    dir.write_profile("b-good", &knobbed(json!({})));
    let c = Coordinator::start(&dir, Builder::new().pool_size(1).ready_timeout_s(10));
    wait_ready_on(&c, "a-quota", 10.0);
    let body = json!({"model": "gemini-test", "max_tokens": 50, "stream": true,
                      "messages": [{"role": "user", "content": "hello"}]});
    let r = post(
        c.ports.coordinator,
        "/v1/messages",
        &[("anthropic-version", "2023-06-01")],
        &body.to_string(),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let text: String = r
        .body
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .filter_map(|d| serde_json::from_str::<Value>(d).ok())
        .filter(|e| e["type"] == "content_block_delta")
        .filter_map(|e| e["delta"]["text"].as_str().map(str::to_string))
        .collect();
    assert!(text.starts_with("profile=b-good echo=hello"), "{}", r.body);
    assert!(r.body.contains("event: message_stop"), "{}", r.body);
    let log = c.stderr();
    assert!(
        log.contains("a stream with nothing in it, held back"),
        "{log}"
    );
}
