//! Unpacking a verified bundle into the sealed store: a fresh staging directory, files created
//! exclusively (never through `tar`'s `unpack`), each hashed while written and checked against
//! the manifest, fsynced with its directories, then renamed atomically to
//! `<lib>/bundles/sha256/<payload sha256>/`. Any failure removes the staging directory, so the
//! sealed store is exactly as before.

use crate::domain::bundles::verify::{Envelope, unpack};
use crate::progress::Progress;
use std::path::{Path, PathBuf};

/// Unpacks the payload of the checked envelope at `path` into the sealed store; returns the
/// sealed directory. An already sealed payload (same digest) is kept as it is.
pub fn seal(path: &Path, envelope: &Envelope, lib: &Path, progress: &Progress) -> Result<PathBuf, String> {
    seal_at(path, envelope, lib, crate::plugins::sealed_dir(lib, &envelope.manifest.payload.sha256), progress)
}

/// [`seal`] into `target` (the artifact registry's own content-addressed directory), staged
/// under `<lib>/bundles/staging` like every bundle.
pub fn seal_at(
    path: &Path,
    envelope: &Envelope,
    lib: &Path,
    target: PathBuf,
    progress: &Progress,
) -> Result<PathBuf, String> {
    if target.exists() {
        // The same payload is sealed already; this manifest must still describe it.
        crate::domain::bundles::verify::walk(path, envelope, progress).map_err(|e| e.to_string())?;
        return Ok(target);
    }
    let staging = lib.join("bundles/staging").join(crate::ids::random_hex(8));
    std::fs::create_dir_all(&staging).map_err(|e| format!("{}: {e}", staging.display()))?;
    let result = unpack(path, envelope, &staging, progress).map_err(|e| e.to_string()).and_then(|_| {
        std::fs::create_dir_all(target.parent().expect("sealed dir has a parent")).map_err(|e| e.to_string())?;
        std::fs::rename(&staging, &target).map_err(|e| format!("seal: {e}"))?;
        std::fs::File::open(target.parent().expect("parent")).and_then(|d| d.sync_all()).map_err(|e| e.to_string())
    });
    if let Err(e) = result {
        let _ = std::fs::remove_dir_all(&staging);
        return Err(e);
    }
    Ok(target)
}

/// Removes what imports (and dev plugin registrations) left in `<lib>/bundles/staging` when
/// the daemon died under them: at start nothing is being unpacked, and nothing reads staging.
/// Returns the entries removed and their bytes.
pub fn sweep_staging(lib: &Path) -> (usize, u64) {
    let staging = lib.join("bundles/staging");
    let Ok(entries) = std::fs::read_dir(&staging) else { return (0, 0) };
    let (mut removed, mut bytes) = (0, 0);
    for entry in entries.flatten() {
        let path = entry.path();
        let size = tree_bytes(&path);
        let gone = if entry.file_type().is_ok_and(|t| t.is_dir()) {
            std::fs::remove_dir_all(&path)
        } else {
            std::fs::remove_file(&path)
        };
        match gone {
            Ok(()) => (removed, bytes) = (removed + 1, bytes + size),
            Err(e) => tracing::warn!(path = %path.display(), error = %e, "could not remove an unfinished import"),
        }
    }
    (removed, bytes)
}

/// The bytes of the files under `path` (symlinks not followed).
fn tree_bytes(path: &Path) -> u64 {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => {
            std::fs::read_dir(path).map(|r| r.flatten().map(|e| tree_bytes(&e.path())).sum()).unwrap_or(0)
        }
        Ok(m) => m.len(),
        Err(_) => 0,
    }
}

/// Orders versions: dot-separated numbers compare numerically, anything else as text.
pub fn compare_versions(a: &str, b: &str) -> std::cmp::Ordering {
    let parts =
        |v: &str| v.split(['.', '-', '+']).map(|p| p.parse::<u64>().map_err(|_| p.to_owned())).collect::<Vec<_>>();
    let (pa, pb) = (parts(a), parts(b));
    for (x, y) in pa.iter().zip(pb.iter()) {
        let o = match (x, y) {
            (Ok(x), Ok(y)) => x.cmp(y),
            (Err(x), Err(y)) => x.cmp(y),
            (Ok(_), Err(_)) => std::cmp::Ordering::Greater,
            (Err(_), Ok(_)) => std::cmp::Ordering::Less,
        };
        if o.is_ne() {
            return o;
        }
    }
    pa.len().cmp(&pb.len())
}

/// How far `new` raises the first numeric version component over `current` (0 if not higher
/// or not numeric).
pub fn major_jump(current: &str, new: &str) -> u64 {
    let major = |v: &str| v.split(['.', '-', '+']).next().and_then(|p| p.parse::<u64>().ok());
    match (major(current), major(new)) {
        (Some(c), Some(n)) => n.saturating_sub(c),
        _ => 0,
    }
}
