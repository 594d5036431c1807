//! The profile book: what the coordinator knows about each profile's
//! health, apart from where it runs. Pure: no threads, no I/O, no clock of
//! its own (every call is given `now`), so tests drive it directly.
//!
//! Per profile it keeps: the run of empty answers in a row (an exhausted
//! account answers 200 with nothing in it), the run of starts that never
//! became ready, a cooldown (until when, and why), whether its login is
//! needed, whether an operator disabled it, and counters. Three things cool
//! a profile down:
//! - exhaustion: `EMPTY_ANSWERS_TO_ROTATE` empty answers in a row, a 429,
//!   a 502 with `Retry-After`, or the child's log saying quota; it cools for
//!   the child's `Retry-After` when it sent one, else `PROFILE_COOLDOWN_S`;
//! - a rate limit in the child's log: `RATE_LIMIT_COOLDOWN_S`;
//!
//! An exhaustion (quota or rate limit) of a request that named its model
//! cools that model only (`models`): the profile keeps its slot and serves
//! the other models, and is rotated out only when it cools for every model
//! in demand. One whose model is not known cools the whole profile.
//! - start failures: `START_FAILURES_TO_COOL` starts in a row that never
//!   became ready (an expired login hangs the real child); the cooldown
//!   starts at `START_COOLDOWN_FIRST` and doubles on each repeat, so one bad
//!   profile does not grow the backoff of every slot.
//!
//!
//! A profile whose login expired (the child's log said so, or its session
//! cookies all expired before a start, see `login`) `needs_login`: it is
//! never started again until its content changes (a reload or write-back
//! brings a file with another fingerprint) or an operator enables or
//! resets it. No time ends that state.
//!
//! The book's owner saves it (`store`) after each change, so a restart does
//! not retry an exhausted profile at once.
//!
//! It also holds the accounts' daily budgets (`budget::accounts`, from
//! `MODEL_BUDGETS_FILE`): every served completion counts; an account at
//! its budget for a model serves it again at the budget day's reset, like a
//! model cooldown that ends at midnight, and never serves a model its tier
//! turns off. Those counts are not saved here (the usage ledger keeps them).

pub mod login;
pub mod models;
pub mod store;

use std::collections::BTreeMap;
use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::budget::accounts::{Budget, Line as BudgetLine, Room};

/// Starts in a row that never became ready before the profile cools down.
pub const START_FAILURES_TO_COOL: u32 = 3;
/// The first start-failure cooldown; it doubles on each repeat.
pub const START_COOLDOWN_FIRST: Duration = Duration::from_secs(300);
/// The longest start-failure cooldown.
pub const START_COOLDOWN_CAP: Duration = Duration::from_secs(24 * 3600);

pub use crate::config::BookSettings as Settings;

/// Why a profile is cooling down.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CoolReason {
    Exhausted,
    RateLimited,
    StartFailures,
}

impl fmt::Display for CoolReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            CoolReason::Exhausted => "exhausted",
            CoolReason::RateLimited => "rate_limited",
            CoolReason::StartFailures => "start_failures",
        })
    }
}

/// Why a profile's account rests, as its signs said.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    /// Out of quota: `PROFILE_COOLDOWN_S` (or the child's `Retry-After`).
    Quota,
    /// A rate limit: `RATE_LIMIT_COOLDOWN_S`.
    RateLimit,
}

/// What one completion said about its profile.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// Content came back.
    Served,
    /// 200 with no content, or the child's in-band error text.
    Empty,
    /// A 429, a 502 with `Retry-After`, or the child's log: the account is
    /// out of quota or rate-limited.
    Exhausted {
        retry_after: Option<Duration>,
        limit: Limit,
    },
}

/// Counters of one profile since it was first seen (kept across restarts).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts {
    pub served: u64,
    pub empty: u64,
    pub exhausted: u64,
    pub start_failures: u64,
    #[serde(default)]
    pub logins_needed: u64,
}

/// A profile whose login must be renewed by a person.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoginNeeded {
    pub since_unix_ms: u64,
    /// What showed it (a log line's meaning, expired cookies).
    pub why: String,
    /// The fingerprint of the content that needs the login (see `login`).
    pub content: u64,
}

/// One profile's record. Times are wall-clock, so they survive a restart.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cooling_until_unix_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cool_reason: Option<CoolReason>,
    #[serde(default)]
    pub empty_in_a_row: u32,
    #[serde(default)]
    pub start_failures_in_a_row: u32,
    /// How many start-failure cooldowns in a row (the doubling exponent).
    #[serde(default)]
    pub start_cooldowns: u32,
    #[serde(default)]
    pub disabled: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub needs_login: Option<LoginNeeded>,
    /// Per-model cooldowns (see `models`).
    #[serde(default, skip_serializing_if = "models::Models::is_empty")]
    pub models: models::Models,
    #[serde(default)]
    pub counts: Counts,
    /// When a child of it was last ready: stamped as one becomes ready and
    /// as a ready one stops (its refreshed login is saved then).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_ran_unix_ms: Option<u64>,
    /// When the book first saw it: a profile that never ran is idle since
    /// then (so a fresh fleet's keep-alive turns come after the interval,
    /// not all at boot).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_seen_unix_ms: Option<u64>,
}

/// What a change asks of the profile's slot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Nothing to do.
    Keep,
    /// Stop sending it requests, let in-flight ones finish, rotate it out:
    /// it cools down until `until`.
    Retire {
        reason: CoolReason,
        until: SystemTime,
    },
    /// Stop sending it requests for `model` until `until`; it keeps serving
    /// the others.
    CoolModel { model: String, until: SystemTime },
    /// This answer used the last of its budget for the line covering
    /// `model` (`line`, as the file writes it) until `until`, the reset.
    BudgetSpent {
        model: String,
        line: String,
        budget: u64,
        until: SystemTime,
    },
}

#[derive(Debug, Clone)]
pub struct Book {
    entries: BTreeMap<String, Entry>,
    settings: Settings,
    budget: Budget,
}

/// A profile's state for `/ready` and status.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Status {
    pub profile: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cooling_until_unix_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cooldown_left_s: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<CoolReason>,
    pub disabled: bool,
    /// Set when the profile needs a new login.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub needs_login: Option<LoginNeeded>,
    /// The models it cools for, with the time left.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub model_cooldowns: Vec<models::ModelStatus>,
    /// Its tier's budgets: used today of each, and when they reset.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub budgets: Vec<BudgetLine>,
    pub empty_in_a_row: u32,
    pub start_failures_in_a_row: u32,
    pub counts: Counts,
    /// When a child of it was last ready (see `Entry`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_ran_unix_ms: Option<u64>,
}

pub fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

pub(crate) fn from_unix_ms(ms: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(ms)
}

impl Book {
    /// A book for `names`, starting from `saved` records where there are
    /// any (records of profiles no longer hydrated are dropped).
    pub fn new<'a>(
        names: impl IntoIterator<Item = &'a str>,
        mut saved: BTreeMap<String, Entry>,
        settings: Settings,
    ) -> Book {
        let entries = names
            .into_iter()
            .map(|n| (n.to_string(), saved.remove(n).unwrap_or_default()))
            .collect();
        Book {
            entries,
            settings,
            budget: Budget::default(),
        }
    }

    /// The budgets and today's counts.
    pub fn budget(&self) -> &Budget {
        &self.budget
    }

    /// To change the budgets (a reload) or learn counts (start, leases).
    pub fn budget_mut(&mut self) -> &mut Budget {
        &mut self.budget
    }

    pub fn entries(&self) -> &BTreeMap<String, Entry> {
        &self.entries
    }

    fn entry(&mut self, name: &str) -> &mut Entry {
        self.entries.entry(name.to_string()).or_default()
    }

    /// Until when `name` cools down, if it does at `now`.
    pub fn cooling_until(&self, name: &str, now: SystemTime) -> Option<SystemTime> {
        let e = self.entries.get(name)?;
        let until = from_unix_ms(e.cooling_until_unix_ms?);
        (until > now).then_some(until)
    }

    /// May `name` be started at `now`?
    pub fn eligible(&self, name: &str, now: SystemTime) -> bool {
        self.eligible_for(name, &[], now)
    }

    /// May `name` be started at `now` to serve some model of `demand` (the
    /// models asked for lately; empty: unknown)?
    pub fn eligible_for(&self, name: &str, demand: &[String], now: SystemTime) -> bool {
        self.available_at(name, demand, now)
            .is_some_and(|t| t <= now)
    }

    /// When `name` may run for `demand`: `now` or later; None while a person
    /// must act (disabled, login needed).
    pub fn available_at(
        &self,
        name: &str,
        demand: &[String],
        now: SystemTime,
    ) -> Option<SystemTime> {
        if self.blocked(name) {
            return None;
        }
        let whole = self.cooling_until(name, now).unwrap_or(now);
        Some(whole.max(self.demand_free_at(name, demand, now)?))
    }

    /// When `name` serves some model of `demand` (now with no demand
    /// known); None when its tier allows none of them.
    fn demand_free_at(&self, name: &str, demand: &[String], now: SystemTime) -> Option<SystemTime> {
        if demand.is_empty() {
            return Some(now);
        }
        demand
            .iter()
            .filter_map(|m| self.model_free_at(name, m, now))
            .min()
    }

    /// When `name` may serve `model` as far as that model goes (its
    /// cooldown of it, its budget for it); None: its tier turns it off.
    pub fn model_free_at(&self, name: &str, model: &str, now: SystemTime) -> Option<SystemTime> {
        let cool = self
            .entries
            .get(name)
            .and_then(|e| models::until(&e.models, model, now))
            .unwrap_or(now);
        let budget = self.budget.room(name, model, now).free_at(now)?;
        Some(cool.max(budget))
    }

    /// Whether `name` serves `model` now, as far as that model goes.
    pub fn serves(&self, name: &str, model: &str, now: SystemTime) -> bool {
        self.model_free_at(name, model, now)
            .is_some_and(|t| t <= now)
    }

    /// Whether `name` cools for no model and waits for no budget's reset.
    pub fn fresh(&self, name: &str, now: SystemTime) -> bool {
        self.models_cooling(name, now).is_empty() && !self.budget.spent_any(name, now)
    }

    /// Whether every profile's tier turns `model` off (so no request for it
    /// can ever be served until the budgets change).
    pub fn model_off_everywhere(&self, model: &str, now: SystemTime) -> bool {
        self.budget.is_on()
            && !self.entries.is_empty()
            && self
                .entries
                .keys()
                .all(|n| self.budget.room(n, model, now) == Room::Off)
    }

    /// The models in demand: those the dispatcher saw asked for lately
    /// (`asked`), and those a profile was found out of quota for within the
    /// demand window (they were asked for then).
    pub fn demand(&self, asked: &[String], now: SystemTime) -> Vec<String> {
        let mut v: Vec<String> = asked.to_vec();
        for e in self.entries.values() {
            v.extend(models::set_within(&e.models, self.settings.demand_window, now).cloned());
        }
        v.sort();
        v.dedup();
        v
    }

    /// The models `name` cools for at `now`, with their ends.
    pub fn models_cooling(&self, name: &str, now: SystemTime) -> Vec<(String, SystemTime)> {
        self.entries
            .get(name)
            .map(|e| models::cooling(&e.models, now))
            .unwrap_or_default()
    }

    /// Every model some profile has (or had) a cooldown for.
    pub fn cooled_models(&self) -> std::collections::BTreeSet<String> {
        self.entries
            .values()
            .flat_map(|e| e.models.keys().cloned())
            .collect()
    }

    /// Until when no profile can serve `model`: None when one can now (or
    /// none ever can, until a person acts); else the earliest time one can.
    pub fn model_blocked(&self, model: &str, now: SystemTime) -> Option<SystemTime> {
        let demand = [model.to_string()];
        let mut earliest: Option<SystemTime> = None;
        for name in self.entries.keys() {
            let Some(t) = self.available_at(name, &demand, now) else {
                continue;
            };
            if t <= now {
                return None;
            }
            earliest = Some(earliest.map_or(t, |e| e.min(t)));
        }
        earliest
    }

    /// Kept from running until a person acts: disabled, or its login needed.
    fn blocked(&self, name: &str) -> bool {
        self.entries
            .get(name)
            .is_some_and(|e| e.disabled || e.needs_login.is_some())
    }

    /// `name`'s login expired (its content has fingerprint `content`). True
    /// when this is news (it was not marked already).
    pub fn login_needed(&mut self, name: &str, why: &str, content: u64, now: SystemTime) -> bool {
        let e = self.entry(name);
        if e.needs_login.as_ref().is_some_and(|n| n.content == content) {
            return false;
        }
        e.counts.logins_needed += 1;
        e.needs_login = Some(LoginNeeded {
            since_unix_ms: unix_ms(now),
            why: why.to_string(),
            content,
        });
        // Its start failures were the expired login's, not the profile's.
        e.start_failures_in_a_row = 0;
        true
    }

    /// The content of `name` now has fingerprint `content` (hydrated or
    /// written back). True when that ends its `needs_login`.
    pub fn content_seen(&mut self, name: &str, content: u64) -> bool {
        let Some(e) = self.entries.get_mut(name) else {
            return false;
        };
        if e.needs_login.as_ref().is_some_and(|n| n.content != content) {
            e.needs_login = None;
            return true;
        }
        false
    }

    /// The earliest end of a cooldown among `names` that makes one of them
    /// eligible for `demand`, for a slot that waits.
    pub fn next_eligible_at<'a>(
        &self,
        names: impl IntoIterator<Item = &'a str>,
        demand: &[String],
        now: SystemTime,
    ) -> Option<SystemTime> {
        names
            .into_iter()
            .filter_map(|n| self.available_at(n, demand, now))
            .filter(|t| *t > now)
            .min()
    }

    /// Record one completion's answer to a request for `model` (None: not
    /// known). An exhaustion cools that model only when it is known (AI
    /// Studio's quotas and rate limits are per model; the real child calls
    /// every 429 a rate limit, a per-model quota too); else the whole
    /// profile.
    pub fn answer(
        &mut self,
        name: &str,
        answer: Answer,
        model: Option<&str>,
        now: SystemTime,
    ) -> Verdict {
        let settings = self.settings;
        let e = self.entry(name);
        match answer {
            Answer::Served => {
                e.counts.served += 1;
                e.empty_in_a_row = 0;
                match model {
                    Some(m) => self.spend(name, m, now),
                    None => Verdict::Keep,
                }
            }
            Answer::Empty => {
                e.counts.empty += 1;
                e.empty_in_a_row += 1;
                if e.empty_in_a_row < settings.empty_answers_to_rotate.max(1) {
                    return Verdict::Keep;
                }
                match model {
                    Some(m) => {
                        self.cool_model(name, m, settings.cooldown, CoolReason::Exhausted, now)
                    }
                    None => self.cool(name, CoolReason::Exhausted, settings.cooldown, now),
                }
            }
            Answer::Exhausted {
                retry_after,
                limit: Limit::Quota,
            } => {
                let d = retry_after.unwrap_or(settings.cooldown);
                match model {
                    Some(m) => self.cool_model(name, m, d, CoolReason::Exhausted, now),
                    None => self.cool(name, CoolReason::Exhausted, d, now),
                }
            }
            Answer::Exhausted {
                retry_after,
                limit: Limit::RateLimit,
            } => {
                let d = retry_after.unwrap_or(settings.rate_limit_cooldown);
                match model {
                    Some(m) => self.cool_model(name, m, d, CoolReason::RateLimited, now),
                    None => self.cool(name, CoolReason::RateLimited, d, now),
                }
            }
        }
    }

    /// Record how one start of `name` ended: whether it became ready.
    pub fn started(&mut self, name: &str, became_ready: bool, now: SystemTime) -> Verdict {
        let e = self.entry(name);
        if became_ready {
            e.start_failures_in_a_row = 0;
            e.start_cooldowns = 0;
            return Verdict::Keep;
        }
        e.counts.start_failures += 1;
        e.start_failures_in_a_row += 1;
        if e.start_failures_in_a_row < START_FAILURES_TO_COOL {
            return Verdict::Keep;
        }
        let d = START_COOLDOWN_FIRST
            .checked_mul(1 << e.start_cooldowns.min(16))
            .unwrap_or(START_COOLDOWN_CAP)
            .min(START_COOLDOWN_CAP);
        e.start_cooldowns += 1;
        e.start_failures_in_a_row = 0;
        self.cool(name, CoolReason::StartFailures, d, now)
    }

    fn cool(&mut self, name: &str, reason: CoolReason, d: Duration, now: SystemTime) -> Verdict {
        let until = now + d;
        let e = self.entry(name);
        let cooling = e
            .cooling_until_unix_ms
            .is_some_and(|ms| from_unix_ms(ms) > now);
        if reason != CoolReason::StartFailures {
            if !cooling {
                e.counts.exhausted += 1;
            }
            e.empty_in_a_row = 0;
        }
        // A later end wins: a second report never shortens a cooldown.
        let later = e
            .cooling_until_unix_ms
            .is_none_or(|ms| from_unix_ms(ms) < until);
        if later {
            e.cooling_until_unix_ms = Some(unix_ms(until));
            e.cool_reason = Some(reason);
        }
        Verdict::Retire {
            reason,
            until: from_unix_ms(e.cooling_until_unix_ms.unwrap_or(0)),
        }
    }

    fn cool_model(
        &mut self,
        name: &str,
        model: &str,
        d: Duration,
        reason: CoolReason,
        now: SystemTime,
    ) -> Verdict {
        let e = self.entry(name);
        // One exhaustion, however many signs report it (its log line and
        // its answer both do).
        if models::until(&e.models, model, now).is_none() {
            e.counts.exhausted += 1;
        }
        e.empty_in_a_row = 0;
        models::prune(&mut e.models, now);
        let until = models::cool(&mut e.models, model, now, now + d, reason);
        Verdict::CoolModel {
            model: model.to_string(),
            until,
        }
    }

    /// Count a served completion of `name` for `model` against its budget.
    fn spend(&mut self, name: &str, model: &str, now: SystemTime) -> Verdict {
        if !self.budget.served(name, model, now) {
            return Verdict::Keep;
        }
        let Room::Spent { budget, resets, .. } = self.budget.room(name, model, now) else {
            return Verdict::Keep;
        };
        let line = self
            .budget
            .plan()
            .tier_of(name)
            .and_then(|t| t.rule_for(model))
            .map(|r| r.pattern())
            .unwrap_or_default();
        Verdict::BudgetSpent {
            model: model.to_string(),
            line,
            budget,
            until: resets,
        }
    }

    /// A child of `name` is ready, or a ready one stops, at `now`.
    pub fn ran(&mut self, name: &str, now: SystemTime) {
        self.entry(name).last_ran_unix_ms = Some(unix_ms(now));
    }

    /// When `name` last ran, and whether it ever did: its last run, else
    /// when the book first saw it (`false`); None before `stamp_first_seen`.
    pub fn idle_since(&self, name: &str) -> Option<(SystemTime, bool)> {
        let e = self.entries.get(name)?;
        match (e.last_ran_unix_ms, e.first_seen_unix_ms) {
            (Some(ms), _) => Some((from_unix_ms(ms), true)),
            (None, Some(ms)) => Some((from_unix_ms(ms), false)),
            (None, None) => None,
        }
    }

    /// Record `now` as the first sight of every profile with neither a run
    /// nor a first sight (new ones, and records of an older version). True
    /// when any was stamped (the book should be saved).
    pub fn stamp_first_seen(&mut self, now: SystemTime) -> bool {
        let mut stamped = false;
        for e in self.entries.values_mut() {
            if e.last_ran_unix_ms.is_none() && e.first_seen_unix_ms.is_none() {
                e.first_seen_unix_ms = Some(unix_ms(now));
                stamped = true;
            }
        }
        stamped
    }

    /// Start keeping a record for `name` (a profile a reload added).
    pub fn ensure(&mut self, name: &str) {
        self.entry(name);
    }

    /// Drop the record of `name` (a profile a reload removed).
    pub fn forget(&mut self, name: &str) {
        self.entries.remove(name);
    }

    /// Disable or enable `name`; false when there is no such profile. An
    /// operator who enables a profile vouches for its login too.
    pub fn set_disabled(&mut self, name: &str, disabled: bool) -> bool {
        match self.entries.get_mut(name) {
            Some(e) => {
                e.disabled = disabled;
                if !disabled {
                    e.needs_login = None;
                }
                true
            }
            None => false,
        }
    }

    /// Clear `name`'s cooldown of `model` (an operator's reset of one
    /// model); false when it had none.
    pub fn reset_model(&mut self, name: &str, model: &str) -> bool {
        self.entries
            .get_mut(name)
            .is_some_and(|e| e.models.remove(model).is_some())
    }

    /// Clear `name`'s cooldowns (its models' too), `needs_login` and counts
    /// in a row (an operator's reset).
    pub fn reset(&mut self, name: &str) -> bool {
        match self.entries.get_mut(name) {
            Some(e) => {
                // Its history stays: when it last ran is no health verdict.
                *e = Entry {
                    disabled: e.disabled,
                    counts: e.counts,
                    last_ran_unix_ms: e.last_ran_unix_ms,
                    first_seen_unix_ms: e.first_seen_unix_ms,
                    ..Entry::default()
                };
                true
            }
            None => false,
        }
    }

    pub fn status(&self, now: SystemTime) -> Vec<Status> {
        self.entries
            .iter()
            .map(|(name, e)| {
                let until = self.cooling_until(name, now);
                Status {
                    profile: name.clone(),
                    cooling_until_unix_ms: until.map(unix_ms),
                    cooldown_left_s: until.map(|u| {
                        u.duration_since(now)
                            .map(|d| d.as_secs_f64().ceil() as u64)
                            .unwrap_or(0)
                    }),
                    reason: until.and(e.cool_reason),
                    disabled: e.disabled,
                    needs_login: e.needs_login.clone(),
                    model_cooldowns: models::status(&e.models, now),
                    budgets: self.budget.lines_of(name, now),
                    empty_in_a_row: e.empty_in_a_row,
                    start_failures_in_a_row: e.start_failures_in_a_row,
                    counts: e.counts,
                    last_ran_unix_ms: e.last_ran_unix_ms,
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn book() -> Book {
        Book::new(
            ["a", "b"],
            BTreeMap::new(),
            Settings {
                empty_answers_to_rotate: 2,
                cooldown: Duration::from_secs(3600),
                rate_limit_cooldown: Duration::from_secs(300),
                demand_window: Duration::from_secs(600),
            },
        )
    }

    fn quota(retry_after: Option<Duration>) -> Answer {
        Answer::Exhausted {
            retry_after,
            limit: Limit::Quota,
        }
    }

    fn t0() -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_000_000)
    }

    #[test]
    fn empty_answers_in_a_row_retire_and_a_success_resets_the_run() {
        let mut b = book();
        assert_eq!(b.answer("a", Answer::Empty, None, t0()), Verdict::Keep);
        assert_eq!(b.answer("a", Answer::Served, None, t0()), Verdict::Keep);
        assert_eq!(b.answer("a", Answer::Empty, None, t0()), Verdict::Keep);
        let v = b.answer("a", Answer::Empty, None, t0());
        let until = t0() + Duration::from_secs(3600);
        assert_eq!(
            v,
            Verdict::Retire {
                reason: CoolReason::Exhausted,
                until
            }
        );
        assert!(!b.eligible("a", t0()));
        assert!(b.eligible("a", until));
        assert!(b.eligible("b", t0()));
        assert_eq!(b.next_eligible_at(["a", "b"], &[], t0()), Some(until));
        let s = &b.status(t0())[0];
        assert_eq!(s.cooldown_left_s, Some(3600));
        assert_eq!(s.reason, Some(CoolReason::Exhausted));
        assert_eq!(
            (s.counts.empty, s.counts.served, s.counts.exhausted),
            (3, 1, 1)
        );
    }

    #[test]
    fn retry_after_sets_the_cooldown_and_never_shortens_one() {
        let mut b = book();
        let ten = Some(Duration::from_secs(10));
        assert_eq!(
            b.answer("a", quota(ten), None, t0()),
            Verdict::Retire {
                reason: CoolReason::Exhausted,
                until: t0() + Duration::from_secs(10)
            }
        );
        let long = Some(Duration::from_secs(100));
        b.answer("a", quota(long), None, t0());
        b.answer("a", quota(ten), None, t0());
        assert_eq!(
            b.cooling_until("a", t0()),
            Some(t0() + Duration::from_secs(100))
        );
    }

    #[test]
    fn start_failures_cool_and_double_and_readiness_resets() {
        let mut b = book();
        let mut cooldowns = Vec::new();
        for _ in 0..9 {
            if let Verdict::Retire { reason, until } = b.started("a", false, t0()) {
                assert_eq!(reason, CoolReason::StartFailures);
                cooldowns.push(until.duration_since(t0()).unwrap().as_secs());
            }
        }
        assert_eq!(cooldowns, vec![300, 600, 1200]);
        assert_eq!(b.started("a", true, t0()), Verdict::Keep);
        b.reset("a");
        for _ in 0..2 {
            assert_eq!(b.started("a", false, t0()), Verdict::Keep);
        }
        assert!(matches!(
            b.started("a", false, t0()),
            Verdict::Retire { .. }
        ));
    }

    #[test]
    fn reset_clears_the_cooldown_but_keeps_counts_and_disabled() {
        let mut b = book();
        b.entry("a").disabled = true;
        b.answer("a", quota(None), None, t0());
        assert!(b.reset("a"));
        assert!(b.cooling_until("a", t0()).is_none());
        assert!(!b.eligible("a", t0()), "still disabled");
        assert_eq!(b.entries()["a"].counts.exhausted, 1);
        assert!(!b.reset("nobody"));
    }

    #[test]
    fn saved_records_are_adopted_for_hydrated_profiles_only() {
        let mut saved = BTreeMap::new();
        let e = Entry {
            cooling_until_unix_ms: Some(unix_ms(t0() + Duration::from_secs(5))),
            cool_reason: Some(CoolReason::Exhausted),
            ..Entry::default()
        };
        saved.insert("a".to_string(), e);
        saved.insert("gone".to_string(), Entry::default());
        let b = Book::new(
            ["a", "b"],
            saved,
            Settings {
                empty_answers_to_rotate: 2,
                cooldown: Duration::from_secs(1),
                rate_limit_cooldown: Duration::from_secs(1),
                demand_window: Duration::from_secs(1),
            },
        );
        assert!(!b.eligible("a", t0()));
        assert_eq!(b.entries().len(), 2);
    }

    #[test]
    fn a_rate_limit_rests_briefly_and_a_quota_long() {
        let mut b = book();
        let rate = Answer::Exhausted {
            retry_after: None,
            limit: Limit::RateLimit,
        };
        assert_eq!(
            b.answer("a", rate, None, t0()),
            Verdict::Retire {
                reason: CoolReason::RateLimited,
                until: t0() + Duration::from_secs(300)
            }
        );
        assert_eq!(
            b.answer("b", quota(None), None, t0()),
            Verdict::Retire {
                reason: CoolReason::Exhausted,
                until: t0() + Duration::from_secs(3600)
            }
        );
        assert_eq!(b.entries()["a"].counts.exhausted, 1);
    }

    #[test]
    fn a_needed_login_holds_until_new_content_or_an_operator() {
        let mut b = book();
        assert!(b.login_needed("a", "login redirect", 7, t0()));
        assert!(!b.login_needed("a", "again", 7, t0()), "not news");
        let far = t0() + Duration::from_secs(365 * 86_400);
        assert!(!b.eligible("a", far), "no time ends it");
        assert_eq!(b.next_eligible_at(["a"], &[], t0()), None);
        assert!(!b.content_seen("a", 7), "same content changes nothing");
        assert!(b.entries()["a"].needs_login.is_some());
        assert!(b.content_seen("a", 8), "a new file ends it");
        assert!(b.eligible("a", t0()));
        b.login_needed("a", "x", 8, t0());
        assert!(b.reset("a"));
        assert!(b.eligible("a", t0()), "an operator's reset ends it");
        b.login_needed("a", "x", 8, t0());
        b.set_disabled("a", true);
        assert!(b.entries()["a"].needs_login.is_some(), "disabling keeps it");
        b.set_disabled("a", false);
        assert!(b.eligible("a", t0()), "enabling ends it");
        assert_eq!(b.entries()["a"].counts.logins_needed, 3);
        let s = b.status(t0());
        assert!(s[0].needs_login.is_none());
    }

    #[test]
    fn a_quota_of_one_model_cools_that_model_only() {
        let mut b = book();
        let hour = Duration::from_secs(3600);
        let pro = || vec!["pro".to_string()];
        assert_eq!(
            b.answer("a", quota(None), Some("pro"), t0()),
            Verdict::CoolModel {
                model: "pro".into(),
                until: t0() + hour
            }
        );
        assert!(b.eligible("a", t0()), "no demand known: it may run");
        assert_eq!(
            b.demand(&[], t0()),
            vec!["pro"],
            "asked for when it ran out"
        );
        assert!(b.demand(&[], t0() + hour).is_empty(), "past the window");
        assert!(!b.eligible_for("a", &pro(), t0()));
        assert!(b.eligible_for("a", &["pro".into(), "flash".into()], t0()));
        assert_eq!(b.model_blocked("pro", t0()), None, "b serves pro");
        assert_eq!(b.model_blocked("flash", t0()), None);
        let ten = Duration::from_secs(10);
        b.answer("b", quota(None), Some("pro"), t0() + ten);
        assert_eq!(b.model_blocked("pro", t0()), Some(t0() + hour));
        assert_eq!(
            b.next_eligible_at(["a", "b"], &pro(), t0()),
            Some(t0() + hour)
        );
        // Two empty answers in a row cool the model of the second.
        assert_eq!(
            b.answer("b", Answer::Empty, Some("flash"), t0()),
            Verdict::Keep
        );
        assert!(matches!(
            b.answer("b", Answer::Empty, Some("flash"), t0()),
            Verdict::CoolModel { ref model, .. } if model == "flash"
        ));
        // A rate limit of a known model is that model's, and short.
        let rate = Answer::Exhausted {
            retry_after: None,
            limit: Limit::RateLimit,
        };
        assert_eq!(
            b.answer("a", rate, Some("flash"), t0()),
            Verdict::CoolModel {
                model: "flash".into(),
                until: t0() + Duration::from_secs(300)
            }
        );
        assert_eq!(
            b.status(t0())[0].model_cooldowns[0].reason,
            CoolReason::RateLimited
        );
        let st = b.status(t0());
        assert_eq!(st[1].model_cooldowns.len(), 2);
        assert_eq!(st[1].model_cooldowns[1].model, "pro");
        assert!(b.reset_model("b", "pro"));
        assert!(!b.reset_model("b", "pro"));
        assert_eq!(b.model_blocked("pro", t0()), None);
        assert!(b.reset("b"));
        assert!(b.status(t0())[1].model_cooldowns.is_empty());
    }

    #[test]
    fn when_a_profile_last_ran_survives_a_reset_and_first_sight_is_stamped_once() {
        let mut b = book();
        assert_eq!(b.idle_since("a"), None, "not stamped yet");
        assert!(b.stamp_first_seen(t0()));
        let later = t0() + Duration::from_secs(60);
        assert!(!b.stamp_first_seen(later), "stamped once");
        assert_eq!(b.idle_since("a"), Some((t0(), false)));
        b.ran("a", later);
        assert_eq!(b.idle_since("a"), Some((later, true)));
        b.answer("a", quota(None), None, later);
        assert!(b.reset("a"));
        assert_eq!(b.idle_since("a"), Some((later, true)), "a reset keeps it");
        assert_eq!(b.status(later)[0].last_ran_unix_ms, Some(unix_ms(later)));
        assert_eq!(b.idle_since("nobody"), None);
        // Saved and read back.
        let json = serde_json::to_string(b.entries()).unwrap();
        let saved: BTreeMap<String, Entry> = serde_json::from_str(&json).unwrap();
        assert_eq!(&saved, b.entries());
        // An older version's record has neither: stamped at the next look.
        let old: Entry = serde_json::from_str("{}").unwrap();
        assert_eq!(old.first_seen_unix_ms, None);
    }

    #[test]
    fn demand_and_budgets_decide_when_a_profile_is_of_use() {
        let mut b = book();
        let t = t0();
        let d = |ms: &[&str]| -> Vec<String> { ms.iter().map(|m| m.to_string()).collect() };
        let secs = |n| t + Duration::from_secs(n);
        b.answer("a", quota(Some(Duration::from_secs(100))), Some("pro"), t);
        b.answer("a", quota(Some(Duration::from_secs(60))), Some("flash"), t);
        let table: &[(&[&str], SystemTime)] = &[
            (&[], t),
            (&["lite"], t),
            (&["pro", "lite"], t),
            (&["pro"], secs(100)),
            (&["pro", "flash"], secs(60)),
        ];
        for (demand, want) in table {
            assert_eq!(
                b.available_at("a", &d(demand), t),
                Some(*want),
                "{demand:?}"
            );
        }
        let plan = "[all]\nprofiles = *\nlite = 2\nultra = off\n";
        let plan = crate::budget::plan::Plan::parse(plan).unwrap();
        b.budget_mut().set_plan(std::sync::Arc::new(plan));
        assert_eq!(
            b.answer("b", Answer::Served, Some("lite-1"), t),
            Verdict::Keep
        );
        assert!(b.fresh("b", t));
        let v = b.answer("b", Answer::Served, Some("lite"), t);
        let Verdict::BudgetSpent {
            model,
            line,
            budget,
            until,
        } = v
        else {
            panic!("{v:?}")
        };
        assert_eq!(
            (model.as_str(), line.as_str(), budget),
            ("lite", "lite*", 2)
        );
        assert!(until > t);
        assert!(!b.fresh("b", t), "it waits for the reset");
        assert!(!b.serves("b", "lite-2", t) && b.serves("b", "pro", t));
        assert_eq!(b.available_at("b", &d(&["lite"]), t), Some(until));
        assert_eq!(b.available_at("b", &d(&["ultra"]), t), None, "off: never");
        assert!(b.model_off_everywhere("ultra", t));
        assert!(!b.model_off_everywhere("lite", t));
        assert_eq!(b.model_blocked("lite", t), None, "a still serves it");
        let s = b.status(t);
        assert_eq!(s[1].budgets.len(), 2, "ultra and lite");
    }
}
