//! What a projection writes through: [`Tx`], one command's view of the tables, the [`Record`]s
//! it keeps there and how applying an entry fails ([`ApplyError`]). In the writer (and the
//! log's replay and the rebuild) it is the batch's redb write transaction, each table opened
//! once; in `db verify` it is a [`Replica`], hash maps in memory that keep each record as the
//! value the projection put (encoded to its stored bytes only when the tables are compared), so
//! a replay pays neither redb's page copies nor a JSON decode and encode per row it touches.
//!
//! Indexes that `db verify` does not compare (the due and ready indexes, live leases) are
//! write-only here: a projection arms and disarms them but never reads them, and the replica
//! does not keep them.

use crate::kernel::ledger::Entry;
use redb::{ReadableTable, TableDefinition, TableHandle, WriteTransaction};
use serde::{Deserialize, Serialize};
use std::any::Any;
use std::borrow::Borrow;
use std::cell::RefCell;
use std::collections::HashMap;

/// JSON encode/decode shared by every record type.
pub trait Record: Serialize + for<'de> Deserialize<'de> {
    fn to_json_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("store record serializes")
    }
    fn from_json_bytes(bytes: &[u8]) -> Result<Self, serde_json::Error> {
        serde_json::from_slice(bytes)
    }
}

/// An entry the projection cannot apply: a bug, or a ledger that was not written by stella.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ApplyError {
    #[error("ledger entry {seq} ({kind}): {reason}")]
    Entry { seq: u64, kind: String, reason: String },
    #[error("store: {0}")]
    Storage(#[from] redb::Error),
    #[error("store record: {0}")]
    Record(String),
}

impl ApplyError {
    /// The entry cannot be applied, for `reason`.
    pub fn entry(entry: &Entry, reason: impl std::fmt::Display) -> Self {
        ApplyError::Entry { seq: entry.seq, kind: entry.kind.clone(), reason: reason.to_string() }
    }
}

/// A redb failure inside apply.
pub fn redb(e: impl Into<redb::Error>) -> ApplyError {
    ApplyError::Storage(e.into())
}

/// A projection table: key → record bytes.
pub type Def = TableDefinition<'static, &'static str, &'static [u8]>;

/// A projection table opened in a write transaction.
type Table<'a> = redb::Table<'a, &'static str, &'static [u8]>;

/// One command's view of the tables, for the projection of its entries.
pub struct Tx<'a>(Inner<'a>);

enum Inner<'a> {
    Store(Opened<'a>),
    Replica(&'a Replica),
}

/// A write transaction and the projection tables opened in it so far: a table is opened once
/// for all the entries of a command (opening one was a tenth of the writer's time), and
/// closed when the `Tx` is dropped, before anything else opens it.
struct Opened<'a> {
    txn: &'a WriteTransaction,
    tables: RefCell<Vec<(Def, Table<'a>)>>,
}

impl<'a> Opened<'a> {
    fn with<T>(
        &self,
        def: Def,
        f: impl FnOnce(&mut Table<'a>) -> Result<T, redb::StorageError>,
    ) -> Result<T, ApplyError> {
        let mut tables = self.tables.borrow_mut();
        let i = match tables.iter().position(|(d, _)| d.name() == def.name()) {
            Some(i) => i,
            None => {
                let table = self.txn.open_table(def).map_err(redb)?;
                tables.push((def, table));
                tables.len() - 1
            }
        };
        f(&mut tables[i].1).map_err(redb)
    }
}

fn record_error(table: &str, key: &str, e: serde_json::Error) -> ApplyError {
    ApplyError::Record(format!("{table}/{key}: {e}"))
}

impl<'a> Tx<'a> {
    /// The tables of a write transaction.
    pub fn store(txn: &'a WriteTransaction) -> Self {
        Tx(Inner::Store(Opened { txn, tables: RefCell::new(Vec::new()) }))
    }

    /// The tables of a replica.
    pub fn replica(replica: &'a Replica) -> Self {
        Tx(Inner::Replica(replica))
    }

    /// The record at `key`, if any.
    pub fn get<R: Record + Clone + 'static>(&self, def: Def, key: &str) -> Result<Option<R>, ApplyError> {
        match &self.0 {
            Inner::Store(o) => {
                let Some(raw) = o.with(def, |t| Ok(t.get(key)?.map(|v| v.value().to_vec())))? else {
                    return Ok(None);
                };
                R::from_json_bytes(&raw).map(Some).map_err(|e| record_error(def.name(), key, e))
            }
            Inner::Replica(r) => r.get(def.name(), key),
        }
    }

    /// The record at `key`, for a projection that puts it back (or removes it) before it is
    /// done: the replica hands its copy over rather than cloning it, and until then holds an
    /// empty placeholder that `db verify` would report as differing.
    pub fn take<R: Record + Clone + 'static>(&self, def: Def, key: &str) -> Result<Option<R>, ApplyError> {
        match &self.0 {
            Inner::Store(_) => self.get(def, key),
            Inner::Replica(r) => r.take(def.name(), key),
        }
    }

    /// Writes `record` at `key`.
    pub fn put<R: Record + 'static>(&self, def: Def, key: &str, record: R) -> Result<(), ApplyError> {
        match &self.0 {
            Inner::Store(o) => {
                let bytes = record.to_json_bytes();
                o.with(def, |t| t.insert(key, bytes.as_slice()).map(|_| ()))?;
            }
            Inner::Replica(r) => r.set(def.name(), key, Slot::Typed(Box::new(record))),
        }
        Ok(())
    }

    /// The bytes at `key`, if any.
    pub fn get_bytes(&self, def: Def, key: &str) -> Result<Option<Vec<u8>>, ApplyError> {
        match &self.0 {
            Inner::Store(o) => o.with(def, |t| Ok(t.get(key)?.map(|v| v.value().to_vec()))),
            Inner::Replica(r) => Ok(r.tables.borrow().get(def.name()).and_then(|t| t.get(key)).map(Slot::bytes)),
        }
    }

    /// Writes `bytes` at `key`.
    pub fn put_bytes(&self, def: Def, key: &str, bytes: &[u8]) -> Result<(), ApplyError> {
        match &self.0 {
            Inner::Store(o) => o.with(def, |t| t.insert(key, bytes).map(|_| ()))?,
            Inner::Replica(r) => r.set(def.name(), key, Slot::Bytes(bytes.to_vec())),
        }
        Ok(())
    }

    /// Removes `key` (nothing if it is absent).
    pub fn remove(&self, def: Def, key: &str) -> Result<(), ApplyError> {
        match &self.0 {
            Inner::Store(o) => o.with(def, |t| t.remove(key).map(|_| ()))?,
            Inner::Replica(r) => {
                if let Some(t) = r.tables.borrow_mut().get_mut(def.name()) {
                    t.remove(key);
                }
            }
        }
        Ok(())
    }

    /// Every record of `def`, in key order.
    pub fn all<R: Record + Clone + 'static>(&self, def: Def) -> Result<Vec<(String, R)>, ApplyError> {
        self.records(def, "", None)
    }

    /// The records with keys from `from` (inclusive) to `to` (exclusive; `None`: the end), in
    /// key order.
    pub fn records<R: Record + Clone + 'static>(
        &self,
        def: Def,
        from: &str,
        to: Option<&str>,
    ) -> Result<Vec<(String, R)>, ApplyError> {
        use std::ops::Bound::{Excluded, Included, Unbounded};
        let upper = to.map_or(Unbounded, Excluded);
        match &self.0 {
            Inner::Store(o) => {
                let rows = o.with(def, |t| {
                    let mut rows = Vec::new();
                    for row in t.range::<&str>((Included(from), upper))? {
                        let (k, v) = row?;
                        rows.push((k.value().to_owned(), v.value().to_vec()));
                    }
                    Ok(rows)
                })?;
                rows.into_iter()
                    .map(|(k, v)| {
                        let rec = R::from_json_bytes(&v).map_err(|e| record_error(def.name(), &k, e))?;
                        Ok((k, rec))
                    })
                    .collect()
            }
            Inner::Replica(r) => {
                let within = |k: &str| k >= from && to.is_none_or(|to| k < to);
                let mut keys: Vec<String> = match r.tables.borrow().get(def.name()) {
                    Some(t) => t.keys().filter(|k| within(k)).cloned().collect(),
                    None => Vec::new(),
                };
                keys.sort_unstable();
                let mut out = Vec::with_capacity(keys.len());
                for k in keys {
                    let rec = r.get(def.name(), &k)?.expect("the key was just listed");
                    out.push((k, rec));
                }
                Ok(out)
            }
        }
    }

    /// Counter `name` of `def` (a big-endian u64; 0 when never set).
    pub fn counter(&self, def: Def, name: &str) -> Result<u64, ApplyError> {
        Ok(self.get_bytes(def, name)?.map_or(0, |v| counter_value(&v)))
    }

    /// Sets counter `name` of `def` to `value`.
    pub fn set_counter(&self, def: Def, name: &str, value: u64) -> Result<(), ApplyError> {
        self.put_bytes(def, name, &value.to_be_bytes())
    }

    /// Inserts into an index `db verify` does not compare (the replica does not keep it).
    pub fn index_insert<'k, 'v, K: redb::Key + 'static, V: redb::Value + 'static>(
        &self,
        def: TableDefinition<'static, K, V>,
        key: impl Borrow<K::SelfType<'k>>,
        value: impl Borrow<V::SelfType<'v>>,
    ) -> Result<(), ApplyError> {
        if let Inner::Store(o) = &self.0 {
            o.txn.open_table(def).map_err(redb)?.insert(key, value).map_err(redb)?;
        }
        Ok(())
    }

    /// Removes from an index `db verify` does not compare.
    pub fn index_remove<'k, K: redb::Key + 'static, V: redb::Value + 'static>(
        &self,
        def: TableDefinition<'static, K, V>,
        key: impl Borrow<K::SelfType<'k>>,
    ) -> Result<(), ApplyError> {
        if let Inner::Store(o) = &self.0 {
            o.txn.open_table(def).map_err(redb)?.remove(key).map_err(redb)?;
        }
        Ok(())
    }
}

/// A counter's stored bytes (big-endian u64) as its value; 0 for anything else.
pub fn counter_value(bytes: &[u8]) -> u64 {
    <[u8; 8]>::try_from(bytes).map_or(0, u64::from_be_bytes)
}

/// A record as the replica keeps it: the value a projection put, or bytes.
enum Slot {
    Bytes(Vec<u8>),
    Typed(Box<dyn Kept>),
}

impl Slot {
    fn bytes(&self) -> Vec<u8> {
        match self {
            Slot::Bytes(b) => b.clone(),
            Slot::Typed(t) => t.encode(),
        }
    }
}

/// A record of any type, encoded to its stored bytes on demand.
trait Kept: Any {
    fn encode(&self) -> Vec<u8>;
    fn as_any(&self) -> &dyn Any;
    fn into_any(self: Box<Self>) -> Box<dyn Any>;
}

impl<R: Record + 'static> Kept for R {
    fn encode(&self) -> Vec<u8> {
        self.to_json_bytes()
    }
    fn as_any(&self) -> &dyn Any {
        self
    }
    fn into_any(self: Box<Self>) -> Box<dyn Any> {
        self
    }
}

/// The projection tables of a replay, in memory: table → key → record. Read in key order
/// (as redb orders `&str` keys, by bytes) when a table is compared with its stored twin.
#[derive(Default)]
pub struct Replica {
    tables: RefCell<HashMap<String, HashMap<String, Slot>>>,
}

impl Replica {
    fn set(&self, table: &str, key: &str, slot: Slot) {
        let mut tables = self.tables.borrow_mut();
        let t = match tables.get_mut(table) {
            Some(t) => t,
            None => tables.entry(table.to_owned()).or_default(),
        };
        match t.get_mut(key) {
            Some(s) => *s = slot,
            None => {
                t.insert(key.to_owned(), slot);
            }
        }
    }

    fn get<R: Record + Clone + 'static>(&self, table: &str, key: &str) -> Result<Option<R>, ApplyError> {
        let mut tables = self.tables.borrow_mut();
        let Some(slot) = tables.get_mut(table).and_then(|t| t.get_mut(key)) else { return Ok(None) };
        if let Slot::Typed(t) = slot
            && let Some(rec) = t.as_any().downcast_ref::<R>()
        {
            return Ok(Some(rec.clone()));
        }
        // Bytes, or a record put as another type: read it as this one, and keep that.
        let rec = R::from_json_bytes(&slot.bytes()).map_err(|e| record_error(table, key, e))?;
        *slot = Slot::Typed(Box::new(rec.clone()));
        Ok(Some(rec))
    }

    fn take<R: Record + Clone + 'static>(&self, table: &str, key: &str) -> Result<Option<R>, ApplyError> {
        let mut tables = self.tables.borrow_mut();
        let Some(slot) = tables.get_mut(table).and_then(|t| t.get_mut(key)) else { return Ok(None) };
        match std::mem::replace(slot, Slot::Bytes(Vec::new())) {
            Slot::Typed(t) if t.as_any().is::<R>() => {
                Ok(Some(*t.into_any().downcast::<R>().expect("checked to be an R")))
            }
            other => {
                let rec = R::from_json_bytes(&other.bytes()).map_err(|e| record_error(table, key, e));
                *slot = other;
                rec.map(Some)
            }
        }
    }

    /// Every row of `table` in key order, as stored bytes.
    #[cfg(test)]
    fn rows(&self, table: &str) -> Vec<(String, Vec<u8>)> {
        let mut rows = Vec::new();
        self.each(table, |k, v| {
            rows.push((k.to_owned(), v.to_vec()));
            true
        });
        rows
    }

    /// Visits every row of `table` in key order with its stored bytes, until `visit` says stop.
    pub fn each(&self, table: &str, mut visit: impl FnMut(&str, &[u8]) -> bool) {
        if let Some(t) = self.tables.borrow().get(table) {
            let mut rows: Vec<(&String, &Slot)> = t.iter().collect();
            rows.sort_unstable_by(|a, b| a.0.cmp(b.0));
            for (k, s) in rows {
                let go = match s {
                    Slot::Bytes(b) => visit(k, b),
                    Slot::Typed(r) => visit(k, &r.encode()),
                };
                if !go {
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::{Deserialize, Serialize};

    const T: Def = TableDefinition::new("t");

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    struct Rec {
        n: u64,
        s: String,
    }
    impl Record for Rec {}

    /// The same writes through a redb transaction and through a replica leave the same rows.
    #[test]
    fn a_replica_holds_what_the_store_holds() {
        let db = redb::Database::builder().create_with_backend(redb::backends::InMemoryBackend::new()).unwrap();
        let txn = db.begin_write().unwrap();
        let replica = Replica::default();
        for tx in [Tx::store(&txn), Tx::replica(&replica)] {
            tx.put(T, "b", Rec { n: 1, s: "x".into() }).unwrap();
            tx.put_bytes(T, "a", br#"{"n":2,"s":"y"}"#).unwrap();
            tx.set_counter(T, "c", 7).unwrap();
            tx.set_counter(T, "c", tx.counter(T, "c").unwrap() + 1).unwrap();
            let mut a: Rec = tx.get(T, "a").unwrap().unwrap();
            a.n += 10;
            tx.put(T, "a", a).unwrap();
            let mut b: Rec = tx.take(T, "b").unwrap().unwrap();
            b.s.push('!');
            tx.put(T, "b", b).unwrap();
            tx.put(T, "d", Rec { n: 4, s: "gone".into() }).unwrap();
            tx.remove(T, "d").unwrap();
            assert_eq!(tx.get::<Rec>(T, "d").unwrap(), None);
            assert_eq!(tx.records::<Rec>(T, "a", Some("c")).unwrap().len(), 2);
            assert!(tx.get::<Rec>(T, "c").is_err(), "a counter is not a record");
        }
        let stored: Vec<(String, Vec<u8>)> = txn
            .open_table(T)
            .unwrap()
            .iter()
            .unwrap()
            .map(|r| r.map(|(k, v)| (k.value().to_owned(), v.value().to_vec())).unwrap())
            .collect();
        assert_eq!(stored, replica.rows("t"));
        assert_eq!(stored.len(), 3);
    }
}
