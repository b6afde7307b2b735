//! The built-in step kinds, for tests and demos: `noop` returns its inputs as outputs, `sleep`
//! waits `inputs.ms` milliseconds, `fail` always fails (with `inputs.message` if given).

use serde_json::{Value, json};
use std::time::Duration;

/// A sleep longer than this is refused rather than holding a slot for hours.
const SLEEP_MAX_MS: u64 = 3_600_000;

/// How an attempt ended, in the terms the queue takes.
#[derive(Debug, Clone, PartialEq)]
pub enum StepResult {
    Outputs(Value),
    Failed { code: String, error: String },
}

pub async fn run(kind: &str, inputs: &Value) -> StepResult {
    match kind {
        "noop" => StepResult::Outputs(inputs.clone()),
        "sleep" => {
            let ms = inputs["ms"].as_u64().or_else(|| inputs["ms"].as_str().and_then(|s| s.parse().ok())).unwrap_or(0);
            if ms > SLEEP_MAX_MS {
                return StepResult::Failed {
                    code: "invalid_input".into(),
                    error: format!("sleep ms {ms} is above {SLEEP_MAX_MS}"),
                };
            }
            tokio::time::sleep(Duration::from_millis(ms)).await;
            StepResult::Outputs(json!({ "sleptMs": ms }))
        }
        // Queued no earlier than its time (the planner set the job's not-before): done.
        "wait" => StepResult::Outputs(json!({ "waited": true })),
        "fail" => StepResult::Failed {
            code: "step_failed".into(),
            error: inputs["message"].as_str().unwrap_or("the fail step kind always fails").to_owned(),
        },
        other => StepResult::Failed {
            code: "unknown_plugin".into(),
            error: format!("no step kind {other:?} in this executor"),
        },
    }
}
