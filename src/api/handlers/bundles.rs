//! Bundle import through the daemon (`POST /bundles` with a path on the appliance host, where
//! operators bring bundles across the gap): verify against the current trust store, apply the
//! version policy, seal into the content-addressed store, register the plugin or the DAGs it
//! carries — and ledger every import and every rejection with its reason.

use crate::api::extract::{Auth, JsonBody};
use crate::api::handlers::{progress_for, submit};
use crate::api::problem::{ApiResult, Problem};
use crate::api::state::AppState;
use crate::app::import::import_file;
use crate::auth::Scope;
use crate::domain::bundles::plan::BundleCommand;
use crate::machine::Command;
use crate::machine::read;
use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde_json::{Value, json};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ImportRequest {
    pub path: String,
    #[serde(default)]
    pub allow_downgrade: bool,
    /// An id the client chose to follow the import at `GET /progress/{id}`.
    #[serde(default)]
    pub progress_id: Option<String>,
}

pub async fn list(State(state): State<Arc<AppState>>, auth: Auth) -> ApiResult<Json<Value>> {
    auth.require(Scope::Read)?;
    Ok(Json(json!({ "bundles": read::bundles(&state.store.read()?)? })))
}

pub async fn import_bundle(
    State(state): State<Arc<AppState>>,
    auth: Auth,
    JsonBody(req): JsonBody<ImportRequest>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let p = auth.require(Scope::Admin)?;
    let progress = progress_for(&state, req.progress_id.as_deref())?;
    let path = in_inbox(&state, &req.path)?;
    let imported = import_file(&state.importer(p), &path, &req.path, req.allow_downgrade, progress).await?;
    Ok((StatusCode::CREATED, Json(json!(imported))))
}

/// A client names a bundle on this host only inside the inbox: the daemon opens no other path
/// for it (a path to /etc/shadow is refused before it is opened).
fn in_inbox(state: &AppState, path: &str) -> Result<PathBuf, Problem> {
    let inbox = state.lib.join("inbox");
    let refuse = || {
        Problem::new(
            StatusCode::FORBIDDEN,
            "outside_inbox",
            format!(
                "bundle paths are read only from the inbox {}: copy the bundle there, or upload it \
                 (`stella bundle import FILE` sends the file's bytes)",
                inbox.display()
            ),
        )
    };
    let inbox = std::fs::canonicalize(&inbox).map_err(|_| refuse())?;
    let given = Path::new(path);
    let given = if given.is_absolute() { given.to_owned() } else { inbox.join(given) };
    let real = std::fs::canonicalize(&given).map_err(|_| refuse())?;
    if real.starts_with(&inbox) && real.is_file() { Ok(real) } else { Err(refuse()) }
}

#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct UploadQuery {
    #[serde(default)]
    allow_downgrade: bool,
    #[serde(default)]
    progress_id: Option<String>,
    /// The file's name on the client, for the ledger.
    #[serde(default)]
    name: Option<String>,
}

/// `POST /bundles/upload`: the bundle's bytes as the body (at most the envelope's cap), written
/// to a private file in the inbox, imported like any bundle, and removed.
pub async fn upload(
    State(state): State<Arc<AppState>>,
    auth: Auth,
    crate::api::extract::QueryArgs(q): crate::api::extract::QueryArgs<UploadQuery>,
    body: axum::body::Body,
) -> ApiResult<(StatusCode, Json<Value>)> {
    use http_body_util::BodyExt;
    use std::io::Write;
    let p = auth.require(Scope::Admin)?;
    let progress = progress_for(&state, q.progress_id.as_deref())?;
    let inbox = state.lib.join("inbox");
    std::fs::create_dir_all(&inbox).map_err(Problem::internal)?;
    let path = inbox.join(format!(".upload-{}", crate::ids::random_hex(8)));
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .map_err(|e| Problem::internal(format!("{}: {e}", path.display())))?;
    let _cleanup = RemoveOnDrop(path.clone());
    let mut out = std::io::BufWriter::with_capacity(1 << 20, file);
    let mut body = body;
    let mut received: u64 = 0;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| Problem::invalid("body", format!("reading the upload: {e}")))?;
        let Some(data) = frame.data_ref() else { continue };
        received += data.len() as u64;
        if received > crate::domain::bundles::format::ENVELOPE_BYTES_MAX {
            return Err(Problem::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                format!("a bundle is at most {} bytes", crate::domain::bundles::format::ENVELOPE_BYTES_MAX),
            ));
        }
        out.write_all(data).map_err(Problem::internal)?;
    }
    out.into_inner().map_err(|e| Problem::internal(e.to_string()))?.sync_all().map_err(Problem::internal)?;
    let source = format!("upload:{}", q.name.as_deref().unwrap_or("unnamed").chars().take(256).collect::<String>());
    let imported = import_file(&state.importer(p), &path, &source, q.allow_downgrade, progress).await?;
    Ok((StatusCode::CREATED, Json(json!(imported))))
}

struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// `POST /bundles/verify-installed`: re-verifies every installed bundle now; quarantines the
/// ones that fail.
pub async fn verify_installed(State(state): State<Arc<AppState>>, auth: Auth) -> ApiResult<Json<Value>> {
    let p = auth.require(Scope::Admin)?;
    let actor = crate::api::handlers::actor(p);
    let results = crate::app::installed::reverify_all(
        &state.store,
        &state.writer,
        &state.lib,
        &state.trust_dir,
        state.clock.now_ms(),
        actor,
    )
    .await
    .map_err(Problem::internal)?;
    Ok(Json(json!({ "bundles": results })))
}

/// `GET /bundles/{name}`: the installed bundle with its manifest (every file, size, mode, digest).
pub async fn show(
    State(state): State<Arc<AppState>>,
    auth: Auth,
    axum::extract::Path(name): axum::extract::Path<String>,
) -> ApiResult<Json<Value>> {
    auth.require(Scope::Read)?;
    let mut b = read::bundles(&state.store.read()?)?
        .into_iter()
        .find(|b| b["name"] == name.as_str())
        .ok_or_else(|| Problem::not_found(format!("bundle {name}")))?;
    let digest = b["digest"].as_str().unwrap_or_default().to_owned();
    let manifest = std::fs::read(crate::app::installed::meta_dir(&state.lib, &digest).join("manifest.json"))
        .ok()
        .and_then(|m| serde_json::from_slice::<Value>(&m).ok());
    b["manifest"] = manifest.unwrap_or(Value::Null);
    b["sealedAt"] = json!(crate::plugins::sealed_dir(&state.lib, &digest));
    Ok(Json(b))
}

/// `DELETE /bundles/{name}`: uninstalls a plugin or DAG bundle (409 while something needs it),
/// then deletes its sealed copy once no installed bundle or plugin shares that digest.
pub async fn remove(
    State(state): State<Arc<AppState>>,
    auth: Auth,
    axum::extract::Path(name): axum::extract::Path<String>,
) -> ApiResult<Json<Value>> {
    let p = auth.require(Scope::Admin)?;
    let before = read::bundles(&state.store.read()?)?
        .into_iter()
        .find(|b| b["name"] == name.as_str())
        .ok_or_else(|| Problem::not_found(format!("bundle {name}")))?;
    submit(&state, p, Command::Bundle(BundleCommand::Remove { name: name.clone() })).await?;
    let digest = before["digest"].as_str().unwrap_or_default().to_owned();
    let txn = state.store.read()?;
    let shared = read::bundles(&txn)?.iter().any(|b| b["digest"] == digest.as_str())
        || read::plugins(&txn)?.iter().any(|(_, p)| p["digest"] == digest.as_str());
    if !shared && !digest.is_empty() {
        // The ledger says it is gone; the files follow. A crash in between leaves an unused
        // sealed directory, which nothing reads.
        for dir in
            [crate::plugins::sealed_dir(&state.lib, &digest), crate::app::installed::meta_dir(&state.lib, &digest)]
        {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
    Ok(Json(json!({ "removed": name, "version": before["version"], "kind": before["kind"], "digest": digest,
                    "disabledDags": before["dags"] })))
}

/// `GET /progress/{id}`: how far an operation started with that progress id has come
/// (`done` and `total` bytes, `phase`).
pub async fn progress(
    State(state): State<Arc<AppState>>,
    auth: Auth,
    axum::extract::Path(id): axum::extract::Path<String>,
) -> ApiResult<Json<Value>> {
    auth.require(Scope::Read)?;
    let p = state.progress.get(&id).ok_or_else(|| Problem::not_found(format!("progress {id}")))?;
    Ok(Json(p.snapshot()))
}

/// `GET /sealed/{kind}/{digest}`: a plugin's or an artifact's sealed copy with its signed
/// members, as one tar, for a remote deploy agent (which verifies it against its own trust
/// store before running anything from it).
pub async fn sealed(
    State(state): State<Arc<AppState>>,
    auth: Auth,
    axum::extract::Path((kind, digest)): axum::extract::Path<(String, String)>,
) -> ApiResult<axum::response::Response> {
    use crate::app::sealed::{PackError, Sealed, pack, valid_digest};
    use axum::response::IntoResponse;
    let p = auth.require(Scope::Agent)?;
    // The site's agents (and administrators of every tenant) only.
    if !state.sees_all_tenants(p) && p.tenant.as_deref() != Some(crate::auth::SITE_TENANT) {
        return Err(Problem::forbidden());
    }
    let kind = Sealed::parse(&kind)
        .ok_or_else(|| Problem::not_found(format!("sealed copies of {kind:?} (plugin, artifact)")))?;
    if !valid_digest(&digest) {
        return Err(Problem::invalid("digest", "a sha256 digest: 64 lowercase hex digits"));
    }
    let lib = state.lib.clone();
    let packed = tokio::task::spawn_blocking(move || pack(&lib, kind, &digest))
        .await
        .map_err(|e| Problem::internal(e.to_string()))?;
    match packed {
        Ok(bytes) => Ok(([(axum::http::header::CONTENT_TYPE, "application/x-tar")], bytes).into_response()),
        Err(PackError::NotFound(e)) => Err(Problem::new(StatusCode::NOT_FOUND, "not_found", e)),
        Err(PackError::TooLarge(e)) => Err(Problem::new(StatusCode::PAYLOAD_TOO_LARGE, "too_large", e)),
        Err(PackError::Io(e)) => Err(Problem::internal(e)),
    }
}
