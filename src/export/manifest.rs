//! `manifest.json` of an export pack, typed: what the exporter writes and what an auditor's
//! `audit verify` and `audit import` read. Written in RFC 8785 canonical form, so the field
//! order here is not the file's.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The format this build writes and reads.
pub const FORMAT_VERSION: u32 = 1;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Manifest {
    pub format_version: u32,
    pub appliance_id: String,
    /// The SHA256 fingerprint of the key that signed `SHA256SUMS`.
    pub key_fingerprint: String,
    pub tool_version: String,
    pub created_at: String,
    pub window: Window,
    pub signals: Vec<String>,
    pub ledger: LedgerRange,
    /// Where the previous export ended, so packs link (none for the first).
    pub previous: Option<Previous>,
    /// Per NDJSON file: counts and block digests.
    pub files: BTreeMap<String, FileSummary>,
}

/// `[fromMs, toMs)`, with the same instants in RFC 3339.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Window {
    pub from_ms: i64,
    pub to_ms: i64,
    pub from: String,
    pub to: String,
}

/// The ledger entries of the window: one contiguous range of sequences (none: all `None`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LedgerRange {
    pub count: u64,
    pub first_seq: Option<u64>,
    /// The hash the first entry links to.
    pub first_prev: Option<String>,
    pub last_seq: Option<u64>,
    pub last_hash: Option<String>,
}

/// The previous pack's end, as the appliance recorded it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Previous {
    pub last_seq: Option<u64>,
    pub last_hash: Option<String>,
    pub to_ms: Option<i64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FileSummary {
    pub lines: u64,
    pub records: u64,
    pub bytes: u64,
    pub block_lines: u64,
    /// The sha256 of each block of `block_lines` lines (the last may be shorter).
    pub blocks: Vec<String>,
}

impl Manifest {
    /// Reads a manifest: a format this build does not know is named as such before its fields
    /// are read.
    pub fn parse(bytes: &[u8]) -> Result<Self, String> {
        let v: serde_json::Value = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
        if v["formatVersion"] != FORMAT_VERSION {
            return Err(format!("formatVersion {} is not supported", v["formatVersion"]));
        }
        Manifest::deserialize(&v).map_err(|e| e.to_string())
    }
}
