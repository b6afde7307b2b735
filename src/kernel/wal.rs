//! The ledger as the write-ahead log (DESIGN.md invariant 2).
//!
//! A batch that appends entries is acknowledged once its sealed entries are in the log file
//! beside the store (`<store>-wal`) and `fdatasync`ed; its redb transaction is then committed
//! without a sync (`Durability::None`), so the projections and the ledger table become visible
//! only after the entries are on disk. Every [`CHECKPOINT_INTERVAL`], or when the log is half
//! full, a batch is committed with `Durability::Immediate` instead: a checkpoint, which makes
//! every earlier commit durable in redb and starts a new *epoch* of the log (stored in `meta`
//! in the same transaction), so the log is written again from its start.
//!
//! Opening the store for writing replays the log: redb comes back at its last durable commit
//! after a crash, and every record of the current epoch past the ledger's head is appended
//! and applied again through [`Machine::apply`] (the same function that built the projections
//! the first time), with the hash chain checked entry by entry. Then a checkpoint starts the
//! next epoch.
//!
//! The file is written full of zeros when created, so that a record overwrites blocks the
//! file already has: the `fdatasync` then flushes data only, never the file's size or extent
//! map. A record is `magic | epoch | first seq | count | payload length | digest | payload`,
//! the payload being each entry's stored form behind its length; the digest (SHA-256 of
//! everything but the magic, truncated to 16 bytes) makes a torn or stale record end the
//! replay, never reach the store.

use crate::kernel::ledger::{ChainCursor, Link};
use crate::kernel::plan::Machine;
use crate::kernel::store::{LEDGER, META, Store, StoreError, read};
use redb::{Database, Durability, ReadableDatabase, ReadableTable};
use sha2::{Digest, Sha256};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The log file's size: written once, then overwritten from the start at each checkpoint.
pub const WAL_BYTES: u64 = 8 * 1024 * 1024;
/// A checkpoint at least this often while entries are being appended.
pub const CHECKPOINT_INTERVAL: Duration = Duration::from_secs(1);
/// The `meta` key holding the log's current epoch.
pub const EPOCH_KEY: &str = "wal_epoch";

const MAGIC: [u8; 4] = *b"SWL1";
/// magic 4, epoch 8, first seq 8, count 4, payload length 4, digest 16.
const HEADER: usize = 44;

/// Where the log of the store at `store` lives.
pub fn path_for(store: &Path) -> PathBuf {
    let mut name = store.file_name().map(|n| n.to_os_string()).unwrap_or_default();
    name.push("-wal");
    store.with_file_name(name)
}

/// A batch's entries, encoded as they are appended to the ledger table.
#[derive(Debug, Default)]
pub struct RecordBuf {
    first_seq: u64,
    count: u32,
    payload: Vec<u8>,
}

impl RecordBuf {
    pub fn clear(&mut self) {
        self.first_seq = 0;
        self.count = 0;
        self.payload.clear();
    }

    pub fn push(&mut self, seq: u64, stored: &[u8]) {
        if self.count == 0 {
            self.first_seq = seq;
        }
        self.count += 1;
        self.payload.extend_from_slice(&(stored.len() as u32).to_le_bytes());
        self.payload.extend_from_slice(stored);
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// The bytes the record takes in the log.
    pub fn len(&self) -> usize {
        HEADER + self.payload.len()
    }

    fn encode(&self, epoch: u64) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.len());
        out.extend_from_slice(&MAGIC);
        out.extend_from_slice(&epoch.to_le_bytes());
        out.extend_from_slice(&self.first_seq.to_le_bytes());
        out.extend_from_slice(&self.count.to_le_bytes());
        out.extend_from_slice(&(self.payload.len() as u32).to_le_bytes());
        let digest = digest(&out[4..28], &self.payload);
        out.extend_from_slice(&digest);
        out.extend_from_slice(&self.payload);
        out
    }
}

fn digest(fields: &[u8], payload: &[u8]) -> [u8; 16] {
    let mut h = Sha256::new();
    h.update(fields);
    h.update(payload);
    let full = h.finalize();
    let mut out = [0u8; 16];
    out.copy_from_slice(&full[..16]);
    out
}

/// One valid record read back: its first sequence and its entries' stored forms.
#[derive(Debug)]
pub struct Record<'a> {
    pub first_seq: u64,
    pub entries: Vec<&'a [u8]>,
}

/// The records of `epoch` from the start of `bytes`, up to the first that is torn, stale (of
/// another epoch) or absent (zeros).
pub fn records(bytes: &[u8], epoch: u64) -> Vec<Record<'_>> {
    records_and_end(bytes, epoch).0
}

/// [`records`], and the offset where they end.
fn records_and_end(bytes: &[u8], epoch: u64) -> (Vec<Record<'_>>, usize) {
    let mut out = Vec::new();
    let mut at = 0usize;
    while let Some((record, len)) = record_at(bytes, at, epoch) {
        out.push(record);
        at += len;
    }
    (out, at)
}

/// A whole record of `epoch` somewhere after `from`, if there is one. An epoch's records are
/// written one after the other from the start, and a record a crash cut off is the last one
/// written: a whole one after the end of the readable ones means a record before it was
/// damaged after it was synced.
pub fn record_after(bytes: &[u8], from: usize, epoch: u64) -> Option<usize> {
    let mut at = from + 1;
    while at + HEADER <= bytes.len() {
        let next = bytes[at..].windows(MAGIC.len()).position(|w| w == MAGIC)?;
        at += next;
        if record_at(bytes, at, epoch).is_some() {
            return Some(at);
        }
        at += 1;
    }
    None
}

fn record_at(bytes: &[u8], at: usize, epoch: u64) -> Option<(Record<'_>, usize)> {
    let header = bytes.get(at..at.checked_add(HEADER)?)?;
    if header[..4] != MAGIC || u64::from_le_bytes(header[4..12].try_into().ok()?) != epoch {
        return None;
    }
    let first_seq = u64::from_le_bytes(header[12..20].try_into().ok()?);
    let count = u32::from_le_bytes(header[20..24].try_into().ok()?);
    let len = u32::from_le_bytes(header[24..28].try_into().ok()?) as usize;
    let payload = bytes.get(at + HEADER..(at + HEADER).checked_add(len)?)?;
    if digest(&header[4..28], payload) != header[28..44] {
        return None;
    }
    let mut entries = Vec::with_capacity(count as usize);
    let mut p = 0usize;
    for _ in 0..count {
        let n = u32::from_le_bytes(payload.get(p..p + 4)?.try_into().ok()?) as usize;
        entries.push(payload.get(p + 4..(p + 4).checked_add(n)?)?);
        p += 4 + n;
    }
    (p == len).then_some((Record { first_seq, entries }, HEADER + len))
}

/// The writer's side of the log: where the next record goes, in which epoch.
#[derive(Debug)]
pub struct Wal {
    file: File,
    path: PathBuf,
    epoch: u64,
    offset: u64,
    since: Instant,
    /// Where a record was written whose batch then failed to commit: it must not be
    /// replayed. Cleared by [`Wal::unwrite`].
    pending: Option<u64>,
}

impl Wal {
    /// Opens (creating, full of zeros) the log of `store` for the epoch `epoch`, which the
    /// last checkpoint started: records go from the start of the file.
    pub fn open(store: &Path, epoch: u64) -> std::io::Result<Self> {
        let path = path_for(store);
        let file = prepare(&path)?;
        Ok(Wal { file, path, epoch, offset: 0, since: Instant::now(), pending: None })
    }

    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether `record` is better committed as a checkpoint: it does not fit in the rest of
    /// the log, the log is half full, or the last checkpoint is older than the interval.
    pub fn checkpoint_due(&self, record: &RecordBuf) -> bool {
        self.offset + record.len() as u64 > WAL_BYTES
            || self.offset >= WAL_BYTES / 2
            || (self.offset > 0 && self.since.elapsed() >= CHECKPOINT_INTERVAL)
    }

    /// Appends `record` and syncs it: once this returns, the batch is durable.
    pub fn append(&mut self, record: &RecordBuf) -> std::io::Result<()> {
        let bytes = record.encode(self.epoch);
        if self.offset == 0 {
            // The interval runs from the first record a checkpoint has not covered.
            self.since = Instant::now();
        }
        self.pending = Some(self.offset);
        self.file.write_all_at(&bytes, self.offset)?;
        self.file.sync_data()?;
        self.offset += bytes.len() as u64;
        Ok(())
    }

    /// The batch whose record was appended last committed: it is no longer pending.
    pub fn committed(&mut self) {
        self.pending = None;
    }

    /// A batch failed after its record was appended (or while appending it): the record's
    /// header is zeroed and synced, so that no replay finds it, and the next record goes in
    /// its place. On an error the caller must keep the store from taking writes until
    /// [`Wal::unwrite`] succeeds.
    pub fn unwrite(&mut self) -> std::io::Result<()> {
        let Some(at) = self.pending else { return Ok(()) };
        self.file.write_all_at(&[0u8; HEADER], at)?;
        self.file.sync_data()?;
        self.offset = at;
        self.pending = None;
        Ok(())
    }

    /// How long an idle writer may wait before it checkpoints: `None` while the log holds no
    /// record since the last checkpoint.
    pub fn checkpoint_wait(&self) -> Option<Duration> {
        (self.offset > 0).then(|| CHECKPOINT_INTERVAL.saturating_sub(self.since.elapsed()))
    }

    /// A checkpoint could not be made: the next try waits another interval.
    pub fn postpone(&mut self) {
        self.since = Instant::now();
    }

    pub fn has_unwritten(&self) -> bool {
        self.pending.is_some()
    }

    /// A checkpoint committed the epoch `epoch`: the log starts again.
    pub fn checkpointed(&mut self, epoch: u64) {
        self.epoch = epoch;
        self.offset = 0;
        self.since = Instant::now();
        self.pending = None;
    }
}

/// Opens the log, creating it at its full size (zeros, synced with its directory) when it is
/// absent or short.
fn prepare(path: &Path) -> std::io::Result<File> {
    let file = std::fs::OpenOptions::new().read(true).write(true).create(true).truncate(false).open(path)?;
    let len = file.metadata()?.len();
    if len < WAL_BYTES {
        let zeros = vec![0u8; 1024 * 1024];
        let mut at = len;
        while at < WAL_BYTES {
            let n = (WAL_BYTES - at).min(zeros.len() as u64) as usize;
            file.write_all_at(&zeros[..n], at)?;
            at += n as u64;
        }
        file.sync_all()?;
        if let Some(dir) = path.parent() {
            File::open(dir)?.sync_all()?;
        }
    }
    Ok(file)
}

/// Opens the store at `path` (creating it if absent) with a page cache of at most
/// `cache_bytes` (waiting up to `wait` for another process to let go of it), and replays its
/// log into it: what the store holds is then everything that was acknowledged.
pub fn open<M: Machine>(path: &Path, cache_bytes: usize, wait: std::time::Duration) -> Result<Store, StoreError> {
    let store = Store::open_waiting::<M>(path, cache_bytes, wait)?;
    replay::<M>(&*store.db()?, path)?;
    Ok(store)
}

/// Makes `txn` a checkpoint's: it starts the log's epoch `epoch` (commit it durably).
pub fn start_epoch(txn: &redb::WriteTransaction, epoch: u64) -> Result<(), redb::Error> {
    txn.open_table(META)?.insert(EPOCH_KEY, epoch)?;
    Ok(())
}

/// What a replay did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Replayed {
    /// Entries appended from the log (those past the store's durable head).
    pub entries: u64,
    /// The epoch the closing checkpoint started.
    pub epoch: u64,
}

/// Appends and applies the log's entries past the ledger's head, then checkpoints (a durable
/// commit starting the next epoch). Run whenever the store is opened for writing.
pub fn replay<M: Machine>(db: &Database, store: &Path) -> Result<Replayed, StoreError> {
    let err = |e: redb::Error| StoreError::Redb { path: store.to_owned(), source: e };
    let wal_path = path_for(store);
    let bytes = match std::fs::read(&wal_path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => {
            return Err(StoreError::Unavailable {
                path: store.to_owned(),
                reason: format!("its write-ahead log {} cannot be read: {e}", wal_path.display()),
            });
        }
    };
    let mut txn = db.begin_write().map_err(|e| err(e.into()))?;
    txn.set_durability(Durability::Immediate).map_err(|e| err(e.into()))?;
    let epoch = {
        let meta = txn.open_table(META).map_err(|e| err(e.into()))?;
        meta.get(EPOCH_KEY).map_err(|e| err(e.into()))?.map_or(0, |v| v.value())
    };
    let (head, head_hash) = {
        let t = db.begin_read().map_err(|e| err(e.into()))?;
        read::ledger_head(&t)?
    };
    let damaged = |detail: String| StoreError::Damaged {
        path: store.to_owned(),
        detail: format!(
            "its write-ahead log {} does not continue its ledger: {detail} (the log may belong to another copy of the store; see the operator guide, \"A crash\")",
            wal_path.display()
        ),
    };
    let mut cursor = ChainCursor::new(
        head + 1,
        Link::parse(&head_hash).ok_or_else(|| damaged("the ledger's head has no valid hash".into()))?,
    );
    let mut appended = 0u64;
    let (readable, end) = records_and_end(&bytes, epoch);
    if let Some(at) = record_after(&bytes, end, epoch) {
        return Err(damaged(format!(
            "the record at byte {end} cannot be read, yet a whole record of the same epoch follows at byte {at}: \
             the log was damaged after it was synced, and the entries from byte {end} on would be lost"
        )));
    }
    {
        let mut ledger = txn.open_table(LEDGER).map_err(|e| err(e.into()))?;
        let tx = crate::kernel::tx::Tx::store(&txn);
        for record in readable {
            for (i, stored) in record.entries.iter().enumerate() {
                let seq = record.first_seq + i as u64;
                if seq <= head {
                    continue;
                }
                cursor.check_stored(seq, stored).map_err(|e| damaged(format!("entry {seq}: {e}")))?;
                let entry = serde_json::from_slice(stored).map_err(|e| damaged(format!("entry {seq}: {e}")))?;
                ledger.insert(seq, *stored).map_err(|e| err(e.into()))?;
                M::apply(&tx, &entry).map_err(|e| match e {
                    // The disk, not the log: the replay is tried again at the next open.
                    crate::kernel::plan::ApplyError::Storage(e) => err(e),
                    e => damaged(format!("applying entry {seq}: {e}")),
                })?;
                appended += 1;
            }
        }
    }
    start_epoch(&txn, epoch + 1).map_err(err)?;
    txn.commit().map_err(|e| err(e.into()))?;
    if appended > 0 {
        tracing::warn!(
            entries = appended,
            head = head + appended,
            log = %wal_path.display(),
            "entries acknowledged after the store's last checkpoint were replayed from its write-ahead log (the store was not closed cleanly, or a commit failed)"
        );
    }
    Ok(Replayed { entries: appended, epoch: epoch + 1 })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn buf(first: u64, entries: &[&[u8]]) -> RecordBuf {
        let mut b = RecordBuf::default();
        for (i, e) in entries.iter().enumerate() {
            b.push(first + i as u64, e);
        }
        b
    }

    /// A power loss can cut the log anywhere in the record being written, or leave any bytes
    /// there: only whole records of the epoch are read back, in order, never a part of one.
    #[test]
    fn a_torn_or_stale_tail_ends_the_records_at_the_last_whole_one() {
        let a = buf(1, &[b"{\"a\":1}", b"{\"b\":2}"]).encode(7);
        let b = buf(3, &[b"{\"c\":3}"]).encode(7);
        let stale = buf(4, &[b"{\"d\":4}"]).encode(6);
        let mut log = [a.clone(), b.clone(), stale].concat();
        log.resize(log.len() + 100, 0);
        let got = records(&log, 7);
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].first_seq, 1);
        assert_eq!(got[0].entries, vec![&b"{\"a\":1}"[..], b"{\"b\":2}"]);
        assert_eq!(got[1].entries, vec![&b"{\"c\":3}"[..]]);
        let whole = a.len() + b.len();
        for cut in 0..whole {
            let n = records(&log[..cut], 7).len();
            let expect = usize::from(cut >= a.len());
            assert_eq!(n, expect, "cut at {cut}");
            // Any byte of the second record changed (a torn write) drops that record only.
            let mut torn = log.clone();
            if cut >= a.len() {
                torn[cut] ^= 0x5a;
                assert_eq!(records(&torn, 7).len(), 1, "byte {cut} changed");
            }
        }
        assert!(records(&log, 8).is_empty(), "another epoch's records are not this one's");
    }

    /// A record damaged in the middle of the log (a later one of the same epoch is whole) is
    /// found; a torn last record is not mistaken for it.
    #[test]
    fn a_damaged_record_before_a_whole_one_is_found() {
        let a = buf(1, &[b"{\"a\":1}"]).encode(7);
        let b = buf(2, &[b"{\"b\":2}"]).encode(7);
        let c = buf(3, &[b"{\"c\":3}"]).encode(7);
        let mut log = [a.clone(), b.clone(), c.clone()].concat();
        log.resize(log.len() + 200, 0);
        let (got, end) = records_and_end(&log, 7);
        assert_eq!((got.len(), end), (3, a.len() + b.len() + c.len()));
        assert_eq!(record_after(&log, end, 7), None, "nothing after the last record");
        let mut torn = log.clone();
        torn[a.len() + b.len() + c.len() - 3] ^= 1;
        let (got, end) = records_and_end(&torn, 7);
        assert_eq!(got.len(), 2);
        assert_eq!(record_after(&torn, end, 7), None, "a torn last record hides nothing");
        let mut damaged = log.clone();
        damaged[a.len() + 50] ^= 1;
        let (got, end) = records_and_end(&damaged, 7);
        assert_eq!((got.len(), end), (1, a.len()));
        assert_eq!(record_after(&damaged, end, 7), Some(a.len() + b.len()), "the whole record after the damaged one");
        assert_eq!(record_after(&damaged, end, 8), None, "another epoch's records do not count");
    }

    #[test]
    fn an_unwritten_record_is_not_read_back_and_the_next_takes_its_place() {
        let dir = tempfile::tempdir().unwrap();
        let store = dir.path().join("s.redb");
        let mut wal = Wal::open(&store, 3).unwrap();
        assert_eq!(std::fs::metadata(wal.path()).unwrap().len(), WAL_BYTES);
        wal.append(&buf(1, &[b"one"])).unwrap();
        wal.committed();
        wal.append(&buf(2, &[b"two-that-failed"])).unwrap();
        wal.unwrite().unwrap();
        let bytes = std::fs::read(wal.path()).unwrap();
        assert_eq!(records(&bytes, 3).len(), 1);
        wal.append(&buf(2, &[b"two"])).unwrap();
        let bytes = std::fs::read(wal.path()).unwrap();
        let got = records(&bytes, 3);
        assert_eq!(got.iter().map(|r| r.first_seq).collect::<Vec<_>>(), vec![1, 2]);
        assert_eq!(got[1].entries, vec![&b"two"[..]]);
    }
}
