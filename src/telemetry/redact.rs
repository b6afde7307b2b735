//! Redaction: every appearance of a secret's value becomes `[REDACTED]` before it is logged,
//! recorded as an error or output, or ledgered. Applied to everything a plugin writes.

use serde_json::Value;

pub const MARKER: &str = "[REDACTED]";

/// Replaces every value in `secrets` found in `text`.
pub fn text(s: &str, secrets: &[String]) -> String {
    let mut out = s.to_owned();
    for secret in secrets.iter().filter(|v| !v.is_empty()) {
        if out.contains(secret.as_str()) {
            out = out.replace(secret.as_str(), MARKER);
        }
    }
    out
}

/// Redacts every string (keys and values) inside a JSON value.
pub fn json(v: &Value, secrets: &[String]) -> Value {
    match v {
        Value::String(s) => Value::String(text(s, secrets)),
        Value::Array(a) => Value::Array(a.iter().map(|x| json(x, secrets)).collect()),
        Value::Object(o) => Value::Object(o.iter().map(|(k, x)| (text(k, secrets), json(x, secrets))).collect()),
        other => other.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_replaced_wherever_they_appear() {
        let secrets = vec!["hunter2".to_owned(), String::new()];
        assert_eq!(text("pw=hunter2; again hunter2", &secrets), "pw=[REDACTED]; again [REDACTED]");
        let v = serde_json::json!({ "a": ["x hunter2"], "hunter2": 1 });
        assert_eq!(json(&v, &secrets), serde_json::json!({ "a": ["x [REDACTED]"], "[REDACTED]": 1 }));
    }
}
