//! Plugin protocol v1 (docs/dag-spec.md), typed: the request a plugin reads on stdin and the
//! event lines it writes on stdout.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;

/// The version this daemon speaks.
pub const PROTOCOL: u32 = 1;

/// The request, one JSON document on the plugin's stdin. Fields are declared in alphabetical
/// order: the bytes are those of the sorted JSON object the request has always been.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Request {
    pub attempt: u32,
    pub inputs: Value,
    pub job: String,
    /// The step kind asked for (one of the plugin's `kinds`).
    pub kind: String,
    pub protocol: u32,
    pub run: String,
    /// Secret values by name: only here, never in the environment or the ledger.
    pub secrets: BTreeMap<String, String>,
    pub step: String,
    pub traceparent: String,
}

/// One event line on the plugin's stdout.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "event", rename_all = "lowercase")]
pub enum Event {
    Log {
        #[serde(default)]
        message: String,
    },
    Progress {
        #[serde(default)]
        percent: Value,
    },
    /// One named output (the result's outputs are merged over them).
    Output {
        name: Option<String>,
        #[serde(default)]
        value: Value,
    },
    Result {
        #[serde(default)]
        outputs: Value,
    },
}

impl Event {
    /// Reads an event from a parsed line; `Err` says how it breaks the protocol.
    pub fn parse(line: &Value) -> Result<Self, String> {
        match line["event"].as_str() {
            Some("log" | "progress" | "output" | "result") => {
                Event::deserialize(line).map_err(|e| format!("a malformed {} event: {e}", line["event"]))
            }
            other => Err(format!("unknown event {other:?}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_request_serializes_as_the_sorted_object_it_was() {
        let r = Request {
            attempt: 2,
            inputs: serde_json::json!({ "b": 1, "a": 2 }),
            job: "job-1".into(),
            kind: "notify".into(),
            protocol: PROTOCOL,
            run: "run-1".into(),
            secrets: BTreeMap::from([("k".to_owned(), "v".to_owned())]),
            step: "s".into(),
            traceparent: "00-x".into(),
        };
        let as_map = serde_json::json!({ "protocol": 1, "run": "run-1", "step": "s", "job": "job-1", "attempt": 2,
            "inputs": { "b": 1, "a": 2 }, "traceparent": "00-x", "secrets": { "k": "v" }, "kind": "notify" });
        assert_eq!(serde_json::to_string(&r).unwrap(), serde_json::to_string(&as_map).unwrap());
    }

    #[test]
    fn events_parse_and_unknown_ones_are_named() {
        let e = Event::parse(&serde_json::json!({ "event": "output", "name": "n", "value": 3 })).unwrap();
        assert_eq!(e, Event::Output { name: Some("n".into()), value: serde_json::json!(3) });
        assert_eq!(Event::parse(&serde_json::json!({ "event": "oops" })).unwrap_err(), "unknown event Some(\"oops\")");
    }
}
