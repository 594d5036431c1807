//! The dispatcher's bookkeeping under its lock: which open route takes a
//! request (for a budgeted model the one with the most left; then the
//! least busy, turns among equals; never a model it cools for or has no
//! budget left for),
//! whether a waiter may still hope for a child, the `Retry-After` to give,
//! and handing freed places to the oldest waiters that may use them. Pure
//! state changes; the wakes it returns are signalled by the caller after
//! the lock is released.

use std::sync::Arc;
use std::time::Instant;

use crate::budget::accounts::Take;

use super::wake::Wake;
use super::*;

impl Inner {
    /// The open route `kind` may use, other than `avoid`: for a budgeted
    /// model the one with the most left (a route with no budget for it
    /// counts as well off as the best), then the least busy; equals take
    /// turns.
    pub(super) fn pick(
        &self,
        limits: &Limits,
        kind: Kind,
        avoid: Option<ChildId>,
        model: Option<&str>,
    ) -> Option<usize> {
        let n = self.slots.len();
        let now = Instant::now();
        // (index, budget left (None: none applies), load), in turn order.
        let mut free: Vec<(usize, Option<u64>, usize)> = Vec::new();
        for k in 0..n {
            let i = (self.turn + k) % n;
            let Slot::Open(r) = &self.slots[i] else {
                continue;
            };
            if Some(r.child) == avoid || !models::serves(&r.cooling, model, now) {
                continue;
            }
            if kind == Kind::Completion && limits.per_child > 0 && r.completions >= limits.per_child
            {
                continue;
            }
            let left = match (kind, model) {
                (Kind::Completion, Some(m)) => match r.take(m, now) {
                    Take::Free => None,
                    Take::Left(0) | Take::Until(_) | Take::Never => continue,
                    Take::Left(l) => Some(l),
                },
                _ => None,
            };
            free.push((i, left, r.completions + r.others));
        }
        let best_left = free.iter().filter_map(|c| c.1).max().unwrap_or(0);
        let mut best: Option<(usize, u64, usize)> = None;
        for (i, left, load) in free {
            let left = left.unwrap_or(best_left);
            if best.is_none_or(|(_, bl, b)| left > bl || (left == bl && load < b)) {
                best = Some((i, left, load));
            }
        }
        best.map(|(i, _, _)| i)
    }

    /// Pick and count a place on a child.
    pub(super) fn take(
        &mut self,
        limits: &Limits,
        kind: Kind,
        avoid: Option<ChildId>,
        model: Option<&str>,
    ) -> Option<Grant> {
        let i = self.pick(limits, kind, avoid, model)?;
        self.turn = (i + 1) % self.slots.len().max(1);
        let Slot::Open(r) = &mut self.slots[i] else {
            unreachable!("pick returns open routes only")
        };
        match kind {
            Kind::Completion => r.completions += 1,
            Kind::Other => r.others += 1,
        }
        let line = match (kind, model, &r.budget) {
            (Kind::Completion, Some(m), Some(b)) => b.budget_line(m).map(str::to_string),
            _ => None,
        };
        if let Some(l) = &line {
            r.spent(l, Spend::Sent);
        }
        Some(Grant {
            child: r.child,
            port: r.port,
            profile: r.profile.clone(),
            line,
        })
    }

    /// Whether a completion for `model` waits only because the routes
    /// that have room cool for it or have no budget left for it.
    pub(super) fn starved_for(&self, model: &str, now: Instant) -> bool {
        self.slots.iter().any(|s| {
            matches!(s, Slot::Open(r) if !models::serves(&r.cooling, Some(model), now)
                || matches!(r.take(model, now), Take::Until(_) | Take::Never))
        })
    }

    /// The models waiting requests ask for that only routes cooling for
    /// them or out of budget for them could serve, each once.
    pub(super) fn starved_waiters(&self, now: Instant) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for m in self.queue.iter().filter_map(|w| w.model.as_deref()) {
            if !out.iter().any(|o| o == m) && self.starved_for(m, now) {
                out.push(m.to_string());
            }
        }
        out
    }

    pub(super) fn prospect(&self, avoid: Option<ChildId>) -> Prospect {
        if self.shutting_down {
            return Prospect::None;
        }
        let mut avoided = false;
        for s in &self.slots {
            match s {
                Slot::Open(r) if Some(r.child) == avoid => avoided = true,
                Slot::Open(_) | Slot::Draining(_) | Slot::Coming | Slot::BackingOff { .. } => {
                    return Prospect::Some
                }
                Slot::Gone => {}
            }
        }
        if avoided {
            Prospect::OnlyAvoided
        } else {
            Prospect::None
        }
    }

    /// Seconds a refused client should wait: while no child is ready and
    /// every slot backs off, until the next start; else a few seconds.
    pub(super) fn retry_after(&self) -> u64 {
        let mut next: Option<Instant> = None;
        for s in &self.slots {
            match s {
                Slot::Open(_) | Slot::Draining(_) | Slot::Coming => return DEFAULT_RETRY_AFTER,
                Slot::BackingOff { until } => {
                    next = Some(next.map_or(*until, |n| n.min(*until)));
                }
                Slot::Gone => {}
            }
        }
        match next {
            Some(t) => {
                let left = t.saturating_duration_since(Instant::now());
                (left.as_secs() + u64::from(left.subsec_nanos() > 0)).max(1)
            }
            None => DEFAULT_RETRY_AFTER,
        }
    }

    /// Hand free places to waiters in arrival order (a waiter whose only
    /// free child is the one it avoids does not hold up those behind it),
    /// then refuse waiters that can no longer be served. Returns the wakes
    /// to signal once the lock is released.
    pub(super) fn settle(&mut self, limits: &Limits) -> Vec<Arc<Wake>> {
        let mut wakes = Vec::new();
        let mut i = 0;
        while i < self.queue.len() {
            if self.pick(limits, Kind::Completion, None, None).is_none() {
                break; // no free place anywhere
            }
            let avoid = self.queue[i].avoid;
            let model = self.queue[i].model.clone();
            match self.take(limits, Kind::Completion, avoid, model.as_deref()) {
                Some(g) => {
                    let w = self.queue.remove(i).expect("index in range");
                    self.decided.insert(w.id, Decision::Granted(g));
                    wakes.push(w.wake);
                }
                None => i += 1,
            }
        }
        let now = Instant::now();
        let mut i = 0;
        while i < self.queue.len() {
            if let Some(m) = self.queue[i].model.clone().filter(|m| self.models.off(m)) {
                let w = self.queue.remove(i).expect("index in range");
                let refusal = Refusal::ModelOff { model: m };
                self.decided.insert(w.id, Decision::Refused(refusal));
                wakes.push(w.wake);
                continue;
            }
            let blocked = self.queue[i]
                .model
                .as_deref()
                .and_then(|m| self.models.blocked(m, now).map(|t| (m.to_string(), t)));
            if let Some((model, t)) = blocked {
                let w = self.queue.remove(i).expect("index in range");
                let retry_after = models::secs_until(t, now);
                self.decided.insert(
                    w.id,
                    Decision::Refused(Refusal::ModelCooling { model, retry_after }),
                );
                wakes.push(w.wake);
                continue;
            }
            let refusal = match self.prospect(self.queue[i].avoid) {
                Prospect::Some => None,
                Prospect::OnlyAvoided => Some(Refusal::NoOtherChild),
                Prospect::None if self.shutting_down => Some(Refusal::ShuttingDown),
                Prospect::None => Some(Refusal::NoChild {
                    retry_after: DEFAULT_RETRY_AFTER,
                }),
            };
            match refusal {
                Some(r) => {
                    let w = self.queue.remove(i).expect("index in range");
                    self.decided.insert(w.id, Decision::Refused(r));
                    wakes.push(w.wake);
                }
                None => i += 1,
            }
        }
        wakes
    }
}

/// One budget line's requests on one child.
#[derive(Debug, Clone, Default)]
pub(super) struct Spending {
    line: String,
    in_flight: u64,
    /// Served (monotonic for the child's life).
    served: u64,
}

/// What happens to one request under a budget line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Spend {
    /// Sent to the child.
    Sent,
    /// Served: it stays spent until the book counts it.
    Served,
    /// Failed or not sent after all: its place comes back.
    Back,
}

impl Route {
    /// What this route may take of `model` now: the allowance's left, less
    /// its requests in flight for the model's budget line and those served
    /// that the book has not counted yet.
    pub(super) fn take(&self, model: &str, now: Instant) -> Take {
        let Some(b) = &self.budget else {
            return Take::Free;
        };
        let taken = b.budget_line(model).map_or(0, |l| {
            self.spending
                .iter()
                .find(|s| s.line == l)
                .map_or(0, |s| s.in_flight + s.served.saturating_sub(b.counted(l)))
        });
        b.take(model, taken, now)
    }

    /// One request of budget `line` changes hands.
    pub(super) fn spent(&mut self, line: &str, how: Spend) {
        let i = match self.spending.iter().position(|s| s.line == line) {
            Some(i) => i,
            None => {
                self.spending.push(Spending {
                    line: line.to_string(),
                    ..Spending::default()
                });
                self.spending.len() - 1
            }
        };
        let s = &mut self.spending[i];
        match how {
            Spend::Sent => s.in_flight += 1,
            Spend::Served => {
                s.in_flight = s.in_flight.saturating_sub(1);
                s.served += 1;
            }
            Spend::Back => s.in_flight = s.in_flight.saturating_sub(1),
        }
    }
}
