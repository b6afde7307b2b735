//! `release.toml`, the payload of a signed `release` bundle (DESIGN.md §9): the environments a
//! release moves through, each with its order (`promotesFrom`), baseline configuration, deploy
//! agent, the plugin its agent runs, gates and freeze windows. Parsing validates everything and
//! names the place of each error; each environment gets a generated deployment DAG
//! (`deploy-<env>`: the agent's plugin deploys, then checks health) that every deployment of the
//! environment runs.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Environments in one release at most.
pub const ENVIRONMENTS_MAX: usize = 64;
/// Freeze windows per environment at most.
const WINDOWS_MAX: usize = 64;
/// Gates per environment at most.
const GATES_MAX: usize = 32;
/// A baseline document's JSON at most.
pub const BASELINE_BYTES_MAX: usize = 64 * 1024;
/// The agent that runs in the daemon itself.
pub const LOCAL_AGENT: &str = "local";
/// The file in a release bundle's payload.
pub const FILE: &str = "release.toml";

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
struct ReleaseFile {
    #[serde(default)]
    description: Option<String>,
    environments: BTreeMap<String, EnvFile>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
struct EnvFile {
    #[serde(default, rename = "promotesFrom")]
    promotes_from: Option<String>,
    #[serde(default)]
    description: Option<String>,
    /// The deploy agent: `local` (in the daemon) or the name a remote `stella agent run` uses.
    #[serde(default)]
    agent: Option<String>,
    /// The plugin the agent runs, with kinds `deploy`, `health` (and `connectivity`,
    /// `credentials`, `observe` where it has them).
    plugin: String,
    /// Where the agent installs (relative: under the appliance's lib directory).
    target: String,
    #[serde(default)]
    baseline: Option<toml::Table>,
    #[serde(default)]
    gates: Vec<toml::Table>,
    #[serde(default)]
    freeze: Vec<WindowFile>,
    #[serde(default)]
    deploy_timeout: Option<String>,
    #[serde(default)]
    health_timeout: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
struct WindowFile {
    name: String,
    from: String,
    until: String,
    #[serde(default)]
    reason: Option<String>,
}

/// One environment as declared (and ledgered in `release.declared`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Environment {
    pub name: String,
    /// 1 for an environment nothing promotes into it from, then one more per hop.
    pub order: u32,
    pub promotes_from: Option<String>,
    pub description: Option<String>,
    pub agent: String,
    pub plugin: String,
    pub target: String,
    pub baseline: serde_json::Value,
    pub gates: Vec<serde_json::Value>,
    pub freeze: Vec<Window>,
    /// The DAG every deployment of the environment runs.
    pub dag: String,
}

impl Environment {
    /// Whether `dag` is one of the environment's generated DAGs (deployment or probe).
    pub fn owns_dag(&self, dag: &str) -> bool {
        dag == self.dag || dag == probe_name(&self.name)
    }
}

/// A freeze window: no deployment starts in `[from_ms, until_ms)`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Window {
    pub name: String,
    pub from_ms: i64,
    pub until_ms: i64,
    pub reason: Option<String>,
}

/// A parsed release: its environments in order, and each one's deployment DAG spec.
#[derive(Debug, Clone, PartialEq)]
pub struct Release {
    pub description: Option<String>,
    pub environments: Vec<Environment>,
    /// (DAG name, spec text), one per environment.
    pub dags: Vec<(String, String)>,
}

/// The deployment DAG of environment `env`.
pub fn dag_name(env: &str) -> String {
    format!("deploy-{env}")
}

/// The probe DAG of environment `env`: its agent's plugin asked, on demand, for each check it
/// implements (health, connectivity, credentials, observe).
pub fn probe_name(env: &str) -> String {
    format!("probe-{env}")
}

/// The checks a probe runs, by the plugin kind that answers each.
pub const PROBES: [&str; 4] = ["health", "connectivity", "credentials", "observe"];

/// The probe DAG of `env` for a plugin implementing `kinds`: one independent step per check
/// the plugin has.
pub fn probe_spec(env: &Environment, kinds: &[String]) -> String {
    let q = |s: &str| toml::Value::String(s.to_owned()).to_string();
    let mut s = format!(
        "# Generated from the release bundle: `orch health-check`, `connectivity`, `credentials verify` and\n\
         # `env config diff` of environment {name} run it.\n\
         name = {dag}\n\
         description = {desc}\n\n",
        name = env.name,
        dag = q(&probe_name(&env.name)),
        desc = q(&format!("ask the agent of {} how its target is", env.name)),
    );
    for input in INPUTS {
        s.push_str(&format!("[inputs.{input}]\n"));
    }
    for kind in PROBES.iter().filter(|k| kinds.iter().any(|x| x == *k)) {
        s.push_str(&format!(
            "\n[steps.{kind}]\nplugin = {p}\nkind = \"{kind}\"\ninputs = {inputs}\ntimeout = \"1m\"\n{agent}",
            p = q(&env.plugin),
            inputs = step_inputs(),
            agent = agent_line(&env.agent),
        ));
    }
    s
}

/// The step line that binds a generated step to a remote agent (none for the in-process one).
fn agent_line(agent: &str) -> String {
    if agent == LOCAL_AGENT { String::new() } else { format!("agent = {}\n", toml::Value::String(agent.to_owned())) }
}

/// What every step of a generated DAG receives.
const INPUTS: [&str; 8] = ["env", "target", "artifact", "digest", "source", "deployment", "kind", "baseline"];

fn step_inputs() -> String {
    let fields: Vec<String> = INPUTS.iter().map(|i| format!("{i} = \"${{inputs.{i}}}\"")).collect();
    format!("{{ {} }}", fields.join(", "))
}

/// Environment names: as DAG and lock names allow, 1–48 of `a-z 0-9 - _`.
pub fn valid_env(n: &str) -> bool {
    (1..=48).contains(&n.len())
        && n.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

/// The freeze window `now` falls in, if any.
pub fn frozen(windows: &[Window], now: i64) -> Option<&Window> {
    windows.iter().find(|w| w.from_ms <= now && now < w.until_ms)
}

/// Parses and validates `release.toml`.
pub fn parse(text: &str) -> Result<Release, String> {
    let file: ReleaseFile = toml::from_str(text).map_err(|e| format!("{FILE}: {e}"))?;
    if file.environments.is_empty() {
        return Err(format!("{FILE}: a release declares at least one environment"));
    }
    if file.environments.len() > ENVIRONMENTS_MAX {
        return Err(format!("{FILE}: more than {ENVIRONMENTS_MAX} environments"));
    }
    let mut envs = Vec::new();
    for (name, e) in &file.environments {
        let at = format!("{FILE}: environment {name}");
        if !valid_env(name) {
            return Err(format!("{at}: the name must be 1-48 of a-z, 0-9, '-', '_'"));
        }
        if let Some(from) = &e.promotes_from {
            if !file.environments.contains_key(from) {
                return Err(format!("{at}: promotesFrom names {from:?}, which is not declared"));
            }
            if from == name {
                return Err(format!("{at}: promotesFrom names itself"));
            }
        }
        let agent = e.agent.clone().unwrap_or_else(|| LOCAL_AGENT.to_owned());
        if !valid_env(&agent) || (agent != LOCAL_AGENT && agent.starts_with(crate::domain::queue::LOCAL_WORKER)) {
            return Err(format!(
                "{at}: agent {agent:?} must be \"{LOCAL_AGENT}\" or the name of a remote agent: 1-48 of a-z, 0-9, '-', '_', not starting with \"{}\"",
                crate::domain::queue::LOCAL_WORKER
            ));
        }
        // Under `<lib>/targets/` only: relative, plain components (no `.`, `..`, empty).
        let plain = |p: &str| !p.is_empty() && p != "." && p != ".." && p.bytes().all(|b| b.is_ascii_graphic());
        if !e.target.strip_prefix("targets/").is_some_and(|r| r.split('/').all(plain)) {
            return Err(format!("{at}: target {:?} must be a relative path under targets/ without '..'", e.target));
        }
        let baseline =
            serde_json::to_value(e.baseline.clone().unwrap_or_default()).map_err(|x| format!("{at}: {x}"))?;
        if baseline.to_string().len() > BASELINE_BYTES_MAX {
            return Err(format!("{at}: the baseline is larger than {BASELINE_BYTES_MAX} bytes"));
        }
        if e.gates.len() > GATES_MAX || e.freeze.len() > WINDOWS_MAX {
            return Err(format!("{at}: more than {GATES_MAX} gates or {WINDOWS_MAX} freeze windows"));
        }
        let mut gates = Vec::new();
        for (i, g) in e.gates.iter().enumerate() {
            let v = serde_json::to_value(g).map_err(|x| format!("{at}: gate {i}: {x}"))?;
            if !v["name"].as_str().is_some_and(valid_env) {
                return Err(format!("{at}: gate {i}: needs a name of 1-48 of a-z, 0-9, '-', '_'"));
            }
            gates.push(v);
        }
        let mut freeze = Vec::new();
        for w in &e.freeze {
            let time =
                |s: &str| crate::clock::parse_time(s).map_err(|x| format!("{at}: freeze window {}: {x}", w.name));
            let (from_ms, until_ms) = (time(&w.from)?, time(&w.until)?);
            if until_ms <= from_ms {
                return Err(format!("{at}: freeze window {}: until must be after from", w.name));
            }
            freeze.push(Window { name: w.name.clone(), from_ms, until_ms, reason: w.reason.clone() });
        }
        for t in [&e.deploy_timeout, &e.health_timeout].into_iter().flatten() {
            crate::duration::parse(t).map_err(|x| format!("{at}: timeout {t:?}: {x}"))?;
        }
        envs.push(Environment {
            name: name.clone(),
            order: 0,
            promotes_from: e.promotes_from.clone(),
            description: e.description.clone(),
            agent,
            plugin: e.plugin.clone(),
            target: e.target.clone(),
            baseline,
            gates,
            freeze,
            dag: dag_name(name),
        });
    }
    // Order: hops from an environment nothing promotes into it from; a cycle has none.
    for i in 0..envs.len() {
        let mut order = 1;
        let mut at = envs[i].promotes_from.clone();
        while let Some(from) = at {
            order += 1;
            if order as usize > envs.len() {
                return Err(format!("{FILE}: environment {}: promotesFrom makes a cycle", envs[i].name));
            }
            at = envs.iter().find(|e| e.name == from).and_then(|e| e.promotes_from.clone());
        }
        envs[i].order = order;
    }
    envs.sort_by(|a, b| (a.order, &a.name).cmp(&(b.order, &b.name)));
    // A remote agent deploys one environment: its leases, liveness and cache are that one's.
    for (i, e) in envs.iter().enumerate().filter(|(_, e)| e.agent != LOCAL_AGENT) {
        if let Some(other) = envs[..i].iter().find(|o| o.agent == e.agent) {
            return Err(format!(
                "{FILE}: environments {} and {} both name agent {:?}: a remote agent deploys one environment",
                other.name, e.name, e.agent
            ));
        }
    }
    let dags = file.environments.iter().map(|(name, e)| (dag_name(name), dag_spec(name, e))).collect();
    Ok(Release { description: file.description, environments: envs, dags })
}

/// The deployment DAG of one environment: `deploy` (holding the lock `env:<name>` while it
/// changes the target), then `health`.
fn dag_spec(name: &str, e: &EnvFile) -> String {
    let q = |s: &str| toml::Value::String(s.to_owned()).to_string();
    let inputs = step_inputs();
    let mut s = format!(
        "# Generated from the release bundle: every deployment of environment {name} runs it.\n\
         name = {dag}\n\
         description = {desc}\n\n",
        dag = q(&dag_name(name)),
        desc = q(&format!("deploy an artifact to {name} through its agent, then check its health")),
    );
    for input in INPUTS {
        s.push_str(&format!("[inputs.{input}]\n"));
    }
    s.push_str(&format!(
        "\n[steps.deploy]\nplugin = {p}\nkind = \"deploy\"\ninputs = {inputs}\nlocks = [{lock}]\ntimeout = {t}\n{agent}",
        p = q(&e.plugin),
        lock = q(&format!("env:{name}")),
        t = q(e.deploy_timeout.as_deref().unwrap_or("10m")),
        agent = agent_line(e.agent.as_deref().unwrap_or(LOCAL_AGENT)),
    ));
    s.push_str(&format!(
        "\n[steps.health]\nplugin = {p}\nkind = \"health\"\nneeds = [\"deploy\"]\ninputs = {inputs}\nretries = 2\nbackoff = \"1s\"\ntimeout = {t}\n{agent}",
        p = q(&e.plugin),
        t = q(e.health_timeout.as_deref().unwrap_or("2m")),
        agent = agent_line(e.agent.as_deref().unwrap_or(LOCAL_AGENT)),
    ));
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = include_str!("../../../bundles/sample-release/release.toml");

    #[test]
    fn the_sample_release_orders_its_environments_and_generates_their_dags() {
        let r = parse(SAMPLE).unwrap();
        let names: Vec<_> = r.environments.iter().map(|e| (e.name.as_str(), e.order)).collect();
        assert_eq!(names, [("dev", 1), ("staging", 2), ("prod", 3)]);
        for (dag, spec) in &r.dags {
            let c = crate::domain::runs::spec::compile_registered(spec).unwrap();
            assert_eq!(&c.name, dag);
            assert_eq!(c.steps.iter().map(|s| s.name.as_str()).collect::<Vec<_>>(), ["deploy", "health"]);
        }
    }

    #[test]
    fn bad_releases_are_refused_naming_the_place() {
        let cases = [
            ("[environments]\n", "at least one environment"),
            (
                "[environments.a]\nplugin = \"p\"\ntarget = \"targets/t\"\npromotesFrom = \"b\"\n",
                "promotesFrom names \"b\"",
            ),
            (
                "[environments.a]\nplugin = \"p\"\ntarget = \"targets/t\"\npromotesFrom = \"b\"\n[environments.b]\nplugin = \"p\"\ntarget = \"targets/t\"\npromotesFrom = \"a\"\n",
                "cycle",
            ),
            ("[environments.A]\nplugin = \"p\"\ntarget = \"targets/t\"\n", "environment A: the name"),
            ("[environments.a]\nplugin = \"p\"\ntarget = \"targets/../x\"\n", "without '..'"),
            ("[environments.a]\nplugin = \"p\"\ntarget = \"/tmp/x\"\n", "under targets/"),
            ("[environments.a]\nplugin = \"p\"\ntarget = \"registry\"\n", "under targets/"),
            (
                "[environments.a]\nplugin = \"p\"\ntarget = \"targets/t\"\n[[environments.a.freeze]]\nname = \"w\"\nfrom = \"2026-01-02\"\nuntil = \"2026-01-01\"\n",
                "freeze window w: until must be after from",
            ),
            ("[environments.a]\nplugin = \"p\"\ntarget = \"targets/t\"\nbogus = 1\n", "unknown field"),
            (
                "[environments.a]\nplugin = \"p\"\ntarget = \"targets/a\"\nagent = \"x\"\n[environments.b]\nplugin = \"p\"\ntarget = \"targets/b\"\nagent = \"x\"\n",
                "both name agent \"x\"",
            ),
            ("[environments.a]\nplugin = \"p\"\ntarget = \"targets/a\"\nagent = \"local-7\"\n", "not starting with"),
        ];
        for (text, want) in cases {
            let e = parse(text).unwrap_err();
            assert!(e.contains(want), "{text:?}: {e}");
        }
    }
}
