//! Signed bundles (DESIGN.md §3): the envelope format (`format`), building and signing one from
//! a directory (`build`), walking an untrusted tar stream with bounded extension records
//! (`entries`), the offline check of an envelope (`verify`), the import policy planned in the
//! writer (`plan`), unpacking into the sealed store (`import`).

pub mod apply;
pub mod build;
pub mod entries;
pub mod format;
pub mod import;
pub mod plan;
pub mod tables;
pub mod verify;

use serde::{Deserialize, Serialize};

crate::events! {
    /// The entries of the bundles domain (a DAG bundle's DAGs and a plugin bundle's plugin are
    /// registered by the runs domain's entries in the same transaction).
    pub enum BundleEvent {
        Imported(BundleImported) = "bundle.imported",
        Rejected(BundleRejected) = "bundle.rejected",
        Quarantined(BundleQuarantined) = "bundle.quarantined",
        Removed(BundleRemoved) = "bundle.removed",
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BundleImported {
    pub name: String,
    pub version: String,
    pub kind: String,
    pub digest: String,
    pub signer: String,
    pub fingerprint: String,
    #[serde(default)]
    pub dags: Vec<String>,
}

/// A bundle refused at import, by the file's digest (no byte of it is quoted).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BundleRejected {
    pub file: String,
    pub sha256: String,
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BundleQuarantined {
    pub name: String,
    pub digest: String,
    pub reason: String,
}

/// `version` and `kind` as the installed record had them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BundleRemoved {
    pub name: String,
    pub version: serde_json::Value,
    pub kind: serde_json::Value,
    pub digest: String,
}
