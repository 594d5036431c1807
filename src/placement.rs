//! Which profile a slot takes, and when a profile cooling for some models
//! leaves its slot: the pool's placement decisions for per-model
//! cooldowns, pure, over plain questions the pool answers from its book and
//! queue (so they are table-tested here, apart from the pool's lock).
//!
//! - A slot takes the first queued profile that may run, serves every
//!   model requests wait for and cools for no model; else the first that
//!   may run and serves what requests wait for; else the first that may run
//!   (queue order is rotation order). A profile out of quota for some
//!   models is the weaker choice even when the demand is not known (after a
//!   restart, before any request).
//! - A profile that now cools for a model leaves its slot when it serves no
//!   model in demand any more, or when requests wait for that model and a
//!   queued profile that may run serves it. Otherwise it stays and serves
//!   the other models.

/// The index in `queue` of the profile a slot takes next; `serves(p, m)`:
/// p does not cool for model m; `fresh(p)`: p cools for no model.
pub fn next_in_queue<'a>(
    queue: impl IntoIterator<Item = &'a str> + Clone,
    may_run: impl Fn(&str) -> bool,
    serves: impl Fn(&str, &str) -> bool,
    fresh: impl Fn(&str) -> bool,
    waited_for: &[String],
) -> Option<usize> {
    let serves_all = |p: &str| waited_for.iter().all(|m| serves(p, m));
    let first = |pick: &dyn Fn(&str) -> bool| queue.clone().into_iter().position(pick);
    first(&|p| may_run(p) && serves_all(p) && fresh(p))
        .or_else(|| first(&|p| may_run(p) && serves_all(p)))
        .or_else(|| first(&|p| may_run(p)))
}

/// Whether a profile that now cools for a model leaves its slot.
pub fn leaves_slot(serves_demand: bool, model_waited_for: bool, a_spare_serves_it: bool) -> bool {
    !serves_demand || (model_waited_for && a_spare_serves_it)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_next_profile_serves_what_requests_wait_for() {
        // a cools for pro, b for nothing, c is disabled, d cools for flash.
        let may_run = |p: &str| p != "c";
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
                next_in_queue(q, may_run, serves, fresh, &w),
                *want,
                "{waiting:?}"
            );
        }
        let no_b = ["c", "d", "a"];
        let w = |m: &str| vec![m.to_string()];
        assert_eq!(
            next_in_queue(no_b, may_run, serves, fresh, &w("pro")),
            Some(1)
        );
        assert_eq!(
            next_in_queue(no_b, may_run, serves, fresh, &w("flash")),
            Some(2)
        );
        assert_eq!(next_in_queue(no_b, may_run, serves, fresh, &[]), Some(1));
        assert_eq!(
            next_in_queue(["a"], may_run, serves, fresh, &w("pro")),
            Some(0),
            "nobody serves pro: the first that may run"
        );
        assert_eq!(next_in_queue(["c"], may_run, serves, fresh, &[]), None);
    }

    #[test]
    fn a_profile_leaves_only_when_it_is_of_no_use_or_a_spare_serves_the_waiters() {
        let table = [
            // serves demand, model waited for, a spare serves it -> leaves
            (true, false, false, false),
            (true, false, true, false),
            (true, true, false, false),
            (true, true, true, true),
            (false, false, false, true),
            (false, true, true, true),
        ];
        for (d, w, s, want) in table {
            assert_eq!(leaves_slot(d, w, s), want, "{d} {w} {s}");
        }
    }
}
