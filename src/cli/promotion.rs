//! `stella promotion …`: the commands of runbook 000, through the daemon.

use crate::api::dto;
use crate::cli::args::{GateCmd, Global, PromotionCmd};
use crate::cli::output::{self, opt, table};
use crate::cli::target;
use crate::exit::CliError;
use serde_json::json;

const P: &str = "/api/v1/orchestrator";

pub async fn run(g: &Global, cmd: PromotionCmd) -> Result<(), CliError> {
    let client = target::client(g)?;
    let one = |id: Option<String>| match id {
        Some(id) => format!("{P}/promotions/{id}"),
        None => format!("{P}/promotions/latest"),
    };
    match cmd {
        PromotionCmd::Start { artifact, to, force_path, reason } => {
            let body = json!({ "artifact": artifact, "to": to, "forcePath": force_path, "reason": reason });
            let (raw, v) = client.post(&format!("{P}/promotions"), &body).await?.ok()?.typed::<dto::Promotion>()?;
            output::show(g.format, &raw, &v, |p| {
                format!("{}follow it: stella promotion status {}\n", status_text(p), p.id)
            });
        }
        PromotionCmd::Status { id } => {
            let (raw, v) = client.get(&one(id)).await?.ok()?.typed::<dto::Promotion>()?;
            output::show(g.format, &raw, &v, status_text);
        }
        PromotionCmd::Gates { id } => {
            let (raw, v) = client.get(&one(id)).await?.ok()?.typed::<dto::Promotion>()?;
            output::show(g.format, &raw, &v, gates_text);
        }
        PromotionCmd::Trace { id, verbose } => {
            let (raw_p, p) = client.get(&one(id)).await?.ok()?.typed::<dto::Promotion>()?;
            let (raw_run, run) = client.get(&format!("{P}/runs/{}", p.run_id)).await?.ok()?.typed::<dto::Run>()?;
            let raw = json!({ "promotion": raw_p, "run": raw_run });
            output::show(g.format, &raw, &(p, run), |(p, run)| {
                format!("{}{}", status_text(p), crate::cli::runs::run_text(run, verbose))
            });
        }
        PromotionCmd::List { status, older_than, env } => {
            let q = crate::cli::release::query(&[("status", status), ("olderThan", older_than), ("env", env)]);
            let (raw, v) = client.get(&format!("{P}/promotions{q}")).await?.ok()?.typed::<dto::PromotionList>()?;
            output::show(g.format, &raw, &v, |v| {
                let rows: Vec<Vec<String>> = v
                    .promotions
                    .iter()
                    .map(|p| {
                        vec![
                            p.id.clone(),
                            p.artifact.clone(),
                            format!("{} → {}", opt(&p.from), p.env),
                            p.status.clone(),
                            opt(&p.current_step),
                            crate::duration::human(p.age_ms.max(0) as u64),
                            p.wait_reason.clone().or(p.error.clone()).unwrap_or_else(|| "-".into()),
                        ]
                    })
                    .collect();
                table(&["ID", "ARTIFACT", "PATH", "STATUS", "STEP", "AGE", "WAITING ON / ERROR"], &rows)
            });
        }
        PromotionCmd::Abort { id, reason } => {
            let (raw, v) = client
                .post(&format!("{P}/promotions/{id}/abort"), &json!({ "reason": reason }))
                .await?
                .ok()?
                .typed::<dto::Promotion>()?;
            output::show(g.format, &raw, &v, status_text);
        }
        PromotionCmd::Gate(GateCmd::Skip { .. }) => {
            return Err(CliError::NotAvailable(
                "skipping a promotion's gate with a second approver (issue: promotions)".into(),
            ));
        }
    }
    Ok(())
}

fn status_text(p: &dto::Promotion) -> String {
    let mut out = format!(
        "promotion {} of {} from {} to {}: {}\n  deployment {} (run {}), requested by {} at {}\n  last update {} ({} ago)\n",
        p.id,
        p.artifact,
        opt(&p.from),
        p.env,
        p.status,
        p.deployment,
        p.run_id,
        p.requested_by,
        p.created_at,
        p.updated_at,
        crate::duration::human(p.age_ms.max(0) as u64),
    );
    if let Some(s) = &p.current_step {
        out.push_str(&format!("  current step: {s}\n"));
    }
    if let Some(w) = &p.wait_reason {
        out.push_str(&format!("  waiting: {w}\n"));
    }
    if let Some(e) = &p.error {
        out.push_str(&format!(
            "  error: {e}{}\n",
            p.failed_step.as_deref().map(|s| format!(" (step {s})")).unwrap_or_default()
        ));
    }
    for f in &p.forced {
        out.push_str(&format!("  forced: {f}\n"));
    }
    out
}

fn gates_text(p: &dto::Promotion) -> String {
    if p.gates.is_empty() {
        return format!("promotion {} into {}: the environment has no gates\n", p.id, p.env);
    }
    let rows: Vec<Vec<String>> = p
        .gates
        .iter()
        .map(|g| {
            vec![
                g.name.clone(),
                g.kind.clone(),
                g.state.clone(),
                format!("{}/{}", g.attempts, g.max_attempts),
                opt(&g.since),
                g.waiting_on.clone().or(g.error.clone()).unwrap_or_else(|| "-".into()),
            ]
        })
        .collect();
    format!(
        "promotion {} of {} into {}: {}\n{}",
        p.id,
        p.artifact,
        p.env,
        p.status,
        table(&["GATE", "TYPE", "STATE", "ATTEMPTS", "SINCE", "WAITING ON / ERROR"], &rows)
    )
}
