//! Placement: which profile a free slot starts (its own, the next of the
//! queue, or a keep-alive turn's), and what a reload's new set of profiles
//! changes. Part of the pure core, run on the supervisor thread (and by
//! table tests): it must do no I/O and read no clock.

use super::{event, log, warn, Action, At, Out, State};
use crate::events::Kind;
use crate::hydrate::Profile;
use crate::placement;
use crate::slot::StopReason;
use crate::supervisor::msg::{Cmd, Next, Pick, ProfileChanges, Reply, Then};

/// A free slot asks which profile to start.
pub(super) fn next(st: &mut State, slot: usize, pick: Pick, at: &At, out: &mut Out) {
    if slot >= st.slots.len() {
        let next = Next::Wait {
            until: None,
            leasing: st.leases.is_some(),
        };
        out.push(Action::Reply(Reply::Next(next)));
        return;
    }
    let leaving = st.slots[slot].name().map(str::to_string);
    let chosen = match pick {
        Pick::Current => current_of(st, slot, at, out),
        Pick::Rotate => take_next(st, slot, at, out),
        Pick::Turn => begin_turn(st, slot, at, out),
    };
    if pick != Pick::Current {
        let to = chosen.as_ref().map(|p| p.name.as_str());
        let text = format!(
            "{} -> {}",
            leaving.as_deref().unwrap_or("-"),
            to.unwrap_or("-")
        );
        event(out, Kind::Rotation, Some(slot), to, text);
        if let Err(e) = st.check() {
            warn(out, format!("slot {slot}: profile invariant broken: {e}"));
        }
    }
    let next = match chosen {
        Some(p) => Next::Run(p),
        None => Next::Wait {
            until: next_eligible_in(st, at),
            leasing: st.leases.is_some(),
        },
    };
    out.push(Action::Reply(Reply::Next(next)));
}

/// How long until some profile this fleet holds may run again (a cooldown
/// ends); None when nothing is cooling (all disabled, or none).
fn next_eligible_in(st: &State, at: &At) -> Option<std::time::Duration> {
    let now = at.wall;
    let demand = st.book.demand(&at.asked, now);
    let names = st
        .slots
        .iter()
        .filter_map(|s| s.profile.as_ref())
        .chain(st.queue.iter())
        .map(|p| p.name.as_str());
    st.book
        .next_eligible_at(names, &demand, now)
        .map(|t| t.duration_since(now).unwrap_or_default())
}

/// Keep-own-profile: the slot's own profile if it may run at `now` for the
/// models in demand (and is out of quota for none while a queued one is,
/// see `placement`), else `take_next`.
fn current_of(st: &mut State, slot: usize, at: &At, out: &mut Out) -> Option<Profile> {
    let now = at.wall;
    let demand = st.book.demand(&at.asked, now);
    if let Some(p) = &st.slots[slot].profile {
        let fresh = |name: &str| st.book.fresh(name, now);
        let keep = fresh(&p.name)
            || !st
                .queue
                .iter()
                .any(|q| st.may_run(&q.name, &demand, now) && fresh(&q.name));
        if keep && st.may_run(&p.name, &demand, now) && !st.removed.contains(&p.name) {
            return Some(p.clone());
        }
    }
    take_next(st, slot, at, out)
}

/// A profile a reload removed leaves the fleet with its slot: forgotten,
/// not queued. True when it did. (The one place this is decided.)
fn leaves_with_slot(st: &mut State, name: &str) -> bool {
    let Some(i) = st.removed.iter().position(|n| n == name) else {
        return false;
    };
    st.removed.remove(i);
    st.all.retain(|n| n != name);
    st.book.forget(name);
    true
}

/// Rotation: put the slot's profile (if any) at the back of the queue and
/// give the slot the first queued profile that may run for the models in
/// demand, preferring one that serves what requests wait for (see
/// `placement`); the others keep their order. The profile of a keep-alive
/// turn leaving its slot ends the turn; the profile it displaced waits at
/// the front.
fn take_next(st: &mut State, slot: usize, at: &At, out: &mut Out) -> Option<Profile> {
    let now = at.wall;
    if st.overstay == Some(slot) {
        st.overstay = None;
    }
    st.making_way.remove(&slot);
    let leaving = st.slots[slot].name().map(str::to_string);
    let mut ended = None;
    if let Some(t) = st.turn.take() {
        // A turn still making way here is dropped too: the slot moved on
        // by itself (its child ended), and the next look asks again.
        let ours = t.slot == slot && (!t.running() || leaving.as_deref() == Some(&t.profile));
        if ours {
            ended = Some(t);
        } else {
            st.turn = Some(t);
        }
    }
    if let Some(p) = st.slots[slot].profile.take() {
        st.release(&p.name, at, out);
        if !leaves_with_slot(st, &p.name) {
            st.queue.push_back(p);
        }
    }
    let at_ = {
        let st = &*st;
        let demand = st.book.demand(&at.asked, now);
        placement::next_in_queue(
            st.queue.iter().map(|p| p.name.as_str()),
            |name| st.may_run(name, &demand, now),
            |name| st.may_run(name, &[], now),
            |name, model| st.book.serves(name, model, now),
            |name| st.book.fresh(name, now),
            &at.waited_for,
        )
    };
    let next = at_.and_then(|i| st.queue.remove(i));
    st.slots[slot].profile = next.clone();
    st.slots[slot].placed = now;
    // The profile a finished turn displaced kept its lease to come back;
    // if it did not (it cools now, say), the lease goes.
    let displaced = ended.as_ref().and_then(|t| t.displaced.clone());
    if let Some(d) = displaced.filter(|d| next.as_ref().is_none_or(|n| n.name != *d)) {
        if st.queue.iter().any(|p| p.name == d) {
            st.release(&d, at, out);
        }
    }
    if let Some(t) = ended {
        out.push(Action::TurnEnded(t));
    }
    next
}

/// The slot drained for a keep-alive turn (`Then::KeepAlive`): its profile
/// waits at the front of the queue (keeping its lease, to come back) and
/// the turn's profile takes the slot, in one step. When the turn is void
/// (its profile may no longer run, or took another slot), the slot goes on
/// as before.
fn begin_turn(st: &mut State, slot: usize, at: &At, out: &mut Out) -> Option<Profile> {
    let now = at.wall;
    let ours = st
        .turn
        .as_ref()
        .filter(|t| t.slot == slot && !t.running())
        .map(|t| t.profile.clone());
    let own = st.slots[slot].name().map(str::to_string);
    let found = ours.as_ref().and_then(|k| {
        st.queue
            .iter()
            .position(|p| p.name == *k && st.may_run(k, &[], now))
    });
    match (ours, found) {
        (Some(k), _) if own.as_deref() == Some(k.as_str()) => {
            // A rotation already brought it here: this start is the turn.
            if let Some(t) = st.turn.as_mut() {
                t.begin(None, at.mono);
                out.push(Action::TurnBegan(t.clone(), k));
            }
            st.slots[slot].profile.clone()
        }
        (Some(_), Some(i)) => {
            let k = st.queue.remove(i);
            let mut displaced = None;
            if let Some(p) = st.slots[slot].profile.take() {
                if st.removed.contains(&p.name) {
                    st.release(&p.name, at, out);
                    leaves_with_slot(st, &p.name);
                } else {
                    displaced = Some(p.name.clone());
                    st.queue.push_front(p);
                }
            }
            st.slots[slot].profile = k.clone();
            st.slots[slot].placed = now;
            if let (Some(t), Some(k)) = (st.turn.as_mut(), &k) {
                t.begin(displaced, at.mono);
                out.push(Action::TurnBegan(t.clone(), k.name.clone()));
            }
            k
        }
        (ours, _) => {
            if let Some(t) = ours.and(st.turn.take()) {
                log(
                    out,
                    format!(
                        "slot {slot}: keep-alive turn for {} dropped: it may not run now (or runs elsewhere)",
                        t.profile
                    ),
                );
            }
            current_of(st, slot, at, out)
        }
    }
}

/// Adopt a new hydrated set (a reload): new profiles join the back of the
/// queue, removed ones leave it, and a removed one that holds a slot stays
/// placed until that slot rotates; its slot is told to drain. Profiles in
/// both keep their place (their new content is used at their next start).
pub(super) fn apply_profiles(st: &mut State, fresh: Vec<Profile>, out: &mut Out) {
    let mut changes = ProfileChanges::default();
    let names: Vec<String> = fresh.iter().map(|p| p.name.clone()).collect();
    for p in fresh {
        if !st.all.contains(&p.name) {
            changes.added.push(p.name.clone());
            st.book.ensure(&p.name);
            st.all.push(p.name.clone());
            st.queue.push_back(p);
        } else if let Some(i) = st.removed.iter().position(|n| *n == p.name) {
            // Removed by an earlier reload and back before its slot rotated.
            st.removed.remove(i);
        }
    }
    let gone: Vec<String> = st
        .all
        .iter()
        .filter(|n| !names.contains(n) && !st.removed.contains(n))
        .cloned()
        .collect();
    for name in gone {
        changes.removed.push(name.clone());
        st.queue.retain(|p| p.name != name);
        match st.slot_of(&name) {
            Some(slot) => {
                st.removed.push(name);
                changes.draining.push(slot);
            }
            None => {
                st.all.retain(|n| *n != name);
                st.book.forget(&name);
            }
        }
    }
    st.all.sort();
    for &slot in &changes.draining {
        out.push(Action::Tell {
            slot,
            cmd: Cmd::Drain {
                generation: None,
                reason: StopReason::Operator("profile removed by a reload".into()),
                then: Then::Rotate,
            },
        });
    }
    if !changes.added.is_empty() {
        st.wake_all(out);
    }
    out.push(Action::Reply(Reply::Changes(changes)));
}
