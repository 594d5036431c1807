//! Gemini generateContent (`/v1beta/models/{model}:generateContent`) to an
//! OpenAI chat completion and back: `contents` / `parts` (text, inline
//! images, `functionCall`, `functionResponse`), `systemInstruction`,
//! `generationConfig` (temperature, topP, maxOutputTokens, stopSequences),
//! `tools` with function declarations and `toolConfig`; the answer's
//! candidates, `finishReason` and `usageMetadata`; the model listing and
//! the error shape. The streamed answer is `gemini_stream`'s.
//!
//! Field names are read in either spelling (`inlineData`, `inline_data`),
//! as Google's REST API reads them. Not translated (ignored): safety
//! settings, `cachedContent`, `topK`, `candidateCount`, response schemas,
//! `thought` parts. Parts the child cannot take (`fileData`, code
//! execution, other tools) are a 400 naming the field.

use serde_json::{json, Map, Value};

use super::schema::{field, json_schema};
use super::{bad, EdgeError};

/// The chat completion request for a generateContent request.
pub fn request(model: &str, stream: bool, req: &Value) -> Result<Value, EdgeError> {
    let mut out = Map::new();
    out.insert("model".into(), json!(model));
    let mut messages = Vec::new();
    if let Some(sys) = field(req, "systemInstruction").filter(|s| !s.is_null()) {
        let text = texts(sys, "systemInstruction")?;
        if !text.is_empty() {
            messages.push(json!({"role": "system", "content": text}));
        }
    }
    let contents = field(req, "contents")
        .and_then(Value::as_array)
        .ok_or_else(|| bad("contents", "required: an array of contents"))?;
    let mut calls = Calls::default();
    for (i, c) in contents.iter().enumerate() {
        content(c, i, &mut calls, &mut messages)?;
    }
    out.insert("messages".into(), Value::Array(messages));
    if let Some(cfg) = field(req, "generationConfig").filter(|c| !c.is_null()) {
        config(cfg, &mut out)?;
    }
    if stream {
        out.insert("stream".into(), json!(true));
    }
    tools(req, &mut out)?;
    Ok(Value::Object(out))
}

/// The text of a `Content` that may hold text parts only.
fn texts(c: &Value, at: &str) -> Result<String, EdgeError> {
    if let Some(s) = c.as_str() {
        return Ok(s.to_string());
    }
    let parts = field(c, "parts")
        .and_then(Value::as_array)
        .ok_or_else(|| bad(format!("{at}.parts"), "required"))?;
    let mut out = Vec::new();
    for (i, p) in parts.iter().enumerate() {
        match p.get("text").and_then(Value::as_str) {
            Some(t) => out.push(t),
            None => {
                return Err(bad(
                    format!("{at}.parts[{i}]"),
                    "only text parts are accepted here",
                ))
            }
        }
    }
    Ok(out.join("\n"))
}

/// The ids given to the model's function calls, so that the responses
/// that follow name the same ones (Gemini pairs them by name and order).
#[derive(Default)]
struct Calls {
    seq: usize,
    open: Vec<(String, String)>,
}

impl Calls {
    fn call(&mut self, name: &str, id: Option<&str>) -> String {
        self.seq += 1;
        let id = id
            .map(str::to_string)
            .unwrap_or_else(|| format!("call_{}_{name}", self.seq));
        self.open.push((name.to_string(), id.clone()));
        id
    }

    fn answer(&mut self, name: &str, id: Option<&str>) -> String {
        if let Some(id) = id {
            self.open.retain(|(_, i)| i != id);
            return id.to_string();
        }
        match self.open.iter().position(|(n, _)| n == name) {
            Some(k) => self.open.remove(k).1,
            None => {
                self.seq += 1;
                format!("call_{}_{name}", self.seq)
            }
        }
    }
}

fn content(c: &Value, i: usize, calls: &mut Calls, out: &mut Vec<Value>) -> Result<(), EdgeError> {
    let at = format!("contents[{i}]");
    let role = match c.get("role").and_then(Value::as_str) {
        None | Some("user") => "user",
        Some("model") => "assistant",
        // Older clients send function responses in a "function" turn.
        Some("function" | "tool") => "user",
        Some(_) => return Err(bad(format!("{at}.role"), "must be \"user\" or \"model\"")),
    };
    let parts = field(c, "parts")
        .and_then(Value::as_array)
        .ok_or_else(|| bad(format!("{at}.parts"), "required: an array of parts"))?;
    let mut user_parts = Vec::new();
    let mut text = String::new();
    let mut tool_calls = Vec::new();
    for (j, p) in parts.iter().enumerate() {
        let pat = format!("{at}.parts[{j}]");
        if p.get("thought").and_then(Value::as_bool) == Some(true) {
            continue;
        }
        if let Some(t) = p.get("text").and_then(Value::as_str) {
            if role == "assistant" {
                text.push_str(t);
            } else {
                user_parts.push(json!({"type": "text", "text": t}));
            }
        } else if let Some(d) = field(p, "inlineData") {
            if role == "assistant" {
                return Err(bad(pat, "a model turn cannot carry inline data here"));
            }
            user_parts.push(inline(d, &format!("{pat}.inlineData"))?);
        } else if let Some(f) = field(p, "functionCall") {
            let name = f
                .get("name")
                .and_then(Value::as_str)
                .ok_or_else(|| bad(format!("{pat}.functionCall.name"), "required"))?;
            let id = calls.call(name, f.get("id").and_then(Value::as_str));
            let args = f.get("args").cloned().unwrap_or_else(|| json!({}));
            tool_calls.push(json!({"id": id, "type": "function",
                                   "function": {"name": name, "arguments": args.to_string()}}));
        } else if let Some(r) = field(p, "functionResponse") {
            let name = r
                .get("name")
                .and_then(Value::as_str)
                .ok_or_else(|| bad(format!("{pat}.functionResponse.name"), "required"))?;
            let id = calls.answer(name, r.get("id").and_then(Value::as_str));
            let response = r.get("response").cloned().unwrap_or(Value::Null);
            out.push(json!({"role": "tool", "tool_call_id": id, "content": response.to_string()}));
        } else if p.as_object().is_some_and(|o| {
            o.keys()
                .all(|k| k == "thoughtSignature" || k == "thought_signature")
        }) {
            // A bare signature carries nothing the child can read.
        } else {
            return Err(bad(
                pat,
                "only text, inlineData, functionCall and functionResponse parts are supported",
            ));
        }
    }
    if role == "assistant" {
        if text.is_empty() && tool_calls.is_empty() {
            return Ok(());
        }
        let mut msg = json!({"role": "assistant",
                             "content": if text.is_empty() { Value::Null } else { json!(text) }});
        if !tool_calls.is_empty() {
            msg["tool_calls"] = Value::Array(tool_calls);
        }
        out.push(msg);
    } else if !user_parts.is_empty() {
        out.push(json!({"role": "user", "content": user_parts}));
    }
    Ok(())
}

fn inline(d: &Value, at: &str) -> Result<Value, EdgeError> {
    let mime = field(d, "mimeType").and_then(Value::as_str);
    let data = d.get("data").and_then(Value::as_str);
    match (mime, data) {
        (Some(m), Some(data)) if m.starts_with("image/") => Ok(json!({
            "type": "image_url", "image_url": {"url": format!("data:{m};base64,{data}")}
        })),
        (Some(m), Some(_)) => Err(bad(
            format!("{at}.mimeType"),
            format!("\"{m}\" is not supported; inline data must be an image"),
        )),
        _ => Err(bad(at, "needs mimeType and data")),
    }
}

fn config(cfg: &Value, out: &mut Map<String, Value>) -> Result<(), EdgeError> {
    let pairs = [
        ("temperature", "temperature"),
        ("topP", "top_p"),
        ("maxOutputTokens", "max_tokens"),
        ("seed", "seed"),
        ("presencePenalty", "presence_penalty"),
        ("frequencyPenalty", "frequency_penalty"),
    ];
    for (from, to) in pairs {
        match field(cfg, from) {
            Some(n) if n.is_number() => {
                out.insert(to.into(), n.clone());
            }
            None | Some(Value::Null) => {}
            Some(_) => return Err(bad(format!("generationConfig.{from}"), "must be a number")),
        }
    }
    if let Some(stops) = field(cfg, "stopSequences").filter(|s| !s.is_null()) {
        if !stops
            .as_array()
            .is_some_and(|a| a.iter().all(Value::is_string))
        {
            return Err(bad(
                "generationConfig.stopSequences",
                "must be an array of strings",
            ));
        }
        if !stops.as_array().is_some_and(Vec::is_empty) {
            out.insert("stop".into(), stops.clone());
        }
    }
    if field(cfg, "responseMimeType").and_then(Value::as_str) == Some("application/json") {
        out.insert("response_format".into(), json!({"type": "json_object"}));
    }
    Ok(())
}

fn tools(req: &Value, out: &mut Map<String, Value>) -> Result<(), EdgeError> {
    let mut fns = Vec::new();
    for (i, t) in field(req, "tools")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .enumerate()
    {
        let Some(obj) = t.as_object() else {
            return Err(bad(format!("tools[{i}]"), "must be an object"));
        };
        for key in obj.keys() {
            if key != "functionDeclarations" && key != "function_declarations" {
                return Err(bad(
                    format!("tools[{i}].{key}"),
                    "only functionDeclarations tools are supported",
                ));
            }
        }
        for (j, d) in field(t, "functionDeclarations")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .enumerate()
        {
            let name = d.get("name").and_then(Value::as_str).ok_or_else(|| {
                bad(
                    format!("tools[{i}].functionDeclarations[{j}].name"),
                    "required",
                )
            })?;
            let params = field(d, "parametersJsonSchema")
                .or_else(|| d.get("parameters"))
                .map(json_schema)
                .unwrap_or_else(|| json!({"type": "object", "properties": {}}));
            let mut f = json!({"name": name, "parameters": params});
            if let Some(desc) = d.get("description").and_then(Value::as_str) {
                f["description"] = json!(desc);
            }
            fns.push(json!({"type": "function", "function": f}));
        }
    }
    if !fns.is_empty() {
        out.insert("tools".into(), Value::Array(fns));
    }
    let Some(fc) = field(req, "toolConfig").and_then(|c| field(c, "functionCallingConfig")) else {
        return Ok(());
    };
    let allowed: Vec<&str> = field(fc, "allowedFunctionNames")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let choice = match fc.get("mode").and_then(Value::as_str) {
        None | Some("AUTO" | "MODE_UNSPECIFIED" | "VALIDATED") => json!("auto"),
        Some("ANY") if allowed.len() == 1 => {
            json!({"type": "function", "function": {"name": allowed[0]}})
        }
        Some("ANY") => json!("required"),
        Some("NONE") => json!("none"),
        Some(_) => {
            return Err(bad(
                "toolConfig.functionCallingConfig.mode",
                "must be AUTO, ANY or NONE",
            ))
        }
    };
    out.insert("tool_choice".into(), choice);
    Ok(())
}

/// Gemini's `finishReason` for an OpenAI `finish_reason`.
pub fn finish_reason(finish: Option<&str>) -> &'static str {
    match finish {
        Some("length") => "MAX_TOKENS",
        Some("content_filter") => "SAFETY",
        _ => "STOP",
    }
}

/// A function call part for a child's tool call.
pub fn call_part(id: Option<&str>, name: &str, arguments: &str) -> Value {
    let args = match serde_json::from_str::<Value>(arguments) {
        Ok(v @ Value::Object(_)) => v,
        _ if arguments.trim().is_empty() => json!({}),
        _ => json!({ "_raw": arguments }),
    };
    let mut f = json!({"name": name, "args": args});
    if let Some(id) = id.filter(|i| !i.is_empty()) {
        f["id"] = json!(id);
    }
    json!({ "functionCall": f })
}

/// `usageMetadata` for an OpenAI `usage`.
pub fn usage_metadata(usage: Option<&Value>) -> Value {
    let n = |k: &str| {
        usage
            .and_then(|u| u.get(k))
            .and_then(Value::as_u64)
            .unwrap_or(0)
    };
    let (p, c) = (n("prompt_tokens"), n("completion_tokens"));
    let total = usage
        .and_then(|u| u.get("total_tokens"))
        .and_then(Value::as_u64)
        .unwrap_or(p + c);
    json!({"promptTokenCount": p, "candidatesTokenCount": c, "totalTokenCount": total})
}

/// The generateContent answer for a whole chat completion.
pub fn response(chat: &Value, model: &str) -> Option<Value> {
    let choice = chat.get("choices")?.as_array()?.first()?;
    let msg = choice.get("message")?;
    let mut parts = Vec::new();
    if let Some(t) = msg.get("content").and_then(Value::as_str) {
        if !t.is_empty() {
            parts.push(json!({"text": t}));
        }
    }
    for call in msg
        .get("tool_calls")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let f = call.get("function")?;
        parts.push(call_part(
            call.get("id").and_then(Value::as_str),
            f.get("name").and_then(Value::as_str).unwrap_or(""),
            f.get("arguments").and_then(Value::as_str).unwrap_or(""),
        ));
    }
    let finish = finish_reason(choice.get("finish_reason").and_then(Value::as_str));
    Some(json!({
        "candidates": [{"content": {"role": "model", "parts": parts},
                        "finishReason": finish, "index": 0}],
        "usageMetadata": usage_metadata(chat.get("usage")),
        "modelVersion": chat.get("model").and_then(Value::as_str).filter(|m| !m.is_empty()).unwrap_or(model),
        "responseId": chat.get("id").and_then(Value::as_str).unwrap_or(""),
    }))
}

fn model_entry(m: &Value) -> Option<Value> {
    let id = m.get("id").and_then(Value::as_str)?;
    Some(json!({
        "name": format!("models/{id}"),
        "baseModelId": id,
        "version": "001",
        "displayName": id,
        "description": "served by the fleet's children",
        "supportedGenerationMethods": ["generateContent", "streamGenerateContent", "countTokens"],
    }))
}

/// The Gemini model list for a child's OpenAI one.
pub fn models(list: &Value) -> Option<Value> {
    let models: Vec<Value> = super::child_models(list)?
        .iter()
        .filter_map(model_entry)
        .collect();
    Some(json!({ "models": models }))
}

/// One model, or a 404-shaped error body when the children do not list it.
pub fn model(list: &Value, id: &str) -> Option<Value> {
    let found = super::child_model(list, id)?;
    Some(match found.and_then(model_entry) {
        Some(m) => m,
        None => error(404, &format!("models/{id} is not found")),
    })
}

/// Google's error shape, its `status` by HTTP status.
pub fn error(status: u16, message: &str) -> Value {
    let s = match status {
        400 | 413 | 422 => "INVALID_ARGUMENT",
        401 => "UNAUTHENTICATED",
        403 => "PERMISSION_DENIED",
        404 => "NOT_FOUND",
        409 => "ABORTED",
        429 => "RESOURCE_EXHAUSTED",
        501 => "UNIMPLEMENTED",
        502 | 503 => "UNAVAILABLE",
        504 => "DEADLINE_EXCEEDED",
        _ => "INTERNAL",
    };
    json!({"error": {"code": status, "message": message, "status": s}})
}

#[cfg(test)]
#[path = "gemini_tests.rs"]
mod tests;
