//! The profile lease, pure: what a lease object says, and every decision
//! about one (may we take it, is ours still good, whom does a profile
//! prefer). No I/O, no threads, no clock of its own: every call is given
//! `now` (wall clock, shared with other replicas only through the lease
//! objects) so tests drive it directly. `leaser` does the S3 side.
//!
//! Timing, with `ttl` = `LEASE_TTL_S` and `margin` = [`Timing::margin`]
//! (the clock-skew allowance between replicas):
//! - a holder writes `expires = now + ttl` at every take and renewal, and
//!   renews every `ttl / 3`;
//! - a holder keeps its child only until `sent + ttl - margin - stop_grace`
//!   (`sent`: its own monotonic time when it sent the last write that
//!   succeeded), so its child is gone before the lease can expire anywhere;
//! - another replica treats a lease as expired only once its own clock
//!   passes `expires + margin`.
//!
//! With clocks apart by less than `margin`, a child is stopped before any
//! other replica can take its profile over.
//!
//! Budget counts travel with the lease ([`Served`]): the holder writes the
//! profile's served completions of the budget day at every renewal and at
//! release, and whoever takes the lease next goes on from them. A holder
//! that dies loses what it served since its last write that succeeded: a
//! renewal period (`ttl / 3`), or up to `keep_for` while S3 does not answer.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use crate::book::unix_ms;

/// The JSON of `<prefix>/leases/<profile>.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Doc {
    /// The replica id (`REPLICA_ID`) of the holder, or of the last one.
    pub holder: String,
    /// When the holder took it (unix ms); kept across renewals.
    pub taken_unix_ms: u64,
    /// Until when the holder may drive the profile (unix ms); a released
    /// lease has this at the release time.
    pub expires_unix_ms: u64,
    /// The profile cools down until then, whoever holds it next (an
    /// account found exhausted by one replica is not retried by another).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cooling_until_unix_ms: Option<u64>,
    /// Why it cools down (the book's reason), for operators reading it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cool_reason: Option<String>,
    /// The profile's served completions of a budget day, as its holders
    /// counted them (absent in documents of older replicas, which ignore it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub served: Option<Served>,
}

/// Completions a profile served in one budget day, per model.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Served {
    /// The budget day (days since 1970-01-01 in `BUDGET_TIMEZONE`).
    pub day: i64,
    /// Model (as clients name it) -> completions served.
    pub counts: BTreeMap<String, u64>,
}

/// The counts to write: the later day of the two, the larger count of
/// each model when both are of one day (both may have seen the same
/// answers, so they are never added).
pub fn merged(a: Option<&Served>, b: Option<&Served>) -> Option<Served> {
    match (a, b) {
        (None, x) | (x, None) => x.cloned(),
        (Some(a), Some(b)) if a.day != b.day => Some(if a.day > b.day { a } else { b }.clone()),
        (Some(a), Some(b)) => {
            let mut out = a.clone();
            for (m, n) in &b.counts {
                let c = out.counts.entry(m.clone()).or_default();
                *c = (*c).max(*n);
            }
            Some(out)
        }
    }
}

pub use crate::config::LeaseTiming as Timing;

/// What one replica sees when it looks at a profile's lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seen {
    /// No lease object: create it (`If-None-Match: *`).
    Free,
    /// An object that nobody holds now (released or expired past the
    /// margin): take it over by replacing exactly this version
    /// (`If-Match: etag`).
    Stale { etag: String },
    /// Someone (maybe an earlier run of ours) holds it until `until`.
    Held { holder: String, until: SystemTime },
    /// Nobody holds it but the profile cools down until `until`.
    Cooling { until: SystemTime },
    /// An object we cannot parse or without an ETag: left alone (an
    /// operator must look), never overwritten.
    Unreadable,
}

/// Classify a lease object read at `now` (`doc`: parsed, `etag`: its ETag).
pub fn look(doc: Option<&Doc>, etag: Option<&str>, now: SystemTime, timing: &Timing) -> Seen {
    let Some(doc) = doc else { return Seen::Free };
    let Some(etag) = etag else {
        return Seen::Unreadable;
    };
    let now_ms = unix_ms(now);
    let expires = doc.expires_unix_ms;
    let margin = timing.margin().as_millis() as u64;
    // A released lease (expires == taken, see `released`) is free at once;
    // any other is held until its expiry plus the margin on our clock.
    if now_ms <= expires.saturating_add(margin) && expires > doc.taken_unix_ms {
        return Seen::Held {
            holder: doc.holder.clone(),
            until: from_ms(expires),
        };
    }
    if let Some(c) = doc.cooling_until_unix_ms.filter(|&c| c > now_ms) {
        return Seen::Cooling { until: from_ms(c) };
    }
    Seen::Stale {
        etag: etag.to_string(),
    }
}

fn from_ms(ms: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_millis(ms)
}

/// The document a take writes: ours from `now`, keeping a cooldown that
/// the object carried (it has ended, or we would not take it) and its
/// served counts (until our first renewal writes ours over them).
pub fn taken(me: &str, now: SystemTime, timing: &Timing, before: Option<&Doc>) -> Doc {
    let now_ms = unix_ms(now);
    Doc {
        holder: me.to_string(),
        taken_unix_ms: now_ms,
        expires_unix_ms: now_ms + timing.ttl.as_millis() as u64,
        cooling_until_unix_ms: before.and_then(|d| d.cooling_until_unix_ms),
        cool_reason: before.and_then(|d| d.cool_reason.clone()),
        served: before.and_then(|d| d.served.clone()),
    }
}

/// The document a renewal writes over `ours`, with the profile's served
/// counts as we know them now (`served`, merged into the ones it had).
pub fn renewed(ours: &Doc, now: SystemTime, timing: &Timing, served: Option<&Served>) -> Doc {
    Doc {
        expires_unix_ms: unix_ms(now) + timing.ttl.as_millis() as u64,
        served: merged(ours.served.as_ref(), served),
        ..ours.clone()
    }
}

/// The document a release writes over `ours`: expired now (the taken time
/// is moved to match, so `look` sees it free at once, margin or not), with
/// the profile's cooldown and served counts for whoever comes next.
pub fn released(
    ours: &Doc,
    now: SystemTime,
    cooling: Option<(u64, String)>,
    served: Option<&Served>,
) -> Doc {
    let now_ms = unix_ms(now);
    let (until, reason) = match cooling {
        Some((u, r)) => (Some(u), Some(r)),
        None => (None, None),
    };
    Doc {
        holder: ours.holder.clone(),
        taken_unix_ms: now_ms,
        expires_unix_ms: now_ms,
        cooling_until_unix_ms: until,
        cool_reason: reason,
        served: merged(ours.served.as_ref(), served),
    }
}

/// A stable 64-bit hash (FNV-1a, then a splitmix64 finaliser): the same on
/// every replica and every build, unlike std's `DefaultHasher`.
fn weight(profile: &str, replica: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in profile
        .bytes()
        .chain(std::iter::once(0))
        .chain(replica.bytes())
    {
        h ^= b as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h = (h ^ (h >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h = (h ^ (h >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

/// The replica that rendezvous (highest-random-weight) hashing assigns
/// `profile` to among `replicas` (ties: the smaller id).
pub fn owner<'a>(profile: &str, replicas: &'a [String]) -> Option<&'a str> {
    replicas
        .iter()
        .max_by(|a, b| {
            weight(profile, a)
                .cmp(&weight(profile, b))
                .then_with(|| b.cmp(a))
        })
        .map(String::as_str)
}

/// `candidates` (in the caller's order) with the ones hashing assigns to
/// `me` first; the order within each part is kept.
pub fn preference(candidates: &[String], me: &str, replicas: &[String]) -> Vec<String> {
    let (mine, others): (Vec<&String>, Vec<&String>) = candidates
        .iter()
        .partition(|p| owner(p, replicas) == Some(me));
    mine.into_iter().chain(others).cloned().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t() -> Timing {
        Timing {
            ttl: Duration::from_secs(60),
            stop_grace: Duration::from_secs(10),
        }
    }

    fn at(ms: u64) -> SystemTime {
        from_ms(ms)
    }

    #[test]
    fn timing_follows_the_ttl() {
        let t = t();
        assert_eq!(t.renew_every(), Duration::from_secs(20));
        assert_eq!(t.margin(), Duration::from_secs(10));
        assert_eq!(t.keep_for(), Duration::from_secs(40));
        t.check().unwrap();
        let short = Timing {
            ttl: Duration::from_secs(6),
            stop_grace: Duration::from_secs(2),
        };
        short.check().unwrap();
        let bad = Timing {
            ttl: Duration::from_secs(20),
            stop_grace: Duration::from_secs(10),
        };
        assert!(bad.check().unwrap_err().contains("LEASE_TTL_S=20"));
    }

    #[test]
    fn a_lease_is_held_until_its_expiry_plus_the_margin() {
        let t = t();
        let doc = taken("a", at(1_000_000), &t, None);
        assert_eq!(doc.expires_unix_ms, 1_060_000);
        let e = Some("\"e1\"");
        assert_eq!(look(None, None, at(0), &t), Seen::Free);
        for now in [1_000_000, 1_060_000, 1_070_000] {
            assert!(
                matches!(look(Some(&doc), e, at(now), &t), Seen::Held { ref holder, .. } if holder == "a"),
                "{now}"
            );
        }
        assert_eq!(
            look(Some(&doc), e, at(1_070_001), &t),
            Seen::Stale {
                etag: "\"e1\"".into()
            }
        );
        assert_eq!(look(Some(&doc), None, at(0), &t), Seen::Unreadable);
    }

    #[test]
    fn a_released_lease_is_free_at_once_but_keeps_its_cooldown() {
        let t = t();
        let doc = taken("a", at(1_000_000), &t, None);
        let r = released(
            &renewed(&doc, at(1_020_000), &t, None),
            at(1_030_000),
            None,
            None,
        );
        assert_eq!(r.expires_unix_ms, 1_030_000);
        assert!(matches!(
            look(Some(&r), Some("x"), at(1_030_000), &t),
            Seen::Stale { .. }
        ));
        let cool = released(
            &doc,
            at(1_030_000),
            Some((2_000_000, "exhausted".into())),
            None,
        );
        assert_eq!(
            look(Some(&cool), Some("x"), at(1_031_000), &t),
            Seen::Cooling {
                until: at(2_000_000)
            }
        );
        assert!(matches!(
            look(Some(&cool), Some("x"), at(2_000_001), &t),
            Seen::Stale { .. }
        ));
        // A take keeps the (ended) cooldown for the record.
        let next = taken("b", at(2_000_001), &t, Some(&cool));
        assert_eq!(next.cooling_until_unix_ms, Some(2_000_000));
        assert_eq!(next.holder, "b");
    }

    #[test]
    fn a_renewal_moves_only_the_expiry() {
        let t = t();
        let doc = taken("a", at(1_000_000), &t, None);
        let r = renewed(&doc, at(1_020_000), &t, None);
        assert_eq!(r.taken_unix_ms, 1_000_000);
        assert_eq!(r.expires_unix_ms, 1_080_000);
        assert_eq!(r.holder, "a");
    }

    #[test]
    fn the_document_round_trips_and_tolerates_missing_fields() {
        let doc: Doc = serde_json::from_str(
            r#"{"holder":"pod-1","taken_unix_ms":1,"expires_unix_ms":2,"extra":true}"#,
        )
        .unwrap();
        assert_eq!(doc.cooling_until_unix_ms, None);
        let text = serde_json::to_string(&doc).unwrap();
        assert!(!text.contains("cooling"), "{text}");
    }

    fn served(day: i64, counts: &[(&str, u64)]) -> Served {
        Served {
            day,
            counts: counts.iter().map(|(m, n)| (m.to_string(), *n)).collect(),
        }
    }

    #[test]
    fn a_document_without_served_counts_parses_and_writes_none() {
        // What a replica before the counts wrote.
        let old: Doc = serde_json::from_str(
            r#"{"holder":"pod-1","taken_unix_ms":1,"expires_unix_ms":2,"cooling_until_unix_ms":5}"#,
        )
        .unwrap();
        assert_eq!(old.served, None);
        assert_eq!(old.cooling_until_unix_ms, Some(5));
        let text = serde_json::to_string(&taken("b", at(10), &t(), Some(&old))).unwrap();
        assert!(!text.contains("served"), "{text}");
        // Ours parse back whole, counts and all.
        let mut doc = taken("a", at(1_000_000), &t(), None);
        doc.served = Some(served(20_000, &[("gemini-2.5-pro", 3)]));
        let text = serde_json::to_string(&doc).unwrap();
        assert!(
            text.contains(r#""served":{"day":20000,"counts":{"gemini-2.5-pro":3}}"#),
            "{text}"
        );
        assert_eq!(serde_json::from_str::<Doc>(&text).unwrap(), doc);
    }

    #[test]
    fn served_counts_go_from_holder_to_holder() {
        let t = t();
        let mut before = taken("a", at(1_000_000), &t, None);
        before.served = Some(served(7, &[("pro", 2)]));
        // A take keeps the counts it found until our first renewal.
        let doc = taken("b", at(1_100_000), &t, Some(&before));
        assert_eq!(doc.served, before.served);
        // A renewal writes ours, the larger count per model of one day.
        let ours = served(7, &[("pro", 1), ("flash", 4)]);
        let r = renewed(&doc, at(1_120_000), &t, Some(&ours));
        assert_eq!(r.served, Some(served(7, &[("pro", 2), ("flash", 4)])));
        // Nothing new known: the counts stay.
        assert_eq!(renewed(&r, at(1_140_000), &t, None).served, r.served);
        // A new day's counts replace an old day's, never the other way.
        let next = served(8, &[("pro", 1)]);
        let r2 = renewed(&r, at(1_160_000), &t, Some(&next));
        assert_eq!(r2.served, Some(next.clone()));
        assert_eq!(
            renewed(&r2, at(1_180_000), &t, Some(&ours)).served,
            Some(next)
        );
        // A release carries them, with or without a cooldown.
        let ours = served(8, &[("pro", 3)]);
        let rel = released(&r2, at(1_190_000), Some((9, "x".into())), Some(&ours));
        assert_eq!(rel.served, Some(ours.clone()));
        assert_eq!(released(&r2, at(1_190_000), None, None).served, r2.served);
    }

    #[test]
    fn rendezvous_spreads_profiles_and_moves_few_when_a_replica_joins() {
        let profiles: Vec<String> = (0..70).map(|i| format!("acct{i:02}")).collect();
        let two: Vec<String> = vec!["pod-a".into(), "pod-b".into()];
        let three: Vec<String> = vec!["pod-a".into(), "pod-b".into(), "pod-c".into()];
        let count = |rs: &[String], who: &str| {
            profiles
                .iter()
                .filter(|p| owner(p, rs) == Some(who))
                .count()
        };
        for who in ["pod-a", "pod-b", "pod-c"] {
            let n = count(&three, who);
            assert!((12..=35).contains(&n), "{who} owns {n} of 70");
        }
        // Joining moves only profiles to the newcomer, none between the others.
        for p in &profiles {
            let before = owner(p, &two).unwrap();
            let after = owner(p, &three).unwrap();
            assert!(
                after == before || after == "pod-c",
                "{p}: {before} -> {after}"
            );
        }
        // The same answer on every replica, whatever the order of the set.
        let shuffled: Vec<String> = vec!["pod-c".into(), "pod-a".into(), "pod-b".into()];
        for p in &profiles {
            assert_eq!(owner(p, &three), owner(p, &shuffled));
        }
        assert_eq!(owner("x", &[]), None);
    }

    #[test]
    fn preference_puts_our_own_first_and_keeps_the_order() {
        let rs: Vec<String> = vec!["pod-a".into(), "pod-b".into()];
        let cands: Vec<String> = (0..10).map(|i| format!("p{i}")).collect();
        let pref = preference(&cands, "pod-a", &rs);
        assert_eq!(pref.len(), 10);
        let split = pref
            .iter()
            .position(|p| owner(p, &rs) != Some("pod-a"))
            .unwrap_or(10);
        assert!(pref[..split].iter().all(|p| owner(p, &rs) == Some("pod-a")));
        assert!(pref[split..].iter().all(|p| owner(p, &rs) == Some("pod-b")));
        let mut sorted = pref[..split].to_vec();
        sorted.sort();
        assert_eq!(sorted, pref[..split].to_vec());
    }
}
