//! The core's decisions, one table row each: the row names the decision,
//! sets the scene with messages, sends one more, and says what must follow.
//! No thread, no clock: every instant is `t(s)`.

use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::{Duration, Instant, SystemTime};

use super::*;
use crate::book::{Answer, Limit};
use crate::keepalive::decide;
use crate::slot::StopReason;
use crate::supervisor::msg::Then;
use crate::supervisor::msg::{AdminAnswer, AdminOp, Next, Outcome, Pick};

fn s(n: u64) -> Duration {
    Duration::from_secs(n)
}

/// The fixed origin of every test instant.
fn origin() -> (SystemTime, Instant) {
    static O: OnceLock<(SystemTime, Instant)> = OnceLock::new();
    *O.get_or_init(|| (SystemTime::UNIX_EPOCH + s(1_700_000_000), Instant::now()))
}

/// The instant `secs` after the origin, with what the dispatcher counts.
fn t(secs: u64) -> At {
    let (w, m) = origin();
    At::new(w + s(secs), m + s(secs))
}

fn profiles(names: &[&str]) -> Vec<Profile> {
    names
        .iter()
        .map(|n| Profile {
            name: n.to_string(),
            path: PathBuf::from(format!("/x/{n}.json")),
        })
        .collect()
}

fn plan() -> PortPlan {
    PortPlan {
        base_api: 3100,
        base_stream: 3200,
        base_camoufox: 9222,
        step: 1,
    }
}

fn fleet_with(names: &[&str], size: usize, settings: Settings) -> State {
    let book = Book::new(
        names.iter().copied(),
        Default::default(),
        Default::default(),
    );
    State::new(profiles(names), size, plan(), book, settings, t(0).wall)
}

fn fleet(names: &[&str], size: usize) -> State {
    fleet_with(names, size, Settings::default())
}

fn leasing() -> Settings {
    Settings {
        leasing: true,
        ..Settings::default()
    }
}

fn keepalive(every: Option<u64>, max: Option<u64>) -> Settings {
    Settings {
        keepalive: keepalive::Settings {
            every: every.map(s),
            max_runtime: max.map(s),
        },
        stuck: s(60),
        leasing: false,
        budget_alert_percent: 20,
    }
}

fn spawned(pid: i32) -> Msg {
    Msg::Slot {
        slot: 0,
        ev: Event::Spawned {
            pid,
            deadline: t(30).mono,
        },
    }
}

fn on(slot: usize, ev: Event) -> Msg {
    Msg::Slot { slot, ev }
}

/// Slot `slot`'s child started and became ready.
fn make_ready(st: &mut State, slot: usize, at: &At) {
    let pid = 10 + slot as i32;
    let spawn = Event::Spawned {
        pid,
        deadline: at.mono,
    };
    handle(st, on(slot, spawn), at);
    handle(st, on(slot, Event::BecameReady), at);
}

/// Slot `slot`'s child stopped and is gone.
fn make_gone(st: &mut State, slot: usize, at: &At) {
    handle(st, on(slot, Event::Stop(StopReason::Shutdown)), at);
    handle(st, on(slot, Event::Gone), at);
}

fn reply(actions: &[Action]) -> Option<&Reply> {
    actions.iter().find_map(|a| match a {
        Action::Reply(r) => Some(r),
        _ => None,
    })
}

/// The name of the profile a `Next` answer runs, None for a wait.
fn ran(actions: &[Action]) -> Option<String> {
    match reply(actions) {
        Some(Reply::Next(Next::Run(p))) => Some(p.name.clone()),
        Some(Reply::Next(Next::Wait { .. })) => None,
        r => panic!("not a Next reply: {r:?}"),
    }
}

fn queue(st: &State) -> Vec<&str> {
    st.queue.iter().map(|p| p.name.as_str()).collect()
}

/// Does `actions` drain `slot` (its route first), going on with `then`?
fn drains(actions: &[Action], slot: usize, then: Then) -> bool {
    let routed = actions.iter().any(
        |a| matches!(a, Action::Route { slot: s, view: SlotView::Draining { .. } } if *s == slot),
    );
    let told = actions.iter().any(|a| {
        matches!(a, Action::Tell { slot: s, cmd: Cmd::Drain { then: t, .. } } if *s == slot && *t == then)
    });
    routed && told
}

fn next(slot: usize, pick: Pick) -> Msg {
    Msg::Next { slot, pick }
}

fn exhausted(model: Option<&str>) -> Msg {
    Msg::Outcome(Outcome {
        slot: 0,
        generation: 1,
        model: model.map(str::to_string),
        answer: Answer::Exhausted {
            retry_after: None,
            limit: Limit::Quota,
        },
    })
}

#[test]
fn which_moves_count_as_ran() {
    let ready = Phase::Ready { pid: 1 };
    let starting = Phase::Starting {
        pid: 1,
        deadline: t(0).mono,
    };
    let draining = Phase::Draining {
        pid: 1,
        reason: StopReason::Shutdown,
    };
    let stop = Event::Stop(StopReason::Shutdown);
    let rows: &[(&str, &Phase, &Event, bool)] = &[
        (
            "a child becoming ready ran",
            &starting,
            &Event::BecameReady,
            true,
        ),
        (
            "a ready child stopping saved its login",
            &ready,
            &stop,
            true,
        ),
        (
            "a draining child stopping saved its login",
            &draining,
            &stop,
            true,
        ),
        (
            "a child that never became ready did not run",
            &starting,
            &stop,
            false,
        ),
        (
            "a drain alone is no run",
            &ready,
            &Event::Drain(StopReason::Shutdown),
            false,
        ),
        (
            "a spawn is no run",
            &Phase::Idle,
            &spawned(1).slot_event(),
            false,
        ),
    ];
    for (what, from, ev, want) in rows {
        assert_eq!(counts_as_ran(from, ev), *want, "{what}");
    }
}

impl Msg {
    fn slot_event(&self) -> Event {
        match self {
            Msg::Slot { ev, .. } => ev.clone(),
            _ => unreachable!(),
        }
    }
}

#[test]
fn the_profile_state_precedence() {
    use ProfileState::*;
    // (disabled, needs_login, running, cooling)
    let rows = [
        (
            "disabled beats everything",
            (true, true, true, true),
            Disabled,
        ),
        (
            "a needed login beats running",
            (false, true, true, true),
            NeedsLogin,
        ),
        ("running beats cooling", (false, false, true, true), Running),
        ("cooling beats queued", (false, false, false, true), Cooling),
        ("otherwise queued", (false, false, false, false), Queued),
    ];
    for (what, (d, n, r, c), want) in rows {
        assert_eq!(ProfileState::of(d, n, r, c), want, "{what}");
    }
}

/// A rotation row: profiles and slots, the scene, the question, and the
/// profile started and the queue after.
struct Place {
    what: &'static str,
    names: &'static [&'static str],
    size: usize,
    settings: Settings,
    scene: Vec<Msg>,
    ask: Msg,
    runs: Option<&'static str>,
    queue: &'static [&'static str],
}

/// Check each placement row.
fn check_places(rows: Vec<Place>) {
    for r in rows {
        let mut st = fleet_with(r.names, r.size, r.settings);
        for m in r.scene {
            handle(&mut st, m, &t(1));
        }
        let out = handle(&mut st, r.ask, &t(2));
        assert_eq!(ran(&out).as_deref(), r.runs, "{}", r.what);
        assert_eq!(queue(&st), r.queue, "{}", r.what);
        st.check().unwrap_or_else(|e| panic!("{}: {e}", r.what));
    }
}

fn dis(n: &str) -> Msg {
    Msg::Admin(AdminOp::Disable(n.into()))
}

#[test]
fn placement_table_rotation() {
    check_places(vec![
        Place {
            what: "slots take the first profiles, the rest queue; a free slot keeps its own",
            names: &["a", "b", "c", "d"],
            size: 2,
            settings: Settings::default(),
            scene: vec![],
            ask: next(1, Pick::Current),
            runs: Some("b"),
            queue: &["c", "d"],
        },
        Place {
            what: "rotation is FIFO: the slot's profile goes to the back",
            names: &["a", "b", "c", "d"],
            size: 2,
            settings: Settings::default(),
            scene: vec![],
            ask: next(0, Pick::Rotate),
            runs: Some("c"),
            queue: &["d", "a"],
        },
        Place {
            what: "a lone profile rotates into its own slot again",
            names: &["a"],
            size: 2,
            settings: Settings::default(),
            scene: vec![],
            ask: next(0, Pick::Rotate),
            runs: Some("a"),
            queue: &[],
        },
        Place {
            what: "keep-own-profile: not when it may not run (disabled)",
            names: &["a", "b", "c"],
            size: 1,
            settings: Settings::default(),
            scene: vec![dis("a")],
            ask: next(0, Pick::Current),
            runs: Some("b"),
            queue: &["c", "a"],
        },
        Place {
            what: "rotation skips a queued profile that may not run",
            names: &["a", "b", "c"],
            size: 1,
            settings: Settings::default(),
            scene: vec![dis("b")],
            ask: next(0, Pick::Rotate),
            runs: Some("c"),
            queue: &["b", "a"],
        },
        Place {
            what: "no profile may run: the slot waits, every profile queued",
            names: &["a", "b"],
            size: 1,
            settings: Settings::default(),
            scene: vec![dis("a"), dis("b")],
            ask: next(0, Pick::Current),
            runs: None,
            queue: &["b", "a"],
        },
    ]);
}

#[test]
fn placement_table_reloads_and_leases() {
    check_places(vec![
        Place {
            what: "a profile removed by a reload leaves with its slot",
            names: &["a", "b", "c"],
            size: 1,
            settings: Settings::default(),
            scene: vec![Msg::Profiles(profiles(&["b", "c"]))],
            ask: next(0, Pick::Rotate),
            runs: Some("b"),
            queue: &["c"],
        },
        Place {
            what: "a removed profile is not kept by its slot either",
            names: &["a", "b", "c"],
            size: 1,
            settings: Settings::default(),
            scene: vec![Msg::Profiles(profiles(&["b", "c"]))],
            ask: next(0, Pick::Current),
            runs: Some("b"),
            queue: &["c"],
        },
        Place {
            what: "a reload's new profile joins the back of the queue",
            names: &["a", "b"],
            size: 1,
            settings: Settings::default(),
            scene: vec![Msg::Profiles(profiles(&["a", "b", "z"]))],
            ask: next(0, Pick::Rotate),
            runs: Some("b"),
            queue: &["z", "a"],
        },
        Place {
            what: "with leases, nothing held runs nothing",
            names: &["a", "b", "c"],
            size: 2,
            settings: leasing(),
            scene: vec![],
            ask: next(0, Pick::Current),
            runs: None,
            queue: &["c", "a"],
        },
        Place {
            what: "with leases, a granted profile runs",
            names: &["a", "b", "c"],
            size: 2,
            settings: leasing(),
            scene: vec![Msg::LeaseGranted(vec!["c".into()])],
            ask: next(0, Pick::Current),
            runs: Some("c"),
            queue: &["a"],
        },
    ]);
}

/// An outcome row: the models asked for and waited for, a scene, one
/// answer; then whether the slot drains, and whether the dispatcher hears
/// of the profile's cooldowns.
type OutcomeRow = (
    &'static str,
    &'static [&'static str],
    &'static [&'static str],
    Vec<Msg>,
    Msg,
    bool,
    bool,
);

/// Play one outcome row.
fn check_outcome(row: OutcomeRow) {
    let (what, asked, waited, scene, msg, want_drain, want_cooling) = row;
    let mut st = fleet(&["a", "b"], 1);
    let mut at = t(1);
    make_ready(&mut st, 0, &at);
    at.asked = asked.iter().map(|m| m.to_string()).collect();
    at.waited_for = waited.iter().map(|m| m.to_string()).collect();
    for m in scene {
        handle(&mut st, m, &at);
    }
    let out = handle(&mut st, msg, &at);
    assert_eq!(drains(&out, 0, Then::Rotate), want_drain, "{what}: {out:?}");
    let cooling = out.iter().any(|a| matches!(a, Action::Serves { .. }));
    assert_eq!(cooling, want_cooling, "{what}: {out:?}");
}

fn answer(generation: u64, answer: Answer) -> Msg {
    Msg::Outcome(Outcome {
        slot: 0,
        generation,
        model: None,
        answer,
    })
}

#[test]
fn outcome_table_whole_account() {
    let quota = Answer::Exhausted {
        retry_after: None,
        limit: Limit::Quota,
    };
    let (served, empty) = (answer(1, Answer::Served), answer(1, Answer::Empty));
    // (what, asked, waited for, scene, answer, drains, cooling told)
    let rows: Vec<OutcomeRow> = vec![
        (
            "a served answer changes nothing",
            &[],
            &[],
            vec![],
            served,
            false,
            false,
        ),
        (
            "one empty answer is not yet a verdict",
            &[],
            &[],
            vec![],
            empty.clone(),
            false,
            false,
        ),
        (
            "empty answers in a row retire the profile",
            &[],
            &[],
            vec![empty.clone()],
            empty,
            true,
            true,
        ),
        (
            "an exhausted account drains and rotates",
            &[],
            &[],
            vec![],
            exhausted(None),
            true,
            true,
        ),
        (
            "a stale generation's answer changes nothing",
            &[],
            &[],
            vec![],
            answer(7, quota),
            false,
            false,
        ),
    ];
    rows.into_iter().for_each(check_outcome);
}

#[test]
fn outcome_table_per_model() {
    let m = || exhausted(Some("m"));
    // (what, asked, waited for, scene, answer, drains, cooling told)
    let rows: Vec<OutcomeRow> = vec![
        (
            "out of quota for one model of two in demand: keeps serving",
            &["m", "n"],
            &[],
            vec![],
            m(),
            false,
            true,
        ),
        (
            "out of quota for the only model in demand: of no use, leaves",
            &["m"],
            &[],
            vec![],
            m(),
            true,
            true,
        ),
        (
            "out of quota for a model waited for, a spare serves it: leaves",
            &["m", "n"],
            &["m"],
            vec![],
            m(),
            true,
            true,
        ),
    ];
    rows.into_iter().for_each(check_outcome);
}

#[test]
fn model_starvation_table() {
    // (what, the slot's profile cools for m, a queued profile serves m, rotates out)
    let rows = [
        (
            "a ready slot cooling for the starved model makes way for a spare",
            true,
            true,
            true,
        ),
        ("no spare serves it: nothing moves", true, false, false),
        (
            "the slot serves it already: nothing moves",
            false,
            true,
            false,
        ),
    ];
    for (what, slot_cools, spare_serves, want) in rows {
        let mut st = fleet(&["a", "b"], 1);
        let mut at = t(1);
        at.asked = vec!["m".into(), "n".into()];
        make_ready(&mut st, 0, &at);
        if slot_cools {
            handle(&mut st, exhausted(Some("m")), &at);
        }
        if !spare_serves {
            let at = t(1);
            st.book.answer(
                "b",
                Answer::Exhausted {
                    retry_after: None,
                    limit: Limit::Quota,
                },
                Some("m"),
                at.wall,
            );
        }
        let out = handle(&mut st, Msg::Starved("m".into()), &at);
        assert_eq!(drains(&out, 0, Then::Rotate), want, "{what}: {out:?}");
    }
}

#[test]
fn slot_moves_table() {
    let mut st = fleet(&["a", "b"], 2);
    let at = t(1);
    // (what, message, allowed, generation after)
    let rows: Vec<(&str, Msg, bool, u64)> = vec![
        (
            "a refused move changes nothing",
            on(0, Event::BecameReady),
            false,
            0,
        ),
        ("a spawn starts generation 1", spawned(10), true, 1),
        ("ready after the spawn", on(0, Event::BecameReady), true, 1),
        ("a stop", on(0, Event::Stop(StopReason::Shutdown)), true, 1),
        ("gone", on(0, Event::Gone), true, 1),
        ("the next spawn starts generation 2", spawned(11), true, 2),
    ];
    for (what, msg, ok_want, gen_want) in rows {
        let out = handle(&mut st, msg, &at);
        match reply(&out) {
            Some(Reply::Moved { ok, generation, .. }) => {
                assert_eq!((*ok, *generation), (ok_want, gen_want), "{what}");
            }
            r => panic!("{what}: {r:?}"),
        }
        // The dispatcher hears of every allowed move, and of no other.
        let routed = out
            .iter()
            .any(|a| matches!(a, Action::Route { slot: 0, .. }));
        assert_eq!(routed, ok_want, "{what}");
    }
    assert_eq!(st.slots[0].restarts, 1, "a second spawn is a restart");
    let out = handle(&mut st, on(0, Event::BecameReady), &at);
    assert!(out.iter().any(|a| matches!(
        a,
        Action::Route {
            view: SlotView::Ready {
                generation: 2,
                port: 3100,
                ..
            },
            ..
        }
    )));
}

/// The leases given back by `actions`.
fn releases(actions: &[Action]) -> Vec<String> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Release(r) => Some(r.profile.clone()),
            _ => None,
        })
        .collect()
}

/// Leasing, `a`, `b`, `c` on two slots; `granted` held and slot 0 running
/// the first of them.
fn leased(granted: &[&str]) -> State {
    let mut st = fleet_with(&["a", "b", "c"], 2, leasing());
    let names = granted.iter().map(|n| n.to_string()).collect();
    handle(&mut st, Msg::LeaseGranted(names), &t(1));
    handle(&mut st, next(0, Pick::Current), &t(1));
    st
}

fn lease_rotates_out(st: &mut State) -> Vec<Action> {
    handle(st, next(0, Pick::Rotate), &t(2))
}

fn lease_lost_then_rotates(st: &mut State) -> Vec<Action> {
    make_ready(st, 0, &t(2));
    let lost = Msg::LeaseLost {
        profile: "c".into(),
        why: "x".into(),
    };
    let mut out = handle(st, lost, &t(3));
    make_gone(st, 0, &t(4));
    out.extend(handle(st, next(0, Pick::Rotate), &t(4)));
    out
}

fn lease_granted_late(st: &mut State) -> Vec<Action> {
    handle(st, Msg::BeginShutdown, &t(2));
    handle(st, Msg::LeaseGranted(vec!["a".into()]), &t(2))
}

fn lease_kept_by_the_slot(st: &mut State) -> Vec<Action> {
    make_ready(st, 0, &t(2));
    make_gone(st, 0, &t(3));
    handle(st, next(0, Pick::Current), &t(3))
}

type LeaseRow = (
    &'static str,
    &'static [&'static str],
    fn(&mut State) -> Vec<Action>,
    &'static [&'static str],
    &'static [&'static str],
);

#[test]
fn lease_give_back_table() {
    // (what, leases granted, what happens, leases given back, held after)
    let rows: [LeaseRow; 4] = [
        (
            "a held profile leaving its slot gives its lease back",
            &["c"],
            lease_rotates_out,
            &["c"],
            &[],
        ),
        (
            "a lost lease is not given back",
            &["c"],
            lease_lost_then_rotates,
            &[],
            &[],
        ),
        (
            "granted while shutting down: given back at once",
            &["c"],
            lease_granted_late,
            &["a"],
            &["c"],
        ),
        (
            "a profile that keeps its slot keeps its lease",
            &["c"],
            lease_kept_by_the_slot,
            &[],
            &["c"],
        ),
    ];
    for (what, granted, scene, back, held) in rows {
        let mut st = leased(granted);
        let out = scene(&mut st);
        assert_eq!(releases(&out), back.to_vec(), "{what}");
        let now: Vec<&str> = st
            .leases
            .as_ref()
            .unwrap()
            .iter()
            .map(String::as_str)
            .collect();
        assert_eq!(now, held.to_vec(), "{what}");
        st.check().unwrap_or_else(|e| panic!("{what}: {e}"));
    }
}

#[test]
fn a_lost_lease_closes_the_route_first_and_demand_counts_free_slots() {
    let mut st = leased(&["c"]);
    make_ready(&mut st, 0, &t(2));
    let lost = Msg::LeaseLost {
        profile: "c".into(),
        why: "x".into(),
    };
    let out = handle(&mut st, lost, &t(3));
    let child = ChildId {
        slot: 0,
        generation: 1,
    };
    assert_eq!(
        out.first().map(|a| matches!(a, Action::Event { .. })),
        Some(true)
    );
    assert!(out.contains(&Action::Close(child)), "the route closes");
    let stop = out.iter().any(|a| {
        matches!(
            a,
            Action::Tell {
                slot: 0,
                cmd: Cmd::LeaseLost { generation: 1, .. }
            }
        )
    });
    assert!(stop, "the child stops at once, no drain");
    let mut st = fleet_with(&["a", "b", "c"], 2, leasing());
    let out = handle(&mut st, Msg::LeaseDemand, &t(1));
    let wanted =
        matches!(reply(&out), Some(Reply::Wanted { more: 2, candidates }) if candidates.len() == 3);
    assert!(
        wanted,
        "two slots want leases, three profiles could fill them"
    );
}

#[test]
fn admin_table() {
    let rows: Vec<(&str, AdminOp, AdminAnswer)> = vec![
        (
            "disable a running profile: its slot drains",
            AdminOp::Disable("a".into()),
            AdminAnswer::Done { slot: Some(0) },
        ),
        (
            "disable a queued profile",
            AdminOp::Disable("b".into()),
            AdminAnswer::Done { slot: None },
        ),
        (
            "an unknown profile",
            AdminOp::Enable("zz".into()),
            AdminAnswer::UnknownProfile,
        ),
        (
            "reset a profile",
            AdminOp::Reset("a".into()),
            AdminAnswer::Done { slot: None },
        ),
        (
            "reset a model it does not cool for",
            AdminOp::ResetModel("a".into(), "m".into()),
            AdminAnswer::NotCooling,
        ),
    ];
    for (what, op, want) in rows {
        let mut st = fleet(&["a", "b"], 1);
        let out = handle(&mut st, Msg::Admin(op), &t(1));
        assert_eq!(reply(&out), Some(&Reply::Admin(want.clone())), "{what}");
        let drained = out.iter().any(|a| {
            matches!(
                a,
                Action::Tell {
                    cmd: Cmd::Drain { .. },
                    ..
                }
            )
        });
        assert_eq!(
            drained,
            want == AdminAnswer::Done { slot: Some(0) },
            "{what}"
        );
    }
}

fn look(st: &mut State, at: u64) -> (keepalive::Look, Vec<Action>) {
    let out = handle(st, Msg::Tick, &t(at));
    let look = out
        .iter()
        .find_map(|a| match a {
            Action::Look(l) => Some(l.clone()),
            _ => None,
        })
        .expect("a look");
    (look, out)
}

#[test]
fn a_keepalive_turn_displaces_one_profile_and_gives_its_slot_back() {
    let mut st = fleet_with(&["a", "b", "c", "d"], 1, keepalive(Some(100), None));
    make_ready(&mut st, 0, &t(0));
    // The first look sees b, c and d for the first time: none is due.
    let (first, _) = look(&mut st, 0);
    assert!(first.started.is_none() && first.held.is_none());
    assert_eq!(first.next, s(30));
    // d may not run: of b and c (seen together), b goes first.
    handle(&mut st, Msg::Admin(AdminOp::Disable("d".into())), &t(1));
    let (l, out) = look(&mut st, 100);
    let started = l.started.expect("b is due");
    assert_eq!(
        (started.profile.as_str(), started.slot),
        ("b", 0),
        "turns: the idlest first"
    );
    assert!(drains(&out, 0, Then::KeepAlive), "its slot makes way");
    let (l, _) = look(&mut st, 101);
    assert_eq!(
        l.held,
        Some(("c".to_string(), decide::Hold::TurnRunning)),
        "one turn at a time"
    );
    // The watcher drains a, stops it, and begins the turn.
    handle(
        &mut st,
        on(0, Event::Drain(StopReason::Turn("x".into()))),
        &t(102),
    );
    make_gone(&mut st, 0, &t(102));
    assert_eq!(
        ran(&handle(&mut st, next(0, Pick::Turn), &t(102))).as_deref(),
        Some("b")
    );
    assert_eq!(
        queue(&st),
        vec!["a", "c", "d"],
        "the displaced one waits at the front"
    );
    make_ready(&mut st, 0, &t(103));
    assert_eq!(turns::settle(&st, 0), Some(keepalive::SETTLE));
    assert!(st.book.idle_since("b").unwrap().1, "b ran");
    // b's turn is over: it stops and the slot goes back to a.
    make_gone(&mut st, 0, &t(106));
    let out = handle(&mut st, next(0, Pick::Rotate), &t(106));
    assert_eq!(
        ran(&out).as_deref(),
        Some("a"),
        "the end of a turn gives the slot back"
    );
    assert!(out.iter().any(|a| matches!(a, Action::TurnEnded(_))));
    assert_eq!(queue(&st), vec!["c", "d", "b"]);
    assert!(st.turn.is_none());
    // Next, c (a is not ready yet: no quiet slot).
    let (l, _) = look(&mut st, 107);
    assert_eq!(l.held, Some(("c".to_string(), decide::Hold::NoQuietSlot)));
    st.check().unwrap();
}

#[test]
fn a_turn_whose_profile_can_no_longer_run_is_void_and_the_slot_goes_on() {
    let mut st = fleet_with(&["a", "b"], 1, keepalive(Some(10), None));
    make_ready(&mut st, 0, &t(0));
    look(&mut st, 0);
    assert!(look(&mut st, 10).0.started.is_some());
    handle(
        &mut st,
        Msg::LoginNeeded {
            profile: "b".into(),
            why: "test".into(),
            content: 1,
        },
        &t(11),
    );
    make_gone(&mut st, 0, &t(11));
    assert_eq!(
        ran(&handle(&mut st, next(0, Pick::Turn), &t(12))).as_deref(),
        Some("a")
    );
    assert!(st.turn.is_none());
    st.check().unwrap();
}

#[test]
fn a_turn_stuck_making_way_is_dropped() {
    let mut st = fleet_with(&["a", "b"], 1, keepalive(Some(10), None));
    make_ready(&mut st, 0, &t(0));
    look(&mut st, 0);
    assert!(look(&mut st, 10).0.started.is_some());
    assert!(look(&mut st, 30).0.abandoned.is_none(), "within the bound");
    let (l, _) = look(&mut st, 71);
    assert!(l.abandoned.is_some(), "past the bound: dropped");
    assert!(l.started.is_some(), "and asked for again");
}

#[test]
fn a_long_run_makes_way_only_when_another_waits_and_one_at_a_time() {
    let mut st = fleet_with(&["a", "b", "c"], 2, keepalive(None, Some(100)));
    make_ready(&mut st, 0, &t(0));
    make_ready(&mut st, 1, &t(1));
    assert!(look(&mut st, 50).0.overstayed.is_none(), "not yet");
    let (l, out) = look(&mut st, 101);
    let (slot, why) = l.overstayed.expect("c waits");
    assert_eq!(slot, 0);
    assert!(why.contains("PROFILE_MAX_RUNTIME_S=100"), "{why}");
    assert!(drains(&out, 0, Then::Rotate));
    assert!(
        look(&mut st, 102).0.overstayed.is_none(),
        "one overstay at a time"
    );
    make_gone(&mut st, 0, &t(103));
    assert_eq!(
        ran(&handle(&mut st, next(0, Pick::Rotate), &t(103))).as_deref(),
        Some("c")
    );
    assert!(st.overstay.is_none(), "the overstay ends with its rotation");
    // Alone, a profile overstays for nobody.
    let mut solo = fleet_with(&["a"], 1, keepalive(None, Some(100)));
    make_ready(&mut solo, 0, &t(0));
    assert!(look(&mut solo, 500).0.overstayed.is_none(), "nobody waits");
}

mod budget;

#[test]
fn one_spare_moves_one_slot_however_often_its_model_starves() {
    let mut st = fleet(&["a", "b", "c"], 2);
    let mut at = t(1);
    at.asked = vec!["m".into(), "n".into()];
    make_ready(&mut st, 0, &at);
    make_ready(&mut st, 1, &at);
    for slot in 0..2 {
        let cool = Msg::Outcome(Outcome {
            slot,
            generation: 1,
            model: Some("m".into()),
            answer: Answer::Exhausted {
                retry_after: None,
                limit: Limit::Quota,
            },
        });
        handle(&mut st, cool, &at);
    }
    let first = handle(&mut st, Msg::Starved("m".into()), &at);
    let second = handle(&mut st, Msg::Starved("m".into()), &at);
    let moved = |out: &[Action]| (0..2).filter(|s| drains(out, *s, Then::Rotate)).count();
    assert_eq!(moved(&first), 1, "{first:?}");
    assert_eq!(moved(&second), 0, "c is spoken for: {second:?}");
    // The slot that made way takes c; nobody else serves m: nothing moves.
    let slot = (0..2).find(|s| drains(&first, *s, Then::Rotate)).unwrap();
    let out = handle(&mut st, next(slot, Pick::Rotate), &at);
    assert_eq!(ran(&out).as_deref(), Some("c"));
    assert!(st.making_way.is_empty());
    let third = handle(&mut st, Msg::Starved("m".into()), &at);
    assert_eq!(moved(&third), 0, "{third:?}");
}
