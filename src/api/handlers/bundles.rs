//! Bundle import through the daemon (`POST /bundles` with a path on the appliance host, where
//! operators bring bundles across the gap): verify against the current trust store, apply the
//! version policy, seal into the content-addressed store, register the plugin or the DAGs it
//! carries — and ledger every import and every rejection with its reason.

use crate::api::extract::{Auth, JsonBody};
use crate::api::handlers::queue::submit;
use crate::api::problem::{ApiResult, Problem};
use crate::api::state::AppState;
use crate::auth::{Principal, Scope};
use crate::domain::bundles::format::Kind;
use crate::domain::bundles::plan::BundleCommand;
use crate::domain::bundles::{import, verify};
use crate::machine::Command;
use crate::machine::read;
use crate::progress::Progress;
use crate::trust::store::TrustStore;
use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
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

fn file_sha256(path: &Path) -> String {
    let mut h = Sha256::new();
    if let Ok(mut f) = std::fs::File::open(path) {
        let _ = std::io::copy(&mut f, &mut h);
    }
    hex::encode(h.finalize())
}

/// Ledgers the rejection and answers with its reason. `source` names the bundle as its client
/// did (a path in the inbox, or an upload's file name); no byte of the file is quoted.
async fn reject(
    state: &AppState,
    p: &Principal,
    (path, source): (&Path, &str),
    status: StatusCode,
    reason: String,
) -> Problem {
    let command = BundleCommand::Reject { file: source.to_owned(), sha256: file_sha256(path), reason: reason.clone() };
    if let Err(e) = submit(state, p, Command::Bundle(command)).await {
        return e;
    }
    Problem::new(status, "bundle_rejected", reason)
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
    let body = import_file(&state, p, &path, &req.path, req.allow_downgrade, progress).await?;
    Ok((StatusCode::CREATED, Json(body)))
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
    let body = import_file(&state, p, &path, &source, q.allow_downgrade, progress).await?;
    Ok((StatusCode::CREATED, Json(body)))
}

struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Imports the bundle at `path` on this host, in the order of DESIGN.md §3 — verified against
/// the current trust store, the version policy, sealed, its plugin or DAGs registered in the
/// import's transaction — or ledgers its rejection and answers with the reason.
pub async fn import_file(
    state: &AppState,
    p: &Principal,
    path: &Path,
    source: &str,
    allow_downgrade: bool,
    progress: Arc<Progress>,
) -> Result<Value, Problem> {
    let path = path.to_path_buf();
    let at = (path.as_path(), source);
    let (trust_dir, now) = (state.trust_dir.clone(), state.clock.now_ms());
    let checked = {
        let (path, progress) = (path.clone(), progress.clone());
        // Steps 1-4 only: the payload is walked once, while it is unpacked into staging.
        tokio::task::spawn_blocking(move || -> Result<verify::Envelope, String> {
            let trust = TrustStore::load(&trust_dir).map_err(|e| e.to_string())?;
            verify::check_envelope(&path, &trust, now, &progress).map_err(|e| e.to_string())
        })
        .await
        .map_err(Problem::internal)?
    };
    let v = match checked {
        Ok(v) => v,
        Err(reason) => return Err(reject(state, p, at, StatusCode::UNPROCESSABLE_ENTITY, reason).await),
    };
    let m = v.manifest.clone();
    let installed = read::bundles(&state.store.read()?)?.into_iter().find(|b| b["name"] == m.name.as_str());
    if let Some(cur) = installed.as_ref().and_then(|b| b["version"].as_str().map(str::to_owned))
        && import::compare_versions(&m.version, &cur).is_lt()
        && !allow_downgrade
    {
        let reason = format!(
            "bundle {} {} is older than the installed {cur}: a downgrade needs --allow-downgrade",
            m.name, m.version
        );
        return Err(reject(state, p, at, StatusCode::CONFLICT, reason).await);
    }
    if let Some(cur) = installed.as_ref()
        && cur["version"].as_str() == Some(m.version.as_str())
        && cur["digest"].as_str() != Some(m.payload.sha256.as_str())
    {
        let reason =
            format!("bundle {} {} is installed with other content: versions are never reused", m.name, m.version);
        return Err(reject(state, p, at, StatusCode::CONFLICT, reason).await);
    }
    let limit = state.config.bundles.max_major_jump;
    if let Some(cur) = installed.as_ref().and_then(|b| b["version"].as_str().map(str::to_owned))
        && limit > 0
        && import::major_jump(&cur, &m.version) > limit
    {
        let reason =
            format!("bundle {} jumps from {cur} to {}, past bundles.max_major_jump = {limit}", m.name, m.version);
        return Err(reject(state, p, at, StatusCode::CONFLICT, reason).await);
    }
    let lib = state.lib.clone();
    let existed = crate::plugins::sealed_dir(&lib, &m.payload.sha256).exists();
    let sealed = {
        let (path, v, lib, progress) = (path.clone(), v.clone(), lib.clone(), progress.clone());
        tokio::task::spawn_blocking(move || import::seal(&path, &v, &lib, &progress))
            .await
            .map_err(Problem::internal)?
    };
    let sealed = match sealed {
        Ok(s) => s,
        Err(reason) => return Err(reject(state, p, at, StatusCode::UNPROCESSABLE_ENTITY, reason).await),
    };
    let contents = match inspect(state, &m.kind, &m.name, &sealed) {
        Ok(c) => c,
        Err(reason) => {
            if !existed {
                let _ = std::fs::remove_dir_all(&sealed);
            }
            return Err(reject(state, p, at, StatusCode::UNPROCESSABLE_ENTITY, reason).await);
        }
    };
    let command = BundleCommand::Import {
        name: m.name.clone(),
        version: m.version.clone(),
        kind: serde_json::to_value(m.kind).ok().and_then(|k| k.as_str().map(str::to_owned)).unwrap_or_default(),
        digest: m.payload.sha256.clone(),
        signer: v.signer.principal.clone(),
        fingerprint: v.signer.fingerprint.clone(),
        allow_downgrade,
        entrypoint: contents.entrypoint.clone(),
        kinds: contents.kinds.clone(),
        dags: contents.dags.clone(),
    };
    // Kept beside the sealed payload so the bundle can be re-verified later.
    let meta = crate::domain::bundles::installed::meta_dir(&lib, &m.payload.sha256);
    match verify::signed_members(&path) {
        Ok(members) => {
            for (name, bytes) in members {
                crate::dev::write_file_atomic(&meta.join(name), &bytes, 0o644)
                    .map_err(|e| Problem::internal(format!("write {}: {e}", meta.display())))?;
            }
        }
        Err(e) => return Err(reject(state, p, at, StatusCode::UNPROCESSABLE_ENTITY, e.to_string()).await),
    }
    progress.phase("recording");
    if let Err(refused) = submit(state, p, Command::Bundle(command)).await {
        // Refused while recording (a race with another import): the disk is left as it was.
        if !existed {
            let _ = std::fs::remove_dir_all(&sealed);
            let _ = std::fs::remove_dir_all(&meta);
        }
        if refused.status() == StatusCode::CONFLICT.as_u16() {
            return Err(reject(state, p, at, StatusCode::CONFLICT, refused.detail().to_owned()).await);
        }
        return Err(refused);
    }
    if m.kind == Kind::Trust {
        // Replaces the trust store atomically; the next verification reads the new one.
        for file in ["allowed_signers", "revoked"] {
            let source = sealed.join(file);
            let bytes = if source.exists() { std::fs::read(&source).map_err(Problem::internal)? } else { Vec::new() };
            crate::dev::write_file_atomic(&state.trust_dir.join(file), &bytes, 0o644).map_err(Problem::internal)?;
        }
    }
    progress.phase("done");
    let dags: Vec<&String> = contents.dags.iter().map(|(n, _)| n).collect();
    Ok(
        json!({ "name": m.name, "version": m.version, "kind": m.kind, "digest": m.payload.sha256, "signer": v.signer.principal,
               "fingerprint": v.signer.fingerprint, "files": m.files.len(), "dags": dags }),
    )
}

struct Contents {
    entrypoint: Option<String>,
    kinds: Vec<String>,
    dags: Vec<(String, String)>,
}

/// What a sealed bundle carries: a plugin's entrypoint (its `plugin.toml` must name the bundle),
/// or DAG specs (every `*.toml`), each validated against the installed plugins.
fn inspect(state: &AppState, kind: &Kind, name: &str, sealed: &Path) -> Result<Contents, String> {
    match kind {
        Kind::Plugin => {
            let text = std::fs::read_to_string(sealed.join("plugin.toml")).map_err(|e| format!("plugin.toml: {e}"))?;
            let manifest: crate::plugins::Manifest = toml::from_str(&text).map_err(|e| format!("plugin.toml: {e}"))?;
            manifest.validate()?;
            if manifest.name != name {
                return Err(format!("plugin.toml names {:?}, the bundle {name:?}: they must agree", manifest.name));
            }
            let entry = sealed.join(&manifest.entrypoint);
            let executable =
                std::fs::symlink_metadata(&entry).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0);
            if !crate::domain::bundles::format::valid_path(&manifest.entrypoint) || !executable {
                return Err(format!(
                    "plugin.toml: entrypoint {:?} is not an executable file of the bundle",
                    manifest.entrypoint
                ));
            }
            Ok(Contents { kinds: manifest.kinds(), entrypoint: Some(manifest.entrypoint), dags: vec![] })
        }
        Kind::Dag => {
            let installed = state.store.read().and_then(|t| read::installed_plugins(&t)).map_err(|e| e.to_string())?;
            let mut files: Vec<PathBuf> = std::fs::read_dir(sealed)
                .map_err(|e| e.to_string())?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "toml"))
                .collect();
            files.sort();
            let mut dags = Vec::new();
            for f in files {
                let text = std::fs::read_to_string(&f).map_err(|e| e.to_string())?;
                let c = crate::domain::runs::spec::compile(&text, &installed)
                    .map_err(|e| format!("{}: {e}", f.file_name().unwrap_or_default().to_string_lossy()))?;
                dags.push((c.name, text));
            }
            if dags.is_empty() {
                return Err("a DAG bundle carries at least one *.toml spec".into());
            }
            Ok(Contents { entrypoint: None, kinds: vec![], dags })
        }
        Kind::Trust => {
            if !sealed.join("allowed_signers").is_file() {
                return Err("a trust bundle carries allowed_signers".into());
            }
            let parsed = crate::trust::store::TrustStore::load_files(
                &sealed.join("allowed_signers"),
                Some(&sealed.join("revoked")),
            )
            .map_err(|e| e.to_string())?;
            if !parsed.entries.iter().any(|e| {
                e.namespaces
                    .as_ref()
                    .is_none_or(|n| n.iter().any(|x| x == crate::trust::sig::Namespace::Trust.as_str()))
            }) {
                return Err("the new trust store has no key for stella-trust@stella.invalid: it would lock out every future update".into());
            }
            Ok(Contents { entrypoint: None, kinds: vec![], dags: vec![] })
        }
    }
}

/// `POST /bundles/verify-installed`: re-verifies every installed bundle now; quarantines the
/// ones that fail.
pub async fn verify_installed(State(state): State<Arc<AppState>>, auth: Auth) -> ApiResult<Json<Value>> {
    let p = auth.require(Scope::Admin)?;
    let actor = crate::api::handlers::queue::actor(p);
    let results = crate::domain::bundles::installed::reverify_all(
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
    let manifest =
        std::fs::read(crate::domain::bundles::installed::meta_dir(&state.lib, &digest).join("manifest.json"))
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
        for dir in [
            crate::plugins::sealed_dir(&state.lib, &digest),
            crate::domain::bundles::installed::meta_dir(&state.lib, &digest),
        ] {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
    Ok(Json(json!({ "removed": name, "version": before["version"], "kind": before["kind"], "digest": digest,
                    "disabledDags": before["dags"] })))
}

/// The progress a request asked to be followed under `id` (registered), or an unregistered one.
pub fn progress_for(state: &AppState, id: Option<&str>) -> Result<Arc<Progress>, Problem> {
    match id {
        Some(id) => {
            state.progress.start(id).ok_or_else(|| Problem::invalid("progressId", "expected 8-64 of 0-9, a-z, '-'"))
        }
        None => Ok(Arc::default()),
    }
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
