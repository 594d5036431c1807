//! The leaser thread: the only code that reads or writes lease objects.
//!
//! Every tick (a second, or at once when the supervisor releases a profile) it
//! gives back released leases, renews the ones due (every `ttl / 3`), gives
//! up the ones it could not renew in time (their children are stopped by
//! the supervisor), and, while the supervisor has slots without a leased
//! profile, reads the lease of each profile it could run and takes free or stale
//! ones, preferred ones first (rendezvous hashing over the live replicas).
//! Takes are create-only (`If-None-Match: *`), takeovers and renewals
//! replace-if-unchanged (`If-Match`), releases too (an expired-now
//! document that keeps the cooldown; no delete, which some stores do not
//! condition). Stopped by closing `stop` (after the watchers have stopped
//! every child); then it releases what it still holds, except profiles
//! whose child is still running, which are left to expire.
//!
//! Never waits on the supervisor across S3 I/O: it asks what is wanted
//! between requests, tells it of grants and losses, and reads its snapshot.
//!
//! Budget counts: every renewal and release writes the profile's served
//! completions today (from the usage ledger) into the lease; a take that
//! finds counts of today's budget day merges them into the ledger and
//! tells the supervisor (`Msg::Spent`) before the grant, so the new holder
//! goes on from the old one's count instead of from zero.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use crossbeam_channel::{after, select, Receiver};
use log::{info, warn};

use super::lease::{self, Doc, Seen, Timing};
use super::{Release, Stats};
use crate::hydrate::cond::{CondError, Store};
use crate::metrics;
use crate::supervisor::msg::{Msg, Reply};
use crate::supervisor::Handle;

/// How often the leaser looks, at most.
const TICK: Duration = Duration::from_secs(1);

/// Why leasing cannot start.
#[derive(Debug)]
pub enum LeaseError {
    /// The store accepted a write whose precondition did not hold.
    Unsafe { store: String, what: &'static str },
    /// The probe itself failed.
    Probe { store: String, source: CondError },
}

impl fmt::Display for LeaseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LeaseError::Unsafe { store, what } => write!(
                f,
                "PROFILE_LEASES=s3 refused: the store at {store} accepted {what}, so it does not \
                 honour S3 conditional writes and two replicas could drive one account; use a \
                 store that does (AWS S3, MinIO) or unset PROFILE_LEASES"
            ),
            LeaseError::Probe { store, source } => {
                write!(f, "cannot probe the lease store at {store}: {source}")
            }
        }
    }
}

impl std::error::Error for LeaseError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            LeaseError::Probe { source, .. } => Some(source),
            LeaseError::Unsafe { .. } => None,
        }
    }
}

/// Prove that `store` honours both preconditions, with a probe object of
/// our own (`.probe-<replica>-<pid>.json`, removed afterwards).
pub fn probe(store: &Store, me: &str) -> Result<(), LeaseError> {
    let name = format!(".probe-{me}-{}.json", std::process::id());
    let place = format!("{} ({})", store.location(), store.endpoint());
    let fail = |source| LeaseError::Probe {
        store: place.clone(),
        source,
    };
    let unsafe_ = |what| LeaseError::Unsafe {
        store: place.clone(),
        what,
    };
    let body = br#"{"probe":true}"#;
    match store.put_if_absent(&name, body) {
        Ok(_) => {}
        // A probe left by an earlier run of ours: replace it below.
        Err(CondError::PreconditionFailed) => {}
        Err(e) => return Err(fail(e)),
    }
    let second = store.put_if_absent(&name, b"{\"probe\":2}");
    let wrong = store.put_if_match(&name, b"{\"probe\":3}", "\"0-not-the-etag\"");
    // Clean up before judging; a failed delete only leaves a small object.
    if let Ok((_, Some(etag))) = store.get_with_etag(&name) {
        let _ = store.delete_if_match(&name, &etag);
    }
    match second {
        Err(CondError::PreconditionFailed) => {}
        Ok(_) => return Err(unsafe_("a second create-only write (If-None-Match: *)")),
        Err(e) => return Err(fail(e)),
    }
    match wrong {
        Err(CondError::PreconditionFailed) => Ok(()),
        Ok(_) => Err(unsafe_("a replace with a wrong If-Match ETag")),
        Err(e) => Err(fail(e)),
    }
}

/// A lease we hold.
struct Held {
    doc: Doc,
    etag: String,
    /// When the last write that succeeded was sent (monotonic).
    sent: Instant,
    /// When we last tried to renew (success or not).
    tried: Instant,
}

pub struct Leaser {
    store: Store,
    me: String,
    timing: Timing,
    pool: Handle,
    stats: Arc<Stats>,
    held: BTreeMap<String, Held>,
}

/// Start the leaser thread.
/// `done` is dropped when the thread ends (after its last release).
pub fn spawn(
    leaser: Leaser,
    releases: Receiver<Release>,
    stop: Receiver<()>,
    done: crossbeam_channel::Sender<()>,
) -> std::io::Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name("leaser".into())
        .spawn(move || {
            let _done = done;
            leaser.run(releases, stop)
        })
}

impl Leaser {
    pub fn new(
        store: Store,
        me: String,
        timing: Timing,
        pool: Handle,
        stats: Arc<Stats>,
    ) -> Leaser {
        Leaser {
            store,
            me,
            timing,
            pool,
            stats,
            held: BTreeMap::new(),
        }
    }

    fn run(mut self, releases: Receiver<Release>, stop: Receiver<()>) {
        loop {
            select! {
                recv(stop) -> _ => break,
                recv(releases) -> r => match r {
                    Ok(r) => self.release(r),
                    Err(_) => break,
                },
                recv(after(TICK)) -> _ => {}
            }
            while let Ok(r) = releases.try_recv() {
                self.release(r);
            }
            self.renew_due();
            self.give_up_late();
            self.acquire();
            self.publish();
        }
        // Releases the watchers sent while they stopped.
        while let Ok(r) = releases.try_recv() {
            self.release(r);
        }
        let snap = self.pool.snapshot();
        let running = snap.running_profiles();
        let names: Vec<String> = self.held.keys().cloned().collect();
        for name in names {
            if running.contains(&name) {
                warn!("profile {name} still has a child: its lease is left to expire");
                continue;
            }
            let cooling = snap.cooling_of(&name);
            self.release(Release {
                profile: name,
                cooling,
            });
        }
        self.publish();
    }

    fn publish(&self) {
        self.stats.set_held(self.held.keys().cloned());
    }

    fn write_sent(&self) {
        Stats::bump(&self.stats.writes);
    }

    fn release(&mut self, r: Release) {
        let Some(h) = self.held.remove(&r.profile) else {
            return;
        };
        let ours = served(&r.profile);
        let doc = lease::released(&h.doc, SystemTime::now(), r.cooling, ours.as_ref());
        self.write_sent();
        match self
            .store
            .put_if_match(&key(&r.profile), &json(&doc), &h.etag)
        {
            Ok(_) => {
                Stats::bump(&self.stats.released);
                metrics::lease_event("released");
                info!("lease of profile {} released", r.profile);
            }
            Err(e) => warn!(
                "cannot release the lease of profile {} ({e}); it expires by itself",
                r.profile
            ),
        }
    }

    fn renew_due(&mut self) {
        let due: Vec<String> = self
            .held
            .iter()
            .filter(|(_, h)| {
                h.sent.elapsed() >= self.timing.renew_every()
                    || (h.tried > h.sent && h.tried.elapsed() >= TICK)
            })
            .map(|(n, _)| n.clone())
            .collect();
        for name in due {
            // A renewal may block for the whole request timeout (S3 not
            // answering): give up the leases that came due meanwhile before
            // the next one, or the last of many would outlive `keep_for` by
            // the others' timeouts, past their expiry.
            self.give_up_late();
            self.renew(&name);
        }
    }

    fn renew(&mut self, name: &str) {
        let ours = served(name);
        let Some(h) = self.held.get_mut(name) else {
            return;
        };
        let doc = lease::renewed(&h.doc, SystemTime::now(), &self.timing, ours.as_ref());
        let sent = Instant::now();
        h.tried = sent;
        Stats::bump(&self.stats.writes);
        match self.store.put_if_match(&key(name), &json(&doc), &h.etag) {
            Ok(Some(etag)) => {
                h.doc = doc;
                h.etag = etag;
                h.sent = sent;
                Stats::bump(&self.stats.renewed);
            }
            Ok(None) => warn!("renewing the lease of profile {name}: no ETag came back"),
            Err(CondError::PreconditionFailed) | Err(CondError::NotFound) => {
                // Our own write may have landed under a timeout we saw as
                // a failure earlier: the object then is exactly ours.
                match self.store.get_with_etag(&key(name)) {
                    Ok((bytes, Some(etag)))
                        if serde_json::from_slice::<Doc>(&bytes).ok().as_ref() == Some(&doc) =>
                    {
                        h.doc = doc;
                        h.etag = etag;
                        h.sent = sent;
                    }
                    Ok((bytes, _)) => {
                        let holder = serde_json::from_slice::<Doc>(&bytes)
                            .map(|d| d.holder)
                            .unwrap_or_else(|_| "an unreadable document".into());
                        self.lost(name, format!("its lease was taken by {holder}"));
                    }
                    Err(CondError::NotFound) => {
                        self.lost(name, "its lease object was deleted".into())
                    }
                    Err(e) => warn!("renewing the lease of profile {name}: {e}"),
                }
            }
            Err(e) => warn!(
                "cannot renew the lease of profile {name} ({e}); its child stops in {:.0?} unless a renewal succeeds",
                self.timing.keep_for().saturating_sub(h.sent.elapsed())
            ),
        }
    }

    /// Leases not renewed within `keep_for`: their children must stop now,
    /// before another replica may take them.
    fn give_up_late(&mut self) {
        let late: Vec<String> = self
            .held
            .iter()
            .filter(|(_, h)| h.sent.elapsed() >= self.timing.keep_for())
            .map(|(n, _)| n.clone())
            .collect();
        for name in late {
            self.lost(
                &name,
                format!(
                    "its lease could not be renewed for {:.0?} (S3 unreachable)",
                    self.timing.keep_for()
                ),
            );
        }
    }

    fn lost(&mut self, name: &str, why: String) {
        self.held.remove(name);
        Stats::bump(&self.stats.lost);
        metrics::lease_event("lost");
        warn!("profile {name}: {why}: stopping its child now");
        self.pool.tell(Msg::LeaseLost {
            profile: name.to_string(),
            why,
        });
    }

    /// Take leases while the supervisor has slots without one.
    fn acquire(&mut self) {
        let (want, candidates) = match self.pool.ask(Msg::LeaseDemand) {
            Some(Reply::Wanted { more, candidates }) => (more, candidates),
            _ => return,
        };
        if want == 0 || candidates.is_empty() {
            return;
        }
        let (replicas, claimable) = self.survey(candidates);
        let names: Vec<String> = claimable.iter().map(|c| c.name.clone()).collect();
        let order = lease::preference(&names, &self.me, &replicas);
        let mut granted = Vec::new();
        for name in order {
            if granted.len() >= want {
                break;
            }
            if let Some(c) = claimable.iter().find(|c| c.name == name) {
                if self.claim(c) {
                    granted.push(name);
                }
            }
        }
        if !granted.is_empty() {
            self.publish();
            self.pool.tell(Msg::LeaseGranted(granted));
        }
    }

    /// Read the candidates' leases: the replicas seen holding one (us
    /// first), and the profiles nobody holds.
    fn survey(&mut self, candidates: Vec<String>) -> (Vec<String>, Vec<Claimable>) {
        let now = SystemTime::now();
        let mut replicas = vec![self.me.clone()];
        let mut claimable = Vec::new();
        for name in candidates {
            // Reads may time out one after another: keep `keep_for` meanwhile.
            self.give_up_late();
            if self.held.contains_key(&name) {
                continue;
            }
            let (doc, etag) = match self.store.get_with_etag(&key(&name)) {
                Ok((bytes, etag)) => {
                    match serde_json::from_slice::<Doc>(&bytes) {
                        Ok(d) => (Some(d), etag),
                        Err(_) => {
                            warn!("the lease of profile {name} is not a lease document; leaving it alone");
                            continue;
                        }
                    }
                }
                Err(CondError::NotFound) => (None, None),
                Err(e) => {
                    warn!("cannot read the lease of profile {name}: {e}");
                    continue;
                }
            };
            match lease::look(doc.as_ref(), etag.as_deref(), now, &self.timing) {
                Seen::Held { holder, .. } => {
                    if !replicas.contains(&holder) {
                        replicas.push(holder);
                    }
                }
                Seen::Free | Seen::Stale { .. } => claimable.push(Claimable { name, doc, etag }),
                Seen::Cooling { .. } | Seen::Unreadable => {}
            }
        }
        (replicas, claimable)
    }

    /// Write our lease over exactly the version we read (or where none
    /// was); true when it is ours now.
    fn claim(&mut self, c: &Claimable) -> bool {
        let name = &c.name;
        let doc = lease::taken(&self.me, SystemTime::now(), &self.timing, c.doc.as_ref());
        let sent = Instant::now();
        Stats::bump(&self.stats.writes);
        let result = match &c.etag {
            None => self.store.put_if_absent(&key(name), &json(&doc)),
            Some(e) => self.store.put_if_match(&key(name), &json(&doc), e),
        };
        match result {
            Ok(Some(new_etag)) => {
                let over = c.etag.is_some();
                if over {
                    Stats::bump(&self.stats.taken_over);
                    metrics::lease_event("taken_over");
                } else {
                    Stats::bump(&self.stats.taken);
                    metrics::lease_event("taken");
                }
                info!(
                    "lease of profile {name} {} (until +{}s)",
                    if over { "taken over" } else { "taken" },
                    self.timing.ttl.as_secs()
                );
                self.learn(name, c.doc.as_ref());
                let held = Held {
                    doc,
                    etag: new_etag,
                    sent,
                    tried: sent,
                };
                self.held.insert(name.clone(), held);
                true
            }
            Ok(None) => {
                warn!("taking the lease of profile {name}: no ETag came back");
                false
            }
            Err(CondError::PreconditionFailed) => false, // another replica was faster
            Err(e) => {
                warn!("cannot take the lease of profile {name}: {e}");
                false
            }
        }
    }
}

impl Leaser {
    /// The served counts of today that the lease we just took carried:
    /// into the usage ledger (saved, and written to the lease from now on)
    /// and to the supervisor's book (what the dispatcher routes by), before
    /// the grant starts a child. Counts of another budget day are ignored.
    fn learn(&self, name: &str, before: Option<&Doc>) {
        let Some(s) = before.and_then(|d| d.served.as_ref()) else {
            return;
        };
        let Some(counts) = crate::usage::learn_served(name, s.day, &s.counts) else {
            return;
        };
        let total: u64 = counts.values().sum();
        info!("profile {name}: its lease brings {total} completions served today elsewhere");
        self.pool.tell(Msg::Spent {
            profile: name.to_string(),
            day: s.day,
            counts,
        });
    }
}

/// `profile`'s served completions today, for its lease. Read from the
/// usage ledger, not from the supervisor's snapshot of the book: the HTTP
/// workers count each answer there themselves, with no hop through the
/// supervisor's queue and its next snapshot, so a release (sent once the
/// child has stopped) carries every answer; and the ledger is the record
/// that is saved and read back at start, so restarts and moves between
/// replicas go on from one count.
fn served(profile: &str) -> Option<lease::Served> {
    crate::usage::served_today(profile).map(|(day, counts)| lease::Served { day, counts })
}

/// A profile whose lease nobody holds: the document and version read.
struct Claimable {
    name: String,
    doc: Option<Doc>,
    etag: Option<String>,
}

/// The lease object's name of `profile` below the leases prefix.
fn key(profile: &str) -> String {
    format!("{profile}.json")
}

fn json(doc: &Doc) -> Vec<u8> {
    // A struct of strings and integers always serialises.
    serde_json::to_vec(doc).unwrap_or_default()
}
