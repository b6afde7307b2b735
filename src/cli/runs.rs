//! `stella orch run …` and `stella orch dag …`: start, watch, cancel and recover runs; manage
//! DAG versions.

use crate::cli::args::*;
use crate::cli::output::{self, s, table};
use crate::cli::target;
use crate::domain::runs::RunEvent;
use crate::exit::CliError;
use crate::kernel::event::Event;
use serde_json::{Map, Value, json};
use std::io::Write;

const P: &str = "/api/v1/orchestrator";

fn parse_inputs(pairs: &[String], file: Option<&std::path::Path>) -> Result<Map<String, Value>, CliError> {
    let mut inputs = match file {
        Some(f) => {
            let text =
                std::fs::read_to_string(f).map_err(|e| CliError::Invalid(format!("--inputs {}: {e}", f.display())))?;
            match serde_json::from_str::<Value>(&text) {
                Ok(Value::Object(m)) => m,
                _ => return Err(CliError::Invalid(format!("--inputs {}: expected a JSON object", f.display()))),
            }
        }
        None => Map::new(),
    };
    for pair in pairs {
        let (k, v) =
            pair.split_once('=').ok_or_else(|| CliError::Invalid(format!("--input {pair:?}: expected KEY=VALUE")))?;
        inputs.insert(k.to_owned(), Value::String(v.to_owned()));
    }
    Ok(inputs)
}

fn run_text(v: &Value, verbose: bool) -> String {
    let mut out = format!(
        "{} {} (DAG {} v{}) started {}{}\n",
        s(&v["id"]),
        s(&v["status"]),
        s(&v["dag"]),
        s(&v["version"]),
        s(&v["createdAt"]),
        v["finishedAt"].as_str().map(|f| format!(", finished {f}")).unwrap_or_default()
    );
    out.push_str(&format!(
        "inputs: {} (sha256 {})\n",
        serde_json::to_string(&v["inputs"]).unwrap_or_default(),
        s(&v["inputsHash"])
    ));
    let steps = v["steps"].as_array().cloned().unwrap_or_default();
    let rows: Vec<Vec<String>> = steps
        .iter()
        .map(|st| {
            let mut row = vec![s(&st["name"]), s(&st["state"]), s(&st["attempts"]), s(&st["waitReason"])];
            if verbose {
                row.extend([
                    s(&st["plugin"]),
                    s(&st["pluginDigest"]),
                    s(&st["worker"]),
                    s(&st["startedAt"]),
                    s(&st["durationMs"]),
                    s(&st["errorCode"]),
                    s(&st["error"]),
                ]);
            }
            row
        })
        .collect();
    let mut headers = vec!["STEP", "STATE", "ATTEMPTS", "WAITING FOR"];
    if verbose {
        headers.extend(["PLUGIN", "DIGEST", "WORKER", "STARTED", "MS", "ERROR CODE", "ERROR"]);
    }
    out.push_str(&table(&headers, &rows));
    if verbose {
        let attempts: Vec<Vec<String>> = v["steps"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|st| {
                st["history"].as_array().into_iter().flatten().map(|a| {
                    vec![
                        s(&st["name"]),
                        s(&a["attempt"]),
                        s(&a["worker"]),
                        s(&a["startedAt"]),
                        s(&a["finishedAt"]),
                        if a["outcome"].is_null() { "running".into() } else { s(&a["outcome"]) },
                        s(&a["errorCode"]),
                        s(&a["error"]),
                    ]
                })
            })
            .collect();
        if !attempts.is_empty() {
            out.push_str("\nattempts:\n");
            out.push_str(&table(
                &["STEP", "ATTEMPT", "WORKER", "STARTED", "FINISHED", "OUTCOME", "ERROR CODE", "ERROR"],
                &attempts,
            ));
        }
    }
    out
}

pub async fn run(g: &Global, cmd: RunCmd) -> Result<(), CliError> {
    let client = target::client(g)?;
    let v = match cmd {
        RunCmd::Start { dag, inputs, inputs_file, run_token } => {
            let inputs = parse_inputs(&inputs, inputs_file.as_deref())?;
            client
                .post(&format!("{P}/runs"), &json!({ "dag": dag, "inputs": inputs, "runToken": run_token }))
                .await?
                .ok()?
                .json()?
        }
        RunCmd::Cancel { run } => {
            let current = client.get(&format!("{P}/runs/{run}")).await?.ok()?.json()?;
            if let status @ ("succeeded" | "cancelled") = current["status"].as_str().unwrap_or_default() {
                output::print(g.format, &current, |_| format!("{run} already {status}; nothing to cancel\n"));
                return Ok(());
            }
            client.post(&format!("{P}/runs/{run}:cancel"), &json!({})).await?.ok()?.json()?
        }
        RunCmd::Status { run } => client.get(&format!("{P}/runs/{run}")).await?.ok()?.json()?,
        RunCmd::Trace { run, verbose } => {
            let v = client.get(&format!("{P}/runs/{run}")).await?.ok()?.json()?;
            output::print(g.format, &v, |v| run_text(v, verbose));
            return Ok(());
        }
        RunCmd::Retry { run, step } => client
            .post(&format!("{P}/runs/{run}/actions/retry"), &json!({ "stepRecordId": step }))
            .await?
            .ok()?
            .json()?,
        RunCmd::Skip { run, step } => client
            .post(&format!("{P}/runs/{run}/actions/skip"), &json!({ "stepRecordId": step }))
            .await?
            .ok()?
            .json()?,
        RunCmd::Abort { run } => {
            client.post(&format!("{P}/runs/{run}/actions/abort"), &json!({})).await?.ok()?.json()?
        }
        RunCmd::List => {
            let v = client.get(&format!("{P}/runs")).await?.ok()?.json()?;
            output::print(g.format, &v, |v| {
                let rows: Vec<Vec<String>> = v["runs"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|r| {
                        vec![
                            s(&r["id"]),
                            s(&r["dag"]),
                            s(&r["version"]),
                            s(&r["status"]),
                            s(&r["createdAt"]),
                            s(&r["finishedAt"]),
                        ]
                    })
                    .collect();
                table(&["RUN", "DAG", "VERSION", "STATUS", "CREATED", "FINISHED"], &rows)
            });
            return Ok(());
        }
        RunCmd::Stream { run, dag, after, until_done } => return stream(g, run, dag, after, until_done).await,
    };
    output::print(g.format, &v, |v| run_text(v, false));
    Ok(())
}

/// Prints events as they come: `--format json` one entry per line, text one line per event.
async fn stream(
    g: &Global,
    run: Option<String>,
    dag: Option<String>,
    after: Option<u64>,
    until_done: bool,
) -> Result<(), CliError> {
    let client = target::client(g)?;
    let mut query: Vec<String> = Vec::new();
    query.extend(run.as_ref().map(|r| format!("run={r}")));
    query.extend(dag.map(|d| format!("dag={d}")));

    let path = format!("{P}/runs/stream{}{}", if query.is_empty() { "" } else { "?" }, query.join("&"));
    let mut pending = String::new();
    let format = g.format;
    client
        .stream(&path, after, |chunk| {
            pending.push_str(&String::from_utf8_lossy(chunk));
            while let Some(end) = pending.find("\n\n") {
                let block: String = pending.drain(..end + 2).collect();
                let data: String = block.lines().filter_map(|l| l.strip_prefix("data:")).map(str::trim).collect();
                let kind = block.lines().find_map(|l| l.strip_prefix("event:")).map(str::trim).unwrap_or("");
                if data.is_empty() {
                    continue;
                }
                let Ok(e) = serde_json::from_str::<Value>(&data) else { continue };
                let line = match format {
                    Format::Json => data.clone(),
                    Format::Text if kind == "lagged" => format!("lagged: resume with --after {}", s(&e["resumeFrom"])),
                    Format::Text => format!(
                        "{:>8} {} {} {}",
                        s(&e["seq"]),
                        s(&e["kind"]),
                        e["subjects"]
                            .as_array()
                            .map(|a| a.iter().map(s).collect::<Vec<_>>().join(" "))
                            .unwrap_or_default(),
                        e["data"]["errorCode"].as_str().unwrap_or("")
                    ),
                };
                let mut out = std::io::stdout().lock();
                let _ = writeln!(out, "{line}");
                let _ = out.flush();
                let ends_run = RunEvent::parse(kind, &e["data"])
                    .and_then(Result::ok)
                    .is_some_and(|ev| ev.run_end().is_some() && run.as_deref() == Some(ev.run_id()));
                if kind == "lagged" || (until_done && ends_run) {
                    return false;
                }
            }
            true
        })
        .await
}

pub async fn dag(g: &Global, cmd: DagCmd) -> Result<(), CliError> {
    let client = target::client(g)?;
    let v = match cmd {
        DagCmd::List => {
            let v = client.get(&format!("{P}/dags")).await?.ok()?.json()?;
            output::print(g.format, &v, |v| {
                let rows: Vec<Vec<String>> = v["dags"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|d| {
                        let versions = d["versions"].as_array().cloned().unwrap_or_default();
                        let active = versions.iter().find(|x| x["version"] == d["active"]).cloned().unwrap_or_default();
                        vec![
                            s(&d["name"]),
                            s(&d["active"]),
                            versions.len().to_string(),
                            if active["unsigned"] == true { "unsigned (dev)".into() } else { "signed".into() },
                            if active["disabled"] == true { "disabled".into() } else { "enabled".into() },
                        ]
                    })
                    .collect();
                table(&["DAG", "ACTIVE", "VERSIONS", "SOURCE", "STATE"], &rows)
            });
            return Ok(());
        }
        DagCmd::Show { dag } => client.get(&format!("{P}/dags/{dag}")).await?.ok()?.json()?,
        DagCmd::Disable { dag, version } => {
            client.post(&format!("{P}/dags/{dag}/disable"), &json!({ "version": version })).await?.ok()?.json()?
        }
        DagCmd::Enable { dag, version } => {
            client.post(&format!("{P}/dags/{dag}/enable"), &json!({ "version": version })).await?.ok()?.json()?
        }
        DagCmd::Rollback { dag, version } => {
            client.post(&format!("{P}/dags/{dag}/rollback"), &json!({ "version": version })).await?.ok()?.json()?
        }
        DagCmd::Register { file } => {
            let spec =
                std::fs::read_to_string(&file).map_err(|e| CliError::Invalid(format!("{}: {e}", file.display())))?;
            client.post(&format!("{P}/dags"), &json!({ "spec": spec })).await?.ok()?.json()?
        }
    };
    output::print(g.format, &v, |v| {
        let rows: Vec<Vec<String>> = v["versions"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|x| {
                vec![
                    s(&x["version"]),
                    if x["version"] == v["active"] { "yes".into() } else { "-".into() },
                    if x["disabled"] == true { "disabled".into() } else { "enabled".into() },
                    if x["unsigned"] == true { "unsigned".into() } else { "signed".into() },
                    s(&x["registeredAt"]),
                    s(&x["sha256"]),
                ]
            })
            .collect();
        format!(
            "DAG {}\n{}",
            s(&v["name"]),
            table(&["VERSION", "ACTIVE", "STATE", "SOURCE", "REGISTERED", "SHA256"], &rows)
        )
    });
    Ok(())
}

pub async fn schedule(g: &Global, cmd: ScheduleCmd) -> Result<(), CliError> {
    let client = target::client(g)?;
    let v = match cmd {
        ScheduleCmd::List => client.get(&format!("{P}/schedules")).await?.ok()?.json()?,
        ScheduleCmd::Pause { dag } => {
            client.post(&format!("{P}/schedules/{dag}/pause"), &json!({})).await?.ok()?.json()?
        }
        ScheduleCmd::Resume { dag } => {
            client.post(&format!("{P}/schedules/{dag}/resume"), &json!({})).await?.ok()?.json()?
        }
        ScheduleCmd::Clear { dag } => {
            client.post(&format!("{P}/schedules/{dag}/clear"), &json!({})).await?.ok()?.json()?
        }
    };
    output::print(g.format, &v, |v| {
        let rows: Vec<Vec<String>> = v["schedules"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|x| {
                let state = if x["disabled"] == true {
                    match x["disabledReason"].as_str() {
                        Some(why) => format!("paused: {why}"),
                        None => "disabled".to_owned(),
                    }
                } else if x["paused"] == true {
                    format!("paused by {}", s(&x["pausedBy"]))
                } else {
                    "active".to_owned()
                };
                vec![s(&x["dag"]), s(&x["schedule"]), state, s(&x["nextAt"]), s(&x["lastAt"]), s(&x["lastRun"])]
            })
            .collect();
        let mut out = String::new();
        for c in v["cleared"].as_array().into_iter().flatten() {
            out.push_str(&format!("cleared schedule {} ({}) of {}\n", s(&c["index"]), s(&c["schedule"]), s(&c["dag"])));
        }
        out + &table(&["DAG", "SCHEDULE", "STATE", "NEXT", "LAST", "LAST RUN"], &rows)
    });
    Ok(())
}
