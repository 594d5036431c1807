//! Civil (proleptic Gregorian) dates and UTC times from Unix time, without
//! a time-zone database: what `ctl` prints and what the dialects stamp on
//! their answers; and the wall clock in Unix milliseconds ([`now_ms`]),
//! which the ledgers and events stamp their records with. Pure arithmetic
//! otherwise.

/// The wall clock, in ms since the epoch (0 before it).
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The (year, month, day) of `days` since 1970-01-01 (H. Hinnant's
/// days-to-civil algorithm; any day, before or after the epoch).
pub fn date(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(m <= 2), m as u32, d as u32)
}

/// `YYYY-MM-DD<sep>HH:MM:SSZ` for `secs` since the epoch, in UTC.
pub fn utc(secs: i64, sep: char) -> String {
    let (y, m, d) = date(secs.div_euclid(86_400));
    let rem = secs.rem_euclid(86_400);
    format!(
        "{y:04}-{m:02}-{d:02}{sep}{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_days() {
        assert_eq!(date(0), (1970, 1, 1));
        assert_eq!(date(-1), (1969, 12, 31));
        assert_eq!(date(11_016), (2000, 2, 29));
        assert_eq!(date(20_429), (2025, 12, 7));
        assert_eq!(utc(1_700_000_000, 'T'), "2023-11-14T22:13:20Z");
        assert_eq!(utc(1_700_000_000, ' '), "2023-11-14 22:13:20Z");
    }
}
