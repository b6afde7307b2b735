//! `stella bundle build|verify` (offline); `import|list|show|remove` and `verify --installed`
//! through the daemon.

use crate::cli::args::{BundleCmd, Format, Global};
use crate::cli::output::{self, s};
use crate::cli::target;
use crate::domain::bundles::format::{Kind, ZSTD_LEVEL};
use crate::domain::bundles::{build, verify};
use crate::exit::CliError;
use crate::trust::store::TrustStore;
use serde_json::json;
use std::io::IsTerminal;

pub fn run(g: &Global, cmd: BundleCmd) -> Result<(), CliError> {
    match cmd {
        BundleCmd::Build { dir, kind, name, bundle_version, key, out } => {
            let kind = Kind::parse(&kind).ok_or_else(|| {
                CliError::Invalid(format!("--kind {kind:?}: expected plugin, dag, trust, release or artifact"))
            })?;
            if !crate::config::valid_name(&name) {
                return Err(CliError::Invalid(format!("--name {name:?}: expected 1-64 of a-z, 0-9, '-', '_'")));
            }
            let key = crate::trust::keys::read_private(&key).map_err(CliError::Invalid)?;
            let manifest = build::build_to(&dir, kind, &name, &bundle_version, &key, &out, ZSTD_LEVEL)
                .map_err(CliError::Invalid)?;
            let v = json!({ "bundle": out, "name": name, "version": bundle_version, "files": manifest.files.len(), "payloadSha256": manifest.payload.sha256 });
            output::print(g.format, &v, |v| {
                format!(
                    "built {} ({} {}, {} files)\n",
                    s(&v["bundle"]),
                    s(&v["name"]),
                    s(&v["version"]),
                    s(&v["files"])
                )
            });
            Ok(())
        }
        BundleCmd::Verify { file: Some(file), signers, installed: false } => {
            let trust = match &signers {
                Some(f) => TrustStore::load_files(f, None),
                None => TrustStore::load(&target::layout(g).trust_dir()),
            }
            .map_err(|e| CliError::Invalid(e.to_string()))?;
            let now = crate::clock::SystemClock.now();
            let v = verify::verify(&file, &trust, now)
                .map_err(|e| CliError::VerifyFailed(format!("{}: {e}", file.display())))?;
            let out = json!({ "ok": true, "name": v.manifest.name, "version": v.manifest.version, "kind": v.manifest.kind,
                              "signer": v.signer.principal, "fingerprint": v.signer.fingerprint, "files": v.files, "unpackedBytes": v.unpacked_bytes });
            output::print(g.format, &out, |v| {
                format!(
                    "ok: {} {} ({}) signed by {} ({}); signature, digests, manifest and {} payload entries verified\n",
                    s(&v["name"]),
                    s(&v["version"]),
                    s(&v["kind"]),
                    s(&v["signer"]),
                    s(&v["fingerprint"]),
                    s(&v["files"])
                )
            });
            Ok(())
        }
        _ => unreachable!("bundle import, list, show and remove go through the daemon"),
    }
}

/// `bundle import FILE` and `bundle list`, through the daemon.
pub async fn remote(g: &Global, cmd: BundleCmd) -> Result<(), CliError> {
    let client = target::client(g)?;
    let v = match cmd {
        BundleCmd::Import { file, allow_downgrade } => {
            // The bundle's bytes go to the daemon: it opens no path a client names (but its inbox).
            let id = format!("import-{}", crate::ids::random_hex(8));
            let name: String = file
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default()
                .chars()
                .map(|c| if c.is_ascii_alphanumeric() || "._-".contains(c) { c } else { '_' })
                .collect();
            let path = format!(
                "/api/v1/orchestrator/bundles/upload?allowDowngrade={allow_downgrade}&progressId={id}&name={name}"
            );
            let import = client.upload(&path, &file);
            let reply = if std::io::stderr().is_terminal() && g.format == Format::Text {
                crate::progress::follow(&client, &id, import).await
            } else {
                import.await
            };
            reply?.ok()?.json()?
        }
        BundleCmd::Verify { installed: true, .. } => {
            let v = client.post("/api/v1/orchestrator/bundles/verify-installed", &json!({})).await?.ok()?.json()?;
            output::print(g.format, &v, |v| {
                v["bundles"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|b| {
                        if b["ok"] == true {
                            format!("ok: {}\n", s(&b["name"]))
                        } else {
                            format!("QUARANTINED: {}: {}\n", s(&b["name"]), s(&b["reason"]))
                        }
                    })
                    .collect()
            });
            let bad = v["bundles"].as_array().into_iter().flatten().filter(|b| b["ok"] == false).count();
            return if bad == 0 {
                Ok(())
            } else {
                Err(CliError::VerifyFailed(format!("{bad} installed bundle(s) quarantined")))
            };
        }
        BundleCmd::Remove { id } => {
            let v = client
                .send(hyper::Method::DELETE, &format!("/api/v1/orchestrator/bundles/{id}"), None)
                .await?
                .ok()?
                .json()?;
            output::print(g.format, &v, |v| {
                format!(
                    "removed {} {} ({}); sealed copy {} deleted\n",
                    s(&v["removed"]),
                    s(&v["version"]),
                    s(&v["kind"]),
                    s(&v["digest"])
                )
            });
            return Ok(());
        }
        BundleCmd::Show { id } => {
            let v = client.get(&format!("/api/v1/orchestrator/bundles/{id}")).await?.ok()?.json()?;
            output::print(g.format, &v, |v| {
                let files: String = v["manifest"]["files"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|f| {
                        format!(
                            "  {:o} {:>10} {} {}\n",
                            f["mode"].as_u64().unwrap_or(0),
                            s(&f["size"]),
                            s(&f["sha256"]),
                            s(&f["path"])
                        )
                    })
                    .collect();
                format!(
                    "{} {} ({}) signed by {} ({})\nsealed at {}{}\n{}",
                    s(&v["name"]),
                    s(&v["version"]),
                    s(&v["kind"]),
                    s(&v["signer"]),
                    s(&v["fingerprint"]),
                    s(&v["sealedAt"]),
                    v["quarantined"].as_str().map(|q| format!("\nQUARANTINED: {q}")).unwrap_or_default(),
                    files
                )
            });
            return Ok(());
        }
        _ => client.get("/api/v1/orchestrator/bundles").await?.ok()?.json()?,
    };
    output::print(g.format, &v, |v| {
        if v["bundles"].is_array() {
            v["bundles"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|b| {
                    format!(
                        "{} {} ({}) {} signed by {}\n",
                        s(&b["name"]),
                        s(&b["version"]),
                        s(&b["kind"]),
                        s(&b["digest"]),
                        s(&b["signer"])
                    )
                })
                .collect()
        } else {
            format!(
                "imported {} {} ({}) signed by {}; sealed as {}\n",
                s(&v["name"]),
                s(&v["version"]),
                s(&v["kind"]),
                s(&v["signer"]),
                s(&v["digest"])
            )
        }
    });
    Ok(())
}
