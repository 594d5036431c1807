//! Notifications to an operator's chat: with `NOTIFY_WEBHOOK_URL` (or the
//! first line of `NOTIFY_WEBHOOK_URL_FILE`), one JSON `POST` per event an
//! operator must act on or know about: a profile needs a new login, a
//! profile is exhausted, a slot is in a crash loop, a lease is lost, no
//! child has been ready for `NOTIFY_NO_READY_S`. The body has a `text`
//! field chat tools show as it is, plus the structured fields.
//!
//! The decisions are pure and table-tested: [`Decider`] turns events into
//! notes, [`Folder`] folds repeats (the same kind and profile within
//! `NOTIFY_FOLD_S` become one later message with a count). One named
//! thread (`notify`) owns both and does the sending: events reach it over a
//! bounded channel that the recorder only `try_send`s to, so a slow or dead
//! webhook never blocks the fleet (what does not fit is dropped and
//! counted). Each message is tried [`ATTEMPTS`] times with a backoff, each
//! try bounded by [`TRY_TIMEOUT`]; every wait wakes on shutdown. Outcomes
//! are counted in `/metrics`. The URL is a secret: logs show only its
//! scheme and host.

use std::collections::{BTreeMap, HashMap, VecDeque};

use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{after, select, Receiver, Sender, TrySendError};
use log::{info, warn};
use serde::Serialize;
use serde_json::json;

use crate::events::{Event, Kind};

/// Events waiting for the notifier at most; more are dropped and counted.
const QUEUE: usize = 256;
/// Tries per message.
pub const ATTEMPTS: u32 = 3;
/// The longest one try may take (connect, send, answer).
pub const TRY_TIMEOUT: Duration = Duration::from_secs(5);
/// Before the second try; doubled before each later one.
const FIRST_BACKOFF: Duration = Duration::from_secs(1);
/// Crashes of one slot within `CRASH_WINDOW` that make a crash loop.
pub const CRASHES_TO_LOOP: usize = 3;
pub const CRASH_WINDOW: Duration = Duration::from_secs(600);

pub use crate::config::{NotifySettings as Settings, WebhookUrl};

/// What an operator hears about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum NoteKind {
    NeedsLogin,
    Exhausted,
    CrashLoop,
    LeaseLost,
    NoReady,
    /// An API key came near or to one of its daily limits.
    KeyBudget,
    /// The fleet's budget for a model is low or gone until the reset.
    ModelBudget,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Note {
    pub kind: NoteKind,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub profile: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub slot: Option<usize>,
    /// What happened, in words.
    pub detail: String,
    pub at_unix_ms: u64,
    /// How many times it happened (more than 1 when folded).
    pub count: u64,
}

impl Note {
    /// The line a chat shows.
    pub fn text(&self) -> String {
        let who = match (&self.profile, self.slot) {
            (Some(p), Some(s)) => format!("profile {p} (slot {s})"),
            (Some(p), None) => format!("profile {p}"),
            (None, Some(s)) => format!("slot {s}"),
            (None, None) => "the fleet".to_string(),
        };
        let what = match self.kind {
            NoteKind::NeedsLogin => format!("{who} needs a new login"),
            NoteKind::Exhausted => format!("{who} is exhausted and cools down"),
            NoteKind::CrashLoop => format!("{who} is in a crash loop"),
            NoteKind::LeaseLost => format!("{who}: lease lost"),
            NoteKind::NoReady => "no child is ready to serve requests".to_string(),
            NoteKind::KeyBudget => "an API key's daily budget".to_string(),
            NoteKind::ModelBudget => "the fleet's daily budget".to_string(),
        };
        let times = if self.count > 1 {
            format!(" ({} times)", self.count)
        } else {
            String::new()
        };
        let detail = if self.detail.is_empty() {
            String::new()
        } else {
            format!(": {}", self.detail)
        };
        chat_safe(&format!("aistudioproxy: {what}{times}{detail}"))
    }

    pub fn body(&self) -> serde_json::Value {
        json!({
            "text": self.text(),
            "kind": self.kind,
            "profile": self.profile,
            "slot": self.slot,
            "detail": self.detail,
            "count": self.count,
            "at_unix_ms": self.at_unix_ms,
        })
    }
}

/// A chat line that names things only as text: `&`, `<` and `>` escaped
/// as Slack and Mattermost require (so a profile named `<!channel>` pings
/// nobody), `@everyone`/`@here` broken by a zero-width space (Discord,
/// Teams), control characters shown as escapes.
pub fn chat_safe(text: &str) -> String {
    let escaped = text
        .replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace("@everyone", "@\u{200b}everyone")
        .replace("@here", "@\u{200b}here")
        .replace("@channel", "@\u{200b}channel");
    let mut out = String::with_capacity(escaped.len());
    for c in escaped.chars() {
        if c.is_control() {
            out.push_str(&format!("\\u{{{:x}}}", c as u32));
        } else {
            out.push(c);
        }
    }
    out
}

/// Which events become notes (pure; owns the crash counting).
#[derive(Debug, Default)]
pub struct Decider {
    crashes: HashMap<usize, VecDeque<u64>>,
}

impl Decider {
    pub fn decide(&mut self, e: &Event) -> Option<Note> {
        let kind = match e.kind {
            Kind::NeedsLogin => NoteKind::NeedsLogin,
            Kind::CooldownSet if e.text.starts_with("exhausted") => NoteKind::Exhausted,
            Kind::LeaseLost => NoteKind::LeaseLost,
            Kind::NoReady => NoteKind::NoReady,
            Kind::KeyBudget => NoteKind::KeyBudget,
            Kind::ModelBudget => NoteKind::ModelBudget,
            Kind::ChildCrash => {
                let slot = e.slot?;
                let times = self.crashes.entry(slot).or_default();
                times.push_back(e.at_unix_ms);
                let window = CRASH_WINDOW.as_millis() as u64;
                while times.front().is_some_and(|t| t + window <= e.at_unix_ms) {
                    times.pop_front();
                }
                if times.len() < CRASHES_TO_LOOP {
                    return None;
                }
                times.clear();
                NoteKind::CrashLoop
            }
            _ => return None,
        };
        Some(Note {
            kind,
            profile: e.profile.clone(),
            slot: e.slot,
            detail: e.text.clone(),
            at_unix_ms: e.at_unix_ms,
            count: 1,
        })
    }
}

/// Folds repeats: the first note of a kind and profile goes out at once;
/// repeats within `window` of the last message wait, and go out as one
/// note with their count when the window ends (pure; times in ms).
#[derive(Debug)]
pub struct Folder {
    window: u64,
    last_sent: BTreeMap<(NoteKind, Option<String>), u64>,
    pending: BTreeMap<(NoteKind, Option<String>), Note>,
}

impl Folder {
    pub fn new(window: Duration) -> Folder {
        Folder {
            window: window.as_millis() as u64,
            last_sent: BTreeMap::new(),
            pending: BTreeMap::new(),
        }
    }

    /// The note to send now, if any (else it is held and counted).
    pub fn offer(&mut self, note: Note, now: u64) -> Option<Note> {
        let key = fold_key(&note);
        match self.last_sent.get(&key) {
            Some(t) if now < t + self.window => {
                let count = self.pending.get(&key).map_or(0, |p| p.count) + 1;
                self.pending.insert(key, Note { count, ..note });
                None
            }
            _ => {
                self.last_sent.insert(key, now);
                Some(note)
            }
        }
    }

    /// Held notes whose window ended, each folded into one.
    pub fn due(&mut self, now: u64) -> Vec<Note> {
        let ready: Vec<_> = self
            .pending
            .keys()
            .filter(|k| {
                self.last_sent
                    .get(*k)
                    .is_none_or(|t| now >= t + self.window)
            })
            .cloned()
            .collect();
        ready
            .into_iter()
            .filter_map(|k| {
                self.last_sent.insert(k.clone(), now);
                self.pending.remove(&k)
            })
            .collect()
    }
}

/// What repeats fold by: the kind and profile; a key's budget alert by
/// its own text (each is sent once per key, limit and day already).
fn fold_key(note: &Note) -> (NoteKind, Option<String>) {
    let subject = match note.kind {
        NoteKind::KeyBudget | NoteKind::ModelBudget => Some(note.detail.clone()),
        _ => note.profile.clone(),
    };
    (note.kind, subject)
}

/// Hand an event to the notifier's inbox; never blocks.
fn offer(tx: &Sender<Event>, e: &Event) {
    if !matches!(
        e.kind,
        Kind::NeedsLogin
            | Kind::CooldownSet
            | Kind::LeaseLost
            | Kind::NoReady
            | Kind::ChildCrash
            | Kind::KeyBudget
            | Kind::ModelBudget
    ) {
        return;
    }
    match tx.try_send(e.clone()) {
        Ok(()) => {}
        Err(TrySendError::Full(_)) => crate::metrics::notification("dropped"),
        Err(TrySendError::Disconnected(_)) => {}
    }
}

/// The running notifier: stopped (and joined, bounded) by `stop`.
pub struct Notifier {
    stop: Sender<()>,
    thread: JoinHandle<()>,
}

impl Notifier {
    pub fn stop(self) {
        drop(self.stop);
        let deadline = Instant::now() + TRY_TIMEOUT + Duration::from_secs(1);
        while !self.thread.is_finished() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        if self.thread.is_finished() {
            let _ = self.thread.join();
        } else {
            warn!("the notifier did not stop in time; leaving it");
        }
    }
}

/// Start the notifier for `url`; events reach it from now on.
pub fn start(url: WebhookUrl, fold: Duration) -> std::io::Result<Notifier> {
    let (tx, rx) = crossbeam_channel::bounded::<Event>(QUEUE);
    let (stop, stop_rx) = crossbeam_channel::bounded::<()>(0);
    info!("notifications go to {url}");
    let thread = std::thread::Builder::new()
        .name("notify".into())
        .spawn(move || run(url, fold, rx, stop_rx))?;
    // Only one notifier per process; a second start (tests) keeps the first inbox.
    crate::events::subscribe(move |e| offer(&tx, e));
    Ok(Notifier { stop, thread })
}

fn run(url: WebhookUrl, fold: Duration, rx: Receiver<Event>, stop: Receiver<()>) {
    let agent: ureq::Agent = crate::upstream::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(TRY_TIMEOUT))
        .max_redirects(0)
        .build()
        .into();
    let mut decider = Decider::default();
    let mut folder = Folder::new(fold);
    loop {
        let mut out = Vec::new();
        select! {
            recv(stop) -> _ => return,
            recv(rx) -> e => {
                let Ok(e) = e else { return };
                if let Some(n) = decider.decide(&e) {
                    match folder.offer(n, crate::usage::now_ms()) {
                        Some(n) => out.push(n),
                        None => crate::metrics::notification("folded"),
                    }
                }
            }
            recv(after(Duration::from_secs(1))) -> _ => {}
        }
        out.extend(folder.due(crate::usage::now_ms()));
        for n in out {
            if !deliver(&agent, &url, &n, &stop) {
                return;
            }
        }
    }
}

/// Send one note with retries; false when shutdown came meanwhile.
fn deliver(agent: &ureq::Agent, url: &WebhookUrl, n: &Note, stop: &Receiver<()>) -> bool {
    let body = n.body().to_string();
    let mut backoff = FIRST_BACKOFF;
    for attempt in 1..=ATTEMPTS {
        let result = agent
            .post(url.as_str())
            .header("Content-Type", "application/json")
            .send(body.as_bytes());
        let why = match result {
            Ok(r) if r.status().is_success() => {
                crate::metrics::notification("sent");
                return true;
            }
            Ok(r) => format!("answered {}", r.status().as_u16()),
            // Named by kind only: some errors quote the URL.
            Err(ureq::Error::Timeout(_)) => "timed out".to_string(),
            Err(ureq::Error::ConnectionFailed) => "connection refused".to_string(),
            Err(ureq::Error::Io(e)) => format!("{:?}", e.kind()),
            Err(_) => "request failed".to_string(),
        };
        crate::metrics::notification("failed_try");
        if attempt == ATTEMPTS {
            crate::metrics::notification("failed");
            warn!(
                "notification {:?} to {url} failed {ATTEMPTS} times ({why}); dropped",
                n.kind
            );
            return true;
        }
        select! {
            recv(stop) -> _ => return false,
            recv(after(backoff)) -> _ => {}
        }
        backoff *= 2;
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(kind: Kind, slot: Option<usize>, profile: Option<&str>, text: &str, at: u64) -> Event {
        Event {
            seq: 0,
            at_unix_ms: at,
            kind,
            slot,
            profile: profile.map(String::from),
            text: text.into(),
        }
    }

    #[test]
    fn which_events_notify() {
        let cases = [
            (Kind::NeedsLogin, "", Some(NoteKind::NeedsLogin)),
            (
                Kind::CooldownSet,
                "exhausted, 60s",
                Some(NoteKind::Exhausted),
            ),
            (Kind::CooldownSet, "start_failures, 300s", None),
            (Kind::LeaseLost, "taken over", Some(NoteKind::LeaseLost)),
            (Kind::NoReady, "for 300s", Some(NoteKind::NoReady)),
            (Kind::Rotation, "", None),
            (Kind::ChildReady, "", None),
            (Kind::Operator, "", None),
        ];
        for (kind, text, want) in cases {
            let got = Decider::default().decide(&ev(kind, Some(0), Some("p"), text, 0));
            assert_eq!(got.map(|n| n.kind), want, "{kind:?} {text}");
        }
        let n = Decider::default()
            .decide(&ev(Kind::NeedsLogin, Some(1), Some("alice"), "", 5))
            .unwrap();
        assert_eq!(
            n.text(),
            "aistudioproxy: profile alice (slot 1) needs a new login"
        );
        assert_eq!(n.body()["kind"], "needs_login");
        let text = "key team-a: used 80% of its 10 completions per day (8 of 10)";
        let n = Decider::default()
            .decide(&ev(Kind::KeyBudget, None, None, text, 5))
            .unwrap();
        assert_eq!(
            n.text(),
            format!("aistudioproxy: an API key's daily budget: {text}")
        );
        assert_eq!(n.body()["kind"], "key_budget");
    }

    #[test]
    fn alerts_of_different_keys_are_not_folded_together() {
        let mut f = Folder::new(Duration::from_secs(600));
        let mut d = Decider::default();
        for text in ["key a: used 80% of x", "key b: used 80% of x"] {
            let n = d.decide(&ev(Kind::KeyBudget, None, None, text, 0)).unwrap();
            assert!(f.offer(n, 0).is_some(), "{text} goes out at once");
        }
    }

    #[test]
    fn crashes_of_one_slot_in_a_window_are_a_loop() {
        let mut d = Decider::default();
        let min = 60_000;
        let crash = |d: &mut Decider, slot, at| {
            d.decide(&ev(Kind::ChildCrash, Some(slot), None, "exited", at))
        };
        assert!(crash(&mut d, 0, 0).is_none());
        assert!(crash(&mut d, 1, 1).is_none(), "another slot");
        assert!(
            crash(&mut d, 0, 11 * min).is_none(),
            "the first fell out of the window"
        );
        assert!(crash(&mut d, 0, 12 * min).is_none());
        let n = crash(&mut d, 0, 13 * min).unwrap();
        assert_eq!((n.kind, n.slot), (NoteKind::CrashLoop, Some(0)));
        assert!(
            crash(&mut d, 0, 14 * min).is_none(),
            "counting starts again"
        );
    }

    #[test]
    fn repeats_are_folded_into_one_later_message_with_a_count() {
        let mut f = Folder::new(Duration::from_secs(60));
        let note = |p: &str, at| Note {
            kind: NoteKind::Exhausted,
            profile: Some(p.into()),
            slot: None,
            detail: String::new(),
            at_unix_ms: at,
            count: 1,
        };
        assert!(f.offer(note("a", 0), 0).is_some());
        assert!(f.offer(note("b", 0), 0).is_some(), "another profile");
        assert!(f.offer(note("a", 1), 1_000).is_none());
        assert!(f.offer(note("a", 2), 2_000).is_none());
        assert!(f.due(59_999).is_empty());
        let due = f.due(60_000);
        assert_eq!(due.len(), 1);
        assert_eq!(due[0].count, 2);
        assert!(due[0].text().contains("(2 times)"));
        assert!(f.due(200_000).is_empty());
        assert!(f.offer(note("a", 3), 200_000).is_some(), "a new window");
    }

    #[test]
    fn chat_text_cannot_ping_or_link() {
        let n = Note {
            kind: NoteKind::CrashLoop,
            profile: Some("<!channel> & @here\x1b".into()),
            slot: Some(1),
            detail: "<@U123>".into(),
            at_unix_ms: 0,
            count: 1,
        };
        let t = n.text();
        assert!(
            !t.contains('<') && !t.contains('>') && !t.contains("@here"),
            "{t}"
        );
        assert!(t.contains("&lt;!channel&gt; &amp;"), "{t}");
        assert!(!t.contains('\x1b'), "{t}");
    }

    #[test]
    fn the_url_never_shows_whole() {
        let u =
            WebhookUrl::new("https://user:pw@hooks.example.com/services/T000/SECRET?x=1").unwrap();
        assert_eq!(u.redacted(), "https://hooks.example.com/…");
        assert!(!format!("{u:?} {u}").contains("SECRET"));
        assert!(WebhookUrl::new("ftp://x").is_err());
    }
}
