//! Importing a signed bundle (DESIGN.md §3), the use case the API (`POST /bundles`, uploads)
//! and the daemon (the dev samples at start) share: verified against the current trust store,
//! the version policy, sealed, its plugin or DAGs registered in the import's transaction — or
//! its rejection ledgered with the reason.

use crate::domain::bundles::format::Kind;
use crate::domain::bundles::plan::BundleCommand;
use crate::domain::bundles::{import, verify};
use crate::domain::release::{ArtifactFile, ArtifactImported, ReleaseCommand};
use crate::kernel::store::{Store, StoreError};
use crate::kernel::{Actor, CommandError};
use crate::machine::{Command, WriterHandle, read};
use crate::progress::Progress;
use crate::trust::store::TrustStore;
use sha2::{Digest, Sha256};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// What an import needs of the appliance.
pub struct Importer<'a> {
    pub store: &'a Store,
    pub writer: &'a WriterHandle,
    /// `<lib>`: the sealed store and bundle metadata live under it.
    pub lib: &'a Path,
    pub trust_dir: &'a Path,
    pub now_ms: i64,
    /// `bundles.max_major_jump` (0: no limit).
    pub max_major_jump: u64,
    /// Who imports: on the ledger entries.
    pub actor: Actor,
    /// `registry.backup_dir`: a verified copy of each artifact bundle goes there.
    pub backup_dir: Option<&'a Path>,
}

/// An installed bundle, as the import answers it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Imported {
    pub name: String,
    pub version: String,
    pub kind: Kind,
    pub digest: String,
    pub signer: String,
    pub fingerprint: String,
    pub files: usize,
    pub dags: Vec<String>,
}

/// Why a bundle was refused (ledgered as `bundle.rejected`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The bundle itself is bad: signature, digests, manifest, contents.
    Invalid,
    /// It conflicts with what is installed (the version policy), under this code.
    Conflict(&'static str),
}

#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error("{reason}")]
    Rejected { refusal: Refusal, reason: String },
    #[error(transparent)]
    Command(#[from] CommandError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{0}")]
    Internal(String),
}

fn internal(e: impl std::fmt::Display) -> ImportError {
    ImportError::Internal(e.to_string())
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
async fn reject(ctx: &Importer<'_>, (path, source): (&Path, &str), refusal: Refusal, reason: String) -> ImportError {
    let command = BundleCommand::Reject { file: source.to_owned(), sha256: file_sha256(path), reason: reason.clone() };
    if let Err(e) = ctx.writer.submit(ctx.actor.clone(), Command::Bundle(command)).await {
        return e.into();
    }
    ImportError::Rejected { refusal, reason }
}

/// Imports the bundle at `path` on this host, in the order of DESIGN.md §3 — verified against
/// the current trust store, the version policy, sealed, its plugin or DAGs registered in the
/// import's transaction — or ledgers its rejection and answers with the reason.
pub async fn import_file(
    ctx: &Importer<'_>,
    path: &Path,
    source: &str,
    allow_downgrade: bool,
    progress: Arc<Progress>,
) -> Result<Imported, ImportError> {
    let path = path.to_path_buf();
    let at = (path.as_path(), source);
    let (trust_dir, now) = (ctx.trust_dir.to_owned(), ctx.now_ms);
    let checked = {
        let (path, progress) = (path.clone(), progress.clone());
        // Steps 1-4 only: the payload is walked once, while it is unpacked into staging.
        tokio::task::spawn_blocking(move || -> Result<verify::Envelope, String> {
            let trust = TrustStore::load(&trust_dir).map_err(|e| e.to_string())?;
            verify::check_envelope(&path, &trust, now, &progress).map_err(|e| e.to_string())
        })
        .await
        .map_err(|e| ImportError::Internal(e.to_string()))?
    };
    let v = match checked {
        Ok(v) => v,
        Err(reason) => return Err(reject(ctx, at, Refusal::Invalid, reason).await),
    };
    let m = v.manifest.clone();
    if m.kind == Kind::Artifact {
        return import_artifact(ctx, at, v, progress).await;
    }
    if let Some((code, reason)) = version_refusal(ctx, &m, allow_downgrade)? {
        return Err(reject(ctx, at, Refusal::Conflict(code), reason).await);
    }
    let lib = ctx.lib.to_owned();
    let existed = crate::plugins::sealed_dir(&lib, &m.payload.sha256).exists();
    let sealed = {
        let (path, v, lib, progress) = (path.clone(), v.clone(), lib.clone(), progress.clone());
        tokio::task::spawn_blocking(move || import::seal(&path, &v, &lib, &progress))
            .await
            .map_err(|e| ImportError::Internal(e.to_string()))?
    };
    let sealed = match sealed {
        Ok(s) => s,
        Err(reason) => return Err(reject(ctx, at, Refusal::Invalid, reason).await),
    };
    let contents = match inspect(ctx, &m.kind, &m.name, &sealed) {
        Ok(c) => c,
        Err(reason) => {
            if !existed {
                let _ = std::fs::remove_dir_all(&sealed);
            }
            return Err(reject(ctx, at, Refusal::Invalid, reason).await);
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
        environments: contents.environments.clone(),
    };
    // Kept beside the sealed payload so the bundle can be re-verified later.
    let meta = crate::app::installed::meta_dir(&lib, &m.payload.sha256);
    if let Err(e) = keep_signed_members(&path, &meta)? {
        return Err(reject(ctx, at, Refusal::Invalid, e).await);
    }
    progress.phase("recording");
    record(ctx, at, Command::Bundle(command), (!existed).then_some([sealed.as_path(), meta.as_path()])).await?;
    if m.kind == Kind::Trust {
        install_trust(ctx, &sealed)?;
    }
    progress.phase("done");
    Ok(imported(&v, contents.dags.into_iter().map(|(n, _)| n).collect()))
}

/// Records what was sealed. Refused while recording (a race with another import), the disk is
/// left as it was (`remove`: what this import created) and a conflict is ledgered as a rejection.
async fn record(
    ctx: &Importer<'_>,
    at: (&Path, &str),
    command: Command,
    remove: Option<[&Path; 2]>,
) -> Result<(), ImportError> {
    let Err(refused) = ctx.writer.submit(ctx.actor.clone(), command).await else { return Ok(()) };
    for dir in remove.into_iter().flatten() {
        let _ = std::fs::remove_dir_all(dir);
    }
    if let CommandError::Conflict { code, detail } = refused {
        return Err(reject(ctx, at, Refusal::Conflict(code), detail).await);
    }
    Err(refused.into())
}

/// The answer to an import of the bundle `v`.
fn imported(v: &verify::Envelope, dags: Vec<String>) -> Imported {
    let m = &v.manifest;
    Imported {
        name: m.name.clone(),
        version: m.version.clone(),
        kind: m.kind,
        digest: m.payload.sha256.clone(),
        signer: v.signer.principal.clone(),
        fingerprint: v.signer.fingerprint.clone(),
        files: m.files.len(),
        dags,
    }
}

/// Why the installed version of the bundle forbids this one (a downgrade without leave, a
/// version reused with other content, a major jump past the limit): the conflict code and the
/// reason.
fn version_refusal(
    ctx: &Importer<'_>,
    m: &crate::domain::bundles::format::Manifest,
    allow_downgrade: bool,
) -> Result<Option<(&'static str, String)>, ImportError> {
    let installed = read::bundles(&ctx.store.read()?)?.into_iter().find(|b| b["name"] == m.name.as_str());
    let Some(installed) = installed else { return Ok(None) };
    let Some(cur) = installed["version"].as_str() else { return Ok(None) };
    let refusal = if import::compare_versions(&m.version, cur).is_lt() && !allow_downgrade {
        let reason = format!(
            "bundle {} {} is older than the installed {cur}: a downgrade needs --allow-downgrade",
            m.name, m.version
        );
        Some(("version_downgrade", reason))
    } else if cur == m.version && installed["digest"].as_str() != Some(m.payload.sha256.as_str()) {
        let reason =
            format!("bundle {} {} is installed with other content: versions are never reused", m.name, m.version);
        Some(("version_reused", reason))
    } else if ctx.max_major_jump > 0 && import::major_jump(cur, &m.version) > ctx.max_major_jump {
        let limit = ctx.max_major_jump;
        let reason =
            format!("bundle {} jumps from {cur} to {}, past bundles.max_major_jump = {limit}", m.name, m.version);
        Some(("major_jump_too_far", reason))
    } else {
        None
    };
    Ok(refusal)
}

/// A trust bundle replaces the trust store atomically; the next verification reads the new one.
fn install_trust(ctx: &Importer<'_>, sealed: &Path) -> Result<(), ImportError> {
    for file in ["allowed_signers", "revoked"] {
        let source = sealed.join(file);
        let bytes = if source.exists() { std::fs::read(&source).map_err(internal)? } else { Vec::new() };
        crate::fsutil::write_file_atomic(&ctx.trust_dir.join(file), &bytes, 0o644).map_err(internal)?;
    }
    Ok(())
}

/// Writes the bundle's manifest, sums and signature into `meta` (for a later re-verification);
/// the inner error is the bundle's fault.
fn keep_signed_members(path: &Path, meta: &Path) -> Result<Result<(), String>, ImportError> {
    match verify::signed_members(path) {
        Ok(members) => {
            for (name, bytes) in members {
                crate::fsutil::write_file_atomic(&meta.join(name), &bytes, 0o644)
                    .map_err(|e| ImportError::Internal(format!("write {}: {e}", meta.display())))?;
            }
            Ok(Ok(()))
        }
        Err(e) => Ok(Err(e.to_string())),
    }
}

/// An artifact bundle: checked like every bundle, its files sealed into the registry
/// (`<lib>/registry/sha256/<digest>/`, its signed members in `meta/<digest>/`), a verified
/// copy of the bundle written to `registry.backup_dir`, then recorded as `artifact.imported`.
/// Versions of one artifact live side by side; a version is never reused with other content.
async fn import_artifact(
    ctx: &Importer<'_>,
    at: (&Path, &str),
    v: verify::Envelope,
    progress: Arc<Progress>,
) -> Result<Imported, ImportError> {
    let m = v.manifest.clone();
    let key = format!("{}@{}", m.name, m.version);
    if !valid_version(&m.version) {
        let reason = format!("artifact {key}: the version must be 1-64 of 0-9, A-Z, a-z, '.', '-', '+'");
        return Err(reject(ctx, at, Refusal::Invalid, reason).await);
    }
    let files: Vec<ArtifactFile> = m
        .files
        .iter()
        .filter(|f| f.kind == "file")
        .map(|f| ArtifactFile { path: f.path.clone(), size: f.size, sha256: f.sha256.clone().unwrap_or_default() })
        .collect();
    if files.is_empty() {
        return Err(reject(ctx, at, Refusal::Invalid, format!("artifact {key} carries no file")).await);
    }
    // A version already in the registry: the same content is nothing to do; other content is
    // refused before anything is written (the backup copy of the good one stays as it is).
    // The same version again after it was deleted or its files lost is a restore from this
    // bundle: sealed, backed up and ledgered as `artifact.restored`.
    let registry = registry_dir(ctx.lib);
    let target = registry.join("sha256").join(&m.payload.sha256);
    let existed = target.exists();
    let mut restore = false;
    if let Some(cur) = crate::domain::release::tables::artifact(&ctx.store.read()?, &key)? {
        if cur.digest != m.payload.sha256 {
            let reason = format!("artifact {key} is in the registry with other content: versions are never reused");
            return Err(reject(ctx, at, Refusal::Conflict("version_reused"), reason).await);
        }
        if cur.deleted.is_none() && existed {
            return Ok(imported(&v, vec![]));
        }
        restore = true;
    }
    let sealed = {
        let (path, v, lib, target) = (at.0.to_owned(), v.clone(), ctx.lib.to_owned(), target.clone());
        tokio::task::spawn_blocking(move || import::seal_at(&path, &v, &lib, target, &progress))
            .await
            .map_err(internal)?
    };
    if let Err(reason) = sealed {
        return Err(reject(ctx, at, Refusal::Invalid, reason).await);
    }
    let meta = registry.join("meta").join(&m.payload.sha256);
    if let Err(e) = keep_signed_members(at.0, &meta)? {
        return Err(reject(ctx, at, Refusal::Invalid, e).await);
    }
    // The backup copy is staged now and put in place once the import is recorded.
    let backup = match ctx.backup_dir {
        Some(dir) => Some(stage_backup(at.0, dir, &key).map_err(ImportError::Internal)?),
        None => None,
    };
    let command = if restore {
        ReleaseCommand::RestoreArtifact(crate::domain::release::ArtifactRestored {
            artifact: key.clone(),
            digest: m.payload.sha256.clone(),
            from: at.1.to_owned(),
        })
    } else {
        ReleaseCommand::RegisterArtifact(ArtifactImported {
            name: m.name.clone(),
            version: m.version.clone(),
            digest: m.payload.sha256.clone(),
            size: files.iter().map(|f| f.size).sum(),
            files,
            signer: v.signer.principal.clone(),
            fingerprint: v.signer.fingerprint.clone(),
            backup: backup.as_ref().map(|(_, out)| out.display().to_string()),
        })
    };
    let recorded =
        record(ctx, at, Command::Release(command), (!existed).then_some([target.as_path(), meta.as_path()])).await;
    if let Some((tmp, out)) = backup {
        if recorded.is_err() {
            let _ = std::fs::remove_file(&tmp);
        } else if let Err(e) = commit_backup(&tmp, &out) {
            // Recorded with its backup path: a restore will say the copy is missing.
            tracing::warn!(artifact = %key, error = %e, "the artifact's backup copy was not put in place");
        }
    }
    recorded?;
    Ok(imported(&v, vec![]))
}

/// `<lib>/registry`.
pub fn registry_dir(lib: &Path) -> PathBuf {
    lib.join("registry")
}

/// The backup copy of artifact `key` in `dir`.
pub fn backup_path(dir: &Path, key: &str) -> PathBuf {
    dir.join(format!("{key}.bundle"))
}

/// Copies the bundle at `path` into `dir` under a temporary name (fsync'd) and checks that the
/// copy reads back with the bundle's own digest: the temporary file and where it goes.
fn stage_backup(path: &Path, dir: &Path, key: &str) -> Result<(PathBuf, PathBuf), String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("registry.backup_dir {}: {e}", dir.display()))?;
    let tmp = dir.join(format!(".{key}.{}.tmp", crate::ids::random_hex(4)));
    let copied = std::fs::copy(path, &tmp)
        .and_then(|_| std::fs::File::open(&tmp)?.sync_all())
        .map_err(|e| format!("copy to {}: {e}", tmp.display()))
        .and_then(|_| {
            if file_sha256(&tmp) != file_sha256(path) {
                return Err(format!("the backup copy {} does not read back as written", tmp.display()));
            }
            Ok(())
        });
    if let Err(e) = copied {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    Ok((tmp, backup_path(dir, key)))
}

/// Puts a staged backup copy in place (rename, then fsync of the directory).
fn commit_backup(tmp: &Path, out: &Path) -> Result<(), String> {
    std::fs::rename(tmp, out).map_err(|e| format!("rename to {}: {e}", out.display()))?;
    let dir = out.parent().unwrap_or(Path::new("."));
    std::fs::File::open(dir).and_then(|d| d.sync_all()).map_err(|e| e.to_string())
}

/// Artifact versions: 1–64 of `0-9 A-Z a-z . - +`, starting with a digit or letter.
pub fn valid_version(v: &str) -> bool {
    (1..=64).contains(&v.len())
        && v.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
        && v.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'+'))
}

struct Contents {
    entrypoint: Option<String>,
    kinds: Vec<String>,
    dags: Vec<(String, String)>,
    environments: Option<Vec<crate::domain::release::Environment>>,
}

/// A `release.toml` parsed and validated, with its generated DAGs (deployment and probe, the
/// probe's steps from the installed plugin's kinds) compiled against the installed plugins.
pub fn release_contents(store: &Store, text: &str) -> Result<crate::domain::release::spec::Release, String> {
    let mut release = crate::domain::release::spec::parse(text)?;
    let installed = store.read().and_then(|t| read::installed_plugins(&t)).map_err(|e| e.to_string())?;
    for env in &release.environments {
        let kinds = installed.iter().find(|p| p.0 == env.plugin).map(|p| p.1.clone()).unwrap_or_default();
        release.dags.push((
            crate::domain::release::spec::probe_name(&env.name),
            crate::domain::release::spec::probe_spec(env, &kinds),
        ));
    }
    for (dag, spec) in &release.dags {
        crate::domain::runs::spec::compile(spec, &installed)
            .map_err(|e| format!("{}: the deployment DAG {dag}: {e}", crate::domain::release::spec::FILE))?;
    }
    Ok(release)
}

/// What a sealed bundle carries: a plugin's entrypoint (its `plugin.toml` must name the bundle),
/// or DAG specs (every `*.toml`), each validated against the installed plugins.
fn inspect(ctx: &Importer<'_>, kind: &Kind, name: &str, sealed: &Path) -> Result<Contents, String> {
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
            Ok(Contents {
                kinds: manifest.kinds(),
                entrypoint: Some(manifest.entrypoint),
                dags: vec![],
                environments: None,
            })
        }
        Kind::Dag => {
            let installed = ctx.store.read().and_then(|t| read::installed_plugins(&t)).map_err(|e| e.to_string())?;
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
            Ok(Contents { entrypoint: None, kinds: vec![], dags, environments: None })
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
            Ok(Contents { entrypoint: None, kinds: vec![], dags: vec![], environments: None })
        }
        Kind::Release => {
            let path = sealed.join(crate::domain::release::spec::FILE);
            let text = std::fs::read_to_string(&path)
                .map_err(|e| format!("a release bundle carries {}: {e}", crate::domain::release::spec::FILE))?;
            let release = release_contents(ctx.store, &text)?;
            Ok(Contents {
                entrypoint: None,
                kinds: vec![],
                dags: release.dags,
                environments: Some(release.environments),
            })
        }
        Kind::Artifact => unreachable!("artifacts are imported by import_artifact"),
    }
}
