//! Export packs and the offline audit: a pack verifies with `stella audit verify` and by hand
//! (`sha256sum --strict -c`, `ssh-keygen -Y verify`); every OTLP line parses as the request it
//! claims; tampering of each kind is named with its file and line or sequence; packs imported
//! into an audit store link, and a missing pack, a truncated tail or a fork is reported.

use crate::support::*;
use serde_json::Value;
use std::path::{Path, PathBuf};

const NS: &str = "stella-export@stella.invalid";

fn sh(dir: &Path, script: &str) -> std::process::Output {
    std::process::Command::new("bash").arg("-c").arg(script).current_dir(dir).output().unwrap()
}

fn export(app: &TestAppliance, name: &str, extra: &[&str]) -> PathBuf {
    let out = app.root().join("packs").join(name);
    std::fs::create_dir_all(out.parent().unwrap()).unwrap();
    let mut args = vec!["export", "--out", out.to_str().unwrap()];
    args.extend_from_slice(extra);
    let o = app.stella(&args);
    assert!(o.status.success(), "{}", stderr(&o));
    out
}

fn audit(app: &TestAppliance, args: &[&str]) -> std::process::Output {
    app.stella(&[&["audit"], args].concat())
}

fn signers(app: &TestAppliance) -> String {
    app.root().join("etc/stella/keys/allowed_signers").display().to_string()
}

fn lines(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

fn is_hex(v: &Value, len: usize) -> bool {
    v.as_str().is_some_and(|s| s.len() == len && s.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()))
}

fn is_u64_string(v: &Value) -> bool {
    v.as_str().is_some_and(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pack_verifies_with_stella_and_by_hand_and_its_otlp_lines_parse() {
    let app = TestAppliance::start();
    run_sample(&app.socket_client()).await;
    let pack = export(&app, "p1", &[]);
    let ok = audit(&app, &["verify", pack.to_str().unwrap()]);
    assert!(ok.status.success(), "{}", stderr(&ok));
    assert!(stdout(&ok).contains("chain verified"), "{}", stdout(&ok));
    let by_hand = sh(
        &pack,
        &format!(
            "sha256sum --strict -c SHA256SUMS && ssh-keygen -Y verify -f {} -I appliance -n {NS} -s SHA256SUMS.sig < SHA256SUMS",
            signers(&app)
        ),
    );
    assert!(
        by_hand.status.success(),
        "{}{}",
        String::from_utf8_lossy(&by_hand.stdout),
        String::from_utf8_lossy(&by_hand.stderr)
    );

    let tar = export(&app, "p2.tar", &["--tar", "--signals", "ledger,traces"]);
    let ok = audit(&app, &["verify", tar.to_str().unwrap(), "--signers", &signers(&app)]);
    assert!(ok.status.success(), "{}", stderr(&ok));
    let members = sh(app.root(), &format!("tar -tf {}", tar.display()));
    assert_eq!(
        String::from_utf8_lossy(&members.stdout),
        "SHA256SUMS\nSHA256SUMS.sig\nmanifest.json\nledger.ndjson\ntraces.ndjson\n"
    );

    // Traces: one request per run, every span of it in the run's trace, ids in hex, times as
    // decimal strings; the run span is the root of the step spans, attempts hang from steps.
    let traces = lines(&pack.join("traces.ndjson"));
    assert_eq!(traces.len(), 1, "one trace per run");
    let spans = traces[0]["resourceSpans"][0]["scopeSpans"][0]["spans"].as_array().unwrap();
    let trace_id = stella::telemetry::otlp::trace_id("run-1");
    assert!(spans.iter().all(|s| s["traceId"] == trace_id.as_str() && is_hex(&s["spanId"], 16)));
    assert!(spans.iter().all(|s| is_u64_string(&s["startTimeUnixNano"]) && is_u64_string(&s["endTimeUnixNano"])));
    let count = |name: &str| spans.iter().filter(|s| s["name"] == name).count();
    assert_eq!((count("run"), count("step"), count("attempt")), (1, 6, 6), "{spans:?}");
    let run_span = spans.iter().find(|s| s["name"] == "run").unwrap()["spanId"].clone();
    assert!(spans.iter().filter(|s| s["name"] == "step").all(|s| s["parentSpanId"] == run_span));
    let notify = spans
        .iter()
        .find(|s| s["name"] == "attempt" && s["attributes"].to_string().contains("\"notify\""))
        .expect("the plugin step's attempt");
    let attrs = notify["attributes"].to_string();
    assert!(attrs.contains("stella.plugin.digest") && attrs.contains("stella.worker"), "{attrs}");

    let snapshots = lines(&pack.join("metrics.ndjson"));
    for line in &snapshots {
        let metrics = line["resourceMetrics"][0]["scopeMetrics"][0]["metrics"].as_array().unwrap();
        for m in metrics {
            let points = ["gauge", "sum", "histogram"].iter().find_map(|k| m[k]["dataPoints"].as_array()).unwrap();
            assert!(points.iter().all(|p| is_u64_string(&p["timeUnixNano"])), "{m}");
        }
    }
    let last = snapshots.last().expect("the export's own snapshot at least").to_string();
    assert!(
        last.contains("\"orchestrator_queue_depth\"") && last.contains("\"orchestrator_lease_expirations_total\""),
        "{last}"
    );
    let logs = lines(&pack.join("logs.ndjson"));
    assert!(!logs.is_empty());
    for line in logs {
        for r in line["resourceLogs"][0]["scopeLogs"][0]["logRecords"].as_array().unwrap() {
            assert!(
                is_u64_string(&r["timeUnixNano"])
                    && r["severityNumber"].is_u64()
                    && r["body"]["stringValue"].is_string()
            );
        }
    }
    let manifest: Value = serde_json::from_slice(&std::fs::read(pack.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(manifest["ledger"]["firstSeq"], 1);
    assert_eq!(manifest["files"]["ledger.ndjson"]["lines"], manifest["ledger"]["count"]);
}

/// Copies `pack` to `name`, applies `edit` in it (a bash script), verifies: it must fail, exit 8,
/// naming `needles`.
fn tampered(app: &TestAppliance, pack: &Path, name: &str, edit: &str, needles: &[&str]) {
    let copy = app.root().join("packs").join(name);
    assert!(sh(app.root(), &format!("cp -r {} {}", pack.display(), copy.display())).status.success());
    let edited = sh(&copy, edit);
    assert!(edited.status.success(), "{name}: {}", String::from_utf8_lossy(&edited.stderr));
    let out = audit(app, &["verify", copy.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(8), "{name}: {}", stderr(&out));
    for n in needles {
        assert!(stderr(&out).contains(n), "{name}: expected {n:?} in {}", stderr(&out));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tampering_is_named_with_its_file_and_line_or_sequence() {
    let app = TestAppliance::start();
    run_sample(&app.socket_client()).await;
    let pack = export(&app, "p", &[]);
    let other = app.root().join("other_ed25519");
    stella::trust::keys::generate(&other, "intruder").unwrap();
    tampered(
        &app,
        &pack,
        "byte",
        "sed -i '10s/\"kind\":\"/\"kind\":\"X/' ledger.ndjson",
        &["ledger.ndjson", "line 10", "seq 10"],
    );
    tampered(
        &app,
        &pack,
        "removed",
        "sed -i '7d' ledger.ndjson",
        &["ledger.ndjson", "line 7", "expected seq 7, found seq 8"],
    );
    tampered(
        &app,
        &pack,
        "swapped",
        "sed -n '5p' ledger.ndjson > l5 && sed -i '5d' ledger.ndjson && sed -i '5r l5' ledger.ndjson && rm l5",
        &["ledger.ndjson", "line 5", "expected seq 5, found seq 6"],
    );
    tampered(&app, &pack, "traces", "sed -i '1s/\"run\"/\"nur\"/' traces.ndjson", &["traces.ndjson", "lines 1-1024"]);
    tampered(&app, &pack, "added", "echo '{}' > extra.ndjson", &["unexpected \"extra.ndjson\""]);
    tampered(
        &app,
        &pack,
        "added-known",
        "rm logs.ndjson && touch logs.ndjson && sed -i '/logs.ndjson/d' SHA256SUMS",
        &["SHA256SUMS.sig"],
    );
    tampered(&app, &pack, "removed-file", "rm metrics.ndjson", &["metrics.ndjson is listed in SHA256SUMS but missing"]);
    tampered(
        &app,
        &pack,
        "resigned",
        &format!(
            "sed -i 's/\"toolVersion\"/\"toolVersion0\"/' manifest.json && sha256sum ledger.ndjson logs.ndjson manifest.json metrics.ndjson traces.ndjson > SHA256SUMS && rm SHA256SUMS.sig && ssh-keygen -Y sign -q -f {} -n {NS} SHA256SUMS",
            other.display()
        ),
        &["SHA256SUMS.sig", "is not in the trust store"],
    );
}

/// Verifies and imports `packs` into the audit store at `store`.
fn import(app: &TestAppliance, store: &Path, packs: &[&Path]) -> std::process::Output {
    let mut args = vec!["import".to_owned(), "--audit-store".to_owned(), store.display().to_string()];
    args.extend(packs.iter().map(|p| p.display().to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    audit(app, &args)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn packs_link_and_a_gap_a_truncated_tail_or_a_fork_is_reported() {
    let app = TestAppliance::start();
    run_sample(&app.socket_client()).await;
    let p1 = export(&app, "p1", &[]);
    run_sample(&app.socket_client()).await;
    let p2 = export(&app, "p2", &[]);
    run_sample(&app.socket_client()).await;
    let p3 = export(&app, "p3", &[]);

    let store = app.root().join("audit-a.redb");
    let ok = import(&app, &store, &[&p2, &p1]);
    assert!(ok.status.success(), "{}", stderr(&ok));
    assert!(stdout(&ok).contains("links to seq"), "{}", stdout(&ok));
    let again = import(&app, &store, &[&p2]);
    assert!(again.status.success(), "an identical overlap is accepted: {}", stderr(&again));
    assert!(stdout(&again).contains("0 new entries"), "{}", stdout(&again));
    let runs = audit(&app, &["runs", "--audit-store", store.to_str().unwrap()]);
    assert!(stdout(&runs).contains("run-2") && stdout(&runs).contains("succeeded"), "{}", stdout(&runs));
    let report = audit(&app, &["--format", "json", "report", "--audit-store", store.to_str().unwrap()]);
    let report: Value = serde_json::from_slice(&report.stdout).unwrap();
    let decisions = report["decisions"].as_array().unwrap();
    let started = decisions.iter().filter(|d| d["action"] == "started run").count();
    assert_eq!(started, 2, "who started each run imported (p1, p2): {report}");
    assert!(decisions.iter().any(|d| d["action"] == "exported"), "{report}");
    assert_eq!(report["packs"].as_array().unwrap().len(), 3);

    let gap_store = app.root().join("audit-b.redb");
    let gap = import(&app, &gap_store, &[&p1, &p3]);
    assert_eq!(gap.status.code(), Some(8), "{}", stderr(&gap));
    assert!(stderr(&gap).contains("gap: seq"), "the missing middle pack is reported: {}", stderr(&gap));

    // A dishonest appliance re-signs p1 without its last entry; p1 alone verifies, but p2 no
    // longer links: the truncated tail is caught by the next pack.
    let manifest: Value = serde_json::from_slice(&std::fs::read(p1.join("manifest.json")).unwrap()).unwrap();
    let last = manifest["ledger"]["lastSeq"].as_u64().unwrap();
    let cut = app.root().join("packs/p1-cut");
    let key = app.root().join("var/lib/stella/keys/appliance_ed25519");
    let script = format!(
        "cp -r {p1} {cut} && cd {cut} && sed -i '$d' ledger.ndjson && python3 - <<'PY'
import json,hashlib
m=json.load(open('manifest.json'))
lines=open('ledger.ndjson','rb').read().splitlines(keepends=True)
last=json.loads(lines[-1])
m['ledger'].update(count=len(lines), lastSeq=last['seq'], lastHash=last['hash'])
f=m['files']['ledger.ndjson']
f.update(lines=len(lines), records=len(lines), bytes=sum(map(len,lines)), blocks=[hashlib.sha256(b''.join(lines[i:i+1024])).hexdigest() for i in range(0,len(lines),1024)])
open('manifest.json','w').write(json.dumps(m,sort_keys=True,separators=(',',':')))
PY
sha256sum ledger.ndjson logs.ndjson manifest.json metrics.ndjson traces.ndjson > SHA256SUMS && rm SHA256SUMS.sig && ssh-keygen -Y sign -q -f {key} -n {NS} SHA256SUMS",
        p1 = p1.display(),
        cut = cut.display(),
        key = key.display()
    );
    let made = sh(app.root(), &script);
    assert!(made.status.success(), "{}", String::from_utf8_lossy(&made.stderr));
    assert!(audit(&app, &["verify", cut.to_str().unwrap()]).status.success(), "the cut pack is validly signed");
    let cut_store = app.root().join("audit-c.redb");
    assert!(import(&app, &cut_store, &[&cut]).status.success());
    let caught = import(&app, &cut_store, &[&p2]);
    assert_eq!(caught.status.code(), Some(8), "{}", stderr(&caught));
    assert!(stderr(&caught).contains(&format!("gap: seq {last}..{last}")), "{}", stderr(&caught));
}
