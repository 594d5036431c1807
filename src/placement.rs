//! Which profile a slot takes, and when a profile cooling for some models
//! leaves its slot: the pool's placement decisions for per-model
//! cooldowns, pure, over plain questions the pool answers from its book and
//! queue (so they are table-tested here, apart from the pool's lock).
//!
//! - A slot takes the first queued profile that may run, serves every
//!   model requests wait for and cools for no model; else the first that
//!   may run and serves what requests wait for; else the first that may run
//!   for the models in demand; else the first that may run at all, cooling
//!   for every model asked lately (queue order is rotation order). A slot is
//!   never left empty while some profile can serve some model: the next
//!   request may ask for one it serves. A profile out of quota for some
//!   models is the weaker choice even when the demand is not known (after a
//!   restart, before any request).
//! - A profile that now cools for a model leaves its slot when it serves no
//!   model in demand any more and a queued profile that may run serves one,
//!   or when requests wait for that model and a queued profile that may run
//!   serves it. Otherwise it stays and serves the other models: nothing
//!   better could take its place.

/// The index in `queue` of the profile a slot takes next; `may_run(p)`: p
/// may run for the models in demand; `runs(p)`: p may run at all (for some
/// model); `serves(p, m)`: p does not cool for model m; `fresh(p)`: p cools
/// for no model.
pub fn next_in_queue<'a>(
    queue: impl IntoIterator<Item = &'a str> + Clone,
    may_run: impl Fn(&str) -> bool,
    runs: impl Fn(&str) -> bool,
    serves: impl Fn(&str, &str) -> bool,
    fresh: impl Fn(&str) -> bool,
    waited_for: &[String],
) -> Option<usize> {
    let serves_all = |p: &str| waited_for.iter().all(|m| serves(p, m));
    let first = |pick: &dyn Fn(&str) -> bool| queue.clone().into_iter().position(pick);
    first(&|p| may_run(p) && serves_all(p) && fresh(p))
        .or_else(|| first(&|p| may_run(p) && serves_all(p)))
        .or_else(|| first(&|p| may_run(p)))
        .or_else(|| first(&|p| runs(p)))
}

/// Whether a profile that now cools for a model leaves its slot:
/// `serves_demand`, it still serves a model in demand; `a_spare_serves_demand`,
/// a queued profile that may run does; `model_waited_for`, requests wait
/// for the model it cools for; `a_spare_serves_it`, a queued profile that
/// may run serves that model.
pub fn leaves_slot(
    serves_demand: bool,
    a_spare_serves_demand: bool,
    model_waited_for: bool,
    a_spare_serves_it: bool,
) -> bool {
    (!serves_demand && a_spare_serves_demand) || (model_waited_for && a_spare_serves_it)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_next_profile_serves_what_requests_wait_for() {
        // a cools for pro, b for nothing, c is disabled, d cools for flash.
        let may_run = |p: &str| p != "c";
        let runs = may_run;
        let serves = |p: &str, m: &str| !(p == "a" && m == "pro" || p == "d" && m == "flash");
        let fresh = |p: &str| p == "b" || p == "c";
        let q = ["c", "a", "b"];
        let table: &[(&[&str], Option<usize>)] = &[
            (&[], Some(2)),
            (&["flash"], Some(2)),
            (&["pro"], Some(2)),
            (&["pro", "flash"], Some(2)),
        ];
        for (waiting, want) in table {
            let w: Vec<String> = waiting.iter().map(|s| s.to_string()).collect();
            assert_eq!(
                next_in_queue(q, may_run, runs, serves, fresh, &w),
                *want,
                "{waiting:?}"
            );
        }
        let no_b = ["c", "d", "a"];
        let w = |m: &str| vec![m.to_string()];
        assert_eq!(
            next_in_queue(no_b, may_run, runs, serves, fresh, &w("pro")),
            Some(1)
        );
        assert_eq!(
            next_in_queue(no_b, may_run, runs, serves, fresh, &w("flash")),
            Some(2)
        );
        assert_eq!(
            next_in_queue(no_b, may_run, runs, serves, fresh, &[]),
            Some(1)
        );
        assert_eq!(
            next_in_queue(["a"], may_run, runs, serves, fresh, &w("pro")),
            Some(0),
            "nobody serves pro: the first that may run"
        );
        assert_eq!(
            next_in_queue(["c"], may_run, runs, serves, fresh, &[]),
            None
        );
    }

    #[test]
    fn a_slot_takes_a_profile_cooling_for_every_model_asked_rather_than_none() {
        // Only pro is asked for; a cools for pro (it still serves flash), c
        // is disabled, e cools as a whole.
        let may_run = |p: &str| p == "b";
        let runs = |p: &str| p == "a" || p == "b";
        let serves = |p: &str, m: &str| !(p == "a" && m == "pro");
        let fresh = |p: &str| p != "a";
        let pro = vec!["pro".to_string()];
        let table: &[(&[&str], Option<usize>)] = &[
            (&["c", "a", "b"], Some(2)),
            (&["c", "a"], Some(1)),
            (&["e", "c"], None),
            (&[], None),
        ];
        for (q, want) in table {
            assert_eq!(
                next_in_queue(q.iter().copied(), may_run, runs, serves, fresh, &pro),
                *want,
                "{q:?}"
            );
        }
    }

    #[test]
    fn a_profile_leaves_only_when_it_is_of_no_use_or_a_spare_serves_the_waiters() {
        let table = [
            // serves demand, a spare serves demand, model waited for, a
            // spare serves it -> leaves
            (true, true, false, false, false),
            (true, true, false, true, false),
            (true, true, true, false, false),
            (true, true, true, true, true),
            (false, true, false, false, true),
            (false, true, true, true, true),
            // Nothing better in the queue: it keeps its slot and serves
            // whatever other model comes.
            (false, false, false, false, false),
            (false, false, true, false, false),
        ];
        for (d, sd, w, s, want) in table {
            assert_eq!(leaves_slot(d, sd, w, s), want, "{d} {sd} {w} {s}");
        }
    }
}
