//! Write-back: keeps logins alive by carrying the auth state a child
//! refreshed back to the profile's source (S3, or with `AUTH_WRITEBACK=all`
//! a local directory), so the next hydration and the next start use it.
//!
//! What it owns:
//! - [`WorkingCopy`]: one private file per child start,
//!   `AUTH_PROFILE_CACHE_DIR/running/<profile>.<start>/<profile>.json` (dirs 0700, file
//!   0600), given to the child as `--active-auth-json`. The child rewrites it
//!   (truncate-and-write, so it may be read half-written); hydration never
//!   touches `running/` (it only swaps `active/` and removes its own
//!   `.staging-*` directories), and the staged set never sees a child's
//!   write. Removed on [`WorkingCopy::finish`] or drop.
//! - [`WriteBack`]: shared by every slot's watcher (cheap to clone). Per
//!   profile it remembers the base (what the source holds as far as we
//!   know: content and S3 ETag), the outcome counters ([`Stats`]), and which
//!   skip reasons were already logged (each once per profile and run).
//!
//! Who calls what, and when: the slot watcher creates a copy with
//! [`WriteBack::start`] before it spawns the child, calls
//! [`WorkingCopy::tick`] every `AUTH_WRITEBACK_INTERVAL_S` while the child
//! runs and [`WorkingCopy::on_stop`] once the child has exited, then drops
//! the copy. Each returns an [`Outcome`] within [`DEADLINE`]: the read and
//! the decision run on the caller's thread (a local file read), the upload
//! on a short-lived named worker thread; a worker that outlives the deadline
//! (a black-holed endpoint: attohttpc's connect timeout is 30 s and cannot
//! be set through rust-s3) finishes in the background and still records its
//! result; the next call for that copy waits for it within its own
//! deadline (so `on_stop` still gets the child's last state out when it
//! can), then says it is busy.
//!
//! Never: upload a copy that is not valid JSON or not a profile; overwrite a
//! source that changed since we read it (S3 `If-Match`, local content
//! compare; the changed source wins and this start writes no more); log
//! profile content; hold a lock across I/O.

mod decide;
mod local;

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, OpenOptions};
use std::io::{ErrorKind, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use log::{debug, info, warn};

pub use decide::{decide, Decision, Invalid, MAX_PROFILE_BYTES};

use crate::config::{Backend, Config, WritebackMode};
use crate::hydrate::cond::{CondError, Store};
use crate::hydrate::{Base, Hydrated, Profile};

/// Deadline of one S3 request of a write-back.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(3);
/// Longest a `tick` or `on_stop` keeps its caller.
pub const DEADLINE: Duration = Duration::from_secs(5);

/// What one write-back attempt did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The copy went to the source; it is the base from now on.
    Written,
    /// Nothing new in the copy.
    Unchanged,
    /// The copy is not uploadable (a child mid-write, or not a profile);
    /// looked at again next time.
    Invalid(Invalid),
    /// The source changed since this start read it (an operator's upload or
    /// edit, or the profile was removed): the source's version is kept and
    /// used at the next start; this start writes back no more.
    Conflict,
    /// Could not write now (store unreachable, I/O error, still busy);
    /// tried again next time.
    Failed(String),
    /// Write-back is off: by `AUTH_WRITEBACK`, for this backend, or because
    /// the store refused writes (403) earlier in this run.
    Disabled,
}

impl Outcome {
    /// One fixed word, for metrics labels.
    pub fn kind(&self) -> &'static str {
        match self {
            Outcome::Written => "written",
            Outcome::Unchanged => "unchanged",
            Outcome::Invalid(_) => "invalid",
            Outcome::Conflict => "conflict",
            Outcome::Failed(_) => "failed",
            Outcome::Disabled => "disabled",
        }
    }

    /// A short label for status.
    pub fn label(&self) -> String {
        match self {
            Outcome::Written => "written".into(),
            Outcome::Unchanged => "unchanged".into(),
            Outcome::Invalid(why) => format!("invalid: {why}"),
            Outcome::Conflict => "conflict".into(),
            Outcome::Failed(why) => format!("failed: {why}"),
            Outcome::Disabled => "disabled".into(),
        }
    }
}

/// Per-profile counters, for status and metrics.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Stats {
    /// Wall-clock ms of the last attempt, and what it did.
    pub last_unix_ms: Option<u64>,
    pub last_outcome: Option<String>,
    /// Wall-clock ms of the last successful write-back.
    pub last_written_unix_ms: Option<u64>,
    pub written: u64,
    pub conflicts: u64,
    pub failed: u64,
}

/// Where refreshed profiles go.
pub enum Target {
    /// Nowhere; the reason, for the one log line at start.
    Off(String),
    /// Conditional PUTs below `<prefix>/active/`.
    S3(Store),
    /// Atomic replaces in this directory (`LOCAL_PROFILE_DIR`).
    Local(PathBuf),
}

/// Shared write-back state; clone it into every watcher.
#[derive(Clone)]
pub struct WriteBack {
    inner: Arc<Inner>,
}

struct Inner {
    target: Target,
    /// `AUTH_PROFILE_CACHE_DIR/running`.
    running: PathBuf,
    /// `AUTH_WRITEBACK_INTERVAL_S`.
    interval: Duration,
    /// Set by the first 403 on a write: no more attempts this run.
    denied: AtomicBool,
    /// Numbers each base learned from the source during the run (a write,
    /// or a newer version found by a refused one); see `mark`.
    learned: AtomicU64,
    /// Profile name -> its entry. Locked only to read or update one entry,
    /// never across I/O: the watchers of all slots share it.
    profiles: Mutex<BTreeMap<String, Entry>>,
}

struct Entry {
    /// Newest content known to be at the source; a new start copies it.
    base: Base,
    stats: Stats,
    /// Skip and failure reasons already logged for this profile.
    logged: BTreeSet<&'static str>,
    /// The `learned` number of `base` (0: from a hydration).
    learned_at: u64,
}

impl Entry {
    fn new(base: Base) -> Entry {
        Entry {
            base,
            stats: Stats::default(),
            logged: BTreeSet::new(),
            learned_at: 0,
        }
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl WriteBack {
    /// From the configuration and what hydration produced. Never fails: a
    /// store that cannot be set up turns write-back off with one warning.
    pub fn new(cfg: &Config, hydrated: &Hydrated) -> WriteBack {
        let target = match (cfg.writeback, cfg.backend) {
            (WritebackMode::Off, _) => Target::Off("AUTH_WRITEBACK=off".into()),
            (WritebackMode::S3, Backend::Local) => {
                Target::Off("local profiles are written back only with AUTH_WRITEBACK=all".into())
            }
            (WritebackMode::All, Backend::Local) => Target::Local(cfg.local_profile_dir.clone()),
            (_, Backend::S3) => match crate::hydrate::s3_store(&cfg.s3, REQUEST_TIMEOUT) {
                Ok(store) => Target::S3(store),
                Err(e) => {
                    warn!("write-back is off: cannot set up the S3 client: {e}");
                    Target::Off(format!("the S3 client could not be set up ({e})"))
                }
            },
        };
        WriteBack::with_target(target, &cfg.cache_dir, hydrated, cfg.writeback_interval)
    }

    /// With an explicit target (tests, and `new`). Removes working copies
    /// an earlier run left in `running/`: create one per run, before any
    /// child starts (after a new hydration, call `rebase` instead).
    pub fn with_target(
        target: Target,
        cache_dir: &Path,
        hydrated: &Hydrated,
        interval: Duration,
    ) -> WriteBack {
        let running = cache_dir.join("running");
        sweep(&running);
        match &target {
            Target::Off(why) => info!("auth write-back is off: {why}"),
            Target::S3(store) => info!(
                "refreshed auth state is written back to {} (If-Match on the hydrated ETag)",
                store.location()
            ),
            Target::Local(dir) => info!(
                "refreshed auth state is written back to {} (atomic replace, only over the hydrated content)",
                dir.display()
            ),
        }
        let profiles = hydrated
            .bases
            .iter()
            .map(|(name, base)| (name.clone(), Entry::new(base.clone())))
            .collect();
        WriteBack {
            inner: Arc::new(Inner {
                target,
                running,
                interval,
                denied: AtomicBool::new(false),
                learned: AtomicU64::new(0),
                profiles: Mutex::new(profiles),
            }),
        }
    }

    /// Where the run's knowledge of its sources stands; take it before a
    /// new hydration starts reading and give it to `rebase`.
    pub fn mark(&self) -> u64 {
        self.inner.learned.load(Ordering::SeqCst)
    }

    /// Adopt the bases of a new hydration (the source is authoritative),
    /// except where a write-back learned a newer base after `since` (the
    /// `mark` taken before that hydration read anything): the hydration
    /// may have read the object before our write, and adopting it would
    /// start the next child on the older login and refuse its write-back
    /// as a conflict with our own. Counters are kept. Copies already
    /// running keep their own base.
    pub fn rebase(&self, hydrated: &Hydrated, since: u64) {
        let mut profiles = self.inner.lock();
        for (name, base) in &hydrated.bases {
            match profiles.get_mut(name) {
                Some(e) if e.learned_at > since => {
                    debug!("profile {name}: keeping the base written back during the reload")
                }
                Some(e) => {
                    e.base = base.clone();
                    e.learned_at = 0;
                }
                None => {
                    profiles.insert(name.clone(), Entry::new(base.clone()));
                }
            }
        }
    }

    /// How often a running child's copy should be ticked.
    pub fn interval(&self) -> Duration {
        self.inner.interval
    }

    /// False when nothing will ever be written back in this run.
    pub fn enabled(&self) -> bool {
        !matches!(self.inner.target, Target::Off(_)) && !self.inner.denied.load(Ordering::Relaxed)
    }

    /// Each profile's counters.
    pub fn stats(&self) -> BTreeMap<String, Stats> {
        self.inner
            .lock()
            .iter()
            .map(|(k, e)| (k.clone(), e.stats.clone()))
            .collect()
    }

    /// The content a new start of `name` gets, if known.
    pub fn base_of(&self, name: &str) -> Option<Base> {
        self.inner.lock().get(name).map(|e| e.base.clone())
    }

    /// A working copy for one start of `profile`, holding the newest
    /// content known for it (what was hydrated, or last written back);
    /// `start` tells starts of the same profile apart (e.g. a counter).
    pub fn start(&self, profile: &Profile, start: u64) -> std::io::Result<WorkingCopy> {
        let base = match self.base_of(&profile.name) {
            Some(b) => b,
            None => {
                // Not hydrated through us (an adopted set): the staged file.
                let base = Base {
                    content: read_capped(&profile.path)?.into(),
                    etag: None,
                };
                self.inner
                    .lock()
                    .entry(profile.name.clone())
                    .or_insert_with(|| Entry::new(base.clone()));
                base
            }
        };
        make_private_dir(&self.inner.running)?;
        // A directory per start keeps the file's own name the profile's:
        // children (the real one, the test child) name the profile after it.
        let dir = self.inner.running.join(format!("{}.{start}", profile.name));
        make_private_dir(&dir)?;
        let path = dir.join(format!("{}.json", profile.name));
        write_private(&path, &base.content)?;
        Ok(WorkingCopy {
            wb: self.clone(),
            profile: profile.name.clone(),
            path,
            shared: Arc::new(CopyShared {
                state: Mutex::new(CopyState {
                    base,
                    settled: false,
                }),
                busy: Mutex::new(false),
                idle: Condvar::new(),
            }),
        })
    }
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, BTreeMap<String, Entry>> {
        // A panic elsewhere cannot leave an entry half-updated: each update
        // is a plain field assignment.
        self.profiles.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Count `outcome` for `name` and log it: events every time, skip and
    /// failure reasons once per profile and run (then at debug; again after
    /// a successful write). True when it logged above debug.
    fn record(&self, name: &str, outcome: &Outcome, when: &str) -> bool {
        let now = now_ms();
        let first = {
            let mut profiles = self.lock();
            let Some(e) = profiles.get_mut(name) else {
                return false;
            };
            e.stats.last_unix_ms = Some(now);
            e.stats.last_outcome = Some(outcome.label());
            match outcome {
                Outcome::Written => {
                    e.stats.written += 1;
                    e.stats.last_written_unix_ms = Some(now);
                    // A new write may follow new trouble: say it again then.
                    e.logged.clear();
                }
                Outcome::Conflict => e.stats.conflicts += 1,
                Outcome::Failed(_) => e.stats.failed += 1,
                _ => {}
            }
            let kind = match outcome {
                Outcome::Unchanged => Some("unchanged"),
                Outcome::Invalid(Invalid::NotJson(_)) => Some("not json"),
                Outcome::Invalid(_) => Some("not a profile"),
                Outcome::Failed(_) => Some("failed"),
                _ => None,
            };
            kind.is_some_and(|k| e.logged.insert(k))
        };
        let said = matches!(outcome, Outcome::Written) || first;
        match outcome {
            Outcome::Written => {
                info!("profile {name}: refreshed auth state written back ({when})")
            }
            Outcome::Unchanged if first => {
                info!("profile {name}: auth state unchanged ({when}); nothing to write back (said once)")
            }
            Outcome::Invalid(why @ Invalid::NotJson(_)) if first => info!(
                "profile {name}: working copy is {why} ({when}), likely mid-write: not uploaded, looked at again next time (said once)"
            ),
            Outcome::Invalid(why) if first => warn!(
                "profile {name}: working copy is {why} ({when}): not uploaded (said once)"
            ),
            Outcome::Failed(why) if first => warn!(
                "profile {name}: write-back failed ({when}): {why}; retried next time (said once until it works)"
            ),
            // Logged where they happen, with what the source holds.
            Outcome::Conflict | Outcome::Disabled => {}
            other => debug!("profile {name}: write-back {} ({when})", other.label()),
        }
        said
    }

    fn set_base(&self, name: &str, base: Base) {
        let mut profiles = self.lock();
        if let Some(e) = profiles.get_mut(name) {
            // Numbered under the lock, so numbers follow the order of updates.
            e.learned_at = self.learned.fetch_add(1, Ordering::SeqCst) + 1;
            e.base = base;
        }
    }

    /// Upload `bytes` over `base` to the target. Runs on a worker thread.
    /// Returns the outcome and, when it wrote, the new base.
    fn write(&self, name: &str, bytes: Vec<u8>, base: &Base) -> (Outcome, Option<Base>) {
        let file = format!("{name}.json");
        match &self.target {
            Target::Off(_) => (Outcome::Disabled, None),
            Target::Local(dir) => {
                let path = dir.join(&file);
                match local::replace_if_unchanged(&path, &base.content, &bytes) {
                    Ok(local::Replace::Done) => (
                        Outcome::Written,
                        Some(Base {
                            content: bytes.into(),
                            etag: None,
                        }),
                    ),
                    Ok(local::Replace::Changed(theirs)) => {
                        warn!(
                            "profile {name}: {} changed since it was hydrated; keeping that version (used at the next start), not this child's refresh",
                            path.display()
                        );
                        self.set_base(
                            name,
                            Base {
                                content: theirs.into(),
                                etag: None,
                            },
                        );
                        (Outcome::Conflict, None)
                    }
                    Ok(local::Replace::Missing) => {
                        warn!(
                            "profile {name}: {} was removed since it was hydrated; not recreating it",
                            path.display()
                        );
                        (Outcome::Conflict, None)
                    }
                    Err(e) => (
                        Outcome::Failed(format!("cannot replace {}: {e}", path.display())),
                        None,
                    ),
                }
            }
            Target::S3(store) => self.write_s3(store, name, &file, bytes, base),
        }
    }

    fn write_s3(
        &self,
        store: &Store,
        name: &str,
        file: &str,
        bytes: Vec<u8>,
        base: &Base,
    ) -> (Outcome, Option<Base>) {
        let url = store.url(file);
        let etag = match &base.etag {
            Some(e) => e.clone(),
            // Adopted from the cache without S3: learn the ETag, and go on
            // only if the object still holds what this start was given.
            None => match store.get_with_etag(file) {
                Ok((current, Some(tag))) if *current == *base.content => tag,
                Ok((current, tag)) => {
                    warn!(
                        "profile {name}: {url} differs from the cached copy this child started from; keeping the bucket's version (used at the next start)"
                    );
                    self.set_base(
                        name,
                        Base {
                            content: current.into(),
                            etag: tag,
                        },
                    );
                    return (Outcome::Conflict, None);
                }
                Err(e) => return self.s3_failure(store, name, &url, e, "s3:GetObject"),
            },
        };
        match store.put_if_match(file, &bytes, &etag) {
            Ok(new_tag) => (
                Outcome::Written,
                Some(Base {
                    content: bytes.into(),
                    etag: new_tag,
                }),
            ),
            Err(e) => self.s3_failure(store, name, &url, e, "s3:PutObject"),
        }
    }

    fn s3_failure(
        &self,
        store: &Store,
        name: &str,
        url: &str,
        e: CondError,
        permission: &str,
    ) -> (Outcome, Option<Base>) {
        let file = format!("{name}.json");
        match e {
            CondError::PreconditionFailed => {
                // Someone (an operator) uploaded in the meantime: theirs
                // wins. Or removed it: a server may answer If-Match on a
                // missing key 412 (s3s-fs does) rather than 404.
                match store.get_with_etag(&file) {
                    Err(CondError::NotFound) => {
                        return self.s3_failure(store, name, url, CondError::NotFound, permission)
                    }
                    Ok((theirs, tag)) => {
                        warn!(
                            "profile {name}: {url} was replaced since it was hydrated; keeping that version (used at the next start), not this child's refresh"
                        );
                        self.set_base(
                            name,
                            Base {
                                content: theirs.into(),
                                etag: tag,
                            },
                        );
                    }
                    Err(e) => warn!(
                        "profile {name}: {url} was replaced since it was hydrated; keeping it, but cannot read it now ({e}): the next start may use the older copy until the next hydration"
                    ),
                }
                (Outcome::Conflict, None)
            }
            CondError::NotFound => {
                warn!("profile {name}: {url} was removed since it was hydrated; not recreating it");
                (Outcome::Conflict, None)
            }
            CondError::Denied { code } => {
                if !self.denied.swap(true, Ordering::Relaxed) {
                    warn!(
                        "S3 denied {permission} on {url} ({code}): write-back needs {permission} on {}*; refreshed logins are not saved, write-back is off for the rest of this run (grant it, or set AUTH_WRITEBACK=off to silence this)",
                        store.location()
                    );
                }
                (Outcome::Disabled, None)
            }
            CondError::Unreachable(why) | CondError::Other(why) => {
                (Outcome::Failed(format!("cannot write {url}: {why}")), None)
            }
        }
    }
}

/// One child start's private profile file.
pub struct WorkingCopy {
    wb: WriteBack,
    profile: String,
    path: PathBuf,
    shared: Arc<CopyShared>,
}

/// Shared between the copy and its (at most one) write-back worker.
struct CopyShared {
    /// Locked only to read or replace the state, never across I/O.
    state: Mutex<CopyState>,
    /// A write-back worker of this copy is running; `idle` is notified
    /// when it ends.
    busy: Mutex<bool>,
    idle: Condvar,
}

struct CopyState {
    /// What the source holds as far as this start knows: what it was
    /// given, then what it last wrote. The compare point and the If-Match.
    base: Base,
    /// A conflict happened: the source has another version, which wins;
    /// this start writes back no more.
    settled: bool,
}

impl CopyShared {
    fn lock(&self) -> MutexGuard<'_, CopyState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn busy_lock(&self) -> MutexGuard<'_, bool> {
        self.busy.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Wait until no worker runs (at most until `until`), then claim the
    /// copy for a new one; None if a worker still runs then.
    fn claim(self: &Arc<Self>, until: Instant) -> Option<BusyGuard> {
        let mut busy = self.busy_lock();
        while *busy {
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            busy = self
                .idle
                .wait_timeout(busy, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        *busy = true;
        Some(BusyGuard(self.clone()))
    }
}

/// Clears `busy` when the worker ends, however it ends.
struct BusyGuard(Arc<CopyShared>);

impl Drop for BusyGuard {
    fn drop(&mut self) {
        *self.0.busy_lock() = false;
        self.0.idle.notify_all();
    }
}

impl WorkingCopy {
    /// What the child gets as `--active-auth-json`.
    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn profile(&self) -> &str {
        &self.profile
    }

    /// Write back if the child refreshed its state; call every
    /// `AUTH_WRITEBACK_INTERVAL_S` while the child runs.
    pub fn tick(&self) -> Outcome {
        self.write_back("periodic check", DEADLINE)
    }

    /// The last write-back of this start; call once the child has exited
    /// (its shutdown write is then complete), before dropping the copy.
    pub fn on_stop(&self) -> Outcome {
        self.write_back("child stopped", DEADLINE)
    }

    /// Remove the file now, reporting a failure (drop ignores it).
    pub fn finish(mut self) -> std::io::Result<()> {
        let path = std::mem::take(&mut self.path);
        match fs::remove_file(&path) {
            Err(e) if e.kind() != ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        match path.parent().map(fs::remove_dir) {
            Some(Err(e)) if e.kind() != ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    fn write_back(&self, when: &'static str, deadline: Duration) -> Outcome {
        let until = Instant::now() + deadline;
        let (guard, bytes, base) = match self.to_write(until) {
            Ok(Some(w)) => w,
            Ok(None) => return Outcome::Conflict,
            Err(o) => {
                self.wb.inner.record(&self.profile, &o, when);
                return o;
            }
        };
        let inner = &self.wb.inner;
        let (tx, rx) = crossbeam_channel::bounded(1);
        let wb = self.wb.clone();
        let shared = self.shared.clone();
        let name = self.profile.clone();
        let spawned = std::thread::Builder::new()
            .name(format!("writeback-{}", self.profile))
            .spawn(move || {
                let _guard = guard;
                let (outcome, new_base) = wb.inner.write(&name, bytes, &base);
                {
                    let mut s = shared.lock();
                    if let Some(b) = &new_base {
                        s.base = b.clone();
                    }
                    if outcome == Outcome::Conflict {
                        s.settled = true;
                    }
                }
                if let Some(b) = new_base {
                    wb.inner.set_base(&name, b);
                }
                wb.inner.record(&name, &outcome, when);
                let _ = tx.send(outcome);
            });
        if let Err(e) = spawned {
            // The closure (and the busy guard in it) was dropped.
            let o = Outcome::Failed(format!("cannot start a write-back thread: {e}"));
            inner.record(&self.profile, &o, when);
            return o;
        }
        match rx.recv_timeout(until.saturating_duration_since(Instant::now())) {
            Ok(o) => o,
            Err(_) => Outcome::Failed(format!(
                "no answer within {deadline:?}; the write-back goes on in the background"
            )),
        }
    }
}

impl WorkingCopy {
    /// What a write-back would send, with the right to send it: None once
    /// an operator's upload settled the profile, Err with the outcome to
    /// record when there is nothing to send.
    fn to_write(&self, until: Instant) -> Result<Option<(BusyGuard, Vec<u8>, Base)>, Outcome> {
        if !self.wb.enabled() {
            return Err(Outcome::Disabled);
        }
        let (base, settled) = {
            let s = self.shared.lock();
            (s.base.clone(), s.settled)
        };
        if settled {
            return Ok(None);
        }
        let Some(guard) = self.shared.claim(until) else {
            return Err(Outcome::Failed(
                "the previous write-back has not finished".into(),
            ));
        };
        let bytes = match read_capped(&self.path) {
            Ok(b) => b,
            Err(e) if e.kind() == ErrorKind::InvalidData => {
                return Err(Outcome::Invalid(Invalid::TooLarge))
            }
            Err(e) => {
                return Err(Outcome::Failed(format!(
                    "cannot read the working copy {}: {e}",
                    self.path.display()
                )))
            }
        };
        match decide(&bytes, &base.content) {
            Decision::Unchanged => Err(Outcome::Unchanged),
            Decision::Invalid(why) => Err(Outcome::Invalid(why)),
            Decision::Write => Ok(Some((guard, bytes, base))),
        }
    }
}

impl Drop for WorkingCopy {
    fn drop(&mut self) {
        if !self.path.as_os_str().is_empty() {
            let _ = fs::remove_file(&self.path);
            if let Some(dir) = self.path.parent() {
                let _ = fs::remove_dir(dir);
            }
        }
    }
}

/// Read at most [`MAX_PROFILE_BYTES`]; more is `InvalidData`.
fn read_capped(path: &Path) -> std::io::Result<Vec<u8>> {
    let mut out = Vec::new();
    fs::File::open(path)?
        .take(MAX_PROFILE_BYTES + 1)
        .read_to_end(&mut out)?;
    if out.len() as u64 > MAX_PROFILE_BYTES {
        return Err(std::io::Error::new(
            ErrorKind::InvalidData,
            "larger than a profile can be",
        ));
    }
    Ok(out)
}

fn make_private_dir(dir: &Path) -> std::io::Result<()> {
    crate::private::make_dir(dir)
}

/// A fresh 0600 file holding `bytes` (a leftover of the same name goes).
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}

/// Remove what an earlier run left in `running/`: copies of children that
/// are gone (credentials should not linger).
fn sweep(running: &Path) {
    let Ok(entries) = fs::read_dir(running) else {
        return;
    };
    let mut n = 0usize;
    for e in entries.flatten() {
        let removed = match e.file_type() {
            Ok(t) if t.is_file() => fs::remove_file(e.path()).is_ok(),
            // One start's directory: its profile file, then itself.
            Ok(t) if t.is_dir() => {
                if let Ok(files) = fs::read_dir(e.path()) {
                    for f in files.flatten() {
                        let _ = fs::remove_file(f.path());
                    }
                }
                fs::remove_dir(e.path()).is_ok()
            }
            _ => false,
        };
        if removed {
            n += 1;
        }
    }
    if n > 0 {
        info!(
            "removed {n} working copies an earlier run left in {}",
            running.display()
        );
    }
}

#[cfg(test)]
mod tests;
