//! The budget rows: what a served answer under a `MODEL_BUDGETS_FILE`
//! budget decides (what the dispatcher is told, who leaves a slot, who
//! takes one, which models are refused, which alerts go), at fixed instants.

use super::*;
use crate::budget::plan::Plan;
use std::sync::Arc;

/// Two tiers: `free` (the default) with 2 of `pro`, 5 of `flash` and no
/// `ultra`; `paid` (profiles `p*`) with 10 of `pro` and `ultra`.
fn budgets(st: &mut State, at: &At) -> Vec<Action> {
    let file = "default = free\n[free]\npro = 2\nflash = 5\nultra = off\n[paid]\nprofiles = p*\npro = 10\n";
    let plan = Plan::parse(file).unwrap();
    handle(st, Msg::Budgets(Arc::new(plan)), at)
}

fn served(model: &str) -> Msg {
    Msg::Outcome(Outcome {
        slot: 0,
        generation: 1,
        model: Some(model.into()),
        answer: Answer::Served,
    })
}

fn told_serves(out: &[Action]) -> bool {
    out.iter().any(|a| matches!(a, Action::Serves { .. }))
}

/// A budget row: the models asked for and waited for, the queued
/// profiles' names, served answers before, then one more; whether the
/// slot drains, and whether an alert goes.
type BudgetRow = (
    &'static str,
    &'static [&'static str],
    &'static [&'static str],
    &'static [&'static str],
    &'static [&'static str],
    &'static str,
    bool,
);

#[test]
fn budget_outcome_table() {
    // (what, asked, waited for, fleet (slot first), before, answer, drains)
    let rows: Vec<BudgetRow> = vec![
        (
            "a served answer under a budget only tells what is left",
            &["pro"],
            &[],
            &["a", "b"],
            &[],
            "pro",
            false,
        ),
        (
            "the last of the only model in demand, a spare has budget: leaves",
            &["pro"],
            &[],
            &["a", "b"],
            &["pro"],
            "pro",
            true,
        ),
        (
            "the last of one model of two in demand: keeps serving the other",
            &["pro", "flash"],
            &[],
            &["a", "b"],
            &["pro"],
            "pro",
            false,
        ),
        (
            "the last, with requests waiting for it and a spare with budget: leaves",
            &["pro", "flash"],
            &["pro"],
            &["a", "b"],
            &["pro"],
            "pro",
            true,
        ),
        (
            "the last, and the spare's tier turns it off: stays",
            &["ultra"],
            &["ultra"],
            &["p1", "b"],
            &[],
            "pro",
            false,
        ),
    ];
    for (what, asked, waited, names, before, last, want_drain) in rows {
        let mut st = fleet(names, 1);
        let mut at = t(1);
        budgets(&mut st, &at);
        make_ready(&mut st, 0, &at);
        at.asked = asked.iter().map(|m| m.to_string()).collect();
        at.waited_for = waited.iter().map(|m| m.to_string()).collect();
        for m in before {
            handle(&mut st, served(m), &at);
        }
        let out = handle(&mut st, served(last), &at);
        assert_eq!(drains(&out, 0, Then::Rotate), want_drain, "{what}: {out:?}");
        assert!(
            told_serves(&out),
            "{what}: the dispatcher hears what is left"
        );
    }
}

#[test]
fn a_slot_takes_the_queued_profile_with_budget_for_what_requests_wait_for() {
    let mut st = fleet(&["a", "b", "c"], 1);
    let mut at = t(1);
    budgets(&mut st, &at);
    // b used its pro budget (another slot served it earlier today).
    st.book.answer("b", Answer::Served, Some("pro"), at.wall);
    st.book.answer("b", Answer::Served, Some("pro"), at.wall);
    at.waited_for = vec!["pro".into()];
    at.asked = vec!["pro".into()];
    let out = handle(&mut st, next(0, Pick::Rotate), &at);
    assert_eq!(ran(&out).as_deref(), Some("c"), "b has none left: c, not b");
    assert_eq!(queue(&st), vec!["b", "a"]);
}

#[test]
fn spent_and_off_models_are_refused_fleet_wide_until_the_reset() {
    let mut st = fleet(&["a"], 1);
    let mut at = t(1);
    budgets(&mut st, &at);
    make_ready(&mut st, 0, &at);
    at.waited_for = vec!["ultra".into()];
    let out = handle(&mut st, Msg::Starved("ultra".into()), &at);
    assert!(out.contains(&Action::Save), "the dispatcher hears of it");
    let b = blocked_models(&st.book, &at);
    assert!(b.off.contains("ultra"), "no tier of the fleet allows it");
    handle(&mut st, served("pro"), &at);
    handle(&mut st, served("pro"), &at);
    let b = blocked_models(&st.book, &at);
    let reset = b.until["pro"];
    assert!(reset > at.mono);
    assert!(!b.until.contains_key("flash"));
    // The reset, as the budget day sees it: pro is served again.
    let secs = reset.duration_since(at.mono).as_secs() + 2;
    let later = t(1 + secs);
    assert!(st.book.serves("a", "pro", later.wall));
    assert!(!blocked_models(&st.book, &later).until.contains_key("pro"));
}

#[test]
fn the_fleet_alert_goes_once_under_the_threshold_and_once_when_gone() {
    let mut st = fleet(&["a", "b"], 1);
    st.settings.budget_alert_percent = 20;
    let at = t(1);
    budgets(&mut st, &at);
    make_ready(&mut st, 0, &at);
    // flash: 5 + 5 = 10 over the fleet; under 20 % left is 1 left.
    let alerts = |out: &[Action]| -> Vec<String> {
        out.iter()
            .filter_map(|a| match a {
                Action::BudgetAlert(t) => Some(t.clone()),
                _ => None,
            })
            .collect()
    };
    for i in 0..3 {
        st.book.answer("b", Answer::Served, Some("flash"), at.wall);
        assert!(
            alerts(&handle(&mut st, served("flash"), &at)).is_empty(),
            "{i}"
        );
    }
    st.book.answer("b", Answer::Served, Some("flash"), at.wall);
    st.book.answer("b", Answer::Served, Some("flash"), at.wall);
    let low = alerts(&handle(&mut st, served("flash"), &at));
    assert_eq!(low.len(), 1, "{low:?}");
    assert!(low[0].contains("flash* is running low: 1 of 10"), "{low:?}");
    let gone = alerts(&handle(&mut st, served("flash"), &at));
    assert_eq!(gone.len(), 1, "{gone:?}");
    assert!(
        gone[0].contains("flash* is gone until the reset"),
        "{gone:?}"
    );
    assert!(
        alerts(&handle(&mut st, served("flash"), &at)).is_empty(),
        "once a day"
    );
}

#[test]
fn new_budgets_reach_every_ready_route_and_wake_the_slots() {
    let mut st = fleet(&["a", "b"], 2);
    let at = t(1);
    make_ready(&mut st, 0, &at);
    let out = budgets(&mut st, &at);
    let told = out
        .iter()
        .filter(|a| {
            matches!(
                a,
                Action::Serves {
                    budget: Some(_),
                    ..
                }
            )
        })
        .count();
    assert_eq!(told, 2, "both placed slots: {out:?}");
    assert!(out.contains(&Action::Save));
    assert!(out
        .iter()
        .any(|a| matches!(a, Action::Tell { cmd: Cmd::Wake, .. })));
}

#[test]
fn a_disabled_account_adds_nothing_to_the_fleets_budget() {
    let mut st = fleet(&["a", "b"], 1);
    st.settings.budget_alert_percent = 30;
    let at = t(1);
    budgets(&mut st, &at);
    make_ready(&mut st, 0, &at);
    handle(&mut st, Msg::Admin(AdminOp::Disable("b".into())), &at);
    let mut texts = Vec::new();
    for _ in 0..4 {
        for a in handle(&mut st, served("flash"), &at) {
            if let Action::BudgetAlert(t) = a {
                texts.push(t);
            }
        }
    }
    assert_eq!(texts.len(), 1, "{texts:?}");
    assert!(
        texts[0].contains("1 of 5 requests left over 1 account ("),
        "{texts:?}"
    );
}
