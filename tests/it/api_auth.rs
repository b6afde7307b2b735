//! The auth matrix over HTTPS: every bad-token class gets the same 401 body, a missing scope
//! the same 403 body, another tenant's object is 404 — and none of them changes anything.

use crate::support::*;
use hyper::Method;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_tokens_wrong_scopes_and_other_tenants_are_refused_alike_and_change_nothing() {
    let app = TestAppliance::start_with(|c| c.tenants.allowed = vec!["default".into(), "acme".into()]);
    let admin = app.socket_client();
    let (reader_id, reader) = create_token(&admin, "default", &["orchestrator:read"], None).await;
    let (_, acme_admin) = create_token(&admin, "acme", &["orchestrator:admin"], None).await;
    let (_, expired) = create_token(&admin, "default", &["orchestrator:admin"], Some("0s")).await;
    let (revoked_id, revoked) = create_token(&admin, "default", &["orchestrator:admin"], None).await;
    admin
        .post(&format!("/api/v1/orchestrator/auth/tokens/{revoked_id}/revoke"), &serde_json::json!({}))
        .await
        .unwrap()
        .ok()
        .unwrap();
    let height = ledger_height(&admin).await;

    let unknown = format!("stl_{}_{}", "0".repeat(12), "0".repeat(64));
    let create_body = serde_json::json!({ "tenant": "default", "scopes": ["orchestrator:admin"] });
    let mut bodies_401 = Vec::new();
    for token in [None, Some("garbage"), Some(unknown.as_str()), Some(expired.as_str()), Some(revoked.as_str())] {
        let client = app.https_client(token);
        let reply = client.post("/api/v1/orchestrator/auth/tokens", &create_body).await.unwrap();
        assert_eq!(reply.status, 401, "token {token:?}");
        assert_eq!(reply.headers["content-type"], "application/problem+json");
        bodies_401.push(reply.body.clone());
        assert_eq!(client.get("/api/v1/orchestrator/status").await.unwrap().status, 401);
    }
    assert!(bodies_401.windows(2).all(|w| w[0] == w[1]), "every 401 body is identical");

    let read_client = app.https_client(Some(&reader));
    assert_eq!(read_client.get("/api/v1/orchestrator/status").await.unwrap().status, 200);
    let denied_a = read_client.post("/api/v1/orchestrator/auth/tokens", &create_body).await.unwrap();
    let denied_b = read_client.get("/api/v1/orchestrator/auth/tokens").await.unwrap();
    assert_eq!((denied_a.status.as_u16(), denied_b.status.as_u16()), (403, 403));
    assert_eq!(denied_a.body, denied_b.body, "every 403 body is identical");

    let acme = app.https_client(Some(&acme_admin));
    let hidden = acme.get(&format!("/api/v1/orchestrator/auth/tokens/{reader_id}")).await.unwrap();
    assert_eq!(hidden.status, 404);
    let revoke = acme
        .post(&format!("/api/v1/orchestrator/auth/tokens/{reader_id}/revoke"), &serde_json::json!({}))
        .await
        .unwrap();
    assert_eq!(revoke.status, 404);
    let listed = acme.get("/api/v1/orchestrator/auth/tokens").await.unwrap().json().unwrap();
    assert!(listed["tokens"].as_array().unwrap().iter().all(|t| t["tenant"] == "acme"));
    let foreign = acme.post("/api/v1/orchestrator/auth/tokens", &create_body).await.unwrap();
    assert_eq!(foreign.status, 403, "a tenant admin cannot mint tokens for another tenant");

    assert_eq!(read_client.get("/api/v1/orchestrator/status").await.unwrap().status, 200, "the reader was not revoked");
    assert_eq!(ledger_height(&admin).await, height, "refused requests changed nothing");
    let log = app.log();
    for secret in [&reader, &acme_admin, &expired, &revoked, &app.dev_token()] {
        assert!(!log.contains(secret.as_str()), "a token appeared in the daemon log");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_socket_peer_with_a_token_acts_as_that_token() {
    let app = TestAppliance::start();
    let admin = app.socket_client();
    let (_, reader) = create_token(&admin, "default", &["orchestrator:read"], None).await;
    let mut as_reader = app.socket_client();
    as_reader.token = Some(reader);
    let reply = as_reader.send(Method::GET, "/api/v1/orchestrator/auth/tokens", None).await.unwrap();
    assert_eq!(reply.status, 403, "a presented token decides, even on the admin socket");
}
