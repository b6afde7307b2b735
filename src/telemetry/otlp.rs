//! The OpenTelemetry OTLP file format in its JSON encoding (one `Export*ServiceRequest` per
//! line): lowerCamelCase fields, trace and span ids as hex, 64-bit integers as decimal strings,
//! enums as numbers. Built with `serde_json` values — the three request shapes are small and
//! fixed, and an OTLP protobuf stack would be a large dependency for them.

use serde_json::{Value, json};
use sha2::{Digest, Sha256};

/// Unix milliseconds as the string of nanoseconds OTLP/JSON wants.
pub fn nanos(ms: i64) -> String {
    (i128::from(ms) * 1_000_000).to_string()
}

pub fn string(v: &str) -> Value {
    json!({ "stringValue": v })
}

pub fn int(v: i64) -> Value {
    json!({ "intValue": v.to_string() })
}

pub fn kv(key: &str, value: Value) -> Value {
    json!({ "key": key, "value": value })
}

/// The resource every request names: this appliance.
pub fn resource(appliance_id: &str) -> Value {
    json!({ "attributes": [
        kv("service.name", string("stella")),
        kv("service.instance.id", string(appliance_id)),
        kv("service.version", string(env!("CARGO_PKG_VERSION"))),
    ] })
}

fn scope() -> Value {
    json!({ "name": "stella", "version": env!("CARGO_PKG_VERSION") })
}

fn digest_hex(parts: &[&str], bytes: usize) -> String {
    let mut h = Sha256::new();
    for p in parts {
        h.update(p.as_bytes());
        h.update([0]);
    }
    hex::encode(&h.finalize()[..bytes])
}

/// One trace per run: the trace id the run's plugins receive in `traceparent`.
pub fn trace_id(run: &str) -> String {
    digest_hex(&["trace", run], 16)
}

pub fn run_span_id(run: &str) -> String {
    digest_hex(&["run", run], 8)
}

pub fn step_span_id(run: &str, step: &str) -> String {
    digest_hex(&["step", run, step], 8)
}

/// The span of one attempt of a step's job: the parent span a plugin's own spans hang from.
pub fn attempt_span_id(job: &str, attempt: u32) -> String {
    digest_hex(&["attempt", job, &attempt.to_string()], 8)
}

/// The W3C `traceparent` handed to a plugin for an attempt.
pub fn traceparent(run: &str, job: &str, attempt: u32) -> String {
    format!("00-{}-{}-01", trace_id(run), attempt_span_id(job, attempt))
}

/// A span; `error` sets status ERROR with its message, otherwise OK.
pub struct Span<'a> {
    pub trace_id: String,
    pub span_id: String,
    pub parent: Option<String>,
    pub name: &'a str,
    pub start_ms: i64,
    pub end_ms: i64,
    pub attributes: Vec<Value>,
    pub error: Option<String>,
}

impl Span<'_> {
    pub fn to_json(&self) -> Value {
        let mut span = json!({
            "traceId": self.trace_id,
            "spanId": self.span_id,
            "name": self.name,
            "kind": 1,
            "startTimeUnixNano": nanos(self.start_ms),
            "endTimeUnixNano": nanos(self.end_ms.max(self.start_ms)),
            "attributes": self.attributes,
            "status": match &self.error { Some(m) => json!({ "code": 2, "message": m }), None => json!({ "code": 1 }) },
        });
        if let Some(p) = &self.parent {
            span["parentSpanId"] = json!(p);
        }
        span
    }
}

/// An `ExportTraceServiceRequest`.
pub fn traces_request(resource: &Value, spans: Vec<Value>) -> Value {
    json!({ "resourceSpans": [{ "resource": resource, "scopeSpans": [{ "scope": scope(), "spans": spans }] }] })
}

/// An `ExportLogsServiceRequest`.
pub fn logs_request(resource: &Value, records: Vec<Value>) -> Value {
    json!({ "resourceLogs": [{ "resource": resource, "scopeLogs": [{ "scope": scope(), "logRecords": records }] }] })
}

/// One line of the daemon's JSON log (tracing's format: `timestamp`, `level`, `target`,
/// `fields` with `message`) as an OTLP log record with its time in Unix ms; `None` if the line
/// is not such an object.
pub fn log_record(line: &str) -> Option<(i64, Value)> {
    let v: Value = serde_json::from_str(line).ok()?;
    let ts = v["timestamp"].as_str()?;
    let t = time::OffsetDateTime::parse(ts, &time::format_description::well_known::Rfc3339).ok()?;
    let ms = (t.unix_timestamp_nanos() / 1_000_000) as i64;
    let level = v["level"].as_str().unwrap_or("INFO");
    let severity = match level {
        "TRACE" => 1,
        "DEBUG" => 5,
        "INFO" => 9,
        "WARN" => 13,
        _ => 17,
    };
    let mut attributes = vec![kv("target", string(v["target"].as_str().unwrap_or("")))];
    let mut body = String::new();
    if let Some(fields) = v["fields"].as_object() {
        for (k, x) in fields {
            if k == "message" {
                body = x.as_str().map_or_else(|| x.to_string(), str::to_owned);
            } else {
                let value = match x {
                    Value::String(s) => string(s),
                    Value::Number(n) if n.is_i64() => int(n.as_i64().unwrap_or(0)),
                    Value::Bool(b) => json!({ "boolValue": b }),
                    other => string(&other.to_string()),
                };
                attributes.push(kv(k, value));
            }
        }
    }
    let record = json!({
        "timeUnixNano": nanos(ms),
        "observedTimeUnixNano": nanos(ms),
        "severityNumber": severity,
        "severityText": level,
        "body": string(&body),
        "attributes": attributes,
    });
    Some((ms, record))
}

/// A sample: its name, its labels, its value.
type Sample = (String, Vec<(String, String)>, f64);
/// Label pairs.
type Labels = [(String, String)];

/// The Prometheus text of one snapshot as an `ExportMetricsServiceRequest` at `time_ms`:
/// gauges and info as gauges, counters as cumulative monotonic sums, histograms as histograms.
pub fn metrics_request(resource: &Value, time_ms: i64, text: &str) -> Value {
    // (name, type, help, samples)
    let mut metrics: Vec<(String, String, String, Vec<Sample>)> = Vec::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut it = rest.splitn(2, ' ');
            let (name, kind) = (it.next().unwrap_or(""), it.next().unwrap_or("gauge"));
            match metrics.last_mut() {
                Some(m) if m.0 == name => m.1 = kind.to_owned(),
                _ => metrics.push((name.to_owned(), kind.to_owned(), String::new(), Vec::new())),
            }
        } else if let Some(rest) = line.strip_prefix("# HELP ") {
            let mut it = rest.splitn(2, ' ');
            let (name, help) = (it.next().unwrap_or(""), it.next().unwrap_or(""));
            if let Some(m) = metrics.iter_mut().rev().find(|m| m.0 == name) {
                m.2 = help.to_owned();
            } else {
                metrics.push((name.to_owned(), "gauge".into(), help.to_owned(), Vec::new()));
            }
        } else if !line.starts_with('#') && !line.trim().is_empty() {
            let Some((sample, labels, value)) = parse_sample(line) else { continue };
            if let Some(m) = metrics.iter_mut().rev().find(|m| sample.starts_with(m.0.as_str())) {
                m.3.push((sample, labels, value));
            }
        }
    }
    let t = nanos(time_ms);
    let attrs = |labels: &[(String, String)]| -> Vec<Value> {
        labels.iter().filter(|(k, _)| k != "le").map(|(k, v)| kv(k, string(v))).collect()
    };
    let number = |v: f64| {
        if v.fract() == 0.0 && v.abs() < 9.0e15 {
            json!({ "asInt": (v as i64).to_string() })
        } else {
            json!({ "asDouble": v })
        }
    };
    let out: Vec<Value> = metrics
        .into_iter()
        .filter(|m| !m.3.is_empty())
        .map(|(name, kind, help, samples)| {
            let point = |labels: &[(String, String)], v: f64| {
                let mut p = json!({ "attributes": attrs(labels), "timeUnixNano": t });
                p.as_object_mut().expect("object").extend(number(v).as_object().expect("object").clone());
                p
            };
            match kind.as_str() {
                "counter" => {
                    let points: Vec<Value> = samples
                        .iter()
                        .filter(|(s, _, _)| !s.ends_with("_created"))
                        .map(|(_, l, v)| point(l, *v))
                        .collect();
                    json!({ "name": format!("{name}_total").replace("_total_total", "_total"), "description": help,
                            "sum": { "aggregationTemporality": 2, "isMonotonic": true, "dataPoints": points } })
                }
                "histogram" => json!({ "name": name, "description": help, "histogram": {
                    "aggregationTemporality": 2, "dataPoints": histogram_points(&samples, &t, &attrs) } }),
                "info" => {
                    let points: Vec<Value> = samples.iter().map(|(_, l, v)| point(l, *v)).collect();
                    json!({ "name": format!("{name}_info"), "description": help, "gauge": { "dataPoints": points } })
                }
                _ => {
                    let points: Vec<Value> = samples.iter().map(|(_, l, v)| point(l, *v)).collect();
                    json!({ "name": name, "description": help, "gauge": { "dataPoints": points } })
                }
            }
        })
        .collect();
    json!({ "resourceMetrics": [{ "resource": resource, "scopeMetrics": [{ "scope": scope(), "metrics": out }] }] })
}

/// `_bucket{le=…}` (cumulative), `_sum` and `_count` samples of one histogram family, per label
/// set, as OTLP histogram points (per-bucket counts, explicit bounds).
fn histogram_points(samples: &[Sample], t: &str, attrs: &dyn Fn(&Labels) -> Vec<Value>) -> Vec<Value> {
    let key =
        |l: &[(String, String)]| -> Vec<(String, String)> { l.iter().filter(|(k, _)| k != "le").cloned().collect() };
    let mut sets: Vec<Vec<(String, String)>> = Vec::new();
    for (_, l, _) in samples {
        let k = key(l);
        if !sets.contains(&k) {
            sets.push(k);
        }
    }
    sets.into_iter()
        .map(|set| {
            let mut bounds = Vec::new();
            let mut cumulative = Vec::new();
            let (mut sum, mut count) = (0.0, 0.0);
            for (name, l, v) in samples.iter().filter(|(_, l, _)| key(l) == set) {
                if name.ends_with("_bucket") {
                    let le = l.iter().find(|(k, _)| k == "le").map(|(_, v)| v.as_str()).unwrap_or("+Inf");
                    if le != "+Inf" {
                        bounds.push(le.parse::<f64>().unwrap_or(f64::INFINITY));
                    }
                    cumulative.push(*v);
                } else if name.ends_with("_sum") {
                    sum = *v;
                } else if name.ends_with("_count") {
                    count = *v;
                }
            }
            let mut prev = 0.0;
            let counts: Vec<String> = cumulative
                .iter()
                .map(|c| {
                    let n = (c - prev).max(0.0);
                    prev = *c;
                    (n as u64).to_string()
                })
                .collect();
            json!({ "attributes": attrs(&set), "timeUnixNano": t, "count": (count as u64).to_string(), "sum": sum,
                    "bucketCounts": counts, "explicitBounds": bounds })
        })
        .collect()
}

/// `name{a="b",c="d"} 1.5` (an optional timestamp after the value is ignored).
fn parse_sample(line: &str) -> Option<Sample> {
    let (head, value) = match line.find('{') {
        Some(open) => {
            let close = line.rfind('}')?;
            let labels = parse_labels(&line[open + 1..close]);
            let value = line[close + 1..].split_whitespace().next()?;
            return Some((line[..open].to_owned(), labels, parse_value(value)?));
        }
        None => {
            let mut it = line.split_whitespace();
            (it.next()?, it.next()?)
        }
    };
    Some((head.to_owned(), Vec::new(), parse_value(value)?))
}

fn parse_value(v: &str) -> Option<f64> {
    match v {
        "+Inf" => Some(f64::INFINITY),
        "-Inf" => Some(f64::NEG_INFINITY),
        _ => v.parse().ok(),
    }
}

fn parse_labels(s: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut rest = s;
    while let Some(eq) = rest.find("=\"") {
        let key = rest[..eq].trim_start_matches(',').trim().to_owned();
        let mut value = String::new();
        let mut chars = rest[eq + 2..].char_indices();
        let mut end = rest.len();
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => {
                    if let Some((_, n)) = chars.next() {
                        value.push(if n == 'n' { '\n' } else { n });
                    }
                }
                '"' => {
                    end = eq + 2 + i + 1;
                    break;
                }
                c => value.push(c),
            }
        }
        out.push((key, value));
        rest = &rest[end.min(rest.len())..];
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prometheus_text_becomes_otlp_metrics() {
        let text = "# HELP q Jobs waiting.\n# TYPE q gauge\nq{type=\"build\"} 3\n# HELP c Expirations.\n# TYPE c counter\nc_total 7\n# HELP h Durations.\n# TYPE h histogram\nh_sum 4.5\nh_count 3\nh_bucket{le=\"1.0\"} 1\nh_bucket{le=\"5.0\"} 3\nh_bucket{le=\"+Inf\"} 3\n# EOF\n";
        let r = metrics_request(&resource("a"), 1_000, text);
        let m = &r["resourceMetrics"][0]["scopeMetrics"][0]["metrics"];
        assert_eq!(m[0]["gauge"]["dataPoints"][0]["asInt"], "3");
        assert_eq!(m[0]["gauge"]["dataPoints"][0]["attributes"][0]["value"]["stringValue"], "build");
        assert_eq!(m[0]["gauge"]["dataPoints"][0]["timeUnixNano"], "1000000000");
        assert_eq!(m[1]["name"], "c_total");
        assert_eq!(m[1]["sum"]["isMonotonic"], true);
        assert_eq!(m[1]["sum"]["dataPoints"][0]["asInt"], "7");
        let h = &m[2]["histogram"]["dataPoints"][0];
        assert_eq!((h["count"].as_str(), h["sum"].as_f64()), (Some("3"), Some(4.5)));
        assert_eq!(h["bucketCounts"], json!(["1", "2", "0"]));
        assert_eq!(h["explicitBounds"], json!([1.0, 5.0]));
    }

    #[test]
    fn ids_are_hex_of_the_right_width() {
        assert_eq!(trace_id("run-1").len(), 32);
        assert_eq!(attempt_span_id("job-1", 1).len(), 16);
        assert_ne!(attempt_span_id("job-1", 1), attempt_span_id("job-1", 2));
        assert_eq!(
            traceparent("run-1", "job-1", 2),
            format!("00-{}-{}-01", trace_id("run-1"), attempt_span_id("job-1", 2))
        );
    }
}
