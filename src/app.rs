//! `run`: start the components in order, wire their channels, supervise
//! until a termination signal, and shut down in the reverse order.
//!
//! Start: signals and the orphan reaper; what an earlier run left behind is
//! stopped; the supervisor (slots, rotation queue, profile book read from
//! disk; the proxy's verdicts feed it) and the dispatcher; the HTTP front door (before any child, so a taken port fails
//! fast); the admin socket and the reload thread; then one watcher per slot.
//! Shutdown: `/ready` turns 503 at once; requests in flight and queued are
//! served until none is left or `SHUTDOWN_DRAIN_S` passes; then the
//! dispatcher refuses, every watcher stops its child's tree with the grace,
//! leases are released, and the threads are joined. A second signal skips
//! the drain and the grace.

use std::path::PathBuf;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use crossbeam_channel::{after, select, Receiver};
use log::{error, info, warn};

use crate::admin::http::AdminKey;
use crate::admin::socket::AdminSocket;
use crate::book::{self, Book};
use crate::config::Config;
use crate::control::Fleet;
use crate::hydrate::Hydrated;
use crate::process::{self, logsigns::Signs};
use crate::proxy::{self, verdict};
use crate::reload::{self, Reloader};
use crate::supervisor::msg::Msg;
use crate::supervisor::{self, Cmd, Handle};
use crate::writeback::WriteBack;
use crate::{dispatch, fleet, outbound, server, signals, watcher};

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
    /// `BUDGET_TIMEZONE`'s rules.
    pub zone: crate::budget::Zone,
    /// `MODEL_BUDGETS_FILE` (empty without it).
    pub budgets: crate::budget::plan::Plan,
}

impl Files {
    pub fn load(cfg: &Config) -> Result<Files, String> {
        let proxies = outbound::Proxies::load(cfg.profile_proxies_file.as_deref())
            .map_err(|e| e.to_string())?;
        let signs = match &cfg.signals_file {
            Some(f) => Signs::load(f).map_err(|e| e.to_string())?,
            None => Signs::default(),
        };
        let zone = crate::budget::Zone::named(&cfg.budget.timezone).map_err(|e| {
            let name = &cfg.budget.timezone;
            format!("invalid BUDGET_TIMEZONE={name:?}: expected {e}")
        })?;
        let budgets = match &cfg.budget.models_file {
            Some(f) => crate::budget::plan::Plan::load(f).map_err(|e| e.to_string())?,
            None => Default::default(),
        };
        Ok(Files {
            proxies,
            signs,
            zone,
            budgets,
        })
    }

    /// For `--hydrate-only`, which starts no child.
    pub fn none() -> Files {
        Files {
            proxies: outbound::Proxies::none(),
            signs: Signs::default(),
            zone: crate::budget::Zone::utc(),
            budgets: Default::default(),
        }
    }
}

/// What `run` started before the watchers: kept to stop them in order.
struct Started {
    sup: Handle,
    sup_thread: JoinHandle<()>,
    stop_sup: crossbeam_channel::Sender<()>,
    leaser: Option<LeaserHandle>,
    notifier: Option<crate::notify::Notifier>,
    http: server::HttpServer,
    admin: AdminSocket,
    threads: Vec<JoinHandle<()>>,
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
    let Files {
        proxies,
        signs,
        zone,
        budgets,
    } = files;
    make_log_dir(cfg)?;
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
    open_budget_day(cfg, zone);
    let notifier = start_notifier(&cfg.notify)?;
    // Before any child of ours runs: what an earlier run left is stopped.
    let identity = process::tree::Identity::new(&cfg.cache_dir);
    process::tree::stop_leftovers(&identity, cfg.stop_grace);
    let writeback = WriteBack::new(cfg, &hydrated);
    let proxies = Arc::new(proxies);
    proxies.note(&hydrated.names());
    let proxy = Arc::new(new_proxy(cfg, key_file.as_deref())?);
    let (shutdown_tx, shutdown_rx) = crossbeam_channel::bounded::<()>(0);
    let (mut started, cmd_rxs) = start(
        cfg,
        &hydrated,
        &proxy,
        &writeback,
        &proxies,
        notifier,
        (&sigs.hup, &shutdown_rx),
    )?;
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
        cfg,
        child_keys,
        identity,
        writeback,
        proxy.requests(),
        proxies,
        signs,
    );
    apply_budgets(&started.sup, budgets);
    let done_rx = start_watchers(cfg, &mut started, cmd_rxs, &settings, &flags);

    let first = sigs.stop.recv().unwrap_or("signal channel closed");
    let stopping = Stopping {
        sigs: &sigs.stop,
        done: &done_rx,
        shutdown: shutdown_tx,
        hurry: hurry_tx,
    };
    stop_all(cfg, first, started, stopping);
    reaper.stop();
    crate::usage::global().save();
    info!("shutdown complete");
    Ok(())
}

/// The budget days' zone and clock, and the usage counts saved by an
/// earlier run (today's included).
fn open_budget_day(cfg: &Config, zone: crate::budget::Zone) {
    crate::budget::init(&cfg.budget, zone);
    if let Err(e) = crate::usage::global().load(&cfg.cache_dir) {
        warn!("{e}; starting the usage counts from zero");
    }
}

/// The budgets of `MODEL_BUDGETS_FILE`, in force before any child runs:
/// every completion counts against them.
fn apply_budgets(sup: &Handle, budgets: crate::budget::plan::Plan) {
    if !budgets.is_empty() {
        info!("MODEL_BUDGETS_FILE: {}", budgets.summary());
    }
    sup.ask(Msg::Budgets(Arc::new(budgets)));
}

/// What the stop after the first signal (`first`) waits on and closes.
struct Stopping<'a> {
    sigs: &'a Receiver<&'static str>,
    done: &'a Receiver<()>,
    shutdown: crossbeam_channel::Sender<()>,
    hurry: crossbeam_channel::Sender<()>,
}

/// Drain the requests in flight (bounded), stop the children (bounded),
/// then everything `run` started.
fn stop_all(cfg: &Config, first: &str, started: Started, s: Stopping<'_>) {
    let grace = cfg.stop_grace;
    info!(
        "{first} received: shutting down (requests in flight get up to {:?}, then children {grace:?} to exit; a second signal skips both)",
        cfg.shutdown_drain
    );
    started.sup.ask(Msg::BeginShutdown);
    let hurried = drain(started.sup.dispatch(), s.sigs, cfg.shutdown_drain);
    started.sup.dispatch().shut();
    drop(s.shutdown);
    // A second signal during the drain skips the children's grace too.
    let hurry = (!hurried).then_some(s.hurry);
    wait_for_watchers(s.done, s.sigs, grace, hurry);
    shut_down(started);
}

fn make_log_dir(cfg: &Config) -> Result<(), Fatal> {
    std::fs::create_dir_all(&cfg.log_dir).map_err(|e| Fatal {
        message: format!(
            "cannot create {}: {e}; set COORDINATOR_LOG_DIR to a writable directory",
            cfg.log_dir.display()
        ),
        code: 1,
    })
}

/// One watcher per slot. Returns the receiver that disconnects once every
/// watcher has ended.
fn start_watchers(
    cfg: &Config,
    started: &mut Started,
    cmd_rxs: Vec<Receiver<Cmd>>,
    settings: &watcher::Settings,
    flags: &watcher::Signals,
) -> Receiver<()> {
    let (done_tx, done_rx) = crossbeam_channel::bounded::<()>(0);
    for (slot, cmds) in cmd_rxs.into_iter().enumerate() {
        let sup = started.sup.clone();
        let ports = cfg.ports.slot(slot);
        let (s, f, d) = (settings.clone(), flags.clone(), done_tx.clone());
        match watcher::spawn(slot, ports, sup, cmds, s, f, d) {
            Ok(h) => started.threads.push(h),
            Err(e) => error!("cannot start the watcher of slot {slot}: {e}"),
        }
    }
    done_rx
}

/// Start everything but the watchers: the supervisor (and the leaser),
/// the observers, the HTTP front door (before any child, so a taken port
/// fails fast), the admin socket and the reload thread. Returns them and
/// each slot's command receiver.
fn start(
    cfg: &Config,
    hydrated: &Hydrated,
    proxy: &Arc<proxy::Proxy>,
    writeback: &WriteBack,
    proxies: &Arc<outbound::Proxies>,
    notifier: Option<crate::notify::Notifier>,
    (hup, shutdown): (&Receiver<()>, &Receiver<()>),
) -> Result<(Started, Vec<Receiver<Cmd>>), Fatal> {
    let admin_key = admin_key(cfg)?;
    // Before any watcher: with leases on, no profile runs unleased.
    let leases = prepare_leases(cfg)?;
    let (sup, sup_thread, stop_sup, cmd_rxs) = start_supervisor(cfg, hydrated, proxy, &leases)?;
    let leaser = leases.map(|l| start_leaser(l, &sup)).transpose()?;
    let thread = |what: &str, r: std::io::Result<JoinHandle<()>>| {
        r.map_err(|e| format!("cannot start the {what}: {e}"))
            .map_err(fatal(1))
    };
    let client_watch = thread(
        "client watch",
        proxy.requests().watch_clients(shutdown.clone()),
    )?;
    let observer = crate::console::spawn(sup.clone(), cfg.notify.no_ready, shutdown.clone());
    let observer = thread("console observer", observer)?;
    let reloader = Arc::new(Reloader::new(
        cfg,
        sup.clone(),
        proxy.clone(),
        writeback.clone(),
        proxies.clone(),
    ));
    let fleet = Arc::new(Fleet {
        pool: sup.clone(),
        log_dir: cfg.log_dir.clone(),
        reloader: reloader.clone(),
        writeback: writeback.clone(),
    });
    let app = server::App {
        pool: sup.clone(),
        proxy: proxy.clone(),
        fleet: fleet.clone(),
        admin_key,
        metrics_open: cfg.metrics_open,
    };
    let conn = server::ConnSettings {
        header_timeout: cfg.header_timeout,
        keepalive_timeout: cfg.keepalive_timeout,
        max_connections: cfg.max_connections,
    };
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
    let reloads = reload::spawn(reloader, hup.clone(), cfg.reload_interval, shutdown.clone());
    let reloads = thread("reload thread", reloads)?;
    let started = Started {
        sup,
        sup_thread,
        stop_sup,
        leaser,
        notifier,
        http,
        admin,
        threads: vec![client_watch, observer, reloads],
    };
    Ok((started, cmd_rxs))
}

/// After the watchers: give the leases back so other replicas take the
/// profiles over at once, save the book, stop the rest.
fn shut_down(s: Started) {
    if let Some(l) = s.leaser {
        l.stop();
    }
    if let Some(n) = s.notifier {
        n.stop();
    }
    s.sup.ask(Msg::Save);
    drop(s.stop_sup);
    for w in s.threads.into_iter().chain([s.sup_thread]) {
        if w.is_finished() {
            let _ = w.join();
        }
    }
    s.admin.stop();
    s.http.stop(Instant::now() + Duration::from_millis(150));
}

/// Log what the keep-alive clock does, when it is on; the supervisor
/// looks. Returns how long a turn may take to make way before it is
/// dropped.
fn note_keepalive(cfg: &Config) -> Duration {
    let k = cfg.keepalive;
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
    cfg.request_timeout + cfg.stop_grace * 2 + Duration::from_secs(60)
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

/// The leases' store, proven, and the channel the supervisor gives leases
/// back on: ready before the supervisor starts.
struct LeasePrep {
    store: crate::hydrate::cond::Store,
    replica: String,
    timing: fleet::lease::Timing,
    stats: Arc<fleet::Stats>,
    tx: crossbeam_channel::Sender<fleet::Release>,
    rx: Receiver<fleet::Release>,
}

/// With `PROFILE_LEASES=s3`: prove the store honours conditional writes.
fn prepare_leases(cfg: &Config) -> Result<Option<LeasePrep>, Fatal> {
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
    let (tx, rx) = crossbeam_channel::unbounded();
    Ok(Some(LeasePrep {
        store,
        replica: replica.clone(),
        timing,
        stats: Arc::new(fleet::Stats::new(replica)),
        tx,
        rx,
    }))
}

/// Start the leaser: from now on only profiles it grants run.
fn start_leaser(l: LeasePrep, sup: &Handle) -> Result<LeaserHandle, Fatal> {
    let leaser = fleet::leaser::Leaser::new(l.store, l.replica, l.timing, sup.clone(), l.stats);
    let (stop, stop_rx) = crossbeam_channel::bounded::<()>(0);
    let (done_tx, done) = crossbeam_channel::bounded::<()>(0);
    let thread = fleet::leaser::spawn(leaser, l.rx, stop_rx, done_tx)
        .map_err(|e| format!("cannot start the leaser thread: {e}"))
        .map_err(fatal(1))?;
    Ok(LeaserHandle { stop, done, thread })
}

type SupParts = (
    Handle,
    JoinHandle<()>,
    crossbeam_channel::Sender<()>,
    Vec<Receiver<Cmd>>,
);

/// The profile book saved by an earlier run (a corrupt or unreadable file
/// is reported and ignored), with today's served completions from the
/// usage counts: the accounts' budgets go on from there.
fn open_book(cfg: &Config, hydrated: &Hydrated, store: &std::path::Path, now: SystemTime) -> Book {
    let saved = book::store::load(store).unwrap_or_else(|e| {
        warn!("{e}; starting with no saved profile state");
        Default::default()
    });
    let names: Vec<&str> = hydrated.profiles.iter().map(|p| p.name.as_str()).collect();
    let mut book = Book::new(names, saved, cfg.book);
    let today = crate::usage::global().ledger().today;
    for (profile, models) in &today.profiles {
        let served = models.iter().map(|(m, d)| (m.clone(), d.ok)).collect();
        book.budget_mut().learn(today.day, profile, &served, now);
    }
    let cooling = book
        .status(now)
        .iter()
        .filter(|s| s.cooling_until_unix_ms.is_some())
        .count();
    if cooling > 0 {
        info!("{cooling} profiles are still cooling down from an earlier run");
    }
    book
}

/// The supervisor over the hydrated profiles, with the profile book saved
/// by an earlier run (a corrupt or unreadable file is reported and
/// ignored), wired to the dispatcher, the proxy's verdicts and the slots.
fn start_supervisor(
    cfg: &Config,
    hydrated: &Hydrated,
    proxy: &proxy::Proxy,
    leases: &Option<LeasePrep>,
) -> Result<SupParts, Fatal> {
    let limits = dispatch::Limits {
        per_child: cfg.max_inflight_per_child,
        max_queue: cfg.max_queue,
        queue_timeout: cfg.queue_timeout,
        demand_window: cfg.demand_window,
    };
    let profile_count = hydrated.profiles.len();
    let store = book::store::path_in(&cfg.cache_dir);
    let now = SystemTime::now();
    let book = open_book(cfg, hydrated, &store, now);
    let settings = supervisor::Settings {
        keepalive: cfg.keepalive,
        stuck: note_keepalive(cfg),
        leasing: leases.is_some(),
        budget_alert_percent: cfg.budget.fleet_alert_percent,
    };
    let state = supervisor::core::State::new(
        hydrated.profiles.clone(),
        cfg.pool_size,
        cfg.ports,
        book,
        settings,
        now,
    );
    let size = state.slots.len();
    let dispatch = dispatch::Dispatch::new(size, limits);
    let (outcomes_tx, outcomes) = crossbeam_channel::unbounded::<verdict::Outcome>();
    proxy.report_outcomes(outcomes_tx);
    let (starved_tx, starved) = crossbeam_channel::unbounded::<String>();
    dispatch.on_starved(starved_tx);
    let (cmds, cmd_rxs): (Vec<_>, Vec<_>) =
        (0..size).map(|_| crossbeam_channel::unbounded()).unzip();
    let (stop_tx, stop) = crossbeam_channel::bounded::<()>(0);
    let wiring = supervisor::Wiring {
        dispatch,
        cmds,
        store: Some(store),
        leases: leases.as_ref().map(|l| (l.tx.clone(), l.stats.clone())),
        outcomes,
        starved,
        stop,
    };
    let (sup, thread) = supervisor::spawn(state, wiring)
        .map_err(|e| format!("cannot start the supervisor thread: {e}"))
        .map_err(fatal(1))?;
    // A profile that needed a login and came back with new content runs.
    sup.tell(Msg::ContentSeen(crate::hydrate::login_facts(
        &hydrated.profiles,
    )));
    info!(
        "{size} slots for {profile_count} profiles ({} queued); child command: {}",
        profile_count - size,
        cfg.child_command.join(" ")
    );
    Ok((sup, thread, stop_tx, cmd_rxs))
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

/// The drain before the children stop: `/ready` already says 503, so load
/// balancers stop sending; what is in flight or queued is served until the
/// dispatcher is idle or `bound` passes. True when a second signal cut it
/// short (the children's grace is then skipped too).
fn drain(d: &dispatch::Dispatch, sigs: &Receiver<&'static str>, bound: Duration) -> bool {
    let deadline = Instant::now() + bound;
    let started = Instant::now();
    loop {
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
