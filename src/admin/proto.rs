//! The admin protocol, shared by the coordinator's admin endpoints and
//! `aistudioproxy ctl`: one JSON request, one JSON answer.
//!
//! On the Unix socket a request is one line (`{"op": "restart", "slot": 1}`)
//! and the answer one line, then the connection closes. Under `/admin/` on
//! the HTTP port the same request is the body of a `POST /admin/<op>` (or a
//! `GET /admin/status`). Every answer is an object with `"ok"`; a failure
//! adds `"error"` (one line naming the fix), a success the operation's data.

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    /// Every slot and profile, the queue, the last reload.
    Status,
    /// Drain the slot, then stop and start the same profile.
    Restart {
        slot: usize,
    },
    /// Drain the slot, then start the next profile of the queue.
    Rotate {
        slot: usize,
    },
    /// Never start the profile; a running one is drained and rotated out.
    Disable {
        profile: String,
    },
    Enable {
        profile: String,
    },
    /// Clear the profile's cooldowns and its failure runs; with `model`,
    /// only its cooldown of that model.
    Reset {
        profile: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        model: Option<String>,
    },
    /// Hydrate again from the source and apply the changes.
    Reload,
    /// The last `lines` lines of the profile's child log.
    Logs {
        profile: String,
        lines: usize,
    },
    /// Answers and tokens per profile and model, and per API key label.
    Usage,
    /// The fleet's events after sequence number `after` (0: all kept).
    Events {
        #[serde(default)]
        after: u64,
        #[serde(default = "default_limit")]
        limit: usize,
    },
    /// Everything the status page shows, with the events after `after`.
    Console {
        #[serde(default)]
        after: u64,
    },
}

fn default_limit() -> usize {
    crate::events::CAPACITY
}

impl Request {
    /// What the request does, for the log line every operation gets.
    pub fn describe(&self) -> String {
        match self {
            Request::Status => "status".into(),
            Request::Restart { slot } => format!("restart slot {slot}"),
            Request::Rotate { slot } => format!("rotate slot {slot}"),
            Request::Disable { profile } => format!("disable profile {profile}"),
            Request::Enable { profile } => format!("enable profile {profile}"),
            Request::Reset {
                profile,
                model: None,
            } => format!("reset profile {profile}"),
            Request::Reset {
                profile,
                model: Some(m),
            } => format!("reset profile {profile} model {m}"),
            Request::Reload => "reload".into(),
            Request::Logs { profile, lines } => {
                format!("logs of profile {profile} ({lines} lines)")
            }
            Request::Usage => "usage".into(),
            Request::Events { after, .. } => format!("events after {after}"),
            Request::Console { .. } => "console".into(),
        }
    }

    /// Status, logs, usage, events and the console only read.
    pub fn changes_anything(&self) -> bool {
        !matches!(
            self,
            Request::Status
                | Request::Logs { .. }
                | Request::Usage
                | Request::Events { .. }
                | Request::Console { .. }
        )
    }
}

/// A successful answer carrying `data`'s fields.
pub fn ok(data: Value) -> Value {
    let mut v = match data {
        Value::Object(m) => Value::Object(m),
        Value::Null => json!({}),
        other => json!({ "result": other }),
    };
    v["ok"] = json!(true);
    v
}

/// A failed answer.
pub fn error(message: impl Into<String>) -> Value {
    json!({ "ok": false, "error": message.into() })
}

/// Parse one request; the error is a one-line answer to send back.
pub fn parse(text: &str) -> Result<Request, Value> {
    serde_json::from_str(text.trim()).map_err(|e| error(format!("bad admin request: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_round_trip_as_tagged_json() {
        let all = vec![
            Request::Status,
            Request::Restart { slot: 1 },
            Request::Rotate { slot: 0 },
            Request::Disable {
                profile: "alice".into(),
            },
            Request::Enable {
                profile: "alice".into(),
            },
            Request::Reset {
                profile: "alice".into(),
                model: None,
            },
            Request::Reset {
                profile: "alice".into(),
                model: Some("gemini-2.5-pro".into()),
            },
            Request::Reload,
            Request::Logs {
                profile: "alice".into(),
                lines: 50,
            },
            Request::Usage,
            Request::Events {
                after: 7,
                limit: 10,
            },
            Request::Console { after: 3 },
        ];
        for r in all {
            let text = serde_json::to_string(&r).unwrap();
            assert_eq!(parse(&text).unwrap(), r, "{text}");
        }
        assert_eq!(
            serde_json::to_value(Request::Restart { slot: 2 }).unwrap(),
            json!({"op": "restart", "slot": 2})
        );
        assert_eq!(
            parse(r#"{"op": "events"}"#).unwrap(),
            Request::Events {
                after: 0,
                limit: crate::events::CAPACITY
            }
        );
        assert!(parse(r#"{"op": "explode"}"#).unwrap_err()["error"]
            .as_str()
            .unwrap()
            .starts_with("bad admin request"));
    }

    #[test]
    fn answers_carry_ok() {
        assert_eq!(ok(json!({"a": 1})), json!({"a": 1, "ok": true}));
        assert_eq!(error("no"), json!({"ok": false, "error": "no"}));
    }
}
