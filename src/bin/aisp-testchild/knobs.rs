//! Behaviour knobs: how a test makes this child misbehave.
//!
//! Each knob comes from `TESTCHILD_<NAME>` in the environment (all children)
//! and is then overridden by the profile JSON's `"testchild": {..}` object
//! (one profile). Parsed once at start on the main thread; the result is
//! read-only afterwards. The environment is passed in as a lookup function so
//! tests never mutate the process environment.
//!
//! Every knob (name, type, default; `-` means unset):
//!
//! | knob | type | default | effect |
//! |---|---|---|---|
//! | `ready_after_ms` | u64 | 0 | `/health` 503 until this long after start |
//! | `never_ready` | bool | false | `/health` never 200 |
//! | `exit_after_ms` | u64 | - | exit `exit_code` this long after start (browser stopped first) |
//! | `exit_code` | i32 | 1 | code for `exit_after_ms` |
//! | `ignore_sigterm` | bool | false | the launcher ignores SIGTERM |
//! | `spawn_grandchild` | bool | false | SIGTERM-ignoring descendant in our group, `<profile>.grandchild.pid` |
//! | `pid_dir` | path | - | where pid files go (`<profile>.pid`, `.browser.pid`, `.helper.pid`, `.grandchild.pid`) |
//! | `completion_delay_ms` | u64 | 0 | how long serving a completion takes (after the head, when streaming) |
//! | `fail_status` | u16 | - | every completion answers this status at once |
//! | `reset` | bool | false | every completion's connection is cut without an answer |
//! | `stream_events` | u32 | 5 | content events per streamed answer (at least 1) |
//! | `stream_interval_ms` | u64 | 0 | pause between content events |
//! | `die_mid_stream` | bool | false | cut the stream after its first content event |
//! | `stall_mid_stream_ms` | u64 | - | pause this long after the first content event |
//! | `refuse_after_ms` | u64 | - | close the API listener this long after binding |
//! | `log_lines`, `log_line_bytes` | u64 | 0, 100 | log lines printed at start, and their size |
//! | `real_child` | bool | false | behave like the real child: defaults `browser` and `stream_helper` true, `bind_after_ms` 300, `refresh_every` 10 |
//! | `browser` | bool | false (real_child: true) | own-session browser on the camoufox port, `<profile>.browser.pid`; dead browser means completions 503 |
//! | `browser_ignore_sigterm` | bool | false | the browser ignores SIGTERM |
//! | `browser_fail_delay_ms` | u64 | 300 | how long a launcher whose browser failed lingers before exit 1 |
//! | `stream_helper` | bool | false (real_child: true) | SIGTERM-ignoring helper in our group on the stream port, `<profile>.helper.pid`; a SIGTERMed launcher waits for it |
//! | `bind_after_ms` | u64 | 0 (real_child: 300) | the API port refuses until this long after start |
//! | `models` | string | `gemini-test` | comma-separated model ids; any other `model` gets 500 |
//! | `exhaust_after` | u64 | - | after this many successful completions: streamed answers empty, others 502 |
//! | `exhaust_stream_delay_ms` | u64 | 0 | silence before an exhausted stream's empty events |
//! | `exhaust_retry_after_s` | u64 | 3600 | `Retry-After` of the exhausted 502 |
//! | `error_text` | string | - | completions answer 200 with content `[错误: <text>]` |
//! | `refresh_every` | u64 | - (real_child: 10) | rewrite the auth file every N successful completions and at SIGTERM exit; 0 never |
//! | `refresh_pause_ms` | u64 | 200 | pause between the two halves of that non-atomic write |

use serde_json::{Map, Value};
use std::fmt;
use std::path::PathBuf;

/// Every knob, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct Knobs {
    pub ready_after_ms: u64,
    pub never_ready: bool,
    pub exit_after_ms: Option<u64>,
    pub exit_code: i32,
    pub ignore_sigterm: bool,
    pub spawn_grandchild: bool,
    pub pid_dir: Option<PathBuf>,
    pub completion_delay_ms: u64,
    pub fail_status: Option<u16>,
    pub reset: bool,
    /// At least 1: a streamed answer always carries its content.
    pub stream_events: u32,
    pub stream_interval_ms: u64,
    pub die_mid_stream: bool,
    pub stall_mid_stream_ms: Option<u64>,
    /// After this long, stop accepting connections (the API port refuses)
    /// while the process lives on: a child that looks ready but is not.
    pub refuse_after_ms: Option<u64>,
    pub log_lines: u64,
    pub log_line_bytes: u64,
    /// One switch for "behave like the real child": the defaults of
    /// `browser`, `stream_helper`, `bind_after_ms` and `refresh_every`
    /// change (see `load`); knobs set explicitly still win.
    pub real_child: bool,
    /// Spawn a "browser" in its own session holding the camoufox port.
    pub browser: bool,
    /// The browser ignores SIGTERM (default: it exits on it, as Firefox).
    pub browser_ignore_sigterm: bool,
    /// How long the launcher lingers after its browser failed to start.
    pub browser_fail_delay_ms: u64,
    /// Spawn a SIGTERM-ignoring helper in our process group (the stream
    /// proxy); while it lives, a SIGTERM does not end the launcher.
    pub stream_helper: bool,
    /// Bind the API port only after this long (connection refused before).
    pub bind_after_ms: u64,
    /// Model ids of `/v1/models`; any other `model` gets a 500.
    pub models: Vec<String>,
    /// After this many successful completions the account is exhausted.
    pub exhaust_after: Option<u64>,
    pub exhaust_stream_delay_ms: u64,
    pub exhaust_retry_after_s: u64,
    /// Answer every completion with this text as an in-band error.
    pub error_text: Option<String>,
    /// Rewrite the auth file after every N successful completions and at a
    /// normal SIGTERM exit; `None` or 0 never.
    pub refresh_every: Option<u64>,
    pub refresh_pause_ms: u64,
}

/// The knob names, as written in the profile JSON (lowercase) and, upper-cased
/// behind `TESTCHILD_`, in the environment.
pub const NAMES: &[&str] = &[
    "ready_after_ms",
    "never_ready",
    "exit_after_ms",
    "exit_code",
    "ignore_sigterm",
    "spawn_grandchild",
    "pid_dir",
    "completion_delay_ms",
    "fail_status",
    "reset",
    "stream_events",
    "stream_interval_ms",
    "die_mid_stream",
    "stall_mid_stream_ms",
    "refuse_after_ms",
    "log_lines",
    "log_line_bytes",
    "real_child",
    "browser",
    "browser_ignore_sigterm",
    "browser_fail_delay_ms",
    "stream_helper",
    "bind_after_ms",
    "models",
    "exhaust_after",
    "exhaust_stream_delay_ms",
    "exhaust_retry_after_s",
    "error_text",
    "refresh_every",
    "refresh_pause_ms",
];

/// The model list when the `models` knob is unset.
pub const DEFAULT_MODEL: &str = "gemini-test";

#[derive(Debug, PartialEq)]
pub struct KnobError {
    name: String,
    origin: String,
    value: String,
    expected: &'static str,
}

impl fmt::Display for KnobError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "knob {} from {}: {} is not {}",
            self.name, self.origin, self.value, self.expected
        )
    }
}

impl std::error::Error for KnobError {}

/// A knob's value type: how it reads from an env string and from JSON.
trait KnobValue: Sized {
    const EXPECTED: &'static str;
    fn from_env(s: &str) -> Option<Self>;
    fn from_json(v: &Value) -> Option<Self>;
}

impl KnobValue for u64 {
    const EXPECTED: &'static str = "a non-negative integer";
    fn from_env(s: &str) -> Option<Self> {
        s.trim().parse().ok()
    }
    fn from_json(v: &Value) -> Option<Self> {
        v.as_u64()
    }
}

impl KnobValue for u32 {
    const EXPECTED: &'static str = "a non-negative 32-bit integer";
    fn from_env(s: &str) -> Option<Self> {
        s.trim().parse().ok()
    }
    fn from_json(v: &Value) -> Option<Self> {
        v.as_u64().and_then(|n| n.try_into().ok())
    }
}

impl KnobValue for u16 {
    const EXPECTED: &'static str = "an integer from 0 to 65535";
    fn from_env(s: &str) -> Option<Self> {
        s.trim().parse().ok()
    }
    fn from_json(v: &Value) -> Option<Self> {
        v.as_u64().and_then(|n| n.try_into().ok())
    }
}

impl KnobValue for i32 {
    const EXPECTED: &'static str = "a 32-bit integer";
    fn from_env(s: &str) -> Option<Self> {
        s.trim().parse().ok()
    }
    fn from_json(v: &Value) -> Option<Self> {
        v.as_i64().and_then(|n| n.try_into().ok())
    }
}

impl KnobValue for bool {
    const EXPECTED: &'static str = "a boolean (true/false/1/0 in env, true/false in JSON)";
    fn from_env(s: &str) -> Option<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "true" | "1" => Some(true),
            "false" | "0" => Some(false),
            _ => None,
        }
    }
    fn from_json(v: &Value) -> Option<Self> {
        v.as_bool()
    }
}

impl KnobValue for String {
    const EXPECTED: &'static str = "a string";
    fn from_env(s: &str) -> Option<Self> {
        Some(s.to_string())
    }
    fn from_json(v: &Value) -> Option<Self> {
        v.as_str().map(String::from)
    }
}

impl KnobValue for PathBuf {
    const EXPECTED: &'static str = "a path string";
    fn from_env(s: &str) -> Option<Self> {
        Some(PathBuf::from(s))
    }
    fn from_json(v: &Value) -> Option<Self> {
        v.as_str().filter(|s| !s.is_empty()).map(PathBuf::from)
    }
}

/// Where knob values come from: the environment lookup and the profile's
/// `testchild` object, if any.
struct Sources<'a, E> {
    env: E,
    profile: Option<&'a Map<String, Value>>,
}

impl<E: Fn(&str) -> Option<String>> Sources<'_, E> {
    /// The knob's value, profile first, then env; `None` when neither sets it.
    /// An empty env string and a JSON `null` count as unset.
    fn get<T: KnobValue>(&self, name: &str) -> Result<Option<T>, KnobError> {
        let bad = |origin: String, value: String| KnobError {
            name: name.to_string(),
            origin,
            value,
            expected: T::EXPECTED,
        };
        if let Some(v) = self.profile.and_then(|p| p.get(name)) {
            if !v.is_null() {
                return T::from_json(v)
                    .map(Some)
                    .ok_or_else(|| bad("profile".into(), v.to_string()));
            }
        }
        let var = format!("TESTCHILD_{}", name.to_ascii_uppercase());
        match (self.env)(&var) {
            Some(s) if !s.is_empty() => T::from_env(&s)
                .map(Some)
                .ok_or_else(|| bad(format!("env {var}"), format!("{s:?}"))),
            _ => Ok(None),
        }
    }
}

impl Knobs {
    /// Reads every knob. `profile` is the profile JSON's `testchild` object.
    /// Returns the knobs and one warning per unknown name in that object.
    pub fn load(
        env: impl Fn(&str) -> Option<String>,
        profile: Option<&Map<String, Value>>,
    ) -> Result<(Knobs, Vec<String>), KnobError> {
        let s = Sources { env, profile };
        let real_child: bool = s.get("real_child")?.unwrap_or(false);
        let models = match s.get::<String>("models")? {
            Some(list) => list
                .split(',')
                .map(str::trim)
                .filter(|m| !m.is_empty())
                .map(String::from)
                .collect(),
            None => vec![DEFAULT_MODEL.to_string()],
        };
        let knobs = Knobs {
            ready_after_ms: s.get("ready_after_ms")?.unwrap_or(0),
            never_ready: s.get("never_ready")?.unwrap_or(false),
            exit_after_ms: s.get("exit_after_ms")?,
            exit_code: s.get("exit_code")?.unwrap_or(1),
            ignore_sigterm: s.get("ignore_sigterm")?.unwrap_or(false),
            spawn_grandchild: s.get("spawn_grandchild")?.unwrap_or(false),
            pid_dir: s.get("pid_dir")?,
            completion_delay_ms: s.get("completion_delay_ms")?.unwrap_or(0),
            fail_status: s.get("fail_status")?,
            reset: s.get("reset")?.unwrap_or(false),
            stream_events: s.get::<u32>("stream_events")?.unwrap_or(5).max(1),
            stream_interval_ms: s.get("stream_interval_ms")?.unwrap_or(0),
            die_mid_stream: s.get("die_mid_stream")?.unwrap_or(false),
            stall_mid_stream_ms: s.get("stall_mid_stream_ms")?,
            refuse_after_ms: s.get("refuse_after_ms")?,
            log_lines: s.get("log_lines")?.unwrap_or(0),
            log_line_bytes: s.get("log_line_bytes")?.unwrap_or(100),
            real_child,
            browser: s.get("browser")?.unwrap_or(real_child),
            browser_ignore_sigterm: s.get("browser_ignore_sigterm")?.unwrap_or(false),
            browser_fail_delay_ms: s.get("browser_fail_delay_ms")?.unwrap_or(300),
            stream_helper: s.get("stream_helper")?.unwrap_or(real_child),
            bind_after_ms: s
                .get("bind_after_ms")?
                .unwrap_or(if real_child { 300 } else { 0 }),
            models,
            exhaust_after: s.get("exhaust_after")?,
            exhaust_stream_delay_ms: s.get("exhaust_stream_delay_ms")?.unwrap_or(0),
            exhaust_retry_after_s: s.get("exhaust_retry_after_s")?.unwrap_or(3600),
            error_text: s.get::<String>("error_text")?.filter(|t| !t.is_empty()),
            refresh_every: s
                .get("refresh_every")?
                .or(if real_child { Some(10) } else { None })
                .filter(|&n| n > 0),
            refresh_pause_ms: s.get("refresh_pause_ms")?.unwrap_or(200),
        };
        if let Some(code) = knobs.fail_status {
            if !(100..=999).contains(&code) {
                return Err(KnobError {
                    name: "fail_status".into(),
                    origin: "env or profile".into(),
                    value: code.to_string(),
                    expected: "an HTTP status from 100 to 999",
                });
            }
        }
        let warnings = profile
            .map(|p| {
                p.keys()
                    .filter(|k| !NAMES.contains(&k.as_str()))
                    .map(|k| format!("unknown testchild knob {k:?} in profile, ignored"))
                    .collect()
            })
            .unwrap_or_default();
        Ok((knobs, warnings))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::collections::HashMap;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let m: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| m.get(k).cloned()
    }

    #[test]
    fn defaults() {
        let (k, w) = Knobs::load(env(&[]), None).unwrap();
        assert!(w.is_empty());
        assert_eq!(k.ready_after_ms, 0);
        assert_eq!(k.exit_after_ms, None);
        assert_eq!(k.exit_code, 1);
        assert_eq!(k.stream_events, 5);
        assert_eq!(k.log_line_bytes, 100);
        assert_eq!(k.fail_status, None);
        assert!(!k.reset && !k.never_ready && !k.ignore_sigterm);
    }

    #[test]
    fn env_then_profile_override() {
        let profile = json!({"ready_after_ms": 7, "reset": false, "pid_dir": "/p"});
        let (k, _) = Knobs::load(
            env(&[
                ("TESTCHILD_READY_AFTER_MS", "300"),
                ("TESTCHILD_RESET", "1"),
                ("TESTCHILD_NEVER_READY", "TRUE"),
                ("TESTCHILD_EXIT_CODE", "-3"),
                ("TESTCHILD_FAIL_STATUS", "500"),
                ("TESTCHILD_STREAM_EVENTS", "0"),
                ("TESTCHILD_PID_DIR", "/e"),
            ]),
            profile.as_object(),
        )
        .unwrap();
        assert_eq!(k.ready_after_ms, 7);
        assert!(!k.reset);
        assert!(k.never_ready);
        assert_eq!(k.exit_code, -3);
        assert_eq!(k.fail_status, Some(500));
        assert_eq!(k.stream_events, 1, "0 events is raised to 1");
        assert_eq!(k.pid_dir, Some(PathBuf::from("/p")));
    }

    #[test]
    fn null_and_empty_mean_unset() {
        let profile = json!({"exit_after_ms": null});
        let (k, _) = Knobs::load(
            env(&[("TESTCHILD_EXIT_AFTER_MS", "50"), ("TESTCHILD_RESET", "")]),
            profile.as_object(),
        )
        .unwrap();
        assert_eq!(k.exit_after_ms, Some(50));
        assert!(!k.reset);
    }

    #[test]
    fn bad_values_are_errors() {
        let table: &[(&[(&str, &str)], serde_json::Value)] = &[
            (&[("TESTCHILD_RESET", "yes")], json!({})),
            (&[("TESTCHILD_READY_AFTER_MS", "-1")], json!({})),
            (&[("TESTCHILD_FAIL_STATUS", "70000")], json!({})),
            (&[("TESTCHILD_FAIL_STATUS", "42")], json!({})),
            (&[], json!({"reset": 1})),
            (&[], json!({"ready_after_ms": "5"})),
            (&[], json!({"stream_events": -1})),
        ];
        for (e, p) in table {
            assert!(
                Knobs::load(env(e), p.as_object()).is_err(),
                "{e:?} {p} should be rejected"
            );
        }
    }

    #[test]
    fn new_knob_defaults() {
        let (k, _) = Knobs::load(env(&[]), None).unwrap();
        assert!(!k.real_child && !k.browser && !k.stream_helper);
        assert!(!k.browser_ignore_sigterm);
        assert_eq!(k.browser_fail_delay_ms, 300);
        assert_eq!(k.bind_after_ms, 0);
        assert_eq!(k.models, vec!["gemini-test".to_string()]);
        assert_eq!(k.exhaust_after, None);
        assert_eq!(k.exhaust_stream_delay_ms, 0);
        assert_eq!(k.exhaust_retry_after_s, 3600);
        assert_eq!(k.error_text, None);
        assert_eq!(k.refresh_every, None);
        assert_eq!(k.refresh_pause_ms, 200);
    }

    #[test]
    fn real_child_turns_on_its_defaults_and_explicit_knobs_win() {
        let (k, _) = Knobs::load(env(&[("TESTCHILD_REAL_CHILD", "1")]), None).unwrap();
        assert!(k.real_child && k.browser && k.stream_helper);
        assert_eq!(k.bind_after_ms, 300);
        assert_eq!(k.refresh_every, Some(10));
        let profile = json!({"browser": false, "bind_after_ms": 5, "refresh_every": 0});
        let (k, _) = Knobs::load(
            env(&[
                ("TESTCHILD_REAL_CHILD", "true"),
                ("TESTCHILD_STREAM_HELPER", "0"),
            ]),
            profile.as_object(),
        )
        .unwrap();
        assert!(k.real_child && !k.browser && !k.stream_helper);
        assert_eq!(k.bind_after_ms, 5);
        assert_eq!(k.refresh_every, None, "0 turns refreshing off");
        let profile = json!({"real_child": true});
        let (k, w) = Knobs::load(env(&[]), profile.as_object()).unwrap();
        assert!(w.is_empty());
        assert!(k.browser && k.stream_helper);
    }

    #[test]
    fn string_knobs() {
        let profile = json!({"models": " a, b ,,c ", "error_text": "quota"});
        let (k, _) = Knobs::load(env(&[]), profile.as_object()).unwrap();
        assert_eq!(k.models, vec!["a", "b", "c"]);
        assert_eq!(k.error_text.as_deref(), Some("quota"));
        let (k, _) = Knobs::load(
            env(&[("TESTCHILD_MODELS", "x"), ("TESTCHILD_ERROR_TEXT", "boom")]),
            None,
        )
        .unwrap();
        assert_eq!(k.models, vec!["x"]);
        assert_eq!(k.error_text.as_deref(), Some("boom"));
        let profile = json!({"error_text": ""});
        let (k, _) = Knobs::load(env(&[]), profile.as_object()).unwrap();
        assert_eq!(k.error_text, None, "empty text is no error");
        assert!(Knobs::load(env(&[]), json!({"models": 3}).as_object()).is_err());
        assert!(Knobs::load(env(&[]), json!({"exhaust_after": -1}).as_object()).is_err());
    }

    #[test]
    fn every_name_is_known() {
        // Every listed knob can be set from a profile without a warning.
        let profile: Map<String, Value> =
            NAMES.iter().map(|n| (n.to_string(), Value::Null)).collect();
        let (_, w) = Knobs::load(env(&[]), Some(&profile)).unwrap();
        assert!(w.is_empty(), "{w:?}");
    }

    #[test]
    fn unknown_profile_knob_warns() {
        let profile = json!({"ready_after": 5});
        let (_, w) = Knobs::load(env(&[]), profile.as_object()).unwrap();
        assert_eq!(w.len(), 1);
    }
}
