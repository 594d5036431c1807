//! Time zones without a time-zone database: a zone is a POSIX TZ rule
//! (`PST8PDT,M3.2.0,M11.1.0`: standard name and offset, daylight name and
//! offset, and when daylight time starts and ends each year). An IANA name
//! (`America/Los_Angeles`) is read from `/usr/share/zoneinfo` when the
//! container has it (the POSIX footer of a TZif v2+ file, which governs
//! every time after the file's last listed transition: all of today's),
//! else from a small built-in table of common zones; a POSIX TZ string is
//! accepted as it is. Pure, apart from reading the zone file once at start.

use std::fmt;

/// Where IANA zone files are looked for.
pub const ZONEINFO: &str = "/usr/share/zoneinfo";

/// Common zones and their rules, for a container without zoneinfo (the
/// production image is `FROM scratch`).
const BUILT_IN: &[(&str, &str)] = &[
    ("UTC", "UTC0"),
    ("Etc/UTC", "UTC0"),
    ("GMT", "GMT0"),
    ("America/Los_Angeles", "PST8PDT,M3.2.0,M11.1.0"),
    ("America/Denver", "MST7MDT,M3.2.0,M11.1.0"),
    ("America/Phoenix", "MST7"),
    ("America/Chicago", "CST6CDT,M3.2.0,M11.1.0"),
    ("America/New_York", "EST5EDT,M3.2.0,M11.1.0"),
    ("America/Sao_Paulo", "<-03>3"),
    ("Europe/London", "GMT0BST,M3.5.0/1,M10.5.0"),
    ("Europe/Dublin", "IST-1GMT0,M10.5.0,M3.5.0/1"),
    ("Europe/Berlin", "CET-1CEST,M3.5.0,M10.5.0/3"),
    ("Europe/Paris", "CET-1CEST,M3.5.0,M10.5.0/3"),
    ("Europe/Amsterdam", "CET-1CEST,M3.5.0,M10.5.0/3"),
    ("Europe/Moscow", "MSK-3"),
    ("Asia/Kolkata", "IST-5:30"),
    ("Asia/Shanghai", "CST-8"),
    ("Asia/Singapore", "<+08>-8"),
    ("Asia/Tokyo", "JST-9"),
    ("Australia/Sydney", "AEST-10AEDT,M10.1.0,M4.1.0/3"),
    ("Pacific/Auckland", "NZST-12NZDT,M9.5.0,M4.1.0/3"),
];

/// A zone that cannot be used, with what to do about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ZoneError(pub String);

impl fmt::Display for ZoneError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A day of the year on which a change happens (POSIX `Mm.w.d`, `Jn`, `n`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DayRule {
    /// Month 1-12, week 1-5 (5: the last), weekday 0 (Sunday) to 6.
    Month { m: u32, w: u32, d: u32 },
    /// Day 1-365, February 29 never counted.
    Julian1(u32),
    /// Day 0-365, February 29 counted in leap years.
    Julian0(u32),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Dst {
    /// Seconds east of UTC while daylight time is in force.
    offset: i64,
    start: (DayRule, i64),
    end: (DayRule, i64),
}

/// A zone's rule: its standard offset and, maybe, its daylight time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Zone {
    /// What the operator named, for messages.
    pub name: String,
    /// The POSIX rule in force.
    pub rule: String,
    /// Seconds east of UTC in standard time.
    std: i64,
    dst: Option<Dst>,
}

impl Zone {
    /// Coordinated Universal Time.
    pub fn utc() -> Zone {
        Zone {
            name: "UTC".into(),
            rule: "UTC0".into(),
            std: 0,
            dst: None,
        }
    }

    /// The zone `name` names: an IANA name (zone file, else the built-in
    /// table) or a POSIX TZ string.
    pub fn named(name: &str) -> Result<Zone, ZoneError> {
        Zone::find(name, std::path::Path::new(ZONEINFO))
    }

    /// As [`Zone::named`], with zone files read under `dir`.
    pub fn find(name: &str, dir: &std::path::Path) -> Result<Zone, ZoneError> {
        let name = name.trim();
        let rule = iana_name(name)
            .then(|| std::fs::read(dir.join(name)).ok().and_then(|b| footer(&b)))
            .flatten()
            .or_else(|| {
                BUILT_IN
                    .iter()
                    .find(|(n, _)| n.eq_ignore_ascii_case(name))
                    .map(|(_, r)| r.to_string())
            });
        let from_name = rule.is_some();
        let rule = rule.unwrap_or_else(|| name.to_string());
        match parse(&rule) {
            Some((std, dst)) => Ok(Zone {
                name: name.to_string(),
                rule,
                std,
                dst,
            }),
            None if from_name => Err(ZoneError(format!(
                "a zone with a rule this program reads ({name} has {rule}); set a POSIX TZ string such as PST8PDT,M3.2.0,M11.1.0"
            ))),
            None => Err(ZoneError(format!(
                "a known zone: an IANA name such as America/Los_Angeles or UTC (read from {ZONEINFO}, else a built-in table of common zones) or a POSIX TZ string such as PST8PDT,M3.2.0,M11.1.0"
            ))),
        }
    }

    /// Seconds east of UTC at Unix time `t`.
    pub fn offset_at(&self, t: i64) -> i64 {
        let Some(dst) = self.dst else {
            return self.std;
        };
        let year = crate::civil::date((t + self.std).div_euclid(86_400)).0;
        // Change times are local: the start in standard time, the end in
        // daylight time.
        let start = change_day(dst.start.0, year) * 86_400 + dst.start.1 - self.std;
        let end = change_day(dst.end.0, year) * 86_400 + dst.end.1 - dst.offset;
        let in_dst = if start < end {
            start <= t && t < end
        } else {
            !(end <= t && t < start)
        };
        if in_dst {
            dst.offset
        } else {
            self.std
        }
    }

    /// The local day `t` falls in, as days since 1970-01-01.
    pub fn day_of(&self, t: i64) -> i64 {
        (t + self.offset_at(t)).div_euclid(86_400)
    }

    /// The first Unix time after `t` that falls in a later local day (the
    /// next midnight, or the change that skips it).
    pub fn next_day_start(&self, t: i64) -> i64 {
        let d = self.day_of(t);
        // A day is 22 to 26 hours long anywhere; search that span.
        let (mut lo, mut hi) = (t, t + 2 * 86_400);
        while hi - lo > 1 {
            let mid = lo + (hi - lo) / 2;
            if self.day_of(mid) > d {
                hi = mid;
            } else {
                lo = mid;
            }
        }
        hi
    }
}

/// A plain IANA-looking name, safe to join under the zone directory.
fn iana_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && !name.starts_with('/')
        && !name.contains("..")
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '/' | '_' | '-' | '+'))
}

/// The POSIX TZ footer of a TZif v2+ file (`\n<rule>\n` at its end).
fn footer(bytes: &[u8]) -> Option<String> {
    if bytes.len() < 44 || &bytes[..4] != b"TZif" || bytes[4] < b'2' {
        return None;
    }
    let body = bytes.strip_suffix(b"\n")?;
    let at = body.iter().rposition(|&b| b == b'\n')?;
    let rule = std::str::from_utf8(&body[at + 1..]).ok()?.trim();
    (!rule.is_empty()).then(|| rule.to_string())
}

/// Days since 1970-01-01 of a civil date (H. Hinnant's days-from-civil).
pub fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = (i64::from(m) + 9) % 12;
    let doy = (153 * mp + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn leap(y: i64) -> bool {
    (y % 4 == 0 && y % 100 != 0) || y % 400 == 0
}

/// The day (since the epoch) a change rule names in `year`.
fn change_day(rule: DayRule, year: i64) -> i64 {
    let jan1 = days_from_civil(year, 1, 1);
    match rule {
        DayRule::Julian0(n) => jan1 + i64::from(n),
        DayRule::Julian1(n) => {
            let n = i64::from(n) - 1;
            jan1 + n + i64::from(leap(year) && n >= 59)
        }
        DayRule::Month { m, w, d } => {
            let first = days_from_civil(year, m, 1);
            // 1970-01-01 was a Thursday (4).
            let wd_first = (first + 4).rem_euclid(7);
            let mut day = first + (i64::from(d) - wd_first).rem_euclid(7) + 7 * (i64::from(w) - 1);
            let next_month = if m == 12 {
                days_from_civil(year + 1, 1, 1)
            } else {
                days_from_civil(year, m + 1, 1)
            };
            while day >= next_month {
                day -= 7;
            }
            day
        }
    }
}

/// A POSIX TZ string: (standard seconds east, daylight time).
fn parse(s: &str) -> Option<(i64, Option<Dst>)> {
    let mut p = Cursor(s.as_bytes());
    p.name()?;
    let std = -p.offset()?;
    if p.0.is_empty() {
        return Some((std, None));
    }
    p.name()?;
    let dst_off = if p.0.first().is_some_and(|&c| c != b',') {
        -p.offset()?
    } else {
        std + 3600
    };
    // Without rules POSIX leaves the dates to the system; use the US ones.
    let (start, end) = if p.0.is_empty() {
        (
            (DayRule::Month { m: 3, w: 2, d: 0 }, 7200),
            (DayRule::Month { m: 11, w: 1, d: 0 }, 7200),
        )
    } else {
        p.eat(b',')?;
        let start = p.change()?;
        p.eat(b',')?;
        (start, p.change()?)
    };
    if !p.0.is_empty() {
        return None;
    }
    Some((
        std,
        Some(Dst {
            offset: dst_off,
            start,
            end,
        }),
    ))
}

struct Cursor<'a>(&'a [u8]);

impl Cursor<'_> {
    fn eat(&mut self, c: u8) -> Option<()> {
        let (&first, rest) = self.0.split_first()?;
        (first == c).then(|| self.0 = rest)
    }

    /// A zone abbreviation: 3+ letters, or `<...>` of letters, digits, signs.
    fn name(&mut self) -> Option<()> {
        if self.eat(b'<').is_some() {
            let end = self.0.iter().position(|&c| c == b'>')?;
            let ok = end >= 3
                && self.0[..end]
                    .iter()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'+' | b'-'));
            self.0 = &self.0[end + 1..];
            return ok.then_some(());
        }
        let n = self
            .0
            .iter()
            .take_while(|c| c.is_ascii_alphabetic())
            .count();
        self.0 = &self.0[n..];
        (n >= 3).then_some(())
    }

    fn number(&mut self, max: i64) -> Option<i64> {
        let n = self.0.iter().take_while(|c| c.is_ascii_digit()).count();
        if n == 0 || n > 3 {
            return None;
        }
        let v: i64 = std::str::from_utf8(&self.0[..n]).ok()?.parse().ok()?;
        self.0 = &self.0[n..];
        (v <= max).then_some(v)
    }

    /// `[+-]hh[:mm[:ss]]` in seconds (hours up to 167, as POSIX times allow).
    fn offset(&mut self) -> Option<i64> {
        let sign = if self.eat(b'-').is_some() {
            -1
        } else {
            let _ = self.eat(b'+');
            1
        };
        let mut secs = self.number(167)? * 3600;
        if self.eat(b':').is_some() {
            secs += self.number(59)? * 60;
            if self.eat(b':').is_some() {
                secs += self.number(59)?;
            }
        }
        Some(sign * secs)
    }

    /// `date[/time]`; the time defaults to 02:00.
    fn change(&mut self) -> Option<(DayRule, i64)> {
        let rule = if self.eat(b'M').is_some() {
            let m = self.number(12)? as u32;
            self.eat(b'.')?;
            let w = self.number(5)? as u32;
            self.eat(b'.')?;
            let d = self.number(6)? as u32;
            (m >= 1 && w >= 1).then_some(DayRule::Month { m, w, d })?
        } else if self.eat(b'J').is_some() {
            let n = self.number(365)? as u32;
            (n >= 1).then_some(DayRule::Julian1(n))?
        } else {
            DayRule::Julian0(self.number(365)? as u32)
        };
        let time = match self.eat(b'/') {
            Some(()) => self.offset()?,
            None => 7200,
        };
        Some((rule, time))
    }
}

#[cfg(test)]
#[path = "zone_tests.rs"]
mod tests;
