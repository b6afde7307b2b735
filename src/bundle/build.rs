//! `stella bundle build`: a reproducible envelope from a directory — entries sorted, times,
//! owners and names fixed, modes normalized — so the same input gives the same bytes.

use crate::bundle::format::*;
use crate::trust::sig::{self, Namespace};
use sha2::{Digest, Sha256};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

fn header(path: &str, size: u64, mode: u32, kind: tar::EntryType) -> tar::Header {
    let mut h = tar::Header::new_ustar();
    h.set_entry_type(kind);
    h.set_size(size);
    h.set_mode(mode);
    h.set_mtime(0);
    h.set_uid(0);
    h.set_gid(0);
    let _ = h.set_username("");
    let _ = h.set_groupname("");
    let _ = h.set_path(path);
    h.set_cksum();
    h
}

/// Walks `dir`: regular files and directories only, sorted by path.
fn walk(root: &Path, dir: &Path, out: &mut Vec<(String, std::fs::Metadata)>) -> Result<(), String> {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .map_err(|e| format!("{}: {e}", dir.display()))?
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{}: {e}", dir.display()))?;
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let path = e.path();
        let meta = std::fs::symlink_metadata(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        let rel = path.strip_prefix(root).expect("under root").to_string_lossy().into_owned();
        if !valid_path(&rel) {
            return Err(format!("{rel:?}: not a valid bundle path"));
        }
        if meta.is_dir() {
            out.push((rel, meta));
            walk(root, &path, out)?;
        } else if meta.is_file() {
            out.push((rel, meta));
        } else {
            return Err(format!("{rel}: only regular files and directories go into a bundle"));
        }
    }
    Ok(())
}

pub struct Built {
    pub bytes: Vec<u8>,
    pub manifest: Manifest,
}

/// Builds and signs an envelope for `dir`.
pub fn build(dir: &Path, kind: Kind, name: &str, version: &str, key: &ssh_key::PrivateKey) -> Result<Built, String> {
    let mut items = Vec::new();
    walk(dir, dir, &mut items)?;
    if items.len() > FILES_MAX {
        return Err(format!("more than {FILES_MAX} files"));
    }
    let mut payload_tar = tar::Builder::new(Vec::new());
    let mut files = Vec::new();
    for (rel, meta) in &items {
        if meta.is_dir() {
            payload_tar
                .append(&header(&format!("{rel}/"), 0, 0o755, tar::EntryType::Directory), std::io::empty())
                .map_err(|e| e.to_string())?;
            files.push(FileEntry { path: rel.clone(), kind: "dir".into(), size: 0, mode: 0o755, sha256: None });
        } else {
            let bytes = std::fs::read(dir.join(rel)).map_err(|e| format!("{rel}: {e}"))?;
            let mode = if meta.permissions().mode() & 0o111 != 0 { 0o755 } else { 0o644 };
            payload_tar
                .append(&header(rel, bytes.len() as u64, mode, tar::EntryType::Regular), bytes.as_slice())
                .map_err(|e| e.to_string())?;
            files.push(FileEntry {
                path: rel.clone(),
                kind: "file".into(),
                size: bytes.len() as u64,
                mode,
                sha256: Some(hex::encode(Sha256::digest(&bytes))),
            });
        }
    }
    let tar_bytes = payload_tar.into_inner().map_err(|e| e.to_string())?;
    let payload = zstd::encode_all(tar_bytes.as_slice(), ZSTD_LEVEL).map_err(|e| format!("compress: {e}"))?;
    let manifest = Manifest {
        format_version: 1,
        kind,
        name: name.to_owned(),
        version: version.to_owned(),
        not_after: None,
        payload: PayloadRef {
            file: PAYLOAD.into(),
            size: payload.len() as u64,
            sha256: hex::encode(Sha256::digest(&payload)),
        },
        files,
    };
    let manifest_bytes = serde_json_canonicalizer::to_vec(&manifest).map_err(|e| e.to_string())?;
    let sums_text =
        sums(&[(MANIFEST, &hex::encode(Sha256::digest(&manifest_bytes))), (PAYLOAD, &manifest.payload.sha256)]);
    // A trust-store update is signed in its own namespace: only root keys may sign it, and a
    // code or workflow signature can never pass for one.
    let ns = if kind == Kind::Trust { Namespace::Trust } else { Namespace::Bundle };
    let signature = sig::sign(key, ns, sums_text.as_bytes())?;
    let mut envelope = tar::Builder::new(Vec::new());
    for (member, bytes) in [
        (MANIFEST, manifest_bytes.as_slice()),
        (PAYLOAD, payload.as_slice()),
        (SUMS, sums_text.as_bytes()),
        (SUMS_SIG, signature.as_bytes()),
    ] {
        envelope
            .append(&header(member, bytes.len() as u64, 0o644, tar::EntryType::Regular), bytes)
            .map_err(|e| e.to_string())?;
    }
    Ok(Built { bytes: envelope.into_inner().map_err(|e| e.to_string())?, manifest })
}
