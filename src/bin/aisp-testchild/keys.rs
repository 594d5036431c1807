//! The child-side API-key rule, exactly as the contract's "API keys (child
//! side)" section states it.
//!
//! Keys come from the file named by `AUTH_KEY_FILE_PATH`, else from
//! `key.txt` in the current working directory (the child's checkout). A
//! named file that does not exist is a start-up failure, as with the real
//! child; a missing fallback file or an empty file means no check. Loaded
//! once at start on the main thread; the rule itself is a pure function used
//! by the HTTP workers.

use std::fs;
use std::path::{Path, PathBuf};

/// Where the keys were looked for, and what was found.
#[derive(Debug, PartialEq)]
pub struct KeyFile {
    pub path: PathBuf,
    pub keys: Vec<String>,
}

/// Reads the key file: `env_path` is `AUTH_KEY_FILE_PATH` (an empty value
/// counts as unset), `cwd` the fallback folder. Err when the named file is
/// missing or unreadable.
pub fn load(env_path: Option<&str>, cwd: &Path) -> Result<KeyFile, String> {
    match env_path.filter(|p| !p.is_empty()) {
        Some(p) => {
            let path = PathBuf::from(p);
            let text = fs::read_to_string(&path).map_err(|e| {
                format!("AUTH_KEY_FILE_PATH={p} cannot be read ({e}); the key file must exist")
            })?;
            Ok(KeyFile {
                keys: parse(&text),
                path,
            })
        }
        None => {
            let path = cwd.join("key.txt");
            let keys = fs::read_to_string(&path)
                .map(|t| parse(&t))
                .unwrap_or_default();
            Ok(KeyFile { path, keys })
        }
    }
}

/// One key per line, surrounding whitespace trimmed, blank lines ignored.
pub fn parse(text: &str) -> Vec<String> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(String::from)
        .collect()
}

/// Whether a request under `/v1/` (other than `/v1/models`) may pass.
/// `authorization` and `x_api_key` are the first values of those headers.
///
/// With keys: `Authorization` must start with exactly `Bearer ` (case-
/// sensitive, one space) and the rest be a listed key; only when there is no
/// such Bearer header (or its key is empty, as the real child's
/// `if not api_key` fallback has it) is `X-API-Key` consulted.
pub fn accepted(keys: &[String], authorization: Option<&str>, x_api_key: Option<&str>) -> bool {
    if keys.is_empty() {
        return true;
    }
    let bearer = authorization
        .and_then(|a| a.strip_prefix("Bearer "))
        .filter(|k| !k.is_empty());
    let candidate = match bearer {
        Some(k) => Some(k),
        None => x_api_key.filter(|k| !k.is_empty()),
    };
    candidate.is_some_and(|k| keys.iter().any(|good| good == k))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rule_table() {
        let keys = parse("first-key\n\n  second-key  \n");
        assert_eq!(keys, vec!["first-key", "second-key"]);
        let table: &[(Option<&str>, Option<&str>, bool)] = &[
            (None, None, false),
            (Some("Bearer first-key"), None, true),
            (Some("Bearer second-key"), None, true),
            (Some("bearer first-key"), None, false),
            (Some("BEARER first-key"), None, false),
            (Some("Bearer  first-key"), None, false),
            (Some("Bearerfirst-key"), None, false),
            (Some("Bearer wrong"), None, false),
            (Some("Bearer wrong"), Some("first-key"), false),
            (Some("Bearer first-key"), Some("wrong"), true),
            (None, Some("first-key"), true),
            (None, Some("wrong"), false),
            (None, Some(""), false),
            (Some("Basic Zm9v"), Some("second-key"), true),
            (Some("bearer first-key"), Some("second-key"), true),
            (Some("Bearer "), Some("first-key"), true),
            (Some("first-key"), None, false),
        ];
        for (auth, x, want) in table {
            assert_eq!(accepted(&keys, *auth, *x), *want, "{auth:?} {x:?}");
        }
        assert!(accepted(&[], None, None), "no keys, no check");
        assert!(accepted(&[], Some("Bearer x"), None));
    }

    #[test]
    fn file_rules() {
        let dir = std::env::temp_dir().join(format!("aisp-testchild-keys-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let named = dir.join("named.txt");
        fs::write(&named, "k1\n").unwrap();
        let got = load(named.to_str(), Path::new("/nonexistent")).unwrap();
        assert_eq!(got.keys, vec!["k1"]);
        assert!(load(Some("/nonexistent/key.txt"), &dir).is_err());
        // Fallback: key.txt in the working directory, missing means none.
        assert_eq!(load(None, &dir).unwrap().keys, Vec::<String>::new());
        fs::write(dir.join("key.txt"), "k2\n").unwrap();
        assert_eq!(load(None, &dir).unwrap().keys, vec!["k2"]);
        assert_eq!(load(Some(""), &dir).unwrap().keys, vec!["k2"]);
        fs::remove_dir_all(&dir).unwrap();
    }
}
