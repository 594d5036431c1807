//! Anthropic Messages (`POST /v1/messages`) to an OpenAI chat completion
//! and back: `system` (string or text blocks), text and image blocks,
//! `tool_use` / `tool_result` blocks, `tools` / `tool_choice`, the sampling
//! fields, `stop_reason` and `usage`; plus the model listing and the error
//! shape. The streamed answer is `anthropic_stream`'s.
//!
//! Not translated (dropped, as a model that ignores them would): `top_k`,
//! `metadata`, `thinking`, `cache_control`, `service_tier`; a `thinking`
//! block the client sends back is skipped. Anything else unknown is a 400
//! naming the field.

use serde_json::{json, Map, Value};

use super::{bad, EdgeError};

/// The chat completion request for a Messages request.
pub fn request(req: &Value) -> Result<Value, EdgeError> {
    let model = req
        .get("model")
        .and_then(Value::as_str)
        .filter(|m| !m.is_empty())
        .ok_or_else(|| bad("model", "required: the model to use"))?;
    let mut out = Map::new();
    out.insert("model".into(), json!(model));
    let mut messages = Vec::new();
    if let Some(system) = req.get("system").filter(|s| !s.is_null()) {
        let text = system_text(system)?;
        if !text.is_empty() {
            messages.push(json!({"role": "system", "content": text}));
        }
    }
    let list = req
        .get("messages")
        .and_then(Value::as_array)
        .ok_or_else(|| bad("messages", "required: an array of messages"))?;
    for (i, m) in list.iter().enumerate() {
        message(m, i, &mut messages)?;
    }
    out.insert("messages".into(), Value::Array(messages));
    match req.get("max_tokens") {
        Some(n) if n.is_u64() => {
            out.insert("max_tokens".into(), n.clone());
        }
        None | Some(Value::Null) => {}
        Some(_) => return Err(bad("max_tokens", "must be a positive integer")),
    }
    for (from, to) in [("temperature", "temperature"), ("top_p", "top_p")] {
        match req.get(from) {
            Some(n) if n.is_number() => {
                out.insert(to.into(), n.clone());
            }
            None | Some(Value::Null) => {}
            Some(_) => return Err(bad(from, "must be a number")),
        }
    }
    if let Some(stops) = req.get("stop_sequences").filter(|s| !s.is_null()) {
        let ok = stops
            .as_array()
            .is_some_and(|a| a.iter().all(Value::is_string));
        if !ok {
            return Err(bad("stop_sequences", "must be an array of strings"));
        }
        if !stops.as_array().is_some_and(Vec::is_empty) {
            out.insert("stop".into(), stops.clone());
        }
    }
    if req.get("stream").and_then(Value::as_bool) == Some(true) {
        out.insert("stream".into(), json!(true));
    }
    tools(req, &mut out)?;
    Ok(Value::Object(out))
}

fn system_text(system: &Value) -> Result<String, EdgeError> {
    match system {
        Value::String(s) => Ok(s.clone()),
        Value::Array(blocks) => {
            let mut parts = Vec::new();
            for (i, b) in blocks.iter().enumerate() {
                match b.get("type").and_then(Value::as_str) {
                    Some("text") => parts.push(text_of(b, &format!("system[{i}]"))?),
                    _ => {
                        return Err(bad(
                            format!("system[{i}].type"),
                            "only text blocks are accepted in system",
                        ))
                    }
                }
            }
            Ok(parts.join("\n\n"))
        }
        _ => Err(bad("system", "must be a string or an array of text blocks")),
    }
}

fn text_of(block: &Value, at: &str) -> Result<String, EdgeError> {
    block
        .get("text")
        .and_then(Value::as_str)
        .map(str::to_string)
        .ok_or_else(|| bad(format!("{at}.text"), "a text block needs a string text"))
}

/// One Anthropic message as one or more chat messages: a user turn's
/// `tool_result` blocks become `tool` messages (first, as OpenAI wants
/// them right after the assistant's calls), the rest one user message.
fn message(m: &Value, i: usize, out: &mut Vec<Value>) -> Result<(), EdgeError> {
    let at = format!("messages[{i}]");
    let role = match m.get("role").and_then(Value::as_str) {
        Some(r @ ("user" | "assistant")) => r,
        // Not in the API, but sent by some clients (Claude Code among
        // them) for a mid-conversation instruction: the child's system role.
        Some("system") => {
            let text = system_text(m.get("content").unwrap_or(&Value::Null))
                .map_err(|e| bad(format!("{at}.content"), e.problem))?;
            out.push(json!({"role": "system", "content": text}));
            return Ok(());
        }
        other => {
            return Err(bad(
                format!("{at}.role"),
                format!("must be \"user\" or \"assistant\", not {}", json!(other)),
            ))
        }
    };
    let blocks = match m.get("content") {
        Some(Value::String(s)) => {
            out.push(json!({"role": role, "content": s}));
            return Ok(());
        }
        Some(Value::Array(b)) => b,
        _ => {
            return Err(bad(
                format!("{at}.content"),
                "must be a string or an array of content blocks",
            ))
        }
    };
    let mut parts: Vec<Value> = Vec::new();
    let mut calls: Vec<Value> = Vec::new();
    let mut results: Vec<Value> = Vec::new();
    for (j, b) in blocks.iter().enumerate() {
        let bat = format!("{at}.content[{j}]");
        match b.get("type").and_then(Value::as_str) {
            Some("text") => parts.push(json!({"type": "text", "text": text_of(b, &bat)?})),
            Some("image") => parts.push(image(b, &bat)?),
            Some("tool_use") if role == "assistant" => calls.push(tool_use(b, &bat)?),
            Some("tool_result") if role == "user" => {
                let (result, images) = tool_result(b, &bat)?;
                results.push(result);
                parts.extend(images);
            }
            // Our answers carry none; a client replaying another model's
            // reasoning loses nothing the child could read.
            Some("thinking" | "redacted_thinking") => {}
            Some(other) => {
                return Err(bad(
                    format!("{bat}.type"),
                    format!("content block type \"{other}\" is not supported in a {role} message"),
                ))
            }
            None => return Err(bad(format!("{bat}.type"), "missing")),
        }
    }
    out.extend(results);
    if role == "assistant" {
        out.push(assistant(parts, calls, &at)?);
    } else if !parts.is_empty() {
        out.push(json!({"role": "user", "content": parts}));
    }
    Ok(())
}

/// An assistant turn: its text (the child's form is one string) and calls.
fn assistant(parts: Vec<Value>, calls: Vec<Value>, at: &str) -> Result<Value, EdgeError> {
    if parts.iter().any(|p| p["type"] != "text") {
        return Err(bad(
            format!("{at}.content"),
            "an assistant message cannot carry images",
        ));
    }
    let text: String = parts
        .iter()
        .filter_map(|p| p.get("text").and_then(Value::as_str))
        .collect();
    let content = if text.is_empty() && !calls.is_empty() {
        Value::Null
    } else {
        json!(text)
    };
    let mut msg = json!({"role": "assistant", "content": content});
    if !calls.is_empty() {
        msg["tool_calls"] = Value::Array(calls);
    }
    Ok(msg)
}

fn image(b: &Value, at: &str) -> Result<Value, EdgeError> {
    let src = b
        .get("source")
        .ok_or_else(|| bad(format!("{at}.source"), "an image needs a source"))?;
    let url = match src.get("type").and_then(Value::as_str) {
        Some("base64") => {
            let media = src.get("media_type").and_then(Value::as_str);
            let data = src.get("data").and_then(Value::as_str);
            match (media, data) {
                (Some(m), Some(d)) if m.starts_with("image/") => format!("data:{m};base64,{d}"),
                _ => {
                    return Err(bad(
                        format!("{at}.source"),
                        "a base64 image needs an image/* media_type and its data",
                    ))
                }
            }
        }
        Some("url") => src
            .get("url")
            .and_then(Value::as_str)
            .ok_or_else(|| bad(format!("{at}.source.url"), "missing"))?
            .to_string(),
        _ => {
            return Err(bad(
                format!("{at}.source.type"),
                "only base64 and url image sources are supported",
            ))
        }
    };
    Ok(json!({"type": "image_url", "image_url": {"url": url}}))
}

fn tool_use(b: &Value, at: &str) -> Result<Value, EdgeError> {
    let id = b.get("id").and_then(Value::as_str).unwrap_or("");
    let name = b
        .get("name")
        .and_then(Value::as_str)
        .ok_or_else(|| bad(format!("{at}.name"), "a tool_use block needs a name"))?;
    let input = b.get("input").cloned().unwrap_or_else(|| json!({}));
    Ok(json!({"id": id, "type": "function",
              "function": {"name": name, "arguments": input.to_string()}}))
}

/// A `tool_result` as a `tool` message, and the images it held (OpenAI's
/// tool messages carry text only; the images follow as user content).
fn tool_result(b: &Value, at: &str) -> Result<(Value, Vec<Value>), EdgeError> {
    let id = b
        .get("tool_use_id")
        .and_then(Value::as_str)
        .ok_or_else(|| bad(format!("{at}.tool_use_id"), "required"))?;
    let mut images = Vec::new();
    let mut text = match b.get("content") {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(inner)) => {
            let mut texts = Vec::new();
            for (k, c) in inner.iter().enumerate() {
                let cat = format!("{at}.content[{k}]");
                match c.get("type").and_then(Value::as_str) {
                    Some("text") => texts.push(text_of(c, &cat)?),
                    Some("image") => images.push(image(c, &cat)?),
                    _ => {
                        return Err(bad(
                            format!("{cat}.type"),
                            "a tool_result holds text and image blocks only",
                        ))
                    }
                }
            }
            texts.join("\n")
        }
        Some(_) => return Err(bad(format!("{at}.content"), "must be a string or blocks")),
    };
    if b.get("is_error").and_then(Value::as_bool) == Some(true) {
        text = format!("Error: {text}");
    }
    Ok((
        json!({"role": "tool", "tool_call_id": id, "content": text}),
        images,
    ))
}

fn tools(req: &Value, out: &mut Map<String, Value>) -> Result<(), EdgeError> {
    if let Some(list) = req.get("tools").filter(|t| !t.is_null()) {
        let list = list
            .as_array()
            .ok_or_else(|| bad("tools", "must be an array"))?;
        let mut fns = Vec::new();
        for (i, t) in list.iter().enumerate() {
            let name = t.get("name").and_then(Value::as_str);
            let schema = t.get("input_schema");
            let custom = matches!(t.get("type").and_then(Value::as_str), None | Some("custom"));
            match (name, schema) {
                (Some(name), Some(schema)) if custom => {
                    let mut f = json!({"name": name, "parameters": schema});
                    if let Some(d) = t.get("description").and_then(Value::as_str) {
                        f["description"] = json!(d);
                    }
                    fns.push(json!({"type": "function", "function": f}));
                }
                _ if !custom => {
                    return Err(bad(
                        format!("tools[{i}].type"),
                        "server tools are not supported; define client tools with name and input_schema",
                    ))
                }
                _ => return Err(bad(format!("tools[{i}]"), "a tool needs a name and an input_schema")),
            }
        }
        if !fns.is_empty() {
            out.insert("tools".into(), Value::Array(fns));
        }
    }
    let Some(choice) = req.get("tool_choice").filter(|c| !c.is_null()) else {
        return Ok(());
    };
    let c = match choice.get("type").and_then(Value::as_str) {
        Some("auto") => json!("auto"),
        Some("any") => json!("required"),
        Some("none") => json!("none"),
        Some("tool") => match choice.get("name").and_then(Value::as_str) {
            Some(n) => json!({"type": "function", "function": {"name": n}}),
            None => return Err(bad("tool_choice.name", "required with type \"tool\"")),
        },
        _ => {
            return Err(bad(
                "tool_choice.type",
                "must be \"auto\", \"any\", \"tool\" or \"none\"",
            ))
        }
    };
    out.insert("tool_choice".into(), c);
    if choice
        .get("disable_parallel_tool_use")
        .and_then(Value::as_bool)
        == Some(true)
    {
        out.insert("parallel_tool_calls".into(), json!(false));
    }
    Ok(())
}

/// Anthropic's `stop_reason` for an OpenAI `finish_reason`.
pub fn stop_reason(finish: Option<&str>) -> &'static str {
    match finish {
        Some("length") => "max_tokens",
        Some("tool_calls" | "function_call") => "tool_use",
        Some("content_filter") => "refusal",
        _ => "end_turn",
    }
}

/// The `stop_sequence` a choice says it stopped at (vLLM-style children
/// name it in `stop_reason`; most children cannot tell, and say nothing).
fn matched_stop(choice: &Value) -> Option<String> {
    choice
        .get("stop_reason")
        .or_else(|| choice.get("matched_stop"))
        .and_then(Value::as_str)
        .map(str::to_string)
}

/// A message id from the child's completion id.
pub fn message_id(chat_id: Option<&str>) -> String {
    let tail = chat_id
        .map(|id| id.trim_start_matches("chatcmpl-"))
        .filter(|s| !s.is_empty())
        .unwrap_or("edge");
    format!("msg_{tail}")
}

/// A tool call's arguments as the `input` object (a child's broken JSON
/// is kept whole under `_raw` rather than lost).
pub fn input_of(arguments: &str) -> Value {
    if arguments.trim().is_empty() {
        return json!({});
    }
    match serde_json::from_str::<Value>(arguments) {
        Ok(v @ Value::Object(_)) => v,
        _ => json!({ "_raw": arguments }),
    }
}

/// The Messages answer for a whole chat completion.
pub fn response(chat: &Value, model: &str) -> Option<Value> {
    let choice = chat.get("choices")?.as_array()?.first()?;
    let msg = choice.get("message")?;
    let mut content = Vec::new();
    if let Some(text) = msg.get("content").and_then(Value::as_str) {
        if !text.is_empty() {
            content.push(json!({"type": "text", "text": text}));
        }
    }
    for call in msg
        .get("tool_calls")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let f = call.get("function")?;
        content.push(json!({
            "type": "tool_use",
            "id": call.get("id").and_then(Value::as_str).unwrap_or("toolu_edge"),
            "name": f.get("name").and_then(Value::as_str).unwrap_or(""),
            "input": input_of(f.get("arguments").and_then(Value::as_str).unwrap_or("")),
        }));
    }
    let finish = choice.get("finish_reason").and_then(Value::as_str);
    let stop_seq = matched_stop(choice);
    let reason = if stop_seq.is_some() && finish == Some("stop") {
        "stop_sequence"
    } else {
        stop_reason(finish)
    };
    let usage = chat.get("usage");
    let n = |k: &str| {
        usage
            .and_then(|u| u.get(k))
            .and_then(Value::as_u64)
            .unwrap_or(0)
    };
    Some(json!({
        "id": message_id(chat.get("id").and_then(Value::as_str)),
        "type": "message",
        "role": "assistant",
        "model": chat.get("model").and_then(Value::as_str).filter(|m| !m.is_empty()).unwrap_or(model),
        "content": content,
        "stop_reason": reason,
        "stop_sequence": if reason == "stop_sequence" { json!(stop_seq) } else { Value::Null },
        "usage": {"input_tokens": n("prompt_tokens"), "output_tokens": n("completion_tokens")},
    }))
}

fn model_entry(m: &Value) -> Option<Value> {
    let id = m.get("id").and_then(Value::as_str)?;
    let created = m.get("created").and_then(Value::as_i64).unwrap_or(0);
    Some(json!({
        "type": "model",
        "id": id,
        "display_name": m.get("display_name").and_then(Value::as_str).unwrap_or(id),
        "created_at": rfc3339(created),
    }))
}

/// The Anthropic model list for a child's OpenAI one.
pub fn models(list: &Value) -> Option<Value> {
    let data: Vec<Value> = super::child_models(list)?
        .iter()
        .filter_map(model_entry)
        .collect();
    let first = data.first().map(|m| m["id"].clone()).unwrap_or(Value::Null);
    let last = data.last().map(|m| m["id"].clone()).unwrap_or(Value::Null);
    Some(json!({"data": data, "has_more": false, "first_id": first, "last_id": last}))
}

/// One model of the list, or a 404-shaped error body when it is not there.
pub fn model(list: &Value, id: &str) -> Option<Value> {
    let found = super::child_model(list, id)?;
    Some(match found.and_then(model_entry) {
        Some(m) => m,
        None => error(404, &format!("model: {id}")),
    })
}

/// Seconds since the epoch as an RFC 3339 UTC time.
fn rfc3339(secs: i64) -> String {
    crate::civil::utc(secs, 'T')
}

/// Anthropic's error shape, its `type` by status.
pub fn error(status: u16, message: &str) -> Value {
    let kind = match status {
        400 | 409 | 422 => "invalid_request_error",
        401 => "authentication_error",
        403 => "permission_error",
        404 => "not_found_error",
        413 => "request_too_large",
        429 => "rate_limit_error",
        503 | 529 => "overloaded_error",
        504 => "timeout_error",
        _ => "api_error",
    };
    json!({"type": "error", "error": {"type": kind, "message": message}})
}

#[cfg(test)]
#[path = "anthropic_tests.rs"]
mod tests;
