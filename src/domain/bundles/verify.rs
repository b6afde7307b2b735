//! The offline check of an envelope, in the order of DESIGN.md §3: a bounded read of the
//! envelope → the signature over SHA256SUMS → the digests → the manifest → a streamed walk of
//! the payload (zstd with a bounded window, tar) checking every entry against the manifest.
//! Nothing is decompressed before the signature and the digests pass, and nothing is written.

use crate::domain::bundles::format::*;
use crate::progress::Progress;
use crate::trust::sig::{self, Namespace, SigError, Signer};
use crate::trust::store::TrustStore;
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BundleError {
    #[error("envelope: {0}")]
    Envelope(String),
    #[error("signature: {0}")]
    Signature(#[from] SigError),
    #[error("digest of {member} does not match SHA256SUMS")]
    Digest { member: &'static str },
    #[error("manifest: {0}")]
    Manifest(String),
    #[error("payload: {0}")]
    Payload(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    pub manifest: Manifest,
    pub signer: Signer,
    pub files: usize,
    pub unpacked_bytes: u64,
}

fn env(e: impl std::fmt::Display) -> BundleError {
    BundleError::Envelope(e.to_string())
}

struct Members {
    small: BTreeMap<&'static str, Vec<u8>>,
    payload_offset: u64,
    payload_size: u64,
    payload_sha256: String,
}

/// Reads the envelope's members: exactly the four, regular files, each once, bounded.
fn members(path: &Path, progress: &Progress) -> Result<Members, BundleError> {
    let size = std::fs::metadata(path).map_err(|e| env(format!("{}: {e}", path.display())))?.len();
    if size > ENVELOPE_BYTES_MAX {
        return Err(env(format!("{size} bytes is larger than {ENVELOPE_BYTES_MAX}")));
    }
    let file = std::fs::File::open(path).map_err(|e| env(format!("{}: {e}", path.display())))?;
    let mut archive = tar::Archive::new(file);
    let mut out = Members { small: BTreeMap::new(), payload_offset: 0, payload_size: 0, payload_sha256: String::new() };
    let mut seen = HashSet::new();
    for named in crate::domain::bundles::entries::entries(&mut archive).map_err(env)? {
        let crate::domain::bundles::entries::Named { name, mut entry } = named.map_err(env)?;
        let member =
            // Not quoted: until the signature is checked the name is any bytes of any file.
            MEMBERS.iter().find(|m| **m == name).copied().ok_or_else(|| {
                env(format!(
                    "unexpected member (a name of {} bytes): an envelope holds only {}",
                    name.len(),
                    MEMBERS.join(", ")
                ))
            })?;
        if !seen.insert(member) {
            return Err(env(format!("member {member} appears twice")));
        }
        if entry.header().entry_type() != tar::EntryType::Regular {
            return Err(env(format!("member {member} is not a regular file")));
        }
        let len = entry.size();
        if member == PAYLOAD {
            out.payload_offset = entry.raw_file_position();
            out.payload_size = len;
            progress.phase("verifying");
            progress.add_total(len);
            let mut h = Sha256::new();
            std::io::copy(&mut (&mut entry).take(len), &mut HashWriter(&mut h, progress)).map_err(env)?;
            out.payload_sha256 = hex::encode(h.finalize());
        } else {
            if len > SMALL_MEMBER_BYTES_MAX {
                return Err(env(format!("member {member} is larger than {SMALL_MEMBER_BYTES_MAX} bytes")));
            }
            let mut buf = Vec::with_capacity(len as usize);
            (&mut entry).take(len).read_to_end(&mut buf).map_err(env)?;
            out.small.insert(member, buf);
        }
    }
    if let Some(missing) = MEMBERS.iter().find(|m| !seen.contains(*m)) {
        return Err(env(format!("member {missing} is missing")));
    }
    Ok(out)
}

struct HashWriter<'a>(&'a mut Sha256, &'a Progress);

impl std::io::Write for HashWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.update(buf);
        self.1.add(buf.len() as u64);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// An envelope whose signature, digests and manifest passed; its payload is not walked yet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    pub manifest: Manifest,
    pub signer: Signer,
    payload_offset: u64,
    payload_size: u64,
}

/// The whole offline check: [`check_envelope`], then a walk of the payload that writes nothing.
pub fn verify(path: &Path, trust: &TrustStore, now_ms: i64) -> Result<Verified, BundleError> {
    let progress = Progress::default();
    let e = check_envelope(path, trust, now_ms, &progress)?;
    let (files, unpacked_bytes) = walk_payload(path, &e, None, &progress)?;
    Ok(Verified { manifest: e.manifest, signer: e.signer, files, unpacked_bytes })
}

/// Steps 1–4 of DESIGN.md §3: the bounded envelope read, the signature over SHA256SUMS, the
/// digests, the manifest. Nothing is decompressed. `progress` counts the payload bytes hashed
/// and, once the manifest passed, adds the unpacked bytes to come to its total.
pub fn check_envelope(
    path: &Path,
    trust: &TrustStore,
    now_ms: i64,
    progress: &Progress,
) -> Result<Envelope, BundleError> {
    let m = members(path, progress)?;
    let sums_bytes = &m.small[SUMS];
    let sig_text = String::from_utf8_lossy(&m.small[SUMS_SIG]).into_owned();
    // Bundles are signed in the bundle namespace, trust-store updates in the trust namespace;
    // the manifest's kind must agree with the namespace that verified.
    let ns = if sig::claimed_namespace(&sig_text).as_deref() == Some(Namespace::Trust.as_str()) {
        Namespace::Trust
    } else {
        Namespace::Bundle
    };
    let signer = sig::verify(&sig_text, ns, sums_bytes, trust, now_ms)?;
    let sums = parse_sums(&String::from_utf8_lossy(sums_bytes)).map_err(BundleError::Envelope)?;
    let listed = |n: &str| sums.iter().find(|(name, _)| name == n).map(|(_, s)| s.clone()).unwrap_or_default();
    if hex::encode(Sha256::digest(&m.small[MANIFEST])) != listed(MANIFEST) {
        return Err(BundleError::Digest { member: MANIFEST });
    }
    if m.payload_sha256 != listed(PAYLOAD) {
        return Err(BundleError::Digest { member: PAYLOAD });
    }
    let manifest: Manifest =
        serde_json::from_slice(&m.small[MANIFEST]).map_err(|e| BundleError::Manifest(e.to_string()))?;
    // One byte form per manifest (RFC 8785): no duplicate members, escapes or reorderings that
    // two readers could take differently.
    let canonical = serde_json::from_slice::<serde_json::Value>(&m.small[MANIFEST])
        .ok()
        .and_then(|v| serde_json_canonicalizer::to_vec(&v).ok())
        .is_some_and(|c| c == m.small[MANIFEST]);
    if !canonical {
        return Err(BundleError::Manifest(
            "manifest.json is not in RFC 8785 canonical JSON (members sorted, no whitespace, shortest escapes); \
             `stella bundle build` writes it so"
                .into(),
        ));
    }
    check_manifest(&manifest, &m, now_ms)?;
    if (manifest.kind == Kind::Trust) != (ns == Namespace::Trust) {
        return Err(BundleError::Manifest(format!(
            "a {:?} bundle must be signed in the {} namespace",
            manifest.kind,
            if manifest.kind == Kind::Trust { Namespace::Trust.as_str() } else { Namespace::Bundle.as_str() }
        )));
    }
    progress.add_total(manifest.files.iter().map(|f| f.size).sum());
    Ok(Envelope { manifest, signer, payload_offset: m.payload_offset, payload_size: m.payload_size })
}

/// Step 5 alone, writing nothing: the payload against the manifest.
pub fn walk(path: &Path, envelope: &Envelope, progress: &Progress) -> Result<(usize, u64), BundleError> {
    walk_payload(path, envelope, None, progress)
}

/// Step 5 into `staging` (a fresh, empty directory): the same walk as [`verify`]'s, each
/// directory and file created exclusively as it is read, each file hashed while written and
/// fsynced, then every directory fsynced. On error the caller removes `staging`.
pub fn unpack(
    path: &Path,
    envelope: &Envelope,
    staging: &Path,
    progress: &Progress,
) -> Result<(usize, u64), BundleError> {
    walk_payload(path, envelope, Some(staging), progress)
}

fn check_manifest(manifest: &Manifest, m: &Members, now_ms: i64) -> Result<(), BundleError> {
    let bad = |s: String| Err(BundleError::Manifest(s));
    if manifest.format_version != 1 {
        return bad(format!("formatVersion {} is not supported", manifest.format_version));
    }
    if manifest.payload.file != PAYLOAD
        || manifest.payload.size != m.payload_size
        || manifest.payload.sha256 != m.payload_sha256
    {
        return bad("its payload reference does not match payload.tar.zst".into());
    }
    if !crate::config::valid_name(&manifest.name) || manifest.version.is_empty() || manifest.version.len() > 64 {
        return bad(format!("name {:?} or version {:?} is not valid", manifest.name, manifest.version));
    }
    if let Some(na) = &manifest.not_after {
        let t = time::OffsetDateTime::parse(na, &time::format_description::well_known::Rfc3339)
            .map_err(|e| BundleError::Manifest(format!("notAfter: {e}")))?;
        if now_ms >= (t.unix_timestamp_nanos() / 1_000_000) as i64 {
            return bad(format!("expired at {na}"));
        }
    }
    if manifest.files.len() > FILES_MAX {
        return bad(format!("more than {FILES_MAX} files"));
    }
    let declared: u64 = manifest.files.iter().map(|f| f.size).fold(0, u64::saturating_add);
    if declared > UNPACKED_BYTES_MAX {
        return bad(format!(
            "its files add up to {declared} bytes, more than the {UNPACKED_BYTES_MAX} allowed unpacked"
        ));
    }
    let mut paths = HashSet::new();
    for f in &manifest.files {
        if !valid_path(&f.path) || !paths.insert(f.path.as_str()) {
            return bad(format!("file path {:?} is invalid or listed twice", f.path));
        }
        if !matches!(f.kind.as_str(), "file" | "dir") {
            return bad(format!("{:?} has type {:?}: only file and dir exist", f.path, f.kind));
        }
    }
    let dirs: HashSet<&str> = manifest.files.iter().filter(|f| f.kind == "dir").map(|f| f.path.as_str()).collect();
    if let Some(orphan) =
        manifest.files.iter().find(|f| f.path.rsplit_once('/').is_some_and(|(parent, _)| !dirs.contains(parent)))
    {
        return bad(format!("{:?} is listed without its directory", orphan.path));
    }
    Ok(())
}

/// Streams the payload through a bounded zstd window and a tar reader; every entry must be a
/// regular file or directory listed in the manifest with the same size, mode and digest, and
/// every listed entry must appear. With a `sink`, each entry is also created under it.
///
/// Two stages on two threads, so that decompression overlaps hashing and writing (each is about
/// one core's worth of work): this thread decompresses, parses and checks headers and hands the
/// file bytes over in 256 KiB buffers (at most `BUFFERS` in flight, recycled, so memory is
/// bounded); the other hashes them, writes and fsyncs. The first problem in stream order wins.
fn walk_payload(
    path: &Path,
    e: &Envelope,
    sink: Option<&Path>,
    progress: &Progress,
) -> Result<(usize, u64), BundleError> {
    progress.phase(if sink.is_some() { "unpacking" } else { "walking" });
    const BUFFERS: usize = 8;
    const BUFFER_BYTES: usize = 256 * 1024;
    let pay = |s: String| BundleError::Payload(s);
    let mut file = std::fs::File::open(path).map_err(|e| pay(e.to_string()))?;
    file.seek(SeekFrom::Start(e.payload_offset)).map_err(|e| pay(e.to_string()))?;
    let mut decoder =
        zstd::stream::read::Decoder::new(file.take(e.payload_size)).map_err(|e| pay(format!("zstd: {e}")))?;
    decoder.window_log_max(ZSTD_WINDOW_LOG_MAX).map_err(|e| pay(format!("zstd: {e}")))?;
    let listed: HashMap<&str, &FileEntry> = e.manifest.files.iter().map(|f| (f.path.as_str(), f)).collect();
    let (to_hasher, jobs) = std::sync::mpsc::sync_channel::<Stage>(BUFFERS);
    let (recycle, recycled) = std::sync::mpsc::channel::<Vec<u8>>();
    std::thread::scope(|scope| {
        let hasher = scope.spawn(move || hash_and_write(jobs, recycle));
        let mut allocated = 0;
        let mut next_buffer = || match recycled.try_recv() {
            Ok(b) => Some(b),
            Err(_) if allocated < BUFFERS => {
                allocated += 1;
                Some(vec![0u8; BUFFER_BYTES])
            }
            Err(_) => recycled.recv().ok(),
        };
        let walked = (|| -> Result<(usize, u64, Vec<PathBuf>), BundleError> {
            let mut seen = HashSet::new();
            let mut total = 0u64;
            let mut created_dirs = sink.map(|s| vec![s.to_path_buf()]).unwrap_or_default();
            let mut archive = tar::Archive::new(decoder);
            let stopped = || pay("the hashing stage stopped".into());
            for named in crate::domain::bundles::entries::entries(&mut archive).map_err(pay)? {
                let crate::domain::bundles::entries::Named { name, mut entry } = named.map_err(pay)?;
                if !valid_path(&name) {
                    return Err(pay(format!("entry {name:?} has an unsafe path")));
                }
                let f =
                    listed.get(name.as_str()).ok_or_else(|| pay(format!("entry {name:?} is not in the manifest")))?;
                if !seen.insert(name.clone()) {
                    return Err(pay(format!("entry {name:?} appears twice")));
                }
                let dest = sink.map(|s| s.join(&name));
                match (entry.header().entry_type(), f.kind.as_str()) {
                    (tar::EntryType::Directory, "dir") => {
                        if let Some(dest) = dest {
                            std::fs::create_dir(&dest).map_err(|e| pay(format!("{name}: {e}")))?;
                            created_dirs.push(dest);
                        }
                    }
                    (tar::EntryType::Regular, "file") => {
                        let size = entry.size();
                        total += size;
                        if size != f.size || total > UNPACKED_BYTES_MAX {
                            return Err(pay(format!("entry {name:?} is {size} bytes, the manifest says {}", f.size)));
                        }
                        let mode = entry.header().mode().map_err(|e| pay(e.to_string()))? & 0o777;
                        if mode != f.mode {
                            return Err(pay(format!(
                                "entry {name:?} has mode {mode:o}, the manifest says {:o}",
                                f.mode
                            )));
                        }
                        let out = match &dest {
                            Some(d) => Some(
                                std::fs::OpenOptions::new()
                                    .write(true)
                                    .create_new(true)
                                    .mode(0o600)
                                    .open(d)
                                    .map_err(|e| pay(format!("{name}: {e}")))?,
                            ),
                            None => None,
                        };
                        let start = Pending { name: name.clone(), out, sha256: f.sha256.clone(), mode: f.mode };
                        to_hasher.send(Stage::Start(start)).map_err(|_| stopped())?;
                        let mut left = size;
                        while left > 0 {
                            let mut buf = next_buffer().ok_or_else(stopped)?;
                            let want = left.min(buf.len() as u64) as usize;
                            let n = entry.read(&mut buf[..want]).map_err(|e| pay(format!("{name}: {e}")))?;
                            if n == 0 {
                                return Err(pay(format!("entry {name:?} ends before its {size} bytes")));
                            }
                            left -= n as u64;
                            progress.add(n as u64);
                            to_hasher.send(Stage::Data(buf, n)).map_err(|_| stopped())?;
                        }
                        to_hasher.send(Stage::End).map_err(|_| stopped())?;
                    }
                    (other, _) => {
                        return Err(pay(format!(
                            "entry {name:?} is a {other:?}: only regular files and directories are allowed"
                        )));
                    }
                }
            }
            if let Some(missing) = e.manifest.files.iter().find(|f| !seen.contains(&f.path)) {
                return Err(pay(format!("{:?} is in the manifest but not in the payload", missing.path)));
            }
            Ok((seen.len(), total, created_dirs))
        })();
        drop(to_hasher);
        let hashed = hasher.join().unwrap_or_else(|_| Err(pay("the hashing stage panicked".into())));
        // A file the hasher refused came earlier in the stream than whatever stopped this side.
        hashed?;
        let (n, total, created_dirs) = walked?;
        for d in created_dirs.iter().rev() {
            std::fs::File::open(d).and_then(|d| d.sync_all()).map_err(|e| pay(format!("{}: {e}", d.display())))?;
        }
        Ok((n, total))
    })
}

/// What the walk hands the hashing stage: a file begins (with its destination, if unpacking),
/// some of its bytes, its end.
enum Stage {
    Start(Pending),
    Data(Vec<u8>, usize),
    End,
}

/// A file the hashing stage is working on.
struct Pending {
    name: String,
    out: Option<std::fs::File>,
    sha256: Option<String>,
    mode: u32,
}

/// The second stage: hashes each file's bytes, writes them if unpacking, and at its end checks
/// the digest against the manifest, sets the mode and fsyncs. Buffers go back for reuse.
fn hash_and_write(
    jobs: std::sync::mpsc::Receiver<Stage>,
    recycle: std::sync::mpsc::Sender<Vec<u8>>,
) -> Result<(), BundleError> {
    let pay = |s: String| BundleError::Payload(s);
    let mut current: Option<(Pending, Sha256)> = None;
    for job in jobs {
        match job {
            Stage::Start(p) => current = Some((p, Sha256::new())),
            Stage::Data(buf, n) => {
                let (p, h) = current.as_mut().expect("data follows a start");
                h.update(&buf[..n]);
                if let Some(out) = p.out.as_mut() {
                    out.write_all(&buf[..n]).map_err(|e| pay(format!("{}: {e}", p.name)))?;
                }
                let _ = recycle.send(buf);
            }
            Stage::End => {
                let (p, h) = current.take().expect("an end follows a start");
                if Some(hex::encode(h.finalize())) != p.sha256 {
                    return Err(pay(format!("entry {:?} does not match its sha256 in the manifest", p.name)));
                }
                if let Some(out) = p.out {
                    out.set_permissions(std::fs::Permissions::from_mode(p.mode & 0o555))
                        .and_then(|()| out.sync_all())
                        .map_err(|e| pay(format!("{}: {e}", p.name)))?;
                }
            }
        }
    }
    Ok(())
}

/// The signed small members of an envelope (manifest, SHA256SUMS, signature), kept beside the
/// sealed payload so an installed bundle can be re-verified later.
pub fn signed_members(path: &Path) -> Result<[(&'static str, Vec<u8>); 3], BundleError> {
    let mut m = members(path, &Progress::default())?;
    Ok([
        (MANIFEST, m.small.remove(MANIFEST).unwrap_or_default()),
        (SUMS, m.small.remove(SUMS).unwrap_or_default()),
        (SUMS_SIG, m.small.remove(SUMS_SIG).unwrap_or_default()),
    ])
}

/// Re-verifies an installed bundle: its signature against the trust store *now* (a key revoked
/// since import fails), its manifest digest, and every sealed file against the manifest (a file
/// changed, added or removed on disk fails). Names the first problem.
pub fn reverify_installed(meta: &Path, sealed: &Path, trust: &TrustStore, now_ms: i64) -> Result<(), String> {
    let read = |n: &str| std::fs::read(meta.join(n)).map_err(|e| format!("{n}: {e}"));
    let (manifest_bytes, sums_bytes, sig_bytes) = (read(MANIFEST)?, read(SUMS)?, read(SUMS_SIG)?);
    sig::verify(&String::from_utf8_lossy(&sig_bytes), Namespace::Bundle, &sums_bytes, trust, now_ms)
        .map_err(|e| format!("signature: {e}"))?;
    let sums = parse_sums(&String::from_utf8_lossy(&sums_bytes))?;
    if sums.iter().find(|(n, _)| n == MANIFEST).map(|(_, s)| s.as_str())
        != Some(hex::encode(Sha256::digest(&manifest_bytes)).as_str())
    {
        return Err("manifest.json does not match SHA256SUMS".into());
    }
    let manifest: Manifest = serde_json::from_slice(&manifest_bytes).map_err(|e| format!("manifest: {e}"))?;
    let mut on_disk = HashSet::new();
    let mut stack = vec![sealed.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).map_err(|e| format!("{}: {e}", dir.display()))?.flatten() {
            let p = e.path();
            let rel = p.strip_prefix(sealed).expect("under sealed").to_string_lossy().into_owned();
            let meta = std::fs::symlink_metadata(&p).map_err(|e| e.to_string())?;
            if meta.is_dir() {
                stack.push(p);
            } else if !meta.is_file() {
                return Err(format!("{rel} is not a regular file"));
            }
            on_disk.insert(rel);
        }
    }
    for f in &manifest.files {
        if !on_disk.remove(&f.path) {
            return Err(format!("{} is missing from the sealed copy", f.path));
        }
        if f.kind == "file" {
            let bytes = std::fs::read(sealed.join(&f.path)).map_err(|e| format!("{}: {e}", f.path))?;
            if bytes.len() as u64 != f.size || Some(hex::encode(Sha256::digest(&bytes))) != f.sha256 {
                return Err(format!("{} changed on disk", f.path));
            }
        }
    }
    if let Some(extra) = on_disk.into_iter().next() {
        return Err(format!("{extra} was added to the sealed copy"));
    }
    Ok(())
}
