//! The account budgets as others see them, pure: the fleet's lines (per
//! model line of `MODEL_BUDGETS_FILE`, summed over the placed accounts)
//! with the budget day they are of, for `GET /v1/budget`, `ctl status`,
//! `ctl usage`, the status page and `/metrics`; and, for the operator's
//! views only, each account's own lines.
//!
//! Built at read time from a supervisor snapshot's book (so it never
//! disagrees with `/ready`); it changes nothing. What a key holder may see
//! (`/v1/budget`) is the fleet's lines alone: no profile name.

use std::time::SystemTime;

use serde::Serialize;

use super::accounts::{Budget, FleetLine, Line};
use super::Day;

/// The budgets of the fleet on one budget day.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Fleet {
    /// `BUDGET_TIMEZONE` as configured.
    pub zone: String,
    /// The budget day, `YYYY-MM-DD` in the zone.
    pub day: String,
    /// Unix time the day ends and every budget is whole again.
    pub resets_at_unix: i64,
    /// Each model line with a budget, summed over the accounts whose tier
    /// gives it one, in the file's words (`gemini-2.5-pro*`).
    pub lines: Vec<FleetLine>,
    /// Each account's lines (budget or `off`), for the operator's views;
    /// None where accounts must not show.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub accounts: Option<Vec<Line>>,
}

/// The fleet's budgets over `usable` (the accounts it can spend) at
/// `now`; None when no budgets file is in force. `accounts`: with the
/// lines of each of these accounts too (every placed one, usable or not).
pub fn fleet<'a>(
    budget: &Budget,
    usable: impl IntoIterator<Item = &'a str>,
    accounts: Option<Vec<&str>>,
    now: SystemTime,
) -> Option<Fleet> {
    if !budget.is_on() {
        return None;
    }
    let day = Day::at(super::budget_secs(now));
    let lines = budget.fleet(usable, now);
    let accounts = accounts.map(|all| {
        all.into_iter()
            .flat_map(|p| budget.lines_of(p, now))
            .collect()
    });
    Some(Fleet {
        zone: super::zone_name().to_string(),
        day: day.date(),
        resets_at_unix: day.ends - super::offset_s(),
        lines,
        accounts,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::budget::plan::Plan;
    use std::sync::Arc;
    use std::time::{Duration, UNIX_EPOCH};

    #[test]
    fn the_fleet_view_sums_lines_and_shows_accounts_only_when_asked() {
        let plan = "default = free\n[free]\npro = 3\nultra = off\n[paid]\nprofiles = paid-*\npro = 10\nultra = 5\n";
        let mut b = Budget::new(Arc::new(Plan::parse(plan).unwrap()));
        // 2026-12-07 20:00 UTC: noon in Los Angeles, 12 hours to the reset.
        let t = UNIX_EPOCH + Duration::from_secs(1_796_673_600);
        b.served("a", "pro-1", t);
        b.served("paid-b", "pro-2", t);
        b.served("paid-b", "ultra", t);
        let names = ["a", "paid-b"];
        let f = fleet(&b, names, None, t).unwrap();
        assert_eq!(
            (f.zone.as_str(), f.day.as_str()),
            ("America/Los_Angeles", "2026-12-07")
        );
        assert_eq!(f.resets_at_unix, 1_796_673_600 + 12 * 3600);
        let got: Vec<_> = f
            .lines
            .iter()
            .map(|l| (l.model.as_str(), l.accounts, l.budget, l.used, l.left))
            .collect();
        assert_eq!(got, vec![("pro*", 2, 13, 2, 11), ("ultra*", 1, 5, 1, 4)]);
        assert!(f.accounts.is_none());
        let json = serde_json::to_value(&f).unwrap();
        assert!(json.get("accounts").is_none(), "{json}");
        let f = fleet(&b, ["paid-b"], Some(names.to_vec()), t).unwrap();
        assert_eq!(f.lines[0].accounts, 1, "only the usable ones sum");
        let accounts = f.accounts.unwrap();
        let off = accounts
            .iter()
            .find(|l| l.profile == "a" && l.model == "ultra*");
        assert_eq!(off.map(|l| l.budget), Some(None), "an off line shows");
        assert_eq!(accounts.len(), 4);
        // No budgets file: nothing to show.
        assert!(fleet(&Budget::default(), names, Some(names.to_vec()), t).is_none());
    }
}
