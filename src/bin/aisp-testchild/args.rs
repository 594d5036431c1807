//! Command-line parsing for the test child.
//!
//! Owns the exact argument surface of the real child (`launch_camoufox.py`)
//! plus three hidden modes for the descendants a child spawns (see
//! `tree.rs`): `--grandchild <pidfile>`, `--browser --port <camoufox port>
//! [--pid-file <p>] [--ready-fd <fd>] [--ignore-sigterm]`, `--helper
//! --port <stream port> [--pid-file <p>]` and `--driver [--pid-file <p>]`. Runs once on the main thread; it
//! only parses, it never touches the file system.

use crate::tree::{BrowserArgs, HelperArgs};
use std::fmt;
use std::path::PathBuf;

/// What the process was asked to be.
#[derive(Debug, PartialEq)]
pub enum Mode {
    Child(ChildArgs),
    /// The descendant a child spawns to prove the coordinator kills whole
    /// process groups; it writes its pid to the given file.
    Grandchild(PathBuf),
    /// The "browser": own session, holds the camoufox port.
    Browser(BrowserArgs),
    /// The "stream proxy" helper: ignores SIGTERM.
    Helper(HelperArgs),
    /// The "Playwright driver": dies on SIGTERM and when the launcher ends;
    /// its optional pid file.
    Driver(Option<PathBuf>),
}

/// The real child's arguments.
#[derive(Debug, Clone, PartialEq)]
pub struct ChildArgs {
    pub server_port: u16,
    pub stream_port: u16,
    pub camoufox_port: u16,
    pub auth_json: PathBuf,
    pub headless: bool,
}

#[derive(Debug, PartialEq)]
pub enum ArgError {
    Unknown(String),
    MissingValue(String),
    BadPort { flag: String, value: String },
    Missing(&'static str),
}

impl fmt::Display for ArgError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ArgError::Unknown(a) => write!(f, "unknown argument {a:?}"),
            ArgError::MissingValue(a) => write!(f, "argument {a} needs a value"),
            ArgError::BadPort { flag, value } => {
                write!(f, "argument {flag}: {value:?} is not a port number")
            }
            ArgError::Missing(a) => write!(f, "required argument {a} is missing"),
        }
    }
}

impl std::error::Error for ArgError {}

pub const USAGE: &str = "usage: aisp-testchild --server-port <api> --stream-port <s> \
--camoufox-debug-port <c> --active-auth-json <profile.json> [--headless]\n\
hidden modes (spawned by a child itself): --grandchild <pidfile> | \
--browser --port <p> [--pid-file <f>] [--ready-fd <fd>] [--ignore-sigterm] | \
--helper --port <p> [--pid-file <f>] | --driver [--pid-file <f>]";

/// Parses the driver mode's flags (after `--driver`).
fn parse_driver(args: impl Iterator<Item = String>) -> Result<Mode, ArgError> {
    let mut args = args;
    let mut pidfile = None;
    while let Some(arg) = args.next() {
        if arg != "--pid-file" {
            return Err(ArgError::Unknown(arg));
        }
        let value = args.next().ok_or(ArgError::MissingValue(arg))?;
        pidfile = Some(PathBuf::from(value));
    }
    Ok(Mode::Driver(pidfile))
}

/// Parses a descendant mode's flags (after `--browser` or `--helper`).
fn parse_descendant(browser: bool, args: impl Iterator<Item = String>) -> Result<Mode, ArgError> {
    let mut args = args;
    let (mut port, mut pidfile, mut ready_fd, mut ignore) = (None, None, None, false);
    while let Some(arg) = args.next() {
        if arg == "--ignore-sigterm" && browser {
            ignore = true;
            continue;
        }
        let known =
            matches!(arg.as_str(), "--port" | "--pid-file") || (browser && arg == "--ready-fd");
        if !known {
            return Err(ArgError::Unknown(arg));
        }
        let value = args
            .next()
            .ok_or_else(|| ArgError::MissingValue(arg.clone()))?;
        let bad = || ArgError::BadPort {
            flag: arg.clone(),
            value: value.clone(),
        };
        match arg.as_str() {
            "--port" => port = Some(value.parse::<u16>().map_err(|_| bad())?),
            "--ready-fd" => ready_fd = Some(value.parse::<i32>().map_err(|_| bad())?),
            _ => pidfile = Some(PathBuf::from(&value)),
        }
    }
    let port = port.ok_or(ArgError::Missing("--port"))?;
    Ok(if browser {
        Mode::Browser(BrowserArgs {
            port,
            pidfile,
            ignore_sigterm: ignore,
            ready_fd,
        })
    } else {
        Mode::Helper(HelperArgs { port, pidfile })
    })
}

/// Parses the arguments after the program name. Accepts both `--flag value`
/// and `--flag=value`, as Python's argparse does for the real child.
pub fn parse(args: impl IntoIterator<Item = String>) -> Result<Mode, ArgError> {
    let mut args = args.into_iter().peekable();
    match args.peek().map(String::as_str) {
        Some("--browser") => {
            args.next();
            return parse_descendant(true, args);
        }
        Some("--helper") => {
            args.next();
            return parse_descendant(false, args);
        }
        Some("--driver") => {
            args.next();
            return parse_driver(args);
        }
        _ => {}
    }
    let mut server_port = None;
    let mut stream_port = None;
    let mut camoufox_port = None;
    let mut auth_json = None;
    let mut headless = false;
    let mut grandchild = None;

    while let Some(arg) = args.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f.to_string(), Some(v.to_string())),
            _ => (arg.clone(), None),
        };
        if flag == "--headless" {
            if inline.is_some() {
                return Err(ArgError::Unknown(arg));
            }
            headless = true;
            continue;
        }
        if !matches!(
            flag.as_str(),
            "--server-port"
                | "--stream-port"
                | "--camoufox-debug-port"
                | "--active-auth-json"
                | "--grandchild"
        ) {
            return Err(ArgError::Unknown(arg));
        }
        let value = match inline {
            Some(v) => v,
            None => args
                .next()
                .ok_or_else(|| ArgError::MissingValue(flag.clone()))?,
        };
        let port = |v: &str| {
            v.parse::<u16>().map_err(|_| ArgError::BadPort {
                flag: flag.clone(),
                value: v.to_string(),
            })
        };
        match flag.as_str() {
            "--server-port" => server_port = Some(port(&value)?),
            "--stream-port" => stream_port = Some(port(&value)?),
            "--camoufox-debug-port" => camoufox_port = Some(port(&value)?),
            "--active-auth-json" => auth_json = Some(PathBuf::from(value)),
            _ => grandchild = Some(PathBuf::from(value)),
        }
    }

    if let Some(pidfile) = grandchild {
        return Ok(Mode::Grandchild(pidfile));
    }
    Ok(Mode::Child(ChildArgs {
        server_port: server_port.ok_or(ArgError::Missing("--server-port"))?,
        stream_port: stream_port.ok_or(ArgError::Missing("--stream-port"))?,
        camoufox_port: camoufox_port.ok_or(ArgError::Missing("--camoufox-debug-port"))?,
        auth_json: auth_json.ok_or(ArgError::Missing("--active-auth-json"))?,
        headless,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Result<Mode, ArgError> {
        parse(s.split_whitespace().map(String::from))
    }

    #[test]
    fn full_child_command_line() {
        let m = p(
            "--server-port 2048 --stream-port=3120 --camoufox-debug-port 9222 \
                   --active-auth-json /a/b/alice.json --headless",
        )
        .unwrap();
        assert_eq!(
            m,
            Mode::Child(ChildArgs {
                server_port: 2048,
                stream_port: 3120,
                camoufox_port: 9222,
                auth_json: PathBuf::from("/a/b/alice.json"),
                headless: true,
            })
        );
    }

    #[test]
    fn errors() {
        assert!(matches!(p("--bogus"), Err(ArgError::Unknown(_))));
        assert!(matches!(p("--server-port"), Err(ArgError::MissingValue(_))));
        assert!(matches!(
            p("--server-port x"),
            Err(ArgError::BadPort { .. })
        ));
        assert_eq!(
            p("--server-port 1 --stream-port 2 --camoufox-debug-port 3"),
            Err(ArgError::Missing("--active-auth-json"))
        );
    }

    #[test]
    fn grandchild_mode() {
        assert_eq!(
            p("--grandchild /tmp/x.pid").unwrap(),
            Mode::Grandchild(PathBuf::from("/tmp/x.pid"))
        );
    }

    #[test]
    fn descendant_modes() {
        assert_eq!(
            p("--browser --port 9222 --ready-fd 5 --pid-file /p/a.browser.pid --ignore-sigterm")
                .unwrap(),
            Mode::Browser(BrowserArgs {
                port: 9222,
                pidfile: Some(PathBuf::from("/p/a.browser.pid")),
                ignore_sigterm: true,
                ready_fd: Some(5),
            })
        );
        assert_eq!(
            p("--helper --port 3120").unwrap(),
            Mode::Helper(HelperArgs {
                port: 3120,
                pidfile: None
            })
        );
        assert!(p("--helper --ready-fd 3 --port 1").is_err());
        assert!(p("--helper --ignore-sigterm --port 1").is_err());
        assert_eq!(p("--browser"), Err(ArgError::Missing("--port")));
        assert!(p("--browser --port x").is_err());
        assert!(p("--helper --port").is_err());
        assert_eq!(p("--driver").unwrap(), Mode::Driver(None));
        assert_eq!(
            p("--driver --pid-file /p/a.driver.pid").unwrap(),
            Mode::Driver(Some(PathBuf::from("/p/a.driver.pid")))
        );
        assert!(p("--driver --port 1").is_err());
        assert!(p("--driver --pid-file").is_err());
    }
}
