//! aistudioproxy: entry point. Parses configuration, hydrates profiles, and
//! (unless `--hydrate-only`) wires the supervisor, the HTTP front door and
//! signal handling together. Owns the exit code; every fatal error ends here
//! as one line on stderr.

// Wired into the slots and the proxy once the dispatcher lands.
#[allow(dead_code)] // the socket and /admin/ are wired with the control in the next commit
mod admin;
#[allow(dead_code)]
mod book;
mod config;
mod dispatch;
mod health;
mod hydrate;
mod logging;
#[allow(dead_code)] // wired into the server and the slots in the following commits
mod metrics;
mod pool;
mod process;
mod proxy;
mod reply;
mod server;
mod signals;
mod slot;
mod tls;
mod upstream;
mod watcher;
#[allow(dead_code)] // wired into the slot watcher next
mod writeback;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use crossbeam_channel::{after, select};
use log::{error, info, warn};

use config::{Config, Invocation};

fn main() -> ExitCode {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    if argv.first().map(String::as_str) == Some("ctl") {
        return admin::ctl::main(&argv[1..]);
    }
    tls::install_crypto_provider();
    let cfg = match Config::from_process() {
        Ok(Invocation::Run(cfg)) => cfg,
        Ok(Invocation::Help) => {
            print!("{}", config::help_text());
            return ExitCode::SUCCESS;
        }
        Ok(Invocation::Version) => {
            println!("aistudioproxy {}", env!("CARGO_PKG_VERSION"));
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("aistudioproxy: {e}");
            return ExitCode::from(2);
        }
    };
    logging::init(cfg.log_format);
    // A wrong child command is a configuration error: report it before
    // hydration, which may download from S3, logs, and replaces the cache.
    if !cfg.hydrate_only {
        if let Err(e) = check_child_program(&cfg) {
            eprintln!("aistudioproxy: {e}");
            return ExitCode::from(2);
        }
    }
    let began = Instant::now();
    let hydrated = match hydrate::hydrate(&cfg) {
        Ok(h) => {
            metrics::hydrated("start", "ok", began.elapsed(), Some(h.profiles.len()));
            h
        }
        Err(e) => {
            eprintln!("aistudioproxy: {e}");
            return ExitCode::from(1);
        }
    };
    if cfg.hydrate_only {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{}", hydrated.summary_json());
        return ExitCode::SUCCESS;
    }
    match run(&cfg, hydrated) {
        Ok(()) => ExitCode::SUCCESS,
        Err(Fatal { message, code }) => {
            eprintln!("aistudioproxy: {message}");
            ExitCode::from(code)
        }
    }
}

struct Fatal {
    message: String,
    code: u8,
}

fn fatal(code: u8) -> impl FnOnce(String) -> Fatal {
    move |message| Fatal { message, code }
}

/// Supervise until a signal, then shut down: /ready turns 503, every child
/// group gets SIGTERM and its grace (a second signal cuts the grace short),
/// and we exit.
fn run(cfg: &Config, hydrated: hydrate::Hydrated) -> Result<(), Fatal> {
    std::fs::create_dir_all(&cfg.log_dir).map_err(|e| Fatal {
        message: format!(
            "cannot create {}: {e}; set COORDINATOR_LOG_DIR to a writable directory",
            cfg.log_dir.display()
        ),
        code: 1,
    })?;
    let sigs = signals::install().map_err(fatal(1))?;
    let reaper = process::reaper::Reaper::start()
        .map_err(|e| format!("cannot start the orphan reaper: {e}"))
        .map_err(fatal(1))?;

    let key_file = choose_key_file(cfg, hydrated.key_file.clone())?;
    if let Some(k) = &key_file {
        info!("AUTH_KEY_FILE_PATH={} is handed to children", k.display());
    }
    // Before any child of ours runs: what an earlier run left is stopped.
    let identity = process::tree::Identity::new(&cfg.cache_dir);
    process::tree::stop_leftovers(&identity, cfg.stop_grace);
    let profile_count = hydrated.profiles.len();
    let limits = dispatch::Limits {
        per_child: cfg.max_inflight_per_child,
        max_queue: cfg.max_queue,
        queue_timeout: cfg.queue_timeout,
    };
    let (pool, cmd_rxs) = pool::Pool::new(hydrated.profiles, cfg.pool_size, cfg.ports, limits);
    info!(
        "{} slots for {profile_count} profiles ({} queued); child command: {}",
        pool.size(),
        profile_count - pool.size(),
        cfg.child_command.join(" ")
    );
    // The HTTP side comes up before any child, so a taken port fails fast.
    let keys = proxy::keys::Keys::load(key_file.as_deref()).map_err(|e| Fatal {
        message: format!("cannot read the key file: {e}; check AUTH_PROFILE_CACHE_DIR/key.txt"),
        code: 1,
    })?;
    if keys.enabled() {
        info!("API keys enforced on /v1/* ({} keys loaded)", keys.len());
    }
    let proxy = proxy::Proxy::new(
        keys,
        proxy::Settings {
            request_timeout: cfg.request_timeout,
            stream_idle_timeout: cfg.stream_idle_timeout,
            max_body_bytes: cfg.max_body_bytes,
            consecutive_5xx_to_evict: cfg.consecutive_5xx_to_evict,
        },
    );
    let app = server::App {
        pool: pool.clone(),
        proxy,
    };
    let conn = server::ConnSettings {
        header_timeout: cfg.header_timeout,
        keepalive_timeout: cfg.keepalive_timeout,
        max_connections: cfg.max_connections,
    };
    let http = server::HttpServer::start(&cfg.host, cfg.port, cfg.http_workers, conn, app)
        .map_err(|e| Fatal {
            message: e.0,
            code: 1,
        })?;

    let (shutdown_tx, shutdown_rx) = crossbeam_channel::bounded::<()>(0);
    let (hurry_tx, hurry_rx) = crossbeam_channel::bounded::<()>(0);
    let flags = watcher::Signals {
        shutdown: shutdown_rx,
        hurry: hurry_rx,
    };
    let settings = watcher::Settings::new(cfg, key_file, identity);
    let (done_tx, done_rx) = crossbeam_channel::bounded::<()>(0);
    let mut watchers = Vec::new();
    for (slot, cmds) in cmd_rxs.into_iter().enumerate() {
        let spawned = watcher::spawn(
            slot,
            pool.clone(),
            cmds,
            settings.clone(),
            flags.clone(),
            done_tx.clone(),
        );
        match spawned {
            Ok(h) => watchers.push(h),
            Err(e) => error!("cannot start the watcher of slot {slot}: {e}"),
        }
    }
    drop(done_tx);

    let first = sigs.recv().unwrap_or("signal channel closed");
    let grace = cfg.stop_grace;
    info!("{first} received: shutting down (children get {grace:?} to exit; a second signal skips it)");
    pool.begin_shutdown();
    drop(shutdown_tx);
    let deadline = Instant::now() + grace + Duration::from_millis(800);
    let mut hurry = Some(hurry_tx);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        select! {
            // Disconnected once every watcher thread has ended.
            recv(done_rx) -> _ => break,
            recv(sigs) -> s => {
                if hurry.take().is_some() {
                    warn!("{} received again: killing children now", s.unwrap_or("signal"));
                }
            }
            recv(after(left)) -> _ => {
                warn!("slot watchers did not finish within the grace period; exiting anyway");
                break;
            }
        }
    }
    for w in watchers {
        if w.is_finished() {
            let _ = w.join();
        }
    }
    drop(hurry);
    http.stop(Instant::now() + Duration::from_millis(150));
    reaper.stop();
    info!("shutdown complete");
    Ok(())
}

/// The key file the coordinator checks and hands to children: a hydrated
/// key.txt wins over the operator's `AUTH_KEY_FILE_PATH`, which must be
/// readable when it is used (children would each fail at start otherwise).
fn choose_key_file(cfg: &Config, hydrated: Option<PathBuf>) -> Result<Option<PathBuf>, Fatal> {
    match (hydrated, &cfg.operator_key_file) {
        (Some(h), Some(op)) => {
            if *op != h {
                info!(
                    "the hydrated key file {} wins over AUTH_KEY_FILE_PATH={}",
                    h.display(),
                    op.display()
                );
            }
            Ok(Some(h))
        }
        (Some(h), None) => Ok(Some(h)),
        (None, Some(op)) => match std::fs::File::open(op).and_then(|f| f.metadata()) {
            Ok(m) if m.is_file() => Ok(Some(op.clone())),
            Ok(_) => Err(Fatal {
                message: format!(
                    "AUTH_KEY_FILE_PATH={} is not a file: point it at a key file (one key per line) or unset it",
                    op.display()
                ),
                code: 2,
            }),
            Err(e) => Err(Fatal {
                message: format!(
                    "AUTH_KEY_FILE_PATH={} cannot be read ({e}): point it at a readable key file or unset it",
                    op.display()
                ),
                code: 2,
            }),
        },
        (None, None) => Ok(None),
    }
}

/// Fail at start, not in a restart loop, when the child program is missing.
fn check_child_program(cfg: &Config) -> Result<(), String> {
    if !cfg.child_workdir.is_dir() {
        return Err(format!(
            "CHILD_WORKDIR {} is not a directory: set CHILD_WORKDIR to the AI Studio proxy checkout",
            cfg.child_workdir.display()
        ));
    }
    let program = &cfg.child_command[0];
    let found = if program.contains('/') {
        let p = Path::new(program);
        let p: PathBuf = if p.is_absolute() {
            p.to_path_buf()
        } else {
            cfg.child_workdir.join(p)
        };
        p.is_file()
    } else {
        std::env::var_os("PATH")
            .map(|paths| std::env::split_paths(&paths).any(|d| d.join(program).is_file()))
            .unwrap_or(false)
    };
    if found {
        Ok(())
    } else {
        Err(format!(
            "child program {program:?} not found (from CHILD_COMMAND or after --; relative paths are taken from CHILD_WORKDIR {}): install it or fix the command",
            cfg.child_workdir.display()
        ))
    }
}
