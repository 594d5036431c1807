//! Per-model cooldowns of one profile. AI Studio's quotas and rate limits
//! are per model: an account out of quota for one model still serves the
//! others, so an exhaustion whose request named a model cools that model
//! only (one of unknown model cools the whole account, see the book). Pure: maps of model name to the end of its cooldown, and the
//! questions the book asks of them, each given `now`.
//!
//! Which models matter is the demand: the models requested in the last
//! `MODEL_DEMAND_WINDOW_S` (the dispatcher keeps that). A profile that cools
//! for every model in demand is of no use in a slot and is rotated out; one
//! that cools for some still serves the rest. With no demand known, a
//! profile's model cooldowns never keep it from running.

use std::collections::BTreeMap;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use super::{from_unix_ms, unix_ms, CoolReason};

/// One model's cooldown on one profile.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelCool {
    pub until_unix_ms: u64,
    pub reason: CoolReason,
    /// When it was set: the model was asked for then.
    #[serde(default)]
    pub since_unix_ms: u64,
}

/// A model cooldown as `/ready` and the status show it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ModelStatus {
    pub model: String,
    pub until_unix_ms: u64,
    pub left_s: u64,
    pub reason: CoolReason,
}

/// A profile's model cooldowns.
pub type Models = BTreeMap<String, ModelCool>;

/// Cool `model` until `until`; a later end wins, as for the whole profile.
/// Returns the end in force.
pub fn cool(
    models: &mut Models,
    model: &str,
    now: SystemTime,
    until: SystemTime,
    reason: CoolReason,
) -> SystemTime {
    let e = models.entry(model.to_string()).or_insert(ModelCool {
        until_unix_ms: 0,
        reason,
        since_unix_ms: unix_ms(now),
    });
    if from_unix_ms(e.until_unix_ms) < until {
        *e = ModelCool {
            until_unix_ms: unix_ms(until),
            reason,
            since_unix_ms: unix_ms(now),
        };
    }
    from_unix_ms(e.until_unix_ms)
}

/// The models whose cooldown was set within `window` before `now`: they
/// were asked for then, so they are in demand still (what a restarted
/// coordinator knows of the demand before any request).
pub fn set_within<'a>(
    models: &'a Models,
    window: std::time::Duration,
    now: SystemTime,
) -> impl Iterator<Item = &'a String> + 'a {
    models.iter().filter_map(move |(m, c)| {
        let age = now.duration_since(from_unix_ms(c.since_unix_ms)).ok()?;
        (age <= window).then_some(m)
    })
}

/// Until when `model` cools, if it does at `now`.
pub fn until(models: &Models, model: &str, now: SystemTime) -> Option<SystemTime> {
    let t = from_unix_ms(models.get(model)?.until_unix_ms);
    (t > now).then_some(t)
}

/// The models cooling at `now`, with their ends.
pub fn cooling(models: &Models, now: SystemTime) -> Vec<(String, SystemTime)> {
    models
        .iter()
        .map(|(m, c)| (m.clone(), from_unix_ms(c.until_unix_ms)))
        .filter(|(_, t)| *t > now)
        .collect()
}

/// Drop cooldowns that ended before `now` (kept tidy on disk).
pub fn prune(models: &mut Models, now: SystemTime) {
    models.retain(|_, c| from_unix_ms(c.until_unix_ms) > now);
}

pub fn status(models: &Models, now: SystemTime) -> Vec<ModelStatus> {
    models
        .iter()
        .filter_map(|(m, c)| {
            let t = from_unix_ms(c.until_unix_ms);
            let left = t.duration_since(now).ok()?;
            Some(ModelStatus {
                model: m.clone(),
                until_unix_ms: c.until_unix_ms,
                left_s: left.as_secs_f64().ceil() as u64,
                reason: c.reason,
            })
        })
        .filter(|s| s.left_s > 0)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    fn at(s: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(s)
    }

    #[test]
    fn a_model_cools_alone_and_a_later_end_wins() {
        let mut m = Models::new();
        let q = CoolReason::Exhausted;
        assert_eq!(cool(&mut m, "pro", at(0), at(100), q), at(100));
        assert_eq!(
            cool(&mut m, "pro", at(1), at(50), q),
            at(100),
            "never shortened"
        );
        let w = std::time::Duration::from_secs(30);
        assert_eq!(set_within(&m, w, at(20)).count(), 1);
        assert_eq!(set_within(&m, w, at(40)).count(), 0);
        assert_eq!(until(&m, "pro", at(10)), Some(at(100)));
        assert_eq!(until(&m, "flash", at(10)), None);
        assert_eq!(until(&m, "pro", at(100)), None, "over at its end");
        assert_eq!(cooling(&m, at(10)), vec![("pro".to_string(), at(100))]);
        prune(&mut m, at(200));
        assert!(m.is_empty());
    }

    #[test]
    fn status_shows_the_time_left() {
        let mut m = Models::new();
        let q = CoolReason::Exhausted;
        cool(&mut m, "pro", at(0), at(100), q);
        cool(&mut m, "flash", at(0), at(60), q);
        let s = status(&m, at(10));
        assert_eq!(s.len(), 2);
        assert_eq!((s[0].model.as_str(), s[0].left_s), ("flash", 50));
    }
}
