//! API keys: loaded once from the hydrated key file (one key per line, blank
//! lines ignored) and checked in constant time. An empty set disables the
//! check. Keys are never logged or echoed.

use std::path::Path;

use tiny_http::Request;

pub struct Keys {
    keys: Vec<Vec<u8>>,
}

impl Keys {
    pub fn none() -> Keys {
        Keys { keys: Vec::new() }
    }

    pub fn load(path: Option<&Path>) -> std::io::Result<Keys> {
        let Some(path) = path else {
            return Ok(Keys::none());
        };
        let text = std::fs::read_to_string(path)?;
        Ok(Keys::parse(&text))
    }

    pub fn parse(text: &str) -> Keys {
        Keys {
            keys: text
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .map(|l| l.as_bytes().to_vec())
                .collect(),
        }
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn enabled(&self) -> bool {
        !self.keys.is_empty()
    }

    /// Whether `candidate` is one of the keys. Every key is compared in full
    /// whatever matches, so timing reveals nothing about which bytes agree.
    pub fn accepts(&self, candidate: &[u8]) -> bool {
        let mut found = 0u8;
        for k in &self.keys {
            found |= ct_eq(k, candidate) as u8;
        }
        found == 1
    }

    /// The key a request presents: `Authorization: Bearer <key>` or
    /// `X-API-Key: <key>`; either may carry it.
    pub fn request_allowed(&self, rq: &Request) -> bool {
        if !self.enabled() {
            return true;
        }
        let mut ok = false;
        for h in rq.headers() {
            let v = h.value.as_str().trim();
            if h.field.equiv("Authorization") {
                let token = v
                    .split_once(' ')
                    .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
                    .map(|(_, t)| t.trim());
                if let Some(t) = token {
                    ok |= self.accepts(t.as_bytes());
                }
            } else if h.field.equiv("X-API-Key") {
                ok |= self.accepts(v.as_bytes());
            }
        }
        ok
    }
}

/// Constant-time equality for byte strings (length differences included).
fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    let n = a.len().max(b.len());
    let mut diff = (a.len() ^ b.len()) as u64;
    for i in 0..n {
        let x = a.get(i).copied().unwrap_or(0);
        let y = b.get(i).copied().unwrap_or(0);
        diff |= u64::from(x ^ y);
    }
    // Keep the comparison from being short-circuited by the optimiser.
    std::hint::black_box(diff) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_one_key_per_line() {
        let k = Keys::parse("  alpha \n\n beta\r\n");
        assert_eq!(k.len(), 2);
        assert!(k.accepts(b"alpha") && k.accepts(b"beta"));
        assert!(!k.accepts(b"alph") && !k.accepts(b"alphaa") && !k.accepts(b""));
        assert!(!Keys::parse("\n \n").enabled());
    }

    #[test]
    fn constant_time_equality_is_equality() {
        assert!(ct_eq(b"", b""));
        assert!(ct_eq(b"abc", b"abc"));
        assert!(!ct_eq(b"abc", b"abd"));
        assert!(!ct_eq(b"abc", b"abc\0"));
    }
}
