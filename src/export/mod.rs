//! The offline export pack (DESIGN.md §3): for a time window, `ledger.ndjson` (the ledger
//! entries exactly as stored), and `logs.ndjson`, `metrics.ndjson`, `traces.ndjson` in the
//! OTLP-JSON file format; `manifest.json` (window, counts, per-file line blocks, ledger range
//! and hashes, the previous export's head, appliance id, key fingerprint, tool version);
//! `SHA256SUMS`; `SHA256SUMS.sig` (SSHSIG, export namespace, the appliance key).
//!
//! Everything is streamed (one read transaction, line by line, bounded buffers) into a
//! temporary directory beside the destination, fsynced, then renamed — a crash never leaves a
//! pack that looks whole. A window is a contiguous range of ledger sequences, because entry
//! times never go backwards.

pub mod manifest;
mod traces;

pub use manifest::Manifest;

use crate::domain::appliance::tables::METRIC_SNAPSHOTS;
use crate::kernel::store::LEDGER;
use crate::kernel::store::Store;
use crate::machine::read;
use crate::progress::Progress;
use crate::telemetry::otlp;
use crate::trust::sig::{self, Namespace};
use redb::ReadableTable;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use std::borrow::Cow;
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};

pub const MANIFEST: &str = "manifest.json";
pub const SUMS: &str = "SHA256SUMS";
pub const SUMS_SIG: &str = "SHA256SUMS.sig";
/// A block of this many lines has its own digest in the manifest, so a changed line is located.
pub const BLOCK_LINES: u64 = 1024;
/// Written bytes after which the disk is asked to start writing them back.
const WRITEBACK_BYTES: u64 = 8 << 20;
/// Log records per OTLP request line.
const LOG_BATCH: usize = 512;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    Ledger,
    Logs,
    Metrics,
    Traces,
}

impl Signal {
    pub const ALL: [Signal; 4] = [Signal::Ledger, Signal::Logs, Signal::Metrics, Signal::Traces];

    pub fn file(self) -> &'static str {
        match self {
            Signal::Ledger => "ledger.ndjson",
            Signal::Logs => "logs.ndjson",
            Signal::Metrics => "metrics.ndjson",
            Signal::Traces => "traces.ndjson",
        }
    }

    pub fn name(self) -> &'static str {
        self.file().trim_end_matches(".ndjson")
    }

    /// `ledger,logs,metrics,traces` (any subset, each once).
    pub fn parse_list(list: &str) -> Result<Vec<Signal>, String> {
        let mut out = Vec::new();
        for part in list.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let s = Signal::ALL
                .into_iter()
                .find(|s| s.name() == part)
                .ok_or_else(|| format!("signal {part:?}: expected ledger, logs, metrics or traces"))?;
            if !out.contains(&s) {
                out.push(s);
            }
        }
        if out.is_empty() {
            return Err("no signal selected".into());
        }
        Ok(out)
    }
}

/// What to export and where.
#[derive(Debug, Clone)]
pub struct Request {
    /// Unix ms, inclusive; `None`: where the previous export ended (or the beginning).
    pub from_ms: Option<i64>,
    /// Unix ms, exclusive; `None`: through now (now + 1 ms).
    pub to_ms: Option<i64>,
    /// The pack directory (or tar file) to create; it must not exist.
    pub out: PathBuf,
    pub signals: Vec<Signal>,
    pub tar: bool,
}

/// Where the data and the signing key come from.
pub struct Sources<'a> {
    pub store: &'a Store,
    pub log_dir: &'a Path,
    pub key: &'a ssh_key::PrivateKey,
    pub now_ms: i64,
}

/// One NDJSON file being written: its digest, per-block digests and counts as it grows.
struct Ndjson {
    out: std::io::BufWriter<std::fs::File>,
    sha: Sha256,
    block: Sha256,
    blocks: Vec<String>,
    lines: u64,
    bytes: u64,
    records: u64,
    /// Bytes handed to the disk to write back so far.
    kicked: u64,
    /// Reused for each serialized line.
    buf: Vec<u8>,
}

impl Ndjson {
    fn create(path: &Path) -> std::io::Result<Self> {
        Ok(Ndjson {
            out: std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(path)?),
            sha: Sha256::new(),
            block: Sha256::new(),
            blocks: Vec::new(),
            lines: 0,
            bytes: 0,
            records: 0,
            kicked: 0,
            buf: Vec::with_capacity(64 * 1024),
        })
    }

    fn line(&mut self, bytes: &[u8], records: u64) -> std::io::Result<()> {
        for part in [bytes, b"\n"] {
            self.out.write_all(part)?;
            self.sha.update(part);
            self.block.update(part);
        }
        self.bytes += bytes.len() as u64 + 1;
        if self.bytes - self.kicked >= WRITEBACK_BYTES {
            self.kick_writeback()?;
        }
        self.lines += 1;
        self.records += records;
        if self.lines.is_multiple_of(BLOCK_LINES) {
            self.blocks.push(hex::encode(self.block.finalize_reset()));
        }
        Ok(())
    }

    /// One line: `value` serialized as JSON.
    fn record(&mut self, value: &impl serde::Serialize, records: u64) -> std::io::Result<()> {
        self.render(records, |buf| serde_json::to_writer(buf, value).map_err(std::io::Error::other))
    }

    /// One line, rendered by `render` into a buffer reused from line to line.
    fn render(
        &mut self,
        records: u64,
        render: impl FnOnce(&mut Vec<u8>) -> std::io::Result<()>,
    ) -> std::io::Result<()> {
        let mut buf = std::mem::take(&mut self.buf);
        buf.clear();
        let result = render(&mut buf).and_then(|()| self.line(&buf, records));
        self.buf = buf;
        result
    }

    /// Starts the disk writing what has been written so far, without waiting for it, so the
    /// final fsync finds little left: otherwise a large host caches the whole file, and the
    /// export computes, then waits for the disk, instead of doing both at once.
    fn kick_writeback(&mut self) -> std::io::Result<()> {
        self.out.flush()?;
        #[cfg(target_os = "linux")]
        {
            use std::os::fd::AsRawFd;
            let (from, len) = (self.kicked as libc::off64_t, (self.bytes - self.kicked) as libc::off64_t);
            // SAFETY: a plain syscall on a descriptor this writer owns; no memory is passed.
            // Advisory: if it fails, the final fsync still writes everything.
            let _ = unsafe {
                libc::sync_file_range(self.out.get_ref().as_raw_fd(), from, len, libc::SYNC_FILE_RANGE_WRITE)
            };
        }
        self.kicked = self.bytes;
        Ok(())
    }

    fn finish(mut self) -> std::io::Result<(String, manifest::FileSummary)> {
        if !self.lines.is_multiple_of(BLOCK_LINES) {
            self.blocks.push(hex::encode(self.block.finalize_reset()));
        }
        self.out.flush()?;
        self.out.get_ref().sync_all()?;
        let summary = manifest::FileSummary {
            lines: self.lines,
            records: self.records,
            bytes: self.bytes,
            block_lines: BLOCK_LINES,
            blocks: self.blocks,
        };
        Ok((hex::encode(self.sha.finalize()), summary))
    }
}

/// Why a pack was not written. Nothing is left behind: the staging directory goes.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The request cannot be met as asked: an existing pack, a missing directory, an empty
    /// window.
    #[error("{0}")]
    Refused(String),
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
    #[error("store: {0}")]
    Store(String),
    #[error("signing the pack: {0}")]
    Sign(String),
    #[error("the traces thread panicked")]
    TracesPanicked,
}

fn io(what: &Path) -> impl Fn(std::io::Error) -> Error + '_ {
    move |source| Error::Io { path: what.to_owned(), source }
}

fn store_err(e: impl std::fmt::Display) -> Error {
    Error::Store(e.to_string())
}

/// What the export reads of every entry: located in the canonical stored form, parsed (the
/// rest skipped) from an older one.
#[derive(serde::Deserialize)]
struct EntryHead<'a> {
    time: i64,
    #[serde(borrow)]
    kind: Cow<'a, str>,
    #[serde(borrow)]
    prev: Cow<'a, str>,
    #[serde(borrow)]
    hash: Cow<'a, str>,
}

impl<'a> EntryHead<'a> {
    fn of(bytes: &'a [u8]) -> Result<Self, Error> {
        match crate::kernel::ledger::stored_head(bytes) {
            Some(h) => Ok(EntryHead {
                time: h.time,
                kind: Cow::Borrowed(h.kind),
                prev: Cow::Borrowed(h.prev),
                hash: Cow::Borrowed(h.hash),
            }),
            None => serde_json::from_slice(bytes).map_err(store_err),
        }
    }
}

/// The first sequence whose entry time is at or after `t` (entry times never decrease).
fn first_seq_at(table: &impl ReadableTable<u64, &'static [u8]>, head: u64, t: i64) -> Result<u64, Error> {
    let (mut lo, mut hi) = (1u64, head + 1);
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        let time = match table.get(mid).map_err(store_err)? {
            Some(v) => EntryHead::of(v.value())?.time,
            None => i64::MAX,
        };
        if time < t {
            lo = mid + 1;
        } else {
            hi = mid;
        }
    }
    Ok(lo)
}

/// A pack written: its manifest and the sha256 of its `SHA256SUMS` (what names the pack).
#[derive(Debug, Clone)]
pub struct Written {
    pub manifest: Manifest,
    pub pack_sha256: String,
}

impl Written {
    /// The manifest with `packSha256`, as the API answers it.
    pub fn to_json(&self) -> Value {
        let mut v = serde_json::to_value(&self.manifest).expect("a manifest serializes");
        v["packSha256"] = json!(self.pack_sha256);
        v
    }
}

/// Writes the pack. The caller records it (`export.created`).
pub fn write(src: &Sources, req: &Request, progress: &Progress) -> Result<Written, Error> {
    let out = &req.out;
    if out.exists() {
        return Err(Error::Refused(format!("{} exists: a pack is never overwritten", out.display())));
    }
    let parent = out.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    if !parent.is_dir() {
        return Err(Error::Refused(format!("{} is not a directory", parent.display())));
    }
    let txn = src.store.read().map_err(store_err)?;
    let appliance_id = read::appliance_id(&txn).map_err(store_err)?.unwrap_or_default();
    let previous = read::last_export(&txn).map_err(store_err)?;
    let from_ms = req.from_ms.or_else(|| previous.as_ref().and_then(|p| p["window"]["toMs"].as_i64())).unwrap_or(0);
    // Through now: what was recorded in this very millisecond (the export's own metric
    // snapshot, taken just before) is in the pack.
    let to_ms = req.to_ms.unwrap_or(src.now_ms + 1);
    if to_ms <= from_ms {
        return Err(Error::Refused(format!("the window is empty: --to ({to_ms}) must be after --from ({from_ms})")));
    }
    let name = out.file_name().unwrap_or_default().to_string_lossy().into_owned();
    let staging = parent.join(format!(".{name}.tmp-{}", crate::ids::random_hex(4)));
    std::fs::create_dir(&staging).map_err(io(&staging))?;
    let pack = Pack {
        src,
        req,
        txn: &txn,
        dir: &staging,
        resource: otlp::resource(&appliance_id),
        appliance_id: &appliance_id,
        previous: previous.as_ref(),
        from_ms,
        to_ms,
        progress,
    };
    let result = pack.write_files().and_then(|written| seal(&staging, out, req.tar).map(|()| written));
    let _ = std::fs::remove_dir_all(&staging);
    result
}

/// One pack being written into its staging directory `dir`, from one read transaction.
struct Pack<'a> {
    src: &'a Sources<'a>,
    req: &'a Request,
    txn: &'a redb::ReadTransaction,
    dir: &'a Path,
    resource: otlp::Resource,
    appliance_id: &'a str,
    previous: Option<&'a Value>,
    from_ms: i64,
    to_ms: i64,
    progress: &'a Progress,
}

/// The pack's files, one per signal asked for.
struct Sinks {
    ledger: Option<Ndjson>,
    logs: Option<Ndjson>,
    metrics: Option<Ndjson>,
    traces: Option<Ndjson>,
}

impl Pack<'_> {
    fn write_files(&self) -> Result<Written, Error> {
        let open = |s: Signal| -> Result<Option<Ndjson>, Error> {
            let path = self.dir.join(s.file());
            self.req.signals.contains(&s).then(|| Ndjson::create(&path).map_err(io(&path))).transpose()
        };
        let mut sinks = Sinks {
            ledger: open(Signal::Ledger)?,
            logs: open(Signal::Logs)?,
            metrics: open(Signal::Metrics)?,
            traces: open(Signal::Traces)?,
        };
        self.progress.phase("exporting");
        let range = self.stream(&mut sinks)?;
        self.sign(sinks, range)
    }

    /// The ledger window, read once. Traces are built from it on a second thread, fed the
    /// entries that matter to them in batches, while this one writes the ledger, the metrics
    /// and the logs.
    fn stream(&self, sinks: &mut Sinks) -> Result<manifest::LedgerRange, Error> {
        std::thread::scope(|scope| {
            let (to_traces, batches) = std::sync::mpsc::sync_channel::<TraceBatch>(4);
            let traces_thread = sinks.traces.take().map(|t| scope.spawn(move || self.build_traces(t, batches)));
            let to_traces = traces_thread.is_some().then_some(to_traces);
            let range = self.ledger_pass(sinks.ledger.as_mut(), to_traces);
            let rest = range.and_then(|range| {
                self.write_metrics(sinks.metrics.as_mut())?;
                self.write_logs(sinks.logs.as_mut())?;
                Ok(range)
            });
            if let Some(thread) = traces_thread {
                sinks.traces = Some(thread.join().map_err(|_| Error::TracesPanicked)??);
            }
            rest
        })
    }

    /// Builds the traces from the batches of relevant entries and writes each run's as it ends.
    fn build_traces(&self, mut t: Ndjson, batches: std::sync::mpsc::Receiver<TraceBatch>) -> Result<Ndjson, Error> {
        let path = self.dir.join(Signal::Traces.file());
        let mut builder = traces::Builder::new(self.txn);
        let mut finished: Vec<Vec<otlp::Span>> = Vec::new();
        let write = |t: &mut Ndjson, finished: &mut Vec<Vec<otlp::Span>>| -> Result<(), Error> {
            for spans in finished.drain(..) {
                t.render(spans.len() as u64, |buf| {
                    otlp::write_traces_request(buf, &self.resource, &spans);
                    Ok(())
                })
                .map_err(io(&path))?;
            }
            Ok(())
        };
        for batch in batches {
            for entry in batch.entries() {
                let entry = traces::TraceEntry::of(entry).map_err(store_err)?;
                builder.feed(&entry, &mut |spans| finished.push(spans));
                write(&mut t, &mut finished)?;
            }
        }
        builder.finish(&mut |spans| finished.push(spans));
        write(&mut t, &mut finished)?;
        Ok(t)
    }

    /// Copies the window's entries as stored into `ledger` and sends those the traces need to
    /// `to_traces`. Only the head of an entry (time, kind, prev, hash) is read here.
    fn ledger_pass(
        &self,
        mut ledger: Option<&mut Ndjson>,
        to_traces: Option<std::sync::mpsc::SyncSender<TraceBatch>>,
    ) -> Result<manifest::LedgerRange, Error> {
        let mut range = manifest::LedgerRange::default();
        if ledger.is_none() && to_traces.is_none() {
            return Ok(range);
        }
        let table = self.txn.open_table(LEDGER).map_err(store_err)?;
        let head = read::ledger_head(self.txn).map_err(store_err)?.0;
        let first = first_seq_at(&table, head, self.from_ms)?;
        let ledger_path = self.dir.join(Signal::Ledger.file());
        let (mut first_prev, mut last_hash) = (String::new(), String::new());
        let (mut count, mut last_seq) = (0u64, 0);
        let mut batch = TraceBatch::default();
        for row in table.range(first..).map_err(store_err)? {
            let (k, v) = row.map_err(store_err)?;
            let h = EntryHead::of(v.value())?;
            if h.time >= self.to_ms {
                break;
            }
            if count == 0 {
                first_prev = h.prev.into_owned();
            }
            count += 1;
            last_seq = k.value();
            if let Some(l) = ledger.as_mut() {
                l.line(v.value(), 1).map_err(io(&ledger_path))?;
            }
            if let Some(to) = to_traces.as_ref().filter(|_| traces::relevant(&h.kind)) {
                batch.push(v.value());
                if batch.bytes.len() >= TraceBatch::BYTES && to.send(std::mem::take(&mut batch)).is_err() {
                    break; // the traces thread stopped: its error is reported by the caller
                }
            }
            last_hash = h.hash.into_owned();
            self.progress.add(v.value().len() as u64);
        }
        if let Some(to) = to_traces.filter(|_| !batch.ends.is_empty()) {
            let _ = to.send(batch);
        }
        range.count = count;
        if count > 0 {
            range.first_seq = Some(first);
            range.first_prev = Some(first_prev);
            range.last_seq = Some(last_seq);
            range.last_hash = Some(last_hash);
        }
        Ok(range)
    }

    /// The manifest, `SHA256SUMS` over every file, and its signature by the appliance key.
    fn sign(&self, sinks: Sinks, range: manifest::LedgerRange) -> Result<Written, Error> {
        let dir = self.dir;
        let mut files = std::collections::BTreeMap::new();
        let mut sums: Vec<(String, String)> = Vec::new();
        for (signal, sink) in [
            (Signal::Ledger, sinks.ledger),
            (Signal::Logs, sinks.logs),
            (Signal::Metrics, sinks.metrics),
            (Signal::Traces, sinks.traces),
        ] {
            if let Some(sink) = sink {
                let (sha, summary) = sink.finish().map_err(io(&dir.join(signal.file())))?;
                files.insert(signal.file().to_owned(), summary);
                sums.push((signal.file().to_owned(), sha));
            }
        }
        let manifest = self.manifest(range, files);
        let manifest_bytes = serde_json_canonicalizer::to_vec(&manifest).map_err(|e| Error::Sign(e.to_string()))?;
        crate::fsutil::write_file_atomic(&dir.join(MANIFEST), &manifest_bytes, 0o644)
            .map_err(io(&dir.join(MANIFEST)))?;
        sums.push((MANIFEST.to_owned(), hex::encode(Sha256::digest(&manifest_bytes))));
        sums.sort();
        let sums_text: String = sums.iter().map(|(n, s)| format!("{s}  {n}\n")).collect();
        crate::fsutil::write_file_atomic(&dir.join(SUMS), sums_text.as_bytes(), 0o644).map_err(io(&dir.join(SUMS)))?;
        let signature = sig::sign(self.src.key, Namespace::Export, sums_text.as_bytes()).map_err(Error::Sign)?;
        crate::fsutil::write_file_atomic(&dir.join(SUMS_SIG), signature.as_bytes(), 0o644)
            .map_err(io(&dir.join(SUMS_SIG)))?;
        Ok(Written { manifest, pack_sha256: hex::encode(Sha256::digest(sums_text.as_bytes())) })
    }

    fn manifest(
        &self,
        range: manifest::LedgerRange,
        files: std::collections::BTreeMap<String, manifest::FileSummary>,
    ) -> Manifest {
        let (from_ms, to_ms) = (self.from_ms, self.to_ms);
        Manifest {
            format_version: manifest::FORMAT_VERSION,
            appliance_id: self.appliance_id.to_owned(),
            key_fingerprint: self.src.key.public_key().fingerprint(ssh_key::HashAlg::Sha256).to_string(),
            tool_version: env!("CARGO_PKG_VERSION").to_owned(),
            created_at: crate::clock::rfc3339(self.src.now_ms),
            window: manifest::Window {
                from_ms,
                to_ms,
                from: crate::clock::rfc3339(from_ms),
                to: crate::clock::rfc3339(to_ms),
            },
            signals: self.req.signals.iter().map(|s| s.name().to_owned()).collect(),
            ledger: range,
            previous: self.previous.map(|p| manifest::Previous {
                last_seq: p["ledger"]["lastSeq"].as_u64(),
                last_hash: p["ledger"]["lastHash"].as_str().map(str::to_owned),
                to_ms: p["window"]["toMs"].as_i64(),
            }),
            files,
        }
    }

    /// The metric snapshots of the window.
    fn write_metrics(&self, metrics: Option<&mut Ndjson>) -> Result<(), Error> {
        let Some(m) = metrics else { return Ok(()) };
        let path = self.dir.join(Signal::Metrics.file());
        let snapshots = self.txn.open_table(METRIC_SNAPSHOTS).map_err(store_err)?;
        let window = self.from_ms.max(0) as u64..self.to_ms.max(0) as u64;
        for row in snapshots.range(window).map_err(store_err)? {
            let (k, v) = row.map_err(store_err)?;
            let request = otlp::metrics_request(&self.resource, k.value() as i64, &String::from_utf8_lossy(v.value()));
            let n = request["resourceMetrics"][0]["scopeMetrics"][0]["metrics"].as_array().map_or(0, Vec::len);
            m.record(&request, n as u64).map_err(io(&path))?;
            self.progress.add(v.value().len() as u64);
        }
        Ok(())
    }

    /// The log records of the window, redacted again on the way out.
    fn write_logs(&self, logs: Option<&mut Ndjson>) -> Result<(), Error> {
        let Some(l) = logs else { return Ok(()) };
        let mut batch = Vec::with_capacity(LOG_BATCH);
        let path = self.dir.join(Signal::Logs.file());
        let flush = |batch: &mut Vec<otlp::LogRecord>, l: &mut Ndjson| -> Result<(), Error> {
            if !batch.is_empty() {
                l.record(&otlp::logs_request(&self.resource, batch), batch.len() as u64).map_err(io(&path))?;
                batch.clear();
            }
            Ok(())
        };
        let mut line = String::new();
        let files = crate::telemetry::logs::files(self.src.log_dir);
        for file in files.into_iter().filter(|f| crate::telemetry::logs::may_hold(f, self.from_ms, self.to_ms)) {
            let mut reader = std::io::BufReader::with_capacity(1 << 20, std::fs::File::open(&file).map_err(io(&file))?);
            loop {
                line.clear();
                if reader.read_line(&mut line).map_err(io(&file))? == 0 {
                    break;
                }
                self.progress.add(line.len() as u64);
                // Redacted again on the way out: a value set as a secret after it was logged.
                let redacted = crate::telemetry::logs::redact(line.trim_end_matches('\n'));
                let Some((ms, record)) = otlp::log_record(&redacted) else { continue };
                if ms >= self.from_ms && ms < self.to_ms {
                    batch.push(record);
                    if batch.len() == LOG_BATCH {
                        flush(&mut batch, l)?;
                    }
                }
            }
        }
        flush(&mut batch, l)
    }
}

/// Ledger entries on their way to the traces thread: one buffer and where each entry ends, so
/// a batch costs two allocations rather than one per entry.
#[derive(Default)]
struct TraceBatch {
    bytes: Vec<u8>,
    ends: Vec<usize>,
}

impl TraceBatch {
    const BYTES: usize = 256 * 1024;

    fn push(&mut self, entry: &[u8]) {
        self.bytes.extend_from_slice(entry);
        self.ends.push(self.bytes.len());
    }

    fn entries(&self) -> impl Iterator<Item = &[u8]> {
        let starts = std::iter::once(0).chain(self.ends.iter().copied());
        starts.zip(self.ends.iter().copied()).map(|(a, b)| &self.bytes[a..b])
    }
}

/// Moves the finished files into place: the directory renamed to `out`, or a tar of it written
/// to `out` atomically (members: the signed small files first, then the NDJSON files).
fn seal(staging: &Path, out: &Path, tar: bool) -> Result<(), Error> {
    std::fs::File::open(staging).and_then(|d| d.sync_all()).map_err(io(staging))?;
    if !tar {
        std::fs::rename(staging, out).map_err(io(out))?;
    } else {
        let mut names: Vec<String> = std::fs::read_dir(staging)
            .map_err(io(staging))?
            .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
            .collect();
        names.sort_by_key(|n| (n.ends_with(".ndjson"), n.clone()));
        crate::fsutil::write_atomic_with(out, 0o644, |f| {
            let mut t = tar::Builder::new(std::io::BufWriter::with_capacity(1 << 20, f));
            for n in &names {
                let path = staging.join(n);
                let file = std::fs::File::open(&path)?;
                let mut h = tar::Header::new_ustar();
                h.set_size(file.metadata()?.len());
                h.set_mode(0o644);
                h.set_mtime(0);
                h.set_path(n)?;
                h.set_cksum();
                t.append(&h, std::io::BufReader::new(file))?;
            }
            t.into_inner()?.flush()
        })
        .map_err(io(out))?;
    }
    let parent = out.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::File::open(parent).and_then(|d| d.sync_all()).map_err(io(parent))
}
