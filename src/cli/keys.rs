//! `stella keys …`: offline key and trust-store management (no daemon needed). The trust store
//! is `<root>/etc/stella/keys/allowed_signers` plus `revoked`; the daemon reads them afresh for
//! every verification, so changes take effect without a restart.

use crate::cli::args::{Global, KeysCmd, TrustCmd};
use crate::cli::output::{self, s, table};
use crate::cli::target;
use crate::exit::CliError;
use crate::trust::{keys, store};
use serde_json::json;
use ssh_key::{HashAlg, PublicKey};

pub fn run(g: &Global, cmd: KeysCmd) -> Result<(), CliError> {
    let dir = target::layout(g).trust_dir();
    let signers = dir.join("allowed_signers");
    match cmd {
        KeysCmd::Generate { out } => {
            let fp = keys::generate(&out, "stella").map_err(CliError::Invalid)?;
            let v = json!({ "private": out, "public": format!("{}.pub", out.display()), "fingerprint": fp });
            output::print(g.format, &v, |v| {
                format!("{} ({})\npublic key: {}\n", s(&v["private"]), s(&v["fingerprint"]), s(&v["public"]))
            });
        }
        KeysCmd::Trust(TrustCmd::Add { pubkey, principal, namespaces, valid_before }) => {
            let text = std::fs::read_to_string(&pubkey)
                .map_err(|e| CliError::Invalid(format!("{}: {e}", pubkey.display())))?;
            let key = PublicKey::from_openssh(text.trim())
                .map_err(|e| CliError::Invalid(format!("{}: {e}", pubkey.display())))?;
            let fp = store::append_signer(&signers, &principal, &key, &namespaces, valid_before.as_deref())
                .map_err(|e| CliError::Invalid(format!("{}: {e}", pubkey.display())))?;
            output::print(g.format, &json!({ "principal": principal, "fingerprint": fp }), |v| {
                format!("trusted {} as {}\n", s(&v["fingerprint"]), s(&v["principal"]))
            });
        }
        KeysCmd::Trust(TrustCmd::List) => {
            let t = store::TrustStore::load(&dir).map_err(|e| CliError::Invalid(e.to_string()))?;
            let rows: Vec<serde_json::Value> = t
                .entries
                .iter()
                .map(|e| {
                    let fp = e.key.fingerprint(HashAlg::Sha256).to_string();
                    json!({ "principal": e.principals, "fingerprint": fp, "namespaces": e.namespaces,
                            "validBefore": e.valid_before_ms.map(crate::clock::rfc3339), "revoked": t.revoked.contains(&fp) })
                })
                .collect();
            let v = json!({ "keys": rows });
            output::print(g.format, &v, |v| {
                let rows: Vec<Vec<String>> = v["keys"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|k| {
                        vec![
                            s(&k["principal"]),
                            s(&k["fingerprint"]),
                            s(&k["namespaces"]),
                            s(&k["validBefore"]),
                            s(&k["revoked"]),
                        ]
                    })
                    .collect();
                table(&["PRINCIPAL", "FINGERPRINT", "NAMESPACES", "VALID BEFORE", "REVOKED"], &rows)
            });
        }
        KeysCmd::ExportAppliance { allowed_signers } => {
            let path = target::layout(g).appliance_key().with_extension("pub");
            let text = std::fs::read_to_string(&path).map_err(|e| {
                CliError::Invalid(format!("{}: {e} (is this the appliance, and has it started once?)", path.display()))
            })?;
            let key = PublicKey::from_openssh(text.trim())
                .map_err(|e| CliError::Invalid(format!("{}: {e}", path.display())))?;
            let fp = key.fingerprint(HashAlg::Sha256).to_string();
            let openssh = key.to_openssh().map_err(|e| CliError::Other(e.to_string()))?;
            let line = format!("appliance namespaces=\"{}\" {openssh}", crate::trust::sig::Namespace::Export.as_str());
            let v = json!({ "fingerprint": fp, "publicKey": openssh, "allowedSigners": line });
            output::print(g.format, &v, |v| {
                if allowed_signers {
                    format!("{}\n", s(&v["allowedSigners"]))
                } else {
                    format!("{}\n", s(&v["publicKey"]))
                }
            });
        }
        KeysCmd::Revoke { fingerprint } => {
            if !fingerprint.starts_with("SHA256:") {
                return Err(CliError::Invalid(format!(
                    "{fingerprint:?}: expected a SHA256:… fingerprint (stella keys trust list)"
                )));
            }
            let path = dir.join("revoked");
            let mut current = std::fs::read_to_string(&path).unwrap_or_default();
            if !current.lines().any(|l| l.trim() == fingerprint) {
                current.push_str(&format!("{fingerprint}\n"));
                crate::fsutil::write_file_atomic(&path, current.as_bytes(), 0o644)
                    .map_err(|e| CliError::Other(format!("write {}: {e}", path.display())))?;
            }
            output::print(g.format, &json!({ "revoked": fingerprint }), |v| format!("revoked {}\n", s(&v["revoked"])));
        }
    }
    Ok(())
}
