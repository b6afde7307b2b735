//! Step result caching (DESIGN.md §10, runbook 004 §5): a step with `cache = { ttl = "1h" }` (or
//! every step of a DAG with `[execution.caching]`) is looked up by its fingerprint before it is
//! queued; a live entry completes it with the stored outputs without running it. The
//! fingerprint is sha256 over its [`Parts`]: the tenant, plugin and pinned digest, kind, DAG
//! version, the names of its secrets (never their values) and each resolved input (upstream
//! outputs included) as RFC 8785 canonical JSON, so `orch cache explain` can name the part that
//! differs from the nearest entry. Entries are bounded by count and bytes, oldest evicted first.
//!
//! One computation per key at a time: the step whose lookup missed holds the key's flight
//! (`cache.missed`) until it stores its outputs (`cache.stored`) or ends without them
//! (`cache.released`); a step that looks the key up meanwhile waits (`cache.waiting`), holding
//! its slot, and is woken in the commit that ends the flight: it then hits the new entry, or
//! computes the key itself if none was stored.

pub mod apply;
pub mod plan;
pub mod tables;

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Entries kept at most; the oldest is evicted first.
pub const ENTRIES_MAX: u64 = 10_000;
/// Bytes of stored outputs kept at most.
pub const BYTES_MAX: u64 = 64 * 1024 * 1024;
/// A step's outputs larger than this are not cached.
pub const ENTRY_BYTES_MAX: usize = 1024 * 1024;

/// What a fingerprint is made of, part name → value (inputs by `inputs.<name>`, as their
/// canonical JSON's sha256).
pub type Parts = BTreeMap<String, String>;

#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum CacheCommand {
    /// Drop the entries of `tenant` (every tenant's for `None`), of one DAG or all.
    Purge { tenant: Option<String>, dag: Option<String> },
}

crate::events! {
    /// The cache's entries.
    pub enum CacheEvent {
        Stored(CacheStored) = "cache.stored",
        Hit(CacheHit) = "cache.hit",
        Missed(CacheHit) = "cache.missed",
        Evicted(CacheEvicted) = "cache.evicted",
        /// A step whose key another step is computing waits for it.
        Waiting(CacheHit) = "cache.waiting",
        /// A step that missed ended without storing (it failed, was cancelled, or its outputs
        /// are too large): its key is free again and its waiters look it up anew.
        Released(CacheHit) = "cache.released",
    }
}

/// A step's outputs stored under its fingerprint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CacheStored {
    pub key: String,
    pub dag: String,
    pub step: String,
    pub run_id: String,
    pub parts: Parts,
    pub outputs: serde_json::Value,
    pub expires_ms: i64,
}

/// A lookup: the step that found (or did not find) a live entry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CacheHit {
    pub key: String,
    pub run_id: String,
    pub step: String,
}

/// Entries dropped: `reason` is `capacity`, `expired`, `replaced` or `purge`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CacheEvicted {
    pub keys: Vec<String>,
    pub reason: String,
}

/// The fingerprint of `parts`: sha256 of their canonical JSON, hex.
pub fn key(parts: &Parts) -> String {
    use sha2::{Digest, Sha256};
    let ascii = parts.keys().all(|k| k.is_ascii());
    let bytes = crate::kernel::canonical::to_vec_sorted(parts, ascii);
    hex::encode(Sha256::digest(bytes))
}

/// sha256 of a value's canonical JSON, hex.
pub fn value_digest(v: &serde_json::Value) -> String {
    use sha2::{Digest, Sha256};
    hex::encode(Sha256::digest(crate::kernel::canonical::to_vec(v)))
}

/// What a cached step is, besides its inputs: a step of `tenant`'s run of `dag@version` that
/// runs `plugin` (pinned at `digest`, none for a built-in kind) as `kind`, given `secrets`.
pub struct Step<'a> {
    pub tenant: &'a str,
    pub dag: &'a str,
    pub version: u32,
    pub plugin: &'a str,
    pub digest: Option<&'a str>,
    pub kind: Option<&'a str>,
    pub secrets: &'a [String],
}

/// The fingerprint's parts of `step` run with `inputs`, resolved.
pub fn parts(step: &Step, inputs: &serde_json::Value) -> Parts {
    let mut p = Parts::new();
    p.insert("tenant".into(), step.tenant.to_owned());
    p.insert("dag".into(), format!("{}@{}", step.dag, step.version));
    p.insert("plugin".into(), format!("{}@{}", step.plugin, step.digest.unwrap_or("builtin")));
    p.insert("kind".into(), step.kind.unwrap_or_default().to_owned());
    let mut names = step.secrets.to_vec();
    names.sort();
    p.insert("secrets".into(), names.join(","));
    for (k, v) in inputs.as_object().into_iter().flatten() {
        p.insert(format!("inputs.{k}"), value_digest(v));
    }
    p
}

/// Step metadata `runtime.cache`: whether the lookup hit, the key, and for a hit the entry's
/// age and hit count.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StepCache {
    pub hit: bool,
    pub key: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub age_ms: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hits: Option<u64>,
    pub ttl_ms: u64,
    /// While the step waits for another step computing its key: that step (`run/step`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waiting_for: Option<String>,
}
