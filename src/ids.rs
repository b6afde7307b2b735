//! Random identifiers and secrets from the operating system's CSPRNG. Identifiers are short
//! lowercase hex with a kind prefix (`tok_3fa9…`) so that an operator can tell them apart in logs.

/// Fills `buf` from the OS CSPRNG. A failing CSPRNG is a broken host, not an operating error.
pub fn fill_random(buf: &mut [u8]) {
    getrandom::getrandom(buf).expect("operating system random source is unavailable");
}

pub fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    fill_random(&mut buf);
    hex::encode(buf)
}

/// A new identifier such as `tok_1a2b3c4d5e6f`: 48 random bits, enough for a single appliance's
/// objects, with collisions refused by the writer rather than assumed away.
pub fn new_id(prefix: &str) -> String {
    format!("{prefix}_{}", random_hex(6))
}
