//! The hash-chained ledger entry (DESIGN.md invariant 2): its fields, its canonical bytes and its
//! hash. `hash = sha256(prev_hash || RFC 8785 canonical JSON of every field but the hash)`.
//!
//! This module owns the chain arithmetic only; it never touches the store. The writer appends
//! entries ([`crate::store::writer`]), `db verify` checks them ([`crate::store::verify`]) and the
//! audit tools will check exported ones with the same [`check_link`].

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The `prev` of the first entry: 32 zero bytes in hex.
pub const GENESIS_PREV: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// What a command wants recorded, before the writer gives it a place in the chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Draft {
    pub tenant: String,
    pub kind: &'static str,
    pub subjects: Vec<String>,
    pub data: serde_json::Value,
}

/// A committed ledger entry, exactly as stored (JSON) and exported (one NDJSON line).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Entry {
    pub seq: u64,
    /// Unix milliseconds from the appliance clock at append.
    pub time: i64,
    pub tenant: String,
    /// Who asked: `token:<id>`, `local:uid=<n>`, or `appliance` for the daemon's own decisions.
    pub actor: String,
    pub kind: String,
    pub subjects: Vec<String>,
    pub data: serde_json::Value,
    pub prev: String,
    pub hash: String,
}

/// The hashed part of an entry: every field but `hash`, in canonical form.
#[derive(Serialize)]
struct Hashed<'a> {
    seq: u64,
    time: i64,
    tenant: &'a str,
    actor: &'a str,
    kind: &'a str,
    subjects: &'a [String],
    data: &'a serde_json::Value,
    prev: &'a str,
}

impl Entry {
    /// Seals a draft as entry `seq` after `prev`, computing its hash.
    pub fn seal(draft: Draft, seq: u64, time: i64, actor: &str, prev: &str) -> Self {
        let mut entry = Entry {
            seq,
            time,
            tenant: draft.tenant,
            actor: actor.to_owned(),
            kind: draft.kind.to_owned(),
            subjects: draft.subjects,
            data: draft.data,
            prev: prev.to_owned(),
            hash: String::new(),
        };
        entry.hash = entry.compute_hash();
        entry
    }

    pub fn compute_hash(&self) -> String {
        let hashed = Hashed {
            seq: self.seq,
            time: self.time,
            tenant: &self.tenant,
            actor: &self.actor,
            kind: &self.kind,
            subjects: &self.subjects,
            data: &self.data,
            prev: &self.prev,
        };
        let canonical =
            serde_json_canonicalizer::to_vec(&hashed).expect("ledger entries are plain JSON and always canonicalize");
        let prev = hex::decode(&self.prev).unwrap_or_default();
        let mut h = Sha256::new();
        h.update(&prev);
        h.update(&canonical);
        hex::encode(h.finalize())
    }

    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("ledger entry serializes")
    }
}

/// Why a chain does not verify at one sequence.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ChainError {
    #[error("ledger entry {seq}: stored bytes do not parse as an entry: {reason}")]
    Unparsable { seq: u64, reason: String },
    #[error("ledger entry {seq}: stored under key {seq} but says it is entry {claimed}")]
    WrongSeq { seq: u64, claimed: u64 },
    #[error("ledger entry {expected} is missing (the next stored entry is {found})")]
    Missing { expected: u64, found: u64 },
    #[error("ledger entry {seq}: prev does not match the hash of entry {}", seq - 1)]
    BrokenLink { seq: u64 },
    #[error("ledger entry {seq}: hash does not match its contents")]
    BadHash { seq: u64 },
}

impl ChainError {
    pub fn seq(&self) -> u64 {
        match self {
            ChainError::Unparsable { seq, .. }
            | ChainError::WrongSeq { seq, .. }
            | ChainError::BrokenLink { seq }
            | ChainError::BadHash { seq } => *seq,
            ChainError::Missing { expected, .. } => *expected,
        }
    }
}

/// The running state of a chain check: feed entries in key order.
#[derive(Debug, Clone)]
pub struct ChainCursor {
    pub next_seq: u64,
    pub prev_hash: String,
}

impl Default for ChainCursor {
    fn default() -> Self {
        Self { next_seq: 1, prev_hash: GENESIS_PREV.to_owned() }
    }
}

impl ChainCursor {
    /// Checks one stored entry (its key and raw bytes) and advances past it.
    pub fn check_raw(&mut self, key: u64, bytes: &[u8]) -> Result<Entry, ChainError> {
        if key != self.next_seq {
            return Err(ChainError::Missing { expected: self.next_seq, found: key });
        }
        let entry: Entry =
            serde_json::from_slice(bytes).map_err(|e| ChainError::Unparsable { seq: key, reason: e.to_string() })?;
        self.check_link(&entry)?;
        Ok(entry)
    }

    /// Checks that `entry` is the next one in this chain and advances past it.
    pub fn check_link(&mut self, entry: &Entry) -> Result<(), ChainError> {
        if entry.seq != self.next_seq {
            return Err(ChainError::WrongSeq { seq: self.next_seq, claimed: entry.seq });
        }
        if entry.prev != self.prev_hash {
            return Err(ChainError::BrokenLink { seq: entry.seq });
        }
        if entry.compute_hash() != entry.hash {
            return Err(ChainError::BadHash { seq: entry.seq });
        }
        self.next_seq += 1;
        self.prev_hash.clone_from(&entry.hash);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn draft(n: u64) -> Draft {
        Draft { tenant: "default".into(), kind: "test.entry", subjects: vec![format!("x{n}")], data: json!({"n": n}) }
    }

    fn chain(n: u64) -> Vec<Entry> {
        let mut prev = GENESIS_PREV.to_owned();
        (1..=n)
            .map(|seq| {
                let e = Entry::seal(draft(seq), seq, 1_000 + seq as i64, "local:uid=0", &prev);
                prev.clone_from(&e.hash);
                e
            })
            .collect()
    }

    #[test]
    fn a_sealed_chain_verifies() {
        let mut cursor = ChainCursor::default();
        for e in chain(5) {
            cursor.check_raw(e.seq, &e.to_json()).unwrap();
        }
        assert_eq!(cursor.next_seq, 6);
    }

    #[test]
    fn any_changed_field_breaks_the_hash_at_that_entry() {
        let mut entries = chain(4);
        entries[2].data = json!({"n": 99});
        let mut cursor = ChainCursor::default();
        let err = entries.iter().try_for_each(|e| cursor.check_link(e)).unwrap_err();
        assert_eq!(err, ChainError::BadHash { seq: 3 });
    }

    #[test]
    fn a_removed_entry_is_named() {
        let entries = chain(4);
        let mut cursor = ChainCursor::default();
        cursor.check_raw(1, &entries[0].to_json()).unwrap();
        let err = cursor.check_raw(3, &entries[2].to_json()).unwrap_err();
        assert_eq!(err, ChainError::Missing { expected: 2, found: 3 });
    }

    #[test]
    fn hash_is_independent_of_json_key_order() {
        let e = &chain(1)[0];
        let reordered = r#"{"hash":"H","prev":"P","data":{"n":1},"subjects":["x1"],"kind":"test.entry","actor":"local:uid=0","tenant":"default","time":1001,"seq":1}"#
            .replace("\"H\"", &format!("{:?}", e.hash))
            .replace("\"P\"", &format!("{:?}", e.prev));
        let parsed: Entry = serde_json::from_str(&reordered).unwrap();
        assert_eq!(parsed.compute_hash(), e.hash);
    }
}
