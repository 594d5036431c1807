//! The HTTP front door on COORDINATOR_HOST:COORDINATOR_PORT: a tiny_http
//! server and an elastic pool of named worker threads looping on `recv()`.
//!
//! Probes never reach a worker: they are answered on the client
//! connection's own thread, before the request is queued (see `probes`).
//! Every other request is first checked at the edge (see `crate::edge`;
//! a failure is the client's 400, and closes). Proxied requests can hold a
//! worker for minutes, so the pool grows: whenever a worker takes a
//! request and no other worker is idle, it starts another (up to `max`),
//! and surplus idle workers retire. At the cap, proxied requests are
//! refused with 503 rather than taking the last idle worker. A panic in a
//! handler becomes a 500 for that request, never a dead worker.
//!
//! # What a client connection costs, and what bounds it
//!
//! tiny_http (patched, see `vendor/tiny_http/PATCHES.md`) gives each open
//! connection one `http-conn` thread, which reads its request heads and
//! hands each request to a worker. So a connection costs, for as long as it
//! is open, one thread (256 KiB of stack reserved, a few pages of it
//! touched, plus the kernel's task), one descriptor, about 2 KiB of buffers
//! and the kernel's socket buffers. A connection sending its head slowly, or
//! not at all, costs exactly that and no worker. What bounds it:
//!
//! - `MAX_CONNECTIONS` open connections at most; a new connection past it is
//!   closed at once and counted, with one log line per
//!   [`REFUSAL_LOG_EVERY`] at most giving the count since the last line.
//!   The last [`probe_reserve`] places (1 to 16: an eighth of the limit) are
//!   kept for whoever comes when the rest are taken: such a connection must
//!   send its head within [`RESERVE_HEADER_TIMEOUT`], carries one request,
//!   and gets an answer only for `/live`, `/ready` and `/health` (anything
//!   else gets 503 `overloaded` and `Connection: close`). A flood of idle
//!   connections can thus not keep probes out for long: it holds the
//!   ordinary places until `HEADER_TIMEOUT_S`, but a reserve place frees
//!   within 2 s, and existing connections keep working throughout.
//! - `HEADER_TIMEOUT_S`: a connection's first head must be whole within it
//!   of the accept, a later head within it of its first byte; else the
//!   connection is closed without an answer (as nginx does).
//! - `KEEPALIVE_TIMEOUT_S`: an idle keep-alive connection closes this long
//!   after its last answer was written (the timer starts at the end of the
//!   answer, so a long stream is never cut by it).
//! - [`CLIENT_IO_TIMEOUT`] (120 s) bounds each read of a body and each write
//!   of an answer once the head is in; it never applies to waiting for a
//!   head, which the two settings above govern.
//!
//! So a slow-header connection holds its thread and descriptor for at most
//! `HEADER_TIMEOUT_S`, and at most `MAX_CONNECTIONS` of them exist at once;
//! 3,000 half-heads cost at most 3,000 threads for 30 s by default, never
//! more than `MAX_CONNECTIONS`, and none of the workers.
//!
//! A request answered before its body is read to its end (413, 401, 404,
//! a 400 of the edge, a reserve 503: any answer, tiny_http sees to it) is
//! answered with `Connection: close`, then the connection closes with a
//! bounded lingering close (tiny_http's `Linger`: our side shut, the rest
//! read and discarded up to 64 MiB, 5 s in all, 1 s of silence), so clients
//! that write their whole body before reading (urllib, requests, the
//! OpenAI SDK) read the answer instead of a reset. tiny_http's own 400 and
//! 431 close the same way. The lingering runs on the connection's thread,
//! never on a worker.
//!
//! Other limits: a cap on total header bytes (431), body limits in the proxy.

use std::net::{TcpListener, ToSocketAddrs};
use std::os::fd::AsRawFd;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use log::{error, info, warn};
use tiny_http::{Admission, Method, Request};

use crate::admin::{self, http::AdminKey};
use crate::control::Fleet;
use crate::metrics;
use crate::proxy::Proxy;
use crate::reply::{self, ApiError};
use crate::supervisor::Handle;

mod probes;

/// A client silent this long mid-upload, or not reading what we send for
/// this long, is dropped (per read or write; waiting for a head is bounded
/// by HEADER_TIMEOUT_S and KEEPALIVE_TIMEOUT_S instead).
pub const CLIENT_IO_TIMEOUT: Duration = Duration::from_secs(120);
/// Most places of MAX_CONNECTIONS kept for probes (see the module docs).
const PROBE_RESERVE_MAX: usize = 16;
/// A connection let into the probe reserve must send its head this fast.
pub const RESERVE_HEADER_TIMEOUT: Duration = Duration::from_secs(2);
/// At most one log line about refused connections this often.
pub const REFUSAL_LOG_EVERY: Duration = Duration::from_secs(5);
/// Largest total size of request header lines.
const MAX_HEADER_BYTES: usize = 64 * 1024;
/// Worker threads never exceed this; beyond it proxied requests get 503.
const MAX_WORKERS: usize = 2048;
const WORKER_STACK: usize = 256 * 1024;
/// A worker beyond the base number that has had nothing to do this long
/// retires.
const RETIRE_AFTER_IDLE: Duration = Duration::from_secs(5);
/// Pending connections the kernel queues for us (capped by somaxconn).
const BACKLOG: i32 = 1024;

/// How client connections are bounded: HEADER_TIMEOUT_S,
/// KEEPALIVE_TIMEOUT_S and MAX_CONNECTIONS (see the module docs).
#[derive(Debug, Clone, Copy)]
pub struct ConnSettings {
    pub header_timeout: Duration,
    pub keepalive_timeout: Duration,
    pub max_connections: usize,
}

/// Places of `max_connections` kept for probes: an eighth, 1 to 16.
pub fn probe_reserve(max_connections: usize) -> usize {
    (max_connections / 8).clamp(1, PROBE_RESERVE_MAX)
}

fn limits(c: &ConnSettings) -> tiny_http::Limits {
    tiny_http::Limits {
        header_timeout: Some(c.header_timeout),
        keepalive_timeout: Some(c.keepalive_timeout),
        io_timeout: Some(CLIENT_IO_TIMEOUT),
        max_connections: c.max_connections,
        probe_reserve: probe_reserve(c.max_connections),
        reserve_header_timeout: Some(RESERVE_HEADER_TIMEOUT),
        linger: tiny_http::Linger::default(),
    }
}

/// Rate-limited reporting of connections closed at MAX_CONNECTIONS: at most
/// one line per `every`, each with the count since the previous line. Owned
/// by the accept thread (through its admission hook); no lock.
struct RefusalLog {
    max: usize,
    every: Duration,
    last_line: Option<Instant>,
    unreported: u64,
}

impl RefusalLog {
    fn new(max: usize, every: Duration) -> RefusalLog {
        RefusalLog {
            max,
            every,
            last_line: None,
            unreported: 0,
        }
    }

    /// The line to log for this admission, if one is due.
    fn on(&mut self, a: Admission, open: usize, now: Instant) -> Option<String> {
        let refused = a == Admission::Refused;
        if refused {
            self.unreported += 1;
        } else if self.unreported == 0 || a == Admission::Reserve {
            return None;
        }
        if self
            .last_line
            .is_some_and(|t| now.saturating_duration_since(t) < self.every)
        {
            return None;
        }
        self.last_line = Some(now);
        let n = std::mem::take(&mut self.unreported);
        let max = self.max;
        Some(if refused {
            format!(
                "MAX_CONNECTIONS={max} reached ({open} open): closed {n} new connection(s) at once since the last report"
            )
        } else {
            format!(
                "below MAX_CONNECTIONS={max} again ({open} open): accepting connections; closed {n} more since the last report"
            )
        })
    }
}

/// What request handlers can reach.
pub struct App {
    pub pool: Handle,
    pub proxy: Arc<Proxy>,
    pub fleet: Arc<Fleet>,
    /// `/admin/` exists only with a key.
    pub admin_key: Option<AdminKey>,
    /// `/metrics` without an API key even when keys are configured.
    pub metrics_open: bool,
}

struct Shared {
    server: tiny_http::Server,
    app: App,
    base: usize,
    max: usize,
    idle: AtomicUsize,
    total: AtomicUsize,
    stopping: AtomicBool,
    handles: Mutex<Vec<JoinHandle<()>>>,
}

pub struct HttpServer {
    shared: Arc<Shared>,
}

#[derive(Debug)]
pub struct BindError(pub String);

impl std::fmt::Display for BindError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl HttpServer {
    pub fn start(
        host: &str,
        port: u16,
        workers: usize,
        conn: ConnSettings,
        app: App,
    ) -> Result<HttpServer, BindError> {
        let listener = listen(host, port).map_err(|e| {
            BindError(format!(
                "cannot listen on {host}:{port}: {e}; set COORDINATOR_HOST/COORDINATOR_PORT to a free address"
            ))
        })?;
        set_nodelay(&listener);
        let port = listener.local_addr().map(|a| a.port()).unwrap_or(port);
        let mut refusals = RefusalLog::new(conn.max_connections, REFUSAL_LOG_EVERY);
        let hook: tiny_http::AdmissionHook = Box::new(move |a, open| {
            if let Some(line) = refusals.on(a, open, Instant::now()) {
                warn!("{line}");
            }
        });
        let server =
            tiny_http::Server::from_listener_with_limits(listener, None, limits(&conn), Some(hook))
                .map_err(|e| {
                    BindError(format!(
                        "cannot start the HTTP server on {host}:{port}: {e}"
                    ))
                })?;
        app.proxy.set_admin_key(app.admin_key.clone());
        server.set_inline(probes::inline_hook(
            app.pool.clone(),
            app.proxy.clone(),
            app.admin_key.clone(),
        ));
        let shared = Arc::new(Shared {
            server,
            app,
            base: workers,
            max: MAX_WORKERS.max(workers),
            idle: AtomicUsize::new(0),
            total: AtomicUsize::new(0),
            stopping: AtomicBool::new(false),
            handles: Mutex::new(Vec::new()),
        });
        for _ in 0..workers {
            spawn_worker(&shared)
                .map_err(|e| BindError(format!("cannot start HTTP workers: {e}")))?;
        }
        info!("listening on {host}:{port} with {workers} HTTP workers");
        Ok(HttpServer { shared })
    }

    /// Stop accepting, wake every worker and wait for them until `deadline`;
    /// workers still relaying a response past it are left to end with it.
    pub fn stop(self, deadline: Instant) {
        self.shared.stopping.store(true, Ordering::SeqCst);
        loop {
            let handles: Vec<JoinHandle<()>> = std::mem::take(
                &mut *self
                    .shared
                    .handles
                    .lock()
                    .unwrap_or_else(|p| p.into_inner()),
            );
            if handles.is_empty() {
                return;
            }
            for _ in 0..handles.len() {
                self.shared.server.unblock();
            }
            for h in handles {
                while !h.is_finished() && Instant::now() < deadline {
                    self.shared.server.unblock();
                    std::thread::sleep(Duration::from_millis(5));
                }
                if h.is_finished() {
                    let _ = h.join();
                }
            }
            if Instant::now() >= deadline {
                return;
            }
        }
    }
}

/// Bind with a listen backlog of `BACKLOG` (std uses 128): a burst of
/// clients beyond the backlog would have their SYNs dropped and retried a
/// second later, which is latency no client asked for.
fn listen(host: &str, port: u16) -> std::io::Result<TcpListener> {
    let addr = (host, port)
        .to_socket_addrs()?
        .next()
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidInput, "no address"))?;
    let listener = TcpListener::bind(addr)?;
    // SAFETY: listen(2) again on a bound, listening socket only changes
    // its backlog.
    if unsafe { libc::listen(listener.as_raw_fd(), BACKLOG) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(listener)
}

/// Linux copies TCP_NODELAY from a listening socket to the sockets it
/// accepts: small SSE events go out at once. (Read and write timeouts are
/// set by tiny_http on each accepted socket, from `Limits`.)
fn set_nodelay(listener: &TcpListener) {
    let one: libc::c_int = 1;
    let fd = listener.as_raw_fd();
    // SAFETY: valid fd and option value of the documented type and size.
    unsafe {
        libc::setsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_NODELAY,
            &one as *const _ as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
}

fn spawn_worker(shared: &Arc<Shared>) -> std::io::Result<()> {
    let n = shared.total.fetch_add(1, Ordering::SeqCst);
    shared.idle.fetch_add(1, Ordering::SeqCst);
    let s = shared.clone();
    let spawned = std::thread::Builder::new()
        .name(format!("http-{n}"))
        .stack_size(WORKER_STACK)
        .spawn(move || worker(s));
    match spawned {
        Ok(h) => {
            let mut handles = shared.handles.lock().unwrap_or_else(|p| p.into_inner());
            handles.retain(|h| !h.is_finished());
            handles.push(h);
            Ok(())
        }
        Err(e) => {
            shared.total.fetch_sub(1, Ordering::SeqCst);
            shared.idle.fetch_sub(1, Ordering::SeqCst);
            Err(e)
        }
    }
}

fn worker(s: Arc<Shared>) {
    loop {
        let rq = match s.server.recv_timeout(RETIRE_AFTER_IDLE) {
            Ok(Some(rq)) => rq,
            Ok(None) => {
                // Idle for a while: a worker beyond the base number retires,
                // so a burst's threads (and their stacks) do not linger.
                if s.stopping.load(Ordering::SeqCst) || retire_if_surplus(&s) {
                    return;
                }
                continue;
            }
            Err(e) => {
                if !s.stopping.load(Ordering::SeqCst) {
                    error!("HTTP server stopped receiving: {e}");
                }
                break;
            }
        };
        let idle_left = s.idle.fetch_sub(1, Ordering::SeqCst) - 1;
        let mut spare_ok = true;
        if idle_left == 0 && !s.stopping.load(Ordering::SeqCst) {
            if s.total.load(Ordering::SeqCst) < s.max {
                if let Err(e) = spawn_worker(&s) {
                    warn!("cannot add an HTTP worker: {e}");
                    spare_ok = false;
                }
            } else {
                spare_ok = false;
            }
        }
        serve_guarded(rq, |holder| route(holder, &s.app, spare_ok));
        s.idle.fetch_add(1, Ordering::SeqCst);
        if s.stopping.load(Ordering::SeqCst) {
            break;
        }
    }
    s.idle.fetch_sub(1, Ordering::SeqCst);
    s.total.fetch_sub(1, Ordering::SeqCst);
}

/// Leave the pool if it has more workers than its base; true if this
/// worker left (its counts are already taken off).
fn retire_if_surplus(s: &Shared) -> bool {
    let mut total = s.total.load(Ordering::SeqCst);
    while total > s.base {
        match s
            .total
            .compare_exchange(total, total - 1, Ordering::SeqCst, Ordering::SeqCst)
        {
            Ok(_) => {
                s.idle.fetch_sub(1, Ordering::SeqCst);
                return true;
            }
            Err(now) => total = now,
        }
    }
    false
}

/// Run `handler` on the request; if it panics before answering, the client
/// gets an OpenAI-style 500 and the worker carries on.
fn serve_guarded(rq: Request, handler: impl FnOnce(&mut Option<Request>)) {
    let mut holder = Some(rq);
    let result = std::panic::catch_unwind(AssertUnwindSafe(|| handler(&mut holder)));
    if result.is_err() {
        error!("a request handler panicked; the request gets a 500 and the worker goes on");
        if let Some(rq) = holder.take() {
            let _ = rq.respond(ApiError::Internal.reply("internal error in the coordinator"));
        }
    }
}

/// Dispatch one request. `spare_ok` is false when taking a long request now
/// would leave no worker for probes.
fn route(holder: &mut Option<Request>, app: &App, spare_ok: bool) {
    let Some(rq) = holder.take() else { return };
    let header_bytes: usize = rq
        .headers()
        .iter()
        .map(|h| h.field.as_str().as_str().len() + h.value.as_str().len() + 4)
        .sum();
    if header_bytes > MAX_HEADER_BYTES {
        let _ = rq.respond(ApiError::HeadersTooLarge.reply("request headers exceed 64 KiB"));
        return;
    }
    // Probes and the reserve are answered on the connection's own thread
    // (see `probes`); one that got here in the moment before the hook was
    // set is answered the same way.
    let Some(rq) = probes::answer(rq, &app.pool, &app.proxy, app.admin_key.as_ref()) else {
        return;
    };
    if let Err(why) = crate::edge::check(&rq) {
        // The client's fault, found before anything else looked at it: the
        // answer closes the connection, and a body is never read.
        let mut rq = rq;
        rq.refuse_body();
        let _ = rq.respond(ApiError::BadRequest.reply(&why.to_string()));
        return;
    }
    let path = rq.url().split('?').next().unwrap_or("").to_string();
    let probe = matches!(rq.method(), Method::Get | Method::Head);
    match path.as_str() {
        "/metrics" if probe => {
            let admin = app
                .admin_key
                .as_ref()
                .is_some_and(|k| admin::http::offers(&rq, k));
            if !app.metrics_open && !admin && !app.proxy.key_ok(&rq) {
                let _ = rq.respond(ApiError::InvalidApiKey.reply(
                    "/metrics needs an API key or the admin key (send Authorization: Bearer <key>), or set METRICS_OPEN=true",
                ));
                return;
            }
            let mut text = metrics::global().render(&app.fleet.metrics_view());
            if let (false, Some(label)) = (admin, app.proxy.key_label(&rq)) {
                // A key holder sees its own usage row, no other key's.
                text = metrics::only_key_rows(&text, &label);
            }
            let _ = rq.respond(
                tiny_http::Response::from_string(text).with_header(reply::header(
                    "Content-Type",
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                )),
            );
        }
        p if p == "/admin" || p.starts_with("/admin/") => {
            let mut rq = rq;
            let answer = admin::http::handle(&mut rq, app.admin_key.as_ref(), app.fleet.as_ref());
            let _ = rq.respond(answer);
        }
        p if p.starts_with("/v1/") || p == "/v1" || p.starts_with("/v1beta/") => {
            if !spare_ok {
                let _ = rq
                    .respond(ApiError::Overloaded.reply(
                        "the coordinator is at its concurrent request limit; retry shortly",
                    ));
                return;
            }
            *holder = Some(rq);
            app.proxy.handle(holder, &app.pool);
        }
        _ => {
            let msg = format!("no route for {} {path}", rq.method());
            let _ = rq.respond(ApiError::NotFound.reply(&msg));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::TcpStream;

    fn ask(port: u16) -> String {
        let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(b"GET /x HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
            .unwrap();
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        out
    }

    /// At most one line per period, each with the count since the last;
    /// the count left over is reported by the next line, whether a refusal
    /// or the first ordinary admission after the period.
    #[test]
    fn refusal_lines_are_rate_limited_and_carry_the_count() {
        let every = Duration::from_secs(5);
        let mut log = RefusalLog::new(50, every);
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        assert_eq!(log.on(Admission::Normal, 3, at(0)), None);
        let first = log.on(Admission::Refused, 50, at(10)).unwrap();
        assert!(
            first.contains("MAX_CONNECTIONS=50 reached (50 open): closed 1 "),
            "{first}"
        );
        for i in 0..99 {
            assert_eq!(log.on(Admission::Refused, 50, at(20 + i)), None);
        }
        // Inside the period nothing is logged, ordinary or reserve.
        assert_eq!(log.on(Admission::Normal, 49, at(3_000)), None);
        assert_eq!(log.on(Admission::Reserve, 49, at(3_000)), None);
        let again = log.on(Admission::Normal, 10, at(5_010)).unwrap();
        assert!(
            again.contains("below MAX_CONNECTIONS=50 again (10 open)"),
            "{again}"
        );
        assert!(again.contains("closed 99 more"), "{again}");
        // Nothing left to report: ordinary admissions stay quiet.
        assert_eq!(log.on(Admission::Normal, 10, at(20_000)), None);
        let later = log.on(Admission::Refused, 50, at(20_001)).unwrap();
        assert!(later.contains("closed 1 "), "{later}");
    }

    #[test]
    fn the_probe_reserve_is_an_eighth_from_1_to_16() {
        assert_eq!(probe_reserve(8), 1);
        assert_eq!(probe_reserve(50), 6);
        assert_eq!(probe_reserve(4096), 16);
    }

    /// A panicking handler costs its request a 500 in OpenAI form, and the
    /// same worker thread serves the next request.
    #[test]
    fn a_panicking_handler_gives_500_and_the_worker_lives_on() {
        let server = tiny_http::Server::http("127.0.0.1:0").unwrap();
        let port = server.server_addr().to_ip().unwrap().port();
        let worker = std::thread::spawn(move || {
            let rq = server.recv().unwrap();
            serve_guarded(rq, |_| panic!("handler bug"));
            let rq = server.recv().unwrap();
            serve_guarded(rq, |holder| {
                let _ = holder.take().unwrap().respond(crate::health::live());
            });
        });
        let first = ask(port);
        assert!(first.starts_with("HTTP/1.1 500"), "{first}");
        assert!(first.contains("\"code\":\"internal_error\""), "{first}");
        let second = ask(port);
        assert!(second.starts_with("HTTP/1.1 200"), "{second}");
        worker.join().unwrap();
    }
}
