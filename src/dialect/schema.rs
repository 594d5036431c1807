//! Small JSON helpers shared by the dialects: Gemini's field names in
//! either spelling (the REST API takes `inlineData` and `inline_data`
//! alike), and a function's parameter schema in JSON Schema form (Gemini's
//! `Schema` writes its types in capitals: `OBJECT`, `STRING`).

use serde_json::{Map, Value};

/// `obj[camel]`, or the same field spelled in snake_case.
pub fn field<'a>(obj: &'a Value, camel: &str) -> Option<&'a Value> {
    if let Some(v) = obj.get(camel) {
        return Some(v);
    }
    let mut snake = String::with_capacity(camel.len() + 4);
    for c in camel.chars() {
        if c.is_ascii_uppercase() {
            snake.push('_');
            snake.push(c.to_ascii_lowercase());
        } else {
            snake.push(c);
        }
    }
    obj.get(snake.as_str())
}

/// A parameter schema as JSON Schema: `type` values in lower case, at any
/// depth (a `properties` map's keys are names, left alone).
pub fn json_schema(v: &Value) -> Value {
    match v {
        Value::Object(m) => {
            let mut out = Map::with_capacity(m.len());
            for (k, x) in m {
                let x = match (k.as_str(), x) {
                    ("type", Value::String(t)) => Value::String(t.to_ascii_lowercase()),
                    ("properties", Value::Object(props)) => Value::Object(
                        props
                            .iter()
                            .map(|(name, s)| (name.clone(), json_schema(s)))
                            .collect(),
                    ),
                    _ => json_schema(x),
                };
                out.insert(k.clone(), x);
            }
            Value::Object(out)
        }
        Value::Array(a) => Value::Array(a.iter().map(json_schema).collect()),
        other => other.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn either_spelling() {
        let v = json!({"inline_data": 1, "mimeType": 2});
        assert_eq!(field(&v, "inlineData"), Some(&json!(1)));
        assert_eq!(field(&v, "mimeType"), Some(&json!(2)));
        assert_eq!(field(&v, "other"), None);
    }

    #[test]
    fn schema_types_lowercased_names_kept() {
        let s = json!({"type": "OBJECT", "properties": {"Type": {"type": "STRING"},
                       "list": {"type": "ARRAY", "items": {"type": "INTEGER"}}}});
        assert_eq!(
            json_schema(&s),
            json!({"type": "object", "properties": {"Type": {"type": "string"},
                   "list": {"type": "array", "items": {"type": "integer"}}}})
        );
    }
}
