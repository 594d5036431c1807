//! Budget days: the day a Unix time falls in and when the next one starts,
//! in the zone of `BUDGET_TIMEZONE` (default `America/Los_Angeles`, where
//! Google's daily quotas reset), daylight time included. Per-key daily
//! limits and the usage ledger's day counts roll over at its midnight.
//!
//! One process-wide clock set once at start ([`init`]); until then (unit
//! tests) the built-in `America/Los_Angeles` rule. Its time may be moved by
//! `AISP_TEST_CLOCK_OFFSET_S`, a test-only variable read at start and used
//! by the budget day code alone (so tests can cross a midnight).

pub mod accounts;
pub mod limits;
pub mod plan;
pub mod today;
pub mod view;
pub mod zone;

use std::sync::OnceLock;
use std::time::{SystemTime, UNIX_EPOCH};

pub use zone::Zone;

/// The zone, the test offset and the alert threshold in force.
struct Clock {
    zone: Zone,
    offset_s: i64,
    alert_percent: u8,
}

static CLOCK: OnceLock<Clock> = OnceLock::new();

/// Use these settings from now on; the first call wins.
pub fn init(s: &crate::config::BudgetSettings, zone: Zone) {
    let _ = CLOCK.set(Clock {
        zone,
        offset_s: s.clock_offset_s,
        alert_percent: s.alert_percent,
    });
}

/// `BUDGET_ALERT_PERCENT`.
pub fn alert_percent() -> u8 {
    clock().alert_percent
}

fn clock() -> &'static Clock {
    static DEFAULT: OnceLock<Clock> = OnceLock::new();
    CLOCK.get().unwrap_or_else(|| {
        DEFAULT.get_or_init(|| Clock {
            zone: Zone::find("America/Los_Angeles", std::path::Path::new("/nonexistent"))
                .expect("the built-in table has America/Los_Angeles"),
            offset_s: 0,
            alert_percent: 80,
        })
    })
}

/// The zone's name as configured.
pub fn zone_name() -> &'static str {
    &clock().zone.name
}

/// Now, in ms since the epoch, as the budget days see it.
pub fn now_ms() -> i64 {
    let real = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0);
    real + clock().offset_s * 1000
}

/// `AISP_TEST_CLOCK_OFFSET_S` (0 outside tests).
pub fn offset_s() -> i64 {
    clock().offset_s
}

/// The wall-clock time `t` as the budget days see it (Unix seconds).
pub fn budget_secs(t: SystemTime) -> i64 {
    let s = t
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    s + offset_s()
}

/// The wall-clock time of budget-clock second `s` (a day's end).
pub fn wall_at(s: i64) -> SystemTime {
    UNIX_EPOCH + std::time::Duration::from_secs((s - offset_s()).max(0) as u64)
}

/// One budget day: which, and when it ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Day {
    /// Days since 1970-01-01 in the zone.
    pub number: i64,
    /// Unix time the next day starts.
    pub ends: i64,
}

impl Day {
    /// The budget day `t` falls in.
    pub fn at(t: i64) -> Day {
        let z = &clock().zone;
        Day {
            number: z.day_of(t),
            ends: z.next_day_start(t),
        }
    }

    /// `YYYY-MM-DD` in the zone.
    pub fn date(&self) -> String {
        let (y, m, d) = crate::civil::date(self.number);
        format!("{y:04}-{m:02}-{d:02}")
    }
}
