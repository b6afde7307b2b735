//! SSHSIG (the format of `ssh-keygen -Y sign|verify`) over Ed25519, one namespace per purpose so
//! that a signature made for one purpose never passes for another. Signing uses the ssh-key
//! crate; verification re-derives the signed data and checks it with ed25519-dalek's
//! `verify_strict` (no malleable or small-order signatures), then asks the trust store whether
//! the key may sign in that namespace at that time.

pub use crate::trust::store::Signer;
use crate::trust::store::{TrustError, TrustStore};
use ssh_key::{HashAlg, LineEnding, PrivateKey, SshSig};

/// The namespaces of stella's signatures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Namespace {
    Bundle,
    Export,
    Trust,
}

impl Namespace {
    pub fn as_str(self) -> &'static str {
        match self {
            Namespace::Bundle => "stella-bundle@stella.invalid",
            Namespace::Export => "stella-export@stella.invalid",
            Namespace::Trust => "stella-trust@stella.invalid",
        }
    }
}

/// Why a signature does not verify.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SigError {
    #[error("signature does not parse as an SSH signature: {0}")]
    Malformed(String),
    #[error("signature was made for namespace {found:?}, not {expected:?}")]
    WrongNamespace { expected: String, found: String },
    #[error("signature key is {0}, not Ed25519")]
    NotEd25519(String),
    #[error("signature does not match the signed bytes (or is not a strict Ed25519 signature)")]
    Invalid,
    #[error(transparent)]
    Untrusted(#[from] TrustError),
}

/// The namespace a signature claims, if it parses (to choose what to verify it as).
pub fn claimed_namespace(armored: &str) -> Option<String> {
    SshSig::from_pem(armored).ok().map(|s| s.namespace().to_owned())
}

/// Signs `msg` in `ns`; returns the armored signature (`-----BEGIN SSH SIGNATURE-----`).
pub fn sign(key: &PrivateKey, ns: Namespace, msg: &[u8]) -> Result<String, String> {
    let sig = key.sign(ns.as_str(), HashAlg::Sha512, msg).map_err(|e| format!("sign: {e}"))?;
    sig.to_pem(LineEnding::LF).map_err(|e| format!("encode signature: {e}"))
}

/// Verifies an armored signature of `msg` in `ns` against the trust store at `now_ms`.
pub fn verify(armored: &str, ns: Namespace, msg: &[u8], trust: &TrustStore, now_ms: i64) -> Result<Signer, SigError> {
    let sig = SshSig::from_pem(armored).map_err(|e| SigError::Malformed(e.to_string()))?;
    if sig.namespace() != ns.as_str() {
        return Err(SigError::WrongNamespace { expected: ns.as_str().to_owned(), found: sig.namespace().to_owned() });
    }
    let Some(public) = sig.public_key().ed25519() else {
        return Err(SigError::NotEd25519(sig.public_key().algorithm().to_string()));
    };
    let signed =
        SshSig::signed_data(ns.as_str(), sig.hash_alg(), msg).map_err(|e| SigError::Malformed(e.to_string()))?;
    let key = ed25519_dalek::VerifyingKey::from_bytes(&public.0).map_err(|_| SigError::Invalid)?;
    let bytes: [u8; 64] = sig.signature_bytes().try_into().map_err(|_| SigError::Invalid)?;
    key.verify_strict(&signed, &ed25519_dalek::Signature::from_bytes(&bytes)).map_err(|_| SigError::Invalid)?;
    let public_key = ssh_key::PublicKey::from(sig.public_key().clone());
    Ok(trust.authorize(&public_key, ns.as_str(), now_ms)?)
}
