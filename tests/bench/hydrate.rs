//! Benchmark (not a timed test): how long `--hydrate-only` takes to pull 500
//! small profiles from a local s3s-fs with one download thread versus the
//! parallel default (`S3_DOWNLOAD_THREADS` unset, i.e. 8), measured in the
//! same run, interleaved so both see the same machine state.
//!
//! Run: `cargo bench --bench hydrate` (needs s3s-fs, as the S3 tests do).
//! Prints per-run times, medians and the speedup; asserts nothing about
//! speed, only that every run hydrated all profiles.

// The S3 tests' server and runner harness; their #[test]s are not compiled
// into a harness-less bench.
#[allow(dead_code)]
#[path = "../s3.rs"]
mod s3;

use std::time::Duration;

const PROFILES: usize = 500;
const REPETITIONS: usize = 5;

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() {
    let server = s3::S3Server::start();
    for i in 0..PROFILES {
        let body = format!(
            "{{\"cookies\":[{{\"name\":\"SID\",\"value\":\"bench-{i}\"}}],\"origins\":[]}}"
        );
        server.put(
            "bench",
            &format!("active/profile-{i:04}.json"),
            body.as_bytes(),
        );
    }
    server.put("bench", "key.txt", b"bench-key\n");
    let endpoint = server.endpoint();

    let variants: [(&str, Option<&str>); 2] = [("1 thread", Some("1")), ("default (8)", None)];
    let mut times: Vec<Vec<Duration>> = vec![Vec::new(); variants.len()];
    // One warm-up each (page cache, server start-up), then interleaved runs.
    for round in 0..=REPETITIONS {
        for (v, (name, threads)) in variants.iter().enumerate() {
            let tmp = s3::TempDir::new("bench");
            let cache = tmp.path().join("cache");
            let mut env = s3::s3_env(&endpoint, "bench", &cache);
            env.push(("RUST_LOG", "warn"));
            if let Some(t) = threads {
                env.push(("S3_DOWNLOAD_THREADS", t));
            }
            let run = s3::hydrate_only(&env);
            run.expect_code(0);
            assert_eq!(run.summary()["profiles"], PROFILES, "{run}");
            if round > 0 {
                println!("run {round} {name:>12}: {:>8.1?}", run.elapsed);
                times[v].push(run.elapsed);
            }
        }
    }
    let medians: Vec<Duration> = times.into_iter().map(median).collect();
    println!();
    println!("hydrating {PROFILES} profiles from s3s-fs on 127.0.0.1, median of {REPETITIONS}:");
    for ((name, _), m) in variants.iter().zip(&medians) {
        println!("  {name:>12}: {m:>8.1?}");
    }
    println!(
        "  speedup of the default over 1 thread: {:.2}x",
        medians[0].as_secs_f64() / medians[1].as_secs_f64()
    );
}
