//! The settings table: every setting's variable, default, accepted values
//! and documentation, in one place. The parser checks each value against its
//! [`Kind`] by walking this table; `--help` and the configuration reference
//! (`docs/configuration.md`, compared by a test) are generated from it, so
//! the three cannot drift apart.

/// What values a setting accepts; checked before any setting is used.
#[derive(Debug, Clone, Copy)]
pub enum Kind {
    /// An integer in the range.
    Int { min: u64, max: u64 },
    /// Whole seconds in the range.
    Secs { min: u64, max: u64 },
    /// Seconds with up to three decimals, from 0 to `max`.
    DecimalSecs { max: u64 },
    /// `true`/`false` (also `1`/`0`, `yes`/`no`, `on`/`off`).
    Bool,
    /// One of the words, in any case.
    Choice(&'static [&'static str]),
    /// A path; relative ones are taken from the starting directory.
    Path,
    /// Free text, checked where it is used.
    Text,
    /// Free text that is never shown, not even in an error.
    Secret,
    /// An `http://` or `https://` URL that is never shown.
    SecretUrl,
    /// An IP address, or `localhost`.
    Host,
    /// An IANA time zone name or a POSIX TZ string, resolved at start
    /// with the zone database (`budget::zone`), not by the parser.
    TimeZone,
}

/// One setting: its variable (the flag is derived from it), its default as
/// text (parsed like user input), what it accepts, a one-line summary for
/// `--help` and its documentation (Markdown) for the reference.
pub struct Setting {
    pub env: &'static str,
    pub default: Option<&'static str>,
    pub kind: Kind,
    pub summary: &'static str,
    pub doc: &'static str,
}

impl Setting {
    /// `BASE_API_PORT` -> `--base-api-port`.
    pub fn flag(&self) -> String {
        flag_of(self.env)
    }
}

pub fn flag_of(env: &str) -> String {
    format!("--{}", env.to_ascii_lowercase().replace('_', "-"))
}

/// The setting of this variable; every name the parser asks for is here.
pub fn setting(env: &str) -> Option<&'static Setting> {
    SETTINGS.iter().find(|s| s.env == env)
}

pub const SETTINGS: &[Setting] = &[
    Setting {
        env: "PROFILE_BACKEND",
        default: Some("local"),
        kind: Kind::Choice(&["local", "s3"]),
        summary: "where profiles come from: local or s3",
        doc: "where profiles come from: `local` or `s3`",
    },
    Setting {
        env: "LOCAL_PROFILE_DIR",
        default: Some("auth_profiles/active"),
        kind: Kind::Path,
        summary: "directory of *.json profiles (key.txt is read from its parent)",
        doc: "directory of `*.json` profiles; `key.txt` is read from its parent",
    },
    Setting {
        env: "AUTH_PROFILE_CACHE_DIR",
        default: Some("/tmp/auth_profiles"),
        kind: Kind::Path,
        summary: "where profiles are staged (active/) with key.txt",
        doc: "where profiles are staged (`active/`) with `key.txt`",
    },
    Setting {
        env: "AUTH_PROFILE_S3_BUCKET",
        default: None,
        kind: Kind::Text,
        summary: "bucket holding <prefix>/active/*.json and <prefix>/key.txt",
        doc: "bucket holding `<prefix>/active/*.json` and `<prefix>/key.txt`; required with `s3`",
    },
    Setting {
        env: "AUTH_PROFILE_S3_PREFIX",
        default: None,
        kind: Kind::Text,
        summary: "key prefix inside the bucket",
        doc: "key prefix inside the bucket (default: the bucket root); leading and trailing `/` are ignored",
    },
    Setting {
        env: "AUTH_PROFILE_S3_REGION",
        default: None,
        kind: Kind::Text,
        summary: "bucket region (else AWS_REGION, AWS_DEFAULT_REGION, us-east-1)",
        doc: "bucket region; else `AWS_REGION`, else `AWS_DEFAULT_REGION`, else `us-east-1`",
    },
    Setting {
        env: "AUTH_PROFILE_S3_ENDPOINT",
        default: None,
        kind: Kind::Text,
        summary: "S3-compatible endpoint URL, path-style (else AWS_ENDPOINT_URL_S3, AWS_ENDPOINT_URL)",
        doc: "S3-compatible endpoint URL (`http://` or `https://`), addressed path-style; else `AWS_ENDPOINT_URL_S3`, else `AWS_ENDPOINT_URL`, else AWS",
    },
    Setting {
        env: "S3_DOWNLOAD_THREADS",
        default: Some("8"),
        kind: Kind::Int { min: 1, max: 64 },
        summary: "parallel profile downloads",
        doc: "parallel profile downloads (1 to 64)",
    },
    Setting {
        env: "COORDINATOR_HOST",
        default: Some("0.0.0.0"),
        kind: Kind::Host,
        summary: "address the coordinator listens on",
        doc: "address the coordinator listens on (an IP address or `localhost`)",
    },
    Setting {
        env: "COORDINATOR_PORT",
        default: Some("2048"),
        kind: Kind::Int { min: 0, max: 65535 },
        summary: "port of the health endpoints and the OpenAI API",
        doc: "port of the health endpoints and the OpenAI API",
    },
    Setting {
        env: "BASE_API_PORT",
        default: Some("3100"),
        kind: Kind::Int { min: 1, max: 65535 },
        summary: "API port of slot 0",
        doc: "API port of slot 0",
    },
    Setting {
        env: "BASE_STREAM_PORT",
        default: Some("3200"),
        kind: Kind::Int { min: 1, max: 65535 },
        summary: "stream port of slot 0",
        doc: "stream port of slot 0",
    },
    Setting {
        env: "BASE_CAMOUFOX_PORT",
        default: Some("9222"),
        kind: Kind::Int { min: 1, max: 65535 },
        summary: "Camoufox debug port of slot 0",
        doc: "Camoufox debug port of slot 0",
    },
    Setting {
        env: "PORT_STEP",
        default: Some("1"),
        kind: Kind::Int { min: 1, max: 65535 },
        summary: "port increment between slots",
        doc: "port increment between slots",
    },
    Setting {
        env: "HEADLESS",
        default: Some("true"),
        kind: Kind::Bool,
        summary: "pass --headless to children: true or false",
        doc: "pass `--headless` to children: `true` or `false` (also `1`/`0`, `yes`/`no`, `on`/`off`)",
    },
    Setting {
        env: "COORDINATOR_LOG_DIR",
        default: Some("logs/coordinator"),
        kind: Kind::Path,
        summary: "directory of per-profile child logs",
        doc: "directory of per-profile child logs",
    },
    Setting {
        env: "POOL_SIZE",
        default: Some("2"),
        kind: Kind::Int { min: 1, max: 256 },
        summary: "number of child slots",
        doc: "number of child slots (1 to 256)",
    },
    Setting {
        env: "READY_TIMEOUT_S",
        default: Some("60"),
        kind: Kind::Secs { min: 1, max: 86_400 },
        summary: "seconds a child may take to become ready",
        doc: "seconds a child may take to become ready",
    },
    Setting {
        env: "CHILD_STOP_GRACE_S",
        default: Some("10"),
        kind: Kind::Secs { min: 0, max: 3_600 },
        summary: "seconds between SIGTERM and SIGKILL of a child's group",
        doc: "seconds between SIGTERM and SIGKILL of a child's group (0 to 3600)",
    },
    Setting {
        env: "CHILD_COMMAND",
        default: Some("python launch_camoufox.py"),
        kind: Kind::Text,
        summary: "child program and leading arguments, split like shell words (no shell)",
        doc: "child program and leading arguments, split like shell words (no shell)",
    },
    Setting {
        env: "CHILD_WORKDIR",
        default: None,
        kind: Kind::Path,
        summary: "working directory of children (default: current directory)",
        doc: "working directory of children: the AI Studio proxy checkout (default: the current directory)",
    },
    Setting {
        env: "LOG_FORMAT",
        default: Some("text"),
        kind: Kind::Choice(&["text", "json"]),
        summary: "the coordinator's log on stderr: text, or json (one object per line)",
        doc: "the coordinator's own log on stderr: `text`, or `json` (one object per line)",
    },
    Setting {
        env: "SHUTDOWN_DRAIN_S",
        default: Some("30"),
        kind: Kind::Secs { min: 0, max: 3_600 },
        summary: "on SIGTERM, how long requests in flight and queued may take before children are stopped (0: none)",
        doc: "on SIGTERM or SIGINT, how long requests in flight and queued may still take before the children are stopped (`/ready` is 503 meanwhile; 0: no drain; a second signal skips it)",
    },
    Setting {
        env: "EMPTY_ANSWERS_TO_ROTATE",
        default: Some("2"),
        kind: Kind::Int { min: 1, max: 1000 },
        summary: "empty answers in a row that mark a profile exhausted (rotated out, cooled down)",
        doc: "empty answers in a row that mark a profile exhausted: its slot drains and rotates, the profile cools down",
    },
    Setting {
        env: "PROFILE_COOLDOWN_S",
        default: Some("3600"),
        kind: Kind::Secs { min: 1, max: 30 * 86_400 },
        summary: "how long an exhausted profile rests when the child sent no Retry-After",
        doc: "how long an exhausted profile (or one model of it) rests when the child sent no `Retry-After`",
    },
    Setting {
        env: "RATE_LIMIT_COOLDOWN_S",
        default: Some("300"),
        kind: Kind::Secs { min: 1, max: 30 * 86_400 },
        summary: "how long a profile rests when its child's log says rate limit",
        doc: "how long a profile (or one model of it) rests when its child's log says rate limit",
    },
    Setting {
        env: "CHILD_SIGNALS_FILE",
        default: None,
        kind: Kind::Path,
        summary: "more log patterns for login needed, quota and rate limit (lines `quota: <text>`)",
        doc: "more lines of a child's log to read as `login`, `quota` or `rate_limit` (see [Account signs](internals.md#account-signs-in-the-childs-log)); a bad file is fatal at start",
    },
    Setting {
        env: "ADMIN_SOCKET",
        default: None,
        kind: Kind::Path,
        summary: "the admin socket (default: AUTH_PROFILE_CACHE_DIR/admin.sock); see aistudioproxy ctl",
        doc: "the admin socket `aistudioproxy ctl` talks to (default: `AUTH_PROFILE_CACHE_DIR/admin.sock`) (see [Operating](operating.md#operating))",
    },
    Setting {
        env: "ADMIN_KEY",
        default: None,
        kind: Kind::Secret,
        summary: "enables /admin/ on the coordinator port with this key (never logged)",
        doc: "turns on `/admin/` on the coordinator port, guarded by this key (never logged)",
    },
    Setting {
        env: "ADMIN_KEY_FILE",
        default: None,
        kind: Kind::Path,
        summary: "like ADMIN_KEY, the key being the file's first line",
        doc: "like `ADMIN_KEY`, the key being the file's first line",
    },
    Setting {
        env: "METRICS_OPEN",
        default: Some("false"),
        kind: Kind::Bool,
        summary: "serve /metrics without an API key even when API keys are configured",
        doc: "serve `/metrics` without an API key even when API keys are configured",
    },
    Setting {
        env: "PROFILE_RELOAD_INTERVAL_S",
        default: Some("0"),
        kind: Kind::Secs { min: 0, max: 30 * 86_400 },
        summary: "hydrate again and apply the changes every this many seconds (0: only on SIGHUP or ctl reload)",
        doc: "hydrate again and apply the changes every this many seconds (`0`: only on SIGHUP or `ctl reload`)",
    },
    Setting {
        env: "AUTH_KEY_FILE_PATH",
        default: None,
        kind: Kind::Path,
        summary: "your own API key file, used (by us and the children) when no key.txt is hydrated",
        doc: "your own API key file, used by the coordinator and handed to children when the source has no `key.txt`; must be readable",
    },
    Setting {
        env: "HTTP_WORKERS",
        default: Some("8"),
        kind: Kind::Int { min: 2, max: 256 },
        summary: "threads accepting HTTP requests",
        doc: "threads accepting HTTP requests (2 to 256)",
    },
    Setting {
        env: "REQUEST_TIMEOUT_S",
        default: Some("600"),
        kind: Kind::Secs { min: 1, max: 86_400 },
        summary: "overall deadline of one proxied request",
        doc: "longest wait for a child's answer head, per child tried",
    },
    Setting {
        env: "STREAM_IDLE_TIMEOUT_S",
        default: Some("120"),
        kind: Kind::Secs { min: 1, max: 86_400 },
        summary: "longest silence of a streaming child before it is cut off",
        doc: "longest silence of a child after its answer head before it is cut off",
    },
    Setting {
        env: "HOLD_STREAM_HEAD",
        default: Some("true"),
        kind: Kind::Bool,
        summary: "hold a streamed answer's head until it carries content, so an empty one is served by another account: true or false",
        doc: "hold a streamed completion's head until its answer carries content, so an empty one (an account out of quota) is served by another account; `false` relays the head at once (see [Profile health](internals.md#profile-health-and-cooldowns))",
    },
    Setting {
        env: "MAX_INFLIGHT_PER_CHILD",
        default: Some("1"),
        kind: Kind::Int { min: 0, max: 100_000 },
        summary: "completions one child serves at once; more wait in the coordinator's queue (0: no limit)",
        doc: "completions one child serves at once; more wait in the coordinator's queue (`0`: no limit)",
    },
    Setting {
        env: "MAX_QUEUE",
        default: Some("512"),
        kind: Kind::Int { min: 0, max: 1_000_000 },
        summary: "completions that may wait for a free child; past it, 503 queue_full",
        doc: "completions that may wait for a free child; past it, 503 `queue_full`",
    },
    Setting {
        env: "NOTIFY_WEBHOOK_URL",
        default: None,
        kind: Kind::SecretUrl,
        summary: "POST a JSON message (with a text field) here when an operator must act: a login needed, a profile exhausted, a crash loop, a lease lost, no ready child (a secret: never logged)",
        doc: "POST a JSON message here when an operator must act (see [Notifications](operating.md#notifications)); a secret, never logged whole",
    },
    Setting {
        env: "NOTIFY_WEBHOOK_URL_FILE",
        default: None,
        kind: Kind::Path,
        summary: "like NOTIFY_WEBHOOK_URL, the URL being the file's first line",
        doc: "like `NOTIFY_WEBHOOK_URL`, the URL being the file's first line",
    },
    Setting {
        env: "NOTIFY_NO_READY_S",
        default: Some("300"),
        kind: Kind::Secs { min: 1, max: 86_400 },
        summary: "notify when no child has been ready for this many seconds",
        doc: "notify when no child has been ready for this many seconds",
    },
    Setting {
        env: "NOTIFY_FOLD_S",
        default: Some("600"),
        kind: Kind::Secs { min: 0, max: 86_400 },
        summary: "repeats of a notification (same kind and profile) within this many seconds are folded into one later message with a count",
        doc: "repeats of a notification (same kind and profile) within this many seconds become one later message with a count",
    },
    Setting {
        env: "BUDGET_TIMEZONE",
        default: Some("America/Los_Angeles"),
        kind: Kind::TimeZone,
        summary: "the zone whose midnight starts a budget day (per-key daily limits, day counts): an IANA name or a POSIX TZ string",
        doc: "the zone whose midnight starts a budget day (per-key daily limits and the day counts, see [Key limits](operating.md#key-limits)): an IANA name, read from `/usr/share/zoneinfo` when the system has it, else from a built-in table of common zones (the production image has none), or a POSIX TZ string such as `PST8PDT,M3.2.0,M11.1.0`",
    },
    Setting {
        env: "BUDGET_ALERT_PERCENT",
        default: Some("80"),
        kind: Kind::Int { min: 1, max: 100 },
        summary: "notify when a key has used this percent of one of its daily limits (and again when it reaches it)",
        doc: "notify when a key has used this percent of one of its daily limits, and again when it reaches the limit; once per key, limit and day",
    },
    Setting {
        env: "MODEL_BUDGETS_FILE",
        default: None,
        kind: Kind::Path,
        summary: "file of daily request budgets per model for tiers of accounts; read at start and at every reload",
        doc: "file of daily request budgets per model for tiers of accounts (which profiles are in which tier, which models a tier may not use); requests go to the account with the most left, and an account at its budget for a model serves it again at midnight in `BUDGET_TIMEZONE`. Read at start (a bad file stops the start, exit 2) and at every reload (a bad file keeps the budgets in force); see [Account budgets](operating.md#account-budgets)",
    },
    Setting {
        env: "BUDGET_FLEET_ALERT_PERCENT",
        default: Some("20"),
        kind: Kind::Int { min: 1, max: 99 },
        summary: "notify when the fleet has less than this percent of a model's daily budget left (and again when it is gone)",
        doc: "notify when the fleet's accounts have less than this percent of a model's daily budget (`MODEL_BUDGETS_FILE`) left, and again when none is left until the reset; once per model and day",
    },
    Setting {
        env: "QUEUE_TIMEOUT_S",
        default: Some("120"),
        kind: Kind::Secs { min: 1, max: 86_400 },
        summary: "longest wait for a free child; past it, 503 queue_timeout",
        doc: "longest wait for a free child; past it, 503 `queue_timeout`",
    },
    Setting {
        env: "MODEL_DEMAND_WINDOW_S",
        default: Some("600"),
        kind: Kind::Secs { min: 1, max: 30 * 86_400 },
        summary: "a model asked for within this many seconds is in demand: a profile cooling for every model in demand is rotated out",
        doc: "a model asked for (or found out of quota) within this many seconds is in demand; a profile out of quota for every model in demand is rotated out",
    },
    Setting {
        env: "CONSECUTIVE_5XX_TO_EVICT",
        default: Some("3"),
        kind: Kind::Int { min: 1, max: 1_000 },
        summary: "answers of 500 or other non-gateway 5xx in a row that evict a child",
        doc: "answers of 500 (or another non-gateway 5xx) in a row that evict a child",
    },
    Setting {
        env: "AUTH_WRITEBACK",
        default: Some("s3"),
        kind: Kind::Choice(&["s3", "all", "off"]),
        summary: "write children's refreshed auth state back to the profile source: s3, all (local too) or off",
        doc: "write children's refreshed auth state back to the profile source: `s3`, `all` (local too) or `off`",
    },
    Setting {
        env: "AUTH_WRITEBACK_INTERVAL_S",
        default: Some("600"),
        kind: Kind::Secs { min: 1, max: 86_400 },
        summary: "seconds between write-back checks of a running child's profile (also at its stop)",
        doc: "seconds between write-back checks of a running child's profile (also at its stop)",
    },
    Setting {
        env: "PROFILE_LEASES",
        default: Some("off"),
        kind: Kind::Choice(&["off", "s3"]),
        summary: "off, or s3: start a profile only while holding its lease in <prefix>/leases/ (several coordinators over one bucket; S3 backend only)",
        doc: "off, or s3: start a profile only while holding its lease in <prefix>/leases/ (several coordinators over one bucket; S3 backend only)",
    },
    Setting {
        env: "LEASE_TTL_S",
        default: Some("60"),
        kind: Kind::Secs { min: 3, max: 86_400 },
        summary: "lifetime of a profile lease, renewed every third of it; a dead replica's profiles move after about this long",
        doc: "lifetime of a profile lease, renewed every third of it; a dead replica's profiles move after about this long",
    },
    Setting {
        env: "REPLICA_ID",
        default: None,
        kind: Kind::Text,
        summary: "this coordinator's name in lease objects, unique among the replicas (default: the host name)",
        doc: "this coordinator's name in lease objects, unique among the replicas (default: the host name)",
    },
    Setting {
        env: "START_STAGGER_S",
        default: Some("0"),
        kind: Kind::DecimalSecs { max: 3_600 },
        summary: "at most one child start per this many seconds across the fleet, the first at once (decimals allowed; 0: off)",
        doc: "at most one child start per this many seconds across the whole fleet, the first at once; decimals allowed (`1.5`), 0 to 3600 (`0`: off); see [Gentle starts](internals.md#gentle-starts)",
    },
    Setting {
        env: "CHILD_MAX_RSS_MB",
        default: Some("0"),
        kind: Kind::Int { min: 0, max: 1 << 24 },
        summary: "drain and restart a child whose process tree's resident memory passes this many MiB (0: off)",
        doc: "drain a child whose process tree's resident memory passes this many MiB and start the same profile again (`0`: off); see [Memory and age limits](internals.md#memory-and-age-limits)",
    },
    Setting {
        env: "CHILD_MAX_AGE_S",
        default: Some("0"),
        kind: Kind::Secs { min: 0, max: 365 * 86_400 },
        summary: "drain and restart a child this many seconds after its start (0: off)",
        doc: "drain a child this many seconds after its start and start the same profile again (`0`: off)",
    },
    Setting {
        env: "CHILD_RSS_SAMPLE_S",
        default: Some("5"),
        kind: Kind::Secs { min: 1, max: 3_600 },
        summary: "seconds between measurements of a running child's process tree memory",
        doc: "seconds between measurements of a running child's memory (1 to 3600)",
    },
    Setting {
        env: "PROFILE_KEEPALIVE_S",
        default: Some("43200"),
        kind: Kind::Secs { min: 0, max: 365 * 86_400 },
        summary: "give a profile idle this many seconds (since its last run, or since first seen) a short turn on a slot so its login is refreshed and written back; one turn at a time, never while requests wait (0: off)",
        doc: "give a profile idle this many seconds (since its last run, or since first seen) a short turn on a slot, so its login is refreshed and written back; one at a time, never while requests wait (`0`: off); see [Every login gets its turn](operating.md#every-login-gets-its-turn)",
    },
    Setting {
        env: "PROFILE_MAX_RUNTIME_S",
        default: Some("0"),
        kind: Kind::Secs { min: 0, max: 365 * 86_400 },
        summary: "drain and rotate out a profile that has held its slot this many seconds while another profile waits its turn (0: off)",
        doc: "drain and rotate out a profile that has held its slot this many seconds while another that may run waits its turn (`0`: off)",
    },
    Setting {
        env: "PROFILE_PROXIES_FILE",
        default: None,
        kind: Kind::Path,
        summary: "file of 'profile-name proxy-URL' lines: each profile's browser uses its own proxy",
        doc: "file of `profile-name proxy-URL` lines: each listed profile's browser uses its own proxy; see [A proxy per account](internals.md#a-proxy-per-account)",
    },
    Setting {
        env: "MAX_BODY_BYTES",
        default: Some("52428800"),
        kind: Kind::Int { min: 1024, max: 1 << 34 },
        summary: "largest accepted request body",
        doc: "largest accepted request body, in bytes (50 MiB)",
    },
    Setting {
        env: "HEADER_TIMEOUT_S",
        default: Some("30"),
        kind: Kind::Secs { min: 1, max: 3_600 },
        summary: "a request head must arrive whole within this (of the connection, or of its first byte); else the connection is closed",
        doc: "a request head must arrive whole within this; else the connection is closed",
    },
    Setting {
        env: "KEEPALIVE_TIMEOUT_S",
        default: Some("75"),
        kind: Kind::Secs { min: 1, max: 3_600 },
        summary: "an idle keep-alive connection is closed this long after its last answer",
        doc: "an idle keep-alive connection is closed this long after its last answer",
    },
    Setting {
        env: "MAX_CONNECTIONS",
        default: Some("4096"),
        kind: Kind::Int { min: 8, max: 1_000_000 },
        summary: "open client connections at most (the last eighth, up to 16, only for /live, /ready, /health); more are closed at once",
        doc: "open client connections at most; the last eighth (up to 16) is kept for `/live`, `/ready`, `/health`",
    },
];

/// The `--help` text.
pub fn help_text() -> String {
    let mut out = String::from(concat!(
        "aistudioproxy ",
        env!("CARGO_PKG_VERSION"),
        ": supervises a pool of AI Studio proxy children and serves their OpenAI API\n\n",
        "Usage: aistudioproxy [OPTIONS] [-- CHILD_PROGRAM [ARGS...]]\n\n",
        "  --hydrate-only   stage profiles and key.txt into the cache, print a JSON summary, exit\n",
        "  --help           this text\n",
        "  --version        the version\n",
        "  --config-reference  every setting's reference, as Markdown (docs/configuration.md)\n\n",
        "Settings (flag or environment variable; the flag wins):\n",
    ));
    for s in SETTINGS {
        let default = s
            .default
            .map(|d| format!(" [default: {d}]"))
            .unwrap_or_default();
        out.push_str(&format!(
            "  {:<28} {:<26} {}{}\n",
            s.flag(),
            s.env,
            s.summary,
            default
        ));
    }
    out.push_str("\nRUST_LOG sets the log filter (default info,s3=error). Logs go to stderr.\n");
    out
}

/// `docs/configuration.md`: the reference of every setting.
pub fn reference_markdown() -> String {
    let mut out = String::from(REFERENCE_HEAD);
    out.push_str("| Variable | Flag | Default | Meaning |\n|---|---|---|---|\n");
    for s in SETTINGS {
        let default = s.default.map(|d| format!("`{d}`")).unwrap_or("–".into());
        out.push_str(&format!(
            "| `{}` | `{}` | {} | {} |\n",
            s.env,
            s.flag(),
            default,
            s.doc
        ));
    }
    out.push_str(REFERENCE_TAIL);
    out
}

const REFERENCE_HEAD: &str = "# Configuration reference

<!-- Generated from src/config/table.rs by `AISP_BLESS=1 cargo test config::`;
     a test fails when this file and the table differ. Edit the table. -->

Every setting can be given as an environment variable or as the long flag
derived from it (`BASE_API_PORT` becomes `--base-api-port 3100` or
`--base-api-port=3100`). A flag wins over the variable; an empty variable
counts as unset. Relative paths are taken from the directory the coordinator
is started in. `aistudioproxy --help` prints the same list. A value outside
what a setting accepts stops the start with one line naming the setting and
what it accepts (exit code 2).

";

const REFERENCE_TAIL: &str = "
`RUST_LOG` filters the coordinator's log (default `info,s3=error`: the S3
client library's own retry notes are left out, the coordinator's line about
the same failure names the store and the error).

Other command-line options: `--hydrate-only` (stage the profiles, print a
JSON summary, exit), `--config-reference` (print this page), `--help` and
`--version`.
";
