//! API keys: loaded once from the hydrated key file (one key per line, blank
//! lines ignored) and checked in constant time. An empty set disables the
//! check. Keys are never logged or echoed.
//!
//! A key may carry a label for the usage counts: `sk-...  # team-a` (a `#`
//! after whitespace starts the label; a line starting with `#` is a
//! comment). The label is what usage, metrics and the status page show;
//! a key without one shows as `key-` and six hex digits of a hash of it
//! keyed with a per-boot secret, never the key (see [`fingerprint`]). Children read the key file themselves and know nothing
//! of labels, so when the file has any the coordinator hands them a copy
//! with the keys alone (`child-keys.txt` in the cache directory, 0600,
//! rewritten at every reload; see [`child_copy`]).
//!
//! The coordinator is lenient in what it accepts (`Authorization` with any
//! case of `Bearer` and surrounding spaces, or `X-API-Key`, either one
//! matching), the child is strict (exactly `Bearer ` + key, `X-API-Key` only
//! without a Bearer header): so a request let in here reaches the child
//! with exactly `Authorization: Bearer <the matched key>` and no other auth
//! header (see [`Access`] and the proxy's header rewriting).

use std::path::Path;
use std::sync::{Arc, RwLock};

use tiny_http::Request;

/// The keys in force, replaced whole by a reload; readers take the `Arc`
/// and check against it, so a reload never changes a check midway.
pub struct KeyRing(RwLock<Arc<Keys>>);

impl KeyRing {
    pub fn new(keys: Keys) -> KeyRing {
        KeyRing(RwLock::new(Arc::new(keys)))
    }

    pub fn current(&self) -> Arc<Keys> {
        self.0.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn replace(&self, keys: Keys) {
        *self.0.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(keys);
    }
}

pub struct Keys {
    keys: Vec<Vec<u8>>,
    /// The label of each key, same order.
    labels: Vec<String>,
    /// Some line had a label or a comment: children need the clean copy.
    annotated: bool,
}

/// A key line split into the key and its label (`key  # label`).
fn split_line(line: &str) -> Option<(&str, Option<&str>)> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return None;
    }
    let cut = line
        .char_indices()
        .find(|&(i, c)| c == '#' && i > 0 && line[..i].ends_with(char::is_whitespace))
        .map(|(i, _)| i);
    match cut {
        Some(i) => Some((line[..i].trim(), Some(line[i + 1..].trim()))),
        None => Some((line, None)),
    }
}

/// This boot's secret for [`fingerprint`]: SipHash keys drawn from the
/// kernel's random source when first used, never stored or shown.
fn boot_secret() -> &'static std::collections::hash_map::RandomState {
    static SECRET: std::sync::OnceLock<std::collections::hash_map::RandomState> =
        std::sync::OnceLock::new();
    SECRET.get_or_init(std::collections::hash_map::RandomState::new)
}

/// A keyed hash of `key` (SipHash under this boot's secret): equal for
/// equal keys within one run, and useless for guessing a key without the
/// secret, which never leaves the process.
pub fn fingerprint(key: &[u8]) -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = boot_secret().build_hasher();
    h.write(key);
    h.finish()
}

/// `key-` and six hex digits of the key's [`fingerprint`]: nobody can test
/// a guessed key against it (the old unkeyed 24-bit hash could be brute
/// forced from `/metrics`). It changes at each restart; a key that needs
/// its usage history kept across restarts gets a label.
fn hash_label(key: &[u8]) -> String {
    format!("key-{:06x}", fingerprint(key) >> 40)
}

impl Keys {
    pub fn none() -> Keys {
        Keys {
            keys: Vec::new(),
            labels: Vec::new(),
            annotated: false,
        }
    }

    pub fn load(path: Option<&Path>) -> std::io::Result<Keys> {
        let Some(path) = path else {
            return Ok(Keys::none());
        };
        let text = std::fs::read_to_string(path)?;
        Ok(Keys::parse(&text))
    }

    pub fn parse(text: &str) -> Keys {
        let mut k = Keys::none();
        for line in text.lines() {
            let Some((key, label)) = split_line(line) else {
                k.annotated |= line.trim().starts_with('#');
                continue;
            };
            k.annotated |= label.is_some();
            if key.is_empty() {
                continue;
            }
            let label = label
                .and_then(crate::usage::clean)
                .unwrap_or_else(|| hash_label(key.as_bytes()));
            k.keys.push(key.as_bytes().to_vec());
            k.labels.push(label);
        }
        k
    }

    /// The label of the key a request presented (None without keys).
    pub fn label(&self, access: Access<'_>) -> Option<String> {
        let Access::Key(key) = access else {
            return None;
        };
        let i = self.keys.iter().position(|k| k.as_slice() == key)?;
        self.labels.get(i).cloned()
    }

    /// The keys alone, one per line: what a child reads.
    pub fn child_text(&self) -> Vec<u8> {
        let mut out = Vec::new();
        for k in &self.keys {
            out.extend_from_slice(k);
            out.push(b'\n');
        }
        out
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// The same set of keys, in any order.
    pub fn same_set(&self, other: &Keys) -> bool {
        let sorted = |k: &Keys| {
            let mut v = k.keys.clone();
            v.sort();
            v.dedup();
            v
        };
        sorted(self) == sorted(other)
    }

    pub fn enabled(&self) -> bool {
        !self.keys.is_empty()
    }

    /// Whether `candidate` is one of the keys. Every key is compared in full
    /// whatever matches, so timing reveals nothing about which bytes agree.
    #[cfg(test)]
    pub fn accepts(&self, candidate: &[u8]) -> bool {
        let mut found = 0u8;
        for k in &self.keys {
            found |= ct_eq(k, candidate) as u8;
        }
        found == 1
    }

    /// The listed key equal to `candidate`, if any. Every key is compared
    /// in full whatever matches.
    fn matching(&self, candidate: &[u8]) -> Option<&[u8]> {
        let mut found = None;
        for k in &self.keys {
            if ct_eq(k, candidate) {
                found = Some(k.as_slice());
            }
        }
        found
    }

    /// What a request's credentials allow: `Authorization: Bearer <key>` (any
    /// case of the scheme), `X-API-Key: <key>` (Anthropic's clients) or
    /// `X-Goog-Api-Key: <key>` (Gemini's); any may carry it. On a Gemini
    /// path (`/v1beta/..`, `/v1/models..`) `?key=<key>` does too.
    pub fn access(&self, rq: &Request) -> Access<'_> {
        if !self.enabled() {
            return Access::NoKeys;
        }
        let mut found = None;
        for h in rq.headers() {
            let v = h.value.as_str().trim();
            let candidate = if h.field.equiv("Authorization") {
                v.split_once(' ')
                    .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
                    .map(|(_, t)| t.trim())
            } else if h.field.equiv("X-API-Key") || h.field.equiv("X-Goog-Api-Key") {
                Some(v)
            } else {
                None
            };
            if let Some(m) = candidate.and_then(|c| self.matching(c.as_bytes())) {
                found.get_or_insert(m);
            }
        }
        // Gemini clients may send the key in the query (`?key=`), on the
        // paths Gemini's API has; the URL carrying it is never logged.
        let (path, query) = rq.url().split_once('?').unwrap_or((rq.url(), ""));
        if found.is_none() && (path.starts_with("/v1beta/") || path.starts_with("/v1/models")) {
            if let Some(k) = crate::dialect::query_param(query, "key") {
                found = self.matching(k.trim().as_bytes());
            }
        }
        found.map(Access::Key).unwrap_or(Access::Denied)
    }
}

/// Where children read the keys: `source` itself when it has no labels or
/// comments, else a clean copy written to `cache_dir/child-keys.txt`.
/// Decided once at start; when the copy is chosen, `refresh_child_copy`
/// rewrites it at every reload.
pub fn child_copy(
    source: &Path,
    keys: &Keys,
    cache_dir: &Path,
) -> std::io::Result<std::path::PathBuf> {
    if !keys.annotated {
        return Ok(source.to_path_buf());
    }
    let copy = cache_dir.join(CHILD_KEY_FILE);
    crate::private::make_dir(cache_dir)?;
    crate::private::write_atomic(&copy, &keys.child_text())?;
    let _ = COPY.set(copy.clone());
    Ok(copy)
}

/// Rewrite the children's copy of the keys, when one is in use.
pub fn refresh_child_copy(keys: &Keys) -> std::io::Result<()> {
    match COPY.get() {
        Some(copy) => crate::private::write_atomic(copy, &keys.child_text()),
        None => Ok(()),
    }
}

pub const CHILD_KEY_FILE: &str = "child-keys.txt";
static COPY: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();

/// The outcome of the key check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access<'k> {
    /// No key file: no check, credentials are forwarded as they came.
    NoKeys,
    /// This listed key was presented.
    Key(&'k [u8]),
    Denied,
}

/// Whether a header carries credentials (the ones rewritten on the way).
pub fn is_auth_header(name: &str) -> bool {
    name.eq_ignore_ascii_case("authorization")
        || name.eq_ignore_ascii_case("x-api-key")
        || name.eq_ignore_ascii_case("x-goog-api-key")
}

/// The request's headers with their credentials made the child's one
/// accepted form: with a matched key exactly `Authorization: Bearer <key>`;
/// without a key check as they came; denied (on an open path) none.
pub fn for_child(
    access: Access<'_>,
    mut headers: Vec<(String, Vec<u8>)>,
) -> Vec<(String, Vec<u8>)> {
    match access {
        Access::NoKeys => headers,
        Access::Key(k) => {
            headers.retain(|(name, _)| !is_auth_header(name));
            let mut v = b"Bearer ".to_vec();
            v.extend_from_slice(k);
            headers.push(("Authorization".to_string(), v));
            headers
        }
        Access::Denied => {
            headers.retain(|(name, _)| !is_auth_header(name));
            headers
        }
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
    fn labels_are_stripped_from_keys_and_never_the_key() {
        let k = Keys::parse("# the team keys\nalpha  # team-a\nbeta\ngam#ma\ndelta\t#\n");
        assert_eq!(k.len(), 4);
        assert!(k.accepts(b"alpha") && !k.accepts(b"alpha  # team-a"));
        assert!(k.accepts(b"gam#ma"), "a # inside a key is part of it");
        assert!(k.annotated);
        assert_eq!(k.label(Access::Key(b"alpha")).as_deref(), Some("team-a"));
        let beta = k.label(Access::Key(b"beta")).unwrap();
        assert!(beta.starts_with("key-") && beta.len() == 10 && !beta.contains("beta"));
        assert_eq!(
            k.label(Access::Key(b"delta")).unwrap().len(),
            10,
            "empty label: hashed"
        );
        assert_eq!(k.label(Access::NoKeys), None);
        assert_eq!(k.child_text(), b"alpha\nbeta\ngam#ma\ndelta\n");
        assert!(!Keys::parse("a\nb\n").annotated);
    }

    #[test]
    fn children_get_a_clean_copy_only_when_labels_exist() {
        let d = std::env::temp_dir().join(format!("aisp-keys-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        let src = d.join("key.txt");
        assert_eq!(child_copy(&src, &Keys::parse("a\n"), &d).unwrap(), src);
        let copy = child_copy(&src, &Keys::parse("a # x\n"), &d).unwrap();
        assert_eq!(copy, d.join(CHILD_KEY_FILE));
        assert_eq!(std::fs::read(&copy).unwrap(), b"a\n");
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn key_sets_compare_in_any_order() {
        let k = Keys::parse("alpha\nbeta\n");
        assert!(k.same_set(&Keys::parse("beta\n\nalpha")));
        assert!(!k.same_set(&Keys::parse("alpha")));
        assert!(!k.same_set(&Keys::parse("alpha\nbeta\ngamma")));
        assert!(Keys::none().same_set(&Keys::parse("\n")));
    }

    #[test]
    fn the_child_gets_exactly_the_matched_key_as_bearer() {
        let k = Keys::parse("alpha\nbeta\n");
        let h = |pairs: &[(&str, &str)]| -> Vec<(String, Vec<u8>)> {
            pairs
                .iter()
                .map(|(a, b)| (a.to_string(), b.as_bytes().to_vec()))
                .collect()
        };
        let out = for_child(
            Access::Key(k.matching(b"beta").unwrap()),
            h(&[
                ("authorization", "bearer  nope"),
                ("X-Api-Key", "beta"),
                ("x-other", "1"),
            ]),
        );
        assert_eq!(
            out,
            h(&[("x-other", "1"), ("Authorization", "Bearer beta")])
        );
        let out = for_child(Access::Denied, h(&[("Authorization", "x"), ("a", "b")]));
        assert_eq!(out, h(&[("a", "b")]));
        let same = h(&[("Authorization", "Bearer tok")]);
        assert_eq!(for_child(Access::NoKeys, same.clone()), same);
    }

    #[test]
    fn constant_time_equality_is_equality() {
        assert!(ct_eq(b"", b""));
        assert!(ct_eq(b"abc", b"abc"));
        assert!(!ct_eq(b"abc", b"abd"));
        assert!(!ct_eq(b"abc", b"abc\0"));
    }
}
