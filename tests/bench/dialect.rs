//! Benchmark: what the dialect edge adds per request. The same two test
//! children answer the same completion asked three ways through one
//! coordinator: as an OpenAI chat completion (the baseline: no
//! translation), as an Anthropic Messages request and as a Gemini
//! generateContent request (each translated in and out, streams event by
//! event). Closed loop, keep-alive clients, at 1 and 8 clients,
//! non-streamed and streamed (5 events, no pause).
//!
//! Each cell runs OpenAI, Anthropic, Gemini, then OpenAI again; the
//! baseline is the mean of the two OpenAI runs, so drift of a shared
//! machine shows as the gap between them (printed). The figure asked for
//! is "added p50" at c=8: dialect p50 minus baseline p50. Asserts nothing.
//!
//! `BENCH_MEASURE_MS` (default 1500) sets the measured window per run.

#[path = "support/mod.rs"]
mod support;

use std::time::Duration;

use support::{chat_body, post_json, ratio, Coordinator, CoordinatorSpec, Load, LoadResult};

const CONCURRENCY: [usize; 2] = [1, 8];

/// (name, path, body) of the three ways to ask.
fn requests(stream: bool) -> Vec<(&'static str, String, String)> {
    let anthropic = format!(
        r#"{{"model":"gemini-test","max_tokens":256,"stream":{stream},"messages":[{{"role":"user","content":"hello from the benchmark"}}]}}"#
    );
    let gemini = r#"{"contents":[{"role":"user","parts":[{"text":"hello from the benchmark"}]}]}"#;
    let gemini_path = if stream {
        "/v1beta/models/gemini-test:streamGenerateContent?alt=sse"
    } else {
        "/v1beta/models/gemini-test:generateContent"
    };
    vec![
        ("openai", "/v1/chat/completions".into(), chat_body(stream)),
        ("anthropic", "/v1/messages".into(), anthropic),
        ("gemini", gemini_path.into(), gemini.into()),
    ]
}

fn main() {
    support::watchdog("dialect", Duration::from_secs(180));
    let measure = Duration::from_millis(
        std::env::var("BENCH_MEASURE_MS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(1500),
    );
    let warmup = Duration::from_millis(300);
    let mut spec = CoordinatorSpec::plain(2);
    spec.env = vec![
        ("MAX_INFLIGHT_PER_CHILD".into(), "0".into()),
        ("TESTCHILD_COMPLETION_DELAY_MS".into(), "0".into()),
        ("TESTCHILD_STREAM_EVENTS".into(), "5".into()),
        ("TESTCHILD_STREAM_INTERVAL_MS".into(), "0".into()),
    ];
    let coord = Coordinator::start(&spec);
    println!("== dialect: the same completion asked as OpenAI, Anthropic and Gemini, through one coordinator ==");
    println!(
        "children: 2 aisp-testchild (completion_delay_ms 0; streams: 5 events, interval 0); MAX_INFLIGHT_PER_CHILD=0; each run {:.1} s warm-up, {:.1} s measured; latency in ms",
        warmup.as_secs_f64(),
        measure.as_secs_f64()
    );
    let mut added = Vec::new();
    for stream in [false, true] {
        println!();
        println!("-- {} --", if stream { "streamed" } else { "non-streamed" });
        println!(
            "{:>3} {:<10} {:>8} {:>8} {:>8} {:>9} {:>6} {:>5}{}",
            "c",
            "dialect",
            "p50",
            "p90",
            "p99",
            "req/s",
            "n",
            "err",
            if stream { "  | first byte p50" } else { "" }
        );
        for &c in &CONCURRENCY {
            let run = |path: &str, body: &str| {
                let _ = coord.wait_all_ready(Duration::from_secs(15));
                Load {
                    request: post_json(path, coord.port, body),
                    ports: vec![coord.port],
                    clients: c,
                    warmup,
                    measure,
                    max_requests: 1_000_000,
                    capture_header: None,
                }
                .run()
            };
            let asks = requests(stream);
            let mut results: Vec<(&str, LoadResult)> = Vec::new();
            for (name, path, body) in &asks {
                results.push((name, run(path, body)));
            }
            let (_, path, body) = &asks[0];
            results.push(("openai", run(path, body)));
            for (name, r) in &results {
                row(c, name, r, stream);
            }
            let base = (results[0].1.latency().p50 + results[3].1.latency().p50) / 2.0;
            let drift = results[3].1.latency().p50 - results[0].1.latency().p50;
            let mut line = format!(
                "{:>3} {:<10} baseline p50 {base:.3} ms (the two OpenAI runs differ by {drift:+.3} ms)",
                "", "ratios"
            );
            for (name, r) in &results[1..3] {
                let p50 = r.latency().p50;
                line.push_str(&format!(
                    " | {name}: added p50 {:+.3} ms, {}x",
                    p50 - base,
                    ratio(p50, base)
                ));
                added.push((stream, c, *name, p50 - base, ratio(p50, base)));
            }
            println!("{line}");
        }
    }
    println!();
    println!("-- added by translation at c=8 (p50, against the OpenAI path in the same run) --");
    for (stream, c, name, ms, x) in added.iter().filter(|a| a.1 == 8) {
        println!(
            "{} c={c} {name}: {ms:+.3} ms per request ({x}x the OpenAI path)",
            if *stream {
                "streamed    "
            } else {
                "non-streamed"
            }
        );
    }
}

fn row(c: usize, name: &str, r: &LoadResult, stream: bool) {
    let l = r.latency();
    let mut s = format!(
        "{c:>3} {name:<10} {:>8.3} {:>8.3} {:>8.3} {:>9.0} {:>6} {:>5}",
        l.p50,
        l.p90,
        l.p99,
        r.throughput(),
        l.n,
        r.errors + r.non_200
    );
    if stream {
        s.push_str(&format!("  | {:>8.3}", r.first_byte().p50));
    }
    if let Some(e) = &r.first_error {
        s.push_str(&format!("  (first error: {e})"));
    }
    println!("{s}");
}
