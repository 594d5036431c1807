//! The OpenAI front door: every `/v1/*` request is checked (API key, body
//! size) and given an id, then either answered here (`GET /v1/queue`,
//! `POST /v1/cancel/{id}` for ids we know) or forwarded to a child the
//! dispatcher chooses, its answer relayed to the client as it arrives
//! ([`forward`]). What each answer means for its child is decided in
//! [`verdict`]; outcomes go to a listener attached with
//! [`Proxy::report_outcomes`].
//!
//! This is the one forwarder and the one place where failures become
//! status codes. Runs on the HTTP worker thread that received the request.

mod body;
mod cancel;
mod conns;
mod forward;
mod inspect;
pub mod keys;
mod relay;
pub mod requests;
pub mod usage;
pub mod verdict;

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tiny_http::{Method, Request};

use crate::dispatch::Kind;
use crate::reply::{self, ApiError, Reply};
use crate::supervisor::Handle;
use body::BodyError;
use keys::{Access, KeyRing, Keys};

/// Request headers that describe one connection, not the request; never
/// forwarded (plus any header the client's `Connection` names).
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "proxy-connection",
    "te",
    "trailer",
    "trailers",
    "transfer-encoding",
    "upgrade",
    "expect",
    "host",
    "content-length",
];

/// The longest model name routed by (per-model cooldowns).
const MAX_MODEL_NAME: usize = 200;

/// The longest client `X-Request-Id` kept; longer ones are replaced.
const MAX_REQUEST_ID: usize = 200;

/// The one field of a chat completion request the proxy looks at.
#[derive(serde::Deserialize)]
struct CompletionPeek {
    #[serde(default)]
    stream: Option<bool>,
    /// For the usage counts.
    #[serde(default)]
    model: Option<String>,
}

pub struct Settings {
    /// Longest wait for a child's answer head, per attempt.
    pub request_timeout: Duration,
    /// Longest silence of a child after its answer head.
    pub stream_idle_timeout: Duration,
    pub max_body_bytes: u64,
    /// Counted 5xx answers in a row that evict a child.
    pub consecutive_5xx_to_evict: u32,
}

pub struct Proxy {
    conns: conns::Conns,
    /// For the cancel fan-out to children.
    agent: ureq::Agent,
    keys: KeyRing,
    settings: Settings,
    requests: std::sync::Arc<requests::Registry>,
    strikes: verdict::Strikes,
    outcomes: verdict::Outcomes,
    /// Internal request ids; never reused.
    seq: AtomicU64,
    /// Makes our generated `X-Request-Id`s differ between runs.
    boot: u64,
}

impl Proxy {
    /// Whether `rq` passes the API key check (always, without keys).
    pub fn key_ok(&self, rq: &Request) -> bool {
        self.keys.current().access(rq) != Access::Denied
    }

    /// Check requests against `keys` from now on (a reload); true when
    /// the set differs from the one in force.
    pub fn set_keys(&self, keys: Keys) -> bool {
        let changed = !self.keys.current().same_set(&keys);
        self.keys.replace(keys);
        changed
    }

    pub fn new(keys: Keys, settings: Settings) -> Proxy {
        let config = crate::upstream::config_builder()
            .http_status_as_error(false)
            .max_redirects(0)
            .user_agent(ureq::config::AutoHeaderValue::None)
            .accept(ureq::config::AutoHeaderValue::None)
            .accept_encoding(ureq::config::AutoHeaderValue::None)
            .allow_non_standard_methods(true)
            .max_idle_connections(512)
            .max_idle_connections_per_host(128)
            // Children (uvicorn) close idle keep-alive connections after 5 s.
            .max_idle_age(Duration::from_secs(4))
            .timeout_connect(Some(Duration::from_secs(5)))
            .max_response_header_size(256 * 1024)
            .build();
        let conns = conns::Conns::new(config);
        Proxy {
            agent: conns.shared_agent(),
            conns,
            keys: KeyRing::new(keys),
            settings,
            requests: Default::default(),
            strikes: verdict::Strikes::default(),
            outcomes: verdict::Outcomes::default(),
            seq: AtomicU64::new(1),
            boot: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_millis() as u64 & 0xffff_ffff)
                .unwrap_or(0),
        }
    }

    /// The requests alive now: the watchers take back those of a child
    /// whose account ran out.
    pub fn requests(&self) -> std::sync::Arc<requests::Registry> {
        self.requests.clone()
    }

    /// Send the verdict of every attempt at a child to `tx` (per-profile
    /// health, cooldowns). Only the first listener attached counts.
    #[allow(dead_code)] // the supervisor's profile book attaches here
    pub fn report_outcomes(&self, tx: crossbeam_channel::Sender<verdict::Outcome>) -> bool {
        self.outcomes.attach(tx)
    }

    /// Handle one `/v1/*` request held in `holder`; the request is taken out
    /// when answered, so a panic midway leaves it for the caller's 500.
    pub fn handle(&self, holder: &mut Option<Request>, pool: &Handle) {
        let Some(rq) = holder.as_mut() else { return };
        let started = Instant::now();
        let method = rq.method().clone();
        let url = rq.url().to_string();
        let path = url.split('?').next().unwrap_or("").to_string();
        let id = self.seq.fetch_add(1, Ordering::Relaxed);
        let rid = rq
            .headers()
            .iter()
            .find(|h| h.field.equiv("X-Request-Id"))
            .map(|h| h.value.as_str().trim().to_string())
            .filter(|v| !v.is_empty() && v.len() <= MAX_REQUEST_ID)
            .unwrap_or_else(|| format!("aisp-{:08x}-{id}", self.boot));

        // Keys first: nothing else of an unauthorised request is read.
        let open = path == "/v1/models" || method == Method::Options;
        let keys = self.keys.current();
        let access = keys.access(rq);
        if access == Access::Denied && !open {
            self.refuse(
                holder,
                &rid,
                ApiError::InvalidApiKey,
                "Invalid API key: send Authorization: Bearer <key> or X-API-Key: <key>",
            );
            return;
        }
        let body = match body::read_limited(rq, self.settings.max_body_bytes) {
            Ok(b) => b,
            Err(BodyError::TooLarge { limit }) => {
                self.refuse(
                    holder,
                    &rid,
                    ApiError::BodyTooLarge,
                    &format!("request body exceeds MAX_BODY_BYTES ({limit} bytes)"),
                );
                return;
            }
            Err(BodyError::Io(e)) => {
                respond(
                    holder,
                    &rid,
                    ApiError::BadRequest.reply(&format!("could not read the request body: {e}")),
                );
                return;
            }
        };
        let headers = keys::for_child(access, forward_headers(rq));

        if method == Method::Post {
            if let Some(target) = path
                .strip_prefix("/v1/cancel/")
                .filter(|t| !t.is_empty() && !t.contains('/'))
            {
                let auth: Vec<(String, Vec<u8>)> = headers
                    .iter()
                    .filter(|(k, _)| keys::is_auth_header(k))
                    .cloned()
                    .collect();
                let r = cancel::cancel(&self.agent, &self.requests, pool.dispatch(), target, &auth);
                respond(holder, &rid, r);
                return;
            }
        }
        if path == "/v1/queue" && matches!(method, Method::Get | Method::Head) {
            let view = pool.dispatch().view();
            let r = reply::json(200, &serde_json::to_value(view).unwrap_or_default())
                .with_header(reply::header("Cache-Control", "no-store"));
            respond(holder, &rid, r);
            return;
        }

        let completion = path == "/v1/chat/completions" && method == Method::Post;
        let mut streaming = false;
        let mut account = None;
        let mut model = None;
        if completion {
            // Only `stream` matters here (for the logs); everything else is
            // skipped unparsed, which keeps multi-megabyte image payloads cheap.
            match serde_json::from_slice::<CompletionPeek>(&body) {
                Ok(peek) => {
                    streaming = peek.stream.unwrap_or(false);
                    let key = keys.label(access);
                    account = Some(crate::usage::Account::new(key, peek.model.as_deref()));
                    // Per-model cooldowns route by it; an absurd one is ignored.
                    model = peek
                        .model
                        .filter(|m| !m.is_empty() && m.len() <= MAX_MODEL_NAME);
                }
                Err(_) => {
                    respond(
                        holder,
                        &rid,
                        ApiError::BadRequest.reply("the request body must be a JSON object"),
                    );
                    return;
                }
            }
        }
        let kind = if method == Method::Post {
            Kind::Completion
        } else {
            Kind::Other
        };
        let mut headers = headers;
        headers.retain(|(k, _)| !k.eq_ignore_ascii_case("x-request-id"));
        headers.push(("X-Request-Id".to_string(), rid.clone().into_bytes()));
        let exchange = forward::Exchange {
            proxy: self,
            pool,
            id,
            rid,
            client_close: wants_close(rq),
            http10: rq.http_version().0 == 1 && rq.http_version().1 == 0,
            head_only: method == Method::Head,
            method,
            url,
            path,
            headers,
            body,
            kind,
            inspect: completion,
            streaming,
            started,
            usage: account,
            model,
        };
        exchange.run(holder);
    }

    /// Answer before (or instead of) reading the whole body: the client's
    /// socket stops being read and the connection closes after the answer.
    fn refuse(&self, holder: &mut Option<Request>, rid: &str, err: ApiError, msg: &str) {
        if let Some(rq) = holder.take() {
            body::refuse(rq, rid, err, msg);
        }
    }
}

/// `r` with the request's id.
fn with_id(r: Reply, rid: &str) -> Reply {
    match tiny_http::Header::from_bytes(&b"X-Request-Id"[..], rid.as_bytes()) {
        Ok(h) => r.with_header(h),
        Err(_) => r,
    }
}

/// Answer the request in `holder` (if still there) with `r` and its id.
/// Answer with a coordinator-made reply (counted in the metrics as served
/// by no slot).
fn respond(holder: &mut Option<Request>, rid: &str, r: Reply) {
    if let Some(rq) = holder.take() {
        crate::metrics::request_done(None, r.status_code().0, None, None);
        let _ = rq.respond(with_id(r, rid));
    }
}

fn wants_close(rq: &Request) -> bool {
    rq.headers().iter().any(|h| {
        h.field.equiv("Connection") && h.value.as_str().to_ascii_lowercase().contains("close")
    })
}

/// The client's end-to-end headers, minus hop-by-hop ones and those its
/// `Connection` header names.
fn forward_headers(rq: &Request) -> Vec<(String, Vec<u8>)> {
    let named: Vec<String> = rq
        .headers()
        .iter()
        .filter(|h| h.field.equiv("Connection"))
        .flat_map(|h| {
            h.value
                .as_str()
                .split(',')
                .map(|t| t.trim().to_ascii_lowercase())
                .collect::<Vec<_>>()
        })
        .collect();
    rq.headers()
        .iter()
        .filter(|h| {
            let name = h.field.as_str().as_str().to_ascii_lowercase();
            !HOP_BY_HOP.contains(&name.as_str()) && !named.contains(&name)
        })
        .map(|h| {
            (
                h.field.as_str().as_str().to_string(),
                h.value.as_str().as_bytes().to_vec(),
            )
        })
        .collect()
}
