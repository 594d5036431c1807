//! The one mapping from what was learnt of an answer to the profile book:
//! the proxy's verdict on a completion, or an account sign in the child's
//! log, becomes an [`Outcome`] (a `book::Answer` of one child). Nothing
//! else decides what an answer means for its profile.
//!
//! Pure functions, called on the thread that learnt the fact (an HTTP
//! worker, the supervisor, a watcher); they must do no I/O.

use crate::book::{Answer, Limit};
use crate::dispatch::ChildId;
use crate::process::logsigns::Sign;
use crate::proxy::verdict::Verdict;

pub use super::msg::Outcome;

/// What a verdict says of its profile: None when nothing (a client's
/// error, a child's fault, which evictions handle).
pub fn answer_of(verdict: &Verdict) -> Option<Answer> {
    match verdict {
        Verdict::Ok => Some(Answer::Served),
        Verdict::EmptyAnswer(_) => Some(Answer::Empty),
        Verdict::Exhausted { retry_after, .. } => Some(Answer::Exhausted {
            retry_after: *retry_after,
            limit: Limit::Quota,
        }),
        _ => None,
    }
}

/// Must this verdict reach the book before its request goes on (its retry
/// must find the slot already draining)? An exhausted or an empty answer:
/// both may retire the profile.
pub fn at_once(verdict: &Verdict) -> bool {
    matches!(verdict, Verdict::Exhausted { .. } | Verdict::EmptyAnswer(_))
}

/// The outcome of a verdict on `child`'s answer for `model`.
pub fn of_verdict(child: ChildId, verdict: &Verdict, model: Option<&str>) -> Option<Outcome> {
    Some(Outcome {
        slot: child.slot,
        generation: child.generation,
        model: model.map(str::to_string),
        answer: answer_of(verdict)?,
    })
}

/// The outcome of an account sign in `child`'s log, for `model` when its
/// requests ran one model (quotas and rate limits are per model); None for
/// a sign that is no answer (a login, handled on its own).
pub fn of_sign(child: ChildId, sign: Sign, model: Option<&str>) -> Option<Outcome> {
    let limit = match sign {
        Sign::RateLimit => Limit::RateLimit,
        Sign::Quota => Limit::Quota,
        Sign::LoginNeeded => return None,
    };
    Some(Outcome {
        slot: child.slot,
        generation: child.generation,
        model: model.map(str::to_string),
        answer: Answer::Exhausted {
            retry_after: None,
            limit,
        },
    })
}
