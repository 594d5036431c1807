//! Table tests from the Messages API's documented examples.

use super::*;

/// (Messages request, the chat completion request it becomes).
fn request_table() -> Vec<(Value, Value)> {
    vec![
        // The documented basic request.
        (
            json!({"model": "claude-sonnet-4-5", "max_tokens": 1024,
                   "messages": [{"role": "user", "content": "Hello, Claude"}]}),
            json!({"model": "claude-sonnet-4-5", "max_tokens": 1024,
                   "messages": [{"role": "user", "content": "Hello, Claude"}]}),
        ),
        // System as blocks, sampling, stop sequences, streaming.
        (
            json!({"model": "m", "max_tokens": 5, "temperature": 0.5, "top_p": 0.9, "top_k": 3,
                   "stop_sequences": ["\n\nHuman:"], "stream": true, "metadata": {"user_id": "u"},
                   "system": [{"type": "text", "text": "Be brief.", "cache_control": {"type": "ephemeral"}},
                              {"type": "text", "text": "Be kind."}],
                   "messages": [{"role": "user", "content": [{"type": "text", "text": "Hi"}]}]}),
            json!({"model": "m", "max_tokens": 5, "temperature": 0.5, "top_p": 0.9,
                   "stop": ["\n\nHuman:"], "stream": true,
                   "messages": [{"role": "system", "content": "Be brief.\n\nBe kind."},
                                {"role": "user", "content": [{"type": "text", "text": "Hi"}]}]}),
        ),
        // A base64 image, as in the vision guide.
        (
            json!({"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": [
                {"type": "image", "source": {"type": "base64", "media_type": "image/jpeg", "data": "/9j/4AAQ"}},
                {"type": "text", "text": "Describe this image."}]}]}),
            json!({"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": [
                {"type": "image_url", "image_url": {"url": "data:image/jpeg;base64,/9j/4AAQ"}},
                {"type": "text", "text": "Describe this image."}]}]}),
        ),
        // The tool use guide's round trip: tools, a tool_use turn, its result.
        (
            json!({"model": "m", "max_tokens": 1024,
                   "tools": [{"name": "get_weather", "description": "Get the current weather in a given location",
                              "input_schema": {"type": "object", "properties": {"location": {"type": "string"}},
                                               "required": ["location"]}}],
                   "tool_choice": {"type": "any", "disable_parallel_tool_use": true},
                   "messages": [
                       {"role": "user", "content": "What's the weather like in San Francisco?"},
                       {"role": "assistant", "content": [
                           {"type": "text", "text": "I'll check."},
                           {"type": "tool_use", "id": "toolu_01A", "name": "get_weather",
                            "input": {"location": "San Francisco, CA"}}]},
                       {"role": "user", "content": [
                           {"type": "tool_result", "tool_use_id": "toolu_01A", "content": "15 degrees"},
                           {"type": "text", "text": "And tomorrow?"}]}]}),
            json!({"model": "m", "max_tokens": 1024,
                   "tools": [{"type": "function", "function": {"name": "get_weather",
                              "description": "Get the current weather in a given location",
                              "parameters": {"type": "object", "properties": {"location": {"type": "string"}},
                                             "required": ["location"]}}}],
                   "tool_choice": "required", "parallel_tool_calls": false,
                   "messages": [
                       {"role": "user", "content": "What's the weather like in San Francisco?"},
                       {"role": "assistant", "content": "I'll check.", "tool_calls": [
                           {"id": "toolu_01A", "type": "function", "function": {"name": "get_weather",
                            "arguments": "{\"location\":\"San Francisco, CA\"}"}}]},
                       {"role": "tool", "tool_call_id": "toolu_01A", "content": "15 degrees"},
                       {"role": "user", "content": [{"type": "text", "text": "And tomorrow?"}]}]}),
        ),
        // tool_choice by name; an error result in blocks.
        (
            json!({"model": "m", "tool_choice": {"type": "tool", "name": "t"},
                   "messages": [{"role": "user", "content": [{"type": "tool_result", "tool_use_id": "x",
                       "is_error": true, "content": [{"type": "text", "text": "no such city"}]}]}]}),
            json!({"model": "m", "tool_choice": {"type": "function", "function": {"name": "t"}},
                   "messages": [{"role": "tool", "tool_call_id": "x", "content": "Error: no such city"}]}),
        ),
    ]
}

#[test]
fn requests_table() {
    for (from, want) in request_table() {
        assert_eq!(request(&from).unwrap(), want, "from {from}");
    }
}

#[test]
fn refusals_name_the_field() {
    let table = [
        (json!({"messages": []}), "model"),
        (json!({"model": "m"}), "messages"),
        (
            json!({"model": "m", "messages": [{"role": "narrator", "content": "x"}]}),
            "messages[0].role",
        ),
        (
            json!({"model": "m", "messages": [{"role": "user", "content": [{"type": "document", "source": {}}]}]}),
            "messages[0].content[0].type",
        ),
        (
            json!({"model": "m", "messages": [{"role": "user", "content": [{"type": "tool_use", "name": "t"}]}]}),
            "messages[0].content[0].type",
        ),
        (
            json!({"model": "m", "messages": [], "tools": [{"type": "web_search_20250305", "name": "web_search"}]}),
            "tools[0].type",
        ),
        (
            json!({"model": "m", "messages": [], "tool_choice": {"type": "maybe"}}),
            "tool_choice.type",
        ),
        (
            json!({"model": "m", "messages": [], "max_tokens": "many"}),
            "max_tokens",
        ),
        (
            json!({"model": "m", "messages": [], "system": [{"type": "image"}]}),
            "system[0].type",
        ),
    ];
    for (req, field) in table {
        let e = request(&req).unwrap_err();
        assert_eq!(e.field, field, "{req}: {e}");
    }
}

#[test]
fn responses_table() {
    let text = json!({"id": "chatcmpl-abc", "object": "chat.completion", "model": "gemini-test",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hi! My name is Claude."},
                     "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 10, "completion_tokens": 25, "total_tokens": 35}});
    assert_eq!(
        response(&text, "asked").unwrap(),
        json!({"id": "msg_abc", "type": "message", "role": "assistant", "model": "gemini-test",
               "content": [{"type": "text", "text": "Hi! My name is Claude."}],
               "stop_reason": "end_turn", "stop_sequence": null,
               "usage": {"input_tokens": 10, "output_tokens": 25}})
    );
    let tool = json!({"id": "chatcmpl-t", "choices": [{"index": 0, "finish_reason": "tool_calls",
        "message": {"role": "assistant", "content": null, "tool_calls": [{"id": "call_1", "type": "function",
            "function": {"name": "get_weather", "arguments": "{\"location\": \"San Francisco, CA\"}"}}]}}]});
    let r = response(&tool, "m").unwrap();
    assert_eq!(r["stop_reason"], "tool_use");
    assert_eq!(r["model"], "m");
    assert_eq!(
        r["content"],
        json!([{"type": "tool_use", "id": "call_1", "name": "get_weather",
                "input": {"location": "San Francisco, CA"}}])
    );
    assert_eq!(r["usage"], json!({"input_tokens": 0, "output_tokens": 0}));
    let reasons = [
        (json!("length"), None, "max_tokens"),
        (json!("stop"), Some("###"), "stop_sequence"),
        (json!("content_filter"), None, "refusal"),
        (Value::Null, None, "end_turn"),
    ];
    for (finish, matched, want) in reasons {
        let mut c = json!({"choices": [{"message": {"content": "x"}, "finish_reason": finish}]});
        if let Some(m) = matched {
            c["choices"][0]["stop_reason"] = json!(m);
        }
        let r = response(&c, "m").unwrap();
        assert_eq!(r["stop_reason"], want);
        assert_eq!(r["stop_sequence"], json!(matched));
    }
    assert!(response(&json!({"detail": "x"}), "m").is_none());
}

#[test]
fn models_and_errors() {
    let list = json!({"object": "list", "data": [{"id": "gemini-a", "object": "model", "created": 1700000000},
                                                 {"id": "gemini-b", "object": "model"}]});
    let m = models(&list).unwrap();
    assert_eq!(
        m["data"][0],
        json!({"type": "model", "id": "gemini-a", "display_name": "gemini-a",
                                     "created_at": "2023-11-14T22:13:20Z"})
    );
    assert_eq!(m["first_id"], "gemini-a");
    assert_eq!(m["last_id"], "gemini-b");
    assert_eq!(m["has_more"], false);
    assert_eq!(model(&list, "gemini-b").unwrap()["id"], "gemini-b");
    assert_eq!(
        model(&list, "nope").unwrap()["error"]["type"],
        "not_found_error"
    );
    assert_eq!(
        error(401, "bad key"),
        json!({"type": "error", "error": {"type": "authentication_error", "message": "bad key"}})
    );
    for (status, kind) in [
        (400, "invalid_request_error"),
        (413, "request_too_large"),
        (429, "rate_limit_error"),
        (503, "overloaded_error"),
        (502, "api_error"),
    ] {
        assert_eq!(error(status, "m")["error"]["type"], kind);
    }
}
