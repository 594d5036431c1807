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
mod hold;
mod inspect;
pub mod keys;
pub mod limits;
mod relay;
pub mod requests;
mod translate;
pub mod usage;
pub mod verdict;

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tiny_http::{Method, Request};

use crate::dialect::{Dialect, Route};
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
const MAX_REQUEST_ID: usize = crate::edge::MAX_REQUEST_ID;

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
    /// Hold a streamed completion's head until its answer begins (`hold`).
    pub hold_stream_head: bool,
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
    /// The admin key, when configured: its holder may cancel any request.
    admin: std::sync::OnceLock<crate::admin::http::AdminKey>,
}

impl Proxy {
    /// Whether `rq` passes the API key check (always, without keys).
    pub fn key_ok(&self, rq: &Request) -> bool {
        self.keys.current().access(rq) != Access::Denied
    }

    /// The label of the API key `rq` presents, if it presents one.
    pub fn key_label(&self, rq: &Request) -> Option<String> {
        let keys = self.keys.current();
        let access = keys.access(rq);
        keys.label(access)
    }

    /// Whether API keys are configured (an empty set disables the check).
    pub fn keys_enabled(&self) -> bool {
        self.keys.current().enabled()
    }

    /// Check requests against `keys` from now on (a reload); true when
    /// the set differs from the one in force.
    pub fn set_keys(&self, keys: Keys) -> bool {
        let changed = !self.keys.current().same_set(&keys);
        limits::publish(keys.limited());
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
        limits::publish(keys.limited());
        Proxy {
            agent: conns.shared_agent(),
            conns,
            keys: KeyRing::new(keys),
            settings,
            requests: Default::default(),
            strikes: verdict::Strikes::default(),
            outcomes: verdict::Outcomes::default(),
            seq: AtomicU64::new(1),
            admin: std::sync::OnceLock::new(),
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
        let rid = request_id(rq);

        // Another client's dialect, told by its path (and headers).
        let (route, speaks) = translate::route_of(rq, &url);

        // Keys first: nothing else of an unauthorised request is read.
        let open = path == "/v1/models"
            || method == Method::Options
            || matches!(route, Some(Route::Models(_) | Route::Model(..)));
        let keys = self.keys.current();
        let access = keys.access(rq);
        let owner = self.owner(access);
        let Some(body) = self.gate(holder, &rid, speaks, &path, open, access) else {
            return;
        };
        let Some(rq) = holder.as_mut() else { return };
        let headers = keys::for_child(access, forward_headers(rq));

        if let Some(target) = cancel_target(&method, &path) {
            let r = self.cancel(rq, pool, target, &headers, owner);
            return respond(holder, &rid, r);
        }
        if let Some(view) = self.view(&method, &path, pool, &keys, access) {
            let r = reply::json(200, &view).with_header(reply::header("Cache-Control", "no-store"));
            return respond(holder, &rid, r);
        }

        if let Some(route) = route {
            let holder_key = keys.holder(access);
            let plan = translate::plan(&route, &body);
            let who = (id, rid, started, owner, open);
            return self.edge(holder, who, path, headers, holder_key, plan, pool);
        }
        let completion = path == "/v1/chat/completions" && method == Method::Post;
        let (streaming, account, model) = match completion {
            true => match completion_facts(&keys, access, &body) {
                Ok(facts) => facts,
                Err(r) => return respond(holder, &rid, r),
            },
            false => (false, None, None),
        };
        let kind = match method {
            Method::Post => Kind::Completion,
            _ => Kind::Other,
        };
        let headers = with_request_id(headers, &rid);
        let exchange = forward::Exchange {
            proxy: self,
            pool,
            id,
            rid,
            owner,
            open,
            dialect: Dialect::OpenAi,
            translate: None,
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

    /// What every request passes before anything else of it is read: a
    /// key (unless on an open path, or the admin's cancel), no body on an
    /// open path, a body within `MAX_BODY_BYTES`. The body, or None when
    /// the client was answered (in its dialect's shape).
    fn gate(
        &self,
        holder: &mut Option<Request>,
        rid: &str,
        speaks: Dialect,
        path: &str,
        open: bool,
        access: Access<'_>,
    ) -> Option<Vec<u8>> {
        let rq = holder.as_mut()?;
        // The admin key may cancel without an API key.
        let admin_cancel = path.starts_with("/v1/cancel/") && self.is_admin(rq);
        let refusal = if access == Access::Denied && !open && !admin_cancel {
            Some((ApiError::InvalidApiKey, translate::key_hint(speaks)))
        } else if open && body::has_unread_body(rq) {
            // The open paths take no body: nothing is read or forwarded.
            Some((
                ApiError::BadRequest,
                "GET /v1/models and OPTIONS take no request body",
            ))
        } else {
            None
        };
        if let Some((err, msg)) = refusal {
            self.refuse(holder, rid, speaks, err, msg);
            return None;
        }
        match body::read_limited(rq, self.settings.max_body_bytes) {
            Ok(b) => Some(b),
            Err(BodyError::TooLarge { limit }) => {
                let msg = format!("request body exceeds MAX_BODY_BYTES ({limit} bytes)");
                self.refuse(holder, rid, speaks, ApiError::BodyTooLarge, &msg);
                None
            }
            Err(BodyError::Io(e)) => {
                let r =
                    ApiError::BadRequest.reply(&format!("could not read the request body: {e}"));
                respond(holder, rid, translate::shaped(speaks, r));
                None
            }
        }
    }

    /// The views answered here: `GET /v1/queue` and `GET /v1/budget`.
    fn view(
        &self,
        method: &Method,
        path: &str,
        pool: &Handle,
        keys: &Keys,
        access: Access<'_>,
    ) -> Option<serde_json::Value> {
        if !matches!(method, Method::Get | Method::Head) {
            return None;
        }
        match path {
            "/v1/queue" => Some(self.queue(pool)),
            "/v1/budget" => Some(budget(keys, access, pool)),
            _ => None,
        }
    }

    /// `GET /v1/queue`: the dispatcher's queue and routes, and every
    /// request alive with the dialect it came in.
    fn queue(&self, pool: &Handle) -> serde_json::Value {
        let mut view = serde_json::to_value(pool.dispatch().view()).unwrap_or_default();
        view["requests"] = serde_json::to_value(self.requests.listing()).unwrap_or_default();
        view
    }

    /// Serve a dialect request: the child's request the edge made of it
    /// (`plan`, or the answer to give at once) goes the OpenAI path's way,
    /// the client's path kept for the logs. `who` is the request's ids and
    /// start.
    #[allow(clippy::too_many_arguments)]
    fn edge(
        &self,
        holder: &mut Option<Request>,
        who: (u64, String, Instant, Option<u64>, bool),
        path: String,
        headers: Vec<(String, Vec<u8>)>,
        key: Option<(String, std::sync::Arc<limits::Limits>)>,
        plan: Result<translate::Plan, Reply>,
        pool: &Handle,
    ) {
        let (id, rid, started, owner, open) = who;
        let plan = match plan {
            Ok(p) => p,
            Err(r) => return respond(holder, &rid, r),
        };
        if plan
            .model
            .as_deref()
            .is_some_and(|m| !crate::edge::model_ok(m))
        {
            let r = ApiError::BadRequest.reply(
                "the model name must be 1 to 200 visible ASCII characters (no spaces or quotes)",
            );
            return respond(holder, &rid, translate::shaped(plan.translator.dialect, r));
        }
        if let (true, Some((label, limits))) = (plan.completion, &key) {
            if let Err(r) = limits::check(label, limits, plan.model.as_deref()) {
                return respond(holder, &rid, translate::shaped(plan.translator.dialect, r));
            }
        }
        let key = key.map(|(label, _)| label);
        let mut headers = translate::child_headers(headers);
        let rq = holder.as_ref();
        headers.retain(|(k, _)| !k.eq_ignore_ascii_case("x-request-id"));
        headers.push(("X-Request-Id".to_string(), rid.clone().into_bytes()));
        let method = if plan.completion {
            Method::Post
        } else {
            Method::Get
        };
        let head_only = rq.is_some_and(|r| *r.method() == Method::Head);
        forward::Exchange {
            proxy: self,
            pool,
            id,
            rid,
            client_close: rq.is_some_and(wants_close),
            http10: rq.is_some_and(|r| r.http_version().0 == 1 && r.http_version().1 == 0),
            head_only,
            method,
            url: plan.url,
            path,
            headers,
            body: plan.body,
            kind: plan.kind,
            inspect: plan.completion,
            streaming: plan.streaming,
            started,
            usage: plan
                .completion
                .then(|| crate::usage::Account::new(key, plan.model.as_deref())),
            model: plan
                .model
                .filter(|m| !m.is_empty() && m.len() <= MAX_MODEL_NAME),
            owner,
            open,
            dialect: plan.translator.dialect,
            translate: Some(std::cell::RefCell::new(plan.translator)),
        }
        .run(holder)
    }

    /// Answer before (or instead of) reading the whole body: the client's
    /// socket stops being read and the connection closes after the answer.
    /// `POST /v1/cancel/{target}` (see `cancel`): as the admin when `rq`
    /// carries the admin key, else as the owner of its API key.
    fn cancel(
        &self,
        rq: &Request,
        pool: &Handle,
        target: &str,
        headers: &[(String, Vec<u8>)],
        owner: Option<u64>,
    ) -> Reply {
        let auth: Vec<(String, Vec<u8>)> = headers
            .iter()
            .filter(|(k, _)| keys::is_auth_header(k))
            .cloned()
            .collect();
        let who = match self.is_admin(rq) {
            true => requests::Caller::Admin,
            false => requests::Caller::Owner(owner),
        };
        let (agent, registry) = (&self.agent, &self.requests);
        cancel::cancel(agent, registry, pool.dispatch(), target, &auth, who)
    }

    /// Who made a request, for cancels: a fingerprint of its key (keyed
    /// with this boot's secret, never the key), None without keys.
    fn owner(&self, access: Access<'_>) -> Option<u64> {
        match access {
            Access::Key(k) => Some(keys::fingerprint(k)),
            Access::NoKeys | Access::Denied => None,
        }
    }

    /// Whether `rq` presents the admin key (when one is configured).
    fn is_admin(&self, rq: &Request) -> bool {
        self.admin
            .get()
            .is_some_and(|k| crate::admin::http::offers(rq, k))
    }

    /// The admin key, which may cancel any request; set once at start.
    pub fn set_admin_key(&self, key: Option<crate::admin::http::AdminKey>) {
        if let Some(k) = key {
            let _ = self.admin.set(k);
        }
    }

    /// Answer before (or instead of) reading the whole body: the client's
    /// socket stops being read and the connection closes after the answer.
    fn refuse(
        &self,
        holder: &mut Option<Request>,
        rid: &str,
        d: Dialect,
        err: ApiError,
        msg: &str,
    ) {
        if let Some(rq) = holder.take() {
            translate::refuse(d, rq, rid, err, msg);
        }
    }
}

/// `GET /v1/budget`: the presenting key's own day and limits (null
/// without keys), and the fleet's account budgets per model line (null
/// without `MODEL_BUDGETS_FILE`): sums over the accounts, no profile name.
fn budget(keys: &Keys, access: Access<'_>, pool: &Handle) -> serde_json::Value {
    let key = keys
        .holder(access)
        .map(|(label, limits)| crate::usage::key_budget(&label, &limits));
    let models = pool.snapshot().budgets(false);
    serde_json::json!({ "key": key, "models": models })
}

/// The key's own limits on a completion (see `limits`): Err is the answer.
fn limit(keys: &Keys, access: Access<'_>, model: Option<&str>) -> Result<(), Reply> {
    match keys.holder(access) {
        Some((label, limits)) => limits::check(&label, &limits, model),
        None => Ok(()),
    }
}

/// The request's id: the client's `X-Request-Id` when it is one we keep
/// (checked at the edge; see `edge::request_id_ok`), else a random one, so
/// nobody can guess another client's id.
fn request_id(rq: &Request) -> String {
    rq.headers()
        .iter()
        .find(|h| h.field.equiv("X-Request-Id"))
        .map(|h| h.value.as_str().trim().to_string())
        .filter(|v| !v.is_empty() && v.len() <= MAX_REQUEST_ID && crate::edge::request_id_ok(v))
        .unwrap_or_else(|| format!("aisp-{}", crate::random::hex::<16>()))
}

/// What the proxy reads of a completion's body: only `stream` and `model`;
/// everything else is skipped unparsed, which keeps multi-megabyte image
/// payloads cheap. A model name is routed by (per-model cooldowns) and
/// logged, so one that is not a plain word is refused.
fn peek(body: &[u8]) -> Result<CompletionPeek, &'static str> {
    let peek = serde_json::from_slice::<CompletionPeek>(body)
        .map_err(|_| "the request body must be a JSON object")?;
    match peek.model.as_deref() {
        Some(m) if !crate::edge::model_ok(m) || m.len() > MAX_MODEL_NAME => {
            Err("the model name must be 1 to 200 visible ASCII characters (no spaces or quotes)")
        }
        _ => Ok(peek),
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

/// What the proxy reads of an OpenAI completion's body before it goes on:
/// whether it streams, the usage account (key and model) and the model;
/// or the answer when the body cannot be read or a key limit refuses it.
fn completion_facts(
    keys: &Keys,
    access: Access,
    body: &[u8],
) -> Result<(bool, Option<crate::usage::Account>, Option<String>), Reply> {
    let peek = peek(body).map_err(|why| ApiError::BadRequest.reply(why))?;
    limit(keys, access, peek.model.as_deref())?;
    let account = crate::usage::Account::new(keys.label(access), peek.model.as_deref());
    Ok((peek.stream.unwrap_or(false), Some(account), peek.model))
}

/// The headers for the child with the request's own `X-Request-Id`.
fn with_request_id(mut headers: Vec<(String, Vec<u8>)>, rid: &str) -> Vec<(String, Vec<u8>)> {
    headers.retain(|(k, _)| !k.eq_ignore_ascii_case("x-request-id"));
    headers.push(("X-Request-Id".to_string(), rid.as_bytes().to_vec()));
    headers
}

/// The id a `POST /v1/cancel/{id}` names.
fn cancel_target<'a>(method: &Method, path: &'a str) -> Option<&'a str> {
    if *method != Method::Post {
        return None;
    }
    path.strip_prefix("/v1/cancel/")
        .filter(|t| !t.is_empty() && !t.contains('/'))
}
