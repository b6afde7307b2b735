//! Secret values at rest: sealed with ChaCha20-Poly1305 (ring, the crypto rustls already
//! links) under a key kept apart from the store (`<lib>/keys/secrets.key`, 0600), so a copied
//! store file or backup holds no secret in the clear. The secret's name is the associated
//! data, so a sealed value cannot be moved to another name. Values stored by an older stella
//! in the clear are still read.

use ring::aead::{Aad, CHACHA20_POLY1305, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use std::path::Path;
use std::sync::OnceLock;

/// The prefix of a sealed value: format 1, then the nonce and the ciphertext with its tag.
const SEALED_V1: &[u8] = b"stella-sealed-v1:";

pub struct SecretKey(LessSafeKey);

static KEY: OnceLock<SecretKey> = OnceLock::new();

impl SecretKey {
    /// Reads the key at `path`, or makes one (32 random bytes, mode 0600) if there is none.
    pub fn load_or_create(path: &Path) -> Result<Self, String> {
        let bytes = match std::fs::read(path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let mut b = vec![0u8; 32];
                crate::ids::fill_random(&mut b);
                if let Some(dir) = path.parent() {
                    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
                }
                write_new(path, &b).map_err(|e| format!("write {}: {e}", path.display()))?;
                b
            }
            Err(e) => return Err(format!("read {}: {e}", path.display())),
        };
        let key = UnboundKey::new(&CHACHA20_POLY1305, &bytes)
            .map_err(|_| format!("{}: a secrets key is 32 bytes, this one is {}", path.display(), bytes.len()))?;
        Ok(SecretKey(LessSafeKey::new(key)))
    }

    pub fn seal(&self, name: &str, value: &str) -> Vec<u8> {
        let mut nonce = [0u8; NONCE_LEN];
        crate::ids::fill_random(&mut nonce);
        let mut buf = value.as_bytes().to_vec();
        self.0
            .seal_in_place_append_tag(Nonce::assume_unique_for_key(nonce), Aad::from(name.as_bytes()), &mut buf)
            .expect("sealing fits in memory");
        [SEALED_V1, &nonce, &buf].concat()
    }

    pub fn open(&self, name: &str, stored: &[u8]) -> Result<String, String> {
        let Some(rest) = stored.strip_prefix(SEALED_V1) else {
            return Ok(String::from_utf8_lossy(stored).into_owned());
        };
        let (nonce, sealed) = rest.split_at_checked(NONCE_LEN).ok_or("a sealed secret is too short")?;
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| "a sealed secret's nonce is damaged")?;
        let mut buf = sealed.to_vec();
        let plain = self
            .0
            .open_in_place(nonce, Aad::from(name.as_bytes()), &mut buf)
            .map_err(|_| format!("secret {name} does not open with this appliance's secrets key"))?;
        String::from_utf8(plain.to_vec()).map_err(|_| format!("secret {name} is not UTF-8"))
    }
}

/// Creates `path` (it must not exist) holding `bytes`, mode 0600, synced.
fn write_new(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}

/// Installs the daemon's key (once, at start).
pub fn install(key: SecretKey) {
    let _ = KEY.set(key);
}

/// The installed key, if the daemon installed one.
pub fn key() -> Option<&'static SecretKey> {
    KEY.get()
}
