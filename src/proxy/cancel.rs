//! `POST /v1/cancel/{req_id}`: sent to the child known to hold that request
//! (the proxy remembers the `X-Request-Id` of requests in flight), else to
//! every ready child at once. 200 names the children that acknowledged; 404
//! when none did.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use crate::pool::Pool;
use crate::reply::{self, ApiError, Reply};

/// Request ids of proxied requests in flight, and the slot serving each.
#[derive(Default)]
pub struct InFlight {
    ids: Mutex<HashMap<String, (usize, u16, String)>>,
}

impl InFlight {
    pub fn insert(&self, id: &str, slot: usize, port: u16, profile: &str) {
        self.ids
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id.to_string(), (slot, port, profile.to_string()));
    }

    pub fn remove(&self, id: &str) {
        self.ids
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(id);
    }

    fn get(&self, id: &str) -> Option<(usize, u16, String)> {
        self.ids
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(id)
            .cloned()
    }
}

/// `req_id` is the raw (still percent-encoded) path segment, forwarded as is.
pub fn cancel(
    agent: &ureq::Agent,
    pool: &Pool,
    inflight: &InFlight,
    req_id: &str,
    auth: &[(String, Vec<u8>)],
) -> Reply {
    let targets: Vec<(usize, u16, String)> = match inflight.get(req_id) {
        Some(t) => vec![t],
        None => pool.ready_slots(),
    };
    let acked: Vec<String> = std::thread::scope(|s| {
        let handles: Vec<_> = targets
            .iter()
            .map(|(_, port, profile)| {
                s.spawn(move || {
                    let url = format!("http://127.0.0.1:{port}/v1/cancel/{req_id}");
                    let mut rq = agent
                        .post(&url)
                        .config()
                        .timeout_global(Some(Duration::from_secs(5)))
                        .build();
                    for (k, v) in auth {
                        rq = rq.header(k.as_str(), v.as_slice());
                    }
                    match rq.send_empty() {
                        Ok(r) if r.status().as_u16() == 200 => Some(profile.clone()),
                        _ => None,
                    }
                })
            })
            .collect();
        handles
            .into_iter()
            .filter_map(|h| h.join().ok().flatten())
            .collect()
    });
    if acked.is_empty() {
        return ApiError::UnknownRequest.reply(&format!("no child knows request {req_id:?}"));
    }
    reply::json(
        200,
        &serde_json::json!({ "success": true, "req_id": req_id, "acknowledged_by": acked }),
    )
}
