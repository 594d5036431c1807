//! The status page at `/admin/` and what it needs: the static page (HTML,
//! CSS and JS embedded in the binary, served with a strict
//! Content-Security-Policy; the shell needs no key, every piece of data
//! does), the one JSON answer it polls (`console`: status, usage, events
//! after a sequence number, memory per slot), and the observer thread.
//!
//! The observer (thread `console`) looks at the supervisor's snapshot once a second and
//! records what nobody else sees happen: a cooldown that ended, a profile
//! whose state became `needs_login`, no ready child for
//! `NOTIFY_NO_READY_S`; and it saves the usage ledger when it changed
//! (every [`SAVE_EVERY`]). It holds no lock across its waits and stops at
//! once when `stop` closes.

use std::collections::BTreeMap;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{after, select, Receiver};
use serde_json::{json, Value};

use crate::events::{self, Kind};
use crate::reply::{self, Reply};
use crate::slot::Phase;
use crate::supervisor::Handle;

const INDEX: &str = include_str!("static/index.html");
const SCRIPT: &str = include_str!("static/console.js");
const STYLE: &str = include_str!("static/console.css");

pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:; frame-ancestors 'none'; base-uri 'none'; form-action 'none'";

/// How often the usage ledger is saved when it changed.
pub const SAVE_EVERY: Duration = Duration::from_secs(10);
/// How often the observer looks.
const LOOK_EVERY: Duration = Duration::from_secs(1);

/// The page's files, for a `GET` of `path`; None for any other path.
pub fn page(path: &str) -> Option<Reply> {
    let (body, ct) = match path {
        "/admin" | "/admin/" | "/admin/index.html" => (INDEX, "text/html; charset=utf-8"),
        "/admin/console.js" => (SCRIPT, "text/javascript; charset=utf-8"),
        "/admin/console.css" => (STYLE, "text/css; charset=utf-8"),
        _ => return None,
    };
    Some(
        tiny_http::Response::from_data(body.as_bytes().to_vec())
            .with_header(reply::header("Content-Type", ct))
            .with_header(reply::header("Content-Security-Policy", CSP))
            .with_header(reply::header("X-Content-Type-Options", "nosniff"))
            .with_header(reply::header("Referrer-Policy", "no-referrer"))
            .with_header(reply::header("X-Frame-Options", "DENY"))
            .with_header(reply::header("Cache-Control", "no-cache")),
    )
}

/// Resident memory of every process in the process group `pgid` (a child
/// and its browser), from /proc; None when none is found.
pub fn group_memory(pgid: i32) -> Option<u64> {
    let page = 4096u64;
    let mut total = 0u64;
    let mut found = false;
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let name = entry.file_name();
        let Some(pid) = name.to_str().and_then(|n| n.parse::<i32>().ok()) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // The fields after the command name, which may hold spaces.
        let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
            continue;
        };
        let fields: Vec<&str> = rest.split_whitespace().collect();
        // state ppid pgrp ...; rss is field 24 of stat, 22 after the name.
        if fields.get(2).and_then(|g| g.parse::<i32>().ok()) != Some(pgid) {
            continue;
        }
        if let Some(rss) = fields.get(21).and_then(|r| r.parse::<u64>().ok()) {
            total += rss * page;
            found = true;
        }
    }
    found.then_some(total)
}

/// The page's one answer: the fleet's status, usage, the events after
/// `after`, memory per slot, and the server's clock.
pub fn answer(status: Value, slots_pids: &[(usize, Option<i32>)], after: u64) -> Value {
    let (events, last_seq) = events::since(after, events::CAPACITY);
    let memory: BTreeMap<String, u64> = slots_pids
        .iter()
        .filter_map(|(slot, pid)| Some((slot.to_string(), group_memory((*pid)?)?)))
        .collect();
    let now = crate::usage::now_ms();
    json!({
        "status": status,
        "usage": crate::usage::view(&crate::usage::global().ledger(), now),
        "events": events,
        "last_seq": last_seq,
        "memory": memory,
        "now_unix_ms": now,
    })
}

/// What the observer remembers between looks (pure; see `look`).
#[derive(Debug, Default)]
pub struct Observer {
    /// Profile -> cooling until (unix ms) at the last look.
    cooling: BTreeMap<String, u64>,
    /// Since when no slot has been ready (None: one is).
    none_ready_since: Option<Instant>,
    /// The no-ready event was recorded for this outage.
    told: bool,
    first: bool,
}

/// An event the observer found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    pub kind: Kind,
    pub profile: Option<String>,
    pub text: String,
}

impl Observer {
    pub fn new() -> Observer {
        Observer {
            first: true,
            ..Observer::default()
        }
    }

    /// Compare with the last look: `profiles` is (name, cooling until) per
    /// profile, `ready` the ready slots, `no_ready` how long
    /// without one is worth an event.
    pub fn look(
        &mut self,
        profiles: &[(String, Option<u64>)],
        ready: usize,
        slots: usize,
        now: Instant,
        now_ms: u64,
        no_ready: Duration,
    ) -> Vec<Found> {
        let mut out = Vec::new();
        for (name, until) in profiles {
            match (self.cooling.get(name).copied(), until) {
                (Some(was), None) if was <= now_ms + 1_000 && !self.first => out.push(Found {
                    kind: Kind::CooldownEnded,
                    profile: Some(name.clone()),
                    text: "may run again".into(),
                }),
                (Some(_), None) if !self.first => out.push(Found {
                    kind: Kind::CooldownEnded,
                    profile: Some(name.clone()),
                    text: "cleared".into(),
                }),
                _ => {}
            }
            match until {
                Some(u) => {
                    self.cooling.insert(name.clone(), *u);
                }
                None => {
                    self.cooling.remove(name);
                }
            }
        }
        self.first = false;
        if ready > 0 || slots == 0 {
            self.none_ready_since = None;
            self.told = false;
        } else {
            let since = *self.none_ready_since.get_or_insert(now);
            if !self.told && now.saturating_duration_since(since) >= no_ready {
                self.told = true;
                out.push(Found {
                    kind: Kind::NoReady,
                    profile: None,
                    text: format!("no child ready for {}s", no_ready.as_secs()),
                });
            }
        }
        out
    }
}

/// Start the observer; it ends when `stop` closes.
pub fn spawn(
    pool: Handle,
    no_ready: Duration,
    stop: Receiver<()>,
) -> std::io::Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name("console".into())
        .spawn(move || {
            let mut obs = Observer::new();
            let mut saved = Instant::now();
            loop {
                select! {
                    recv(stop) -> _ => return,
                    recv(after(LOOK_EVERY)) -> _ => {}
                }
                let snap = pool.view();
                let profiles: Vec<(String, Option<u64>)> = snap
                    .profiles
                    .iter()
                    .map(|p| (p.health.profile.clone(), p.health.cooling_until_unix_ms))
                    .collect();
                let ready = snap
                    .slots
                    .iter()
                    .filter(|s| s.state == Phase::Ready)
                    .count();
                for f in obs.look(
                    &profiles,
                    ready,
                    snap.slots.len(),
                    Instant::now(),
                    crate::usage::now_ms(),
                    no_ready,
                ) {
                    let slot = f.profile.as_ref().and_then(|p| {
                        snap.slots
                            .iter()
                            .find(|s| s.profile.as_deref() == Some(p))
                            .map(|s| s.slot)
                    });
                    events::record(f.kind, slot, f.profile.as_deref(), &f.text);
                }
                if saved.elapsed() >= SAVE_EVERY {
                    crate::usage::global().save_if_changed();
                    saved = Instant::now();
                }
            }
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(name: &str, until: Option<u64>) -> (String, Option<u64>) {
        (name.into(), until)
    }

    #[test]
    fn the_observer_reports_changes_once() {
        let mut o = Observer::new();
        let t = Instant::now();
        let s = Duration::from_secs;
        let nr = s(30);
        // The first look only learns (a cooldown from an earlier run is no news).
        assert!(o
            .look(&[p("a", Some(5_000)), p("b", None)], 1, 2, t, 1_000, nr)
            .is_empty());
        let f = o.look(&[p("a", None), p("b", None)], 1, 2, t, 5_500, nr);
        let kinds: Vec<_> = f
            .iter()
            .map(|f| (f.kind, f.profile.clone().unwrap()))
            .collect();
        assert_eq!(kinds, vec![(Kind::CooldownEnded, "a".to_string())]);
        assert!(
            o.look(&[p("a", None), p("b", None)], 1, 2, t, 6_000, nr)
                .is_empty(),
            "said once"
        );
        // No ready child: one event after the bound, again only after a recovery.
        assert!(o.look(&[], 0, 2, t, 0, nr).is_empty());
        let f = o.look(&[], 0, 2, t + s(31), 0, nr);
        assert_eq!(f[0].kind, Kind::NoReady);
        assert!(o.look(&[], 0, 2, t + s(90), 0, nr).is_empty());
        assert!(o.look(&[], 1, 2, t + s(91), 0, nr).is_empty());
        assert!(o.look(&[], 0, 2, t + s(92), 0, nr).is_empty());
        assert_eq!(o.look(&[], 0, 2, t + s(130), 0, nr)[0].kind, Kind::NoReady);
    }

    #[test]
    fn the_page_is_self_contained() {
        let html = INDEX;
        for bad in [
            "http://", "https://", "<style", "style=", "onclick", "<script>",
        ] {
            assert!(!html.contains(bad), "{bad} in the page");
        }
        assert!(!SCRIPT.contains("innerHTML") && !SCRIPT.contains("eval("));
        assert!(!STYLE.contains("url(") && !STYLE.contains("@import"));
        let r = page("/admin/").unwrap();
        assert!(r
            .headers()
            .iter()
            .any(|h| h.field.equiv("Content-Security-Policy")));
        assert!(page("/admin/other").is_none());
    }
}
