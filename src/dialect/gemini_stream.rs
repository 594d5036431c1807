//! A child's chat completion stream as Gemini's `streamGenerateContent`
//! answer: one `GenerateContentResponse` per child text event, the last
//! one with `finishReason` and `usageMetadata`. Framed as SSE (`alt=sse`:
//! `data: {..}` events) or as the JSON array Google sends without it
//! (`[{..}`, `,\r\n{..}`, ..., `]`), element by element as they come.
//!
//! A function call's arguments come from the child in pieces; Gemini sends
//! a call whole, so calls are gathered and go out in the final response.

use serde_json::{json, Value};

use super::gemini::{call_part, error, finish_reason, usage_metadata};
use super::sse::{self, ChildEvent as Event};

/// A function call being gathered.
struct Call {
    id: Option<String>,
    name: String,
    arguments: String,
}

pub struct Events {
    model: String,
    /// SSE framing (else a JSON array).
    sse_framing: bool,
    estimate: u64,
    /// Elements written so far (the array's separators).
    written: usize,
    response_id: String,
    calls: Vec<Call>,
    finish: Option<String>,
    usage: Option<Value>,
    ended: bool,
}

impl Events {
    pub fn new(model: &str, sse_framing: bool, estimate: u64) -> Events {
        Events {
            model: model.to_string(),
            sse_framing,
            estimate,
            written: 0,
            response_id: String::new(),
            calls: Vec::new(),
            finish: None,
            usage: None,
            ended: false,
        }
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
                self.element(out, &error(500, &message));
                self.close(out);
            }
            Event::End => {
                let parts: Vec<Value> = self
                    .calls
                    .iter()
                    .map(|c| call_part(c.id.as_deref(), &c.name, &c.arguments))
                    .collect();
                let mut usage = self.usage.clone();
                if usage.is_none() {
                    usage = Some(json!({"prompt_tokens": self.estimate}));
                }
                let mut r = self.response(parts);
                r["candidates"][0]["finishReason"] = json!(finish_reason(self.finish.as_deref()));
                r["usageMetadata"] = usage_metadata(usage.as_ref());
                self.element(out, &r);
                self.close(out);
            }
        }
    }
}

impl Events {
    fn chunk(&mut self, v: &Value, out: &mut Vec<u8>) {
        if self.response_id.is_empty() {
            if let Some(id) = v.get("id").and_then(Value::as_str) {
                self.response_id = id.to_string();
            }
        }
        if let Some(u) = v.get("usage").filter(|u| u.is_object()) {
            self.usage = Some(u.clone());
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
        for call in delta
            .get("tool_calls")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            self.gather(call);
        }
        if let Some(text) = delta.get("content").and_then(Value::as_str) {
            if !text.is_empty() {
                let r = self.response(vec![json!({ "text": text })]);
                self.element(out, &r);
            }
        }
    }

    fn gather(&mut self, call: &Value) {
        let index = call.get("index").and_then(Value::as_u64).unwrap_or(0) as usize;
        // Bounded by the child's indices; a wild index is taken as the next.
        let index = index.min(self.calls.len());
        if index == self.calls.len() {
            self.calls.push(Call {
                id: None,
                name: String::new(),
                arguments: String::new(),
            });
        }
        let c = &mut self.calls[index];
        if let Some(id) = call.get("id").and_then(Value::as_str) {
            c.id = Some(id.to_string());
        }
        if let Some(f) = call.get("function") {
            if let Some(n) = f.get("name").and_then(Value::as_str) {
                c.name.push_str(n);
            }
            if let Some(a) = f.get("arguments").and_then(Value::as_str) {
                c.arguments.push_str(a);
            }
        }
    }

    fn response(&self, parts: Vec<Value>) -> Value {
        json!({
            "candidates": [{"content": {"role": "model", "parts": parts}, "index": 0}],
            "modelVersion": self.model,
            "responseId": self.response_id,
        })
    }

    fn element(&mut self, out: &mut Vec<u8>, v: &Value) {
        if self.sse_framing {
            out.extend_from_slice(b"data: ");
            out.extend_from_slice(v.to_string().as_bytes());
            out.extend_from_slice(b"\r\n\r\n");
        } else {
            out.extend_from_slice(if self.written == 0 { b"[" } else { b",\r\n" });
            out.extend_from_slice(v.to_string().as_bytes());
        }
        self.written += 1;
    }

    fn close(&mut self, out: &mut Vec<u8>) {
        if !self.sse_framing {
            out.extend_from_slice(if self.written == 0 { b"[]" } else { b"]" });
        }
        self.ended = true;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunk(delta: Value, finish: Option<&str>) -> String {
        format!(
            "data: {}\n\n",
            json!({"id": "chatcmpl-z", "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})
        )
    }

    fn run(sse: bool, pieces: &[String]) -> Vec<u8> {
        let mut e = Events::new("gemini-test", sse, 3);
        let (mut child, mut out) = (super::sse::Events::default(), Vec::new());
        for p in pieces {
            child.feed(p.as_bytes(), &mut e, &mut out);
        }
        child.end(&mut e, &mut out);
        out
    }

    fn text_stream() -> Vec<String> {
        vec![
            chunk(json!({"role": "assistant"}), None),
            chunk(json!({"content": "Hel"}), None),
            chunk(json!({"content": "lo"}), None),
            format!(
                "data: {}\n\n",
                json!({"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}],
                       "usage": {"prompt_tokens": 4, "completion_tokens": 2, "total_tokens": 6}})
            ),
            "data: [DONE]\n\n".into(),
        ]
    }

    #[test]
    fn sse_framing_one_response_per_event() {
        let out = String::from_utf8(run(true, &text_stream())).unwrap();
        let events: Vec<Value> = out
            .split("\r\n\r\n")
            .filter(|e| !e.is_empty())
            .map(|e| serde_json::from_str(e.strip_prefix("data: ").unwrap()).unwrap())
            .collect();
        assert_eq!(events.len(), 3);
        assert_eq!(
            events[0]["candidates"][0]["content"]["parts"][0]["text"],
            "Hel"
        );
        assert_eq!(events[0]["candidates"][0]["content"]["role"], "model");
        assert_eq!(events[0]["responseId"], "chatcmpl-z");
        assert_eq!(events[2]["candidates"][0]["finishReason"], "STOP");
        assert_eq!(
            events[2]["usageMetadata"],
            json!({"promptTokenCount": 4, "candidatesTokenCount": 2, "totalTokenCount": 6})
        );
    }

    #[test]
    fn array_framing_is_one_json_array() {
        let out = run(false, &text_stream());
        let v: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v.as_array().unwrap().len(), 3);
        assert_eq!(v[1]["candidates"][0]["content"]["parts"][0]["text"], "lo");
        let empty = run(false, &[]);
        let v: Value = serde_json::from_slice(&empty).unwrap();
        assert_eq!(v.as_array().unwrap().len(), 1, "the final response, always");
    }

    #[test]
    fn a_function_call_goes_out_whole() {
        let call = |args: &str, name: Option<&str>| {
            let mut f = json!({"arguments": args});
            if let Some(n) = name {
                f["name"] = json!(n);
            }
            chunk(json!({"tool_calls": [{"index": 0, "function": f}]}), None)
        };
        let out = run(
            false,
            &[
                call("", Some("get_weather")),
                call("{\"location\":", None),
                call("\"Boston\"}", None),
                chunk(json!({}), Some("tool_calls")),
                "data: [DONE]\n\n".into(),
            ],
        );
        let v: Value = serde_json::from_slice(&out).unwrap();
        let last = v.as_array().unwrap().last().unwrap();
        assert_eq!(
            last["candidates"][0]["content"]["parts"][0],
            json!({"functionCall": {"name": "get_weather", "args": {"location": "Boston"}}})
        );
        assert_eq!(last["candidates"][0]["finishReason"], "STOP");
    }
}
