//! Auth write-back: the child rewrites its `--active-auth-json` file with a
//! "refreshed" cookie, as newer real children do to keep their login alive.
//!
//! Knob `refresh_every` (N): after every N successful completions, and at a
//! normal SIGTERM exit. The write is deliberately the real child's plain
//! truncate-and-write, not atomic: the first half of the new text, a pause
//! of `refresh_pause_ms`, then the rest, so a reader can catch a half-written
//! file. The new text is the profile JSON read at start with cookie
//! `aisp_refresh` set to `<profile>-<counter>-<unix ms>`; every other field
//! (the `testchild` knobs too) is kept.
//!
//! With `real_child` the state read at start also gets cookie
//! `FAKE_REFRESHED=<unix s>` (what the real child's page load sets), so any
//! write differs from the hydrated file. [`Refresher::save_at_shutdown`] is
//! the SIGTERM save with the real child's log line.
//!
//! One [`Refresher`] per process, shared by completion threads and the
//! SIGTERM thread; its mutex serialises writes (held for the whole write).

use crate::log_line;
use serde_json::{json, Value};
use std::fs::OpenOptions;
use std::io::Write;
use std::path::PathBuf;
use std::sync::Mutex;
use std::thread;
use std::time::Duration;

/// The cookie the test child refreshes.
pub const COOKIE: &str = "aisp_refresh";
/// The cookie a real child's AI Studio page load sets.
pub const PAGE_LOAD_COOKIE: &str = "FAKE_REFRESHED";

pub struct Refresher {
    path: PathBuf,
    profile: String,
    pause: Duration,
    /// The profile JSON as read at start, and the number of refreshes done.
    state: Mutex<(Value, u64)>,
    /// The value of cookie `aisp_refresh` in the file at start, if any.
    pub started_with: Option<String>,
}

/// The value of cookie `name` in a Playwright storage-state JSON.
pub fn cookie_value(profile: &Value, name: &str) -> Option<String> {
    profile
        .get("cookies")?
        .as_array()?
        .iter()
        .find(|c| c.get("name").and_then(Value::as_str) == Some(name))?
        .get("value")?
        .as_str()
        .map(String::from)
}

/// `profile` with cookie `aisp_refresh` set to `value` (added if missing; a
/// missing or malformed `cookies` becomes an array).
pub fn with_cookie(profile: &Value, value: &str) -> Value {
    with_named_cookie(profile, COOKIE, value)
}

/// `profile` with cookie `name` set to `value`, as [`with_cookie`].
pub fn with_named_cookie(profile: &Value, name: &str, value: &str) -> Value {
    let mut out = match profile {
        Value::Object(_) => profile.clone(),
        _ => json!({}),
    };
    let cookie = json!({
        "name": name, "value": value, "domain": ".google.com", "path": "/",
        "expires": -1, "httpOnly": true, "secure": true, "sameSite": "Lax",
    });
    if let Some(obj) = out.as_object_mut() {
        let cookies = obj.entry("cookies").or_insert_with(|| json!([]));
        if !cookies.is_array() {
            *cookies = json!([]);
        }
        if let Some(list) = cookies.as_array_mut() {
            match list
                .iter_mut()
                .find(|c| c.get("name").and_then(Value::as_str) == Some(name))
            {
                Some(c) => *c = cookie,
                None => list.push(cookie),
            }
        }
    }
    out
}

impl Refresher {
    pub fn new(path: PathBuf, profile: &str, original: Value, pause: Duration) -> Refresher {
        Refresher {
            started_with: cookie_value(&original, COOKIE),
            path,
            profile: profile.to_string(),
            pause,
            state: Mutex::new((original, 0)),
        }
    }

    /// Refreshes done so far.
    pub fn count(&self) -> u64 {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).1
    }

    /// Rewrites the file once (truncate, first half, pause, rest) and logs
    /// it. `why` goes into the log line. Errors are logged, never fatal.
    /// True when the file was written.
    pub fn refresh(&self, why: &str) -> bool {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let counter = state.1 + 1;
        let value = format!("{}-{counter}-{}", self.profile, crate::unix_ms());
        let text = serde_json::to_string_pretty(&with_cookie(&state.0, &value))
            .unwrap_or_else(|_| "{}".into());
        let bytes = text.as_bytes();
        let half = bytes.len() / 2;
        let result = OpenOptions::new()
            .write(true)
            .truncate(true)
            .create(true)
            .open(&self.path)
            .and_then(|mut f| {
                f.write_all(&bytes[..half])?;
                f.flush()?;
                thread::sleep(self.pause);
                f.write_all(&bytes[half..])?;
                f.flush()
            });
        match result {
            Ok(()) => {
                state.1 = counter;
                log_line(&format!(
                    "auth refresh #{counter} ({why}): wrote {} cookie {COOKIE}={value}",
                    self.path.display()
                ));
                true
            }
            Err(e) => {
                log_line(&format!(
                    "error: auth refresh #{counter} ({why}) cannot write {}: {e}",
                    self.path.display()
                ));
                false
            }
        }
    }

    /// The save at SIGTERM, logged as the real child does.
    pub fn save_at_shutdown(&self) {
        if self.refresh("shutdown") {
            let name = self
                .path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let cookies = {
                let state = self.state.lock().unwrap_or_else(|e| e.into_inner());
                with_cookie(&state.0, "")["cookies"]
                    .as_array()
                    .map_or(0, Vec::len)
            };
            log_line(&format!(
                "Cookies saved to auth file '{name}' ({cookies} cookies)"
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookie_is_set_or_replaced_and_the_rest_kept() {
        let p = json!({"cookies": [{"name": "SID", "value": "s"}], "origins": [],
                       "testchild": {"ready_after_ms": 5}});
        assert_eq!(cookie_value(&p, COOKIE), None);
        let once = with_cookie(&p, "a-1-5");
        assert_eq!(cookie_value(&once, COOKIE).as_deref(), Some("a-1-5"));
        assert_eq!(cookie_value(&once, "SID").as_deref(), Some("s"));
        assert_eq!(once["testchild"], p["testchild"]);
        assert_eq!(once["origins"], json!([]));
        let twice = with_cookie(&once, "a-2-6");
        assert_eq!(twice["cookies"].as_array().unwrap().len(), 2);
        assert_eq!(cookie_value(&twice, COOKIE).as_deref(), Some("a-2-6"));
        let bare = with_cookie(&json!({"cookies": 3}), "v");
        assert_eq!(cookie_value(&bare, COOKIE).as_deref(), Some("v"));
    }

    #[test]
    fn page_load_cookie_is_kept_in_every_write() {
        let p = json!({"cookies": [{"name": "SID", "value": "s"}]});
        let loaded = with_named_cookie(&p, PAGE_LOAD_COOKIE, "1700000000");
        let written = with_cookie(&loaded, "a-1-5");
        assert_eq!(
            cookie_value(&written, PAGE_LOAD_COOKIE).as_deref(),
            Some("1700000000")
        );
        assert_eq!(cookie_value(&written, COOKIE).as_deref(), Some("a-1-5"));
        assert_eq!(written["cookies"].as_array().unwrap().len(), 3);
    }

    #[test]
    fn refresh_rewrites_the_file() {
        let dir =
            std::env::temp_dir().join(format!("aisp-testchild-refresh-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("alice.json");
        let original = json!({"cookies": [{"name": COOKIE, "value": "alice-7-1"}], "x": 1});
        std::fs::write(&path, original.to_string()).unwrap();
        let r = Refresher::new(path.clone(), "alice", original, Duration::from_millis(1));
        assert_eq!(r.started_with.as_deref(), Some("alice-7-1"));
        r.refresh("test");
        r.refresh("test");
        assert_eq!(r.count(), 2);
        let now: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        let v = cookie_value(&now, COOKIE).unwrap();
        assert!(v.starts_with("alice-2-"), "{v}");
        assert_eq!(now["x"], 1);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
