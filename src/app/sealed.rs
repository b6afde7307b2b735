//! A sealed copy carried to a remote deploy agent: a plugin or an artifact as the appliance
//! sealed it — its signed members (`meta/`: manifest, `SHA256SUMS`, signature) and its files
//! (`files/`) — in one tar, and, on the agent, its unpacking into a staging directory and the
//! same check an installed bundle gets ([`reverify_installed`]) against the agent's own trust
//! store, with the manifest's payload digest held to the digest the job pins. So an agent runs
//! only what a key it trusts signed, whatever the appliance or the wire did.

use crate::domain::bundles::format::Manifest;
use crate::domain::bundles::verify::reverify_installed;
use crate::trust::store::TrustStore;
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};

/// A sealed copy larger than this is not carried (the agent's client reads replies whole).
pub const BYTES_MAX: u64 = 64 * 1024 * 1024 - 1024 * 1024;

/// What is carried: a plugin (`<lib>/bundles/`) or an artifact (`<lib>/registry/`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sealed {
    Plugin,
    Artifact,
}

impl Sealed {
    pub fn parse(s: &str) -> Option<Sealed> {
        match s {
            "plugin" => Some(Sealed::Plugin),
            "artifact" => Some(Sealed::Artifact),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Sealed::Plugin => "plugin",
            Sealed::Artifact => "artifact",
        }
    }

    /// `(meta, files)` of `digest` on the appliance.
    fn dirs(self, lib: &Path, digest: &str) -> (PathBuf, PathBuf) {
        match self {
            Sealed::Plugin => (crate::app::installed::meta_dir(lib, digest), crate::plugins::sealed_dir(lib, digest)),
            Sealed::Artifact => {
                let registry = crate::app::import::registry_dir(lib);
                (registry.join("meta").join(digest), registry.join("sha256").join(digest))
            }
        }
    }
}

pub fn valid_digest(d: &str) -> bool {
    d.len() == 64 && d.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Why a sealed copy could not be carried.
#[derive(Debug, thiserror::Error)]
pub enum PackError {
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    TooLarge(String),
    #[error("{0}")]
    Io(String),
}

/// The tar of `digest`'s sealed copy: `meta/<member>` and `files/<path>`, each with its mode.
pub fn pack(lib: &Path, kind: Sealed, digest: &str) -> Result<Vec<u8>, PackError> {
    let (meta, files) = kind.dirs(lib, digest);
    if !meta.is_dir() {
        // An unsigned plugin (registered from a directory in dev mode) has no signed members.
        return Err(PackError::NotFound(format!(
            "{} {digest} has no signed copy on the appliance: a remote agent runs signed bundles only",
            kind.as_str()
        )));
    }
    if !files.is_dir() {
        return Err(PackError::NotFound(format!("{} {digest} is not in the appliance's sealed store", kind.as_str())));
    }
    let mut out = tar::Builder::new(Vec::new());
    out.mode(tar::HeaderMode::Deterministic);
    let mut total = 0u64;
    for (prefix, root) in [("meta", &meta), ("files", &files)] {
        let mut stack = vec![root.clone()];
        while let Some(dir) = stack.pop() {
            let mut entries: Vec<_> = std::fs::read_dir(&dir)
                .map_err(|e| PackError::Io(format!("{}: {e}", dir.display())))?
                .flatten()
                .map(|e| e.path())
                .collect();
            entries.sort();
            for p in entries {
                let m = std::fs::symlink_metadata(&p).map_err(|e| PackError::Io(format!("{}: {e}", p.display())))?;
                let rel = Path::new(prefix).join(p.strip_prefix(root).expect("under root"));
                if m.is_dir() {
                    // Carried too: an empty directory is part of what the manifest describes.
                    let mut header = tar::Header::new_gnu();
                    header.set_size(0);
                    header.set_mode(0o755);
                    header.set_entry_type(tar::EntryType::Directory);
                    out.append_data(&mut header, &rel, std::io::empty()).map_err(|e| PackError::Io(e.to_string()))?;
                    stack.push(p);
                    continue;
                }
                if !m.is_file() {
                    return Err(PackError::Io(format!("{} is not a regular file", p.display())));
                }
                // Header and padding count too: the reply must fit what the agent reads.
                total += m.len() + 1024;
                if total > BYTES_MAX {
                    return Err(PackError::TooLarge(format!(
                        "{} {digest} is larger than {} MiB: too large to carry to a remote agent",
                        kind.as_str(),
                        BYTES_MAX >> 20
                    )));
                }
                let mut header = tar::Header::new_gnu();
                header.set_size(m.len());
                header.set_mode(m.permissions().mode() & 0o755);
                header.set_entry_type(tar::EntryType::Regular);
                let file = std::fs::File::open(&p).map_err(|e| PackError::Io(format!("{}: {e}", p.display())))?;
                out.append_data(&mut header, &rel, file).map_err(|e| PackError::Io(e.to_string()))?;
            }
        }
    }
    out.into_inner().map_err(|e| PackError::Io(e.to_string()))
}

/// On the agent: the copy of `digest` already in `<cache>/<kind>/<digest>/`, verified again
/// (a file changed on the agent's host, or a key revoked since, fails and the copy is
/// removed, to be fetched again). Answers its `files/` directory.
pub fn cached(cache: &Path, kind: Sealed, digest: &str, trust: &TrustStore, now_ms: i64) -> Option<PathBuf> {
    let dir = cache.join(kind.as_str()).join(digest);
    if !dir.is_dir() {
        return None;
    }
    match verify(&dir, kind, digest, trust, now_ms) {
        Ok(()) => Some(dir.join("files")),
        Err(e) => {
            tracing::warn!(kind = kind.as_str(), digest, error = %e, "cached copy fails verification; fetching it again");
            let _ = std::fs::remove_dir_all(&dir);
            None
        }
    }
}

/// On the agent: `bytes` (from [`pack`]) unpacked into a staging directory, verified, and
/// renamed into `<cache>/<kind>/<digest>/` only then. Answers its `files/` directory.
pub fn install(
    cache: &Path,
    kind: Sealed,
    digest: &str,
    bytes: &[u8],
    trust: &TrustStore,
    now_ms: i64,
) -> Result<PathBuf, String> {
    let dir = cache.join(kind.as_str()).join(digest);
    let staging = cache.join("staging").join(crate::ids::random_hex(8));
    let result = unpack(bytes, &staging)
        .and_then(|()| {
            verify(&staging, kind, digest, trust, now_ms)
                .map_err(|e| format!("{} {digest} fails verification on this agent: {e}", kind.as_str()))
        })
        .and_then(|()| {
            std::fs::create_dir_all(dir.parent().expect("has a parent")).map_err(|e| e.to_string())?;
            match std::fs::rename(&staging, &dir) {
                Ok(()) => Ok(()),
                // Another attempt put the same copy in place meanwhile.
                Err(_) if dir.is_dir() => {
                    let _ = std::fs::remove_dir_all(&staging);
                    verify(&dir, kind, digest, trust, now_ms)
                }
                Err(e) => Err(format!("{}: {e}", dir.display())),
            }
        });
    if let Err(e) = result {
        let _ = std::fs::remove_dir_all(&staging);
        return Err(e);
    }
    Ok(dir.join("files"))
}

fn verify(dir: &Path, kind: Sealed, digest: &str, trust: &TrustStore, now_ms: i64) -> Result<(), String> {
    reverify_installed(&dir.join("meta"), &dir.join("files"), trust, now_ms)?;
    // The signed manifest names the payload it describes: it must be the one the job pins.
    let bytes = std::fs::read(dir.join("meta").join(crate::domain::bundles::format::MANIFEST))
        .map_err(|e| format!("manifest.json: {e}"))?;
    let manifest: Manifest = serde_json::from_slice(&bytes).map_err(|e| format!("manifest.json: {e}"))?;
    if manifest.payload.sha256 != digest {
        return Err(format!("its signed manifest describes payload {}, not {digest}", manifest.payload.sha256));
    }
    // A signed bundle of another kind (an artifact served as a plugin) is not run.
    let expected = match kind {
        Sealed::Plugin => crate::domain::bundles::format::Kind::Plugin,
        Sealed::Artifact => crate::domain::bundles::format::Kind::Artifact,
    };
    if manifest.kind != expected {
        return Err(format!("its signed manifest is of a {} bundle, not a {}", manifest.kind.as_str(), kind.as_str()));
    }
    Ok(())
}

/// Entries must be regular files under `meta/` or `files/`, with plain relative paths.
fn unpack(bytes: &[u8], into: &Path) -> Result<(), String> {
    let mut archive = tar::Archive::new(bytes);
    let mut total = 0u64;
    for entry in archive.entries().map_err(|e| format!("sealed copy: {e}"))? {
        let mut entry = entry.map_err(|e| format!("sealed copy: {e}"))?;
        let path = entry.path().map_err(|e| format!("sealed copy: {e}"))?.into_owned();
        let plain = path.components().all(|c| matches!(c, Component::Normal(_)));
        let top = path.components().next().and_then(|c| c.as_os_str().to_str()).unwrap_or("");
        if !plain || !(top == "meta" || top == "files") || path.components().count() < 2 {
            return Err(format!("sealed copy: entry {} is outside meta/ and files/", path.display()));
        }
        let target = into.join(&path);
        match entry.header().entry_type() {
            tar::EntryType::Regular => {}
            tar::EntryType::Directory => {
                std::fs::create_dir_all(&target).map_err(|e| format!("{}: {e}", target.display()))?;
                continue;
            }
            _ => return Err(format!("sealed copy: entry {} is not a regular file or directory", path.display())),
        }
        total += entry.size();
        if total > BYTES_MAX {
            return Err("sealed copy: larger than it may be".into());
        }
        let mode = entry.header().mode().unwrap_or(0o644) & 0o755;
        std::fs::create_dir_all(target.parent().expect("has a parent")).map_err(|e| e.to_string())?;
        let mut data = Vec::with_capacity(entry.size() as usize);
        entry.read_to_end(&mut data).map_err(|e| format!("sealed copy: {e}"))?;
        std::fs::write(&target, &data).map_err(|e| format!("{}: {e}", target.display()))?;
        std::fs::set_permissions(&target, std::fs::Permissions::from_mode(mode)).map_err(|e| e.to_string())?;
    }
    Ok(())
}
