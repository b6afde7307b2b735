//! Ed25519 keys in OpenSSH format: generated from the OS CSPRNG, private key written 0600 with
//! the public key beside it (`FILE.pub`).

use ssh_key::{HashAlg, LineEnding, PrivateKey};
use std::path::{Path, PathBuf};

/// Generates a key at `path` (refusing to overwrite) and returns its SHA256 fingerprint.
pub fn generate(path: &Path, comment: &str) -> Result<String, String> {
    if path.exists() {
        return Err(format!("{} exists; not overwriting a key", path.display()));
    }
    let mut seed = [0u8; 32];
    crate::ids::fill_random(&mut seed);
    let pair = ssh_key::private::Ed25519Keypair::from_seed(&seed);
    let mut key = PrivateKey::from(pair);
    key.set_comment(comment);
    let private = key.to_openssh(LineEnding::LF).map_err(|e| format!("encode key: {e}"))?;
    let public = key.public_key().to_openssh().map_err(|e| format!("encode public key: {e}"))?;
    crate::fsutil::write_file_atomic(path, private.as_bytes(), 0o600)
        .map_err(|e| format!("write {}: {e}", path.display()))?;
    let pub_path = PathBuf::from(format!("{}.pub", path.display()));
    crate::fsutil::write_file_atomic(&pub_path, format!("{public}\n").as_bytes(), 0o644)
        .map_err(|e| format!("write {}: {e}", pub_path.display()))?;
    Ok(key.fingerprint(HashAlg::Sha256).to_string())
}

pub fn read_private(path: &Path) -> Result<PrivateKey, String> {
    let key = PrivateKey::read_openssh_file(path).map_err(|e| format!("read key {}: {e}", path.display()))?;
    if key.algorithm() != ssh_key::Algorithm::Ed25519 {
        return Err(format!("key {} is {}, not Ed25519", path.display(), key.algorithm()));
    }
    if key.is_encrypted() {
        return Err(format!(
            "key {} is passphrase-protected; stella signs with unencrypted keys on the signing host",
            path.display()
        ));
    }
    Ok(key)
}
