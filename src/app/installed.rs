//! Installed bundles over time: every installed bundle is re-verified against the current
//! trust store at start and on demand (`stella bundle verify --installed`); one whose key was
//! revoked or whose sealed files changed is quarantined (ledgered), and runs that need it are
//! refused naming the bundle and the reason.

use crate::domain::bundles::plan::BundleCommand;
use crate::domain::bundles::verify::reverify_installed;
use crate::kernel::Actor;
use crate::kernel::store::Store;
use crate::machine::Command;
use crate::machine::WriterHandle;
use crate::machine::read;
use crate::trust::store::TrustStore;
use serde_json::{Value, json};
use std::path::Path;

pub fn meta_dir(lib: &Path, digest: &str) -> std::path::PathBuf {
    lib.join("bundles/meta").join(digest)
}

/// Removes sealed bundle copies (with their `meta/` entry) that no record names: the copy of
/// a bundle refused after it was sealed, or of one whose removal was cut short. A digest is
/// kept while a bundle record, an installed plugin or a DAG version's pin names it. Returns
/// the digests removed.
pub fn sweep_unrecorded(store: &Store, lib: &Path) -> Result<Vec<String>, String> {
    let txn = store.read().map_err(|e| e.to_string())?;
    let mut named: std::collections::HashSet<String> = std::collections::HashSet::new();
    for b in read::bundles(&txn).map_err(|e| e.to_string())? {
        named.extend(b["digest"].as_str().map(str::to_owned));
    }
    for (_, p) in read::plugins(&txn).map_err(|e| e.to_string())? {
        named.extend(p["digest"].as_str().map(str::to_owned));
    }
    for d in read::dags(&txn).map_err(|e| e.to_string())? {
        named.extend(d.versions.iter().flat_map(|v| v.plugins.values().cloned()));
    }
    let mut removed = Vec::new();
    let Ok(entries) = std::fs::read_dir(lib.join("bundles/meta")) else { return Ok(removed) };
    for e in entries.flatten() {
        let digest = e.file_name().to_string_lossy().into_owned();
        if named.contains(&digest) {
            continue;
        }
        let _ = std::fs::remove_dir_all(crate::plugins::sealed_dir(lib, &digest));
        let _ = std::fs::remove_dir_all(e.path());
        removed.push(digest);
    }
    Ok(removed)
}

/// Re-verifies every installed bundle; quarantines the ones that fail. Returns one result per
/// bundle: `{name, digest, ok, reason}`.
pub async fn reverify_all(
    store: &Store,
    writer: &WriterHandle,
    lib: &Path,
    trust_dir: &Path,
    now_ms: i64,
    actor: Actor,
) -> Result<Vec<Value>, String> {
    let bundles = read::bundles(&store.read().map_err(|e| e.to_string())?).map_err(|e| e.to_string())?;
    let trust = TrustStore::load(trust_dir);
    let mut out = Vec::new();
    for b in bundles {
        let (name, digest) =
            (b["name"].as_str().unwrap_or_default().to_owned(), b["digest"].as_str().unwrap_or_default().to_owned());
        let result = match &trust {
            Err(e) => Err(format!("trust store: {e}")),
            Ok(t) => {
                let (meta, sealed, t) = (meta_dir(lib, &digest), crate::plugins::sealed_dir(lib, &digest), t.clone());
                tokio::task::spawn_blocking(move || reverify_installed(&meta, &sealed, &t, now_ms))
                    .await
                    .map_err(|e| e.to_string())?
            }
        };
        if let Err(reason) = &result {
            tracing::warn!(bundle = %name, %reason, "installed bundle no longer verifies; quarantined");
            let command =
                BundleCommand::Quarantine { name: name.clone(), digest: digest.clone(), reason: reason.clone() };
            writer.submit(actor.clone(), Command::Bundle(command)).await.map_err(|e| e.to_string())?;
        }
        out.push(json!({ "name": name, "digest": digest, "ok": result.is_ok(), "reason": result.err() }));
    }
    Ok(out)
}
