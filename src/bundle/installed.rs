//! Installed bundles over time: every installed bundle is re-verified against the current
//! trust store at start and on demand (`stella bundle verify --installed`); one whose key was
//! revoked or whose sealed files changed is quarantined (ledgered), and runs that need it are
//! refused naming the bundle and the reason.

use crate::bundle::plan::BundleCommand;
use crate::bundle::verify::reverify_installed;
use crate::store::command::Actor;
use crate::store::schema::read;
use crate::store::{Command, Store, WriterHandle};
use crate::trust::store::TrustStore;
use serde_json::{Value, json};
use std::path::Path;

pub fn meta_dir(lib: &Path, digest: &str) -> std::path::PathBuf {
    lib.join("bundles/meta").join(digest)
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
