//! `run`: start the components in order, wire their channels, supervise
//! until a termination signal, and shut down in the reverse order.
//!
//! Start: signals and the orphan reaper; what an earlier run left behind is
//! stopped; the pool (slots, rotation queue, profile book read from disk)
//! and the dispatcher; the proxy and its outcome listener (verdicts feed the
//! book); the HTTP front door (before any child, so a taken port fails
//! fast); the admin socket and the reload thread; then one watcher per slot.
//! Shutdown: `/ready` turns 503 at once; requests in flight and queued are
//! served until none is left or `SHUTDOWN_DRAIN_S` passes; then the
//! dispatcher refuses, every watcher stops its child's tree with the grace,
//! leases are released, and the threads are joined. A second signal skips
//! the drain and the grace.

use std::path::PathBuf;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{after, select, Receiver};
use log::{error, info, warn};

use crate::admin::http::AdminKey;
use crate::admin::socket::AdminSocket;
use crate::book::{self, Book};
use crate::config::Config;
use crate::control::Fleet;
use crate::hydrate::Hydrated;
use crate::pool::Pool;
use crate::process::{self, logsigns::Signs};
use crate::proxy::{self, verdict};
use crate::reload::{self, Reloader};
use crate::writeback::WriteBack;
use crate::{dispatch, fleet, metrics, outbound, server, signals, watcher};

pub struct Fatal {
    pub message: String,
    pub code: u8,
}

fn fatal(code: u8) -> impl FnOnce(String) -> Fatal {
    move |message| Fatal { message, code }
}

/// The files named by settings that are read once at start, before
/// hydration: a bad one is a configuration error (exit 2).
pub struct Files {
    /// `PROFILE_PROXIES_FILE`.
    pub proxies: outbound::Proxies,
    /// The defaults and `CHILD_SIGNALS_FILE`.
    pub signs: Signs,
}

impl Files {
    pub fn load(cfg: &Config) -> Result<Files, String> {
        let proxies = outbound::Proxies::load(cfg.profile_proxies_file.as_deref())
            .map_err(|e| e.to_string())?;
        let signs = match &cfg.signals_file {
            Some(f) => Signs::load(f).map_err(|e| e.to_string())?,
            None => Signs::default(),
        };
        Ok(Files { proxies, signs })
    }

    /// For `--hydrate-only`, which starts no child.
    pub fn none() -> Files {
        Files {
            proxies: outbound::Proxies::none(),
            signs: Signs::default(),
        }
    }
}

/// Supervise until a signal, then shut down.
/// `early` (see `signals::exit_on_sigterm`) is dropped once the
/// supervisor's own signal handlers are in place.
pub fn run(
    cfg: &Config,
    hydrated: Hydrated,
    early: Option<signals::EarlyExit>,
    files: Files,
) -> Result<(), Fatal> {
    let Files { proxies, signs } = files;
    std::fs::create_dir_all(&cfg.log_dir).map_err(|e| Fatal {
        message: format!(
            "cannot create {}: {e}; set COORDINATOR_LOG_DIR to a writable directory",
            cfg.log_dir.display()
        ),
        code: 1,
    })?;
    let sigs = signals::install().map_err(fatal(1))?;
    drop(early);
    let reaper = process::reaper::Reaper::start()
        .map_err(|e| format!("cannot start the orphan reaper: {e}"))
        .map_err(fatal(1))?;
    let key_file = choose_key_file(cfg, hydrated.key_file.clone())?;
    let child_keys = child_key_file(cfg, key_file.as_deref())?;
    if let Some(k) = &child_keys {
        info!("AUTH_KEY_FILE_PATH={} is handed to children", k.display());
    }
    crate::budget::init(&cfg.budget);
    if let Err(e) = crate::usage::global().load(&cfg.cache_dir) {
        warn!("{e}; starting the usage counts from zero");
    }
    let notifier = start_notifier(&cfg.notify)?;
    let admin_key = admin_key(cfg)?;
    // Before any child of ours runs: what an earlier run left is stopped.
    let identity = process::tree::Identity::new(&cfg.cache_dir);
    process::tree::stop_leftovers(&identity, cfg.stop_grace);
    let writeback = WriteBack::new(cfg, &hydrated);

    let (pool, cmd_rxs) = new_pool(cfg, &hydrated);
    let proxies = Arc::new(proxies);
    proxies.note(&hydrated.names());
    // Before any watcher: with leases on, no profile runs unleased.
    let leaser = start_leaser(cfg, &pool)?;
    let proxy = Arc::new(new_proxy(cfg, key_file.as_deref())?);
    let (shutdown_tx, shutdown_rx) = crossbeam_channel::bounded::<()>(0);
    let outcomes = listen_to_outcomes(&proxy, pool.clone(), shutdown_rx.clone())
        .map_err(|e| format!("cannot start the outcome listener: {e}"))
        .map_err(fatal(1))?;
    let requests = proxy.requests();
    let client_watch = requests
        .watch_clients(shutdown_rx.clone())
        .map_err(|e| format!("cannot start the client watch: {e}"))
        .map_err(fatal(1))?;
    let observer = crate::console::spawn(pool.clone(), cfg.notify.no_ready, shutdown_rx.clone())
        .map_err(|e| format!("cannot start the console observer: {e}"))
        .map_err(fatal(1))?;
    let reloader = Arc::new(Reloader::new(
        cfg,
        pool.clone(),
        proxy.clone(),
        writeback.clone(),
        proxies.clone(),
    ));
    let fleet = Arc::new(Fleet {
        pool: pool.clone(),
        log_dir: cfg.log_dir.clone(),
        reloader: reloader.clone(),
        writeback: writeback.clone(),
    });
    let app = server::App {
        pool: pool.clone(),
        proxy,
        fleet: fleet.clone(),
        admin_key,
        metrics_open: cfg.metrics_open,
    };
    let conn = server::ConnSettings {
        header_timeout: cfg.header_timeout,
        keepalive_timeout: cfg.keepalive_timeout,
        max_connections: cfg.max_connections,
    };
    // The HTTP side comes up before any child, so a taken port fails fast.
    let http = server::HttpServer::start(&cfg.host, cfg.port, cfg.http_workers, conn, app)
        .map_err(|e| Fatal {
            message: e.0,
            code: 1,
        })?;
    let admin = AdminSocket::start(&cfg.admin_socket, fleet)
        .map_err(|e| e.to_string())
        .map_err(fatal(1))?;
    info!(
        "admin socket at {} (aistudioproxy ctl)",
        cfg.admin_socket.display()
    );
    let reloads = reload::spawn(
        reloader,
        sigs.hup.clone(),
        cfg.reload_interval,
        shutdown_rx.clone(),
    )
    .map_err(|e| format!("cannot start the reload thread: {e}"))
    .map_err(fatal(1))?;

    let keepalive = start_keepalive(cfg, &pool, shutdown_rx.clone())?;
    let (hurry_tx, hurry_rx) = crossbeam_channel::bounded::<()>(0);
    let flags = watcher::Signals {
        shutdown: shutdown_rx,
        hurry: hurry_rx,
    };
    info!(
        "children's logs are read for {} account signs (login needed, quota, rate limit)",
        signs.len()
    );
    let settings = watcher::Settings::new(
        cfg, child_keys, identity, writeback, requests, proxies, signs,
    );
    let (done_tx, done_rx) = crossbeam_channel::bounded::<()>(0);
    let mut watchers = Vec::new();
    for (slot, cmds) in cmd_rxs.into_iter().enumerate() {
        let spawned = watcher::spawn(
            slot,
            pool.clone(),
            cmds,
            settings.clone(),
            flags.clone(),
            done_tx.clone(),
        );
        match spawned {
            Ok(h) => watchers.push(h),
            Err(e) => error!("cannot start the watcher of slot {slot}: {e}"),
        }
    }
    drop(done_tx);

    let first = sigs.stop.recv().unwrap_or("signal channel closed");
    let grace = cfg.stop_grace;
    info!(
        "{first} received: shutting down (requests in flight get up to {:?}, then children {grace:?} to exit; a second signal skips both)",
        cfg.shutdown_drain
    );
    pool.begin_shutdown();
    let hurried = drain(&pool, &sigs.stop, cfg.shutdown_drain);
    pool.dispatch().shut();
    drop(shutdown_tx);
    let hurry = if hurried {
        drop(hurry_tx);
        None
    } else {
        Some(hurry_tx)
    };
    wait_for_watchers(&done_rx, &sigs.stop, grace, hurry);
    // Every child is stopped: give the leases back so other replicas take
    // the profiles over at once.
    if let Some(l) = leaser {
        l.stop();
    }
    if let Some(n) = notifier {
        n.stop();
    }
    for w in watchers
        .into_iter()
        .chain([outcomes, reloads, client_watch, observer])
        .chain(keepalive)
    {
        if w.is_finished() {
            let _ = w.join();
        }
    }
    admin.stop();
    http.stop(Instant::now() + Duration::from_millis(150));
    reaper.stop();
    pool.save_book();
    crate::usage::global().save();
    info!("shutdown complete");
    Ok(())
}

/// With `PROFILE_KEEPALIVE_S` or `PROFILE_MAX_RUNTIME_S`: the thread that
/// gives idle profiles their turn and rotates long runs out.
fn start_keepalive(
    cfg: &Config,
    pool: &Arc<Pool>,
    shutdown: Receiver<()>,
) -> Result<Option<JoinHandle<()>>, Fatal> {
    let k = cfg.keepalive;
    if !k.on() {
        return Ok(None);
    }
    if let Some(every) = k.every {
        info!(
            "keep-alive turns for profiles idle {} s (PROFILE_KEEPALIVE_S), one at a time",
            every.as_secs()
        );
    }
    if let Some(max) = k.max_runtime {
        info!(
            "a profile holding its slot {} s makes way when another waits (PROFILE_MAX_RUNTIME_S)",
            max.as_secs()
        );
    }
    // A slot making way drains (REQUEST_TIMEOUT_S at most) and stops its
    // child (the grace, then a kill): past that and a margin, the turn is
    // dropped and asked for again.
    let stuck = cfg.request_timeout + cfg.stop_grace * 2 + Duration::from_secs(60);
    crate::keepalive::spawn(pool.clone(), k, stuck, shutdown)
        .map(Some)
        .map_err(|e| format!("cannot start the keep-alive thread: {e}"))
        .map_err(fatal(1))
}

/// How long one lease request may take: well inside a renewal interval.
fn lease_request_timeout(ttl: Duration) -> Duration {
    (ttl / 6).clamp(Duration::from_millis(500), Duration::from_secs(5))
}

/// The running leaser: stopped by closing `stop`, which releases the leases.
struct LeaserHandle {
    stop: crossbeam_channel::Sender<()>,
    done: Receiver<()>,
    thread: JoinHandle<()>,
}

impl LeaserHandle {
    /// Stop the leaser and wait (bounded) for it to release its leases.
    fn stop(self) {
        drop(self.stop);
        // Disconnected when the thread ends; its writes are each bounded.
        if let Err(crossbeam_channel::RecvTimeoutError::Timeout) =
            self.done.recv_timeout(Duration::from_secs(15))
        {
            warn!("the leaser did not release its leases in time; they expire by themselves");
            return;
        }
        let _ = self.thread.join();
    }
}

/// With `PROFILE_LEASES=s3`: prove the store honours conditional writes,
/// then start the leaser and make the pool run only leased profiles.
fn start_leaser(cfg: &Config, pool: &Arc<Pool>) -> Result<Option<LeaserHandle>, Fatal> {
    let crate::config::Leases::S3 { ttl, replica } = &cfg.leases else {
        return Ok(None);
    };
    let store = crate::hydrate::s3_lease_store(&cfg.s3, lease_request_timeout(*ttl))
        .map_err(|e| e.to_string())
        .map_err(fatal(1))?;
    fleet::leaser::probe(&store, replica).map_err(|e| Fatal {
        code: match e {
            fleet::leaser::LeaseError::Unsafe { .. } => 2,
            fleet::leaser::LeaseError::Probe { .. } => 1,
        },
        message: e.to_string(),
    })?;
    let timing = fleet::lease::Timing {
        ttl: *ttl,
        stop_grace: cfg.stop_grace,
    };
    info!(
        "profile leases in {} as replica {replica}: TTL {}s, renewed every {}s, children kept {}s past the last renewal",
        store.location(),
        ttl.as_secs(),
        timing.renew_every().as_secs_f32(),
        timing.keep_for().as_secs_f32()
    );
    let stats = Arc::new(fleet::Stats::new(replica));
    let (tx, rx) = crossbeam_channel::unbounded();
    pool.enable_leases(tx, stats.clone());
    let leaser = fleet::leaser::Leaser::new(store, replica.clone(), timing, pool.clone(), stats);
    let (stop, stop_rx) = crossbeam_channel::bounded::<()>(0);
    let (done_tx, done) = crossbeam_channel::bounded::<()>(0);
    let thread = fleet::leaser::spawn(leaser, rx, stop_rx, done_tx)
        .map_err(|e| format!("cannot start the leaser thread: {e}"))
        .map_err(fatal(1))?;
    Ok(Some(LeaserHandle { stop, done, thread }))
}

/// The pool, with the profile book saved by an earlier run (a corrupt or
/// unreadable file is reported and ignored).
fn new_pool(cfg: &Config, hydrated: &Hydrated) -> (Arc<Pool>, Vec<Receiver<crate::pool::Cmd>>) {
    let limits = dispatch::Limits {
        per_child: cfg.max_inflight_per_child,
        max_queue: cfg.max_queue,
        queue_timeout: cfg.queue_timeout,
        demand_window: cfg.demand_window,
    };
    let profile_count = hydrated.profiles.len();
    let (pool, cmd_rxs) = Pool::new(hydrated.profiles.clone(), cfg.pool_size, cfg.ports, limits);
    let store = book::store::path_in(&cfg.cache_dir);
    let saved = book::store::load(&store).unwrap_or_else(|e| {
        warn!("{e}; starting with no saved profile state");
        Default::default()
    });
    let names: Vec<&str> = hydrated.profiles.iter().map(|p| p.name.as_str()).collect();
    let book = Book::new(names, saved, cfg.book);
    let cooling = book
        .status(std::time::SystemTime::now())
        .iter()
        .filter(|s| s.cooling_until_unix_ms.is_some())
        .count();
    if cooling > 0 {
        info!("{cooling} profiles are still cooling down from an earlier run");
    }
    pool.set_book(book, store);
    // A profile that needed a login and came back with new content runs.
    pool.content_seen(&crate::hydrate::login_facts(&hydrated.profiles));
    info!(
        "{} slots for {profile_count} profiles ({} queued); child command: {}",
        pool.size(),
        profile_count - pool.size(),
        cfg.child_command.join(" ")
    );
    (pool, cmd_rxs)
}

fn new_proxy(cfg: &Config, key_file: Option<&std::path::Path>) -> Result<proxy::Proxy, Fatal> {
    let keys = proxy::keys::Keys::load(key_file).map_err(|e| Fatal {
        message: format!("cannot read the key file: {e}; check AUTH_PROFILE_CACHE_DIR/key.txt"),
        code: key_file_exit(&e),
    })?;
    if keys.enabled() {
        info!("API keys enforced on /v1/* ({} keys loaded)", keys.len());
    }
    Ok(proxy::Proxy::new(
        keys,
        proxy::Settings {
            request_timeout: cfg.request_timeout,
            stream_idle_timeout: cfg.stream_idle_timeout,
            max_body_bytes: cfg.max_body_bytes,
            consecutive_5xx_to_evict: cfg.consecutive_5xx_to_evict,
            hold_stream_head: cfg.hold_stream_head,
        },
    ))
}

/// Feed every completion's verdict into the profile book (empty answers in
/// a row cool a profile down), and the models waiters starve for into the
/// pool's placement, on a thread of its own so the HTTP workers only send
/// on a channel.
fn listen_to_outcomes(
    proxy: &proxy::Proxy,
    pool: Arc<Pool>,
    shutdown: Receiver<()>,
) -> std::io::Result<JoinHandle<()>> {
    let (tx, rx) = crossbeam_channel::unbounded::<verdict::Outcome>();
    proxy.report_outcomes(tx);
    let (starved_tx, starved) = crossbeam_channel::unbounded::<String>();
    pool.dispatch().on_starved(starved_tx);
    std::thread::Builder::new()
        .name("outcomes".into())
        .spawn(move || loop {
            select! {
                recv(shutdown) -> _ => return,
                recv(starved) -> m => {
                    let Ok(m) = m else { return };
                    pool.model_starved(&m);
                }
                recv(rx) -> o => {
                    let Ok(o) = o else { return };
                    let answer = match o.verdict {
                        verdict::Verdict::Ok => book::Answer::Served,
                        // Exhaustion and empty answers are reported to the
                        // book by the proxy itself, at once.
                        verdict::Verdict::EmptyAnswer(_) => {
                            metrics::empty_answer(&o.profile);
                            continue;
                        }
                        _ => continue,
                    };
                    pool.report(o.child.slot, o.child.generation, answer, o.model.as_deref());
                }
            }
        })
}

/// The drain before the children stop: `/ready` already says 503, so load
/// balancers stop sending; what is in flight or queued is served until the
/// dispatcher is idle or `bound` passes. True when a second signal cut it
/// short (the children's grace is then skipped too).
fn drain(pool: &Pool, sigs: &Receiver<&'static str>, bound: Duration) -> bool {
    let deadline = Instant::now() + bound;
    let started = Instant::now();
    loop {
        let d = pool.dispatch();
        let busy = d.waiting() + d.in_flight().iter().sum::<usize>();
        if busy == 0 {
            if started.elapsed() > DRAIN_POLL {
                info!("requests drained in {:.1?}", started.elapsed());
            }
            return false;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            warn!("{busy} requests still in flight or queued after SHUTDOWN_DRAIN_S; stopping the children anyway");
            return false;
        }
        select! {
            recv(sigs) -> s => {
                warn!("{} received again: not waiting for {busy} requests; killing children now", s.unwrap_or("signal"));
                return true;
            }
            recv(after(DRAIN_POLL.min(left))) -> _ => {}
        }
    }
}

/// How often the shutdown drain looks at what is left.
const DRAIN_POLL: Duration = Duration::from_millis(10);

/// Until every watcher is done, or the grace (plus a margin) is over; a
/// second signal drops `hurry`, which cuts the children's grace short.
fn wait_for_watchers(
    done: &Receiver<()>,
    sigs: &Receiver<&'static str>,
    grace: Duration,
    hurry: Option<crossbeam_channel::Sender<()>>,
) {
    let deadline = Instant::now() + grace + Duration::from_millis(800);
    let mut hurry = hurry;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        select! {
            // Disconnected once every watcher thread has ended.
            recv(done) -> _ => return,
            recv(sigs) -> s => {
                if hurry.take().is_some() {
                    warn!("{} received again: killing children now", s.unwrap_or("signal"));
                }
            }
            recv(after(left)) -> _ => {
                warn!("slot watchers did not finish within the grace period; exiting anyway");
                return;
            }
        }
    }
}

/// A key file with a bad limit is a configuration error (2); one that
/// cannot be read, an I/O failure (1).
fn key_file_exit(e: &std::io::Error) -> u8 {
    if e.kind() == std::io::ErrorKind::InvalidData {
        2
    } else {
        1
    }
}

/// The key file children read: the coordinator's own, or a copy without
/// the labels when it has any (see `proxy::keys::child_copy`).
fn child_key_file(
    cfg: &Config,
    key_file: Option<&std::path::Path>,
) -> Result<Option<PathBuf>, Fatal> {
    let Some(source) = key_file else {
        return Ok(None);
    };
    let keys = proxy::keys::Keys::load(Some(source)).map_err(|e| Fatal {
        message: format!("cannot read the key file: {e}; check AUTH_PROFILE_CACHE_DIR/key.txt"),
        code: key_file_exit(&e),
    })?;
    proxy::keys::child_copy(source, &keys, &cfg.cache_dir)
        .map(Some)
        .map_err(|e| Fatal {
            message: format!(
                "cannot write the children's key file in {}: {e}; check AUTH_PROFILE_CACHE_DIR",
                cfg.cache_dir.display()
            ),
            code: 1,
        })
}

/// The notifier, when a webhook is configured (`NOTIFY_WEBHOOK_URL`, or
/// the first line of `NOTIFY_WEBHOOK_URL_FILE`).
fn start_notifier(s: &crate::notify::Settings) -> Result<Option<crate::notify::Notifier>, Fatal> {
    let url = match (&s.url, &s.url_file) {
        (Some(u), _) => u.clone(),
        (None, Some(path)) => {
            let text = std::fs::read_to_string(path).map_err(|e| Fatal {
                message: format!(
                    "NOTIFY_WEBHOOK_URL_FILE={} cannot be read ({e}): point it at a readable file or unset it",
                    path.display()
                ),
                code: 2,
            })?;
            crate::notify::WebhookUrl::new(text.lines().next().unwrap_or("")).map_err(|why| {
                Fatal {
                    message: format!(
                        "NOTIFY_WEBHOOK_URL_FILE={}: its first line must be {why}",
                        path.display()
                    ),
                    code: 2,
                }
            })?
        }
        (None, None) => return Ok(None),
    };
    crate::notify::start(url, s.fold)
        .map(Some)
        .map_err(|e| format!("cannot start the notifier: {e}"))
        .map_err(fatal(1))
}

/// The admin key: `ADMIN_KEY`, or the first line of `ADMIN_KEY_FILE`.
fn admin_key(cfg: &Config) -> Result<Option<AdminKey>, Fatal> {
    if cfg.admin_key.is_some() {
        return Ok(cfg.admin_key.clone());
    }
    let Some(path) = &cfg.admin_key_file else {
        return Ok(None);
    };
    let text = std::fs::read_to_string(path).map_err(|e| Fatal {
        message: format!(
            "ADMIN_KEY_FILE={} cannot be read ({e}): point it at a readable file or unset it",
            path.display()
        ),
        code: 2,
    })?;
    match AdminKey::new(text.lines().next().unwrap_or("").to_string()) {
        Some(k) => Ok(Some(k)),
        None => Err(Fatal {
            message: format!(
                "ADMIN_KEY_FILE={} holds no key on its first line",
                path.display()
            ),
            code: 2,
        }),
    }
}

/// The key file the coordinator checks and hands to children: a hydrated
/// key.txt wins over the operator's `AUTH_KEY_FILE_PATH`, which must be
/// readable when it is used (children would each fail at start otherwise).
fn choose_key_file(cfg: &Config, hydrated: Option<PathBuf>) -> Result<Option<PathBuf>, Fatal> {
    match (hydrated, &cfg.operator_key_file) {
        (Some(h), Some(op)) => {
            if *op != h {
                info!(
                    "the hydrated key file {} wins over AUTH_KEY_FILE_PATH={}",
                    h.display(),
                    op.display()
                );
            }
            Ok(Some(h))
        }
        (Some(h), None) => Ok(Some(h)),
        (None, Some(op)) => match std::fs::File::open(op).and_then(|f| f.metadata()) {
            Ok(m) if m.is_file() => Ok(Some(op.clone())),
            Ok(_) => Err(Fatal {
                message: format!(
                    "AUTH_KEY_FILE_PATH={} is not a file: point it at a key file (one key per line) or unset it",
                    op.display()
                ),
                code: 2,
            }),
            Err(e) => Err(Fatal {
                message: format!(
                    "AUTH_KEY_FILE_PATH={} cannot be read ({e}): point it at a readable key file or unset it",
                    op.display()
                ),
                code: 2,
            }),
        },
        (None, None) => Ok(None),
    }
}
