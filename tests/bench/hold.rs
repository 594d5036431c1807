//! Benchmark: what holding a streamed answer's head costs a client's time
//! to first byte (`HOLD_STREAM_HEAD`, see `src/proxy/hold.rs`).
//!
//! Two coordinators in the same run, one child each, the same test child:
//! one holds the head until the answer carries content (the default), the
//! other relays it at once (`HOLD_STREAM_HEAD=false`, the behaviour before
//! the hold). One client, one keep-alive connection, streamed completions
//! back to back; per request: the time to the answer's first byte (its
//! head) and to its first content. Two children's timings:
//!
//! - content at once (`completion_delay_ms` 0): the hold's own cost;
//! - content 300 ms after the head (as the real child sends its head when
//!   it starts on a request and its content when AI Studio answers): the
//!   first byte moves to the first content, which does not move.
//!
//! Prints p50/p90 and the ratio held / not held; asserts nothing.

#[path = "support/mod.rs"]
mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use support::{chat_body, post_json, ratio, summarize_durations, Coordinator, CoordinatorSpec};

fn main() {
    support::watchdog("hold", Duration::from_secs(240));
    println!("== hold: time to first byte of a streamed answer, head held vs relayed at once ==");
    println!("one client, keep-alive, streamed completions back to back (5 events each)");
    println!(
        "{:<34} {:>6} {:>10} {:>10} {:>12} {:>12}",
        "case", "n", "TTFB p50", "TTFB p90", "content p50", "content p90"
    );
    for (delay_ms, n) in [(0u64, 300usize), (300, 12)] {
        let mut p50s = Vec::new();
        for hold in [false, true] {
            let c = start(hold, delay_ms);
            let samples = measure(c.port, n);
            let head = summarize_durations(&samples.iter().map(|s| s.0).collect::<Vec<_>>());
            let content = summarize_durations(&samples.iter().map(|s| s.1).collect::<Vec<_>>());
            println!(
                "{:<34} {:>6} {:>8.3}ms {:>8.3}ms {:>10.3}ms {:>10.3}ms",
                format!(
                    "content after {delay_ms} ms, {}",
                    if hold { "held" } else { "not held" }
                ),
                head.n,
                head.p50,
                head.p90,
                content.p50,
                content.p90
            );
            p50s.push((head.p50, content.p50));
        }
        println!(
            "  ratio held / not held (p50): first byte {}, first content {}",
            ratio(p50s[1].0, p50s[0].0),
            ratio(p50s[1].1, p50s[0].1)
        );
    }
}

fn start(hold: bool, delay_ms: u64) -> Coordinator {
    let mut spec = CoordinatorSpec::plain(1);
    spec.env = vec![
        ("HOLD_STREAM_HEAD".into(), hold.to_string()),
        ("TESTCHILD_COMPLETION_DELAY_MS".into(), delay_ms.to_string()),
        ("TESTCHILD_STREAM_EVENTS".into(), "5".into()),
        ("TESTCHILD_STREAM_INTERVAL_MS".into(), "0".into()),
    ];
    Coordinator::start(&spec)
}

/// `n` streamed completions (after a few unmeasured ones): per request the
/// time to the first byte and to the first content.
fn measure(port: u16, n: usize) -> Vec<(Duration, Duration)> {
    let request = post_json("/v1/chat/completions", port, &chat_body(true));
    let mut conn = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    conn.set_nodelay(true).ok();
    conn.set_read_timeout(Some(Duration::from_secs(10))).ok();
    let mut out = Vec::with_capacity(n);
    for i in 0..n + 5 {
        let began = Instant::now();
        conn.write_all(&request).expect("send");
        let (head, content) = read_stream(&mut conn, began);
        if i >= 5 {
            out.push((head, content));
        }
    }
    out
}

/// Read one chunked SSE answer to its end: when its first byte came, and
/// when its first content did.
fn read_stream(conn: &mut TcpStream, began: Instant) -> (Duration, Duration) {
    let mut buf = Vec::new();
    let mut piece = [0u8; 16 * 1024];
    let mut head = None;
    let mut content = None;
    loop {
        let n = conn.read(&mut piece).expect("read the answer");
        assert!(n > 0, "the coordinator closed the connection mid-answer");
        head.get_or_insert_with(|| began.elapsed());
        buf.extend_from_slice(&piece[..n]);
        if content.is_none() && contains(&buf, b"\"content\":\"profile=") {
            content = Some(began.elapsed());
        }
        if buf.ends_with(b"0\r\n\r\n") && contains(&buf, b"[DONE]") {
            break;
        }
    }
    (
        head.expect("read"),
        content.expect("an answer with content"),
    )
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}
