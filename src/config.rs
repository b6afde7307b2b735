//! The appliance's configuration (`/etc/stella/orchestrator.toml`) and its file layout.
//!
//! Every key has a default (see `docs/operator-guide.md`); unknown keys are refused so that a
//! typo never silently falls back to a default. The [`Layout`] maps the production paths
//! (`/etc/stella`, `/var/lib/stella`, `/var/log/stella`, `/run/stella`) under a root, which is
//! `/` in production and the `--state-dir` in development and tests.

use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// Where the appliance's files live. All paths derive from one root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    pub root: PathBuf,
}

/// The appliance key under a `<lib>` directory (what `Layout::appliance_key` names).
pub fn appliance_key_in(lib: &Path) -> PathBuf {
    lib.join("keys/appliance_ed25519")
}

/// A Unix socket's path as bind(2) and connect(2) take it. `sun_path` holds 107 bytes, so a
/// longer absolute path (the dev layout under a deep checkout) is given relative to the working
/// directory when it lies below it and that fits; otherwise as it is, and the call says so.
pub fn socket_arg(path: &Path) -> std::borrow::Cow<'_, Path> {
    const SUN_PATH_MAX: usize = 107;
    if path.as_os_str().len() > SUN_PATH_MAX
        && let Ok(cwd) = std::env::current_dir()
        && let Ok(relative) = path.strip_prefix(&cwd)
        && relative.as_os_str().len() <= SUN_PATH_MAX
    {
        return std::borrow::Cow::Owned(relative.to_path_buf());
    }
    std::borrow::Cow::Borrowed(path)
}

impl Layout {
    pub fn production() -> Self {
        Self { root: PathBuf::from("/") }
    }

    /// The appliance laid out under `root`, made absolute against the working directory: the
    /// daemon hands these paths to plugins it starts in directories of their own, where a
    /// relative path (dev mode's `./stella-dev`) would name nothing.
    pub fn under(root: impl Into<PathBuf>) -> Self {
        let root = root.into();
        Self { root: std::path::absolute(&root).unwrap_or(root) }
    }

    pub fn etc(&self) -> PathBuf {
        self.root.join("etc/stella")
    }
    pub fn lib(&self) -> PathBuf {
        self.root.join("var/lib/stella")
    }
    /// Where `POST /bundles` with a path reads bundles from: no other host path is opened for
    /// a client. The CLI uploads a bundle's bytes instead (`POST /bundles/upload`).
    pub fn inbox(&self) -> PathBuf {
        self.lib().join("inbox")
    }
    /// The artifact registry: `sha256/<digest>/` holds an artifact's files, `meta/<digest>/`
    /// its signed manifest, sums and signature (for re-verification).
    pub fn registry(&self) -> PathBuf {
        self.lib().join("registry")
    }
    /// Where the sample deploy agent installs artifacts, one directory per environment.
    pub fn targets(&self) -> PathBuf {
        self.lib().join("targets")
    }
    pub fn log(&self) -> PathBuf {
        self.root.join("var/log/stella")
    }
    pub fn run(&self) -> PathBuf {
        self.root.join("run/stella")
    }
    pub fn config_file(&self) -> PathBuf {
        self.etc().join("orchestrator.toml")
    }
    pub fn trust_dir(&self) -> PathBuf {
        self.etc().join("keys")
    }
    pub fn default_socket(&self) -> PathBuf {
        self.run().join("orchestrator.sock")
    }
    pub fn default_store(&self) -> PathBuf {
        self.lib().join("stella.redb")
    }
    pub fn default_tls_cert(&self) -> PathBuf {
        self.etc().join("tls/cert.pem")
    }
    pub fn default_tls_key(&self) -> PathBuf {
        self.etc().join("tls/key.pem")
    }
    /// The appliance's own signing key (OpenSSH Ed25519), used for exports.
    pub fn appliance_key(&self) -> PathBuf {
        appliance_key_in(&self.lib())
    }
    /// The admin token `serve --dev` creates, readable only by its owner.
    /// The key `serve --dev` signs the sample bundles with (trusted as principal `dev`).
    pub fn dev_bundle_key(&self) -> PathBuf {
        self.lib().join("keys/dev-bundle_ed25519")
    }
    pub fn dev_token(&self) -> PathBuf {
        self.lib().join("dev-admin.token")
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub server: ServerConfig,
    pub store: StoreConfig,
    pub tenants: TenantsConfig,
    pub queue: QueueConfig,
    pub locks: LocksConfig,
    pub exec: ExecConfig,
    pub bundles: BundlesConfig,
    pub registry: RegistryConfig,
    pub agents: AgentsConfig,
    pub telemetry: TelemetryConfig,
    pub orchestrations: OrchestrationsConfig,
}

/// Sub-orchestrations (a step that starts a child run); `stella orch config set
/// orchestrations.*` overrides them at run time.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct OrchestrationsConfig {
    /// Child runs nest this deep at most (1: a top-level run's children, no grandchildren).
    pub max_depth: u32,
    /// Child runs of one run in flight at once at most (its fan-out).
    pub max_children: u32,
}

impl Default for OrchestrationsConfig {
    fn default() -> Self {
        Self { max_depth: 4, max_children: 16 }
    }
}

/// Remote deploy agents (`stella agent run`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct AgentsConfig {
    /// A remote agent that has not asked for work (nor holds a lease) for this long is down:
    /// deployments, rollbacks and probes of its environment are refused. A running agent asks
    /// at least every 5 s (or every `queue.long_poll_max_ms`, if shorter), so keep it well above.
    pub down_after_ms: u64,
}

impl Default for AgentsConfig {
    fn default() -> Self {
        Self { down_after_ms: 30_000 }
    }
}

/// The artifact registry (`<lib>/registry/`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct RegistryConfig {
    /// A directory that receives a verified copy of every artifact bundle at import, from which
    /// `stella registry restore --artifact A --from backup` brings an artifact back. Unset: no
    /// copy (dev mode sets `<lib>/registry-backup`).
    pub backup_dir: Option<PathBuf>,
    /// Retention keeps at least this many versions of each artifact (the runtime key
    /// `registry.min_versions`, `registry retention set --min-versions N`, overrides it).
    pub min_versions: u32,
}

impl Default for RegistryConfig {
    fn default() -> Self {
        Self { backup_dir: None, min_versions: 5 }
    }
}

/// Logs, metric snapshots and exports.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct TelemetryConfig {
    /// Write JSON logs to rolling files under `/var/log/stella/` (besides stdout).
    pub log_files: bool,
    /// `daily`, `hourly` or `never` (one file).
    pub log_rotation: String,
    /// Rolled log files kept at most (older ones are deleted).
    pub log_max_files: usize,
    /// Metric values are snapshotted into the store this often, for exports of past windows.
    pub metrics_snapshot_interval_ms: u64,
    /// Snapshots older than this are dropped.
    pub metrics_retention_ms: u64,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        Self {
            log_files: true,
            log_rotation: "daily".into(),
            log_max_files: 14,
            metrics_snapshot_interval_ms: 60_000,
            metrics_retention_ms: 14 * 24 * 3_600_000,
        }
    }
}

/// Bundle import policy.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct BundlesConfig {
    /// A new version may raise the first version component by at most this much over the
    /// installed one (a guard against fast-forward attacks); 0 disables the check.
    pub max_major_jump: u64,
}

impl Default for BundlesConfig {
    fn default() -> Self {
        Self { max_major_jump: 1 }
    }
}

/// The in-process executor of step jobs.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ExecConfig {
    /// Run step jobs in the daemon (false: only remote agents run them).
    pub enabled: bool,
    /// Attempts running at once at most.
    pub slots: usize,
}

impl Default for ExecConfig {
    fn default() -> Self {
        Self { enabled: true, slots: 8 }
    }
}

/// Queue defaults; `stella orch config set queue.*` overrides them at run time.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct QueueConfig {
    /// A lease lasts this long unless heartbeated.
    pub lease_ttl_ms: u64,
    /// Attempts before a job goes to the dead-letter queue.
    pub max_attempts: u32,
    /// Retry backoff: base × 2^(attempt−1), capped, with ±25 % jitter from the seeded RNG.
    pub backoff_base_ms: u64,
    pub backoff_max_ms: u64,
    /// Waiting jobs per type at most; enqueue beyond gets 429 with Retry-After.
    pub max_depth: u64,
    /// A lease request waits for work at most this long.
    pub long_poll_max_ms: u64,
    /// Seed of the RNG for backoff jitter; absent means a random seed at start.
    pub seed: Option<u64>,
}

impl Default for QueueConfig {
    fn default() -> Self {
        Self {
            lease_ttl_ms: 30_000,
            max_attempts: 5,
            backoff_base_ms: 1_000,
            backoff_max_ms: 300_000,
            max_depth: 100_000,
            long_poll_max_ms: 30_000,
            seed: None,
        }
    }
}

/// Lock defaults; `stella orch config set locks.*` overrides them at run time.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct LocksConfig {
    /// A lock is released automatically after this long unless renewed.
    pub timeout_ms: u64,
    /// `pessimistic` (hold the lock) or `optimistic` (compare-and-set on the resource version).
    pub mode: String,
}

impl Default for LocksConfig {
    fn default() -> Self {
        Self { timeout_ms: 300_000, mode: "pessimistic".to_owned() }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    /// Unix socket path; empty means `<run>/orchestrator.sock`.
    pub socket: Option<PathBuf>,
    /// TCP address for HTTPS, e.g. `127.0.0.1:8443`; absent means no TCP listener.
    pub listen: Option<String>,
    /// PEM certificate chain and PKCS#8 key for the HTTPS listener.
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    /// A client must send its whole request head within this time.
    pub header_read_timeout_ms: u64,
    /// A TLS client must finish its handshake within this time.
    pub tls_handshake_timeout_ms: u64,
    /// A request must produce its response head within this time.
    pub request_timeout_ms: u64,
    pub body_limit_bytes: usize,
    pub max_headers: usize,
    pub max_header_bytes: usize,
    /// Concurrent connections per listener; more wait in the kernel backlog.
    pub max_connections: usize,
    /// On SIGTERM, in-flight requests get this long to finish.
    pub shutdown_grace_ms: u64,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            socket: None,
            listen: None,
            tls_cert: None,
            tls_key: None,
            header_read_timeout_ms: 10_000,
            tls_handshake_timeout_ms: 10_000,
            request_timeout_ms: 30_000,
            body_limit_bytes: 1024 * 1024,
            max_headers: 64,
            max_header_bytes: 16 * 1024,
            max_connections: 1024,
            shutdown_grace_ms: 10_000,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct StoreConfig {
    /// The redb file; empty means `<lib>/stella.redb`.
    pub path: Option<PathBuf>,
    /// Commands waiting for the writer; senders wait when it is full.
    pub writer_queue: usize,
    /// Commands applied in one write transaction at most.
    pub batch_max: usize,
    /// Committed ledger entries buffered per event subscriber.
    pub event_buffer: usize,
    /// The store's page cache at most: bounds the daemon's memory when an export or `db verify`
    /// reads the whole ledger.
    pub cache_bytes: usize,
}

/// The store's page cache unless `store.cache_bytes` says otherwise: what the daemon's memory
/// grows by under sustained work until the cache is full (docs/benchmarks.md, "Memory under
/// sustained work").
pub const CACHE_BYTES_DEFAULT: usize = 8 * 1024 * 1024;

impl Default for StoreConfig {
    fn default() -> Self {
        Self { path: None, writer_queue: 4096, batch_max: 1024, event_buffer: 4096, cache_bytes: CACHE_BYTES_DEFAULT }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct TenantsConfig {
    /// Tenants that may hold tokens and own objects. A token of a tenant removed from this list
    /// stops working at once.
    pub allowed: Vec<String>,
}

impl Default for TenantsConfig {
    fn default() -> Self {
        Self { allowed: vec!["default".to_owned()] }
    }
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    #[error("read config file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("parse config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("config file {path}: {message}")]
    Invalid { path: PathBuf, message: String },
}

impl Config {
    /// Loads `path`; a missing file gives the defaults only when `missing_ok`.
    pub fn load(path: &Path, missing_ok: bool) -> Result<Self, ConfigError> {
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && missing_ok => {
                return Ok(Self::default());
            }
            Err(source) => {
                return Err(ConfigError::Read { path: path.to_owned(), source });
            }
        };
        let config: Config =
            toml::from_str(&text).map_err(|e| ConfigError::Parse { path: path.to_owned(), message: e.to_string() })?;
        config.validate().map_err(|message| ConfigError::Invalid { path: path.to_owned(), message })?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), String> {
        let s = &self.server;
        let positive = [
            ("server.header_read_timeout_ms", s.header_read_timeout_ms as usize),
            ("server.tls_handshake_timeout_ms", s.tls_handshake_timeout_ms as usize),
            ("server.request_timeout_ms", s.request_timeout_ms as usize),
            ("server.body_limit_bytes", s.body_limit_bytes),
            ("server.max_headers", s.max_headers),
            ("server.max_header_bytes", s.max_header_bytes),
            ("server.max_connections", s.max_connections),
            ("store.writer_queue", self.store.writer_queue),
            ("store.batch_max", self.store.batch_max),
            ("store.event_buffer", self.store.event_buffer),
            ("store.cache_bytes", self.store.cache_bytes),
            ("exec.slots", self.exec.slots),
        ];
        if let Some((key, _)) = positive.iter().find(|(_, v)| *v == 0) {
            return Err(format!("{key} must be greater than 0"));
        }
        let q = &self.queue;
        let queue_positive = [
            ("queue.lease_ttl_ms", q.lease_ttl_ms),
            ("queue.max_attempts", u64::from(q.max_attempts)),
            ("queue.backoff_base_ms", q.backoff_base_ms),
            ("queue.backoff_max_ms", q.backoff_max_ms),
            ("queue.max_depth", q.max_depth),
            ("queue.long_poll_max_ms", q.long_poll_max_ms),
            ("agents.down_after_ms", self.agents.down_after_ms),
            ("locks.timeout_ms", self.locks.timeout_ms),
            ("orchestrations.max_depth", u64::from(self.orchestrations.max_depth)),
            ("orchestrations.max_children", u64::from(self.orchestrations.max_children)),
            ("telemetry.log_max_files", self.telemetry.log_max_files as u64),
            ("telemetry.metrics_snapshot_interval_ms", self.telemetry.metrics_snapshot_interval_ms),
            ("telemetry.metrics_retention_ms", self.telemetry.metrics_retention_ms),
        ];
        if let Some((key, _)) = queue_positive.iter().find(|(_, v)| *v == 0) {
            return Err(format!("{key} must be greater than 0"));
        }
        if !["daily", "hourly", "never"].contains(&self.telemetry.log_rotation.as_str()) {
            return Err(format!(
                "telemetry.log_rotation {:?}: expected daily, hourly or never",
                self.telemetry.log_rotation
            ));
        }
        if !["pessimistic", "optimistic"].contains(&self.locks.mode.as_str()) {
            return Err(format!("locks.mode {:?}: expected pessimistic or optimistic", self.locks.mode));
        }
        if self.tenants.allowed.is_empty() {
            return Err("tenants.allowed must name at least one tenant".to_owned());
        }
        if let Some(bad) = self.tenants.allowed.iter().find(|t| !valid_name(t)) {
            return Err(format!("tenants.allowed: {bad:?} is not a valid tenant name (1-64 of a-z, 0-9, '-', '_')"));
        }
        if self.tenants.allowed.iter().any(|t| t == crate::domain::release::SITE_TENANT) {
            return Err(format!(
                "tenants.allowed: {:?} is reserved for the site's own objects (environments, deployments) and its agents",
                crate::domain::release::SITE_TENANT
            ));
        }
        Ok(())
    }

    pub fn socket_path(&self, layout: &Layout) -> PathBuf {
        self.server.socket.clone().unwrap_or_else(|| layout.default_socket())
    }

    pub fn store_path(&self, layout: &Layout) -> PathBuf {
        self.store.path.clone().unwrap_or_else(|| layout.default_store())
    }

    /// The defaults `serve --dev` writes: TCP on loopback with the generated certificate.
    pub fn dev(layout: &Layout) -> Self {
        let mut config = Self::default();
        config.server.listen = Some("127.0.0.1:8443".to_owned());
        config.server.tls_cert = Some(layout.default_tls_cert());
        config.server.tls_key = Some(layout.default_tls_key());
        config.registry.backup_dir = Some(layout.lib().join("registry-backup"));
        config
    }

    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).expect("config serializes")
    }
}

/// Names of tenants (and other operator-chosen identifiers): short, lowercase, shell-safe.
pub fn valid_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_key_is_refused_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(&path, "[server]\nlisten_addr = \"x\"\n").unwrap();
        let err = Config::load(&path, false).unwrap_err().to_string();
        assert!(err.contains("listen_addr"), "{err}");
    }

    #[test]
    fn dev_config_round_trips() {
        let layout = Layout::under("/tmp/x");
        let config = Config::dev(&layout);
        let back: Config = toml::from_str(&config.to_toml()).unwrap();
        assert_eq!(back, config);
    }
}
