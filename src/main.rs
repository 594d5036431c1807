//! aistudioproxy: entry point. Parses configuration, hydrates profiles, and
//! (unless `--hydrate-only`) wires the supervisor, the HTTP front door and
//! signal handling together. Owns the exit code; every fatal error ends here
//! as one line on stderr.

mod config;
mod hydrate;
mod tls;

use std::io::Write;
use std::process::ExitCode;

use config::{Config, Invocation};

fn main() -> ExitCode {
    init_logging();
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
    let hydrated = match hydrate::hydrate(&cfg) {
        Ok(h) => h,
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
    ExitCode::SUCCESS
}

fn init_logging() {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"))
        .format_timestamp_millis()
        .target(env_logger::Target::Stderr)
        .init();
}
