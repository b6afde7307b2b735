//! Bundle commands in the store: an import (after the daemon verified and sealed it) with the
//! version policy, and a rejection — both ledgered with their reason.

use crate::domain::bundles::import::compare_versions;
use crate::domain::bundles::tables::BUNDLES;
use crate::domain::bundles::{BundleEvent, BundleImported, BundleQuarantined, BundleRejected, BundleRemoved};
use crate::domain::live::Effects;
use crate::domain::runs::tables::DAG_SPECS;
use crate::domain::runs::tables::DAGS;
use crate::domain::runs::tables::DagRecord;
use crate::domain::runs::tables::RUNS;
use crate::domain::runs::tables::RunRecord;
use crate::domain::runs::{DagEvent, DagVersionRef, PluginRegistered};
use crate::kernel::CommandError;
use crate::kernel::event::Event;
use crate::kernel::storage;
use crate::kernel::store::Record;
use crate::kernel::store::rw;
use redb::{ReadableTable, WriteTransaction};
use serde_json::{Value, json};

#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum BundleCommand {
    Import {
        name: String,
        version: String,
        kind: String,
        digest: String,
        signer: String,
        fingerprint: String,
        allow_downgrade: bool,
        entrypoint: Option<String>,
        /// The step kinds a plugin bundle's plugin implements.
        kinds: Vec<String>,
        /// The DAGs a DAG bundle registers (name, spec), in the import's transaction.
        dags: Vec<(String, String)>,
        /// The environments a release bundle declares (its deployment DAGs are in `dags`).
        environments: Option<Vec<crate::domain::release::Environment>>,
    },
    Reject {
        file: String,
        sha256: String,
        reason: String,
    },
    /// `bundle remove`: uninstall a plugin or DAG bundle (never while something needs it).
    Remove {
        name: String,
    },
    /// An installed bundle no longer verifies: runs that need it are refused.
    Quarantine {
        name: String,
        digest: String,
        reason: String,
    },
}

/// The installed bundle of `name`, if any.
pub fn installed(txn: &WriteTransaction, name: &str) -> Result<Option<Value>, CommandError> {
    let t = txn.open_table(BUNDLES).map_err(storage)?;
    let v = t.get(name).map_err(storage)?;
    v.map(|v| serde_json::from_slice(v.value()).map_err(storage)).transpose()
}

pub fn plan(cmd: &BundleCommand, txn: &WriteTransaction) -> Result<Effects, CommandError> {
    match cmd {
        BundleCommand::Remove { name } => remove(txn, name),
        BundleCommand::Reject { file, sha256, reason } => {
            let event = BundleEvent::Rejected(BundleRejected {
                file: file.clone(),
                sha256: sha256.clone(),
                reason: reason.clone(),
            });
            Ok(vec![event.draft("", vec![sha256.clone()])].into())
        }
        BundleCommand::Quarantine { name, digest, reason } => {
            let cur = installed(txn, name)?.ok_or_else(|| CommandError::NotFound { what: format!("bundle {name}") })?;
            if cur["digest"].as_str() != Some(digest.as_str()) || cur["quarantined"].as_str() == Some(reason.as_str()) {
                return Ok(Effects::default());
            }
            let event = BundleEvent::Quarantined(BundleQuarantined {
                name: name.clone(),
                digest: digest.clone(),
                reason: reason.clone(),
            });
            Ok(vec![event.draft("", vec![name.clone(), digest.clone()])].into())
        }
        BundleCommand::Import {
            name,
            version,
            kind,
            digest,
            signer,
            fingerprint,
            allow_downgrade,
            entrypoint,
            kinds,
            dags,
            environments,
        } => {
            if let Some(cur) = installed(txn, name)? {
                let cur_version = cur["version"].as_str().unwrap_or_default();
                match compare_versions(version, cur_version) {
                    std::cmp::Ordering::Less if !allow_downgrade => {
                        return Err(CommandError::conflict(
                            "version_downgrade",
                            format!(
                                "bundle {name} {version} is older than the installed {cur_version}: a downgrade needs --allow-downgrade"
                            ),
                        ));
                    }
                    std::cmp::Ordering::Equal if cur["digest"].as_str() == Some(digest.as_str()) => {
                        return Ok(Effects { note: Some(json!({ "unchanged": true })), ..Effects::default() });
                    }
                    std::cmp::Ordering::Equal => {
                        return Err(CommandError::conflict(
                            "version_reused",
                            format!(
                                "bundle {name} {version} is installed with other content: versions are never reused"
                            ),
                        ));
                    }
                    _ => {}
                }
            }
            let event = BundleEvent::Imported(BundleImported {
                name: name.clone(),
                version: version.clone(),
                kind: kind.clone(),
                digest: digest.clone(),
                signer: signer.clone(),
                fingerprint: fingerprint.clone(),
                dags: dags.iter().map(|(n, _)| n.clone()).collect(),
            });
            let mut drafts = vec![event.draft("", vec![name.clone(), digest.clone()])];
            if let Some(environments) = environments {
                drafts.push(crate::domain::release::plan::declared(name, version, digest, environments));
            }
            for (dag, spec) in dags {
                drafts.extend(crate::domain::runs::plan::register(txn, dag, spec, false)?.drafts);
            }
            if let Some(entrypoint) = entrypoint {
                let event = DagEvent::PluginRegistered(PluginRegistered {
                    name: name.clone(),
                    digest: digest.clone(),
                    entrypoint: entrypoint.clone(),
                    kinds: kinds.clone(),
                    unsigned: false,
                    previous: None,
                });
                drafts.push(event.draft("", vec![name.clone(), digest.clone()]));
            }
            Ok(drafts.into())
        }
    }
}

/// Removing a bundle: a trust bundle never (a newer one replaces it); a plugin bundle only when
/// no enabled DAG version names its plugin and no unfinished run pinned it; a DAG bundle only
/// when none of its DAGs has an unfinished run, and its DAGs' active versions are disabled in
/// the same transaction (their history stays for the audit).
fn remove(txn: &WriteTransaction, name: &str) -> Result<Effects, CommandError> {
    let cur = installed(txn, name)?.ok_or_else(|| CommandError::NotFound { what: format!("bundle {name}") })?;
    let digest = cur["digest"].as_str().unwrap_or_default().to_owned();
    let dags: Vec<String> =
        cur["dags"].as_array().into_iter().flatten().filter_map(|d| d.as_str().map(str::to_owned)).collect();
    let conflict =
        |why: String| Err(CommandError::conflict("bundle_in_use", format!("bundle {name} is in use: {why}")));
    match cur["kind"].as_str() {
        Some("trust") => {
            return Err(CommandError::conflict(
                "trust_bundle_permanent",
                "the trust store is replaced by a newer trust bundle, never removed",
            ));
        }
        Some("plugin") => {
            let dag_table = txn.open_table(DAGS).map_err(storage)?;
            let specs = txn.open_table(DAG_SPECS).map_err(storage)?;
            for row in dag_table.iter().map_err(storage)? {
                let (k, _) = row.map_err(storage)?;
                let Some(rec) = rw::get::<DagRecord>(&dag_table, "dags", k.value()).map_err(storage)? else { continue };
                let active = rec.versions.iter().find(|v| v.version == rec.active && !v.disabled);
                let Some(v) = active else { continue };
                let key = format!("{}@{}", rec.name, v.version);
                let Some(text) = specs.get(key.as_str()).map_err(storage)? else { continue };
                let compiled = crate::domain::runs::spec::compile_registered(&String::from_utf8_lossy(text.value()));
                if compiled.is_ok_and(|c| c.steps.iter().any(|s| s.plugin == name)) {
                    return conflict(format!(
                        "DAG {key} runs its plugin (disable that version or import one without it first)"
                    ));
                }
            }
        }
        _ => {}
    }
    for row in txn.open_table(RUNS).map_err(storage)?.iter().map_err(storage)? {
        let (_, v) = row.map_err(storage)?;
        let run = RunRecord::from_json_bytes(v.value()).map_err(storage)?;
        if run.status.terminal() {
            continue;
        }
        if dags.contains(&run.dag) || run.plugins.values().any(|d| *d == digest) {
            return conflict(format!("run {} of {} has not finished", run.id, run.dag));
        }
    }
    let event = BundleEvent::Removed(BundleRemoved {
        name: name.to_owned(),
        version: cur["version"].clone(),
        kind: cur["kind"].clone(),
        digest: digest.clone(),
    });
    let mut drafts = vec![event.draft("", vec![name.to_owned(), digest.clone()])];
    let dag_table = txn.open_table(DAGS).map_err(storage)?;
    for dag in &dags {
        let Some(rec) = rw::get::<DagRecord>(&dag_table, "dags", dag).map_err(storage)? else { continue };
        if rec.versions.iter().any(|v| v.version == rec.active && !v.disabled) {
            let event = DagEvent::Disabled(DagVersionRef { name: dag.clone(), version: rec.active });
            drafts.push(event.draft("", vec![dag.clone()]));
        }
    }
    Ok(drafts.into())
}
