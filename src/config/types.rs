//! The settings types: what the parsed configuration is made of, one type
//! per group of settings, beside the parser so that the configuration
//! imports nobody. Each module that uses a group re-exports its type under
//! its own name (`notify::Settings`, `recycle::Limits`...). Pure data and
//! pure checks only.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

/// Where hydration finds profiles.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Local,
    S3,
}

/// The S3 backend's addressing; credentials come from the standard chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Settings {
    pub bucket: Option<String>,
    /// Normalised: no leading or trailing slash, may be empty.
    pub prefix: String,
    pub region: String,
    pub endpoint: Option<String>,
    pub download_threads: usize,
}

/// Which profile sources get a child's refreshed auth state written back
/// (`AUTH_WRITEBACK`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WritebackMode {
    /// Only profiles hydrated from S3 (the default: a local directory is
    /// often a read-only secret volume).
    S3,
    /// S3 and local profile directories.
    All,
    /// Never; children still get a private working copy per start.
    Off,
}

/// Profile leases in the bucket (`PROFILE_LEASES`): several coordinators
/// over one bucket never drive one account twice.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Leases {
    Off,
    S3 {
        /// `LEASE_TTL_S`.
        ttl: Duration,
        /// `REPLICA_ID`, default the host name.
        replica: String,
    },
}

/// The port triple of slot `i` is `base + i * step` for each of the three.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortPlan {
    pub base_api: u16,
    pub base_stream: u16,
    pub base_camoufox: u16,
    pub step: u16,
}

/// The ports one child is started on; a slot keeps its triple for life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Ports {
    pub api: u16,
    pub stream: u16,
    pub camoufox: u16,
}

impl PortPlan {
    /// Validation guarantees these additions stay within u16 for every slot
    /// below the configured pool size.
    pub fn slot(&self, i: usize) -> Ports {
        let off = (i as u32) * u32::from(self.step);
        let at = |base: u16| (u32::from(base) + off) as u16;
        Ports {
            api: at(self.base_api),
            stream: at(self.base_stream),
            camoufox: at(self.base_camoufox),
        }
    }
}

/// The profile book's thresholds and cooldowns.
#[derive(Debug, Clone, Copy)]
pub struct BookSettings {
    pub empty_answers_to_rotate: u32,
    /// Out of quota (`PROFILE_COOLDOWN_S`).
    pub cooldown: Duration,
    /// Rate-limited (`RATE_LIMIT_COOLDOWN_S`).
    pub rate_limit_cooldown: Duration,
    /// How long a model asked for stays in demand (`MODEL_DEMAND_WINDOW_S`).
    pub demand_window: Duration,
}

impl Default for BookSettings {
    /// `EMPTY_ANSWERS_TO_ROTATE`, `PROFILE_COOLDOWN_S` and
    /// `RATE_LIMIT_COOLDOWN_S` defaults.
    fn default() -> BookSettings {
        BookSettings {
            empty_answers_to_rotate: 2,
            cooldown: Duration::from_secs(3600),
            rate_limit_cooldown: Duration::from_secs(300),
            demand_window: Duration::from_secs(600),
        }
    }
}

/// The webhook URL; its `Debug` and `Display` show only scheme and host.
#[derive(Clone, PartialEq, Eq)]
pub struct WebhookUrl(String);

impl WebhookUrl {
    /// A URL the settings table has already checked (`Kind::SecretUrl`).
    pub(super) fn checked(url: String) -> WebhookUrl {
        WebhookUrl(url)
    }

    pub fn new(url: &str) -> Result<WebhookUrl, &'static str> {
        let url = url.trim();
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            return Err("a URL starting with http:// or https://");
        }
        Ok(WebhookUrl(url.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// `https://host/…`: what logs may show.
    pub fn redacted(&self) -> String {
        let (scheme, rest) = self.0.split_once("://").unwrap_or(("", &self.0));
        let host = rest.split(['/', '?', '#']).next().unwrap_or("");
        // user:password@host: keep the host only.
        let host = host.rsplit('@').next().unwrap_or(host);
        format!("{scheme}://{host}/…")
    }
}

impl fmt::Debug for WebhookUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "WebhookUrl({})", self.redacted())
    }
}

impl fmt::Display for WebhookUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

/// Budget days and key-limit alerts (`BUDGET_*`).
#[derive(Debug, Clone)]
pub struct BudgetSettings {
    /// `BUDGET_TIMEZONE`: an IANA name or a POSIX TZ string, resolved at
    /// start (`budget::Zone::named`).
    pub timezone: String,
    /// Percent of a daily limit that sends a notification.
    pub alert_percent: u8,
    /// `AISP_TEST_CLOCK_OFFSET_S`: test-only, moves the budget days' clock.
    pub clock_offset_s: i64,
    /// `MODEL_BUDGETS_FILE`: read at start (`app::Files`) and at reloads.
    pub models_file: Option<std::path::PathBuf>,
    /// `BUDGET_FLEET_ALERT_PERCENT`.
    pub fleet_alert_percent: u8,
}

#[derive(Debug, Clone)]
/// Webhook notifications (`NOTIFY_*`).
pub struct NotifySettings {
    pub url: Option<WebhookUrl>,
    pub url_file: Option<PathBuf>,
    /// No ready child this long is worth a message.
    pub no_ready: Duration,
    /// Repeats within this are folded into one later message.
    pub fold: Duration,
}

/// A running child's memory and age limits, from the configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecycleLimits {
    /// `CHILD_MAX_RSS_MB` in bytes; None: no memory limit.
    pub max_rss: Option<u64>,
    /// `CHILD_MAX_AGE_S`; None: no age limit.
    pub max_age: Option<Duration>,
    /// `CHILD_RSS_SAMPLE_S`: how often a running child's tree is measured.
    pub sample: Duration,
}

impl Default for RecycleLimits {
    fn default() -> RecycleLimits {
        RecycleLimits {
            max_rss: None,
            max_age: None,
            sample: Duration::from_secs(5),
        }
    }
}

/// Keep-alive turns and long runs, from the configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct KeepaliveSettings {
    /// `PROFILE_KEEPALIVE_S`; None: off.
    pub every: Option<Duration>,
    /// `PROFILE_MAX_RUNTIME_S`; None: off.
    pub max_runtime: Option<Duration>,
}

impl KeepaliveSettings {
    pub fn on(&self) -> bool {
        self.every.is_some() || self.max_runtime.is_some()
    }
}

/// The admin key; its `Debug` never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct AdminKey(String);

impl AdminKey {
    pub fn new(key: String) -> Option<AdminKey> {
        let key = key.trim().to_string();
        (!key.is_empty()).then_some(AdminKey(key))
    }

    /// Equal to `offered`, in time that depends only on the lengths.
    pub fn matches(&self, offered: &str) -> bool {
        let (a, b) = (self.0.as_bytes(), offered.as_bytes());
        let mut diff = u8::from(a.len() != b.len());
        for i in 0..a.len().max(b.len()) {
            diff |= a.get(i).copied().unwrap_or(0) ^ b.get(i).copied().unwrap_or(0xff);
        }
        diff == 0
    }
}

impl fmt::Debug for AdminKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AdminKey(..)")
    }
}

/// The coordinator's own log on stderr (`LOG_FORMAT`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

/// The lease's timing, from `LEASE_TTL_S` and `CHILD_STOP_GRACE_S`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseTiming {
    pub ttl: Duration,
    pub stop_grace: Duration,
}

impl LeaseTiming {
    /// How often a holder renews.
    pub fn renew_every(&self) -> Duration {
        self.ttl / 3
    }

    /// The clock-skew allowance: a sixth of the TTL (10 s at the default
    /// 60 s), so that a holder that missed one renewal still keeps its child.
    pub fn margin(&self) -> Duration {
        self.ttl / 6
    }

    /// How long after sending its last successful write a holder may keep
    /// its child: the stop (up to the grace) must end before the lease
    /// could expire on a clock `margin` ahead of ours.
    pub fn keep_for(&self) -> Duration {
        self.ttl
            .saturating_sub(self.margin())
            .saturating_sub(self.stop_grace)
    }

    /// A TTL that leaves at least one renewal's worth of slack, plus a
    /// second to retry: a holder whose renewal failed once still keeps its
    /// child until the next tries.
    pub fn check(&self) -> Result<(), String> {
        if self.keep_for() < self.renew_every() + Duration::from_secs(1) {
            return Err(format!(
                "LEASE_TTL_S={} is too short for CHILD_STOP_GRACE_S={}: a holder must keep its child \
                 for a second more than a third of the TTL after a renewal, so LEASE_TTL_S must exceed \
                 twice the stop grace by a few seconds",
                self.ttl.as_secs(),
                self.stop_grace.as_secs()
            ));
        }
        Ok(())
    }
}
