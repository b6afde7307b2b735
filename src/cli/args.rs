//! The command tree. It holds every command the runbooks name, with their words and flags, plus
//! stella's own. What a command does lives in `dispatch`; this file is only the grammar.

use clap::{Args, Parser, Subcommand, ValueEnum};
use std::path::PathBuf;

#[derive(Debug, Parser)]
#[command(
    name = "stella",
    version,
    about = "The sealed orchestrator appliance: daemon and CLI",
    propagate_version = true
)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Top,
}

#[derive(Debug, Clone, Args)]
pub struct Global {
    /// Use the appliance laid out under DIR (its config, socket and dev token) instead of /.
    #[arg(long, global = true, env = "STELLA_STATE_DIR", value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// Config file [default: <root>/etc/stella/orchestrator.toml].
    #[arg(long, global = true, env = "STELLA_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Talk to the daemon over HTTPS at URL instead of its Unix socket.
    #[arg(long, global = true, env = "STELLA_SERVER", value_name = "URL")]
    pub server: Option<String>,
    /// Bearer token (required with --server unless --state-dir has a dev token).
    #[arg(long, global = true, env = "STELLA_TOKEN", hide_env_values = true, value_name = "TOKEN")]
    pub token: Option<String>,
    /// PEM file of the CA that signed the daemon's certificate (with --server).
    #[arg(long, global = true, env = "STELLA_CA", value_name = "FILE")]
    pub ca: Option<PathBuf>,
    /// Output format.
    #[arg(long, global = true, value_enum, default_value_t = Format::Text)]
    pub format: Format,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Top {
    /// Run the daemon.
    Serve(ServeArgs),
    /// API tokens.
    #[command(subcommand)]
    Auth(AuthCmd),
    /// Orchestrator operations: runs, queue, locks, config, environments, store.
    #[command(subcommand)]
    Orch(OrchCmd),
    /// Release promotions.
    #[command(subcommand)]
    Promotion(PromotionCmd),
    /// Rollbacks.
    #[command(subcommand)]
    Rollback(RollbackCmd),
    /// Deploy an artifact to an environment.
    Deploy(DeployArgs),
    /// The artifact registry.
    #[command(subcommand)]
    Registry(RegistryCmd),
    /// Run a named diagnostic check.
    Doctor(DoctorArgs),
    /// Manage the appliance's system service.
    #[command(subcommand)]
    Service(ServiceCmd),
    /// Signed bundles.
    #[command(subcommand)]
    Bundle(BundleCmd),
    /// Signing keys and the trust store.
    #[command(subcommand)]
    Keys(KeysCmd),
    /// Export ledger, logs, metrics and traces as a signed pack.
    Export(ExportArgs),
    /// Verify and query exported packs, offline.
    #[command(subcommand)]
    Audit(AuditCmd),
    /// Back up and restore the store.
    #[command(subcommand)]
    Backup(BackupCmd),
    /// The local secret store.
    #[command(subcommand)]
    Secrets(SecretsCmd),
    /// Man pages and shell completions.
    #[command(subcommand)]
    Generate(GenerateCmd),
    /// A deploy agent on an environment's host.
    #[command(subcommand)]
    Agent(AgentTopCmd),
}

#[derive(Debug, Subcommand)]
pub enum AgentTopCmd {
    /// Run the deploy agent of an environment: lease its deployment and probe jobs from the
    /// appliance (--server URL --ca FILE --token TOKEN, a site token of scope
    /// orchestrator:agent), verify each signed plugin and artifact against --trust, run them here.
    Run(AgentRunArgs),
}

#[derive(Debug, Args)]
pub struct AgentRunArgs {
    /// The environment this agent deploys.
    #[arg(long)]
    pub env: String,
    /// The agent's name [default: the agent the environment's release names].
    #[arg(long)]
    pub name: Option<String>,
    /// Where the agent keeps verified plugins and artifacts, attempt directories and targets
    /// [default: $STATE_DIRECTORY, <state-dir>/agent, or /var/lib/stella-agent].
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
    /// Directory with the allowed_signers (and revoked) that plugins and artifacts must verify
    /// against [default: the appliance's trust store with --state-dir, else <dir>/trust].
    #[arg(long, value_name = "DIR")]
    pub trust: Option<PathBuf>,
    /// Attempts run at once.
    #[arg(long, default_value_t = 2)]
    pub slots: usize,
    /// Lease duration; the agent heartbeats every third of it.
    #[arg(long, default_value = "30s")]
    pub lease_ttl: String,
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Development mode: local state dir (default ./stella-dev), generated keys, certificate and admin token.
    #[arg(long)]
    pub dev: bool,
    /// HTTPS listen address, overriding server.listen ("" disables TCP).
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<String>,
    /// Start on a new, empty store although this appliance has an identity (its key, its
    /// marker) and its store file is missing or empty. Without it such a start is refused:
    /// restore the store instead.
    #[arg(long)]
    pub init_new_store: bool,
}

#[derive(Debug, Subcommand)]
pub enum AuthCmd {
    /// Create, list, show and revoke API tokens.
    #[command(subcommand)]
    Token(TokenCmd),
}

#[derive(Debug, Subcommand)]
pub enum TokenCmd {
    /// Create a token; its secret is printed once.
    Create {
        #[arg(long)]
        tenant: String,
        /// Comma-separated: orchestrator:read, operate, approve, admin, audit; a deploy agent's
        /// token: --tenant site --scopes orchestrator:agent.
        #[arg(long)]
        scopes: String,
        /// Lifetime such as 30d or 12h; default: no expiry.
        #[arg(long)]
        expires: Option<String>,
        #[arg(long)]
        description: Option<String>,
    },
    /// List tokens (never their secrets).
    List,
    /// Show one token.
    Show { id: String },
    /// Revoke a token; it stops working at once.
    Revoke {
        id: String,
        #[arg(long)]
        reason: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum OrchCmd {
    /// Daemon status: version, uptime, store, ledger, queue, listeners.
    Status,
    /// DAG runs.
    #[command(subcommand)]
    Run(RunCmd),
    /// The durable job queue.
    #[command(subcommand)]
    Queue(QueueCmd),
    /// The dead-letter queue.
    #[command(subcommand)]
    Dlq(DlqCmd),
    /// Named locks.
    #[command(subcommand)]
    Locks(LocksCmd),
    /// Runtime configuration.
    #[command(subcommand)]
    Config(ConfigCmd),
    /// Environments.
    #[command(subcommand)]
    Env(EnvCmd),
    /// Deployments.
    #[command(subcommand)]
    Deployments(DeploymentsCmd),
    /// Artifacts.
    #[command(subcommand)]
    Artifacts(ArtifactsCmd),
    /// Workers and agents.
    #[command(subcommand)]
    Agent(AgentCmd),
    /// DAG versions.
    #[command(subcommand)]
    Dag(DagCmd),
    /// Cron schedules.
    #[command(subcommand)]
    Schedule(ScheduleCmd),
    /// Checkpoint approvals: list, show, approve, reject.
    #[command(subcommand)]
    Approvals(ApprovalsCmd),
    /// The step result cache: entries, why a step missed, purge.
    #[command(subcommand)]
    Cache(CacheCmd),
    /// Check connectivity to a deployment target.
    Connectivity {
        #[arg(long)]
        target: String,
    },
    /// Deployment-target credentials.
    #[command(subcommand)]
    Credentials(CredentialsCmd),
    /// The store.
    #[command(subcommand)]
    Db(DbCmd),
    /// The ledger, page by page.
    Ledger {
        /// Entries after this sequence.
        #[arg(long, default_value_t = 0)]
        after: u64,
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
    /// Repair projections from the ledger.
    Repair {
        #[arg(long)]
        deployment: Option<String>,
        /// Why (ledgered with the repair).
        #[arg(long)]
        reason: Option<String>,
    },
    /// Health-check an environment.
    HealthCheck {
        #[arg(long)]
        env: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum CacheCmd {
    /// Entries of your tenant, oldest first: DAG, step, age, hits, expiry.
    List {
        #[arg(long)]
        dag: Option<String>,
    },
    /// A step's fingerprint part by part against the nearest entry: which part changed.
    Explain { run: String, step: String },
    /// Drop entries (all of your tenant's, or one DAG's).
    Purge {
        #[arg(long)]
        dag: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum ApprovalsCmd {
    /// Approvals of your tenant, oldest first (pending ones unless --state says otherwise).
    List {
        /// pending, approved, rejected, expired, cancelled or all.
        #[arg(long, default_value = "pending")]
        state: String,
        /// Only this run's.
        #[arg(long)]
        run: Option<String>,
    },
    /// One approval: what it is bound to, who decided what, how it ended.
    Show { id: String },
    /// Approve (needs orchestrator:approve; not the run's starter): the step goes on once enough
    /// approvers have.
    Approve {
        id: String,
        /// Why (ledgered with the decision).
        #[arg(long)]
        reason: Option<String>,
    },
    /// Reject: the step fails with the reason (retry or skip it as any failed step).
    Reject {
        id: String,
        /// Why (required; ledgered, and the step's error).
        #[arg(long)]
        reason: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum RunCmd {
    /// Start a run of a DAG.
    Start {
        dag: String,
        #[arg(long = "input", value_name = "K=V")]
        inputs: Vec<String>,
        #[arg(long = "inputs", value_name = "FILE")]
        inputs_file: Option<PathBuf>,
        /// Idempotency token (`runToken`); named --run-token because --token is the bearer token.
        #[arg(long)]
        run_token: Option<String>,
    },
    /// Cancel a run.
    Cancel { run: String },
    /// Stream run events (Server-Sent Events), optionally of one run; resumable with --after.
    Stream {
        run: Option<String>,
        #[arg(long)]
        dag: Option<String>,
        /// Resume after this ledger sequence.
        #[arg(long)]
        after: Option<u64>,
        /// Stop after the run (given as RUN) finishes.
        #[arg(long)]
        until_done: bool,
    },
    /// Runs, oldest first.
    List,
    /// A run's status.
    Status { run: String },
    /// A run's trace.
    Trace {
        run: String,
        #[arg(long)]
        verbose: bool,
    },
    /// Retry the last failed step.
    Retry {
        run: String,
        #[arg(long)]
        step: Option<String>,
    },
    /// Skip the last failed step.
    Skip {
        run: String,
        #[arg(long)]
        step: Option<String>,
    },
    /// Abort a failed run.
    Abort { run: String },
}

#[derive(Debug, Subcommand)]
pub enum QueueCmd {
    /// Depth per type and state, oldest age, leased, DLQ depth, pauses and budgets.
    Status,
    /// Stop dispatching a job type (running work finishes).
    Pause {
        job_type: String,
        /// Pause a type the appliance does not know yet (no job, plugin or built-in kind of
        /// that name), so that its first jobs wait.
        #[arg(long)]
        create: bool,
    },
    /// Resume dispatching a job type.
    Resume { job_type: String },
    /// Rate-limit and depth budgets.
    #[command(subcommand)]
    Budget(BudgetCmd),
    /// Enqueue a job.
    Enqueue {
        job_type: String,
        /// JSON payload.
        #[arg(long, default_value = "{}")]
        payload: String,
        #[arg(long)]
        priority: Option<u16>,
        #[arg(long)]
        max_attempts: Option<u32>,
        /// Not before this long from now, e.g. 30s.
        #[arg(long)]
        delay: Option<String>,
        /// Idempotency key: the same key returns the same job.
        #[arg(long)]
        key: Option<String>,
        #[arg(long)]
        tenant: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum BudgetCmd {
    /// Set a budget for a job type.
    Set {
        job_type: String,
        /// Leases per second (or /m, /h), e.g. 50/s.
        #[arg(long)]
        rate: Option<String>,
        #[arg(long)]
        burst: Option<u32>,
        /// Waiting jobs at most; enqueue beyond gets 429 (backpressure).
        #[arg(long)]
        max_depth: Option<u64>,
        /// A temporary change for this long, e.g. 30m: it overrides only the limits it names and
        /// restores the budget before it at its end.
        #[arg(long = "for", value_name = "DURATION")]
        for_: Option<String>,
        /// One tenant's budget; default every tenant together.
        #[arg(long)]
        tenant: Option<String>,
    },
    /// Remove a budget.
    Clear {
        job_type: String,
        #[arg(long)]
        tenant: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum DlqCmd {
    /// Dead jobs with their attempts and last error.
    List,
    /// One dead job with its payload.
    Show { id: String },
    /// Re-enqueue dead jobs as new jobs linked to them.
    Replay {
        id: Option<String>,
        #[arg(long = "type")]
        job_type: Option<String>,
        #[arg(long)]
        all: bool,
    },
    /// Delete dead jobs, after writing them to an NDJSON snapshot file.
    Purge {
        ids: Vec<String>,
        /// The snapshot to write first (must not exist); required.
        #[arg(long, value_name = "FILE")]
        snapshot: Option<PathBuf>,
        #[arg(long = "type")]
        job_type: Option<String>,
        #[arg(long)]
        all: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum LocksCmd {
    /// Locks with holder, age, expiry and waiters.
    List {
        #[arg(long)]
        env: Option<String>,
    },
    /// Release a lock (by id, or every lock of an environment with --force).
    Release {
        id: Option<String>,
        #[arg(long)]
        env: Option<String>,
        /// Release regardless of the holder (admin); the old holder is refused afterwards.
        #[arg(long)]
        force: bool,
        #[arg(long)]
        reason: Option<String>,
        /// A holder releasing its own lock names itself and its token.
        #[arg(long)]
        owner: Option<String>,
        #[arg(long = "lock-token")]
        lock_token: Option<u64>,
    },
    /// Acquire (or wait in line for) a lock.
    Acquire {
        resource: String,
        #[arg(long)]
        owner: String,
        /// Default: locks.timeout.
        #[arg(long)]
        ttl: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum ConfigCmd {
    Set { key: String, value: String },
    Get { key: String },
    Show,
}

#[derive(Debug, Subcommand)]
pub enum EnvCmd {
    /// Dev mode: declare the environments of a local release.toml (recorded unsigned; in
    /// production only a signed release bundle declares them).
    Declare { file: PathBuf },
    Status {
        env: Option<String>,
        #[arg(long)]
        detailed: bool,
    },
    #[command(subcommand)]
    Config(EnvConfigCmd),
    Reset {
        env: String,
        #[arg(long)]
        to_baseline: bool,
        #[arg(long)]
        reason: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum EnvConfigCmd {
    Diff { env: String },
}

#[derive(Debug, Subcommand)]
pub enum DeploymentsCmd {
    List {
        #[arg(long)]
        env: Option<String>,
        #[arg(long)]
        last: Option<usize>,
        #[arg(long)]
        status: Option<String>,
    },
    Current {
        #[arg(long)]
        env: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum ArtifactsCmd {
    List {
        #[arg(long)]
        env: Option<String>,
        #[arg(long)]
        filter: Option<String>,
    },
    Get {
        artifact: String,
        #[arg(long)]
        check: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum AgentCmd {
    Status {
        #[arg(long)]
        env: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum DagCmd {
    /// DAGs and their active versions.
    List,
    /// One DAG's versions (and with `--spec` its active version's spec: a release's generated
    /// deployment and promotion DAGs too).
    Show {
        dag: String,
        /// Print the active version's spec (TOML).
        #[arg(long)]
        spec: bool,
    },
    /// Disable a version (default: the active one); runs cannot start on it.
    #[command(disable_version_flag = true)]
    Disable {
        dag: String,
        #[arg(long)]
        version: Option<u32>,
    },
    #[command(disable_version_flag = true)]
    Enable {
        dag: String,
        #[arg(long)]
        version: Option<u32>,
    },
    /// Make an earlier enabled version active again.
    #[command(disable_version_flag = true)]
    Rollback {
        dag: String,
        #[arg(long)]
        version: Option<u32>,
    },
    /// Register a DAG spec from a local file (dev mode only; recorded as unsigned).
    Register { file: PathBuf },
}

#[derive(Debug, Subcommand)]
pub enum ScheduleCmd {
    /// Cron schedules: next fire, last run, paused or disabled.
    List,
    /// Stop a DAG's cron triggers until resumed.
    Pause {
        dag: String,
    },
    Resume {
        dag: String,
    },
    /// Remove a DAG's cron triggers (a new DAG version brings its own).
    Clear {
        dag: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum CredentialsCmd {
    Verify {
        #[arg(long)]
        target: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum DbCmd {
    /// Check the ledger chain and replay it against the tables. Asks the daemon if it runs,
    /// otherwise opens the stopped store read-only.
    Verify {
        /// Never ask the daemon; open the store file read-only.
        #[arg(long)]
        offline: bool,
        /// Check only the ledger's hash chain (fast, on two threads), not the tables.
        #[arg(long)]
        chain_only: bool,
    },
    /// Repair a stopped store after a crash (the repair redb runs when a store is opened for
    /// writing), then check it as `db verify` does. Refused while the daemon runs.
    Repair,
}

#[derive(Debug, Subcommand)]
pub enum PromotionCmd {
    /// Promote an artifact into an environment through its gates (it must have succeeded in
    /// the environment that one promotes from).
    Start {
        /// The artifact, `NAME@VERSION`.
        artifact: String,
        /// The environment to promote into.
        #[arg(long)]
        to: String,
        /// Promote although the artifact has not succeeded where the environment promotes from
        /// (needs orchestrator:admin; ledgered).
        #[arg(long)]
        force_path: bool,
        #[arg(long)]
        reason: Option<String>,
    },
    /// A promotion (default: the unfinished one, else the latest): its current step, last
    /// update and age, error, and why it waits.
    Status {
        /// A promotion id (`prom-N`).
        id: Option<String>,
    },
    /// Every step and gate attempt of a promotion (default: the latest) with times and agent.
    Trace {
        /// A promotion id (`prom-N`).
        id: Option<String>,
        /// Each attempt's outcome and error, and each step's outputs.
        #[arg(long)]
        verbose: bool,
    },
    /// Each gate of a promotion (default: the latest): state, attempts, time in state, what it
    /// waits on.
    Gates {
        /// A promotion id (`prom-N`).
        id: Option<String>,
    },
    /// Act on a promotion's gate.
    #[command(subcommand)]
    Gate(GateCmd),
    /// Promotions, newest first.
    List {
        /// `in_progress`, `success` or `failed`.
        #[arg(long)]
        status: Option<String>,
        /// Only those whose state has not changed for this long (`5m`).
        #[arg(long)]
        older_than: Option<String>,
        /// Only those into this environment.
        #[arg(long)]
        env: Option<String>,
    },
    /// End an unfinished promotion as failed: its run is cancelled, its locks released.
    Abort {
        /// A promotion id (`prom-N`).
        id: String,
        #[arg(long)]
        reason: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum GateCmd {
    /// Ask to skip a gate of a promotion (opens an approval a second actor must give).
    Skip {
        /// The gate (default: the one the promotion waits at).
        gate: Option<String>,
        /// A promotion id (default: the unfinished one).
        #[arg(long)]
        promotion: Option<String>,
        #[arg(long)]
        reason: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum RollbackCmd {
    /// Roll an environment back to its last known good (or `--to NAME@VERSION`): checks the
    /// artifact, the agent and the lock before anything changes.
    Start {
        #[arg(long)]
        env: String,
        #[arg(long)]
        to: Option<String>,
        #[arg(long)]
        reason: Option<String>,
    },
    /// The latest rollback (of `--env`): its status, error and failed step.
    Status {
        #[arg(long)]
        env: Option<String>,
    },
    /// Every step of a rollback (default: the latest): times, agent, plugin error.
    Trace {
        /// A deployment id (`dep-N`).
        id: Option<String>,
        #[arg(long)]
        env: Option<String>,
        #[arg(long)]
        verbose: bool,
    },
}

#[derive(Debug, Args)]
pub struct DeployArgs {
    #[arg(long)]
    pub env: String,
    /// `NAME@VERSION`, as `orch artifacts list` shows it.
    #[arg(long)]
    pub artifact: String,
    /// Break the environment's lock first (held by a stuck holder); needs orchestrator:admin,
    /// ledgered with your name.
    #[arg(long)]
    pub force: bool,
    #[arg(long)]
    pub reason: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum RegistryCmd {
    #[command(subcommand)]
    Retention(RetentionCmd),
    /// Bring an artifact back from its verified backup copy (`registry.backup_dir`).
    Restore {
        #[arg(long)]
        artifact: String,
        /// Only `backup`.
        #[arg(long)]
        from: String,
    },
    /// Delete an artifact from the registry (refused, naming why, when retention keeps it).
    Delete {
        #[arg(long)]
        artifact: String,
        #[arg(long)]
        reason: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum RetentionCmd {
    /// The policy, and per artifact: kept or deletable, and why.
    Show,
    /// Keep at least N versions of each artifact (runtime key `registry.min_versions`).
    Set {
        #[arg(long)]
        min_versions: u32,
    },
    /// Delete every artifact retention does not keep (each deletion ledgered).
    Apply {
        #[arg(long)]
        reason: String,
    },
}

#[derive(Debug, Args)]
pub struct DoctorArgs {
    /// Check id, e.g. check.orchestrator.job-health.
    #[arg(long)]
    pub check: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum ServiceCmd {
    /// Restart a service through systemd (`orchestrator` is stella.service).
    Restart { service: String },
}

#[derive(Debug, Subcommand)]
pub enum BundleCmd {
    /// Build and sign a bundle (its --version is the bundle's, not stella's).
    #[command(disable_version_flag = true)]
    Build {
        dir: PathBuf,
        #[arg(long)]
        kind: String,
        #[arg(long)]
        name: String,
        #[arg(long = "version", id = "bundle_version", value_name = "VERSION")]
        bundle_version: String,
        #[arg(long)]
        key: PathBuf,
        #[arg(short = 'o', long)]
        out: PathBuf,
    },
    Verify {
        file: Option<PathBuf>,
        #[arg(long)]
        signers: Option<PathBuf>,
        #[arg(long)]
        installed: bool,
    },
    Import {
        file: PathBuf,
        #[arg(long)]
        allow_downgrade: bool,
    },
    List,
    Show {
        id: String,
    },
    Remove {
        id: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum KeysCmd {
    Generate {
        #[arg(long)]
        out: PathBuf,
    },
    #[command(subcommand)]
    Trust(TrustCmd),
    Revoke {
        fingerprint: String,
    },
    /// Print the appliance's public key (the one that signs export packs), for auditors.
    ExportAppliance {
        /// As an `allowed_signers` line for `stella audit verify --signers` and `ssh-keygen -Y verify`.
        #[arg(long)]
        allowed_signers: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum TrustCmd {
    Add {
        pubkey: PathBuf,
        #[arg(long)]
        principal: String,
        #[arg(long)]
        namespaces: String,
        #[arg(long)]
        valid_before: Option<String>,
    },
    List,
}

#[derive(Debug, Args)]
pub struct ExportArgs {
    #[arg(long)]
    pub from: Option<String>,
    #[arg(long)]
    pub to: Option<String>,
    #[arg(long)]
    pub out: PathBuf,
    #[arg(long)]
    pub signals: Option<String>,
    #[arg(long)]
    pub tar: bool,
}

#[derive(Debug, Subcommand)]
pub enum AuditCmd {
    /// Check a pack offline: signature, digests, files, the ledger chain, the manifest.
    Verify {
        pack: PathBuf,
        /// allowed_signers holding the appliance key (default: the local trust store).
        #[arg(long)]
        signers: Option<PathBuf>,
    },
    /// Verify packs and load them into the audit store, checking each links to the last.
    Import {
        #[arg(required = true)]
        packs: Vec<PathBuf>,
        #[arg(long)]
        signers: Option<PathBuf>,
        #[command(flatten)]
        store: AuditStoreArg,
    },
    /// Runs in the imported ledger: who started them, when, how they ended.
    Runs {
        #[command(flatten)]
        store: AuditStoreArg,
    },
    /// Entries of the imported ledger.
    Ledger {
        #[command(flatten)]
        store: AuditStoreArg,
        /// Only entries of this kind (or kind prefix, e.g. `lock.`).
        #[arg(long)]
        kind: Option<String>,
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
    /// Who started, approved, skipped, force-released, imported what, and when; the packs.
    Report {
        #[command(flatten)]
        store: AuditStoreArg,
    },
}

#[derive(Debug, Args)]
pub struct AuditStoreArg {
    /// The auditor's local store of imported packs.
    #[arg(long = "audit-store", env = "STELLA_AUDIT_STORE", default_value = "stella-audit.redb")]
    pub path: PathBuf,
}

#[derive(Debug, Subcommand)]
pub enum BackupCmd {
    Create {
        #[arg(long)]
        out: PathBuf,
    },
    Restore {
        file: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
pub enum SecretsCmd {
    /// Store a secret read from standard input (one trailing newline is dropped).
    Set { name: String },
    /// Secret names (never values).
    List,
}

#[derive(Debug, Subcommand)]
pub enum GenerateCmd {
    /// Man pages (roff) into DIR.
    Man {
        #[arg(long, default_value = "man")]
        out: PathBuf,
    },
    /// Shell completions on standard output.
    Completions { shell: clap_complete::Shell },
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_command_tree_is_consistent() {
        use clap::CommandFactory;
        super::Cli::command().debug_assert();
    }
}
