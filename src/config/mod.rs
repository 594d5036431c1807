//! Configuration: every setting the coordinator reads, parsed and validated
//! once at start from the environment and the command line, then passed by
//! reference. Nothing here touches the process environment after reading it,
//! and nothing here does I/O beyond resolving the working directory.
//!
//! Each setting has an environment variable and a long flag derived from it
//! (`BASE_API_PORT` <-> `--base-api-port`); a flag wins over the variable.
//! Every value is checked against the settings table (`table.rs`) in one
//! walk (`values.rs`) before the groups of `types.rs` are assembled here.
//! This module imports no other module of the crate.

mod table;
mod types;
mod values;

use std::collections::HashMap;
use std::ffi::OsString;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use table::SETTINGS;
pub use table::{help_text, reference_markdown};
pub use types::*;
use values::{invalid, Values};

#[derive(Debug, Clone)]
pub struct Config {
    pub backend: Backend,
    pub local_profile_dir: PathBuf,
    pub cache_dir: PathBuf,
    pub s3: S3Settings,
    pub host: String,
    pub port: u16,
    pub ports: PortPlan,
    pub headless: bool,
    pub log_dir: PathBuf,
    pub pool_size: usize,
    pub ready_timeout: Duration,
    pub stop_grace: Duration,
    /// Program and leading arguments; never run through a shell.
    pub child_command: Vec<String>,
    pub child_workdir: PathBuf,
    pub log_format: LogFormat,
    /// On SIGTERM, the longest wait for requests in flight and queued.
    pub shutdown_drain: Duration,
    pub book: BookSettings,
    /// More log patterns read as account signs (`CHILD_SIGNALS_FILE`),
    /// loaded at start.
    pub signals_file: Option<PathBuf>,
    pub admin_socket: PathBuf,
    /// `ADMIN_KEY` (a file named by `ADMIN_KEY_FILE` is read at start).
    pub admin_key: Option<AdminKey>,
    pub admin_key_file: Option<PathBuf>,
    pub metrics_open: bool,
    /// None: reload only on SIGHUP or `ctl reload`.
    pub reload_interval: Option<Duration>,
    /// An operator's key file (`AUTH_KEY_FILE_PATH`); a hydrated key.txt wins.
    pub operator_key_file: Option<PathBuf>,
    pub http_workers: usize,
    pub request_timeout: Duration,
    pub stream_idle_timeout: Duration,
    /// Hold a streamed completion's head until its answer begins.
    pub hold_stream_head: bool,
    pub max_body_bytes: u64,
    /// A request head must be whole within this (of the accept, or of its
    /// first byte on a kept-alive connection).
    pub header_timeout: Duration,
    /// An idle keep-alive connection closes this long after its last answer.
    pub keepalive_timeout: Duration,
    /// Open client connections at most, the probe reserve included.
    pub max_connections: usize,
    /// Completions one child serves at once (0: no limit).
    pub max_inflight_per_child: usize,
    /// Completions that may wait for a child at once.
    pub max_queue: usize,
    pub queue_timeout: Duration,
    /// How long a model asked for counts as in demand.
    pub demand_window: Duration,
    /// Webhook notifications (see `notify`).
    pub notify: NotifySettings,
    /// Budget days and key-limit alerts (see `budget`).
    pub budget: BudgetSettings,
    /// Consecutive counted 5xx answers that evict a child.
    pub consecutive_5xx_to_evict: u32,
    /// Where refreshed auth state goes back to (`AUTH_WRITEBACK`).
    pub writeback: WritebackMode,
    /// How often a running child's working copy is checked for a refresh.
    pub writeback_interval: Duration,
    pub leases: Leases,
    /// `START_STAGGER_S`: at most one child start per this across the
    /// fleet (zero: off).
    pub start_stagger: Duration,
    /// `CHILD_MAX_RSS_MB`, `CHILD_MAX_AGE_S`, `CHILD_RSS_SAMPLE_S`.
    pub recycle: RecycleLimits,
    /// `PROFILE_KEEPALIVE_S`, `PROFILE_MAX_RUNTIME_S`.
    pub keepalive: KeepaliveSettings,
    /// `PROFILE_PROXIES_FILE`: each profile's own outbound proxy.
    pub profile_proxies_file: Option<PathBuf>,
    pub hydrate_only: bool,
}

/// What the command line asked for.
#[derive(Debug)]
pub enum Invocation {
    Run(Box<Config>),
    Help,
    Version,
    /// `--config-reference`: print the settings reference (Markdown).
    Reference,
}

/// A setting that cannot be used, named so the operator knows what to fix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigError {
    Invalid {
        name: &'static str,
        value: String,
        expected: String,
    },
    Conflict(String),
    UnknownFlag(String),
    MissingValue(String),
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigError::Invalid {
                name,
                value,
                expected,
            } => write!(f, "invalid {name}={value:?}: expected {expected}"),
            ConfigError::Conflict(msg) => f.write_str(msg),
            ConfigError::UnknownFlag(flag) => {
                write!(f, "unknown option {flag}: see aistudioproxy --help")
            }
            ConfigError::MissingValue(flag) => write!(f, "option {flag} needs a value"),
        }
    }
}

impl std::error::Error for ConfigError {}

impl Config {
    /// Parse the real process environment and arguments.
    pub fn from_process() -> Result<Invocation, ConfigError> {
        let env: HashMap<String, String> = std::env::vars_os()
            .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
            .collect();
        let cwd = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("/"));
        Self::parse(std::env::args_os().skip(1).collect(), &env, &cwd)
    }

    /// Pure parser, so tests need no process state.
    pub fn parse(
        args: Vec<OsString>,
        env: &HashMap<String, String>,
        cwd: &Path,
    ) -> Result<Invocation, ConfigError> {
        let (flags, child_args, hydrate_only) = match read_args(args)? {
            Args::Run(flags, child_args, hydrate_only) => (flags, child_args, hydrate_only),
            Args::Help => return Ok(Invocation::Help),
            Args::Version => return Ok(Invocation::Version),
            Args::Reference => return Ok(Invocation::Reference),
        };
        let v = Values::read(&flags, env, cwd)?;
        let backend = match v.text("PROFILE_BACKEND").as_deref() {
            Some("s3") => Backend::S3,
            _ => Backend::Local,
        };
        let pool_size = v.int("POOL_SIZE") as usize;
        let port = v.int("COORDINATOR_PORT") as u16;
        let ports = port_plan(&v);
        check_ports(&ports, pool_size, port)?;
        let path = |name| v.path(name).unwrap_or_default();
        Ok(Invocation::Run(Box::new(Config {
            backend,
            local_profile_dir: path("LOCAL_PROFILE_DIR"),
            cache_dir: path("AUTH_PROFILE_CACHE_DIR"),
            s3: s3_settings(&v)?,
            host: v.text("COORDINATOR_HOST").unwrap_or_default(),
            port,
            ports,
            headless: v.flag("HEADLESS"),
            log_dir: path("COORDINATOR_LOG_DIR"),
            pool_size,
            ready_timeout: v.secs("READY_TIMEOUT_S"),
            stop_grace: v.secs("CHILD_STOP_GRACE_S"),
            child_command: child_command(&v, child_args)?,
            child_workdir: v.path("CHILD_WORKDIR").unwrap_or_else(|| cwd.to_path_buf()),
            operator_key_file: v.path("AUTH_KEY_FILE_PATH"),
            shutdown_drain: v.secs("SHUTDOWN_DRAIN_S"),
            book: book_settings(&v),
            signals_file: v.path("CHILD_SIGNALS_FILE"),
            admin_socket: v
                .path("ADMIN_SOCKET")
                .unwrap_or_else(|| path("AUTH_PROFILE_CACHE_DIR").join("admin.sock")),
            admin_key: v.text("ADMIN_KEY").and_then(AdminKey::new),
            admin_key_file: v.path("ADMIN_KEY_FILE"),
            metrics_open: v.flag("METRICS_OPEN"),
            reload_interval: v.secs_or_off("PROFILE_RELOAD_INTERVAL_S"),
            log_format: match v.text("LOG_FORMAT").as_deref() {
                Some("json") => LogFormat::Json,
                _ => LogFormat::Text,
            },
            http_workers: v.int("HTTP_WORKERS") as usize,
            request_timeout: v.secs("REQUEST_TIMEOUT_S"),
            stream_idle_timeout: v.secs("STREAM_IDLE_TIMEOUT_S"),
            hold_stream_head: v.flag("HOLD_STREAM_HEAD"),
            max_body_bytes: v.int("MAX_BODY_BYTES"),
            header_timeout: v.secs("HEADER_TIMEOUT_S"),
            keepalive_timeout: v.secs("KEEPALIVE_TIMEOUT_S"),
            max_connections: v.int("MAX_CONNECTIONS") as usize,
            max_inflight_per_child: v.int("MAX_INFLIGHT_PER_CHILD") as usize,
            max_queue: v.int("MAX_QUEUE") as usize,
            queue_timeout: v.secs("QUEUE_TIMEOUT_S"),
            demand_window: v.secs("MODEL_DEMAND_WINDOW_S"),
            notify: notify_settings(&v),
            budget: budget_settings(&v)?,
            consecutive_5xx_to_evict: v.int("CONSECUTIVE_5XX_TO_EVICT") as u32,
            writeback: writeback_mode(&v),
            writeback_interval: v.secs("AUTH_WRITEBACK_INTERVAL_S"),
            leases: leases(&v, backend)?,
            start_stagger: v.secs("START_STAGGER_S"),
            recycle: recycle_limits(&v),
            keepalive: KeepaliveSettings {
                every: v.secs_or_off("PROFILE_KEEPALIVE_S"),
                max_runtime: v.secs_or_off("PROFILE_MAX_RUNTIME_S"),
            },
            profile_proxies_file: v.path("PROFILE_PROXIES_FILE"),
            hydrate_only,
        })))
    }
}

/// What the command line says, before any value is checked.
enum Args {
    /// The flags given, the words after `--`, `--hydrate-only`.
    Run(HashMap<&'static str, String>, Option<Vec<String>>, bool),
    Help,
    Version,
    Reference,
}

fn read_args(args: Vec<OsString>) -> Result<Args, ConfigError> {
    let mut flags: HashMap<&'static str, String> = HashMap::new();
    let mut hydrate_only = false;
    let mut child_args: Option<Vec<String>> = None;
    let mut args = args.into_iter().map(|a| a.to_string_lossy().into_owned());
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--help" | "-h" => return Ok(Args::Help),
            "--version" | "-V" => return Ok(Args::Version),
            "--config-reference" => return Ok(Args::Reference),
            "--hydrate-only" => hydrate_only = true,
            "--" => {
                child_args = Some(args.by_ref().collect());
                break;
            }
            _ => {
                let (name, inline) = match arg.split_once('=') {
                    Some((n, v)) => (n.to_string(), Some(v.to_string())),
                    None => (arg.clone(), None),
                };
                let setting = SETTINGS
                    .iter()
                    .find(|s| s.flag() == name)
                    .ok_or_else(|| ConfigError::UnknownFlag(name.clone()))?;
                let value = match inline {
                    Some(v) => v,
                    None => args
                        .next()
                        .ok_or_else(|| ConfigError::MissingValue(name.clone()))?,
                };
                flags.insert(setting.env, value);
            }
        }
    }
    Ok(Args::Run(flags, child_args, hydrate_only))
}

/// The bucket's addressing, with the AWS variables as fallbacks.
fn s3_settings(v: &Values) -> Result<S3Settings, ConfigError> {
    let region = v
        .text("AUTH_PROFILE_S3_REGION")
        .or_else(|| v.outside("AWS_REGION"))
        .or_else(|| v.outside("AWS_DEFAULT_REGION"))
        .unwrap_or_else(|| "us-east-1".to_string());
    let endpoint = v
        .text("AUTH_PROFILE_S3_ENDPOINT")
        .or_else(|| v.outside("AWS_ENDPOINT_URL_S3"))
        .or_else(|| v.outside("AWS_ENDPOINT_URL"));
    if let Some(ep) = &endpoint {
        if !(ep.starts_with("http://") || ep.starts_with("https://")) {
            return Err(invalid(
                "AUTH_PROFILE_S3_ENDPOINT",
                ep,
                "a URL starting with http:// or https://",
            ));
        }
    }
    Ok(S3Settings {
        bucket: v.text("AUTH_PROFILE_S3_BUCKET"),
        prefix: v
            .text("AUTH_PROFILE_S3_PREFIX")
            .unwrap_or_default()
            .trim_matches('/')
            .to_string(),
        region,
        endpoint,
        download_threads: v.int("S3_DOWNLOAD_THREADS") as usize,
    })
}

fn port_plan(v: &Values) -> PortPlan {
    PortPlan {
        base_api: v.int("BASE_API_PORT") as u16,
        base_stream: v.int("BASE_STREAM_PORT") as u16,
        base_camoufox: v.int("BASE_CAMOUFOX_PORT") as u16,
        step: v.int("PORT_STEP") as u16,
    }
}

fn notify_settings(v: &Values) -> NotifySettings {
    NotifySettings {
        url: v.text("NOTIFY_WEBHOOK_URL").map(WebhookUrl::checked),
        url_file: v.path("NOTIFY_WEBHOOK_URL_FILE"),
        no_ready: v.secs("NOTIFY_NO_READY_S"),
        fold: v.secs("NOTIFY_FOLD_S"),
    }
}

fn budget_settings(v: &Values) -> Result<BudgetSettings, ConfigError> {
    // Its rules are found at start with the other files (`app::Files`):
    // reading the zone database is I/O, which the configuration does not do.
    let timezone = v.text("BUDGET_TIMEZONE").unwrap_or_default();
    // Test-only: moves the budget days' clock (see `budget`).
    let offset = match v.outside("AISP_TEST_CLOCK_OFFSET_S") {
        Some(s) => s.trim().parse::<i64>().map_err(|_| {
            invalid(
                "AISP_TEST_CLOCK_OFFSET_S",
                &s,
                "whole seconds (a test-only setting)",
            )
        })?,
        None => 0,
    };
    Ok(BudgetSettings {
        timezone,
        alert_percent: v.int("BUDGET_ALERT_PERCENT") as u8,
        clock_offset_s: offset,
        models_file: v.path("MODEL_BUDGETS_FILE"),
        fleet_alert_percent: v.int("BUDGET_FLEET_ALERT_PERCENT") as u8,
    })
}

fn recycle_limits(v: &Values) -> RecycleLimits {
    RecycleLimits {
        max_rss: Some(v.int("CHILD_MAX_RSS_MB") << 20).filter(|b| *b > 0),
        max_age: v.secs_or_off("CHILD_MAX_AGE_S"),
        sample: v.secs("CHILD_RSS_SAMPLE_S"),
    }
}

fn writeback_mode(v: &Values) -> WritebackMode {
    match v.text("AUTH_WRITEBACK").as_deref() {
        Some("all") => WritebackMode::All,
        Some("off") => WritebackMode::Off,
        _ => WritebackMode::S3,
    }
}

fn book_settings(v: &Values) -> BookSettings {
    BookSettings {
        empty_answers_to_rotate: v.int("EMPTY_ANSWERS_TO_ROTATE") as u32,
        cooldown: v.secs("PROFILE_COOLDOWN_S"),
        rate_limit_cooldown: v.secs("RATE_LIMIT_COOLDOWN_S"),
        demand_window: v.secs("MODEL_DEMAND_WINDOW_S"),
    }
}

/// The words after `--`, else `CHILD_COMMAND` split like shell words.
fn child_command(v: &Values, child_args: Option<Vec<String>>) -> Result<Vec<String>, ConfigError> {
    match child_args {
        Some(a) if !a.is_empty() => Ok(a),
        Some(_) => Err(ConfigError::Conflict(
            "nothing after --: give the child program, e.g. -- python3 launch_camoufox.py".into(),
        )),
        None => {
            let raw = v.text("CHILD_COMMAND").unwrap_or_default();
            let words = split_words(&raw).map_err(|why| invalid("CHILD_COMMAND", &raw, why))?;
            if words.is_empty() {
                return Err(invalid(
                    "CHILD_COMMAND",
                    &raw,
                    "a program and its leading arguments",
                ));
            }
            Ok(words)
        }
    }
}

/// `PROFILE_LEASES` and its settings, checked together: S3 only, a TTL
/// that fits the stop grace, a usable replica id.
fn leases(v: &Values, backend: Backend) -> Result<Leases, ConfigError> {
    if v.text("PROFILE_LEASES").as_deref() != Some("s3") {
        return Ok(Leases::Off);
    }
    if backend != Backend::S3 {
        return Err(ConfigError::Conflict(
            "PROFILE_LEASES=s3 needs PROFILE_BACKEND=s3: leases live in the profile bucket".into(),
        ));
    }
    let ttl = v.secs("LEASE_TTL_S");
    LeaseTiming {
        ttl,
        stop_grace: v.secs("CHILD_STOP_GRACE_S"),
    }
    .check()
    .map_err(ConfigError::Conflict)?;
    let replica = v.text("REPLICA_ID").or_else(|| v.outside("HOSTNAME"));
    let replica = match replica {
        Some(r) => r,
        None => host_name().ok_or_else(|| {
            ConfigError::Conflict(
                "PROFILE_LEASES=s3 needs a replica id: set REPLICA_ID (no host name found)".into(),
            )
        })?,
    };
    let ok = !replica.is_empty()
        && replica.len() <= 128
        && replica
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    if !ok {
        return Err(invalid(
            "REPLICA_ID",
            &replica,
            "1 to 128 letters, digits, '.', '_' or '-'",
        ));
    }
    Ok(Leases::S3 { ttl, replica })
}

/// The kernel's host name (a pod's name under Kubernetes).
fn host_name() -> Option<String> {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its length; gethostname writes at most
    // that many bytes.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return None;
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8(buf[..end].to_vec())
        .ok()
        .filter(|h| !h.is_empty())
}

/// Every port of every slot must be distinct, within 65535, and apart from
/// the coordinator's own port.
fn check_ports(plan: &PortPlan, pool_size: usize, coordinator: u16) -> Result<(), ConfigError> {
    let last = (pool_size as u32 - 1) * u32::from(plan.step);
    for (name, base) in [
        ("BASE_API_PORT", plan.base_api),
        ("BASE_STREAM_PORT", plan.base_stream),
        ("BASE_CAMOUFOX_PORT", plan.base_camoufox),
    ] {
        if u32::from(base) + last > 65535 {
            return Err(ConfigError::Conflict(format!(
                "{name}={base} with PORT_STEP={} and POOL_SIZE={pool_size} needs port {}, past 65535: lower {name}, PORT_STEP or POOL_SIZE",
                plan.step,
                u32::from(base) + last
            )));
        }
    }
    let mut seen: HashMap<u16, (&str, usize)> = HashMap::new();
    for i in 0..pool_size {
        let p = plan.slot(i);
        for (name, port) in [
            ("BASE_API_PORT", p.api),
            ("BASE_STREAM_PORT", p.stream),
            ("BASE_CAMOUFOX_PORT", p.camoufox),
        ] {
            if port == coordinator {
                return Err(ConfigError::Conflict(format!(
                    "port {port} of slot {i} ({name}) is COORDINATOR_PORT too: move COORDINATOR_PORT or {name}"
                )));
            }
            if let Some((other, j)) = seen.insert(port, (name, i)) {
                return Err(ConfigError::Conflict(format!(
                    "port {port} is used twice (slot {j} {other} and slot {i} {name}): spread BASE_API_PORT, BASE_STREAM_PORT and BASE_CAMOUFOX_PORT further apart or lower PORT_STEP/POOL_SIZE"
                )));
            }
        }
    }
    Ok(())
}

/// Split like a POSIX shell splits words (quotes and backslashes), without
/// expansion of any kind and without ever running a shell (the `shlex`
/// crate, which also drops a `#` comment at the start of a word).
pub fn split_words(s: &str) -> Result<Vec<String>, &'static str> {
    shlex::split(s).ok_or("words with balanced quotes and no trailing backslash")
}

#[cfg(test)]
mod tests;
