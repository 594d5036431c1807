use super::*;

/// Unix time of a UTC civil time.
fn utc(y: i64, m: u32, d: u32, h: i64) -> i64 {
    days_from_civil(y, m, d) * 86_400 + h * 3600
}

fn la() -> Zone {
    Zone::find("America/Los_Angeles", std::path::Path::new("/nonexistent")).unwrap()
}

#[test]
fn civil_days_round_trip() {
    for days in [-800_000, -1, 0, 11_016, 20_429, 60_000] {
        let (y, m, d) = crate::civil::date(days);
        assert_eq!(days_from_civil(y, m, d), days);
    }
}

#[test]
fn los_angeles_days_over_the_dst_changes() {
    let z = la();
    // (a time inside the day, the day's first second, the next day's).
    let table = [
        // An ordinary winter day: 24 hours, midnight at 08:00 UTC.
        (
            utc(2026, 1, 15, 20),
            utc(2026, 1, 15, 8),
            utc(2026, 1, 16, 8),
        ),
        // 2026-03-08, daylight time starts at 02:00: a 23-hour day.
        (utc(2026, 3, 8, 12), utc(2026, 3, 8, 8), utc(2026, 3, 9, 7)),
        // A summer day: midnight at 07:00 UTC.
        (utc(2026, 7, 4, 7), utc(2026, 7, 4, 7), utc(2026, 7, 5, 7)),
        // 2026-11-01, daylight time ends at 02:00: a 25-hour day.
        (
            utc(2026, 11, 1, 9),
            utc(2026, 11, 1, 7),
            utc(2026, 11, 2, 8),
        ),
        // The same in 2025 (March 9, November 2).
        (utc(2025, 3, 9, 9), utc(2025, 3, 9, 8), utc(2025, 3, 10, 7)),
        (
            utc(2025, 11, 2, 9),
            utc(2025, 11, 2, 7),
            utc(2025, 11, 3, 8),
        ),
    ];
    for (t, start, next) in table {
        let day = z.day_of(t);
        assert_eq!(z.day_of(start), day, "first second of the day of {t}");
        assert_eq!(z.day_of(start - 1), day - 1, "the second before {start}");
        assert_eq!(z.next_day_start(t), next, "next midnight after {t}");
        assert_eq!(z.next_day_start(start - 1), start);
    }
    assert_eq!(
        utc(2026, 3, 9, 7) - utc(2026, 3, 8, 8),
        23 * 3600,
        "the spring day is 23 hours"
    );
    assert_eq!(z.day_of(utc(2026, 3, 8, 12)), days_from_civil(2026, 3, 8));
    // One hour before and after the spring change (10:00 UTC).
    assert_eq!(z.offset_at(utc(2026, 3, 8, 10) - 1), -8 * 3600);
    assert_eq!(z.offset_at(utc(2026, 3, 8, 10)), -7 * 3600);
    assert_eq!(z.offset_at(utc(2026, 11, 1, 9) - 1), -7 * 3600);
    assert_eq!(z.offset_at(utc(2026, 11, 1, 9)), -8 * 3600);
}

#[test]
fn southern_zones_and_odd_offsets() {
    let syd = Zone::find("Australia/Sydney", std::path::Path::new("/nonexistent")).unwrap();
    // Daylight time in January, standard in July.
    assert_eq!(syd.offset_at(utc(2026, 1, 10, 0)), 11 * 3600);
    assert_eq!(syd.offset_at(utc(2026, 7, 10, 0)), 10 * 3600);
    // 2026-04-05 03:00 AEDT ends daylight time: a 25-hour day.
    let day = syd.day_of(utc(2026, 4, 5, 0));
    let start = syd.next_day_start(utc(2026, 4, 4, 0));
    let next = syd.next_day_start(start);
    assert_eq!((syd.day_of(start), next - start), (day, 25 * 3600));
    let india = Zone::find("IST-5:30", std::path::Path::new("/nonexistent")).unwrap();
    assert_eq!(india.offset_at(0), 5 * 3600 + 1800);
    assert_eq!(india.next_day_start(0), 86_400 - 5 * 3600 - 1800);
    let utc0 = Zone::find("UTC", std::path::Path::new("/nonexistent")).unwrap();
    assert_eq!(utc0.next_day_start(10), 86_400);
}

#[test]
fn posix_strings_parse_or_are_refused() {
    let nowhere = std::path::Path::new("/nonexistent");
    for good in [
        "PST8PDT,M3.2.0,M11.1.0",
        "UTC0",
        "<+08>-8",
        "EST5EDT",
        "CET-1CEST,M3.5.0,M10.5.0/3",
        "XXX3YYY,J60/1,300/-1",
    ] {
        assert!(Zone::find(good, nowhere).is_ok(), "{good}");
    }
    for bad in [
        "",
        "Mars/Olympus",
        "PST",
        "PST8PDT,M13.1.0,M11.1.0",
        "PST8PDT,M3.2.0",
        "8",
    ] {
        let e = Zone::find(bad, nowhere).unwrap_err().to_string();
        assert!(
            e.contains("POSIX TZ string") && !e.contains('\n'),
            "{bad}: {e}"
        );
    }
    // Explicit rules equal the built-in name.
    let posix = Zone::find("PST8PDT,M3.2.0,M11.1.0", nowhere).unwrap();
    for t in [utc(2026, 3, 8, 9), utc(2026, 3, 8, 11), utc(2026, 11, 1, 8)] {
        assert_eq!(posix.offset_at(t), la().offset_at(t));
    }
}

#[test]
fn zone_files_are_read_by_their_footer() {
    let d = std::env::temp_dir().join(format!("aisp-zone-{}", std::process::id()));
    std::fs::create_dir_all(d.join("Test")).unwrap();
    let mut file = b"TZif2".to_vec();
    file.resize(60, 0);
    file.extend_from_slice(b"\nJST-9\n");
    std::fs::write(d.join("Test/Zone"), &file).unwrap();
    let z = Zone::find("Test/Zone", &d).unwrap();
    assert_eq!((z.rule.as_str(), z.offset_at(0)), ("JST-9", 9 * 3600));
    // Version 1 files have no footer: the built-in table answers.
    file[4] = 0;
    std::fs::write(d.join("America_x"), &file).unwrap();
    assert!(Zone::find("America_x", &d).is_err());
    assert!(Zone::find("../etc/passwd", &d).is_err());
    std::fs::remove_dir_all(&d).unwrap();
    // The container's own database, when it has one, agrees with the table.
    if std::path::Path::new(ZONEINFO)
        .join("America/Los_Angeles")
        .exists()
    {
        let sys = Zone::named("America/Los_Angeles").unwrap();
        assert_eq!(sys.rule, "PST8PDT,M3.2.0,M11.1.0");
    }
}
