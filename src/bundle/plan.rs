//! Bundle commands in the store: an import (after the daemon verified and sealed it) with the
//! version policy, and a rejection — both ledgered with their reason.

use crate::bundle::import::compare_versions;
use crate::ledger::{Draft, Entry};
use crate::store::command::{CommandError, Effects, storage};
use crate::store::projection::ApplyError;
use crate::store::schema::BUNDLES;
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
    },
    Reject {
        file: String,
        sha256: String,
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
        BundleCommand::Reject { file, sha256, reason } => Ok(vec![Draft {
            tenant: String::new(),
            kind: "bundle.rejected",
            subjects: vec![sha256.clone()],
            data: json!({ "file": file, "sha256": sha256, "reason": reason }),
        }]
        .into()),
        BundleCommand::Import { name, version, kind, digest, signer, fingerprint, allow_downgrade, entrypoint } => {
            if let Some(cur) = installed(txn, name)? {
                let cur_version = cur["version"].as_str().unwrap_or_default();
                match compare_versions(version, cur_version) {
                    std::cmp::Ordering::Less if !allow_downgrade => {
                        return Err(CommandError::Conflict(format!(
                            "bundle {name} {version} is older than the installed {cur_version}: a downgrade needs --allow-downgrade"
                        )));
                    }
                    std::cmp::Ordering::Equal if cur["digest"].as_str() == Some(digest.as_str()) => {
                        return Ok(Effects { note: Some(json!({ "unchanged": true })), ..Effects::default() });
                    }
                    std::cmp::Ordering::Equal => {
                        return Err(CommandError::Conflict(format!(
                            "bundle {name} {version} is installed with other content: versions are never reused"
                        )));
                    }
                    _ => {}
                }
            }
            let mut drafts = vec![Draft {
                tenant: String::new(),
                kind: "bundle.imported",
                subjects: vec![name.clone(), digest.clone()],
                data: json!({ "name": name, "version": version, "kind": kind, "digest": digest, "signer": signer, "fingerprint": fingerprint }),
            }];
            if let Some(entrypoint) = entrypoint {
                drafts.push(Draft {
                    tenant: String::new(),
                    kind: "plugin.registered",
                    subjects: vec![name.clone(), digest.clone()],
                    data: json!({ "name": name, "digest": digest, "entrypoint": entrypoint, "unsigned": false, "previous": null }),
                });
            }
            Ok(drafts.into())
        }
    }
}

pub fn apply(txn: &WriteTransaction, entry: &Entry) -> Result<bool, ApplyError> {
    match entry.kind.as_str() {
        "bundle.rejected" => Ok(true),
        "bundle.imported" => {
            let name = entry.data["name"].as_str().unwrap_or_default();
            let mut rec = entry.data.clone();
            rec["importedMs"] = json!(entry.time);
            rec["importedBy"] = json!(entry.actor);
            txn.open_table(BUNDLES)
                .map_err(|e| ApplyError::Storage(e.into()))?
                .insert(name, serde_json::to_vec(&rec).expect("json").as_slice())
                .map_err(|e| ApplyError::Storage(e.into()))?;
            Ok(true)
        }
        _ => Ok(false),
    }
}
