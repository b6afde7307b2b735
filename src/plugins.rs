//! Plugins on disk: the dev-mode registration of a plugin directory (until signed plugin
//! bundles land) and the content-addressed sealed store it is copied into
//! (`<lib>/bundles/sha256/<digest>/`). The digest covers every file's path, mode and bytes, in
//! path order; a run pins the digest of each plugin it uses.

use serde::Deserialize;
use sha2::{Digest, Sha256};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// Files in one plugin directory at most.
const FILES_MAX: usize = 1_000;
/// Bytes in one plugin directory at most.
const BYTES_MAX: u64 = 256 * 1024 * 1024;

/// `plugin.toml` in the plugin's directory.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub name: String,
    /// Path of the executable, relative to the plugin directory.
    pub entrypoint: String,
    /// The plugin protocol version; only 1 exists.
    pub protocol: u32,
    #[serde(default)]
    pub description: Option<String>,
    /// The step kinds the plugin implements (a step picks one with `kind = "…"`; the plugin
    /// reads it from the request). Without it the plugin has one kind, its name.
    #[serde(default)]
    pub kinds: Vec<String>,
}

/// Step kinds one plugin may declare at most.
pub const KINDS_MAX: usize = 32;

impl Manifest {
    /// The declared step kinds, or the plugin's name when it declares none.
    pub fn kinds(&self) -> Vec<String> {
        if self.kinds.is_empty() { vec![self.name.clone()] } else { self.kinds.clone() }
    }

    /// Checks what `plugin.toml` declares: a valid name that is no built-in, protocol 1, step
    /// kinds that are valid names, each once, at most `KINDS_MAX`.
    pub fn validate(&self) -> Result<(), String> {
        if !valid_name(&self.name) || crate::domain::runs::spec::BUILTINS.contains(&self.name.as_str()) {
            return Err(format!(
                "plugin.toml: name {:?} must be 1-64 of a-z, 0-9, '-', '_' and not a built-in kind",
                self.name
            ));
        }
        if self.protocol != 1 {
            return Err(format!("plugin.toml: protocol {} is not supported (only 1)", self.protocol));
        }
        if self.kinds.len() > KINDS_MAX {
            return Err(format!("plugin.toml: more than {KINDS_MAX} kinds"));
        }
        for (i, k) in self.kinds.iter().enumerate() {
            if !valid_name(k) || self.kinds[..i].contains(k) {
                return Err(format!("plugin.toml: kind {k:?} must be 1-64 of a-z, 0-9, '-', '_', each once"));
            }
        }
        Ok(())
    }
}

/// A plugin directory, read and checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checked {
    pub manifest: Manifest,
    pub digest: String,
    files: Vec<(String, u32, Vec<u8>)>,
}

pub fn sealed_dir(lib: &Path, digest: &str) -> PathBuf {
    lib.join("bundles/sha256").join(digest)
}

fn valid_name(n: &str) -> bool {
    (1..=64).contains(&n.len())
        && n.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

/// Reads a plugin directory: regular files and directories only, bounded, with a manifest whose
/// entrypoint exists and is executable.
pub fn check(dir: &Path) -> Result<Checked, String> {
    let manifest_text =
        std::fs::read_to_string(dir.join("plugin.toml")).map_err(|e| format!("{}/plugin.toml: {e}", dir.display()))?;
    let manifest: Manifest = toml::from_str(&manifest_text).map_err(|e| format!("plugin.toml: {e}"))?;
    manifest.validate()?;
    let mut files = Vec::new();
    let mut total = 0u64;
    walk(dir, dir, &mut files, &mut total)?;
    files.sort();
    let entry = files
        .iter()
        .find(|(p, _, _)| *p == manifest.entrypoint)
        .ok_or_else(|| format!("entrypoint {:?} is not a file of the plugin", manifest.entrypoint))?;
    if entry.1 & 0o111 == 0 {
        return Err(format!("entrypoint {:?} is not executable", manifest.entrypoint));
    }
    let mut h = Sha256::new();
    for (path, mode, bytes) in &files {
        h.update(format!("{path}\0{mode:o}\0{}\0", bytes.len()).as_bytes());
        h.update(bytes);
    }
    Ok(Checked { manifest, digest: hex::encode(h.finalize()), files })
}

fn walk(root: &Path, dir: &Path, files: &mut Vec<(String, u32, Vec<u8>)>, total: &mut u64) -> Result<(), String> {
    for entry in std::fs::read_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))? {
        let entry = entry.map_err(|e| format!("{}: {e}", dir.display()))?;
        let path = entry.path();
        let meta = std::fs::symlink_metadata(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        let rel = path.strip_prefix(root).expect("walked under root").to_string_lossy().into_owned();
        if meta.is_dir() {
            walk(root, &path, files, total)?;
        } else if meta.is_file() {
            *total += meta.len();
            if files.len() >= FILES_MAX || *total > BYTES_MAX {
                return Err(format!("plugin is larger than {FILES_MAX} files or {BYTES_MAX} bytes"));
            }
            let bytes = std::fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?;
            files.push((rel, meta.permissions().mode() & 0o777, bytes));
        } else {
            return Err(format!(
                "{rel}: only regular files and directories may be in a plugin (no links, devices or fifos)"
            ));
        }
    }
    Ok(())
}

/// Copies a checked plugin into the sealed store: written in a fresh staging directory,
/// fsynced, renamed into place. An existing sealed copy (same digest) is kept.
pub fn seal(lib: &Path, plugin: &Checked) -> Result<PathBuf, String> {
    let target = sealed_dir(lib, &plugin.digest);
    if target.exists() {
        return Ok(target);
    }
    let staging = lib.join("bundles/staging").join(crate::ids::random_hex(8));
    std::fs::create_dir_all(&staging).map_err(|e| format!("{}: {e}", staging.display()))?;
    let write = || -> std::io::Result<()> {
        for (rel, mode, bytes) in &plugin.files {
            let path = staging.join(rel);
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent)?;
            }
            std::fs::write(&path, bytes)?;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode & 0o555))?;
            std::fs::File::open(&path)?.sync_all()?;
        }
        std::fs::File::open(&staging)?.sync_all()?;
        std::fs::create_dir_all(target.parent().expect("sealed dir has a parent"))?;
        std::fs::rename(&staging, &target)?;
        std::fs::File::open(target.parent().expect("parent"))?.sync_all()
    };
    write().map_err(|e| {
        let _ = std::fs::remove_dir_all(&staging);
        format!("seal plugin {}: {e}", plugin.manifest.name)
    })?;
    Ok(target)
}
