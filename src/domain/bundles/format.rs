//! The envelope: a plain tar holding exactly `manifest.json`, `payload.tar.zst`, `SHA256SUMS`
//! (coreutils format over the other two) and `SHA256SUMS.sig` (SSHSIG, bundle namespace). The
//! manifest binds kind, name, version, the payload's digest and every payload file's path,
//! size, mode and sha256. Limits on every dimension are constants here.

use serde::{Deserialize, Serialize};

pub const MANIFEST: &str = "manifest.json";
pub const PAYLOAD: &str = "payload.tar.zst";
pub const SUMS: &str = "SHA256SUMS";
pub const SUMS_SIG: &str = "SHA256SUMS.sig";
/// The envelope's members, in the order they are written.
pub const MEMBERS: [&str; 4] = [MANIFEST, PAYLOAD, SUMS, SUMS_SIG];

/// An envelope at most (the compressed payload dominates).
pub const ENVELOPE_BYTES_MAX: u64 = 4 * 1024 * 1024 * 1024;
/// A manifest, SHA256SUMS or signature member at most.
pub const SMALL_MEMBER_BYTES_MAX: u64 = 4 * 1024 * 1024;
/// Payload files at most.
pub const FILES_MAX: usize = 100_000;
/// Unpacked payload bytes at most.
pub const UNPACKED_BYTES_MAX: u64 = 16 * 1024 * 1024 * 1024;
/// A payload path at most.
pub const PATH_BYTES_MAX: usize = 1_024;
/// zstd window at most (2^27 = 128 MiB): a frame asking for more is refused.
pub const ZSTD_WINDOW_LOG_MAX: u32 = 27;
/// zstd level of built payloads.
pub const ZSTD_LEVEL: i32 = 9;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Plugin,
    Dag,
    Trust,
    /// Environments (`release.toml`): DESIGN.md §9.
    Release,
    /// A deployable artifact (`name@version`): its files go into the registry.
    Artifact,
}

impl Kind {
    pub const ALL: [Kind; 5] = [Kind::Plugin, Kind::Dag, Kind::Trust, Kind::Release, Kind::Artifact];

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Plugin => "plugin",
            Kind::Dag => "dag",
            Kind::Trust => "trust",
            Kind::Release => "release",
            Kind::Artifact => "artifact",
        }
    }

    pub fn parse(s: &str) -> Option<Kind> {
        Self::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Manifest {
    pub format_version: u32,
    pub kind: Kind,
    pub name: String,
    pub version: String,
    /// The manifest is refused after this time (RFC 3339), if set.
    pub not_after: Option<String>,
    pub payload: PayloadRef,
    pub files: Vec<FileEntry>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PayloadRef {
    pub file: String,
    pub size: u64,
    pub sha256: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FileEntry {
    pub path: String,
    /// `file` or `dir`.
    #[serde(rename = "type")]
    pub kind: String,
    pub size: u64,
    pub mode: u32,
    pub sha256: Option<String>,
}

/// `<sha256>  <name>` lines, as `sha256sum` writes and `sha256sum --strict -c` reads.
pub fn sums(entries: &[(&str, &str)]) -> String {
    entries.iter().map(|(name, sha)| format!("{sha}  {name}\n")).collect()
}

/// Parses SHA256SUMS strictly: exactly the manifest and the payload, each once.
pub fn parse_sums(text: &str) -> Result<Vec<(String, String)>, String> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let (sha, name) =
            line.split_once("  ").ok_or_else(|| format!("SHA256SUMS line {}: expected '<sha256>  <name>'", i + 1))?;
        if sha.len() != 64 || !sha.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()) {
            return Err(format!("SHA256SUMS line {}: {sha:?} is not a lowercase sha256", i + 1));
        }
        if ![MANIFEST, PAYLOAD].contains(&name) || out.iter().any(|(n, _)| n == name) {
            return Err(format!("SHA256SUMS line {}: {name:?} is not expected (or listed twice)", i + 1));
        }
        out.push((name.to_owned(), sha.to_owned()));
    }
    if out.len() != 2 {
        return Err("SHA256SUMS must list manifest.json and payload.tar.zst".into());
    }
    Ok(out)
}

/// A payload path: relative, normalized, no `..`, no empty or `.` components, bounded.
pub fn valid_path(p: &str) -> bool {
    !p.is_empty()
        && p.len() <= PATH_BYTES_MAX
        && !p.starts_with('/')
        && p.split('/').all(|c| !c.is_empty() && c != "." && c != "..")
        && !p.bytes().any(|b| b == 0 || b == b'\\')
}
