//! Profile health: what an answer, a start, a login sign, an operator or
//! the leaser changes in the book, and which slot must make way for it.
//! Part of the pure core, run on the supervisor thread (and by table tests):
//! it must do no I/O and read no clock.

use super::{event, log, warn, Action, At, Out, State};
use crate::book::{self, Verdict};
use crate::dispatch::{ChildId, SlotView};
use crate::events::Kind;
use crate::fleet::Release;
use crate::hydrate::LoginFacts;
use crate::placement;
use crate::slot::{State as Phase, StopReason};
use crate::supervisor::msg::{AdminAnswer, AdminOp, Cmd, Outcome, Reply, Then};

/// Drain the child of `generation` on `slot` (no new requests from now on:
/// the dispatcher counts the slot as draining before its watcher even
/// hears of it), then rotate.
pub(super) fn rotate_out(
    slot: usize,
    generation: u64,
    reason: StopReason,
    then: Then,
    out: &mut Out,
) {
    out.push(Action::Route {
        slot,
        view: SlotView::Draining { generation },
    });
    out.push(Action::Tell {
        slot,
        cmd: Cmd::Drain {
            generation: Some(generation),
            reason,
            then,
        },
    });
}

/// One answer of the child of `generation` on `slot`. An exhausted
/// profile's slot drains and rotates; one that cools for a model keeps
/// serving the others unless it is of no use any more (see `placement`).
pub(super) fn outcome(st: &mut State, o: Outcome, at: &At, out: &mut Out) {
    let Outcome {
        slot,
        generation,
        model,
        answer,
    } = o;
    let Some(s) = st.slots.get(slot).filter(|s| s.generation == generation) else {
        return;
    };
    let Some(name) = s.name().map(str::to_string) else {
        return;
    };
    let v = st.book.answer(&name, answer, model.as_deref(), at.wall);
    let child = ChildId { slot, generation };
    let line = match (answer, model.as_deref()) {
        (book::Answer::Served, Some(m)) => st.book.budget().line_of(&name, m).map(str::to_string),
        _ => None,
    };
    if let Some(l) = &line {
        *st.slots[slot].served.entry(l.clone()).or_default() += 1;
    }
    if v == Verdict::Keep {
        // A served completion counted against a budget: the dispatcher
        // hears what is left, and that this one is counted.
        if line.is_some() {
            out.push(st.serves(child, at));
            fleet_alerts(st, at, out);
        }
        return;
    }
    let leaves = announce(st, slot, &name, &v, at, out);
    out.push(st.serves(child, at));
    if leaves {
        rotate_out(slot, generation, StopReason::Exhausted, Then::Rotate, out);
    }
    out.push(Action::Save);
}

/// Say what verdict `v` on `name` (in `slot`) means, in the log and the
/// events; whether the profile leaves its slot for it.
fn announce(st: &mut State, slot: usize, name: &str, v: &Verdict, at: &At, out: &mut Out) -> bool {
    let left =
        |until: &std::time::SystemTime| until.duration_since(at.wall).unwrap_or_default().as_secs();
    let then = |leaves: bool, what: &str| {
        match leaves {
        true => format!("; it is rotated out (another profile {what} the models in demand, or the waiting requests)"),
        false => " and keeps serving other models".to_string(),
    }
    };
    match v {
        Verdict::Keep => false,
        Verdict::Retire { reason, until } => {
            let left = left(until);
            warn(out, format!("slot {slot}: profile {name} is {reason}: draining it, then it cools down for {left}s"));
            let text = format!("{reason}, {left}s");
            event(out, Kind::CooldownSet, Some(slot), Some(name), text);
            true
        }
        Verdict::CoolModel { model, until } => {
            let (left, leaves) = (left(until), model_leaves(st, name, model, at));
            let then = then(leaves, "serves");
            warn(out, format!("slot {slot}: profile {name} is out of quota for model {model}: it cools for it for {left}s{then}"));
            let text = format!("exhausted for model {model}, {left}s");
            event(out, Kind::CooldownSet, Some(slot), Some(name), text);
            leaves
        }
        Verdict::BudgetSpent {
            model,
            line,
            budget,
            until,
        } => {
            let (left, leaves) = (left(until), model_leaves(st, name, model, at));
            let then = then(leaves, "has budget for");
            log(out, format!("slot {slot}: profile {name} used its budget of {budget} requests for {line} today: it serves {line} again at the reset in {left}s{then}"));
            fleet_alerts(st, at, out);
            let text = format!("used its budget of {budget} for {line}; resets in {left}s");
            event(out, Kind::BudgetSpent, Some(slot), Some(name), text);
            leaves
        }
    }
}

/// New budgets (start, reload): every ready route hears what it may take,
/// the dispatcher which models nobody serves, every slot looks again.
pub(super) fn budgets(
    st: &mut State,
    plan: std::sync::Arc<crate::budget::plan::Plan>,
    at: &At,
    out: &mut Out,
) {
    st.book.budget_mut().set_plan(plan);
    refresh_serves(st, at, out);
    out.push(Action::Save);
    st.wake_all(out);
}

/// Counts another replica saw for `profile` today (its lease said so).
pub(super) fn spent(
    st: &mut State,
    profile: &str,
    day: i64,
    counts: &std::collections::BTreeMap<String, u64>,
    at: &At,
    out: &mut Out,
) {
    st.book.budget_mut().learn(day, profile, counts, at.wall);
    refresh_serves(st, at, out);
    out.push(Action::Save);
}

/// The fleet's budgets after a counted answer: one alert per line that
/// came under the threshold or ran out today.
fn fleet_alerts(st: &mut State, at: &At, out: &mut Out) {
    let pct = st.settings.budget_alert_percent;
    let names: Vec<String> = st
        .budget_accounts(at.wall)
        .into_iter()
        .map(str::to_string)
        .collect();
    let names = names.iter().map(String::as_str);
    for text in st.book.budget_mut().fleet_alerts(names, pct, at.wall) {
        warn(out, text.clone());
        out.push(Action::BudgetAlert(text));
    }
}

/// A turn the child of `generation` on `slot` had begun was abandoned: its
/// page may go on generating for nobody, and the real child's next turn
/// would stop that one instead of sending its own prompt. No new request
/// goes to it; it is drained and started again (a stale child changes
/// nothing).
pub(super) fn abandoned(st: &State, slot: usize, generation: u64, out: &mut Out) {
    if st
        .slots
        .get(slot)
        .is_some_and(|s| s.generation == generation)
    {
        let why = "a turn it had begun was abandoned; its page may still be generating";
        rotate_out(
            slot,
            generation,
            StopReason::Recycled(why.into()),
            Then::Restart,
            out,
        );
    }
}

/// Model starvation, for a profile that now cools for `model`: does it
/// leave its slot (see `placement::leaves_slot`)?
fn model_leaves(st: &State, name: &str, model: &str, at: &At) -> bool {
    let now = at.wall;
    let spare = st
        .queue
        .iter()
        .any(|p| st.may_run(&p.name, &[], now) && st.book.serves(&p.name, model, now));
    let demand = st.book.demand(&at.asked, now);
    let spare_for_demand = st.queue.iter().any(|p| st.may_run(&p.name, &demand, now));
    placement::leaves_slot(
        st.book.eligible_for(name, &demand, now),
        spare_for_demand,
        at.waited_for.iter().any(|m| m == model),
        spare,
    )
}

/// Requests wait for `model`, which only cooling routes could serve: when
/// a queued profile that may run serves it, rotate out one ready slot
/// whose profile cools for it.
pub(super) fn starved(st: &mut State, model: &str, at: &At, out: &mut Out) {
    let now = at.wall;
    let demand = st.book.demand(&at.asked, now);
    let serves = |name: &str| st.book.serves(name, model, now);
    // Nobody can serve it (every budget spent, or every tier turns it
    // off): the dispatcher hears so and answers its waiters at once.
    if st.book.model_off_everywhere(model, now) || st.book.model_blocked(model, now).is_some() {
        out.push(Action::Save);
    }
    let spares: Vec<&str> = st
        .queue
        .iter()
        .filter(|p| st.may_run(&p.name, &demand, now) && serves(&p.name))
        .map(|p| p.name.as_str())
        .collect();
    // Slots already making way will take the first spares.
    let Some(spare) = spares.get(st.making_way.len()).map(|s| s.to_string()) else {
        return;
    };
    let target = st.slots.iter().enumerate().find(|(i, s)| {
        matches!(s.state, Phase::Ready { .. })
            && !st.making_way.contains(i)
            && s.name().is_some_and(|n| !serves(n))
    });
    if let Some((slot, s)) = target {
        log(out, format!("slot {slot}: requests wait for model {model}, which its profile cools for: rotating it out for {spare}"));
        rotate_out(slot, s.generation, StopReason::Exhausted, Then::Rotate, out);
        st.making_way.insert(slot);
    }
}

/// `profile`'s login expired: it is not started again until new content or
/// an operator. One warning the first time, naming the fix.
pub(super) fn login_needed(
    st: &mut State,
    profile: &str,
    why: &str,
    content: u64,
    at: &At,
    out: &mut Out,
) {
    if !st.book.login_needed(profile, why, content, at.wall) {
        return;
    }
    warn(out, format!("profile {profile} needs a new login ({why}): it is not started again until its file changes; renew the login and upload the profile, then reload (SIGHUP or `aistudioproxy ctl reload`), or `aistudioproxy ctl reset {profile}`"));
    event(
        out,
        Kind::NeedsLogin,
        None,
        Some(profile),
        format!("{why}: log in again and replace its auth file"),
    );
    out.push(Action::Save);
}

/// What the profiles' files say now (hydration, a reload): one that needed
/// a login and has new content may run again; one whose session cookies
/// all expired needs a login, before any start.
pub(super) fn content_seen(st: &mut State, facts: &[LoginFacts], at: &At, out: &mut Out) {
    let renewed: Vec<&str> = facts
        .iter()
        .filter(|f| st.book.content_seen(&f.profile, f.fingerprint))
        .map(|f| f.profile.as_str())
        .collect();
    for name in &renewed {
        log(
            out,
            format!("profile {name} has new content: its login is tried again"),
        );
    }
    for f in facts {
        if let Some(why) = &f.expired {
            login_needed(st, &f.profile, why, f.fingerprint, at, out);
        }
    }
    if !renewed.is_empty() {
        out.push(Action::Save);
        st.wake_all(out);
    }
}

/// A start of `profile` ended; it had become ready or not.
pub(super) fn started(st: &mut State, profile: &str, became_ready: bool, at: &At, out: &mut Out) {
    let v = st.book.started(profile, became_ready, at.wall);
    if let Verdict::Retire { until, .. } = v {
        let left = until.duration_since(at.wall).unwrap_or_default().as_secs();
        warn(out, format!("profile {profile} failed to become ready {} times in a row: it cools down for {left}s", book::START_FAILURES_TO_COOL));
        event(
            out,
            Kind::CooldownSet,
            None,
            Some(profile),
            format!("start_failures, {left}s"),
        );
    }
    if !became_ready {
        out.push(Action::Save);
    }
}

/// An operator's change to a profile's health; a disabled profile's slot
/// drains and rotates.
pub(super) fn admin(st: &mut State, op: AdminOp, at: &At, out: &mut Out) {
    let answer = match op {
        AdminOp::Disable(name) | AdminOp::Enable(name)
            if !st.book.entries().contains_key(&name) =>
        {
            AdminAnswer::UnknownProfile
        }
        AdminOp::Disable(name) => {
            st.book.set_disabled(&name, true);
            let slot = st.slot_of(&name);
            if let Some(slot) = slot {
                out.push(Action::Tell {
                    slot,
                    cmd: Cmd::Drain {
                        generation: None,
                        reason: StopReason::Operator(format!("profile {name} disabled")),
                        then: Then::Rotate,
                    },
                });
            }
            AdminAnswer::Done { slot }
        }
        AdminOp::Enable(name) => {
            st.book.set_disabled(&name, false);
            AdminAnswer::Done { slot: None }
        }
        AdminOp::Reset(name) => match st.book.reset(&name) {
            true => AdminAnswer::Done { slot: None },
            false => AdminAnswer::UnknownProfile,
        },
        AdminOp::ResetModel(name, _) if !st.book.entries().contains_key(&name) => {
            AdminAnswer::UnknownProfile
        }
        AdminOp::ResetModel(name, model) => match st.book.reset_model(&name, &model) {
            true => AdminAnswer::Done { slot: None },
            false => AdminAnswer::NotCooling,
        },
    };
    if let AdminAnswer::Done { .. } = answer {
        refresh_serves(st, at, out);
        out.push(Action::Save);
        st.wake_all(out);
    }
    out.push(Action::Reply(Reply::Admin(answer)));
}

/// Tell the dispatcher what every running slot's profile may serve.
pub(super) fn refresh_serves(st: &State, at: &At, out: &mut Out) {
    for (slot, s) in st.slots.iter().enumerate() {
        if s.name().is_some() {
            let child = ChildId {
                slot,
                generation: s.generation,
            };
            out.push(st.serves(child, at));
        }
    }
}

/// How many more leases the slots could use, and the profiles we could run
/// if we held them (queue order, then the slots' own).
pub(super) fn lease_demand(st: &State, at: &At, out: &mut Out) {
    let (more, candidates) = match &st.leases {
        Some(held) if !st.shutting_down => (
            st.slots.len().saturating_sub(held.len()),
            st.queue
                .iter()
                .chain(st.slots.iter().filter_map(|s| s.profile.as_ref()))
                .map(|p| p.name.clone())
                .filter(|n| {
                    !held.contains(n) && st.book.eligible(n, at.wall) && !st.removed.contains(n)
                })
                .collect(),
        ),
        _ => (0, Vec::new()),
    };
    out.push(Action::Reply(Reply::Wanted { more, candidates }));
}

/// The leaser took these leases: the slots may run them (when shutting
/// down, too late: they go straight back).
pub(super) fn lease_granted(st: &mut State, names: Vec<String>, out: &mut Out) {
    let shutting_down = st.shutting_down;
    let Some(held) = &mut st.leases else { return };
    for n in names {
        if shutting_down {
            out.push(Action::Release(Release {
                profile: n,
                cooling: None,
            }));
        } else {
            event(out, Kind::LeaseGained, None, Some(&n), "lease taken".into());
            held.insert(n);
        }
    }
    st.wake_all(out);
}

/// The lease of `name` is lost: it may not run, and a slot running it stops
/// its child at once (its route closes first).
pub(super) fn lease_lost(st: &mut State, name: &str, why: String, out: &mut Out) {
    event(out, Kind::LeaseLost, None, Some(name), why.clone());
    if let Some(held) = &mut st.leases {
        held.remove(name);
    }
    if let Some(slot) = st.slot_of(name) {
        let generation = st.slots[slot].generation;
        out.push(Action::Close(ChildId { slot, generation }));
        out.push(Action::Tell {
            slot,
            cmd: Cmd::LeaseLost { generation, why },
        });
    }
}
