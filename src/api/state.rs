//! What every handler shares: the store (reads), the writer handle (mutations), the clock and
//! the configuration. Read-mostly; the only mutable state is behind the writer.

use crate::clock::SharedClock;
use crate::config::Config;
use crate::kernel::store::Store;
use crate::machine::WriterHandle;
use std::time::Instant;

#[derive(Debug)]
pub struct AppState {
    pub store: Store,
    pub writer: WriterHandle,
    pub clock: SharedClock,
    pub config: Config,
    pub started: Instant,
    pub started_ms: i64,
    /// Human descriptions of the bound listeners, for `orch status`.
    pub listeners: Vec<String>,
    pub dev: bool,
    /// `<lib>` of the layout: the sealed store of plugins lives under it.
    pub lib: std::path::PathBuf,
    /// The trust store (`allowed_signers`, `revoked`), read afresh for every verification.
    pub trust_dir: std::path::PathBuf,
    /// This process's effective uid: peers on the Unix socket with it (or root) are admin.
    pub owner_uid: u32,
    /// `/var/log/stella`: the rolling log files an export reads.
    pub log_dir: std::path::PathBuf,
    /// Progress of long operations, by the id their client chose.
    pub progress: crate::progress::Registry,
    /// `POST /admin/restart` (dev appliances): set to true, the daemon drains and starts again
    /// in the same process (`exec`), on the same terminal.
    pub restart: tokio::sync::watch::Sender<bool>,
}

impl AppState {
    /// The bundle import use case, acting for `p`.
    pub fn importer(&self, p: &crate::auth::Principal) -> crate::app::import::Importer<'_> {
        crate::app::import::Importer {
            store: &self.store,
            writer: &self.writer,
            lib: &self.lib,
            trust_dir: &self.trust_dir,
            now_ms: self.clock.now_ms(),
            max_major_jump: self.config.bundles.max_major_jump,
            actor: crate::kernel::Actor { name: p.actor.clone() },
            backup_dir: self.config.registry.backup_dir.as_deref(),
        }
    }

    /// Whether `p` may see every tenant's figures (queue counts, metric series, exports): the
    /// local administrator, or a token on an appliance that has only its tenant.
    pub fn sees_all_tenants(&self, p: &crate::auth::Principal) -> bool {
        match &p.tenant {
            None => true,
            Some(t) => self.config.tenants.allowed.iter().all(|a| a == t),
        }
    }
}
