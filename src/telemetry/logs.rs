//! The daemon's logs: structured JSON (one object per line) to stdout for journald and to
//! rolling files under `/var/log/stella/` (`stella.<date>.log`, rotation and retention from
//! `[telemetry]`). Every line passes through [`redact`] before it is written anywhere: the
//! values of stored secrets and anything shaped like an API token become `[REDACTED]`.

use crate::telemetry::redact::MARKER;
use std::io::Write;
use std::sync::{OnceLock, RwLock};

/// Secret values the daemon knows of (loaded at start, added on `secrets set`).
static SECRETS: OnceLock<RwLock<Vec<String>>> = OnceLock::new();

fn secrets() -> &'static RwLock<Vec<String>> {
    SECRETS.get_or_init(Default::default)
}

/// From now on, `value` never appears in a log line.
pub fn add_secret(value: &str) {
    if value.is_empty() {
        return;
    }
    let mut s = secrets().write().unwrap_or_else(|e| e.into_inner());
    if !s.iter().any(|v| v == value) {
        s.push(value.to_owned());
        // Longer values first, so one that contains another is replaced whole.
        s.sort_by_key(|v| std::cmp::Reverse(v.len()));
    }
}

/// The line with every known secret value and every token-shaped word (`stl_<12 hex>_<64 hex>`)
/// replaced by `[REDACTED]`.
pub fn redact(line: &str) -> std::borrow::Cow<'_, str> {
    let secrets = secrets().read().unwrap_or_else(|e| e.into_inner());
    if !secrets.iter().any(|s| line.contains(s.as_str())) && find_token(line).is_none() {
        return std::borrow::Cow::Borrowed(line);
    }
    let mut out = crate::telemetry::redact::text(line, &secrets);
    while let Some(at) = find_token(&out) {
        out.replace_range(at..at + TOKEN_LEN, MARKER);
    }
    std::borrow::Cow::Owned(out)
}

const TOKEN_LEN: usize = 4 + 12 + 1 + 64;

fn find_token(s: &str) -> Option<usize> {
    s.match_indices("stl_")
        .map(|(i, _)| i)
        .find(|&i| s.get(i..i + TOKEN_LEN).is_some_and(|t| crate::auth::claimed_id(t).is_some()))
}

/// A writer that redacts each formatted event (tracing's JSON formatter writes one event per
/// `write_all`, ending in a newline) before handing it on.
pub struct Redacting<W: Write>(pub W);

impl<W: Write> Write for Redacting<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let text = String::from_utf8_lossy(buf);
        self.0.write_all(redact(&text).as_bytes())?;
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.0.flush()
    }
}

/// Installs the global subscriber: JSON to stdout and, if `dir` is given, to rolling files
/// there. `rotation` is `daily`, `hourly` or `never`. Logging set up once per process; later
/// calls (tests starting several daemons in one process) keep the first.
pub fn init(dir: Option<(&std::path::Path, &str, usize)>) -> Result<(), String> {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let filter = tracing_subscriber::EnvFilter::try_from_env("STELLA_LOG").unwrap_or_else(|_| "info".into());
    let file = match dir {
        None => None,
        Some((dir, rotation, max_files)) => {
            std::fs::create_dir_all(dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
            let rotation = match rotation {
                "hourly" => tracing_appender::rolling::Rotation::HOURLY,
                "never" => tracing_appender::rolling::Rotation::NEVER,
                _ => tracing_appender::rolling::Rotation::DAILY,
            };
            let appender = tracing_appender::rolling::Builder::new()
                .rotation(rotation)
                .filename_prefix("stella")
                .filename_suffix("log")
                .max_log_files(max_files)
                .build(dir)
                .map_err(|e| format!("log files in {}: {e}", dir.display()))?;
            Some(std::sync::Arc::new(std::sync::Mutex::new(appender)))
        }
    };
    // One layer: each line is formatted and redacted once, then written to both places.
    let make = move || Redacting(Both { file: file.clone() });
    let layer = tracing_subscriber::fmt::layer().json().with_current_span(false).with_ansi(false).with_writer(make);
    let _ = tracing_subscriber::registry().with(filter).with(layer).try_init();
    Ok(())
}

/// stdout, and the rolling appender (behind a lock) if there is one: one line at a time.
struct Both {
    file: Option<std::sync::Arc<std::sync::Mutex<tracing_appender::rolling::RollingFileAppender>>>,
}

impl Write for Both {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        // A line that stdout refuses (a closed pipe) still reaches the file.
        let out = std::io::stdout().lock().write_all(buf);
        if let Some(file) = &self.file {
            file.lock().unwrap_or_else(|e| e.into_inner()).write_all(buf)?;
        }
        out.map(|()| buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        if let Some(file) = &self.file {
            file.lock().unwrap_or_else(|e| e.into_inner()).flush()?;
        }
        std::io::stdout().flush()
    }
}

/// The log files of `dir`, oldest first (rolled names sort by date).
pub fn files(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut v: Vec<_> = std::fs::read_dir(dir)
        .map(|r| {
            r.filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| {
                    let n = p.file_name().unwrap_or_default().to_string_lossy();
                    n.starts_with("stella") && n.ends_with(".log")
                })
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// Whether the log file `path` may hold records stamped in `[from_ms, to_ms)`, judged by its
/// name, so that an export of a day does not read a month of files. A rolled file is named
/// for its period in UTC (`stella.2027-01-15.log` daily, `stella.2027-01-15-13.log` hourly);
/// a record is stamped before it is written and written to the file of the moment, so a file
/// holds nothing stamped after its period and nothing stamped long before it (a minute is
/// allowed for a record stamped just before the roll). Any other name may hold anything.
pub fn may_hold(path: &std::path::Path, from_ms: i64, to_ms: i64) -> bool {
    const EARLY_MS: i64 = 60_000;
    match period(path) {
        Some((start, end)) => end > from_ms && start - EARLY_MS < to_ms,
        None => true,
    }
}

/// The period `[start, end)` in Unix ms a rolled log file is named for.
fn period(path: &std::path::Path) -> Option<(i64, i64)> {
    let stamp = path.file_name()?.to_str()?.strip_prefix("stella.")?.strip_suffix(".log")?;
    let field = |r: std::ops::Range<usize>| stamp.get(r)?.parse::<u16>().ok();
    let (hour, len_ms) = match stamp.len() {
        10 => (0, 86_400_000),
        13 if stamp.as_bytes()[10] == b'-' => (field(11..13).filter(|h| *h < 24)?, 3_600_000),
        _ => return None,
    };
    let (dash1, dash2) = (stamp.as_bytes()[4], stamp.as_bytes()[7]);
    if (dash1, dash2) != (b'-', b'-') {
        return None;
    }
    let month = time::Month::try_from(field(5..7)? as u8).ok()?;
    let date = time::Date::from_calendar_date(i32::from(field(0..4)?), month, field(8..10)? as u8).ok()?;
    let start = date.midnight().assume_utc().unix_timestamp() * 1000 + i64::from(hour) * 3_600_000;
    Some((start, start + len_ms))
}

/// Logs every committed run and step transition as one structured line (`tenant`, `dagId`,
/// `runId`, `stepId`, `status`), so the log files tell a run's story next to the requests'.
/// Runs until the writer's event channel closes or `stop` turns true.
pub async fn run_events(
    store: crate::kernel::store::Store,
    writer: crate::machine::WriterHandle,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    use tokio::sync::broadcast::error::RecvError;
    let mut events = writer.subscribe_where(|e| e.kind.starts_with("run.") || e.kind.starts_with("step."));
    let mut dags: std::collections::HashMap<String, String> = std::collections::HashMap::new();
    loop {
        let entry = tokio::select! {
            e = events.recv() => e,
            _ = stop.changed() => return,
        };
        let entry = match entry {
            Ok(e) => e,
            Err(RecvError::Lagged(n)) => {
                tracing::warn!(skipped = n, "run event log fell behind; the ledger has every transition");
                continue;
            }
            Err(RecvError::Closed) => return,
        };
        let Some((scope, status)) = entry.kind.split_once('.') else { continue };
        if scope != "run" && scope != "step" {
            continue;
        }
        let run = entry.data["runId"].as_str().unwrap_or_default().to_owned();
        let dag = match (entry.data["dag"].as_str(), dags.get(&run)) {
            (Some(d), _) => d.to_owned(),
            (None, Some(d)) => d.clone(),
            (None, None) => store
                .read()
                .ok()
                .and_then(|t| t.open_table(crate::domain::runs::tables::RUNS).ok())
                .and_then(|t| {
                    crate::kernel::store::rw::get::<crate::domain::runs::tables::RunRecord>(&t, "runs", &run)
                        .ok()
                        .flatten()
                })
                .map(|r| r.dag)
                .unwrap_or_default(),
        };
        let step = entry.data["step"].as_str().unwrap_or_default();
        tracing::info!(
            tenant = %entry.tenant, dagId = %dag, runId = %run, stepId = %step, status, seq = entry.seq,
            "{} {}", entry.kind, if step.is_empty() { run.as_str() } else { step }
        );
        if scope == "run" && status != "created" && status != "resumed" {
            dags.remove(&run);
        } else {
            dags.insert(run, dag);
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_rolled_file_is_read_only_for_windows_its_period_can_hold() {
        let day = |name: &str| std::path::PathBuf::from(format!("/var/log/stella/{name}"));
        let ms = |t: &str| {
            time::OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339).unwrap().unix_timestamp()
                * 1000
        };
        let jan15 = day("stella.2027-01-15.log");
        assert_eq!(period(&jan15), Some((ms("2027-01-15T00:00:00Z"), ms("2027-01-16T00:00:00Z"))));
        assert!(may_hold(&jan15, ms("2027-01-15T12:00:00Z"), ms("2027-01-15T13:00:00Z")));
        assert!(!may_hold(&jan15, ms("2027-01-16T00:00:00Z"), ms("2027-01-17T00:00:00Z")), "after its day");
        assert!(!may_hold(&jan15, ms("2027-01-13T00:00:00Z"), ms("2027-01-14T00:00:00Z")), "before its day");
        // A record stamped just before midnight may have been written into the next day's file.
        assert!(may_hold(&jan15, ms("2027-01-14T00:00:00Z"), ms("2027-01-14T23:59:59Z")));
        let hour = day("stella.2027-01-15-13.log");
        assert_eq!(period(&hour), Some((ms("2027-01-15T13:00:00Z"), ms("2027-01-15T14:00:00Z"))));
        assert!(!may_hold(&hour, ms("2027-01-15T14:00:00Z"), ms("2027-01-15T15:00:00Z")));
        for any in ["stella.log", "stella.2027-13-01.log", "stella.2027-01-15-24.log", "stella.20270115.log"] {
            assert_eq!(period(&day(any)), None, "{any}");
            assert!(may_hold(&day(any), 0, 1), "{any}");
        }
    }

    use super::*;

    #[test]
    fn secrets_and_tokens_are_redacted() {
        add_secret("s3cr3t-value");
        let token = format!("stl_{}_{}", "a".repeat(12), "b".repeat(64));
        let line = format!("{{\"msg\":\"pw s3cr3t-value, auth {token}, stl_short\"}}");
        assert_eq!(redact(&line), "{\"msg\":\"pw [REDACTED], auth [REDACTED], stl_short\"}");
    }
}
