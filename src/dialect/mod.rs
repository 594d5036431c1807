//! The other clients' dialects, translated at the edge: Anthropic Messages
//! (`/v1/messages`) and Gemini generateContent (`/v1beta/models/..`) become
//! the OpenAI chat completion every child speaks, and the child's answer is
//! turned back into the client's form on its way out. Pure functions over
//! JSON and bytes: no I/O, no threads; the proxy (`proxy::translate`) calls
//! them on the worker thread that serves the request.
//!
//! - [`route`] tells a dialect request by its method, path and headers;
//! - [`prepare`] turns its body into the child's request (or answers it
//!   here: token counts), refusing what cannot be translated with a
//!   [`EdgeError`] naming the field;
//! - a [`Translator`] turns the child's answer back: a whole JSON answer at
//!   once, an event stream event by event ([`Translator::push`]);
//! - [`error_body`] gives any error the dialect's own error shape.

pub mod anthropic;
mod anthropic_stream;
pub mod gemini;
mod gemini_stream;
mod schema;
mod sse;
pub mod tokens;

use serde_json::{json, Value};

/// The API a request came in as.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Dialect {
    #[serde(rename = "openai")]
    OpenAi,
    Anthropic,
    Gemini,
}

impl Dialect {
    pub fn name(self) -> &'static str {
        match self {
            Dialect::OpenAi => "openai",
            Dialect::Anthropic => "anthropic",
            Dialect::Gemini => "gemini",
        }
    }
}

/// A request in another dialect, by what it asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// `POST /v1/messages`.
    Messages,
    /// `POST /v1beta/models/{model}:generateContent` or
    /// `:streamGenerateContent` (`sse`: `alt=sse`, else a JSON array).
    Generate {
        model: String,
        stream: bool,
        sse: bool,
    },
    /// `POST /v1/messages/count_tokens`, `POST /v1beta/models/{m}:countTokens`.
    CountTokens(Dialect),
    /// `GET /v1/models` with `anthropic-version`, `GET /v1beta/models`.
    Models(Dialect),
    /// `GET /v1/models/{id}` with `anthropic-version`, `GET /v1beta/models/{id}`.
    Model(Dialect, String),
    /// A `/v1beta/` path we do not serve.
    Unknown(Dialect),
}

impl Route {
    pub fn dialect(&self) -> Dialect {
        match self {
            Route::Messages => Dialect::Anthropic,
            Route::Generate { .. } => Dialect::Gemini,
            Route::CountTokens(d) | Route::Models(d) | Route::Model(d, _) | Route::Unknown(d) => *d,
        }
    }
}

/// What a request's headers say about its client, for the paths several
/// dialects share (`/v1/models`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Hints {
    /// An `anthropic-version` header came.
    pub anthropic: bool,
    /// An `x-goog-api-key` or `x-goog-api-client` header, or `?key=`.
    pub google: bool,
}

/// The dialect request `method path?query` is, if any. Gemini's own paths
/// are `/v1beta/models/..` and, for its stable version, `/v1/models/..`;
/// a model listing at `/v1/models` is Anthropic's or Gemini's when the
/// headers say so (`hints`), else OpenAI's.
pub fn route(method: &str, path: &str, query: &str, hints: Hints) -> Option<Route> {
    let post = method == "POST";
    let get = method == "GET" || method == "HEAD";
    let google = hints.google || query_param(query, "key").is_some();
    match path {
        "/v1/messages" if post => return Some(Route::Messages),
        "/v1/messages/count_tokens" if post => return Some(Route::CountTokens(Dialect::Anthropic)),
        "/v1/models" if get && hints.anthropic => return Some(Route::Models(Dialect::Anthropic)),
        "/v1/models" if get && google => return Some(Route::Models(Dialect::Gemini)),
        _ => {}
    }
    if let Some(id) = path.strip_prefix("/v1/models/") {
        if id.contains(':') || (get && google && !hints.anthropic) {
            return gemini_route(method, &format!("models/{id}"), query);
        }
        if get && hints.anthropic && !id.is_empty() && !id.contains('/') {
            return Some(Route::Model(Dialect::Anthropic, id.to_string()));
        }
        return None;
    }
    gemini_route(method, path.strip_prefix("/v1beta/")?, query)
}

/// A Gemini request by its path after the version (`models/..`).
fn gemini_route(method: &str, rest: &str, query: &str) -> Option<Route> {
    let post = method == "POST";
    let get = method == "GET" || method == "HEAD";
    let g = Dialect::Gemini;
    if rest == "models" && get {
        return Some(Route::Models(g));
    }
    let Some(name) = rest.strip_prefix("models/").filter(|n| !n.contains('/')) else {
        return Some(Route::Unknown(g));
    };
    match name.split_once(':') {
        None if get && !name.is_empty() => Some(Route::Model(g, name.to_string())),
        Some((model, op)) if post && !model.is_empty() => match op {
            "generateContent" => Some(Route::Generate {
                model: model.to_string(),
                stream: false,
                sse: false,
            }),
            "streamGenerateContent" => Some(Route::Generate {
                model: model.to_string(),
                stream: true,
                sse: query_param(query, "alt").as_deref() == Some("sse"),
            }),
            "countTokens" => Some(Route::CountTokens(g)),
            _ => Some(Route::Unknown(g)),
        },
        _ => Some(Route::Unknown(g)),
    }
}

/// The value of `name` in a query string (percent-decoded), if present.
pub fn query_param(query: &str, name: &str) -> Option<String> {
    query
        .split('&')
        .filter_map(|kv| kv.split_once('=').or(Some((kv, ""))))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| percent_decode(v))
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        match b[i] {
            b'%' if i + 2 < b.len() => match (hex(b[i + 1]), hex(b[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push((h * 16 + l) as u8);
                    i += 3;
                    continue;
                }
                _ => out.push(b'%'),
            },
            b'+' => out.push(b' '),
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A request the edge cannot translate: a 400 naming the field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EdgeError {
    /// Where in the request, as a path (`messages[1].content[0].type`).
    pub field: String,
    pub problem: String,
}

impl std::fmt::Display for EdgeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.field, self.problem)
    }
}

pub(crate) fn bad(field: impl Into<String>, problem: impl Into<String>) -> EdgeError {
    EdgeError {
        field: field.into(),
        problem: problem.into(),
    }
}

/// What the proxy does with a dialect request.
pub enum Prepared {
    /// Send `body` to a child as a chat completion; `translator` turns the
    /// answer back.
    Completion {
        body: Vec<u8>,
        model: Option<String>,
        stream: bool,
        translator: Translator,
    },
    /// Ask a child for `GET /v1/models` and translate the list.
    Models(Translator),
    /// Answered here, with this 200 body.
    Local(Value),
}

/// The child's request for a dialect request (or its answer, when the
/// edge answers it alone).
pub fn prepare(route: &Route, body: &[u8]) -> Result<Prepared, EdgeError> {
    let parse = || -> Result<Value, EdgeError> {
        match serde_json::from_slice::<Value>(body) {
            Ok(v @ Value::Object(_)) => Ok(v),
            _ => Err(bad("body", "the request body must be a JSON object")),
        }
    };
    match route {
        Route::Messages => {
            let req = parse()?;
            let chat = anthropic::request(&req)?;
            let estimate = tokens::estimate(&req);
            Ok(completion(Dialect::Anthropic, chat, false, estimate))
        }
        Route::Generate { model, stream, sse } => {
            let req = parse()?;
            let chat = gemini::request(model, *stream, &req)?;
            let estimate = tokens::estimate(&req);
            Ok(completion(Dialect::Gemini, chat, *sse, estimate))
        }
        Route::CountTokens(d) => {
            let req = parse()?;
            // Checked as a real request would be, so a count never
            // succeeds for a request the edge would refuse.
            match d {
                Dialect::Gemini => {
                    // `{"contents": ..}` or `{"generateContentRequest": {..}}`.
                    let inner = req.get("generateContentRequest").unwrap_or(&req);
                    gemini::request("count", false, inner)?;
                    Ok(Prepared::Local(
                        json!({ "totalTokens": tokens::estimate(inner) }),
                    ))
                }
                _ => {
                    anthropic::request(&req)?;
                    Ok(Prepared::Local(
                        json!({ "input_tokens": tokens::estimate(&req) }),
                    ))
                }
            }
        }
        Route::Models(d) => Ok(Prepared::Models(Translator::new(*d, Mode::Models))),
        Route::Model(d, id) => Ok(Prepared::Models(Translator::new(
            *d,
            Mode::Model(id.trim_start_matches("models/").to_string()),
        ))),
        Route::Unknown(_) => Err(bad("path", "no such method of the Gemini API here")),
    }
}

fn completion(dialect: Dialect, chat: Value, sse: bool, estimate: u64) -> Prepared {
    let stream = chat.get("stream").and_then(Value::as_bool) == Some(true);
    let model = chat
        .get("model")
        .and_then(Value::as_str)
        .map(str::to_string);
    let mut t = Translator::new(
        dialect,
        Mode::Completion {
            stream,
            sse,
            model: model.clone().unwrap_or_default(),
        },
    );
    t.estimate = estimate;
    Prepared::Completion {
        body: chat.to_string().into_bytes(),
        model,
        stream,
        translator: t,
    }
}

/// What kind of answer a translator expects.
#[derive(Debug, Clone)]
enum Mode {
    Completion {
        stream: bool,
        /// Gemini: SSE rather than a JSON array.
        sse: bool,
        model: String,
    },
    Models,
    Model(String),
}

/// Turns one child answer into the dialect's. One per request.
pub struct Translator {
    pub dialect: Dialect,
    mode: Mode,
    /// The request's estimated input tokens (for a stream's first event).
    estimate: u64,
    stream: Option<Stream>,
    /// The child's event stream, parsed.
    child: sse::Events,
}

enum Stream {
    Anthropic(anthropic_stream::Events),
    Gemini(gemini_stream::Events),
}

impl Stream {
    fn translator(&mut self) -> &mut dyn sse::Translate {
        match self {
            Stream::Anthropic(a) => a,
            Stream::Gemini(g) => g,
        }
    }
}

impl Translator {
    fn new(dialect: Dialect, mode: Mode) -> Translator {
        Translator {
            dialect,
            mode,
            estimate: 0,
            stream: None,
            child: sse::Events::default(),
        }
    }

    /// Whether the answer is an event stream (else one JSON body).
    pub fn streams(&self) -> bool {
        matches!(self.mode, Mode::Completion { stream: true, .. })
    }

    /// The `Content-Type` of the translated answer.
    pub fn content_type(&self) -> &'static str {
        match &self.mode {
            Mode::Completion {
                stream: true,
                sse: false,
                ..
            } if self.dialect == Dialect::Gemini => "application/json",
            Mode::Completion { stream: true, .. } => "text/event-stream",
            _ => "application/json",
        }
    }

    /// A whole JSON answer of the child (status 200), translated; None
    /// when the child's answer is not what a child sends.
    pub fn whole(&self, body: &[u8]) -> Option<Vec<u8>> {
        let v: Value = serde_json::from_slice(body).ok()?;
        let out = match (&self.mode, self.dialect) {
            (Mode::Completion { model, .. }, Dialect::Anthropic) => anthropic::response(&v, model)?,
            (Mode::Completion { model, .. }, _) => gemini::response(&v, model)?,
            (Mode::Models, Dialect::Anthropic) => anthropic::models(&v)?,
            (Mode::Models, _) => gemini::models(&v)?,
            (Mode::Model(id), Dialect::Anthropic) => anthropic::model(&v, id)?,
            (Mode::Model(id), _) => gemini::model(&v, id)?,
        };
        Some(out.to_string().into_bytes())
    }

    /// The bytes a stream begins with, before the child's first event.
    pub fn open(&mut self, out: &mut Vec<u8>) {
        let Mode::Completion { model, sse, .. } = &self.mode else {
            return;
        };
        let stream = match self.dialect {
            Dialect::Anthropic => {
                Stream::Anthropic(anthropic_stream::Events::new(model, self.estimate))
            }
            _ => Stream::Gemini(gemini_stream::Events::new(model, *sse, self.estimate)),
        };
        self.stream = Some(stream);
        if let Some(Stream::Anthropic(a)) = &mut self.stream {
            a.open(out);
        }
    }

    /// Bytes of the child's event stream in (any split), the client's
    /// events out (whole events only).
    pub fn push(&mut self, piece: &[u8], out: &mut Vec<u8>) {
        if let Some(to) = self.stream.as_mut().map(Stream::translator) {
            self.child.feed(piece, to, out);
        }
    }

    /// The child's stream ended cleanly: the closing events.
    pub fn finish(&mut self, out: &mut Vec<u8>) {
        if let Some(to) = self.stream.as_mut().map(Stream::translator) {
            self.child.end(to, out);
        }
    }
}

/// The models of a child's OpenAI model list (None: not such a list).
fn child_models(list: &Value) -> Option<&Vec<Value>> {
    list.get("data")?.as_array()
}

/// The entry for `id` in a child's OpenAI model list: None when the list
/// is not one, Some(None) when it does not name `id`.
fn child_model<'a>(list: &'a Value, id: &str) -> Option<Option<&'a Value>> {
    Some(
        child_models(list)?
            .iter()
            .find(|m| m.get("id").and_then(Value::as_str) == Some(id)),
    )
}

/// The message of an error answer in any shape a child or we send:
/// OpenAI's `{"error": {"message"}}`, FastAPI's `{"detail"}`, or text.
pub fn error_message(body: &[u8]) -> String {
    let text = || {
        String::from_utf8_lossy(&body[..body.len().min(2000)])
            .trim()
            .to_string()
    };
    let Ok(v) = serde_json::from_slice::<Value>(body) else {
        return text();
    };
    let m = v
        .pointer("/error/message")
        .or_else(|| v.get("detail"))
        .or_else(|| v.get("error"))
        .or_else(|| v.get("message"));
    match m {
        Some(Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
        None => text(),
    }
}

/// An error in `dialect`'s own shape, for an answer of `status`.
pub fn error_body(dialect: Dialect, status: u16, message: &str) -> Value {
    match dialect {
        Dialect::Anthropic => anthropic::error(status, message),
        Dialect::Gemini => gemini::error(status, message),
        Dialect::OpenAi => json!({"error": {"message": message, "type": "server_error"}}),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_table() {
        let gen = |m: &str, stream, sse| {
            Some(Route::Generate {
                model: m.to_string(),
                stream,
                sse,
            })
        };
        let table: &[(&str, &str, &str, bool, Option<Route>)] = &[
            (
                "POST",
                "/v1/models/g:generateContent",
                "",
                false,
                gen("g", false, false),
            ),
            (
                "GET",
                "/v1/models",
                "key=k",
                false,
                Some(Route::Models(Dialect::Gemini)),
            ),
            ("POST", "/v1/messages", "", false, Some(Route::Messages)),
            (
                "POST",
                "/v1/messages/count_tokens",
                "",
                true,
                Some(Route::CountTokens(Dialect::Anthropic)),
            ),
            ("GET", "/v1/models", "", false, None),
            (
                "GET",
                "/v1/models",
                "",
                true,
                Some(Route::Models(Dialect::Anthropic)),
            ),
            (
                "GET",
                "/v1/models/gemini-x",
                "",
                true,
                Some(Route::Model(Dialect::Anthropic, "gemini-x".into())),
            ),
            ("GET", "/v1/models/gemini-x", "", false, None),
            ("POST", "/v1/chat/completions", "", true, None),
            (
                "GET",
                "/v1beta/models",
                "key=k",
                false,
                Some(Route::Models(Dialect::Gemini)),
            ),
            (
                "POST",
                "/v1beta/models/gemini-2.5-pro:generateContent",
                "",
                false,
                gen("gemini-2.5-pro", false, false),
            ),
            (
                "POST",
                "/v1beta/models/g:streamGenerateContent",
                "alt=sse&key=x",
                false,
                gen("g", true, true),
            ),
            (
                "POST",
                "/v1beta/models/g:streamGenerateContent",
                "",
                false,
                gen("g", true, false),
            ),
            (
                "POST",
                "/v1beta/models/g:countTokens",
                "",
                false,
                Some(Route::CountTokens(Dialect::Gemini)),
            ),
            (
                "POST",
                "/v1beta/models/g:embedContent",
                "",
                false,
                Some(Route::Unknown(Dialect::Gemini)),
            ),
            (
                "GET",
                "/v1beta/models/g",
                "",
                false,
                Some(Route::Model(Dialect::Gemini, "g".into())),
            ),
            (
                "GET",
                "/v1beta/files",
                "",
                false,
                Some(Route::Unknown(Dialect::Gemini)),
            ),
        ];
        for (m, p, q, a, want) in table {
            let hints = Hints {
                anthropic: *a,
                google: false,
            };
            assert_eq!(&route(m, p, q, hints), want, "{m} {p}?{q} anthropic={a}");
        }
        let google = Hints {
            anthropic: false,
            google: true,
        };
        assert_eq!(
            route("GET", "/v1/models", "", google),
            Some(Route::Models(Dialect::Gemini))
        );
    }

    #[test]
    fn query_params_are_decoded() {
        assert_eq!(
            query_param("alt=sse&key=a%2Bb", "key").as_deref(),
            Some("a+b")
        );
        assert_eq!(query_param("alt=sse", "key"), None);
        assert_eq!(query_param("key=%zz%", "key").as_deref(), Some("%zz%"));
        assert_eq!(query_param("", "key"), None);
    }

    #[test]
    fn error_messages_of_every_shape() {
        assert_eq!(error_message(br#"{"error":{"message":"m"}}"#), "m");
        assert_eq!(error_message(br#"{"detail":"d"}"#), "d");
        assert_eq!(error_message(b"plain"), "plain");
    }

    #[test]
    fn an_unknown_block_is_a_400_naming_the_field() {
        let body = br#"{"model":"m","max_tokens":5,"messages":[{"role":"user","content":[{"type":"text","text":"a"},{"type":"hologram"}]}]}"#;
        let Err(e) = prepare(&Route::Messages, body) else {
            panic!("accepted")
        };
        assert_eq!(e.field, "messages[0].content[1].type");
        let body = br#"{"contents":[{"parts":[{"text":"a"},{"videoMetadata":{}}]}]}"#;
        let r = Route::Generate {
            model: "g".into(),
            stream: false,
            sse: false,
        };
        let Err(e) = prepare(&r, body) else {
            panic!("accepted")
        };
        assert_eq!(e.field, "contents[0].parts[1]");
    }
}
