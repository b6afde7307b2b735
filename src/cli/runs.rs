//! `stella orch run …` and `stella orch dag …`: start, watch, cancel and recover runs; manage
//! DAG versions.

use crate::api::dto;
use crate::cli::args::*;
use crate::cli::output::{self, opt, s, table};
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

pub(crate) fn run_text(v: &dto::Run, verbose: bool) -> String {
    let mut out = format!(
        "{} {} (DAG {} v{}) started {}{}\n",
        v.id,
        v.status,
        v.dag,
        v.version,
        v.created_at,
        v.finished_at.as_deref().map(|f| format!(", finished {f}")).unwrap_or_default()
    );
    if let Some(p) = &v.parent {
        let field = |k: &str| field_text(p, k);
        out.push_str(&format!("child run of {}, step {} (depth {})\n", field("runId"), field("step"), field("depth")));
    }
    for w in &v.waiting_on {
        out.push_str(&format!("waiting on {w}\n"));
    }
    for st in v.steps.iter().filter(|st| st.state != "running") {
        let Some(child) = st.runtime.as_ref().and_then(|r| r.get("subOrchestration")) else { continue };
        let field = |k: &str| field_text(child, k);
        out.push_str(&format!(
            "step {}: child run {} (DAG {} v{}) {}\n",
            st.name,
            field("childRunId"),
            field("dag"),
            field("version"),
            field("status")
        ));
    }
    for st in v.steps.iter().filter(|st| st.state == "failed" && !verbose) {
        out.push_str(&format!("step {} failed: {} ({})\n", st.name, opt(&st.error), opt(&st.error_code)));
    }
    out.push_str(&format!(
        "inputs: {} (sha256 {})\n",
        serde_json::to_string(&v.inputs).unwrap_or_default(),
        v.inputs_hash
    ));
    let rows: Vec<Vec<String>> = v
        .steps
        .iter()
        .map(|st| {
            let mut row = vec![st.name.clone(), st.state.clone(), st.attempts.to_string(), opt(&st.wait_reason)];
            if verbose {
                row.extend([
                    st.plugin.clone(),
                    opt(&st.plugin_digest),
                    opt(&st.worker),
                    opt(&st.started_at),
                    opt(&st.duration_ms),
                    opt(&st.error_code),
                    opt(&st.error),
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
        out.push_str(&attempts_text(v));
    }
    out
}

/// A JSON object's field as text: a string as is, anything else as JSON, absent as empty.
fn field_text(v: &Value, key: &str) -> String {
    v.get(key).map(|x| x.as_str().map_or_else(|| x.to_string(), str::to_owned)).unwrap_or_default()
}

/// Each step's latest attempts, as a table after a blank line and `attempts:`; empty if none.
fn attempts_text(v: &dto::Run) -> String {
    let attempts: Vec<Vec<String>> = v
        .steps
        .iter()
        .flat_map(|st| {
            st.history.iter().map(|a| {
                vec![
                    st.name.clone(),
                    a.attempt.to_string(),
                    a.worker.clone(),
                    a.started_at.clone(),
                    opt(&a.finished_at),
                    a.outcome.clone().unwrap_or_else(|| "running".into()),
                    opt(&a.error_code),
                    opt(&a.error),
                ]
            })
        })
        .collect();
    if attempts.is_empty() {
        return String::new();
    }
    let headers = ["STEP", "ATTEMPT", "WORKER", "STARTED", "FINISHED", "OUTCOME", "ERROR CODE", "ERROR"];
    format!("\nattempts:\n{}", table(&headers, &attempts))
}

fn runs_text(v: &dto::RunList) -> String {
    let rows: Vec<Vec<String>> = v
        .runs
        .iter()
        .map(|r| {
            vec![
                r.id.clone(),
                r.dag.clone(),
                r.version.to_string(),
                r.status.clone(),
                r.created_at.clone(),
                opt(&r.finished_at),
            ]
        })
        .collect();
    table(&["RUN", "DAG", "VERSION", "STATUS", "CREATED", "FINISHED"], &rows)
}

pub async fn run(g: &Global, cmd: RunCmd) -> Result<(), CliError> {
    let client = target::client(g)?;
    let (raw, v): (Value, dto::Run) = match cmd {
        RunCmd::Start { dag, inputs, inputs_file, run_token } => {
            let inputs = parse_inputs(&inputs, inputs_file.as_deref())?;
            client
                .post(&format!("{P}/runs"), &json!({ "dag": dag, "inputs": inputs, "runToken": run_token }))
                .await?
                .ok()?
                .typed()?
        }
        RunCmd::Cancel { run } => {
            let (raw, current) = client.get(&format!("{P}/runs/{run}")).await?.ok()?.typed::<dto::Run>()?;
            if let status @ ("succeeded" | "cancelled") = current.status.as_str() {
                output::show(g.format, &raw, &current, |_| format!("{run} already {status}; nothing to cancel\n"));
                return Ok(());
            }
            client.post(&format!("{P}/runs/{run}:cancel"), &json!({})).await?.ok()?.typed()?
        }
        RunCmd::Status { run } => client.get(&format!("{P}/runs/{run}")).await?.ok()?.typed()?,
        RunCmd::Trace { run, verbose } => {
            let (raw, v) = client.get(&format!("{P}/runs/{run}")).await?.ok()?.typed::<dto::Run>()?;
            let (raw_a, a) =
                client.get(&format!("{P}/approvals?state=all&run={run}")).await?.ok()?.typed::<dto::ApprovalList>()?;
            let mut raw = raw;
            raw["approvals"] = raw_a["approvals"].clone();
            output::show(g.format, &raw, &v, |v| {
                let mut out = run_text(v, verbose);
                if !a.approvals.is_empty() {
                    out.push_str("\napprovals:\n");
                    for x in &a.approvals {
                        out.push_str(&format!(
                            "{} {} step {}: {}\n",
                            x.id,
                            x.state,
                            x.step,
                            x.resolution.as_deref().unwrap_or("waiting for a decision")
                        ));
                    }
                }
                out
            });
            return Ok(());
        }
        RunCmd::Retry { run, step } => {
            let body = json!({ "stepRecordId": step });
            client.post(&format!("{P}/runs/{run}/actions/retry"), &body).await?.ok()?.typed()?
        }
        RunCmd::Skip { run, step } => {
            let body = json!({ "stepRecordId": step });
            client.post(&format!("{P}/runs/{run}/actions/skip"), &body).await?.ok()?.typed()?
        }
        RunCmd::Abort { run } => {
            client.post(&format!("{P}/runs/{run}/actions/abort"), &json!({})).await?.ok()?.typed()?
        }
        RunCmd::List => {
            let (raw, v) = client.get(&format!("{P}/runs")).await?.ok()?.typed::<dto::RunList>()?;
            output::show(g.format, &raw, &v, runs_text);
            return Ok(());
        }
        RunCmd::Stream { run, dag, after, until_done } => return stream(g, run, dag, after, until_done).await,
    };
    output::show(g.format, &raw, &v, |v| run_text(v, false));
    Ok(())
}

fn approval_text(a: &dto::Approval) -> String {
    let mut out =
        format!("{} {} — step {} of run {} (DAG {} v{})\n", a.id, a.state, a.step, a.run_id, a.dag, a.dag_version);
    out.push_str(&format!(
        "approvals: {} of {} (self-approval {}); requested by {} at {}\n",
        a.approvals,
        a.approvers,
        if a.self_approval { "allowed" } else { "not allowed" },
        a.requested_by,
        a.requested_at
    ));
    out.push_str(&format!("inputs sha256: {}\n", a.inputs_hash));
    if let (Some(d), Some(t)) = (&a.deadline, &a.on_timeout) {
        out.push_str(&format!("times out: {d} (then {t})\n"));
    }
    if let Some(r) = &a.resolution {
        out.push_str(&format!(
            "resolution: {r}{}\n",
            a.resolved_at.as_deref().map(|t| format!(" at {t}")).unwrap_or_default()
        ));
    }
    if !a.decisions.is_empty() {
        let rows: Vec<Vec<String>> = a
            .decisions
            .iter()
            .map(|d| vec![d.at.clone(), d.actor.clone(), d.decision.clone(), opt(&d.reason)])
            .collect();
        out.push_str(&table(&["AT", "ACTOR", "DECISION", "REASON"], &rows));
    }
    if a.state == "pending" {
        out.push_str(&format!(
            "decide: stella orch approvals approve {} --reason …  |  reject {} --reason …\n",
            a.id, a.id
        ));
    }
    out
}

fn approvals_text(v: &dto::ApprovalList) -> String {
    if v.approvals.is_empty() {
        return "no approvals\n".to_owned();
    }
    let rows: Vec<Vec<String>> = v
        .approvals
        .iter()
        .map(|a| {
            vec![
                a.id.clone(),
                a.state.clone(),
                a.step_record_id.clone(),
                format!("{}/{}", a.approvals, a.approvers),
                a.requested_by.clone(),
                a.requested_at.clone(),
                opt(&a.deadline),
            ]
        })
        .collect();
    table(&["APPROVAL", "STATE", "STEP", "APPROVALS", "REQUESTED BY", "REQUESTED", "TIMES OUT"], &rows)
}

pub async fn approvals(g: &Global, cmd: ApprovalsCmd) -> Result<(), CliError> {
    let client = target::client(g)?;
    let (raw, v): (Value, dto::Approval) = match cmd {
        ApprovalsCmd::List { state, run } => {
            let mut path = format!("{P}/approvals?state={state}");
            if let Some(r) = run {
                path.push_str(&format!("&run={r}"));
            }
            let (raw, v) = client.get(&path).await?.ok()?.typed::<dto::ApprovalList>()?;
            output::show(g.format, &raw, &v, approvals_text);
            return Ok(());
        }
        ApprovalsCmd::Show { id } => client.get(&format!("{P}/approvals/{id}")).await?.ok()?.typed()?,
        ApprovalsCmd::Approve { id, reason } => {
            client.post(&format!("{P}/approvals/{id}/approve"), &json!({ "reason": reason })).await?.ok()?.typed()?
        }
        ApprovalsCmd::Reject { id, reason } => {
            client.post(&format!("{P}/approvals/{id}/reject"), &json!({ "reason": reason })).await?.ok()?.typed()?
        }
    };
    output::show(g.format, &raw, &v, approval_text);
    Ok(())
}

pub async fn cache(g: &Global, cmd: CacheCmd) -> Result<(), CliError> {
    let client = target::client(g)?;
    match cmd {
        CacheCmd::List { dag } => {
            let path = format!("{P}/cache{}", dag.map(|d| format!("?dag={d}")).unwrap_or_default());
            let raw = client.get(&path).await?.ok()?.json()?;
            output::print(g.format, &raw, |v| {
                let rows: Vec<Vec<String>> = v["entries"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|e| {
                        vec![
                            s(&e["key"]).chars().take(12).collect(),
                            s(&e["dag"]),
                            s(&e["step"]),
                            s(&e["run"]),
                            format!("{}s", e["ageMs"].as_i64().unwrap_or(0) / 1000),
                            s(&e["hits"]),
                            if e["expired"] == true {
                                format!("expired {}", s(&e["expiresAt"]))
                            } else {
                                s(&e["expiresAt"])
                            },
                        ]
                    })
                    .collect();
                format!(
                    "{}hits {} misses {}\n",
                    table(&["KEY", "DAG", "STEP", "FROM RUN", "AGE", "HITS", "EXPIRES"], &rows),
                    s(&v["hits"]),
                    s(&v["misses"])
                )
            });
        }
        CacheCmd::Explain { run, step } => {
            let raw = client.get(&format!("{P}/cache/explain?run={run}&step={step}")).await?.ok()?.json()?;
            output::print(g.format, &raw, |v| {
                let mut out = format!("{run}/{step}: {}\n", s(&v["explanation"]));
                let rows: Vec<Vec<String>> = v["differs"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|d| vec![s(&d["part"]), s(&d["this"]), s(&d["nearest"])])
                    .collect();
                if !rows.is_empty() {
                    out.push_str(&table(&["PART", "THIS STEP", "NEAREST ENTRY"], &rows));
                }
                out
            });
        }
        CacheCmd::Purge { dag } => {
            let raw = client.post(&format!("{P}/cache/purge"), &json!({ "dag": dag })).await?.ok()?.json()?;
            output::print(g.format, &raw, |v| format!("purged {} entries\n", s(&v["purged"])));
        }
    }
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

fn dags_text(v: &dto::DagList) -> String {
    let rows: Vec<Vec<String>> = v
        .dags
        .iter()
        .map(|d| {
            let active = d.versions.iter().find(|x| x.version == d.active);
            vec![
                d.name.clone(),
                d.active.to_string(),
                d.versions.len().to_string(),
                if active.is_some_and(|a| a.unsigned) { "unsigned (dev)".into() } else { "signed".into() },
                if active.is_some_and(|a| a.disabled) { "disabled".into() } else { "enabled".into() },
            ]
        })
        .collect();
    table(&["DAG", "ACTIVE", "VERSIONS", "SOURCE", "STATE"], &rows)
}

fn dag_text(v: &dto::Dag) -> String {
    let rows: Vec<Vec<String>> = v
        .versions
        .iter()
        .map(|x| {
            vec![
                x.version.to_string(),
                if x.version == v.active { "yes".into() } else { "-".into() },
                if x.disabled { "disabled".into() } else { "enabled".into() },
                if x.unsigned { "unsigned".into() } else { "signed".into() },
                x.registered_at.clone(),
                x.sha256.clone(),
            ]
        })
        .collect();
    let spec = v.spec.as_deref().map(|s| format!("\nversion {} spec:\n{s}", v.active)).unwrap_or_default();
    format!("DAG {}\n{}{spec}", v.name, table(&["VERSION", "ACTIVE", "STATE", "SOURCE", "REGISTERED", "SHA256"], &rows))
}

pub async fn dag(g: &Global, cmd: DagCmd) -> Result<(), CliError> {
    let client = target::client(g)?;
    let (raw, v): (Value, dto::Dag) = match cmd {
        DagCmd::List => {
            let (raw, v) = client.get(&format!("{P}/dags")).await?.ok()?.typed::<dto::DagList>()?;
            output::show(g.format, &raw, &v, dags_text);
            return Ok(());
        }
        DagCmd::Show { dag, spec } => {
            client.get(&format!("{P}/dags/{dag}{}", if spec { "?spec=true" } else { "" })).await?.ok()?.typed()?
        }
        DagCmd::Disable { dag, version } => {
            client.post(&format!("{P}/dags/{dag}/disable"), &json!({ "version": version })).await?.ok()?.typed()?
        }
        DagCmd::Enable { dag, version } => {
            client.post(&format!("{P}/dags/{dag}/enable"), &json!({ "version": version })).await?.ok()?.typed()?
        }
        DagCmd::Rollback { dag, version } => {
            client.post(&format!("{P}/dags/{dag}/rollback"), &json!({ "version": version })).await?.ok()?.typed()?
        }
        DagCmd::Register { file } => {
            let spec =
                std::fs::read_to_string(&file).map_err(|e| CliError::Invalid(format!("{}: {e}", file.display())))?;
            client.post(&format!("{P}/dags"), &json!({ "spec": spec })).await?.ok()?.typed()?
        }
    };
    output::show(g.format, &raw, &v, dag_text);
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
