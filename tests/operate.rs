//! Operating a running fleet: the coordinator's own log as JSON lines for
//! log shippers.

use serde_json::{json, Value};

use crate::common::*;

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
    let started: Vec<&Value> = events
        .iter()
        .filter(|e| e["message"].as_str().unwrap().contains("started profile"))
        .collect();
    assert_eq!(started.len(), 2, "{log}");
    for e in started {
        assert!(e["slot"].is_u64() && e["pid"].is_u64(), "{e}");
        assert!(
            ["alice", "bob"].contains(&e["profile"].as_str().unwrap()),
            "{e}"
        );
    }
    assert!(!log.contains("sk-very-secret-key") && !log.contains("sk-wrong-guess"));
}
