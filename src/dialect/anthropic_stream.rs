//! A child's chat completion stream as Anthropic's event sequence:
//! `message_start` and a `ping` when the stream opens, then per content
//! block `content_block_start`, its `content_block_delta`s (`text_delta`,
//! or `input_json_delta` for a tool call's arguments) and
//! `content_block_stop`, and at the end `message_delta` (stop reason,
//! usage) and `message_stop`. Each child event is translated as it comes,
//! so what the relay writes after a push is whole events only.
//!
//! A text block and tool calls can interleave in a child's stream; a new
//! kind of content closes the open block, as Anthropic's blocks never
//! overlap. An `error` event before `[DONE]` becomes Anthropic's `error`
//! event; anything after `[DONE]` (the current child's quota notes) is the
//! child's business, not the client's.

use serde_json::{json, Value};

use super::anthropic::{message_id, stop_reason};
use super::sse::{self, ChildEvent as Event};

/// The content block being streamed.
#[derive(Debug, Clone, PartialEq)]
enum Block {
    None,
    Text {
        index: u64,
    },
    /// A tool call: its block index and the child's tool call index.
    Tool {
        index: u64,
        call: u64,
    },
}

pub struct Events {
    model: String,
    estimate: u64,
    block: Block,
    /// The next block's index.
    next: u64,
    finish: Option<String>,
    input_tokens: Option<u64>,
    output_tokens: u64,
    /// The closing events went out: ignore the rest.
    ended: bool,
}

impl Events {
    pub fn new(model: &str, estimate: u64) -> Events {
        Events {
            model: model.to_string(),
            estimate,
            block: Block::None,
            next: 0,
            finish: None,
            input_tokens: None,
            output_tokens: 0,
            ended: false,
        }
    }

    /// `message_start` and one `ping`.
    pub fn open(&mut self, out: &mut Vec<u8>) {
        let message = json!({
            "id": message_id(Some(&unique_id())),
            "type": "message",
            "role": "assistant",
            "model": self.model,
            "content": [],
            "stop_reason": null,
            "stop_sequence": null,
            "usage": {"input_tokens": self.estimate, "output_tokens": 0},
        });
        emit(
            out,
            "message_start",
            &json!({"type": "message_start", "message": message}),
        );
        emit(out, "ping", &json!({"type": "ping"}));
    }
}

impl sse::Translate for Events {
    fn on(&mut self, ev: Event, out: &mut Vec<u8>) {
        if self.ended {
            return;
        }
        match ev {
            Event::Chunk(v) => self.chunk(&v, out),
            Event::Error(message) => {
                self.close_block(out);
                let body =
                    json!({"type": "error", "error": {"type": "api_error", "message": message}});
                emit(out, "error", &body);
                self.ended = true;
            }
            Event::End => {
                self.close_block(out);
                let reason = stop_reason(self.finish.as_deref());
                let mut usage = json!({"output_tokens": self.output_tokens});
                if let Some(n) = self.input_tokens {
                    usage["input_tokens"] = json!(n);
                }
                emit(
                    out,
                    "message_delta",
                    &json!({"type": "message_delta",
                            "delta": {"stop_reason": reason, "stop_sequence": null},
                            "usage": usage}),
                );
                emit(out, "message_stop", &json!({"type": "message_stop"}));
                self.ended = true;
            }
        }
    }
}

impl Events {
    fn chunk(&mut self, v: &Value, out: &mut Vec<u8>) {
        if let Some(u) = v.get("usage").filter(|u| u.is_object()) {
            if let Some(n) = u.get("prompt_tokens").and_then(Value::as_u64) {
                self.input_tokens = Some(n);
            }
            if let Some(n) = u.get("completion_tokens").and_then(Value::as_u64) {
                self.output_tokens = n;
            }
        }
        let Some(choice) = v.pointer("/choices/0") else {
            return;
        };
        if let Some(f) = choice.get("finish_reason").and_then(Value::as_str) {
            self.finish = Some(f.to_string());
        }
        let Some(delta) = choice.get("delta") else {
            return;
        };
        if let Some(text) = delta.get("content").and_then(Value::as_str) {
            if !text.is_empty() {
                self.text(text, out);
            }
        }
        for call in delta
            .get("tool_calls")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            self.tool_call(call, out);
        }
    }

    fn text(&mut self, text: &str, out: &mut Vec<u8>) {
        let index = match self.block {
            Block::Text { index } => index,
            _ => {
                self.close_block(out);
                let index = self.start_block(out, json!({"type": "text", "text": ""}));
                self.block = Block::Text { index };
                index
            }
        };
        emit(
            out,
            "content_block_delta",
            &json!({"type": "content_block_delta", "index": index,
                    "delta": {"type": "text_delta", "text": text}}),
        );
    }

    fn tool_call(&mut self, call: &Value, out: &mut Vec<u8>) {
        let call_index = call.get("index").and_then(Value::as_u64).unwrap_or(0);
        let f = call.get("function");
        let index = match self.block {
            Block::Tool { index, call } if call == call_index => index,
            _ => {
                self.close_block(out);
                let id = call
                    .get("id")
                    .and_then(Value::as_str)
                    .map(str::to_string)
                    .unwrap_or_else(|| format!("toolu_{}", unique_id()));
                let name = f
                    .and_then(|f| f.get("name"))
                    .and_then(Value::as_str)
                    .unwrap_or("");
                let index = self.start_block(
                    out,
                    json!({"type": "tool_use", "id": id, "name": name, "input": {}}),
                );
                self.block = Block::Tool {
                    index,
                    call: call_index,
                };
                index
            }
        };
        let args = f
            .and_then(|f| f.get("arguments"))
            .and_then(Value::as_str)
            .unwrap_or("");
        if !args.is_empty() {
            emit(
                out,
                "content_block_delta",
                &json!({"type": "content_block_delta", "index": index,
                        "delta": {"type": "input_json_delta", "partial_json": args}}),
            );
        }
    }

    fn start_block(&mut self, out: &mut Vec<u8>, block: Value) -> u64 {
        let index = self.next;
        self.next += 1;
        emit(
            out,
            "content_block_start",
            &json!({"type": "content_block_start", "index": index, "content_block": block}),
        );
        index
    }

    fn close_block(&mut self, out: &mut Vec<u8>) {
        let index = match self.block {
            Block::None => return,
            Block::Text { index } | Block::Tool { index, .. } => index,
        };
        emit(
            out,
            "content_block_stop",
            &json!({"type": "content_block_stop", "index": index}),
        );
        self.block = Block::None;
    }
}

fn emit(out: &mut Vec<u8>, name: &str, data: &Value) {
    out.extend_from_slice(b"event: ");
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b"\ndata: ");
    out.extend_from_slice(data.to_string().as_bytes());
    out.extend_from_slice(b"\n\n");
}

/// An id no other answer of this process has.
pub fn unique_id() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static SEQ: AtomicU64 = AtomicU64::new(1);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    format!(
        "edge{:x}{:x}",
        nanos & 0xffff_ffff_ffff,
        SEQ.fetch_add(1, Ordering::Relaxed)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The (event name, data) pairs of a translated stream.
    fn events(out: &[u8]) -> Vec<(String, Value)> {
        let text = String::from_utf8(out.to_vec()).unwrap();
        text.split("\n\n")
            .filter(|e| !e.is_empty())
            .map(|e| {
                let (name, data) = e.split_once('\n').unwrap();
                let name = name.strip_prefix("event: ").unwrap().to_string();
                let data: Value =
                    serde_json::from_str(data.strip_prefix("data: ").unwrap()).unwrap();
                assert_eq!(data["type"], json!(name), "type matches the event name");
                (name, data)
            })
            .collect()
    }

    fn chunk(delta: Value, finish: Option<&str>) -> String {
        format!(
            "data: {}\n\n",
            json!({"id": "chatcmpl-a", "object": "chat.completion.chunk",
                   "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})
        )
    }

    fn run(pieces: &[String]) -> Vec<(String, Value)> {
        let mut e = Events::new("gemini-test", 9);
        let (mut child, mut out) = (sse::Events::default(), Vec::new());
        e.open(&mut out);
        for p in pieces {
            // Split each piece in two to prove events may span reads.
            let (a, b) = p.as_bytes().split_at(p.len() / 2);
            child.feed(a, &mut e, &mut out);
            child.feed(b, &mut e, &mut out);
        }
        child.end(&mut e, &mut out);
        events(&out)
    }

    #[test]
    fn a_text_stream_is_the_documented_sequence() {
        let got = run(&[
            chunk(json!({"role": "assistant"}), None),
            chunk(json!({"content": "Hello"}), None),
            chunk(json!({"content": "!"}), None),
            format!(
                "data: {}\n\n",
                json!({"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}],
                       "usage": {"prompt_tokens": 5, "completion_tokens": 2}})
            ),
            "data: [DONE]\n\n".to_string(),
            ": processing auth rotation...\n\ndata: {\"error\": \"Auth rotation failed.\"}\n\n"
                .to_string(),
        ]);
        let names: Vec<&str> = got.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            [
                "message_start",
                "ping",
                "content_block_start",
                "content_block_delta",
                "content_block_delta",
                "content_block_stop",
                "message_delta",
                "message_stop"
            ]
        );
        assert_eq!(got[0].1["message"]["usage"]["input_tokens"], 9);
        assert_eq!(got[0].1["message"]["content"], json!([]));
        assert_eq!(
            got[2].1["content_block"],
            json!({"type": "text", "text": ""})
        );
        assert_eq!(
            got[3].1["delta"],
            json!({"type": "text_delta", "text": "Hello"})
        );
        assert_eq!(got[6].1["delta"]["stop_reason"], "end_turn");
        assert_eq!(
            got[6].1["usage"],
            json!({"output_tokens": 2, "input_tokens": 5})
        );
    }

    #[test]
    fn tool_calls_become_tool_use_blocks_with_json_deltas() {
        let call = |id: Option<&str>, name: Option<&str>, args: &str| {
            let mut f = json!({"arguments": args});
            if let Some(n) = name {
                f["name"] = json!(n);
            }
            let mut c = json!({"index": 0, "type": "function", "function": f});
            if let Some(i) = id {
                c["id"] = json!(i);
            }
            chunk(json!({"tool_calls": [c]}), None)
        };
        let got = run(&[
            chunk(json!({"content": "Let me check."}), None),
            call(Some("call_1"), Some("get_weather"), ""),
            call(None, None, "{\"location\":"),
            call(None, None, " \"Paris\"}"),
            chunk(json!({}), Some("tool_calls")),
            "data: [DONE]\n\n".to_string(),
        ]);
        let names: Vec<&str> = got.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            [
                "message_start",
                "ping",
                "content_block_start",
                "content_block_delta",
                "content_block_stop",
                "content_block_start",
                "content_block_delta",
                "content_block_delta",
                "content_block_stop",
                "message_delta",
                "message_stop"
            ]
        );
        assert_eq!(
            got[5].1["content_block"],
            json!({"type": "tool_use", "id": "call_1", "name": "get_weather", "input": {}})
        );
        assert_eq!(got[5].1["index"], 1);
        let json: String = got[6..8]
            .iter()
            .map(|(_, d)| d["delta"]["partial_json"].as_str().unwrap().to_string())
            .collect();
        assert_eq!(
            serde_json::from_str::<Value>(&json).unwrap(),
            json!({"location": "Paris"})
        );
        assert_eq!(got[9].1["delta"]["stop_reason"], "tool_use");
    }

    #[test]
    fn an_error_event_ends_the_stream_and_length_is_max_tokens() {
        let got = run(&[
            chunk(json!({"content": "a"}), None),
            "data: {\"error\": {\"message\": \"boom\"}}\n\n".to_string(),
        ]);
        let (name, data) = got.last().unwrap();
        assert_eq!(name, "error");
        assert_eq!(data["error"]["message"], "boom");
        let got = run(&[chunk(json!({"content": "a"}), Some("length"))]);
        assert_eq!(got[got.len() - 2].1["delta"]["stop_reason"], "max_tokens");
    }
}
