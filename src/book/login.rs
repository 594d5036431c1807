//! What a profile file says about its Google login before any start, and a
//! fingerprint of its content. Pure: the caller reads the file (outside any
//! lock) and passes its bytes.
//!
//! A login lives in Google's session cookies. When every one of them that a
//! profile has is past its `expires`, the child would only be redirected to
//! the sign-in page (and, with the real child, exit 0 after ~10 s, or hang
//! with the older fork): such a profile needs a new login without spending a
//! start. A profile with none of these cookies is not judged (a test
//! profile, another kind of login): the child's own log decides then.
//!
//! The fingerprint tells a profile whose login was marked as needed apart
//! from the same profile with new content (a reload or a write-back
//! brought a new file).

use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::Value;

/// Google's session cookies (the child's own offline check uses these too).
pub const SESSION_COOKIES: &[&str] = &[
    "SID",
    "HSID",
    "SSID",
    "APISID",
    "SAPISID",
    "__Secure-1PSID",
    "__Secure-3PSID",
];

/// What a profile's session cookies say at a moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Session {
    /// No session cookie, or a file that is no storage state: not judged.
    Unknown,
    /// At least one session cookie is still valid (or never expires).
    Live,
    /// Every session cookie it has expired; `count` of them.
    Expired { count: usize },
}

/// Judge the session cookies of a Playwright storage state at `now`.
pub fn session(bytes: &[u8], now: SystemTime) -> Session {
    let Ok(v) = serde_json::from_slice::<Value>(bytes) else {
        return Session::Unknown;
    };
    let Some(cookies) = v.get("cookies").and_then(Value::as_array) else {
        return Session::Unknown;
    };
    let now_s = now
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0);
    let mut expired = 0;
    for c in cookies {
        let Some(name) = c.get("name").and_then(Value::as_str) else {
            continue;
        };
        if !SESSION_COOKIES.contains(&name) {
            continue;
        }
        match c.get("expires").and_then(Value::as_f64) {
            // -1 (or none): a browser-session cookie, alive while it runs.
            Some(e) if e > 0.0 && e <= now_s => expired += 1,
            _ => return Session::Live,
        }
    }
    if expired == 0 {
        Session::Unknown
    } else {
        Session::Expired { count: expired }
    }
}

/// A fingerprint of a profile file's content (FNV-1a, 64 bits): not a
/// secret's hash for anyone to see, only a way to notice new content.
pub fn fingerprint(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn at(s: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(s)
    }

    fn state(cookies: &[(&str, f64)]) -> Vec<u8> {
        let list: Vec<Value> = cookies
            .iter()
            .map(|(n, e)| serde_json::json!({"name": n, "value": "v", "domain": ".google.com", "path": "/", "expires": e}))
            .collect();
        serde_json::to_vec(&serde_json::json!({"cookies": list, "origins": []})).unwrap()
    }

    #[test]
    fn session_cookies_decide() {
        let now = at(2_000_000_000);
        let table: &[(&[(&str, f64)], Session)] = &[
            (&[], Session::Unknown),
            (&[("NID", 1.0), ("other", 5.0)], Session::Unknown),
            (
                &[("SID", 1.0), ("HSID", 2.0)],
                Session::Expired { count: 2 },
            ),
            (&[("SID", 1.0), ("HSID", 3e9)], Session::Live),
            (&[("SID", 1.0), ("__Secure-3PSID", -1.0)], Session::Live),
            (
                &[("SAPISID", 1_999_999_999.0), ("NID", 1.0)],
                Session::Expired { count: 1 },
            ),
            (&[("SSID", 2_000_000_001.5)], Session::Live),
        ];
        for (cookies, want) in table {
            assert_eq!(session(&state(cookies), now), *want, "{cookies:?}");
        }
        assert_eq!(session(b"not json", now), Session::Unknown);
        assert_eq!(session(b"{\"cookies\": 3}", now), Session::Unknown);
        let no_expires = br#"{"cookies": [{"name": "SID", "value": "x"}]}"#;
        assert_eq!(session(no_expires, now), Session::Live);
    }

    #[test]
    fn fingerprints_differ_with_content() {
        assert_eq!(fingerprint(b"abc"), fingerprint(b"abc"));
        assert_ne!(fingerprint(b"abc"), fingerprint(b"abd"));
    }
}
