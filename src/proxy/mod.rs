//! The OpenAI front door: every `/v1/*` request is checked (API key, body
//! size), then forwarded to the ready child with the fewest requests in
//! flight, and its answer relayed to the client as it arrives.
//!
//! This is the one forwarder and the one place where failures become status
//! codes. A connect error, a reset before the child's answer, or a status
//! of 500 or more is retried on another ready child not yet tried, with the same
//! body, within one overall deadline; the failing child is reported to its
//! slot watcher for eviction. Once a byte has gone to the client there is no
//! retry. Runs on the HTTP worker thread that received the request.

mod body;
mod cancel;
pub mod keys;
mod relay;

use std::io::Write;
use std::net::Shutdown;
use std::time::{Duration, Instant};

use log::{debug, warn};
use tiny_http::{Method, Request};

use crate::pool::{Lease, Pool};
use crate::reply::ApiError;
use body::BodyError;
use keys::Keys;
use relay::{Framing, RelayError};

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

/// The one field of a chat completion request the proxy looks at.
#[derive(serde::Deserialize)]
struct CompletionPeek {
    #[serde(default)]
    stream: Option<bool>,
}

pub struct Settings {
    pub request_timeout: Duration,
    pub stream_idle_timeout: Duration,
    pub max_body_bytes: u64,
}

pub struct Proxy {
    agent: ureq::Agent,
    keys: Keys,
    settings: Settings,
    inflight: cancel::InFlight,
}

/// Why one attempt at one child failed.
enum Failure {
    /// Retry elsewhere and evict this child.
    Retryable(String),
    /// The overall deadline passed.
    Deadline,
}

impl Proxy {
    pub fn new(keys: Keys, settings: Settings) -> Proxy {
        let agent = crate::upstream::agent(
            ureq::Agent::config_builder()
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
                .max_response_header_size(256 * 1024),
        );
        Proxy {
            agent,
            keys,
            settings,
            inflight: cancel::InFlight::default(),
        }
    }

    /// Handle one `/v1/*` request held in `holder`; the request is taken out
    /// when answered, so a panic midway leaves it for the caller's 500.
    pub fn handle(&self, holder: &mut Option<Request>, pool: &Pool) {
        let Some(rq) = holder.as_mut() else { return };
        let started = Instant::now();
        let method = rq.method().clone();
        let url = rq.url().to_string();
        let path = url.split('?').next().unwrap_or("").to_string();

        // Keys first: nothing else of an unauthorised request is read.
        let open = path == "/v1/models" || method == Method::Options;
        if !open && !self.keys.request_allowed(rq) {
            self.refuse(
                holder,
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
                    ApiError::BodyTooLarge,
                    &format!("request body exceeds MAX_BODY_BYTES ({limit} bytes)"),
                );
                return;
            }
            Err(BodyError::Io(e)) => {
                respond(
                    holder,
                    ApiError::BadRequest,
                    &format!("could not read the request body: {e}"),
                );
                return;
            }
        };
        let headers = forward_headers(rq);

        if method == Method::Post {
            if let Some(id) = path
                .strip_prefix("/v1/cancel/")
                .filter(|id| !id.is_empty() && !id.contains('/'))
            {
                let auth: Vec<(String, Vec<u8>)> = headers
                    .iter()
                    .filter(|(k, _)| {
                        k.eq_ignore_ascii_case("authorization")
                            || k.eq_ignore_ascii_case("x-api-key")
                    })
                    .cloned()
                    .collect();
                let r = cancel::cancel(&self.agent, pool, &self.inflight, id, &auth);
                if let Some(rq) = holder.take() {
                    let _ = rq.respond(r);
                }
                return;
            }
        }

        let streaming = if path == "/v1/chat/completions" && method == Method::Post {
            // Only `stream` matters here; everything else is skipped unparsed,
            // which keeps multi-megabyte image payloads cheap.
            match serde_json::from_slice::<CompletionPeek>(&body) {
                Ok(peek) => peek.stream.unwrap_or(false),
                Err(_) => {
                    respond(
                        holder,
                        ApiError::BadRequest,
                        "the request body must be a JSON object",
                    );
                    return;
                }
            }
        } else {
            false
        };
        let req_id = rq
            .headers()
            .iter()
            .find(|h| h.field.equiv("X-Request-Id"))
            .map(|h| h.value.as_str().to_string());
        let client_close = wants_close(rq);
        let http10 = rq.http_version().0 == 1 && rq.http_version().1 == 0;
        let head_only = method == Method::Head;

        let deadline = started + self.settings.request_timeout;
        let mut tried: Vec<usize> = Vec::new();
        loop {
            let Some(lease) = pool.acquire(&tried) else {
                let msg = if tried.is_empty() {
                    "no ready child to serve this request; retry shortly".to_string()
                } else {
                    format!(
                        "all {} ready children failed this request; retry shortly",
                        tried.len()
                    )
                };
                respond(holder, ApiError::NoReadyChild, &msg);
                return;
            };
            tried.push(lease.slot);
            if let Some(id) = &req_id {
                self.inflight
                    .insert(id, lease.slot, lease.api_port, &lease.profile);
            }
            let outcome = self.attempt(&lease, &method, &url, &headers, &body, streaming, deadline);
            let resp = match outcome {
                Ok(resp) => resp,
                Err(Failure::Retryable(why)) => {
                    self.fail(pool, &lease, &why);
                    self.forget(&req_id);
                    continue;
                }
                Err(Failure::Deadline) => {
                    self.fail(pool, &lease, "no answer within REQUEST_TIMEOUT_S");
                    self.forget(&req_id);
                    respond(
                        holder,
                        ApiError::UpstreamTimeout,
                        "the child did not answer within REQUEST_TIMEOUT_S",
                    );
                    return;
                }
            };
            let status = resp.status().as_u16();
            if status >= 500 {
                self.fail(
                    pool,
                    &lease,
                    &format!("answered {status} to {method} {path}"),
                );
                self.forget(&req_id);
                continue;
            }
            let Some(rq) = holder.take() else { return };
            let client = rq.client_socket();
            let result = relay_response(rq, resp, client_close, http10, head_only);
            self.forget(&req_id);
            match result {
                Ok(bytes) => debug!(
                    "{method} {path} -> {} {status} ({bytes} bytes) in {:.1?}",
                    lease.profile,
                    started.elapsed()
                ),
                Err(RelayError::Client(e)) => {
                    debug!(
                        "{method} {path}: client went away after {:.1?} ({e}); upstream closed",
                        started.elapsed()
                    )
                }
                Err(RelayError::Upstream(e)) => {
                    self.fail(
                        pool,
                        &lease,
                        &format!("broke off its answer to {method} {path}: {e}"),
                    );
                    // The client holds part of an answer that cannot be
                    // completed: end its connection so it sees the break
                    // instead of waiting for the rest.
                    if let Some(client) = &client {
                        let _ = client.shutdown(Shutdown::Both);
                    }
                }
            }
            return;
        }
    }

    /// Answer before (or instead of) reading the whole body: the connection
    /// closes after the answer, lingering (see `body::refuse`).
    fn refuse(&self, holder: &mut Option<Request>, err: ApiError, msg: &str) {
        if let Some(rq) = holder.take() {
            body::refuse(rq, err, msg);
        }
    }

    fn forget(&self, req_id: &Option<String>) {
        if let Some(id) = req_id {
            self.inflight.remove(id);
        }
    }

    fn fail(&self, pool: &Pool, lease: &Lease, why: &str) {
        warn!(
            "slot {}: profile {} failed: {why}; evicting it",
            lease.slot, lease.profile
        );
        pool.evict(lease.slot, lease.generation, why.to_string());
    }

    #[allow(clippy::too_many_arguments)]
    fn attempt(
        &self,
        lease: &Lease,
        method: &Method,
        url: &str,
        headers: &[(String, Vec<u8>)],
        body: &[u8],
        streaming: bool,
        deadline: Instant,
    ) -> Result<ureq::http::Response<ureq::Body>, Failure> {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(Failure::Deadline);
        }
        let mut b = ureq::http::Request::builder()
            .method(method.as_str())
            .uri(format!("http://127.0.0.1:{}{url}", lease.api_port));
        for (k, v) in headers {
            b = b.header(k.as_str(), v.as_slice());
        }
        let idle = streaming.then_some(self.settings.stream_idle_timeout);
        let build_err =
            |e: ureq::http::Error| Failure::Retryable(format!("bad request for the child: {e}"));
        let bodiless = body.is_empty()
            && matches!(
                method,
                Method::Get | Method::Head | Method::Delete | Method::Options
            );
        let result = if bodiless {
            self.send(b.body(()).map_err(build_err)?, left, idle)
        } else {
            self.send(b.body(body).map_err(build_err)?, left, idle)
        };
        match result {
            Ok(r) => Ok(r),
            Err(ureq::Error::Timeout(_)) if Instant::now() >= deadline => Err(Failure::Deadline),
            Err(e) => Err(Failure::Retryable(describe(&e))),
        }
    }

    /// Run one request to a child with the request deadline and, for
    /// streams, the idle limit per read.
    fn send<B: ureq::AsSendBody>(
        &self,
        rq: ureq::http::Request<B>,
        deadline_in: Duration,
        idle: Option<Duration>,
    ) -> Result<ureq::http::Response<ureq::Body>, ureq::Error> {
        let rq = self
            .agent
            .configure_request(rq)
            .timeout_global(Some(deadline_in))
            .timeout_per_read(idle)
            .build();
        self.agent.run(rq)
    }
}

fn respond(holder: &mut Option<Request>, err: ApiError, msg: &str) {
    if let Some(rq) = holder.take() {
        let _ = rq.respond(err.reply(msg));
    }
}

fn describe(e: &ureq::Error) -> String {
    match e {
        ureq::Error::ConnectionFailed => "connection refused".to_string(),
        ureq::Error::Timeout(t) => format!("silent too long ({t})"),
        other => other.to_string(),
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

/// Relay the child's answer: head first, then the body as it arrives.
fn relay_response(
    rq: Request,
    mut resp: ureq::http::Response<ureq::Body>,
    client_close: bool,
    http10: bool,
    head_only: bool,
) -> Result<u64, RelayError> {
    let status = resp.status().as_u16();
    let length = resp
        .headers()
        .get("content-length")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    let named: Vec<String> = resp
        .headers()
        .get_all("connection")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(',').map(|t| t.trim().to_ascii_lowercase()))
        .collect();
    let headers: Vec<(String, Vec<u8>)> = resp
        .headers()
        .iter()
        .filter(|(k, _)| {
            !HOP_BY_HOP.contains(&k.as_str()) && !named.iter().any(|n| n == k.as_str())
        })
        .map(|(k, v)| (k.as_str().to_string(), v.as_bytes().to_vec()))
        .collect();
    let no_body = head_only || status == 204 || status == 304 || (100..200).contains(&status);
    let framing = match (no_body, length, http10) {
        (true, _, _) => Framing::NoBody,
        (false, Some(n), _) => Framing::Length(n),
        (false, None, true) => Framing::UntilClose,
        (false, None, false) => Framing::Chunked,
    };
    let mut w = rq.into_writer();
    let head_framing = if head_only {
        length.map(Framing::Length).unwrap_or(Framing::NoBody)
    } else {
        framing
    };
    let head = relay::head_bytes(status, &headers, head_framing, client_close || http10);
    let mut reader = resp.body_mut().as_reader();
    w.write_all(&head).map_err(RelayError::Client)?;
    // A body of known length follows at once and is flushed with the head
    // (one segment for a short answer); anything else may take a while
    // (an event stream), so its head goes out now.
    if !matches!(framing, Framing::Length(_)) {
        w.flush().map_err(RelayError::Client)?;
    }
    let n = relay::copy_body(&mut reader, &mut w, framing)?;
    Ok(n)
}
