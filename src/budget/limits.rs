//! Per-key limits, written after a key's label in the key file:
//! `sk-abc  # team-a rpm=60 rpd=1000 tpd=200000 models=gemini-2.5-flash,gemini-2.5-pro*`.
//! `rpm`: completions per minute (a sliding 60 s); `rpd`: completions per
//! budget day; `tpd`: tokens per budget day (the day is `budget`'s, in
//! `BUDGET_TIMEZONE`); `models`: the models the key may ask for, exact
//! names or prefixes ending in `*`. Words without `=` stay in the label.
//!
//! What the limits are (parsing, the kinds of refusal, the keys' limits in
//! force for the views) is here, pure; the counting is the usage ledger's
//! (one short lock per completion, see `usage::Usage::admit`), and the
//! refusal is the edge's (`proxy::limits`: 429 with `Retry-After`, 403 for
//! a model not allowed).

use std::fmt;
use std::sync::Arc;

/// What one key may do; every field None: no limit.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Limits {
    pub rpm: Option<u64>,
    pub rpd: Option<u64>,
    pub tpd: Option<u64>,
    /// Exact names, or prefixes (`Prefix`) from a trailing `*`.
    pub models: Option<Vec<Model>>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Model {
    Exact(String),
    Prefix(String),
}

/// A limit word that cannot be used (the line is the caller's to add).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LimitError(String);

impl fmt::Display for LimitError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The largest count a limit may have.
const MAX_LIMIT: u64 = 1 << 40;

impl Limits {
    /// Split a label's words into the label (words without `=`) and the
    /// limits; a word with `=` that is not a limit is an error.
    pub fn split(label: &str) -> Result<(String, Limits), LimitError> {
        let mut words = Vec::new();
        let mut l = Limits::default();
        for w in label.split_whitespace() {
            let Some((name, value)) = w.split_once('=') else {
                words.push(w);
                continue;
            };
            match name {
                "rpm" => l.rpm = Some(count(name, value)?),
                "rpd" => l.rpd = Some(count(name, value)?),
                "tpd" => l.tpd = Some(count(name, value)?),
                "models" => l.models = Some(models(value)?),
                _ => {
                    return Err(LimitError(format!(
                        "unknown limit {name:?}: the limits are rpm=N, rpd=N, tpd=N and models=a,b*"
                    )))
                }
            }
        }
        Ok((words.join(" "), l))
    }

    pub fn is_empty(&self) -> bool {
        *self == Limits::default()
    }

    /// Whether the key may ask for `model` (None: the request names none,
    /// which a key limited to models may not do).
    pub fn allows(&self, model: Option<&str>) -> bool {
        let Some(allowed) = &self.models else {
            return true;
        };
        let Some(m) = model else { return false };
        allowed.iter().any(|a| match a {
            Model::Exact(e) => e == m,
            Model::Prefix(p) => m.starts_with(p.as_str()),
        })
    }

    /// The limits as the key file writes them (for `/v1/budget` and usage).
    pub fn view(&self) -> serde_json::Value {
        let models = self.models.as_ref().map(|ms| {
            ms.iter()
                .map(|m| match m {
                    Model::Exact(e) => e.clone(),
                    Model::Prefix(p) => format!("{p}*"),
                })
                .collect::<Vec<_>>()
        });
        serde_json::json!({
            "rpm": self.rpm, "rpd": self.rpd, "tpd": self.tpd, "models": models,
        })
    }
}

fn count(name: &str, value: &str) -> Result<u64, LimitError> {
    match value.parse::<u64>() {
        Ok(n) if (1..=MAX_LIMIT).contains(&n) => Ok(n),
        _ => Err(LimitError(format!(
            "{name}={value:?} is not a count: write a whole number from 1, e.g. {name}=100"
        ))),
    }
}

fn models(value: &str) -> Result<Vec<Model>, LimitError> {
    let bad = || {
        LimitError(format!(
            "models={value:?} is not a list of models: write names or prefixes ending in *, comma-separated, e.g. models=gemini-2.5-flash,gemini-2.5-pro*"
        ))
    };
    let mut out = Vec::new();
    for m in value.split(',') {
        let (name, prefix) = match m.strip_suffix('*') {
            Some(p) => (p, true),
            None => (m, false),
        };
        if (name.is_empty() && !prefix)
            || name.contains('*')
            || !name.chars().all(|c| c.is_ascii_graphic())
        {
            return Err(bad());
        }
        out.push(match prefix {
            true => Model::Prefix(name.to_string()),
            false => Model::Exact(name.to_string()),
        });
    }
    Ok(out)
}

/// Which limit a request ran into.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Over {
    /// `rpm`: the minute window is full.
    Rate,
    /// `rpd`.
    Daily,
    /// `tpd`.
    Tokens,
}

impl Over {
    /// The error code clients see.
    pub fn code(self) -> &'static str {
        match self {
            Over::Rate => "key_rate_limited",
            Over::Daily => "key_daily_limit",
            Over::Tokens => "key_token_limit",
        }
    }

    pub fn message(self, limit: u64) -> String {
        match self {
            Over::Rate => format!("this API key may make {limit} completions per minute (rpm); retry after the time in Retry-After"),
            Over::Daily => format!("this API key may make {limit} completions per budget day (rpd); the day resets at the time in Retry-After"),
            Over::Tokens => format!("this API key may use {limit} tokens per budget day (tpd); the day resets at the time in Retry-After"),
        }
    }
}

/// The labels and limits of the keys in force, for the views (`ctl
/// usage`, the status page, `/metrics`); set at start and at each reload.
static PUBLISHED: std::sync::RwLock<Vec<(String, Arc<Limits>)>> =
    std::sync::RwLock::new(Vec::new());

pub fn publish(limited: Vec<(String, Arc<Limits>)>) {
    *PUBLISHED.write().unwrap_or_else(|p| p.into_inner()) = limited;
}

/// The limits of the key labelled `label`, if it has any.
pub fn published() -> Vec<(String, Arc<Limits>)> {
    PUBLISHED.read().unwrap_or_else(|p| p.into_inner()).clone()
}

/// A refusal: which limit, its value, and seconds until it frees.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refusal {
    pub over: Over,
    pub limit: u64,
    pub retry_after_s: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_split_from_the_label() {
        let (label, l) = Limits::split(
            "team a rpm=60 rpd=1000 tpd=200000 models=gemini-2.5-flash,gemini-2.5-pro*",
        )
        .unwrap();
        assert_eq!(label, "team a");
        assert_eq!((l.rpm, l.rpd, l.tpd), (Some(60), Some(1000), Some(200_000)));
        assert!(l.allows(Some("gemini-2.5-flash")));
        assert!(l.allows(Some("gemini-2.5-pro-preview")));
        assert!(!l.allows(Some("gemini-2.5-flash-lite")));
        assert!(!l.allows(None));
        let (label, l) = Limits::split("just a label").unwrap();
        assert_eq!((label.as_str(), l.is_empty()), ("just a label", true));
        assert!(l.allows(None) && l.allows(Some("anything")));
        assert!(Limits::split("models=*").unwrap().1.allows(Some("x")));
    }

    #[test]
    fn bad_limits_say_how_to_write_them() {
        for bad in [
            "rpm=0",
            "rpm=x",
            "rpd=-1",
            "tpd=",
            "burst=3",
            "models=",
            "models=a,,b",
            "models=a*b",
        ] {
            let e = Limits::split(bad).unwrap_err().to_string();
            assert!(
                e.contains("e.g.") || e.contains("the limits are"),
                "{bad}: {e}"
            );
        }
    }
}
