//! The probe endpoints: `/live` (the process answers), `/ready` (at least one
//! child is ready and we are not shutting down) and `/health`, the deprecated
//! alias of `/ready`. They read one supervisor snapshot and never do I/O besides
//! answering, so they stay fast however busy the proxy is. `queue` is the
//! rotation queue of profiles; requests waiting for a child are counted in
//! `requests_waiting` (details at `GET /v1/queue`); `profiles` lists every
//! profile with its state (running, queued, cooling, disabled) and health.

use crate::reply::{self, Reply};
use crate::slot::Phase;
use crate::supervisor::View as Snapshot;

pub fn live() -> Reply {
    reply::json(200, &serde_json::json!({ "status": "alive" }))
}

/// The /ready body: the reference coordinator's fields plus per-slot detail.
pub fn ready_body(snap: &Snapshot) -> (u16, serde_json::Value) {
    let ready: Vec<&str> = snap
        .slots
        .iter()
        .filter(|s| s.state == Phase::Ready)
        .filter_map(|s| s.profile.as_deref())
        .collect();
    let unhealthy: Vec<&str> = snap
        .slots
        .iter()
        .filter(|s| s.state != Phase::Ready)
        .filter_map(|s| s.profile.as_deref())
        .collect();
    let ok = !ready.is_empty() && !snap.shutting_down;
    let mut body = serde_json::json!({
        "status": if ok { "ready" } else { "degraded" },
        "ready_children": ready,
        "unhealthy_children": unhealthy,
        "total_children": snap.slots.len(),
        "shutting_down": snap.shutting_down,
        "slots": snap.slots,
        "queue_length": snap.queue.len(),
        "queue": snap.queue,
        "in_flight": snap.slots.iter().map(|s| s.in_flight).sum::<usize>(),
        "requests_waiting": snap.requests_waiting,
        "profiles": snap.profiles,
    });
    if let Some(l) = &snap.leases {
        body["leases"] = serde_json::to_value(l).unwrap_or_default();
    }
    (if ok { 200 } else { 503 }, body)
}

pub fn ready(snap: &Snapshot, deprecated_alias: bool) -> Reply {
    let (status, body) = ready_body(snap);
    let r = reply::json(status, &body).with_header(reply::header("Cache-Control", "no-store"));
    if deprecated_alias {
        r.with_header(reply::header(
            "X-Deprecation-Notice",
            "/health is deprecated; probe /ready (readiness) or /live (liveness) instead",
        ))
    } else {
        r
    }
}
