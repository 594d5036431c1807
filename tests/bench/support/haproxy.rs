//! HAProxy (Debian's `haproxy` package) in front of one-at-a-time servers,
//! the standard way: `maxconn 1` on each server, so HAProxy never sends a
//! server a second request while it serves one, and the rest wait in
//! HAProxy's own queue (`timeout queue`) until a server frees up.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use super::free_port;
use super::{Daemon, TempDir, LOCALHOST};

/// Debian's haproxy on PATH or in /usr/sbin.
pub fn find_haproxy() -> Option<PathBuf> {
    let on_path = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join("haproxy"))
            .find(|p| p.is_file())
    });
    on_path.or_else(|| {
        let p = PathBuf::from("/usr/sbin/haproxy");
        p.is_file().then_some(p)
    })
}

/// `haproxy -v`'s first line.
pub fn haproxy_version(binary: &Path) -> String {
    Command::new(binary)
        .arg("-v")
        .output()
        .ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .map(str::to_string)
        })
        .unwrap_or_else(|| "?".into())
}

/// One HAProxy process (`threads` threads) in its own process group, which
/// drop kills.
pub struct HaProxy {
    proc: Daemon,
    pub port: u16,
    pub threads: u32,
    pub balance: &'static str,
    dir: TempDir,
}

impl HaProxy {
    /// `balance` is `leastconn` or `roundrobin`; each upstream gets
    /// `maxconn 1`; the queue holds a request up to `queue_timeout`.
    pub fn start(
        binary: &Path,
        upstreams: &[u16],
        threads: u32,
        balance: &'static str,
        queue_timeout: Duration,
    ) -> Result<HaProxy, String> {
        let dir = TempDir::new("haproxy");
        let port = free_port();
        let q = queue_timeout.as_secs().max(1);
        let servers: String = upstreams
            .iter()
            .enumerate()
            // No `check`: the coordinator that runs these children already
            // watches them, and a health check would only add traffic.
            .map(|(i, p)| format!("    server c{i} 127.0.0.1:{p} maxconn 1\n"))
            .collect();
        let conf = format!(
            "global
    nbthread {threads}
    maxconn 4096

defaults
    mode http
    option http-keep-alive
    http-reuse safe
    timeout connect 5s
    timeout client {q}s
    timeout server {q}s
    timeout queue {q}s
    timeout http-keep-alive {q}s

frontend front
    bind {LOCALHOST}:{port}
    default_backend children

backend children
    balance {balance}
{servers}"
        );
        let conf_path = dir.path().join("haproxy.cfg");
        std::fs::write(&conf_path, conf).map_err(|e| format!("write haproxy.cfg: {e}"))?;
        let mut cmd = Command::new(binary);
        // -db: stay in the foreground, one process; -f: this config only.
        cmd.arg("-db").arg("-f").arg(&conf_path);
        let proc = Daemon::start(cmd, &dir, port, "haproxy", &["stderr.log"])?;
        Ok(HaProxy {
            proc,
            port,
            threads,
            balance,
            dir,
        })
    }

    pub fn pid(&self) -> u32 {
        self.proc.pid()
    }
}
