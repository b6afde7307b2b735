//! `stella bundle build`: a reproducible envelope from a directory — entries sorted, times,
//! owners and names fixed, modes normalized — so the same input gives the same bytes.

use crate::domain::bundles::format::*;
use crate::trust::sig::{self, Namespace};
use sha2::{Digest, Sha256};
use std::io::{Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
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
    if !path.is_empty() {
        h.set_path(path).expect("envelope member names are short");
        h.set_cksum();
    }
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

/// Counts and hashes what passes through, in either direction.
struct Hashing<T> {
    inner: T,
    sha: Sha256,
    bytes: u64,
}

impl<T> Hashing<T> {
    fn new(inner: T) -> Self {
        Hashing { inner, sha: Sha256::new(), bytes: 0 }
    }
    fn finish(self) -> (T, String, u64) {
        (self.inner, hex::encode(self.sha.finalize()), self.bytes)
    }
}

impl<T: Read> Read for Hashing<T> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.sha.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }
}

impl<T: Write> Write for Hashing<T> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.sha.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// Builds and signs an envelope for `dir` into `out`, streaming: files are read once (hashed
/// as they go into the payload), the payload is compressed into a temporary file beside `out`,
/// and the envelope is written under a temporary name, fsynced and renamed. Memory stays
/// bounded whatever the bundle's size. `level` is the zstd level (`ZSTD_LEVEL` for releases).
pub fn build_to(
    dir: &Path,
    kind: Kind,
    name: &str,
    version: &str,
    key: &ssh_key::PrivateKey,
    out: &Path,
    level: i32,
) -> Result<Manifest, String> {
    let mut items = Vec::new();
    walk(dir, dir, &mut items)?;
    if items.len() > FILES_MAX {
        return Err(format!("more than {FILES_MAX} files"));
    }
    let mut payload_name = out.file_name().unwrap_or_default().to_owned();
    payload_name.push(format!(".payload{}", std::process::id()));
    let payload_path = out.with_file_name(payload_name);
    let result = (|| {
        let (files, payload) = write_payload(dir, &items, &payload_path, level)?;
        let manifest = Manifest {
            format_version: 1,
            kind,
            name: name.to_owned(),
            version: version.to_owned(),
            not_after: None,
            payload,
            files,
        };
        let manifest_bytes = serde_json_canonicalizer::to_vec(&manifest).map_err(|e| e.to_string())?;
        let sums_text =
            sums(&[(MANIFEST, &hex::encode(Sha256::digest(&manifest_bytes))), (PAYLOAD, &manifest.payload.sha256)]);
        // A trust-store update is signed in its own namespace: only root keys may sign it, and a
        // code or workflow signature can never pass for one.
        let ns = if kind == Kind::Trust { Namespace::Trust } else { Namespace::Bundle };
        let signature = sig::sign(key, ns, sums_text.as_bytes())?;
        let payload_file = std::fs::File::open(&payload_path).map_err(|e| format!("payload: {e}"))?;
        crate::fsutil::write_atomic_with(out, 0o644, |f| {
            let mut envelope = tar::Builder::new(std::io::BufWriter::with_capacity(1 << 20, f));
            let mut member = |name: &str, size: u64, data: &mut dyn Read| {
                envelope.append(&header(name, size, 0o644, tar::EntryType::Regular), data)
            };
            member(MANIFEST, manifest_bytes.len() as u64, &mut manifest_bytes.as_slice())?;
            member(PAYLOAD, manifest.payload.size, &mut std::io::BufReader::new(&payload_file))?;
            member(SUMS, sums_text.len() as u64, &mut sums_text.as_bytes())?;
            member(SUMS_SIG, signature.len() as u64, &mut signature.as_bytes())?;
            envelope.into_inner()?.flush()
        })
        .map_err(|e| format!("write {}: {e}", out.display()))?;
        Ok(manifest)
    })();
    let _ = std::fs::remove_file(&payload_path);
    result
}

/// Writes the compressed payload tar of `items` to `path`; returns the manifest's file list
/// and the payload reference.
fn write_payload(
    dir: &Path,
    items: &[(String, std::fs::Metadata)],
    path: &Path,
    level: i32,
) -> Result<(Vec<FileEntry>, PayloadRef), String> {
    let io = |e: std::io::Error| format!("payload: {e}");
    let file = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path).map_err(io)?;
    let compressed = Hashing::new(std::io::BufWriter::with_capacity(1 << 20, file));
    let mut payload_tar = tar::Builder::new(zstd::stream::write::Encoder::new(compressed, level).map_err(io)?);
    let mut files = Vec::new();
    for (rel, meta) in items {
        if meta.is_dir() {
            let mut h = header("", 0, 0o755, tar::EntryType::Directory);
            payload_tar.append_data(&mut h, format!("{rel}/"), std::io::empty()).map_err(io)?;
            files.push(FileEntry { path: rel.clone(), kind: "dir".into(), size: 0, mode: 0o755, sha256: None });
        } else {
            let size = meta.len();
            let mode = if meta.permissions().mode() & 0o111 != 0 { 0o755 } else { 0o644 };
            let source = std::fs::File::open(dir.join(rel)).map_err(|e| format!("{rel}: {e}"))?;
            let mut reader = Hashing::new(source.take(size));
            let mut h = header("", size, mode, tar::EntryType::Regular);
            payload_tar.append_data(&mut h, rel, &mut reader).map_err(|e| format!("{rel}: {e}"))?;
            let (_, sha, read) = reader.finish();
            if read != size {
                return Err(format!("{rel}: changed while the bundle was built ({read} of {size} bytes)"));
            }
            files.push(FileEntry { path: rel.clone(), kind: "file".into(), size, mode, sha256: Some(sha) });
        }
    }
    let encoder = payload_tar.into_inner().map_err(io)?;
    let (mut buffered, sha256, size) = encoder.finish().map_err(io)?.finish();
    buffered.flush().map_err(io)?;
    buffered.get_ref().sync_all().map_err(io)?;
    Ok((files, PayloadRef { file: PAYLOAD.into(), size, sha256 }))
}
