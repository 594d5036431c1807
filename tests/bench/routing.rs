//! Benchmark: the coordinator's fleet queue against queues inside the
//! children, with children of unequal speed.
//!
//! Two test children serve one completion at a time (as the real child does
//! against its one browser page): `fast` takes 10 ms, `slow` 40 ms. Eight
//! closed-loop clients send non-streamed completions through the
//! coordinator, once with `MAX_INFLIGHT_PER_CHILD=1` (the default: one
//! completion per child, the rest wait in the coordinator's one queue and
//! go to whichever child frees up first) and once with
//! `MAX_INFLIGHT_PER_CHILD=0` (no limit: every request goes at once to the
//! least busy child and waits in that child's own queue), each on a fresh
//! coordinator.
//!
//! Why this shape shows the effect: with queues inside the children, a
//! request is bound to its child on arrival, so requests sit behind the slow
//! child while the fast one may be idle; least-busy keeps the counts equal
//! (four each), so about a fifth of requests wait for 40 ms services. The
//! fleet queue binds a request only when a child is free, so the fast child
//! never idles while requests wait: up to 100 + 25 = 125 req/s with every
//! wait spent in one FIFO.
//!
//! `BENCH_ROUTING_MS` (default 3000) sets the measured window of each run.

#[path = "support/mod.rs"]
mod support;

use std::time::Duration;

use serde_json::json;
use support::{chat_body, post_json, ratio, Coordinator, CoordinatorSpec, Load, LoadResult};

const CLIENTS: usize = 8;
const FAST_MS: u64 = 10;
const SLOW_MS: u64 = 40;

fn main() {
    support::watchdog("routing", Duration::from_secs(90));
    let measure = Duration::from_millis(
        std::env::var("BENCH_ROUTING_MS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(3000),
    );

    println!("== routing: fleet queue (MAX_INFLIGHT_PER_CHILD=1) vs queues in children (0) ==");
    println!(
        "children: fast (completion_delay_ms {FAST_MS}) and slow ({SLOW_MS}), one completion at a time each"
    );
    println!(
        "load: {CLIENTS} closed-loop keep-alive clients, non-streamed completions through the coordinator, {:.1} s measured after 0.3 s warm-up",
        measure.as_secs_f64()
    );
    println!(
        "ideal: ~{:.0} req/s when neither child idles while requests wait",
        1000.0 / FAST_MS as f64 + 1000.0 / SLOW_MS as f64,
    );
    println!();
    println!(
        "{:<12} {:>8} {:>8} {:>8} {:>8} {:>8} {:>6} {:>4} {:>5}   served by",
        "routing", "mean", "p50", "p90", "p99", "req/s", "n", "err", "starv"
    );
    let fleet = run("fleet-queue", "1", measure);
    let inner = run("child-queues", "0", measure);
    let (f, i) = (fleet.latency(), inner.latency());
    println!();
    println!(
        "fleet-queue / child-queues: mean {} p50 {} p99 {} | throughput {}",
        ratio(f.mean, i.mean),
        ratio(f.p50, i.p50),
        ratio(f.p99, i.p99),
        ratio(fleet.throughput(), inner.throughput())
    );
}

fn run(routing: &str, max_inflight: &str, measure: Duration) -> LoadResult {
    let spec = CoordinatorSpec {
        pool_size: 2,
        profiles: vec![
            (
                "fast".into(),
                json!({"testchild": {"completion_delay_ms": FAST_MS}}),
            ),
            (
                "slow".into(),
                json!({"testchild": {"completion_delay_ms": SLOW_MS}}),
            ),
        ],
        env: vec![("MAX_INFLIGHT_PER_CHILD".into(), max_inflight.into())],
        wait_ready: 2,
    };
    let coord = Coordinator::start(&spec);
    let result = Load {
        ports: vec![coord.port],
        clients: CLIENTS,
        request: post_json("/v1/chat/completions", coord.port, &chat_body(false)),
        warmup: Duration::from_millis(300),
        measure,
        max_requests: 100_000,
        capture_header: Some("x-testchild-profile"),
    }
    .run();
    let l = result.latency();
    let mut served: Vec<(String, u64)> = result.captured.clone().into_iter().collect();
    served.sort();
    let served: Vec<String> = served.iter().map(|(k, v)| format!("{k} {v}")).collect();
    println!(
        "{routing:<12} {:>8.2} {:>8.2} {:>8.2} {:>8.2} {:>8.1} {:>6} {:>4} {:>5}   {}",
        l.mean,
        l.p50,
        l.p90,
        l.p99,
        result.throughput(),
        l.n,
        result.errors + result.non_200,
        result.starved,
        served.join(", ")
    );
    if let Some(e) = &result.first_error {
        println!("{:<12} first error: {e}", "");
    }
    result
}
