//! Bundles built by stella are reproducible and checkable by hand with `tar`,
//! `sha256sum --strict -c` and `ssh-keygen -Y verify`; an envelope re-signed with
//! `ssh-keygen -Y sign` by a trusted key verifies; tampered, unsigned, untrusted, swapped and
//! malformed envelopes are refused by `stella bundle verify` with exit 8 and their reason.

use crate::support::*;
use std::path::{Path, PathBuf};
use std::process::Command;

const NS: &str = "stella-bundle@stella.invalid";

/// Builds the `notify` DAG bundle (one step on the sample plugin) with `key` and imports it.
fn import_notify_dag(root: &Path, key: &Path) {
    let dag_dir = root.join("dag");
    std::fs::create_dir(&dag_dir).unwrap();
    std::fs::write(dag_dir.join("notify.toml"), "name = \"notify\"\n[steps.ping]\nplugin = \"sample-plugin\"\n")
        .unwrap();
    let dag_bundle = root.join("notify-1.bundle");
    let built = build_bundle(
        root,
        dag_dir.to_str().unwrap(),
        "dag",
        "notify",
        "1",
        key.to_str().unwrap(),
        dag_bundle.to_str().unwrap(),
    );
    assert!(built.status.success(), "{}", stderr(&built));
    let out = stella(root, &["bundle", "import", dag_bundle.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
}

fn sample_plugin() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("bundles/sample-plugin")
}

/// A root with a trusted key `ops` and a bundle of the sample plugin built with it.
fn setup(root: &Path) -> (PathBuf, PathBuf) {
    let key = root.join("ops_ed25519");
    assert!(stella(root, &["keys", "generate", "--out", key.to_str().unwrap()]).status.success());
    let out = stella(
        root,
        &["keys", "trust", "add", &format!("{}.pub", key.display()), "--principal", "ops", "--namespaces", NS],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let bundle = root.join("sample-plugin-1.0.0.bundle");
    let out = build_bundle(
        root,
        sample_plugin().to_str().unwrap(),
        "plugin",
        "sample-plugin",
        "1.0.0",
        key.to_str().unwrap(),
        bundle.to_str().unwrap(),
    );
    assert!(out.status.success(), "{}", stderr(&out));
    (key, bundle)
}

fn sh(dir: &Path, script: &str) -> std::process::Output {
    Command::new("sh").arg("-c").arg(script).current_dir(dir).output().unwrap()
}

#[test]
fn a_bundle_is_reproducible_and_checks_by_hand_and_with_stella() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let (key, bundle) = setup(root);
    let again = root.join("again.bundle");
    let out = build_bundle(
        root,
        sample_plugin().to_str().unwrap(),
        "plugin",
        "sample-plugin",
        "1.0.0",
        key.to_str().unwrap(),
        again.to_str().unwrap(),
    );
    assert!(out.status.success());
    let (a, b) = (std::fs::read(&bundle).unwrap(), std::fs::read(&again).unwrap());
    // Ed25519 signatures are deterministic: the whole envelope is the same bytes.
    assert_eq!(a, b, "the same input gives the same bytes");

    let ok = stella(root, &["bundle", "verify", bundle.to_str().unwrap()]);
    assert!(ok.status.success(), "{}", stderr(&ok));
    assert!(stdout(&ok).contains("signed by ops"), "{}", stdout(&ok));
    let signers = root.join("etc/stella/keys/allowed_signers");
    assert!(
        stella(root, &["bundle", "verify", bundle.to_str().unwrap(), "--signers", signers.to_str().unwrap()])
            .status
            .success()
    );

    let x = root.join("x");
    std::fs::create_dir(&x).unwrap();
    let manual = sh(
        &x,
        &format!(
            "tar -xf {b} && sha256sum --strict -c SHA256SUMS && ssh-keygen -Y verify -f {s} -I ops -n {NS} -s SHA256SUMS.sig < SHA256SUMS && mkdir p && zstd -dc payload.tar.zst | tar -x -C p && test -x p/run.sh",
            b = bundle.display(),
            s = signers.display()
        ),
    );
    assert!(
        manual.status.success(),
        "by hand: {}{}",
        String::from_utf8_lossy(&manual.stdout),
        String::from_utf8_lossy(&manual.stderr)
    );

    // Re-signed with ssh-keygen by the trusted key and repacked with tar: stella accepts it.
    let resigned = sh(
        &x,
        &format!(
            "rm SHA256SUMS.sig && ssh-keygen -Y sign -q -f {k} -n {NS} SHA256SUMS && tar -cf ../resigned.bundle manifest.json payload.tar.zst SHA256SUMS SHA256SUMS.sig",
            k = key.display()
        ),
    );
    assert!(resigned.status.success(), "{}", String::from_utf8_lossy(&resigned.stderr));
    let out = stella(root, &["bundle", "verify", root.join("resigned.bundle").to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
}

/// Paths longer than a ustar header holds (up to the 1,024-byte limit) go in as GNU long-name
/// records: the bundle verifies with stella and unpacks with GNU tar to the same path.
#[test]
fn long_paths_survive_build_verify_and_tar() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let (key, _) = setup(root);
    let input = root.join("long");
    let deep: PathBuf = (0..6).map(|i| format!("{i}{}", "d".repeat(59))).collect();
    std::fs::create_dir_all(input.join(&deep)).unwrap();
    std::fs::write(input.join(&deep).join("run.sh"), "#!/bin/sh\n").unwrap();
    let out = root.join("long.bundle");
    let built = build_bundle(
        root,
        input.to_str().unwrap(),
        "plugin",
        "long",
        "1",
        key.to_str().unwrap(),
        out.to_str().unwrap(),
    );
    assert!(built.status.success(), "{}", stderr(&built));
    let ok = stella(root, &["bundle", "verify", out.to_str().unwrap()]);
    assert!(ok.status.success(), "{}", stderr(&ok));
    let x = root.join("x");
    std::fs::create_dir(&x).unwrap();
    let by_tar = sh(&x, &format!("tar -xf {} && zstd -dc payload.tar.zst | tar -x", out.display()));
    assert!(by_tar.status.success(), "{}", String::from_utf8_lossy(&by_tar.stderr));
    assert!(x.join(&deep).join("run.sh").is_file(), "GNU tar sees the long path");
}

#[test]
fn hostile_envelopes_are_refused_with_their_reason() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let (key, bundle) = setup(root);
    let x = root.join("x");
    std::fs::create_dir(&x).unwrap();
    assert!(sh(&x, &format!("tar -xf {}", bundle.display())).status.success());
    let other = root.join("other_ed25519");
    stella::trust::keys::generate(&other, "x").unwrap();
    let dag_dir = root.join("dag");
    std::fs::create_dir(&dag_dir).unwrap();
    std::fs::write(dag_dir.join("pipeline.toml"), "name = \"p\"\n[steps.a]\nplugin = \"noop\"\n").unwrap();
    let second = root.join("second.bundle");
    assert!(
        build_bundle(root, dag_dir.to_str().unwrap(), "dag", "p", "1", key.to_str().unwrap(), second.to_str().unwrap())
            .status
            .success()
    );
    let y = root.join("y");
    std::fs::create_dir(&y).unwrap();
    assert!(sh(&y, &format!("tar -xf {}", second.display())).status.success());

    let cases: Vec<(&str, String, &str)> = vec![
        ("payload byte flipped", "cp -r x c && cd c && printf 'X' | dd of=payload.tar.zst bs=1 seek=100 conv=notrunc 2>/dev/null && tar -cf ../case.bundle manifest.json payload.tar.zst SHA256SUMS SHA256SUMS.sig".into(), "digest of payload.tar.zst"),
        ("manifest byte flipped", "cp -r x c && cd c && sed -i 's/sample-plugin/sample-plugiN/' manifest.json && tar -cf ../case.bundle manifest.json payload.tar.zst SHA256SUMS SHA256SUMS.sig".into(), "digest of manifest.json"),
        ("SHA256SUMS changed (signature no longer matches)", "cp -r x c && cd c && sha256sum manifest.json payload.tar.zst > SHA256SUMS.new && sed -i '1s/^./0/' SHA256SUMS.new && mv SHA256SUMS.new SHA256SUMS && tar -cf ../case.bundle manifest.json payload.tar.zst SHA256SUMS SHA256SUMS.sig".into(), "does not match the signed bytes"),
        ("unsigned", "cp -r x c && cd c && echo nothing > SHA256SUMS.sig && tar -cf ../case.bundle manifest.json payload.tar.zst SHA256SUMS SHA256SUMS.sig".into(), "does not parse as an SSH signature"),
        ("unknown key", format!("cp -r x c && cd c && rm SHA256SUMS.sig && ssh-keygen -Y sign -q -f {} -n {NS} SHA256SUMS && tar -cf ../case.bundle manifest.json payload.tar.zst SHA256SUMS SHA256SUMS.sig", other.display()), "is not in the trust store"),
        ("signature for another namespace", format!("cp -r x c && cd c && rm SHA256SUMS.sig && ssh-keygen -Y sign -q -f {} -n stella-export@stella.invalid SHA256SUMS && tar -cf ../case.bundle manifest.json payload.tar.zst SHA256SUMS SHA256SUMS.sig", key.display()), "not \"stella-bundle@stella.invalid\""),
        ("manifests swapped between two bundles", "cp -r x c && cp y/manifest.json c/ && cd c && tar -cf ../case.bundle manifest.json payload.tar.zst SHA256SUMS SHA256SUMS.sig".into(), "digest of manifest.json"),
        ("an extra member", "cp -r x c && cd c && echo hi > extra && tar -cf ../case.bundle manifest.json payload.tar.zst SHA256SUMS SHA256SUMS.sig extra".into(), "unexpected member (a name of 5 bytes)"),
        ("a missing member", "cp -r x c && cd c && tar -cf ../case.bundle manifest.json payload.tar.zst SHA256SUMS".into(), "member SHA256SUMS.sig is missing"),
        ("a member twice", "cp -r x c && cd c && tar -cf ../case.bundle manifest.json payload.tar.zst SHA256SUMS SHA256SUMS.sig SHA256SUMS".into(), "appears twice"),
    ];
    for (what, script, reason) in cases {
        let _ = std::fs::remove_dir_all(root.join("c"));
        let made = sh(root, &script);
        assert!(made.status.success(), "{what}: {}", String::from_utf8_lossy(&made.stderr));
        let out = stella(root, &["bundle", "verify", root.join("case.bundle").to_str().unwrap()]);
        assert_eq!(out.status.code(), Some(8), "{what}: {}", stderr(&out));
        assert!(stderr(&out).contains(reason), "{what}: expected {reason:?} in {}", stderr(&out));
    }
    let fp =
        stella::trust::keys::read_private(&key).unwrap().public_key().fingerprint(ssh_key::HashAlg::Sha256).to_string();
    assert!(stella(root, &["keys", "revoke", &fp]).status.success());
    let revoked = stella(root, &["bundle", "verify", bundle.to_str().unwrap()]);
    assert_eq!(revoked.status.code(), Some(8));
    assert!(stderr(&revoked).contains("is revoked"), "{}", stderr(&revoked));
}

fn sealed_listing(root: &Path) -> Vec<String> {
    let dir = root.join("var/lib/stella/bundles/sha256");
    let mut v: Vec<String> = std::fs::read_dir(&dir)
        .map(|r| r.filter_map(|e| e.ok()).map(|e| e.file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default();
    v.sort();
    v
}

/// A production daemon (no dev mode) takes code and workflows only as signed bundles: a plugin
/// bundle and a DAG bundle that uses it import, and the DAG runs the sealed plugin; a tampered
/// bundle and a downgrade are refused, ledgered with their reason, and leave the sealed store
/// as it was.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_production_appliance_imports_signed_bundles_and_refuses_bad_ones() {
    let app = TestAppliance::start_production();
    let root = app.root().to_path_buf();
    let (key, plugin_bundle) = setup(&root);
    let imported = stella(&root, &["--format", "json", "bundle", "import", plugin_bundle.to_str().unwrap()]);
    assert!(imported.status.success(), "{}", stderr(&imported));
    // Environments from a local file are dev mode's only.
    std::fs::write(root.join("release.toml"), "[environments.x]\nplugin = \"p\"\ntarget = \"targets/x\"\n").unwrap();
    let declared = stella(&root, &["orch", "env", "declare", root.join("release.toml").to_str().unwrap()]);
    assert_eq!(declared.status.code(), Some(5), "{}", stderr(&declared));
    assert!(stderr(&declared).contains("signed_bundle_required"), "{}", stderr(&declared));
    import_notify_dag(&root, &key);
    let before = sealed_listing(&root);
    assert_eq!(before.len(), 2);

    let c = app.socket_client();
    let id = api_post(&c, "/runs", serde_json::json!({ "dag": "notify" })).await["id"].as_str().unwrap().to_owned();
    let mut pending = String::new();
    c.stream(&format!("{API}/runs/stream?run={id}"), Some(0), |chunk| {
        pending.push_str(&String::from_utf8_lossy(chunk));
        !pending.contains("event: run.succeeded") && !pending.contains("event: run.failed")
    })
    .await
    .unwrap();
    let run = api_get(&c, &format!("/runs/{id}")).await;
    assert_eq!(run["status"], "succeeded", "{run}");
    assert_eq!(
        run["steps"][0]["pluginDigest"].as_str().map(|d| before.contains(&d.to_owned())),
        Some(true),
        "the run pinned the sealed plugin"
    );

    let tampered = root.join("tampered.bundle");
    let mut bytes = std::fs::read(&plugin_bundle).unwrap();
    let at = bytes.len() / 2;
    bytes[at] ^= 0x20;
    std::fs::write(&tampered, &bytes).unwrap();
    let refused = stella(&root, &["bundle", "import", tampered.to_str().unwrap()]);
    assert_eq!(refused.status.code(), Some(9), "{}", stderr(&refused));
    let older = root.join("older.bundle");
    assert!(
        build_bundle(
            &root,
            sample_plugin().to_str().unwrap(),
            "plugin",
            "sample-plugin",
            "0.9.0",
            key.to_str().unwrap(),
            older.to_str().unwrap()
        )
        .status
        .success()
    );
    let downgrade = stella(&root, &["bundle", "import", older.to_str().unwrap()]);
    assert_eq!(downgrade.status.code(), Some(7), "{}", stderr(&downgrade));
    assert!(stderr(&downgrade).contains("--allow-downgrade"), "{}", stderr(&downgrade));
    assert!(stderr(&downgrade).contains("[version_downgrade, HTTP 409]"), "{}", stderr(&downgrade));
    let leap = root.join("leap.bundle");
    assert!(
        build_bundle(
            &root,
            sample_plugin().to_str().unwrap(),
            "plugin",
            "sample-plugin",
            "9.0.0",
            key.to_str().unwrap(),
            leap.to_str().unwrap()
        )
        .status
        .success()
    );
    let jumped = stella(&root, &["bundle", "import", leap.to_str().unwrap()]);
    assert_eq!(jumped.status.code(), Some(7), "{}", stderr(&jumped));
    assert!(stderr(&jumped).contains("past bundles.max_major_jump = 1"), "{}", stderr(&jumped));
    assert_eq!(sealed_listing(&root), before, "refused bundles leave the sealed store unchanged");
    assert!(
        std::fs::read_dir(root.join("var/lib/stella/bundles/staging")).map(|r| r.count()).unwrap_or(0) == 0,
        "no staging left behind"
    );
    let ledger = api_get(&c, "/ledger?limit=1000").await;
    let rejections: Vec<&serde_json::Value> =
        ledger["entries"].as_array().unwrap().iter().filter(|e| e["kind"] == "bundle.rejected").collect();
    assert_eq!(rejections.len(), 3, "every rejection is ledgered");
    assert!(rejections.iter().any(|e| e["data"]["reason"].as_str().unwrap().contains("--allow-downgrade")));
    let shown = stdout(&stella(&root, &["bundle", "show", "sample-plugin"]));
    assert!(shown.contains("run.sh") && shown.contains("signed by ops"), "{shown}");
    let list = stdout(&stella(&root, &["bundle", "list"]));
    assert!(list.contains("sample-plugin 1.0.0") && list.contains("notify 1"), "{list}");
    assert!(stella(&root, &["orch", "db", "verify"]).status.success());
}

/// Crafts a signed envelope whose payload holds `entries` (header-level control, unlike the
/// builder) and whose manifest lists `listed`; returns its path.
fn craft(
    dir: &Path,
    key: &ssh_key::PrivateKey,
    entries: Vec<(tar::Header, Vec<u8>)>,
    listed: Vec<stella::domain::bundles::format::FileEntry>,
    not_after: Option<&str>,
) -> PathBuf {
    let mut payload_tar = tar::Builder::new(Vec::new());
    for (mut h, data) in entries {
        h.set_cksum();
        payload_tar.append(&h, data.as_slice()).unwrap();
    }
    let payload = zstd::encode_all(payload_tar.into_inner().unwrap().as_slice(), 3).unwrap();
    sign_payload(dir, key, payload, listed, not_after)
}

/// Signs an envelope around `payload` whose manifest lists `listed` (a trusted signer, a
/// hostile payload): only the payload walk can catch what is wrong in it.
fn sign_payload(
    dir: &Path,
    key: &ssh_key::PrivateKey,
    payload: Vec<u8>,
    listed: Vec<stella::domain::bundles::format::FileEntry>,
    not_after: Option<&str>,
) -> PathBuf {
    use sha2::{Digest, Sha256};
    use stella::domain::bundles::format::*;
    let manifest = Manifest {
        format_version: 1,
        kind: Kind::Plugin,
        name: "evil".into(),
        version: "1".into(),
        not_after: not_after.map(str::to_owned),
        payload: PayloadRef {
            file: PAYLOAD.into(),
            size: payload.len() as u64,
            sha256: hex::encode(Sha256::digest(&payload)),
        },
        files: listed,
    };
    let manifest_bytes = serde_json_canonicalizer::to_vec(&manifest).unwrap();
    let sums_text =
        sums(&[(MANIFEST, &hex::encode(Sha256::digest(&manifest_bytes))), (PAYLOAD, &manifest.payload.sha256)]);
    let sig = stella::trust::sig::sign(key, stella::trust::sig::Namespace::Bundle, sums_text.as_bytes()).unwrap();
    let mut env = tar::Builder::new(Vec::new());
    for (name, bytes) in [
        (MANIFEST, manifest_bytes.as_slice()),
        (PAYLOAD, payload.as_slice()),
        (SUMS, sums_text.as_bytes()),
        (SUMS_SIG, sig.as_bytes()),
    ] {
        let mut h = tar::Header::new_ustar();
        h.set_size(bytes.len() as u64);
        h.set_mode(0o644);
        h.set_path(name).unwrap();
        h.set_cksum();
        env.append(&h, bytes).unwrap();
    }
    let path = dir.join(format!("crafted-{}.bundle", stella::ids::random_hex(4)));
    std::fs::write(&path, env.into_inner().unwrap()).unwrap();
    path
}

fn entry(path: &str, kind: tar::EntryType, data: &[u8]) -> (tar::Header, Vec<u8>) {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_size(data.len() as u64);
    h.set_mode(0o644);
    // set_path refuses `..` and absolute paths; write the raw name field like a hostile tool.
    let name = &mut h.as_old_mut().name;
    name[..path.len()].copy_from_slice(path.as_bytes());
    (h, data.to_vec())
}

fn listed(path: &str, data: &[u8]) -> stella::domain::bundles::format::FileEntry {
    use sha2::{Digest, Sha256};
    stella::domain::bundles::format::FileEntry {
        path: path.into(),
        kind: "file".into(),
        size: data.len() as u64,
        mode: 0o644,
        sha256: Some(hex::encode(Sha256::digest(data))),
    }
}

/// The payload-level corpus: (what, payload entries, manifest files, notAfter, expected reason).
type PayloadCase = (
    &'static str,
    Vec<(tar::Header, Vec<u8>)>,
    Vec<stella::domain::bundles::format::FileEntry>,
    Option<&'static str>,
    &'static str,
);

fn hostile_payload_cases() -> Vec<PayloadCase> {
    let mut link = entry("run.sh", tar::EntryType::Symlink, b"");
    link.0.set_link_name("/etc/passwd").unwrap();
    let mut hard = entry("run.sh", tar::EntryType::Link, b"");
    hard.0.set_link_name("../../outside").unwrap();
    let mut dir_link = entry("lib", tar::EntryType::Symlink, b"");
    dir_link.0.set_link_name("/etc").unwrap();
    // A GNU long-name record declaring a gigabyte: refused on its declared size, before a byte
    // of it is read or allocated (the stream holds none of it).
    let mut long_name = entry("././@LongLink", tar::EntryType::GNULongName, b"");
    long_name.0.set_size(1 << 30);
    // zstd bombs: a few compressed bytes that claim terabytes. Refused on the declared sizes
    // (the tar header's against the manifest's, the manifest's against the cap) before any of
    // it is decompressed.
    let mut bomb = entry("a", tar::EntryType::Regular, b"");
    bomb.0.set_size(1 << 40);
    let mut huge = listed("a", b"x");
    huge.size = 1 << 40;
    vec![
        ("symlink", vec![link], vec![listed("run.sh", b"")], None, "only regular files and directories"),
        ("hardlink", vec![hard], vec![listed("run.sh", b"")], None, "only regular files and directories"),
        (
            "symlink followed by an entry through it",
            vec![dir_link, entry("lib/passwd", tar::EntryType::Regular, b"x")],
            vec![
                stella::domain::bundles::format::FileEntry {
                    path: "lib".into(),
                    kind: "dir".into(),
                    size: 0,
                    mode: 0o755,
                    sha256: None,
                },
                listed("lib/passwd", b"x"),
            ],
            None,
            "only regular files and directories",
        ),
        (
            "huge long-name record",
            vec![long_name, entry("a", tar::EntryType::Regular, b"x")],
            vec![listed("a", b"x")],
            None,
            "long-name record of 1073741824 bytes",
        ),
        (
            "zstd bomb under a small manifest size",
            vec![bomb.clone()],
            vec![listed("a", b"x")],
            None,
            "the manifest says 1",
        ),
        (
            "zstd bomb with a manifest to match",
            vec![bomb],
            vec![huge],
            None,
            "more than the 17179869184 allowed unpacked",
        ),
        (
            "file listed without its directory",
            vec![entry("a/b", tar::EntryType::Regular, b"x")],
            vec![listed("a/b", b"x")],
            None,
            "\"a/b\" is listed without its directory",
        ),
        (
            "fifo",
            vec![entry("run.sh", tar::EntryType::Fifo, b"")],
            vec![listed("run.sh", b"")],
            None,
            "only regular files and directories",
        ),
        (
            "char device",
            vec![entry("run.sh", tar::EntryType::Char, b"")],
            vec![listed("run.sh", b"")],
            None,
            "only regular files and directories",
        ),
        (
            "traversal",
            vec![entry("../escape", tar::EntryType::Regular, b"x")],
            vec![listed("escape", b"x")],
            None,
            "unsafe path",
        ),
        (
            "absolute path",
            vec![entry("/etc-cron-x", tar::EntryType::Regular, b"x")],
            vec![listed("etc-cron-x", b"x")],
            None,
            "unsafe path",
        ),
        (
            "unlisted file",
            vec![entry("a", tar::EntryType::Regular, b"x"), entry("b", tar::EntryType::Regular, b"y")],
            vec![listed("a", b"x")],
            None,
            "\"b\" is not in the manifest",
        ),
        (
            "renamed file",
            vec![entry("run2.sh", tar::EntryType::Regular, b"x")],
            vec![listed("run.sh", b"x")],
            None,
            "\"run2.sh\" is not in the manifest",
        ),
        (
            "missing file",
            vec![entry("a", tar::EntryType::Regular, b"x")],
            vec![listed("a", b"x"), listed("b", b"y")],
            None,
            "\"b\" is in the manifest but not in the payload",
        ),
        (
            "duplicate path",
            vec![entry("a", tar::EntryType::Regular, b"x"), entry("a", tar::EntryType::Regular, b"x")],
            vec![listed("a", b"x")],
            None,
            "appears twice",
        ),
        (
            "size disagrees",
            vec![entry("a", tar::EntryType::Regular, b"xx")],
            vec![listed("a", b"x")],
            None,
            "the manifest says 1",
        ),
        (
            "content disagrees",
            vec![entry("a", tar::EntryType::Regular, b"y")],
            vec![listed("a", b"x")],
            None,
            "does not match its sha256",
        ),
        (
            "expired manifest",
            vec![entry("a", tar::EntryType::Regular, b"x")],
            vec![listed("a", b"x")],
            Some("2020-01-01T00:00:00Z"),
            "expired",
        ),
    ]
}

/// Payload-level attacks, each signed by a trusted key so that only the payload walk can
/// catch them: link escapes, devices and FIFOs, traversal and absolute paths, unlisted and
/// missing files, a size that disagrees with the manifest, an expired manifest.
#[test]
fn hostile_payloads_are_refused_even_when_properly_signed() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let (key_path, _) = setup(root);
    let key = stella::trust::keys::read_private(&key_path).unwrap();
    let trust = stella::trust::store::TrustStore::load(&root.join("etc/stella/keys")).unwrap();
    let now = 1_800_000_000_000;
    let cases = hostile_payload_cases();
    for (what, entries, files, not_after, reason) in cases {
        let path = craft(root, &key, entries, files, not_after);
        let err = stella::domain::bundles::verify::verify(&path, &trust, now).expect_err(what).to_string();
        assert!(err.contains(reason), "{what}: expected {reason:?} in {err:?}");
    }
}

/// A key revoked while the daemon was down: at start the bundle it signed is quarantined, the
/// health endpoint says so, and a run that needs it is refused naming the bundle and the reason.
/// A sealed file changed on disk is caught by `bundle verify --installed`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bundles_are_reverified_at_start_and_on_demand_and_quarantined() {
    let mut app = TestAppliance::start_production();
    let root = app.root().to_path_buf();
    let (key, plugin_bundle) = setup(&root);
    assert!(stella(&root, &["bundle", "import", plugin_bundle.to_str().unwrap()]).status.success());
    import_notify_dag(&root, &key);
    let ok = stella(&root, &["bundle", "verify", "--installed"]);
    assert!(ok.status.success(), "{}{}", stdout(&ok), stderr(&ok));

    // A sealed file changed on disk.
    let digest = api_get(&app.socket_client(), "/plugins").await["plugins"][0]["digest"].as_str().unwrap().to_owned();
    let script = root.join("var/lib/stella/bundles/sha256").join(&digest).join("run.sh");
    let mut perms = std::fs::metadata(&script).unwrap().permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o755);
    std::fs::set_permissions(&script, perms).unwrap();
    std::fs::write(&script, "#!/bin/sh\necho pwned\n").unwrap();
    let caught = stella(&root, &["bundle", "verify", "--installed"]);
    assert_eq!(caught.status.code(), Some(8), "{}", stderr(&caught));
    assert!(stdout(&caught).contains("QUARANTINED: sample-plugin: run.sh changed on disk"), "{}", stdout(&caught));
    let c = app.socket_client();
    let refused = c.post(&format!("{API}/runs"), &serde_json::json!({ "dag": "notify" })).await.unwrap();
    assert_eq!(refused.status, 409);
    assert!(
        refused.json().unwrap()["detail"]
            .as_str()
            .unwrap()
            .contains("bundle sample-plugin is quarantined: run.sh changed on disk")
    );

    // The signing key is revoked while the daemon is down: the DAG bundle is quarantined at start.
    assert!(app.terminate().success());
    let fp =
        stella::trust::keys::read_private(&key).unwrap().public_key().fingerprint(ssh_key::HashAlg::Sha256).to_string();
    assert!(stella(&root, &["keys", "revoke", &fp]).status.success());
    app.launch();
    let health = api_get(&app.socket_client(), "/admin/health").await;
    let quarantined = health["checks"]["quarantinedBundles"].as_array().unwrap();
    assert!(
        quarantined
            .iter()
            .any(|q| q.as_str().unwrap().starts_with("notify: signature: ")
                && q.as_str().unwrap().contains("is revoked")),
        "{health}"
    );
    let ledger = api_get(&app.socket_client(), "/ledger?limit=1000").await;
    assert!(ledger["entries"].as_array().unwrap().iter().filter(|e| e["kind"] == "bundle.quarantined").count() >= 2);
}

/// Golden files of the format: a fixed input built with a fixed, test-only key (its seed is
/// below; it signs nothing but this test) gives exactly the committed manifest, SHA256SUMS and
/// envelope digest. A change here is a change of the on-disk format and needs a format version.
#[test]
fn the_bundle_format_matches_its_golden_files() {
    let golden = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/bundle");
    // TEST-ONLY KEY: a fixed seed so that signatures, and so the envelope, are reproducible.
    let pair = ssh_key::private::Ed25519Keypair::from_seed(&[7u8; 32]);
    let key = ssh_key::PrivateKey::from(pair);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("g.bundle");
    stella::domain::bundles::build::build_to(
        &golden.join("input"),
        stella::domain::bundles::format::Kind::Plugin,
        "golden",
        "1.0.0",
        &key,
        &path,
        stella::domain::bundles::format::ZSTD_LEVEL,
    )
    .unwrap();
    let envelope = std::fs::read(&path).unwrap();
    let x = sh(dir.path(), &format!("tar -xf {}", path.display()));
    assert!(x.status.success());
    let read = |p: &Path| std::fs::read_to_string(p).unwrap();
    if std::env::var_os("STELLA_BLESS").is_some() {
        std::fs::write(golden.join("manifest.json"), read(&dir.path().join("manifest.json"))).unwrap();
        std::fs::write(golden.join("SHA256SUMS"), read(&dir.path().join("SHA256SUMS"))).unwrap();
        std::fs::write(
            golden.join("envelope.sha256"),
            format!("{}\n", hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&envelope))),
        )
        .unwrap();
    }
    assert_eq!(read(&dir.path().join("manifest.json")), read(&golden.join("manifest.json")), "manifest.json");
    assert_eq!(read(&dir.path().join("SHA256SUMS")), read(&golden.join("SHA256SUMS")), "SHA256SUMS");
    assert_eq!(
        format!("{}\n", hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&envelope))),
        read(&golden.join("envelope.sha256")),
        "envelope bytes"
    );
}

/// Key rotation without a restart: a trust-update bundle signed by a root key (trust namespace)
/// replaces the trust store; afterwards the retired key's bundles are refused and the new key's
/// accepted. A trust update signed by a mere bundle key is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_root_signed_trust_update_rotates_keys_without_a_restart() {
    let app = TestAppliance::start_production();
    let root = app.root().to_path_buf();
    let (old_key, _) = setup(&root);
    let root_key = root.join("root_ed25519");
    let new_key = root.join("new_ed25519");
    for k in [&root_key, &new_key] {
        assert!(stella(&root, &["keys", "generate", "--out", k.to_str().unwrap()]).status.success());
    }
    let out = stella(
        &root,
        &[
            "keys",
            "trust",
            "add",
            &format!("{}.pub", root_key.display()),
            "--principal",
            "root",
            "--namespaces",
            "stella-trust@stella.invalid",
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let pub_of = |k: &Path| std::fs::read_to_string(format!("{}.pub", k.display())).unwrap().trim().to_owned();
    let update = root.join("trust-v2");
    std::fs::create_dir(&update).unwrap();
    std::fs::write(
        update.join("allowed_signers"),
        format!(
            "root namespaces=\"stella-trust@stella.invalid\" {}\nops2 namespaces=\"{NS}\" {}\n",
            pub_of(&root_key),
            pub_of(&new_key)
        ),
    )
    .unwrap();
    let build = |key: &Path, out: &Path| {
        build_bundle(
            &root,
            update.to_str().unwrap(),
            "trust",
            "trust-store",
            "2",
            key.to_str().unwrap(),
            out.to_str().unwrap(),
        )
    };
    let forged = root.join("forged-trust.bundle");
    assert!(build(&old_key, &forged).status.success());
    let refused = stella(&root, &["bundle", "import", forged.to_str().unwrap()]);
    assert_eq!(refused.status.code(), Some(9), "{}", stderr(&refused));
    assert!(stderr(&refused).contains("may not sign in namespace stella-trust@stella.invalid"), "{}", stderr(&refused));
    let real = root.join("trust.bundle");
    assert!(build(&root_key, &real).status.success());
    let imported = stella(&root, &["bundle", "import", real.to_str().unwrap()]);
    assert!(imported.status.success(), "{}", stderr(&imported));

    let bundle_with = |key: &Path, version: &str| {
        let out = root.join(format!("plugin-{version}.bundle"));
        assert!(
            build_bundle(
                &root,
                sample_plugin().to_str().unwrap(),
                "plugin",
                "sample-plugin",
                version,
                key.to_str().unwrap(),
                out.to_str().unwrap()
            )
            .status
            .success()
        );
        stella(&root, &["bundle", "import", out.to_str().unwrap()])
    };
    let retired = bundle_with(&old_key, "1.0.0");
    assert_eq!(retired.status.code(), Some(9), "the retired key is refused: {}", stderr(&retired));
    assert!(stderr(&retired).contains("is not in the trust store"), "{}", stderr(&retired));
    let rotated = bundle_with(&new_key, "1.0.1");
    assert!(rotated.status.success(), "the new key is accepted without a restart: {}", stderr(&rotated));
}

/// Archive-level attacks below the entry checks: a zstd frame that asks for a 2 GiB window is
/// refused before it is decoded, and a PAX header whose size disagrees with the ustar header is
/// caught against the manifest.
#[test]
fn a_giant_zstd_window_and_a_lying_pax_size_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let (key_path, _) = setup(root);
    let key = stella::trust::keys::read_private(&key_path).unwrap();
    let trust = stella::trust::store::TrustStore::load(&root.join("etc/stella/keys")).unwrap();
    let (h, data) = entry("a", tar::EntryType::Regular, b"x");
    let mut t = tar::Builder::new(Vec::new());
    let mut h = h;
    h.set_cksum();
    t.append(&h, data.as_slice()).unwrap();
    let tar_bytes = t.into_inner().unwrap();
    // A hand-made zstd frame (the compressor will not declare a window bigger than the input):
    // magic, a descriptor without content size, a window descriptor of 2^31, one raw last block.
    let mut giant = vec![0x28, 0xB5, 0x2F, 0xFD, 0x00, 21 << 3];
    let block = 1u32 | ((tar_bytes.len() as u32) << 3);
    giant.extend_from_slice(&block.to_le_bytes()[..3]);
    giant.extend_from_slice(&tar_bytes);
    let path = sign_payload(root, &key, giant, vec![listed("a", b"x")], None);
    let err = stella::domain::bundles::verify::verify(&path, &trust, 1_800_000_000_000).unwrap_err().to_string();
    assert!(err.starts_with("payload:"), "the giant window is refused while decoding: {err}");

    let mut t = tar::Builder::new(Vec::new());
    let record = "size=100000\n";
    // A PAX record's length counts its own digits, the space and the record.
    let pax = format!("{} {record}", record.len() + 3);
    let mut xh = tar::Header::new_ustar();
    xh.set_entry_type(tar::EntryType::XHeader);
    xh.set_size(pax.len() as u64);
    xh.set_path("PaxHeader/a").unwrap();
    xh.set_cksum();
    t.append(&xh, pax.as_bytes()).unwrap();
    let (mut h, data) = entry("a", tar::EntryType::Regular, b"x");
    h.set_cksum();
    t.append(&h, data.as_slice()).unwrap();
    let payload = zstd::encode_all(t.into_inner().unwrap().as_slice(), 3).unwrap();
    let path = sign_payload(root, &key, payload, vec![listed("a", b"x")], None);
    let err = stella::domain::bundles::verify::verify(&path, &trust, 1_800_000_000_000).unwrap_err().to_string();
    assert!(err.starts_with("payload:"), "the lying PAX size is caught: {err}");
}

/// `bundle remove`: a plugin bundle is refused while an enabled DAG runs its plugin, a DAG bundle
/// is removed and its DAG disabled in the same transaction, then the plugin bundle goes too —
/// its sealed copy deleted, the removals ledgered. The trust store is never removed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bundles_are_removed_only_when_nothing_needs_them() {
    let app = TestAppliance::start_production();
    let root = app.root().to_path_buf();
    let (key, bundle) = setup(&root);
    assert!(stella(&root, &["bundle", "import", bundle.to_str().unwrap()]).status.success());
    import_notify_dag(&root, &key);
    assert_eq!(sealed_listing(&root).len(), 2);

    let busy = stella(&root, &["bundle", "remove", "sample-plugin"]);
    assert_eq!(busy.status.code(), Some(7), "{}", stderr(&busy));
    assert!(stderr(&busy).contains("DAG notify@1 runs its plugin"), "{}", stderr(&busy));

    let gone = stella(&root, &["bundle", "remove", "notify"]);
    assert!(gone.status.success(), "{}", stderr(&gone));
    let refused = stella(&root, &["orch", "run", "start", "notify"]);
    assert!(!refused.status.success(), "the removed bundle's DAG no longer starts");
    assert!(stderr(&refused).contains("disabled"), "{}", stderr(&refused));

    let gone = stella(&root, &["bundle", "remove", "sample-plugin"]);
    assert!(gone.status.success(), "{}", stderr(&gone));
    assert!(sealed_listing(&root).is_empty(), "{:?}", sealed_listing(&root));
    let list = api_get(&app.socket_client(), "/bundles").await;
    assert_eq!(list["bundles"].as_array().unwrap().len(), 0, "{list}");
    let plugins = api_get(&app.socket_client(), "/plugins").await;
    assert_eq!(plugins["plugins"].as_array().unwrap().len(), 0, "{plugins}");
    let ledger = api_get(&app.socket_client(), "/ledger?limit=1000").await;
    let removed: Vec<&serde_json::Value> =
        ledger["entries"].as_array().unwrap().iter().filter(|e| e["kind"] == "bundle.removed").collect();
    assert_eq!(removed.len(), 2, "{ledger}");
    let missing = stella(&root, &["bundle", "remove", "sample-plugin"]);
    assert_eq!(missing.status.code(), Some(6), "{}", stderr(&missing));
    let db = stella(&root, &["orch", "db", "verify"]);
    assert!(db.status.success(), "the replayed ledger gives the same tables: {}", stderr(&db));
}

/// `serve --dev` signs the samples of `bundles/` with its generated dev key (trusted as `dev`)
/// and imports them like any bundle; a restart finds them installed and imports nothing again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_dev_imports_the_samples_as_signed_bundles() {
    let mut app = TestAppliance::start();
    let c = app.socket_client();
    let list = api_get(&c, "/bundles").await;
    let mut got: Vec<(String, String, String)> = list["bundles"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| {
            (
                b["name"].as_str().unwrap().into(),
                b["kind"].as_str().unwrap().into(),
                b["signer"].as_str().unwrap().into(),
            )
        })
        .collect();
    got.sort();
    assert_eq!(
        got,
        vec![
            ("sample-deploy".into(), "plugin".into(), "dev".into()),
            ("sample-pipeline".into(), "dag".into(), "dev".into()),
            ("sample-plugin".into(), "plugin".into(), "dev".into()),
            ("sample-release".into(), "release".into(), "dev".into()),
            ("security-scan".into(), "plugin".into(), "dev".into()),
        ]
    );
    let plugins = api_get(&c, "/plugins").await;
    assert_eq!(plugins["plugins"][0]["unsigned"], false, "{plugins}");
    let trusted = app.stella(&["keys", "trust", "list"]);
    assert!(stdout(&trusted).contains("dev"), "{}", stdout(&trusted));
    let imported = |ledger: &serde_json::Value| {
        let count = |kind: &str| ledger["entries"].as_array().unwrap().iter().filter(|e| e["kind"] == kind).count();
        (count("bundle.imported"), count("artifact.imported"), count("release.declared"))
    };
    // Three plugins, the DAG, the release; the artifact web in three versions.
    assert_eq!(imported(&api_get(&c, "/ledger?limit=1000").await), (5, 3, 1));
    app.terminate();
    app.launch();
    let c = app.socket_client();
    assert_eq!(imported(&api_get(&c, "/ledger?limit=1000").await), (5, 3, 1), "nothing imported twice");
    let verify = app.stella(&["bundle", "verify", "--installed"]);
    assert!(verify.status.success(), "{}", stderr(&verify));
}

/// An import started with a progress id can be followed at `GET /progress/{id}`: at the end it
/// has counted every payload byte hashed and every unpacked byte written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_import_reports_its_progress() {
    let app = TestAppliance::start_production();
    let root = app.root().to_path_buf();
    let (_, bundle) = setup(&root);
    let bundle = app.copy_to_inbox(&bundle);
    let c = app.socket_client();
    let bad =
        c.post(&format!("{API}/bundles"), &serde_json::json!({ "path": bundle, "progressId": "../x" })).await.unwrap();
    assert_eq!(bad.status.as_u16(), 422);
    let imported =
        api_post(&c, "/bundles", serde_json::json!({ "path": bundle, "progressId": "import-0123456789" })).await;
    let progress = api_get(&c, "/progress/import-0123456789").await;
    let manifest = api_get(&c, &format!("/bundles/{}", imported["name"].as_str().unwrap())).await["manifest"].clone();
    let unpacked: u64 = manifest["files"].as_array().unwrap().iter().map(|f| f["size"].as_u64().unwrap()).sum();
    let expected = manifest["payload"]["size"].as_u64().unwrap() + unpacked;
    assert_eq!((progress["done"].as_u64(), progress["total"].as_u64()), (Some(expected), Some(expected)), "{progress}");
    assert_eq!(progress["phase"], "done");
}

/// The whole payload corpus through a production daemon: every case is refused (422) with its
/// reason and ledgered, and the sealed store, staging, the projections (bundles, plugins, DAGs)
/// and a canary directory beside the state (the target of the traversal cases) are byte for
/// byte as before. A key outside its validity window is refused the same way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_hostile_corpus_leaves_the_appliance_unchanged() {
    let app = TestAppliance::start_production();
    let root = app.root().to_path_buf();
    let (key_path, bundle) = setup(&root);
    assert!(stella(&root, &["bundle", "import", bundle.to_str().unwrap()]).status.success());
    let canary = root.join("var/lib/stella/bundles/canary");
    std::fs::create_dir_all(&canary).unwrap();
    std::fs::write(canary.join("escape"), "canary\n").unwrap();
    let snapshot = |dir: &Path| {
        let out = sh(dir, "find . -printf '%p %y %m %s\\n' | sort && find . -type f -exec sha256sum {} + | sort");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let c = app.socket_client();
    let projections = || async {
        let mut v = Vec::new();
        for path in ["/bundles", "/plugins", "/dags"] {
            v.push(api_get(&c, path).await);
        }
        v
    };
    let (sealed, canary_before, tables) =
        (snapshot(&root.join("var/lib/stella/bundles/sha256")), snapshot(&canary), projections().await);
    let key = stella::trust::keys::read_private(&key_path).unwrap();
    let cases = hostile_payload_cases();
    let count = cases.len();
    for (what, entries, files, not_after, reason) in cases {
        let path = app.copy_to_inbox(&craft(&root, &key, entries, files, not_after));
        let reply = c.post(&format!("{API}/bundles"), &serde_json::json!({ "path": path })).await.unwrap();
        assert_eq!(reply.status.as_u16(), 422, "{what}");
        let body = String::from_utf8_lossy(&reply.body).into_owned();
        assert!(body.contains(&reason.replace('"', "\\\"")), "{what}: expected {reason:?} in {body}");
    }
    let old = root.join("old_ed25519");
    stella::trust::keys::generate(&old, "old").unwrap();
    let trusted = stella(
        &root,
        &[
            "keys",
            "trust",
            "add",
            &format!("{}.pub", old.display()),
            "--principal",
            "old",
            "--namespaces",
            NS,
            "--valid-before",
            "20200101",
        ],
    );
    assert!(trusted.status.success(), "{}", stderr(&trusted));
    let stale = root.join("stale.bundle");
    let built = build_bundle(
        &root,
        sample_plugin().to_str().unwrap(),
        "plugin",
        "sample-plugin",
        "1.0.1",
        old.to_str().unwrap(),
        stale.to_str().unwrap(),
    );
    assert!(built.status.success());
    let refused = stella(&root, &["bundle", "import", stale.to_str().unwrap()]);
    assert_eq!(refused.status.code(), Some(9), "{}", stderr(&refused));
    assert!(stderr(&refused).contains("outside its validity window"), "{}", stderr(&refused));

    assert_eq!(snapshot(&root.join("var/lib/stella/bundles/sha256")), sealed, "the sealed store is unchanged");
    assert_eq!(snapshot(&canary), canary_before, "the canary directory is unchanged");
    assert_eq!(projections().await, tables, "bundles, plugins and DAGs are unchanged");
    let staging = std::fs::read_dir(root.join("var/lib/stella/bundles/staging")).map(|r| r.count()).unwrap_or(0);
    assert_eq!(staging, 0, "no staging left behind");
    let ledger = api_get(&c, "/ledger?limit=1000").await;
    let rejected = ledger["entries"].as_array().unwrap().iter().filter(|e| e["kind"] == "bundle.rejected").count();
    assert_eq!(rejected, count + 1, "every rejection is ledgered");
}

/// A DAG version from a bundle runs the plugin digest installed when it was imported: a plugin
/// upgrade does not change it; importing the DAG bundle again makes a version pinned to the
/// new plugin.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bundled_dag_version_keeps_its_pinned_plugin_digest() {
    let app = TestAppliance::start_production();
    let root = app.root().to_path_buf();
    let (key, bundle) = setup(&root);
    assert!(stella(&root, &["bundle", "import", bundle.to_str().unwrap()]).status.success());
    import_notify_dag(&root, &key);
    let c = app.socket_client();
    let digest_of_run = |id: String| {
        let c = c.clone();
        async move {
            wait_for_event(&c, &id, "event: run.succeeded").await;
            api_get(&c, &format!("/runs/{id}")).await["steps"][0]["pluginDigest"].as_str().unwrap().to_owned()
        }
    };
    let start = || async {
        api_post(&c, "/runs", serde_json::json!({ "dag": "notify" })).await["id"].as_str().unwrap().to_owned()
    };
    let first = digest_of_run(start().await).await;

    let v2 = root.join("plugin-v2");
    assert!(
        sh(
            &root,
            &format!("cp -r {} {} && echo '# v2' >> {}/run.sh", sample_plugin().display(), v2.display(), v2.display())
        )
        .status
        .success()
    );
    let upgraded = root.join("sample-plugin-1.1.0.bundle");
    let built = build_bundle(
        &root,
        v2.to_str().unwrap(),
        "plugin",
        "sample-plugin",
        "1.1.0",
        key.to_str().unwrap(),
        upgraded.to_str().unwrap(),
    );
    assert!(built.status.success(), "{}", stderr(&built));
    assert!(stella(&root, &["bundle", "import", upgraded.to_str().unwrap()]).status.success());
    let installed = api_get(&c, "/plugins").await["plugins"][0]["digest"].as_str().unwrap().to_owned();
    assert_ne!(installed, first, "the plugin was upgraded");
    assert_eq!(digest_of_run(start().await).await, first, "the DAG version still runs the digest it was pinned to");

    let dag_v2 = root.join("notify-2.bundle");
    let built = build_bundle(
        &root,
        root.join("dag").to_str().unwrap(),
        "dag",
        "notify",
        "2",
        key.to_str().unwrap(),
        dag_v2.to_str().unwrap(),
    );
    assert!(built.status.success());
    assert!(stella(&root, &["bundle", "import", dag_v2.to_str().unwrap()]).status.success());
    assert_eq!(digest_of_run(start().await).await, installed, "the re-imported DAG is pinned to the new plugin");
}

/// kill -9 in the middle of an import: after the restart the bundle is either installed whole
/// or not at all, staging holds nothing (neither the killed import's files nor an older
/// leftover), and the same bundle imports. The kill waits for the import's own progress to
/// show it unpacking.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_import_killed_midway_leaves_nothing_half_done() {
    let mut app = TestAppliance::start_production();
    let root = app.root().to_path_buf();
    let (key, _) = setup(&root);
    // A plugin with 32 MiB of incompressible bytes, so that unpacking takes a while.
    let dir = root.join("big-plugin");
    std::fs::create_dir(&dir).unwrap();
    for f in ["plugin.toml", "run.sh"] {
        std::fs::copy(sample_plugin().join(f), dir.join(f)).unwrap();
    }
    let toml = std::fs::read_to_string(dir.join("plugin.toml")).unwrap().replace("sample-plugin", "big-plugin");
    std::fs::write(dir.join("plugin.toml"), toml).unwrap();
    let mut x = 0x9e37_79b9_7f4a_7c15u64; // xorshift, seeded: the same bytes every run
    let blob: Vec<u8> = (0..32 << 17)
        .flat_map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x.to_le_bytes()
        })
        .collect();
    std::fs::write(dir.join("blob.bin"), blob).unwrap();
    let bundle = root.join("big-plugin-1.0.0.bundle");
    let (d, k, b) = (dir.to_str().unwrap(), key.to_str().unwrap(), bundle.to_str().unwrap());
    let built = build_bundle(&root, d, "plugin", "big-plugin", "1.0.0", k, b);
    assert!(built.status.success(), "{}", stderr(&built));

    let staging = app.layout().lib().join("bundles/staging");
    std::fs::create_dir_all(staging.join("a-crash-before/payload")).unwrap();
    std::fs::write(staging.join("a-crash-before/payload/file"), b"half").unwrap();
    let c = app.socket_client();
    let bundle = app.copy_to_inbox(&bundle);
    let import = {
        let c = c.clone();
        let body = serde_json::json!({ "path": bundle, "progressId": "import-killed-0001" });
        tokio::spawn(async move { c.post(&format!("{API}/bundles"), &body).await })
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let p = c.get(&format!("{API}/progress/import-killed-0001")).await.unwrap();
        let p: serde_json::Value = serde_json::from_slice(&p.body).unwrap_or_default();
        if (p["phase"] == "unpacking" && p["done"].as_u64() > Some(0)) || import.is_finished() {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the import never started unpacking: {p}");
        tokio::time::sleep(std::time::Duration::from_millis(2)).await;
    }
    let finished_before_the_kill = import.is_finished();
    app.kill9();
    let _ = import.await;

    app.launch();
    let left: Vec<_> = std::fs::read_dir(&staging).unwrap().flatten().map(|e| e.path()).collect();
    assert!(left.is_empty(), "staging after the restart: {left:?}");
    assert!(app.log().contains("removed unfinished bundle imports from staging"), "{}", app.log());
    let c = app.socket_client();
    let installed = api_get(&c, "/bundles").await;
    let big = installed["bundles"].as_array().unwrap().iter().find(|b| b["name"] == "big-plugin").cloned();
    if let Some(big) = &big {
        // Recorded, so it was sealed whole first: it verifies like any installed bundle.
        let sealed = app.layout().lib().join("bundles/sha256").join(big["digest"].as_str().unwrap());
        assert_eq!(std::fs::metadata(sealed.join("blob.bin")).map(|m| m.len()).ok(), Some(32 << 20));
    } else {
        assert!(!finished_before_the_kill, "an import that answered before the kill is not lost");
    }
    let again = api_post(&c, "/bundles", serde_json::json!({ "path": bundle })).await;
    assert_eq!(again["name"], "big-plugin", "{again}");
    let out = app.stella(&["bundle", "list"]);
    assert!(stdout(&out).contains("big-plugin"), "{}", stdout(&out));
}
