//! Runtime configuration: typed keys that operators change with `stella orch config set` while
//! the daemon runs. Values are validated here, stored in the `config` projection through a
//! ledgered `config.set` entry, and override the file's `[queue]` and `[locks]` defaults.
//! An unknown key or a bad value is an error naming the allowed keys or form.

use crate::config::Config;
use crate::duration;

/// The keys operators may set. `gates.<name>.*` names any gate.
pub const KEYS: &[&str] = &[
    "locks.timeout",
    "locks.mode",
    "gates.<name>.timeout",
    "gates.<name>.retries",
    "queue.lease_ttl",
    "queue.max_attempts",
    "queue.backoff_base",
    "queue.backoff_max",
    "queue.max_depth",
    "queue.long_poll_max",
    "registry.min_versions",
    "orchestrations.max_depth",
    "orchestrations.max_children",
    "promotions.stuck_after",
];

/// A promotion whose state has not changed for this long is stuck (`promotions.stuck_after`).
pub const PROMOTION_STUCK_AFTER: &str = "10m";

/// Retries of a gate at most.
const GATE_RETRIES_MAX: u32 = 100;
/// Attempts of a job at most.
const MAX_ATTEMPTS_MAX: u32 = 1_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Duration,
    Count { min: u64, max: u64 },
    LockMode,
}

/// A key or value `config set`/`get` refuses.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("unknown config key {key:?}; allowed: {}", KEYS.join(", "))]
    UnknownKey { key: String },
    #[error("{key}: {reason}")]
    BadValue { key: String, reason: String },
}

impl ConfigError {
    /// The request field at fault: the key, or the value.
    pub fn field(&self) -> &'static str {
        match self {
            ConfigError::UnknownKey { .. } => "key",
            ConfigError::BadValue { .. } => "value",
        }
    }
}

fn kind_of(key: &str) -> Result<Kind, ConfigError> {
    let kind = match key {
        "locks.timeout"
        | "queue.lease_ttl"
        | "queue.backoff_base"
        | "queue.backoff_max"
        | "queue.long_poll_max"
        | "promotions.stuck_after" => Kind::Duration,
        "locks.mode" => Kind::LockMode,
        "queue.max_attempts" => Kind::Count { min: 1, max: u64::from(MAX_ATTEMPTS_MAX) },
        "queue.max_depth" => Kind::Count { min: 1, max: 100_000_000 },
        "registry.min_versions" => Kind::Count { min: 1, max: 10_000 },
        "orchestrations.max_depth" => Kind::Count { min: 1, max: 32 },
        "orchestrations.max_children" => Kind::Count { min: 1, max: 10_000 },
        _ => match gate_key(key) {
            Some("timeout") => Kind::Duration,
            Some("retries") => Kind::Count { min: 0, max: u64::from(GATE_RETRIES_MAX) },
            _ => return Err(ConfigError::UnknownKey { key: key.to_owned() }),
        },
    };
    Ok(kind)
}

/// `gates.<name>.<field>` → field, when the name is a valid identifier.
fn gate_key(key: &str) -> Option<&str> {
    let rest = key.strip_prefix("gates.")?;
    let (name, field) = rest.rsplit_once('.')?;
    crate::config::valid_name(name).then_some(field)
}

/// Validates `value` for `key` and returns its normalized form (durations in the unit given).
pub fn validate(key: &str, value: &str) -> Result<String, ConfigError> {
    let bad = |reason: String| ConfigError::BadValue { key: key.to_owned(), reason };
    match kind_of(key)? {
        Kind::Duration => {
            let d = duration::parse(value).map_err(|e| bad(e.to_string()))?;
            if d.is_zero() {
                return Err(bad("must be longer than 0".to_owned()));
            }
            Ok(value.to_owned())
        }
        Kind::Count { min, max } => match value.parse::<u64>() {
            Ok(n) if (min..=max).contains(&n) => Ok(n.to_string()),
            _ => Err(bad(format!("{value:?} is not a whole number from {min} to {max}"))),
        },
        Kind::LockMode => match value {
            "pessimistic" | "optimistic" => Ok(value.to_owned()),
            _ => Err(bad(format!("{value:?} is not one of pessimistic, optimistic"))),
        },
    }
}

/// Whether `key` is a known key (for `config get`).
pub fn known(key: &str) -> Result<(), ConfigError> {
    kind_of(key).map(|_| ())
}

/// The file's default for `key`, rendered like a set value; gates have none.
pub fn file_default(config: &Config, key: &str) -> Option<String> {
    let ms = |v: u64| Some(format!("{v}ms"));
    match key {
        "locks.timeout" => ms(config.locks.timeout_ms),
        "locks.mode" => Some(config.locks.mode.clone()),
        "queue.lease_ttl" => ms(config.queue.lease_ttl_ms),
        "queue.max_attempts" => Some(config.queue.max_attempts.to_string()),
        "queue.backoff_base" => ms(config.queue.backoff_base_ms),
        "queue.backoff_max" => ms(config.queue.backoff_max_ms),
        "queue.max_depth" => Some(config.queue.max_depth.to_string()),
        "queue.long_poll_max" => ms(config.queue.long_poll_max_ms),
        "registry.min_versions" => Some(config.registry.min_versions.to_string()),
        "orchestrations.max_depth" => Some(config.orchestrations.max_depth.to_string()),
        "orchestrations.max_children" => Some(config.orchestrations.max_children.to_string()),
        "promotions.stuck_after" => Some(PROMOTION_STUCK_AFTER.to_owned()),
        _ => None,
    }
}

/// A duration value in milliseconds (values were validated on the way in).
pub fn as_ms(value: &str) -> Option<u64> {
    duration::parse(value).ok().map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runbook_keys_validate_and_bad_ones_name_what_is_allowed() {
        assert_eq!(validate("locks.timeout", "60s").unwrap(), "60s");
        assert_eq!(validate("locks.mode", "optimistic").unwrap(), "optimistic");
        assert_eq!(validate("gates.security-scan.timeout", "5m").unwrap(), "5m");
        assert_eq!(validate("gates.security-scan.retries", "3").unwrap(), "3");
        assert!(validate("locks.mode", "eventual").unwrap_err().to_string().contains("pessimistic, optimistic"));
        assert!(validate("locks.timeout", "soon").unwrap_err().to_string().contains("ms, s, m, h, d"));
        assert!(validate("gates.security-scan.retries", "101").unwrap_err().to_string().contains("0 to 100"));
        assert!(validate("locks.colour", "red").unwrap_err().to_string().contains("locks.timeout"));
        assert!(validate("gates.Bad Name.timeout", "5m").is_err());
        // The problem document names the field at fault: an unknown key is the key's fault.
        assert_eq!(validate("locks.colour", "red").unwrap_err().field(), "key");
        assert_eq!(validate("locks.mode", "eventual").unwrap_err().field(), "value");
    }
}
