//! The OpenTelemetry OTLP file format in its JSON encoding (one `Export*ServiceRequest` per
//! line): lowerCamelCase fields, trace and span ids as hex, 64-bit integers as decimal strings,
//! enums as numbers. Built with `serde_json` values — the three request shapes are small and
//! fixed, and an OTLP protobuf stack would be a large dependency for them.

use serde::Serialize;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

/// Unix milliseconds as the string of nanoseconds OTLP/JSON wants.
pub fn nanos(ms: i64) -> String {
    (i128::from(ms) * 1_000_000).to_string()
}

/// An OTLP `AnyValue` (the kinds stella writes).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub enum AnyValue {
    #[serde(rename = "stringValue")]
    Str(String),
    #[serde(rename = "intValue")]
    Int(String),
    #[serde(rename = "boolValue")]
    Bool(bool),
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct KeyValue {
    /// Mostly a fixed attribute name: borrowed, not copied per record.
    pub key: std::borrow::Cow<'static, str>,
    pub value: AnyValue,
}

pub fn string(v: &str) -> AnyValue {
    AnyValue::Str(v.to_owned())
}

pub fn int(v: i64) -> AnyValue {
    AnyValue::Int(v.to_string())
}

pub fn kv(key: &'static str, value: AnyValue) -> KeyValue {
    KeyValue { key: std::borrow::Cow::Borrowed(key), value }
}

/// The resource every request names: this appliance.
#[derive(Debug, Clone, Serialize)]
pub struct Resource {
    attributes: Vec<KeyValue>,
}

pub fn resource(appliance_id: &str) -> Resource {
    Resource {
        attributes: vec![
            kv("service.name", string("stella")),
            kv("service.instance.id", string(appliance_id)),
            kv("service.version", string(env!("CARGO_PKG_VERSION"))),
        ],
    }
}

#[derive(Debug, Clone, Serialize)]
struct Scope {
    name: &'static str,
    version: &'static str,
}

fn scope() -> Scope {
    Scope { name: "stella", version: env!("CARGO_PKG_VERSION") }
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

/// The span of a checkpoint's wait for its approval, from the checkpoint to the decision.
pub fn approval_span_id(approval: &str) -> String {
    digest_hex(&["approval", approval], 8)
}

/// The W3C `traceparent` handed to a plugin for an attempt.
pub fn traceparent(run: &str, job: &str, attempt: u32) -> String {
    format!("00-{}-{}-01", trace_id(run), attempt_span_id(job, attempt))
}

#[derive(Debug, Clone, Serialize)]
struct Status {
    code: u8,
    #[serde(skip_serializing_if = "Option::is_none")]
    message: Option<String>,
}

/// A span (kind INTERNAL); an `error` sets status ERROR with its message, otherwise OK.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Span {
    trace_id: String,
    span_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    parent_span_id: Option<String>,
    name: &'static str,
    kind: u8,
    start_time_unix_nano: String,
    end_time_unix_nano: String,
    attributes: Vec<KeyValue>,
    status: Status,
}

/// What a span is made of, in milliseconds; [`SpanParts::build`] makes the OTLP span.
pub struct SpanParts {
    pub trace_id: String,
    pub span_id: String,
    pub parent: Option<String>,
    pub name: &'static str,
    pub start_ms: i64,
    pub end_ms: i64,
    pub attributes: Vec<KeyValue>,
    /// An error sets status ERROR with this message; none, OK.
    pub error: Option<String>,
}

impl SpanParts {
    pub fn build(self) -> Span {
        Span {
            trace_id: self.trace_id,
            span_id: self.span_id,
            parent_span_id: self.parent,
            name: self.name,
            kind: 1,
            start_time_unix_nano: nanos(self.start_ms),
            end_time_unix_nano: nanos(self.end_ms.max(self.start_ms)),
            attributes: self.attributes,
            status: Status { code: if self.error.is_some() { 2 } else { 1 }, message: self.error },
        }
    }
}

/// Appends `s` as a JSON string, byte for byte as `serde_json` writes it: copied as it is
/// when nothing in it needs escaping (nearly always), by `serde_json` otherwise.
fn push_str(out: &mut Vec<u8>, s: &str) {
    if s.bytes().any(|b| b < 0x20 || b == b'"' || b == b'\\') {
        serde_json::to_writer(&mut *out, s).expect("a string serializes into memory");
    } else {
        out.reserve(s.len() + 2);
        out.push(b'"');
        out.extend_from_slice(s.as_bytes());
        out.push(b'"');
    }
}

impl AnyValue {
    fn push_json(&self, out: &mut Vec<u8>) {
        match self {
            AnyValue::Str(s) => {
                out.extend_from_slice(b"{\"stringValue\":");
                push_str(out, s);
            }
            AnyValue::Int(s) => {
                out.extend_from_slice(b"{\"intValue\":");
                push_str(out, s);
            }
            AnyValue::Bool(b) => {
                out.extend_from_slice(if *b { b"{\"boolValue\":true" } else { b"{\"boolValue\":false" })
            }
        }
        out.push(b'}');
    }
}

fn push_attributes(out: &mut Vec<u8>, attributes: &[KeyValue]) {
    out.push(b'[');
    for (i, a) in attributes.iter().enumerate() {
        out.extend_from_slice(if i == 0 { b"{\"key\":" } else { b",{\"key\":" });
        push_str(out, &a.key);
        out.extend_from_slice(b",\"value\":");
        a.value.push_json(out);
        out.push(b'}');
    }
    out.push(b']');
}

impl Span {
    /// The span as JSON, as its `Serialize` writes it, without serde's per-token calls: an
    /// export writes hundreds of thousands of spans, and serde's escaping of each short string
    /// was most of the time spent on them.
    fn push_json(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(b"{\"traceId\":");
        push_str(out, &self.trace_id);
        out.extend_from_slice(b",\"spanId\":");
        push_str(out, &self.span_id);
        if let Some(parent) = &self.parent_span_id {
            out.extend_from_slice(b",\"parentSpanId\":");
            push_str(out, parent);
        }
        out.extend_from_slice(b",\"name\":");
        push_str(out, self.name);
        out.extend_from_slice(b",\"kind\":");
        out.extend_from_slice(self.kind.to_string().as_bytes());
        out.extend_from_slice(b",\"startTimeUnixNano\":");
        push_str(out, &self.start_time_unix_nano);
        out.extend_from_slice(b",\"endTimeUnixNano\":");
        push_str(out, &self.end_time_unix_nano);
        out.extend_from_slice(b",\"attributes\":");
        push_attributes(out, &self.attributes);
        out.extend_from_slice(b",\"status\":{\"code\":");
        out.extend_from_slice(self.status.code.to_string().as_bytes());
        if let Some(message) = &self.status.message {
            out.extend_from_slice(b",\"message\":");
            push_str(out, message);
        }
        out.extend_from_slice(b"}}");
    }
}

/// An `ExportTraceServiceRequest` written as one JSON line into `out` (cleared first), the same bytes
/// `serde_json` writes for it.
pub fn write_traces_request(out: &mut Vec<u8>, resource: &Resource, spans: &[Span]) {
    out.clear();
    out.extend_from_slice(b"{\"resourceSpans\":[{\"resource\":{\"attributes\":");
    push_attributes(out, &resource.attributes);
    out.extend_from_slice(b"},\"scopeSpans\":[{\"scope\":{\"name\":");
    let scope = scope();
    push_str(out, scope.name);
    out.extend_from_slice(b",\"version\":");
    push_str(out, scope.version);
    out.extend_from_slice(b"},\"spans\":[");
    for (i, span) in spans.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        span.push_json(out);
    }
    out.extend_from_slice(b"]}]}]}");
}

/// An OTLP log record.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LogRecord {
    time_unix_nano: String,
    observed_time_unix_nano: String,
    severity_number: u8,
    severity_text: String,
    body: AnyValue,
    attributes: Vec<KeyValue>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ScopeLogs<'a> {
    scope: Scope,
    log_records: &'a [LogRecord],
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ResourceLogs<'a> {
    resource: &'a Resource,
    scope_logs: [ScopeLogs<'a>; 1],
}

/// An `ExportLogsServiceRequest`.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LogsRequest<'a> {
    resource_logs: [ResourceLogs<'a>; 1],
}

pub fn logs_request<'a>(resource: &'a Resource, records: &'a [LogRecord]) -> LogsRequest<'a> {
    LogsRequest {
        resource_logs: [ResourceLogs { resource, scope_logs: [ScopeLogs { scope: scope(), log_records: records }] }],
    }
}

/// One line of the daemon's log as tracing's JSON formatter writes it.
#[derive(serde::Deserialize)]
struct LogLine<'a> {
    #[serde(borrow)]
    timestamp: std::borrow::Cow<'a, str>,
    #[serde(borrow, default)]
    level: std::borrow::Cow<'a, str>,
    #[serde(borrow, default)]
    target: std::borrow::Cow<'a, str>,
    #[serde(default)]
    fields: serde_json::Map<String, Value>,
}

/// One line of the daemon's JSON log (`timestamp`, `level`, `target`, `fields` with
/// `message`) as an OTLP log record with its time in Unix ms; `None` if the line is not one.
pub fn log_record(line: &str) -> Option<(i64, LogRecord)> {
    let v: LogLine = serde_json::from_str(line).ok()?;
    let t = time::OffsetDateTime::parse(&v.timestamp, &time::format_description::well_known::Rfc3339).ok()?;
    let ms = (t.unix_timestamp_nanos() / 1_000_000) as i64;
    let level = if v.level.is_empty() { "INFO" } else { &v.level };
    let severity = match level {
        "TRACE" => 1,
        "DEBUG" => 5,
        "INFO" => 9,
        "WARN" => 13,
        _ => 17,
    };
    let mut attributes = Vec::with_capacity(v.fields.len() + 1);
    attributes.push(kv("target", string(&v.target)));
    let mut body = String::new();
    for (k, x) in v.fields {
        if k == "message" {
            body = match x {
                Value::String(s) => s,
                other => other.to_string(),
            };
            continue;
        }
        let value = match x {
            Value::String(s) => AnyValue::Str(s),
            Value::Number(n) if n.is_i64() => AnyValue::Int(n.to_string()),
            Value::Bool(b) => AnyValue::Bool(b),
            other => AnyValue::Str(other.to_string()),
        };
        attributes.push(KeyValue { key: std::borrow::Cow::Owned(k), value });
    }
    let t = nanos(ms);
    let record = LogRecord {
        time_unix_nano: t.clone(),
        observed_time_unix_nano: t,
        severity_number: severity,
        severity_text: level.to_owned(),
        body: AnyValue::Str(body),
        attributes,
    };
    Some((ms, record))
}

/// A sample: its name, its labels, its value.
type Sample = (String, Vec<(String, String)>, f64);
/// Label pairs.
type Labels = [(String, String)];

/// The Prometheus text of one snapshot as an `ExportMetricsServiceRequest` at `time_ms`:
/// gauges and info as gauges, counters as cumulative monotonic sums, histograms as histograms.
pub fn metrics_request(resource: &Resource, time_ms: i64, text: &str) -> Value {
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
        labels
            .iter()
            .filter(|(k, _)| k != "le")
            .map(|(k, v)| json!({ "key": k, "value": { "stringValue": v } }))
            .collect()
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

/// The serde rendering of an `ExportTraceServiceRequest`: the reference that
/// [`write_traces_request`] is checked against, byte for byte.
#[cfg(test)]
mod reference {
    use super::{Resource, Scope, Serialize, Span, scope};

    #[derive(Serialize)]
    #[serde(rename_all = "camelCase")]
    struct ScopeSpans<'a> {
        scope: Scope,
        spans: &'a [Span],
    }

    #[derive(Serialize)]
    #[serde(rename_all = "camelCase")]
    struct ResourceSpans<'a> {
        resource: &'a Resource,
        scope_spans: [ScopeSpans<'a>; 1],
    }

    /// An `ExportTraceServiceRequest`.
    #[derive(Serialize)]
    #[serde(rename_all = "camelCase")]
    pub(super) struct TracesRequest<'a> {
        resource_spans: [ResourceSpans<'a>; 1],
    }

    pub(super) fn traces_request<'a>(resource: &'a Resource, spans: &'a [Span]) -> TracesRequest<'a> {
        TracesRequest {
            resource_spans: [ResourceSpans { resource, scope_spans: [ScopeSpans { scope: scope(), spans }] }],
        }
    }
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

    proptest::proptest! {
        #[test]
        fn a_hand_written_traces_request_is_what_serde_writes(
            texts in proptest::collection::vec("[a-z\"\\\\\u{0}-\u{1f}\u{7f}é€😀 .:-]{0,12}", 6),
            error in proptest::option::of("[a-z\"\n]{0,8}"),
            parent: bool,
            flag: bool,
            n: i64,
        ) {
            let span = |i: usize| SpanParts {
                trace_id: trace_id(&texts[0]),
                span_id: step_span_id(&texts[1], &texts[i % 6]),
                parent: parent.then(|| run_span_id(&texts[2])),
                name: "step",
                start_ms: n / 2,
                end_ms: n / 3,
                attributes: vec![
                    kv("stella.run.id", string(&texts[3])),
                    KeyValue { key: std::borrow::Cow::Owned(texts[4].clone()), value: int(n) },
                    kv("flag", AnyValue::Bool(flag)),
                    kv("stella.step", string(&texts[5])),
                ],
                error: error.clone(),
            }
            .build();
            for spans in [vec![], vec![span(0)], vec![span(1), span(2), span(3)]] {
                let resource = resource(&texts[i64::rem_euclid(n, 6) as usize]);
                let mut ours = Vec::new();
                write_traces_request(&mut ours, &resource, &spans);
                let theirs = serde_json::to_vec(&reference::traces_request(&resource, &spans)).unwrap();
                proptest::prop_assert_eq!(String::from_utf8(ours).unwrap(), String::from_utf8(theirs).unwrap());
            }
        }
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
