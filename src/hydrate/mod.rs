//! Hydration: turns a profile source (a local directory or an S3 prefix) into
//! a complete, validated set of profiles staged under
//! `AUTH_PROFILE_CACHE_DIR/active`, plus `key.txt` beside it.
//!
//! Runs on the main thread before anything else starts (downloads fan out to
//! a bounded set of scoped threads). The staged set replaces the previous one
//! only when every profile was fetched; profiles that are not valid JSON are
//! named and left out. Profile contents are credentials: they are never
//! logged, and every file is written owner-only.

pub mod cond;
mod local;
mod s3;
mod stage;
mod wire;

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::RecvTimeoutError;
use log::{info, warn};

use crate::config::{Backend, Config, S3Settings};

/// One hydrated profile: its name (the file stem) and its staged file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Profile {
    pub name: String,
    pub path: PathBuf,
}

impl Profile {
    /// The fingerprint of the profile file's content now (see
    /// `book::login`); None when it cannot be read.
    pub fn fingerprint(&self) -> Option<u64> {
        std::fs::read(&self.path)
            .ok()
            .map(|b| crate::book::login::fingerprint(&b))
    }

    /// What the file says of its login now: its fingerprint, and why it
    /// cannot log in when every Google session cookie it has expired.
    pub fn login(&self) -> Option<LoginFacts> {
        let bytes = std::fs::read(&self.path).ok()?;
        let expired = match crate::book::login::session(&bytes, std::time::SystemTime::now()) {
            crate::book::login::Session::Expired { count } => Some(format!(
                "its {count} Google session cookies have all expired"
            )),
            _ => None,
        };
        Some(LoginFacts {
            profile: self.name.clone(),
            fingerprint: crate::book::login::fingerprint(&bytes),
            expired,
        })
    }
}

/// What one profile file says of its login (read outside any lock).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoginFacts {
    pub profile: String,
    pub fingerprint: u64,
    /// Why it cannot log in, when its session cookies all expired.
    pub expired: Option<String>,
}

/// The login facts of `profiles` that can be read.
pub fn login_facts(profiles: &[Profile]) -> Vec<LoginFacts> {
    profiles.iter().filter_map(Profile::login).collect()
}

/// What hydration produced; `--hydrate-only` prints it as JSON.
#[derive(Debug, Clone)]
pub struct Hydrated {
    pub profiles_dir: PathBuf,
    pub key_file: Option<PathBuf>,
    pub profiles: Vec<Profile>,
    /// Names left out because they were not valid JSON.
    pub skipped: Vec<String>,
    /// What each staged profile (by name) held when it came from its
    /// source: the base a write-back compares against and conditions on.
    pub bases: BTreeMap<String, Base>,
}

/// One profile as its source had it at hydration.
#[derive(Clone, PartialEq, Eq)]
pub struct Base {
    /// The bytes fetched (and staged).
    pub content: Arc<[u8]>,
    /// The object's ETag when it came from S3 and the answer carried one;
    /// None for local files and for a cached set adopted without S3.
    pub etag: Option<String>,
}

/// Credentials: shows the size, never the content.
impl fmt::Debug for Base {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Base")
            .field("bytes", &self.content.len())
            .field("etag", &self.etag)
            .finish()
    }
}

impl Hydrated {
    /// The hydrated profiles' names.
    pub fn names(&self) -> Vec<String> {
        self.profiles.iter().map(|p| p.name.clone()).collect()
    }

    pub fn summary_json(&self) -> serde_json::Value {
        serde_json::json!({
            "profiles_dir": self.profiles_dir,
            "key_file": self.key_file,
            "profiles": self.profiles.len(),
        })
    }
}

/// Why hydration failed; each renders as one line that names the fix.
#[derive(Debug)]
pub enum HydrateError {
    /// The source holds no usable profile.
    NoProfiles { location: String },
    /// The source could not be read; `offline` marks failures to reach it at
    /// all (a cached set may then be used).
    Source { message: String, offline: bool },
    /// A source entry whose name would escape the cache directory.
    UnsafeName { name: String },
    /// The cache directory could not be written.
    Cache {
        path: PathBuf,
        source: std::io::Error,
    },
}

impl fmt::Display for HydrateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HydrateError::NoProfiles { location } => write!(f, "No auth profiles found {location}"),
            HydrateError::Source { message, .. } => f.write_str(message),
            HydrateError::UnsafeName { name } => write!(
                f,
                "refusing profile object {name:?}: its name would escape the cache directory; rename it to a plain <name>.json"
            ),
            HydrateError::Cache { path, source } => write!(
                f,
                "cannot write {}: {source}; make AUTH_PROFILE_CACHE_DIR writable by this user",
                path.display()
            ),
        }
    }
}

impl std::error::Error for HydrateError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            HydrateError::Cache { source, .. } => Some(source),
            _ => None,
        }
    }
}

/// A place profiles come from. `Sync` because downloads run in parallel.
pub trait Source: Sync {
    /// Where profiles are looked for, for messages: "in <dir>" or "under s3://b/p/active/".
    fn location(&self) -> String;
    /// Where the key file is looked for, for messages.
    fn key_location(&self) -> String;
    /// File names (`<name>.json`) of the profiles, as the source spells them.
    fn list(&self) -> Result<Vec<String>, HydrateError>;
    /// The bytes of one profile listed by `list`.
    fn fetch(&self, name: &str) -> Result<Vec<u8>, HydrateError>;
    /// `fetch`, with the version tag (S3 ETag) of what was fetched, where
    /// the source has one.
    fn fetch_versioned(&self, name: &str) -> Result<(Vec<u8>, Option<String>), HydrateError> {
        Ok((self.fetch(name)?, None))
    }
    /// The key file's bytes, or None when the source has none.
    fn key_file(&self) -> Result<Option<Vec<u8>>, HydrateError>;
    /// How many fetches may run at once.
    fn parallelism(&self) -> usize {
        1
    }
}

/// A client for conditional writes to the configured S3 profile prefix
/// (write-back), whose requests each give up after `timeout`.
pub fn s3_store(s3: &S3Settings, timeout: Duration) -> Result<cond::Store, HydrateError> {
    s3::S3Source::new(s3)?.cond_store(timeout)
}

/// A client for the profile leases below `<prefix>/leases/`.
pub fn s3_lease_store(s3: &S3Settings, timeout: Duration) -> Result<cond::Store, HydrateError> {
    Ok(s3_store(s3, timeout)?.beside("leases"))
}

/// Hydrate from S3 with fixed credentials, and a conditional-write client
/// for the same prefix: what `hydrate` and `s3_store` do, for unit tests.
#[cfg(test)]
pub fn hydrate_s3_with(
    s3: &S3Settings,
    credentials: ::s3::creds::Credentials,
    cache_dir: &Path,
    timeout: Duration,
) -> Result<(Hydrated, cond::Store), HydrateError> {
    let source = self::s3::S3Source::with_credentials(s3, credentials)?;
    let hydrated = hydrate_from(&source, cache_dir)?;
    Ok((hydrated, source.cond_store(timeout)?))
}

/// `s3_store` with fixed credentials, for unit tests.
#[cfg(test)]
pub fn s3_store_with(
    s3: &S3Settings,
    credentials: ::s3::creds::Credentials,
    timeout: Duration,
) -> Result<cond::Store, HydrateError> {
    self::s3::S3Source::with_credentials(s3, credentials)?.cond_store(timeout)
}

/// Hydrate from the configured backend into the cache directory.
pub fn hydrate(cfg: &Config) -> Result<Hydrated, HydrateError> {
    let active = cfg.cache_dir.join("active");
    match cfg.backend {
        Backend::Local => {
            // The container entrypoint hydrates first, then points the
            // coordinator at the staged directory itself: use it in place.
            if same_dir(&cfg.local_profile_dir, &active) {
                return stage::adopt(&cfg.cache_dir, None);
            }
            hydrate_from(
                &local::LocalDir::new(&cfg.local_profile_dir),
                &cfg.cache_dir,
            )
        }
        Backend::S3 => {
            let source = s3::S3Source::new(&cfg.s3)?;
            match hydrate_from(&source, &cfg.cache_dir) {
                Err(HydrateError::Source {
                    message,
                    offline: true,
                }) => {
                    let cached = stage::adopt(&cfg.cache_dir, Some(&message)).map_err(|_| {
                        HydrateError::Source {
                            message: format!(
                                "{message}; no usable cached profiles in {} either",
                                active.display()
                            ),
                            offline: true,
                        }
                    })?;
                    warn!(
                        "S3 unreachable ({message}); starting from the {} profiles cached in {} by an earlier run",
                        cached.profiles.len(),
                        cached.profiles_dir.display()
                    );
                    Ok(cached)
                }
                other => other,
            }
        }
    }
}

/// Hydrate again for a reload: like `hydrate`, but a source that cannot be
/// reached is an error (the running set stays) instead of a fallback to the
/// cache, which is what already runs.
pub fn rehydrate(cfg: &Config) -> Result<Hydrated, HydrateError> {
    let active = cfg.cache_dir.join("active");
    match cfg.backend {
        Backend::Local if same_dir(&cfg.local_profile_dir, &active) => {
            stage::adopt(&cfg.cache_dir, None)
        }
        Backend::Local => hydrate_from(
            &local::LocalDir::new(&cfg.local_profile_dir),
            &cfg.cache_dir,
        ),
        Backend::S3 => hydrate_from(&s3::S3Source::new(&cfg.s3)?, &cfg.cache_dir),
    }
}

fn same_dir(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}

/// A profile file name is a plain `<stem>.json`: no separators, no dot-dot,
/// not hidden, so it can only ever land inside the cache directory.
pub fn check_name(name: &str) -> Result<(), HydrateError> {
    let stem = name.strip_suffix(".json").unwrap_or("");
    let plain = !stem.is_empty()
        && !name.starts_with('.')
        && !name.contains(['/', '\\', '\0'])
        && name != ".."
        && !stem.chars().any(char::is_control);
    if plain {
        Ok(())
    } else {
        Err(HydrateError::UnsafeName {
            name: name.to_string(),
        })
    }
}

/// Fetch every listed profile (in parallel where the source allows), validate
/// it, stage it, and swap the staged set in only when all fetches succeeded.
pub fn hydrate_from(source: &dyn Source, cache_dir: &Path) -> Result<Hydrated, HydrateError> {
    let started = Instant::now();
    let mut names = source.list()?;
    names.sort();
    names.dedup();
    for name in &names {
        check_name(name)?;
    }
    if names.is_empty() {
        return Err(HydrateError::NoProfiles {
            location: source.location(),
        });
    }
    info!("found {} profiles {}", names.len(), source.location());

    let staging = stage::Staging::create(cache_dir)?;
    let results = fetch_all(source, &names)?;
    let mut staged = Vec::new();
    let mut skipped = Vec::new();
    let mut bases = BTreeMap::new();
    for (name, (bytes, etag)) in names.iter().zip(results) {
        if let Err(e) = serde_json::from_slice::<serde::de::IgnoredAny>(&bytes) {
            warn!(
                "profile {name} {} is not valid JSON ({}), leaving it out",
                source.location(),
                e.classify_name()
            );
            skipped.push(name.clone());
            continue;
        }
        staging.write(name, &bytes)?;
        staged.push(name.clone());
        bases.insert(
            name.trim_end_matches(".json").to_string(),
            Base {
                content: bytes.into(),
                etag,
            },
        );
    }
    if staged.is_empty() {
        return Err(HydrateError::NoProfiles {
            location: format!("{} (every profile was invalid JSON)", source.location()),
        });
    }
    let key = source.key_file()?;
    match &key {
        Some(_) => info!(
            "key file {} found; API keys are enforced",
            source.key_location()
        ),
        None => info!(
            "no key file at {}; API key checks are disabled",
            source.key_location()
        ),
    }
    let mut hydrated = staging.commit(key.as_deref(), skipped)?;
    hydrated.bases = bases;
    info!(
        "hydrated {} profiles ({} left out) into {} in {:.2?}",
        hydrated.profiles.len(),
        hydrated.skipped.len(),
        hydrated.profiles_dir.display(),
        started.elapsed()
    );
    Ok(hydrated)
}

trait ClassifyName {
    fn classify_name(&self) -> &'static str;
}

impl ClassifyName for serde_json::Error {
    /// The error's category only: its message could quote profile content.
    fn classify_name(&self) -> &'static str {
        match self.classify() {
            serde_json::error::Category::Io => "read error",
            serde_json::error::Category::Syntax => "syntax error",
            serde_json::error::Category::Data => "data error",
            serde_json::error::Category::Eof => "truncated",
        }
    }
}

/// Fetch all names with at most `source.parallelism()` threads, in name
/// order, logging progress every few seconds. The first failure wins.
type Fetched = (Vec<u8>, Option<String>);

fn fetch_all(source: &dyn Source, names: &[String]) -> Result<Vec<Fetched>, HydrateError> {
    let threads = source.parallelism().clamp(1, names.len());
    let (job_tx, job_rx) = crossbeam_channel::unbounded::<usize>();
    let (res_tx, res_rx) = crossbeam_channel::unbounded();
    for i in 0..names.len() {
        let _ = job_tx.send(i);
    }
    drop(job_tx);
    std::thread::scope(|scope| {
        for t in 0..threads {
            let job_rx = job_rx.clone();
            let res_tx = res_tx.clone();
            std::thread::Builder::new()
                .name(format!("hydrate-{t}"))
                .spawn_scoped(scope, move || {
                    for i in job_rx.iter() {
                        let r = source.fetch_versioned(&names[i]);
                        let failed = r.is_err();
                        if res_tx.send((i, r)).is_err() || failed {
                            break;
                        }
                    }
                })
                .map_err(|e| HydrateError::Source {
                    message: format!("cannot start a download thread: {e}"),
                    offline: false,
                })?;
        }
        drop(res_tx);
        let mut out: Vec<Option<Fetched>> = vec![None; names.len()];
        let mut done = 0usize;
        let mut last_report = Instant::now();
        while done < names.len() {
            match res_rx.recv_timeout(Duration::from_millis(500)) {
                Ok((i, Ok(bytes))) => {
                    out[i] = Some(bytes);
                    done += 1;
                }
                Ok((_, Err(e))) => {
                    // Stop the other workers early: they see an empty queue.
                    while job_rx.try_recv().is_ok() {}
                    return Err(e);
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => {
                    return Err(HydrateError::Source {
                        message: "download threads ended before every profile was fetched".into(),
                        offline: false,
                    })
                }
            }
            if last_report.elapsed() >= Duration::from_secs(3) {
                info!(
                    "hydration progress: {done}/{} profiles downloaded",
                    names.len()
                );
                last_report = Instant::now();
            }
        }
        // Every slot was filled exactly once above.
        Ok(out.into_iter().map(|b| b.unwrap_or_default()).collect())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plain_json_names_are_accepted() {
        for ok in [
            "a.json",
            "profile-b.json",
            "x y.json",
            "..a.json".trim_start_matches('.'),
        ] {
            assert!(check_name(ok).is_ok(), "{ok}");
        }
        for bad in [
            "../a.json",
            "/etc/a.json",
            "a/b.json",
            ".json",
            ".hidden.json",
            "a.txt",
            "a\\b.json",
            "a\n.json",
        ] {
            assert!(check_name(bad).is_err(), "{bad}");
        }
    }
}
