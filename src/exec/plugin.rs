//! Plugin processes, protocol v1 (DESIGN.md §3): one JSON request on stdin; NDJSON events on
//! stdout (`log`, `progress`, `output`, final `result`); stderr captured as logs; the exit code
//! confirms the result. The process runs in its own process group with a cleared environment
//! and its own working directory; its output is bounded (past the cap it is killed); on
//! timeout or cancel the whole group gets SIGTERM, then SIGKILL after a grace period.

use crate::exec::builtin::StepResult;
use crate::exec::protocol::{Event, PROTOCOL, Request};
use crate::telemetry::redact;
use serde_json::{Map, Value};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::{Child, Command};

/// Stdout a plugin may write in all; past it the plugin is killed (`output_limit`).
pub const OUTPUT_BYTES_MAX: usize = 16 * 1024 * 1024;
/// One stdout line (event) at most; a longer one is refused as malformed.
const LINE_BYTES_MAX: usize = 256 * 1024;
/// Stderr kept for the error message and logs; the rest is read and dropped.
const STDERR_KEEP_BYTES: usize = 16 * 1024;
/// Between SIGTERM and SIGKILL.
const KILL_GRACE: Duration = Duration::from_secs(2);
/// How long stdout is still read after the plugin exited while something it started holds the
/// pipe open.
const STDOUT_DRAIN: Duration = Duration::from_millis(500);

pub struct Invocation {
    /// Secret values passed in the request; redacted from everything the plugin writes.
    pub secrets: Vec<String>,
    pub program: PathBuf,
    pub workdir: PathBuf,
    pub request: crate::exec::protocol::Request,
    pub env: Vec<(String, String)>,
    pub timeout: Duration,
    /// `<lib>/work`: every attempt's directory is below it (what the process sweep matches).
    pub work_root: PathBuf,
}

/// Signals the plugin's process group (its pid is the group id: it was spawned with
/// `process_group(0)`).
fn signal_group(child: &Child, signal: i32) {
    if let Some(pid) = child.id() {
        // SAFETY: killpg on the group our child leads; at worst the group is already gone.
        unsafe { libc::killpg(pid as i32, signal) };
    }
}

async fn stop(child: &mut Child) {
    signal_group(child, libc::SIGTERM);
    if tokio::time::timeout(KILL_GRACE, child.wait()).await.is_err() {
        signal_group(child, libc::SIGKILL);
        let _ = child.wait().await;
    }
}

/// What one attempt may write into the daemon's log (and so into every export); past it, one
/// truncation marker counts what was dropped. The attempt's whole output is kept in its
/// output file ([`ATTEMPT_LOGS_KEPT`]).
pub const ATTEMPT_LOG_BYTES_MAX: usize = 1024 * 1024;
/// Attempt output files kept (the newest; older ones are removed as new ones are written).
const ATTEMPT_LOGS_KEPT: usize = 200;

/// What the stdout events said.
#[derive(Default)]
struct Events {
    secrets: Vec<String>,
    outputs: Map<String, Value>,
    result: Option<Value>,
    malformed: Option<String>,
    /// Bytes of plugin lines written to the daemon's log so far, and lines dropped past the cap.
    logged: usize,
    dropped: usize,
    /// Every line, redacted: the attempt's output file.
    file: Option<std::io::BufWriter<std::fs::File>>,
}

impl Events {
    /// Whether `len` more bytes may still go to the daemon's log.
    fn may_log(&mut self, len: usize) -> bool {
        if self.logged + len > ATTEMPT_LOG_BYTES_MAX {
            self.dropped += 1;
            return false;
        }
        self.logged += len;
        true
    }

    fn keep(&mut self, text: &str) {
        if let Some(f) = &mut self.file {
            use std::io::Write;
            let _ = writeln!(f, "{text}");
        }
    }

    fn line(&mut self, line: &[u8]) {
        let Ok(v) = serde_json::from_slice::<Value>(line) else {
            let text = redact::text(&String::from_utf8_lossy(line), &self.secrets);
            self.keep(&text);
            if self.may_log(text.len()) {
                tracing::info!(plugin_output = %text, "plugin wrote a line that is not an event");
            }
            return;
        };
        let v = redact::json(&v, &self.secrets);
        self.keep(&v.to_string());
        match crate::exec::protocol::Event::parse(&v) {
            Ok(Event::Log { message }) => {
                if self.may_log(message.len()) {
                    tracing::info!(plugin_log = %message, "plugin log");
                }
            }
            Ok(Event::Progress { percent }) => tracing::debug!(progress = %percent, "plugin progress"),
            Ok(Event::Output { name: Some(name), value }) => {
                self.outputs.insert(name, value);
            }
            Ok(Event::Output { name: None, .. }) => self.malformed = Some("an output event without a name".into()),
            Ok(Event::Result { outputs }) => self.result = Some(outputs),
            Err(m) => self.malformed = Some(m),
        }
    }
}

pub async fn run(inv: Invocation, cancelled: impl std::future::Future<Output = ()>) -> Option<StepResult> {
    if let Err(e) = create_workdir(&inv.workdir) {
        return Some(StepResult::Failed {
            code: "workdir".into(),
            error: format!("create {}: {e}", inv.workdir.display()),
        });
    }
    let job = inv.request.job.clone();
    let spawned = crate::exec::procs::spawn_registered(&job, || {
        let child = Command::new(&inv.program)
            .env_clear()
            .envs(inv.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .current_dir(&inv.workdir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(true)
            .spawn()?;
        let pid = child.id();
        Ok((child, pid))
    });
    let mut child = match spawned {
        Ok(c) => c,
        Err(e) => {
            return Some(StepResult::Failed {
                code: "spawn".into(),
                error: format!("start {}: {e}", inv.program.display()),
            });
        }
    };
    // Recorded so that a daemon restarted after a crash stops this group before the step runs
    // again (`reap_orphans`): an attempt never overlaps the one it replaces.
    let pgid_file = inv.workdir.join(PGID_FILE);
    let pgid = child.id();
    if let Some(pid) = pgid {
        let _ = std::fs::write(&pgid_file, format!("{pid} {job}\n"));
    }
    // Whatever the attempt started ends with it — also if this future is dropped midway (the
    // lease was lost, the daemon stops): then the sweep runs on a thread of its own.
    let mut sweep = Sweep { work_root: inv.work_root.clone(), job: job.clone(), pgid, pending: true };
    let result = supervise(&mut child, &inv, cancelled).await;
    sweep.pending = false;
    let work_root = inv.work_root.clone();
    let _ = tokio::task::spawn_blocking(move || crate::exec::procs::end_attempt(&work_root, &job, pgid)).await;
    let _ = std::fs::remove_file(&pgid_file);
    let succeeded = matches!(result, Some(StepResult::Outputs(_)));
    let (work_root, workdir) = (inv.work_root.clone(), inv.workdir.clone());
    let _ = tokio::task::spawn_blocking(move || tidy_workdirs(&work_root, &workdir, succeeded)).await;
    result
}

/// Creates an attempt's working directory, private to the daemon's user (a plugin may write a
/// secret there). A sibling attempt of the same run that just succeeded removes the run and step
/// directories above its own once they are empty ([`tidy_workdirs`]), and may do so between the
/// creation of a parent and of its child here: that `NotFound` (or the `AlreadyExists` of a parent
/// that vanished right after) is retried, since each retry that
/// loses means a sibling finished, and a sibling's tidy never removes a non-empty directory.
fn create_workdir(workdir: &std::path::Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    let mut tries = 0;
    loop {
        match std::fs::DirBuilder::new().recursive(true).mode(0o700).create(workdir) {
            // A parent made by a sibling can vanish between its `mkdir` answering "exists" and
            // the `is_dir` that std checks next: that is the same lost race.
            Err(e)
                if matches!(e.kind(), std::io::ErrorKind::NotFound | std::io::ErrorKind::AlreadyExists)
                    && tries < 64 =>
            {
                tries += 1
            }
            done => return done,
        }
    }
}

/// Ends the attempt's processes when [`run`] is dropped before it could.
struct Sweep {
    work_root: PathBuf,
    job: String,
    pgid: Option<u32>,
    pending: bool,
}

impl Drop for Sweep {
    fn drop(&mut self) {
        if self.pending {
            let (work_root, job, pgid) = (self.work_root.clone(), std::mem::take(&mut self.job), self.pgid);
            std::thread::spawn(move || crate::exec::procs::end_attempt(&work_root, &job, pgid));
        }
    }
}

/// Failed attempts' working directories kept for diagnosis (the newest).
const FAILED_WORKDIRS_KEPT: usize = 50;

/// A succeeded attempt's working directory goes at once (what a plugin wrote there — a secret,
/// perhaps — does not stay); a failed one stays for diagnosis, the newest
/// [`FAILED_WORKDIRS_KEPT`] of them.
fn tidy_workdirs(work_root: &std::path::Path, workdir: &std::path::Path, succeeded: bool) {
    if succeeded {
        let _ = std::fs::remove_dir_all(workdir);
        // The run/step directories above it, once empty.
        for dir in workdir.ancestors().skip(1).take_while(|d| *d != work_root) {
            if std::fs::remove_dir(dir).is_err() {
                break;
            }
        }
        return;
    }
    // work/<run>/<step>/<job>-<attempt>
    let mut kept: Vec<(std::time::SystemTime, std::path::PathBuf)> = Vec::new();
    for run in std::fs::read_dir(work_root).into_iter().flatten().flatten() {
        for step in std::fs::read_dir(run.path()).into_iter().flatten().flatten() {
            for attempt in std::fs::read_dir(step.path()).into_iter().flatten().flatten() {
                let modified = attempt.metadata().and_then(|m| m.modified()).unwrap_or(std::time::UNIX_EPOCH);
                kept.push((modified, attempt.path()));
            }
        }
    }
    if kept.len() > FAILED_WORKDIRS_KEPT {
        kept.sort();
        for (_, old) in &kept[..kept.len() - FAILED_WORKDIRS_KEPT] {
            let _ = std::fs::remove_dir_all(old);
        }
    }
}

/// The attempt's output file, `<lib>/attempt-logs/<job>-<attempt>.ndjson` (0600, redacted):
/// every stdout line of the attempt, kept after its working directory is gone; the newest
/// [`ATTEMPT_LOGS_KEPT`] files stay.
fn attempt_log(inv: &Invocation) -> Option<std::io::BufWriter<std::fs::File>> {
    use std::os::unix::fs::OpenOptionsExt;
    let dir = inv.work_root.parent()?.join("attempt-logs");
    std::fs::create_dir_all(&dir).ok()?;
    let job = inv.request.job.as_str();
    let attempt = inv.request.attempt;
    let path = dir.join(format!("{job}-{attempt}.ndjson"));
    let file = std::fs::OpenOptions::new().create(true).truncate(true).write(true).mode(0o600).open(path).ok()?;
    // Pruned every so often, not at every attempt: the directory is read whole to prune it.
    static OPENED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    if !OPENED.fetch_add(1, std::sync::atomic::Ordering::Relaxed).is_multiple_of(32) {
        return Some(std::io::BufWriter::new(file));
    }
    let mut logs: Vec<(std::time::SystemTime, std::path::PathBuf)> = std::fs::read_dir(&dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| (e.metadata().and_then(|m| m.modified()).unwrap_or(std::time::UNIX_EPOCH), e.path()))
        .collect();
    if logs.len() > ATTEMPT_LOGS_KEPT {
        logs.sort();
        for (_, old) in &logs[..logs.len() - ATTEMPT_LOGS_KEPT] {
            let _ = std::fs::remove_file(old);
        }
    }
    Some(std::io::BufWriter::new(file))
}

/// Where an attempt's process group id is kept while it runs.
const PGID_FILE: &str = ".stella-pgid";

/// Kills the process groups of plugin attempts that a previous daemon left running (it died
/// without stopping them). A recorded group is killed only if its leader still carries the
/// job id in its environment, so a reused pid is never hit.
pub fn reap_orphans(lib: &std::path::Path) {
    let mut stack = vec![lib.join("work")];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else { continue };
        for e in entries.flatten() {
            let path = e.path();
            if path.is_dir() {
                stack.push(path);
            } else if path.file_name().is_some_and(|n| n == PGID_FILE) {
                if let Some((pid, job)) = std::fs::read_to_string(&path).ok().and_then(|t| {
                    let mut it = t.split_whitespace();
                    Some((it.next()?.parse::<i32>().ok()?, it.next()?.to_owned()))
                }) && std::fs::read(format!("/proc/{pid}/environ"))
                    .is_ok_and(|env| env.split(|b| *b == 0).any(|kv| kv == format!("STELLA_JOB={job}").as_bytes()))
                {
                    tracing::warn!(pid, job = %job, "stopping a plugin left running by a previous daemon or agent");
                    // SAFETY: killpg on a group whose leader we verified is our plugin attempt.
                    unsafe { libc::killpg(pid, libc::SIGKILL) };
                }
                let _ = std::fs::remove_file(&path);
            }
        }
    }
    // And every process still naming one of this appliance's attempts (a `setsid` child of a
    // plugin that kept its environment), whatever its group.
    crate::exec::procs::kill_all(&lib.join("work"));
}

async fn supervise(
    child: &mut Child,
    inv: &Invocation,
    cancelled: impl std::future::Future<Output = ()>,
) -> Option<StepResult> {
    let request = serde_json::to_vec(&inv.request).expect("request serializes");
    let mut stdin = child.stdin.take().expect("piped");
    let writer = tokio::spawn(async move {
        let _ = stdin.write_all(&request).await;
        let _ = stdin.shutdown().await;
    });
    let mut stdout = child.stdout.take().expect("piped");
    let (errors, kept) = keep_stderr(child.stderr.take().expect("piped"));
    let mut events = Events { secrets: inv.secrets.clone(), file: attempt_log(inv), ..Events::default() };
    let read = read_events(&mut stdout, &mut events);
    tokio::pin!(cancelled);
    let timeout = tokio::time::sleep(inv.timeout);
    tokio::pin!(timeout);
    enum First {
        Read(Result<(), (&'static str, String)>),
        Exited,
        TimedOut,
    }
    let outcome = {
        tokio::pin!(read);
        let first = tokio::select! {
            r = &mut read => First::Read(r),
            // The plugin ended, but something it started may still hold its stdout open: what
            // is already written is read for a moment, then the attempt is over (and the
            // sweep ends the holder).
            _ = child.wait() => First::Exited,
            _ = &mut timeout => First::TimedOut,
            _ = &mut cancelled => {
                stop(child).await;
                return None;
            }
        };
        match first {
            First::Read(r) => r,
            First::Exited => tokio::time::timeout(STDOUT_DRAIN, &mut read).await.unwrap_or(Ok(())),
            First::TimedOut => {
                Err(("timeout", format!("the plugin did not finish within {} ms", inv.timeout.as_millis())))
            }
        }
    };
    if let Err((code, error)) = outcome {
        stop(child).await;
        return Some(StepResult::Failed { code: code.into(), error });
    }
    let status = tokio::select! {
        s = tokio::time::timeout(inv.timeout, child.wait()) => s,
        _ = &mut cancelled => {
            stop(child).await;
            return None;
        }
    };
    writer.abort();
    if events.dropped > 0 {
        tracing::warn!(
            dropped_lines = events.dropped,
            limit_bytes = ATTEMPT_LOG_BYTES_MAX,
            output = %format!("attempt-logs/{}-{}.ndjson", inv.request.job, inv.request.attempt),
            "plugin log truncated: the attempt wrote more than it may log; its output file has every line"
        );
    }
    if let Some(mut f) = events.file.take() {
        use std::io::Write;
        let _ = f.flush();
    }
    // Like stdout, stderr may be held open by something the plugin started.
    let mut errors = errors;
    if tokio::time::timeout(STDOUT_DRAIN, &mut errors).await.is_err() {
        errors.abort();
    }
    let kept = std::mem::take(&mut *kept.lock().unwrap_or_else(|p| p.into_inner()));
    let stderr_text = redact::text(&String::from_utf8_lossy(&kept), &inv.secrets);
    let last_err = stderr_text.lines().last().unwrap_or("").to_owned();
    let Ok(status) = status else {
        stop(child).await;
        return Some(StepResult::Failed {
            code: "timeout".into(),
            error: "the plugin closed stdout but did not exit".into(),
        });
    };
    Some(verdict(status, events, &last_err))
}

/// Keeps the first [`STDERR_KEEP_BYTES`] of the plugin's stderr (the last line names a failure).
fn keep_stderr(
    mut stderr: tokio::process::ChildStderr,
) -> (tokio::task::JoinHandle<()>, std::sync::Arc<std::sync::Mutex<Vec<u8>>>) {
    let kept = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let task = {
        let kept = kept.clone();
        tokio::spawn(async move {
            let mut buf = [0u8; 8192];
            while let Ok(n) = stderr.read(&mut buf).await {
                if n == 0 {
                    break;
                }
                let mut kept = kept.lock().unwrap_or_else(|p| p.into_inner());
                let room = STDERR_KEEP_BYTES.saturating_sub(kept.len());
                kept.extend_from_slice(&buf[..n.min(room)]);
            }
        })
    };
    (task, kept)
}

/// Reads protocol v1 event lines from stdout until it closes, within the output bounds.
async fn read_events(
    stdout: &mut tokio::process::ChildStdout,
    events: &mut Events,
) -> Result<(), (&'static str, String)> {
    let (mut total, mut line, mut buf) = (0usize, Vec::new(), [0u8; 8192]);
    loop {
        let n = match stdout.read(&mut buf).await {
            Ok(0) | Err(_) => return Ok(()),
            Ok(n) => n,
        };
        total += n;
        if total > OUTPUT_BYTES_MAX {
            return Err(("output_limit", format!("the plugin wrote more than {OUTPUT_BYTES_MAX} bytes to stdout")));
        }
        for &b in &buf[..n] {
            if b == b'\n' {
                events.line(&line);
                line.clear();
            } else if line.len() < LINE_BYTES_MAX {
                line.push(b);
            } else {
                return Err(("protocol", format!("an event line is longer than {LINE_BYTES_MAX} bytes")));
            }
        }
    }
}

/// What an exited plugin's attempt comes to: its exit status, then its events.
fn verdict(status: std::io::Result<std::process::ExitStatus>, events: Events, last_err: &str) -> StepResult {
    match status {
        Err(e) => StepResult::Failed { code: "wait".into(), error: e.to_string() },
        Ok(status) if !status.success() => StepResult::Failed {
            code: "exit_status".into(),
            error: format!(
                "the plugin exited with {status}{}",
                if last_err.is_empty() { String::new() } else { format!(": {last_err}") }
            ),
        },
        Ok(_) => match (events.malformed, events.result) {
            (Some(m), _) => {
                StepResult::Failed { code: "protocol".into(), error: format!("the plugin broke protocol v1: {m}") }
            }
            (None, None) => StepResult::Failed {
                code: "no_result".into(),
                error: "the plugin exited 0 without a result event".into(),
            },
            (None, Some(result)) => {
                let mut outputs = events.outputs;
                if let Value::Object(r) = result {
                    outputs.extend(r);
                }
                StepResult::Outputs(Value::Object(outputs))
            }
        },
    }
}

/// The plugin process of one attempt of job `job` (of type `job_type`, leased as `attempt`):
/// the sealed plugin in `plugin_dir` (its `plugin.toml` read there), the step kind the job
/// asks for (or the plugin's only one), a fresh working directory under `work_root`, and the
/// secrets' values, resolved by the caller. The in-process executor and a remote deploy agent
/// build their attempts with it.
pub struct Attempt<'a> {
    pub job: &'a str,
    pub job_type: &'a str,
    pub attempt: u32,
    pub payload: &'a Value,
    pub plugin_dir: &'a Path,
    pub work_root: &'a Path,
    pub secrets: std::collections::BTreeMap<String, String>,
}

impl Attempt<'_> {
    pub fn invocation(self) -> Result<Invocation, (&'static str, String)> {
        let missing = |e: String| ("plugin_missing", e);
        let (job_type, dir) = (self.job_type, self.plugin_dir);
        let digest = self.payload["pluginDigest"].as_str().unwrap_or("unpinned");
        let manifest: crate::plugins::Manifest = std::fs::read_to_string(dir.join("plugin.toml"))
            .map_err(|e| format!("plugin {job_type} ({digest}) is not in the sealed store: {e}"))
            .and_then(|t| toml::from_str(&t).map_err(|e| format!("plugin {job_type}: plugin.toml: {e}")))
            .map_err(missing)?;
        // The kind the step asked for, or the plugin's only one; a plugin upgraded since the
        // DAG was registered may no longer implement it.
        let kinds = manifest.kinds();
        let kind = match self.payload["kind"].as_str() {
            Some(k) if kinds.iter().any(|x| x == k) => k.to_owned(),
            None if kinds.len() == 1 => kinds[0].clone(),
            asked => {
                return Err((
                    "unknown_kind",
                    format!("plugin {job_type} ({digest}) implements {}, not {asked:?}", kinds.join(", ")),
                ));
            }
        };
        let run = self.payload["run"].as_str().unwrap_or("none");
        let step = self.payload["step"].as_str().unwrap_or("none");
        let workdir = self.work_root.join(run).join(step).join(format!("{}-{}", self.job, self.attempt));
        let (mut request, mut env) = request_and_env(self.job, self.payload, &workdir, self.attempt, &kind);
        env.push(("STELLA_KIND".to_owned(), kind));
        let values = self.secrets.values().cloned().collect();
        request.secrets = self.secrets;
        Ok(Invocation {
            secrets: values,
            program: dir.join(&manifest.entrypoint),
            workdir,
            request,
            env,
            timeout: Duration::from_millis(self.payload["timeoutMs"].as_u64().unwrap_or(300_000)),
            work_root: self.work_root.to_path_buf(),
        })
    }
}

/// The request of protocol v1 (for step `kind`, secrets added by the caller) and the
/// environment a plugin starts with: nothing of the daemon's own environment, only what the
/// step needs.
fn request_and_env(
    job: &str,
    p: &Value,
    workdir: &std::path::Path,
    attempt: u32,
    kind: &str,
) -> (Request, Vec<(String, String)>) {
    let run = p["run"].as_str().unwrap_or_default();
    let step = p["step"].as_str().unwrap_or_default();
    let traceparent = crate::telemetry::otlp::traceparent(run, job, attempt);
    let request = Request {
        attempt,
        inputs: p["inputs"].clone(),
        job: job.to_owned(),
        kind: kind.to_owned(),
        protocol: PROTOCOL,
        run: run.to_owned(),
        secrets: Default::default(),
        step: step.to_owned(),
        traceparent: traceparent.clone(),
    };
    let mut env = vec![
        ("PATH".to_owned(), "/usr/local/bin:/usr/bin:/bin".to_owned()),
        ("HOME".to_owned(), workdir.display().to_string()),
        ("LANG".to_owned(), "C.UTF-8".to_owned()),
        ("STELLA_PROTOCOL".to_owned(), "1".to_owned()),
        ("STELLA_RUN".to_owned(), run.to_owned()),
        ("STELLA_STEP".to_owned(), step.to_owned()),
        ("STELLA_JOB".to_owned(), job.to_owned()),
        ("STELLA_ATTEMPT".to_owned(), attempt.to_string()),
        ("STELLA_WORKDIR".to_owned(), workdir.display().to_string()),
        ("TRACEPARENT".to_owned(), traceparent),
    ];
    for (k, v) in p["inputs"].as_object().into_iter().flatten() {
        let key: String =
            k.chars().map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_uppercase() } else { '_' }).collect();
        let value = match v {
            Value::String(s) => s.clone(),
            Value::Number(_) | Value::Bool(_) => v.to_string(),
            _ => continue,
        };
        env.push((format!("STELLA_INPUT_{key}"), value));
    }
    (request, env)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two attempts of one run on two threads, each creating its working directory and then
    /// tidying it as a success (which removes the emptied step and run directories above it):
    /// the creation never fails because the other removed a parent midway.
    #[test]
    fn a_sibling_tidying_its_parents_never_fails_a_workdir_creation() {
        let root = tempfile::tempdir().unwrap();
        let work_root = root.path().join("work");
        std::thread::scope(|s| {
            for step in ["a", "b"] {
                let work_root = &work_root;
                s.spawn(move || {
                    for i in 0..3000 {
                        let workdir = work_root.join("run-1").join(step).join(format!("job-{i}-1"));
                        create_workdir(&workdir).unwrap_or_else(|e| panic!("{}: {e}", workdir.display()));
                        tidy_workdirs(work_root, &workdir, true);
                    }
                });
            }
        });
        assert!(!work_root.join("run-1").exists(), "the emptied run directory was removed");
    }
}
