//! Benchmark: how many slow-body connections the coordinator holds while
//! `/ready` and `/live` still answer in under a second.
//!
//! A coordinator with one test child and no API keys (so a keyless
//! `POST /v1/chat/completions` is read on an HTTP worker, the costliest
//! case) is given slow clients in steps: each sends a head declaring a
//! 10 MB body, then one byte per round (every 200 ms). Two of every three
//! go to `/v1/chat/completions` and hold a worker each while they trickle;
//! the third goes to a path answered before its body (`/nope`,
//! `/v1/models`, `/metrics`), whose body is refused and connection closed.
//! After each step `/ready` then `/live` are timed on fresh connections;
//! the baseline is the same pair timed before any slow client, in the same
//! run. The figure: the most slow connections held open with both probes
//! under 1 s.
//!
//! `BENCH_EDGE_MAX` (default 3000) bounds the slow connections opened;
//! `BENCH_EDGE_STEP` (default 250) is the step.

#[path = "support/mod.rs"]
mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use support::{http_get, Coordinator, CoordinatorSpec};

const HEADS: [&str; 3] = [
    "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 10000000\r\n\r\n",
    "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 10000000\r\n\r\n",
    "POST /nope HTTP/1.1\r\nHost: x\r\nContent-Length: 10000000\r\n\r\n",
];

struct Slow {
    s: TcpStream,
    open: bool,
}

impl Slow {
    fn start(port: u16, head: &str) -> Option<Slow> {
        let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
        s.write_all(head.as_bytes()).ok()?;
        s.set_nonblocking(true).ok()?;
        Some(Slow { s, open: true })
    }

    /// One more byte; notices a close.
    fn trickle(&mut self) {
        if !self.open {
            return;
        }
        if let Err(e) = self.s.write(b"a") {
            if e.kind() != std::io::ErrorKind::WouldBlock {
                self.open = false;
                return;
            }
        }
        let mut buf = [0u8; 4096];
        loop {
            match self.s.read(&mut buf) {
                Ok(0) => {
                    self.open = false;
                    return;
                }
                Ok(_) => continue,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return,
                Err(_) => {
                    self.open = false;
                    return;
                }
            }
        }
    }
}

/// `/ready` then `/live` on fresh connections; None if either failed.
fn probes(port: u16) -> Option<Duration> {
    let t = Instant::now();
    let (ready, _) = http_get(port, "/ready", Duration::from_secs(5))?;
    let (live, _) = http_get(port, "/live", Duration::from_secs(5))?;
    (ready == 200 && live == 200).then(|| t.elapsed())
}

fn env_num(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    support::watchdog("edge", Duration::from_secs(240));
    let max = env_num("BENCH_EDGE_MAX", 3000);
    let step = env_num("BENCH_EDGE_STEP", 250).max(1);
    let coord = Coordinator::start(&CoordinatorSpec::plain(1));
    let port = coord.port;
    println!("== edge: slow-body connections held vs probe time ==");
    let base: Vec<Duration> = (0..5).filter_map(|_| probes(port)).collect();
    let base = base
        .iter()
        .min()
        .copied()
        .unwrap_or(Duration::from_millis(1));
    println!("baseline /ready+/live with no slow client: {base:?}");
    println!(
        "{:>8} {:>8} {:>10} {:>12} {:>10}",
        "opened", "held", "on-chat", "probes", "x-base"
    );
    let mut slow: Vec<(usize, Slow)> = Vec::new();
    let mut best_held = 0;
    let mut last_ok = true;
    while slow.len() < max && last_ok {
        for i in 0..step {
            let kind = (slow.len() + i) % HEADS.len();
            if let Some(s) = Slow::start(port, HEADS[kind]) {
                slow.push((kind, s));
            }
        }
        for _ in 0..2 {
            for (_, s) in slow.iter_mut() {
                s.trickle();
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        let took = probes(port);
        let held = slow.iter().filter(|(_, s)| s.open).count();
        let on_chat = slow.iter().filter(|(k, s)| s.open && *k < 2).count();
        let shown = took.map_or("failed".to_string(), |t| format!("{t:.2?}"));
        let ratio = took.map_or("-".to_string(), |t| {
            format!("{:.1}x", t.as_secs_f64() / base.as_secs_f64())
        });
        println!(
            "{:>8} {held:>8} {on_chat:>10} {shown:>12} {ratio:>10}",
            slow.len()
        );
        last_ok = took.is_some_and(|t| t < Duration::from_secs(1));
        if last_ok {
            best_held = best_held.max(held);
        }
    }
    println!(
        "MEASURED slow_body_connections_held_with_probes_under_1s={best_held} (of {} opened; baseline probes {base:?})",
        slow.len()
    );
    drop(slow);
    drop(coord);
}
