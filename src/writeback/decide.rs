//! The write-back decision: given what a child left in its working copy and
//! what the source held, upload it or say why not. Pure, so the whole table
//! is unit-tested; the caller reads the file and acts.
//!
//! A child rewrites its profile with a plain truncate-and-write, so a copy
//! read mid-write is truncated JSON: that is `Invalid`, never uploaded, and
//! looked at again at the next chance.

use std::fmt;

use serde_json::Value;

/// Largest working copy we read; real profiles are a few KiB of cookies.
pub const MAX_PROFILE_BYTES: u64 = 64 << 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Valid, still a profile, and different from the base: write it back.
    Write,
    /// Same content as the base (byte for byte, or the same JSON value).
    Unchanged,
    /// Not something to upload.
    Invalid(Invalid),
}

/// Why a working copy is not uploaded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Invalid {
    /// Not valid JSON; the category only ("truncated" is a child mid-write).
    NotJson(&'static str),
    /// Valid JSON, but not an object with a `cookies` array.
    NotProfile,
    /// Larger than [`MAX_PROFILE_BYTES`].
    TooLarge,
}

impl fmt::Display for Invalid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Invalid::NotJson(why) => write!(f, "not valid JSON ({why})"),
            Invalid::NotProfile => f.write_str("not a profile (no \"cookies\" array)"),
            Invalid::TooLarge => write!(f, "larger than {MAX_PROFILE_BYTES} bytes"),
        }
    }
}

/// Decide on `copy` (the working copy's bytes) against `base` (what the
/// source held when this start began, or what was last written back).
pub fn decide(copy: &[u8], base: &[u8]) -> Decision {
    if copy == base {
        return Decision::Unchanged;
    }
    if copy.len() as u64 > MAX_PROFILE_BYTES {
        return Decision::Invalid(Invalid::TooLarge);
    }
    let new: Value = match serde_json::from_slice(copy) {
        Ok(v) => v,
        Err(e) => return Decision::Invalid(Invalid::NotJson(category(&e))),
    };
    if !looks_like_profile(&new) {
        return Decision::Invalid(Invalid::NotProfile);
    }
    // Rewritten with other spacing or key order but the same value: nothing
    // to upload.
    if serde_json::from_slice::<Value>(base).is_ok_and(|old| old == new) {
        return Decision::Unchanged;
    }
    Decision::Write
}

/// A Playwright storage state: an object with a `cookies` array.
pub fn looks_like_profile(v: &Value) -> bool {
    v.get("cookies").is_some_and(Value::is_array)
}

/// The error's category only: its message could quote profile content.
fn category(e: &serde_json::Error) -> &'static str {
    match e.classify() {
        serde_json::error::Category::Io => "read error",
        serde_json::error::Category::Syntax => "syntax error",
        serde_json::error::Category::Data => "data error",
        serde_json::error::Category::Eof => "truncated",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = r#"{"cookies":[{"name":"SID","value":"old"}],"origins":[]}"#;

    #[test]
    fn the_decision_table() {
        let refreshed = r#"{"cookies":[{"name":"SID","value":"new"}],"origins":[]}"#;
        let respaced =
            "{ \"origins\": [],\n  \"cookies\": [ {\"value\":\"old\", \"name\":\"SID\"} ] }";
        let truncated = &refreshed[..refreshed.len() / 2];
        for (copy, want) in [
            (BASE, Decision::Unchanged),
            (respaced, Decision::Unchanged),
            (refreshed, Decision::Write),
            (
                r#"{"cookies":[],"origins":[]}"#,
                Decision::Write, // a logout is still the child's state
            ),
            (truncated, Decision::Invalid(Invalid::NotJson("truncated"))),
            ("", Decision::Invalid(Invalid::NotJson("truncated"))),
            (
                "{\"cookies\": [}",
                Decision::Invalid(Invalid::NotJson("syntax error")),
            ),
            ("[]", Decision::Invalid(Invalid::NotProfile)),
            ("null", Decision::Invalid(Invalid::NotProfile)),
            (r#"{"origins":[]}"#, Decision::Invalid(Invalid::NotProfile)),
            (r#"{"cookies":{}}"#, Decision::Invalid(Invalid::NotProfile)),
        ] {
            assert_eq!(decide(copy.as_bytes(), BASE.as_bytes()), want, "{copy:?}");
        }
    }

    #[test]
    fn a_base_that_is_not_json_still_lets_a_valid_profile_through() {
        assert_eq!(decide(BASE.as_bytes(), b"{trunc"), Decision::Write);
    }

    #[test]
    fn reasons_never_quote_content() {
        let e = decide(b"{\"cookies\": [\"secret-value", BASE.as_bytes());
        let Decision::Invalid(why) = e else {
            panic!("{e:?}")
        };
        assert!(!why.to_string().contains("secret"), "{why}");
    }
}
