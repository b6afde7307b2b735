//! The hash-chained ledger entry (DESIGN.md invariant 2): its fields, its canonical bytes and its
//! hash. `hash = sha256(prev_hash || RFC 8785 canonical JSON of every field but the hash)`.
//!
//! This module owns the chain arithmetic only; it never touches the store. The writer appends
//! entries ([`crate::kernel::writer`]); `db verify` ([`crate::kernel::verify`]) and `audit verify`
//! (exported packs) check them with the same [`ChainCursor`].

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
/// Its fields are declared in their canonical (sorted) order, so serde_json writes the
/// canonical form directly when the data is plain ([`crate::kernel::canonical`]).
struct Hashed<'a> {
    actor: &'a str,
    data: &'a serde_json::Value,
    kind: &'a str,
    prev: &'a str,
    seq: u64,
    subjects: &'a [String],
    tenant: &'a str,
    time: i64,
}

impl Entry {
    /// Seals a draft as entry `seq` after `prev`, computing its hash.
    pub fn seal(draft: Draft, seq: u64, time: i64, actor: &str, prev: &str) -> Self {
        let mut entry = Self::unsealed(draft, seq, time, actor, prev);
        entry.hash = entry.compute_hash();
        entry
    }

    /// [`Entry::seal`] and [`Entry::to_stored`] at once, the canonical form built once: what
    /// the writer appends.
    pub fn seal_stored(draft: Draft, seq: u64, time: i64, actor: &str, prev: &str) -> (Self, Vec<u8>) {
        let mut entry = Self::unsealed(draft, seq, time, actor, prev);
        let canonical = entry.hashed_canonical();
        entry.hash = hash_after(&entry.prev, &canonical);
        let stored = entry.with_hash_member(canonical);
        (entry, stored)
    }

    fn unsealed(mut draft: Draft, seq: u64, time: i64, actor: &str, prev: &str) -> Self {
        integral_floats_as_integers(&mut draft.data);
        Entry {
            seq,
            time,
            tenant: draft.tenant,
            actor: actor.to_owned(),
            kind: draft.kind.to_owned(),
            subjects: draft.subjects,
            data: draft.data,
            prev: prev.to_owned(),
            hash: String::new(),
        }
    }

    pub fn compute_hash(&self) -> String {
        hash_after(&self.prev, &self.hashed_canonical())
    }

    /// The stored form: the RFC 8785 canonical JSON of the whole entry, hash included. Its
    /// members are sorted (`actor`, `data`, `hash`, `kind`, `prev`, `seq`, …), so the hashed
    /// bytes are these bytes without the `hash` member — which is what lets [`fast_check`]
    /// verify an entry without parsing it.
    pub fn to_stored(&self) -> Vec<u8> {
        self.with_hash_member(self.hashed_canonical())
    }

    /// The hashed canonical form with the `hash` member put in its sorted place.
    fn with_hash_member(&self, mut canonical: Vec<u8>) -> Vec<u8> {
        // `{"actor":<string>,"data":<value>` then `,"kind"…`: the hash goes after data.
        let at = (|| {
            let actor_end = value_end(&canonical, b"{\"actor\":".len())?;
            let data_start = actor_end + b",\"data\":".len();
            canonical.get(actor_end..data_start).filter(|s| *s == b",\"data\":")?;
            value_end(&canonical, data_start)
        })()
        .expect("the canonical form of an entry starts with actor and data");
        let member = format!(",\"hash\":\"{}\"", self.hash);
        canonical.splice(at..at, member.into_bytes());
        canonical
    }

    fn hashed_canonical(&self) -> Vec<u8> {
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
        // seq and time are far below 2^53 (a millisecond clock; one entry per sequence number).
        let direct = crate::kernel::canonical::plain(&self.data) && self.time >= 0 && self.seq < 1 << 53;
        crate::kernel::canonical::to_vec_sorted(&hashed, direct)
    }

    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("ledger entry serializes")
    }
}

/// `sha256(prev || canonical)`, hex: an entry's hash.
fn hash_after(prev: &str, canonical: &[u8]) -> String {
    let prev = hex::decode(prev).unwrap_or_default();
    let mut h = Sha256::new();
    h.update(&prev);
    h.update(canonical);
    hex::encode(h.finalize())
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

/// One link of the chain: an entry's hash as stored (64 lowercase hex digits) and as hashed
/// into the next entry (32 bytes). Carrying both spares a chain check decoding hex per entry.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Link {
    hex: [u8; 64],
    raw: [u8; 32],
}

impl Link {
    /// The `prev` of the first entry.
    pub const GENESIS: Link = Link { hex: [b'0'; 64], raw: [0; 32] };

    /// A hash as the ledger writes it: exactly 64 lowercase hex digits.
    pub fn parse(hex: &str) -> Option<Link> {
        let mut link = Link { hex: hex.as_bytes().try_into().ok()?, raw: [0; 32] };
        if !link.hex.iter().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f')) {
            return None;
        }
        hex::decode_to_slice(link.hex, &mut link.raw).ok()?;
        Some(link)
    }

    fn of_digest(raw: [u8; 32]) -> Link {
        const DIGITS: &[u8; 16] = b"0123456789abcdef";
        let mut hex = [0u8; 64];
        for (i, b) in raw.iter().enumerate() {
            hex[2 * i] = DIGITS[(b >> 4) as usize];
            hex[2 * i + 1] = DIGITS[(b & 15) as usize];
        }
        Link { hex, raw }
    }

    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.hex).expect("a link is hex digits")
    }
}

impl std::fmt::Debug for Link {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Link({})", self.as_str())
    }
}

/// The running state of a chain check: feed entries in order.
#[derive(Debug, Clone)]
pub struct ChainCursor {
    pub next_seq: u64,
    prev: Link,
}

impl Default for ChainCursor {
    fn default() -> Self {
        Self { next_seq: 1, prev: Link::GENESIS }
    }
}

impl ChainCursor {
    /// A check that starts at entry `next_seq`, whose `prev` must be `prev`.
    pub fn new(next_seq: u64, prev: Link) -> Self {
        Self { next_seq, prev }
    }

    /// The hash of the last entry checked (the `prev` the next one must carry).
    pub fn prev_hash(&self) -> &str {
        self.prev.as_str()
    }

    /// The last entry checked's link.
    pub fn link(&self) -> Link {
        self.prev
    }

    /// Checks one stored entry's place in the chain without building it: the canonical stored
    /// form is hashed as it is; an older form is parsed and re-canonicalized.
    pub fn check_stored(&mut self, key: u64, bytes: &[u8]) -> Result<(), ChainError> {
        if key != self.next_seq {
            return Err(ChainError::Missing { expected: self.next_seq, found: key });
        }
        self.check_next(bytes)
    }

    /// [`Self::check_stored`] for an entry that has no key of its own (a line of an export):
    /// the sequence it claims must be the next one.
    pub fn check_next(&mut self, bytes: &[u8]) -> Result<(), ChainError> {
        match fast_check(bytes, self.next_seq, &self.prev) {
            Fast::Ok { link, .. } => {
                self.next_seq += 1;
                self.prev = link;
                Ok(())
            }
            Fast::Bad(e) => Err(e),
            Fast::NotCanonical => {
                let entry: Entry = serde_json::from_slice(bytes)
                    .map_err(|e| ChainError::Unparsable { seq: self.next_seq, reason: e.to_string() })?;
                self.check_link(&entry)
            }
        }
    }

    /// Checks that `entry` is the next one in this chain and advances past it.
    pub fn check_link(&mut self, entry: &Entry) -> Result<(), ChainError> {
        if entry.seq != self.next_seq {
            return Err(ChainError::WrongSeq { seq: self.next_seq, claimed: entry.seq });
        }
        if entry.prev != self.prev.as_str() {
            return Err(ChainError::BrokenLink { seq: entry.seq });
        }
        if entry.compute_hash() != entry.hash {
            return Err(ChainError::BadHash { seq: entry.seq });
        }
        self.next_seq += 1;
        self.prev = Link::parse(&entry.hash).ok_or(ChainError::BadHash { seq: entry.seq })?;
        Ok(())
    }
}

/// RFC 8785 writes a float with an integral value as an integer (`2.0` → `2`), which parses
/// back as an integer: the entry in memory is made to hold what its stored form will read as,
/// so that projections built from it and from a replay of the ledger agree.
pub fn integral_floats_as_integers(v: &mut serde_json::Value) {
    use serde_json::Value;
    match v {
        Value::Number(n) if n.is_f64() => {
            let f = n.as_f64().unwrap_or(f64::NAN);
            if f.fract() == 0.0 && f.abs() < 1e21 {
                if f >= 0.0 && f <= u64::MAX as f64 && f > i64::MAX as f64 {
                    *v = Value::from(f as u64);
                } else if f >= i64::MIN as f64 && f <= i64::MAX as f64 {
                    *v = Value::from(f as i64);
                }
            }
        }
        Value::Array(a) => a.iter_mut().for_each(integral_floats_as_integers),
        Value::Object(o) => o.values_mut().for_each(integral_floats_as_integers),
        _ => {}
    }
}

/// The first `"` or `\\` at or after `i`, eight bytes at a time (the strings of an entry are
/// short, too short for memchr's setup to pay): a byte that matches becomes zero after the
/// xor, and the lowest zero byte of a word is found exactly by the borrow trick.
fn quote_or_backslash(b: &[u8], mut i: usize) -> Option<usize> {
    const LO: u64 = 0x0101_0101_0101_0101;
    const HI: u64 = 0x8080_8080_8080_8080;
    while let Some(chunk) = b.get(i..i + 8) {
        let w = u64::from_le_bytes(chunk.try_into().expect("eight bytes"));
        let (q, s) = (w ^ (LO * b'"' as u64), w ^ (LO * b'\\' as u64));
        let m = ((q.wrapping_sub(LO) & !q) | (s.wrapping_sub(LO) & !s)) & HI;
        if m != 0 {
            return Some(i + (m.trailing_zeros() / 8) as usize);
        }
        i += 8;
    }
    b.get(i..)?.iter().position(|c| matches!(c, b'"' | b'\\')).map(|p| i + p)
}

/// The end (exclusive) of the JSON value that starts at `start` in compact JSON, skipping
/// strings (with escapes), objects and arrays without allocating; `None` if the bytes end first.
fn value_end(b: &[u8], start: usize) -> Option<usize> {
    let first = *b.get(start)?;
    if !matches!(first, b'"' | b'{' | b'[') {
        // A number or a literal: up to the next delimiter.
        let mut i = start;
        while !matches!(*b.get(i)?, b',' | b'}' | b']') {
            i += 1;
        }
        return Some(i);
    }
    let (mut i, mut depth) = (start, 0usize);
    loop {
        match *b.get(i)? {
            b'"' => {
                i += 1;
                loop {
                    i = quote_or_backslash(b, i)?;
                    if b[i] == b'"' {
                        break;
                    }
                    i += 2;
                }
                i += 1;
            }
            b'{' | b'[' => {
                depth += 1;
                i += 1;
            }
            b'}' | b']' => {
                depth = depth.checked_sub(1)?;
                i += 1;
            }
            _ => i += 1,
        }
        if depth == 0 {
            return Some(i);
        }
    }
}

/// The verdict of [`fast_check`] on one stored entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fast {
    /// In the canonical stored form, linked and hashing to itself: its seq and hash.
    Ok { seq: u64, link: Link },
    /// Not in the canonical stored form (written by an older stella): check it by parsing.
    NotCanonical,
    /// In the stored form but wrong: the `ChainError` for it.
    Bad(ChainError),
}

fn member(b: &[u8], i: usize, key: &[u8]) -> Option<(usize, usize)> {
    let start = i + key.len();
    (b.get(i..start)? == key).then_some(())?;
    Some((start, value_end(b, start)?))
}

/// The members of an entry in the canonical stored form, located without parsing it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredHead<'a> {
    pub seq: u64,
    pub time: i64,
    /// The kind as stored, when it needs no unescaping (every kind stella writes).
    pub kind: &'a str,
    pub prev: &'a str,
    pub hash: &'a str,
    /// The `data` member's value, as stored JSON.
    pub data: &'a [u8],
}

/// Where the members up to `seq` lie in an entry in the canonical stored form: what a chain
/// check needs. Each is the span of the value, quotes included.
struct Layout {
    data_start: usize,
    data_end: usize,
    hash: (usize, usize),
    kind: (usize, usize),
    prev: (usize, usize),
    seq: (usize, usize),
}

impl Layout {
    fn of(b: &[u8]) -> Option<Layout> {
        let (_, actor_end) = member(b, 0, b"{\"actor\":")?;
        let (data_start, data_end) = member(b, actor_end, b",\"data\":")?;
        let hash = member(b, data_end, b",\"hash\":")?;
        let kind = member(b, hash.1, b",\"kind\":")?;
        let prev = member(b, kind.1, b",\"prev\":")?;
        let seq = member(b, prev.1, b",\"seq\":")?;
        Some(Layout { data_start, data_end, hash, kind, prev, seq })
    }

    /// A hex digest's 64 digits, quotes stripped.
    fn digest(b: &[u8], (start, end): (usize, usize)) -> Option<&[u8]> {
        (end - start == 66 && b[start] == b'"').then(|| &b[start + 1..end - 1])
    }

    fn number<T: std::str::FromStr>(b: &[u8], (start, end): (usize, usize)) -> Option<T> {
        std::str::from_utf8(&b[start..end]).ok()?.parse().ok()
    }
}

/// The content of a string value that needs no unescaping.
fn plain_str(b: &[u8], (start, end): (usize, usize)) -> Option<&str> {
    let inner = b.get(start + 1..end.checked_sub(1)?).filter(|_| b[start] == b'"')?;
    if inner.contains(&b'\\') {
        return None;
    }
    std::str::from_utf8(inner).ok()
}

/// Locates the members of `bytes` in the canonical stored form (`Entry::to_stored`): every
/// member in its order, nothing after the last. `None` for any other form (an older stella's,
/// or bytes that are not an entry), which the caller then parses.
pub fn stored_head(bytes: &[u8]) -> Option<StoredHead<'_>> {
    let l = Layout::of(bytes)?;
    let (_, subjects_end) = member(bytes, l.seq.1, b",\"subjects\":")?;
    let (_, tenant_end) = member(bytes, subjects_end, b",\"tenant\":")?;
    let time = member(bytes, tenant_end, b",\"time\":")?;
    (bytes.get(time.1..)? == b"}").then_some(())?;
    let hex = |span| std::str::from_utf8(Layout::digest(bytes, span)?).ok();
    Some(StoredHead {
        seq: Layout::number(bytes, l.seq)?,
        time: Layout::number(bytes, time)?,
        kind: plain_str(bytes, l.kind)?,
        prev: hex(l.prev)?,
        hash: hex(l.hash)?,
        data: &bytes[l.data_start..l.data_end],
    })
}

/// Checks one entry in the canonical stored form (`Entry::to_stored`) without parsing it: its
/// sequence, its link to `prev` and its hash, by locating the members up to `seq` and hashing
/// the stored bytes minus the `hash` member (what follows `seq` is hashed, so it needs no
/// looking at). Allocates nothing.
pub fn fast_check(bytes: &[u8], expect_seq: u64, prev: &Link) -> Fast {
    let layout = Layout::of(bytes).and_then(|l| {
        let hash = Layout::digest(bytes, l.hash)?;
        let prev_found = Layout::digest(bytes, l.prev)?;
        let seq: u64 = Layout::number(bytes, l.seq)?;
        Some((l, hash, prev_found, seq))
    });
    let Some((l, hash, prev_found, seq)) = layout else { return Fast::NotCanonical };
    if seq != expect_seq {
        return Fast::Bad(ChainError::WrongSeq { seq: expect_seq, claimed: seq });
    }
    if prev_found != prev.hex {
        return Fast::Bad(ChainError::BrokenLink { seq });
    }
    let mut h = Sha256::new();
    h.update(prev.raw);
    h.update(&bytes[..l.data_end]);
    h.update(&bytes[l.hash.1..]);
    let link = Link::of_digest(h.finalize().into());
    if link.hex != hash {
        return Fast::Bad(ChainError::BadHash { seq });
    }
    Fast::Ok { seq, link }
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
    fn the_stored_form_is_canonical_and_checks_without_parsing() {
        let mut prev = GENESIS_PREV.to_owned();
        let tricky = json!({ "s": "a \\\" , \"hash\":\"x\" ] }", "n": [1, {"k": [true, null, -2.5e3]}], "e": {} });
        for (seq, data) in [(1, json!({})), (2, tricky), (3, json!({"n": 3}))] {
            let e = Entry::seal(Draft { data: data.clone(), ..draft(seq) }, seq, 7, "local:uid=0", &prev);
            let stored = e.to_stored();
            // What the writer appends, built from one canonical form, is the same entry and bytes.
            let (sealed, at_once) = Entry::seal_stored(Draft { data, ..draft(seq) }, seq, 7, "local:uid=0", &prev);
            assert_eq!((&sealed, &at_once), (&e, &stored));
            let parsed: Entry = serde_json::from_slice(&stored).unwrap();
            assert_eq!(parsed, e);
            assert_eq!(stored, serde_json_canonicalizer::to_vec(&e).unwrap(), "the stored form is RFC 8785");
            let head = stored_head(&stored).unwrap();
            assert_eq!(
                (head.seq, head.time, head.kind, head.prev, head.hash),
                (seq, 7, "test.entry", &*prev, &*e.hash)
            );
            assert_eq!(serde_json::from_slice::<serde_json::Value>(head.data).unwrap(), e.data);
            assert_eq!(stored_head(&e.to_json()), None, "the older stored form");
            assert_eq!(stored_head(&[&stored[..], b" "].concat()), None, "bytes after the entry");
            let link = Link::parse(&prev).unwrap();
            assert_eq!(fast_check(&stored, seq, &link), Fast::Ok { seq, link: Link::parse(&e.hash).unwrap() });
            let mut flipped = stored.clone();
            let at = flipped.len() - 3;
            flipped[at] ^= 1;
            assert!(matches!(fast_check(&flipped, seq, &link), Fast::Bad(_) | Fast::NotCanonical));
            assert_eq!(
                fast_check(&stored, seq + 1, &link),
                Fast::Bad(ChainError::WrongSeq { seq: seq + 1, claimed: seq })
            );
            assert_eq!(fast_check(&e.to_json(), seq, &link), Fast::NotCanonical, "the older stored form");
            prev = e.hash;
        }
    }

    proptest::proptest! {
        #[test]
        fn the_word_scan_finds_what_a_byte_scan_finds(
            b in proptest::collection::vec(proptest::sample::select(vec![b'a', b'"', b'\\', 0x80, 0xdc, 0x22 ^ 0x80, 0]), 0..40),
            i in 0usize..40,
        ) {
            let naive = b.get(i..).and_then(|t| t.iter().position(|c| matches!(c, b'"' | b'\\')).map(|p| i + p));
            proptest::prop_assert_eq!(quote_or_backslash(&b, i), naive);
        }
    }

    #[test]
    fn the_hashed_bytes_are_the_reference_canonical_form() {
        for data in [json!({"n": 1, "s": "é\n", "a": [true, null]}), json!({"f": 0.25, "é": 1, "big": u64::MAX})] {
            let e = Entry::seal(
                Draft { tenant: "t".into(), kind: "test.entry", subjects: vec!["x".into()], data },
                7,
                1001,
                "a",
                GENESIS_PREV,
            );
            let reference = json!({"seq": e.seq, "time": e.time, "tenant": e.tenant, "actor": e.actor, "kind": e.kind,
                "subjects": e.subjects, "data": e.data, "prev": e.prev});
            assert_eq!(e.hashed_canonical(), serde_json_canonicalizer::to_vec(&reference).unwrap());
        }
    }

    #[test]
    fn a_sealed_chain_verifies() {
        let mut cursor = ChainCursor::default();
        for e in chain(5) {
            cursor.check_stored(e.seq, &e.to_json()).unwrap();
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
        cursor.check_stored(1, &entries[0].to_json()).unwrap();
        let err = cursor.check_stored(3, &entries[2].to_json()).unwrap_err();
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
