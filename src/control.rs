//! What the operator's admin operations do. Each one is logged once (what,
//! which slot or profile, through which interface), decided by the
//! supervisor, and carried out by the slots' own watchers through commands:
//! a restart or a rotation drains the slot first (no new requests, the
//! in-flight ones finish within `REQUEST_TIMEOUT_S`), so no admin call
//! waits on a child and no request is cut off by one.

use std::io::{Read, Seek, SeekFrom};
use std::path::PathBuf;
use std::sync::Arc;

use log::info;
use serde_json::{json, Value};

use crate::admin::proto::{self, Request};
use crate::admin::{Control, Via};
use crate::metrics;
use crate::reload::Reloader;
use crate::slot::StopReason;
use crate::supervisor::msg::{AdminAnswer, AdminOp, Msg, Reply};
use crate::supervisor::{Cmd, Handle, ProfileSnapshot, Then};
use crate::writeback::WriteBack;

/// The most of a log file `logs` reads from its end.
const MAX_LOG_TAIL: u64 = 4 * 1024 * 1024;

pub struct Fleet {
    pub pool: Handle,
    pub log_dir: PathBuf,
    pub reloader: Arc<Reloader>,
    pub writeback: WriteBack,
}

impl Control for Fleet {
    fn handle(&self, rq: Request, via: Via) -> Value {
        if rq.changes_anything() {
            info!("admin ({via}): {}", rq.describe());
            record_operator(&rq, via);
        }
        match rq {
            Request::Status => proto::ok(self.status()),
            Request::Restart { slot } => {
                self.drain(slot, Then::Restart, "restart requested by the operator")
            }
            Request::Rotate { slot } => {
                self.drain(slot, Then::Rotate, "rotation requested by the operator")
            }
            Request::Disable { profile } => self.profile_op(AdminOp::Disable(profile)),
            Request::Enable { profile } => self.profile_op(AdminOp::Enable(profile)),
            Request::Reset {
                profile,
                model: None,
            } => self.profile_op(AdminOp::Reset(profile)),
            Request::Reset {
                profile,
                model: Some(model),
            } => self.profile_op(AdminOp::ResetModel(profile, model)),
            Request::Reload => match self.reloader.reload("ctl") {
                Ok(report) => proto::ok(json!({ "message": report.to_string(), "reload": report })),
                Err(e) => proto::error(format!("reload failed, nothing changed: {e}")),
            },
            Request::Logs { profile, lines } => self.logs(&profile, lines),
            Request::Usage => proto::ok(self.usage()),
            Request::Events { after, limit } => {
                let (events, last_seq) = crate::events::since(after, limit);
                proto::ok(json!({ "events": events, "last_seq": last_seq }))
            }
            Request::Console { after } => {
                let pids: Vec<(usize, Option<i32>)> = self
                    .pool
                    .view()
                    .slots
                    .iter()
                    .map(|s| (s.slot, s.pid))
                    .collect();
                proto::ok(crate::console::answer(self.status(), &pids, after))
            }
        }
    }
}

fn unknown(profile: &str) -> Value {
    proto::error(format!(
        "no profile named {profile:?}: see the profiles of ctl status"
    ))
}

impl Fleet {
    /// An operator's change to a profile, decided by the supervisor.
    fn profile_op(&self, op: AdminOp) -> Value {
        let profile = match &op {
            AdminOp::Disable(p) | AdminOp::Enable(p) | AdminOp::Reset(p) => p.clone(),
            AdminOp::ResetModel(p, _) => p.clone(),
        };
        let answer = match self.pool.ask(Msg::Admin(op.clone())) {
            Some(Reply::Admin(a)) => a,
            _ => return proto::error("the supervisor is shutting down".to_string()),
        };
        let message = match (op, answer) {
            (_, AdminAnswer::UnknownProfile) => return unknown(&profile),
            (AdminOp::ResetModel(_, model), AdminAnswer::NotCooling) => {
                return proto::error(format!(
                    "profile {profile} does not cool for model {model}; see `aistudioproxy ctl status`"
                ))
            }
            (AdminOp::Disable(_), AdminAnswer::Done { slot: Some(slot) }) => {
                format!("profile {profile} disabled; slot {slot} drains it and rotates")
            }
            (AdminOp::Disable(_), _) => format!("profile {profile} disabled"),
            (AdminOp::Enable(_), _) => format!("profile {profile} enabled"),
            (AdminOp::Reset(_), _) => format!("profile {profile}: cooldown and failure counts cleared (its models' cooldowns and its login mark too)"),
            (AdminOp::ResetModel(_, model), _) => {
                format!("profile {profile}: cooldown of model {model} cleared")
            }
        };
        proto::ok(json!({ "message": message }))
    }

    /// What a metrics scrape reports as current state.
    pub fn metrics_view(&self) -> metrics::View {
        let published = self.pool.snapshot();
        let snap = published.view(self.pool.dispatch());
        let route = self.pool.dispatch().view();
        let profiles = snap.profiles.clone();
        let mut budgets = published.budgets(true);
        metrics::View {
            slots: snap
                .slots
                .iter()
                .map(|s| (s.slot, s.state.to_string()))
                .collect(),
            queue_length: route.queue_length,
            in_flight: route
                .slots
                .iter()
                .map(|r| (r.slot, r.completions + r.others))
                .collect(),
            cooldown_left: profiles
                .iter()
                .filter_map(|p| Some((p.health.profile.clone(), p.health.cooldown_left_s?)))
                .collect(),
            model_cooldown_left: profiles
                .iter()
                .flat_map(|p| {
                    p.health
                        .model_cooldowns
                        .iter()
                        .map(|m| (p.health.profile.clone(), m.model.clone(), m.left_s))
                })
                .collect(),
            profiles: profiles
                .into_iter()
                .map(|p| (p.health.profile, p.state.name()))
                .collect(),
            leases_held: snap.leases.as_ref().map_or(0, |l| l.held.len()),
            child_rss: snap
                .slots
                .iter()
                .filter_map(|s| Some((s.slot, s.rss_bytes?)))
                .collect(),
            budgets: budgets
                .as_mut()
                .and_then(|b| b.accounts.take())
                .unwrap_or_default(),
            fleet_budgets: budgets.map(|b| b.lines).unwrap_or_default(),
        }
    }

    /// Everything `ctl status` shows.
    pub fn status(&self) -> Value {
        // One snapshot for the profiles' budgets and the fleet's.
        let published = self.pool.snapshot();
        let snap = published.view(self.pool.dispatch());
        json!({
            "slots": snap.slots.iter().map(|s| json!({
                "slot": s.slot,
                "profile": s.profile,
                "state": s.state,
                "pid": s.pid,
                "since_unix_ms": s.since_unix_ms,
                "restarts": s.restarts,
                "in_flight": s.in_flight,
                "last_error": s.reason,
                "ports": s.ports,
                "rss_mb": s.rss_mb,
                "until_unix_ms": s.until_unix_ms,
            })).collect::<Vec<_>>(),
            "queue": self.pool.dispatch().view(),
            "rotation_queue": snap.queue,
            "profiles": self.profiles(snap.profiles.clone()),
            "last_reload": self.reloader.last(),
            "shutting_down": snap.shutting_down,
            "leases": snap.leases,
            // The fleet's lines; each account's are in its profile.
            "budgets": published.budgets(false),
        })
    }

    /// Everything `ctl usage` shows: the usage ledger, and the account
    /// budgets of today (each account's lines and the fleet's).
    fn usage(&self) -> Value {
        let mut v = crate::usage::view(&crate::usage::global().ledger(), crate::usage::now_ms());
        v["budgets"] = json!(self.pool.snapshot().budgets(true));
        v
    }

    /// Every profile's state and health, with its last write-back.
    fn profiles(&self, profiles: Vec<ProfileSnapshot>) -> Vec<Value> {
        let wb = self.writeback.stats();
        profiles
            .into_iter()
            .map(|p| {
                let mut v = serde_json::to_value(&p).unwrap_or(Value::Null);
                if let Some(stats) = wb.get(&p.health.profile) {
                    v["writeback"] = serde_json::to_value(stats).unwrap_or(Value::Null);
                }
                v
            })
            .collect()
    }

    fn drain(&self, slot: usize, then: Then, why: &str) -> Value {
        let snap = self.pool.view();
        let Some(s) = snap.slots.get(slot) else {
            return proto::error(format!(
                "no slot {slot}: slots are 0 to {}",
                snap.slots.len().saturating_sub(1)
            ));
        };
        let cmd = Cmd::Drain {
            generation: None,
            reason: StopReason::Operator(why.to_string()),
            then,
        };
        if self.pool.ask(Msg::Command { slot, cmd }) != Some(Reply::Yes(true)) {
            return proto::error(format!("slot {slot} is shutting down"));
        }
        let what = if then == Then::Restart {
            "restarts"
        } else {
            "rotates"
        };
        proto::ok(json!({
            "message": format!(
                "slot {slot} ({}) drains {} in-flight requests, then {what}",
                s.profile.as_deref().unwrap_or("-"),
                s.in_flight
            )
        }))
    }

    fn logs(&self, profile: &str, lines: usize) -> Value {
        let known = self
            .pool
            .snapshot()
            .state
            .book
            .entries()
            .contains_key(profile);
        if !known {
            return unknown(profile);
        }
        let path = self.log_dir.join(format!("{profile}.log"));
        match tail(&path, lines) {
            Ok(l) => proto::ok(json!({ "profile": profile, "lines": l })),
            Err(e) => proto::error(format!("cannot read {}: {e}", path.display())),
        }
    }
}

/// The last `n` lines of a file, reading at most `MAX_LOG_TAIL` bytes.
fn tail(path: &std::path::Path, n: usize) -> std::io::Result<Vec<String>> {
    let mut f = std::fs::File::open(path)?;
    let len = f.metadata()?.len();
    let from = len.saturating_sub(MAX_LOG_TAIL);
    f.seek(SeekFrom::Start(from))?;
    let mut buf = Vec::new();
    f.take(MAX_LOG_TAIL).read_to_end(&mut buf)?;
    let text = String::from_utf8_lossy(&buf);
    let mut all: Vec<&str> = text.lines().collect();
    if from > 0 && !all.is_empty() {
        all.remove(0); // cut mid-line
    }
    let start = all.len().saturating_sub(n);
    Ok(all[start..].iter().map(|s| s.to_string()).collect())
}

/// An operator's command (that changes something).
fn record_operator(rq: &crate::admin::proto::Request, via: crate::admin::Via) {
    use crate::admin::proto::Request;
    use crate::events::{record, Kind};
    let (slot, profile) = match rq {
        Request::Restart { slot } | Request::Rotate { slot } => (Some(*slot), None),
        Request::Disable { profile }
        | Request::Enable { profile }
        | Request::Reset { profile, .. } => (None, Some(profile.as_str())),
        _ => (None, None),
    };
    record(
        Kind::Operator,
        slot,
        profile,
        format!("{} (via {via})", rq.describe()),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tail_gives_the_last_lines() {
        let p = std::env::temp_dir().join(format!("aisp-tail-{}", std::process::id()));
        std::fs::write(&p, "a\nb\nc\nd\n").unwrap();
        assert_eq!(tail(&p, 2).unwrap(), vec!["c", "d"]);
        assert_eq!(tail(&p, 10).unwrap().len(), 4);
        std::fs::remove_file(&p).unwrap();
    }
}
