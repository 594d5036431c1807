//! Benchmark: least-busy routing against round-robin, with children of
//! unequal speed.
//!
//! Two test children serve one completion at a time (as the real child does
//! against its one browser page): `fast` takes 10 ms, `slow` 40 ms. Eight
//! closed-loop clients send non-streamed completions through the
//! coordinator, once with `ROUTING=least-busy` (the default) and once with
//! `ROUTING=round-robin`, each on a fresh coordinator.
//!
//! Why this shape shows the effect: round-robin hands the slow child half of
//! all requests whatever its queue, so its queue absorbs most clients and the
//! pair delivers at most 2 x 25 = 50 req/s. Least-busy keeps the number in
//! flight equal, so the fast child serves four requests for each slow one:
//! up to 100 + 25 = 125 req/s, and by Little's law a mean latency of about
//! 8 / 125 = 64 ms instead of 8 / 50 = 160 ms.
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

    println!("== routing: least-busy vs round-robin, children of unequal speed ==");
    println!(
        "children: fast (completion_delay_ms {FAST_MS}) and slow ({SLOW_MS}), one completion at a time each"
    );
    println!(
        "load: {CLIENTS} closed-loop keep-alive clients, non-streamed completions through the coordinator, {:.1} s measured after 0.3 s warm-up",
        measure.as_secs_f64()
    );
    println!(
        "ideal: least-busy ~{:.0} req/s, round-robin ~{:.0} req/s",
        1000.0 / FAST_MS as f64 + 1000.0 / SLOW_MS as f64,
        2.0 * 1000.0 / SLOW_MS as f64
    );
    println!();
    println!(
        "{:<12} {:>8} {:>8} {:>8} {:>8} {:>8} {:>6} {:>4} {:>5}   served by",
        "routing", "mean", "p50", "p90", "p99", "req/s", "n", "err", "starv"
    );
    let least = run("least-busy", measure);
    let rr = run("round-robin", measure);
    let (l, r) = (least.latency(), rr.latency());
    println!();
    println!(
        "least-busy / round-robin: mean {} p50 {} p99 {} | throughput {}",
        ratio(l.mean, r.mean),
        ratio(l.p50, r.p50),
        ratio(l.p99, r.p99),
        ratio(least.throughput(), rr.throughput())
    );
}

fn run(routing: &str, measure: Duration) -> LoadResult {
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
        env: vec![("ROUTING".into(), routing.into())],
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
