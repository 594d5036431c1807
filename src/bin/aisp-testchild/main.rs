//! `aisp-testchild`: a stand-in for the AI Studio proxy child (the Python
//! `launch_camoufox.py`) used by integration tests, benchmarks and the demo.
//!
//! It honours the child contract (`/work/shared/spec/child-contract.md`:
//! same command line, same endpoints, same API-key rule, one completion at a
//! time) and can be told to misbehave, or to be as awkward as the real
//! child, via knobs (`knobs.rs` lists each with its type and default; env
//! `TESTCHILD_<NAME>`, overridden per profile by the profile JSON's
//! `"testchild": {..}`). `TESTCHILD_REAL_CHILD=1` makes every child behave
//! like the real one (browser, stream helper, late bind, auth write-back).
//! Standalone on purpose: it shares no code with the coordinator, so tests
//! exercise the coordinator against an independent implementation.
//!
//! Endpoints (API port, 127.0.0.1):
//! - `GET /health`, `/ready`: 200 `{"status": "OK"}` once ready
//!   (`ready_after_ms` from start, `never_ready`), else 503. With
//!   `bind_after_ms` the port refuses connections until then, and answers
//!   200 at once when bound (if `ready_after_ms` has passed too). A dead
//!   browser never shows here. `GET /live`: always 200.
//! - `GET /v1/models`: the `models` knob (default `gemini-test`).
//! - `POST /v1/chat/completions`: see `completion.rs` for every answer
//!   shape. Each gets a 7-character id (`[a-z0-9]{7}`), found in the
//!   completion id `chatcmpl-<req_id>-<unix s>-<seq>`, in `/v1/queue`, in the
//!   logs and in headers `X-Testchild-Req-Id` and `X-Testchild-Queue-Wait-Ms`
//!   (ms waited in the lane), on every completion answer.
//! - `POST /v1/cancel/{req_id}`: cancels a completion still queued inside
//!   the child: 200 `{"success": true, "message", "req_id"}`, its client
//!   gets 499 `{"detail": "[<req_id>] Request cancelled by user ..."}` at
//!   once; otherwise (unknown, running, done) 404 `{"success": false, ..}`.
//!   `X-Request-Id` is never read.
//! - `GET /v1/queue`: `queue_length`, `is_processing_locked`, `processing`,
//!   `processing_req_id`, `items` (`req_id`, `enqueue_time`,
//!   `wait_time_seconds`, `is_streaming`, `cancelled`) of queued ones.
//! - `GET /api/info`: profile, ports, pid, headless, `api_key_required`,
//!   `key_file`, `auth_json`, `browser_pid`, `helper_pid`, `driver_pid`,
//!   `started_with_refresh`, `refreshes`, `real_child`.
//! - `GET /_testchild/requests`: the requests recorded (not health ones).
//! - `GET /_testchild/stats`: `completions_started` (turn came),
//!   `completions_finished` (served, answer fully delivered),
//!   `completions_abandoned` (client left, queued or served),
//!   `completions_cancelled`, `completions_succeeded` (normal answers),
//!   `max_concurrent` (completions served at once, ever: stays 1),
//!   `max_waiting`, `waiting`, `processing`, `refreshes`,
//!   `started_with_refresh` (cookie `aisp_refresh` in the profile file at
//!   start, or null), `browser_pid`, `helper_pid`, `driver_pid` (null
//!   unless alive).
//! - `GET /_testchild/env`: the child's whole environment, as a JSON object.
//! - `POST /_testchild/grow_rss/<MiB>`: the launcher takes that much more
//!   memory and keeps it (`ballast.rs`); answers `{"held_mb": total}`.
//!
//! `/v1/*` but `/v1/models` need a key when the key file (from
//! `AUTH_KEY_FILE_PATH`, else `./key.txt`) lists any (`keys.rs`); a named
//! file that is missing makes the child exit 1 at start.
//!
//! Pid files (only with `pid_dir`, except the grandchild's, which falls back
//! to the temp dir): `<profile>.pid` (launcher), `<profile>.browser.pid`,
//! `<profile>.helper.pid`, `<profile>.driver.pid`,
//! `<profile>.grandchild.pid`, all written
//! atomically.
//!
//! Signals (see `tree.rs`): the launcher on SIGTERM exits 0 (after the auth
//! write-back if `refresh_every`, stopping its browser first), unless
//! `ignore_sigterm`, or unless a stream helper lives: then it logs and waits
//! for the helper, so in practice only SIGKILL ends it. With `save_on_term`
//! (on with `real_child`) it is the current real child instead: the save
//! (if `refresh_every`; it needs the driver, and when the driver is dead
//! 250 ms after the SIGTERM, as after a group-wide SIGTERM, it logs `Failed
//! to save cookies: Target page, context or browser has been closed: the
//! handler is closed` and writes nothing; else `Cookies saved to auth file
//! '<file>' (N cookies)`), then the helper SIGKILLed after
//! `helper_kill_after_ms`, driver and browser stopped, exit 0. With `fork`
//! it stops its browser and never exits (no save).
//!
//! Expired login (`login_expired`, or cookie `FAKE_EXPIRED`): the API port
//! is never bound; at `login_fail_after_ms` it logs `Detected redirect to
//! login page in headless mode, authentication may have expired. Please
//! update the auth file.` and `Auth failed in headless mode, auth file
//! update required.`, and 0.5 s later stops browser, helper and driver and
//! exits 0. The fork's (`login_expired_fork`, or `FAKE_EXPIRED` with
//! `fork`): logs `无头模式下检测到重定向至登录页面，认证可能已失效。请更新认证文件。`
//! and, on stderr, `ERROR:    Application startup failed. Exiting.`, stops
//! its browser and hangs for good, ignoring SIGTERM.
//!
//! With `real_child` the state the child saves carries cookie
//! `FAKE_REFRESHED=<unix s of start>`, as the real page load sets it. Its normal exits
//! (SIGTERM, `exit_after_ms`, start-up failures) stop the browser: SIGTERM,
//! SIGKILL after 1 s. The browser (own session) exits on SIGTERM unless
//! `browser_ignore_sigterm`, ignores SIGHUP, and survives a SIGTERMed or
//! SIGKILLed launcher. The helper and grandchild ignore SIGTERM; SIGKILL
//! ends them. Descendants end by themselves after 1 h at most.
//!
//! Threads: main (startup, then joins the HTTP workers), 8 `http-N` workers
//! looping on `recv()`, one `completion` thread per chat completion, a
//! `reap-*` thread per descendant, and small timer/signal threads. The
//! process always ends by `exit`.

mod args;
mod ballast;
mod completion;
mod keys;
mod knobs;
mod lane;
mod page;
mod refresh;
mod sock;
mod tree;

use args::{ChildArgs, Mode};
use completion::Outcome;
use knobs::Knobs;
use lane::Lane;
use refresh::Refresher;
use serde::Serialize;
use serde_json::{json, Value};
use std::collections::{BTreeMap, VecDeque};
use std::io::{Cursor, Read, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use std::{fs, process, thread};
use tiny_http::{Header, Method, Request, Response, Server};

const HTTP_WORKERS: usize = 8;
/// How long the SIGTERM save gives a group-wide SIGTERM to kill the driver
/// before it relies on it.
const DRIVER_DEATH_GRACE: Duration = Duration::from_millis(250);
/// The real child's log line when its cookie save finds the driver dead.
const SAVE_FAILED: &str =
    "Failed to save cookies: Target page, context or browser has been closed: the handler is closed";
/// The current real child's two log lines for an expired login (headless).
const LOGIN_EXPIRED_LINES: [&str; 2] = [
    "Detected redirect to login page in headless mode, authentication may have expired. Please update the auth file.",
    "Auth failed in headless mode, auth file update required.",
];
/// The older fork's log line for an expired login, and uvicorn's.
const LOGIN_EXPIRED_FORK_LINE: &str =
    "无头模式下检测到重定向至登录页面，认证可能已失效。请更新认证文件。";
const STARTUP_FAILED_LINE: &str = "ERROR:    Application startup failed. Exiting.";
const MAX_RECORDS: usize = 1000;
/// Bodies are recorded up to this size; the rest is read and discarded.
const MAX_RECORDED_BODY: u64 = 64 * 1024 * 1024;
/// Everything the request handlers share. All fields but `records`, `lane`
/// and `completion_seq` are fixed at start.
pub struct App {
    pub profile: String,
    pub args: ChildArgs,
    pub knobs: Knobs,
    started: Instant,
    /// Accepted API keys; empty means no check.
    keys: Vec<String>,
    /// Where the keys were looked for.
    key_file: PathBuf,
    pub lane: Arc<Lane>,
    /// Requests seen, for `/_testchild/requests`; pushed by workers, read by
    /// the introspection endpoint; the lock is held only to push or clone.
    records: Mutex<VecDeque<Record>>,
    pub completion_seq: AtomicU64,
    pub stats: Stats,
    pub refresher: Arc<Refresher>,
}

/// Completion counters for `/_testchild/stats`, bumped by completion
/// threads.
#[derive(Default)]
pub struct Stats {
    /// Completions whose turn came (being served, then ended).
    pub started: AtomicU64,
    /// Served completions whose answer (of any kind) was fully delivered.
    pub finished: AtomicU64,
    /// Completions whose client went away, queued or being served.
    pub abandoned: AtomicU64,
    /// Completions cancelled by `/v1/cancel/{req_id}` while queued.
    pub cancelled: AtomicU64,
    /// Normal answers fully delivered (what `exhaust_after` and
    /// `refresh_every` count).
    pub successes: AtomicU64,
    serving_now: AtomicU64,
    max_concurrent: AtomicU64,
}

impl Stats {
    /// A completion starts being served.
    pub fn begin(&self) {
        self.started.fetch_add(1, Ordering::Relaxed);
        let now = self.serving_now.fetch_add(1, Ordering::SeqCst) + 1;
        self.max_concurrent.fetch_max(now, Ordering::SeqCst);
    }

    /// A served completion ended this way.
    pub fn end(&self, outcome: Outcome) {
        self.serving_now.fetch_sub(1, Ordering::SeqCst);
        match outcome {
            Outcome::Success | Outcome::Answered => {
                self.finished.fetch_add(1, Ordering::Relaxed);
            }
            Outcome::ClientGone => {
                self.abandoned.fetch_add(1, Ordering::Relaxed);
            }
            Outcome::Died => {}
        }
    }
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

/// Ends the launcher with `msg` on stderr, stopping its browser first.
fn fail(code: i32, msg: &str) -> ! {
    eprintln!("aisp-testchild: {msg}");
    tree::exit_child(code)
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

/// `r` with one more header.
pub fn with_header<R: Read>(r: Response<R>, name: &str, value: &str) -> Response<R> {
    r.with_header(header(name, value))
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
        keys::accepted(
            &self.keys,
            Record::header(request, "authorization").as_deref(),
            Record::header(request, "x-api-key").as_deref(),
        )
    }

    fn stats_json(&self) -> Value {
        let s = &self.stats;
        let get = |a: &AtomicU64| a.load(Ordering::SeqCst);
        let (waiting, processing) = self.lane.status();
        json!({
            "completions_started": get(&s.started),
            "completions_finished": get(&s.finished),
            "completions_abandoned": get(&s.abandoned),
            "completions_cancelled": get(&s.cancelled),
            "completions_succeeded": get(&s.successes),
            "max_concurrent": get(&s.max_concurrent),
            "max_waiting": self.lane.max_waiting(),
            "waiting": waiting,
            "processing": processing,
            "refreshes": self.refresher.count(),
            "started_with_refresh": self.refresher.started_with,
            "browser_pid": tree::browser_pid(),
            "helper_pid": tree::helper_pid(),
            "driver_pid": tree::driver_pid(),
        })
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
        (Method::Get, "/v1/models") => {
            let data: Vec<Value> = app
                .knobs
                .models
                .iter()
                .map(|m| {
                    json!({"id": m, "object": "model", "created": 0,
                                "owned_by": "aisp-testchild"})
                })
                .collect();
            (200, json!({"object": "list", "data": data}))
        }
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
            log_line(&format!("cancel req_id={req_id} queued={known}"));
            if known {
                let message = format!("Request {req_id} marked as cancelled.");
                (
                    200,
                    json!({"success": true, "message": message, "req_id": req_id}),
                )
            } else {
                let message = format!("Request {req_id} not found in queue.");
                (
                    404,
                    json!({"success": false, "message": message, "req_id": req_id}),
                )
            }
        }
        (Method::Get, "/v1/queue") => (200, app.lane.queue_json(unix_ms())),
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
                "key_file": app.key_file,
                "auth_json": app.args.auth_json,
                "browser_pid": tree::browser_pid(),
                "helper_pid": tree::helper_pid(),
                "driver_pid": tree::driver_pid(),
                "started_with_refresh": app.refresher.started_with,
                "refreshes": app.refresher.count(),
                "real_child": app.knobs.real_child,
            }),
        ),
        (Method::Get, "/_testchild/stats") => (200, app.stats_json()),
        (Method::Get, "/_testchild/env") => {
            let env: BTreeMap<String, String> = std::env::vars_os()
                .map(|(k, v)| {
                    (
                        k.to_string_lossy().into_owned(),
                        v.to_string_lossy().into_owned(),
                    )
                })
                .collect();
            (200, json!(env))
        }
        (Method::Post, p) if p.starts_with("/_testchild/grow_rss/") => {
            match p["/_testchild/grow_rss/".len()..].parse::<u64>() {
                Ok(mb) => (200, json!({"held_mb": ballast::grow(mb)})),
                Err(_) => (400, json!({"error": "grow_rss takes a number of MiB"})),
            }
        }
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

fn spawn_named(name: &str, f: impl FnOnce() + Send + 'static) {
    if let Err(e) = thread::Builder::new().name(name.into()).spawn(f) {
        fail(1, &format!("cannot start thread {name}: {e}"));
    }
}

/// Binds the API port with a deep backlog, like uvicorn's 2048: a burst of
/// proxied requests must not have SYNs dropped (std's backlog is 128).
fn bind_api(port: u16) -> Result<Server, String> {
    let listener = std::net::TcpListener::bind(("127.0.0.1", port)).and_then(|l| {
        use std::os::fd::AsRawFd;
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
        // SAFETY: listen(2) again on our own listening socket sets its backlog.
        if unsafe { libc::listen(l.as_raw_fd(), 2048) } == 0 {
            Ok(l)
        } else {
            Err(std::io::Error::last_os_error())
        }
    });
    listener
        .map_err(|e| e.to_string())
        .and_then(|l| Server::from_listener(l, None).map_err(|e| e.to_string()))
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
        Mode::Grandchild(pidfile) => tree::run_grandchild(&pidfile),
        Mode::Browser(b) => tree::run_browser(&b),
        Mode::Helper(h) => tree::run_helper(&h),
        Mode::Driver(pidfile) => tree::run_driver(pidfile.as_deref()),
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
    let (mut knobs, warnings) = Knobs::load(
        |k| std::env::var(k).ok(),
        profile_json.get("testchild").and_then(Value::as_object),
    )
    .unwrap_or_else(|e| fail(1, &e.to_string()));
    for w in warnings {
        eprintln!("aisp-testchild: warning: {w}");
    }
    knobs.apply_cookies(&profile_json);
    // The real child's page load sets a cookie: what it would save differs
    // from the file it was started with.
    let profile_json = if knobs.real_child {
        let now = (unix_ms() / 1000).to_string();
        refresh::with_named_cookie(&profile_json, refresh::PAGE_LOAD_COOKIE, &now)
    } else {
        profile_json
    };
    let refresher = Arc::new(Refresher::new(
        args.auth_json.clone(),
        &profile,
        profile_json,
        Duration::from_millis(knobs.refresh_pause_ms),
    ));

    // Signals first, so a SIGTERM during startup already behaves.
    if knobs.ignore_sigterm {
        tree::ignore_sigterm();
    } else {
        let mut signals = signal_hook::iterator::Signals::new([signal_hook::consts::SIGTERM])
            .unwrap_or_else(|e| fail(1, &format!("cannot watch SIGTERM: {e}")));
        let refresher = Arc::clone(&refresher);
        let refresh_at_exit = knobs.refresh_every.is_some();
        let (fork, save_on_term) = (knobs.fork, knobs.save_on_term);
        let helper_grace = Duration::from_millis(knobs.helper_kill_after_ms);
        spawn_named("sigterm", move || {
            if signals.forever().next().is_some() {
                log_line("aisp-testchild: SIGTERM received");
                // The save needs the driver; a SIGTERM sent to the whole
                // group at once has killed it (given a moment to land).
                let save = || {
                    if !refresh_at_exit {
                        return;
                    }
                    if tree::driver_survives(DRIVER_DEATH_GRACE) {
                        refresher.save_at_shutdown();
                    } else {
                        log_line(SAVE_FAILED);
                    }
                };
                if fork {
                    tree::on_sigterm_fork();
                } else if save_on_term {
                    tree::on_sigterm_saving(save, helper_grace);
                } else {
                    tree::on_sigterm(save);
                }
            }
        });
    }

    // The key file, as the real child reads it at start.
    let cwd = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("."));
    let key_env = std::env::var("AUTH_KEY_FILE_PATH").ok();
    let key_file = keys::load(key_env.as_deref(), &cwd).unwrap_or_else(|e| fail(1, &e));

    log_line(&format!(
        "aisp-testchild starting profile={profile} pid={} real_child={}",
        process::id(),
        knobs.real_child
    ));
    if let Some(dir) = &knobs.pid_dir {
        let path = dir.join(format!("{profile}.pid"));
        if let Err(e) = tree::write_pid_file(&path, process::id()) {
            fail(1, &format!("cannot write {}: {e}", path.display()));
        }
    }
    let pid_file = |kind: &str| {
        knobs
            .pid_dir
            .as_ref()
            .map(|d| d.join(format!("{profile}.{kind}.pid")))
    };
    if knobs.browser {
        match tree::spawn_browser(
            args.camoufox_port,
            pid_file("browser"),
            knobs.browser_ignore_sigterm,
        ) {
            Ok(pid) => {
                log_line(&format!(
                    "browser started pid={pid} (own session) on camoufox debug port 127.0.0.1:{}",
                    args.camoufox_port
                ));
                if let Some(ms) = knobs.browser_dies_after_ms {
                    tree::browser_dies_after(Duration::from_millis(ms));
                }
            }
            Err(why) => {
                if why.contains("already in use") {
                    log_line(&format!(
                        "camoufox debug port 127.0.0.1:{} is already in use; browser failed to start",
                        args.camoufox_port
                    ));
                } else {
                    log_line(&format!("browser failed to start: {why}"));
                }
                thread::sleep(Duration::from_millis(knobs.browser_fail_delay_ms));
                tree::exit_child(1);
            }
        }
    }
    if knobs.stream_helper {
        match tree::spawn_helper(args.stream_port, pid_file("helper")) {
            Ok(pid) => log_line(&format!(
                "spawned stream helper pid={pid} (same process group, ignores SIGTERM)"
            )),
            Err(e) => fail(1, &e),
        }
    }
    if knobs.driver {
        match tree::spawn_driver(pid_file("driver")) {
            Ok(pid) => log_line(&format!(
                "spawned Playwright driver pid={pid} (same process group, dies on SIGTERM)"
            )),
            Err(e) => fail(1, &e),
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
            thread::sleep(Duration::from_millis(ms).saturating_sub(started.elapsed()));
            log_line(&format!(
                "aisp-testchild: exit_after_ms elapsed, exiting {code}"
            ));
            tree::exit_child(code);
        });
    }

    // An expired login shows once the page loads: the port is never bound.
    if knobs.login_expired || knobs.login_expired_fork {
        let at = Duration::from_millis(knobs.login_fail_after_ms);
        thread::sleep(at.saturating_sub(started.elapsed()));
        if knobs.login_expired_fork {
            log_line(LOGIN_EXPIRED_FORK_LINE);
            eprintln!("{STARTUP_FAILED_LINE}");
            tree::stop_browser_and_hang();
        }
        for line in LOGIN_EXPIRED_LINES {
            log_line(line);
        }
        thread::sleep(Duration::from_millis(500));
        tree::exit_stopping_all(0);
    }

    // The real child binds its API port only once initialised: refused
    // until then.
    let bind_at = Duration::from_millis(knobs.bind_after_ms);
    if bind_at > started.elapsed() {
        thread::sleep(bind_at - started.elapsed());
    }
    let server = bind_api(args.server_port).unwrap_or_else(|e| {
        fail(
            1,
            &format!("cannot bind API port 127.0.0.1:{}: {e}", args.server_port),
        )
    });
    log_line(&format!(
        "API port 127.0.0.1:{} bound after {} ms",
        args.server_port,
        started.elapsed().as_millis()
    ));
    log_line(&format!(
        "aisp-testchild profile={profile} api_port={} stream_port={} camoufox_port={} pid={} headless={}",
        args.server_port,
        args.stream_port,
        args.camoufox_port,
        process::id(),
        args.headless
    ));

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
        keys: key_file.keys,
        key_file: key_file.path,
        args,
        knobs,
        started,
        lane: Arc::new(Lane::default()),
        records: Mutex::new(VecDeque::new()),
        completion_seq: AtomicU64::new(0),
        stats: Stats::default(),
        refresher,
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
    tree::exit_child(0)
}
