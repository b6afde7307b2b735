//! `stella audit import|runs|ledger|report`: the auditor's commands over the audit store
//! ([`crate::audit`]), rendered for a terminal or as JSON.

use crate::audit::{AuditStore, verify};
use crate::cli::args::{AuditCmd, Global};
use crate::cli::output::{self, s, table};
use crate::domain::runs::RunEvent;
use crate::exit::CliError;
use crate::kernel::event::Event;
use crate::kernel::ledger::Entry;
use serde_json::{Value, json};

/// What `audit report` lists: operators' decisions, by entry kind.
const DECISIONS: &[(&str, &str)] = &[
    ("run.created", "started run"),
    ("run.cancelled", "cancelled run"),
    ("run.resumed", "resumed run"),
    ("step.skipped", "skipped step"),
    ("approval.", "approved"),
    ("lock.force_released", "force-released lock"),
    ("bundle.imported", "imported bundle"),
    ("bundle.removed", "removed bundle"),
    ("bundle.rejected", "bundle rejected"),
    ("bundle.quarantined", "bundle quarantined"),
    ("dag.registered", "registered DAG"),
    ("dag.disabled", "disabled DAG"),
    ("dag.enabled", "enabled DAG"),
    ("dag.rolled_back", "rolled back DAG"),
    ("token.created", "created token"),
    ("token.revoked", "revoked token"),
    ("config.set", "set config"),
    ("secret.set", "set secret"),
    ("queue.paused", "paused job type"),
    ("queue.resumed", "resumed job type"),
    ("queue.budget_set", "set budget"),
    ("queue.budget_cleared", "cleared budget"),
    ("queue.budget_restored", "budget restored"),
    ("dlq.replayed", "replayed dead job"),
    ("dlq.purged", "purged dead jobs"),
    ("schedule.paused", "paused schedule"),
    ("schedule.resumed", "resumed schedule"),
    ("schedule.cleared", "cleared schedule"),
    ("export.created", "exported"),
];

/// What a decision changed, where the kind alone does not say: a budget's limits and end, a
/// forced release's reason.
fn detail(x: &Entry) -> String {
    let d = &x.data;
    let mut parts: Vec<String> = Vec::new();
    match x.kind.as_str() {
        "queue.budget_set" | "queue.budget_restored" => {
            let b = if x.kind == "queue.budget_set" { d } else { &d["restored"] };
            let rate = b["rateMilliPerS"].as_u64().or(b["rate_milli_per_s"].as_u64());
            parts.extend(rate.map(|r| format!("rate {}/s", r as f64 / 1000.0)));
            parts.extend(b["maxDepth"].as_u64().or(b["max_depth"].as_u64()).map(|n| format!("depth<={n}")));
            parts.extend(d["untilMs"].as_i64().map(|u| format!("until {}", time(u))));
            parts.extend(d["tenant"].as_str().map(|t| format!("tenant {t}")));
        }
        "queue.budget_cleared" | "lock.force_released" => {
            parts.extend(d["reason"].as_str().map(|r| format!("reason: {r}")));
        }
        _ => {}
    }
    parts.join(", ")
}

fn time(ms: i64) -> String {
    crate::clock::rfc3339(ms)
}

pub fn cli(g: &Global, cmd: AuditCmd) -> Result<(), CliError> {
    match cmd {
        AuditCmd::Verify { .. } => unreachable!("handled by cli::export::audit"),
        AuditCmd::Import { packs, signers, store } => import(g, packs, signers, &store.path),
        AuditCmd::Ledger { store, kind, limit } => ledger(g, &store.path, kind.as_deref(), limit),
        AuditCmd::Runs { store } => runs(g, &store.path),
        AuditCmd::Report { store } => report(g, &store.path),
    }
}

/// `audit import`: verifies every pack first, then imports them oldest first.
fn import(
    g: &Global,
    mut packs: Vec<std::path::PathBuf>,
    signers: Option<std::path::PathBuf>,
    store: &std::path::Path,
) -> Result<(), CliError> {
    let signers = signers.unwrap_or_else(|| crate::cli::target::layout(g).trust_dir().join("allowed_signers"));
    let trust =
        crate::trust::store::TrustStore::load_files(&signers, None).map_err(|e| CliError::Invalid(e.to_string()))?;
    let db = AuditStore::open(store).map_err(CliError::Other)?;
    let now = crate::clock::SystemClock.now();
    let mut verified = Vec::new();
    for p in packs.drain(..) {
        let v = verify::verify_pack(&p, &trust, now)
            .map_err(|err| CliError::VerifyFailed(format!("{}: {err}", p.display())))?;
        verified.push((p, v));
    }
    // Oldest first, whatever order they were named in.
    verified.sort_by_key(|(_, v)| v.manifest.ledger.first_seq.unwrap_or(u64::MAX));
    let mut results = Vec::new();
    for (p, v) in &verified {
        let r = db.import(p, v).map_err(|err| CliError::VerifyFailed(format!("{}: {err}", p.display())))?;
        results.push(r);
    }
    let out = json!({ "imported": results });
    output::print(g.format, &out, |v| {
        v["imported"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|r| {
                let notes: Vec<&str> = r["notes"].as_array().into_iter().flatten().filter_map(|n| n.as_str()).collect();
                format!(
                    "imported {}: seq {}..{}, {} new entries; {}\n",
                    s(&r["pack"]),
                    s(&r["ledger"]["firstSeq"]),
                    s(&r["ledger"]["lastSeq"]),
                    s(&r["added"]),
                    notes.join("; ")
                )
            })
            .collect()
    });
    Ok(())
}

/// `audit ledger`: the imported entries, of one kind (or kind prefix ending in `.`).
fn ledger(g: &Global, store: &std::path::Path, kind: Option<&str>, limit: usize) -> Result<(), CliError> {
    let db = AuditStore::open(store).map_err(CliError::Other)?;
    let mut entries: Vec<Entry> = Vec::new();
    db.each(|x| {
        if entries.len() >= limit {
            return false;
        }
        if kind.is_none_or(|k| x.kind == k || (k.ends_with('.') && x.kind.starts_with(k))) {
            entries.push(x);
        }
        true
    })
    .map_err(CliError::Other)?;
    let v = json!({ "entries": entries });
    output::print(g.format, &v, |_| {
        table(
            &["SEQ", "TIME", "ACTOR", "KIND", "SUBJECTS"],
            &entries
                .iter()
                .map(|x| vec![x.seq.to_string(), time(x.time), x.actor.clone(), x.kind.clone(), x.subjects.join(" ")])
                .collect::<Vec<_>>(),
        )
    });
    Ok(())
}

/// `audit runs`: every run the imported ledger started, with who and how it ended.
fn runs(g: &Global, store: &std::path::Path) -> Result<(), CliError> {
    let db = AuditStore::open(store).map_err(CliError::Other)?;
    let mut runs: Vec<Value> = Vec::new();
    db.each(|x| {
        match RunEvent::of(&x) {
            Some(Ok(RunEvent::Created(c))) => runs.push(json!({ "run": c.run_id, "dag": c.dag, "tenant": x.tenant,
                "startedBy": x.actor, "startedAt": time(x.time), "status": "running", "endedAt": null })),
            Some(Ok(e)) if let Some(status) = e.run_end() => {
                if let Some(r) = runs.iter_mut().find(|r| r["run"] == e.run_id()) {
                    r["status"] = json!(status);
                    r["endedAt"] = json!(time(x.time));
                    r["endedBy"] = json!(x.actor);
                }
            }
            _ => {}
        }
        true
    })
    .map_err(CliError::Other)?;
    let v = json!({ "runs": runs });
    output::print(g.format, &v, |_| {
        let columns = ["run", "dag", "tenant", "startedBy", "startedAt", "status", "endedAt"];
        table(
            &["RUN", "DAG", "TENANT", "STARTED BY", "STARTED", "STATUS", "ENDED"],
            &runs.iter().map(|r| columns.iter().map(|k| s(&r[*k])).collect()).collect::<Vec<_>>(),
        )
    });
    Ok(())
}

/// `audit report`: the packs imported and every operator decision in them.
fn report(g: &Global, store: &std::path::Path) -> Result<(), CliError> {
    let db = AuditStore::open(store).map_err(CliError::Other)?;
    let mut decisions = Vec::new();
    db.each(|x| {
        if let Some((_, label)) =
            DECISIONS.iter().find(|(k, _)| x.kind == *k || (k.ends_with('.') && x.kind.starts_with(k)))
        {
            decisions.push(json!({ "seq": x.seq, "time": time(x.time), "actor": x.actor, "action": label,
                                   "kind": x.kind, "subject": x.subjects.join(" "), "detail": detail(&x) }));
        }
        true
    })
    .map_err(CliError::Other)?;
    let packs = db.packs().map_err(CliError::Other)?;
    let v = json!({ "packs": packs, "decisions": decisions });
    output::print(g.format, &v, |v| {
        let mut out = String::from("packs\n");
        for p in v["packs"].as_array().into_iter().flatten() {
            out.push_str(&format!(
                "  {}  {} → {}  seq {}..{}  signed by {}\n",
                s(&p["pack"]),
                s(&p["window"]["from"]),
                s(&p["window"]["to"]),
                s(&p["ledger"]["firstSeq"]),
                s(&p["ledger"]["lastSeq"]),
                s(&p["fingerprint"])
            ));
        }
        out.push_str("decisions\n");
        let columns = ["seq", "time", "actor", "action", "subject", "detail"];
        out.push_str(&table(
            &["SEQ", "TIME", "ACTOR", "ACTION", "SUBJECT", "DETAIL"],
            &decisions.iter().map(|d| columns.iter().map(|k| s(&d[*k])).collect()).collect::<Vec<_>>(),
        ));
        out
    });
    Ok(())
}
