//! What reaches a child's environment, decided in one place.
//!
//! A child is started with an explicit environment built from the
//! coordinator's own, minus the coordinator's secrets and settings that a
//! browser has no business holding:
//! - every `AWS_*` variable (keys, session tokens, the container and
//!   web-identity credential variables, profile and config file selectors,
//!   regions and endpoints);
//! - every admin setting (`ADMIN_*`: the key, its file, the socket path);
//! - every notification setting (`NOTIFY_*`: the webhook URL holds its
//!   token, or names the file that does);
//! - `PROFILE_PROXIES_FILE` (every account's proxy credentials; a child gets
//!   its own proxy alone, below) and `LOCAL_PROFILE_DIR` (every account's
//!   profile; a child is handed its own);
//! - the S3 settings (`AUTH_PROFILE_S3_*`);
//! - `AUTH_KEY_FILE_PATH` and our own tag variable, which are set anew.
//!
//! The coordinator's own environment is out of a child's reach too: the
//! coordinator makes itself non-dumpable at start (`harden`), so
//! `/proc/<coordinator>/environ` and its memory cannot be read by a
//! process of the same user.
//!
//! Everything else passes through unchanged: operators configure the
//! browser's proxy (`HTTP_PROXY`, `HTTPS_PROXY`, ...) and the child's own
//! logging this way. Then these are set: `AUTH_KEY_FILE_PATH` when the
//! coordinator has a key file (hydrated, or the operator's own), the child
//! tag (see `tree`), and `AUTO_ROTATE_AUTH_PROFILE=false` and
//! `AUTO_AUTH_ROTATION_ON_STARTUP=false` unless the operator set them: the
//! coordinator owns rotation.
//!
//! A profile with a proxy of its own (`PROFILE_PROXIES_FILE`, see
//! `outbound`) gets it in exactly the variables the child reads for its
//! browser's traffic, replacing whatever the coordinator inherited:
//! `UNIFIED_PROXY_CONFIG` (read first, by the launcher and the stream proxy
//! the browser goes through), then `HTTP_PROXY` and `HTTPS_PROXY` (read when
//! the former is unset, and by the server for Playwright when the stream
//! proxy is off). Only that child's environment holds it.

use std::ffi::OsString;
use std::path::Path;

use super::tree;

/// Variables removed from what the coordinator passes on.
const WITHHELD: &[&str] = &[
    "AUTH_KEY_FILE_PATH",
    "PROFILE_PROXIES_FILE",
    "LOCAL_PROFILE_DIR",
    tree::VAR,
];
/// Prefixes of withheld variables.
const WITHHELD_PREFIXES: &[&str] = &["AWS_", "AUTH_PROFILE_S3_", "ADMIN_", "NOTIFY_"];
/// What the child reads for its browser's proxy, in its order of precedence.
pub const PROXY_VARS: &[&str] = &["UNIFIED_PROXY_CONFIG", "HTTP_PROXY", "HTTPS_PROXY"];
/// Set for the child unless the operator chose otherwise.
const DEFAULTS: &[(&str, &str)] = &[
    ("AUTO_ROTATE_AUTH_PROFILE", "false"),
    ("AUTO_AUTH_ROTATION_ON_STARTUP", "false"),
];

/// Make this process non-dumpable (`PR_SET_DUMPABLE` 0): processes of the
/// same user, our children among them, can then neither read its
/// `/proc/<pid>/environ` or memory nor attach to it. Children are not
/// affected (`execve` makes them dumpable again). Returns the error, if
/// any, for the caller to log.
pub fn harden() -> Result<(), std::io::Error> {
    // SAFETY: prctl(PR_SET_DUMPABLE, 0) takes no pointers and only changes
    // this process's dumpable flag.
    let r = unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

pub fn withheld(name: &str) -> bool {
    WITHHELD.contains(&name) || WITHHELD_PREFIXES.iter().any(|p| name.starts_with(p))
}

/// The whole environment of one child, from the coordinator's `parent`;
/// `proxy` is its profile's own proxy URL, when it has one.
pub fn for_child(
    parent: impl IntoIterator<Item = (OsString, OsString)>,
    key_file: Option<&Path>,
    tag: &str,
    proxy: Option<&str>,
) -> Vec<(OsString, OsString)> {
    let mut env: Vec<(OsString, OsString)> = parent
        .into_iter()
        .filter(|(k, _)| !k.to_str().is_some_and(withheld))
        .filter(|(k, _)| proxy.is_none() || !k.to_str().is_some_and(|k| PROXY_VARS.contains(&k)))
        .collect();
    if let Some(url) = proxy {
        env.extend(PROXY_VARS.iter().map(|v| (v.into(), url.into())));
    }
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
                ("ADMIN_KEY_FILE", "/a"),
                ("NOTIFY_WEBHOOK_URL", "https://hooks/T/secret"),
                ("NOTIFY_WEBHOOK_URL_FILE", "/n"),
                ("PROFILE_PROXIES_FILE", "/p"),
                ("LOCAL_PROFILE_DIR", "/profiles"),
                ("AUTH_PROFILE_S3_BUCKET", "b"),
                ("AUTH_KEY_FILE_PATH", "/missing"),
                ("AISTUDIOPROXY_CHILD", "forged"),
                ("HTTPS_PROXY", "http://proxy:3128"),
                ("PATH", "/bin"),
                ("AUTO_ROTATE_AUTH_PROFILE", "true"),
            ]),
            Some(Path::new("/cache/key.txt")),
            "o/r/0/1",
            None,
        );
        for gone in [
            "AWS_ACCESS_KEY_ID",
            "AWS_SECRET_ACCESS_KEY",
            "AWS_SESSION_TOKEN",
            "AWS_CONTAINER_CREDENTIALS_FULL_URI",
            "AWS_WEB_IDENTITY_TOKEN_FILE",
            "ADMIN_KEY",
            "ADMIN_KEY_FILE",
            "NOTIFY_WEBHOOK_URL",
            "NOTIFY_WEBHOOK_URL_FILE",
            "PROFILE_PROXIES_FILE",
            "LOCAL_PROFILE_DIR",
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

    /// In a forked copy of the test process, so the test binary itself
    /// stays dumpable; the child only calls prctl and _exit.
    #[test]
    fn harden_makes_the_process_non_dumpable() {
        // SAFETY: fork in a test; the child calls only async-signal-safe
        // functions (prctl, _exit) on the success path.
        unsafe {
            let pid = libc::fork();
            assert!(pid >= 0);
            if pid == 0 {
                let ok = harden().is_ok() && libc::prctl(libc::PR_GET_DUMPABLE, 0, 0, 0, 0) == 0;
                libc::_exit(if ok { 0 } else { 1 });
            }
            let mut status = 0;
            assert_eq!(libc::waitpid(pid, &mut status, 0), pid);
            assert!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0);
            assert_eq!(libc::prctl(libc::PR_GET_DUMPABLE, 0, 0, 0, 0), 1);
        }
    }

    #[test]
    fn no_key_file_means_no_key_variable() {
        let env = for_child(parent(&[("AUTH_KEY_FILE_PATH", "/x")]), None, "t", None);
        assert_eq!(get(&env, "AUTH_KEY_FILE_PATH"), None);
    }

    #[test]
    fn a_profile_proxy_replaces_the_inherited_ones_and_nothing_else() {
        let inherited = parent(&[
            ("HTTP_PROXY", "http://fleet:3128"),
            ("UNIFIED_PROXY_CONFIG", "http://fleet:3128"),
            ("NO_PROXY", "localhost"),
            ("https_proxy", "http://lower:3128"),
        ]);
        let own = "http://u:p@10.0.0.5:3128";
        let env = for_child(inherited.clone(), None, "t", Some(own));
        for v in PROXY_VARS {
            assert_eq!(get(&env, v), Some(own), "{v}");
        }
        assert_eq!(get(&env, "NO_PROXY"), Some("localhost"));
        assert_eq!(get(&env, "https_proxy"), Some("http://lower:3128"));
        let names: Vec<_> = env.iter().map(|(k, _)| k.clone()).collect();
        let mut dedup = names.clone();
        dedup.sort();
        dedup.dedup();
        assert_eq!(names.len(), dedup.len(), "each variable once");
        // Without a proxy of its own, the child keeps what it inherited.
        let env = for_child(inherited, None, "t", None);
        assert_eq!(get(&env, "HTTP_PROXY"), Some("http://fleet:3128"));
        assert_eq!(get(&env, "HTTPS_PROXY"), None);
    }
}
