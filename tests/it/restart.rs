//! Durability across stops: what the daemon acknowledged is there after a clean stop and
//! after kill -9 under load, and the ledger still verifies.

use crate::support::*;
use std::sync::{Arc, Mutex};

async fn assert_tokens_exist(app: &TestAppliance, ids: &[String]) {
    let client = app.socket_client();
    for id in ids {
        let reply = client.get(&format!("/api/v1/orchestrator/auth/tokens/{id}")).await.unwrap();
        assert_eq!(reply.status, 200, "acknowledged token {id} is missing after restart");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_commands_survive_a_clean_stop_and_kill_9_under_load() {
    let mut app = TestAppliance::start();
    let client = app.socket_client();
    let mut acked = Vec::new();
    for _ in 0..5 {
        acked.push(create_token(&client, "default", &["orchestrator:read"], None).await.0);
    }
    assert!(app.terminate().success(), "SIGTERM exits 0\n{}", app.log());
    assert!(!app.layout().default_socket().exists(), "a clean stop removes the socket");
    app.launch();
    assert_tokens_exist(&app, &acked).await;

    // Eight producers create tokens until the daemon dies under them.
    let acked_under_load = Arc::new(Mutex::new(Vec::new()));
    let (enough_tx, mut enough_rx) = tokio::sync::mpsc::channel::<()>(1);
    let mut producers = Vec::new();
    for _ in 0..8 {
        let client = app.socket_client();
        let acked = acked_under_load.clone();
        let enough = enough_tx.clone();
        producers.push(tokio::spawn(async move {
            loop {
                let body = serde_json::json!({ "tenant": "default", "scopes": ["orchestrator:read"] });
                let Ok(reply) = client.post("/api/v1/orchestrator/auth/tokens", &body).await else {
                    return;
                };
                if reply.status != 201 {
                    return;
                }
                let id = reply.json().unwrap()["id"].as_str().unwrap().to_owned();
                let n = {
                    let mut a = acked.lock().unwrap();
                    a.push(id);
                    a.len()
                };
                if n == 200 {
                    let _ = enough.try_send(());
                }
            }
        }));
    }
    drop(enough_tx);
    enough_rx.recv().await.expect("producers acknowledged 200 commands");
    app.kill9();
    for p in producers {
        p.await.unwrap();
    }
    app.launch();
    let acked_under_load = acked_under_load.lock().unwrap().clone();
    assert!(acked_under_load.len() >= 200);
    assert_tokens_exist(&app, &acked).await;
    assert_tokens_exist(&app, &acked_under_load).await;
    let verify = app.stella(&["orch", "db", "verify"]);
    assert!(verify.status.success(), "db verify after kill -9: {}{}", stdout(&verify), stderr(&verify));
}
