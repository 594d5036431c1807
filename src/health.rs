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

/// The /ready body as anyone may see it when keys are configured: what
/// probes and load balancers need (status, counts, per-slot state and
/// ports) and no profile name, pid, reason (it may quote a process's
/// command line), memory, queue or lease. The reference fields keep
/// their type and length: `ready_children` and `unhealthy_children` list
/// `slot-<i>` instead of profile names.
pub fn public_body(snap: &Snapshot) -> (u16, serde_json::Value) {
    let (status, full) = ready_body(snap);
    let label = |want_ready: bool| -> Vec<String> {
        snap.slots
            .iter()
            .filter(|s| (s.state == Phase::Ready) == want_ready && s.profile.is_some())
            .map(|s| format!("slot-{}", s.slot))
            .collect()
    };
    let slots: Vec<serde_json::Value> = snap
        .slots
        .iter()
        .map(|s| {
            serde_json::json!({
                "slot": s.slot,
                "ports": s.ports,
                "state": s.state,
                "since_unix_ms": s.since_unix_ms,
                "until_unix_ms": s.until_unix_ms,
                "restarts": s.restarts,
                "in_flight": s.in_flight,
            })
        })
        .collect();
    let body = serde_json::json!({
        "status": full["status"],
        "ready_children": label(true),
        "unhealthy_children": label(false),
        "total_children": full["total_children"],
        "shutting_down": full["shutting_down"],
        "slots": slots,
        "queue_length": full["queue_length"],
        "in_flight": full["in_flight"],
        "requests_waiting": full["requests_waiting"],
        "detail": "profile names, pids and the queue are shown with the admin key",
    });
    (status, body)
}

/// `detail`: the whole body (no keys configured, or the admin key was
/// presented); else [`public_body`].
pub fn ready(snap: &Snapshot, deprecated_alias: bool, detail: bool) -> Reply {
    let (status, body) = if detail {
        ready_body(snap)
    } else {
        public_body(snap)
    };
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
