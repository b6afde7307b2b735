//! `stella export` (through the daemon, which writes the pack on its host) and `stella audit …`
//! (offline: no daemon, no appliance store).

use crate::cli::args::{AuditCmd, ExportArgs, Format, Global};
use crate::cli::output::{self, s};
use crate::cli::target;
use crate::exit::CliError;
use serde_json::json;
use std::io::IsTerminal;

pub async fn export(g: &Global, a: ExportArgs) -> Result<(), CliError> {
    let client = target::client(g)?;
    let out = if a.out.is_absolute() {
        a.out.clone()
    } else {
        std::env::current_dir().map_err(|e| CliError::Other(e.to_string()))?.join(&a.out)
    };
    let id = format!("export-{}", crate::ids::random_hex(8));
    let body = json!({ "out": out, "from": a.from, "to": a.to, "signals": a.signals, "tar": a.tar, "progressId": id });
    let request = client.post("/api/v1/orchestrator/exports", &body);
    let reply = if std::io::stderr().is_terminal() && g.format == Format::Text {
        crate::progress::follow(&client, &id, request).await
    } else {
        request.await
    };
    let v = reply?.ok()?.json()?;
    output::print(g.format, &v, |v| {
        let m = &v["manifest"];
        let f = &m["files"];
        let count = |name: &str| f[name]["records"].as_u64().map_or("-".to_owned(), |n| n.to_string());
        format!(
            "wrote {} ({} → {})\n  ledger: {} entries (seq {}..{})\n  logs: {} records, metrics: {} series, traces: {} spans\n  signed by {}\n",
            s(&v["out"]),
            s(&m["window"]["from"]),
            s(&m["window"]["to"]),
            s(&m["ledger"]["count"]),
            s(&m["ledger"]["firstSeq"]),
            s(&m["ledger"]["lastSeq"]),
            count("logs.ndjson"),
            count("metrics.ndjson"),
            count("traces.ndjson"),
            s(&m["keyFingerprint"])
        )
    });
    Ok(())
}

pub fn audit(g: &Global, cmd: AuditCmd) -> Result<(), CliError> {
    match cmd {
        AuditCmd::Verify { pack, signers } => {
            let signers = match signers {
                Some(file) => file,
                None => {
                    let local = target::layout(g).trust_dir().join("allowed_signers");
                    if !local.exists() {
                        return Err(CliError::Invalid(format!(
                            "no trust store here ({}): pass --signers FILE, an allowed_signers file with the \
                             appliance's key; on the appliance, `stella keys export-appliance --allowed-signers \
                             > allowed_signers` writes it",
                            local.display()
                        )));
                    }
                    local
                }
            };
            let trust = crate::trust::store::TrustStore::load_files(&signers, None)
                .map_err(|e| CliError::Invalid(e.to_string()))?;
            let report = crate::audit::verify::verify(&pack, &trust, crate::clock::SystemClock.now())
                .map_err(|e| CliError::VerifyFailed(format!("{}: {e}", pack.display())))?;
            output::print(g.format, &report, |r| {
                format!(
                    "ok: {} signed by {} ({}); window {} → {}; ledger seq {}..{} ({} entries, chain verified); {} files, every digest verified\n",
                    pack.display(),
                    s(&r["signer"]),
                    s(&r["fingerprint"]),
                    s(&r["manifest"]["window"]["from"]),
                    s(&r["manifest"]["window"]["to"]),
                    s(&r["manifest"]["ledger"]["firstSeq"]),
                    s(&r["manifest"]["ledger"]["lastSeq"]),
                    s(&r["manifest"]["ledger"]["count"]),
                    s(&r["files"])
                )
            });
            Ok(())
        }
        other => crate::cli::audit::cli(g, other),
    }
}
