//! Reload without restart: hydrate again from the source (local or S3) into
//! a fresh staging set, swapped in atomically as at start, then apply what
//! changed. New profiles join the back of the rotation queue; removed ones
//! leave it, and a removed one that is running is drained and its slot
//! rotates; a changed one is used at its next start (every child runs on a
//! working copy of its own, so no file changes under a running child); the
//! key file is read again and the edge check uses it at once. A child reads
//! its key file only at start and checks keys itself, so a child started
//! before a key change would refuse a new key the coordinator lets in:
//! when the set of keys changed, every slot drains and restarts its child,
//! and requests wait in the fleet queue meanwhile.
//!
//! `MODEL_BUDGETS_FILE` is read again too; the counts of the day stay.
//!
//! A failed reload (source unreachable, bad credentials, no profiles, an
//! unreadable key file, a malformed `PROFILE_PROXIES_FILE` or
//! `MODEL_BUDGETS_FILE`) changes nothing that runs: one warning, and it
//! counts in the metrics. Triggers: SIGHUP, `ctl reload`, and every
//! `PROFILE_RELOAD_INTERVAL_S` when set; reloads never overlap. The timer
//! and SIGHUP are served by one named thread, stopped by the shutdown
//! channel.

use std::fmt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use crossbeam_channel::{never, select, tick, Receiver};
use log::{info, warn};
use serde::Serialize;
use serde_json::{json, Value};

use crate::book::unix_ms;
use crate::config::Config;
use crate::hydrate;
use crate::metrics;
use crate::outbound::Proxies;
use crate::proxy::keys::Keys;
use crate::proxy::Proxy;
use crate::slot::StopReason;
use crate::supervisor::msg::{Msg, ProfileChanges, Reply};
use crate::supervisor::{Cmd, Handle, Then};
use crate::writeback::WriteBack;

/// What one successful reload did.
#[derive(Debug, Clone, Serialize)]
pub struct ReloadReport {
    pub profiles: usize,
    #[serde(flatten)]
    pub changes: ProfileChanges,
    pub keys: usize,
    /// The set of API keys changed: every child restarts to read it.
    pub keys_changed: bool,
}

impl fmt::Display for ReloadReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "reloaded {} profiles: {} added, {} removed ({} slots draining), {} API keys",
            self.profiles,
            self.changes.added.len(),
            self.changes.removed.len(),
            self.changes.draining.len(),
            self.keys
        )?;
        if self.keys_changed {
            f.write_str(" (changed: every child restarts to read them)")?;
        }
        Ok(())
    }
}

/// How the last reload ended, for `/ready` and `ctl status`.
#[derive(Debug, Clone)]
struct Last {
    at: SystemTime,
    trigger: &'static str,
    result: Result<ReloadReport, String>,
}

pub struct Reloader {
    cfg: Config,
    pool: Handle,
    proxy: Arc<Proxy>,
    writeback: WriteBack,
    /// Each profile's proxy (PROFILE_PROXIES_FILE), read again first.
    proxies: Arc<Proxies>,
    last: Mutex<Option<Last>>,
    /// Held for the whole of one reload: reloads never overlap.
    running: Mutex<()>,
}

impl Reloader {
    pub fn new(
        cfg: &Config,
        pool: Handle,
        proxy: Arc<Proxy>,
        writeback: WriteBack,
        proxies: Arc<Proxies>,
    ) -> Reloader {
        Reloader {
            cfg: cfg.clone(),
            pool,
            proxy,
            writeback,
            proxies,
            last: Mutex::new(None),
            running: Mutex::new(()),
        }
    }

    /// Hydrate again and apply the changes; `trigger` names who asked.
    pub fn reload(&self, trigger: &'static str) -> Result<ReloadReport, String> {
        let _one = self.running.lock().unwrap_or_else(|p| p.into_inner());
        let began = Instant::now();
        let result = self.reload_once();
        let took = began.elapsed();
        match &result {
            Ok(r) => {
                info!("reload ({trigger}): {r} in {took:.1?}");
                crate::events::record(
                    crate::events::Kind::Reload,
                    None,
                    None,
                    format!("{trigger}: {r}"),
                );
                metrics::hydrated("reload", "ok", took, Some(r.profiles));
            }
            Err(e) => {
                warn!("reload ({trigger}) failed, nothing changed: {e}");
                crate::events::record(
                    crate::events::Kind::Reload,
                    None,
                    None,
                    format!("{trigger}: failed, nothing changed: {e}"),
                );
                metrics::hydrated("reload", "failed", took, None);
            }
        }
        *self.last.lock().unwrap_or_else(|p| p.into_inner()) = Some(Last {
            at: SystemTime::now(),
            trigger,
            result: result.clone(),
        });
        result
    }

    fn reload_once(&self) -> Result<ReloadReport, String> {
        // Before anything is read: write-backs from now on are newer than
        // what this hydration may read.
        let since = self.writeback.mark();
        let hydrated = hydrate::rehydrate(&self.cfg).map_err(|e| e.to_string())?;
        // The proxies, checked before any change: a bad file fails the
        // whole reload, so no new profile starts without the proxy meant
        // for it.
        let fresh_proxies = self.proxies.read_again()?;
        // The budgets too: a bad file keeps those in force.
        let budgets = match &self.cfg.budget.models_file {
            Some(f) => crate::budget::plan::Plan::load(f).map_err(|e| e.to_string())?,
            None => Default::default(),
        };
        // The keys first, so a bad key file refuses the reload before any
        // profile change: the hydrated key.txt wins over the operator's file.
        let key_file: Option<PathBuf> = hydrated
            .key_file
            .clone()
            .or_else(|| self.cfg.operator_key_file.clone());
        let keys = Keys::load(key_file.as_deref()).map_err(|e| {
            format!(
                "cannot read the key file {}: {e}",
                key_file
                    .as_deref()
                    .map(|p| p.display().to_string())
                    .unwrap_or_default()
            )
        })?;
        if let Err(e) = crate::proxy::keys::refresh_child_copy(&keys) {
            log::warn!("cannot rewrite the children's key file: {e}");
        }
        let proxies_changed = self.proxies.swap(fresh_proxies);
        self.proxies.note(&hydrated.names());
        if !proxies_changed.is_empty() {
            info!(
                "PROFILE_PROXIES_FILE: the proxy of {} changed; used from each one's next start (ctl restart SLOT applies it now)",
                proxies_changed.join(", ")
            );
        }
        let key_count = keys.len();
        let keys_changed = self.proxy.set_keys(keys);
        self.writeback.rebase(&hydrated, since);
        let profiles = hydrated.profiles.len();
        self.pool.ask(Msg::Budgets(Arc::new(budgets)));
        let facts = hydrate::login_facts(&hydrated.profiles);
        let changes = match self.pool.ask(Msg::Profiles(hydrated.profiles)) {
            Some(Reply::Changes(c)) => c,
            _ => return Err("the supervisor is shutting down".into()),
        };
        // Asked: what the reload changed is seen once it returns.
        self.pool.ask(Msg::ContentSeen(facts));
        if keys_changed {
            for slot in (0..self.pool.size()).filter(|s| !changes.draining.contains(s)) {
                let cmd = Cmd::Drain {
                    generation: None,
                    reason: StopReason::Operator(
                        "the API keys changed: restarting to read them".into(),
                    ),
                    then: Then::Restart,
                };
                self.pool.tell(Msg::Command { slot, cmd });
            }
        }
        Ok(ReloadReport {
            profiles,
            changes,
            keys: key_count,
            keys_changed,
        })
    }

    /// The last reload as JSON (null before the first).
    pub fn last(&self) -> Value {
        let last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        match last.as_ref() {
            None => Value::Null,
            Some(l) => match &l.result {
                Ok(r) => json!({
                    "at_unix_ms": unix_ms(l.at),
                    "trigger": l.trigger,
                    "outcome": "ok",
                    "report": r,
                }),
                Err(e) => json!({
                    "at_unix_ms": unix_ms(l.at),
                    "trigger": l.trigger,
                    "outcome": "failed",
                    "error": e,
                }),
            },
        }
    }
}

/// The thread that reloads on SIGHUP (`hup`) and every `interval`, until
/// `shutdown` closes.
pub fn spawn(
    reloader: Arc<Reloader>,
    hup: Receiver<()>,
    interval: Option<Duration>,
    shutdown: Receiver<()>,
) -> std::io::Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name("reload".into())
        .spawn(move || {
            let timer = interval.map(tick).unwrap_or_else(never);
            loop {
                select! {
                    recv(shutdown) -> _ => return,
                    recv(hup) -> r => {
                        if r.is_err() {
                            return;
                        }
                        let _ = reloader.reload("SIGHUP");
                    }
                    recv(timer) -> _ => {
                        let _ = reloader.reload("interval");
                    }
                }
            }
        })
}
