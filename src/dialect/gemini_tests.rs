//! Table tests from the generateContent REST reference's examples.

use super::*;

/// (model, generateContent request, the chat completion request it becomes).
fn request_table() -> Vec<(Value, Value)> {
    vec![
        // The reference's text example.
        (
            json!({"contents": [{"parts": [{"text": "Write a story about a magic backpack."}]}]}),
            json!({"model": "g", "messages": [{"role": "user", "content": [
                {"type": "text", "text": "Write a story about a magic backpack."}]}]}),
        ),
        // System instruction, generation config, chat turns, snake_case.
        (
            json!({"system_instruction": {"parts": [{"text": "You are a cat."}, {"text": "Your name is Neko."}]},
                   "generationConfig": {"temperature": 1.0, "topP": 0.8, "topK": 10,
                                        "maxOutputTokens": 800, "stopSequences": ["Title"]},
                   "contents": [{"role": "user", "parts": [{"text": "Hello"}]},
                                {"role": "model", "parts": [{"text": "Great to meet you."}]},
                                {"role": "user", "parts": [{"text": "I have two dogs."}]}]}),
            json!({"model": "g", "temperature": 1.0, "top_p": 0.8, "max_tokens": 800, "stop": ["Title"],
                   "messages": [{"role": "system", "content": "You are a cat.\nYour name is Neko."},
                                {"role": "user", "content": [{"type": "text", "text": "Hello"}]},
                                {"role": "assistant", "content": "Great to meet you."},
                                {"role": "user", "content": [{"type": "text", "text": "I have two dogs."}]}]}),
        ),
        // An inline image.
        (
            json!({"contents": [{"parts": [{"text": "Tell me about this instrument"},
                   {"inline_data": {"mime_type": "image/jpeg", "data": "/9j/4AAQ"}}]}]}),
            json!({"model": "g", "messages": [{"role": "user", "content": [
                {"type": "text", "text": "Tell me about this instrument"},
                {"type": "image_url", "image_url": {"url": "data:image/jpeg;base64,/9j/4AAQ"}}]}]}),
        ),
        // The function calling guide: declarations, a call, its response.
        (
            json!({"tools": [{"functionDeclarations": [{"name": "set_light_values",
                     "description": "Sets the brightness.",
                     "parameters": {"type": "OBJECT", "properties": {"brightness": {"type": "INTEGER"}},
                                    "required": ["brightness"]}}]}],
                   "toolConfig": {"functionCallingConfig": {"mode": "ANY", "allowedFunctionNames": ["set_light_values"]}},
                   "contents": [
                       {"role": "user", "parts": [{"text": "Dim the lights"}]},
                       {"role": "model", "parts": [{"functionCall": {"name": "set_light_values", "args": {"brightness": 25}}}]},
                       {"role": "user", "parts": [{"functionResponse": {"name": "set_light_values",
                                                   "response": {"brightness": 25}}}]}]}),
            json!({"model": "g",
                   "tools": [{"type": "function", "function": {"name": "set_light_values",
                              "description": "Sets the brightness.",
                              "parameters": {"type": "object", "properties": {"brightness": {"type": "integer"}},
                                             "required": ["brightness"]}}}],
                   "tool_choice": {"type": "function", "function": {"name": "set_light_values"}},
                   "messages": [
                       {"role": "user", "content": [{"type": "text", "text": "Dim the lights"}]},
                       {"role": "assistant", "content": null, "tool_calls": [{"id": "call_1_set_light_values",
                        "type": "function", "function": {"name": "set_light_values", "arguments": "{\"brightness\":25}"}}]},
                       {"role": "tool", "tool_call_id": "call_1_set_light_values", "content": "{\"brightness\":25}"}]}),
        ),
    ]
}

#[test]
fn requests_table() {
    for (from, want) in request_table() {
        assert_eq!(request("g", false, &from).unwrap(), want, "from {from}");
    }
    let s = request("g", true, &json!({"contents": []})).unwrap();
    assert_eq!(s["stream"], true);
}

#[test]
fn refusals_name_the_field() {
    let table = [
        (json!({}), "contents"),
        (
            json!({"contents": [{"role": "narrator", "parts": []}]}),
            "contents[0].role",
        ),
        (
            json!({"contents": [{"parts": [{"fileData": {"fileUri": "gs://x"}}]}]}),
            "contents[0].parts[0]",
        ),
        (
            json!({"contents": [{"parts": [{"inlineData": {"mimeType": "application/pdf", "data": "x"}}]}]}),
            "contents[0].parts[0].inlineData.mimeType",
        ),
        (
            json!({"contents": [], "tools": [{"googleSearch": {}}]}),
            "tools[0].googleSearch",
        ),
        (
            json!({"contents": [], "generationConfig": {"temperature": "hot"}}),
            "generationConfig.temperature",
        ),
    ];
    for (req, field) in table {
        let e = request("g", false, &req).unwrap_err();
        assert_eq!(e.field, field, "{req}: {e}");
    }
}

#[test]
fn responses_table() {
    let chat = json!({"id": "chatcmpl-1", "model": "gemini-test", "choices": [{"index": 0,
        "message": {"role": "assistant", "content": "Once upon a time"}, "finish_reason": "length"}],
        "usage": {"prompt_tokens": 8, "completion_tokens": 4, "total_tokens": 12}});
    assert_eq!(
        response(&chat, "g").unwrap(),
        json!({"candidates": [{"content": {"role": "model", "parts": [{"text": "Once upon a time"}]},
                               "finishReason": "MAX_TOKENS", "index": 0}],
               "usageMetadata": {"promptTokenCount": 8, "candidatesTokenCount": 4, "totalTokenCount": 12},
               "modelVersion": "gemini-test", "responseId": "chatcmpl-1"})
    );
    let call = json!({"choices": [{"finish_reason": "tool_calls", "message": {"content": null,
        "tool_calls": [{"id": "c1", "function": {"name": "f", "arguments": "{\"a\":1}"}}]}}]});
    let r = response(&call, "g").unwrap();
    assert_eq!(
        r["candidates"][0]["content"]["parts"],
        json!([{"functionCall": {"name": "f", "args": {"a": 1}, "id": "c1"}}])
    );
    assert_eq!(r["candidates"][0]["finishReason"], "STOP");
}

#[test]
fn models_and_errors() {
    let list = json!({"data": [{"id": "gemini-2.5-pro"}]});
    let m = models(&list).unwrap();
    assert_eq!(m["models"][0]["name"], "models/gemini-2.5-pro");
    assert!(m["models"][0]["supportedGenerationMethods"]
        .as_array()
        .unwrap()
        .contains(&json!("generateContent")));
    assert_eq!(
        model(&list, "gemini-2.5-pro").unwrap()["name"],
        "models/gemini-2.5-pro"
    );
    assert_eq!(model(&list, "x").unwrap()["error"]["status"], "NOT_FOUND");
    assert_eq!(
        error(400, "bad"),
        json!({"error": {"code": 400, "message": "bad", "status": "INVALID_ARGUMENT"}})
    );
    assert_eq!(error(503, "m")["error"]["status"], "UNAVAILABLE");
    assert_eq!(error(401, "m")["error"]["status"], "UNAUTHENTICATED");
}
