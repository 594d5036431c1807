//! aistudioproxy: entry point. Dispatches `ctl` to the admin client, parses
//! configuration, hydrates profiles, and (unless `--hydrate-only`) hands over
//! to `app::run`. Owns the exit code; every fatal error ends here as one line
//! on stderr.

mod admin;
mod app;
mod book;
mod budget;
mod civil;
mod config;
mod console;
mod control;
mod dialect;
mod dispatch;
mod edge;
mod events;
mod fleet;
mod health;
mod hydrate;
mod keepalive;
mod logging;
mod metrics;
mod notify;
mod outbound;
mod placement;
mod private;
mod process;
mod proxy;
mod random;
mod recycle;
mod reload;
mod reply;
mod server;
mod signals;
mod slot;
mod stagger;
mod supervisor;
mod tls;
mod upstream;
mod usage;
mod watcher;
mod writeback;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use config::{Config, Invocation};

fn main() -> ExitCode {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    if argv.first().map(String::as_str) == Some("ctl") {
        return admin::ctl::main(&argv[1..]);
    }
    tls::install_crypto_provider();
    let cfg = match configuration() {
        Ok(cfg) => cfg,
        Err(code) => return code,
    };
    logging::init(cfg.log_format);
    // Before any child exists: our environment holds the coordinator's
    // secrets, and a child runs as our user.
    if let Err(e) = process::env::harden() {
        log::warn!("cannot make the coordinator non-dumpable (PR_SET_DUMPABLE): {e}; a child of the same user could read its environment");
    }
    let files = match preflight(&cfg) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("aistudioproxy: {e}");
            return ExitCode::from(2);
        }
    };
    // A stop signal during hydration ends the run at once, even as PID 1.
    let early = match signals::exit_on_sigterm() {
        Ok(e) => Some(e),
        Err(e) => {
            log::warn!("{e}; a SIGTERM during hydration waits for it to end");
            None
        }
    };
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
    match app::run(&cfg, hydrated, early, files) {
        Ok(()) => ExitCode::SUCCESS,
        Err(app::Fatal { message, code }) => {
            eprintln!("aistudioproxy: {message}");
            ExitCode::from(code)
        }
    }
}

/// The configuration to run with, or the exit code of an invocation that
/// ends here (help, the settings reference, the version, a bad setting).
fn configuration() -> Result<Box<Config>, ExitCode> {
    match Config::from_process() {
        Ok(Invocation::Run(cfg)) => Ok(cfg),
        Ok(Invocation::Help) => {
            print!("{}", config::help_text());
            Err(ExitCode::SUCCESS)
        }
        Ok(Invocation::Reference) => {
            print!("{}", config::reference_markdown());
            Err(ExitCode::SUCCESS)
        }
        Ok(Invocation::Version) => {
            println!("aistudioproxy {}", env!("CARGO_PKG_VERSION"));
            Err(ExitCode::SUCCESS)
        }
        Err(e) => {
            eprintln!("aistudioproxy: {e}");
            Err(ExitCode::from(2))
        }
    }
}

/// The configuration errors found before hydration (which may download
/// from S3, logs, and replaces the cache): a wrong child command, and the
/// files read at start (each profile's proxy, the extra log signs, the
/// budgets). `--hydrate-only` needs none of them.
fn preflight(cfg: &Config) -> Result<app::Files, String> {
    if cfg.hydrate_only {
        return Ok(app::Files::none());
    }
    check_child_program(cfg)?;
    app::Files::load(cfg)
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
