//! `aisp-testchild`: a stand-in for the AI Studio proxy child (the Python
//! `launch_camoufox.py`) used by integration tests, benchmarks and the demo.
//!
//! It honours the child contract (same command line, same endpoints, same
//! API-key rule, one completion at a time) and can be told to misbehave via
//! knobs (see `knobs.rs`). Standalone on purpose: it shares no code with the
//! coordinator, so tests exercise the coordinator against an independent
//! implementation of the contract.
//!
//! Threads: main (startup, then joins the HTTP workers), 8 `http-N` workers
//! looping on `recv()`, one `completion` thread per chat completion, and
//! small timer/signal threads. The process always ends by `exit`.

mod args;
mod completion;
mod knobs;
mod lane;
mod sock;

use args::{ChildArgs, Mode};
use knobs::Knobs;
use lane::Lane;
use serde::Serialize;
use serde_json::{json, Value};
use std::collections::{BTreeMap, VecDeque};
use std::io::{Cursor, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use std::{fs, process, thread};
use tiny_http::{Header, Method, Request, Response, Server};

const HTTP_WORKERS: usize = 8;
const MAX_RECORDS: usize = 1000;
/// Bodies are recorded up to this size; the rest is read and discarded.
const MAX_RECORDED_BODY: u64 = 64 * 1024 * 1024;
/// The grandchild's safety net: it never outlives a forgotten test by much.
const GRANDCHILD_MAX_LIFE: Duration = Duration::from_secs(3600);

/// Everything the request handlers share. All fields but `records`, `lane`
/// and `completion_seq` are fixed at start.
pub struct App {
    pub profile: String,
    pub args: ChildArgs,
    pub knobs: Knobs,
    started: Instant,
    /// Accepted API keys; empty means no check.
    keys: Vec<String>,
    pub lane: Arc<Lane>,
    /// Requests seen, for `/_testchild/requests`; pushed by workers, read by
    /// the introspection endpoint; the lock is held only to push or clone.
    records: Mutex<VecDeque<Record>>,
    pub completion_seq: AtomicU64,
}

/// One received request, as `/_testchild/requests` reports it.
#[derive(Serialize, Clone)]
pub struct Record {
    method: String,
    path: String,
    headers: BTreeMap<String, String>,
    body: String,
    body_len: u64,
}

impl Record {
    /// The first value of header `name` (case-insensitive).
    pub fn header(request: &Request, name: &str) -> Option<String> {
        request
            .headers()
            .iter()
            .find(|h| h.field.as_str().as_str().eq_ignore_ascii_case(name))
            .map(|h| h.value.as_str().to_string())
    }
}

pub fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Prints one log line to stdout and flushes it (stdout may be a pipe).
pub fn log_line(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

fn fail(code: i32, msg: &str) -> ! {
    eprintln!("aisp-testchild: {msg}");
    process::exit(code);
}

/// An OpenAI-style error body.
pub fn error_body(message: &str, kind: &str, code: &str) -> Value {
    json!({"error": {"message": message, "type": kind, "code": code, "param": null}})
}

fn header(name: &str, value: &str) -> Header {
    // Names are literals and values are ASCII we produced (profile names
    // come from file stems; non-ASCII ones are replaced below).
    Header::from_bytes(name.as_bytes(), value.as_bytes())
        .unwrap_or_else(|_| Header::from_bytes(name.as_bytes(), &b"?"[..]).expect("ascii header"))
}

/// A JSON response carrying the testchild identification headers.
pub fn json_response(app: &App, status: u16, body: &Value) -> Response<Cursor<Vec<u8>>> {
    Response::from_string(body.to_string())
        .with_status_code(status)
        .with_header(header("Content-Type", "application/json"))
        .with_header(header("X-Testchild-Profile", &app.profile))
        .with_header(header(
            "X-Testchild-Port",
            &app.args.server_port.to_string(),
        ))
}

impl App {
    fn ready(&self) -> bool {
        !self.knobs.never_ready
            && self.started.elapsed() >= Duration::from_millis(self.knobs.ready_after_ms)
    }

    fn key_ok(&self, request: &Request) -> bool {
        if self.keys.is_empty() {
            return true;
        }
        let bearer = Record::header(request, "authorization").and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
                .map(|k| k.trim().to_string())
        });
        let x_key = Record::header(request, "x-api-key").map(|k| k.trim().to_string());
        [bearer, x_key]
            .iter()
            .flatten()
            .any(|k| self.keys.iter().any(|good| good == k))
    }

    fn record(&self, r: Record) {
        let mut records = self.records.lock().unwrap_or_else(|e| e.into_inner());
        if records.len() == MAX_RECORDS {
            records.pop_front();
        }
        records.push_back(r);
    }
}

/// Reads the whole body, keeping at most `MAX_RECORDED_BODY` bytes.
fn read_body(request: &mut Request) -> (Vec<u8>, u64) {
    let mut body = Vec::new();
    let reader = request.as_reader();
    let _ = reader.take(MAX_RECORDED_BODY).read_to_end(&mut body);
    let rest = std::io::copy(reader, &mut std::io::sink()).unwrap_or(0);
    let len = body.len() as u64 + rest;
    (body, len)
}

/// Routes one request. Chat completions go to their own thread; everything
/// else is answered here.
fn handle(app: &Arc<App>, mut request: Request) {
    let url = request.url().to_string();
    let path = url.split('?').next().unwrap_or("").to_string();
    let method = request.method().clone();
    let (body, body_len) = read_body(&mut request);

    let quiet =
        matches!(path.as_str(), "/health" | "/ready" | "/live") || path.starts_with("/_testchild/");
    if !quiet {
        app.record(Record {
            method: method.to_string(),
            path: url.clone(),
            headers: request.headers().iter().fold(BTreeMap::new(), |mut m, h| {
                let name = h.field.as_str().as_str().to_ascii_lowercase();
                m.entry(name)
                    .and_modify(|v: &mut String| {
                        v.push_str(", ");
                        v.push_str(h.value.as_str());
                    })
                    .or_insert_with(|| h.value.as_str().to_string());
                m
            }),
            body: String::from_utf8_lossy(&body).into_owned(),
            body_len,
        });
    }

    let needs_key = path.starts_with("/v1/") && path != "/v1/models";
    if needs_key && !app.key_ok(&request) {
        let body = error_body(
            "Invalid API key",
            "invalid_request_error",
            "invalid_api_key",
        );
        let _ = request.respond(json_response(app, 401, &body));
        return;
    }

    let (status, reply) = match (&method, path.as_str()) {
        (Method::Get, "/health" | "/ready") if app.ready() => {
            (200, json!({"status": "OK", "profile": app.profile}))
        }
        (Method::Get, "/health" | "/ready") => {
            let message = if app.knobs.never_ready {
                "never ready (testchild knob never_ready)"
            } else {
                "initialising"
            };
            (503, json!({"status": "Error", "message": message}))
        }
        (Method::Get, "/live") => (200, json!({"status": "alive"})),
        (Method::Get, "/v1/models") => (
            200,
            json!({"object": "list", "data": [{"id": "gemini-test", "object": "model",
                                                "created": 0, "owned_by": "aisp-testchild"}]}),
        ),
        (Method::Post, "/v1/chat/completions") => {
            let app = Arc::clone(app);
            let spawned = thread::Builder::new()
                .name("completion".into())
                .spawn(move || completion::handle(app, request, &body));
            if let Err(e) = spawned {
                log_line(&format!("error: cannot start completion thread: {e}"));
            }
            return;
        }
        (Method::Post, p) if p.starts_with("/v1/cancel/") => {
            let req_id = &p["/v1/cancel/".len()..];
            let known = app.lane.cancel(req_id);
            log_line(&format!("cancel req_id={req_id} known={known}"));
            (
                if known { 200 } else { 404 },
                json!({"success": known, "req_id": req_id}),
            )
        }
        (Method::Get, "/v1/queue") => {
            let (queue_length, processing) = app.lane.status();
            (
                200,
                json!({"queue_length": queue_length, "processing": processing}),
            )
        }
        (Method::Get, "/api/info") => (
            200,
            json!({
                "profile": app.profile,
                "server_port": app.args.server_port,
                "stream_port": app.args.stream_port,
                "camoufox_debug_port": app.args.camoufox_port,
                "pid": process::id(),
                "headless": app.args.headless,
                "api_key_required": !app.keys.is_empty(),
                "auth_json": app.args.auth_json,
            }),
        ),
        (Method::Get, "/_testchild/requests") => {
            let records: Vec<Record> = app
                .records
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .iter()
                .cloned()
                .collect();
            (200, json!(records))
        }
        _ => (
            404,
            error_body(
                &format!("not found: {method} {path}"),
                "invalid_request_error",
                "not_found",
            ),
        ),
    };
    let _ = request.respond(json_response(app, status, &reply));
}

/// API keys from `AUTH_KEY_FILE_PATH`: one per line, trimmed, blanks skipped.
fn load_keys(path: Option<PathBuf>) -> Vec<String> {
    let Some(text) = path.and_then(|p| fs::read_to_string(p).ok()) else {
        return Vec::new();
    };
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(String::from)
        .collect()
}

/// Writes `pid` to `path` via a temp file and rename, so a test polling for
/// the file never reads it half-written.
fn write_pid_file(path: &Path, pid: u32) -> std::io::Result<()> {
    let tmp = path.with_extension("pid.tmp");
    fs::write(&tmp, format!("{pid}\n"))?;
    fs::rename(&tmp, path)
}

fn ignore_sigterm() {
    // SAFETY: installing SIG_IGN has no handler code to be unsafe in.
    unsafe { libc::signal(libc::SIGTERM, libc::SIG_IGN) };
}

/// The hidden grandchild mode: write our pid, ignore SIGTERM, sleep until
/// SIGKILL (or the safety limit).
fn run_grandchild(pidfile: &Path) -> ! {
    ignore_sigterm();
    if let Err(e) = write_pid_file(pidfile, process::id()) {
        fail(
            1,
            &format!("grandchild cannot write {}: {e}", pidfile.display()),
        );
    }
    let start = Instant::now();
    while start.elapsed() < GRANDCHILD_MAX_LIFE {
        thread::sleep(Duration::from_secs(1));
    }
    process::exit(0)
}

fn spawn_named(name: &str, f: impl FnOnce() + Send + 'static) {
    if let Err(e) = thread::Builder::new().name(name.into()).spawn(f) {
        fail(1, &format!("cannot start thread {name}: {e}"));
    }
}

fn main() {
    let mode = match args::parse(std::env::args().skip(1)) {
        Ok(m) => m,
        Err(e) => {
            eprintln!("aisp-testchild: {e}\n{}", args::USAGE);
            process::exit(2);
        }
    };
    let args = match mode {
        Mode::Grandchild(pidfile) => run_grandchild(&pidfile),
        Mode::Child(a) => a,
    };
    let started = Instant::now();

    let profile = args
        .auth_json
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| fail(1, "--active-auth-json has no file name"));
    // Header values must be visible ASCII; keep tests' names readable.
    let profile: String = profile
        .chars()
        .map(|c| if c.is_ascii_graphic() { c } else { '_' })
        .collect();
    let profile_json: Value = fs::read(&args.auth_json)
        .map_err(|e| e.to_string())
        .and_then(|b| serde_json::from_slice(&b).map_err(|e| e.to_string()))
        .unwrap_or_else(|e| {
            fail(
                1,
                &format!("cannot read profile {}: {e}", args.auth_json.display()),
            )
        });
    let (knobs, warnings) = Knobs::load(
        |k| std::env::var(k).ok(),
        profile_json.get("testchild").and_then(Value::as_object),
    )
    .unwrap_or_else(|e| fail(1, &e.to_string()));
    for w in warnings {
        eprintln!("aisp-testchild: warning: {w}");
    }

    // Signals first, so a SIGTERM during startup already behaves.
    if knobs.ignore_sigterm {
        ignore_sigterm();
    } else {
        let mut signals = signal_hook::iterator::Signals::new([signal_hook::consts::SIGTERM])
            .unwrap_or_else(|e| fail(1, &format!("cannot watch SIGTERM: {e}")));
        spawn_named("sigterm", move || {
            if signals.forever().next().is_some() {
                log_line("aisp-testchild: SIGTERM, exiting 0");
                process::exit(0);
            }
        });
    }

    // A deep backlog, like uvicorn's 2048: a burst of proxied requests must
    // not have SYNs dropped (std's listener backlog is 128).
    let listener = std::net::TcpListener::bind(("127.0.0.1", args.server_port)).and_then(|l| {
        use std::os::fd::AsRawFd;
        // SAFETY: listen(2) again on our own listening socket sets its backlog.
        // TCP_NODELAY is copied to accepted sockets: small SSE chunks go out
        // at once instead of waiting for a delayed ACK, as with uvicorn.
        let one: libc::c_int = 1;
        // SAFETY: setsockopt with a valid int option on our own socket.
        unsafe {
            libc::setsockopt(
                l.as_raw_fd(),
                libc::IPPROTO_TCP,
                libc::TCP_NODELAY,
                &one as *const _ as *const libc::c_void,
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            );
        }
        if unsafe { libc::listen(l.as_raw_fd(), 2048) } == 0 {
            Ok(l)
        } else {
            Err(std::io::Error::last_os_error())
        }
    });
    let server = listener
        .map_err(|e| e.to_string())
        .and_then(|l| Server::from_listener(l, None).map_err(|e| e.to_string()))
        .unwrap_or_else(|e| {
            fail(
                1,
                &format!("cannot bind API port 127.0.0.1:{}: {e}", args.server_port),
            )
        });

    log_line(&format!(
        "aisp-testchild profile={profile} api_port={} stream_port={} camoufox_port={} pid={} headless={}",
        args.server_port,
        args.stream_port,
        args.camoufox_port,
        process::id(),
        args.headless
    ));

    if let Some(dir) = &knobs.pid_dir {
        let path = dir.join(format!("{profile}.pid"));
        if let Err(e) = write_pid_file(&path, process::id()) {
            fail(1, &format!("cannot write {}: {e}", path.display()));
        }
    }
    if knobs.spawn_grandchild {
        let dir = knobs.pid_dir.clone().unwrap_or_else(std::env::temp_dir);
        let pidfile = dir.join(format!("{profile}.grandchild.pid"));
        // Same process group on purpose: only a group kill may remove it.
        let spawned = std::env::current_exe().and_then(|exe| {
            process::Command::new(exe)
                .arg("--grandchild")
                .arg(&pidfile)
                .stdin(process::Stdio::null())
                .spawn()
        });
        match spawned {
            Ok(c) => log_line(&format!(
                "spawned grandchild pid={} pidfile={}",
                c.id(),
                pidfile.display()
            )),
            Err(e) => fail(1, &format!("cannot spawn grandchild: {e}")),
        }
    }
    if let Some(ms) = knobs.exit_after_ms {
        let code = knobs.exit_code;
        spawn_named("exit-timer", move || {
            thread::sleep(Duration::from_millis(ms));
            log_line(&format!(
                "aisp-testchild: exit_after_ms elapsed, exiting {code}"
            ));
            process::exit(code);
        });
    }
    if let Some(ms) = knobs.refuse_after_ms {
        let port = args.server_port;
        spawn_named("refuse-timer", move || {
            thread::sleep(Duration::from_millis(ms));
            let closed = sock::close_listener(port);
            log_line(&format!(
                "aisp-testchild: refuse_after_ms elapsed, listener closed: {closed}"
            ));
        });
    }
    if knobs.log_lines > 0 {
        let filler = "x".repeat(knobs.log_line_bytes as usize);
        for i in 0..knobs.log_lines {
            let mut line = format!("log line {i} ");
            line.push_str(&filler);
            line.truncate(knobs.log_line_bytes as usize);
            if i % 10 == 9 {
                eprintln!("{line}");
            } else {
                log_line(&line);
            }
        }
    }

    let app = Arc::new(App {
        profile,
        keys: load_keys(std::env::var_os("AUTH_KEY_FILE_PATH").map(PathBuf::from)),
        args,
        knobs,
        started,
        lane: Arc::new(Lane::default()),
        records: Mutex::new(VecDeque::new()),
        completion_seq: AtomicU64::new(0),
    });
    let server = Arc::new(server);
    let workers: Vec<_> = (0..HTTP_WORKERS)
        .map(|i| {
            let (app, server) = (Arc::clone(&app), Arc::clone(&server));
            thread::Builder::new()
                .name(format!("http-{i}"))
                .spawn(move || {
                    while let Ok(request) = server.recv() {
                        // A panicking handler drops the request, which makes
                        // tiny_http answer 500; the worker lives on.
                        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                            handle(&app, request)
                        }));
                        if r.is_err() {
                            log_line("error: request handler panicked");
                        }
                    }
                })
                .unwrap_or_else(|e| fail(1, &format!("cannot start http worker: {e}")))
        })
        .collect();
    for w in workers {
        let _ = w.join();
    }
    // With the listener shut (refuse_after_ms) the server stops; the process
    // stays, as a hung-but-alive child would, until it is signalled.
    if app.knobs.refuse_after_ms.is_some() {
        loop {
            thread::park();
        }
    }
}
