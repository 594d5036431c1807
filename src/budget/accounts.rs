//! What each account has left of its daily budgets (`plan`), pure: the
//! requests each profile served today per model, and the questions asked of
//! them, each given `now` (wall clock; the budget day is `budget::Day`'s,
//! in `BUDGET_TIMEZONE`).
//!
//! The profile book owns one [`Budget`] and counts every served answer of a
//! completion into it; the counts come from the usage ledger's day counts
//! at start (they are saved there) and from another replica's lease when a
//! profile moves (see `fleet::lease`). What a ready child may take is
//! published to the dispatcher as an [`Allowance`], whose `left` the
//! dispatcher lowers by its requests in flight, so the fleet never sends
//! more requests for a model than an account has budget left.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use super::plan::{Allow, Plan, Rule};
use super::Day;

/// The most model names kept per account (a budgeted one always is).
const MAX_MODELS: usize = 256;

/// What one account may still do for one model today.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Room {
    /// No budget covers it.
    Free,
    /// `budget - used` left until `resets`.
    Left {
        used: u64,
        budget: u64,
        resets: SystemTime,
    },
    /// All used until `resets`.
    Spent {
        used: u64,
        budget: u64,
        resets: SystemTime,
    },
    /// Its tier does not allow the model.
    Off,
}

impl Room {
    /// When the account may serve the model: now, at its reset, or never
    /// (until the budgets change).
    pub fn free_at(self, now: SystemTime) -> Option<SystemTime> {
        match self {
            Room::Free | Room::Left { .. } => Some(now),
            Room::Spent { resets, .. } => Some(resets),
            Room::Off => None,
        }
    }
}

/// One account's budget of one line, for the views.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Line {
    pub profile: String,
    pub tier: String,
    /// What the line covers, as the file says: `gemini-2.5-pro*`.
    pub model: String,
    pub used: u64,
    /// None: `off`.
    pub budget: Option<u64>,
    pub resets_at_unix: i64,
}

/// One model line across the fleet, for `/v1/budget`, the views and the
/// alerts: every account whose tier gives the line a budget.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct FleetLine {
    /// As the file writes it: `gemini-2.5-pro*`.
    pub model: String,
    pub accounts: usize,
    pub budget: u64,
    pub used: u64,
    pub left: u64,
    pub resets_at_unix: i64,
}

impl FleetLine {
    fn alert_text(&self, level: &str, zone: &str) -> String {
        let (m, b) = (&self.model, self.budget);
        let n = match self.accounts {
            1 => "1 account".to_string(),
            n => format!("{n} accounts"),
        };
        match level {
            "gone" => format!("the fleet's budget for {m} is gone until the reset at midnight {zone} ({b} requests over {n} used)"),
            _ => format!("the fleet's budget for {m} is running low: {} of {b} requests left over {n} ({}%) until midnight {zone}", self.left, self.left * 100 / b.max(1)),
        }
    }
}

/// The budgets in force and today's counts.
#[derive(Debug, Clone, Default)]
pub struct Budget {
    plan: Arc<Plan>,
    /// The budget day the counts are of (None: none yet).
    day: Option<Day>,
    /// profile -> model -> completions served today.
    used: BTreeMap<String, BTreeMap<String, u64>>,
    /// The fleet alerts sent today: (line, `low` or `gone`).
    alerted: BTreeSet<(String, &'static str)>,
}

/// The wall clock `now` as the budget days see it (seconds).
fn secs(now: SystemTime) -> i64 {
    super::budget_secs(now)
}

impl Budget {
    /// For tests: the book starts from `Default` and `set_plan`.
    #[cfg(test)]
    pub fn new(plan: Arc<Plan>) -> Budget {
        Budget {
            plan,
            ..Budget::default()
        }
    }

    pub fn plan(&self) -> &Arc<Plan> {
        &self.plan
    }

    /// Budgets from now on (a reload): the counts stay.
    pub fn set_plan(&mut self, plan: Arc<Plan>) {
        self.plan = plan;
    }

    /// Whether any budget applies at all.
    pub fn is_on(&self) -> bool {
        !self.plan.is_empty()
    }

    /// The day of `now`; counts of an earlier one are dropped.
    fn roll(&mut self, now: SystemTime) -> Day {
        let d = Day::at(secs(now));
        if self.day.is_none_or(|old| old.number != d.number) {
            self.used.clear();
            self.alerted.clear();
            self.day = Some(d);
        }
        d
    }

    /// Today's count of `profile` for the models `rule` covers in its tier.
    fn used_by(
        &self,
        profile: &str,
        rule: &Rule,
        tier: &super::plan::Tier,
        now: SystemTime,
    ) -> u64 {
        let today = Day::at(secs(now)).number;
        if self.day.is_none_or(|d| d.number != today) {
            return 0;
        }
        let Some(models) = self.used.get(profile) else {
            return 0;
        };
        models
            .iter()
            .filter(|(m, _)| tier.rule_for(m).is_some_and(|r| r.prefix == rule.prefix))
            .map(|(_, n)| n)
            .sum()
    }

    /// What `profile` may still do for `model` at `now`.
    pub fn room(&self, profile: &str, model: &str, now: SystemTime) -> Room {
        let Some(tier) = self.plan.tier_of(profile) else {
            return Room::Free;
        };
        let Some(rule) = tier.rule_for(model) else {
            return Room::Free;
        };
        match rule.allow {
            Allow::Unlimited => Room::Free,
            Allow::Off => Room::Off,
            Allow::Budget(budget) => {
                let used = self.used_by(profile, rule, tier, now);
                let resets = super::wall_at(Day::at(secs(now)).ends);
                match used >= budget {
                    true => Room::Spent {
                        used,
                        budget,
                        resets,
                    },
                    false => Room::Left {
                        used,
                        budget,
                        resets,
                    },
                }
            }
        }
    }

    /// Count one served completion of `profile` for `model`. True when it
    /// used the last of a budget (the account now waits for the reset).
    pub fn served(&mut self, profile: &str, model: &str, now: SystemTime) -> bool {
        self.roll(now);
        let budgeted = self.line_of(profile, model).is_some();
        let mine = self.used.entry(profile.to_string()).or_default();
        // Names come from clients: past the cap, only budgeted ones count.
        if mine.len() >= MAX_MODELS && !mine.contains_key(model) && !budgeted {
            return false;
        }
        *mine.entry(model.to_string()).or_default() += 1;
        matches!(self.room(profile, model, now), Room::Spent { used, budget, .. } if used == budget)
    }

    /// Counts learnt elsewhere (the saved ledger, another replica's lease)
    /// for budget day `day`: each model's count is raised to at least
    /// `n` (never lowered: both may have seen the same answers).
    pub fn learn(
        &mut self,
        day: i64,
        profile: &str,
        counts: &BTreeMap<String, u64>,
        now: SystemTime,
    ) {
        let today = self.roll(now);
        if day != today.number {
            return;
        }
        let mine = self.used.entry(profile.to_string()).or_default();
        for (m, n) in counts {
            let c = mine.entry(m.clone()).or_default();
            *c = (*c).max(*n);
        }
    }

    /// `profile`'s counts today, for tests (leases carry the usage
    /// ledger's counts, see `fleet::leaser`).
    #[cfg(test)]
    pub fn counts(&self, profile: &str, now: SystemTime) -> Option<(i64, BTreeMap<String, u64>)> {
        let d = self.day.filter(|d| d.number == Day::at(secs(now)).number)?;
        Some((d.number, self.used.get(profile)?.clone()))
    }

    /// Every model some account served today.
    pub fn models_today(&self) -> BTreeSet<String> {
        self.used.values().flat_map(|m| m.keys().cloned()).collect()
    }

    /// Each line with a budget, summed over `profiles` (the fleet's), in
    /// the file's words.
    pub fn fleet<'a>(
        &self,
        profiles: impl IntoIterator<Item = &'a str>,
        now: SystemTime,
    ) -> Vec<FleetLine> {
        let mut by: BTreeMap<String, FleetLine> = BTreeMap::new();
        for p in profiles {
            for l in self.lines_of(p, now) {
                let Some(b) = l.budget else { continue };
                let f = by.entry(l.model.clone()).or_insert(FleetLine {
                    model: l.model,
                    accounts: 0,
                    budget: 0,
                    used: 0,
                    left: 0,
                    resets_at_unix: l.resets_at_unix,
                });
                f.accounts += 1;
                f.budget += b;
                f.used += l.used.min(b);
                f.left += b.saturating_sub(l.used);
            }
        }
        by.into_values().collect()
    }

    /// The alerts the fleet's lines call for now, each once a day: a line
    /// with under `percent` % of its budget left, and one with none left.
    pub fn fleet_alerts<'a>(
        &mut self,
        profiles: impl IntoIterator<Item = &'a str>,
        percent: u8,
        now: SystemTime,
    ) -> Vec<String> {
        self.roll(now);
        let mut out = Vec::new();
        for f in self.fleet(profiles, now) {
            let low = f.left * 100 < f.budget * u64::from(percent);
            let level = match (f.left, low) {
                (0, _) => "gone",
                (_, true) => "low",
                _ => continue,
            };
            if !self.alerted.insert((f.model.clone(), level)) {
                continue;
            }
            if level == "gone" {
                // Straight to none: the low one says nothing more.
                self.alerted.insert((f.model.clone(), "low"));
            }
            out.push(f.alert_text(level, super::zone_name()));
        }
        out
    }

    /// Whether `profile` waits for the reset of some budget.
    pub fn spent_any(&self, profile: &str, now: SystemTime) -> bool {
        self.lines_of(profile, now)
            .iter()
            .any(|l| l.budget.is_some_and(|b| l.used >= b))
    }

    /// `profile`'s lines with a budget or `off`, with today's use.
    pub fn lines_of(&self, profile: &str, now: SystemTime) -> Vec<Line> {
        let Some(tier) = self.plan.tier_of(profile) else {
            return Vec::new();
        };
        let resets = Day::at(secs(now)).ends - super::offset_s();
        tier.rules
            .iter()
            .filter(|r| r.allow != Allow::Unlimited)
            .map(|r| Line {
                profile: profile.to_string(),
                tier: tier.name.clone(),
                model: r.pattern(),
                used: self.used_by(profile, r, tier, now),
                budget: match r.allow {
                    Allow::Budget(b) => Some(b),
                    _ => None,
                },
                resets_at_unix: resets,
            })
            .collect()
    }

    /// What a ready child of `profile` may take, for the dispatcher (None:
    /// no budget applies to it); `instant` turns a wall time into an
    /// instant; `counted`: the child's served answers counted per line.
    pub fn allowance(
        &self,
        profile: &str,
        now: SystemTime,
        instant: impl Fn(SystemTime) -> Instant,
        counted: &BTreeMap<String, u64>,
    ) -> Option<Arc<Allowance>> {
        let tier = self.plan.tier_of(profile)?;
        let resets = instant(super::wall_at(Day::at(secs(now)).ends));
        let lines = tier
            .rules
            .iter()
            .map(|r| {
                let room = match r.allow {
                    Allow::Budget(budget) => Have::Left {
                        left: budget.saturating_sub(self.used_by(profile, r, tier, now)),
                        budget,
                        resets,
                    },
                    Allow::Off => Have::Off,
                    Allow::Unlimited => Have::Unlimited,
                };
                (r.prefix.clone(), room)
            })
            .collect();
        Some(Arc::new(Allowance {
            lines,
            counted: counted.clone(),
        }))
    }

    /// The budget line (its prefix) `model` counts under for `profile`,
    /// when one with a budget covers it.
    pub fn line_of(&self, profile: &str, model: &str) -> Option<&str> {
        let rule = self.plan.tier_of(profile)?.rule_for(model)?;
        matches!(rule.allow, Allow::Budget(_)).then_some(rule.prefix.as_str())
    }
}

/// What one ready child may take: each line of its tier (longest prefix
/// first) with what it has left, and how many of this child's served
/// answers per line the book had counted then (the dispatcher holds back
/// the ones it has not yet).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Allowance {
    lines: Vec<(String, Have)>,
    counted: BTreeMap<String, u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Have {
    /// `left` until `resets`; after it, the whole `budget` again.
    Left {
        left: u64,
        budget: u64,
        resets: Instant,
    },
    Off,
    Unlimited,
}

/// What a route may take of a model, as the dispatcher asks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Take {
    Free,
    /// This many more requests today (0: the rest are in flight, and a
    /// failed one gives its place back).
    Left(u64),
    /// None until then.
    Until(Instant),
    Never,
}

impl Allowance {
    /// The line covering `model` (its prefix), when it has a budget: the
    /// key the dispatcher counts requests in flight under.
    pub fn budget_line(&self, model: &str) -> Option<&str> {
        self.line(model)
            .filter(|(_, h)| matches!(h, Have::Left { .. }))
            .map(|(p, _)| p.as_str())
    }

    /// How many of its child's served answers under `line` the book had
    /// counted when this was made.
    pub fn counted(&self, line: &str) -> u64 {
        self.counted.get(line).copied().unwrap_or(0)
    }

    fn line(&self, model: &str) -> Option<&(String, Have)> {
        self.lines
            .iter()
            .find(|(p, _)| model.starts_with(p.as_str()))
    }

    /// What may be taken of `model` at `now`, with `in_flight` requests of
    /// its line already sent and not yet counted.
    pub fn take(&self, model: &str, in_flight: u64, now: Instant) -> Take {
        match self.line(model).map(|(_, h)| *h) {
            None | Some(Have::Unlimited) => Take::Free,
            Some(Have::Off) => Take::Never,
            Some(Have::Left {
                left,
                budget,
                resets,
            }) => {
                let left = if now >= resets { budget } else { left };
                if left == 0 {
                    return Take::Until(resets);
                }
                // 0: all taken by requests in flight; one may give back.
                Take::Left(left.saturating_sub(in_flight))
            }
        }
    }
}

#[cfg(test)]
#[path = "accounts_tests.rs"]
mod tests;
