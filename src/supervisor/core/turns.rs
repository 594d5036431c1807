//! Keep-alive turns and long runs giving way: at each look of the
//! keep-alive clock the core gathers the facts, `keepalive::decide`
//! decides, and the drains it asks for go out as actions. Part of the pure
//! core, run on the supervisor thread (and by table tests): it must do no
//! I/O and read no clock.

use std::time::Duration;

use super::health::rotate_out;
use super::{Action, At, Out, State};
use crate::keepalive::{self, decide, Look, Turn};
use crate::slot::{State as Phase, StopReason};
use crate::supervisor::msg::{Reply, Then};

/// One look at `at`: stamp first sights, end a turn stuck making way
/// longer than `stuck`, start a due turn, rotate out a profile past its
/// maximal run while another waits. Answers when to look again.
pub(super) fn look(st: &mut State, at: &At, out: &mut Out) {
    let mut look = Look {
        next: decide::LOOK_MAX,
        ..Look::default()
    };
    if st.shutting_down {
        out.push(Action::Reply(Reply::Look(look.next)));
        return;
    }
    let now = at.wall;
    if st.book.stamp_first_seen(now) {
        out.push(Action::Save);
    }
    let stuck = st.settings.stuck;
    look.abandoned = st
        .turn
        .take_if(|t| !t.running() && at.mono.saturating_duration_since(t.asked) > stuck);
    let settings = st.settings.keepalive;
    let mut next = decide::LOOK_MAX;
    if let Some(every) = settings.every {
        next = due_turn(st, every, at, &mut look, out);
    }
    if let Some(max) = settings.max_runtime {
        let d = overstay(st, max, at, &mut look, out);
        next = next.min(d);
    }
    look.next = next;
    out.push(Action::Reply(Reply::Look(next)));
    out.push(Action::Look(look));
}

/// The facts of the queue for `decide`: which profiles could take a turn.
fn spares<'a>(st: &'a State, at: &At) -> Vec<decide::Spare<'a>> {
    st.queue
        .iter()
        .map(|p| {
            let idle = st.book.idle_since(&p.name);
            decide::Spare {
                name: &p.name,
                // A login refreshes whatever models it is out of quota for.
                may_run: st.may_run(&p.name, &[], at.wall) && !st.removed.contains(&p.name),
                idle_since: idle.map(|(t, _)| t),
                ran: idle.is_some_and(|(_, ran)| ran),
            }
        })
        .collect()
}

/// The facts of the slots for `decide`.
fn slots(st: &State, at: &At) -> Vec<decide::Slot> {
    st.slots
        .iter()
        .enumerate()
        .filter(|(_, s)| s.profile.is_some())
        .map(|(i, s)| decide::Slot {
            slot: i,
            ready: matches!(s.state, Phase::Ready { .. }),
            in_flight: at.in_flight.get(i).copied().unwrap_or(0),
            placed: s.placed,
        })
        .collect()
}

/// A keep-alive turn, when one is due: its slot drains to make way.
/// Answers when to look again.
fn due_turn(st: &mut State, every: Duration, at: &At, look: &mut Look, out: &mut Out) -> Duration {
    let now = at.wall;
    // The turn's own profile waits in the queue while its slot makes way:
    // it is not due again.
    let turn_of = st.turn.as_ref().map(|t| t.profile.clone());
    let decision = {
        let spares: Vec<decide::Spare> = spares(st, at)
            .into_iter()
            .filter(|s| Some(s.name) != turn_of.as_deref())
            .collect();
        let slots = slots(st, at);
        match decide::turn(now, every, &spares, &slots, at.waiting, turn_of.is_some()) {
            decide::Decision::NotDue(after) => return after,
            decide::Decision::Held(profile, why) => Err((profile.to_string(), why)),
            decide::Decision::Turn { profile, slot } => Ok((profile.to_string(), slot)),
        }
    };
    match decision {
        Err(held) => look.held = Some(held),
        Ok((profile, slot)) => {
            let s = &st.slots[slot];
            let idle = st.book.idle_since(&profile).map(|(t, _)| t);
            let turn = Turn::new(
                profile,
                slot,
                s.name().map(str::to_string),
                idle.and_then(|t| now.duration_since(t).ok()),
                at.mono,
            );
            let reason = StopReason::Turn(turn.making_way());
            rotate_out(slot, s.generation, reason, Then::KeepAlive, out);
            look.started = Some(turn.clone());
            st.turn = Some(turn);
        }
    }
    decide::LOOK_HELD
}

/// One overstay at a time: a profile past `max` makes way when another
/// waits. Answers when to look again.
fn overstay(st: &mut State, max: Duration, at: &At, look: &mut Look, out: &mut Out) -> Duration {
    let now = at.wall;
    if st.overstay.is_some() {
        return decide::LOOK_MAX;
    }
    let slots = slots(st, at);
    {
        let except = st.turn.as_ref().map(|t| t.slot);
        let found = decide::overstayed(now, max, &spares(st, at), &slots, except);
        if let Some(slot) = found {
            let s = &st.slots[slot];
            let name = s.name().unwrap_or("-");
            let ran = now.duration_since(s.placed).unwrap_or_default();
            let why = format!(
                "profile {name} has run {} s, PROFILE_MAX_RUNTIME_S={}, and others wait their turn: rotating it out",
                ran.as_secs(),
                max.as_secs()
            );
            rotate_out(
                slot,
                s.generation,
                StopReason::Turn(why.clone()),
                Then::Rotate,
                out,
            );
            look.overstayed = Some((slot, why));
            st.overstay = Some(slot);
        }
    }
    // A slot not ready yet reaches the limit no sooner than `max`.
    let d = decide::next_overstay(now, max, &slots).unwrap_or(max);
    d.max(decide::LOOK_HELD)
}

/// When slot `slot` runs a keep-alive turn: how long its ready child stays
/// before it is stopped (so its own start finishes).
pub(super) fn settle(st: &State, slot: usize) -> Option<Duration> {
    let t = st.turn.as_ref().filter(|t| t.slot == slot && t.running())?;
    (st.slots[slot].name()? == t.profile).then_some(keepalive::SETTLE)
}
