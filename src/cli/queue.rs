//! `stella orch queue|dlq|locks|config|agent …`: the runbooks' queue, lock and config
//! operations, through the daemon's API.

use crate::cli::args::*;
use crate::cli::output::{self, s, table};
use crate::cli::target;
use crate::client::Client;
use crate::exit::CliError;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use std::io::Write;

const P: &str = "/api/v1/orchestrator";

fn list(v: &Value, key: &str) -> Vec<Value> {
    v[key].as_array().cloned().unwrap_or_default()
}

fn joined(v: &Value) -> String {
    v.as_array().map(|a| a.iter().map(s).collect::<Vec<_>>().join(",")).unwrap_or_default()
}

async fn put(client: &Client, path: &str, body: &Value) -> Result<Value, CliError> {
    let bytes = serde_json::to_vec(body).expect("json");
    client.send(hyper::Method::PUT, path, Some(bytes)).await?.ok()?.json()
}

pub async fn queue(g: &Global, cmd: QueueCmd) -> Result<(), CliError> {
    let client = target::client(g)?;
    let v = match cmd {
        QueueCmd::Status => client.get(&format!("{P}/queue")).await?.ok()?.json()?,
        QueueCmd::Pause { job_type, create } => {
            let q = if create { "?create=true" } else { "" };
            client.post(&format!("{P}/queue/{job_type}/pause{q}"), &json!({})).await?.ok()?.json()?
        }
        QueueCmd::Resume { job_type } => {
            client.post(&format!("{P}/queue/{job_type}/resume"), &json!({})).await?.ok()?.json()?
        }
        QueueCmd::Budget(BudgetCmd::Set { job_type, rate, burst, max_depth, for_, tenant }) => {
            let body = json!({ "rate": rate, "burst": burst, "maxDepth": max_depth, "for": for_, "tenant": tenant });
            put(&client, &format!("{P}/queue/{job_type}/budget"), &body).await?
        }
        QueueCmd::Budget(BudgetCmd::Clear { job_type, tenant }) => {
            let q = tenant.map(|t| format!("?tenant={t}")).unwrap_or_default();
            client.send(hyper::Method::DELETE, &format!("{P}/queue/{job_type}/budget{q}"), None).await?.ok()?.json()?
        }
        QueueCmd::Enqueue { job_type, payload, priority, max_attempts, delay, key, tenant } => {
            let payload: Value =
                serde_json::from_str(&payload).map_err(|e| CliError::Invalid(format!("--payload is not JSON: {e}")))?;
            let body = json!({ "type": job_type, "payload": payload, "priority": priority, "maxAttempts": max_attempts,
                               "delay": delay, "idempotencyKey": key, "tenant": tenant });
            let v = client.post(&format!("{P}/jobs"), &body).await?.ok()?.json()?;
            output::print(g.format, &v, |v| format!("{} {} ({})\n", s(&v["id"]), s(&v["state"]), s(&v["type"])));
            return Ok(());
        }
    };
    output::print(g.format, &v, queue_text);
    Ok(())
}

fn queue_text(v: &Value) -> String {
    let rows: Vec<Vec<String>> = list(v, "types")
        .iter()
        .map(|t| {
            let budgets = list(t, "budgets")
                .iter()
                .map(|b| {
                    let until = match (b["until"].as_str(), b.get("restores")) {
                        (Some(u), Some(r)) => format!(" until {u}, then {}", budget_text(r)),
                        (Some(u), None) => format!(" until {u}, then none"),
                        _ => String::new(),
                    };
                    format!("{}:{}{until}", s(&b["tenant"]), budget_text(b))
                })
                .collect::<Vec<_>>()
                .join("; ");
            vec![
                s(&t["type"]),
                s(&t["ready"]),
                s(&t["delayed"]),
                s(&t["leased"]),
                s(&t["dead"]),
                t["oldestReadyAgeSeconds"].as_u64().map_or("-".into(), |a| format!("{a}s")),
                if t["paused"] == true { format!("paused by {}", s(&t["pausedBy"])) } else { "running".into() },
                if budgets.is_empty() { "-".into() } else { budgets },
            ]
        })
        .collect();
    format!(
        "{}depth {}  leased {}  dlq {}\n",
        table(&["TYPE", "READY", "DELAYED", "LEASED", "DEAD", "OLDEST", "DISPATCH", "BUDGETS"], &rows),
        s(&v["depth"]),
        s(&v["leased"]),
        s(&v["dlqDepth"])
    )
}

/// `100/s depth<=3`: a budget's rate and depth limit.
fn budget_text(b: &Value) -> String {
    let parts: Vec<String> = [
        b["rate"].as_str().map(str::to_owned),
        b["burst"].as_u64().map(|n| format!("burst {n}")),
        b["maxDepth"].as_u64().map(|d| format!("depth<={d}")),
    ]
    .into_iter()
    .flatten()
    .collect();
    if parts.is_empty() { "-".into() } else { parts.join(" ") }
}

fn jobs_text(v: &Value) -> String {
    let rows: Vec<Vec<String>> = list(v, "jobs")
        .iter()
        .map(|j| {
            vec![
                s(&j["id"]),
                s(&j["type"]),
                s(&j["tenant"]),
                format!("{}/{}", s(&j["attempt"]), s(&j["maxAttempts"])),
                s(&j["finishedAt"]),
                s(&j["lastError"]),
            ]
        })
        .collect();
    table(&["ID", "TYPE", "TENANT", "ATTEMPTS", "DIED", "LAST ERROR"], &rows)
}

pub async fn dlq(g: &Global, cmd: DlqCmd) -> Result<(), CliError> {
    let client = target::client(g)?;
    match cmd {
        DlqCmd::List => {
            let v = client.get(&format!("{P}/dlq")).await?.ok()?.json()?;
            output::print(g.format, &v, jobs_text);
        }
        DlqCmd::Show { id } => {
            let v = client.get(&format!("{P}/dlq/{id}")).await?.ok()?.json()?;
            output::print(g.format, &v, |v| serde_json::to_string_pretty(v).unwrap_or_default() + "\n");
        }
        DlqCmd::Replay { id, job_type, all } => {
            let body = match (id, job_type, all) {
                (Some(id), None, false) => json!({ "ids": [id] }),
                (None, Some(t), false) => json!({ "type": t }),
                (None, None, true) => json!({ "all": true }),
                _ => return Err(CliError::Invalid("name exactly one of ID, --type T or --all".into())),
            };
            let v = client.post(&format!("{P}/dlq/replay"), &body).await?.ok()?.json()?;
            output::print(g.format, &v, |v| {
                let mut out: String = list(v, "jobs")
                    .iter()
                    .map(|j| match j["payload"]["run"].as_str() {
                        Some(run) => format!(
                            "replayed {} through its run: step {run}/{} retried as {}\n",
                            s(&j["replayOf"]),
                            s(&j["payload"]["step"]),
                            s(&j["id"])
                        ),
                        None => format!("replayed {} as {}\n", s(&j["replayOf"]), s(&j["id"])),
                    })
                    .collect();
                for r in list(v, "refused") {
                    out.push_str(&format!("left {} in the dead-letter queue: {}\n", s(&r["id"]), s(&r["reason"])));
                }
                out
            });
        }
        DlqCmd::Purge { ids, snapshot, job_type, all } => purge(g, &client, ids, snapshot, job_type, all).await?,
    }
    Ok(())
}

/// Writes the entries to be purged to a new NDJSON file (fsynced) before asking for the purge,
/// and sends the file's sha256 so the ledger names the snapshot.
async fn purge(
    g: &Global,
    client: &Client,
    ids: Vec<String>,
    snapshot: Option<std::path::PathBuf>,
    job_type: Option<String>,
    all: bool,
) -> Result<(), CliError> {
    let Some(snapshot) = snapshot else {
        return Err(CliError::Invalid(
            "purge needs --snapshot FILE: the purged entries are written there first".into(),
        ));
    };
    let dead = list(&client.get(&format!("{P}/dlq")).await?.ok()?.json()?, "jobs");
    let chosen: Vec<&Value> = dead
        .iter()
        .filter(|j| match (&job_type, all, ids.is_empty()) {
            (Some(t), false, true) => j["type"] == t.as_str(),
            (None, true, true) => true,
            (None, false, false) => ids.iter().any(|id| j["id"] == id.as_str()),
            _ => false,
        })
        .collect();
    if !(ids.is_empty() || chosen.len() == ids.len()) {
        return Err(CliError::Api {
            status: 404,
            code: "not_found".into(),
            detail: "some ids are not in the dead-letter queue".into(),
        });
    }
    let selected =
        matches!((&job_type, all, ids.is_empty()), (Some(_), false, true) | (None, true, true) | (None, false, false));
    if !selected {
        return Err(CliError::Invalid("name what to purge: IDS, --type T or --all".into()));
    }
    if chosen.is_empty() {
        // Nothing matched: not a mistake of the command's, and nothing to snapshot.
        let what = job_type.map_or("the dead-letter queue is empty".to_owned(), |t| format!("no dead job of type {t}"));
        output::print(g.format, &json!({ "released": [] }), |_| format!("{what}; nothing to purge\n"));
        return Ok(());
    }
    let mut text = String::new();
    for j in &chosen {
        text.push_str(&serde_json::to_string(j).expect("json"));
        text.push('\n');
    }
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&snapshot)
        .map_err(|e| CliError::Invalid(format!("snapshot {}: {e}", snapshot.display())))?;
    file.write_all(text.as_bytes())
        .and_then(|_| file.sync_all())
        .map_err(|e| CliError::Other(format!("write snapshot {}: {e}", snapshot.display())))?;
    let sha = hex::encode(Sha256::digest(text.as_bytes()));
    let ids: Vec<&Value> = chosen.iter().map(|j| &j["id"]).collect();
    let v =
        client.post(&format!("{P}/dlq/purge"), &json!({ "ids": ids, "snapshotSha256": sha })).await?.ok()?.json()?;
    output::print(g.format, &v, |v| {
        format!("purged {} dead jobs; snapshot {} (sha256 {sha})\n", list(v, "released").len(), snapshot.display())
    });
    Ok(())
}

pub async fn locks(g: &Global, cmd: LocksCmd) -> Result<(), CliError> {
    let client = target::client(g)?;
    match cmd {
        LocksCmd::List { env } => {
            let q = env.map(|e| format!("?env={e}")).unwrap_or_default();
            let v = client.get(&format!("{P}/locks{q}")).await?.ok()?.json()?;
            output::print(g.format, &v, |v| {
                let rows: Vec<Vec<String>> = list(v, "locks")
                    .iter()
                    .map(|l| {
                        let waiters = list(l, "waiters").iter().map(|w| s(&w["owner"])).collect::<Vec<_>>().join(",");
                        vec![
                            s(&l["id"]),
                            s(&l["resource"]),
                            s(&l["holder"]),
                            s(&l["token"]),
                            l["ageSeconds"].as_u64().map_or("-".into(), |a| format!("{a}s")),
                            s(&l["expiresAt"]),
                            if waiters.is_empty() { "-".into() } else { waiters },
                        ]
                    })
                    .collect();
                table(&["ID", "RESOURCE", "HOLDER", "TOKEN", "AGE", "EXPIRES", "WAITERS"], &rows)
            });
        }
        LocksCmd::Release { id, env, force, reason, owner, lock_token } => {
            let reason = if force { Some(force_reason(reason)?) } else { reason };
            // A forced release names the token it breaks, as listed now: if the lock passes to
            // its next holder meanwhile, the daemon leaves it with that holder.
            let held = |query: String| {
                let client = &client;
                async move {
                    let v = client.get(&format!("{P}/locks{query}")).await?.ok()?.json()?;
                    Ok::<_, CliError>(
                        list(&v, "locks")
                            .iter()
                            .filter_map(|l| Some((l["id"].as_str()?.to_owned(), l["token"].as_u64()?)))
                            .collect::<std::collections::BTreeMap<String, u64>>(),
                    )
                }
            };
            let v = match (id, env) {
                (Some(id), None) if force => {
                    let token =
                        lock_token.or(held(String::new()).await?.get(&id).copied()).ok_or_else(|| CliError::Api {
                            status: 404,
                            code: "not_found".into(),
                            detail: format!("held lock {id} not found"),
                        })?;
                    let body = json!({ "force": true, "reason": reason, "token": token });
                    client.post(&format!("{P}/locks/{id}/release"), &body).await?.ok()?.json()?
                }
                (Some(id), None) => {
                    let body = json!({ "force": force, "reason": reason, "owner": owner, "token": lock_token });
                    client.post(&format!("{P}/locks/{id}/release"), &body).await?.ok()?.json()?
                }
                (None, Some(env)) if force => {
                    let tokens = held(format!("?env={env}")).await?;
                    client
                        .post(
                            &format!("{P}/locks/release"),
                            &json!({ "env": env, "force": true, "reason": reason, "tokens": tokens }),
                        )
                        .await?
                        .ok()?
                        .json()?
                }
                (None, Some(_)) => {
                    return Err(CliError::Invalid("releasing every lock of an environment needs --force".into()));
                }
                _ => return Err(CliError::Invalid("name a lock ID or --env ENV".into())),
            };
            output::print(g.format, &v, |v| format!("released {}\n", joined(&v["released"])));
        }
        LocksCmd::Acquire { resource, owner, ttl } => {
            let v = client
                .post(&format!("{P}/locks"), &json!({ "resource": resource, "owner": owner, "ttl": ttl }))
                .await?
                .ok()?
                .json()?;
            output::print(g.format, &v, |v| {
                if v["granted"] == true {
                    format!("{} granted with token {}\n", s(&v["lockId"]), s(&v["token"]))
                } else {
                    format!("{} is held; waiting at position {}\n", s(&v["lockId"]), s(&v["position"]))
                }
            });
        }
    }
    Ok(())
}

pub async fn config(g: &Global, cmd: ConfigCmd) -> Result<(), CliError> {
    let client = target::client(g)?;
    let one = |v: &Value| format!("{} = {} ({})\n", s(&v["key"]), s(&v["value"]), s(&v["source"]));
    match cmd {
        ConfigCmd::Set { key, value } => {
            let v = put(&client, &format!("{P}/config/{key}"), &json!({ "value": value })).await?;
            output::print(g.format, &v, one);
        }
        ConfigCmd::Get { key } => {
            let v = client.get(&format!("{P}/config/{key}")).await?.ok()?.json()?;
            output::print(g.format, &v, one);
        }
        ConfigCmd::Show => {
            let v = client.get(&format!("{P}/config")).await?.ok()?.json()?;
            output::print(g.format, &v, |v| {
                let rows: Vec<Vec<String>> =
                    list(v, "values").iter().map(|c| vec![s(&c["key"]), s(&c["value"]), s(&c["source"])]).collect();
                table(&["KEY", "VALUE", "SOURCE"], &rows)
            });
        }
    }
    Ok(())
}

pub async fn agents(g: &Global, env: Option<String>) -> Result<(), CliError> {
    let client = target::client(g)?;
    let q = env.map(|e| format!("?env={e}")).unwrap_or_default();
    let v = client.get(&format!("{P}/workers{q}")).await?.ok()?.json()?;
    output::print(g.format, &v, |v| {
        let rows: Vec<Vec<String>> = list(v, "workers")
            .iter()
            .map(|w| {
                vec![
                    s(&w["id"]),
                    s(&w["env"]),
                    joined(&w["types"]),
                    s(&w["leases"]),
                    format!("{}s ago", s(&w["lastSeenSecondsAgo"])),
                ]
            })
            .collect();
        table(&["WORKER", "ENV", "TYPES", "LEASES", "LAST SEEN"], &rows)
    });
    Ok(())
}

/// The reason a forced release is ledgered with: `--reason`, or asked for on a terminal (the
/// runbooks' `locks release … --force` works as written, and the ledger still says why).
fn force_reason(reason: Option<String>) -> Result<String, CliError> {
    use std::io::{BufRead, IsTerminal, Write};
    if let Some(r) = reason.filter(|r| !r.trim().is_empty()) {
        return Ok(r);
    }
    let refuse = || CliError::Invalid("a forced release needs --reason \"…\": it is recorded in the ledger".into());
    if !std::io::stdin().is_terminal() {
        return Err(refuse());
    }
    eprint!("reason for forcing the release (recorded in the ledger): ");
    let _ = std::io::stderr().flush();
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line).map_err(|e| CliError::Other(format!("read reason: {e}")))?;
    Some(line.trim().to_owned()).filter(|r| !r.is_empty()).ok_or_else(refuse)
}
