//! Benchmark: the cost per request of the per-key limit check and of the
//! accounts' budgets (issue 24), and how evenly budgets spread requests.
//!
//! One coordinator, two test children answering at once, two API keys:
//! `free` with no limits and `limited` with all of them (`rpm`, `rpd` and
//! `tpd` set so high they never refuse, and a `models` list with a prefix),
//! so each of its completions runs the whole check: the model list, then
//! the minute window and the day counts under the ledger's lock. Closed
//! loop, 8 keep-alive clients, `POST /v1/chat/completions` non-streamed;
//! the two keys take turns (free, limited, free, limited) in the same run
//! and the figures are the ratios limited / free of the pooled runs.
//! Prints; asserts nothing.
//!
//! Account budgets (`MODEL_BUDGETS_FILE`), second part: two coordinators
//! of four test children each run at once, one without a budgets file and
//! one where every account has a budget for the model (never reached), so
//! every completion is checked against the route's budget, counted in the
//! book before its child is given back, and published to the dispatcher.
//! Same load, alternating runs; ratios budgets / none. Then the spread: 100
//! completions at c=8 over four accounts with equal budgets, against the
//! same 100 with no budgets: the most and fewest one account served.
//!
//! `BENCH_MEASURE_MS` (default 1500) sets the measured window per run.

#[path = "support/mod.rs"]
mod support;

use std::time::Duration;

use support::{chat_body, ratio, summarize_ns, Coordinator, CoordinatorSpec, Load, LoadResult};

pub(crate) const CLIENTS: usize = 8;
pub(crate) const ROUNDS: usize = 3;

fn request(port: u16, key: &str) -> Vec<u8> {
    let body = chat_body(false);
    format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAuthorization: Bearer {key}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

fn main() {
    support::watchdog("budget", Duration::from_secs(180));
    let measure = Duration::from_millis(
        std::env::var("BENCH_MEASURE_MS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(1500),
    );
    let keys = support::TempDir::new("budget-keys");
    let key_file = keys.path().join("key.txt");
    std::fs::write(
        &key_file,
        "sk-bench-free # free\nsk-bench-limited # limited rpm=1000000000 rpd=1000000000000 tpd=1000000000000 models=other-model,gemini-*\n",
    )
    .expect("write the key file");
    let mut spec = CoordinatorSpec::plain(2);
    spec.env = vec![
        ("MAX_INFLIGHT_PER_CHILD".into(), "0".into()),
        ("TESTCHILD_COMPLETION_DELAY_MS".into(), "0".into()),
        ("AUTH_KEY_FILE_PATH".into(), key_file.display().to_string()),
    ];
    let coord = Coordinator::start(&spec);
    println!(
        "== budget: the per-key limit check, POST /v1/chat/completions, c={CLIENTS}, keep-alive =="
    );
    println!(
        "keys: free (no limits) and limited (rpm, rpd, tpd never reached; models=other-model,gemini-*); {ROUNDS} rounds each, alternating, {:.1} s measured per run",
        measure.as_secs_f64()
    );
    let (port, free, limited) = (coord.port, "sk-bench-free", "sk-bench-limited");
    compare(
        ("free", request(port, free), port),
        ("limited", request(port, limited), port),
        measure,
    );
    drop(coord);
    accounts::cost(measure);
    accounts::spread();
}

/// One arm of a comparison: its name, the request, the port it goes to.
type Arm<'a> = (&'a str, Vec<u8>, u16);

/// `ROUNDS` runs of each arm, alternating, pooled: their table and the
/// ratios of `b` to `a`.
pub(crate) fn compare(a: Arm<'_>, b: Arm<'_>, measure: Duration) {
    let run = |(_, request, port): &Arm<'_>| -> LoadResult {
        Load {
            request: request.clone(),
            ports: vec![*port],
            clients: CLIENTS,
            warmup: Duration::from_millis(300),
            measure,
            max_requests: 1_000_000,
            capture_header: None,
        }
        .run()
    };
    let (mut lat, mut rate) = ([Vec::new(), Vec::new()], [0.0, 0.0]);
    for _ in 0..ROUNDS {
        for (i, arm) in [&a, &b].into_iter().enumerate() {
            let r = run(arm);
            if r.errors > 0 || r.non_200 > 0 {
                let (e, n, first) = (r.errors, r.non_200, &r.first_error);
                println!("{}: {e} errors, {n} non-200 (first: {first:?})", arm.0);
            }
            rate[i] += r.throughput() / ROUNDS as f64;
            lat[i].extend_from_slice(&r.latency_ns);
        }
    }
    let (x, y) = (summarize_ns(&lat[0]), summarize_ns(&lat[1]));
    println!(
        "{:<8} {:>8} {:>8} {:>8} {:>8} {:>9} {:>8}",
        "", "p50", "p90", "p99", "mean", "req/s", "n"
    );
    for (name, s, rate) in [(a.0, &x, rate[0]), (b.0, &y, rate[1])] {
        println!(
            "{name:<8} {:>8.3} {:>8.3} {:>8.3} {:>8.3} {:>9.0} {:>8}",
            s.p50, s.p90, s.p99, s.mean, rate, s.n
        );
    }
    println!(
        "{} / {}: p50 {}, mean {}, req/s {}; added per request at p50: {:+.1} µs",
        b.0,
        a.0,
        ratio(y.p50, x.p50),
        ratio(y.mean, x.mean),
        ratio(rate[1], rate[0]),
        (y.p50 - x.p50) * 1000.0
    );
}

#[path = "budget_accounts.rs"]
mod accounts;
