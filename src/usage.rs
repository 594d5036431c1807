//! The usage ledger: who used what. Per profile and model, and per API key
//! (by its label, never the key), it counts the answers children gave by
//! class (ok, client error, child error, empty, exhausted, request error)
//! and the tokens those answers reported, as totals and as a recent window
//! of per-minute buckets (the last hour); fleet-wide it keeps the last hour
//! of answers and latency per minute for the status page's charts.
//!
//! An answer is one child's attempt at a completion: a request retried on a
//! second child counts one answer on each. Only chat completions are
//! counted. Models are the ones clients name, so they are cleaned and
//! capped ([`MAX_MODELS`]; later ones count as `other`).
//!
//! One process-wide ledger (`global()`), like the metrics: the HTTP workers
//! record into it through the functions below, each a map update under one
//! mutex that is never held across I/O (saving copies the state first). The
//! console thread saves it to `AUTH_PROFILE_CACHE_DIR/usage-state.json`
//! (0600, atomic, via `private`) every few seconds when it changed, and at
//! shutdown; it is read once at start, so counts survive restarts.

use std::collections::{BTreeMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::proxy::usage::Tokens;
use crate::proxy::verdict::Verdict;

pub const FILE_NAME: &str = "usage-state.json";
/// Distinct model names kept; later ones count as `other`.
pub const MAX_MODELS: usize = 32;
/// Longest model name or key label kept.
const MAX_NAME: usize = 64;
/// Minutes in the recent window.
pub const WINDOW_MINUTES: u64 = 60;

/// What an answer was, for counting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    Ok,
    ClientError,
    ChildError,
    Empty,
    Exhausted,
    RequestError,
}

impl Class {
    pub fn of(v: &Verdict) -> Class {
        match v {
            Verdict::Ok => Class::Ok,
            Verdict::ClientError { .. } => Class::ClientError,
            Verdict::EmptyAnswer(_) => Class::Empty,
            Verdict::ChildFault(_) | Verdict::Counted5xx { .. } | Verdict::ErrorText => {
                Class::ChildError
            }
            Verdict::RequestProblem { .. } => Class::RequestError,
            // Taken back because its account ran out: served elsewhere.
            Verdict::Exhausted { .. } | Verdict::Reclaimed => Class::Exhausted,
        }
    }

    pub const ALL: [Class; 6] = [
        Class::Ok,
        Class::ClientError,
        Class::ChildError,
        Class::Empty,
        Class::Exhausted,
        Class::RequestError,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Class::Ok => "ok",
            Class::ClientError => "client_error",
            Class::ChildError => "child_error",
            Class::Empty => "empty",
            Class::Exhausted => "exhausted",
            Class::RequestError => "request_error",
        }
    }
}

/// Whose request an answer served: the API key's label (None without a
/// key file) and the model asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    pub key: Option<String>,
    pub model: String,
}

impl Account {
    pub fn new(key: Option<String>, model: Option<&str>) -> Account {
        Account {
            key,
            model: clean(model.unwrap_or("")).unwrap_or_else(|| "unknown".into()),
        }
    }
}

/// `s` made safe to show and to use as a label: printable ASCII without
/// quotes or backslashes, at most `MAX_NAME` bytes; None when nothing is left.
pub fn clean(s: &str) -> Option<String> {
    let out: String = s
        .trim()
        .chars()
        .filter(|c| c.is_ascii_graphic() || *c == ' ')
        .filter(|c| !matches!(c, '"' | '\\' | '<' | '>' | '&' | '\''))
        .take(MAX_NAME)
        .collect();
    let out = out.trim().to_string();
    (!out.is_empty()).then_some(out)
}

/// Counts of one row (a profile and model, or a key).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tally {
    pub answers: u64,
    pub ok: u64,
    pub client_error: u64,
    pub child_error: u64,
    pub empty: u64,
    pub exhausted: u64,
    pub request_error: u64,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub total_tokens: u64,
}

impl Tally {
    fn count(&mut self, c: Class) {
        self.answers += 1;
        *match c {
            Class::Ok => &mut self.ok,
            Class::ClientError => &mut self.client_error,
            Class::ChildError => &mut self.child_error,
            Class::Empty => &mut self.empty,
            Class::Exhausted => &mut self.exhausted,
            Class::RequestError => &mut self.request_error,
        } += 1;
    }

    fn add_tokens(&mut self, t: Tokens) {
        self.prompt_tokens += t.prompt;
        self.completion_tokens += t.completion;
        self.total_tokens += t.total;
    }

    pub fn of_class(&self, c: Class) -> u64 {
        match c {
            Class::Ok => self.ok,
            Class::ClientError => self.client_error,
            Class::ChildError => self.child_error,
            Class::Empty => self.empty,
            Class::Exhausted => self.exhausted,
            Class::RequestError => self.request_error,
        }
    }
}

/// One minute of a row's recent window.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Minute {
    /// Minutes since the Unix epoch.
    pub minute: u64,
    pub answers: u64,
    pub tokens: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Row {
    pub total: Tally,
    #[serde(default)]
    pub recent: VecDeque<Minute>,
    #[serde(default)]
    pub last_unix_ms: u64,
}

impl Row {
    fn minute(&mut self, now_ms: u64) -> &mut Minute {
        let m = now_ms / 60_000;
        if self.recent.back().is_none_or(|b| b.minute != m) {
            self.recent.push_back(Minute {
                minute: m,
                ..Minute::default()
            });
        }
        while self
            .recent
            .front()
            .is_some_and(|f| f.minute + WINDOW_MINUTES <= m)
        {
            self.recent.pop_front();
        }
        self.recent.back_mut().expect("pushed above")
    }

    /// Answers and tokens of the last hour before `now_ms`.
    pub fn last_hour(&self, now_ms: u64) -> (u64, u64) {
        let m = now_ms / 60_000;
        self.recent
            .iter()
            .filter(|b| b.minute + WINDOW_MINUTES > m)
            .fold((0, 0), |(a, t), b| (a + b.answers, t + b.tokens))
    }
}

/// One minute of the whole fleet, for the charts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FleetMinute {
    pub minute: u64,
    pub answers: u64,
    #[serde(default)]
    pub ok: u64,
    pub errors: u64,
    /// Sum and most of the durations of ok answers, in ms.
    pub ok_ms_sum: u64,
    pub ok_ms_max: u64,
    pub tokens: u64,
}

/// Everything counted; what is saved.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ledger {
    /// profile -> model -> row.
    pub profiles: BTreeMap<String, BTreeMap<String, Row>>,
    /// key label -> row.
    pub keys: BTreeMap<String, Row>,
    pub fleet: VecDeque<FleetMinute>,
    /// The budget day's counts (see `budget::today`).
    #[serde(default)]
    pub today: crate::budget::today::Today,
}

impl Ledger {
    /// The model's row name: itself while fewer than `MAX_MODELS` are
    /// known, else `other`.
    fn model_name(&self, model: &str) -> String {
        if self.profiles.values().any(|m| m.contains_key(model)) {
            return model.to_string();
        }
        let count = {
            let mut all: Vec<&String> = self.profiles.values().flat_map(|m| m.keys()).collect();
            all.sort();
            all.dedup();
            all.len()
        };
        if count < MAX_MODELS {
            model.to_string()
        } else {
            "other".to_string()
        }
    }

    fn fleet_minute(&mut self, now_ms: u64) -> &mut FleetMinute {
        let m = now_ms / 60_000;
        if self.fleet.back().is_none_or(|b| b.minute != m) {
            self.fleet.push_back(FleetMinute {
                minute: m,
                ..FleetMinute::default()
            });
        }
        while self
            .fleet
            .front()
            .is_some_and(|f| f.minute + WINDOW_MINUTES <= m)
        {
            self.fleet.pop_front();
        }
        self.fleet.back_mut().expect("pushed above")
    }

    fn rows(&mut self, profile: &str, account: &Account) -> Vec<&mut Row> {
        let model = self.model_name(&account.model);
        let mut rows = vec![];
        let by_model = self.profiles.entry(profile.to_string()).or_default();
        rows.push(by_model.entry(model).or_default());
        if let Some(k) = &account.key {
            rows.push(self.keys.entry(k.clone()).or_default());
        }
        rows
    }

    /// One answer of `class` by `profile`, `took` after the request came.
    pub fn answered(
        &mut self,
        profile: &str,
        account: &Account,
        class: Class,
        took: Duration,
        now_ms: u64,
    ) {
        for row in self.rows(profile, account) {
            row.total.count(class);
            row.minute(now_ms).answers += 1;
            row.last_unix_ms = now_ms;
        }
        let f = self.fleet_minute(now_ms);
        f.answers += 1;
        if class == Class::Ok {
            f.ok += 1;
            let ms = took.as_millis() as u64;
            f.ok_ms_sum += ms;
            f.ok_ms_max = f.ok_ms_max.max(ms);
        } else if class != Class::ClientError {
            f.errors += 1;
        }
    }

    /// The tokens one answer of `profile` reported.
    pub fn tokens(&mut self, profile: &str, account: &Account, t: Tokens, now_ms: u64) {
        for row in self.rows(profile, account) {
            row.total.add_tokens(t);
            row.minute(now_ms).tokens += t.total;
        }
        self.fleet_minute(now_ms).tokens += t.total;
    }

    /// Per-profile totals over every model.
    pub fn profile_total(&self, profile: &str) -> Tally {
        let mut t = Tally::default();
        for r in self
            .profiles
            .get(profile)
            .into_iter()
            .flat_map(|m| m.values())
        {
            add(&mut t, &r.total);
        }
        t
    }
}

fn add(a: &mut Tally, b: &Tally) {
    a.answers += b.answers;
    a.ok += b.ok;
    a.client_error += b.client_error;
    a.child_error += b.child_error;
    a.empty += b.empty;
    a.exhausted += b.exhausted;
    a.request_error += b.request_error;
    a.prompt_tokens += b.prompt_tokens;
    a.completion_tokens += b.completion_tokens;
    a.total_tokens += b.total_tokens;
}

/// What `ctl usage` and the status page show: per profile (with its
/// models) and per key, the totals and the last hour; the fleet's minutes.
pub fn view(l: &Ledger, now_ms: u64) -> serde_json::Value {
    use serde_json::json;
    let hour = |r: &Row| {
        let (answers, tokens) = r.last_hour(now_ms);
        json!({"answers": answers, "tokens": tokens})
    };
    let profiles: Vec<_> = l
        .profiles
        .iter()
        .map(|(p, models)| {
            let (mut a, mut t) = (0, 0);
            for r in models.values() {
                let (x, y) = r.last_hour(now_ms);
                a += x;
                t += y;
            }
            json!({
                "profile": p,
                "total": l.profile_total(p),
                "last_hour": {"answers": a, "tokens": t},
                "models": models.iter().map(|(m, r)| json!({
                    "model": m, "total": r.total, "last_hour": hour(r), "last_unix_ms": r.last_unix_ms,
                })).collect::<Vec<_>>(),
            })
        })
        .collect();
    let keys: Vec<_> = l
        .keys
        .iter()
        .map(|(k, r)| json!({"key": k, "total": r.total, "last_hour": hour(r), "last_unix_ms": r.last_unix_ms}))
        .collect();
    json!({
        "profiles": profiles,
        "keys": keys,
        "fleet": l.fleet,
        "window_minutes": WINDOW_MINUTES,
        "today": l.today.view(&crate::budget::limits::published(), crate::budget::now_ms()),
    })
}

pub use crate::civil::now_ms;

/// The process-wide ledger and where it is saved.
pub struct Usage {
    ledger: Mutex<Ledger>,
    /// Changed since the last save.
    dirty: std::sync::atomic::AtomicBool,
    /// Serialises saves; set once at start.
    path: Mutex<Option<PathBuf>>,
}

pub fn global() -> &'static Usage {
    static U: OnceLock<Usage> = OnceLock::new();
    U.get_or_init(|| Usage {
        ledger: Mutex::new(Ledger::default()),
        dirty: Default::default(),
        path: Mutex::new(None),
    })
}

#[derive(Serialize, Deserialize)]
struct OnDisk {
    version: u32,
    #[serde(flatten)]
    ledger: Ledger,
}

impl Usage {
    fn lock(&self) -> MutexGuard<'_, Ledger> {
        // Each update is a few additions; a poisoned ledger is still coherent.
        self.ledger.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A copy of everything counted.
    pub fn ledger(&self) -> Ledger {
        self.lock().clone()
    }

    /// Read the saved ledger from `cache_dir` and save there from now on.
    /// An unreadable file is reported and ignored, never fatal.
    pub fn load(&self, cache_dir: &Path) -> Result<(), String> {
        let path = cache_dir.join(FILE_NAME);
        *self.path.lock().unwrap_or_else(|p| p.into_inner()) = Some(path.clone());
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
        };
        let d: OnDisk = serde_json::from_slice(&bytes)
            .map_err(|e| format!("{} is not valid usage state: {e}", path.display()))?;
        if d.version != 1 {
            return Err(format!(
                "{} has unknown version {}",
                path.display(),
                d.version
            ));
        }
        let mut ledger = d.ledger;
        ledger.today.recheck(crate::budget::now_ms());
        *self.lock() = ledger;
        Ok(())
    }

    /// Save when something changed since the last save.
    pub fn save_if_changed(&self) {
        if self.dirty.swap(false, std::sync::atomic::Ordering::AcqRel) {
            self.save();
        }
    }

    pub fn save(&self) {
        let path = self.path.lock().unwrap_or_else(|p| p.into_inner());
        let Some(path) = path.as_ref() else { return };
        let body = serde_json::to_vec(&OnDisk {
            version: 1,
            ledger: self.ledger(),
        });
        let result = body
            .map_err(std::io::Error::other)
            .and_then(|b| crate::private::write_atomic(path, &b));
        if let Err(e) = result {
            log::warn!("cannot save the usage counts to {}: {e}", path.display());
        }
    }

    fn touch(&self) {
        self.dirty.store(true, std::sync::atomic::Ordering::Release);
    }
}

/// One answer of a completion (`account` None: not a completion, not
/// counted).
pub fn answered(profile: &str, account: Option<&Account>, verdict: &Verdict, took: Duration) {
    let Some(a) = account else { return };
    let u = global();
    let class = Class::of(verdict);
    {
        let mut l = u.lock();
        l.answered(profile, a, class, took, now_ms());
        let model = l.model_name(&a.model);
        let ok = class == Class::Ok;
        l.today
            .answered(profile, &model, ok, crate::budget::now_ms());
    }
    u.touch();
}

/// Let a completion of the key labelled `label` in, unless one of its
/// `limits` is reached (and count it): one short lock, no I/O. The alerts
/// it brings about are recorded as events (the notifier hears them).
pub fn admit(
    label: &str,
    limits: &std::sync::Arc<crate::budget::limits::Limits>,
) -> Result<(), crate::budget::limits::Refusal> {
    let u = global();
    let pct = crate::budget::alert_percent();
    let alerts = u
        .lock()
        .today
        .admit(label, limits, pct, crate::budget::now_ms())?;
    u.touch();
    key_alerts(alerts);
    Ok(())
}

/// `profile`'s served completions per model today (the budget day and the
/// counts; None when it served none), for its lease: one short lock.
pub fn served_today(profile: &str) -> Option<(i64, BTreeMap<String, u64>)> {
    global()
        .lock()
        .today
        .served(profile, crate::budget::now_ms())
}

/// Served completions of `profile` on budget day `day` that another
/// replica counted (its lease said so): each model's count is raised to
/// at least that, so they are saved and written to the lease from here on.
/// The counts taken in (see [`usable`]), None when there were none of
/// today's budget day.
pub fn learn_served(
    profile: &str,
    day: i64,
    counts: &BTreeMap<String, u64>,
) -> Option<BTreeMap<String, u64>> {
    let counts = usable(counts);
    if counts.is_empty() {
        return None;
    }
    let u = global();
    let today = u
        .lock()
        .today
        .learn(day, profile, &counts, crate::budget::now_ms());
    u.touch();
    today.then_some(counts)
}

/// The counts another replica sent worth taking in: the lease store is
/// shared, so they are checked like any input; models with clean names
/// only, at most [`MAX_MODELS`] of them, none of 0.
fn usable(counts: &BTreeMap<String, u64>) -> BTreeMap<String, u64> {
    counts
        .iter()
        .filter(|(m, n)| **n > 0 && clean(m).as_deref() == Some(m.as_str()))
        .take(MAX_MODELS)
        .map(|(m, n)| (m.clone(), *n))
        .collect()
}

/// `GET /v1/budget` for the key labelled `label`: its own day and limits.
pub fn key_budget(label: &str, limits: &crate::budget::limits::Limits) -> serde_json::Value {
    let u = global();
    let now = crate::budget::now_ms();
    let today = u.lock().today.clone();
    today.key_view(label, limits, now)
}

fn key_alerts(alerts: Vec<crate::budget::today::Alert>) {
    for a in alerts {
        crate::events::record(crate::events::Kind::KeyBudget, None, None, a.text());
    }
}

/// The tokens a completion's answer reported, if it did.
pub fn tokens(profile: &str, account: Option<&Account>, t: Option<Tokens>) {
    let (Some(a), Some(t)) = (account, t) else {
        return;
    };
    let u = global();
    let pct = crate::budget::alert_percent();
    let alerts = {
        let mut l = u.lock();
        l.tokens(profile, a, t, now_ms());
        let model = l.model_name(&a.model);
        let key = a.key.as_deref();
        let now = crate::budget::now_ms();
        l.today.tokens(profile, &model, key, t.total, pct, now)
    };
    u.touch();
    key_alerts(alerts);
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: u64 = 1_700_000_000_000;

    fn acct(key: Option<&str>, model: &str) -> Account {
        Account::new(key.map(String::from), Some(model))
    }

    #[test]
    fn answers_and_tokens_land_in_profile_model_key_and_fleet() {
        let mut l = Ledger::default();
        let a = acct(Some("team-a"), "gemini-x");
        let ms = Duration::from_millis;
        l.answered("p1", &a, Class::Ok, ms(100), T0);
        l.tokens(
            "p1",
            &a,
            Tokens {
                prompt: 3,
                completion: 4,
                total: 7,
            },
            T0,
        );
        l.answered("p1", &a, Class::Exhausted, ms(5), T0 + 1);
        l.answered(
            "p2",
            &acct(None, "gemini-y"),
            Class::Ok,
            ms(300),
            T0 + 61_000,
        );
        let r = &l.profiles["p1"]["gemini-x"];
        assert_eq!((r.total.answers, r.total.ok, r.total.exhausted), (2, 1, 1));
        assert_eq!((r.total.prompt_tokens, r.total.total_tokens), (3, 7));
        assert_eq!(l.keys["team-a"].total.answers, 2);
        assert_eq!(l.keys.len(), 1, "no key, no key row");
        assert_eq!(l.fleet.len(), 2);
        assert_eq!(
            (
                l.fleet[0].answers,
                l.fleet[0].errors,
                l.fleet[0].ok_ms_max,
                l.fleet[0].tokens
            ),
            (2, 1, 100, 7)
        );
        assert_eq!(r.last_hour(T0 + 60_000), (2, 7));
        assert_eq!(r.last_hour(T0 + 3_600_000), (0, 0), "out of the window");
        assert_eq!(l.profile_total("p1").answers, 2);
    }

    #[test]
    fn the_window_keeps_an_hour_and_models_are_capped() {
        let mut l = Ledger::default();
        let a = acct(None, "m");
        for i in 0..200 {
            l.answered("p", &a, Class::Ok, Duration::ZERO, T0 + i * 60_000);
        }
        let r = &l.profiles["p"]["m"];
        assert_eq!(r.recent.len(), WINDOW_MINUTES as usize);
        assert_eq!(l.fleet.len(), WINDOW_MINUTES as usize);
        assert_eq!(r.total.answers, 200);
        for i in 0..(MAX_MODELS + 5) {
            l.answered(
                "p",
                &acct(None, &format!("model-{i}")),
                Class::Ok,
                Duration::ZERO,
                T0,
            );
        }
        let models = &l.profiles["p"];
        assert_eq!(models.len(), MAX_MODELS + 1, "capped, plus other");
        assert_eq!(models["other"].total.answers, 6);
    }

    #[test]
    fn counts_from_another_replica_are_checked() {
        let counts: BTreeMap<String, u64> = [
            ("pro", 2),
            ("flash", 0),
            ("bad\"name", 9),
            ("<x>", 1),
            (" padded", 1),
        ]
        .iter()
        .map(|(m, n)| (m.to_string(), *n))
        .collect();
        assert_eq!(usable(&counts), [("pro".to_string(), 2)].into());
        let many: BTreeMap<String, u64> = (0..100).map(|i| (format!("m{i:03}"), 1)).collect();
        assert_eq!(usable(&many).len(), MAX_MODELS);
    }

    #[test]
    fn names_are_cleaned() {
        let cases = [
            ("gemini-2.5-pro", Some("gemini-2.5-pro")),
            ("  <img src=x>  ", Some("img src=x")),
            ("", None),
            ("\u{1F600}\n", None),
        ];
        for (raw, want) in cases {
            assert_eq!(clean(raw).as_deref(), want, "{raw:?}");
        }
        assert_eq!(clean(&"x".repeat(500)).unwrap().len(), MAX_NAME);
        assert_eq!(Account::new(None, None).model, "unknown");
    }

    #[test]
    fn classes_follow_verdicts() {
        use crate::proxy::verdict::{Emptiness, Fault};
        let cases = [
            (Verdict::Ok, "ok"),
            (Verdict::ClientError { status: 400 }, "client_error"),
            (Verdict::EmptyAnswer(Emptiness::NoContent), "empty"),
            (Verdict::ChildFault(Fault::NoHead), "child_error"),
            (Verdict::Counted5xx { status: 500 }, "child_error"),
            (Verdict::RequestProblem { status: 500 }, "request_error"),
            (
                Verdict::Exhausted {
                    status: 429,
                    retry_after: None,
                },
                "exhausted",
            ),
        ];
        for (v, want) in cases {
            assert_eq!(Class::of(&v).name(), want, "{v:?}");
        }
    }

    #[test]
    fn saved_and_loaded_whole() {
        let d = std::env::temp_dir().join(format!("aisp-usage-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        let u = Usage {
            ledger: Mutex::new(Ledger::default()),
            dirty: Default::default(),
            path: Mutex::new(None),
        };
        u.load(&d).unwrap();
        u.lock()
            .answered("p", &acct(Some("k"), "m"), Class::Ok, Duration::ZERO, T0);
        u.touch();
        u.save_if_changed();
        let v = Usage {
            ledger: Mutex::new(Ledger::default()),
            dirty: Default::default(),
            path: Mutex::new(None),
        };
        v.load(&d).unwrap();
        assert_eq!(v.ledger(), u.ledger());
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(d.join(FILE_NAME))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        std::fs::write(d.join(FILE_NAME), b"{bad").unwrap();
        assert!(v.load(&d).is_err());
        std::fs::remove_dir_all(&d).unwrap();
    }
}
