//! The dialect edge, end to end: the official `anthropic` and `google-genai`
//! Python SDKs and the Claude Code CLI talk to the real coordinator, which
//! translates for real test children (tool calls on, via the `tool_call`
//! knob); raw HTTP checks what the SDKs hide: the Anthropic event order
//! with its `ping`, Gemini's JSON-array stream and `?key=`, each dialect's
//! error shape, failover before the first byte, and `/v1/queue` naming the
//! dialect of a running request. The real child's turn is in
//! `upstream_child`.

use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::common::*;
use crate::proxy::{get, knobs, post};

/// The .venv Python (or `AISP_PYTHON`) with the SDKs of
/// tests/python/requirements.txt.
pub(crate) fn python() -> PathBuf {
    if let Some(p) = std::env::var_os("AISP_PYTHON") {
        return p.into();
    }
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/python");
    assert!(
        venv.is_file(),
        "no Python with the anthropic and google-genai packages: run scripts/test.sh (it creates .venv) or set AISP_PYTHON"
    );
    venv
}

/// Run one of tests/python's client scripts; its one JSON line.
pub(crate) fn run_client(script: &str, args: &[String]) -> Value {
    let py = python();
    let script = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/python")
        .join(script);
    let out = Command::new(&py)
        .arg(&script)
        .args(args)
        .output()
        .expect("python runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{} {}\n{stdout}\n{}",
        py.display(),
        script.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(stdout.trim()).expect("one JSON line")
}

/// A dir with these profiles (their knobs) and the key `sdk-key`.
fn dir_with(name: &str, profiles: &[(&str, Value)]) -> TestDir {
    let dir = TestDir::new(name);
    for (p, k) in profiles {
        dir.write_profile(p, &knobs(k.clone()));
    }
    dir.write_key("sdk-key\n");
    dir
}

/// Its coordinator, every child ready.
fn start(dir: &TestDir, slots: u16) -> Coordinator<'_> {
    let c = Coordinator::start(dir, Builder::new().pool_size(slots));
    c.wait_all_ready(secs(10.0));
    c
}

#[test]
fn official_anthropic_sdk_works() {
    let dir = dir_with(
        "dialect_anthropic_sdk",
        &[("a", json!({"stream_events": 4, "tool_call": true}))],
    );
    let c = start(&dir, 1);
    let port = c.ports.coordinator;
    let v = run_client(
        "anthropic_client.py",
        &[
            format!("http://127.0.0.1:{port}"),
            "sdk-key".into(),
            "gemini-test".into(),
        ],
    );
    assert_eq!(v["plain"], "profile=a echo=plain", "{v}");
    assert_eq!(v["plain_stop_reason"], "end_turn", "{v}");
    assert_eq!(v["plain_usage"], json!([1, 1]), "{v}");
    assert_eq!(v["streamed"], "profile=a echo=streamed", "{v}");
    assert_eq!(v["streamed_final"], "profile=a echo=streamed", "{v}");
    assert_eq!(v["stream_stop_reason"], "end_turn", "{v}");
    for e in [
        "message_start",
        "content_block_start",
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
    ] {
        assert!(v["stream_events"].to_string().contains(e), "{e}: {v}");
    }
    assert_eq!(v["tool_stop_reason"], "tool_use", "{v}");
    let call = json!({"name": "get_weather", "input": {"location": "test"}});
    assert_eq!(v["tool_call"], call, "{v}");
    assert_eq!(v["streamed_tool_call"], call, "{v}");
    assert_eq!(v["tool_answer"], "profile=a echo=sunny, 21 C", "{v}");
    assert!(v["count_tokens"].as_u64().unwrap() > 10, "{v}");
    assert_eq!(v["models"], json!(["gemini-test"]), "{v}");
    assert_eq!(v["unknown_block"][0], 400, "{v}");
    assert_eq!(v["unknown_block"][1], "invalid_request_error", "{v}");
    let why = v["unknown_block"][2].as_str().unwrap();
    assert!(why.contains("messages[0].content[0].type"), "{v}");
    assert_eq!(v["wrong_key"], json!([401, "authentication_error"]), "{v}");
    eprintln!("anthropic SDK {} OK", v["sdk_version"]);
}

#[test]
fn official_genai_sdk_works() {
    let dir = dir_with(
        "dialect_genai_sdk",
        &[("a", json!({"stream_events": 4, "tool_call": true}))],
    );
    let c = start(&dir, 1);
    let port = c.ports.coordinator;
    let v = run_client(
        "genai_client.py",
        &[
            format!("http://127.0.0.1:{port}"),
            "sdk-key".into(),
            "gemini-test".into(),
        ],
    );
    assert_eq!(v["plain"], "profile=a echo=plain", "{v}");
    assert_eq!(v["plain_finish"], "STOP", "{v}");
    assert_eq!(v["plain_usage"], json!([1, 1]), "{v}");
    assert_eq!(v["streamed"], "profile=a echo=streamed", "{v}");
    assert!(v["stream_chunks"].as_u64().unwrap() >= 4, "{v}");
    let call = json!({"name": "get_weather", "args": {"location": "test"}});
    assert_eq!(v["function_call"], call, "{v}");
    assert_eq!(v["streamed_function_calls"], json!([call]), "{v}");
    assert_eq!(
        v["function_answer"], "profile=a echo={\"result\":\"sunny, 21 C\"}",
        "{v}"
    );
    assert!(v["count_tokens"].as_u64().unwrap() >= 3, "{v}");
    assert_eq!(v["models"], json!(["models/gemini-test"]), "{v}");
    assert_eq!(v["wrong_key"], json!([401, "UNAUTHENTICATED"]), "{v}");
    eprintln!("google-genai SDK {} OK", v["sdk_version"]);
}

/// The (event, data) pairs of an Anthropic event stream.
fn anthropic_events(body: &str) -> Vec<(String, Value)> {
    body.split("\n\n")
        .filter(|e| !e.trim().is_empty())
        .map(|e| {
            let (name, data) = e.split_once('\n').expect("event and data lines");
            let data = data.strip_prefix("data: ").expect("a data line");
            (
                name.strip_prefix("event: ")
                    .expect("an event line")
                    .to_string(),
                serde_json::from_str(data).expect("JSON data"),
            )
        })
        .collect()
}

#[test]
fn raw_streams_keys_and_error_shapes() {
    let dir = dir_with("dialect_raw", &[("a", json!({"stream_events": 3}))]);
    let c = start(&dir, 1);
    let port = c.ports.coordinator;
    let key = [
        ("x-api-key", "sdk-key"),
        ("anthropic-version", "2023-06-01"),
    ];
    let body = json!({"model": "gemini-test", "max_tokens": 50, "stream": true,
                      "messages": [{"role": "user", "content": "hi"}]});
    let r = post(port, "/v1/messages", &key, &body.to_string());
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(r
        .header("content-type")
        .unwrap()
        .starts_with("text/event-stream"));
    let names: Vec<String> = anthropic_events(&r.body)
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    let mut want = vec!["message_start", "ping", "content_block_start"];
    want.extend(["content_block_delta"; 3]);
    want.extend(["content_block_stop", "message_delta", "message_stop"]);
    assert_eq!(names, want, "{}", r.body);

    // Gemini: the JSON-array stream, the key in the query.
    let g = json!({"contents": [{"role": "user", "parts": [{"text": "hi"}]}]});
    let path = "/v1beta/models/gemini-test:streamGenerateContent?key=sdk-key";
    let r = post(port, path, &[], &g.to_string());
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(r
        .header("content-type")
        .unwrap()
        .starts_with("application/json"));
    let arr = r.json();
    let text: String = arr
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| {
            e.pointer("/candidates/0/content/parts/0/text")
                .and_then(Value::as_str)
        })
        .collect();
    assert_eq!(text, "profile=a echo=hi");
    let last = arr.as_array().unwrap().last().unwrap();
    assert_eq!(last["candidates"][0]["finishReason"], "STOP", "{last}");
    assert_eq!(last["usageMetadata"]["totalTokenCount"], 2, "{last}");

    // Each dialect's error shape: a wrong key, an untranslatable part.
    let path = "/v1beta/models/gemini-test:generateContent?key=wrong";
    let r = post(port, path, &[], &g.to_string());
    assert_eq!(r.status, 401);
    assert_eq!(r.json()["error"]["status"], "UNAUTHENTICATED", "{}", r.body);
    let bad = json!({"contents": [{"parts": [{"fileData": {"fileUri": "gs://b/f"}}]}]});
    let path = "/v1beta/models/gemini-test:generateContent";
    let r = post(
        port,
        path,
        &[("x-goog-api-key", "sdk-key")],
        &bad.to_string(),
    );
    assert_eq!(r.status, 400);
    let e = r.json();
    assert_eq!(e["error"]["status"], "INVALID_ARGUMENT", "{e}");
    assert!(
        e["error"]["message"]
            .as_str()
            .unwrap()
            .contains("contents[0].parts[0]"),
        "{e}"
    );
    let r = post(
        port,
        "/v1/messages",
        &[("x-api-key", "wrong")],
        &body.to_string(),
    );
    assert_eq!(r.status, 401);
    assert_eq!(r.json()["type"], "error", "{}", r.body);
    // A model the children do not serve: the child's 500, in Anthropic's shape.
    let unknown = json!({"model": "claude-nope", "max_tokens": 5,
                         "messages": [{"role": "user", "content": "hi"}]});
    let r = post(port, "/v1/messages", &key, &unknown.to_string());
    assert!(r.status >= 500, "{}", r.body);
    assert_eq!(r.json()["error"]["type"], "api_error", "{}", r.body);

    // Model lists: Anthropic's with its version header, Gemini's.
    let r = get(port, "/v1/models", &key);
    assert_eq!(r.json()["data"][0]["type"], "model", "{}", r.body);
    let r = get(port, "/v1/models", &[]);
    assert_eq!(r.json()["object"], "list", "{}", r.body);
    let r = get(port, "/v1beta/models/gemini-test", &[]);
    assert_eq!(r.json()["name"], "models/gemini-test", "{}", r.body);
    let r = get(port, "/v1beta/models/nope", &[]);
    assert_eq!(r.status, 404, "{}", r.body);
    // A key sent in the URL is never logged.
    let log = c.stderr();
    assert!(!log.contains("sdk-key"), "{log}");
}

#[test]
fn failover_queue_and_usage_apply_to_dialects() {
    // Slot 0's child cuts every completion: each dialect fails over to b.
    let dir = dir_with(
        "dialect_behind_the_edge",
        &[
            ("a", json!({"reset": true})),
            ("b", json!({"completion_delay_ms": 1500})),
        ],
    );
    let c = start(&dir, 2);
    let port = c.ports.coordinator;
    let key = [("x-api-key", "sdk-key")];
    let body = json!({"model": "gemini-test", "max_tokens": 50,
                      "messages": [{"role": "user", "content": "hi"}]});
    let port2 = port;
    let slow = std::thread::spawn(move || {
        let g = json!({"contents": [{"parts": [{"text": "slow"}]}]});
        post(
            port2,
            "/v1beta/models/gemini-test:generateContent",
            &[("x-goog-api-key", "sdk-key")],
            &g.to_string(),
        )
    });
    // While it runs, the queue names its dialect.
    let mut seen = Value::Null;
    wait_until("/v1/queue to list the gemini request", secs(5.0), || {
        let r = get(port, "/v1/queue", &[("Authorization", "Bearer sdk-key")]);
        seen = r.json()["requests"].clone();
        seen.as_array()
            .is_some_and(|l| l.iter().any(|x| x["dialect"] == "gemini"))
    });
    let r = slow.join().unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        r.json()["candidates"][0]["content"]["parts"][0]["text"],
        "profile=b echo=slow"
    );
    for _ in 0..2 {
        let r = post(port, "/v1/messages", &key, &body.to_string());
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(r.json()["content"][0]["text"], "profile=b echo=hi");
    }
    // The usage book counts them like chat completions, with their tokens
    // (slot 0's cut attempts count as its failures).
    let mut row = Value::Null;
    wait_until(
        "the usage book to count three answers of b",
        secs(5.0),
        || {
            let u = ctl(&dir, &["--json", "usage"]).ok().json();
            row = u["profiles"]
                .as_array()
                .and_then(|p| p.iter().find(|p| p["profile"] == "b"))
                .map(|p| p["models"][0].clone())
                .unwrap_or_default();
            row["total"]["answers"] == 3
        },
    );
    assert_eq!(row["model"], "gemini-test", "{row}");
    assert_eq!(row["total"]["total_tokens"], 6, "{row}");
}

#[test]
fn claude_code_cli_answers_one_prompt() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let claude = root.join(".npm-tools/node_modules/.bin/claude");
    assert!(
        claude.exists(),
        "no Claude Code CLI at {}: run scripts/test.sh (it installs @anthropic-ai/claude-code there)",
        claude.display()
    );
    let dir = dir_with("dialect_claude_code", &[("a", json!({"stream_events": 3}))]);
    let c = start(&dir, 1);
    let port = c.ports.coordinator;
    let home = std::env::temp_dir().join(format!("aisp-claude-home-{}", std::process::id()));
    std::fs::create_dir_all(&home).unwrap();
    let version = Command::new(&claude)
        .arg("--version")
        .env("HOME", &home)
        .output()
        .expect("claude runs");
    let out = Command::new(&claude)
        .args(["-p", "Say hello", "--model", "gemini-test"])
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", &home)
        .env("ANTHROPIC_BASE_URL", format!("http://127.0.0.1:{port}"))
        .env("ANTHROPIC_API_KEY", "sdk-key")
        .env("ANTHROPIC_SMALL_FAST_MODEL", "gemini-test")
        .env("ANTHROPIC_DEFAULT_HAIKU_MODEL", "gemini-test")
        .env("CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC", "1")
        .env("DISABLE_TELEMETRY", "1")
        .env("DISABLE_ERROR_REPORTING", "1")
        .env("DISABLE_AUTOUPDATER", "1")
        .env("DISABLE_BUG_COMMAND", "1")
        .env("CLAUDE_CODE_SKIP_CHROME_INSTALL", "1")
        .current_dir(&home)
        .output()
        .expect("claude runs");
    let _ = std::fs::remove_dir_all(&home);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("profile=a echo="),
        "claude -p: {}\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!(
        "Claude Code {} OK: {}",
        String::from_utf8_lossy(&version.stdout).trim(),
        stdout.trim()
    );
}
