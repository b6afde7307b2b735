//! Writing an export pack, the use case behind `POST /exports`: a fresh metric snapshot (so the
//! pack holds the values as of now), the pack signed with the appliance key, and
//! `export.created` recorded so the next pack links to this one.

use crate::clock::SharedClock;
use crate::domain::appliance::ApplianceCommand;
use crate::export;
use crate::kernel::store::Store;
use crate::kernel::{Actor, CommandError};
use crate::machine::{Command, WriterHandle};
use crate::progress::Progress;
use serde_json::{Value, json};
use std::path::Path;
use std::sync::Arc;

/// What an export needs of the appliance.
pub struct Exporter<'a> {
    pub store: &'a Store,
    pub writer: &'a WriterHandle,
    pub clock: &'a SharedClock,
    /// `<lib>`: the appliance key is under it.
    pub lib: &'a Path,
    /// The rolling log files the pack reads.
    pub log_dir: &'a Path,
    pub metrics_retention_ms: u64,
    /// The runtime keys' file defaults, for the metrics snapshot.
    pub config: &'a crate::config::Config,
    pub actor: Actor,
}

#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    /// The pack could not be written as asked (an existing path, an empty window, a full disk).
    #[error("{0}")]
    Failed(String),
    #[error(transparent)]
    Command(#[from] CommandError),
    #[error("{0}")]
    Internal(String),
}

/// Writes the pack `request` asks for and records it; returns its manifest.
pub async fn export(
    ctx: &Exporter<'_>,
    request: export::Request,
    progress: Arc<Progress>,
) -> Result<Value, ExportError> {
    let scrape = crate::telemetry::metrics::Scrape { config: ctx.config, now_ms: ctx.clock.now_ms() };
    crate::telemetry::metrics::snapshot(ctx.store, ctx.writer, &scrape, ctx.metrics_retention_ms)
        .await
        .map_err(ExportError::Internal)?;
    let key = crate::trust::keys::read_private(&crate::config::appliance_key_in(ctx.lib))
        .map_err(|e| ExportError::Internal(e.to_string()))?;
    let out = request.out.clone();
    let (store, log_dir, now) = (ctx.store.clone(), ctx.log_dir.to_owned(), ctx.clock.now_ms());
    let written = tokio::task::spawn_blocking(move || {
        let src = export::Sources { store: &store, log_dir: &log_dir, key: &key, now_ms: now };
        export::write(&src, &request, &progress)
    })
    .await
    .map_err(|e| ExportError::Internal(e.to_string()))?
    .map_err(|e| ExportError::Failed(e.to_string()))?;
    let m = &written.manifest;
    let record = json!({ "window": m.window, "ledger": m.ledger, "signals": m.signals,
                         "packSha256": written.pack_sha256, "out": out });
    ctx.writer.submit(ctx.actor.clone(), Command::Appliance(ApplianceCommand::RecordExport { data: record })).await?;
    Ok(written.to_json())
}
