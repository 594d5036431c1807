//! One proxied request's steps: take a ticket from the dispatcher (waiting
//! in its queue if every child is busy), send the request to that child,
//! judge the answer's head, relay the answer while inspecting it, report
//! the verdict; on a failure before any byte reached the client, try once
//! more on another child.
//!
//! Blame: a child is evicted for its own failures only (refused, reset,
//! no head in time, 502/503/504, broken or silent answer), at most one
//! child per request. An account's trouble (quota, empty answers, the
//! older fork's internal timeout) rotates its profile gracefully instead.
//!
//! A request taken back from a child whose log said its account ran out
//! (see `requests`), or whose held stream had nothing in it (`hold`; kept,
//! to pass on if no account has more), is served by another child at no
//! retry's cost, up to `MAX_RECLAIMS` times. A client that leaves (or a
//! cancel) ends its request at once, and the child's connection with it; a
//! completion the child had begun restarts that child. Other 5xx count toward
//! `CONSECUTIVE_5XX_TO_EVICT`, but only once another child has given a
//! second opinion: when the retry answers 5xx too, the request is the
//! problem, its client gets that answer as it is, and nobody is counted.

use std::cell::RefCell;
use std::io::{Read, Write};
use std::time::{Instant, SystemTime};

use log::{debug, info, warn};
use tiny_http::{Method, Request};

use crate::dialect::{Dialect, Translator};
use crate::dispatch::{ChildId, Kind, Refusal, Ticket, Want};
use crate::edge::shown;
use crate::metrics;
use crate::reply::ApiError;
use crate::supervisor::Handle;

use super::conns::{describe, Conn};
use super::hold::{self, is_timeout, HoldEnd};
use super::inspect::Inspector;
use super::relay::{self, cut_client, AnswerHead, Framing, RelayError};
use super::requests::{Registration, Taken};
use super::verdict::{Fault, Outcome, Verdict};
use super::{respond, Proxy, HOP_BY_HOP};

/// Largest error answer kept to be passed on after a retry.
const MAX_KEPT_ANSWER: u64 = 1 << 20;
/// How often one request may be taken back from exhausted accounts.
const MAX_RECLAIMS: u32 = 3;

pub(super) struct Exchange<'a> {
    pub proxy: &'a Proxy,
    pub pool: &'a Handle,
    /// Internal id (unique).
    pub id: u64,
    /// The id the client knows.
    pub rid: String,
    /// The fingerprint of the key it came with (None without keys).
    pub owner: Option<u64>,
    /// An open path (`/v1/models`, `OPTIONS`): anyone may send it, so
    /// whatever it meets never counts against a child.
    pub open: bool,
    pub method: Method,
    pub url: String,
    pub path: String,
    /// Headers for the child (credentials already in the child's form).
    pub headers: Vec<(String, Vec<u8>)>,
    pub body: Vec<u8>,
    pub kind: Kind,
    /// A chat completion: its answer is inspected for emptiness.
    pub inspect: bool,
    /// The client asked for an event stream.
    pub streaming: bool,
    pub client_close: bool,
    pub http10: bool,
    pub head_only: bool,
    pub started: Instant,
    /// Whose completion this is, for the usage counts (None: not one).
    pub usage: Option<crate::usage::Account>,
    /// The model a completion names: a profile cooling for it is avoided.
    pub model: Option<String>,
    /// The API the client speaks; not OpenAI's: `translate` turns the
    /// child's answer into its form.
    pub dialect: Dialect,
    pub translate: Option<RefCell<Translator>>,
}

/// A whole answer kept in memory (an error answer, to pass on as it is).
struct Kept {
    /// The slot whose child gave it.
    slot: Option<usize>,
    status: u16,
    headers: Vec<(String, Vec<u8>)>,
    body: Vec<u8>,
}

/// An attempt that failed before anything reached the client.
struct Failed {
    child: ChildId,
    profile: String,
    verdict: Verdict,
    /// The child's answer, when it gave one.
    answer: Option<Kept>,
}

impl Failed {
    /// `ticket`'s child failed so.
    fn at(ticket: &Ticket, verdict: Verdict, answer: Option<Kept>) -> Failed {
        let (child, profile) = (ticket.child, ticket.profile.clone());
        Failed {
            child,
            profile,
            verdict,
            answer,
        }
    }
}

/// How one attempt ended.
enum Step {
    /// The answer went to the client in full.
    Answered(Verdict),
    /// Nothing reached the client: another child may be tried.
    Failed(Failed),
    /// The answer broke off after bytes reached the client (who was cut
    /// off): no retry.
    Broke(Fault),
    /// Cancelled; `answered` when the client already had part of the answer
    /// (and was cut off), `begun` when the child had the request.
    Cancelled { answered: bool, begun: bool },
    /// The client went away; `begun`: after the child had the request.
    ClientLeft { begun: bool },
    /// Taken back (its log said quota), or a held stream with nothing in
    /// it: served elsewhere at no retry's cost.
    Elsewhere(Failed),
    /// The request could not even be written for the child (a header or
    /// target the HTTP library refuses): the client's fault, not the
    /// child's.
    Unsendable(String),
}

/// Why a request did not reach its child.
enum SendError {
    /// The request itself cannot be built or written: the client's fault.
    Request(String),
    /// Anything on the way to the child or back: the child's fault.
    Child(Fault),
}

impl Step {
    fn cancelled(answered: bool, begun: bool) -> Step {
        Step::Cancelled { answered, begun }
    }
}

impl Exchange<'_> {
    pub fn run(self, holder: &mut Option<Request>) {
        let reg = (self.proxy.requests).enter(self.id, &self.rid, self.owner, self.dialect);
        let dispatch = self.pool.dispatch().clone();
        let (mut first, mut evicted): (Option<Failed>, bool) = (None, false);
        let mut reclaimed: Option<ChildId> = None;
        let mut reclaims = 0;
        // The last empty stream, passed on when no account has more.
        let mut empty: Option<Failed> = None;
        loop {
            if reg.cancelled() {
                return self.cancelled(holder);
            }
            reg.waiting();
            let client = holder.as_ref().and_then(Request::socket_fd);
            let want = Want {
                id: self.id,
                kind: self.kind,
                model: self.model.clone(),
                avoid: first.as_ref().map(|f| f.child).or(reclaimed),
                client,
            };
            let asked = Instant::now();
            let ticket = match dispatch.acquire(want) {
                Ok(t) => t,
                Err(r) => return self.refused(holder, r, first.or(empty)),
            };
            if self.kind == Kind::Completion {
                metrics::queue_waited(asked.elapsed());
            }
            let retry = first.is_some();
            match self.attempt(holder, &ticket, &reg) {
                Step::Answered(v) => {
                    // Free the child before anything else: the next waiter's
                    // wake-up is the handoff's critical path, and sending the
                    // verdict wakes the supervisor thread, which on a busy
                    // machine then runs first. The verdict reaches the book
                    // asynchronously either way, so the order changes nothing
                    // for it.
                    let (child, profile) = (ticket.child, ticket.profile.clone());
                    drop(ticket);
                    if v == Verdict::Ok {
                        self.proxy.strikes.clear(child);
                    }
                    let evict = v == Verdict::ErrorText && !evicted && self.strike(child, &v);
                    self.send_outcome(child, &profile, v, evict);
                    if let Some(f) = first {
                        // A second opinion proved the first child wrong.
                        self.settle(f, &mut evicted);
                    }
                    return;
                }
                Step::Broke(fault) => {
                    let evict = !evicted;
                    if evict {
                        self.evict(ticket.child, &fault.to_string());
                    }
                    self.report(&ticket, Verdict::ChildFault(fault), evict);
                    if let Some(f) = first {
                        self.settle(f, &mut evicted);
                    }
                    return;
                }
                Step::Cancelled { answered, begun } => {
                    if begun && self.kind == Kind::Completion {
                        self.abandon(&ticket, "cancelled");
                    }
                    if !answered {
                        self.cancelled(holder);
                    }
                    return;
                }
                Step::Unsendable(why) => return self.unsendable(holder, ticket, &why),
                Step::ClientLeft { begun } => return self.left(holder, &ticket, begun),
                Step::Elsewhere(f) => {
                    reclaims += 1;
                    let taken_back = f.verdict == Verdict::Reclaimed;
                    info!(
                        "{} {} ({}): slot {} profile {} {}{}; serving it elsewhere",
                        self.method,
                        self.path,
                        self.rid,
                        f.child.slot,
                        f.profile,
                        f.verdict,
                        if taken_back {
                            ""
                        } else {
                            ": a stream with nothing in it, held back"
                        }
                    );
                    if !taken_back {
                        self.outcome(&f, false);
                    }
                    drop(ticket);
                    reclaimed = Some(f.child);
                    empty = if f.answer.is_some() { Some(f) } else { empty };
                    if reclaims > MAX_RECLAIMS {
                        return self.no_more_accounts(holder, empty);
                    }
                }
                Step::Failed(f) if !retry => {
                    info!(
                        "{} {} ({}): slot {} profile {} {}; trying another child",
                        self.method, self.path, self.rid, f.child.slot, f.profile, f.verdict
                    );
                    if f.verdict.evicts_at_once() {
                        evicted = true;
                        self.evict(f.child, &f.verdict.to_string());
                        self.outcome(&f, true);
                    } else if f.verdict.reported_at_once() {
                        self.outcome(&f, false);
                    }
                    drop(ticket);
                    first = Some(f);
                }
                Step::Failed(f2) => {
                    drop(ticket);
                    let f1 = first.take().expect("a retry follows a first failure");
                    return self.second_failure(holder, f1, f2, &mut evicted);
                }
            }
        }
    }

    /// What looks inside `resp`'s body: a completion's 200 is judged.
    fn inspector_for(&self, resp: &ureq::http::Response<ureq::Body>) -> Inspector {
        let content_type = resp
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok());
        let judge = self.inspect && resp.status().as_u16() == 200;
        Inspector::new(content_type, judge)
    }

    /// Hold a streamed completion's head (see `hold`): the bytes to relay
    /// first, or how the attempt ended (taken back or not).
    fn hold_head(
        &self,
        reader: &mut dyn Read,
        inspector: &mut Inspector,
        conn: &Conn,
        sent: Instant,
        head: &AnswerHead,
        ticket: &Ticket,
    ) -> Result<Vec<u8>, Box<Step>> {
        let s = &self.proxy.settings;
        if !s.hold_stream_head || !inspector.judges_events() {
            return Ok(Vec::new());
        }
        let deadline = sent + s.request_timeout;
        let (verdict, body) =
            match hold::hold_answer(reader, inspector, conn, s.stream_idle_timeout, deadline) {
                HoldEnd::Begun(bytes) => return Ok(bytes),
                HoldEnd::Failed(fault) => (Verdict::ChildFault(fault), None),
                HoldEnd::Empty { verdict, body } => (verdict, Some(body)),
            };
        let empty = body.is_some();
        let (slot, headers) = (Some(ticket.child.slot), head.kept.clone());
        let kept = body.map(|body| Kept {
            slot,
            status: 200,
            headers,
            body,
        });
        let f = Failed::at(ticket, verdict, kept);
        Err(Box::new(if empty {
            Step::Elsewhere(f)
        } else {
            Step::Failed(f)
        }))
    }

    /// Every account tried had nothing for this request: the last empty
    /// stream as its child sent it, else 503.
    fn no_more_accounts(&self, holder: &mut Option<Request>, empty: Option<Failed>) {
        if let Some(kept) = empty.and_then(|f| f.answer) {
            return self.pass_on(holder, kept);
        }
        let err = ApiError::NoReadyChild.reply_after(
            "every account tried for this request ran out of quota; retry later",
            Some(60),
        );
        respond(holder, &self.rid, err);
    }

    /// The client went away; `begun`: after the child had its request. A
    /// completion the child had begun may go on generating on its page for
    /// nobody: the child takes no request until it starts again.
    fn left(&self, holder: &mut Option<Request>, ticket: &Ticket, begun: bool) {
        if begun && self.kind == Kind::Completion {
            self.abandon(ticket, "the client left");
        } else {
            let (m, p, rid, after) = (&self.method, &self.path, &self.rid, self.started.elapsed());
            debug!("{m} {p} ({rid}): the client left after {after:.1?}; its child is free");
        }
        holder.take();
    }

    /// A completion its child had begun ends for `what` (its client left,
    /// it was cancelled): the child's page may go on generating, so the
    /// child takes no request until it starts again.
    fn abandon(&self, ticket: &Ticket, what: &str) {
        let child = ticket.child;
        info!(
            "{} {} ({}): {what} after {:.1?}, during its turn on slot {} profile {}; restarting that child",
            self.method,
            self.path,
            self.rid,
            self.started.elapsed(),
            child.slot,
            ticket.profile
        );
        self.pool.restart_abandoned(child.slot, child.generation);
    }

    /// Both attempts failed.
    fn second_failure(
        &self,
        holder: &mut Option<Request>,
        f1: Failed,
        mut f2: Failed,
        evicted: &mut bool,
    ) {
        let gave_5xx = f2.answer.is_some() && f2.verdict.status().is_some_and(|s| s >= 500);
        if gave_5xx && !f2.verdict.reported_at_once() {
            // Two children, two 5xx: the request is the problem.
            let status = f2.verdict.status().unwrap_or(500);
            warn!(
                "{} {} ({}): answered {status} by two children; the client gets the second answer and neither child is blamed",
                self.method, self.path, self.rid
            );
            if !f1.verdict.reported_at_once() {
                let s1 = f1.verdict.status().unwrap_or(status);
                let mut f1 = f1;
                f1.verdict = Verdict::RequestProblem { status: s1 };
                self.outcome(&f1, false);
            }
            f2.verdict = Verdict::RequestProblem { status };
            self.outcome(&f2, false);
            return self.pass_on(holder, f2.answer.expect("checked above"));
        }
        // The second child failed by itself (no answer, or exhausted).
        let evict = f2.verdict.evicts_at_once() && !*evicted;
        if evict {
            *evicted = true;
            self.evict(f2.child, &f2.verdict.to_string());
        }
        self.outcome(&f2, evict);
        let timed_out = f2.verdict == Verdict::ChildFault(Fault::NoHead);
        let why = f2.verdict.to_string();
        let f1_answer = {
            let answer = f2.answer.take();
            let mut f1 = f1;
            let kept = f1.answer.take();
            self.settle(f1, evicted);
            answer.or(kept)
        };
        match f1_answer {
            Some(a) => self.pass_on(holder, a),
            None if timed_out => {
                respond(
                    holder,
                    &self.rid,
                    self.shape(ApiError::UpstreamTimeout.reply(
                        "the child did not answer within REQUEST_TIMEOUT_S, nor did another",
                    )),
                )
            }
            None => respond(
                holder,
                &self.rid,
                self.shape(ApiError::ChildFailed.reply(&format!(
                    "two children failed this request; the last one {why}"
                ))),
            ),
        }
    }

    /// The first failure, once the request's fate is known: a counted 5xx
    /// counts now (an eviction was already reported when it happened).
    fn settle(&self, f: Failed, evicted: &mut bool) {
        if f.verdict.reported_at_once() {
            // Reported when it happened.
            return;
        }
        let evict = !*evicted && self.strike(f.child, &f.verdict);
        *evicted |= evict;
        self.outcome(&f, evict);
    }

    /// One more counted failure of `child`; evicts it (true) when that
    /// makes `CONSECUTIVE_5XX_TO_EVICT` in a row.
    fn strike(&self, child: ChildId, verdict: &Verdict) -> bool {
        if self.open {
            return false;
        }
        let strikes = self.proxy.strikes.strike(child);
        if strikes < self.proxy.settings.consecutive_5xx_to_evict {
            return false;
        }
        self.evict(child, &format!("{verdict} ({strikes} times in a row)"));
        true
    }

    /// No child for the request (first try or retry).
    fn refused(&self, holder: &mut Option<Request>, r: Refusal, first: Option<Failed>) {
        let mut evicted = first.as_ref().is_some_and(|f| f.verdict.evicts_at_once());
        let kept = first.and_then(|mut f| {
            let a = f.answer.take();
            self.settle(f, &mut evicted);
            a
        });
        let err = match &r {
            Refusal::Cancelled => return self.cancelled(holder),
            Refusal::ClientGone => {
                debug!("{} {} ({}): {r}", self.method, self.path, self.rid);
                holder.take();
                return;
            }
            _ if kept.is_some() => {
                return self.pass_on(holder, kept.expect("checked"));
            }
            Refusal::QueueFull { retry_after } => (ApiError::QueueFull, Some(*retry_after)),
            Refusal::QueueTimeout { retry_after, .. } => {
                (ApiError::QueueTimeout, Some(*retry_after))
            }
            Refusal::NoChild { retry_after } => (ApiError::NoReadyChild, Some(*retry_after)),
            Refusal::NoOtherChild => (ApiError::ChildFailed, None),
            Refusal::ModelCooling { retry_after, .. } => {
                (ApiError::ModelExhausted, Some(*retry_after))
            }
            Refusal::ShuttingDown => (ApiError::NoReadyChild, None),
            Refusal::Internal(_) => (ApiError::Overloaded, None),
        };
        let msg = match &r {
            Refusal::QueueFull { .. } => {
                "too many requests wait for a child (MAX_QUEUE); retry shortly".to_string()
            }
            Refusal::QueueTimeout { waited, .. } => format!(
                "no child freed up within {:.0?} (QUEUE_TIMEOUT_S); retry shortly",
                waited
            ),
            Refusal::NoChild { .. } => {
                "no ready child to serve this request; retry shortly".to_string()
            }
            Refusal::NoOtherChild => {
                "the child failed this request and no other child could try it".to_string()
            }
            Refusal::ModelCooling { model, retry_after } => format!(
                "every account is out of quota for model {model}; retry in {retry_after} s, or ask for another model"
            ),
            other => format!("{other}; retry shortly"),
        };
        debug!("{} {} ({}): {r}", self.method, self.path, self.rid);
        respond(
            holder,
            &self.rid,
            self.shape(err.0.reply_after(&msg, err.1)),
        );
    }

    /// The request cannot be written for a child: the client's 400, and
    /// the child (freed with its ticket) is not blamed.
    fn unsendable(&self, holder: &mut Option<Request>, ticket: Ticket, why: &str) {
        drop(ticket);
        info!(
            "{} {} ({}): refused as unsendable: {}",
            self.method,
            self.path,
            self.rid,
            shown(why)
        );
        let msg = format!("the request cannot be forwarded as sent: {why}");
        respond(
            holder,
            &self.rid,
            self.shape(ApiError::BadRequest.reply(&msg)),
        );
    }

    fn cancelled(&self, holder: &mut Option<Request>) {
        info!("{} {} ({}): cancelled", self.method, self.path, self.rid);
        respond(
            holder,
            &self.rid,
            self.shape(ApiError::Cancelled.reply(&format!("request {} was cancelled", self.rid))),
        );
    }

    /// How the request came, for the log: streamed, in another dialect.
    fn flavour(&self) -> String {
        let mut s = String::new();
        if self.streaming {
            s.push_str(", stream");
        }
        if self.dialect != Dialect::OpenAi {
            s.push_str(", ");
            s.push_str(self.dialect.name());
        }
        s
    }

    /// Our own error reply in the client's dialect.
    fn shape(&self, r: crate::reply::Reply) -> crate::reply::Reply {
        super::translate::shaped(self.dialect, r)
    }

    fn evict(&self, child: ChildId, why: &str) {
        if self.open {
            // Anyone may send an open request: it proves nothing of a child.
            debug!(
                "slot {}: {} {} ({}) failed: {why}; an open path, so not held against it",
                child.slot, self.method, self.path, self.rid
            );
            return;
        }
        warn!(
            "slot {}: {} {} ({}) failed: {why}; evicting it",
            child.slot, self.method, self.path, self.rid
        );
        self.pool
            .evict(child.slot, child.generation, why.to_string());
    }

    fn report(&self, ticket: &Ticket, verdict: Verdict, evicted: bool) {
        if verdict == Verdict::Ok {
            self.proxy.strikes.clear(ticket.child);
        }
        self.send_outcome(ticket.child, &ticket.profile, verdict, evicted);
    }

    fn outcome(&self, f: &Failed, evicted: bool) {
        self.send_outcome(f.child, &f.profile, f.verdict.clone(), evicted);
    }

    fn send_outcome(&self, child: ChildId, profile: &str, verdict: Verdict, evicted: bool) {
        if self.open {
            // No verdict of an open request reaches a profile's health or
            // cooldowns.
            return;
        }
        crate::usage::answered(
            profile,
            self.usage.as_ref(),
            &verdict,
            self.started.elapsed(),
        );
        if !matches!(verdict, Verdict::Ok | Verdict::ClientError { .. }) {
            info!(
                "slot {}: profile {profile}: {} {} ({}): {verdict}",
                child.slot, self.method, self.path, self.rid
            );
        }
        // An exhausted profile's answer (and an empty one) goes at once, not
        // through the outcome channel: the slot must be draining before this
        // request's retry asks for a child, so that it waits for the
        // replacement instead of finding no other child.
        self.pool.report_now(child, &verdict, self.model.as_deref());
        self.proxy.outcomes.report(Outcome {
            child,
            profile: profile.to_string(),
            model: self.model.clone(),
            verdict,
            request_id: self.rid.clone(),
            evicted,
            at: SystemTime::now(),
        });
    }

    /// One try at the ticket's child.
    fn attempt(&self, holder: &mut Option<Request>, ticket: &Ticket, reg: &Registration) -> Step {
        let conn = self.proxy.conns.take(ticket.port, ticket.child.generation);
        let failed = |v: Verdict, answer: Option<Kept>| Step::Failed(Failed::at(ticket, v, answer));
        // What a request taken from its child becomes, before any byte of
        // the answer reached the client.
        let taken = |t: Taken| match t {
            Taken::Cancelled => Step::cancelled(false, true),
            Taken::Reclaimed => Step::Elsewhere(Failed::at(ticket, Verdict::Reclaimed, None)),
            Taken::ClientGone => Step::ClientLeft { begun: true },
        };
        let client = holder.as_ref().and_then(Request::socket_fd);
        let model = self.model.as_deref();
        if let Err(t) = reg.running(conn.agent(), &ticket.profile, ticket.child, model, client) {
            return match t {
                // Never sent: the child knows nothing of it.
                Taken::ClientGone => Step::ClientLeft { begun: false },
                Taken::Cancelled => Step::cancelled(false, false),
                t => taken(t),
            };
        }
        let sent = Instant::now();
        let mut resp = match self.send(&conn, ticket.port) {
            Ok(r) => r,
            Err(SendError::Request(why)) => return Step::Unsendable(why),
            Err(SendError::Child(fault)) => {
                return reg
                    .taken()
                    .map_or_else(|| failed(Verdict::ChildFault(fault), None), taken);
            }
        };
        conn.set_idle(Some(self.proxy.settings.stream_idle_timeout));
        let status = resp.status().as_u16();
        let retry_after = resp
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        if let Some(v) = Verdict::of_head(status, retry_after.as_deref()) {
            let mut kept = keep(&mut resp);
            kept.slot = Some(ticket.child.slot);
            if let Some(t) = reg.taken() {
                return taken(t);
            }
            let v = v.with_body(&kept.body);
            return failed(v, Some(kept));
        }
        let mut inspector = self.inspector_for(&resp);
        let head = relay::answer_head(&resp, &self.rid);
        let mut reader = resp.body_mut().as_reader();
        let held = match self.hold_head(&mut reader, &mut inspector, &conn, sent, &head, ticket) {
            Ok(held) => held,
            Err(step) => return reg.taken().map_or(*step, taken),
        };
        if let Err(t) = reg.answering() {
            return taken(t);
        }
        // The client's first byte: the head, once any hold is over.
        let first_byte = self.started.elapsed();
        let Some(rq) = holder.take() else {
            return Step::ClientLeft { begun: true };
        };
        let result = self.relay(rq, status, &head, &held, &mut reader, &mut inspector);
        metrics::request_done(
            Some(ticket.child.slot),
            status,
            Some(self.started.elapsed()),
            Some(first_byte),
        );
        match result {
            Ok(bytes) => {
                let reading = inspector.finish();
                crate::usage::tokens(&ticket.profile, self.usage.as_ref(), reading.tokens);
                let verdict = Verdict::of_answer(status, reading.empty);
                debug!(
                    "{} {} ({}{}) -> {} {status} ({bytes} bytes) in {:.1?}",
                    self.method,
                    self.path,
                    self.rid,
                    self.flavour(),
                    ticket.profile,
                    self.started.elapsed()
                );
                // Kept for the next request only while nothing can shut it
                // (the client watch, a cancel).
                if reg.done().is_ok() {
                    self.proxy
                        .conns
                        .give_back(ticket.port, ticket.child.generation, conn);
                }
                Step::Answered(verdict)
            }
            Err(_) if reg.taken() == Some(Taken::ClientGone) => Step::ClientLeft { begun: true },
            Err(_) if reg.cancelled() => Step::cancelled(true, true),
            Err(RelayError::Client(e)) => {
                debug!(
                    "{} {} ({}): client went away after {:.1?} ({e}); upstream closed",
                    self.method,
                    self.path,
                    self.rid,
                    self.started.elapsed()
                );
                Step::ClientLeft { begun: true }
            }
            Err(RelayError::Upstream(e)) => Step::Broke(if is_timeout(&e) {
                Fault::Silent
            } else {
                Fault::Broken(e.to_string())
            }),
        }
    }

    /// Send the request; the head must come within `REQUEST_TIMEOUT_S`
    /// (queueing inside a child included), later reads obey the idle cap.
    fn send(&self, conn: &Conn, port: u16) -> Result<ureq::http::Response<ureq::Body>, SendError> {
        self.send_raw(conn, port).map_err(|e| match e {
            // Refused by the HTTP library before a byte went out: the
            // request is at fault, whatever the child is.
            ureq::Error::BadUri(why) => SendError::Request(why),
            ureq::Error::Http(e) => SendError::Request(e.to_string()),
            ureq::Error::Timeout(_) => SendError::Child(Fault::NoHead),
            other => SendError::Child(Fault::Connection(describe(&other))),
        })
    }

    fn send_raw(
        &self,
        conn: &Conn,
        port: u16,
    ) -> Result<ureq::http::Response<ureq::Body>, ureq::Error> {
        let mut b = ureq::http::Request::builder()
            .method(self.method.as_str())
            .uri(format!("http://127.0.0.1:{port}{}", self.url));
        for (k, v) in &self.headers {
            b = b.header(k.as_str(), v.as_slice());
        }
        let bodiless = self.body.is_empty()
            && matches!(
                self.method,
                Method::Get | Method::Head | Method::Delete | Method::Options
            );
        let head = Some(self.proxy.settings.request_timeout);
        let agent = conn.agent();
        let bad = ureq::Error::Http;
        if bodiless {
            let rq = b.body(()).map_err(bad)?;
            let rq = agent
                .configure_request(rq)
                .timeout_send_request(head)
                .timeout_recv_response(head)
                .build();
            agent.run(rq)
        } else {
            let rq = b.body(self.body.as_slice()).map_err(bad)?;
            let rq = agent
                .configure_request(rq)
                .timeout_send_request(head)
                .timeout_send_body(head)
                .timeout_recv_response(head)
                .build();
            agent.run(rq)
        }
    }

    /// Relay the child's answer: head first, then the body as it arrives.
    /// When the child breaks off, the client's connection is cut so it
    /// sees the break instead of waiting for the rest.
    /// `held`: the answer's first bytes, read (and inspected) already.
    fn relay(
        &self,
        rq: Request,
        status: u16,
        head: &AnswerHead,
        held: &[u8],
        reader: &mut dyn Read,
        inspector: &mut Inspector,
    ) -> Result<u64, RelayError> {
        if let Some(t) = &self.translate {
            let edge = super::translate::Edge {
                dialect: self.dialect,
                close: self.client_close || self.http10,
                http10: self.http10,
                head_only: self.head_only,
                headers: head.headers.clone(),
                cut: cut_client,
            };
            return super::translate::relay(edge, rq, status, held, reader, inspector, t);
        }
        let length = head.length;
        let headers = &head.headers;
        let no_body =
            self.head_only || status == 204 || status == 304 || (100..200).contains(&status);
        let framing = match (no_body, length, self.http10) {
            (true, _, _) => Framing::NoBody,
            (false, Some(n), _) => Framing::Length(n),
            (false, None, true) => Framing::UntilClose,
            (false, None, false) => Framing::Chunked,
        };
        let head_framing = if self.head_only {
            length.map(Framing::Length).unwrap_or(Framing::NoBody)
        } else {
            framing
        };
        let client = rq.socket_fd();
        // The writer keeps the client's socket open, so `client` stays
        // valid while `w` lives.
        let mut w = rq.into_writer();
        let head = relay::head_bytes(
            status,
            headers,
            head_framing,
            self.client_close || self.http10,
        );
        w.write_all(&head).map_err(RelayError::Client)?;
        // A body of known length follows at once and is flushed with the
        // head (one segment for a short answer); anything else may take a
        // while (an event stream), so its head goes out now.
        if !matches!(framing, Framing::Length(_)) {
            w.flush().map_err(RelayError::Client)?;
        }
        let (rest, framing) = match framing {
            Framing::Length(n) if (held.len() as u64) > n => {
                cut_client(client);
                return Err(RelayError::Upstream(std::io::Error::other(
                    "child sent more than its Content-Length",
                )));
            }
            Framing::Length(n) => (held.len() as u64, Framing::Length(n - held.len() as u64)),
            f => (held.len() as u64, f),
        };
        relay::write_piece(&mut w, framing, held, &mut Vec::new()).map_err(RelayError::Client)?;
        let result = relay::copy_body(reader, &mut w, framing, &mut |piece| inspector.feed(piece))
            .map(|n| n + rest);
        if let Err(RelayError::Upstream(_)) = &result {
            cut_client(client);
        }
        drop(w);
        result
    }

    /// Give the client a kept answer as the child gave it.
    fn pass_on(&self, holder: &mut Option<Request>, mut kept: Kept) {
        let Some(rq) = holder.take() else { return };
        if self.dialect != Dialect::OpenAi {
            kept.body = super::translate::shaped_body(self.dialect, kept.status, &kept.body);
            kept.headers
                .retain(|(k, _)| k != "content-type" && k != "content-encoding");
            kept.headers
                .push(("content-type".into(), b"application/json".to_vec()));
        }
        metrics::request_done(kept.slot, kept.status, Some(self.started.elapsed()), None);
        let mut headers: Vec<(String, Vec<u8>)> = kept
            .headers
            .into_iter()
            .filter(|(k, _)| k != "x-request-id")
            .collect();
        headers.push(("X-Request-Id".to_string(), self.rid.as_bytes().to_vec()));
        let framing = if self.head_only {
            Framing::NoBody
        } else {
            Framing::Length(kept.body.len() as u64)
        };
        let mut w = rq.into_writer();
        let head = relay::head_bytes(
            kept.status,
            &headers,
            framing,
            self.client_close || self.http10,
        );
        let _ = w.write_all(&head);
        if !self.head_only {
            let _ = w.write_all(&kept.body);
        }
        let _ = w.flush();
    }
}

/// Read a (failed) answer whole, up to a bound, to pass it on later.
fn keep(resp: &mut ureq::http::Response<ureq::Body>) -> Kept {
    let status = resp.status().as_u16();
    let headers = resp
        .headers()
        .iter()
        .filter(|(k, _)| !HOP_BY_HOP.contains(&k.as_str()))
        .map(|(k, v)| (k.as_str().to_string(), v.as_bytes().to_vec()))
        .collect();
    let mut body = Vec::new();
    let _ = resp
        .body_mut()
        .as_reader()
        .take(MAX_KEPT_ANSWER)
        .read_to_end(&mut body);
    Kept {
        slot: None,
        status,
        headers,
        body,
    }
}
