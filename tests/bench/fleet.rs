//! Benchmark: the coordinator's fleet queue against HAProxy's queue and
//! against nginx without a queue, in front of the same two one-at-a-time
//! children of unequal speed, under open-loop (Poisson) arrivals at 50, 80
//! and 95 % of the fleet's capacity.
//!
//! Children: `fast` (completion_delay_ms 10) and `slow` (40), each serving
//! one completion at a time (the test child's lane, like the real child's
//! one browser page): capacity 100 + 25 = 125 completions/s.
//!
//! Configurations, all on the same children (the coordinator runs them; the
//! other two proxies are pointed at their API ports):
//! - `coordinator`: `MAX_INFLIGHT_PER_CHILD=1` (the default), so a request
//!   waits in the coordinator's one FIFO until a child is free.
//! - `haproxy`: Debian's HAProxy, `maxconn 1` per server and its queue
//!   (`timeout queue 120s`, the coordinator's `QUEUE_TIMEOUT_S`), `balance
//!   leastconn`, the standard way to front one-at-a-time servers. With
//!   `maxconn 1` a server at its limit is never picked, so the algorithm
//!   only chooses between idle servers; `leastconn` is HAProxy's advice for
//!   long requests of varying length and, unlike `roundrobin`, does not
//!   carry a rotation position across the queue.
//! - `nginx`: Debian's nginx, `least_conn`, keep-alive upstream, no queue
//!   (nginx has none): every request goes at once to the child with the
//!   fewest requests in progress and waits inside that child.
//!
//! Load: each (load, repetition) draws one Poisson schedule, sent unchanged
//! through each configuration in a rotating order, so configurations are
//! interleaved and compared on the same arrivals. Latency counts from the
//! scheduled send time. See `support/openloop.rs`.
//!
//! Ideal: the same schedule through a zero-overhead fleet queue (FIFO; a
//! request goes to the child that can start it first, the fast one when
//! both are idle; services take exactly 10 and 40 ms), simulated.
//!
//! Handoff: from a child freeing up to the next request reaching it, seen
//! on the children's ports by `tcpdump` (see `support/pcap.rs`).
//!
//! `BENCH_FLEET_MS` (default 6000) sets the measured window of each run and
//! `BENCH_FLEET_REPS` (default 3) the repetitions.

#[path = "support/mod.rs"]
mod support;

use std::collections::HashMap;
use std::time::Duration;

use serde_json::json;
use support::haproxy::{find_haproxy, haproxy_version, HaProxy};
use support::openloop::{poisson_schedule, OpenLoop, OpenLoopResult};
use support::pcap::{
    completions, find_tcpdump, handoffs, service_samples, service_us, Capture, Segment,
};
use support::{chat_body, find_nginx, post_json, summarize_ns, Coordinator, CoordinatorSpec};
use support::{Nginx, Summary};

const FAST_MS: u64 = 10;
const SLOW_MS: u64 = 40;
const LOADS: [f64; 3] = [0.50, 0.80, 0.95];
const WARMUP: Duration = Duration::from_millis(1000);
const CLIENTS: usize = 128;
const DRAIN: Duration = Duration::from_secs(20);
const NOMINAL: [Duration; 2] = [
    Duration::from_millis(FAST_MS),
    Duration::from_millis(SLOW_MS),
];

fn capacity() -> f64 {
    capacity_of(NOMINAL)
}

fn capacity_of(service: [Duration; 2]) -> f64 {
    service.iter().map(|s| 1.0 / s.as_secs_f64()).sum()
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// The children's real service times now: median latency of back-to-back
/// completions sent straight to each (one client each, both at once). On a
/// busy machine they are slower than their nominal 10 and 40 ms, and load
/// levels and the ideal are taken relative to what they really do.
fn calibrate(children: &[u16]) -> [Duration; 2] {
    let body = chat_body(false);
    let handles: Vec<_> = children
        .iter()
        .take(2)
        .map(|&port| {
            let request = post_json("/v1/chat/completions", port, &body);
            std::thread::spawn(move || {
                support::Load {
                    ports: vec![port],
                    clients: 1,
                    request,
                    warmup: Duration::from_millis(200),
                    measure: Duration::from_millis(1500),
                    max_requests: 10_000,
                    capture_header: None,
                }
                .run()
                .latency()
                .p50
            })
        })
        .collect();
    let mut out = NOMINAL;
    for (i, h) in handles.into_iter().enumerate() {
        if let Ok(p50) = h.join() {
            if p50 > 0.0 {
                out[i] = Duration::from_secs_f64(p50 / 1000.0);
            }
        }
    }
    out
}

/// One configuration's figures in one run.
struct Run {
    config: &'static str,
    load: usize,
    throughput: f64,
    ideal: f64,
    lat: Summary,
    ideal_lat: Summary,
    errors: usize,
    late: usize,
    served: HashMap<String, u64>,
    sent_us: Vec<i64>,
    span_us: (i64, i64),
}

fn main() {
    let env_num = |k: &str, d: u64| {
        std::env::var(k)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(d)
    };
    let measure = Duration::from_millis(env_num("BENCH_FLEET_MS", 6000).max(500));
    let reps = env_num("BENCH_FLEET_REPS", 3).clamp(1, 20) as usize;
    let per_run = WARMUP + measure + Duration::from_secs(2);
    let limit = per_run * (reps * LOADS.len() * 3) as u32 + Duration::from_secs(90);
    support::watchdog("fleet", limit);

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
        env: vec![("MAX_INFLIGHT_PER_CHILD".into(), "1".into())],
        wait_ready: 2,
    };
    let coord = Coordinator::start(&spec);
    // [fast, slow], whichever slot each profile landed in.
    let slots = coord.slots().unwrap_or_default();
    let port_of = |name: &str| {
        slots
            .iter()
            .find(|s| s.profile.as_deref() == Some(name))
            .map(|s| s.api_port)
            .expect("both profiles run")
    };
    let children = vec![port_of("fast"), port_of("slow")];
    let names = [
        format!("fast :{}", children[0]),
        format!("slow :{}", children[1]),
    ];

    let mut configs: Vec<(&'static str, u16)> = vec![("coordinator", coord.port)];
    let haproxy = match find_haproxy() {
        None => {
            println!("haproxy not found: its rows are skipped (scripts/bench.sh installs it)");
            None
        }
        Some(bin) => {
            let v = haproxy_version(&bin);
            match HaProxy::start(&bin, &children, 2, "leastconn", Duration::from_secs(120)) {
                Ok(h) => {
                    println!("haproxy: {v}");
                    configs.push(("haproxy", h.port));
                    Some(h)
                }
                Err(e) => {
                    println!("haproxy could not start, its rows are skipped: {e}");
                    None
                }
            }
        }
    };
    let nginx = match find_nginx() {
        None => {
            println!("nginx not found: its rows are skipped (scripts/bench.sh installs it)");
            None
        }
        Some(bin) => match Nginx::start(&bin, &children, 2) {
            Ok(n) => {
                configs.push(("nginx", n.port));
                Some(n)
            }
            Err(e) => {
                println!("nginx could not start, its rows are skipped: {e}");
                None
            }
        },
    };
    let capture = match find_tcpdump() {
        None => Err("tcpdump not found (scripts/bench.sh installs it)".to_string()),
        Some(bin) => Capture::start(&bin, &children),
    };
    if let Err(e) = &capture {
        println!("no packet capture, so no handoff figures: {e}");
    }

    println!();
    println!("== fleet: one-at-a-time children of unequal speed, open-loop Poisson arrivals ==");
    println!(
        "children: {} (fast: completion_delay_ms {FAST_MS}, slow: {SLOW_MS}), one completion at a time each; nominal capacity {:.0} req/s",
        names.join(", "),
        capacity()
    );
    println!(
        "coordinator :{}: MAX_INFLIGHT_PER_CHILD=1 (fleet FIFO queue)",
        coord.port
    );
    if let Some(h) = &haproxy {
        println!(
            "haproxy :{}: {} threads, balance {}, maxconn 1 per server, timeout queue 120s, keep-alive both sides",
            h.port, h.threads, h.balance
        );
    }
    if let Some(n) = &nginx {
        println!(
            "nginx :{}: {} workers, least_conn, keepalive 64, proxy_buffering off, no queue (requests wait inside the children)",
            n.port, n.workers
        );
    }
    println!(
        "load: {CLIENTS} keep-alive client connections; non-streamed completions at {} of the capacity calibrated before each repetition; per run {:.1} s warm-up + {:.1} s measured; {reps} repetitions, configurations in rotating order on the same schedule",
        LOADS.map(|l| format!("{:.0}%", l * 100.0)).join(", "),
        WARMUP.as_secs_f64(),
        measure.as_secs_f64()
    );
    println!();
    println!(
        "{:>3} {:>4} {:<12} {:>7} {:>7} {:>7} {:>7} {:>7}   served by",
        "rep", "load", "config", "req/s", "ideal", "mean", "p50", "p99"
    );

    let mut runs: Vec<Run> = Vec::new();
    let mut service = NOMINAL;
    let mut schedules: Vec<(usize, Vec<Duration>)> = Vec::new();
    let body = chat_body(false);
    for rep in 0..reps {
        for (li, &load) in LOADS.iter().enumerate() {
            if li == 0 {
                service = calibrate(&children);
                let cap = capacity_of(service);
                println!(
                    "{rep:>3} calibration: the children answer in {:.2} and {:.2} ms directly (one client each, closed loop): capacity {cap:.1} req/s",
                    ms(service[0]),
                    ms(service[1])
                );
            }
            let rate = load * capacity_of(service);
            let seed = 0x5EED_0000 + (rep as u64) * 16 + li as u64;
            let schedule = poisson_schedule(rate, WARMUP + measure, seed);
            let (ideal, ideal_lat) = simulate(&schedule, measure, service);
            schedules.push((li, schedule.clone()));
            let n = configs.len();
            for k in 0..n {
                let (config, port) = configs[(k + rep + li) % n];
                if coord.wait_all_ready(Duration::from_secs(15)).is_none() {
                    println!("    (children not all ready 15 s before this run)");
                }
                let r = OpenLoop {
                    port,
                    request: post_json("/v1/chat/completions", port, &body),
                    arrivals: schedule.clone(),
                    clients: CLIENTS,
                    drain: DRAIN,
                    capture_header: Some("x-testchild-profile"),
                }
                .run();
                let run = summarize(config, li, &r, measure, ideal, ideal_lat);
                let mut served: Vec<String> =
                    run.served.iter().map(|(k, v)| format!("{k} {v}")).collect();
                served.sort();
                let mut line = format!(
                    "{rep:>3} {:>3.0}% {config:<12} {:>7.1} {:>7.1} {:>7.2} {:>7.2} {:>7.2}   {}",
                    load * 100.0,
                    run.throughput,
                    run.ideal,
                    run.lat.mean,
                    run.lat.p50,
                    run.lat.p99,
                    served.join(", ")
                );
                if run.errors > 0 {
                    line.push_str(&format!(
                        "  errors {} (first: {})",
                        run.errors,
                        r.first_error.as_deref().unwrap_or("-")
                    ));
                }
                if run.late > 0 {
                    line.push_str(&format!("  late sends {}", run.late));
                }
                println!("{line}");
                runs.push(run);
                std::thread::sleep(Duration::from_millis(200));
            }
        }
    }

    let capture = capture.and_then(|c| c.finish());
    let (segs, capture_note): (Option<Vec<Segment>>, String) = match capture {
        Ok((s, counts)) => (Some(s), counts),
        Err(e) => (None, e),
    };

    if let (Some(dir), Some(segs)) = (std::env::var_os("BENCH_FLEET_DUMP"), &segs) {
        dump(std::path::Path::new(&dir), &runs, segs, &children);
    }
    report(&runs, &configs, segs.as_deref(), &children, &capture_note);
    if let Some(segs) = &segs {
        measured_ideal(&runs, &schedules, segs, &children, measure);
    }
    drop(nginx);
    drop(haproxy);
    drop(coord);
}

fn summarize(
    config: &'static str,
    load: usize,
    r: &OpenLoopResult,
    measure: Duration,
    ideal: f64,
    ideal_lat: Summary,
) -> Run {
    let (from, to) = (WARMUP, WARMUP + measure);
    let done_in_window = r
        .samples
        .iter()
        .filter(|s| s.status == 200 && s.done >= from && s.done < to)
        .count();
    let in_window: Vec<_> = r
        .samples
        .iter()
        .filter(|s| s.at >= from && s.at < to)
        .collect();
    let lat_ns: Vec<u64> = in_window
        .iter()
        .filter(|s| s.status == 200)
        .map(|s| s.latency.as_nanos() as u64)
        .collect();
    let mut served = HashMap::new();
    for s in &in_window {
        if let Some(v) = &s.captured {
            *served.entry(v.clone()).or_insert(0) += 1;
        }
    }
    Run {
        config,
        load,
        throughput: done_in_window as f64 / measure.as_secs_f64(),
        ideal,
        lat: summarize_ns(&lat_ns),
        ideal_lat,
        errors: in_window.iter().filter(|s| s.status != 200).count() + r.unsent,
        late: r.late,
        served,
        sent_us: r.samples.iter().map(|s| s.sent_unix_us).collect(),
        span_us: (r.start_unix_us, r.end_unix_us),
    }
}

/// The ideal fleet on `schedule`: completions per second within the window
/// and the latency of requests arriving in it.
fn simulate(schedule: &[Duration], measure: Duration, service: [Duration; 2]) -> (f64, Summary) {
    let mut free = [Duration::ZERO; 2];
    let (from, to) = (WARMUP, WARMUP + measure);
    let mut done_in = 0usize;
    let mut lat = Vec::new();
    for &a in schedule {
        // The child that can start it first; the fast one on a tie.
        let c = if a.max(free[0]) <= a.max(free[1]) {
            0
        } else {
            1
        };
        let done = a.max(free[c]) + service[c];
        free[c] = done;
        if done >= from && done < to {
            done_in += 1;
        }
        if a >= from && a < to {
            lat.push((done - a).as_nanos() as u64);
        }
    }
    (done_in as f64 / measure.as_secs_f64(), summarize_ns(&lat))
}

fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// Per (config, load): medians over the repetitions.
struct Cell {
    throughput: f64,
    ideal: f64,
    of_ideal: f64,
    mean: f64,
    p50: f64,
    p99: f64,
    ideal_mean: f64,
    ideal_p99: f64,
    errors: usize,
    reps: usize,
}

fn cell(runs: &[&Run]) -> Cell {
    let m = |f: &dyn Fn(&Run) -> f64| median(runs.iter().map(|r| f(r)).collect());
    Cell {
        throughput: m(&|r| r.throughput),
        ideal: m(&|r| r.ideal),
        of_ideal: m(&|r| {
            if r.ideal > 0.0 {
                r.throughput / r.ideal
            } else {
                0.0
            }
        }),
        mean: m(&|r| r.lat.mean),
        p50: m(&|r| r.lat.p50),
        p99: m(&|r| r.lat.p99),
        ideal_mean: m(&|r| r.ideal_lat.mean),
        ideal_p99: m(&|r| r.ideal_lat.p99),
        errors: runs.iter().map(|r| r.errors).sum(),
        reps: runs.len(),
    }
}

fn report(
    runs: &[Run],
    configs: &[(&'static str, u16)],
    segs: Option<&[Segment]>,
    children: &[u16],
    capture_note: &str,
) {
    println!();
    println!("-- medians over the repetitions (latency in ms, from the scheduled send to the last byte) --");
    println!(
        "{:>4} {:<12} {:>7} {:>7} {:>6} {:>7} {:>7} {:>7} | {:>9} {:>9} {:>9} | {:>9} {:>9} {:>4}",
        "load",
        "config",
        "req/s",
        "ideal",
        "%ideal",
        "mean",
        "p50",
        "p99",
        "mean/hap",
        "p99/hap",
        "req/s/hap",
        "ideal mean",
        "ideal p99",
        "err"
    );
    for (li, &load) in LOADS.iter().enumerate() {
        let of = |name: &str| {
            let rs: Vec<&Run> = runs
                .iter()
                .filter(|r| r.load == li && r.config == name)
                .collect();
            (!rs.is_empty()).then(|| cell(&rs))
        };
        let hap = of("haproxy");
        for (name, _) in configs {
            let Some(c) = of(name) else { continue };
            let vs = |a: f64, b: Option<f64>| match b {
                Some(b) if b > 0.0 => format!("{:.2}", a / b),
                _ => "-".into(),
            };
            println!(
                "{:>3.0}% {:<12} {:>7.1} {:>7.1} {:>5.1}% {:>7.2} {:>7.2} {:>7.2} | {:>9} {:>9} {:>9} | {:>9.2} {:>9.2} {:>4}",
                load * 100.0,
                name,
                c.throughput,
                c.ideal,
                c.of_ideal * 100.0,
                c.mean,
                c.p50,
                c.p99,
                vs(c.mean, hap.as_ref().map(|h| h.mean)),
                vs(c.p99, hap.as_ref().map(|h| h.p99)),
                vs(c.throughput, hap.as_ref().map(|h| h.throughput)),
                c.ideal_mean,
                c.ideal_p99,
                c.errors
            );
            let _ = c.reps;
        }
    }
    println!(
        "req/s: answers completed inside the measured window per second; ideal: the simulated zero-overhead fleet queue on the same schedule; x/hap: ratio to HAProxy's median in this run"
    );

    println!();
    println!("-- handoff: a child freeing up -> the next waiting request reaching it (µs) --");
    println!(
        "method: tcpdump on lo records every data segment to and from the children's ports with the kernel's timestamp. A completion reaches a child with its request's first segment and frees it with the last segment of its answer. A gap counts when, at the moment a child frees up, some request sent by a client has not yet reached any child (clients' send times against the segments' arrival times, same wall clock), and runs to the next request reaching that child. Requests that reached the child while it was still busy waited inside the child: counted as 'inside', no gap. Pooled over the repetitions. fast p50/p99: the fast child's own service time (nominal 10 ms) on its port, in µs: how much the shared machine delays processes in the same runs."
    );
    let Some(segs) = segs else {
        println!("(no capture: {capture_note})");
        return;
    };
    println!("capture: {capture_note}");
    println!(
        "{:>4} {:<12} {:>8} {:>8} {:>8} {:>8} {:>7} {:>7} {:>7} | {:>9} {:>9}",
        "load", "config", "p50", "p90", "p99", "max", "n", "inside", "idle", "fast p50", "fast p99"
    );
    for (li, &load) in LOADS.iter().enumerate() {
        for (name, _) in configs {
            let mut gaps = Vec::new();
            let (mut inside, mut idle, mut total) = (0, 0, 0);
            let mut svc: Vec<u64> = Vec::new();
            for r in runs.iter().filter(|r| r.load == li && r.config == *name) {
                let served = completions(segs, children, r.span_us.0, r.span_us.1);
                let h = handoffs(&served, children, &r.sent_us);
                svc.extend(
                    service_samples(&served, children[0])
                        .iter()
                        .map(|&us| (us.max(0) as u64) * 1000),
                );
                gaps.extend(h.gaps_us);
                inside += h.inside;
                idle += h.idle;
                total += h.completions;
            }
            let g: Vec<u64> = gaps.iter().map(|&g| (g.max(0) as u64) * 1000).collect();
            let s = summarize_ns(&g);
            let us = |ms: f64| {
                if g.is_empty() {
                    "-".to_string()
                } else {
                    format!("{:.0}", ms * 1000.0)
                }
            };
            let f = summarize_ns(&svc);
            println!(
                "{:>3.0}% {:<12} {:>8} {:>8} {:>8} {:>8} {:>7} {:>7} {:>7} | {:>9.0} {:>9.0}   (of {total} completions seen)",
                load * 100.0,
                name,
                us(s.p50),
                us(s.p90),
                us(s.p99),
                us(s.max),
                s.n,
                inside,
                idle,
                f.p50 * 1000.0,
                f.p99 * 1000.0
            );
        }
    }
}

/// The children's service times as their ports saw them (median over the
/// queueing configurations' runs), and the ideal fleet again with those:
/// what the same schedule costs when the children are as slow as they
/// really are.
fn measured_ideal(
    runs: &[Run],
    schedules: &[(usize, Vec<Duration>)],
    segs: &[Segment],
    children: &[u16],
    measure: Duration,
) {
    let mut per_child: Vec<Vec<f64>> = vec![Vec::new(); children.len()];
    for r in runs.iter().filter(|r| r.config != "nginx") {
        let served = completions(segs, children, r.span_us.0, r.span_us.1);
        for (i, &c) in children.iter().enumerate() {
            if let Some(us) = service_us(&served, c) {
                per_child[i].push(us as f64);
            }
        }
    }
    if per_child.iter().any(Vec::is_empty) || children.len() != 2 {
        return;
    }
    let s = [median(per_child[0].clone()), median(per_child[1].clone())];
    let service = s.map(|us| Duration::from_micros(us as u64));
    let cap = 1e6 / s[0] + 1e6 / s[1];
    println!();
    println!(
        "-- cross-check: the children's service on their ports in the queueing runs (first request segment to last answer segment, median): {:.2} ms (fast) and {:.2} ms (slow), capacity {cap:.1} req/s --",
        s[0] / 1000.0,
        s[1] / 1000.0,
    );
    println!(
        "{:>4} {:>8} {:>7} | {:<24} {:>7} {:>7} {:>7} {:>7}",
        "load", "offered", "% cap", "ideal at these services", "req/s", "mean", "p50", "p99"
    );
    for (li, &load) in LOADS.iter().enumerate() {
        let sims: Vec<(f64, Summary)> = schedules
            .iter()
            .filter(|(l, _)| *l == li)
            .map(|(_, sched)| simulate(sched, measure, service))
            .collect();
        let offered = median(
            schedules
                .iter()
                .filter(|(l, _)| *l == li)
                .map(|(_, sched)| {
                    sched.iter().filter(|&&a| a >= WARMUP).count() as f64 / measure.as_secs_f64()
                })
                .collect(),
        );
        println!(
            "{:>3.0}% {:>8.1} {:>6.1}% | {:<24} {:>7.1} {:>7.2} {:>7.2} {:>7.2}",
            load * 100.0,
            offered,
            100.0 * offered / cap,
            "",
            median(sims.iter().map(|s| s.0).collect()),
            median(sims.iter().map(|s| s.1.mean).collect()),
            median(sims.iter().map(|s| s.1.p50).collect()),
            median(sims.iter().map(|s| s.1.p99).collect()),
        );
    }
}

/// With `BENCH_FLEET_DUMP=<dir>`: each run's completions as the children's
/// ports saw them and its clients' send times, as CSV, to check the
/// handoff figures by other means.
fn dump(dir: &std::path::Path, runs: &[Run], segs: &[Segment], children: &[u16]) {
    let _ = std::fs::create_dir_all(dir);
    for (i, r) in runs.iter().enumerate() {
        let served = completions(segs, children, r.span_us.0, r.span_us.1);
        let mut out = String::from("child,arrived_us,freed_us\n");
        for s in &served {
            out.push_str(&format!("{},{},{}\n", s.child, s.arrived_us, s.freed_us));
        }
        let _ = std::fs::write(
            dir.join(format!("{i:02}-{}-{}-served.csv", r.config, r.load)),
            out,
        );
        let sent: String = r.sent_us.iter().map(|t| format!("{t}\n")).collect();
        let _ = std::fs::write(
            dir.join(format!("{i:02}-{}-{}-sent.csv", r.config, r.load)),
            sent,
        );
    }
}
