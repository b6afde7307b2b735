//! What each command does. Commands whose capability exists talk to the daemon (or, for the
//! offline ones, to files); the others answer `"not available yet: <what>"` with exit code 3 and
//! never print fake output.

use crate::api::dto;
use crate::cli::args::*;
use crate::cli::output::{self, opt, s, table};
use crate::cli::target;
use crate::cli::{queue, runs};
use crate::config::Layout;
use crate::exit::CliError;
use crate::kernel::store;
use crate::serve;
use serde_json::json;

fn na(what: &str) -> Result<(), CliError> {
    Err(CliError::NotAvailable(what.to_owned()))
}

pub fn run(cli: Cli) -> Result<(), CliError> {
    let g = cli.global;
    match cli.command {
        Top::Serve(a) => serve_cmd(&g, a),
        Top::Agent(AgentTopCmd::Run(a)) => agent_run(&g, a),
        Top::Generate(cmd) => generate(cmd),
        Top::Service(ServiceCmd::Restart { service }) => service_restart(&g, &service),
        Top::Orch(OrchCmd::Db(DbCmd::Verify { offline: true, chain_only })) => db_verify_offline(&g, chain_only),
        Top::Orch(OrchCmd::Db(DbCmd::Repair)) => db_repair(&g),
        Top::Keys(cmd) => crate::cli::keys::run(&g, cmd),
        Top::Audit(cmd) => crate::cli::export::audit(&g, cmd),
        Top::Bundle(cmd)
            if !matches!(
                cmd,
                BundleCmd::Import { .. }
                    | BundleCmd::List
                    | BundleCmd::Show { .. }
                    | BundleCmd::Remove { .. }
                    | BundleCmd::Verify { installed: true, .. }
            ) =>
        {
            crate::cli::bundle::run(&g, cmd)
        }
        other => {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| CliError::Other(format!("start async runtime: {e}")))?;
            runtime.block_on(client_command(&g, other))
        }
    }
}

/// `stella agent run`: the deploy agent, until SIGTERM or SIGINT (then it finishes what it has).
fn agent_run(g: &Global, a: AgentRunArgs) -> Result<(), CliError> {
    let lease_ttl = crate::duration::parse(&a.lease_ttl).map_err(|e| CliError::Invalid(format!("--lease-ttl: {e}")))?;
    if lease_ttl < std::time::Duration::from_secs(3) {
        return Err(CliError::Invalid("--lease-ttl: at least 3s".into()));
    }
    let dir = a.dir.clone().unwrap_or_else(|| match (std::env::var_os("STATE_DIRECTORY"), &g.state_dir) {
        (Some(d), _) => d.into(),
        (None, Some(s)) => s.join("agent"),
        (None, None) => "/var/lib/stella-agent".into(),
    });
    let trust_dir = a.trust.clone().unwrap_or_else(|| match &g.state_dir {
        Some(_) => target::layout(g).trust_dir(),
        None => dir.join("trust"),
    });
    let client = target::client(g)?;
    crate::telemetry::logs::init(None).map_err(CliError::Other)?;
    let opts =
        crate::agent::Options { env: a.env, name: a.name, dir, trust_dir, slots: a.slots.clamp(1, 64), lease_ttl };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| CliError::Other(format!("start async runtime: {e}")))?;
    runtime.block_on(async move {
        let (stop_tx, stop) = tokio::sync::watch::channel(false);
        tokio::spawn(async move {
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
            let _ = stop_tx.send(true);
        });
        crate::agent::run(client, opts, stop).await
    })
}

fn serve_cmd(g: &Global, a: ServeArgs) -> Result<(), CliError> {
    let layout = match (&g.state_dir, a.dev) {
        (Some(dir), _) => Layout::under(dir),
        (None, true) => Layout::under("stella-dev"),
        (None, false) => Layout::production(),
    };
    match serve::run(serve::ServeOptions {
        layout,
        config_path: g.config.clone(),
        dev: a.dev,
        listen: a.listen,
        init_new_store: a.init_new_store,
    })? {
        serve::Ended::Stopped => Ok(()),
        serve::Ended::RestartRequested => {
            // The same command again, in this process: same pid, terminal and state directory.
            use std::os::unix::process::CommandExt;
            // `/proc/self/exe` even if the binary was replaced meanwhile (current_exe would then
            // name a "(deleted)" path).
            let e = std::process::Command::new("/proc/self/exe").args(std::env::args_os().skip(1)).exec();
            Err(CliError::Other(format!("restart: exec: {e}")))
        }
    }
}

async fn client_command(g: &Global, cmd: Top) -> Result<(), CliError> {
    match cmd {
        Top::Auth(AuthCmd::Token(t)) => token(g, t).await,
        Top::Orch(o) => orch(g, o).await,
        Top::Deploy(a) => crate::cli::release::deploy(g, a).await,
        Top::Rollback(r) => crate::cli::release::rollback(g, r).await,
        Top::Promotion(p) => crate::cli::promotion::run(g, p).await,
        Top::Registry(r) => crate::cli::release::registry(g, r).await,
        Top::Doctor(a) => crate::cli::release::doctor(g, a.check).await,
        Top::Export(a) => crate::cli::export::export(g, a).await,
        Top::Audit(_) => unreachable!("audit is offline: handled before the runtime starts"),
        Top::Backup(_) => na("store backup and restore (no issue filed yet)"),
        Top::Secrets(cmd) => secrets(g, cmd).await,
        Top::Bundle(cmd) => crate::cli::bundle::remote(g, cmd).await,
        Top::Serve(_) | Top::Generate(_) | Top::Service(_) | Top::Keys(_) | Top::Agent(_) => {
            unreachable!("handled before the runtime starts")
        }
    }
}

async fn orch(g: &Global, cmd: OrchCmd) -> Result<(), CliError> {
    match cmd {
        OrchCmd::Status => status(g).await,
        OrchCmd::Db(DbCmd::Verify { chain_only, .. }) => db_verify(g, chain_only).await,
        OrchCmd::Db(DbCmd::Repair) => db_repair(g),
        OrchCmd::Ledger { after, limit } => ledger(g, after, limit).await,
        OrchCmd::Run(r) => runs::run(g, r).await,
        OrchCmd::Dag(d) => runs::dag(g, d).await,
        OrchCmd::Schedule(s) => runs::schedule(g, s).await,
        OrchCmd::Approvals(a) => runs::approvals(g, a).await,
        OrchCmd::Cache(c) => runs::cache(g, c).await,
        OrchCmd::Queue(q) => queue::queue(g, q).await,
        OrchCmd::Dlq(d) => queue::dlq(g, d).await,
        OrchCmd::Agent(AgentCmd::Status { env: Some(env) }) => crate::cli::release::agents(g, &env).await,
        OrchCmd::Agent(AgentCmd::Status { env: None }) => queue::agents(g, None).await,
        OrchCmd::Locks(l) => queue::locks(g, l).await,
        OrchCmd::Config(c) => queue::config(g, c).await,
        OrchCmd::Env(e) => crate::cli::release::env(g, e).await,
        OrchCmd::Deployments(d) => crate::cli::release::deployments(g, d).await,
        OrchCmd::Artifacts(a) => crate::cli::release::artifacts(g, a).await,
        OrchCmd::Connectivity { target } => {
            crate::cli::release::probe(g, &target, crate::cli::release::ProbePart::Connectivity).await
        }
        OrchCmd::Credentials(CredentialsCmd::Verify { target }) => {
            crate::cli::release::probe(g, &target, crate::cli::release::ProbePart::Credentials).await
        }
        OrchCmd::HealthCheck { env } => {
            crate::cli::release::probe(g, &env, crate::cli::release::ProbePart::Health).await
        }
        OrchCmd::Repair { deployment: Some(id), reason } => crate::cli::release::repair(g, &id, reason).await,
        OrchCmd::Repair { deployment: None, .. } => {
            na("projection repair from the ledger without --deployment (db verify finds the damage today)")
        }
    }
}

async fn status(g: &Global) -> Result<(), CliError> {
    let client = target::client(g)?;
    let (raw, v) = client.get("/api/v1/orchestrator/status").await?.ok()?.typed::<dto::Status>()?;
    output::show(g.format, &raw, &v, status_text);
    Ok(())
}

fn status_text(v: &dto::Status) -> String {
    let mut out = format!(
        "stella {} ({})\nappliance:   {}\nuptime:      {}s (since {})\nstore:       {} ({} bytes, schema {})\nledger:      height {} head {}\nwriter:      {} commands in {} commits, backlog {}\nqueue depth: {}\nlisteners:   {}\n",
        v.version,
        if v.dev { "dev" } else { "production" },
        opt(&v.appliance_id),
        v.uptime_seconds,
        v.started_at,
        v.store.path,
        v.store.size_bytes,
        v.store.schema_version,
        v.ledger.height,
        v.ledger.head_hash,
        v.writer.commands,
        v.writer.commits,
        v.writer.backlog,
        v.queue_depth,
        v.listeners.join(", "),
    );
    for w in &v.waiting_approval {
        out.push_str(&format!("waiting:     {w}\n"));
    }
    out
}

/// Asks the daemon; if none answers on the socket, verifies the stopped store read-only.
async fn db_verify(g: &Global, chain_only: bool) -> Result<(), CliError> {
    let client = target::client(g)?;
    let query = if chain_only { "?chainOnly=true" } else { "" };
    match client.get(&format!("/api/v1/orchestrator/admin/db/verify{query}")).await {
        Ok(reply) => {
            let (raw, v) = reply.ok()?.typed::<dto::DbVerify>()?;
            report_verify(g, &raw, &v)
        }
        Err(CliError::Unreachable(_)) if g.server.is_none() => db_verify_offline(g, chain_only),
        Err(e) => Err(e),
    }
}

fn db_verify_offline(g: &Global, chain_only: bool) -> Result<(), CliError> {
    let path = target::config(g)?.store_path(&target::layout(g));
    let report = store::guard(&path, || {
        let db = store::open_read_only(&path)?;
        let txn = redb::ReadableDatabase::begin_read(&db)
            .map_err(|e| store::StoreError::Redb { path: path.clone(), source: e.into() })?;
        if chain_only { crate::kernel::verify::verify_chain(&txn, 2) } else { crate::machine::verify(&txn) }
    })?;
    let v: dto::DbVerify = report.into();
    report_verify(g, &serde_json::to_value(&v).expect("json"), &v)
}

/// Opens the stopped store for writing (redb repairs it then, as the daemon's start would),
/// closes it, and verifies it read-only.
fn db_repair(g: &Global) -> Result<(), CliError> {
    let path = target::config(g)?.store_path(&target::layout(g));
    if !path.exists() {
        return Err(store::StoreError::Missing { path }.into());
    }
    store::guard(&path, || crate::machine::open_store(&path).map(drop))?;
    if g.format != Format::Json {
        eprintln!("repaired {}; verifying", path.display());
    }
    db_verify_offline(g, false)
}

fn report_verify(g: &Global, raw: &serde_json::Value, v: &dto::DbVerify) -> Result<(), CliError> {
    output::show(g.format, raw, v, |v| {
        let (entries, head) = (v.entries, format!("{} {}", v.head_seq, v.head_hash));
        if v.ok && v.tables.is_empty() {
            format!("ok: the chain of {entries} ledger entries holds, head {head} (tables not checked)\n")
        } else if v.ok {
            format!(
                "ok: {entries} ledger entries verified, head {head}; tables match the replay: {}\n",
                v.tables.join(", ")
            )
        } else {
            String::new()
        }
    });
    if v.ok { Ok(()) } else { Err(CliError::VerifyFailed(opt(&v.problem))) }
}

async fn ledger(g: &Global, after: u64, limit: usize) -> Result<(), CliError> {
    let client = target::client(g)?;
    let (raw, v) = client
        .get(&format!("/api/v1/orchestrator/ledger?after={after}&limit={limit}"))
        .await?
        .ok()?
        .typed::<dto::LedgerPage>()?;
    output::show(g.format, &raw, &v, |v| {
        let rows: Vec<Vec<String>> = v
            .entries
            .iter()
            .map(|e| {
                vec![
                    e.seq.to_string(),
                    crate::clock::rfc3339(e.time),
                    e.tenant.clone(),
                    e.actor.clone(),
                    e.kind.clone(),
                    e.subjects.join(","),
                ]
            })
            .collect();
        table(&["SEQ", "TIME", "TENANT", "ACTOR", "KIND", "SUBJECTS"], &rows)
    });
    Ok(())
}

async fn token(g: &Global, cmd: TokenCmd) -> Result<(), CliError> {
    let client = target::client(g)?;
    match cmd {
        TokenCmd::Create { tenant, scopes, expires, description } => {
            let scopes: Vec<&str> = scopes.split(',').map(str::trim).filter(|x| !x.is_empty()).collect();
            let body = json!({ "tenant": tenant, "scopes": scopes, "expires": expires, "description": description });
            let (raw, v) =
                client.post("/api/v1/orchestrator/auth/tokens", &body).await?.ok()?.typed::<dto::TokenCreated>()?;
            output::show(g.format, &raw, &v, token_created_text);
        }
        TokenCmd::List => {
            let (raw, v) = client.get("/api/v1/orchestrator/auth/tokens").await?.ok()?.typed::<dto::TokenList>()?;
            output::show(g.format, &raw, &v, tokens_text);
        }
        TokenCmd::Show { id } => {
            // Text output is the reply itself, pretty-printed: no field is rendered.
            let v = client.get(&format!("/api/v1/orchestrator/auth/tokens/{id}")).await?.ok()?.json()?;
            output::print(g.format, &v, |v| serde_json::to_string_pretty(v).unwrap_or_default() + "\n");
        }
        TokenCmd::Revoke { id, reason } => {
            let (raw, v) = client
                .post(&format!("/api/v1/orchestrator/auth/tokens/{id}/revoke"), &json!({ "reason": reason }))
                .await?
                .ok()?
                .typed::<dto::Token>()?;
            output::show(g.format, &raw, &v, |v| format!("{} is {}\n", v.id, v.state));
        }
    }
    Ok(())
}

fn token_created_text(v: &dto::TokenCreated) -> String {
    format!(
        "created {} for tenant {} with {}; expires {}\n{}\n(the token is shown only this once)\n",
        v.info.id,
        v.info.tenant,
        v.info.scopes.join(","),
        opt(&v.info.expires_at),
        v.token
    )
}

fn tokens_text(v: &dto::TokenList) -> String {
    let rows: Vec<Vec<String>> = v
        .tokens
        .iter()
        .map(|t| {
            vec![
                t.id.clone(),
                t.tenant.clone(),
                t.state.clone(),
                t.scopes.join(","),
                opt(&t.expires_at),
                opt(&t.description),
            ]
        })
        .collect();
    table(&["ID", "TENANT", "STATE", "SCOPES", "EXPIRES", "DESCRIPTION"], &rows)
}

async fn secrets(g: &Global, cmd: SecretsCmd) -> Result<(), CliError> {
    let client = target::client(g)?;
    match cmd {
        SecretsCmd::Set { name } => {
            let mut value = String::new();
            std::io::Read::read_to_string(&mut std::io::stdin().lock(), &mut value)
                .map_err(|e| CliError::Invalid(format!("read the secret from standard input: {e}")))?;
            let value =
                value.strip_suffix('\n').map(|v| v.strip_suffix('\r').unwrap_or(v)).unwrap_or(&value).to_owned();
            let body = serde_json::to_vec(&json!({ "value": value })).expect("json");
            let v = client
                .send(hyper::Method::PUT, &format!("/api/v1/orchestrator/secrets/{name}"), Some(body))
                .await?
                .ok()?
                .json()?;
            output::print(g.format, &v, |v| format!("secret {} set\n", s(&v["name"])));
        }
        SecretsCmd::List => {
            let v = client.get("/api/v1/orchestrator/secrets").await?.ok()?.json()?;
            output::print(g.format, &v, |v| {
                v["secrets"].as_array().into_iter().flatten().map(|n| format!("{}\n", s(n))).collect()
            });
        }
    }
    Ok(())
}

/// `stella service restart orchestrator`: a production daemon runs as `stella.service` under
/// systemd; a dev appliance named by `--state-dir` (or `--server`) restarts itself in place.
fn service_restart(g: &Global, service: &str) -> Result<(), CliError> {
    if service != "orchestrator" {
        return Err(CliError::Invalid(format!("unknown service {service:?}; the only service is \"orchestrator\"")));
    }
    if g.state_dir.is_some() || g.server.is_some() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| CliError::Other(format!("start async runtime: {e}")))?;
        return runtime.block_on(restart_in_place(g));
    }
    if !std::path::Path::new("/run/systemd/system").exists() {
        return Err(CliError::Other(
            "this host does not run systemd, so there is no stella.service to restart: stop the daemon (SIGTERM) and \
             start `stella serve` again, or name a dev appliance with --state-dir DIR"
                .into(),
        ));
    }
    let status = std::process::Command::new("systemctl")
        .args(["restart", "stella.service"])
        .status()
        .map_err(|e| CliError::Other(format!("run systemctl: {e} (is this host running systemd?)")))?;
    if status.success() {
        Ok(())
    } else {
        Err(CliError::Other(format!("systemctl restart stella.service failed ({status})")))
    }
}

/// Asks the appliance to restart itself and waits (at most a minute) until the new daemon answers.
async fn restart_in_place(g: &Global) -> Result<(), CliError> {
    let client = target::client(g)?;
    let before = client.post("/api/v1/orchestrator/admin/restart", &json!({})).await?.ok()?.json()?;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let mut pause = std::time::Duration::from_millis(20);
    loop {
        if let Ok(reply) = client.get("/api/v1/orchestrator/status").await
            && let Ok((raw, v)) = reply.ok().and_then(|r| r.typed::<dto::Status>())
            && before["startedAt"].as_str() != Some(v.started_at.as_str())
        {
            output::show(g.format, &raw, &v, |v| {
                format!("restarted: the appliance started again at {}\n", v.started_at)
            });
            return Ok(());
        }
        if std::time::Instant::now() >= deadline {
            return Err(CliError::Other(
                "the appliance stopped for its restart but did not answer within 60 s: see its log".into(),
            ));
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(std::time::Duration::from_millis(500));
    }
}

fn generate(cmd: GenerateCmd) -> Result<(), CliError> {
    use clap::CommandFactory;
    let mut command = Cli::command();
    match cmd {
        GenerateCmd::Completions { shell } => {
            clap_complete::generate(shell, &mut command, "stella", &mut std::io::stdout());
            Ok(())
        }
        GenerateCmd::Man { out } => {
            std::fs::create_dir_all(&out).map_err(|e| CliError::Other(format!("create {}: {e}", out.display())))?;
            clap_mangen::generate_to(command, &out)
                .map_err(|e| CliError::Other(format!("write man pages to {}: {e}", out.display())))?;
            println!("man pages written to {}", out.display());
            Ok(())
        }
    }
}
