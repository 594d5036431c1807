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

mod ending;

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

/// What a request's tries have met so far.
#[derive(Default)]
struct Tries {
    /// The first failure, while another child tries.
    first: Option<Failed>,
    /// A child was evicted for this request already.
    evicted: bool,
    /// The child an exhausted answer was last taken back from.
    reclaimed: Option<ChildId>,
    reclaims: u32,
    /// The last empty stream, passed on when no account has more.
    empty: Option<Failed>,
}

/// After a try: another, or the request is over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Flow {
    Again,
    Done,
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
        let mut tries = Tries::default();
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
                avoid: tries.first.as_ref().map(|f| f.child).or(tries.reclaimed),
                client,
            };
            let asked = Instant::now();
            let ticket = match dispatch.acquire(want) {
                Ok(t) => t,
                Err(r) => return self.refused(holder, r, tries.first.or(tries.empty)),
            };
            if self.kind == Kind::Completion {
                metrics::queue_waited(asked.elapsed());
            }
            let step = self.attempt(holder, &ticket, &reg);
            if self.after(holder, ticket, step, &mut tries) == Flow::Done {
                return;
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
        self.relayed(result, inspector, ticket, reg, conn, status)
    }

    /// How the relay of an answer ended: answered (its verdict, the
    /// connection kept when nothing can shut it any more), the client gone
    /// or the request cancelled meanwhile, or the child broken off.
    fn relayed(
        &self,
        result: Result<u64, RelayError>,
        inspector: Inspector,
        ticket: &Ticket,
        reg: &Registration,
        conn: Conn,
        status: u16,
    ) -> Step {
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
