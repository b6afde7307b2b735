//! The auditor's side, on a machine that never saw the appliance: `verify` checks one pack
//! offline; the audit store (a local redb file) takes verified packs in and checks that each
//! continues the ledger it holds — a gap (a pack missing), an overlap (identical entries are
//! accepted, the new tail kept) or a fork (a rewritten or truncated history) is named with its
//! sequences — and reads the imported ledger back (`each`, `packs`); `cli::audit` renders it
//! for `audit runs|ledger|report`.

pub mod verify;

use crate::kernel::ledger::Entry;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde_json::{Value, json};
use std::io::BufRead;
use std::path::Path;

const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
const LEDGER: TableDefinition<u64, &[u8]> = TableDefinition::new("ledger");
const PACKS: TableDefinition<u64, &[u8]> = TableDefinition::new("packs");

pub struct AuditStore {
    db: Database,
}

fn e(err: impl std::fmt::Display) -> String {
    format!("audit store: {err}")
}

/// Where the imported ledger ends.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Head {
    appliance: String,
    seq: u64,
    hash: String,
}

impl AuditStore {
    pub fn open(path: &Path) -> Result<Self, String> {
        let db = Database::create(path).map_err(|err| format!("{}: {err}", path.display()))?;
        let txn = db.begin_write().map_err(e)?;
        txn.open_table(META).map_err(e)?;
        txn.open_table(LEDGER).map_err(e)?;
        txn.open_table(PACKS).map_err(e)?;
        txn.commit().map_err(e)?;
        Ok(AuditStore { db })
    }

    fn head(&self) -> Result<Option<Head>, String> {
        let txn = self.db.begin_read().map_err(e)?;
        let meta = txn.open_table(META).map_err(e)?;
        let get = |k: &str| -> Result<Option<String>, String> {
            Ok(meta.get(k).map_err(e)?.map(|v| String::from_utf8_lossy(v.value()).into_owned()))
        };
        let Some(appliance) = get("appliance")? else { return Ok(None) };
        let seq = get("headSeq")?.and_then(|s| s.parse().ok()).unwrap_or(0);
        Ok(Some(Head { appliance, seq, hash: get("headHash")?.unwrap_or_default() }))
    }

    fn stored_hash(&self, seq: u64) -> Result<Option<String>, String> {
        let txn = self.db.begin_read().map_err(e)?;
        let t = txn.open_table(LEDGER).map_err(e)?;
        Ok(t.get(seq).map_err(e)?.and_then(|v| serde_json::from_slice::<Entry>(v.value()).ok()).map(|entry| entry.hash))
    }

    /// Imports one verified pack: checks how it continues the imported ledger, then stores its
    /// new entries and the pack's record in one transaction. Returns what was found.
    pub fn import(&self, pack: &Path, v: &verify::Verified) -> Result<Value, String> {
        let m = &v.manifest;
        let appliance = m.appliance_id.clone();
        let range = &m.ledger;
        let (first, last) = (range.first_seq, range.last_seq);
        let head = self.head()?;
        let mut notes = Vec::new();
        if let Some(h) = &head {
            if h.appliance != appliance {
                return Err(format!("the pack is from appliance {appliance}; this audit store holds {}", h.appliance));
            }
            let previous = m.previous.as_ref();
            if let Some(prev_seq) = previous.and_then(|p| p.last_seq) {
                let prev_hash = previous.and_then(|p| p.last_hash.as_deref());
                match self.stored_hash(prev_seq)? {
                    Some(hash) if prev_hash != Some(hash.as_str()) => {
                        return Err(format!(
                            "fork: the appliance says its previous export ended at seq {prev_seq} with hash {}, the imported seq {prev_seq} has hash {hash}",
                            json!(prev_hash)
                        ));
                    }
                    None if prev_seq > h.seq => notes.push(format!(
                        "the appliance exported up to seq {prev_seq} before this pack; the audit store ends at seq {}",
                        h.seq
                    )),
                    _ => {}
                }
            }
        }
        let (Some(first), Some(last)) = (first, last) else {
            notes.push("the pack holds no ledger entries".into());
            return self.record(pack, v, head.map_or(0, |h| h.seq), &appliance, notes, None);
        };
        let first_prev = range.first_prev.as_deref().unwrap_or_default();
        let keep_after = match &head {
            None => {
                if first > 1 {
                    notes.push(format!("first pack: history before seq {first} is not in this audit store"));
                }
                first - 1
            }
            Some(h) if first == h.seq + 1 => {
                if first_prev != h.hash {
                    return Err(format!(
                        "fork: the pack's first entry (seq {first}) follows a seq {} with hash {first_prev}, but the imported seq {} has hash {} (a rewritten or truncated history)",
                        h.seq, h.seq, h.hash
                    ));
                }
                notes.push(format!("links to seq {}", h.seq));
                h.seq
            }
            Some(h) if first > h.seq + 1 => {
                return Err(format!(
                    "gap: seq {}..{} are in no imported pack (the pack starts at seq {first}; a pack is missing or the ledger was truncated)",
                    h.seq + 1,
                    first - 1
                ));
            }
            Some(h) => {
                // The overlapping entries are compared with the imported ones while recording.
                let upto = last.min(h.seq);
                notes.push(format!("overlaps seq {first}..{upto}, identical; new entries from seq {}", upto + 1));
                h.seq
            }
        };
        self.record(pack, v, keep_after, &appliance, notes, Some(last))
    }

    fn record(
        &self,
        pack: &Path,
        v: &verify::Verified,
        keep_after: u64,
        appliance: &str,
        notes: Vec<String>,
        last: Option<u64>,
    ) -> Result<Value, String> {
        let txn = self.db.begin_write().map_err(e)?;
        let mut added = 0u64;
        {
            let mut ledger = txn.open_table(LEDGER).map_err(e)?;
            let mut meta = txn.open_table(META).map_err(e)?;
            if last.is_some() {
                // One pass: entries the store holds already must be the same (else the import
                // is dropped as a fork), the rest are added.
                let file = std::fs::File::open(v.dir.path.join(crate::export::Signal::Ledger.file()))
                    .map_err(|err| err.to_string())?;
                let mut head: Option<(u64, String)> = None;
                for line in std::io::BufReader::new(file).lines() {
                    let line = line.map_err(|err| err.to_string())?;
                    let entry: Entry = serde_json::from_str(&line).map_err(|err| err.to_string())?;
                    if entry.seq <= keep_after {
                        let stored = ledger.get(entry.seq).map_err(e)?;
                        let same = stored
                            .and_then(|s| serde_json::from_slice::<Entry>(s.value()).ok())
                            .is_some_and(|s| s.hash == entry.hash);
                        if !same {
                            return Err(format!(
                                "fork at seq {}: the pack's entry differs from the imported one",
                                entry.seq
                            ));
                        }
                    } else {
                        ledger.insert(entry.seq, line.as_bytes()).map_err(e)?;
                        added += 1;
                        head = Some((entry.seq, entry.hash));
                    }
                }
                if let Some((seq, hash)) = head {
                    meta.insert("headSeq", seq.to_string().as_bytes()).map_err(e)?;
                    meta.insert("headHash", hash.as_bytes()).map_err(e)?;
                }
            }
            meta.insert("appliance", appliance.as_bytes()).map_err(e)?;
            let mut packs = txn.open_table(PACKS).map_err(e)?;
            let n = packs.last().map_err(e)?.map_or(0, |(k, _)| k.value()) + 1;
            let rec = json!({ "pack": pack, "window": v.manifest.window, "ledger": v.manifest.ledger,
                              "signer": v.report["signer"], "fingerprint": v.report["fingerprint"], "notes": notes,
                              "added": added, "importedAt": crate::clock::rfc3339(crate::clock::SystemClock.now()) });
            packs.insert(n, rec.to_string().as_bytes()).map_err(e)?;
        }
        txn.commit().map_err(e)?;
        Ok(json!({ "pack": pack, "ledger": v.manifest.ledger, "added": added, "notes": notes }))
    }

    /// Visits the imported entries in sequence order, one at a time, until `f` says stop.
    pub fn each(&self, mut f: impl FnMut(Entry) -> bool) -> Result<(), String> {
        let txn = self.db.begin_read().map_err(e)?;
        let t = txn.open_table(LEDGER).map_err(e)?;
        for row in t.iter().map_err(e)? {
            let (_, v) = row.map_err(e)?;
            if !f(serde_json::from_slice(v.value()).map_err(e)?) {
                break;
            }
        }
        Ok(())
    }

    pub fn packs(&self) -> Result<Vec<Value>, String> {
        let txn = self.db.begin_read().map_err(e)?;
        let t = txn.open_table(PACKS).map_err(e)?;
        let mut out = Vec::new();
        for row in t.iter().map_err(e)? {
            out.push(serde_json::from_slice(row.map_err(e)?.1.value()).map_err(e)?);
        }
        Ok(out)
    }
}
