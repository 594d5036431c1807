//! An open-loop load: requests leave at times fixed in advance (a Poisson
//! schedule), whether or not earlier ones have been answered, as traffic
//! from many independent users does. A closed loop (each client waiting for
//! its answer before sending again) slows down with the server and so hides
//! queueing; this one does not.
//!
//! The calling thread keeps the schedule: it sleeps until each request's
//! time and hands it to a pool of client threads, each with one keep-alive
//! connection opened before the schedule starts. A request's latency counts
//! from its scheduled time, so a late send (every client busy, or the
//! scheduler woken late) counts against the server rather than vanishing
//! (no coordinated omission); `late` counts sends more than 1 ms behind.
//! Bounded: nothing is sent after the schedule, and clients give up at a
//! hard deadline and on a socket timeout.

use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::{connect_with, exchange, Conn};

/// A pseudo-random generator (splitmix64): a fixed seed gives the same
/// schedule to every configuration it is compared across.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in (0, 1].
    pub fn unit(&mut self) -> f64 {
        ((self.next_u64() >> 11) as f64 + 1.0) / (1u64 << 53) as f64
    }
}

/// Arrival offsets of a Poisson process of `rate` per second over `span`.
pub fn poisson_schedule(rate: f64, span: Duration, seed: u64) -> Vec<Duration> {
    let mut rng = Rng::new(seed);
    let mut t = 0.0f64;
    let mut out = Vec::new();
    let end = span.as_secs_f64();
    // Bounded by the span: the expected count is rate * span.
    for _ in 0..10_000_000 {
        t += -rng.unit().ln() / rate;
        if t >= end {
            break;
        }
        out.push(Duration::from_secs_f64(t));
    }
    out
}

pub fn unix_us(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
}

/// What one open-loop run is.
pub struct OpenLoop {
    pub port: u16,
    pub request: Vec<u8>,
    /// Offsets from the start, ascending.
    pub arrivals: Vec<Duration>,
    /// Client threads (and keep-alive connections).
    pub clients: usize,
    /// A request still unanswered this long after the last arrival is given
    /// up (counted as an error).
    pub drain: Duration,
    /// A response header whose value is kept per request.
    pub capture_header: Option<&'static str>,
}

/// One request's fate.
#[derive(Debug, Clone)]
pub struct Sample {
    /// Its scheduled offset from the start.
    pub at: Duration,
    /// When a client began writing it (wall clock, µs since the epoch), to
    /// compare with packet timestamps.
    pub sent_unix_us: i64,
    /// From its scheduled time to the last byte of the answer.
    pub latency: Duration,
    /// From the start to the last byte of the answer.
    pub done: Duration,
    /// 0 when no answer came (connection error or timeout).
    pub status: u16,
    pub captured: Option<String>,
}

#[derive(Debug, Default)]
pub struct OpenLoopResult {
    pub samples: Vec<Sample>,
    /// Wall clock at the start (µs since the epoch).
    pub start_unix_us: i64,
    /// Wall clock when the last client finished.
    pub end_unix_us: i64,
    /// Sends more than 1 ms behind their schedule.
    pub late: usize,
    /// Requests never sent (past the hard deadline).
    pub unsent: usize,
    pub first_error: Option<String>,
}

impl OpenLoop {
    pub fn run(&self) -> OpenLoopResult {
        let span = self.arrivals.last().copied().unwrap_or_default();
        let (tx, rx) = crossbeam_channel::unbounded::<usize>();
        let arrivals = Arc::new(self.arrivals.clone());
        let request = Arc::new(self.request.clone());
        // Connections are opened before the clock starts.
        let (ready_tx, ready_rx) = crossbeam_channel::bounded::<()>(self.clients);
        let (go_tx, go_rx) = crossbeam_channel::bounded::<(Instant, Instant)>(self.clients);
        let mut handles = Vec::with_capacity(self.clients);
        for i in 0..self.clients {
            let rx = rx.clone();
            let arrivals = arrivals.clone();
            let request = request.clone();
            let port = self.port;
            let capture = self.capture_header;
            let ready_tx = ready_tx.clone();
            let go_rx = go_rx.clone();
            let h = thread::Builder::new()
                .name(format!("open-{i}"))
                .stack_size(256 * 1024)
                .spawn(move || {
                    let mut conn: Option<Conn> = connect_with(port, Duration::from_secs(30)).ok();
                    let _ = ready_tx.send(());
                    let Ok((start, hard_stop)) = go_rx.recv() else {
                        return (Vec::new(), 0, None);
                    };
                    client(
                        &rx, &arrivals, &request, port, capture, start, hard_stop, &mut conn,
                    )
                })
                .expect("spawn an open-loop client");
            handles.push(h);
        }
        drop(ready_tx);
        for _ in 0..self.clients {
            if ready_rx.recv_timeout(Duration::from_secs(5)).is_err() {
                break;
            }
        }
        let start = Instant::now() + Duration::from_millis(20);
        let start_unix_us = unix_us(SystemTime::now()) + 20_000;
        let hard_stop = start + span + self.drain;
        for _ in 0..self.clients {
            let _ = go_tx.send((start, hard_stop));
        }
        drop(go_tx);
        for (i, &at) in self.arrivals.iter().enumerate() {
            let when = start + at;
            let now = Instant::now();
            if when > now {
                thread::sleep(when - now);
            }
            if tx.send(i).is_err() {
                break;
            }
        }
        drop(tx);
        let mut out = OpenLoopResult {
            start_unix_us,
            ..OpenLoopResult::default()
        };
        for h in handles {
            if let Ok((samples, late, err)) = h.join() {
                out.samples.extend(samples);
                out.late += late;
                if out.first_error.is_none() {
                    out.first_error = err;
                }
            }
        }
        out.end_unix_us = unix_us(SystemTime::now());
        out.unsent = self.arrivals.len().saturating_sub(out.samples.len());
        out.samples.sort_by_key(|s| s.at);
        out
    }
}

#[allow(clippy::too_many_arguments)]
fn client(
    rx: &crossbeam_channel::Receiver<usize>,
    arrivals: &[Duration],
    request: &[u8],
    port: u16,
    capture: Option<&str>,
    start: Instant,
    hard_stop: Instant,
    conn: &mut Option<Conn>,
) -> (Vec<Sample>, usize, Option<String>) {
    let mut samples = Vec::new();
    let mut late = 0;
    let mut first_error = None;
    let mut connects = 0u64;
    let mut line = String::with_capacity(256);
    // Bounded by the schedule's length: each receive takes one request.
    for _ in 0..arrivals.len() {
        let Ok(i) = rx.recv() else { break };
        if Instant::now() >= hard_stop {
            break;
        }
        let scheduled = start + arrivals[i];
        let sent = Instant::now();
        if sent > scheduled + Duration::from_millis(1) {
            late += 1;
        }
        let sent_unix_us = unix_us(SystemTime::now());
        let reused = conn.is_some();
        let mut r = exchange(conn, port, request, capture, &mut connects, &mut line);
        if r.is_err() && reused {
            // An idle keep-alive connection the server closed: once more on
            // a fresh one, as any HTTP client does.
            *conn = None;
            r = exchange(conn, port, request, capture, &mut connects, &mut line);
        }
        let done = Instant::now();
        let (status, captured) = match r {
            Ok((status, close, _, captured)) => {
                if close {
                    *conn = None;
                }
                (status, captured)
            }
            Err(e) => {
                *conn = None;
                if first_error.is_none() {
                    first_error = Some(e.to_string());
                }
                (0, None)
            }
        };
        if status != 200 && status != 0 && first_error.is_none() {
            first_error = Some(format!("status {status}"));
        }
        samples.push(Sample {
            at: arrivals[i],
            sent_unix_us,
            latency: done.saturating_duration_since(scheduled),
            done: done.saturating_duration_since(start),
            status,
            captured,
        });
    }
    (samples, late, first_error)
}
