//! The edge's side of the per-key limits (see `budget::limits` for what
//! they are): a completion over one is refused before any child is
//! involved, with 429 and `Retry-After`, or 403 for a model not allowed.

use std::sync::Arc;

use crate::budget::limits::Over;
pub use crate::budget::limits::{publish, Limits};
use crate::reply::{ApiError, Reply};

/// Whether a completion of the key (`label`, `limits`) for `model` may go
/// on; counted when it may. Else the answer to give: 403 for a model not
/// allowed, 429 with `Retry-After` for a limit reached (OpenAI's shape; the
/// dialects reshape it).
pub fn check(label: &str, limits: &Arc<Limits>, model: Option<&str>) -> Result<(), Reply> {
    if !limits.allows(model) {
        crate::metrics::key_refused(label, "model_not_allowed");
        let msg = match model {
            Some(m) => format!("this API key may not use the model {m:?}"),
            None => "this API key may only use some models: name one in the request".to_string(),
        };
        return Err(ApiError::ModelNotAllowed.reply(&msg));
    }
    crate::usage::admit(label, limits).map_err(|r| {
        let err = match r.over {
            Over::Rate => ApiError::KeyRateLimited,
            Over::Daily => ApiError::KeyDailyLimit,
            Over::Tokens => ApiError::KeyTokenLimit,
        };
        crate::metrics::key_refused(label, r.over.code());
        err.reply_after(&r.over.message(r.limit), Some(r.retry_after_s))
    })
}
