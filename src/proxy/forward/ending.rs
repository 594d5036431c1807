//! How one request's tries end: what a try's step means (the next try, or
//! the answer the client gets), whom a failure is blamed on (the
//! consecutive 5xx strikes, evictions, a second opinion settling the
//! first), the refusals when no child can be had, and a completion its
//! client left or cancelled mid-turn. Runs on the request's HTTP worker.

use super::*;

impl Exchange<'_> {
    /// What the try's `step` at `ticket`'s child means: who is blamed,
    /// what the client gets, and whether another child tries.
    pub(super) fn after(
        &self,
        holder: &mut Option<Request>,
        ticket: Ticket,
        step: Step,
        tries: &mut Tries,
    ) -> Flow {
        match step {
            Step::Answered(v) => {
                // Free the child before anything else: the next waiter's
                // wake-up is the handoff's critical path, and sending the
                // verdict wakes the supervisor thread, which on a busy
                // machine then runs first. The verdict reaches the book
                // asynchronously either way, so the order changes nothing
                // for it.
                let (child, profile) = (ticket.child, ticket.profile.clone());
                // A served answer under a budget keeps its place in the
                // budget until the book has counted it.
                let mut ticket = ticket;
                ticket.served = v == Verdict::Ok;
                drop(ticket);
                if v == Verdict::Ok {
                    self.proxy.strikes.clear(child);
                }
                let evict = v == Verdict::ErrorText && !tries.evicted && self.strike(child, &v);
                self.send_outcome(child, &profile, v, evict);
                if let Some(f) = tries.first.take() {
                    // A second opinion proved the first child wrong.
                    self.settle(f, &mut tries.evicted);
                }
                Flow::Done
            }
            Step::Broke(fault) => {
                let evict = !tries.evicted;
                if evict {
                    self.evict(ticket.child, &fault.to_string());
                }
                self.report(&ticket, Verdict::ChildFault(fault), evict);
                if let Some(f) = tries.first.take() {
                    self.settle(f, &mut tries.evicted);
                }
                Flow::Done
            }
            Step::Cancelled { answered, begun } => {
                if begun && self.kind == Kind::Completion {
                    self.abandon(&ticket, "cancelled");
                }
                if !answered {
                    self.cancelled(holder);
                }
                Flow::Done
            }
            Step::Unsendable(why) => {
                self.unsendable(holder, ticket, &why);
                Flow::Done
            }
            Step::ClientLeft { begun } => {
                self.left(holder, &ticket, begun);
                Flow::Done
            }
            Step::Elsewhere(f) => self.elsewhere(holder, ticket, f, tries),
            Step::Failed(f) if tries.first.is_none() => self.first_failure(ticket, f, tries),
            Step::Failed(f2) => {
                drop(ticket);
                let f1 = tries.first.take().expect("a retry follows a first failure");
                self.second_failure(holder, f1, f2, &mut tries.evicted);
                Flow::Done
            }
        }
    }

    /// Taken back from an exhausted account, or a held stream with nothing
    /// in it: served elsewhere at no retry's cost, up to `MAX_RECLAIMS`.
    /// The ticket is held until the book has heard, so no other request
    /// gets this child first.
    fn elsewhere(
        &self,
        holder: &mut Option<Request>,
        ticket: Ticket,
        f: Failed,
        tries: &mut Tries,
    ) -> Flow {
        tries.reclaims += 1;
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
        tries.reclaimed = Some(f.child);
        if f.answer.is_some() {
            tries.empty = Some(f);
        }
        if tries.reclaims > MAX_RECLAIMS {
            self.no_more_accounts(holder, tries.empty.take());
            return Flow::Done;
        }
        Flow::Again
    }

    /// The first failure: another child tries; one that evicts at once is
    /// reported now, a counted 5xx waits for the second opinion.
    fn first_failure(&self, ticket: Ticket, f: Failed, tries: &mut Tries) -> Flow {
        info!(
            "{} {} ({}): slot {} profile {} {}; trying another child",
            self.method, self.path, self.rid, f.child.slot, f.profile, f.verdict
        );
        if f.verdict.evicts_at_once() {
            tries.evicted = true;
            self.evict(f.child, &f.verdict.to_string());
            self.outcome(&f, true);
        } else if f.verdict.reported_at_once() {
            self.outcome(&f, false);
        }
        drop(ticket);
        tries.first = Some(f);
        Flow::Again
    }

    /// Every account tried had nothing for this request: the last empty
    /// stream as its child sent it, else 503.
    pub(super) fn no_more_accounts(&self, holder: &mut Option<Request>, empty: Option<Failed>) {
        if let Some(kept) = empty.and_then(|f| f.answer) {
            return self.pass_on(holder, kept);
        }
        let err = ApiError::NoReadyChild.reply_after(
            "every account tried for this request ran out of quota; retry later",
            Some(60),
        );
        respond(holder, &self.rid, self.shape(err));
    }

    /// The client went away; `begun`: after the child had its request. A
    /// completion the child had begun may go on generating on its page for
    /// nobody: the child takes no request until it starts again.
    pub(super) fn left(&self, holder: &mut Option<Request>, ticket: &Ticket, begun: bool) {
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
    pub(super) fn abandon(&self, ticket: &Ticket, what: &str) {
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
    pub(super) fn second_failure(
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
    pub(super) fn settle(&self, f: Failed, evicted: &mut bool) {
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
    pub(super) fn strike(&self, child: ChildId, verdict: &Verdict) -> bool {
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
    pub(super) fn refused(&self, holder: &mut Option<Request>, r: Refusal, first: Option<Failed>) {
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
            Refusal::ModelOff { .. } => (ApiError::ModelNotAllowed, None),
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
                "every account is out of quota or has used today's budget for model {model}; retry in {retry_after} s, or ask for another model"
            ),
            Refusal::ModelOff { model } => format!(
                "no account's tier allows model {model} (MODEL_BUDGETS_FILE); ask for another model"
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
    pub(super) fn unsendable(&self, holder: &mut Option<Request>, ticket: Ticket, why: &str) {
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

    pub(super) fn cancelled(&self, holder: &mut Option<Request>) {
        info!("{} {} ({}): cancelled", self.method, self.path, self.rid);
        respond(
            holder,
            &self.rid,
            self.shape(ApiError::Cancelled.reply(&format!("request {} was cancelled", self.rid))),
        );
    }
}
