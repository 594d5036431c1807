//! Chat completions: the answer, its queueing, and the streamed form.
//! A tool call instead of text (knob `tool_call`) is `tools`'s.
//!
//! Each completion runs on its own thread (spawned by the HTTP worker that
//! received it) so a long line of completions never starves /health. It gets
//! the child's own 7-character request id, waits for its turn in the
//! [`Lane`](crate::lane::Lane) (watching its client's connection every
//! 0.3 s), and only then is judged (browser alive, model known, account
//! exhausted, `error_text`) and answered, either with a normal tiny_http
//! response or, when streaming, by writing the HTTP head and chunks itself:
//! a tiny_http `Response` over a reader of unknown length is buffered
//! (~8 KiB) before sending, which would deliver SSE all at once. So a
//! streamed answer's head leaves when its turn starts, never on arrival.
//!
//! Answers, as the real child gives them:
//! - unknown `model`: 500 `{"detail": "[<req_id>] Request processing error:
//!   Model '<m>' not found ..."}` (always);
//! - browser dead (`browser` knob): 503, `Retry-After: 30`, detail
//!   `"[<req_id>] ... browser page not ready ..."`;
//! - cancelled while queued (`/v1/cancel/{req_id}`): 499 `{"detail":
//!   "[<req_id>] Request cancelled by user ..."}` at once;
//! - exhausted (`exhaust_after`): streamed 200 with empty content, then
//!   `[DONE]`; non-streamed 502 with `Retry-After`;
//! - out of quota (`quota_log`, `quota_models`, profile cookies `FAKE_QUOTA`
//!   / `FAKE_QUOTA_MODEL`, or `FAKE_QUOTA` in the prompt), as the current
//!   child: streamed 200 (the head at once, the rest after
//!   `completion_delay_ms`, or `FAKE_DELAY=<s>` in the prompt, as for every
//!   answer), one chunk with empty content, `finish_reason:
//!   stop` and `usage.completion_tokens: 0`, `[DONE]`, and after it the
//!   comments `: processing auth rotation (attempt 1)...` and
//!   `: processing auth rotation...` and `data: {"error": "Auth rotation
//!   failed."}` (log: `[<req_id>] Quota limit hit during stream: AI Studio
//!   quota exceeded: 429 RESOURCE_EXHAUSTED. ...`, after `[DONE]` and
//!   before the comments, as the real child's generator logs it);
//!   non-streamed: no answer, a re-queue round every `quota_requeue_ms`
//!   while the client stays (log each round: `[<req_id>] Quota Exceeded: AI
//!   Studio quota exceeded: 429 RESOURCE_EXHAUSTED` (with `quota_type`
//!   `RATE_LIMIT`: `429 Too Many Requests`, here and in the streamed line,
//!   since the real child derives its type from that text), `⛔ GLOBAL
//!   ALERT: Quota Exceeded! Type: <quota_type> (Event Signal Sent)`, `[<req_id>]
//!   (Worker) ⛔ Quota exceeded, re-queueing.`), holding the lane, until 504
//!   `{"detail": "[<req_id>] Request processing timed out."}` at
//!   `quota_deadline_ms` from arrival; a client that leaves ends it;
//! - `FAKE_ERROR500` in the prompt (upstream 500): non-streamed 500
//!   `{"detail": "[<req_id>] AI Studio error: 500 Internal error"}`;
//!   streamed 200 with content `[Error: AI Studio error: 500 Internal
//!   error]`, `finish_reason: stop`, `[DONE]`;
//! - `empty_output`: streamed 200 with content `\n\n*(Model finished
//!   thinking but generated no output.)*`; non-streamed 502 `{"detail":
//!   "[<req_id>] Aux stream completed but no content provided"}`;
//! - the fork's internal timeout (`fork_internal_timeout`, or `fork` with
//!   quota or `FAKE_ERROR500`): after `internal_timeout_ms`, non-streamed
//!   502 `{"detail": "[<req_id>] 辅助流处理错误 (内部超时)"}` (log
//!   `[<req_id>] 非流式请求通过辅助流失败: 内部超时`); streamed 200 at once,
//!   silence, a chunk with `delta: {"reasoning_content":
//!   "internal_timeout"}`, a stop chunk, `[DONE]`;
//! - `error_text`: 200 with content `[错误: <text>]` (or, with
//!   `error_text_mark` M, `M AI Studio error: 500 <text>]`),
//!   `finish_reason: stop`.
//!
//! These are judged in that order after the model and `exhaust_after`;
//! none of them counts as a success (for `exhaust_after`, `refresh_every`).
//!
//! Every answer carries `X-Testchild-Req-Id` and
//! `X-Testchild-Queue-Wait-Ms` (time spent waiting in the lane).

#[path = "tools.rs"]
mod tools;

use crate::lane::{Turn, CHECK_EVERY};
use crate::sock::ConnWatch;
use crate::{error_body, json_response, log_line, unix_ms, with_header, App};
use serde_json::{json, Value};
use std::io::{self, Write};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};
use tiny_http::Request;

/// The alphabet of the child's request ids (as the real child's
/// `random.choices(ascii_lowercase + digits, k=7)`).
const ID_ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";

/// A 7-character lowercase-alphanumeric request id derived from `seed`
/// (splitmix64, so nearby seeds give unrelated ids).
pub fn req_id_from(seed: u64) -> String {
    let mut x = seed;
    (0..7)
        .map(|_| {
            x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = x;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^= z >> 31;
            ID_ALPHABET[(z % ID_ALPHABET.len() as u64) as usize] as char
        })
        .collect()
}

/// The in-band error content the real child writes into an answer, in the
/// form `mark` picks: the older `[错误: <text>]` for the default mark, else
/// `<mark> AI Studio error: 500 <text>]` (`[Error:`: the current child).
pub fn error_content(mark: &str, text: &str) -> String {
    if mark == crate::knobs::LEGACY_ERROR_MARK {
        format!("{mark}: {text}]")
    } else {
        format!("{mark} AI Studio error: 500 {text}]")
    }
}

/// What the current child says of a 429 from AI Studio.
pub const QUOTA_ERROR: &str = "AI Studio quota exceeded: 429 RESOURCE_EXHAUSTED";
/// The same for a rate limit.
pub const RATE_LIMIT_ERROR: &str = "AI Studio quota exceeded: 429 Too Many Requests";

/// The error text of a quota round of type `quota_type`. The real child
/// reads its `Type:` from this very text (`RATE_LIMIT` only when it says
/// "Too Many Requests", `config/global_state.py`), so its lines never
/// disagree: a `RATE_LIMIT` round says so in its first line too.
pub fn quota_error(quota_type: &str) -> &'static str {
    if quota_type == "RATE_LIMIT" {
        RATE_LIMIT_ERROR
    } else {
        QUOTA_ERROR
    }
}
/// The current child's in-band form of an upstream 500, streamed.
pub const ERROR500_CONTENT: &str = "[Error: AI Studio error: 500 Internal error]";
/// The current child's placeholder for a stream with no output.
pub const NO_OUTPUT_PLACEHOLDER: &str = "\n\n*(Model finished thinking but generated no output.)*";
/// What follows `[DONE]` in the current child's quota stream.
pub const QUOTA_STREAM_TAIL: [&str; 3] = [
    ": processing auth rotation (attempt 1)...\n\n",
    ": processing auth rotation...\n\n",
    "data: {\"error\": \"Auth rotation failed.\"}\n\n",
];

/// Splits `content` into exactly `n` pieces (n >= 1) whose concatenation is
/// `content`: as even as possible, each at least one char while chars last,
/// then empty pieces.
pub fn split_content(content: &str, n: usize) -> Vec<String> {
    let n = n.max(1);
    let chars: Vec<char> = content.chars().collect();
    let (base, extra) = (chars.len() / n, chars.len() % n);
    let mut pieces = Vec::with_capacity(n);
    let mut at = 0;
    for i in 0..n {
        let take = base + usize::from(i < extra);
        pieces.push(chars[at..at + take].iter().collect());
        at += take;
    }
    pieces
}

/// The text of the last message: a string content, or the text parts of an
/// array content joined.
fn last_message_text(body: &Value) -> String {
    let content = body
        .get("messages")
        .and_then(Value::as_array)
        .and_then(|m| m.last())
        .and_then(|m| m.get("content"));
    content_text(content)
}

/// The text of every message, one per line: the prompt the real child
/// would submit, where the fake Google looks for its markers.
fn prompt_text(body: &Value) -> String {
    body.get("messages")
        .and_then(Value::as_array)
        .map(|ms| {
            ms.iter()
                .map(|m| content_text(m.get("content")))
                .collect::<Vec<_>>()
                .join("\n")
        })
        .unwrap_or_default()
}

/// A message content as text: a string, or an array's text parts joined.
fn content_text(content: Option<&Value>) -> String {
    match content {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(parts)) => parts
            .iter()
            .filter_map(|p| p.get("text").and_then(Value::as_str))
            .collect::<Vec<_>>()
            .join(""),
        Some(other) if !other.is_null() => other.to_string(),
        _ => String::new(),
    }
}

fn unix_secs() -> u64 {
    unix_ms() / 1000
}

/// Waits `d` in slices of at most [`CHECK_EVERY`], looking at the client
/// after each. False when the client went away.
fn pause(d: Duration, watch: &mut ConnWatch) -> bool {
    let deadline = Instant::now() + d;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return true;
        }
        thread::sleep(left.min(CHECK_EVERY));
        if watch.gone() {
            return false;
        }
    }
}

/// What one completion is, once parsed.
struct Job {
    req_id: String,
    id: String,
    model: String,
    model_given: bool,
    stream: bool,
    content: String,
    /// Every message's text, for the fake-Google markers.
    prompt: String,
    /// When the request arrived (the child's own deadline counts from here).
    arrived: Instant,
    /// The tool call to answer with (knob `tool_call`).
    tool: Option<tools::Call>,
    /// How long the work takes upstream: `FAKE_DELAY=<s>` in the prompt (as
    /// the fake Google reads it), else `completion_delay_ms`.
    delay: Duration,
}

/// The seconds of a `FAKE_DELAY=<s>` marker in `prompt`, if any.
fn fake_delay(prompt: &str) -> Option<Duration> {
    let rest = &prompt[prompt.find("FAKE_DELAY=")? + "FAKE_DELAY=".len()..];
    let digits: String = rest
        .chars()
        .take_while(|c| c.is_ascii_digit() || *c == '.')
        .collect();
    let s: f64 = digits.parse().ok()?;
    (s.is_finite() && (0.0..=3600.0).contains(&s)).then(|| Duration::from_secs_f64(s))
}

/// A JSON answer to a completion, with its id headers.
fn answer_json(
    app: &App,
    request: Request,
    job: &Job,
    waited_ms: u128,
    status: u16,
    body: &Value,
    retry_after: Option<u64>,
) -> bool {
    let mut r = json_response(app, status, body);
    r = with_header(r, "X-Testchild-Req-Id", &job.req_id);
    r = with_header(r, "X-Testchild-Queue-Wait-Ms", &waited_ms.to_string());
    if let Some(s) = retry_after {
        r = with_header(r, "Retry-After", &s.to_string());
    }
    request.respond(r).is_ok()
}

fn browser_lost(app: &App) -> bool {
    app.knobs.browser && !crate::tree::browser_alive()
}

fn browser_lost_body(req_id: &str) -> Value {
    json!({"detail": format!(
        "[{req_id}] AI Studio browser page not ready (the browser is gone; testchild knob browser)"
    )})
}

/// Handles one POST /v1/chat/completions whose body was already read and
/// whose API key was already checked.
pub fn handle(app: Arc<App>, request: Request, body: &[u8]) {
    if app.knobs.reset {
        log_line("completion reset without answer (knob reset)");
        cut(&app, request);
        return;
    }
    if let Some(code) = app.knobs.fail_status {
        log_line(&format!("completion failed with {code} (knob fail_status)"));
        let body = error_body(
            "testchild fail_status knob",
            "server_error",
            "testchild_fail",
        );
        let _ = request.respond(json_response(&app, code, &body));
        return;
    }
    let parsed: Value = match serde_json::from_slice(body) {
        Ok(v @ Value::Object(_)) => v,
        _ => {
            let body = error_body(
                "request body is not a JSON object",
                "invalid_request_error",
                "invalid_json",
            );
            let _ = request.respond(json_response(&app, 400, &body));
            return;
        }
    };
    let seq = app.completion_seq.fetch_add(1, Ordering::Relaxed) + 1;
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    let req_id = req_id_from(nanos ^ (u64::from(std::process::id()) << 40) ^ seq.rotate_left(17));
    let model_field = parsed.get("model").and_then(Value::as_str);
    let job = Job {
        id: format!("chatcmpl-{req_id}-{}-{seq}", unix_secs()),
        model: model_field
            .unwrap_or(crate::knobs::DEFAULT_MODEL)
            .to_string(),
        model_given: model_field.is_some(),
        stream: parsed.get("stream").and_then(Value::as_bool) == Some(true),
        content: format!(
            "profile={} echo={}",
            app.profile,
            last_message_text(&parsed)
        ),
        delay: fake_delay(&prompt_text(&parsed))
            .unwrap_or(Duration::from_millis(app.knobs.completion_delay_ms)),
        prompt: prompt_text(&parsed),
        arrived: Instant::now(),
        tool: if app.knobs.tool_call {
            tools::call_for(&parsed)
        } else {
            None
        },
        req_id,
    };
    let arrived = job.arrived;
    let done = |outcome: &str, waited_ms: u128| {
        log_line(&format!(
            "completion req_id={} id={} stream={} outcome={outcome} queued_ms={waited_ms} total_ms={}",
            job.req_id,
            job.id,
            job.stream,
            arrived.elapsed().as_millis()
        ));
    };

    if browser_lost(&app) {
        let _ = answer_json(
            &app,
            request,
            &job,
            0,
            503,
            &browser_lost_body(&job.req_id),
            Some(30),
        );
        done("browser-lost", 0);
        return;
    }

    let mut watch = ConnWatch::new(app.args.server_port, request.remote_addr().copied());
    let ticket = app.lane.enqueue(&job.req_id, job.stream, unix_ms());
    log_line(&format!(
        "completion req_id={} queued (waiting={})",
        job.req_id,
        app.lane.status().0
    ));
    let turn = ticket.wait_turn(|| watch.gone());
    let waited_ms = arrived.elapsed().as_millis();
    match turn {
        Turn::Served => {}
        Turn::Cancelled => {
            drop(ticket);
            app.stats.cancelled.fetch_add(1, Ordering::Relaxed);
            let body = json!({"detail": format!(
                "[{}] Request cancelled by user (POST /v1/cancel) while queued", job.req_id
            )});
            let _ = answer_json(&app, request, &job, waited_ms, 499, &body, None);
            done("cancelled-queued", waited_ms);
            return;
        }
        Turn::ClientGone => {
            drop(ticket);
            app.stats.abandoned.fetch_add(1, Ordering::Relaxed);
            log_line(&format!(
                "completion req_id={} client disconnected while queued; dropped",
                job.req_id
            ));
            drop(request.into_writer());
            done("client-gone-queued", waited_ms);
            return;
        }
    }

    app.stats.begin();
    let turn_began = Instant::now();
    let stall = app.knobs.abandoned_stall_ms;
    let outcome = match stall {
        Some(ms) if crate::page::take_busy() => {
            stalled(&app, request, &job, waited_ms, ms, &mut watch)
        }
        _ => {
            let outcome = serve(&app, request, &job, waited_ms, &mut watch);
            if outcome == Outcome::ClientGone && stall.is_some() {
                // Its cleanup skipped: the page generates to the turn's end.
                crate::page::left_generating(turn_began + planned_turn(&app.knobs, &job));
            }
            outcome
        }
    };
    app.stats.end(outcome);
    drop(ticket);
    done(outcome.label(), waited_ms);
    if outcome == Outcome::Success {
        let n = app.stats.successes.fetch_add(1, Ordering::Relaxed) + 1;
        if let Some(every) = app.knobs.refresh_every {
            if n % every == 0 {
                app.refresher
                    .refresh(&format!("after {n} successful completions"));
            }
        }
    }
}

/// How a served completion ended.
#[derive(Clone, Copy, PartialEq, Debug)]
pub enum Outcome {
    /// A normal answer, fully delivered.
    Success,
    /// Another answer (error, exhausted, in-band error), fully delivered.
    Answered,
    /// The client went away; the work stopped.
    ClientGone,
    /// The stream was cut on purpose (`die_mid_stream`).
    Died,
}

impl Outcome {
    fn label(self) -> &'static str {
        match self {
            Outcome::Success => "done",
            Outcome::Answered => "answered",
            Outcome::ClientGone => "client-gone",
            Outcome::Died => "died-mid-stream",
        }
    }
}

/// Serves a completion whose turn has come.
fn serve(
    app: &App,
    request: Request,
    job: &Job,
    waited_ms: u128,
    watch: &mut ConnWatch,
) -> Outcome {
    let delivered = |ok: bool| {
        if ok {
            Outcome::Answered
        } else {
            Outcome::ClientGone
        }
    };
    if browser_lost(app) {
        let ok = answer_json(
            app,
            request,
            job,
            waited_ms,
            503,
            &browser_lost_body(&job.req_id),
            Some(30),
        );
        return delivered(ok);
    }
    if job.model_given && !app.knobs.models.contains(&job.model) {
        let body = json!({"detail": format!(
            "[{}] Request processing error: Model '{}' not found in the available models ({})",
            job.req_id, job.model, app.knobs.models.join(", ")
        )});
        return delivered(answer_json(app, request, job, waited_ms, 500, &body, None));
    }
    let answer = Answer {
        id: &job.id,
        model: &job.model,
        created: unix_secs(),
    };
    let exhausted = app
        .knobs
        .exhaust_after
        .is_some_and(|n| app.stats.successes.load(Ordering::Relaxed) >= n);
    if exhausted {
        if !job.stream {
            let body = json!({"detail": format!(
                "[{}] AI Studio returned no content: quota exhausted (testchild knob exhaust_after)",
                job.req_id
            )});
            let ok = answer_json(
                app,
                request,
                job,
                waited_ms,
                502,
                &body,
                Some(app.knobs.exhaust_retry_after_s),
            );
            return delivered(ok);
        }
        let mut out = open_stream(app, request, job, waited_ms);
        let ok = out.is_ok()
            && pause(
                Duration::from_millis(app.knobs.exhaust_stream_delay_ms),
                watch,
            )
            && out.events(&exhausted_events(&answer)).is_ok();
        return delivered(ok);
    }
    let quota = app.knobs.quota_for(&job.model, &job.prompt);
    let error500 = job.prompt.contains("FAKE_ERROR500");
    if app.knobs.fork_internal_timeout || (app.knobs.fork && (quota || error500)) {
        return internal_timeout(app, request, job, waited_ms, &answer, watch);
    }
    if quota {
        return quota_answer(app, request, job, waited_ms, &answer, watch);
    }
    if error500 {
        log_line(&format!(
            "[{}] AI Studio error: 500 Internal error",
            job.req_id
        ));
        if !job.stream {
            let body =
                json!({"detail": format!("[{}] AI Studio error: 500 Internal error", job.req_id)});
            return delivered(answer_json(app, request, job, waited_ms, 500, &body, None));
        }
        return delivered(in_band(
            app,
            request,
            job,
            waited_ms,
            &answer,
            ERROR500_CONTENT,
        ));
    }
    if app.knobs.empty_output {
        if !job.stream {
            log_line(&format!(
                "[{}] Non-stream request completed via aux stream but no content provided",
                job.req_id
            ));
            let body = json!({"detail": format!(
                "[{}] Aux stream completed but no content provided", job.req_id
            )});
            return delivered(answer_json(app, request, job, waited_ms, 502, &body, None));
        }
        let ok = in_band(app, request, job, waited_ms, &answer, NO_OUTPUT_PLACEHOLDER);
        return delivered(ok);
    }
    if let Some(text) = &app.knobs.error_text {
        let content = error_content(&app.knobs.error_text_mark, text);
        if !job.stream {
            let body = completion_body(&answer, &content);
            return delivered(answer_json(app, request, job, waited_ms, 200, &body, None));
        }
        return delivered(in_band(app, request, job, waited_ms, &answer, &content));
    }
    if let Some(call) = &job.tool {
        let ok = tools::answer(app, request, job, waited_ms, &answer, call, watch);
        return if ok {
            Outcome::Success
        } else {
            Outcome::ClientGone
        };
    }
    if !job.stream {
        if !pause(job.delay, watch) {
            log_line(&format!(
                "completion req_id={} client disconnected while being served; stopped",
                job.req_id
            ));
            drop(request.into_writer());
            return Outcome::ClientGone;
        }
        let body = completion_body(&answer, &job.content);
        return if answer_json(app, request, job, waited_ms, 200, &body, None) {
            Outcome::Success
        } else {
            Outcome::ClientGone
        };
    }
    let outcome = stream_answer(app, request, job, waited_ms, &answer, watch);
    if outcome == Outcome::ClientGone {
        log_line(&format!(
            "completion req_id={} client disconnected mid-stream; stopped",
            job.req_id
        ));
    }
    outcome
}

/// How long a normal turn takes upstream.
fn planned_turn(knobs: &crate::knobs::Knobs, job: &Job) -> Duration {
    let events = if job.stream {
        u64::from(knobs.stream_events) * knobs.stream_interval_ms
    } else {
        0
    };
    job.delay + Duration::from_millis(events)
}

/// A turn whose Run click stopped a turn still generating for a client that
/// left (see `page`): its prompt stays unsent, and it waits `ms` (the
/// child's own timeout) for an answer that never comes, then 504.
fn stalled(
    app: &App,
    request: Request,
    job: &Job,
    waited_ms: u128,
    ms: u64,
    watch: &mut ConnWatch,
) -> Outcome {
    log_line(&format!(
        "[{}] the page was still generating for a client that left: the Run click stopped that turn, this prompt stays unsent",
        job.req_id
    ));
    if !pause(Duration::from_millis(ms), watch) {
        drop(request.into_writer());
        return Outcome::ClientGone;
    }
    let body = json!({"detail": format!("[{}] Request processing timed out.", job.req_id)});
    if answer_json(app, request, job, waited_ms, 504, &body, None) {
        Outcome::Answered
    } else {
        Outcome::ClientGone
    }
}

/// A streamed 200 whose whole content is `content` (an in-band error or a
/// placeholder): role, content, stop, `[DONE]`. True when delivered.
fn in_band(
    app: &App,
    request: Request,
    job: &Job,
    waited_ms: u128,
    answer: &Answer<'_>,
    content: &str,
) -> bool {
    let mut out = open_stream(app, request, job, waited_ms);
    out.is_ok() && out.events(&in_band_events(answer, content)).is_ok()
}

/// The events of [`in_band`].
pub fn in_band_events(answer: &Answer<'_>, content: &str) -> Vec<String> {
    vec![
        answer.event(json!({"role": "assistant"}), None),
        answer.event(json!({"content": content}), None),
        answer.event(json!({}), Some("stop")),
        "data: [DONE]\n\n".to_string(),
    ]
}

/// The current child out of quota (see the module doc).
fn quota_answer(
    app: &App,
    request: Request,
    job: &Job,
    waited_ms: u128,
    answer: &Answer<'_>,
    watch: &mut ConnWatch,
) -> Outcome {
    let id = &job.req_id;
    let error = quota_error(&app.knobs.quota_type);
    if job.stream {
        // As the real child: its head goes out when the work starts, the
        // empty chunk and `[DONE]` when AI Studio answered 429 (after
        // `completion_delay_ms` here), and the quota is logged only then,
        // before the rotation's comments.
        let events = quota_stream_events(answer);
        let (answered, tail) = events.split_at(2);
        let mut out = open_stream(app, request, job, waited_ms);
        let mut ok =
            out.is_ok() && pause(job.delay, watch) && answered.iter().all(|e| out.chunk(e).is_ok());
        log_line(&format!(
            "[{id}] Quota limit hit during stream: {error}. Initiating rotation (Attempt 1/3)..."
        ));
        ok = ok && out.events(tail).is_ok();
        log_line(&format!("[{id}] Auth rotation failed."));
        return if ok {
            Outcome::Answered
        } else {
            Outcome::ClientGone
        };
    }
    let deadline = job.arrived + Duration::from_millis(app.knobs.quota_deadline_ms);
    let round = Duration::from_millis(app.knobs.quota_requeue_ms.max(1));
    while Instant::now() < deadline {
        log_line(&format!("[{id}] Quota Exceeded: {error}"));
        log_line(&format!(
            "⛔ GLOBAL ALERT: Quota Exceeded! Type: {} (Event Signal Sent)",
            app.knobs.quota_type
        ));
        log_line(&format!("[{id}] (Worker) ⛔ Quota exceeded, re-queueing."));
        let left = deadline.saturating_duration_since(Instant::now());
        if !pause(left.min(round), watch) {
            log_line(&format!(
                "[{id}] client disconnected while out of quota; dropped"
            ));
            drop(request.into_writer());
            return Outcome::ClientGone;
        }
    }
    let body = json!({"detail": format!("[{id}] Request processing timed out.")});
    if answer_json(app, request, job, waited_ms, 504, &body, None) {
        Outcome::Answered
    } else {
        Outcome::ClientGone
    }
}

/// The events of the current child's quota stream: one empty finishing
/// chunk with zero completion tokens, `[DONE]`, then its rotation tail.
pub fn quota_stream_events(answer: &Answer<'_>) -> Vec<String> {
    let usage = json!({"prompt_tokens": 1, "completion_tokens": 0, "total_tokens": 1});
    let mut events = vec![
        answer.event_with(
            json!({"role": "assistant", "content": ""}),
            Some("stop"),
            Some(usage),
        ),
        "data: [DONE]\n\n".to_string(),
    ];
    events.extend(QUOTA_STREAM_TAIL.iter().map(|s| s.to_string()));
    events
}

/// The older fork's internal timeout (see the module doc).
fn internal_timeout(
    app: &App,
    request: Request,
    job: &Job,
    waited_ms: u128,
    answer: &Answer<'_>,
    watch: &mut ConnWatch,
) -> Outcome {
    let silence = Duration::from_millis(app.knobs.internal_timeout_ms);
    let gone = |request: Request| {
        log_line(&format!(
            "[{}] client disconnected during the internal timeout; stopped",
            job.req_id
        ));
        drop(request.into_writer());
        Outcome::ClientGone
    };
    if !job.stream {
        if !pause(silence, watch) {
            return gone(request);
        }
        log_line(&format!(
            "[{}] 非流式请求通过辅助流失败: 内部超时",
            job.req_id
        ));
        let body = json!({"detail": format!("[{}] 辅助流处理错误 (内部超时)", job.req_id)});
        return if answer_json(app, request, job, waited_ms, 502, &body, None) {
            Outcome::Answered
        } else {
            Outcome::ClientGone
        };
    }
    let mut out = open_stream(app, request, job, waited_ms);
    if !out.is_ok() || !pause(silence, watch) {
        return Outcome::ClientGone;
    }
    log_line(&format!("[{}] 辅助流处理错误 (内部超时)", job.req_id));
    if out.events(&internal_timeout_events(answer)).is_ok() {
        Outcome::Answered
    } else {
        Outcome::ClientGone
    }
}

/// The events of the fork's internal-timeout stream.
pub fn internal_timeout_events(answer: &Answer<'_>) -> Vec<String> {
    vec![
        answer.event(json!({"reasoning_content": "internal_timeout"}), None),
        answer.event(json!({}), Some("stop")),
        "data: [DONE]\n\n".to_string(),
    ]
}

/// A non-streamed completion body with this content.
fn completion_body(answer: &Answer<'_>, content: &str) -> Value {
    json!({
        "id": answer.id, "object": "chat.completion", "created": answer.created,
        "model": answer.model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content},
                     "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
    })
}

/// The events of an exhausted account's streamed answer: a role chunk with
/// empty content, an empty finishing chunk, `[DONE]`.
pub fn exhausted_events(answer: &Answer<'_>) -> Vec<String> {
    vec![
        answer.event(json!({"role": "assistant", "content": ""}), None),
        answer.event(json!({"content": ""}), Some("stop")),
        "data: [DONE]\n\n".to_string(),
    ]
}

/// Ends the request's connection without sending a byte.
fn cut(app: &App, request: Request) {
    let peer = request.remote_addr().copied();
    // Taking the writer stops tiny_http from answering 500 on drop.
    let writer = request.into_writer();
    let found = peer.is_some_and(|p| crate::sock::shutdown_connection(app.args.server_port, p));
    if !found {
        log_line("warning: could not find the connection's socket to cut it");
    }
    drop(writer);
}

pub struct Answer<'a> {
    id: &'a str,
    model: &'a str,
    created: u64,
}

impl Answer<'_> {
    /// One SSE event (`data: ...\n\n`) for a chunk with this delta.
    fn event(&self, delta: Value, finish: Option<&str>) -> String {
        self.event_with(delta, finish, None)
    }

    /// [`Answer::event`] with a `usage` object.
    fn event_with(&self, delta: Value, finish: Option<&str>, usage: Option<Value>) -> String {
        let mut chunk = json!({
            "id": self.id, "object": "chat.completion.chunk", "created": self.created,
            "model": self.model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
            "testchild_sent_ms": unix_ms(),
        });
        if let Some(u) = usage {
            chunk["usage"] = u;
        }
        format!("data: {chunk}\n\n")
    }

    /// The finishing event of a good stream, carrying the answer's `usage`
    /// as the real child's last chunk does.
    fn last_event(&self) -> String {
        let mut chunk = json!({
            "id": self.id, "object": "chat.completion.chunk", "created": self.created,
            "model": self.model,
            "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}],
            "testchild_sent_ms": unix_ms(),
        });
        chunk["usage"] = json!({"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2});
        format!("data: {chunk}\n\n")
    }
}

/// An HTTP/1.1 chunked body written straight to the connection, flushed per
/// chunk so each SSE event leaves at once.
struct Chunked {
    out: Box<dyn Write + Send>,
    /// The head could not be written: the client is gone.
    failed: bool,
}

impl Chunked {
    fn is_ok(&self) -> bool {
        !self.failed
    }

    fn chunk(&mut self, data: &str) -> io::Result<()> {
        write!(self.out, "{:x}\r\n{data}\r\n", data.len())?;
        self.out.flush()
    }

    fn finish(&mut self) -> io::Result<()> {
        self.out.write_all(b"0\r\n\r\n")?;
        self.out.flush()
    }

    /// Writes these events and ends the body.
    fn events(&mut self, events: &[String]) -> io::Result<()> {
        for e in events {
            self.chunk(e)?;
        }
        self.finish()
    }
}

/// Sends a streamed answer's head (now: the turn has started) and returns
/// the body writer.
fn open_stream(app: &App, request: Request, job: &Job, waited_ms: u128) -> Chunked {
    let mut out = request.into_writer();
    let head = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream; charset=utf-8\r\n\
         Cache-Control: no-cache\r\nTransfer-Encoding: chunked\r\n\
         X-Testchild-Profile: {}\r\nX-Testchild-Port: {}\r\n\
         X-Testchild-Req-Id: {}\r\nX-Testchild-Queue-Wait-Ms: {waited_ms}\r\n\r\n",
        app.profile, app.args.server_port, job.req_id
    );
    let failed = out
        .write_all(head.as_bytes())
        .and_then(|()| out.flush())
        .is_err();
    Chunked { out, failed }
}

/// Writes the normal streamed answer with our own chunked framing on the
/// raw connection (tiny_http would buffer it). A complete answer leaves the
/// connection open for the next request, as uvicorn does; only a stream that
/// dies on purpose (`die_mid_stream`) cuts its socket, so the client sees
/// the break. Cutting finished streams raced with new connections that
/// reused the same client port.
fn stream_answer(
    app: &App,
    request: Request,
    job: &Job,
    waited_ms: u128,
    answer: &Answer<'_>,
    watch: &mut ConnWatch,
) -> Outcome {
    let peer = request.remote_addr().copied();
    let mut out = open_stream(app, request, job, waited_ms);
    if !out.is_ok() {
        return Outcome::ClientGone;
    }
    let result = (|| -> io::Result<Outcome> {
        let gone = || io::Error::new(io::ErrorKind::BrokenPipe, "client gone");
        if !pause(job.delay, watch) {
            return Err(gone());
        }
        out.chunk(&answer.event(json!({"role": "assistant"}), None))?;
        let pieces = split_content(&job.content, app.knobs.stream_events as usize);
        for (i, piece) in pieces.iter().enumerate() {
            if i > 0 && !pause(Duration::from_millis(app.knobs.stream_interval_ms), watch) {
                return Err(gone());
            }
            out.chunk(&answer.event(json!({"content": piece}), None))?;
            if i == 0 && app.knobs.die_mid_stream {
                return Ok(Outcome::Died);
            }
            if i == 0 {
                if let Some(ms) = app.knobs.stall_mid_stream_ms {
                    if !pause(Duration::from_millis(ms), watch) {
                        return Err(gone());
                    }
                }
            }
        }
        out.chunk(&answer.last_event())?;
        out.chunk("data: [DONE]\n\n")?;
        out.finish()?;
        Ok(Outcome::Success)
    })();
    match result {
        Ok(Outcome::Died) => {
            if let Some(p) = peer {
                crate::sock::shutdown_connection(app.args.server_port, p);
            }
            Outcome::Died
        }
        Ok(outcome) => outcome,
        Err(_) => Outcome::ClientGone,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_table() {
        let table: &[(&str, usize, &[&str])] = &[
            ("abcdef", 3, &["ab", "cd", "ef"]),
            ("abcdefg", 3, &["abc", "de", "fg"]),
            ("ab", 4, &["a", "b", "", ""]),
            ("", 2, &["", ""]),
            ("héllo", 5, &["h", "é", "l", "l", "o"]),
            ("xyz", 0, &["xyz"]),
            ("xyz", 1, &["xyz"]),
        ];
        for (s, n, want) in table {
            let got = split_content(s, *n);
            assert_eq!(got, *want, "split {s:?} into {n}");
            assert_eq!(got.concat(), *s);
        }
    }

    #[test]
    fn last_message() {
        let b = json!({"messages": [{"role": "user", "content": "a"},
                                    {"role": "user", "content": "hi"}]});
        assert_eq!(last_message_text(&b), "hi");
        let b = json!({"messages": [{"content": [{"type": "text", "text": "x"},
                                                 {"type": "text", "text": "y"}]}]});
        assert_eq!(last_message_text(&b), "xy");
        assert_eq!(last_message_text(&json!({})), "");
    }

    #[test]
    fn req_ids_are_seven_lowercase_alnum_and_vary() {
        let ids: std::collections::HashSet<String> = (0..2000u64).map(req_id_from).collect();
        assert!(ids.len() > 1990, "ids collide: {}", ids.len());
        for id in &ids {
            assert_eq!(id.len(), 7, "{id}");
            assert!(id.bytes().all(|b| ID_ALPHABET.contains(&b)), "{id}");
        }
    }

    fn parse_event(e: &str) -> Value {
        let data = e
            .strip_prefix("data: ")
            .unwrap()
            .strip_suffix("\n\n")
            .unwrap();
        serde_json::from_str(data).unwrap()
    }

    #[test]
    fn exhausted_stream_shape() {
        let a = Answer {
            id: "chatcmpl-abcdefg-1-1",
            model: "gemini-test",
            created: 1,
        };
        let ev = exhausted_events(&a);
        assert_eq!(ev.len(), 3);
        assert_eq!(ev[2], "data: [DONE]\n\n");
        let first = parse_event(&ev[0]);
        assert_eq!(first["object"], "chat.completion.chunk");
        assert_eq!(first["id"], "chatcmpl-abcdefg-1-1");
        assert_eq!(first["choices"][0]["delta"]["role"], "assistant");
        assert_eq!(first["choices"][0]["delta"]["content"], "");
        assert!(first["choices"][0]["finish_reason"].is_null());
        let last = parse_event(&ev[1]);
        assert_eq!(last["choices"][0]["delta"]["content"], "");
        assert_eq!(last["choices"][0]["finish_reason"], "stop");
    }

    #[test]
    fn in_band_error_shape() {
        assert_eq!(error_content("[错误", "quota"), "[错误: quota]");
        assert_eq!(
            error_content("[Error:", "boom"),
            "[Error: AI Studio error: 500 boom]"
        );
        let a = Answer {
            id: "chatcmpl-x",
            model: "m",
            created: 1,
        };
        let b = completion_body(&a, &error_content("[错误", "boom"));
        assert_eq!(b["choices"][0]["message"]["content"], "[错误: boom]");
        assert_eq!(b["choices"][0]["finish_reason"], "stop");
        let ev = in_band_events(&a, ERROR500_CONTENT);
        assert_eq!(ev.len(), 4);
        assert_eq!(
            parse_event(&ev[1])["choices"][0]["delta"]["content"],
            "[Error: AI Studio error: 500 Internal error]"
        );
        assert_eq!(parse_event(&ev[2])["choices"][0]["finish_reason"], "stop");
        assert_eq!(ev[3], "data: [DONE]\n\n");
        let ev = in_band_events(&a, NO_OUTPUT_PLACEHOLDER);
        let placeholder = parse_event(&ev[1])["choices"][0]["delta"]["content"].clone();
        assert!(placeholder
            .as_str()
            .unwrap()
            .ends_with("*(Model finished thinking but generated no output.)*"));
    }

    #[test]
    fn quota_stream_shape() {
        let a = Answer {
            id: "chatcmpl-abcdefg-1-1",
            model: "gemini-test",
            created: 1,
        };
        let ev = quota_stream_events(&a);
        assert_eq!(ev.len(), 5);
        let chunk = parse_event(&ev[0]);
        assert_eq!(chunk["choices"][0]["delta"]["content"], "");
        assert_eq!(chunk["choices"][0]["finish_reason"], "stop");
        assert_eq!(chunk["usage"]["completion_tokens"], 0);
        assert_eq!(ev[1], "data: [DONE]\n\n");
        assert!(ev[2].starts_with(": processing auth rotation"));
        assert_eq!(ev[3], ": processing auth rotation...\n\n");
        assert_eq!(ev[4], "data: {\"error\": \"Auth rotation failed.\"}\n\n");
        let err: Value =
            serde_json::from_str(ev[4].strip_prefix("data: ").unwrap().trim_end()).unwrap();
        assert_eq!(err["error"], "Auth rotation failed.");
    }

    #[test]
    fn a_rate_limits_text_says_so_as_the_real_childs_does() {
        assert_eq!(quota_error("QUOTA_EXCEEDED"), QUOTA_ERROR);
        assert!(quota_error("RATE_LIMIT").contains("429 Too Many Requests"));
        assert!(!QUOTA_ERROR.to_lowercase().contains("too many requests"));
    }

    #[test]
    fn internal_timeout_stream_shape() {
        let a = Answer {
            id: "chatcmpl-x",
            model: "m",
            created: 1,
        };
        let ev = internal_timeout_events(&a);
        assert_eq!(ev.len(), 3);
        let first = parse_event(&ev[0]);
        assert_eq!(
            first["choices"][0]["delta"],
            json!({"reasoning_content": "internal_timeout"})
        );
        assert!(first["choices"][0]["finish_reason"].is_null());
        assert_eq!(parse_event(&ev[1])["choices"][0]["finish_reason"], "stop");
        assert_eq!(ev[2], "data: [DONE]\n\n");
    }

    #[test]
    fn prompt_covers_every_message() {
        let b = json!({"messages": [
            {"role": "system", "content": "FAKE_QUOTA"},
            {"role": "user", "content": [{"type": "text", "text": "hi"}]}]});
        let p = prompt_text(&b);
        assert!(p.contains("FAKE_QUOTA") && p.contains("hi"), "{p}");
        assert_eq!(prompt_text(&json!({})), "");
    }
}
