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
//! | `pid_dir` | path | - | where pid files go (`<profile>.pid`, `.browser.pid`, `.helper.pid`, `.driver.pid`, `.grandchild.pid`) |
//! | `completion_delay_ms` | u64 | 0 | how long serving a completion takes (after the head, when streaming; a streamed quota's empty chunk comes after it too) |
//! | `fail_status` | u16 | - | every completion answers this status at once |
//! | `reset` | bool | false | every completion's connection is cut without an answer |
//! | `stream_events` | u32 | 5 | content events per streamed answer (at least 1) |
//! | `stream_interval_ms` | u64 | 0 | pause between content events |
//! | `die_mid_stream` | bool | false | cut the stream after its first content event |
//! | `stall_mid_stream_ms` | u64 | - | pause this long after the first content event |
//! | `refuse_after_ms` | u64 | - | close the API listener this long after binding |
//! | `log_lines`, `log_line_bytes` | u64 | 0, 100 | log lines printed at start, and their size |
//! | `real_child` | bool | false | behave like the real child: defaults `browser`, `stream_helper`, `driver` and (without `fork`) `save_on_term` true, `bind_after_ms` 300, `refresh_every` 10 (unset with `fork`), `abandoned_stall_ms` 150000; its saved state carries cookie `FAKE_REFRESHED` |
//! | `browser` | bool | false (real_child: true) | own-session browser on the camoufox port, `<profile>.browser.pid`; dead browser means completions 503 |
//! | `browser_ignore_sigterm` | bool | false | the browser ignores SIGTERM |
//! | `browser_fail_delay_ms` | u64 | 300 | how long a launcher whose browser failed lingers before exit 1 |
//! | `browser_dies_after_ms` | u64 | - | the browser is SIGKILLed this long after start (as the OOM killer would); the launcher lives on, `/health` stays OK, completions 503 |
//! | `abandoned_stall_ms` | u64 | - (real_child: 150000) | a client leaving a turn being served leaves the page generating until that turn's end; a completion served meanwhile stops it instead of sending its prompt, stalls this long (the child's own timeout) and answers 504 |
//! | `stream_helper` | bool | false (real_child: true) | SIGTERM-ignoring helper in our group on the stream port, `<profile>.helper.pid`; a SIGTERMed launcher waits for it (with `save_on_term`: SIGKILLs it after `helper_kill_after_ms`) |
//! | `bind_after_ms` | u64 | 0 (real_child: 300) | the API port refuses until this long after start |
//! | `models` | string | `gemini-test` | comma-separated model ids; any other `model` gets 500 |
//! | `exhaust_after` | u64 | - | after this many successful completions: streamed answers empty, others 502 |
//! | `exhaust_stream_delay_ms` | u64 | 0 | silence before an exhausted stream's empty events |
//! | `exhaust_retry_after_s` | u64 | 3600 | `Retry-After` of the exhausted 502 |
//! | `error_text` | string | - | completions answer 200 with content `[错误: <text>]` |
//! | `refresh_every` | u64 | - (real_child: 10) | rewrite the auth file every N successful completions and at SIGTERM exit; 0 never |
//! | `refresh_pause_ms` | u64 | 200 | pause between the two halves of that non-atomic write |
//! | `fork` | bool | false | behave like the older fork: expired login hangs, quota and `FAKE_ERROR500` become its internal timeout, SIGTERM saves nothing and never exits, `refresh_every` default unset |
//! | `login_expired` | bool | false (cookie `FAKE_EXPIRED` and not `fork`: true) | never bind; after `login_fail_after_ms` log the current child's two expired-login lines, exit 0 0.5 s later |
//! | `login_expired_fork` | bool | false (cookie `FAKE_EXPIRED` and `fork`: true) | never bind; after `login_fail_after_ms` log the fork's lines and `Application startup failed`, stop the browser, hang for good (SIGTERM too) |
//! | `login_fail_after_ms` | u64 | 1500 | when an expired login is found, from start |
//! | `quota_log` | bool | false (cookie `FAKE_QUOTA`: true) | every completion hits the current child's quota handling (see `completion.rs`); prompt text `FAKE_QUOTA` does it per request |
//! | `quota_models` | string | - (cookie `FAKE_QUOTA_MODEL=<part>` adds `<part>`) | comma-separated parts: quota only for a `model` containing one |
//! | `quota_type` | string | `QUOTA_EXCEEDED` | the `Type:` of the quota log line (`RATE_LIMIT`: the error text of every quota line says `429 Too Many Requests`, as the real child's then does) |
//! | `quota_requeue_ms` | u64 | 1000 | a non-streamed quota request's re-queue round |
//! | `quota_deadline_ms` | u64 | 420000 | its own 504, from arrival |
//! | `error_text_mark` | string | `[错误` | `error_text`'s form: the default gives `[错误: <text>]`, any other mark `<mark> AI Studio error: 500 <text>]` (`[Error:` as the current child) |
//! | `tool_call` | bool | false | a completion offering `tools` is answered with a call of one (see `tools.rs`); a tool's result with text |
//! | `empty_output` | bool | false | streamed: the no-output placeholder; non-streamed: 502 `Aux stream completed but no content provided` |
//! | `fork_internal_timeout` | bool | false | every completion gets the fork's internal timeout (502, or a `reasoning_content` stream) |
//! | `internal_timeout_ms` | u64 | 2000 | how long that timeout takes |
//! | `driver` | bool | false (real_child: true) | a "Playwright driver" in our group (dies on SIGTERM, ends when the launcher does), `<profile>.driver.pid`; the SIGTERM save fails when it is dead |
//! | `save_on_term` | bool | false (real_child without fork: true) | SIGTERM as the current child: save (if `refresh_every`), SIGKILL the helper after `helper_kill_after_ms`, stop driver and browser, exit 0 |
//! | `helper_kill_after_ms` | u64 | 3000 | how long that SIGTERM waits for the helper before SIGKILL |
//!
//! Cookies in the profile JSON (the real child's fake-Google markers) set
//! knob defaults too, after env and profile knobs: see [`Knobs::apply_cookies`].

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
    /// SIGKILL the browser this long after start.
    pub browser_dies_after_ms: Option<u64>,
    /// A page left generating by a client that left stalls the next turn
    /// this long (see `page`).
    pub abandoned_stall_ms: Option<u64>,
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
    /// The older fork's flavour (see the table).
    pub fork: bool,
    /// Expired login, current child: log two lines, exit 0, never bind.
    pub login_expired: bool,
    /// Expired login, the fork: log, stop the browser, hang, never bind.
    pub login_expired_fork: bool,
    pub login_fail_after_ms: u64,
    /// Every completion is out of quota.
    pub quota_log: bool,
    /// Completions whose model contains one of these are out of quota.
    pub quota_models: Vec<String>,
    pub quota_type: String,
    pub quota_requeue_ms: u64,
    pub quota_deadline_ms: u64,
    pub error_text_mark: String,
    pub empty_output: bool,
    pub tool_call: bool,
    pub fork_internal_timeout: bool,
    pub internal_timeout_ms: u64,
    /// Spawn the "Playwright driver" the SIGTERM save needs.
    pub driver: bool,
    /// SIGTERM as the current real child (save, stop the tree, exit 0)
    /// instead of waiting for the helper.
    pub save_on_term: bool,
    pub helper_kill_after_ms: u64,
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
    "browser_dies_after_ms",
    "abandoned_stall_ms",
    "stream_helper",
    "bind_after_ms",
    "models",
    "exhaust_after",
    "exhaust_stream_delay_ms",
    "exhaust_retry_after_s",
    "error_text",
    "refresh_every",
    "refresh_pause_ms",
    "fork",
    "login_expired",
    "login_expired_fork",
    "login_fail_after_ms",
    "quota_log",
    "quota_models",
    "quota_type",
    "quota_requeue_ms",
    "quota_deadline_ms",
    "error_text_mark",
    "empty_output",
    "tool_call",
    "fork_internal_timeout",
    "internal_timeout_ms",
    "driver",
    "save_on_term",
    "helper_kill_after_ms",
];

/// The default of `error_text_mark`: the older `[错误: <text>]` form.
pub const LEGACY_ERROR_MARK: &str = "[错误";

/// `abandoned_stall_ms` of `real_child`: the real child's own timeout is
/// 150-300 s.
pub const REAL_CHILD_STALL_MS: u64 = 150_000;

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
        let fork: bool = s.get("fork")?.unwrap_or(false);
        let models = match s.get::<String>("models")? {
            Some(list) => split_list(&list),
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
            browser_dies_after_ms: s.get("browser_dies_after_ms")?,
            abandoned_stall_ms: s
                .get("abandoned_stall_ms")?
                .or(real_child.then_some(REAL_CHILD_STALL_MS)),
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
                .or(if real_child && !fork { Some(10) } else { None })
                .filter(|&n| n > 0),
            refresh_pause_ms: s.get("refresh_pause_ms")?.unwrap_or(200),
            fork,
            login_expired: s.get("login_expired")?.unwrap_or(false),
            login_expired_fork: s.get("login_expired_fork")?.unwrap_or(false),
            login_fail_after_ms: s.get("login_fail_after_ms")?.unwrap_or(1500),
            quota_log: s.get("quota_log")?.unwrap_or(false),
            quota_models: s
                .get::<String>("quota_models")?
                .map(|l| split_list(&l))
                .unwrap_or_default(),
            quota_type: s
                .get::<String>("quota_type")?
                .filter(|t| !t.is_empty())
                .unwrap_or_else(|| "QUOTA_EXCEEDED".into()),
            quota_requeue_ms: s.get("quota_requeue_ms")?.unwrap_or(1000),
            quota_deadline_ms: s.get("quota_deadline_ms")?.unwrap_or(420_000),
            error_text_mark: s
                .get::<String>("error_text_mark")?
                .filter(|t| !t.is_empty())
                .unwrap_or_else(|| LEGACY_ERROR_MARK.into()),
            empty_output: s.get("empty_output")?.unwrap_or(false),
            tool_call: s.get("tool_call")?.unwrap_or(false),
            fork_internal_timeout: s.get("fork_internal_timeout")?.unwrap_or(false),
            internal_timeout_ms: s.get("internal_timeout_ms")?.unwrap_or(2000),
            driver: s.get("driver")?.unwrap_or(real_child),
            save_on_term: s.get("save_on_term")?.unwrap_or(real_child && !fork),
            helper_kill_after_ms: s.get("helper_kill_after_ms")?.unwrap_or(3000),
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

    /// Applies the real child's fake-Google cookie markers found in the
    /// profile JSON's `cookies`: `FAKE_EXPIRED` (an expired login, in the
    /// flavour `fork` picks), `FAKE_QUOTA` (quota for every model) and
    /// `FAKE_QUOTA_MODEL=<part>` (quota for models containing `<part>`).
    /// Cookies only switch things on; knobs cannot switch a cookie off.
    pub fn apply_cookies(&mut self, profile: &Value) {
        let cookies = profile
            .get("cookies")
            .and_then(Value::as_array)
            .map(Vec::as_slice)
            .unwrap_or_default();
        for c in cookies {
            let name = c.get("name").and_then(Value::as_str).unwrap_or("");
            match name {
                "FAKE_EXPIRED" if self.fork => self.login_expired_fork = true,
                "FAKE_EXPIRED" => self.login_expired = true,
                "FAKE_QUOTA" => self.quota_log = true,
                "FAKE_QUOTA_MODEL" => {
                    let part = c.get("value").and_then(Value::as_str).unwrap_or("");
                    if !part.is_empty() && !self.quota_models.iter().any(|p| p == part) {
                        self.quota_models.push(part.to_string());
                    }
                }
                _ => {}
            }
        }
    }

    /// Whether a completion for `model` with this prompt text is out of
    /// quota: `quota_log`, a `quota_models` part in the model, or
    /// `FAKE_QUOTA` in the prompt.
    pub fn quota_for(&self, model: &str, prompt: &str) -> bool {
        self.quota_log
            || self.quota_models.iter().any(|p| model.contains(p.as_str()))
            || prompt.contains("FAKE_QUOTA")
    }
}

/// A comma-separated list, trimmed, empty items dropped.
fn split_list(list: &str) -> Vec<String> {
    list.split(',')
        .map(str::trim)
        .filter(|m| !m.is_empty())
        .map(String::from)
        .collect()
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
        assert_eq!(k.abandoned_stall_ms, Some(REAL_CHILD_STALL_MS));
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
    fn awkward_knob_defaults_and_overrides() {
        let (k, _) = Knobs::load(env(&[]), None).unwrap();
        assert!(!k.fork && !k.login_expired && !k.login_expired_fork);
        assert_eq!(k.login_fail_after_ms, 1500);
        assert!(!k.quota_log && k.quota_models.is_empty());
        assert_eq!(k.quota_type, "QUOTA_EXCEEDED");
        assert_eq!((k.quota_requeue_ms, k.quota_deadline_ms), (1000, 420_000));
        assert_eq!(k.error_text_mark, "[错误");
        assert!(!k.empty_output && !k.fork_internal_timeout);
        assert_eq!(k.internal_timeout_ms, 2000);
        assert!(!k.driver && !k.save_on_term);
        assert_eq!(k.helper_kill_after_ms, 3000);

        let (k, _) = Knobs::load(env(&[("TESTCHILD_REAL_CHILD", "1")]), None).unwrap();
        assert!(k.driver && k.save_on_term && !k.fork);
        let (k, _) = Knobs::load(
            env(&[("TESTCHILD_REAL_CHILD", "1"), ("TESTCHILD_FORK", "1")]),
            None,
        )
        .unwrap();
        assert!(k.driver && !k.save_on_term && k.fork);
        assert_eq!(k.refresh_every, None, "the fork has no cookie code");

        let profile = json!({"quota_models": "pro, flash", "quota_type": "RATE_LIMIT",
                             "error_text_mark": "[Error:", "save_on_term": false,
                             "driver": true, "internal_timeout_ms": 5});
        let (k, w) = Knobs::load(
            env(&[
                ("TESTCHILD_QUOTA_LOG", "true"),
                ("TESTCHILD_SAVE_ON_TERM", "1"),
            ]),
            profile.as_object(),
        )
        .unwrap();
        assert!(w.is_empty());
        assert!(k.quota_log && k.driver && !k.save_on_term);
        assert_eq!(k.quota_models, vec!["pro", "flash"]);
        assert_eq!(k.quota_type, "RATE_LIMIT");
        assert_eq!(k.error_text_mark, "[Error:");
        assert_eq!(k.internal_timeout_ms, 5);
        assert!(Knobs::load(env(&[("TESTCHILD_FORK", "maybe")]), None).is_err());
    }

    #[test]
    fn cookie_markers() {
        let (mut k, _) = Knobs::load(env(&[]), None).unwrap();
        let profile = json!({"cookies": [
            {"name": "SID", "value": "x"},
            {"name": "FAKE_EXPIRED", "value": "1"},
            {"name": "FAKE_QUOTA_MODEL", "value": "pro"},
        ]});
        k.apply_cookies(&profile);
        assert!(k.login_expired && !k.login_expired_fork);
        assert!(!k.quota_log);
        assert_eq!(k.quota_models, vec!["pro"]);
        assert!(k.quota_for("gemini-2.5-pro", "hi"));
        assert!(!k.quota_for("gemini-flash", "hi"));
        assert!(k.quota_for("gemini-flash", "say FAKE_QUOTA now"));

        let (mut k, _) = Knobs::load(env(&[("TESTCHILD_FORK", "1")]), None).unwrap();
        k.apply_cookies(&json!({"cookies": [{"name": "FAKE_EXPIRED", "value": ""},
                                            {"name": "FAKE_QUOTA", "value": ""}]}));
        assert!(!k.login_expired && k.login_expired_fork);
        assert!(k.quota_log && k.quota_for("anything", ""));

        let (mut k, _) = Knobs::load(env(&[]), None).unwrap();
        let before = k.clone();
        k.apply_cookies(&json!({"cookies": 3}));
        k.apply_cookies(&json!({}));
        assert_eq!(k, before, "no or malformed cookies change nothing");
        assert!(!k.quota_for("gemini-test", "hello"));
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
