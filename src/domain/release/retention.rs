//! Retention of the artifact registry: which artifacts are kept and why. Never deleted: what
//! an environment runs now, its last known good candidate (the newest success of another
//! artifact before the current one), an unfinished deployment's artifact, and the newest
//! `min_versions` versions of each name. One pure function that `registry retention show`,
//! `registry delete` and `registry retention apply` share.

use super::tables::{ArtifactRecord, DeploymentRecord, EnvRecord};
use crate::domain::bundles::import::compare_versions;
use serde::Serialize;

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Verdict {
    pub artifact: String,
    pub keep: bool,
    /// Why it is kept, or why it may go.
    pub why: Vec<String>,
}

/// The verdict on every artifact not deleted yet, in `artifacts`' order.
pub fn verdicts(
    envs: &[EnvRecord],
    deployment: impl Fn(&str) -> Option<DeploymentRecord>,
    artifacts: &[ArtifactRecord],
    min_versions: usize,
) -> Vec<Verdict> {
    let mut reasons: std::collections::BTreeMap<String, Vec<String>> = Default::default();
    let mut note = |a: &str, why: String| reasons.entry(a.to_owned()).or_default().push(why);
    for e in envs {
        let name = &e.env.name;
        let current = e.current.as_deref().and_then(&deployment);
        if let Some(c) = &current {
            note(&c.artifact, format!("runs in {name} now ({})", c.id));
        }
        let lkg = e
            .successes
            .iter()
            .rev()
            .filter(|id| Some(id.as_str()) != e.current.as_deref())
            .filter_map(|id| deployment(id))
            .find(|d| current.as_ref().is_none_or(|c| c.artifact != d.artifact));
        if let Some(d) = lkg {
            note(&d.artifact, format!("last known good of {name} ({})", d.id));
        }
        if let Some(d) = e.in_flight.as_deref().and_then(&deployment) {
            note(&d.artifact, format!("deployment {} to {name} has not finished", d.id));
        }
    }
    let live: Vec<&ArtifactRecord> = artifacts.iter().filter(|a| a.deleted.is_none()).collect();
    for a in &live {
        let mut same: Vec<&&ArtifactRecord> = live.iter().filter(|b| b.name == a.name).collect();
        same.sort_by(|x, y| compare_versions(&y.version, &x.version));
        if let Some(rank) = same.iter().position(|b| b.version == a.version)
            && rank < min_versions
        {
            note(&a.key(), format!("among the newest {min_versions} versions of {} (#{})", a.name, rank + 1));
        }
    }
    live.iter()
        .map(|a| {
            let key = a.key();
            match reasons.remove(&key) {
                Some(why) => Verdict { artifact: key, keep: true, why },
                None => Verdict {
                    artifact: key,
                    keep: false,
                    why: vec![format!(
                        "older than the newest {min_versions} versions of {}, and no environment runs it or falls back to it",
                        a.name
                    )],
                },
            }
        })
        .collect()
}
