//! `serve --dev`: a working appliance in one command. Creates the production layout under a
//! local directory and, where absent, a config with dev defaults, the appliance's Ed25519 key,
//! a self-signed TLS certificate for loopback, and (once the store is open) an admin token.
//! Existing files are kept, so restarting a dev appliance keeps its keys, store and token.

use crate::config::{Config, Layout};
use crate::fsutil::write_file_atomic;
use ssh_key::{HashAlg, PrivateKey};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

/// What `prepare` did, for the start banner.
#[derive(Debug, Default)]
pub struct DevNotes {
    pub lines: Vec<String>,
}

fn mkdir(path: &Path, mode: u32) -> Result<(), String> {
    std::fs::create_dir_all(path).map_err(|e| format!("create {}: {e}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(|e| format!("chmod {}: {e}", path.display()))
}

/// Creates the layout and the dev material that is missing.
pub fn prepare(layout: &Layout) -> Result<DevNotes, String> {
    let mut notes = DevNotes::default();
    mkdir(&layout.etc(), 0o755)?;
    mkdir(&layout.trust_dir(), 0o755)?;
    mkdir(&layout.lib(), 0o700)?;
    mkdir(&layout.log(), 0o750)?;
    mkdir(&layout.run(), 0o755)?;
    let config_path = layout.config_file();
    if !config_path.exists() {
        let text = format!(
            "# Written by `stella serve --dev` with development defaults; see docs/operator-guide.md.\n{}",
            Config::dev(layout).to_toml()
        );
        write_file_atomic(&config_path, text.as_bytes(), 0o644)
            .map_err(|e| format!("write {}: {e}", config_path.display()))?;
        notes.lines.push(format!("config:        {} (written with dev defaults)", config_path.display()));
    } else {
        notes.lines.push(format!("config:        {}", config_path.display()));
    }
    let key = layout.appliance_key();
    let fingerprint = ensure_appliance_key(&key)?;
    trust_once(&key, &layout.trust_dir(), "appliance", crate::trust::sig::Namespace::Export)?;
    notes.lines.push(format!("appliance key: {} ({fingerprint})", key.display()));
    let dev_key = layout.dev_bundle_key();
    let fingerprint = ensure_dev_bundle_key(&dev_key, &layout.trust_dir())?;
    notes
        .lines
        .push(format!("bundle key:    {} ({fingerprint}, trusted as dev; signs the samples)", dev_key.display()));
    let (cert, tls_key) = (layout.default_tls_cert(), layout.default_tls_key());
    if !cert.exists() || !tls_key.exists() {
        generate_certificate(&cert, &tls_key)?;
        notes
            .lines
            .push(format!("tls:           {} (self-signed for localhost, 127.0.0.1, ::1; generated)", cert.display()));
    } else {
        notes.lines.push(format!("tls:           {}", cert.display()));
    }
    Ok(notes)
}

/// Generates the appliance's OpenSSH Ed25519 key if absent; returns its SHA256 fingerprint.
pub fn ensure_appliance_key(path: &Path) -> Result<String, String> {
    if path.exists() {
        let key =
            PrivateKey::read_openssh_file(path).map_err(|e| format!("read appliance key {}: {e}", path.display()))?;
        return Ok(key.fingerprint(HashAlg::Sha256).to_string());
    }
    crate::trust::keys::generate(path, "stella-appliance")
}

/// Generates the dev bundle key if absent and trusts it for bundles (principal `dev`) unless the
/// trust store already lists it; returns its fingerprint.
fn ensure_dev_bundle_key(path: &Path, trust_dir: &Path) -> Result<String, String> {
    if !path.exists() {
        crate::trust::keys::generate(path, "stella-dev-bundles")?;
    }
    trust_once(path, trust_dir, "dev", crate::trust::sig::Namespace::Bundle)
}

/// Trusts the key at `path` as `principal` for `ns` unless the trust store lists it already;
/// returns its fingerprint.
fn trust_once(
    path: &Path,
    trust_dir: &Path,
    principal: &str,
    ns: crate::trust::sig::Namespace,
) -> Result<String, String> {
    let key = PrivateKey::read_openssh_file(path).map_err(|e| format!("read key {}: {e}", path.display()))?;
    let fingerprint = key.fingerprint(HashAlg::Sha256).to_string();
    let trust = crate::trust::store::TrustStore::load(trust_dir).map_err(|e| e.to_string())?;
    if !trust.entries.iter().any(|e| e.key.fingerprint(HashAlg::Sha256).to_string() == fingerprint) {
        crate::trust::store::append_signer(
            &trust_dir.join("allowed_signers"),
            principal,
            key.public_key(),
            ns.as_str(),
            None,
        )?;
    }
    Ok(fingerprint)
}

fn generate_certificate(cert: &Path, key: &Path) -> Result<(), String> {
    let names = vec!["localhost".to_owned(), "127.0.0.1".to_owned(), "::1".to_owned()];
    let generated = rcgen::generate_simple_self_signed(names).map_err(|e| format!("generate tls certificate: {e}"))?;
    write_file_atomic(key, generated.signing_key.serialize_pem().as_bytes(), 0o600)
        .map_err(|e| format!("write {}: {e}", key.display()))?;
    write_file_atomic(cert, generated.cert.pem().as_bytes(), 0o644)
        .map_err(|e| format!("write {}: {e}", cert.display()))
}
