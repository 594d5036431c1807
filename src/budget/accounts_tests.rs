use super::*;
use std::time::{Duration, UNIX_EPOCH};

const FILE: &str = "
default = free
[free]
pro = 3
flash = 2
ultra = off
[paid]
profiles = paid-*
pro = 100
";

fn budget() -> Budget {
    Budget::new(Arc::new(Plan::parse(FILE).unwrap()))
}

/// Noon of a day in the budget zone, and that day's end.
fn noon() -> (SystemTime, SystemTime) {
    // 2026-12-07 20:00 UTC is noon in Los Angeles.
    let t = UNIX_EPOCH + Duration::from_secs(1_796_673_600);
    let end = super::super::wall_at(Day::at(budget_secs(t)).ends);
    assert_eq!(
        end.duration_since(t).unwrap(),
        Duration::from_secs(12 * 3600)
    );
    (t, end)
}

use super::super::budget_secs;

#[test]
fn a_budget_is_spent_by_served_answers_and_comes_back_at_midnight() {
    let (t, end) = noon();
    let mut b = budget();
    assert_eq!(
        b.room("a", "pro", t),
        Room::Left {
            used: 0,
            budget: 3,
            resets: end
        }
    );
    assert!(!b.served("a", "pro", t));
    assert!(!b.served("a", "pro-preview", t), "the prefix's family");
    assert!(b.served("a", "pro", t), "the third uses the last");
    assert!(!b.served("a", "pro", t), "news once");
    assert_eq!(
        b.room("a", "pro-2", t),
        Room::Spent {
            used: 4,
            budget: 3,
            resets: end
        }
    );
    assert_eq!(b.room("a", "pro", t).free_at(t), Some(end));
    assert!(b.spent_any("a", t));
    assert_eq!(
        b.room("a", "flash", t).free_at(t),
        Some(t),
        "other models served"
    );
    assert_eq!(
        b.room("b", "pro", t).free_at(t),
        Some(t),
        "other accounts too"
    );
    assert_eq!(b.room("a", "ultra", t), Room::Off);
    assert_eq!(b.room("a", "ultra", t).free_at(t), None);
    assert_eq!(b.room("a", "gpt", t), Room::Free, "no line: free");
    assert_eq!(
        b.room("paid-1", "ultra", t),
        Room::Free,
        "paid has no ultra line"
    );
    let after = end + Duration::from_secs(1);
    assert!(matches!(
        b.room("a", "pro", after),
        Room::Left { used: 0, .. }
    ));
    assert!(!b.spent_any("a", after));
    assert!(!b.served("a", "pro", after));
    assert_eq!(
        b.counts("a", after).unwrap().1["pro"],
        1,
        "a new day's counts"
    );
}

#[test]
fn counts_learnt_elsewhere_raise_never_lower_and_only_for_today() {
    let (t, end) = noon();
    let mut b = budget();
    b.served("a", "pro", t);
    let today = Day::at(budget_secs(t)).number;
    let theirs = BTreeMap::from([("pro".to_string(), 2), ("flash".to_string(), 2)]);
    b.learn(today, "a", &theirs, t);
    b.learn(today - 1, "a", &BTreeMap::from([("pro".to_string(), 9)]), t);
    let (day, mine) = b.counts("a", t).unwrap();
    assert_eq!(day, today);
    assert_eq!((mine["pro"], mine["flash"]), (2, 2));
    b.learn(today, "a", &BTreeMap::from([("pro".to_string(), 1)]), t);
    assert_eq!(b.counts("a", t).unwrap().1["pro"], 2, "never lowered");
    assert!(matches!(b.room("a", "flash", t), Room::Spent { .. }));
    let lines = b.lines_of("a", t);
    let shown: Vec<_> = lines
        .iter()
        .map(|l| (l.model.as_str(), l.used, l.budget))
        .collect();
    assert_eq!(
        shown,
        vec![
            ("flash*", 2, Some(2)),
            ("ultra*", 0, None),
            ("pro*", 2, Some(3))
        ]
    );
    assert!(lines.iter().all(|l| l.tier == "free"
        && l.resets_at_unix == end.duration_since(UNIX_EPOCH).unwrap().as_secs() as i64));
    assert!(b.counts("a", end + Duration::from_secs(1)).is_none());
    assert!(
        b.lines_of("nobody-in-a-tier", t).len() == 3,
        "the default tier"
    );
    let none = Budget::default();
    assert!(!none.is_on());
    assert!(none.lines_of("a", t).is_empty());
    assert!(none
        .allowance("a", t, |_| Instant::now(), &BTreeMap::new())
        .is_none());
}

#[test]
fn an_allowance_counts_requests_in_flight_and_refills_at_the_reset() {
    let (t, end) = noon();
    let mut b = budget();
    b.served("a", "pro", t);
    let i0 = Instant::now();
    let instant = |w: SystemTime| i0 + w.duration_since(t).unwrap_or_default();
    let a = b.allowance("a", t, instant, &BTreeMap::new()).unwrap();
    assert_eq!(a.take("pro-x", 0, i0), Take::Left(2));
    assert_eq!(a.take("pro", 2, i0), Take::Left(0), "the rest in flight");
    assert_eq!(a.take("ultra", 0, i0), Take::Never);
    assert_eq!(a.take("gpt", 0, i0), Take::Free);
    assert_eq!(a.budget_line("pro-x"), Some("pro"));
    assert_eq!(a.budget_line("ultra"), None, "off: nothing to count");
    assert_eq!(a.budget_line("gpt"), None);
    b.served("a", "pro", t);
    b.served("a", "pro", t);
    let spent = b.allowance("a", t, instant, &BTreeMap::new()).unwrap();
    let reset = instant(end);
    assert_eq!(spent.take("pro", 0, i0), Take::Until(reset));
    assert_eq!(spent.take("pro", 0, reset), Take::Left(3), "a new day");
    assert_eq!(spent.take("flash", 0, i0), Take::Left(2));
}

#[test]
fn client_made_model_names_are_capped_but_budgeted_ones_always_count() {
    let (t, _) = noon();
    let mut b = budget();
    for i in 0..MAX_MODELS + 40 {
        b.served("a", &format!("made-up-{i}"), t);
    }
    assert_eq!(b.models_today().len(), MAX_MODELS);
    b.served("a", "pro", t);
    assert_eq!(
        b.counts("a", t).unwrap().1["pro"],
        1,
        "a budgeted model still counts"
    );
}
