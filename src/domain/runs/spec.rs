//! DAG specs (TOML): parsing, validation and compilation into the form the engine plans with.
//! Every validation error names its place: the step, the field, the cycle's path, the unknown
//! step or plugin, the bad duration.

use crate::duration;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};

/// Steps in one DAG at most.
pub const STEPS_MAX: usize = 10_000;
/// A spec's TOML text at most.
pub const SPEC_BYTES_MAX: usize = 1024 * 1024;
/// Step kinds built into the appliance (for tests and demos).
/// `wait` is queued to start no earlier than its inputs `since` (epoch ms; default: when its
/// turn comes) plus `ms`: the wait is durable (the queue's due index), takes no executor slot,
/// and a restart does not begin it again.
pub const BUILTINS: &[&str] = &["noop", "sleep", "fail", "wait"];

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DagSpec {
    pub name: String,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default, rename = "maxParallelSteps")]
    pub max_parallel_steps: Option<u32>,
    #[serde(default)]
    pub priority: Option<u16>,
    #[serde(default)]
    pub inputs: BTreeMap<String, InputSpec>,
    pub steps: BTreeMap<String, StepSpec>,
    #[serde(default)]
    pub cron: Vec<CronSpec>,
    /// `[execution.caching]`: cache every step (`enabled = true`, `ttl = "1h"`).
    #[serde(default)]
    pub execution: Option<ExecutionSpec>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExecutionSpec {
    #[serde(default)]
    pub caching: Option<CacheSpec>,
}

/// A cache setting: on (`enabled`, default true) with how long an entry lives (`ttl`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CacheSpec {
    #[serde(default)]
    pub enabled: Option<bool>,
    #[serde(default)]
    pub ttl: Option<String>,
}

/// A cache entry's life when `ttl` is not given.
pub const CACHE_TTL_DEFAULT_MS: u64 = 3_600_000;

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InputSpec {
    #[serde(default)]
    pub default: Option<toml::Value>,
    #[serde(default)]
    pub description: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StepSpec {
    /// The plugin (or built-in) that runs the step; empty for a sub-orchestration step.
    #[serde(default)]
    pub plugin: String,
    /// Which of the plugin's step kinds to run (needed when it declares several).
    #[serde(default)]
    pub kind: Option<String>,
    #[serde(default)]
    pub needs: Vec<String>,
    #[serde(default)]
    pub inputs: BTreeMap<String, toml::Value>,
    #[serde(default)]
    pub retries: u32,
    #[serde(default)]
    pub backoff: Option<String>,
    #[serde(default)]
    pub timeout: Option<String>,
    #[serde(default)]
    pub priority: Option<u16>,
    /// Human approval after the step: once it succeeds it waits in `checkpoint_pending` for
    /// an approval (DESIGN.md §10), configured by [`StepSpec::approval`].
    #[serde(default)]
    pub checkpoint_after: Option<bool>,
    /// Who approves a checkpoint and what its timeout does (only with `checkpoint_after`).
    #[serde(default)]
    pub approval: Option<ApprovalSpec>,
    /// Sub-orchestration: the step starts a child run of this DAG (`"child"`, or
    /// `{ dag = "child", version = 2 }` to pin a version) with the step's `inputs` as the
    /// child's inputs, and ends as the child ends.
    #[serde(default)]
    pub orchestration: Option<OrchestrationSpec>,
    /// Result caching: `cache = { ttl = "1h" }` (or `{ enabled = false }` to opt out of the
    /// DAG's `[execution.caching]`).
    #[serde(default)]
    pub cache: Option<CacheSpec>,
    /// Names of secrets (`stella secrets set NAME`) the plugin receives by reference.
    #[serde(default)]
    pub secrets: Vec<String>,
    /// Named locks (`env:${inputs.target}`) the step holds while it runs; it is not dispatched
    /// while another holder has one of them.
    #[serde(default)]
    pub locks: Vec<String>,
    /// The remote deploy agent that runs the step (its worker id): only its leases get the
    /// step's job, the in-process executor never. Only a release bundle's generated DAGs
    /// name one (`release::plan::guard_agent_steps`).
    #[serde(default)]
    pub agent: Option<String>,
}

/// A sub-orchestration's DAG: its name, or a table with the name and a pinned version.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(untagged)]
pub enum OrchestrationSpec {
    Name(String),
    Pinned {
        dag: String,
        #[serde(default)]
        version: Option<u32>,
    },
}

/// `[steps.<name>.approval]`: approvers needed, whether the run's starter may be one, and
/// what a timeout does. A timeout and its `on_timeout` come together or not at all.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApprovalSpec {
    #[serde(default)]
    pub approvers: Option<u32>,
    #[serde(default)]
    pub self_approval: Option<bool>,
    #[serde(default)]
    pub timeout: Option<String>,
    #[serde(default)]
    pub on_timeout: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CronSpec {
    pub schedule: String,
    #[serde(default)]
    pub inputs: BTreeMap<String, toml::Value>,
}

/// A validated DAG, steps in topological order, ready for the engine.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Compiled {
    pub name: String,
    pub max_parallel: u32,
    pub priority: u16,
    /// Declared inputs and their defaults.
    pub inputs: BTreeMap<String, Option<serde_json::Value>>,
    pub steps: Vec<CompiledStep>,
    pub cron: Vec<CompiledCron>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CompiledStep {
    pub name: String,
    pub plugin: String,
    #[serde(default)]
    pub kind: Option<String>,
    pub needs: Vec<usize>,
    pub dependants: Vec<usize>,
    pub inputs: BTreeMap<String, serde_json::Value>,
    pub retries: u32,
    pub backoff_ms: u64,
    pub timeout_ms: u64,
    pub priority: u16,
    #[serde(default)]
    pub secrets: Vec<String>,
    #[serde(default)]
    pub locks: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<String>,
    /// Cached results live this long (`cache`, or the DAG's `[execution.caching]`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_ttl_ms: Option<u64>,
    /// `checkpoint_after = true`: the approval the step waits for once it succeeds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checkpoint: Option<Checkpoint>,
    /// A sub-orchestration step: the DAG (and version) of the child run it starts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub orchestration: Option<SubOrchestration>,
}

impl CompiledStep {
    /// Whether the step runs an installed plugin (not a built-in, not a child run): the plugins
    /// a run pins.
    pub fn runs_plugin(&self) -> bool {
        self.orchestration.is_none() && !BUILTINS.contains(&self.plugin.as_str())
    }
}

/// The child run a sub-orchestration step starts: DAG `dag`, at `version` or its active one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SubOrchestration {
    pub dag: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<u32>,
}

impl Compiled {
    /// The DAGs this one's sub-orchestration steps start, each once.
    pub fn children(&self) -> Vec<&str> {
        let mut out: Vec<&str> =
            self.steps.iter().filter_map(|s| s.orchestration.as_ref()).map(|o| o.dag.as_str()).collect();
        out.sort_unstable();
        out.dedup();
        out
    }
}

/// Approvers a checkpoint needs at most.
pub const APPROVERS_MAX: u32 = 10;

/// A compiled checkpoint: how many distinct approvers, whether the run's starter counts, and
/// the timeout with what it does.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Checkpoint {
    pub approvers: u32,
    pub self_approval: bool,
    pub timeout_ms: Option<u64>,
    pub on_timeout: Option<crate::domain::approvals::OnTimeout>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CompiledCron {
    pub schedule: String,
    pub inputs: BTreeMap<String, serde_json::Value>,
}

impl Compiled {
    pub fn step(&self, name: &str) -> Option<(usize, &CompiledStep)> {
        self.steps.iter().enumerate().find(|(_, s)| s.name == name)
    }
}

fn valid_name(n: &str) -> bool {
    (1..=64).contains(&n.len())
        && n.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

fn json(v: &toml::Value) -> serde_json::Value {
    serde_json::to_value(v).unwrap_or(serde_json::Value::Null)
}

fn ms(place: &str, text: &Option<String>, default: u64) -> Result<u64, SpecError> {
    match text {
        None => Ok(default),
        Some(t) => duration::parse(t).map(|d| d.as_millis() as u64).map_err(|e| SpecError::at(place, e.to_string())),
    }
}

/// What is wrong with a DAG spec, and where (`step build: timeout`, `cron[0].schedule`); no
/// place when it is the whole text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpecError {
    pub place: Option<String>,
    pub reason: String,
}

impl SpecError {
    fn at(place: &str, reason: String) -> Self {
        SpecError { place: Some(place.to_owned()), reason }
    }

    fn whole(reason: String) -> Self {
        SpecError { place: None, reason }
    }
}

impl std::fmt::Display for SpecError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.place {
            Some(place) => write!(f, "{place}: {}", self.reason),
            None => f.write_str(&self.reason),
        }
    }
}

impl std::error::Error for SpecError {}

/// An installed plugin as a spec sees it: its name and the step kinds it implements.
pub type InstalledPlugin = (String, Vec<String>);

/// Parses and validates a spec. `plugins` are the installed plugins besides the builtins.
pub fn compile(text: &str, plugins: &[InstalledPlugin]) -> Result<Compiled, SpecError> {
    compile_with(text, Some(plugins))
}

/// Compiles a spec that was validated when it was registered; its plugins are not checked again
/// (a plugin removed since then fails the step that needs it, not the run's planning).
pub fn compile_registered(text: &str) -> Result<Compiled, SpecError> {
    compile_with(text, None)
}

fn compile_with(text: &str, plugins: Option<&[InstalledPlugin]>) -> Result<Compiled, SpecError> {
    if text.len() > SPEC_BYTES_MAX {
        return Err(SpecError::whole(format!("spec is larger than {SPEC_BYTES_MAX} bytes")));
    }
    let spec: DagSpec = toml::from_str(text).map_err(|e| SpecError::whole(format!("spec does not parse: {e}")))?;
    if !valid_name(&spec.name) {
        return Err(SpecError::at(&format!("name {:?}", spec.name), "expected 1-64 of a-z, 0-9, '-', '_'".into()));
    }
    if spec.steps.is_empty() || spec.steps.len() > STEPS_MAX {
        return Err(SpecError::at("steps", format!("a DAG has 1 to {STEPS_MAX} steps")));
    }
    let max_parallel = spec.max_parallel_steps.unwrap_or(u32::MAX);
    if max_parallel == 0 {
        return Err(SpecError::at("maxParallelSteps", "must be at least 1 (0 would never run a step)".into()));
    }
    let order = topological(&spec)?;
    let index: HashMap<&str, usize> = order.iter().enumerate().map(|(i, n)| (n.as_str(), i)).collect();
    let mut steps = Vec::with_capacity(order.len());
    for name in &order {
        let s = &spec.steps[name];
        steps.push(compile_step(&spec, name, s, &index, plugins)?);
    }
    for i in 0..steps.len() {
        for n in steps[i].needs.clone() {
            steps[n].dependants.push(i);
        }
    }
    let mut cron = Vec::new();
    for (i, c) in spec.cron.iter().enumerate() {
        crate::domain::runs::cron::Schedule::parse(&c.schedule)
            .map_err(|e| SpecError::at(&format!("cron[{i}].schedule"), e))?;
        let inputs: BTreeMap<String, serde_json::Value> = c.inputs.iter().map(|(k, v)| (k.clone(), json(v))).collect();
        if let Some(unknown) = inputs.keys().find(|k| !spec.inputs.contains_key(*k)) {
            return Err(SpecError::at(&format!("cron[{i}].inputs"), format!("{unknown:?} is not a declared input")));
        }
        cron.push(CompiledCron { schedule: c.schedule.clone(), inputs });
    }
    Ok(Compiled {
        name: spec.name.clone(),
        max_parallel,
        priority: spec.priority.unwrap_or(100),
        inputs: spec.inputs.iter().map(|(k, v)| (k.clone(), v.default.as_ref().map(json))).collect(),
        steps,
        cron,
    })
}

fn compile_step(
    spec: &DagSpec,
    name: &str,
    s: &StepSpec,
    index: &HashMap<&str, usize>,
    plugins: Option<&[InstalledPlugin]>,
) -> Result<CompiledStep, SpecError> {
    let place = format!("step {name}");
    if !valid_name(name) {
        return Err(SpecError::at(&place, "name must be 1-64 of a-z, 0-9, '-', '_'".to_owned()));
    }
    let orchestration = sub_orchestration(spec, &place, s)?;
    if orchestration.is_none() && s.plugin.is_empty() {
        return Err(SpecError::at(&place, "needs a plugin (or an orchestration to start a child run)".to_owned()));
    }
    let builtin = BUILTINS.contains(&s.plugin.as_str());
    if builtin && s.kind.is_some() {
        return Err(SpecError::at(&place, format!("kind is for plugins; the built-in {:?} has none", s.plugin)));
    }
    if let Some(plugins) = plugins.filter(|_| !builtin && orchestration.is_none()) {
        let Some((_, kinds)) = plugins.iter().find(|(n, _)| *n == s.plugin) else {
            let mut known: Vec<&str> = BUILTINS.to_vec();
            known.extend(plugins.iter().map(|(n, _)| n.as_str()));
            return Err(SpecError::at(&place, format!("unknown plugin {:?} (known: {})", s.plugin, known.join(", "))));
        };
        match &s.kind {
            Some(k) if !kinds.contains(k) => {
                return Err(SpecError::at(
                    &place,
                    format!("plugin {:?} has no kind {k:?} (kinds: {})", s.plugin, kinds.join(", ")),
                ));
            }
            None if kinds.len() > 1 => {
                return Err(SpecError::at(
                    &place,
                    format!(
                        "plugin {:?} implements several kinds ({}): name one with kind = \"…\"",
                        s.plugin,
                        kinds.join(", ")
                    ),
                ));
            }
            _ => {}
        }
    }
    if let Some(bad) = s.secrets.iter().find(|n| !valid_name(n)) {
        return Err(SpecError::at(&place, format!("secret name {bad:?} must be 1-64 of a-z, 0-9, '-', '_'")));
    }
    for (i, l) in s.locks.iter().enumerate() {
        check_references(spec, name, &format!("locks[{i}]"), &toml::Value::String(l.clone()))?;
    }
    let mut inputs = BTreeMap::new();
    for (k, v) in &s.inputs {
        check_references(spec, name, k, v)?;
        inputs.insert(k.clone(), json(v));
    }
    Ok(CompiledStep {
        name: name.to_owned(),
        plugin: s.plugin.clone(),
        kind: s.kind.clone(),
        needs: s.needs.iter().map(|n| index[n.as_str()]).collect(),
        dependants: vec![],
        inputs,
        retries: s.retries.min(100),
        backoff_ms: ms(&format!("{place}: backoff"), &s.backoff, 1_000)?,
        timeout_ms: ms(&format!("{place}: timeout"), &s.timeout, 300_000)?,
        priority: s.priority.or(spec.priority).unwrap_or(100),
        secrets: s.secrets.clone(),
        locks: s.locks.clone(),
        agent: s.agent.clone(),
        checkpoint: checkpoint(&place, s)?,
        cache_ttl_ms: if orchestration.is_some() { None } else { cache_ttl(spec, &place, s)? },
        orchestration,
    })
}

/// A sub-orchestration step's child DAG. The fields of a job (plugin, kind, retries, backoff,
/// timeout, priority, secrets, locks, agent, cache) are not for it: the child's steps have
/// their own.
fn sub_orchestration(spec: &DagSpec, place: &str, s: &StepSpec) -> Result<Option<SubOrchestration>, SpecError> {
    let Some(o) = &s.orchestration else { return Ok(None) };
    let (dag, version) = match o {
        OrchestrationSpec::Name(d) => (d.clone(), None),
        OrchestrationSpec::Pinned { dag, version } => (dag.clone(), *version),
    };
    let at = format!("{place}: orchestration");
    if !valid_name(&dag) {
        return Err(SpecError::at(&at, format!("DAG name {dag:?} must be 1-64 of a-z, 0-9, '-', '_'")));
    }
    if dag == spec.name {
        return Err(SpecError::at(&at, format!("DAG {dag} cannot start itself (cycle: {dag} -> {dag})")));
    }
    if version == Some(0) {
        return Err(SpecError::at(&at, "version must be 1 or more".to_owned()));
    }
    let job_fields = [
        ("plugin", !s.plugin.is_empty()),
        ("kind", s.kind.is_some()),
        ("retries", s.retries > 0),
        ("backoff", s.backoff.is_some()),
        ("timeout", s.timeout.is_some()),
        ("priority", s.priority.is_some()),
        ("secrets", !s.secrets.is_empty()),
        ("locks", !s.locks.is_empty()),
        ("agent", s.agent.is_some()),
        ("cache", s.cache.is_some()),
    ];
    if let Some((field, _)) = job_fields.iter().find(|(_, set)| *set) {
        return Err(SpecError::at(
            place,
            format!("{field} is not for a sub-orchestration step (the child DAG's steps set their own)"),
        ));
    }
    Ok(Some(SubOrchestration { dag, version }))
}

/// The step's cache TTL: its own `cache`, else the DAG's `[execution.caching]`; none if off.
fn cache_ttl(spec: &DagSpec, place: &str, s: &StepSpec) -> Result<Option<u64>, SpecError> {
    let dag = spec.execution.as_ref().and_then(|e| e.caching.as_ref());
    let (setting, at) = match (&s.cache, dag) {
        (Some(c), _) => (c, format!("{place}: cache.ttl")),
        (None, Some(c)) => (c, "execution.caching.ttl".to_owned()),
        (None, None) => return Ok(None),
    };
    if setting.enabled == Some(false) {
        return Ok(None);
    }
    let ttl = ms(&at, &setting.ttl, CACHE_TTL_DEFAULT_MS)?;
    if ttl == 0 {
        return Err(SpecError::at(&at, "must be longer than 0 (or enabled = false)".to_owned()));
    }
    Ok(Some(ttl))
}

fn checkpoint(place: &str, s: &StepSpec) -> Result<Option<Checkpoint>, SpecError> {
    let a = s.approval.clone().unwrap_or(ApprovalSpec {
        approvers: None,
        self_approval: None,
        timeout: None,
        on_timeout: None,
    });
    if s.checkpoint_after != Some(true) {
        if s.approval.is_some() {
            return Err(SpecError::at(place, "approval is set but checkpoint_after is not true".to_owned()));
        }
        return Ok(None);
    }
    let approvers = a.approvers.unwrap_or(1);
    if !(1..=APPROVERS_MAX).contains(&approvers) {
        return Err(SpecError::at(&format!("{place}: approval.approvers"), format!("must be 1 to {APPROVERS_MAX}")));
    }
    let on_timeout = a
        .on_timeout
        .as_deref()
        .map(|t| {
            crate::domain::approvals::OnTimeout::parse(t).ok_or_else(|| {
                SpecError::at(
                    &format!("{place}: approval.on_timeout"),
                    format!("{t:?} is not one of reject, approve, cancel"),
                )
            })
        })
        .transpose()?;
    let timeout_ms = match &a.timeout {
        None => None,
        Some(_) => Some(ms(&format!("{place}: approval.timeout"), &a.timeout, 0)?),
    };
    match (timeout_ms, on_timeout) {
        (Some(0), _) => Err(SpecError::at(&format!("{place}: approval.timeout"), "must be longer than 0".to_owned())),
        (Some(_), None) => Err(SpecError::at(
            &format!("{place}: approval.on_timeout"),
            "a timeout needs an explicit on_timeout (reject, approve or cancel)".to_owned(),
        )),
        (None, Some(_)) => Err(SpecError::at(
            &format!("{place}: approval.timeout"),
            "on_timeout is set but there is no timeout".to_owned(),
        )),
        _ => {
            Ok(Some(Checkpoint { approvers, self_approval: a.self_approval.unwrap_or(false), timeout_ms, on_timeout }))
        }
    }
}

/// `${inputs.x}` must name a declared input; `${steps.s.outputs.k}` a step this one needs.
fn check_references(spec: &DagSpec, step: &str, key: &str, v: &toml::Value) -> Result<(), SpecError> {
    let toml::Value::String(text) = v else { return Ok(()) };
    for reference in references(text) {
        let parts: Vec<&str> = reference.split('.').collect();
        let ok = match parts.as_slice() {
            ["inputs", name] => spec.inputs.contains_key(*name),
            ["steps", s, "outputs", _] => is_ancestor(spec, step, s),
            _ => false,
        };
        if !ok {
            return Err(SpecError::at(
                &format!("step {step}: input {key}"),
                format!(
                    "reference ${{{reference}}} must be ${{inputs.<declared input>}} or ${{steps.<a step it needs, directly or not>.outputs.<name>}}"
                ),
            ));
        }
    }
    Ok(())
}

/// Whether `ancestor` is among the steps `step` needs, directly or through them (so its
/// outputs exist before `step` runs).
fn is_ancestor(spec: &DagSpec, step: &str, ancestor: &str) -> bool {
    let mut stack: Vec<&str> = spec.steps[step].needs.iter().map(String::as_str).collect();
    let mut seen = std::collections::HashSet::new();
    while let Some(n) = stack.pop() {
        if n == ancestor {
            return true;
        }
        if seen.insert(n)
            && let Some(s) = spec.steps.get(n)
        {
            stack.extend(s.needs.iter().map(String::as_str));
        }
    }
    false
}

/// The `${…}` references in a string.
pub fn references(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find("${") {
        let after = &rest[start + 2..];
        let Some(end) = after.find('}') else { break };
        out.push(after[..end].to_owned());
        rest = &after[end + 1..];
    }
    out
}

/// Kahn's algorithm; on a cycle, names its path.
fn topological(spec: &DagSpec) -> Result<Vec<String>, SpecError> {
    for (name, s) in &spec.steps {
        if let Some(unknown) = s.needs.iter().find(|n| !spec.steps.contains_key(*n)) {
            return Err(SpecError::at(&format!("step {name}"), format!("needs unknown step {unknown:?}")));
        }
        if s.needs.iter().any(|n| n == name) {
            return Err(SpecError::at(&format!("step {name}"), format!("needs itself (cycle: {name} -> {name})")));
        }
    }
    let mut pending: BTreeMap<&str, usize> = spec.steps.iter().map(|(n, s)| (n.as_str(), s.needs.len())).collect();
    let mut ready: Vec<&str> = pending.iter().filter(|(_, c)| **c == 0).map(|(n, _)| *n).collect();
    // A stack popped from the end: reverse name order makes the order alphabetical among peers.
    ready.sort_by(|a, b| b.cmp(a));
    let mut order = Vec::new();
    while let Some(n) = ready.pop() {
        order.push(n.to_owned());
        pending.remove(n);
        for (m, s) in &spec.steps {
            if s.needs.iter().any(|x| x == n)
                && let Some(c) = pending.get_mut(m.as_str())
            {
                *c -= 1;
                if *c == 0 {
                    ready.push(m.as_str());
                }
            }
        }
        ready.sort_by(|a, b| b.cmp(a));
    }
    if order.len() < spec.steps.len() {
        return Err(SpecError::at("cycle", cycle_path(spec, &pending)));
    }
    Ok(order)
}

fn cycle_path(spec: &DagSpec, left: &BTreeMap<&str, usize>) -> String {
    let start = *left.keys().next().expect("a cycle leaves steps");
    let mut path = vec![start];
    let mut at = start;
    loop {
        let next = spec.steps[at]
            .needs
            .iter()
            .find(|n| left.contains_key(n.as_str()))
            .expect("a step in a cycle needs another");
        if let Some(pos) = path.iter().position(|p| *p == next.as_str()) {
            let mut cycle: Vec<&str> = path[pos..].to_vec();
            cycle.push(next);
            cycle.reverse();
            return cycle.join(" -> ");
        }
        path.push(next);
        at = next;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DIAMOND: &str = r#"
name = "diamond"
maxParallelSteps = 2
[inputs.target]
default = "prod"
[steps.a]
plugin = "noop"
inputs = { env = "${inputs.target}" }
[steps.b]
plugin = "sleep"
needs = ["a"]
inputs = { ms = 10, from = "${steps.a.outputs.env}" }
[steps.c]
plugin = "noop"
needs = ["a"]
retries = 2
backoff = "500ms"
[steps.d]
plugin = "noop"
needs = ["b", "c"]
"#;

    #[test]
    fn a_diamond_compiles_in_topological_order() {
        let d = compile(DIAMOND, &[]).unwrap();
        let names: Vec<&str> = d.steps.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names[0], "a");
        assert_eq!(names[3], "d");
        let (_, a) = d.step("a").unwrap();
        assert_eq!(a.dependants.len(), 2);
        assert_eq!(d.step("c").unwrap().1.backoff_ms, 500);
        assert_eq!(d.max_parallel, 2);
    }

    #[test]
    fn errors_name_their_place() {
        let cases = [
            (DIAMOND.replace("needs = [\"a\"]\ninputs = { ms", "needs = [\"d\"]\ninputs = { ms"), "cycle: "),
            (DIAMOND.replace("needs = [\"b\", \"c\"]", "needs = [\"b\", \"x\"]"), "step d: needs unknown step \"x\""),
            (
                DIAMOND.replace("plugin = \"sleep\"", "plugin = \"slep\""),
                "step b: unknown plugin \"slep\" (known: noop, sleep, fail, wait)",
            ),
            (
                DIAMOND.replace("backoff = \"500ms\"", "backoff = \"soon\""),
                "step c: backoff: invalid duration \"soon\"",
            ),
            (DIAMOND.replace("${inputs.target}", "${inputs.nope}"), "step a: input env: reference ${inputs.nope}"),
            (DIAMOND.replace("maxParallelSteps = 2", "maxParallelSteps = 0"), "maxParallelSteps: must be at least 1"),
            (
                DIAMOND.replace("retries = 2", "orchestration = \"child\""),
                "step c: plugin is not for a sub-orchestration step",
            ),
            (
                DIAMOND.replace("plugin = \"noop\"\n", "orchestration = \"diamond\"\n"),
                "orchestration: DAG diamond cannot start itself",
            ),
            (DIAMOND.replace("retries = 2", "cache = { ttl = \"never\" }"), "step c: cache.ttl: invalid duration"),
            (
                DIAMOND.replace("retries = 2", "approval = { approvers = 2 }"),
                "step c: approval is set but checkpoint_after is not true",
            ),
            (
                DIAMOND.replace("retries = 2", "checkpoint_after = true\napproval = { timeout = \"1h\" }"),
                "step c: approval.on_timeout: a timeout needs an explicit on_timeout",
            ),
            (
                DIAMOND.replace(
                    "retries = 2",
                    "checkpoint_after = true\napproval = { timeout = \"1h\", on_timeout = \"ignore\" }",
                ),
                "step c: approval.on_timeout: \"ignore\" is not one of reject, approve, cancel",
            ),
            (
                DIAMOND.replace("retries = 2", "checkpoint_after = true\napproval = { approvers = 0 }"),
                "step c: approval.approvers: must be 1 to 10",
            ),
        ];
        for (text, expected) in cases {
            let err = compile(&text, &[]).unwrap_err().to_string();
            assert!(err.contains(expected), "{err:?} should contain {expected:?}");
        }
        let cyc = compile(&DIAMOND.replace("needs = [\"a\"]\ninputs = { ms", "needs = [\"d\"]\ninputs = { ms"), &[])
            .unwrap_err()
            .to_string();
        assert!(cyc.contains("b -> d -> b") || cyc.contains("d -> b -> d"), "{cyc}");
    }

    #[test]
    fn caching_is_per_step_or_per_dag_and_a_step_may_opt_out() {
        let c = compile(&DIAMOND.replace("retries = 2", "cache = { ttl = \"30m\" }"), &[]).unwrap();
        assert_eq!(c.step("c").unwrap().1.cache_ttl_ms, Some(1_800_000));
        assert_eq!(c.step("d").unwrap().1.cache_ttl_ms, None);
        let all = format!(
            "{}\n[execution.caching]\nenabled = true\n",
            DIAMOND.replace("retries = 2", "cache = { enabled = false }")
        );
        let c = compile(&all, &[]).unwrap();
        assert_eq!(c.step("d").unwrap().1.cache_ttl_ms, Some(CACHE_TTL_DEFAULT_MS));
        assert_eq!(c.step("c").unwrap().1.cache_ttl_ms, None, "opted out");
    }

    #[test]
    fn a_checkpoint_compiles_with_its_approval() {
        let text = DIAMOND.replace(
            "retries = 2",
            "checkpoint_after = true\napproval = { approvers = 2, timeout = \"30m\", on_timeout = \"cancel\" }",
        );
        let c = compile(&text, &[]).unwrap();
        let cp = c.step("c").unwrap().1.checkpoint.clone().unwrap();
        assert_eq!(
            cp,
            Checkpoint {
                approvers: 2,
                self_approval: false,
                timeout_ms: Some(1_800_000),
                on_timeout: Some(crate::domain::approvals::OnTimeout::Cancel)
            }
        );
        let plain = compile(&DIAMOND.replace("retries = 2", "checkpoint_after = true"), &[]).unwrap();
        let cp = plain.step("c").unwrap().1.checkpoint.clone().unwrap();
        assert_eq!((cp.approvers, cp.timeout_ms, cp.on_timeout), (1, None, None));
        assert!(compile(DIAMOND, &[]).unwrap().steps.iter().all(|s| s.checkpoint.is_none()));
    }
}
