//! The OpenAPI document and the server agree: every documented route exists on the daemon
//! (neither `route_not_found` nor `method_not_allowed`), and every documented error response
//! uses the problem+json media type.

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_documented_route_is_served() {
    let doc: serde_json::Value = serde_json::from_str(include_str!("../../docs/openapi.json")).unwrap();
    let app = TestAppliance::start();
    let client = app.socket_client();
    let mut checked = 0;
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            if op["responses"]["200"]["content"].get("text/event-stream").is_some() {
                // An endless stream: covered by the stream tests, not by one request here.
                continue;
            }
            if path.ends_with("/admin/restart") {
                // It would restart the daemon under the other requests: covered by
                // `drills::service_restart_restarts_a_named_dev_appliance_in_place`.
                continue;
            }
            let concrete =
                path.replace("{runId}", "run-1").replace("{id}", "tok_000000000000").replace("{action}", "retry");
            let method: hyper::Method = method.to_uppercase().parse().unwrap();
            let body = (method == hyper::Method::POST || method == hyper::Method::PUT).then(|| b"{}".to_vec());
            let reply = client.send(method.clone(), &concrete, body).await.unwrap();
            let code = reply.json().ok().and_then(|v| v["code"].as_str().map(str::to_owned)).unwrap_or_default();
            assert!(code != "route_not_found" && code != "method_not_allowed", "{method} {path}: {code}");
            let documented: Vec<&String> = op["responses"].as_object().unwrap().keys().collect();
            assert!(
                documented.iter().any(|s| **s == reply.status.as_str()),
                "{method} {path} answered {} which is not documented ({documented:?})",
                reply.status
            );
            checked += 1;
        }
    }
    assert!(checked >= 10, "the document lists the routes");
}

/// The other direction: every path the router declares (read from its source) is documented,
/// with parameters compared by position.
#[test]
fn every_routed_path_is_documented() {
    let doc: serde_json::Value = serde_json::from_str(include_str!("../../docs/openapi.json")).unwrap();
    let shape = |p: &str| {
        p.split('/')
            .map(|seg| if seg.starts_with('{') { "{}".to_owned() } else { seg.to_owned() })
            .collect::<Vec<_>>()
            .join("/")
    };
    let documented: Vec<String> = doc["paths"].as_object().unwrap().keys().map(|p| shape(p)).collect();
    let router = include_str!("../../src/api/mod.rs");
    let mut routed = 0;
    // The runbook's aliases are one router nested at its prefix; the rest under the API's.
    let mut prefix = "/api/v1/orchestrator";
    for line in router.lines() {
        if line.contains("let runbook = Router::new()") {
            prefix = "/api/orchestrations";
        } else if line.trim() == "Router::new()" {
            prefix = "/api/v1/orchestrator";
        }
        if !line.contains(".route(\"") {
            continue;
        }
        let path = line.split('"').nth(1).unwrap();
        let full = if path == "/metrics" { path.to_owned() } else { format!("{prefix}{path}") };
        let runs_cancel = full.ends_with("/runs/{run}") && documented.iter().any(|d| d.ends_with("/runs/{}"));
        assert!(documented.contains(&shape(&full)) || runs_cancel, "route {full} is not in docs/openapi.json");
        routed += 1;
    }
    assert!(routed >= 30);
}

/// Every conflict code the source can answer (409 `code`) is named in the document, so a client
/// can match on it.
#[test]
fn every_conflict_code_is_documented() {
    let doc = include_str!("../../docs/openapi.json");
    let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = vec![src.clone()];
    let mut codes = std::collections::BTreeSet::new();
    while let Some(p) = files.pop() {
        if p.is_dir() {
            files.extend(std::fs::read_dir(&p).unwrap().flatten().map(|e| e.path()));
            continue;
        }
        let text = std::fs::read_to_string(&p).unwrap_or_default();
        for marker in ["CommandError::conflict(", "Refusal::Conflict("] {
            for part in text.split(marker).skip(1) {
                let code: String =
                    part.trim_start().trim_start_matches('"').chars().take_while(|c| *c != '"').collect();
                if !code.is_empty() && code.chars().all(|c| c.is_ascii_lowercase() || c == '_') {
                    codes.insert(code);
                }
            }
        }
    }
    assert!(codes.len() >= 20 && codes.contains("lease_stale"), "{codes:?}");
    let missing: Vec<&String> = codes.iter().filter(|c| !doc.contains(c.as_str())).collect();
    assert!(missing.is_empty(), "409 codes not in docs/openapi.json: {missing:?}");
}
