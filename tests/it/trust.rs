//! Keys, the trust store and SSHSIG, checked against OpenSSH itself: a signature stella makes
//! passes `ssh-keygen -Y verify` with the trust store's `allowed_signers`, one `ssh-keygen -Y
//! sign` makes passes stella, and the wrong namespace, a changed byte, a revoked key, an
//! expired window or an unknown key are each refused with their own error.

use crate::support::*;
use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Stdio};
use stella::trust::sig::{self, Namespace, SigError};
use stella::trust::store::{TrustError, TrustStore};

fn stella_keys(root: &std::path::Path, args: &[&str]) -> std::process::Output {
    Command::new(STELLA).arg("--state-dir").arg(root).args(args).output().unwrap()
}

#[test]
fn stella_and_ssh_keygen_verify_each_others_signatures_and_every_bad_case_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let key = root.join("ops_ed25519");
    let out = stella_keys(root, &["keys", "generate", "--out", key.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(std::fs::metadata(&key).unwrap().permissions().mode() & 0o777, 0o600);
    assert_eq!(
        stella_keys(root, &["keys", "generate", "--out", key.to_str().unwrap()]).status.code(),
        Some(9),
        "never overwrites a key"
    );
    let pubkey = format!("{}.pub", key.display());
    let ns = Namespace::Bundle.as_str();
    let out = stella_keys(root, &["keys", "trust", "add", &pubkey, "--principal", "ops", "--namespaces", ns]);
    assert!(out.status.success(), "{}", stderr(&out));
    let trust_dir = root.join("etc/stella/keys");
    let signers = trust_dir.join("allowed_signers");

    let msg = b"SHA256SUMS of a bundle\n".to_vec();
    let private = stella::trust::keys::read_private(&key).unwrap();
    let armored = sig::sign(&private, Namespace::Bundle, &msg).unwrap();
    let sig_path = root.join("msg.sig");
    std::fs::write(&sig_path, &armored).unwrap();
    let mut verify = Command::new("ssh-keygen")
        .args(["-Y", "verify", "-f"])
        .arg(&signers)
        .args(["-I", "ops", "-n", ns, "-s"])
        .arg(&sig_path)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("ssh-keygen (openssh-client) is installed");
    std::io::Write::write_all(&mut verify.stdin.take().unwrap(), &msg).unwrap();
    let verified = verify.wait_with_output().unwrap();
    assert!(
        verified.status.success(),
        "ssh-keygen refused stella's signature: {}",
        String::from_utf8_lossy(&verified.stderr)
    );

    let msg_path = root.join("msg");
    std::fs::write(&msg_path, &msg).unwrap();
    let signed = Command::new("ssh-keygen")
        .args(["-Y", "sign", "-q", "-f"])
        .arg(&key)
        .args(["-n", ns])
        .arg(&msg_path)
        .output()
        .unwrap();
    assert!(signed.status.success(), "{}", String::from_utf8_lossy(&signed.stderr));
    let theirs = std::fs::read_to_string(root.join("msg.sig")).unwrap();
    let now = 1_800_000_000_000;
    let trust = TrustStore::load(&trust_dir).unwrap();
    assert_eq!(sig::verify(&theirs, Namespace::Bundle, &msg, &trust, now).unwrap().principal, "ops");

    let wrong_ns = sig::sign(&private, Namespace::Export, &msg).unwrap();
    assert!(matches!(
        sig::verify(&wrong_ns, Namespace::Bundle, &msg, &trust, now),
        Err(SigError::WrongNamespace { .. })
    ));
    let mut changed = msg.clone();
    changed[0] ^= 1;
    assert_eq!(sig::verify(&armored, Namespace::Bundle, &changed, &trust, now), Err(SigError::Invalid));
    let other = root.join("other_ed25519");
    stella::trust::keys::generate(&other, "x").unwrap();
    let stranger = sig::sign(&stella::trust::keys::read_private(&other).unwrap(), Namespace::Bundle, &msg).unwrap();
    assert!(matches!(
        sig::verify(&stranger, Namespace::Bundle, &msg, &trust, now),
        Err(SigError::Untrusted(TrustError::Unknown(_)))
    ));

    let fp = private.public_key().fingerprint(ssh_key::HashAlg::Sha256).to_string();
    assert!(stella_keys(root, &["keys", "revoke", &fp]).status.success());
    let trust = TrustStore::load(&trust_dir).unwrap();
    assert!(matches!(
        sig::verify(&armored, Namespace::Bundle, &msg, &trust, now),
        Err(SigError::Untrusted(TrustError::Revoked(_)))
    ));
    let listed = stdout(&stella_keys(root, &["keys", "trust", "list"]));
    assert!(listed.contains(&fp) && listed.contains("true"), "{listed}");

    let expired = root.join("expired_ed25519");
    stella::trust::keys::generate(&expired, "x").unwrap();
    let out = stella_keys(
        root,
        &[
            "keys",
            "trust",
            "add",
            &format!("{}.pub", expired.display()),
            "--principal",
            "old",
            "--namespaces",
            ns,
            "--valid-before",
            "20200101",
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let trust = TrustStore::load(&trust_dir).unwrap();
    let late = sig::sign(&stella::trust::keys::read_private(&expired).unwrap(), Namespace::Bundle, &msg).unwrap();
    assert!(matches!(
        sig::verify(&late, Namespace::Bundle, &msg, &trust, now),
        Err(SigError::Untrusted(TrustError::Window { .. }))
    ));
}
