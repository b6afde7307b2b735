//! `stella orch env|deployments|artifacts`, `stella deploy`, `stella rollback …`: the release
//! commands of runbook 001, through the daemon.

use crate::api::dto;
use crate::cli::args::*;
use crate::cli::output::{self, opt, table};
use crate::cli::target;
use crate::exit::CliError;
use serde_json::json;

const P: &str = "/api/v1/orchestrator";

/// Percent-encodes a query value (everything but RFC 3986's unreserved characters).
fn encode(v: &str) -> String {
    v.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' | b'@' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

pub(crate) fn query(pairs: &[(&str, Option<String>)]) -> String {
    let q: Vec<String> = pairs.iter().filter_map(|(k, v)| v.as_ref().map(|v| format!("{k}={}", encode(v)))).collect();
    if q.is_empty() { String::new() } else { format!("?{}", q.join("&")) }
}

pub async fn env(g: &Global, cmd: EnvCmd) -> Result<(), CliError> {
    let client = target::client(g)?;
    match cmd {
        EnvCmd::Declare { file } => {
            let text =
                std::fs::read_to_string(&file).map_err(|e| CliError::Invalid(format!("{}: {e}", file.display())))?;
            let source = file.file_name().map(|n| n.to_string_lossy().into_owned());
            let body = json!({ "release": text, "source": source });
            let (raw, v) = client.post(&format!("{P}/environments"), &body).await?.ok()?.typed::<dto::EnvList>()?;
            output::show(g.format, &raw, &v, |v| {
                let names: Vec<&str> = v.environments.iter().map(|e| e.name.as_str()).collect();
                format!(
                    "declared {} from {} (unsigned, dev mode)
",
                    names.join(", "),
                    file.display()
                )
            });
        }
        EnvCmd::Status { env: None, detailed } => {
            let (raw, v) = client.get(&format!("{P}/environments")).await?.ok()?.typed::<dto::EnvList>()?;
            output::show(g.format, &raw, &v, |v| {
                v.environments.iter().map(|e| env_text(e, detailed)).collect::<Vec<_>>().join("\n")
            });
        }
        EnvCmd::Status { env: Some(e), detailed } => {
            let path = format!("{P}/environments/{e}{}", if detailed { "?detailed=true" } else { "" });
            let (raw, v) = client.get(&path).await?.ok()?.typed::<dto::EnvStatus>()?;
            output::show(g.format, &raw, &v, |v| env_text(v, detailed));
        }
        EnvCmd::Config(EnvConfigCmd::Diff { env }) => {
            let raw = client.post(&format!("{P}/environments/{env}/config/diff"), &json!({})).await?.ok()?.json()?;
            output::print(g.format, &raw, |v| {
                if v["drifted"] == false {
                    return format!(
                        "environment {env}: no drift — the observed configuration is the baseline (version {})\n",
                        v["baselineVersion"]
                    );
                }
                let mut out = v["unifiedDiff"].as_str().unwrap_or_default().to_owned();
                out.push_str(&format!(
                    "{} setting(s) drifted; put the baseline back: stella orch env reset {env} --to-baseline\n",
                    v["drift"].as_array().map_or(0, Vec::len)
                ));
                out
            });
        }
        EnvCmd::Reset { env, to_baseline, reason } => {
            if !to_baseline {
                return Err(CliError::Invalid("env reset resets to the baseline: add --to-baseline".into()));
            }
            let body = json!({ "toBaseline": true, "reason": reason });
            let (raw, v) =
                client.post(&format!("{P}/environments/{env}/reset"), &body).await?.ok()?.typed::<dto::Deployment>()?;
            output::show(g.format, &raw, &v, |d| {
                format!("{}follow it: stella orch deployments list --env {}\n", deployment_text(d), d.env)
            });
        }
    }
    Ok(())
}

fn dep_line(d: &Option<dto::Deployment>) -> String {
    d.as_ref().map_or("-".to_owned(), |d| {
        let mut s = format!(
            "{} {} ({}, {}, {})",
            d.id,
            d.artifact,
            d.kind,
            d.status,
            d.ended_at.as_deref().unwrap_or(&d.created_at)
        );
        if let Some(e) = &d.error {
            s.push_str(&format!(": {e}"));
        }
        s
    })
}

fn env_text(e: &dto::EnvStatus, detailed: bool) -> String {
    let mut out = format!(
        "environment {} (order {}{})\n",
        e.name,
        e.order,
        e.promotes_from.as_ref().map(|f| format!(", promotes from {f}")).unwrap_or_default()
    );
    out.push_str(&format!("  current:          {}\n", dep_line(&e.current)));
    out.push_str(&format!("  last known good:  {}\n", dep_line(&e.last_known_good)));
    out.push_str(&format!("                    {}\n", e.last_known_good_note));
    if e.last_deployment.as_ref().map(|d| &d.id) != e.current.as_ref().map(|d| &d.id) {
        out.push_str(&format!("  last deployment:  {}\n", dep_line(&e.last_deployment)));
    }
    out.push_str(&format!("  in flight:        {}\n", dep_line(&e.in_flight)));
    out.push_str(&format!(
        "  health:           {} — {}{}\n",
        e.health.status,
        e.health.detail,
        e.health.checked_at.as_ref().map(|t| format!(" ({t})")).unwrap_or_default()
    ));
    let lock = e.lock.as_ref().map_or("free".to_owned(), |l| match &l.holder {
        Some(h) => format!(
            "{} held by {h} for {}s, fencing token {}{}",
            l.id,
            l.age_seconds.unwrap_or(0),
            opt(&l.token),
            if l.waiters.is_empty() { String::new() } else { format!(", {} waiting", l.waiters.len()) }
        ),
        None => format!("{} free, {} waiting", l.id, l.waiters.len()),
    });
    out.push_str(&format!("  lock:             env:{} {lock}\n", e.name));
    out.push_str(&format!("  agent:            {} (plugin {}, target {})\n", e.agent, e.plugin, e.target));
    out.push_str(&format!(
        "  frozen:           {}\n",
        e.frozen.as_ref().map_or("no".to_owned(), |w| format!(
            "yes, window {} until {}{}",
            w.name,
            w.until,
            w.reason.as_ref().map(|r| format!(" ({r})")).unwrap_or_default()
        ))
    ));
    if detailed {
        out.push_str(&format!(
            "  declared by:      {} (baseline version {})\n",
            opt(&e.declared_by),
            e.baseline_version
        ));
        if let Some(b) = &e.baseline {
            out.push_str(&format!("  baseline:         {b}\n"));
        }
        for w in &e.freeze {
            out.push_str(&format!(
                "  freeze window:    {} {} → {}{}\n",
                w.name,
                w.from,
                w.until,
                if w.active { " (active)" } else { "" }
            ));
        }
        for gate in &e.gates {
            out.push_str(&format!("  gate:             {gate}\n"));
        }
        if let Some(recent) = &e.recent {
            out.push_str("  recent deployments:\n");
            for d in recent {
                out.push_str(&format!("    {}\n", dep_line(&Some(d.clone()))));
            }
        }
    }
    out
}

fn deployments_text(v: &dto::DeploymentList) -> String {
    let rows: Vec<Vec<String>> = v
        .deployments
        .iter()
        .map(|d| {
            vec![
                d.id.clone(),
                d.env.clone(),
                d.artifact.clone(),
                d.kind.clone(),
                d.status.clone(),
                d.created_at.clone(),
                opt(&d.agent),
                d.error.clone().unwrap_or_default(),
            ]
        })
        .collect();
    table(&["ID", "ENV", "ARTIFACT", "KIND", "STATUS", "CREATED", "AGENT", "ERROR"], &rows)
}

fn deployment_text(d: &dto::Deployment) -> String {
    let mut out = format!(
        "{} {} → {} ({}): {}\n  run {}  actor {}  agent {}\n  created {}  started {}  ended {}\n",
        d.id,
        d.artifact,
        d.env,
        d.kind,
        d.status,
        d.run_id,
        d.actor,
        opt(&d.agent),
        d.created_at,
        opt(&d.started_at),
        opt(&d.ended_at)
    );
    if let Some(e) = &d.error {
        out.push_str(&format!("  error ({}): {e}\n", d.failed_step.as_deref().unwrap_or("run")));
    }
    for f in &d.forced {
        out.push_str(&format!("  broke lock {f}\n"));
    }
    out
}

pub async fn deployments(g: &Global, cmd: DeploymentsCmd) -> Result<(), CliError> {
    let client = target::client(g)?;
    match cmd {
        DeploymentsCmd::List { env, last, status } => {
            let q = query(&[("env", env), ("last", last.map(|n| n.to_string())), ("status", status)]);
            let (raw, v) = client.get(&format!("{P}/deployments{q}")).await?.ok()?.typed::<dto::DeploymentList>()?;
            output::show(g.format, &raw, &v, deployments_text);
        }
        DeploymentsCmd::Current { env } => {
            let (raw, v) = client
                .get(&format!("{P}/deployments/current{}", query(&[("env", Some(env))])))
                .await?
                .ok()?
                .typed::<dto::Deployment>()?;
            output::show(g.format, &raw, &v, deployment_text);
        }
    }
    Ok(())
}

pub async fn artifacts(g: &Global, cmd: ArtifactsCmd) -> Result<(), CliError> {
    let client = target::client(g)?;
    match cmd {
        ArtifactsCmd::List { env, filter } => {
            let q = query(&[("env", env), ("filter", filter)]);
            let (raw, v) = client.get(&format!("{P}/artifacts{q}")).await?.ok()?.typed::<dto::ArtifactList>()?;
            output::show(g.format, &raw, &v, |v| {
                let rows: Vec<Vec<String>> = v
                    .artifacts
                    .iter()
                    .map(|a| {
                        vec![
                            a.id.clone(),
                            a.digest[..12.min(a.digest.len())].to_owned(),
                            a.size.to_string(),
                            a.signer.clone(),
                            a.imported_at.clone(),
                            a.deployed_in.join(","),
                        ]
                    })
                    .collect();
                table(&["ARTIFACT", "DIGEST", "BYTES", "SIGNER", "IMPORTED", "DEPLOYED IN"], &rows)
            });
        }
        ArtifactsCmd::Get { artifact, check } => {
            let path = format!("{P}/artifacts/{artifact}{}", if check { "?check=true" } else { "" });
            let (raw, v) = client.get(&path).await?.ok()?.typed::<dto::Artifact>()?;
            output::show(g.format, &raw, &v, artifact_text);
            if let Some(c) = v.check.filter(|c| !c.ok) {
                return Err(CliError::VerifyFailed(c.problem.unwrap_or_default()));
            }
        }
    }
    Ok(())
}

fn artifact_text(a: &dto::Artifact) -> String {
    let mut out = format!(
        "{} sha256:{}\n  {} files, {} bytes; signed by {} ({}); imported {} by {}\n  backup: {}\n  deployed in: {}\n  last known good in: {}\n",
        a.id,
        a.digest,
        a.files.len(),
        a.size,
        a.signer,
        a.fingerprint,
        a.imported_at,
        a.imported_by,
        opt(&a.backup),
        if a.deployed_in.is_empty() { "-".to_owned() } else { a.deployed_in.join(", ") },
        if a.last_known_good_in.is_empty() { "-".to_owned() } else { a.last_known_good_in.join(", ") },
    );
    if let Some(c) = &a.check {
        if c.ok {
            out.push_str(&format!("  check: ok — present, signature and every file verified ({})\n", c.checked_at));
        } else {
            out.push_str(&format!(
                "  check: FAILED — {}{}\n",
                c.problem.as_deref().unwrap_or("?"),
                c.fix.as_ref().map(|f| format!("\n  fix: {f}")).unwrap_or_default()
            ));
        }
    }
    out
}

pub async fn deploy(g: &Global, a: DeployArgs) -> Result<(), CliError> {
    let client = target::client(g)?;
    let body = json!({ "env": a.env, "artifact": a.artifact, "force": a.force, "reason": a.reason });
    let (raw, v) = client.post(&format!("{P}/deployments"), &body).await?.ok()?.typed::<dto::Deployment>()?;
    output::show(g.format, &raw, &v, |d| {
        format!(
            "{}{}follow it: stella orch deployments list --env {}; its steps: stella rollback trace {} --verbose\n",
            deployment_text(d),
            if d.forced.is_empty() { "" } else { "(the forced release is in the ledger with your name)\n" },
            d.env,
            d.id
        )
    });
    Ok(())
}

/// The latest rollback (of `env`), if any.
async fn latest_rollback(client: &crate::client::Client, env: Option<String>) -> Result<dto::Deployment, CliError> {
    let q = query(&[("env", env.clone())]);
    let (_, v) = client.get(&format!("{P}/deployments{q}")).await?.ok()?.typed::<dto::DeploymentList>()?;
    v.deployments.into_iter().find(|d| d.kind == "rollback").ok_or_else(|| CliError::Api {
        status: 404,
        code: "not_found".into(),
        detail: format!("no rollback{} yet", env.map(|e| format!(" of environment {e}")).unwrap_or_default()),
    })
}

pub async fn rollback(g: &Global, cmd: RollbackCmd) -> Result<(), CliError> {
    let client = target::client(g)?;
    match cmd {
        RollbackCmd::Start { env, to, reason } => {
            let body = json!({ "env": env, "to": to, "reason": reason });
            let (raw, v) = client.post(&format!("{P}/rollbacks"), &body).await?.ok()?.typed::<dto::Deployment>()?;
            output::show(g.format, &raw, &v, |d| {
                format!("{}follow it: stella rollback status --env {}\n", deployment_text(d), d.env)
            });
        }
        RollbackCmd::Status { env } => {
            let d = latest_rollback(&client, env).await?;
            let raw = serde_json::to_value(&d).map_err(|e| CliError::Other(e.to_string()))?;
            output::show(g.format, &raw, &d, deployment_text);
        }
        RollbackCmd::Trace { id, env, verbose } => {
            let d = match id {
                Some(id) => client.get(&format!("{P}/deployments/{id}")).await?.ok()?.typed::<dto::Deployment>()?.1,
                None => latest_rollback(&client, env).await?,
            };
            let (raw_run, run) = client.get(&format!("{P}/runs/{}", d.run_id)).await?.ok()?.typed::<dto::Run>()?;
            let raw = json!({ "deployment": d, "run": raw_run });
            output::show(g.format, &raw, &(d, run), |(d, run)| {
                format!("{}{}", deployment_text(d), crate::cli::runs::run_text(run, verbose))
            });
        }
    }
    Ok(())
}

/// Which part of a probe a command reports.
#[derive(Debug, Clone, Copy)]
pub enum ProbePart {
    Health,
    Connectivity,
    Credentials,
}

/// `orch health-check --env E`, `orch connectivity --target E`, `orch credentials verify
/// --target E`: the environment's probe through its agent. Exits 1 when the part failed.
pub async fn probe(g: &Global, env: &str, part: ProbePart) -> Result<(), CliError> {
    let client = target::client(g)?;
    let raw = client.post(&format!("{P}/environments/{env}/probe"), &json!({})).await?.ok()?.json()?;
    let check = |name: &str| -> String {
        let c = &raw[name];
        let detail = c["detail"].as_str().map(|d| format!(" — {d}")).unwrap_or_default();
        format!("{}{detail}", c["status"].as_str().unwrap_or("?"))
    };
    let (text, failed) = match part {
        ProbePart::Health => (format!("health of {env}: {}\n", check("health")), raw["health"]["status"] != "ok"),
        ProbePart::Connectivity => (
            format!("reach {}: {}\n", raw["target"].as_str().unwrap_or("?"), check("connectivity")),
            raw["reach"] != "ok",
        ),
        ProbePart::Credentials => (
            format!(
                "reach:        {}\nauthenticate: {}\nauthorize:    {}\n{}\n",
                raw["reach"].as_str().unwrap_or("?"),
                raw["authenticate"].as_str().unwrap_or("?"),
                raw["authorize"].as_str().unwrap_or("?"),
                check("credentials")
            ),
            raw["authenticate"] != "ok" || raw["authorize"] != "ok",
        ),
    };
    output::print(g.format, &raw, |v| {
        format!("{text}agent {} (run {})\n", v["agent"].as_str().unwrap_or("-"), v["runId"].as_str().unwrap_or("-"))
    });
    if failed {
        return Err(CliError::Other(format!("environment {env}: the check failed")));
    }
    Ok(())
}

pub async fn repair(g: &Global, id: &str, reason: Option<String>) -> Result<(), CliError> {
    let client = target::client(g)?;
    let (raw, v) = client
        .post(&format!("{P}/deployments/{id}/repair"), &json!({ "reason": reason }))
        .await?
        .ok()?
        .typed::<dto::Deployment>()?;
    output::show(g.format, &raw, &v, |d| format!("repaired: {}", deployment_text(d)));
    Ok(())
}

pub async fn registry(g: &Global, cmd: RegistryCmd) -> Result<(), CliError> {
    let client = target::client(g)?;
    match cmd {
        RegistryCmd::Retention(RetentionCmd::Show) => {
            let raw = client.get(&format!("{P}/registry/retention")).await?.ok()?.json()?;
            output::print(g.format, &raw, |v| {
                let mut out = format!(
                    "policy: keep at least {} versions of each artifact; never delete what an environment runs now, its last known good, or an unfinished deployment's artifact\n",
                    v["policy"]["minVersions"]
                );
                let rows: Vec<Vec<String>> = v["artifacts"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|a| {
                        vec![
                            a["artifact"].as_str().unwrap_or("?").to_owned(),
                            if a["keep"] == true { "kept" } else { "deletable" }.to_owned(),
                            a["why"]
                                .as_array()
                                .into_iter()
                                .flatten()
                                .filter_map(|w| w.as_str())
                                .collect::<Vec<_>>()
                                .join("; "),
                        ]
                    })
                    .collect();
                out.push_str(&table(&["ARTIFACT", "VERDICT", "WHY"], &rows));
                out
            });
        }
        RegistryCmd::Retention(RetentionCmd::Set { min_versions }) => {
            let body = json!({ "value": min_versions.to_string() });
            let (raw, _): (serde_json::Value, dto::ConfigValue) =
                crate::cli::queue::put(&client, &format!("{P}/config/registry.min_versions"), &body).await?;
            output::print(g.format, &raw, |_| format!("registry.min_versions = {min_versions} (ledgered)\n"));
        }
        RegistryCmd::Retention(RetentionCmd::Apply { reason }) => {
            let raw = client
                .post(&format!("{P}/registry/retention/apply"), &json!({ "reason": reason }))
                .await?
                .ok()?
                .json()?;
            output::print(g.format, &raw, |v| {
                let d: Vec<&str> = v["deleted"].as_array().into_iter().flatten().filter_map(|x| x.as_str()).collect();
                if d.is_empty() { "nothing to delete\n".to_owned() } else { format!("deleted {}\n", d.join(", ")) }
            });
        }
        RegistryCmd::Restore { artifact, from } => {
            let (raw, v) = client
                .post(&format!("{P}/artifacts/{artifact}/restore"), &json!({ "from": from }))
                .await?
                .ok()?
                .typed::<dto::Artifact>()?;
            output::show(g.format, &raw, &v, |a| {
                format!("restored {} from its backup copy; it verifies\n{}", a.id, artifact_text(a))
            });
        }
        RegistryCmd::Delete { artifact, reason } => {
            let raw = client
                .post(&format!("{P}/artifacts/{artifact}/delete"), &json!({ "reason": reason }))
                .await?
                .ok()?
                .json()?;
            output::print(g.format, &raw, |v| {
                if v["deleted"] == true {
                    format!("deleted {artifact}\n")
                } else {
                    format!("{artifact} was deleted already\n")
                }
            });
        }
    }
    Ok(())
}

/// `stella doctor [--check ID]`: one line per finding, `LEVEL [check.id] (subject) message —
/// fix: stella …`; exit 1 when a finding is an error.
pub async fn doctor(g: &Global, check: Option<String>) -> Result<(), CliError> {
    let client = target::client(g)?;
    let q = query(&[("check", check)]);
    let raw = client.get(&format!("{P}/admin/doctor{q}")).await?.ok()?.json()?;
    output::print(g.format, &raw, |v| {
        v["findings"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|f| {
                let fix = f["fix"].as_str().map(|x| format!(" — fix: {x}")).unwrap_or_default();
                format!(
                    "{} [{}] ({}) {}{fix}\n",
                    f["level"].as_str().unwrap_or("?").to_uppercase(),
                    f["check"].as_str().unwrap_or("?"),
                    f["subject"].as_str().unwrap_or("?"),
                    f["message"].as_str().unwrap_or("?"),
                )
            })
            .collect()
    });
    if raw["worst"] == "error" {
        return Err(CliError::Other("doctor found errors".into()));
    }
    Ok(())
}

/// `orch agent status --env E`.
pub async fn agents(g: &Global, env: &str) -> Result<(), CliError> {
    let client = target::client(g)?;
    let raw = client.get(&format!("{P}/environments/{env}/agents")).await?.ok()?.json()?;
    output::print(g.format, &raw, |v| {
        let mut out = format!(
            "environment {env}: agent {}, plugin {}\n",
            v["agent"].as_str().unwrap_or("?"),
            v["plugin"].as_str().unwrap_or("?")
        );
        let rows: Vec<Vec<String>> = v["agents"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|a| {
                vec![
                    a["id"].as_str().unwrap_or("?").to_owned(),
                    a["kind"].as_str().unwrap_or("?").to_owned(),
                    a["version"].as_str().unwrap_or("-").to_owned(),
                    format!("{}s ago", a["lastSeenSecondsAgo"]),
                    match a["currentLeases"].as_array().map(Vec::as_slice) {
                        Some([]) | None => "-".to_owned(),
                        Some(jobs) => jobs.iter().filter_map(|j| j.as_str()).collect::<Vec<_>>().join(","),
                    },
                    a["whyNot"].as_str().map_or("chosen".to_owned(), |w| format!("not chosen: {w}")),
                ]
            })
            .collect();
        out.push_str(&table(&["AGENT", "KIND", "VERSION", "LAST HEARTBEAT", "CURRENT LEASES", "CHOSEN"], &rows));
        if let Some(n) = v["note"].as_str() {
            out.push_str(&format!("{n}\n"));
        }
        out
    });
    Ok(())
}
