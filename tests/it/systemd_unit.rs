//! The shipped systemd unit is valid (`systemd-analyze verify`) and hardened: its exposure
//! score from `systemd-analyze security` is at most 2.0 (DESIGN.md §7). `.ci/run` installs
//! systemd where it is missing.

use crate::support::STELLA;
use std::process::Command;

fn unit_with_built_binary(dir: &std::path::Path) -> std::path::PathBuf {
    let unit = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/systemd/stella.service")).unwrap();
    assert!(unit.contains("Type=notify"), "the daemon signals readiness with sd-notify");
    let path = dir.join("stella.service");
    std::fs::write(&path, unit.replace("/usr/bin/stella", STELLA)).unwrap();
    path
}

#[test]
fn the_unit_verifies_and_scores_at_most_2() {
    let dir = tempfile::tempdir().unwrap();
    let unit = unit_with_built_binary(dir.path());
    let verify = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&unit)
        .output()
        .expect("systemd-analyze is installed (apt-get install systemd)");
    assert!(verify.status.success(), "systemd-analyze verify: {}", String::from_utf8_lossy(&verify.stderr));
    let security = Command::new("systemd-analyze").args(["security", "--offline=true"]).arg(&unit).output().unwrap();
    let text = String::from_utf8_lossy(&security.stdout);
    let score: f64 = text
        .lines()
        .find_map(|l| l.split("Overall exposure level for stella.service: ").nth(1))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no exposure score in: {text}"));
    assert!(score <= 2.0, "exposure {score} > 2.0:\n{text}");
}
