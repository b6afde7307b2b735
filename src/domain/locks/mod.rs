//! Named locks on resource keys (`env:prod`, `artifact:web`): an owner, an expiry
//! (`locks.timeout`), a fencing token from the counter leases share, and FIFO waiters. A
//! release needs the holder's token; a forced release (admin) records its reason and the next
//! holder gets a new token, so the old holder is refused. A lock whose owner is `job:<id>` is
//! released when that job's attempt ends.

pub mod apply;
pub mod plan;
pub mod tables;

pub use plan::{expire, holder, plan, release_cancelled, release_owned, try_grant};
use serde::{Deserialize, Serialize};

/// Locks examined by one scan (list, force release by env, release by owner) at most.
pub const LOCK_SCAN_MAX: usize = 10_000;
/// Waiters on one lock at most.
const WAITERS_MAX: usize = 1_000;
/// A lock TTL at most.
const LOCK_TTL_MAX_MS: u64 = 7 * 86_400_000;

#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum LockCommand {
    Acquire {
        tenant: String,
        resource: String,
        owner: String,
        ttl_ms: Option<u64>,
    },
    Release {
        tenant: Option<String>,
        lock_id: String,
        owner: String,
        token: u64,
    },
    ForceRelease {
        tenant: Option<String>,
        target: ForceTarget,
        reason: Option<String>,
        /// The fencing token each lock is forced from (lock id → token), as the operator saw
        /// it: a lock that has moved on since (to its next holder) is left alone. `None`:
        /// whatever holds it now (internal callers only).
        tokens: Option<std::collections::BTreeMap<String, u64>>,
    },
    /// A lock-guarded update of a resource: bumps its version. In `pessimistic` mode the caller
    /// must hold the resource's lock (owner and token); in `optimistic` mode it must name the
    /// version it read (compare-and-set) and needs no lock.
    Update {
        tenant: String,
        resource: String,
        owner: String,
        token: Option<u64>,
        expected_version: Option<u64>,
        note: Option<String>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ForceTarget {
    Id(String),
    Env(String),
}

/// Whether `resource` belongs to environment `env`: `env:<env>` itself or below it.
pub fn in_env(resource: &str, env: &str) -> bool {
    resource
        .strip_prefix("env:")
        .and_then(|r| r.strip_prefix(env))
        .is_some_and(|rest| rest.is_empty() || rest.starts_with(':') || rest.starts_with('/'))
}

/// Resource keys: 1–256 printable ASCII characters without spaces or `|`.
pub fn valid_resource(r: &str) -> bool {
    (1..=256).contains(&r.len()) && r.bytes().all(|b| b.is_ascii_graphic() && b != b'|')
}

/// The due-index key of a lock's expiry.
pub fn timer_key_lock(resource: &str, token: u64) -> String {
    format!("lock|{resource}|{token}")
}

crate::events! {
    /// The entries of the locks domain.
    pub enum LockEvent {
        Acquired(LockHeld) = "lock.acquired",
        Renewed(LockHeld) = "lock.renewed",
        Waiting(LockWaiting) = "lock.waiting",
        Released(LockReleased) = "lock.released",
        ForceReleased(LockForceReleased) = "lock.force_released",
        Expired(LockExpired) = "lock.expired",
        ResourceUpdated(ResourceUpdated) = "resource.updated",
    }
}

/// A lock granted (or renewed by its holder).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LockHeld {
    pub lock_id: String,
    pub resource: String,
    pub owner: String,
    pub token: u64,
    pub expires_ms: i64,
}

/// An owner in line for a held lock.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LockWaiting {
    pub lock_id: String,
    pub resource: String,
    pub owner: String,
    pub ttl_ms: u64,
    pub position: usize,
}

/// Released by its holder (or because the job that held it ended: `reason`); `next` is the
/// first waiter, who holds it now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LockReleased {
    pub lock_id: String,
    pub resource: String,
    pub token: u64,
    #[serde(default)]
    pub next: Option<Grant>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// Released by an administrator, whatever the holder.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LockForceReleased {
    pub lock_id: String,
    pub resource: String,
    pub token: u64,
    pub holder: String,
    pub reason: Option<String>,
    #[serde(default)]
    pub next: Option<Grant>,
}

/// Its TTL lapsed without a renewal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LockExpired {
    pub lock_id: String,
    pub resource: String,
    pub token: u64,
    pub holder: String,
    #[serde(default)]
    pub next: Option<Grant>,
}

/// A lock-guarded update bumped a resource's version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResourceUpdated {
    pub resource: String,
    pub version: u64,
    pub owner: String,
    pub mode: String,
    pub note: Option<String>,
}

impl LockEvent {
    /// The lock id and resource every lock entry names (none for a resource update).
    fn lock(&self) -> Option<(&str, &str)> {
        match self {
            LockEvent::Acquired(d) | LockEvent::Renewed(d) => Some((&d.lock_id, &d.resource)),
            LockEvent::Waiting(d) => Some((&d.lock_id, &d.resource)),
            LockEvent::Released(d) => Some((&d.lock_id, &d.resource)),
            LockEvent::ForceReleased(d) => Some((&d.lock_id, &d.resource)),
            LockEvent::Expired(d) => Some((&d.lock_id, &d.resource)),
            LockEvent::ResourceUpdated(_) => None,
        }
    }
}

/// A lock passing to its next holder, as `lock.acquired`/`lock.expired` entries carry it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Grant {
    pub owner: String,
    pub token: u64,
    pub expires_ms: i64,
}
