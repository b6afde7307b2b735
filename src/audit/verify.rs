//! `stella audit verify PACK`: the full offline check of an export pack (a directory or its
//! tar), with nothing but the pack and an `allowed_signers` file. In order: only the pack's own
//! file names; the signature over `SHA256SUMS` (export namespace); every file listed, none
//! unlisted; `manifest.json`'s digest; then each NDJSON file streamed once — its digest, its
//! per-block digests, its line count, every line's shape, and for `ledger.ndjson` the hash
//! chain line by line against the manifest's first and last sequence and hash. The first thing
//! wrong is named with its file and, where it can be, its line and sequence.

use crate::export::{BLOCK_LINES, MANIFEST, SUMS, SUMS_SIG, Signal};
use crate::kernel::ledger::{ChainCursor, ChainError, Link};
use crate::trust::sig::{self, Namespace};
use crate::trust::store::TrustStore;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use std::io::BufRead;
use std::path::{Path, PathBuf};

/// A pack file at most (a tar pack is unpacked into a temporary directory).
const PACK_BYTES_MAX: u64 = 256 * 1024 * 1024 * 1024;
/// `SHA256SUMS`, its signature and the manifest at most.
const SMALL_BYTES_MAX: u64 = 16 * 1024 * 1024;

fn allowed(name: &str) -> bool {
    [MANIFEST, SUMS, SUMS_SIG].contains(&name) || Signal::ALL.iter().any(|s| s.file() == name)
}

/// The pack's files on disk: the directory itself, or a temporary copy of a tar's members
/// (removed on drop).
pub struct PackDir {
    pub path: PathBuf,
    temporary: bool,
}

impl Drop for PackDir {
    fn drop(&mut self) {
        if self.temporary {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

/// A verified pack: the report and its files.
pub struct Verified {
    pub report: Value,
    pub manifest: crate::export::Manifest,
    pub dir: PackDir,
}

fn open(pack: &Path) -> Result<PackDir, String> {
    let meta = std::fs::metadata(pack).map_err(|e| e.to_string())?;
    if meta.is_dir() {
        return Ok(PackDir { path: pack.to_path_buf(), temporary: false });
    }
    if meta.len() > PACK_BYTES_MAX {
        return Err(format!("{} bytes is larger than a pack may be", meta.len()));
    }
    let dir = std::env::temp_dir().join(format!("stella-audit-{}", crate::ids::random_hex(8)));
    std::fs::create_dir(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let unpacked = PackDir { path: dir.clone(), temporary: true };
    let mut archive = tar::Archive::new(std::fs::File::open(pack).map_err(|e| e.to_string())?);
    for named in crate::domain::bundles::entries::entries(&mut archive)? {
        let crate::domain::bundles::entries::Named { name, mut entry } = named?;
        if !allowed(&name) || entry.header().entry_type() != tar::EntryType::Regular {
            return Err(format!("unexpected {name:?} in the pack: a pack holds only its own files"));
        }
        let mut out = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(dir.join(&name))
            .map_err(|e| format!("{name}: {e} (is it in the tar twice?)"))?;
        std::io::copy(&mut entry, &mut out).map_err(|e| format!("{name}: {e}"))?;
    }
    Ok(unpacked)
}

fn read_small(dir: &Path, name: &str) -> Result<Vec<u8>, String> {
    let path = dir.join(name);
    let len = std::fs::metadata(&path).map_err(|_| format!("{name} is missing"))?.len();
    if len > SMALL_BYTES_MAX {
        return Err(format!("{name} is larger than {SMALL_BYTES_MAX} bytes"));
    }
    std::fs::read(&path).map_err(|e| format!("{name}: {e}"))
}

pub fn verify(pack: &Path, trust: &TrustStore, now_ms: i64) -> Result<Value, String> {
    verify_pack(pack, trust, now_ms).map(|v| v.report)
}

pub fn verify_pack(pack: &Path, trust: &TrustStore, now_ms: i64) -> Result<Verified, String> {
    let dir = open(pack)?;
    let mut present = Vec::new();
    for e in std::fs::read_dir(&dir.path).map_err(|e| e.to_string())? {
        let e = e.map_err(|e| e.to_string())?;
        let name = e.file_name().to_string_lossy().into_owned();
        if !allowed(&name) || !e.file_type().map_err(|e| e.to_string())?.is_file() {
            return Err(format!("unexpected {name:?} in the pack: a pack holds only its own files"));
        }
        present.push(name);
    }
    let sums_bytes = read_small(&dir.path, SUMS)?;
    let sig_text = String::from_utf8_lossy(&read_small(&dir.path, SUMS_SIG)?).into_owned();
    let signer = sig::verify(&sig_text, Namespace::Export, &sums_bytes, trust, now_ms)
        .map_err(|e| format!("{SUMS_SIG}: {e}"))?;
    let mut listed: Vec<(String, String)> = Vec::new();
    for (i, line) in String::from_utf8_lossy(&sums_bytes).lines().enumerate() {
        let (sha, name) =
            line.split_once("  ").ok_or_else(|| format!("{SUMS} line {}: expected '<sha256>  <name>'", i + 1))?;
        let hex = sha.len() == 64 && sha.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase());
        if !hex || !allowed(name) || [SUMS, SUMS_SIG].contains(&name) || listed.iter().any(|(n, _)| n == name) {
            return Err(format!("{SUMS} line {}: {line:?} is not a digest of a pack file (or repeats one)", i + 1));
        }
        listed.push((name.to_owned(), sha.to_owned()));
    }
    if let Some(extra) =
        present.iter().find(|n| ![SUMS, SUMS_SIG].contains(&n.as_str()) && !listed.iter().any(|(l, _)| l == *n))
    {
        return Err(format!("{extra} is not listed in {SUMS}: it was added after the pack was signed"));
    }
    if let Some((missing, _)) = listed.iter().find(|(n, _)| !present.contains(n)) {
        return Err(format!("{missing} is listed in {SUMS} but missing from the pack"));
    }
    let sha_of = |n: &str| listed.iter().find(|(l, _)| l == n).map(|(_, s)| s.as_str());
    let manifest_bytes = read_small(&dir.path, MANIFEST)?;
    if sha_of(MANIFEST) != Some(hex::encode(Sha256::digest(&manifest_bytes)).as_str()) {
        return Err(format!("{MANIFEST}: its digest does not match {SUMS}"));
    }
    let manifest = crate::export::Manifest::parse(&manifest_bytes).map_err(|e| format!("{MANIFEST}: {e}"))?;
    let mut checks = Vec::new();
    for signal in Signal::ALL {
        let name = signal.file();
        match (sha_of(name), manifest.files.get(name)) {
            (Some(sha), Some(summary)) => checks.push((signal, sha, summary)),
            (None, None) => {}
            _ => return Err(format!("{name}: {SUMS} and {MANIFEST} disagree on whether it is in the pack")),
        }
    }
    // The files are checked side by side (each is read once, on its own thread); the first
    // problem is reported in the files' fixed order, so the verdict never depends on timing.
    let results: Vec<Result<(), String>> = std::thread::scope(|scope| {
        let handles: Vec<_> = checks
            .iter()
            .map(|&(signal, sha, summary)| {
                let (path, range) = (&dir.path, &manifest.ledger);
                scope.spawn(move || check_file(path, signal, sha, summary, range))
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap_or_else(|_| Err("a file check panicked".into()))).collect()
    });
    results.into_iter().collect::<Result<(), String>>()?;
    let report = json!({ "ok": true, "signer": signer.principal, "fingerprint": signer.fingerprint,
                         "files": listed.len(), "manifest": manifest });
    Ok(Verified { report, manifest, dir })
}

/// What a line of an OTLP file must be: a JSON object whose request member is an array. The
/// rest is checked as JSON and skipped, never built.
#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct OtlpShape {
    resource_logs: Option<Vec<serde::de::IgnoredAny>>,
    resource_metrics: Option<Vec<serde::de::IgnoredAny>>,
    resource_spans: Option<Vec<serde::de::IgnoredAny>>,
}

/// Streams one NDJSON file once: digest, block digests, lines, shapes, and the ledger's chain.
fn check_file(
    dir: &Path,
    signal: Signal,
    sha: &str,
    summary: &crate::export::manifest::FileSummary,
    range: &crate::export::manifest::LedgerRange,
) -> Result<(), String> {
    let name = signal.file();
    let file = std::fs::File::open(dir.join(name)).map_err(|e| format!("{name}: {e}"))?;
    let mut reader = std::io::BufReader::with_capacity(1 << 20, file);
    let (mut whole, mut block) = (Sha256::new(), Sha256::new());
    let mut blocks = Vec::new();
    let mut lines = 0u64;
    let mut first_problem: Option<String> = None;
    let first_prev = range.first_prev.as_deref().unwrap_or_default();
    let mut cursor = Link::parse(first_prev).map(|l| ChainCursor::new(range.first_seq.unwrap_or(1), l));
    let mut buf = Vec::new();
    loop {
        buf.clear();
        let n = reader.read_until(b'\n', &mut buf).map_err(|e| format!("{name}: {e}"))?;
        if n == 0 {
            break;
        }
        whole.update(&buf);
        block.update(&buf);
        lines += 1;
        if lines.is_multiple_of(BLOCK_LINES) {
            blocks.push(hex::encode(block.finalize_reset()));
        }
        if first_problem.is_some() {
            continue;
        }
        let line = buf.strip_suffix(b"\n").unwrap_or(&buf);
        let problem = match signal {
            Signal::Ledger => match cursor.as_mut() {
                Some(cursor) => check_entry(cursor, line).err(),
                None => Some(format!("the manifest's ledger firstPrev {first_prev:?} is not a sha256")),
            },
            _ => {
                let (key, ok) = match (signal, serde_json::from_slice::<OtlpShape>(line)) {
                    (Signal::Logs, r) => ("resourceLogs", r.is_ok_and(|r| r.resource_logs.is_some())),
                    (Signal::Metrics, r) => ("resourceMetrics", r.is_ok_and(|r| r.resource_metrics.is_some())),
                    (_, r) => ("resourceSpans", r.is_ok_and(|r| r.resource_spans.is_some())),
                };
                (!ok).then(|| format!("not an OTLP request with {key}"))
            }
        };
        first_problem = problem.map(|p| format!("line {lines}: {p}"));
    }
    if !lines.is_multiple_of(BLOCK_LINES) {
        blocks.push(hex::encode(block.finalize_reset()));
    }
    let signed_blocks: Vec<&str> = summary.blocks.iter().map(String::as_str).collect();
    if hex::encode(whole.finalize()) != sha {
        let detail = first_problem.clone().or_else(|| {
            let at = blocks
                .iter()
                .zip(&signed_blocks)
                .position(|(a, b)| a != b)
                .unwrap_or(blocks.len().min(signed_blocks.len()));
            Some(format!(
                "lines {}-{} differ from the signed block digests ({} lines, the manifest says {})",
                at as u64 * BLOCK_LINES + 1,
                (at as u64 + 1) * BLOCK_LINES,
                lines,
                summary.lines
            ))
        });
        return Err(format!("{name}: its digest does not match {SUMS}; {}", detail.unwrap_or_default()));
    }
    if let Some(p) = first_problem {
        return Err(format!("{name}: {p}"));
    }
    if lines != summary.lines {
        return Err(format!("{name}: {lines} lines, the manifest says {}", summary.lines));
    }
    if signal == Signal::Ledger {
        let (last_seq, last_hash) = match cursor.filter(|_| lines > 0) {
            Some(c) => (json!(c.next_seq - 1), json!(c.prev_hash())),
            None => (Value::Null, Value::Null),
        };
        if range.count != lines || json!(range.last_seq) != last_seq || json!(range.last_hash) != last_hash {
            return Err(format!(
                "{name}: ends at seq {last_seq} with {lines} entries, the manifest says seq {} with {}",
                json!(range.last_seq),
                range.count
            ));
        }
    }
    Ok(())
}

/// One ledger line, checked as the next entry of `cursor`'s chain; the problem in the words
/// of a pack (sequences and lines rather than store keys).
fn check_entry(cursor: &mut ChainCursor, line: &[u8]) -> Result<(), String> {
    cursor.check_next(line).map_err(|e| match e {
        ChainError::WrongSeq { seq, claimed } => {
            let why = if claimed > seq { format!("entry {seq} is missing") } else { "out of order or repeated".into() };
            format!("expected seq {seq}, found seq {claimed} ({why})")
        }
        ChainError::BrokenLink { seq } => format!("seq {seq}: prev does not match the hash of seq {}", seq - 1),
        ChainError::BadHash { seq } => format!("seq {seq}: hash does not match its contents"),
        ChainError::Unparsable { reason, .. } => format!("not a ledger entry ({reason})"),
        other => other.to_string(),
    })
}
