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
    /// Whether `dag` is one of the environment's generated DAGs (deployment, promotion or
    /// probe).
    pub fn owns_dag(&self, dag: &str) -> bool {
        dag == self.dag || dag == probe_name(&self.name) || dag == promote_name(&self.name)
    }

    /// Its gates, typed (each was validated when the release was parsed).
    pub fn typed_gates(&self) -> Vec<Gate> {
        self.gates.iter().enumerate().filter_map(|(i, g)| gate(&self.name, i, g).ok()).collect()
    }
}

/// A gate a promotion into an environment passes, in the order declared (DESIGN.md §9).
#[derive(Debug, Clone, PartialEq)]
pub struct Gate {
    pub name: String,
    pub kind: GateKind,
}

#[derive(Debug, Clone, PartialEq)]
pub enum GateKind {
    /// `approvers` distinct actors with `orchestrator:approve`, never the promotion's requester;
    /// an optional timeout with what it does.
    Approval { approvers: u32, timeout: Option<String>, on_timeout: Option<String> },
    /// Soak: the promotion waits until `duration` after the artifact's success in the
    /// environment it is promoted from.
    Wait { duration_ms: u64, duration: String },
    /// A site gate: a signed plugin of kind `gate` run by the environment's agent, with the
    /// gate's `config`; `gates.<name>.timeout` and `gates.<name>.retries` override these.
    Plugin { plugin: String, timeout: String, retries: u32, config: serde_json::Value },
}

impl GateKind {
    pub fn as_str(&self) -> &'static str {
        match self {
            GateKind::Approval { .. } => "approval",
            GateKind::Wait { .. } => "wait",
            GateKind::Plugin { .. } => "plugin",
        }
    }
}

/// A site gate's attempt timeout unless its declaration or `gates.<name>.timeout` says.
pub const GATE_TIMEOUT_DEFAULT: &str = "5m";
/// Retries of a site gate at most.
const GATE_RETRIES_MAX: u32 = 100;

/// Parses gate `i` of environment `env` (a table of `release.toml`), naming what is wrong.
fn gate(env: &str, i: usize, v: &serde_json::Value) -> Result<Gate, String> {
    let at = format!("{FILE}: environment {env}: gate {i}");
    let Some(name) = v["name"].as_str().filter(|n| valid_env(n)) else {
        return Err(format!("{at}: needs a name of 1-48 of a-z, 0-9, '-', '_'"));
    };
    let at = format!("{FILE}: environment {env}: gate {name}");
    if matches!(name, "deploy" | "health") {
        return Err(format!("{at}: \"deploy\" and \"health\" name the promotion's own steps; choose another name"));
    }
    let Some(fields) = v.as_object() else { return Err(format!("{at}: must be a table")) };
    let allowed: &[&str] = match v["type"].as_str() {
        Some("approval") => &["name", "type", "approvers", "timeout", "on_timeout"],
        Some("wait") => &["name", "type", "duration"],
        Some("plugin") => &["name", "type", "plugin", "timeout", "retries", "config"],
        Some("window") => {
            return Err(format!(
                "{at}: gate type \"window\" is not available yet; declare the environment's freeze windows with [[environments.{env}.freeze]]"
            ));
        }
        Some(other) => return Err(format!("{at}: type {other:?} is not one of approval, wait, plugin")),
        None => return Err(format!("{at}: needs a type (approval, wait or plugin)")),
    };
    if let Some(k) = fields.keys().find(|k| !allowed.contains(&k.as_str())) {
        return Err(format!("{at}: unknown field {k:?} (expected one of {})", allowed.join(", ")));
    }
    let text = |k: &str| -> Result<Option<String>, String> {
        match &v[k] {
            serde_json::Value::Null => Ok(None),
            serde_json::Value::String(s) => Ok(Some(s.clone())),
            _ => Err(format!("{at}: {k} must be a string")),
        }
    };
    let duration = |k: &str, s: &str| -> Result<u64, String> {
        crate::duration::parse(s).map(|d| d.as_millis() as u64).map_err(|x| format!("{at}: {k} {s:?}: {x}"))
    };
    let count = |k: &str, default: u64, range: std::ops::RangeInclusive<u64>| -> Result<u64, String> {
        match &v[k] {
            serde_json::Value::Null => Ok(default),
            n => n
                .as_u64()
                .filter(|n| range.contains(n))
                .ok_or_else(|| format!("{at}: {k} must be a whole number from {} to {}", range.start(), range.end())),
        }
    };
    let kind = match v["type"].as_str() {
        Some("approval") => {
            let (timeout, on_timeout) = (text("timeout")?, text("on_timeout")?);
            if let Some(t) = &timeout {
                duration("timeout", t)?;
            }
            if timeout.is_some() != on_timeout.is_some() {
                return Err(format!("{at}: timeout and on_timeout (reject, approve or cancel) come together"));
            }
            GateKind::Approval { approvers: count("approvers", 1, 1..=16)? as u32, timeout, on_timeout }
        }
        Some("wait") => {
            let Some(d) = text("duration")? else { return Err(format!("{at}: a wait gate needs a duration")) };
            GateKind::Wait { duration_ms: duration("duration", &d)?, duration: d }
        }
        _ => {
            let Some(plugin) = text("plugin")? else {
                return Err(format!("{at}: a plugin gate names its plugin (a signed plugin with kind \"gate\")"));
            };
            let timeout = text("timeout")?.unwrap_or_else(|| GATE_TIMEOUT_DEFAULT.to_owned());
            duration("timeout", &timeout)?;
            let config = v.get("config").cloned().unwrap_or(serde_json::json!({}));
            if !config.is_object() {
                return Err(format!("{at}: config must be a table"));
            }
            GateKind::Plugin {
                plugin,
                timeout,
                retries: count("retries", 0, 0..=GATE_RETRIES_MAX as u64)? as u32,
                config,
            }
        }
    };
    Ok(Gate { name: name.to_owned(), kind })
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

/// The promotion DAG of environment `env` (one that something promotes into it from).
pub fn promote_name(env: &str) -> String {
    format!("promote-{env}")
}

/// The inputs of a promotion DAG beyond a deployment's: where the artifact comes from, and
/// when it succeeded there (a wait gate soaks from then).
const PROMOTION_INPUTS: [&str; 2] = ["from", "from_succeeded_ms"];

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
            let name = gate(name, i, &v)?.name;
            if gates.iter().any(|g: &serde_json::Value| g["name"] == name.as_str()) {
                return Err(format!("{at}: two gates are named {name}"));
            }
            if e.promotes_from.is_none() {
                return Err(format!(
                    "{at}: gate {name}: only an environment with promotesFrom has gates (they guard a promotion into it)"
                ));
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
    let mut dags: Vec<(String, String)> =
        file.environments.iter().map(|(name, e)| (dag_name(name), dag_spec(name, e))).collect();
    for env in envs.iter().filter(|e| e.promotes_from.is_some()) {
        let e = &file.environments[&env.name];
        dags.push((promote_name(&env.name), promotion_spec(env, e)));
    }
    Ok(Release { description: file.description, environments: envs, dags })
}

/// The promotion DAG of one environment: its gates in order, then `deploy` (holding the lock
/// `env:<name>`) and `health`, as its deployment DAG has them. Each gate is one step named
/// after it: an approval a `noop` checkpoint no requester may approve, a wait the built-in
/// `wait` from the artifact's success where it comes from, a site gate its plugin's `gate`
/// kind with the gate's config.
fn promotion_spec(env: &Environment, e: &EnvFile) -> String {
    let q = |s: &str| toml::Value::String(s.to_owned()).to_string();
    let name = &env.name;
    let mut s = format!(
        "# Generated from the release bundle: every promotion into environment {name} runs it.\n\
         name = {dag}\n\
         description = {desc}\n\n",
        dag = q(&promote_name(name)),
        desc = q(&format!(
            "promote an artifact from {} to {name}: its gates, then deploy through the agent and check health",
            env.promotes_from.as_deref().unwrap_or_default()
        )),
    );
    for input in INPUTS.iter().chain(&PROMOTION_INPUTS) {
        s.push_str(&format!("[inputs.{input}]\n"));
    }
    let mut before: Option<String> = None;
    let needs = |before: &Option<String>| match before {
        Some(b) => format!("needs = [{}]\n", q(b)),
        None => String::new(),
    };
    for g in env.typed_gates() {
        s.push_str(&format!("\n[steps.{}]\n{}", q(&g.name), needs(&before)));
        match &g.kind {
            GateKind::Approval { approvers, timeout, on_timeout } => {
                s.push_str("plugin = \"noop\"\ncheckpoint_after = true\n");
                s.push_str(&format!("approval = {{ approvers = {approvers}, self_approval = false"));
                if let (Some(t), Some(o)) = (timeout, on_timeout) {
                    s.push_str(&format!(", timeout = {}, on_timeout = {}", q(t), q(o)));
                }
                s.push_str(" }\n");
            }
            GateKind::Wait { duration_ms, .. } => s.push_str(&format!(
                "plugin = \"wait\"\ninputs = {{ since = \"${{inputs.from_succeeded_ms}}\", ms = {duration_ms} }}\n"
            )),
            GateKind::Plugin { plugin, timeout, retries, config } => {
                let config = q(&config.to_string());
                s.push_str(&format!(
                    "plugin = {p}\nkind = \"gate\"\ninputs = {{ gate = {g}, config = {config}, from = \"${{inputs.from}}\", {rest}\ntimeout = {t}\nretries = {retries}\nbackoff = \"2s\"\n{agent}",
                    p = q(plugin),
                    g = q(&g.name),
                    rest = &step_inputs()[2..],
                    t = q(timeout),
                    agent = agent_line(&env.agent),
                ));
            }
        }
        before = Some(g.name.clone());
    }
    s.push_str(&format!(
        "\n[steps.deploy]\n{needs}plugin = {p}\nkind = \"deploy\"\ninputs = {inputs}\nlocks = [{lock}]\ntimeout = {t}\n{agent}",
        needs = needs(&before),
        p = q(&e.plugin),
        inputs = step_inputs(),
        lock = q(&format!("env:{name}")),
        t = q(e.deploy_timeout.as_deref().unwrap_or("10m")),
        agent = agent_line(&env.agent),
    ));
    s.push_str(&format!(
        "\n[steps.health]\nplugin = {p}\nkind = \"health\"\nneeds = [\"deploy\"]\ninputs = {inputs}\nretries = 2\nbackoff = \"1s\"\ntimeout = {t}\n{agent}",
        p = q(&e.plugin),
        inputs = step_inputs(),
        t = q(e.health_timeout.as_deref().unwrap_or("2m")),
        agent = agent_line(&env.agent),
    ));
    s
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
        let steps = |name: &str| {
            let (_, spec) = r.dags.iter().find(|(d, _)| d == name).unwrap();
            let c = crate::domain::runs::spec::compile_registered(spec).unwrap();
            assert_eq!(c.name, name);
            c.steps.iter().map(|s| s.name.clone()).collect::<Vec<_>>()
        };
        for env in ["dev", "staging", "prod"] {
            assert_eq!(steps(&dag_name(env)), ["deploy", "health"]);
        }
        // Nothing promotes into dev; staging's scan and prod's approval and soak come first.
        assert!(!r.dags.iter().any(|(d, _)| d == "promote-dev"));
        assert_eq!(steps("promote-staging"), ["security-scan", "deploy", "health"]);
        assert_eq!(steps("promote-prod"), ["approval", "soak", "deploy", "health"]);
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
            (
                "[environments.a]\nplugin = \"p\"\ntarget = \"targets/a\"\ngates = [{ name = \"g\", type = \"wait\", duration = \"1m\" }]\n",
                "only an environment with promotesFrom has gates",
            ),
            (
                "[environments.a]\nplugin = \"p\"\ntarget = \"targets/a\"\n[environments.b]\npromotesFrom = \"a\"\nplugin = \"p\"\ntarget = \"targets/b\"\ngates = [{ name = \"g\", type = \"wait\" }]\n",
                "gate g: a wait gate needs a duration",
            ),
            (
                "[environments.a]\nplugin = \"p\"\ntarget = \"targets/a\"\n[environments.b]\npromotesFrom = \"a\"\nplugin = \"p\"\ntarget = \"targets/b\"\ngates = [{ name = \"g\", type = \"approval\", approvers = 0 }]\n",
                "approvers must be a whole number from 1 to 16",
            ),
            (
                "[environments.a]\nplugin = \"p\"\ntarget = \"targets/a\"\n[environments.b]\npromotesFrom = \"a\"\nplugin = \"p\"\ntarget = \"targets/b\"\ngates = [{ name = \"g\", type = \"plugin\", plugin = \"s\", retries = 3, colour = 1 }]\n",
                "unknown field \"colour\"",
            ),
            (
                "[environments.a]\nplugin = \"p\"\ntarget = \"targets/a\"\n[environments.b]\npromotesFrom = \"a\"\nplugin = \"p\"\ntarget = \"targets/b\"\ngates = [{ name = \"deploy\", type = \"approval\" }]\n",
                "name the promotion's own steps",
            ),
            (
                "[environments.a]\nplugin = \"p\"\ntarget = \"targets/a\"\n[environments.b]\npromotesFrom = \"a\"\nplugin = \"p\"\ntarget = \"targets/b\"\ngates = [{ name = \"w\", type = \"window\" }]\n",
                "not available yet",
            ),
        ];
        for (text, want) in cases {
            let e = parse(text).unwrap_err();
            assert!(e.contains(want), "{text:?}: {e}");
        }
    }
}
