use super::*;
use crate::budget::zone::days_from_civil;

/// ms of a UTC civil time.
fn at(y: i64, m: u32, d: u32, h: i64) -> i64 {
    (days_from_civil(y, m, d) * 86_400 + h * 3600) * 1000
}

fn limits(s: &str) -> Arc<Limits> {
    Arc::new(Limits::split(s).unwrap().1)
}

#[test]
fn the_minute_window_slides() {
    let mut t = Today::default();
    let l = limits("rpm=2");
    let t0 = at(2026, 7, 4, 12);
    assert!(t.admit("a", &l, 80, t0).is_ok());
    assert!(t.admit("a", &l, 80, t0 + 10_000).is_ok());
    let r = t.admit("a", &l, 80, t0 + 20_500).unwrap_err();
    // Counted per whole second: the first leaves the window 60 s after.
    assert_eq!((r.over, r.limit, r.retry_after_s), (Over::Rate, 2, 40));
    // Another key is not touched.
    assert!(t.admit("b", &l, 80, t0 + 20_500).is_ok());
    // The first one leaves the window at t0 + 60 s.
    assert!(t.admit("a", &l, 80, t0 + 60_000).is_ok());
    assert_eq!(t.last_minute("a", t0 + 60_000), 2);
    assert_eq!(t.keys["a"].requests, 3, "refusals are not counted");
}

#[test]
fn daily_limits_reset_at_the_zone_midnight() {
    let mut t = Today::default();
    let l = limits("rpd=2 tpd=100");
    // 2026-03-08 is a 23-hour day in Los Angeles: 08:00 UTC to 07:00 UTC.
    let morning = at(2026, 3, 8, 9);
    t.admit("a", &l, 80, morning).unwrap();
    t.admit("a", &l, 80, morning).unwrap();
    let r = t.admit("a", &l, 80, at(2026, 3, 9, 6)).unwrap_err();
    assert_eq!((r.over, r.retry_after_s), (Over::Daily, 3600));
    assert_eq!(t.date, "2026-03-08");
    // 07:00 UTC the next day is midnight PDT: a new day.
    t.admit("a", &l, 80, at(2026, 3, 9, 7)).unwrap();
    assert_eq!((t.date.as_str(), t.keys["a"].requests), ("2026-03-09", 1));
    // Tokens: over once reached.
    t.tokens("p", "m", Some("a"), 100, 80, at(2026, 3, 9, 8));
    let r = t.admit("a", &l, 80, at(2026, 3, 9, 8)).unwrap_err();
    assert_eq!(r.over, Over::Tokens);
    assert_eq!(t.profiles["p"]["m"].tokens, 100);
}

#[test]
fn alerts_go_once_per_key_limit_and_day() {
    let mut t = Today::default();
    let l = limits("rpd=5 tpd=1000");
    let now = at(2026, 7, 4, 12);
    let mut sent = vec![];
    for _ in 0..5 {
        sent.extend(t.admit("a", &l, 80, now).unwrap());
    }
    assert_eq!(sent.len(), 2, "{sent:?}");
    assert_eq!((sent[0].used, sent[0].reached), (4, false));
    assert_eq!((sent[1].used, sent[1].reached), (5, true));
    assert!(sent[0].text().contains("80%") && sent[1].text().contains("reached"));
    // Tokens jumping past the limit at once: only "reached".
    let a = t.tokens("p", "m", Some("a"), 5000, 80, now);
    assert_eq!(a.len(), 1);
    assert!(a[0].reached && a[0].limit_name == "tpd");
    assert!(t.tokens("p", "m", Some("a"), 1, 80, now).is_empty());
    // The next day they may come again.
    let tomorrow = at(2026, 7, 5, 12);
    let mut again = vec![];
    for _ in 0..4 {
        again.extend(t.admit("a", &l, 80, tomorrow).unwrap());
    }
    assert_eq!(again.len(), 1);
}

#[test]
fn answers_count_per_profile_and_model() {
    let mut t = Today::default();
    let now = at(2026, 7, 4, 12);
    t.answered("p1", "m", true, now);
    t.answered("p1", "m", false, now);
    t.answered("p2", "m", true, now);
    assert_eq!(
        t.profiles["p1"]["m"],
        ModelDay {
            answers: 2,
            ok: 1,
            tokens: 0
        }
    );
    let saved = serde_json::to_string(&t).unwrap();
    let back: Today = serde_json::from_str(&saved).unwrap();
    assert_eq!(back.profiles, t.profiles);
    assert_eq!(back.date, "2026-07-04");
}

#[test]
fn saved_counts_of_another_day_are_dropped_at_load() {
    let mut t = Today::default();
    let l = limits("rpd=5");
    t.admit("a", &l, 80, at(2026, 7, 4, 12)).unwrap();
    // Saved under another zone: the same day, a wrong end, is fixed.
    t.ends_unix += 3600;
    t.recheck(at(2026, 7, 4, 13));
    assert_eq!(
        (t.keys["a"].requests, t.ends_unix),
        (1, at(2026, 7, 5, 7) / 1000)
    );
    // The clock moved back a day: those counts are not today's.
    t.recheck(at(2026, 7, 3, 13));
    assert!(t.keys.is_empty());
    assert_eq!(t.date, "2026-07-03");
}

#[test]
fn served_counts_learnt_from_a_lease_raise_todays_and_go_out_again() {
    let mut t = Today::default();
    let noon = at(2026, 7, 4, 19); // 12:00 in Los Angeles
    t.answered("p", "pro", true, noon);
    t.answered("p", "pro", false, noon);
    let day = t.day;
    let counts: BTreeMap<String, u64> = [("pro".to_string(), 3), ("flash".to_string(), 2)].into();
    assert!(t.learn(day, "p", &counts, noon));
    assert_eq!(
        (t.profiles["p"]["pro"].ok, t.profiles["p"]["pro"].answers),
        (3, 3)
    );
    // Never lowered, never added.
    t.learn(day, "p", &[("pro".to_string(), 1)].into(), noon);
    assert_eq!(t.profiles["p"]["pro"].ok, 3);
    // Another day's counts are ignored.
    assert!(!t.learn(day - 1, "q", &counts, noon));
    assert!(!t.profiles.contains_key("q"));
    assert_eq!(t.served("p", noon), Some((day, counts)));
    assert_eq!(t.served("q", noon), None);
    // Once the day has ended, none (the roll comes with the next answer).
    assert_eq!(t.served("p", at(2026, 7, 5, 8)), None);
}
