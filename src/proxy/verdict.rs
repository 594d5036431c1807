//! What an answer means for the child (and profile) that gave it: a
//! [`Verdict`] per attempt, the rules that decide which verdicts evict a
//! child at once, which count toward `CONSECUTIVE_5XX_TO_EVICT`, and the
//! [`Outcome`] stream that reports every verdict to whoever listens (per
//! profile health and cooldowns plug in there, see [`Outcomes`]).
//!
//! Pure decisions plus two small shared records (the strike counts and the
//! outcome sender), each behind its own lock held for a map update only.
//! Called from the HTTP worker threads.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, SystemTime};

use crossbeam_channel::Sender;
use serde::Serialize;

use crate::dispatch::ChildId;

/// Why a child, not the request, is to blame.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum Fault {
    /// Refused, reset or closed before the answer's head.
    Connection(String),
    /// No head within `REQUEST_TIMEOUT_S`.
    NoHead,
    /// 502, 503 or 504.
    Status(u16),
    /// The answer broke off after its head.
    Broken(String),
    /// The answer went silent for `STREAM_IDLE_TIMEOUT_S` after its head.
    Silent,
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Fault::Connection(why) => write!(f, "failed before answering ({why})"),
            Fault::NoHead => f.write_str("did not answer within REQUEST_TIMEOUT_S"),
            Fault::Status(s) => write!(f, "answered {s}"),
            Fault::Broken(why) => write!(f, "broke off its answer ({why})"),
            Fault::Silent => f.write_str("went silent mid-answer for STREAM_IDLE_TIMEOUT_S"),
        }
    }
}

/// How a completion can come back without an answer in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Emptiness {
    /// No content and no tool call before the end (a streamed quota), the
    /// child's no-output placeholder, or its 502 `Aux stream completed but
    /// no content provided`.
    NoContent,
    /// The older fork's internal timeout: a 502 `内部超时`, or a stream
    /// whose reasoning says `internal_timeout`. Quota and upstream errors
    /// look alike there: the account's or the request's trouble.
    InternalTimeout,
    /// The content carries the child's upstream error text (`[Error: ...]`,
    /// `[错误: ...]`): the child failed this one.
    ErrorText,
    /// An error event after `[DONE]` (the current child's failed auth
    /// rotation after a quota).
    ErrorAfterDone,
}

/// The body of a 502 by which a child says the answer was empty.
const EMPTY_502: &[(&str, Emptiness)] = &[
    (
        "Aux stream completed but no content provided",
        Emptiness::NoContent,
    ),
    ("内部超时", Emptiness::InternalTimeout),
];

/// What one attempt's answer says about the child.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum Verdict {
    /// A good answer.
    Ok,
    /// A 4xx other than 429: the client's business, neutral for the child.
    ClientError { status: u16 },
    /// A completion with nothing in it (quota exhaustion shows so): counts
    /// toward `EMPTY_ANSWERS_TO_ROTATE`, evicts nothing.
    EmptyAnswer(Emptiness),
    /// The child's upstream error text in a 200: counts against the child
    /// like a 5xx.
    ErrorText,
    /// Taken back from the child while it had not answered: its log said
    /// its account ran out. Served by another child; reported by the
    /// watcher that read the log.
    Reclaimed,
    /// The child failed; it is evicted.
    ChildFault(Fault),
    /// A 5xx that is no gateway error: counts against the child.
    Counted5xx { status: u16 },
    /// Two children answered this request with 5xx: the request is the
    /// problem, neither child is counted.
    RequestProblem { status: u16 },
    /// The profile's quota is used up: 429, or 502 with `Retry-After`.
    Exhausted {
        status: u16,
        retry_after: Option<Duration>,
    },
}

impl Verdict {
    /// The verdict of an answer's head alone, when it is a failure: the
    /// request is then retried on another child (nothing has reached the
    /// client yet). `None`: relay the answer.
    pub fn of_head(status: u16, retry_after: Option<&str>) -> Option<Verdict> {
        let retry_after = retry_after.map(parse_retry_after);
        match status {
            429 => Some(Verdict::Exhausted {
                status,
                retry_after: retry_after.flatten(),
            }),
            502 if retry_after.is_some() => Some(Verdict::Exhausted {
                status,
                retry_after: retry_after.flatten(),
            }),
            502..=504 => Some(Verdict::ChildFault(Fault::Status(status))),
            s if s >= 500 => Some(Verdict::Counted5xx { status }),
            _ => None,
        }
    }

    /// A failed head's verdict refined by its answer's body: a 502 that
    /// says the answer was empty is the account's sign, not a broken child.
    pub fn with_body(self, body: &[u8]) -> Verdict {
        if self != Verdict::ChildFault(Fault::Status(502)) {
            return self;
        }
        let text = String::from_utf8_lossy(body);
        EMPTY_502
            .iter()
            .find(|(mark, _)| text.contains(mark))
            .map(|(_, e)| Verdict::EmptyAnswer(*e))
            .unwrap_or(self)
    }

    /// The verdict of an answer relayed in full.
    pub fn of_answer(status: u16, empty: Option<Emptiness>) -> Verdict {
        match (status, empty) {
            (200, Some(Emptiness::ErrorText)) => Verdict::ErrorText,
            (200, Some(Emptiness::ErrorAfterDone)) => Verdict::Exhausted {
                status,
                retry_after: None,
            },
            (200, Some(e)) => Verdict::EmptyAnswer(e),
            (400..=499, _) => Verdict::ClientError { status },
            _ => Verdict::Ok,
        }
    }

    /// Whether the profile book heard of this when it happened (so a
    /// second opinion changes nothing about it).
    pub fn reported_at_once(&self) -> bool {
        self.evicts_at_once()
            || matches!(
                self,
                Verdict::Exhausted { .. } | Verdict::EmptyAnswer(_) | Verdict::Reclaimed
            )
    }

    /// Whether the child is evicted as soon as this is known.
    pub fn evicts_at_once(&self) -> bool {
        matches!(self, Verdict::ChildFault(_))
    }

    /// The status of a failed answer (for the client, or a log line).
    pub fn status(&self) -> Option<u16> {
        match self {
            Verdict::ClientError { status }
            | Verdict::Counted5xx { status }
            | Verdict::RequestProblem { status }
            | Verdict::Exhausted { status, .. }
            | Verdict::ChildFault(Fault::Status(status)) => Some(*status),
            _ => None,
        }
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Verdict::Ok => f.write_str("ok"),
            Verdict::ClientError { status } => write!(f, "client error {status}"),
            Verdict::EmptyAnswer(Emptiness::InternalTimeout) => {
                f.write_str("internal timeout (the older fork's quota or upstream error)")
            }
            Verdict::EmptyAnswer(_) => f.write_str("empty answer"),
            Verdict::ErrorText => f.write_str("upstream error text in the answer"),
            Verdict::Reclaimed => {
                f.write_str("taken back: the child's log says its account ran out")
            }
            Verdict::ChildFault(fault) => fault.fmt(f),
            Verdict::Counted5xx { status } => write!(f, "answered {status}"),
            Verdict::RequestProblem { status } => {
                write!(
                    f,
                    "answered {status}, as another child did: the request's fault"
                )
            }
            Verdict::Exhausted { status, .. } => write!(f, "answered {status}: quota exhausted"),
        }
    }
}

/// `Retry-After` in seconds (an HTTP date is not worth parsing here).
fn parse_retry_after(v: &str) -> Option<Duration> {
    v.trim().parse::<u64>().ok().map(Duration::from_secs)
}

/// One verdict on one child, as reported to listeners (read by them, not
/// by the proxy).
#[allow(dead_code)]
#[derive(Debug, Clone, Serialize)]
pub struct Outcome {
    pub child: ChildId,
    pub profile: String,
    /// The model the request named.
    pub model: Option<String>,
    pub verdict: Verdict,
    /// The request's id as the client sees it (`X-Request-Id`).
    pub request_id: String,
    /// Whether the proxy evicted the child for it.
    pub evicted: bool,
    #[serde(skip)]
    pub at: SystemTime,
}

/// Where outcomes go: nowhere until a listener is attached with
/// [`Outcomes::attach`] (the supervisor's per-profile health book).
#[derive(Default)]
pub struct Outcomes {
    tx: OnceLock<Sender<Outcome>>,
}

impl Outcomes {
    /// Send every later outcome to `tx`. Only the first listener counts.
    pub fn attach(&self, tx: Sender<Outcome>) -> bool {
        self.tx.set(tx).is_ok()
    }

    pub fn report(&self, o: Outcome) {
        if let Some(tx) = self.tx.get() {
            // An unbounded channel never blocks; a gone listener is fine.
            let _ = tx.send(o);
        }
    }
}

/// Consecutive counted 5xx answers per child.
#[derive(Default)]
pub struct Strikes {
    by_slot: Mutex<HashMap<usize, (u64, u32)>>,
}

impl Strikes {
    /// One more strike on `child`; returns its count in a row.
    pub fn strike(&self, child: ChildId) -> u32 {
        let mut m = self.by_slot.lock().unwrap_or_else(|p| p.into_inner());
        let e = m.entry(child.slot).or_insert((child.generation, 0));
        if e.0 != child.generation {
            *e = (child.generation, 0);
        }
        e.1 += 1;
        e.1
    }

    /// A success: the count starts again.
    pub fn clear(&self, child: ChildId) {
        let mut m = self.by_slot.lock().unwrap_or_else(|p| p.into_inner());
        if m.get(&child.slot).is_some_and(|e| e.0 == child.generation) {
            m.remove(&child.slot);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heads_that_fail() {
        let table: &[(u16, Option<&str>, Option<Verdict>)] = &[
            (200, None, None),
            (404, None, None),
            (
                429,
                None,
                Some(Verdict::Exhausted {
                    status: 429,
                    retry_after: None,
                }),
            ),
            (
                429,
                Some("30"),
                Some(Verdict::Exhausted {
                    status: 429,
                    retry_after: Some(Duration::from_secs(30)),
                }),
            ),
            (500, None, Some(Verdict::Counted5xx { status: 500 })),
            (501, None, Some(Verdict::Counted5xx { status: 501 })),
            (502, None, Some(Verdict::ChildFault(Fault::Status(502)))),
            (
                502,
                Some("60"),
                Some(Verdict::Exhausted {
                    status: 502,
                    retry_after: Some(Duration::from_secs(60)),
                }),
            ),
            (
                503,
                Some("30"),
                Some(Verdict::ChildFault(Fault::Status(503))),
            ),
            (504, None, Some(Verdict::ChildFault(Fault::Status(504)))),
            (599, None, Some(Verdict::Counted5xx { status: 599 })),
        ];
        for (status, ra, want) in table {
            assert_eq!(&Verdict::of_head(*status, *ra), want, "{status} {ra:?}");
        }
        assert!(Verdict::ChildFault(Fault::NoHead).evicts_at_once());
        assert!(!Verdict::Counted5xx { status: 500 }.evicts_at_once());
    }

    #[test]
    fn answers_relayed() {
        assert_eq!(Verdict::of_answer(200, None), Verdict::Ok);
        assert_eq!(
            Verdict::of_answer(200, Some(Emptiness::NoContent)),
            Verdict::EmptyAnswer(Emptiness::NoContent)
        );
        assert_eq!(
            Verdict::of_answer(401, None),
            Verdict::ClientError { status: 401 }
        );
        assert_eq!(
            Verdict::of_answer(200, Some(Emptiness::ErrorText)),
            Verdict::ErrorText
        );
        assert!(matches!(
            Verdict::of_answer(200, Some(Emptiness::ErrorAfterDone)),
            Verdict::Exhausted { .. }
        ));
        assert!(!Verdict::ErrorText.reported_at_once());
    }

    #[test]
    fn a_502_that_says_empty_is_the_accounts_sign() {
        let head = || Verdict::of_head(502, None).unwrap();
        let table: &[(&str, Verdict)] = &[
            (
                r#"{"detail": "[abc1234] Aux stream completed but no content provided"}"#,
                Verdict::EmptyAnswer(Emptiness::NoContent),
            ),
            (
                r#"{"detail": "[abc1234] 辅助流处理错误 (内部超时)"}"#,
                Verdict::EmptyAnswer(Emptiness::InternalTimeout),
            ),
            (
                r#"{"detail": "browser lost"}"#,
                Verdict::ChildFault(Fault::Status(502)),
            ),
        ];
        for (body, want) in table {
            let v = head().with_body(body.as_bytes());
            assert_eq!(&v, want, "{body}");
        }
        assert!(!Verdict::EmptyAnswer(Emptiness::InternalTimeout).evicts_at_once());
        let ra = Verdict::of_head(502, Some("60")).unwrap();
        assert_eq!(
            ra.clone()
                .with_body(b"Aux stream completed but no content provided"),
            ra
        );
        let s503 = Verdict::of_head(503, None).unwrap();
        assert_eq!(s503.clone().with_body("内部超时".as_bytes()), s503);
    }

    #[test]
    fn strikes_count_in_a_row_per_generation() {
        let s = Strikes::default();
        let a1 = ChildId {
            slot: 0,
            generation: 1,
        };
        assert_eq!(s.strike(a1), 1);
        assert_eq!(s.strike(a1), 2);
        s.clear(a1);
        assert_eq!(s.strike(a1), 1);
        let a2 = ChildId {
            slot: 0,
            generation: 2,
        };
        assert_eq!(s.strike(a2), 1, "a new child starts clean");
        s.clear(a1);
        assert_eq!(s.strike(a2), 2, "a stale success clears nothing");
    }
}
