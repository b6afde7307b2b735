//! `stella serve`: start-up and shutdown of the daemon.
//!
//! Order matters and is the contract with systemd (`Type=notify`): configuration, store open
//! (refusing a newer schema), writer start, appliance identity, listeners bound — and only then
//! `READY=1`. On SIGTERM or SIGINT: stop accepting, drain in-flight requests, let the writer
//! commit what it holds, remove the socket, exit 0.

use crate::api::{self, AppState, server};
use crate::auth::{self, Scope};
use crate::clock::{self, SharedClock};
use crate::config::{Config, Layout};
use crate::dev;
use crate::domain::bundles::format::{Kind, ZSTD_LEVEL};
use crate::exit::CliError;
use crate::kernel::Actor;
use crate::kernel::store::Store;
use crate::kernel::writer;
use crate::machine::Command;
use crate::machine::WriterHandle;
use crate::machine::read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Debug, Clone)]
pub struct ServeOptions {
    pub layout: Layout,
    pub config_path: Option<PathBuf>,
    pub dev: bool,
    /// Overrides `server.listen`; `Some("")` disables TCP.
    pub listen: Option<String>,
    /// Accept a missing or empty store although the appliance has an identity.
    pub init_new_store: bool,
}

/// What `run` found at start that the daemon's start needs to know.
#[derive(Debug, Clone, Copy, Default)]
struct Previous {
    /// The previous daemon did not stop cleanly (no `stopped-cleanly` marker).
    unclean: bool,
}

/// What says this appliance has lived before: the identity marker written at its first start,
/// or its key (made at first start, kept apart from the store).
fn identity_evidence(layout: &Layout) -> Vec<PathBuf> {
    [identity_marker(layout), layout.appliance_key()].into_iter().filter(|p| p.exists()).collect()
}

fn identity_marker(layout: &Layout) -> PathBuf {
    layout.lib().join("identity.json")
}

/// Refuses to start on a missing or empty store when the appliance has an identity: a new
/// store would silently be a new appliance (new id, empty ledger) beside the old keys and
/// sealed bundles.
fn refuse_lost_store(store: &Path, evidence: &[PathBuf], init_new_store: bool) -> Result<(), CliError> {
    let state = match std::fs::metadata(store) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => "missing",
        Ok(m) if m.len() == 0 => "empty (0 bytes)",
        _ => return Ok(()),
    };
    if evidence.is_empty() || init_new_store {
        if !evidence.is_empty() {
            tracing::warn!(store = %store.display(), "starting on a new, empty store (--init-new-store)");
        }
        return Ok(());
    }
    let named: Vec<String> = evidence.iter().map(|p| p.display().to_string()).collect();
    Err(CliError::Store(format!(
        "store {} is {state}, but this appliance has an identity ({}): refusing to start a new, empty \
         appliance in its place. Put the store file back (restore it from a backup or copy), or start \
         with `stella serve --init-new-store` to begin a new, empty store on purpose",
        store.display(),
        named.join(", ")
    )))
}

/// How the daemon ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    Stopped,
    /// `POST /admin/restart`: the caller starts the same command again in this process.
    RestartRequested,
}

/// Runs the daemon to completion on its own runtime.
pub fn run(opts: ServeOptions) -> Result<Ended, CliError> {
    // Looked for before dev mode makes its material, which includes a new key.
    let evidence = identity_evidence(&opts.layout);
    // Descendants of plugins that outlive their parent come to the daemon, which ends them.
    crate::exec::procs::become_subreaper();
    let dev_notes = if opts.dev { Some(dev::prepare(&opts.layout).map_err(CliError::Other)?) } else { None };
    let config_path = opts.config_path.clone().unwrap_or_else(|| opts.layout.config_file());
    let mut config = Config::load(&config_path, true).map_err(|e| CliError::Invalid(e.to_string()))?;
    if let Some(listen) = &opts.listen {
        config.server.listen = (!listen.is_empty()).then(|| listen.clone());
    }
    let t = &config.telemetry;
    let log_dir = opts.layout.log();
    crate::telemetry::logs::init(t.log_files.then_some((log_dir.as_path(), t.log_rotation.as_str(), t.log_max_files)))
        .map_err(CliError::Other)?;
    let store_path = config.store_path(&opts.layout);
    refuse_lost_store(&store_path, &evidence, opts.init_new_store)?;
    // A crash leaves no marker: the whole chain is checked after such a stop.
    let clean_marker = opts.layout.lib().join("stopped-cleanly");
    let unclean = store_path.exists() && !clean_marker.exists();
    let _ = std::fs::remove_file(&clean_marker);
    // Kept beside the appliance key, never in the store: a copied store holds no secret.
    let secrets_key = crate::secrets::SecretKey::load_or_create(&opts.layout.lib().join("keys/secrets.key"))
        .map_err(CliError::Other)?;
    crate::secrets::install(secrets_key);
    let (store, handle, writer, clock) = crate::kernel::store::guard(&store_path, || {
        let store = crate::machine::open_store_with_cache(&store_path, config.store.cache_bytes)?;
        for value in read::secret_values(&store.read()?)? {
            crate::telemetry::logs::add_secret(&value);
        }
        // Time goes on from the newest entry even if the wall clock is behind it now.
        let newest = {
            let txn = store.read()?;
            let (head, _) = read::ledger_head(&txn)?;
            read::ledger_after(&txn, head.saturating_sub(1), 1)?.first().map_or(0, |e| e.time)
        };
        let clock: SharedClock = Arc::new(clock::SteadyClock::new(newest));
        let (handle, writer) =
            crate::machine::channel(store.clone(), clock.clone(), writer::WriterOptions::from_config(&config))?;
        Ok((store, handle, writer, clock))
    })?;
    check_ledger_at_start(&store, unclean);
    let watched = store.clone();
    let writer_thread = writer.spawn();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("stella-rt")
        .build()
        .map_err(|e| CliError::Other(format!("start async runtime: {e}")))?;
    let work_root = opts.layout.lib().join("work");
    let previous = Previous { unclean };
    let result = runtime.block_on(daemon(opts, config, store, handle, clock, dev_notes, previous));
    // Dropping the runtime drops every task and with them the last writer handles; the writer
    // then drains what it holds, commits, and its thread ends.
    runtime.shutdown_timeout(Duration::from_secs(5));
    let _ = writer_thread.join();
    match result {
        Ok(Ended::Stopped) => tracing::info!("stopped cleanly"),
        Ok(Ended::RestartRequested) => tracing::info!("stopped cleanly; starting again"),
        Err(_) => {}
    }
    // Nothing an attempt started outlives the daemon's stop.
    crate::exec::procs::kill_all(&work_root);
    // Clean only if nothing is left to check: a chain check cut short by this stop runs again.
    let unfinished = watched.checking() || watched.damage().is_some();
    drop(watched);
    if result.is_ok() && !unfinished {
        let _ = std::fs::write(&clean_marker, b"");
    }
    result
}

/// What a start appends, in order; returns a new dev token (printed once).
async fn start_writes(
    opts: &ServeOptions,
    config: &Config,
    store: &Store,
    writer: &WriterHandle,
    clock: &dyn clock::Clock,
    previous: Previous,
) -> Result<Option<String>, CliError> {
    // The appliance key signs export packs; a production appliance makes its own at first start.
    let key_fingerprint = Some(dev::ensure_appliance_key(&opts.layout.appliance_key()).map_err(CliError::Other)?);
    ensure_identity(store, writer, key_fingerprint).await?;
    write_identity_marker(&opts.layout, store)?;
    submit(
        writer,
        Command::Appliance(crate::domain::appliance::ApplianceCommand::RecordStart {
            version: env!("CARGO_PKG_VERSION").to_owned(),
            pid: std::process::id(),
            dev: opts.dev,
        }),
    )
    .await?;
    interrupt_previous_attempts(writer, &opts.layout, previous.unclean).await?;
    let new_token = if opts.dev { ensure_dev_token(&opts.layout, store, writer, config, clock).await? } else { None };
    // An import the previous daemon died in the middle of left its files in staging only.
    let (unfinished, bytes) = crate::domain::bundles::import::sweep_staging(&opts.layout.lib());
    if unfinished > 0 {
        tracing::warn!(entries = unfinished, bytes, "removed unfinished bundle imports from staging");
    }
    // A sealed copy no record names (a refusal after sealing, a removal cut short) goes.
    match crate::app::installed::sweep_unrecorded(store, &opts.layout.lib()) {
        Ok(gone) if !gone.is_empty() => tracing::warn!(digests = ?gone, "removed sealed bundles no record names"),
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "could not sweep the sealed bundle store"),
    }
    match crate::app::release::sweep_registry(store, &opts.layout.lib()) {
        Ok(gone) if !gone.is_empty() => {
            tracing::warn!(digests = ?gone, "removed registry copies no artifact record names")
        }
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "could not sweep the artifact registry"),
    }
    // Bundles installed earlier must still verify against today's trust store and disk.
    let checked = crate::app::installed::reverify_all(
        store,
        writer,
        &opts.layout.lib(),
        &opts.layout.trust_dir(),
        clock.now_ms(),
        Actor::appliance(),
    )
    .await
    .map_err(CliError::Store)?;
    for bad in checked.iter().filter(|b| b["ok"] == false) {
        tracing::warn!(bundle = %bad["name"], reason = %bad["reason"], "bundle quarantined at start");
    }
    Ok(new_token)
}

/// Entries of the ledger's tail checked at every start.
const TAIL_CHECK: u64 = 1_000;

/// The tail of the chain is checked before anything is appended. Then, on two threads in the
/// background with readiness held, every table is read through (so a damaged page is found at
/// start, not by the first request that needs it) and, after an unclean stop, the whole chain
/// is checked. A store that fails any of it is marked damaged: it serves reads, takes no
/// writes, and says why.
fn check_ledger_at_start(store: &Store, unclean: bool) {
    let tail = crate::kernel::store::guard(store.path(), || {
        let txn = store.read()?;
        crate::kernel::verify::check_tail(&txn, TAIL_CHECK)
    });
    match tail {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => store.set_damage(format!("its ledger fails verification: {e}")),
        Err(e) => store.set_damage(e.to_string()),
    }
    if store.damage().is_some() {
        return;
    }
    if unclean {
        tracing::warn!("the previous daemon did not stop cleanly: checking the whole ledger chain");
    }
    store.set_checking(true);
    let store = store.clone();
    std::thread::spawn(move || {
        let started = std::time::Instant::now();
        let walked = crate::kernel::store::guard(store.path(), || crate::machine::walk_tables(&store.read()?));
        match walked {
            Ok(rows) => tracing::info!(rows, ms = started.elapsed().as_millis() as u64, "every table read through"),
            Err(e) => {
                store.set_damage(e.to_string());
                store.set_checking(false);
                return;
            }
        }
        if unclean {
            let report = crate::kernel::store::guard(store.path(), || {
                let txn = store.read()?;
                crate::kernel::verify::verify_chain(&txn, 2)
            });
            match report {
                Ok(r) if r.ok => tracing::info!(entries = r.entries, "ledger chain verified after an unclean stop"),
                Ok(r) => store.set_damage(format!(
                    "its ledger fails verification: {}",
                    r.problem.map(|p| format!("{p:?}")).unwrap_or_default()
                )),
                Err(e) => store.set_damage(e.to_string()),
            }
        }
        store.set_checking(false);
    });
}

async fn daemon(
    opts: ServeOptions,
    config: Config,
    store: Store,
    writer: WriterHandle,
    clock: SharedClock,
    dev_notes: Option<dev::DevNotes>,
    previous: Previous,
) -> Result<Ended, CliError> {
    let started = Instant::now();
    let started_ms = clock.now_ms();
    // Installed before READY=1 so that a SIGTERM right after readiness drains instead of killing.
    let signal = shutdown_signal()?;
    let (restart, mut restart_rx) = tokio::sync::watch::channel(false);
    let restart_requested = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let shutdown = {
        let requested = restart_requested.clone();
        async move {
            tokio::select! {
                _ = signal => {}
                _ = restart_rx.wait_for(|r| *r) => requested.store(true, std::sync::atomic::Ordering::SeqCst),
            }
        }
    };
    // A damaged store is served for diagnosis (reads, `db verify`, the ledger) and takes no
    // writes: nothing that appends runs, and health says why it is not ready.
    let damaged = store.damage();
    let new_token = match &damaged {
        None => start_writes(&opts, &config, &store, &writer, &*clock, previous).await?,
        Some(reason) => {
            tracing::error!(reason = %reason, "serving a damaged store read-only: restore it from a backup");
            None
        }
    };

    let socket = config.socket_path(&opts.layout);
    let unix = bind_socket(&socket)?;
    let mut listeners = vec![format!("unix:{}", socket.display())];
    let tcp = match &config.server.listen {
        None => None,
        Some(addr) => {
            let (listener, acceptor, bound) = bind_tls(addr, &config)?;
            listeners.push(format!("https://{bound}"));
            Some((listener, acceptor))
        }
    };
    let state = Arc::new(AppState {
        store,
        writer,
        clock,
        config: config.clone(),
        started,
        started_ms,
        listeners: listeners.clone(),
        dev: opts.dev,
        lib: opts.layout.lib(),
        trust_dir: opts.layout.trust_dir(),
        owner_uid: unsafe_free_geteuid(),
        progress: Default::default(),
        restart,
        log_dir: opts.layout.log(),
    });
    if opts.dev && damaged.is_none() {
        import_samples(&state, &opts.layout).await?;
    }
    if let Some(notes) = dev_notes {
        print_banner(&opts.layout, &notes, &listeners, new_token.as_deref());
    }
    tracing::info!(listeners = ?listeners, "appliance ready");
    let status = format!("listening on {}", listeners.join(" "));
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Ready, sd_notify::NotifyState::Status(&status)]);

    let background = Background::spawn(&state, &config, &opts, damaged.is_none());
    let router = api::router(state);
    server::serve(router, server::Listeners { unix, tcp }, config.server.clone(), shutdown).await;
    background.stop().await;
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
    let _ = std::fs::remove_file(&socket);
    Ok(if restart_requested.load(std::sync::atomic::Ordering::SeqCst) {
        Ended::RestartRequested
    } else {
        Ended::Stopped
    })
}

/// The daemon's tasks beside the API: the timers, metric snapshots, the run log and the
/// in-process executor (not on a damaged store, which takes no writes).
struct Background {
    stop: tokio::sync::watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Background {
    fn spawn(state: &Arc<AppState>, config: &Config, opts: &ServeOptions, writable: bool) -> Self {
        let (stop, rx) = tokio::sync::watch::channel(false);
        let (store, writer) = (&state.store, &state.writer);
        let mut tasks = vec![
            tokio::spawn(crate::machine::timers::run(store.clone(), writer.clone(), state.clock.clone(), rx)),
            tokio::spawn(crate::telemetry::metrics::snapshot_loop(
                store.clone(),
                writer.clone(),
                (config.clone(), state.clock.clone()),
                config.telemetry.metrics_snapshot_interval_ms,
                config.telemetry.metrics_retention_ms,
                stop.subscribe(),
            )),
            tokio::spawn(crate::telemetry::logs::run_events(store.clone(), writer.clone(), stop.subscribe())),
        ];
        if config.exec.enabled && writable {
            let exec = crate::exec::worker::ExecOptions {
                worker: format!("{}{}", crate::domain::queue::LOCAL_WORKER, std::process::id()),
                slots: config.exec.slots,
                lease_ttl_ms: config.queue.lease_ttl_ms,
                lib: opts.layout.lib(),
            };
            tasks.push(tokio::spawn(crate::exec::worker::run(writer.clone(), store.clone(), exec, stop.subscribe())));
        }
        Background { stop, tasks }
    }

    /// Tells every task to stop and waits for each (the executor ends its attempts).
    async fn stop(self) {
        let _ = self.stop.send(true);
        for task in self.tasks {
            let _ = task.await;
        }
    }
}

/// The attempts the previous daemon's executor held died with it: its plugin processes are
/// stopped, then each attempt is requeued at once as interrupted (not as the plugin's failure,
/// and without waiting for its lease to lapse).
/// After a clean stop (or an in-place restart) the attempts it cut short are requeued without
/// counting toward the job's bound on interruptions: only crashes do.
async fn interrupt_previous_attempts(writer: &WriterHandle, layout: &Layout, crashed: bool) -> Result<(), CliError> {
    crate::exec::plugin::reap_orphans(&layout.lib());
    let command = Command::Queue(crate::domain::queue::QueueCommand::Interrupt {
        worker_prefix: crate::domain::queue::LOCAL_WORKER.to_owned(),
        counted: crashed,
    });
    let c = writer.submit(Actor::appliance(), command).await.map_err(|e| CliError::Store(e.to_string()))?;
    let note = c.note.unwrap_or_default();
    if let Some(n) = note["interrupted"].as_u64().filter(|n| *n > 0) {
        tracing::warn!(attempts = n, "requeued the attempts a previous daemon was running when it stopped");
    }
    Ok(())
}

/// The effective uid, through libc: std has no safe accessor for it.
fn unsafe_free_geteuid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

async fn submit(writer: &WriterHandle, command: Command) -> Result<(), CliError> {
    writer.submit(Actor::appliance(), command).await.map(|_| ()).map_err(|e| CliError::Store(e.to_string()))
}

async fn ensure_identity(
    store: &Store,
    writer: &WriterHandle,
    key_fingerprint: Option<String>,
) -> Result<(), CliError> {
    if read::appliance_id(&store.read()?)?.is_some() {
        return Ok(());
    }
    let appliance_id = format!("stella-{}", crate::ids::random_hex(8));
    submit(
        writer,
        Command::Appliance(crate::domain::appliance::ApplianceCommand::Initialize { appliance_id, key_fingerprint }),
    )
    .await
}

/// The marker that this appliance exists (its id and first start), beside the store.
fn write_identity_marker(layout: &Layout, store: &Store) -> Result<(), CliError> {
    let path = identity_marker(layout);
    let id = read::appliance_id(&store.read()?)?.unwrap_or_default();
    let marked = std::fs::read(&path).ok().and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok());
    if marked.is_some_and(|m| m["applianceId"] == id.as_str()) {
        return Ok(());
    }
    let text = serde_json::json!({ "applianceId": id, "store": store.path(), "writtenAt": clock::rfc3339(clock::system().now_ms()) });
    crate::fsutil::write_file_atomic(&path, format!("{text}\n").as_bytes(), 0o644)
        .map_err(|e| CliError::Other(format!("write {}: {e}", path.display())))
}

/// Keeps the dev admin token if it still authenticates; otherwise mints one and writes it 0600.
/// Returns the token only when it is new, so it is printed once.
async fn ensure_dev_token(
    layout: &Layout,
    store: &Store,
    writer: &WriterHandle,
    config: &Config,
    clock: &dyn clock::Clock,
) -> Result<Option<String>, CliError> {
    let path = layout.dev_token();
    if let Ok(existing) = std::fs::read_to_string(&path) {
        let existing = existing.trim();
        let record = auth::claimed_id(existing).and_then(|id| read::token(&store.read().ok()?, &id).ok().flatten());
        if auth::check(existing, record.as_ref(), clock.now_ms(), &config.tenants.allowed).is_some() {
            return Ok(None);
        }
    }
    let minted = auth::mint();
    let tenant = config.tenants.allowed[0].clone();
    let command = Command::Token(crate::domain::tokens::TokenCommand::Create {
        id: minted.id.clone(),
        tenant,
        scopes: Scope::ALL.iter().map(|s| s.as_str().to_owned()).collect(),
        sha256: minted.sha256.clone(),
        expires_ms: None,
        description: Some("dev admin token (serve --dev)".to_owned()),
    });
    submit(writer, command).await?;
    crate::fsutil::write_file_atomic(&path, format!("{}\n", minted.secret).as_bytes(), 0o600)
        .map_err(|e| CliError::Other(format!("write {}: {e}", path.display())))?;
    Ok(Some(minted.secret))
}

/// A file of a sample: its path in the bundle, its text, its mode.
type SampleFile = (&'static str, &'static str, u32);

/// The samples shipped in `bundles/`, compiled into the binary so `serve --dev` works from any
/// directory: each is built into a bundle signed with the dev key and imported the way an
/// operator imports one — the same checks, the same sealed store, the same ledger entries. In
/// order: what a later one needs first. Version `None`: stella's own.
const SAMPLES: &[(&str, Kind, Option<&str>, &[SampleFile])] = &[
    (
        "sample-plugin",
        Kind::Plugin,
        None,
        &[
            ("plugin.toml", include_str!("../bundles/sample-plugin/plugin.toml"), 0o644),
            ("run.sh", include_str!("../bundles/sample-plugin/run.sh"), 0o755),
        ],
    ),
    (
        "sample-deploy",
        Kind::Plugin,
        None,
        &[
            ("plugin.toml", include_str!("../bundles/sample-deploy/plugin.toml"), 0o644),
            ("run.sh", include_str!("../bundles/sample-deploy/run.sh"), 0o755),
        ],
    ),
    (
        "security-scan",
        Kind::Plugin,
        None,
        &[
            ("plugin.toml", include_str!("../bundles/security-scan/plugin.toml"), 0o644),
            ("run.sh", include_str!("../bundles/security-scan/run.sh"), 0o755),
        ],
    ),
    (
        "sample-pipeline",
        Kind::Dag,
        None,
        &[("sample-pipeline.toml", include_str!("../bundles/sample-pipeline.dag.toml"), 0o644)],
    ),
    (
        "sample-release",
        Kind::Release,
        None,
        &[("release.toml", include_str!("../bundles/sample-release/release.toml"), 0o644)],
    ),
    (
        "web",
        Kind::Artifact,
        Some("1.4.0"),
        &[
            ("VERSION", include_str!("../bundles/sample-artifacts/web-1.4.0/VERSION"), 0o644),
            ("index.html", include_str!("../bundles/sample-artifacts/web-1.4.0/index.html"), 0o644),
        ],
    ),
    (
        "web",
        Kind::Artifact,
        Some("1.4.1"),
        &[
            ("VERSION", include_str!("../bundles/sample-artifacts/web-1.4.1/VERSION"), 0o644),
            ("index.html", include_str!("../bundles/sample-artifacts/web-1.4.1/index.html"), 0o644),
        ],
    ),
    (
        "web",
        Kind::Artifact,
        Some("1.4.2"),
        &[
            ("VERSION", include_str!("../bundles/sample-artifacts/web-1.4.2/VERSION"), 0o644),
            ("index.html", include_str!("../bundles/sample-artifacts/web-1.4.2/index.html"), 0o644),
        ],
    ),
];

async fn import_samples(state: &AppState, layout: &Layout) -> Result<(), CliError> {
    let key = crate::trust::keys::read_private(&layout.dev_bundle_key()).map_err(CliError::Other)?;
    let dir = layout.lib().join("dev");
    let principal = crate::auth::Principal {
        tenant: None,
        actor: Actor::appliance().name,
        scopes: crate::auth::Scope::ALL.to_vec(),
    };
    for (name, kind, version, files) in SAMPLES {
        let version = version.unwrap_or(env!("CARGO_PKG_VERSION"));
        let source = dir.join(format!("{name}-{version}"));
        let _ = std::fs::remove_dir_all(&source);
        for (file, text, mode) in *files {
            crate::fsutil::write_file_atomic(&source.join(file), text.as_bytes(), *mode)
                .map_err(|e| CliError::Other(format!("sample {name}: {e}")))?;
        }
        let bundle = dir.join(format!("{name}-{version}.bundle"));
        let (s, b, k, kind) = (source.clone(), bundle.clone(), key.clone(), *kind);
        tokio::task::spawn_blocking(move || {
            crate::domain::bundles::build::build_to(&s, kind, name, version, &k, &b, ZSTD_LEVEL)
        })
        .await
        .map_err(|e| CliError::Other(e.to_string()))?
        .map_err(|e| CliError::Other(format!("sample {name}: {e}")))?;
        if let Err(e) = crate::app::import::import_file(
            &state.importer(&principal),
            &bundle,
            &bundle.display().to_string(),
            false,
            Default::default(),
        )
        .await
        {
            // A dev state directory from an older stella may hold other samples under the same
            // version; the appliance still starts, saying why the sample was not replaced.
            tracing::warn!(sample = name, reason = %e, "sample bundle not imported");
        }
    }
    Ok(())
}

/// Binds the Unix socket at mode 0660. A socket file left by a crashed daemon is replaced; one
/// that still answers belongs to a running daemon and is an error.
fn bind_socket(path: &Path) -> Result<tokio::net::UnixListener, CliError> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| CliError::Other(format!("create {}: {e}", dir.display())))?;
    }
    let arg = crate::config::socket_arg(path);
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(&arg).is_ok() {
            return Err(CliError::Other(format!("socket {} is in use: another daemon is running", path.display())));
        }
        std::fs::remove_file(path)
            .map_err(|e| CliError::Other(format!("remove stale socket {}: {e}", path.display())))?;
    }
    let listener =
        tokio::net::UnixListener::bind(&arg).map_err(|e| CliError::Other(format!("bind {}: {e}", path.display())))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))
        .map_err(|e| CliError::Other(format!("chmod {}: {e}", path.display())))?;
    Ok(listener)
}

fn bind_tls(
    addr: &str,
    config: &Config,
) -> Result<(tokio::net::TcpListener, tokio_rustls::TlsAcceptor, std::net::SocketAddr), CliError> {
    let (cert, key) = match (&config.server.tls_cert, &config.server.tls_key) {
        (Some(c), Some(k)) => (c, k),
        _ => {
            return Err(CliError::Invalid(format!(
                "server.listen = {addr:?} needs server.tls_cert and server.tls_key"
            )));
        }
    };
    let tls = crate::tls::server_config(cert, key).map_err(CliError::Invalid)?;
    let std_listener = std::net::TcpListener::bind(addr).map_err(|e| CliError::Other(format!("bind {addr}: {e}")))?;
    std_listener.set_nonblocking(true).map_err(|e| CliError::Other(format!("bind {addr}: {e}")))?;
    let bound = std_listener.local_addr().map_err(|e| CliError::Other(format!("bind {addr}: {e}")))?;
    let listener =
        tokio::net::TcpListener::from_std(std_listener).map_err(|e| CliError::Other(format!("bind {addr}: {e}")))?;
    Ok((listener, tokio_rustls::TlsAcceptor::from(Arc::new(tls)), bound))
}

/// Installs the SIGTERM and SIGINT handlers now; the returned future resolves on either.
fn shutdown_signal() -> Result<impl std::future::Future<Output = ()>, CliError> {
    use tokio::signal::unix::{SignalKind, signal};
    let install = |kind| signal(kind).map_err(|e| CliError::Other(format!("install signal handler: {e}")));
    let (mut term, mut int) = (install(SignalKind::terminate())?, install(SignalKind::interrupt())?);
    Ok(async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM: draining"),
            _ = int.recv() => tracing::info!("SIGINT: draining"),
        }
    })
}

fn print_banner(layout: &Layout, notes: &dev::DevNotes, listeners: &[String], token: Option<&str>) {
    let root = std::fs::canonicalize(&layout.root).unwrap_or_else(|_| layout.root.clone());
    eprintln!("stella dev appliance is up");
    eprintln!("  state dir:     {}", root.display());
    for line in &notes.lines {
        eprintln!("  {line}");
    }
    for l in listeners {
        eprintln!("  listening:     {l}");
    }
    use std::io::IsTerminal;
    match token {
        // Shown on a terminal only: under systemd stderr is the journal, and tokens never go
        // to logs.
        Some(t) if std::io::stderr().is_terminal() => eprintln!(
            "  admin token:   {t}\n                 (shown once; saved to {}, mode 0600)",
            layout.dev_token().display()
        ),
        Some(_) => eprintln!("  admin token:   new; saved to {} (mode 0600)", layout.dev_token().display()),
        None => eprintln!("  admin token:   kept from the last start in {}", layout.dev_token().display()),
    }
    eprintln!("  next:          stella --state-dir {} orch status", root.display());
}
