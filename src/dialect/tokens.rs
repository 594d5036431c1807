//! The token count the edge answers for `count_tokens` / `countTokens`
//! without asking a model: no child has a tokenizer endpoint, and a count
//! must not cost a completion. The estimate walks the request's JSON and
//! counts what a model reads: text at about four characters per token for
//! Latin script (the ratio Google and Anthropic both quote for English),
//! one token per character of other scripts (CJK text tokenizes near one
//! per character), a fixed 258 tokens per image (Gemini's figure for an
//! image up to 384 px a side), tool definitions and inputs by their JSON
//! text, and a few tokens of framing per message. It is an estimate:
//! expect it within about a quarter of a real tokenizer's count for
//! English prose, further off for code and unusual text.

use serde_json::Value;

/// Tokens one image is counted as.
pub const IMAGE_TOKENS: u64 = 258;
/// Framing tokens per message (role, separators).
const PER_MESSAGE: u64 = 4;

/// The estimated input tokens of a request in either dialect.
pub fn estimate(req: &Value) -> u64 {
    let mut t = Tally::default();
    t.walk(req, None);
    t.total()
}

#[derive(Default)]
struct Tally {
    latin: u64,
    other: u64,
    images: u64,
    messages: u64,
}

impl Tally {
    fn total(&self) -> u64 {
        self.latin.div_ceil(4)
            + self.other
            + self.images * IMAGE_TOKENS
            + self.messages * PER_MESSAGE
    }

    fn text(&mut self, s: &str) {
        for c in s.chars() {
            if (c as u32) < 0x250 {
                self.latin += 1;
            } else {
                self.other += 1;
            }
        }
    }

    /// Count what a model reads under `v`; `key` is the field it sits in.
    fn walk(&mut self, v: &Value, key: Option<&str>) {
        match v {
            Value::String(s) => {
                if let Some(
                    "text" | "content" | "system" | "description" | "name" | "partial_json",
                ) = key
                {
                    self.text(s)
                }
            }
            Value::Array(a) => {
                let counted = matches!(key, Some("messages" | "contents"));
                for x in a {
                    if counted {
                        self.messages += 1;
                    }
                    self.walk(x, None);
                }
            }
            Value::Object(m) => {
                let kind = m.get("type").and_then(Value::as_str);
                if kind == Some("image")
                    || m.contains_key("inlineData")
                    || m.contains_key("inline_data")
                {
                    self.images += 1;
                    return;
                }
                for (k, x) in m {
                    match k.as_str() {
                        // Structured parts a model reads as JSON text.
                        "input_schema"
                        | "parameters"
                        | "parametersJsonSchema"
                        | "input"
                        | "args"
                        | "response" => self.text(&x.to_string()),
                        "model" | "stream" | "max_tokens" | "metadata" | "generationConfig"
                        | "generation_config" | "tool_choice" | "toolConfig" | "id"
                        | "tool_use_id" | "cache_control" => {}
                        _ => self.walk(x, Some(k)),
                    }
                }
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn estimates_table() {
        let table = [
            // 12 chars of text: 3 tokens, plus one message's framing.
            (
                json!({"model": "m", "messages": [{"role": "user", "content": "Hello, world"}]}),
                7,
            ),
            // Gemini: the same text in parts.
            (
                json!({"contents": [{"role": "user", "parts": [{"text": "Hello, world"}]}]}),
                7,
            ),
            // A system prompt and one image.
            (
                json!({"system": "abcd", "messages": [{"role": "user", "content": [
                    {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "AAAA"}}]}]}),
                1 + IMAGE_TOKENS + 4,
            ),
            // CJK: a token per character.
            (
                json!({"messages": [{"role": "user", "content": "你好"}]}),
                2 + 4,
            ),
        ];
        for (req, want) in table {
            assert_eq!(estimate(&req), want, "{req}");
        }
    }
}
