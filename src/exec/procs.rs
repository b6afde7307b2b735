//! Every process an attempt starts ends with it. The daemon is a child subreaper
//! (`PR_SET_CHILD_SUBREAPER`), so a plugin's descendants that outlive their parent (a `setsid`
//! child, a double fork) are re-parented to the daemon rather than to init. When an attempt
//! ends the daemon kills: the plugin's process group; every process whose environment names
//! the attempt's job under this appliance's work directory (what each plugin starts with and
//! its children inherit); and every child of the daemon that is not a running plugin and names
//! no running job (a descendant that cleared its environment, re-parented here). Killed
//! children are reaped; so are zombies of earlier strays.
//!
//! Hand-written over `/proc` and `libc`: no maintained crate does process-tree sweeps without
//! pulling in far more (`sysinfo`), and cgroups are not delegated to the daemon on every host.
//! A descendant that cleared its environment while its parent was still alive and outlived a
//! daemon killed with -9 escapes (it was re-parented to init then); the restart kills only what
//! still names this appliance.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Mutex;

/// Running plugin processes (pid → job and start time), registered under the lock at spawn.
static LIVE: Mutex<Live> = Mutex::new(Live(None));

struct Live(Option<HashMap<i32, (String, u64)>>);

impl Live {
    fn map(&mut self) -> &mut HashMap<i32, (String, u64)> {
        self.0.get_or_insert_with(HashMap::new)
    }
}

/// Makes this process the subreaper of its descendants (Linux; elsewhere a no-op).
pub fn become_subreaper() {
    // SAFETY: prctl with PR_SET_CHILD_SUBREAPER takes an integer flag and touches no memory.
    let rc = unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
    if rc != 0 {
        tracing::warn!(error = %std::io::Error::last_os_error(), "could not become a child subreaper");
    }
}

/// Spawns with `spawn` while holding the registry, so a sweep never sees the new plugin
/// before it is registered.
pub fn spawn_registered<T>(job: &str, spawn: impl FnOnce() -> std::io::Result<(T, Option<u32>)>) -> std::io::Result<T> {
    let mut live = LIVE.lock().unwrap_or_else(|p| p.into_inner());
    let (child, pid) = spawn()?;
    if let Some(pid) = pid {
        let started = start_ticks(pid as i32).unwrap_or(0);
        live.map().insert(pid as i32, (job.to_owned(), started));
    }
    Ok(child)
}

/// Ends an attempt: kills what it left behind (see the module) and reaps it.
///
/// With the plugin gone, everything it started is a descendant of this subreaper: its
/// children were re-parented here when it exited, theirs come here as each level is killed.
/// So the daemon kills, in rounds, each of its own children that is not a running plugin and
/// names no running job, until none is left; no `/proc` scan is needed (one is the fallback
/// where the kernel does not list children).
pub fn end_attempt(work_root: &Path, job: &str, pgid: Option<u32>) {
    let mut live = LIVE.lock().unwrap_or_else(|p| p.into_inner());
    let mut since = 0;
    if let Some(pgid) = pgid {
        since = live.map().remove(&(pgid as i32)).map_or(0, |(_, started)| started);
        // SAFETY: killpg on the group the plugin led; at worst it is already empty.
        unsafe { libc::killpg(pgid as i32, libc::SIGKILL) };
    }
    // Whether the kernel lists a task's children does not change: asked once.
    static LISTED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    if !*LISTED.get_or_init(|| our_children().is_some()) {
        let running: Vec<String> = live.map().values().map(|(job, _)| job.clone()).collect();
        return end_attempt_by_scan(live, work_root, job, since, &running);
    }
    drop(live);
    for _ in 0..ROUNDS_MAX {
        // Chosen under the registry (no plugin is being spawned meanwhile), killed and waited
        // for without it, so a slow death never holds up the executor.
        let strays: Vec<i32> = {
            let mut live = LIVE.lock().unwrap_or_else(|p| p.into_inner());
            let running: Vec<String> = live.map().values().map(|(job, _)| job.clone()).collect();
            let children = our_children().unwrap_or_default();
            children
                .into_iter()
                .filter(|pid| !live.map().contains_key(pid))
                .filter(|pid| {
                    let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
                    let p = Proc { pid: *pid, ppid: 0, zombie: false, environ };
                    !running.iter().any(|j| p.names_job(j))
                })
                .collect()
        };
        if strays.is_empty() {
            return;
        }
        for pid in strays {
            // SAFETY: kill on a child of ours that is no running plugin; SIGKILL ends it, and
            // its own children come to this subreaper for the next round.
            unsafe { libc::kill(pid, libc::SIGKILL) };
            wait_briefly(pid);
        }
    }
}

/// Reaps the child `pid` that was just sent SIGKILL, waiting at most about 100 ms (a process
/// stuck in the kernel is left for a later sweep rather than waited for).
fn wait_briefly(pid: i32) {
    for _ in 0..100 {
        let mut status = 0;
        // SAFETY: a non-blocking wait on our own child.
        let r = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
        if r != 0 {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
}

/// Rounds of [`end_attempt`] at most: the depth of a process tree it ends.
const ROUNDS_MAX: usize = 64;

/// This process's children, from `/proc/self/task/*/children`; `None` where the kernel does not
/// list them.
fn our_children() -> Option<Vec<i32>> {
    let mut out = Vec::new();
    let mut listed = false;
    for task in std::fs::read_dir("/proc/self/task").ok()?.flatten() {
        if let Ok(text) = std::fs::read_to_string(task.path().join("children")) {
            listed = true;
            out.extend(text.split_whitespace().filter_map(|p| p.parse::<i32>().ok()));
        }
    }
    listed.then_some(out)
}

/// [`end_attempt`] where children are not listed: every process started since the plugin
/// that names the attempt, and every child that is no running plugin.
fn end_attempt_by_scan(
    mut live: std::sync::MutexGuard<'_, Live>,
    work_root: &Path,
    job: &str,
    since: u64,
    running: &[String],
) {
    let me = std::process::id() as i32;
    let mut killed = Vec::new();
    for p in processes(|started, ppid| started >= since || ppid == me) {
        let ours = p.names_job_under(work_root, Some(job));
        let stray = p.ppid == me && !live.map().contains_key(&p.pid) && !running.iter().any(|j| p.names_job(j));
        if ours || stray {
            // SAFETY: kill on a pid read from /proc just now, matched as our attempt's.
            unsafe { libc::kill(p.pid, libc::SIGKILL) };
            killed.push(p);
        }
    }
    drop(live);
    reap(me, &killed);
}

/// At start and at a clean stop (no attempt runs then): kills the groups of plugins still
/// registered, every process naming a job of this appliance, and every other child.
pub fn kill_all(work_root: &Path) {
    let live: Vec<i32> = LIVE.lock().unwrap_or_else(|p| p.into_inner()).map().drain().map(|(pid, _)| pid).collect();
    for pid in &live {
        // SAFETY: killpg on a group a plugin of ours led.
        unsafe { libc::killpg(*pid, libc::SIGKILL) };
        // Its leader is our child: once it is reaped, what it started is re-parented to this
        // subreaper before the scan.
        wait_briefly(*pid);
    }
    let me = std::process::id() as i32;
    let mut killed = Vec::new();
    for p in processes(|_, _| true) {
        if p.names_job_under(work_root, None) || p.ppid == me {
            tracing::warn!(pid = p.pid, "stopping a process an attempt left running");
            // SAFETY: kill on a pid read from /proc just now, matched as this appliance's.
            unsafe { libc::kill(p.pid, libc::SIGKILL) };
            killed.push(p);
        }
    }
    reap(me, &killed);
}

/// Waits for those of `killed` that are this process's children (SIGKILL ends them at once),
/// and collects any other zombie child that is not a running plugin.
fn reap(me: i32, killed: &[Proc]) {
    for p in killed.iter().filter(|p| p.ppid == me) {
        wait_briefly(p.pid);
    }
    let live = LIVE.lock().unwrap_or_else(|p| p.into_inner()).map().clone();
    for p in processes(|_, _| false).into_iter().filter(|p| p.ppid == me && p.zombie && !live.contains_key(&p.pid)) {
        let mut status = 0;
        // SAFETY: waitpid without blocking on a zombie child of ours that no one else waits for.
        unsafe { libc::waitpid(p.pid, &mut status, libc::WNOHANG) };
    }
}

struct Proc {
    pid: i32,
    ppid: i32,
    zombie: bool,
    environ: Vec<u8>,
}

impl Proc {
    fn var(&self, key: &str) -> Option<&[u8]> {
        self.environ.split(|b| *b == 0).find_map(|kv| kv.strip_prefix(key.as_bytes())?.strip_prefix(b"="))
    }

    fn names_job(&self, job: &str) -> bool {
        self.var("STELLA_JOB") == Some(job.as_bytes())
    }

    /// Started for an attempt of this appliance (its work directory is under `work_root`),
    /// of `job` if named.
    fn names_job_under(&self, work_root: &Path, job: Option<&str>) -> bool {
        let root = work_root.as_os_str().as_encoded_bytes();
        let under = self.var("STELLA_WORKDIR").is_some_and(|w| w.starts_with(root) && w.get(root.len()) == Some(&b'/'));
        under && job.is_none_or(|j| self.names_job(j))
    }
}

/// A process's state, parent and start time (clock ticks since boot) from `/proc/PID/stat`.
fn stat(pid: i32) -> Option<(String, i32, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // `pid (comm) state ppid …`: comm may hold spaces and parentheses, so read after the last ')'.
    let fields: Vec<&str> = stat[stat.rfind(')')? + 1..].split_whitespace().collect();
    Some((fields.first()?.to_string(), fields.get(1)?.parse().ok()?, fields.get(19)?.parse().ok()?))
}

fn start_ticks(pid: i32) -> Option<u64> {
    stat(pid).map(|(_, _, started)| started)
}

/// Every process this user may see: pid, parent, whether a zombie, and — where `read_env`
/// (given its start time and parent) says so — its environment (empty where it cannot be read).
fn processes(read_env: impl Fn(u64, i32) -> bool) -> Vec<Proc> {
    let Ok(dir) = std::fs::read_dir("/proc") else { return vec![] };
    let mut out = Vec::new();
    for e in dir.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else { continue };
        let Some((state, ppid, started)) = stat(pid) else { continue };
        let environ =
            if read_env(started, ppid) { std::fs::read(e.path().join("environ")).unwrap_or_default() } else { vec![] };
        out.push(Proc { pid, ppid, zombie: state == "Z", environ });
    }
    out
}
