//! Responses the coordinator writes itself: JSON bodies and OpenAI-style
//! errors with a stable `type` and `code`. The one place that decides how a
//! failure looks to a client.

use std::io::Cursor;

use tiny_http::{Header, Response, StatusCode};

pub type Reply = Response<Cursor<Vec<u8>>>;

pub fn header(name: &str, value: &str) -> Header {
    // Names and values here are ours and always valid header text.
    Header::from_bytes(name.as_bytes(), value.as_bytes()).expect("static header is valid")
}

pub fn json(status: u16, body: &serde_json::Value) -> Reply {
    Response::from_data(body.to_string().into_bytes())
        .with_status_code(StatusCode(status))
        .with_header(header("Content-Type", "application/json"))
}

/// The failures the coordinator itself reports, each with its status, its
/// OpenAI `type` and its `code`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApiError {
    InvalidApiKey,
    NotFound,
    UnknownRequest,
    BadRequest,
    BodyTooLarge,
    HeadersTooLarge,
    NoReadyChild,
    Overloaded,
    /// `MAX_QUEUE` completions wait already.
    QueueFull,
    /// No child freed up within `QUEUE_TIMEOUT_S`.
    QueueTimeout,
    /// Every account is out of quota for the requested model.
    ModelExhausted,
    /// Cancelled through `POST /v1/cancel/{id}`.
    Cancelled,
    /// The child failed before answering and no retry could answer either.
    ChildFailed,
    UpstreamTimeout,
    Internal,
    /// A key's `rpm` limit (see `proxy::limits`).
    KeyRateLimited,
    /// A key's `rpd` limit.
    KeyDailyLimit,
    /// A key's `tpd` limit.
    KeyTokenLimit,
    /// A model outside a key's `models`.
    ModelNotAllowed,
}

impl ApiError {
    pub fn status(self) -> u16 {
        match self {
            ApiError::InvalidApiKey => 401,
            ApiError::NotFound | ApiError::UnknownRequest => 404,
            ApiError::BadRequest => 400,
            ApiError::BodyTooLarge => 413,
            ApiError::HeadersTooLarge => 431,
            ApiError::NoReadyChild
            | ApiError::Overloaded
            | ApiError::QueueFull
            | ApiError::QueueTimeout
            | ApiError::ModelExhausted => 503,
            // A standard status every client library knows; the code says
            // what happened.
            ApiError::Cancelled => 409,
            ApiError::ChildFailed => 502,
            ApiError::UpstreamTimeout => 504,
            ApiError::Internal => 500,
            ApiError::KeyRateLimited | ApiError::KeyDailyLimit | ApiError::KeyTokenLimit => 429,
            ApiError::ModelNotAllowed => 403,
        }
    }

    fn kind(self) -> (&'static str, &'static str) {
        match self {
            ApiError::InvalidApiKey => ("invalid_request_error", "invalid_api_key"),
            ApiError::NotFound => ("invalid_request_error", "not_found"),
            ApiError::UnknownRequest => ("invalid_request_error", "request_not_found"),
            ApiError::BadRequest => ("invalid_request_error", "bad_request"),
            ApiError::BodyTooLarge => ("invalid_request_error", "request_too_large"),
            ApiError::HeadersTooLarge => ("invalid_request_error", "headers_too_large"),
            ApiError::NoReadyChild => ("server_error", "no_ready_child"),
            ApiError::Overloaded => ("server_error", "overloaded"),
            ApiError::QueueFull => ("server_error", "queue_full"),
            ApiError::QueueTimeout => ("server_error", "queue_timeout"),
            ApiError::ModelExhausted => ("server_error", "model_quota_exhausted"),
            ApiError::Cancelled => ("invalid_request_error", "request_cancelled"),
            ApiError::ChildFailed => ("server_error", "child_failed"),
            ApiError::UpstreamTimeout => ("server_error", "upstream_timeout"),
            ApiError::Internal => ("server_error", "internal_error"),
            ApiError::KeyRateLimited => ("rate_limit_error", "key_rate_limited"),
            ApiError::KeyDailyLimit => ("rate_limit_error", "key_daily_limit"),
            ApiError::KeyTokenLimit => ("rate_limit_error", "key_token_limit"),
            ApiError::ModelNotAllowed => ("permission_error", "model_not_allowed"),
        }
    }

    pub fn body(self, message: &str) -> serde_json::Value {
        let (kind, code) = self.kind();
        serde_json::json!({
            "error": { "message": message, "type": kind, "code": code, "param": null }
        })
    }

    /// Seconds a client should wait before trying again, where it applies.
    pub fn retry_after(self) -> Option<&'static str> {
        matches!(
            self,
            ApiError::NoReadyChild
                | ApiError::Overloaded
                | ApiError::QueueFull
                | ApiError::QueueTimeout
                | ApiError::ModelExhausted
        )
        .then_some("5")
    }

    pub fn reply(self, message: &str) -> Reply {
        let r = json(self.status(), &self.body(message));
        match self.retry_after() {
            Some(after) => r.with_header(header("Retry-After", after)),
            None => r,
        }
    }

    /// Like [`ApiError::reply`], with `Retry-After: retry_after` (seconds)
    /// instead of the default where one applies.
    pub fn reply_after(self, message: &str, retry_after: Option<u64>) -> Reply {
        match retry_after {
            Some(secs) => json(self.status(), &self.body(message))
                .with_header(header("Retry-After", &secs.to_string())),
            None => self.reply(message),
        }
    }
}
