//! The trust store: an OpenSSH `allowed_signers` file (`principal [options] ssh-ed25519 KEY`,
//! options `namespaces="…"`, `valid-after=…`, `valid-before=…`) and a revocation list of key
//! fingerprints, one per line. Both are plain files that `ssh-keygen -Y verify -f` reads too.

use ssh_key::{HashAlg, PublicKey};
use std::path::Path;

/// Who signed, once a signature verified and the store authorized its key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signer {
    pub principal: String,
    pub fingerprint: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TrustError {
    #[error("key {0} is not in the trust store")]
    Unknown(String),
    #[error("key {0} is revoked")]
    Revoked(String),
    #[error("key {fingerprint} may not sign in namespace {namespace}")]
    Namespace { fingerprint: String, namespace: String },
    #[error("key {fingerprint} is outside its validity window ({window})")]
    Window { fingerprint: String, window: String },
    #[error("trust store {file} line {line}: {reason}")]
    Parse { file: String, line: usize, reason: String },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub principals: String,
    pub namespaces: Option<Vec<String>>,
    pub valid_after_ms: Option<i64>,
    pub valid_before_ms: Option<i64>,
    pub key: PublicKey,
    /// The line as written, so rewriting the file keeps it.
    pub line: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustStore {
    pub entries: Vec<Entry>,
    pub revoked: Vec<String>,
}

/// `YYYYMMDD[HHMM[SS]]` (UTC, as ssh-keygen takes it) → Unix ms.
fn ssh_time(s: &str) -> Option<i64> {
    let s = s.trim_end_matches('Z');
    if !matches!(s.len(), 8 | 12 | 14) || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n = |a: usize, b: usize| s.get(a..b).map_or(Some(0), |x| x.parse::<u8>().ok());
    let year: i32 = s[..4].parse().ok()?;
    let month = time::Month::try_from(n(4, 6)?).ok()?;
    let date = time::Date::from_calendar_date(year, month, n(6, 8)?).ok()?;
    let t = time::Time::from_hms(n(8, 10)?, n(10, 12)?, n(12, 14)?).ok()?;
    Some(date.with_time(t).assume_utc().unix_timestamp() * 1000)
}

/// Splits an allowed_signers line into fields, keeping quoted option values whole.
fn fields(line: &str) -> Vec<String> {
    let (mut out, mut cur, mut quoted) = (Vec::new(), String::new(), false);
    for c in line.chars() {
        match c {
            '"' => {
                quoted = !quoted;
                cur.push(c);
            }
            c if c.is_whitespace() && !quoted => {
                if !cur.is_empty() {
                    out.push(std::mem::take(&mut cur));
                }
            }
            c => cur.push(c),
        }
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

/// Splits `a="x,y",b=z` on the commas outside quotes.
fn split_options(s: &str) -> Vec<String> {
    let (mut out, mut cur, mut quoted) = (Vec::new(), String::new(), false);
    for c in s.chars() {
        match c {
            '"' => {
                quoted = !quoted;
                cur.push(c);
            }
            ',' if !quoted => out.push(std::mem::take(&mut cur)),
            c => cur.push(c),
        }
    }
    out.push(cur);
    out.into_iter().filter(|o| !o.is_empty()).collect()
}

pub fn parse_line(line: &str, file: &str, n: usize) -> Result<Option<Entry>, TrustError> {
    let err = |reason: String| TrustError::Parse { file: file.to_owned(), line: n, reason };
    let t = line.trim();
    if t.is_empty() || t.starts_with('#') {
        return Ok(None);
    }
    let f = fields(t);
    let key_at = f.iter().position(|x| x.starts_with("ssh-")).ok_or_else(|| err("no key type (ssh-ed25519)".into()))?;
    if key_at == 0 || key_at + 1 >= f.len() {
        return Err(err("expected: principals [options] ssh-ed25519 KEY".into()));
    }
    let key =
        PublicKey::from_openssh(&format!("{} {}", f[key_at], f[key_at + 1])).map_err(|e| err(format!("key: {e}")))?;
    let mut entry = Entry {
        principals: f[0].clone(),
        namespaces: None,
        valid_after_ms: None,
        valid_before_ms: None,
        key,
        line: t.to_owned(),
    };
    for opts in &f[1..key_at] {
        for opt in split_options(opts).iter().map(String::as_str) {
            let (k, v) = opt.split_once('=').map_or((opt, ""), |(k, v)| (k, v.trim_matches('"')));
            match k {
                "namespaces" => entry.namespaces = Some(v.split(',').map(str::to_owned).collect()),
                "valid-after" => {
                    entry.valid_after_ms = Some(ssh_time(v).ok_or_else(|| err(format!("valid-after {v:?}")))?)
                }
                "valid-before" => {
                    entry.valid_before_ms = Some(ssh_time(v).ok_or_else(|| err(format!("valid-before {v:?}")))?)
                }
                "cert-authority" => return Err(err("cert-authority entries are not supported".into())),
                other => return Err(err(format!("unknown option {other:?}"))),
            }
        }
    }
    Ok(Some(entry))
}

/// Appends a trusted signer to an `allowed_signers` file (written atomically): an Ed25519 key,
/// a one-word principal, its namespaces (comma-separated) and an optional `valid-before`.
/// Returns the key's fingerprint.
pub fn append_signer(
    signers: &Path,
    principal: &str,
    key: &PublicKey,
    namespaces: &str,
    valid_before: Option<&str>,
) -> Result<String, String> {
    if key.algorithm() != ssh_key::Algorithm::Ed25519 {
        return Err("only ssh-ed25519 keys are trusted".into());
    }
    if principal.is_empty() || principal.contains(char::is_whitespace) {
        return Err("the principal must be one word".into());
    }
    let mut options = vec![format!("namespaces=\"{namespaces}\"")];
    if let Some(vb) = valid_before {
        options.push(format!("valid-before=\"{vb}\""));
    }
    let line = format!("{principal} {} {}", options.join(","), key.to_openssh().map_err(|e| e.to_string())?);
    parse_line(&line, "new entry", 1).map_err(|e| e.to_string())?;
    let mut current = std::fs::read_to_string(signers).unwrap_or_default();
    if !current.is_empty() && !current.ends_with('\n') {
        current.push('\n');
    }
    current.push_str(&line);
    current.push('\n');
    crate::fsutil::write_file_atomic(signers, current.as_bytes(), 0o644)
        .map_err(|e| format!("write {}: {e}", signers.display()))?;
    Ok(key.fingerprint(HashAlg::Sha256).to_string())
}

impl TrustStore {
    /// Reads `allowed_signers` and, if present, `revoked` from `dir`.
    pub fn load(dir: &Path) -> Result<TrustStore, TrustError> {
        Self::load_files(&dir.join("allowed_signers"), Some(&dir.join("revoked")))
    }

    pub fn load_files(signers: &Path, revoked: Option<&Path>) -> Result<TrustStore, TrustError> {
        let text = std::fs::read_to_string(signers).unwrap_or_default();
        let name = signers.display().to_string();
        let mut store = TrustStore::default();
        for (i, line) in text.lines().enumerate() {
            if let Some(e) = parse_line(line, &name, i + 1)? {
                store.entries.push(e);
            }
        }
        if let Some(r) = revoked {
            store.revoked = std::fs::read_to_string(r)
                .unwrap_or_default()
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty() && !l.starts_with('#'))
                .map(str::to_owned)
                .collect();
        }
        Ok(store)
    }

    /// May `key` sign in `namespace` at `now_ms`? Returns the signer if so.
    pub fn authorize(&self, key: &PublicKey, namespace: &str, now_ms: i64) -> Result<Signer, TrustError> {
        let fingerprint = key.fingerprint(HashAlg::Sha256).to_string();
        if self.revoked.contains(&fingerprint) {
            return Err(TrustError::Revoked(fingerprint));
        }
        let mine: Vec<&Entry> = self.entries.iter().filter(|e| e.key.key_data() == key.key_data()).collect();
        if mine.is_empty() {
            return Err(TrustError::Unknown(fingerprint));
        }
        let in_ns: Vec<&&Entry> =
            mine.iter().filter(|e| e.namespaces.as_ref().is_none_or(|n| n.iter().any(|x| x == namespace))).collect();
        if in_ns.is_empty() {
            return Err(TrustError::Namespace { fingerprint, namespace: namespace.to_owned() });
        }
        let live = in_ns
            .iter()
            .find(|e| e.valid_after_ms.is_none_or(|a| now_ms >= a) && e.valid_before_ms.is_none_or(|b| now_ms < b));
        match live {
            Some(e) => Ok(Signer { principal: e.principals.clone(), fingerprint }),
            None => {
                let e = in_ns[0];
                let window = format!(
                    "valid-after {}, valid-before {}",
                    e.valid_after_ms.map_or("-".into(), crate::clock::rfc3339),
                    e.valid_before_ms.map_or("-".into(), crate::clock::rfc3339)
                );
                Err(TrustError::Window { fingerprint, window })
            }
        }
    }
}
