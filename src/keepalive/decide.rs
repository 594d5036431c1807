//! The keep-alive and max-runtime decisions, pure: given the time, the
//! slots and the profiles waiting in the queue, which profile gets a
//! keep-alive turn on which slot, and which slot's profile has overstayed.
//! No clock, no lock, no I/O: the supervisor's core gathers the facts and
//! acts on the answer; tests drive it with tables.

use std::time::{Duration, SystemTime};

/// The longest the keep-alive thread sleeps between looks: profiles come
/// and go with reloads, and cooldowns end, without telling it.
pub const LOOK_MAX: Duration = Duration::from_secs(30);
/// How soon it looks again when a due turn is held back.
pub const LOOK_HELD: Duration = Duration::from_secs(1);

/// A profile waiting in the rotation queue.
#[derive(Debug, Clone)]
pub struct Spare<'a> {
    pub name: &'a str,
    /// It may start now: not cooling, disabled or `needs_login`, not
    /// removed by a reload, and (with leases) leased by us.
    pub may_run: bool,
    /// Its last run, else when the book first saw it (None: not yet seen).
    pub idle_since: Option<SystemTime>,
    /// Whether it ever ran (`idle_since` is a run, not a first sight).
    pub ran: bool,
}

/// A slot, as these decisions see it.
#[derive(Debug, Clone)]
pub struct Slot {
    pub slot: usize,
    /// Its child is ready (only a ready slot makes way or is rotated out).
    pub ready: bool,
    pub in_flight: usize,
    /// When its current profile was placed in it.
    pub placed: SystemTime,
}

/// Whether a keep-alive turn starts now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision<'a> {
    /// No profile is due; look again after this.
    NotDue(Duration),
    /// `profile` is due but waits (`Hold` says why); look again soon.
    Held(&'a str, Hold),
    /// Drain `slot` and give `profile` its turn there.
    Turn { profile: &'a str, slot: usize },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hold {
    /// One turn at a time per fleet.
    TurnRunning,
    /// Requests wait for a child: capacity goes to them first.
    RequestsWaiting,
    /// Every slot is busy serving (or not ready): a turn takes a quiet one.
    NoQuietSlot,
}

impl std::fmt::Display for Hold {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Hold::TurnRunning => "another keep-alive turn runs",
            Hold::RequestsWaiting => "requests wait for a child",
            Hold::NoQuietSlot => "no ready slot is free of requests",
        })
    }
}

/// The keep-alive decision for profiles idle `every` or longer: the one
/// idle longest (then by name) gets a turn, on the ready slot with nothing
/// in flight whose profile was placed earliest (then the lowest slot), but
/// never while a turn runs or requests wait.
pub fn turn<'a>(
    now: SystemTime,
    every: Duration,
    spares: &[Spare<'a>],
    slots: &[Slot],
    waiting: usize,
    turn_running: bool,
) -> Decision<'a> {
    let idle = |s: &Spare| {
        s.idle_since
            .map(|t| now.duration_since(t).unwrap_or_default())
    };
    let due = spares
        .iter()
        .filter(|s| s.may_run && idle(s).is_some_and(|d| d >= every))
        .min_by_key(|s| (s.idle_since, s.name));
    let Some(due) = due else {
        let soonest = spares
            .iter()
            .filter(|s| s.may_run)
            .filter_map(|s| idle(s).map(|d| every.saturating_sub(d)))
            .min()
            .unwrap_or(LOOK_MAX);
        return Decision::NotDue(soonest.clamp(LOOK_HELD, LOOK_MAX));
    };
    if turn_running {
        return Decision::Held(due.name, Hold::TurnRunning);
    }
    if waiting > 0 {
        return Decision::Held(due.name, Hold::RequestsWaiting);
    }
    match slots
        .iter()
        .filter(|s| s.ready && s.in_flight == 0)
        .min_by_key(|s| (s.placed, s.slot))
    {
        Some(s) => Decision::Turn {
            profile: due.name,
            slot: s.slot,
        },
        None => Decision::Held(due.name, Hold::NoQuietSlot),
    }
}

/// `PROFILE_MAX_RUNTIME_S`: the ready slot whose profile has held it
/// `max` or longer (the earliest placed first) while a profile that may
/// run waits its turn: one that never ran, or stopped before this one was
/// placed (so two long runners are not swapped back and forth). None
/// while nobody waits. `except`: the slot of a keep-alive turn.
pub fn overstayed(
    now: SystemTime,
    max: Duration,
    spares: &[Spare],
    slots: &[Slot],
    except: Option<usize>,
) -> Option<usize> {
    slots
        .iter()
        .filter(|s| s.ready && Some(s.slot) != except)
        .filter(|s| now.duration_since(s.placed).unwrap_or_default() >= max)
        .filter(|s| {
            spares
                .iter()
                .any(|p| p.may_run && (!p.ran || p.idle_since.is_some_and(|t| t <= s.placed)))
        })
        .min_by_key(|s| (s.placed, s.slot))
        .map(|s| s.slot)
}

/// When the earliest ready slot reaches `max`: the next look for
/// `overstayed` (None: no ready slot).
pub fn next_overstay(now: SystemTime, max: Duration, slots: &[Slot]) -> Option<Duration> {
    slots
        .iter()
        .filter(|s| s.ready)
        .map(|s| max.saturating_sub(now.duration_since(s.placed).unwrap_or_default()))
        .min()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::UNIX_EPOCH;

    fn at(s: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_000_000 + s)
    }

    fn spare(name: &str, may_run: bool, idle_since: Option<u64>, ran: bool) -> Spare<'_> {
        Spare {
            name,
            may_run,
            idle_since: idle_since.map(at),
            ran,
        }
    }

    fn slot(slot: usize, ready: bool, in_flight: usize, placed: u64) -> Slot {
        Slot {
            slot,
            ready,
            in_flight,
            placed: at(placed),
        }
    }

    const EVERY: Duration = Duration::from_secs(100);

    /// (case, spares, slots, requests waiting, a turn runs, now) -> decision
    type TurnCase<'a> = (
        &'a str,
        Vec<Spare<'a>>,
        Vec<Slot>,
        usize,
        bool,
        u64,
        Decision<'a>,
    );
    /// (case, spares, slots, except, now) -> slot to rotate out
    type OverstayCase<'a> = (
        &'a str,
        Vec<Spare<'a>>,
        Vec<Slot>,
        Option<usize>,
        u64,
        Option<usize>,
    );

    #[test]
    fn turn_table() {
        use Decision::*;
        let quiet = [slot(0, true, 0, 0)];
        let secs = Duration::from_secs;
        let table: Vec<TurnCase> = vec![
            (
                "no spares",
                vec![],
                quiet.to_vec(),
                0,
                false,
                500,
                NotDue(LOOK_MAX),
            ),
            (
                "idle less than the interval: look when it is due",
                vec![spare("b", true, Some(420), true)],
                quiet.to_vec(),
                0,
                false,
                500,
                NotDue(secs(20)),
            ),
            (
                "due long after: look again within LOOK_MAX",
                vec![spare("b", true, Some(450), true)],
                quiet.to_vec(),
                0,
                false,
                500,
                NotDue(LOOK_MAX),
            ),
            (
                "exactly due",
                vec![spare("b", true, Some(400), true)],
                quiet.to_vec(),
                0,
                false,
                500,
                Turn {
                    profile: "b",
                    slot: 0,
                },
            ),
            (
                "a first sight counts like a run",
                vec![spare("b", true, Some(300), false)],
                quiet.to_vec(),
                0,
                false,
                500,
                Turn {
                    profile: "b",
                    slot: 0,
                },
            ),
            (
                "not yet seen: never due",
                vec![spare("b", true, None, false)],
                quiet.to_vec(),
                0,
                false,
                500,
                NotDue(LOOK_MAX),
            ),
            (
                "cooling, disabled, needs_login or unleased: never",
                vec![spare("b", false, Some(0), true)],
                quiet.to_vec(),
                0,
                false,
                500,
                NotDue(LOOK_MAX),
            ),
            (
                "the one idle longest first, then by name",
                vec![
                    spare("c", true, Some(200), true),
                    spare("b", true, Some(300), true),
                    spare("a", true, Some(200), false),
                ],
                quiet.to_vec(),
                0,
                false,
                500,
                Turn {
                    profile: "a",
                    slot: 0,
                },
            ),
            (
                "one turn at a time",
                vec![spare("b", true, Some(0), true)],
                quiet.to_vec(),
                0,
                true,
                500,
                Held("b", Hold::TurnRunning),
            ),
            (
                "never while requests wait",
                vec![spare("b", true, Some(0), true)],
                quiet.to_vec(),
                3,
                false,
                500,
                Held("b", Hold::RequestsWaiting),
            ),
            (
                "every slot busy or not ready",
                vec![spare("b", true, Some(0), true)],
                vec![slot(0, true, 1, 0), slot(1, false, 0, 0)],
                0,
                false,
                500,
                Held("b", Hold::NoQuietSlot),
            ),
            (
                "the quiet slot placed earliest, then the lowest",
                vec![spare("b", true, Some(0), true)],
                vec![
                    slot(0, true, 2, 0),
                    slot(1, true, 0, 50),
                    slot(2, true, 0, 10),
                    slot(3, true, 0, 10),
                ],
                0,
                false,
                500,
                Turn {
                    profile: "b",
                    slot: 2,
                },
            ),
            (
                "the next look is never sooner than a second",
                vec![
                    spare("b", true, Some(400), true),
                    spare("c", false, Some(0), true),
                ],
                quiet.to_vec(),
                0,
                false,
                499,
                NotDue(LOOK_HELD),
            ),
        ];
        for (case, spares, slots, waiting, running, now, want) in table {
            let got = turn(at(now), EVERY, &spares, &slots, waiting, running);
            assert_eq!(got, want, "{case}");
        }
    }

    #[test]
    fn overstayed_table() {
        let max = Duration::from_secs(100);
        let table: Vec<OverstayCase> = vec![
            (
                "alone: nobody waits",
                vec![],
                vec![slot(0, true, 0, 0)],
                None,
                500,
                None,
            ),
            (
                "under the limit",
                vec![spare("b", true, Some(0), false)],
                vec![slot(0, true, 0, 401)],
                None,
                500,
                None,
            ),
            (
                "at the limit, a never-run profile waits",
                vec![spare("b", true, Some(450), false)],
                vec![slot(0, true, 3, 400)],
                None,
                500,
                Some(0),
            ),
            (
                "the waiting one cannot run",
                vec![spare("b", false, Some(0), true)],
                vec![slot(0, true, 0, 0)],
                None,
                500,
                None,
            ),
            (
                "the waiting one ran after this one was placed: no swap back",
                vec![spare("b", true, Some(300), true)],
                vec![slot(0, true, 0, 200)],
                None,
                500,
                None,
            ),
            (
                "it stopped before: its turn",
                vec![spare("b", true, Some(100), true)],
                vec![slot(0, true, 0, 200)],
                None,
                500,
                Some(0),
            ),
            (
                "the earliest placed ready slot, not a keep-alive turn's",
                vec![spare("b", true, Some(0), false)],
                vec![
                    slot(0, true, 0, 10),
                    slot(1, false, 0, 0),
                    slot(2, true, 0, 20),
                    slot(3, true, 0, 5),
                ],
                Some(3),
                500,
                Some(0),
            ),
        ];
        for (case, spares, slots, except, now, want) in table {
            assert_eq!(
                overstayed(at(now), max, &spares, &slots, except),
                want,
                "{case}"
            );
        }
        let slots = [slot(0, true, 0, 450), slot(1, false, 0, 0)];
        assert_eq!(
            next_overstay(at(500), max, &slots),
            Some(Duration::from_secs(50))
        );
        assert_eq!(next_overstay(at(500), max, &slots[1..]), None);
    }
}
