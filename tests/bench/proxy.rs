//! Benchmark: the proxy's cost, against talking to the children directly and
//! against Debian's nginx in front of the same two children.
//!
//! The project's bar: at least as fast as nginx (`proxy_buffering off`,
//! keep-alive upstream), adding no more than 0.1 ms at p50; SSE first byte
//! within 0.6 ms of direct; coordinator RSS at most 6 MB idle. This prints
//! the figures for those claims and asserts nothing.
//!
//! Load: closed loop, N client threads each with one keep-alive connection,
//! `POST /v1/chat/completions` back to back, non-streamed and streamed (5
//! events, no pause), at 1, 8 and 64 clients, on each of three paths. The
//! test child keeps connections open after streams as after plain answers,
//! so every path reuses its connections (the `conn` column counts connects).
//!
//! The coordinator runs with `MAX_INFLIGHT_PER_CHILD=0` (no per-child
//! limit, no fleet queue), like nginx without a queue: this measures the
//! proxy path, not queueing (`fleet.rs` measures that).
//!
//! `BENCH_MEASURE_MS` (default 1500) sets the measured window per cell.
//! `BENCH_BASELINE=/path/to/aistudioproxy` adds a fourth path: an earlier
//! build of the coordinator with the same settings and its own two test
//! children, measured in the same cells, so a change is compared with the
//! build before it in the same run (`baseline` rows and ratios).

#[path = "support/mod.rs"]
mod support;

use std::time::{Duration, Instant};

use support::{
    chat_body, find_nginx, post_json, ratio, rss_kib, threads_of, Coordinator, CoordinatorSpec,
    Load, LoadResult, Nginx,
};

const CONCURRENCY: [usize; 3] = [1, 8, 64];
const NGINX_WORKERS: u32 = 2;

fn main() {
    support::watchdog("proxy", Duration::from_secs(240));
    let measure = Duration::from_millis(
        std::env::var("BENCH_MEASURE_MS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(1500),
    );
    let warmup = Duration::from_millis(300);

    let mut spec = CoordinatorSpec::plain(2);
    spec.env = vec![
        // These children answer at once and take concurrent requests, and
        // nginx sends them as many as it likes: the coordinator gets no
        // per-child limit either, so both proxies do the same job.
        ("MAX_INFLIGHT_PER_CHILD".into(), "0".into()),
        ("TESTCHILD_COMPLETION_DELAY_MS".into(), "0".into()),
        ("TESTCHILD_STREAM_EVENTS".into(), "5".into()),
        ("TESTCHILD_STREAM_INTERVAL_MS".into(), "0".into()),
    ];
    let coord = Coordinator::start(&spec);
    let pid = coord.pid();
    let rss_start = rss_kib(pid);
    let threads_start = threads_of(pid);
    let children = coord.api_ports.clone();
    let baseline = std::env::var_os("BENCH_BASELINE").map(|bin| {
        println!("baseline: {}", bin.to_string_lossy());
        Coordinator::start_binary(&bin, &spec)
    });

    let nginx = match find_nginx() {
        None => {
            println!("nginx not found on PATH or in /usr/sbin: the nginx column is skipped (scripts/bench.sh installs it)");
            None
        }
        Some(bin) => match Nginx::start(&bin, &children, NGINX_WORKERS) {
            Ok(n) => Some(n),
            Err(e) => {
                println!("nginx could not start, its column is skipped: {e}");
                None
            }
        },
    };

    println!("== proxy: POST /v1/chat/completions, closed loop, keep-alive clients ==");
    println!(
        "children: 2 aisp-testchild (completion_delay_ms 0; streams: 5 events, interval 0, keep-alive); coordinator MAX_INFLIGHT_PER_CHILD=0"
    );
    println!(
        "nginx: {}",
        match &nginx {
            Some(n) => format!(
                "master + {} workers, least_conn, keepalive 64, max_fails=0, proxy_http_version 1.1, proxy_buffering off",
                n.workers
            ),
            None => "not running".into(),
        }
    );
    println!(
        "each cell: clients start one by one, {:.1} s warm-up, then {:.1} s measured; latency in ms; conn = TCP connects by the clients; starv = clients served nothing in the window",
        warmup.as_secs_f64(),
        measure.as_secs_f64()
    );

    let mut verdicts = Vec::new();
    for stream in [false, true] {
        let body = chat_body(stream);
        println!();
        println!(
            "-- {} --",
            if stream {
                "streamed (SSE): total latency, then time to first body byte"
            } else {
                "non-streamed"
            }
        );
        println!(
            "{:>4} {:<12} {:>8} {:>8} {:>8} {:>8} {:>9} {:>7} {:>5} {:>6} {:>5}{}",
            "c",
            "path",
            "p50",
            "p90",
            "p99",
            "mean",
            "req/s",
            "n",
            "err",
            "conn",
            "starv",
            if stream {
                format!(" | {:>8} {:>8} {:>8}", "fb p50", "fb p90", "fb p99")
            } else {
                String::new()
            }
        );
        for &c in &CONCURRENCY {
            let run = |ports: Vec<u16>| {
                Load {
                    request: post_json("/v1/chat/completions", ports[0], &body),
                    ports,
                    clients: c,
                    warmup,
                    measure,
                    max_requests: 1_000_000,
                    capture_header: None,
                }
                .run()
            };
            // The test child sometimes cuts a fresh connection under load
            // (see the report); the coordinator then evicts that child, as
            // the contract says. Each path starts with both children ready,
            // and the restarts during the coordinator's run are shown.
            let settle = |what: &str| {
                if coord.wait_all_ready(Duration::from_secs(15)).is_none() {
                    println!("     (children not all ready 15 s before the {what} run)");
                }
            };
            settle("direct");
            let direct = run(children.clone());
            let restarts_before = coord.wait_all_ready(Duration::from_secs(15)).unwrap_or(0);
            let via_coord = run(vec![coord.port]);
            let restarts_after = coord
                .slots()
                .map_or(0, |s| s.iter().map(|s| s.restarts).sum());
            let via_base = baseline.as_ref().map(|b| {
                if b.wait_all_ready(Duration::from_secs(15)).is_none() {
                    println!("     (baseline children not all ready after 15 s)");
                }
                run(vec![b.port])
            });
            settle("nginx");
            let via_nginx = nginx.as_ref().map(|n| run(vec![n.port]));
            let mut rows = vec![("direct", &direct), ("coordinator", &via_coord)];
            if let Some(b) = &via_base {
                rows.push(("baseline", b));
            }
            if let Some(n) = &via_nginx {
                rows.push(("nginx", n));
            }
            for (name, r) in &rows {
                print_row(c, name, r, stream);
            }
            let (d, k) = (direct.latency(), via_coord.latency());
            let mut line = format!(
                "{:>4} {:<12} coord/direct p50 {} | added p50 {:+.3} ms",
                "",
                "ratios",
                ratio(k.p50, d.p50),
                k.p50 - d.p50
            );
            if let Some(n) = &via_nginx {
                let n = n.latency();
                line.push_str(&format!(
                    " | coord/nginx p50 {} p99 {} req/s {} | coord-nginx p50 {:+.3} ms",
                    ratio(k.p50, n.p50),
                    ratio(k.p99, n.p99),
                    ratio(
                        via_coord.throughput(),
                        via_nginx.as_ref().map_or(0.0, |n| n.throughput())
                    ),
                    k.p50 - n.p50
                ));
            }
            if let Some(b) = &via_base {
                line.push_str(&format!(
                    " | coord/baseline req/s {} | baseline added p50 {:+.3} ms",
                    ratio(via_coord.throughput(), b.throughput()),
                    b.latency().p50 - d.p50
                ));
            }
            if stream {
                let (df, kf) = (direct.first_byte(), via_coord.first_byte());
                line.push_str(&format!(
                    " | first byte vs direct {:+.3} ms",
                    kf.p50 - df.p50
                ));
                if let Some(n) = &via_nginx {
                    line.push_str(&format!(
                        ", nginx vs direct {:+.3} ms",
                        n.first_byte().p50 - df.p50
                    ));
                }
            }
            if restarts_after > restarts_before {
                line.push_str(&format!(
                    " | children evicted during the coordinator run: {}",
                    restarts_after - restarts_before
                ));
            }
            println!("{line}");
            verdicts.push((stream, c, direct, via_coord, via_nginx));
        }
    }

    let threads_loaded = threads_of(pid);
    let idle_from = Instant::now();
    std::thread::sleep(Duration::from_secs(2));
    let rss_after = rss_kib(pid);
    let threads_after = threads_of(pid);

    println!();
    println!("-- coordinator memory (VmRSS, pid {pid}) --");
    println!(
        "after start, 2 children ready: {} ({} threads)",
        kib(rss_start),
        threads_start.map_or("?".into(), |t| t.to_string())
    );
    println!(
        "after the load and {:.1} s idle: {} ({} threads; {} right after the load)",
        idle_from.elapsed().as_secs_f64(),
        kib(rss_after),
        threads_after.map_or("?".into(), |t| t.to_string()),
        threads_loaded.map_or("?".into(), |t| t.to_string())
    );
    if let Some(n) = &nginx {
        println!(
            "nginx master pid {} for comparison: {}",
            n.pid(),
            kib(rss_kib(n.pid()))
        );
    }
    let log = coord.log();
    let evictions: Vec<&str> = log.lines().filter(|l| l.contains("evicting")).collect();
    println!(
        "coordinator warnings: {} lines, {} evictions{}",
        log.lines().count(),
        evictions.len(),
        evictions
            .first()
            .map(|l| format!("; first: {l}"))
            .unwrap_or_default()
    );

    println!();
    println!("-- against the bar (p50 added over direct; SSE first byte over direct) --");
    for (stream, c, direct, via_coord, via_nginx) in &verdicts {
        let added = via_coord.latency().p50 - direct.latency().p50;
        let nginx_added = via_nginx
            .as_ref()
            .map(|n| format!("{:+.3} ms", n.latency().p50 - direct.latency().p50))
            .unwrap_or_else(|| "-".into());
        let mut line = format!(
            "{:<12} c={c:<3} coordinator adds {added:+.3} ms at p50 (bar +0.100), nginx adds {nginx_added}",
            if *stream { "streamed" } else { "non-streamed" }
        );
        if *stream {
            let fb = via_coord.first_byte().p50 - direct.first_byte().p50;
            line.push_str(&format!("; first byte {fb:+.3} ms (bar +0.600)"));
        }
        println!("{line}");
    }
    println!(
        "coordinator RSS idle: {} after start, {} after load (bar 6 MB = 6144 KiB)",
        kib(rss_start),
        kib(rss_after)
    );
    drop(nginx);
    drop(coord);
}

fn kib(v: Option<u64>) -> String {
    v.map_or("?".into(), |k| {
        format!("{k} KiB ({:.2} MiB)", k as f64 / 1024.0)
    })
}

fn print_row(c: usize, name: &str, r: &LoadResult, stream: bool) {
    let l = r.latency();
    let mut s = format!(
        "{c:>4} {name:<12} {:>8.3} {:>8.3} {:>8.3} {:>8.3} {:>9.0} {:>7} {:>5} {:>6} {:>5}",
        l.p50,
        l.p90,
        l.p99,
        l.mean,
        r.throughput(),
        l.n,
        r.errors + r.non_200,
        r.connects,
        r.starved
    );
    if stream {
        let f = r.first_byte();
        s.push_str(&format!(" | {:>8.3} {:>8.3} {:>8.3}", f.p50, f.p90, f.p99));
    }
    if let Some(e) = &r.first_error {
        s.push_str(&format!("  (first error: {e})"));
    }
    println!("{s}");
}
