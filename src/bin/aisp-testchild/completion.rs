//! Chat completions: the answer, its queueing, and the streamed form.
//!
//! Each completion runs on its own thread (spawned by the HTTP worker that
//! received it) so a long line of completions never starves /health. It
//! waits for its turn in the [`Lane`](crate::lane::Lane), then answers either
//! with a normal tiny_http response or, when streaming, by writing the HTTP
//! head and chunks itself: a tiny_http `Response` over a reader of unknown
//! length is buffered (~8 KiB) before sending, which would deliver SSE all at
//! once.

use crate::lane::Ticket;
use crate::{error_body, json_response, log_line, unix_ms, App, Record};
use serde_json::{json, Value};
use std::io::{self, Write};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tiny_http::Request;

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
    let model = parsed
        .get("model")
        .and_then(Value::as_str)
        .unwrap_or("gemini-test")
        .to_string();
    let stream = parsed.get("stream").and_then(Value::as_bool) == Some(true);
    let content = format!(
        "profile={} echo={}",
        app.profile,
        last_message_text(&parsed)
    );
    let req_id = Record::header(&request, "x-request-id");
    let id = format!(
        "chatcmpl-{}",
        app.completion_seq.fetch_add(1, Ordering::Relaxed) + 1
    );
    let arrived = Instant::now();

    let ticket = app.lane.enqueue(req_id.as_deref());
    let served = ticket.wait_turn();
    let queued_ms = arrived.elapsed().as_millis();
    let not_cancelled =
        served && ticket.pause(Duration::from_millis(app.knobs.completion_delay_ms));

    let answer = Answer {
        id: &id,
        model: &model,
        created: unix_secs(),
    };
    let outcome = if stream {
        stream_answer(&app, request, &ticket, &answer, &content, not_cancelled)
    } else {
        let (text, reason) = if not_cancelled {
            (content.as_str(), "stop")
        } else {
            ("cancelled", "cancelled")
        };
        let body = json!({
            "id": id, "object": "chat.completion", "created": answer.created, "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                         "finish_reason": reason}],
            "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
        });
        match request.respond(json_response(&app, 200, &body)) {
            Ok(()) if not_cancelled => "done",
            Ok(()) => "cancelled",
            Err(_) => "client-gone",
        }
    };
    drop(ticket);
    log_line(&format!(
        "completion id={id} req_id={} stream={stream} outcome={outcome} queued_ms={queued_ms} total_ms={}",
        req_id.as_deref().unwrap_or("-"),
        arrived.elapsed().as_millis()
    ));
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

struct Answer<'a> {
    id: &'a str,
    model: &'a str,
    created: u64,
}

impl Answer<'_> {
    /// One SSE event (`data: ...\n\n`) for a chunk with this delta.
    fn event(&self, delta: Value, finish: Option<&str>) -> String {
        let chunk = json!({
            "id": self.id, "object": "chat.completion.chunk", "created": self.created,
            "model": self.model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
            "testchild_sent_ms": unix_ms(),
        });
        format!("data: {chunk}\n\n")
    }
}

/// An HTTP/1.1 chunked body written straight to the connection, flushed per
/// chunk so each SSE event leaves at once.
struct Chunked {
    out: Box<dyn Write + Send>,
}

impl Chunked {
    fn chunk(&mut self, data: &str) -> io::Result<()> {
        write!(self.out, "{:x}\r\n{data}\r\n", data.len())?;
        self.out.flush()
    }

    fn finish(&mut self) -> io::Result<()> {
        self.out.write_all(b"0\r\n\r\n")?;
        self.out.flush()
    }
}

/// Writes the streamed answer with our own chunked framing on the raw
/// connection (tiny_http would buffer it). A complete answer leaves the
/// connection open for the next request, as uvicorn does; only a stream that
/// dies on purpose (`die_mid_stream`) cuts its socket, so the client sees
/// the break. Cutting finished streams raced with new connections that
/// reused the same client port.
fn stream_answer(
    app: &App,
    request: Request,
    ticket: &Ticket,
    answer: &Answer<'_>,
    content: &str,
    not_cancelled: bool,
) -> &'static str {
    let peer = request.remote_addr().copied();
    let cut = |out: Box<dyn Write + Send>| {
        if let Some(p) = peer {
            crate::sock::shutdown_connection(app.args.server_port, p);
        }
        drop(out);
    };
    let mut out = Chunked {
        out: request.into_writer(),
    };
    let head = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n\
         Transfer-Encoding: chunked\r\n\
         X-Testchild-Profile: {}\r\nX-Testchild-Port: {}\r\n\r\n",
        app.profile, app.args.server_port
    );
    let result = (|| -> io::Result<&'static str> {
        out.out.write_all(head.as_bytes())?;
        out.out.flush()?;
        out.chunk(&answer.event(json!({"role": "assistant"}), None))?;
        let mut finish = "stop";
        if !not_cancelled {
            finish = "cancelled";
        } else {
            let pieces = split_content(content, app.knobs.stream_events as usize);
            for (i, piece) in pieces.iter().enumerate() {
                if i > 0 && !ticket.pause(Duration::from_millis(app.knobs.stream_interval_ms)) {
                    finish = "cancelled";
                    break;
                }
                out.chunk(&answer.event(json!({"content": piece}), None))?;
                if i == 0 && app.knobs.die_mid_stream {
                    return Ok("died-mid-stream");
                }
                if i == 0 {
                    if let Some(ms) = app.knobs.stall_mid_stream_ms {
                        if !ticket.pause(Duration::from_millis(ms)) {
                            finish = "cancelled";
                            break;
                        }
                    }
                }
                if ticket.is_cancelled() {
                    finish = "cancelled";
                    break;
                }
            }
        }
        out.chunk(&answer.event(json!({}), Some(finish)))?;
        out.chunk("data: [DONE]\n\n")?;
        out.finish()?;
        Ok(if finish == "stop" {
            "done"
        } else {
            "cancelled"
        })
    })();
    match result {
        Ok("died-mid-stream") => {
            cut(out.out);
            "died-mid-stream"
        }
        Ok(outcome) => outcome,
        Err(_) => "client-gone",
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
}
