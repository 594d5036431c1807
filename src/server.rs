//! The HTTP front door on COORDINATOR_HOST:COORDINATOR_PORT: a tiny_http
//! server and an elastic pool of named worker threads looping on `recv()`.
//!
//! Probes are answered inline by whichever worker receives them. Proxied
//! requests can hold a worker for minutes, so the pool grows: whenever a
//! worker takes a request and no other worker is idle, it starts another
//! (up to `max`), and surplus idle workers retire. At the cap, proxied
//! requests are refused with 503 rather than taking the last idle worker,
//! so probes always find one. A panic in a handler becomes a 500 for that
//! request, never a dead worker.
//!
//! tiny_http enforces no limits; ours are: socket read/write timeouts set on
//! the listener (Linux copies them to accepted sockets), so idle and stalled
//! clients are dropped; a cap on total header bytes (431); and body limits in
//! the proxy.

use std::net::{TcpListener, ToSocketAddrs};
use std::os::fd::AsRawFd;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use log::{error, info, warn};
use tiny_http::{Method, Request};

use crate::health;
use crate::pool::Pool;
use crate::proxy::Proxy;
use crate::reply::ApiError;

/// A client silent this long (between requests, or mid-upload), or not
/// reading what we send for this long, is dropped.
const CLIENT_IO_TIMEOUT: Duration = Duration::from_secs(120);
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

/// What request handlers can reach.
pub struct App {
    pub pool: Arc<Pool>,
    pub proxy: Proxy,
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
    pub fn start(host: &str, port: u16, workers: usize, app: App) -> Result<HttpServer, BindError> {
        let listener = listen(host, port).map_err(|e| {
            BindError(format!(
                "cannot listen on {host}:{port}: {e}; set COORDINATOR_HOST/COORDINATOR_PORT to a free address"
            ))
        })?;
        set_socket_timeouts(&listener, CLIENT_IO_TIMEOUT);
        let port = listener.local_addr().map(|a| a.port()).unwrap_or(port);
        app.proxy.set_local_port(port);
        let server = tiny_http::Server::from_listener(listener, None).map_err(|e| {
            BindError(format!(
                "cannot start the HTTP server on {host}:{port}: {e}"
            ))
        })?;
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

/// Linux copies SO_RCVTIMEO/SO_SNDTIMEO from a listening socket to the
/// sockets it accepts; tiny_http gives no other way to bound client I/O.
fn set_socket_timeouts(listener: &TcpListener, t: Duration) {
    let tv = libc::timeval {
        tv_sec: t.as_secs() as _,
        tv_usec: 0,
    };
    let one: libc::c_int = 1;
    let fd = listener.as_raw_fd();
    // SAFETY: valid fd and option values of the documented types and sizes.
    unsafe {
        for opt in [libc::SO_RCVTIMEO, libc::SO_SNDTIMEO] {
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                opt,
                &tv as *const _ as *const libc::c_void,
                std::mem::size_of::<libc::timeval>() as libc::socklen_t,
            );
        }
        // Inherited by accepted sockets too: small SSE events go out at once.
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
    let path = rq.url().split('?').next().unwrap_or("").to_string();
    let probe = matches!(rq.method(), Method::Get | Method::Head);
    match path.as_str() {
        "/live" if probe => {
            let _ = rq.respond(health::live());
        }
        "/ready" if probe => {
            let _ = rq.respond(health::ready(&app.pool.snapshot(), false));
        }
        "/health" if probe => {
            let _ = rq.respond(health::ready(&app.pool.snapshot(), true));
        }
        p if p.starts_with("/v1/") || p == "/v1" => {
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
