//! Prometheus metrics, served at `GET /metrics` in the text exposition
//! format (OpenMetrics, via `prometheus-client`, the Prometheus project's
//! own Rust client).
//!
//! Two kinds of figures:
//! - events (starts, exits, evictions, requests, empty answers, queue waits,
//!   hydrations) are counted where they happen, through the functions below,
//!   into one process-wide set of families (`global()`): these are
//!   append-only counters and histograms with their own atomics, so a
//!   global is the honest shape, and no thread has to pass them around;
//! - states (slots by state, profiles by state, queue length, in-flight per
//!   slot, cooldown left per profile) are not kept here at all: `render` is
//!   given the current snapshot and sets them at scrape time, so they can
//!   never disagree with `/ready`.
//!
//! Labels stay low-cardinality: slot index, profile name, reason, status
//! class, outcome. Never a request id, a key or a message text.

use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

type Labels = Vec<(&'static str, String)>;

pub struct Metrics {
    registry: Mutex<Registry>,
    child_starts: Family<Labels, Counter>,
    child_exits: Family<Labels, Counter>,
    evictions: Family<Labels, Counter>,
    child_ready_seconds: Histogram,
    requests: Family<Labels, Counter>,
    request_seconds: Histogram,
    ttfb_seconds: Histogram,
    queue_wait_seconds: Histogram,
    empty_answers: Family<Labels, Counter>,
    lease_events: Family<Labels, Counter>,
    leases_held: Gauge,
    writebacks: Family<Labels, Counter>,
    hydrations: Family<Labels, Counter>,
    hydration_seconds: Histogram,
    profiles_hydrated: Gauge,
    notifications: Family<Labels, Counter>,
    // Set from the usage ledger at every scrape (it survives restarts).
    usage_answers: Family<Labels, Counter>,
    usage_tokens: Family<Labels, Counter>,
    key_answers: Family<Labels, Counter>,
    key_tokens: Family<Labels, Counter>,
    key_today: Family<Labels, Gauge>,
    key_limit: Family<Labels, Gauge>,
    key_refusals: Family<Labels, Counter>,
    // Set from the snapshot at every scrape.
    slots: Family<Labels, Gauge>,
    profiles: Family<Labels, Gauge>,
    queue_length: Gauge,
    in_flight: Family<Labels, Gauge>,
    cooldown_left: Family<Labels, Gauge>,
    model_cooldown_left: Family<Labels, Gauge>,
    child_rss: Family<Labels, Gauge>,
    budget: BudgetGauges,
}

/// The account budgets' gauges (`MODEL_BUDGETS_FILE`), set from the
/// snapshot at every scrape; `model` is the file's line (`gemini-2.5-pro*`).
#[derive(Default)]
struct BudgetGauges {
    used: Family<Labels, Gauge>,
    limit: Family<Labels, Gauge>,
    resets_at: Family<Labels, Gauge>,
    fleet: Family<Labels, Gauge>,
    fleet_left: Family<Labels, Gauge>,
}

/// What a scrape reports as current state, taken from the live snapshot.
#[derive(Debug, Default)]
pub struct View {
    /// `(slot, state)` per slot.
    pub slots: Vec<(usize, String)>,
    /// `(profile, state)`: running, queued, cooling, needs_login or disabled.
    pub profiles: Vec<(String, &'static str)>,
    pub queue_length: usize,
    /// `(slot, in flight)`.
    pub in_flight: Vec<(usize, usize)>,
    /// `(profile, seconds left)` for cooling profiles.
    pub cooldown_left: Vec<(String, u64)>,
    /// `(profile, model, seconds left)` for models a profile cools for.
    pub model_cooldown_left: Vec<(String, String, u64)>,
    /// Profile leases held now (0 without leasing).
    pub leases_held: usize,
    /// `(slot, bytes)`: the resident memory of each running child's tree.
    pub child_rss: Vec<(usize, u64)>,
    /// Each account's budget lines (none without `MODEL_BUDGETS_FILE`).
    pub budgets: Vec<crate::budget::accounts::Line>,
    /// The fleet's budget lines.
    pub fleet_budgets: Vec<crate::budget::accounts::FleetLine>,
}

fn seconds_buckets() -> Histogram {
    // 1 ms .. about 17 min.
    Histogram::new(exponential_buckets(0.001, 2.0, 21))
}

impl Metrics {
    fn new() -> Metrics {
        let m = Metrics {
            registry: Mutex::new(Registry::with_prefix("aistudioproxy")),
            child_starts: Family::default(),
            child_exits: Family::default(),
            evictions: Family::default(),
            child_ready_seconds: seconds_buckets(),
            requests: Family::default(),
            request_seconds: seconds_buckets(),
            ttfb_seconds: seconds_buckets(),
            queue_wait_seconds: seconds_buckets(),
            empty_answers: Family::default(),
            lease_events: Family::default(),
            leases_held: Gauge::default(),
            writebacks: Family::default(),
            hydrations: Family::default(),
            hydration_seconds: seconds_buckets(),
            profiles_hydrated: Gauge::default(),
            notifications: Family::default(),
            usage_answers: Family::default(),
            usage_tokens: Family::default(),
            key_answers: Family::default(),
            key_tokens: Family::default(),
            key_today: Family::default(),
            key_limit: Family::default(),
            key_refusals: Family::default(),
            slots: Family::default(),
            profiles: Family::default(),
            queue_length: Gauge::default(),
            in_flight: Family::default(),
            cooldown_left: Family::default(),
            model_cooldown_left: Family::default(),
            child_rss: Family::default(),
            budget: BudgetGauges::default(),
        };
        let build: Family<Labels, Gauge> = Family::default();
        build
            .get_or_create(&vec![("version", env!("CARGO_PKG_VERSION").to_string())])
            .set(1);
        {
            let mut r = m.registry.lock().unwrap_or_else(|p| p.into_inner());
            r.register("build_info", "Build of the running coordinator", build);
            m.register_events(&mut r);
            register_key_budget(&mut r, &m);
            m.budget.register(&mut r);
            m.register_state(&mut r);
        }
        m
    }

    /// The counters and histograms of what happened.
    fn register_events(&self, r: &mut Registry) {
        r.register(
            "child_starts",
            "Children started, by slot",
            self.child_starts.clone(),
        );
        r.register(
            "child_exits",
            "Children ended, by slot and reason",
            self.child_exits.clone(),
        );
        r.register(
            "evictions",
            "Children evicted for failing, by slot and reason",
            self.evictions.clone(),
        );
        r.register(
            "child_ready_seconds",
            "Time from a child's start to its readiness",
            self.child_ready_seconds.clone(),
        );
        r.register(
            "requests",
            "Proxied requests by slot (none: answered by the coordinator) and status class",
            self.requests.clone(),
        );
        r.register(
            "request_duration_seconds",
            "Proxied request duration, queue wait included",
            self.request_seconds.clone(),
        );
        r.register(
            "time_to_first_byte_seconds",
            "Time from a request's arrival to the first byte of its answer",
            self.ttfb_seconds.clone(),
        );
        r.register(
            "queue_wait_seconds",
            "Time requests waited in the fleet queue for a child",
            self.queue_wait_seconds.clone(),
        );
        r.register(
            "lease_events",
            "Profile lease events (PROFILE_LEASES=s3): taken, taken_over, lost, released",
            self.lease_events.clone(),
        );
        r.register(
            "empty_answers",
            "Completions answered with no content, by profile",
            self.empty_answers.clone(),
        );
        r.register(
            "writebacks",
            "Write-backs of children's refreshed auth state, by profile and outcome",
            self.writebacks.clone(),
        );
        r.register(
            "hydrations",
            "Hydrations and reloads by kind and outcome",
            self.hydrations.clone(),
        );
        r.register(
            "hydration_duration_seconds",
            "Duration of hydrations and reloads",
            self.hydration_seconds.clone(),
        );
        r.register(
            "notifications",
            "Webhook notifications by outcome: sent, failed (after every try), failed_try, folded, dropped",
            self.notifications.clone(),
        );
    }

    /// The usage counts and the gauges of the current state.
    fn register_state(&self, r: &mut Registry) {
        r.register(
            "leases_held",
            "Profile leases this replica holds now",
            self.leases_held.clone(),
        );
        r.register(
            "profiles_hydrated",
            "Profiles in the last successful hydration",
            self.profiles_hydrated.clone(),
        );
        r.register(
            "usage_answers",
            "Completion answers by profile, model and class (kept across restarts)",
            self.usage_answers.clone(),
        );
        r.register(
            "usage_tokens",
            "Tokens the answers reported, by profile, model and kind (prompt, completion)",
            self.usage_tokens.clone(),
        );
        r.register(
            "key_answers",
            "Completion answers by API key label and class",
            self.key_answers.clone(),
        );
        r.register(
            "key_tokens",
            "Tokens the answers reported, by API key label and kind",
            self.key_tokens.clone(),
        );
        r.register("slots", "Slots by state", self.slots.clone());
        r.register(
            "child_rss_bytes",
            "Resident memory of each running child's process tree, summed over its processes",
            self.child_rss.clone(),
        );
        r.register(
            "profiles",
            "Profiles by state (running, queued, cooling, needs_login, disabled)",
            self.profiles.clone(),
        );
        r.register(
            "queue_length",
            "Requests waiting in the fleet queue",
            self.queue_length.clone(),
        );
        r.register(
            "in_flight",
            "Requests in flight per slot",
            self.in_flight.clone(),
        );
        r.register(
            "cooldown_seconds_left",
            "Seconds until a cooling profile may run again",
            self.cooldown_left.clone(),
        );
        r.register(
            "model_cooldown_seconds_left",
            "Seconds until a profile serves a model it is out of quota for again",
            self.model_cooldown_left.clone(),
        );
    }

    /// The text exposition of everything, with the state gauges set from
    /// `view`.
    pub fn render(&self, view: &View) -> String {
        // Held for the whole scrape: two scrapes must not interleave their
        // clear-and-set of the state gauges.
        let registry = self.registry.lock().unwrap_or_else(|p| p.into_inner());
        self.slots.clear();
        for state in [
            "idle", "backoff", "cooldown", "stagger", "starting", "ready", "draining", "stopping",
            "stopped",
        ] {
            self.slots
                .get_or_create(&vec![("state", state.to_string())])
                .set(0);
        }
        for (_, state) in &view.slots {
            self.slots
                .get_or_create(&vec![("state", state.clone())])
                .inc();
        }
        self.profiles.clear();
        for state in ["running", "queued", "cooling", "needs_login", "disabled"] {
            let n = view.profiles.iter().filter(|(_, s)| *s == state).count();
            self.profiles
                .get_or_create(&vec![("state", state.to_string())])
                .set(n as i64);
        }
        self.queue_length.set(view.queue_length as i64);
        self.leases_held.set(view.leases_held as i64);
        self.in_flight.clear();
        for (slot, n) in &view.in_flight {
            self.in_flight
                .get_or_create(&vec![("slot", slot.to_string())])
                .set(*n as i64);
        }
        self.model_cooldown_left.clear();
        for (profile, model, left) in &view.model_cooldown_left {
            self.model_cooldown_left
                .get_or_create(&vec![
                    ("profile", profile.clone()),
                    ("model", model.clone()),
                ])
                .set(*left as i64);
        }
        self.child_rss.clear();
        for (slot, bytes) in &view.child_rss {
            self.child_rss
                .get_or_create(&vec![("slot", slot.to_string())])
                .set(*bytes as i64);
        }
        self.cooldown_left.clear();
        for (profile, left) in &view.cooldown_left {
            self.cooldown_left
                .get_or_create(&vec![("profile", profile.clone())])
                .set(*left as i64);
        }
        self.set_usage(&crate::usage::global().ledger());
        self.budget.set(&view.budgets, &view.fleet_budgets);
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &registry);
        out
    }
}

impl Metrics {
    /// The usage families from the ledger: classes that happened, and
    /// always `ok`, so a row's series do not come and go.
    fn set_usage(&self, l: &crate::usage::Ledger) {
        use crate::usage::{Class, Tally};
        fn fill(
            answers: &Family<Labels, Counter>,
            tokens: &Family<Labels, Counter>,
            base: Labels,
            t: &Tally,
        ) {
            for c in Class::ALL {
                let n = t.of_class(c);
                if n > 0 || c == Class::Ok {
                    let mut l = base.clone();
                    l.push(("class", c.name().to_string()));
                    answers.get_or_create(&l).inc_by(n);
                }
            }
            for (kind, n) in [
                ("prompt", t.prompt_tokens),
                ("completion", t.completion_tokens),
            ] {
                let mut l = base.clone();
                l.push(("kind", kind.to_string()));
                tokens.get_or_create(&l).inc_by(n);
            }
        }
        for f in [
            &self.usage_answers,
            &self.usage_tokens,
            &self.key_answers,
            &self.key_tokens,
        ] {
            f.clear();
        }
        for (profile, models) in &l.profiles {
            for (model, row) in models {
                let base = vec![("profile", profile.clone()), ("model", model.clone())];
                fill(&self.usage_answers, &self.usage_tokens, base, &row.total);
            }
        }
        for (key, row) in &l.keys {
            let base = vec![("key", key.clone())];
            fill(&self.key_answers, &self.key_tokens, base, &row.total);
        }
        self.key_today.clear();
        self.key_limit.clear();
        let mut today = l.today.clone();
        today.roll(crate::budget::now_ms());
        for (key, day) in &today.keys {
            for (kind, n) in [("requests", day.requests), ("tokens", day.tokens)] {
                let labels = vec![("key", key.clone()), ("kind", kind.to_string())];
                self.key_today.get_or_create(&labels).set(n as i64);
            }
        }
        for (key, limits) in crate::budget::limits::published() {
            for (name, v) in [
                ("rpm", limits.rpm),
                ("rpd", limits.rpd),
                ("tpd", limits.tpd),
            ] {
                if let Some(v) = v {
                    let labels = vec![("key", key.clone()), ("limit", name.to_string())];
                    self.key_limit.get_or_create(&labels).set(v as i64);
                }
            }
        }
    }
}

/// `text` (a rendered scrape) with the per-key usage samples of every key
/// but `label` left out: what a key holder may see.
pub fn only_key_rows(text: &str, label: &str) -> String {
    let own = format!("key=\"{label}\"");
    let mut out = String::with_capacity(text.len());
    for line in text.lines() {
        let per_key = line.starts_with("aistudioproxy_key_");
        if !per_key || line.contains(&own) {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

impl BudgetGauges {
    fn register(&self, r: &mut Registry) {
        r.register(
            "budget_used",
            "Completions each account served today of a MODEL_BUDGETS_FILE line, by profile and model line",
            self.used.clone(),
        );
        r.register(
            "budget_limit",
            "Each account's daily budget of a model line (0: off for its tier), by profile and model line",
            self.limit.clone(),
        );
        r.register(
            "budget_resets_at_seconds",
            "Unix time each account's budget of a model line is whole again (midnight in BUDGET_TIMEZONE)",
            self.resets_at.clone(),
        );
        r.register(
            "fleet_budget",
            "The fleet's daily budget of a model line: summed over the placed accounts whose tier gives it one",
            self.fleet.clone(),
        );
        r.register(
            "fleet_budget_left",
            "What the fleet has left today of a model line's budget, summed over its accounts",
            self.fleet_left.clone(),
        );
    }

    /// Every series from the snapshot's lines (gone lines disappear).
    fn set(
        &self,
        lines: &[crate::budget::accounts::Line],
        fleet: &[crate::budget::accounts::FleetLine],
    ) {
        for f in [
            &self.used,
            &self.limit,
            &self.resets_at,
            &self.fleet,
            &self.fleet_left,
        ] {
            f.clear();
        }
        for l in lines {
            let labels = vec![("profile", l.profile.clone()), ("model", l.model.clone())];
            self.used.get_or_create(&labels).set(l.used as i64);
            self.limit
                .get_or_create(&labels)
                .set(l.budget.unwrap_or(0) as i64);
            self.resets_at.get_or_create(&labels).set(l.resets_at_unix);
        }
        for f in fleet {
            let labels = vec![("model", f.model.clone())];
            self.fleet.get_or_create(&labels).set(f.budget as i64);
            self.fleet_left.get_or_create(&labels).set(f.left as i64);
        }
    }
}

/// The per-key budget families (see `budget`, `proxy::limits`).
fn register_key_budget(r: &mut Registry, m: &Metrics) {
    r.register(
        "key_today",
        "Each API key's use of the current budget day (BUDGET_TIMEZONE), by kind: requests, tokens",
        m.key_today.clone(),
    );
    r.register(
        "key_limit",
        "Each API key's limits from the key file, by limit: rpm, rpd, tpd",
        m.key_limit.clone(),
    );
    r.register(
        "key_refusals",
        "Completions refused by an API key's own limits, by key and code",
        m.key_refusals.clone(),
    );
}

/// A completion refused by its key's own limits (see `proxy::limits`).
pub fn key_refused(label: &str, code: &'static str) {
    global()
        .key_refusals
        .get_or_create(&vec![
            ("key", label.to_string()),
            ("code", code.to_string()),
        ])
        .inc();
}

/// A webhook notification's outcome (see `notify`).
pub fn notification(outcome: &'static str) {
    global()
        .notifications
        .get_or_create(&vec![("outcome", outcome.to_string())])
        .inc();
}

/// The process-wide metrics.
pub fn global() -> &'static Metrics {
    static M: OnceLock<Metrics> = OnceLock::new();
    M.get_or_init(Metrics::new)
}

pub fn child_started(slot: usize) {
    global()
        .child_starts
        .get_or_create(&vec![("slot", slot.to_string())])
        .inc();
}

/// A child of `slot` ended; `reason` is a short fixed word (exited,
/// ready_timeout, evicted, exhausted, shutdown, ...).
pub fn child_ended(slot: usize, reason: &'static str) {
    global()
        .child_exits
        .get_or_create(&slot_and_reason(slot, reason))
        .inc();
}

pub fn evicted(slot: usize, reason: &'static str) {
    global()
        .evictions
        .get_or_create(&slot_and_reason(slot, reason))
        .inc();
}

fn slot_and_reason(slot: usize, reason: &'static str) -> Labels {
    vec![("slot", slot.to_string()), ("reason", reason.to_string())]
}

pub fn child_ready(after: Duration) {
    global().child_ready_seconds.observe(after.as_secs_f64());
}

/// One proxied request ended with `status`, served by `slot` (None: the
/// coordinator answered itself); `took` when its duration is known.
pub fn request_done(
    slot: Option<usize>,
    status: u16,
    took: Option<Duration>,
    first_byte: Option<Duration>,
) {
    let m = global();
    let class = format!("{}xx", status / 100);
    let slot = slot.map(|s| s.to_string()).unwrap_or_else(|| "none".into());
    m.requests
        .get_or_create(&vec![("slot", slot), ("class", class)])
        .inc();
    if let Some(t) = took {
        m.request_seconds.observe(t.as_secs_f64());
    }
    if let Some(t) = first_byte {
        m.ttfb_seconds.observe(t.as_secs_f64());
    }
}

pub fn queue_waited(d: Duration) {
    global().queue_wait_seconds.observe(d.as_secs_f64());
}

/// A profile lease was taken, taken over, lost or released.
pub fn lease_event(event: &'static str) {
    global()
        .lease_events
        .get_or_create(&vec![("event", event.to_string())])
        .inc();
}

pub fn empty_answer(profile: &str) {
    global()
        .empty_answers
        .get_or_create(&vec![("profile", profile.to_string())])
        .inc();
}

pub fn writeback(profile: &str, outcome: &crate::writeback::Outcome) {
    global()
        .writebacks
        .get_or_create(&vec![
            ("profile", profile.to_string()),
            ("outcome", outcome.kind().to_string()),
        ])
        .inc();
}

/// A hydration (`kind`: start or reload) ended with `outcome` (ok or
/// failed) after `took`; `profiles` is set when it succeeded.
pub fn hydrated(
    kind: &'static str,
    outcome: &'static str,
    took: Duration,
    profiles: Option<usize>,
) {
    let m = global();
    m.hydrations
        .get_or_create(&vec![
            ("kind", kind.to_string()),
            ("outcome", outcome.to_string()),
        ])
        .inc();
    m.hydration_seconds.observe(took.as_secs_f64());
    if let Some(n) = profiles {
        m.profiles_hydrated.set(n as i64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn render_has_counters_histograms_and_the_view() {
        child_started(0);
        child_ended(0, "exited");
        request_done(
            Some(1),
            200,
            Some(Duration::from_millis(5)),
            Some(Duration::from_millis(2)),
        );
        let text = global().render(&View {
            slots: vec![(0, "ready".into()), (1, "backoff".into())],
            profiles: vec![("a".into(), "running"), ("b".into(), "cooling")],
            queue_length: 3,
            in_flight: vec![(0, 1)],
            cooldown_left: vec![("b".into(), 42)],
            model_cooldown_left: vec![("a".into(), "gemini-2.5-pro".into(), 7)],
            leases_held: 2,
            child_rss: vec![(0, 812 << 20)],
            budgets: vec![crate::budget::accounts::Line {
                profile: "a".into(),
                tier: "free".into(),
                model: "gemini-2.5-pro*".into(),
                used: 4,
                budget: Some(20),
                resets_at_unix: 1_796_716_800,
            }],
            fleet_budgets: vec![crate::budget::accounts::FleetLine {
                model: "gemini-2.5-pro*".into(),
                accounts: 1,
                budget: 20,
                used: 4,
                left: 16,
                resets_at_unix: 1_796_716_800,
            }],
        });
        for needle in [
            "aistudioproxy_child_starts_total{slot=\"0\"}",
            "aistudioproxy_child_exits_total{slot=\"0\",reason=\"exited\"}",
            "aistudioproxy_requests_total{slot=\"1\",class=\"2xx\"}",
            "aistudioproxy_slots{state=\"ready\"} 1",
            "aistudioproxy_slots{state=\"starting\"} 0",
            "aistudioproxy_profiles{state=\"cooling\"} 1",
            "aistudioproxy_queue_length 3",
            "aistudioproxy_leases_held 2",
            "aistudioproxy_cooldown_seconds_left{profile=\"b\"} 42",
            "aistudioproxy_model_cooldown_seconds_left{profile=\"a\",model=\"gemini-2.5-pro\"} 7",
            "aistudioproxy_child_rss_bytes{slot=\"0\"} 851443712",
            "aistudioproxy_budget_used{profile=\"a\",model=\"gemini-2.5-pro*\"} 4",
            "aistudioproxy_budget_limit{profile=\"a\",model=\"gemini-2.5-pro*\"} 20",
            "aistudioproxy_budget_resets_at_seconds{profile=\"a\",model=\"gemini-2.5-pro*\"} 1796716800",
            "aistudioproxy_fleet_budget{model=\"gemini-2.5-pro*\"} 20",
            "aistudioproxy_fleet_budget_left{model=\"gemini-2.5-pro*\"} 16",
            "aistudioproxy_slots{state=\"stagger\"} 0",
            "aistudioproxy_build_info{version=",
            "aistudioproxy_request_duration_seconds_bucket",
            "# EOF",
        ] {
            assert!(text.contains(needle), "{needle} missing from\n{text}");
        }
    }
}
