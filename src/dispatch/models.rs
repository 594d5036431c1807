//! The dispatcher's view of models: which models were asked for lately (the
//! demand, which the pool reads to decide whether a profile cooling for
//! some models is still of use), and which models no profile can serve
//! until some time (published by the pool from the profile book), so a
//! request for such a model is refused at once with `Retry-After` while the
//! others are served. Pure data under the dispatcher's lock; every call is
//! given `now`.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

/// Distinct models remembered; beyond it the oldest is forgotten (a client
/// making up model names cannot grow this without bound).
const MAX_MODELS: usize = 256;

#[derive(Debug, Default)]
pub struct Gate {
    /// Model -> when it was last asked for.
    demand: HashMap<String, Instant>,
    blocked: Blocked,
}

/// The models no profile can serve now, as the supervisor sees them.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Blocked {
    /// Model -> until when no profile can serve it (cooldowns, budgets).
    pub until: HashMap<String, Instant>,
    /// Models no profile's tier allows.
    pub off: HashSet<String>,
}

impl Gate {
    /// A completion for `model` was asked for at `now`.
    pub fn asked(&mut self, model: &str, now: Instant) {
        if let Some(t) = self.demand.get_mut(model) {
            *t = now;
            return;
        }
        if self.demand.len() >= MAX_MODELS {
            if let Some(oldest) = self
                .demand
                .iter()
                .min_by_key(|(_, t)| **t)
                .map(|(m, _)| m.clone())
            {
                self.demand.remove(&oldest);
            }
        }
        self.demand.insert(model.to_string(), now);
    }

    /// The models asked for within `window` before `now`, sorted.
    pub fn demand(&self, window: Duration, now: Instant) -> Vec<String> {
        let mut v: Vec<String> = self
            .demand
            .iter()
            .filter(|(_, t)| now.saturating_duration_since(**t) <= window)
            .map(|(m, _)| m.clone())
            .collect();
        v.sort();
        v
    }

    /// Replace the blocked models.
    pub fn set_blocked(&mut self, blocked: Blocked) {
        self.blocked = blocked;
    }

    /// Until when `model` can be served by no profile, if that is so at `now`.
    pub fn blocked(&self, model: &str, now: Instant) -> Option<Instant> {
        self.blocked.until.get(model).copied().filter(|t| *t > now)
    }

    /// Whether no profile's tier allows `model`.
    pub fn off(&self, model: &str) -> bool {
        self.blocked.off.contains(model)
    }
}

/// Whether a route whose profile cools for `cooling` may take a request
/// for `model` at `now`.
pub fn serves(cooling: &[(String, Instant)], model: Option<&str>, now: Instant) -> bool {
    let Some(m) = model else { return true };
    !cooling.iter().any(|(c, t)| c == m && *t > now)
}

/// The earliest end of a cooldown of `model` among `routes`' cooling lists.
pub fn next_end<'a>(
    routes: impl Iterator<Item = &'a [(String, Instant)]>,
    model: &str,
    now: Instant,
) -> Option<Instant> {
    routes
        .flat_map(|c| c.iter())
        .filter(|(m, t)| m == model && *t > now)
        .map(|(_, t)| *t)
        .min()
}

/// Whole seconds from `now` to `t`, at least 1.
pub fn secs_until(t: Instant, now: Instant) -> u64 {
    let left = t.saturating_duration_since(now);
    (left.as_secs() + u64::from(left.subsec_nanos() > 0)).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn demand_is_a_window_and_bounded() {
        let t0 = Instant::now();
        let mut g = Gate::default();
        g.asked("pro", t0);
        g.asked("flash", t0 + Duration::from_secs(50));
        let w = Duration::from_secs(30);
        assert_eq!(g.demand(w, t0 + Duration::from_secs(60)), vec!["flash"]);
        assert_eq!(
            g.demand(w, t0 + Duration::from_secs(20)),
            vec!["flash", "pro"]
        );
        for i in 0..MAX_MODELS + 10 {
            g.asked(&format!("m{i}"), t0 + Duration::from_secs(100 + i as u64));
        }
        assert_eq!(g.demand.len(), MAX_MODELS);
        assert!(!g.demand.contains_key("pro"), "the oldest went first");
    }

    #[test]
    fn blocked_models_and_cooling_routes() {
        let t0 = Instant::now();
        let later = t0 + Duration::from_secs(90);
        let mut g = Gate::default();
        g.set_blocked(Blocked {
            until: HashMap::from([("pro".to_string(), later)]),
            off: HashSet::from(["ultra".to_string()]),
        });
        assert!(g.off("ultra") && !g.off("pro"));
        assert_eq!(g.blocked("pro", t0), Some(later));
        assert_eq!(g.blocked("pro", later), None, "over at its end");
        assert_eq!(g.blocked("flash", t0), None);
        let cooling = vec![("pro".to_string(), later)];
        assert!(!serves(&cooling, Some("pro"), t0));
        assert!(serves(&cooling, Some("flash"), t0));
        assert!(serves(&cooling, None, t0));
        assert!(serves(&cooling, Some("pro"), later));
        let routes = [cooling.as_slice(), &[]];
        assert_eq!(next_end(routes.into_iter(), "pro", t0), Some(later));
        assert_eq!(secs_until(later, t0), 90);
        assert_eq!(secs_until(t0, later), 1);
    }
}
