//! The probes' own path: `/live`, `/ready` and `/health` are answered on
//! the client connection's own thread (tiny_http's inline hook, see
//! `vendor/tiny_http/PATCHES.md`), before the request is queued for the
//! worker pool. So a probe never waits for a worker, whatever holds them
//! (slow uploads, long streams, a full pool): every connection has its own
//! thread already, and the last places of `MAX_CONNECTIONS` are kept for
//! probes. A request on a reserve place that is not a probe is refused
//! here too (503 `overloaded`, connection closed), so the reserve never
//! reaches a worker either.
//!
//! What runs here must stay short: one supervisor snapshot, one small answer,
//! no body read (a probe sent with a body has it refused and its
//! connection closed), no lock held across I/O.

use std::sync::Arc;

use tiny_http::{Method, Request};

use crate::admin::http::AdminKey;
use crate::health;
use crate::proxy::Proxy;
use crate::reply::ApiError;
use crate::supervisor::Handle;

/// The hook given to tiny_http: answers probes and reserve refusals, hands
/// back everything else.
pub fn inline_hook(
    pool: Handle,
    proxy: Arc<Proxy>,
    admin: Option<AdminKey>,
) -> tiny_http::InlineHook {
    Box::new(move |rq| answer(rq, &pool, &proxy, admin.as_ref()))
}

/// Answer `rq` if it is a probe, or a non-probe on a reserve place; else
/// give it back.
pub fn answer(
    rq: Request,
    pool: &Handle,
    proxy: &Proxy,
    admin: Option<&AdminKey>,
) -> Option<Request> {
    let path = rq.url().split('?').next().unwrap_or("");
    let get = matches!(rq.method(), Method::Get | Method::Head);
    let which = match path {
        "/live" if get => Probe::Live,
        "/ready" if get => Probe::Ready,
        "/health" if get => Probe::Health,
        _ if rq.in_reserve() => {
            // A place kept for probes: nothing else may hold it. The body,
            // if any, is refused with the answer.
            let _ = rq.respond(ApiError::Overloaded.reply(
                "the coordinator is at its connection limit (MAX_CONNECTIONS); retry shortly",
            ));
            return None;
        }
        _ => return Some(rq),
    };
    let reply = match which {
        Probe::Live => health::live(),
        Probe::Ready | Probe::Health => {
            let detail = !proxy.keys_enabled() && admin.is_none()
                || admin.is_some_and(|k| crate::admin::http::offers(&rq, k));
            health::ready(&pool.view(), which == Probe::Health, detail)
        }
    };
    let _ = rq.respond(reply);
    None
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Probe {
    Live,
    Ready,
    Health,
}
