//! Every setting's value, read once (a flag wins over a non-empty variable,
//! which wins over the default) and checked against its [`Kind`] in one walk
//! over the settings table, before any of them is used. The accessors hand
//! out checked values only, so the assembly of `Config` has no validation
//! arms of its own.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::table::{setting, Kind, SETTINGS};
use super::ConfigError;

/// A setting's value after its check.
#[derive(Debug, Clone)]
enum Value {
    Int(u64),
    Secs(Duration),
    Bool(bool),
    /// A `Choice` word, lowercased; also `Text`, `Secret`, `SecretUrl` and `Host`.
    Text(String),
    Path(PathBuf),
}

pub struct Values<'a> {
    set: HashMap<&'static str, Value>,
    /// The process environment, for the few fallbacks outside the table
    /// (`AWS_REGION`, `HOSTNAME`...).
    env: &'a HashMap<String, String>,
}

impl<'a> Values<'a> {
    /// Read and check every setting.
    pub fn read(
        flags: &HashMap<&'static str, String>,
        env: &'a HashMap<String, String>,
        cwd: &Path,
    ) -> Result<Values<'a>, ConfigError> {
        let mut set = HashMap::new();
        for s in SETTINGS {
            let raw = flags
                .get(s.env)
                .cloned()
                .or_else(|| env.get(s.env).filter(|v| !v.is_empty()).cloned())
                .or_else(|| s.default.map(str::to_string));
            if let Some(raw) = raw {
                set.insert(s.env, check(s.env, s.kind, &raw, cwd)?);
            }
        }
        Ok(Values { set, env })
    }

    fn get(&self, name: &'static str) -> Option<&Value> {
        debug_assert!(setting(name).is_some(), "{name} is not in the table");
        self.set.get(name)
    }

    /// An integer setting (every one has a default).
    pub fn int(&self, name: &'static str) -> u64 {
        match self.get(name) {
            Some(Value::Int(n)) => *n,
            _ => 0,
        }
    }

    pub fn secs(&self, name: &'static str) -> Duration {
        match self.get(name) {
            Some(Value::Secs(d)) => *d,
            _ => Duration::ZERO,
        }
    }

    /// Seconds where 0 means off.
    pub fn secs_or_off(&self, name: &'static str) -> Option<Duration> {
        Some(self.secs(name)).filter(|d| !d.is_zero())
    }

    pub fn flag(&self, name: &'static str) -> bool {
        matches!(self.get(name), Some(Value::Bool(true)))
    }

    /// A text, choice, secret or host setting, if set.
    pub fn text(&self, name: &'static str) -> Option<String> {
        match self.get(name) {
            Some(Value::Text(t)) => Some(t.clone()),
            _ => None,
        }
    }

    /// A path setting made absolute, if set.
    pub fn path(&self, name: &'static str) -> Option<PathBuf> {
        match self.get(name) {
            Some(Value::Path(p)) => Some(p.clone()),
            _ => None,
        }
    }

    /// A non-empty variable of the process environment outside the table.
    pub fn outside(&self, name: &str) -> Option<String> {
        self.env.get(name).filter(|v| !v.is_empty()).cloned()
    }
}

fn check(name: &'static str, kind: Kind, raw: &str, cwd: &Path) -> Result<Value, ConfigError> {
    Ok(match kind {
        Kind::Int { min, max } => Value::Int(parse_num(name, raw, min, max)?),
        Kind::Secs { min, max } => {
            Value::Secs(Duration::from_secs(parse_num(name, raw, min, max)?))
        }
        Kind::DecimalSecs { max } => Value::Secs(parse_decimal_secs(name, raw, max)?),
        Kind::Bool => match raw.to_ascii_lowercase().as_str() {
            "true" | "1" | "yes" | "on" => Value::Bool(true),
            "false" | "0" | "no" | "off" => Value::Bool(false),
            _ => return Err(invalid(name, raw, "true or false")),
        },
        Kind::Choice(words) => {
            let w = raw.to_ascii_lowercase();
            if !words.contains(&w.as_str()) {
                return Err(invalid(name, raw, one_of(words)));
            }
            Value::Text(w)
        }
        Kind::Path => {
            let p = PathBuf::from(raw);
            Value::Path(if p.is_absolute() { p } else { cwd.join(p) })
        }
        Kind::Text | Kind::Secret => Value::Text(raw.to_string()),
        Kind::SecretUrl => {
            let url = raw.trim();
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                return Err(invalid(
                    name,
                    "(not shown: a secret)",
                    "a URL starting with http:// or https://",
                ));
            }
            Value::Text(url.to_string())
        }
        Kind::TimeZone => Value::Text(raw.trim().to_string()),
        Kind::Host => {
            if raw.parse::<std::net::IpAddr>().is_err() && raw != "localhost" {
                return Err(invalid(
                    name,
                    raw,
                    "an IP address such as 0.0.0.0 or 127.0.0.1",
                ));
            }
            Value::Text(raw.to_string())
        }
    })
}

/// `a or b`, `a, b or c`.
fn one_of(words: &[&str]) -> String {
    match words.split_last() {
        Some((last, [])) => last.to_string(),
        Some((last, rest)) => format!("{} or {last}", rest.join(", ")),
        None => String::new(),
    }
}

pub fn invalid(name: &'static str, value: &str, expected: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        name,
        value: value.to_string(),
        expected: expected.into(),
    }
}

fn parse_num(name: &'static str, value: &str, min: u64, max: u64) -> Result<u64, ConfigError> {
    match value.trim().parse::<u64>() {
        Ok(n) if (min..=max).contains(&n) => Ok(n),
        _ => Err(invalid(
            name,
            value,
            format!("an integer from {min} to {max}"),
        )),
    }
}

/// Seconds written as an integer or with decimals (`2`, `1.5`, `0.25`), at
/// millisecond precision, from 0 to `max`.
fn parse_decimal_secs(name: &'static str, value: &str, max: u64) -> Result<Duration, ConfigError> {
    let bad = || {
        invalid(
            name,
            value,
            format!("seconds from 0 to {max}, such as 2 or 1.5"),
        )
    };
    let v = value.trim();
    let (whole, frac) = v.split_once('.').unwrap_or((v, ""));
    let digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    if whole.is_empty() || !digits(whole) || !digits(frac) || (v.contains('.') && frac.is_empty()) {
        return Err(bad());
    }
    let whole: u64 = whole.parse().map_err(|_| bad())?;
    // Milliseconds: the first three decimals, the rest ignored.
    let ms: u64 = format!("{:0<3}", &frac[..frac.len().min(3)])
        .parse()
        .map_err(|_| bad())?;
    let d = Duration::from_secs(whole) + Duration::from_millis(ms);
    if d > Duration::from_secs(max) {
        return Err(bad());
    }
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_default_passes_its_own_check() {
        for s in SETTINGS {
            if let Some(d) = s.default {
                assert!(check(s.env, s.kind, d, Path::new("/")).is_ok(), "{}", s.env);
            }
        }
    }

    #[test]
    fn choices_are_listed_as_words() {
        assert_eq!(one_of(&["local", "s3"]), "local or s3");
        assert_eq!(one_of(&["s3", "all", "off"]), "s3, all or off");
    }
}
