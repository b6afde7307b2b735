//! RFC 8785 canonical JSON, the bytes every ledger hash and cache fingerprint is taken over.
//!
//! `serde_json_canonicalizer` is the reference: it buffers and re-sorts every object and formats
//! every number through an `f64`, which made sealing the ledger entries a quarter of the
//! writer's time. Most values need none of that: serde_json's maps are `BTreeMap`s (keys in
//! UTF-8 byte order, which is the UTF-16 order RFC 8785 asks for whenever the keys are ASCII),
//! its string escaping is RFC 8785's (the short escapes, `\u00xx` in lowercase for the other
//! control characters, everything else literal), and an integer of at most 2^53 in magnitude
//! prints the same as its ES6 double. So a value is written directly by serde_json when it is
//! [`plain`] (no fraction, no integer beyond 2^53, no non-ASCII key), and by the reference
//! otherwise; the tests compare both on seeded random values.

use serde::Serialize;
use serde_json::Value;

/// Integers up to this magnitude print the same as the double RFC 8785 formats them as.
const EXACT_INT: u64 = 1 << 53;

/// Whether serde_json's own output of `v` is already its RFC 8785 form.
pub fn plain(v: &Value) -> bool {
    match v {
        Value::Null | Value::Bool(_) | Value::String(_) => true,
        Value::Number(n) => {
            n.as_u64().is_some_and(|u| u <= EXACT_INT) || n.as_i64().is_some_and(|i| i.unsigned_abs() <= EXACT_INT)
        }
        Value::Array(items) => items.iter().all(plain),
        Value::Object(map) => map.iter().all(|(k, v)| k.is_ascii() && plain(v)),
    }
}

/// The canonical bytes of `v`.
pub fn to_vec(v: &Value) -> Vec<u8> {
    if plain(v) { serde_json::to_vec(v).expect("a JSON value serializes") } else { reference(v) }
}

/// The canonical bytes of a struct whose fields are declared in sorted order, have ASCII names
/// and are strings, integers of at most 2^53, string lists, or values `plain` says are
/// plain (`direct`); the reference canonicalizer otherwise.
pub fn to_vec_sorted<T: Serialize>(t: &T, direct: bool) -> Vec<u8> {
    if direct { serde_json::to_vec(t).expect("a plain struct serializes") } else { reference(t) }
}

fn reference<T: Serialize>(t: &T) -> Vec<u8> {
    serde_json_canonicalizer::to_vec(t).expect("JSON values always canonicalize")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::rng::SplitMix64;

    struct SeededRng(SplitMix64);

    impl SeededRng {
        fn new(seed: u64) -> Self {
            SeededRng(SplitMix64::new(seed))
        }
        fn below(&mut self, n: u64) -> u64 {
            self.0.next_u64() % n
        }
    }

    fn string(rng: &mut SeededRng) -> String {
        const PIECES: &[&str] = &[
            "a", "Z", "key", "\"", "\\", "\n", "\t", "\u{1}", "\u{1f}", "\u{7f}", "é", "€", "\u{e000}", "\u{fffd}",
            "😀", "\u{2028}", "/", " ",
        ];
        (0..rng.below(6)).map(|_| PIECES[rng.below(PIECES.len() as u64) as usize]).collect()
    }

    fn value(rng: &mut SeededRng, depth: u32) -> Value {
        match rng.below(if depth > 3 { 5 } else { 7 }) {
            0 => Value::Null,
            1 => Value::Bool(rng.below(2) == 1),
            2 => Value::String(string(rng)),
            3 => {
                const INTS: &[i64] = &[0, 1, -1, 42, 1 << 53, -(1 << 53), (1 << 53) + 1, i64::MAX, i64::MIN, 1_000_000];
                serde_json::json!(INTS[rng.below(INTS.len() as u64) as usize])
            }
            4 => {
                const NUMS: &[f64] = &[0.5, -2.25, 1e21, 1e-7, 123456.789, 5e-324];
                match rng.below(3) {
                    0 => serde_json::json!(u64::MAX),
                    _ => serde_json::json!(NUMS[rng.below(NUMS.len() as u64) as usize]),
                }
            }
            5 => Value::Array((0..rng.below(4)).map(|_| value(rng, depth + 1)).collect()),
            _ => Value::Object((0..rng.below(5)).map(|_| (string(rng), value(rng, depth + 1))).collect()),
        }
    }

    #[test]
    fn the_fast_path_writes_exactly_what_the_reference_writes() {
        let mut rng = SeededRng::new(8785);
        let (mut direct, mut total) = (0, 0);
        for _ in 0..20_000 {
            let v = value(&mut rng, 0);
            total += 1;
            direct += usize::from(plain(&v));
            assert_eq!(String::from_utf8(to_vec(&v)).unwrap(), String::from_utf8(reference(&v)).unwrap(), "{v:?}");
        }
        // Both paths were exercised: most values are plain, many are not.
        assert!(direct > total / 4 && direct < total * 9 / 10, "{direct} of {total} plain");
    }

    #[test]
    fn what_is_not_plain() {
        assert!(plain(&serde_json::json!({"a": [1, "é", {"b": null}], "n": 9007199254740992_u64})));
        assert!(!plain(&serde_json::json!({"n": 9007199254740993_u64})));
        assert!(!plain(&serde_json::json!({"n": 0.5})));
        assert!(!plain(&serde_json::json!({"é": 1})));
    }
}
