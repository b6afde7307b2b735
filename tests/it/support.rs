//! `TestAppliance`: a daemon on a temp dir (`serve --dev --state-dir`), started as a child
//! process so that kill -9 is real. Readiness is the daemon's own `READY=1` sd-notify message
//! on a datagram socket we hold — the same signal systemd waits for — never a sleep.

use serde_json::Value;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;
use stella::client::Client;
use stella::config::{Config, Layout};

pub const STELLA: &str = env!("CARGO_BIN_EXE_stella");
/// A directory name long enough that a socket below it needs more than 107 bytes.
const DEEP: &str = "a-checkout-several-directories-deep-whose-absolute-path-is-longer-than-sun-path";
/// How long a daemon may take to become ready before the test fails.
const READY_TIMEOUT: Duration = Duration::from_secs(60);

pub struct TestAppliance {
    pub dir: tempfile::TempDir,
    /// The state directory: the temp dir, or `stella-dev` in it (see [`Self::start_as_the_readme_does`]).
    root: PathBuf,
    child: Option<Child>,
    pub https: Option<String>,
    /// `serve --dev` (the default) or plain `serve`.
    dev: bool,
    /// Started in the temp dir without `--state-dir`: dev mode's default `./stella-dev`.
    default_state_dir: bool,
    /// The temp dir is a tmpfs mount of its own, unmounted on drop.
    tmpfs: bool,
    /// The daemon leads a process group of its own (started under a wrapper).
    grouped: bool,
}

impl TestAppliance {
    /// A dev appliance with the dev defaults.
    pub fn start() -> Self {
        Self::start_with(|_| {})
    }

    /// A dev appliance whose config is the dev defaults changed by `edit`.
    pub fn start_with(edit: impl FnOnce(&mut Config)) -> Self {
        Self::start_dev(false, edit)
    }

    /// `serve --dev` as the README starts it: in a working directory (a deep one, whose
    /// absolute socket path is longer than a socket address holds), without `--state-dir`, so
    /// the state is the relative `./stella-dev`. [`Self::working_dir`] is that directory.
    pub fn start_as_the_readme_does() -> Self {
        Self::start_dev(true, |_| {})
    }

    /// Where [`Self::start_as_the_readme_does`] started the daemon.
    pub fn working_dir(&self) -> PathBuf {
        self.dir.path().join(DEEP)
    }

    fn start_dev(default_state_dir: bool, edit: impl FnOnce(&mut Config)) -> Self {
        Self::start_dev_in(tempfile::tempdir().expect("temp dir"), default_state_dir, edit)
    }

    /// A dev appliance whose whole state directory is a tmpfs of `mib` MiB (root only: `None`
    /// otherwise), so that a test can fill its disk. The tmpfs is unmounted when it drops.
    pub fn start_on_tmpfs(mib: u32, edit: impl FnOnce(&mut Config)) -> Option<Self> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return None;
        }
        let dir = tempfile::tempdir().expect("temp dir");
        let mounted = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={mib}m,mode=0700"), "tmpfs"])
            .arg(dir.path())
            .status()
            .expect("run mount");
        assert!(mounted.success(), "mount a tmpfs");
        let mut app = Self::start_dev_in(dir, false, edit);
        app.tmpfs = true;
        Some(app)
    }

    fn start_dev_in(dir: tempfile::TempDir, default_state_dir: bool, edit: impl FnOnce(&mut Config)) -> Self {
        let root = if default_state_dir { dir.path().join(DEEP).join("stella-dev") } else { dir.path().to_owned() };
        let layout = Layout::under(&root);
        let mut config = Config::dev(&layout);
        config.server.listen = Some("127.0.0.1:0".to_owned());
        edit(&mut config);
        std::fs::create_dir_all(layout.etc()).unwrap();
        std::fs::write(layout.config_file(), config.to_toml()).unwrap();
        let mut app = TestAppliance {
            dir,
            root,
            child: None,
            https: None,
            dev: true,
            default_state_dir,
            tmpfs: false,
            grouped: false,
        };
        app.launch();
        app
    }

    /// A production-mode daemon (`serve` without `--dev`): Unix socket only, no dev material.
    pub fn start_production() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let layout = Layout::under(dir.path());
        std::fs::create_dir_all(layout.etc()).unwrap();
        std::fs::write(layout.config_file(), Config::default().to_toml()).unwrap();
        let root = dir.path().to_owned();
        let mut app = TestAppliance {
            dir,
            root,
            child: None,
            https: None,
            dev: false,
            default_state_dir: false,
            tmpfs: false,
            grouped: false,
        };
        app.launch();
        app
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn layout(&self) -> Layout {
        Layout::under(self.root())
    }

    pub fn store_path(&self) -> PathBuf {
        self.layout().default_store()
    }

    /// Starts the daemon and waits for READY=1.
    pub fn launch(&mut self) {
        self.launch_with(&[]);
    }

    /// [`Self::launch`] with more `serve` arguments.
    pub fn launch_with(&mut self, extra: &[&str]) {
        self.launch_under(&[], &[], extra);
    }

    /// [`Self::launch`] with the daemon started by `wrapper` (e.g. `faketime -f -1d`) and `env`.
    pub fn launch_under(&mut self, wrapper: &[&str], env: &[(&str, &str)], extra: &[&str]) {
        if let Err(log) = self.start_daemon(wrapper, env, extra) {
            panic!("daemon did not become ready:\n{log}");
        }
    }

    /// Starts the daemon and waits for its READY=1 (the https listener is taken from the
    /// status it sends with it); `Err(its log)` if it ended first.
    fn start_daemon(&mut self, wrapper: &[&str], env: &[(&str, &str)], extra: &[&str]) -> Result<(), String> {
        // In the temp dir itself: a state directory may be too deep for a socket path.
        let notify_path = self.dir.path().join("notify.sock");
        let _ = std::fs::remove_file(&notify_path);
        let notify = UnixDatagram::bind(&notify_path).expect("bind notify socket");
        notify.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
        let log = std::fs::File::create(self.root().join("daemon.log")).unwrap();
        let mut command = match wrapper.split_first() {
            Some((program, args)) => {
                let mut c = Command::new(program);
                c.args(args).arg(STELLA);
                c
            }
            None => Command::new(STELLA),
        };
        command.envs(env.iter().copied());
        if self.default_state_dir {
            command.current_dir(self.working_dir());
        } else {
            command.arg("--state-dir").arg(self.root());
        }
        // Under a wrapper (faketime, which forks the daemon), a process group of its own, and
        // signals go to the group, so no daemon outlives its test; otherwise the terminal's
        // group, so a Ctrl-C of the tests ends it too.
        self.grouped = !wrapper.is_empty();
        if self.grouped {
            use std::os::unix::process::CommandExt;
            command.process_group(0);
        }
        let mut child = command
            .args(if self.dev { &["serve", "--dev"][..] } else { &["serve"][..] })
            .args(extra)
            .env("NOTIFY_SOCKET", &notify_path)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("spawn stella serve");
        let deadline = std::time::Instant::now() + READY_TIMEOUT;
        let mut buf = [0u8; 4096];
        loop {
            if let Ok(n) = notify.recv(&mut buf) {
                let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
                if msg.lines().any(|l| l == "READY=1") {
                    self.https = msg.split_whitespace().find(|w| w.starts_with("https://")).map(str::to_owned);
                    self.child = Some(child);
                    return Ok(());
                }
            }
            if child.try_wait().unwrap().is_some() {
                return Err(self.log());
            }
            assert!(std::time::Instant::now() < deadline, "daemon neither ready nor ended:\n{}", self.log());
        }
    }

    /// Runs `serve` (as [`Self::launch`] would, plus `extra`) expecting it to refuse to
    /// start: returns its output once it exits (bounded: a daemon that starts is killed).
    pub fn serve_refused(&self, extra: &[&str]) -> Output {
        let mut command = Command::new(STELLA);
        command.arg("--state-dir").arg(self.root()).args(if self.dev {
            &["serve", "--dev"][..]
        } else {
            &["serve"][..]
        });
        let mut child =
            command.args(extra).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
        let deadline = std::time::Instant::now() + READY_TIMEOUT;
        while child.try_wait().unwrap().is_none() {
            if std::time::Instant::now() > deadline {
                let _ = child.kill();
                panic!("serve did not refuse within {READY_TIMEOUT:?}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        child.wait_with_output().unwrap()
    }

    /// Starts the daemon like [`Self::launch`] but also accepts that it exits instead of
    /// becoming ready: `Ok(())` once ready, `Err(its log)` if it ended first.
    pub fn try_launch(&mut self) -> Result<(), String> {
        self.start_daemon(&[], &[], &[])
    }

    /// Copies `file` into the appliance's bundle inbox (the only host directory `POST
    /// /bundles` reads a path from) and returns where it is now.
    pub fn copy_to_inbox(&self, file: &Path) -> PathBuf {
        let inbox = self.layout().inbox();
        std::fs::create_dir_all(&inbox).unwrap();
        let to = inbox.join(file.file_name().unwrap());
        std::fs::copy(file, &to).unwrap();
        to
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.root().join("daemon.log")).unwrap_or_default()
    }

    /// SIGTERM, then wait for the exit.
    /// `stella secrets set NAME` with the value on stdin, as an operator types it.
    pub fn set_secret(&self, name: &str, value: &str) {
        let mut set = Command::new(STELLA)
            .arg("--state-dir")
            .arg(self.root())
            .args(["secrets", "set", name])
            .stdin(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        std::io::Write::write_all(&mut set.stdin.take().unwrap(), format!("{value}\n").as_bytes()).unwrap();
        assert!(set.wait().unwrap().success(), "secrets set {name}");
    }

    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("daemon running");
        let pid = if self.grouped { -(child.id() as i32) } else { child.id() as i32 };
        // SAFETY: kill(2) on our own child (or its process group).
        unsafe { libc::kill(pid, libc::SIGTERM) };
        child.wait().unwrap()
    }

    /// The running daemon's process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("daemon running").id()
    }

    pub fn kill9(&mut self) {
        let mut child = self.child.take().expect("daemon running");
        kill_daemon(&mut child, self.grouped);
    }

    /// Runs the CLI against this appliance.
    pub fn stella(&self, args: &[&str]) -> Output {
        Command::new(STELLA)
            .arg("--state-dir")
            .arg(self.root())
            .args(args)
            .env_remove("STELLA_TOKEN")
            .env_remove("STELLA_SERVER")
            .output()
            .expect("run stella")
    }

    /// The local-admin client over the Unix socket.
    pub fn socket_client(&self) -> Client {
        Client::unix(self.layout().default_socket())
    }

    /// An HTTPS client presenting `token`.
    pub fn https_client(&self, token: Option<&str>) -> Client {
        let mut c =
            Client::https(self.https.as_deref().expect("https listener"), &self.layout().default_tls_cert()).unwrap();
        c.token = token.map(str::to_owned);
        c
    }

    pub fn dev_token(&self) -> String {
        std::fs::read_to_string(self.layout().dev_token()).unwrap().trim().to_owned()
    }

    pub fn tcp_addr(&self) -> String {
        self.https.as_deref().unwrap().trim_start_matches("https://").to_owned()
    }
}

/// SIGKILL to a daemon (to its process group, with the wrapper that started it, if `grouped`),
/// then reaped.
fn kill_daemon(child: &mut std::process::Child, grouped: bool) {
    let pid = if grouped { -(child.id() as i32) } else { child.id() as i32 };
    // SAFETY: kill(2) on our own child (or its process group).
    unsafe { libc::kill(pid, libc::SIGKILL) };
    let _ = child.wait();
}

impl Drop for TestAppliance {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            kill_daemon(&mut child, self.grouped);
        }
        if self.tmpfs {
            let _ = Command::new("umount").arg("-l").arg(self.dir.path()).status();
        }
    }
}

/// `stella --state-dir ROOT ARGS…`, offline or against the daemon there.
pub fn stella(root: &Path, args: &[&str]) -> Output {
    Command::new(STELLA).arg("--state-dir").arg(root).args(args).output().unwrap()
}

/// `stella bundle build DIR --kind K --name N --version V --key KEY -o OUT`.
pub fn build_bundle(root: &Path, dir: &str, kind: &str, name: &str, version: &str, key: &str, out: &str) -> Output {
    stella(
        root,
        &["bundle", "build", dir, "--kind", kind, "--name", name, "--version", version, "--key", key, "-o", out],
    )
}

/// A plugin script that appends a line to `mark` when it starts, waits until the file `go`
/// exists, then succeeds with `outputs` (a JSON object): a step to hold in flight.
pub fn gated_script(mark: &std::path::Path, go: &std::path::Path, outputs: &str) -> String {
    format!(
        "echo x >> {}\nwhile [ ! -e {} ]; do sleep 0.02; done\necho '{{\"event\":\"result\",\"outputs\":{outputs}}}'",
        mark.display(),
        go.display()
    )
}

/// Writes a dev plugin directory whose entrypoint is the shell `script` (and more
/// `plugin.toml` lines) and registers it (dev mode, unsigned).
pub async fn script_plugin_with(app: &TestAppliance, c: &Client, name: &str, toml: &str, script: &str) {
    use std::os::unix::fs::PermissionsExt;
    let dir = app.root().join(format!("plugin-{name}"));
    std::fs::create_dir_all(&dir).unwrap();
    let manifest = format!("name = \"{name}\"\nentrypoint = \"run.sh\"\nprotocol = 1\n{toml}");
    std::fs::write(dir.join("plugin.toml"), manifest).unwrap();
    std::fs::write(dir.join("run.sh"), format!("#!/bin/sh\n{script}\n")).unwrap();
    std::fs::set_permissions(dir.join("run.sh"), std::fs::Permissions::from_mode(0o755)).unwrap();
    api_post(c, "/plugins", serde_json::json!({ "dir": dir })).await;
}

/// Creates a token through the API as the local admin; returns (id, secret).
pub async fn create_token(client: &Client, tenant: &str, scopes: &[&str], expires: Option<&str>) -> (String, String) {
    let body = serde_json::json!({ "tenant": tenant, "scopes": scopes, "expires": expires });
    let v = client.post("/api/v1/orchestrator/auth/tokens", &body).await.unwrap().ok().unwrap().json().unwrap();
    (v["id"].as_str().unwrap().to_owned(), v["token"].as_str().unwrap().to_owned())
}

pub async fn ledger_height(client: &Client) -> u64 {
    let v: Value = client.get("/api/v1/orchestrator/status").await.unwrap().ok().unwrap().json().unwrap();
    v["ledger"]["height"].as_u64().unwrap()
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// The writer and store driven directly on virtual time, without a daemon: for model and
/// scenario tests of queue, locks and engine.
pub struct Direct {
    _dir: tempfile::TempDir,
    pub path: PathBuf,
    pub clock: std::sync::Arc<stella::clock::ManualClock>,
    rt: tokio::runtime::Runtime,
    store: Option<stella::kernel::store::Store>,
    pub handle: Option<stella::machine::WriterHandle>,
    thread: Option<std::thread::JoinHandle<()>>,
    restarts: u64,
}

impl Direct {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.redb");
        let store = stella::machine::open_store(&path).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let clock = std::sync::Arc::new(stella::clock::ManualClock::new(1_000_000));
        let mut d = Direct { _dir: dir, path, clock, rt, store: Some(store), handle: None, thread: None, restarts: 0 };
        d.start();
        d
    }

    fn start(&mut self) {
        let opts = stella::kernel::writer::WriterOptions::seeded(self.restarts);
        let (handle, w) = stella::machine::channel(self.store().clone(), self.clock.clone(), opts).unwrap();
        self.thread = Some(w.spawn());
        self.handle = Some(handle);
    }

    pub fn store(&self) -> &stella::kernel::store::Store {
        self.store.as_ref().expect("store open")
    }

    pub fn stop(&mut self) {
        self.handle = None;
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
    }

    /// Stops the writer, closes and reopens the store, starts a new writer: a crash of
    /// everything in memory.
    pub fn reopen(&mut self) {
        self.stop();
        self.store = None;
        self.store = Some(stella::machine::open_store(&self.path).unwrap());
        self.restarts += 1;
        self.start();
    }

    pub fn submit(
        &self,
        command: stella::machine::Command,
    ) -> Result<stella::kernel::Committed, stella::kernel::CommandError> {
        let handle = self.handle.clone().unwrap();
        self.rt.block_on(handle.submit(stella::kernel::Actor { name: "test".into() }, command))
    }

    pub fn now(&self) -> i64 {
        use stella::clock::Clock;
        self.clock.now_ms()
    }
}

impl Drop for Direct {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The API prefix.
pub const API: &str = "/api/v1/orchestrator";

/// POST under the API prefix; the reply must be a success.
pub async fn api_post(c: &Client, path: &str, body: Value) -> Value {
    let reply = c.post(&format!("{API}{path}"), &body).await.unwrap();
    assert!(reply.status.is_success(), "POST {path}: {} {}", reply.status, String::from_utf8_lossy(&reply.body));
    reply.json().unwrap()
}

/// GET under the API prefix; the reply must be a success.
pub async fn api_get(c: &Client, path: &str) -> Value {
    c.get(&format!("{API}{path}")).await.unwrap().ok().unwrap().json().unwrap()
}

/// Follows a run's event stream from the start until `marker` (e.g. `event: step.started`)
/// has been seen.
pub async fn wait_for_event(c: &Client, run: &str, marker: &str) {
    // Bounded: the run's end stops the wait too, so a run that fails says so instead of
    // leaving the test waiting for a success that will not come.
    let ends = ["event: run.succeeded", "event: run.failed", "event: run.cancelled"];
    let mut pending = String::new();
    let waited = tokio::time::timeout(
        Duration::from_secs(60),
        c.stream(&format!("{API}/runs/stream?run={run}"), Some(0), |chunk| {
            pending.push_str(&String::from_utf8_lossy(chunk));
            !pending.contains(marker) && !ends.iter().any(|e| pending.contains(e))
        }),
    )
    .await;
    assert!(waited.is_ok_and(|r| r.is_ok()), "no {marker:?} from run {run} within 60 s:\n{pending}");
    assert!(pending.contains(marker), "run {run} ended without {marker:?}:\n{pending}");
}

/// Follows the run's events until it ends (at most a minute); returns the final run.
pub async fn wait_end(c: &Client, id: &str) -> Value {
    let mut pending = String::new();
    let followed = tokio::time::timeout(
        Duration::from_secs(60),
        c.stream(&format!("{API}/runs/stream?run={id}"), Some(0), |chunk| {
            pending.push_str(&String::from_utf8_lossy(chunk));
            !["event: run.succeeded", "event: run.failed", "event: run.cancelled"].iter().any(|k| pending.contains(k))
        }),
    )
    .await;
    assert!(followed.is_ok_and(|r| r.is_ok()), "run {id} did not end within 60 s:\n{pending}");
    api_get(c, &format!("/runs/{id}")).await
}

/// Starts the sample pipeline and follows it to its end; returns the run id.
pub async fn run_sample(c: &Client) -> String {
    let id =
        api_post(c, "/runs", serde_json::json!({ "dag": "sample-pipeline" })).await["id"].as_str().unwrap().to_owned();
    wait_for_event(c, &id, "event: run.succeeded").await;
    id
}
