//! Signatures and the trust store: OpenSSH SSHSIG over Ed25519 with one namespace per purpose
//! (`sig`), the `allowed_signers` file and the revocation list (`store`), and key generation
//! (`keys`). Verification is strict (ed25519-dalek `verify_strict`) and fails closed.

pub mod keys;
pub mod sig;
pub mod store;
