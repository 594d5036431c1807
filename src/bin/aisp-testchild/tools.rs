//! The `tool_call` knob: a completion that offers `tools` (and whose last
//! message is not a tool's result) is answered with a call of the first
//! tool, or of the one `tool_choice` names, with arguments made from its
//! parameter schema (`"test"` for strings, 1 for numbers, true for
//! booleans, per property). Non-streamed: one message with `tool_calls`,
//! `finish_reason: "tool_calls"`. Streamed as OpenAI streams it: the call's
//! id and name first, its arguments in two pieces, then the finish and
//! the usage. A tool's result is answered with ordinary text, whose echo
//! is that result: a client's round trip can be checked end to end.

use std::time::Duration;

use serde_json::{json, Map, Value};

use super::{answer_json, open_stream, pause, Answer, ConnWatch, Job};
use crate::App;
use tiny_http::Request;

/// The call a request gets, when it gets one.
#[derive(Debug, Clone, PartialEq)]
pub struct Call {
    pub name: String,
    pub arguments: String,
}

/// The call for `body` (None: answer with text).
pub fn call_for(body: &Value) -> Option<Call> {
    let tools = body.get("tools")?.as_array()?;
    let last_is_result = body
        .get("messages")
        .and_then(Value::as_array)
        .and_then(|m| m.last())
        .and_then(|m| m.get("role"))
        .and_then(Value::as_str)
        == Some("tool");
    if last_is_result || body.get("tool_choice").and_then(Value::as_str) == Some("none") {
        return None;
    }
    let named = body
        .pointer("/tool_choice/function/name")
        .and_then(Value::as_str);
    let f = tools
        .iter()
        .filter_map(|t| t.get("function"))
        .find(|f| named.is_none() || f.get("name").and_then(Value::as_str) == named)?;
    let mut args = Map::new();
    let props = f
        .pointer("/parameters/properties")
        .and_then(Value::as_object);
    for (name, schema) in props.into_iter().flatten() {
        let v = match schema.get("type").and_then(Value::as_str) {
            Some("number" | "integer") => json!(1),
            Some("boolean") => json!(true),
            Some("array") => json!([]),
            Some("object") => json!({}),
            _ => json!("test"),
        };
        args.insert(name.clone(), v);
    }
    Some(Call {
        name: f.get("name")?.as_str()?.to_string(),
        arguments: Value::Object(args).to_string(),
    })
}

/// Answer `job` with `call`; false when the client left.
pub fn answer(
    app: &App,
    request: Request,
    job: &Job,
    waited_ms: u128,
    answer: &Answer<'_>,
    call: &Call,
    watch: &mut ConnWatch,
) -> bool {
    let id = format!("call_{}", job.req_id);
    if !job.stream {
        if !pause(Duration::from_millis(app.knobs.completion_delay_ms), watch) {
            return false;
        }
        let body = json!({
            "id": answer.id, "object": "chat.completion", "created": answer.created,
            "model": answer.model,
            "choices": [{"index": 0, "finish_reason": "tool_calls", "message": {
                "role": "assistant", "content": null,
                "tool_calls": [{"id": id, "type": "function",
                                "function": {"name": call.name, "arguments": call.arguments}}]}}],
            "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
        });
        return answer_json(app, request, job, waited_ms, 200, &body, None);
    }
    let mut out = open_stream(app, request, job, waited_ms);
    if !out.is_ok() || !pause(Duration::from_millis(app.knobs.completion_delay_ms), watch) {
        return false;
    }
    let half = call.arguments.len() / 2;
    let half = (0..=half)
        .rev()
        .find(|&i| call.arguments.is_char_boundary(i))
        .unwrap_or(0);
    let piece = |args: &str, head: bool| {
        let mut c = json!({"index": 0, "function": {"arguments": args}});
        if head {
            c["id"] = json!(id);
            c["type"] = json!("function");
            c["function"]["name"] = json!(call.name);
        }
        answer.event(json!({"tool_calls": [c]}), None)
    };
    let events = [
        answer.event(json!({"role": "assistant", "content": null}), None),
        piece("", true),
        piece(&call.arguments[..half], false),
        piece(&call.arguments[half..], false),
        answer.event_with(
            json!({}),
            Some("tool_calls"),
            Some(json!({"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2})),
        ),
        "data: [DONE]\n\n".to_string(),
    ];
    out.events(&events).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calls_table() {
        let tools = json!([
            {"type": "function", "function": {"name": "a", "parameters": {"type": "object",
                "properties": {"s": {"type": "string"}, "n": {"type": "integer"}}}}},
            {"type": "function", "function": {"name": "b"}}]);
        let user = json!([{"role": "user", "content": "x"}]);
        let table = [
            (
                json!({"messages": user, "tools": tools}),
                Some(("a", json!({"s": "test", "n": 1}))),
            ),
            (
                json!({"messages": user, "tools": tools,
                       "tool_choice": {"type": "function", "function": {"name": "b"}}}),
                Some(("b", json!({}))),
            ),
            (
                json!({"messages": user, "tools": tools, "tool_choice": "none"}),
                None,
            ),
            (
                json!({"messages": [{"role": "tool", "content": "r"}], "tools": tools}),
                None,
            ),
            (json!({"messages": user}), None),
        ];
        for (body, want) in table {
            let got = call_for(&body);
            let got = got.map(|c| (c.name, serde_json::from_str::<Value>(&c.arguments).unwrap()));
            let want = want.map(|(n, a)| (n.to_string(), a));
            assert_eq!(got, want, "{body}");
        }
    }
}
