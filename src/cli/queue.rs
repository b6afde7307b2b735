//! `stella orch queue|dlq|locks|config|agent …`: the runbooks' queue, lock and config
//! operations, through the daemon's API.

use crate::api::dto;
use crate::cli::args::*;
use crate::cli::output::{self, opt, s, table};
use crate::cli::target;
use crate::client::Client;
use crate::exit::CliError;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use std::io::Write;

const P: &str = "/api/v1/orchestrator";

pub(crate) async fn put<T: DeserializeOwned>(
    client: &Client,
    path: &str,
    body: &Value,
) -> Result<(Value, T), CliError> {
    let bytes = serde_json::to_vec(body).expect("json");
    client.send(hyper::Method::PUT, path, Some(bytes)).await?.ok()?.typed()
}

pub async fn queue(g: &Global, cmd: QueueCmd) -> Result<(), CliError> {
    let client = target::client(g)?;
    let (raw, v): (Value, dto::QueueStatus) = match cmd {
        QueueCmd::Status => client.get(&format!("{P}/queue")).await?.ok()?.typed()?,
        QueueCmd::Pause { job_type, create } => {
            let q = if create { "?create=true" } else { "" };
            client.post(&format!("{P}/queue/{job_type}/pause{q}"), &json!({})).await?.ok()?.typed()?
        }
        QueueCmd::Resume { job_type } => {
            client.post(&format!("{P}/queue/{job_type}/resume"), &json!({})).await?.ok()?.typed()?
        }
        QueueCmd::Budget(BudgetCmd::Set { job_type, rate, burst, max_depth, for_, tenant }) => {
            let body = json!({ "rate": rate, "burst": burst, "maxDepth": max_depth, "for": for_, "tenant": tenant });
            put(&client, &format!("{P}/queue/{job_type}/budget"), &body).await?
        }
        QueueCmd::Budget(BudgetCmd::Clear { job_type, tenant }) => {
            let q = tenant.map(|t| format!("?tenant={t}")).unwrap_or_default();
            client.send(hyper::Method::DELETE, &format!("{P}/queue/{job_type}/budget{q}"), None).await?.ok()?.typed()?
        }
        QueueCmd::Enqueue { job_type, payload, priority, max_attempts, delay, key, tenant } => {
            let payload: Value =
                serde_json::from_str(&payload).map_err(|e| CliError::Invalid(format!("--payload is not JSON: {e}")))?;
            let body = json!({ "type": job_type, "payload": payload, "priority": priority, "maxAttempts": max_attempts,
                               "delay": delay, "idempotencyKey": key, "tenant": tenant });
            let (raw, v) = client.post(&format!("{P}/jobs"), &body).await?.ok()?.typed::<dto::Job>()?;
            output::show(g.format, &raw, &v, |v| format!("{} {} ({})\n", v.id, v.state, v.job_type));
            return Ok(());
        }
    };
    output::show(g.format, &raw, &v, queue_text);
    Ok(())
}

fn queue_text(v: &dto::QueueStatus) -> String {
    let rows: Vec<Vec<String>> = v
        .types
        .iter()
        .map(|t| {
            let budgets = t
                .budgets
                .iter()
                .map(|b| {
                    let until = match (&b.until, &b.restores) {
                        (Some(u), Some(r)) => format!(" until {u}, then {}", budget_text(r)),
                        (Some(u), None) => format!(" until {u}, then none"),
                        _ => String::new(),
                    };
                    format!("{}:{}{until}", b.tenant, budget_text(b))
                })
                .collect::<Vec<_>>()
                .join("; ");
            vec![
                t.job_type.clone(),
                t.ready.to_string(),
                t.delayed.to_string(),
                t.leased.to_string(),
                t.dead.to_string(),
                t.oldest_ready_age_seconds.map_or("-".into(), |a| format!("{a}s")),
                if t.paused { format!("paused by {}", opt(&t.paused_by)) } else { "running".into() },
                if budgets.is_empty() { "-".into() } else { budgets },
            ]
        })
        .collect();
    format!(
        "{}depth {}  leased {}  dlq {}\n",
        table(&["TYPE", "READY", "DELAYED", "LEASED", "DEAD", "OLDEST", "DISPATCH", "BUDGETS"], &rows),
        v.depth,
        v.leased,
        v.dlq_depth
    )
}

/// `100/s depth<=3`: a budget's rate and depth limit.
fn budget_text(b: &dto::BudgetDto) -> String {
    let parts: Vec<String> =
        [b.rate.clone(), b.burst.map(|n| format!("burst {n}")), b.max_depth.map(|d| format!("depth<={d}"))]
            .into_iter()
            .flatten()
            .collect();
    if parts.is_empty() { "-".into() } else { parts.join(" ") }
}

fn jobs_text(v: &dto::JobList) -> String {
    let rows: Vec<Vec<String>> = v
        .jobs
        .iter()
        .map(|j| {
            vec![
                j.id.clone(),
                j.job_type.clone(),
                j.tenant.clone(),
                format!("{}/{}", j.attempt, j.max_attempts),
                opt(&j.finished_at),
                opt(&j.last_error),
            ]
        })
        .collect();
    table(&["ID", "TYPE", "TENANT", "ATTEMPTS", "DIED", "LAST ERROR"], &rows)
}

/// What a DLQ replay did: each new job (through its run for a DAG step), each entry left.
fn replayed_text(v: &dto::JobList) -> String {
    let mut out: String = v
        .jobs
        .iter()
        .map(|j| match j.payload["run"].as_str() {
            Some(run) => format!(
                "replayed {} through its run: step {run}/{} retried as {}\n",
                opt(&j.replay_of),
                s(&j.payload["step"]),
                j.id
            ),
            None => format!("replayed {} as {}\n", opt(&j.replay_of), j.id),
        })
        .collect();
    for r in &v.refused {
        out.push_str(&format!("left {} in the dead-letter queue: {}\n", r.id, r.reason));
    }
    out
}

pub async fn dlq(g: &Global, cmd: DlqCmd) -> Result<(), CliError> {
    let client = target::client(g)?;
    match cmd {
        DlqCmd::List => {
            let (raw, v) = client.get(&format!("{P}/dlq")).await?.ok()?.typed::<dto::JobList>()?;
            output::show(g.format, &raw, &v, jobs_text);
        }
        DlqCmd::Show { id } => {
            // Text output is the reply itself, pretty-printed: no field is rendered.
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
            let (raw, v) = client.post(&format!("{P}/dlq/replay"), &body).await?.ok()?.typed::<dto::JobList>()?;
            output::show(g.format, &raw, &v, replayed_text);
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
    let (raw, dead) = client.get(&format!("{P}/dlq")).await?.ok()?.typed::<dto::JobList>()?;
    // Each dead job typed, beside its JSON as received (which the snapshot keeps).
    let raw_jobs = raw["jobs"].as_array().map(Vec::as_slice).unwrap_or_default();
    let chosen: Vec<(&dto::Job, &Value)> = dead
        .jobs
        .iter()
        .zip(raw_jobs)
        .filter(|(j, _)| match (&job_type, all, ids.is_empty()) {
            (Some(t), false, true) => j.job_type == *t,
            (None, true, true) => true,
            (None, false, false) => ids.contains(&j.id),
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
    let sha = write_snapshot(&snapshot, chosen.iter().map(|(_, raw)| *raw))?;
    let ids: Vec<&str> = chosen.iter().map(|(j, _)| j.id.as_str()).collect();
    let (raw, v) = client
        .post(&format!("{P}/dlq/purge"), &json!({ "ids": ids, "snapshotSha256": sha }))
        .await?
        .ok()?
        .typed::<dto::Released>()?;
    output::show(g.format, &raw, &v, |v| {
        format!("purged {} dead jobs; snapshot {} (sha256 {sha})\n", v.released.len(), snapshot.display())
    });
    Ok(())
}

/// Writes `jobs` as NDJSON to a new file at `path`, fsynced; returns the file's sha256.
fn write_snapshot<'a>(path: &std::path::Path, jobs: impl Iterator<Item = &'a Value>) -> Result<String, CliError> {
    let mut text = String::new();
    for j in jobs {
        text.push_str(&serde_json::to_string(j).expect("json"));
        text.push('\n');
    }
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .map_err(|e| CliError::Invalid(format!("snapshot {}: {e}", path.display())))?;
    file.write_all(text.as_bytes())
        .and_then(|_| file.sync_all())
        .map_err(|e| CliError::Other(format!("write snapshot {}: {e}", path.display())))?;
    Ok(hex::encode(Sha256::digest(text.as_bytes())))
}

fn locks_text(v: &dto::LockList) -> String {
    let rows: Vec<Vec<String>> = v
        .locks
        .iter()
        .map(|l| {
            let waiters = l.waiters.iter().map(|w| w.owner.as_str()).collect::<Vec<_>>().join(",");
            vec![
                l.id.clone(),
                l.resource.clone(),
                opt(&l.holder),
                opt(&l.token),
                l.age_seconds.map_or("-".into(), |a| format!("{a}s")),
                opt(&l.expires_at),
                if waiters.is_empty() { "-".into() } else { waiters },
            ]
        })
        .collect();
    table(&["ID", "RESOURCE", "HOLDER", "TOKEN", "AGE", "EXPIRES", "WAITERS"], &rows)
}

fn acquired_text(v: &dto::LockAcquired) -> String {
    if v.granted {
        format!("{} granted with token {}\n", v.lock_id, opt(&v.token))
    } else {
        format!("{} is held; waiting at position {}\n", v.lock_id, opt(&v.position))
    }
}

pub async fn locks(g: &Global, cmd: LocksCmd) -> Result<(), CliError> {
    let client = target::client(g)?;
    match cmd {
        LocksCmd::List { env } => {
            let q = env.map(|e| format!("?env={e}")).unwrap_or_default();
            let (raw, v) = client.get(&format!("{P}/locks{q}")).await?.ok()?.typed::<dto::LockList>()?;
            output::show(g.format, &raw, &v, locks_text);
        }
        LocksCmd::Release { id, env, force, reason, owner, lock_token } => {
            let reason = if force { Some(force_reason(reason)?) } else { reason };
            let (raw, v) = release(&client, id, env, force, reason, owner, lock_token).await?;
            output::show(g.format, &raw, &v, |v| format!("released {}\n", v.released.join(",")));
        }
        LocksCmd::Acquire { resource, owner, ttl } => {
            let (raw, v) = client
                .post(&format!("{P}/locks"), &json!({ "resource": resource, "owner": owner, "ttl": ttl }))
                .await?
                .ok()?
                .typed::<dto::LockAcquired>()?;
            output::show(g.format, &raw, &v, acquired_text);
        }
    }
    Ok(())
}

/// The held locks (of `query`'s environment) with the token each is held under.
async fn held(client: &Client, query: &str) -> Result<std::collections::BTreeMap<String, u64>, CliError> {
    let (_, v) = client.get(&format!("{P}/locks{query}")).await?.ok()?.typed::<dto::LockList>()?;
    Ok(v.locks.into_iter().filter_map(|l| Some((l.id, l.token?))).collect())
}

/// Releases lock `id`, or with `--force` every lock of `env`. A forced release names the token it
/// breaks, as listed now: if the lock passes to its next holder meanwhile, the daemon leaves it
/// with that holder.
async fn release(
    client: &Client,
    id: Option<String>,
    env: Option<String>,
    force: bool,
    reason: Option<String>,
    owner: Option<String>,
    lock_token: Option<u64>,
) -> Result<(Value, dto::Released), CliError> {
    match (id, env) {
        (Some(id), None) if force => {
            let token = lock_token.or(held(client, "").await?.get(&id).copied()).ok_or_else(|| CliError::Api {
                status: 404,
                code: "not_found".into(),
                detail: format!("held lock {id} not found"),
            })?;
            let body = json!({ "force": true, "reason": reason, "token": token });
            client.post(&format!("{P}/locks/{id}/release"), &body).await?.ok()?.typed()
        }
        (Some(id), None) => {
            let body = json!({ "force": force, "reason": reason, "owner": owner, "token": lock_token });
            client.post(&format!("{P}/locks/{id}/release"), &body).await?.ok()?.typed()
        }
        (None, Some(env)) if force => {
            let tokens = held(client, &format!("?env={env}")).await?;
            let body = json!({ "env": env, "force": true, "reason": reason, "tokens": tokens });
            client.post(&format!("{P}/locks/release"), &body).await?.ok()?.typed()
        }
        (None, Some(_)) => Err(CliError::Invalid("releasing every lock of an environment needs --force".into())),
        _ => Err(CliError::Invalid("name a lock ID or --env ENV".into())),
    }
}

pub async fn config(g: &Global, cmd: ConfigCmd) -> Result<(), CliError> {
    let client = target::client(g)?;
    let one = |v: &dto::ConfigValue| format!("{} = {} ({})\n", v.key, opt(&v.value), v.source);
    match cmd {
        ConfigCmd::Set { key, value } => {
            let (raw, v) =
                put::<dto::ConfigValue>(&client, &format!("{P}/config/{key}"), &json!({ "value": value })).await?;
            output::show(g.format, &raw, &v, one);
        }
        ConfigCmd::Get { key } => {
            let (raw, v) = client.get(&format!("{P}/config/{key}")).await?.ok()?.typed::<dto::ConfigValue>()?;
            output::show(g.format, &raw, &v, one);
        }
        ConfigCmd::Show => {
            let (raw, v) = client.get(&format!("{P}/config")).await?.ok()?.typed::<dto::ConfigList>()?;
            output::show(g.format, &raw, &v, |v| {
                let rows: Vec<Vec<String>> =
                    v.values.iter().map(|c| vec![c.key.clone(), opt(&c.value), c.source.clone()]).collect();
                table(&["KEY", "VALUE", "SOURCE"], &rows)
            });
        }
    }
    Ok(())
}

pub async fn agents(g: &Global, env: Option<String>) -> Result<(), CliError> {
    let client = target::client(g)?;
    let q = env.map(|e| format!("?env={e}")).unwrap_or_default();
    let (raw, v) = client.get(&format!("{P}/workers{q}")).await?.ok()?.typed::<dto::WorkerList>()?;
    output::show(g.format, &raw, &v, |v| {
        let rows: Vec<Vec<String>> = v
            .workers
            .iter()
            .map(|w| {
                vec![
                    w.id.clone(),
                    opt(&w.env),
                    w.types.join(","),
                    w.leases.to_string(),
                    format!("{}s ago", w.last_seen_seconds_ago),
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
