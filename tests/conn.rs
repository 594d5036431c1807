//! Client connections against the real binary: refusals every client can
//! read (a lingering close after a 413, checked with Python's urllib and the
//! official OpenAI SDK), and bounds on what slow or idle clients cost
//! (HEADER_TIMEOUT_S, KEEPALIVE_TIMEOUT_S, MAX_CONNECTIONS with its probe
//! reserve).
//!
//! Times asserted here are functional bounds (a connection is closed by a
//! deadline plus slack, or not at all), never performance claims.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::common::*;

/// Generous slack over a deadline on a shared 2-core machine.
const SLACK: Duration = Duration::from_secs(2);

fn connect(port: u16) -> TcpStream {
    let s = TcpStream::connect(("127.0.0.1", port)).expect("connect to the coordinator");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.set_write_timeout(Some(Duration::from_secs(10))).unwrap();
    s
}

/// One answer read off a raw connection: status, head text, body.
struct Answer {
    status: u16,
    head: String,
    body: String,
}

/// Read one answer with a `Content-Length` body; None on EOF or error.
fn read_answer(r: &mut BufReader<TcpStream>) -> Option<Answer> {
    let mut head = String::new();
    loop {
        let mut line = String::new();
        if r.read_line(&mut line).ok()? == 0 {
            return None;
        }
        head.push_str(&line);
        if line == "\r\n" {
            break;
        }
        if head.len() > 64 * 1024 {
            return None;
        }
    }
    let status = head.split(' ').nth(1)?.parse().ok()?;
    let len: usize = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().ok())?
        })
        .unwrap_or(0);
    let mut body = vec![0; len];
    r.read_exact(&mut body).ok()?;
    Some(Answer {
        status,
        head,
        body: String::from_utf8_lossy(&body).into_owned(),
    })
}

/// Block until the peer closes (EOF or reset); how long that took from
/// `since`. Panics if it stays open past the socket's read timeout.
fn closed_after(s: &mut TcpStream, since: Instant) -> (Duration, Vec<u8>) {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    // Bounded: each pass ends in data, EOF or the 10 s read timeout.
    for _ in 0..1000 {
        match s.read(&mut buf) {
            Ok(0) => return (since.elapsed(), got),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {
                return (since.elapsed(), got)
            }
            Err(e) => panic!(
                "the connection was still open after {:.1?} ({e})",
                since.elapsed()
            ),
        }
    }
    panic!("more than 1000 reads from a connection expected to close");
}

/// GET `path` on a new connection (the harness's agent reuses its own);
/// the status, or None when the connection was closed unanswered.
fn probe(port: u16, path: &str) -> Option<u16> {
    let mut s = connect(port);
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .ok()?;
    read_answer(&mut BufReader::new(s)).map(|a| a.status)
}

fn threads_of(pid: i32) -> usize {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Threads:"))
                .and_then(|v| v.trim().parse().ok())
        })
        .unwrap_or(0)
}

/// A Python with the `openai` package (the repository's .venv or
/// AISP_PYTHON), as the proxy tests use.
fn python_with_openai() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("AISP_PYTHON") {
        return Some(p.into());
    }
    let venv = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/python");
    venv.is_file().then_some(venv)
}

/// Any Python 3 for the standard library's urllib: the .venv one, else
/// `python3` from PATH.
fn python_stdlib() -> PathBuf {
    python_with_openai().unwrap_or_else(|| PathBuf::from("python3"))
}

/// Run a Python script; its stdout must be one JSON line.
fn run_python(py: &PathBuf, script: &str, args: &[String]) -> Value {
    let out = Command::new(py)
        .arg("-c")
        .arg(script)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", py.display()));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{} failed: {}\n{stdout}\n{}",
        py.display(),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(stdout.trim())
        .unwrap_or_else(|e| panic!("not one JSON line ({e}): {stdout}"))
}

// ---------------------------------------------------------------------------
// Refusals every client can read

const URLLIB_413: &str = r#"
import http.client, json, sys, urllib.error, urllib.request
url, port, tries = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
body = json.dumps({"model": "m", "messages": [{"role": "user", "content": "x" * (2 << 20)}]}).encode()
outcomes = []
for _ in range(tries):
    try:
        urllib.request.urlopen(urllib.request.Request(
            url, data=body, headers={"Content-Type": "application/json"}), timeout=20)
        outcomes.append("no error")
    except urllib.error.HTTPError as e:
        outcomes.append(f"{e.code} {json.loads(e.read())['error']['code']}")
    except Exception as e:
        outcomes.append(f"{type(e).__name__}: {getattr(e, 'reason', e)!r}")
# The same body chunked: refused once past the limit, mid-body.
conn = http.client.HTTPConnection("127.0.0.1", port, timeout=20)
try:
    chunks = (body[i:i + 65536] for i in range(0, len(body), 65536))
    conn.request("POST", "/v1/chat/completions", body=chunks,
                 headers={"Content-Type": "application/json"}, encode_chunked=True)
    r = conn.getresponse()
    chunked = f"{r.status} {json.loads(r.read())['error']['code']}"
except Exception as e:
    chunked = type(e).__name__
print(json.dumps({"outcomes": outcomes, "chunked": chunked}))
"#;

/// urllib writes the whole body before reading the answer: it used to get
/// BrokenPipeError in most tries, as the refused connection was reset.
#[test]
fn urllib_reads_the_413_for_a_body_over_the_limit_every_time() {
    let dir = TestDir::new("urllib_reads_the_413_for_a_body_over_the_limit_every_time");
    dir.write_profiles(&["a"]);
    let c = Coordinator::start(
        &dir,
        Builder::new().pool_size(1).env("MAX_BODY_BYTES", 1_048_576),
    );
    c.wait_all_ready(secs(10.0));
    let port = c.ports.coordinator;
    let v = run_python(
        &python_stdlib(),
        URLLIB_413,
        &[
            format!("http://127.0.0.1:{port}/v1/chat/completions"),
            port.to_string(),
            "20".to_string(),
        ],
    );
    let outcomes: Vec<&str> = v["outcomes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o.as_str().unwrap())
        .collect();
    assert_eq!(outcomes.len(), 20);
    assert!(
        outcomes.iter().all(|o| *o == "413 request_too_large"),
        "{outcomes:?}"
    );
    assert_eq!(v["chunked"], "413 request_too_large");
    // The refusals cost the coordinator nothing lasting.
    assert_eq!(c.get("/live").map(|r| r.status), Some(200));
}

const OPENAI_30MB: &str = r#"
import json, sys, openai
client = openai.OpenAI(base_url=sys.argv[1], api_key="none", max_retries=0, timeout=60)
try:
    client.chat.completions.create(model="gemini-test",
        messages=[{"role": "user", "content": "x" * (30 << 20)}])
    print(json.dumps({"outcome": "no error"}))
except openai.APIStatusError as e:
    print(json.dumps({"outcome": "status", "status": e.status_code, "code": e.code}))
except openai.APIConnectionError as e:
    print(json.dumps({"outcome": "connection error", "error": repr(e.__cause__ or e)}))
"#;

#[test]
fn the_openai_sdk_gets_a_413_for_a_30_mb_body() {
    let py = python_with_openai().expect(
        "no Python with the openai package: run scripts/test.sh (it creates .venv) or set AISP_PYTHON",
    );
    let dir = TestDir::new("the_openai_sdk_gets_a_413_for_a_30_mb_body");
    dir.write_profiles(&["a"]);
    let c = Coordinator::start(
        &dir,
        Builder::new().pool_size(1).env("MAX_BODY_BYTES", 1_048_576),
    );
    c.wait_all_ready(secs(10.0));
    let v = run_python(
        &py,
        OPENAI_30MB,
        &[format!("http://127.0.0.1:{}/v1", c.ports.coordinator)],
    );
    assert_eq!(v["outcome"], "status", "{v}");
    assert_eq!(v["status"], 413, "{v}");
    assert_eq!(v["code"], "request_too_large", "{v}");
}

/// A refused client that keeps trickling its body is read (so it can read
/// the answer), but only within the lingering bound: 5 s in all.
#[test]
fn a_refused_slow_sender_is_cut_off_within_the_linger_bound() {
    let dir = TestDir::new("a_refused_slow_sender_is_cut_off_within_the_linger_bound");
    dir.write_profiles(&["a"]);
    let c = Coordinator::start(
        &dir,
        Builder::new().pool_size(1).env("MAX_BODY_BYTES", 1_048_576),
    );
    c.wait_all_ready(secs(10.0));
    let mut s = connect(c.ports.coordinator);
    s.write_all(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 104857600\r\n\r\n{",
    )
    .unwrap();
    let mut r = BufReader::new(s.try_clone().unwrap());
    let answer = read_answer(&mut r).expect("the 413 arrives before the body is sent");
    let refused_at = Instant::now();
    assert_eq!(answer.status, 413, "{}", answer.head);
    assert!(
        answer
            .head
            .to_ascii_lowercase()
            .contains("connection: close"),
        "{}",
        answer.head
    );
    assert!(answer.body.contains("request_too_large"), "{}", answer.body);
    // Keep sending, never silent for long, until the coordinator lets go.
    let chunk = [b'x'; 1024];
    let mut cut_after = None;
    // Bounded: 20 ms per pass, 1000 passes is 20 s, past every bound.
    for _ in 0..1000 {
        if s.write_all(&chunk).is_err() {
            cut_after = Some(refused_at.elapsed());
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let cut_after = cut_after.expect("the slow sender was never cut off");
    eprintln!("slow sender cut off {cut_after:.2?} after the 413");
    assert!(
        cut_after <= Duration::from_secs(5) + SLACK,
        "cut off only after {cut_after:.2?}"
    );
    assert_eq!(c.get("/live").map(|r| r.status), Some(200));
}

/// tiny_http's own refusals (431 for a header line over 16 KiB, 400 for a
/// malformed head) close the same way: a client that writes its whole
/// request, 2 MB of body included, before reading still reads the answer.
#[test]
fn head_errors_reach_a_client_that_writes_everything_first() {
    let dir = TestDir::new("head_errors_reach_a_client_that_writes_everything_first");
    dir.write_profiles(&["a"]);
    let c = Coordinator::start(&dir, Builder::new().pool_size(1));
    let port = c.ports.coordinator;
    let body = vec![b'x'; 2 << 20];
    let big = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\nContent-Length: {}\r\n\r\n",
        "a".repeat(20_000),
        body.len()
    );
    let bad = format!("POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nno colon here\r\nContent-Length: {}\r\n\r\n", body.len());
    for (head, status, code) in [(big, 431, "headers_too_large"), (bad, 400, "bad_request")] {
        let mut s = connect(port);
        s.write_all(head.as_bytes()).unwrap();
        s.write_all(&body)
            .unwrap_or_else(|e| panic!("the {status} case: writing the body failed: {e}"));
        let a = read_answer(&mut BufReader::new(s)).expect("an answer after the whole request");
        assert_eq!(a.status, status, "{}", a.head);
        assert!(a.body.contains(code), "{}", a.body);
    }
    assert_eq!(c.get("/live").map(|r| r.status), Some(200));
}

// ---------------------------------------------------------------------------
// Slow and idle clients

/// Half a head, nothing at all, or half a later head on a kept-alive
/// connection: each is closed, without an answer, once HEADER_TIMEOUT_S (of
/// the accept, or of the later head's first byte) has passed.
#[test]
fn heads_that_do_not_come_in_time_close_the_connection() {
    let dir = TestDir::new("heads_that_do_not_come_in_time_close_the_connection");
    dir.write_profiles(&["a"]);
    let c = Coordinator::start(
        &dir,
        Builder::new()
            .pool_size(1)
            .env("HEADER_TIMEOUT_S", 1)
            .env("KEEPALIVE_TIMEOUT_S", 30),
    );
    let port = c.ports.coordinator;
    let opened = Instant::now();
    let mut half = connect(port);
    half.write_all(b"GET /live HTTP/1.1\r\nHost: x\r\n")
        .unwrap();
    let mut silent = connect(port);
    let mut later = connect(port);
    later
        .write_all(b"GET /live HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut r = BufReader::new(later.try_clone().unwrap());
    assert_eq!(read_answer(&mut r).map(|a| a.status), Some(200));

    let (t_half, got) = closed_after(&mut half, opened);
    assert!(got.is_empty(), "{}", String::from_utf8_lossy(&got));
    let (t_silent, got) = closed_after(&mut silent, opened);
    assert!(got.is_empty(), "{}", String::from_utf8_lossy(&got));
    eprintln!("half a head closed after {t_half:.2?}, nothing after {t_silent:.2?}");
    for t in [t_half, t_silent] {
        assert!(t >= Duration::from_millis(900), "closed early: {t:.2?}");
        assert!(t <= Duration::from_secs(1) + SLACK, "closed late: {t:.2?}");
    }

    // The kept-alive connection idles within KEEPALIVE_TIMEOUT_S (30 s), so
    // it is open well past the first head's deadline...
    wait_until("1.5 s since the first connections", secs(5.0), || {
        opened.elapsed() >= Duration::from_millis(1500)
    });
    // ...and a later head, once begun, has HEADER_TIMEOUT_S from its first byte.
    let begun = Instant::now();
    later.write_all(b"GET /live HTTP/1.1\r\n").unwrap();
    let (t_later, got) = closed_after(&mut later, begun);
    assert!(got.is_empty(), "{}", String::from_utf8_lossy(&got));
    eprintln!("half a later head closed after {t_later:.2?}");
    assert!(t_later >= Duration::from_millis(900), "{t_later:.2?}");
    assert!(t_later <= Duration::from_secs(1) + SLACK, "{t_later:.2?}");
    assert_eq!(c.get("/live").map(|r| r.status), Some(200));
}

/// An idle keep-alive connection closes after KEEPALIVE_TIMEOUT_S; one that
/// keeps sending requests (each within the timeout) stays open.
#[test]
fn idle_keepalive_connections_close_and_busy_ones_stay() {
    let dir = TestDir::new("idle_keepalive_connections_close_and_busy_ones_stay");
    dir.write_profiles(&["a"]);
    let c = Coordinator::start(
        &dir,
        Builder::new()
            .pool_size(1)
            .env("KEEPALIVE_TIMEOUT_S", 1)
            .env("HEADER_TIMEOUT_S", 5),
    );
    let port = c.ports.coordinator;
    let ask = b"GET /live HTTP/1.1\r\nHost: x\r\n\r\n";

    let mut idle = connect(port);
    idle.write_all(ask).unwrap();
    let mut idle_r = BufReader::new(idle.try_clone().unwrap());
    assert_eq!(read_answer(&mut idle_r).map(|a| a.status), Some(200));
    let answered = Instant::now();
    // Watched meanwhile, on its own thread, so its close is timed as it happens.
    let watcher = std::thread::Builder::new()
        .name("idle-watch".into())
        .spawn(move || closed_after(&mut idle, answered))
        .unwrap();

    // Busy: a request every 400 ms for 3 s, all on one connection.
    let busy = connect(port);
    let mut busy_w = busy.try_clone().unwrap();
    let mut busy_r = BufReader::new(busy);
    let started = Instant::now();
    let mut served = 0;
    let mut next = Instant::now();
    // Bounded: 8 requests.
    for i in 0..8 {
        wait_until("the next busy request's turn", secs(5.0), || {
            Instant::now() >= next
        });
        busy_w
            .write_all(ask)
            .unwrap_or_else(|e| panic!("request {i} could not be sent: {e}"));
        let a = read_answer(&mut busy_r)
            .unwrap_or_else(|| panic!("request {i} got no answer after {:.1?}", started.elapsed()));
        assert_eq!(a.status, 200);
        served += 1;
        next += Duration::from_millis(400);
    }
    assert_eq!(served, 8);
    assert!(started.elapsed() >= Duration::from_millis(2800));

    // The idle one was closed meanwhile, about 1 s after its answer.
    let (t_idle, got) = watcher.join().expect("the idle watcher");
    assert!(got.is_empty(), "{}", String::from_utf8_lossy(&got));
    eprintln!("idle keep-alive connection closed after {t_idle:.2?}");
    assert!(t_idle >= Duration::from_millis(900), "{t_idle:.2?}");
    assert!(t_idle <= Duration::from_secs(1) + SLACK, "{t_idle:.2?}");
}

fn refusal_lines(stderr: &str) -> Vec<u64> {
    count_lines(stderr, "reached (")
}

fn again_lines(stderr: &str) -> Vec<u64> {
    count_lines(stderr, "again (")
}

/// The "closed N" counts of the refusal log lines containing `marker`.
fn count_lines(stderr: &str, marker: &str) -> Vec<u64> {
    stderr
        .lines()
        .filter(|l| l.contains("MAX_CONNECTIONS=50") && l.contains(marker))
        .filter_map(|l| l.split("closed ").nth(1)?.split(' ').next()?.parse().ok())
        .collect()
}

/// 200 half-open connections against MAX_CONNECTIONS=50: 44 ordinary
/// places and a reserve of 6 for probes (50 / 8) are taken, the rest closed
/// at once with one rate-limited log line. Threads stay bounded; the
/// connection opened before keeps working; a reserve place frees within
/// 2 s of the half-head holding it, after which probes (and only probes)
/// get in one at a time; once the flood is gone new connections work and
/// the log reports the count.
#[test]
fn max_connections_bounds_threads_and_keeps_probes_answering() {
    let dir = TestDir::new("max_connections_bounds_threads_and_keeps_probes_answering");
    dir.write_profiles(&["a"]);
    let c = Coordinator::start(
        &dir,
        Builder::new()
            .pool_size(1)
            .env("MAX_CONNECTIONS", 50)
            .env("HEADER_TIMEOUT_S", 40)
            .env("KEEPALIVE_TIMEOUT_S", 40),
    );
    c.wait_all_ready(secs(10.0));
    let port = c.ports.coordinator;
    let pid = c.pid();
    let before = threads_of(pid);

    // A kept-alive connection opened before the flood.
    let early = connect(port);
    let mut early_w = early.try_clone().unwrap();
    let mut early_r = BufReader::new(early);
    let ask = b"GET /ready HTTP/1.1\r\nHost: x\r\n\r\n";
    early_w.write_all(ask).unwrap();
    assert_eq!(read_answer(&mut early_r).map(|a| a.status), Some(200));

    let flooded = Instant::now();
    let mut flood: Vec<TcpStream> = (0..200)
        .map(|_| {
            let mut s = connect(port);
            let _ = s.write_all(b"GET /live HTTP/1.1\r\nHost: x\r\n");
            s
        })
        .collect();
    wait_until("the refusal log line", secs(5.0), || {
        !refusal_lines(&c.stderr()).is_empty()
    });
    // Threads: one per held connection (50 at most), not one per attempt.
    let mut most = 0;
    wait_until(
        "the accept thread to go through the flood",
        secs(5.0),
        || {
            most = most.max(threads_of(pid));
            refusal_lines(&c.stderr()).len() == 1 && flooded.elapsed() > Duration::from_millis(300)
        },
    );
    most = most.max(threads_of(pid));
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0);
    eprintln!(
        "threads: {before} before the flood, {most} at most while it is held; {fds} descriptors"
    );
    assert!(most < 200, "{most} threads");
    assert!(fds < 200, "{fds} descriptors");

    // The connection opened before keeps working.
    early_w.write_all(ask).unwrap();
    assert_eq!(read_answer(&mut early_r).map(|a| a.status), Some(200));

    // Probes on new connections get into the reserve once its half-heads
    // time out (2 s)...
    let mut first = None;
    wait_until(
        "a probe to get in",
        flooded + Duration::from_secs(2) + SLACK * 2,
        || {
            first = probe(port, "/live");
            first.is_some()
        },
    );
    assert_eq!(first, Some(200));
    eprintln!(
        "first probe on a new connection answered {:.2?} after the flood",
        flooded.elapsed()
    );
    // ...and keep getting in while the flood's ordinary places are held.
    for i in 0..20 {
        let path = if i % 2 == 0 { "/live" } else { "/ready" };
        assert_eq!(probe(port, path), Some(200), "probe {i} of {path}");
    }
    // Nothing but probes in the reserve: a proxied request gets a readable 503.
    let mut s = connect(port);
    s.write_all(b"GET /v1/models HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut r = BufReader::new(s);
    let a = read_answer(&mut r).expect("an answer from the reserve");
    assert_eq!(a.status, 503, "{}", a.head);
    assert!(a.body.contains("\"code\":\"overloaded\""), "{}", a.body);
    assert!(a.head.to_ascii_lowercase().contains("connection: close"));
    // Still a single refusal line: at most one per 5 s.
    let lines = refusal_lines(&c.stderr());
    assert!(
        lines.len() <= 1 + (flooded.elapsed().as_secs() / 5) as usize,
        "{lines:?} in {:.1?}",
        flooded.elapsed()
    );

    // The flood goes; an ordinary place serves a proxied request again.
    flood.clear();
    wait_until("a proxied request to be served", secs(10.0), || {
        c.get("/v1/models").is_some_and(|r| r.status == 200)
    });
    // The refusals not yet reported are, with the next line (5 s after the
    // first at the earliest).
    let mut total = 0;
    wait_until("the log line reporting the rest", secs(15.0), || {
        // A new connection (the harness's agent would reuse its own).
        drop(connect(port));
        let stderr = c.stderr();
        let again = again_lines(&stderr);
        total = refusal_lines(&stderr).iter().sum::<u64>() + again.iter().sum::<u64>();
        !again.is_empty()
    });
    eprintln!("{total} connections refused in all");
    // 200 - (43 ordinary + 6 reserve) of the flood, and probes refused
    // while the reserve was full.
    assert!(total >= 151, "{total} refusals reported");
    assert!(threads_of(pid) < 200);
}
