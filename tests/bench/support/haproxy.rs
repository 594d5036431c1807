//! HAProxy (Debian's `haproxy` package) in front of one-at-a-time servers,
//! the standard way: `maxconn 1` on each server, so HAProxy never sends a
//! server a second request while it serves one, and the rest wait in
//! HAProxy's own queue (`timeout queue`) until a server frees up.

use std::net::TcpStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{die_with_parent, forget_group, free_port, kill_group, register_group, wait_for};
use super::{TempDir, LOCALHOST};

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
    proc: Child,
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
        let log = std::fs::File::create(dir.path().join("stderr.log"))
            .map_err(|e| format!("create haproxy stderr log: {e}"))?;
        let mut cmd = Command::new(binary);
        // -db: stay in the foreground, one process; -f: this config only.
        cmd.arg("-db")
            .arg("-f")
            .arg(&conf_path)
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .process_group(0);
        die_with_parent(&mut cmd);
        let proc = cmd
            .spawn()
            .map_err(|e| format!("start {}: {e}", binary.display()))?;
        register_group(proc.id() as i32);
        let mut h = HaProxy {
            proc,
            port,
            threads,
            balance,
            dir,
        };
        let up = wait_for(
            Instant::now() + Duration::from_secs(5),
            Duration::from_millis(5),
            || TcpStream::connect((LOCALHOST, port)).ok(),
        );
        if up.is_none() || h.proc.try_wait().ok().flatten().is_some() {
            let se = std::fs::read_to_string(h.dir.path().join("stderr.log")).unwrap_or_default();
            return Err(format!("haproxy did not come up:\n{se}"));
        }
        Ok(h)
    }

    pub fn pid(&self) -> u32 {
        self.proc.id()
    }
}

impl Drop for HaProxy {
    fn drop(&mut self) {
        let pgid = self.proc.id() as i32;
        kill_group(pgid, libc::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(3);
        if wait_for(deadline, Duration::from_millis(5), || {
            self.proc.try_wait().ok().flatten()
        })
        .is_none()
        {
            let _ = self.proc.kill();
            let _ = self.proc.wait();
        }
        kill_group(pgid, libc::SIGKILL);
        forget_group(pgid);
    }
}
