//! `POST /v1/cancel/{req_id}`. An id the coordinator knows (the
//! `X-Request-Id` of a request it is proxying, sent by the client or made
//! up) is cancelled here: a queued request leaves the queue and its client
//! gets 409 `request_cancelled`; a running one has its child connection
//! closed and its client's answer ended. Any other id is taken for a
//! child's own request id and sent to every ready child at once: 200 names
//! the children that acknowledged, 404 when none did.
//!
//! Whose request: with API keys, a cancel reaches only requests made with
//! the caller's own key (compared by keyed fingerprint), and a child's own
//! id is sent only to the children running a request of that key; another
//! key's request is answered 404 exactly like an unknown one, so ids
//! cannot be probed. The admin key cancels any request. Without keys there
//! is no owner to check.

use std::time::Duration;

use crate::dispatch::Dispatch;
use crate::reply::{self, ApiError, Reply};

use super::requests::{Caller, Registry};

/// `req_id` is the raw (still percent-encoded) path segment, forwarded as is.
pub fn cancel(
    agent: &ureq::Agent,
    registry: &Registry,
    dispatch: &Dispatch,
    req_id: &str,
    auth: &[(String, Vec<u8>)],
    caller: Caller,
) -> Reply {
    let done = registry.cancel(&percent_decode(req_id), caller, dispatch);
    if !done.is_empty() {
        return reply::json(
            200,
            &serde_json::json!({ "success": true, "req_id": req_id, "cancelled": done }),
        );
    }
    let mut targets = dispatch.ready();
    if let Caller::Owner(Some(owner)) = caller {
        // A child's own id: only children serving this key's requests.
        let mine = registry.slots_running(owner);
        targets.retain(|(slot, _, _)| mine.contains(slot));
    }
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

/// `%XX` escapes decoded; anything malformed is kept as it is.
fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
        if b[i] == b'%' && i + 2 < b.len() {
            if let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2])) {
                out.push(h * 16 + l);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    #[test]
    fn percent_decoding() {
        assert_eq!(super::percent_decode("a%20b%2Fc"), "a b/c");
        assert_eq!(super::percent_decode("100%"), "100%");
        assert_eq!(super::percent_decode("%zz%4"), "%zz%4");
        assert_eq!(super::percent_decode("plain-id_7"), "plain-id_7");
    }
}
