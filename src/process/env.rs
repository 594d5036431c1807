//! What reaches a child's environment, decided in one place.
//!
//! A child is started with an explicit environment built from the
//! coordinator's own, minus the coordinator's secrets and settings that a
//! browser has no business holding:
//! - every `AWS_*` variable (keys, session tokens, the container and
//!   web-identity credential variables, profile and config file selectors,
//!   regions and endpoints);
//! - `ADMIN_KEY` and `ADMIN_KEY_FILE`;
//! - the S3 settings (`AUTH_PROFILE_S3_*`);
//! - `AUTH_KEY_FILE_PATH` and our own tag variable, which are set anew.
//!
//! Everything else passes through unchanged: operators configure the
//! browser's proxy (`HTTP_PROXY`, `HTTPS_PROXY`, ...) and the child's own
//! logging this way. Then these are set: `AUTH_KEY_FILE_PATH` when the
//! coordinator has a key file (hydrated, or the operator's own), the child
//! tag (see `tree`), and `AUTO_ROTATE_AUTH_PROFILE=false` and
//! `AUTO_AUTH_ROTATION_ON_STARTUP=false` unless the operator set them: the
//! coordinator owns rotation.

use std::ffi::OsString;
use std::path::Path;

use super::tree;

/// Variables removed from what the coordinator passes on.
const WITHHELD: &[&str] = &[
    "ADMIN_KEY",
    "ADMIN_KEY_FILE",
    "AUTH_KEY_FILE_PATH",
    tree::VAR,
];
/// Prefixes of withheld variables.
const WITHHELD_PREFIXES: &[&str] = &["AWS_", "AUTH_PROFILE_S3_"];
/// Set for the child unless the operator chose otherwise.
const DEFAULTS: &[(&str, &str)] = &[
    ("AUTO_ROTATE_AUTH_PROFILE", "false"),
    ("AUTO_AUTH_ROTATION_ON_STARTUP", "false"),
];

pub fn withheld(name: &str) -> bool {
    WITHHELD.contains(&name) || WITHHELD_PREFIXES.iter().any(|p| name.starts_with(p))
}

/// The whole environment of one child, from the coordinator's `parent`.
pub fn for_child(
    parent: impl IntoIterator<Item = (OsString, OsString)>,
    key_file: Option<&Path>,
    tag: &str,
) -> Vec<(OsString, OsString)> {
    let mut env: Vec<(OsString, OsString)> = parent
        .into_iter()
        .filter(|(k, _)| !k.to_str().is_some_and(withheld))
        .collect();
    for (name, value) in DEFAULTS {
        if !env.iter().any(|(k, _)| k == name) {
            env.push((name.into(), value.into()));
        }
    }
    if let Some(k) = key_file {
        env.push(("AUTH_KEY_FILE_PATH".into(), k.as_os_str().to_owned()));
    }
    env.push((tree::VAR.into(), tag.into()));
    env
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parent(pairs: &[(&str, &str)]) -> Vec<(OsString, OsString)> {
        pairs.iter().map(|(k, v)| (k.into(), v.into())).collect()
    }

    fn get<'a>(env: &'a [(OsString, OsString)], k: &str) -> Option<&'a str> {
        env.iter()
            .find(|(n, _)| n == k)
            .map(|(_, v)| v.to_str().unwrap())
    }

    #[test]
    fn secrets_stay_and_the_rest_passes() {
        let env = for_child(
            parent(&[
                ("AWS_ACCESS_KEY_ID", "AKIA"),
                ("AWS_SECRET_ACCESS_KEY", "s"),
                ("AWS_SESSION_TOKEN", "t"),
                ("AWS_CONTAINER_CREDENTIALS_FULL_URI", "http://x"),
                ("AWS_WEB_IDENTITY_TOKEN_FILE", "/t"),
                ("ADMIN_KEY", "a"),
                ("AUTH_PROFILE_S3_BUCKET", "b"),
                ("AUTH_KEY_FILE_PATH", "/missing"),
                ("AISTUDIOPROXY_CHILD", "forged"),
                ("HTTPS_PROXY", "http://proxy:3128"),
                ("PATH", "/bin"),
                ("AUTO_ROTATE_AUTH_PROFILE", "true"),
            ]),
            Some(Path::new("/cache/key.txt")),
            "o/r/0/1",
        );
        for gone in [
            "AWS_ACCESS_KEY_ID",
            "AWS_SECRET_ACCESS_KEY",
            "AWS_SESSION_TOKEN",
            "AWS_CONTAINER_CREDENTIALS_FULL_URI",
            "AWS_WEB_IDENTITY_TOKEN_FILE",
            "ADMIN_KEY",
            "AUTH_PROFILE_S3_BUCKET",
        ] {
            assert_eq!(get(&env, gone), None, "{gone} reached the child");
        }
        assert_eq!(get(&env, "HTTPS_PROXY"), Some("http://proxy:3128"));
        assert_eq!(get(&env, "PATH"), Some("/bin"));
        assert_eq!(get(&env, "AUTH_KEY_FILE_PATH"), Some("/cache/key.txt"));
        assert_eq!(get(&env, "AISTUDIOPROXY_CHILD"), Some("o/r/0/1"));
        assert_eq!(
            get(&env, "AUTO_ROTATE_AUTH_PROFILE"),
            Some("true"),
            "the operator's choice stays"
        );
        assert_eq!(get(&env, "AUTO_AUTH_ROTATION_ON_STARTUP"), Some("false"));
        let names: Vec<_> = env.iter().map(|(k, _)| k).collect();
        let mut dedup = names.clone();
        dedup.dedup();
        assert_eq!(names.len(), dedup.len(), "each variable once");
    }

    #[test]
    fn no_key_file_means_no_key_variable() {
        let env = for_child(parent(&[("AUTH_KEY_FILE_PATH", "/x")]), None, "t");
        assert_eq!(get(&env, "AUTH_KEY_FILE_PATH"), None);
    }
}
