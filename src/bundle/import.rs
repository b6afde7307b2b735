//! Unpacking a verified bundle into the sealed store: a fresh staging directory, files created
//! exclusively (never through `tar`'s `unpack`), each hashed while written and checked against
//! the manifest, fsynced with its directories, then renamed atomically to
//! `<lib>/bundles/sha256/<payload sha256>/`. Any failure removes the staging directory, so the
//! sealed store is exactly as before.

use crate::bundle::format::*;
use sha2::{Digest, Sha256};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Unpacks the payload of the verified envelope at `path` into the sealed store; returns the
/// sealed directory. An already sealed payload (same digest) is kept as it is.
pub fn seal(path: &Path, manifest: &Manifest, lib: &Path) -> Result<PathBuf, String> {
    let target = crate::plugins::sealed_dir(lib, &manifest.payload.sha256);
    if target.exists() {
        return Ok(target);
    }
    let staging = lib.join("bundles/staging").join(crate::ids::random_hex(8));
    std::fs::create_dir_all(&staging).map_err(|e| format!("{}: {e}", staging.display()))?;
    let result = unpack(path, manifest, &staging).and_then(|()| {
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

/// The payload's offset and size inside the envelope.
fn payload_span(path: &Path) -> Result<(u64, u64), String> {
    let mut archive = tar::Archive::new(std::fs::File::open(path).map_err(|e| e.to_string())?);
    for named in crate::bundle::entries::entries(&mut archive)? {
        let crate::bundle::entries::Named { name, entry } = named?;
        if name == PAYLOAD {
            return Ok((entry.raw_file_position(), entry.size()));
        }
    }
    Err("no payload".into())
}

fn unpack(path: &Path, manifest: &Manifest, staging: &Path) -> Result<(), String> {
    let (offset, size) = payload_span(path)?;
    let mut file = std::fs::File::open(path).map_err(|e| e.to_string())?;
    file.seek(SeekFrom::Start(offset)).map_err(|e| e.to_string())?;
    let mut decoder = zstd::stream::read::Decoder::new(file.take(size)).map_err(|e| e.to_string())?;
    decoder.window_log_max(ZSTD_WINDOW_LOG_MAX).map_err(|e| e.to_string())?;
    let mut archive = tar::Archive::new(decoder);
    let mut dirs = vec![staging.to_path_buf()];
    for named in crate::bundle::entries::entries(&mut archive)? {
        let crate::bundle::entries::Named { name, mut entry } = named?;
        let f =
            manifest.files.iter().find(|f| f.path == name).ok_or_else(|| format!("{name:?} is not in the manifest"))?;
        if !valid_path(&name) {
            return Err(format!("{name:?}: unsafe path"));
        }
        let dest = staging.join(&name);
        match (entry.header().entry_type(), f.kind.as_str()) {
            (tar::EntryType::Directory, "dir") => {
                std::fs::create_dir(&dest).map_err(|e| format!("{name}: {e}"))?;
                dirs.push(dest);
            }
            (tar::EntryType::Regular, "file") => {
                let mut out = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(&dest)
                    .map_err(|e| format!("{name}: {e}"))?;
                let mut h = Sha256::new();
                let mut left = f.size;
                let mut buf = vec![0u8; 64 * 1024];
                while left > 0 {
                    let want = left.min(buf.len() as u64) as usize;
                    let n = entry.read(&mut buf[..want]).map_err(|e| format!("{name}: {e}"))?;
                    if n == 0 {
                        return Err(format!("{name}: shorter than the manifest says"));
                    }
                    h.update(&buf[..n]);
                    out.write_all(&buf[..n]).map_err(|e| format!("{name}: {e}"))?;
                    left -= n as u64;
                }
                if Some(hex::encode(h.finalize())) != f.sha256 {
                    return Err(format!("{name}: does not match its sha256"));
                }
                out.set_permissions(std::fs::Permissions::from_mode(f.mode & 0o555)).map_err(|e| e.to_string())?;
                out.sync_all().map_err(|e| format!("{name}: {e}"))?;
            }
            (other, _) => return Err(format!("{name:?} is a {other:?}")),
        }
    }
    for d in dirs.iter().rev() {
        std::fs::File::open(d).and_then(|d| d.sync_all()).map_err(|e| e.to_string())?;
    }
    Ok(())
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
