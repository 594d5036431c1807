//! Configuration: every setting the coordinator reads, parsed and validated
//! once at start from the environment and the command line, then passed by
//! reference. Nothing here touches the process environment after reading it,
//! and nothing here does I/O beyond resolving the working directory.
//!
//! Each setting has an environment variable and a long flag derived from it
//! (`BASE_API_PORT` <-> `--base-api-port`); a flag wins over the variable.

use std::collections::HashMap;
use std::ffi::OsString;
use std::fmt;
use std::path::{Path, PathBuf};
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
    pub log_format: crate::logging::Format,
    /// On SIGTERM, the longest wait for requests in flight and queued.
    pub shutdown_drain: Duration,
    pub book: crate::book::Settings,
    /// The log patterns read as account signs (`CHILD_SIGNALS_FILE`).
    pub signs: crate::process::logsigns::Signs,
    pub admin_socket: PathBuf,
    /// `ADMIN_KEY` (a file named by `ADMIN_KEY_FILE` is read at start).
    pub admin_key: Option<crate::admin::http::AdminKey>,
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
    pub notify: crate::notify::Settings,
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
    pub recycle: crate::recycle::Limits,
    /// `PROFILE_KEEPALIVE_S`, `PROFILE_MAX_RUNTIME_S`.
    pub keepalive: crate::keepalive::Settings,
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

/// One setting: its variable, default (as text, parsed like user input) and help.
struct Setting {
    env: &'static str,
    default: Option<&'static str>,
    help: &'static str,
}

const SETTINGS: &[Setting] = &[
    Setting {
        env: "PROFILE_BACKEND",
        default: Some("local"),
        help: "where profiles come from: local or s3",
    },
    Setting {
        env: "LOCAL_PROFILE_DIR",
        default: Some("auth_profiles/active"),
        help: "directory of *.json profiles (key.txt is read from its parent)",
    },
    Setting {
        env: "AUTH_PROFILE_CACHE_DIR",
        default: Some("/tmp/auth_profiles"),
        help: "where profiles are staged (active/) with key.txt",
    },
    Setting {
        env: "AUTH_PROFILE_S3_BUCKET",
        default: None,
        help: "bucket holding <prefix>/active/*.json and <prefix>/key.txt",
    },
    Setting {
        env: "AUTH_PROFILE_S3_PREFIX",
        default: None,
        help: "key prefix inside the bucket",
    },
    Setting {
        env: "AUTH_PROFILE_S3_REGION",
        default: None,
        help: "bucket region (else AWS_REGION, AWS_DEFAULT_REGION, us-east-1)",
    },
    Setting {
        env: "AUTH_PROFILE_S3_ENDPOINT",
        default: None,
        help: "S3-compatible endpoint URL, path-style (else AWS_ENDPOINT_URL_S3, AWS_ENDPOINT_URL)",
    },
    Setting {
        env: "S3_DOWNLOAD_THREADS",
        default: Some("8"),
        help: "parallel profile downloads",
    },
    Setting {
        env: "COORDINATOR_HOST",
        default: Some("0.0.0.0"),
        help: "address the coordinator listens on",
    },
    Setting {
        env: "COORDINATOR_PORT",
        default: Some("2048"),
        help: "port of the health endpoints and the OpenAI API",
    },
    Setting {
        env: "BASE_API_PORT",
        default: Some("3100"),
        help: "API port of slot 0",
    },
    Setting {
        env: "BASE_STREAM_PORT",
        default: Some("3200"),
        help: "stream port of slot 0",
    },
    Setting {
        env: "BASE_CAMOUFOX_PORT",
        default: Some("9222"),
        help: "Camoufox debug port of slot 0",
    },
    Setting {
        env: "PORT_STEP",
        default: Some("1"),
        help: "port increment between slots",
    },
    Setting {
        env: "HEADLESS",
        default: Some("true"),
        help: "pass --headless to children: true or false",
    },
    Setting {
        env: "COORDINATOR_LOG_DIR",
        default: Some("logs/coordinator"),
        help: "directory of per-profile child logs",
    },
    Setting {
        env: "POOL_SIZE",
        default: Some("2"),
        help: "number of child slots",
    },
    Setting {
        env: "READY_TIMEOUT_S",
        default: Some("60"),
        help: "seconds a child may take to become ready",
    },
    Setting {
        env: "CHILD_STOP_GRACE_S",
        default: Some("10"),
        help: "seconds between SIGTERM and SIGKILL of a child's group",
    },
    Setting {
        env: "CHILD_COMMAND",
        default: Some("python launch_camoufox.py"),
        help: "child program and leading arguments, split like shell words (no shell)",
    },
    Setting {
        env: "CHILD_WORKDIR",
        default: None,
        help: "working directory of children (default: current directory)",
    },
    Setting {
        env: "LOG_FORMAT",
        default: Some("text"),
        help: "the coordinator's log on stderr: text, or json (one object per line)",
    },
    Setting {
        env: "SHUTDOWN_DRAIN_S",
        default: Some("30"),
        help: "on SIGTERM, how long requests in flight and queued may take before children are stopped (0: none)",
    },
    Setting {
        env: "EMPTY_ANSWERS_TO_ROTATE",
        default: Some("2"),
        help: "empty answers in a row that mark a profile exhausted (rotated out, cooled down)",
    },
    Setting {
        env: "PROFILE_COOLDOWN_S",
        default: Some("3600"),
        help: "how long an exhausted profile rests when the child sent no Retry-After",
    },
    Setting {
        env: "RATE_LIMIT_COOLDOWN_S",
        default: Some("300"),
        help: "how long a profile rests when its child's log says rate limit",
    },
    Setting {
        env: "CHILD_SIGNALS_FILE",
        default: None,
        help: "more log patterns for login needed, quota and rate limit (lines `quota: <text>`)",
    },
    Setting {
        env: "ADMIN_SOCKET",
        default: None,
        help: "the admin socket (default: AUTH_PROFILE_CACHE_DIR/admin.sock); see aistudioproxy ctl",
    },
    Setting {
        env: "ADMIN_KEY",
        default: None,
        help: "enables /admin/ on the coordinator port with this key (never logged)",
    },
    Setting {
        env: "ADMIN_KEY_FILE",
        default: None,
        help: "like ADMIN_KEY, the key being the file's first line",
    },
    Setting {
        env: "METRICS_OPEN",
        default: Some("false"),
        help: "serve /metrics without an API key even when API keys are configured",
    },
    Setting {
        env: "PROFILE_RELOAD_INTERVAL_S",
        default: Some("0"),
        help: "hydrate again and apply the changes every this many seconds (0: only on SIGHUP or ctl reload)",
    },
    Setting {
        env: "AUTH_KEY_FILE_PATH",
        default: None,
        help: "your own API key file, used (by us and the children) when no key.txt is hydrated",
    },
    Setting {
        env: "HTTP_WORKERS",
        default: Some("8"),
        help: "threads accepting HTTP requests",
    },
    Setting {
        env: "REQUEST_TIMEOUT_S",
        default: Some("600"),
        help: "overall deadline of one proxied request",
    },
    Setting {
        env: "STREAM_IDLE_TIMEOUT_S",
        default: Some("120"),
        help: "longest silence of a streaming child before it is cut off",
    },
    Setting {
        env: "HOLD_STREAM_HEAD",
        default: Some("true"),
        help: "hold a streamed answer's head until it carries content, so an empty one is served by another account: true or false",
    },
    Setting {
        env: "MAX_INFLIGHT_PER_CHILD",
        default: Some("1"),
        help: "completions one child serves at once; more wait in the coordinator's queue (0: no limit)",
    },
    Setting {
        env: "MAX_QUEUE",
        default: Some("512"),
        help: "completions that may wait for a free child; past it, 503 queue_full",
    },
    Setting {
        env: "NOTIFY_WEBHOOK_URL",
        default: None,
        help: "POST a JSON message (with a text field) here when an operator must act: a login needed, a profile exhausted, a crash loop, a lease lost, no ready child (a secret: never logged)",
    },
    Setting {
        env: "NOTIFY_WEBHOOK_URL_FILE",
        default: None,
        help: "like NOTIFY_WEBHOOK_URL, the URL being the file's first line",
    },
    Setting {
        env: "NOTIFY_NO_READY_S",
        default: Some("300"),
        help: "notify when no child has been ready for this many seconds",
    },
    Setting {
        env: "NOTIFY_FOLD_S",
        default: Some("600"),
        help: "repeats of a notification (same kind and profile) within this many seconds are folded into one later message with a count",
    },
    Setting {
        env: "QUEUE_TIMEOUT_S",
        default: Some("120"),
        help: "longest wait for a free child; past it, 503 queue_timeout",
    },
    Setting {
        env: "MODEL_DEMAND_WINDOW_S",
        default: Some("600"),
        help: "a model asked for within this many seconds is in demand: a profile cooling for every model in demand is rotated out",
    },
    Setting {
        env: "CONSECUTIVE_5XX_TO_EVICT",
        default: Some("3"),
        help: "answers of 500 or other non-gateway 5xx in a row that evict a child",
    },
    Setting {
        env: "AUTH_WRITEBACK",
        default: Some("s3"),
        help: "write children's refreshed auth state back to the profile source: s3, all (local too) or off",
    },
    Setting {
        env: "AUTH_WRITEBACK_INTERVAL_S",
        default: Some("600"),
        help: "seconds between write-back checks of a running child's profile (also at its stop)",
    },
    Setting {
        env: "PROFILE_LEASES",
        default: Some("off"),
        help: "off, or s3: start a profile only while holding its lease in <prefix>/leases/ (several coordinators over one bucket; S3 backend only)",
    },
    Setting {
        env: "LEASE_TTL_S",
        default: Some("60"),
        help: "lifetime of a profile lease, renewed every third of it; a dead replica's profiles move after about this long",
    },
    Setting {
        env: "REPLICA_ID",
        default: None,
        help: "this coordinator's name in lease objects, unique among the replicas (default: the host name)",
    },
    Setting {
        env: "START_STAGGER_S",
        default: Some("0"),
        help: "at most one child start per this many seconds across the fleet, the first at once (decimals allowed; 0: off)",
    },
    Setting {
        env: "CHILD_MAX_RSS_MB",
        default: Some("0"),
        help: "drain and restart a child whose process tree's resident memory passes this many MiB (0: off)",
    },
    Setting {
        env: "CHILD_MAX_AGE_S",
        default: Some("0"),
        help: "drain and restart a child this many seconds after its start (0: off)",
    },
    Setting {
        env: "CHILD_RSS_SAMPLE_S",
        default: Some("5"),
        help: "seconds between measurements of a running child's process tree memory",
    },
    Setting {
        env: "PROFILE_KEEPALIVE_S",
        default: Some("43200"),
        help: "give a profile idle this many seconds (since its last run, or since first seen) a short turn on a slot so its login is refreshed and written back; one turn at a time, never while requests wait (0: off)",
    },
    Setting {
        env: "PROFILE_MAX_RUNTIME_S",
        default: Some("0"),
        help: "drain and rotate out a profile that has held its slot this many seconds while another profile waits its turn (0: off)",
    },
    Setting {
        env: "PROFILE_PROXIES_FILE",
        default: None,
        help: "file of 'profile-name proxy-URL' lines: each profile's browser uses its own proxy",
    },
    Setting {
        env: "MAX_BODY_BYTES",
        default: Some("52428800"),
        help: "largest accepted request body",
    },
    Setting {
        env: "HEADER_TIMEOUT_S",
        default: Some("30"),
        help: "a request head must arrive whole within this (of the connection, or of its first byte); else the connection is closed",
    },
    Setting {
        env: "KEEPALIVE_TIMEOUT_S",
        default: Some("75"),
        help: "an idle keep-alive connection is closed this long after its last answer",
    },
    Setting {
        env: "MAX_CONNECTIONS",
        default: Some("4096"),
        help: "open client connections at most (the last eighth, up to 16, only for /live, /ready, /health); more are closed at once",
    },
];

fn flag_of(env: &str) -> String {
    format!("--{}", env.to_ascii_lowercase().replace('_', "-"))
}

/// The `--help` text, generated from the settings table so it cannot drift.
pub fn help_text() -> String {
    let mut out = String::from(concat!(
        "aistudioproxy ",
        env!("CARGO_PKG_VERSION"),
        ": supervises a pool of AI Studio proxy children and serves their OpenAI API\n\n",
        "Usage: aistudioproxy [OPTIONS] [-- CHILD_PROGRAM [ARGS...]]\n\n",
        "  --hydrate-only   stage profiles and key.txt into the cache, print a JSON summary, exit\n",
        "  --help           this text\n",
        "  --version        the version\n\n",
        "Settings (flag or environment variable; the flag wins):\n",
    ));
    for s in SETTINGS {
        let default = s
            .default
            .map(|d| format!(" [default: {d}]"))
            .unwrap_or_default();
        out.push_str(&format!(
            "  {:<28} {:<26} {}{}\n",
            flag_of(s.env),
            s.env,
            s.help,
            default
        ));
    }
    out.push_str("\nRUST_LOG sets the log filter (default info,s3=error). Logs go to stderr.\n");
    out
}

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
        let mut flags: HashMap<&'static str, String> = HashMap::new();
        let mut hydrate_only = false;
        let mut child_args: Option<Vec<String>> = None;
        let mut args = args.into_iter().map(|a| a.to_string_lossy().into_owned());
        while let Some(arg) = args.next() {
            match arg.as_str() {
                "--help" | "-h" => return Ok(Invocation::Help),
                "--version" | "-V" => return Ok(Invocation::Version),
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
                        .find(|s| flag_of(s.env) == name)
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

        let get = |name: &'static str| -> Option<String> {
            if let Some(v) = flags.get(name) {
                return Some(v.clone());
            }
            if let Some(v) = env.get(name).filter(|v| !v.is_empty()) {
                return Some(v.clone());
            }
            SETTINGS
                .iter()
                .find(|s| s.env == name)
                .and_then(|s| s.default.map(str::to_string))
        };
        let need = |name: &'static str| get(name).unwrap_or_default();

        let backend = match need("PROFILE_BACKEND").to_ascii_lowercase().as_str() {
            "local" => Backend::Local,
            "s3" => Backend::S3,
            _ => {
                return Err(invalid(
                    "PROFILE_BACKEND",
                    &need("PROFILE_BACKEND"),
                    "local or s3",
                ))
            }
        };
        let abs = |p: String| -> PathBuf {
            let p = PathBuf::from(p);
            if p.is_absolute() {
                p
            } else {
                cwd.join(p)
            }
        };

        let region = get("AUTH_PROFILE_S3_REGION")
            .or_else(|| env.get("AWS_REGION").filter(|v| !v.is_empty()).cloned())
            .or_else(|| {
                env.get("AWS_DEFAULT_REGION")
                    .filter(|v| !v.is_empty())
                    .cloned()
            })
            .unwrap_or_else(|| "us-east-1".to_string());
        let endpoint = get("AUTH_PROFILE_S3_ENDPOINT")
            .or_else(|| {
                env.get("AWS_ENDPOINT_URL_S3")
                    .filter(|v| !v.is_empty())
                    .cloned()
            })
            .or_else(|| {
                env.get("AWS_ENDPOINT_URL")
                    .filter(|v| !v.is_empty())
                    .cloned()
            });
        if let Some(ep) = &endpoint {
            if !(ep.starts_with("http://") || ep.starts_with("https://")) {
                return Err(invalid(
                    "AUTH_PROFILE_S3_ENDPOINT",
                    ep,
                    "a URL starting with http:// or https://",
                ));
            }
        }
        let s3 = S3Settings {
            bucket: get("AUTH_PROFILE_S3_BUCKET"),
            prefix: get("AUTH_PROFILE_S3_PREFIX")
                .unwrap_or_default()
                .trim_matches('/')
                .to_string(),
            region,
            endpoint,
            download_threads: parse_num("S3_DOWNLOAD_THREADS", &need("S3_DOWNLOAD_THREADS"), 1, 64)?
                as usize,
        };

        let port = |name: &'static str| -> Result<u16, ConfigError> {
            Ok(parse_num(name, &need(name), 1, 65535)? as u16)
        };
        let ports = PortPlan {
            base_api: port("BASE_API_PORT")?,
            base_stream: port("BASE_STREAM_PORT")?,
            base_camoufox: port("BASE_CAMOUFOX_PORT")?,
            step: parse_num("PORT_STEP", &need("PORT_STEP"), 1, 65535)? as u16,
        };
        let pool_size = parse_num("POOL_SIZE", &need("POOL_SIZE"), 1, 256)? as usize;
        let coordinator_port =
            parse_num("COORDINATOR_PORT", &need("COORDINATOR_PORT"), 0, 65535)? as u16;
        check_ports(&ports, pool_size, coordinator_port)?;

        let switch = |name: &'static str| -> Result<bool, ConfigError> {
            match need(name).to_ascii_lowercase().as_str() {
                "true" | "1" | "yes" | "on" => Ok(true),
                "false" | "0" | "no" | "off" => Ok(false),
                _ => Err(invalid(name, &need(name), "true or false")),
            }
        };
        let headless = switch("HEADLESS")?;

        let child_command = match child_args {
            Some(a) if !a.is_empty() => a,
            Some(_) => {
                return Err(ConfigError::Conflict(
                    "nothing after --: give the child program, e.g. -- python3 launch_camoufox.py"
                        .into(),
                ))
            }
            None => {
                let raw = need("CHILD_COMMAND");
                let words = split_words(&raw).map_err(|why| invalid("CHILD_COMMAND", &raw, why))?;
                if words.is_empty() {
                    return Err(invalid(
                        "CHILD_COMMAND",
                        &raw,
                        "a program and its leading arguments",
                    ));
                }
                words
            }
        };

        let host = need("COORDINATOR_HOST");
        if host.parse::<std::net::IpAddr>().is_err() && host != "localhost" {
            return Err(invalid(
                "COORDINATOR_HOST",
                &host,
                "an IP address such as 0.0.0.0 or 127.0.0.1",
            ));
        }
        let secs = |name: &'static str, min: u64, max: u64| -> Result<Duration, ConfigError> {
            Ok(Duration::from_secs(parse_num(name, &need(name), min, max)?))
        };

        Ok(Invocation::Run(Box::new(Config {
            backend,
            local_profile_dir: abs(need("LOCAL_PROFILE_DIR")),
            cache_dir: abs(need("AUTH_PROFILE_CACHE_DIR")),
            s3,
            host,
            port: coordinator_port,
            ports,
            headless,
            log_dir: abs(need("COORDINATOR_LOG_DIR")),
            pool_size,
            ready_timeout: secs("READY_TIMEOUT_S", 1, 86_400)?,
            stop_grace: secs("CHILD_STOP_GRACE_S", 0, 3_600)?,
            child_command,
            child_workdir: get("CHILD_WORKDIR")
                .map(abs)
                .unwrap_or_else(|| cwd.to_path_buf()),
            operator_key_file: get("AUTH_KEY_FILE_PATH").map(abs),
            shutdown_drain: secs("SHUTDOWN_DRAIN_S", 0, 3_600)?,
            book: crate::book::Settings {
                empty_answers_to_rotate: parse_num(
                    "EMPTY_ANSWERS_TO_ROTATE",
                    &need("EMPTY_ANSWERS_TO_ROTATE"),
                    1,
                    1000,
                )? as u32,
                cooldown: secs("PROFILE_COOLDOWN_S", 1, 30 * 86_400)?,
                rate_limit_cooldown: secs("RATE_LIMIT_COOLDOWN_S", 1, 30 * 86_400)?,
                demand_window: secs("MODEL_DEMAND_WINDOW_S", 1, 30 * 86_400)?,
            },
            signs: match get("CHILD_SIGNALS_FILE") {
                Some(f) => crate::process::logsigns::Signs::load(&abs(f))
                    .map_err(|e| ConfigError::Conflict(e.to_string()))?,
                None => Default::default(),
            },
            admin_socket: get("ADMIN_SOCKET")
                .map(abs)
                .unwrap_or_else(|| abs(need("AUTH_PROFILE_CACHE_DIR")).join("admin.sock")),
            admin_key: get("ADMIN_KEY").and_then(crate::admin::http::AdminKey::new),
            admin_key_file: get("ADMIN_KEY_FILE").map(abs),
            metrics_open: switch("METRICS_OPEN")?,
            reload_interval: match parse_num(
                "PROFILE_RELOAD_INTERVAL_S",
                &need("PROFILE_RELOAD_INTERVAL_S"),
                0,
                30 * 86_400,
            )? {
                0 => None,
                n => Some(Duration::from_secs(n)),
            },
            log_format: match need("LOG_FORMAT").to_ascii_lowercase().as_str() {
                "text" => crate::logging::Format::Text,
                "json" => crate::logging::Format::Json,
                _ => return Err(invalid("LOG_FORMAT", &need("LOG_FORMAT"), "text or json")),
            },
            http_workers: parse_num("HTTP_WORKERS", &need("HTTP_WORKERS"), 2, 256)? as usize,
            request_timeout: secs("REQUEST_TIMEOUT_S", 1, 86_400)?,
            stream_idle_timeout: secs("STREAM_IDLE_TIMEOUT_S", 1, 86_400)?,
            hold_stream_head: switch("HOLD_STREAM_HEAD")?,
            max_body_bytes: parse_num("MAX_BODY_BYTES", &need("MAX_BODY_BYTES"), 1024, 1 << 34)?,
            header_timeout: secs("HEADER_TIMEOUT_S", 1, 3_600)?,
            keepalive_timeout: secs("KEEPALIVE_TIMEOUT_S", 1, 3_600)?,
            max_connections: parse_num("MAX_CONNECTIONS", &need("MAX_CONNECTIONS"), 8, 1_000_000)?
                as usize,
            max_inflight_per_child: parse_num(
                "MAX_INFLIGHT_PER_CHILD",
                &need("MAX_INFLIGHT_PER_CHILD"),
                0,
                100_000,
            )? as usize,
            max_queue: parse_num("MAX_QUEUE", &need("MAX_QUEUE"), 0, 1_000_000)? as usize,
            queue_timeout: secs("QUEUE_TIMEOUT_S", 1, 86_400)?,
            demand_window: secs("MODEL_DEMAND_WINDOW_S", 1, 30 * 86_400)?,
            notify: crate::notify::Settings {
                url: match get("NOTIFY_WEBHOOK_URL") {
                    Some(u) => Some(crate::notify::WebhookUrl::new(&u).map_err(|why| {
                        invalid("NOTIFY_WEBHOOK_URL", "(not shown: a secret)", why)
                    })?),
                    None => None,
                },
                url_file: get("NOTIFY_WEBHOOK_URL_FILE").map(abs),
                no_ready: secs("NOTIFY_NO_READY_S", 1, 86_400)?,
                fold: secs("NOTIFY_FOLD_S", 0, 86_400)?,
            },
            consecutive_5xx_to_evict: parse_num(
                "CONSECUTIVE_5XX_TO_EVICT",
                &need("CONSECUTIVE_5XX_TO_EVICT"),
                1,
                1_000,
            )? as u32,
            writeback: match need("AUTH_WRITEBACK").to_ascii_lowercase().as_str() {
                "s3" => WritebackMode::S3,
                "all" => WritebackMode::All,
                "off" => WritebackMode::Off,
                _ => {
                    return Err(invalid(
                        "AUTH_WRITEBACK",
                        &need("AUTH_WRITEBACK"),
                        "s3, all or off",
                    ))
                }
            },
            writeback_interval: secs("AUTH_WRITEBACK_INTERVAL_S", 1, 86_400)?,
            leases: leases(
                &need("PROFILE_LEASES"),
                backend,
                secs("LEASE_TTL_S", 3, 86_400)?,
                secs("CHILD_STOP_GRACE_S", 0, 3_600)?,
                get("REPLICA_ID")
                    .or_else(|| env.get("HOSTNAME").filter(|h| !h.is_empty()).cloned()),
            )?,
            start_stagger: parse_decimal_secs("START_STAGGER_S", &need("START_STAGGER_S"), 3_600)?,
            recycle: crate::recycle::Limits {
                max_rss: match parse_num("CHILD_MAX_RSS_MB", &need("CHILD_MAX_RSS_MB"), 0, 1 << 24)?
                {
                    0 => None,
                    mb => Some(mb << 20),
                },
                max_age: match secs("CHILD_MAX_AGE_S", 0, 365 * 86_400)? {
                    d if d.is_zero() => None,
                    d => Some(d),
                },
                sample: secs("CHILD_RSS_SAMPLE_S", 1, 3_600)?,
            },
            keepalive: crate::keepalive::Settings {
                every: match secs("PROFILE_KEEPALIVE_S", 0, 365 * 86_400)? {
                    d if d.is_zero() => None,
                    d => Some(d),
                },
                max_runtime: match secs("PROFILE_MAX_RUNTIME_S", 0, 365 * 86_400)? {
                    d if d.is_zero() => None,
                    d => Some(d),
                },
            },
            profile_proxies_file: get("PROFILE_PROXIES_FILE").map(abs),
            hydrate_only,
        })))
    }
}

/// `PROFILE_LEASES` and its settings, checked together: S3 only, a TTL
/// that fits the stop grace, a usable replica id.
fn leases(
    mode: &str,
    backend: Backend,
    ttl: Duration,
    stop_grace: Duration,
    replica: Option<String>,
) -> Result<Leases, ConfigError> {
    match mode.to_ascii_lowercase().as_str() {
        "off" | "" => return Ok(Leases::Off),
        "s3" => {}
        _ => return Err(invalid("PROFILE_LEASES", mode, "off or s3")),
    }
    if backend != Backend::S3 {
        return Err(ConfigError::Conflict(
            "PROFILE_LEASES=s3 needs PROFILE_BACKEND=s3: leases live in the profile bucket".into(),
        ));
    }
    crate::fleet::lease::Timing { ttl, stop_grace }
        .check()
        .map_err(ConfigError::Conflict)?;
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

fn invalid(name: &'static str, value: &str, expected: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        name,
        value: value.to_string(),
        expected: expected.into(),
    }
}

fn parse_num(name: &'static str, value: &str, min: u64, max: u64) -> Result<u64, ConfigError> {
    match value.trim().parse::<u64>() {
        Ok(n) if (min..=max).contains(&n) => Ok(n),
        _ => Err(invalid(
            name,
            value,
            format!("an integer from {min} to {max}"),
        )),
    }
}

/// Seconds written as an integer or with decimals (`2`, `1.5`, `0.25`), at
/// millisecond precision, from 0 to `max`.
fn parse_decimal_secs(name: &'static str, value: &str, max: u64) -> Result<Duration, ConfigError> {
    let bad = || {
        invalid(
            name,
            value,
            format!("seconds from 0 to {max}, such as 2 or 1.5"),
        )
    };
    let v = value.trim();
    let (whole, frac) = v.split_once('.').unwrap_or((v, ""));
    let digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    if whole.is_empty() || !digits(whole) || !digits(frac) || (v.contains('.') && frac.is_empty()) {
        return Err(bad());
    }
    let whole: u64 = whole.parse().map_err(|_| bad())?;
    // Milliseconds: the first three decimals, the rest ignored.
    let ms: u64 = format!("{:0<3}", &frac[..frac.len().min(3)])
        .parse()
        .map_err(|_| bad())?;
    let d = Duration::from_secs(whole) + Duration::from_millis(ms);
    if d > Duration::from_secs(max) {
        return Err(bad());
    }
    Ok(d)
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
mod tests {
    use super::*;

    fn parse(args: &[&str], env: &[(&str, &str)]) -> Result<Invocation, ConfigError> {
        let env = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Config::parse(
            args.iter().map(OsString::from).collect(),
            &env,
            Path::new("/srv"),
        )
    }

    fn run(args: &[&str], env: &[(&str, &str)]) -> Config {
        match parse(args, env).unwrap() {
            Invocation::Run(c) => *c,
            other => panic!("expected a run, got {other:?}"),
        }
    }

    fn err(args: &[&str], env: &[(&str, &str)]) -> String {
        parse(args, env).unwrap_err().to_string()
    }

    #[test]
    fn defaults_follow_the_spec() {
        let c = run(&[], &[]);
        assert_eq!(c.backend, Backend::Local);
        assert_eq!(
            c.local_profile_dir,
            PathBuf::from("/srv/auth_profiles/active")
        );
        assert_eq!(c.cache_dir, PathBuf::from("/tmp/auth_profiles"));
        assert_eq!((c.host.as_str(), c.port), ("0.0.0.0", 2048));
        assert_eq!(
            c.ports.slot(1),
            Ports {
                api: 3101,
                stream: 3201,
                camoufox: 9223
            }
        );
        assert!(c.headless);
        assert!(c.hold_stream_head);
        assert_eq!(c.pool_size, 2);
        assert_eq!(c.ready_timeout, Duration::from_secs(60));
        assert_eq!(c.child_command, vec!["python", "launch_camoufox.py"]);
        assert_eq!(c.s3.region, "us-east-1");
        assert_eq!(c.log_dir, PathBuf::from("/srv/logs/coordinator"));
        assert_eq!(c.header_timeout, Duration::from_secs(30));
        assert_eq!(c.keepalive_timeout, Duration::from_secs(75));
        assert_eq!(c.max_connections, 4096);
        assert_eq!(c.max_inflight_per_child, 1);
        assert_eq!(c.max_queue, 512);
        assert_eq!(c.queue_timeout, Duration::from_secs(120));
        assert_eq!(c.consecutive_5xx_to_evict, 3);
        assert_eq!(c.writeback, WritebackMode::S3);
        assert_eq!(c.writeback_interval, Duration::from_secs(600));
    }

    #[test]
    fn gentle_settings_parse_and_refuse_in_one_line() {
        let c = run(&[], &[]);
        assert_eq!(c.start_stagger, Duration::ZERO);
        assert_eq!(c.recycle, crate::recycle::Limits::default());
        assert_eq!(c.profile_proxies_file, None);
        assert_eq!(c.keepalive.every, Some(Duration::from_secs(43_200)));
        assert_eq!(c.keepalive.max_runtime, None);
        let k = run(
            &["--profile-keepalive-s", "0"],
            &[("PROFILE_MAX_RUNTIME_S", "7200")],
        )
        .keepalive;
        assert_eq!(
            (k.every, k.max_runtime),
            (None, Some(Duration::from_secs(7200)))
        );
        assert_eq!(
            err(&[], &[("PROFILE_KEEPALIVE_S", "12h")]),
            "invalid PROFILE_KEEPALIVE_S=\"12h\": expected an integer from 0 to 31536000"
        );
        let c = run(
            &["--start-stagger-s", "1.5", "--child-max-rss-mb=800"],
            &[
                ("CHILD_MAX_AGE_S", "3600"),
                ("CHILD_RSS_SAMPLE_S", "2"),
                ("PROFILE_PROXIES_FILE", "proxies.txt"),
            ],
        );
        assert_eq!(c.start_stagger, Duration::from_millis(1500));
        assert_eq!(c.recycle.max_rss, Some(800 * 1024 * 1024));
        assert_eq!(c.recycle.max_age, Some(Duration::from_secs(3600)));
        assert_eq!(c.recycle.sample, Duration::from_secs(2));
        assert_eq!(
            c.profile_proxies_file,
            Some(PathBuf::from("/srv/proxies.txt"))
        );
        for (v, ms) in [
            ("0", 0),
            ("2", 2000),
            ("0.25", 250),
            ("3.14159", 3141),
            ("10.0", 10_000),
        ] {
            assert_eq!(
                run(&[], &[("START_STAGGER_S", v)]).start_stagger,
                Duration::from_millis(ms),
                "{v}"
            );
        }
        for v in ["-1", "1.", ".5", "1,5", "soon", "3601", "1e3"] {
            assert_eq!(
                err(&[], &[("START_STAGGER_S", v)]),
                format!("invalid START_STAGGER_S={v:?}: expected seconds from 0 to 3600, such as 2 or 1.5"),
            );
        }
        assert_eq!(
            err(&[], &[("CHILD_RSS_SAMPLE_S", "0")]),
            "invalid CHILD_RSS_SAMPLE_S=\"0\": expected an integer from 1 to 3600"
        );
        assert_eq!(
            err(&[], &[("CHILD_MAX_RSS_MB", "lots")]),
            "invalid CHILD_MAX_RSS_MB=\"lots\": expected an integer from 0 to 16777216"
        );
    }

    #[test]
    fn connection_limits_are_read_and_checked() {
        let c = run(
            &["--header-timeout-s", "1", "--max-connections=50"],
            &[("KEEPALIVE_TIMEOUT_S", "2")],
        );
        assert_eq!(c.header_timeout, Duration::from_secs(1));
        assert_eq!(c.keepalive_timeout, Duration::from_secs(2));
        assert_eq!(c.max_connections, 50);
        assert_eq!(
            err(&[], &[("HEADER_TIMEOUT_S", "0")]),
            "invalid HEADER_TIMEOUT_S=\"0\": expected an integer from 1 to 3600"
        );
        assert_eq!(
            err(&[], &[("KEEPALIVE_TIMEOUT_S", "soon")]),
            "invalid KEEPALIVE_TIMEOUT_S=\"soon\": expected an integer from 1 to 3600"
        );
        assert_eq!(
            err(&[], &[("MAX_CONNECTIONS", "7")]),
            "invalid MAX_CONNECTIONS=\"7\": expected an integer from 8 to 1000000"
        );
    }

    #[test]
    fn writeback_settings_parse_and_refuse_in_one_line() {
        let c = run(
            &["--auth-writeback", "ALL"],
            &[("AUTH_WRITEBACK_INTERVAL_S", "30")],
        );
        assert_eq!(c.writeback, WritebackMode::All);
        assert_eq!(c.writeback_interval, Duration::from_secs(30));
        assert_eq!(
            run(&[], &[("AUTH_WRITEBACK", "off")]).writeback,
            WritebackMode::Off
        );
        assert_eq!(
            err(&[], &[("AUTH_WRITEBACK", "local")]),
            "invalid AUTH_WRITEBACK=\"local\": expected s3, all or off"
        );
        assert_eq!(
            err(&["--auth-writeback-interval-s=0"], &[]),
            "invalid AUTH_WRITEBACK_INTERVAL_S=\"0\": expected an integer from 1 to 86400"
        );
    }

    #[test]
    fn leases_need_s3_a_fitting_ttl_and_a_replica_id() {
        assert_eq!(run(&[], &[]).leases, Leases::Off);
        let s3 = [
            ("PROFILE_BACKEND", "s3"),
            ("PROFILE_LEASES", "s3"),
            ("REPLICA_ID", "pod-1"),
        ];
        assert_eq!(
            run(&[], &s3).leases,
            Leases::S3 {
                ttl: Duration::from_secs(60),
                replica: "pod-1".into()
            }
        );
        let e = err(&[], &[("PROFILE_LEASES", "s3")]);
        assert!(e.contains("needs PROFILE_BACKEND=s3"), "{e}");
        let e = err(&[], &[s3[0], s3[1], s3[2], ("LEASE_TTL_S", "20")]);
        assert!(e.contains("LEASE_TTL_S=20 is too short"), "{e}");
        let e = err(&[], &[s3[0], s3[1], ("REPLICA_ID", "a/b")]);
        assert!(e.contains("REPLICA_ID"), "{e}");
        let e = err(&[], &[("PROFILE_LEASES", "yes")]);
        assert!(e.contains("off or s3"), "{e}");
        // The host name when no REPLICA_ID is given.
        match run(&[], &[s3[0], s3[1], ("HOSTNAME", "web-7")]).leases {
            Leases::S3 { replica, .. } => assert_eq!(replica, "web-7"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn flags_win_over_environment() {
        let c = run(
            &["--base-api-port", "4000", "--port-step=10"],
            &[("BASE_API_PORT", "5000"), ("POOL_SIZE", "3")],
        );
        assert_eq!(c.ports.base_api, 4000);
        assert_eq!(c.ports.slot(2).api, 4020);
        assert_eq!(c.pool_size, 3);
    }

    #[test]
    fn child_command_after_double_dash() {
        let c = run(
            &["--", "python3", "/opt/aisp/launch camoufox.py"],
            &[("CHILD_COMMAND", "x")],
        );
        assert_eq!(
            c.child_command,
            vec!["python3", "/opt/aisp/launch camoufox.py"]
        );
    }

    #[test]
    fn region_and_endpoint_fall_back_to_aws_variables() {
        let c = run(
            &[],
            &[
                ("AWS_DEFAULT_REGION", "eu-west-1"),
                ("AWS_ENDPOINT_URL", "http://127.0.0.1:9000"),
            ],
        );
        assert_eq!(c.s3.region, "eu-west-1");
        assert_eq!(c.s3.endpoint.as_deref(), Some("http://127.0.0.1:9000"));
        let c = run(
            &[],
            &[
                ("AWS_REGION", "a"),
                ("AUTH_PROFILE_S3_REGION", "b"),
                ("AUTH_PROFILE_S3_PREFIX", "/x/y/"),
            ],
        );
        assert_eq!(c.s3.region, "b");
        assert_eq!(c.s3.prefix, "x/y");
    }

    #[test]
    fn bad_values_name_the_variable_and_the_accepted_values() {
        assert_eq!(
            err(&[], &[("BASE_API_PORT", "abc")]),
            "invalid BASE_API_PORT=\"abc\": expected an integer from 1 to 65535"
        );
        assert_eq!(
            err(&[], &[("PORT_STEP", "0")]),
            "invalid PORT_STEP=\"0\": expected an integer from 1 to 65535"
        );
        assert_eq!(
            err(&[], &[("PROFILE_BACKEND", "gcs")]),
            "invalid PROFILE_BACKEND=\"gcs\": expected local or s3"
        );
        assert_eq!(
            err(&[], &[("HEADLESS", "maybe")]),
            "invalid HEADLESS=\"maybe\": expected true or false"
        );
        assert_eq!(
            err(&[], &[("HOLD_STREAM_HEAD", "sometimes")]),
            "invalid HOLD_STREAM_HEAD=\"sometimes\": expected true or false"
        );
        assert!(err(&[], &[("BASE_API_PORT", "65535")]).contains("past 65535"));
        assert!(err(&[], &[("BASE_STREAM_PORT", "3101")]).contains("port 3101 is used twice"));
        assert!(err(&[], &[("COORDINATOR_PORT", "3100")]).contains("COORDINATOR_PORT"));
        assert!(
            err(&[], &[("CHILD_COMMAND", "python 'unclosed")]).starts_with("invalid CHILD_COMMAND")
        );
        assert_eq!(
            err(&["--nope"], &[]),
            "unknown option --nope: see aistudioproxy --help"
        );
    }

    #[test]
    fn interleaved_ranges_are_fine_when_ports_differ() {
        let c = run(
            &[],
            &[
                ("PORT_STEP", "2"),
                ("BASE_STREAM_PORT", "3101"),
                ("POOL_SIZE", "4"),
            ],
        );
        assert_eq!(
            c.ports.slot(3),
            Ports {
                api: 3106,
                stream: 3107,
                camoufox: 9228
            }
        );
    }

    #[test]
    fn words_split_like_a_shell_without_one() {
        assert_eq!(split_words("  a  b\tc ").unwrap(), vec!["a", "b", "c"]);
        assert_eq!(
            split_words(r#"py "a b" 'c d' e\ f "x\"y" ''"#).unwrap(),
            vec!["py", "a b", "c d", "e f", "x\"y", ""]
        );
        assert_eq!(split_words("$HOME;rm").unwrap(), vec!["$HOME;rm"]);
        assert!(split_words("\"open").is_err());
    }

    #[test]
    fn help_lists_every_setting() {
        let h = help_text();
        for s in SETTINGS {
            assert!(h.contains(s.env) && h.contains(&flag_of(s.env)));
        }
    }
}
