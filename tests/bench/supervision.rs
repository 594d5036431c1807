//! Benchmark: how fast the coordinator notices a dead child, and how long a
//! replacement that is already healthy waits before the coordinator routes
//! to it.
//!
//! (a) Dead-child detection: SIGKILL a ready child (pid from /ready) and poll
//!     /ready every ~1 ms until that pid is no longer listed as ready.
//! (b) Replacement lag: the slot's next profile is a queued one whose test
//!     child turns healthy 300 ms after start. One thread polls that child's
//!     own /health every ~1 ms, the main thread polls the coordinator's
//!     /ready every ~1 ms; the lag is from the child's first 200 to the
//!     coordinator showing the slot ready. The watcher polls a starting
//!     child every 20 ms (READY_POLL in src/watcher.rs), so 0-20 ms is what
//!     the design gives.
//!
//! A slot's restarts back off (immediate, then 1 s, 2 s, ...), so each round
//! runs a fresh coordinator (profiles `a`, `b` in the two slots, `q1`, `q2`
//! queued) and kills each slot twice: first kill -> (a) and (b) while the
//! queued profile takes over at once; second kill -> (a) only.
//! Both polls resolve to about 1 ms plus one /ready round trip.

#[path = "support/mod.rs"]
mod support;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use serde_json::json;
use support::{http_get, summarize_durations, Coordinator, CoordinatorSpec, Slot, Summary};

const ROUNDS: usize = 10;
const POLL: Duration = Duration::from_millis(1);
const READY_AFTER_MS: u64 = 300;

fn main() {
    support::watchdog("supervision", Duration::from_secs(120));
    println!("== supervision: dead-child detection and replacement lag ==");
    println!(
        "{ROUNDS} rounds, each a fresh coordinator with 2 slots (a, b) and 2 queued profiles (q1, q2: ready_after_ms {READY_AFTER_MS}); polls every {POLL:?}"
    );

    let mut detect: Vec<Duration> = Vec::new();
    let mut lag: Vec<Duration> = Vec::new();
    let mut kill_to_ready: Vec<Duration> = Vec::new();
    let mut ready_rtt: Vec<Duration> = Vec::new();
    let mut failures: Vec<String> = Vec::new();
    for round in 0..ROUNDS {
        let coord = Coordinator::start(&CoordinatorSpec {
            pool_size: 2,
            profiles: vec![
                ("a".into(), json!({})),
                ("b".into(), json!({})),
                (
                    "q1".into(),
                    json!({"testchild": {"ready_after_ms": READY_AFTER_MS}}),
                ),
                (
                    "q2".into(),
                    json!({"testchild": {"ready_after_ms": READY_AFTER_MS}}),
                ),
            ],
            env: Vec::new(),
            wait_ready: 2,
        });
        // Kill order slot 0, slot 1, slot 0, slot 1: both first kills rotate
        // in a queued (slow-to-start) profile, never a and b back.
        for (k, slot) in [0usize, 1, 0, 1].into_iter().enumerate() {
            let replacement = k < 2;
            match kill_one(&coord, slot, replacement, &mut ready_rtt) {
                Ok(m) => {
                    detect.push(m.detect);
                    if let Some((l, total)) = m.replacement {
                        lag.push(l);
                        kill_to_ready.push(total);
                    }
                }
                Err(e) => failures.push(format!("round {round} kill {k} (slot {slot}): {e}")),
            }
        }
    }

    println!();
    println!(
        "{:<46} {:>4} {:>8} {:>8} {:>8} {:>8} {:>8}",
        "ms", "n", "min", "p50", "mean", "p90", "max"
    );
    row("(a) SIGKILL -> /ready drops the pid", &detect);
    row("(b) child /health 200 -> /ready shows it ready", &lag);
    row("    SIGKILL -> replacement ready in /ready", &kill_to_ready);
    row("    one /ready round trip (poll resolution)", &ready_rtt);
    if !failures.is_empty() {
        println!();
        for f in &failures {
            println!("failed: {f}");
        }
    }
}

fn row(name: &str, samples: &[Duration]) {
    let s: Summary = summarize_durations(samples);
    println!(
        "{name:<46} {:>4} {:>8.2} {:>8.2} {:>8.2} {:>8.2} {:>8.2}",
        s.n, s.min, s.p50, s.mean, s.p90, s.max
    );
}

struct KillMeasure {
    detect: Duration,
    /// (child healthy -> coordinator ready, kill -> coordinator ready)
    replacement: Option<(Duration, Duration)>,
}

fn slot_of(coord: &Coordinator, slot: usize) -> Option<Slot> {
    coord.slots()?.into_iter().nth(slot)
}

fn kill_one(
    coord: &Coordinator,
    slot: usize,
    replacement: bool,
    rtt: &mut Vec<Duration>,
) -> Result<KillMeasure, String> {
    let before = slot_of(coord, slot).ok_or("no /ready answer")?;
    let (Some(pid), true) = (before.pid, before.state == "ready") else {
        return Err(format!("slot is not ready: {before:?}"));
    };
    let old_profile = before.profile.clone().unwrap_or_default();
    let api = before.api_port;

    // SAFETY: plain syscall on a child the coordinator reported ready.
    let killed_at = Instant::now();
    unsafe { libc::kill(pid, libc::SIGKILL) };
    let deadline = killed_at + Duration::from_secs(5);
    let mut detected = None;
    while Instant::now() < deadline {
        let t = Instant::now();
        let slots = coord.slots();
        rtt.push(t.elapsed());
        if let Some(slots) = slots {
            if !slots
                .iter()
                .any(|s| s.pid == Some(pid) && s.state == "ready")
            {
                detected = Some(killed_at.elapsed());
                break;
            }
        }
        thread::sleep(POLL);
    }
    let detect = detected.ok_or("the killed pid was still ready after 5 s")?;
    if !replacement {
        return Ok(KillMeasure {
            detect,
            replacement: None,
        });
    }

    // The old child is reaped by now (that is how the coordinator noticed),
    // so whatever answers on the port is its replacement; the profile check
    // makes sure of it.
    let stop = Arc::new(AtomicBool::new(false));
    let poller = {
        let stop = stop.clone();
        let old = old_profile.clone();
        thread::Builder::new()
            .name("child-health".into())
            .spawn(move || -> Option<Instant> {
                let end = Instant::now() + Duration::from_secs(5);
                while Instant::now() < end && !stop.load(Ordering::Relaxed) {
                    if let Some((200, body)) = http_get(api, "/health", Duration::from_millis(200))
                    {
                        let at = Instant::now();
                        let profile = serde_json::from_str::<serde_json::Value>(&body)
                            .ok()
                            .and_then(|v| v["profile"].as_str().map(str::to_string));
                        if profile.as_deref() != Some(old.as_str()) {
                            return Some(at);
                        }
                    }
                    thread::sleep(POLL);
                }
                None
            })
            .map_err(|e| format!("spawn the health poller: {e}"))?
    };
    let mut coord_ready = None;
    while Instant::now() < killed_at + Duration::from_secs(5) {
        if let Some(s) = slot_of(coord, slot) {
            if s.state == "ready" && s.pid.is_some_and(|p| p != pid) {
                coord_ready = Some(Instant::now());
                break;
            }
        }
        thread::sleep(POLL);
    }
    if coord_ready.is_none() {
        stop.store(true, Ordering::Relaxed);
    }
    // Otherwise the poller ends by itself on its first 200, which cannot
    // come later than the coordinator's own.
    let child_ready = poller.join().ok().flatten();
    match (child_ready, coord_ready) {
        (Some(c), Some(r)) => Ok(KillMeasure {
            detect,
            replacement: Some((r.saturating_duration_since(c), r - killed_at)),
        }),
        (c, r) => Err(format!(
            "replacement not seen within 5 s (child healthy: {}, coordinator ready: {})",
            c.is_some(),
            r.is_some()
        )),
    }
}
