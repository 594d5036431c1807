//! `/admin/` on the coordinator port, present only when an admin key is
//! configured (`ADMIN_KEY`, or the first line of `ADMIN_KEY_FILE`): the
//! same operations as the socket, for operators who cannot exec into the
//! pod. `GET /admin/status`, `POST /admin/<op>` with the operation's fields
//! as a JSON body (`POST /admin/restart` `{"slot": 1}`). The key goes in
//! `Authorization: Bearer <key>` or `X-Admin-Key`, is compared in constant
//! time and never logged. The status page's files (`GET /admin/`, see
//! `console`) are served without the key: they hold no data.

use std::io::Read;

use serde_json::{json, Value};
use tiny_http::{Method, Request};

use super::{proto, Control, Via};
use crate::reply::{self, Reply};

pub use crate::config::AdminKey;

/// Whether `rq` presents the admin key `key`.
/// Every header that may carry it is looked at: a request may carry an
/// API key in `Authorization` and the admin key in `X-Admin-Key`.
pub fn offers(rq: &Request, key: &AdminKey) -> bool {
    let mut found = false;
    for h in rq.headers() {
        let offered = if h.field.equiv("Authorization") {
            h.value.as_str().strip_prefix("Bearer ")
        } else if h.field.equiv("X-Admin-Key") {
            Some(h.value.as_str())
        } else {
            None
        };
        found |= offered.is_some_and(|k| key.matches(k));
    }
    found
}

fn offered_key(rq: &Request) -> Option<String> {
    rq.headers().iter().find_map(|h| {
        if h.field.equiv("Authorization") {
            h.value.as_str().strip_prefix("Bearer ").map(str::to_string)
        } else if h.field.equiv("X-Admin-Key") {
            Some(h.value.as_str().to_string())
        } else {
            None
        }
    })
}

/// Answer one `/admin/...` request. `key` is None when the admin API is off:
/// then the path does not exist.
pub fn handle(rq: &mut Request, key: Option<&AdminKey>, control: &dyn Control) -> Reply {
    let Some(key) = key else {
        return reply::json(404, &json!({"ok": false, "error": "not found"}));
    };
    if matches!(*rq.method(), Method::Get | Method::Head) {
        let path = rq.url().split('?').next().unwrap_or("");
        if let Some(page) = crate::console::page(path) {
            return page;
        }
    }
    if !offered_key(rq).is_some_and(|k| key.matches(&k)) {
        super::refusals::refused("a missing or wrong admin key on /admin/");
        return reply::json(
            401,
            &proto::error("admin key missing or wrong: send Authorization: Bearer <ADMIN_KEY>"),
        );
    }
    let path = rq.url().split('?').next().unwrap_or("").to_string();
    let op = path.trim_start_matches("/admin/").trim_end_matches('/');
    let mut body = String::new();
    if *rq.method() == Method::Post {
        if rq
            .as_reader()
            .take(64 * 1024)
            .read_to_string(&mut body)
            .is_err()
        {
            return reply::json(400, &proto::error("the body must be UTF-8 JSON"));
        }
    } else if !(*rq.method() == Method::Get
        && matches!(op, "status" | "logs" | "usage" | "events" | "console"))
    {
        return reply::json(405, &proto::error("use POST /admin/<op> (GET for status)"));
    }
    let mut fields: Value = if body.trim().is_empty() {
        json!({})
    } else {
        match serde_json::from_str(&body) {
            Ok(v @ Value::Object(_)) => v,
            _ => return reply::json(400, &proto::error("the body must be a JSON object")),
        }
    };
    fields["op"] = json!(op);
    let answer = match proto::parse(&fields.to_string()) {
        Ok(req) => control.handle(req, Via::Http),
        Err(answer) => answer,
    };
    let status = if answer["ok"] == true { 200 } else { 400 };
    reply::json(status, &answer).with_header(reply::header("Cache-Control", "no-store"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_compare_whole() {
        let k = AdminKey::new(" s3cret \n".into()).unwrap();
        assert!(k.matches("s3cret"));
        for bad in ["", "s3cre", "s3cret!", "S3cret", "x3cret"] {
            assert!(!k.matches(bad), "{bad}");
        }
        assert!(AdminKey::new("  ".into()).is_none());
        assert_eq!(format!("{k:?}"), "AdminKey(..)");
    }
}
