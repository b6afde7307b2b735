//! Walking a tar stream from an untrusted bundle. The tar crate, left to itself, reads a GNU
//! long-name or PAX record whole into memory before the caller sees anything, so a record
//! declaring gigabytes is an allocation we never chose. Here the archive is read raw and the two
//! extensions a payload may use are resolved by us, each bounded *before* a byte of it is read:
//! a GNU long name (at most a payload path) and a PAX record (at most 64 KiB, only the keys
//! below; a `size` that disagrees with the header is refused rather than trusted). Every other
//! extension — long links, global headers, sparse maps — reaches the caller as its own entry
//! type, and callers accept only regular files and directories.

use crate::domain::bundles::format::PATH_BYTES_MAX;
use std::io::Read;

/// What a walk says of bytes that are not a valid tar, without quoting any of them.
const NOT_A_TAR: &str = "not a valid tar archive (a bundle envelope is a plain tar)";

/// A PAX extended header at most.
pub const PAX_BYTES_MAX: u64 = 64 * 1024;

/// PAX keys that may appear: the name, the size (checked against the header) and metadata we
/// ignore (times and owners are fixed by the sealed store, not taken from the archive).
const PAX_KEYS: [&str; 9] = ["path", "size", "mtime", "atime", "ctime", "uid", "gid", "uname", "gname"];

/// An entry with its resolved name (trailing `/` of directories removed).
pub struct Named<'a, R: Read> {
    pub name: String,
    pub entry: tar::Entry<'a, R>,
}

/// The entries of `archive`, with long names resolved under the bounds above.
pub fn entries<R: Read>(archive: &mut tar::Archive<R>) -> Result<Entries<'_, R>, String> {
    Ok(Entries { inner: archive.entries().map_err(|e| e.to_string())?.raw(true), done: false })
}

pub struct Entries<'a, R: Read> {
    inner: tar::Entries<'a, R>,
    done: bool,
}

impl<'a, R: Read> Iterator for Entries<'a, R> {
    type Item = Result<Named<'a, R>, String>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        let item = self.next_named().transpose();
        if matches!(item, Some(Err(_))) {
            self.done = true;
        }
        item
    }
}

impl<'a, R: Read> Entries<'a, R> {
    fn next_named(&mut self) -> Result<Option<Named<'a, R>>, String> {
        let mut long_name: Option<Vec<u8>> = None;
        let mut pax_path: Option<Vec<u8>> = None;
        let mut pax_size: Option<u64> = None;
        loop {
            let Some(entry) = self.inner.next() else {
                if long_name.is_some() || pax_path.is_some() || pax_size.is_some() {
                    return Err("an extension record describes no entry (the archive ends after it)".into());
                }
                return Ok(None);
            };
            // The tar crate's messages quote header fields (a path is a file's first bytes):
            // not repeated, since this may not be a bundle at all.
            let mut entry = entry.map_err(|_| NOT_A_TAR.to_owned())?;
            let kind = entry.header().entry_type();
            let size = entry.header().entry_size().map_err(|_| NOT_A_TAR.to_owned())?;
            if kind.is_gnu_longname() {
                if long_name.is_some() {
                    return Err("two GNU long-name records describe the same entry".into());
                }
                if size > PATH_BYTES_MAX as u64 + 1 {
                    return Err(format!(
                        "a GNU long-name record of {size} bytes is longer than a path may be ({PATH_BYTES_MAX})"
                    ));
                }
                let mut name = read_exact(&mut entry, size)?;
                if name.last() == Some(&0) {
                    name.pop();
                }
                long_name = Some(name);
                continue;
            }
            if kind.is_pax_local_extensions() {
                if pax_path.is_some() || pax_size.is_some() {
                    return Err("two PAX records describe the same entry".into());
                }
                if size > PAX_BYTES_MAX {
                    return Err(format!("a PAX record of {size} bytes is larger than {PAX_BYTES_MAX}"));
                }
                let bytes = read_exact(&mut entry, size)?;
                for ext in tar::PaxExtensions::new(&bytes) {
                    let ext = ext.map_err(|e| format!("PAX record: {e}"))?;
                    let key = ext.key().map_err(|_| "PAX record: a key is not UTF-8".to_owned())?;
                    match key {
                        "path" => pax_path = Some(ext.value_bytes().to_vec()),
                        "size" => {
                            let v = ext.value().ok().and_then(|v| v.parse::<u64>().ok());
                            pax_size = Some(v.ok_or("PAX record: size is not a number")?);
                        }
                        k if PAX_KEYS.contains(&k) => {}
                        _ => {
                            return Err(
                                "PAX record: a key other than path and size is not supported in a bundle".into()
                            );
                        }
                    }
                }
                continue;
            }
            if let Some(declared) = pax_size
                && declared != size
            {
                return Err(format!("a PAX size of {declared} bytes disagrees with the header's {size}"));
            }
            let raw = match pax_path.or(long_name) {
                Some(n) => n,
                None => entry.path_bytes().into_owned(),
            };
            let name = String::from_utf8(raw).map_err(|_| "an entry name is not UTF-8".to_owned())?;
            let name = name.trim_end_matches('/').to_owned();
            return Ok(Some(Named { name, entry }));
        }
    }
}

fn read_exact<R: Read>(entry: &mut tar::Entry<'_, R>, size: u64) -> Result<Vec<u8>, String> {
    let mut buf = Vec::with_capacity(size as usize);
    entry.take(size).read_to_end(&mut buf).map_err(|e| e.to_string())?;
    if buf.len() as u64 != size {
        return Err("the archive ends inside an extension record".into());
    }
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(tar_bytes: &[u8]) -> Result<Vec<(String, u64)>, String> {
        let mut archive = tar::Archive::new(tar_bytes);
        entries(&mut archive)?.map(|n| n.map(|n| (n.name, n.entry.size()))).collect()
    }

    fn file(b: &mut tar::Builder<Vec<u8>>, path: &str, data: &[u8]) {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        b.append_data(&mut h, path, data).unwrap();
    }

    #[test]
    fn long_names_and_pax_paths_resolve_within_their_bounds() {
        let long = format!("{}/x", "d".repeat(300));
        let mut b = tar::Builder::new(Vec::new());
        file(&mut b, &long, b"1");
        b.append_pax_extensions([("path", "pax/name".as_bytes()), ("mtime", b"0".as_slice())]).unwrap();
        file(&mut b, "short", b"22");
        file(&mut b, "plain", b"");
        let got = names(&b.into_inner().unwrap()).unwrap();
        assert_eq!(got, vec![(long, 1), ("pax/name".into(), 2), ("plain".into(), 0)]);
    }

    #[test]
    fn pax_keys_outside_the_list_and_dangling_records_are_refused() {
        let mut b = tar::Builder::new(Vec::new());
        b.append_pax_extensions([("GNU.sparse.map", b"0,1".as_slice())]).unwrap();
        file(&mut b, "a", b"1");
        let err = names(&b.into_inner().unwrap()).unwrap_err();
        assert!(err.contains("a key other than path and size is not supported"), "{err}");
        assert!(!err.contains("GNU.sparse.map"), "the key is not quoted: {err}");

        let mut b = tar::Builder::new(Vec::new());
        b.append_pax_extensions([("path", b"a".as_slice())]).unwrap();
        let err = names(&b.into_inner().unwrap()).unwrap_err();
        assert!(err.contains("describes no entry"), "{err}");
    }
}
